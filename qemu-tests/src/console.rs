//! The serial console: a reader thread copies QEMU's stdout byte for byte into `console.log` and
//! keeps the lines (terminal escapes and carriage returns removed) for matching.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// What a console line is matched against: a `&str`/`String` matches as a substring, a
/// [`regex::Regex`] as a regular expression.
pub trait LinePattern {
    fn is_match(&self, line: &str) -> bool;
    /// For error messages.
    fn describe(&self) -> String;
}

impl LinePattern for str {
    fn is_match(&self, line: &str) -> bool {
        line.contains(self)
    }
    fn describe(&self) -> String {
        format!("line containing {self:?}")
    }
}

impl LinePattern for String {
    fn is_match(&self, line: &str) -> bool {
        line.contains(self.as_str())
    }
    fn describe(&self) -> String {
        self.as_str().describe()
    }
}

impl LinePattern for regex::Regex {
    fn is_match(&self, line: &str) -> bool {
        regex::Regex::is_match(self, line)
    }
    fn describe(&self) -> String {
        format!("line matching /{}/", self.as_str())
    }
}

impl<P: LinePattern + ?Sized> LinePattern for &P {
    fn is_match(&self, line: &str) -> bool {
        (**self).is_match(line)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

#[derive(Default)]
pub(crate) struct State {
    /// Complete lines, cleaned, with the time each was seen.
    pub lines: Vec<(Instant, String)>,
    /// The line being received (no newline yet).
    pub partial: Vec<u8>,
    /// QEMU closed its stdout (it exited).
    pub eof: bool,
}

#[derive(Default)]
pub(crate) struct Console {
    state: Mutex<State>,
    pub changed: Condvar,
}

impl Console {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reader-thread body: copies `from` into `log` and into lines until EOF.
    pub fn pump(&self, mut from: impl Read, mut log: File) {
        let mut buf = [0u8; 4096];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let _ = log.write_all(&buf[..n]);
            let mut state = self.lock();
            for &b in &buf[..n] {
                if b == b'\n' {
                    let line = clean(&std::mem::take(&mut state.partial));
                    state.lines.push((Instant::now(), line));
                } else {
                    state.partial.push(b);
                }
            }
            drop(state);
            self.changed.notify_all();
        }
        let _ = log.flush();
        let mut state = self.lock();
        if !state.partial.is_empty() {
            let line = clean(&std::mem::take(&mut state.partial));
            state.lines.push((Instant::now(), line));
        }
        state.eof = true;
        drop(state);
        self.changed.notify_all();
    }

    /// The last `n` lines, for failure reports.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let state = self.lock();
        let mut lines: Vec<String> = state.lines[state.lines.len().saturating_sub(n)..]
            .iter()
            .map(|(_, l)| l.clone())
            .collect();
        if !state.partial.is_empty() {
            lines.push(clean(&state.partial));
        }
        lines
    }
}

/// Removes ANSI escape sequences (firmware screens are full of them) and control characters; a
/// carriage return keeps only what follows it, as a terminal would show it.
pub(crate) fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    // CSI: parameters and intermediates, then one final byte in @..~
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\r' => {
                if chars.peek().is_some() {
                    out.clear();
                }
            }
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_escapes_and_carriage_returns() {
        assert_eq!(clean(b"plain\r"), "plain");
        assert_eq!(
            clean(b"\x1b[2J\x1b[01;01H\x1b[=3hBdsDxe: loading"),
            "BdsDxe: loading"
        );
        assert_eq!(
            clean(b"http://x/vmlinuz... 10%\rhttp://x/vmlinuz... ok"),
            "http://x/vmlinuz... ok"
        );
        assert_eq!(clean(b"a\tb\x07c"), "a\tbc");
    }

    #[test]
    fn patterns() {
        assert!("ready".is_match("drove: ready node=node1"));
        let re = regex::Regex::new(r"^drove: ready node=(\S+) addr=10\.0\.2\.15$")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(LinePattern::is_match(
            &re,
            "drove: ready node=node1 addr=10.0.2.15"
        ));
        assert!(!LinePattern::is_match(
            &re,
            "drove: ready node=node1 addr=10.0.2.16"
        ));
        assert_eq!(
            LinePattern::describe(&&re),
            "line matching /^drove: ready node=(\\S+) addr=10\\.0\\.2\\.15$/"
        );
    }
}
