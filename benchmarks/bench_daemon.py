#!/usr/bin/env python3
"""Benchmark: our daemon against Debian's hv_kvp_daemon behind the same lean fake kernel.

The kernel side is this process, single-threaded: it binds an ``AF_UNIX`` ``SOCK_SEQPACKET``
socket, starts the daemon, accepts its connection, answers ``REGISTER1`` with
``protocol.build_register_reply()``, then does one ``send()`` and one ``recv()`` per request. No
threads, queues or conditions (the simulator's FakeKernel costs ~90 us per round trip, more than
either daemon's own work on a small pool), so a round trip here is the daemon's work plus two
socket hops, and the hops are measured separately (the ``floor`` lines).

How each daemon runs (argv and spawning reused from tests/cdaemon.py, unchanged):

* Debian's ``/usr/sbin/hv_kvp_daemon -n`` under ``unshare -m`` with the work directory's state dir
  bind-mounted on ``/var/lib`` and an LD_PRELOAD library that turns its
  ``open("/dev/vmbus/hv_kvp")`` into a connection to our socket (needs root, gcc,
  hyperv-daemons);
* ours as ``python -m pykvpd -n --device SOCK --pool-dir DIR --config <missing> --status-file X``
  run by ``--python`` (default: this interpreter).

Pools live on tmpfs (``/dev/shm``) by default, as in the spec's measurements of the C daemon
(Appendix A). ``--disk`` adds a second set of SET measurements with the pools on a disk file
system (``--disk-dir``, default the temp dir): there our daemon's ``fdatasync`` per SET (crash
safety, durability of acknowledged changes) waits for the device, the C daemon's rewrite of the
whole file stays in the page cache.

This process and both daemons are pinned to one CPU (``--cpu``; ``--no-pin`` to leave placement
to the scheduler): a round trip is then both processes' work plus two context switches. Unpinned
on a small VM, each hop may wake an idle virtual CPU, which costs more than either daemon's work
on a 10-record pool and makes the numbers bimodal from run to run (see benchmarks/README.md).

Measured (issue #2's bar in brackets):

* round trip of one request on a 10-record pool: SET (modify), GET, ENUMERATE [ours <= 1.5x C];
* SET on a 10,000-record pool, modify and append [C/ours >= 20];
* issue #10's scenarios, each in a fresh daemon on a fresh 10,000-record pool: DELETE from the
  head, SET of new keys, GET of a late key [C/ours >= 20], and the daemon's peak RSS (VmHWM)
  after each [ours <= C];
* full host enumeration of a 10,000-record pool [C/ours >= 20; C about 27 s];
* peak RSS (VmHWM of the daemon process) after the 10-record workload [ours <= 20 MB];
* idle CPU time and wake-ups over 3 s, after the status write that follows the last request
  [zero];
* start (spawn) to registration (REGISTER1 received) [ours < 150 ms].

Also printed: each daemon's own CPU time per request (``/proc/PID/task/*/schedstat``, which does
not depend on the kernel side at all).

Usage: ``python3 benchmarks/bench_daemon.py [--quick] [--disk] [--watchdog] [--repeat N]
[--json FILE]``; ``--watchdog`` adds our 10-record round trips with ``NOTIFY_SOCKET`` and
``WATCHDOG_USEC`` set, as under systemd (bar: within 5 % of the run without);
``--only-10k``: only issue #10's 10,000-record scenarios;
``--profile FILE`` runs only our daemon's workloads under cProfile and prints the top costs.
``--quick`` walks only 1,000 of the C daemon's 10,000 records and extrapolates linearly (each of
its ENUMERATEs re-reads the whole file, so the cost per index is constant for a given pool).
Prints a table of bars with ok/MISSED and always exits 0 (a benchmark, not a test), unless
something crashed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from cdaemon import KvpPeer, c_daemon_missing  # noqa: E402

from pykvpd import protocol as p  # noqa: E402
from pykvpd.store import encode_record  # noqa: E402

BIG = 10_000
SMALL = 10
IDLE_SECONDS = 3.0
IDLE_SETTLE = 2.0  # our daemon writes its status file once, ~1 s after the last request
RECV_BUFFER = 16384  # larger than any message, so a long datagram is visible as such
REGISTER_TIMEOUT = 10.0
REPLY_TIMEOUT = 120.0  # a C ENUMERATE/SET on 25 MB takes tens of ms; this only catches hangs
DRIVER_VERSION = "3.1"


class Sizes(NamedTuple):
    """How many requests each measurement makes (``--quick``: fewer, and C's walk extrapolated)."""

    warmup: int
    small: int
    big_set: int
    c_enum_limit: int
    registrations: int


FULL = Sizes(warmup=200, small=3000, big_set=21, c_enum_limit=BIG * 2, registrations=9)
QUICK = Sizes(warmup=200, small=1500, big_set=15, c_enum_limit=1000, registrations=7)


# --------------------------------------------------------------------------- the fake kernel


class LeanKernel:
    """The kernel side of /dev/vmbus/hv_kvp as one socket: one connection, send, recv.

    A daemon started by ``register`` connects; its REGISTER1 is answered like the driver does
    (operation echoed, version string); ``transact`` sends one 7432-byte request and returns the
    reply datagram. ``SO_RCVTIMEO`` bounds every wait without a ``poll`` per request.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path)
        self.listener.listen(1)
        self.conn: Optional[socket.socket] = None

    def register(self, spawn: Callable[[], subprocess.Popen]) -> Tuple[subprocess.Popen, float]:
        """Start the daemon, take its handshake; return it and seconds from spawn to REGISTER1."""
        start = time.perf_counter()
        proc = spawn()
        self.listener.settimeout(REGISTER_TIMEOUT)
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(REGISTER_TIMEOUT)
            hello = conn.recv(RECV_BUFFER)
        except OSError as exc:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"daemon did not connect and register: {exc}") from exc
        elapsed = time.perf_counter() - start
        if len(hello) < p.MSG_SIZE or hello[p.OFF_OPERATION] not in (p.OP_REGISTER1, p.OP_REGISTER):
            raise RuntimeError(f"bad handshake: {len(hello)} bytes, operation {hello[:1]!r}")
        conn.settimeout(None)
        seconds = int(REPLY_TIMEOUT)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, 0))
        conn.send(p.build_register_reply(hello[p.OFF_OPERATION], DRIVER_VERSION))
        self.conn = conn
        return proc, elapsed

    def transact(self, msg: bytes) -> bytes:
        """One request out, its reply in: the round trip every timing here is made of."""
        assert self.conn is not None
        self.conn.send(msg)
        try:
            reply = self.conn.recv(RECV_BUFFER)
        except BlockingIOError as exc:  # SO_RCVTIMEO expired
            raise RuntimeError(f"no reply within {REPLY_TIMEOUT:g} s") from exc
        if not reply:
            raise RuntimeError("the daemon closed the connection")
        return reply

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.listener.close()
        os.unlink(self.path)


class Daemon:
    """One daemon (``kind`` 'c' or 'py') behind a LeanKernel, pools in ``workdir``.

    KvpPeer (tests/cdaemon.py) provides the argv, the environment, the namespace set-up and the
    shutdown; its own FakeKernel is never started.
    """

    def __init__(self, kind: str, workdir: str, python: str) -> None:
        os.makedirs(workdir, exist_ok=True)
        if kind == "c":
            self.peer = KvpPeer.c(workdir)
        else:
            self.peer = KvpPeer.py(workdir, namespace=False, python=python)
        os.makedirs(self.peer.pool_dir, exist_ok=True)
        self.kernel: Optional[LeanKernel] = None
        self.registration_s = 0.0

    @property
    def pid(self) -> int:
        assert self.peer.proc is not None
        return self.peer.proc.pid

    def populate(self, pool: int, count: int) -> None:
        """Write ``count`` records of ~120 bytes into a pool file before the daemon starts."""
        with open(self.peer.pool_path(pool), "wb") as fh:
            for i in range(count):
                fh.write(encode_record(b"key-%05d" % i, b"value-%05d " % i + b"x" * 100))

    def __enter__(self) -> Daemon:
        self.kernel = LeanKernel(self.peer.socket_path)
        try:
            _, self.registration_s = self.kernel.register(self.peer.spawn)
        except RuntimeError as exc:
            self.close()
            raise RuntimeError(f"{exc}\n{self.peer.log_tail()}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None
        self.peer.close()  # SIGTERM, wait, log closed

    def transact(self, msg: bytes) -> bytes:
        assert self.kernel is not None
        return self.kernel.transact(msg)

    def expect(self, msg: bytes, status: int = p.HV_S_OK) -> bytes:
        """A request whose reply status is checked: timings of failing requests mean nothing."""
        reply = self.transact(msg)
        if p.reply_status(reply) != status:
            raise RuntimeError(
                f"{self.peer.kind} daemon answered 0x{p.reply_status(reply):08x},"
                f" expected 0x{status:08x}\n{self.peer.log_tail()}"
            )
        return reply


# --------------------------------------------------------------------------- /proc readings


def read_status(path: str) -> Dict[str, str]:
    out = {}
    with open(path) as fh:
        for line in fh:
            name, _, value = line.partition(":")
            out[name] = value.strip()
    return out


def threads(pid: int) -> List[str]:
    return [f"/proc/{pid}/task/{tid}" for tid in os.listdir(f"/proc/{pid}/task")]


def cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU, summed over the process's threads (schedstat, not 10 ms ticks)."""
    total = 0
    for task in threads(pid):
        try:
            with open(f"{task}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except FileNotFoundError:
            continue
    return total


def cpu_ticks_s(pid: int) -> float:
    """utime + stime from /proc/PID/stat (the classic reading, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> Tuple[int, int]:
    """(voluntary, involuntary) switches over all threads: each voluntary one is a wake-up."""
    vol = invol = 0
    for task in threads(pid):
        try:
            status = read_status(f"{task}/status")
        except FileNotFoundError:
            continue
        vol += int(status["voluntary_ctxt_switches"])
        invol += int(status["nonvoluntary_ctxt_switches"])
    return vol, invol


def fs_type(path: str) -> str:
    """File system type of the mount holding ``path`` (longest mount point in mountinfo)."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            point = left.split()[4].replace("\\040", " ")
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, right.split()[0]
    return kind


# --------------------------------------------------------------------------- timing


def timed(daemon: Daemon, messages: List[bytes], check: bool = False) -> Dict[str, float]:
    """Median and p90 round trip over ``messages`` (sent in turn), and the daemon's CPU per one.

    ``check`` verifies each reply's status (for requests that change the pool, such as appends).
    """
    send = daemon.expect if check else daemon.transact
    clock = time.perf_counter
    samples = []
    cpu0 = cpu_ns(daemon.pid)
    for msg in messages:
        start = clock()
        send(msg)
        samples.append(clock() - start)
    cpu = (cpu_ns(daemon.pid) - cpu0) / 1e9 / len(messages)
    samples.sort()
    p90 = samples[int(0.9 * (len(samples) - 1))]
    return {"median": statistics.median(samples), "p90": p90, "cpu": cpu}


def put(result: Dict[str, float], name: str, timing: Dict[str, float]) -> None:
    result[name] = timing["median"]
    result[name + "_p90"] = timing["p90"]
    result[name + "_cpu"] = timing["cpu"]


def small_pool(kind: str, workdir: str, python: str, sizes: Sizes, idle: bool) -> Dict[str, float]:
    """Round trips on a 10-record pool; then RSS and (if ``idle``) the idle readings."""
    daemon = Daemon(kind, workdir, python)
    daemon.populate(0, SMALL)
    result: Dict[str, float] = {}
    with daemon:
        set_msg = p.build_key_message(p.OP_SET, 0, b"key-00005", b"new value")
        get_msg = p.build_key_message(p.OP_GET, 0, b"key-00005")
        enum_msg = p.build_enumerate_message(0, 7)
        for msg in (set_msg, get_msg, enum_msg):
            daemon.expect(msg)
        for _ in range(sizes.warmup):
            daemon.transact(set_msg)
            daemon.transact(get_msg)
        put(result, "set_10", timed(daemon, [set_msg] * sizes.small))
        put(result, "get_10", timed(daemon, [get_msg] * sizes.small))
        put(result, "enum_10", timed(daemon, [enum_msg] * sizes.small))
        status = read_status(f"/proc/{daemon.pid}/status")
        result["rss_hwm_kb"] = float(status["VmHWM"].split()[0])
        result["threads"] = float(status["Threads"])
        if idle:
            result.update(idle_readings(daemon.pid))
    return result


def idle_readings(pid: int) -> Dict[str, float]:
    """CPU and wake-ups over IDLE_SECONDS, after the status write that follows a burst."""
    time.sleep(IDLE_SETTLE)
    ns0, ticks0, (vol0, invol0) = cpu_ns(pid), cpu_ticks_s(pid), context_switches(pid)
    time.sleep(IDLE_SECONDS)
    vol1, invol1 = context_switches(pid)
    return {
        "idle_cpu_s": (cpu_ns(pid) - ns0) / 1e9,
        "idle_cpu_ticks_s": cpu_ticks_s(pid) - ticks0,
        "idle_wakeups": float(vol1 - vol0),
        "idle_preempted": float(invol1 - invol0),
    }


def big_pool(
    kind: str, workdir: str, python: str, sizes: Sizes, enumerate_all: bool
) -> Dict[str, float]:
    """SET modify/append on a 10,000-record pool; then (if asked) the host's full enumeration."""
    daemon = Daemon(kind, workdir, python)
    daemon.populate(1, BIG)
    result: Dict[str, float] = {}
    with daemon:
        modify = p.build_key_message(p.OP_SET, 1, b"key-05000", b"modified")
        daemon.expect(modify)  # warm-up (first read of the 25 MB file)
        put(result, "set_10k_modify", timed(daemon, [modify] * sizes.big_set, check=True))
        appends = [
            p.build_key_message(p.OP_SET, 1, b"new-%05d" % i, b"v") for i in range(sizes.big_set)
        ]
        daemon.expect(appends[0])  # the first append (ours: the file grows, journal warm)
        put(result, "set_10k_append", timed(daemon, appends[1:], check=True))
        if enumerate_all:
            limit = BIG * 2 if kind == "py" else sizes.c_enum_limit
            result.update(full_enumeration(daemon, BIG + len(appends), limit))
    return result


def scale_10k(kind: str, workdir: str, python: str, sizes: Sizes) -> Dict[str, float]:
    """Issue #10's scenarios, each on its own daemon and 10,000-record pool, so that each
    scenario's peak RSS (VmHWM) is its own: DELETE from the head (``key-00000``,
    ``key-00001``, ...: the C daemon shifts the whole tail each time), SET of new keys, GET of
    the last key. A GET of the first key first makes both daemons read the file."""
    scenarios = {
        "delete_10k_head": [
            p.build_key_message(p.OP_DELETE, 1, b"key-%05d" % i) for i in range(sizes.big_set)
        ],
        "set_10k_add": [
            p.build_key_message(p.OP_SET, 1, b"added-%05d" % i, b"v" * 100)
            for i in range(sizes.big_set)
        ],
        "get_10k_late": [p.build_key_message(p.OP_GET, 1, b"key-%05d" % (BIG - 1))]
        * sizes.big_set,
    }
    result: Dict[str, float] = {}
    for name, messages in scenarios.items():
        daemon = Daemon(kind, os.path.join(workdir, name), python)
        daemon.populate(1, BIG)
        with daemon:
            daemon.expect(p.build_key_message(p.OP_GET, 1, b"key-%05d" % (BIG // 2)))
            put(result, name, timed(daemon, messages, check=True))
            status = read_status(f"/proc/{daemon.pid}/status")
            result["rss_" + name] = float(status["VmHWM"].split()[0])
    return result


def full_enumeration(daemon: Daemon, total: int, limit: int) -> Dict[str, float]:
    """Walk index 0, 1, ... as the host does; extrapolate linearly if stopped at ``limit``."""
    cpu0 = cpu_ns(daemon.pid)
    start = time.perf_counter()
    walked = 0
    for index in range(min(limit, total + 1)):
        reply = daemon.transact(p.build_enumerate_message(1, index))
        if p.reply_status(reply) != p.HV_S_OK:
            break
        walked += 1
    elapsed = time.perf_counter() - start
    cpu = (cpu_ns(daemon.pid) - cpu0) / 1e9
    if walked < total and walked < limit:
        raise RuntimeError(f"{daemon.peer.kind}: enumeration stopped at {walked} of {total}")
    scale = total / walked if walked < total else 1.0
    return {
        "enum_10k_full": elapsed * scale,
        "enum_10k_full_cpu": cpu * scale,
        "enum_walked": float(walked),
        "enum_extrapolated": float(walked < total),
    }


def registration_time(kind: str, workdir: str, python: str, runs: int) -> float:
    """Median seconds from spawning the daemon to its REGISTER1 arriving (empty pools)."""
    samples: List[float] = []
    for run in range(runs):
        with Daemon(kind, os.path.join(workdir, f"reg{run}"), python) as daemon:
            samples.append(daemon.registration_s)
    return statistics.median(samples)


def measure(kind: str, base: str, python: str, sizes: Sizes) -> Dict[str, float]:
    """Everything for one daemon with its pools under ``base`` (the main, tmpfs run)."""
    out: Dict[str, float] = {}
    out.update(scale_10k(kind, os.path.join(base, f"{kind}-10k"), python, sizes))
    out.update(small_pool(kind, os.path.join(base, f"{kind}-small"), python, sizes, idle=True))
    out.update(big_pool(kind, os.path.join(base, f"{kind}-big"), python, sizes, True))
    out["registration_s"] = registration_time(
        kind, os.path.join(base, f"{kind}-reg"), python, sizes.registrations
    )
    return out


def measure_sets(kind: str, base: str, python: str, sizes: Sizes) -> Dict[str, float]:
    """Only the SET round trips (10 and 10,000 records): the part a file system changes."""
    disk_sizes = sizes._replace(small=min(sizes.small, 500), warmup=50)
    out = small_pool(kind, os.path.join(base, f"{kind}-small"), python, disk_sizes, idle=False)
    out.update(big_pool(kind, os.path.join(base, f"{kind}-big"), python, sizes, False))
    return {k: v for k, v in out.items() if k.startswith("set_")}


# --------------------------------------------------------------------------- floors


PY_ECHO = """
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
sock.connect(sys.argv[1])
sock.send(bytes([100]) + bytes(7431))
sock.recv(16384)
while True:
    msg = sock.recv(16384)
    if not msg:
        break
    sock.send(msg)
"""

C_ECHO = r"""
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    static char buf[16384];
    struct sockaddr_un addr;
    ssize_t n;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (argc < 2 || fd < 0 || strlen(argv[1]) >= sizeof(addr.sun_path))
        return 2;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, argv[1]);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return 1;
    buf[0] = 100;
    if (write(fd, buf, 7432) != 7432 || read(fd, buf, sizeof(buf)) <= 0)
        return 1;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        if (write(fd, buf, n) != n)
            return 1;
    return 0;
}
"""


def c_echo_binary() -> Optional[str]:
    """Build the C echo responder once into a cache dir (None without gcc)."""
    if shutil.which("gcc") is None:
        return None
    digest = hashlib.sha256(C_ECHO.encode()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), f"pykvpd-bench-{os.geteuid()}")
    os.makedirs(cache, mode=0o700, exist_ok=True)
    target = os.path.join(cache, f"echo-{digest}")
    if not os.path.exists(target):
        source = target + ".c"
        with open(source, "w") as fh:
            fh.write(C_ECHO)
        subprocess.run(["gcc", "-O2", "-o", target, source], check=True, capture_output=True)
    return target


def floor(argv: List[str], workdir: str, sizes: Sizes) -> float:
    """Median round trip to a responder that echoes each request without any work."""
    os.makedirs(workdir, exist_ok=True)
    kernel = LeanKernel(os.path.join(workdir, "echo.sock"))
    proc = None
    try:
        proc, _ = kernel.register(lambda: subprocess.Popen(argv + [kernel.path]))
        msg = p.build_enumerate_message(0, 0)
        for _ in range(sizes.warmup):
            kernel.transact(msg)
        samples = []
        for _ in range(sizes.small):
            start = time.perf_counter()
            kernel.transact(msg)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)
    finally:
        kernel.close()
        if proc is not None:
            proc.wait(10)


def floors(base: str, python: str, sizes: Sizes) -> Dict[str, float]:
    out = {"floor_py": floor([python, "-c", PY_ECHO], os.path.join(base, "floor-py"), sizes)}
    binary = c_echo_binary()
    if binary:
        out["floor_c"] = floor([binary], os.path.join(base, "floor-c"), sizes)
    return out


def interpreter_rss_kb(python: str, *flags: str) -> float:
    """Peak RSS of the interpreter doing nothing: the floor under our daemon's number."""
    # VmHWM, not ru_maxrss: the latter counts the forking parent's pages from before the exec.
    code = "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    out = subprocess.run([python, *flags, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


# --------------------------------------------------------------------------- report


def within(factor: float) -> Callable[[float, float], bool]:
    return lambda ours, c: ours <= factor * c


def faster(factor: float) -> Callable[[float, float], bool]:
    return lambda ours, c: c >= factor * ours


class Row(NamedTuple):
    key: str
    label: str
    unit: str
    bar: str
    check: Callable[[float, float], bool]
    needs_c: bool


ROWS = [
    Row("set_10", "SET round trip, 10 records", "us", "ours <= 1.5x C", within(1.5), True),
    Row("get_10", "GET round trip, 10 records", "us", "ours <= 1.5x C", within(1.5), True),
    Row("enum_10", "ENUMERATE round trip, 10 records", "us", "ours <= 1.5x C", within(1.5), True),
    Row("set_10k_modify", "SET modify, 10,000 records", "ms", "C/ours >= 20", faster(20), True),
    Row("set_10k_append", "SET append, 10,000 records", "ms", "C/ours >= 20", faster(20), True),
    Row("enum_10k_full", "full enumeration, 10,000 records", "s", "C/ours >= 20", faster(20), True),
    Row("delete_10k_head", "DELETE at the head, 10,000 records", "ms", "C/ours >= 20",
        faster(20), True),
    Row("set_10k_add", "SET of a new key, 10,000 records", "ms", "C/ours >= 20", faster(20), True),
    Row("get_10k_late", "GET of the last key, 10,000 records", "ms", "C/ours >= 20", faster(20),
        True),
    Row("rss_delete_10k_head", "peak RSS, DELETE at head, 10k", "MB", "ours <= C", within(1), True),
    Row("rss_set_10k_add", "peak RSS, SET new key, 10k", "MB", "ours <= C", within(1), True),
    Row("rss_get_10k_late", "peak RSS, GET late key, 10k", "MB", "ours <= C", within(1), True),
    Row("rss_hwm_kb", "peak RSS (VmHWM), 10 records", "MB", "ours <= 20 MB",
        lambda o, c: o <= 20 * 1024, False),
    Row("idle_cpu_s", f"idle CPU over {IDLE_SECONDS:g} s", "ms", "zero",
        lambda o, c: o == 0, False),
    Row("idle_wakeups", f"idle wake-ups over {IDLE_SECONDS:g} s", "", "zero",
        lambda o, c: o == 0, False),
    Row("registration_s", "start to registration", "ms", "ours < 150 ms",
        lambda o, c: o < 0.150, False),
]  # fmt: skip


def fmt(unit: str, value: Optional[float]) -> str:
    if value is None:
        return "-"
    if unit == "us":
        return f"{value * 1e6:.1f}"
    if unit == "ms":
        return f"{value * 1000:.3f}"
    if unit == "MB":
        return f"{value / 1024:.1f}"
    if unit == "s":
        return f"{value:.3f}"
    return f"{value:g}"


def spread(runs: List[Dict[str, float]], key: str) -> str:
    """Half the min-max range of the runs, relative to their median ('' for one run)."""
    values = [run[key] for run in runs if key in run]
    if len(values) < 2 or not statistics.median(values):
        return ""
    return f"±{50 * (max(values) - min(values)) / statistics.median(values):.0f}%"


def print_table(
    title: str,
    ours_runs: List[Dict[str, float]],
    c_runs: Optional[List[Dict[str, float]]],
) -> Tuple[int, int]:
    """The bars table (medians over runs); returns (bars met, bars judged)."""
    ours, c = median_of(ours_runs), median_of(c_runs) if c_runs else None
    print(f"\n{title}")
    head = f"{'measure':34} {'unit':4} {'C daemon':>10} {'pykvpd':>10} {'C/ours':>8}"
    print(f"{head} {'spread C':>8} {'ours':>5}  bar")
    met = judged = 0
    for row in ROWS:
        if row.key not in ours:
            continue
        c_value = c.get(row.key) if c else None
        ratio = f"{c_value / ours[row.key]:.2f}" if c_value and ours[row.key] else ""
        if row.needs_c and c_value is None:
            verdict = "n/a"
        else:
            ok = row.check(ours[row.key], c_value if c_value is not None else 0.0)
            verdict = "ok" if ok else "MISSED"
            met, judged = met + ok, judged + 1
        spreads = f"{spread(c_runs or [], row.key):>8} {spread(ours_runs, row.key):>5}"
        print(
            f"{row.label:34} {row.unit:4} {fmt(row.unit, c_value):>10}"
            f" {fmt(row.unit, ours[row.key]):>10} {ratio:>8} {spreads}  {row.bar} [{verdict}]"
        )
    return met, judged


def print_details(ours: Dict[str, float], c: Optional[Dict[str, float]]) -> None:
    """Secondary numbers: p90s, each daemon's own CPU per request, idle details."""
    print("\ndetails (median of runs)             C daemon      pykvpd")
    for key in (
        "set_10", "get_10", "enum_10", "set_10k_modify", "set_10k_append",
        "delete_10k_head", "set_10k_add", "get_10k_late",
    ):  # fmt: skip
        unit = "ms" if "10k" in key else "us"
        for suffix, what in (("_p90", "p90 round trip"), ("_cpu", "daemon CPU/request")):
            name = key + suffix
            if name not in ours:
                continue
            c_value = fmt(unit, c.get(name)) if c else "-"
            print(f"  {key:15} {what:19} {c_value:>10} {unit} {fmt(unit, ours[name]):>10} {unit}")
    for name, unit, what in (
        ("enum_10k_full_cpu", "s", "full enum daemon CPU"),
        ("enum_walked", "", "records walked"),
        ("enum_extrapolated", "", "extrapolated (1=yes)"),
        ("idle_cpu_ticks_s", "ms", "idle CPU, /proc stat"),
        ("idle_preempted", "", "idle involuntary sw."),
        ("threads", "", "threads"),
    ):
        if name in ours:
            c_value = fmt(unit, c.get(name)) if c else "-"
            print(f"  {what:35} {c_value:>10} {unit:2} {fmt(unit, ours[name]):>10} {unit}")


def median_of(runs: List[Dict[str, float]]) -> Dict[str, float]:
    keys = {key for run in runs for key in run}
    return {key: statistics.median([run[key] for run in runs if key in run]) for key in keys}


def conditions(args: argparse.Namespace, tmpfs_dir: str, c_reason: Optional[str]) -> List[str]:
    """What the numbers depend on: machine, interpreter, file systems, C daemon version."""
    cpus = os.cpu_count()
    version = subprocess.run(
        [args.python, "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    lines = [
        f"machine: Linux {platform.release()}, {cpus} CPUs, {cpu_model()}",
        f"pykvpd: {args.python} (Python {version}), --pool-dir, no namespace",
        f"bare interpreter peak RSS: {interpreter_rss_kb(args.python) / 1024:.1f} MB"
        f" (with -I -S: {interpreter_rss_kb(args.python, '-I', '-S') / 1024:.1f} MB)",
        f"pools (main run): {tmpfs_dir} on {fs_type(tmpfs_dir)}",
    ]
    if args.disk:
        lines.append(f"pools (--disk run): {args.disk_dir} on {fs_type(args.disk_dir)}")
    if c_reason:
        lines.append(f"C daemon: not measured ({c_reason})")
    else:
        lines.append(f"C daemon: hyperv-daemons {c_version()}, under unshare -m, LD_PRELOAD")
    return lines


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def c_version() -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "hyperv-daemons"], capture_output=True, text=True
    )
    return out.stdout.strip() or "?"


# --------------------------------------------------------------------------- profiling


def profile(args: argparse.Namespace, sizes: Sizes) -> int:
    """Our daemon's 10- and 10,000-record workloads under cProfile (it dumps at SIGTERM)."""
    import pstats

    with tempfile.TemporaryDirectory(prefix="pykvpd-prof-", dir=args.tmpfs_dir) as base:
        wrapper = os.path.join(base, "python-cprofile")
        with open(wrapper, "w") as fh:
            fh.write(f'#!/bin/sh\nexec "{args.python}" -m cProfile -o "$PROFILE_OUT" "$@"\n')
        os.chmod(wrapper, 0o755)
        dumps = [os.path.join(base, name) for name in ("small.prof", "big.prof")]
        os.environ["PROFILE_OUT"] = dumps[0]
        small_pool("py", os.path.join(base, "small"), wrapper, sizes, idle=False)
        os.environ["PROFILE_OUT"] = dumps[1]
        big_pool("py", os.path.join(base, "big"), wrapper, sizes, enumerate_all=True)
        del os.environ["PROFILE_OUT"]
        stats = pstats.Stats(*dumps)
    stats.dump_stats(args.profile)
    print(f"our daemon under cProfile (10- and 10,000-record workloads), saved in {args.profile}")
    print("cProfile inflates per-call costs several times; compare entries, not absolute times")
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)
    return 0


# --------------------------------------------------------------------------- main


class NotifySocket:
    """A service manager's notify socket for ``--watchdog``: our daemon gets NOTIFY_SOCKET and
    WATCHDOG_USEC (30 s, the unit's WatchdogSec) in its environment, as under systemd, and the
    messages it sends are counted (and drained, so a full queue never blocks it)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.name = f"pykvpd-bench-notify-{os.getpid()}"
        self.sock.bind("\0" + self.name)
        self.sock.setblocking(False)
        self.messages: List[bytes] = []

    def __enter__(self) -> NotifySocket:
        os.environ.update(NOTIFY_SOCKET="@" + self.name, WATCHDOG_USEC="30000000")
        return self

    def __exit__(self, *exc: object) -> None:
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
            os.environ.pop(name, None)
        self.drain()
        self.sock.close()

    def drain(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(4096))
            except BlockingIOError:
                return


WATCHDOG_KEYS = ("set_10", "get_10", "set_10_cpu", "get_10_cpu")


def watchdog_run(workdir: str, python: str, sizes: Sizes) -> Dict[str, float]:
    """The 10-record round trips with the watchdog armed and without, back to back in the order
    off, on, on, off (a drift in the machine's load then hits both alike); the medians of each,
    plus how many keep-alives were sent."""
    runs: Dict[str, List[Dict[str, float]]] = {"off": [], "on": []}
    pings = messages = 0
    for i, mode in enumerate(("off", "on", "on", "off")):
        where = os.path.join(workdir, f"{mode}{i}")
        if mode == "off":
            runs["off"].append(small_pool("py", where, python, sizes, idle=False))
            continue
        with NotifySocket() as notify:
            runs["on"].append(small_pool("py", where, python, sizes, idle=False))
        pings += notify.messages.count(b"WATCHDOG=1")
        messages += len(notify.messages)
    result = {"watchdog_pings": float(pings), "notify_messages": float(messages)}
    for mode, results in runs.items():
        for key in WATCHDOG_KEYS:
            result[f"wd_{mode}_{key}"] = statistics.median(r[key] for r in results)
    return result


def print_watchdog(wd_runs: List[Dict[str, float]]) -> None:
    """Per-request cost with NOTIFY_SOCKET/WATCHDOG_USEC set against without."""
    med = median_of(wd_runs)
    print("\nwatchdog on (NOTIFY_SOCKET, WATCHDOG_USEC=30 s) against off, back to back,"
          f" median of {len(wd_runs)} runs x 2")
    print(f"{'measure':34} {'unit':4} {'off':>10} {'on':>10} {'on/off':>8}  bar")
    for key, label in zip(WATCHDOG_KEYS, ("SET round trip, 10 records",
                                          "GET round trip, 10 records",
                                          "SET daemon CPU/request", "GET daemon CPU/request")):
        off, on = med[f"wd_off_{key}"], med[f"wd_on_{key}"]
        verdict = "ok" if on <= 1.05 * off else "MISSED"
        print(f"{label:34} {'us':4} {fmt('us', off):>10} {fmt('us', on):>10}"
              f" {on / off:>8.3f}  on <= 1.05x off [{verdict}]")
    print(f"  keep-alives sent: {med.get('watchdog_pings', 0):g} per run "
          f"(of {med.get('notify_messages', 0):g} notify messages, 2 daemons, READY and STATUS)")


def run_all(
    base: str, args: argparse.Namespace, sizes: Sizes, with_c: bool
) -> Tuple[List[Dict[str, float]], List[Dict[str, float]]]:
    """``--repeat`` runs of every measurement, C and ours alternating within each run."""
    ours_runs, c_runs = [], []
    what = scale_10k if args.only_10k else measure
    for run in range(args.repeat):
        where = os.path.join(base, f"run{run}")
        if with_c:
            c_runs.append(what("c", where, args.python, sizes))
        ours_runs.append(what("py", where, args.python, sizes))
        ours_runs[-1].update(floors(where, args.python, sizes))
        if args.watchdog:
            args.watchdog_runs.append(watchdog_run(os.path.join(where, "wd"), args.python, sizes))
        shutil.rmtree(where, ignore_errors=True)
        print(f"run {run + 1}/{args.repeat} done", file=sys.stderr)
    return ours_runs, c_runs


def run_disk(
    args: argparse.Namespace, sizes: Sizes, with_c: bool
) -> Tuple[List[Dict[str, float]], List[Dict[str, float]]]:
    ours_runs, c_runs = [], []
    with tempfile.TemporaryDirectory(prefix="pykvpd-bench-", dir=args.disk_dir) as base:
        for run in range(args.repeat):
            where = os.path.join(base, f"run{run}")
            if with_c:
                c_runs.append(measure_sets("c", where, args.python, sizes))
            ours_runs.append(measure_sets("py", where, args.python, sizes))
            shutil.rmtree(where, ignore_errors=True)
    return ours_runs, c_runs


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="extrapolate C's full enumeration")
    parser.add_argument("--disk", action="store_true", help="also time SETs on --disk-dir")
    parser.add_argument(
        "--disk-dir", default=tempfile.gettempdir(), help="disk location for --disk (%(default)s)"
    )
    parser.add_argument(
        "--tmpfs-dir", default="/dev/shm", help="where the main run's pools live (%(default)s)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs; the table shows medians")
    parser.add_argument("--json", help="also write every run's numbers to this file")
    parser.add_argument("--no-c", action="store_true", help="measure only our daemon")
    parser.add_argument(
        "--watchdog", action="store_true",
        help="also time our 10-record round trips with NOTIFY_SOCKET/WATCHDOG_USEC set",
    )
    parser.add_argument(
        "--only-10k", action="store_true", help="only the 10,000-record DELETE/SET/GET scenarios"
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter for our daemon")
    parser.add_argument(
        "--cpu", type=int, help="pin this process and both daemons to this CPU (default: the last)"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="leave placement to the scheduler (see README)"
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="only run our daemon's workloads under cProfile, save to FILE, print the top costs",
    )
    args = parser.parse_args(argv)
    args.watchdog_runs = []
    return args


def pin(args: argparse.Namespace) -> str:
    """Pin to one CPU (children inherit it): a round trip is then the two processes' work and
    two context switches, not a wake-up of an idle virtual CPU (tens of us on a VM, per hop)."""
    if args.no_pin:
        return "not pinned (scheduler's placement)"
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"this process and both daemons pinned to CPU {cpu}"


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    placement = pin(args)
    if args.profile:
        return profile(args, sizes)
    c_reason = "--no-c" if args.no_c else c_daemon_missing()
    if fs_type(args.tmpfs_dir) != "tmpfs":
        print(f"warning: {args.tmpfs_dir} is not a tmpfs", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="pykvpd-bench-", dir=args.tmpfs_dir) as base:
        ours_runs, c_runs = run_all(base, args, sizes, c_reason is None)
    disk: Optional[Tuple[List[Dict[str, float]], List[Dict[str, float]]]] = None
    if args.disk:
        disk = run_disk(args, sizes, c_reason is None)
    for line in conditions(args, args.tmpfs_dir, c_reason):
        print(line)
    print(f"placement: {placement}")
    ours = median_of(ours_runs)
    floor_line = f"round-trip floor (lean kernel to an echo): Python {fmt('us', ours['floor_py'])}"
    if "floor_c" in ours:
        floor_line += f", C {fmt('us', ours['floor_c'])}"
    floor_line += " us"
    print(floor_line)
    mode = "--quick" if args.quick else "full"
    title = f"bars, pools on {fs_type(args.tmpfs_dir)} ({mode}, median of {args.repeat} runs)"
    met, judged = print_table(title, ours_runs, c_runs or None)
    print_details(ours, median_of(c_runs) if c_runs else None)
    if args.watchdog_runs:
        print_watchdog(args.watchdog_runs)
    if disk is not None:
        title = f"SET round trips, pools on {fs_type(args.disk_dir)} ({args.disk_dir})"
        print_table(title, disk[0], disk[1] or None)
    print(f"\n{met} of {judged} bars met (pools on {fs_type(args.tmpfs_dir)})")
    if args.json:
        data = {"pykvpd": ours_runs, "c": c_runs, "pykvpd_watchdog": args.watchdog_runs}
        if disk is not None:
            data.update({"pykvpd_disk": disk[0], "c_disk": disk[1]})
        with open(args.json, "w") as fh:
            json.dump(data, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
