//! `make qemu-cluster`: a live local cluster for a person. Builds a cluster image with `drove`
//! (static addresses 10.10.0.N on a private vde segment, its own cluster key), boots N nodes
//! (default 3), prints `drove status` of node 1 and where each node's API and dashboard are on the
//! host's loopback, and runs until Ctrl-C (or SIGTERM), which kills every VM and the switch.
//!
//! Usage: `qemu-cluster [--nodes N] [--dir DIR]`; DIR (default `target/qemu-cluster`) keeps the
//! config, the cluster key and the image between runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use drove::status::{render, State, Style};
use drove_qemu_tests::cluster::{cluster_addr, cluster_config};
use drove_qemu_tests::{accel, drove_bin, workspace_root, Cluster, ClusterImage, Error};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn usage() -> ! {
    eprintln!("usage: qemu-cluster [--nodes N (1-9, default 3)] [--dir DIR (default target/qemu-cluster)]");
    std::process::exit(2);
}

fn main() {
    let mut nodes = 3u32;
    let mut dir = workspace_root().join("target/qemu-cluster");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nodes" => {
                nodes = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=9).contains(n))
                    .unwrap_or_else(|| usage())
            }
            "--dir" => dir = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    if let Err(e) = run(nodes, &dir) {
        eprintln!("qemu-cluster: error: {e:?}");
        std::process::exit(1);
    }
}

fn run(nodes: u32, dir: &std::path::Path) -> Result<(), Error> {
    let drove = drove_bin()?;
    eprintln!(
        "qemu-cluster: building a {nodes}-node image in {}",
        dir.display()
    );
    let image = ClusterImage::build(&drove, dir, &cluster_config(nodes, nodes))?;
    eprintln!(
        "qemu-cluster: booting {nodes} nodes ({:?}); Ctrl-C during boot stops everything",
        accel()
    );
    let started = Instant::now();
    // Until the handler is installed, Ctrl-C kills this process and the VMs die with it
    // (parent-death signal).
    let cluster = Cluster::start_named("qemu-cluster", nodes, &image)?;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    eprintln!(
        "qemu-cluster: all {nodes} ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let all: Vec<u32> = (1..=nodes).collect();
    let node1 = cluster.api(1)?.to_string();
    match cluster.wait_until(1, Duration::from_secs(60), "every node up", |t| {
        all.iter()
            .all(|n| t.node(*n).is_some_and(|node| node.state == State::Up))
    }) {
        Ok((table, after)) => {
            println!(
                "\n$ drove status --node {node1}      (all up {:.1}s after every API answered)",
                after.as_secs_f64()
            );
            print!("{}", render(&table, &node1, Style::for_stdout()));
        }
        Err(e) => println!("\nnode 1 does not show every node up yet: {e:?}"),
    }
    println!();
    for n in &all {
        let node = cluster.node(*n)?;
        let api = node.api;
        println!(
            "node{n}  {}  API http://{api}/api/cluster  dashboard http://{api}/  console {}",
            cluster_addr(*n),
            node.vm.log_path().display()
        );
    }
    println!(
        "\nMore: drove status --node {node1} --watch   |   curl http://{node1}/api/node   |   curl -N http://{node1}/api/events\n\
         Cluster key (for changing endpoints, `Authorization: Bearer <key>`): {}\n\
         Ctrl-C stops the cluster.",
        image.key_file.display()
    );

    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("\nqemu-cluster: stopping {} VMs", cluster.running().len());
    drop(cluster);
    eprintln!("qemu-cluster: stopped");
    Ok(())
}
