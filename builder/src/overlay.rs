//! Overlays: directory trees (or `.tar` files) laid over the image root, each written as its own
//! cpio segment after the base so that changing one never recompresses the base.
//!
//! Entries that would escape the root, device nodes and setuid/setgid files are refused unless the
//! config allows them: an overlay is input from a person, and the image runs as root on every node.

use crate::cpio::{Body, Entry};
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("overlay {name:?} not found (looked in {})", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        name: String,
        searched: Vec<PathBuf>,
    },
    #[error("cannot read overlay entry {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("overlay {overlay}: {entry} escapes the image root")]
    Escapes { overlay: String, entry: String },
    #[error("overlay {overlay}: {entry} is a device node, fifo or socket (set overlays.allow-devices = true to allow)")]
    Device { overlay: String, entry: String },
    #[error(
        "overlay {overlay}: {entry} is setuid/setgid (set overlays.allow-setuid = true to allow)"
    )]
    Setuid { overlay: String, entry: String },
    #[error("overlay {overlay}: {entry} is a hard link, which overlays do not support")]
    HardLink { overlay: String, entry: String },
}

/// What an overlay may contain beyond plain files, directories and symlinks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    pub allow_setuid: bool,
    pub allow_devices: bool,
}

/// A resolved overlay: its name (used for the segment file name) and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub name: String,
    pub source: PathBuf,
}

impl Overlay {
    /// The segment's file name: `calibration/qemu` → `overlay-calibration-qemu.img`.
    pub fn segment_name(&self) -> String {
        let slug: String = self
            .name
            .trim_end_matches(".tar")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("overlay-{}.img", slug.trim_matches('-'))
    }
}

/// Finds `name` in the search directories (a directory or `<name>.tar`), or takes it as a path.
pub fn find(name: &str, search: &[PathBuf]) -> Result<Overlay, Error> {
    let as_path = Path::new(name);
    if as_path.is_absolute() || name.starts_with("./") || name.starts_with("../") {
        if as_path.exists() {
            return Ok(Overlay {
                name: display_name(as_path),
                source: as_path.into(),
            });
        }
    } else {
        for dir in search {
            for candidate in [dir.join(name), dir.join(format!("{name}.tar"))] {
                if candidate.exists() {
                    return Ok(Overlay {
                        name: name.into(),
                        source: candidate,
                    });
                }
            }
        }
    }
    Err(Error::NotFound {
        name: name.into(),
        searched: search.to_vec(),
    })
}

fn display_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "overlay".into())
}

/// The overlay's entries as cpio entries, parents first, validated against `policy`.
pub fn entries(overlay: &Overlay, policy: Policy) -> Result<Vec<Entry>, Error> {
    let mut out = BTreeMap::new();
    if overlay.source.is_dir() {
        scan_dir(overlay, policy, &mut out)?;
    } else {
        scan_tar(overlay, policy, &mut out)?;
    }
    // Every parent directory is declared, so the segment also works on its own.
    let paths: Vec<String> = out.keys().cloned().collect();
    for p in paths {
        let mut parent = Path::new(&p).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            let key = dir.to_string_lossy().into_owned();
            out.entry(key.clone()).or_insert(Entry {
                path: key,
                mode: 0o755,
                body: Body::Dir,
            });
            parent = dir.parent();
        }
    }
    Ok(out.into_values().collect())
}

fn scan_dir(
    overlay: &Overlay,
    policy: Policy,
    out: &mut BTreeMap<String, Entry>,
) -> Result<(), Error> {
    let root = &overlay.source;
    for item in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
    {
        let item = item.map_err(|e| Error::Read {
            path: e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.clone()),
            source: e.into(),
        })?;
        let rel = item.path().strip_prefix(root).unwrap_or(item.path());
        let rel_str = rel.to_string_lossy().into_owned();
        let meta = item
            .path()
            .symlink_metadata()
            .map_err(|source| Error::Read {
                path: item.path().into(),
                source,
            })?;
        let ft = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        check_mode(overlay, &rel_str, mode, policy)?;
        let body = if ft.is_dir() {
            Body::Dir
        } else if ft.is_symlink() {
            let target = std::fs::read_link(item.path()).map_err(|source| Error::Read {
                path: item.path().into(),
                source,
            })?;
            check_link(overlay, rel, &target)?;
            Body::Symlink(target.to_string_lossy().into_owned())
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                // Hard links are copied as separate files; only noted, not refused, for directories.
                tracing::debug!(
                    "overlay {}: {rel_str} has {} links; stored as a copy",
                    overlay.name,
                    meta.nlink()
                );
            }
            Body::File(item.path().into())
        } else if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
            if !policy.allow_devices {
                return Err(Error::Device {
                    overlay: overlay.name.clone(),
                    entry: rel_str,
                });
            }
            let rdev = meta.rdev();
            Body::Node {
                kind: meta.mode() & 0o170000,
                major: libc::major(rdev),
                minor: libc::minor(rdev),
            }
        } else {
            continue;
        };
        out.insert(
            rel_str.clone(),
            Entry {
                path: rel_str,
                mode,
                body,
            },
        );
    }
    Ok(())
}

fn scan_tar(
    overlay: &Overlay,
    policy: Policy,
    out: &mut BTreeMap<String, Entry>,
) -> Result<(), Error> {
    let read_err = |source| Error::Read {
        path: overlay.source.clone(),
        source,
    };
    let file = std::fs::File::open(&overlay.source).map_err(read_err)?;
    let mut archive = tar::Archive::new(file);
    for item in archive.entries().map_err(read_err)? {
        let mut item = item.map_err(read_err)?;
        let raw = item.path().map_err(read_err)?.into_owned();
        let rel = normalize_entry(overlay, &raw)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let rel_str = rel.to_string_lossy().into_owned();
        let header = item.header();
        let mode = header.mode().map_err(read_err)? & 0o7777;
        check_mode(overlay, &rel_str, mode, policy)?;
        let kind = header.entry_type();
        let body = match kind {
            tar::EntryType::Directory => Body::Dir,
            tar::EntryType::Symlink => {
                let target = item
                    .link_name()
                    .map_err(read_err)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                check_link(overlay, &rel, &target)?;
                Body::Symlink(target.to_string_lossy().into_owned())
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut item, &mut bytes).map_err(read_err)?;
                Body::Bytes(bytes)
            }
            tar::EntryType::Link => {
                return Err(Error::HardLink {
                    overlay: overlay.name.clone(),
                    entry: rel_str,
                })
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                if !policy.allow_devices {
                    return Err(Error::Device {
                        overlay: overlay.name.clone(),
                        entry: rel_str,
                    });
                }
                let kind = match kind {
                    tar::EntryType::Char => 0o020000,
                    tar::EntryType::Block => 0o060000,
                    _ => 0o010000,
                };
                let major = header.device_major().map_err(read_err)?.unwrap_or(0);
                let minor = header.device_minor().map_err(read_err)?.unwrap_or(0);
                Body::Node { kind, major, minor }
            }
            _ => continue,
        };
        out.insert(
            rel_str.clone(),
            Entry {
                path: rel_str,
                mode,
                body,
            },
        );
    }
    Ok(())
}

/// `./etc/x` → `etc/x`; absolute paths and `..` that climb out are refused.
fn normalize_entry(overlay: &Overlay, raw: &Path) -> Result<PathBuf, Error> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir if out.pop() => {}
            _ => {
                return Err(Error::Escapes {
                    overlay: overlay.name.clone(),
                    entry: raw.display().to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// A relative symlink target may not climb above the image root. Absolute targets are resolved
/// inside the image at run time, so they cannot escape it.
fn check_link(overlay: &Overlay, rel: &Path, target: &Path) -> Result<(), Error> {
    if target.is_absolute() {
        return Ok(());
    }
    let mut depth = rel.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return Err(Error::Escapes {
                overlay: overlay.name.clone(),
                entry: format!("{} -> {}", rel.display(), target.display()),
            });
        }
    }
    Ok(())
}

fn check_mode(overlay: &Overlay, entry: &str, mode: u32, policy: Policy) -> Result<(), Error> {
    if mode & 0o6000 != 0 && !policy.allow_setuid {
        return Err(Error::Setuid {
            overlay: overlay.name.clone(),
            entry: entry.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn overlay(dir: &Path) -> Overlay {
        Overlay {
            name: "t".into(),
            source: dir.into(),
        }
    }

    #[test]
    fn directory_overlay_lists_parents_first() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/drove")).unwrap();
        std::fs::write(d.path().join("etc/drove/calibration.toml"), "cpu = \"x\"\n").unwrap();
        symlink("/bin/busybox", d.path().join("etc/sh")).unwrap();
        let e = entries(&overlay(d.path()), Policy::default()).unwrap();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["etc", "etc/drove", "etc/drove/calibration.toml", "etc/sh"]
        );
    }

    #[test]
    fn escaping_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        symlink("../../host-secret", d.path().join("etc/x")).unwrap();
        let err = entries(&overlay(d.path()), Policy::default()).unwrap_err();
        assert!(matches!(err, Error::Escapes { .. }), "{err}");
        assert!(err.to_string().contains("etc/x -> ../../host-secret"));
    }

    #[test]
    fn setuid_is_refused_unless_allowed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("su");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        assert!(matches!(
            entries(&overlay(d.path()), Policy::default()),
            Err(Error::Setuid { .. })
        ));
        let ok = entries(
            &overlay(d.path()),
            Policy {
                allow_setuid: true,
                allow_devices: false,
            },
        )
        .unwrap();
        assert_eq!(ok[0].mode, 0o4755);
    }

    #[test]
    fn fifo_is_refused() {
        let d = tempfile::tempdir().unwrap();
        nix_mkfifo(&d.path().join("pipe"));
        assert!(matches!(
            entries(&overlay(d.path()), Policy::default()),
            Err(Error::Device { .. })
        ));
    }

    #[test]
    fn fifo_is_kept_when_allowed() {
        let d = tempfile::tempdir().unwrap();
        nix_mkfifo(&d.path().join("pipe"));
        let e = entries(
            &overlay(d.path()),
            Policy {
                allow_setuid: false,
                allow_devices: true,
            },
        )
        .unwrap();
        assert_eq!(
            e[0].body,
            Body::Node {
                kind: 0o010000,
                major: 0,
                minor: 0
            }
        );
    }

    fn nix_mkfifo(p: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn tar_overlay_and_escapes() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("good.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&good).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "./etc/motd", &b"hi\n"[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        let e = entries(
            &Overlay {
                name: "good".into(),
                source: good,
            },
            Policy::default(),
        )
        .unwrap();
        assert_eq!(e.last().unwrap().body, Body::Bytes(b"hi\n".to_vec()));
        assert_eq!(e[0].path, "etc");

        // tar::Builder refuses to write `..` paths, so craft the header name by hand.
        let bad = d.path().join("bad.tar");
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../../passwd");
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 1024]);
        std::fs::write(&bad, bytes).unwrap();
        let err = entries(
            &Overlay {
                name: "bad".into(),
                source: bad,
            },
            Policy::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Escapes { .. }), "{err}");
    }

    #[test]
    fn find_searches_and_names_what_it_tried() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("calibration/p133")).unwrap();
        let o = find("calibration/p133", &[d.path().into()]).unwrap();
        assert_eq!(o.segment_name(), "overlay-calibration-p133.img");
        let err = find("nosuch", &[d.path().into()]).unwrap_err().to_string();
        assert!(
            err.contains("nosuch") && err.contains(&d.path().display().to_string()),
            "{err}"
        );
    }
}
