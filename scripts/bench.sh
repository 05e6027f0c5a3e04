#!/bin/bash
# Build benchmarks for docs/benchmarks.md: drove build (all media) against Debian's mkinitramfs on
# the same kernel, in one run on this machine. Medians of several runs; every figure is printed
# with the command that produced it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh bench
DROVE=${DROVE:-target/release/drove}
RUNS=${RUNS:-3}
KREL=${KREL:-$(ls /boot/vmlinuz-* | sed 's|/boot/vmlinuz-||' | sort -V | tail -1)}
work=$(mktemp -d /tmp/drove-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# time_runs N CMD...: runs CMD N times (a `prepare` function runs before each) and prints the median.
time_runs() {
    local n=$1; shift
    for _ in $(seq "$n"); do
        prepare
        local t0; t0=$(now); "$@" >/dev/null 2>&1; local t1; t1=$(now)
        echo "$t1 - $t0" | bc -l
    done | median | xargs printf '%.3f\n'
}

# A site config with one user overlay, so an overlay-only rebuild can be measured.
mkdir -p "$work/site/overlays/site/etc"
echo "bench" > "$work/site/overlays/site/etc/motd"
cat > "$work/site/cluster.toml" <<TOML
[cluster]
name = "bench"
[overlays]
calibration = "qemu"
user = ["site"]
TOML

prepare() { rm -rf "$work/out"; }
full=$(time_runs "$RUNS" "$DROVE" -q build --config "$work/site/cluster.toml" --out "$work/out")
"$DROVE" -q build --config "$work/site/cluster.toml" --out "$work/out"
i=0
prepare() { i=$((i+1)); echo "bench $i" > "$work/site/overlays/site/etc/motd"; }
overlay=$(time_runs 5 "$DROVE" -q build --config "$work/site/cluster.toml" --out "$work/out")
prepare() { :; }
pxe_only=$(time_runs 5 "$DROVE" -q build --config "$work/site/cluster.toml" --out "$work/out" --output pxe)

initramfs_bytes=$(cat "$work"/out/pxe/initramfs.img "$work"/out/pxe/overlay-*.img | wc -c)
disk_bytes=$(stat -c %s "$work/out/disk.img")
floppy_bytes=$(stat -c %s "$work/out/floppy.img")

prepare() { rm -f "$work/mkinitramfs.img"; }
mkinit=$(time_runs "$RUNS" mkinitramfs -o "$work/mkinitramfs.img" "$KREL")
mkinitramfs -o "$work/mkinitramfs.img" "$KREL" >/dev/null 2>&1
mkinit_bytes=$(stat -c %s "$work/mkinitramfs.img")

ratio() { printf '%.3f' "$(echo "$1 / $2" | bc -l)"; }
cat > docs/benchmarks.md <<MD
# Benchmarks

Produced by \`make bench\` (\`scripts/bench.sh\`) on $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores,
kernel $KREL; medians of $RUNS runs (5 for rebuilds). The anchor is Debian's \`mkinitramfs\` for the
same kernel, measured in the same run. \`drove\` is \`target/release/drove\`; the config is a cluster
with the QEMU calibration overlay and one user overlay (\`site\`).
Each run replaces this page; earlier runs and their notes are in [benchmark-history.md](benchmark-history.md).

## Build

| what | command | result | goal |
|---|---|---|---|
| full build, all media, cold cache | \`drove -q build --config cluster.toml --out out\` (after \`rm -rf out\`) | ${full} s | ≤ 1/4 of mkinitramfs |
| mkinitramfs (anchor) | \`mkinitramfs -o X $KREL\` | ${mkinit} s | |
| ratio | | $(ratio "$full" "$mkinit") | ≤ 0.25 |
| overlay-only rebuild, all media | edit \`overlays/site/etc/motd\`, same command | ${overlay} s | < 0.5 s |
| rebuild, PXE only | \`drove -q build ... --output pxe\` | ${pxe_only} s | |

An overlay-only rebuild recompresses only that overlay's segment (the base is reused from
\`out/.cache\`); the rest of its time is rewriting every medium (a 36 MiB disk image, FAT32's
minimum) and hashing every artifact for \`manifest.json\`, which is why the PXE-only rebuild is faster.

## Size

| what | bytes | ratio to mkinitramfs |
|---|---|---|
| drove initramfs (base + overlay segments, with CRIU and modules) | $initramfs_bytes | $(ratio "$initramfs_bytes" "$mkinit_bytes") (goal ≤ 0.333) |
| mkinitramfs output | $mkinit_bytes | 1 |
| disk.img | $disk_bytes | |
| floppy.img | $floppy_bytes | (limit 1474560) |
MD
# Boot to ready against a bare busybox init (issue 3's benchmark).
./scripts/bench-boot.sh >> docs/benchmarks.md
# Balancing makespan on 3 QEMU nodes (issue 4) and the scale simulation (issue 7).
./scripts/bench-balance.sh >> docs/benchmarks.md
# Migration freeze/total time, 1/64/256 MiB, with and without pre-copy, against raw TCP (issue 4).
./scripts/bench-migrate.sh >> docs/benchmarks.md
# All four sizes the issue names; 10,000 nodes alone take ~20-40 min of one core and ~6 GB
# (docs/balancing.md). SIZES="10 100 1000" leaves it out for a quicker run.
SIZES="${SIZES:-10 100 1000 10000}" ./scripts/bench-sim.sh >> docs/benchmarks.md
# A job reading its input from /cluster (NFS) against a local copy (issue 8's benchmark; root).
./scripts/bench-files.sh >> docs/benchmarks.md
# Compiled kernel: cold compile and size against defconfig, boot against the distro kernel (issue 6;
# long: includes a full defconfig compile).
./scripts/bench-kernel.sh >> docs/benchmarks.md
# Plots beside the tables: drawn from the tables above and from target/bench/*.csv (curves other
# benchmarks write, `series,x,y`); see bench-plot/src/main.rs. Keep this last, before the cat.
cargo build --release --locked -p drove-bench-plot >&2
pngs=$(target/release/bench-plot --markdown docs/benchmarks.md --series target/bench --out docs/img |
    sed -n 's/^bench-plot: //p')
{
    printf '\n## Plots\n\nDrawn by `bench-plot` (`bench-plot/`) from the tables above and `target/bench/*.csv`.\n\n'
    for png in $pngs; do
        name=$(basename "$png" .png)
        printf '![%s](img/%s.png)\n\n' "$name" "$name"
    done
} >> docs/benchmarks.md
cat docs/benchmarks.md
