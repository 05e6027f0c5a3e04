#!/bin/bash
# Kernel benchmark (issue 6) for docs/benchmarks.md, in one run on this machine:
#  1. the anchor: `make defconfig && make bzImage` of the source tarball (unpacked here once), in
#     an empty O= directory, -j$(nproc), under the same `nice -n 10` drove uses; bounded by
#     $DEFCONFIG_TIMEOUT seconds (default 5400): a compile that does not finish is reported as such;
#  2. drove's cold compile: `drove kernel build` with an empty cache of its own (unpack, tinyconfig
#     + kernel/*.config, dropped-option check, make bzImage), after the anchor so both compiles
#     see the same machine one after the other rather than halving it between them;
#  3. boot to the ready line, compiled kernel against the distro kernel: PXE media built for each
#     and booted by the boot benchmark (scripts/bench-boot.sh, medians of $RUNS).
# Prints a markdown section on stdout; progress goes to stderr. Takes long: the defconfig compile
# alone is most of an hour on 2 shared cores.
# KERNEL_DIR=out/kernel (a `drove kernel build --out` directory) skips both compiles and runs only
# the boot comparison (3) with that kernel; the compile rows then say "not run".
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh bench >&2
DROVE=${DROVE:-target/release/drove}
SOURCE=${KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
RUNS=${RUNS:-3}
JOBS=$(nproc)
DEFCONFIG_TIMEOUT=${DEFCONFIG_TIMEOUT:-5400}
work=$(mktemp -d /tmp/drove-bench-kernel.XXXXXX)
trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
secs() { printf '%.0f' "$(echo "$2 - $1" | bc -l)"; }
json_field() { sed -n "s/^ *\"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$1" | head -1; }
# the seconds of one of drove's step lines: "drove: [ 12.34s] configure kernel (...)"
step() { sed -n "s/^drove: \[ *\([0-9.]*\)s\] $2.*/\1/p" "$1" | head -1; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
# cpu FILE: user+sys seconds of a command run under `/usr/bin/time -o FILE -f "%U %S"` (its
# whole process tree): unlike wall time, it does not grow when other work shares the cores or
# the run is paused (SIGSTOP) for another benchmark's quiet window.
cpu() { tail -1 "$1" | awk '{printf "%.0f", $1 + $2}'; }

load_before=$(load)
if [ -n "${KERNEL_DIR:-}" ]; then
    kernel_dir=$(realpath "$KERNEL_DIR")
    [ -f "$kernel_dir/kernel.json" ] || { echo "bench-kernel: $kernel_dir/kernel.json: not a drove kernel build output" >&2; exit 1; }
    def_configure="(not run)" def_compile_cell="(not run)" def_bytes="(not run)" def_options="-" def_modules="-"
    drove_unpack="(not run)" drove_configure="(not run)" drove_compile="(not run)" drove_total="(not run)"
    drove_files="-" def_compile="-" def_cpu="-" drove_cpu="(not run)"
else
echo "bench-kernel: unpack $SOURCE for the defconfig compile; load $(load)" >&2
mkdir -p "$work/src"
case "$SOURCE" in
*.tar.zst) tar --zstd -xf "$SOURCE" -C "$work/src" ;;
*.tar* | *.txz) tar -xf "$SOURCE" -C "$work/src" ;;
*) ln -s "$(realpath "$SOURCE")" "$work/src/tree" ;;
esac
tree=$(dirname "$(ls -d "$work"/src/*/Makefile | head -1)")

echo "bench-kernel: make defconfig && make bzImage in $work/defconfig (bound ${DEFCONFIG_TIMEOUT}s); load $(load)" >&2
def="$work/defconfig"
mkdir -p "$def"
t0=$(now)
nice -n 10 make -s -C "$tree" O="$def" ARCH=x86_64 defconfig >"$def.log" 2>&1
t1=$(now)
def_status=0
/usr/bin/time -o "$work/defconfig.cpu" -f "%U %S" \
    timeout "$DEFCONFIG_TIMEOUT" nice -n 10 make -C "$tree" O="$def" ARCH=x86_64 -j"$JOBS" bzImage \
    >>"$def.log" 2>&1 || def_status=$?
t2=$(now)
def_configure=$(secs "$t0" "$t1")
def_compile=$(secs "$t1" "$t2")
def_cpu=$(cpu "$work/defconfig.cpu")
def_files=$(grep -cE '^  (CC|AS) ' "$def.log" || true)
def_options=$(grep -c '=y$' "$def/.config")
def_modules=$(grep -c '=m$' "$def/.config" || true)
if [ "$def_status" = 0 ]; then
    def_bytes=$(stat -c %s "$def/arch/x86/boot/bzImage")
    def_compile_cell="${def_compile} s wall, ${def_cpu} s CPU, ${def_files} files"
elif [ "$def_status" = 124 ]; then
    def_bytes="(not finished)"
    def_compile_cell="did not finish within ${DEFCONFIG_TIMEOUT} s (${def_files} files compiled by then)"
else
    tail -30 "$def.log" >&2
    exit 1
fi
echo "bench-kernel: defconfig: configure ${def_configure} s, compile ${def_compile_cell}, bzImage ${def_bytes} B, ${def_options} =y" >&2
# the defconfig tree is large; nothing after needs it
rm -rf "$def" "$work/src"

echo "bench-kernel: drove kernel build, cold (cache $work/cache); load $(load)" >&2
t0=$(now)
DROVE_KERNEL_CACHE="$work/cache" /usr/bin/time -o "$work/drove.cpu" -f "%U %S" "$DROVE" kernel build --source "$SOURCE" --jobs "$JOBS" \
    --out "$work/kernel" 2> >(tee "$work/drove-kernel.log" >&2)
t1=$(now)
drove_total=$(secs "$t0" "$t1")
drove_cpu=$(cpu "$work/drove.cpu")
drove_unpack=$(printf '%.0f' "$(step "$work/drove-kernel.log" 'kernel source')")
drove_configure=$(printf '%.0f' "$(step "$work/drove-kernel.log" 'configure kernel')")
drove_compile=$(printf '%.0f' "$(step "$work/drove-kernel.log" 'compile bzImage')")
drove_bytes=$(stat -c %s "$work/kernel/bzImage")
drove_files=$(json_field "$work/kernel/kernel.json" compiled_files)
drove_options=$(json_field "$work/kernel/kernel.json" config_options)
release=$(json_field "$work/kernel/kernel.json" release)

echo "bench-kernel: drove: total ${drove_total} s, compile ${drove_compile} s, ${drove_files} files, bzImage ${drove_bytes} B" >&2
rm -rf "$work/cache/build"
kernel_dir="$work/kernel"
fi
load_after=$(load)
drove_bytes=$(stat -c %s "$kernel_dir/bzImage")
drove_options=$(json_field "$kernel_dir/kernel.json" config_options)
release=$(json_field "$kernel_dir/kernel.json" release)

echo "bench-kernel: media for the boot benchmark; load $(load)" >&2
"$DROVE" -q build --output pxe --out "$work/media-distro"
printf '[cluster]\nname = "drove"\n[kernel]\ncompiled = "%s"\ncmdline = "console=tty0 console=ttyS0,115200 panic=30 quiet"\ndrivers = []\n' \
    "$kernel_dir" >"$work/compiled.toml"
"$DROVE" -q build --config "$work/compiled.toml" --output pxe --out "$work/media-compiled"
DROVE_OUT="$work/media-distro" ./scripts/bench-boot.sh --runs "$RUNS" >"$work/boot-distro.md"
DROVE_OUT="$work/media-compiled" ./scripts/bench-boot.sh --runs "$RUNS" >"$work/boot-compiled.md"
# "| drove-agent to `drove: ready` | bytes | runs | median s | |" → "bytes|runs|median"
ready_row() { grep '^| drove-agent to' "$1" | awk -F'|' '{gsub(/^ +| +$/, "", $3); gsub(/^ +| +$/, "", $4); gsub(/^ +| +s? *$/, "", $5); print $3 "|" $4 "|" $5}'; }
IFS='|' read -r distro_initrd distro_runs distro_ready <<<"$(ready_row "$work/boot-distro.md")"
IFS='|' read -r compiled_initrd compiled_runs compiled_ready <<<"$(ready_row "$work/boot-compiled.md")"
distro_ready=${distro_ready% s}
compiled_ready=${compiled_ready% s}
distro_kernel=$(json_field "$work/media-distro/manifest.json" kernel_release)

ratio() { case "$1$2" in *[!0-9.]*) echo "-"; return ;; esac; printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
met() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo "met"; else echo "not met"; fi; }
cat <<MD

## Kernel: compiled (drove kernel build) against defconfig and the distro kernel

Produced by \`scripts/bench-kernel.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores, $(gcc --version | head -1),
source \`$SOURCE\` (release $release); load average $load_before before the compiles, $load_after
after (the machine is shared: the compile times are wall-clock times under that load). Both compiles
run \`-j$JOBS\` under \`nice -n 10\` from the same unpacked tree, each into an empty build directory.

| what | drove (tinyconfig + kernel/*.config) | \`make defconfig && make bzImage\` | ratio |
|---|---|---|---|
| unpack the source tarball | ${drove_unpack} s | (reuses drove's tree) | |
| configure | ${drove_configure} s (\`make tinyconfig\`, merge, \`olddefconfig\`, option check) | ${def_configure} s | |
| compile bzImage | ${drove_compile} s wall, ${drove_files} files | ${def_compile_cell} | $(ratio "$drove_compile" "$def_compile") |
| CPU seconds (user + sys) | ${drove_cpu} s (whole \`drove kernel build\`: unpack, configure, compile) | ${def_cpu} s (\`make bzImage\`) | $(ratio "$drove_cpu" "$def_cpu") |
| options =y | ${drove_options} (no modules) | ${def_options} (+${def_modules} =m, not built) | |
| bzImage bytes | ${drove_bytes} | ${def_bytes} | $(ratio "$drove_bytes" "$def_bytes") |
| bzImage under 2 MB, read as 2 MiB (2,097,152 B; docs/kernel.md) | $(met "$drove_bytes < 2097152") (under 2,000,000 B: $(met "$drove_bytes < 2000000")) | | |

\`drove kernel build\` cold, total: ${drove_total} s. An unchanged rebuild answers from the cache
(\`~/.cache/drove/kernel/images/<key>\`) in well under a second.

Boot to the ready line (\`scripts/bench-boot.sh\` on PXE media from \`drove build --output pxe\`, $RUNS
runs each; power-on to \`drove: ready\`, QEMU TCG, 1 vCPU, 1024 MiB):

| kernel | initramfs bytes (all segments) | runs (s) | median |
|---|---|---|---|
| distro \`$distro_kernel\` + module closure | $distro_initrd | $distro_runs | ${distro_ready} s |
| compiled \`$release\`, no modules | $compiled_initrd | $compiled_runs | ${compiled_ready} s |
| ratio compiled / distro | | | $(ratio "$compiled_ready" "$distro_ready") (goal < 1: $(met "$compiled_ready < $distro_ready")) |
MD
