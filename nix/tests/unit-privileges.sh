#!/usr/bin/env bash
# The privilege claims of nix/module.nix, checked on this machine without NixOS:
# setpriv(1) gives a process exactly what the systemd directives give the unit.
#
#   sudo nix/tests/unit-privileges.sh path/to/moat
#
# 1. The old moat-firewall unit (root, CapabilityBoundingSet=CAP_NET_ADMIN only)
#    cannot read a manifest in a 0700 directory owned by someone else: it fails.
# 2. The new unit (User=moat, AmbientCapabilities=CAP_NET_ADMIN, NoNewPrivileges)
#    reads it as its owner, and the `nft` it runs inherits CAP_NET_ADMIN: it loads
#    `table inet moat`.
# 3. Without the ambient capability the same user cannot load the table.
# 4. The SSH fallback table (copied out of nix/module.nix) lets port 22 through from
#    a private address and drops it from a public one, with moat's table absent.
# Needs root (network namespaces), nft, setpriv, python3. Exit 0 = all held.
set -euo pipefail

moat=${1:?usage: unit-privileges.sh path/to/moat}
here=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
ns=(mpA mpL mpW)
cleanup() {
  for n in "${ns[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "unit-privileges: FAIL: $*" >&2
  exit 1
}

nobody=65534
install -m 0755 "$moat" "$work/moat"
chmod 0755 "$work"
install -d -m 0700 -o "$nobody" -g "$nobody" "$work/state"
cat >"$work/state/moat.yaml" <<'YAML'
version: 1
broker:
  hostnames: [moat.home.arpa]
users:
  tester:
    password_hash: "$argon2id$v=19$m=19456,t=2,p=1$+LCzztKoPljq5A3lBeSETw$bMOspxCxq5Ur1j5WqhKJeR49ajQoHZzyXhfFh9kUMqA"
    publish: ["test/#"]
YAML
chown "$nobody:$nobody" "$work/state/moat.yaml"
chmod 0600 "$work/state/moat.yaml"
apply=("$work/moat" --manifest "$work/state/moat.yaml" firewall --apply)

if unshare -n setpriv --inh-caps=-all,+net_admin --bounding-set=-all,+net_admin \
  --no-new-privs "${apply[@]}" >/dev/null 2>&1; then
  fail "root with only CAP_NET_ADMIN read a 0700 directory it does not own"
fi
echo "unit-privileges: old unit (root, CAP_NET_ADMIN only) cannot read the manifest: ok"

unshare -n setpriv --reuid="$nobody" --regid="$nobody" --clear-groups \
  --inh-caps=-all,+net_admin --ambient-caps=-all,+net_admin --bounding-set=-all,+net_admin \
  --no-new-privs "${apply[@]}" >/dev/null ||
  fail "the owner with ambient CAP_NET_ADMIN could not load the table"
echo "unit-privileges: new unit (owner, ambient CAP_NET_ADMIN) loads table inet moat: ok"

if unshare -n setpriv --reuid="$nobody" --regid="$nobody" --clear-groups \
  --inh-caps=-all --bounding-set=-all,+net_admin --no-new-privs "${apply[@]}" >/dev/null 2>&1; then
  fail "the table loaded without the ambient capability"
fi
echo "unit-privileges: without the ambient capability nft is refused: ok"

# The fallback table, exactly as the module writes it.
{
  echo "table inet moat-ssh-fallback {"
  sed -n "/sshFallbackTable = ''/,/^  '';/p" "$here/nix/module.nix" | sed '1d;$d'
  echo "}"
} >"$work/fallback.nft"
grep -q 'dport 22' "$work/fallback.nft" || fail "could not find sshFallbackTable in nix/module.nix"

for n in "${ns[@]}"; do ip netns add "$n"; done
ip link add mpl type veth peer name mpa1
ip link add mpw type veth peer name mpa2
ip link set mpl netns mpL
ip link set mpa1 netns mpA
ip link set mpw netns mpW
ip link set mpa2 netns mpA
ip -n mpA addr add 192.168.1.1/24 dev mpa1
ip -n mpA addr add 198.51.100.1/24 dev mpa2
ip -n mpL addr add 192.168.1.2/24 dev mpl
ip -n mpW addr add 198.51.100.3/24 dev mpw
for n in "${ns[@]}"; do ip -n "$n" link set lo up; done
ip -n mpA link set mpa1 up
ip -n mpA link set mpa2 up
ip -n mpL link set mpl up
ip -n mpW link set mpw up
ip netns exec mpA nft -f "$work/fallback.nft"
ip netns exec mpA python3 -c '
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 22))
s.listen(8)
time.sleep(30)
' &
listener=$!
for _ in $(seq 50); do
  ip netns exec mpA ss -ltnH 'sport = :22' | grep -q . && break
  sleep 0.2
done
ip netns exec mpL timeout 5 bash -c 'exec 3<>/dev/tcp/192.168.1.1/22' ||
  fail "SSH from the LAN was not let through by the fallback table"
echo "unit-privileges: fallback table lets SSH in from the LAN: ok"
rc=0
ip netns exec mpW timeout 5 bash -c 'exec 3<>/dev/tcp/198.51.100.1/22' 2>/dev/null || rc=$?
[ "$rc" -eq 124 ] || fail "SSH from a public address was not dropped (rc=$rc)"
echo "unit-privileges: fallback table drops SSH from a public address: ok"
kill "$listener" 2>/dev/null || true
wait "$listener" 2>/dev/null || true
echo "unit-privileges: OK"
