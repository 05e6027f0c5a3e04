#!/bin/bash
# Cluster file area benchmark for docs/benchmarks.md: a job on one node reading a 50 MiB input
# from /cluster (NFS, `drove files serve` on this host) against the same job reading a local copy
# on the same node, in one run, interleaved, medians of $RUNS (default 3). Needs root (ganesha)
# and the packages of scripts/install-deps.sh. Prints a markdown section on stdout; progress on
# stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p drove -p drove-agent >&2
cargo build --release --locked -p drove-qemu-tests --bin bench-files >&2
exec target/release/bench-files "$@"
