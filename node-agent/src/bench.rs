//! The boot-time speed benchmark: a short integer loop whose rate, scaled or pinned by the
//! calibration overlay (`Calibration::effective_speed`), is the node's speed.
//!
//! Unit: millions of loop iterations per second (one xorshift64* step each). Only ratios
//! between nodes matter; a calibration file uses the same unit.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// How long the benchmark runs at most (plus one chunk).
pub const BUDGET: Duration = Duration::from_millis(50);
const CHUNK: u64 = 20_000;

/// Runs the loop for about `budget` and returns the measured rate (> 0).
pub fn measure(budget: Duration) -> f64 {
    let start = Instant::now();
    let mut state = black_box(0x9e37_79b9_7f4a_7c15u64);
    let mut iterations = 0u64;
    loop {
        for _ in 0..CHUNK {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        }
        iterations += CHUNK;
        let elapsed = start.elapsed();
        if elapsed >= budget {
            black_box(state);
            return iterations as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmark_is_short_and_positive() {
        let t = Instant::now();
        let speed = measure(Duration::from_millis(20));
        assert!(speed > 0.0 && speed.is_finite());
        assert!(t.elapsed() < Duration::from_millis(500));
    }
}
