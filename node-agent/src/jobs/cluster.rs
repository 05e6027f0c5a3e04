//! The whole cluster's jobs and migrations, from any node: `GET /api/cluster/jobs` asks every
//! node of this node's table for its `/api/jobs` (itself without the network) and merges the
//! answers, so the dashboard and `drove ps` show every job with where it runs, and every
//! migration, whichever node is asked.
//!
//! Merging: a job that moved is known to its home (state `moved`, `node` = where it went) and to
//! the node that runs it (`running`, `exited`, …); the record of the node that holds the live
//! process wins, and `seen_on` lists every node that knows the job. A job whose only record is
//! `moved` (the node it went to did not answer, or forgot it) is kept with `stale: true`.
//! Migrations are recorded by their source; the list is deduplicated and newest first. A node that
//! is down or does not answer is named in `unreachable` with the reason, never silently left out.

use super::api::Ctx;
use serde_json::{json, Value};
use std::time::Duration;

/// How long one node may take to answer (TCG nodes under load are slow; a dead one must not
/// stall the page).
pub const NODE_TIMEOUT: Duration = Duration::from_secs(3);

/// Most migrations in one answer (newest first).
pub const MAX_MIGRATIONS: usize = 200;

/// What one node said (or why it said nothing).
#[derive(Debug, Clone)]
pub struct NodeAnswer {
    pub number: u32,
    pub addr: String,
    /// Its state in the asking node's table (`up`, `suspect`, `down`).
    pub state: String,
    /// Its `/api/jobs` JSON, or why there is none.
    pub result: Result<Value, String>,
}

/// How much a record says about where the job is: lower wins.
fn rank(job: &Value) -> u8 {
    match job["state"].as_str() {
        Some("migrating") => 0,
        Some("running") => 1,
        Some("arriving") => 2,
        Some("exited") => 3,
        Some("moved") => 5,
        _ => 4,
    }
}

/// `home.seq` ids sort by home, then sequence number.
fn id_key(id: &str) -> (u64, u64, String) {
    let mut parts = id.splitn(2, '.');
    let a = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    let b = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    (a, b, id.to_owned())
}

/// Merges the nodes' answers into the cluster-wide view (pure; see the module comment).
pub fn merge(cluster: &str, self_number: u32, answers: &[NodeAnswer]) -> Value {
    // (id, best record, the node that gave it, nodes that know it)
    let mut best: Vec<(String, Value, u32, Vec<u32>)> = Vec::new();
    let mut migrations: Vec<Value> = Vec::new();
    let mut nodes = Vec::new();
    let mut unreachable = Vec::new();
    for a in answers {
        match &a.result {
            Ok(v) => {
                let list = v["jobs"].as_array().cloned().unwrap_or_default();
                nodes.push(json!({"number": a.number, "addr": a.addr, "state": a.state,
                    "answered": true, "jobs": list.len(), "error": null}));
                for job in list {
                    let Some(id) = job["id"].as_str().map(str::to_owned) else {
                        continue;
                    };
                    match best.iter_mut().find(|(i, ..)| *i == id) {
                        Some((_, rec, from, seen)) => {
                            seen.push(a.number);
                            let better = rank(&job) < rank(rec)
                                || (rank(&job) == rank(rec)
                                    && job["node"].as_u64() == Some(u64::from(a.number))
                                    && rec["node"].as_u64() != Some(u64::from(*from)));
                            if better {
                                *rec = job;
                                *from = a.number;
                            }
                        }
                        None => best.push((id, job, a.number, vec![a.number])),
                    }
                }
                for m in v["migrations"].as_array().into_iter().flatten() {
                    let same = |o: &Value| {
                        ["job", "from", "to", "at_ms"]
                            .iter()
                            .all(|k| o[*k] == m[*k])
                    };
                    if !migrations.iter().any(same) {
                        migrations.push(m.clone());
                    }
                }
            }
            Err(why) => {
                nodes.push(json!({"number": a.number, "addr": a.addr, "state": a.state,
                    "answered": false, "jobs": null, "error": why}));
                unreachable.push(json!({"number": a.number, "addr": a.addr, "error": why}));
            }
        }
    }
    best.sort_by_key(|a| id_key(&a.0));
    let mut list = Vec::new();
    for (_, mut rec, _, mut seen) in best {
        seen.sort_unstable();
        seen.dedup();
        if let Value::Object(o) = &mut rec {
            o.insert("seen_on".into(), json!(seen));
            o.insert("stale".into(), json!(rank(&Value::Object(o.clone())) == 5));
        }
        list.push(rec);
    }
    migrations.sort_by(|a, b| {
        b["at_ms"]
            .as_u64()
            .unwrap_or(0)
            .cmp(&a["at_ms"].as_u64().unwrap_or(0))
    });
    migrations.truncate(MAX_MIGRATIONS);
    json!({
        "cluster": cluster,
        "self": self_number,
        "jobs": list,
        "migrations": migrations,
        "nodes": nodes,
        "unreachable": unreachable,
    })
}

/// Asks every node of this node's table (concurrently, [`NODE_TIMEOUT`] each) and merges.
pub async fn gather(ctx: &Ctx) -> Value {
    let now = ctx.shared.now();
    let (cluster, me, me_addr, rows) = {
        let m = ctx.shared.membership();
        (
            m.cfg.cluster.clone(),
            m.me().number,
            m.me().addr.to_string(),
            m.table(now),
        )
    };
    let mut pending = Vec::new();
    for r in rows {
        let state = serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if r.number == me && r.addr == me_addr {
            let t = ctx.engine.table();
            let v = json!({ "node": me, "jobs": t.list(), "migrations": t.migrations });
            pending.push((r.number, r.addr, state, None, Some(Ok(v))));
            continue;
        }
        if state == "down" {
            let why = if r.last_heard_ms.is_none() {
                "never heard since this node started".to_owned()
            } else {
                "down in the cluster table".to_owned()
            };
            pending.push((r.number, r.addr, state, None, Some(Err(why))));
            continue;
        }
        let Ok(ip) = r.addr.parse::<std::net::Ipv4Addr>() else {
            let why = format!("bad address {:?}", r.addr);
            pending.push((r.number, r.addr, state, None, Some(Err(why))));
            continue;
        };
        let port = ctx.api_port;
        let handle = tokio::spawn(async move {
            let asked = super::api::forward_raw(ip, port, "GET", "/api/jobs", None, b"");
            match tokio::time::timeout(NODE_TIMEOUT, asked).await {
                Err(_) => Err(format!("no answer in {} s", NODE_TIMEOUT.as_secs())),
                Ok(Err(e)) => Err(format!("cannot ask it: {e}")),
                Ok(Ok((200, _, _, body))) => serde_json::from_slice::<Value>(&body)
                    .map_err(|e| format!("answered something that is not JSON: {e}")),
                Ok(Ok((status, ..))) => Err(format!("answered HTTP {status}")),
            }
        });
        pending.push((r.number, r.addr, state, Some(handle), None));
    }
    let mut answers = Vec::new();
    for (number, addr, state, handle, ready) in pending {
        let result = match (handle, ready) {
            (_, Some(r)) => r,
            (Some(h), None) => h
                .await
                .unwrap_or_else(|e| Err(format!("lookup failed: {e}"))),
            (None, None) => Err("not asked".into()),
        };
        answers.push(NodeAnswer {
            number,
            addr,
            state,
            result,
        });
    }
    merge(&cluster, me, &answers)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn job(id: &str, home: u32, node: u32, state: &str) -> Value {
        json!({"id": id, "cmd": ["awk"], "home": home, "node": node, "state": state,
               "pid": null, "exit_code": null, "signal": null, "started_ms": 1,
               "migrations": 0, "pinned": false})
    }

    fn mig(job: &str, from: u32, to: u32, at: u64) -> Value {
        json!({"job": job, "from": from, "to": to, "reason": "manual", "freeze_ms": 5,
               "bytes": 10, "total_ms": 9, "outcome": "moved", "error": null, "at_ms": at})
    }

    fn answer(number: u32, jobs: Vec<Value>, migrations: Vec<Value>) -> NodeAnswer {
        NodeAnswer {
            number,
            addr: format!("10.10.0.{number}"),
            state: "up".into(),
            result: Ok(json!({"node": number, "jobs": jobs, "migrations": migrations})),
        }
    }

    #[test]
    fn a_moved_job_is_listed_once_where_it_runs() {
        let answers = [
            answer(
                1,
                vec![job("1.1", 1, 2, "moved"), job("1.2", 1, 1, "running")],
                vec![mig("1.1", 1, 2, 100)],
            ),
            answer(2, vec![job("1.1", 1, 2, "running")], vec![]),
            answer(3, vec![job("3.1", 3, 3, "exited")], vec![]),
        ];
        let v = merge("t", 1, &answers);
        let jobs = v["jobs"].as_array().unwrap();
        let ids: Vec<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["1.1", "1.2", "3.1"]);
        assert_eq!(jobs[0]["state"], "running");
        assert_eq!(jobs[0]["node"], 2);
        assert_eq!(jobs[0]["seen_on"], json!([1, 2]));
        assert_eq!(jobs[0]["stale"], false);
        assert_eq!(jobs[2]["state"], "exited");
        assert_eq!(v["migrations"].as_array().unwrap().len(), 1);
        assert_eq!(v["unreachable"], json!([]));
        assert!(v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["answered"] == true));
    }

    #[test]
    fn the_order_of_answers_does_not_matter() {
        let a = answer(1, vec![job("1.1", 1, 3, "moved")], vec![]);
        let b = answer(3, vec![job("1.1", 1, 3, "running")], vec![]);
        let one = merge("t", 1, &[a.clone(), b.clone()]);
        let two = merge("t", 3, &[b, a]);
        assert_eq!(one["jobs"], two["jobs"]);
        assert_eq!(one["jobs"][0]["state"], "running");
    }

    #[test]
    fn a_silent_node_is_named_and_its_jobs_marked_stale() {
        let answers = [
            answer(
                1,
                vec![job("1.1", 1, 3, "moved")],
                vec![mig("1.1", 1, 3, 5)],
            ),
            NodeAnswer {
                number: 3,
                addr: "10.10.0.3".into(),
                state: "suspect".into(),
                result: Err("no answer in 3 s".into()),
            },
        ];
        let v = merge("t", 1, &answers);
        assert_eq!(
            v["unreachable"],
            json!([{"number": 3, "addr": "10.10.0.3", "error": "no answer in 3 s"}])
        );
        let n3 = &v["nodes"][1];
        assert_eq!(
            (n3["answered"].as_bool(), n3["state"].as_str()),
            (Some(false), Some("suspect"))
        );
        let j = &v["jobs"][0];
        assert_eq!(
            (j["state"].as_str(), j["node"].as_u64()),
            (Some("moved"), Some(3))
        );
        assert_eq!(j["stale"], true);
    }

    #[test]
    fn migrations_are_deduplicated_newest_first() {
        let answers = [
            answer(
                1,
                vec![],
                vec![mig("1.1", 1, 2, 100), mig("1.2", 1, 3, 300)],
            ),
            // The same record reported twice (e.g. by both sides) counts once.
            answer(
                2,
                vec![],
                vec![mig("1.1", 2, 1, 200), mig("1.1", 1, 2, 100)],
            ),
        ];
        let v = merge("t", 1, &answers);
        let at: Vec<u64> = v["migrations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["at_ms"].as_u64().unwrap())
            .collect();
        assert_eq!(at, [300, 200, 100]);
    }

    #[test]
    fn ids_sort_by_home_then_number() {
        let answers = [answer(
            1,
            vec![
                job("10.1", 10, 10, "running"),
                job("1.10", 1, 1, "running"),
                job("1.9", 1, 1, "running"),
                job("2.1", 2, 2, "running"),
            ],
            vec![],
        )];
        let v = merge("t", 1, &answers);
        let ids: Vec<&str> = v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["1.9", "1.10", "2.1", "10.1"]);
    }
}
