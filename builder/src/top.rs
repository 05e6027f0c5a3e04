//! `drove top`: the dashboard in a terminal, like MOSIX's `mosmon`. Every interval it asks one
//! agent for the cluster table (`GET /api/cluster`, drawn by [`crate::status::render`]) and every
//! node's jobs and migrations, merged by that agent (`GET /api/cluster/jobs`; an older agent's own
//! `GET /api/jobs` when it has no such route), and redraws the screen until `q` or Ctrl-C.
//!
//! No TUI crate: the view is the `drove status` table plus two short lists, so a full-screen redraw
//! with a handful of ANSI sequences (alternate screen, cursor home, clear to end of line) and a
//! termios switch to read single keys is all it needs. The terminal is restored on every exit path
//! (a guard's `Drop`, and SIGINT/SIGTERM/SIGHUP only set a flag the loop checks).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::status::{self, Cluster, Error, Style};

/// Migrations shown, newest first.
pub const MIGRATIONS_SHOWN: usize = 6;

/// Each request while running gives up after this long (so `q` is never stuck for long).
const RUN_TIMEOUT: Duration = Duration::from_secs(2);

/// The merged answer can take the agent's per-node budget (3 s, a down node) on top of the
/// request itself.
const CLUSTER_JOBS_EXTRA: Duration = Duration::from_secs(4);

/// One answer from the agent: the cluster table and its jobs.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub cluster: Cluster,
    /// `GET /api/cluster/jobs` (`{"self", "jobs", "migrations", "unreachable", …}`) or, from an
    /// agent without it, `GET /api/jobs` (`{"node", "jobs", "migrations"}`); `None` when the
    /// agent has no job API.
    pub jobs: Option<Value>,
}

/// What is on screen: the last good answer and, when the agent stopped answering, since when.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub last: Option<Snapshot>,
    /// Unix ms of the first failed fetch in a row, and the error.
    pub unreachable: Option<(u64, String)>,
}

/// Asks the agent at `addr` (`host:port`) for everything `drove top` shows.
pub fn fetch(addr: &str, timeout: Duration) -> Result<Snapshot, Error> {
    let (cluster, _) = status::fetch_timeout(addr, timeout)?;
    let merged = status::get_json::<Value>(addr, "/api/cluster/jobs", timeout + CLUSTER_JOBS_EXTRA);
    let jobs = match merged {
        Ok(v) => Some(v),
        Err(Error::Status { status: 404, .. }) => {
            match status::get_json::<Value>(addr, "/api/jobs", timeout) {
                Ok(v) => Some(v),
                // An agent without the job routes still has a cluster to show.
                Err(Error::Status { status: 404, .. }) => None,
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    Ok(Snapshot { cluster, jobs })
}

impl View {
    /// Takes one fetch result: a success replaces the view, a failure keeps the old one and
    /// remembers since when the agent has been unreachable.
    pub fn update(&mut self, result: Result<Snapshot, Error>, now_ms: u64) {
        match result {
            Ok(s) => {
                self.last = Some(s);
                self.unreachable = None;
            }
            Err(e) => {
                let text = format!("{e}{}", source_chain(&e));
                let since = self.unreachable.as_ref().map_or(now_ms, |(t, _)| *t);
                self.unreachable = Some((since, text));
            }
        }
    }
}

/// The whole screen as text (lines end in `\n`): a title, the status table, the jobs and the
/// latest migrations.
pub fn render(view: &View, addr: &str, interval: Duration, now_ms: u64, style: Style) -> String {
    let mut out = format!(
        "drove top: {addr}, every {}, {}; q to quit\n",
        secs(interval),
        clock(now_ms)
    );
    if let Some((since, err)) = &view.unreachable {
        let (on, off) = if style.colour {
            ("\x1b[1;31m", "\x1b[0m")
        } else {
            ("", "")
        };
        let _ = writeln!(
            out,
            "{on}agent {addr} unreachable since {} ({err}){off}{}",
            clock(*since),
            if view.last.is_some() {
                "; showing its last answer"
            } else {
                ""
            }
        );
    }
    let Some(snap) = &view.last else {
        return out;
    };
    out.push('\n');
    out.push_str(&status::render(&snap.cluster, addr, style));
    out.push('\n');
    match &snap.jobs {
        None => out.push_str("jobs: this agent has no job API\n"),
        Some(jobs) => {
            out.push_str(&jobs_section(jobs));
            out.push('\n');
            out.push_str(&migrations_section(jobs, MIGRATIONS_SHOWN));
        }
    }
    out
}

/// The jobs as `drove ps` shows them, the ones still running first; for the merged cluster
/// answer, the nodes that did not answer are named (their jobs may be missing or stale).
fn jobs_section(jobs: &Value) -> String {
    let list = jobs["jobs"].as_array().cloned().unwrap_or_default();
    let scope = match jobs.get("self") {
        Some(n) => format!("cluster, via node {n}"),
        None => format!("node {}", jobs["node"]),
    };
    let mut out = if list.is_empty() {
        format!("jobs ({scope}): none\n")
    } else {
        let active = list.iter().filter(|j| j["state"] != "exited").count();
        let mut sorted = list;
        sorted.sort_by_key(|j| j["state"] == "exited");
        let mut out = format!(
            "jobs ({scope}): {active} active, {} ended\n",
            sorted.len() - active
        );
        out.push_str(&crate::jobs_client::ps_table(
            &serde_json::json!({ "jobs": sorted }),
        ));
        out
    };
    for n in jobs["unreachable"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  node {} ({}) did not answer: {}",
            n["number"],
            n["addr"].as_str().unwrap_or("?"),
            n["error"].as_str().unwrap_or("?")
        );
    }
    out
}

/// The last `n` migrations (every node's in the merged answer), newest first.
fn migrations_section(jobs: &Value, n: usize) -> String {
    let mut list = jobs["migrations"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "migrations: none yet\n".into();
    }
    list.sort_by_key(|m| std::cmp::Reverse(m["at_ms"].as_u64().unwrap_or(0)));
    let mut out = format!("migrations ({} in all, newest first):\n", list.len());
    let _ = writeln!(
        out,
        "{:<12} {:<8} {:>4} {:>4} {:<10} {:>9} {:>9}  OUTCOME",
        "WHEN", "JOB", "FROM", "TO", "REASON", "FREEZE", "TOTAL"
    );
    for m in list.iter().take(n) {
        let outcome = match m["error"].as_str() {
            Some(e) if !e.is_empty() => format!("{}: {e}", m["outcome"].as_str().unwrap_or("?")),
            _ => m["outcome"].as_str().unwrap_or("?").to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<8} {:>4} {:>4} {:<10} {:>9} {:>9}  {outcome}",
            clock(m["at_ms"].as_u64().unwrap_or(0)),
            m["job"].as_str().unwrap_or("?"),
            m["from"].to_string(),
            m["to"].to_string(),
            m["reason"].as_str().unwrap_or("?"),
            format!("{} ms", m["freeze_ms"].as_u64().unwrap_or(0)),
            format!("{} ms", m["total_ms"].as_u64().unwrap_or(0)),
        );
    }
    out
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s:.1}s")
    }
}

/// `HH:MM:SS UTC` of a Unix-ms time.
fn clock(ms: u64) -> String {
    let day = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", day / 3600, day / 60 % 60, day % 60)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

/// Only the first `rows` lines (the screen's height), so a long job list never scrolls the view.
fn fit(text: &str, rows: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= rows || rows < 2 {
        return text.to_owned();
    }
    let mut out: String = lines[..rows - 1].iter().map(|l| format!("{l}\n")).collect();
    let _ = writeln!(out, "… {} more lines", lines.len() - (rows - 1));
    out
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Raw-ish terminal for the life of the value: no echo, no line buffering, Ctrl-C as a key,
/// alternate screen, no cursor, no line wrap. `Drop` puts everything back.
struct Terminal {
    saved: Option<libc::termios>,
}

impl Terminal {
    fn enter() -> Terminal {
        let mut saved = None;
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed termios we own; failure (not a
        // terminal) leaves `saved` None and the terminal untouched.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::isatty(0) == 1 && libc::tcgetattr(0, &mut t) == 0 {
                let orig = t;
                t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
                t.c_cc[libc::VMIN] = 0;
                t.c_cc[libc::VTIME] = 0;
                if libc::tcsetattr(0, libc::TCSANOW, &t) == 0 {
                    saved = Some(orig);
                }
            }
        }
        print!("\x1b[?1049h\x1b[?25l\x1b[?7l");
        let _ = std::io::stdout().flush();
        Terminal { saved }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        print!("\x1b[?7h\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        if let Some(t) = &self.saved {
            // SAFETY: restores the termios read in `enter` on the same fd.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, t);
            }
        }
    }
}

/// Screen size (rows, columns); (24, 80) when unknown.
fn screen_rows() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    unsafe {
        let mut w: libc::winsize = std::mem::zeroed();
        if libc::ioctl(1, libc::TIOCGWINSZ, &mut w) == 0 && w.ws_row > 0 {
            return w.ws_row as usize;
        }
    }
    24
}

/// Waits up to `timeout` for a key; true when it was `q`, `Q`, Ctrl-C or Ctrl-D, or a signal
/// asked to stop. Without a terminal on stdin it only sleeps.
fn wait_for_quit(timeout: Duration, keys: bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if STOP.load(Ordering::SeqCst) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        // Wake at least every 200 ms to see the signal flag.
        let slice = left.min(Duration::from_millis(200));
        if !keys {
            std::thread::sleep(slice);
            continue;
        }
        let mut fd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let n = unsafe { libc::poll(&mut fd, 1, slice.as_millis() as libc::c_int) };
        if n > 0 {
            let mut buf = [0u8; 64];
            // SAFETY: reads into a buffer we own, at most its length.
            let got = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 {
                // EOF or error on stdin: stop reading keys, keep running.
                std::thread::sleep(slice);
                continue;
            }
            if buf[..got as usize]
                .iter()
                .any(|&b| matches!(b, b'q' | b'Q' | 3 | 4))
            {
                return true;
            }
        }
    }
}

/// `drove top`: the live view of the agent at `node` until `q`, Ctrl-C or a signal. An agent
/// that does not answer the first time is an error; later, an "unreachable since" line.
pub fn run(node: &str, interval: Duration, once: bool) -> Result<(), Error> {
    let addr = status::normalize_addr(node)?;
    let interval = interval.max(Duration::from_millis(200));
    let mut view = View::default();
    view.update(Ok(fetch(&addr, status::TIMEOUT)?), now_ms());
    if once {
        let style = Style::for_stdout();
        print!("{}", render(&view, &addr, interval, now_ms(), style));
        return Ok(());
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
    let keys = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let style = Style::for_stdout();
    let _terminal = Terminal::enter();
    let mut stdout = std::io::stdout();
    loop {
        let text = fit(
            &render(&view, &addr, interval, now_ms(), style),
            screen_rows(),
        );
        let mut frame = String::from("\x1b[H");
        for line in text.lines() {
            let _ = write!(frame, "{line}\x1b[K\r\n");
        }
        frame.push_str("\x1b[J");
        let _ = stdout.write_all(frame.as_bytes());
        let _ = stdout.flush();
        if wait_for_quit(interval, keys) {
            return Ok(());
        }
        let result = fetch(&addr, RUN_TIMEOUT);
        view.update(result, now_ms());
        if STOP.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CLUSTER: &str = r#"{"cluster": "t", "self": 1, "nodes": [
      {"number": 1, "name": "node1", "addr": "10.10.0.1", "state": "up", "load": 0.25, "speed": 1000.0,
       "mem_free": 402653184, "mem_total": 520093696, "jobs": 2, "guest_jobs": 0, "last_heard_ms": 0, "conflict": null},
      {"number": 2, "name": "node2", "addr": "10.10.0.2", "state": "down", "load": 0.0, "speed": 1000.0,
       "mem_free": 0, "mem_total": 520093696, "jobs": 0, "guest_jobs": 1, "last_heard_ms": 9000, "conflict": null}]}"#;

    const JOBS: &str = r#"{"node": 1, "jobs": [
      {"id": "1.1", "cmd": ["sleep", "100"], "home": 1, "node": 2, "state": "moved", "pid": null,
       "exit_code": null, "signal": null, "started_ms": 1000, "migrations": 1},
      {"id": "1.2", "cmd": ["true"], "home": 1, "node": 1, "state": "exited", "pid": null,
       "exit_code": 0, "signal": null, "started_ms": 2000, "migrations": 0},
      {"id": "1.3", "cmd": ["yes"], "home": 1, "node": 1, "state": "running", "pid": 42,
       "exit_code": null, "signal": null, "started_ms": 3000, "migrations": 0}],
     "migrations": [
      {"job": "1.1", "from": 1, "to": 2, "reason": "manual", "freeze_ms": 180, "bytes": 1048576,
       "total_ms": 900, "outcome": "moved", "error": null, "at_ms": 3723000},
      {"job": "1.3", "from": 1, "to": 2, "reason": "balance", "freeze_ms": 90, "bytes": 0,
       "total_ms": 300, "outcome": "resumed", "error": "criu dump failed", "at_ms": 3724000}]}"#;

    fn snapshot() -> Snapshot {
        Snapshot {
            cluster: serde_json::from_str(CLUSTER).unwrap(),
            jobs: Some(serde_json::from_str(JOBS).unwrap()),
        }
    }

    #[test]
    fn renders_nodes_jobs_and_migrations() {
        let mut view = View::default();
        view.update(Ok(snapshot()), 0);
        let text = render(
            &view,
            "127.0.0.1:7030",
            Duration::from_secs(2),
            3_725_000,
            Style::default(),
        );
        assert!(
            text.starts_with("drove top: 127.0.0.1:7030, every 2s, 01:02:05 UTC; q to quit\n"),
            "{text}"
        );
        // The status table, as `drove status` draws it.
        assert!(text.contains(&status::render(
            &view.last.as_ref().unwrap().cluster,
            "127.0.0.1:7030",
            Style::default()
        )));
        assert!(text.contains("node1") && text.contains("node2") && text.contains("down"));
        // Jobs: active first, the exited one last.
        assert!(
            text.contains("jobs (node 1): 2 active, 1 ended\n"),
            "{text}"
        );
        let (moved, running, exited) = (
            text.find("1.1      moved").unwrap(),
            text.find("1.3      running").unwrap(),
            text.find("1.2      exited").unwrap(),
        );
        assert!(moved < exited && running < exited, "{text}");
        // Migrations newest first, with freeze time, outcome and error.
        assert!(
            text.contains("migrations (2 in all, newest first):"),
            "{text}"
        );
        let newest = text.find("01:02:04 UTC 1.3").unwrap();
        let older = text.find("01:02:03 UTC 1.1").unwrap();
        assert!(newest < older, "{text}");
        assert!(text.contains("balance") && text.contains("90 ms"));
        assert!(text.contains("resumed: criu dump failed"));
        assert!(text.contains("180 ms") && text.contains("  moved\n"));
        assert!(!text.contains("unreachable"));
        assert!(!text.contains('\x1b'), "no colour without a terminal");
    }

    #[test]
    fn unreachable_keeps_the_last_view() {
        let mut view = View::default();
        view.update(Ok(snapshot()), 0);
        let err = || {
            Err(Error::Connect {
                addr: "127.0.0.1:7030".into(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            })
        };
        view.update(err(), 3_600_000);
        view.update(err(), 3_660_000);
        let text = render(
            &view,
            "127.0.0.1:7030",
            Duration::from_millis(1500),
            3_660_000,
            Style::default(),
        );
        assert!(
            text.contains("agent 127.0.0.1:7030 unreachable since 01:00:00 UTC (cannot reach the agent at 127.0.0.1:7030: "),
            "{text}"
        );
        assert!(text.contains("showing its last answer"));
        assert!(text.contains("every 1.5s"));
        assert!(text.contains("node2"));
        // Back: the line goes.
        view.update(Ok(snapshot()), 3_700_000);
        assert!(
            !render(&view, "a:1", Duration::from_secs(1), 0, Style::default())
                .contains("unreachable")
        );
    }

    #[test]
    fn without_job_api_or_jobs() {
        let mut view = View::default();
        let mut s = snapshot();
        s.jobs = None;
        view.update(Ok(s.clone()), 0);
        let text = render(&view, "a:1", Duration::from_secs(1), 0, Style::default());
        assert!(text.contains("jobs: this agent has no job API"));
        s.jobs = Some(serde_json::json!({"node": 3, "jobs": [], "migrations": []}));
        view.update(Ok(s), 0);
        let text = render(&view, "a:1", Duration::from_secs(1), 0, Style::default());
        assert!(text.contains("jobs (node 3): none\n") && text.contains("migrations: none yet\n"));
    }

    #[test]
    fn the_merged_answer_shows_every_node_and_who_did_not_answer() {
        let mut s = snapshot();
        s.jobs = Some(serde_json::json!({"cluster": "t", "self": 1,
            "jobs": [
              {"id": "1.1", "cmd": ["sleep", "100"], "home": 1, "node": 2, "state": "running",
               "pid": 7, "exit_code": null, "signal": null, "started_ms": 1000, "migrations": 1},
              {"id": "2.1", "cmd": ["md5sum", "big"], "home": 2, "node": 2, "state": "running",
               "pid": 9, "exit_code": null, "signal": null, "started_ms": 1000, "migrations": 0}],
            "migrations": [],
            "unreachable": [{"number": 3, "addr": "10.0.0.3:7030", "error": "timed out"}]}));
        let mut view = View::default();
        view.update(Ok(s), 0);
        let text = render(&view, "a:1", Duration::from_secs(1), 0, Style::default());
        assert!(
            text.contains("jobs (cluster, via node 1): 2 active, 0 ended\n"),
            "{text}"
        );
        assert!(
            text.contains("2.1") && text.contains("md5sum big"),
            "{text}"
        );
        assert!(
            text.contains("  node 3 (10.0.0.3:7030) did not answer: timed out\n"),
            "{text}"
        );
    }

    #[test]
    fn fits_the_screen() {
        let text: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let fitted = fit(&text, 10);
        assert_eq!(fitted.lines().count(), 10);
        assert!(fitted.ends_with("… 41 more lines\n"), "{fitted}");
        assert_eq!(fit("a\nb\n", 10), "a\nb\n");
    }

    #[test]
    fn first_fetch_failure_names_the_agent() {
        // A port nobody listens on: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = run(&format!("127.0.0.1:{port}"), Duration::from_secs(1), false).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("cannot reach the agent at 127.0.0.1:{port}")),
            "{err}"
        );
    }
}
