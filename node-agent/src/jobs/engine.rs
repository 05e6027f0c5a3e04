//! The job engine of one node: launches jobs in their own PID namespace, collects their exits,
//! migrates them out (source side) and takes them in (target side).
//!
//! Runs in the cluster daemon, which makes itself a child subreaper: a job's root process and
//! every process CRIU restores (`criu restore -d` exits, its tree reparents) become children of
//! the daemon, and one reaper thread hands their exit statuses to the job table. Every process
//! the daemon starts goes through [`Children`], so that reaper never steals a status.

use super::criu;
use super::proto::{self, Msg};
use super::table::{Job, Migration, Offsets, Outcome, State, Table};
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

/// What the source sends first.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Header {
    job: Job,
    offsets: Offsets,
    from: u32,
}

pub struct Engine {
    table: Mutex<Table>,
    children: Arc<Children>,
    key: Option<Vec<u8>>,
    /// This node's number.
    pub me: u32,
    root: PathBuf,
    /// TCP port of the migration listener (the same on every node).
    pub port: u16,
}

impl Engine {
    pub fn new(me: u32, key: Option<Vec<u8>>, root: PathBuf, port: u16) -> Self {
        Engine {
            table: Mutex::new(Table::default()),
            children: Arc::new(Children::new()),
            key,
            me,
            root,
            port,
        }
    }

    pub fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
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
                me.reap_once();
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

    fn reap_once(&self) {
        // Table first, then the registry (the order `launch` takes them too).
        let mut table = self.table();
        for (pid, exit) in self.children.reap() {
            let (code, signal) = match exit {
                Exit::Code(c) => (Some(c), None),
                Exit::Signal(s) => (None, Some(s.as_str().to_string())),
            };
            if let Some(id) = table.exited(pid.as_raw(), code, signal) {
                info!("jobs: job {id} ended ({exit})");
            }
        }
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Starts `cmd` as the init of a new PID namespace, in a session of its own, stdin from
    /// /dev/null, stdout and stderr appended to files under the job's directory.
    pub fn launch(&self, cmd: &[String]) -> Result<Job, Error> {
        self.launch_pinned(cmd, false)
    }

    /// [`Engine::launch`]; a pinned job is never moved by the balancer.
    pub fn launch_pinned(&self, cmd: &[String], pinned: bool) -> Result<Job, Error> {
        let (program, args) = cmd.split_first().ok_or(Error::EmptyCommand)?;
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
        let mut command = Command::new(program);
        command.args(args).stdout(out).stderr(err).current_dir("/");
        // SAFETY: runs in the forked child before exec and calls only async-signal-safe
        // functions (unshare, fork, setsid, write, close, _exit) on plain integers and a
        // stack buffer. The middle process exits at once; its child, pid 1 of the new PID
        // namespace, goes on to exec the command (std reports an exec failure from there).
        unsafe {
            command.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWPID) != 0 {
                    return Err(std::io::Error::last_os_error());
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

    /// SIGKILL to a job running here.
    pub fn kill(&self, id: &str) -> Result<Job, Error> {
        let job = self.table().get(id)?.clone();
        match (job.state, job.pid) {
            (State::Running | State::Migrating, Some(pid)) => signal(pid, Signal::SIGKILL)?,
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
        };
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
        let mut frozen_at = None;
        let mut killed = false;
        let result = self.send_job(
            id,
            pid,
            to,
            addr,
            &images,
            &mut rec.bytes,
            &mut frozen_at,
            &mut killed,
        );
        let _ = fs::remove_dir_all(&images);
        match result {
            Ok(()) => {
                let _ = self.table().finish_migration(id, to);
                rec.outcome = Outcome::Moved;
            }
            Err(e) if killed => {
                // The target restored it and our copy is gone: the job lives there.
                let _ = self.table().finish_migration(id, to);
                rec.outcome = Outcome::Moved;
                rec.error = Some(format!("after the commit: {}", crate::console::chain(&e)));
            }
            Err(e) => {
                let resumed = signal(pid, Signal::SIGCONT);
                let _ = self.table().abort_migration(id);
                rec.outcome = if resumed.is_ok() {
                    Outcome::Resumed
                } else {
                    Outcome::Lost
                };
                rec.error = Some(crate::console::chain(&e));
                warn!(
                    "jobs: migration of {id} to node {to} failed, job resumed here: {}",
                    crate::console::chain(&e)
                );
            }
        }
        rec.freeze_ms = frozen_at.map_or(0, |t: Instant| t.elapsed().as_millis() as u64);
        rec.total_ms = t0.elapsed().as_millis() as u64;
        info!(
            "jobs: migration job={id} from={} to={to} outcome={:?} freeze_ms={} bytes={} total_ms={}",
            self.me, rec.outcome, rec.freeze_ms, rec.bytes, rec.total_ms
        );
        self.table().migrations.push(rec.clone());
        rec
    }

    #[allow(clippy::too_many_arguments)]
    fn send_job(
        &self,
        id: &str,
        pid: i32,
        to: u32,
        addr: Ipv4Addr,
        images: &Path,
        bytes: &mut u64,
        frozen_at: &mut Option<Instant>,
        killed: &mut bool,
    ) -> Result<(), Error> {
        let key = self
            .key
            .clone()
            .ok_or_else(|| Error::Other("this node has no cluster key".into()))?;
        let dir = self.job_dir(id);
        // Connect and authenticate before freezing: an unreachable target costs no freeze.
        let target = SocketAddr::from((addr, self.port));
        let stream =
            TcpStream::connect_timeout(&target, Duration::from_secs(5)).map_err(|source| {
                Error::Connect {
                    addr: target,
                    source,
                }
            })?;
        stream.set_read_timeout(Some(NET_TIMEOUT)).ok();
        stream.set_write_timeout(Some(NET_TIMEOUT)).ok();
        let _ = stream.set_nodelay(true);
        let mut ch = proto::connect(BufStream(stream), &key)?;
        let _ = fs::remove_dir_all(images);
        make_private_dir(images).map_err(file_err(images))?;
        *frozen_at = Some(Instant::now());
        criu::run(
            &self.children,
            &criu::dump_args(pid, images, &dir.join("dump.log")),
            &dir.join("dump.log"),
            CRIU_TIMEOUT,
        )?;
        let len = |n: &str| fs::metadata(dir.join(n)).map_or(0, |m| m.len());
        let offsets = Offsets {
            stdout: len("stdout"),
            stderr: len("stderr"),
        };
        let job = self.table().get(id)?.clone();
        let header = Header {
            job,
            offsets,
            from: self.me,
        };
        ch.send(&Msg::Header(
            serde_json::to_string(&header).map_err(|e| Error::Other(e.to_string()))?,
        ))?;
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for entry in fs::read_dir(images).map_err(file_err(images))? {
            let entry = entry.map_err(file_err(images))?;
            files.push((
                format!("img/{}", entry.file_name().to_string_lossy()),
                entry.path(),
            ));
        }
        files.sort();
        files.push(("out/stdout".into(), dir.join("stdout")));
        files.push(("out/stderr".into(), dir.join("stderr")));
        for (name, path) in files {
            let data = fs::read(&path).map_err(file_err(&path))?;
            ch.send(&Msg::File {
                name,
                mode: 0o600,
                size: data.len() as u64,
            })?;
            for chunk in data.chunks(proto::CHUNK) {
                ch.send(&Msg::Data(chunk.to_vec()))?;
            }
            *bytes += data.len() as u64;
        }
        ch.send(&Msg::End)?;
        ch.flush()?;
        match ch.recv()? {
            Msg::Restored(j) => {
                let v: serde_json::Value = serde_json::from_str(&j).unwrap_or_default();
                if v["ok"] != true {
                    return Err(Error::Refused(
                        v["error"].as_str().unwrap_or("restore failed").to_string(),
                    ));
                }
            }
            Msg::Abort(r) => return Err(Error::Refused(r)),
            m => return Err(proto::Error::Unexpected(format!("{m:?}")).into()),
        }
        // Point of no return: the target holds a restored, stopped copy.
        signal(pid, Signal::SIGKILL)?;
        *killed = true;
        ch.send(&Msg::Commit)?;
        ch.flush()?;
        match ch.recv()? {
            Msg::Commit => Ok(()),
            m => Err(proto::Error::Unexpected(format!("{m:?}")).into()),
        }
        .inspect(|_| info!("jobs: job {id} now runs on node {to}"))
    }

    /// Target side of one migration connection.
    fn receive(&self, stream: TcpStream) {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        stream.set_read_timeout(Some(NET_TIMEOUT)).ok();
        stream.set_write_timeout(Some(NET_TIMEOUT)).ok();
        let Some(key) = self.key.clone() else { return };
        let mut ch = match proto::accept(BufStream(stream), &key) {
            Ok(ch) => ch,
            Err(e) => {
                warn!("jobs: migration connection from {peer} refused: {e}");
                return;
            }
        };
        let mut job_id = None;
        let result = self.take_job(&mut ch, &mut job_id);
        if let Err(e) = result {
            let text = crate::console::chain(&e);
            warn!("jobs: incoming migration from {peer} failed: {text}");
            let _ = ch.send(&Msg::Restored(
                serde_json::json!({"ok": false, "error": text}).to_string(),
            ));
            if let Some(id) = job_id {
                let arrived = self.table().get(&id).map(|j| (j.state, j.pid));
                if let Ok((State::Arriving, Some(pid))) = arrived {
                    let _ = signal(pid, Signal::SIGKILL);
                    self.table().forget(&id);
                }
            }
        }
    }

    fn take_job(
        &self,
        ch: &mut proto::Channel<BufStream>,
        job_id: &mut Option<String>,
    ) -> Result<(), Error> {
        let header: Header = match ch.recv()? {
            Msg::Header(j) => {
                serde_json::from_str(&j).map_err(|e| Error::Other(format!("bad header: {e}")))?
            }
            m => return Err(proto::Error::Unexpected(format!("{m:?}")).into()),
        };
        let id = header.job.id.clone();
        if !proto::safe_name(&id) || id.contains('/') {
            return Err(Error::Other(format!("bad job id {id:?}")));
        }
        if let Ok(j) = self.table().get(&id) {
            if !j.state.is_final() {
                return Err(super::table::Error::Exists(id).into());
            }
        }
        let dir = self.job_dir(&id);
        let images = dir.join("img-in");
        let result = self
            .receive_files(ch, &dir, &images, &header.offsets)
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
        match ch.recv()? {
            Msg::Commit => {}
            m => {
                return Err(proto::Error::Unexpected(format!("{m:?} instead of the commit")).into())
            }
        }
        signal(pid, Signal::SIGCONT)?;
        self.table().arrived(&id)?;
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
        offsets: &Offsets,
    ) -> Result<(), Error> {
        make_private_dir(dir).map_err(file_err(dir))?;
        let _ = fs::remove_dir_all(images);
        make_private_dir(images).map_err(file_err(images))?;
        loop {
            let (name, size) = match ch.recv()? {
                Msg::File { name, size, .. } => (name, size),
                Msg::End => break,
                m => return Err(proto::Error::Unexpected(format!("{m:?}")).into()),
            };
            let path = match name.split_once('/') {
                Some(("img", rest)) if !rest.contains('/') => images.join(rest),
                Some(("out", s @ ("stdout" | "stderr"))) => dir.join(s),
                _ => return Err(Error::Other(format!("unexpected file {name:?}"))),
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
        let len = |n: &str| fs::metadata(dir.join(n)).map_or(0, |m| m.len());
        let bad = offsets.mismatches(len("stdout"), len("stderr"));
        if !bad.is_empty() {
            return Err(Error::Other(bad.join("; ")));
        }
        Ok(())
    }
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
