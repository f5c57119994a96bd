#!/usr/bin/env bash
# Boots the Pi Zero 2 W SD image under emulation and waits for the broker's ready
# line on the serial console. Used by .github/workflows/image.yml before an image is
# published; runnable by hand on any Linux with the tools below.
#
#   nix/qemu-boot.sh IMAGE.img.zst [TIMEOUT_SECONDS]
#
# What it does, like the Pi would: the Raspberry Pi firmware and U-Boot cannot run
# under QEMU's raspi3b machine, so this plays their part. It reads the default entry
# of the image's own extlinux.conf (kernel, initrd, device tree, command line) from
# the root partition, puts a test manifest on the FAT partition (as a user would),
# and boots `qemu-system-aarch64 -M raspi3b` (BCM2837, the Zero 2 W's family) with
# the card as its SD card. It passes when `moat serve` logs "moat is ready"
# (src/server/run.rs) on the console, and fails on a kernel panic or the timeout.
#
# Needs: qemu-system-aarch64, qemu-img, zstd, debugfs (e2fsprogs), mcopy (mtools),
# python3.
set -euo pipefail

image=${1:?usage: qemu-boot.sh IMAGE.img.zst [TIMEOUT_SECONDS]}
limit=${2:-2400}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "qemu-boot: decompressing $image"
zstd -d -q "$image" -o "$work/card.img"

# The MBR partition table sd-image.nix writes: 1 = FAT firmware, 2 = ext4 root.
partition() {
  python3 - "$work/card.img" "$1" <<'PY'
import struct, sys
with open(sys.argv[1], "rb") as f:
    mbr = f.read(512)
assert mbr[510:512] == b"\x55\xaa", "no MBR signature"
entry = mbr[446 + 16 * (int(sys.argv[2]) - 1):][:16]
start, size = struct.unpack("<II", entry[8:16])
assert size > 0, "partition missing"
print(start, size, "bootable" if entry[0] == 0x80 else "-")
PY
}
read -r fat_start _ fat_flag < <(partition 1)
read -r root_start root_size root_flag < <(partition 2)
# This script plays U-Boot's part, so check what U-Boot would go by: it searches
# only the partitions flagged bootable for extlinux.conf, which is on the root one.
if [ "$root_flag" != bootable ] || [ "$fat_flag" = bootable ]; then
  echo "qemu-boot: partition 2 (root) must be the one flagged bootable (FAT: $fat_flag, root: $root_flag); U-Boot would not find extlinux.conf" >&2
  exit 1
fi
dd if="$work/card.img" of="$work/root.img" bs=512 skip="$root_start" count="$root_size" status=none

# The first LABEL of extlinux.conf is the default generation; its paths are
# relative to /boot/extlinux.
debugfs -R "cat /boot/extlinux/extlinux.conf" "$work/root.img" 2>/dev/null >"$work/extlinux.conf"
field() {
  awk -v key="$1" '$1 == key { $1 = ""; sub(/^ /, ""); print; exit }' "$work/extlinux.conf"
}
boot_path() {
  local rel
  rel=$(field "$1")
  [ -n "$rel" ] || { echo "qemu-boot: no $1 line in extlinux.conf" >&2; cat "$work/extlinux.conf" >&2; exit 1; }
  # ../nixos/x -> /boot/nixos/x
  echo "/boot/${rel#../}"
}
kernel=$(boot_path LINUX)
initrd=$(boot_path INITRD)
fdt=$(boot_path FDT)
append=$(field APPEND)
for f in kernel initrd fdt; do
  debugfs -R "dump ${!f} $work/$f" "$work/root.img" 2>/dev/null
  [ -s "$work/$f" ] || { echo "qemu-boot: could not extract ${!f}" >&2; exit 1; }
done
echo "qemu-boot: kernel $kernel"
echo "qemu-boot: device tree $fdt"
echo "qemu-boot: command line $append"

# A manifest on the card, as a user writes it before the first boot.
cat >"$work/moat.yaml" <<'YAML'
version: 1
broker:
  hostnames: [moat.home.arpa]
  listen:
    tls: { address: "0.0.0.0", port: 8883 }
  networks: [loopback, private]
firewall: { ssh: false, mdns: true }
users:
  boot-test:
    password: "qemu-boot-test-password"
    publish: ["test/#"]
YAML
mcopy -i "$work/card.img@@$((fat_start * 512))" "$work/moat.yaml" ::moat.yaml

# QEMU's SD card must be a power of two in size.
size=$(stat -c %s "$work/card.img")
pow=1
while [ "$pow" -lt "$size" ]; do pow=$((pow * 2)); done
qemu-img resize -q -f raw "$work/card.img" "$pow"

# raspi3b: serial 0 is the PL011 (the Zero 2 W's device tree gives it to Bluetooth),
# serial 1 the mini UART, ttyS1, the image's console. The journal is forwarded to
# the console so the broker's log line reaches it.
qemu-system-aarch64 -M raspi3b -m 1G \
  -kernel "$work/kernel" -initrd "$work/initrd" -dtb "$work/fdt" \
  -append "$append console=ttyS1,115200 systemd.journald.forward_to_console=1" \
  -drive "file=$work/card.img,if=sd,format=raw" \
  -serial "file:$work/serial0.log" -serial "file:$work/serial1.log" \
  -display none -no-reboot &
qemu=$!

status=1
deadline=$((SECONDS + limit))
while [ "$SECONDS" -lt "$deadline" ]; do
  if grep -qs "moat is ready" "$work/serial0.log" "$work/serial1.log"; then
    echo "qemu-boot: the broker is ready"
    status=0
    break
  fi
  if grep -qs "Kernel panic" "$work/serial0.log" "$work/serial1.log"; then
    echo "qemu-boot: kernel panic" >&2
    break
  fi
  if ! kill -0 "$qemu" 2>/dev/null; then
    echo "qemu-boot: QEMU exited" >&2
    break
  fi
  sleep 5
done
[ "$status" -eq 0 ] || echo "qemu-boot: no ready line within ${limit}s" >&2
kill "$qemu" 2>/dev/null || true
wait "$qemu" 2>/dev/null || true
for log in serial0 serial1; do
  echo "----- $log (last 200 lines)"
  tail -n 200 "$work/$log.log" 2>/dev/null || true
done
exit "$status"
