//! Jobs: launch in a PID namespace of their own, the job table, and migration with CRIU over a
//! Noise channel keyed by the cluster key (see `docs/migration.md`).
//!
//! - [`table`]: jobs, their states and the migration records (pure);
//! - [`proto`]: the transfer protocol (handshake, frames);
//! - [`criu`]: CRIU command lines and the one wrapper that runs them;
//! - [`files`]: whether a job's open files let it move (all in the cluster file area);
//! - [`engine`]: launch, reaping, the source and target sides of a migration;
//! - [`balance`]: automatic load balancing (pure decision, and the daemon's loop);
//! - [`cpuinfo`]: CPU compatibility checks (`criu cpuinfo`) the balancer relies on;
//! - [`api`]: the `/api/jobs` routes;
//! - [`cluster`]: every node's jobs and migrations merged (`/api/cluster/jobs`).

pub mod api;
pub mod balance;
pub mod cluster;
pub mod cpuinfo;
pub mod criu;
pub mod engine;
pub mod files;
pub mod proto;
pub mod table;
