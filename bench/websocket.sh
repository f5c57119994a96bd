#!/usr/bin/env bash
# MQTT over WebSocket next to MQTT over TCP, on the same moat, with a load generator we
# did not write (mqttv5-cli's `mqttv5 bench`, which speaks mqtts:// and wss://).
#
#   bench/websocket.sh [--rounds N] [--duration S] [--moat PATH] [--mqttv5 PATH]
#
# One broker with a TLS listener and a WebSocket-over-TLS listener (same certificate,
# same client-certificate login: mqttv5-cli cannot send a username). The broker is
# pinned to core 0, the generator to core 1. Per round and transport: messages
# delivered per second inside the generator's steady window, and the broker's CPU time
# per delivered message (/proc/<pid>/stat, utime + stime, over the whole run of that
# scenario, so it includes connection set-up: a small, equal share for both).
# Rounds alternate the transport order. Needs: moat (release), mqttv5, jq, taskset.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3
DURATION=5
MOAT=target/release/moat
MQTTV5=/opt/peers/bin/mqttv5
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --moat) MOAT=$2; shift 2 ;;
    --mqttv5) MQTTV5=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for tool in "$MOAT" "$MQTTV5" jq taskset; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing: $tool" >&2; exit 2; }
done

WORK=$(mktemp -d)
BROKER=""
cleanup() { [ -n "$BROKER" ] && kill "$BROKER" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
CLK_TCK=$(getconf CLK_TCK)
cpu_secs() { awk -v hz="$CLK_TCK" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

TLS_PORT=$(free_port)
WSS_PORT=$(free_port)
mkdir -p "$WORK/state" && chmod 700 "$WORK/state"
cat > "$WORK/moat.yaml" <<EOF
version: 1
broker:
  hostnames: [localhost]
  listen:
    tls: { address: "127.0.0.1", port: $TLS_PORT }
    wss: { address: "127.0.0.1", port: $WSS_PORT }
  networks: [loopback]
  limits: { max_inflight: 20, max_queued_messages: 1000 }
  persistence: { durability: batched }
devices:
  benchdev:
    certificate: true
    publish: ["bench/#"]
    subscribe: ["bench/#"]
EOF
"$MOAT" provision --manifest "$WORK/moat.yaml" --state "$WORK/state" >/dev/null
DEV="$WORK/state/devices/benchdev"
taskset -cp 1 $$ >/dev/null
taskset -c 0 "$MOAT" serve --manifest "$WORK/moat.yaml" --state "$WORK/state" 2>"$WORK/moat.log" &
BROKER=$!
for _ in $(seq 100); do grep -q "moat is ready" "$WORK/moat.log" 2>/dev/null && break; sleep 0.1; done

run() { # transport scenario round args...
  local transport=$1 name=$2 round=$3 url; shift 3
  case "$transport" in
    tcp+tls) url="mqtts://localhost:$TLS_PORT" ;;
    wss) url="wss://localhost:$WSS_PORT/mqtt" ;;
  esac
  local c0 c1 json
  c0=$(cpu_secs "$BROKER")
  json=$(timeout 120 "$MQTTV5" bench --url "$url" --ca-cert "$WORK/state/ca.pem" \
    --cert "$DEV/cert.pem" --key "$DEV/key.pem" --topic "bench/ws$round${transport//+/-}" \
    --duration "$DURATION" --warmup 1 "$@" 2>"$WORK/mqttv5.err") || { grep -m3 -i "panic\|error" "$WORK/mqttv5.err" >&2; return 1; }
  c1=$(cpu_secs "$BROKER")
  jq -c --arg t "$transport" --arg n "$name" --argjson r "$round" --argjson c "$(echo "$c1 - $c0" | bc -l)" \
    '{scenario: $n, transport: $t, round: $r, delivered_per_sec: .results.throughput_steady,
      delivered: .results.received, broker_cpu_us_per_delivered: (if .results.received > 0 then $c * 1e6 / .results.received else null end)}' <<<"$json"
}

SCENARIOS=(
  "fan-in 8->1 q0|--qos 0 --publishers 8 --subscribers 1 --payload-size 64"
  "fan-out 1->8 q0|--qos 0 --publishers 1 --subscribers 8 --payload-size 64"
  "fan-in 8->1 q1|--qos 1 --publishers 8 --subscribers 1 --payload-size 64"
)
for round in $(seq "$ROUNDS"); do
  order=("tcp+tls" "wss")
  [ $((round % 2)) = 0 ] && order=("wss" "tcp+tls")
  for entry in "${SCENARIOS[@]}"; do
    name=${entry%%|*}; args=${entry#*|}
    for transport in "${order[@]}"; do
      # shellcheck disable=SC2086
      run "$transport" "$name" "$round" $args || echo "{\"scenario\":\"$name\",\"transport\":\"$transport\",\"round\":$round,\"failed\":true}"
    done
  done
done | tee "$WORK/results.jsonl" >&2
echo "medians over $ROUNDS rounds (broker pinned to core 0, mqttv5-cli on core 1):"
jq -rs 'map(select(.failed != true)) | group_by([.scenario, .transport]) | .[] |
  (map(.delivered_per_sec) | sort | .[length/2|floor]) as $rate |
  (map(.broker_cpu_us_per_delivered) | sort | .[length/2|floor]) as $cpu |
  "\(.[0].scenario)\t\(.[0].transport)\t\($rate | floor) msg/s\t\($cpu * 100 | round / 100) us CPU/msg"' "$WORK/results.jsonl"
