//! drove node agent: PID 1 on every node of a drove cluster.

pub mod config;
pub mod map;
