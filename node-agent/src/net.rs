//! Network bring-up: find the ethernet NICs, run busybox `udhcpc` on each (or apply the static
//! address the config gives its MAC), and report addresses to the boot loop as [`NetEvent`]s.
//!
//! `udhcpc` runs the event script `/usr/share/udhcpc/default.script` (from the repo's
//! `initramfs/`), which configures the interface and prints one line per event on udhcpc's
//! stdout, which is a pipe to the agent:
//! `drove-lease event=bound interface=eth0 ip=10.0.2.15 mask=24 router=10.0.2.2 dns=10.0.2.3 lease=86400 serverid=10.0.2.2`.

use crate::children::Children;
use crate::identity::{parse_mac, Mac};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

pub const BUSYBOX: &str = "/bin/busybox";
pub const UDHCPC_SCRIPT: &str = "/usr/share/udhcpc/default.script";
pub const SYS_CLASS_NET: &str = "/sys/class/net";
const ARPHRD_ETHER: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot list {path}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{interface}: static address {cidr:?} is not `a.b.c.d/prefix`")]
    BadCidr { interface: String, cidr: String },
    #[error("{interface}: `{command}` failed with {exit}: {output}")]
    Command {
        interface: String,
        command: String,
        exit: crate::children::Exit,
        output: String,
    },
    #[error("{interface}: cannot run a command")]
    Run {
        interface: String,
        source: crate::children::Error,
    },
}

/// An ethernet NIC as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub mac: Option<Mac>,
}

/// The ethernet NICs under `dir` (`/sys/class/net`): type 1 with a backing device (so bridges,
/// tunnels and `lo` are skipped), sorted by name.
pub fn scan(dir: &Path) -> Result<Vec<Nic>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::List {
        path: dir.into(),
        source,
    })?;
    let mut nics = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let read = |f: &str| {
            std::fs::read_to_string(path.join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        if name == "lo" || read("type") != ARPHRD_ETHER || !path.join("device").exists() {
            continue;
        }
        nics.push(Nic {
            mac: parse_mac(&read("address")),
            name,
        });
    }
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nics)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    Deconfig,
    Bound,
    Renew,
    Leasefail,
    Nak,
    Other(String),
}

/// One `drove-lease` line from the udhcpc script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub event: LeaseEvent,
    pub interface: String,
    pub ip: Option<Ipv4Addr>,
    pub prefix: Option<u8>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_secs: Option<u64>,
    pub server: Option<Ipv4Addr>,
}

/// Parses a `drove-lease key=value ...` line; `None` for any other line. The first occurrence
/// of a key wins (values a DHCP server controls, like a domain, come last in the line).
pub fn parse_lease_line(line: &str) -> Option<Lease> {
    let rest = line.trim().strip_prefix("drove-lease ")?;
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for token in rest.split_whitespace() {
        if let Some((k, v)) = token.split_once('=') {
            fields.entry(k).or_insert(v);
        }
    }
    let event = match *fields.get("event")? {
        "deconfig" => LeaseEvent::Deconfig,
        "bound" => LeaseEvent::Bound,
        "renew" => LeaseEvent::Renew,
        "leasefail" => LeaseEvent::Leasefail,
        "nak" => LeaseEvent::Nak,
        other => LeaseEvent::Other(other.to_string()),
    };
    let list = |k: &str| -> Vec<Ipv4Addr> {
        fields
            .get(k)
            .map(|v| v.split(',').filter_map(|a| a.parse().ok()).collect())
            .unwrap_or_default()
    };
    Some(Lease {
        event,
        interface: fields
            .get("interface")
            .filter(|s| !s.is_empty())?
            .to_string(),
        ip: fields.get("ip").and_then(|v| v.parse().ok()),
        prefix: fields
            .get("mask")
            .and_then(|v| v.parse().ok())
            .filter(|p| *p <= 32),
        routers: list("router"),
        dns: list("dns"),
        lease_secs: fields.get("lease").and_then(|v| v.parse().ok()),
        server: fields.get("serverid").and_then(|v| v.parse().ok()),
    })
}

/// Delay before retry number `attempt` (0-based) after udhcpc gave up: 2 s doubling to 60 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(2u64.saturating_mul(1u64 << attempt.min(5)).min(60))
}

/// The udhcpc command line for `interface`: foreground, 4 discovers 2 s apart, then exit so the
/// supervisor retries with [`backoff`].
pub fn udhcpc_args(interface: &str, script: &str) -> Vec<String> {
    [
        "udhcpc", "-i", interface, "-f", "-n", "-t", "4", "-T", "2", "-s", script,
    ]
    .map(String::from)
    .into()
}

/// `10.0.0.11/24` → (address, prefix).
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = text.trim().split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((addr.parse().ok()?, prefix))
}

/// The static address for `mac` from the config's `hosts` (keys compared as MACs).
pub fn static_address_for<'a>(hosts: &'a BTreeMap<String, String>, mac: &Mac) -> Option<&'a str> {
    hosts
        .iter()
        .find(|(k, _)| parse_mac(k).as_ref() == Some(mac))
        .map(|(_, v)| v.as_str())
}

/// busybox `ip` argument lists that give `interface` the static `cidr` (and default route).
pub fn static_commands(interface: &str, cidr: &str, gateway: Option<&str>) -> Vec<Vec<String>> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut cmds = vec![
        v(&["ip", "addr", "add", cidr, "dev", interface]),
        v(&["ip", "link", "set", interface, "up"]),
    ];
    if let Some(gw) = gateway {
        cmds.push(v(&[
            "ip", "route", "add", "default", "via", gw, "dev", interface,
        ]));
    }
    cmds
}

/// What the boot loop hears from the network side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    Up {
        interface: String,
        addr: Ipv4Addr,
        prefix: Option<u8>,
        how: &'static str,
    },
    Down {
        interface: String,
    },
}

/// Runs one busybox command for `interface`; failures carry the command line and its output.
pub fn busybox(sys: &dyn crate::sys::Sys, interface: &str, args: &[String]) -> Result<(), Error> {
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (exit, output) = sys.run(BUSYBOX, &argv).map_err(|source| Error::Run {
        interface: interface.into(),
        source,
    })?;
    if !exit.success() {
        return Err(Error::Command {
            interface: interface.into(),
            command: crate::children::shell_line(BUSYBOX, &argv),
            exit,
            output,
        });
    }
    Ok(())
}

/// Applies the static address for `nic`, if the config has one, and reports it.
pub fn configure_static(
    sys: &dyn crate::sys::Sys,
    nic: &Nic,
    hosts: &BTreeMap<String, String>,
    gateway: Option<&str>,
) -> Result<Option<NetEvent>, Error> {
    let Some(cidr) = nic.mac.as_ref().and_then(|m| static_address_for(hosts, m)) else {
        return Ok(None);
    };
    let (addr, prefix) = parse_cidr(cidr).ok_or_else(|| Error::BadCidr {
        interface: nic.name.clone(),
        cidr: cidr.into(),
    })?;
    for args in static_commands(&nic.name, cidr, gateway) {
        busybox(sys, &nic.name, &args)?;
    }
    Ok(Some(NetEvent::Up {
        interface: nic.name.clone(),
        addr,
        prefix: Some(prefix),
        how: "static",
    }))
}

/// Keeps DHCP going on `nic` for ever: runs udhcpc, forwards its leases, and restarts it with
/// [`backoff`] whenever it exits. A NIC that gets no answer is logged once, then retried quietly.
pub fn supervise_dhcp(
    children: Arc<Children>,
    sys: Arc<dyn crate::sys::Sys>,
    nic: Nic,
    tx: Sender<NetEvent>,
) {
    let name = nic.name.clone();
    let mut attempt = 0u32;
    let mut told_no_answer = false;
    while !crate::power::in_progress() {
        if let Err(e) = busybox(
            sys.as_ref(),
            &name,
            &[
                "ip".into(),
                "link".into(),
                "set".into(),
                name.clone(),
                "up".into(),
            ],
        ) {
            crate::warn!("{}", crate::console::chain(&e));
        }
        let args = udhcpc_args(&name, UDHCPC_SCRIPT);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::debug!("run: {}", crate::children::shell_line(BUSYBOX, &argv));
        let mut cmd = Command::new(BUSYBOX);
        cmd.args(&args);
        match children.spawn(&mut cmd, true) {
            Err(e) => crate::error!("{name}: {}", crate::console::chain(&e)),
            Ok(spawned) => {
                if let Some(out) = spawned.output {
                    for line in std::io::BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        match parse_lease_line(&line) {
                            None => crate::debug!("{name}: {line}"),
                            Some(lease) => {
                                handle_lease(&lease, &tx, &mut told_no_answer);
                                if lease.event == LeaseEvent::Bound {
                                    attempt = 0;
                                }
                            }
                        }
                    }
                }
                match spawned.exit.recv() {
                    Ok(exit) => crate::debug!("{name}: udhcpc ended with {exit}"),
                    Err(_) => crate::debug!("{name}: udhcpc ended"),
                }
            }
        }
        let _ = tx.send(NetEvent::Down {
            interface: name.clone(),
        });
        if crate::power::in_progress() {
            break;
        }
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1);
        crate::debug!("{name}: next DHCP try in {} s", delay.as_secs());
        std::thread::sleep(delay);
    }
}

fn handle_lease(lease: &Lease, tx: &Sender<NetEvent>, told_no_answer: &mut bool) {
    let name = &lease.interface;
    match (&lease.event, lease.ip) {
        (LeaseEvent::Bound | LeaseEvent::Renew, Some(addr)) => {
            if lease.event == LeaseEvent::Bound {
                let routers: Vec<String> = lease.routers.iter().map(|r| r.to_string()).collect();
                crate::info!(
                    "{name}: DHCP lease {addr}/{} from {} (router {}, {} s)",
                    lease.prefix.map_or("?".into(), |p| p.to_string()),
                    lease.server.map_or("?".into(), |s| s.to_string()),
                    if routers.is_empty() {
                        "none".into()
                    } else {
                        routers.join(",")
                    },
                    lease.lease_secs.map_or("?".into(), |s| s.to_string()),
                );
            }
            *told_no_answer = false;
            let _ = tx.send(NetEvent::Up {
                interface: name.clone(),
                addr,
                prefix: lease.prefix,
                how: "dhcp",
            });
        }
        (LeaseEvent::Deconfig, _) => {
            let _ = tx.send(NetEvent::Down {
                interface: name.clone(),
            });
        }
        (LeaseEvent::Leasefail | LeaseEvent::Nak, _) => {
            if !*told_no_answer {
                crate::warn!("{name}: no DHCP answer yet; retrying in the background");
                *told_no_answer = true;
            }
        }
        (event, _) => crate::debug!("{name}: DHCP event {event:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::Exit;
    use crate::sys::fake::FakeSys;

    #[test]
    fn lease_lines_parse() {
        let l = parse_lease_line("drove-lease event=bound interface=eth0 ip=10.0.2.15 mask=24 router=10.0.2.2,10.0.2.1 dns=10.0.2.3 lease=86400 serverid=10.0.2.2 domain=x ip=6.6.6.6").unwrap();
        assert_eq!(l.event, LeaseEvent::Bound);
        assert_eq!(l.interface, "eth0");
        assert_eq!(l.ip, Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(l.prefix, Some(24));
        assert_eq!(
            l.routers,
            vec![Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 1)]
        );
        assert_eq!(l.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(l.lease_secs, Some(86400));
        assert_eq!(l.server, Some(Ipv4Addr::new(10, 0, 2, 2)));
        let f = parse_lease_line("drove-lease event=leasefail interface=eth1 ip= router=").unwrap();
        assert_eq!(
            (f.event, f.ip, f.routers.len()),
            (LeaseEvent::Leasefail, None, 0)
        );
        assert_eq!(parse_lease_line("udhcpc: started, v1.35.0"), None);
        assert_eq!(parse_lease_line("drove-lease interface=eth0"), None);
        assert_eq!(parse_lease_line("drove-lease event=bound"), None);
    }

    #[test]
    fn first_bound_is_reported_failures_logged_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut told = false;
        let fail = parse_lease_line("drove-lease event=leasefail interface=eth1").unwrap();
        handle_lease(&fail, &tx, &mut told);
        assert!(told);
        handle_lease(&fail, &tx, &mut told);
        let bound =
            parse_lease_line("drove-lease event=bound interface=eth1 ip=10.0.0.5 mask=16").unwrap();
        handle_lease(&bound, &tx, &mut told);
        assert!(!told);
        assert_eq!(
            rx.try_recv().unwrap(),
            NetEvent::Up {
                interface: "eth1".into(),
                addr: Ipv4Addr::new(10, 0, 0, 5),
                prefix: Some(16),
                how: "dhcp"
            }
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let secs: Vec<u64> = (0..8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX).as_secs(), 60);
    }

    #[test]
    fn scan_finds_ethernet_nics_with_devices() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, ty: &str, mac: &str, device: bool| {
            let p = dir.path().join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("type"), format!("{ty}\n")).unwrap();
            std::fs::write(p.join("address"), format!("{mac}\n")).unwrap();
            if device {
                std::fs::create_dir(p.join("device")).unwrap();
            }
        };
        mk("lo", "772", "00:00:00:00:00:00", false);
        mk("eth1", "1", "52:54:00:00:00:02", true);
        mk("eth0", "1", "52:54:00:00:00:01", true);
        mk("br0", "1", "52:54:00:00:00:03", false);
        mk("wg0", "65534", "", true);
        let nics = scan(dir.path()).unwrap();
        assert_eq!(
            nics,
            vec![
                Nic {
                    name: "eth0".into(),
                    mac: Some([0x52, 0x54, 0, 0, 0, 1])
                },
                Nic {
                    name: "eth1".into(),
                    mac: Some([0x52, 0x54, 0, 0, 0, 2])
                },
            ]
        );
        let err = scan(&dir.path().join("none")).unwrap_err();
        assert!(err.to_string().starts_with("cannot list "), "{err}");
    }

    #[test]
    fn static_addresses_by_mac() {
        let hosts: BTreeMap<String, String> =
            [("52:54:00:00:00:01".to_string(), "10.0.0.11/24".to_string())].into();
        let sys = FakeSys::default();
        let nic = Nic {
            name: "eth0".into(),
            mac: parse_mac("52:54:00:00:00:01"),
        };
        let ev = configure_static(&sys, &nic, &hosts, Some("10.0.0.1")).unwrap();
        assert_eq!(
            ev,
            Some(NetEvent::Up {
                interface: "eth0".into(),
                addr: Ipv4Addr::new(10, 0, 0, 11),
                prefix: Some(24),
                how: "static"
            })
        );
        assert_eq!(
            sys.calls(),
            vec![
                "/bin/busybox ip addr add 10.0.0.11/24 dev eth0",
                "/bin/busybox ip link set eth0 up",
                "/bin/busybox ip route add default via 10.0.0.1 dev eth0",
            ]
        );
        let other = Nic {
            name: "eth1".into(),
            mac: parse_mac("52:54:00:00:00:09"),
        };
        assert_eq!(configure_static(&sys, &other, &hosts, None).unwrap(), None);
        let bad: BTreeMap<String, String> =
            [("52:54:00:00:00:01".to_string(), "10.0.0.11".to_string())].into();
        assert!(matches!(
            configure_static(&sys, &nic, &bad, None),
            Err(Error::BadCidr { .. })
        ));
        *sys.run_result.lock().unwrap() =
            Some((Exit::Code(2), "RTNETLINK answers: File exists".into()));
        let err = configure_static(&sys, &nic, &hosts, None).unwrap_err();
        assert_eq!(err.to_string(), "eth0: `/bin/busybox ip addr add 10.0.0.11/24 dev eth0` failed with exit status 2: RTNETLINK answers: File exists");
    }

    #[test]
    fn udhcpc_runs_in_foreground_and_gives_up_for_the_supervisor() {
        assert_eq!(
            udhcpc_args("eth0", "/s").join(" "),
            "udhcpc -i eth0 -f -n -t 4 -T 2 -s /s"
        );
        assert_eq!(parse_cidr("10.1.2.3/33"), None);
        assert_eq!(
            parse_cidr("10.1.2.3/8"),
            Some((Ipv4Addr::new(10, 1, 2, 3), 8))
        );
    }
}
