//! File-area benchmark (issue 8): one node mounting `drove files serve`'s export over the
//! cluster's own segment: nfs-ganesha runs in a network namespace of the benchmark's, plugged
//! into the node's vde switch (`HostNetns`, 10.10.0.254). The same job reads a 50 MiB input from
//! /cluster (page cache dropped first: every byte comes over NFS) and from a local copy in the
//! node's RAM (/tmp), runs interleaved, medians. The anchor, measured in the same run: the raw
//! TCP link (an HTTP GET of the same size from the namespace, and, for comparison, from the
//! host's loopback through QEMU's user-mode network). Prints a markdown section for
//! docs/benchmarks.md on stdout (progress on stderr). Needs root (ganesha, the namespace).
//!
//! Usage: `bench-files [--runs N]` (default 3, or `$RUNS`).

use drove_qemu_tests::bench::{median, runs_from_args};
use std::time::{Duration, Instant};

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;

use drove::jobs_client::Agent;
use drove_qemu_tests::cluster::{cluster_addr, cluster_config};
use drove_qemu_tests::{
    drove_bin, workspace_root, Cluster, ClusterImage, Error, HostNetns, VdeSwitch,
};

const INPUT_MB: usize = 50;

fn main() {
    let runs = runs_from_args("bench-files");
    if let Err(e) = run(runs) {
        eprintln!("bench-files: error: {e}");
        std::process::exit(1);
    }
}

/// Runs `script` as a job on the node (cwd /) and returns its stdout.
fn job(agent: &Agent, script: &str) -> Result<String, String> {
    let j = agent
        .launch_in(
            &[
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                script.into(),
            ],
            true,
            Some("/"),
            &[],
        )
        .map_err(|e| e.to_string())?;
    let id = j["id"].as_str().unwrap_or_default().to_owned();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let done = agent
        .follow(&id, &mut out, &mut err, Duration::from_millis(300))
        .map_err(|e| e.to_string())?;
    if done["exit_code"].as_i64() != Some(0) {
        return Err(format!(
            "job {id} failed: {done}\n{}",
            String::from_utf8_lossy(&err)
        ));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Answers every connection on `listener` with an HTTP response carrying `data` (the link
/// anchor: what one TCP stream carries from there to the node).
fn serve_http(listener: TcpListener, data: Arc<Vec<u8>>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let head = format!(
                "HTTP/1.0 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                data.len()
            );
            // Read the request first so the close does not reset the connection.
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = conn
                .write_all(head.as_bytes())
                .and_then(|()| conn.write_all(&data));
        }
    });
}

/// Seconds the reading command took, timed inside the node from /proc/uptime (10 ms steps).
fn timed(agent: &Agent, prep: &str, cmd: &str) -> Result<f64, String> {
    let script = format!(
        "{prep}; a=$(cut -d' ' -f1 /proc/uptime); {cmd} >/dev/null; b=$(cut -d' ' -f1 /proc/uptime); echo \"$a $b\""
    );
    let out = job(agent, &script)?;
    let v: Vec<f64> = out
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [a, b] if b > a => Ok(b - a),
        _ => Err(format!("cannot read the timing from {out:?}")),
    }
}

fn run(runs: usize) -> Result<(), Box<dyn std::error::Error>> {
    let work = workspace_root()
        .join("target/tmp/drove-bench-files")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&work);
    let export = work.join("export");
    std::fs::create_dir_all(&export)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = vec![0u8; INPUT_MB << 20];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(export.join("in.dat"), &data)?;
    let switch = VdeSwitch::start()?;
    let host = HostNetns::attach(&switch, cluster_addr(254), 24)?;
    let server = drove::files::Server {
        dir: export.clone(),
        listen: (host.addr(), 2049).into(),
        mount_port: 20048,
        export: "/cluster".into(),
    };
    let _running = host.run(|| drove::files::start(&server))??;
    let data = Arc::new(data);
    let vde_http = host.run(|| TcpListener::bind((host.addr(), 8080)))??;
    serve_http(vde_http, Arc::clone(&data));
    let slirp_http = TcpListener::bind("127.0.0.1:0")?;
    let slirp_port = slirp_http.local_addr()?.port();
    serve_http(slirp_http, Arc::clone(&data));
    let mut config = cluster_config(1, 1);
    config.push_str(&drove::files::client_config(
        &server,
        &host.addr().to_string(),
    ));
    let image = ClusterImage::build(&drove_bin()?, &work.join("image"), &config)?;
    let cluster = Cluster::start_on("bench-files", 1, &image, switch)?;
    let agent = Agent::new(&cluster.api(1)?.to_string(), Some(image.key_hex()?));
    let t0 = Instant::now();
    loop {
        let files = cluster.get_json(1, "/api/node")?["files"].clone();
        if files["state"] == "mounted" {
            break;
        }
        if t0.elapsed() > Duration::from_secs(90) {
            return Err(Box::new(Error::Cluster {
                what: format!("file area not mounted after 90 s: {files}"),
            }));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    job(&agent, "cp /cluster/in.dat /tmp/in.dat")?;
    // The NFS mount's backing device (major:minor), whose readahead the kernel sizes.
    let bdi = "$(grep ' - nfs ' /proc/self/mountinfo | awk '{print $3}')";
    if let Ok(kb) = std::env::var("READAHEAD_KB") {
        job(
            &agent,
            &format!("echo {kb} > /sys/class/bdi/{bdi}/read_ahead_kb"),
        )?;
    }
    let mount = job(
        &agent,
        &format!("grep ' - nfs ' /proc/self/mountinfo; echo read_ahead_kb=$(cat /sys/class/bdi/{bdi}/read_ahead_kb)"),
    )?;
    eprintln!("bench-files: {}", mount.trim());
    let drop = "sync; echo 3 > /proc/sys/vm/drop_caches";
    let mut links = Vec::new();
    for (name, url) in [
        (
            "vde segment (netns 10.10.0.254)",
            format!("http://{}:8080/", host.addr()),
        ),
        (
            "QEMU user-mode (host 10.0.2.2)",
            format!("http://10.0.2.2:{slirp_port}/"),
        ),
    ] {
        let mut rates = Vec::new();
        for i in 0..runs {
            let t = timed(&agent, "true", &format!("wget -q -O - {url}"))?;
            eprintln!("bench-files: link {name} run {}: {t:.2} s", i + 1);
            rates.push(INPUT_MB as f64 / t);
        }
        links.push((name, median(rates)));
    }
    let mut rows = Vec::new();
    for (name, cmd) in [("`cat FILE`", "cat"), ("`md5sum FILE`", "md5sum")] {
        let (mut local, mut nfs) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let l = timed(&agent, drop, &format!("{cmd} /tmp/in.dat"))?;
            let n = timed(&agent, drop, &format!("{cmd} /cluster/in.dat"))?;
            eprintln!(
                "bench-files: {cmd} run {}: local {l:.2} s, /cluster {n:.2} s",
                i + 1
            );
            local.push(INPUT_MB as f64 / l);
            nfs.push(INPUT_MB as f64 / n);
        }
        rows.push((name, median(local), median(nfs)));
    }
    println!("\n## Cluster file area (NFS)\n");
    println!(
        "`scripts/bench-files.sh` (`qemu-tests/src/bin/bench-files.rs`) on {}: one node (TCG, 1 vCPU,\n\
         512 MiB, virtio-net) mounts `drove files serve`'s nfs-ganesha export at /cluster over the\n\
         cluster's vde segment (the server in a private network namespace plugged into the switch\n\
         with `vde_plug2tap`); the same job reads a {INPUT_MB} MiB file from /cluster (page cache\n\
         dropped before each run, so every byte crosses the network) and from a copy in the node's\n\
         RAM (/tmp), runs interleaved, medians of {runs}. Timed inside the node from /proc/uptime.\n\
         Goal: /cluster at least 80 % of local.\n",
        std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    );
    println!("| job | local /tmp MiB/s | /cluster MiB/s | ratio | goal |");
    println!("|---|---|---|---|---|");
    for (name, l, n) in rows {
        println!("| {name} | {l:.1} | {n:.1} | {:.2} | ≥ 0.80 |", n / l);
    }
    println!("\nThe link in the same run (`wget -O - URL >/dev/null` of {INPUT_MB} MiB on the node, one TCP stream):\n");
    println!("| path | MiB/s |");
    println!("|---|---|");
    for (name, rate) in links {
        println!("| {name} | {rate:.1} |");
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
