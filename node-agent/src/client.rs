//! `drove-agent` when it is not PID 1: a small on-node client for debugging.

use crate::power::PowerAction;
use nix::sys::signal::Signal;
use std::path::Path;

pub const USAGE: &str = "\
usage: drove-agent [COMMAND]
As PID 1 (the /init of a drove node) it boots the node; otherwise:
  status                          this node's name, address, number and speed
  poweroff | reboot | halt        ask PID 1 (the agent) to do it cleanly
  modules-order MODULES.DEP NAME...  the order the agent would load NAME... in
  daemon                          the cluster daemon (PID 1 starts and supervises it)
  tcp-sink PORT                   take one TCP connection on PORT, read it to the end
  tcp-send ADDR:PORT MIB          send MIB MiB there, print the throughput (raw TCP)
  help, --help                    this text
  --version                       the agent's version
On the console of a node type: poweroff, reboot, halt, status, help.";

/// The signal that asks the agent (PID 1) for `action`; see `signals::action_for`.
pub fn signal_for(action: PowerAction) -> Signal {
    match action {
        PowerAction::Poweroff => Signal::SIGUSR2,
        PowerAction::Reboot => Signal::SIGINT,
        PowerAction::Halt => Signal::SIGUSR1,
    }
}

/// Runs a client command; returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            0
        }
        ["--version" | "-V"] => {
            println!("drove-agent {}", crate::pid1::VERSION);
            0
        }
        ["daemon"] => crate::daemon::main(),
        ["tcp-sink", port] => crate::netbench::sink_main(port),
        ["tcp-send", addr, mib] => crate::netbench::send_main(addr, mib),
        ["status"] => match std::fs::read_to_string(crate::pid1::STATE_FILE) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!(
                    "drove-agent: cannot read {}: {e} (is the node ready?)",
                    crate::pid1::STATE_FILE
                );
                1
            }
        },
        [cmd @ ("poweroff" | "reboot" | "halt")] => {
            let action = match *cmd {
                "poweroff" => PowerAction::Poweroff,
                "reboot" => PowerAction::Reboot,
                _ => PowerAction::Halt,
            };
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), signal_for(action)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("drove-agent: cannot signal PID 1: {e}");
                    1
                }
            }
        }
        ["modules-order", dep, names @ ..] => {
            let dep_path = Path::new(dep);
            match crate::modules::ModulesDep::load(dep_path) {
                Ok(dep) => {
                    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
                    let (order, problems) = dep.load_order(&names, dep_path);
                    for (name, path) in order {
                        println!("{name} {}", path.display());
                    }
                    for p in &problems {
                        eprintln!("drove-agent: {p}");
                    }
                    i32::from(!problems.is_empty())
                }
                Err(e) => {
                    eprintln!("drove-agent: {}", crate::console::chain(&e));
                    1
                }
            }
        }
        _ => {
            eprintln!("drove-agent: unknown command {:?}\n{USAGE}", args.join(" "));
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::{action_for, SignalAction};

    #[test]
    fn client_signals_mean_what_pid1_thinks() {
        for a in [
            PowerAction::Poweroff,
            PowerAction::Reboot,
            PowerAction::Halt,
        ] {
            assert_eq!(action_for(signal_for(a)), SignalAction::Power(a));
        }
    }

    #[test]
    fn unknown_commands_exit_2() {
        assert_eq!(main(&["frobnicate".into()]), 2);
        assert_eq!(main(&["modules-order".into(), "/nonexistent".into()]), 1);
    }
}
