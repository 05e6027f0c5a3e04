//! `drove flash IMAGE DEVICE`: writes `disk.img` or `floppy.img` to a block device, safely.
//!
//! Plan first, as data: [`plan`] reads the image, the device's `/sys/dev/block/MAJ:MIN` entry,
//! `/proc/self/mountinfo` and `/proc/swaps` and returns a [`FlashPlan`] with every check that
//! failed ([`Refusal`]). Refused always: a partition (the images are whole disks), a read-only
//! device, an image larger than the device, a device in use (mounted, swap, or held by
//! device-mapper/RAID) directly or through a partition, and the disk under `/` (followed through
//! partitions and device-mapper slaves). Refused unless `--force`: a disk that is neither
//! removable nor on USB/MMC (an internal disk; loop devices are in this class too). Then the plan
//! is shown (model, size, what is on the device now) and, unless `--yes`, confirmed by typing
//! `yes`. The write goes through an exclusive open (`O_EXCL`: the kernel refuses it when anything
//! mounted the device since the plan), in 4 MiB blocks with a progress bar, ends with `fsync`,
//! drops the device's cached pages and reads everything back, comparing block by block with the
//! image and reporting the sha256 of both.
//!
//! The /sys and /proc roots are parameters so the checks run in unit tests on fake trees.

use std::fs::File;
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::progress::{human, Bar};

/// Bytes per write and read-back block.
const BLOCK: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image {}: cannot read", .path.display())]
    Image {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image {} is empty", .path.display())]
    EmptyImage { path: PathBuf },
    #[error("{}: cannot inspect the device", .path.display())]
    Device {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a block device (give the whole disk, e.g. /dev/sdb)", .path.display())]
    NotBlock { path: PathBuf },
    #[error("{}: no entry {} in /sys (is /sys mounted?)", .path.display(), .sys.display())]
    NoSysEntry { path: PathBuf, sys: PathBuf },
    #[error("{path}: cannot read {what}")]
    Proc {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("refusing to flash {}:\n{}", .device.display(), .reasons.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n"))]
    Refused {
        device: PathBuf,
        reasons: Vec<Refusal>,
    },
    #[error("not confirmed; {} left as it was", .device.display())]
    NotConfirmed { device: PathBuf },
    #[error("{}: cannot open for writing", .device.display())]
    Open {
        device: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: write failed at byte {offset}", .device.display())]
    Write {
        device: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
    #[error("{}: read-back failed at byte {offset}", .device.display())]
    ReadBack {
        device: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
    #[error("{}: read-back differs from {} in the block at byte {offset} (the device may be failing or fake-sized)", .device.display(), .image.display())]
    Mismatch {
        device: PathBuf,
        image: PathBuf,
        offset: u64,
    },
}

/// One reason not to flash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{name} is a partition of {parent}; flash the whole disk /dev/{parent}")]
    Partition { name: String, parent: String },
    #[error("{name} is read-only")]
    ReadOnly { name: String },
    #[error("the image ({image} bytes) is larger than {name} ({device} bytes)")]
    TooSmall {
        name: String,
        image: u64,
        device: u64,
    },
    #[error("{dev} is mounted on {mountpoint}")]
    Mounted { dev: String, mountpoint: String },
    #[error("{dev} is in use as swap")]
    Swap { dev: String },
    #[error("{dev} is held by {holders} (device-mapper, LVM or RAID)")]
    Held { dev: String, holders: String },
    #[error("{name} holds the root file system /")]
    Root { name: String },
    #[error("{name} is not a removable disk (an internal disk?); pass --force if you are sure")]
    NotRemovable { name: String },
}

impl Refusal {
    /// Whether `--force` overrides this refusal.
    pub fn forcible(&self) -> bool {
        matches!(self, Refusal::NotRemovable { .. })
    }
}

/// Where the checks look; [`Roots::system`] on a real machine.
#[derive(Debug, Clone)]
pub struct Roots {
    /// `/sys`
    pub sys: PathBuf,
    /// `/proc`
    pub proc: PathBuf,
}

impl Roots {
    pub fn system() -> Self {
        Roots {
            sys: "/sys".into(),
            proc: "/proc".into(),
        }
    }
}

/// What is known about the target disk, from /sys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Kernel name, e.g. `sdb`, `loop3`.
    pub name: String,
    /// `MAJ:MIN`
    pub dev: String,
    /// Bytes.
    pub size: u64,
    /// Vendor and model, or for a loop device its backing file.
    pub model: String,
    pub removable: bool,
    /// Attached over USB or MMC/SD (treated as removable: many USB sticks say removable=0).
    pub hotplug_bus: Option<&'static str>,
    pub read_only: bool,
    /// Partitions: (name, `MAJ:MIN`).
    pub partitions: Vec<(String, String)>,
    /// Set when the device is a partition: the parent disk's name.
    pub parent: Option<String>,
}

/// Everything decided before a byte is written.
#[derive(Debug, Clone)]
pub struct FlashPlan {
    pub image: PathBuf,
    pub image_size: u64,
    /// What the image looks like (`drove disk image (GPT)`, `1.44 MB floppy image (FAT12)`, …).
    pub image_kind: String,
    pub device: PathBuf,
    pub disk: DiskInfo,
    /// Every failed check; empty when the write may go ahead.
    pub refusals: Vec<Refusal>,
}

impl FlashPlan {
    /// The refusals that stand, given `--force`.
    pub fn blocking(&self, force: bool) -> Vec<Refusal> {
        self.refusals
            .iter()
            .filter(|r| !(force && r.forcible()))
            .cloned()
            .collect()
    }

    /// The text shown before asking: exactly what will be overwritten.
    pub fn describe(&self) -> String {
        let d = &self.disk;
        let kind = if d.removable {
            "removable".to_string()
        } else if let Some(bus) = d.hotplug_bus {
            format!("on {bus}")
        } else {
            "NOT removable".to_string()
        };
        let mut s = format!(
            "drove flash: will overwrite {} ({}): {}, {} ({} bytes), {kind}\n",
            self.device.display(),
            d.name,
            if d.model.is_empty() {
                "unknown model"
            } else {
                &d.model
            },
            human(d.size),
            d.size
        );
        if d.partitions.is_empty() {
            s.push_str("  it has no partitions the kernel knows of\n");
        } else {
            let names: Vec<&str> = d.partitions.iter().map(|(n, _)| n.as_str()).collect();
            s.push_str(&format!(
                "  its partitions {} and everything on them will be lost\n",
                names.join(", ")
            ));
        }
        s.push_str(&format!(
            "  with {} ({}, {} bytes)\n",
            self.image.display(),
            self.image_kind,
            self.image_size
        ));
        s
    }
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Reads `/sys/dev/block/MAJ:MIN` for the device `dev` (`MAJ:MIN`).
pub fn disk_info(roots: &Roots, device: &Path, dev: &str) -> Result<DiskInfo, Error> {
    let link = roots.sys.join("dev/block").join(dev);
    let dir = std::fs::canonicalize(&link).map_err(|_| Error::NoSysEntry {
        path: device.to_owned(),
        sys: link.clone(),
    })?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sectors: u64 = read_trim(&dir.join("size"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let parent = dir.join("partition").exists().then(|| {
        dir.parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let vendor = read_trim(&dir.join("device/vendor")).unwrap_or_default();
    let model = read_trim(&dir.join("device/model")).unwrap_or_default();
    let model = match (vendor.is_empty(), model.is_empty()) {
        (false, false) => format!("{vendor} {model}"),
        (true, false) => model,
        (false, true) => vendor,
        (true, true) => match read_trim(&dir.join("loop/backing_file")) {
            Some(f) => format!("loop device backed by {f}"),
            None => String::new(),
        },
    };
    let path = dir.to_string_lossy();
    let hotplug_bus = if path.contains("/usb") {
        Some("USB")
    } else if path.contains("/mmc") {
        Some("MMC/SD")
    } else {
        None
    };
    let mut partitions = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let p = entry.path();
            if p.join("partition").exists() {
                if let Some(pdev) = read_trim(&p.join("dev")) {
                    partitions.push((entry.file_name().to_string_lossy().into_owned(), pdev));
                }
            }
        }
    }
    partitions.sort();
    Ok(DiskInfo {
        name,
        dev: dev.to_string(),
        size: sectors * 512,
        model,
        removable: read_trim(&dir.join("removable")).as_deref() == Some("1"),
        hotplug_bus,
        read_only: read_trim(&dir.join("ro")).as_deref() == Some("1"),
        partitions,
        parent,
    })
}

/// `(MAJ:MIN, mount point)` of every mount in a mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let dev = f.nth(2)?;
            let _root = f.next()?;
            let mountpoint = f.next()?;
            Some((dev.to_string(), unescape_octal(mountpoint)))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\NNN`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `MAJ:MIN` of the disks under the mount at `/`: the root's device, its parent disk when it is a
/// partition, and through device-mapper the disks below (`slaves/`), recursively.
pub fn root_disks(roots: &Roots, mountinfo: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let Some((dev, _)) = mountinfo.iter().rev().find(|(_, mp)| mp == "/") else {
        return out;
    };
    let mut todo = vec![dev.clone()];
    while let Some(dev) = todo.pop() {
        if out.contains(&dev) {
            continue;
        }
        out.push(dev.clone());
        let Ok(dir) = std::fs::canonicalize(roots.sys.join("dev/block").join(&dev)) else {
            continue;
        };
        if dir.join("partition").exists() {
            if let Some(parent) = dir.parent().and_then(|p| read_trim(&p.join("dev"))) {
                todo.push(parent);
            }
        }
        if let Ok(slaves) = std::fs::read_dir(dir.join("slaves")) {
            for s in slaves.flatten() {
                if let Some(d) = read_trim(&s.path().join("dev")) {
                    todo.push(d);
                }
            }
        }
    }
    out
}

/// What the image looks like, from its first sectors and size.
pub fn image_kind(head: &[u8], size: u64) -> String {
    if head.len() >= 520 && &head[512..520] == b"EFI PART" {
        "disk image with a GPT".into()
    } else if size == 1_474_560 && head.len() >= 62 && &head[54..59] == b"FAT12" {
        "1.44 MB floppy image (FAT12)".into()
    } else if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xaa {
        "disk image with a boot sector".into()
    } else {
        "not recognised as a drove disk.img or floppy.img".into()
    }
}

/// Checks everything and returns the plan; only I/O errors (no such image or device, no /sys
/// entry) are errors here, failed checks are [`FlashPlan::refusals`].
pub fn plan(image: &Path, device: &Path, roots: &Roots) -> Result<FlashPlan, Error> {
    let img_err = |source| Error::Image {
        path: image.to_owned(),
        source,
    };
    let mut f = File::open(image).map_err(img_err)?;
    let image_size = f.metadata().map_err(img_err)?.len();
    if image_size == 0 {
        return Err(Error::EmptyImage {
            path: image.to_owned(),
        });
    }
    let mut head = vec![0u8; 1024];
    let n = read_full(&mut f, &mut head).map_err(img_err)?;
    head.truncate(n);
    let meta = std::fs::metadata(device).map_err(|source| Error::Device {
        path: device.to_owned(),
        source,
    })?;
    if !meta.file_type().is_block_device() {
        return Err(Error::NotBlock {
            path: device.to_owned(),
        });
    }
    let rdev = meta.rdev();
    let dev = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    let disk = disk_info(roots, device, &dev)?;
    let proc_err = |what, source| Error::Proc {
        path: roots.proc.display().to_string(),
        what,
        source,
    };
    let mountinfo = std::fs::read_to_string(roots.proc.join("self/mountinfo"))
        .map_err(|e| proc_err("self/mountinfo", e))?;
    let swaps = std::fs::read_to_string(roots.proc.join("swaps")).unwrap_or_default();
    let refusals = checks(
        &disk,
        image_size,
        &parse_mountinfo(&mountinfo),
        &swap_devs(roots, &swaps),
        roots,
    );
    Ok(FlashPlan {
        image: image.to_owned(),
        image_size,
        image_kind: image_kind(&head, image_size),
        device: device.to_owned(),
        disk,
        refusals,
    })
}

/// `MAJ:MIN` of the block devices in /proc/swaps (swap files are skipped).
fn swap_devs(roots: &Roots, swaps: &str) -> Vec<String> {
    swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|path| {
            let name = path.strip_prefix("/dev/")?;
            let name = name.rsplit('/').next()?;
            read_trim(&roots.sys.join("class/block").join(name).join("dev"))
        })
        .collect()
}

/// The checks, on data only.
pub fn checks(
    disk: &DiskInfo,
    image_size: u64,
    mounts: &[(String, String)],
    swaps: &[String],
    roots: &Roots,
) -> Vec<Refusal> {
    let mut r = Vec::new();
    if let Some(parent) = &disk.parent {
        r.push(Refusal::Partition {
            name: disk.name.clone(),
            parent: parent.clone(),
        });
    }
    if disk.read_only {
        r.push(Refusal::ReadOnly {
            name: disk.name.clone(),
        });
    }
    if image_size > disk.size {
        r.push(Refusal::TooSmall {
            name: disk.name.clone(),
            image: image_size,
            device: disk.size,
        });
    }
    if root_disks(roots, mounts).contains(&disk.dev) {
        r.push(Refusal::Root {
            name: disk.name.clone(),
        });
    }
    let mut devs = vec![(disk.name.clone(), disk.dev.clone())];
    devs.extend(disk.partitions.iter().cloned());
    for (name, dev) in &devs {
        if let Some((_, mp)) = mounts.iter().find(|(d, _)| d == dev) {
            r.push(Refusal::Mounted {
                dev: name.clone(),
                mountpoint: mp.clone(),
            });
        }
        if swaps.contains(dev) {
            r.push(Refusal::Swap { dev: name.clone() });
        }
        let holders_dir = roots.sys.join("class/block").join(name).join("holders");
        if let Ok(entries) = std::fs::read_dir(&holders_dir) {
            let mut holders: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            holders.sort();
            if !holders.is_empty() {
                r.push(Refusal::Held {
                    dev: name.clone(),
                    holders: holders.join(", "),
                });
            }
        }
    }
    if !disk.removable && disk.hotplug_bus.is_none() {
        r.push(Refusal::NotRemovable {
            name: disk.name.clone(),
        });
    }
    r
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What a finished flash reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Flashed {
    pub bytes: u64,
    /// sha256 of the image and of the bytes read back (equal, or the flash failed).
    pub sha256: String,
    pub write_secs: f64,
    pub verify_secs: f64,
}

/// Copies `image` to `target` (already open for writing and reading) with a progress bar, syncs,
/// and reads back comparing block by block. `device` names the target in errors.
pub fn write_and_verify(
    image: &Path,
    target: &mut File,
    device: &Path,
    show_progress: bool,
) -> Result<Flashed, Error> {
    let img_err = |source| Error::Image {
        path: image.to_owned(),
        source,
    };
    let mut src = File::open(image).map_err(img_err)?;
    let total = src.metadata().map_err(img_err)?.len();
    let mut buf = vec![0u8; BLOCK];
    let mut hash = Sha256::new();
    let started = std::time::Instant::now();
    let mut bar = Bar::new("write", total, show_progress);
    let mut offset = 0u64;
    target
        .seek(SeekFrom::Start(0))
        .map_err(|source| Error::Write {
            device: device.to_owned(),
            offset,
            source,
        })?;
    while offset < total {
        let n = read_full(&mut src, &mut buf).map_err(img_err)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        target.write_all(&buf[..n]).map_err(|source| Error::Write {
            device: device.to_owned(),
            offset,
            source,
        })?;
        offset += n as u64;
        bar.set(offset);
    }
    match target.sync_all() {
        // EINVAL: a special file that cannot sync (a character device in tests); nothing to wait for.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(source) => {
            return Err(Error::Write {
                device: device.to_owned(),
                offset,
                source,
            })
        }
        Ok(()) => {}
    }
    bar.finish();
    let write_secs = started.elapsed().as_secs_f64();
    let sha256 = hex::encode(hash.finalize());
    drop_caches(target);

    let started = std::time::Instant::now();
    let mut bar = Bar::new("verify", total, show_progress);
    src.seek(SeekFrom::Start(0)).map_err(img_err)?;
    target
        .seek(SeekFrom::Start(0))
        .map_err(|source| Error::ReadBack {
            device: device.to_owned(),
            offset: 0,
            source,
        })?;
    let mut back = vec![0u8; BLOCK];
    let mut back_hash = Sha256::new();
    let mut offset = 0u64;
    while offset < total {
        let want = usize::try_from((total - offset).min(BLOCK as u64)).unwrap_or(BLOCK);
        let n = read_full(&mut src, &mut buf[..want]).map_err(img_err)?;
        let m = read_full(target, &mut back[..n]).map_err(|source| Error::ReadBack {
            device: device.to_owned(),
            offset,
            source,
        })?;
        back_hash.update(&back[..m]);
        if m != n || buf[..n] != back[..n] {
            return Err(Error::Mismatch {
                device: device.to_owned(),
                image: image.to_owned(),
                offset,
            });
        }
        offset += n as u64;
        bar.set(offset);
    }
    bar.finish();
    let back_sha = hex::encode(back_hash.finalize());
    if back_sha != sha256 {
        return Err(Error::Mismatch {
            device: device.to_owned(),
            image: image.to_owned(),
            offset: 0,
        });
    }
    Ok(Flashed {
        bytes: total,
        sha256,
        write_secs,
        verify_secs: started.elapsed().as_secs_f64(),
    })
}

/// Makes the read-back come from the device, not the page cache: flush the block device's
/// buffers (BLKFLSBUF, block devices only) and drop the file's cached pages.
fn drop_caches(f: &File) {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let is_block = f.metadata().is_ok_and(|m| m.file_type().is_block_device());
    if is_block {
        // BLKFLSBUF = _IO(0x12, 97)
        const BLKFLSBUF: libc::c_ulong = 0x1261;
        // SAFETY: fd is an open block device for the duration of the call; BLKFLSBUF takes no
        // argument.
        let rc = unsafe { libc::ioctl(fd, BLKFLSBUF as _, 0) };
        if rc != 0 {
            tracing::debug!(
                "BLKFLSBUF: {}; read-back may come from the cache",
                std::io::Error::last_os_error()
            );
        }
    }
    // SAFETY: plain advice on an open fd; no memory is passed.
    unsafe {
        libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Asks the kernel to re-read the partition table (errors ignored: a loop device without
/// partition scanning says EINVAL, and nothing depends on it).
fn reread_partitions(f: &File) {
    use std::os::fd::AsRawFd;
    // BLKRRPART = _IO(0x12, 95)
    const BLKRRPART: libc::c_ulong = 0x125f;
    // SAFETY: fd is an open block device; BLKRRPART takes no argument.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKRRPART as _, 0) };
    if rc != 0 {
        tracing::debug!(
            "BLKRRPART: {} (partition table not re-read)",
            std::io::Error::last_os_error()
        );
    }
}

/// Options of `drove flash`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Skip the confirmation.
    pub yes: bool,
    /// Override the refusals that may be overridden (not removable).
    pub force: bool,
    /// Show progress bars (on a terminal) and the plan.
    pub quiet: bool,
}

/// `drove flash`: plan, show, confirm (from `confirm`), write, verify.
pub fn flash(
    image: &Path,
    device: &Path,
    opts: &Options,
    roots: &Roots,
    confirm: &mut dyn BufRead,
) -> Result<Flashed, Error> {
    let plan = plan(image, device, roots)?;
    let blocking = plan.blocking(opts.force);
    eprint!("{}", plan.describe());
    if !blocking.is_empty() {
        return Err(Error::Refused {
            device: device.to_owned(),
            reasons: blocking,
        });
    }
    if !plan.refusals.is_empty() {
        // Only forcible refusals are left here (the others returned above).
        eprintln!(
            "drove flash: --force: writing to {}, which does not say it is removable",
            plan.disk.name
        );
    }
    if !opts.yes {
        eprint!(
            "Type yes to overwrite {} ({}): ",
            device.display(),
            plan.disk.name
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = confirm.read_line(&mut answer);
        if answer.trim() != "yes" {
            return Err(Error::NotConfirmed {
                device: device.to_owned(),
            });
        }
    }
    let mut target = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(device)
        .map_err(|source| Error::Open {
            device: device.to_owned(),
            source,
        })?;
    let show = !opts.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let done = write_and_verify(image, &mut target, device, show)?;
    reread_partitions(&target);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake /sys with one disk `name` (`dev`) under `devices/<bus>/block/<name>`, with
    /// partitions; returns the roots.
    struct FakeSys {
        dir: tempfile::TempDir,
    }

    impl FakeSys {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("sys/dev/block")).unwrap();
            std::fs::create_dir_all(dir.path().join("sys/class/block")).unwrap();
            std::fs::create_dir_all(dir.path().join("proc/self")).unwrap();
            FakeSys { dir }
        }

        fn roots(&self) -> Roots {
            Roots {
                sys: self.dir.path().join("sys"),
                proc: self.dir.path().join("proc"),
            }
        }

        #[allow(clippy::too_many_arguments)]
        fn disk(
            &self,
            bus: &str,
            name: &str,
            dev: &str,
            sectors: u64,
            removable: bool,
            model: &str,
            parts: &[(&str, &str)],
        ) {
            let sys = self.dir.path().join("sys");
            let d = sys.join("devices").join(bus).join("block").join(name);
            std::fs::create_dir_all(d.join("device")).unwrap();
            std::fs::create_dir_all(d.join("holders")).unwrap();
            std::fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
            std::fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
            std::fs::write(d.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
            std::fs::write(d.join("ro"), "0\n").unwrap();
            std::fs::write(d.join("device/model"), format!("{model}   \n")).unwrap();
            symlink(&d, sys.join("dev/block").join(dev)).unwrap();
            symlink(&d, sys.join("class/block").join(name)).unwrap();
            for (p, pdev) in parts {
                let pd = d.join(p);
                std::fs::create_dir_all(pd.join("holders")).unwrap();
                std::fs::write(pd.join("dev"), format!("{pdev}\n")).unwrap();
                std::fs::write(pd.join("partition"), "1\n").unwrap();
                std::fs::write(pd.join("size"), "100\n").unwrap();
                symlink(&pd, sys.join("dev/block").join(pdev)).unwrap();
                symlink(&pd, sys.join("class/block").join(p)).unwrap();
            }
        }

        fn mounts(&self, lines: &[(&str, &str)]) -> Vec<(String, String)> {
            let text: String = lines
                .iter()
                .enumerate()
                .map(|(i, (dev, mp))| {
                    let mp = mp.replace(' ', "\\040");
                    format!("{i} 1 {dev} / {mp} rw - ext4 /dev/x rw\n")
                })
                .collect();
            std::fs::write(self.dir.path().join("proc/self/mountinfo"), &text).unwrap();
            parse_mountinfo(&text)
        }
    }

    fn info(fs: &FakeSys, dev: &str) -> DiskInfo {
        disk_info(&fs.roots(), Path::new("/dev/x"), dev).unwrap()
    }

    const GIB: u64 = 2 * 1024 * 1024; // sectors

    #[test]
    fn usb_stick_passes() {
        let fs = FakeSys::new();
        fs.disk(
            "pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host6/target6:0:0/6:0:0:0",
            "sdb",
            "8:16",
            8 * GIB,
            false,
            "Cruzer Blade",
            &[("sdb1", "8:17")],
        );
        fs.disk(
            "pci0000:00/ata1",
            "sda",
            "8:0",
            500 * GIB,
            false,
            "Samsung SSD",
            &[("sda1", "8:1")],
        );
        let mounts = fs.mounts(&[("8:1", "/")]);
        let d = info(&fs, "8:16");
        assert_eq!(d.name, "sdb");
        assert_eq!(d.size, 8 << 30);
        assert_eq!(d.model, "Cruzer Blade");
        assert_eq!(d.hotplug_bus, Some("USB"));
        assert_eq!(d.partitions, vec![("sdb1".to_string(), "8:17".to_string())]);
        assert!(checks(&d, 40 << 20, &mounts, &[], &fs.roots()).is_empty());
    }

    #[test]
    fn root_disk_and_internal_disk_are_refused() {
        let fs = FakeSys::new();
        fs.disk(
            "pci0000:00/ata1",
            "sda",
            "8:0",
            500 * GIB,
            false,
            "Samsung SSD",
            &[("sda1", "8:1"), ("sda2", "8:2")],
        );
        let mounts = fs.mounts(&[("8:2", "/"), ("0:22", "/sys")]);
        let d = info(&fs, "8:0");
        let r = checks(&d, 40 << 20, &mounts, &[], &fs.roots());
        assert!(r.contains(&Refusal::Root { name: "sda".into() }), "{r:?}");
        assert!(
            r.contains(&Refusal::Mounted {
                dev: "sda2".into(),
                mountpoint: "/".into()
            }),
            "{r:?}"
        );
        assert!(
            r.contains(&Refusal::NotRemovable { name: "sda".into() }),
            "{r:?}"
        );
        // --force lifts only the removable check.
        let plan = FlashPlan {
            image: "disk.img".into(),
            image_size: 1,
            image_kind: String::new(),
            device: "/dev/sda".into(),
            disk: d,
            refusals: r,
        };
        let left = plan.blocking(true);
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.iter().all(|r| !r.forcible()));
        assert!(
            plan.describe().contains("Samsung SSD, 500.0 GiB"),
            "{}",
            plan.describe()
        );
        assert!(plan.describe().contains("NOT removable"));
    }

    #[test]
    fn root_on_device_mapper_refuses_the_disks_below() {
        let fs = FakeSys::new();
        fs.disk(
            "pci0000:00/nvme",
            "nvme0n1",
            "259:0",
            500 * GIB,
            false,
            "WD",
            &[("nvme0n1p3", "259:3")],
        );
        fs.disk("virtual", "dm-0", "254:0", 400 * GIB, false, "", &[]);
        let sys = fs.roots().sys;
        let slaves = sys.join("devices/virtual/block/dm-0/slaves");
        std::fs::create_dir_all(&slaves).unwrap();
        symlink(
            sys.join("devices/pci0000:00/nvme/block/nvme0n1/nvme0n1p3"),
            slaves.join("nvme0n1p3"),
        )
        .unwrap();
        let mounts = fs.mounts(&[("254:0", "/")]);
        let roots = root_disks(&fs.roots(), &mounts);
        assert!(roots.contains(&"259:0".to_string()), "{roots:?}");
        let r = checks(&info(&fs, "259:0"), 1, &mounts, &[], &fs.roots());
        assert!(
            r.contains(&Refusal::Root {
                name: "nvme0n1".into()
            }),
            "{r:?}"
        );
    }

    #[test]
    fn mounted_partition_swap_holders_size_partition_readonly() {
        let fs = FakeSys::new();
        fs.disk(
            "pci/usb2/x",
            "sdc",
            "8:32",
            1024,
            true,
            "Card Reader",
            &[("sdc1", "8:33"), ("sdc2", "8:34")],
        );
        let mounts = fs.mounts(&[("8:33", "/media/my stick")]);
        let sys = fs.roots().sys;
        std::fs::create_dir_all(sys.join("devices/pci/usb2/x/block/sdc/sdc2/holders/dm-3"))
            .unwrap();
        let d = info(&fs, "8:32");
        assert!(d.removable);
        let r = checks(&d, 1 << 20, &mounts, &["8:34".to_string()], &fs.roots());
        assert!(
            r.contains(&Refusal::Mounted {
                dev: "sdc1".into(),
                mountpoint: "/media/my stick".into()
            }),
            "{r:?}"
        );
        assert!(r.contains(&Refusal::Swap { dev: "sdc2".into() }), "{r:?}");
        assert!(
            r.contains(&Refusal::Held {
                dev: "sdc2".into(),
                holders: "dm-3".into()
            }),
            "{r:?}"
        );
        assert!(
            r.contains(&Refusal::TooSmall {
                name: "sdc".into(),
                image: 1 << 20,
                device: 512 * 1024
            }),
            "{r:?}"
        );
        assert!(!r.iter().any(|r| matches!(r, Refusal::NotRemovable { .. })));

        let p = info(&fs, "8:33");
        assert_eq!(p.parent.as_deref(), Some("sdc"));
        let r = checks(&p, 1, &[], &[], &fs.roots());
        assert!(
            r.contains(&Refusal::Partition {
                name: "sdc1".into(),
                parent: "sdc".into()
            }),
            "{r:?}"
        );

        std::fs::write(sys.join("devices/pci/usb2/x/block/sdc/ro"), "1\n").unwrap();
        std::fs::remove_dir(sys.join("devices/pci/usb2/x/block/sdc/sdc2/holders/dm-3")).unwrap();
        let r = checks(&info(&fs, "8:32"), 1, &[], &[], &fs.roots());
        assert_eq!(r, vec![Refusal::ReadOnly { name: "sdc".into() }]);
    }

    #[test]
    fn mountinfo_escapes_and_image_kinds() {
        let m = parse_mountinfo(
            "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n",
        );
        assert_eq!(m, vec![("98:0".to_string(), "/mnt/a b".to_string())]);
        let mut head = vec![0u8; 1024];
        head[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(image_kind(&head, 40 << 20), "disk image with a GPT");
        let mut fat = vec![0u8; 1024];
        fat[54..59].copy_from_slice(b"FAT12");
        assert!(image_kind(&fat, 1_474_560).contains("floppy"));
        assert!(image_kind(&[0; 10], 10).contains("not recognised"));
    }

    #[test]
    fn plan_refuses_a_regular_file_and_a_missing_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::write(&img, [1u8; 4096]).unwrap();
        let err = plan(&img, &img, &Roots::system()).unwrap_err();
        assert!(matches!(err, Error::NotBlock { .. }), "{err}");
        let err = plan(
            &dir.path().join("nope.img"),
            Path::new("/dev/null"),
            &Roots::system(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("nope.img"), "{err}");
        std::fs::write(&img, []).unwrap();
        assert!(matches!(
            plan(&img, Path::new("/dev/null"), &Roots::system()).unwrap_err(),
            Error::EmptyImage { .. }
        ));
    }

    #[test]
    fn write_and_verify_on_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        // Not a multiple of the block size, to cover the short last block.
        let data: Vec<u8> = (0..(BLOCK as u32 + 12_345))
            .map(|i| (i * 31 % 253) as u8)
            .collect();
        std::fs::write(&img, &data).unwrap();
        let dev = dir.path().join("dev");
        std::fs::write(&dev, vec![0xffu8; data.len() + 4096]).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .unwrap();
        let done = write_and_verify(&img, &mut f, &dev, false).unwrap();
        assert_eq!(done.bytes, data.len() as u64);
        assert_eq!(done.sha256, hex::encode(Sha256::digest(&data)));
        let back = std::fs::read(&dev).unwrap();
        assert_eq!(&back[..data.len()], &data[..]);
        // The bytes past the image are left alone.
        assert!(back[data.len()..].iter().all(|b| *b == 0xff));
    }

    #[test]
    fn a_device_that_drops_writes_fails_the_verify() {
        // /dev/zero takes every write and reads back zeros: a fake-capacity stick in miniature.
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("floppy.img");
        std::fs::write(&img, vec![7u8; 100_000]).unwrap();
        let dev = Path::new("/dev/zero");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev)
            .unwrap();
        let err = write_and_verify(&img, &mut f, dev, false).unwrap_err();
        assert!(matches!(err, Error::Mismatch { offset: 0, .. }), "{err}");
        assert!(err.to_string().contains("floppy.img"), "{err}");
        // A target opened read-only fails the write, with the offset.
        let mut f = File::open(dev).unwrap();
        let err = write_and_verify(&img, &mut f, dev, false).unwrap_err();
        assert!(matches!(err, Error::Write { offset: 0, .. }), "{err}");
    }
}
