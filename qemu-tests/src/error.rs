//! The harness's error type: every variant names the file, command or VM it is about, and VM
//! failures carry the console log's path and its last lines so a failing test explains itself.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(thiserror::Error)]
pub enum Error {
    #[error("no built media: {} is missing; run `make image` first (or point DROVE_OUT at an output directory)", .manifest.display())]
    NoMedia { manifest: PathBuf },
    #[error("{} is missing although {} lists it; run `make image` again", .path.display(), .manifest.display())]
    MissingArtifact { path: PathBuf, manifest: PathBuf },
    #[error("cannot parse {}", .path.display())]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{what} {}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} not found: build it in the same profile as the tests (`cargo build -p drove`) or set DROVE_BIN", .path.display())]
    NoDroveBin { path: PathBuf },
    #[error("`{line}`: cannot start (is it installed?)")]
    Spawn {
        line: String,
        source: std::io::Error,
    },
    #[error("`{line}` {how}{}", tail_of(.stderr))]
    Command {
        line: String,
        how: String,
        stderr: String,
    },
    #[error("vm {vm}: no {what} within {timeout:?}\n{report}")]
    Timeout {
        vm: String,
        what: String,
        timeout: Duration,
        report: String,
    },
    #[error("vm {vm}: QEMU exited ({status}) while waiting for {what}\n{report}")]
    Exited {
        vm: String,
        what: String,
        status: String,
        report: String,
    },
    #[error("vm {vm}: console shows a fatal line while waiting for {what}: {line:?}\n{report}")]
    Fatal {
        vm: String,
        what: String,
        line: String,
        report: String,
    },
    #[error("vm {vm}: QEMU exited with {status}, expected a clean exit\n{report}")]
    Unclean {
        vm: String,
        status: String,
        report: String,
    },
    #[error("vm {vm}: cannot write to the serial console")]
    Console { vm: String, source: std::io::Error },
    #[error("vde_switch: no control socket at {} after {timeout:?}", .path.display())]
    Vde { path: PathBuf, timeout: Duration },
    #[error("node {node}: API request failed")]
    Api {
        node: u32,
        source: drove::status::Error,
    },
    #[error("cluster: {what}")]
    Cluster { what: String },
    #[error(
        "node {node}: still waiting for {what} after {timeout:?}; last answer:\n{last}\n{report}"
    )]
    Condition {
        node: u32,
        what: String,
        timeout: Duration,
        last: String,
        report: String,
    },
}

fn tail_of(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        return String::new();
    }
    let lines: Vec<&str> = trimmed.lines().collect();
    format!(":\n{}", lines[lines.len().saturating_sub(30)..].join("\n"))
}

/// Debug prints like Display plus the source chain, so `fn test() -> Result<(), Error>` and
/// `.expect()` show a readable report instead of a struct dump.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
