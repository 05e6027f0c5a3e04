//! drove node agent: PID 1 on every node of a drove cluster.
//!
//! The PID-1 logic lives in small modules that are unit-tested without root: the mount plan
//! ([`mounts`]), module ordering from `modules.dep` ([`modules`]), signal → action
//! ([`signals`]), console commands ([`command`]), identity ([`identity`]), DHCP lease parsing
//! and NIC selection ([`net`]). Root-only syscalls go through [`sys::Sys`]; [`pid1`] wires it
//! all together.

// Tests say "this cannot fail here" with unwrap; production code keeps the lint.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod bench;
pub mod children;
pub mod client;
pub mod cluster_fs;
pub mod command;
pub mod config;
pub mod console;
pub mod daemon;
pub mod dashboard;
pub mod gossip;
pub mod identity;
pub mod input;
pub mod jobs;
pub mod load;
pub mod map;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod netbench;
pub mod pid1;
pub mod power;
pub mod register;
pub mod selfcheck;
pub mod signals;
pub mod sim;
pub mod sys;
pub mod wire;
