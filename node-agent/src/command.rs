//! Commands a person (or a test) types on the node's console.

use crate::power::PowerAction;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Power(PowerAction),
    Status,
    Help,
    /// Kill the cluster daemon (SIGKILL); PID 1's supervisor logs it and starts it again.
    RestartDaemon,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Blank line: nothing to do, nothing to say.
    Empty,
    Command(Command),
    Unknown(String),
}

pub const HELP: &str = "commands: poweroff, reboot, halt, status, restart-daemon, help";

/// Parses one console line (surrounding blanks and a trailing `\r` are ignored; case-insensitive).
pub fn parse(line: &str) -> Parsed {
    let word = line.trim();
    if word.is_empty() {
        return Parsed::Empty;
    }
    let command = match word.to_ascii_lowercase().as_str() {
        "poweroff" | "shutdown" => Command::Power(PowerAction::Poweroff),
        "reboot" => Command::Power(PowerAction::Reboot),
        "halt" => Command::Power(PowerAction::Halt),
        "status" => Command::Status,
        "help" | "?" => Command::Help,
        "restart-daemon" => Command::RestartDaemon,
        _ => return Parsed::Unknown(word.chars().filter(|c| !c.is_control()).take(40).collect()),
    };
    Parsed::Command(command)
}

/// The one-line answer to an unknown command.
pub fn unknown_hint(word: &str) -> String {
    format!("unknown command {word:?}; {HELP}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse("poweroff\r\n"),
            Parsed::Command(Command::Power(PowerAction::Poweroff))
        );
        assert_eq!(
            parse("  Reboot "),
            Parsed::Command(Command::Power(PowerAction::Reboot))
        );
        assert_eq!(
            parse("halt"),
            Parsed::Command(Command::Power(PowerAction::Halt))
        );
        assert_eq!(parse("status"), Parsed::Command(Command::Status));
        assert_eq!(parse("help"), Parsed::Command(Command::Help));
        assert_eq!(parse("   \r"), Parsed::Empty);
        assert_eq!(parse("ls -l\x1b[A"), Parsed::Unknown("ls -l[A".into()));
        assert_eq!(unknown_hint("ls"), "unknown command \"ls\"; commands: poweroff, reboot, halt, status, restart-daemon, help");
    }
}
