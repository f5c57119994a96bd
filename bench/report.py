#!/usr/bin/env python3
"""Turns the JSON lines bench/compare.sh collects into its markdown report: medians over
rounds per mode, moat / peer ratios, the isolation summary, the wire and syscall table
and the extras. It computes nothing a row does not carry; a missing figure prints "-"."""
import json
import statistics
import sys

(path, rounds, unpinned_rounds, elapsed, quick, xc_moat, xc_mosq, cross_n,
 slow_rate, offered) = sys.argv[1:]
rows = [json.loads(line) for line in open(path) if line.strip()]
BROKERS = [b for b in ("moat", "mosquitto", "rumqttd") if any(r["broker"] == b for r in rows)]
PEERS = [b for b in BROKERS if b != "moat"]


def fmt(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"


def fine(v):
    """Per-message counts well below one need more digits."""
    return "-" if v is None else (f"{v:.3f}" if abs(v) < 10 else fmt(v))


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def flow_metrics(r):
    """(metric, value, better) of one moat-bench or mqttv5 row."""
    s = r["scenario"]
    out = []
    if s in ("fan-in", "fan-out"):
        if r.get("slow_subscriber") is None:
            out.append(("msg/s delivered in window", r["received_per_sec"], "higher"))
        else:
            out.append(("fast subscriber msg/s", r["received_per_sec"], "higher"))
            out.append(("slow subscriber msg/s", r["slow_subscriber"]["received_per_sec"], "-"))
        cpu = r.get("broker_cpu_us_per_delivered")
        out.append(("broker CPU us/delivered", cpu, "lower"))
        out.append(("deliveries per broker CPU-s", 1e6 / cpu if cpu else None, "higher"))
        if r["qos"] > 0:
            out.append(("% of acked delivered", 100.0 * r["received"] / max(r["expected"], 1), "higher"))
        if r.get("latency"):
            out.append(("p50 us", r["latency"]["p50_us"], "lower"))
            out.append(("p99 us", r["latency"]["p99_us"], "lower"))
    elif s == "mqttv5":
        out.append(("msg/s delivered in window", r["received_per_sec"], "higher"))
        out.append(("msg/s offered", r["offered_per_sec"], "-"))
        cpu = r.get("broker_cpu_us_per_delivered")
        out.append(("broker CPU us/delivered", cpu, "lower"))
        out.append(("deliveries per broker CPU-s", 1e6 / cpu if cpu else None, "higher"))
    elif s == "latency":
        out += [("p50 us", r["latency"]["p50_us"], "lower"), ("p99 us", r["latency"]["p99_us"], "lower"),
                ("max us", r["latency"]["max_us"], "lower")]
    elif s == "connect-rate":
        out.append(("connections/s", r["connections_per_sec"], "higher"))
    elif s == "idle":
        if r.get("kib_per_connection") is not None:
            out.append(("KiB/connection", r["kib_per_connection"], "lower"))
        if r.get("rss_after_kib") is not None:
            out.append(("broker RSS KiB", r["rss_after_kib"], "lower"))
        if r["opened"] != r["connections"]:
            out.append(("connections failed", r["failed"], "lower"))
    elif s == "rss":
        out.append(("fresh broker RSS KiB", r["rss_kib"], "lower"))
    return out


def table(mode, brokers):
    cells, order = {}, []
    for r in rows:
        if r["mode"] != mode or r["name"].startswith("wire: ") or r["scenario"] == "syscalls":
            continue
        for metric, value, better in flow_metrics(r):
            key = (r["name"], r["transport"], r["generator"], metric)
            if key not in cells:
                cells[key] = {"better": better}
                order.append(key)
            cells[key].setdefault(r["broker"], []).append(value)
    peers = [b for b in brokers if b != "moat"]
    head = "| scenario | generator | metric | " + " | ".join(brokers) + " | " + \
        " | ".join(f"moat/{p}" for p in peers) + " | better |"
    lines = [head, "|" + "---|" * 3 + "---:|" * (len(brokers) + len(peers)) + "---|"]
    for key in order:
        c = cells[key]
        med = {b: median(c.get(b, [])) for b in brokers}
        ratios = []
        for p in peers:
            m, q = med.get("moat"), med.get(p)
            ratios.append(f"{m / q:.2f}x" if m is not None and q and c["better"] != "-" else "-")
        name = key[0] + ("" if key[1] == "tls" else f" ({key[1]})")
        lines.append(f"| {name} | {key[2]} | {key[3]} | " + " | ".join(fmt(med[b]) for b in brokers)
                     + " | " + " | ".join(ratios) + f" | {c['better']} |")
    return "\n".join(lines)


def isolation(mode):
    lines = ["| broker | QoS | fast sub msg/s alone (max) | with slow sub | ratio | fast p99 us alone "
             f"({offered}/s) | with slow sub | ratio | slow sub msg/s (max) | target (>= 0.9x rate, p99 <= 2x) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]

    def x(v):
        return "-" if v is None else f"{v:.2f}x"
    for broker in BROKERS:
        for qos in (0, 1):
            def med(name, f):
                return median([f(r) for r in rows if r["mode"] == mode and r["broker"] == broker
                               and r["name"] == f"isolation q{qos} {name}"])
            a_rate = med("max, alone", lambda r: r["received_per_sec"])
            s_rate = med("max, + slow", lambda r: r["received_per_sec"])
            slow = med("max, + slow", lambda r: r["slow_subscriber"]["received_per_sec"])
            a_p99 = med(f"{offered}/s, alone", lambda r: r["latency"]["p99_us"] if r["latency"]["samples"] else None)
            s_p99 = med(f"{offered}/s, + slow", lambda r: r["latency"]["p99_us"] if r["latency"]["samples"] else None)
            if a_rate is None and a_p99 is None:
                lines.append(f"| {broker} | {qos} | not measured | | | | | | | |")
                continue
            rr = s_rate / a_rate if a_rate and s_rate is not None else None
            pr = s_p99 / a_p99 if a_p99 and s_p99 is not None else None
            met = "-"
            if rr is not None and pr is not None:
                met = "met" if rr >= 0.9 and pr <= 2 else "not met"
            lines.append(f"| {broker} | {qos} | {fmt(a_rate)} | {fmt(s_rate)} | {x(rr)} | {fmt(a_p99)} | "
                         f"{fmt(s_p99)} | {x(pr)} | {fmt(slow)} | {met} |")
    return "\n".join(lines)


def wire():
    lines = ["| scenario | broker | msg/s delivered | subscriber bytes/msg | TLS records/msg | subscriber reads/msg "
             "| broker syscalls/msg | write/msg | read/msg | epoll_wait/msg | broker wchar bytes/msg |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["mode"] != "pinned" or not r["name"].startswith("wire: ") or r["scenario"] == "syscalls":
            continue
        sc = next((x for x in rows if x["scenario"] == "syscalls" and x["name"] == r["name"]
                   and x["broker"] == r["broker"] and x["mode"] == "pinned"), None)
        n = max(r["received"], 1)

        def per(key):
            return None if sc is None or key not in sc else sc[key] / n
        writes = None
        if sc is not None and "sys_enter_write" in sc:
            writes = sum(sc.get(k, 0) for k in ("sys_enter_write", "sys_enter_writev", "sys_enter_sendto",
                                                "sys_enter_sendmsg")) / n
        reads = None
        if sc is not None and "sys_enter_read" in sc:
            reads = (sc.get("sys_enter_read", 0) + sc.get("sys_enter_recvfrom", 0)) / n
        lines.append(f"| {r['name'][6:]} | {r['broker']} | {fmt(r['received_per_sec'])} | "
                     f"{fmt(r['sub_bytes_per_delivered'])} | {fine(r['sub_tls_records_per_delivered'])} | "
                     f"{fine(r['sub_reads_per_delivered'])} | {fine(per('sys_enter'))} | {fine(writes)} | "
                     f"{fine(reads)} | {fine(per('sys_enter_epoll_wait'))} | {fmt(per('wchar'))} |")
    return "\n".join(lines)


out = []
for mode, n in (("pinned", rounds), ("unpinned", unpinned_rounds)):
    if not any(r["mode"] == mode for r in rows):
        continue
    where = ("broker on core 0, generator on core 1 (taskset)" if mode == "pinned"
             else "broker and generator unpinned on all cores")
    out.append(f"### {mode.capitalize()}: {where}; medians of {n} round(s)\n")
    out.append(table(mode, BROKERS))
    if any(r["mode"] == mode and r["name"].startswith("isolation") for r in rows):
        out.append(f"\nIsolation ({mode}): fan-in 8->1 TLS, 64 B; the slow subscriber reads at most {slow_rate} "
                   f"msg/s; rates with publishers at full speed, p99 with publishers offering {offered} msg/s "
                   "in all.\n")
        out.append(isolation(mode))
    out.append("")
if any(r["name"].startswith("wire: ") for r in rows):
    out.append("### On the wire (pinned, round 1)\n")
    out.append("Subscriber columns: what the generator's subscribers read from their sockets inside the window "
               "(bytes, TLS records, read calls with data), per message delivered to them. Broker columns: "
               "system calls (perf, raw_syscalls:sys_enter and per-call tracepoints) and bytes written "
               "(/proc/<pid>/io wchar) over the whole run, per message delivered in the run.\n")
    out.append(wire())
    out.append("")
if any(r["mode"] == "extras" for r in rows):
    out.append("### Extras (moat and Mosquitto, unpinned, one round)\n")
    out.append(table("extras", ["moat", "mosquitto"]))
    fs = [r for r in rows if r["mode"] == "extras" and r["scenario"] == "syscalls"]
    if fs:
        out.append("\n| durable scenario | broker | fsync + fdatasync per delivered |\n|---|---|---:|")
        for r in fs:
            flow = next((x for x in rows if x["mode"] == "extras" and x["name"] == r["name"]
                         and x["broker"] == r["broker"] and x["scenario"] == "fan-in"), None)
            calls = r.get("sys_enter_fsync", 0) + r.get("sys_enter_fdatasync", 0)
            per = calls / max(flow["received"], 1) if flow else None
            out.append(f"| {r['name']} | {r['broker']} | {fmt(per) if 'sys_enter_fsync' in r else '-'} |")
    (mr, mn), (qr, qn) = xc_moat.split(), xc_mosq.split()
    try:
        ratio = f"{float(mr) / float(qr):.2f}x"
    except (ValueError, ZeroDivisionError):
        ratio = "-"
    out.append("\nCross-check: mosquitto_pub -l -q 1 -> mosquitto_sub -q 1 -F %U, plaintext, "
               f"{cross_n} lines: moat {mr} msg/s, mosquitto {qr} msg/s ({ratio}); delivered {mn} / {qn}.")
out.append(f"\n{'Quick mode; ' if quick == '1' else ''}total run time {elapsed} s.")
print("\n".join(out))
