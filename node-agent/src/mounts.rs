//! The file systems PID 1 mounts, as a plan (pure data) and the step that applies it; and the
//! root's own mount: lifted off the initramfs and shared, so jobs can run in mount namespaces
//! CRIU can restore (see `docs/migration.md`, *How a job runs*).

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
    #[error("cannot give jobs a restorable root: `{step}` failed")]
    Lift {
        step: &'static str,
        source: std::io::Error,
    },
}

/// The initramfs root (`rootfs`) is the one mount with no parent: `pivot_root(2)` refuses to
/// move it (EINVAL), and `criu restore` of a job in its own mount namespace pivots into the
/// namespace it rebuilt. So PID 1 binds the root onto [`LIFT_DIR`], moves that bind over `/` and
/// chroots into it, as `switch_root` does (without copying anything): from then on the root is
/// a bind mount of the same files, with `rootfs` as its parent.
pub const LIFT_DIR: &str = "/.drove-root";

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Is a root of this `statfs` type an initramfs that still needs lifting? (Called once, by PID
/// 1, before anything is mounted: a lifted root has the same type, but is never asked.)
pub fn is_initramfs(f_type: i64) -> bool {
    f_type == RAMFS_MAGIC || f_type == TMPFS_MAGIC
}

/// One step of lifting the root, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiftStep {
    MakeDir,
    Bind,
    EnterDir,
    MoveOverRoot,
    Chroot,
    EnterRoot,
    RemoveDir,
}

pub const LIFT_STEPS: [LiftStep; 7] = [
    LiftStep::MakeDir,
    LiftStep::Bind,
    LiftStep::EnterDir,
    LiftStep::MoveOverRoot,
    LiftStep::Chroot,
    LiftStep::EnterRoot,
    LiftStep::RemoveDir,
];

impl LiftStep {
    fn describe(self) -> &'static str {
        match self {
            LiftStep::MakeDir => "mkdir /.drove-root",
            LiftStep::Bind => "mount --rbind / /.drove-root",
            LiftStep::EnterDir => "chdir /.drove-root",
            LiftStep::MoveOverRoot => "mount --move . /",
            LiftStep::Chroot => "chroot .",
            LiftStep::EnterRoot => "chdir /",
            LiftStep::RemoveDir => "rmdir /.drove-root",
        }
    }

    fn apply(self) -> nix::Result<()> {
        use nix::mount::{mount, MsFlags};
        let none: Option<&str> = None;
        match self {
            LiftStep::MakeDir => {
                match nix::unistd::mkdir(LIFT_DIR, nix::sys::stat::Mode::from_bits_truncate(0o700))
                {
                    Err(nix::errno::Errno::EEXIST) => Ok(()),
                    r => r,
                }
            }
            LiftStep::Bind => mount(
                Some("/"),
                LIFT_DIR,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            ),
            LiftStep::EnterDir => nix::unistd::chdir(LIFT_DIR),
            LiftStep::MoveOverRoot => mount(Some("."), "/", none, MsFlags::MS_MOVE, none),
            LiftStep::Chroot => nix::unistd::chroot("."),
            LiftStep::EnterRoot => nix::unistd::chdir("/"),
            // Only the empty directory of the initramfs is left there (the mount moved away).
            LiftStep::RemoveDir => std::fs::remove_dir(LIFT_DIR)
                .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
}

/// Lifts an initramfs root (see [`LIFT_DIR`]); `Ok(false)` when the root is something else.
/// A step that fails leaves the root where it was (only `RemoveDir` comes after the move and
/// the chroot, and its failure is harmless: an empty directory stays).
pub fn lift_root() -> Result<bool, Error> {
    let fs = nix::sys::statfs::statfs("/").map_err(|e| Error::Lift {
        step: "statfs /",
        source: e.into(),
    })?;
    #[allow(clippy::unnecessary_cast)]
    if !is_initramfs(fs.filesystem_type().0 as i64) {
        return Ok(false);
    }
    for step in LIFT_STEPS {
        if let Err(e) = step.apply() {
            if step == LiftStep::RemoveDir {
                break;
            }
            return Err(Error::Lift {
                step: step.describe(),
                source: e.into(),
            });
        }
    }
    Ok(true)
}

/// `mount --make-rshared /`: every mount of the node (and every one made later under them)
/// propagates to the jobs' mount namespaces, which are its slaves.
pub fn share_root() -> Result<(), Error> {
    let none: Option<&str> = None;
    nix::mount::mount(
        none,
        "/",
        none,
        nix::mount::MsFlags::MS_SHARED | nix::mount::MsFlags::MS_REC,
        none,
    )
    .map_err(|e| Error::Lift {
        step: "mount --make-rshared /",
        source: e.into(),
    })
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
    fn lifting_binds_moves_then_chroots() {
        assert!(is_initramfs(0x8584_58f6) && is_initramfs(0x0102_1994));
        // ext4, nfs: a real root is left alone.
        assert!(!is_initramfs(0xef53) && !is_initramfs(0x6969));
        let order: Vec<&str> = LIFT_STEPS.iter().map(|s| s.describe()).collect();
        assert_eq!(
            order,
            [
                "mkdir /.drove-root",
                "mount --rbind / /.drove-root",
                "chdir /.drove-root",
                "mount --move . /",
                "chroot .",
                "chdir /",
                "rmdir /.drove-root"
            ]
        );
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
