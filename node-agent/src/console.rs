//! Console output: every log line goes to each console the kernel lists in `/proc/consoles`
//! (a person at the PC reads `tty0`, tests read `ttyS0`), or to stderr before those are known.
//!
//! Lines look like `drove-agent: info: message`; contract lines such as the ready line are
//! written verbatim with [`line`].

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Severity of a log line; `Debug` lines are shown only when the kernel command line has
/// `drove.debug`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

static OUTPUTS: Mutex<Vec<File>> = Mutex::new(Vec::new());
static DEBUG: AtomicBool = AtomicBool::new(false);

fn outputs() -> MutexGuard<'static, Vec<File>> {
    OUTPUTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Shows or hides `debug` lines.
pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// The text of one log line, without the trailing newline.
pub fn format_line(level: Level, args: fmt::Arguments<'_>) -> String {
    format!("drove-agent: {}: {args}", level.as_str())
}

/// Logs one line at `level` (use the `info!`, `warn!`, `error!`, `debug!` macros).
pub fn log(level: Level, args: fmt::Arguments<'_>) {
    if level == Level::Debug && !debug_enabled() {
        return;
    }
    line(&format_line(level, args));
}

/// Writes `text` and a newline to every console in one `write` per console, so that lines from
/// different threads never interleave.
pub fn line(text: &str) {
    let mut buf = String::with_capacity(text.len() + 1);
    buf.push_str(text);
    buf.push('\n');
    let mut outs = outputs();
    if outs.is_empty() {
        let _ = std::io::stderr().write_all(buf.as_bytes());
        return;
    }
    for out in outs.iter_mut() {
        // A console that fails (e.g. a VT without a display) must not stop the others.
        let _ = out.write_all(buf.as_bytes());
    }
}

/// Device names of the consoles in `/proc/consoles` text, in order, without duplicates.
///
/// Each line starts with the device name (`ttyS0  -W- (EC p a)  4:64`).
pub fn parse_proc_consoles(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.split_whitespace().next() {
            let valid = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
            if valid && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// The device paths to use as consoles: those in `/proc/consoles`, or `/dev/console`.
pub fn console_paths(proc_consoles: Option<&str>) -> Vec<PathBuf> {
    let names = proc_consoles.map(parse_proc_consoles).unwrap_or_default();
    if names.is_empty() {
        return vec![PathBuf::from("/dev/console")];
    }
    names.iter().map(|n| Path::new("/dev").join(n)).collect()
}

/// Opens a console device for reading and writing without making it our controlling tty (a
/// Ctrl-C typed there must not reach PID 1 as SIGINT, which means "reboot").
pub fn open_device(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
}

/// Sends log output to `files` from now on (replacing stderr).
pub fn set_outputs(files: Vec<File>) {
    *outputs() = files;
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::console::log($crate::console::Level::Info, format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::console::log($crate::console::Level::Warn, format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::console::log($crate::console::Level::Error, format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::console::log($crate::console::Level::Debug, format_args!($($arg)*)) };
}

/// Formats an error with its whole `source()` chain: `outer: inner: innermost`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_consoles_lists_devices_in_order() {
        let text = "ttyS0                -W- (EC p a)    4:64\ntty0                 -WU (E  p  )    4:1\nttyS0 -W- (E) 4:64\n";
        assert_eq!(parse_proc_consoles(text), vec!["ttyS0", "tty0"]);
        assert_eq!(
            console_paths(Some(text)),
            vec![PathBuf::from("/dev/ttyS0"), PathBuf::from("/dev/tty0")]
        );
    }

    #[test]
    fn no_consoles_fall_back_to_dev_console() {
        assert_eq!(console_paths(None), vec![PathBuf::from("/dev/console")]);
        assert_eq!(
            console_paths(Some("\n../x y\n")),
            vec![PathBuf::from("/dev/console")]
        );
    }

    #[test]
    fn lines_have_prefix_and_level() {
        assert_eq!(
            format_line(Level::Warn, format_args!("eth1: {}", "down")),
            "drove-agent: warn: eth1: down"
        );
    }

    #[test]
    fn chain_joins_sources() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read /x")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(chain(&Outer(inner)), "cannot read /x: gone");
    }
}
