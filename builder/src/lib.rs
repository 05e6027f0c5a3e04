//! drove builder: turns a kernel, the node agent, CRIU and overlays into boot media.

// Tests say "this cannot fail here" with unwrap; production code keeps the lint.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod build;
pub mod civil;
pub mod cmd;
pub mod compress;
pub mod config;
pub mod cpio;
pub mod elf;
pub mod files;
pub mod flash;
pub mod initramfs;
pub mod jobs_client;
pub mod kernel;
pub mod kernel_build;
pub mod key;
pub mod manifest;
pub mod outputs;
pub mod overlay;
pub mod progress;
pub mod proxy_dhcp;
pub mod registry;
pub mod serve;
pub mod staged;
pub mod status;
pub mod top;
pub mod update;
