//! `drove update`: a rolling update of a netbooted cluster after a rebuild (SystemImager's
//! `updateclient`, done for a cluster that runs jobs). One node at a time:
//!
//! 1. **lock**: the node refuses guest jobs (`POST /api/node/lock`), so the balancer sends
//!    nothing back while it drains;
//! 2. **drain**: each job running there migrates to another node that is up (nodes already on the
//!    new image first, then the one with the fewest jobs). Pinned jobs move too: the pin keeps the
//!    *balancer* off a job, and a reboot would kill it; the line says so. A job that cannot be
//!    moved stops the update before that node reboots;
//! 3. **reboot** (`POST /api/node/reboot`; the agent refuses while it still runs jobs);
//! 4. **back**: the node answers again with the new image id (`image` in `GET /api/node`, from
//!    `drove.image=` on the kernel command line the server hands out) and another node's table
//!    shows it `up`. A node that does not come back within the limit, or comes back on another
//!    image, stops the update, naming it.
//!
//! Nodes already on the new image are left alone; nodes down at the start are skipped and named
//! (a netbooted node that is off boots the new image when it is switched on). The steps run
//! against the [`Cluster`] trait: [`Agents`] talks to real agents over HTTP, and the unit tests
//! drive the same state machine with a simulated cluster and clock.

use crate::jobs_client::Agent;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("no agent answered for the cluster table (asked {asked}): {last}")]
    NoTable { asked: String, last: String },
    #[error(
        "node {node} ({name}): {what}; the update stopped there ({done} of {total} nodes updated)"
    )]
    Stopped {
        node: u32,
        name: String,
        what: String,
        done: usize,
        total: usize,
    },
    #[error("cannot find the new image id: {0}")]
    Image(String),
}

/// Reboot requests per node before the update gives up (each after a drain and ~2 s).
const REBOOT_TRIES: u32 = 10;

/// One node as the update sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub number: u32,
    pub name: String,
    pub addr: String,
    /// `up`, `suspect` or `down` in the table of the node that answered.
    pub state: String,
}

/// One job of the cluster-wide list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    pub id: String,
    pub node: u32,
    pub state: String,
    pub pinned: bool,
}

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    pub image: Option<String>,
    pub uptime_s: u64,
}

/// What the update needs from a cluster.
pub trait Cluster {
    /// The cluster table (from any node that answers).
    fn nodes(&mut self) -> Result<Vec<NodeInfo>, String>;
    /// Node `n`'s own view: its image and uptime; `Err` when it does not answer.
    fn booted(&mut self, n: u32) -> Result<Booted, String>;
    /// Every job of the cluster with the node it runs on.
    fn jobs(&mut self) -> Result<Vec<JobInfo>, String>;
    /// Node `n` refuses (or takes again) guest jobs.
    fn lock(&mut self, n: u32, locked: bool) -> Result<(), String>;
    /// Moves `job`, running on node `on`, to node `to`; `Ok(detail)` when it moved.
    fn migrate(&mut self, on: u32, job: &str, to: u32) -> Result<String, String>;
    fn reboot(&mut self, n: u32) -> Result<(), String>;
    /// Waits a poll interval (the simulated cluster advances its clock instead).
    fn pause(&mut self);
    /// Time since the update started.
    fn elapsed(&self) -> Duration;
}

/// Limits and the image to reach.
#[derive(Debug, Clone)]
pub struct Plan {
    pub image: String,
    /// Per node: from the reboot request until it answers with the new image and is up.
    pub come_back: Duration,
    /// Per node: from the lock until no job runs there.
    pub drain: Duration,
}

/// Where one node ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Updated { moved: usize, back_after: Duration },
    AlreadyCurrent,
    SkippedDown,
}

/// Runs the update node by node; `say` gets one progress line per step. Returns each node's
/// outcome, or the error naming the node where it stopped.
pub fn run(
    cluster: &mut dyn Cluster,
    plan: &Plan,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<(u32, Outcome)>, Error> {
    let nodes = cluster.nodes().map_err(|last| Error::NoTable {
        asked: "the given agents".into(),
        last,
    })?;
    let total = nodes.len();
    say(&format!(
        "drove update: image {}, {} nodes: {}",
        plan.image,
        total,
        nodes.iter().map(label).collect::<Vec<_>>().join(" ")
    ));
    let mut outcomes: Vec<(u32, Outcome)> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let tag = format!("[{}/{}] {}", i + 1, total, label(node));
        let stop = |what: String, outcomes: &Vec<(u32, Outcome)>| Error::Stopped {
            node: node.number,
            name: label(node),
            what,
            done: outcomes
                .iter()
                .filter(|(_, o)| matches!(o, Outcome::Updated { .. }))
                .count(),
            total,
        };
        if node.state == "down" {
            say(&format!(
                "{tag}: down, skipped (it boots the new image when switched on)"
            ));
            outcomes.push((node.number, Outcome::SkippedDown));
            continue;
        }
        let before = cluster
            .booted(node.number)
            .map_err(|e| stop(format!("does not answer: {e}"), &outcomes))?;
        if before.image.as_deref() == Some(plan.image.as_str()) {
            say(&format!("{tag}: already on image {}", plan.image));
            outcomes.push((node.number, Outcome::AlreadyCurrent));
            continue;
        }
        let started = cluster.elapsed();
        say(&format!(
            "{tag}: on image {}; locking (no guest jobs) and draining",
            before.image.as_deref().unwrap_or("(none)")
        ));
        if let Err(e) = cluster.lock(node.number, true) {
            // An agent without the lock still drains; the balancer may then send a job back,
            // which the next drain round moves again.
            say(&format!("{tag}: lock refused ({e}); draining without it"));
        }
        let moved = drain(cluster, plan, node, &outcomes, &tag, say)
            .map_err(|what| stop(what, &outcomes))?;
        // The reboot is refused while jobs run there: one may have arrived since, or the
        // agent's job count (sampled about once a second) still counts the jobs just moved or
        // ended. Wait a little and drain again.
        let mut tries = 0;
        loop {
            match cluster.reboot(node.number) {
                Ok(()) => break,
                Err(e) if tries < REBOOT_TRIES => {
                    tries += 1;
                    if tries == 1 || tries == REBOOT_TRIES {
                        say(&format!("{tag}: reboot refused ({e}); draining again"));
                    }
                    for _ in 0..4 {
                        cluster.pause();
                    }
                    drain(cluster, plan, node, &outcomes, &tag, say)
                        .map_err(|what| stop(what, &outcomes))?;
                }
                Err(e) => {
                    let _ = cluster.lock(node.number, false);
                    return Err(stop(format!("reboot refused: {e}"), &outcomes));
                }
            }
        }
        say(&format!(
            "{tag}: drained ({moved} job(s) moved) in {:.1}s; rebooting",
            (cluster.elapsed() - started).as_secs_f64()
        ));
        let rebooted_at = cluster.elapsed();
        let mut last = String::from("no answer yet");
        let mut went_away = false;
        loop {
            let waited = cluster.elapsed() - rebooted_at;
            if waited > plan.come_back {
                return Err(stop(
                    format!(
                        "did not come back on image {} within {}s after the reboot ({last})",
                        plan.image,
                        plan.come_back.as_secs()
                    ),
                    &outcomes,
                ));
            }
            match cluster.booted(node.number) {
                Err(e) => {
                    went_away = true;
                    last = format!("last: {e}");
                }
                Ok(b) if !went_away && b.uptime_s >= before.uptime_s => {
                    last = "it has not rebooted yet".into();
                }
                Ok(b) if b.image.as_deref() == Some(plan.image.as_str()) => {
                    let up = cluster.nodes().ok().and_then(|ns| {
                        ns.into_iter()
                            .find(|n| n.number == node.number)
                            .map(|n| n.state)
                    });
                    if up.as_deref() == Some("up") {
                        let after = cluster.elapsed() - rebooted_at;
                        say(&format!(
                            "{tag}: back on image {} and up after {:.1}s",
                            plan.image,
                            after.as_secs_f64()
                        ));
                        outcomes.push((
                            node.number,
                            Outcome::Updated {
                                moved,
                                back_after: after,
                            },
                        ));
                        break;
                    }
                    last = format!("answers, but the cluster table has it {up:?}");
                }
                Ok(b) => {
                    return Err(stop(
                        format!(
                            "came back on image {} instead of {} (is the server handing out the new build?)",
                            b.image.as_deref().unwrap_or("(none)"),
                            plan.image
                        ),
                        &outcomes,
                    ));
                }
            }
            cluster.pause();
        }
    }
    Ok(outcomes)
}

fn label(n: &NodeInfo) -> String {
    if n.name.is_empty() {
        format!("node {}", n.number)
    } else {
        n.name.clone()
    }
}

/// Moves every job off `node` (bounded by `plan.drain`); the number moved, or why not.
fn drain(
    cluster: &mut dyn Cluster,
    plan: &Plan,
    node: &NodeInfo,
    outcomes: &[(u32, Outcome)],
    tag: &str,
    say: &mut dyn FnMut(&str),
) -> Result<usize, String> {
    let started = cluster.elapsed();
    let mut moved = 0;
    let mut failures: BTreeMap<String, u32> = BTreeMap::new();
    loop {
        if cluster.elapsed() - started > plan.drain {
            return Err(format!(
                "still runs jobs {}s after the drain started",
                plan.drain.as_secs()
            ));
        }
        let jobs = cluster.jobs()?;
        let here: Vec<JobInfo> = jobs
            .iter()
            .filter(|j| j.node == node.number && is_live(&j.state))
            .cloned()
            .collect();
        if here.is_empty() {
            return Ok(moved);
        }
        let nodes = cluster.nodes()?;
        let mut load: BTreeMap<u32, usize> = BTreeMap::new();
        for j in jobs.iter().filter(|j| is_live(&j.state)) {
            *load.entry(j.node).or_default() += 1;
        }
        let mut progressed = false;
        for job in here {
            if job.state != "running" {
                // Being moved by the balancer, arriving, or frozen by hand: wait for it.
                continue;
            }
            // Targets: up, not this node; updated nodes first, then the fewest jobs.
            let mut targets: Vec<&NodeInfo> = nodes
                .iter()
                .filter(|n| n.number != node.number && n.state == "up")
                .collect();
            targets.sort_by_key(|n| {
                let updated = outcomes
                    .iter()
                    .any(|(o, out)| *o == n.number && *out != Outcome::SkippedDown);
                (
                    !updated,
                    load.get(&n.number).copied().unwrap_or(0),
                    n.number,
                )
            });
            let tries = failures.get(&job.id).copied().unwrap_or(0);
            let Some(to) = targets.get(tries as usize % targets.len().max(1)) else {
                return Err(format!("no other node is up to take job {}", job.id));
            };
            let pinned = if job.pinned {
                " (pinned: moved anyway, the reboot would kill it; the pin holds on the new node)"
            } else {
                ""
            };
            match cluster.migrate(node.number, &job.id, to.number) {
                Ok(detail) => {
                    moved += 1;
                    progressed = true;
                    *load.entry(to.number).or_default() += 1;
                    say(&format!(
                        "{tag}: job {} -> {}: moved{pinned} {detail}",
                        job.id,
                        label(to)
                    ));
                }
                Err(e) => {
                    let n = failures.entry(job.id.clone()).or_default();
                    *n += 1;
                    say(&format!(
                        "{tag}: job {} -> {}: not moved: {e}",
                        job.id,
                        label(to)
                    ));
                    if *n >= 3 {
                        let _ = cluster.lock(node.number, false);
                        return Err(format!(
                            "job {} could not be moved away (3 tries, last: {e}); the node was not rebooted and the job runs on there",
                            job.id
                        ));
                    }
                }
            }
        }
        if !progressed {
            cluster.pause();
        }
    }
}

fn is_live(state: &str) -> bool {
    !matches!(state, "moved" | "exited" | "lost")
}

/// The image id in an iPXE script or kernel command line (`drove.image=<id>`).
pub fn image_in(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("drove.image="))
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

/// The image the server hands out: `drove.image=` in `<url>/boot.ipxe`.
pub fn image_from_server(url: &str) -> Result<String, Error> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::Image(format!("{url}: only http:// image servers are supported")))?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{}", p.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let script = format!("{path}/boot.ipxe");
    let a = Agent::new(&host, None)
        .request("GET", &script, None)
        .map_err(|e| Error::Image(format!("{url}: {e}")))?;
    if a.status != 200 {
        return Err(Error::Image(format!(
            "{url}{}: HTTP {}",
            script.trim_start_matches(&path),
            a.status
        )));
    }
    image_in(&String::from_utf8_lossy(&a.body)).ok_or_else(|| {
        Error::Image(format!(
            "{url}/boot.ipxe has no drove.image= (built by an older drove? rebuild the media)"
        ))
    })
}

/// The image of a build: `drove.image=` in `<out>/manifest.json`'s command line.
pub fn image_from_manifest(path: &std::path::Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Image(format!("cannot read {}: {e}", path.display())))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Image(format!("{}: not JSON: {e}", path.display())))?;
    v["cmdline"].as_str().and_then(image_in).ok_or_else(|| {
        Error::Image(format!(
            "{}: no drove.image= in its cmdline",
            path.display()
        ))
    })
}

/// The real cluster: agents reached over HTTP. A node's API is its cluster address on `port`
/// unless `apis` names another (NAT, port forwards: the QEMU test).
pub struct Agents {
    /// Agents to ask for the table and the job list, in order of preference.
    pub entry: Vec<String>,
    pub key: String,
    pub port: u16,
    pub apis: BTreeMap<u32, String>,
    pub poll: Duration,
    pub started: std::time::Instant,
    /// Addresses from the last table.
    addrs: BTreeMap<u32, String>,
}

impl Agents {
    pub fn new(entry: Vec<String>, key: String, apis: BTreeMap<u32, String>) -> Self {
        Agents {
            entry,
            key,
            port: 7030,
            apis,
            poll: Duration::from_millis(500),
            started: std::time::Instant::now(),
            addrs: BTreeMap::new(),
        }
    }

    fn api(&self, n: u32) -> String {
        self.apis.get(&n).cloned().unwrap_or_else(|| {
            format!(
                "{}:{}",
                self.addrs.get(&n).map_or("?", String::as_str),
                self.port
            )
        })
    }

    fn agent(&self, addr: &str) -> Agent {
        let mut a = Agent::new(addr, Some(self.key.clone()));
        a.timeout = Duration::from_secs(10);
        a
    }

    /// Every agent worth asking: the entry points, then every node's API.
    fn candidates(&self) -> Vec<String> {
        let mut all = self.entry.clone();
        for n in self.addrs.keys().chain(self.apis.keys()) {
            let a = self.api(*n);
            if !all.contains(&a) {
                all.push(a);
            }
        }
        all
    }

    fn ask(&mut self, path: &str) -> Result<Value, String> {
        let mut last = String::from("no agent to ask");
        for addr in self.candidates() {
            match self.agent(&addr).ok("GET", path, None) {
                Ok(v) => return Ok(v),
                Err(e) => last = chain(&e),
            }
        }
        Err(last)
    }
}

impl Cluster for Agents {
    fn nodes(&mut self) -> Result<Vec<NodeInfo>, String> {
        let v = self.ask("/api/cluster")?;
        let nodes: Vec<NodeInfo> = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| NodeInfo {
                number: n["number"].as_u64().unwrap_or(0) as u32,
                name: n["name"].as_str().unwrap_or("").to_owned(),
                addr: n["addr"].as_str().unwrap_or("").to_owned(),
                state: n["state"].as_str().unwrap_or("?").to_owned(),
            })
            .collect();
        for n in &nodes {
            self.addrs.insert(n.number, n.addr.clone());
        }
        Ok(nodes)
    }

    fn booted(&mut self, n: u32) -> Result<Booted, String> {
        let mut a = self.agent(&self.api(n));
        a.timeout = Duration::from_secs(3);
        let v = a.ok("GET", "/api/node", None).map_err(|e| chain(&e))?;
        Ok(Booted {
            image: v["image"].as_str().map(str::to_owned),
            uptime_s: v["uptime_s"].as_u64().unwrap_or(0),
        })
    }

    fn jobs(&mut self) -> Result<Vec<JobInfo>, String> {
        let v = self.ask("/api/cluster/jobs")?;
        Ok(v["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|j| JobInfo {
                id: j["id"].as_str().unwrap_or("").to_owned(),
                node: j["node"].as_u64().unwrap_or(0) as u32,
                state: j["state"].as_str().unwrap_or("").to_owned(),
                pinned: j["pinned"].as_bool().unwrap_or(false),
            })
            .collect())
    }

    fn lock(&mut self, n: u32, locked: bool) -> Result<(), String> {
        let path = if locked {
            "/api/node/lock"
        } else {
            "/api/node/unlock"
        };
        self.agent(&self.api(n))
            .ok("POST", path, Some(&json!({})))
            .map(|_| ())
            .map_err(|e| chain(&e))
    }

    fn migrate(&mut self, on: u32, job: &str, to: u32) -> Result<String, String> {
        let mut a = self.agent(&self.api(on));
        a.timeout = Duration::from_secs(300);
        let rec = a.migrate(job, &to.to_string()).map_err(|e| chain(&e))?;
        if rec["outcome"] == "moved" {
            Ok(format!(
                "(freeze {} ms, total {} ms)",
                rec["freeze_ms"], rec["total_ms"]
            ))
        } else {
            Err(format!(
                "{}: {}",
                rec["outcome"].as_str().unwrap_or("?"),
                rec["error"].as_str().unwrap_or("")
            ))
        }
    }

    fn reboot(&mut self, n: u32) -> Result<(), String> {
        self.agent(&self.api(n))
            .ok("POST", "/api/node/reboot", Some(&json!({})))
            .map(|_| ())
            .map_err(|e| chain(&e))
    }

    fn pause(&mut self) {
        std::thread::sleep(self.poll);
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// `error: cause: cause`, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}

/// `--node-api N=HOST:PORT`.
pub fn parse_node_api(s: &str) -> Result<(u32, String), String> {
    let (n, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected N=HOST:PORT"))?;
    let n = n
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("{s:?}: {n:?} is not a node number"))?;
    let addr = crate::status::normalize_addr(addr.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    Ok((n, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated cluster: nodes with an image and jobs; a reboot takes the node away for
    /// `reboot_ticks` pauses and brings it back on `served` (unless it is in `never_back`).
    struct Fake {
        nodes: Vec<(NodeInfo, Booted)>,
        jobs: Vec<JobInfo>,
        served: String,
        clock: Duration,
        reboot_ticks: u32,
        rebooting: BTreeMap<u32, u32>,
        never_back: Vec<u32>,
        refuse_migration_of: Vec<String>,
        /// After node `.0` is locked, the balancer sends job `.1` there once (if the lock is
        /// ignored) — tests that a later drain round catches it.
        locked: Vec<u32>,
        /// Reboot requests refused as if the agent's job count were stale.
        stale_refusals: u32,
        log: Vec<String>,
    }

    impl Fake {
        fn new(n: u32, jobs: &[(&str, u32, bool)]) -> Fake {
            Fake {
                nodes: (1..=n)
                    .map(|i| {
                        (
                            NodeInfo {
                                number: i,
                                name: format!("node{i}"),
                                addr: format!("10.10.0.{i}"),
                                state: "up".into(),
                            },
                            Booted {
                                image: Some("old".into()),
                                uptime_s: 1000,
                            },
                        )
                    })
                    .collect(),
                jobs: jobs
                    .iter()
                    .map(|(id, node, pinned)| JobInfo {
                        id: (*id).into(),
                        node: *node,
                        state: "running".into(),
                        pinned: *pinned,
                    })
                    .collect(),
                served: "new".into(),
                clock: Duration::ZERO,
                reboot_ticks: 5,
                rebooting: BTreeMap::new(),
                never_back: Vec::new(),
                refuse_migration_of: Vec::new(),
                locked: Vec::new(),
                stale_refusals: 0,
                log: Vec::new(),
            }
        }
        fn node(&mut self, n: u32) -> &mut (NodeInfo, Booted) {
            self.nodes.iter_mut().find(|(i, _)| i.number == n).unwrap()
        }
    }

    impl Cluster for Fake {
        fn nodes(&mut self) -> Result<Vec<NodeInfo>, String> {
            Ok(self.nodes.iter().map(|(n, _)| n.clone()).collect())
        }
        fn booted(&mut self, n: u32) -> Result<Booted, String> {
            let (info, b) = self.node(n);
            if info.state == "down" {
                return Err("connection refused".into());
            }
            Ok(b.clone())
        }
        fn jobs(&mut self) -> Result<Vec<JobInfo>, String> {
            Ok(self.jobs.clone())
        }
        fn lock(&mut self, n: u32, locked: bool) -> Result<(), String> {
            if locked {
                self.locked.push(n);
            } else {
                self.locked.retain(|x| *x != n);
            }
            Ok(())
        }
        fn migrate(&mut self, on: u32, job: &str, to: u32) -> Result<String, String> {
            if self.refuse_migration_of.iter().any(|j| j == job) {
                return Err("resumed: criu dump failed".into());
            }
            if self.locked.contains(&to) || self.node(to).0.state != "up" {
                return Err(format!("node {to} takes no guests"));
            }
            let j = self.jobs.iter_mut().find(|j| j.id == job).unwrap();
            assert_eq!(j.node, on, "job {job} migrated through the wrong node");
            j.node = to;
            self.log.push(format!("{job} {on}->{to}"));
            Ok(String::new())
        }
        fn reboot(&mut self, n: u32) -> Result<(), String> {
            if self.jobs.iter().any(|j| j.node == n && is_live(&j.state)) {
                return Err("node runs jobs".into());
            }
            if self.stale_refusals > 0 {
                self.stale_refusals -= 1;
                return Err("this node runs 1 job(s)".into());
            }
            // Nothing may run there when it goes down: that job would be lost.
            self.node(n).0.state = "down".into();
            self.rebooting.insert(n, self.reboot_ticks);
            self.log.push(format!("reboot {n}"));
            Ok(())
        }
        fn pause(&mut self) {
            self.clock += Duration::from_secs(1);
            let served = self.served.clone();
            let mut back = Vec::new();
            for (n, left) in self.rebooting.iter_mut() {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    back.push(*n);
                }
            }
            for n in back {
                self.rebooting.remove(&n);
                if self.never_back.contains(&n) {
                    continue;
                }
                self.locked.retain(|x| *x != n);
                let node = self.node(n);
                node.0.state = "up".into();
                node.1 = Booted {
                    image: Some(served.clone()),
                    uptime_s: 3,
                };
            }
        }
        fn elapsed(&self) -> Duration {
            self.clock
        }
    }

    fn plan() -> Plan {
        Plan {
            image: "new".into(),
            come_back: Duration::from_secs(60),
            drain: Duration::from_secs(60),
        }
    }

    type FakeRun = (Result<Vec<(u32, Outcome)>, Error>, Vec<String>);

    fn run_fake(f: &mut Fake) -> FakeRun {
        let mut lines = Vec::new();
        let r = run(f, &plan(), &mut |l| lines.push(l.to_owned()));
        (r, lines)
    }

    #[test]
    fn every_node_ends_on_the_new_image_and_no_job_is_lost() {
        let mut f = Fake::new(
            3,
            &[
                ("1.1", 1, false),
                ("1.2", 1, true),
                ("2.1", 2, false),
                ("3.1", 3, false),
            ],
        );
        let (r, lines) = run_fake(&mut f);
        let out = r.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
        assert_eq!(out.len(), 3);
        assert!(out
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Updated { .. })));
        for (n, b) in &f.nodes {
            assert_eq!(b.image.as_deref(), Some("new"), "node {}", n.number);
        }
        assert_eq!(f.jobs.len(), 4);
        // Reboots happened one at a time, in order, each after its node was empty (the fake's
        // reboot refuses otherwise).
        let reboots: Vec<&String> = f.log.iter().filter(|l| l.starts_with("reboot")).collect();
        assert_eq!(reboots, ["reboot 1", "reboot 2", "reboot 3"]);
        // Node 1's jobs went to node 2 or 3; node 2's then preferred the updated node 1.
        assert!(f.log.contains(&"2.1 2->1".to_owned()), "{:?}", f.log);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("1.2") && l.contains("pinned")),
            "{lines:?}"
        );
        assert!(lines
            .iter()
            .any(|l| l.contains("[3/3] node3: back on image new")));
    }

    #[test]
    fn a_stale_job_count_delays_the_reboot_instead_of_stopping() {
        let mut f = Fake::new(2, &[("1.1", 1, false)]);
        f.stale_refusals = 3;
        let (r, lines) = run_fake(&mut f);
        r.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
        assert_eq!(f.node(1).1.image.as_deref(), Some("new"));
    }

    #[test]
    fn a_node_that_does_not_come_back_stops_the_update_naming_it() {
        let mut f = Fake::new(3, &[("1.1", 1, false), ("2.1", 2, false)]);
        f.never_back = vec![2];
        let (r, lines) = run_fake(&mut f);
        let e = r.unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Stopped {
                    node: 2,
                    done: 1,
                    total: 3,
                    ..
                }
            ),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains("node 2 (node2)") && text.contains("did not come back"),
            "{text}"
        );
        // Node 3 was never touched.
        assert!(!f.log.iter().any(|l| l == "reboot 3"), "{:?}", f.log);
        assert_eq!(f.node(3).1.image.as_deref(), Some("old"));
        assert!(!lines.iter().any(|l| l.contains("[3/3]")), "{lines:?}");
    }

    #[test]
    fn a_node_back_on_the_old_image_stops_the_update() {
        let mut f = Fake::new(2, &[]);
        f.served = "old-again".into();
        let (r, _) = run_fake(&mut f);
        let text = r.unwrap_err().to_string();
        assert!(
            text.contains("node 1 (node1)") && text.contains("instead of new"),
            "{text}"
        );
    }

    #[test]
    fn a_job_that_cannot_move_keeps_its_node_running() {
        let mut f = Fake::new(3, &[("1.1", 1, false), ("1.2", 1, false)]);
        f.refuse_migration_of = vec!["1.2".into()];
        let (r, _) = run_fake(&mut f);
        let text = r.unwrap_err().to_string();
        assert!(text.contains("job 1.2 could not be moved"), "{text}");
        assert!(
            !f.log.iter().any(|l| l.starts_with("reboot")),
            "{:?}",
            f.log
        );
        assert_eq!(f.node(1).0.state, "up");
        assert!(!f.locked.contains(&1), "node 1 left locked");
    }

    #[test]
    fn current_and_down_nodes_are_left_alone() {
        let mut f = Fake::new(3, &[("2.1", 2, false)]);
        f.node(1).1.image = Some("new".into());
        f.node(3).0.state = "down".into();
        let (r, lines) = run_fake(&mut f);
        let out = r.unwrap();
        assert_eq!(out[0], (1, Outcome::AlreadyCurrent));
        assert!(matches!(out[1].1, Outcome::Updated { moved: 1, .. }));
        assert_eq!(out[2], (3, Outcome::SkippedDown));
        assert_eq!(f.log, ["2.1 2->1", "reboot 2"]);
        assert!(lines.iter().any(|l| l.contains("node3: down, skipped")));
    }

    #[test]
    fn no_other_node_up_means_no_drain() {
        let mut f = Fake::new(2, &[("1.1", 1, false)]);
        f.node(2).0.state = "down".into();
        let (r, _) = run_fake(&mut f);
        let text = r.unwrap_err().to_string();
        assert!(
            text.contains("no other node is up to take job 1.1"),
            "{text}"
        );
    }

    #[test]
    fn image_ids_and_node_apis_parse() {
        assert_eq!(
            image_in("#!ipxe\nkernel vmlinuz initrd=a console=ttyS0 drove.image=0011aabb quiet\n")
                .as_deref(),
            Some("0011aabb")
        );
        assert_eq!(image_in("kernel vmlinuz"), None);
        assert_eq!(
            parse_node_api("2=127.0.0.1:4000"),
            Ok((2, "127.0.0.1:4000".to_owned()))
        );
        assert_eq!(
            parse_node_api("3=10.0.0.3"),
            Ok((3, "10.0.0.3:7030".to_owned()))
        );
        assert!(parse_node_api("x=1.2.3.4").is_err());
        assert!(parse_node_api("1.2.3.4").is_err());
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("manifest.json");
        std::fs::write(&m, r#"{"cmdline": "console=ttyS0 drove.image=feedbeef"}"#).unwrap();
        assert_eq!(image_from_manifest(&m).unwrap(), "feedbeef");
        std::fs::write(&m, r#"{"cmdline": "console=ttyS0"}"#).unwrap();
        assert!(image_from_manifest(&m).is_err());
    }
}
