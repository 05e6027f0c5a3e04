#!/bin/bash
# Boot-to-ready benchmark for docs/benchmarks.md: one node from the built media (out/, or
# $DROVE_OUT; run `make image` first) against a bare busybox-init initramfs on the same kernel and
# VM, in the same run, interleaved, medians of $RUNS (default 3). Prints a markdown section on
# stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p drove-qemu-tests --bin bench-boot >&2
exec target/release/bench-boot "$@"
