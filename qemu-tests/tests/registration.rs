//! Registration with the image server (issue 5): VMs booted one after another from the floppy,
//! through an in-process `drove serve` with a node registry on 127.0.0.1 (the guests reach it as
//! 10.0.2.2 through QEMU's user-mode network), get node1, node2, node3 in boot order. The server
//! is then stopped and started again on the same port and state file: node2 booting again gets
//! node2 back, and a new PC gets node4. One VM at a time, 512 MiB, each powered off once ready.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::init_logging;
use drove_qemu_tests::{
    drove_bin, run, workspace_root, Artifacts, Error, Nic, VmBuilder, BOOT_TIMEOUT, EXIT_TIMEOUT,
};

fn mac(i: u32) -> String {
    format!("52:54:00:5e:00:{i:02x}")
}

fn start_server(pxe: &Path, state: &Path, port: u16) -> drove::serve::Handle {
    drove::serve::bind(pxe, format!("127.0.0.1:{port}").parse().unwrap())
        .unwrap_or_else(|e| panic!("{e}"))
        .with_registry(state)
        .unwrap_or_else(|e| panic!("{e}"))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Boots the floppy on a VM with `mac`, waits for the ready line, checks the name the node took
/// and that it says it registered, and powers it off.
fn boot(floppy: &Path, label: &str, mac: &str, expect: &str, new: bool) -> Result<(), Error> {
    let started = Instant::now();
    let vm = VmBuilder::new(&format!("register-{label}"))?
        .memory_mib(512)
        .floppy(floppy)
        .nic(Nic::user().model("e1000").mac(mac))
        .spawn()?;
    let line = vm.wait_ready(BOOT_TIMEOUT)?;
    let lines = vm.console_lines();
    let registered = lines
        .iter()
        .find(|l| l.contains("registered with http://10.0.2.2:"))
        .unwrap_or_else(|| panic!("vm {label}: no registration line:\n{}", vm.report()));
    assert!(
        line.contains(&format!("drove: ready node={expect} ")),
        "vm {label} ({mac}): {line:?}; {registered}"
    );
    assert!(
        registered.contains(&format!(" as {expect} "))
            && registered.contains(if new { "new" } else { "known MAC" }),
        "vm {label}: {registered}"
    );
    vm.poweroff(EXIT_TIMEOUT)?;
    eprintln!(
        "vm {label} ({mac}): {expect} after {:.1}s: {registered}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn nodes_json(drove: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(drove)
        .arg("nodes")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "drove nodes {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn nodes_are_numbered_in_boot_order_across_a_server_restart() -> Result<(), Error> {
    init_logging();
    let media = Artifacts::load()?;
    let drove = drove_bin()?;
    let pxe = media.pxe_dir()?;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("nodes.json");
    let server = start_server(&pxe, &state, 0);
    let port = server.local_addr().port();

    let floppy_dir = work.path().join("floppy");
    run(Command::new(&drove)
        .current_dir(workspace_root())
        .args(["build", "--output", "floppy", "--server"])
        .arg(format!("http://10.0.2.2:{port}"))
        .arg("--out")
        .arg(&floppy_dir))?;
    let floppy = floppy_dir.join("floppy.img");

    for i in 1..=3 {
        boot(
            &floppy,
            &format!("pc{i}"),
            &mac(i),
            &format!("node{i}"),
            true,
        )?;
    }
    let listed = nodes_json(&drove, &["--server", &format!("http://127.0.0.1:{port}")]);
    let macs: Vec<&str> = listed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["mac"].as_str().unwrap())
        .collect();
    assert_eq!(macs, [mac(1), mac(2), mac(3)], "{listed:#}");
    let first = &listed["nodes"][0];
    assert_eq!(first["hardware"]["nics"][0]["mac"], mac(1), "{first:#}");
    assert_eq!(first["hardware"]["nics"][0]["driver"], "e1000", "{first:#}");
    assert!(
        first["hardware"]["mem_bytes"].as_u64().unwrap() > 256 << 20,
        "{first:#}"
    );
    assert!(
        first["hardware"]["cores"].as_u64().unwrap() >= 1,
        "{first:#}"
    );

    // Restart: a new server on the same port (the floppy names it) and the same state file.
    server.stop().unwrap_or_else(|e| panic!("{e}"));
    let server = start_server(&pxe, &state, port);
    boot(&floppy, "pc2-again", &mac(2), "node2", false)?;
    boot(&floppy, "pc4", &mac(4), "node4", true)?;
    drop(server);

    // The state file, read with the server stopped, has all four; node2 booted twice.
    let listed = nodes_json(&drove, &["--state", state.to_str().unwrap()]);
    let nodes = listed["nodes"].as_array().unwrap();
    let summary: Vec<(u64, &str, u64)> = nodes
        .iter()
        .map(|n| {
            (
                n["number"].as_u64().unwrap(),
                n["mac"].as_str().unwrap(),
                n["boots"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, mac(1).as_str(), 1),
            (2, mac(2).as_str(), 2),
            (3, mac(3).as_str(), 1),
            (4, mac(4).as_str(), 1)
        ],
        "{listed:#}"
    );
    let table = Command::new(&drove)
        .args(["nodes", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    eprintln!("{table}");
    assert!(table.starts_with("4 registered nodes\n"), "{table}");
    assert!(table.contains(&format!("4  node4  {}", mac(4))), "{table}");
    Ok(())
}

/// The server goes away after the node loaded its kernel: the registration fails within its
/// budget and the node comes up with its MAC-derived number (six digits), saying why. The server
/// back on the same port: the node registers late with the number it runs as, and the server
/// lists it under that number.
#[test]
fn a_server_that_is_gone_costs_the_boot_a_few_seconds_only() -> Result<(), Error> {
    init_logging();
    let media = Artifacts::load()?;
    let drove = drove_bin()?;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("nodes.json");
    let server = start_server(&media.pxe_dir()?, &state, 0);
    let port = server.local_addr().port();
    run(Command::new(&drove)
        .current_dir(workspace_root())
        .args(["build", "--output", "floppy", "--server"])
        .arg(format!("http://10.0.2.2:{}", server.local_addr().port()))
        .arg("--out")
        .arg(work.path()))?;
    let vm = VmBuilder::new("register-gone")?
        .memory_mib(512)
        .floppy(work.path().join("floppy.img"))
        .nic(Nic::user().model("e1000").mac(mac(9)))
        .spawn()?;
    vm.wait_for_line("starting as PID 1", BOOT_TIMEOUT)?;
    server.stop().unwrap_or_else(|e| panic!("{e}"));
    let failed = vm.wait_for_line("registration with the image server failed", BOOT_TIMEOUT)?;
    let at = Instant::now();
    let line = vm.wait_ready(BOOT_TIMEOUT)?;
    let after = at.elapsed();
    let re = regex::Regex::new(r"drove: ready node=node\d{6} ").unwrap();
    assert!(re.is_match(&line), "{line}; {failed}");
    assert!(failed.contains("from the MAC"), "{failed}");
    eprintln!(
        "{failed}\n{line} ({:.1}s after the failure)",
        after.as_secs_f64()
    );
    let name = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("node="))
        .unwrap()
        .to_owned();
    let server = start_server(&media.pxe_dir()?, &state, port);
    // Late tries come 10 s, then 30 s apart: two of them fit well inside the boot timeout.
    let late = vm.wait_for_line("registered late with", BOOT_TIMEOUT)?;
    assert!(
        late.contains(&format!(" as {name} ")) && late.contains("the name stays"),
        "{late}"
    );
    let listed = nodes_json(&drove, &["--server", &format!("http://127.0.0.1:{port}")]);
    let nodes = listed["nodes"].as_array().unwrap();
    assert!(
        nodes.len() == 1 && nodes[0]["name"] == name.as_str() && nodes[0]["mac"] == mac(9),
        "{listed}"
    );
    eprintln!("{late}");
    vm.poweroff(EXIT_TIMEOUT)?;
    server.stop().unwrap_or_else(|e| panic!("{e}"));
    Ok(())
}
