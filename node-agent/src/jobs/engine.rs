//! The job engine of one node: launches jobs in their own PID namespace, collects their exits,
//! migrates them out (source side) and takes them in (target side).
//!
//! Runs in the cluster daemon, which makes itself a child subreaper: a job's root process and
//! every process CRIU restores (`criu restore -d` exits, its tree reparents) become children of
//! the daemon, and one reaper thread hands their exit statuses to the job table. Every process
//! the daemon starts goes through [`Children`], so that reaper never steals a status.

use super::criu;
use super::proto::{self, Msg};
use super::table::{Ended, Job, Migration, Offsets, Outcome, State, Table};
use crate::children::{Children, Exit};
use crate::{info, warn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const JOBS_DIR: &str = "/run/drove/jobs";
const CRIU_TIMEOUT: Duration = Duration::from_secs(120);
const NET_TIMEOUT: Duration = Duration::from_secs(60);
/// A peer whose kernel acknowledges nothing for this long is taken for dead
/// (`TCP_USER_TIMEOUT`, and keepalive probes while the connection is idle). Only the peer's
/// kernel has to answer, not its agent: a target busy for a minute in `criu restore`, or slowed
/// down by TCG, still acknowledges within milliseconds; a killed VM or a cut cable never does.
const PEER_DEAD: Duration = Duration::from_secs(6);
/// Idle time before the first keepalive probe, and between probes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Jobs whose resident memory reaches this are pre-copied unless told otherwise: below it the
/// whole dump takes about as long as one pre-dump round would.
pub const PRECOPY_MIN_BYTES: u64 = 32 << 20;
/// At most this many pre-dump rounds before the final dump.
const PRECOPY_MAX_ROUNDS: u32 = 4;
/// A round writing less than this is small enough for the final dump to follow at once.
const PRECOPY_SMALL_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Table(#[from] super::table::Error),
    #[error("{path}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        source: crate::children::Error,
    },
    #[error("cannot learn the pid of the job's root process")]
    NoPid(std::io::Error),
    #[error("empty command")]
    EmptyCommand,
    #[error(transparent)]
    Criu(#[from] criu::Error),
    #[error("cannot reach the target {addr}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Proto(#[from] proto::Error),
    #[error("the target refused: {0}")]
    Refused(String),
    #[error("signal {signal} to pid {pid}: {source}")]
    Signal {
        signal: Signal,
        pid: i32,
        source: nix::errno::Errno,
    },
    #[error("{0}")]
    Other(String),
    #[error("no commit from node {from}: {source}")]
    NoCommit { from: u32, source: proto::Error },
}

/// How long a target holding a restored, uncommitted copy keeps asking the source who owns the
/// job before it gives up on it.
const ASK_OWNER_FOR: Duration = Duration::from_secs(300);

/// What a target does with a restored copy whose commit never came, from the source's answer
/// to `GET /api/jobs/<id>` (`None`: no answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The source killed its copy and recorded the job as moved here: run ours.
    Resume,
    /// The source still has the job (it resumed after the failure) or it ended there: drop ours.
    Drop,
    /// No answer, or one that says neither: ask again.
    Ask,
}

pub fn owner_verdict(answer: Option<(u16, &serde_json::Value)>, me: u32) -> Verdict {
    match answer {
        Some((200, job)) => match job["state"].as_str() {
            Some("moved") if job["node"].as_u64() == Some(u64::from(me)) => Verdict::Resume,
            Some("running" | "migrating" | "frozen" | "exited" | "moved") => Verdict::Drop,
            _ => Verdict::Ask,
        },
        _ => Verdict::Ask,
    }
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::File {
        path: path.to_path_buf(),
        source,
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where checkpoints held for other nodes' jobs live (`<id>/current`, `<id>/incoming`).
pub const CHECKPOINTS_DIR: &str = "/run/drove/checkpoints";

/// What a connection carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// A migration: restore, wait for the commit, run.
    #[default]
    Migrate,
    /// A checkpoint to keep (not restored unless the job's node dies).
    Checkpoint,
    /// The job ended: drop its checkpoint.
    Drop,
    /// The job ended on the sending node: the job's home records the exit and keeps the
    /// complete output sent with it (its `moved` record would otherwise outlive nothing).
    Exited,
}

/// What the source sends first.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Header {
    job: Job,
    offsets: Offsets,
    from: u32,
    #[serde(default)]
    kind: Kind,
}

/// What the engine asks of the cluster daemon (set once at start; unset in unit tests).
pub struct Cluster {
    /// A node's address by number, from the membership table.
    pub node_addr: Box<dyn Fn(u32) -> Option<Ipv4Addr> + Send + Sync>,
    /// Whether this node is locked (`drove lock`): it takes no guest jobs.
    pub refuses_guests: Box<dyn Fn() -> bool + Send + Sync>,
}

/// How long the node where a job ended keeps trying to tell the job's home.
const REPORT_EXIT_FOR: Duration = Duration::from_secs(300);

pub struct Engine {
    table: Mutex<Table>,
    cluster: std::sync::OnceLock<Cluster>,
    /// Outgoing transfers in flight: (serial, target node, a handle on the socket), so that a
    /// target the membership marks down can be cut off at once (see [`Engine::peer_down`]).
    transfers: Mutex<Vec<(u64, u32, TcpStream)>>,
    transfer_serial: std::sync::atomic::AtomicU64,
    /// Jobs checkpointed from here: the node holding the latest checkpoint, its address and
    /// when it was taken.
    checkpointed: Mutex<std::collections::BTreeMap<String, (u32, Ipv4Addr, Instant)>>,
    /// Where held checkpoints live.
    checkpoint_root: PathBuf,
    children: Arc<Children>,
    key: Option<Vec<u8>>,
    /// This node's number.
    pub me: u32,
    root: PathBuf,
    /// TCP port of the migration listener (the same on every node).
    pub port: u16,
    /// Moves other nodes' balancers announced to this node (`balance::Reservations`), on a
    /// clock counted from `created`.
    incoming: Mutex<super::balance::Reservations>,
    created: Instant,
}

impl Engine {
    pub fn new(me: u32, key: Option<Vec<u8>>, root: PathBuf, port: u16) -> Self {
        Engine {
            table: Mutex::new(Table::default()),
            cluster: std::sync::OnceLock::new(),
            transfers: Mutex::new(Vec::new()),
            transfer_serial: Default::default(),
            checkpointed: Mutex::new(Default::default()),
            checkpoint_root: CHECKPOINTS_DIR.into(),
            children: Arc::new(Children::new()),
            key,
            me,
            root,
            port,
            incoming: Mutex::new(Default::default()),
            created: Instant::now(),
        }
    }

    /// Keeps held checkpoints under `dir` instead of [`CHECKPOINTS_DIR`] (unit tests).
    #[cfg(test)]
    fn with_checkpoint_root(mut self, dir: PathBuf) -> Self {
        self.checkpoint_root = dir;
        self
    }

    /// Records a move of `job` to this node that a source's balancer announced; false when
    /// too many are announced already.
    pub fn announce_incoming(&self, job: &str) -> bool {
        let now = self.created.elapsed().as_millis() as u64;
        self.incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserve(now, job)
    }

    /// Announced moves not arrived yet (see [`super::balance::Reservations`]).
    pub fn incoming(&self) -> u32 {
        let now = self.created.elapsed().as_millis() as u64;
        let t = self.table();
        self.incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .count(now, |id| t.get(id).is_ok_and(|j| j.node == self.me))
    }

    pub fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connects the engine to the daemon's membership table (see [`Cluster`]).
    pub fn set_cluster(&self, cluster: Cluster) {
        let _ = self.cluster.set(cluster);
    }

    fn refuses_guests(&self) -> bool {
        self.cluster.get().is_some_and(|c| (c.refuses_guests)())
    }

    /// The child registry (other CRIU runs, e.g. `cpuinfo.rs`, must go through it: the reaper
    /// would steal their exit status otherwise).
    pub fn children(&self) -> &Children {
        &self.children
    }

    /// Makes this process a subreaper, starts the reaper and the migration listener.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        make_private_dir(&self.root)?;
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            warn!(
                "jobs: cannot become a child subreaper: {}",
                std::io::Error::last_os_error()
            );
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("job-reaper".into())
            .spawn(move || loop {
                for job in me.reap_once() {
                    if job.home != me.me {
                        let e = me.clone();
                        let _ = std::thread::Builder::new()
                            .name("exit-report".into())
                            .spawn(move || e.report_exit(&job));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            })?;
        if self.key.is_some() {
            let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], self.port)))?;
            let me = self.clone();
            std::thread::Builder::new()
                .name("migrate-listen".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        let Ok(conn) = conn else { continue };
                        let me = me.clone();
                        let _ = std::thread::Builder::new()
                            .name("migrate-in".into())
                            .spawn(move || me.receive(conn));
                    }
                })?;
            info!("jobs: migration listener on tcp/{}", self.port);
        } else {
            warn!("jobs: no cluster key: this node neither sends nor accepts migrations");
        }
        Ok(())
    }

    /// The jobs that ended since the last call.
    fn reap_once(&self) -> Vec<Job> {
        // Table first, then the registry (the order `launch` takes them too).
        let table = self.table();
        let exits = self.children.reap();
        self.record_exits(table, exits)
    }

    /// Records the exits `reaped` in `table`, then (with the table unlocked: both take it
    /// again) tells the checkpoint holder to drop each ended job's checkpoint. Returns the
    /// ended jobs.
    fn record_exits(&self, mut table: MutexGuard<'_, Table>, reaped: Vec<(Pid, Exit)>) -> Vec<Job> {
        let mut ended: Vec<String> = Vec::new();
        for (pid, exit) in reaped {
            let (code, signal) = match exit {
                Exit::Code(c) => (Some(c), None),
                Exit::Signal(s) => (None, Some(s.as_str().to_string())),
            };
            if let Some(id) = table.exited(pid.as_raw(), code, signal) {
                info!("jobs: job {id} ended ({exit})");
                ended.push(id);
            }
        }
        for id in table.release_held_exits() {
            info!("jobs: job {id} ended while a migration of it was being tried");
            ended.push(id);
        }
        let jobs: Vec<Job> = ended
            .iter()
            .filter_map(|id| table.get(id).ok().cloned())
            .collect();
        drop(table);
        for id in &ended {
            self.drop_checkpoint(id);
        }
        jobs
    }

    /// Tells the home of `job` (which ended here, away from home) how it ended and sends its
    /// complete output, retrying while the home is unreachable or has not recorded the move
    /// yet, for up to [`REPORT_EXIT_FOR`].
    fn report_exit(&self, job: &Job) {
        let (id, home) = (&job.id, job.home);
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < REPORT_EXIT_FOR {
            let addr = self.cluster.get().and_then(|c| (c.node_addr)(home));
            let result = match addr {
                Some(addr) => self.send_exit(job, addr),
                None => Err(Error::Other(format!(
                    "node {home} is not in the cluster table"
                ))),
            };
            match result {
                Ok(Ended::Recorded) => {
                    info!("jobs: job {id}: its end and output recorded on its home, node {home}");
                    return;
                }
                Ok(Ended::Stale) => {
                    info!("jobs: job {id}: node {home} does not need its end (it runs or ended there)");
                    return;
                }
                Ok(Ended::NotYet) => last = "the home has not recorded the move yet".into(),
                Err(e) => last = crate::console::chain(&e),
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        warn!(
            "jobs: job {id}: could not tell its home, node {home}, that it ended here in {} s: {last}",
            REPORT_EXIT_FOR.as_secs()
        );
    }

    /// One attempt of [`Engine::report_exit`] to the home at `addr`: the final record, then the
    /// output files whole.
    fn send_exit(&self, job: &Job, addr: Ipv4Addr) -> Result<Ended, Error> {
        let key = self
            .key
            .clone()
            .ok_or_else(|| Error::Other("this node has no cluster key".into()))?;
        let dir = self.job_dir(&job.id);
        let len = |n: &str| fs::metadata(dir.join(n)).map_or(0, |m| m.len());
        let offsets = Offsets {
            stdout: len("stdout"),
            stderr: len("stderr"),
        };
        let mut ch = proto::connect(BufStream(self.connect(addr)?), &key)?;
        let header = Header {
            job: job.clone(),
            offsets: offsets.clone(),
            from: self.me,
            kind: Kind::Exited,
        };
        send_header(&mut ch, &header)?;
        send_outputs_and_end(&mut ch, &dir, &offsets)?;
        match ch.recv()? {
            Msg::Restored(j) => {
                let v: serde_json::Value = serde_json::from_str(&j).unwrap_or_default();
                if v["ok"] != true {
                    return Err(Error::Refused(
                        v["error"].as_str().unwrap_or("refused").to_string(),
                    ));
                }
                serde_json::from_value(v["ended"].clone())
                    .map_err(|e| Error::Other(format!("bad answer {j}: {e}")))
            }
            m => Err(proto::Error::Unexpected(format!("{m:?}")).into()),
        }
    }

    /// Home side of [`Kind::Exited`]: the output arrives whole in `final-in/`; if this node's
    /// record is of the job away from here, the files replace the job's output and the
    /// record becomes `exited`, both under the table lock (a reader sees the old state with
    /// the old files, or the new with the new).
    fn take_exit(
        &self,
        ch: &mut proto::Channel<BufStream>,
        mut header: Header,
    ) -> Result<(), Error> {
        let id = header.job.id.clone();
        let dir = self.job_dir(&id);
        let incoming = dir.join("final-in");
        let _ = fs::remove_dir_all(&incoming);
        let received = self.receive_files(ch, &incoming, &incoming.join("img"), &mut header);
        let ended = received.and_then(|()| {
            let mut table = self.table();
            let state = table.get(&id).map(|j| j.state);
            if matches!(state, Ok(State::Moved | State::Lost)) {
                for name in ["stdout", "stderr"] {
                    let (from, to) = (incoming.join(name), dir.join(name));
                    fs::rename(&from, &to).map_err(file_err(&to))?;
                }
            }
            match table.ended_elsewhere(
                &id,
                header.job.node,
                header.job.migrations,
                header.job.exit_code,
                header.job.signal.clone(),
            ) {
                Ok(e) => Ok(e),
                Err(super::table::Error::NoSuchJob(_)) => Ok(Ended::Stale),
                Err(e) => Err(e.into()),
            }
        });
        let _ = fs::remove_dir_all(&incoming);
        let ended = ended?;
        if ended == Ended::Recorded {
            info!(
                "jobs: job {id} ended on node {} ({}); output kept here",
                header.job.node,
                match (header.job.exit_code, &header.job.signal) {
                    (Some(c), _) => format!("exit status {c}"),
                    (None, Some(s)) => format!("signal {s}"),
                    _ => "no status".into(),
                }
            );
        }
        ch.send(&Msg::Restored(
            serde_json::json!({"ok": true, "ended": ended}).to_string(),
        ))?;
        ch.flush().map_err(Into::into)
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Why job `id` (running here) cannot migrate now, if it cannot (see [`super::files`]).
    pub fn unmovable(&self, id: &str) -> Option<String> {
        let pid = self.table().get(id).ok()?.pid?;
        super::files::unmovable(pid, &self.job_dir(id))
    }

    /// Starts `cmd` as the init of a new PID namespace, in a session of its own, stdin from
    /// /dev/null, stdout and stderr appended to files under the job's directory.
    pub fn launch(&self, cmd: &[String]) -> Result<Job, Error> {
        self.launch_pinned(cmd, false)
    }

    /// [`Engine::launch`]; a pinned job is never moved by the balancer.
    pub fn launch_pinned(&self, cmd: &[String], pinned: bool) -> Result<Job, Error> {
        self.launch_with(cmd, pinned, &super::files::Start::default())
    }

    /// [`Engine::launch_pinned`] in a working directory (default: the cluster file area when
    /// the cluster has one) with extra environment variables (see [`super::files::Start`]).
    pub fn launch_with(
        &self,
        cmd: &[String],
        pinned: bool,
        start: &super::files::Start,
    ) -> Result<Job, Error> {
        let (program, args) = cmd.split_first().ok_or(Error::EmptyCommand)?;
        let cwd = start.cwd().map_err(Error::Other)?;
        let mut table = self.table();
        let root = self.root.clone();
        let id = table.next_id(self.me, |id| root.join(id).exists());
        let dir = self.job_dir(&id);
        make_private_dir(&dir).map_err(file_err(&dir))?;
        let out = open_output(&dir.join("stdout"))?;
        let err = open_output(&dir.join("stderr"))?;
        let (pid_r, pid_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::NoPid(e.into()))?;
        let w = pid_w.as_raw_fd();
        // Paths to open again inside the job's mount namespace (built here: no allocation
        // after the fork).
        let reopen = |p: &Path| {
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|e| Error::Other(format!("{}: {e}", p.display())))
        };
        let stdout_c = reopen(&dir.join("stdout"))?;
        let stderr_c = reopen(&dir.join("stderr"))?;
        let own_mount_ns = super::criu::OWN_MOUNT_NS;
        let mut command = Command::new(program);
        command.args(args).stdout(out).stderr(err).current_dir(&cwd);
        command.envs(start.env(&id, &cwd));
        // SAFETY: runs in the forked child before exec and calls only async-signal-safe
        // functions (unshare, mount, open, dup2, fork, setsid, write, close, _exit) on plain
        // integers, C strings made before the fork and a stack buffer. The middle process exits at once; its child, pid 1
        // of the new PID namespace, goes on to exec the command (std reports an exec failure
        // from there).
        unsafe {
            command.pre_exec(move || {
                let ns = if own_mount_ns {
                    libc::CLONE_NEWPID | libc::CLONE_NEWNS
                } else {
                    libc::CLONE_NEWPID
                };
                if libc::unshare(ns) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // A slave of the node's (shared) mounts: what the agent mounts later, e.g. the
                // cluster file area, reaches the job; nothing the job mounts leaks out.
                let root = c"/";
                if own_mount_ns
                    && libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_SLAVE | libc::MS_REC,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // stdin/stdout/stderr were opened on the node's mounts; CRIU can only dump
                // descriptors whose mount is in the job's namespace, so open them again here.
                let stdio = [
                    (c"/dev/null".as_ptr(), 0, libc::O_RDONLY),
                    (stdout_c.as_ptr(), 1, libc::O_WRONLY | libc::O_APPEND),
                    (stderr_c.as_ptr(), 2, libc::O_WRONLY | libc::O_APPEND),
                ];
                let reopened = if own_mount_ns { &stdio[..] } else { &[] };
                for &(path, fd, flags) in reopened {
                    let opened = libc::open(path, flags);
                    if opened < 0 || libc::dup2(opened, fd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(opened);
                }
                match libc::fork() {
                    -1 => Err(std::io::Error::last_os_error()),
                    0 => {
                        libc::setsid();
                        libc::close(w);
                        Ok(())
                    }
                    child => {
                        let bytes = child.to_ne_bytes();
                        libc::write(w, bytes.as_ptr().cast(), bytes.len());
                        libc::_exit(0)
                    }
                }
            });
        }
        let spawned = self
            .children
            .spawn(&mut command, false)
            .map_err(|source| Error::Spawn {
                program: program.clone(),
                source,
            })?;
        drop(command);
        drop(pid_w);
        let mut bytes = [0u8; 4];
        File::from(pid_r)
            .read_exact(&mut bytes)
            .map_err(Error::NoPid)?;
        let pid = i32::from_ne_bytes(bytes);
        // The middle process's status (always 0) is not needed.
        drop(spawned);
        let job = Job {
            id: id.clone(),
            cmd: cmd.to_vec(),
            home: self.me,
            node: self.me,
            state: State::Running,
            pid: Some(pid),
            exit_code: None,
            signal: None,
            started_ms: unix_ms(),
            migrations: 0,
            pinned,
            reason: None,
            checkpoint_every: None,
        };
        table.insert(job.clone())?;
        info!(
            "jobs: job {id} started, pid {pid}: {}",
            crate::children::shell_line(
                program,
                &args.iter().map(String::as_str).collect::<Vec<_>>()
            )
        );
        Ok(job)
    }

    /// SIGKILL to a job running here (frozen or not: SIGKILL ends stopped processes too).
    /// The root is the init of the job's PID namespace: its death takes every process of the
    /// namespace with it.
    pub fn kill(&self, id: &str) -> Result<Job, Error> {
        let job = self.table().get(id)?.clone();
        match (job.state, job.pid) {
            (State::Running | State::Migrating | State::Frozen, Some(pid)) => {
                signal(pid, Signal::SIGKILL)?
            }
            (state, _) => {
                return Err(super::table::Error::WrongState {
                    id: id.into(),
                    state,
                    wanted: "killed",
                }
                .into())
            }
        }
        Ok(job)
    }

    /// `drove freeze`: SIGSTOP to every process of the job (all of its PID namespace), state
    /// `frozen`. The table changes first, so the balancer never picks a job being frozen.
    pub fn freeze(&self, id: &str) -> Result<Job, Error> {
        let pid = self.table().freeze(id)?;
        let stopped = signal_tree(pid, Signal::SIGSTOP);
        if let Err(e) = stopped {
            let _ = self.table().thaw(id);
            return Err(e);
        }
        info!("jobs: job {id} frozen");
        Ok(self.table().get(id)?.clone())
    }

    /// `drove continue`: SIGCONT to every process of a frozen job, state `running`.
    pub fn thaw(&self, id: &str) -> Result<Job, Error> {
        let pid = self.table().thaw(id)?;
        signal_tree(pid, Signal::SIGCONT)?;
        info!("jobs: job {id} continued");
        Ok(self.table().get(id)?.clone())
    }

    /// Marks the jobs that moved from here to `node` lost, `reason` naming the node and why
    /// (its heartbeat stopped). Returns their ids.
    pub fn node_lost(&self, node: u32, why: &str) -> Vec<String> {
        let ids = self.table().node_lost(node, |id| {
            format!("node {node} {why} while running job {id}")
        });
        for id in &ids {
            warn!("jobs: job {id} lost: node {node} {why}");
        }
        ids
    }

    /// Up to `max` bytes of the job's `stream` (stdout or stderr) from `offset`.
    pub fn output(
        &self,
        id: &str,
        stream: &str,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>, Error> {
        self.table().get(id)?;
        let name = if stream == "stderr" {
            "stderr"
        } else {
            "stdout"
        };
        let path = self.job_dir(id).join(name);
        let data = fs::read(&path).map_err(file_err(&path))?;
        Ok(super::table::slice_from(&data, offset, max).to_vec())
    }

    /// Moves job `id` to node `to` at `addr`. Never leaves the job lost by choice: any failure
    /// before the target has restored it resumes the stopped copy here.
    pub fn migrate(&self, id: &str, to: u32, addr: Ipv4Addr, reason: &str) -> Migration {
        self.migrate_with(id, to, addr, reason, None)
    }

    /// [`Engine::migrate`]; `precopy`: pre-copy the memory (`Some(true)`), do not
    /// (`Some(false)`), or decide from the job's resident memory (`None`, see
    /// [`wants_precopy`]).
    pub fn migrate_with(
        &self,
        id: &str,
        to: u32,
        addr: Ipv4Addr,
        reason: &str,
        precopy: Option<bool>,
    ) -> Migration {
        let t0 = Instant::now();
        let mut rec = Migration {
            job: id.into(),
            from: self.me,
            to,
            reason: reason.into(),
            freeze_ms: 0,
            bytes: 0,
            total_ms: 0,
            outcome: Outcome::Resumed,
            error: None,
            at_ms: unix_ms(),
            precopy_rounds: 0,
            precopy_bytes: 0,
        };
        // Files only this node has would break the restore (or worse): refuse before any freeze.
        if let Some(why) = self.unmovable(id) {
            rec.error = Some(format!("refused: job {id} {why}"));
            warn!("jobs: migration of {id} to node {to} refused: {why}");
            self.table().migrations.push(rec.clone());
            return rec;
        }
        let pid = match self.table().begin_migration(id) {
            Ok(pid) => pid,
            Err(e) => {
                rec.error = Some(e.to_string());
                rec.outcome = Outcome::Resumed;
                return rec;
            }
        };
        let dir = self.job_dir(id);
        let images = dir.join("img-out");
        let mut sent = Sent::default();
        let precopy = wants_precopy(job_rss(pid), precopy);
        let result = self.send_job(id, pid, (to, addr), &images, precopy, &mut rec, &mut sent);
        if result.is_ok() || sent.killed {
            // The target restored it and our copy is gone: the job lives there.
            let _ = self.table().finish_migration(id, to);
            rec.outcome = Outcome::Moved;
            self.drop_checkpoint(id);
            self.hold_moved_images(id, to, &images, sent.offsets.as_ref());
        }
        let _ = fs::remove_dir_all(&images);
        remove_rounds(&dir);
        match result {
            Ok(()) => {}
            Err(e) if sent.killed => {
                rec.error = Some(format!("after the commit: {}", crate::console::chain(&e)));
            }
            Err(e) => {
                let resumed = signal(pid, Signal::SIGCONT);
                // One lock for both: the reaper settles a held exit only after the abort.
                let ended = {
                    let mut table = self.table();
                    let _ = table.abort_migration(id);
                    table.has_held_exit(pid)
                };
                rec.outcome = if resumed.is_ok() || ended {
                    Outcome::Resumed
                } else {
                    Outcome::Lost
                };
                rec.error = Some(crate::console::chain(&e));
                if ended {
                    warn!(
                        "jobs: migration of {id} to node {to} failed: the job ended while it was being dumped: {}",
                        crate::console::chain(&e)
                    );
                } else {
                    warn!(
                        "jobs: migration of {id} to node {to} failed, job resumed here: {}",
                        crate::console::chain(&e)
                    );
                }
            }
        }
        rec.freeze_ms = sent
            .frozen_at
            .map_or(0, |t: Instant| t.elapsed().as_millis() as u64);
        rec.total_ms = t0.elapsed().as_millis() as u64;
        info!(
            "jobs: migration job={id} from={} to={to} outcome={:?} freeze_ms={} bytes={} total_ms={} precopy_rounds={} precopy_bytes={}",
            self.me, rec.outcome, rec.freeze_ms, rec.bytes, rec.total_ms, rec.precopy_rounds, rec.precopy_bytes
        );
        self.table().migrations.push(rec.clone());
        rec
    }

    #[allow(clippy::too_many_arguments)]
    fn send_job(
        &self,
        id: &str,
        pid: i32,
        (to, addr): (u32, Ipv4Addr),
        images: &Path,
        precopy: bool,
        rec: &mut Migration,
        sent: &mut Sent,
    ) -> Result<(), Error> {
        let key = self
            .key
            .clone()
            .ok_or_else(|| Error::Other("this node has no cluster key".into()))?;
        let dir = self.job_dir(id);
        // Connect and authenticate before freezing: an unreachable target costs no freeze.
        let stream = self.connect(addr)?;
        let _watch = self.watch_transfer(to, &stream);
        let mut ch = proto::connect(BufStream(stream), &key)?;
        let header = |offsets: Offsets| -> Result<Msg, Error> {
            let job = self.table().get(id)?.clone();
            let h = Header {
                job,
                offsets,
                from: self.me,
                kind: Kind::Migrate,
            };
            Ok(Msg::Header(
                serde_json::to_string(&h).map_err(|e| Error::Other(e.to_string()))?,
            ))
        };
        let len = |n: &str| fs::metadata(dir.join(n)).map_or(0, |m| m.len());
        let mut last_round = None;
        if precopy {
            // The header goes first so the target takes the rounds while the job runs on
            // here; the final one (after the dump) carries the output lengths.
            ch.send(&header(Offsets::default())?)?;
            last_round = self.precopy(id, pid, &mut ch, rec)?;
        }
        let _ = fs::remove_dir_all(images);
        make_private_dir(images).map_err(file_err(images))?;
        sent.frozen_at = Some(Instant::now());
        let log = dir.join("dump.log");
        let args = match last_round {
            Some(n) => criu::final_dump_args(pid, images, &format!("../pre-{n}"), &log),
            None => criu::dump_args(pid, images, &log),
        };
        criu::run(&self.children, &args, &log, CRIU_TIMEOUT)?;
        // The job's writes to the file area must be on the server before the target opens them.
        crate::cluster_fs::flush().map_err(Error::Other)?;
        let offsets = Offsets {
            stdout: len("stdout"),
            stderr: len("stderr"),
        };
        sent.offsets = Some(offsets.clone());
        ch.send(&header(offsets)?)?;
        let mut files = image_files(images)?;
        files.push(("out/stdout".into(), dir.join("stdout")));
        files.push(("out/stderr".into(), dir.join("stderr")));
        for (name, path) in files {
            rec.bytes += send_file(&mut ch, &name, &path, None)?;
        }
        ch.send(&Msg::End)?;
        ch.flush()?;
        // The target now runs `criu restore`, which may take minutes for a large job under
        // TCG: wait that long for its answer (a dead target is still noticed within
        // PEER_DEAD by keepalive).
        ch.get_ref()
            .0
            .set_read_timeout(Some(CRIU_TIMEOUT + NET_TIMEOUT))
            .ok();
        expect_ok(ch.recv()?)?;
        ch.get_ref().0.set_read_timeout(Some(NET_TIMEOUT)).ok();
        // Point of no return: the target holds a restored, stopped copy.
        signal(pid, Signal::SIGKILL)?;
        sent.killed = true;
        ch.send(&Msg::Commit)?;
        ch.flush()?;
        match ch.recv()? {
            Msg::Commit => Ok(()),
            m => Err(proto::Error::Unexpected(format!("{m:?}")).into()),
        }
        .inspect(|_| info!("jobs: job {id} now runs on node {to}"))
    }

    /// Pre-copy: `criu pre-dump --track-mem` rounds while the job runs, each streamed to the
    /// target as soon as CRIU has written it (as `pre/<round>/<file>`), until a round is
    /// small or no longer shrinking (see [`another_round`]). Returns the last round written,
    /// `None` when not even the first worked (then the final dump is a plain full one).
    fn precopy(
        &self,
        id: &str,
        pid: i32,
        ch: &mut proto::Channel<BufStream>,
        rec: &mut Migration,
    ) -> Result<Option<u32>, Error> {
        let dir = self.job_dir(id);
        let mut previous: Option<u64> = None;
        let mut last = None;
        for n in 1..=PRECOPY_MAX_ROUNDS {
            let round = dir.join(format!("pre-{n}"));
            let _ = fs::remove_dir_all(&round);
            make_private_dir(&round).map_err(file_err(&round))?;
            let log = dir.join(format!("pre-{n}.log"));
            let prev = last.map(|p| format!("../pre-{p}"));
            let args = criu::pre_dump_args(pid, &round, prev.as_deref(), &log);
            if let Err(e) = criu::run(&self.children, &args, &log, CRIU_TIMEOUT) {
                // Nothing of this round was sent: go on with what the target has (a failed
                // pre-dump leaves the job running).
                warn!("jobs: pre-copy of job {id}, round {n}: {e}; final dump now");
                let _ = fs::remove_dir_all(&round);
                break;
            }
            let pages = pages_size(&round);
            for (name, path) in image_files(&round)? {
                let name = name.replacen("img/", &format!("pre/{n}/"), 1);
                let sent = send_file(ch, &name, &path, None)?;
                rec.bytes += sent;
                rec.precopy_bytes += sent;
            }
            rec.precopy_rounds = n;
            last = Some(n);
            info!("jobs: pre-copy of job {id}, round {n}: {pages} bytes of pages sent");
            if !another_round(previous, pages) {
                break;
            }
            previous = Some(pages);
        }
        Ok(last)
    }

    /// Registers the socket of a transfer to `to`; the guard forgets it.
    fn watch_transfer(&self, to: u32, stream: &TcpStream) -> TransferGuard<'_> {
        let serial = self
            .transfer_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(handle) = stream.try_clone() {
            self.transfers().push((serial, to, handle));
        }
        TransferGuard {
            engine: self,
            serial,
        }
    }

    fn transfers(&self) -> MutexGuard<'_, Vec<(u64, u32, TcpStream)>> {
        self.transfers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The membership says node `node` is down: cut the transfers in flight to it, so that a
    /// job frozen for them resumes here now rather than when TCP gives up. Before the target
    /// confirmed the restore this resumes the job here; after, the move stands (and the job is
    /// reported lost with the node).
    pub fn peer_down(&self, node: u32) {
        for (_, to, stream) in self.transfers().iter().filter(|t| t.1 == node) {
            warn!("jobs: node {to} is down: cutting the migration in flight to it");
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn checkpointed(
        &self,
    ) -> MutexGuard<'_, std::collections::BTreeMap<String, (u32, Ipv4Addr, Instant)>> {
        self.checkpointed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Jobs running here whose checkpoint is due (`checkpoint_every` since the last one, or
    /// since the job started or arrived here).
    pub fn checkpoints_due(&self) -> Vec<Job> {
        let sent = self.checkpointed().clone();
        let now = unix_ms();
        self.table()
            .list()
            .into_iter()
            .filter(|j| j.state == State::Running && j.node == self.me)
            .filter(|j| {
                let Some(every) = j.checkpoint_every else {
                    return false;
                };
                let since = match sent.get(&j.id) {
                    Some((_, _, at)) => at.elapsed().as_millis() as u64,
                    None => now.saturating_sub(j.started_ms),
                };
                since >= every.saturating_mul(1000)
            })
            .collect()
    }

    /// Checkpoints job `id` (running here) to node `holder` at `addr`: `criu dump
    /// --leave-stopped`, the output lengths read while it is stopped, SIGCONT, then the
    /// images and the output files up to those lengths are streamed to the holder, which keeps
    /// them (0600 root) in place of the previous checkpoint. The job is stopped for the dump only.
    pub fn checkpoint(&self, id: &str, holder: u32, addr: Ipv4Addr) -> Result<u64, Error> {
        let key = self
            .key
            .clone()
            .ok_or_else(|| Error::Other("this node has no cluster key".into()))?;
        let stream = self.connect(addr)?;
        let mut ch = proto::connect(BufStream(stream), &key)?;
        let pid = self.table().begin_migration(id)?;
        let dir = self.job_dir(id);
        let images = dir.join("img-ckpt");
        let t0 = Instant::now();
        let dumped = (|| {
            let _ = fs::remove_dir_all(&images);
            make_private_dir(&images).map_err(file_err(&images))?;
            criu::run(
                &self.children,
                &criu::dump_args(pid, &images, &dir.join("checkpoint.log")),
                &dir.join("checkpoint.log"),
                CRIU_TIMEOUT,
            )?;
            let len = |n: &str| fs::metadata(dir.join(n)).map_or(0, |m| m.len());
            Ok::<_, Error>(Offsets {
                stdout: len("stdout"),
                stderr: len("stderr"),
            })
        })();
        // Resume at once, whatever happened: the output files only grow, so their first
        // `offsets` bytes are what they were at the dump.
        let resumed = signal_tree(pid, Signal::SIGCONT);
        let _ = self.table().abort_migration(id);
        let freeze_ms = t0.elapsed().as_millis();
        let sent = dumped.and_then(|offsets| {
            resumed?;
            let job = self.table().get(id)?.clone();
            let header = Header {
                job,
                offsets: offsets.clone(),
                from: self.me,
                kind: Kind::Checkpoint,
            };
            send_header(&mut ch, &header)?;
            let mut bytes = 0;
            for (name, path) in image_files(&images)? {
                bytes += send_file(&mut ch, &name, &path, None)?;
            }
            bytes += send_outputs_and_end(&mut ch, &dir, &offsets)?;
            expect_ok(ch.recv()?)?;
            Ok(bytes)
        });
        let _ = fs::remove_dir_all(&images);
        let bytes = sent?;
        self.checkpoint_kept(id, holder, addr);
        info!("jobs: checkpoint of job {id} kept on node {holder}: {bytes} bytes, stopped {freeze_ms} ms");
        Ok(bytes)
    }

    /// Tells the node holding job `id`'s checkpoint to delete it: the job ended here, or it
    /// moved away. A checkpoint taken here guards this node only (its holder restarts the job
    /// when this node dies), so after a move it would restart a second copy of a job that runs
    /// on elsewhere; what guards the job after a move is [`Engine::hold_moved_images`].
    fn drop_checkpoint(&self, id: &str) {
        if let Some((holder, addr, _)) = self.checkpointed().remove(id) {
            self.send_drop(id, holder, addr);
        }
    }

    /// Records that node `holder` at `addr` now keeps job `id`'s checkpoint (a checkpoint of
    /// it just reached it, or it arrived here from `holder`, which keeps its migration images).
    /// A different node kept the one before, which now guards nothing: it is dropped there.
    fn checkpoint_kept(&self, id: &str, holder: u32, addr: Ipv4Addr) {
        let before = self
            .checkpointed()
            .insert(id.to_owned(), (holder, addr, Instant::now()));
        if let Some((old, old_addr, _)) = before.filter(|b| b.0 != holder) {
            self.send_drop(id, old, old_addr);
        }
    }

    /// Asks node `holder` at `addr`, in the background, to delete the checkpoint of job `id`
    /// that came from this node (`Kind::Drop`).
    fn send_drop(&self, id: &str, holder: u32, addr: Ipv4Addr) {
        let Some(job) = self.table().get(id).ok().cloned() else {
            return;
        };
        let (Some(key), me, port) = (self.key.clone(), self.me, self.port) else {
            return;
        };
        let id = id.to_owned();
        let _ = std::thread::Builder::new()
            .name("checkpoint-drop".into())
            .spawn(move || {
                let result = (|| {
                    let stream = TcpStream::connect_timeout(
                        &SocketAddr::from((addr, port)),
                        Duration::from_secs(5),
                    )
                    .map_err(|e| Error::Other(e.to_string()))?;
                    stream.set_read_timeout(Some(NET_TIMEOUT)).ok();
                    let mut ch = proto::connect(BufStream(stream), &key)?;
                    let header = Header {
                        job,
                        offsets: Offsets::default(),
                        from: me,
                        kind: Kind::Drop,
                    };
                    send_header(&mut ch, &header)?;
                    expect_ok(ch.recv()?)
                })();
                match result {
                    Ok(()) => info!("jobs: checkpoint of job {id} dropped on node {holder}"),
                    Err(e) => warn!(
                        "jobs: cannot drop the checkpoint of job {id} on node {holder}: {}",
                        crate::console::chain(&e)
                    ),
                }
            });
    }

    /// Job `id`, which takes checkpoints, just moved from here to node `to`: the images of
    /// the move (with its pre-copy rounds) and the output up to `offsets` become the
    /// checkpoint held here for it, as if `to` had sent it. Until `to`'s own first checkpoint
    /// reaches its holder (`checkpoint_every` after the arrival; `to` then drops this one),
    /// nothing else could restart the job if `to` died: the checkpoint this node sent before
    /// guarded this node only and is dropped on the move. Costs this node the images' memory
    /// for that long. A failure is logged: the job then has no checkpoint until `to`'s first.
    fn hold_moved_images(&self, id: &str, to: u32, images: &Path, offsets: Option<&Offsets>) {
        let Ok(job) = self.table().get(id).cloned() else {
            return;
        };
        let (true, Some(offsets)) = (job.checkpoint_every.is_some(), offsets) else {
            return;
        };
        let base = self.checkpoint_root.join(id);
        let current = base.join("current");
        let kept = (|| {
            make_private_dir(&self.checkpoint_root).map_err(file_err(&self.checkpoint_root))?;
            make_private_dir(&base).map_err(file_err(&base))?;
            let _ = fs::remove_dir_all(&current);
            make_private_dir(&current).map_err(file_err(&current))?;
            // Same file system (/run): renames, not copies. The final dump's `parent` link
            // (`../pre-N`) finds the rounds beside it again.
            let img = current.join("img");
            fs::rename(images, &img).map_err(file_err(&img))?;
            let dir = self.job_dir(id);
            for n in 1..=PRECOPY_MAX_ROUNDS {
                let round = dir.join(format!("pre-{n}"));
                if round.is_dir() {
                    let to = current.join(format!("pre-{n}"));
                    fs::rename(&round, &to).map_err(file_err(&to))?;
                }
            }
            for (name, len) in [("stdout", offsets.stdout), ("stderr", offsets.stderr)] {
                let (from, to) = (dir.join(name), current.join(name));
                let mut src = File::open(&from).map_err(file_err(&from))?;
                let mut dst = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&to)
                    .map_err(file_err(&to))?;
                std::io::copy(&mut (&mut src).take(len), &mut dst).map_err(file_err(&to))?;
            }
            Ok::<_, Error>(dir_size(&current))
        })();
        match kept {
            Ok(bytes) => {
                self.table().checkpoints.insert(
                    id.to_owned(),
                    super::table::Held {
                        job,
                        from: to,
                        at_ms: unix_ms(),
                        offsets: offsets.clone(),
                        bytes,
                    },
                );
                info!("jobs: holding the images of job {id}'s move to node {to} as its checkpoint ({bytes} bytes)");
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&base);
                warn!(
                    "jobs: cannot keep the images of job {id}'s move to node {to} as its checkpoint: {}",
                    crate::console::chain(&e)
                );
            }
        }
    }

    /// Restarts from the checkpoints held here the jobs whose node, `node`, died. Returns the
    /// ids restarted; a failed restart is logged and left to be reported lost.
    pub fn restart_from_checkpoints(&self, node: u32, why: &str) -> Vec<String> {
        let held = self.table().restartable(node);
        let mut ids = Vec::new();
        for h in held {
            let id = h.job.id.clone();
            match self.restore_checkpoint(&h, &format!("node {node} {why}")) {
                Ok(pid) => {
                    info!(
                        "jobs: job {id} restarted here from its checkpoint (pid {pid}): node {node} {why}"
                    );
                    ids.push(id);
                }
                Err(e) => warn!(
                    "jobs: cannot restart job {id} from its checkpoint: {}",
                    crate::console::chain(&e)
                ),
            }
        }
        ids
    }

    fn restore_checkpoint(&self, h: &super::table::Held, why: &str) -> Result<i32, Error> {
        let id = &h.job.id;
        let current = self.checkpoint_root.join(id).join("current");
        let dir = self.job_dir(id);
        make_private_dir(&dir).map_err(file_err(&dir))?;
        // The output files as they were at the checkpoint: CRIU checks their size, and the
        // restarted job appends from there.
        for name in ["stdout", "stderr"] {
            let (from, to) = (current.join(name), dir.join(name));
            fs::copy(&from, &to).map_err(file_err(&from))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).map_err(file_err(&to))?;
        }
        let pidfile = dir.join("restore.pid");
        let _ = fs::remove_file(&pidfile);
        let log = dir.join("restore.log");
        criu::run(
            &self.children,
            &criu::restore_args(&current.join("img"), &pidfile, &log),
            &log,
            CRIU_TIMEOUT,
        )?;
        let text = fs::read_to_string(&pidfile).map_err(file_err(&pidfile))?;
        let pid = text
            .trim()
            .parse::<i32>()
            .map_err(|e| Error::Other(format!("{}: {e}", pidfile.display())))?;
        let mut job = h.job.clone();
        job.state = State::Running;
        job.pid = Some(pid);
        job.node = self.me;
        job.reason = Some(format!(
            "restarted on node {} from its checkpoint of {} ms before: {why}",
            self.me,
            unix_ms().saturating_sub(h.at_ms)
        ));
        {
            let mut table = self.table();
            table.insert(job)?;
            table.checkpoints.remove(id);
        }
        signal_tree(pid, Signal::SIGCONT)?;
        let _ = fs::remove_dir_all(self.checkpoint_root.join(id));
        Ok(pid)
    }

    /// A connection to `addr`'s migration port, with the timeouts every transfer uses.
    fn connect(&self, addr: Ipv4Addr) -> Result<TcpStream, Error> {
        let target = SocketAddr::from((addr, self.port));
        let stream =
            TcpStream::connect_timeout(&target, Duration::from_secs(5)).map_err(|source| {
                Error::Connect {
                    addr: target,
                    source,
                }
            })?;
        tune(&stream);
        Ok(stream)
    }

    /// Target side of a checkpoint (`Kind::Checkpoint`) or its removal (`Kind::Drop`).
    fn keep_checkpoint(
        &self,
        ch: &mut proto::Channel<BufStream>,
        header: Header,
    ) -> Result<(), Error> {
        let id = header.job.id.clone();
        let base = self.checkpoint_root.join(&id);
        if header.kind == Kind::Drop {
            // Only the sender's own checkpoint: after a move, the job's new node may already
            // have sent a newer one here (the drop from its old node races with it).
            let mut table = self.table();
            let theirs = table
                .checkpoints
                .get(&id)
                .is_some_and(|h| h.from == header.from);
            if theirs {
                table.checkpoints.remove(&id);
                let _ = fs::remove_dir_all(&base);
            }
            drop(table);
            ch.send(&Msg::Restored(serde_json::json!({"ok": true}).to_string()))?;
            return ch.flush().map_err(Into::into);
        }
        make_private_dir(&self.checkpoint_root).map_err(file_err(&self.checkpoint_root))?;
        make_private_dir(&base).map_err(file_err(&base))?;
        let incoming = base.join("incoming");
        let _ = fs::remove_dir_all(&incoming);
        let mut header = header;
        let received = self.receive_files(ch, &incoming, &incoming.join("img"), &mut header);
        if let Err(e) = received {
            let _ = fs::remove_dir_all(&incoming);
            return Err(e);
        }
        let current = base.join("current");
        let _ = fs::remove_dir_all(&current);
        fs::rename(&incoming, &current).map_err(file_err(&current))?;
        let bytes = dir_size(&current);
        self.table().checkpoints.insert(
            id.clone(),
            super::table::Held {
                job: header.job,
                from: header.from,
                at_ms: unix_ms(),
                offsets: header.offsets,
                bytes,
            },
        );
        ch.send(&Msg::Restored(serde_json::json!({"ok": true}).to_string()))?;
        ch.flush()?;
        info!(
            "jobs: holding the checkpoint of job {id} from node {} ({bytes} bytes)",
            header.from
        );
        Ok(())
    }

    /// Target side of one migration connection.
    fn receive(&self, stream: TcpStream) {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tune(&stream);
        let Some(key) = self.key.clone() else { return };
        let mut ch = match proto::accept(BufStream(stream), &key) {
            Ok(ch) => ch,
            Err(e) => {
                warn!("jobs: migration connection from {peer} refused: {e}");
                return;
            }
        };
        let mut job_id = None;
        let source = match peer.parse::<SocketAddr>().map(|a| a.ip()) {
            Ok(std::net::IpAddr::V4(ip)) => Some(ip),
            _ => None,
        };
        let result = self.take_job(&mut ch, &mut job_id, source);
        if let Err(e) = result {
            let text = crate::console::chain(&e);
            warn!("jobs: incoming migration from {peer} failed: {text}");
            let _ = ch.send(&Msg::Restored(
                serde_json::json!({"ok": false, "error": text}).to_string(),
            ));
            if let Some(id) = job_id {
                let arrived = self.table().get(&id).map(|j| (j.state, j.pid));
                if let Ok((State::Arriving, Some(pid))) = arrived {
                    match (&e, peer.parse::<SocketAddr>()) {
                        (Error::NoCommit { from, .. }, Ok(addr)) => {
                            self.ask_owner(&id, pid, *from, addr.ip());
                        }
                        _ => {
                            let _ = signal(pid, Signal::SIGKILL);
                            self.table().forget(&id);
                        }
                    }
                }
            }
        }
    }

    /// The loss window: we restored job `id` (stopped, `arriving`) and the connection died
    /// before the commit. The source may or may not have killed its copy; it records which
    /// (`moved` to us, or `running` again). Keep ours stopped and ask the source's API until
    /// it says, then run or drop ours; after [`ASK_OWNER_FOR`] without an answer, drop it.
    fn ask_owner(&self, id: &str, pid: i32, from: u32, ip: std::net::IpAddr) {
        warn!("jobs: job {id}: no commit from node {from}; keeping the restored copy stopped and asking node {from}");
        let api = SocketAddr::new(ip, self.port.wrapping_sub(1));
        let t0 = Instant::now();
        loop {
            let answer = get_json(api, &format!("/api/jobs/{id}"));
            let verdict = owner_verdict(answer.as_ref().map(|(s, v)| (*s, v)), self.me);
            match verdict {
                Verdict::Resume => {
                    let resumed = signal(pid, Signal::SIGCONT).and_then(|()| {
                        let mut table = self.table();
                        table.arrived(id)?;
                        Ok(table.get(id)?.checkpoint_every)
                    });
                    // As after a commit: the source holds the move's images as a checkpoint.
                    if let (Ok(Some(_)), std::net::IpAddr::V4(addr)) = (&resumed, ip) {
                        self.checkpoint_kept(id, from, addr);
                    }
                    match resumed {
                        Ok(_) => info!(
                            "jobs: job {id}: node {from} says it moved here; resumed (pid {pid})"
                        ),
                        Err(e) => warn!("jobs: job {id}: cannot resume the restored copy: {e}"),
                    }
                    return;
                }
                Verdict::Drop => {
                    info!("jobs: job {id}: node {from} still owns it; restored copy dropped");
                    break;
                }
                Verdict::Ask if t0.elapsed() > ASK_OWNER_FOR => {
                    warn!("jobs: job {id}: node {from} gave no answer in {} s; restored copy dropped (the job may be lost)", ASK_OWNER_FOR.as_secs());
                    break;
                }
                Verdict::Ask => std::thread::sleep(Duration::from_secs(2)),
            }
        }
        let _ = signal(pid, Signal::SIGKILL);
        self.table().forget(id);
    }

    /// Target side of a transfer from the node at `source`.
    fn take_job(
        &self,
        ch: &mut proto::Channel<BufStream>,
        job_id: &mut Option<String>,
        source: Option<Ipv4Addr>,
    ) -> Result<(), Error> {
        let mut header: Header = match ch.recv()? {
            Msg::Header(j) => {
                serde_json::from_str(&j).map_err(|e| Error::Other(format!("bad header: {e}")))?
            }
            m => return Err(proto::Error::Unexpected(format!("{m:?}")).into()),
        };
        let id = header.job.id.clone();
        if !proto::safe_name(&id) || id.contains('/') {
            return Err(Error::Other(format!("bad job id {id:?}")));
        }
        match header.kind {
            Kind::Migrate => {}
            Kind::Exited => return self.take_exit(ch, header),
            Kind::Checkpoint | Kind::Drop => return self.keep_checkpoint(ch, header),
        }
        // Locked (`drove lock`): no guests. The source checks the gossiped lock first; this is
        // for a lock newer than its table.
        if header.job.home != self.me && self.refuses_guests() {
            return Err(Error::Other(guest_refusal(self.me)));
        }
        // The job comes to run here: a checkpoint of it held here is of no use any more.
        if self.table().checkpoints.remove(&id).is_some() {
            let _ = fs::remove_dir_all(self.checkpoint_root.join(&id));
        }
        info!("jobs: receiving job {id} from node {}", header.from);
        if let Ok(j) = self.table().get(&id) {
            if !j.state.is_final() {
                return Err(super::table::Error::Exists(id).into());
            }
        }
        // Restored without the area, a job would find an empty /cluster and write there.
        super::files::can_host().map_err(Error::Other)?;
        let dir = self.job_dir(&id);
        let images = dir.join("img-in");
        let result = self
            .receive_files(ch, &dir, &images, &mut header)
            .and_then(|()| {
                let pidfile = dir.join("restore.pid");
                let _ = fs::remove_file(&pidfile);
                let log = dir.join("restore.log");
                criu::run(
                    &self.children,
                    &criu::restore_args(&images, &pidfile, &log),
                    &log,
                    CRIU_TIMEOUT,
                )?;
                let text = fs::read_to_string(&pidfile).map_err(file_err(&pidfile))?;
                text.trim()
                    .parse::<i32>()
                    .map_err(|e| Error::Other(format!("{}: {e}", pidfile.display())))
            });
        let _ = fs::remove_dir_all(&images);
        remove_rounds(&dir);
        let pid = result?;
        let mut job = header.job;
        job.state = State::Arriving;
        job.pid = Some(pid);
        job.node = self.me;
        job.migrations += 1;
        self.table().insert(job)?;
        *job_id = Some(id.clone());
        ch.send(&Msg::Restored(
            serde_json::json!({"ok": true, "pid": pid}).to_string(),
        ))?;
        ch.flush()?;
        match ch.recv() {
            Ok(Msg::Commit) => {}
            Ok(m) => {
                return Err(proto::Error::Unexpected(format!("{m:?} instead of the commit")).into())
            }
            // The connection died: the source may have killed its copy already.
            Err(source) => {
                return Err(Error::NoCommit {
                    from: header.from,
                    source,
                })
            }
        }
        signal(pid, Signal::SIGCONT)?;
        let every = {
            let mut table = self.table();
            table.arrived(&id)?;
            table.get(&id)?.checkpoint_every
        };
        // The source keeps the images of this move as the job's checkpoint
        // ([`Engine::hold_moved_images`]) until our first one reaches its holder, which is due
        // `checkpoint_every` from now.
        if let (Some(_), Some(addr)) = (every, source) {
            self.checkpoint_kept(&id, header.from, addr);
        }
        ch.send(&Msg::Commit)?;
        ch.flush()?;
        info!(
            "jobs: job {id} arrived from node {}, pid {pid}",
            header.from
        );
        Ok(())
    }

    fn receive_files(
        &self,
        ch: &mut proto::Channel<BufStream>,
        dir: &Path,
        images: &Path,
        header: &mut Header,
    ) -> Result<(), Error> {
        make_private_dir(dir).map_err(file_err(dir))?;
        let _ = fs::remove_dir_all(images);
        make_private_dir(images).map_err(file_err(images))?;
        remove_rounds(dir);
        // Pre-copy rounds received (`pre/<n>/…` files, n = 1, 2, … in order).
        let mut rounds = 0u32;
        loop {
            let (name, size) = match ch.recv()? {
                Msg::File { name, size, .. } => (name, size),
                // After pre-copy rounds, the header again: the job and its output lengths
                // as of the final dump.
                Msg::Header(j) => {
                    let h: Header = serde_json::from_str(&j)
                        .map_err(|e| Error::Other(format!("bad header: {e}")))?;
                    if h.job.id != header.job.id || h.kind != header.kind {
                        return Err(Error::Other(format!(
                            "header for job {} inside the transfer of job {}",
                            h.job.id, header.job.id
                        )));
                    }
                    *header = h;
                    continue;
                }
                Msg::End => break,
                m => return Err(proto::Error::Unexpected(format!("{m:?}")).into()),
            };
            let path = match file_place(&name, rounds) {
                Some(Place::Image(f)) => images.join(f),
                Some(Place::Output(s)) => dir.join(s),
                Some(Place::Round(n, f)) => {
                    let round = dir.join(format!("pre-{n}"));
                    if n > rounds {
                        make_private_dir(&round).map_err(file_err(&round))?;
                        if n > 1 {
                            link_parent(&round, n - 1)?;
                        }
                        rounds = n;
                    }
                    round.join(f)
                }
                None => return Err(Error::Other(format!("unexpected file {name:?}"))),
            };
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .map_err(file_err(&path))?;
            let mut got = 0u64;
            while got < size {
                match ch.recv()? {
                    Msg::Data(d) => {
                        got += d.len() as u64;
                        f.write_all(&d).map_err(file_err(&path))?;
                    }
                    m => {
                        return Err(proto::Error::Unexpected(format!("{m:?} inside {name}")).into())
                    }
                }
            }
            if got != size {
                return Err(Error::Other(format!(
                    "{name}: {got} bytes, announced {size}"
                )));
            }
        }
        if rounds > 0 {
            // CRIU finds the pages of earlier rounds through `parent` links.
            link_parent(images, rounds)?;
        }
        let len = |n: &str| fs::metadata(dir.join(n)).map_or(0, |m| m.len());
        let bad = header.offsets.mismatches(len("stdout"), len("stderr"));
        if !bad.is_empty() {
            return Err(Error::Other(bad.join("; ")));
        }
        Ok(())
    }
}

/// Why a locked node takes no guest job (the same words wherever the refusal is made).
pub fn guest_refusal(node: u32) -> String {
    format!("node {node} refuses guest jobs (locked with `drove lock`; `drove unlock {node}` to let them in)")
}

/// How far the source side of a migration got ([`Engine::send_job`]).
#[derive(Default)]
struct Sent {
    /// When the final dump began (the job has been stopped since).
    frozen_at: Option<Instant>,
    /// The output lengths sent with the final dump.
    offsets: Option<Offsets>,
    /// The target restored the job and our stopped copy was killed: the job lives there.
    killed: bool,
}

/// Guard of a registered transfer socket ([`Engine::watch_transfer`]).
struct TransferGuard<'a> {
    engine: &'a Engine,
    serial: u64,
}

impl Drop for TransferGuard<'_> {
    fn drop(&mut self) {
        self.engine.transfers().retain(|t| t.0 != self.serial);
    }
}

/// Socket options of every transfer connection: no Nagle delay, and a dead peer noticed within
/// [`PEER_DEAD`] whether we are sending (unacknowledged data: `TCP_USER_TIMEOUT`) or waiting
/// (keepalive probes, whose failure `TCP_USER_TIMEOUT` also bounds). The read and write
/// timeouts stay as the backstop for a live kernel under a hung agent.
fn tune(stream: &TcpStream) {
    stream.set_read_timeout(Some(NET_TIMEOUT)).ok();
    stream.set_write_timeout(Some(NET_TIMEOUT)).ok();
    let _ = stream.set_nodelay(true);
    if let Err(e) = notice_dead_peer(stream) {
        warn!("jobs: cannot set keepalive on a migration connection ({e}): a dead peer is noticed after {} s only", NET_TIMEOUT.as_secs());
    }
}

/// Keepalive probes and `TCP_USER_TIMEOUT` on a connection to another node, so that a peer
/// that dies while we wait for its answer fails the connection within [`PEER_DEAD`].
pub(crate) fn notice_dead_peer(stream: &impl std::os::fd::AsFd) -> nix::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    setsockopt(stream, sockopt::KeepAlive, &true)?;
    setsockopt(stream, sockopt::TcpKeepIdle, &secs(KEEPALIVE_IDLE))?;
    setsockopt(stream, sockopt::TcpKeepInterval, &secs(KEEPALIVE_INTERVAL))?;
    setsockopt(stream, sockopt::TcpKeepCount, &4)?;
    setsockopt(
        stream,
        sockopt::TcpUserTimeout,
        &u32::try_from(PEER_DEAD.as_millis()).unwrap_or(u32::MAX),
    )
}

/// Whether to pre-copy a job using `rss` bytes: as asked, else when it is large.
pub fn wants_precopy(rss: u64, asked: Option<bool>) -> bool {
    asked.unwrap_or(rss >= PRECOPY_MIN_BYTES)
}

/// After a pre-dump round wrote `pages` bytes (the round before: `previous`), whether one
/// more round is worth it: not when this one was small already (the final dump will be short)
/// nor when the dirty set stopped shrinking (by at least a fifth: the job dirties memory as
/// fast as it is copied, more rounds only add work).
pub fn another_round(previous: Option<u64>, pages: u64) -> bool {
    if pages < PRECOPY_SMALL_BYTES {
        return false;
    }
    previous.is_none_or(|p| pages.saturating_mul(5) < p.saturating_mul(4))
}

/// Resident memory of the job rooted at `pid` (all of its PID namespace), in bytes.
fn job_rss(pid: i32) -> u64 {
    // SAFETY: sysconf takes an integer and touches no memory.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    job_pids(pid)
        .iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/statm")).ok())
        .filter_map(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * page
}

/// Bytes of page data CRIU wrote into an image directory (`pages-*.img`).
fn pages_size(images: &Path) -> u64 {
    fs::read_dir(images)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Where a received file goes.
#[derive(Debug, PartialEq, Eq)]
enum Place<'a> {
    /// `img/<file>`: the final dump's images.
    Image(&'a str),
    /// `out/stdout|stderr`.
    Output(&'a str),
    /// `pre/<n>/<file>`: pre-copy round n (1, 2, … in order: at most one beyond `rounds`).
    Round(u32, &'a str),
}

fn file_place(name: &str, rounds: u32) -> Option<Place<'_>> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["img", f] if *f != "parent" => Some(Place::Image(f)),
        ["out", s @ ("stdout" | "stderr")] => Some(Place::Output(s)),
        ["pre", n, f] if *f != "parent" => {
            let n: u32 = n.parse().ok()?;
            (n >= 1 && n >= rounds && n <= rounds + 1 && n <= PRECOPY_MAX_ROUNDS)
                .then_some(Place::Round(n, f))
        }
        _ => None,
    }
}

/// `dir/parent` → `../pre-<n>`, as CRIU's `--prev-images-dir` made it on the source.
fn link_parent(dir: &Path, n: u32) -> Result<(), Error> {
    let link = dir.join("parent");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("../pre-{n}"), &link).map_err(file_err(&link))
}

/// Removes the pre-copy round directories (`pre-<n>`) under a job's directory.
fn remove_rounds(dir: &Path) {
    for n in 1..=PRECOPY_MAX_ROUNDS {
        let _ = fs::remove_dir_all(dir.join(format!("pre-{n}")));
    }
}

/// `GET path` on the agent API at `addr` (HTTP/1.0): status and JSON body, `None` when the
/// agent does not answer.
pub(crate) fn get_json(addr: SocketAddr, path: &str) -> Option<(u16, serde_json::Value)> {
    api_request(addr, "GET", path, None)
}

/// `method path` without a body on the agent API at `addr` (HTTP/1.0), with the cluster key
/// as bearer token when given: status and JSON body (null when not JSON), `None` when the
/// agent does not answer.
pub(crate) fn api_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> Option<(u16, serde_json::Value)> {
    api_request_within(
        addr,
        method,
        path,
        bearer,
        (Duration::from_secs(5), Duration::from_secs(10)),
    )
}

/// [`get_json`] with a tighter bound: `limit` to connect and for each read or write.
pub(crate) fn get_json_within(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Option<(u16, serde_json::Value)> {
    api_request_within(addr, "GET", path, None, (limit, limit))
}

/// [`api_request`] with (connect, read/write) timeouts.
fn api_request_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    (connect, io): (Duration, Duration),
) -> Option<(u16, serde_json::Value)> {
    let mut s = TcpStream::connect_timeout(&addr, connect).ok()?;
    s.set_read_timeout(Some(io)).ok()?;
    s.set_write_timeout(Some(io)).ok()?;
    let auth = bearer.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.take(1 << 24).read_to_end(&mut raw).ok()?;
    let (status, _, _, body) = super::api::parse_response(&raw)?;
    Some((status, serde_json::from_slice(&body).unwrap_or_default()))
}

/// The files of an image directory as (`img/<name>`, path), sorted.
fn image_files(images: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for entry in fs::read_dir(images).map_err(file_err(images))? {
        let entry = entry.map_err(file_err(images))?;
        // Not the `parent` link CRIU leaves after a pre-copy (the target makes its own).
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        files.push((
            format!("img/{}", entry.file_name().to_string_lossy()),
            entry.path(),
        ));
    }
    files.sort();
    Ok(files)
}

/// The target's answer to a transfer: `Restored {"ok": true, ...}` or why not.
/// Sends the job's stdout and stderr up to `offsets` (the lengths the header announced), then
/// the end of the transfer; returns the bytes sent.
fn send_outputs_and_end(
    ch: &mut proto::Channel<BufStream>,
    dir: &Path,
    offsets: &super::table::Offsets,
) -> Result<u64, Error> {
    let mut bytes = send_file(ch, "out/stdout", &dir.join("stdout"), Some(offsets.stdout))?;
    bytes += send_file(ch, "out/stderr", &dir.join("stderr"), Some(offsets.stderr))?;
    ch.send(&Msg::End)?;
    ch.flush()?;
    Ok(bytes)
}

/// Sends a transfer's [`Header`] (migration, checkpoint, exit report) as JSON.
fn send_header(ch: &mut proto::Channel<BufStream>, header: &Header) -> Result<(), Error> {
    let json = serde_json::to_string(header).map_err(|e| Error::Other(e.to_string()))?;
    Ok(ch.send(&Msg::Header(json))?)
}

fn expect_ok(m: Msg) -> Result<(), Error> {
    match m {
        Msg::Restored(j) => {
            let v: serde_json::Value = serde_json::from_str(&j).unwrap_or_default();
            if v["ok"] != true {
                return Err(Error::Refused(
                    v["error"].as_str().unwrap_or("restore failed").to_string(),
                ));
            }
            Ok(())
        }
        Msg::Abort(r) => Err(Error::Refused(r)),
        m => Err(proto::Error::Unexpected(format!("{m:?}")).into()),
    }
}

/// Bytes of the files directly under `dir` and one level down.
fn dir_size(dir: &Path) -> u64 {
    walk_size(dir, 2)
}

fn walk_size(dir: &Path, depth: u32) -> u64 {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() && depth > 0 => walk_size(&e.path(), depth - 1),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Sends the file at `path` as `name` (its first `limit` bytes when given), read and sent a
/// chunk at a time (images of large jobs are not held in memory twice). Returns the size sent.
fn send_file(
    ch: &mut proto::Channel<BufStream>,
    name: &str,
    path: &Path,
    limit: Option<u64>,
) -> Result<u64, Error> {
    let mut f = File::open(path).map_err(file_err(path))?;
    let len = f.metadata().map_err(file_err(path))?.len();
    let size = limit.map_or(len, |l| l.min(len));
    ch.send(&Msg::File {
        name: name.to_owned(),
        mode: 0o600,
        size,
    })?;
    let mut buf = vec![0u8; proto::CHUNK];
    let mut sent = 0u64;
    while sent < size {
        let want = usize::try_from(size - sent).map_or(buf.len(), |left| left.min(buf.len()));
        f.read_exact(&mut buf[..want]).map_err(file_err(path))?;
        ch.send(&Msg::Data(buf[..want].to_vec()))?;
        sent += want as u64;
    }
    Ok(size)
}

/// A TcpStream owned by a [`proto::Channel`].
pub struct BufStream(pub TcpStream);

impl Read for BufStream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}
impl Write for BufStream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn signal(pid: i32, sig: Signal) -> Result<(), Error> {
    kill(Pid::from_raw(pid), sig).map_err(|source| Error::Signal {
        signal: sig,
        pid,
        source,
    })
}

/// The pids of the job whose root is `root`: every process in the root's PID namespace (the job
/// is that namespace's init, so this is its whole tree, whatever it forked or reparented).
pub fn job_pids(root: i32) -> Vec<i32> {
    let ns = |pid: i32| fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let Some(want) = ns(root) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| ns(p).as_ref() == Some(&want))
        .collect();
    pids.sort_unstable();
    pids
}

/// `sig` to every process of the job rooted at `root`; the root's own error counts, a process
/// that ended meanwhile does not.
fn signal_tree(root: i32, sig: Signal) -> Result<(), Error> {
    signal(root, sig)?;
    for pid in job_pids(root) {
        if pid != root {
            let _ = signal(pid, sig);
        }
    }
    Ok(())
}

fn make_private_dir(path: &Path) -> std::io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

fn open_output(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(file_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn connections_to_other_nodes_notice_a_dead_peer_in_seconds() {
        use nix::sys::socket::{getsockopt, sockopt};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        notice_dead_peer(&s).unwrap();
        assert!(getsockopt(&s, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&s, sockopt::TcpKeepIdle).unwrap(), 2);
        assert_eq!(
            getsockopt(&s, sockopt::TcpUserTimeout).unwrap(),
            PEER_DEAD.as_millis() as u32
        );
    }

    #[test]
    fn an_uncommitted_copy_runs_only_when_the_source_gave_it_up() {
        let moved_here = json!({"state": "moved", "node": 2});
        assert_eq!(owner_verdict(Some((200, &moved_here)), 2), Verdict::Resume);
        // The source resumed its copy (failure before its kill), or moved it elsewhere.
        for state in ["running", "migrating", "frozen", "exited"] {
            let j = json!({"state": state, "node": 1});
            assert_eq!(owner_verdict(Some((200, &j)), 2), Verdict::Drop, "{state}");
        }
        assert_eq!(owner_verdict(Some((200, &moved_here)), 3), Verdict::Drop);
        // No answer, an error, or a source that forgot the job: ask again.
        assert_eq!(owner_verdict(None, 2), Verdict::Ask);
        assert_eq!(owner_verdict(Some((502, &json!({}))), 2), Verdict::Ask);
        assert_eq!(owner_verdict(Some((404, &json!({}))), 2), Verdict::Ask);
    }

    #[test]
    fn announced_moves_count_until_the_job_is_here() {
        let engine = Engine::new(1, None, std::env::temp_dir(), 0);
        assert!(engine.announce_incoming("2.5"));
        assert!(engine.announce_incoming("3.1"));
        assert_eq!(engine.incoming(), 2);
        // 2.5 arrived (a record of it running here).
        let mut j = test_job("2.5", 77);
        j.home = 2;
        engine.table().insert(j).unwrap();
        assert_eq!(engine.incoming(), 1);
    }

    fn test_job(id: &str, pid: i32) -> Job {
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
            checkpoint_every: Some(3),
        }
    }

    /// The end of a job checkpointed from here (the job of the migrate_nodes VM test that
    /// restarted on its home) is recorded without the reaper deadlocking on the job table: it
    /// used to tell the holder to drop the checkpoint with the table still locked, and every
    /// API request of the node then hung.
    #[test]
    fn the_end_of_a_checkpointed_job_does_not_lock_the_table_forever() {
        let dir = tempfile::tempdir().unwrap();
        // Port 9 on loopback: nobody listens; the drop fails in its own thread, logged.
        let engine = Arc::new(Engine::new(1, Some(vec![7; 32]), dir.path().into(), 9));
        engine.table().insert(test_job("1.4", 4242)).unwrap();
        engine
            .checkpointed()
            .insert("1.4".into(), (2, Ipv4Addr::LOCALHOST, Instant::now()));
        let (tx, rx) = std::sync::mpsc::channel();
        let e = engine.clone();
        std::thread::spawn(move || {
            let table = e.table();
            e.record_exits(table, vec![(Pid::from_raw(4242), Exit::Code(0))]);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("recording the exit deadlocked on the job table");
        let job = engine.table().get("1.4").unwrap().clone();
        assert_eq!((job.state, job.exit_code), (State::Exited, Some(0)));
    }

    /// A home engine answering transfers on a loopback port, and that port.
    fn listening_home(dir: &Path, locked: bool) -> (Arc<Engine>, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let home = Arc::new(Engine::new(1, Some(vec![7; 32]), dir.into(), port));
        home.set_cluster(Cluster {
            node_addr: Box::new(|_| Some(Ipv4Addr::LOCALHOST)),
            refuses_guests: Box::new(move || locked),
        });
        let h = home.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                h.receive(conn);
            }
        });
        (home, port)
    }

    /// A node drops only its own checkpoint on the holder: after a move the job's new node may
    /// have sent a newer one there already, which must survive the old node's drop.
    #[test]
    fn a_drop_removes_only_the_senders_checkpoint() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (holder, port) = listening_home(d1.path(), false);
        let held = |id: &str, from: u32| super::super::table::Held {
            job: test_job(id, 0),
            from,
            at_ms: 0,
            offsets: Offsets::default(),
            bytes: 0,
        };
        holder
            .table()
            .checkpoints
            .insert("3.1".into(), held("3.1", 2));
        holder
            .table()
            .checkpoints
            .insert("3.2".into(), held("3.2", 4));
        let source = Engine::new(2, Some(vec![7; 32]), d2.path().into(), port);
        for id in ["3.1", "3.2"] {
            source.table().insert(test_job(id, 0)).unwrap();
            source
                .checkpointed()
                .insert(id.into(), (1, Ipv4Addr::LOCALHOST, Instant::now()));
            source.drop_checkpoint(id);
        }
        let t0 = Instant::now();
        while holder.table().checkpoints.contains_key("3.1") {
            assert!(t0.elapsed() < Duration::from_secs(10), "3.1 never dropped");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The second drop went out after the first: give it the same time to do harm.
        std::thread::sleep(Duration::from_millis(300));
        assert!(holder.table().checkpoints.contains_key("3.2"));
        assert!(source.checkpointed().is_empty());
    }

    /// The window after a move: the source keeps the move's images (pre-copy rounds
    /// included) and the output up to the dump as the job's checkpoint guarding its new node,
    /// so the job restarts here if that node dies before its own first checkpoint.
    #[test]
    fn the_images_of_a_move_guard_the_job_until_its_new_nodes_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let source = Engine::new(1, None, dir.path().join("jobs"), 0)
            .with_checkpoint_root(dir.path().join("checkpoints"));
        for (id, every) in [("1.1", Some(600)), ("1.2", None)] {
            let mut job = test_job(id, 40);
            job.checkpoint_every = every;
            let mut t = source.table();
            t.insert(job).unwrap();
            t.begin_migration(id).unwrap();
            t.finish_migration(id, 2).unwrap();
        }
        let offsets = Offsets {
            stdout: 7,
            stderr: 0,
        };
        for id in ["1.1", "1.2"] {
            let job_dir = source.job_dir(id);
            for round in ["img-out", "pre-1", "pre-2"] {
                fs::create_dir_all(job_dir.join(round)).unwrap();
                fs::write(job_dir.join(round).join("pages-1.img"), round).unwrap();
            }
            std::os::unix::fs::symlink("../pre-2", job_dir.join("img-out/parent")).unwrap();
            std::os::unix::fs::symlink("../pre-1", job_dir.join("pre-2/parent")).unwrap();
            fs::write(job_dir.join("stdout"), "line 1\nline 2\n").unwrap();
            fs::write(job_dir.join("stderr"), "").unwrap();
            source.hold_moved_images(id, 2, &job_dir.join("img-out"), Some(&offsets));
        }
        let held = source.table().restartable(2);
        assert_eq!(
            held.iter().map(|h| h.job.id.as_str()).collect::<Vec<_>>(),
            ["1.1"],
            "only the job that takes checkpoints is guarded"
        );
        assert_eq!(held[0].offsets, offsets);
        let current = dir.path().join("checkpoints/1.1/current");
        // The final dump finds its pre-copy rounds through its `parent` links, as CRIU will.
        assert_eq!(
            fs::read_to_string(current.join("img/parent/parent/pages-1.img")).unwrap(),
            "pre-1"
        );
        assert_eq!(
            fs::read_to_string(current.join("stdout")).unwrap(),
            "line 1\n"
        );
        let mode = fs::metadata(current.join("stdout"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("checkpoints/1.2").exists());
    }

    /// The job's new node tells the node that kept the move's images to drop them once its
    /// own first checkpoint reached a different holder; a checkpoint to the same holder
    /// replaces them there, and nothing is dropped.
    #[test]
    fn a_checkpoint_kept_elsewhere_drops_the_one_kept_before() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (kept, port) = listening_home(d1.path(), false);
        let node2 = Engine::new(2, Some(vec![7; 32]), d2.path().into(), port);
        for id in ["1.1", "1.2"] {
            kept.table().checkpoints.insert(
                id.into(),
                super::super::table::Held {
                    job: test_job(id, 0),
                    from: 2,
                    at_ms: 0,
                    offsets: Offsets::default(),
                    bytes: 0,
                },
            );
            node2.table().insert(test_job(id, 0)).unwrap();
            // As on arrival from node 1.
            node2.checkpoint_kept(id, 1, Ipv4Addr::LOCALHOST);
        }
        node2.checkpoint_kept("1.2", 1, Ipv4Addr::LOCALHOST);
        node2.checkpoint_kept("1.1", 3, Ipv4Addr::LOCALHOST);
        let t0 = Instant::now();
        while kept.table().checkpoints.contains_key("1.1") {
            assert!(t0.elapsed() < Duration::from_secs(10), "1.1 never dropped");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(kept.table().checkpoints.contains_key("1.2"));
        assert_eq!(node2.checkpointed().get("1.1").map(|c| c.0), Some(3));
    }

    /// Soak finding: a job moved away from home, ended there, and that node died later; the
    /// home, whose record still said `moved`, called it lost and had none of its output.
    #[test]
    fn an_end_away_from_home_reaches_the_home_with_all_its_output() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (home, port) = listening_home(d1.path(), false);
        {
            let mut t = home.table();
            t.insert(test_job("1.1", 50)).unwrap();
            t.begin_migration("1.1").unwrap();
            t.finish_migration("1.1", 2).unwrap();
        }
        let write = |dir: PathBuf, out: &str, err: &str| {
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("stdout"), out).unwrap();
            fs::write(dir.join("stderr"), err).unwrap();
        };
        write(home.job_dir("1.1"), "line 1\n", "");
        let away = Engine::new(2, Some(vec![7; 32]), d2.path().into(), port);
        let mut job = test_job("1.1", 60);
        (job.node, job.state, job.pid, job.exit_code) = (2, State::Exited, None, Some(3));
        write(away.job_dir("1.1"), "line 1\nline 2\nline 3\n", "warning\n");

        assert_eq!(
            away.send_exit(&job, Ipv4Addr::LOCALHOST).unwrap(),
            Ended::Recorded
        );
        let rec = home.table().get("1.1").unwrap().clone();
        assert_eq!(
            (rec.state, rec.node, rec.exit_code),
            (State::Exited, 2, Some(3))
        );
        let out = home.output("1.1", "stdout", 0, 1 << 20).unwrap();
        assert_eq!(out, b"line 1\nline 2\nline 3\n");
        assert_eq!(
            home.output("1.1", "stderr", 0, 1 << 20).unwrap(),
            b"warning\n"
        );
        assert!(!home.job_dir("1.1").join("final-in").exists());
        // The node it ran on dies afterwards: nothing is lost.
        assert!(home.node_lost(2, "went down").is_empty());
        assert_eq!(home.table().get("1.1").unwrap().state, State::Exited);
        // A repeated report changes nothing.
        write(away.job_dir("1.1"), "other\n", "");
        assert_eq!(
            away.send_exit(&job, Ipv4Addr::LOCALHOST).unwrap(),
            Ended::Stale
        );
        assert_eq!(
            home.output("1.1", "stdout", 0, 1 << 20).unwrap(),
            b"line 1\nline 2\nline 3\n"
        );
    }

    /// A node locked after the source last heard of it still refuses a guest, with the reason,
    /// before any image byte is taken.
    #[test]
    fn a_locked_target_refuses_guests() {
        let d1 = tempfile::tempdir().unwrap();
        let (_target, port) = listening_home(d1.path(), true);
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut ch = proto::connect(BufStream(stream), &[7; 32]).unwrap();
        let mut job = test_job("2.1", 60);
        job.home = 2;
        let header = Header {
            job,
            offsets: Offsets::default(),
            from: 2,
            kind: Kind::Migrate,
        };
        ch.send(&Msg::Header(serde_json::to_string(&header).unwrap()))
            .unwrap();
        ch.flush().unwrap();
        let err = expect_ok(ch.recv().unwrap()).unwrap_err().to_string();
        assert!(
            err.contains("node 1 refuses guest jobs (locked with `drove lock`"),
            "{err}"
        );
        assert!(!d1.path().join("2.1").exists());
    }

    #[test]
    fn large_jobs_are_pre_copied_unless_told() {
        assert!(!wants_precopy(1 << 20, None));
        assert!(wants_precopy(PRECOPY_MIN_BYTES, None));
        assert!(wants_precopy(1 << 20, Some(true)));
        assert!(!wants_precopy(1 << 30, Some(false)));
    }

    #[test]
    fn pre_copy_rounds_stop_when_small_or_not_shrinking() {
        // The first round is the whole memory: go on, unless it is tiny.
        assert!(another_round(None, 64 << 20));
        assert!(!another_round(None, 100 << 10));
        // The dirty set shrank a lot, but is still large: once more.
        assert!(another_round(Some(64 << 20), 8 << 20));
        // Small: the final dump follows.
        assert!(!another_round(Some(64 << 20), 512 << 10));
        // The job dirties as fast as it is copied: stop.
        assert!(!another_round(Some(20 << 20), 18 << 20));
        assert!(!another_round(Some(20 << 20), 30 << 20));
    }

    #[test]
    fn received_files_land_only_in_their_places() {
        assert_eq!(
            file_place("img/pages-1.img", 0),
            Some(Place::Image("pages-1.img"))
        );
        assert_eq!(file_place("out/stdout", 0), Some(Place::Output("stdout")));
        assert_eq!(
            file_place("pre/1/pages-1.img", 0),
            Some(Place::Round(1, "pages-1.img"))
        );
        assert_eq!(
            file_place("pre/1/pagemap-5.img", 1),
            Some(Place::Round(1, "pagemap-5.img"))
        );
        assert_eq!(
            file_place("pre/2/pages-1.img", 1),
            Some(Place::Round(2, "pages-1.img"))
        );
        // Out of order, skipped, too many, or the links the target makes itself.
        for bad in [
            "pre/2/x",
            "pre/0/x",
            "pre/x/y",
            "img/parent",
            "pre/1/parent",
            "out/other",
            "img/a/b",
        ] {
            assert_eq!(file_place(bad, 0), None, "{bad}");
        }
        assert_eq!(file_place("pre/1/x", 2), None);
        assert_eq!(
            file_place(
                &format!("pre/{}/x", PRECOPY_MAX_ROUNDS + 1),
                PRECOPY_MAX_ROUNDS
            ),
            None
        );
    }

    #[test]
    fn a_dead_peer_is_cut_off_quickly_and_a_slow_one_is_not() {
        // A peer that accepts and reads nothing (its kernel still acknowledges): the socket
        // stays usable past PEER_DEAD, as a target busy restoring would.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = TcpStream::connect(addr).unwrap();
        tune(&s);
        let (_peer, _) = l.accept().unwrap();
        let v =
            nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::TcpUserTimeout).unwrap();
        assert_eq!(u128::from(v), PEER_DEAD.as_millis());
        assert!(nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::KeepAlive).unwrap());
        // peer_down cuts a registered transfer at once: a blocked read returns.
        let engine = Engine::new(1, None, std::env::temp_dir(), 0);
        let guard = engine.watch_transfer(2, &s);
        let reader = {
            let mut s = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut b = [0u8; 1];
                let r = s.read(&mut b);
                (r.map_err(|e| e.kind()), t0.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        engine.peer_down(3);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !reader.is_finished(),
            "node 3 down cut a transfer to node 2"
        );
        engine.peer_down(2);
        let (r, took) = reader.join().unwrap();
        assert_eq!(r, Ok(0), "a cut socket reads end-of-file");
        assert!(took < Duration::from_secs(5), "{took:?}");
        drop(guard);
        assert!(engine.transfers().is_empty());
    }

    #[test]
    fn a_job_is_its_whole_pid_namespace() {
        // Without a job namespace here, the test process's own namespace stands in for one.
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pids = job_pids(me);
        assert!(
            pids.contains(&me) && pids.contains(&(child.id() as i32)),
            "{pids:?}"
        );
        assert!(job_pids(-1).is_empty());
        let _ = child.kill();
        let _ = child.wait();
    }
}
