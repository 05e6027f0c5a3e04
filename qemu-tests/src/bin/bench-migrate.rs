//! Migration benchmark (issue 4): freeze time and total time of moving a job holding 1, 64 and
//! 256 MiB between the two nodes of a QEMU cluster, with a plain CRIU dump and with pre-copy
//! (`criu pre-dump --track-mem` rounds while the job runs, then a final dump of what changed),
//! and the migration throughput against the raw TCP throughput measured between the same two
//! VMs (`drove-agent tcp-send` to `drove-agent tcp-sink`, run as jobs). Each run moves the job
//! node 1 → node 2 plain, then node 2 → node 1 pre-copied; medians of the runs. Prints a
//! markdown section for docs/benchmarks.md on stdout (progress on stderr).
//!
//! Usage: `bench-migrate [--runs N]` (default 3, or `$RUNS`).

use std::time::{Duration, Instant};

use drove::jobs_client::Agent;
use drove::status::State;
use drove_qemu_tests::bench::{median, runs_from_args};
use drove_qemu_tests::cluster::{all_in_state, test_images};
use drove_qemu_tests::Cluster;

/// The job of `migrate_faults.rs`: N distinct 4 KiB strings (so N / 256 MiB), then it spins
/// until the file GO exists (never, here: the benchmark kills it).
const MEM_PROGRAM: &str = r#"BEGIN {
  x = 1; b = ""
  for (k = 0; k < 4088; k++) { x = (x * 75 + 74) % 65537; b = b sprintf("%c", 33 + x % 90) }
  for (i = 0; i < N; i++) { r = i % 4088; a[i] = sprintf("%07d ", i) substr(b, r + 1) substr(b, 1, r) }
  print "filled", N; fflush()
  while ((getline line < GO) < 0) for (k = 0; k < 20000; k++) s += k
}"#;

const SIZES_MIB: [u32; 3] = [1, 64, 256];
/// RAM per VM: a 256 MiB job (about 300 MiB resident in awk) plus its images in /run (tmpfs)
/// on either side.
const MEMORY_MIB: u32 = 1536;
const LINK_MIB: u64 = 64;

type Res<T> = Result<T, String>;

fn main() {
    let runs = runs_from_args("bench-migrate");
    match run(runs) {
        Ok(md) => print!("{md}"),
        Err(e) => {
            eprintln!("bench-migrate: error: {e}");
            std::process::exit(1);
        }
    }
}

fn launch(agent: &Agent, cmd: &[&str]) -> Res<String> {
    let cmd: Vec<String> = cmd.iter().map(|s| (*s).to_owned()).collect();
    let j = agent
        .launch_pinned(&cmd, true)
        .map_err(|e| format!("launch {cmd:?}: {e}"))?;
    Ok(j["id"].as_str().unwrap_or_default().to_owned())
}

/// Waits for job `id` to end with exit code 0; returns its stdout.
fn finish(agent: &Agent, id: &str) -> Res<String> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let done = agent
        .follow(id, &mut out, &mut err, Duration::from_millis(200))
        .map_err(|e| e.to_string())?;
    if done["exit_code"].as_i64() != Some(0) {
        return Err(format!(
            "job {id} failed: {done}: {}",
            String::from_utf8_lossy(&err)
        ));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Raw TCP MiB/s from node 1 to node 2 (LINK_MIB MiB; the sender retries until the sink
/// listens).
fn link(node1: &Agent, node2: &Agent) -> Res<f64> {
    // Through sh: a job is pid 1 of its PID namespace, and the agent as pid 1 would boot a node.
    let sink = launch(
        node2,
        &["/bin/busybox", "sh", "-c", "/init tcp-sink 5001; exit $?"],
    )?;
    let send = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do /init tcp-send 10.10.0.2:5001 {LINK_MIB} && exit 0; sleep 1; done; exit 1"
    );
    let sender = launch(node1, &["/bin/busybox", "sh", "-c", &send])?;
    let out = finish(node1, &sender)?;
    let got = finish(node2, &sink)?;
    if !got.contains(&format!("received {} bytes", LINK_MIB << 20)) {
        return Err(format!("the sink got {got:?}"));
    }
    out.split_whitespace()
        .rev()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| format!("cannot read the throughput from {out:?}"))
}

struct Move {
    freeze_ms: f64,
    total_ms: f64,
    bytes: f64,
    rounds: f64,
}

fn migrate(agent: &Agent, id: &str, to: &str, precopy: bool) -> Res<Move> {
    let rec = agent
        .migrate_with(id, to, Some(precopy))
        .map_err(|e| e.to_string())?;
    eprintln!("bench-migrate: {rec}");
    if rec["outcome"] != "moved" {
        return Err(format!("job {id} to {to}: {rec}"));
    }
    let f = |k: &str| rec[k].as_f64().unwrap_or(f64::NAN);
    Ok(Move {
        freeze_ms: f("freeze_ms"),
        total_ms: f("total_ms"),
        bytes: f("bytes"),
        rounds: f("precopy_rounds"),
    })
}

fn run(runs: usize) -> Res<String> {
    let images = test_images().map_err(|e| e.to_string())?;
    let cluster = Cluster::start_sized("bench-migrate", 2, &images.main, MEMORY_MIB)
        .map_err(|e| e.to_string())?;
    cluster
        .wait_until(1, Duration::from_secs(90), "nodes 1 and 2 up", |t| {
            all_in_state(t, &[1, 2], State::Up)
        })
        .map_err(|e| e.to_string())?;
    let key = images.main.key_hex().map_err(|e| e.to_string())?;
    let node1 = Agent::new(
        &cluster.api(1).map_err(|e| e.to_string())?.to_string(),
        Some(key.clone()),
    );
    let node2 = Agent::new(
        &cluster.api(2).map_err(|e| e.to_string())?.to_string(),
        Some(key),
    );
    let mut links = Vec::new();
    for i in 0..runs {
        let l = link(&node1, &node2)?;
        eprintln!(
            "bench-migrate: raw TCP node 1 -> node 2, run {}: {l:.1} MiB/s",
            i + 1
        );
        links.push(l);
    }
    let link_mibs = median(links);
    let mut rows = Vec::new();
    for mib in SIZES_MIB {
        let n = (mib * 256).to_string();
        let id = launch(
            &node1,
            &[
                "/bin/busybox",
                "awk",
                "-v",
                &format!("N={n}"),
                "-v",
                "GO=/run/never",
                MEM_PROGRAM,
            ],
        )?;
        let t0 = Instant::now();
        loop {
            let out = node1.output(&id, "stdout", 0).unwrap_or_default();
            if String::from_utf8_lossy(&out).contains("filled") {
                break;
            }
            if t0.elapsed() > Duration::from_secs(900) {
                return Err(format!(
                    "the {mib} MiB job did not fill its memory in 900 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let (mut plain, mut pre) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            plain.push(migrate(&node1, &id, "2", false)?);
            pre.push(migrate(&node1, &id, "home", true)?);
        }
        let _ = node1.kill(&id);
        for (mode, moves) in [("no", plain), ("yes", pre)] {
            let med = |f: fn(&Move) -> f64| median(moves.iter().map(f).collect());
            let (freeze, total, bytes) =
                (med(|m| m.freeze_ms), med(|m| m.total_ms), med(|m| m.bytes));
            let mibs = bytes / 1048576.0 / (total / 1e3);
            rows.push(format!(
                "| {mib} MiB | {mode} | {freeze:.0} | {total:.0} | {:.1} | {:.0} | {mibs:.1} | {:.2} |",
                bytes / 1048576.0,
                med(|m| m.rounds),
                mibs / link_mibs
            ));
        }
    }
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut md = format!(
        "\n## Migration\n\n\
         `scripts/bench-migrate.sh` (`qemu-tests/src/bin/bench-migrate.rs`) on {date}: two QEMU nodes\n\
         (TCG, {MEMORY_MIB} MiB each, on the vde switch); a job holding N MiB of distinct 4 KiB strings\n\
         (busybox awk) moves node 1 → node 2 with a plain CRIU dump, then back with pre-copy\n\
         (`criu pre-dump --track-mem` rounds while it runs, then `dump --track-mem --prev-images-dir`);\n\
         medians of {runs} runs. Freeze: from the final dump's start until the job runs again. Total:\n\
         from the request to the target's commit. MiB/s: bytes sent (images, Noise-encrypted) over\n\
         total time. Raw TCP between the same two VMs (`drove-agent tcp-send 10.10.0.2:5001 {LINK_MIB}`\n\
         to `drove-agent tcp-sink 5001`, run as jobs): **{link_mibs:.1} MiB/s** (median of {runs}).\n\n\
         | job | pre-copy | freeze ms | total ms | MiB sent | rounds | MiB/s | ÷ raw TCP |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        md.push_str(&r);
        md.push('\n');
    }
    Ok(md)
}
