//! The kernel cache: what a build is keyed by, the source's hash (memoised by file identity so a
//! cached rebuild needs no re-read of a 130 MB tarball), and unpacking a source tarball once.
//!
//! ```text
//! <cache>/lock                     held while configuring/compiling (one compile at a time)
//! <cache>/source-hashes            memo: size mtime inode path → sha256
//! <cache>/src/<source>/            an unpacked tarball (a directory source is used in place)
//! <cache>/build/<source>-<base>/   make's O= directory, reused so a changed fragment is incremental
//! <cache>/images/<key>/            bzImage, config, kernel.json, build.log of one finished build
//! <cache>/estimates/<base>         files compiled by the last cold build (the progress total)
//! ```

use std::io::{BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Error;

/// Bumped when the layout of a build changes so old cache entries are not reused.
const KEY_VERSION: &str = "drove-kernel-v1";

/// Everything a compiled kernel depends on.
#[derive(Debug, Clone)]
pub struct KeyInputs<'a> {
    pub source_hash: &'a str,
    pub base: &'a str,
    pub arch: &'a str,
    /// The fragments' contents, in merge order (the order matters: later wins).
    pub fragments: &'a [Vec<u8>],
    /// `gcc --version`'s first line.
    pub compiler: &'a str,
}

impl KeyInputs<'_> {
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |name: &str, bytes: &[u8]| {
            // Length-prefixed so no two different inputs hash the same byte stream.
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field("version", KEY_VERSION.as_bytes());
        field("source", self.source_hash.as_bytes());
        field("base", self.base.as_bytes());
        field("arch", self.arch.as_bytes());
        field("compiler", self.compiler.as_bytes());
        for f in self.fragments {
            field("fragment", f);
        }
        hex::encode(h.finalize())
    }
}

pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut file = std::fs::File::open(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    Ok(hex::encode(h.finalize()))
}

/// The source's identity: a tarball's sha256 (memoised in `memo` by size, mtime and inode), or
/// for a directory the sha256 of its listing (relative path, type, size, mtime of every entry).
pub fn source_hash(source: &Path, memo: &Path) -> Result<String, Error> {
    let meta = std::fs::metadata(source).map_err(|source_err| Error::NoSource {
        path: source.into(),
        source: source_err,
    })?;
    if meta.is_dir() {
        return dir_listing_hash(source);
    }
    let id = format!(
        "{} {} {} {}",
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ino()
    );
    let abs = std::fs::canonicalize(source).unwrap_or_else(|_| source.into());
    let tag = format!("{id} {}", abs.display());
    if let Ok(file) = std::fs::File::open(memo) {
        for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
            if let Some((hash, rest)) = line.split_once(' ') {
                if rest == tag {
                    return Ok(hash.to_string());
                }
            }
        }
    }
    let hash = sha256_file(source)?;
    // A lost memo line only costs one more hash next time: append, ignore failures.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(memo)
    {
        let _ = writeln!(f, "{hash} {tag}");
    }
    Ok(hash)
}

fn dir_listing_hash(dir: &Path) -> Result<String, Error> {
    let mut h = Sha256::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|e| Error::Read {
            path: e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.into()),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("walk failed")),
        })?;
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        if rel.starts_with(".git") {
            continue;
        }
        let meta = entry.metadata().map_err(|e| Error::Read {
            path: entry.path().into(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("stat failed")),
        })?;
        let kind = if meta.is_dir() {
            'd'
        } else if meta.file_type().is_symlink() {
            'l'
        } else {
            'f'
        };
        h.update(
            format!(
                "{kind} {} {} {}.{}\n",
                rel.display(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec()
            )
            .as_bytes(),
        );
    }
    Ok(format!("dir-{}", hex::encode(h.finalize())))
}

/// Unpacks a `.tar.xz`, `.tar.zst` or `.tar` kernel source into `<cache>/src/<short hash>/` once
/// (into a temporary directory renamed when complete) and returns the tree's top directory.
pub fn unpack(tarball: &Path, hash: &str, cache: &Path) -> Result<(PathBuf, bool), Error> {
    let dest = cache.join("src").join(short(hash));
    if dest.is_dir() {
        return Ok((find_tree(&dest)?, false));
    }
    let parent = cache.join("src");
    std::fs::create_dir_all(&parent).map_err(|source| Error::Write {
        path: parent.clone(),
        source,
    })?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&parent)
        .map_err(|source| Error::Write {
            path: parent.clone(),
            source,
        })?;
    let file = std::fs::File::open(tarball).map_err(|source| Error::Read {
        path: tarball.into(),
        source,
    })?;
    let file = std::io::BufReader::with_capacity(1 << 20, file);
    let name = tarball.to_string_lossy();
    let reader: Box<dyn std::io::Read> = if name.ends_with(".xz") || name.ends_with(".txz") {
        Box::new(xz2::read::XzDecoder::new(file))
    } else if name.ends_with(".zst") {
        Box::new(
            zstd::stream::read::Decoder::new(file).map_err(|source| Error::Unpack {
                path: tarball.into(),
                source,
            })?,
        )
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.unpack(tmp.path()).map_err(|source| Error::Unpack {
        path: tarball.into(),
        source,
    })?;
    find_tree(tmp.path())?;
    let tmp = tmp.keep();
    std::fs::rename(&tmp, &dest).map_err(|source| Error::Write {
        path: dest.clone(),
        source,
    })?;
    Ok((find_tree(&dest)?, true))
}

/// The kernel tree in `dir`: `dir` itself or its single top-level directory (`linux-source-6.1/`).
pub fn find_tree(dir: &Path) -> Result<PathBuf, Error> {
    let is_tree = |d: &Path| {
        d.join("Makefile").is_file()
            && d.join("Kconfig").is_file()
            && d.join("scripts/kconfig").is_dir()
    };
    if is_tree(dir) {
        return Ok(dir.into());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.into(),
        source,
    })?;
    for entry in entries.flatten() {
        if is_tree(&entry.path()) {
            return Ok(entry.path());
        }
    }
    Err(Error::NotKernelTree { path: dir.into() })
}

/// The first 16 hex digits: enough to tell sources apart in directory names.
pub fn short(hash: &str) -> &str {
    let h = hash.strip_prefix("dir-").unwrap_or(hash);
    &h[..h.len().min(16)]
}

/// An exclusive lock on `<cache>/lock`, held until dropped (flock: released if the process dies).
pub struct Lock {
    _file: std::fs::File,
}

impl Lock {
    pub fn acquire(cache: &Path, quiet: bool) -> Result<Lock, Error> {
        use std::os::fd::AsRawFd;
        let path = cache.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Write {
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on a file descriptor we own; it touches no memory.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            if !quiet {
                eprintln!(
                    "drove: waiting for another `drove kernel build` ({} is locked)",
                    path.display()
                );
            }
            // SAFETY: as above; blocks until the other build releases the lock.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc != 0 {
                return Err(Error::Write {
                    path,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(Lock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(frags: &'a [Vec<u8>], compiler: &'a str) -> KeyInputs<'a> {
        KeyInputs {
            source_hash: "abc",
            base: "tinyconfig",
            arch: "x86_64",
            fragments: frags,
            compiler,
        }
    }

    #[test]
    fn key_changes_with_every_input() {
        let frags = vec![b"CONFIG_A=y\n".to_vec(), b"CONFIG_B=y\n".to_vec()];
        let k = inputs(&frags, "gcc 12").key();
        assert_eq!(k, inputs(&frags.clone(), "gcc 12").key(), "deterministic");
        let changed = vec![b"CONFIG_A=y\n".to_vec(), b"CONFIG_B=n\n".to_vec()];
        assert_ne!(
            k,
            inputs(&changed, "gcc 12").key(),
            "a changed fragment rebuilds"
        );
        let swapped = vec![frags[1].clone(), frags[0].clone()];
        assert_ne!(k, inputs(&swapped, "gcc 12").key(), "order matters");
        let joined = vec![b"CONFIG_A=y\nCONFIG_B=y\n".to_vec()];
        assert_ne!(
            k,
            inputs(&joined, "gcc 12").key(),
            "fragment boundaries matter"
        );
        assert_ne!(k, inputs(&frags, "gcc 13").key());
        let mut other = inputs(&frags, "gcc 12");
        other.source_hash = "abd";
        assert_ne!(k, other.key());
        other.source_hash = "abc";
        other.base = "defconfig";
        assert_ne!(k, other.key());
    }

    #[test]
    fn tarball_hash_is_memoised_and_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("linux.tar.xz");
        let memo = dir.path().join("memo");
        std::fs::write(&src, b"one").unwrap();
        let h1 = source_hash(&src, &memo).unwrap();
        assert_eq!(h1, hex::encode(Sha256::digest(b"one")));
        assert!(std::fs::read_to_string(&memo).unwrap().starts_with(&h1));
        assert_eq!(source_hash(&src, &memo).unwrap(), h1);
        std::fs::write(&src, b"two!").unwrap();
        assert_ne!(
            source_hash(&src, &memo).unwrap(),
            h1,
            "a different size or mtime is a new source"
        );
        assert!(matches!(
            source_hash(&dir.path().join("none"), &memo),
            Err(Error::NoSource { .. })
        ));
    }

    #[test]
    fn directory_hash_follows_the_listing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Makefile"), b"x").unwrap();
        let memo = dir.path().join("..memo-unused");
        let h1 = source_hash(dir.path(), &memo).unwrap();
        assert!(h1.starts_with("dir-"));
        assert_eq!(source_hash(dir.path(), &memo).unwrap(), h1);
        std::fs::write(dir.path().join("Kconfig"), b"y").unwrap();
        assert_ne!(source_hash(dir.path(), &memo).unwrap(), h1);
    }

    #[test]
    fn unpacks_a_tarball_once_and_finds_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux-source-6.1");
        std::fs::create_dir_all(tree.join("scripts/kconfig")).unwrap();
        std::fs::write(tree.join("Makefile"), b"VERSION = 6\n").unwrap();
        std::fs::write(tree.join("Kconfig"), b"").unwrap();
        let tarball = dir.path().join("src.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&tarball).unwrap());
        b.append_dir_all("linux-source-6.1", &tree).unwrap();
        b.finish().unwrap();
        drop(b);
        let cache = dir.path().join("cache");
        let (top, fresh) = unpack(&tarball, "0123456789abcdef0123", &cache).unwrap();
        assert!(fresh);
        assert_eq!(top, cache.join("src/0123456789abcdef/linux-source-6.1"));
        assert!(top.join("Makefile").is_file());
        let (again, fresh) = unpack(&tarball, "0123456789abcdef0123", &cache).unwrap();
        assert_eq!((again, fresh), (top, false));
        assert!(
            matches!(
                find_tree(&cache.join("src")),
                Err(Error::NotKernelTree { .. })
            ),
            "two levels down is not found"
        );
    }
}
