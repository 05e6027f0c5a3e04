//! `floppy.img`: a 1,474,560-byte FAT12 netboot floppy. BIOS: syslinux boots `ipxe.lkrn` with a
//! small iPXE script as its INITRD; the script DHCPs (retrying) and chains `<server>/boot.ipxe`.
//! UEFI (when it fits): `\EFI\BOOT\BOOTX64.EFI` = `ipxe.efi`, with the same script beside it as
//! `autoexec.ipxe` (see docs/media.md for what Debian 12's iPXE does with it).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::fat::{self, FatTree, FatType};
use super::OutputContext;
use crate::cmd::Cmd;
use crate::staged::StagedFile;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("planning the floppy")]
    Plan(#[source] fat::Error),
    #[error(
        "floppy.img over budget: needs {need} bytes, a 1440 KiB FAT12 floppy holds {have}\n{table}"
    )]
    OverBudget { need: u64, have: u64, table: String },
    #[error("{path}: cannot create the image")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the floppy's FAT12 volume")]
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

/// A 3.5" high-density floppy: 80 cylinders × 2 heads × 18 sectors × 512 bytes.
pub const FLOPPY_BYTES: u64 = 1_474_560;
const SECTORS: u32 = 2880;
/// Data area of that floppy as fatfs formats it: 2880 sectors − 1 boot − 2 × 9 FAT − 14 root dir.
pub const DATA_BYTES: u64 = (2880 - 1 - 18 - 14) * 512;
/// Clusters `syslinux --install` adds (ldlinux.sys 59,392 + ldlinux.c32 119,532 bytes for 6.04 =
/// 179,200 in 512-byte clusters), rounded up.
pub const SYSLINUX_RESERVE: u64 = 192 * 1024;

/// The floppy's files and whether the UEFI part made it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloppyPlan {
    pub tree: FatTree,
    pub uefi: bool,
    /// Data-area bytes the plan takes, syslinux included.
    pub used: u64,
}

/// The iPXE script both loaders run: DHCP until it works, then chain the server's boot script
/// (retrying, so a node that powers up before the server still comes up).
pub fn script(server: &str) -> String {
    let base = super::server_base(server);
    format!(
        "#!ipxe\n\
         echo drove: netboot from {base}\n\
         :dhcp\n\
         dhcp || goto dhcp_retry\n\
         chain {base}/boot.ipxe || goto chain_retry\n\
         :dhcp_retry\n\
         echo drove: no DHCP answer, retrying in 5 s\n\
         sleep 5\n\
         goto dhcp\n\
         :chain_retry\n\
         echo drove: cannot load {base}/boot.ipxe, retrying in 5 s\n\
         sleep 5\n\
         goto dhcp\n"
    )
}

pub fn syslinux_cfg() -> String {
    "DEFAULT drove\nPROMPT 0\nTIMEOUT 0\n\nLABEL drove\n  LINUX /ipxe.lkrn\n  INITRD /drove.ipxe\n"
        .into()
}

/// Plans the floppy: the BIOS part must fit (else [`Error::OverBudget`] with a size table); the
/// UEFI part is added only when it fits too.
pub fn plan(server: &str, ipxe_lkrn: &Path, ipxe_efi: &Path) -> Result<FloppyPlan, Error> {
    let mut bios = FatTree::new();
    bios.add_bytes("syslinux.cfg", syslinux_cfg().into_bytes(), "config")
        .map_err(Error::Plan)?;
    bios.add_bytes("drove.ipxe", script(server).into_bytes(), "config")
        .map_err(Error::Plan)?;
    bios.add_file("ipxe.lkrn", ipxe_lkrn, "ipxe.lkrn")
        .map_err(Error::Plan)?;
    let used = |t: &FatTree| t.data_bytes(512, false) + SYSLINUX_RESERVE;
    if used(&bios) > DATA_BYTES {
        return Err(over_budget(&bios));
    }
    let mut both = bios.clone();
    both.add_file("EFI/BOOT/BOOTX64.EFI", ipxe_efi, "ipxe.efi")
        .map_err(Error::Plan)?;
    both.add_bytes(
        "EFI/BOOT/autoexec.ipxe",
        script(server).into_bytes(),
        "config",
    )
    .map_err(Error::Plan)?;
    if used(&both) <= DATA_BYTES {
        let used = used(&both);
        return Ok(FloppyPlan {
            tree: both,
            uefi: true,
            used,
        });
    }
    tracing::warn!(
        need = used(&both),
        have = DATA_BYTES,
        "ipxe.efi does not fit on the floppy beside the BIOS loaders: floppy.img boots BIOS only"
    );
    let used = used(&bios);
    Ok(FloppyPlan {
        tree: bios,
        uefi: false,
        used,
    })
}

fn over_budget(t: &FatTree) -> Error {
    let mut rows = t.components();
    rows.push((
        "syslinux (ldlinux.sys, ldlinux.c32)".into(),
        SYSLINUX_RESERVE,
    ));
    let files: u64 = t.files().iter().map(|f| f.size).sum();
    rows.push((
        "FAT rounding and directories".into(),
        t.data_bytes(512, false).saturating_sub(files),
    ));
    let need: u64 = rows.iter().map(|(_, n)| n).sum();
    let width = rows.iter().map(|(c, _)| c.len()).max().unwrap_or(9).max(9);
    let mut table = format!("{:<width$}  {:>10}\n", "component", "bytes");
    for (c, n) in &rows {
        table.push_str(&format!("{c:<width$}  {n:>10}\n"));
    }
    table.push_str(&format!(
        "{:<width$}  {need:>10}\n{:<width$}  {DATA_BYTES:>10}",
        "total", "available"
    ));
    Error::OverBudget {
        need,
        have: DATA_BYTES,
        table,
    }
}

/// Plans and writes `out_dir/floppy.img`.
pub fn write(ctx: &OutputContext) -> Result<super::Artifact, Error> {
    let plan = plan(ctx.server, &ctx.loaders.ipxe_lkrn, &ctx.loaders.ipxe_efi)?;
    let final_path = ctx.out_dir.join("floppy.img");
    let tmp = StagedFile::create(&final_path).map_err(|source| Error::Create {
        path: final_path.clone(),
        source,
    })?;
    let tmp_path = tmp.path().to_path_buf();
    let files = write_image(ctx, &plan, tmp.file(), &tmp_path)?;

    let mut components = plan.tree.components();
    let syslinux = plan.tree.bytes_added_by_others(&files);
    components.push(("syslinux".into(), syslinux));
    let used: u64 = components.iter().map(|(_, n)| n).sum();
    components.push((
        "free and metadata".into(),
        FLOPPY_BYTES.saturating_sub(used),
    ));

    tmp.commit(0o644).map_err(|source| Error::Persist {
        path: final_path.clone(),
        source,
    })?;
    tracing::info!(path = %final_path.display(), uefi = plan.uefi, "wrote floppy image");
    Ok(super::Artifact {
        path: "floppy.img".into(),
        components,
    })
}

fn write_image(
    ctx: &OutputContext,
    plan: &FloppyPlan,
    file: &File,
    path: &Path,
) -> Result<Vec<(String, u64)>, Error> {
    let create = |source| Error::Create {
        path: path.into(),
        source,
    };
    file.set_len(FLOPPY_BYTES).map_err(create)?;
    let mut dev = file;
    let vol = ctx.derive("floppy volume id");
    let format = fat::Format {
        fat_type: FatType::Fat12,
        sectors: SECTORS,
        cluster_bytes: 512,
        volume_id: u32::from_le_bytes([vol[0], vol[1], vol[2], vol[3]]),
        label: *b"DROVE NET  ",
        media: 0xf0,
        heads: 2,
        sectors_per_track: 18,
        root_entries: 224,
        drive_num: 0,
    };
    fat::write(&mut dev, &format, &plan.tree, ctx.epoch, path).map_err(Error::Fat)?;
    dev.flush().map_err(create)?;
    Cmd::new(&ctx.loaders.syslinux)
        .arg("--install")
        .arg(path)
        .env("MTOOLS_SKIP_CHECK", "1")
        .run()
        .map_err(|source| Error::Syslinux {
            path: path.into(),
            source,
        })?;
    let slice = fat::Slice::new(&mut dev, 0, FLOPPY_BYTES).map_err(create)?;
    let files = fat::fix_timestamps(slice, ctx.epoch, path).map_err(Error::Fat)?;
    dev.flush().map_err(create)?;
    Ok(files)
}
