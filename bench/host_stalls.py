#!/usr/bin/env python3
"""How long this machine stops a busy process: a loop pinned to one core reads the
clock and notes every gap between two reads longer than a threshold. Run with no
broker up, the gaps are the host's (hypervisor, kernel threads), and a latency
maximum near the longest is the machine's, whichever broker is measured on it.
Prints one JSON line. Usage: host_stalls.py CORE SECONDS WHEN (a label: before, after)"""
import json
import os
import sys
import time

THRESHOLD_S = 0.0005

core, seconds, when = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
os.sched_setaffinity(0, {core})
gaps = []
start = previous = time.monotonic()
end = start + seconds
while previous < end:
    now = time.monotonic()
    if now - previous > THRESHOLD_S:
        gaps.append(now - previous)
    previous = now
# One write(2) per line: compare.sh runs one of these per core, appending to the same
# file, and with PYTHONUNBUFFERED set print() writes the object and its newline in
# two calls, which interleaved two cores' lines into one (a run's report then failed).
line = json.dumps({
    "scenario": "host-stalls", "broker": "none", "name": f"host stalls core {core}",
    "transport": "-", "round": 1, "mode": "host", "generator": "-", "when": when,
    "core": core, "seconds": seconds, "threshold_us": THRESHOLD_S * 1e6,
    "gaps": len(gaps), "gaps_over_2ms": sum(1 for g in gaps if g > 0.002),
    "longest_us": round(max(gaps, default=0) * 1e6), "stalled_us": round(sum(gaps) * 1e6),
})
os.write(sys.stdout.fileno(), (line + "\n").encode())
