//! The stand-in node: the distro kernel from /boot and a bare busybox (Debian's busybox-static)
//! initramfs whose `/init` mounts /proc, /sys and /dev, prints the agent's ready line and powers
//! off when `poweroff` is typed. It exercises the harness without the builder's media, and it is
//! the "bare busybox-init" baseline of the boot benchmark (`bench-boot`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{run, Error};

pub const STANDIN_CMDLINE: &str = "console=tty0 console=ttyS0,115200 panic=30";

/// The newest distro kernel in /boot.
pub fn standin_kernel() -> Result<PathBuf, Error> {
    let boot = Path::new("/boot");
    let entries = std::fs::read_dir(boot).map_err(|source| Error::Io {
        what: "cannot read",
        path: boot.into(),
        source,
    })?;
    let mut kernels: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop().ok_or_else(|| Error::Io {
        what: "no vmlinuz-* (install linux-image-amd64: make deps) in",
        path: boot.into(),
        source: std::io::ErrorKind::NotFound.into(),
    })
}

pub const STANDIN_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
export PATH=/bin
name=$(cat /etc/node-name)
echo "drove: ready node=$name addr=10.0.2.15"
while read -r line; do
    case "$line" in
        poweroff) poweroff -f ;;
        *) echo "stand-in: unknown command: $line" ;;
    esac
done
"#;

/// Writes `files` (path in the archive, contents, mode) as a gzip'd newc cpio to `dest`.
pub fn cpio(dest: &Path, files: &[(&str, &[u8], u32)]) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let staging = tempfile::tempdir().map_err(|source| Error::Io {
        what: "cannot create a directory in",
        path: std::env::temp_dir(),
        source,
    })?;
    for (path, contents, mode) in files {
        let p = staging.path().join(path);
        let io = |what| {
            let p = p.clone();
            move |source| Error::Io {
                what,
                path: p,
                source,
            }
        };
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io("cannot create"))?;
        }
        std::fs::write(&p, contents).map_err(io("cannot write"))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
            .map_err(io("cannot chmod"))?;
    }
    // zstd, not gzip: drove's compiled kernel decompresses only zstd and xz initramfs segments
    // (docs/kernel.md), and the boot benchmark boots this baseline on it too.
    run(Command::new("sh")
        .arg("-c")
        .arg(r#"cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | zstd -q -c > "$2""#)
        .arg("sh")
        .arg(staging.path())
        .arg(dest))?;
    Ok(())
}

/// The stand-in's base initramfs (node name `node0`) and an overlay segment that renames the node
/// to `node1`: booting the two concatenated must print `node=node1`.
pub fn standin_initrds(dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let bb = Path::new("/bin/busybox");
    let busybox = std::fs::read(bb).map_err(|source| Error::Io {
        what: "cannot read (install busybox-static)",
        path: bb.into(),
        source,
    })?;
    let base = dir.join("initramfs.img");
    cpio(
        &base,
        &[
            ("init", STANDIN_INIT.as_bytes(), 0o755),
            ("bin/busybox", &busybox, 0o755),
            ("etc/node-name", b"node0\n", 0o644),
        ],
    )?;
    let overlay = dir.join("overlay-standin.img");
    cpio(&overlay, &[("etc/node-name", b"node1\n", 0o644)])?;
    Ok((base, overlay))
}
