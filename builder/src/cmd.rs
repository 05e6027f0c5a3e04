//! The one wrapper through which drove runs external commands (syslinux, make, criu, qemu, …).
//!
//! Every command is logged as a copy-pasteable line (shown with `-v`); failures say which command
//! failed, how (exit code or signal) and what exit 127 means, with the command's stderr attached.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{line}`: cannot start {program:?}: not installed or not on PATH (install it, or run `make deps`)")]
    NotFound { line: String, program: String },
    #[error("`{line}`: cannot start")]
    Spawn {
        line: String,
        source: std::io::Error,
    },
    #[error("`{line}` {how}{}", stderr_tail(.stderr))]
    Failed {
        line: String,
        how: String,
        stderr: String,
    },
}

fn stderr_tail(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        let tail: Vec<&str> = trimmed.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(":\n{}", tail.join("\n"))
    }
}

/// A command to run: program, arguments, environment additions and working directory.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().into(), value.as_ref().into()));
        self
    }

    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().into());
        self
    }

    /// The command as a shell line a person can paste to reproduce it.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(dir) = &self.dir {
            parts.push(format!("cd {} &&", shell_quote(dir.as_os_str())));
        }
        for (k, v) in &self.env {
            parts.push(format!("{}={}", k.to_string_lossy(), shell_quote(v)));
        }
        parts.push(shell_quote(&self.program));
        parts.extend(self.args.iter().map(|a| shell_quote(a)));
        parts.join(" ")
    }

    fn expression(&self) -> duct::Expression {
        let mut expr = duct::cmd(&self.program, &self.args);
        for (k, v) in &self.env {
            expr = expr.env(k, v);
        }
        if let Some(dir) = &self.dir {
            expr = expr.dir(dir);
        }
        expr
    }

    /// Runs to completion, capturing stdout (returned) and stderr (attached to failures).
    pub fn output(&self) -> Result<Vec<u8>, Error> {
        let line = self.line();
        tracing::debug!(target: "drove::cmd", "$ {line}");
        let out = self
            .expression()
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .map_err(|source| self.spawn_error(line.clone(), source))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(Error::Failed {
                line,
                how: describe(out.status),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    /// Runs to completion, discarding stdout.
    pub fn run(&self) -> Result<(), Error> {
        self.output().map(drop)
    }

    /// Runs with stdout and stderr passed through to the terminal (long builds such as `make`).
    pub fn run_inherit(&self) -> Result<(), Error> {
        let line = self.line();
        tracing::debug!(target: "drove::cmd", "$ {line}");
        let status = self
            .expression()
            .unchecked()
            .run()
            .map_err(|source| self.spawn_error(line.clone(), source))?
            .status;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Failed {
                line,
                how: describe(status),
                stderr: String::new(),
            })
        }
    }

    /// Starts in the background with stdout and stderr passed through (a server drove runs
    /// beside itself, such as dnsmasq); the caller stops it through the handle.
    pub fn start(&self) -> Result<duct::Handle, Error> {
        let line = self.line();
        tracing::debug!(target: "drove::cmd", "$ {line} &");
        self.expression()
            .unchecked()
            .start()
            .map_err(|source| self.spawn_error(line.clone(), source))
    }

    fn spawn_error(&self, line: String, source: std::io::Error) -> Error {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                line,
                program: self.program.to_string_lossy().into_owned(),
            }
        } else {
            Error::Spawn { line, source }
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(127), _) => "exited with 127 (a program it runs was not found)".into(),
        (Some(126), _) => "exited with 126 (found but not executable)".into(),
        (Some(code), _) => format!("exited with {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended without an exit status".into(),
    }
}

/// Quotes one word for a POSIX shell, leaving plain words bare.
pub fn shell_quote(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_copy_pasteable() {
        let c = Cmd::new("syslinux")
            .arg("--install")
            .arg("a b.img")
            .env("MTOOLS_SKIP_CHECK", "1");
        assert_eq!(c.line(), "MTOOLS_SKIP_CHECK=1 syslinux --install 'a b.img'");
        assert_eq!(shell_quote(OsStr::new("it's")), r"'it'\''s'");
    }

    #[test]
    fn missing_program_is_named() {
        let err = Cmd::new("drove-no-such-program").run().unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }));
        assert!(err.to_string().contains("drove-no-such-program"));
    }

    #[test]
    fn failure_carries_exit_code_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("exited with 3") && msg.contains("boom"),
            "{msg}"
        );
        let err = Cmd::new("sh").args(["-c", "exit 127"]).run().unwrap_err();
        assert!(err.to_string().contains("not found"));
        let err = Cmd::new("sh").args(["-c", "kill -9 $$"]).run().unwrap_err();
        assert!(err.to_string().contains("signal 9"));
    }
}
