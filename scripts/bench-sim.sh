#!/bin/bash
# Scale simulation (issue 7): the agent's real gossip and balancer on a simulated clock and
# network. Prints a markdown section for docs/benchmarks.md and regenerates its plot,
# docs/img/sim-imbalance.png, from target/bench/sim/sim-imbalance.csv (imbalance over time).
# SIZES overrides the cluster sizes (default 10 100 1000 10000; see docs/balancing.md for how
# long and how much memory the biggest take).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p drove-agent --bin drove-sim
cargo build --release --locked -q -p drove-bench-plot
mkdir -p target/bench/sim
# shellcheck disable=SC2086
target/release/drove-sim --csv target/bench/sim/sim-imbalance.csv ${SIZES:-10 100 1000 10000}
# Only the simulation's curve (no markdown tables: the other plots are bench.sh's).
target/release/bench-plot --markdown /dev/null --series target/bench/sim --out docs/img >&2
printf '\nImbalance over time (`target/bench/sim/sim-imbalance.csv`, drawn by `bench-plot`):\n\n'
printf '![load imbalance over time](img/sim-imbalance.png)\n'
