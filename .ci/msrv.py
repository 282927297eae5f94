#!/usr/bin/env python3
"""Checks the declared rust-version against every dependency built on this platform.

The machine has one toolchain, so the crate cannot be compiled with the declared version
here: this check and clippy's `incompatible_msrv` lint (which reads rust-version) are what CI
can do. A dependency that needs a newer Rust makes the declared version a lie; say so and fail.
"""
import json
import subprocess
import sys

meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features", "--filter-platform", "x86_64-unknown-linux-gnu"],
    check=True, capture_output=True, text=True).stdout)


def version(s):
    return tuple(int(x) for x in s.split(".")[:2])


ours = next(p for p in meta["packages"] if p["id"] in meta["workspace_members"])
declared = version(ours["rust_version"])
used = {n["id"] for n in meta["resolve"]["nodes"]}
newer = sorted(f'{p["name"]} {p["version"]} needs Rust {p["rust_version"]}'
               for p in meta["packages"]
               if p["id"] in used and p.get("rust_version") and version(p["rust_version"]) > declared)
if newer:
    print(f"rust-version {ours['rust_version']} is lower than what these dependencies need:", *newer, sep="\n  ")
    sys.exit(1)
print(f"rust-version {ours['rust_version']}: every dependency ({len(used)}) builds with it")
