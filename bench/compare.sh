#!/usr/bin/env bash
# Side-by-side benchmark of moat and mosquitto on loopback.
#
# Starts mosquitto (/usr/sbin/mosquitto) and `moat serve`, configured alike: a TLS
# listener with the SAME certificate and key (moat's state dir), a plaintext
# listener, one user `bench` with a password (argon2id for moat, mosquitto_passwd's
# PBKDF2-SHA512 for mosquitto), an ACL granting readwrite on bench/#, in-flight 20,
# 1000 queued messages per client, TCP_NODELAY, raised connection caps. Then it runs
# every scenario of `moat-bench` against both, alternating moat/mosquitto, for
# several rounds, and prints a markdown table of medians and moat/mosquitto ratios.
#
# Usage: bench/compare.sh [--quick] [--rounds N] [--moat PATH] [--out FILE] [--keep]
#   --quick     ~4 minutes: 1 round, 2 s windows, fewer scenarios
#   --rounds N  rounds (default 3)
#   --moat P    the moat binary (default: $CARGO_TARGET_DIR/release/moat; moat-bench
#               is taken from the same directory); both are copied first so a
#               concurrent build cannot swap them mid-run
#   --out F     also write the markdown report to F
#   --keep      keep the work directory (logs, configs, raw JSON)
set -euo pipefail

ROUNDS=3
QUICK=0
KEEP=0
OUT=""
MOAT_SRC="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}/release/moat"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; ROUNDS=1 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --moat) MOAT_SRC="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

MOSQUITTO=/usr/sbin/mosquitto
for tool in "$MOSQUITTO" mosquitto_passwd mosquitto_sub mosquitto_pub jq python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
BENCH_SRC="$(dirname "$MOAT_SRC")/moat-bench"
for bin in "$MOAT_SRC" "$BENCH_SRC"; do
  [ -x "$bin" ] || { echo "no binary at $bin (cargo build --release)" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/moat-compare.XXXXXX)
MOAT="$WORK/moat"
BENCH="$WORK/moat-bench"
cp "$MOAT_SRC" "$MOAT"
cp "$BENCH_SRC" "$BENCH"
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
MOAT_PID=""
MOSQ_PID=""

cleanup() {
  [ -n "$MOAT_PID" ] && kill "$MOAT_PID" 2>/dev/null && wait "$MOAT_PID" 2>/dev/null || true
  [ -n "$MOSQ_PID" ] && kill "$MOSQ_PID" 2>/dev/null && wait "$MOSQ_PID" 2>/dev/null || true
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

PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
MOAT_TLS=$(free_port); MOAT_PLAIN=$(free_port)
MOSQ_TLS=$(free_port); MOSQ_PLAIN=$(free_port)

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
    tls: { address: "127.0.0.1", port: $MOAT_TLS }
    plain: { address: "127.0.0.1", port: $MOAT_PLAIN }
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
EOF
"$MOAT" provision --manifest "$WORK/moat.yaml" --state "$WORK/moat-state" >/dev/null
CA="$WORK/moat-state/ca.pem"
# The same broker with durability `full`: every commit fsynced before its PUBACK.
sed 's/durability: batched/durability: full/' "$WORK/moat.yaml" > "$WORK/moat-full.yaml"

start_moat() { # [batched|full]
  local manifest="$WORK/moat.yaml"
  [ "${1:-batched}" = full ] && manifest="$WORK/moat-full.yaml"
  "$MOAT" serve --manifest "$manifest" --state "$WORK/moat-state" >>"$WORK/moat.log" 2>&1 &
  MOAT_PID=$!
  wait_port "$MOAT_TLS" 30
}
stop_moat() { kill "$MOAT_PID" 2>/dev/null || true; wait "$MOAT_PID" 2>/dev/null || true; MOAT_PID=""; }

# ---------------------------------------------------------------- mosquitto
mkdir -p "$WORK/mosq/data"
cp "$WORK/moat-state/server.pem" "$WORK/moat-state/server.key" "$CA" "$WORK/mosq/"
mosquitto_passwd -b -c "$WORK/mosq/passwd" bench "$PASSWORD" >/dev/null 2>&1
printf 'user bench\ntopic readwrite bench/#\n' > "$WORK/mosq/acl"
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
listener $MOSQ_TLS 127.0.0.1
certfile $WORK/mosq/server.pem
keyfile $WORK/mosq/server.key
listener $MOSQ_PLAIN 127.0.0.1
EOF
start_mosq() {
  "$MOSQUITTO" -c "$WORK/mosq/mosquitto.conf" >>"$WORK/mosq.log" 2>&1 &
  MOSQ_PID=$!
  wait_port "$MOSQ_TLS" 30
}
stop_mosq() { kill "$MOSQ_PID" 2>/dev/null || true; wait "$MOSQ_PID" 2>/dev/null || true; MOSQ_PID=""; }

# ---------------------------------------------------------------- scenarios
if [ "$QUICK" = 1 ]; then
  WIN="--duration 2s --warmup 500ms"; CWIN="--duration 2s --warmup 500ms"; LWIN="--duration 3s --warmup 500ms"
else
  WIN="--duration 3s --warmup 1s"; CWIN="--duration 3s --warmup 1s"; LWIN="--duration 5s --warmup 1s"
fi
# name|transport|moat-bench arguments
SCENARIOS=(
  "fan-in 8->1 q0 64B|plain|fan-in --publishers 8 --qos 0 --payload 64 $WIN"
  "fan-in 8->1 q0 64B|tls|fan-in --publishers 8 --qos 0 --payload 64 $WIN"
  "fan-in 8->1 q0 1KiB|tls|fan-in --publishers 8 --qos 0 --payload 1KiB $WIN"
  "fan-in 8->1 q1 64B|tls|fan-in --publishers 8 --qos 1 --payload 64 $WIN"
  "fan-in 8->1 q2 64B|tls|fan-in --publishers 8 --qos 2 --payload 64 $WIN"
  "fan-out 1->8 q0 64B|tls|fan-out --subscribers 8 --qos 0 --payload 64 $WIN"
  "fan-out 1->100 q0 64B|tls|fan-out --subscribers 100 --qos 0 --payload 64 $WIN"
  "fan-out 1->8 q1 64B|tls|fan-out --subscribers 8 --qos 1 --payload 64 $WIN"
  "latency 1000/s q0|tls|latency --rate 1000 --qos 0 --payload 64 $LWIN"
  "latency 1000/s q1|tls|latency --rate 1000 --qos 1 --payload 64 $LWIN"
  "connect-rate x8|tls|connect-rate --parallel 8 $CWIN"
)
# Subscribers with persistent sessions: every QoS 1 message must be stored for them.
# Run once against moat with durability `batched`, once with `full`, counting the
# brokers' fsync/fdatasync calls (with perf, when it can trace syscalls).
DURABLE=(
  "fan-in 8->1 q1 64B persistent|tls|fan-in --publishers 8 --qos 1 --payload 64 --persistent-subscribers $WIN"
)
HAVE_PERF=0
if command -v perf >/dev/null && perf stat -e syscalls:sys_enter_fsync -- true >/dev/null 2>&1; then
  HAVE_PERF=1
fi
if [ "$QUICK" = 1 ]; then
  IDLE=("idle 1000|plain|1000" "idle 1000|tls|1000" "idle 10000|tls|10000")
else
  IDLE=("idle 1000|plain|1000" "idle 1000|tls|1000" "idle 10000|plain|10000" "idle 10000|tls|10000")
fi

target_args() { # broker transport
  local port
  if [ "$1" = moat ]; then
    if [ "$2" = tls ]; then port=$MOAT_TLS; else port=$MOAT_PLAIN; fi
  else
    if [ "$2" = tls ]; then port=$MOSQ_TLS; else port=$MOSQ_PLAIN; fi
  fi
  printf -- '--host 127.0.0.1 --port %s --username bench --protocol 5' "$port"
  [ "$2" = tls ] && printf -- ' --cafile %s --server-name localhost' "$CA"
  return 0
}

record() { # broker name transport round json
  jq -c --arg b "$1" --arg n "$2" --arg t "$3" --argjson r "$4" \
    '. + {broker: $b, name: $n, transport: $t, round: $r}' <<<"$5" >> "$RESULTS"
}

run_bench() { # broker name transport round args...
  local broker=$1 name=$2 transport=$3 round=$4; shift 4
  local out
  # shellcheck disable=SC2046
  if out=$(MOAT_BENCH_PASSWORD="$PASSWORD" timeout 300 "$BENCH" "$@" $(target_args "$broker" "$transport") --json 2>>"$WORK/bench.err"); then
    record "$broker" "$name" "$transport" "$round" "$out"
    printf '  %-9s %-24s %-5s ok\n' "$broker" "$name" "$transport" >&2
  else
    printf '  %-9s %-24s %-5s FAILED (see bench.err)\n' "$broker" "$name" "$transport" >&2
    tail -n 3 "$WORK/bench.err" >&2
  fi
}

pid_of() { if [ "$1" = moat ]; then echo "$MOAT_PID"; else echo "$MOSQ_PID"; fi; }

# run_bench, plus the broker's fsync + fdatasync calls per second over the run.
run_bench_counting_fsyncs() { # broker name transport round args...
  local perf="" started finished count
  if [ "$HAVE_PERF" = 1 ]; then
    perf stat -x, -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync \
      -p "$(pid_of "$1")" -o "$WORK/perf.out" 2>>"$WORK/bench.err" &
    perf=$!
  fi
  started=$(date +%s.%N)
  run_bench "$@"
  finished=$(date +%s.%N)
  if [ -n "$perf" ]; then
    kill -INT "$perf" 2>/dev/null || true
    wait "$perf" 2>/dev/null || true
    count=$(awk -F, '/sys_enter_f/ {n += $1} END {print n + 0}' "$WORK/perf.out")
    record "$1" "$2" "$3" "$4" "{\"scenario\":\"fsyncs\",\"fsyncs\":$count,\"secs\":$(awk -v a="$started" -v b="$finished" 'BEGIN {print b - a}')}"
  fi
}

# Every scenario against both brokers, in $ORDER.
run_each() { # round runner name-suffix "name|transport|args"...
  local round=$1 runner=$2 suffix=$3 spec name transport args broker
  shift 3
  for spec in "$@"; do
    IFS='|' read -r name transport args <<<"$spec"
    for broker in $ORDER; do
      # shellcheck disable=SC2086
      "$runner" "$broker" "$name$suffix" "$transport" "$round" $args
    done
  done
}

STARTED=$(date +%s)
echo "moat $MOAT_TLS/$MOAT_PLAIN, mosquitto $MOSQ_TLS/$MOSQ_PLAIN, work $WORK, $ROUNDS round(s)" >&2
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  # Alternate which broker goes first in each round.
  if [ $(( round % 2 )) = 1 ]; then ORDER="moat mosquitto"; else ORDER="mosquitto moat"; fi

  # Idle memory: a fresh broker for every measurement, so freed heap from earlier
  # scenarios cannot hide the cost of a connection.
  for spec in "${IDLE[@]}"; do
    IFS='|' read -r name transport count <<<"$spec"
    # 10 000 handshakes per broker are slow and the result barely moves: round 1 only.
    [ "$count" -ge 10000 ] && [ "$round" -gt 1 ] && continue
    for broker in $ORDER; do
      if [ "$broker" = moat ]; then start_moat; else start_mosq; fi
      sleep 1
      fresh=$(rss_kib "$(pid_of "$broker")")
      record "$broker" "fresh broker RSS" "-" "$round" "{\"scenario\":\"rss\",\"rss_kib\":$fresh}"
      run_bench "$broker" "$name" "$transport" "$round" idle --connections "$count" \
        --parallel 32 --settle 2s --hold 0s --source-addresses 8 --broker-pid "$(pid_of "$broker")"
      if [ "$broker" = moat ]; then stop_moat; else stop_mosq; fi
    done
  done

  start_moat; start_mosq
  run_each "$round" run_bench "" "${SCENARIOS[@]}"
  run_each "$round" run_bench_counting_fsyncs ", moat batched" "${DURABLE[@]}"
  stop_moat
  start_moat full
  run_each "$round" run_bench_counting_fsyncs ", moat full" "${DURABLE[@]}"
  stop_moat; stop_mosq
done

# ---------------------------------------------------------------- cross-check
# An independent client (mosquitto_pub/mosquitto_sub, libmosquitto) moves a fixed
# count through each broker; its moat/mosquitto ratio must agree with ours.
CROSS_N=$([ "$QUICK" = 1 ] && echo 30000 || echo 100000)
seq 1 "$CROSS_N" | sed 's/^/payload-/' > "$WORK/lines"
# mosquitto_sub stamps every message (-F %U); the rate is what it received divided by
# the time between its first and last message, and the count shows any loss (both
# brokers may drop QoS 1 messages for a subscriber whose 1000-message queue is full).
cross_check() { # port -> "messages/s received"
  local port=$1 sub out="$WORK/xc-$1.txt" prev=-1 n
  mosquitto_sub -h 127.0.0.1 -p "$port" -u bench -P "$PASSWORD" -q 1 -t 'bench/xc/#' \
    -F '%U' -C "$CROSS_N" -W 90 > "$out" &
  sub=$!
  sleep 0.5
  mosquitto_pub -h 127.0.0.1 -p "$port" -u bench -P "$PASSWORD" -q 1 -t bench/xc/1 -l < "$WORK/lines" || true
  # Done when it exits (all received) or a second passes without a new message.
  while kill -0 "$sub" 2>/dev/null; do
    n=$(wc -l < "$out")
    [ "$n" = "$prev" ] && break
    prev=$n
    sleep 1
  done
  kill "$sub" 2>/dev/null || true
  wait "$sub" 2>/dev/null || true
  python3 - "$out" <<'PY'
import sys
stamps = [float(l) for l in open(sys.argv[1]) if l.strip()]
span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0
print(f"{(len(stamps) - 1) / span:.1f} {len(stamps)}" if span > 0 else f"- {len(stamps)}")
PY
}
echo "cross-check: mosquitto_pub -l -q 1 ($CROSS_N lines) -> mosquitto_sub -q 1 (plaintext)" >&2
start_moat; start_mosq
XC_MOAT=$(cross_check "$MOAT_PLAIN")
XC_MOSQ=$(cross_check "$MOSQ_PLAIN")
# shellcheck disable=SC2086
run_bench moat "cross fan-in 1->1 q1" plain 0 fan-in --publishers 1 --qos 1 --payload 13 $WIN
# shellcheck disable=SC2086
run_bench mosquitto "cross fan-in 1->1 q1" plain 0 fan-in --publishers 1 --qos 1 --payload 13 $WIN
stop_moat; stop_mosq
ELAPSED=$(( $(date +%s) - STARTED ))

# ---------------------------------------------------------------- report
REPORT=$(python3 - "$RESULTS" "$XC_MOAT" "$XC_MOSQ" "$ROUNDS" "$ELAPSED" "$QUICK" "$CROSS_N" <<'PY'
import json, statistics, sys
path, xc_moat, xc_mosq, rounds, elapsed, quick, cross_n = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]

def metrics(r):
    s = r["scenario"]
    if s in ("fan-in", "fan-out"):
        out = [("msg/s delivered", r["received_per_sec"], "higher")]
        if r["qos"] > 0:
            # Both brokers drop QoS 1/2 messages for a subscriber whose queue is full.
            out.append(("% of acked delivered", 100.0 * r["received"] / max(r["expected"], 1), "higher"))
        return out
    if s == "fsyncs":
        return [("fsync+fdatasync calls/s", r["fsyncs"] / r["secs"], "-")]
    if s == "latency":
        return [("p50 us", r["latency"]["p50_us"], "lower"), ("p99 us", r["latency"]["p99_us"], "lower"),
                ("max us", r["latency"]["max_us"], "lower")]
    if s == "connect-rate":
        return [("connections/s", r["connections_per_sec"], "higher")]
    if s == "idle":
        out = []
        if r.get("kib_per_connection") is not None:
            out.append(("KiB/connection", r["kib_per_connection"], "lower"))
        if r.get("rss_after_kib") is not None:
            out.append(("broker RSS KiB", r["rss_after_kib"], "lower"))
        if r["opened"] != r["connections"]:
            out.append(("connections failed", r["failed"], "lower"))
        return out
    if s == "rss":
        return [("fresh broker RSS KiB", r["rss_kib"], "lower")]
    return []

table, order = {}, []
for r in rows:
    if r["round"] == 0:
        continue
    for metric, value, better in metrics(r):
        key = (r["name"], r["transport"], metric)
        if key not in table:
            table[key] = {"better": better, "moat": [], "mosquitto": []}
            order.append(key)
        table[key][r["broker"]].append(value)

def fmt(v):
    return "-" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}")

print(f"| scenario | transport | metric | moat | mosquitto | moat/mosquitto | better |")
print(f"|---|---|---|---:|---:|---:|---|")
for key in order:
    t = table[key]
    m = statistics.median(t["moat"]) if t["moat"] else None
    q = statistics.median(t["mosquitto"]) if t["mosquitto"] else None
    ratio = f"{m / q:.2f}x" if m is not None and q and t["better"] != "-" else "-"
    print(f"| {key[0]} | {key[1]} | {key[2]} | {fmt(m)} | {fmt(q)} | {ratio} | {t['better']} |")

cross = {r["broker"]: r for r in rows if r["round"] == 0}
print()
print("Cross-check (1 publisher -> 1 subscriber, QoS 1, 13-byte payloads, plaintext):")
print()
print("| tool | moat msg/s | mosquitto msg/s | moat/mosquitto | delivered moat / mosquitto |")
print("|---|---:|---:|---:|---|")
(mr, mn), (qr, qn) = xc_moat.split(), xc_mosq.split()
try:
    ratio = f"{float(mr) / float(qr):.2f}x"
except (ValueError, ZeroDivisionError):
    ratio = "-"
print(f"| mosquitto_pub -l -q 1 -> mosquitto_sub -q 1 -F %U (timed by the subscriber) | {mr} | {qr} | {ratio} | {mn} / {qn} of {cross_n} |")
if "moat" in cross and "mosquitto" in cross:
    a, b = cross["moat"]["received_per_sec"], cross["mosquitto"]["received_per_sec"]
    lost = lambda r: f"{r['received']} of {r['expected']}"
    print(f"| moat-bench fan-in (window) | {a:,.0f} | {b:,.0f} | {a / b:.2f}x | {lost(cross['moat'])} / {lost(cross['mosquitto'])} |")
print()
print(f"Medians of {rounds} round(s); {'quick mode; ' if quick == '1' else ''}total run time {elapsed} s.")
PY
)

MACHINE="$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), $(grep MemTotal /proc/meminfo | awk '{printf "%.1f GiB RAM", $2/1048576}')"
HEADER="Measured $(date -u +%Y-%m-%dT%H:%MZ) on $MACHINE; moat $("$MOAT" --version | cut -d' ' -f2) ($(cd "$(dirname "$0")" && git rev-parse --short HEAD 2>/dev/null || echo '?')), $( ("$MOSQUITTO" -h 2>&1 || true) | head -n1)."
printf '%s\n\n%s\n' "$HEADER" "$REPORT"
[ -n "$OUT" ] && printf '%s\n\n%s\n' "$HEADER" "$REPORT" > "$OUT"
exit 0
