//! `drove flash` against real loop devices (root only: losetup, mkfs.ext4 and mount need it; the
//! test prints why it is skipped otherwise). Runs the real binary, as a user would.
//!
//! Loop devices say removable=0 and sit on no USB bus, so drove treats them like an internal disk:
//! refused without `--force`. The tests show that refusal, then flash with `--force --yes` and
//! check the bytes; a mounted loop device (and one with a mounted partition) is refused even with
//! `--force`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn drove() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_drove"))
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (losetup and mount need root)".into());
    }
    for tool in ["losetup", "mkfs.ext4", "mount", "umount", "sgdisk"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control (loop devices unavailable here)".into());
    }
    None
}

macro_rules! root_only {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A loop device over a file of `mib` MiB; detached (and unmounted) on drop.
struct Loop {
    dev: String,
    mounts: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(mib: u64, partscan: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backing.img");
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(mib << 20).unwrap();
        drop(f);
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if partscan {
            cmd.arg("--partscan");
        }
        let dev = sh(cmd.arg(&file)).trim().to_string();
        assert!(dev.starts_with("/dev/loop"), "{dev}");
        Loop {
            dev,
            mounts: Vec::new(),
            _dir: dir,
        }
    }

    fn mount(&mut self, dev: &str) {
        let mp = self._dir.path().join(format!("mnt{}", self.mounts.len()));
        std::fs::create_dir(&mp).unwrap();
        sh(Command::new("mkfs.ext4").args(["-q", "-F", dev]));
        sh(Command::new("mount").arg(dev).arg(&mp));
        self.mounts.push(mp);
    }

    fn unmount_all(&mut self) {
        for mp in self.mounts.drain(..) {
            let _ = Command::new("umount").arg(&mp).status();
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.unmount_all();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn flash(image: &Path, dev: &str, args: &[&str]) -> Output {
    let out = Command::new(drove())
        .arg("flash")
        .arg(image)
        .arg(dev)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "$ drove flash {} {dev} {}\n{}{}",
        image.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An image like disk.img: a GPT (from sgdisk) over patterned bytes, 5 MiB and a bit (not a
/// whole number of sectors, to cover a short last write).
fn image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("disk.img");
    let data: Vec<u8> = (0..(5u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    sh(Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:0", "-t", "1:ef00"])
        .arg(&path));
    let mut data = std::fs::read(&path).unwrap();
    data.extend_from_slice(b"tail");
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

fn read_dev(dev: &str, len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; len];
    std::fs::File::open(dev)
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

#[test]
fn flash_to_a_loop_device_is_verified() {
    root_only!();
    let dir = tempfile::tempdir().unwrap();
    let (img, data) = image(dir.path());
    let lo = Loop::new(16, false);

    // Not removable: refused without --force, and nothing is written.
    let out = flash(&img, &lo.dev, &["--yes"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a removable disk") && err.contains("--force"),
        "{err}"
    );
    assert!(
        err.contains("will overwrite") && err.contains("16.0 MiB (16777216 bytes)"),
        "{err}"
    );
    assert!(err.contains("loop device backed by"), "{err}");
    assert!(read_dev(&lo.dev, 4096).iter().all(|b| *b == 0));

    // No --yes and no "yes" on stdin: not confirmed, nothing written.
    let out = flash(&img, &lo.dev, &["--force"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not confirmed"));
    assert!(read_dev(&lo.dev, 4096).iter().all(|b| *b == 0));

    let out = flash(&img, &lo.dev, &["--force", "--yes"]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    assert!(said.contains("verified") && said.contains(&sha), "{said}");
    assert_eq!(read_dev(&lo.dev, data.len()), data);

    // An image larger than the device is refused.
    let big = dir.path().join("big.img");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    let out = flash(&big, &lo.dev, &["--force", "--yes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than"));
}

#[test]
fn flash_to_a_mounted_loop_device_is_refused() {
    root_only!();
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = image(dir.path());
    let mut lo = Loop::new(16, false);
    let dev = lo.dev.clone();
    lo.mount(&dev);
    let before = read_dev(&lo.dev, 1 << 20);
    let out = flash(&img, &lo.dev, &["--force", "--yes"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let name = lo.dev.trim_start_matches("/dev/");
    assert!(err.contains(&format!("{name} is mounted on")), "{err}");
    assert_eq!(read_dev(&lo.dev, 1 << 20), before);
}

#[test]
fn flash_to_a_disk_with_a_mounted_partition_is_refused() {
    root_only!();
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = image(dir.path());
    let mut lo = Loop::new(32, true);
    sh(Command::new("sgdisk").args(["-o", "-n", "1:2048:+8M", "-n", "2:0:0", &lo.dev]));
    sh(Command::new("partx").args(["-u", &lo.dev]));
    let part = format!("{}p2", lo.dev);
    // udev may not run here: wait briefly for the partition node the kernel announced.
    for _ in 0..50 {
        if Path::new(&part).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if !Path::new(&part).exists() {
        eprintln!("skipped: no {part} node (no udev/devtmpfs partition nodes here)");
        return;
    }
    lo.mount(&part);
    let out = flash(&img, &lo.dev, &["--force", "--yes"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let pname = part.trim_start_matches("/dev/");
    assert!(err.contains(&format!("{pname} is mounted on")), "{err}");
    assert!(err.contains("p1, "), "the plan lists the partitions: {err}");
}
