//! Job control and node death (issue 4), on one 2-node cluster, in three phases:
//!
//! 1. `freeze`: a ticking job stops writing (`frozen` in the API), a migration of it is refused
//!    with the reason, `continue` makes it tick again.
//! 2. `drove migrate` to node 2 while node 2 is locked (`drove lock`) is refused with the
//!    reason; unlocked, it goes. Ctrl-C on the real `drove run` (SIGINT to the client) after
//!    its job moved to node 2: the client exits 130 and the job was killed on node 2.
//! 3. Node 2 dies (its VM killed) while running two jobs that came from node 1, both followed
//!    by `drove run`: the plain one is reported lost (`drove run` exits 69 naming node 2); the
//!    one started with `--checkpoint-every 3` restarts on node 1 from the checkpoint node 1
//!    held and finishes with exactly the output of an undisturbed run. So does one started
//!    with `--checkpoint-every 600`, which node 2 never checkpointed: node 1 kept the images
//!    of its move to node 2 as its checkpoint (the window after a move). A fourth job moved to
//!    node 2 and ended there before the kill: node 2 told node 1, so it stays `exited` with its
//!    whole output on node 1 after node 2 is gone (it used to turn `lost`, with no output).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drove::jobs_client::{ps_table, Agent};
use drove::status::State;
use drove_qemu_tests::cluster::{all_in_state, test_images};
use drove_qemu_tests::{drove_bin, Cluster, Error};

/// Ticks until the file `GO` exists (output depends on timing; for freeze and kill).
const TICKER: &str = r#"BEGIN { while ((getline l < GO) < 0) { for (k = 0; k < 30000; k++) s += k; print "tick", ++n; fflush() } print "done" }"#;

/// Deterministic: lines 1..100, waiting for the file `GO` after line 50.
const COUNTER: &str = r#"BEGIN {
  for (i = 1; i <= 100; i++) {
    for (k = 0; k < 20000; k++) s += k
    print "line", i; fflush()
    if (i == 50) while ((getline l < GO) < 0) for (k = 0; k < 20000; k++) t += k
  }
  print "sum", s
}"#;

fn awk(program: &str, go: &str) -> Vec<String> {
    ["/bin/busybox", "awk", "-v", &format!("GO={go}"), program]
        .map(str::to_owned)
        .to_vec()
}

fn stdout_len(agent: &Agent, id: &str) -> usize {
    agent.output(id, "stdout", 0).map_or(0, |b| b.len())
}

fn wait_output(cluster: &Cluster, agent: &Agent, id: &str, needle: &str) {
    let t0 = Instant::now();
    loop {
        let out = agent.output(id, "stdout", 0).unwrap_or_default();
        if String::from_utf8_lossy(&out).contains(needle) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "job {id}: no {needle:?} after 180 s: {:?}\n{}",
            String::from_utf8_lossy(&out),
            cluster.console_lines_with("jobs:")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Migrates, retrying while a checkpoint holds the job (it is `migrating` for the dump).
fn migrate(cluster: &Cluster, agent: &Agent, id: &str, to: &str) -> serde_json::Value {
    for _ in 0..20 {
        let rec = agent.migrate(id, to).unwrap();
        if rec["outcome"] == "moved" {
            return rec;
        }
        let busy = rec["error"].as_str().unwrap_or("").contains("Migrating");
        assert!(busy, "{rec}\n{}", cluster.console_lines_with("jobs:"));
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("job {id} never free to migrate");
}

fn run_job(agent: &Agent, cmd: &[&str]) {
    let cmd: Vec<String> = cmd.iter().map(|s| (*s).to_owned()).collect();
    let id = agent.launch(&cmd).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = agent
        .follow(
            &id,
            &mut Vec::new(),
            &mut Vec::new(),
            Duration::from_millis(200),
        )
        .unwrap();
    assert_eq!(done["exit_code"].as_i64(), Some(0), "{cmd:?}: {done}");
}

/// `drove run` as a user runs it, its stdout and stderr piped; returns the child and the job
/// id from its `drove: job X started` line.
fn drove_run(
    api: &str,
    key_file: &std::path::Path,
    args: &[&str],
    cmd: &[String],
) -> (Child, String) {
    let mut child = Command::new(drove_bin().unwrap())
        .args(["run", "--node", api, "--key"])
        .arg(key_file)
        .args(args)
        .arg("--")
        .args(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    err.read_line(&mut first).unwrap();
    let id = first
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("drove run said {first:?}"))
        .to_owned();
    child.stderr = None;
    // Keep reading stderr in the background so it never blocks; hand it back at the end.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        let _ = tx.send(rest);
    });
    STDERR.with(|m| m.borrow_mut().push((id.clone(), rx)));
    (child, id)
}

thread_local! {
    static STDERR: std::cell::RefCell<Vec<(String, std::sync::mpsc::Receiver<String>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Waits for `drove run` to exit (bounded); its exit code, stdout and stderr.
fn finish(mut child: Child, id: &str, timeout: Duration) -> (Option<i32>, String, String) {
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            panic!("drove run for job {id} still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let err = STDERR.with(|m| {
        let mut m = m.borrow_mut();
        let i = m.iter().position(|(j, _)| j == id).unwrap();
        m.remove(i)
            .1
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default()
    });
    (status.code(), out, err)
}

#[test]
fn freeze_interrupt_lost_and_checkpoint_restart() -> Result<(), Error> {
    let expected = String::from_utf8(
        Command::new("/bin/busybox")
            .args(&awk(COUNTER, "/dev/null")[1..])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let images = test_images()?;
    let mut cluster = Cluster::start_named("nodes", 2, &images.main)?;
    cluster.wait_until(1, Duration::from_secs(60), "nodes 1 and 2 up", |t| {
        all_in_state(t, &[1, 2], State::Up)
    })?;
    let key = images.main.key_hex()?;
    let api1 = cluster.api(1)?.to_string();
    let node1 = Agent::new(&api1, Some(key.clone()));

    // --- 1. freeze / continue. ---
    let job = node1
        .launch_pinned(&awk(TICKER, "/run/never"), true)
        .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    wait_output(&cluster, &node1, &id, "tick 2");
    let frozen = node1.freeze(&id).unwrap();
    assert_eq!(frozen["state"], "frozen", "{frozen}");
    assert_eq!(node1.job(&id).unwrap()["state"], "frozen");
    let len = stdout_len(&node1, &id);
    // Several reads over 4 s: a job that ticks every few hundred ms would have grown.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(stdout_len(&node1, &id), len, "job {id} wrote while frozen");
    }
    let refused = node1.migrate(&id, "2").unwrap();
    assert_eq!(refused["outcome"], "resumed", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or("")
            .contains("is frozen: `drove continue"),
        "{refused}"
    );
    assert_eq!(node1.job(&id).unwrap()["state"], "frozen");
    let thawed = node1.resume(&id).unwrap();
    assert_eq!(thawed["state"], "running", "{thawed}");
    let t0 = Instant::now();
    while stdout_len(&node1, &id) <= len {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no tick after continue"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    node1.kill(&id).unwrap();

    // --- 2. Ctrl-C on drove run kills the job on the node it moved to. ---
    let (child, id) = drove_run(
        &api1,
        &images.main.key_file,
        &["--pin"],
        &awk(TICKER, "/run/never"),
    );
    wait_output(&cluster, &node1, &id, "tick 2");
    let api2 = cluster.api(2)?.to_string();
    let node2 = Agent::new(&api2, Some(key.clone()));
    let lock = |path: &str, locked: bool| {
        node2.ok("POST", path, None).unwrap();
        cluster.wait_until(
            1,
            Duration::from_secs(60),
            "node 2's lock seen by node 1",
            |t| t.node(2).is_some_and(|n| n.refuses_guests == locked),
        )
    };
    lock("/api/node/lock", true)?;
    let refused = node1.migrate(&id, "2").unwrap();
    assert_eq!(refused["outcome"], "resumed", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or("")
            .contains("node 2 refuses guest jobs (locked with `drove lock`"),
        "{refused}"
    );
    assert_eq!(node1.job(&id).unwrap()["state"], "running");
    lock("/api/node/unlock", false)?;
    migrate(&cluster, &node1, &id, "2");
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (code, _, err) = finish(child, &id, Duration::from_secs(60));
    assert_eq!(code, Some(130), "drove run after Ctrl-C: {err}");
    assert!(err.contains(&format!("job {id} killed")), "{err}");
    // The kill is sent; the reaper on node 2 records the end a moment later.
    let t0 = Instant::now();
    let mut done = node1.job(&id).unwrap();
    while done["state"] != "exited" && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        done = node1.job(&id).unwrap();
    }
    assert_eq!(
        (
            done["state"].as_str(),
            done["node"].as_u64(),
            done["signal"].as_str()
        ),
        (Some("exited"), Some(2), Some("SIGKILL")),
        "{done}"
    );

    // --- 3. Node 2 dies under two jobs. ---
    let go = "/run/go-counter";
    let (plain, plain_id) = drove_run(
        &api1,
        &images.main.key_file,
        &["--pin"],
        &awk(TICKER, "/run/never"),
    );
    let (ckpt, ckpt_id) = drove_run(
        &api1,
        &images.main.key_file,
        &["--pin", "--checkpoint-every", "3"],
        &awk(COUNTER, go),
    );
    let (window, window_id) = drove_run(
        &api1,
        &images.main.key_file,
        &["--pin", "--checkpoint-every", "600"],
        &awk(COUNTER, go),
    );
    let done_id = node1
        .launch_pinned(&awk(COUNTER, "/run/go-done"), true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_output(&cluster, &node1, &done_id, "line 50");
    migrate(&cluster, &node1, &done_id, "2");
    // It ends on node 2; node 1's record learns it (not only by forwarding to node 2).
    run_job(&node2, &["/bin/busybox", "touch", "/run/go-done"]);
    let t0 = Instant::now();
    loop {
        let jobs = node1.jobs().unwrap();
        let rec = jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == done_id.as_str())
            .cloned()
            .unwrap();
        if rec["state"] == "exited" {
            assert_eq!(
                (rec["node"].as_u64(), rec["exit_code"].as_i64()),
                (Some(2), Some(0)),
                "{rec}"
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "node 1 still has {rec} for job {done_id}\n{}",
            cluster.console_lines_with("jobs:")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_output(&cluster, &node1, &ckpt_id, "line 50");
    wait_output(&cluster, &node1, &plain_id, "tick 1");
    migrate(&cluster, &node1, &plain_id, "2");
    migrate(&cluster, &node1, &ckpt_id, "2");
    wait_output(&cluster, &node1, &window_id, "line 50");
    migrate(&cluster, &node1, &window_id, "2");
    let vm1 = &cluster.node(1)?.vm;
    vm1.wait_for_line(
        format!("jobs: holding the images of job {window_id}'s move to node 2 as its checkpoint"),
        Duration::from_secs(120),
    )?;
    vm1.wait_for_line(
        format!("jobs: holding the checkpoint of job {ckpt_id} from node 2"),
        Duration::from_secs(120),
    )?;
    cluster.kill(2)?;
    let vm1 = &cluster.node(1)?.vm;
    for id in [&ckpt_id, &window_id] {
        vm1.wait_for_line(
            format!("jobs: job {id} restarted here from its checkpoint"),
            Duration::from_secs(120),
        )?;
    }
    let (code, _, err) = finish(plain, &plain_id, Duration::from_secs(120));
    eprintln!("drove run of the plain job: {code:?}: {err}");
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains(&format!(
            "job {plain_id} lost: node 2 went down (no heartbeat for"
        )) && err.contains(&format!("while running job {plain_id}")),
        "{err}"
    );
    let lost = node1.job(&plain_id).unwrap();
    assert_eq!(lost["state"], "lost", "{lost}");
    // The job that ended on node 2 before it died: still exited, its whole output on node 1.
    let done = node1.job(&done_id).unwrap();
    assert_eq!(
        (done["state"].as_str(), done["exit_code"].as_i64()),
        (Some("exited"), Some(0)),
        "{done}"
    );
    let out = node1.output(&done_id, "stdout", 0).unwrap();
    assert_eq!(String::from_utf8_lossy(&out), expected, "job {done_id}");
    run_job(&node1, &["/bin/busybox", "touch", go]);
    for (child, id) in [(ckpt, &ckpt_id), (window, &window_id)] {
        let (code, out, err) = finish(child, id, Duration::from_secs(300));
        eprintln!("{}", ps_table(&node1.jobs().unwrap()));
        eprintln!("{}", cluster.console_lines_with("jobs:"));
        assert_eq!(code, Some(0), "job {id}: {err}");
        assert_eq!(
            out, expected,
            "output of job {id}, restarted from its checkpoint"
        );
        let job = node1.job(id).unwrap();
        assert_eq!(job["node"].as_u64(), Some(1), "{job}");
        assert!(
            job["reason"]
                .as_str()
                .unwrap_or("")
                .contains("from its checkpoint"),
            "{job}"
        );
    }
    Ok(())
}
