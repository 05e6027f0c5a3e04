//! Can a job move? The files it has open or mapped must be ones every node sees at the same
//! path with the same contents, or CRIU's restore fails on the target (or worse, restores it
//! against a different file). Movable:
//!
//! - anything under the cluster file area (`/cluster`), while it is mounted here;
//! - the job's own stdout/stderr under `/run/drove/jobs/<id>/` (they travel with the job);
//! - the image's system files (`/bin`, `/lib`, `/usr`, `/etc`, ...): every node boots the same
//!   image; and devices, `/proc`, `/sys`;
//! - pipes, sockets and other non-file descriptors (CRIU's business).
//!
//! Anything else (`/tmp/x`, `/root/y`, `/dev/shm/z`, a directory made at run time outside the
//! area) is local to this node: the job is not movable and the reason names the first such path.
//! The check reads `/proc/PID/fd`, `/proc/PID/maps` and `/proc/PID/cwd` of every process of the
//! job (its whole PID namespace) and runs in the source before any dump, so a refused job is
//! never frozen, let alone half-migrated.

use std::path::{Path, PathBuf};

/// Directories that come from the image and are the same on every node.
const IMAGE_DIRS: &[&str] = &[
    "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/usr", "/etc", "/init", "/proc", "/sys",
];

/// What one process of the job has: open descriptors (link targets), mapped files, cwd.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Opened {
    pub pid: i32,
    pub fds: Vec<String>,
    pub maps: Vec<String>,
    pub cwd: Option<String>,
}

/// Is `path` one every node has as it is here?
fn shared_path(path: &Path, area: Option<&Path>, own: &[PathBuf]) -> bool {
    if area.is_some_and(|a| path.starts_with(a)) || own.iter().any(|o| path.starts_with(o)) {
        return true;
    }
    if path.starts_with("/dev") {
        // Device nodes are on every node; files in /dev/shm are not.
        return !path.starts_with("/dev/shm") && !path.starts_with("/dev/mqueue");
    }
    IMAGE_DIRS.iter().any(|d| path.starts_with(d))
}

/// A descriptor's link target as a path, when it is a file (not `pipe:[..]`, `socket:[..]`,
/// `anon_inode:..`), without the ` (deleted)` mark.
fn as_path(target: &str) -> Option<&Path> {
    let t = target.strip_suffix(" (deleted)").unwrap_or(target);
    t.starts_with('/').then(|| Path::new(t))
}

/// The reason the job cannot move, or `None` when every file is shared. `area` is the mounted
/// file area (None when there is none or it is not mounted), `own` the files and directories the
/// agent keeps for the job (they move with it or are the agent's own).
pub fn judge(procs: &[Opened], area: Option<&Path>, own: &[PathBuf]) -> Option<String> {
    let outside = match area {
        Some(a) => format!("outside the cluster file area {}", a.display()),
        None => "and this node has no cluster file area mounted".to_string(),
    };
    for p in procs {
        for t in &p.fds {
            if let Some(path) = as_path(t) {
                if !shared_path(path, area, own) {
                    return Some(format!("has {t} open ({outside})"));
                }
            }
        }
        for m in &p.maps {
            if let Some(path) = as_path(m) {
                if !shared_path(path, area, own) {
                    return Some(format!("has {m} mapped ({outside})"));
                }
            }
        }
        if let Some(cwd) = &p.cwd {
            if let Some(path) = as_path(cwd) {
                // `/` and `/tmp` themselves exist on every node; a directory below /tmp does not.
                let plain = [Path::new("/"), Path::new("/tmp")].contains(&path);
                if !plain && !shared_path(path, area, own) {
                    return Some(format!("works in {cwd} ({outside})"));
                }
            }
        }
    }
    None
}

/// The mapped files of a `/proc/PID/maps` text (the 6th field, when it is a path).
pub fn mapped_files(maps: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode pathname (the pathname may contain spaces).
        let mut rest = line;
        for _ in 0..5 {
            rest = rest.trim_start();
            rest = rest.find(' ').map_or("", |i| &rest[i..]);
        }
        let path = rest.trim();
        if path.starts_with('/') && !out.iter().any(|o| o == path) {
            out.push(path.to_owned());
        }
    }
    out
}

/// Every process in the PID namespace of `root` (the job is that namespace's init).
pub fn job_pids(root: i32) -> Vec<i32> {
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let Some(want) = ns(root) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| ns(*p).as_ref() == Some(&want))
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// What the processes of the job rooted at `root` have open, from /proc.
pub fn gather(root: i32) -> Vec<Opened> {
    job_pids(root)
        .into_iter()
        .map(|pid| {
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| std::fs::read_link(e.path()).ok())
                        .map(|t| t.to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .map(|m| mapped_files(&m))
                .unwrap_or_default();
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .ok()
                .map(|c| c.to_string_lossy().into_owned());
            Opened {
                pid,
                fds,
                maps,
                cwd,
            }
        })
        .collect()
}

/// Why the job rooted at `root`, with its files in `job_dir`, cannot move now; `None` if it can.
pub fn unmovable(root: i32, job_dir: &Path) -> Option<String> {
    let area = crate::cluster_fs::area().usable();
    // The whole job directory, not only stdout/stderr: while a checkpoint is dumped, CRIU's
    // parasite holds CRIU's log there (checkpoint.log) inside the job, and the job is then
    // `migrating` (busy), not unmovable.
    let own = [job_dir.to_path_buf()];
    judge(&gather(root), area.as_deref(), &own)
}

/// The prefix of the job reasons this module sets (so it clears only its own).
pub const REASON_PREFIX: &str = "not movable: ";

/// Does the job's `reason` say it cannot move (set by [`watch`])? The balancer leaves such jobs
/// alone, as it does pinned ones.
pub fn is_unmovable(reason: Option<&str>) -> bool {
    reason.is_some_and(|r| r.starts_with(REASON_PREFIX))
}

/// A running job as [`watch`] sees it: id, root pid, job directory, current `reason`.
pub type Watched = (String, i32, PathBuf, Option<String>);

/// Every 2 s, records on each running job (from `list`) why it cannot move (`set` stores the job's
/// `reason`, which `drove ps` shows), or clears that reason once it can again. Reasons this module
/// did not set are left alone.
pub fn watch(list: impl Fn() -> Vec<Watched>, set: impl Fn(&str, Option<String>)) {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(2));
        for (id, pid, dir, old) in list() {
            let now = unmovable(pid, &dir).map(|r| format!("{REASON_PREFIX}{r}"));
            let ours = old.is_none() || is_unmovable(old.as_deref());
            if ours && now != old {
                set(&id, now);
            }
        }
    }
}

/// Whether this node may take in a migrating job: not while the cluster has a file area that
/// is not usable here (the job would find an empty mount point and write there, locally).
pub fn can_host() -> Result<(), String> {
    let area = crate::cluster_fs::area();
    match area.mount_point() {
        Some(m) => area.require_for(&m),
        None => Ok(()),
    }
}

/// Where and with what environment a job starts (`drove run --cwd DIR --env K=V`).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Start {
    /// Working directory; default: the cluster file area when the cluster has one, else `/`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Variables set on top of the agent's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

impl Start {
    /// The directory the job starts in, or why it cannot start: a relative or missing directory,
    /// or one in the file area while the area is not usable here.
    pub fn cwd(&self) -> Result<PathBuf, String> {
        let area = crate::cluster_fs::area();
        match &self.cwd {
            Some(d) => {
                let p = PathBuf::from(d);
                if !p.is_absolute() {
                    return Err(format!("working directory {d:?} must be an absolute path"));
                }
                area.require_for(&p)?;
                if !p.is_dir() {
                    return Err(format!("working directory {d} does not exist on this node"));
                }
                Ok(p)
            }
            None => match area.mount_point() {
                Some(m) => area.require_for(&m).map(|()| m),
                None => Ok(PathBuf::from("/")),
            },
        }
    }

    /// The variables to set: the caller's, then `PWD` and `DROVE_JOB` (which win).
    pub fn env(&self, id: &str, cwd: &Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| k != "PWD" && k != "DROVE_JOB")
            .cloned()
            .collect();
        env.push(("PWD".into(), cwd.display().to_string()));
        env.push(("DROVE_JOB".into(), id.into()));
        env
    }

    /// Checks the variable names (non-empty, no `=` or NUL, values without NUL).
    pub fn check(&self) -> Result<(), String> {
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(format!(
                    "bad environment variable {k:?}: names are non-empty, without = or NUL"
                ));
            }
        }
        if self.cwd.as_deref().is_some_and(|c| c.contains('\0')) {
            return Err("working directory contains NUL".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_with(fds: &[&str], maps: &[&str], cwd: &str) -> Vec<Opened> {
        vec![Opened {
            pid: 7,
            fds: fds.iter().map(|s| s.to_string()).collect(),
            maps: maps.iter().map(|s| s.to_string()).collect(),
            cwd: Some(cwd.into()),
        }]
    }

    fn area() -> Option<&'static Path> {
        Some(Path::new("/cluster"))
    }

    fn own() -> Vec<PathBuf> {
        vec![PathBuf::from("/run/drove/jobs/1.1")]
    }

    #[test]
    fn area_own_outputs_image_and_devices_are_movable() {
        let p = proc_with(
            &[
                "/dev/null",
                "/run/drove/jobs/1.1/stdout",
                "/run/drove/jobs/1.1/stderr",
                // CRIU's log, held by its parasite during a checkpoint dump.
                "/run/drove/jobs/1.1/checkpoint.log",
                "/cluster/in.dat",
                "/cluster/out/result.txt",
                "pipe:[1234]",
                "socket:[99]",
                "anon_inode:[eventfd]",
                "/etc/passwd",
            ],
            &[
                "/bin/busybox",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/cluster/in.dat",
            ],
            "/cluster/run1",
        );
        assert_eq!(judge(&p, area(), &own()), None);
        assert_eq!(judge(&proc_with(&[], &[], "/"), area(), &own()), None);
        assert_eq!(judge(&proc_with(&[], &[], "/tmp"), None, &own()), None);
    }

    #[test]
    fn local_files_name_the_first_one() {
        let p = proc_with(&["/cluster/a", "/tmp/x"], &[], "/cluster");
        assert_eq!(
            judge(&p, area(), &own()).unwrap(),
            "has /tmp/x open (outside the cluster file area /cluster)"
        );
        let p = proc_with(&["/tmp/gone (deleted)"], &[], "/");
        assert!(judge(&p, area(), &own())
            .unwrap()
            .starts_with("has /tmp/gone (deleted) open"));
        let p = proc_with(&[], &["/dev/shm/seg"], "/");
        assert!(judge(&p, area(), &own())
            .unwrap()
            .contains("/dev/shm/seg mapped"));
        let p = proc_with(&[], &[], "/tmp/work");
        assert!(judge(&p, area(), &own())
            .unwrap()
            .starts_with("works in /tmp/work"));
        // Another job's output is not this one's.
        let p = proc_with(&["/run/drove/jobs/1.2/stdout"], &[], "/");
        assert!(judge(&p, area(), &own()).is_some());
    }

    #[test]
    fn without_a_mounted_area_area_paths_are_local() {
        let p = proc_with(&["/cluster/a"], &[], "/");
        let r = judge(&p, None, &own()).unwrap();
        assert!(r.contains("no cluster file area mounted"), "{r}");
    }

    #[test]
    fn start_env_and_cwd() {
        let s = Start {
            cwd: Some("relative".into()),
            env: vec![("A".into(), "1".into()), ("PWD".into(), "/x".into())],
        };
        assert!(s.cwd().unwrap_err().contains("absolute"));
        let env = s.env("1.4", Path::new("/cluster"));
        assert_eq!(
            env,
            [
                ("A".to_string(), "1".to_string()),
                ("PWD".to_string(), "/cluster".to_string()),
                ("DROVE_JOB".to_string(), "1.4".to_string())
            ]
        );
        assert!(s.check().is_ok());
        let bad = Start {
            cwd: None,
            env: vec![("A=B".into(), "1".into())],
        };
        assert!(bad.check().unwrap_err().contains("A=B"));
        // No area configured in this process: default cwd is /.
        assert_eq!(Start::default().cwd().unwrap(), PathBuf::from("/"));
        let missing = Start {
            cwd: Some("/nonexistent-drove-dir".into()),
            env: vec![],
        };
        assert!(missing.cwd().unwrap_err().contains("does not exist"));
        assert!(is_unmovable(Some("not movable: has /tmp/x open")));
        assert!(!is_unmovable(Some("lost with node 3")));
    }

    #[test]
    fn maps_are_parsed() {
        let maps = "55d0c0000000-55d0c0001000 r--p 00000000 00:02 123 /bin/busybox\n\
                    7f00-7f10 r--s 00000000 00:2a 77 /cluster/my input.dat\n\
                    7f10-7f20 rw-p 00000000 00:00 0 \n\
                    7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n\
                    55d0c0001000-55d0c0002000 r-xp 00001000 00:02 123 /bin/busybox\n";
        assert_eq!(
            mapped_files(maps),
            ["/bin/busybox", "/cluster/my input.dat"]
        );
    }

    #[test]
    fn this_process_is_seen() {
        // The test process has its own executable mapped and stdio open.
        let me = std::process::id() as i32;
        let opened = gather(me);
        assert!(opened.iter().any(|o| o.pid == me), "{opened:?}");
        let mine = opened.iter().find(|o| o.pid == me).unwrap();
        assert!(!mine.maps.is_empty() && !mine.fds.is_empty(), "{mine:?}");
    }
}
