//! Rolling update (issue 5): three nodes netbooted from an in-process `drove serve` (QEMU's own
//! iPXE on the user-mode NIC: `bootfile=http://10.0.2.2:PORT/boot.ipxe`, a cluster NIC on a vde
//! switch), awk jobs running; the image is rebuilt with a changed overlay and `drove update` (the
//! real CLI) drains, reboots and re-admits every node in turn. Checks: `drove update` succeeds,
//! every node ends on the new image id (`image` in `GET /api/node`) after a second boot, and
//! every job finishes with exactly the output of an unmoved run and exit code 0.
//!
//! The jobs' output is followed the way a careful `drove run` would: from whichever node runs
//! the job (found in `/api/cluster/jobs`), by byte offset, so the reader survives both the
//! migrations and the reboot of the job's home node.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drove::jobs_client::Agent;
use drove_qemu_tests::cluster::{cluster_addr, cluster_config, cluster_mac, free_port, API_PORT};
use drove_qemu_tests::{
    drove_bin, run, workspace_root, Error, Nic, VdeSwitch, Vm, VmBuilder, BOOT_TIMEOUT,
};
use serde_json::Value;

const NODES: u32 = 3;

/// Long enough to still run while the first nodes are updated, short enough for CI.
const PROGRAM: &str =
    "BEGIN {for(i=0;i<12000000;i++){s+=i; if(i%500000==0) print \"at\", i}; print s}";

fn build(drove: &Path, dir: &Path, marker: &str) -> String {
    let overlay = dir.join("marker");
    std::fs::create_dir_all(overlay.join("etc")).unwrap();
    std::fs::write(overlay.join("etc/drove-update-marker"), marker).unwrap();
    let config = format!(
        "{}\n[overlays]\nuser = [\"{}\"]\n",
        cluster_config(NODES, NODES),
        overlay.display()
    );
    std::fs::write(dir.join("cluster.toml"), config).unwrap();
    run(Command::new(drove)
        .current_dir(workspace_root())
        .args(["-q", "build", "--output", "pxe", "--config"])
        .arg(dir.join("cluster.toml"))
        .arg("--out")
        .arg(dir.join("out")))
    .unwrap();
    drove::update::image_from_manifest(&dir.join("out/manifest.json")).unwrap()
}

struct Node {
    vm: Vm,
    api: String,
}

fn boot(switch: &VdeSwitch, n: u32, server_port: u16) -> Node {
    let port = free_port().unwrap();
    // The user-mode NIC boots first (bootindex) with QEMU's iPXE ROM; slirp's DHCP hands it the
    // URL of boot.ipxe, whose relative paths load the kernel and initrds from the same server.
    let vm = VmBuilder::new(&format!("update-node{n}"))
        .unwrap()
        .memory_mib(512)
        .allow_reboot()
        .nic(Nic::vde(switch).mac(cluster_mac(n)))
        .args([
            "-netdev".to_owned(),
            format!(
                "user,id=boot,bootfile=http://10.0.2.2:{server_port}/boot.ipxe,hostfwd=tcp:127.0.0.1:{port}-:{API_PORT}"
            ),
            "-device".to_owned(),
            format!("virtio-net-pci,netdev=boot,mac=52:54:00:00:01:{n:02x},bootindex=1"),
        ])
        .spawn()
        .unwrap();
    Node {
        vm,
        api: format!("127.0.0.1:{port}"),
    }
}

fn node_json(api: &str) -> Option<Value> {
    drove::status::get_json(api, "/api/node", Duration::from_secs(2)).ok()
}

fn wait_api(api: &str, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(v) = node_json(api) {
            if ok(&v) {
                return v;
            }
        }
        assert!(
            t0.elapsed() < timeout,
            "{api}: not {what} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Follows job `id` to its end from whichever node runs it; returns (stdout, final record).
fn follow(apis: Vec<String>, key: String, id: String) -> (Vec<u8>, Value) {
    let mut out = Vec::new();
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(1500),
            "job {id}: not ended in 25 min"
        );
        // Where it runs now, from the first node that answers.
        let listed = apis.iter().find_map(|a| {
            let v = Agent::new(a, None).cluster_jobs().ok()?;
            let job = v["jobs"]
                .as_array()?
                .iter()
                .find(|j| j["id"] == id.as_str())?
                .clone();
            Some(job)
        });
        let Some(job) = listed else {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        };
        let on = job["node"].as_u64().unwrap_or(0) as usize;
        let Some(api) = apis.get(on.wrapping_sub(1)) else {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        };
        let agent = Agent::new(api, Some(key.clone()));
        if let Ok(bytes) = agent.output(&id, "stdout", out.len() as u64) {
            let got = !bytes.is_empty();
            out.extend_from_slice(&bytes);
            if got {
                continue;
            }
        }
        if job["state"] == "exited" && !job["stale"].as_bool().unwrap_or(false) {
            // Whatever was written between the last read and the end.
            if let Ok(bytes) = agent.output(&id, "stdout", out.len() as u64) {
                out.extend_from_slice(&bytes);
            }
            return (out, job);
        }
        assert!(job["state"] != "lost", "job {id} was lost: {job}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn rolling_update_moves_jobs_reboots_every_node_into_the_new_image() -> Result<(), Error> {
    let drove = drove_bin()?;
    let dir: PathBuf =
        workspace_root().join(format!("target/tmp/drove-update/{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let old = build(&drove, &dir, "v1");
    eprintln!("update: first image {old}");
    let server = drove::serve::bind(&dir.join("out/pxe"), "127.0.0.1:0".parse().unwrap())
        .unwrap_or_else(|e| panic!("{e}"))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let server_port = server.local_addr().port();
    let switch = VdeSwitch::start()?;
    let nodes: Vec<Node> = (1..=NODES).map(|n| boot(&switch, n, server_port)).collect();
    for (i, node) in nodes.iter().enumerate() {
        let line = node.vm.wait_ready(BOOT_TIMEOUT)?;
        let n = i as u32 + 1;
        assert!(
            line.contains(&format!("addr={}", cluster_addr(n))),
            "{line}"
        );
        eprintln!(
            "update: node{n} netbooted in {:.1}s",
            node.vm.uptime().as_secs_f64()
        );
    }
    let apis: Vec<String> = nodes.iter().map(|n| n.api.clone()).collect();
    for (i, api) in apis.iter().enumerate() {
        let v = wait_api(api, "up in its own table", Duration::from_secs(120), |v| {
            v["state"] == "up"
        });
        assert_eq!(
            v["image"].as_str(),
            Some(old.as_str()),
            "node {}: {v}",
            i + 1
        );
    }
    // Everyone sees everyone.
    let t0 = Instant::now();
    while !apis.iter().all(|a| {
        drove::status::fetch_timeout(a, Duration::from_secs(2))
            .map(|(t, _)| {
                t.nodes
                    .iter()
                    .filter(|n| n.state == drove::status::State::Up)
                    .count()
                    == NODES as usize
            })
            .unwrap_or(false)
    }) {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the nodes do not all see each other up"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Jobs: two on node 1 (one pinned), one on node 2.
    let key_file = dir.join("cluster.key");
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    let expected = Command::new("/bin/busybox")
        .args(["awk", PROGRAM])
        .output()
        .unwrap()
        .stdout;
    let cmd: Vec<String> = vec!["/bin/busybox".into(), "awk".into(), PROGRAM.into()];
    let mut ids = Vec::new();
    for (node, pin) in [(0usize, false), (0, true), (1, false)] {
        let job = Agent::new(&apis[node], Some(key.clone()))
            .launch_pinned(&cmd, pin)
            .unwrap();
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    eprintln!("update: jobs {ids:?} started");
    let followers: Vec<_> = ids
        .iter()
        .map(|id| {
            let (apis, key, id) = (apis.clone(), key.clone(), id.clone());
            std::thread::spawn(move || follow(apis, key, id))
        })
        .collect();

    // A changed overlay: a new image id; the server hands it out from now on.
    let new = build(&drove, &dir, "v2");
    assert_ne!(
        old, new,
        "the rebuild with a changed overlay kept the image id"
    );
    eprintln!("update: new image {new}");

    let t0 = Instant::now();
    let mut update = Command::new(&drove);
    update
        .arg("update")
        .args(["--server", &format!("http://127.0.0.1:{server_port}")])
        .arg("--key")
        .arg(&key_file);
    for (i, api) in apis.iter().enumerate() {
        update.args(["--cluster", api]);
        update.args(["--node-api", &format!("{}={api}", i + 1)]);
    }
    let result = update.output().unwrap();
    let took = t0.elapsed();
    let progress = String::from_utf8_lossy(&result.stderr).into_owned();
    eprintln!("{progress}{}", String::from_utf8_lossy(&result.stdout));
    let jobs_lines = Arc::new(Mutex::new(String::new()));
    for node in &nodes {
        for l in node
            .vm
            .console_lines()
            .iter()
            .filter(|l| l.contains("jobs:"))
        {
            jobs_lines
                .lock()
                .unwrap()
                .push_str(&format!("{}: {l}\n", node.vm.name()));
        }
    }
    assert!(
        result.status.success(),
        "drove update failed ({:?}):\n{progress}\n{}",
        result.status,
        jobs_lines.lock().unwrap()
    );
    eprintln!("update: drove update took {:.1}s", took.as_secs_f64());

    // Every node on the new image, up, after a second boot.
    let mut seen = BTreeMap::new();
    for (i, api) in apis.iter().enumerate() {
        let v = wait_api(api, "on the new image", Duration::from_secs(60), |v| {
            v["image"] == new.as_str() && v["state"] == "up"
        });
        seen.insert(i + 1, v["image"].clone());
        let readies = nodes[i]
            .vm
            .console_lines()
            .iter()
            .filter(|l| l.contains("drove: ready node="))
            .count();
        assert_eq!(readies, 2, "node {} booted {readies} times", i + 1);
    }
    eprintln!("update: images after the update {seen:?}");
    for line in ["node1 [1/3]", "node2 [2/3]", "node3 [3/3]"] {
        let (name, tag) = line.split_once(' ').unwrap();
        assert!(
            progress.contains(&format!("{tag} {name}: back on image {new}")),
            "no progress line for {name}:\n{progress}"
        );
    }

    // Every job ends with the output of an unmoved run.
    for (id, f) in ids.iter().zip(followers) {
        let (out, job) = f.join().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expected),
            "job {id}: output differs from an unmoved run ({job})"
        );
        assert_eq!(job["exit_code"].as_i64(), Some(0), "job {id}: {job}");
        eprintln!(
            "update: job {id} done on node {} after {} migration(s)",
            job["node"], job["migrations"]
        );
    }
    drop(nodes);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
