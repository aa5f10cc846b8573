#!/usr/bin/env python3
"""Benchmark: start-up cost of ``kvp get`` and ``kvp set`` against the bare interpreter.

Scripts call ``kvp`` in loops, so its cost is mostly start-up: the interpreter, then the imports
of what one command needs (issue #11's bar: ``kvp get``/``kvp set`` within 2x of
``python3 -c pass`` on the same machine, with the same interpreter and ``site``). Each command
is run ``--runs`` times, interleaved (bare, get, set, bare, ...) so that a busy neighbour slows
all three alike; the table shows medians and the ratios of the medians.

``kvp`` runs as the Debian package installs it (``debian/kvp.launcher``, or ``--script`` for
another, e.g. a venv's console script) against a temporary pool directory with a 10-record
guest pool; ``kvp get`` of a missing key and ``kvp get --json`` are shown too, outside the bar.
Each run's wall time and its CPU time (user + sys of the child, steadier on a busy machine)
are taken. ``--python`` chooses the interpreter; ``--importtime`` prints the slowest imports of
one ``kvp get`` (``python -X importtime``). Not a test: it prints numbers and exits 0.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "debian", "kvp.launcher")
BAR = ("kvp get", "kvp set")


def timed(argv: List[str], env: Dict[str, str], rc: int = 0) -> Tuple[float, float]:
    """(wall, CPU) seconds of one run of ``argv``, which must exit ``rc``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != rc:
        raise SystemExit(f"{argv} failed ({done.returncode}): {done.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def runs(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10000:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 and 10000")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=runs, default=40, help="runs of each command (default 40)")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    parser.add_argument("--script", default=LAUNCHER, help="the kvp script to run (a file)")
    parser.add_argument("--importtime", action="store_true", help="show the slowest imports")
    opts = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONDONTWRITEBYTECODE="")
    env.pop("PYTHONDONTWRITEBYTECODE")
    if not os.path.isfile(opts.script):
        parser.error(f"--script {opts.script!r} is not a file")
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as pools:
        kvp = [opts.python, opts.script, "--dir", pools]
        for i in range(10):
            subprocess.run([*kvp, "set", f"Key{i}", f"value {i}"], env=env, check=True)
        commands = {
            "python -c pass": ([opts.python, "-c", "pass"], 0),
            "kvp get": ([*kvp, "get", "Key9"], 0),
            "kvp set": ([*kvp, "set", "Key5", "new value"], 0),
            "kvp get missing": ([*kvp, "get", "-q", "Nope"], 1),
            "kvp get --json": ([*kvp, "get", "--json", "Key9"], 0),
        }
        for argv, rc in commands.values():  # warm the page cache and the bytecode caches
            timed(argv, env, rc)
        wall: Dict[str, List[float]] = {name: [] for name in commands}
        cpu: Dict[str, List[float]] = {name: [] for name in commands}
        for _ in range(opts.runs):
            for name, (argv, rc) in commands.items():
                took, used = timed(argv, env, rc)
                wall[name].append(took)
                cpu[name].append(used)
        if opts.importtime:
            done = subprocess.run(
                [opts.python, "-X", "importtime", *commands["kvp get"][0][1:]],
                env=env,
                capture_output=True,
                text=True,
            )
            rows = [line.split("|") for line in done.stderr.splitlines()[1:] if "|" in line]
            slowest = sorted(rows, key=lambda r: -int(r[1]))[:15]
            print("slowest imports of one kvp get (cumulative us | module):")
            for row in slowest:
                print(f"  {row[1].strip():>8} | {row[2].rstrip()}")
    bare = statistics.median(wall["python -c pass"])
    bare_cpu = statistics.median(cpu["python -c pass"])
    print(f"{opts.python} {os.path.relpath(opts.script)}, {opts.runs} runs each, medians:")
    for name in commands:
        median = statistics.median(wall[name])
        used = statistics.median(cpu[name])
        print(
            f"  {name:<16} {median * 1000:6.1f} ms wall (min {min(wall[name]) * 1000:5.1f})"
            f" {median / bare:5.2f}x   {used * 1000:6.1f} ms CPU {used / bare_cpu:5.2f}x"
        )
    worst = max(statistics.median(wall[n]) for n in BAR) / bare
    worst_cpu = max(statistics.median(cpu[n]) for n in BAR) / bare_cpu
    verdict = "met" if max(worst, worst_cpu) <= 2 else "NOT met"
    print(
        f"bar (issue #11): kvp get/set within 2x of python -c pass: {worst:.2f}x wall, "
        f"{worst_cpu:.2f}x CPU -> {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
