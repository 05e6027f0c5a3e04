//! `drove serve --proxy-dhcp IFACE|NET/LEN`: dnsmasq as proxy-DHCP + TFTP beside the image
//! server, for sites whose PCs only do classic PXE. The site's own DHCP server keeps handing out
//! addresses; dnsmasq answers the same DISCOVERs in *proxy* mode with boot information only:
//!
//! ```text
//! PC's PXE ROM --(proxy DHCP + TFTP)--> undionly.kpxe (BIOS) / ipxe.efi (UEFI) from the pxe dir
//! iPXE         --(proxy DHCP, user class "iPXE")--> http://<server>:<port>/boot.ipxe
//! ```
//!
//! The plan (interface, network, boot URL, config text) is computed as data and unit-tested;
//! [`start`] writes the config into a state directory and runs Debian's `dnsmasq` in the
//! foreground through [`crate::cmd`]; the returned [`Running`] stops it when dropped, so it ends
//! with the server.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmd::Cmd;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--proxy-dhcp {spec:?}: {why}")]
    Spec { spec: String, why: String },
    #[error("--proxy-dhcp: cannot list this host's interfaces")]
    Interfaces { source: std::io::Error },
    #[error("--proxy-dhcp: {path}: {what}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--proxy-dhcp: dnsmasq rejects the configuration {conf}")]
    Check {
        conf: PathBuf,
        source: crate::cmd::Error,
    },
    #[error("--proxy-dhcp: cannot start dnsmasq (install Debian's dnsmasq-base: scripts/install-deps.sh does)")]
    Start { source: crate::cmd::Error },
    #[error("--proxy-dhcp: dnsmasq ended at start ({status}); it needs root (ports 67, 69, 4011) and a free port 67 on {iface}, see its messages above")]
    Ended { status: String, iface: String },
}

/// One IPv4 address of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceAddr {
    pub iface: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl IfaceAddr {
    fn contains(&self, net: Ipv4Addr, prefix_len: u8) -> bool {
        prefix_len == self.prefix_len && network(self.addr, prefix_len) == net
    }
}

fn mask(prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0),
    )
}

fn network(addr: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) & u32::from(mask(prefix_len)))
}

/// What dnsmasq is to do, decided before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The interface facing the nodes' LAN, and this host's address there.
    pub iface: IfaceAddr,
    /// TFTP root: the served pxe directory (absolute), holding undionly.kpxe and ipxe.efi.
    pub tftp_root: PathBuf,
    /// What iPXE chains to.
    pub boot_url: String,
    /// dnsmasq's lease file (proxy mode hands out no leases, but dnsmasq opens one).
    pub lease_file: PathBuf,
}

/// Chooses the interface for `spec` (an interface name, or a network `A.B.C.D/LEN` that one of
/// `addrs` is on), and the boot URL from the HTTP server's `listen` address (its own address,
/// or the interface's when it listens on every address).
pub fn plan(
    spec: &str,
    addrs: &[IfaceAddr],
    listen: SocketAddr,
    pxe_dir: &Path,
    state_dir: &Path,
) -> Result<Plan, Error> {
    let err = |why: String| Error::Spec {
        spec: spec.to_owned(),
        why,
    };
    let iface = match spec.split_once('/') {
        Some((net, len)) => {
            let net: Ipv4Addr = net
                .parse()
                .map_err(|_| err(format!("{net:?} is not an IPv4 network address")))?;
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| (8..=30).contains(l))
                .ok_or_else(|| err(format!("prefix length {len:?} must be 8..30")))?;
            if network(net, len) != net {
                return Err(err(format!(
                    "{net} is not the network address of a /{len} (that is {})",
                    network(net, len)
                )));
            }
            addrs
                .iter()
                .find(|a| a.contains(net, len))
                .cloned()
                .ok_or_else(|| {
                    err(format!(
                        "no interface of this host has an address in {net}/{len} (have: {})",
                        list(addrs)
                    ))
                })?
        }
        None => addrs
            .iter()
            .find(|a| a.iface == spec)
            .cloned()
            .ok_or_else(|| {
                err(format!(
                    "no interface {spec} with an IPv4 address (have: {})",
                    list(addrs)
                ))
            })?,
    };
    if iface.addr.is_loopback() {
        return Err(err("the loopback interface has no PCs on it".into()));
    }
    let host = match listen.ip() {
        std::net::IpAddr::V4(a) if a.is_unspecified() => iface.addr,
        std::net::IpAddr::V4(a) if a == iface.addr => a,
        ip => {
            return Err(err(format!(
                "the HTTP server listens on {ip}, not on {}'s address {}: nodes there could not load boot.ipxe (use --listen 0.0.0.0:PORT or {}:PORT)",
                iface.iface, iface.addr, iface.addr
            )))
        }
    };
    let tftp_root = std::path::absolute(pxe_dir).map_err(|source| Error::Io {
        what: "cannot resolve",
        path: pxe_dir.to_owned(),
        source,
    })?;
    Ok(Plan {
        iface,
        tftp_root,
        boot_url: format!("http://{host}:{}/boot.ipxe", listen.port()),
        lease_file: state_dir.join("dnsmasq.leases"),
    })
}

fn list(addrs: &[IfaceAddr]) -> String {
    if addrs.is_empty() {
        return "none".into();
    }
    addrs
        .iter()
        .map(|a| format!("{} {}/{}", a.iface, a.addr, a.prefix_len))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The dnsmasq configuration for `plan`.
pub fn conf(plan: &Plan) -> String {
    let net = network(plan.iface.addr, plan.iface.prefix_len);
    let url = &plan.boot_url;
    format!(
        r#"# written by drove serve --proxy-dhcp: proxy-DHCP + TFTP for classic PXE
# No DNS: dnsmasq answers DHCP (proxy: boot information only, no addresses) and TFTP.
port=0
interface={iface}
bind-interfaces
dhcp-range={net},proxy,{mask}
dhcp-leasefile={leases}
enable-tftp
tftp-root={root}
# iPXE says so (option 175, user class "iPXE"): it gets the boot script, not iPXE again.
dhcp-match=set:ipxe,175
dhcp-userclass=set:ipxe,iPXE
pxe-service=tag:!ipxe,x86PC,"drove (BIOS)",undionly.kpxe
pxe-service=tag:!ipxe,x86-64_EFI,"drove (UEFI)",ipxe.efi
pxe-service=tag:!ipxe,BC_EFI,"drove (UEFI)",ipxe.efi
pxe-service=tag:ipxe,x86PC,"drove",{url}
pxe-service=tag:ipxe,x86-64_EFI,"drove",{url}
pxe-service=tag:ipxe,BC_EFI,"drove",{url}
pxe-prompt="drove netboot",0
log-dhcp
"#,
        iface = plan.iface.iface,
        mask = mask(plan.iface.prefix_len),
        leases = plan.lease_file.display(),
        root = plan.tftp_root.display(),
    )
}

/// This host's IPv4 interface addresses (getifaddrs).
pub fn host_addrs() -> Result<Vec<IfaceAddr>, Error> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(Error::Interfaces {
            source: std::io::Error::last_os_error(),
        });
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list getifaddrs returned; entries stay valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: both are sockaddrs of the family read first; AF_INET ones are sockaddr_in.
        unsafe {
            if i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET {
                continue;
            }
            let addr = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let nm = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                .to_string_lossy()
                .into_owned();
            out.push(IfaceAddr {
                iface: name,
                addr: Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                prefix_len: u32::from_be(nm.sin_addr.s_addr).count_ones() as u8,
            });
        }
    }
    // SAFETY: frees the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// dnsmasq running for a plan; stopped (and its state directory removed) on drop.
pub struct Running {
    pub plan: Plan,
    handle: duct::Handle,
    _state: tempfile::TempDir,
}

impl Running {
    /// Whether dnsmasq still runs.
    pub fn alive(&self) -> bool {
        matches!(self.handle.try_wait(), Ok(None))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.handle.kill();
    }
}

/// Plans for `spec` on this host, checks the config with `dnsmasq --test`, and starts dnsmasq in
/// the foreground (its log on stderr). Fails if it ends within its first second (a port taken,
/// not root).
pub fn start(spec: &str, listen: SocketAddr, pxe_dir: &Path) -> Result<Running, Error> {
    let state = tempfile::Builder::new()
        .prefix("drove-proxy-dhcp-")
        .tempdir()
        .map_err(|source| Error::Io {
            what: "cannot create a state directory",
            path: std::env::temp_dir(),
            source,
        })?;
    let plan = plan(spec, &host_addrs()?, listen, pxe_dir, state.path())?;
    let conf_path = state.path().join("dnsmasq.conf");
    std::fs::write(&conf_path, conf(&plan)).map_err(|source| Error::Io {
        what: "cannot write",
        path: conf_path.clone(),
        source,
    })?;
    let dnsmasq = |extra: &[&str]| {
        Cmd::new("dnsmasq")
            .arg(format!("--conf-file={}", conf_path.display()))
            .args(extra)
    };
    dnsmasq(&["--test"]).run().map_err(|source| match source {
        e @ crate::cmd::Error::NotFound { .. } => Error::Start { source: e },
        source => Error::Check {
            conf: conf_path.clone(),
            source,
        },
    })?;
    let handle = dnsmasq(&["--keep-in-foreground", "--log-facility=-"])
        .start()
        .map_err(|source| Error::Start { source })?;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(1) {
        if let Ok(Some(out)) = handle.try_wait() {
            return Err(Error::Ended {
                status: out.status.to_string(),
                iface: plan.iface.iface.clone(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "drove: proxy-DHCP + TFTP on {} ({}/{}): PXE ROMs get iPXE from {}, iPXE gets {}",
        plan.iface.iface,
        plan.iface.addr,
        plan.iface.prefix_len,
        plan.tftp_root.display(),
        plan.boot_url
    );
    Ok(Running {
        plan,
        handle,
        _state: state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<IfaceAddr> {
        vec![
            IfaceAddr {
                iface: "lo".into(),
                addr: Ipv4Addr::LOCALHOST,
                prefix_len: 8,
            },
            IfaceAddr {
                iface: "eth1".into(),
                addr: "192.168.7.10".parse().unwrap(),
                prefix_len: 24,
            },
        ]
    }

    fn any(port: u16) -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], port))
    }

    #[test]
    fn plan_by_interface_or_network() {
        let p = plan(
            "eth1",
            &addrs(),
            any(8080),
            Path::new("/srv/pxe"),
            Path::new("/s"),
        )
        .unwrap();
        assert_eq!(p.iface.iface, "eth1");
        assert_eq!(p.boot_url, "http://192.168.7.10:8080/boot.ipxe");
        let q = plan(
            "192.168.7.0/24",
            &addrs(),
            "192.168.7.10:9000".parse().unwrap(),
            Path::new("/srv/pxe"),
            Path::new("/s"),
        )
        .unwrap();
        assert_eq!(q.iface, p.iface);
        assert_eq!(q.boot_url, "http://192.168.7.10:9000/boot.ipxe");
        assert_eq!(q.lease_file, Path::new("/s/dnsmasq.leases"));
    }

    #[test]
    fn plan_refuses_what_cannot_work() {
        let e = |spec: &str, listen: SocketAddr| {
            plan(spec, &addrs(), listen, Path::new("/p"), Path::new("/s"))
                .unwrap_err()
                .to_string()
        };
        assert!(e("eth9", any(80)).contains(
            "no interface eth9 with an IPv4 address (have: lo 127.0.0.1/8, eth1 192.168.7.10/24)"
        ));
        assert!(e("10.0.0.0/24", any(80))
            .contains("no interface of this host has an address in 10.0.0.0/24"));
        assert!(e("192.168.7.1/24", any(80))
            .contains("not the network address of a /24 (that is 192.168.7.0)"));
        assert!(e("192.168.7.0/33", any(80)).contains("prefix length"));
        assert!(e("lo", any(80)).contains("loopback"));
        assert!(e("eth1", "127.0.0.1:8080".parse().unwrap()).contains("listens on 127.0.0.1"));
    }

    #[test]
    fn config_is_proxy_only_and_chains_to_the_server() {
        let p = plan(
            "eth1",
            &addrs(),
            any(8080),
            Path::new("/srv/pxe"),
            Path::new("/s"),
        )
        .unwrap();
        let c = conf(&p);
        for want in [
            "port=0\n",
            "interface=eth1\n",
            "bind-interfaces\n",
            "dhcp-range=192.168.7.0,proxy,255.255.255.0\n",
            "dhcp-leasefile=/s/dnsmasq.leases\n",
            "enable-tftp\n",
            "tftp-root=/srv/pxe\n",
            "dhcp-userclass=set:ipxe,iPXE\n",
            "pxe-service=tag:!ipxe,x86PC,\"drove (BIOS)\",undionly.kpxe\n",
            "pxe-service=tag:!ipxe,x86-64_EFI,\"drove (UEFI)\",ipxe.efi\n",
            "pxe-service=tag:ipxe,x86PC,\"drove\",http://192.168.7.10:8080/boot.ipxe\n",
            "pxe-prompt=\"drove netboot\",0\n",
        ] {
            assert!(c.contains(want), "{want:?} missing:\n{c}");
        }
        // Proxy mode only: no address pool, no router or DNS options, no DNS service.
        assert!(!c.contains("dhcp-option"), "{c}");
        assert_eq!(c.matches("dhcp-range=").count(), 1);
        // dnsmasq itself accepts it, where installed (the VM test runs it for real).
        if Path::new("/usr/sbin/dnsmasq").exists() {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("d.conf");
            std::fs::write(&f, &c).unwrap();
            Cmd::new("/usr/sbin/dnsmasq")
                .arg(format!("--conf-file={}", f.display()))
                .arg("--test")
                .run()
                .unwrap();
        }
    }

    #[test]
    fn masks() {
        assert_eq!(mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(mask(20), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(
            network("10.1.2.3".parse().unwrap(), 16),
            Ipv4Addr::new(10, 1, 0, 0)
        );
    }
}
