//! Boot tests: every medium in `out/` (from `make image`) boots a node to the agent's
//! `drove: ready node=… addr=10.0.2.15` line, and `poweroff` typed on its console ends QEMU cleanly.
//! Run by `make qemu-test` / `make test`; without built media they fail saying to run `make image`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{init_logging, ready_then_poweroff};
use drove_qemu_tests::{
    drove_bin, run, workspace_root, Artifacts, Drive, Error, Firmware, Nic, VmBuilder, BOOT_TIMEOUT,
};

/// `-kernel` + `-initrd` + `-append` from the manifest; the initrds (base, then overlays) are
/// concatenated into one file, which also checks that the kernel unpacks concatenated segments.
#[test]
fn direct_kernel_and_initramfs() -> Result<(), Error> {
    let media = Artifacts::load()?;
    let builder = VmBuilder::new("boot-direct")?;
    let initrd = media.concat_initrds(&builder.dir().join("initrd-all.img"))?;
    let vm = builder
        .kernel(media.kernel()?, Some(initrd), media.cmdline())
        .nic(Nic::user())
        .spawn()?;
    ready_then_poweroff(&vm, None, BOOT_TIMEOUT)
}

/// `disk.img` under SeaBIOS: gptmbr → syslinux on the ESP → kernel + initrds.
#[test]
fn disk_image_bios() -> Result<(), Error> {
    let media = Artifacts::load()?;
    let vm = VmBuilder::new("boot-disk-bios")?
        .drive(Drive::raw(media.disk_image()?))
        .nic(Nic::user())
        .spawn()?;
    ready_then_poweroff(&vm, None, BOOT_TIMEOUT)
}

/// `disk.img` under OVMF (q35, read-only CODE + a per-VM copy of VARS): systemd-boot as
/// `\EFI\BOOT\BOOTX64.EFI` → kernel + initrds.
#[test]
fn disk_image_uefi() -> Result<(), Error> {
    let media = Artifacts::load()?;
    let vm = VmBuilder::new("boot-disk-uefi")?
        .firmware(Firmware::ovmf())
        .drive(Drive::raw(media.disk_image()?))
        .nic(Nic::user())
        .spawn()?;
    ready_then_poweroff(&vm, None, BOOT_TIMEOUT)
}

/// A floppy built for this test with the server URL of an in-process `drove serve` of `out/pxe`
/// (on 127.0.0.1, which QEMU's user-mode network shows the guest as 10.0.2.2): SeaBIOS → syslinux
/// → iPXE (e1000) → DHCP from QEMU → `boot.ipxe` → kernel + initrds over HTTP.
#[test]
fn floppy_netboot_from_serve() -> Result<(), Error> {
    init_logging();
    let media = Artifacts::load()?;
    let drove = drove_bin()?;
    let server = drove::serve::bind(&media.pxe_dir()?, "127.0.0.1:0".parse().unwrap())
        .unwrap_or_else(|e| panic!("{e}"))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let builder = VmBuilder::new("boot-floppy")?;
    let floppy_dir = builder.dir().join("floppy");
    run(Command::new(&drove)
        .current_dir(workspace_root())
        .args(["build", "--output", "floppy", "--server"])
        .arg(format!("http://10.0.2.2:{}", server.local_addr().port()))
        .arg("--out")
        .arg(&floppy_dir))?;
    let floppy = floppy_dir.join("floppy.img");
    let size = std::fs::metadata(&floppy)
        .map_err(|source| Error::Io {
            what: "drove build left no",
            path: floppy.clone(),
            source,
        })?
        .len();
    assert!(
        size <= 1_474_560,
        "{} is {size} bytes, more than a 1.44 MB floppy",
        floppy.display()
    );
    let vm = builder
        .floppy(&floppy)
        .nic(Nic::user().model("e1000"))
        .spawn()?;
    ready_then_poweroff(&vm, None, BOOT_TIMEOUT)
}
