//! Cluster-wide files (issue 8), against a real NFS server: `drove files serve`'s nfs-ganesha in
//! a private network namespace plugged into the cluster's vde switch ([`HostNetns`], 10.10.0.254),
//! reached by the nodes over the cluster segment, as a file server on the cluster's LAN would be
//! (2.5× the NFS throughput of QEMU's user-mode network under TCG; docs/files.md).
//!
//! - A job reading a 50 MB input in /cluster (by read position, and running the awk from a copy
//!   of busybox in /cluster, so its text is a file mapping of the area) and writing a running
//!   checksum and results there migrates twice mid-run; its result file equals the one busybox
//!   awk writes on the host from the same input, without migration.
//! - A job with a file open in /tmp is refused for migration, with the reason in `drove ps`.
//! - A node killed after a job wrote part of its output: that part is on the file area.
//! - The file server unreachable at boot: the node joins, says so on the console and in
//!   /api/node, refuses jobs that need the area, and mounts it once the server is there.
//!
//! Needs root (ganesha) and Debian's nfs-ganesha, nfs-ganesha-vfs and rpcbind
//! (scripts/install-deps.sh).

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drove::files::{Running, Server};
use drove::jobs_client::{ps_table, Agent};
use drove::status::State;
use drove_qemu_tests::cluster::{all_in_state, cluster_addr, cluster_config, MAPPED_NODES};
use drove_qemu_tests::{
    drove_bin, workspace_root, Cluster, ClusterImage, Error, HostNetns, VdeSwitch,
};

/// Lines of the input: ~50 MB.
const INPUT_LINES: u64 = 1_600_000;

/// Reads /cluster/in.txt line by line (one open descriptor whose position advances), keeps a
/// running checksum, appends a progress line to the results every 50,000 lines (one descriptor
/// opened once, appended to), and ends with the totals.
const PROGRAM: &str = r#"BEGIN {
  IN = "in.txt"; OUT = "results.txt"; s = 7; n = 0; t = 0
  while ((getline l < IN) > 0) {
    n++; split(l, f, " "); t += f[3]
    s = (s * 31 + f[3] + length(l)) % 1000000007
    if (n % 50000 == 0) { print "at", n, "sum", s > OUT; fflush(OUT); print "at", n }
  }
  print "done", n, "sum", s, "total", t > OUT
  close(OUT)
  print "done", n
}"#;

fn work_dir(name: &str) -> PathBuf {
    let d = workspace_root()
        .join("target/tmp/drove-files-test")
        .join(format!("{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The input: deterministic lines `NNNNNNN v VVVVV payload` (~31 bytes each).
fn write_input(path: &Path) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..INPUT_LINES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        writeln!(f, "{i:07} v {:05} abcdefghijklmn", x % 100_000).unwrap();
    }
    f.flush().unwrap();
}

/// A switch for the cluster with the host's namespace on it as 10.10.0.254.
fn segment() -> (VdeSwitch, HostNetns) {
    let switch = VdeSwitch::start().unwrap();
    let host = HostNetns::attach(&switch, cluster_addr(254), 24).unwrap();
    (switch, host)
}

/// What the file server of `host` serves from `dir` (the standard ports: the namespace is ours).
fn server_config(host: &HostNetns, dir: &Path) -> Server {
    Server {
        dir: dir.to_owned(),
        listen: (host.addr(), 2049).into(),
        mount_port: 20048,
        export: "/cluster".into(),
    }
}

/// Starts ganesha for `server` inside `host`'s namespace.
fn start_server(host: &HostNetns, server: &Server) -> Running {
    host.run(|| drove::files::start(server))
        .unwrap()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start the file server (needs root, nfs-ganesha, nfs-ganesha-vfs, rpcbind): {e}"
            )
        })
}

/// The cluster image whose nodes mount `server` (ports baked into /etc/drove/node.toml).
fn image(dir: &Path, server: &Server) -> ClusterImage {
    let mut config = cluster_config(MAPPED_NODES, MAPPED_NODES);
    config.push_str(&drove::files::client_config(
        server,
        &server.listen.ip().to_string(),
    ));
    ClusterImage::build(&drove_bin().unwrap(), &dir.join("image"), &config).unwrap()
}

fn node_files(cluster: &Cluster, n: u32) -> serde_json::Value {
    cluster
        .get_json(n, "/api/node")
        .map(|v| v["files"].clone())
        .unwrap_or_default()
}

/// Waits until every node in `nodes` reports the area in `state`.
fn wait_files(cluster: &Cluster, nodes: &[u32], state: &str, timeout: Duration) {
    let t0 = Instant::now();
    loop {
        let states: Vec<serde_json::Value> =
            nodes.iter().map(|n| node_files(cluster, *n)).collect();
        if states.iter().all(|s| s["state"] == state) {
            return;
        }
        assert!(
            t0.elapsed() < timeout,
            "file area not {state} on nodes {nodes:?} after {timeout:?}: {states:?}\n{}",
            cluster.console_lines_with("drove: files")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn progress_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter(|l| l.starts_with("at ")).count())
        .unwrap_or(0)
}

#[test]
fn files_follow_migrating_jobs_and_survive_a_dead_node() -> Result<(), Error> {
    let work = work_dir("main");
    let export = work.join("export");
    std::fs::create_dir_all(export.join("bin")).unwrap();
    write_input(&export.join("in.txt"));
    std::fs::copy("/bin/busybox", export.join("bin/busybox")).unwrap();
    // The run without migration: the same busybox awk, on the host, on the same input.
    let reference = work.join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    std::os::unix::fs::symlink(export.join("in.txt"), reference.join("in.txt")).unwrap();
    let status = std::process::Command::new("/bin/busybox")
        .args(["awk", PROGRAM])
        .current_dir(&reference)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let expected = std::fs::read_to_string(reference.join("results.txt")).unwrap();

    let (switch, host) = segment();
    let config = server_config(&host, &export);
    let _server = start_server(&host, &config);
    let image = image(&work, &config);
    let mut cluster = Cluster::start_on("files", 3, &image, switch)?;
    cluster.wait_until(1, Duration::from_secs(90), "nodes 1-3 up", |t| {
        all_in_state(t, &[1, 2, 3], State::Up)
    })?;
    wait_files(&cluster, &[1, 2, 3], "mounted", Duration::from_secs(60));
    let key = image.key_hex()?;
    let node1 = Agent::new(&cluster.api(1)?.to_string(), Some(key.clone()));

    // 1. Two migrations mid-run; pinned so that only these two happen.
    let job = node1
        .launch_in(
            &["/cluster/bin/busybox".into(), "awk".into(), PROGRAM.into()],
            true,
            None,
            &[],
        )
        .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let results = export.join("results.txt");
    let jobs_log = |c: &Cluster| c.console_lines_with("jobs:");
    wait_for("first progress lines", Duration::from_secs(180), || {
        (progress_lines(&results) >= 2).then_some(())
    });
    let mut moves = Vec::new();
    for to in ["2", "3"] {
        let before = progress_lines(&results);
        let rec = node1.migrate(&id, to).unwrap();
        eprintln!("migration to node {to}: {rec}");
        assert_eq!(rec["outcome"], "moved", "{rec}\n{}", jobs_log(&cluster));
        moves.push(rec);
        wait_for(
            &format!("progress on node {to}"),
            Duration::from_secs(180),
            || (progress_lines(&results) > before).then_some(()),
        );
    }
    let mut out = Vec::new();
    let mut err = Vec::new();
    let done = node1
        .follow(&id, &mut out, &mut err, Duration::from_millis(500))
        .unwrap();
    eprintln!("{}", jobs_log(&cluster));
    assert_eq!(done["exit_code"].as_i64(), Some(0), "{done}");
    assert_eq!(done["migrations"].as_u64(), Some(2), "{done}");
    assert_eq!(done["node"].as_u64(), Some(3), "{done}");
    let got = std::fs::read_to_string(&results).unwrap();
    assert!(
        got == expected,
        "results after two migrations differ from the unmoved run:\n--- got (tail)\n{}\n--- expected (tail)\n{}",
        got.lines().rev().take(3).collect::<Vec<_>>().join("\n"),
        expected.lines().rev().take(3).collect::<Vec<_>>().join("\n")
    );
    assert!(String::from_utf8_lossy(&out).contains(&format!("done {INPUT_LINES}")));
    for m in &moves {
        eprintln!(
            "moved {}→{}: freeze {} ms, {} bytes, total {} ms",
            m["from"], m["to"], m["freeze_ms"], m["bytes"], m["total_ms"]
        );
    }

    // 2. A file open in /tmp: refused before any freeze, and `drove ps` says why.
    let local = node1
        .launch_in(
            &[
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                "exec 3>/tmp/x; while :; do echo tick >&3; sleep 1; done".into(),
            ],
            true,
            None,
            &[],
        )
        .unwrap();
    let lid = local["id"].as_str().unwrap().to_owned();
    let shown = wait_for("the reason in drove ps", Duration::from_secs(30), || {
        let t = ps_table(&node1.cluster_jobs().ok()?);
        t.contains("not movable: has /tmp/x open").then_some(t)
    });
    eprintln!("{shown}");
    let refused = node1.migrate(&lid, "2").unwrap();
    assert_eq!(refused["outcome"], "resumed", "{refused}");
    let why = refused["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("refused") && why.contains("has /tmp/x open"),
        "{refused}"
    );
    assert_eq!(
        refused["freeze_ms"].as_u64(),
        Some(0),
        "frozen anyway: {refused}"
    );
    let still = node1.job(&lid).unwrap();
    assert_eq!(
        (still["state"].as_str(), still["node"].as_u64()),
        (Some("running"), Some(1)),
        "{still}"
    );
    node1.kill(&lid).unwrap();

    // 3. A node killed after a job wrote part of its output: that part is on the file area.
    std::fs::create_dir_all(export.join("out")).unwrap();
    let node2 = Agent::new(&cluster.api(2)?.to_string(), Some(key));
    let writer = node2
        .launch_in(
            &[
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                "i=0; while :; do i=$((i+1)); echo \"line $i\" >> out/partial.txt; echo \"wrote $i\"; sleep 0.2; done".into(),
            ],
            true,
            None,
            &[],
        )
        .unwrap();
    let wid = writer["id"].as_str().unwrap().to_owned();
    let reported = wait_for(
        "20 lines written on node 2",
        Duration::from_secs(120),
        || {
            let o = node2.output(&wid, "stdout", 0).ok()?;
            let text = String::from_utf8_lossy(&o).into_owned();
            let last = text
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("wrote ")?.parse::<u64>().ok())?;
            (last >= 20).then_some(last)
        },
    );
    cluster.kill(2)?;
    let on_server = std::fs::read_to_string(export.join("out/partial.txt")).unwrap();
    let lines: Vec<&str> = on_server.lines().collect();
    assert!(
        lines.len() as u64 >= reported,
        "the job reported {reported} lines written before node 2 died; the file area has {}",
        lines.len()
    );
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("line {}", i + 1));
    }
    eprintln!(
        "node 2 killed after reporting {reported} lines; {} on the file area",
        lines.len()
    );
    Ok(())
}

#[test]
fn file_server_unreachable_at_boot() -> Result<(), Error> {
    let work = work_dir("missing");
    let export = work.join("export");
    std::fs::create_dir_all(&export).unwrap();
    // The server's address is on the segment, its server not started yet: nothing listens.
    let (switch, host) = segment();
    let config = server_config(&host, &export);
    let image = image(&work, &config);
    let cluster = Cluster::start_on("files-missing", 1, &image, switch)?;
    wait_files(&cluster, &[1], "missing", Duration::from_secs(60));
    let files = node_files(&cluster, 1);
    let reason = files["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.contains("cannot mount 10.10.0.254:/cluster") && reason.contains("refused"),
        "{files}"
    );
    let console = cluster.console_lines_with("drove: files missing /cluster");
    assert!(console.contains("connection refused"), "console: {console}");
    cluster.wait_until(1, Duration::from_secs(30), "node 1 up", |t| {
        all_in_state(t, &[1], State::Up)
    })?;
    let node1 = Agent::new(&cluster.api(1)?.to_string(), Some(image.key_hex()?));
    let refused = node1
        .launch_in(&["/bin/busybox".into(), "true".into()], false, None, &[])
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("cluster file area /cluster is missing on this node"),
        "{refused}"
    );
    // Jobs that do not need the area still run; the mount point is read-only meanwhile.
    let job = node1
        .launch_in(
            &[
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                "pwd; echo $GREETING; echo x > /cluster/stray 2>/dev/null || echo read-only".into(),
            ],
            false,
            Some("/"),
            &[("GREETING".into(), "hello".into())],
        )
        .unwrap();
    let mut out = Vec::new();
    let done = node1
        .follow(
            job["id"].as_str().unwrap(),
            &mut out,
            &mut Vec::new(),
            Duration::from_millis(300),
        )
        .unwrap();
    assert_eq!(done["exit_code"].as_i64(), Some(0), "{done}");
    assert_eq!(String::from_utf8_lossy(&out), "/\nhello\nread-only\n");

    // The server comes: the node mounts it by itself and takes jobs there.
    let _server = start_server(&host, &config);
    wait_files(&cluster, &[1], "mounted", Duration::from_secs(60));
    let job = node1
        .launch_in(
            &[
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                "pwd; echo \"$DROVE_JOB\" > here.txt".into(),
            ],
            false,
            None,
            &[],
        )
        .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let mut out = Vec::new();
    let done = node1
        .follow(&id, &mut out, &mut Vec::new(), Duration::from_millis(300))
        .unwrap();
    assert_eq!(done["exit_code"].as_i64(), Some(0), "{done}");
    assert_eq!(String::from_utf8_lossy(&out), "/cluster\n");
    assert_eq!(
        std::fs::read_to_string(export.join("here.txt")).unwrap(),
        format!("{id}\n")
    );
    Ok(())
}
