//! `pxe/`: the directory `drove serve` publishes and netbooting nodes load: the kernel, every
//! initrd by name, `boot.ipxe`, and for sites that want classic PXE a commented `dnsmasq.conf`
//! (proxy-DHCP + TFTP) with the iPXE binaries it hands out beside it.
//!
//! Built as `pxe.tmp-XXXX/` next to the final directory and swapped in with one rename.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{BootPayload, OutputContext};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot create the temporary PXE directory")]
    TempDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot copy into {dest}")]
    Copy {
        path: PathBuf,
        dest: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot write")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot move into place")]
    Rename {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: exists and is not a directory")]
    NotADir { path: PathBuf },
}

/// One file of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PxeSource {
    Copy(PathBuf),
    Text(String),
}

/// The directory's files in order: (name, source, component).
pub fn plan(ctx: &OutputContext, payload: &BootPayload) -> Vec<(String, PxeSource, String)> {
    let mut files = vec![(
        "vmlinuz".to_string(),
        PxeSource::Copy(payload.kernel.clone()),
        "kernel".to_string(),
    )];
    for i in &payload.initrds {
        files.push((
            i.name.clone(),
            PxeSource::Copy(i.path.clone()),
            i.name.clone(),
        ));
    }
    files.push((
        "boot.ipxe".into(),
        PxeSource::Text(boot_ipxe(payload)),
        "config".into(),
    ));
    files.push((
        "dnsmasq.conf".into(),
        PxeSource::Text(dnsmasq_conf(ctx.server)),
        "config".into(),
    ));
    files.push((
        "undionly.kpxe".into(),
        PxeSource::Copy(ctx.loaders.undionly_kpxe.clone()),
        "undionly.kpxe".into(),
    ));
    files.push((
        "ipxe.efi".into(),
        PxeSource::Copy(ctx.loaders.ipxe_efi.clone()),
        "ipxe.efi".into(),
    ));
    files
}

/// The boot script. URLs are relative: iPXE resolves them against the script's own URL, so the
/// directory can be served from anywhere. `initrd=<name>` arguments let the kernel's EFI stub find
/// the initrds when iPXE runs as a UEFI program (Debian 12's iPXE predates initrd LoadFile2); on
/// BIOS iPXE hands the initrds over itself and the kernel ignores those arguments.
pub fn boot_ipxe(payload: &BootPayload) -> String {
    let mut args: Vec<String> = payload
        .initrds
        .iter()
        .map(|i| format!("initrd={}", i.name))
        .collect();
    if !payload.cmdline.is_empty() {
        args.push(payload.cmdline.clone());
    }
    let mut s = String::from("#!ipxe\necho drove: loading kernel and initramfs\n");
    s.push_str(&format!("kernel vmlinuz {}\n", args.join(" ")));
    for i in &payload.initrds {
        s.push_str(&format!("initrd {}\n", i.name));
    }
    s.push_str("boot\n");
    s
}

/// dnsmasq as proxy-DHCP + TFTP for sites whose PCs only know classic PXE.
pub fn dnsmasq_conf(server: &str) -> String {
    let base = super::server_base(server);
    format!(
        r#"# drove: dnsmasq configuration for classic PXE boot.
#
# The LAN keeps its own DHCP server for addresses; dnsmasq runs as a *proxy* DHCP server that only
# adds boot information, and as the TFTP server for the first stage:
#
#   PC's PXE ROM --(proxy DHCP)--> undionly.kpxe (BIOS) or ipxe.efi (UEFI) over TFTP
#   iPXE         --(proxy DHCP)--> {base}/boot.ipxe over HTTP (`drove serve`)
#   boot.ipxe    --> vmlinuz + initrds over HTTP, then boot
#
# Before use, edit the two lines marked EDIT, then run, from this directory:
#   dnsmasq --no-daemon --conf-file=dnsmasq.conf
# (dnsmasq needs root for ports 67/69; `--test` checks the syntax.)

# No DNS service: dnsmasq only answers DHCP and TFTP here.
port=0

# EDIT: the interface facing the nodes' LAN.
interface=eth0
bind-interfaces

# EDIT: the LAN's network address. `proxy` means: hand out no addresses, only boot information.
dhcp-range=192.168.1.0,proxy

# TFTP serves this directory (undionly.kpxe and ipxe.efi live here). Use an absolute path if
# dnsmasq is started from elsewhere.
enable-tftp
tftp-root=.

# Clients already running iPXE say so (DHCP option 175 / user class "iPXE"): they get the boot
# script over HTTP instead of iPXE again, which would loop.
dhcp-match=set:ipxe,175
dhcp-userclass=set:ipxe,iPXE

# Plain PXE ROMs: BIOS gets undionly.kpxe (iPXE over the ROM's own network driver), x86-64 UEFI
# gets ipxe.efi. A basename with a dot is sent as is (no ".0" layer suffix appended).
pxe-service=tag:!ipxe,x86PC,"drove (BIOS)",undionly.kpxe
pxe-service=tag:!ipxe,x86-64_EFI,"drove (UEFI)",ipxe.efi
pxe-service=tag:!ipxe,BC_EFI,"drove (UEFI)",ipxe.efi

# iPXE: the boot script from the image server.
pxe-service=tag:ipxe,x86PC,"drove",{base}/boot.ipxe
pxe-service=tag:ipxe,x86-64_EFI,"drove",{base}/boot.ipxe
pxe-service=tag:ipxe,BC_EFI,"drove",{base}/boot.ipxe

# Boot at once instead of showing the PXE menu.
pxe-prompt="drove netboot",0

# Uncomment to see every DHCP exchange in the log.
#log-dhcp
"#
    )
}

/// Writes `out_dir/pxe/`; one artifact per file (`pxe/vmlinuz`, …) so the manifest can hash each.
pub fn write(ctx: &OutputContext, payload: &BootPayload) -> Result<Vec<super::Artifact>, Error> {
    let final_dir = ctx.out_dir.join("pxe");
    if final_dir.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
        return Err(Error::NotADir { path: final_dir });
    }
    let tmp = tempfile::Builder::new()
        .prefix("pxe.tmp-")
        .tempdir_in(ctx.out_dir)
        .map_err(|source| Error::TempDir {
            path: ctx.out_dir.into(),
            source,
        })?;
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(ctx.epoch);
    let mut artifacts = Vec::new();
    for (name, source, component) in plan(ctx, payload) {
        let dest = tmp.path().join(&name);
        let size = match source {
            PxeSource::Copy(from) => fs::copy(&from, &dest).map_err(|source| Error::Copy {
                path: from.clone(),
                dest: dest.clone(),
                source,
            })?,
            PxeSource::Text(text) => {
                let mut f = File::create(&dest).map_err(|source| Error::Write {
                    path: dest.clone(),
                    source,
                })?;
                f.write_all(text.as_bytes())
                    .map_err(|source| Error::Write {
                        path: dest.clone(),
                        source,
                    })?;
                text.len() as u64
            }
        };
        finish_file(&dest, mtime)?;
        artifacts.push(super::Artifact {
            path: Path::new("pxe").join(&name),
            components: vec![(component, size)],
        });
    }
    set_dir_mode(tmp.path())?;
    swap_into_place(tmp, &final_dir)?;
    tracing::info!(path = %final_dir.display(), "wrote PXE directory");
    Ok(artifacts)
}

/// Mode 0644 and the build's mtime (HTTP Last-Modified and rsync see the same thing every build).
fn finish_file(path: &Path, mtime: SystemTime) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| Error::Write {
        path: path.into(),
        source,
    };
    let f = File::options().write(true).open(path).map_err(err)?;
    f.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(err)?;
    f.set_modified(mtime).map_err(err)?;
    f.sync_all().map_err(err)
}

fn set_dir_mode(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(|source| Error::Write {
        path: path.into(),
        source,
    })
}

/// Puts the finished temporary directory at `final_dir`. With no old directory this is one
/// rename. Otherwise the two are exchanged atomically (`renameat2(RENAME_EXCHANGE)`) and the old
/// tree, now at the temporary name, is removed; where the file system cannot exchange, the old
/// directory is moved aside first (a moment with no `pxe/`, but never a half-written one).
fn swap_into_place(tmp: tempfile::TempDir, final_dir: &Path) -> Result<(), Error> {
    let rename_err = |source| Error::Rename {
        path: final_dir.into(),
        source,
    };
    if final_dir.symlink_metadata().is_err() {
        let tmp_path = tmp.keep();
        return fs::rename(&tmp_path, final_dir).map_err(|source| {
            let _ = fs::remove_dir_all(&tmp_path);
            rename_err(source)
        });
    }
    match exchange(tmp.path(), final_dir) {
        Ok(()) => {
            // `tmp` now holds the previous pxe/ and is removed when dropped
            drop(tmp);
            Ok(())
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
            let aside = tempfile::Builder::new()
                .prefix("pxe.old-")
                .tempdir_in(final_dir.parent().unwrap_or(Path::new(".")))
                .map_err(rename_err)?;
            let old = aside.path().join("pxe");
            fs::rename(final_dir, &old).map_err(rename_err)?;
            if let Err(source) = fs::rename(tmp.path(), final_dir) {
                let _ = fs::rename(&old, final_dir);
                return Err(rename_err(source));
            }
            Ok(())
        }
        Err(source) => Err(rename_err(source)),
    }
}

fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let to_c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte")
        })
    };
    let (a, b) = (to_c(a)?, to_c(b)?);
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call; AT_FDCWD with
    // absolute or cwd-relative paths needs no descriptor.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
