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

#[cfg(test)]
mod tests {
    use super::*;

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
