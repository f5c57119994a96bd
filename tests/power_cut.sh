#!/usr/bin/env bash
# Runs the power-cut test (tests/power_cut.rs): installs what it needs on Debian when
# run as root, extracts Debian's kernel package into the cargo target dir (the host's
# own /boot is not touched), then runs the ignored test with missing pieces as errors.
# Env: MOAT_POWER_CUT_KILLS (default 8 per durability level), MOAT_POWER_CUT_ACCEL
# (kvm|tcg), MOAT_GUEST_KERNEL (a vmlinuz to use instead of the downloaded one).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "power_cut.sh: missing packages: ${need[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "power_cut.sh: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -c 'import paho.mqtt' 2>/dev/null || pip install -q paho-mqtt

# Same place as env!("CARGO_TARGET_TMPDIR") in the test: <target dir>/tmp.
kernel_dir="${CARGO_TARGET_DIR:-target}/tmp/power-cut-kernel"
if [ -z "${MOAT_GUEST_KERNEL:-}" ] && ! ls "$kernel_dir"/boot/vmlinuz-* >/dev/null 2>&1; then
  [ -n "$(apt-cache policy linux-image-amd64 | grep Candidate)" ] || apt-get update -qq
  # linux-image-amd64 is a metapackage; the kernel is in the package it depends on.
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$pkg" ] || { echo "power_cut.sh: no linux-image package found by apt" >&2; exit 1; }
  echo "power_cut.sh: extracting $pkg into $kernel_dir"
  download=$(mktemp -d)
  (cd "$download" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  mkdir -p "$kernel_dir"
  dpkg-deb -x "$download"/"$pkg"_*.deb "$kernel_dir"
  rm -rf "$download"
fi

MOAT_POWER_CUT_REQUIRE=1 cargo test --test power_cut -- --ignored --nocapture
