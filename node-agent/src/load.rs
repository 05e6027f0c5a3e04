//! The local load vector: run-queue load normalised by speed, free and total memory, jobs.
//!
//! Run-queue load: the number of runnable processes (`procs_running` in `/proc/stat`, minus the
//! sampling process itself) per CPU, smoothed over about 2 s (an exponential average sampled each
//! second, as MOSIX did, rather than the kernel's 1-minute loadavg which lags), then divided by
//! `speed / REFERENCE_SPEED`: a node of speed 100 with one busy process per CPU has load 1.0, a
//! twice as fast node with the same queue 0.5. Memory from `/proc/meminfo` (`MemAvailable`, else
//! `MemFree`).

use crate::gossip::Load;

/// The speed whose per-CPU queue of one is load 1.0 (same unit as `bench.rs`).
pub const REFERENCE_SPEED: f64 = 100.0;
/// Weight of a new sample in the average (sampled once a second).
const ALPHA: f64 = 0.5;

/// `procs_running` from `/proc/stat` text.
pub fn procs_running(stat: &str) -> Option<u32> {
    stat.lines()
        .find_map(|l| l.strip_prefix("procs_running "))
        .and_then(|v| v.trim().parse().ok())
}

/// Number of CPUs in `/proc/stat` (`cpuN` lines), at least 1.
pub fn cpus(stat: &str) -> u32 {
    let n = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    (n as u32).max(1)
}

/// (available, total) bytes from `/proc/meminfo` text.
pub fn memory(meminfo: &str) -> (u64, u64) {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
    };
    let total = field("MemTotal").unwrap_or(0);
    let free = field("MemAvailable")
        .or_else(|| field("MemFree"))
        .unwrap_or(0);
    (free, total)
}

/// The smoothed run queue and what it yields.
#[derive(Debug, Clone, Default)]
pub struct Sampler {
    avg: Option<f64>,
}

impl Sampler {
    /// Takes one sample of `/proc/stat` and `/proc/meminfo` texts; returns the load vector.
    pub fn sample(&mut self, stat: &str, meminfo: &str, speed: f64) -> Load {
        let runnable = f64::from(procs_running(stat).unwrap_or(1).saturating_sub(1));
        let per_cpu = runnable / f64::from(cpus(stat));
        let avg = match self.avg {
            None => per_cpu,
            Some(a) => a + ALPHA * (per_cpu - a),
        };
        self.avg = Some(avg);
        let (mem_free, mem_total) = memory(meminfo);
        let load = if speed > 0.0 {
            avg * REFERENCE_SPEED / speed
        } else {
            avg
        };
        Load {
            load,
            speed,
            mem_free,
            mem_total,
            jobs: 0,
            guest_jobs: 0,
        }
    }

    /// Reads the real `/proc` files.
    pub fn sample_proc(&mut self, speed: f64) -> Load {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        self.sample(&stat, &meminfo, speed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str =
        "cpu  1 2 3\ncpu0 1 2 3\ncpu1 1 2 3\nintr 5\nprocs_running 3\nprocs_blocked 0\n";
    const MEM: &str =
        "MemTotal:        2028144 kB\nMemFree:         1000000 kB\nMemAvailable:    1500000 kB\n";

    #[test]
    fn parses_proc_files() {
        assert_eq!(procs_running(STAT), Some(3));
        assert_eq!(cpus(STAT), 2);
        assert_eq!(cpus(""), 1);
        assert_eq!(memory(MEM), (1_500_000 * 1024, 2_028_144 * 1024));
        assert_eq!(memory("MemTotal: 10 kB\nMemFree: 4 kB\n"), (4096, 10240));
        assert_eq!(memory("garbage"), (0, 0));
    }

    #[test]
    fn load_is_smoothed_and_normalised_by_speed() {
        let mut s = Sampler::default();
        // 3 running minus the sampler = 2, on 2 CPUs = 1 per CPU; speed 200 = twice the reference.
        let l = s.sample(STAT, MEM, 200.0);
        assert_eq!(l.load, 0.5);
        assert_eq!((l.speed, l.jobs, l.guest_jobs), (200.0, 0, 0));
        let idle = STAT.replace("procs_running 3", "procs_running 1");
        assert_eq!(s.sample(&idle, MEM, 200.0).load, 0.25);
        assert_eq!(s.sample(&idle, MEM, 200.0).load, 0.125);
        assert_eq!(Sampler::default().sample("", "", 0.0).load, 0.0);
    }
}
