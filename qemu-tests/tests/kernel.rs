//! The compiled kernel (issue 6): `drove kernel build` (cached in `~/.cache/drove/kernel`, or
//! `$DROVE_KERNEL_CACHE`; `make test` compiles it first with `make kernel`), media built with
//! `[kernel] compiled = ...` (no modules), two nodes booted from them on the cluster harness.
//! Each must print the ready line and then, off the boot's critical path, the agent's CRIU
//! self-check `drove: criu check ok`; `/api/node` must show the compiled kernel and the check.
//! A job started with `drove run --pin` (so the balancer leaves it alone) on node 1 is moved to node 2 with `drove migrate` while it
//! runs, and `drove run` prints exactly the output of an unmoved run and exits with the job's
//! exit code.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drove::jobs_client::Agent;
use drove::status::State;
use drove_qemu_tests::cluster::{all_in_state, cluster_config, HOSTS, MAPPED_NODES};
use drove_qemu_tests::{drove_bin, run, workspace_root, Cluster, ClusterImage, Error};

/// Progress lines and a known sum, then a distinctive exit code that `drove run` must pass on.
const PROGRAM: &str =
    "BEGIN {for(i=0;i<3000000;i++){s+=i; if(i%100000==0) print \"at\", i}; print s; exit 7}";
const EXIT_CODE: i32 = 7;

/// The self-check runs CRIU under TCG on a loaded machine: seconds, rarely a minute.
const CHECK_TIMEOUT: Duration = Duration::from_secs(180);

/// `drove kernel build --out <dir>` with the default source, fragments and cache; returns `dir`.
fn compiled_kernel(drove: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("kernel");
    let t0 = Instant::now();
    run(Command::new(drove)
        .current_dir(workspace_root())
        .args(["kernel", "build", "--out"])
        .arg(&out))
    .unwrap();
    eprintln!(
        "kernel: drove kernel build took {:.1}s (a warm cache answers in under a second)",
        t0.elapsed().as_secs_f64()
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("kernel.json")).unwrap()).unwrap();
    assert_eq!(info["modules"], false, "{info}");
    eprintln!(
        "kernel: {} bzImage {} bytes",
        info["release"], info["bzimage_bytes"]
    );
    out
}

/// Index of the first console line of node `n` containing `needle`, waiting up to `timeout`.
fn wait_console(cluster: &Cluster, n: u32, needle: &str, timeout: Duration) -> (usize, String) {
    let t0 = Instant::now();
    loop {
        let lines = cluster.node(n).unwrap().vm.console_lines();
        if let Some(i) = lines.iter().position(|l| l.contains(needle)) {
            return (i, lines[i].clone());
        }
        assert!(
            t0.elapsed() < timeout,
            "node{n}: no line with {needle:?} after {timeout:?}; last lines:\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn compiled_kernel_boots_passes_criu_check_and_migrates_a_job() -> Result<(), Error> {
    let drove = drove_bin()?;
    let dir = workspace_root()
        .join("target/tmp/drove-kernel-test")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = compiled_kernel(&drove, &dir);

    let config = format!(
        "{}[kernel]\ncompiled = \"{}\"\ncmdline = \"console=ttyS0,115200 panic=30 quiet\"\ndrivers = []\n",
        cluster_config(MAPPED_NODES, HOSTS),
        kernel.display()
    );
    let image = ClusterImage::build(&drove, &dir.join("image"), &config)?;
    let cluster = Cluster::start(2, &image)?;
    for n in [1, 2] {
        let node = cluster.node(n)?;
        let (ready_at, _) = wait_console(&cluster, n, "drove: ready node=", CHECK_TIMEOUT);
        let (check_at, line) = wait_console(&cluster, n, "drove: criu check", CHECK_TIMEOUT);
        eprintln!(
            "node{n}: ready after {:.1}s; {line}",
            node.boot_time.as_secs_f64()
        );
        assert!(
            line.contains("drove: criu check ok"),
            "node{n}: {line}\n{}",
            cluster.console_lines_with("criu")
        );
        // Off the critical path: the ready line does not wait for CRIU.
        assert!(
            check_at > ready_at,
            "node{n}: criu check before the ready line"
        );
        let v = cluster.get_json(n, "/api/node")?;
        assert_eq!(v["criu"]["state"], "ok", "node{n}: {v}");
        assert!(
            v["kernel"].as_str().unwrap_or("").ends_with("-drove"),
            "node{n} runs {} instead of the compiled kernel",
            v["kernel"]
        );
        // No modules: nothing to load, nothing failed.
        let modules = node
            .vm
            .console_lines()
            .into_iter()
            .find(|l| l.contains("modules:"));
        if let Some(m) = modules {
            assert!(m.contains("0 failed"), "node{n}: {m}");
        }
    }
    cluster.wait_until(1, Duration::from_secs(60), "nodes 1 and 2 up", |t| {
        all_in_state(t, &[1, 2], State::Up)
    })?;

    // The job through the CLI, as a user would start it.
    let expected = Command::new("/bin/busybox")
        .args(["awk", PROGRAM])
        .output()
        .unwrap();
    assert_eq!(expected.status.code(), Some(EXIT_CODE));
    let api1 = cluster.api(1)?.to_string();
    let mut caller = Command::new(&drove)
        .args(["run", "--pin", "--node", &api1, "--key"])
        .arg(&image.key_file)
        .args(["--", "/bin/busybox", "awk", PROGRAM])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let node1 = Agent::new(&api1, None);
    let t0 = Instant::now();
    let id = loop {
        let jobs = node1.jobs().unwrap_or_default();
        let running = jobs["jobs"].as_array().and_then(|a| {
            a.iter()
                .find(|j| j["state"] == "running" && j["cmd"].to_string().contains("awk"))
                .cloned()
        });
        if let Some(j) = running {
            // Some output first, so lines are written before and after the move.
            let written = node1
                .output(j["id"].as_str().unwrap(), "stdout", 0)
                .map(|b| b.len())
                .unwrap_or(0);
            if written >= 20 {
                break j["id"].as_str().unwrap().to_owned();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no running awk job with output on node 1: {jobs}\n{}",
            cluster.console_lines_with("jobs:")
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    let moved = Command::new(&drove)
        .args(["migrate", "--node", &api1, "--key"])
        .arg(&image.key_file)
        .args([id.as_str(), "2"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&moved.stdout).into_owned()
        + &String::from_utf8_lossy(&moved.stderr);
    eprintln!("drove migrate {id} 2: {said}");
    assert!(
        moved.status.success(),
        "drove migrate failed: {said}\n{}",
        cluster.console_lines_with("jobs:")
    );
    let on2 = node1.job(&id).unwrap();
    assert_eq!(on2["node"].as_u64(), Some(2), "{on2}");

    // `drove run` ends with the job, wherever it is.
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = caller.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "drove run still running after 600 s\n{}",
            cluster.console_lines_with("jobs:")
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut out = String::new();
    caller
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    caller
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    eprintln!("drove run stderr: {err}");
    assert_eq!(
        out,
        String::from_utf8_lossy(&expected.stdout),
        "output differs from an unmoved run"
    );
    assert_eq!(status.code(), Some(EXIT_CODE), "drove run: {status}; {err}");
    let done = node1.job(&id).unwrap();
    assert_eq!(done["migrations"].as_u64(), Some(1), "{done}");
    assert_eq!(
        done["exit_code"].as_i64(),
        Some(i64::from(EXIT_CODE)),
        "{done}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
