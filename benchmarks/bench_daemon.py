#!/usr/bin/env python3
"""Benchmark: our daemon against Debian's hv_kvp_daemon through the same fake kernel.

Both daemons run as in the differential test (tests/cdaemon.py): Debian's behind an LD_PRELOAD
redirect of /dev/vmbus/hv_kvp to the simulator's SOCK_SEQPACKET socket, both under ``unshare -m``
with a temp directory mounted on /var/lib (needs root, gcc and hyperv-daemons). Without the C
daemon only our numbers are printed.

Measured (issue #2's bar in brackets):

* round trip of one request on a 10-record pool: SET (modify), GET, ENUMERATE [ours <= 1.5x C];
* SET on a 10,000-record pool, modify and append [C/ours >= 20];
* full host enumeration of a 10,000-record pool [C/ours >= 20; C about 27 s];
* peak RSS (VmHWM) after the 10-record workload [ours <= 20 MB];
* idle CPU time and context switches over a few seconds [zero];
* start to registration [ours < 150 ms].

Usage: ``python3 benchmarks/bench_daemon.py [--quick] [--json FILE]``. ``--quick`` enumerates
only 1,000 of the C daemon's 10,000 records and extrapolates (its cost per index is linear in the
pool size, so the full walk is quadratic).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from cdaemon import KvpPeer, c_daemon_missing, unshare_missing  # noqa: E402

from pykvpd import protocol as p  # noqa: E402
from pykvpd.pools import encode_record  # noqa: E402

BIG = 10_000
SMALL = 10
IDLE_SECONDS = 3.0
IDLE_SETTLE = 2.0
PYTHON = sys.executable


def populate(peer: KvpPeer, pool: int, count: int) -> None:
    os.makedirs(peer.pool_dir, exist_ok=True)
    with open(peer.pool_path(pool), "wb") as fh:
        for i in range(count):
            fh.write(encode_record(b"key-%05d" % i, b"value-%05d " % i + b"x" * 100))


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def proc_status(pid: int) -> Dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            out[name] = value.strip()
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> int:
    """Voluntary + involuntary switches summed over all threads (each one is a wake-up)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = proc_status_path(f"/proc/{pid}/task/{tid}/status")
        except FileNotFoundError:
            continue
        total += int(status["voluntary_ctxt_switches"]) + int(status["nonvoluntary_ctxt_switches"])
    return total


def proc_status_path(path: str) -> Dict[str, str]:
    out = {}
    with open(path) as fh:
        for line in fh:
            name, _, value = line.partition(":")
            out[name] = value.strip()
    return out


def small_pool(kind: str, workdir: str, namespace: bool) -> Dict[str, float]:
    peer = make(kind, workdir, namespace)
    populate(peer, 0, SMALL)
    with peer:
        set_msg = p.build_key_message(p.OP_SET, 0, b"key-00005", b"new value")
        get_msg = p.build_key_message(p.OP_GET, 0, b"key-00005")
        enum_msg = p.build_enumerate_message(0, 7)
        for _ in range(200):  # warm-up
            peer.transact(set_msg)
        result = {
            "set_10": timed(lambda: peer.transact(set_msg), 2000),
            "get_10": timed(lambda: peer.transact(get_msg), 2000),
            "enum_10": timed(lambda: peer.transact(enum_msg), 2000),
        }
        pid = peer.proc.pid
        result["rss_hwm_kb"] = float(proc_status(pid)["VmHWM"].split()[0])
        result["threads"] = float(proc_status(pid)["Threads"])
        time.sleep(IDLE_SETTLE)  # the status file is written once, ~1 s after the last request
        cpu0, sw0 = cpu_seconds(pid), context_switches(pid)
        time.sleep(IDLE_SECONDS)
        result["idle_cpu_s"] = cpu_seconds(pid) - cpu0
        result["idle_switches"] = float(context_switches(pid) - sw0)
    return result


def big_pool(kind: str, workdir: str, namespace: bool, enum_limit: int) -> Dict[str, float]:
    peer = make(kind, workdir, namespace)
    populate(peer, 1, BIG)
    with peer:
        peer.timeout = 120.0
        counter = [0]

        def append() -> None:
            counter[0] += 1
            peer.transact(p.build_key_message(p.OP_SET, 1, b"new-%05d" % counter[0], b"v"))

        modify = p.build_key_message(p.OP_SET, 1, b"key-05000", b"modified")
        peer.transact(modify)  # warm-up (first read of the 25 MB file)
        result = {
            "set_10k_modify": timed(lambda: peer.transact(modify), 15),
            "set_10k_append": timed(append, 15),
        }
        start = time.perf_counter()
        walked = 0
        for index in range(enum_limit):
            reply = peer.transact(p.build_enumerate_message(1, index))
            if p.reply_status(reply) != p.HV_S_OK:
                break
            walked += 1
        elapsed = time.perf_counter() - start
        total = BIG + counter[0]
        if walked < total and walked == enum_limit:
            elapsed *= total / walked  # linear per index: extrapolate the rest of the walk
        result["enum_10k_full"] = elapsed
        result["enum_walked"] = float(walked)
    return result


def registration_time(kind: str, workdir: str, namespace: bool, runs: int = 9) -> float:
    samples: List[float] = []
    for run in range(runs):
        peer = make(kind, os.path.join(workdir, f"reg{run}"), namespace)
        os.makedirs(peer.workdir, exist_ok=True)
        start = time.perf_counter()
        peer.start()
        samples.append(time.perf_counter() - start)
        peer.close()
    return statistics.median(samples)


NULL_RESPONDER = """
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
sock.connect(sys.argv[1])
sock.send(bytes([100]) + bytes(7431))
sock.recv(65536)
ok = bytes(7432)
while True:
    if not sock.recv(65536):
        break
    sock.send(ok)
"""


def harness_floor(workdir: str) -> float:
    """Round trip through the fake kernel to a process that answers at once without work.

    Every round trip above includes this (Python threads and a socket on the kernel side), so it
    bounds the ratios a daemon can show against the C daemon on cheap requests.
    """
    import subprocess

    from pykvpd.simulator.kernel import FakeKernel

    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "null.sock")
    with FakeKernel(path, timeout=10.0) as kernel:
        proc = subprocess.Popen([sys.executable, "-c", NULL_RESPONDER, path])
        try:
            assert kernel.wait_registered(10)
            msg = p.build_enumerate_message(0, 0)
            for _ in range(200):
                kernel.transact(msg)
            return timed(lambda: kernel.transact(msg), 2000)
        finally:
            proc.kill()
            proc.wait()


def make(kind: str, workdir: str, namespace: bool) -> KvpPeer:
    os.makedirs(workdir, exist_ok=True)
    if kind == "c":
        return KvpPeer.c(workdir)
    return KvpPeer.py(workdir, namespace=namespace, python=PYTHON)


def bare_interpreter_rss_kb() -> float:
    """Peak RSS of the interpreter doing nothing: the floor under our daemon's number."""
    import subprocess

    # VmHWM, not ru_maxrss: the latter counts the forking parent's pages from before the exec.
    code = "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


def measure(kind: str, base: str, namespace: bool, enum_limit: int) -> Dict[str, float]:
    out: Dict[str, float] = {}
    out.update(small_pool(kind, os.path.join(base, f"{kind}-small"), namespace))
    out.update(big_pool(kind, os.path.join(base, f"{kind}-big"), namespace, enum_limit))
    out["registration_s"] = registration_time(kind, os.path.join(base, f"{kind}-reg"), namespace)
    return out


ROWS = [
    # key, label, unit, bar description, check(ours, c) -> ok
    ("set_10", "SET round trip, 10 records", "ms", "ours <= 1.5x C", lambda o, c: o <= 1.5 * c),
    ("get_10", "GET round trip, 10 records", "ms", "ours <= 1.5x C", lambda o, c: o <= 1.5 * c),
    (
        "enum_10",
        "ENUMERATE round trip, 10 records",
        "ms",
        "ours <= 1.5x C",
        lambda o, c: o <= 1.5 * c,
    ),
    (
        "set_10k_modify",
        "SET modify, 10,000 records",
        "ms",
        "C/ours >= 20",
        lambda o, c: c >= 20 * o,
    ),
    (
        "set_10k_append",
        "SET append, 10,000 records",
        "ms",
        "C/ours >= 20",
        lambda o, c: c >= 20 * o,
    ),
    (
        "enum_10k_full",
        "full enumeration, 10,000 records",
        "s",
        "C/ours >= 20",
        lambda o, c: c >= 20 * o,
    ),
    (
        "rss_hwm_kb",
        "peak RSS (VmHWM), 10 records",
        "MB",
        "ours <= 20 MB",
        lambda o, c: o <= 20 * 1024,
    ),
    ("idle_cpu_s", f"idle CPU over {IDLE_SECONDS:g} s", "ms", "zero", lambda o, c: o == 0),
    ("idle_switches", f"idle wake-ups over {IDLE_SECONDS:g} s", "", "zero", lambda o, c: o == 0),
    ("registration_s", "start to registration", "ms", "ours < 150 ms", lambda o, c: o < 0.150),
]


def fmt(key: str, unit: str, value: Optional[float]) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value * 1000:.3f}"
    if unit == "MB":
        return f"{value / 1024:.1f}"
    if unit == "s":
        return f"{value:.3f}"
    return f"{value:g}"


def report(ours: Dict[str, float], c: Optional[Dict[str, float]], floor: float) -> bool:
    ok_all = True
    print(f"harness floor (fake kernel round trip to a null responder): {floor * 1000:.3f} ms")
    print(f"{'measure':38} {'unit':4} {'C daemon':>10} {'pykvpd':>10} {'ratio':>8}  bar")
    for key, label, unit, bar, check in ROWS:
        c_value = c.get(key) if c else None
        ratio = ""
        if c_value:
            ratio = f"{ours[key] / c_value:.2f}x"
        ok = check(ours[key], c_value if c_value is not None else float("inf"))
        if c_value is None and "C" in bar:
            verdict = "n/a"
        else:
            verdict = "ok" if ok else "MISSED"
            ok_all &= ok
        print(
            f"{label:38} {unit:4} {fmt(key, unit, c_value):>10} {fmt(key, unit, ours[key]):>10}"
            f" {ratio:>8}  {bar} [{verdict}]"
        )
    if c:
        walk_c = c["enum_10k_full"] - floor * (BIG + 15)
        walk_ours = ours["enum_10k_full"] - floor * (BIG + 15)
        print(
            f"full enumeration minus the harness floor (estimate): C {walk_c:.2f} s,"
            f" ours {walk_ours:.2f} s = {walk_c / max(walk_ours, 1e-9):.1f}x faster"
        )
        for key in ("get_10", "enum_10"):
            extra = (ours[key] - c[key]) * 1e6
            print(f"{key}: our daemon's own time above the C daemon's: {extra:.0f} us per request")
    return ok_all


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="extrapolate C's full enumeration")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--no-c", action="store_true", help="measure only our daemon")
    parser.add_argument("--python", default=sys.executable, help="interpreter for our daemon")
    args = parser.parse_args(argv)
    global PYTHON
    PYTHON = args.python
    reason = None if not args.no_c else "--no-c"
    reason = reason or c_daemon_missing()
    namespace = unshare_missing() is None
    with tempfile.TemporaryDirectory(prefix="pykvpd-bench-") as base:
        floor = harness_floor(os.path.join(base, "floor"))
        ours = measure("py", base, namespace, BIG * 2)
        c = None
        if reason is None:
            c = measure("c", base, True, 1000 if args.quick else BIG * 2)
        else:
            print(f"C daemon not measured: {reason}", file=sys.stderr)
    where = "in a mount namespace" if namespace else "with --pool-dir"
    print(f"pykvpd {where}, run by {PYTHON}")
    print(f"bare interpreter peak RSS: {bare_interpreter_rss_kb() / 1024:.1f} MB")
    ok = report(ours, c, floor)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"pykvpd": ours, "c": c, "harness_floor_s": floor}, fh, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
