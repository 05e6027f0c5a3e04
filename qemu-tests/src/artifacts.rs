//! Where the built media are: the workspace's `out/` (or `$DROVE_OUT`), described by
//! `manifest.json`, and the `drove` binary that built them.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;

/// The workspace root (the directory holding the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).to_owned()
}

/// `$DROVE_OUT` if set, else `<workspace>/out`.
pub fn out_dir() -> PathBuf {
    match std::env::var_os("DROVE_OUT") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("out"),
    }
}

/// The `drove` binary: `$DROVE_BIN`, else `drove` in the profile directory of the running test
/// executable (`target/<profile>/deps/<test>` → `target/<profile>/drove`).
pub fn drove_bin() -> Result<PathBuf, Error> {
    let path = match std::env::var_os("DROVE_BIN") {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => {
            let exe = std::env::current_exe().map_err(|source| Error::Io {
                what: "cannot locate",
                path: "the test executable".into(),
                source,
            })?;
            let mut dir = exe.parent().map(Path::to_owned).unwrap_or_default();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir.join("drove")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::NoDroveBin { path })
    }
}

/// The parts of `manifest.json` the tests use (other fields are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub kernel_release: String,
    pub cmdline: String,
    pub boot: BootEntry,
    #[serde(default)]
    pub artifacts: Vec<ArtifactEntry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BootEntry {
    /// Relative to the output directory, e.g. `pxe/vmlinuz`.
    pub kernel: String,
    /// In load order: the base initramfs first, then the overlay segments.
    pub initrds: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ArtifactEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// The built media in one output directory. Tests read them and never write there.
#[derive(Debug, Clone)]
pub struct Artifacts {
    out: PathBuf,
    manifest_path: PathBuf,
    manifest: Manifest,
}

impl Artifacts {
    /// The media in [`out_dir`]; fails with "run `make image` first" if there are none.
    pub fn load() -> Result<Self, Error> {
        Self::load_from(&out_dir())
    }

    pub fn load_from(out: &Path) -> Result<Self, Error> {
        let manifest_path = out.join("manifest.json");
        let text = match std::fs::read(&manifest_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoMedia {
                    manifest: manifest_path,
                })
            }
            Err(source) => {
                return Err(Error::Io {
                    what: "cannot read",
                    path: manifest_path,
                    source,
                })
            }
        };
        let manifest = serde_json::from_slice(&text).map_err(|source| Error::Manifest {
            path: manifest_path.clone(),
            source,
        })?;
        Ok(Artifacts {
            out: out.to_owned(),
            manifest_path,
            manifest,
        })
    }

    pub fn out(&self) -> &Path {
        &self.out
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// `out/<rel>`, which must exist (else an error saying to rebuild).
    pub fn require(&self, rel: &str) -> Result<PathBuf, Error> {
        let path = self.out.join(rel);
        if path.exists() {
            Ok(path)
        } else {
            Err(Error::MissingArtifact {
                path,
                manifest: self.manifest_path.clone(),
            })
        }
    }

    pub fn kernel(&self) -> Result<PathBuf, Error> {
        self.require(&self.manifest.boot.kernel)
    }

    pub fn initrds(&self) -> Result<Vec<PathBuf>, Error> {
        self.manifest
            .boot
            .initrds
            .iter()
            .map(|rel| self.require(rel))
            .collect()
    }

    pub fn cmdline(&self) -> &str {
        &self.manifest.cmdline
    }

    pub fn disk_image(&self) -> Result<PathBuf, Error> {
        self.require("disk.img")
    }

    pub fn floppy_image(&self) -> Result<PathBuf, Error> {
        self.require("floppy.img")
    }

    pub fn pxe_dir(&self) -> Result<PathBuf, Error> {
        self.require("pxe")
    }

    /// Writes the manifest's initrds, in order, into one file at `dest` (QEMU's `-initrd` takes
    /// one file; the kernel unpacks the concatenated cpio segments in order, which is what
    /// bootloaders loading several initrds do too).
    pub fn concat_initrds(&self, dest: &Path) -> Result<PathBuf, Error> {
        concat_files(&self.initrds()?, dest)?;
        Ok(dest.to_owned())
    }
}

/// Concatenates `parts` into `dest`.
pub fn concat_files(parts: &[PathBuf], dest: &Path) -> Result<(), Error> {
    let file = File::create(dest).map_err(|source| Error::Io {
        what: "cannot create",
        path: dest.into(),
        source,
    })?;
    let mut out = BufWriter::new(file);
    for part in parts {
        let mut input = File::open(part).map_err(|source| Error::Io {
            what: "cannot open",
            path: part.clone(),
            source,
        })?;
        std::io::copy(&mut input, &mut out).map_err(|source| Error::Io {
            what: "cannot write",
            path: dest.into(),
            source,
        })?;
    }
    out.into_inner()
        .map_err(|e| Error::Io {
            what: "cannot write",
            path: dest.into(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(|source| Error::Io {
            what: "cannot write",
            path: dest.into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn missing_manifest_says_make_image() {
        let dir = tempfile::tempdir().unwrap();
        let err = Artifacts::load_from(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("make image"), "{msg}");
        assert!(msg.contains("manifest.json"), "{msg}");
    }

    #[test]
    fn reads_the_manifest_contract_and_concatenates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pxe")).unwrap();
        std::fs::write(dir.path().join("pxe/initramfs.img"), b"base").unwrap();
        std::fs::write(
            dir.path().join("pxe/overlay-calibration-qemu.img"),
            b"+overlay",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("manifest.json"),
            r#"{ "kernel_release": "6.1.0-56-amd64", "cmdline": "console=tty0 console=ttyS0,115200 panic=30",
  "boot": { "kernel": "pxe/vmlinuz", "initrds": ["pxe/initramfs.img", "pxe/overlay-calibration-qemu.img"] },
  "artifacts": [ {"path": "disk.img", "size": 1, "sha256": "00"} ], "components": [ {"name": "kernel", "bytes": 1} ] }"#,
        )
        .unwrap();
        let a = Artifacts::load_from(dir.path()).unwrap();
        assert_eq!(a.cmdline(), "console=tty0 console=ttyS0,115200 panic=30");
        let dest = dir.path().join("all.img");
        a.concat_initrds(&dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"base+overlay");
        let err = a.kernel().unwrap_err().to_string();
        assert!(
            err.contains("pxe/vmlinuz") && err.contains("make image"),
            "{err}"
        );
    }
}
