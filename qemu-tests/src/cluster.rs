//! Several nodes on one private L2 segment, reachable from the host.
//!
//! [`ClusterImage`] builds a PXE image for a test cluster with the real `drove` binary: static
//! addresses `10.10.0.N/24` for the MACs `52:54:00:00:00:0N`, a cluster map for nodes 1–3, and a
//! cluster key of its own (the key file sits beside the config, so images built from configs in
//! different directories differ in the key only). [`Cluster`] boots nodes from such images: each
//! VM has a NIC on one [`VdeSwitch`] with its static MAC (cluster traffic, gossip) and a second,
//! user-mode NIC whose MAC is not in the config (it gets DHCP) with `hostfwd` from a free port on
//! the host's 127.0.0.1 to the agent's API on 7030. Nothing reaches the host's own network.
//!
//! Waits poll the agents' APIs with short intervals up to a deadline; nothing sleeps a fixed time
//! as a wait. Dropping a [`Cluster`] kills every VM and the switch.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use drove::status::Cluster as Table;

use crate::{
    drove_bin, run, workspace_root, Artifacts, Error, Nic, VdeSwitch, Vm, VmBuilder, BOOT_TIMEOUT,
};

/// The agent's API port inside the guest.
pub const API_PORT: u16 = 7030;

/// The agent's migration listener inside the guest (API port + 1).
pub const MIGRATE_PORT: u16 = API_PORT + 1;

/// Memory per node (TCG on 2 shared cores: keep four nodes affordable).
pub const NODE_MEMORY_MIB: u32 = 512;

/// How often [`Cluster::wait_until`] asks an agent.
pub const POLL: Duration = Duration::from_millis(100);

/// One HTTP request to an agent gives up after this long (a stuck guest must not stall a poll).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// From a node's ready line to its API answering.
pub const API_TIMEOUT: Duration = Duration::from_secs(60);

/// The test cluster's name.
pub const CLUSTER_NAME: &str = "t";

/// Nodes in the cluster map.
pub const MAPPED_NODES: u32 = 3;

/// Static hosts in the config: the mapped nodes plus one more (the wrong-key node of the tests).
pub const HOSTS: u32 = 4;

/// `52:54:00:00:00:0N` for node `n`: its NIC on the cluster segment.
pub fn cluster_mac(n: u32) -> String {
    format!("52:54:00:00:00:{n:02x}")
}

/// `10.10.0.N` for node `n`.
pub fn cluster_addr(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, u8::try_from(n).unwrap_or(u8::MAX))
}

/// A test cluster's config: a map of nodes `1..=mapped` at `10.10.0.1…`, and static
/// `10.10.0.N/24` for the MACs of nodes `1..=hosts`.
pub fn cluster_config(mapped: u32, hosts: u32) -> String {
    let mut s = format!(
        "[cluster]\nname = \"{CLUSTER_NAME}\"\nmap = [ {{ first = 1, host = \"10.10.0.1\", count = {mapped} }} ]\n\
         [network]\nmode = \"static\"\n[network.hosts]\n"
    );
    for n in 1..=hosts {
        s.push_str(&format!(
            "\"{}\" = \"{}/24\"\n",
            cluster_mac(n),
            cluster_addr(n)
        ));
    }
    s
}

/// A built PXE image for cluster nodes: kernel, the initrds concatenated into one file, the
/// command line and the cluster key's path.
#[derive(Debug, Clone)]
pub struct ClusterImage {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub key_file: PathBuf,
}

impl ClusterImage {
    /// Writes `config` to `<dir>/cluster.toml` and runs `drove -q build --output pxe` with it into
    /// `<dir>/out` (the key is created as `<dir>/cluster.key` unless one is there).
    pub fn build(drove: &Path, dir: &Path, config: &str) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            what: "cannot create",
            path: dir.into(),
            source,
        })?;
        let config_path = dir.join("cluster.toml");
        std::fs::write(&config_path, config).map_err(|source| Error::Io {
            what: "cannot write",
            path: config_path.clone(),
            source,
        })?;
        let out = dir.join("out");
        run(Command::new(drove)
            .current_dir(workspace_root())
            .args(["-q", "build", "--output", "pxe", "--config"])
            .arg(&config_path)
            .arg("--out")
            .arg(&out))?;
        let media = Artifacts::load_from(&out)?;
        let initrd = media.concat_initrds(&dir.join("initrd-all.img"))?;
        Ok(ClusterImage {
            dir: dir.to_owned(),
            kernel: media.kernel()?,
            initrd,
            cmdline: media.cmdline().to_owned(),
            key_file: dir.join("cluster.key"),
        })
    }

    /// The cluster key as hex (for API calls that change state).
    pub fn key_hex(&self) -> Result<String, Error> {
        std::fs::read_to_string(&self.key_file)
            .map(|s| s.trim().to_owned())
            .map_err(|source| Error::Io {
                what: "cannot read",
                path: self.key_file.clone(),
                source,
            })
    }
}

/// The two images the cluster tests use, built once per process: `main` (the cluster) and
/// `other` (the same config in another directory, so another cluster key).
#[derive(Debug, Clone)]
pub struct TestImages {
    pub main: ClusterImage,
    pub other: ClusterImage,
}

/// Builds (once per process) the test images with the real `drove` ([`drove_bin`]) under
/// `<workspace>/target/tmp/drove-cluster-images/<pid>`; directories left by earlier processes that
/// are gone are removed first.
pub fn test_images() -> Result<TestImages, Error> {
    static IMAGES: OnceLock<Mutex<Option<TestImages>>> = OnceLock::new();
    let mut slot = IMAGES
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(images) = slot.as_ref() {
        return Ok(images.clone());
    }
    let drove = drove_bin()?;
    let base = workspace_root().join("target/tmp/drove-cluster-images");
    remove_stale(&base);
    let dir = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    let started = Instant::now();
    let config = cluster_config(MAPPED_NODES, HOSTS);
    let main = ClusterImage::build(&drove, &dir.join("main"), &config)?;
    let other = ClusterImage::build(&drove, &dir.join("other"), &config)?;
    eprintln!(
        "drove-qemu-tests: cluster images built in {:.1}s under {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    let images = TestImages { main, other };
    *slot = Some(images.clone());
    Ok(images)
}

fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let alive = name
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for `hostfwd`).
pub fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
        what: "cannot bind",
        path: "127.0.0.1:0".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            what: "cannot bind",
            path: "127.0.0.1:0".into(),
            source,
        })
}

/// One running node.
#[derive(Debug)]
pub struct Node {
    pub number: u32,
    pub vm: Vm,
    /// Host side of the API forward: `127.0.0.1:<port>`.
    pub api: SocketAddr,
    /// Host side of the forward to the migration listener (tests of its authentication).
    pub migrate: SocketAddr,
    /// The ready line it printed.
    pub ready: String,
    /// The node name from the ready line (`nodeN` for mapped nodes; outside the map the agent
    /// derives a number from the MAC).
    pub name: String,
    /// Power-on to the ready line.
    pub boot_time: Duration,
}

/// N nodes on one private switch. Node numbers are 1-based (`node1` is number 1).
pub struct Cluster {
    // Field order: VMs die before the switch.
    nodes: Vec<(u32, Option<Node>)>,
    images: Vec<(u32, Arc<ClusterImage>)>,
    boots: Vec<(u32, u32)>,
    /// Nodes 1..=mapped were started by `start` and are in the map.
    mapped: u32,
    switch: VdeSwitch,
    prefix: String,
    /// RAM of each VM.
    memory_mib: u32,
    /// vCPUs of each VM.
    cpus: u32,
    /// Node number → its cluster NIC, instead of a port on `switch`.
    cluster_nic: Option<ClusterNic>,
}

/// Makes node `number`'s NIC on the cluster segment (its MAC is set by the cluster).
pub type ClusterNic = Box<dyn Fn(u32) -> Result<Nic, Error> + Send + Sync>;

/// How [`Cluster::start_with`] makes its VMs.
pub struct NodeOptions {
    pub memory_mib: u32,
    pub cpus: u32,
    /// `None`: a port on the cluster's vde switch.
    pub cluster_nic: Option<ClusterNic>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            memory_mib: NODE_MEMORY_MIB,
            cpus: 1,
            cluster_nic: None,
        }
    }
}

impl Cluster {
    /// Boots nodes 1..=n from `image` at once and waits for every ready line (each checked to be
    /// `node=nodeN addr=10.10.0.N`).
    pub fn start(n: u32, image: &ClusterImage) -> Result<Self, Error> {
        Self::start_named("cluster", n, image)
    }

    /// [`Cluster::start`] with VM names `<prefix>-nodeN`.
    pub fn start_named(prefix: &str, n: u32, image: &ClusterImage) -> Result<Self, Error> {
        Self::start_sized(prefix, n, image, NODE_MEMORY_MIB)
    }

    /// [`Cluster::start_named`] with `memory_mib` of RAM per VM (default [`NODE_MEMORY_MIB`]).
    pub fn start_sized(
        prefix: &str,
        n: u32,
        image: &ClusterImage,
        memory_mib: u32,
    ) -> Result<Self, Error> {
        Self::start_on_sized(prefix, n, image, VdeSwitch::start()?, memory_mib)
    }

    /// [`Cluster::start_named`] on a switch the caller started (and may have plugged a
    /// [`crate::HostNetns`] into first, so a server there is up before the nodes boot).
    pub fn start_on(
        prefix: &str,
        n: u32,
        image: &ClusterImage,
        switch: VdeSwitch,
    ) -> Result<Self, Error> {
        Self::start_on_sized(prefix, n, image, switch, NODE_MEMORY_MIB)
    }

    fn start_on_sized(
        prefix: &str,
        n: u32,
        image: &ClusterImage,
        switch: VdeSwitch,
        memory_mib: u32,
    ) -> Result<Self, Error> {
        let opts = NodeOptions {
            memory_mib,
            ..NodeOptions::default()
        };
        Self::start_with(prefix, n, image, switch, opts)
    }

    /// [`Cluster::start_on`] with VMs made as `opts` says (vCPUs, RAM, the cluster NIC).
    pub fn start_with(
        prefix: &str,
        n: u32,
        image: &ClusterImage,
        switch: VdeSwitch,
        opts: NodeOptions,
    ) -> Result<Self, Error> {
        let mut cluster = Cluster {
            nodes: Vec::new(),
            images: Vec::new(),
            boots: Vec::new(),
            mapped: n,
            switch,
            prefix: prefix.to_owned(),
            memory_mib: opts.memory_mib,
            cpus: opts.cpus,
            cluster_nic: opts.cluster_nic,
        };
        let image = Arc::new(image.clone());
        let mut spawned = Vec::new();
        for number in 1..=n {
            spawned.push(cluster.spawn(number, &image)?);
        }
        for node in spawned {
            let node = Self::finish_boot(node, true)?;
            cluster.put(node);
        }
        Ok(cluster)
    }

    fn put(&mut self, node: Node) {
        let number = node.number;
        match self.nodes.iter_mut().find(|(n, _)| *n == number) {
            Some(slot) => slot.1 = Some(node),
            None => self.nodes.push((number, Some(node))),
        }
    }

    /// Starts node `number`'s VM from `image` without waiting.
    fn spawn(&mut self, number: u32, image: &Arc<ClusterImage>) -> Result<Node, Error> {
        let boots = match self.boots.iter_mut().find(|(n, _)| *n == number) {
            Some((_, count)) => {
                *count += 1;
                *count
            }
            None => {
                self.boots.push((number, 1));
                1
            }
        };
        match self.images.iter_mut().find(|(n, _)| *n == number) {
            Some(slot) => slot.1 = Arc::clone(image),
            None => self.images.push((number, Arc::clone(image))),
        }
        let name = if boots == 1 {
            format!("{}-node{number}", self.prefix)
        } else {
            format!("{}-node{number}-boot{boots}", self.prefix)
        };
        let port = free_port()?;
        let migrate_port = free_port()?;
        let cluster_nic = match &self.cluster_nic {
            Some(make) => make(number)?,
            None => Nic::vde(&self.switch),
        };
        let vm = VmBuilder::new(&name)?
            .memory_mib(self.memory_mib)
            .cpus(self.cpus)
            // no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can
            // miss its ticks and panic ("IO-APIC + timer doesn't work"); the usual setting for
            // overcommitted guests, and only for these VMs, not the images' own command line.
            .kernel(
                &image.kernel,
                Some(image.initrd.clone()),
                format!("{} no_timer_check", image.cmdline),
            )
            .nic(cluster_nic.mac(cluster_mac(number)))
            .nic(
                Nic::user()
                    .mac(format!("52:54:00:00:01:{number:02x}"))
                    .hostfwd(port, API_PORT)
                    .hostfwd(migrate_port, MIGRATE_PORT),
            )
            .spawn()?;
        Ok(Node {
            number,
            vm,
            api: SocketAddr::from(([127, 0, 0, 1], port)),
            migrate: SocketAddr::from(([127, 0, 0, 1], migrate_port)),
            ready: String::new(),
            name: String::new(),
            boot_time: Duration::ZERO,
        })
    }

    /// Waits for the ready line and checks the address in it (static, from the MAC) and, for a
    /// node in the map (`mapped`), the name `nodeN`.
    fn finish_boot(mut node: Node, mapped: bool) -> Result<Node, Error> {
        let line = node.vm.wait_ready(BOOT_TIMEOUT)?;
        node.boot_time = node.vm.uptime();
        let re = regex::Regex::new(r"drove: ready node=(\S+) addr=(\S+)").map_err(|e| {
            Error::Cluster {
                what: e.to_string(),
            }
        })?;
        let (name, addr) = re
            .captures(&line)
            .map(|c| (c[1].to_owned(), c[2].to_owned()))
            .ok_or_else(|| Error::Cluster {
                what: format!("{}: malformed ready line {line:?}", node.vm.name()),
            })?;
        let expected_name = format!("node{}", node.number);
        if addr != cluster_addr(node.number).to_string() || (mapped && name != expected_name) {
            return Err(Error::Cluster {
                what: format!("{}: ready line {line:?}, expected addr={} (and node={expected_name} if mapped)", node.vm.name(), cluster_addr(node.number)),
            });
        }
        node.name = name;
        // The API may come up a moment after the ready line (DHCP on the forwarded NIC, the
        // daemon starting): a node counts as booted once it answers.
        let api = [(node.number, node.api.to_string())];
        let answered =
            poll_until(&api, Instant::now(), API_TIMEOUT, |_, _| true).map_err(|pending| {
                Error::Condition {
                    node: node.number,
                    what: "an answer from the API".into(),
                    timeout: API_TIMEOUT,
                    last: pending
                        .into_iter()
                        .next()
                        .map(|(_, last)| last)
                        .unwrap_or_default(),
                    report: node.vm.report(),
                }
            })?;
        let api_after = answered.first().map_or(Duration::ZERO, |o| o.after);
        eprintln!(
            "drove-qemu-tests: {} ready after {:.1}s, API answering {:.1}s later: http://{}/api/cluster",
            node.vm.name(),
            node.boot_time.as_secs_f64(),
            api_after.as_secs_f64(),
            node.api
        );
        node.ready = line;
        Ok(node)
    }

    /// Boots one more node, `number`, from `image` (for instance one with another cluster key)
    /// on the same switch, and waits for its ready line. `number` picks the MAC and so the static
    /// address; a node outside the map may name itself differently (see [`Node::name`]).
    pub fn add(&mut self, number: u32, image: &ClusterImage) -> Result<&Node, Error> {
        if self.get(number).is_some() {
            return Err(Error::Cluster {
                what: format!("node {number} is running already"),
            });
        }
        let node = self.spawn(number, &Arc::new(image.clone()))?;
        let node = Self::finish_boot(node, false)?;
        self.put(node);
        self.node(number)
    }

    fn get(&self, number: u32) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|(n, _)| *n == number)
            .and_then(|(_, node)| node.as_ref())
    }

    /// Running node `number`.
    pub fn node(&self, number: u32) -> Result<&Node, Error> {
        self.get(number).ok_or_else(|| Error::Cluster {
            what: format!("node {number} is not running"),
        })
    }

    /// Console lines of every running node that contain `needle`, each prefixed `node<n>: `
    /// (for failure messages: e.g. the agents' `jobs:` lines across the cluster).
    pub fn console_lines_with(&self, needle: &str) -> String {
        let mut out = String::new();
        for n in self.running() {
            let lines = self
                .node(n)
                .map(|node| node.vm.console_lines())
                .unwrap_or_default();
            for l in lines.iter().filter(|l| l.contains(needle)) {
                out.push_str(&format!("node{n}: {l}\n"));
            }
        }
        out
    }

    /// Numbers of the running nodes.
    pub fn running(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.is_some())
            .map(|(n, _)| *n)
            .collect()
    }

    pub fn switch(&self) -> &VdeSwitch {
        &self.switch
    }

    /// `127.0.0.1:<port>` forwarded to node `number`'s API.
    pub fn api(&self, number: u32) -> Result<SocketAddr, Error> {
        Ok(self.node(number)?.api)
    }

    /// `GET path` on node `number`'s API, as JSON.
    pub fn get_json(&self, number: u32, path: &str) -> Result<serde_json::Value, Error> {
        let api = self.api(number)?;
        drove::status::get_json(&api.to_string(), path, REQUEST_TIMEOUT).map_err(|source| {
            Error::Api {
                node: number,
                source,
            }
        })
    }

    /// Node `number`'s cluster table (`GET /api/cluster`).
    pub fn table(&self, number: u32) -> Result<Table, Error> {
        let api = self.api(number)?;
        drove::status::fetch_timeout(&api.to_string(), REQUEST_TIMEOUT)
            .map(|(table, _)| table)
            .map_err(|source| Error::Api {
                node: number,
                source,
            })
    }

    /// Kills node `number`'s QEMU at once (a power failure) and returns when it is gone; the
    /// instant just before the kill is returned so callers can time what follows.
    pub fn kill(&mut self, number: u32) -> Result<Instant, Error> {
        let slot = self
            .nodes
            .iter_mut()
            .find(|(n, node)| *n == number && node.is_some())
            .ok_or_else(|| Error::Cluster {
                what: format!("node {number} is not running"),
            })?;
        let node = slot.1.take().ok_or_else(|| Error::Cluster {
            what: format!("node {number} is not running"),
        })?;
        let at = Instant::now();
        node.vm.kill();
        node.vm.keep_dir(false);
        drop(node);
        eprintln!("drove-qemu-tests: node {number} killed");
        Ok(at)
    }

    /// Boots node `number` again from the image it last ran, after [`Cluster::kill`], and waits for
    /// its ready line. The API gets a new host port.
    pub fn restart(&mut self, number: u32) -> Result<&Node, Error> {
        if self.get(number).is_some() {
            self.kill(number)?;
        }
        let image = self
            .images
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, image)| Arc::clone(image))
            .ok_or_else(|| Error::Cluster {
                what: format!("node {number} never ran"),
            })?;
        let mapped = number <= self.mapped;
        let node = self.spawn(number, &image)?;
        let node = Self::finish_boot(node, mapped)?;
        self.put(node);
        self.node(number)
    }

    /// Polls node `observer`'s cluster table every [`POLL`] until `predicate` holds, for at most
    /// `timeout`; returns the table that satisfied it and how long it took.
    pub fn wait_until<F>(
        &self,
        observer: u32,
        timeout: Duration,
        what: &str,
        mut predicate: F,
    ) -> Result<(Table, Duration), Error>
    where
        F: FnMut(&Table) -> bool,
    {
        let mut seen = self.wait_all(&[observer], Instant::now(), timeout, what, |_, t| {
            predicate(t)
        })?;
        let first = seen.pop().ok_or_else(|| Error::Cluster {
            what: "no observer".into(),
        })?;
        Ok((first.table, first.after))
    }

    /// Polls the tables of all `observers` round-robin until `predicate(observer, table)` has held
    /// once for each, at most until `since + timeout`; returns, per observer, the table and the
    /// time from `since` to the poll that saw it. See [`poll_until`].
    pub fn wait_all<F>(
        &self,
        observers: &[u32],
        since: Instant,
        timeout: Duration,
        what: &str,
        predicate: F,
    ) -> Result<Vec<Observed>, Error>
    where
        F: FnMut(u32, &Table) -> bool,
    {
        let apis = observers
            .iter()
            .map(|n| Ok((*n, self.api(*n)?.to_string())))
            .collect::<Result<Vec<_>, Error>>()?;
        poll_until(&apis, since, timeout, predicate).map_err(|pending| {
            let (node, last) = pending.into_iter().next().unwrap_or((0, String::new()));
            let report = self.get(node).map(|n| n.vm.report()).unwrap_or_default();
            Error::Condition {
                node,
                what: what.to_owned(),
                timeout,
                last,
                report,
            }
        })
    }

    /// Asks every running node for its table once.
    pub fn tables(&self) -> Vec<(u32, Result<Table, Error>)> {
        self.running()
            .into_iter()
            .map(|n| (n, self.table(n)))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Vm's own Drop kills each QEMU; do it before the switch goes.
        self.nodes.clear();
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("running", &self.running())
            .field("switch", &self.switch.sock())
            .finish()
    }
}

/// What one observer saw when a wait's condition held.
#[derive(Debug, Clone)]
pub struct Observed {
    pub node: u32,
    pub table: Table,
    /// From the wait's `since` to the answer that satisfied the condition.
    pub after: Duration,
}

/// Polls the agents at `observers` (`(node number, host:port)`) round-robin, every [`POLL`], until
/// `predicate(node, table)` has held once for each, at most until `since + timeout`. Request
/// errors count as "not yet" (an agent may still be starting, or be slow under TCG). On timeout,
/// returns every observer still pending with its last answer (the rendered table or the error).
pub fn poll_until<F>(
    observers: &[(u32, String)],
    since: Instant,
    timeout: Duration,
    mut predicate: F,
) -> Result<Vec<Observed>, Vec<(u32, String)>>
where
    F: FnMut(u32, &Table) -> bool,
{
    let deadline = since + timeout;
    let mut done: Vec<Observed> = Vec::new();
    let mut last: Vec<String> = vec!["no answer yet".into(); observers.len()];
    loop {
        for (i, (node, addr)) in observers.iter().enumerate() {
            if done.iter().any(|o| o.node == *node) {
                continue;
            }
            match drove::status::fetch_timeout(addr, REQUEST_TIMEOUT) {
                Ok((table, _)) => {
                    if predicate(*node, &table) {
                        done.push(Observed {
                            node: *node,
                            table,
                            after: since.elapsed(),
                        });
                    } else {
                        last[i] =
                            drove::status::render(&table, addr, drove::status::Style::default());
                    }
                }
                Err(e) => last[i] = error_chain(&e),
            }
        }
        if done.len() == observers.len() {
            done.sort_by_key(|o| o.node);
            return Ok(done);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(observers
                .iter()
                .zip(last)
                .filter(|((node, _), _)| !done.iter().any(|o| o.node == *node))
                .map(|((node, _), last)| (*node, last))
                .collect());
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// `error: cause: cause`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}

/// True when every node in `numbers` is in `table` with state `state`.
pub fn all_in_state(table: &Table, numbers: &[u32], state: drove::status::State) -> bool {
    numbers
        .iter()
        .all(|n| table.node(*n).is_some_and(|node| node.state == state))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use drove::status::State;
    use std::io::{Read, Write};

    /// A fake agent on 127.0.0.1:0 answering `GET /api/cluster` with the table `answer` gives for
    /// the n-th request (0-based), or garbage when it gives `None`.
    fn fake_agent(answer: impl Fn(usize) -> Option<String> + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 1024];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let response = match answer(i) {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    ),
                    None => "not http".into(),
                };
                let _ = conn.write_all(response.as_bytes());
            }
        });
        addr
    }

    fn table(self_number: u32, states: &[(u32, &str)]) -> String {
        let nodes: Vec<String> = states
            .iter()
            .map(|(n, s)| {
                format!(
                    r#"{{"number":{n},"name":"node{n}","addr":"10.10.0.{n}","state":"{s}","load":0.1,"speed":1000.0,"mem_free":1,"mem_total":2,"jobs":0,"guest_jobs":0,"last_heard_ms":100,"conflict":null}}"#
                )
            })
            .collect();
        format!(
            r#"{{"cluster":"t","self":{self_number},"nodes":[{}]}}"#,
            nodes.join(",")
        )
    }

    #[test]
    fn poll_until_waits_for_every_observer() {
        // Node 1 sees node 3 down from its 3rd answer on, after garbage first; node 2 from its 5th.
        let a = fake_agent(|i| match i {
            0 => None,
            1 => Some(table(1, &[(1, "up"), (2, "up"), (3, "up")])),
            _ => Some(table(1, &[(1, "up"), (2, "up"), (3, "down")])),
        });
        let b = fake_agent(|i| {
            Some(table(
                2,
                &[
                    (1, "up"),
                    (2, "up"),
                    (3, if i < 4 { "suspect" } else { "down" }),
                ],
            ))
        });
        let since = Instant::now();
        let seen = poll_until(&[(1, a), (2, b)], since, Duration::from_secs(20), |_, t| {
            all_in_state(t, &[3], State::Down)
        })
        .unwrap();
        assert_eq!(seen.iter().map(|o| o.node).collect::<Vec<_>>(), [1, 2]);
        // Polls are POLL apart: node 2's 5th answer comes at least 4 polls after the start.
        assert!(seen[1].after >= POLL * 4, "{:?}", seen[1].after);
        assert!(seen[0].after < seen[1].after);
        assert_eq!(seen[1].table.self_number, 2);
    }

    #[test]
    fn poll_until_times_out_with_the_last_answer() {
        let a = fake_agent(|_| Some(table(1, &[(1, "up"), (2, "suspect")])));
        let dead = format!("127.0.0.1:{}", free_port().unwrap());
        let start = Instant::now();
        let pending = poll_until(
            &[(1, a), (2, dead.clone())],
            start,
            Duration::from_millis(700),
            |_, t| all_in_state(t, &[2], State::Up),
        )
        .unwrap_err();
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(5),
            "{elapsed:?}"
        );
        assert_eq!(pending.len(), 2);
        assert!(pending[0].1.contains("suspect"), "{}", pending[0].1);
        assert!(
            pending[1]
                .1
                .contains(&format!("cannot reach the agent at {dead}")),
            "{}",
            pending[1].1
        );
    }

    #[test]
    fn config_lists_static_hosts_and_the_map() {
        let c = cluster_config(3, 4);
        assert!(
            c.contains("map = [ { first = 1, host = \"10.10.0.1\", count = 3 } ]"),
            "{c}"
        );
        assert!(
            c.contains("\"52:54:00:00:00:04\" = \"10.10.0.4/24\""),
            "{c}"
        );
        assert!(c.contains("mode = \"static\""), "{c}");
        assert_eq!(cluster_mac(3), "52:54:00:00:00:03");
        assert_eq!(cluster_addr(2).to_string(), "10.10.0.2");
    }
}
