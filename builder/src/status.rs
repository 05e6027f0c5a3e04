//! `drove status`: one agent's cluster table (`GET /api/cluster`) shown as text, the Mosixview main
//! window of today: number, name, address, up/suspect/down, load with a bar, speed, memory, jobs and
//! when the node was last heard from.
//!
//! The HTTP client is a few lines over `std::net::TcpStream` on purpose: the API is plain HTTP/1.1
//! on a LAN or loopback, read-only here, and a full client crate (TLS, pools, URL parsing) would be
//! most of the builder's dependency tree for one GET. It sends `Connection: close`, reads to EOF and
//! understands `Content-Length` and chunked bodies.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The agent's API port (TCP; gossip uses UDP on the same number).
pub const DEFAULT_PORT: u16 = 7030;

/// The agent `drove status` asks when no `--node` is given.
pub const DEFAULT_NODE: &str = "127.0.0.1:7030";

/// Connecting, and each read or write, gives up after this long.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response accepted (a cluster table of thousands of nodes is well under this).
const MAX_RESPONSE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{addr:?} is not an agent address (expected HOST[:PORT])")]
    BadAddress { addr: String },
    #[error("cannot resolve agent address {addr}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot reach the agent at {addr}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("agent at {addr}: GET {path}: no answer within {timeout:?}")]
    Timeout {
        addr: String,
        path: String,
        timeout: Duration,
    },
    #[error("agent at {addr}: GET {path} failed")]
    Io {
        addr: String,
        path: String,
        source: std::io::Error,
    },
    #[error("agent at {addr}: GET {path}: malformed HTTP response ({detail})")]
    Http {
        addr: String,
        path: String,
        detail: String,
    },
    #[error("agent at {addr}: GET {path} answered HTTP {status}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status {
        addr: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("agent at {addr}: GET {path}: not the expected JSON")]
    Json {
        addr: String,
        path: String,
        source: serde_json::Error,
    },
}

/// `GET /api/cluster`: the table as one agent sees it, itself included, sorted by number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub cluster: String,
    /// The answering node's number.
    #[serde(rename = "self")]
    pub self_number: u32,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub number: u32,
    pub name: String,
    pub addr: String,
    pub state: State,
    /// Run-queue load normalised by speed.
    #[serde(default)]
    pub load: f64,
    #[serde(default)]
    pub speed: f64,
    /// Bytes.
    #[serde(default)]
    pub mem_free: u64,
    /// Bytes.
    #[serde(default)]
    pub mem_total: u64,
    #[serde(default)]
    pub jobs: u64,
    #[serde(default)]
    pub guest_jobs: u64,
    /// Usable CPUs (0: unknown, an older agent).
    #[serde(default)]
    pub cpus: u32,
    /// Locked with `drove lock`: takes no guest jobs.
    #[serde(default)]
    pub refuses_guests: bool,
    #[serde(default)]
    pub last_heard_ms: Option<u64>,
    /// Set when two nodes claim this number (the agent's description of the clash).
    #[serde(default)]
    pub conflict: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Up,
    Suspect,
    Down,
    /// A state this `drove` does not know (a newer agent).
    #[serde(other)]
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Suspect => "suspect",
            State::Down => "down",
            State::Unknown => "?",
        }
    }

    /// ANSI SGR colour: up green, down red, suspect yellow.
    fn colour(self) -> Option<&'static str> {
        match self {
            State::Up => Some("32"),
            State::Down => Some("31"),
            State::Suspect => Some("33"),
            State::Unknown => None,
        }
    }
}

impl Cluster {
    /// The node with `number`, if the table has it.
    pub fn node(&self, number: u32) -> Option<&Node> {
        self.nodes.iter().find(|n| n.number == number)
    }
}

/// `HOST`, `HOST:PORT`, `IP`, `IP:PORT` or `[IPv6]:PORT` → `host:port` with the default port 7030.
pub fn normalize_addr(addr: &str) -> Result<String, Error> {
    let bad = || Error::BadAddress {
        addr: addr.to_owned(),
    };
    let addr = addr.trim();
    let addr = addr
        .strip_prefix("http://")
        .unwrap_or(addr)
        .trim_end_matches('/');
    if addr.is_empty() || addr.contains(['/', ' ']) {
        return Err(bad());
    }
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(addr.to_owned());
    }
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT).to_string());
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            port.parse::<u16>().map_err(|_| bad())?;
            Ok(addr.to_owned())
        }
        Some(_) => Err(bad()),
        None => Ok(format!("{addr}:{DEFAULT_PORT}")),
    }
}

/// `GET path` from the agent at `addr` (`host:port`); the body of a 200 answer.
pub fn get(addr: &str, path: &str, timeout: Duration) -> Result<Vec<u8>, Error> {
    let io = |source| Error::Io {
        addr: addr.to_owned(),
        path: path.to_owned(),
        source,
    };
    let targets: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| Error::Resolve {
            addr: addr.to_owned(),
            source,
        })?
        .collect();
    let mut last = None;
    let mut stream = None;
    for target in &targets {
        match TcpStream::connect_timeout(target, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| Error::Connect {
        addr: addr.to_owned(),
        source: last
            .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")),
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: drove/{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::Timeout {
                addr: addr.to_owned(),
                path: path.to_owned(),
                timeout,
            },
            _ => io(source),
        })?;
    let (status, body) = parse_response(&raw).map_err(|detail| Error::Http {
        addr: addr.to_owned(),
        path: path.to_owned(),
        detail,
    })?;
    if status != 200 {
        let text = String::from_utf8_lossy(&body);
        let body: String = text.trim().chars().take(200).collect();
        return Err(Error::Status {
            addr: addr.to_owned(),
            path: path.to_owned(),
            status,
            body,
        });
    }
    Ok(body)
}

/// `GET path` parsed as JSON into `T`.
pub fn get_json<T: serde::de::DeserializeOwned>(
    addr: &str,
    path: &str,
    timeout: Duration,
) -> Result<T, Error> {
    let body = get(addr, path, timeout)?;
    serde_json::from_slice(&body).map_err(|source| Error::Json {
        addr: addr.to_owned(),
        path: path.to_owned(),
        source,
    })
}

/// The cluster table from the agent at `addr` (`host:port`), and the JSON as sent.
pub fn fetch(addr: &str) -> Result<(Cluster, serde_json::Value), Error> {
    fetch_timeout(addr, TIMEOUT)
}

/// [`fetch`] with another timeout for connecting and for each read.
pub fn fetch_timeout(addr: &str, timeout: Duration) -> Result<(Cluster, serde_json::Value), Error> {
    let path = "/api/cluster";
    let raw: serde_json::Value = get_json(addr, path, timeout)?;
    let cluster = Cluster::deserialize(&raw).map_err(|source| Error::Json {
        addr: addr.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    Ok((cluster, raw))
}

/// Splits an HTTP/1.x response into status code and body (de-chunked).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    if raw.is_empty() {
        return Err("empty response".into());
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not text")?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "status line {:?}",
            status_line.chars().take(60).collect::<String>()
        ));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("Content-Length {value:?}"))?,
            );
        }
    }
    if chunked {
        return dechunk(body).map(|b| (status, b));
    }
    match length {
        Some(n) if body.len() < n => Err(format!("body cut short: {} of {n} bytes", body.len())),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line cut short")?;
        let line = std::str::from_utf8(&body[..eol]).map_err(|_| "chunk size is not text")?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("chunk size {size:?}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// How to render: colours only for a terminal with `NO_COLOR` unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    pub colour: bool,
}

impl Style {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset or empty.
    pub fn for_stdout() -> Self {
        use std::io::IsTerminal;
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            colour: std::io::stdout().is_terminal() && !no_color,
        }
    }
}

/// Width of the load bar in characters; a full bar is a load of 1.0 (one busy CPU's worth, after
/// normalising by speed); more shows as a full bar with `+`.
const BAR: usize = 10;

fn load_bar(load: f64) -> String {
    let load = if load.is_finite() { load.max(0.0) } else { 0.0 };
    let filled = ((load * BAR as f64).round() as usize).min(BAR);
    let mut s = String::with_capacity(BAR + 2);
    s.push('[');
    s.push_str(&"#".repeat(filled));
    s.push_str(&" ".repeat(BAR - filled));
    s.push(if load > 1.0 { '+' } else { ']' });
    s
}

fn mib(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes >= 10 * 1024 * MIB {
        format!("{:.0}G", bytes as f64 / (1024 * MIB) as f64)
    } else if bytes >= 1024 * MIB {
        format!("{:.1}G", bytes as f64 / (1024 * MIB) as f64)
    } else {
        format!("{}M", bytes / MIB)
    }
}

fn heard(node: &Node, self_number: u32) -> String {
    if node.number == self_number {
        return "self".into();
    }
    match node.last_heard_ms {
        None => "never".into(),
        Some(ms) if ms < 10_000 => format!("{:.1}s ago", ms as f64 / 1000.0),
        Some(ms) if ms < 120_000 => format!("{}s ago", ms / 1000),
        Some(ms) if ms < 7_200_000 => format!("{}m ago", ms / 60_000),
        Some(ms) => format!("{}h ago", ms / 3_600_000),
    }
}

/// The table as text: a title line, a header, one row per node (the answering node marked `*`),
/// and a line per number conflict.
pub fn render(cluster: &Cluster, seen_from: &str, style: Style) -> String {
    let up = cluster
        .nodes
        .iter()
        .filter(|n| n.state == State::Up)
        .count();
    let suspect = cluster
        .nodes
        .iter()
        .filter(|n| n.state == State::Suspect)
        .count();
    let down = cluster
        .nodes
        .iter()
        .filter(|n| n.state == State::Down)
        .count();
    let mut out = format!(
        "cluster {} seen from node {} ({seen_from}): {} nodes, {up} up, {suspect} suspect, {down} down\n",
        cluster.cluster,
        cluster.self_number,
        cluster.nodes.len()
    );
    let header = [
        "",
        "#",
        "NAME",
        "ADDRESS",
        "STATE",
        "LOAD",
        "",
        "SPEED",
        "CPUS",
        "MEM FREE/TOTAL",
        "JOBS",
        "GUEST",
        "HEARD",
    ];
    let rows: Vec<[String; 13]> = cluster
        .nodes
        .iter()
        .map(|n| {
            [
                if n.number == cluster.self_number {
                    "*".into()
                } else {
                    String::new()
                },
                n.number.to_string(),
                n.name.clone(),
                n.addr.clone(),
                n.state.as_str().to_owned(),
                format!("{:.2}", n.load),
                load_bar(n.load),
                format!("{:.0}", n.speed),
                if n.cpus == 0 {
                    "?".into()
                } else {
                    n.cpus.to_string()
                },
                format!("{}/{}", mib(n.mem_free), mib(n.mem_total)),
                n.jobs.to_string(),
                n.guest_jobs.to_string(),
                heard(n, cluster.self_number),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Numbers right-aligned, text left-aligned.
    let right = [
        false, true, false, false, false, true, false, true, true, true, true, true, false,
    ];
    let line = |cells: &[String], state: Option<State>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let padded = if right[i] {
                format!("{cell:>w$}", w = widths[i])
            } else {
                format!("{cell:<w$}", w = widths[i])
            };
            match (i, state.and_then(State::colour)) {
                (4, Some(code)) if style.colour => {
                    let _ = write!(s, "\x1b[{code}m{padded}\x1b[0m");
                }
                _ => s.push_str(&padded),
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    out.push_str(&line(&header.map(str::to_owned), None));
    for (row, node) in rows.iter().zip(&cluster.nodes) {
        out.push_str(&line(row, Some(node.state)));
    }
    for node in cluster.nodes.iter().filter(|n| n.refuses_guests) {
        let _ = writeln!(
            out,
            "locked: node {} ({}) takes no guest jobs (drove unlock {})",
            node.number, node.addr, node.addr
        );
    }
    for node in cluster
        .nodes
        .iter()
        .filter(|n| n.conflict.as_ref().is_some_and(|c| !c.is_null()))
    {
        let what = match &node.conflict {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "conflict: node {} ({}): {what}",
            node.number, node.addr
        );
    }
    out
}

/// What `drove status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// One `drove status`: the table (or the agent's JSON, pretty-printed) of the agent at `node`.
pub fn status_text(node: &str, format: Format, style: Style) -> Result<String, Error> {
    let addr = normalize_addr(node)?;
    let (cluster, raw) = fetch(&addr)?;
    Ok(match format {
        Format::Table => render(&cluster, &addr, style),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&raw).unwrap_or_else(|_| raw.to_string());
            s.push('\n');
            s
        }
    })
}

/// `drove status --watch`: redraws every `interval` until the process is interrupted; an agent
/// that stops answering shows as an error line, and the next answer replaces it.
pub fn watch(node: &str, format: Format, style: Style, interval: Duration) -> Result<(), Error> {
    let addr = normalize_addr(node)?;
    let mut stdout = std::io::stdout();
    loop {
        let text = match status_text(&addr, format, style) {
            Ok(text) => text,
            Err(e) => format!("drove: {e}{}\n", source_chain(&e)),
        };
        let clear = if style.colour { "\x1b[H\x1b[2J" } else { "" };
        let stamp = humantime_now();
        let _ = write!(
            stdout,
            "{clear}{text}(every {:.0?}, {stamp}; Ctrl-C to stop)\n\n",
            interval
        );
        let _ = stdout.flush();
        std::thread::sleep(interval);
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = String::new();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(s, ": {cause}");
        source = cause.source();
    }
    s
}

/// UTC wall-clock time of day, `HH:MM:SS`.
fn humantime_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02} UTC", day / 3600, day / 60 % 60, day % 60)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::TcpListener;

    const FIXTURE: &str = r#"{"cluster": "t", "self": 1, "nodes": [
      {"number": 1, "name": "node1", "addr": "10.10.0.1", "state": "up", "load": 0.25, "speed": 1000.0,
       "mem_free": 402653184, "mem_total": 520093696, "jobs": 2, "guest_jobs": 0, "last_heard_ms": 0, "conflict": null},
      {"number": 2, "name": "node2", "addr": "10.10.0.2", "state": "suspect", "load": 1.5, "speed": 812.5,
       "mem_free": 3221225472, "mem_total": 4294967296, "jobs": 0, "guest_jobs": 1, "last_heard_ms": 2300, "conflict": null,
       "cpus": 4, "refuses_guests": true},
      {"number": 3, "name": "node3", "addr": "10.10.0.3", "state": "down", "load": 0.0, "speed": 1000.0,
       "mem_free": 0, "mem_total": 520093696, "jobs": 0, "guest_jobs": 0, "last_heard_ms": 61000,
       "conflict": "also claimed by 10.10.0.9"}
    ]}"#;

    fn fixture() -> Cluster {
        serde_json::from_str(FIXTURE).unwrap()
    }

    #[test]
    fn renders_the_table_without_colour() {
        let text = render(&fixture(), "127.0.0.1:7030", Style { colour: false });
        let expected = "\
cluster t seen from node 1 (127.0.0.1:7030): 3 nodes, 1 up, 1 suspect, 1 down
   #  NAME   ADDRESS    STATE    LOAD                SPEED  CPUS  MEM FREE/TOTAL  JOBS  GUEST  HEARD
*  1  node1  10.10.0.1  up       0.25  [###       ]   1000     ?       384M/496M     2      0  self
   2  node2  10.10.0.2  suspect  1.50  [##########+    812     4       3.0G/4.0G     0      1  2.3s ago
   3  node3  10.10.0.3  down     0.00  [          ]   1000     ?         0M/496M     0      0  61s ago
locked: node 2 (10.10.0.2) takes no guest jobs (drove unlock 10.10.0.2)
conflict: node 3 (10.10.0.3): also claimed by 10.10.0.9
";
        assert_eq!(text, expected, "\n{text}");
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn colours_states_on_a_terminal() {
        let text = render(&fixture(), "x", Style { colour: true });
        assert!(text.contains("\x1b[32mup     \x1b[0m"), "{text}");
        assert!(text.contains("\x1b[33msuspect\x1b[0m"), "{text}");
        assert!(text.contains("\x1b[31mdown   \x1b[0m"), "{text}");
    }

    #[test]
    fn unknown_fields_and_states_are_tolerated() {
        let c: Cluster = serde_json::from_str(
            r#"{"cluster":"x","self":2,"extra":1,"nodes":[{"number":2,"name":"n","addr":"a","state":"leaving","new":true}]}"#,
        )
        .unwrap();
        assert_eq!(c.nodes[0].state, State::Unknown);
        assert!(render(&c, "a", Style::default()).contains("  ?  "));
    }

    #[test]
    fn addresses_get_the_default_port() {
        assert_eq!(normalize_addr("10.10.0.1").unwrap(), "10.10.0.1:7030");
        assert_eq!(normalize_addr("10.10.0.1:8000").unwrap(), "10.10.0.1:8000");
        assert_eq!(normalize_addr("node1").unwrap(), "node1:7030");
        assert_eq!(normalize_addr("node1:99").unwrap(), "node1:99");
        assert_eq!(
            normalize_addr("http://127.0.0.1:7030/").unwrap(),
            "127.0.0.1:7030"
        );
        assert_eq!(normalize_addr("::1").unwrap(), "[::1]:7030");
        assert_eq!(normalize_addr("[::1]:5").unwrap(), "[::1]:5");
        for bad in ["", "node1:x", "a b", "h:1/x", ":7030"] {
            assert!(
                matches!(normalize_addr(bad), Err(Error::BadAddress { .. })),
                "{bad}"
            );
        }
    }

    /// A one-shot server on 127.0.0.1:0 that reads the request and answers `response` (or closes
    /// without a word when `None`); returns its address.
    fn serve_once(response: Option<Vec<u8>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            assert!(
                req.starts_with(b"GET /api/cluster HTTP/1.1\r\n"),
                "{}",
                String::from_utf8_lossy(&req)
            );
            if let Some(r) = response {
                conn.write_all(&r).unwrap();
            }
        });
        addr
    }

    fn ok(body: &str) -> Option<Vec<u8>> {
        Some(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes())
    }

    #[test]
    fn fetches_from_a_fake_agent() {
        let addr = serve_once(ok(FIXTURE));
        let text = status_text(&addr, Format::Table, Style::default()).unwrap();
        assert!(
            text.starts_with(&format!("cluster t seen from node 1 ({addr}): 3 nodes")),
            "{text}"
        );
        let addr = serve_once(ok(FIXTURE));
        let json = status_text(&addr, Format::Json, Style::default()).unwrap();
        let back: Cluster = serde_json::from_str(&json).unwrap();
        assert_eq!(back, fixture());
    }

    #[test]
    fn chunked_answers_are_understood() {
        let (a, b) = FIXTURE.split_at(100);
        let body = format!(
            "{:x}\r\n{a}\r\n{:X};ext=1\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        let addr = serve_once(Some(
            format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{body}").into_bytes(),
        ));
        let (cluster, _) = fetch(&addr).unwrap();
        assert_eq!(cluster, fixture());
    }

    #[test]
    fn garbage_and_silence_are_clear_errors() {
        let addr = serve_once(Some(b"\x00\x01garbage that is not HTTP\r\n\r\n".to_vec()));
        let err = fetch(&addr).unwrap_err();
        assert!(matches!(err, Error::Http { .. }), "{err}");
        assert!(err.to_string().contains(&addr), "{err}");

        let addr = serve_once(None);
        let err = fetch(&addr).unwrap_err();
        assert!(
            err.to_string().contains(&addr) && err.to_string().contains("empty response"),
            "{err}"
        );

        let addr = serve_once(ok("{\"not\": \"a table\"}"));
        let err = fetch(&addr).unwrap_err();
        assert!(
            matches!(err, Error::Json { .. }) && err.to_string().contains(&addr),
            "{err}"
        );

        let addr = serve_once(ok("{\"cluster\": "));
        assert!(matches!(fetch(&addr).unwrap_err(), Error::Json { .. }));

        let addr = serve_once(Some(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 8\r\n\r\nstarting".to_vec(),
        ));
        let err = fetch(&addr).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("agent at {addr}: GET /api/cluster answered HTTP 503: starting")
        );

        let addr = serve_once(Some(
            b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n{}".to_vec(),
        ));
        assert!(fetch(&addr).unwrap_err().to_string().contains("cut short"));
    }

    #[test]
    fn a_silent_agent_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let err = fetch_timeout(&addr, Duration::from_millis(200)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("agent at {addr}: GET /api/cluster: no answer within 200ms")
        );
        drop(listener);
    }

    #[test]
    fn unreachable_agent_names_the_address() {
        // A port that was just free: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let err = fetch(&addr).unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert_eq!(err.to_string(), format!("cannot reach the agent at {addr}"));
    }
}
