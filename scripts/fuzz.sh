#!/bin/bash
# `make fuzz`: every cargo-fuzz target in fuzz/ for FUZZ_SECS seconds each (default 60), one
# after another. Starts from the checked-in seeds (fuzz/corpus/<target>/) plus what earlier runs
# found (target/fuzz-corpus/<target>/, not checked in). Exits non-zero at the first crash; the
# input is in fuzz/artifacts/<target>/ (`cargo fuzz run <target> <file>` replays it).
#
# cargo fuzz needs nightly compiler flags (-Zsanitizer); the machine has stable Rust only, so it
# runs with RUSTC_BOOTSTRAP=1. cargo-fuzz is installed from crates.io when missing.
# Usage: scripts/fuzz.sh [TARGET...]   (default: all targets)
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECS=${FUZZ_SECS:-60}
# libFuzzer's limits: a slow input (seconds) or a big allocation (MB) counts as a crash too.
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-10}
FUZZ_RSS_MB=${FUZZ_RSS_MB:-2048}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
# -a: debug assertions, so an integer overflow is a crash here (it wraps silently in release).
cargo fuzz build -O -a >&2

summary=()
for t in "${targets[@]}"; do
    work="target/fuzz-corpus/$t"
    mkdir -p "$work" "fuzz/corpus/$t"
    echo "fuzz: $t for ${FUZZ_SECS}s" >&2
    log="target/fuzz-corpus/$t.log"
    if ! cargo fuzz run -O -a "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$FUZZ_SECS" -timeout="$FUZZ_TIMEOUT" -rss_limit_mb="$FUZZ_RSS_MB" \
        -print_final_stats=1 2>"$log"; then
        tail -40 "$log" >&2
        echo "fuzz: $t CRASHED; input saved under fuzz/artifacts/$t/ (log: target/fuzz-corpus/$t.log)" >&2
        exit 1
    fi
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    units=$(ls "$work" | wc -l)
    summary+=("$t: ${FUZZ_SECS}s, ${execs:-?} execs, coverage ${cov:-?}, corpus $units, no crash")
done
printf 'fuzz: %s\n' "${summary[@]}"
