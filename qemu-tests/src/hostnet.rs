//! The host's side on a cluster's private segment: a network namespace of the test's own, with a
//! tap device plugged into the [`VdeSwitch`] by `vde_plug2tap` and an address on the nodes'
//! subnet. Servers the nodes should reach over the cluster network (the NFS server of the
//! file-area tests) run inside it ([`HostNetns::run`], [`HostNetns::command`]).
//!
//! Nothing touches the host's interfaces: the namespace is anonymous (held by an open descriptor,
//! no `/run/netns` entry), the tap lives only in it and vanishes with `vde_plug2tap`, and IPv6 is
//! off in it (no router solicitations or multicast listener reports on the segment).
//!
//! Why not QEMU's user-mode network for this: slirp copies every packet through QEMU's own TCP
//! stack on the VM's one thread; under TCG that caps a node's NFS reads at ~12 MiB/s.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{command_line, kill_group, spawn_tied};
use crate::{Error, VdeSwitch};

/// The tap's name inside the namespace.
pub const TAP: &str = "drove0";

/// The bridge [`HostNetns::vm_tap`] makes in the namespace (the tap to the switch and the VMs'
/// taps in it, the address on it).
pub const BRIDGE: &str = "drovebr";

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// A private network namespace attached to a vde switch; dropping it removes the tap (the
/// namespace itself goes when the last process in it has ended and the descriptor is closed).
pub struct HostNetns {
    ns: File,
    plug: Child,
    addr: Ipv4Addr,
    prefix_len: u8,
}

fn netns_error(what: &str, source: std::io::Error) -> Error {
    Error::Io {
        what: "host netns:",
        path: PathBuf::from(what),
        source,
    }
}

/// Enters the network namespace `fd` on this thread (network namespaces are per thread).
fn enter(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: setns on a descriptor we hold open; affects only the calling thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl HostNetns {
    /// Creates the namespace, plugs a tap into `switch` and gives it `addr/prefix_len`; returns
    /// once the address is up. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN).
    pub fn attach(switch: &VdeSwitch, addr: Ipv4Addr, prefix_len: u8) -> Result<Self, Error> {
        // A short-lived thread unshares and hands back a descriptor that keeps the namespace.
        let ns = std::thread::spawn(|| -> std::io::Result<File> {
            // SAFETY: unshare on this thread only (CLONE_NEWNET is per thread).
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // New interfaces in it get no IPv6: nothing but our own traffic on the segment.
            for f in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{f}/disable_ipv6"), "1")?;
            }
            File::open("/proc/thread-self/ns/net")
        })
        .join()
        .map_err(|_| netns_error("unshare", std::io::Error::other("thread panicked")))?
        .map_err(|e| netns_error("cannot create a network namespace (needs root)", e))?;
        let fd = ns.as_raw_fd();
        let mut cmd = Command::new("vde_plug2tap");
        cmd.arg("--sock")
            .arg(switch.sock())
            .arg(TAP)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: between fork and exec; setns is async-signal-safe.
        unsafe { cmd.pre_exec(move || enter(fd)) };
        let line = command_line(&cmd);
        let plug = spawn_tied(cmd).map_err(|source| Error::Spawn { line, source })?;
        let mut host = HostNetns {
            ns,
            plug,
            addr,
            prefix_len,
        };
        // vde_plug2tap creates the tap with TUNSETIFF: wait for it to exist.
        let deadline = Instant::now() + Duration::from_secs(10);
        while host.ip(&["-o", "link", "show", "dev", TAP]).is_err() {
            if let Ok(Some(status)) = host.plug.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = host.plug.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(Error::Cluster {
                    what: format!("vde_plug2tap ended ({status}) before creating {TAP}: {err}"),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::Cluster {
                    what: format!("vde_plug2tap did not create {TAP} within 10 s"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        host.ip(&["link", "set", "lo", "up"])?;
        host.ip(&["addr", "add", &format!("{addr}/{prefix_len}"), "dev", TAP])?;
        host.ip(&["link", "set", TAP, "up"])?;
        eprintln!(
            "drove-qemu-tests: host netns on {} as {addr}/{prefix_len}",
            switch.sock().display()
        );
        Ok(host)
    }

    /// The namespace's address on the segment.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Runs `f` on a thread inside the namespace: sockets it opens and processes it starts
    /// (with `std::process::Command`, not the tied spawner) live there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        let fd = self.ns.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(fd)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("thread panicked")))
        })
        .map_err(|e: std::io::Error| netns_error("cannot enter the network namespace", e))
    }

    /// Makes `cmd` start inside the namespace. The descriptor must outlive the spawn.
    pub fn command<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        let fd = self.ns.as_raw_fd();
        // SAFETY: between fork and exec; setns is async-signal-safe.
        unsafe { cmd.pre_exec(move || enter(fd)) }
    }

    /// A tap `name` in the namespace for a VM's NIC (`Nic::tap_fd`), opened with
    /// `IFF_VNET_HDR`: unlike a vde port, QEMU can then offer the guest's virtio-net checksum and
    /// segmentation offloads (TSO/GRO-sized frames, no per-1500-byte cost), as a PC's NIC does in
    /// hardware. The first call moves the namespace's address onto a bridge holding the switch's
    /// tap, so the segment stays one. The tap goes when the returned descriptor and QEMU's copy
    /// are closed.
    pub fn vm_tap(&self, name: &str) -> Result<OwnedFd, Error> {
        if name.len() > 15 || name.is_empty() {
            return Err(Error::Cluster {
                what: format!("tap name {name:?}: 1 to 15 bytes"),
            });
        }
        if self.ip(&["-o", "link", "show", "dev", BRIDGE]).is_err() {
            let cidr = format!("{}/{}", self.addr, self.prefix_len);
            self.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
            self.ip(&["addr", "del", &cidr, "dev", TAP])?;
            self.ip(&["link", "set", TAP, "master", BRIDGE])?;
            self.ip(&["addr", "add", &cidr, "dev", BRIDGE])?;
            self.ip(&["link", "set", BRIDGE, "up"])?;
        }
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let fd = self
            .run(move || -> std::io::Result<OwnedFd> {
                // SAFETY: open(2) of a constant path; the descriptor is owned at once.
                let raw =
                    unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
                if raw < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: raw is a fresh descriptor nobody else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                // SAFETY: TUNSETIFF reads an ifreq, which `req` is laid out as.
                if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &req) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(fd)
            })?
            .map_err(|e| netns_error("cannot create a tap with /dev/net/tun", e))?;
        self.ip(&["link", "set", name, "master", BRIDGE])?;
        self.ip(&["link", "set", name, "up"])?;
        Ok(fd)
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String, Error> {
        let mut cmd = Command::new("ip");
        cmd.args(args);
        self.command(&mut cmd);
        let out = crate::process::run_quiet(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for HostNetns {
    fn drop(&mut self) {
        kill_group(&mut self.plug, Duration::from_secs(5));
    }
}

impl std::fmt::Debug for HostNetns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostNetns")
            .field("addr", &self.addr)
            .field("prefix_len", &self.prefix_len)
            .finish()
    }
}
