//! The initramfs plan: every file of the base image as data (path, mode, source, component), and
//! the writer that turns a plan into a compressed cpio segment.
//!
//! The base holds `/init` (the agent), CRIU with its library closure, busybox, the module closure
//! with its own `modules.dep`, `/etc/drove/` and the `initramfs/` skeleton. Overlays are separate
//! segments (see `overlay`), appended after it.

use crate::compress::{self, Compression};
use crate::cpio::{self, Body, Entry};
use crate::staged::StagedFile;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Cpio { path: PathBuf, source: cpio::Error },
    #[error("{path} is planned twice: as part of {first} and of {second}")]
    Clash {
        path: String,
        first: String,
        second: String,
    },
    #[error("cannot decompress module {path}")]
    Decompress {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A planned image: entries in archive order and the component each belongs to.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    entries: BTreeMap<String, (Entry, String)>,
}

impl Plan {
    /// Adds an entry for `component`, creating missing parent directories. Adding the same path
    /// twice is an error unless both are directories: two sources for one file is a planning bug.
    pub fn add(&mut self, component: &str, entry: Entry) -> Result<(), Error> {
        let mut parent = Path::new(&entry.path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            let key = dir.to_string_lossy().into_owned();
            self.entries.entry(key.clone()).or_insert_with(|| {
                (
                    Entry {
                        path: key,
                        mode: 0o755,
                        body: Body::Dir,
                    },
                    component.into(),
                )
            });
            parent = dir.parent();
        }
        match self.entries.get(&entry.path) {
            Some((old, _)) if old.body == Body::Dir && entry.body == Body::Dir => Ok(()),
            Some((_, first)) => Err(Error::Clash {
                path: entry.path,
                first: first.clone(),
                second: component.into(),
            }),
            None => {
                self.entries
                    .insert(entry.path.clone(), (entry, component.into()));
                Ok(())
            }
        }
    }

    pub fn add_file(
        &mut self,
        component: &str,
        path: &str,
        mode: u32,
        source: &Path,
    ) -> Result<(), Error> {
        self.add(
            component,
            Entry {
                path: path.trim_start_matches('/').into(),
                mode,
                body: Body::File(source.into()),
            },
        )
    }

    pub fn add_bytes(
        &mut self,
        component: &str,
        path: &str,
        mode: u32,
        bytes: Vec<u8>,
    ) -> Result<(), Error> {
        self.add(
            component,
            Entry {
                path: path.trim_start_matches('/').into(),
                mode,
                body: Body::Bytes(bytes),
            },
        )
    }

    pub fn add_dir(&mut self, component: &str, path: &str, mode: u32) -> Result<(), Error> {
        self.add(
            component,
            Entry {
                path: path.trim_start_matches('/').into(),
                mode,
                body: Body::Dir,
            },
        )
    }

    /// Entries sorted by path, which puts every directory before its contents.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.values().map(|(e, _)| e.clone()).collect()
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Uncompressed bytes per component.
    pub fn component_bytes(&self) -> Result<BTreeMap<String, u64>, Error> {
        let mut sizes = BTreeMap::new();
        for (entry, component) in self.entries.values() {
            let n = match &entry.body {
                Body::File(p) => std::fs::metadata(p)
                    .map_err(|source| Error::Read {
                        path: p.clone(),
                        source,
                    })?
                    .len(),
                Body::Bytes(b) => b.len() as u64,
                Body::Symlink(t) => t.len() as u64,
                Body::Dir | Body::Node { .. } => 0,
            };
            *sizes.entry(component.clone()).or_insert(0) += n;
        }
        Ok(sizes)
    }

    /// A digest of everything that decides the segment's bytes: names, modes, contents, settings.
    /// Equal fingerprints mean the cached compressed segment can be reused.
    pub fn fingerprint(&self, compression: Compression, mtime: u32) -> Result<String, Error> {
        let mut h = Sha256::new();
        h.update(format!("drove-initramfs-v1 {compression:?} {mtime}\n"));
        for (entry, _) in self.entries.values() {
            h.update(format!("{}\0{:o}\0", entry.path, entry.mode));
            match &entry.body {
                Body::Dir => h.update(b"d"),
                Body::Symlink(t) => h.update(format!("l{t}\0")),
                Body::Node { kind, major, minor } => h.update(format!("n{kind}:{major}:{minor}\0")),
                Body::Bytes(b) => {
                    h.update(format!("b{}\0", b.len()));
                    h.update(b);
                }
                Body::File(p) => {
                    let mut f = std::fs::File::open(p).map_err(|source| Error::Read {
                        path: p.clone(),
                        source,
                    })?;
                    let mut buf = vec![0u8; 1 << 16];
                    h.update(b"f");
                    loop {
                        let n = f.read(&mut buf).map_err(|source| Error::Read {
                            path: p.clone(),
                            source,
                        })?;
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                }
            }
        }
        Ok(hex::encode(h.finalize()))
    }
}

/// Writes `entries` as one compressed cpio segment at `dest`, through a temporary file that is
/// renamed into place only when complete. Returns the compressed size.
pub fn write_segment(
    entries: &[Entry],
    compression: Compression,
    mtime: u32,
    dest: &Path,
) -> Result<u64, Error> {
    let werr = |source| Error::Write {
        path: dest.into(),
        source,
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let staged = StagedFile::create(dest).map_err(werr)?;
    let size_hint: u64 = entries
        .iter()
        .map(|e| match &e.body {
            Body::File(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
            Body::Bytes(b) => b.len() as u64,
            _ => 0,
        })
        .sum();
    let mut enc = compress::encoder(
        compression,
        BufWriter::with_capacity(1 << 20, staged.file()),
        size_hint,
    )
    .map_err(werr)?;
    cpio::write(&mut enc, entries, mtime).map_err(|source| Error::Cpio {
        path: dest.into(),
        source,
    })?;
    enc.finish()
        .map_err(werr)?
        .into_inner()
        .map_err(|e| werr(e.into_error()))?;
    let size = staged.file().metadata().map_err(werr)?.len();
    staged.commit(0o644).map_err(werr)?;
    Ok(size)
}

/// Adds the module closure under `lib/modules/<release>/`, unpacking compressed modules so the
/// agent can load them with a plain `finit_module`.
pub fn add_modules(
    plan: &mut Plan,
    modules_dir: &Path,
    release: &str,
    closure: &crate::kernel::Closure,
) -> Result<(), Error> {
    let base = format!("lib/modules/{release}");
    for rel in &closure.files {
        let src = modules_dir.join(rel);
        let dest = format!("{base}/{}", crate::kernel::uncompressed(rel));
        if rel.ends_with(".ko") {
            plan.add_file("modules", &dest, 0o644, &src)?;
        } else {
            plan.add_bytes("modules", &dest, 0o644, decompress(&src)?)?;
        }
    }
    plan.add_bytes(
        "modules",
        &format!("{base}/modules.dep"),
        0o644,
        closure.modules_dep.clone().into_bytes(),
    )?;
    let builtin = modules_dir.join("modules.builtin");
    if builtin.is_file() {
        plan.add_file(
            "modules",
            &format!("{base}/modules.builtin"),
            0o644,
            &builtin,
        )?;
    }
    Ok(())
}

fn decompress(src: &Path) -> Result<Vec<u8>, Error> {
    let derr = |source| Error::Decompress {
        path: src.into(),
        source,
    };
    let file = std::fs::File::open(src).map_err(|source| Error::Read {
        path: src.into(),
        source,
    })?;
    let mut out = Vec::new();
    let name = src.to_string_lossy();
    if name.ends_with(".xz") {
        xz2::read::XzDecoder::new(file)
            .read_to_end(&mut out)
            .map_err(derr)?;
    } else if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(file)
            .map_err(derr)?
            .read_to_end(&mut out)
            .map_err(derr)?;
    } else {
        return Err(derr(std::io::Error::other(
            "unknown module compression (expected .ko, .ko.xz or .ko.zst)",
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_and_clashes_named() {
        let mut p = Plan::default();
        p.add_bytes("config", "/etc/drove/node.toml", 0o644, b"x".to_vec())
            .unwrap();
        p.add_dir("skeleton", "etc", 0o755).unwrap();
        assert_eq!(
            p.paths().collect::<Vec<_>>(),
            ["etc", "etc/drove", "etc/drove/node.toml"]
        );
        let err = p
            .add_bytes("overlay", "etc/drove/node.toml", 0o644, vec![])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "etc/drove/node.toml is planned twice: as part of config and of overlay"
        );
    }

    #[test]
    fn components_and_fingerprint() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("criu");
        std::fs::write(&f, vec![7u8; 1000]).unwrap();
        let mut p = Plan::default();
        p.add_file("criu", "usr/sbin/criu", 0o755, &f).unwrap();
        p.add_bytes("config", "etc/x", 0o644, vec![1; 10]).unwrap();
        let sizes = p.component_bytes().unwrap();
        assert_eq!(sizes["criu"], 1000);
        assert_eq!(sizes["config"], 10);
        let a = p.fingerprint(Compression::Xz, 1).unwrap();
        assert_eq!(a, p.fingerprint(Compression::Xz, 1).unwrap());
        assert_ne!(a, p.fingerprint(Compression::Zstd, 1).unwrap());
        std::fs::write(&f, vec![8u8; 1000]).unwrap();
        assert_ne!(a, p.fingerprint(Compression::Xz, 1).unwrap());
    }

    #[test]
    fn segment_is_written_atomically_and_decodes() {
        let d = tempfile::tempdir().unwrap();
        let mut p = Plan::default();
        p.add_bytes("config", "etc/motd", 0o644, b"hello\n".to_vec())
            .unwrap();
        let dest = d.path().join("seg.img");
        let size = write_segment(&p.entries(), Compression::Xz, 0, &dest).unwrap();
        assert_eq!(size, std::fs::metadata(&dest).unwrap().len());
        let listing = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("xz -dc {} | cpio -t --quiet", dest.display()))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&listing.stdout), "etc\netc/motd\n");
        let leftovers: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}
