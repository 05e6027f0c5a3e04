//! The cluster daemon: `/init daemon`, a child process of PID 1 started once the node has its
//! identity and restarted by PID 1 when it ends (see `pid1::supervise_daemon`). It runs the gossip
//! protocol on UDP `api_port` and the HTTP API on TCP `api_port`, on a tokio runtime of its own,
//! so a bug here costs a restart, never PID 1.
//!
//! Its inputs are files PID 1 wrote or the image holds: `/etc/drove/node.toml`,
//! `/etc/drove/cluster.key` and `/run/drove/node.env` (identity, address, speed, calibration).
//! Its log lines go to stdout, which PID 1 copies to every console.

use crate::api::{self, CalibrationInfo, Shared};
use crate::config::{NodeConfig, CLUSTER_KEY_PATH, NODE_CONFIG_PATH};
use crate::gossip::{Config, Entry, EventKind, Membership};
use crate::{console, error, info, warn};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::broadcast;

/// Starts the line the daemon logs once its sockets are bound (PID 1 waits for it).
pub const LISTENING: &str = "cluster daemon listening:";

/// How often the daemon wakes to age entries (gossip itself goes out once a `period`).
const TICK: Duration = Duration::from_millis(100);

/// `KEY=value` lines (node.env) → map.
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The map's (number, address) pairs; hostnames cannot be resolved in the initramfs and are
/// returned separately so they can be logged.
pub fn map_peers(cfg: &NodeConfig) -> (Vec<(u32, Ipv4Addr)>, Vec<String>) {
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    for (n, host) in cfg.map.nodes() {
        match host.parse() {
            Ok(a) => peers.push((n, a)),
            Err(_) => skipped.push(host),
        }
    }
    (peers, skipped)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `drove-agent daemon`: returns the exit code.
pub fn main() -> i32 {
    console::set_debug(crate::pid1::wants_debug(
        &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
    ));
    let cfg = NodeConfig::load(Path::new(NODE_CONFIG_PATH)).unwrap_or_else(|e| {
        error!("{}; cluster daemon uses defaults", console::chain(&e));
        NodeConfig::fallback("")
    });
    // The file area mounts in the background: never before the ready line, never blocking.
    crate::cluster_fs::start(cfg.files.clone());
    let env = parse_env(&std::fs::read_to_string(crate::pid1::STATE_FILE).unwrap_or_default());
    let (Some(addr), Some(number)) = (
        env.get("NODE_ADDR")
            .and_then(|a| a.parse::<Ipv4Addr>().ok()),
        env.get("NODE_NUMBER").and_then(|n| n.parse::<u32>().ok()),
    ) else {
        error!(
            "cluster daemon: {} has no NODE_ADDR/NODE_NUMBER yet",
            crate::pid1::STATE_FILE
        );
        return 1;
    };
    let name = env
        .get("NODE_NAME")
        .cloned()
        .unwrap_or_else(|| cfg.name_for(number));
    let speed: f64 = env.get("SPEED").and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let calibration = CalibrationInfo {
        cpu: env.get("CPU").cloned().unwrap_or_else(|| "unknown".into()),
        measured: env.get("SPEED_MEASURED").and_then(|s| s.parse().ok()),
        speed,
    };
    let key_text = std::fs::read_to_string(CLUSTER_KEY_PATH).ok();
    let key = key_text.as_deref().and_then(crate::wire::parse_key);
    if key.is_none() {
        error!(
            "no usable cluster key at {CLUSTER_KEY_PATH}: this node cannot join; API is read-only"
        );
    }
    let (peers, skipped) = map_peers(&cfg);
    for host in skipped {
        warn!("cluster map: {host:?} is not an IPv4 address; skipped (no DNS on nodes)");
    }
    let started = Instant::now();
    let wall = unix_ms();
    let me = Entry {
        number,
        name,
        addr,
        incarnation: wall.max(1),
        heartbeat: 0,
        age_ms: 0,
        load: crate::gossip::Load {
            speed,
            ..Default::default()
        },
        leaving: false,
    };
    let uptime_at_start = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|s| s.parse().ok()))
        .unwrap_or(0.0);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let shared = Arc::new(Shared {
        membership: Mutex::new(Membership::new(
            Config::new(&cfg.cluster, cfg.discovery),
            key.as_deref().unwrap_or(&[]),
            me,
            peers,
            0,
        )),
        events: broadcast::channel(256).0,
        key_hex: key.as_ref().map(hex::encode),
        kernel,
        calibration,
        started,
        wall_start_ms: wall,
        uptime_at_start,
        poweroff: Box::new(|| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(1),
                crate::client::signal_for(crate::power::PowerAction::Poweroff),
            );
        }),
        reboot: Box::new(|| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(1),
                crate::client::signal_for(crate::power::PowerAction::Reboot),
            );
        }),
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cluster daemon: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(serve(shared, cfg.api_port, key.is_some())) {
        Ok(()) => 0,
        Err(e) => {
            error!("cluster daemon: {e}");
            1
        }
    }
}

async fn serve(shared: Arc<Shared>, port: u16, gossip: bool) -> std::io::Result<()> {
    let any = SocketAddr::from(([0, 0, 0, 0], port));
    let tcp = TcpListener::bind(any)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on tcp {any}: {e}")))?;
    let udp = Arc::new(
        UdpSocket::bind(any)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind udp {any}: {e}")))?,
    );
    {
        let m = shared.membership();
        info!(
            "{LISTENING} {} (number {}) at {}; gossip udp/{port}, API http://{}:{port}/api/cluster",
            m.me().name,
            m.me().number,
            m.me().addr,
            m.me().addr
        );
    }
    let app = api::router(shared.clone()).merge(crate::jobs::api::start(shared.clone(), port));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(tcp, app).await {
            error!("API server ended: {e}");
        }
    });
    if gossip {
        let (s, u) = (shared.clone(), udp.clone());
        tokio::spawn(async move { receive(s, u).await });
    }
    {
        // Sampled from a plain thread that wakes on its own, away from the runtime's bursts of
        // work (otherwise a busy tokio worker is counted in every sample).
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("load".into())
            .spawn(move || {
                let mut sampler = crate::load::Sampler::default();
                loop {
                    let speed = shared.membership().me().load.speed;
                    let mut load = sampler.sample_proc(speed);
                    let mut m = shared.membership();
                    // Job counts are kept up to date by the balancer (jobs/balance.rs).
                    (load.jobs, load.guest_jobs) = (m.me().load.jobs, m.me().load.guest_jobs);
                    m.set_load(load);
                    drop(m);
                    std::thread::sleep(Duration::from_millis(1000));
                }
            })?;
    }
    let mut interval = tokio::time::interval(TICK);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = term.recv() => {
                let out = shared.membership().leave();
                for (to, bytes) in out {
                    let _ = udp.send_to(&bytes, (to, port)).await;
                }
                info!("cluster daemon: leaving the cluster");
                return Ok(());
            }
        }
        let now = shared.now();
        let (out, events, lines) = {
            let mut m = shared.membership();
            let out = if gossip { m.tick(now) } else { Vec::new() };
            let events = m.take_events();
            let lines: Vec<String> = events
                .iter()
                .filter(|e| e.kind == EventKind::Conflict)
                .map(|e| conflict_line(e.number, &m.claimants(e.number), m.me().addr))
                .collect();
            (out, events, lines)
        };
        for line in lines {
            console::line(&line);
        }
        for (to, bytes) in out {
            if let Err(e) = udp.send_to(&bytes, (to, port)).await {
                crate::debug!("gossip to {to}: {e}");
            }
        }
        for e in events {
            match e.kind {
                EventKind::Conflict => {}
                kind => info!(
                    "cluster: {} {} (number {}, {})",
                    e.name,
                    kind.as_str(),
                    e.number,
                    e.addr
                ),
            }
            let _ = shared.events.send(e);
        }
    }
}

/// The console line for a number conflict: `drove: conflict number=3 addrs=10.10.0.3,10.10.0.4`,
/// with ` self=<addr>` when this node is one of them.
pub fn conflict_line(number: u32, addrs: &[Ipv4Addr], me: Ipv4Addr) -> String {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let mine = if addrs.contains(&me) {
        format!(" self={me}")
    } else {
        String::new()
    };
    format!(
        "drove: conflict number={number} addrs={}{mine}",
        list.join(",")
    )
}

async fn receive(shared: Arc<Shared>, udp: Arc<UdpSocket>) {
    let mut buf = vec![0u8; crate::wire::MAX_DATAGRAM + 1];
    loop {
        let (n, from) = match udp.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                crate::debug!("gossip receive: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let SocketAddr::V4(from) = from else { continue };
        let now = shared.now();
        let result = shared.membership().receive(now, *from.ip(), &buf[..n]);
        if let Err((reason, true)) = result {
            warn!("gossip from {} dropped: {reason} (further drops from it are counted, logged once a minute)", from.ip());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_lines() {
        let a = |d| Ipv4Addr::new(10, 10, 0, d);
        assert_eq!(
            conflict_line(3, &[a(3), a(4)], a(3)),
            "drove: conflict number=3 addrs=10.10.0.3,10.10.0.4 self=10.10.0.3"
        );
        assert_eq!(
            conflict_line(3, &[a(3), a(4)], a(1)),
            "drove: conflict number=3 addrs=10.10.0.3,10.10.0.4"
        );
    }

    #[test]
    fn env_and_map_peers() {
        let env = parse_env("NODE_NAME=node1\nNODE_NUMBER=1\nNODE_ADDR=10.10.0.1\nSPEED=12.5\n");
        assert_eq!(env["NODE_ADDR"], "10.10.0.1");
        let mut cfg = NodeConfig::fallback("6.1");
        cfg.map =
            crate::map::ClusterMap::parse_mosix("1 10.10.0.1 2\n5 headnode 1\n", "m").unwrap();
        let (peers, skipped) = map_peers(&cfg);
        assert_eq!(
            peers,
            vec![
                (1, Ipv4Addr::new(10, 10, 0, 1)),
                (2, Ipv4Addr::new(10, 10, 0, 2))
            ]
        );
        assert_eq!(skipped, vec!["headnode".to_string()]);
    }
}
