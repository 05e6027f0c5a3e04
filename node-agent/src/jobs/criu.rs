//! CRIU, the migration engine: the command lines drove runs and one wrapper that runs them
//! through the child registry, logs them and explains a failure with CRIU's own error lines.

use crate::children::{shell_line, Children, Exit};
use std::path::Path;
use std::time::{Duration, Instant};

pub const CRIU: &str = "/usr/sbin/criu";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {line}")]
    Run {
        line: String,
        source: crate::children::Error,
    },
    #[error("`{line}` failed ({exit}): {explanation}")]
    Failed {
        line: String,
        exit: Exit,
        explanation: String,
    },
}

/// How CRIU treats the job's own mount namespace (a slave copy of the node's mounts, made by
/// `launch_with`), on dump, pre-dump and restore alike. Every mount in it is one every node has
/// at the same path (the image's root, /proc, /sys, /dev, /run, /tmp, the cluster file area), so
/// none is dumped: `mnt[]` makes each an external bind mount keyed by its path, which the
/// restore binds from the target's own mount at that path; the masters/sharing switches let
/// CRIU keep the slave link to the node's shared mounts (later mounts still reach the job).
pub const MOUNT_NS_ARGS: [&str; 3] = ["--external", "mnt[]", "--enable-external-masters"];

/// Whether jobs start in a mount namespace of their own (`launch_with`, and PID 1 lifting and
/// sharing the node's root at boot), and so whether CRIU is told how to dump and restore one
/// (docs/migration.md, *Own mount namespace*). Off: a PID namespace only, every CRIU command
/// line as before the mount namespace existed.
pub const OWN_MOUNT_NS: bool = true;

fn with_mount_ns(mut a: Vec<String>) -> Vec<String> {
    if !OWN_MOUNT_NS {
        return a;
    }
    let at = a.len() - 3;
    a.splice(at..at, MOUNT_NS_ARGS.iter().map(|s| s.to_string()));
    a
}

/// `criu dump` of the job whose root (the init of its PID namespace) is `pid`: the tasks are
/// left stopped so the source can resume them if anything later fails.
pub fn dump_args(pid: i32, images: &Path, log: &Path) -> Vec<String> {
    with_mount_ns(vec![
        "dump".into(),
        "-t".into(),
        pid.to_string(),
        "-D".into(),
        images.display().to_string(),
        "--leave-stopped".into(),
        "-v2".into(),
        "-o".into(),
        log.display().to_string(),
    ])
}

/// `criu pre-dump --track-mem` of the job rooted at `pid` into `images`: its memory is copied
/// while it keeps running (it is frozen only while the pages are collected), and the kernel's
/// soft-dirty bits are reset so the next round (`prev`: the previous round's directory,
/// relative to `images`) and the final dump write only pages changed since.
pub fn pre_dump_args(pid: i32, images: &Path, prev: Option<&str>, log: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "pre-dump".into(),
        "-t".into(),
        pid.to_string(),
        "-D".into(),
        images.display().to_string(),
        "--track-mem".into(),
    ];
    if let Some(prev) = prev {
        a.extend(["--prev-images-dir".into(), prev.into()]);
    }
    a.extend(["-v2".into(), "-o".into(), log.display().to_string()]);
    with_mount_ns(a)
}

/// The final dump after pre-dump rounds: like [`dump_args`], writing only the pages dirtied
/// since the last round (`prev`, relative to `images`; CRIU links it as `images/parent`).
pub fn final_dump_args(pid: i32, images: &Path, prev: &str, log: &Path) -> Vec<String> {
    let mut a = dump_args(pid, images, log);
    let at = a.len() - 3;
    a.splice(
        at..at,
        [
            "--track-mem".to_string(),
            "--prev-images-dir".into(),
            prev.into(),
        ],
    );
    a
}

/// `criu restore` detached, into a new PID namespace (CRIU recreates the one it dumped), left
/// stopped until the source has killed its copy; `pidfile` gets the root's pid.
pub fn restore_args(images: &Path, pidfile: &Path, log: &Path) -> Vec<String> {
    let mut a = with_mount_ns(vec![
        "restore".into(),
        "-D".into(),
        images.display().to_string(),
        "-d".into(),
        "--leave-stopped".into(),
        "--pidfile".into(),
        pidfile.display().to_string(),
        "-v2".into(),
        "-o".into(),
        log.display().to_string(),
    ]);
    if OWN_MOUNT_NS {
        // The namespace's root is rebuilt as a bind of this node's root, which is also the only
        // mount CRIU's mount-v2 can take the node's root peer group from, the group the job's
        // root is a slave of (without it: "Sharing group (0, 1) has unreachable sharing").
        let at = a.len() - 3;
        a.splice(at..at, ["--root".to_string(), "/".into()]);
    }
    a
}

/// CRIU's own explanation from its log: the `Error` lines (last few), else the log's tail.
pub fn explain(log: &str, output: &str) -> String {
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Error") || l.contains("error"))
        .collect();
    let pick: Vec<&str> = if errors.is_empty() {
        let all: Vec<&str> = log
            .lines()
            .chain(output.lines())
            .filter(|l| !l.trim().is_empty())
            .collect();
        all[all.len().saturating_sub(3)..].to_vec()
    } else {
        errors[errors.len().saturating_sub(4)..].to_vec()
    };
    if pick.is_empty() {
        "no log".into()
    } else {
        pick.iter()
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// Runs criu with `args`; on failure the error carries the command line and CRIU's error lines
/// from `log`. Returns how long it took.
pub fn run(
    children: &Children,
    args: &[String],
    log: &Path,
    timeout: Duration,
) -> Result<Duration, Error> {
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let line = shell_line(CRIU, &argv);
    crate::info!("jobs: run {line}");
    let t0 = Instant::now();
    let (exit, output) = children
        .run(CRIU, &argv, timeout)
        .map_err(|source| Error::Run {
            line: line.clone(),
            source,
        })?;
    if exit.success() {
        return Ok(t0.elapsed());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Err(Error::Failed {
        line,
        exit,
        explanation: explain(&text, &output),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mount namespace arguments as they appear in a command line (shell-quoted, as the
    /// agent logs it), with a leading space.
    fn ns() -> String {
        if OWN_MOUNT_NS {
            format!(" {}", shell_line(MOUNT_NS_ARGS[0], &MOUNT_NS_ARGS[1..]))
        } else {
            String::new()
        }
    }

    /// The same for `criu restore`, which also names the root to rebuild the namespace on.
    fn restore_ns() -> String {
        if OWN_MOUNT_NS {
            format!("{} --root /", ns())
        } else {
            String::new()
        }
    }

    #[test]
    fn command_lines() {
        let d = dump_args(
            431,
            Path::new("/run/drove/jobs/1.1/img"),
            Path::new("/run/drove/jobs/1.1/dump.log"),
        );
        let argv: Vec<&str> = d.iter().map(String::as_str).collect();
        assert_eq!(shell_line(CRIU, &argv), format!("/usr/sbin/criu dump -t 431 -D /run/drove/jobs/1.1/img --leave-stopped{} -v2 -o /run/drove/jobs/1.1/dump.log", ns()));
        let r = restore_args(
            Path::new("/run/drove/jobs/1.1/img"),
            Path::new("/run/drove/jobs/1.1/pid"),
            Path::new("/run/drove/jobs/1.1/restore.log"),
        );
        let argv: Vec<&str> = r.iter().map(String::as_str).collect();
        assert_eq!(
            shell_line(CRIU, &argv),
            format!("/usr/sbin/criu restore -D /run/drove/jobs/1.1/img -d --leave-stopped --pidfile /run/drove/jobs/1.1/pid{} -v2 -o /run/drove/jobs/1.1/restore.log", restore_ns())
        );
    }

    #[test]
    fn pre_copy_command_lines() {
        let line = |a: Vec<String>| {
            let argv: Vec<&str> = a.iter().map(String::as_str).collect();
            shell_line(CRIU, &argv)
        };
        let d = Path::new("/run/drove/jobs/1.1");
        assert_eq!(
            line(pre_dump_args(431, &d.join("pre-1"), None, &d.join("pre-1.log"))),
            format!("/usr/sbin/criu pre-dump -t 431 -D /run/drove/jobs/1.1/pre-1 --track-mem{} -v2 -o /run/drove/jobs/1.1/pre-1.log", ns())
        );
        assert_eq!(
            line(pre_dump_args(431, &d.join("pre-2"), Some("../pre-1"), &d.join("pre-2.log"))),
            format!("/usr/sbin/criu pre-dump -t 431 -D /run/drove/jobs/1.1/pre-2 --track-mem --prev-images-dir ../pre-1{} -v2 -o /run/drove/jobs/1.1/pre-2.log", ns())
        );
        assert_eq!(
            line(final_dump_args(431, &d.join("img-out"), "../pre-2", &d.join("dump.log"))),
            format!("/usr/sbin/criu dump -t 431 -D /run/drove/jobs/1.1/img-out --leave-stopped{} --track-mem --prev-images-dir ../pre-2 -v2 -o /run/drove/jobs/1.1/dump.log", ns())
        );
    }

    #[test]
    fn explanations_prefer_error_lines() {
        let log = "(00.1) Dumping\n(00.2) Error (criu/files-reg.c:1998): File /x has bad size 3 (expect 5)\n(00.3) Error (criu/cr-restore.c:2447): Restoring FAILED.\n";
        assert_eq!(explain(log, ""), "(00.2) Error (criu/files-reg.c:1998): File /x has bad size 3 (expect 5) | (00.3) Error (criu/cr-restore.c:2447): Restoring FAILED.");
        assert_eq!(explain("a\nb\nc\nd\n", ""), "b | c | d");
        assert_eq!(explain("", ""), "no log");
    }
}
