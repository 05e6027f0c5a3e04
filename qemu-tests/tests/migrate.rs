//! Migration test (issue 4): a CPU-bound awk job started on node 1 through the API is moved to
//! node 2 with CRIU while it runs, then home again, and finishes with exactly the output it
//! would have printed unmoved (read through node 1 by byte offset, so lines written on either
//! node arrive in order, without gaps or duplicates) and exit code 0.
//!
//! Images are built by the real `drove` as for the cluster test (`drove_qemu_tests::cluster`).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use drove::jobs_client::{ps_table, Agent};
use drove::status::State;
use drove_qemu_tests::cluster::{all_in_state, test_images};
use drove_qemu_tests::{Cluster, Error};

/// The seed's awk loop, smaller (TCG runs it ~10x slower than the host) and with progress lines
/// so that output is written before, between and after the moves.
const PROGRAM: &str =
    "BEGIN {for(i=0;i<3000000;i++){s+=i; if(i%100000==0) print \"at\", i}; print s}";

fn wait_output(agent: &Agent, id: &str, min_len: usize, timeout: Duration) -> usize {
    let t0 = Instant::now();
    loop {
        let len = agent.output(id, "stdout", 0).map(|b| b.len()).unwrap_or(0);
        if len >= min_len || t0.elapsed() > timeout {
            return len;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The mount namespaces of process `pid` and of PID 1 on the node behind `agent`, read by a
/// short job there (`/proc` is the node's: the job only has its own PID namespace's pids as
/// children, its /proc shows every pid of the node).
fn mount_namespaces(agent: &Agent, pid: i64) -> (String, String) {
    let job = agent
        .launch(&[
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            format!("readlink /proc/{pid}/ns/mnt; readlink /proc/1/ns/mnt"),
        ])
        .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let done = agent
        .follow(&id, &mut out, &mut err, Duration::from_millis(200))
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        done["exit_code"].as_i64() == Some(0) && lines.len() == 2,
        "readlink of pid {pid}'s mount namespace: {done}\n{text}{}",
        String::from_utf8_lossy(&err)
    );
    (lines[0].to_owned(), lines[1].to_owned())
}

/// A job runs in a mount namespace of its own, not the node's (issue 4, item 1), when the
/// agent is built with its own mount namespace on (`criu::OWN_MOUNT_NS`); in the node's one
/// otherwise.
fn assert_own_mount_namespace(agent: &Agent, id: &str) {
    let job = agent.job(id).unwrap();
    let pid = job["pid"].as_i64().unwrap();
    let (job_ns, node_ns) = mount_namespaces(agent, pid);
    assert!(
        job_ns.starts_with("mnt:[") && node_ns.starts_with("mnt:["),
        "{job_ns} {node_ns}"
    );
    if drove_agent::jobs::criu::OWN_MOUNT_NS {
        assert_ne!(
            job_ns, node_ns,
            "job {id} (pid {pid} on node {}) shares the node's mount namespace",
            job["node"]
        );
    } else {
        assert_eq!(
            job_ns, node_ns,
            "job {id} (pid {pid} on node {}) has a mount namespace of its own, the agent's switch is off",
            job["node"]
        );
    }
}

#[test]
fn awk_job_moves_to_node2_and_home_with_all_its_output() -> Result<(), Error> {
    let expected = std::process::Command::new("/bin/busybox")
        .args(["awk", PROGRAM])
        .output()
        .unwrap()
        .stdout;
    let images = test_images()?;
    let cluster = Cluster::start(2, &images.main)?;
    cluster.wait_until(1, Duration::from_secs(60), "nodes 1 and 2 up", |t| {
        all_in_state(t, &[1, 2], State::Up)
    })?;
    let key = images.main.key_hex()?;
    let node1 = Agent::new(&cluster.api(1)?.to_string(), Some(key.clone()));

    // Changes need the key.
    let stranger = Agent::new(&node1.addr, Some("00".repeat(32)));
    let refused = stranger.launch(&["true".into()]).unwrap_err().to_string();
    assert!(refused.contains("HTTP 401"), "{refused}");

    let job = node1
        .launch(&["/bin/busybox".into(), "awk".into(), PROGRAM.into()])
        .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (job["state"].as_str(), job["home"].as_u64()),
        (Some("running"), Some(1))
    );
    let first = wait_output(&node1, &id, 20, Duration::from_secs(60));
    assert!(
        first >= 20,
        "no output from job {id} in 60 s:\n{}",
        cluster.console_lines_with("jobs:")
    );

    assert_own_mount_namespace(&node1, &id);

    let there = node1.migrate(&id, "2").unwrap();
    eprintln!("migration to node 2: {there}");
    assert_eq!(
        there["outcome"],
        "moved",
        "{there}\n{}",
        cluster.console_lines_with("jobs:")
    );
    let on2 = node1.job(&id).unwrap();
    assert_eq!(
        (on2["node"].as_u64(), on2["state"].as_str()),
        (Some(2), Some("running")),
        "{on2}"
    );
    // Restored on node 2 into a mount namespace of its own again.
    let node2 = Agent::new(&cluster.api(2)?.to_string(), Some(key.clone()));
    assert_own_mount_namespace(&node2, &id);

    // Let it write on node 2, then bring it home through node 1 (forwarded to node 2).
    let before = node1.output(&id, "stdout", 0).unwrap().len();
    let grown = wait_output(&node1, &id, before + 10, Duration::from_secs(60));
    assert!(
        grown > before,
        "no output on node 2:\n{}",
        cluster.console_lines_with("jobs:")
    );
    let back = node1.migrate(&id, "home").unwrap();
    eprintln!("migration home: {back}");
    let came_home = back["outcome"] == "moved";
    // The job may have finished on node 2 first; then it is refused and nothing is lost either.
    assert!(
        came_home || node1.job(&id).unwrap()["state"] == "exited",
        "{back}\n{}",
        cluster.console_lines_with("jobs:")
    );

    let mut out = Vec::new();
    let mut err = Vec::new();
    let done = node1
        .follow(&id, &mut out, &mut err, Duration::from_millis(300))
        .unwrap();
    eprintln!("{}", cluster.console_lines_with("jobs:"));
    eprintln!(
        "node 1 {}node 2 {}",
        ps_table(&node1.jobs().unwrap()),
        ps_table(
            &Agent::new(&cluster.api(2)?.to_string(), None)
                .jobs()
                .unwrap()
        )
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&expected),
        "output differs from an unmoved run"
    );
    assert_eq!(done["exit_code"].as_i64(), Some(0), "{done}");
    assert_eq!(
        done["migrations"].as_u64(),
        Some(if came_home { 2 } else { 1 }),
        "{done}"
    );
    assert!(err.is_empty(), "stderr: {}", String::from_utf8_lossy(&err));
    Ok(())
}
