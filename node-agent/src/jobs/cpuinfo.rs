//! CPU compatibility for migration: a job dumped on one CPU must only be restored on a CPU that
//! has every feature its image needs (`criu restore` refuses otherwise, after the freeze and the
//! transfer were paid for).
//!
//! - At start every node runs `criu cpuinfo dump` once and gossips a digest of the image
//!   (`cpu` in the load vector). Nodes with the same digest have the same CPU features.
//! - For a peer whose digest differs, the source asks that peer (`POST /api/cpuinfo/check` with
//!   its own image; cluster key needed) to run `criu cpuinfo check` against it: the check must
//!   run on the target's CPU, with the same default `--cpu-cap` as the restore it predicts. The
//!   answer is cached per digest, so a cluster of a few CPU models costs a few checks in all.
//! - The balancer only chooses peers whose digest is known good ([`Compat::verdict`]). A node
//!   or peer whose digest is unknown (CRIU cannot dump it there, or an agent too old to gossip
//!   one) is not blocked: the migration's own failure and the 30 s back-off remain.

use super::criu;
use crate::children::Children;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the dump and the checks run.
pub const DIR: &str = "/run/drove/cpuinfo";
/// The image file CRIU writes and reads.
pub const IMAGE: &str = "cpuinfo.img";
/// A cpuinfo image is a few hundred bytes; anything much larger is not one.
pub const MAX_IMAGE: usize = 64 << 10;
/// An ask that got no answer (peer unreachable, no key) is retried after this long.
pub const RETRY_MS: u64 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Criu(#[from] criu::Error),
    #[error("cpuinfo image of {0} bytes refused (at most {MAX_IMAGE})")]
    TooBig(usize),
    #[error("asking {addr} for a cpuinfo check: {detail}")]
    Ask { addr: String, detail: String },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The digest gossiped for a cpuinfo image: 16 bytes of SHA-256, as hex.
pub fn digest(image: &[u8]) -> String {
    hex::encode(&Sha256::digest(image)[..16])
}

/// `criu cpuinfo dump` / `check` command lines.
pub fn args(verb: &str, dir: &Path, log: &Path) -> Vec<String> {
    vec![
        "cpuinfo".into(),
        verb.into(),
        "-D".into(),
        dir.display().to_string(),
        "-v2".into(),
        "-o".into(),
        log.display().to_string(),
    ]
}

/// Runs `criu cpuinfo dump` into `dir` (created 0700) and returns the image.
pub fn dump(children: &Children, dir: &Path) -> Result<Vec<u8>, Error> {
    make_dir(dir)?;
    let log = dir.join("dump.log");
    criu::run(
        children,
        &args("dump", dir, &log),
        &log,
        Duration::from_secs(60),
    )?;
    let path = dir.join(IMAGE);
    std::fs::read(&path).map_err(io("read", &path))
}

fn make_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))
}

/// Runs `criu cpuinfo check` of `image` (another node's dump) on this CPU, in a directory of
/// its own under `dir` that is removed afterwards. `Ok(Err(explanation))`: CRIU says no.
pub fn check(children: &Children, dir: &Path, image: &[u8]) -> Result<Result<(), String>, Error> {
    if image.len() > MAX_IMAGE {
        return Err(Error::TooBig(image.len()));
    }
    let work = dir.join(format!("check-{}", digest(image)));
    let _ = std::fs::remove_dir_all(&work);
    make_dir(&work)?;
    let path = work.join(IMAGE);
    std::fs::write(&path, image).map_err(io("write", &path))?;
    let log = work.join("check.log");
    let result = criu::run(
        children,
        &args("check", &work, &log),
        &log,
        Duration::from_secs(60),
    );
    let _ = std::fs::remove_dir_all(&work);
    match result {
        Ok(_) => Ok(Ok(())),
        // CRIU ran and said no: that is the answer, not an error of the check.
        Err(criu::Error::Failed { explanation, .. }) => Ok(Err(explanation)),
        Err(e) => Err(e.into()),
    }
}

/// Which CPU digests this node's jobs can be restored on, as far as it knows.
#[derive(Debug, Clone, Default)]
pub struct Compat {
    /// This node's digest ("" when CRIU could not dump it).
    pub mine: String,
    /// Peer digest → the check's answer.
    verdicts: BTreeMap<String, bool>,
    /// Peer digest → when it was last asked without an answer.
    asked: BTreeMap<String, u64>,
}

impl Compat {
    pub fn new(mine: String) -> Self {
        Compat {
            mine,
            ..Default::default()
        }
    }

    /// `Some(true)`: jobs from here restore on a CPU with digest `peer`; `Some(false)`: they do
    /// not (CRIU said so); `None`: not known yet (to be asked). Unknown digests on either side
    /// cannot be checked and count as compatible (see the module comment).
    pub fn verdict(&self, peer: &str) -> Option<bool> {
        if self.mine.is_empty() || peer.is_empty() || peer == self.mine {
            return Some(true);
        }
        self.verdicts.get(peer).copied()
    }

    /// The digests to ask about now, each with one peer (number) that has it: unknown ones not
    /// asked in the last [`RETRY_MS`].
    pub fn to_ask(&self, now: u64, peers: &[(u32, String)]) -> Vec<(String, u32)> {
        let mut out: BTreeMap<String, u32> = BTreeMap::new();
        for (number, d) in peers {
            if self.verdict(d).is_some() || out.contains_key(d) {
                continue;
            }
            if self
                .asked
                .get(d)
                .is_some_and(|t| now < t.saturating_add(RETRY_MS))
            {
                continue;
            }
            out.insert(d.clone(), *number);
        }
        out.into_iter().collect()
    }

    /// The answer of a check of digest `peer`: `Some(ok)`, or `None` when no answer came.
    pub fn record(&mut self, now: u64, peer: &str, answer: Option<bool>) {
        match answer {
            Some(ok) => {
                self.asked.remove(peer);
                self.verdicts.insert(peer.to_owned(), ok);
            }
            None => {
                self.asked.insert(peer.to_owned(), now);
            }
        }
    }
}

/// Asks the agent at `addr:port` to check `image` against its CPU: `Ok(true|false)` is its
/// answer. Plain HTTP/1.0 with the cluster key, like the job API's forwarding.
pub fn ask(
    addr: std::net::Ipv4Addr,
    port: u16,
    key_hex: &str,
    image: &[u8],
) -> Result<bool, Error> {
    use std::io::{Read, Write};
    let fail = |detail: String| Error::Ask {
        addr: format!("{addr}:{port}"),
        detail,
    };
    let timeout = Duration::from_secs(90);
    let mut s = std::net::TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(5))
        .map_err(|e| fail(e.to_string()))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    let head = format!(
        "POST /api/cpuinfo/check HTTP/1.0\r\nHost: {addr}:{port}\r\nAuthorization: Bearer {key_hex}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        image.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(image))
        .map_err(|e| fail(e.to_string()))?;
    let mut resp = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut resp)
        .map_err(|e| fail(e.to_string()))?;
    let (status, _, _, body) =
        super::api::parse_response(&resp).ok_or_else(|| fail("malformed HTTP answer".into()))?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match (status, v["compatible"].as_bool()) {
        (200, Some(ok)) => Ok(ok),
        _ => Err(fail(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ))),
    }
}

/// The target side of [`ask`]: `POST /api/cpuinfo/check`, body = a cpuinfo image; key needed
/// (it makes this node run CRIU on the bytes). `{"compatible": bool, "error": ...}`.
pub async fn route(
    axum::extract::State(ctx): axum::extract::State<super::api::Ctx>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::Json;
    use serde_json::json;
    if !ctx.shared.authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "this needs the cluster key: Authorization: Bearer <hex key>"})),
        )
            .into_response();
    }
    if body.is_empty() || body.len() > MAX_IMAGE {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("body must be a cpuinfo image (1 to {MAX_IMAGE} bytes), got {} bytes", body.len())})),
        )
            .into_response();
    }
    let engine = ctx.engine.clone();
    let from = digest(&body);
    let answer =
        tokio::task::spawn_blocking(move || check(engine.children(), Path::new(DIR), &body)).await;
    match answer {
        Ok(Ok(Ok(()))) => {
            crate::info!("jobs: cpuinfo {from} checked: jobs from it can be restored here");
            Json(json!({"compatible": true, "error": null})).into_response()
        }
        Ok(Ok(Err(why))) => {
            crate::info!("jobs: cpuinfo {from} checked: not compatible with this CPU: {why}");
            Json(json!({"compatible": false, "error": why})).into_response()
        }
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": crate::console::chain(&e)})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_command_lines() {
        assert_eq!(digest(b"x").len(), 32);
        assert_ne!(digest(b"x"), digest(b"y"));
        let a = args("check", Path::new("/run/drove/cpuinfo/c"), Path::new("/l"));
        assert_eq!(
            a.join(" "),
            "cpuinfo check -D /run/drove/cpuinfo/c -v2 -o /l"
        );
    }

    #[test]
    fn verdicts_by_digest() {
        let mut c = Compat::new("aa".into());
        // (peer digest, verdict before any check)
        for (peer, want) in [
            ("aa", Some(true)),
            ("", Some(true)),
            ("bb", None),
            ("cc", None),
        ] {
            assert_eq!(c.verdict(peer), want, "{peer:?}");
        }
        let peers = vec![
            (2, "aa".to_string()),
            (3, "bb".to_string()),
            (4, "bb".to_string()),
            (5, "cc".to_string()),
        ];
        // One ask per unknown digest, to the first peer that has it.
        assert_eq!(
            c.to_ask(0, &peers),
            vec![("bb".to_string(), 3), ("cc".to_string(), 5)]
        );
        c.record(0, "bb", Some(false));
        c.record(0, "cc", None);
        assert_eq!(c.verdict("bb"), Some(false));
        assert_eq!(c.verdict("cc"), None);
        // No answer: asked again only after the retry time.
        assert!(c.to_ask(1_000, &peers).is_empty());
        assert_eq!(c.to_ask(RETRY_MS, &peers), vec![("cc".to_string(), 5)]);
        c.record(RETRY_MS, "cc", Some(true));
        assert_eq!(c.verdict("cc"), Some(true));
        assert!(c.to_ask(RETRY_MS * 2, &peers).is_empty());
        // This node's own digest unknown (CRIU could not dump here): nothing to check.
        let c = Compat::new(String::new());
        assert_eq!(c.verdict("bb"), Some(true));
        assert!(c.to_ask(0, &peers).is_empty());
    }
}
