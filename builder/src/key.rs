//! The cluster key: 32 random bytes, generated once per cluster at build time and kept beside the
//! config (mode 0600). Agents authenticate each other with it. It is never printed or logged.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read cluster key {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create cluster key {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a drove cluster key (expected 64 hex digits)")]
    Malformed { path: PathBuf },
    #[error("no random source for a new cluster key")]
    Random(#[source] getrandom::Error),
}

/// The key as the hex text stored in the key file and in the image.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(String);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

impl ClusterKey {
    /// The bytes written into `/etc/drove/cluster.key`.
    pub fn file_bytes(&self) -> Vec<u8> {
        format!("{}\n", self.0).into_bytes()
    }

    /// Reads the key at `path`, creating it (and its directory) if there is none yet.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let hex = text.trim();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(Error::Malformed { path: path.into() });
                }
                Ok((ClusterKey(hex.to_ascii_lowercase()), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Self::create(path)?, true)),
            Err(source) => Err(Error::Read {
                path: path.into(),
                source,
            }),
        }
    }

    fn create(path: &Path) -> Result<Self, Error> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(Error::Random)?;
        let key = ClusterKey(hex::encode(bytes));
        let werr = |source| Error::Write {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        // create_new: two builds racing never overwrite each other's key.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(werr)?;
        f.write_all(&key.file_bytes()).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        Ok(key)
    }
}

/// Where the key for a config lives: the config's `key-file`, else `<config stem>.key` beside the
/// config file, else (built-in default cluster) `~/.config/drove/<cluster>.key`.
pub fn default_path(config_file: Option<&Path>, cluster: &str) -> PathBuf {
    match config_file {
        Some(cfg) => cfg.with_extension("key"),
        None => {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
                .unwrap_or_else(|| PathBuf::from("."));
            base.join("drove").join(format!("{cluster}.key"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_then_reused_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/lab.key");
        let (a, created) = ClusterKey::load_or_create(&p).unwrap();
        assert!(created);
        let (b, created) = ClusterKey::load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(format!("{a:?}"), "ClusterKey(<redacted>)");
    }

    #[test]
    fn malformed_key_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.key");
        std::fs::write(&p, "short").unwrap();
        let err = ClusterKey::load_or_create(&p).unwrap_err().to_string();
        assert!(err.contains("bad.key"), "{err}");
    }

    #[test]
    fn key_sits_beside_the_config() {
        assert_eq!(
            default_path(Some(Path::new("/site/lab.toml")), "lab"),
            PathBuf::from("/site/lab.key")
        );
    }
}
