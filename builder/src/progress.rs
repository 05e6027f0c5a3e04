//! Build steps shown with their duration (`-q` hides them; `-v` also shows external commands).

use std::time::{Duration, Instant};

/// Prints one line per finished step to stderr: `drove: [ 1.23s] compress initramfs (…)`.
#[derive(Debug, Clone)]
pub struct Steps {
    quiet: bool,
    started: Instant,
    pub timings: Vec<(String, Duration)>,
}

impl Steps {
    pub fn new(quiet: bool) -> Self {
        Steps {
            quiet,
            started: Instant::now(),
            timings: Vec::new(),
        }
    }

    /// Runs `f` as the step `name`; on success prints the step, its time and what `f` reports.
    pub fn run<T, E>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<(T, String), E>,
    ) -> Result<T, E> {
        tracing::debug!("step: {name}");
        let start = Instant::now();
        let (value, detail) = f()?;
        let took = start.elapsed();
        if !self.quiet {
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            };
            eprintln!("drove: [{:>6.2}s] {name}{detail}", took.as_secs_f64());
        }
        self.timings.push((name.to_string(), took));
        Ok(value)
    }

    pub fn total(&self) -> Duration {
        self.started.elapsed()
    }
}

/// `12345678` → `11.8 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A progress bar on stderr for a long step of known size (flash, downloads): redrawn in place
/// at most ten times a second when `show` (a terminal), with done/total, rate and time left;
/// silent otherwise (the caller prints a summary line).
#[derive(Debug)]
pub struct Bar {
    label: String,
    total: u64,
    done: u64,
    show: bool,
    started: Instant,
    drawn: Option<Instant>,
}

/// Characters of the bar itself.
const BAR_WIDTH: usize = 30;

impl Bar {
    pub fn new(label: &str, total: u64, show: bool) -> Self {
        Bar {
            label: label.to_string(),
            total,
            done: 0,
            show,
            started: Instant::now(),
            drawn: None,
        }
    }

    /// Sets the amount done and redraws if the last draw is older than 100 ms.
    pub fn set(&mut self, done: u64) {
        self.done = done.min(self.total);
        let due = match self.drawn {
            None => true,
            Some(t) => t.elapsed() >= Duration::from_millis(100),
        };
        if self.show && due {
            self.drawn = Some(Instant::now());
            eprint!("\r{}\x1b[K", self.line());
        }
    }

    /// Draws the final state and ends the line.
    pub fn finish(&mut self) {
        if self.show {
            eprintln!("\r{}\x1b[K", self.line());
            self.show = false;
        }
    }

    /// `write  [##########          ]  33%  10.0 MiB/30.0 MiB  5.0 MiB/s  4s left`
    pub fn line(&self) -> String {
        let frac = if self.total == 0 {
            1.0
        } else {
            self.done as f64 / self.total as f64
        };
        let filled = ((frac * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let left = if rate > 0.0 && self.done < self.total {
            format!("  {:.0}s left", (self.total - self.done) as f64 / rate)
        } else {
            String::new()
        };
        format!(
            "{:<7}[{}{}] {:>3.0}%  {}/{}  {}/s{left}",
            self.label,
            "#".repeat(filled),
            " ".repeat(BAR_WIDTH - filled),
            frac * 100.0,
            human(self.done),
            human(self.total),
            human(rate as u64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_line() {
        let mut b = Bar::new("write", 300, false);
        b.set(100);
        let l = b.line();
        assert!(
            l.starts_with("write  [##########                    ]  33%  100 B/300 B"),
            "{l}"
        );
        b.set(1000);
        assert!(b.line().contains("100%  300 B/300 B"), "{}", b.line());
        b.finish();
        assert!(Bar::new("x", 0, false).line().contains("100%"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1_474_560), "1.4 MiB");
    }

    #[test]
    fn failed_step_is_not_recorded() {
        let mut s = Steps::new(true);
        let r: Result<(), &str> = s.run("x", || Err("boom"));
        assert!(r.is_err());
        assert!(s.timings.is_empty());
        s.run::<_, ()>("y", || Ok(((), String::new()))).unwrap();
        assert_eq!(s.timings.len(), 1);
    }
}
