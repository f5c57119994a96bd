#!/usr/bin/env python3
"""Checks that nix/package.nix's source fileset holds every repository file the Rust
code reads at build or test time, so the Nix build's check phase (`cargo test --lib`)
compiles and finds its fixtures. It cannot be built here (no nixpkgs), so this is
checked by reading:

- `include_str!("...")` / `include_bytes!("...")`, resolved against the file's folder;
- `env!("CARGO_MANIFEST_DIR")` followed (within three lines) by `.join("...")`,
  resolved against that crate's folder.

Every such path must be a fileset entry of package.nix or lie under one. Prints each
miss with its file and line; exits 1 if there is one.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nix" / "package.nix"

INCLUDE = re.compile(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)')
MANIFEST_DIR = re.compile(r'env!\(\s*"CARGO_MANIFEST_DIR"\s*\)')
JOIN = re.compile(r'\.join\(\s*"([^"]+)"\s*\)')


def fileset_entries(text):
    """The repository-relative paths listed in the package's `fileset.unions`."""
    block = re.search(r"fileset\.unions\s*\[(.*?)\];", text, re.S)
    if not block:
        sys.exit("nix-sources: no `fileset.unions [ ... ];` in nix/package.nix")
    body = re.sub(r"#[^\n]*", "", block.group(1))
    return [pathlib.PurePosixPath(p) for p in re.findall(r"\.\./([\w./-]+)", body)]


def crate_root(source):
    """The folder of the Cargo package `source` belongs to."""
    for parent in source.parents:
        if (parent / "Cargo.toml").exists():
            return parent
    return ROOT


def needed_paths():
    """(path read, where it is named) for every .rs file under src/ and crates/."""
    for source in sorted(ROOT.glob("src/**/*.rs")) + sorted(ROOT.glob("crates/**/*.rs")):
        lines = source.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            where = f"{source.relative_to(ROOT)}:{number}"
            for rel in INCLUDE.findall(line):
                yield (source.parent / rel).resolve(), where
            if MANIFEST_DIR.search(line):
                following = " ".join(lines[number - 1 : number + 3])
                joined = JOIN.search(following[MANIFEST_DIR.search(following).end() :])
                if joined:
                    yield (crate_root(source) / joined.group(1)).resolve(), where


def main():
    entries = fileset_entries(PACKAGE.read_text(encoding="utf-8"))
    missing = 0
    for path, where in needed_paths():
        try:
            rel = pathlib.PurePosixPath(path.relative_to(ROOT).as_posix())
        except ValueError:
            print(f"nix-sources: {where} reads {path}, outside the repository")
            missing += 1
            continue
        if not any(rel == e or e in rel.parents for e in entries):
            print(f"nix-sources: {where} reads {rel}, which nix/package.nix's fileset leaves out")
            missing += 1
    if missing:
        sys.exit(1)
    print(f"nix-sources: OK ({len(entries)} fileset entries cover what the code reads)")


if __name__ == "__main__":
    main()
