#!/usr/bin/env python3
"""Turns the JSON lines bench/compare.sh collects into its markdown report: medians over
rounds per mode, moat / peer ratios, the isolation summary, the wire and syscall table
and the extras. It computes nothing a row does not carry; a missing figure prints "-"."""
import json
import statistics
from collections import Counter
import sys

(path, rounds, unpinned_rounds, elapsed, quick, xc_moat, xc_mosq, cross_n,
 slow_rate, offered) = sys.argv[1:]
measured = [json.loads(line) for line in open(path) if line.strip()]
# A run repeated because the host stole CPU during it (compare.sh) counts no more.
rows = [r for r in measured if not r.get("superseded")]
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
        delivered = 100.0 * r["received"] / max(r["expected"], 1)
        if r["qos"] > 0:
            out.append(("% of acked delivered", delivered, "higher"))
        elif not r.get("latency"):
            # At QoS 0 a broker may drop copies for a subscriber that cannot keep up;
            # below 100 also when the generator starves its own subscriber (BENCHMARKS.md,
            # "The generator starved its own subscriber"), so every unpaced row shows it.
            out.append(("% of sent delivered (QoS 0 may drop)", delivered, "higher"))
        if r.get("latency"):
            out.append(("p50 us", r["latency"]["p50_us"], "lower"))
            out.append(("p99 us", r["latency"]["p99_us"], "lower"))
    elif s == "mqttv5":
        out.append(("msg/s delivered in window", r["received_per_sec"], "higher"))
        out.append(("msg/s reaching its sockets in window (at least)", r.get("reached_socket_per_sec_at_least"), "higher"))
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


def steal_note(mode):
    """How much CPU the host stole during the runs of a mode, and how many were repeated."""
    kept = [r["host_steal_pct"] for r in rows if r["mode"] == mode and "host_steal_pct" in r]
    again = sum(1 for r in measured if r["mode"] == mode and r.get("superseded"))
    if not kept:
        return ""
    return (f"\nHost steal (CPU time this VM asked for that the hypervisor gave others, /proc/stat) "
            f"during the runs kept: median {statistics.median(kept):.1f}%, max {max(kept):.1f}%; "
            f"{again} run(s) measured again because the host stole more than the limit during them.")


def stalls_note():
    """The host's own stalls per core (bench/host_stalls.py), before and after the runs."""
    probes = [r for r in rows if r["scenario"] == "host-stalls"]
    if not probes:
        return ""
    parts = [f"{r['when']}, core {r['core']}: {r['gaps']} ({r['gaps_over_2ms']} over 2 ms), "
             f"longest {r['longest_us'] / 1000:.1f} ms" for r in probes]
    seconds, threshold = probes[0]["seconds"], probes[0]["threshold_us"]
    return (f"\nHost stalls with no broker up (a busy loop on each core for {seconds:g} s, gaps over "
            f"{threshold:g} us between its clock reads; core 0 is the broker's when pinned): "
            + "; ".join(parts) + ". A latency maximum near the longest is the machine's.")


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


def pair_ratios(mode, broker, qos):
    """+ slow / alone of each pair: the k-th run of each side in a round (compare.sh runs
    them next to each other, alternating which goes first), so both share the machine's
    state of that moment."""
    ratios = []
    for rnd in sorted({r["round"] for r in rows if r["mode"] == mode}):
        def rates(name):
            return [r["received_per_sec"] for r in rows if r["mode"] == mode and r["broker"] == broker
                    and r["round"] == rnd and r["name"] == f"isolation q{qos} max, {name}"]
        ratios += [s / a for a, s in zip(rates("alone"), rates("+ slow")) if a]
    return ratios


def isolation(mode):
    lines = ["| broker | QoS | fast sub msg/s alone (max) | with slow sub | ratio | median of pair ratios "
             "(min-max) | broker CPU us/delivered alone / with slow sub | fast p99 us alone "
             f"({offered}/s) | with slow sub | ratio | slow sub msg/s (max) | target (>= 0.9x rate, p99 <= 2x) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]

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
                lines.append(f"| {broker} | {qos} | not measured | | | | | | | | | |")
                continue
            a_cpu = med("max, alone", lambda r: r.get("broker_cpu_us_per_delivered"))
            s_cpu = med("max, + slow", lambda r: r.get("broker_cpu_us_per_delivered"))
            rr = s_rate / a_rate if a_rate and s_rate is not None else None
            pr = s_p99 / a_p99 if a_p99 and s_p99 is not None else None
            pairs = pair_ratios(mode, broker, qos)
            paired = f"{x(median(pairs))} ({min(pairs):.2f}-{max(pairs):.2f})" if pairs else "-"
            met = "-"
            if rr is not None and pr is not None:
                met = "met" if rr >= 0.9 and pr <= 2 else "not met"
            lines.append(f"| {broker} | {qos} | {fmt(a_rate)} | {fmt(s_rate)} | {x(rr)} | {paired} | "
                         f"{fmt(a_cpu)} / {fmt(s_cpu)} | {fmt(a_p99)} | "
                         f"{fmt(s_p99)} | {x(pr)} | {fmt(slow)} | {met} |")
    return "\n".join(lines)


def wire():
    lines = ["| scenario | broker | msg/s delivered | subscriber bytes/msg | TLS records/msg | subscriber reads/msg "
             "| broker syscalls/msg | write+send/msg | read+recv/msg | epoll_wait/msg |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
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
                     f"{fine(reads)} | {fine(per('sys_enter_epoll_wait'))} |")
    return "\n".join(lines)


def latency_pair_ratios(qos, peer):
    """moat / peer p99 of each latency pass: compare.sh runs every broker once a pass,
    minutes apart at most, so each pair shares the host's moment."""
    def p99s(broker):
        return {(r["round"], r["latency_pass"]): r["latency"]["p99_us"] for r in rows
                if r["mode"] == "pinned" and r["broker"] == broker and "latency_pass" in r
                and r["name"] == f"latency 1000/s q{qos}"}
    moat, other = p99s("moat"), p99s(peer)
    return [moat[k] / other[k] for k in sorted(moat) if k in other and other[k]]


def targets():
    """The issue 16 targets, judged from the pinned medians (mqttv5: unpinned)."""
    def med(mode, name, gen, metric, broker, transport=None):
        vals = []
        for r in rows:
            if (r["mode"] == mode and r["name"] == name and r["generator"] == gen and r["broker"] == broker
                    and transport in (None, r["transport"])):
                vals += [v for m, v, _ in flow_metrics(r) if m == metric]
        return median(vals)

    def ratio(a, b):
        return a / b if a is not None and b else None

    def x(v):
        return "not measured" if v is None else f"{v:.2f}x"
    lines = ["| target | measured (medians) | status |", "|---|---|---|"]
    for name in ("fan-in 8->1 q0", "fan-in 8->1 q1", "fan-out 1->8 q0", "fan-out 1->8 q1",
                 "fan-out 1->100 q0", "fan-out 1->100 q1"):
        m = med("pinned", name, "moat-bench", "deliveries per broker CPU-s", "moat")
        q = ratio(m, med("pinned", name, "moat-bench", "deliveries per broker CPU-s", "mosquitto"))
        r = ratio(m, med("pinned", name, "moat-bench", "deliveries per broker CPU-s", "rumqttd"))
        status = "not measured" if q is None or r is None else (
            "met" if q >= 1.5 and r >= 1.2 else
            "**not met**: " + ", ".join(t for t in (
                f"{q:.3f}x Mosquitto (needs 1.5x)" if q < 1.5 else "",
                f"{r:.3f}x rumqttd (needs 1.2x)" if r < 1.2 else "") if t))
        lines.append(f"| {name}, TLS, pinned: deliveries per broker CPU-s >= 1.5x Mosquitto and >= 1.2x "
                     f"rumqttd | {x(q)} Mosquitto, {x(r)} rumqttd | {status} |")
    us = med("pinned", "fan-in 8->1 q1", "moat-bench", "broker CPU us/delivered", "moat")
    lines.append(f"| QoS 1 fan-in broker CPU per delivered message <= 4 us | {fmt(us)} us | "
                 + ("not measured" if us is None else "met" if us <= 4 else f"**not met**: {us / 4:.2f}x the target")
                 + " |")
    for name in ("fan-out 1->8 q0", "fan-out 1->100 q0"):
        m = med("pinned", name, "moat-bench", "broker CPU us/delivered", "moat")
        r = med("pinned", name, "moat-bench", "broker CPU us/delivered", "rumqttd")
        st = "not measured" if m is None or r is None else "met" if m <= r else f"**not met**: {m / r:.2f}x rumqttd's"
        lines.append(f"| {name} broker CPU per delivered <= rumqttd's | moat {fmt(m)} us, rumqttd {fmt(r)} us | {st} |")
    for qos in (0, 1):
        a = med("pinned", f"isolation q{qos} max, alone", "moat-bench", "msg/s delivered in window", "moat")
        b = med("pinned", f"isolation q{qos} max, + slow", "moat-bench", "fast subscriber msg/s", "moat")
        pa = med("pinned", f"isolation q{qos} {offered}/s, alone", "moat-bench", "p99 us", "moat")
        pb = med("pinned", f"isolation q{qos} {offered}/s, + slow", "moat-bench", "p99 us", "moat")
        rr, pr = ratio(b, a), ratio(pb, pa)
        if rr is None or pr is None:
            st = "not measured"
        elif rr >= 0.9 and pr <= 2:
            st = "met"
        else:
            st = "**not met**: " + ", ".join(t for t in (
                f"rate {rr:.2f}x (needs 0.9x)" if rr < 0.9 else "", f"p99 {pr:.2f}x (needs <= 2x)" if pr > 2 else "") if t)
        pairs = pair_ratios("pinned", "moat", qos)
        paired = f" (median of {len(pairs)} pair ratios {x(median(pairs))})" if pairs else ""
        lines.append(f"| QoS {qos}: fast subscriber with one slow subscriber added: >= 0.9x its rate, p99 <= 2x "
                     f"| rate {x(rr)}{paired}, p99 {x(pr)} | {st} |")
    for name in ("fan-in 8->1 q0", "fan-out 1->8 q0"):
        q = ratio(med("unpinned", name, "mqttv5", "msg/s delivered in window", "moat"),
                  med("unpinned", name, "mqttv5", "msg/s delivered in window", "mosquitto"))
        at_sockets = ratio(med("unpinned", name, "mqttv5", "msg/s reaching its sockets in window (at least)", "moat"),
                  med("unpinned", name, "mqttv5", "msg/s reaching its sockets in window (at least)", "mosquitto"))
        if q is None:
            st = "not measured"
        elif q >= 1.0:
            st = "met"
        elif at_sockets is not None and at_sockets >= 1.0:
            # BENCHMARKS.md, "What mqttv5-cli counts": its callback queue, not the broker.
            st = (f"**not met** as mqttv5 counts at saturation ({q:.2f}x); met at its sockets "
                  f"({at_sockets:.2f}x)")
        else:
            st = f"**not met**: {q:.2f}x"
        lines.append(f"| mqttv5-cli, unpinned, {name}: >= 1.0x Mosquitto delivered inside the window | {x(q)} counted by "
                     f"the generator, at least {x(at_sockets)} reaching its sockets | {st} |")
    for qos in (0, 1):
        m = med("pinned", f"latency 1000/s q{qos}", "moat-bench", "p99 us", "moat")
        q = med("pinned", f"latency 1000/s q{qos}", "moat-bench", "p99 us", "mosquitto")
        r = med("pinned", f"latency 1000/s q{qos}", "moat-bench", "p99 us", "rumqttd")
        if m is None or q is None or r is None:
            st = "not measured"
        elif m <= q and m <= r:
            st = "met"
        else:
            st = "**not met**: " + ", ".join(t for t in (
                f"{m / q:.2f}x Mosquitto's" if m > q else "", f"{m / r:.2f}x rumqttd's" if m > r else "") if t)
        paired = "; ".join(
            f"{len(p)} pairs with {peer}: median ratio {median(p):.2f}x, moat lower in {sum(v < 1 for v in p)}"
            for peer in PEERS if (p := latency_pair_ratios(qos, peer)))
        lines.append(f"| p99 at 1 000 msg/s, QoS {qos}, TLS (pinned) <= Mosquitto and rumqttd | moat {fmt(m)} us, "
                     f"Mosquitto {fmt(q)}, rumqttd {fmt(r)}{f' ({paired})' if paired else ''} | {st} |")
    for count in (1000, 10000):
        tls = [med("extras", f"idle {count}", "moat-bench", "KiB/connection", b, "tls") for b in ("moat", "mosquitto")]
        plain = med("extras", f"idle {count}", "moat-bench", "KiB/connection", "moat", "plain")
        q = ratio(tls[0], tls[1])
        st = "not measured" if q is None or plain is None else "met" if q <= 0.7 and plain <= 2 else (
            "**not met**: " + ", ".join(t for t in (
                f"TLS {q:.2f}x Mosquitto's" if q > 0.7 else "", f"plain {plain:.2f} KiB" if plain > 2 else "") if t))
        lines.append(f"| idle memory per connection ({count:,} connections): TLS <= 0.7x Mosquitto, plain <= 2 KiB "
                     f"| TLS {x(q)} Mosquitto's ({fmt(tls[0])} KiB), plain {fmt(plain)} KiB | {st} |")
    return "\n".join(lines)


out = []
for mode, n in (("pinned", rounds), ("unpinned", unpinned_rounds)):
    if not any(r["mode"] == mode for r in rows):
        continue
    where = ("broker on core 0, generator on core 1 (taskset)" if mode == "pinned"
             else "broker and generator unpinned on all cores")
    out.append(f"### {mode.capitalize()}: {where}; medians of {n} round(s)\n")
    out.append(table(mode, BROKERS))
    runs_of = Counter((r["name"], r["transport"], r["generator"]) for r in rows
                      if r["mode"] == mode and r["broker"] == "moat" and r["scenario"] != "syscalls"
                      and not r["name"].startswith(("isolation", "wire: ")))
    repeated = sorted(f"{name} ({count} runs)" for (name, _, _), count in runs_of.items() if count > int(n))
    if repeated:
        out.append(f"\nRun more than once a round, medians of all their runs: {', '.join(repeated)}.\n")
    if note := steal_note(mode):
        out.append(note)
    if mode == "pinned" and (note := stalls_note()):
        out.append(note)
    if any(r["mode"] == mode and r["name"].startswith("isolation") for r in rows):
        runs = max(sum(1 for r in rows if r["mode"] == mode and r["broker"] == b
                       and r["name"] == "isolation q1 max, alone") for b in BROKERS)
        out.append(f"\nIsolation ({mode}): fan-in 8->1 TLS, 64 B; the slow subscriber reads at most {slow_rate} "
                   f"msg/s; rates with publishers at full speed (medians of {runs} runs each, alone and + slow "
                   f"alternating), p99 with publishers offering {offered} msg/s in all.\n")
        out.append(isolation(mode))
    out.append("")
if any(r["name"].startswith("wire: ") for r in rows):
    out.append("### On the wire (pinned, round 1)\n")
    out.append("Subscriber columns: what the generator's subscribers read from their sockets inside the window "
               "(bytes, TLS records, read calls with data), per message delivered to them. Broker columns: "
               "system calls (perf: raw_syscalls:sys_enter, and write/writev/sendto/sendmsg, read/recvfrom, "
               "epoll_wait tracepoints) over the whole run, per message delivered in the run.\n")
    out.append(wire())
    out.append("")
if any(r["mode"] == "extras" for r in rows):
    out.append("### Extras (moat and Mosquitto, unpinned, one round)\n")
    out.append(table("extras", ["moat", "mosquitto"]))
    if note := steal_note("extras"):
        out.append(note)
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
out.append("### Issue 16 targets, judged from these medians\n")
out.append(targets())
out.append(f"\n{'Quick mode; ' if quick == '1' else ''}total run time {elapsed} s.")
print("\n".join(out))
