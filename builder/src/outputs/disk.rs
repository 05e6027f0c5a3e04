//! `disk.img`: a GPT disk with one FAT32 EFI System Partition that boots under UEFI
//! (systemd-boot) and BIOS (gptmbr → syslinux) alike.
//!
//! Layout: protective MBR with syslinux's `gptmbr.bin` in its first 440 bytes, GPT, the ESP at
//! sector 2048 (type EF00, attribute bit 2 "legacy BIOS bootable"), 1 MiB of tail for the backup
//! GPT. The ESP holds systemd-boot as `\EFI\BOOT\BOOTX64.EFI` with `loader/` entries, the kernel
//! and initrds under `drove/`, `syslinux.cfg`, and `ldlinux.sys`/`ldlinux.c32` from
//! `syslinux --install --offset`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::fat::{self, FatTree, FatType};
use super::{BootPayload, OutputContext};
use crate::cmd::Cmd;
use crate::staged::StagedFile;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("planning the EFI system partition")]
    Plan(#[source] fat::Error),
    #[error("{path}: cannot create the image")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot read the MBR boot code")]
    ReadMbr {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: MBR boot code is {size} bytes, more than the 440 an MBR holds")]
    MbrTooLarge { path: PathBuf, size: u64 },
    #[error("{path}: cannot write the protective MBR")]
    Mbr {
        path: PathBuf,
        source: gpt::mbr::MBRError,
    },
    #[error("{path}: cannot write the GPT")]
    Gpt {
        path: PathBuf,
        source: gpt::GptError,
    },
    #[error("{path}: disk of {bytes} bytes is too large for a FAT32 ESP")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("writing the EFI system partition")]
    Fat(#[source] fat::Error),
    #[error("installing syslinux into {path}")]
    Syslinux {
        path: PathBuf,
        source: crate::cmd::Error,
    },
    #[error("{path}: cannot move into place")]
    Persist {
        path: PathBuf,
        source: std::io::Error,
    },
}

const SECTOR: u64 = 512;
/// The ESP starts at 1 MiB, as partitioning tools align it.
pub const ESP_FIRST_LBA: u64 = 2048;
/// Space after the ESP: the backup GPT needs 33 sectors; the rest keeps the image MiB-aligned.
const TAIL_SECTORS: u64 = 2048;
/// FAT32 needs at least 65,525 clusters; keep a margin so fatfs's own FAT sizing stays FAT32.
const FAT32_MIN_CLUSTERS: u64 = 65_525 + 1024;
/// What `syslinux --install` adds (ldlinux.sys + ldlinux.c32: 178,924 bytes for 6.04), rounded up.
pub const SYSLINUX_RESERVE: u64 = 256 * 1024;
/// ESPs up to this size are built in memory, larger ones directly in the image file.
const IN_MEMORY_MAX: u64 = 256 << 20;
/// The name drove's boot entry has in every loader.
const ENTRY: &str = "drove";

/// Where everything goes on the disk: plain data, computed before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    pub esp: FatTree,
    pub esp_first_lba: u64,
    pub esp_sectors: u64,
    pub total_sectors: u64,
    pub cluster_bytes: u32,
}

impl DiskLayout {
    pub fn esp_offset(&self) -> u64 {
        self.esp_first_lba * SECTOR
    }
    pub fn total_bytes(&self) -> u64 {
        self.total_sectors * SECTOR
    }
}

/// The loader configurations for a payload.
pub fn loader_conf() -> String {
    format!("timeout 0\ndefault {ENTRY}.conf\neditor no\n")
}

pub fn loader_entry(payload: &BootPayload) -> String {
    let mut s = format!("title drove\nlinux /{ENTRY}/vmlinuz\n");
    for i in &payload.initrds {
        s.push_str(&format!("initrd /{ENTRY}/{}\n", i.name));
    }
    s.push_str(&format!("options {}\n", payload.cmdline));
    s
}

pub fn syslinux_cfg(payload: &BootPayload) -> String {
    let initrds: Vec<String> = payload
        .initrds
        .iter()
        .map(|i| format!("/{ENTRY}/{}", i.name))
        .collect();
    format!(
        "DEFAULT {ENTRY}\nPROMPT 0\nTIMEOUT 0\n\nLABEL {ENTRY}\n  LINUX /{ENTRY}/vmlinuz\n  INITRD {}\n  APPEND {}\n",
        initrds.join(","),
        payload.cmdline
    )
}

/// The ESP's files.
pub fn esp_tree(payload: &BootPayload, systemd_boot: &Path) -> Result<FatTree, fat::Error> {
    let mut t = FatTree::new();
    t.add_file("EFI/BOOT/BOOTX64.EFI", systemd_boot, "systemd-boot")?;
    t.add_bytes("loader/loader.conf", loader_conf().into_bytes(), "config")?;
    t.add_bytes(
        &format!("loader/entries/{ENTRY}.conf"),
        loader_entry(payload).into_bytes(),
        "config",
    )?;
    t.add_bytes("syslinux.cfg", syslinux_cfg(payload).into_bytes(), "config")?;
    t.add_file(&format!("{ENTRY}/vmlinuz"), &payload.kernel, "kernel")?;
    for i in &payload.initrds {
        t.add_file(&format!("{ENTRY}/{}", i.name), &i.path, &i.name)?;
    }
    Ok(t)
}

/// Sizes the ESP for `esp`: its clusters, syslinux's files and headroom (10 % + 1 MiB), at least
/// what FAT32 needs, rounded up to whole MiB. Clusters are 512 bytes below 256 MiB of data (the
/// FAT32 minimum is then about 33 MiB), 4 KiB above.
pub fn layout(esp: FatTree) -> DiskLayout {
    let need_small = esp.data_bytes(512, true) + SYSLINUX_RESERVE;
    let cluster: u64 = if need_small < 256 << 20 { 512 } else { 4096 };
    let need = esp.data_bytes(cluster, true) + SYSLINUX_RESERVE;
    let data = need + need / 10 + (1 << 20);
    let clusters = data.div_ceil(cluster).max(FAT32_MIN_CLUSTERS);
    let fat_sectors = ((clusters + 2) * 4).div_ceil(SECTOR);
    let sectors = 32 + 2 * fat_sectors + clusters * cluster / SECTOR;
    let esp_sectors = sectors.div_ceil(2048) * 2048;
    DiskLayout {
        esp,
        esp_first_lba: ESP_FIRST_LBA,
        esp_sectors,
        total_sectors: ESP_FIRST_LBA + esp_sectors + TAIL_SECTORS,
        cluster_bytes: cluster as u32,
    }
}

/// Plans and writes `out_dir/disk.img`.
pub fn write(ctx: &OutputContext, payload: &BootPayload) -> Result<super::Artifact, Error> {
    let plan = layout(esp_tree(payload, &ctx.loaders.systemd_boot).map_err(Error::Plan)?);
    let final_path = ctx.out_dir.join("disk.img");
    let tmp = StagedFile::create(&final_path).map_err(|source| Error::Create {
        path: final_path.clone(),
        source,
    })?;
    let tmp_path = tmp.path().to_path_buf();
    let extra = write_image(ctx, &plan, tmp.file(), &tmp_path)?;

    let mut components = plan.esp.components();
    components.push(("syslinux".into(), plan.esp.bytes_added_by_others(&extra)));
    let used: u64 = components.iter().map(|(_, n)| n).sum();
    components.push((
        "free and metadata".into(),
        plan.total_bytes().saturating_sub(used),
    ));

    tmp.commit(0o644).map_err(|source| Error::Persist {
        path: final_path.clone(),
        source,
    })?;
    tracing::info!(path = %final_path.display(), bytes = plan.total_bytes(), "wrote disk image");
    Ok(super::Artifact {
        path: "disk.img".into(),
        components,
    })
}

/// Writes the whole image into `file` (already created); returns every file on the ESP afterwards (`/path`, size).
fn write_image(
    ctx: &OutputContext,
    plan: &DiskLayout,
    file: &File,
    path: &Path,
) -> Result<Vec<(String, u64)>, Error> {
    let create = |source| Error::Create {
        path: path.into(),
        source,
    };
    file.set_len(plan.total_bytes()).map_err(create)?;
    let mut dev = file;

    // protective MBR with gptmbr.bin's boot code
    let mut mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(plan.total_sectors - 1).unwrap_or(u32::MAX),
    );
    mbr.set_bootcode(read_bootcode(&ctx.loaders.gptmbr)?);
    let sig = ctx.derive("disk mbr signature");
    mbr.set_disk_signature([sig[0], sig[1], sig[2], sig[3]]);
    mbr.overwrite_lba0(&mut dev).map_err(|source| Error::Mbr {
        path: path.into(),
        source,
    })?;

    // GPT: one ESP, legacy-BIOS-bootable
    let gpt_err = |source| Error::Gpt {
        path: path.into(),
        source,
    };
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut dev, Some(super::derive_guid(&ctx.seed, "disk guid")))
        .map_err(gpt_err)?;
    let esp = gpt::partition::Partition {
        part_type_guid: gpt::partition_types::EFI,
        part_guid: super::derive_guid(&ctx.seed, "esp guid"),
        first_lba: plan.esp_first_lba,
        last_lba: plan.esp_first_lba + plan.esp_sectors - 1,
        flags: gpt::partition::PartitionAttributes::BOOTABLE.bits(),
        name: "EFI System Partition".into(),
    };
    disk.update_partitions(BTreeMap::from([(1, esp)]))
        .map_err(gpt_err)?;
    disk.write().map_err(gpt_err)?;

    // FAT32 ESP
    let sectors = u32::try_from(plan.esp_sectors).map_err(|_| Error::TooLarge {
        path: path.into(),
        bytes: plan.total_bytes(),
    })?;
    let vol = ctx.derive("esp volume id");
    let format = fat::Format {
        fat_type: FatType::Fat32,
        sectors,
        cluster_bytes: plan.cluster_bytes,
        volume_id: u32::from_le_bytes([vol[0], vol[1], vol[2], vol[3]]),
        label: *b"DROVE      ",
        media: 0xf8,
        heads: 64,
        sectors_per_track: 32,
        root_entries: 0,
        drive_num: 0x80,
    };
    let esp_bytes = plan.esp_sectors * SECTOR;
    if esp_bytes <= IN_MEMORY_MAX {
        // fatfs does many small reads and writes (one per 512-byte cluster and FAT entry): build
        // the volume in memory and write it out at once, several times faster than on the file
        let mut volume = std::io::Cursor::new(vec![0u8; esp_bytes as usize]);
        fat::write(&mut volume, &format, &plan.esp, ctx.epoch, path).map_err(Error::Fat)?;
        patch(&mut dev, plan.esp_offset(), volume.get_ref()).map_err(create)?;
    } else {
        let slice = fat::Slice::new(&mut dev, plan.esp_offset(), esp_bytes).map_err(create)?;
        fat::write(slice, &format, &plan.esp, ctx.epoch, path).map_err(Error::Fat)?;
    }
    // fatfs leaves "hidden sectors" 0; a partition's boot sector records its start there, and
    // syslinux's boot code falls back to it when the MBR hands over no partition entry.
    let hidden = u32::try_from(plan.esp_first_lba).unwrap_or(u32::MAX);
    patch(&mut dev, plan.esp_offset() + 0x1c, &hidden.to_le_bytes()).map_err(create)?;
    dev.flush().map_err(create)?;

    // BIOS boot: syslinux writes its boot sector and ldlinux.{sys,c32} through mtools
    Cmd::new(&ctx.loaders.syslinux)
        .args(["--install", "--offset"])
        .arg(plan.esp_offset().to_string())
        .arg(path)
        .env("MTOOLS_SKIP_CHECK", "1")
        .run()
        .map_err(|source| Error::Syslinux {
            path: path.into(),
            source,
        })?;

    copy_to_backup_boot_sector(&mut dev, plan.esp_offset()).map_err(create)?;

    let slice =
        fat::Slice::new(&mut dev, plan.esp_offset(), plan.esp_sectors * SECTOR).map_err(create)?;
    let files = fat::fix_timestamps(slice, ctx.epoch, path).map_err(Error::Fat)?;
    dev.flush().map_err(create)?;
    Ok(files)
}

fn patch(dev: &mut &File, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    dev.seek(SeekFrom::Start(offset))?;
    dev.write_all(bytes)
}

/// FAT32 keeps a copy of its boot sector (BPB field at 0x32, sector 6 as fatfs formats it);
/// syslinux rewrites only the primary. Copying it keeps the two identical, as fsck expects.
fn copy_to_backup_boot_sector(dev: &mut &File, esp_offset: u64) -> std::io::Result<()> {
    let mut boot = [0u8; 512];
    dev.seek(SeekFrom::Start(esp_offset))?;
    dev.read_exact(&mut boot)?;
    let backup = u64::from(u16::from_le_bytes([boot[0x32], boot[0x33]]));
    let reserved = u64::from(u16::from_le_bytes([boot[0x0e], boot[0x0f]]));
    if backup == 0 || backup >= reserved {
        return Ok(());
    }
    patch(dev, esp_offset + backup * SECTOR, &boot)
}

fn read_bootcode(path: &Path) -> Result<[u8; 440], Error> {
    let mut f = File::open(path).map_err(|source| Error::ReadMbr {
        path: path.into(),
        source,
    })?;
    let mut code = Vec::new();
    f.read_to_end(&mut code).map_err(|source| Error::ReadMbr {
        path: path.into(),
        source,
    })?;
    if code.len() > 440 {
        return Err(Error::MbrTooLarge {
            path: path.into(),
            size: code.len() as u64,
        });
    }
    let mut out = [0u8; 440];
    out[..code.len()].copy_from_slice(&code);
    Ok(out)
}
