//! `make soak` (issue 7, outside CI): a 3-node QEMU cluster with jobs arriving continuously and
//! a node killed and restarted every few minutes. At the end every job has either finished with
//! the right output or been reported `lost` with a reason; a job that is neither (gone from the
//! API, stuck, wrong output, bad exit) fails the run. Prints a summary; exits 1 on any failure.
//!
//! Jobs are CPU-bound awk loops with a known output (computed with the host's busybox, the same
//! program the nodes run), all submitted to node 1 and left to the balancer; nodes 2 and 3 are
//! killed in turn. Node 1 is the submit node (the seed's "mosix4"): it holds every job's record,
//! so a job that had moved to a killed node must show up there as `lost`. Jobs whose home node
//! dies have nobody left to report them, which is why the submit node is never killed.
//!
//! Environment: `SOAK_MINUTES` (default 30) of arrivals, `SOAK_ARRIVAL_SECS` (default 6) between
//! jobs, `SOAK_KILL_SECS` (default 180, at most a third of the run) between kills,
//! `SOAK_DRAIN_MINUTES` (default 15) for the last jobs to end, `SOAK_CHECKPOINT_SECS` (default
//! 20; 0: none): every third job is started with `--checkpoint-every` that many seconds, so a
//! kill also exercises the restart from a checkpoint kept on another node. `DROVE_BIN` as for
//! the VM tests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drove::jobs_client::Agent;
use drove::status::State;
use drove_qemu_tests::cluster::{all_in_state, cluster_config};
use drove_qemu_tests::{drove_bin, workspace_root, Cluster, ClusterImage, Error};
use serde_json::Value;

const NODES: u32 = 3;
/// Loop lengths: about 5-25 s each on one TCG vCPU, so a few run at once on every node.
const LOOPS: [u64; 4] = [1_000_000, 2_000_000, 3_000_000, 5_000_000];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn program(n: u64, seq: usize) -> String {
    format!("BEGIN {{for(i=0;i<{n};i++) s+=i; print s, \"job{seq}\"}}")
}

/// What the nodes' busybox awk prints for `prog` (the host's busybox is the same program).
fn expected(prog: &str) -> Result<Vec<u8>, String> {
    let out = std::process::Command::new("/bin/busybox")
        .args(["awk", prog])
        .output()
        .map_err(|e| format!("cannot run /bin/busybox awk: {e}"))?;
    if !out.status.success() {
        return Err(format!("/bin/busybox awk {prog:?} failed: {out:?}"));
    }
    Ok(out.stdout)
}

#[derive(Debug)]
struct Sub {
    expected: Vec<u8>,
    submitted: Instant,
    /// The last record seen (through node 1, which forwards to where the job runs).
    last: Option<Value>,
    /// Why it could not be read the last time.
    last_error: Option<String>,
    nodes_seen: Vec<u64>,
    /// Started with `--checkpoint-every`.
    checkpointed: bool,
    /// Stdout read as soon as the job was seen `exited` (as `drove run` reads it, live): the
    /// node that ran it may die later and take the file with it.
    output: Option<Result<Vec<u8>, String>>,
}

#[derive(Debug, Default)]
struct Tally {
    correct: Vec<String>,
    lost: Vec<(String, String)>,
    failed: Vec<(String, String)>,
}

fn agent(cluster: &Cluster, n: u32, key: &str) -> Result<Agent, Error> {
    Ok(Agent::new(
        &cluster.api(n)?.to_string(),
        Some(key.to_owned()),
    ))
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: error: {e}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<bool, Error> {
    let minutes = env_u64("SOAK_MINUTES", 30);
    let arrival = Duration::from_secs(env_u64("SOAK_ARRIVAL_SECS", 6).max(1));
    let kill_every = Duration::from_secs(env_u64("SOAK_KILL_SECS", 180).min(minutes * 20).max(30));
    let drain = Duration::from_secs(env_u64("SOAK_DRAIN_MINUTES", 15) * 60);
    let run_for = Duration::from_secs(minutes * 60);
    let checkpoint_every = env_u64("SOAK_CHECKPOINT_SECS", 20);

    let dir = workspace_root().join("target/soak");
    let image = ClusterImage::build(&drove_bin()?, &dir, &cluster_config(NODES, NODES))?;
    let key = image.key_hex()?;
    let mut cluster = Cluster::start_named("soak", NODES, &image)?;
    for n in 1..=NODES {
        cluster.wait_until(n, Duration::from_secs(180), "all nodes up", |t| {
            all_in_state(t, &[1, 2, 3], State::Up)
        })?;
    }
    eprintln!(
        "soak: {NODES} nodes up; {minutes} min of arrivals every {arrival:?}, a kill every {kill_every:?}"
    );
    let submit = agent(&cluster, 1, &key)?;

    let mut subs: BTreeMap<String, Sub> = BTreeMap::new();
    let mut submit_errors = Vec::new();
    let mut kills: Vec<(u32, f64, f64)> = Vec::new();
    let t0 = Instant::now();
    let mut next_arrival = t0;
    let mut next_kill = t0 + kill_every;
    let mut victim = 2;
    let mut seq = 0usize;
    let mut last_report = t0;

    while t0.elapsed() < run_for {
        let now = Instant::now();
        if now >= next_arrival {
            next_arrival += arrival;
            seq += 1;
            let n = LOOPS[seq % LOOPS.len()];
            let prog = program(n, seq);
            let expected = expected(&prog).map_err(|what| Error::Cluster { what })?;
            let checkpointed = checkpoint_every > 0 && seq.is_multiple_of(3);
            let cmd = ["/bin/busybox".into(), "awk".into(), prog];
            match submit.launch_checkpointed(
                &cmd,
                false,
                None,
                &[],
                checkpointed.then_some(checkpoint_every),
            ) {
                Ok(job) => {
                    let id = job["id"].as_str().unwrap_or_default().to_owned();
                    subs.insert(
                        id,
                        Sub {
                            expected,
                            submitted: now,
                            last: Some(job),
                            last_error: None,
                            nodes_seen: vec![1],
                            checkpointed,
                            output: None,
                        },
                    );
                }
                // A refused submission is not a lost job (the caller was told); count it.
                Err(e) => submit_errors.push(format!("job{seq}: {e}")),
            }
        }
        if now >= next_kill {
            next_kill += kill_every;
            let at = cluster.kill(victim)?;
            // Wait until node 1 sees it down (its lost-job reporting runs on that), then boot it.
            let (_, down) =
                cluster.wait_until(1, Duration::from_secs(60), "killed node down", |t| {
                    all_in_state(t, &[victim], State::Down)
                })?;
            cluster.restart(victim)?;
            cluster.wait_until(1, Duration::from_secs(120), "restarted node up", |t| {
                all_in_state(t, &[1, 2, 3], State::Up)
            })?;
            let back = at.elapsed().as_secs_f64();
            eprintln!(
                "soak: node {victim} killed at {:.0}s, down on node 1 after {:.1}s, up again after {back:.1}s",
                (at - t0).as_secs_f64(),
                down.as_secs_f64()
            );
            kills.push((victim, down.as_secs_f64(), back));
            victim = if victim == 2 { 3 } else { 2 };
        }
        poll(&submit, &mut subs);
        if last_report.elapsed() > Duration::from_secs(60) {
            last_report = Instant::now();
            eprintln!(
                "soak: {:.0}s: {}",
                t0.elapsed().as_secs_f64(),
                census(&subs)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    eprintln!("soak: arrivals stopped after {seq} submissions; draining (at most {drain:?})");
    let drain_start = Instant::now();
    loop {
        poll(&submit, &mut subs);
        let open = subs.values().filter(|s| !is_final(s)).count();
        if open == 0 || drain_start.elapsed() > drain {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(60) {
            last_report = Instant::now();
            eprintln!("soak: draining: {}", census(&subs));
        }
        std::thread::sleep(Duration::from_secs(2));
    }

    let tally = judge(&subs);
    // What the cluster says now about the jobs that finished: a node that died after a job
    // exited on it must not turn a finished job into a lost one.
    let mut relabelled = Vec::new();
    for (id, s) in &subs {
        if s.last.as_ref().is_some_and(|j| j["state"] == "exited") {
            if let Ok(now) = submit.job(id) {
                if now["state"] != "exited" {
                    relabelled.push(format!(
                        "{id} finished (exit {}), now {}: {}",
                        s.last
                            .as_ref()
                            .map_or(Value::Null, |j| j["exit_code"].clone()),
                        now["state"],
                        now["reason"].as_str().unwrap_or("no reason")
                    ));
                }
            }
        }
    }
    let migrations: u64 = subs
        .values()
        .filter_map(|s| s.last.as_ref()?["migrations"].as_u64())
        .sum();
    let moved_jobs = subs.values().filter(|s| s.nodes_seen.len() > 1).count();
    println!("## Soak\n");
    println!(
        "{minutes} min of arrivals (one job every {}s), {NODES} nodes, a node killed every {}s; total {:.1} min",
        arrival.as_secs(),
        kill_every.as_secs(),
        t0.elapsed().as_secs_f64() / 60.0
    );
    println!();
    println!("| what | count |");
    println!("|---|---|");
    println!("| jobs submitted | {} |", subs.len());
    println!("| submissions refused | {} |", submit_errors.len());
    println!(
        "| finished with the right output | {} |",
        tally.correct.len()
    );
    println!("| reported lost with a reason | {} |", tally.lost.len());
    println!(
        "| failed (vanished, stuck, wrong output) | {} |",
        tally.failed.len()
    );
    println!("| jobs that ran on more than one node | {moved_jobs} |");
    println!("| migrations (sum over jobs) | {migrations} |");
    let checkpointed: Vec<&String> = subs
        .iter()
        .filter(|(_, s)| s.checkpointed)
        .map(|(id, _)| id)
        .collect();
    println!(
        "| checkpointed jobs (every {checkpoint_every}s): submitted / finished right / lost | {} / {} / {} |",
        checkpointed.len(),
        checkpointed.iter().filter(|id| tally.correct.contains(id)).count(),
        checkpointed
            .iter()
            .filter(|id| tally.lost.iter().any(|(l, _)| l == **id))
            .count()
    );
    println!("| node kills | {} |", kills.len());
    println!(
        "| finished jobs the cluster later calls something else | {} |",
        relabelled.len()
    );
    println!();
    for (n, down, back) in &kills {
        println!("- node {n} killed: down on node 1 after {down:.1}s, up again after {back:.1}s");
    }
    for (id, reason) in &tally.lost {
        println!("- lost {id}: {reason}");
    }
    for r in &relabelled {
        println!("- relabelled: {r}");
    }
    for e in &submit_errors {
        println!("- refused: {e}");
    }
    for (id, why) in &tally.failed {
        println!("- FAILED {id}: {why}");
    }
    let ok = tally.failed.is_empty() && tally.correct.len() + tally.lost.len() == subs.len();
    println!("\nsoak: {}", if ok { "PASS" } else { "FAIL" });
    if !ok {
        eprintln!("{}", cluster.console_lines_with("jobs:"));
    }
    Ok(ok)
}

fn is_final(s: &Sub) -> bool {
    s.last
        .as_ref()
        .and_then(|j| j["state"].as_str())
        .is_some_and(|st| st == "exited" || st == "lost")
}

fn poll(submit: &Agent, subs: &mut BTreeMap<String, Sub>) {
    for (id, s) in subs.iter_mut() {
        if is_final(s) {
            continue;
        }
        match submit.job(id) {
            Ok(job) => {
                if let Some(n) = job["node"].as_u64() {
                    if !s.nodes_seen.contains(&n) {
                        s.nodes_seen.push(n);
                    }
                }
                s.last_error = None;
                if job["state"] == "exited" {
                    match submit.output(id, "stdout", 0) {
                        Ok(out) => s.output = Some(Ok(out)),
                        // Not final until its output is read (or the cluster calls it lost).
                        Err(e) => {
                            s.last_error = Some(format!("output: {e}"));
                            continue;
                        }
                    }
                }
                s.last = Some(job);
            }
            // Mid-migration, or forwarded to a node that just died: read again next round.
            Err(e) => s.last_error = Some(e.to_string()),
        }
    }
}

fn census(subs: &BTreeMap<String, Sub>) -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for s in subs.values() {
        let st = s
            .last
            .as_ref()
            .and_then(|j| j["state"].as_str())
            .unwrap_or("unknown");
        *by.entry(st.to_owned()).or_default() += 1;
    }
    format!("{} jobs {by:?}", subs.len())
}

fn judge(subs: &BTreeMap<String, Sub>) -> Tally {
    let mut t = Tally::default();
    for (id, s) in subs {
        let Some(job) = &s.last else {
            t.failed.push((id.clone(), "never seen".into()));
            continue;
        };
        let state = job["state"].as_str().unwrap_or("");
        match state {
            "exited" => match s.output.clone().unwrap_or_else(|| Err("never read".into())) {
                Ok(out) if out == s.expected && job["exit_code"].as_i64() == Some(0) => {
                    t.correct.push(id.clone())
                }
                Ok(out) => t.failed.push((
                    id.clone(),
                    format!(
                        "exit {} and output {:?}, expected {:?}",
                        job["exit_code"],
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(&s.expected)
                    ),
                )),
                Err(e) => t
                    .failed
                    .push((id.clone(), format!("exited, but output unreadable: {e}"))),
            },
            "lost" => match job["reason"].as_str().filter(|r| !r.trim().is_empty()) {
                Some(r) => t.lost.push((id.clone(), r.to_owned())),
                None => t
                    .failed
                    .push((id.clone(), format!("lost without a reason: {job}"))),
            },
            other => t.failed.push((
                id.clone(),
                format!(
                    "still {other:?} {:.0}s after submission (nodes {:?}); last error: {}",
                    s.submitted.elapsed().as_secs_f64(),
                    s.nodes_seen,
                    s.last_error.as_deref().unwrap_or("none")
                ),
            )),
        }
    }
    t
}
