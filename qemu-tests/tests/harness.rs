//! Self-tests of the VM harness against a stand-in node (distro kernel + busybox initramfs), so
//! the harness is known to work independently of the builder's media.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use drove_qemu_tests::{Error, Nic, VdeSwitch, VmBuilder, BOOT_TIMEOUT};

/// Direct kernel boot with two initrd segments concatenated into one file: the overlay's node name
/// must win. Also checks that a wait that cannot succeed fails at its deadline with a report.
#[test]
fn standin_direct_kernel() -> Result<(), Error> {
    let builder = VmBuilder::new("standin-direct")?;
    let (base, overlay) = standin_initrds(builder.dir());
    let initrd = builder.dir().join("initrd-all.img");
    drove_qemu_tests::concat_files(&[base, overlay], &initrd)?;
    let vm = builder
        .kernel(standin_kernel(), Some(initrd), STANDIN_CMDLINE)
        .nic(Nic::user())
        .spawn()?;

    vm.wait_for_line("Linux version", BOOT_TIMEOUT)?;
    let err = vm
        .wait_for_line("this line never comes", Duration::from_millis(300))
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Timeout { .. }), "{msg}");
    assert!(msg.contains(&vm.log_path().display().to_string()), "{msg}");
    assert!(
        msg.contains("console lines ---\n["),
        "the report shows the console tail: {msg}"
    );

    vm.keep_dir(false);
    ready_then_poweroff(&vm, Some("node1"), BOOT_TIMEOUT)?;
    let log = std::fs::read_to_string(vm.log_path()).unwrap();
    assert!(
        log.contains("drove: ready node=node1"),
        "console.log has the raw console"
    );
    Ok(())
}

/// Dropping a running VM kills QEMU; a wait on a VM whose QEMU died fails at once, not at the
/// deadline.
#[test]
fn drop_kills_qemu() -> Result<(), Error> {
    let builder = VmBuilder::new("standin-drop")?;
    let (base, _) = standin_initrds(builder.dir());
    let vm = builder
        .kernel(standin_kernel(), Some(base), STANDIN_CMDLINE)
        .spawn()?;
    vm.wait_ready(BOOT_TIMEOUT)?;
    let pid = vm.pid();
    vm.kill();
    let start = std::time::Instant::now();
    let err = vm.wait_for_line("never", BOOT_TIMEOUT).unwrap_err();
    assert!(matches!(err, Error::Exited { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30));
    vm.keep_dir(false);
    drop(vm);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} still there"
    );
    Ok(())
}

/// Dropping a VM that is still booting kills it too (no wait at all).
#[test]
fn drop_while_booting() -> Result<(), Error> {
    let builder = VmBuilder::new("standin-early-drop")?;
    let vm = builder
        .kernel(standin_kernel(), None, STANDIN_CMDLINE)
        .spawn()?;
    let pid = vm.pid();
    drop(vm);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} still there"
    );
    Ok(())
}

/// The floppy path end to end with stand-ins: a hand-made syslinux + iPXE floppy netboots the
/// stand-in kernel and initramfs from `drove serve` (in-process, on 127.0.0.1) through QEMU's
/// user-mode network (the guest sees the host's loopback as 10.0.2.2).
#[test]
fn standin_floppy_netboot_from_serve() -> Result<(), Error> {
    init_logging();
    let builder = VmBuilder::new("standin-floppy")?;
    let pxe = builder.dir().join("pxe");
    standin_pxe_dir(&pxe);
    let server = drove::serve::bind(&pxe, "127.0.0.1:0".parse().unwrap())
        .unwrap()
        .spawn()
        .unwrap();
    let floppy = builder.dir().join("floppy.img");
    standin_floppy(
        &floppy,
        &format!("http://10.0.2.2:{}/", server.local_addr().port()),
    );
    assert!(std::fs::metadata(&floppy).unwrap().len() <= 1_474_560);
    let vm = builder
        .floppy(&floppy)
        .nic(Nic::user().model("e1000"))
        .spawn()?;
    ready_then_poweroff(&vm, Some("node1"), BOOT_TIMEOUT)?;
    Ok(())
}

/// A vde switch comes up, gives a socket QEMU can use, and goes away on drop.
#[test]
fn vde_switch_starts_and_stops() -> Result<(), Error> {
    let switch = VdeSwitch::start()?;
    assert!(switch.sock().join("ctl").exists());
    let builder = VmBuilder::new("standin-vde")?;
    let (base, _) = standin_initrds(builder.dir());
    let vm = builder
        .kernel(standin_kernel(), Some(base), STANDIN_CMDLINE)
        .nic(Nic::vde(&switch).mac("52:54:00:00:00:01"))
        .spawn()?;
    vm.wait_ready(BOOT_TIMEOUT)?;
    vm.poweroff(drove_qemu_tests::EXIT_TIMEOUT)?;
    let dir = switch.dir().to_owned();
    drop(switch);
    assert!(!dir.exists());
    Ok(())
}
