#!/usr/bin/env python3
"""Benchmark: start-up cost of ``kvp get`` and ``kvp set`` against the bare interpreter.

Scripts call ``kvp`` in loops, so its cost is mostly start-up: the interpreter, then the imports
of what one command needs (issue #11's bar: ``kvp get``/``kvp set`` within 2x of
``python3 -c pass`` on the same machine, with the same interpreter and ``site``). Each command
is run ``--runs`` times, interleaved (bare, get, set, bare, ...) so that a busy neighbour slows
all three alike; the table shows medians and the ratios of the medians.

``kvp`` runs the way the console script does (``from pykvpd.cli import main``), against a
temporary pool directory with a 10-record guest pool. ``--python`` chooses the interpreter;
``--importtime`` prints the slowest imports of one ``kvp get`` (``python -X importtime``).
Not a test: it prints numbers and exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KVP = "import sys; from pykvpd.cli import main; sys.exit(main())"


def timed(argv: List[str], env: Dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed ({done.returncode}): {done.stderr.decode()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="runs of each command (default 40)")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    parser.add_argument("--importtime", action="store_true", help="show the slowest imports")
    opts = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONDONTWRITEBYTECODE="")
    env.pop("PYTHONDONTWRITEBYTECODE")
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as pools:
        kvp = [opts.python, "-c", KVP, "--dir", pools]
        for i in range(10):
            subprocess.run([*kvp, "set", f"Key{i}", f"value {i}"], env=env, check=True)
        commands = {
            "python -c pass": [opts.python, "-c", "pass"],
            "kvp get": [*kvp, "get", "Key9"],
            "kvp set": [*kvp, "set", "Key5", "new value"],
        }
        for argv in commands.values():  # warm the page cache and the bytecode caches
            timed(argv, env)
        times: Dict[str, List[float]] = {name: [] for name in commands}
        for _ in range(opts.runs):
            for name, argv in commands.items():
                times[name].append(timed(argv, env))
        if opts.importtime:
            done = subprocess.run(
                [opts.python, "-X", "importtime", *commands["kvp get"][1:]],
                env=env,
                capture_output=True,
                text=True,
            )
            rows = [line.split("|") for line in done.stderr.splitlines()[1:] if "|" in line]
            slowest = sorted(rows, key=lambda r: -int(r[1]))[:15]
            print("slowest imports of one kvp get (cumulative us | module):")
            for row in slowest:
                print(f"  {row[1].strip():>8} | {row[2].rstrip()}")
    bare = statistics.median(times["python -c pass"])
    print(f"{opts.python}, {opts.runs} runs each, medians:")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"  {name:<16} {median * 1000:7.1f} ms  (min {min(values) * 1000:.1f}, "
            f"max {max(values) * 1000:.1f})  {median / bare:4.2f}x bare"
        )
    worst = max(statistics.median(times[n]) for n in ("kvp get", "kvp set")) / bare
    print(f"bar (issue #11): kvp get/set within 2x of python -c pass: {worst:.2f}x -> "
          f"{'met' if worst <= 2 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
