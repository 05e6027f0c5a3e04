//! The local load vector: run-queue load normalised by speed, free and total memory, jobs.
//!
//! Run-queue load: the number of runnable processes (`procs_running` in `/proc/stat`, minus the
//! sampling process itself) per CPU, smoothed over about 2 s (an exponential average sampled each
//! second, as MOSIX did, rather than the kernel's 1-minute loadavg which lags), then divided by
//! `speed / REFERENCE_SPEED`: a node of speed 100 with one busy process per CPU has load 1.0, a
//! twice as fast node with the same queue 0.5. Memory from `/proc/meminfo` (`MemAvailable`, else
//! `MemFree`). Usable CPUs: the online CPUs (`/proc/stat`) the agent may run on
//! (`Cpus_allowed_list` in `/proc/self/status`), capped by a cgroup v2 quota (`cpu.max`) if any:
//! what a job started here can really use, which is what the balancer divides load by.

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

/// Number of CPUs in a kernel CPU list (`0-3,5,7-8`); `None` when it does not parse.
pub fn cpu_list_len(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.trim().parse::<u32>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// CPUs a cgroup v2 `cpu.max` text (`QUOTA PERIOD` or `max PERIOD`) allows, rounded up.
pub fn cgroup_cpus(cpu_max: &str) -> Option<u32> {
    let mut f = cpu_max.split_whitespace();
    let quota: f64 = f.next()?.parse().ok()?;
    let period: f64 = f.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| (quota / period).ceil().max(1.0) as u32)
}

/// Usable CPUs from the texts of `/proc/stat`, `/proc/self/status` and the cgroup's `cpu.max`
/// (empty when missing): online CPUs, fewer if the affinity mask or a quota says so; at least 1.
pub fn usable_cpus(stat: &str, status: &str, cpu_max: &str) -> u32 {
    let online = cpus(stat);
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(cpu_list_len)
        .unwrap_or(online);
    let quota = cgroup_cpus(cpu_max).unwrap_or(u32::MAX);
    online.min(allowed).min(quota).max(1)
}

/// [`usable_cpus`] of this process, read from `/proc` and `/sys/fs/cgroup`.
pub fn usable_cpus_proc() -> u32 {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    // The process's own cgroup (v2: one `0::/path` line).
    let cg = read("/proc/self/cgroup");
    let path = cg
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim();
    let cpu_max = read(&format!(
        "/sys/fs/cgroup{}/cpu.max",
        path.trim_end_matches('/')
    ));
    usable_cpus(&read("/proc/stat"), &read("/proc/self/status"), &cpu_max)
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
    /// Usable CPUs (0: use the online count of each sample).
    pub cpus: u32,
}

impl Sampler {
    /// A sampler for a node with `cpus` usable CPUs.
    pub fn new(cpus: u32) -> Self {
        Sampler { avg: None, cpus }
    }

    /// Takes one sample of `/proc/stat` and `/proc/meminfo` texts; returns the load vector.
    pub fn sample(&mut self, stat: &str, meminfo: &str, speed: f64) -> Load {
        let runnable = f64::from(procs_running(stat).unwrap_or(1).saturating_sub(1));
        let cpus = if self.cpus > 0 { self.cpus } else { cpus(stat) };
        let per_cpu = runnable / f64::from(cpus);
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
            cpus,
            ..Load::default()
        }
    }

    /// Reads the real `/proc` files (usable CPUs once, at the first sample).
    pub fn sample_proc(&mut self, speed: f64) -> Load {
        if self.cpus == 0 {
            self.cpus = usable_cpus_proc();
        }
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
        assert_eq!(l.cpus, 2);
        // Only one of the two CPUs usable: the same queue is twice the load.
        let l = Sampler::new(1).sample(STAT, MEM, 200.0);
        assert_eq!((l.load, l.cpus), (1.0, 1));
    }

    #[test]
    fn usable_cpus_from_affinity_and_quota() {
        let stat4 = "cpu  1\ncpu0 1\ncpu1 1\ncpu2 1\ncpu3 1\n";
        let table = [
            // (Cpus_allowed_list, cpu.max, usable)
            ("", "", 4),
            ("Cpus_allowed_list:\t0-3\n", "", 4),
            ("Cpus_allowed_list:\t0,2\n", "", 2),
            ("Cpus_allowed_list:\t0-1,3\n", "max 100000\n", 3),
            ("Cpus_allowed_list:\t0-3\n", "150000 100000\n", 2),
            ("Cpus_allowed_list:\t0-3\n", "50000 100000\n", 1),
            ("Cpus_allowed_list:\tgarbage\n", "garbage", 4),
            // A mask wider than the online CPUs (offline ones listed) counts the online ones.
            ("Cpus_allowed_list:\t0-63\n", "", 4),
        ];
        for (status, cpu_max, want) in table {
            assert_eq!(
                usable_cpus(stat4, status, cpu_max),
                want,
                "{status:?} {cpu_max:?}"
            );
        }
        assert_eq!(cpu_list_len("0-3,5,7-8"), Some(7));
        assert_eq!(cpu_list_len("3-1"), None);
        assert_eq!(cpu_list_len(""), None);
        assert_eq!(usable_cpus("", "", ""), 1);
    }
}
