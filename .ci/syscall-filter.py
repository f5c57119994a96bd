#!/usr/bin/env python3
"""The Pi's binary against moat.service's SystemCallFilter=.

Every system call the aarch64 `moat serve` made in .ci/aarch64's end-to-end tests
(qemu-user's `-d strace` logs, one per process) must be allowed by the broker unit's
SystemCallFilter=, as nix/units.nix sets it and systemd expands its groups
(`systemd-analyze syscall-filter`). systemd's default action for a call outside the
list is to kill the process with SIGSYS: on the Pi the broker would die at the first
such call. tests/systemd_units.rs runs the x86_64 binary under the real filter; the
aarch64 kernel's calls differ (no open, no epoll_wait, ...), so this checks them by
name. Exits 0 when every call is allowed.

The groups change between systemd releases (257 added mseal, the landlock calls
and @sandbox to @default, for example), so .ci/aarch64 asks the systemd of the
guest tests/systemd_guest.sh makes (--systemd-root), nearer the image's than this
host's.
"""

import argparse
import json
from collections import Counter
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def unit_filter():
    """The broker unit's SystemCallFilter= entries, from nix/units.nix."""
    expr = (
        f'(import {ROOT}/nix/units.nix {{ moat = "moat"; coreutilsBin = "/bin"; gnusedBin = "/bin"; '
        'stateDir = "/var/lib/moat"; manifestPath = "/var/lib/moat/moat.yaml"; '
        'allowedAddresses = [ ]; memoryMax = "256M"; bootPartition = "/boot/firmware"; '
        "}).broker.SystemCallFilter"
    )
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def systemd(root, *args):
    """The output of a systemd command: this host's, or the one installed in the
    root file system `root` (run there with chroot)."""
    chroot = ["chroot", root] if root else []
    return subprocess.run(
        chroot + list(args), check=True, capture_output=True, text=True
    ).stdout


def groups(systemd_root):
    """systemd's syscall groups: name -> members (calls and @groups)."""
    out = systemd(systemd_root, "systemd-analyze", "syscall-filter", "--no-pager")
    found, current = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            found[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            found[current].append(line.strip())
    return found


def expand(name, table, seen=None):
    seen = set() if seen is None else seen
    if not name.startswith("@"):
        return {name}
    if name in seen:
        return set()
    seen.add(name)
    if name not in table:
        sys.exit(f"syscall-filter: systemd knows no group {name}")
    calls = set()
    for member in table[name]:
        calls |= expand(member, table, seen)
    return calls


def allowed(entries, table):
    """systemd.exec(5): the first entry's kind (allow or ~deny) sets the default;
    later entries add to or remove from the set. @default is always allowed."""
    if not entries or entries[0].startswith("~"):
        sys.exit("syscall-filter: expected an allow list first")
    calls = expand("@default", table)
    for entry in entries:
        if entry.startswith("~"):
            for word in entry[1:].split():
                calls -= expand(word, table)
        else:
            for word in entry.split():
                calls |= expand(word, table)
    return calls


CALL = re.compile(r"^\d+ ([a-z0-9_]+)\(")
UNKNOWN = re.compile(r"^\d+ Unknown syscall (\d+)")
# aarch64 numbers qemu 7.2's strace cannot name (Linux include/uapi/asm-generic/unistd.h).
# glibc 2.41 calls clone3 for each thread (qemu-user answers ENOSYS and glibc falls
# back to clone; a real kernel runs it) and rseq at start; faccessat2 and fchmodat2
# are what it calls for access() and fchmodat() with flags on newer kernels.
AARCH64_NAMES = {"293": "rseq", "435": "clone3", "439": "faccessat2", "452": "fchmodat2"}


FCHOWN_TO_ROOT = re.compile(r"^\d+ fchown\(\d+,0,0\)")


def used(paths, ran_as_root):
    """Calls by name, the calls made only because the process runs as root, and
    numbers without a name. The end-to-end tests run `serve` as root; the unit runs
    it as `moat`. As root, SQLite gives each file it creates (journal, WAL, shared
    memory) to the database's owner, root here (robustFchown in sqlite3.c acts only
    when geteuid() is 0); as `moat` it makes no such call. So when the tests ran as
    root (`--ran-as-root`), an fchown to 0:0 is counted apart; an fchown to anyone
    else counts. (qemu's strace is not line-atomic across threads, so this looks at
    single lines only.)"""
    calls, root_only, unknown = Counter(), Counter(), set()
    for path in paths:
        with open(path, errors="replace") as log:
            for line in log:
                if m := UNKNOWN.match(line):
                    name = AARCH64_NAMES.get(m.group(1))
                    if name is None:
                        unknown.add(m.group(1))
                        continue
                elif m := CALL.match(line):
                    name = m.group(1)
                else:
                    continue
                if ran_as_root and FCHOWN_TO_ROOT.match(line):
                    root_only[name] += 1
                else:
                    calls[name] += 1
    return calls, root_only, unknown


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ran-as-root", action="store_true", help="the logged runs ran as root (see used())"
    )
    parser.add_argument(
        "--systemd-root", metavar="DIR", help="expand the groups with the systemd installed in DIR"
    )
    parser.add_argument("logs", nargs="+", metavar="LOG", help="a qemu -d strace log")
    args = parser.parse_args()
    logs, ran_as_root, systemd_root = args.logs, args.ran_as_root, args.systemd_root
    entries = unit_filter()
    permitted = allowed(entries, groups(systemd_root))
    calls, root_only, unknown = used(logs, ran_as_root)
    if not calls:
        sys.exit("syscall-filter: the logs hold no system call")
    refused = sorted(name for name in calls if name not in permitted)
    version = systemd(systemd_root, "systemctl", "--version").splitlines()[0]
    print(
        f"syscall-filter: {len(calls)} distinct calls in {len(logs)} log(s) of the "
        f"emulated `moat serve`; SystemCallFilter={' '.join(entries)} allows "
        f"{len(permitted)} names ({version})"
    )
    print("syscall-filter: used: " + ", ".join(sorted(calls)))
    for name, count in sorted(root_only.items()):
        print(f"syscall-filter: {name}: {count} calls only a root-run serve makes (SQLite's robustFchown)")
    if unknown:
        print(f"syscall-filter: numbers qemu could not name: {sorted(unknown)}")
    if refused or unknown:
        for name in refused:
            print(f"syscall-filter: NOT ALLOWED: {name} ({calls[name]} calls)")
        sys.exit(1)
    print("syscall-filter: OK")


if __name__ == "__main__":
    main()
