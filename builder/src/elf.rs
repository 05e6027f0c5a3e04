//! Shared-library closures of the binaries that go into the initramfs, read from their ELF
//! DT_NEEDED entries (lddtree), not by running `ldd`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{binary}: cannot read its ELF dependencies: {message}")]
    Analyze { binary: PathBuf, message: String },
    #[error("{binary}: needs {library}, which is not installed on this machine")]
    Missing { binary: PathBuf, library: String },
    #[error("cannot resolve {path}")]
    Resolve {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Path in the image → file on the host holding its bytes. Sorted, so equal inputs plan equally.
pub type Closure = BTreeMap<String, PathBuf>;

/// The dynamic loader and every library `binary` needs, transitively. A static binary has none.
pub fn closure(binary: &Path) -> Result<Closure, Error> {
    let tree = lddtree::DependencyAnalyzer::new(PathBuf::from("/"))
        .analyze(binary)
        .map_err(|e| Error::Analyze {
            binary: binary.into(),
            message: e.to_string(),
        })?;
    let mut out = Closure::new();
    if let Some(interp) = &tree.interpreter {
        let real = std::fs::canonicalize(interp).map_err(|source| Error::Resolve {
            path: interp.into(),
            source,
        })?;
        out.insert(image_path(Path::new(interp)), real);
    }
    for (name, lib) in &tree.libraries {
        let real = lib.realpath.clone().ok_or_else(|| Error::Missing {
            binary: binary.into(),
            library: name.clone(),
        })?;
        out.insert(image_path(&lib.path), real);
    }
    Ok(out)
}

fn image_path(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_of_a_dynamic_binary_has_libc_and_loader() {
        let c = closure(Path::new("/bin/ls")).unwrap();
        assert!(c.keys().any(|k| k.ends_with("libc.so.6")), "{c:?}");
        assert!(c.keys().any(|k| k.contains("ld-linux")), "{c:?}");
        assert!(c.values().all(|p| p.is_file()));
    }

    #[test]
    fn static_binary_has_no_closure() {
        // busybox-static, which the Makefile installs; skip quietly where the host lacks it.
        if Path::new("/bin/busybox").exists() {
            assert!(closure(Path::new("/bin/busybox")).unwrap().is_empty());
        }
    }

    #[test]
    fn non_elf_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("script");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        let err = closure(&p).unwrap_err().to_string();
        assert!(err.contains("script"), "{err}");
    }
}
