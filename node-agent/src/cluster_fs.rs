//! The cluster-wide file area: an NFSv3 export (served by `drove files serve` on the image
//! server, or any NFS server) mounted at the same path (`/cluster` by default) on every node, so
//! that a job's files are where it left them after a migration.
//!
//! The cluster daemon mounts it in the background (never before the ready line), retries while
//! it is missing, and watches it once mounted. The state is one process-wide value ([`area`]):
//! the API shows it (`files` in `/api/node`), the job engine refuses jobs that need the area
//! while it is not usable, and the migration check ([`crate::jobs::files`]) knows which paths
//! every node sees.
//!
//! The mount is made with mount(2) and the kernel's text options (`addr=`, `port=`,
//! `mountport=`, `nolock`): no mount.nfs, no portmapper, no lockd/statd on the node. It is a
//! `hard` mount: when the server goes away, jobs using the area block until it is back (they
//! never write to a local stand-in that would be lost).

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Default NFS port of `drove files serve` (the standard one).
pub const DEFAULT_NFS_PORT: u16 = 2049;
/// Default MOUNT-protocol port of `drove files serve` (the one distributions fix mountd to).
pub const DEFAULT_MOUNT_PORT: u16 = 20048;
/// Default export name and mount point.
pub const DEFAULT_AREA: &str = "/cluster";
/// Default readahead of the mount, KiB (the kernel gives an NFS mount 128 KiB since 5.4: too
/// little to keep a 1 MiB `rsize` pipeline busy; see docs/files.md for the measurements).
pub const DEFAULT_READAHEAD_KB: u32 = 4096;
/// The largest readahead accepted (1 GiB).
pub const MAX_READAHEAD_KB: u32 = 1 << 20;

/// How the nodes reach the area (the `[files]` section of the cluster config, copied into
/// `/etc/drove/node.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FilesConfig {
    /// The NFS server's IPv4 address (nodes have no DNS). In QEMU's user-mode network the host
    /// is `10.0.2.2`.
    pub server: String,
    /// The export's path on the server (`drove files serve` exports its directory as `/cluster`).
    #[serde(default = "default_area")]
    pub export: String,
    /// Where every node mounts it; jobs start there by default.
    #[serde(default = "default_area")]
    pub mount: String,
    /// The server's NFS port.
    #[serde(default = "default_nfs_port")]
    pub port: u16,
    /// The server's MOUNT-protocol port.
    #[serde(default = "default_mount_port")]
    pub mount_port: u16,
    /// Extra mount options appended to drove's (e.g. `rsize=65536`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    /// The mount's readahead in KiB, set through sysfs after each mount (NFS has no mount
    /// option for it); default [`DEFAULT_READAHEAD_KB`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readahead_kb: Option<u32>,
}

fn default_area() -> String {
    DEFAULT_AREA.into()
}
fn default_nfs_port() -> u16 {
    DEFAULT_NFS_PORT
}
fn default_mount_port() -> u16 {
    DEFAULT_MOUNT_PORT
}

/// The kernel modules the NFS client needs (their dependencies come from `modules.dep`).
pub const NFS_MODULES: &[&str] = &["sunrpc", "grace", "lockd", "nfs_acl", "nfs", "nfsv3"];

impl FilesConfig {
    /// What is wrong with it, if anything (names the key).
    pub fn check(&self) -> Result<(), String> {
        if self.server.parse::<Ipv4Addr>().is_err() {
            return Err(format!(
                "files.server {:?} must be an IPv4 address (nodes have no DNS)",
                self.server
            ));
        }
        for (key, p) in [("files.export", &self.export), ("files.mount", &self.mount)] {
            let path = Path::new(p);
            if !path.is_absolute()
                || p.len() < 2
                || path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(format!(
                    "{key} {p:?} must be an absolute path below / (like /cluster)"
                ));
            }
        }
        let reserved = [
            "/proc", "/sys", "/dev", "/run", "/etc", "/bin", "/sbin", "/lib", "/usr",
        ];
        if reserved
            .iter()
            .any(|r| Path::new(&self.mount).starts_with(r))
        {
            return Err(format!(
                "files.mount {:?} would hide part of the node's own system",
                self.mount
            ));
        }
        if self.port == 0 || self.mount_port == 0 {
            return Err("files.port and files.mount-port must not be 0".into());
        }
        if self.readahead_kb.is_some_and(|kb| kb > MAX_READAHEAD_KB) {
            return Err(format!(
                "files.readahead-kb {} is more than {MAX_READAHEAD_KB} (1 GiB)",
                self.readahead_kb.unwrap_or_default()
            ));
        }
        if let Some(o) = &self.options {
            if o.contains(char::is_whitespace) {
                return Err(format!(
                    "files.options {o:?}: comma-separated, without spaces"
                ));
            }
        }
        Ok(())
    }

    /// `server:export`, the mount source.
    pub fn source(&self) -> String {
        format!("{}:{}", self.server, self.export)
    }

    /// The option string for mount(2): NFSv3 over TCP on fixed ports (no portmapper), no NLM
    /// locking (no lockd/statd on nodes), hard (a job blocks while the server is away rather than
    /// getting errors it may not check).
    pub fn mount_options(&self) -> String {
        let mut o = format!(
            "vers=3,proto=tcp,port={},mountport={},mountproto=tcp,mountvers=3,nolock,hard,timeo=600,retrans=2,addr={},mountaddr={}",
            self.port, self.mount_port, self.server, self.server
        );
        if let Some(extra) = self.options.as_deref().filter(|e| !e.is_empty()) {
            o.push(',');
            o.push_str(extra);
        }
        o
    }
}

impl FilesConfig {
    /// The readahead to set on the mount, KiB.
    pub fn readahead(&self) -> u32 {
        self.readahead_kb.unwrap_or(DEFAULT_READAHEAD_KB)
    }
}

/// The sysfs file of the readahead of the NFS mount at `mount` (its backing device, field 3 of
/// `/proc/self/mountinfo`: `/sys/class/bdi/0:53/read_ahead_kb`). The last matching line wins:
/// the mount sits on top of the read-only placeholder.
pub fn readahead_file(mountinfo: &str, mount: &Path) -> Option<PathBuf> {
    mountinfo
        .lines()
        .rev()
        .filter(|l| is_mounted(l, mount))
        .filter_map(|l| l.split_whitespace().nth(2))
        .find(|dev| {
            dev.split_once(':')
                .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok())
        })
        .map(|dev| PathBuf::from(format!("/sys/class/bdi/{dev}/read_ahead_kb")))
}

/// Where the area stands on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No `[files]` in the config: the cluster has no file area.
    Off,
    /// Configured, the first mount attempt is under way.
    Mounting,
    /// Mounted and the server answers.
    Mounted,
    /// Mounted, but the server did not answer the last probe: jobs using it block.
    Unresponsive,
    /// Not mounted (server unreachable, export refused, no NFS client...); `reason` says which.
    Missing,
}

/// The area's state as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: State,
    /// The mount point (`/cluster`), when configured.
    pub mount: Option<String>,
    /// `server:export`, when configured.
    pub source: Option<String>,
    /// Why it is missing or unresponsive.
    pub reason: Option<String>,
    /// Mount attempts so far.
    pub attempts: u64,
}

/// The process-wide file area of this node.
pub struct Area {
    pub config: Option<FilesConfig>,
    status: Mutex<Status>,
}

static AREA: OnceLock<Arc<Area>> = OnceLock::new();

/// This process's area (`Off` until [`start`] ran with a config).
pub fn area() -> Arc<Area> {
    AREA.get_or_init(|| Arc::new(Area::new(None))).clone()
}

impl Area {
    pub fn new(config: Option<FilesConfig>) -> Self {
        let status = Status {
            state: if config.is_some() {
                State::Mounting
            } else {
                State::Off
            },
            mount: config.as_ref().map(|c| c.mount.clone()),
            source: config.as_ref().map(FilesConfig::source),
            reason: None,
            attempts: 0,
        };
        Area {
            config,
            status: Mutex::new(status),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    /// The mount point when the cluster has an area (mounted or not).
    pub fn mount_point(&self) -> Option<PathBuf> {
        self.config.as_ref().map(|c| PathBuf::from(&c.mount))
    }

    /// The mount point if jobs can use it now.
    pub fn usable(&self) -> Option<PathBuf> {
        (self.lock().state == State::Mounted)
            .then(|| self.mount_point())
            .flatten()
    }

    /// `Ok` when `path` does not need the area or the area is usable; else why not, for the
    /// caller (names the node's view of the area).
    pub fn require_for(&self, path: &Path) -> Result<(), String> {
        let Some(mount) = self.mount_point() else {
            return Ok(());
        };
        if !path.starts_with(&mount) {
            return Ok(());
        }
        let s = self.status();
        match s.state {
            State::Mounted => Ok(()),
            state => Err(format!(
                "the cluster file area {} is {} on this node{}: jobs that need it are refused",
                mount.display(),
                serde_json::to_value(state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                s.reason.map(|r| format!(" ({r})")).unwrap_or_default()
            )),
        }
    }

    /// Records a new state; returns true when state or reason changed (worth a console line).
    fn set(&self, state: State, reason: Option<String>) -> bool {
        let mut s = self.lock();
        let changed = s.state != state || s.reason != reason;
        s.state = state;
        s.reason = reason;
        changed
    }
}

/// The API's `files` object.
pub fn status_json() -> serde_json::Value {
    serde_json::to_value(area().status()).unwrap_or_default()
}

/// Plain words for a mount(2) failure of an NFS mount.
pub fn explain_mount_error(errno: nix::errno::Errno, cfg: &FilesConfig) -> String {
    use nix::errno::Errno;
    let what = match errno {
        Errno::ECONNREFUSED => format!(
            "connection refused by {}:{} (is `drove files serve` running there?)",
            cfg.server, cfg.mount_port
        ),
        Errno::ETIMEDOUT | Errno::EHOSTUNREACH | Errno::ENETUNREACH | Errno::EIO => {
            format!("server {} does not answer ({})", cfg.server, errno.desc())
        }
        Errno::EACCES | Errno::EPERM => format!(
            "server {} refused the export {} to this node",
            cfg.server, cfg.export
        ),
        Errno::ENOENT => format!("server {} has no export {}", cfg.server, cfg.export),
        Errno::ENODEV => {
            "this kernel has no NFS client (modules nfs and nfsv3 not loaded, or not in the image)"
                .into()
        }
        Errno::EPROTONOSUPPORT => "the server or kernel does not support NFSv3 over TCP".into(),
        e => e.desc().to_string(),
    };
    format!("cannot mount {} on {}: {what}", cfg.source(), cfg.mount)
}

/// Is an NFS file system mounted at `mount`, per `/proc/self/mountinfo` text (field 5 is the
/// mount point, the first field after ` - ` the type)?
pub fn is_mounted(mountinfo: &str, mount: &Path) -> bool {
    mountinfo.lines().any(|l| {
        let at = l
            .split_whitespace()
            .nth(4)
            .is_some_and(|m| Path::new(m) == mount);
        let fstype = l
            .split_once(" - ")
            .and_then(|(_, rest)| rest.split_whitespace().next());
        at && matches!(fstype, Some("nfs" | "nfs4"))
    })
}

/// While the area is missing, an empty read-only tmpfs sits on the mount point: a job that
/// writes there anyway gets EROFS instead of writing to a local directory whose contents no
/// other node would see (and that the real mount would hide later).
fn placeholder(mount: &Path) -> Result<(), String> {
    std::fs::create_dir_all(mount)
        .map_err(|e| format!("cannot create the mount point {}: {e}", mount.display()))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let taken = mountinfo.lines().any(|l| {
        l.split_whitespace()
            .nth(4)
            .is_some_and(|m| Path::new(m) == mount)
    });
    if taken {
        return Ok(());
    }
    nix::mount::mount(
        Some("drove-files-missing"),
        mount,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_RDONLY
            | nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV,
        Some("size=4k,mode=0555"),
    )
    .map_err(|e| {
        format!(
            "cannot put a read-only placeholder on {}: {e}",
            mount.display()
        )
    })
}

fn console_line(text: &str) {
    crate::console::line(&format!("drove: files {text}"));
}

/// Sets up the process-wide area from the node config and, when one is configured, starts the
/// thread that mounts and watches it. Returns at once.
pub fn start(config: Option<FilesConfig>) {
    let area = Arc::new(Area::new(config.clone()));
    if AREA.set(area.clone()).is_err() {
        crate::warn!("files: the file area was set up twice; keeping the first");
        return;
    }
    let Some(cfg) = config else {
        return;
    };
    // Write dirty pages back within about 2 s (the kernel's default is 30 s): what a job wrote
    // is then on the server soon, not lost with a node that dies.
    for (knob, value) in [
        ("/proc/sys/vm/dirty_writeback_centisecs", "100"),
        ("/proc/sys/vm/dirty_expire_centisecs", "100"),
    ] {
        if let Err(e) = std::fs::write(knob, value) {
            crate::debug!("files: cannot set {knob}: {e}");
        }
    }
    if let Err(e) = cfg.check() {
        area.set(State::Missing, Some(format!("bad [files] config: {e}")));
        console_line(&format!("missing {}: bad [files] config: {e}", cfg.mount));
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("cluster-fs".into())
        .spawn(move || watch(&area, &cfg));
    if let Err(e) = spawned {
        crate::error!("files: cannot start the mount thread: {e}");
    }
}

/// Retry delays while missing: quick at first (the server may start a moment after the nodes),
/// then every 10 s.
fn retry_delay(attempt: u64) -> Duration {
    Duration::from_secs(match attempt {
        0..=2 => 2,
        3..=5 => 5,
        _ => 10,
    })
}

/// A probe of the server slower than this marks the area unresponsive.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_EVERY: Duration = Duration::from_secs(5);

fn watch(area: &Area, cfg: &FilesConfig) {
    let mount = PathBuf::from(&cfg.mount);
    if let Err(e) = placeholder(&mount) {
        crate::warn!("files: {e}");
    }
    let mut failures = 0u64;
    // A probe stuck in a hard mount keeps its thread; never start a second one meanwhile.
    let probe: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut last_probe = Instant::now();
    loop {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if !is_mounted(&mountinfo, &mount) {
            area.lock().attempts += 1;
            match mount_once(cfg) {
                Ok(()) => {
                    failures = 0;
                    set_readahead(cfg, &mount);
                    area.set(State::Mounted, None);
                    console_line(&format!("mounted {} from {}", cfg.mount, cfg.source()));
                }
                Err(reason) => {
                    let delay = retry_delay(failures);
                    failures += 1;
                    if area.set(State::Missing, Some(reason.clone())) {
                        console_line(&format!(
                            "missing {}: {reason}; retrying every {} s or less",
                            cfg.mount,
                            retry_delay(u64::MAX).as_secs()
                        ));
                    }
                    std::thread::sleep(delay);
                    continue;
                }
            }
        } else {
            let started = *probe.lock().unwrap_or_else(|p| p.into_inner());
            match started {
                Some(t) if t.elapsed() > PROBE_TIMEOUT => {
                    let reason = format!(
                        "server {} has not answered for {} s; jobs using {} wait for it",
                        cfg.server,
                        t.elapsed().as_secs(),
                        cfg.mount
                    );
                    let was = area.status().state;
                    area.set(State::Unresponsive, Some(reason.clone()));
                    if was != State::Unresponsive {
                        console_line(&format!("unresponsive {}: {reason}", cfg.mount));
                    }
                }
                Some(_) => {}
                None if last_probe.elapsed() < PROBE_EVERY => {}
                None => {
                    last_probe = Instant::now();
                    if area.status().state == State::Unresponsive {
                        area.set(State::Mounted, None);
                        console_line(&format!("mounted {}: server answers again", cfg.mount));
                    }
                    *probe.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    let (p, m) = (probe.clone(), mount.clone());
                    let _ = std::thread::Builder::new()
                        .name("cluster-fs-probe".into())
                        .spawn(move || {
                            // statfs goes to the server (FSSTAT); in a hard mount it blocks
                            // while the server is away.
                            let _ = nix::sys::statvfs::statvfs(&m);
                            *p.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        });
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Gives the fresh mount its readahead (a failure costs speed, not correctness: logged only).
fn set_readahead(cfg: &FilesConfig, mount: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(file) = readahead_file(&mountinfo, mount) else {
        crate::warn!(
            "files: no NFS mount at {} in mountinfo to set readahead on",
            mount.display()
        );
        return;
    };
    match std::fs::write(&file, cfg.readahead().to_string()) {
        Ok(()) => crate::debug!("files: {} = {} KiB", file.display(), cfg.readahead()),
        Err(e) => crate::warn!("files: cannot set {}: {e}", file.display()),
    }
}

fn mount_once(cfg: &FilesConfig) -> Result<(), String> {
    let mount = Path::new(&cfg.mount);
    std::fs::create_dir_all(mount)
        .map_err(|e| format!("cannot create the mount point {}: {e}", cfg.mount))?;
    nix::mount::mount(
        Some(cfg.source().as_str()),
        mount,
        Some("nfs"),
        nix::mount::MsFlags::empty(),
        Some(cfg.mount_options().as_str()),
    )
    .map_err(|e| explain_mount_error(e, cfg))
}

/// Flushes every dirty page of the area to the server and waits for it (NFS COMMIT included),
/// so a job's writes are on the server before another node restores it. A no-op without an area.
pub fn flush() -> Result<(), String> {
    let area = area();
    let Some(mount) = area.usable() else {
        return Ok(());
    };
    let f = std::fs::File::open(&mount).map_err(|e| format!("{}: {e}", mount.display()))?;
    // SAFETY: syncfs takes a file descriptor we own for the duration of the call.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
    if rc != 0 {
        return Err(format!(
            "syncfs {}: {}",
            mount.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FilesConfig {
        toml::from_str("server = \"10.0.2.2\"\nport = 20490\nmount-port = 20491\n").unwrap()
    }

    #[test]
    fn defaults_and_options() {
        let c = cfg();
        assert_eq!(
            (c.export.as_str(), c.mount.as_str()),
            ("/cluster", "/cluster")
        );
        assert_eq!(c.source(), "10.0.2.2:/cluster");
        let o = c.mount_options();
        for want in [
            "vers=3",
            "proto=tcp",
            "port=20490",
            "mountport=20491",
            "mountproto=tcp",
            "nolock",
            "hard",
            "addr=10.0.2.2",
            "mountaddr=10.0.2.2",
        ] {
            assert!(o.split(',').any(|x| x == want), "{want} missing in {o}");
        }
        let d: FilesConfig = toml::from_str("server = \"10.0.0.1\"\n").unwrap();
        assert_eq!((d.port, d.mount_port), (2049, 20048));
        let mut e = d.clone();
        e.options = Some("rsize=65536".into());
        assert!(e.mount_options().ends_with(",rsize=65536"));
        assert!(c.check().is_ok());
    }

    #[test]
    fn bad_configs_are_named() {
        let mut c = cfg();
        c.server = "fileserver".into();
        assert!(c.check().unwrap_err().contains("files.server"));
        let mut c = cfg();
        c.mount = "cluster".into();
        assert!(c.check().unwrap_err().contains("files.mount"));
        let mut c = cfg();
        c.mount = "/usr/local".into();
        assert!(c.check().unwrap_err().contains("hide"));
        let mut c = cfg();
        c.export = "/a/../b".into();
        assert!(c.check().unwrap_err().contains("files.export"));
        let mut c = cfg();
        c.options = Some("rsize=1, wsize=2".into());
        assert!(c.check().unwrap_err().contains("files.options"));
        assert!(toml::from_str::<FilesConfig>("server = \"1.2.3.4\"\nbogus = 1\n").is_err());
    }

    #[test]
    fn mount_errors_in_words() {
        let c = cfg();
        let t = explain_mount_error(nix::errno::Errno::ECONNREFUSED, &c);
        assert!(
            t.starts_with("cannot mount 10.0.2.2:/cluster on /cluster: connection refused"),
            "{t}"
        );
        assert!(explain_mount_error(nix::errno::Errno::ENODEV, &c).contains("no NFS client"));
        assert!(explain_mount_error(nix::errno::Errno::EACCES, &c).contains("refused the export"));
    }

    #[test]
    fn mountinfo_lookup() {
        let mi = "22 1 0:20 / / rw - rootfs rootfs rw\n39 22 0:34 / /cluster ro - tmpfs drove-files-missing ro\n40 39 0:35 / /cluster rw,relatime - nfs 10.0.2.2:/cluster rw,vers=3\n";
        assert!(is_mounted(mi, Path::new("/cluster")));
        let placeholder_only = mi.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(!is_mounted(&placeholder_only, Path::new("/cluster")));
        assert!(!is_mounted(mi, Path::new("/cluster/x")));
        assert!(!is_mounted("", Path::new("/cluster")));
    }

    #[test]
    fn readahead_goes_to_the_nfs_mounts_bdi() {
        let mi = "22 1 0:20 / / rw - rootfs rootfs rw\n39 22 0:34 / /cluster ro - tmpfs drove-files-missing ro\n40 39 0:35 / /cluster rw,relatime - nfs 10.0.2.2:/cluster rw,vers=3\n";
        assert_eq!(
            readahead_file(mi, Path::new("/cluster")),
            Some(PathBuf::from("/sys/class/bdi/0:35/read_ahead_kb"))
        );
        // Remounted after a loss: the newest (last) line counts.
        let again = format!("{mi}41 40 0:36 / /cluster rw - nfs 10.0.2.2:/cluster rw\n");
        assert_eq!(
            readahead_file(&again, Path::new("/cluster")),
            Some(PathBuf::from("/sys/class/bdi/0:36/read_ahead_kb"))
        );
        let placeholder_only = mi.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(
            readahead_file(&placeholder_only, Path::new("/cluster")),
            None
        );
        assert_eq!(readahead_file(mi, Path::new("/other")), None);
        let garbled = "40 39 x:y / /cluster rw - nfs 10.0.2.2:/cluster rw\n";
        assert_eq!(readahead_file(garbled, Path::new("/cluster")), None);
    }

    #[test]
    fn readahead_default_override_and_limit() {
        let c = cfg();
        assert_eq!(c.readahead(), DEFAULT_READAHEAD_KB);
        let c: FilesConfig = toml::from_str("server = \"10.0.0.1\"\nreadahead-kb = 128\n").unwrap();
        assert_eq!(c.readahead(), 128);
        assert!(c.check().is_ok());
        let mut c = cfg();
        c.readahead_kb = Some(MAX_READAHEAD_KB + 1);
        assert!(c.check().unwrap_err().contains("files.readahead-kb"));
        // Round trip through the node config keeps it; unset stays unset.
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("readahead-kb"), "{text}");
        assert!(!toml::to_string(&cfg()).unwrap().contains("readahead"));
    }

    #[test]
    fn requirement_follows_state() {
        let off = Area::new(None);
        assert!(off.require_for(Path::new("/cluster")).is_ok());
        assert_eq!(off.status().state, State::Off);
        let a = Area::new(Some(cfg()));
        a.set(State::Missing, Some("connection refused".into()));
        let e = a.require_for(Path::new("/cluster/run1")).unwrap_err();
        assert!(
            e.contains("/cluster is missing") && e.contains("connection refused"),
            "{e}"
        );
        assert!(a.require_for(Path::new("/tmp")).is_ok());
        assert!(a.usable().is_none());
        a.set(State::Mounted, None);
        assert!(a.require_for(Path::new("/cluster/run1")).is_ok());
        assert_eq!(a.usable(), Some(PathBuf::from("/cluster")));
    }
}
