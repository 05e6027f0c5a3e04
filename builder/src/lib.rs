//! drove builder: turns a kernel, the node agent, CRIU and overlays into boot media.

pub mod cmd;
pub mod outputs;
pub mod serve;
pub mod status;
pub mod compress;
pub mod cpio;
pub mod kernel;
pub mod elf;
pub mod config;
pub mod overlay;
pub mod key;
pub mod progress;
pub mod initramfs;
pub mod manifest;
pub mod build;
pub mod kernel_build;
