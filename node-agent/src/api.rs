//! The agent's HTTP API (axum): the cluster table, this node, an event stream and Prometheus
//! metrics. Reads need no key; anything that changes state needs
//! `Authorization: Bearer <hex cluster key>`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/cluster` | `{"cluster", "self", "nodes": [row...]}` sorted by number, self included |
//! | `GET /api/node` | this node's row plus `uptime_s`, `kernel`, `version`, `calibration`, `criu` (the CRIU self-check: state pending/ok/failed, error, warnings, features), `files` (the cluster file area: state, mount, source, reason) |
//! | `GET /api/events` | SSE: `event: joined|left|down|up|conflict`, `data: {"number","name","addr","at_ms"}` |
//! | `GET /metrics` | Prometheus text |
//! | `POST /api/node/poweroff` | key needed; 202 and the node powers off |
//! | `POST /api/node/reboot` | key needed; 202 and the node reboots (409 while it has jobs, unless `?force=1`) |
//! | `POST /api/node/lock`, `/api/node/unlock` | key needed; this node refuses (takes) guest jobs |

use crate::gossip::{Event, Membership, State};
use axum::extract::State as Extract;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::broadcast;

/// Calibration as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CalibrationInfo {
    pub cpu: String,
    /// What the boot benchmark measured; `null` when calibration pinned the speed.
    pub measured: Option<f64>,
    pub speed: f64,
}

/// Everything the handlers read, shared with the gossip loop.
pub struct Shared {
    pub membership: Mutex<Membership>,
    pub events: broadcast::Sender<Event>,
    /// The cluster key as hex (what a client sends); `None` when the node has no key.
    pub key_hex: Option<String>,
    pub kernel: String,
    pub calibration: CalibrationInfo,
    pub started: Instant,
    /// Unix ms at `started`: turns the membership clock into wall-clock `at_ms`.
    pub wall_start_ms: u64,
    /// Seconds the node had been up when `started`.
    pub uptime_at_start: f64,
    /// Called by `POST /api/node/poweroff`.
    pub poweroff: Box<dyn Fn() + Send + Sync>,
    /// Called by `POST /api/node/reboot` (a netbooted node comes back with the server's image).
    pub reboot: Box<dyn Fn() + Send + Sync>,
}

impl Shared {
    pub fn membership(&self) -> MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Milliseconds on the membership clock.
    pub fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether `headers` carry the cluster key.
    pub fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(key) = &self.key_hex else {
            return false;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        // Constant time in the key's length.
        given.len() == key.len()
            && given
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/cluster", get(cluster))
        .route("/api/node", get(node))
        .route("/api/events", get(events))
        .route("/metrics", get(metrics))
        .route("/api/node/poweroff", post(poweroff))
        .route("/api/node/reboot", post(reboot))
        .route("/api/node/lock", post(lock))
        .route("/api/node/unlock", post(unlock))
        .merge(crate::dashboard::router())
        .with_state(shared)
}

pub fn cluster_json(shared: &Shared) -> Value {
    let now = shared.now();
    let m = shared.membership();
    json!({ "cluster": m.cfg.cluster, "self": m.me().number, "nodes": m.table(now) })
}

async fn cluster(Extract(shared): Extract<Arc<Shared>>) -> Json<Value> {
    Json(cluster_json(&shared))
}

pub fn node_json(shared: &Shared) -> Value {
    let now = shared.now();
    let (number, addr, rows) = {
        let m = shared.membership();
        (m.me().number, m.me().addr.to_string(), m.table(now))
    };
    let mut row = rows
        .into_iter()
        .find(|r| r.number == number && r.addr == addr)
        .map(|r| serde_json::to_value(r).unwrap_or_default())
        .unwrap_or_else(|| json!({}));
    if let Value::Object(o) = &mut row {
        o.insert(
            "uptime_s".into(),
            json!((shared.uptime_at_start + now as f64 / 1000.0).floor() as u64),
        );
        o.insert("kernel".into(), json!(shared.kernel));
        o.insert("version".into(), json!(crate::pid1::VERSION));
        o.insert("calibration".into(), json!(shared.calibration));
        o.insert("criu".into(), crate::selfcheck::status_json());
        o.insert("image".into(), json!(image_id()));
        o.insert("files".into(), crate::cluster_fs::status_json());
    }
    row
}

async fn node(Extract(shared): Extract<Arc<Shared>>) -> Json<Value> {
    Json(node_json(&shared))
}

/// One event as SSE data (`at_ms` in wall-clock Unix milliseconds).
pub fn event_data(shared: &Shared, e: &Event) -> String {
    json!({ "number": e.number, "name": e.name, "addr": e.addr.to_string(), "at_ms": shared.wall_start_ms + e.at_ms })
        .to_string()
}

async fn events(
    Extract(shared): Extract<Arc<Shared>>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = shared.events.subscribe();
    let stream = futures_util::stream::unfold((rx, shared), |(mut rx, shared)| async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let ev = SseEvent::default()
                        .event(e.kind.as_str())
                        .data(event_data(&shared, &e));
                    return Some((Ok(ev), (rx, shared)));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Prometheus text exposition.
pub fn metrics_text(shared: &Shared) -> String {
    let now = shared.now();
    let m = shared.membership();
    let rows = m.table(now);
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, values: &mut dyn Iterator<Item = String>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for v in values {
                let _ = writeln!(out, "{v}");
            }
        };
    let label = |r: &crate::gossip::Row| {
        let name = if r.name.is_empty() {
            r.addr.clone()
        } else {
            r.name.clone()
        };
        format!(
            "{{node=\"{}\",number=\"{}\",addr=\"{}\"}}",
            escape(&name),
            r.number,
            r.addr
        )
    };
    family(
        "drove_node_up",
        "gauge",
        "1 when the node is up, 0 when suspect or down",
        &mut rows.iter().map(|r| {
            format!(
                "drove_node_up{} {}",
                label(r),
                u8::from(r.state == State::Up)
            )
        }),
    );
    family(
        "drove_node_load",
        "gauge",
        "run-queue load normalised by speed",
        &mut rows
            .iter()
            .map(|r| format!("drove_node_load{} {}", label(r), r.load)),
    );
    family(
        "drove_node_speed",
        "gauge",
        "calibrated CPU speed",
        &mut rows
            .iter()
            .map(|r| format!("drove_node_speed{} {}", label(r), r.speed)),
    );
    family(
        "drove_node_mem_free_bytes",
        "gauge",
        "available memory",
        &mut rows
            .iter()
            .map(|r| format!("drove_node_mem_free_bytes{} {}", label(r), r.mem_free)),
    );
    let up = rows.iter().filter(|r| r.state == State::Up).count();
    family(
        "drove_cluster_nodes_up",
        "gauge",
        "nodes this node sees up, itself included",
        &mut std::iter::once(format!("drove_cluster_nodes_up {up}")),
    );
    family(
        "drove_gossip_messages_sent_total",
        "counter",
        "gossip datagrams sent",
        &mut std::iter::once(format!("drove_gossip_messages_sent_total {}", m.stats.sent)),
    );
    family(
        "drove_gossip_messages_received_total",
        "counter",
        "gossip datagrams accepted",
        &mut std::iter::once(format!(
            "drove_gossip_messages_received_total {}",
            m.stats.received
        )),
    );
    family(
        "drove_gossip_messages_rejected_total",
        "counter",
        "gossip datagrams dropped (bad key, garbage, replay, stranger)",
        &mut std::iter::once(format!(
            "drove_gossip_messages_rejected_total {}",
            m.stats.rejected
        )),
    );
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn metrics(Extract(shared): Extract<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_text(&shared),
    )
        .into_response()
}

/// The image this node booted: `drove.image=` on the kernel command line (the builder puts it
/// there); `None` for an image built before image ids, or booted by hand without it.
pub fn image_id() -> Option<String> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        image_id_in(&cmdline)
    })
    .clone()
}

fn image_id_in(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("drove.image="))
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

#[derive(serde::Deserialize, Default)]
struct RebootQuery {
    force: Option<String>,
}

/// `drove update` reboots a drained node; a node that still runs jobs would lose them, so that
/// needs `?force=1`.
async fn reboot(
    Extract(shared): Extract<Arc<Shared>>,
    headers: HeaderMap,
    query: Option<axum::extract::Query<RebootQuery>>,
) -> Response {
    if !shared.authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "this needs the cluster key: Authorization: Bearer <hex key>"})),
        )
            .into_response();
    }
    let force = query
        .and_then(|q| q.0.force)
        .is_some_and(|f| f == "1" || f == "true");
    let jobs = shared.membership().me().load.jobs;
    if jobs > 0 && !force {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": format!("this node runs {jobs} job(s), which a reboot would kill: move them first (drove update drains nodes) or add ?force=1")})),
        )
            .into_response();
    }
    crate::info!("API: reboot requested");
    (shared.reboot)();
    (StatusCode::ACCEPTED, Json(json!({"action": "reboot"}))).into_response()
}

async fn poweroff(Extract(shared): Extract<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !shared.authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "this needs the cluster key: Authorization: Bearer <hex key>"})),
        )
            .into_response();
    }
    crate::info!("API: poweroff requested");
    (shared.poweroff)();
    (StatusCode::ACCEPTED, Json(json!({"action": "poweroff"}))).into_response()
}

/// Where the lock is kept across daemon restarts (tmpfs: a reboot unlocks, as `mosctl lock` did).
pub const LOCK_FILE: &str = "/run/drove/locked";

async fn lock(Extract(shared): Extract<Arc<Shared>>, headers: HeaderMap) -> Response {
    set_lock(&shared, &headers, true)
}

async fn unlock(Extract(shared): Extract<Arc<Shared>>, headers: HeaderMap) -> Response {
    set_lock(&shared, &headers, false)
}

/// `drove lock`/`unlock`: the node refuses (takes again) guest jobs; its own jobs stay.
fn set_lock(shared: &Shared, headers: &HeaderMap, locked: bool) -> Response {
    if !shared.authorized(headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "this needs the cluster key: Authorization: Bearer <hex key>"})),
        )
            .into_response();
    }
    let number = {
        let mut m = shared.membership();
        m.set_refuses_guests(locked);
        m.me().number
    };
    // Unit tests must not write to the host's /run.
    let kept = if cfg!(test) {
        Ok(())
    } else if locked {
        std::fs::create_dir_all("/run/drove").and_then(|()| std::fs::write(LOCK_FILE, b"locked\n"))
    } else {
        std::fs::remove_file(LOCK_FILE).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })
    };
    if let Err(e) = kept {
        crate::warn!(
            "lock: cannot update {LOCK_FILE}: {e} (the lock holds until the daemon restarts)"
        );
    }
    crate::info!(
        "API: node {number} {}",
        if locked {
            "locked: takes no guest jobs"
        } else {
            "unlocked: takes guest jobs"
        }
    );
    Json(json!({"number": number, "refuses_guests": locked})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::{Config, Entry, Load};
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::ServiceExt;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn shared(calls: Arc<AtomicU32>) -> Arc<Shared> {
        let me = Entry {
            number: 1,
            name: "node1".into(),
            addr: "10.10.0.1".parse().unwrap(),
            incarnation: 1,
            heartbeat: 0,
            age_ms: 0,
            load: Load {
                load: 0.25,
                speed: 1000.0,
                mem_free: 100,
                mem_total: 200,
                jobs: 0,
                guest_jobs: 0,
                ..Load::default()
            },
            leaving: false,
        };
        let map = vec![
            (1, "10.10.0.1".parse().unwrap()),
            (2, "10.10.0.2".parse().unwrap()),
        ];
        let key = hex::decode(KEY).unwrap();
        Arc::new(Shared {
            membership: Mutex::new(Membership::new(Config::new("t", false), &key, me, map, 0)),
            events: broadcast::channel(16).0,
            key_hex: Some(KEY.into()),
            kernel: "6.1.0".into(),
            calibration: CalibrationInfo {
                cpu: "qemu".into(),
                measured: Some(900.0),
                speed: 1000.0,
            },
            started: Instant::now(),
            wall_start_ms: 1_000_000,
            uptime_at_start: 5.0,
            poweroff: Box::new(move || {
                calls.fetch_add(1, Ordering::SeqCst);
            }),
            reboot: Box::new(|| {}),
        })
    }

    async fn call(s: &Arc<Shared>, req: Request<Body>) -> (StatusCode, String) {
        let resp = router(s.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn cluster_and_node_json_shapes() {
        let s = shared(Arc::default());
        let (st, body) = call(&s, get("/api/cluster")).await;
        assert_eq!(st, StatusCode::OK);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["cluster"], "t");
        assert_eq!(v["self"], 1);
        let nodes = v["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2);
        let me = &nodes[0];
        for k in [
            "number",
            "name",
            "addr",
            "state",
            "load",
            "speed",
            "mem_free",
            "mem_total",
            "jobs",
            "guest_jobs",
            "last_heard_ms",
            "conflict",
        ] {
            assert!(me.get(k).is_some(), "missing {k} in {me}");
        }
        assert_eq!(
            (
                me["state"].as_str(),
                me["load"].as_f64(),
                me["addr"].as_str()
            ),
            (Some("up"), Some(0.25), Some("10.10.0.1"))
        );
        assert_eq!(
            (nodes[1]["state"].as_str(), nodes[1]["number"].as_u64()),
            (Some("down"), Some(2))
        );
        assert!(nodes[1]["last_heard_ms"].is_null());

        let (_, body) = call(&s, get("/api/node")).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["number"], 1);
        assert_eq!(v["kernel"], "6.1.0");
        assert_eq!(v["calibration"]["speed"], 1000.0);
        assert!(v["uptime_s"].as_u64().unwrap() >= 5);
        assert_eq!(v["version"], crate::pid1::VERSION);
    }

    #[tokio::test]
    async fn changes_need_the_key() {
        let calls = Arc::new(AtomicU32::new(0));
        let s = shared(calls.clone());
        let post = |auth: Option<&str>| {
            let mut r = Request::post("/api/node/poweroff");
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.body(Body::empty()).unwrap()
        };
        assert_eq!(call(&s, post(None)).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(
            call(&s, post(Some("Bearer 00"))).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&s, post(Some(&format!("Bearer {}", KEY.replace('0', "1")))))
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(
            call(&s, post(Some(&format!("Bearer {}", KEY.to_uppercase()))))
                .await
                .0,
            StatusCode::ACCEPTED
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Lock and unlock: key needed; the flag shows in this node's row.
        let lock = |path: &str, auth: Option<&str>| {
            let mut r = Request::post(path);
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.body(Body::empty()).unwrap()
        };
        let good = format!("Bearer {KEY}");
        assert_eq!(
            call(&s, lock("/api/node/lock", None)).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert!(!s.membership().me().load.refuses_guests);
        let (st, body) = call(&s, lock("/api/node/lock", Some(&good))).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert!(s.membership().me().load.refuses_guests);
        let (_, body) = call(&s, get("/api/node")).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["refuses_guests"], true, "{v}");
        assert_eq!(
            call(&s, lock("/api/node/unlock", Some("Bearer 00")))
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert!(s.membership().me().load.refuses_guests);
        call(&s, lock("/api/node/unlock", Some(&good))).await;
        assert!(!s.membership().me().load.refuses_guests);
        // Reads need nothing; a GET on the changing route is not a change.
        assert_eq!(
            call(&s, get("/api/node/poweroff")).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn dashboard_is_served_at_root() {
        let s = shared(Arc::default());
        let (st, body) = call(&s, get("/")).await;
        assert_eq!(st, StatusCode::OK);
        assert!(body.contains("id=\"nodes-body\""), "{body}");
        assert_eq!(
            call(&s, get("/assets/dashboard.js")).await.0,
            StatusCode::OK
        );
    }

    #[test]
    fn image_id_from_the_command_line() {
        assert_eq!(
            image_id_in("console=ttyS0 drove.image=0123abcd quiet\n").as_deref(),
            Some("0123abcd")
        );
        assert_eq!(image_id_in("console=ttyS0 drove.image= quiet"), None);
        assert_eq!(image_id_in("console=ttyS0"), None);
    }

    #[tokio::test]
    async fn reboot_needs_the_key_and_no_jobs() {
        let s = shared(Arc::default());
        let post = |uri: &str, auth: bool| {
            let mut r = Request::post(uri);
            if auth {
                r = r.header("authorization", format!("Bearer {KEY}"));
            }
            r.body(Body::empty()).unwrap()
        };
        assert_eq!(
            call(&s, post("/api/node/reboot", false)).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&s, post("/api/node/reboot", true)).await.0,
            StatusCode::ACCEPTED
        );
        s.membership().set_load(Load {
            jobs: 2,
            ..Load::default()
        });
        let (st, body) = call(&s, post("/api/node/reboot", true)).await;
        assert_eq!(st, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("runs 2 job(s)"), "{body}");
        assert_eq!(
            call(&s, post("/api/node/reboot?force=1", true)).await.0,
            StatusCode::ACCEPTED
        );
        let (_, body) = call(&s, get("/api/node")).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v.get("image").is_some(), "{v}");
    }

    #[tokio::test]
    async fn metrics_text_names() {
        let s = shared(Arc::default());
        let (st, body) = call(&s, get("/metrics")).await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            body.contains("drove_node_up{node=\"node1\",number=\"1\",addr=\"10.10.0.1\"} 1\n"),
            "{body}"
        );
        assert!(
            body.contains("drove_node_up{node=\"10.10.0.2\",number=\"2\",addr=\"10.10.0.2\"} 0\n"),
            "{body}"
        );
        for name in [
            "drove_node_load{",
            "drove_node_speed{",
            "drove_node_mem_free_bytes{",
            "drove_cluster_nodes_up 1\n",
            "drove_gossip_messages_sent_total 0\n",
            "drove_gossip_messages_rejected_total 0\n",
        ] {
            assert!(body.contains(name), "missing {name} in {body}");
        }
    }

    #[tokio::test]
    async fn events_stream_as_sse() {
        let s = shared(Arc::default());
        let resp = router(s.clone()).oneshot(get("/api/events")).await.unwrap();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        let mut body = resp.into_body();
        s.events
            .send(Event {
                kind: crate::gossip::EventKind::Down,
                number: 2,
                name: "node2".into(),
                addr: "10.10.0.2".parse().unwrap(),
                at_ms: 5,
            })
            .unwrap();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let text = String::from_utf8_lossy(&frame);
        assert_eq!(text, "event: down\ndata: {\"addr\":\"10.10.0.2\",\"at_ms\":1000005,\"name\":\"node2\",\"number\":2}\n\n");
    }
}
