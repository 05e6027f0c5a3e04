//! Client side of the agent's job API: `drove run`, `drove ps`, `drove migrate`, `drove kill`,
//! `drove freeze`, `drove continue`.
//!
//! Plain HTTP/1.0 over `std::net::TcpStream` (one request per connection, no chunked bodies),
//! like `status`. Changes carry `Authorization: Bearer <hex cluster key>`. The caller always
//! talks to one node (usually the job's home); that node forwards requests about a job that has
//! moved on, so output is read by byte offset from wherever the job runs, with no gap and no
//! duplicate across a migration.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long `follow` keeps asking about a job whose node does not answer (a node that died is
/// declared down, and its jobs lost, within seconds) before it gives up with the last error.
const UNREACHABLE_FOR: Duration = Duration::from_secs(60);

/// Exit code of `drove run` for a job lost with its node (`EX_UNAVAILABLE`).
pub const EXIT_LOST: i32 = 69;

/// Exit code of `drove run` interrupted by Ctrl-C (128 + SIGINT, as a shell reports it).
pub const EXIT_INTERRUPTED: i32 = 130;

/// How a followed job ended for the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Followed {
    /// The job's final record (`exited` or `lost`).
    Ended(Value),
    /// `stop` said so before the job ended.
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the agent at {addr}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{method} {path} on {addr}")]
    Io {
        method: String,
        path: String,
        addr: String,
        source: std::io::Error,
    },
    #[error("{method} {path} on {addr}: malformed answer")]
    Malformed {
        method: String,
        path: String,
        addr: String,
    },
    #[error("{method} {path} on {addr}: HTTP {status}: {message}")]
    Status {
        method: String,
        path: String,
        addr: String,
        status: u16,
        message: String,
    },
}

/// One answer: status, the `x-drove-state` header and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub state: Option<String>,
    pub body: Vec<u8>,
}

/// An agent's API address (`host:port`) and, for changes, the cluster key as hex.
#[derive(Debug, Clone)]
pub struct Agent {
    pub addr: String,
    pub key: Option<String>,
    pub timeout: Duration,
}

impl Agent {
    pub fn new(addr: &str, key: Option<String>) -> Self {
        Agent {
            addr: addr.to_owned(),
            key,
            timeout: Duration::from_secs(300),
        }
    }

    /// One request; any status is returned (see [`Agent::ok`] for a 2xx-only form).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer, Error> {
        let io = |source| Error::Io {
            method: method.into(),
            path: path.into(),
            addr: self.addr.clone(),
            source,
        };
        let mut s = TcpStream::connect(&self.addr).map_err(|source| Error::Connect {
            addr: self.addr.clone(),
            source,
        })?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", self.addr, body.len());
        if let Some(k) = &self.key {
            req.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        s.write_all(req.as_bytes()).map_err(io)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(io)?;
        parse(&raw).ok_or_else(|| Error::Malformed {
            method: method.into(),
            path: path.into(),
            addr: self.addr.clone(),
        })
    }

    /// A request whose answer must be 2xx; its body as JSON (`null` when empty).
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let a = self.request(method, path, body)?;
        let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        if !(200..300).contains(&a.status) {
            let message = v["error"].as_str().map(str::to_owned).unwrap_or_else(|| {
                if v.is_null() {
                    String::from_utf8_lossy(&a.body).into_owned()
                } else {
                    v.to_string()
                }
            });
            return Err(Error::Status {
                method: method.into(),
                path: path.into(),
                addr: self.addr.clone(),
                status: a.status,
                message,
            });
        }
        Ok(v)
    }

    pub fn launch(&self, cmd: &[String]) -> Result<Value, Error> {
        self.launch_pinned(cmd, false)
    }

    /// [`Agent::launch`] in working directory `cwd` (default: the cluster file area, if any)
    /// with `env` set on top of the node's environment.
    pub fn launch_in(
        &self,
        cmd: &[String],
        pin: bool,
        cwd: Option<&str>,
        env: &[(String, String)],
    ) -> Result<Value, Error> {
        self.launch_checkpointed(cmd, pin, cwd, env, None)
    }

    /// [`Agent::launch_in`], checkpointed every `checkpoint_every` seconds when given (the
    /// checkpoint is kept on another node; the job restarts from it if its node dies).
    pub fn launch_checkpointed(
        &self,
        cmd: &[String],
        pin: bool,
        cwd: Option<&str>,
        env: &[(String, String)],
        checkpoint_every: Option<u64>,
    ) -> Result<Value, Error> {
        self.launch_with(
            cmd,
            &Launch {
                pin,
                cwd,
                env,
                checkpoint_every,
                place: false,
            },
        )
    }

    /// Starts `cmd` as `how` says (`POST /api/jobs`).
    pub fn launch_with(&self, cmd: &[String], how: &Launch<'_>) -> Result<Value, Error> {
        let env: serde_json::Map<String, Value> = how
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut body = json!({ "cmd": cmd, "pin": how.pin, "cwd": how.cwd, "env": env });
        if let Some(every) = how.checkpoint_every {
            body["checkpoint_every"] = json!(every);
        }
        if how.place {
            body["place"] = json!(true);
        }
        self.ok("POST", "/api/jobs", Some(&body))
    }

    /// [`Agent::launch`]; a pinned job is never moved by the balancer.
    pub fn launch_pinned(&self, cmd: &[String], pin: bool) -> Result<Value, Error> {
        self.ok(
            "POST",
            "/api/jobs",
            Some(&json!({ "cmd": cmd, "pin": pin })),
        )
    }

    pub fn job(&self, id: &str) -> Result<Value, Error> {
        self.ok("GET", &format!("/api/jobs/{id}"), None)
    }

    pub fn jobs(&self) -> Result<Value, Error> {
        self.ok("GET", "/api/jobs", None)
    }

    /// Every node's jobs and migrations, merged by the agent (`/api/cluster/jobs`): each job
    /// once, where it runs; nodes that did not answer under `unreachable`.
    pub fn cluster_jobs(&self) -> Result<Value, Error> {
        self.ok("GET", "/api/cluster/jobs", None)
    }

    /// Moves `id` to `to` (a node number, name or `home`); the migration record, whatever its
    /// outcome (a refused or failed migration answers 409 with the record).
    pub fn migrate(&self, id: &str, to: &str) -> Result<Value, Error> {
        self.migrate_with(id, to, None)
    }

    /// [`Agent::migrate`]; `precopy`: force CRIU pre-copy on or off (`None`: the agent decides
    /// from the job's memory).
    pub fn migrate_with(&self, id: &str, to: &str, precopy: Option<bool>) -> Result<Value, Error> {
        let path = format!("/api/jobs/{id}/migrate");
        let mut body = json!({ "to": to });
        if let Some(p) = precopy {
            body["precopy"] = json!(p);
        }
        let a = self.request("POST", &path, Some(&body))?;
        let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        if a.status == 200 || (a.status == 409 && v.get("outcome").is_some()) {
            return Ok(v);
        }
        Err(Error::Status {
            method: "POST".into(),
            path,
            addr: self.addr.clone(),
            status: a.status,
            message: v["error"].as_str().unwrap_or("").to_owned(),
        })
    }

    pub fn kill(&self, id: &str) -> Result<Value, Error> {
        self.ok("POST", &format!("/api/jobs/{id}/kill"), None)
    }

    /// SIGSTOP to every process of the job, wherever it runs; state `frozen`.
    pub fn freeze(&self, id: &str) -> Result<Value, Error> {
        self.ok("POST", &format!("/api/jobs/{id}/freeze"), None)
    }

    /// SIGCONT to every process of a frozen job; state `running` again.
    pub fn resume(&self, id: &str) -> Result<Value, Error> {
        self.ok("POST", &format!("/api/jobs/{id}/continue"), None)
    }

    /// Output of `stream` from byte `offset` on.
    pub fn output(&self, id: &str, stream: &str, offset: u64) -> Result<Vec<u8>, Error> {
        let path = format!("/api/jobs/{id}/output?stream={stream}&offset={offset}");
        let a = self.request("GET", &path, None)?;
        if a.status != 200 {
            return Err(Error::Status {
                method: "GET".into(),
                path,
                addr: self.addr.clone(),
                status: a.status,
                message: String::from_utf8_lossy(&a.body).into_owned(),
            });
        }
        Ok(a.body)
    }

    /// Streams a job's stdout and stderr to `out`/`err` until it ends (`exited` or `lost`);
    /// returns the final job record. Output is read by offset, so a migration in between
    /// changes nothing for the reader.
    pub fn follow(
        &self,
        id: &str,
        out: &mut dyn Write,
        err: &mut dyn Write,
        poll: Duration,
    ) -> Result<Value, Error> {
        match self.follow_until(id, out, err, poll, &|| false)? {
            Followed::Ended(job) => Ok(job),
            Followed::Stopped => unreachable_stop(),
        }
    }

    /// [`Agent::follow`] that also returns [`Followed::Stopped`] as soon as `stop()` holds
    /// (checked between reads: Ctrl-C on `drove run`).
    pub fn follow_until(
        &self,
        id: &str,
        out: &mut dyn Write,
        err: &mut dyn Write,
        poll: Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<Followed, Error> {
        let mut offsets = [0u64; 2];
        let mut failing_since: Option<Instant> = None;
        loop {
            if stop() {
                return Ok(Followed::Stopped);
            }
            let got = self.drain(id, &mut offsets, out, err)?;
            if got > 0 {
                continue;
            }
            let job = match self.job(id) {
                Ok(job) => {
                    failing_since = None;
                    job
                }
                // The node running it may have just died: its home declares it lost shortly.
                Err(
                    e @ Error::Status {
                        status: 502 | 404, ..
                    },
                ) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > UNREACHABLE_FOR {
                        return Err(e);
                    }
                    std::thread::sleep(poll);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if job["state"] == "exited" || job["state"] == "lost" {
                // Whatever was written between the last read and the end.
                self.drain(id, &mut offsets, out, err)?;
                return Ok(Followed::Ended(job));
            }
            std::thread::sleep(poll);
        }
    }

    fn drain(
        &self,
        id: &str,
        offsets: &mut [u64; 2],
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<usize, Error> {
        let mut total = 0;
        for (i, stream) in ["stdout", "stderr"].into_iter().enumerate() {
            // A job mid-migration may be briefly unreadable (409/404 from the forwarder): retry later.
            let Ok(bytes) = self.output(id, stream, offsets[i]) else {
                continue;
            };
            offsets[i] += bytes.len() as u64;
            total += bytes.len();
            let w: &mut dyn Write = if i == 0 { &mut *out } else { &mut *err };
            let _ = w.write_all(&bytes);
            let _ = w.flush();
        }
        Ok(total)
    }
}

fn unreachable_stop() -> Result<Value, Error> {
    // `follow` passes a `stop` that never holds.
    Err(Error::Malformed {
        method: "follow".into(),
        path: "stopped without a stop condition".into(),
        addr: String::new(),
    })
}

/// Set by the SIGINT handler of `drove run`.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    // A second Ctrl-C while the kill is on its way: leave at once.
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(EXIT_INTERRUPTED) };
    }
}

/// Catches SIGINT for `drove run`: the first Ctrl-C sets a flag the follow loop sees (it then
/// kills the job wherever it runs), a second one exits at once.
fn catch_sigint() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: installs a handler that only touches an atomic and calls _exit.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

/// The exit code and message of `drove run` for a job's final record.
pub fn run_outcome(id: &str, job: &Value) -> (i32, Option<String>) {
    if job["state"] == "lost" {
        return (
            EXIT_LOST,
            Some(format!(
                "drove: job {id} lost: {}",
                job["reason"].as_str().unwrap_or("its node went down")
            )),
        );
    }
    match (job["exit_code"].as_i64(), job["signal"].as_str()) {
        (Some(c), _) => (c as i32, None),
        (None, Some(sig)) => (137, Some(format!("drove: job {id} killed by {sig}"))),
        _ => (
            1,
            Some(format!("drove: job {id} ended without an exit status")),
        ),
    }
}

/// Status, `x-drove-state` and body of a complete HTTP/1.x answer.
pub fn parse(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let state = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-drove-state"))
        .map(|(_, v)| v.trim().to_owned());
    Some(Answer {
        status,
        state,
        body: raw[end + 4..].to_vec(),
    })
}

/// `drove ps`: one line per job.
pub fn ps_table(jobs: &Value) -> String {
    let mut out = format!(
        "{:<8} {:<9} {:>4} {:>4} {:>5} {:>5}  {}\n",
        "JOB", "STATE", "HOME", "NODE", "MIGR", "EXIT", "COMMAND"
    );
    for j in jobs["jobs"].as_array().into_iter().flatten() {
        let exit = match (j["exit_code"].as_i64(), j["signal"].as_str()) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => s.to_owned(),
            _ => "-".into(),
        };
        let cmd: Vec<&str> = j["cmd"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(&format!(
            "{:<8} {:<9} {:>4} {:>4} {:>5} {:>5}  {}\n",
            j["id"].as_str().unwrap_or("?"),
            j["state"].as_str().unwrap_or("?"),
            j["home"].to_string(),
            if j["stale"] == true {
                format!("{}?", j["node"])
            } else {
                j["node"].to_string()
            },
            j["migrations"].to_string(),
            exit,
            cmd.join(" ")
        ));
        if let Some(reason) = j["reason"].as_str() {
            out.push_str(&format!("{:<8} ^ {reason}\n", ""));
        }
    }
    for u in jobs["unreachable"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "node {} ({}) did not answer: {}; its jobs are missing or shown stale (NODE?)\n",
            u["number"],
            u["addr"].as_str().unwrap_or("?"),
            u["error"].as_str().unwrap_or("?")
        ));
    }
    out
}

/// Where to reach an agent and the key that lets you change things.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// The agent to talk to, HOST[:PORT] (port 7030 by default); usually the job's home node.
    #[arg(long, default_value = crate::status::DEFAULT_NODE, value_name = "ADDR[:PORT]")]
    pub node: String,
    /// File holding the cluster key (64 hex digits), needed to start, move or kill jobs;
    /// default: $DROVE_KEY_FILE.
    #[arg(long, value_name = "FILE")]
    pub key: Option<std::path::PathBuf>,
}

impl AgentArgs {
    pub fn agent(&self) -> anyhow::Result<Agent> {
        use anyhow::Context as _;
        let addr = crate::status::normalize_addr(&self.node)?;
        let key_file = self
            .key
            .clone()
            .or_else(|| std::env::var_os("DROVE_KEY_FILE").map(Into::into));
        let key = match &key_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the cluster key {}", p.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        Ok(Agent::new(&addr, key))
    }
}

/// The job commands of `drove`.
#[derive(clap::Subcommand, Debug)]
pub enum JobCommand {
    /// Run a command as a cluster job (the modern `mosrun`): its output streams back here and
    /// `drove` exits with the job's exit code.
    Run {
        #[command(flatten)]
        agent: AgentArgs,
        /// Never move the job automatically (the balancer leaves it where it starts).
        #[arg(long)]
        pin: bool,
        /// Start the job on the best node instead (MOSIX's `mosrun -b`): the node asked
        /// compares itself with a few peers' current job counts and starts it on the one it
        /// would move it to; that node is then the job's home. Saves the migration a busy
        /// node's new job would otherwise need. Not with --checkpoint-every: such a job starts
        /// on the node asked, whose record and guard must not share the fate of the node it
        /// runs on, and the balancer moves it.
        #[arg(long)]
        best: bool,
        /// Working directory on the node; default: the cluster file area (/cluster) when the
        /// cluster has one, else /.
        #[arg(long, value_name = "DIR")]
        cwd: Option<String>,
        /// Set a variable in the job's environment (repeatable); `--env NAME` copies NAME from
        /// this shell.
        #[arg(long = "env", value_name = "NAME=VALUE|NAME")]
        env: Vec<String>,
        /// Copy this shell's environment into the job, as mosrun's jobs inherit it (except what
        /// only makes sense here: HOME, PWD, SHELL, TERM, DISPLAY, SSH_*, XDG_*, ...).
        #[arg(long)]
        copy_env: bool,
        /// Checkpoint the job every SECS seconds to another node (its home, or the next node
        /// when it runs at home); if its node dies it restarts there from the latest checkpoint.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        checkpoint_every: Option<u64>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// List the jobs of the whole cluster (any node answers for all): id, state, home, the node
    /// it runs on, migrations, exit, command; nodes that do not answer are named.
    Ps {
        #[command(flatten)]
        agent: AgentArgs,
        /// Print the agent's JSON (jobs, migrations, nodes, unreachable) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Move a running job to another node (number or name) or `home`.
    Migrate {
        #[command(flatten)]
        agent: AgentArgs,
        /// Pre-copy the memory (CRIU pre-dump rounds while the job runs) whatever its size.
        #[arg(long, conflicts_with = "no_precopy")]
        precopy: bool,
        /// Never pre-copy (by default jobs of 32 MiB or more are pre-copied).
        #[arg(long)]
        no_precopy: bool,
        job: String,
        to: String,
    },
    /// Kill a job wherever it runs.
    Kill {
        #[command(flatten)]
        agent: AgentArgs,
        job: String,
    },
    /// Stop every process of a job (SIGSTOP) where it runs; it is not migrated while frozen.
    Freeze {
        #[command(flatten)]
        agent: AgentArgs,
        job: String,
    },
    /// Resume a frozen job (SIGCONT to every process of it).
    Continue {
        #[command(flatten)]
        agent: AgentArgs,
        job: String,
    },
}

/// How a job is started ([`Agent::launch_with`]).
#[derive(Debug, Default)]
pub struct Launch<'a> {
    /// Never moved by the balancer.
    pub pin: bool,
    pub cwd: Option<&'a str>,
    pub env: &'a [(String, String)],
    pub checkpoint_every: Option<u64>,
    /// Started on the node the asked node's balancer chooses (`drove run --best`).
    pub place: bool,
}

/// Runs one job command; returns the process exit code.
pub fn run_command(cmd: &JobCommand) -> anyhow::Result<i32> {
    match cmd {
        JobCommand::Run {
            agent,
            pin,
            best,
            cwd,
            env,
            copy_env,
            checkpoint_every,
            cmd,
        } => {
            let agent = agent.agent()?;
            let env = crate::files::job_env(env, *copy_env, std::env::vars())
                .map_err(anyhow::Error::msg)?;
            let job = agent.launch_with(
                cmd,
                &Launch {
                    pin: *pin,
                    cwd: cwd.as_deref(),
                    env: &env,
                    checkpoint_every: *checkpoint_every,
                    place: *best,
                },
            )?;
            let id = job["id"].as_str().unwrap_or_default().to_owned();
            eprintln!("drove: job {id} started on node {}", job["node"]);
            catch_sigint();
            let followed = agent.follow_until(
                &id,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
                Duration::from_millis(300),
                &|| INTERRUPTED.load(Ordering::SeqCst),
            )?;
            match followed {
                Followed::Ended(done) => {
                    let (code, message) = run_outcome(&id, &done);
                    if let Some(m) = message {
                        eprintln!("{m}");
                    }
                    Ok(code)
                }
                Followed::Stopped => {
                    match agent.kill(&id) {
                        Ok(_) => eprintln!("drove: interrupted: job {id} killed"),
                        Err(e) => eprintln!("drove: interrupted; killing job {id} failed: {e}"),
                    }
                    Ok(EXIT_INTERRUPTED)
                }
            }
        }
        JobCommand::Ps { agent, json } => {
            let v = agent.agent()?.cluster_jobs()?;
            if *json {
                println!("{v:#}");
            } else {
                print!("{}", ps_table(&v));
            }
            Ok(0)
        }
        JobCommand::Migrate {
            agent,
            precopy,
            no_precopy,
            job,
            to,
        } => {
            let forced = match (precopy, no_precopy) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let rec = agent.agent()?.migrate_with(job, to, forced)?;
            let rounds = rec["precopy_rounds"].as_u64().unwrap_or(0);
            let pre = if rounds > 0 {
                format!(", pre-copy {rounds} rounds {} bytes", rec["precopy_bytes"])
            } else {
                String::new()
            };
            println!(
                "job {job}: node {} -> node {}: {} (freeze {} ms, {} bytes, total {} ms{pre}){}",
                rec["from"],
                rec["to"],
                rec["outcome"].as_str().unwrap_or("?"),
                rec["freeze_ms"],
                rec["bytes"],
                rec["total_ms"],
                rec["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            Ok(if rec["outcome"] == "moved" { 0 } else { 1 })
        }
        JobCommand::Kill { agent, job } => {
            agent.agent()?.kill(job)?;
            Ok(0)
        }
        JobCommand::Freeze { agent, job } => {
            let j = agent.agent()?.freeze(job)?;
            println!(
                "job {job}: {} on node {}",
                j["state"].as_str().unwrap_or("?"),
                j["node"]
            );
            Ok(0)
        }
        JobCommand::Continue { agent, job } => {
            let j = agent.agent()?.resume(job)?;
            println!(
                "job {job}: {} on node {}",
                j["state"].as_str().unwrap_or("?"),
                j["node"]
            );
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let a = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-drove-state: running\r\n\r\nabc")
            .unwrap();
        assert_eq!(
            (a.status, a.state.as_deref(), a.body.as_slice()),
            (200, Some("running"), &b"abc"[..])
        );
        assert!(parse(b"HTTP/1.1 200").is_none());
    }

    #[test]
    fn run_exit_codes() {
        let lost = json!({"state": "lost", "reason": "node 3 went down (no heartbeat for 5 s) while running job 1.4"});
        assert_eq!(
            run_outcome("1.4", &lost),
            (
                EXIT_LOST,
                Some("drove: job 1.4 lost: node 3 went down (no heartbeat for 5 s) while running job 1.4".into())
            )
        );
        let done = json!({"state": "exited", "exit_code": 3, "signal": null});
        assert_eq!(run_outcome("1.1", &done), (3, None));
        let killed = json!({"state": "exited", "exit_code": null, "signal": "SIGKILL"});
        assert_eq!(run_outcome("1.1", &killed).0, 137);
    }

    /// A fake agent: every request gets the next canned answer (the last one repeats).
    fn fake_agent(answers: Vec<(u16, &'static str, &'static str)>) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for (i, conn) in l.incoming().enumerate() {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let (status, state, body) = answers[i.min(answers.len() - 1)];
                let _ = write!(conn, "HTTP/1.0 {status} X\r\nx-drove-state: {state}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            }
        });
        addr
    }

    #[test]
    fn follow_stops_when_asked_and_ends_on_lost() {
        // Output reads (stdout, stderr) get nothing; the job is running: only `stop` ends it.
        let addr = fake_agent(vec![(200, "running", "")]);
        let agent = Agent::new(&addr, None);
        let calls = std::cell::Cell::new(0);
        let got = agent
            .follow_until(
                "1.1",
                &mut Vec::new(),
                &mut Vec::new(),
                Duration::from_millis(1),
                &|| {
                    calls.set(calls.get() + 1);
                    calls.get() > 3
                },
            )
            .unwrap();
        assert_eq!(got, Followed::Stopped);
        // stdout "ab", stderr "", then the job is lost.
        let addr = fake_agent(vec![
            (200, "moved", "ab"),
            (200, "moved", ""),
            (200, "moved", ""),
            (200, "moved", ""),
            (
                200,
                "lost",
                "{\"id\":\"1.1\",\"state\":\"lost\",\"reason\":\"node 2 went down\"}",
            ),
            (200, "lost", ""),
        ]);
        let agent = Agent::new(&addr, None);
        let mut out = Vec::new();
        let got = agent
            .follow("1.1", &mut out, &mut Vec::new(), Duration::from_millis(1))
            .unwrap();
        assert_eq!(got["state"], "lost");
        assert_eq!(out, b"ab");
    }

    #[test]
    fn ps_lines() {
        let v = json!({"jobs": [{"id": "1.1", "state": "moved", "home": 1, "node": 2, "migrations": 1, "exit_code": null, "signal": null, "cmd": ["awk", "BEGIN {}"]}]});
        let t = ps_table(&v);
        let row: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            ["1.1", "moved", "1", "2", "1", "-", "awk", "BEGIN", "{}"],
            "{t}"
        );
    }

    #[test]
    fn ps_names_silent_nodes_and_stale_jobs() {
        let v = json!({"jobs": [{"id": "1.1", "state": "moved", "home": 1, "node": 3, "migrations": 1, "exit_code": null, "signal": null, "cmd": ["x"], "stale": true}],
            "unreachable": [{"number": 3, "addr": "10.10.0.3", "error": "no answer in 3 s"}]});
        let t = ps_table(&v);
        let row: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[3], "3?", "{t}");
        assert!(
            t.contains("node 3 (10.10.0.3) did not answer: no answer in 3 s"),
            "{t}"
        );
    }
}
