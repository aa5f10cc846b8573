"""A whole simulated guest: temp pool directory, fake kernel, the daemon as a subprocess.

Used by the demo, scenarios and tests. The daemon is started exactly as on a guest, except
that it connects to the simulator's socket (``--device``) and keeps its pools, status file and
(absent) config inside the temporary directory, so nothing on the real machine is touched.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

from pykvpd.simulator.guestview import read_pool
from pykvpd.simulator.host import Host, Value
from pykvpd.simulator.kernel import DEFAULT_TIMEOUT, Event, FakeKernel

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DaemonCommand = Union[str, Sequence[str], None]


class DaemonFailed(Exception):
    """The daemon did not start or did not register with the simulator."""


def package_env() -> Dict[str, str]:
    """The environment for child processes: this source tree first on PYTHONPATH."""
    env = dict(os.environ)
    paths = [PACKAGE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def default_daemon_command(device: str, pool_dir: str, workdir: str) -> List[str]:
    """Our daemon in the foreground against the simulator, all state inside ``workdir``."""
    return [
        sys.executable,
        "-m",
        "pykvpd",
        "-n",
        "--device",
        device,
        "--pool-dir",
        pool_dir,
        "--status-file",
        os.path.join(workdir, "status.json"),
        "--config",
        os.path.join(workdir, "pykvpd.conf"),  # never created: built-in defaults
    ]


def expand_command(template: Union[str, Sequence[str]], device: str, pool_dir: str) -> List[str]:
    """A user-given daemon command with ``{device}`` and ``{pool_dir}`` filled in."""
    words = shlex.split(template) if isinstance(template, str) else list(template)
    return [w.replace("{device}", device).replace("{pool_dir}", pool_dir) for w in words]


def pool_tool_available() -> bool:
    """Whether the ``kvp`` pool tool (pykvpd.cli) is installed next to us."""
    return importlib.util.find_spec("pykvpd.cli") is not None


class SimulatedGuest:
    """Fake kernel + daemon process + host view, in one temporary directory.

    ``daemon_cmd`` replaces our daemon (a list, or a string with ``{device}``/``{pool_dir}``);
    ``daemon_cmd=False``-like use is covered by ``start(daemon=False)`` for an external daemon.
    """

    def __init__(
        self,
        workdir: Optional[str] = None,
        daemon_cmd: DaemonCommand = None,
        timeout: float = DEFAULT_TIMEOUT,
        register_timeout: float = 20.0,
        on_event: Optional[Callable[[Event], None]] = None,
        guest_parameters: Optional[Dict[str, Value]] = None,
        pool_dir: Optional[str] = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="pykvpd-sim-")
        self.pool_dir = pool_dir or os.path.join(self.workdir, "pools")
        self.device = os.path.join(self.workdir, "hv_kvp.sock")
        self.log_path = os.path.join(self.workdir, "daemon.log")
        self.register_timeout = register_timeout
        self.kernel = FakeKernel(self.device, timeout=timeout, on_event=on_event)
        self.host = Host(self.kernel, guest_parameters=guest_parameters)
        if daemon_cmd is None:
            self.command = default_daemon_command(self.device, self.pool_dir, self.workdir)
        else:
            self.command = expand_command(daemon_cmd, self.device, self.pool_dir)
        self.process: Optional[subprocess.Popen] = None
        self._log = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, daemon: bool = True) -> SimulatedGuest:
        os.makedirs(self.pool_dir, exist_ok=True)
        self.kernel.start()
        if daemon:
            self.start_daemon()
        return self

    def start_daemon(self) -> None:
        """Start the daemon and wait for its registration (DaemonFailed if it does not come)."""
        wanted = self.kernel.registrations + 1
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's life
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=package_env(),
            cwd=self.workdir,
        )
        deadline = time.monotonic() + self.register_timeout
        while not self.kernel.wait_registered(0.05, registrations=wanted):
            code = self.process.poll()
            if code is not None:
                raise DaemonFailed(f"daemon exited with status {code}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DaemonFailed(
                    f"daemon did not register within {self.register_timeout:g} s\n{self.log_tail()}"
                )

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> Optional[int]:
        """Signal the daemon and return its exit status (None if there was no daemon)."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return process.returncode

    def restart_daemon(self) -> Optional[int]:
        code = self.stop_daemon()
        self.start_daemon()
        return code

    def close(self, keep: bool = False) -> None:
        """Stop everything; remove the temporary directory unless ``keep``."""
        try:
            self.stop_daemon()
        finally:
            self.kernel.close()
            if self._own_workdir and not keep:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SimulatedGuest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ the guest side

    def records(self, pool: int):  # noqa: ANN201 - list of (key, value)
        return read_pool(self.pool_dir, pool)

    def guest_tool(self, args: Sequence[str]) -> str:
        return run_guest_tool(self.pool_dir, args)


def run_guest_tool(pool_dir: str, args: Sequence[str]) -> str:
    """Run the ``kvp`` pool tool like a guest script would; returns the command line shown.

    Falls back to the pool API in-process when the tool is not installed.
    """
    if pool_tool_available():
        words = list(args)
        if "--pool" in words:  # the tool takes the pool as a global option
            at = words.index("--pool")
            words = ["-p", words[at + 1]] + words[:at] + words[at + 2 :]
        command = [sys.executable, "-m", "pykvpd.cli", "--dir", pool_dir, *words]
        result = subprocess.run(
            command, env=package_env(), capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"kvp {shlex.join(words)[:200]} failed ({result.returncode}): "
                f"{result.stderr.strip()}"
            )
        return "kvp " + " ".join(shlex.quote(a) for a in words)
    return _pool_api(pool_dir, args)


def _pool_api(pool_dir: str, args: Sequence[str]) -> str:
    from pykvpd.store import PoolDir

    verb, rest = args[0], list(args[1:])
    pool = 1
    if "--pool" in rest:
        at = rest.index("--pool")
        pool = int(rest[at + 1])
        del rest[at : at + 2]
    store = PoolDir(pool_dir).pool(pool)
    if verb == "set":
        store.set(rest[0], rest[1])
    elif verb == "delete":
        store.delete(rest[0])
    else:
        raise ValueError(f"unsupported guest command {verb!r}")
    return f"store.PoolDir(...).pool({pool}).{verb}({', '.join(map(repr, rest))})"
