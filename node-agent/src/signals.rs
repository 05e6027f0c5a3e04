//! Which signal means what to PID 1.
//!
//! SIGTERM, SIGUSR2 and SIGPWR power off, SIGINT (Ctrl-Alt-Del, once `reboot(RB_DISABLE_CAD)`
//! is set) reboots, SIGUSR1 halts, SIGCHLD reaps. Note: busybox's `reboot` applet sends SIGTERM,
//! which here powers off; use `drove-agent reboot` (SIGINT) instead.
//!
//! All of them are blocked in every thread and taken with `sigwait` by one thread. Blocked
//! signals reach PID 1 even without a handler (the kernel drops only unblocked default-action
//! signals sent to init).

use crate::power::PowerAction;
use nix::sys::signal::{SigSet, Signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    Reap,
    Power(PowerAction),
    Ignore,
}

pub fn action_for(sig: Signal) -> SignalAction {
    match sig {
        Signal::SIGCHLD => SignalAction::Reap,
        Signal::SIGTERM | Signal::SIGUSR2 | Signal::SIGPWR => {
            SignalAction::Power(PowerAction::Poweroff)
        }
        Signal::SIGINT => SignalAction::Power(PowerAction::Reboot),
        Signal::SIGUSR1 => SignalAction::Power(PowerAction::Halt),
        _ => SignalAction::Ignore,
    }
}

/// The signals PID 1 blocks and waits for.
pub fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGINT,
        Signal::SIGPWR,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGPIPE,
    ] {
        set.add(sig);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_actions() {
        assert_eq!(
            action_for(Signal::SIGTERM),
            SignalAction::Power(PowerAction::Poweroff)
        );
        assert_eq!(
            action_for(Signal::SIGUSR2),
            SignalAction::Power(PowerAction::Poweroff)
        );
        assert_eq!(
            action_for(Signal::SIGINT),
            SignalAction::Power(PowerAction::Reboot)
        );
        assert_eq!(
            action_for(Signal::SIGUSR1),
            SignalAction::Power(PowerAction::Halt)
        );
        assert_eq!(action_for(Signal::SIGCHLD), SignalAction::Reap);
        assert_eq!(action_for(Signal::SIGHUP), SignalAction::Ignore);
        for sig in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGCHLD,
        ] {
            assert!(handled().contains(sig));
        }
    }
}
