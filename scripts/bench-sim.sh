#!/bin/bash
# Scale simulation (issue 7): the agent's real gossip and balancer on a simulated clock and
# network. Prints a markdown section for docs/benchmarks.md. SIZES overrides the cluster sizes
# (default 10 100 1000 10000; the biggest take minutes, see docs/balancing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p drove-agent --bin drove-sim
mkdir -p target/bench
# shellcheck disable=SC2086
target/release/drove-sim --csv target/bench/sim-imbalance.csv ${SIZES:-10 100 1000 10000}
