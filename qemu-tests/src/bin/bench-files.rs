//! File-area benchmark (issue 8): one node mounting `drove files serve`'s export over the
//! cluster's own segment: nfs-ganesha runs in a network namespace of the benchmark's, plugged
//! into the node's vde switch (`HostNetns`, 10.10.0.254). The same job reads a 50 MiB input from
//! /cluster (page cache dropped first: every byte comes over NFS) and from a local copy in the
//! node's RAM (/tmp), runs interleaved, medians. The anchor, measured in the same run: the raw
//! TCP link (an HTTP GET of the same size from the namespace, and, for comparison, from the
//! host's loopback through QEMU's user-mode network). Prints a markdown section for
//! docs/benchmarks.md on stdout (progress on stderr). Needs root (ganesha, the namespace).
//!
//! Usage: `bench-files [--runs N]` (default 3, or `$RUNS`). One node is booted per (network,
//! vCPUs) pair, each with its own switch, namespace and server:
//! - `NETS` (default `vde,tap`): `vde` is the tests' cluster segment (a vde port: no offloads),
//!   `tap` a tap with `IFF_VNET_HDR` bridged in the namespace (virtio-net checksum/TSO offloads,
//!   like a PC's NIC);
//! - `CPUS` (default `1,2`): vCPUs of the node;
//! - `READAHEAD_KB` (a comma list): also measure md5sum with the mount's readahead set to each
//!   (for choosing the agent's default); `OPTIONS`: extra mount options (`files.options`).

use drove_qemu_tests::bench::{median, runs_from_args};
use std::time::{Duration, Instant};

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;

use drove::jobs_client::Agent;
use drove_qemu_tests::cluster::{cluster_addr, cluster_config, NodeOptions};
use drove_qemu_tests::{
    drove_bin, workspace_root, Cluster, ClusterImage, Error, HostNetns, Nic, VdeSwitch,
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

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The pid of the QEMU started with `-name NAME`.
fn qemu_pid(name: &str) -> Option<u32> {
    let want = format!("\0-name\0{name},debug-threads=on\0");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.starts_with("qemu-system") && cmdline.contains(&want)).then_some(pid)
    })
}

/// Host CPU seconds used so far by QEMU `pid`'s vCPU threads (`CPU n/TCG`) and by its other
/// threads (main loop: the NIC backend). Counts only time on a host core, so unlike wall time it
/// does not grow when other work on the host takes the cores.
fn qemu_cpu(pid: u32) -> (f64, f64) {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (mut vcpu, mut other) = (0.0, 0.0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0.0, 0.0);
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // After "(comm) ": state is field 0; utime and stime are fields 11 and 12.
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        if comm.starts_with("CPU ") {
            vcpu += ticks / hz;
        } else {
            other += ticks / hz;
        }
    }
    (vcpu, other)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One result row: what ran, on which node, the medians and the load around it.
struct Row {
    net: String,
    cpus: u32,
    job: String,
    readahead: String,
    local: f64,
    nfs: f64,
    /// Medians of the vCPU threads' host CPU seconds per run.
    local_vcpu: f64,
    nfs_vcpu: f64,
    /// Median host CPU seconds of QEMU's other threads (NIC backend) per /cluster run.
    nfs_io: f64,
    load: String,
}

/// The figures of one node: link, then the jobs, interleaved.
struct NodeRun {
    net: String,
    cpus: u32,
    link: f64,
    mount: String,
    rows: Vec<Row>,
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
    let data = Arc::new(data);
    let server = drove::files::Server {
        dir: export.clone(),
        listen: (cluster_addr(254), 2049).into(),
        mount_port: 20048,
        export: "/cluster".into(),
    };
    let mut config = cluster_config(1, 1);
    config.push_str(&drove::files::client_config(
        &server,
        &cluster_addr(254).to_string(),
    ));
    if let Ok(o) = std::env::var("OPTIONS") {
        config.push_str(&format!("options = \"{o}\"\n"));
    }
    let image = ClusterImage::build(&drove_bin()?, &work.join("image"), &config)?;
    let mut nodes = Vec::new();
    for net in list("NETS", "vde,tap") {
        for cpus in list("CPUS", "1,2") {
            let cpus: u32 = cpus
                .parse()
                .map_err(|_| format!("CPUS: {cpus:?} is not a number"))?;
            nodes.push(node_run(runs, &net, cpus, &server, &image, &data)?);
        }
    }
    print_section(runs, &nodes);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Boots one node with `cpus` vCPUs on network `net` and measures it.
fn node_run(
    runs: usize,
    net: &str,
    cpus: u32,
    server: &drove::files::Server,
    image: &ClusterImage,
    data: &Arc<Vec<u8>>,
) -> Result<NodeRun, Box<dyn std::error::Error>> {
    let switch = VdeSwitch::start()?;
    let host = Arc::new(HostNetns::attach(&switch, cluster_addr(254), 24)?);
    let cluster_nic: Option<drove_qemu_tests::cluster::ClusterNic> = match net {
        "vde" => None,
        "tap" => {
            // The descriptors must outlive QEMU's start: keep them with the closure.
            let taps = Arc::new(std::sync::Mutex::new(Vec::new()));
            let host = Arc::clone(&host);
            Some(Box::new(move |n: u32| {
                let fd = host.vm_tap(&format!("drovet{n}"))?;
                let nic = Nic::tap_fd(std::os::fd::AsRawFd::as_raw_fd(&fd));
                taps.lock().unwrap_or_else(|p| p.into_inner()).push(fd);
                Ok(nic)
            }))
        }
        other => return Err(format!("NETS: {other:?} is neither vde nor tap").into()),
    };
    if net == "tap" {
        // Move the address onto the bridge before the server binds it.
        drop(host.vm_tap("drovetx")?);
    }
    let _running = host.run(|| drove::files::start(server))??;
    let vde_http = host.run(|| TcpListener::bind((host.addr(), 8080)))??;
    serve_http(vde_http, Arc::clone(data));
    let opts = NodeOptions {
        cpus,
        cluster_nic,
        ..NodeOptions::default()
    };
    let prefix = format!("bench-files-{net}-{cpus}");
    let cluster = Cluster::start_with(&prefix, 1, image, switch, opts)?;
    let pid = qemu_pid(&format!("{prefix}-node1")).ok_or("cannot find the node's QEMU in /proc")?;
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
    let bdi =
        "/sys/class/bdi/$(grep ' - nfs ' /proc/self/mountinfo | awk '{print $3}')/read_ahead_kb";
    let default_ra = job(&agent, &format!("cat {bdi}"))?.trim().to_owned();
    let mount = job(
        &agent,
        &format!("grep ' - nfs ' /proc/self/mountinfo | cut -d' ' -f5,9-; echo read_ahead_kb=$(cat {bdi}); ethtool -k eth0 2>/dev/null | grep -E '^(rx-checksumming|generic-receive-offload|tcp-segmentation-offload):' | tr '\\n' ' '"),
    )?;
    eprintln!("bench-files: {net} {cpus} vCPU: {}", mount.trim());
    let drop = "sync; echo 3 > /proc/sys/vm/drop_caches";
    let url = format!("http://{}:8080/", host.addr());
    let mut rates = Vec::new();
    for i in 0..runs {
        let t = timed(&agent, "true", &format!("wget -q -O - {url}"))?;
        eprintln!(
            "bench-files: {net} {cpus} vCPU link run {}: {t:.2} s",
            i + 1
        );
        rates.push(INPUT_MB as f64 / t);
    }
    let link = median(rates);
    let mut jobs: Vec<(String, String, String)> = vec![
        ("`cat FILE`".into(), "cat".into(), default_ra.clone()),
        ("`md5sum FILE`".into(), "md5sum".into(), default_ra.clone()),
        // A compressor, the first of the real jobs: it does more work per byte, so
        // the read can overlap with it, as it does with most jobs that are not a bare scan.
        (
            "`gzip -c FILE`".into(),
            "gzip -c".into(),
            default_ra.clone(),
        ),
    ];
    for ra in list("READAHEAD_KB", "") {
        jobs.push(("`md5sum FILE`".into(), "md5sum".into(), ra));
    }
    let mut rows = Vec::new();
    for (name, cmd, ra) in jobs {
        job(&agent, &format!("echo {ra} > {bdi}"))?;
        let (mut local, mut nfs) = (Vec::new(), Vec::new());
        let (mut local_vcpu, mut nfs_vcpu, mut nfs_io) = (Vec::new(), Vec::new(), Vec::new());
        let before = loadavg();
        for i in 0..runs {
            // CPU time spans the whole job (agent start, drop_caches, the read): the same
            // overhead on both sides.
            let c0 = qemu_cpu(pid);
            let l = timed(&agent, drop, &format!("{cmd} /tmp/in.dat"))?;
            let c1 = qemu_cpu(pid);
            let n = timed(&agent, drop, &format!("{cmd} /cluster/in.dat"))?;
            let c2 = qemu_cpu(pid);
            eprintln!(
                "bench-files: {net} {cpus} vCPU readahead {ra} KiB {cmd} run {}: local {l:.2} s (vCPU {:.2} s), /cluster {n:.2} s (vCPU {:.2} s, io {:.2} s) (load {})",
                i + 1,
                c1.0 - c0.0,
                c2.0 - c1.0,
                c2.1 - c1.1,
                loadavg()
            );
            local.push(INPUT_MB as f64 / l);
            nfs.push(INPUT_MB as f64 / n);
            local_vcpu.push(c1.0 - c0.0);
            nfs_vcpu.push(c2.0 - c1.0);
            nfs_io.push(c2.1 - c1.1);
        }
        rows.push(Row {
            net: net.into(),
            cpus,
            job: name,
            readahead: ra,
            local: median(local),
            nfs: median(nfs),
            local_vcpu: median(local_vcpu),
            nfs_vcpu: median(nfs_vcpu),
            nfs_io: median(nfs_io),
            load: format!("{before} → {}", loadavg()),
        });
    }
    job(&agent, &format!("echo {default_ra} > {bdi}"))?;
    Ok(NodeRun {
        net: net.into(),
        cpus,
        link,
        mount: mount.trim().to_owned(),
        rows,
    })
}

fn net_name(net: &str) -> &'static str {
    if net == "tap" {
        "tap+vnet_hdr"
    } else {
        "vde"
    }
}

fn print_section(runs: usize, nodes: &[NodeRun]) {
    println!("\n## Cluster file area (NFS)\n");
    println!(
        "`scripts/bench-files.sh` (`qemu-tests/src/bin/bench-files.rs`) on {}: one node at a time (TCG,\n\
         512 MiB, virtio-net) mounts `drove files serve`'s nfs-ganesha export at /cluster over the\n\
         cluster segment (the server in a private network namespace: `vde` = the node's NIC is a\n\
         port on the tests' vde switch, which the namespace joins with `vde_plug2tap`, no offloads;\n\
         `tap+vnet_hdr` = the node's NIC is a tap with `IFF_VNET_HDR` bridged in the namespace, so\n\
         virtio-net does checksum/TSO/GRO offloads as a PC's NIC does). The same job reads a\n\
         {INPUT_MB} MiB file from /cluster (page cache dropped before each run, so every byte crosses\n\
         the network) and from a copy in the node's RAM (/tmp), runs interleaved, medians of {runs}.\n\
         Timed inside the node from /proc/uptime. Goal: /cluster at least 80 % of local. Load:\n\
         the host's 1/5/15-minute load average before → after each row (2 cores, shared).\n",
        std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    );
    println!("| network | vCPUs | job | readahead KiB | local /tmp MiB/s | /cluster MiB/s | ratio | goal | load |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in nodes {
        for r in &n.rows {
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | ≥ 0.80 | {} |",
                net_name(&r.net),
                r.cpus,
                r.job,
                r.readahead,
                r.local,
                r.nfs,
                r.nfs / r.local,
                r.load
            );
        }
    }
    println!(
        "\nHost CPU seconds per job (medians; the job's whole run, agent and drop_caches included) of\n\
         the node's vCPU threads, local and /cluster, and of QEMU's other threads (the NIC backend)\n\
         for /cluster. Unlike wall time these do not grow when other work takes the host's cores:\n\
         `vCPU ratio` = local vCPU s / /cluster vCPU s is what the node itself pays for reading over\n\
         the network (for 1 vCPU, the ratio the node would reach with the host to itself and a server\n\
         that answers at once).\n"
    );
    println!("| network | vCPUs | job | readahead KiB | local vCPU s | /cluster vCPU s | /cluster QEMU I/O s | vCPU ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in nodes {
        for r in &n.rows {
            println!(
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                net_name(&r.net),
                r.cpus,
                r.job,
                r.readahead,
                r.local_vcpu,
                r.nfs_vcpu,
                r.nfs_io,
                r.local_vcpu / r.nfs_vcpu
            );
        }
    }
    println!("\nThe link on each node (`wget -O - URL >/dev/null` of {INPUT_MB} MiB from the namespace, one TCP stream), and the mount:\n");
    println!("| network | vCPUs | link MiB/s | mount |");
    println!("|---|---|---|---|");
    for n in nodes {
        println!(
            "| {} | {} | {:.1} | `{}` |",
            net_name(&n.net),
            n.cpus,
            n.link,
            n.mount.replace('\n', " ")
        );
    }
}
