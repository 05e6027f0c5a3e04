//! The job routes of the agent's API. Changes need the cluster key (the same bearer check as
//! the rest of the API); reads do not. A request about a job that has moved on is forwarded to
//! the node it went to, so a caller can keep talking to the job's home node.
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/jobs` `{"cmd": [...], "pin", "cwd", "env": {"K": "V"}, "place"}` | key; 201 and the job (`place`: started on the peer the balancer chooses, see [`super::balance::Placer`]; not with `checkpoint_every`) |
//! | `GET /api/jobs` | `{"node", "jobs": [...], "migrations": [...], "incoming": n}` of this node (`incoming`: moves announced here, not arrived) |
//! | `POST /api/jobs/:id/incoming` | key; a balancer announces it is sending job `id` here (`balance::Reservations`) |
//! | `GET /api/jobs/:id` | the job, from the node that runs it |
//! | `GET /api/jobs/:id/output?stream=stdout&offset=N` | raw bytes of the output from byte N |
//! | `POST /api/jobs/:id/migrate` `{"to": "2"\|"node2"\|"home"}` | key; the migration record |
//! | `POST /api/jobs/:id/kill` | key; SIGKILL wherever the job runs |
//! | `POST /api/jobs/:id/freeze`, `/continue` | key; SIGSTOP / SIGCONT to the whole job |
//! | `GET /api/migrations` | migrations this node sent |
//! | `GET /api/cluster/jobs` | every node's jobs and migrations merged (see [`super::cluster`]) |

use super::engine::Engine;
use super::table::{Job, State};
use crate::api::Shared;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as Extract};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Header on requests one agent forwards to another.
const FORWARDED: &str = "x-drove-forwarded";

/// Largest body of one output read.
const OUTPUT_MAX: usize = 1 << 20;

#[derive(Clone)]
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub engine: Arc<Engine>,
    /// The API port, the same on every node (used to forward).
    pub api_port: u16,
    /// Placement of new jobs that ask for it (`"place": true`).
    pub placer: Arc<super::balance::Placer>,
}

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/api/jobs", get(list).post(launch))
        .route("/api/jobs/:id", get(one))
        .route("/api/jobs/:id/output", get(output))
        .route("/api/jobs/:id/migrate", post(migrate))
        .route("/api/jobs/:id/incoming", post(incoming))
        .route("/api/jobs/:id/kill", post(kill))
        .route("/api/jobs/:id/freeze", post(freeze))
        .route("/api/jobs/:id/continue", post(thaw))
        .route("/api/migrations", get(migrations))
        .route("/api/cpuinfo/check", post(super::cpuinfo::route))
        .route("/api/cluster/jobs", get(cluster_jobs))
        .with_state(ctx)
}

/// Starts this node's job engine (migration listener on `api_port + 1`) and returns its routes,
/// to be merged into the agent's router. A failure to start is logged; the routes still answer.
pub fn start(shared: Arc<Shared>, api_port: u16) -> Router {
    let me = shared.membership().me().number;
    let key = shared.key_hex.as_deref().and_then(|k| hex::decode(k).ok());
    let engine = Arc::new(Engine::new(
        me,
        key,
        super::engine::JOBS_DIR.into(),
        api_port.wrapping_add(1),
    ));
    {
        let (a, b) = (shared.clone(), shared.clone());
        engine.set_cluster(super::engine::Cluster {
            node_addr: Box::new(move |n| resolve(&a, &n.to_string(), n).map(|(_, addr)| addr)),
            refuses_guests: Box::new(move || b.membership().me().load.refuses_guests),
        });
    }
    if let Err(e) = engine.start() {
        crate::error!("jobs: cannot start the job engine: {e}");
    }
    // `criu check` once, in the background (never before the ready line): see selfcheck.rs.
    crate::selfcheck::start(engine.clone());
    {
        // Why each job cannot move (files outside the cluster file area), for `drove ps`.
        let e = engine.clone();
        let _ = std::thread::Builder::new()
            .name("job-files".into())
            .spawn(move || {
                super::files::watch(
                    || {
                        e.table()
                            .list()
                            .into_iter()
                            .filter(|j| j.state == State::Running)
                            .filter_map(|j| {
                                Some((j.id.clone(), j.pid?, e.job_dir(&j.id), j.reason))
                            })
                            .collect()
                    },
                    |id, reason| e.table().set_reason(id, reason),
                )
            });
    }
    if shared.key_hex.is_some() {
        let (s, e) = (shared.clone(), engine.clone());
        let _ = std::thread::Builder::new()
            .name("balance".into())
            .spawn(move || super::balance::run(s, e));
    }
    {
        let (s, e) = (shared.clone(), engine.clone());
        let _ = std::thread::Builder::new()
            .name("job-watch".into())
            .spawn(move || watch_nodes(&s, &e));
    }
    if shared.key_hex.is_some() {
        let (s, e) = (shared.clone(), engine.clone());
        let _ = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || checkpoint_loop(&s, &e));
    }
    let seed = u64::from(me).rotate_left(40)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    router(Ctx {
        shared,
        engine,
        api_port,
        placer: Arc::new(super::balance::Placer::new(seed)),
    })
}

/// Once a second: the jobs due for a checkpoint are checkpointed, one after the other, to
/// their home node, or to the next node up when they run at home.
fn checkpoint_loop(shared: &Shared, engine: &Engine) {
    // Jobs already warned about (no holder), so the log says it once, not every second.
    let mut homeless = std::collections::BTreeSet::new();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        for job in engine.checkpoints_due() {
            let Some((holder, addr)) = checkpoint_holder(shared, engine.me, job.home) else {
                if homeless.insert(job.id.clone()) {
                    crate::warn!("jobs: no node up to hold the checkpoint of job {}", job.id);
                }
                continue;
            };
            homeless.remove(&job.id);
            if let Err(e) = engine.checkpoint(&job.id, holder, addr) {
                crate::warn!(
                    "jobs: checkpoint of job {} to node {holder} failed: {}",
                    job.id,
                    crate::console::chain(&e)
                );
            }
        }
    }
}

/// Who keeps the checkpoints of a job of `home` running on `me`: its home, or when it runs at
/// home, the next node up after it (by number, wrapping).
pub fn checkpoint_holder(shared: &Shared, me: u32, home: u32) -> Option<(u32, Ipv4Addr)> {
    let rows = {
        let now = shared.now();
        shared.membership().table(now)
    };
    let up: Vec<(u32, Ipv4Addr)> = rows
        .iter()
        .filter(|r| r.state == crate::gossip::State::Up)
        .filter_map(|r| Some((r.number, r.addr.parse().ok()?)))
        .collect();
    pick_holder(&up, me, home)
}

/// [`checkpoint_holder`] over the nodes up, as (number, address).
pub fn pick_holder(up: &[(u32, Ipv4Addr)], me: u32, home: u32) -> Option<(u32, Ipv4Addr)> {
    if home != me {
        return up.iter().find(|(n, _)| *n == home).copied();
    }
    let mut others: Vec<(u32, Ipv4Addr)> = up.iter().filter(|(n, _)| *n != me).copied().collect();
    others.sort();
    others
        .iter()
        .find(|(n, _)| *n > me)
        .or_else(|| others.first())
        .copied()
}

/// Once a second: the jobs that moved from here to a node now `down` restart from the
/// checkpoints held here, or else are lost (never silently: the record says which node, how
/// long it has been silent and which job).
fn watch_nodes(shared: &Shared, engine: &Engine) {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let rows = {
            let now = shared.now();
            shared.membership().table(now)
        };
        for r in rows {
            if r.state == crate::gossip::State::Down && r.number != engine.me {
                let why = match r.last_heard_ms {
                    Some(ms) => format!("went down (no heartbeat for {:.0} s)", ms as f64 / 1e3),
                    None => "went down (never heard)".to_string(),
                };
                engine.peer_down(r.number);
                engine.restart_from_checkpoints(r.number, &why);
                engine.node_lost(r.number, &why);
            }
        }
    }
}

fn error(status: StatusCode, text: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": text.to_string() }))).into_response()
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "this needs the cluster key: Authorization: Bearer <hex key>",
    )
}

#[derive(serde::Deserialize)]
struct LaunchBody {
    cmd: Vec<String>,
    #[serde(default)]
    pin: bool,
    /// Working directory (default: the cluster file area, if any, else `/`).
    #[serde(default)]
    cwd: Option<String>,
    /// Environment variables set on top of the agent's.
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    /// Seconds between checkpoints kept on another node (none by default).
    #[serde(default)]
    checkpoint_every: Option<u64>,
    /// Start it on the node the balancer chooses (MOSIX's `mosrun -b`); that node is its home.
    #[serde(default)]
    place: bool,
}

async fn launch(Extract(ctx): Extract<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    if !ctx.shared.authorized(&headers) {
        return unauthorized();
    }
    let Ok(req) = serde_json::from_slice::<LaunchBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be {\"cmd\": [\"program\", \"arg\", ...]}",
        );
    };
    let offer = placed_elsewhere(&req, headers.contains_key(FORWARDED));
    let kept_home = req.place && req.checkpoint_every.is_some();
    let start = super::files::Start {
        cwd: req.cwd,
        env: req.env.into_iter().collect(),
    };
    if let Err(e) = start.check() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    if req.checkpoint_every == Some(0) {
        return error(
            StatusCode::BAD_REQUEST,
            "checkpoint_every must be at least 1 s",
        );
    }
    if offer {
        if let Some(resp) = place(&ctx, &headers, &body).await {
            return resp;
        }
    } else if kept_home {
        crate::info!(
            "jobs: a new job with checkpoints starts here, not placed: this node, its home, keeps its record and restarts it if the node running it dies"
        );
    }
    let engine = ctx.engine.clone();
    let every = req.checkpoint_every;
    let launched = move || {
        let job = engine.launch_with(&req.cmd, req.pin, &start)?;
        match every {
            Some(_) => Ok::<Job, super::engine::Error>(
                engine.table().set_checkpoint_every(&job.id, every)?,
            ),
            None => Ok(job),
        }
    };
    match tokio::task::spawn_blocking(launched).await {
        Ok(Ok(job)) => (StatusCode::CREATED, Json(job)).into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, crate::console::chain(&e)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Whether a new job is offered to [`place`]: it asked for it, the request was not itself
/// forwarded by a placement, and it has no checkpoints. A placed job's home is the node it
/// starts on, so its record and its guard would be on the node whose death they are meant to
/// survive: a checkpointed job starts on the node asked (its home, which restarts it from a
/// checkpoint if the node it runs on dies) and the balancer moves it when that pays.
fn placed_elsewhere(req: &LaunchBody, forwarded: bool) -> bool {
    req.place && !forwarded && req.checkpoint_every.is_none()
}

/// A new job that asked to be placed: started on the peer the balancer chooses (the same
/// request, forwarded there, without `place`), whose answer is returned. `None`: start it here
/// (no peer is better, or the chosen one did not start it).
async fn place(ctx: &Ctx, headers: &HeaderMap, body: &Bytes) -> Option<Response> {
    let (shared, engine, placer, port) = (
        ctx.shared.clone(),
        ctx.engine.clone(),
        ctx.placer.clone(),
        ctx.api_port,
    );
    let choice = tokio::task::spawn_blocking(move || {
        let here = engine
            .table()
            .list()
            .iter()
            .filter(|j| !j.state.is_final())
            .count() as u32;
        placer.choose(&shared, here.saturating_add(engine.incoming()), port)
    })
    .await
    .ok()
    .flatten()?;
    let mut fwd: Value = serde_json::from_slice(body).ok()?;
    fwd["place"] = json!(false);
    let fwd = serde_json::to_vec(&fwd).ok()?;
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let answer = forward_raw(choice.addr, ctx.api_port, "POST", "/api/jobs", auth, &fwd).await;
    match answer {
        Ok((201, content_type, _, bytes)) => {
            ctx.placer.record(&choice.mv, true);
            crate::info!(
                "jobs: new job placed on node {} (load there {:.2} with it, here it would be {:.2})",
                choice.to,
                choice.there,
                choice.here
            );
            let mut resp = (StatusCode::CREATED, bytes).into_response();
            if let Some(ct) = content_type.and_then(|c| c.parse().ok()) {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            Some(resp)
        }
        other => {
            ctx.placer.record(&choice.mv, false);
            let why = match other {
                Ok((status, _, _, bytes)) => {
                    format!("answered {status}: {}", String::from_utf8_lossy(&bytes))
                }
                Err(e) => e.to_string(),
            };
            crate::warn!(
                "jobs: placing a new job on node {} failed ({why}); starting it here",
                choice.to
            );
            None
        }
    }
}

async fn list(Extract(ctx): Extract<Ctx>) -> Json<Value> {
    let incoming = ctx.engine.incoming();
    let t = ctx.engine.table();
    Json(
        json!({ "node": ctx.engine.me, "jobs": t.list(), "migrations": t.migrations, "incoming": incoming }),
    )
}

/// A source's balancer announces that job `id` is on its way here.
async fn incoming(
    Extract(ctx): Extract<Ctx>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !ctx.shared.authorized(&headers) {
        return unauthorized();
    }
    if ctx.engine.announce_incoming(&id) {
        Json(json!({ "incoming": ctx.engine.incoming() })).into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many moves announced to node {}", ctx.engine.me),
        )
    }
}

async fn cluster_jobs(Extract(ctx): Extract<Ctx>) -> Json<Value> {
    Json(super::cluster::gather(&ctx).await)
}

async fn migrations(Extract(ctx): Extract<Ctx>) -> Json<Value> {
    Json(json!({ "node": ctx.engine.me, "migrations": ctx.engine.table().migrations }))
}

/// The job as this node knows it, or where to forward the request.
enum Where {
    Here(Job),
    There(Ipv4Addr),
    Missing(String),
}

/// `forwarded`: the request came from another node; then a job unknown here is not sent on to
/// its home again (two nodes that each think the other has it would bounce it forever).
fn locate(ctx: &Ctx, id: &str, forwarded: bool) -> Where {
    let job = match ctx.engine.table().get(id) {
        Ok(j) => j.clone(),
        // Not known here (e.g. asked on a node seen in the cluster-wide list): its home knows
        // where it went and forwards further.
        Err(e) => {
            let home = id.split('.').next().and_then(|h| h.parse::<u32>().ok());
            return match home.filter(|h| *h != ctx.engine.me && !forwarded) {
                Some(h) => match resolve(&ctx.shared, &h.to_string(), h) {
                    Some((_, addr)) => Where::There(addr),
                    None => Where::Missing(format!(
                        "{e}, and its home node {h} is not in the cluster table"
                    )),
                },
                None => Where::Missing(e.to_string()),
            };
        }
    };
    if job.state == State::Moved {
        match resolve(&ctx.shared, &job.node.to_string(), job.home) {
            Some((_, addr)) => Where::There(addr),
            None => Where::Missing(format!(
                "job {id} moved to node {}, which this node cannot reach",
                job.node
            )),
        }
    } else {
        Where::Here(job)
    }
}

/// Why job `job` may not be moved to node `to` (`locked`: `to` refuses guests, as its load
/// vector says): a locked node takes its own jobs back home, no one else's.
pub fn refuse_locked(job: &Job, to: u32, locked: bool) -> Option<String> {
    (locked && job.home != to).then(|| super::engine::guest_refusal(to))
}

/// A node by number, name or `home`: (number, address) from the cluster table.
pub fn resolve(shared: &Shared, to: &str, home: u32) -> Option<(u32, Ipv4Addr)> {
    let now = shared.now();
    let rows = shared.membership().table(now);
    let wanted = if to == "home" {
        Some(home)
    } else {
        to.parse::<u32>().ok()
    };
    rows.iter()
        .find(|r| Some(r.number) == wanted || r.name == to)
        .and_then(|r| Some((r.number, r.addr.parse().ok()?)))
}

async fn one(
    Extract(ctx): Extract<Ctx>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match locate(&ctx, &id, headers.contains_key(FORWARDED)) {
        Where::Here(job) => Json(job).into_response(),
        Where::There(addr) => {
            forward(
                &ctx,
                addr,
                method,
                &format!("/api/jobs/{id}"),
                &headers,
                Bytes::new(),
            )
            .await
        }
        Where::Missing(e) => error(StatusCode::NOT_FOUND, e),
    }
}

#[derive(serde::Deserialize)]
struct OutputQuery {
    stream: Option<String>,
    offset: Option<u64>,
}

async fn output(
    Extract(ctx): Extract<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<OutputQuery>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let stream = q.stream.unwrap_or_else(|| "stdout".into());
    let offset = q.offset.unwrap_or(0);
    match locate(&ctx, &id, headers.contains_key(FORWARDED)) {
        Where::Here(job) => match ctx.engine.output(&id, &stream, offset, OUTPUT_MAX) {
            Ok(bytes) => (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (
                        header::HeaderName::from_static("x-drove-state"),
                        serde_json::to_value(job.state)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                    ),
                ],
                bytes,
            )
                .into_response(),
            Err(e) => error(StatusCode::NOT_FOUND, crate::console::chain(&e)),
        },
        Where::There(addr) => {
            forward(
                &ctx,
                addr,
                method,
                &format!("/api/jobs/{id}/output?stream={stream}&offset={offset}"),
                &headers,
                Bytes::new(),
            )
            .await
        }
        Where::Missing(e) => error(StatusCode::NOT_FOUND, e),
    }
}

#[derive(serde::Deserialize)]
struct MigrateBody {
    to: String,
    /// Pre-copy the memory (true), not (false), or by size (absent).
    #[serde(default)]
    precopy: Option<bool>,
}

async fn migrate(
    Extract(ctx): Extract<Ctx>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !ctx.shared.authorized(&headers) {
        return unauthorized();
    }
    let job = match locate(&ctx, &id, headers.contains_key(FORWARDED)) {
        Where::Here(job) => job,
        Where::There(addr) => {
            return forward(
                &ctx,
                addr,
                method,
                &format!("/api/jobs/{id}/migrate"),
                &headers,
                body,
            )
            .await
        }
        Where::Missing(e) => return error(StatusCode::NOT_FOUND, e),
    };
    let Ok(req) = serde_json::from_slice::<MigrateBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be {\"to\": \"<node number or name, or home>\"}",
        );
    };
    let Some((to, addr)) = resolve(&ctx.shared, &req.to, job.home) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("no node {:?} in the cluster table", req.to),
        );
    };
    if to == ctx.engine.me {
        return error(
            StatusCode::BAD_REQUEST,
            format!("job {id} already runs on node {to}"),
        );
    }
    let locked = {
        let now = ctx.shared.now();
        let rows = ctx.shared.membership().table(now);
        rows.iter().any(|r| r.number == to && r.refuses_guests)
    };
    if let Some(why) = refuse_locked(&job, to, locked) {
        let rec = super::table::Migration {
            job: id.clone(),
            from: ctx.engine.me,
            to,
            reason: "manual".into(),
            freeze_ms: 0,
            bytes: 0,
            total_ms: 0,
            outcome: super::table::Outcome::Resumed,
            error: Some(format!("refused: {why}")),
            at_ms: super::engine::unix_ms(),
            precopy_rounds: 0,
            precopy_bytes: 0,
        };
        crate::warn!("jobs: migration of {id} to node {to} refused: {why}");
        ctx.engine.table().migrations.push(rec.clone());
        return (StatusCode::CONFLICT, Json(rec)).into_response();
    }
    let engine = ctx.engine.clone();
    let precopy = req.precopy;
    match tokio::task::spawn_blocking(move || engine.migrate_with(&id, to, addr, "manual", precopy))
        .await
    {
        Ok(rec) => {
            let status = if rec.outcome == super::table::Outcome::Moved {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            (status, Json(rec)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn kill(
    Extract(ctx): Extract<Ctx>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if !ctx.shared.authorized(&headers) {
        return unauthorized();
    }
    match locate(&ctx, &id, headers.contains_key(FORWARDED)) {
        Where::Here(_) => match ctx.engine.kill(&id) {
            Ok(job) => Json(job).into_response(),
            Err(e) => error(StatusCode::CONFLICT, crate::console::chain(&e)),
        },
        Where::There(addr) => {
            forward(
                &ctx,
                addr,
                method,
                &format!("/api/jobs/{id}/kill"),
                &headers,
                Bytes::new(),
            )
            .await
        }
        Where::Missing(e) => error(StatusCode::NOT_FOUND, e),
    }
}

/// `POST /api/jobs/:id/<action>` for a job-wide signal (kill, freeze, continue): here or
/// forwarded to the node running the job.
async fn signal_route(ctx: Ctx, id: String, action: &'static str, headers: HeaderMap) -> Response {
    if !ctx.shared.authorized(&headers) {
        return unauthorized();
    }
    match locate(&ctx, &id, headers.contains_key(FORWARDED)) {
        Where::Here(_) => {
            let result = match action {
                "freeze" => ctx.engine.freeze(&id),
                "continue" => ctx.engine.thaw(&id),
                _ => ctx.engine.kill(&id),
            };
            match result {
                Ok(job) => Json(job).into_response(),
                Err(e) => error(StatusCode::CONFLICT, crate::console::chain(&e)),
            }
        }
        Where::There(addr) => {
            forward(
                &ctx,
                addr,
                Method::POST,
                &format!("/api/jobs/{id}/{action}"),
                &headers,
                Bytes::new(),
            )
            .await
        }
        Where::Missing(e) => error(StatusCode::NOT_FOUND, e),
    }
}

async fn freeze(
    Extract(ctx): Extract<Ctx>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    signal_route(ctx, id, "freeze", headers).await
}

async fn thaw(Extract(ctx): Extract<Ctx>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    signal_route(ctx, id, "continue", headers).await
}

/// Sends the same request to `addr`'s API (HTTP/1.0, one request per connection) and returns
/// its answer as is.
async fn forward(
    ctx: &Ctx,
    addr: Ipv4Addr,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    match forward_raw(
        addr,
        ctx.api_port,
        method.as_str(),
        path,
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        &body,
    )
    .await
    {
        Ok((status, content_type, extra, bytes)) => {
            let mut resp = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                bytes,
            )
                .into_response();
            if let Some(ct) = content_type.and_then(|c| c.parse().ok()) {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            if let Some(v) = extra.and_then(|c| c.parse().ok()) {
                resp.headers_mut()
                    .insert(header::HeaderName::from_static("x-drove-state"), v);
            }
            resp
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("forwarding to {addr}: {e}"),
        ),
    }
}

type Forwarded = (u16, Option<String>, Option<String>, Vec<u8>);

pub(crate) async fn forward_raw(
    addr: Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
) -> std::io::Result<Forwarded> {
    let fut = async {
        // A node that just died never answers the SYN: give up on it in seconds (the caller
        // retries, and the job is declared lost or restarted meanwhile), not after 180 s.
        let mut s = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::TcpStream::connect((addr, port)),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no connection in 5 s"))??;
        // A node that dies while we wait for its answer (a `drove run` reading output through
        // the home node when the job's node is killed): fail in seconds, not after 180 s.
        if let Err(e) = super::engine::notice_dead_peer(&s) {
            crate::warn!("jobs: cannot set keepalive on a forwarded request to {addr} ({e})");
        }
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}:{port}\r\nContent-Length: {}\r\nContent-Type: application/json\r\n{FORWARDED}: 1\r\n", body.len());
        if let Some(a) = auth {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        s.write_all(body).await?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await?;
        parse_response(&resp).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP answer")
        })
    };
    tokio::time::timeout(std::time::Duration::from_secs(180), fut)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer in 180 s",
            ))
        })
}

/// Status, content type, `x-drove-state` and body of a complete HTTP/1.x answer.
pub fn parse_response(resp: &[u8]) -> Option<Forwarded> {
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&resp[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut ct = None;
    let mut state = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-type" => ct = Some(v.trim().to_string()),
                "x-drove-state" => state = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    Some((status, ct, state, resp[end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_holders() {
        let a = |n: u8| Ipv4Addr::new(10, 10, 0, n);
        let up = [(1, a(1)), (2, a(2)), (3, a(3))];
        // Away from home: the home keeps it.
        assert_eq!(pick_holder(&up, 2, 1), Some((1, a(1))));
        // At home: the next node, wrapping.
        assert_eq!(pick_holder(&up, 1, 1), Some((2, a(2))));
        assert_eq!(pick_holder(&up, 3, 3), Some((1, a(1))));
        // Home down: nobody (the job's record lives there).
        assert_eq!(pick_holder(&up[1..], 2, 1), None);
        assert_eq!(pick_holder(&up[..1], 1, 1), None);
    }

    #[test]
    fn only_unforwarded_jobs_without_checkpoints_are_placed() {
        let body = |v: Value| serde_json::from_value::<LaunchBody>(v).unwrap();
        let plain = body(json!({"cmd": ["x"], "place": true}));
        assert!(placed_elsewhere(&plain, false));
        // The placement's own forward starts the job where it arrives.
        assert!(!placed_elsewhere(&plain, true));
        // Checkpointed: its home must not be the node it runs on.
        let guarded = body(json!({"cmd": ["x"], "place": true, "checkpoint_every": 60}));
        assert!(!placed_elsewhere(&guarded, false));
        assert!(!placed_elsewhere(&body(json!({"cmd": ["x"]})), false));
    }

    #[test]
    fn a_locked_node_takes_no_guest_by_hand() {
        let job: Job = serde_json::from_value(json!({"id": "1.1", "cmd": ["x"], "home": 1,
            "node": 2, "state": "running", "pid": 5, "exit_code": null, "signal": null,
            "started_ms": 0, "migrations": 1}))
        .unwrap();
        assert_eq!(
            refuse_locked(&job, 3, true).as_deref(),
            Some("node 3 refuses guest jobs (locked with `drove lock`; `drove unlock 3` to let them in)")
        );
        assert_eq!(refuse_locked(&job, 3, false), None);
        // Home is never refused to its own job.
        assert_eq!(refuse_locked(&job, 1, true), None);
    }

    #[test]
    fn forwarded_answers_parse() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nX-Drove-State: running\r\n\r\nabc";
        assert_eq!(
            parse_response(r),
            Some((
                200,
                Some("application/octet-stream".into()),
                Some("running".into()),
                b"abc".to_vec()
            ))
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n").map(|r| r.0),
            Some(404)
        );
        assert_eq!(parse_response(b"garbage"), None);
    }
}
