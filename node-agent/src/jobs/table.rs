//! The job table of one node: every job started here or received by migration, and every
//! migration this node took part in. Pure data and state transitions; the engine does the I/O.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a job stands, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Running here.
    Running,
    /// Being dumped and sent; its processes are stopped.
    Migrating,
    /// Received and restored here, stopped until the source commits.
    Arriving,
    /// Now runs on `node` (this node keeps the record to forward requests).
    Moved,
    /// Ended here with `exit_code` or `signal`.
    Exited,
    /// Stopped here by `drove freeze` (SIGSTOP to every process of the job) until `continue`.
    /// Not migrated, by hand or by the balancer: a frozen job stays where it was frozen.
    Frozen,
    /// Gone with the node it ran on; `reason` says which and when.
    Lost,
}

impl State {
    pub fn is_final(self) -> bool {
        matches!(self, State::Moved | State::Exited | State::Lost)
    }
}

/// One job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `<home number>.<sequence>`, unique in the cluster.
    pub id: String,
    pub cmd: Vec<String>,
    pub home: u32,
    /// The node running it; for `moved`, the node it went to.
    pub node: u32,
    pub state: State,
    /// Pid of the job's root process in this node's initial PID namespace.
    pub pid: Option<i32>,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub started_ms: u64,
    pub migrations: u32,
    /// Never moved by the balancer (`"pin": true` at launch).
    #[serde(default)]
    pub pinned: bool,
    /// Why the job is `lost` (or what happened to it otherwise), for the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `--checkpoint-every SECS`: a checkpoint this often, kept on another node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u64>,
}

/// A checkpoint this node holds for a job running elsewhere (images under
/// `/run/drove/checkpoints/<id>/current`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The job's record as its node sent it with the checkpoint.
    pub job: Job,
    /// The node that ran the job and sent the checkpoint.
    pub from: u32,
    pub at_ms: u64,
    /// Output lengths at the checkpoint (the output files travel with it, that long).
    pub offsets: Offsets,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("no job {0}")]
    NoSuchJob(String),
    #[error("job {id} is {state:?}; it can only be {wanted} when running")]
    WrongState {
        id: String,
        state: State,
        wanted: &'static str,
    },
    #[error("job {0} is already known here")]
    Exists(String),
    #[error("job {0} is frozen: `drove continue {0}` first")]
    Frozen(String),
    #[error("job {0} is not frozen")]
    NotFrozen(String),
}

/// Outcome of one migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Moved,
    /// Failed before the target confirmed; the job went on where it was.
    Resumed,
    /// Failed and the job could not be resumed either (its process was gone).
    Lost,
}

/// One migration, as recorded by its source (and by its target, from the other side).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub job: String,
    pub from: u32,
    pub to: u32,
    pub reason: String,
    /// From the start of the dump until the job ran again (on either node).
    pub freeze_ms: u64,
    pub bytes: u64,
    pub total_ms: u64,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub at_ms: u64,
    /// CRIU pre-dump rounds streamed while the job ran (0: no pre-copy).
    #[serde(default)]
    pub precopy_rounds: u32,
    /// Bytes of those rounds (part of `bytes`).
    #[serde(default)]
    pub precopy_bytes: u64,
}

/// The jobs and migrations of this node.
#[derive(Debug, Default)]
pub struct Table {
    jobs: BTreeMap<String, Job>,
    pub migrations: Vec<Migration>,
    /// Checkpoints of jobs running on other nodes, by job id.
    pub checkpoints: BTreeMap<String, Held>,
    next: u32,
    /// Exits reaped while their job was `migrating`: (pid, code, signal). Whether such an exit
    /// is the job's own end or its stopped source copy's, killed after the commit, is known only
    /// when the migration ends (see [`Table::release_held_exits`]).
    held_exits: Vec<(i32, Option<i32>, Option<String>)>,
}

impl Table {
    /// A new id for a job whose home is `home`; `taken` says whether an id is in use on disk.
    pub fn next_id(&mut self, home: u32, taken: impl Fn(&str) -> bool) -> String {
        loop {
            self.next += 1;
            let id = format!("{home}.{}", self.next);
            if !self.jobs.contains_key(&id) && !taken(&id) {
                return id;
            }
        }
    }

    pub fn insert(&mut self, job: Job) -> Result<(), Error> {
        match self.jobs.get(&job.id) {
            Some(old) if !old.state.is_final() => Err(Error::Exists(job.id)),
            _ => {
                self.jobs.insert(job.id.clone(), job);
                Ok(())
            }
        }
    }

    pub fn get(&self, id: &str) -> Result<&Job, Error> {
        self.jobs.get(id).ok_or_else(|| Error::NoSuchJob(id.into()))
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut Job, Error> {
        self.jobs
            .get_mut(id)
            .ok_or_else(|| Error::NoSuchJob(id.into()))
    }

    /// Sets or clears a job's `reason` (e.g. why it cannot migrate now).
    pub fn set_reason(&mut self, id: &str, reason: Option<String>) {
        if let Some(j) = self.jobs.get_mut(id) {
            j.reason = reason;
        }
    }

    pub fn list(&self) -> Vec<Job> {
        self.jobs.values().cloned().collect()
    }

    /// Jobs with a live process here (running, migrating, arriving).
    pub fn local_count(&self) -> usize {
        self.jobs.values().filter(|j| !j.state.is_final()).count()
    }

    /// Running → migrating; returns the pid to dump. A frozen job is refused (its migration
    /// would resume it on the target, and a frozen job is one its owner wants held where it is).
    pub fn begin_migration(&mut self, id: &str) -> Result<i32, Error> {
        let job = self.get_mut(id)?;
        match (job.state, job.pid) {
            (State::Running, Some(pid)) => {
                job.state = State::Migrating;
                Ok(pid)
            }
            (State::Frozen, _) => Err(Error::Frozen(id.into())),
            (state, _) => Err(Error::WrongState {
                id: id.into(),
                state,
                wanted: "migrated",
            }),
        }
    }

    /// Migrating → running again (the dump or transfer failed and the stopped copy was resumed).
    pub fn abort_migration(&mut self, id: &str) -> Result<(), Error> {
        let job = self.get_mut(id)?;
        if job.state == State::Migrating {
            job.state = State::Running;
        }
        Ok(())
    }

    /// Migrating → moved to `to`.
    pub fn finish_migration(&mut self, id: &str, to: u32) -> Result<(), Error> {
        let job = self.get_mut(id)?;
        job.state = State::Moved;
        job.node = to;
        job.pid = None;
        job.migrations += 1;
        Ok(())
    }

    /// Arriving → running (the source committed).
    pub fn arrived(&mut self, id: &str) -> Result<(), Error> {
        let job = self.get_mut(id)?;
        job.state = State::Running;
        Ok(())
    }

    /// Running → frozen; returns the pid of the job's root.
    pub fn freeze(&mut self, id: &str) -> Result<i32, Error> {
        let job = self.get_mut(id)?;
        match (job.state, job.pid) {
            (State::Running, Some(pid)) => {
                job.state = State::Frozen;
                Ok(pid)
            }
            (State::Frozen, _) => Err(Error::Frozen(id.into())),
            (state, _) => Err(Error::WrongState {
                id: id.into(),
                state,
                wanted: "frozen",
            }),
        }
    }

    /// Frozen → running; returns the pid of the job's root.
    pub fn thaw(&mut self, id: &str) -> Result<i32, Error> {
        let job = self.get_mut(id)?;
        match (job.state, job.pid) {
            (State::Frozen, Some(pid)) => {
                job.state = State::Running;
                Ok(pid)
            }
            _ => Err(Error::NotFrozen(id.into())),
        }
    }

    /// A job that had moved to node `node` is lost with it: every `moved` record pointing at
    /// `node` becomes `lost` with `reason(id)`. Returns the ids.
    pub fn node_lost(&mut self, node: u32, reason: impl Fn(&str) -> String) -> Vec<String> {
        let mut ids = Vec::new();
        for job in self.jobs.values_mut() {
            if job.state == State::Moved && job.node == node {
                job.state = State::Lost;
                job.reason = Some(reason(&job.id));
                ids.push(job.id.clone());
            }
        }
        ids
    }

    /// Job `id` ended on node `node` (after moving there from here, possibly by way of other
    /// nodes) with `code` or `signal`: this node's `moved` record (or `lost`, when the node
    /// only looked dead) becomes `exited` there, so the home answers for the job after that
    /// node is gone. A record of a job that runs here (it came back, or restarted from its
    /// checkpoint) or already ended is left alone: the report is stale. `migrations` is the
    /// reporter's count: moves made away from here (node 2 → node 3) are known only to the nodes
    /// that made them.
    pub fn ended_elsewhere(
        &mut self,
        id: &str,
        node: u32,
        migrations: u32,
        code: Option<i32>,
        signal: Option<String>,
    ) -> Result<Ended, Error> {
        let job = self.get_mut(id)?;
        match job.state {
            State::Moved | State::Lost => {
                job.state = State::Exited;
                job.node = node;
                job.migrations = job.migrations.max(migrations);
                job.pid = None;
                job.exit_code = code;
                job.signal = signal;
                job.reason = None;
                Ok(Ended::Recorded)
            }
            // The migration away from here is not recorded yet (the job ended on the target
            // between its commit and ours): the reporter asks again.
            State::Migrating => Ok(Ended::NotYet),
            State::Running | State::Arriving | State::Frozen | State::Exited => Ok(Ended::Stale),
        }
    }

    /// Sets how often job `id` is checkpointed.
    pub fn set_checkpoint_every(&mut self, id: &str, secs: Option<u64>) -> Result<Job, Error> {
        let job = self.get_mut(id)?;
        job.checkpoint_every = secs;
        Ok(job.clone())
    }

    /// The held checkpoints of jobs whose node was `node` when they sent them, and which this
    /// node does not run itself: what to restart when `node` dies.
    pub fn restartable(&self, node: u32) -> Vec<Held> {
        self.checkpoints
            .values()
            .filter(|h| h.from == node)
            .filter(|h| {
                self.jobs
                    .get(&h.job.id)
                    .is_none_or(|j| j.state == State::Moved)
            })
            .cloned()
            .collect()
    }

    /// Drops a job that never arrived (the target side of a failed migration).
    pub fn forget(&mut self, id: &str) {
        self.jobs.remove(id);
    }

    /// A process ended: the job whose root it was becomes exited. Returns that job's id.
    /// The exit of a job being migrated (its stopped copy killed after the commit) is ignored.
    pub fn exited(
        &mut self,
        pid: i32,
        code: Option<i32>,
        signal: Option<String>,
    ) -> Option<String> {
        let job = self
            .jobs
            .values_mut()
            .find(|j| j.pid == Some(pid) && !j.state.is_final())?;
        if job.state == State::Migrating {
            self.held_exits.push((pid, code, signal));
            return None;
        }
        job.state = State::Exited;
        job.exit_code = code;
        job.signal = signal;
        Some(job.id.clone())
    }

    /// Whether an exit of `pid` is held back (see [`Table::release_held_exits`]).
    pub fn has_held_exit(&self, pid: i32) -> bool {
        self.held_exits.iter().any(|(p, _, _)| *p == pid)
    }

    /// Settles the exits held back while their jobs were migrating: a migration that failed
    /// left the job `running` (or frozen) here, so the exit was the job's own end (it ended
    /// while CRIU had it, e.g. `Unable to detach ... No such process`) and is recorded now;
    /// a migration that committed left it `moved`, so the exit was its source copy's and is
    /// dropped. Still `migrating`: held. Returns the ids of the jobs that ended.
    pub fn release_held_exits(&mut self) -> Vec<String> {
        let mut ended = Vec::new();
        let held = std::mem::take(&mut self.held_exits);
        for (pid, code, signal) in held {
            let job = self
                .jobs
                .values()
                .find(|j| j.pid == Some(pid) && !j.state.is_final());
            match job.map(|j| j.state) {
                Some(State::Migrating) => self.held_exits.push((pid, code, signal)),
                Some(_) => ended.extend(self.exited(pid, code, signal)),
                None => {}
            }
        }
        ended
    }
}

/// What a home did with the report of its job's end on another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ended {
    /// The record is `exited` now (and the output the reporter sent replaced the home's).
    Recorded,
    /// Ask again in a moment.
    NotYet,
    /// The home's record is not of a job away from it: nothing changed.
    Stale,
}

/// Output offsets sent with the image: the byte length of each output file at the dump. The
/// target checks that it received exactly that many bytes, so the caller's stream (which reads
/// by offset from whichever node holds the job) has no gap and no duplicate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets {
    pub stdout: u64,
    pub stderr: u64,
}

impl Offsets {
    /// Which of the received files disagree with the offsets (empty when all agree).
    pub fn mismatches(&self, stdout_len: u64, stderr_len: u64) -> Vec<String> {
        let mut bad = Vec::new();
        if stdout_len != self.stdout {
            bad.push(format!(
                "stdout has {stdout_len} bytes, the source had {}",
                self.stdout
            ));
        }
        if stderr_len != self.stderr {
            bad.push(format!(
                "stderr has {stderr_len} bytes, the source had {}",
                self.stderr
            ));
        }
        bad
    }
}

/// The bytes of an output file from `offset` on, at most `max`: what one read of the stream gets.
/// An offset past the end gives nothing (the caller asked too early), never an error.
pub fn slice_from(data: &[u8], offset: u64, max: usize) -> &[u8] {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start.saturating_add(max).min(data.len());
    &data[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, pid: i32) -> Job {
        Job {
            id: id.into(),
            cmd: vec!["awk".into()],
            home: 1,
            node: 1,
            state: State::Running,
            pid: Some(pid),
            exit_code: None,
            signal: None,
            started_ms: 0,
            migrations: 0,
            pinned: false,
            reason: None,
            checkpoint_every: None,
        }
    }

    #[test]
    fn ids_skip_what_is_taken() {
        let mut t = Table::default();
        assert_eq!(t.next_id(1, |_| false), "1.1");
        assert_eq!(t.next_id(1, |id| id == "1.2"), "1.3");
    }

    /// The soak found this: a job that ended while CRIU was dumping it (`Unable to detach from
    /// 157: No such process`) stayed `running` for ever, its exit dropped as the source copy's.
    #[test]
    fn an_exit_during_a_failed_migration_is_the_jobs_end() {
        let mut t = Table::default();
        t.insert(job("1.1", 50)).unwrap();
        t.begin_migration("1.1").unwrap();
        assert_eq!(t.exited(50, Some(0), None), None);
        assert!(t.has_held_exit(50));
        // Still migrating: nothing is decided yet.
        assert!(t.release_held_exits().is_empty());
        assert_eq!(t.get("1.1").unwrap().state, State::Migrating);
        t.abort_migration("1.1").unwrap();
        assert_eq!(t.release_held_exits(), vec!["1.1".to_string()]);
        let j = t.get("1.1").unwrap();
        assert_eq!((j.state, j.exit_code), (State::Exited, Some(0)));
        assert!(!t.has_held_exit(50));
        assert!(t.release_held_exits().is_empty());
    }

    #[test]
    fn the_source_copys_end_after_the_commit_is_not_the_jobs() {
        let mut t = Table::default();
        t.insert(job("1.1", 50)).unwrap();
        t.begin_migration("1.1").unwrap();
        assert_eq!(t.exited(50, None, Some("SIGKILL".into())), None);
        t.finish_migration("1.1", 2).unwrap();
        assert!(t.release_held_exits().is_empty());
        let j = t.get("1.1").unwrap();
        assert_eq!((j.state, j.node, j.signal.clone()), (State::Moved, 2, None));
        assert!(!t.has_held_exit(50));
    }

    #[test]
    fn migration_moves_or_resumes() {
        let mut t = Table::default();
        t.insert(job("1.1", 50)).unwrap();
        assert_eq!(t.begin_migration("1.1"), Ok(50));
        // A second migration while the first runs is refused.
        assert!(matches!(
            t.begin_migration("1.1"),
            Err(Error::WrongState {
                state: State::Migrating,
                ..
            })
        ));
        t.abort_migration("1.1").unwrap();
        assert_eq!(t.get("1.1").unwrap().state, State::Running);
        t.begin_migration("1.1").unwrap();
        // The killed stopped copy is not the job's end.
        assert_eq!(t.exited(50, None, Some("SIGKILL".into())), None);
        t.finish_migration("1.1", 2).unwrap();
        let j = t.get("1.1").unwrap();
        assert_eq!(
            (j.state, j.node, j.pid, j.migrations),
            (State::Moved, 2, None, 1)
        );
        assert!(t.begin_migration("1.1").is_err());
        assert_eq!(t.local_count(), 0);
        assert_eq!(
            t.begin_migration("9.9"),
            Err(Error::NoSuchJob("9.9".into()))
        );
    }

    #[test]
    fn exit_is_recorded_once() {
        let mut t = Table::default();
        t.insert(job("1.1", 50)).unwrap();
        assert_eq!(t.exited(51, Some(0), None), None);
        assert_eq!(t.exited(50, Some(3), None), Some("1.1".into()));
        assert_eq!(t.exited(50, Some(4), None), None);
        let j = t.get("1.1").unwrap();
        assert_eq!((j.state, j.exit_code), (State::Exited, Some(3)));
    }

    #[test]
    fn a_job_may_come_back_to_a_node_it_left() {
        let mut t = Table::default();
        t.insert(job("1.1", 50)).unwrap();
        assert_eq!(t.insert(job("1.1", 60)), Err(Error::Exists("1.1".into())));
        t.begin_migration("1.1").unwrap();
        t.finish_migration("1.1", 2).unwrap();
        let mut back = job("1.1", 70);
        back.state = State::Arriving;
        t.insert(back).unwrap();
        t.arrived("1.1").unwrap();
        assert_eq!(t.get("1.1").unwrap().pid, Some(70));
    }

    #[test]
    fn frozen_jobs_stay_put_until_continued() {
        let mut t = Table::default();
        t.insert(job("1.1", 50)).unwrap();
        assert_eq!(t.thaw("1.1"), Err(Error::NotFrozen("1.1".into())));
        assert_eq!(t.freeze("1.1"), Ok(50));
        assert_eq!(t.get("1.1").unwrap().state, State::Frozen);
        assert_eq!(t.freeze("1.1"), Err(Error::Frozen("1.1".into())));
        let refused = t.begin_migration("1.1").unwrap_err();
        assert_eq!(
            refused.to_string(),
            "job 1.1 is frozen: `drove continue 1.1` first"
        );
        // Still a live job here (the balancer's count, the reaper).
        assert_eq!(t.local_count(), 1);
        assert_eq!(t.thaw("1.1"), Ok(50));
        assert_eq!(t.begin_migration("1.1"), Ok(50));
        // Killed while frozen: an ordinary end.
        t.abort_migration("1.1").unwrap();
        t.freeze("1.1").unwrap();
        assert_eq!(
            t.exited(50, None, Some("SIGKILL".into())),
            Some("1.1".into())
        );
        assert!(t.freeze("1.1").is_err());
    }

    #[test]
    fn jobs_on_a_dead_node_are_lost_with_a_reason() {
        let mut t = Table::default();
        for (id, pid) in [("1.1", 50), ("1.2", 51), ("1.3", 52)] {
            t.insert(job(id, pid)).unwrap();
        }
        for (id, to) in [("1.1", 3), ("1.2", 2)] {
            t.begin_migration(id).unwrap();
            t.finish_migration(id, to).unwrap();
        }
        let lost = t.node_lost(3, |id| format!("node 3 went down while running job {id}"));
        assert_eq!(lost, vec!["1.1".to_string()]);
        let j = t.get("1.1").unwrap();
        assert_eq!(j.state, State::Lost);
        assert_eq!(
            j.reason.as_deref(),
            Some("node 3 went down while running job 1.1")
        );
        assert_eq!(t.get("1.2").unwrap().state, State::Moved);
        assert_eq!(t.get("1.3").unwrap().state, State::Running);
        // Reported once.
        assert!(t.node_lost(3, |_| String::new()).is_empty());
        let json = serde_json::to_value(t.get("1.1").unwrap()).unwrap();
        assert_eq!(json["state"], "lost");
    }

    #[test]
    fn an_end_reported_by_the_node_that_ran_the_job_outlives_that_node() {
        let mut t = Table::default();
        for (id, pid) in [("1.1", 50), ("1.2", 51), ("1.3", 52)] {
            t.insert(job(id, pid)).unwrap();
        }
        for id in ["1.1", "1.2"] {
            t.begin_migration(id).unwrap();
            t.finish_migration(id, 2).unwrap();
        }
        assert_eq!(
            t.ended_elsewhere("1.1", 3, 2, Some(0), None),
            Ok(Ended::Recorded)
        );
        let j = t.get("1.1").unwrap();
        assert_eq!(
            (j.state, j.node, j.exit_code, j.pid),
            (State::Exited, 3, Some(0), None)
        );
        // Moved 1 → 2 from here, 2 → 3 by node 2: the reporter's count wins.
        assert_eq!(j.migrations, 2);
        // Node 2 (and 3) die later: the ended job stays ended; the one still away is lost.
        assert_eq!(t.node_lost(2, |_| "gone".into()), vec!["1.2".to_string()]);
        assert!(t.node_lost(3, |_| "gone".into()).is_empty());
        assert_eq!(t.get("1.1").unwrap().state, State::Exited);
        // A job declared lost whose node was only cut off: its end still counts.
        assert_eq!(
            t.ended_elsewhere("1.2", 2, 2, None, Some("SIGKILL".into())),
            Ok(Ended::Recorded)
        );
        let j = t.get("1.2").unwrap();
        assert_eq!((j.state, j.reason.as_deref()), (State::Exited, None));
        // Runs here, or already ended: stale; mid-migration: ask again.
        assert_eq!(
            t.ended_elsewhere("1.3", 2, 2, Some(1), None),
            Ok(Ended::Stale)
        );
        assert_eq!(
            t.ended_elsewhere("1.1", 2, 2, Some(9), None),
            Ok(Ended::Stale)
        );
        assert_eq!(t.get("1.1").unwrap().exit_code, Some(0));
        t.begin_migration("1.3").unwrap();
        assert_eq!(
            t.ended_elsewhere("1.3", 2, 2, Some(1), None),
            Ok(Ended::NotYet)
        );
        assert!(t.ended_elsewhere("9.9", 2, 2, None, None).is_err());
    }

    #[test]
    fn checkpoints_restart_only_jobs_not_running_here() {
        let mut t = Table::default();
        let held = |id: &str, from: u32| Held {
            job: job(id, 9),
            from,
            at_ms: 0,
            offsets: Offsets::default(),
            bytes: 0,
        };
        // 1.1 moved from here to node 2, 1.2 came back here, 3.1 is a guest's home job.
        for (id, pid) in [("1.1", 50), ("1.2", 51)] {
            t.insert(job(id, pid)).unwrap();
            t.begin_migration(id).unwrap();
            t.finish_migration(id, 2).unwrap();
        }
        t.insert(job("1.2", 52)).unwrap();
        for (id, from) in [("1.1", 2), ("1.2", 2), ("3.1", 3)] {
            t.checkpoints.insert(id.into(), held(id, from));
        }
        let ids = |v: Vec<Held>| v.into_iter().map(|h| h.job.id).collect::<Vec<_>>();
        assert_eq!(ids(t.restartable(2)), ["1.1"]);
        assert_eq!(ids(t.restartable(3)), ["3.1"]);
        assert!(t.restartable(4).is_empty());
    }

    #[test]
    fn output_offsets() {
        let o = Offsets {
            stdout: 10,
            stderr: 0,
        };
        assert!(o.mismatches(10, 0).is_empty());
        assert_eq!(
            o.mismatches(9, 0),
            vec!["stdout has 9 bytes, the source had 10".to_string()]
        );
        let data = b"0123456789";
        assert_eq!(slice_from(data, 0, 4), b"0123");
        assert_eq!(slice_from(data, 8, 4), b"89");
        assert_eq!(slice_from(data, 10, 4), b"");
        assert_eq!(slice_from(data, 99, 4), b"");
        // Reads at successive offsets reassemble the file exactly: no gap, no duplicate.
        let mut got = Vec::new();
        let mut off = 0u64;
        loop {
            let s = slice_from(data, off, 3);
            if s.is_empty() {
                break;
            }
            got.extend_from_slice(s);
            off += s.len() as u64;
        }
        assert_eq!(got, data);
    }
}
