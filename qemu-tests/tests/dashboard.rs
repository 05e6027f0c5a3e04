//! The dashboard in a real browser against a real cluster (issue 5): three QEMU nodes (the
//! cluster harness), Debian's headless Chromium driven over the Chrome DevTools Protocol.
//!
//! Checks, through the page as a person would use it:
//! - a row for every node, each up (green);
//! - a job started through the API shows in the job list; clicking the job, then node 2, then
//!   *migrate* asks for the cluster key (a `prompt`, answered like a person typing it) and the
//!   job moves: node 1's API says it runs on node 2, and the migration shows in the timeline;
//! - node 3's QEMU killed: its row turns red (`down`, red lamp) on the page;
//! - a screenshot of the page is saved as `target/qemu-tests/dashboard.png` (its path printed).
//!
//! CDP runs over `--remote-debugging-pipe` (fd 3 in, fd 4 out, NUL-separated JSON): no
//! websocket and no port, so the test needs no extra crate. Chromium must be installed
//! (`scripts/install-deps.sh test`, which `make test` runs).

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use drove::jobs_client::Agent;
use drove::status::State;
use drove_qemu_tests::cluster::{all_in_state, test_images};
use drove_qemu_tests::{workspace_root, Cluster, Error};
use serde_json::{json, Value};

/// A long job (TCG runs awk ~10x slower than the host): it must still run when it is moved.
const PROGRAM: &str =
    "BEGIN {for(i=0;i<20000000;i++){s+=i; if(i%200000==0) print \"at\", i}; print s}";

/// Limit for one CDP command (a page under TCG-loaded CPUs can be slow).
const CDP_TIMEOUT: Duration = Duration::from_secs(60);

/// Headless Chromium with a CDP pipe; killed (its whole process group) on drop.
struct Browser {
    child: Child,
    to_browser: std::fs::File,
    from_browser: Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    /// What to type into a `prompt()` when the page asks.
    prompt_answer: String,
    /// Dialogs the page opened: (type, message).
    dialogs: Vec<(String, String)>,
    _profile: tempfile::TempDir,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both are fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("no chromium in /usr/bin: install Debian's chromium (`scripts/install-deps.sh test`)");
}

impl Browser {
    fn start() -> Browser {
        use std::os::fd::AsRawFd;
        let profile = tempfile::Builder::new()
            .prefix("drove-dashboard-chromium-")
            .tempdir()
            .unwrap();
        // Chromium reads commands on fd 3 and writes answers and events on fd 4.
        let (cmd_r, cmd_w) = pipe();
        let (resp_r, resp_w) = pipe();
        let (cr, rw) = (cmd_r.as_raw_fd(), resp_w.as_raw_fd());
        let mut command = Command::new(chromium());
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: only async-signal-safe calls (fcntl, dup2, prctl) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Move both ends above 3 and 4 first, so dup2 cannot clobber one with the other.
                let a = libc::fcntl(cr, libc::F_DUPFD, 10);
                let b = libc::fcntl(rw, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        drop((cmd_r, resp_w));
        let (tx, rx) = channel();
        let mut reader = std::fs::File::from(resp_r);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                let n = match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|b| *b == 0) {
                    let msg: Vec<u8> = buf.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1]) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Browser {
            child,
            to_browser: std::fs::File::from(cmd_w),
            from_browser: rx,
            next_id: 0,
            session: None,
            prompt_answer: String::new(),
            dialogs: Vec::new(),
            _profile: profile,
        }
    }

    fn send(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("CDP {method}: chromium's pipe is closed: {e}"));
        self.next_id
    }

    /// One command; its result. Dialogs opened meanwhile are answered (see `prompt_answer`).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params);
        let deadline = Instant::now() + CDP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match self.from_browser.recv_timeout(left) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("CDP {method}: no answer in {CDP_TIMEOUT:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "CDP {method}: chromium went away ({:?})",
                        self.child.try_wait()
                    )
                }
            };
            if msg["method"] == "Page.javascriptDialogOpening" {
                let p = &msg["params"];
                let kind = p["type"].as_str().unwrap_or("?").to_owned();
                self.dialogs
                    .push((kind.clone(), p["message"].as_str().unwrap_or("").to_owned()));
                let answer = json!({"accept": true, "promptText": self.prompt_answer});
                self.send("Page.handleJavaScriptDialog", answer);
                continue;
            }
            if msg["id"].as_u64() == Some(id) {
                if let Some(e) = msg.get("error") {
                    panic!("CDP {method}: {e}");
                }
                return msg["result"].clone();
            }
        }
    }

    /// Opens a tab, attaches to it (flat session) and sets a desktop-sized viewport.
    fn open_tab(&mut self) {
        let t = self.call("Target.createTarget", json!({"url": "about:blank"}));
        let target = t["targetId"].as_str().unwrap().to_owned();
        let a = self.call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        self.session = Some(a["sessionId"].as_str().unwrap().to_owned());
        self.call("Page.enable", json!({}));
        self.call("Runtime.enable", json!({}));
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 1100, "deviceScaleFactor": 1, "mobile": false}),
        );
    }

    /// Evaluates `expr` in the page; its value (JSON-serialisable results only).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("page script {expr:?} failed: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until `ok(value)`, up to `timeout`; the last value on failure.
    fn wait_for(
        &mut self,
        what: &str,
        expr: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.eval(expr);
            if ok(&v) {
                eprintln!("dashboard: {what} after {:.1}s", t0.elapsed().as_secs_f64());
                return v;
            }
            assert!(
                t0.elapsed() < timeout,
                "page: not {what} within {timeout:?}; last: {v}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A real mouse click (press and release) in the middle of the element `selector`.
    fn click(&mut self, selector: &str) {
        let expr = format!(
            "(() => {{ const e = document.querySelector({s}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
            s = json!(selector)
        );
        let at = self.eval(&expr);
        let (x, y) = match (at[0].as_f64(), at[1].as_f64()) {
            (Some(x), Some(y)) => (x, y),
            _ => panic!("page: nothing to click at {selector}"),
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    fn screenshot(&mut self, dest: &Path) {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64_decode(shot["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, &png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's process group.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Standard base64 (what CDP sends screenshots in).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_round_trip() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
}

/// `[[number, className], ...]` of the node rows.
const NODE_ROWS: &str = "[...document.querySelectorAll('#nodes-body tr')]\
    .map(r => [Number(r.dataset.number), r.className])";

fn row_state(rows: &Value, n: u64) -> String {
    rows.as_array()
        .into_iter()
        .flatten()
        .find(|r| r[0].as_u64() == Some(n))
        .map(|r| r[1].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

#[test]
fn dashboard_shows_nodes_migrates_a_job_and_a_dead_node_turns_red() -> Result<(), Error> {
    let images = test_images()?;
    let mut cluster = Cluster::start_named("dashboard", 3, &images.main)?;
    cluster.wait_until(1, Duration::from_secs(90), "nodes 1-3 up", |t| {
        all_in_state(t, &[1, 2, 3], State::Up)
    })?;
    let key = images.main.key_hex()?;
    let api1 = cluster.api(1)?;
    let node1 = Agent::new(&api1.to_string(), Some(key.clone()));

    let mut browser = Browser::start();
    browser.open_tab();
    browser.call("Page.navigate", json!({"url": format!("http://{api1}/")}));

    // A row per node, all up.
    let rows = browser.wait_for(
        "3 node rows, all up",
        NODE_ROWS,
        Duration::from_secs(60),
        |v| (1..=3).all(|n| row_state(v, n).split(' ').any(|c| c == "up")),
    );
    eprintln!("dashboard: node rows {rows}");
    assert_eq!(rows.as_array().unwrap().len(), 3, "{rows}");
    let lamp = browser.eval(
        "getComputedStyle(document.querySelector('#nodes-body tr[data-number=\"1\"] .lamp')).backgroundColor",
    );
    assert_eq!(lamp, "rgb(34, 170, 34)", "node 1's lamp is not green");

    // A job, started through the API, appears in the page's job list.
    let job = node1
        .launch(&["/bin/busybox".into(), "awk".into(), PROGRAM.into()])
        .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let row = format!("#jobs-body tr[data-id=\"{id}\"]");
    browser.wait_for(
        &format!("job {id} listed"),
        &format!("!!document.querySelector({})", json!(row)),
        Duration::from_secs(30),
        |v| *v == json!(true),
    );

    // Pick the job, then node 2, then migrate; the page asks for the key once.
    browser.prompt_answer = key.clone();
    browser.click(&row);
    browser.click("#nodes-body tr[data-number=\"2\"]");
    let picked = browser.eval(
        "[document.getElementById('migrate-job').value, document.getElementById('migrate-to').value]",
    );
    assert_eq!(picked, json!([id, "2"]), "clicks did not pick job and node");
    browser.click("#migrate-btn");
    let result = browser.wait_for(
        "the migration result shown",
        "document.getElementById('migrate-result').textContent",
        Duration::from_secs(240),
        |v| {
            v.as_str()
                .is_some_and(|t| !t.is_empty() && !t.contains('…'))
        },
    );
    eprintln!(
        "dashboard: migrate result {result}; dialogs {:?}",
        browser.dialogs
    );
    assert_eq!(browser.dialogs.len(), 1, "{:?}", browser.dialogs);
    assert_eq!(browser.dialogs[0].0, "prompt");
    assert!(
        result.as_str().unwrap().contains("moved 1 → 2"),
        "{result}\n{}",
        cluster.console_lines_with("jobs:")
    );
    let there = node1.job(&id).unwrap();
    assert_eq!(
        (there["node"].as_u64(), there["state"].as_str()),
        (Some(2), Some("running")),
        "the API does not have job {id} on node 2: {there}"
    );
    // The page lists it on node 2 (from the cluster-wide list) and in the timeline.
    browser.wait_for(
        "the job on node 2 and the migration in the timeline",
        &format!(
            "[document.querySelector({}).children[3].textContent, \
             document.getElementById('migrations-body').textContent]",
            json!(row)
        ),
        Duration::from_secs(30),
        |v| {
            v[0].as_str().is_some_and(|t| t.starts_with("2 "))
                && v[1]
                    .as_str()
                    .is_some_and(|t| t.contains(&id) && t.contains("moved"))
        },
    );
    // The key is asked once per session: a second change does not ask again.
    browser.click("#home-btn");
    browser.wait_for(
        "the job back home",
        "document.getElementById('migrate-result').textContent",
        Duration::from_secs(240),
        |v| {
            v.as_str()
                .is_some_and(|t| t.contains("moved 2 → 1") || t.contains(": "))
        },
    );
    assert_eq!(browser.dialogs.len(), 1, "asked for the key twice");
    assert_eq!(node1.job(&id).unwrap()["node"], 1);

    // Node 3 dies: its row turns red.
    cluster.kill(3)?;
    let rows = browser.wait_for(
        "node 3 red (down)",
        NODE_ROWS,
        Duration::from_secs(30),
        |v| row_state(v, 3).split(' ').any(|c| c == "down"),
    );
    assert!(row_state(&rows, 1).contains("up") && row_state(&rows, 2).contains("up"));
    let lamp = browser.eval(
        "getComputedStyle(document.querySelector('#nodes-body tr[data-number=\"3\"] .lamp')).backgroundColor",
    );
    assert_eq!(lamp, "rgb(221, 34, 34)", "node 3's lamp is not red");
    // The event stream said so too.
    browser.wait_for(
        "a down event listed",
        "document.getElementById('events').textContent",
        Duration::from_secs(30),
        |v| {
            v.as_str()
                .is_some_and(|t| t.contains("node 3") && t.contains("down"))
        },
    );

    let shot = workspace_root().join("target/qemu-tests/dashboard.png");
    browser.screenshot(&shot);
    println!("dashboard screenshot: {}", shot.display());
    eprintln!("dashboard screenshot: {}", shot.display());
    node1.kill(&id).ok();
    Ok(())
}
