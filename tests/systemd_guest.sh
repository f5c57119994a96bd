#!/usr/bin/env bash
# Makes the Debian root file system that tests/systemd_units.rs boots in qemu, with
# systemd as PID 1: debootstrap (minbase) plus systemd, a kernel for virtual machines
# with its initramfs, nftables and the clients the test runs inside the guest. About
# 45 s and 430 MB, once; the test builds each boot's disk from it and never changes
# it. Needs root, debootstrap and Debian's mirror. `.ci/run` calls it.
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
if [ -f "$dir/.complete" ]; then
  exit 0
fi

# systemd 252 (Debian 12); the NixOS image runs a newer one, which keeps every
# setting the units use. procps for `kill` (coreutils' on NixOS), which ExecReload runs.
packages=(
  systemd systemd-sysv dbus udev kmod procps
  linux-image-cloud-amd64 initramfs-tools
  nftables iproute2 openssl mosquitto-clients
)
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
echo "systemd_guest.sh: debootstrap bookworm into $dir"
debootstrap --variant=minbase --include="$(
  IFS=,
  echo "${packages[*]}"
)" bookworm "$dir" http://deb.debian.org/debian >"$dir.log" 2>&1 || {
  tail -20 "$dir.log" >&2
  exit 1
}
ls "$dir"/boot/vmlinuz-* "$dir"/boot/initrd.img-* >/dev/null
touch "$dir/.complete"
echo "systemd_guest.sh: done ($(du -sh "$dir" | cut -f1))"
