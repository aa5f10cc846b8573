"""A booted Debian container prepared as a Hyper-V guest for the real-systemd tests.

* ``pykvpd simulate --serve /dev/vmbus/hv_kvp`` runs inside as the transient unit
  ``kvp-host.service`` and stands in for the kernel driver (there is no Hyper-V here). It runs
  from a copy of the package extracted to /opt/kvp-host, so installing, upgrading and removing
  the package under test never touches it;
* the shipped unit gets one drop-in, ``ConditionVirtualization=`` cleared (a container is not
  a Hyper-V guest), and nothing else;
* ``Guest.host`` drives the simulated host through the simulator's control socket, from the
  test process, through ``/proc/<container PID 1>/root``.

Everything asserted is what a person at the console sees: ``systemctl show``/``status``,
``journalctl``, ``ps -ef``, files.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from typing import Callable, Dict, List

import nspawn

DEVICE = "/dev/vmbus/hv_kvp"
CONTROL = "/run/kvp-host.ctl"
DROPIN = "/etc/systemd/system/pykvpd.service.d/container.conf"
DROPIN_TEXT = (
    "[Unit]\n# not a Hyper-V guest: a container with a simulated device\n"
    "ConditionVirtualization=\n"
)
UNIT = "pykvpd.service"
ALIASES = ("hv-kvp-daemon.service", "hypervkvpd.service", "hv_kvp_daemon.service")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class SimulatedHost:
    """The control socket of ``pykvpd simulate --serve`` inside a container."""

    def __init__(self, ct: nspawn.Container) -> None:
        self.ct = ct

    def start(self, deb: str) -> None:
        inside = "/var/tmp/kvp-host.deb"
        shutil.copyfile(deb, self.ct.path(inside))
        self.ct.run(["dpkg-deb", "-x", inside, "/opt/kvp-host"])
        self.ct.run(["mkdir", "-p", "/dev/vmbus"])
        self.ct.run(["systemd-run", "--unit=kvp-host", "--quiet",
                     "--setenv=PYTHONPATH=/opt/kvp-host/usr/lib/python3/dist-packages",
                     "/usr/bin/python3", "-m", "pykvpd", "simulate", "--serve", DEVICE,
                     "--control", CONTROL, "--no-console"])
        wait_for(lambda: self.ct.run(["test", "-S", CONTROL], check=False).returncode == 0,
                 what="the simulator's control socket")

    def stop(self) -> None:
        self.ct.run(["systemctl", "stop", "kvp-host.service"])

    def command(self, *words: str) -> Dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(90)
            sock.connect(self.ct.path(CONTROL))
            sock.sendall(json.dumps(list(words)).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)

    def ok(self, *words: str) -> Dict:
        reply = self.command(*words)
        assert reply.get("ok"), (words, reply)
        return reply

    def items(self, pool: str) -> Dict[str, str]:
        """A fresh host enumeration of POOL: {name: data}."""
        return {item["Name"]: item["Data"] for item in self.ok("enumerate", pool)["result"]}

    def registrations(self) -> int:
        return int(self.ok("stats")["result"]["registrations"])


class Guest:
    """A container with the simulator running and the drop-in in place (package not yet in)."""

    def __init__(self, ct: nspawn.Container, deb: str) -> None:
        self.ct = ct
        ct.run(["mkdir", "-p", DROPIN.rsplit("/", 1)[0]])
        with open(ct.path(DROPIN), "w") as f:
            f.write(DROPIN_TEXT)
        self.host = SimulatedHost(ct)
        self.host.start(deb)

    def show(self, unit: str = UNIT, *props: str) -> Dict[str, str]:
        out = self.ct.run(["systemctl", "show", unit, "-p", ",".join(props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self) -> int:
        return int(self.show(UNIT, "MainPID")["MainPID"])

    def wait_active(self, old_pid: int = 0, timeout: float = 40.0) -> int:
        """Until the unit is active (running) with a main PID other than OLD_PID; that PID."""

        def running() -> bool:
            state = self.show(UNIT, "ActiveState", "SubState", "MainPID")
            return (state["ActiveState"], state["SubState"]) == ("active", "running") and int(
                state["MainPID"]
            ) not in (0, old_pid)

        wait_for(running, f"{UNIT} active (running), not PID {old_pid}", timeout)
        return self.main_pid()

    def systemctl(self, *args: str) -> str:
        return self.ct.run(["systemctl", *args]).stdout

    def runtime_dropin(self, name: str, text: str) -> str:
        """A drop-in for pykvpd.service in /run (gone at reboot), then daemon-reload; its path
        inside the container (the caller removes it with ``os.remove(ct.path(...))``)."""
        dropin = f"/run/systemd/system/{UNIT}.d/{name}"
        self.ct.run(["mkdir", "-p", os.path.dirname(dropin)])
        with open(self.ct.path(dropin), "w") as f:
            f.write(text)
        self.systemctl("daemon-reload")
        return dropin

    def ps_ef(self) -> List[str]:
        return self.ct.run(["ps", "-ef"]).stdout.splitlines()

    def daemon_journal(self, *args: str) -> str:
        return self.ct.journal(UNIT, *args)

    def pool_bytes(self, pool: int) -> bytes:
        with open(self.ct.path(f"/var/lib/hyperv/.kvp_pool_{pool}"), "rb") as f:
            return f.read()


def waagent_sees_kvp_daemon(ps_ef_output: str) -> bool:
    """WALinuxAgent 2.7.3 RDMAHandler.is_kvp_daemon_running(): True when ``hv_kvp_daemon`` or
    ``hypervkvpd`` occurs anywhere in the ``ps -ef`` text (its logic, in our own code)."""
    return any(name in ps_ef_output for name in ("hv_kvp_daemon", "hypervkvpd"))
