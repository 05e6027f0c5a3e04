//! Boot media writers, one table keyed by output name (`disk`, `floppy`, `pxe`).
//!
//! Each output plans first (a [`fat::FatTree`], a disk layout, a file list: plain data) and then
//! writes under a temporary name in the output directory, renaming only when complete. Every
//! timestamp comes from [`OutputContext::epoch`] and every GUID or volume id from
//! [`OutputContext::seed`], so the same inputs give byte-identical media.

pub mod disk;
pub mod fat;
pub mod floppy;
pub mod pxe;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown output {name:?} (known outputs: {known})")]
    UnknownOutput { name: String, known: String },
    #[error("output {output:?} needs a kernel and initramfs, but none was given")]
    NoPayload { output: &'static str },
    #[error("initrd name {name:?}: {why}")]
    BadInitrdName { name: String, why: &'static str },
    #[error("kernel command line {cmdline:?}: {why}")]
    BadCmdline { cmdline: String, why: &'static str },
    #[error("image server URL {server:?}: {why}")]
    BadServer { server: String, why: &'static str },
    #[error(transparent)]
    Disk(#[from] disk::Error),
    #[error(transparent)]
    Floppy(#[from] floppy::Error),
    #[error(transparent)]
    Pxe(#[from] pxe::Error),
}

/// What the disk and PXE outputs boot: a kernel, initramfs segments in order, a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPayload {
    pub kernel: PathBuf,
    /// Base initramfs first, then overlays; the kernel unpacks them in this order (later wins).
    pub initrds: Vec<Initrd>,
    pub cmdline: String,
}

/// One initramfs segment and the file name it gets on the media (`initramfs.img`,
/// `overlay-calibration-qemu.img`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initrd {
    pub name: String,
    pub path: PathBuf,
}

/// Boot loaders and firmware files taken from the host (Debian 12 paths by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaders {
    /// systemd-boot, installed as `\EFI\BOOT\BOOTX64.EFI` on the disk.
    pub systemd_boot: PathBuf,
    /// syslinux's GPT-aware MBR boot code (440 bytes).
    pub gptmbr: PathBuf,
    /// iPXE as a Linux kernel image, booted by syslinux on the floppy.
    pub ipxe_lkrn: PathBuf,
    /// iPXE for UEFI (floppy `\EFI\BOOT\BOOTX64.EFI`, PXE TFTP for UEFI clients).
    pub ipxe_efi: PathBuf,
    /// iPXE chain-loaded over the BIOS PXE stack (PXE TFTP for BIOS clients).
    pub undionly_kpxe: PathBuf,
    /// The mtools-based syslinux installer.
    pub syslinux: PathBuf,
}

impl Loaders {
    /// Paths from Debian 12's systemd-boot-efi, syslinux, syslinux-common and ipxe packages.
    pub fn debian() -> Self {
        Loaders {
            systemd_boot: "/usr/lib/systemd/boot/efi/systemd-bootx64.efi".into(),
            gptmbr: "/usr/lib/syslinux/mbr/gptmbr.bin".into(),
            ipxe_lkrn: "/usr/lib/ipxe/ipxe.lkrn".into(),
            ipxe_efi: "/usr/lib/ipxe/ipxe.efi".into(),
            undionly_kpxe: "/usr/lib/ipxe/undionly.kpxe".into(),
            syslinux: "syslinux".into(),
        }
    }
}

impl Default for Loaders {
    fn default() -> Self {
        Self::debian()
    }
}

/// Everything an output writer needs.
#[derive(Debug, Clone, Copy)]
pub struct OutputContext<'a> {
    /// None when only the floppy is built (it needs no kernel).
    pub payload: Option<&'a BootPayload>,
    /// Image server base URL, e.g. `http://10.0.2.2:8080` (floppy, pxe).
    pub server: &'a str,
    /// SOURCE_DATE_EPOCH: every timestamp written.
    pub epoch: u64,
    /// Deterministic source for GUIDs and FAT volume ids.
    pub seed: [u8; 32],
    pub out_dir: &'a Path,
    pub loaders: &'a Loaders,
}

impl OutputContext<'_> {
    fn payload(&self, output: &'static str) -> Result<&BootPayload, Error> {
        let payload = self.payload.ok_or(Error::NoPayload { output })?;
        payload.validate()?;
        Ok(payload)
    }

    /// 32 bytes derived from the seed for one purpose (`label`), so ids never collide by reuse.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        derive(&self.seed, label)
    }
}

pub(crate) fn derive(seed: &[u8; 32], label: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"drove outputs\0");
    h.update(seed);
    h.update(label.as_bytes());
    h.finalize().into()
}

/// A GUID (RFC 9562 version 4 layout) derived from the seed.
pub(crate) fn derive_guid(seed: &[u8; 32], label: &str) -> uuid::Uuid {
    let d = derive(seed, label);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// One written file and its bytes per component (`pxe` gives one per file in `pxe/`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Artifact {
    /// Relative to the output directory.
    pub path: PathBuf,
    pub components: Vec<(String, u64)>,
}

pub type WriteFn = fn(&OutputContext) -> Result<Vec<Artifact>, Error>;

/// One entry of the output table.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub name: &'static str,
    /// Whether [`OutputContext::payload`] must be set.
    pub needs_payload: bool,
    pub write: WriteFn,
}

/// The output table, keyed by the names a cluster config lists.
pub const OUTPUTS: &[Output] = &[
    Output {
        name: "disk",
        needs_payload: true,
        write: write_disk,
    },
    Output {
        name: "floppy",
        needs_payload: false,
        write: write_floppy,
    },
    Output {
        name: "pxe",
        needs_payload: true,
        write: write_pxe,
    },
];

/// Finds an output by name; an unknown name gives an error listing the known ones.
pub fn lookup(name: &str) -> Result<&'static Output, Error> {
    OUTPUTS
        .iter()
        .find(|o| o.name == name)
        .ok_or_else(|| Error::UnknownOutput {
            name: name.into(),
            known: OUTPUTS
                .iter()
                .map(|o| o.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Whether the named output boots a kernel (and so needs a [`BootPayload`]).
pub fn needs_payload(name: &str) -> Result<bool, Error> {
    Ok(lookup(name)?.needs_payload)
}

/// Looks the output up and writes it.
pub fn write(name: &str, ctx: &OutputContext) -> Result<Vec<Artifact>, Error> {
    (lookup(name)?.write)(ctx)
}

fn write_disk(ctx: &OutputContext) -> Result<Vec<Artifact>, Error> {
    let payload = ctx.payload("disk")?;
    Ok(vec![disk::write(ctx, payload)?])
}

fn write_floppy(ctx: &OutputContext) -> Result<Vec<Artifact>, Error> {
    check_server(ctx.server)?;
    Ok(vec![floppy::write(ctx)?])
}

fn write_pxe(ctx: &OutputContext) -> Result<Vec<Artifact>, Error> {
    let payload = ctx.payload("pxe")?;
    check_server(ctx.server)?;
    Ok(pxe::write(ctx, payload)?)
}

/// File names the media use for themselves; an initrd may not take them.
const RESERVED_NAMES: &[&str] = &[
    "vmlinuz",
    "boot.ipxe",
    "dnsmasq.conf",
    "undionly.kpxe",
    "ipxe.efi",
    "ldlinux.sys",
    "ldlinux.c32",
    "syslinux.cfg",
];

impl BootPayload {
    /// Checks what the boot configurations embed: initrd names (file names on FAT, in URLs and in
    /// syslinux's comma-separated INITRD list) and the command line (one line, no quotes).
    pub fn validate(&self) -> Result<(), Error> {
        if self.initrds.is_empty() {
            return Err(Error::BadInitrdName {
                name: String::new(),
                why: "no initrd given",
            });
        }
        for (i, initrd) in self.initrds.iter().enumerate() {
            let bad = |why| {
                Err(Error::BadInitrdName {
                    name: initrd.name.clone(),
                    why,
                })
            };
            let n = &initrd.name;
            if n.is_empty() || n.len() > 100 {
                return bad("must be 1 to 100 characters");
            }
            if n.starts_with('.') || n.starts_with('-') {
                return bad("must not start with `.` or `-`");
            }
            if !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
            {
                return bad("only letters, digits and `._-+` are allowed");
            }
            if RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(n)) {
                return bad("the media use this name themselves");
            }
            if self.initrds[..i]
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(n))
            {
                return bad("given twice (names are compared ignoring case, as FAT does)");
            }
        }
        let c = &self.cmdline;
        if c.chars().any(|ch| ch.is_control()) {
            return Err(Error::BadCmdline {
                cmdline: c.clone(),
                why: "must be one line without control characters",
            });
        }
        if c.contains('$') {
            return Err(Error::BadCmdline {
                cmdline: c.clone(),
                why: "`$` is not allowed (iPXE expands ${...} in boot.ipxe)",
            });
        }
        if c.len() > 2048 {
            return Err(Error::BadCmdline {
                cmdline: c.clone(),
                why: "longer than 2048 bytes",
            });
        }
        Ok(())
    }
}

/// The server URL goes into iPXE scripts and dnsmasq's configuration.
fn check_server(server: &str) -> Result<(), Error> {
    let bad = |why| {
        Err(Error::BadServer {
            server: server.into(),
            why,
        })
    };
    let rest = match server
        .strip_prefix("http://")
        .or_else(|| server.strip_prefix("https://"))
    {
        Some(rest) => rest,
        None => return bad("must start with http:// or https://"),
    };
    if rest.is_empty() || rest.starts_with('/') {
        return bad("has no host");
    }
    if server
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'\\$".contains(c))
    {
        return bad("must not contain spaces, quotes, `\\` or `$`");
    }
    Ok(())
}

/// `server` without a trailing `/`, ready for `<server>/<file>`.
pub(crate) fn server_base(server: &str) -> &str {
    server.trim_end_matches('/')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests_media;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod testutil;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn payload(names: &[&str], cmdline: &str) -> BootPayload {
        BootPayload {
            kernel: "/k".into(),
            initrds: names
                .iter()
                .map(|n| Initrd {
                    name: n.to_string(),
                    path: "/i".into(),
                })
                .collect(),
            cmdline: cmdline.into(),
        }
    }

    #[test]
    fn table_lookup_and_unknown_names() {
        assert_eq!(lookup("disk").unwrap().name, "disk");
        assert!(needs_payload("pxe").unwrap());
        assert!(!needs_payload("floppy").unwrap());
        let err = lookup("iso").unwrap_err().to_string();
        assert_eq!(
            err,
            r#"unknown output "iso" (known outputs: disk, floppy, pxe)"#
        );
    }

    #[test]
    fn payload_validation() {
        assert!(payload(
            &["initramfs.img", "overlay-calibration-qemu.img"],
            "console=ttyS0 quiet"
        )
        .validate()
        .is_ok());
        for bad in [
            &["a,b"][..],
            &["x/y"],
            &[".hidden"],
            &["vmlinuz"],
            &["a.img", "A.IMG"],
            &[""],
            &[],
        ] {
            assert!(
                matches!(
                    payload(bad, "").validate(),
                    Err(Error::BadInitrdName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            payload(&["i"], "a\nb").validate(),
            Err(Error::BadCmdline { .. })
        ));
        assert!(matches!(
            payload(&["i"], "x=${net0/ip}").validate(),
            Err(Error::BadCmdline { .. })
        ));
    }

    #[test]
    fn server_urls() {
        assert!(check_server("http://10.0.2.2:8080").is_ok());
        assert!(check_server("https://boot.example/drove/").is_ok());
        for bad in [
            "10.0.2.2",
            "http://",
            "http://a b",
            "ftp://x",
            "http://x/$y",
        ] {
            assert!(check_server(bad).is_err(), "{bad}");
        }
        assert_eq!(server_base("http://x/"), "http://x");
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let seed = [7u8; 32];
        assert_eq!(derive_guid(&seed, "disk"), derive_guid(&seed, "disk"));
        assert_ne!(derive_guid(&seed, "disk"), derive_guid(&seed, "esp"));
        assert_eq!(derive_guid(&seed, "disk").get_version_num(), 4);
    }
}
