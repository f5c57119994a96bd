#!/usr/bin/env bash
# Makes the Debian root file system that tests/systemd_units.rs boots in qemu, with
# systemd as PID 1: debootstrap (minbase) plus systemd, a kernel for virtual machines
# with its initramfs, nftables and the clients the test runs inside the guest. About
# 45 s and 380 MB, once; the test builds each boot's disk from it and never changes
# it. .ci/aarch64 also reads systemd's system call groups from it. Needs root,
# debootstrap and Debian's mirror. `.ci/run` calls it.
#
#   tests/systemd_guest.sh [DIR]   (default: <cargo target dir>/tmp/systemd-guest)
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-${CARGO_TARGET_DIR:-target}/tmp/systemd-guest}
# The host's side: debootstrap, qemu, and the tools that make the guest's disks (its
# ext4 root, the card's FAT partition).
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
if [ ${#need[@]} -gt 0 ]; then
  echo "systemd_guest.sh: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian 13: systemd 257, glibc 2.41, Linux 6.12. The nearest Debian release to what
# the NixOS image runs (a copy of nixpkgs read here packages systemd 258.2; the
# pinned revision's was not read), so the units, their system call filter and a
# newer glibc's calls meet much as they will there. A release, not sid: an input
# that moved every day would move the test with it.
suite=trixie
if [ "$(cat "$dir/.complete" 2>/dev/null)" = "$suite" ]; then
  exit 0
fi

# procps for `kill` (coreutils' on NixOS), which ExecReload runs.
packages=(
  systemd systemd-sysv dbus udev kmod procps
  linux-image-cloud-amd64 initramfs-tools
  nftables iproute2 openssl mosquitto-clients
)
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
echo "systemd_guest.sh: debootstrap $suite into $dir"
debootstrap --variant=minbase --include="$(
  IFS=,
  echo "${packages[*]}"
)" "$suite" "$dir" http://deb.debian.org/debian >"$dir.log" 2>&1 || {
  tail -20 "$dir.log" >&2
  exit 1
}
ls "$dir"/boot/vmlinuz-* "$dir"/boot/initrd.img-* >/dev/null
echo "$suite" >"$dir/.complete"
echo "systemd_guest.sh: done ($(du -sh "$dir" | cut -f1))"
