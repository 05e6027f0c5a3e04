#!/bin/bash
# Makespan of 6 CPU-bound jobs started on one node of a 3-node QEMU cluster, with and without
# balancing, against the ideal (issue 4). Prints a markdown section for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export DROVE_BIN=${DROVE_BIN:-$PWD/target/release/drove}
cargo build --release --locked -q -p drove -p drove-agent
cargo run --release --locked -q -p drove-qemu-tests --bin bench-balance
