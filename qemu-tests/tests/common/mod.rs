//! Test-only helpers shared by the integration tests; the stand-in node itself (distro kernel +
//! busybox initramfs) lives in `drove_qemu_tests::standin`.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use drove_qemu_tests::{run, Error, Vm, EXIT_TIMEOUT};

pub use drove_qemu_tests::standin::STANDIN_CMDLINE;

/// The newest distro kernel in /boot.
pub fn standin_kernel() -> PathBuf {
    drove_qemu_tests::standin::standin_kernel().unwrap()
}

/// Writes `files` (path in the archive, contents, mode) as a gzip'd newc cpio to `dest`.
pub fn cpio(dest: &Path, files: &[(&str, &[u8], u32)]) {
    drove_qemu_tests::standin::cpio(dest, files).unwrap();
}

/// The stand-in's base initramfs (`node0`) and an overlay segment renaming it to `node1`.
pub fn standin_initrds(dir: &Path) -> (PathBuf, PathBuf) {
    drove_qemu_tests::standin::standin_initrds(dir).unwrap()
}

/// Waits for the ready line, checks the node name and address, types `poweroff` and waits for a
/// clean exit; prints the timings.
/// `node` is the expected node name, or `None` for any.
pub fn ready_then_poweroff(vm: &Vm, node: Option<&str>, timeout: Duration) -> Result<(), Error> {
    let start = Instant::now();
    let line = vm.wait_ready(timeout)?;
    let ready = vm.uptime();
    let re = regex::Regex::new(r"drove: ready node=(\S+) addr=(\S+)").unwrap();
    let caps = re
        .captures(&line)
        .unwrap_or_else(|| panic!("vm {}: malformed ready line {line:?}", vm.name()));
    if let Some(node) = node {
        assert_eq!(&caps[1], node, "vm {}: ready line {line:?}", vm.name());
    }
    // QEMU's user-mode DHCP gives the first guest 10.0.2.15.
    assert_eq!(
        &caps[2],
        "10.0.2.15",
        "vm {}: ready line {line:?}",
        vm.name()
    );
    vm.poweroff(EXIT_TIMEOUT)?;
    eprintln!(
        "vm {}: ready after {:.1}s, QEMU exited after {:.1}s (waited {:.1}s)",
        vm.name(),
        ready.as_secs_f64(),
        vm.uptime().as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A floppy made by hand the way the builder's is meant to be (FAT12, syslinux, `ipxe.lkrn` with a
/// script as INITRD that DHCPs and chains `<server>boot.ipxe`), with mtools and syslinux.
pub fn standin_floppy(dest: &Path, server: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("syslinux.cfg");
    std::fs::write(
        &cfg,
        "SERIAL 0 115200\nDEFAULT ipxe\nLABEL ipxe\n  KERNEL ipxe.lkrn\n  INITRD boot.ips\n",
    )
    .unwrap();
    let script = dir.path().join("boot.ips");
    std::fs::write(&script, format!("#!ipxe\ndhcp\nchain {server}boot.ipxe\n")).unwrap();
    let image = dest.to_str().unwrap();
    run(Command::new("mformat").args(["-C", "-f", "1440", "-i", image, "::"])).unwrap();
    run(Command::new("syslinux").args(["--install", image])).unwrap();
    run(Command::new("mcopy")
        .args(["-i", image])
        .arg("/usr/lib/ipxe/ipxe.lkrn")
        .arg(&cfg)
        .arg(&script)
        .arg("::"))
    .unwrap();
}

/// A stand-in `out/pxe`: kernel, base initramfs, overlay and a `boot.ipxe` with relative URLs.
pub fn standin_pxe_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(standin_kernel(), dir.join("vmlinuz")).unwrap();
    standin_initrds(dir);
    std::fs::write(
        dir.join("boot.ipxe"),
        format!("#!ipxe\nkernel vmlinuz {STANDIN_CMDLINE}\ninitrd initramfs.img\ninitrd overlay-standin.img\nboot\n"),
    )
    .unwrap();
}

/// Shows `drove serve`'s access log (target `drove::serve`) in the test's captured output;
/// `RUST_LOG` overrides the filter.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("drove=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
