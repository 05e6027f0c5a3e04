//! Registration with the image server (`drove serve`): a netbooted node that the cluster map does
//! not name asks the server it booted from for a node number, in boot order (node1, node2, …, as
//! SystemImager named the seed's nodes). The server remembers MACs, so a node keeps its number
//! across reboots and server restarts.
//!
//! The server URL comes from the kernel command line, `drove.server=http://HOST:PORT`, which
//! `drove serve` adds to the `kernel` line of `boot.ipxe` as it serves it (with the Host the node
//! used, so it is the address the node booted from). Media booted any other way (disk.img, another
//! HTTP server) carry no such argument and never register.
//!
//! The request is one `POST /api/register` with a JSON [`Request`] (primary MAC, address, the map's
//! numbers so the server skips them, and a hardware summary); the answer is a [`Reply`]. The wire
//! types are shared with the server (`drove::registry`). The HTTP client is a few lines over
//! `TcpStream` with a total time budget: a server that is down must not hold the ready line for
//! long (the caller falls back to the MAC-derived number and logs why).
//!
//! A node that fell back keeps trying in the background ([`LATE_RETRY`]), naming the number it
//! runs as, so the server lists it and it keeps its name across reboots; a running node is never
//! renamed (its job ids and its peers' tables carry its number).

use crate::identity::{format_mac, Mac};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

/// The server's registration endpoint.
pub const PATH: &str = "/api/register";

/// How long the boot waits for the server in all (connects, retries, the answer).
pub const BUDGET: Duration = Duration::from_secs(4);

/// Waits between late registrations after a failed one at boot: quick at first (a server
/// restarting), then every five minutes for as long as the node runs.
pub const LATE_RETRY: [Duration; 4] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(90),
    Duration::from_secs(300),
];

/// Largest answer read.
const MAX_REPLY: u64 = 64 * 1024;

/// One NIC in the hardware summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInfo {
    pub name: String,
    pub mac: String,
    /// Kernel driver (`e1000`, `r8169`, …) when /sys names it.
    #[serde(default)]
    pub driver: Option<String>,
}

/// What a node tells the server about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Hardware {
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// Logical CPUs.
    pub cores: u32,
    /// MemTotal in bytes.
    pub mem_bytes: u64,
    #[serde(default)]
    pub nics: Vec<NicInfo>,
}

/// `POST /api/register` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The node's primary MAC: the numerically lowest of its NICs (as in `identity`).
    pub mac: String,
    /// The address the node came up with.
    pub addr: String,
    pub cluster: String,
    /// How the node names itself from its number, e.g. `node{n}`.
    pub name_pattern: String,
    /// Numbers the cluster map gives to other nodes: the server never hands these out.
    #[serde(default)]
    pub reserved: Vec<u32>,
    pub hardware: Hardware,
    /// drove-agent version.
    #[serde(default)]
    pub version: String,
    /// A late registration (the server was unreachable at boot): the number the node already runs
    /// as, from its MAC. The server gives it that number when nobody holds it, so the node's name
    /// does not change at its next boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_as: Option<u32>,
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub number: u32,
    pub name: String,
    /// First registration of this MAC (false: a known node got its old number back).
    pub new: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image server URL {url:?}: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("no answer from {url} within {budget:?}")]
    Unreachable {
        url: String,
        budget: Duration,
        source: std::io::Error,
    },
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url}: malformed answer ({detail})")]
    Http { url: String, detail: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: not a registration answer: {source}")]
    Json {
        url: String,
        source: serde_json::Error,
    },
}

/// `drove.server=URL` from a kernel command line (the last one wins, as the kernel does for its
/// own parameters); empty values are ignored.
pub fn server_from_cmdline(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("drove.server="))
        .rfind(|v| !v.is_empty())
        .map(str::to_owned)
}

/// `http://HOST[:PORT][/PREFIX]` → (`HOST:PORT`, `HOST`, `/PREFIX` without a trailing `/`).
pub fn split_url(url: &str) -> Result<(String, String, String), Error> {
    let bad = |why| Error::BadUrl {
        url: url.to_owned(),
        why,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains(['@', ' ']) {
        return Err(bad("no host"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
            None if after.is_empty() => 80,
            None => return Err(bad("junk after ]")),
        };
        (format!("[{h}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse::<u16>().map_err(|_| bad("bad port"))?),
            None => (authority.to_owned(), 80),
        }
    };
    Ok((format!("{host}:{port}"), host, path.to_owned()))
}

/// The hardware summary from /proc texts and a /sys/class/net directory.
pub fn hardware(cpuinfo: &str, meminfo: &str, class_net: &Path) -> Hardware {
    let cpu = cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "model name")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    let cores = u32::try_from(cores.max(1)).unwrap_or(u32::MAX);
    let mem_bytes = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024);
    let nics = crate::net::scan(class_net)
        .unwrap_or_default()
        .into_iter()
        .map(|nic| {
            let driver = std::fs::read_link(class_net.join(&nic.name).join("device/driver"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
            NicInfo {
                mac: nic.mac.as_ref().map_or_else(String::new, format_mac),
                name: nic.name,
                driver,
            }
        })
        .collect();
    Hardware {
        cpu,
        cores,
        mem_bytes,
        nics,
    }
}

/// The node's primary MAC (the lowest non-zero one).
pub fn primary_mac(macs: &[Mac]) -> Option<Mac> {
    macs.iter().filter(|m| **m != [0u8; 6]).min().copied()
}

/// Posts `req` to `<server>/api/register`, retrying a refused or failed connection every 300 ms
/// until `budget` is spent.
pub fn register(server: &str, req: &Request, budget: Duration) -> Result<Reply, Error> {
    let (authority, host, prefix) = split_url(server)?;
    let url = format!("http://{authority}{prefix}{PATH}");
    let deadline = Instant::now() + budget;
    let targets: Vec<SocketAddr> = authority
        .to_socket_addrs()
        .map_err(|source| Error::Resolve {
            host: host.clone(),
            source,
        })?
        .collect();
    let body = serde_json::to_vec(req).map_err(|source| Error::Json {
        url: url.clone(),
        source,
    })?;
    let request = {
        let mut r = format!(
            "POST {prefix}{PATH} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: drove-agent/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(&body);
        r
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Unreachable {
                url,
                budget,
                source: last,
            });
        }
        match exchange(&targets, &request, left) {
            Ok(raw) => return parse_reply(&url, &raw),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(300).min(left));
    }
}

fn exchange(targets: &[SocketAddr], request: &[u8], left: Duration) -> std::io::Result<Vec<u8>> {
    let mut err = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for t in targets {
        match TcpStream::connect_timeout(t, left) {
            Ok(mut s) => {
                s.set_read_timeout(Some(left))?;
                s.set_write_timeout(Some(left))?;
                s.write_all(request)?;
                let mut raw = Vec::new();
                s.take(MAX_REPLY).read_to_end(&mut raw)?;
                return Ok(raw);
            }
            Err(e) => err = e,
        }
    }
    Err(err)
}

fn parse_reply(url: &str, raw: &[u8]) -> Result<Reply, Error> {
    let http = |detail: &str| Error::Http {
        url: url.to_owned(),
        detail: detail.to_owned(),
    };
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| http("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| http("headers are not text"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| http("no status"))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let mut body = raw[end + 4..].to_vec();
    if chunked {
        body = dechunk(&body).ok_or_else(|| http("bad chunked body"))?;
    }
    if status != 200 {
        return Err(Error::Status {
            url: url.to_owned(),
            status,
            body: String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(200)
                .collect(),
        });
    }
    serde_json::from_slice(&body).map_err(|source| Error::Json {
        url: url.to_owned(),
        source,
    })
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[..eol]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        body = &body[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// At boot, for a node the map does not name: registers with the server named on `cmdline` and
/// returns the identity it assigned; `None` when the command line names no server, or when the
/// registration failed (logged, with `fallback`, the identity the node goes on with).
pub fn at_boot(
    cmdline: &str,
    cfg: &crate::config::NodeConfig,
    addr: std::net::Ipv4Addr,
    macs: &[Mac],
    fallback: &crate::identity::Identity,
) -> Option<crate::identity::Identity> {
    let server = server_from_cmdline(cmdline)?;
    let Some(mac) = primary_mac(macs) else {
        crate::warn!(
            "no MAC to register with {server}; {} stays {}",
            fallback.name,
            fallback.number
        );
        return None;
    };
    let req = Request {
        mac: format_mac(&mac),
        addr: addr.to_string(),
        cluster: cfg.cluster.clone(),
        name_pattern: cfg.node_name.clone(),
        reserved: cfg.map.nodes().into_iter().map(|(n, _)| n).collect(),
        hardware: hardware(
            &std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
            &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
            Path::new(crate::net::SYS_CLASS_NET),
        ),
        version: env!("CARGO_PKG_VERSION").into(),
        running_as: None,
    };
    let started = Instant::now();
    match register(&server, &req, BUDGET) {
        Ok(reply) => {
            let id = crate::identity::registered(cfg, reply.number);
            crate::info!(
                "registered with {server} as {} (number {}, {}) in {} ms",
                id.name,
                id.number,
                if reply.new { "new" } else { "known MAC" },
                started.elapsed().as_millis()
            );
            Some(id)
        }
        Err(e) => {
            crate::warn!(
                "registration with the image server failed: {}; going on as {} (number {} from the MAC), retrying in the background",
                crate::console::chain(&e),
                fallback.name,
                fallback.number
            );
            let late = Request {
                running_as: Some(fallback.number),
                ..req
            };
            let name = fallback.name.clone();
            let spawned = std::thread::Builder::new()
                .name("register".into())
                .spawn(move || {
                    let (reply, tries) = register_late(&server, &late, &LATE_RETRY, BUDGET);
                    crate::info!("{}", late_message(&server, &name, &late, &reply, tries));
                });
            if let Err(e) = spawned {
                crate::warn!("cannot start the late registration: {e}");
            }
            None
        }
    }
}

/// Registers `req` until the server answers: waits `waits[i]` before try `i + 1` (the last wait
/// repeats). Returns the answer and the number of tries.
pub fn register_late(
    server: &str,
    req: &Request,
    waits: &[Duration],
    budget: Duration,
) -> (Reply, u32) {
    let mut tries = 0u32;
    loop {
        let wait = waits
            .get(tries as usize)
            .or(waits.last())
            .copied()
            .unwrap_or(Duration::from_secs(300));
        std::thread::sleep(wait);
        tries += 1;
        match register(server, req, budget) {
            Ok(reply) => return (reply, tries),
            Err(e) => crate::debug!(
                "late registration try {tries} with {server}: {}",
                crate::console::chain(&e)
            ),
        }
    }
}

/// What a late registration says on the console: the number the server recorded, and whether the
/// node's name changes at its next boot (someone else got its MAC-derived number meanwhile).
pub fn late_message(
    server: &str,
    running: &str,
    req: &Request,
    reply: &Reply,
    tries: u32,
) -> String {
    if Some(reply.number) == req.running_as {
        format!(
            "registered late with {server} as {} (try {tries}); the name stays at the next boot",
            reply.name
        )
    } else {
        format!(
            "registered late with {server} (try {tries}): the server has this node as {} (number {}); it stays {running} until it reboots",
            reply.name, reply.number
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn server_comes_from_the_command_line() {
        assert_eq!(
            server_from_cmdline("console=ttyS0 drove.server=http://10.0.2.2:8080 quiet"),
            Some("http://10.0.2.2:8080".into())
        );
        assert_eq!(
            server_from_cmdline("console=ttyS0 drove.server= quiet"),
            None
        );
        assert_eq!(
            server_from_cmdline("drove.server=http://a drove.server=http://b:1"),
            Some("http://b:1".into())
        );
        assert_eq!(server_from_cmdline("drove.serverx=1"), None);
    }

    #[test]
    fn urls_split() {
        assert_eq!(
            split_url("http://10.0.2.2:8080").unwrap(),
            ("10.0.2.2:8080".into(), "10.0.2.2".into(), String::new())
        );
        assert_eq!(
            split_url("http://boot/drove/").unwrap(),
            ("boot:80".into(), "boot".into(), "/drove".into())
        );
        assert_eq!(
            split_url("http://[::1]:9/").unwrap().0,
            "[::1]:9".to_string()
        );
        for bad in [
            "https://x",
            "http://",
            "http://h:x",
            "ftp://h",
            "http://[::1",
        ] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hardware_from_proc_and_sys() {
        let dir = tempfile::tempdir().unwrap();
        let eth = dir.path().join("eth0");
        std::fs::create_dir_all(eth.join("device")).unwrap();
        std::fs::write(eth.join("type"), "1\n").unwrap();
        std::fs::write(eth.join("address"), "52:54:00:12:34:56\n").unwrap();
        std::os::unix::fs::symlink("/sys/bus/pci/drivers/e1000", eth.join("device/driver"))
            .unwrap();
        let cpuinfo = "processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\n";
        let hw = hardware(
            cpuinfo,
            "MemTotal:         468000 kB\nMemFree: 1 kB\n",
            dir.path(),
        );
        assert_eq!(
            hw,
            Hardware {
                cpu: "QEMU Virtual CPU version 2.5+".into(),
                cores: 2,
                mem_bytes: 468_000 * 1024,
                nics: vec![NicInfo {
                    name: "eth0".into(),
                    mac: "52:54:00:12:34:56".into(),
                    driver: Some("e1000".into())
                }]
            }
        );
        let empty = hardware("", "", &dir.path().join("none"));
        assert_eq!(
            (empty.cpu.as_str(), empty.cores, empty.mem_bytes),
            ("unknown", 1, 0)
        );
    }

    fn request() -> Request {
        Request {
            mac: "52:54:00:12:34:56".into(),
            addr: "10.0.2.15".into(),
            cluster: "c".into(),
            name_pattern: "node{n}".into(),
            reserved: vec![],
            hardware: Hardware::default(),
            version: "0".into(),
            running_as: None,
        }
    }

    /// A one-shot server answering `answer` to whatever it is sent; returns its URL and the
    /// request it received.
    fn one_shot(answer: String) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = c.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
                if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&req[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if req.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            c.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(req).unwrap()
        });
        (url, t)
    }

    #[test]
    fn posts_and_reads_the_answer() {
        let json = r#"{"number":3,"name":"node3","new":true}"#;
        let (url, t) = one_shot(format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{json}\r\n0\r\n\r\n",
            json.len()
        ));
        let reply = register(&url, &request(), Duration::from_secs(5)).unwrap();
        assert_eq!(
            reply,
            Reply {
                number: 3,
                name: "node3".into(),
                new: true
            }
        );
        let sent = t.join().unwrap();
        assert!(
            sent.starts_with("POST /api/register HTTP/1.1\r\n"),
            "{sent}"
        );
        let body = &sent[sent.find("\r\n\r\n").unwrap() + 4..];
        let back: Request = serde_json::from_str(body).unwrap();
        assert_eq!(back, request());
    }

    #[test]
    fn a_late_registration_names_the_running_number_and_retries() {
        // The server is busy at the first try (HTTP 503) and answers the second.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let json = r#"{"number":201,"name":"node201","new":true}"#;
            let answers = [
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy".to_owned(),
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{json}",
                    json.len()
                ),
            ];
            let mut sent = Vec::new();
            for answer in answers {
                let (mut c, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&req).contains("\"version\"") {
                    let n = c.read(&mut buf).unwrap();
                    assert!(n > 0);
                    req.extend_from_slice(&buf[..n]);
                }
                // The body ends with the last field; wait for its closing brace.
                while req.last() != Some(&b'}') {
                    let n = c.read(&mut buf).unwrap();
                    assert!(n > 0);
                    req.extend_from_slice(&buf[..n]);
                }
                c.write_all(answer.as_bytes()).unwrap();
                sent.push(String::from_utf8(req).unwrap());
            }
            sent
        });
        let late = Request {
            running_as: Some(201),
            ..request()
        };
        let (reply, tries) = register_late(
            &url,
            &late,
            &[Duration::ZERO, Duration::from_millis(50)],
            Duration::from_secs(10),
        );
        assert_eq!((reply.number, tries), (201, 2));
        let sent = server.join().unwrap();
        assert!(sent[1].contains(r#""running_as":201"#), "{}", sent[1]);
        assert_eq!(
            late_message(&url, "node201", &late, &reply, tries),
            format!(
                "registered late with {url} as node201 (try 2); the name stays at the next boot"
            )
        );
        let other = Reply {
            number: 4,
            name: "node4".into(),
            new: true,
        };
        assert_eq!(
            late_message("http://s", "node201", &late, &other, 3),
            "registered late with http://s (try 3): the server has this node as node4 (number 4); it stays node201 until it reboots"
        );
    }

    #[test]
    fn errors_name_the_server() {
        let (url, _t) =
            one_shot("HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\n\r\nbad mac \"x\"".into());
        let err = register(&url, &request(), Duration::from_secs(5)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{url}/api/register answered HTTP 400: bad mac \"x\"")
        );
    }

    #[test]
    fn a_server_that_is_down_costs_at_most_the_budget() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let err = register(
            &format!("http://127.0.0.1:{port}"),
            &request(),
            Duration::from_millis(700),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // A silent server (accepts, never answers) is cut off by the budget too.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let started = Instant::now();
        assert!(register(&url, &request(), Duration::from_millis(700)).is_err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
