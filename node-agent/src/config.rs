//! What a node reads at boot: `/etc/drove/node.toml`, written by the builder, and the
//! calibration file that a calibration overlay lays on top (the `mosctl setyard` of today).

use crate::map::ClusterMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const NODE_CONFIG_PATH: &str = "/etc/drove/node.toml";
pub const CALIBRATION_PATH: &str = "/etc/drove/calibration.toml";
pub const CLUSTER_KEY_PATH: &str = "/etc/drove/cluster.key";
/// Port of the agent's API (later issues) and of agent-to-agent traffic.
pub const DEFAULT_API_PORT: u16 = 7030;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeConfig {
    /// Cluster name, shown in the API and used in the ready line's context.
    pub cluster: String,
    /// How nodes are named from their number; `{n}` is replaced (`node{n}` → `node3`).
    pub node_name: String,
    /// Whether nodes outside the map may join when seen on the LAN.
    pub discovery: bool,
    pub network: Network,
    #[serde(default)]
    pub map: ClusterMap,
    /// Kernel modules to load at boot, by name; their dependencies come from `modules.dep`.
    #[serde(default)]
    pub modules: Vec<String>,
    /// `uname -r` of the kernel the image was built for (names `/lib/modules/<release>`).
    pub kernel_release: String,
    /// Image server URL (`drove serve`), when the cluster has one.
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default = "default_api_port")]
    pub api_port: u16,
    /// The cluster-wide file area (`[files]` of the cluster config), when the cluster has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<crate::cluster_fs::FilesConfig>,
}

fn default_api_port() -> u16 {
    DEFAULT_API_PORT
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Network {
    /// DHCP on every NIC that has a link.
    Dhcp,
    /// Fixed addresses, chosen by the NIC's MAC address (one image serves every node).
    Static {
        /// MAC (lower-case, colon-separated) → address in CIDR form, e.g. `10.0.0.11/24`.
        hosts: BTreeMap<String, String>,
        #[serde(default)]
        gateway: Option<String>,
    },
}

/// The node's CPU speed factor. MOSIX measured speed against a Pentium-III/1GHz yardstick; drove
/// measures a boot-time benchmark and lets a calibration overlay scale or pin it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Calibration {
    /// Which CPU this calibration is for (documentation; shown in the API).
    pub cpu: String,
    /// Pin the speed to this value and skip the boot benchmark.
    #[serde(default)]
    pub speed: Option<f64>,
    /// Multiply the measured speed by this factor.
    #[serde(default = "unit")]
    pub scale: f64,
}

fn unit() -> f64 {
    1.0
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            cpu: "unknown".into(),
            speed: None,
            scale: 1.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| Error::Parse {
        path: path.into(),
        message: toml_message(&text, &e),
    })
}

/// Formats a TOML error as `line N: message`, so callers can say `file:line`.
pub fn toml_message(text: &str, err: &toml::de::Error) -> String {
    match err.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", err.message())
        }
        None => err.message().to_string(),
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, Error> {
        parse_toml(path)
    }

    /// What a node uses when `/etc/drove/node.toml` is missing or broken: DHCP, no map, no
    /// modules, names `node{n}`, for the running kernel `release`.
    pub fn fallback(release: &str) -> Self {
        NodeConfig {
            cluster: "drove".into(),
            node_name: "node{n}".into(),
            discovery: false,
            network: Network::Dhcp,
            map: ClusterMap::default(),
            modules: Vec::new(),
            kernel_release: release.into(),
            server: None,
            api_port: DEFAULT_API_PORT,
            files: None,
        }
    }

    /// The node name for number `n`.
    pub fn name_for(&self, n: u32) -> String {
        self.node_name.replace("{n}", &n.to_string())
    }
}

impl Calibration {
    /// Reads the calibration file; a missing file means "measure, do not scale".
    pub fn load(path: &Path) -> Result<Self, Error> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let cal: Calibration = parse_toml(path)?;
        if !(cal.scale.is_finite() && cal.scale > 0.0)
            || cal.speed.is_some_and(|s| !(s.is_finite() && s > 0.0))
        {
            return Err(Error::Parse {
                path: path.into(),
                message: "speed and scale must be positive numbers".into(),
            });
        }
        Ok(cal)
    }

    /// The effective speed given what the boot benchmark measured.
    pub fn effective_speed(&self, measured: f64) -> f64 {
        self.speed.unwrap_or(measured * self.scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_config_round_trips() {
        let cfg = NodeConfig {
            cluster: "c".into(),
            node_name: "node{n}".into(),
            discovery: true,
            network: Network::Dhcp,
            map: ClusterMap::parse_mosix("1 10.0.2.15 1\n", "m").unwrap(),
            modules: vec!["e1000".into()],
            kernel_release: "6.1.0".into(),
            server: None,
            api_port: DEFAULT_API_PORT,
            files: None,
        };
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<NodeConfig>(&text).unwrap(), cfg);
        assert_eq!(cfg.name_for(3), "node3");
    }

    #[test]
    fn calibration_pins_or_scales() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "cpu = \"P133\"\nscale = 0.5\n").unwrap();
        assert_eq!(Calibration::load(&p).unwrap().effective_speed(100.0), 50.0);
        std::fs::write(&p, "cpu = \"P133\"\nspeed = 133.0\n").unwrap();
        assert_eq!(Calibration::load(&p).unwrap().effective_speed(100.0), 133.0);
        std::fs::write(&p, "cpu = \"x\"\nscale = -1.0\n").unwrap();
        assert!(Calibration::load(&p).is_err());
        std::fs::write(&p, "cpu = \"x\"\nbogus = 1\n").unwrap();
        let err = Calibration::load(&p).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert_eq!(
            Calibration::load(&dir.path().join("none")).unwrap(),
            Calibration::default()
        );
    }
}
