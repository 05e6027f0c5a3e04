//! `drove`: the builder and cluster tool. Parses the command line and dispatches; the work lives
//! in the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use drove::build::{self, Options};
use drove::config::{Config, Loaded};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "drove",
    version,
    about = "Turn surplus PCs into a process-migration cluster"
)]
struct Cli {
    /// Only print errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Also print every external command as a copy-pasteable line.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build boot media (disk.img, floppy.img, pxe/) and manifest.json.
    Build {
        /// Cluster config (TOML); default: the built-in cluster (`drove config default`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output directory.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Build only this medium (repeatable): disk, floppy, pxe.
        #[arg(long = "output", value_name = "NAME")]
        outputs: Vec<String>,
        /// Image server URL the floppy and PXE media load from (overrides outputs.server).
        #[arg(long)]
        server: Option<String>,
    },
    /// Show or check cluster configs.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Serve a PXE directory over HTTP (with range requests) for netbooting nodes, and name the
    /// nodes that boot from it in boot order (node1, node2, …).
    Serve {
        #[arg(long, default_value = "out/pxe")]
        dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Node registry file (default: nodes.json beside --dir, e.g. out/nodes.json).
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// Serve files only: nodes do not register and keep MAC-derived numbers.
        #[arg(long, conflicts_with = "state")]
        no_registry: bool,
        /// Also run dnsmasq as proxy-DHCP + TFTP on this interface (or the interface on this
        /// network, A.B.C.D/LEN) for PCs that only do classic PXE; the LAN's own DHCP server
        /// keeps giving the addresses. Needs root and Debian's dnsmasq-base.
        #[arg(long, value_name = "IFACE|NET/LEN")]
        proxy_dhcp: Option<String>,
    },
    /// List the nodes registered with the image server (number, MAC, hardware, boots).
    Nodes {
        /// Ask a running server, e.g. http://10.0.0.1:8080.
        #[arg(long, value_name = "URL", conflicts_with = "state")]
        server: Option<String>,
        /// Read the registry file (default: out/nodes.json).
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// Print the registry as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compile the migration-enabled kernel (cached; see docs/kernel.md).
    Kernel {
        #[command(subcommand)]
        command: KernelCommand,
    },
    /// Show the cluster as one agent sees it: number, name, address, up/down, load, speed, memory.
    Status {
        /// The agent to ask, HOST[:PORT] (port 7030 by default).
        #[arg(long, default_value = drove::status::DEFAULT_NODE, value_name = "ADDR[:PORT]")]
        node: String,
        /// Print the agent's JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Redraw every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Live cluster view in the terminal (like mosmon): the status table, jobs and migrations,
    /// redrawn every interval until `q` or Ctrl-C.
    Top {
        /// The agent to ask, HOST[:PORT] (port 7030 by default).
        #[arg(long, default_value = drove::status::DEFAULT_NODE, value_name = "ADDR[:PORT]")]
        node: String,
        /// Seconds between redraws (fractions allowed).
        #[arg(long, default_value_t = 2.0, value_name = "SECS")]
        interval: f64,
        /// Print one frame (no screen control, no keys) and exit.
        #[arg(long)]
        once: bool,
    },
    /// Lock a node (MOSIX `mosctl lock`): it takes no guest jobs; its own jobs stay and may
    /// still move away. Shown in `drove status`; undone by `drove unlock` or a reboot.
    Lock {
        /// The node's agent, HOST[:PORT] (port 7030 by default).
        #[arg(value_name = "NODE")]
        node: String,
        /// File holding the cluster key (64 hex digits); default: $DROVE_KEY_FILE.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Unlock a node locked with `drove lock`: it takes guest jobs again.
    Unlock {
        /// The node's agent, HOST[:PORT] (port 7030 by default).
        #[arg(value_name = "NODE")]
        node: String,
        /// File holding the cluster key (64 hex digits); default: $DROVE_KEY_FILE.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Write disk.img or floppy.img to a USB stick or disk, then read it back and compare.
    /// Refuses mounted devices, the disk holding /, and internal (non-removable) disks unless
    /// --force; shows the device's model and size and asks before writing.
    Flash {
        /// The image: out/disk.img or out/floppy.img.
        image: PathBuf,
        /// The whole block device, e.g. /dev/sdb.
        device: PathBuf,
        /// Do not ask; write at once.
        #[arg(long)]
        yes: bool,
        /// Also write to a disk that does not say it is removable (never to a mounted one or /).
        #[arg(long)]
        force: bool,
    },
    /// The cluster-wide file area (NFS) every node mounts at /cluster.
    Files {
        #[command(subcommand)]
        command: FilesCommand,
    },
    /// Rolling update after a rebuild: node by node, move its jobs away, reboot it into the
    /// image the server now hands out, wait until it is back on that image (docs/operations.md).
    Update {
        /// An agent to ask for the cluster table and jobs, HOST[:PORT] (repeatable; the others
        /// are asked too when it is the one rebooting).
        #[arg(long = "cluster", value_name = "ADDR[:PORT]", required = true)]
        cluster: Vec<String>,
        /// The image server: the new image id is read from its boot.ipxe.
        #[arg(long, value_name = "URL", conflicts_with_all = ["manifest", "image"])]
        server: Option<String>,
        /// Or the build's manifest.json (the id is on its kernel command line).
        #[arg(long, value_name = "FILE", conflicts_with = "image")]
        manifest: Option<PathBuf>,
        /// Or the image id itself (`drove.image=` of the new build).
        #[arg(long, value_name = "ID")]
        image: Option<String>,
        /// File holding the cluster key (64 hex digits); default: $DROVE_KEY_FILE.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Reach node N's API at HOST:PORT instead of its cluster address (NAT, port forwards).
        #[arg(long = "node-api", value_name = "N=HOST:PORT", value_parser = drove::update::parse_node_api)]
        node_api: Vec<(u32, String)>,
        /// Seconds a node may take from the reboot until it is back on the new image.
        #[arg(long, default_value_t = 300)]
        come_back: u64,
        /// Seconds a node may take to be drained of its jobs.
        #[arg(long, default_value_t = 600)]
        drain: u64,
    },
    #[command(flatten)]
    Jobs(drove::jobs_client::JobCommand),
}

#[derive(Subcommand)]
enum KernelCommand {
    /// Build bzImage from source with drove's config fragments (kernel/*.config).
    Build {
        /// Kernel source: a tarball or an unpacked tree (default: Debian's linux-source-6.1).
        #[arg(long)]
        source: Option<PathBuf>,
        /// Config fragment (repeatable); given fragments replace the defaults.
        #[arg(long = "fragment", value_name = "FILE")]
        fragments: Vec<PathBuf>,
        /// Also merge kernel/screen.config: VT, VGA text console and PS/2 keyboard for nodes
        /// with a screen (~45 KB more bzImage).
        #[arg(long)]
        screen: bool,
        /// Base config: tinyconfig or defconfig.
        #[arg(long, default_value = "tinyconfig")]
        base: String,
        /// Parallel compile jobs (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        /// Where bzImage, kernel.json and kernel.config go.
        #[arg(long, default_value = "out/kernel")]
        out: PathBuf,
        /// Build cache (default: ~/.cache/drove/kernel or $DROVE_KERNEL_CACHE).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum FilesCommand {
    /// Export DIR over NFSv3 (nfs-ganesha, run as root) until Ctrl-C; prints the `[files]`
    /// section nodes need.
    Serve {
        /// The directory to export.
        #[arg(long)]
        dir: PathBuf,
        /// Address and NFS port (127.0.0.1:PORT is what QEMU guests reach as 10.0.2.2:PORT).
        #[arg(long, default_value = "0.0.0.0:2049")]
        listen: SocketAddr,
        /// Port of the MOUNT protocol.
        #[arg(long, default_value_t = drove_agent::cluster_fs::DEFAULT_MOUNT_PORT)]
        mount_port: u16,
        /// The export's name, as nodes mount it.
        #[arg(long, default_value = drove_agent::cluster_fs::DEFAULT_AREA)]
        export: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the built-in default cluster config as TOML.
    Default,
    /// Parse a config (and its map file) and report problems with file:line.
    Check { file: PathBuf },
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    if let Err(err) = run(cli) {
        // The chain once, at the top: each layer names its own step.
        eprintln!("drove: error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn init_logging(quiet: bool, verbose: bool) {
    // Step lines are the normal output; library logs show with -v (commands) or DROVE_LOG.
    let level = if verbose {
        "debug"
    } else if quiet {
        "error"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DROVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("drove={level},warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}

fn load(config: Option<&PathBuf>) -> Result<Loaded> {
    Ok(match config {
        Some(path) => Loaded::from_file(path)?,
        None => Loaded::default_cluster(),
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build {
            config,
            out,
            outputs,
            server,
        } => {
            let loaded = load(config.as_ref())?;
            let mut opts = Options::new(out);
            opts.quiet = cli.quiet;
            opts.server = server;
            if !outputs.is_empty() {
                opts.outputs = Some(outputs);
            }
            build::build(&loaded, &opts).context("build failed")?;
        }
        Command::Config {
            command: ConfigCommand::Default,
        } => print!("{}", Config::default_cluster().to_toml()),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let loaded = Loaded::from_file(&file)?;
            println!(
                "{}: ok (cluster {}, {} mapped nodes)",
                file.display(),
                loaded.config.cluster.name,
                loaded.map.nodes().len()
            );
        }
        Command::Serve {
            dir,
            listen,
            state,
            no_registry,
            proxy_dhcp,
        } => {
            let state = (!no_registry)
                .then(|| state.unwrap_or_else(|| drove::registry::default_state(&dir)));
            // Stopped (dropped) when the server returns.
            let _dnsmasq = proxy_dhcp
                .map(|spec| drove::proxy_dhcp::start(&spec, listen, &dir))
                .transpose()?;
            drove::serve::serve(&dir, listen, state.as_deref())?
        }
        Command::Nodes {
            server,
            state,
            json,
        } => {
            use drove::registry::Source;
            let source = match (server, state) {
                (Some(url), _) => Source::Server(url),
                (None, Some(path)) => Source::State(path),
                (None, None) => Source::State(drove::registry::default_state(
                    std::path::Path::new(drove::serve::DEFAULT_DIR),
                )),
            };
            let nodes = drove::registry::fetch(&source)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                print!("{}", drove::registry::render(&nodes));
            }
        }
        Command::Kernel {
            command:
                KernelCommand::Build {
                    source,
                    fragments,
                    screen,
                    base,
                    jobs,
                    out,
                    cache,
                },
        } => {
            let mut o = drove::kernel_build::Options::new(out);
            if let Some(s) = source {
                o.source = s;
            }
            if !fragments.is_empty() {
                o.fragments = fragments;
            }
            if screen {
                o.fragments.push(drove::kernel_build::screen_fragment());
            }
            o.base = base.parse()?;
            if let Some(j) = jobs {
                o.jobs = j;
            }
            if let Some(c) = cache {
                o.cache = c;
            }
            o.quiet = cli.quiet;
            drove::kernel_build::build(&o).context("kernel build failed")?;
        }
        Command::Status { node, json, watch } => {
            use drove::status::{Format, Style};
            let format = if json { Format::Json } else { Format::Table };
            let style = Style::for_stdout();
            if watch {
                drove::status::watch(&node, format, style, std::time::Duration::from_secs(1))?;
            } else {
                print!("{}", drove::status::status_text(&node, format, style)?);
            }
        }
        Command::Top {
            node,
            interval,
            once,
        } => {
            anyhow::ensure!(
                interval.is_finite() && interval > 0.0 && interval <= 86_400.0,
                "--interval must be between 0 and 86400 seconds"
            );
            drove::top::run(&node, std::time::Duration::from_secs_f64(interval), once)?
        }
        Command::Lock { node, key } => lock_node(node, key, true)?,
        Command::Unlock { node, key } => lock_node(node, key, false)?,
        Command::Flash {
            image,
            device,
            yes,
            force,
        } => {
            let opts = drove::flash::Options {
                yes,
                force,
                quiet: cli.quiet,
            };
            let done = drove::flash::flash(
                &image,
                &device,
                &opts,
                &drove::flash::Roots::system(),
                &mut std::io::stdin().lock(),
            )?;
            println!(
                "drove flash: wrote {} ({}) to {} in {:.1}s, read back and verified in {:.1}s; sha256 {}",
                image.display(),
                drove::progress::human(done.bytes),
                device.display(),
                done.write_secs,
                done.verify_secs,
                done.sha256
            );
        }
        Command::Files {
            command:
                FilesCommand::Serve {
                    dir,
                    listen,
                    mount_port,
                    export,
                },
        } => drove::files::serve(&drove::files::Server {
            dir,
            listen,
            mount_port,
            export,
        })?,
        Command::Update {
            cluster,
            server,
            manifest,
            image,
            key,
            node_api,
            come_back,
            drain,
        } => {
            use drove::update;
            let image = match (server, manifest, image) {
                (Some(url), _, _) => update::image_from_server(&url)?,
                (_, Some(m), _) => update::image_from_manifest(&m)?,
                (_, _, Some(id)) => id,
                _ => anyhow::bail!(
                    "say which image to update to: --server URL, --manifest FILE or --image ID"
                ),
            };
            let key_file = key
                .or_else(|| std::env::var_os("DROVE_KEY_FILE").map(Into::into))
                .context("the update needs the cluster key: --key FILE or $DROVE_KEY_FILE")?;
            let key = std::fs::read_to_string(&key_file)
                .with_context(|| format!("cannot read the cluster key {}", key_file.display()))?
                .trim()
                .to_owned();
            let entry = cluster
                .iter()
                .map(|a| drove::status::normalize_addr(a))
                .collect::<Result<Vec<_>, _>>()?;
            let mut agents = update::Agents::new(entry, key, node_api.into_iter().collect());
            let plan = update::Plan {
                image,
                come_back: std::time::Duration::from_secs(come_back),
                drain: std::time::Duration::from_secs(drain),
            };
            let t0 = std::time::Instant::now();
            let quiet = cli.quiet;
            let done = update::run(&mut agents, &plan, &mut |line| {
                if !quiet {
                    eprintln!("drove: [{:>7.1}s] {line}", t0.elapsed().as_secs_f64());
                }
            })?;
            let updated = done
                .iter()
                .filter(|(_, o)| matches!(o, update::Outcome::Updated { .. }))
                .count();
            println!(
                "drove update: {updated} node(s) updated, {} already current, {} down and skipped; image {}",
                done.iter()
                    .filter(|(_, o)| *o == update::Outcome::AlreadyCurrent)
                    .count(),
                done.iter()
                    .filter(|(_, o)| *o == update::Outcome::SkippedDown)
                    .count(),
                plan.image
            );
        }
        Command::Jobs(cmd) => std::process::exit(drove::jobs_client::run_command(&cmd)?),
    }
    Ok(())
}

/// `drove lock` / `drove unlock`: the agent at `node` refuses (takes again) guest jobs.
fn lock_node(node: String, key: Option<PathBuf>, locked: bool) -> Result<()> {
    let agent = drove::jobs_client::AgentArgs { node, key }.agent()?;
    let path = if locked {
        "/api/node/lock"
    } else {
        "/api/node/unlock"
    };
    let v = agent.ok("POST", path, None)?;
    println!(
        "node {} {}",
        v["number"],
        if locked {
            "locked: it takes no guest jobs"
        } else {
            "unlocked: it takes guest jobs"
        }
    );
    Ok(())
}
