//! The cluster configuration a build starts from (TOML), and the built-in default cluster.
//!
//! Paths in a config file are relative to the file's directory. The cluster map may be inline
//! (`[[cluster.map]]` tables) or a file in the seed's `/etc/mosix.map` format (`cluster.map-file`).

use crate::compress::Compression;
use drove_agent::cluster_fs::{FilesConfig, NFS_MODULES};
use drove_agent::config::{toml_message, Network};
use drove_agent::map::{self, ClusterMap, MapEntry};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The NICs found in surplus PCs and in QEMU, plus what CRIU and the agent need at run time.
pub const DEFAULT_DRIVERS: &[&str] = &[
    // NICs: Intel, Realtek, DEC, AMD, NE2000 clones, virtio.
    "e1000",
    "e1000e",
    "r8169",
    "8139too",
    "8139cp",
    "tulip",
    "pcnet32",
    "ne2k-pci",
    "virtio_net",
    "virtio_pci",
    // CRIU: socket diagnostics for dump, nf_tables for its network lock. The agent loads in this
    // order: crc32c_generic must precede libcrc32c (a modules.softdep `pre:` the agent does not
    // read), or libcrc32c fails with ENOENT and nf_tables with it.
    "unix_diag",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    "netlink_diag",
    "af_packet_diag",
    "crc32c_generic",
    "libcrc32c",
    "nfnetlink",
    "nf_tables",
    // DHCP client raw sockets; ACPI power button for clean poweroff.
    "af_packet",
    "button",
    "evdev",
];

pub const DEFAULT_CMDLINE: &str = "console=tty0 console=ttyS0,115200 panic=30 quiet";
pub const DEFAULT_SERVER: &str = "http://10.0.2.2:8080";
pub const DEFAULT_EPOCH: u64 = 1_700_000_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub cluster: ClusterSection,
    #[serde(default = "dhcp")]
    pub network: Network,
    #[serde(default)]
    pub kernel: KernelSection,
    #[serde(default)]
    pub initramfs: InitramfsSection,
    #[serde(default)]
    pub overlays: OverlaySection,
    #[serde(default)]
    pub outputs: OutputSection,
    /// The cluster-wide file area (NFS) every node mounts (see docs/files.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesConfig>,
}

fn dhcp() -> Network {
    Network::Dhcp
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterSection {
    pub name: String,
    #[serde(default = "default_node_name")]
    pub node_name: String,
    /// Let nodes that are not in the map join when seen on the LAN.
    #[serde(default = "yes")]
    pub discovery: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub map: Vec<MapEntry>,
    /// A map in `/etc/mosix.map` format, instead of or in addition to `map`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_file: Option<PathBuf>,
    /// Where the cluster key lives; default: beside the config file (`<stem>.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

fn default_node_name() -> String {
    "node{n}".into()
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KernelSection {
    /// A bzImage; default: the newest `vmlinuz-*` in `/boot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    /// Output directory of `drove kernel build` (holding `bzImage` and `kernel.json`): boot the
    /// compiled kernel, which has every driver built in, so the image carries no modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiled: Option<PathBuf>,
    /// The kernel's modules tree; default: `/lib/modules/<release>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<PathBuf>,
    pub cmdline: String,
    /// Modules to ship and load at boot (dependencies are added from `modules.dep`).
    pub drivers: Vec<String>,
}

impl Default for KernelSection {
    fn default() -> Self {
        KernelSection {
            image: None,
            compiled: None,
            modules: None,
            cmdline: DEFAULT_CMDLINE.into(),
            drivers: DEFAULT_DRIVERS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InitramfsSection {
    pub compression: Compression,
    pub criu: PathBuf,
    pub busybox: PathBuf,
    /// The `drove-agent` binary; default: beside the running `drove` (same cargo profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<PathBuf>,
}

impl Default for InitramfsSection {
    fn default() -> Self {
        InitramfsSection {
            compression: Compression::Zstd,
            criu: "/usr/sbin/criu".into(),
            busybox: "/bin/busybox".into(),
            agent: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OverlaySection {
    /// A directory under `overlays/calibration/` (the `mosctl setyard` of today), or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
    /// Overlay names (directories or `.tar` files under an overlay directory) or paths.
    #[serde(default)]
    pub user: Vec<String>,
    /// Where overlay names are looked up; default: `overlays/` beside the config, then drove's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<PathBuf>,
    #[serde(default)]
    pub allow_setuid: bool,
    #[serde(default)]
    pub allow_devices: bool,
}

impl Default for OverlaySection {
    fn default() -> Self {
        OverlaySection {
            calibration: Some("qemu".into()),
            user: Vec::new(),
            search: Vec::new(),
            allow_setuid: false,
            allow_devices: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OutputSection {
    /// Which media to write: any of `disk`, `floppy`, `pxe`.
    pub build: Vec<String>,
    /// The image server (`drove serve`) the floppy and PXE media load from.
    pub server: String,
}

impl Default for OutputSection {
    fn default() -> Self {
        OutputSection {
            build: vec!["disk".into(), "floppy".into(), "pxe".into()],
            server: DEFAULT_SERVER.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot read cluster map {path}")]
    ReadMap {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Map(#[from] map::Error),
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A loaded config and where it came from (for relative paths and the key location).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The config file, or `None` for the built-in default.
    pub source: Option<PathBuf>,
    /// The resolved cluster map (inline entries plus the map file).
    pub map: ClusterMap,
}

impl Config {
    /// The built-in default: one cluster on DHCP, every supported NIC, all three media, the
    /// QEMU calibration, and the image server at QEMU's user-mode host address.
    pub fn default_cluster() -> Self {
        Config {
            cluster: ClusterSection {
                name: "drove".into(),
                node_name: default_node_name(),
                discovery: true,
                map: Vec::new(),
                map_file: None,
                key_file: None,
            },
            network: Network::Dhcp,
            kernel: KernelSection::default(),
            initramfs: InitramfsSection::default(),
            overlays: OverlaySection::default(),
            outputs: OutputSection::default(),
            files: None,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

impl Loaded {
    pub fn default_cluster() -> Self {
        Loaded {
            config: Config::default_cluster(),
            source: None,
            map: ClusterMap::default(),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        Self::from_str(&text, path)
    }

    pub fn from_str(text: &str, path: &Path) -> Result<Self, Error> {
        let mut config: Config = toml::from_str(text).map_err(|e| Error::Parse {
            path: path.into(),
            // toml_message gives "line N: ..."; make it "file:N: ...".
            message: toml_message(text, &e)
                .trim_start_matches("line ")
                .to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in [
            &mut config.kernel.image,
            &mut config.kernel.modules,
            &mut config.kernel.compiled,
            &mut config.initramfs.agent,
            &mut config.cluster.map_file,
            &mut config.cluster.key_file,
        ]
        .into_iter()
        .flatten()
        {
            rel(p);
        }
        config.overlays.search.iter_mut().for_each(rel);
        if let Some(files) = &config.files {
            files.check().map_err(|message| Error::Invalid {
                path: path.display().to_string(),
                message,
            })?;
            // The NFS client: shipped and loaded at boot (built in with a compiled kernel).
            let fold = |d: &str| d.replace('-', "_");
            for m in NFS_MODULES {
                if !config.kernel.drivers.iter().any(|d| fold(d) == fold(m)) {
                    config.kernel.drivers.push((*m).to_string());
                }
            }
        }
        let file = path.display().to_string();
        let mut map = ClusterMap {
            entries: config.cluster.map.clone(),
        };
        map.validate(&file)?;
        if let Some(map_file) = &config.cluster.map_file {
            let text = std::fs::read_to_string(map_file).map_err(|source| Error::ReadMap {
                path: map_file.clone(),
                source,
            })?;
            let from_file = ClusterMap::parse_mosix(&text, &map_file.display().to_string())?;
            map.entries.extend(from_file.entries);
            map.validate(&format!("{file} + {}", map_file.display()))?;
        }
        let loaded = Loaded {
            config,
            source: Some(path.into()),
            map,
        };
        loaded.check(&file)?;
        Ok(loaded)
    }

    fn check(&self, file: &str) -> Result<(), Error> {
        let invalid = |message: String| Error::Invalid {
            path: file.into(),
            message,
        };
        let c = &self.config;
        if c.cluster.name.is_empty()
            || !c
                .cluster
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            return Err(invalid(format!(
                "cluster name {:?} must be letters, digits, - or _",
                c.cluster.name
            )));
        }
        if !c.cluster.node_name.contains("{n}") {
            return Err(invalid(format!(
                "node-name {:?} must contain {{n}} (the node number)",
                c.cluster.node_name
            )));
        }
        if !(c.outputs.server.starts_with("http://") || c.outputs.server.starts_with("https://")) {
            return Err(invalid(format!(
                "outputs.server {:?} must be an http:// URL",
                c.outputs.server
            )));
        }
        if let Network::Static { hosts, .. } = &c.network {
            for (mac, addr) in hosts {
                let ok_mac = mac.len() == 17
                    && mac
                        .split(':')
                        .all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok());
                if !ok_mac {
                    return Err(invalid(format!(
                        "network.hosts: {mac:?} is not a MAC address like 52:54:00:12:34:56"
                    )));
                }
                let ok_addr = addr.split_once('/').is_some_and(|(ip, len)| {
                    ip.parse::<std::net::Ipv4Addr>().is_ok()
                        && len.parse::<u8>().is_ok_and(|l| l <= 32)
                });
                if !ok_addr {
                    return Err(invalid(format!(
                        "network.hosts.{mac:?}: {addr:?} is not an address like 10.0.0.11/24"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Directory that relative things (overlays, keys) are found beside.
    pub fn base_dir(&self) -> PathBuf {
        match &self.source {
            Some(p) => p
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| ".".into()),
            None => ".".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, Error> {
        Loaded::from_str(text, Path::new("/site/cluster.toml"))
    }

    #[test]
    fn default_round_trips_through_toml() {
        let text = Config::default_cluster().to_toml();
        let loaded = load(&text).unwrap();
        assert_eq!(loaded.config, Config::default_cluster());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let l = load("[cluster]\nname = \"lab\"\n").unwrap();
        assert_eq!(l.config.outputs.build, ["disk", "floppy", "pxe"]);
        assert_eq!(l.config.kernel.drivers.len(), DEFAULT_DRIVERS.len());
        assert_eq!(l.config.network, Network::Dhcp);
    }

    #[test]
    fn malformed_toml_names_file_and_line() {
        let err = load("[cluster]\nname = \"lab\"\n[kernel]\ncmdline = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/site/cluster.toml:4:"), "{err}");
        let err = load("[cluster]\nname = \"lab\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/site/cluster.toml:3:") && err.contains("bogus"),
            "{err}"
        );
    }

    #[test]
    fn inline_map_and_map_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mosix.map"),
            "# MOSIX-#, IP, number-of-nodes\n3 10.0.0.3 2\n",
        )
        .unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "[cluster]\nname = \"lab\"\nmap-file = \"mosix.map\"\n[[cluster.map]]\nfirst = 1\nhost = \"10.0.0.1\"\ncount = 2\n").unwrap();
        let l = Loaded::from_file(&cfg).unwrap();
        assert_eq!(l.map.nodes().len(), 4);
        std::fs::write(dir.path().join("mosix.map"), "2 10.0.0.3 2\n").unwrap();
        let err = Loaded::from_file(&cfg).unwrap_err().to_string();
        assert!(err.contains("overlap"), "{err}");
        std::fs::write(dir.path().join("mosix.map"), "1 10.0.0.3\n").unwrap();
        let err = Loaded::from_file(&cfg).unwrap_err().to_string();
        assert!(err.contains("mosix.map:1:"), "{err}");
        std::fs::remove_file(dir.path().join("mosix.map")).unwrap();
        let err = Loaded::from_file(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("cannot read cluster map") && err.contains("mosix.map"),
            "{err}"
        );
    }

    #[test]
    fn static_network_is_checked() {
        let ok = "[cluster]\nname = \"lab\"\n[network]\nmode = \"static\"\ngateway = \"10.0.0.254\"\n[network.hosts]\n\"52:54:00:12:34:56\" = \"10.0.0.11/24\"\n";
        assert!(load(ok).is_ok());
        let bad = ok.replace("10.0.0.11/24", "10.0.0.300/24");
        assert!(load(&bad)
            .unwrap_err()
            .to_string()
            .contains("10.0.0.300/24"));
    }

    #[test]
    fn files_section_adds_the_nfs_client() {
        let l = load("[cluster]\nname = \"lab\"\n[files]\nserver = \"10.0.2.2\"\nport = 20490\n")
            .unwrap();
        let f = l.config.files.clone().unwrap();
        assert_eq!(
            (f.mount.as_str(), f.port, f.mount_port),
            ("/cluster", 20490, 20048)
        );
        for m in NFS_MODULES {
            assert!(l.config.kernel.drivers.iter().any(|d| d == m), "{m}");
        }
        // Loading twice (e.g. a rendered config) adds nothing twice.
        let again = load(&l.config.to_toml()).unwrap();
        assert_eq!(again.config.kernel.drivers, l.config.kernel.drivers);
        let none = load("[cluster]\nname = \"lab\"\n").unwrap();
        assert!(!none.config.kernel.drivers.iter().any(|d| d == "nfsv3"));
        let err = load("[cluster]\nname = \"lab\"\n[files]\nserver = \"files.lan\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/site/cluster.toml") && err.contains("files.server"),
            "{err}"
        );
        let err =
            load("[cluster]\nname = \"lab\"\n[files]\nserver = \"10.0.0.1\"\nexprot = \"/x\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("/site/cluster.toml:5") && err.contains("exprot"),
            "{err}"
        );
    }

    #[test]
    fn bad_names_and_urls() {
        assert!(load("[cluster]\nname = \"a b\"\n").is_err());
        assert!(load("[cluster]\nname = \"a\"\nnode-name = \"x\"\n")
            .unwrap_err()
            .to_string()
            .contains("{n}"));
        assert!(
            load("[cluster]\nname = \"a\"\n[outputs]\nbuild = []\nserver = \"ftp://x\"\n").is_err()
        );
        assert!(Loaded::from_file(Path::new("/nonexistent/c.toml"))
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/c.toml"));
    }
}
