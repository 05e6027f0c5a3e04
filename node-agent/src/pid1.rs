//! `drove-agent` as PID 1: bring the node up, then keep it up.
//!
//! Boot is a flat list of steps (mounts, consoles, modules, speed, network); every step logs its
//! failures and the boot goes on. Threads after boot: one takes every signal (reaping and power
//! signals), one reads each console, one watches for NICs and one supervises DHCP per NIC, and
//! the main thread turns network events into the node's identity and the ready line. A panic in
//! any thread is logged and parks that thread (the release profile aborts on panic, which for PID 1
//! would be a kernel panic); the others go on, so `poweroff` still works.

use crate::children::Children;
use crate::command::{self, Command, Parsed};
use crate::config::{Calibration, Network, NodeConfig, CALIBRATION_PATH, NODE_CONFIG_PATH};
use crate::identity::{self, Mac};
use crate::net::{self, NetEvent};
use crate::power::{self, PowerAction};
use crate::signals::{self, SignalAction};
use crate::sys::{RealSys, Sys};
use crate::{console, debug, error, info, warn};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufRead;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Written once the node is ready: `KEY=value` lines read by `drove-agent status`.
pub const STATE_FILE: &str = "/run/drove/node.env";
/// Kernel console log level after boot: warnings and worse (like `quiet`, one step chattier),
/// so kernel chatter does not split the agent's lines. `loglevel=` or `debug` on the kernel
/// command line keeps the kernel's own choice.
const CONSOLE_LOGLEVEL: i32 = 5;
/// How long the ready line waits for the cluster daemon to listen.
const DAEMON_READY_WAIT: Duration = Duration::from_secs(5);
/// How long without any address before the console is told.
const NO_ADDRESS_WARNING: Duration = Duration::from_secs(60);

/// What the node knows about itself, shared by the threads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeState {
    pub number: Option<u32>,
    pub name: Option<String>,
    pub addr: Option<Ipv4Addr>,
    pub speed: Option<f64>,
    /// Current address of each NIC that has one.
    pub addrs: BTreeMap<String, Ipv4Addr>,
    pub macs: Vec<Mac>,
    /// Calibration's CPU name and what the benchmark measured (`None` when pinned).
    pub cpu: Option<String>,
    pub measured: Option<f64>,
}

/// The answer to `status`: one line, like the ready line.
pub fn status_line(state: &NodeState, uptime_secs: u64) -> String {
    let nics: Vec<String> = state
        .addrs
        .iter()
        .map(|(n, a)| format!("{n}:{a}"))
        .collect();
    format!(
        "drove: status node={} addr={} uptime={}s speed={} nics={}",
        state.name.as_deref().unwrap_or("-"),
        state.addr.map_or("-".into(), |a| a.to_string()),
        uptime_secs,
        state.speed.map_or("-".into(), |s| format!("{s:.1}")),
        if nics.is_empty() {
            "-".into()
        } else {
            nics.join(",")
        },
    )
}

/// The contract line tests wait for.
pub fn ready_line(name: &str, addr: Ipv4Addr) -> String {
    format!("drove: ready node={name} addr={addr}")
}

/// Whether the kernel command line asks to keep the kernel's console log level.
pub fn keeps_kernel_loglevel(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|w| w.starts_with("loglevel=") || w == "debug" || w == "ignore_loglevel")
}

pub fn wants_debug(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == "drove.debug")
}

/// How long a node with a static network config waits, after a DHCP address, for a static one
/// before it settles for the DHCP address.
pub const STATIC_GRACE: Duration = Duration::from_secs(3);

/// The boot loop's state machine: the first address reported wins the ready line, except that
/// with a static config a static address wins over DHCP addresses (NICs not listed in a static
/// config get DHCP, e.g. a management NIC), which are taken only after [`STATIC_GRACE`].
#[derive(Debug, Default)]
pub struct Readiness {
    pub ready: bool,
    /// A DHCP address waiting out the grace period: (interface, address, since).
    pub pending: Option<(String, Ipv4Addr, Duration)>,
}

impl Readiness {
    /// Applies one network event at boot-relative time `now`; returns the identity and the
    /// interface to announce when this event makes the node ready.
    pub fn on_event(
        &mut self,
        state: &mut NodeState,
        cfg: &NodeConfig,
        ev: &NetEvent,
        now: Duration,
    ) -> Option<(identity::Identity, String, Ipv4Addr)> {
        match ev {
            NetEvent::Up {
                interface,
                addr,
                how,
                ..
            } => {
                state.addrs.insert(interface.clone(), *addr);
                if self.ready {
                    return None;
                }
                if matches!(cfg.network, Network::Static { .. }) && *how != "static" {
                    self.pending.get_or_insert((interface.clone(), *addr, now));
                    return None;
                }
                Some(self.announce(state, cfg, interface, *addr))
            }
            NetEvent::Down { interface } => {
                state.addrs.remove(interface);
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|(i, _, _)| i == interface)
                {
                    self.pending = None;
                }
                None
            }
        }
    }

    /// Settles for a pending DHCP address once the grace period is over.
    pub fn on_tick(
        &mut self,
        state: &mut NodeState,
        cfg: &NodeConfig,
        now: Duration,
    ) -> Option<(identity::Identity, String, Ipv4Addr)> {
        let (interface, addr, since) = self.pending.clone()?;
        if self.ready || now.saturating_sub(since) < STATIC_GRACE {
            return None;
        }
        Some(self.announce(state, cfg, &interface, addr))
    }

    fn announce(
        &mut self,
        state: &mut NodeState,
        cfg: &NodeConfig,
        interface: &str,
        addr: Ipv4Addr,
    ) -> (identity::Identity, String, Ipv4Addr) {
        self.ready = true;
        self.pending = None;
        let id = identity::choose(cfg, addr, &state.macs);
        state.number = Some(id.number);
        state.name = Some(id.name.clone());
        state.addr = Some(addr);
        (id, interface.to_string(), addr)
    }
}

struct Agent {
    sys: Arc<dyn Sys>,
    children: Arc<Children>,
    state: Mutex<NodeState>,
    boot: Instant,
    /// The running cluster daemon, if any.
    daemon: Mutex<Option<nix::unistd::Pid>>,
}

impl Agent {
    fn state(&self) -> MutexGuard<'_, NodeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Shuts down in a thread of its own, so the signal thread goes on reaping meanwhile.
    fn power(self: &Arc<Self>, action: PowerAction) {
        let agent = self.clone();
        spawn("power", move || power::request(agent.sys.as_ref(), action));
    }

    fn uptime_secs(&self) -> u64 {
        std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|t| {
                t.split_whitespace()
                    .next()
                    .and_then(|s| s.parse::<f64>().ok())
            })
            .map_or_else(|| self.boot.elapsed().as_secs(), |s| s as u64)
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        error!("cannot start the {name} thread: {e}");
    }
}

fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// PID 1's entry point. Never returns.
pub fn run() -> ! {
    // Before any thread exists: environment for children, and the signal mask every thread inherits.
    std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let mask = signals::handled();
    if let Err(e) = mask.thread_block() {
        error!("cannot block signals: {e}");
    }
    std::panic::set_hook(Box::new(|info| {
        error!("internal error: {info}");
        if std::process::id() == 1 {
            // Returning would abort PID 1 (panic = "abort"), i.e. panic the kernel.
            park_forever();
        }
    }));

    let children = Arc::new(Children::new());
    let sys: Arc<dyn Sys> = Arc::new(RealSys::new(children.clone()));
    let agent = Arc::new(Agent {
        sys,
        children,
        state: Mutex::new(NodeState::default()),
        boot: Instant::now(),
        daemon: Mutex::new(None),
    });

    {
        let agent = agent.clone();
        spawn("signals", move || loop {
            match mask.wait() {
                Ok(sig) => match signals::action_for(sig) {
                    SignalAction::Reap => {
                        for (pid, exit) in agent.children.reap() {
                            debug!("reaped orphan {pid} ({exit})");
                        }
                    }
                    SignalAction::Power(action) => {
                        info!("{sig}: {}", action.verb());
                        agent.power(action);
                    }
                    SignalAction::Ignore => debug!("{sig} ignored"),
                },
                Err(e) => {
                    error!("sigwait failed: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        });
    }

    if let Err(e) = boot(&agent) {
        error!("{}", console::chain(&e));
    }
    if !power::in_progress() {
        error!("boot loop ended; still reaping and taking power commands");
    }
    park_forever()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("all network event senders are gone")]
    NetworkGone,
}

fn boot(agent: &Arc<Agent>) -> Result<(), Error> {
    let sys = agent.sys.as_ref();
    // Before anything is mounted: the mounts below then sit on the lifted root.
    let own_ns = crate::jobs::criu::OWN_MOUNT_NS;
    let lifted = if own_ns {
        crate::mounts::lift_root()
    } else {
        Ok(false)
    };
    for (target, result) in crate::mounts::mount_all(sys, &crate::mounts::plan()) {
        match result {
            Ok(outcome) => debug!("{target}: {outcome:?}"),
            Err(e) => error!("{}", console::chain(&e)),
        }
    }
    let shared = if own_ns {
        crate::mounts::share_root()
    } else {
        Ok(())
    };
    ensure_stdio();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    console::set_debug(wants_debug(&cmdline));
    let consoles = open_consoles();
    info!("drove-agent {VERSION} starting as PID 1");
    // Logged only now that the console is set up.
    match (lifted, shared) {
        (Ok(l), Ok(())) => debug!("root lifted off the initramfs: {l}; mounts shared: {own_ns}"),
        (Err(e), _) | (_, Err(e)) => error!("{}", console::chain(&e)),
    }
    if let Err(e) = sys.set_ctrl_alt_del(false) {
        warn!("cannot route Ctrl-Alt-Del to the agent: {e}");
    }
    if !keeps_kernel_loglevel(&cmdline) {
        if let Err(e) = sys.set_console_loglevel(CONSOLE_LOGLEVEL) {
            debug!("cannot set the kernel console log level: {e}");
        }
    }
    for file in consoles {
        let agent = agent.clone();
        spawn("console", move || read_commands(&agent, file));
    }

    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let cfg = match NodeConfig::load(Path::new(NODE_CONFIG_PATH)) {
        Ok(cfg) => cfg,
        Err(e) => {
            error!("{}; going on with DHCP and no modules", console::chain(&e));
            NodeConfig::fallback(&release)
        }
    };
    if !release.is_empty() && cfg.kernel_release != release {
        warn!(
            "node.toml is for kernel {} but this is {release}",
            cfg.kernel_release
        );
    }

    let t = Instant::now();
    let modules_dir = Path::new("/lib/modules").join(&cfg.kernel_release);
    let report = crate::modules::load_all(sys, &modules_dir, &cfg.modules);
    for e in &report.failed {
        error!("{}", console::chain(e));
    }
    info!(
        "modules: {} loaded, {} already there, {} failed ({} ms)",
        report.loaded.len(),
        report.already.len(),
        report.failed.len(),
        t.elapsed().as_millis()
    );
    debug!("modules loaded: {}", report.loaded.join(" "));

    for device in crate::input::power_buttons(Path::new("/sys/class/input")) {
        let agent = agent.clone();
        spawn("power-button", move || {
            let press = || {
                info!("power button: powering off");
                agent.power(PowerAction::Poweroff);
            };
            if let Err(e) = crate::input::watch(&device, &press) {
                warn!("power button {}: {e}", device.display());
            }
        });
    }

    calibrate(agent);
    network(agent, &cfg)
}

/// The boot benchmark scaled or pinned by the calibration overlay.
fn calibrate(agent: &Agent) {
    let cal = Calibration::load(Path::new(CALIBRATION_PATH)).unwrap_or_else(|e| {
        error!("{}; using the measured speed", console::chain(&e));
        Calibration::default()
    });
    let measured = if cal.speed.is_some() {
        None
    } else {
        Some(crate::bench::measure(crate::bench::BUDGET))
    };
    let speed = cal.effective_speed(measured.unwrap_or(0.0));
    {
        let mut state = agent.state();
        state.speed = Some(speed);
        state.cpu = Some(cal.cpu.clone());
        state.measured = measured;
    }
    match measured {
        Some(m) => info!(
            "speed={speed:.1} (measured {m:.1}, scale {} for cpu {:?})",
            cal.scale, cal.cpu
        ),
        None => info!(
            "speed={speed:.1} (pinned by calibration for cpu {:?})",
            cal.cpu
        ),
    }
}

fn network(agent: &Arc<Agent>, cfg: &NodeConfig) -> Result<(), Error> {
    let sys = agent.sys.as_ref();
    let lo_up: Vec<String> = ["ip", "link", "set", "lo", "up"].map(String::from).into();
    if let Err(e) = net::busybox(sys, "lo", &lo_up) {
        error!("{}", console::chain(&e));
    }
    let (tx, rx) = mpsc::channel();
    {
        let agent = agent.clone();
        let network = cfg.network.clone();
        spawn("nics", move || watch_nics(&agent, &network, &tx));
    }
    let mut readiness = Readiness::default();
    let started = Instant::now();
    let mut warned = false;
    loop {
        let received = rx.recv_timeout(Duration::from_millis(250));
        let announce = {
            let mut state = agent.state();
            match &received {
                Ok(ev) => {
                    debug!("network: {ev:?}");
                    readiness.on_event(&mut state, cfg, ev, started.elapsed())
                }
                Err(_) => readiness.on_tick(&mut state, cfg, started.elapsed()),
            }
        };
        if let Some((mut id, interface, addr)) = announce {
            if id.source != identity::Source::Map {
                let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
                let macs = agent.state().macs.clone();
                if let Some(reg) = crate::register::at_boot(&cmdline, cfg, addr, &macs, &id) {
                    let mut state = agent.state();
                    state.number = Some(reg.number);
                    state.name = Some(reg.name.clone());
                    id = reg;
                }
            }
            if let Err(e) = sys.set_hostname(&id.name) {
                warn!("cannot set the hostname to {}: {e}", id.name);
            }
            debug!(
                "identity: {} (number {} from {:?}) via {interface}",
                id.name, id.number, id.source
            );
            write_state_file(&agent.state());
            // The ready line waits for the daemon's API to listen, so that whoever reads it can
            // use the API at once; a daemon that cannot start delays it by DAEMON_READY_WAIT.
            let (listening_tx, listening) = mpsc::channel();
            {
                let agent = agent.clone();
                spawn("daemon", move || supervise_daemon(&agent, listening_tx));
            }
            if listening.recv_timeout(DAEMON_READY_WAIT).is_err() {
                warn!(
                    "cluster daemon not listening after {} s; node is ready without it",
                    DAEMON_READY_WAIT.as_secs()
                );
            }
            console::line(&ready_line(&id.name, addr));
        }
        match received {
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                if !readiness.ready && !warned && started.elapsed() > NO_ADDRESS_WARNING {
                    warn!(
                        "no NIC has an address after {} s; still trying",
                        NO_ADDRESS_WARNING.as_secs()
                    );
                    warned = true;
                }
            }
            Err(RecvTimeoutError::Disconnected) if power::in_progress() => return Ok(()),
            Err(RecvTimeoutError::Disconnected) => return Err(Error::NetworkGone),
        }
    }
}

/// Finds NICs as they appear (drivers probe asynchronously, USB NICs come late) and starts DHCP
/// or applies the static address on each new one.
fn watch_nics(agent: &Arc<Agent>, network: &Network, tx: &Sender<NetEvent>) {
    let mut known: Vec<String> = Vec::new();
    let started = Instant::now();
    let mut warned = false;
    let mut scan_error_told = false;
    // Stops at shutdown: /sys is being unmounted and no new NIC matters any more.
    while !power::in_progress() {
        match net::scan(Path::new(net::SYS_CLASS_NET)) {
            Err(e) if !scan_error_told => {
                error!("{}", console::chain(&e));
                scan_error_told = true;
            }
            Err(_) => {}
            Ok(nics) => {
                for nic in nics {
                    if known.contains(&nic.name) {
                        continue;
                    }
                    known.push(nic.name.clone());
                    if let Some(mac) = nic.mac {
                        agent.state().macs.push(mac);
                    }
                    start_nic(agent, network, nic, tx);
                }
            }
        }
        if known.is_empty() && !warned && started.elapsed() > Duration::from_secs(10) {
            warn!("no ethernet NIC found yet (is its driver in the node.toml modules list?)");
            warned = true;
        }
        let period = if started.elapsed() < Duration::from_secs(10) {
            200
        } else {
            2000
        };
        std::thread::sleep(Duration::from_millis(period));
    }
}

fn start_nic(agent: &Arc<Agent>, network: &Network, nic: net::Nic, tx: &Sender<NetEvent>) {
    let mac = nic
        .mac
        .as_ref()
        .map_or("no MAC".into(), identity::format_mac);
    match network {
        Network::Dhcp => {
            info!("{}: found ({mac}); starting DHCP", nic.name);
            let (children, sys, tx) = (agent.children.clone(), agent.sys.clone(), tx.clone());
            spawn("dhcp", move || net::supervise_dhcp(children, sys, nic, tx));
        }
        Network::Static { hosts, gateway } => {
            match net::configure_static(agent.sys.as_ref(), &nic, hosts, gateway.as_deref()) {
                Ok(Some(ev)) => {
                    info!("{}: static address for {mac}", nic.name);
                    let _ = tx.send(ev);
                }
                Ok(None) => {
                    info!(
                        "{}: {mac} has no static address in node.toml; starting DHCP",
                        nic.name
                    );
                    let (children, sys, tx) =
                        (agent.children.clone(), agent.sys.clone(), tx.clone());
                    spawn("dhcp", move || net::supervise_dhcp(children, sys, nic, tx));
                }
                Err(e) => error!("{}", console::chain(&e)),
            }
        }
    }
}

/// Runs the cluster daemon (`/init daemon`) for ever: its output goes to the consoles, and when
/// it ends (crash, panic = abort, or a bug) the exit is logged and it is started again after
/// 1, 2, 4 … 30 s (back to 1 s after a run of a minute or more).
fn supervise_daemon(agent: &Arc<Agent>, listening: Sender<()>) {
    let mut delay = 1u64;
    while !power::in_progress() {
        let started = Instant::now();
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg("daemon");
        match agent.children.spawn(&mut cmd, true) {
            Err(e) => error!("cluster daemon: {}", console::chain(&e)),
            Ok(spawned) => {
                debug!("cluster daemon started (pid {})", spawned.pid);
                *agent.daemon.lock().unwrap_or_else(|p| p.into_inner()) = Some(spawned.pid);
                if let Some(out) = spawned.output {
                    for line in std::io::BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        if line.contains(crate::daemon::LISTENING) {
                            let _ = listening.send(());
                        }
                        console::line(&line);
                    }
                }
                let exit = spawned
                    .exit
                    .recv()
                    .map_or("an unknown status".to_string(), |e| e.to_string());
                *agent.daemon.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if power::in_progress() {
                    return;
                }
                if started.elapsed() >= Duration::from_secs(60) {
                    delay = 1;
                }
                error!("cluster daemon ended with {exit}; restarting it in {delay} s");
            }
        }
        std::thread::sleep(Duration::from_secs(delay));
        delay = (delay * 2).min(30);
    }
}

fn write_state_file(state: &NodeState) {
    let text = format!(
        "NODE_NAME={}\nNODE_NUMBER={}\nNODE_ADDR={}\nSPEED={}\nSPEED_MEASURED={}\nCPU={}\n",
        state.name.as_deref().unwrap_or(""),
        state.number.map_or(String::new(), |n| n.to_string()),
        state.addr.map_or(String::new(), |a| a.to_string()),
        state.speed.map_or(String::new(), |s| format!("{s:.1}")),
        state.measured.map_or(String::new(), |s| format!("{s:.1}")),
        state.cpu.as_deref().unwrap_or(""),
    );
    let path = Path::new(STATE_FILE);
    let result = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, text));
    if let Err(e) = result {
        warn!("cannot write {STATE_FILE}: {e}");
    }
}

/// Makes sure fds 0-2 are open (the kernel leaves them closed when the initramfs has no
/// `/dev/console`; devtmpfs is mounted by now).
fn ensure_stdio() {
    use nix::fcntl::{fcntl, FcntlArg};
    if (0..3).all(|fd| fcntl(fd, FcntlArg::F_GETFD).is_ok()) {
        return;
    }
    if let Ok(file) = console::open_device(Path::new("/dev/console")) {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            if fcntl(fd, FcntlArg::F_GETFD).is_err() {
                let _ = nix::unistd::dup2(file.as_raw_fd(), fd);
            }
        }
    }
}

/// Opens every console for log output; returns a second handle on each for the command reader.
fn open_consoles() -> Vec<File> {
    let listed = std::fs::read_to_string("/proc/consoles").ok();
    let mut outputs = Vec::new();
    let mut readers = Vec::new();
    let mut failed: Vec<(PathBuf, std::io::Error)> = Vec::new();
    for path in console::console_paths(listed.as_deref()) {
        match console::open_device(&path) {
            Ok(file) => {
                if let Ok(reader) = file.try_clone() {
                    readers.push(reader);
                }
                outputs.push(file);
            }
            Err(e) => failed.push((path, e)),
        }
    }
    if !outputs.is_empty() {
        console::set_outputs(outputs);
    }
    for (path, e) in failed {
        warn!("cannot open console {}: {e}", path.display());
    }
    readers
}

/// Reads command lines from one console for ever.
fn read_commands(agent: &Arc<Agent>, file: File) {
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::new();
    let mut errors = 0u32;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            // EOF (Ctrl-D on a tty, or hang-up): the console stays; try again shortly.
            Ok(0) => std::thread::sleep(Duration::from_millis(500)),
            Ok(_) => {
                errors = 0;
                handle_line(agent, &String::from_utf8_lossy(&buf));
            }
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    debug!("console read failed: {e}");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn handle_line(agent: &Arc<Agent>, line: &str) {
    match command::parse(line) {
        Parsed::Empty => {}
        Parsed::Unknown(word) => info!("{}", command::unknown_hint(&word)),
        Parsed::Command(Command::Help) => info!("{}", command::HELP),
        Parsed::Command(Command::Status) => {
            let uptime = agent.uptime_secs();
            let line = status_line(&agent.state(), uptime);
            console::line(&line);
        }
        Parsed::Command(Command::RestartDaemon) => {
            match *agent.daemon.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(pid) => {
                    info!("console: killing the cluster daemon (pid {pid}); it will be restarted");
                    if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
                        warn!("cannot kill the cluster daemon: {e}");
                    }
                }
                None => info!("the cluster daemon is not running"),
            }
        }
        Parsed::Command(Command::Power(action)) => {
            info!("console: {}", action.verb());
            agent.power(action);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::ClusterMap;

    #[test]
    fn first_address_wins_the_ready_line() {
        let mut cfg = NodeConfig::fallback("6.1");
        cfg.map = ClusterMap::parse_mosix("1 10.0.2.15 1\n", "m").unwrap();
        let mut state = NodeState {
            macs: vec![[0x52, 0x54, 0, 0x12, 0x34, 0x56]],
            ..Default::default()
        };
        let mut r = Readiness::default();
        let t = Duration::ZERO;
        let down = NetEvent::Down {
            interface: "eth1".into(),
        };
        assert_eq!(r.on_event(&mut state, &cfg, &down, t), None);
        let up = |i: &str, a: [u8; 4]| NetEvent::Up {
            interface: i.into(),
            addr: a.into(),
            prefix: Some(24),
            how: "dhcp",
        };
        let (id, _, _) = r
            .on_event(&mut state, &cfg, &up("eth0", [10, 0, 2, 15]), t)
            .unwrap();
        assert_eq!(
            ready_line(&id.name, [10, 0, 2, 15].into()),
            "drove: ready node=node1 addr=10.0.2.15"
        );
        assert_eq!(
            r.on_event(&mut state, &cfg, &up("eth1", [10, 0, 3, 15]), t),
            None
        );
        assert_eq!(state.addr, Some([10, 0, 2, 15].into()));
        assert_eq!(state.addrs.len(), 2);
        state.speed = Some(12.345);
        assert_eq!(status_line(&state, 42), "drove: status node=node1 addr=10.0.2.15 uptime=42s speed=12.3 nics=eth0:10.0.2.15,eth1:10.0.3.15");
    }

    #[test]
    fn static_address_wins_over_dhcp() {
        let mut cfg = NodeConfig::fallback("6.1");
        cfg.map = ClusterMap::parse_mosix("1 10.10.0.1 3\n", "m").unwrap();
        cfg.network = Network::Static {
            hosts: [("52:54:00:00:00:02".to_string(), "10.10.0.2/24".to_string())].into(),
            gateway: None,
        };
        let dhcp = NetEvent::Up {
            interface: "eth1".into(),
            addr: [10, 0, 2, 15].into(),
            prefix: Some(24),
            how: "dhcp",
        };
        let stat = NetEvent::Up {
            interface: "eth0".into(),
            addr: [10, 10, 0, 2].into(),
            prefix: Some(24),
            how: "static",
        };
        let s = Duration::from_secs;

        // DHCP first, static a second later: the static address is the identity.
        let (mut r, mut state) = (Readiness::default(), NodeState::default());
        assert_eq!(r.on_event(&mut state, &cfg, &dhcp, s(1)), None);
        assert_eq!(r.on_tick(&mut state, &cfg, s(2)), None);
        let (id, iface, addr) = r.on_event(&mut state, &cfg, &stat, s(2)).unwrap();
        assert_eq!(
            (id.number, iface.as_str(), addr),
            (2, "eth0", Ipv4Addr::new(10, 10, 0, 2))
        );
        assert_eq!(r.on_tick(&mut state, &cfg, s(10)), None);

        // Only DHCP (this MAC is not listed): ready after the grace period.
        let (mut r, mut state) = (Readiness::default(), NodeState::default());
        assert_eq!(r.on_event(&mut state, &cfg, &dhcp, s(1)), None);
        assert_eq!(r.on_tick(&mut state, &cfg, s(3)), None);
        let (_, _, addr) = r.on_tick(&mut state, &cfg, s(4)).unwrap();
        assert_eq!(addr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(state.addr, Some([10, 0, 2, 15].into()));
    }

    #[test]
    fn status_before_ready() {
        assert_eq!(
            status_line(&NodeState::default(), 3),
            "drove: status node=- addr=- uptime=3s speed=- nics=-"
        );
    }

    #[test]
    fn cmdline_flags() {
        assert!(keeps_kernel_loglevel("console=ttyS0 loglevel=7"));
        assert!(keeps_kernel_loglevel("debug"));
        assert!(!keeps_kernel_loglevel("console=ttyS0 panic=-1 drove.debug"));
        assert!(wants_debug("console=ttyS0 drove.debug"));
        assert!(!wants_debug("drove.debugx"));
    }
}
