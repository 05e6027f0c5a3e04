//! `drove serve --proxy-dhcp` (issue 5 item 3) on a site whose DHCP server gives addresses only:
//! on one private vde segment, network namespace A runs busybox udhcpd (addresses, no boot
//! options), namespace B runs the real `drove serve --proxy-dhcp drove0` (HTTP + dnsmasq as
//! proxy-DHCP and TFTP). A diskless VM booting from its NIC (QEMU's NIC ROM is iPXE) must get
//! its address from A, its boot script from B, and reach `drove: ready`. TFTP (what a classic
//! PXE ROM fetches first) is checked from A with busybox tftp: it must hand out undionly.kpxe.
//!
//! Needs root (namespaces, ports 67/69/4011 inside them), dnsmasq and busybox.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drove_qemu_tests::{
    drove_bin, workspace_root, Artifacts, Error, HostNetns, Nic, VdeSwitch, VmBuilder, BOOT_TIMEOUT,
};

/// A child killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SIGTERM first: drove stops its dnsmasq on the way out.
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while matches!(self.0.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn addr(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 20, 0, last)
}

#[test]
fn classic_pxe_site_boots_through_proxy_dhcp() -> Result<(), Error> {
    common::init_logging();
    let media = Artifacts::load()?;
    let pxe = media.pxe_dir()?;
    let work = workspace_root()
        .join("target/tmp/drove-proxy-dhcp")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();

    let switch = VdeSwitch::start()?;
    let site = HostNetns::attach(&switch, addr(2), 24)?;
    let server = HostNetns::attach(&switch, addr(1), 24)?;

    // The site's DHCP server: addresses only.
    let udhcpd_conf = work.join("udhcpd.conf");
    std::fs::write(
        &udhcpd_conf,
        format!(
            "start {}\nend {}\ninterface {}\nlease_file {}\noption subnet 255.255.255.0\n",
            addr(100),
            addr(150),
            drove_qemu_tests::hostnet::TAP,
            work.join("udhcpd.leases").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("busybox");
    cmd.args(["udhcpd", "-f"])
        .arg(&udhcpd_conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("udhcpd.log")).unwrap());
    let _udhcpd = Killed(site.command(&mut cmd).spawn().unwrap());

    // drove serve with proxy-DHCP, in the server's namespace.
    let log = work.join("serve.log");
    let mut cmd = Command::new(drove_bin()?);
    cmd.arg("serve")
        .arg("--dir")
        .arg(&pxe)
        .args(["--listen", "0.0.0.0:8080", "--proxy-dhcp"])
        .arg(drove_qemu_tests::hostnet::TAP)
        .arg("--state")
        .arg(work.join("nodes.json"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(work.join("serve.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    let _serve = Killed(server.command(&mut cmd).spawn().unwrap());
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let t0 = Instant::now();
    while !read_log().contains("drove: proxy-DHCP + TFTP on") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "drove serve --proxy-dhcp did not start:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // TFTP, as a classic PXE ROM would use it.
    let got = work.join("undionly.kpxe");
    let mut cmd = Command::new("busybox");
    cmd.args(["tftp", "-g", "-r", "undionly.kpxe", "-l"])
        .arg(&got)
        .arg(addr(1).to_string());
    let status = site.command(&mut cmd).status().unwrap();
    assert!(status.success(), "tftp failed:\n{}", read_log());
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read(pxe.join("undionly.kpxe")).unwrap(),
        "TFTP served another undionly.kpxe"
    );

    // A diskless PC booting from its NIC.
    let vm = VmBuilder::new("proxy-dhcp")?
        .memory_mib(512)
        .boot_order("n")
        .nic(Nic::vde(&switch).mac("52:54:00:6e:00:01"))
        .spawn()?;
    let line = vm
        .wait_ready(BOOT_TIMEOUT)
        .inspect_err(|_| eprintln!("drove serve's log:\n{}", read_log()))?;
    let dhcp = read_log();
    eprintln!("{line}\n--- dnsmasq/drove serve log:\n{dhcp}");
    assert!(
        line.contains("addr=10.20.0.1") && !line.contains("addr=10.20.0.1 "),
        "the node's address must come from udhcpd's pool 10.20.0.100-150: {line}"
    );
    assert!(
        dhcp.contains("proxy"),
        "dnsmasq never answered in proxy mode:\n{dhcp}"
    );
    Ok(())
}
