//! The file systems PID 1 mounts, as a plan (pure data) and the step that applies it.

use crate::sys::Sys;
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

/// What every node mounts, in order (parents before children).
pub fn plan() -> Vec<MountSpec> {
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let m = |source, target, fstype, flags, data| MountSpec {
        source,
        target,
        fstype,
        flags,
        data,
    };
    vec![
        m("proc", "/proc", "proc", common | MsFlags::MS_NOEXEC, None),
        m("sysfs", "/sys", "sysfs", common | MsFlags::MS_NOEXEC, None),
        m(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        m(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0620,ptmxmode=0666"),
        ),
        m("tmpfs", "/dev/shm", "tmpfs", common, Some("mode=1777")),
        m("tmpfs", "/run", "tmpfs", common, Some("mode=0755")),
        m("tmpfs", "/tmp", "tmpfs", common, Some("mode=1777")),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create mount point {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Mounted,
    AlreadyMounted,
}

/// Mounts each entry of `plan` that is not mounted yet; goes on after a failure and returns one
/// result per entry.
pub fn mount_all(sys: &dyn Sys, plan: &[MountSpec]) -> Vec<(&'static str, Result<Outcome, Error>)> {
    plan.iter()
        .map(|spec| (spec.target, mount_one(sys, spec)))
        .collect()
}

fn mount_one(sys: &dyn Sys, spec: &MountSpec) -> Result<Outcome, Error> {
    let target = Path::new(spec.target);
    if sys.mount_points().iter().any(|p| p == target) {
        return Ok(Outcome::AlreadyMounted);
    }
    sys.create_dir_all(target)
        .map_err(|source| Error::CreateDir {
            path: target.into(),
            source,
        })?;
    match sys.mount(spec.source, target, spec.fstype, spec.flags, spec.data) {
        Ok(()) => Ok(Outcome::Mounted),
        // EBUSY: something is mounted there already (e.g. /proc before we could read mounts).
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(Outcome::AlreadyMounted),
        Err(source) => Err(Error::Mount {
            fstype: spec.fstype,
            target: target.into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    #[test]
    fn plan_mounts_parents_first() {
        let p = plan();
        let pos = |t: &str| p.iter().position(|s| s.target == t).unwrap();
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/dev") < pos("/dev/shm"));
        for t in ["/proc", "/sys", "/dev", "/dev/pts", "/run", "/tmp"] {
            pos(t);
        }
    }

    #[test]
    fn already_mounted_is_tolerated() {
        let sys = FakeSys::default();
        sys.mounted.lock().unwrap().push("/dev".into());
        let results = mount_all(&sys, &plan());
        assert!(results.iter().all(|(_, r)| r.is_ok()));
        let dev = results.iter().find(|(t, _)| *t == "/dev").unwrap();
        assert!(matches!(dev.1, Ok(Outcome::AlreadyMounted)));
        assert!(sys.calls().contains(&"mount proc /proc proc -".to_string()));
        assert!(!sys.calls().iter().any(|c| c.starts_with("mount devtmpfs")));
        // A second run mounts nothing.
        let again = mount_all(&sys, &plan());
        assert!(again
            .iter()
            .all(|(_, r)| matches!(r, Ok(Outcome::AlreadyMounted))));
    }
}
