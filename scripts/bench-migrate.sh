#!/bin/bash
# Migration benchmark (issue 4): freeze and total time of jobs of 1, 64 and 256 MiB moved between
# two QEMU nodes, with and without CRIU pre-copy, and the migration throughput against raw TCP
# between the same VMs; medians of $RUNS (default 3). Prints a markdown section for
# docs/benchmarks.md on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
export DROVE_BIN=${DROVE_BIN:-$PWD/target/release/drove}
cargo build --release --locked -q -p drove -p drove-agent >&2
cargo build --release --locked -q -p drove-qemu-tests --bin bench-migrate >&2
exec target/release/bench-migrate "$@"
