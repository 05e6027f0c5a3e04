#!/bin/sh
# Installs the Debian packages drove needs to build media and run its tests,
# skipping what is already there. Idempotent; safe to run on every `make`.
set -eu

# Build and media: distro kernel + modules, CRIU, boot loaders, disk tools.
# Tests: QEMU, OVMF, vde2; benchmark anchor: initramfs-tools (mkinitramfs);
# busybox-static for the bare-boot benchmark and DHCP client.
# The cluster file area: nfs-ganesha (+ its VFS backend and rpcbind) for `drove files serve`.
# dnsmasq-base for `drove serve --proxy-dhcp` (proxy-DHCP + TFTP for classic PXE).
PKGS="linux-image-amd64 criu syslinux syslinux-common systemd-boot-efi ipxe
      mtools gdisk fdisk cpio xz-utils zstd busybox-static
      qemu-system-x86 ovmf vde2 initramfs-tools kmod
      nfs-ganesha nfs-ganesha-vfs rpcbind dnsmasq-base"
# `install-deps.sh test` adds what only the VM tests need: Debian's chromium for the
# dashboard's browser test (large, so not part of `make image`) and tmux for the `drove top` test.
if [ "${1:-}" = "test" ]; then
    PKGS="$PKGS chromium tmux"
fi
# `install-deps.sh kernel` adds what compiling the kernel needs (kernel/packages.txt).
if [ "${1:-}" = "kernel" ]; then
    PKGS="$PKGS $(grep -v '^#' "$(dirname "$0")/../kernel/packages.txt")"
fi
# `install-deps.sh bench` adds what bench-plot's text needs (fontconfig headers, a sans font),
# what the bench scripts call: bc (ratios) and GNU time (CPU seconds of the kernel compiles), and
# what the kernel benchmark compiles with (the kernel packages, with the source tarball).
if [ "${1:-}" = "bench" ]; then
    PKGS="$PKGS libfontconfig1-dev fonts-dejavu-core bc time
          $(grep -v '^#' "$(dirname "$0")/../kernel/packages.txt")"
fi
[ -n "${DROVE_EXTRA_PKGS:-}" ] && PKGS="$PKGS $DROVE_EXTRA_PKGS"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    exit 0
fi

echo "drove: installing Debian packages:$missing" >&2
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
