//! Automatic load balancing (MOSIX-like), decided by every node for its own jobs.
//!
//! [`Balancer::decide`] is pure: it takes the cluster as this node sees it (each node's
//! speed-normalised load, speed, usable CPUs, free memory, state, whether it takes guests and
//! whether this node's jobs can be restored on its CPU) and this node's jobs (id, pinned, CPU
//! demand, time on this node), and returns at most one move. The rule:
//!
//! - A job adds `share * REFERENCE_SPEED / (speed * cpus)` to a node's load (`share`: the CPUs
//!   it wants, 1.0 for a CPU-bound single-threaded job): load is per usable core, normalised by
//!   speed.
//! - Job `j` may go from this node (load `L`) to peer `p` (load `Lp`) when
//!   `Lp + add_p(j) * (1 + hysteresis) + margin < L`: this node exceeds the peer by more than
//!   one job's share there (plus the hysteresis), so after the move the job runs on a node less
//!   loaded than the one it leaves. Moving it back would need the opposite, so a move is never
//!   undone while loads stay put (no ping-pong).
//! - The target is one of the qualifying peers drawn at random: with hundreds of nodes every
//!   overloaded node sees the same least-loaded peers in lagged reports, and choosing the
//!   least loaded outright (or the better of two random ones, which still favours the idlest)
//!   sends them all there at once (herding). Every qualifying peer is less loaded than this
//!   node by more than the job, so any of them is an improvement. The job is the one that
//!   moves the most CPU there: `share * (L - (Lp + add_p(j)))`, ties to the job longest here,
//!   then by id.
//! - Never: pinned jobs, jobs here for less than `min_residency_ms`, jobs that want almost no
//!   CPU, peers that are not up, refuse guests (`drove lock`), have no speed, are short of
//!   memory, whose CPU cannot restore this node's images (`criu cpuinfo check`, see
//!   `cpuinfo.rs`), or failed a migration from here recently; a job whose migrations failed
//!   twice in a row waits `failed_backoff_ms`, doubling with each further failure up to
//!   [`JOB_BACKOFF_MAX_MS`] (a job CRIU cannot dump is not retried every round for ever).
//! - A node short of memory (`mem_free < mem_low`) sheds one movable job to the peer with the
//!   most free memory, whatever the loads.
//! - Before a move the target's current load is asked of the target itself ([`Balancer::confirm`];
//!   the daemon counts the live jobs of its `/api/jobs`): gossiped loads are seconds old in a big cluster (an
//!   epidemic needs about log n rounds, and a datagram carries a sample of the table), and in
//!   that time other nodes may have sent jobs there too. If the rule no longer holds with the
//!   fresh figure, the move is dropped and the peer skipped until `settle_ms` has passed.
//! - At most one outgoing migration at a time, and in-flight moves are accounted for: gossip
//!   load lags (the sampler's 2 s average plus a gossip period), so a move adds the job to its
//!   target's load and takes it off this node's load locally until `settle_ms` after it ended.
//!   Without that, 6 jobs on one node would all go to the same idle peer.
//!
//! [`run`] wires it into the cluster daemon: once a second it reads the membership table and
//! the job table, measures each job's CPU demand from `/proc`, and calls the engine's migrate
//! path with reason `balance`.

use crate::gossip::State as NodeState;
use crate::load::REFERENCE_SPEED;
use std::collections::BTreeMap;

/// Milliseconds on the caller's clock.
pub type Ms = u64;

#[derive(Debug, Clone)]
pub struct Params {
    /// A job must have run this long on a node before it moves again.
    pub min_residency_ms: Ms,
    /// A job that never moved may leave its home this soon after it started (one demand sample
    /// later): new jobs arriving on a busy home are the main source of imbalance, and a job that
    /// never moved cannot ping-pong.
    pub fresh_residency_ms: Ms,
    /// Relative hysteresis: the target must stay below the source by this fraction of the job's
    /// load there, on top of its load.
    pub hysteresis: f64,
    /// The same for placing a job that has not started ([`Balancer::place`]): it cannot
    /// ping-pong and the peers' loads are current answers, so any peer where it ends lower than
    /// here is better (simulation, 6 seeds: worst imbalance 1.23 against 1.24–1.26 with 0.25).
    pub place_hysteresis: f64,
    /// Absolute margin (load units) against measurement noise; 0 with job-count loads, where
    /// it would only stop a fast cluster (one job = 0.05 at speed 2000) from evening out.
    pub margin: f64,
    /// Below this free memory a node sheds jobs, and does not take any.
    pub mem_low: u64,
    /// How long after a move ended its effect is still added locally (gossip catching up).
    pub settle_ms: Ms,
    /// A peer a migration to failed is skipped this long.
    pub failed_backoff_ms: Ms,
    /// Jobs wanting less CPU than this are not worth moving for load.
    pub min_share: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            min_residency_ms: 10_000,
            fresh_residency_ms: 2_000,
            hysteresis: 0.25,
            place_hysteresis: 0.0,
            margin: 0.0,
            mem_low: 32 << 20,
            settle_ms: 6_000,
            failed_backoff_ms: 30_000,
            min_share: 0.2,
        }
    }
}

/// One node as the balancer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub number: u32,
    /// Speed-normalised load as reported (see `load.rs`).
    pub load: f64,
    pub speed: f64,
    pub cpus: u32,
    pub mem_free: u64,
    pub state: NodeState,
    /// False when the node is locked (`refuses_guests` in its load vector).
    pub accepts_guests: bool,
    /// Whether this node's jobs can be restored on its CPU (`cpuinfo::Compat`).
    pub cpu_ok: bool,
}

/// One job running on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalJob {
    pub id: String,
    pub pinned: bool,
    /// CPUs it wants (1.0: one CPU-bound thread).
    pub share: f64,
    /// Milliseconds since it started or arrived here.
    pub resident_ms: Ms,
    /// Never migrated yet (still on its home node since it started): such a job waits only
    /// `fresh_residency_ms`, not `min_residency_ms`, before it may move.
    pub fresh: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub job: String,
    pub to: u32,
    /// `balance`, `memory`, or `place` (a job about to start, [`Balancer::place`]).
    pub reason: &'static str,
    /// The job's load on the target (added there locally until the move settles).
    pub add_there: f64,
    /// The job's load here (taken off locally until the move settles).
    pub add_here: f64,
}

#[derive(Debug, Clone)]
struct Pending {
    to: u32,
    add_there: f64,
    add_here: f64,
    /// `None` while the migration runs; then when its effect stops being added.
    until: Option<Ms>,
}

/// The balancer of one node: parameters and what it remembers between rounds.
#[derive(Debug, Clone, Default)]
pub struct Balancer {
    pub params: Params,
    pending: Vec<Pending>,
    failed: BTreeMap<u32, Ms>,
    /// Jobs whose last migrations from here failed: (failures in a row, when the last ended).
    job_failures: BTreeMap<String, (u32, Ms)>,
    /// Peers whose own current load refused a move (see [`Balancer::confirm`]), and when.
    refused: BTreeMap<u32, Ms>,
    /// xorshift state for the random pair of candidate targets (seeded: decisions are
    /// reproducible).
    rng: u64,
}

/// The longest a job whose migrations keep failing waits before the next try.
pub const JOB_BACKOFF_MAX_MS: Ms = 600_000;

/// The load one job of `share` adds to `node`.
pub fn job_load(share: f64, node: &Node) -> f64 {
    share * REFERENCE_SPEED / (node.speed.max(1e-9) * f64::from(node.cpus.max(1)))
}

impl Balancer {
    pub fn new(params: Params) -> Self {
        Balancer {
            params,
            ..Default::default()
        }
    }

    /// A balancer whose random choices start from `seed` (nodes should differ: the daemon
    /// uses its node number and start time).
    pub fn seeded(params: Params, seed: u64) -> Self {
        Balancer {
            params,
            rng: seed,
            ..Default::default()
        }
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng ^ 0x9e37_79b9_7f4a_7c15;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Whether a migration from here is under way.
    pub fn busy(&self) -> bool {
        self.pending.iter().any(|p| p.until.is_none())
    }

    fn expire(&mut self, now: Ms) {
        self.pending.retain(|p| p.until.is_none_or(|u| now < u));
        let backoff = self.params.failed_backoff_ms;
        self.failed.retain(|_, at| now < at.saturating_add(backoff));
        let settle = self.params.settle_ms;
        self.refused.retain(|_, at| now < at.saturating_add(settle));
    }

    /// Whether `job` waits out a back-off at `now`: after two failures in a row, the peer
    /// back-off, doubled with each further failure (capped).
    fn job_backing_off(&self, now: Ms, job: &str) -> bool {
        match self.job_failures.get(job) {
            Some(&(n, at)) if n >= 2 => {
                let wait = self
                    .params
                    .failed_backoff_ms
                    .saturating_mul(1 << (n - 2).min(16))
                    .min(JOB_BACKOFF_MAX_MS);
                now < at.saturating_add(wait)
            }
            _ => false,
        }
    }

    /// Load of `n` with this node's in-flight and recent moves applied.
    fn effective(&self, n: &Node, me: u32) -> f64 {
        let mut l = n.load;
        for p in &self.pending {
            if p.to == n.number {
                l += p.add_there;
            }
            // This node's own load is known at once (its job table): only a job on its way
            // out still counts here and is taken off.
            if n.number == me && p.until.is_none() {
                l -= p.add_here;
            }
        }
        l.max(0.0)
    }

    /// At most one move for this round. `me` is this node's own row (also allowed in `nodes`).
    pub fn decide(
        &mut self,
        now: Ms,
        me: &Node,
        nodes: &[Node],
        jobs: &[LocalJob],
    ) -> Option<Move> {
        self.expire(now);
        if self.busy() {
            return None;
        }
        let peers: Vec<&Node> = nodes.iter().filter(|n| self.eligible(n, me)).collect();
        if peers.is_empty() {
            return None;
        }
        // Failures of jobs that are no longer here are forgotten.
        self.job_failures
            .retain(|id, _| jobs.iter().any(|j| &j.id == id));
        let p = &self.params;
        let movable: Vec<&LocalJob> = jobs
            .iter()
            .filter(|j| {
                !j.pinned
                    && !self.job_backing_off(now, &j.id)
                    && j.resident_ms
                        >= if j.fresh {
                            p.fresh_residency_ms
                        } else {
                            p.min_residency_ms
                        }
            })
            .collect();
        if movable.is_empty() {
            return None;
        }

        // Short of memory: shed the job here longest to the peer with the most free memory.
        if me.mem_free < p.mem_low {
            let to = peers
                .iter()
                .max_by_key(|n| (n.mem_free, std::cmp::Reverse(n.number)))?;
            let job = movable.iter().max_by(|a, b| {
                a.resident_ms
                    .cmp(&b.resident_ms)
                    .then_with(|| b.id.cmp(&a.id))
            })?;
            return Some(Move {
                job: job.id.clone(),
                to: to.number,
                reason: "memory",
                add_there: job_load(job.share, to),
                add_here: job_load(job.share, me),
            });
        }

        let here = self.effective(me, me.number);
        let (hysteresis, margin) = (p.hysteresis, p.margin);
        let movable: Vec<&LocalJob> = movable
            .into_iter()
            .filter(|j| j.share >= p.min_share)
            .collect();
        let smallest = movable.iter().map(|j| j.share).reduce(f64::min)?;
        // Peers some job may go to (the smallest job qualifies most easily), then two of them.
        let mut qualifying: Vec<(&Node, f64)> = peers
            .iter()
            .map(|n| (*n, self.effective(n, me.number)))
            .filter(|(n, there)| there + job_load(smallest, n) * (1.0 + hysteresis) + margin < here)
            .collect();
        if qualifying.len() > 1 {
            let i = (self.random() % qualifying.len() as u64) as usize;
            qualifying = vec![qualifying[i]];
        }
        let mut best: Option<(f64, Ms, &LocalJob, &Node)> = None;
        for &j in &movable {
            for &(n, there) in &qualifying {
                let add = job_load(j.share, n);
                if there + add * (1.0 + hysteresis) + margin >= here {
                    continue;
                }
                let gain = j.share * (here - (there + add));
                let better = match &best {
                    None => true,
                    Some((g, r, bj, bn)) => {
                        (
                            gain,
                            j.resident_ms,
                            std::cmp::Reverse(&j.id),
                            std::cmp::Reverse(n.number),
                        ) > (
                            *g,
                            *r,
                            std::cmp::Reverse(&bj.id),
                            std::cmp::Reverse(bn.number),
                        )
                    }
                };
                if better {
                    best = Some((gain, j.resident_ms, j, n));
                }
            }
        }
        let (_, _, j, n) = best?;
        Some(Move {
            job: j.id.clone(),
            to: n.number,
            reason: "balance",
            add_there: job_load(j.share, n),
            add_here: job_load(j.share, me),
        })
    }

    /// Peers to ask where a job about to start here should go (MOSIX's `mosrun -b`): `k` drawn
    /// at random among those that may take a job. Not chosen by their gossiped loads: gossip is
    /// seconds old and shows every home the same idle nodes, so choosing by it sent most new jobs
    /// of a 100-node simulation to the few nodes idle a few seconds before. The caller asks these
    /// peers for their job counts now (`/api/jobs`, as for [`Balancer::confirm`]) and hands the
    /// answers to [`Balancer::place`]: the best of `k` random choices (Sparrow's batch sampling).
    pub fn place_probes(&mut self, now: Ms, me: &Node, nodes: &[Node], k: usize) -> Vec<u32> {
        self.expire(now);
        let mut candidates: Vec<u32> = nodes
            .iter()
            .filter(|n| self.eligible(n, me))
            .map(|n| n.number)
            .collect();
        let mut chosen = Vec::new();
        while chosen.len() < k && !candidates.is_empty() {
            let i = (self.random() % candidates.len() as u64) as usize;
            chosen.push(candidates.swap_remove(i));
        }
        chosen
    }

    /// Where a job about to start here should start instead: among `answers` (peers as they
    /// report themselves now, see [`Balancer::place_probes`]), the one whose load after taking
    /// it is the lowest, provided that is lower than this node's with it (`there + add × (1 +
    /// place_hysteresis) < here + its load here`); `None`: start it here. A job
    /// placed well is never frozen and copied, and a busy home does not sit above the others
    /// for the seconds a new job needs to be measured and moved. Record the answer with
    /// [`Balancer::started`] and [`Balancer::finished`] like a migration, so that later rounds
    /// count it on the target until gossip shows it.
    pub fn place(&mut self, now: Ms, me: &Node, answers: &[Node], share: f64) -> Option<Move> {
        self.expire(now);
        let here = self.effective(me, me.number) + job_load(share, me);
        let mut best: Option<(f64, &Node)> = None;
        for n in answers.iter().filter(|n| self.eligible(n, me)) {
            // The answer is current: only this node's moves still under way are not in it.
            let (there, add) = (n.load + self.flying_to(n.number), job_load(share, n));
            let ok = there + add * (1.0 + self.params.place_hysteresis) + self.params.margin < here;
            if ok && best.is_none_or(|(b, _)| there + add < b) {
                best = Some((there + add, n));
            }
        }
        let (_, n) = best?;
        Some(Move {
            job: String::new(),
            to: n.number,
            reason: "place",
            add_there: job_load(share, n),
            add_here: job_load(share, me),
        })
    }

    /// Load this node's migrations under way add to peer `number` (not in its own count yet).
    fn flying_to(&self, number: u32) -> f64 {
        self.pending
            .iter()
            .filter(|x| x.to == number && x.until.is_none())
            .map(|x| x.add_there)
            .sum()
    }

    /// Whether `n` may take a job from this node at all.
    fn eligible(&self, n: &Node, me: &Node) -> bool {
        n.number != me.number
            && n.state == NodeState::Up
            && n.accepts_guests
            && n.cpu_ok
            && n.speed > 0.0
            && n.mem_free >= self.params.mem_low
            && !self.failed.contains_key(&n.number)
            && !self.refused.contains_key(&n.number)
    }

    /// Checks a `balance` move against the target's own current load (`target.load`, as the
    /// target reports it now rather than as gossip last carried it): the rule must still hold
    /// with this node's moves to it that are under way added. False: do not start the move;
    /// the target is skipped until `settle_ms` has passed. Memory moves are not checked.
    pub fn confirm(&mut self, now: Ms, mv: &Move, me: &Node, target: &Node) -> bool {
        if mv.reason != "balance" {
            return true;
        }
        let p = &self.params;
        let here = self.effective(me, me.number);
        let flying = self.flying_to(target.number);
        let ok = target.load + flying + mv.add_there * (1.0 + p.hysteresis) + p.margin < here;
        if !ok {
            self.refused.insert(target.number, now);
        }
        ok
    }

    /// The caller starts `mv`: from now on its effect is added locally.
    pub fn started(&mut self, mv: &Move) {
        self.pending.push(Pending {
            to: mv.to,
            add_there: mv.add_there,
            // A placed job never ran here: nothing to take off this node's own count.
            add_here: if mv.reason == "place" {
                0.0
            } else {
                mv.add_here
            },
            until: None,
        });
    }

    /// The migration of `mv` ended at `now`: moved (its effect is kept until gossip shows it)
    /// or not (forgotten, and the target skipped for a while).
    pub fn finished(&mut self, now: Ms, mv: &Move, moved: bool) {
        let settle = self.params.settle_ms;
        if let Some(i) = self
            .pending
            .iter()
            .position(|p| p.until.is_none() && p.to == mv.to)
        {
            if moved {
                self.pending[i].until = Some(now + settle);
            } else {
                self.pending.remove(i);
            }
        }
        if moved {
            self.job_failures.remove(&mv.job);
        } else {
            self.failed.insert(mv.to, now);
            let e = self.job_failures.entry(mv.job.clone()).or_insert((0, now));
            *e = (e.0.saturating_add(1), now);
        }
    }
}

/// Decide/confirm attempts per round: a peer the confirmation refuses is skipped and another
/// qualifying one drawn at once, instead of losing the whole second.
pub const TRIES: usize = 3;

/// Peers asked for their job counts before a new job is placed ([`Balancer::place_probes`]).
/// In the simulation (worst second after 30 s, 6 seeds) 8 did better than 2–4 (100 nodes: 1.27
/// against 1.33–1.45), and 16 better again (100 nodes: worst seed 1.29 → 1.24; 1,000 nodes,
/// 4 seeds: 1.22–1.25 → 1.18–1.20, and fewer migrations): with 8 a busy 1-core home still kept
/// its new job now and then because none of the 8 would end lower. The asks are one small HTTP
/// request each, in parallel, once per job.
pub const PROBES: usize = 16;

/// How long a reservation for an announced incoming move stands when the job does not arrive.
pub const RESERVE_MS: Ms = 15_000;

/// Moves announced to this node (`POST /api/jobs/:id/incoming` before the source starts the
/// migration): the confirmation of the next source counts them with the jobs here
/// (`GET /api/jobs` answers `incoming`), so several sources confirming against the same idle
/// node within the few seconds a migration takes do not all find it idle. A reservation ends
/// when its job is in the job table here or after [`RESERVE_MS`].
#[derive(Debug, Clone, Default)]
pub struct Reservations {
    /// job id → when announced.
    by_job: BTreeMap<String, Ms>,
}

impl Reservations {
    /// Bounds the table against a misbehaving peer (a real node announces one move at a time).
    pub const MAX: usize = 256;

    /// Records an announced move of `job` here; false when the table is full.
    pub fn reserve(&mut self, now: Ms, job: &str) -> bool {
        self.by_job
            .retain(|_, at| now < at.saturating_add(RESERVE_MS));
        if self.by_job.len() >= Self::MAX && !self.by_job.contains_key(job) {
            return false;
        }
        self.by_job.insert(job.to_string(), now);
        true
    }

    /// Announced moves still on their way: not expired and not yet in the job table
    /// (`arrived(id)`).
    pub fn count(&mut self, now: Ms, arrived: impl Fn(&str) -> bool) -> u32 {
        self.by_job
            .retain(|id, at| now < at.saturating_add(RESERVE_MS) && !arrived(id));
        self.by_job.len() as u32
    }
}

/// The target's current job count for [`Balancer::confirm`], from its `GET /api/jobs` at
/// `api`: jobs not ended plus the announced moves still on their way (`incoming`, 0 from an
/// agent that does not report it). `None`: no answer, or not a job list.
pub fn target_jobs(api: std::net::SocketAddr) -> Option<u32> {
    count_answer(super::engine::get_json(api, "/api/jobs")?)
}

/// How long a placement waits for a peer's job count ([`target_jobs_within`]): a peer that
/// does not answer within it is left out, so one hung peer among the [`PROBES`] does not hold
/// a submission for the 15 s the default timeouts allow. Generous for an agent on a LAN (it
/// answers in milliseconds) and for the QEMU tests under TCG.
pub const PLACE_ASK_MS: u64 = 3_000;

/// [`target_jobs`] within `limit` (to connect, and for each read).
pub fn target_jobs_within(api: std::net::SocketAddr, limit: std::time::Duration) -> Option<u32> {
    count_answer(super::engine::get_json_within(api, "/api/jobs", limit)?)
}

/// The job count in a `/api/jobs` answer: jobs not ended plus the moves announced.
fn count_answer((status, v): (u16, serde_json::Value)) -> Option<u32> {
    if status != 200 {
        return None;
    }
    let jobs = v.get("jobs")?.as_array()?;
    let live = jobs
        .iter()
        .filter(|j| {
            !matches!(
                j.get("state").and_then(|s| s.as_str()),
                Some("moved" | "exited" | "lost")
            )
        })
        .count() as u32;
    let incoming = v.get("incoming").and_then(|n| n.as_u64()).unwrap_or(0);
    Some(live.saturating_add(u32::try_from(incoming).unwrap_or(u32::MAX)))
}

/// Announces the move of `job` to the target whose API is at `api` (`POST
/// /api/jobs/:id/incoming`, cluster key as bearer token). True when the target recorded it;
/// an older target (404) or no answer: false, and the move goes ahead anyway.
pub fn announce(api: std::net::SocketAddr, key_hex: &str, job: &str) -> bool {
    let path = format!("/api/jobs/{job}/incoming");
    super::engine::api_request(api, "POST", &path, Some(key_hex))
        .is_some_and(|(status, _)| status == 200)
}

/// CPU demand of a job from `/proc`: time running plus time waiting in the run queue
/// (`/proc/PID/schedstat`), over wall time, summed over the processes of its session (the job's
/// root is a session leader). A job on an overloaded node gets little CPU but still *wants* a
/// whole one; usage alone would hide that.
pub mod demand {
    use std::collections::BTreeMap;

    /// `(session, run+wait ns)` of one process from its `stat` and `schedstat` texts.
    pub fn parse(stat: &str, schedstat: &str) -> Option<(i32, u64)> {
        // The command name is in parentheses and may contain spaces: fields start after ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest: state(3) ppid(4) pgrp(5) session(6) → indexes 0..; session is index 3.
        let session = f.get(3)?.parse().ok()?;
        let mut s = schedstat.split_whitespace();
        let run: u64 = s.next()?.parse().ok()?;
        let wait: u64 = s.next()?.parse().ok()?;
        Some((session, run + wait))
    }

    /// Run+wait ns per session, from every process in `/proc`.
    pub fn sample() -> BTreeMap<i32, u64> {
        let mut out = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let sched =
                std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
            if let Some((session, ns)) = parse(&stat, &sched) {
                *out.entry(session).or_insert(0) += ns;
            }
        }
        out
    }

    /// Demand (CPUs) between two samples `dt_ms` apart; `None` without both samples.
    pub fn share(before: Option<u64>, after: Option<u64>, dt_ms: u64) -> Option<f64> {
        let (b, a) = (before?, after?);
        if dt_ms == 0 {
            return None;
        }
        Some(a.saturating_sub(b) as f64 / (dt_ms as f64 * 1e6))
    }

    /// A job's demand after a new `sample` (CPUs, capped at `cpus`): the first measurement
    /// replaces the "CPU-bound until measured" guess outright, later ones are averaged with the
    /// last figure (smoothed like the load). Averaging the first one with the guess kept an idle
    /// job (`sleep 600`) above `min_share` for its first seconds, long enough to be moved for load
    /// it does not make.
    pub fn smooth(measured: Option<f64>, sample: f64, cpus: u32) -> f64 {
        let sample = sample.min(f64::from(cpus.max(1)));
        match measured {
            None => sample,
            Some(last) => (last + sample) / 2.0,
        }
    }

    /// What the balancer counts for a job: its smoothed demand, or 1 CPU until measured.
    pub fn counted(measured: Option<f64>) -> f64 {
        measured.unwrap_or(1.0)
    }
}

/// The load `jobs` CPU-bound jobs make on a node: what the balancer compares. The measured
/// run-queue load is too noisy for it (one job is 0.1 on a speed-1000 node, and a CRIU dump or
/// restore adds more than that for seconds), so the loop uses the gossiped job counts.
pub fn count_load(jobs: u32, speed: f64, cpus: u32) -> f64 {
    f64::from(jobs) * REFERENCE_SPEED / (speed.max(1e-9) * f64::from(cpus.max(1)))
}

/// Peers compared each round at most (a random sample beyond; MOSIX's load window): the
/// decision costs the same in a cluster of ten thousand as in one of a hundred.
pub const WINDOW: usize = 64;

/// This node and the peers it compares itself with this round, from its membership table:
/// loads from the gossiped job counts per usable core (`cpus`: this node's, also assumed for
/// agents too old to gossip theirs), locks, CPU verdicts. Shared by the daemon and the
/// simulation (`sim.rs`).
pub fn view(
    m: &mut crate::gossip::Membership,
    cpus: u32,
    compat: &super::cpuinfo::Compat,
) -> (Node, Vec<Node>) {
    let own = m.me().clone();
    let me = Node {
        number: own.number,
        load: count_load(own.load.jobs, own.load.speed, cpus),
        speed: own.load.speed,
        cpus,
        mem_free: own.load.mem_free,
        state: NodeState::Up,
        accepts_guests: !own.load.refuses_guests,
        cpu_ok: true,
    };
    let window = m.sample_live(WINDOW);
    let nodes = window
        .iter()
        .filter_map(|a| Some((m.members().get(a)?, m.conflict(a).is_some())))
        .map(|(mb, conflict)| {
            let l = &mb.entry.load;
            let peer_cpus = if l.cpus > 0 { l.cpus } else { cpus };
            Node {
                number: mb.entry.number,
                load: count_load(l.jobs, l.speed, peer_cpus),
                speed: l.speed,
                cpus: peer_cpus,
                mem_free: l.mem_free,
                state: if mb.entry.leaving || conflict {
                    NodeState::Down
                } else {
                    mb.state
                },
                accepts_guests: !l.refuses_guests,
                cpu_ok: compat.verdict(&l.cpu) == Some(true),
            }
        })
        .collect();
    (me, nodes)
}

/// Placement at submission in the daemon (`POST /api/jobs` with `"place": true`, `drove run
/// --best`): the API's own [`Balancer`] (its placements count on their targets until gossip
/// shows them), and its clock.
pub struct Placer {
    balancer: std::sync::Mutex<Balancer>,
    t0: std::time::Instant,
}

/// Where [`Placer::choose`] would start a new job: node number, address, and the move to
/// record once it has started there ([`Placer::record`]).
pub struct Placement {
    pub to: u32,
    pub addr: std::net::Ipv4Addr,
    pub mv: Move,
    /// Loads after the job: there, and here had it stayed (for the log line).
    pub there: f64,
    pub here: f64,
}

impl Placer {
    pub fn new(seed: u64) -> Self {
        Placer {
            balancer: std::sync::Mutex::new(Balancer::seeded(Params::default(), seed)),
            t0: std::time::Instant::now(),
        }
    }

    fn now(&self) -> Ms {
        self.t0.elapsed().as_millis() as Ms
    }

    fn balancer(&self) -> std::sync::MutexGuard<'_, Balancer> {
        self.balancer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocking (asks up to [`PROBES`] peers over HTTP, in parallel): the peer a new job of
    /// this node should start on, or `None` to start it here. `jobs_here`: this node's jobs not
    /// ended plus the moves announced to it. CPU compatibility does not matter: a job that
    /// starts on a node is never restored there.
    pub fn choose(
        &self,
        shared: &crate::api::Shared,
        jobs_here: u32,
        api_port: u16,
    ) -> Option<Placement> {
        let cpus = crate::load::usable_cpus_proc();
        let (mut me, mut peers) = view(
            &mut shared.membership(),
            cpus,
            &super::cpuinfo::Compat::new(String::new()),
        );
        me.load = count_load(jobs_here, me.speed, cpus);
        for p in &mut peers {
            p.cpu_ok = true;
        }
        let now = self.now();
        let asked = self.balancer().place_probes(now, &me, &peers, PROBES);
        let answers: Vec<(Node, std::net::Ipv4Addr)> = std::thread::scope(|s| {
            let handles: Vec<_> = asked
                .iter()
                .filter_map(|n| {
                    let (_, addr) = super::api::resolve(shared, &n.to_string(), me.number)?;
                    let node = peers.iter().find(|p| p.number == *n)?.clone();
                    Some(s.spawn(move || {
                        let count = target_jobs_within(
                            std::net::SocketAddr::from((addr, api_port)),
                            std::time::Duration::from_millis(PLACE_ASK_MS),
                        )?;
                        let load = count_load(count, node.speed, node.cpus);
                        Some((Node { load, ..node }, addr))
                    }))
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().ok().flatten())
                .collect()
        });
        let nodes: Vec<Node> = answers.iter().map(|(n, _)| n.clone()).collect();
        let mv = self.balancer().place(now, &me, &nodes, 1.0)?;
        let (target, addr) = answers.into_iter().find(|(n, _)| n.number == mv.to)?;
        Some(Placement {
            to: mv.to,
            addr,
            there: target.load + mv.add_there,
            here: me.load + mv.add_here,
            mv,
        })
    }

    /// The placed job started on its target (`true`), or the target refused or did not answer
    /// (it is skipped for a while, like a failed migration's).
    pub fn record(&self, mv: &Move, started: bool) {
        let now = self.now();
        let mut b = self.balancer();
        b.started(mv);
        b.finished(now, mv, started);
    }
}

/// The balancer loop of the cluster daemon (runs on a thread of its own: migrations block).
pub fn run(
    shared: std::sync::Arc<crate::api::Shared>,
    engine: std::sync::Arc<super::engine::Engine>,
) {
    use super::table::State as JobState;
    use std::time::{Duration, Instant};
    let cpus = crate::load::usable_cpus_proc();
    if std::path::Path::new(crate::api::LOCK_FILE).exists() {
        // Locked before the daemon restarted: still locked.
        shared.membership().set_refuses_guests(true);
        crate::info!("jobs: this node is locked (takes no guest jobs; `drove unlock` to undo)");
    }
    // CPU features, once: gossiped as a digest; peers with another digest are asked to check
    // this node's image against their CPU before any job is sent there (cpuinfo.rs).
    let image =
        match super::cpuinfo::dump(engine.children(), std::path::Path::new(super::cpuinfo::DIR)) {
            Ok(img) => {
                let d = super::cpuinfo::digest(&img);
                crate::info!("jobs: cpuinfo digest {d} (criu cpuinfo dump)");
                shared.membership().set_cpu(&d);
                Some(img)
            }
            Err(e) => {
                crate::warn!(
                    "jobs: criu cpuinfo dump failed, CPU compatibility is not checked: {}",
                    crate::console::chain(&e)
                );
                None
            }
        };
    let mut compat = super::cpuinfo::Compat::new(
        image
            .as_deref()
            .map(super::cpuinfo::digest)
            .unwrap_or_default(),
    );
    // The API listens one port below the migration listener (jobs/api.rs `start`).
    let api_port = engine.port.wrapping_sub(1);
    // Seeded per node and start, so two nodes do not draw the same pair of peers.
    let seed = u64::from(shared.membership().me().number).rotate_left(32)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut balancer = Balancer::seeded(Params::default(), seed);
    // Per job: where it is (pid), since when (local ms), last demand sample (ms, ns), measured
    // share (none yet: counted as CPU-bound).
    type Seen = (i32, Ms, Option<(Ms, u64)>, Option<f64>);
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let t0 = Instant::now();
    crate::info!("jobs: balancer running (cpus {cpus}, rule in docs/migration.md)");
    let mut me_jobs: u32;
    loop {
        std::thread::sleep(Duration::from_millis(1000));
        let now = t0.elapsed().as_millis() as Ms;
        {
            let t = engine.table();
            let live: Vec<_> = t
                .list()
                .into_iter()
                .filter(|j| !j.state.is_final())
                .collect();
            let guests = live.iter().filter(|j| j.home != engine.me).count();
            drop(t);
            me_jobs = live.len() as u32;
            let mut m = shared.membership();
            let mut load = m.me().load.clone();
            (load.jobs, load.guest_jobs) = (live.len() as u32, guests as u32);
            m.set_load(load);
        }
        let (my_number, peer_cpus): (u32, Vec<(u32, String)>) = {
            let m = shared.membership();
            let peers = m
                .members()
                .values()
                .filter(|mb| mb.state == NodeState::Up)
                .map(|mb| (mb.entry.number, mb.entry.load.cpu.clone()))
                .collect();
            (m.me().number, peers)
        };
        for (digest, number) in compat.to_ask(now, &peer_cpus) {
            let target = super::api::resolve(&shared, &number.to_string(), my_number);
            let answer = match (&image, target, shared.key_hex.as_deref()) {
                (Some(img), Some((_, addr)), Some(key)) => {
                    match super::cpuinfo::ask(addr, api_port, key, img) {
                        Ok(ok) => {
                            crate::info!(
                                "jobs: cpuinfo: node {number} (cpu {digest}) {} jobs from here",
                                if ok { "can restore" } else { "cannot restore" }
                            );
                            Some(ok)
                        }
                        Err(e) => {
                            crate::warn!(
                                "jobs: cpuinfo: {}; asking again later",
                                crate::console::chain(&e)
                            );
                            None
                        }
                    }
                }
                _ => None,
            };
            compat.record(now, &digest, answer);
        }
        let (mut me, nodes) = view(&mut shared.membership(), cpus, &compat);
        // Moves announced here count as this node's jobs already: a node about to receive
        // jobs sheds its own sooner (in the simulation, placing new jobs without this left
        // such nodes above everyone).
        me.load = count_load(me_jobs.saturating_add(engine.incoming()), me.speed, cpus);
        let samples = demand::sample();
        let running: Vec<(String, i32, bool, bool)> = engine
            .table()
            .list()
            .into_iter()
            .filter(|j| j.state == JobState::Running)
            .filter_map(|j| {
                let keep = j.pinned || super::files::is_unmovable(j.reason.as_deref());
                let fresh = j.migrations == 0 && j.home == engine.me;
                Some((j.id, j.pid?, keep, fresh))
            })
            .collect();
        seen.retain(|id, _| running.iter().any(|(r, ..)| r == id));
        let mut jobs = Vec::new();
        for (id, pid, pinned, fresh) in running {
            let ns = samples.get(&pid).copied();
            let e = seen.entry(id.clone()).or_insert((pid, now, None, None));
            if e.0 != pid {
                *e = (pid, now, None, None);
            }
            if let (Some((t, before)), Some(after)) = (e.2, ns) {
                if let Some(s) = demand::share(Some(before), Some(after), now - t) {
                    e.3 = Some(demand::smooth(e.3, s, cpus));
                }
            }
            if let Some(after) = ns {
                e.2 = Some((now, after));
            }
            jobs.push(LocalJob {
                id,
                pinned,
                share: demand::counted(e.3),
                resident_ms: now - e.1,
                fresh,
            });
        }
        // A refused target is skipped from then on: draw another one, a few times.
        let mut chosen = None;
        for _ in 0..TRIES {
            let Some(mv) = balancer.decide(now, &me, &nodes, &jobs) else {
                break;
            };
            let Some((_, addr)) = super::api::resolve(&shared, &mv.to.to_string(), me.number)
            else {
                break;
            };
            // The target's load now, from its job table and the moves announced to it (gossip
            // may be seconds behind); unanswered: the gossiped figure stands (the migration
            // itself then finds out).
            let api = std::net::SocketAddr::new(addr.into(), api_port);
            if let (Some(n), Some(gossiped)) =
                (target_jobs(api), nodes.iter().find(|n| n.number == mv.to))
            {
                let load = count_load(n, gossiped.speed, gossiped.cpus);
                let target = Node {
                    load,
                    ..gossiped.clone()
                };
                if !balancer.confirm(now, &mv, &me, &target) {
                    crate::info!(
                        "jobs: balance: node {} is busier now ({load:.2}) than gossip said ({:.2}); job {} stays",
                        mv.to,
                        gossiped.load,
                        mv.job
                    );
                    continue;
                }
            }
            if let Some(key) = shared.key_hex.as_deref() {
                announce(api, key, &mv.job);
            }
            chosen = Some((mv, addr));
            break;
        }
        let Some((mv, addr)) = chosen else {
            continue;
        };
        crate::info!(
            "jobs: balance: job {} to node {} ({}; job load here {:.2}, jobs {:?})",
            mv.job,
            mv.to,
            mv.reason,
            me.load,
            jobs.iter()
                .map(|j| (&j.id, (j.share * 100.0).round() / 100.0))
                .collect::<Vec<_>>()
        );
        balancer.started(&mv);
        let rec = engine.migrate(&mv.job, mv.to, addr, mv.reason);
        let done = t0.elapsed().as_millis() as Ms;
        balancer.finished(done, &mv, rec.outcome == super::table::Outcome::Moved);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn node(number: u32, speed: f64) -> Node {
        Node {
            number,
            load: 0.0,
            speed,
            cpus: 1,
            mem_free: 1 << 30,
            state: NodeState::Up,
            accepts_guests: true,
            cpu_ok: true,
        }
    }

    /// A simulated cluster: per node its balancer and jobs; reported loads lag `lag` rounds
    /// of one second; a migration takes `mig_rounds` rounds.
    struct Sim {
        nodes: Vec<Node>,
        balancers: BTreeMap<u32, Balancer>,
        /// job id → (node, pinned, arrived at ms)
        jobs: BTreeMap<String, (u32, bool, Ms)>,
        /// Reported loads of past rounds, newest last.
        history: Vec<BTreeMap<u32, f64>>,
        lag: usize,
        /// Reported loads are the sampler's average (weight 0.5 a second), as in `load.rs`.
        ema: bool,
        smoothed: BTreeMap<u32, f64>,
        now: Ms,
        moves: Vec<(String, u32, u32, Ms)>,
        /// In flight: (job, from, to, ends at)
        flying: Vec<(String, u32, u32, Ms)>,
        mig_ms: Ms,
        /// Jobs that never moved count as fresh (`LocalJob::fresh`).
        fresh: bool,
    }

    impl Sim {
        fn new(nodes: Vec<Node>) -> Self {
            let balancers = nodes
                .iter()
                .map(|n| (n.number, Balancer::default()))
                .collect();
            Sim {
                nodes,
                balancers,
                jobs: BTreeMap::new(),
                history: Vec::new(),
                lag: 2,
                ema: false,
                smoothed: BTreeMap::new(),
                now: 0,
                moves: Vec::new(),
                flying: Vec::new(),
                fresh: false,
                mig_ms: 2000,
            }
        }

        fn add_jobs(&mut self, on: u32, n: usize, pinned: bool) {
            for _ in 0..n {
                let id = format!("{on}.{}", self.jobs.len() + 1);
                self.jobs.insert(id, (on, pinned, self.now));
            }
        }

        fn true_load(&self, n: &Node) -> f64 {
            let count = self.jobs.values().filter(|j| j.0 == n.number).count();
            count as f64 * job_load(1.0, n)
        }

        fn count(&self, n: u32) -> usize {
            self.jobs.values().filter(|j| j.0 == n).count()
        }

        fn round(&mut self) {
            self.now += 1000;
            let now = self.now;
            // Finish migrations.
            let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flying)
                .into_iter()
                .partition(|f| f.3 <= now);
            self.flying = still;
            for (job, from, to, _) in done {
                self.jobs.insert(job.clone(), (to, false, now));
                let mv = Move {
                    job,
                    to,
                    reason: "balance",
                    add_there: 0.0,
                    add_here: 0.0,
                };
                self.balancers
                    .get_mut(&from)
                    .unwrap()
                    .finished(now, &mv, true);
            }
            let mut loads: BTreeMap<u32, f64> = self
                .nodes
                .iter()
                .map(|n| (n.number, self.true_load(n)))
                .collect();
            if self.ema {
                for (n, l) in loads.iter_mut() {
                    let s = self.smoothed.entry(*n).or_insert(*l);
                    *s += 0.5 * (*l - *s);
                    *l = *s;
                }
            }
            self.history.push(loads);
            let reported = self.history[self.history.len().saturating_sub(1 + self.lag)].clone();
            let view: Vec<Node> = self
                .nodes
                .iter()
                .map(|n| Node {
                    load: reported[&n.number],
                    ..n.clone()
                })
                .collect();
            for me in self.nodes.iter().filter(|n| n.state == NodeState::Up) {
                // A node knows its own jobs at once; others' loads arrive late.
                let me = &Node {
                    load: self.history.last().unwrap()[&me.number],
                    ..me.clone()
                };
                let jobs: Vec<LocalJob> = self
                    .jobs
                    .iter()
                    .filter(|(id, j)| j.0 == me.number && !self.flying.iter().any(|f| &f.0 == *id))
                    .map(|(id, j)| LocalJob {
                        id: id.clone(),
                        pinned: j.1,
                        share: 1.0,
                        resident_ms: now - j.2,
                        fresh: self.fresh && !self.moves.iter().any(|m| &m.0 == id),
                    })
                    .collect();
                let b = self.balancers.get_mut(&me.number).unwrap();
                if let Some(mv) = b.decide(now, me, &view, &jobs) {
                    b.started(&mv);
                    self.moves.push((mv.job.clone(), me.number, mv.to, now));
                    self.flying
                        .push((mv.job, me.number, mv.to, now + self.mig_ms));
                }
            }
        }

        fn rounds(&mut self, n: usize) {
            for _ in 0..n {
                self.round();
            }
        }
    }

    #[test]
    fn six_jobs_on_one_of_three_idle_nodes_spread_two_two_two() {
        let mut sim = Sim::new(vec![node(1, 100.0), node(2, 100.0), node(3, 100.0)]);
        sim.add_jobs(1, 6, false);
        sim.rounds(60);
        assert_eq!(
            (sim.count(1), sim.count(2), sim.count(3)),
            (2, 2, 2),
            "{:?}",
            sim.moves
        );
        assert_eq!(
            sim.moves.len(),
            4,
            "each job moves at most once: {:?}",
            sim.moves
        );
        // The first move waits for the minimum residency; all are done well within a minute.
        assert!(sim.moves[0].3 >= 10_000);
        assert!(sim.moves.last().unwrap().3 <= 30_000, "{:?}", sim.moves);
    }

    #[test]
    fn spreading_survives_long_gossip_lag() {
        // Reports up to 4 s late, or the sampler's running average plus one gossip period.
        for (lag, ema) in [
            (0, false),
            (1, false),
            (3, false),
            (4, false),
            (1, true),
            (2, true),
        ] {
            let mut sim = Sim::new(vec![node(1, 100.0), node(2, 100.0), node(3, 100.0)]);
            sim.lag = lag;
            sim.ema = ema;
            sim.add_jobs(1, 6, false);
            sim.rounds(120);
            assert_eq!(
                (sim.count(1), sim.count(2), sim.count(3)),
                (2, 2, 2),
                "lag {lag}: {:?}",
                sim.moves
            );
            assert_eq!(sim.moves.len(), 4, "lag {lag}: {:?}", sim.moves);
        }
    }

    #[test]
    fn fast_nodes_with_slightly_different_speeds_even_out() {
        // The VM test's nodes (speed 1000), and a real cluster's calibration spread.
        for speeds in [
            [1000.0, 1000.0, 1000.0],
            [2000.0, 2000.0, 1800.0],
            [1000.0, 1100.0, 900.0],
        ] {
            let mut sim = Sim::new(vec![
                node(1, speeds[0]),
                node(2, speeds[1]),
                node(3, speeds[2]),
            ]);
            sim.add_jobs(1, 6, false);
            sim.rounds(300);
            assert_eq!(
                (sim.count(1), sim.count(2), sim.count(3)),
                (2, 2, 2),
                "{speeds:?}: {:?}",
                sim.moves
            );
            assert_eq!(sim.moves.len(), 4, "{speeds:?}: {:?}", sim.moves);
        }
    }

    #[test]
    fn stable_loads_do_not_ping_pong() {
        for (jobs, expect) in [(6usize, 4usize), (7, 4), (5, 3), (4, 2), (2, 1), (1, 0)] {
            let mut sim = Sim::new(vec![node(1, 100.0), node(2, 100.0), node(3, 100.0)]);
            sim.add_jobs(1, jobs, false);
            sim.rounds(60);
            let settled = sim.moves.len();
            assert_eq!(settled, expect, "{jobs} jobs: {:?}", sim.moves);
            sim.rounds(1000);
            assert_eq!(sim.moves.len(), settled, "{jobs} jobs: {:?}", sim.moves);
            let counts = [sim.count(1), sim.count(2), sim.count(3)];
            assert!(
                counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
                "{counts:?}"
            );
        }
    }

    #[test]
    fn pinned_jobs_stay() {
        let mut sim = Sim::new(vec![node(1, 100.0), node(2, 100.0), node(3, 100.0)]);
        sim.add_jobs(1, 4, true);
        sim.add_jobs(1, 2, false);
        sim.rounds(100);
        assert!(sim.moves.iter().all(|m| !sim.jobs[&m.0].1 || m.1 != 1));
        assert_eq!(sim.count(1), 4, "{:?}", sim.moves);
        assert_eq!(sim.moves.len(), 2);
        for (id, j) in &sim.jobs {
            if j.1 {
                assert_eq!(j.0, 1, "pinned job {id} moved");
            }
        }
    }

    #[test]
    fn a_slower_node_gets_fewer_jobs() {
        let mut sim = Sim::new(vec![node(1, 100.0), node(2, 100.0), node(3, 50.0)]);
        sim.add_jobs(1, 6, false);
        sim.rounds(100);
        let (a, b, c) = (sim.count(1), sim.count(2), sim.count(3));
        assert_eq!(a + b + c, 6);
        assert!(c < a && c < b, "{a} {b} {c}: {:?}", sim.moves);
        assert!(c >= 1, "the slow node is still used: {a} {b} {c}");
        let n = sim.moves.len();
        sim.rounds(500);
        assert_eq!(sim.moves.len(), n, "no ping-pong: {:?}", sim.moves);
    }

    #[test]
    fn down_suspect_refusing_and_full_nodes_are_never_chosen() {
        let mut down = node(2, 100.0);
        down.state = NodeState::Down;
        let mut suspect = node(3, 100.0);
        suspect.state = NodeState::Suspect;
        let mut locked = node(4, 100.0);
        locked.accepts_guests = false;
        let mut full = node(5, 100.0);
        full.mem_free = 1 << 20;
        let mut sim = Sim::new(vec![
            node(1, 100.0),
            down,
            suspect,
            locked,
            full,
            node(6, 100.0),
        ]);
        sim.add_jobs(1, 6, false);
        sim.rounds(100);
        assert!(sim.moves.iter().all(|m| m.2 == 6), "{:?}", sim.moves);
        assert_eq!((sim.count(1), sim.count(6)), (3, 3));
    }

    #[test]
    fn one_outgoing_migration_at_a_time_and_failures_back_off() {
        let mut me = Node {
            load: 6.0,
            ..node(1, 100.0)
        };
        let nodes = vec![node(2, 100.0), node(3, 100.0)];
        let mut jobs: Vec<LocalJob> = (1..=6)
            .map(|i| LocalJob {
                id: format!("1.{i}"),
                pinned: false,
                share: 1.0,
                resident_ms: 20_000,
                fresh: false,
            })
            .collect();
        let mut b = Balancer::default();
        let mv = b.decide(0, &me, &nodes, &jobs).unwrap();
        assert_eq!((mv.to, mv.reason), (2, "balance"));
        b.started(&mv);
        assert!(b.busy());
        assert_eq!(b.decide(100, &me, &nodes, &jobs), None);
        // It failed: node 2 is skipped for a while, node 3 is next.
        b.finished(200, &mv, false);
        let mut t = 300;
        // Node 3's report still says 0 jobs: the moved ones count there until it catches up.
        // Here 6 - 3 = 3, there 0 + 3: no fourth.
        for _ in 0..3 {
            let mv = b.decide(t, &me, &nodes, &jobs).unwrap();
            assert_eq!(mv.to, 3);
            b.started(&mv);
            b.finished(t + 50, &mv, true);
            jobs.retain(|j| j.id != mv.job);
            me.load -= 1.0;
            t += 100;
        }
        assert_eq!(b.decide(t, &me, &nodes, &jobs), None);
        // Node 2 comes back after the backoff (node 3's report has caught up by then).
        let nodes = vec![
            node(2, 100.0),
            Node {
                load: 3.0,
                ..node(3, 100.0)
            },
        ];
        let mv = b.decide(31_000, &me, &nodes, &jobs).unwrap();
        assert_eq!(mv.to, 2);
    }

    #[test]
    fn a_job_whose_migrations_keep_failing_backs_off_doubling() {
        let me = Node {
            load: 2.0,
            ..node(1, 100.0)
        };
        let nodes: Vec<Node> = (2..=9).map(|n| node(n, 100.0)).collect();
        let jobs = vec![LocalJob {
            id: "1.1".into(),
            pinned: false,
            share: 1.0,
            resident_ms: 20_000,
            fresh: false,
        }];
        let mut b = Balancer::default();
        let backoff = b.params.failed_backoff_ms;
        let fail_at = |b: &mut Balancer, t: Ms| {
            let mv = b.decide(t, &me, &nodes, &jobs).expect("a move");
            b.started(&mv);
            b.finished(t, &mv, false);
        };
        // One failure: the job may try another peer at once (the peer may have been at fault).
        fail_at(&mut b, 0);
        fail_at(&mut b, 100);
        // Two in a row: it waits the back-off, then 2x, 4x, ... up to the cap.
        let mut t = 100;
        let mut wait = backoff;
        for _ in 0..8 {
            assert_eq!(
                b.decide(t + wait - 1, &me, &nodes, &jobs),
                None,
                "at {wait}"
            );
            t += wait;
            fail_at(&mut b, t);
            wait = (wait * 2).min(JOB_BACKOFF_MAX_MS);
        }
        assert_eq!(wait, JOB_BACKOFF_MAX_MS);
        // A success forgets the failures.
        t += wait;
        let mv = b
            .decide(t, &me, &nodes, &jobs)
            .expect("a move after the cap");
        b.started(&mv);
        b.finished(t, &mv, true);
        assert!(b.job_failures.is_empty());
        // Failures of a job that has gone are forgotten too.
        b.job_failures.insert("1.9".into(), (5, t));
        let _ = b.decide(t + 100_000, &me, &nodes, &jobs);
        assert!(!b.job_failures.contains_key("1.9"));
    }

    #[test]
    fn young_and_idle_jobs_stay_a_node_short_of_memory_sheds() {
        let mut me = Node {
            load: 3.0,
            ..node(1, 100.0)
        };
        let mut roomy = node(3, 100.0);
        roomy.load = 5.0;
        roomy.mem_free = 4 << 30;
        let nodes = vec![node(2, 100.0), roomy];
        let young = LocalJob {
            id: "1.1".into(),
            pinned: false,
            share: 1.0,
            resident_ms: 3_000,
            fresh: false,
        };
        let idle = LocalJob {
            id: "1.2".into(),
            pinned: false,
            share: 0.01,
            resident_ms: 60_000,
            fresh: false,
        };
        let mut b = Balancer::default();
        assert_eq!(
            b.decide(0, &me, &nodes, &[young.clone(), idle.clone()]),
            None
        );
        me.mem_free = 1 << 20;
        let mv = b.decide(0, &me, &nodes, &[young, idle]).unwrap();
        assert_eq!((mv.job.as_str(), mv.to, mv.reason), ("1.2", 3, "memory"));
    }

    /// One round's decision for a table of situations: this node (load from its job count),
    /// its peers and its jobs, and the move expected.
    #[test]
    #[allow(clippy::type_complexity)] // one row of the table per peer, read column by column
    fn decision_table() {
        struct Case {
            what: &'static str,
            /// (jobs here, cpus here, mem_free here MiB)
            me: (u32, u32, u64),
            /// (number, jobs, cpus, speed, locked, cpu_ok, mem_free MiB, state)
            peers: Vec<(u32, u32, u32, f64, bool, bool, u64, NodeState)>,
            /// (id, pinned, share, resident s)
            jobs: Vec<(&'static str, bool, f64, u64)>,
            want: Option<(&'static str, u32, &'static str)>,
        }
        let up = NodeState::Up;
        let job = |id, s| (id, false, 1.0, s);
        let four = vec![
            job("1.1", 60),
            job("1.2", 30),
            job("1.3", 20),
            job("1.4", 15),
        ];
        let cases = vec![
            Case {
                what: "idle peer: the job here longest goes",
                me: (4, 1, 512),
                peers: vec![(2, 0, 1, 100.0, false, true, 512, up)],
                jobs: four.clone(),
                want: Some(("1.1", 2, "balance")),
            },
            Case {
                what: "loads per usable core: a 4-core peer with 3 jobs is less loaded than 1 core with 4",
                me: (4, 1, 512),
                peers: vec![
                    (2, 3, 4, 100.0, false, true, 512, up),
                    (3, 2, 1, 100.0, false, true, 512, up),
                ],
                jobs: four.clone(),
                want: Some(("1.1", 2, "balance")),
            },
            Case {
                what: "exceeds the peer by exactly one job's share: no move (it would only swap)",
                me: (2, 1, 512),
                peers: vec![(2, 1, 1, 100.0, false, true, 512, up)],
                jobs: vec![job("1.1", 60), job("1.2", 60)],
                want: None,
            },
            Case {
                what: "a 2-core node with 3 jobs against an idle 1-core peer: 1.5 vs 0 + 1 * 1.25",
                me: (3, 2, 512),
                peers: vec![(2, 0, 1, 100.0, false, true, 512, up)],
                jobs: vec![job("1.1", 60), job("1.2", 60), job("1.3", 60)],
                want: Some(("1.1", 2, "balance")),
            },
            Case {
                what: "a 2-core node with 2 jobs is not overloaded for an idle 1-core peer",
                me: (2, 2, 512),
                peers: vec![(2, 0, 1, 100.0, false, true, 512, up)],
                jobs: vec![job("1.1", 60), job("1.2", 60)],
                want: None,
            },
            Case {
                what: "locked and CPU-incompatible peers are skipped",
                me: (4, 1, 512),
                peers: vec![
                    (2, 0, 1, 100.0, true, true, 512, up),
                    (3, 0, 1, 100.0, false, false, 512, up),
                    (4, 1, 1, 100.0, false, true, 512, up),
                ],
                jobs: four.clone(),
                want: Some(("1.1", 4, "balance")),
            },
            Case {
                what: "only locked, incompatible, suspect or full peers: nothing",
                me: (4, 1, 512),
                peers: vec![
                    (2, 0, 1, 100.0, true, true, 512, up),
                    (3, 0, 1, 100.0, false, false, 512, up),
                    (4, 0, 1, 100.0, false, true, 512, NodeState::Suspect),
                    (5, 0, 1, 100.0, false, true, 8, up),
                ],
                jobs: four.clone(),
                want: None,
            },
            Case {
                what: "pinned and young jobs stay; the movable one goes",
                me: (4, 1, 512),
                peers: vec![(2, 0, 1, 100.0, false, true, 512, up)],
                jobs: vec![
                    ("1.1", true, 1.0, 600),
                    ("1.2", false, 1.0, 5),
                    ("1.3", false, 1.0, 9),
                    ("1.4", false, 1.0, 11),
                ],
                want: Some(("1.4", 2, "balance")),
            },
            Case {
                what: "the job that gains most: a CPU-bound one before a half-idle one",
                me: (3, 1, 512),
                peers: vec![(2, 0, 1, 100.0, false, true, 512, up)],
                jobs: vec![("1.1", false, 0.5, 90), ("1.2", false, 1.0, 20), job("1.3", 20)],
                want: Some(("1.2", 2, "balance")),
            },
            Case {
                what: "a faster peer takes a job sooner: speed 300 with 2 jobs is 0.67",
                me: (2, 1, 512),
                peers: vec![(2, 2, 1, 300.0, false, true, 512, up)],
                jobs: vec![job("1.1", 60), job("1.2", 60)],
                want: Some(("1.1", 2, "balance")),
            },
            Case {
                what: "short of memory: shed to the roomiest peer even though it is busier",
                me: (1, 1, 8),
                peers: vec![
                    (2, 3, 1, 100.0, false, true, 900, up),
                    (3, 0, 1, 100.0, false, true, 100, up),
                    (4, 0, 1, 100.0, true, true, 2000, up),
                ],
                jobs: vec![job("1.1", 60)],
                want: Some(("1.1", 2, "memory")),
            },
        ];
        for c in cases {
            let me = Node {
                number: 1,
                load: count_load(c.me.0, 100.0, c.me.1),
                speed: 100.0,
                cpus: c.me.1,
                mem_free: c.me.2 << 20,
                state: NodeState::Up,
                accepts_guests: true,
                cpu_ok: true,
            };
            let peers: Vec<Node> = c
                .peers
                .iter()
                .map(
                    |&(number, jobs, cpus, speed, locked, cpu_ok, mem, state)| Node {
                        number,
                        load: count_load(jobs, speed, cpus),
                        speed,
                        cpus,
                        mem_free: mem << 20,
                        state,
                        accepts_guests: !locked,
                        cpu_ok,
                    },
                )
                .collect();
            let jobs: Vec<LocalJob> = c
                .jobs
                .iter()
                .map(|&(id, pinned, share, s)| LocalJob {
                    id: id.into(),
                    pinned,
                    share,
                    resident_ms: s * 1000,
                    fresh: false,
                })
                .collect();
            let got = Balancer::default()
                .decide(100_000, &me, &peers, &jobs)
                .map(|m| (m.job, m.to, m.reason));
            let want = c.want.map(|(j, t, r)| (j.to_string(), t, r));
            assert_eq!(got, want, "{}", c.what);
        }
    }

    #[test]
    fn a_locked_node_gets_nothing_and_unlocking_lets_it_take_jobs() {
        let mut locked = node(3, 100.0);
        locked.accepts_guests = false;
        let mut sim = Sim::new(vec![node(1, 100.0), node(2, 100.0), locked]);
        sim.add_jobs(1, 6, false);
        sim.rounds(100);
        assert_eq!((sim.count(1), sim.count(2), sim.count(3)), (3, 3, 0));
        sim.nodes[2].accepts_guests = true;
        sim.rounds(100);
        assert_eq!(
            (sim.count(1), sim.count(2), sim.count(3)),
            (2, 2, 2),
            "{:?}",
            sim.moves
        );
    }

    #[test]
    fn multi_core_nodes_get_jobs_by_usable_cores() {
        // 12 jobs on a 1-core node; peers with 4 and 1 usable cores. Even would be 2 / 8 / 2
        // (2.0 jobs per core everywhere); the hysteresis may stop one job short of it.
        let mut quad = node(2, 100.0);
        quad.cpus = 4;
        let mut sim = Sim::new(vec![node(1, 100.0), quad, node(3, 100.0)]);
        sim.add_jobs(1, 12, false);
        sim.rounds(300);
        let counts = (sim.count(1), sim.count(2), sim.count(3));
        assert!(
            (7..=9).contains(&counts.1)
                && (1..=3).contains(&counts.0)
                && (1..=3).contains(&counts.2),
            "{counts:?}: {:?}",
            sim.moves
        );
        let mut per_job: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &sim.moves {
            *per_job.entry(m.0.as_str()).or_default() += 1;
        }
        assert!(per_job.values().all(|n| *n <= 2), "{per_job:?}");
        assert!(sim.moves.len() <= 12, "{:?}", sim.moves);
        let n = sim.moves.len();
        sim.rounds(600);
        assert_eq!(sim.moves.len(), n, "no ping-pong");
    }

    #[test]
    fn overloaded_nodes_with_the_same_view_do_not_herd_onto_one_peer() {
        // 20 overloaded nodes see the same 40 idle peers (one lagged report): choosing the
        // least loaded outright would send all 20 jobs to peer 101. A random qualifying peer
        // each spreads them.
        let peers: Vec<Node> = (101..=140).map(|n| node(n, 100.0)).collect();
        let jobs: Vec<LocalJob> = (1..=8)
            .map(|i| LocalJob {
                id: format!("j{i}"),
                pinned: false,
                share: 1.0,
                resident_ms: 60_000,
                fresh: false,
            })
            .collect();
        let mut targets = std::collections::BTreeSet::new();
        for n in 1..=20u32 {
            let me = Node {
                load: count_load(8, 100.0, 1),
                ..node(n, 100.0)
            };
            let mut b = Balancer::seeded(Params::default(), u64::from(n));
            let mv = b.decide(100_000, &me, &peers, &jobs).unwrap();
            assert!((101..=140).contains(&mv.to));
            targets.insert(mv.to);
        }
        assert!(targets.len() >= 12, "{targets:?}");
        // Only qualifying peers are drawn: 3 jobs (3 + 1.25 < 8) and idle, never 7 (7 + 1.25).
        let with = |number, jobs| Node {
            load: count_load(jobs, 100.0, 1),
            ..node(number, 100.0)
        };
        let me = with(1, 8);
        let view = [with(2, 3), with(3, 0), with(4, 7)];
        let mut chosen = std::collections::BTreeSet::new();
        for seed in 0..40 {
            let mut b = Balancer::seeded(Params::default(), seed);
            chosen.insert(b.decide(100_000, &me, &view, &jobs).unwrap().to);
        }
        assert_eq!(chosen, [2, 3].into());
    }

    #[test]
    fn a_target_busier_now_than_gossip_said_is_refused_and_skipped_for_a_while() {
        let me = Node {
            load: count_load(4, 100.0, 1),
            ..node(1, 100.0)
        };
        let peers = vec![node(2, 100.0), node(3, 100.0)];
        let jobs: Vec<LocalJob> = (1..=4)
            .map(|i| LocalJob {
                id: format!("1.{i}"),
                pinned: false,
                share: 1.0,
                resident_ms: 60_000,
                fresh: false,
            })
            .collect();
        let mut b = Balancer::seeded(Params::default(), 1);
        let mv = b.decide(0, &me, &peers, &jobs).unwrap();
        // Others sent it 3 jobs since its last report: 3 + 1.25 is not below 4.
        let now = Node {
            load: count_load(3, 100.0, 1),
            ..node(mv.to, 100.0)
        };
        assert!(!b.confirm(0, &mv, &me, &now));
        let other = if mv.to == 2 { 3 } else { 2 };
        for t in [100, 5_000] {
            assert_eq!(b.decide(t, &me, &peers, &jobs).map(|m| m.to), Some(other));
        }
        // After settle_ms it is a candidate again; still as idle as reported: confirmed.
        let mut seen = std::collections::BTreeSet::new();
        for t in 0..20 {
            let mut b2 = b.clone();
            b2.rng = t;
            if let Some(m) = b2.decide(7_000, &me, &peers, &jobs) {
                assert!(b2.confirm(7_000, &m, &me, &node(m.to, 100.0)));
                seen.insert(m.to);
            }
        }
        assert!(seen.contains(&mv.to), "{seen:?}");
        // A move under way to it counts: 0 + 1 in flight + 1.25 < 4 still, 2 in flight not.
        let mut c = Balancer::seeded(Params::default(), 2);
        let a = c.decide(0, &me, &peers, &jobs).unwrap();
        c.started(&a);
        let target = node(a.to, 100.0);
        assert!(c.confirm(0, &a, &me, &target));
        c.pending.push(c.pending[0].clone());
        assert!(!c.confirm(0, &a, &me, &target));
    }

    #[test]
    fn demand_from_proc_texts() {
        let stat = "126 (awk (x) y) R 1 126 126 0 -1 4194560 100 0 0 0 50 3 0 0 20 0 1 0";
        assert_eq!(
            demand::parse(stat, "2000000000 500000000 40\n"),
            Some((126, 2_500_000_000))
        );
        assert_eq!(demand::parse("garbage", "1 2 3"), None);
        assert_eq!(demand::share(Some(0), Some(1_000_000_000), 1000), Some(1.0));
        assert_eq!(demand::share(None, Some(1), 1000), None);
    }

    #[test]
    fn an_idle_job_is_not_worth_moving_once_measured() {
        let p = Params::default();
        // Unmeasured: counted as CPU-bound, so a new job on a busy home may leave at once.
        assert_eq!(demand::counted(None), 1.0);
        // An idle job's first measurement puts it under min_share straight away (averaging it
        // with the guess gave 0.5, then 0.25: still movable for its first seconds).
        let idle = demand::smooth(None, 0.0, 1);
        assert!(demand::counted(Some(idle)) < p.min_share, "{idle}");
        // A CPU-bound one stays CPU-bound, capped at the node's CPUs; later samples are averaged.
        assert_eq!(demand::smooth(None, 1.7, 1), 1.0);
        assert_eq!(demand::smooth(Some(1.0), 0.0, 2), 0.5);
    }

    fn jobs_of(n: usize, resident_ms: Ms, fresh: bool) -> Vec<LocalJob> {
        (0..n)
            .map(|i| LocalJob {
                id: format!("1.{i}"),
                pinned: false,
                share: 1.0,
                resident_ms,
                fresh,
            })
            .collect()
    }

    #[test]
    fn a_new_job_at_home_may_leave_after_one_demand_sample() {
        let mut me = node(1, 100.0);
        me.load = 3.0;
        let peers = vec![node(2, 100.0)];
        let p = Params::default();
        let mut b = Balancer::seeded(p.clone(), 1);
        // Never moved, here for longer than `fresh_residency_ms`: it goes.
        let mv = b.decide(
            p.fresh_residency_ms,
            &me,
            &peers,
            &jobs_of(3, p.fresh_residency_ms, true),
        );
        assert_eq!(mv.map(|m| m.to), Some(2));
        // Too young even for a fresh job (its demand is not measured yet).
        let mut b = Balancer::seeded(p.clone(), 1);
        assert_eq!(b.decide(1000, &me, &peers, &jobs_of(3, 1000, true)), None);
        // A job that arrived by migration waits the full minimum residency (no ping-pong).
        let mut b = Balancer::seeded(p.clone(), 1);
        let young = p.min_residency_ms - 1;
        assert_eq!(
            b.decide(young, &me, &peers, &jobs_of(3, young, false)),
            None
        );
        let mv = b.decide(
            p.min_residency_ms,
            &me,
            &peers,
            &jobs_of(3, p.min_residency_ms, false),
        );
        assert_eq!(mv.map(|m| m.to), Some(2));
    }

    #[test]
    fn fresh_jobs_settle_without_ping_pong() {
        // Jobs submitted on node 1 one after another, as users do: each may leave after
        // `fresh_residency_ms`, and once moved waits `min_residency_ms`; after settling, nothing
        // moves for 1000 rounds.
        let mut sim = Sim::new(vec![node(1, 100.0), node(2, 100.0), node(3, 100.0)]);
        sim.fresh = true;
        for _ in 0..7 {
            sim.add_jobs(1, 1, false);
            sim.rounds(1);
        }
        sim.rounds(60);
        let settled = sim.moves.len();
        let counts = [sim.count(1), sim.count(2), sim.count(3)];
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?} {:?}",
            sim.moves
        );
        let first = sim.moves.first().map(|m| m.3).unwrap();
        assert!(
            first < 10_000,
            "a fresh job left before the minimum residency: {:?}",
            sim.moves
        );
        sim.rounds(1000);
        assert_eq!(sim.moves.len(), settled, "{:?}", sim.moves);
        let mut per_job: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &sim.moves {
            *per_job.entry(&m.0).or_default() += 1;
        }
        assert!(per_job.values().all(|n| *n == 1), "{:?}", sim.moves);
    }

    #[test]
    fn announced_moves_count_on_the_target_until_they_arrive_or_expire() {
        let mut r = Reservations::default();
        assert!(r.reserve(0, "1.1"));
        assert!(r.reserve(100, "3.7"));
        assert!(r.reserve(200, "3.7"), "announcing twice counts once");
        assert_eq!(r.count(500, |_| false), 2);
        assert_eq!(r.count(600, |id| id == "1.1"), 1, "1.1 arrived");
        assert_eq!(r.count(200 + RESERVE_MS, |_| false), 0, "3.7 never came");
        for i in 0..Reservations::MAX {
            assert!(r.reserve(1000, &format!("9.{i}")));
        }
        assert!(!r.reserve(1000, "9.x"), "bounded");

        // A source at 4 jobs on one core, an idle 1-core target: free until two moves are
        // announced to it, refused with three (3 + 1.25 is not below 4).
        let mut me = node(1, 100.0);
        me.load = 4.0;
        let target = node(2, 100.0);
        let mut b = Balancer::seeded(Params::default(), 3);
        let mv = b
            .decide(
                20_000,
                &me,
                std::slice::from_ref(&target),
                &jobs_of(4, 20_000, false),
            )
            .unwrap();
        let with = |n: u32| Node {
            load: count_load(n, 100.0, 1),
            ..target.clone()
        };
        assert!(b.confirm(20_000, &mv, &me, &with(2)));
        assert!(!b.confirm(20_000, &mv, &me, &with(3)));
        // Refused: the next decision draws another peer (none here).
        assert_eq!(
            b.decide(
                20_000,
                &me,
                std::slice::from_ref(&target),
                &jobs_of(4, 20_000, false)
            ),
            None
        );
    }

    /// A loopback HTTP server answering each connection with the next canned answer; returns
    /// its address and the requests it saw.
    fn serve(
        answers: Vec<&'static str>,
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for body in answers {
                let (mut s, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap() == 1 {
                    req.push(b[0]);
                }
                seen.push(String::from_utf8_lossy(&req).into_owned());
                let (status, body) = body.split_once(' ').unwrap();
                write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
            seen
        });
        (addr, h)
    }

    #[test]
    fn the_target_count_is_read_from_its_job_list_over_http() {
        let (addr, server) = serve(vec![
            // A current agent: 2 live jobs, a moved and an exited one, 1 move announced.
            r#"200 {"node":2,"jobs":[{"id":"2.1","state":"running"},{"id":"2.2","state":"moved"},{"id":"1.3","state":"arriving"},{"id":"2.4","state":"exited"}],"migrations":[],"incoming":1}"#,
            // An older agent: no `incoming`.
            r#"200 {"node":2,"jobs":[{"id":"2.1","state":"frozen"}],"migrations":[]}"#,
            r#"500 {"error":"x"}"#,
            r#"200 {"nothing":"here"}"#,
            r#"200 {"incoming":1}"#,
            r#"404 {"error":"no route"}"#,
        ]);
        assert_eq!(target_jobs(addr), Some(3));
        assert_eq!(target_jobs(addr), Some(1));
        assert_eq!(target_jobs(addr), None, "an error answer is no figure");
        assert_eq!(target_jobs(addr), None, "not a job list");
        assert!(announce(addr, "abcd", "1.7"));
        assert!(
            !announce(addr, "abcd", "1.8"),
            "an older agent without the route"
        );
        let seen = server.join().unwrap();
        assert!(
            seen[0].starts_with("GET /api/jobs HTTP/1.0\r\n"),
            "{}",
            seen[0]
        );
        assert!(
            seen[4].starts_with("POST /api/jobs/1.7/incoming HTTP/1.0\r\n"),
            "{}",
            seen[4]
        );
        assert!(
            seen[4].contains("Authorization: Bearer abcd\r\n"),
            "{}",
            seen[4]
        );
        // Nobody listening: no figure, no announcement, no panic.
        drop(std::net::TcpListener::bind(addr));
        assert_eq!(target_jobs(addr), None);
        assert!(!announce(addr, "abcd", "1.9"));
    }

    #[test]
    fn a_peer_that_never_answers_a_placement_ask_is_left_out_within_the_limit() {
        // Accepts the connection (the kernel's backlog does) and never answers.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t0 = std::time::Instant::now();
        let limit = std::time::Duration::from_millis(300);
        assert_eq!(target_jobs_within(addr, limit), None);
        // The bound, not a speed goal: far below the 10 s of the default read timeout.
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t0.elapsed()
        );
        drop(l);
    }

    fn loaded(number: u32, speed: f64, cpus: u32, jobs: u32) -> Node {
        Node {
            cpus,
            load: count_load(jobs, speed, cpus),
            ..node(number, speed)
        }
    }

    #[test]
    fn a_new_job_starts_on_the_peer_that_ends_lowest_or_at_home() {
        let mut b = Balancer::seeded(Params::default(), 1);
        let me = loaded(1, 100.0, 1, 3);
        // 3 jobs here: with the new one 4. Node 2 (3 jobs) would end equal: no better by the
        // rule. Node 3 (1 job on 1 core) ends at 2.0; node 4 (4 cores, 4 jobs) at 1.25: lowest.
        let answers = [
            loaded(2, 100.0, 1, 3),
            loaded(3, 100.0, 1, 1),
            loaded(4, 100.0, 4, 4),
        ];
        let mv = b.place(0, &me, &answers, 1.0).unwrap();
        assert_eq!((mv.to, mv.reason), (4, "place"));
        assert!((mv.add_there - 0.25).abs() < 1e-9 && (mv.add_here - 1.0).abs() < 1e-9);
        // Locked, CPU-incompatible, down or short of memory: never.
        let unfit = [
            Node {
                accepts_guests: false,
                ..loaded(5, 100.0, 4, 0)
            },
            Node {
                state: NodeState::Down,
                ..loaded(6, 100.0, 4, 0)
            },
            Node {
                mem_free: 1 << 20,
                ..loaded(7, 100.0, 4, 0)
            },
        ];
        assert_eq!(b.place(0, &me, &unfit, 1.0), None);
        // An idle home keeps its job: a peer no lower by more than the hysteresis is not better.
        let idle = loaded(1, 100.0, 1, 0);
        assert_eq!(b.place(0, &idle, &[loaded(2, 100.0, 1, 0)], 1.0), None);
        // Nobody answered: start here.
        assert_eq!(b.place(0, &me, &[], 1.0), None);
    }

    #[test]
    fn a_placed_job_counts_on_its_target_not_against_home() {
        let mut b = Balancer::seeded(Params::default(), 1);
        let me = loaded(1, 100.0, 1, 4);
        let mv = b.place(0, &me, &[loaded(2, 100.0, 1, 0)], 1.0).unwrap();
        b.started(&mv);
        b.finished(0, &mv, true);
        // Until gossip has caught up (settle_ms), node 2 counts one job more here, and this
        // node's own count is not lowered by a job that never ran on it.
        assert!((b.effective(&loaded(2, 100.0, 1, 0), 1) - 1.0).abs() < 1e-9);
        assert!((b.effective(&me, 1) - 4.0).abs() < 1e-9);
        // A placement is not a migration under way: the balancer is free for its own moves.
        assert!(!b.busy());
    }

    #[test]
    fn placement_asks_distinct_random_peers_that_may_take_jobs() {
        let mut b = Balancer::seeded(Params::default(), 9);
        let me = loaded(1, 100.0, 1, 5);
        let mut peers: Vec<Node> = (2..=40).map(|n| loaded(n, 100.0, 1, 0)).collect();
        peers[0].accepts_guests = false;
        peers[1].state = NodeState::Down;
        let mut seen = BTreeSet::new();
        for round in 0..20 {
            let asked = b.place_probes(round * 1000, &me, &peers, PROBES);
            assert_eq!(asked.len(), PROBES);
            let distinct: BTreeSet<u32> = asked.iter().copied().collect();
            assert_eq!(distinct.len(), PROBES, "{asked:?}");
            assert!(!distinct.contains(&1) && !distinct.contains(&2) && !distinct.contains(&3));
            seen.extend(distinct);
        }
        // Random, not the same few every time.
        assert!(seen.len() > 30, "{seen:?}");
        // Fewer candidates than asks: all of them.
        assert_eq!(b.place_probes(0, &me, &peers[..4], PROBES).len(), 2);
    }
}
