//! The cluster file area, host side: `drove files serve` exports a directory over NFSv3 with
//! nfs-ganesha (Debian's `nfs-ganesha` + `nfs-ganesha-vfs`, a userspace NFS server), and the
//! environment `drove run` gives a job.
//!
//! Ganesha insists on registering with an rpcbind. drove gives it a private one: rpcbind runs in
//! a network and mount namespace of its own (no port 111 opened on the host, nothing shared with
//! a system rpcbind), its unix socket in a state directory that both see as `/run`; ganesha runs
//! in the host's network namespace (so QEMU's user-mode networking and the LAN reach it) with that
//! directory bound over `/run` in a mount namespace of its own. Nodes never use the portmapper:
//! they mount with fixed `port=` and `mountport=` (see `drove_agent::cluster_fs`).

use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{program} not found: install Debian's {package} (scripts/install-deps.sh does)")]
    Missing {
        program: String,
        package: &'static str,
    },
    #[error("drove files serve needs root: nfs-ganesha opens exported files by handle (CAP_DAC_READ_SEARCH) and the namespaces need CAP_SYS_ADMIN")]
    NotRoot,
    #[error("export directory {path}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

/// What to serve and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The directory exported.
    pub dir: PathBuf,
    /// Address and NFS port to listen on (`0.0.0.0` for every interface).
    pub listen: SocketAddr,
    /// The MOUNT protocol's port.
    pub mount_port: u16,
    /// The export's name as nodes mount it (`/cluster`).
    pub export: String,
}

/// ganesha.conf for `s`: NFSv3 only, TCP only, no NLM/RQUOTA (nodes mount with `nolock`), fixed
/// ports, root not squashed (jobs run as root on nodes), mounted by its pseudo path.
pub fn ganesha_conf(s: &Server) -> String {
    format!(
        r#"# written by drove files serve
NFS_CORE_PARAM {{
    Bind_Addr = {addr};
    NFS_Port = {nfs};
    MNT_Port = {mnt};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    Protocols = 3;
    mount_path_pseudo = true;
}}
NFSV4 {{ Graceless = true; }}
EXPORT {{
    Export_Id = 1;
    Path = "{dir}";
    Pseudo = "{export}";
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 3;
    Transports = TCP;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"#,
        addr = s.listen.ip(),
        nfs = s.listen.port(),
        mnt = s.mount_port,
        dir = s.dir.display(),
        export = s.export,
    )
}

/// The `[files]` section nodes need to mount what `s` serves, for a server they reach at `host`.
pub fn client_config(s: &Server, host: &str) -> String {
    format!(
        "[files]\nserver = \"{host}\"\nexport = \"{}\"\nport = {}\nmount-port = {}\n",
        s.export,
        s.listen.port(),
        s.mount_port
    )
}

fn find(program: &str, package: &'static str) -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(Error::Missing {
            program: program.into(),
            package,
        })
}

/// Runs `cmd` with `state/run` bound over `/run` in a private mount namespace (and a private
/// network namespace when `own_net`).
fn in_namespace(cmd: &mut Command, run_dir: &Path, own_net: bool) -> Result<(), Error> {
    let src = CString::new(run_dir.as_os_str().as_bytes())
        .map_err(|_| Error::Failed(format!("{} contains a NUL byte", run_dir.display())))?;
    let flags = libc::CLONE_NEWNS | if own_net { libc::CLONE_NEWNET } else { 0 };
    // SAFETY: runs between fork and exec; calls only unshare and mount with pointers to
    // C strings allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let root = c"/";
            let run = c"/run";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
                || libc::mount(
                    src.as_ptr(),
                    run.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A running server: ganesha and its private rpcbind; both are ended on drop.
pub struct Running {
    pub server: Server,
    ganesha: Child,
    rpcbind: Child,
    /// State directory (config, log, the private /run); removed on drop.
    pub state: tempfile::TempDir,
}

impl Running {
    pub fn log_path(&self) -> PathBuf {
        self.state.path().join("ganesha.log")
    }

    /// The last lines of ganesha's log (for error messages).
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path())
    }

    /// Whether ganesha still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.ganesha.try_wait(), Ok(None))
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM: ganesha unregisters and shuts its exports down cleanly.
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe { libc::kill(self.ganesha.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while matches!(self.ganesha.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.ganesha.kill();
        let _ = self.ganesha.wait();
        let _ = self.rpcbind.kill();
        let _ = self.rpcbind.wait();
    }
}

/// Starts ganesha (and its rpcbind) for `s` and returns once both ports accept connections.
pub fn start(s: &Server) -> Result<Running, Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    let ganesha = find("ganesha.nfsd", "nfs-ganesha")?;
    let rpcbind = find("rpcbind", "rpcbind")?;
    let fsal = ["/usr/lib/x86_64-linux-gnu/ganesha", "/usr/lib/ganesha"]
        .iter()
        .any(|d| Path::new(d).join("libfsalvfs.so").exists());
    if !fsal {
        return Err(Error::Missing {
            program: "ganesha's VFS backend (libfsalvfs.so)".into(),
            package: "nfs-ganesha-vfs",
        });
    }
    let meta = std::fs::metadata(&s.dir).map_err(|source| Error::Dir {
        path: s.dir.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::Dir {
            path: s.dir.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory"),
        });
    }
    if !s.export.starts_with('/') || s.export.len() < 2 || s.export.contains(['"', ' ']) {
        return Err(Error::Failed(format!(
            "export {:?} must be a path like /cluster",
            s.export
        )));
    }
    for port in [s.listen.port(), s.mount_port] {
        if std::net::TcpListener::bind((s.listen.ip(), port)).is_err() {
            return Err(Error::Failed(format!(
                "{}:{port} is taken (another NFS server?); choose --listen/--mount-port",
                s.listen.ip()
            )));
        }
    }
    let mut s = s.clone();
    s.dir = s.dir.canonicalize().map_err(|source| Error::Dir {
        path: s.dir.clone(),
        source,
    })?;
    let state = tempfile::Builder::new()
        .prefix("drove-files-")
        .tempdir()
        .map_err(|source| Error::Io {
            what: "cannot create a state directory in",
            path: std::env::temp_dir(),
            source,
        })?;
    let run_dir = state.path().join("run");
    let conf = state.path().join("ganesha.conf");
    let log = state.path().join("ganesha.log");
    std::fs::create_dir(&run_dir).map_err(|source| Error::Io {
        what: "cannot create",
        path: run_dir.clone(),
        source,
    })?;
    std::fs::write(&conf, ganesha_conf(&s)).map_err(|source| Error::Io {
        what: "cannot write",
        path: conf.clone(),
        source,
    })?;

    let mut cmd = Command::new(&rpcbind);
    cmd.arg("-f").stdout(Stdio::null()).stderr(Stdio::null());
    in_namespace(&mut cmd, &run_dir, true)?;
    let mut rpcbind_child = cmd.spawn().map_err(|source| Error::Spawn {
        program: rpcbind.display().to_string(),
        source,
    })?;
    let sock = run_dir.join("rpcbind.sock");
    let t0 = Instant::now();
    while !sock.exists() {
        if t0.elapsed() > Duration::from_secs(10) || !matches!(rpcbind_child.try_wait(), Ok(None)) {
            let _ = rpcbind_child.kill();
            let _ = rpcbind_child.wait();
            return Err(Error::Failed(format!(
                "{} did not create {} (needed by ganesha to register)",
                rpcbind.display(),
                sock.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut cmd = Command::new(&ganesha);
    cmd.arg("-F")
        .arg("-f")
        .arg(&conf)
        .arg("-L")
        .arg(&log)
        .args(["-p", "/run/ganesha.pid"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    in_namespace(&mut cmd, &run_dir, false)?;
    let ganesha_child = match cmd.spawn() {
        Ok(c) => c,
        Err(source) => {
            let _ = rpcbind_child.kill();
            let _ = rpcbind_child.wait();
            return Err(Error::Spawn {
                program: ganesha.display().to_string(),
                source,
            });
        }
    };
    let mut running = Running {
        server: s.clone(),
        ganesha: ganesha_child,
        rpcbind: rpcbind_child,
        state,
    };
    let host = match s.listen.ip() {
        std::net::IpAddr::V4(a) if a.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        ip => ip,
    };
    let t0 = Instant::now();
    loop {
        let up = [s.listen.port(), s.mount_port].iter().all(|p| {
            TcpStream::connect_timeout(&SocketAddr::new(host, *p), Duration::from_millis(200))
                .is_ok()
        });
        if up {
            return Ok(running);
        }
        if !running.alive() {
            return Err(Error::Failed(format!(
                "{} ended before serving; its log ({}):\n{}",
                ganesha.display(),
                running.log_path().display(),
                running.log_tail()
            )));
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(Error::Failed(format!(
                "{} does not listen on {}:{} and :{} after 60 s; its log:\n{}",
                ganesha.display(),
                host,
                s.listen.port(),
                s.mount_port,
                running.log_tail()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `drove files serve`: serves until SIGINT or SIGTERM (or ganesha ends: an error).
pub fn serve(s: &Server) -> Result<(), Error> {
    let handler: extern "C" fn(libc::c_int) = on_stop;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    let mut running = start(s)?;
    let host = match s.listen.ip() {
        std::net::IpAddr::V4(a) if a.is_loopback() => {
            "10.0.2.2 (QEMU user-mode guests)".to_string()
        }
        std::net::IpAddr::V4(a) if a.is_unspecified() => "<this host's LAN address>".to_string(),
        ip => ip.to_string(),
    };
    eprintln!(
        "drove: files: serving {} as NFSv3 export {} on {} (mount port {}); log {}\n\
         drove: files: nodes mount it with this in the cluster config (server = {host}):\n{}",
        running.server.dir.display(),
        running.server.export,
        running.server.listen,
        running.server.mount_port,
        running.log_path().display(),
        client_config(&running.server, host.split(' ').next().unwrap_or("?"))
    );
    while !STOP.load(Ordering::SeqCst) {
        if !running.alive() {
            return Err(Error::Failed(format!(
                "ganesha.nfsd ended; its log:\n{}",
                running.log_tail()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("drove: files: stopping");
    drop(running);
    Ok(())
}

/// The variables `drove run` sends: `--copy-env` copies the caller's environment except what
/// only makes sense on this machine (mosrun's jobs inherit their shell's environment, but a job
/// running on a node has its own home, terminal and display), then each `--env NAME=VALUE` sets
/// a variable and each `--env NAME` copies one from the caller (an error if it is not set).
pub fn job_env(
    specs: &[String],
    copy_all: bool,
    caller: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, String> {
    const LOCAL_ONLY: &[&str] = &[
        "HOME",
        "PWD",
        "OLDPWD",
        "SHELL",
        "SHLVL",
        "TERM",
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "_",
        "USER",
        "LOGNAME",
        "MAIL",
        "TMPDIR",
        "COLORTERM",
    ];
    const LOCAL_PREFIXES: &[&str] = &["SSH_", "XDG_", "DBUS_", "DROVE_", "GPG_", "TMUX"];
    let caller: Vec<(String, String)> = caller.into_iter().collect();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: String, v: String| {
        env.retain(|(old, _)| *old != k);
        env.push((k, v));
    };
    if copy_all {
        for (k, v) in &caller {
            let local =
                LOCAL_ONLY.contains(&k.as_str()) || LOCAL_PREFIXES.iter().any(|p| k.starts_with(p));
            if !local {
                set(k.clone(), v.clone());
            }
        }
    }
    for spec in specs {
        match spec.split_once('=') {
            Some(("", _)) => return Err(format!("--env {spec:?}: the name is empty")),
            Some((k, v)) => set(k.to_owned(), v.to_owned()),
            None => match caller.iter().find(|(k, _)| k == spec) {
                Some((k, v)) => set(k.clone(), v.clone()),
                None => {
                    return Err(format!(
                        "--env {spec}: {spec} is not set here (use --env {spec}=VALUE)"
                    ))
                }
            },
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        Server {
            dir: "/srv/cluster".into(),
            listen: "127.0.0.1:20490".parse().unwrap(),
            mount_port: 20491,
            export: "/cluster".into(),
        }
    }

    #[test]
    fn ganesha_config_fixes_ports_and_protocol() {
        let c = ganesha_conf(&server());
        for want in [
            "Bind_Addr = 127.0.0.1;",
            "NFS_Port = 20490;",
            "MNT_Port = 20491;",
            "Enable_NLM = false;",
            "Protocols = 3;",
            "Path = \"/srv/cluster\";",
            "Pseudo = \"/cluster\";",
            "Squash = No_Root_Squash;",
            "mount_path_pseudo = true;",
            "Name = VFS;",
        ] {
            assert!(c.contains(want), "{want} missing:\n{c}");
        }
        let cc = client_config(&server(), "10.0.2.2");
        let parsed: drove_agent::cluster_fs::FilesConfig =
            toml::from_str(cc.trim_start_matches("[files]\n")).unwrap();
        assert_eq!(
            (parsed.server.as_str(), parsed.port, parsed.mount_port),
            ("10.0.2.2", 20490, 20491)
        );
    }

    #[test]
    fn environment_rules() {
        let caller = vec![
            ("HOME".to_string(), "/home/me".to_string()),
            ("OMP_NUM_THREADS".to_string(), "4".to_string()),
            ("SSH_AUTH_SOCK".to_string(), "/tmp/s".to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ];
        assert_eq!(job_env(&[], false, caller.clone()).unwrap(), []);
        let all = job_env(&[], true, caller.clone()).unwrap();
        assert_eq!(
            all,
            [
                ("OMP_NUM_THREADS".to_string(), "4".to_string()),
                ("LANG".to_string(), "C.UTF-8".to_string())
            ]
        );
        let some = job_env(
            &["A=1".into(), "LANG".into(), "A=2".into(), "B=x=y".into()],
            false,
            caller.clone(),
        )
        .unwrap();
        assert_eq!(
            some,
            [
                ("LANG".to_string(), "C.UTF-8".to_string()),
                ("A".to_string(), "2".to_string()),
                ("B".to_string(), "x=y".to_string())
            ]
        );
        assert!(job_env(&["NOPE".into()], false, caller.clone())
            .unwrap_err()
            .contains("NOPE is not set"));
        assert!(job_env(&["=1".into()], false, caller).is_err());
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(matches!(start(&server()), Err(Error::NotRoot)));
            return;
        }
        let mut s = server();
        s.dir = "/nonexistent/drove-files".into();
        let e = start(&s).err().map(|e| e.to_string()).unwrap_or_default();
        // Either a package is missing (named) or the directory is.
        assert!(
            e.contains("install Debian's") || e.contains("/nonexistent/drove-files"),
            "{e}"
        );
    }
}
