//! Child processes of PID 1: one registry that spawns every child and one reaper that collects
//! every exit status.
//!
//! PID 1 inherits every orphan, so it must `waitpid(-1)`; that would steal the status of a child
//! some thread is waiting for. Here all children are spawned through [`Children::spawn`], which
//! registers the pid under the same lock the reaper holds while it calls `waitpid`, and the reaper
//! hands each status to whoever spawned that pid. Unknown pids (orphans) are just reaped.

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(127) => write!(f, "exit status 127 (command not found)"),
            Exit::Code(126) => write!(f, "exit status 126 (not executable)"),
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => write!(f, "killed by {s}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("cannot create a pipe for {program}")]
    Pipe { program: String, source: Errno },
    #[error("cannot read the output of {program}")]
    Output {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {secs} s")]
    Timeout { program: String, secs: u64 },
    #[error("lost track of {program}")]
    Lost { program: String },
}

/// A running child: its pid, its merged stdout+stderr (when asked for) and its exit status.
pub struct Spawned {
    pub pid: Pid,
    pub output: Option<std::fs::File>,
    pub exit: Receiver<Exit>,
}

/// The registry of children that some thread waits for.
#[derive(Default)]
pub struct Children {
    waiting: Mutex<HashMap<Pid, Sender<Exit>>>,
}

impl Children {
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self) -> MutexGuard<'_, HashMap<Pid, Sender<Exit>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spawns `cmd`; with `capture`, its stdout and stderr go to one pipe returned as `output`.
    /// Never call `wait` on the process yourself: its status arrives on `exit`.
    pub fn spawn(&self, cmd: &mut Command, capture: bool) -> Result<Spawned, Error> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut output = None;
        if capture {
            let (read, write) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| Error::Pipe {
                    program: program.clone(),
                    source,
                })?;
            let write2: OwnedFd = write.try_clone().map_err(|source| Error::Spawn {
                program: program.clone(),
                source,
            })?;
            cmd.stdout(Stdio::from(write)).stderr(Stdio::from(write2));
            output = Some(std::fs::File::from(read));
        }
        cmd.stdin(Stdio::null());
        // PID 1 blocks the signals it takes with sigwait, and std does not reset the mask it
        // hands to a child: without this, udhcpc & co. would ignore SIGTERM at shutdown.
        // SAFETY: runs in the child between fork and exec; it only calls sigemptyset and
        // pthread_sigmask on a stack value, both async-signal-safe, and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                SigSet::empty()
                    .thread_set_mask()
                    .map_err(std::io::Error::from)
            });
        }
        let (tx, rx) = mpsc::channel();
        // Held across spawn and insert: the reaper cannot collect this pid before it is known.
        let mut table = self.table();
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        });
        // Drop our copies of the pipe's write end (held by `cmd`) so EOF arrives when the child ends.
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let child = child?;
        let pid = Pid::from_raw(child.id() as i32);
        table.insert(pid, tx);
        // Dropping `Child` neither waits nor kills; the reaper owns the status from here on.
        drop(child);
        Ok(Spawned {
            pid,
            output,
            exit: rx,
        })
    }

    /// Collects every child that has ended: statuses go to their spawners; orphans are returned.
    pub fn reap(&self) -> Vec<(Pid, Exit)> {
        let mut orphans = Vec::new();
        let mut table = self.table();
        loop {
            let (pid, exit) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            match table.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => orphans.push((pid, exit)),
            }
        }
        orphans
    }

    /// Runs a command to completion with merged output, as `drove-agent` runs `ip` and friends.
    /// The command line is logged at debug level in a form that can be pasted into a shell.
    pub fn run(
        &self,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<(Exit, String), Error> {
        crate::debug!("run: {}", shell_line(program, args));
        let mut cmd = Command::new(program);
        cmd.args(args);
        let spawned = self.spawn(&mut cmd, true)?;
        let mut text = String::new();
        if let Some(mut out) = spawned.output {
            let mut bytes = Vec::new();
            out.read_to_end(&mut bytes)
                .map_err(|source| Error::Output {
                    program: program.into(),
                    source,
                })?;
            text = String::from_utf8_lossy(&bytes).trim_end().to_string();
        }
        match spawned.exit.recv_timeout(timeout) {
            Ok(exit) => Ok((exit, text)),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout {
                program: program.into(),
                secs: timeout.as_secs(),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Lost {
                program: program.into(),
            }),
        }
    }
}

/// A command line that can be pasted into a shell (arguments quoted where needed).
pub fn shell_line(program: &str, args: &[&str]) -> String {
    let quote = |s: &str| {
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_line_quotes_what_needs_it() {
        assert_eq!(
            shell_line(
                "/bin/busybox",
                &["ip", "addr", "add", "10.0.0.1/24", "dev", "eth0"]
            ),
            "/bin/busybox ip addr add 10.0.0.1/24 dev eth0"
        );
        assert_eq!(
            shell_line("sh", &["-c", "echo it's"]),
            r"sh -c 'echo it'\''s'"
        );
    }

    #[test]
    fn exit_explains_127() {
        assert_eq!(
            Exit::Code(127).to_string(),
            "exit status 127 (command not found)"
        );
        assert_eq!(
            Exit::Signal(Signal::SIGKILL).to_string(),
            "killed by SIGKILL"
        );
    }

    #[test]
    fn children_start_with_no_blocked_signals() {
        let children = Children::new();
        let mut blocked = SigSet::empty();
        blocked.add(Signal::SIGTERM);
        // Block in a scratch thread (the mask is per thread) and spawn from there.
        let out = std::thread::scope(|s| {
            s.spawn(|| {
                blocked.thread_block().unwrap();
                let spawned = children
                    .spawn(
                        Command::new("grep").args(["^SigBlk", "/proc/self/status"]),
                        true,
                    )
                    .unwrap();
                let mut text = String::new();
                spawned.output.unwrap().read_to_string(&mut text).unwrap();
                text
            })
            .join()
            .unwrap()
        });
        assert_eq!(out.trim(), "SigBlk:\t0000000000000000");
    }

    #[test]
    fn run_delivers_status_and_output_through_the_reaper() {
        let children = std::sync::Arc::new(Children::new());
        let reaper = {
            let children = children.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    children.reap();
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let (exit, out) = children
            .run(
                "sh",
                &["-c", "echo out; echo err >&2; exit 3"],
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(exit, Exit::Code(3));
        assert_eq!(out, "out\nerr");
        let err = children
            .run("/nonexistent/x", &[], Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
        drop(reaper);
    }
}
