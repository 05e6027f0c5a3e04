//! `drove serve`: HTTP server for the PXE directory.
//!
//! Serves the files of one directory (by default `out/pxe`) read-only over HTTP/1.1 with the two
//! things iPXE needs: a correct `Content-Length` and byte-range requests (206 + `Content-Range`).
//! The file handling is tower-http's `ServeDir`, which also refuses paths that leave the directory
//! (`..`, encoded or not). Every request is logged once through `tracing` (target `drove::serve`,
//! level info): peer, method, path, status and the body bytes announced.
//!
//! With a node registry ([`Server::with_registry`], on by default in the CLI) it is also the image
//! server that names nodes in boot order: see `crate::registry` for `/api/register`, `/api/nodes`
//! and the `drove.server=` it adds to `boot.ipxe`.
//!
//! Two ways to run it: [`serve`] for the CLI (prints `drove: serving <dir> on http://<addr>/` and
//! blocks until Ctrl-C or SIGTERM), and [`bind`] + [`Server::spawn`] for tests, which run the server
//! in-process on its own thread and stop it when the returned [`Handle`] is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::HttpBody as _;
use axum::extract::{ConnectInfo, Request};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tower_http::services::ServeDir;

/// The directory `drove serve` serves when `--dir` is not given (relative to the working directory).
pub const DEFAULT_DIR: &str = "out/pxe";

/// The address `drove serve` listens on when `--listen` is not given: every interface, so that
/// machines on the LAN can netboot from it.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// How long in-flight downloads may go on after a stop request before they are cut off.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot serve {}: no such directory", .path.display())]
    MissingDir { path: PathBuf },
    #[error("cannot serve {}: not a directory", .path.display())]
    NotADir { path: PathBuf },
    #[error("cannot serve {}", .path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the HTTP runtime")]
    Runtime { source: std::io::Error },
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    #[error("HTTP server on {addr} failed")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A server bound to its address but not yet serving. Binding first lets callers ask for port 0
/// and learn the real port ([`Server::local_addr`]) before anything connects.
#[derive(Debug)]
pub struct Server {
    dir: PathBuf,
    listener: std::net::TcpListener,
    addr: SocketAddr,
    registry: Option<std::sync::Arc<crate::registry::Registry>>,
}

/// Checks that `dir` is a directory and binds `listen` (port 0 picks a free port).
pub fn bind(dir: &Path, listen: SocketAddr) -> Result<Server, Error> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::NotADir {
                path: dir.to_owned(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MissingDir {
                path: dir.to_owned(),
            })
        }
        Err(source) => {
            return Err(Error::Dir {
                path: dir.to_owned(),
                source,
            })
        }
    }
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: listen,
        source,
    })?;
    Ok(Server {
        dir: dir.to_owned(),
        listener,
        addr,
        registry: None,
    })
}

/// `drove serve`: binds, prints `drove: serving <dir> on http://<addr>/` on stdout and serves until
/// Ctrl-C or SIGTERM; with `state`, nodes register in that registry file.
pub fn serve(dir: &Path, listen: SocketAddr, state: Option<&Path>) -> Result<(), Error> {
    let server = bind(dir, listen)?;
    match state {
        Some(state) => server.with_registry(state)?.run(),
        None => server.run(),
    }
}

impl Server {
    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory served.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens (and locks) the node registry at `state`: nodes then register here at boot.
    pub fn with_registry(mut self, state: &Path) -> Result<Self, Error> {
        self.registry = Some(std::sync::Arc::new(crate::registry::Registry::open(state)?));
        Ok(self)
    }

    /// `http://<addr>/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Prints the `drove: serving …` line and serves until Ctrl-C or SIGTERM (blocking).
    pub fn run(self) -> Result<(), Error> {
        let runtime = runtime()?;
        println!("drove: serving {} on {}", self.dir.display(), self.url());
        if let Some(r) = &self.registry {
            println!("drove: node registry {}", r.path().display());
        }
        let addr = self.addr;
        let result = runtime.block_on(async move {
            let stop = async {
                shutdown_signal().await;
                tracing::info!(target: "drove::serve", "stopping");
            };
            self.serve_until(stop).await
        });
        runtime.shutdown_timeout(STOP_GRACE);
        result.map_err(|source| Error::Serve { addr, source })
    }

    /// Serves on a thread of its own until the returned handle is stopped or dropped.
    pub fn spawn(self) -> Result<Handle, Error> {
        let runtime = runtime()?;
        let addr = self.addr;
        let url = self.url();
        let dir = self.dir.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tracing::info!(target: "drove::serve", "serving {} on {url}", dir.display());
        let thread = std::thread::Builder::new()
            .name(format!("drove-serve-{}", addr.port()))
            .spawn(move || {
                let result = runtime.block_on(self.serve_until(async {
                    let _ = stop_rx.await;
                }));
                runtime.shutdown_timeout(STOP_GRACE);
                result.map_err(|source| Error::Serve { addr, source })
            })
            .map_err(|source| Error::Runtime { source })?;
        Ok(Handle {
            addr,
            dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    async fn serve_until(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let app = router(&self.dir, self.registry.clone());
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        );
        // Stop accepting at once when asked; the caller's runtime shutdown bounds in-flight
        // transfers (an iPXE client may keep a connection open forever).
        tokio::select! {
            result = server => result,
            () = stop => Ok(()),
        }
    }
}

/// A server running on its own thread (from [`Server::spawn`]). Dropping it stops the server.
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), Error>>>,
}

impl Handle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `http://<addr>/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops the server and returns how it ended.
    pub fn stop(mut self) -> Result<(), Error> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Ok(()),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            tracing::warn!(target: "drove::serve", "{e}");
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("drove-serve")
        .enable_all()
        .build()
        .map_err(|source| Error::Runtime { source })
}

fn router(dir: &Path, registry: Option<std::sync::Arc<crate::registry::Registry>>) -> Router {
    // No index.html magic and no directory listings: the directory holds boot files, nothing else.
    let files = ServeDir::new(dir).append_index_html_on_directories(false);
    let mut app = Router::new();
    if let Some(registry) = registry {
        app = app.merge(crate::registry::routes(dir, registry));
    }
    app.fallback_service(files)
        .layer(middleware::from_fn(log_access))
}

/// One access-log line per request: peer, method, path, status, body bytes announced.
async fn log_access(request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_owned(), |ConnectInfo(addr)| addr.to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let range = request
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let response = next.run(request).await;
    let bytes = response
        .body()
        .size_hint()
        .exact()
        .or_else(|| {
            response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        })
        .map_or_else(|| "-".to_owned(), |n| n.to_string());
    let status = response.status().as_u16();
    match range {
        Some(range) => tracing::info!(
            target: "drove::serve",
            "{peer} {method} {path} {status} {bytes} ({range})"
        ),
        None => tracing::info!(target: "drove::serve", "{peer} {method} {path} {status} {bytes}"),
    }
    response
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// A raw HTTP/1.1 exchange (no client library: the tests need to send paths such as `/../x`
    /// that clients normalise away).
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn request(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Reply {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(raw[..split].to_vec()).unwrap();
        let body = raw[split + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body,
        }
    }

    fn fixture() -> (tempfile::TempDir, Vec<u8>) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("pxe")).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(root.path().join("pxe/vmlinuz"), &data).unwrap();
        std::fs::write(root.path().join("secret"), b"outside").unwrap();
        (root, data)
    }

    fn start(dir: &Path) -> Handle {
        bind(dir, "127.0.0.1:0".parse().unwrap())
            .unwrap()
            .spawn()
            .unwrap()
    }

    #[test]
    fn get_whole_file() {
        let (root, data) = fixture();
        let server = start(&root.path().join("pxe"));
        assert_ne!(server.local_addr().port(), 0);
        let reply = request(server.local_addr(), "GET", "/vmlinuz", &[]);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-length"),
            Some(data.len().to_string().as_str())
        );
        assert_eq!(reply.header("accept-ranges"), Some("bytes"));
        assert_eq!(reply.body, data);
        server.stop().unwrap();
    }

    #[test]
    fn head_has_length_and_no_body() {
        let (root, data) = fixture();
        let server = start(&root.path().join("pxe"));
        let reply = request(server.local_addr(), "HEAD", "/vmlinuz", &[]);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-length"),
            Some(data.len().to_string().as_str())
        );
        assert!(reply.body.is_empty());
    }

    #[test]
    fn range_request() {
        let (root, data) = fixture();
        let server = start(&root.path().join("pxe"));
        let reply = request(
            server.local_addr(),
            "GET",
            "/vmlinuz",
            &[("Range", "bytes=1000-1999")],
        );
        assert_eq!(reply.status, 206);
        assert_eq!(
            reply.header("content-range"),
            Some(format!("bytes 1000-1999/{}", data.len()).as_str())
        );
        assert_eq!(reply.header("content-length"), Some("1000"));
        assert_eq!(reply.body, &data[1000..2000]);

        // Open-ended and suffix ranges, as download tools send them.
        let reply = request(
            server.local_addr(),
            "GET",
            "/vmlinuz",
            &[("Range", "bytes=99990-")],
        );
        assert_eq!(reply.status, 206);
        assert_eq!(reply.body, &data[99_990..]);
        let reply = request(
            server.local_addr(),
            "GET",
            "/vmlinuz",
            &[("Range", "bytes=-10")],
        );
        assert_eq!(reply.status, 206);
        assert_eq!(reply.body, &data[data.len() - 10..]);

        let reply = request(
            server.local_addr(),
            "GET",
            "/vmlinuz",
            &[("Range", "bytes=200000-")],
        );
        assert_eq!(reply.status, 416);
    }

    #[test]
    fn missing_file_is_404() {
        let (root, _) = fixture();
        let server = start(&root.path().join("pxe"));
        assert_eq!(
            request(server.local_addr(), "GET", "/nope.img", &[]).status,
            404
        );
        // Directories are not listed.
        assert_eq!(request(server.local_addr(), "GET", "/", &[]).status, 404);
    }

    #[test]
    fn path_traversal_does_not_escape() {
        let (root, _) = fixture();
        let server = start(&root.path().join("pxe"));
        for path in [
            "/../secret",
            "/%2e%2e/secret",
            "/..%2fsecret",
            "/../../../../etc/passwd",
            "/%2e%2e/%2e%2e/etc/passwd",
        ] {
            let reply = request(server.local_addr(), "GET", path, &[]);
            assert_eq!(reply.status, 404, "{path}");
            assert!(!reply.body.windows(7).any(|w| w == b"outside"), "{path}");
            assert!(!reply.body.windows(5).any(|w| w == b"root:"), "{path}");
        }
    }

    #[test]
    fn missing_dir_is_named() {
        let (root, _) = fixture();
        let dir = root.path().join("absent");
        let err = bind(&dir, "127.0.0.1:0".parse().unwrap()).unwrap_err();
        assert!(matches!(err, Error::MissingDir { .. }));
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );

        let file = root.path().join("secret");
        let err = bind(&file, "127.0.0.1:0".parse().unwrap()).unwrap_err();
        assert!(matches!(err, Error::NotADir { .. }), "{err}");
    }

    #[test]
    fn busy_address_is_named() {
        let (root, _) = fixture();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(&root.path().join("pxe"), addr).unwrap_err();
        assert!(matches!(err, Error::Bind { .. }));
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn drop_stops_the_server() {
        let (root, _) = fixture();
        let server = start(&root.path().join("pxe"));
        let addr = server.local_addr();
        drop(server);
        assert!(TcpStream::connect(addr).is_err());
    }
}
