//! The image server's node registry: netbooted nodes register at boot (`POST /api/register`, the
//! agent side is `drove_agent::register`) and get the next free node number in boot order,
//! node1, node2, … as the seed's SystemImager named them. A MAC seen before gets its old number
//! back. `GET /api/nodes` lists the registrations (`drove nodes`).
//!
//! State: one JSON file (default `nodes.json` beside the served directory, so `out/nodes.json`
//! for `out/pxe`; a rebuild replaces `out/pxe` but never touches it). Every change is written to a
//! temporary file in the same directory, fsynced, renamed over the old file and the directory
//! fsynced, before the node gets its answer: a number handed out survives a crash or power loss
//! of the server. A lock file (`<state>.lock`, flock) keeps two servers off one state file.
//!
//! The server also tells nodes where to register: it serves `boot.ipxe` with
//! `drove.server=http://<Host the node used>` added to the `kernel` line ([`boot_script`]).
//!
//! Registration is unauthenticated, like PXE itself: anyone on the boot LAN can register a MAC.
//! Inputs are bounded (body size, field lengths, NIC count, number of registrations) and checked
//! (MAC syntax), so a bad request gets a 400 naming the field and the file stays sane.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use drove_agent::register::{Hardware, Reply, Request};
use serde::{Deserialize, Serialize};

/// State file name beside the served directory.
pub const STATE_FILE: &str = "nodes.json";
/// `GET`: the registrations as JSON.
pub const NODES_PATH: &str = "/api/nodes";
/// Registrations kept at most (a LAN of surplus PCs is far below this; a flood stops here).
pub const MAX_NODES: usize = 10_000;
/// Request bodies larger than this are refused.
const MAX_BODY: usize = 64 * 1024;
/// Longest accepted string field.
const MAX_FIELD: usize = 256;
const MAX_NICS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: cannot read the node registry", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a node registry: {source}", .path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: cannot write the node registry", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: another drove serve uses this node registry ({} is locked)", .path.display(), .lock.display())]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("registration refused: {0}")]
    Invalid(String),
    #[error("registration refused: the registry holds {MAX_NODES} nodes already")]
    Full,
}

/// One registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub number: u32,
    pub name: String,
    /// Primary MAC, lower case.
    pub mac: String,
    /// Address at the last registration.
    pub addr: String,
    #[serde(default)]
    pub cluster: String,
    pub hardware: Hardware,
    /// Unix seconds.
    pub first_seen: u64,
    pub last_seen: u64,
    /// Registrations of this MAC (boots from this server).
    pub boots: u64,
}

/// The state file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nodes {
    pub version: u32,
    pub nodes: Vec<Registration>,
}

fn valid_mac(s: &str) -> bool {
    drove_agent::identity::parse_mac(s).is_some()
}

/// Checks a request's fields; the error names the field.
pub fn validate(req: &Request) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Invalid(m));
    if !valid_mac(&req.mac) {
        return bad(format!("mac {:?} is not a MAC address", clip(&req.mac)));
    }
    for (field, value) in [
        ("addr", &req.addr),
        ("cluster", &req.cluster),
        ("name_pattern", &req.name_pattern),
        ("hardware.cpu", &req.hardware.cpu),
        ("version", &req.version),
    ] {
        if value.len() > MAX_FIELD || value.chars().any(char::is_control) {
            return bad(format!(
                "{field} is longer than {MAX_FIELD} bytes or has control characters"
            ));
        }
    }
    if !req.name_pattern.contains("{n}") {
        return bad(format!("name_pattern {:?} has no {{n}}", req.name_pattern));
    }
    if req.hardware.nics.len() > MAX_NICS || req.reserved.len() > MAX_NODES {
        return bad("too many nics or reserved numbers".into());
    }
    for nic in &req.hardware.nics {
        if nic.name.len() > MAX_FIELD
            || nic.driver.as_ref().is_some_and(|d| d.len() > MAX_FIELD)
            || !(nic.mac.is_empty() || valid_mac(&nic.mac))
        {
            return bad(format!(
                "nic {:?} has a bad name, driver or mac",
                clip(&nic.name)
            ));
        }
    }
    Ok(())
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

impl Nodes {
    /// Assigns the number for `req` at `now`: the old one for a known MAC (the primary MAC, or any
    /// NIC's MAC of a registration); else, for a late registration, the number the node already
    /// runs as when nobody holds it; else the lowest number ≥ 1 that no registration holds and the
    /// request's map does not reserve. Returns the reply; the record is added or updated.
    pub fn assign(&mut self, req: &Request, now: u64) -> Result<Reply, Error> {
        validate(req)?;
        let mac = req.mac.to_ascii_lowercase();
        let nic_macs: Vec<String> = req
            .hardware
            .nics
            .iter()
            .map(|n| n.mac.to_ascii_lowercase())
            .filter(|m| !m.is_empty())
            .collect();
        let known = self.nodes.iter().position(|r| r.mac == mac).or_else(|| {
            self.nodes.iter().position(|r| {
                nic_macs.contains(&r.mac)
                    || r.hardware
                        .nics
                        .iter()
                        .any(|n| n.mac.eq_ignore_ascii_case(&mac))
            })
        });
        let name = |n: u32| req.name_pattern.replace("{n}", &n.to_string());
        if let Some(i) = known {
            let r = &mut self.nodes[i];
            r.mac = mac;
            r.addr = req.addr.clone();
            r.cluster = req.cluster.clone();
            r.hardware = req.hardware.clone();
            r.name = name(r.number);
            r.last_seen = now;
            r.boots += 1;
            return Ok(Reply {
                number: r.number,
                name: r.name.clone(),
                new: false,
            });
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(Error::Full);
        }
        let taken: BTreeSet<u32> = self
            .nodes
            .iter()
            .map(|r| r.number)
            .chain(req.reserved.iter().copied())
            .collect();
        let number = match req.running_as {
            Some(n) if n >= 1 && !taken.contains(&n) => n,
            _ => (1..=u32::MAX)
                .find(|n| !taken.contains(n))
                .ok_or(Error::Full)?,
        };
        let reg = Registration {
            number,
            name: name(number),
            mac,
            addr: req.addr.clone(),
            cluster: req.cluster.clone(),
            hardware: req.hardware.clone(),
            first_seen: now,
            last_seen: now,
            boots: 1,
        };
        let reply = Reply {
            number,
            name: reg.name.clone(),
            new: true,
        };
        self.nodes.push(reg);
        self.nodes.sort_by_key(|r| r.number);
        Ok(reply)
    }
}

/// Reads a state file; a missing file is an empty registry.
pub fn load(path: &Path) -> Result<Nodes, Error> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Parse {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Nodes {
            version: 1,
            nodes: Vec::new(),
        }),
        Err(source) => Err(Error::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `bytes` to `path` so that after a crash the file holds either the old or the new
/// content: temporary in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".nodes-")
        .suffix(".tmp")
        .tempfile_in(&dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// The registry a server runs with: the state in memory, the file on disk, and the lock.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    nodes: Mutex<Nodes>,
    _lock: std::fs::File,
}

impl Registry {
    /// Locks `<path>.lock` and loads `path` (creating neither until the first registration,
    /// except the lock file).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Write {
                path: path.to_owned(),
                source,
            })?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| Error::Write {
                path: lock_path.clone(),
                source,
            })?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::Locked {
                path: path.to_owned(),
                lock: lock_path,
            });
        }
        let nodes = load(path)?;
        Ok(Registry {
            path: path.to_owned(),
            nodes: Mutex::new(nodes),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers and persists before answering; on a write error the memory state is rolled back
    /// so memory and file agree.
    pub fn register(&self, req: &Request) -> Result<Reply, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut nodes = self.nodes();
        let before = nodes.clone();
        let reply = nodes.assign(req, now)?;
        let json = serde_json::to_vec_pretty(&*nodes).map_err(|e| Error::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        if let Err(source) = write_atomic(&self.path, &json) {
            *nodes = before;
            return Err(Error::Write {
                path: self.path.clone(),
                source,
            });
        }
        Ok(reply)
    }

    pub fn list(&self) -> Nodes {
        self.nodes().clone()
    }
}

/// The default state file for a served directory: `nodes.json` beside it.
pub fn default_state(dir: &Path) -> PathBuf {
    let dir = dir.components().as_path();
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(STATE_FILE),
        _ => PathBuf::from(STATE_FILE),
    }
}

/// The registry's routes, merged into `drove serve`'s router: registration, the list, and the
/// boot script with the server URL.
pub fn routes(dir: &Path, registry: Arc<Registry>) -> Router {
    let script = dir.join("boot.ipxe");
    Router::new()
        .route(
            drove_agent::register::PATH,
            post(register_handler).layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .route(NODES_PATH, get(list_handler))
        .with_state(registry)
        .route(
            "/boot.ipxe",
            get(move |headers: HeaderMap| boot_script_handler(script.clone(), headers)),
        )
}

async fn register_handler(
    State(registry): State<Arc<Registry>>,
    body: axum::body::Bytes,
) -> Response {
    let req: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a registration: {e}\n"),
            )
                .into_response()
        }
    };
    let result = tokio::task::spawn_blocking(move || registry.register(&req).map(|r| (r, req)))
        .await
        .map_err(|e| Error::Invalid(format!("internal error: {e}")))
        .and_then(|r| r);
    match result {
        Ok((reply, req)) => {
            tracing::info!(
                target: "drove::serve",
                "registered {} ({}, {}) as {}{}",
                req.mac,
                req.addr,
                req.hardware.cpu,
                reply.name,
                if reply.new { " (new)" } else { " (known MAC)" }
            );
            axum::Json(reply).into_response()
        }
        Err(e @ (Error::Invalid(_) | Error::Full)) => {
            tracing::warn!(target: "drove::serve", "{e}");
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Err(e) => {
            tracing::error!(target: "drove::serve", "{e}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

async fn list_handler(State(registry): State<Arc<Registry>>) -> Response {
    axum::Json(registry.list()).into_response()
}

/// A Host header safe to put on a kernel command line: host name or address and port only.
fn safe_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
}

/// `boot.ipxe` with ` drove.server=http://<host>` added to its `kernel` line, unless the line has
/// one already or the host is unusable (then the script is unchanged).
pub fn boot_script(script: &str, host: Option<&str>) -> String {
    let Some(host) = host.filter(|h| safe_host(h)) else {
        return script.to_owned();
    };
    let mut out = String::with_capacity(script.len() + 40);
    for line in script.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        if body.starts_with("kernel ") && !body.contains("drove.server=") {
            out.push_str(body);
            out.push_str(&format!(" drove.server=http://{host}"));
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

async fn boot_script_handler(path: PathBuf, headers: HeaderMap) -> Response {
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return StatusCode::NOT_FOUND.into_response()
        }
        Err(e) => {
            tracing::error!(target: "drove::serve", "{}: {e}", path.display());
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        boot_script(&text, host),
    )
        .into_response()
}

/// Where `drove nodes` reads the registrations from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A running server's `/api/nodes` (`http://HOST:PORT[/PREFIX]`).
    Server(String),
    /// The state file itself (works with the server stopped).
    State(PathBuf),
}

/// `drove nodes`: the registrations from `source`.
pub fn fetch(source: &Source) -> anyhow::Result<Nodes> {
    use anyhow::Context;
    match source {
        Source::State(path) => Ok(load(path)?),
        Source::Server(url) => {
            let (addr, _, prefix) = drove_agent::register::split_url(url)?;
            let path = format!("{prefix}{NODES_PATH}");
            let nodes = crate::status::get_json(&addr, &path, crate::status::TIMEOUT)
                .with_context(|| format!("cannot list the nodes of the image server {url}"))?;
            Ok(nodes)
        }
    }
}

/// `YYYY-MM-DD HH:MM UTC` of Unix seconds.
pub fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = crate::civil::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60
    )
}

/// The registrations as a table, one row per node in number order.
pub fn render(nodes: &Nodes) -> String {
    let header = [
        "#",
        "NAME",
        "MAC",
        "ADDRESS",
        "CPU",
        "CORES",
        "MEMORY",
        "NICS",
        "BOOTS",
        "FIRST SEEN",
        "LAST SEEN",
    ];
    let rows: Vec<[String; 11]> = nodes
        .nodes
        .iter()
        .map(|r| {
            let nics: Vec<String> = r
                .hardware
                .nics
                .iter()
                .map(|n| match &n.driver {
                    Some(d) => format!("{}({d})", n.name),
                    None => n.name.clone(),
                })
                .collect();
            [
                r.number.to_string(),
                r.name.clone(),
                r.mac.clone(),
                r.addr.clone(),
                r.hardware.cpu.clone(),
                r.hardware.cores.to_string(),
                crate::progress::human(r.hardware.mem_bytes),
                if nics.is_empty() {
                    "-".into()
                } else {
                    nics.join(",")
                },
                r.boots.to_string(),
                utc(r.first_seen),
                utc(r.last_seen),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            // Numbers right-aligned, text left-aligned.
            if matches!(i, 0 | 5 | 6 | 8) {
                l.push_str(&format!("{cell:>w$}  "));
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = format!("{} registered nodes\n", rows.len());
    if rows.is_empty() {
        return out;
    }
    out.push_str(&line(header.to_vec()));
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use drove_agent::register::NicInfo;

    fn req(mac: &str) -> Request {
        Request {
            mac: mac.into(),
            addr: "10.0.2.15".into(),
            cluster: "t".into(),
            name_pattern: "node{n}".into(),
            reserved: vec![],
            hardware: Hardware {
                cpu: "QEMU".into(),
                cores: 1,
                mem_bytes: 1 << 29,
                nics: vec![NicInfo {
                    name: "eth0".into(),
                    mac: mac.into(),
                    driver: Some("e1000".into()),
                }],
            },
            version: "0.1.0".into(),
            running_as: None,
        }
    }

    #[test]
    fn numbers_in_boot_order_and_known_macs_keep_theirs() {
        let mut n = Nodes::default();
        assert_eq!(n.assign(&req("52:54:00:00:00:0a"), 10).unwrap().number, 1);
        assert_eq!(n.assign(&req("52:54:00:00:00:0b"), 11).unwrap().number, 2);
        let again = n.assign(&req("52:54:00:00:00:0A"), 12).unwrap();
        assert_eq!(
            again,
            Reply {
                number: 1,
                name: "node1".into(),
                new: false
            }
        );
        assert_eq!(n.nodes[0].boots, 2);
        assert_eq!((n.nodes[0].first_seen, n.nodes[0].last_seen), (10, 12));
        let third = n.assign(&req("52:54:00:00:00:0c"), 13).unwrap();
        assert_eq!(
            (third.number, third.name.as_str(), third.new),
            (3, "node3", true)
        );
    }

    #[test]
    fn a_late_registration_keeps_its_running_number_when_free() {
        let mut n = Nodes::default();
        assert_eq!(n.assign(&req("52:54:00:00:00:0a"), 10).unwrap().number, 1);
        let late = |mac: &str, running: u32| Request {
            running_as: Some(running),
            ..req(mac)
        };
        // Free: kept, so the node's name does not change at its next boot.
        let kept = n.assign(&late("52:54:00:00:00:0b", 201), 11).unwrap();
        assert_eq!((kept.number, kept.name.as_str()), (201, "node201"));
        // Held by another MAC: the next free number in boot order instead.
        let moved = n.assign(&late("52:54:00:00:00:0c", 201), 12).unwrap();
        assert_eq!(moved.number, 2);
        // Known MAC: its recorded number, whatever it runs as.
        let known = n.assign(&late("52:54:00:00:00:0a", 77), 13).unwrap();
        assert_eq!((known.number, known.new), (1, false));
        // Zero is not a node number.
        assert_eq!(
            n.assign(&late("52:54:00:00:00:0d", 0), 14).unwrap().number,
            3
        );
    }

    #[test]
    fn reserved_numbers_are_skipped_and_a_new_nic_is_recognised() {
        let mut n = Nodes::default();
        let mut r = req("52:54:00:00:00:01");
        r.reserved = vec![1, 2, 4];
        assert_eq!(n.assign(&r, 0).unwrap().number, 3);
        let mut r = req("52:54:00:00:00:02");
        r.reserved = vec![1, 2, 4];
        assert_eq!(n.assign(&r, 0).unwrap().number, 5);
        // Node 3 gains a NIC with a lower MAC: its primary MAC changes, its number does not.
        let mut moved = req("02:00:00:00:00:01");
        moved.hardware.nics.push(NicInfo {
            name: "eth1".into(),
            mac: "52:54:00:00:00:01".into(),
            driver: None,
        });
        assert_eq!(n.assign(&moved, 0).unwrap().number, 3);
        assert_eq!(n.nodes.len(), 2);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let mut n = Nodes::default();
        let err = n.assign(&req("nonsense"), 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "registration refused: mac \"nonsense\" is not a MAC address"
        );
        let mut r = req("52:54:00:00:00:01");
        r.hardware.cpu = "x".repeat(300);
        assert!(n
            .assign(&r, 0)
            .unwrap_err()
            .to_string()
            .contains("hardware.cpu"));
        let mut r = req("52:54:00:00:00:01");
        r.name_pattern = "static".into();
        assert!(n
            .assign(&r, 0)
            .unwrap_err()
            .to_string()
            .contains("name_pattern"));
        assert!(n.nodes.is_empty());
    }

    #[test]
    fn the_registry_survives_a_restart_and_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/nodes.json");
        {
            let reg = Registry::open(&path).unwrap();
            let err = Registry::open(&path).unwrap_err();
            assert!(matches!(err, Error::Locked { .. }), "{err}");
            assert_eq!(reg.register(&req("52:54:00:00:00:0a")).unwrap().number, 1);
            assert_eq!(reg.register(&req("52:54:00:00:00:0b")).unwrap().number, 2);
        }
        let reg = Registry::open(&path).unwrap();
        assert_eq!(reg.list().nodes.len(), 2);
        assert_eq!(reg.register(&req("52:54:00:00:00:0b")).unwrap().number, 2);
        assert_eq!(reg.register(&req("52:54:00:00:00:0c")).unwrap().number, 3);
        // No temporaries left behind.
        let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let on_disk = load(&path).unwrap();
        assert_eq!(on_disk, reg.list());
    }

    #[test]
    fn a_broken_state_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.json");
        std::fs::write(&path, "{\"nodes\": [").unwrap();
        let err = Registry::open(&path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}: not a node registry", path.display())),
            "{err}"
        );
    }

    #[test]
    fn a_failed_write_leaves_memory_as_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/nodes.json");
        let reg = Registry::open(&path).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Root ignores directory permissions: make the target a directory instead.
            std::fs::create_dir_all(&path).unwrap();
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                path.parent().unwrap(),
                std::fs::Permissions::from_mode(0o500),
            )
            .unwrap();
        }
        let err = reg.register(&req("52:54:00:00:00:0a")).unwrap_err();
        assert!(matches!(err, Error::Write { .. }), "{err}");
        assert!(reg.list().nodes.is_empty());
    }

    #[test]
    fn boot_script_gets_the_server() {
        let script =
            "#!ipxe\necho x\nkernel vmlinuz initrd=a.img console=ttyS0\ninitrd a.img\nboot\n";
        assert_eq!(
            boot_script(script, Some("10.0.2.2:8080")),
            "#!ipxe\necho x\nkernel vmlinuz initrd=a.img console=ttyS0 drove.server=http://10.0.2.2:8080\ninitrd a.img\nboot\n"
        );
        assert_eq!(boot_script(script, None), script);
        assert_eq!(boot_script(script, Some("evil host;x")), script);
        assert_eq!(boot_script(script, Some("a${x}")), script);
        let has = "kernel vmlinuz drove.server=http://x\n";
        assert_eq!(boot_script(has, Some("y")), has);
    }

    #[test]
    fn table_and_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_795_000_000), "2026-11-18 11:06 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        let mut n = Nodes::default();
        n.assign(&req("52:54:00:00:00:0a"), 1_795_000_000).unwrap();
        let text = render(&n);
        assert_eq!(
            text,
            "1 registered nodes\n\
             #  NAME   MAC                ADDRESS    CPU   CORES     MEMORY  NICS         BOOTS  FIRST SEEN            LAST SEEN\n\
             1  node1  52:54:00:00:00:0a  10.0.2.15  QEMU      1  512.0 MiB  eth0(e1000)      1  2026-11-18 11:06 UTC  2026-11-18 11:06 UTC\n"
        );
        assert_eq!(render(&Nodes::default()), "0 registered nodes\n");
    }

    #[test]
    fn default_state_is_beside_the_served_dir() {
        assert_eq!(
            default_state(Path::new("out/pxe")),
            PathBuf::from("out/nodes.json")
        );
        assert_eq!(
            default_state(Path::new("out/pxe/")),
            PathBuf::from("out/nodes.json")
        );
        assert_eq!(default_state(Path::new("pxe")), PathBuf::from("nodes.json"));
        assert_eq!(
            default_state(Path::new("/srv/pxe")),
            PathBuf::from("/srv/nodes.json")
        );
    }
}
