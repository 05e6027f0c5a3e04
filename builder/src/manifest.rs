//! `manifest.json`: every artifact's size and sha256, the boot payload, and bytes per component.

use crate::staged::StagedFile;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read artifact {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub drove_version: String,
    pub cluster: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Kernel and initrd segments (in load order), relative to the output directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
    pub artifacts: Vec<Artifact>,
    pub components: Vec<Component>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Boot {
    pub kernel: String,
    pub initrds: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Bytes per component inside this artifact, where the writer reported them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<Component>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    pub bytes: u64,
}

/// Size and sha256 of a file.
pub fn digest(path: &Path) -> Result<(u64, String), Error> {
    let rerr = |source| Error::Read {
        path: path.into(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(rerr)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(rerr)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex::encode(h.finalize())))
}

impl Manifest {
    /// Writes `manifest.json` in `dir` through a temporary file renamed into place.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, Error> {
        let dest = dir.join("manifest.json");
        let werr = |source| Error::Write {
            path: dest.clone(),
            source,
        };
        let mut text = serde_json::to_string_pretty(self).map_err(|e| werr(e.into()))?;
        text.push('\n');
        let staged = StagedFile::create(&dest).map_err(werr)?;
        std::io::Write::write_all(&mut staged.file(), text.as_bytes()).map_err(werr)?;
        staged.commit(0o644).map_err(werr)?;
        Ok(dest)
    }

    pub fn read(dir: &Path) -> Result<Self, Error> {
        let p = dir.join("manifest.json");
        let text = std::fs::read_to_string(&p).map_err(|source| Error::Read {
            path: p.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Read {
            path: p,
            source: e.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_sha256sum() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a");
        std::fs::write(&p, b"abc").unwrap();
        let (size, sum) = digest(&p).unwrap();
        assert_eq!(size, 3);
        assert_eq!(
            sum,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let m = Manifest {
            drove_version: "0".into(),
            cluster: "c".into(),
            kernel_release: Some("6.1".into()),
            cmdline: None,
            boot: Some(Boot {
                kernel: "pxe/vmlinuz".into(),
                initrds: vec!["pxe/initramfs.img".into()],
            }),
            artifacts: vec![],
            components: vec![Component {
                name: "kernel".into(),
                bytes: 1,
            }],
        };
        m.write(d.path()).unwrap();
        assert_eq!(Manifest::read(d.path()).unwrap(), m);
    }
}
