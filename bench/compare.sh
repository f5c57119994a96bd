#!/usr/bin/env bash
# Side-by-side benchmark of moat, Mosquitto and rumqttd on loopback, with two load
# generators (moat-bench and mqttv5-cli's `mqttv5 bench`).
#
# The brokers are configured alike as far as each allows: a TLS listener with the SAME
# certificate and key (moat's state dir), a plaintext listener, one user `bench` with a
# password (argon2id for moat, mosquitto_passwd's PBKDF2-SHA512 for Mosquitto; rumqttd
# compares plaintext passwords from its config), readwrite on bench/# (rumqttd has no
# ACLs), in-flight 20, 1000 queued messages per client (rumqttd: its router's outgoing
# limit), TCP_NODELAY. mqttv5-cli cannot send a username, so it logs in with a client
# certificate moat issues (device `benchdev`): moat and Mosquitto check it; rumqttd's
# default build cannot (its `verify-client-cert` feature is off), so it gets a TLS
# listener without authentication for that generator.
#
# Method (issue 16): each mode runs the brokers one after the other, alternating their
# order every round; in the `pinned` mode the broker runs on core 0 and the generator
# (and this script) on core 1 (taskset), in `unpinned` both float. Only what arrives
# inside the measured window counts; the broker's CPU time (utime + stime of
# /proc/<pid>/stat) over the same window, per delivered message, is the efficiency
# figure. Medians over rounds; ratios are moat / peer.
#
# Usage: bench/compare.sh [options]
#   --quick              1 pinned round, 1 unpinned round, 2 s windows, no extras
#   --rounds N           pinned rounds (default 3)
#   --unpinned-rounds N  unpinned rounds (default 1)
#   --iso-pairs N        isolation rate pairs (alone, + slow) per pinned round
#                        (default 5)
#   --q1-fan-in-runs N   runs of the QoS 1 fan-in row per round (default 3)
#   --latency-runs N     1 000 msg/s latency runs of each broker per round, the
#                        brokers alternating run by run (default 3)
#   --modes LIST         pinned,unpinned (default both)
#   --unpinned-all       every scenario unpinned too (default there: the fan-in and
#                        fan-out rows of both generators, no latency or isolation)
#   --brokers LIST       moat,mosquitto,rumqttd (default: all that are installed)
#   --no-extras          skip idle memory, connect rate, durable-store and cross-check
#   --moat PATH          moat binary (default $CARGO_TARGET_DIR/release/moat; moat-bench
#                        from the same directory); both are copied before the run
#   --peers DIR          where rumqttd and mqttv5 are (default /opt/peers/bin)
#   --out FILE           also write the markdown report to FILE
#   --keep               keep the work directory (logs, configs, raw JSON)
#   --steal-limit PCT    measure a run again when the host withheld more than PCT% of
#                        the CPU time asked for during it (default 10; /proc/stat "steal")
#   --steal-retries N    at most N repeats per run (default 2; 0 turns it off)
# Tools (BENCHMARKS.md, "Installing the tools"): mosquitto, mosquitto_passwd/_pub/_sub,
# jq, python3, taskset (util-linux), perf (linux-perf, for syscall counts), rumqttd and
# mqttv5 (cargo install; optional: without them their columns and rows are missing).
set -euo pipefail

ROUNDS=3
UNPINNED_ROUNDS=1
ISO_PAIRS=5
Q1_FAN_IN_RUNS=3
LATENCY_RUNS=3
QUICK=0
KEEP=0
STEAL_LIMIT=10
STEAL_RETRIES=2
EXTRAS=1
OUT=""
MODES="pinned,unpinned"
UNPINNED_ALL=0
BROKERS=""
PEERS=/opt/peers/bin
MOAT_SRC="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}/release/moat"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; ROUNDS=1; UNPINNED_ROUNDS=1; EXTRAS=0; ISO_PAIRS=1; Q1_FAN_IN_RUNS=1; LATENCY_RUNS=1 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --unpinned-rounds) UNPINNED_ROUNDS="$2"; shift ;;
    --iso-pairs) ISO_PAIRS="$2"; shift ;;
    --q1-fan-in-runs) Q1_FAN_IN_RUNS="$2"; shift ;;
    --latency-runs) LATENCY_RUNS="$2"; shift ;;
    --modes) MODES="$2"; shift ;;
    --unpinned-all) UNPINNED_ALL=1 ;;
    --brokers) BROKERS="$2"; shift ;;
    --no-extras) EXTRAS=0 ;;
    --moat) MOAT_SRC="$2"; shift ;;
    --peers) PEERS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --keep) KEEP=1 ;;
    --steal-limit) STEAL_LIMIT="$2"; shift ;;
    --steal-retries) STEAL_RETRIES="$2"; shift ;;
    -h|--help) sed -n '2,43p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

MOSQUITTO=/usr/sbin/mosquitto
RUMQTTD="$PEERS/rumqttd"
MQTTV5="$PEERS/mqttv5"
for tool in "$MOSQUITTO" mosquitto_passwd mosquitto_sub mosquitto_pub jq python3 taskset; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
BENCH_SRC="$(dirname "$MOAT_SRC")/moat-bench"
for bin in "$MOAT_SRC" "$BENCH_SRC"; do
  [ -x "$bin" ] || { echo "no binary at $bin (cargo build --release -p moat -p moat-bench)" >&2; exit 2; }
done
if [ -z "$BROKERS" ]; then
  BROKERS="moat,mosquitto"
  [ -x "$RUMQTTD" ] && BROKERS="$BROKERS,rumqttd"
fi
BROKERS=${BROKERS//,/ }
HAVE_MQTTV5=0
[ -x "$MQTTV5" ] && HAVE_MQTTV5=1
CPUS=$(nproc)
if [ "$CPUS" -lt 2 ] && [[ "$MODES" == *pinned* ]]; then
  echo "pinning needs 2 CPUs; running unpinned only" >&2
  MODES=unpinned
fi

WORK=$(mktemp -d /tmp/moat-compare.XXXXXX)
MOAT="$WORK/moat"
BENCH="$WORK/moat-bench"
cp "$MOAT_SRC" "$MOAT"
cp "$BENCH_SRC" "$BENCH"
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
declare -A PID=([moat]="" [mosquitto]="" [rumqttd]="")

cleanup() {
  local b
  for b in moat mosquitto rumqttd; do
    if [ -n "${PID[$b]}" ]; then kill "${PID[$b]}" 2>/dev/null || true; wait "${PID[$b]}" 2>/dev/null || true; fi
  done
  if [ "$KEEP" = 1 ]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port seconds
  local i
  for i in $(seq 1 $(( $2 * 20 ))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; return 1
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# utime + stime (fields 14 and 15 of /proc/<pid>/stat, counted after the ")" that
# ends the command name) in seconds.
CLK_TCK=$(getconf CLK_TCK)
cpu_secs() { awk -v hz="$CLK_TCK" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"; }
wchar() { awk '/^wchar:/ {print $2}' "/proc/$1/io"; }

PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
declare -A PORT
for key in moat-tls moat-plain mosquitto-tls mosquitto-plain mosquitto-cert rumqttd-tls rumqttd-plain rumqttd-cert; do
  PORT[$key]=$(free_port)
done
PORT[moat-cert]=${PORT[moat-tls]} # moat takes passwords and certificates on one listener

# ---------------------------------------------------------------- CPU placement
# pinned: broker on core 0; this script and every generator on core 1. The broker is
# started as `taskset -c 0 BROKER` (taskset execs it, so $! is the broker's pid).
PIN=()
place_self() { # pinned|unpinned
  if [ "$1" = pinned ]; then
    PIN=(taskset -c 0)
    taskset -cp 1 $$ >/dev/null
  else
    PIN=()
    taskset -cp "0-$((CPUS - 1))" $$ >/dev/null
  fi
}

# ---------------------------------------------------------------- moat
mkdir -p "$WORK/moat-state"
chmod 700 "$WORK/moat-state"
HASH=$(printf '%s' "$PASSWORD" | "$MOAT" passwd bench --stdin --manifest "$WORK/none.yaml" 2>/dev/null | grep -o '\$argon2id\$[^"]*' | head -n 1)
case "$HASH" in '$argon2id$'*) ;; *) echo "moat passwd gave no hash: $HASH" >&2; exit 1 ;; esac
cat > "$WORK/moat.yaml" <<EOF
version: 1
broker:
  hostnames: [localhost]
  listen:
    tls: { address: "127.0.0.1", port: ${PORT[moat-tls]} }
    plain: { address: "127.0.0.1", port: ${PORT[moat-plain]} }
  networks: [loopback]
  limits:
    max_connections: 20000
    max_connections_per_ip: 20000
    max_inflight: 20
    max_queued_messages: 1000
  persistence:
    durability: batched
users:
  bench:
    password_hash: "$HASH"
    publish: ["bench/#"]
    subscribe: ["bench/#"]
    plaintext: true
devices:
  benchdev:
    certificate: true
    publish: ["bench/#"]
    subscribe: ["bench/#"]
EOF
"$MOAT" provision --manifest "$WORK/moat.yaml" --state "$WORK/moat-state" >/dev/null
CA="$WORK/moat-state/ca.pem"
DEV="$WORK/moat-state/devices/benchdev"
# The same broker with durability `full`: every commit fsynced before its PUBACK.
sed 's/durability: batched/durability: full/' "$WORK/moat.yaml" > "$WORK/moat-full.yaml"
MOAT_MANIFEST="$WORK/moat.yaml"

# ---------------------------------------------------------------- mosquitto
mkdir -p "$WORK/mosq/data"
cp "$WORK/moat-state/server.pem" "$WORK/moat-state/server.key" "$CA" "$WORK/mosq/"
mosquitto_passwd -b -c "$WORK/mosq/passwd" bench "$PASSWORD" >/dev/null 2>&1
printf 'user bench\ntopic readwrite bench/#\nuser benchdev\ntopic readwrite bench/#\n' > "$WORK/mosq/acl"
cat > "$WORK/mosq/mosquitto.conf" <<EOF
# Equivalent of the moat manifest above.
user root
per_listener_settings false
allow_anonymous false
password_file $WORK/mosq/passwd
acl_file $WORK/mosq/acl
set_tcp_nodelay true
max_inflight_messages 20
max_queued_messages 1000
max_connections -1
# mosquitto writes its database only at autosave intervals and on exit (no fsync per
# message); the closest it has to moat's durable store.
persistence true
persistence_location $WORK/mosq/data/
autosave_interval 60
log_dest stderr
log_type error
log_type warning
listener ${PORT[mosquitto-tls]} 127.0.0.1
certfile $WORK/mosq/server.pem
keyfile $WORK/mosq/server.key
listener ${PORT[mosquitto-plain]} 127.0.0.1
# Client certificates (for mqttv5-cli): the certificate's CN is the username.
listener ${PORT[mosquitto-cert]} 127.0.0.1
certfile $WORK/mosq/server.pem
keyfile $WORK/mosq/server.key
cafile $WORK/mosq/ca.pem
require_certificate true
use_identity_as_username true
EOF

# ---------------------------------------------------------------- rumqttd
# rumqttd 0.20: rustls TLS with the same certificate and key; passwords compared in
# plaintext from this file; no ACLs; no persistence (its commit log is in memory);
# client certificates are not checked by the default build, so the listener for
# mqttv5-cli has no authentication. Each listener runs its own single-threaded tokio
# runtime and the router a thread of its own.
mkdir -p "$WORK/rumqttd"
rumqttd_listener() { # index name port tls auth
  printf '[v5.%s]\nname = "%s"\nlisten = "127.0.0.1:%s"\nnext_connection_delay_ms = 0\n' "$1" "$2" "$3"
  if [ "$4" = tls ]; then
    printf '    [v5.%s.tls]\n    certpath = "%s"\n    keypath = "%s"\n' "$1" "$WORK/moat-state/server.pem" "$WORK/moat-state/server.key"
  fi
  printf '    [v5.%s.connections]\n    connection_timeout_ms = 60000\n    max_payload_size = 1048576\n    max_inflight_count = 20\n    dynamic_filters = true\n' "$1"
  if [ "$5" = auth ]; then
    printf '    [v5.%s.connections.auth]\n    bench = "%s"\n' "$1" "$PASSWORD"
  fi
}
{
  printf 'id = 0\n\n[router]\nid = 0\nmax_connections = 20010\nmax_outgoing_packet_count = 1000\nmax_segment_size = 104857600\nmax_segment_count = 10\n\n'
  rumqttd_listener 1 tls "${PORT[rumqttd-tls]}" tls auth
  rumqttd_listener 2 plain "${PORT[rumqttd-plain]}" plain auth
  rumqttd_listener 3 cert "${PORT[rumqttd-cert]}" tls none
} > "$WORK/rumqttd/rumqttd.toml"

start_broker() { # name [batched|full]
  case "$1" in
    moat)
      MOAT_MANIFEST="$WORK/moat.yaml"
      [ "${2:-batched}" = full ] && MOAT_MANIFEST="$WORK/moat-full.yaml"
      "${PIN[@]}" "$MOAT" serve --manifest "$MOAT_MANIFEST" --state "$WORK/moat-state" >>"$WORK/moat.log" 2>&1 &
      PID[moat]=$! ;;
    mosquitto)
      "${PIN[@]}" "$MOSQUITTO" -c "$WORK/mosq/mosquitto.conf" >>"$WORK/mosq.log" 2>&1 &
      PID[mosquitto]=$! ;;
    rumqttd)
      "${PIN[@]}" "$RUMQTTD" --quiet --config "$WORK/rumqttd/rumqttd.toml" >>"$WORK/rumqttd.log" 2>&1 &
      PID[rumqttd]=$! ;;
  esac
  wait_port "${PORT[$1-tls]}" 30
}
stop_broker() { # name
  if [ -n "${PID[$1]}" ]; then
    kill "${PID[$1]}" 2>/dev/null || true
    wait "${PID[$1]}" 2>/dev/null || true
  fi
  PID[$1]=""
}

# ---------------------------------------------------------------- scenarios
if [ "$QUICK" = 1 ]; then
  WIN="--duration 2s --warmup 500ms"; LWIN="--duration 3s --warmup 500ms"; MQ_DUR=3
else
  WIN="--duration 3s --warmup 1s"; LWIN="--duration 5s --warmup 1s"; MQ_DUR=5
fi
# name|transport|moat-bench arguments. Every flow run reads the broker's CPU time.
Q1_FAN_IN="fan-in 8->1 q1|tls|fan-in --publishers 8 --qos 1 --payload 64 $WIN"
LATENCY=(
  "latency 1000/s q0|tls|latency --rate 1000 --qos 0 --payload 64 $LWIN"
  "latency 1000/s q1|tls|latency --rate 1000 --qos 1 --payload 64 $LWIN"
)
SCENARIOS=(
  "fan-in 8->1 q0|tls|fan-in --publishers 8 --qos 0 --payload 64 $WIN"
  "$Q1_FAN_IN"
  "fan-out 1->8 q0|tls|fan-out --subscribers 8 --qos 0 --payload 64 $WIN"
  "fan-out 1->8 q1|tls|fan-out --subscribers 8 --qos 1 --payload 64 $WIN"
  "fan-out 1->100 q0|tls|fan-out --subscribers 100 --qos 0 --payload 64 $WIN"
  "fan-out 1->100 q1|tls|fan-out --subscribers 100 --qos 1 --payload 64 $WIN"
)
# The QoS 1 fan-in's CPU per delivery moved 3.3-4.7 us between runs of one build on
# this machine against a 4 us target: it runs Q1_FAN_IN_RUNS times a round, the
# repeats after the other rows, and the report takes the median of all.
for _ in $(seq 2 "$Q1_FAN_IN_RUNS"); do SCENARIOS+=("$Q1_FAN_IN"); done
# The latency rows run in a phase of their own after each pinned round's other rows:
# LATENCY_RUNS times, each time every broker once (started for it, both rows, stopped),
# in an order rotated each time. A p99 is the 50th-slowest of 5 000 samples and
# follows the host's moment: each broker's p99 rose with the steal during its run,
# and when one broker's runs came in one block, minutes from the other's, one
# broker drew most of a busy spell (BENCHMARKS.md, "What is not met"). Run by run,
# the k-th runs of the brokers are minutes apart at most, and the report also gives
# the median of their pairs' ratios.
# Isolation: the fast subscriber alone and with one more subscriber on the same
# topics that reads at most SLOW_RATE messages/s. Its rate with publishers going as
# fast as they can; its latency at OFFERED messages/s, a load every broker here
# carries (at saturation latency measures the queues, not the delivery).
# The rate pair runs ISO_PAIRS times a round, in alternating order (alone first, then
# + slow first): one pair's ratio swings 0.75-1.07x on this machine where the cost
# itself is ~5% (BENCHMARKS.md, "What is not met"), so the medians need more runs.
SLOW_RATE=2000
OFFERED=10000
ISOLATION=()
for q in 0 1; do
  alone="isolation q$q max, alone|tls|fan-in --publishers 8 --qos $q --payload 64 $WIN"
  slow="isolation q$q max, + slow|tls|fan-in --publishers 8 --qos $q --payload 64 --slow-subscriber $SLOW_RATE $WIN"
  for pair in $(seq 1 "$ISO_PAIRS"); do
    if [ $((pair % 2)) = 1 ]; then ISOLATION+=("$alone" "$slow"); else ISOLATION+=("$slow" "$alone"); fi
  done
  ISOLATION+=(
    "isolation q$q $OFFERED/s, alone|tls|fan-in --publishers 8 --qos $q --payload 64 --rate $OFFERED --measure-latency $WIN"
    "isolation q$q $OFFERED/s, + slow|tls|fan-in --publishers 8 --qos $q --payload 64 --rate $OFFERED --measure-latency --slow-subscriber $SLOW_RATE $WIN"
  )
done
# mqttv5-cli: name|mqttv5 bench arguments (TLS with the benchdev client certificate).
MQTTV5_SCENARIOS=(
  "fan-in 8->1 q0|--qos 0 --publishers 8 --subscribers 1 --payload-size 64"
  "fan-out 1->8 q0|--qos 0 --publishers 1 --subscribers 8 --payload-size 64"
)
# What goes on the wire and through the broker's system calls (pinned, round 1).
WIRE=(
  "wire: fan-in 8->1 q0|tls|fan-in --publishers 8 --qos 0 --payload 64 $WIN"
  "wire: fan-out 1->8 q0|tls|fan-out --subscribers 8 --qos 0 --payload 64 $WIN"
)
# Subscribers with persistent sessions: every QoS 1 message must be stored for them.
DURABLE=(
  "fan-in 8->1 q1 64B persistent|tls|fan-in --publishers 8 --qos 1 --payload 64 --persistent-subscribers $WIN"
)
EXTRA_SCENARIOS=(
  "fan-in 8->1 q0 64B|plain|fan-in --publishers 8 --qos 0 --payload 64 $WIN"
  "fan-in 8->1 q0 1KiB|tls|fan-in --publishers 8 --qos 0 --payload 1KiB $WIN"
  "fan-in 8->1 q2 64B|tls|fan-in --publishers 8 --qos 2 --payload 64 $WIN"
  "connect-rate x8|tls|connect-rate --parallel 8 $WIN"
)
IDLE=("idle 1000|plain|1000" "idle 1000|tls|1000" "idle 10000|plain|10000" "idle 10000|tls|10000")
HAVE_PERF=0
if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
  HAVE_PERF=1
fi

target_args() { # broker transport
  printf -- '--host 127.0.0.1 --port %s --username bench --protocol 5' "${PORT[$1-$2]}"
  [ "$2" = tls ] && printf -- ' --cafile %s --server-name localhost' "$CA"
  return 0
}

MODE=""
# The latency phase's k-th alternation of a round, which pairs the brokers' runs.
LATENCY_PASS=0
record() { # broker name transport round json [generator]
  jq -c --arg b "$1" --arg n "$2" --arg t "$3" --argjson r "$4" --arg m "$MODE" --arg g "${6:-moat-bench}" \
    --argjson pass "$LATENCY_PASS" \
    '. + {broker: $b, name: $n, transport: $t, round: $r, mode: $m, generator: $g}
       + (if $pass > 0 then {latency_pass: $pass} else {} end)' <<<"$5" >> "$RESULTS"
}

# Host steal: field 9 of /proc/stat's "cpu" line, the time this VM's CPUs were ready
# to run while the hypervisor ran someone else. It is reported as a share of the CPU
# time the VM asked for (busy + stolen), which does not depend on how many cores the
# run keeps busy: how much of what the broker and the generator wanted the host
# withheld. A run during which it withheld more than STEAL_LIMIT percent is measured
# again (at most STEAL_RETRIES times, for every broker alike); the repeated attempt is
# kept in the JSON as `superseded`, and every row carries its `host_steal_pct` (over
# the generator's whole run).
# "busy stolen" ticks so far: user nice system irq softirq, and steal.
cpu_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat; }

# Runs one measurement (a command that prints a JSON row, or fails having logged why)
# with the steal accounting above, records it and says how it went.
run_measured() { # broker name transport round generator command...
  local broker=$1 name=$2 transport=$3 round=$4 generator=$5; shift 5
  local attempt out before steal
  for attempt in $(seq 0 "$STEAL_RETRIES"); do
    before=$(cpu_ticks)
    if ! out=$("$@"); then
      printf '  %-6s %-9s %-26s %-5s FAILED (%s; see bench.err, mqttv5.err)\n' "$MODE" "$broker" "$name" "$transport" "$generator" >&2
      return 0
    fi
    steal=$(awk -v before="$before" -v after="$(cpu_ticks)" 'BEGIN {
      split(before, b, " "); split(after, a, " "); busy = a[1] - b[1]; stolen = a[2] - b[2]
      printf "%.1f", (busy + stolen > 0) ? 100 * stolen / (busy + stolen) : 0 }')
    out=$(jq -c --argjson s "$steal" '. + {host_steal_pct: $s}' <<<"$out")
    if awk -v s="$steal" -v l="$STEAL_LIMIT" 'BEGIN { exit !(s > l) }' && [ "$attempt" -lt "$STEAL_RETRIES" ]; then
      record "$broker" "$name" "$transport" "$round" "$(jq -c '. + {superseded: true}' <<<"$out")" "$generator"
      printf '  %-6s %-9s %-26s %-5s host steal %s%%: measured again\n' "$MODE" "$broker" "$name" "$transport" "$steal" >&2
      continue
    fi
    record "$broker" "$name" "$transport" "$round" "$out" "$generator"
    printf '  %-6s %-9s %-26s %-5s ok (%s, host steal %s%%)\n' "$MODE" "$broker" "$name" "$transport" "$generator" "$steal" >&2
    return 0
  done
}

measure_bench() { # broker transport args...
  local broker=$1 transport=$2; shift 2
  local extra=()
  case "$1" in fan-in|fan-out) extra=(--broker-pid "${PID[$broker]}") ;; esac
  # shellcheck disable=SC2046
  MOAT_BENCH_PASSWORD="$PASSWORD" timeout 300 "$BENCH" "$@" "${extra[@]}" $(target_args "$broker" "$transport") \
    --json 2>>"$WORK/bench.err" || { tail -n 3 "$WORK/bench.err" >&2; return 1; }
}

run_bench() { # broker name transport round args...
  local broker=$1 name=$2 transport=$3 round=$4; shift 4
  run_measured "$broker" "$name" "$transport" "$round" moat-bench measure_bench "$broker" "$transport" "$@"
}

# Bytes the kernel has handed to the generator's sockets on a broker port, summed
# (ss bytes_received): what the broker has delivered, whether or not the client has
# counted it yet.
socket_bytes() { # port
  ss -tinH "( dport = :$1 )" | grep -o 'bytes_received:[0-9]*' | awk -F: '{s += $2} END {print s + 0}'
}

# mqttv5 bench, with the broker's CPU time read when it announces its window and
# after its last per-second sample of the window. The bytes reaching the generator's
# sockets are read at the same two instants: mqttv5 counts a message in a callback
# behind an unbounded queue inside the generator, so what the broker delivered in the
# window and what the generator counted in it can differ (BENCHMARKS.md, "What
# mqttv5-cli counts"). Bytes become messages at their largest possible size on the
# wire, so the figure is a floor, for every broker alike: a QoS 0 MQTT 5 PUBLISH with
# no properties (2 bytes of fixed header, 2 + the topic, 1 of properties, the payload;
# topics bench/mqROUND/N) plus a whole TLS 1.3 record's overhead (5 + 1 + 16 bytes),
# as if every message came in a record of its own (Mosquitto's do; moat's share one).
measure_mqttv5() { # broker round args...
  local broker=$1 round=$2; shift 2
  local err="$WORK/mqttv5.$$.err" json="$WORK/mqttv5.$$.json" pid cpu0="" cpu1="" t0="" t1="" n
  local port=${PORT[$broker-cert]} bytes0="" bytes1="" payload topic="bench/mq$round/0"
  payload=$(printf '%s\n' "$@" | grep -A1 -x -- --payload-size | tail -n 1)
  : > "$err"
  # shellcheck disable=SC2086
  timeout 120 "$MQTTV5" bench --url "mqtts://localhost:$port" --ca-cert "$CA" \
    --cert "$DEV/cert.pem" --key "$DEV/key.pem" --topic "bench/mq$round" \
    --duration "$MQ_DUR" --warmup 1 "$@" > "$json" 2> "$err" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if [ -z "$cpu0" ] && grep -q '^measuring for' "$err"; then
      cpu0=$(cpu_secs "${PID[$broker]}"); t0=$(date +%s.%N); bytes0=$(socket_bytes "$port")
    elif [ -n "$cpu0" ]; then
      n=$(grep -c 'delivered [0-9]* msg/s' "$err" || true)
      if [ "$n" -ge "$MQ_DUR" ]; then
        cpu1=$(cpu_secs "${PID[$broker]}"); t1=$(date +%s.%N); bytes1=$(socket_bytes "$port"); break
      fi
    fi
    sleep 0.05
  done
  if wait "$pid" && [ -n "$cpu1" ] && jq -e .results "$json" >/dev/null 2>&1; then
    local window_delivered
    window_delivered=$(grep -o 'delivered [0-9]* msg/s' "$err" | head -n "$MQ_DUR" | awk '{s += $2} END {print s + 0}')
    jq -c --argjson c0 "$cpu0" --argjson c1 "$cpu1" \
      --argjson t0 "$t0" --argjson t1 "$t1" --argjson d "$window_delivered" \
      --argjson b0 "$bytes0" --argjson b1 "$bytes1" --argjson most "$((2 + 2 + ${#topic} + 1 + payload + 22))" \
      '{scenario: "mqttv5", received_per_sec: .results.throughput_steady, offered_per_sec: .results.offered_rate,
        delivered_ratio: .results.delivered_ratio, window_delivered: $d, window_secs: ($t1 - $t0),
        broker_cpu_secs: ($c1 - $c0), broker_cpu_us_per_delivered: (if $d > 0 then ($c1 - $c0) * 1e6 / $d else null end),
        socket_bytes_per_sec: (($b1 - $b0) / ($t1 - $t0)), most_bytes_per_msg: $most,
        reached_socket_per_sec_at_least: (($b1 - $b0) / $most / ($t1 - $t0))}' "$json"
  else
    cat "$err" >> "$WORK/mqttv5.err"
    tail -n 3 "$err" >&2
    return 1
  fi
}

run_mqttv5() { # broker name round args...
  local broker=$1 name=$2 round=$3; shift 3
  run_measured "$broker" "$name" tls "$round" mqttv5 measure_mqttv5 "$broker" "$round" "$@"
}

# run_bench, plus the broker's system calls (perf) and bytes written (/proc/<pid>/io)
# over the whole run, for the per-message counts of the wire table.
run_bench_counting_syscalls() { # broker name transport round args...
  local perf="" w0 w1 pid=${PID[$1]}
  if [ "$HAVE_PERF" = 1 ]; then
    perf stat -x, -e raw_syscalls:sys_enter,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync \
      -p "$pid" -o "$WORK/perf.out" 2>>"$WORK/bench.err" &
    perf=$!
    sleep 0.3
  fi
  w0=$(wchar "$pid")
  # One attempt: the counts span the whole run, so a repeat would mix two runs.
  STEAL_RETRIES=0 run_bench "$@"
  w1=$(wchar "$pid")
  if [ -n "$perf" ]; then
    kill -INT "$perf" 2>/dev/null || true
    wait "$perf" 2>/dev/null || true
    record "$1" "$2" "$3" "$4" "$(awk -F, -v w="$((w1 - w0))" '
      /sys_enter/ { split($3, e, ":"); n[e[2]] = $1 }
      END { printf "{\"scenario\":\"syscalls\",\"wchar\":%d", w
            for (k in n) printf ",\"%s\":%d", k, n[k]
            print "}" }' "$WORK/perf.out")"
  else
    record "$1" "$2" "$3" "$4" "{\"scenario\":\"syscalls\",\"wchar\":$((w1 - w0))}"
  fi
}

# Runs "name|transport|arguments" specs one after the other against a broker.
run_specs() { # runner broker round spec...
  local runner=$1 broker=$2 round=$3 spec name transport args; shift 3
  for spec in "$@"; do
    IFS='|' read -r name transport args <<<"$spec"
    # shellcheck disable=SC2086
    "$runner" "$broker" "$name" "$transport" "$round" $args
  done
}

# Whether a row runs in this mode: unpinned, only the fan-in and fan-out rows unless
# --unpinned-all.
runs_in_mode() { # row name
  [ "$MODE" = pinned ] || [ "$UNPINNED_ALL" = 1 ] || [[ "$1" == fan-* ]]
}

order_for() { # round -> the brokers, rotated by round
  local -a list
  read -r -a list <<<"$BROKERS"
  local n=${#list[@]} i out=""
  for i in $(seq 0 $((n - 1))); do out="$out ${list[$(( (i + $1 - 1) % n ))]}"; done
  echo "$out"
}

# The machine's own stalls, on each core with no broker up (bench/host_stalls.py), at
# the start and the end: a latency maximum near them is the host's.
host_stalls() { # before|after
  local core pids=()
  for core in $(seq 0 $((CPUS - 1))); do
    python3 "$(dirname "$0")/host_stalls.py" "$core" "$STALL_SECONDS" "$1" >>"$RESULTS" &
    pids+=($!)
  done
  wait "${pids[@]}"
}
STALL_SECONDS=10
[ "$QUICK" = 1 ] && STALL_SECONDS=2

STARTED=$(date +%s)
host_stalls before
# The commit measured: read now, not when the report is written (the checkout may
# move during a long run).
MOAT_COMMIT=$(cd "$(dirname "$0")" && git rev-parse --short HEAD 2>/dev/null || echo '?')
echo "brokers: $BROKERS; mqttv5: $([ $HAVE_MQTTV5 = 1 ] && echo yes || echo no); perf: $HAVE_PERF; work $WORK" >&2
for MODE in ${MODES//,/ }; do
  place_self "$MODE"
  rounds=$ROUNDS
  [ "$MODE" = unpinned ] && rounds=$UNPINNED_ROUNDS
  for round in $(seq 1 "$rounds"); do
    echo "$MODE round $round/$rounds" >&2
    for broker in $(order_for "$round"); do
      start_broker "$broker"
      for spec in "${SCENARIOS[@]}" "${ISOLATION[@]}"; do
        IFS='|' read -r name transport args <<<"$spec"
        runs_in_mode "$name" || continue
        # shellcheck disable=SC2086
        run_bench "$broker" "$name" "$transport" "$round" $args
      done
      if [ "$HAVE_MQTTV5" = 1 ]; then
        for spec in "${MQTTV5_SCENARIOS[@]}"; do
          IFS='|' read -r name args <<<"$spec"
          # shellcheck disable=SC2086
          run_mqttv5 "$broker" "$name" "$round" $args
        done
      fi
      if [ "$MODE" = pinned ] && [ "$round" = 1 ]; then
        run_specs run_bench_counting_syscalls "$broker" "$round" "${WIRE[@]}"
      fi
      stop_broker "$broker"
    done
    if runs_in_mode latency; then
      for LATENCY_PASS in $(seq 1 "$LATENCY_RUNS"); do
        for broker in $(order_for $((round + LATENCY_PASS - 1))); do
          start_broker "$broker"
          run_specs run_bench "$broker" "$round" "${LATENCY[@]}"
          stop_broker "$broker"
        done
      done
      LATENCY_PASS=0
    fi
  done
done

# ---------------------------------------------------------------- extras
# Idle memory, connect rate, more payloads and QoS 2, the durable store and an
# independent cross-check, moat and Mosquitto only, unpinned, one round.
XC_MOAT="- 0"; XC_MOSQ="- 0"; CROSS_N=100000
if [ "$EXTRAS" = 1 ]; then
  MODE=extras
  place_self unpinned
  for spec in "${IDLE[@]}"; do
    IFS='|' read -r name transport count <<<"$spec"
    for broker in moat mosquitto; do
      start_broker "$broker"
      sleep 1
      record "$broker" "fresh broker RSS" "-" 1 "{\"scenario\":\"rss\",\"rss_kib\":$(rss_kib "${PID[$broker]}")}"
      # One attempt: memory does not depend on the CPU the host withholds, and a
      # repeat on the same broker would measure the pages the first one left.
      STEAL_RETRIES=0 run_bench "$broker" "$name" "$transport" 1 idle --connections "$count" \
        --parallel 32 --settle 2s --hold 0s --source-addresses 8 --broker-pid "${PID[$broker]}"
      stop_broker "$broker"
    done
  done
  for broker in moat mosquitto; do
    start_broker "$broker"
    run_specs run_bench "$broker" 1 "${EXTRA_SCENARIOS[@]}"
    for spec in "${DURABLE[@]}"; do
      IFS='|' read -r name transport args <<<"$spec"
      # shellcheck disable=SC2086
      run_bench_counting_syscalls "$broker" "$name, moat batched" "$transport" 1 $args
    done
    stop_broker "$broker"
  done
  start_broker moat full
  for spec in "${DURABLE[@]}"; do
    IFS='|' read -r name transport args <<<"$spec"
    # shellcheck disable=SC2086
    run_bench_counting_syscalls moat "$name, moat full" "$transport" 1 $args
  done
  stop_broker moat

  # An independent client (mosquitto_pub/mosquitto_sub, libmosquitto) moves a fixed
  # count through each broker; its moat/mosquitto ratio must agree with ours.
  seq 1 "$CROSS_N" | sed 's/^/payload-/' > "$WORK/lines"
  cross_check() { # port -> "messages/s received"
    local port=$1 sub pub out="$WORK/xc-$1.txt" done="$WORK/xc-$1.done" prev=-1 n
    mosquitto_sub -h 127.0.0.1 -p "$port" -u bench -P "$PASSWORD" -q 1 -t 'bench/xc/#' \
      -F '%U' -C "$CROSS_N" -W 90 > "$out" &
    sub=$!
    sleep 0.5
    # mosquitto_pub -l stops at the end of its input, sent or not (with it closed at
    # once, about a third of 100 000 lines went out), so the input stays open until
    # the subscriber has had everything it is going to get.
    { cat "$WORK/lines"; while [ ! -e "$done" ]; do sleep 0.2; done; } |
      mosquitto_pub -h 127.0.0.1 -p "$port" -u bench -P "$PASSWORD" -q 1 -t bench/xc/1 -l &
    pub=$!
    while kill -0 "$sub" 2>/dev/null; do
      sleep 1
      n=$(wc -l < "$out")
      [ "$n" = "$prev" ] && break
      prev=$n
    done
    touch "$done"
    kill "$sub" 2>/dev/null || true
    wait "$sub" 2>/dev/null || true
    wait "$pub" 2>/dev/null || true
    python3 - "$out" <<'PY'
import sys
stamps = [float(l) for l in open(sys.argv[1]) if l.strip()]
span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0
print(f"{(len(stamps) - 1) / span:.1f} {len(stamps)}" if span > 0 else f"- {len(stamps)}")
PY
  }
  start_broker moat; start_broker mosquitto
  XC_MOAT=$(cross_check "${PORT[moat-plain]}")
  XC_MOSQ=$(cross_check "${PORT[mosquitto-plain]}")
  stop_broker moat; stop_broker mosquitto
fi
host_stalls after
ELAPSED=$(( $(date +%s) - STARTED ))

# ---------------------------------------------------------------- report
REPORT=$(python3 "$(dirname "$0")/report.py" "$RESULTS" "$ROUNDS" "$UNPINNED_ROUNDS" "$ELAPSED" "$QUICK" "$XC_MOAT" "$XC_MOSQ" "$CROSS_N" "$SLOW_RATE" "$OFFERED")

MACHINE="$CPUS CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), $(grep MemTotal /proc/meminfo | awk '{printf "%.1f GiB RAM", $2/1048576}')"
PEER_VERSIONS="$( ("$MOSQUITTO" -h 2>&1 || true) | head -n1)"
[ -x "$RUMQTTD" ] && PEER_VERSIONS="$PEER_VERSIONS; rumqttd $("$RUMQTTD" --version 2>/dev/null | awk '{print $NF}')"
[ "$HAVE_MQTTV5" = 1 ] && PEER_VERSIONS="$PEER_VERSIONS; generator mqttv5-cli $("$MQTTV5" --version 2>/dev/null | awk '{print $NF}')"
HEADER="Measured $(date -u +%Y-%m-%dT%H:%MZ) on $MACHINE; moat $("$MOAT" --version | cut -d' ' -f2) ($MOAT_COMMIT); $PEER_VERSIONS; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
printf '%s\n\n%s\n' "$HEADER" "$REPORT"
if [ -n "$OUT" ]; then
  printf '%s\n\n%s\n' "$HEADER" "$REPORT" > "$OUT"
  cp "$RESULTS" "$OUT.jsonl" # the raw rows, every round
fi
exit 0
