//! Placement at submission (issue 7's lever on imbalance; MOSIX's `mosrun -b`): `drove run
//! --best`, asked of node 1 of a 3-node cluster,
//!
//! 1. while the cluster is idle starts the job on node 1 itself (no peer is better);
//! 2. once node 1 holds 3 jobs (pinned sleeps) and nodes 2 and 3 none, starts it on node 2 or
//!    3 without a migration: the job's id names that node as its home, node 1 logs the
//!    placement, and the real `drove run` still streams the output through node 1 and exits 0.
//!
//! Images are built by the real `drove` as for the cluster test (`drove_qemu_tests::cluster`).

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use drove::jobs_client::Agent;
use drove::status::State;
use drove_qemu_tests::cluster::{all_in_state, test_images};
use drove_qemu_tests::{drove_bin, Cluster, Error};

/// A second or two of CPU under TCG, with a known output.
const PROGRAM: &str = "BEGIN {for(i=0;i<300000;i++) s+=i; print s}";

/// `drove run --best` through node 1's API: (exit code, stdout, stderr).
fn run_best(api: &str, key_file: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(drove_bin().unwrap())
        .args(["run", "--best", "--node", api, "--key"])
        .arg(key_file)
        .args(["--", "/bin/busybox", "awk", PROGRAM])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The node number in `drove run`'s `drove: job <id> started on node <n>` line.
fn started_on(stderr: &str) -> (String, u64) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("drove: job ") && l.contains(" started on node "))
        .unwrap_or_else(|| panic!("no start line from drove run: {stderr}"));
    let id = line.split_whitespace().nth(2).unwrap().to_owned();
    let node = line.rsplit(' ').next().unwrap().parse().unwrap();
    (id, node)
}

#[test]
fn best_starts_a_new_job_on_a_less_loaded_node_and_stays_home_when_idle() -> Result<(), Error> {
    let expected = String::from_utf8(
        Command::new("/bin/busybox")
            .args(["awk", PROGRAM])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let images = test_images()?;
    let cluster = Cluster::start_named("place", 3, &images.main)?;
    for n in 1..=3 {
        cluster.wait_until(n, Duration::from_secs(120), "nodes 1-3 up", |t| {
            all_in_state(t, &[1, 2, 3], State::Up)
        })?;
    }
    let api1 = cluster.api(1)?.to_string();
    let node1 = Agent::new(&api1, Some(images.main.key_hex()?));
    let key_file = &images.main.key_file;

    // 1. Idle cluster: a peer with no job is not better than an idle node 1 by the rule.
    let (code, out, err) = run_best(&api1, key_file);
    assert_eq!((code, out.as_str()), (0, expected.as_str()), "{err}");
    let (id, node) = started_on(&err);
    assert_eq!(
        node, 1,
        "idle cluster: job {id} placed away from node 1: {err}"
    );

    // 2. Node 1 busy: 3 pinned jobs there (pinned: the balancer leaves them alone).
    for _ in 0..3 {
        let job = node1
            .launch_pinned(&["/bin/busybox".into(), "sleep".into(), "600".into()], true)
            .unwrap();
        assert_eq!(job["node"].as_u64(), Some(1), "{job}");
    }
    let (code, out, err) = run_best(&api1, key_file);
    assert_eq!((code, out.as_str()), (0, expected.as_str()), "{err}");
    let (id, node) = started_on(&err);
    assert!(
        node == 2 || node == 3,
        "busy node 1: job {id} started on node {node}: {err}\n{}",
        cluster.console_lines_with("jobs:")
    );
    // Its home is where it started (the id names it), and it never migrated.
    assert!(id.starts_with(&format!("{node}.")), "{id} on node {node}");
    let job = node1.job(&id).unwrap();
    assert_eq!(
        (job["node"].as_u64(), job["migrations"].as_u64()),
        (Some(node), Some(0)),
        "{job}"
    );
    // Node 1 says why (its console; the line may reach the log a moment after the answer).
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = format!("jobs: new job placed on node {node}");
    while !cluster.console_lines_with(&wanted).contains("node1: ") {
        assert!(
            Instant::now() < deadline,
            "node 1 did not log {wanted:?}:\n{}",
            cluster.console_lines_with("jobs:")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
