//! The agent's HTTP API, every route (cluster, node, metrics, dashboard, jobs, migrations),
//! through the real axum router: arbitrary method, path, query, body and key. The job table holds
//! an exited job with output on disk and a job that moved to a node nobody can reach.
//!
//! Requests with the right key go only to `/api/jobs/<id>/...` (kill and migrate of those jobs
//! are refused by state), so the fuzzer cannot launch commands, power off or lock the host;
//! every other request is sent without the key (and must be refused when it changes anything).
#![no_main]
use arbitrary::Arbitrary;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use drove_agent::api::{self, CalibrationInfo, Shared};
use drove_agent::gossip::{Config, Entry, Load, Membership};
use drove_agent::jobs::engine::Engine;
use drove_agent::jobs::table::Job;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tower::ServiceExt;

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    route: u8,
    tail: String,
    query: String,
    auth: bool,
    json: bool,
    body: Vec<u8>,
}

struct World {
    _dir: tempfile::TempDir,
    app: axum::Router,
    rt: tokio::runtime::Runtime,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let me = Entry {
            number: 1,
            name: "node1".into(),
            addr: Ipv4Addr::new(10, 10, 0, 1),
            incarnation: 1,
            heartbeat: 0,
            age_ms: 0,
            load: Load::default(),
            leaving: false,
        };
        let key = drove_agent::wire::parse_key(KEY).expect("a hex key");
        let shared = Arc::new(Shared {
            membership: Mutex::new(Membership::new(
                Config::new("drove", false),
                &key,
                me,
                vec![(1, Ipv4Addr::new(10, 10, 0, 1))],
                0,
            )),
            events: tokio::sync::broadcast::channel(16).0,
            key_hex: Some(KEY.into()),
            kernel: "6.1.0".into(),
            calibration: CalibrationInfo {
                cpu: "fuzz".into(),
                measured: Some(1000.0),
                speed: 1000.0,
            },
            started: Instant::now(),
            wall_start_ms: 1_700_000_000_000,
            uptime_at_start: 1.0,
            poweroff: Box::new(|| panic!("poweroff reached without the key")),
            reboot: Box::new(|| panic!("reboot reached without the key")),
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Arc::new(Engine::new(1, Some(key), dir.path().to_path_buf(), 0));
        for (id, state, node) in [("1.1", "exited", 1), ("1.2", "moved", 9)] {
            let job: Job = serde_json::from_value(serde_json::json!({
                "id": id, "cmd": ["awk", "BEGIN{print 1}"], "home": 1, "node": node,
                "state": state, "pid": null, "exit_code": 0, "signal": null,
                "started_ms": 1, "migrations": 0, "pinned": false
            }))
            .expect("a job record");
            engine.table().insert(job).expect("insert");
            let jd = engine.job_dir(id);
            std::fs::create_dir_all(&jd).expect("job dir");
            std::fs::write(jd.join("stdout"), b"1\n").expect("stdout");
            std::fs::write(jd.join("stderr"), b"").expect("stderr");
        }
        let ctx = drove_agent::jobs::api::Ctx {
            shared: shared.clone(),
            engine,
            api_port: 1,
            placer: Arc::new(drove_agent::jobs::balance::Placer::new(1)),
        };
        let app = api::router(shared).merge(drove_agent::jobs::api::router(ctx));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        World { _dir: dir, app, rt }
    })
}

const ROUTES: &[&str] = &[
    "/",
    "/api/cluster",
    "/api/node",
    "/api/node/poweroff",
    "/api/node/lock",
    "/api/node/unlock",
    "/metrics",
    "/api/jobs",
    "/api/jobs/1.1",
    "/api/jobs/1.2",
    "/api/jobs/",
    "/api/migrations",
];
const METHODS: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::HEAD,
    Method::PUT,
    Method::DELETE,
];

fuzz_target!(|input: Input| {
    let w = world();
    let mut path = ROUTES[input.route as usize % ROUTES.len()].to_string();
    path.push_str(&input.tail);
    if !input.query.is_empty() {
        path.push('?');
        path.push_str(&input.query);
    }
    // The event stream never ends; it has its own unit test.
    if path.starts_with("/api/events") {
        return;
    }
    let method = METHODS[input.method as usize % METHODS.len()].clone();
    let mut req = Request::builder().method(method).uri(&path);
    let keyed = input.auth && path.starts_with("/api/jobs/") && !path.contains("/../");
    if keyed {
        req = req.header("authorization", format!("Bearer {KEY}"));
    }
    if input.json {
        req = req.header("content-type", "application/json");
    }
    let Ok(req) = req.body(Body::from(input.body)) else {
        return; // not a valid URI: hyper would refuse it before the router
    };
    // The route is the URI's path: "poweroff" in a query or fragment (`/api/node?x=poweroff`,
    // the node's info, found by this target in session 9) is not the poweroff route. Reaching
    // the poweroff or reboot hook without the key panics in the hook itself.
    let route = req.uri().path().to_owned();
    let app = w.app.clone();
    w.rt.block_on(async move {
        let resp = app.oneshot(req).await.expect("infallible");
        let status = resp.status();
        if !keyed {
            assert!(
                !status.is_success() || !route.contains("poweroff"),
                "{path}: {status} without the key"
            );
        }
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: 500");
        let _ = resp.into_body().collect().await;
    });
});
