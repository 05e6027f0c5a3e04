//! VM network interfaces: QEMU's user-mode network (DHCP at 10.0.2.2's side, the host's loopback
//! reachable as 10.0.2.2) for single nodes, and a private L2 segment for clusters: a
//! [`VdeSwitch`] (Debian's vde2) or QEMU's socket netdev over 127.0.0.1. Never the host's own LAN.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{kill_group, spawn_tied};
use crate::Error;

/// The backend of one NIC.
#[derive(Debug, Clone)]
pub enum Netdev {
    /// `-netdev user`: QEMU's own NAT with DHCP; the guest gets 10.0.2.15, the host's loopback is
    /// 10.0.2.2. `hostfwd` maps host 127.0.0.1 ports to guest ports (TCP).
    User { hostfwd: Vec<(u16, u16)> },
    /// `-netdev vde`: a port on a [`VdeSwitch`].
    Vde { sock: PathBuf },
    /// `-netdev socket,<spec>`, e.g. `listen=127.0.0.1:10001` / `connect=127.0.0.1:10001`.
    Socket { spec: String },
    /// `-netdev tap,fd=N`: a tap the caller opened (with `IFF_VNET_HDR`, so QEMU offers the guest
    /// checksum and segmentation offloads), e.g. [`crate::HostNetns::vm_tap`]. The descriptor is
    /// inherited by QEMU and must stay open until QEMU has started.
    TapFd { fd: std::os::fd::RawFd },
}

/// One NIC: a backend plus the guest-visible device.
#[derive(Debug, Clone)]
pub struct Nic {
    pub netdev: Netdev,
    /// QEMU device model: `virtio-net-pci` (default), `e1000`, `rtl8139`, …
    pub model: String,
    /// `52:54:00:xx:xx:xx`; QEMU picks one if unset (unique per VM only within one QEMU process,
    /// so set it for VMs sharing a segment).
    pub mac: Option<String>,
}

impl Nic {
    pub fn user() -> Self {
        Nic {
            netdev: Netdev::User {
                hostfwd: Vec::new(),
            },
            model: "virtio-net-pci".into(),
            mac: None,
        }
    }

    pub fn vde(switch: &VdeSwitch) -> Self {
        Nic {
            netdev: Netdev::Vde {
                sock: switch.sock().to_owned(),
            },
            model: "virtio-net-pci".into(),
            mac: None,
        }
    }

    /// A NIC on a tap descriptor the caller holds (see [`Netdev::TapFd`]).
    pub fn tap_fd(fd: std::os::fd::RawFd) -> Self {
        Nic {
            netdev: Netdev::TapFd { fd },
            model: "virtio-net-pci".into(),
            mac: None,
        }
    }

    pub fn socket(spec: impl Into<String>) -> Self {
        Nic {
            netdev: Netdev::Socket { spec: spec.into() },
            model: "virtio-net-pci".into(),
            mac: None,
        }
    }

    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    pub fn mac(mut self, mac: impl Into<String>) -> Self {
        self.mac = Some(mac.into());
        self
    }

    /// Forwards TCP `127.0.0.1:<host>` to the guest's `<guest>` port (user-mode network only).
    pub fn hostfwd(mut self, host: u16, guest: u16) -> Self {
        if let Netdev::User { hostfwd } = &mut self.netdev {
            hostfwd.push((host, guest));
        }
        self
    }

    /// The `-netdev`/`-device` arguments for NIC number `index`.
    pub(crate) fn args(&self, index: usize) -> Vec<String> {
        let id = format!("n{index}");
        let netdev = match &self.netdev {
            Netdev::User { hostfwd } => {
                let mut s = format!("user,id={id}");
                for (host, guest) in hostfwd {
                    s.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
                }
                s
            }
            Netdev::Vde { sock } => format!("vde,id={id},sock={}", sock.display()),
            Netdev::Socket { spec } => format!("socket,id={id},{spec}"),
            Netdev::TapFd { fd } => format!("tap,id={id},fd={fd}"),
        };
        let mut device = format!("{},netdev={id}", self.model);
        if let Some(mac) = &self.mac {
            device.push_str(&format!(",mac={mac}"));
        }
        vec!["-netdev".into(), netdev, "-device".into(), device]
    }
}

/// A private L2 switch (`vde_switch`) whose control socket lives in a directory of its own; the
/// switch is killed when this is dropped.
pub struct VdeSwitch {
    dir: tempfile::TempDir,
    sock: PathBuf,
    child: Child,
    // vde_switch reads management commands from stdin and exits on EOF: keep it open.
    _stdin: Option<ChildStdin>,
}

impl VdeSwitch {
    pub fn start() -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("drove-vde-")
            .tempdir()
            .map_err(|source| Error::Io {
                what: "cannot create a directory in",
                path: std::env::temp_dir(),
                source,
            })?;
        let sock = dir.path().join("switch");
        let mut cmd = Command::new("vde_switch");
        cmd.arg("--sock")
            .arg(&sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let line = crate::process::command_line(&cmd);
        let mut child = spawn_tied(cmd).map_err(|source| Error::Spawn { line, source })?;
        let stdin = child.stdin.take();
        let timeout = Duration::from_secs(10);
        let deadline = Instant::now() + timeout;
        while !sock.join("ctl").exists() {
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                kill_group(&mut child, Duration::from_secs(2));
                return Err(Error::Vde {
                    path: sock.join("ctl"),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(VdeSwitch {
            dir,
            sock,
            child,
            _stdin: stdin,
        })
    }

    /// The switch's socket directory (`-netdev vde,sock=<this>`).
    pub fn sock(&self) -> &Path {
        &self.sock
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for VdeSwitch {
    fn drop(&mut self) {
        kill_group(&mut self.child, Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_arguments() {
        let args = Nic::user().hostfwd(18080, 80).args(0);
        assert_eq!(
            args,
            [
                "-netdev",
                "user,id=n0,hostfwd=tcp:127.0.0.1:18080-:80",
                "-device",
                "virtio-net-pci,netdev=n0"
            ]
        );
        let args = Nic::socket("listen=127.0.0.1:10001")
            .model("e1000")
            .mac("52:54:00:00:00:02")
            .args(1);
        assert_eq!(
            args,
            [
                "-netdev",
                "socket,id=n1,listen=127.0.0.1:10001",
                "-device",
                "e1000,netdev=n1,mac=52:54:00:00:00:02"
            ]
        );
    }
}
