//! VM harness for drove's QEMU tests.
//!
//! In the manner of Cloud Hypervisor's `test_infra`: a [`VmBuilder`] describes one QEMU machine
//! (firmware, boot medium, memory, NICs, extra arguments), [`Vm`] is the running process with its
//! serial console on a pipe, captured to `console.log` in the VM's own work directory, and helpers
//! wait for console lines with a deadline, type lines, and wait for a clean exit. Dropping a `Vm`
//! kills its QEMU process group; a VM also dies with the test process (parent-death signal).
//!
//! [`Artifacts`] finds the built media (`out/`, or `$DROVE_OUT`) and its `manifest.json`; when they
//! are missing the tests fail and say to run `make image` (they are run by `make qemu-test`, which
//! builds the media first, so a silent skip would hide a broken build).
//!
//! Acceleration is TCG unless a one-time probe shows KVM working ([`accel`]; `DROVE_ACCEL=tcg|kvm`
//! overrides): on some hosts `/dev/kvm` exists but QEMU hangs on it.

// Tests say "this cannot fail here" with unwrap; production code keeps the lint.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod accel;
mod artifacts;
pub mod bench;
pub mod cluster;
mod console;
mod error;
pub mod hostnet;
mod net;
mod process;
pub mod standin;
mod vm;

pub use accel::{accel, Accel};
pub use artifacts::{concat_files, drove_bin, out_dir, workspace_root, Artifacts, Manifest};
pub use cluster::{Cluster, ClusterImage};
pub use console::LinePattern;
pub use error::Error;
pub use hostnet::HostNetns;
pub use net::{Netdev, Nic, VdeSwitch};
pub use process::run;
pub use vm::{Drive, Firmware, Machine, Vm, VmBuilder, WorkDir};

use std::time::Duration;

/// Deadline for one boot to the `drove: ready` line (TCG on a slow, shared 2-core machine boots in
/// ~6–15 s; the margin is for load from parallel tests and builds).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// Deadline from typing `poweroff` to QEMU's exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The line the node agent prints when it is up.
pub const READY: &str = "drove: ready node=";

/// The kernel's last words on a power-off (`pr_emerg`, so printed at every log level). Seeing it
/// tells a power-off from a reboot or a panic, which `-no-reboot` would also turn into exit 0.
pub const POWER_DOWN: &str = "reboot: Power down";
