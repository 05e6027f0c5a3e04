//! Client side of the agent's job API: `drove run`, `drove ps`, `drove migrate`, `drove kill`.
//!
//! Plain HTTP/1.0 over `std::net::TcpStream` (one request per connection, no chunked bodies),
//! like `status`. Changes carry `Authorization: Bearer <hex cluster key>`. The caller always
//! talks to one node (usually the job's home); that node forwards requests about a job that has
//! moved on, so output is read by byte offset from wherever the job runs, with no gap and no
//! duplicate across a migration.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

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

    /// Moves `id` to `to` (a node number, name or `home`); the migration record, whatever its
    /// outcome (a refused or failed migration answers 409 with the record).
    pub fn migrate(&self, id: &str, to: &str) -> Result<Value, Error> {
        let path = format!("/api/jobs/{id}/migrate");
        let a = self.request("POST", &path, Some(&json!({ "to": to })))?;
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

    /// Streams a job's stdout and stderr to `out`/`err` until it ends; returns the final job
    /// record. Output is read by offset, so a migration in between changes nothing for the reader.
    pub fn follow(
        &self,
        id: &str,
        out: &mut dyn Write,
        err: &mut dyn Write,
        poll: Duration,
    ) -> Result<Value, Error> {
        let mut offsets = [0u64; 2];
        loop {
            let got = self.drain(id, &mut offsets, out, err)?;
            if got > 0 {
                continue;
            }
            let job = self.job(id)?;
            if job["state"] == "exited" {
                // Whatever was written between the last read and the end.
                self.drain(id, &mut offsets, out, err)?;
                return Ok(job);
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
            j["node"].to_string(),
            j["migrations"].to_string(),
            exit,
            cmd.join(" ")
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
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// List the jobs one node knows: id, state, home, node, migrations, exit, command.
    Ps {
        #[command(flatten)]
        agent: AgentArgs,
        /// Print the agent's JSON (jobs and migrations) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Move a running job to another node (number or name) or `home`.
    Migrate {
        #[command(flatten)]
        agent: AgentArgs,
        job: String,
        to: String,
    },
    /// Kill a job wherever it runs.
    Kill {
        #[command(flatten)]
        agent: AgentArgs,
        job: String,
    },
}

/// Runs one job command; returns the process exit code.
pub fn run_command(cmd: &JobCommand) -> anyhow::Result<i32> {
    match cmd {
        JobCommand::Run { agent, pin, cmd } => {
            let agent = agent.agent()?;
            let job = agent.launch_pinned(cmd, *pin)?;
            let id = job["id"].as_str().unwrap_or_default().to_owned();
            eprintln!("drove: job {id} started on node {}", job["node"]);
            let done = agent.follow(
                &id,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
                Duration::from_millis(300),
            )?;
            Ok(
                match (done["exit_code"].as_i64(), done["signal"].as_str()) {
                    (Some(c), _) => c as i32,
                    (None, Some(sig)) => {
                        eprintln!("drove: job {id} killed by {sig}");
                        137
                    }
                    _ => 1,
                },
            )
        }
        JobCommand::Ps { agent, json } => {
            let v = agent.agent()?.jobs()?;
            if *json {
                println!("{v:#}");
            } else {
                print!("{}", ps_table(&v));
            }
            Ok(0)
        }
        JobCommand::Migrate { agent, job, to } => {
            let rec = agent.agent()?.migrate(job, to)?;
            println!(
                "job {job}: node {} -> node {}: {} (freeze {} ms, {} bytes, total {} ms){}",
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
}
