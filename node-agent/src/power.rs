//! Clean poweroff, reboot and halt: stop every process (TERM, a short grace, KILL), sync,
//! unmount what can be, then `reboot(2)`.

use crate::sys::Sys;
use nix::sys::reboot::RebootMode;
use nix::sys::signal::Signal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Poweroff,
    Reboot,
    Halt,
}

impl PowerAction {
    pub fn mode(self) -> RebootMode {
        match self {
            PowerAction::Poweroff => RebootMode::RB_POWER_OFF,
            PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
            PowerAction::Halt => RebootMode::RB_HALT_SYSTEM,
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            PowerAction::Poweroff => "powering off",
            PowerAction::Reboot => "rebooting",
            PowerAction::Halt => "halting",
        }
    }
}

/// How long processes get between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(50);

static IN_PROGRESS: AtomicBool = AtomicBool::new(false);

/// Whether a poweroff, reboot or halt has started (supervisors then stop restarting things).
pub fn in_progress() -> bool {
    IN_PROGRESS.load(Ordering::SeqCst)
}

/// Starts the shutdown unless one is already under way (then returns at once). On success the
/// machine goes down; if `reboot(2)` fails the error is logged and the function returns.
pub fn request(sys: &dyn Sys, action: PowerAction) {
    if IN_PROGRESS.swap(true, Ordering::SeqCst) {
        crate::info!("already shutting down; {} request ignored", action.verb());
        return;
    }
    shutdown(sys, action, GRACE);
}

/// The shutdown sequence itself (no once-guard; see [`request`]).
pub fn shutdown(sys: &dyn Sys, action: PowerAction, grace: Duration) {
    crate::info!("{}: stopping all processes", action.verb());
    for (sig, wait) in [
        (Signal::SIGTERM, grace),
        (Signal::SIGKILL, Duration::from_secs(1)),
    ] {
        if sys.processes().is_empty() {
            break;
        }
        if sig == Signal::SIGKILL {
            let names: Vec<String> = sys
                .processes()
                .iter()
                .map(|(pid, comm)| format!("{comm}[{pid}]"))
                .collect();
            crate::warn!(
                "still running after {} ms, killing: {}",
                grace.as_millis(),
                names.join(" ")
            );
        }
        if let Err(e) = sys.kill_all(sig) {
            crate::warn!("cannot send {sig} to all processes: {e}");
        }
        let mut waited = Duration::ZERO;
        // Processes that ended are reaped by the signal thread; wait until none is left.
        while waited < wait && !sys.processes().is_empty() {
            sys.sleep(POLL);
            waited += POLL;
        }
    }
    sys.sync();
    let mut points = sys.mount_points();
    points.reverse();
    for point in points.iter().filter(|p| p.as_os_str() != "/") {
        if let Err(e) = sys.umount(point) {
            crate::debug!("cannot unmount {}: {e}", point.display());
        }
    }
    sys.sync();
    crate::info!("{}", action.verb());
    let err = sys.reboot(action);
    crate::error!("reboot(2) for {} failed: {err}", action.verb());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;
    use std::path::PathBuf;

    #[test]
    fn shutdown_kills_syncs_unmounts_in_reverse_then_reboots() {
        let sys = FakeSys::default();
        *sys.mounted.lock().unwrap() = vec![
            PathBuf::from("/"),
            PathBuf::from("/proc"),
            PathBuf::from("/dev"),
            PathBuf::from("/dev/pts"),
        ];
        *sys.processes_left.lock().unwrap() = 3;
        shutdown(&sys, PowerAction::Poweroff, Duration::from_secs(1));
        assert_eq!(
            sys.calls(),
            vec![
                "kill -1 SIGTERM",
                "sleep 50ms",
                "sleep 50ms",
                "sync",
                "umount /dev/pts",
                "umount /dev",
                "umount /proc",
                "sync",
                "reboot Poweroff"
            ]
        );
    }

    #[test]
    fn stubborn_processes_get_sigkill_after_the_grace() {
        let sys = FakeSys::default();
        *sys.processes_left.lock().unwrap() = 1000;
        shutdown(&sys, PowerAction::Reboot, Duration::from_millis(100));
        let calls = sys.calls();
        assert_eq!(calls[0], "kill -1 SIGTERM");
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("sleep")).count(),
            2 + 20
        );
        assert_eq!(calls.iter().filter(|c| c.starts_with("kill")).count(), 2);
        assert!(calls.contains(&"kill -1 SIGKILL".to_string()));
        assert_eq!(calls.last().unwrap(), "reboot Reboot");
    }

    #[test]
    fn nothing_to_kill_means_no_signals() {
        let sys = FakeSys::default();
        shutdown(&sys, PowerAction::Halt, Duration::from_secs(1));
        assert_eq!(sys.calls(), vec!["sync", "sync", "reboot Halt"]);
    }

    #[test]
    fn actions_map_to_reboot_modes() {
        assert_eq!(PowerAction::Poweroff.mode(), RebootMode::RB_POWER_OFF);
        assert_eq!(PowerAction::Reboot.mode(), RebootMode::RB_AUTOBOOT);
        assert_eq!(PowerAction::Halt.mode(), RebootMode::RB_HALT_SYSTEM);
    }
}
