"""Test harness: run Debian's hv_kvp_daemon, or ours, behind the simulator's fake kernel.

Both daemons talk to one ``pykvpd.simulator.kernel.FakeKernel`` listening on an ``AF_UNIX``
``SOCK_SEQPACKET`` socket (one datagram = one 7432-byte message, as on ``/dev/vmbus/hv_kvp``):

* the C daemon (``/usr/sbin/hv_kvp_daemon -n``) opens the device path, hard-coded; a small
  LD_PRELOAD library built here from ``tests/preload/hvkvp_redirect.c`` turns that ``open`` into a
  connection to ``$HVKVP_SOCKET``. Its pool directory is hard-coded too, so it runs under
  ``unshare -m`` with a temp directory bind-mounted over ``/var/lib`` (holding ``hyperv/``):
  nothing on the real machine is touched, and the test reads the pools from outside;
* our daemon gets ``--device SOCKET``; with ``namespace=True`` it runs exactly like the C daemon
  (same mount namespace set-up, default ``/var/lib/hyperv``), otherwise with ``--pool-dir``,
  which needs no root.

Usage::

    with KvpPeer.c(tmp_path) as peer:
        reply = peer.transact(protocol.build_key_message(OP_SET, 0, b"k", b"v"))
        assert peer.records(0) == [(b"k", b"v")]
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

from pykvpd import protocol as p
from pykvpd.simulator import kernel as kernel_mod
from pykvpd.simulator.kernel import FakeKernel
from pykvpd.store import RECORD_SIZE, PoolImage, decode_pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DAEMON = "/usr/sbin/hv_kvp_daemon"
PRELOAD_SOURCE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "preload", "hvkvp_redirect.c"
)
STATE_DIR = "/var/lib"  # what is bind-mounted in the namespace; the pools are in STATE_DIR/hyperv
REGISTER_TIMEOUT = 10.0
REPLY_TIMEOUT = 10.0


class HarnessUnavailable(Exception):
    """Something the harness needs (root, unshare, gcc, the C daemon) is missing."""


# --------------------------------------------------------------------------- requirements


def _can_unshare() -> Optional[str]:
    """None when ``unshare -m`` plus a bind mount works here, else the reason it does not."""
    if os.geteuid() != 0:
        return "needs root (unshare -m and mount --bind)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount --make-rprivate / && mount -t tmpfs none /mnt"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if probe.returncode != 0:
        return f"unshare -m with mounts does not work here: {probe.stderr.strip()}"
    return None


_UNSHARE_REASON: Optional[str] = "not checked"


def unshare_missing() -> Optional[str]:
    """Cached reason why namespaces cannot be used, or None."""
    global _UNSHARE_REASON
    if _UNSHARE_REASON == "not checked":
        _UNSHARE_REASON = _can_unshare()
    return _UNSHARE_REASON


def c_daemon_missing() -> Optional[str]:
    """Why the C daemon cannot be run here (skip reason), or None."""
    if not os.access(C_DAEMON, os.X_OK):
        return f"needs Debian's hyperv-daemons ({C_DAEMON})"
    if shutil.which("gcc") is None:
        return "needs gcc to build the LD_PRELOAD redirect library"
    return unshare_missing()


def preload_library() -> str:
    """Build the redirect library once per source version into a cache dir; return its path."""
    with open(PRELOAD_SOURCE, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), f"pykvpd-test-preload-{os.geteuid()}")
    os.makedirs(cache, mode=0o700, exist_ok=True)
    target = os.path.join(cache, f"hvkvp_redirect-{digest}.so")
    if os.path.exists(target):
        return target
    partial = f"{target}.{os.getpid()}.tmp"
    result = subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-o", partial, PRELOAD_SOURCE, "-ldl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise HarnessUnavailable(f"gcc failed to build the preload library:\n{result.stderr}")
    os.replace(partial, target)
    return target


# --------------------------------------------------------------------------- the peer


class KvpPeer:
    """One daemon (C or ours) behind its own fake kernel, with its own pool directory.

    ``transact`` sends one raw daemon-side message and returns the raw reply. ``restart`` starts
    the daemon again on the same pools (after a kill, for instance). Attributes: ``kernel`` (the
    FakeKernel), ``proc`` (the daemon's Popen; its pid is the daemon's pid, also under unshare),
    ``pool_dir``.
    """

    def __init__(
        self,
        kind: str,
        workdir: str,
        *,
        namespace: bool,
        timeout: float = REPLY_TIMEOUT,
        extra_args: Sequence[str] = (),
        kernel_version: str = kernel_mod.DRIVER_VERSION,
        netns_setup: Optional[str] = None,
        python: Optional[str] = None,
    ) -> None:
        if kind not in ("c", "py"):
            raise ValueError(f"kind must be 'c' or 'py', not {kind!r}")
        self.kind = kind
        self.workdir = os.fspath(workdir)
        self.namespace = namespace or kind == "c"
        self.timeout = timeout
        self.extra_args = list(extra_args)
        self.kernel_version = kernel_version
        self.python = python or sys.executable  # the interpreter that runs our daemon
        self.netns_setup = netns_setup  # shell commands run in a fresh network namespace
        if netns_setup is not None and not self.namespace:
            raise ValueError("netns_setup needs namespace=True")
        self.state_dir = os.path.join(self.workdir, f"{kind}-state")  # mounted on /var/lib
        self.pool_dir = os.path.join(self.state_dir, "hyperv")
        self.socket_path = os.path.join(self.workdir, f"{kind}-kvp.sock")
        self.log_path = os.path.join(self.workdir, f"{kind}-daemon.log")
        self.kernel: Optional[FakeKernel] = None
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    # ----------------------------------------------------------------- constructors

    @classmethod
    def c(cls, workdir: str, **kwargs: object) -> KvpPeer:
        """Debian's /usr/sbin/hv_kvp_daemon -n (raises HarnessUnavailable if it cannot run)."""
        reason = c_daemon_missing()
        if reason:
            raise HarnessUnavailable(reason)
        return cls("c", workdir, namespace=True, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def py(cls, workdir: str, namespace: bool = False, **kwargs: object) -> KvpPeer:
        """Our daemon; ``namespace=True`` runs it exactly like the C daemon (needs root)."""
        if namespace:
            reason = unshare_missing()
            if reason:
                raise HarnessUnavailable(reason)
        return cls("py", workdir, namespace=namespace, **kwargs)  # type: ignore[arg-type]

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> KvpPeer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> KvpPeer:
        os.makedirs(self.pool_dir, exist_ok=True)
        self.kernel = FakeKernel(
            self.socket_path, timeout=self.timeout, version=self.kernel_version
        ).start()
        self.spawn()
        self.wait_registered()
        return self

    def command(self) -> List[str]:
        """The daemon's argv (wrapped in unshare when it runs in a mount namespace)."""
        if self.kind == "c":
            daemon = ["env", f"LD_PRELOAD={preload_library()}", f"HVKVP_SOCKET={self.socket_path}"]
            daemon += [C_DAEMON, "-n"]
        else:
            # under the C daemon's name, as the unit starts it (no re-exec to get that name)
            daemon = [self.python, "-m", "pykvpd.hv_kvp_daemon", "-n", "--device",
                      self.socket_path]
            daemon += ["--config", os.path.join(self.workdir, "no-such-pykvpd.conf")]
            daemon += ["--status-file", os.path.join(self.workdir, f"{self.kind}-status.json")]
            if not self.namespace:
                daemon += ["--pool-dir", self.pool_dir]
            daemon += self.extra_args
        if not self.namespace:
            return daemon
        # unshare execs sh, which execs the daemon: the Popen pid is the daemon's pid.
        script = 'mount --make-rprivate / && mount --bind "$0" ' + STATE_DIR + ' && exec "$@"'
        flags = "-m"
        if self.netns_setup is not None:
            flags = "-mn"
            script = f"{{ {self.netns_setup} ; }} >/dev/null && {script}"
        return ["unshare", flags, "sh", "-c", script, self.state_dir, *daemon]

    def spawn(self) -> subprocess.Popen:
        """Start the daemon process (the kernel must be running); does not wait."""
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (kept open across restarts)
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env,
            cwd=self.workdir,
        )
        return self.proc

    def wait_registered(self, registrations: Optional[int] = None) -> None:
        assert self.kernel is not None
        if not self.kernel.wait_registered(REGISTER_TIMEOUT, registrations):
            raise RuntimeError(f"{self.kind} daemon did not register:\n{self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> Optional[int]:
        """Send ``sig`` and reap the process; returns its exit status."""
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        finally:
            self.proc = None

    def restart(self) -> None:
        """Kill the daemon if it runs, start a new one on the same pools, wait for registration."""
        assert self.kernel is not None
        if self.alive():
            self.kill()
        before = self.kernel.registrations
        self.spawn()
        self.wait_registered(before + 1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_status(self) -> Optional[int]:
        """None while running; the returncode (negative = killed by that signal) after."""
        return None if self.proc is None else self.proc.poll()

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None
        if self._log is not None:
            self._log.close()
            self._log = None

    # ----------------------------------------------------------------- talking

    def transact(self, msg: bytes, timeout: Optional[float] = None) -> bytes:
        """One raw daemon-side message in, the daemon's raw 7432-byte reply out."""
        assert self.kernel is not None
        return self.kernel.transact(msg, self.timeout if timeout is None else timeout)

    def transact_raw(self, data: bytes, timeout: Optional[float] = None) -> bytes:
        """Like ``transact`` for a datagram of any length (0, 2, 7431, 8000 bytes ...)."""
        assert self.kernel is not None
        return self.kernel.transact_raw(data, self.timeout if timeout is None else timeout)

    def drop_connection(self) -> None:
        """The kernel closes the device under the daemon (module reload, hibernation)."""
        assert self.kernel is not None
        self.kernel.drop_connection("test: the kernel dropped the connection")

    def status(self, msg: bytes) -> int:
        return p.reply_status(self.transact(msg))

    def set(self, pool: int, key: bytes, value: bytes) -> int:
        return self.status(p.build_key_message(p.OP_SET, pool, key, value))

    def delete(self, pool: int, key: bytes) -> int:
        return self.status(p.build_key_message(p.OP_DELETE, pool, key))

    def get(self, pool: int, key: bytes) -> Tuple[int, bytes]:
        reply = self.transact(p.build_key_message(p.OP_GET, pool, key))
        return p.reply_status(reply), p.reply_key_value(reply)[1]

    def enumerate(self, pool: int, index: int) -> Tuple[int, bytes, bytes]:
        reply = self.transact(p.build_enumerate_message(pool, index))
        key, value = p.reply_key_value(reply)
        return p.reply_status(reply), key, value

    def enumerate_all(self, pool: int, limit: int = 100000) -> List[Tuple[bytes, bytes]]:
        """What the host sees walking index 0, 1, ... until a non-OK status."""
        out = []
        for index in range(limit):
            status, key, value = self.enumerate(pool, index)
            if status != p.HV_S_OK:
                break
            out.append((key, value))
        return out

    # ----------------------------------------------------------------- pools

    def pool_path(self, pool: int) -> str:
        return os.path.join(self.pool_dir, f".kvp_pool_{pool}")

    def pool_bytes(self, pool: int) -> bytes:
        with open(self.pool_path(pool), "rb") as fh:
            return fh.read()

    def pool_image(self, pool: int) -> PoolImage:
        return decode_pool(self.pool_bytes(pool))

    def records(self, pool: int) -> List[Tuple[bytes, bytes]]:
        """(key, value) of every whole record, each cut at its first NUL."""
        return [(r.key, r.value) for r in self.pool_image(pool).records]

    def write_pool(self, pool: int, data: bytes) -> None:
        """Replace a pool file's bytes in place (same inode), as another writer would."""
        with open(self.pool_path(pool), "r+b") as fh:
            fh.truncate(0)
            fh.write(data)

    def log_tail(self, limit: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""


def raw_records(data: bytes) -> List[bytes]:
    """A pool file split into its 2560-byte records (trailing partial bytes dropped)."""
    return [data[i : i + RECORD_SIZE] for i in range(0, len(data) - RECORD_SIZE + 1, RECORD_SIZE)]


def wait_for(predicate, timeout: float, interval: float = 0.01) -> bool:  # noqa: ANN001
    """Poll ``predicate`` until true or ``timeout`` seconds pass (for process-state checks)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
