//! Deterministic newc ("070701") cpio writer, the format the kernel unpacks as initramfs.
//!
//! Entries are written in the order given (the planner sorts them, parents first); every entry gets
//! uid/gid 0, the same mtime, and inode numbers counted from 1, so equal inputs give equal bytes.

use std::io::{self, Read, Write};
use std::path::PathBuf;

/// What one archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Dir,
    /// A regular file whose bytes come from a path on the build host.
    File(PathBuf),
    /// A regular file whose bytes the builder generated.
    Bytes(Vec<u8>),
    Symlink(String),
    /// A device node, fifo or socket: the file-type bits (`S_IFCHR`, …) and device numbers.
    Node {
        kind: u32,
        major: u32,
        minor: u32,
    },
}

/// One entry: path inside the archive (no leading `/`), permission bits, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub body: Body,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path} for the archive")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: changed size while being archived (expected {expected} bytes, read {read})")]
    Changed {
        path: PathBuf,
        expected: u64,
        read: u64,
    },
    #[error("{path}: {size} bytes is too large for a newc cpio entry (4 GiB limit)")]
    TooLarge { path: String, size: u64 },
    #[error("cannot write the archive")]
    Write(#[source] io::Error),
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Writes `entries` followed by the trailer; returns the bytes written.
pub fn write<W: Write>(out: W, entries: &[Entry], mtime: u32) -> Result<u64, Error> {
    let mut out = Counting {
        inner: out,
        count: 0,
    };
    for (i, entry) in entries.iter().enumerate() {
        let ino = (i + 1) as u32;
        match &entry.body {
            Body::Dir => header(
                &mut out,
                &entry.path,
                ino,
                S_IFDIR | entry.mode,
                2,
                mtime,
                0,
                (0, 0),
            )?,
            Body::Node { kind, major, minor } => header(
                &mut out,
                &entry.path,
                ino,
                kind | entry.mode,
                1,
                mtime,
                0,
                (*major, *minor),
            )?,
            Body::Symlink(target) => {
                header(
                    &mut out,
                    &entry.path,
                    ino,
                    S_IFLNK | 0o777,
                    1,
                    mtime,
                    target.len() as u64,
                    (0, 0),
                )?;
                data(&mut out, target.as_bytes())?;
            }
            Body::Bytes(bytes) => {
                header(
                    &mut out,
                    &entry.path,
                    ino,
                    S_IFREG | entry.mode,
                    1,
                    mtime,
                    bytes.len() as u64,
                    (0, 0),
                )?;
                data(&mut out, bytes)?;
            }
            Body::File(src) => {
                let file = std::fs::File::open(src).map_err(|source| Error::Read {
                    path: src.clone(),
                    source,
                })?;
                let size = file
                    .metadata()
                    .map_err(|source| Error::Read {
                        path: src.clone(),
                        source,
                    })?
                    .len();
                header(
                    &mut out,
                    &entry.path,
                    ino,
                    S_IFREG | entry.mode,
                    1,
                    mtime,
                    size,
                    (0, 0),
                )?;
                let read = io::copy(&mut file.take(size), &mut out).map_err(|source| {
                    // A failed copy is either side's fault; io::copy cannot tell us which.
                    Error::Read {
                        path: src.clone(),
                        source,
                    }
                })?;
                if read != size {
                    return Err(Error::Changed {
                        path: src.clone(),
                        expected: size,
                        read,
                    });
                }
                pad(&mut out)?;
            }
        }
    }
    header(&mut out, "TRAILER!!!", 0, 0, 1, 0, 0, (0, 0))?;
    pad(&mut out)?;
    out.inner.flush().map_err(Error::Write)?;
    Ok(out.count)
}

#[allow(clippy::too_many_arguments)]
fn header<W: Write>(
    out: &mut Counting<W>,
    path: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u64,
    rdev: (u32, u32),
) -> Result<(), Error> {
    let size32 = u32::try_from(size).map_err(|_| Error::TooLarge {
        path: path.into(),
        size,
    })?;
    let namesize = path.len() as u32 + 1;
    let fields = [
        ino, mode, 0, 0, nlink, mtime, size32, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    let mut head = String::with_capacity(110);
    head.push_str("070701");
    for f in fields {
        head.push_str(&format!("{f:08x}"));
    }
    out.write_all(head.as_bytes()).map_err(Error::Write)?;
    out.write_all(path.as_bytes()).map_err(Error::Write)?;
    out.write_all(&[0]).map_err(Error::Write)?;
    pad(out)
}

fn data<W: Write>(out: &mut Counting<W>, bytes: &[u8]) -> Result<(), Error> {
    out.write_all(bytes).map_err(Error::Write)?;
    pad(out)
}

fn pad<W: Write>(out: &mut Counting<W>) -> Result<(), Error> {
    let rem = (out.count % 4) as usize;
    if rem != 0 {
        out.write_all(&[0u8; 3][..4 - rem]).map_err(Error::Write)?;
    }
    Ok(())
}

struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample(dir: &std::path::Path) -> Vec<Entry> {
        let f = dir.join("agent");
        std::fs::write(&f, b"#!/bin/sh\necho hi\n").unwrap();
        vec![
            Entry {
                path: "bin".into(),
                mode: 0o755,
                body: Body::Dir,
            },
            Entry {
                path: "bin/sh".into(),
                mode: 0o777,
                body: Body::Symlink("busybox".into()),
            },
            Entry {
                path: "etc".into(),
                mode: 0o755,
                body: Body::Dir,
            },
            Entry {
                path: "etc/drove.toml".into(),
                mode: 0o644,
                body: Body::Bytes(b"a = 1\n".to_vec()),
            },
            Entry {
                path: "init".into(),
                mode: 0o755,
                body: Body::File(f),
            },
        ]
    }

    #[test]
    fn cpio_tool_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        let n = write(&mut buf, &sample(dir.path()), 1_700_000_000).unwrap();
        assert_eq!(n as usize, buf.len());
        assert_eq!(buf.len() % 4, 0);
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cpio(1) is needed for this test: apt-get install cpio");
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.split_whitespace().nth(8).unwrap())
            .collect();
        assert_eq!(names, ["bin", "bin/sh", "etc", "etc/drove.toml", "init"]);
        assert!(listing.contains("bin/sh -> busybox"), "{listing}");
        assert!(
            listing
                .lines()
                .all(|l| l.contains(" root ") || l.contains(" 0 ")),
            "{listing}"
        );
    }

    #[test]
    fn cpio_tool_extracts_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        write(&mut buf, &sample(dir.path()), 0).unwrap();
        let dest = dir.path().join("x");
        std::fs::create_dir(&dest).unwrap();
        let mut child = Command::new("cpio")
            .args(["-i", "-d", "--quiet"])
            .current_dir(&dest)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read(dest.join("init")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read(dest.join("etc/drove.toml")).unwrap(),
            b"a = 1\n"
        );
        assert_eq!(
            std::fs::read_link(dest.join("bin/sh")).unwrap().to_str(),
            Some("busybox")
        );
    }

    #[test]
    fn same_input_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write(&mut a, &sample(dir.path()), 42).unwrap();
        write(&mut b, &sample(dir.path()), 42).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn missing_source_is_named() {
        let entries = [Entry {
            path: "x".into(),
            mode: 0o644,
            body: Body::File("/nonexistent/drove".into()),
        }];
        let err = write(Vec::new(), &entries, 0).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/drove"));
    }
}
