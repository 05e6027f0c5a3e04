//! Choosing the accelerator: TCG always works; KVM only when a quick probe shows that QEMU can
//! boot with it (here `/dev/kvm` exists but QEMU hangs on it). Probed once per test process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::{kill_group, spawn_tied, wait_timeout};

/// How long the probe VM may take to panic and exit under KVM (it takes well under a second when
/// KVM works).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    /// QEMU arguments selecting this accelerator and a CPU model that suits it.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Tcg => &["-accel", "tcg"],
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
        }
    }
}

/// The accelerator for this test process: `DROVE_ACCEL=tcg|kvm` if set, else KVM if the probe
/// passes, else TCG. The choice and its reason are printed once on stderr.
pub fn accel() -> Accel {
    static CHOICE: OnceLock<Accel> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let (accel, why) = choose();
        eprintln!("drove-qemu-tests: accelerator {accel:?} ({why})");
        accel
    })
}

fn choose() -> (Accel, String) {
    match std::env::var("DROVE_ACCEL").as_deref() {
        Ok("tcg") => return (Accel::Tcg, "DROVE_ACCEL=tcg".into()),
        Ok("kvm") => return (Accel::Kvm, "DROVE_ACCEL=kvm".into()),
        Ok(other) if !other.is_empty() => {
            return (
                Accel::Tcg,
                format!("DROVE_ACCEL={other:?} is neither tcg nor kvm; using tcg"),
            )
        }
        _ => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return (Accel::Tcg, "/dev/kvm cannot be opened".into());
    }
    let Some(kernel) = probe_kernel() else {
        return (Accel::Tcg, "no kernel to probe KVM with".into());
    };
    match probe(&kernel) {
        Ok(took) => (
            Accel::Kvm,
            format!("KVM probe booted {} in {took:.1?}", kernel.display()),
        ),
        Err(why) => (Accel::Tcg, format!("KVM probe failed: {why}")),
    }
}

/// The built kernel if there is one, else the newest distro kernel in /boot.
fn probe_kernel() -> Option<PathBuf> {
    let built = crate::out_dir().join("pxe/vmlinuz");
    if built.is_file() {
        return Some(built);
    }
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

/// Boots `kernel` without an initramfs under KVM: it panics at once (no root), `panic=-1` reboots
/// and `-no-reboot` makes QEMU exit. A working KVM gets there in about a second.
fn probe(kernel: &Path) -> Result<Duration, String> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel", "kvm", "-cpu", "host", "-m", "256", "-display", "none", "-serial", "none",
    ])
    .args(["-monitor", "none", "-nic", "none", "-no-reboot", "-kernel"])
    .arg(kernel)
    .args(["-append", "panic=-1 console=ttyS0"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = spawn_tied(cmd).map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    match wait_timeout(&mut child, PROBE_TIMEOUT) {
        Some(status) if status.success() => Ok(start.elapsed()),
        Some(status) => Err(format!("QEMU {}", crate::process::describe(status))),
        None => {
            // A QEMU stuck in the kernel may not even die on SIGKILL at once; don't wait for it.
            let _ = kill_group(&mut child, Duration::from_secs(2));
            Err(format!("QEMU did not exit within {PROBE_TIMEOUT:?}"))
        }
    }
}
