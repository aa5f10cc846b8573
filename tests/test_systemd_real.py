"""The package as users get it, under a real systemd 252 as PID 1 (systemd-nspawn).

The .deb built from debian/ is installed with dpkg into a booted Debian 12 container. The
shipped unit runs unchanged except ``ConditionVirtualization=`` cleared (a drop-in: the
container is not a Hyper-V guest). ``pykvpd simulate --serve /dev/vmbus/hv_kvp`` runs in the
container as a transient unit and stands in for the kernel driver; the test drives the
simulated host through its control socket and reads what a person at the console would see:
``systemctl``, ``journalctl``, ``ps -ef``, the pool files.

Each container is booted once and carries a group of checks, to keep the run short.
Outside CI the tests skip when nspawn cannot run here; under CI=true they fail.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from typing import Dict, List

import nspawn
import pytest

DEVICE = "/dev/vmbus/hv_kvp"
CONTROL = "/run/kvp-host.ctl"
DROPIN = "/etc/systemd/system/pykvpd.service.d/container.conf"
DROPIN_TEXT = "[Unit]\n# not a Hyper-V guest: a container with a simulated device\n" \
              "ConditionVirtualization=\n"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def deb() -> str:
    nspawn.require()
    try:
        return nspawn.build_deb()
    except nspawn.DebBuildUnavailable as exc:
        pytest.fail(f"cannot build the .deb the container tests install: {exc}")


@pytest.fixture(scope="module")
def image() -> str:
    nspawn.require()
    return nspawn.rootfs(include=("hyperv-daemons",))


class SimulatedHost:
    """The control socket of ``pykvpd simulate --serve`` inside a container, from the host."""

    def __init__(self, ct: nspawn.Container) -> None:
        self.ct = ct

    def start(self, deb: str) -> None:
        """The simulator as a transient unit (in the container's cgroups, journal, lifetime),
        run from a copy of the package extracted to /opt/kvp-host, so that installing, upgrading
        and removing the package under test never touches the stand-in for the kernel."""
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

    def command(self, *words: str) -> Dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60)
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
        """A fresh host enumeration of POOL: {key: value}."""
        result = self.ok("enumerate", pool)["result"]
        return {item["Name"]: item["Data"] for item in result}


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def show(ct: nspawn.Container, unit: str, *props: str) -> Dict[str, str]:
    """``systemctl show -p ...``: what ``systemctl status`` summarises."""
    out = ct.run(["systemctl", "show", unit, "-p", ",".join(props)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def prepare(ct: nspawn.Container, deb: str) -> SimulatedHost:
    """Drop-in, then the simulated device, so the package's own start at install succeeds."""
    ct.run(["mkdir", "-p", DROPIN.rsplit("/", 1)[0]])
    with open(ct.path(DROPIN), "w") as f:
        f.write(DROPIN_TEXT)
    host = SimulatedHost(ct)
    host.start(deb)
    return host


def main_pid(ct: nspawn.Container) -> int:
    return int(show(ct, "pykvpd.service", "MainPID")["MainPID"])


def wait_active(ct: nspawn.Container, old_pid: int = 0) -> int:
    """Until pykvpd.service is active/running with a main PID other than OLD_PID."""

    def running() -> bool:
        state = show(ct, "pykvpd.service", "ActiveState", "SubState", "MainPID")
        return (state["ActiveState"], state["SubState"]) == ("active", "running") and int(
            state["MainPID"]
        ) not in (0, old_pid)

    wait_for(running, "pykvpd.service active (running)")
    return main_pid(ct)


def ps_lines(ct: nspawn.Container) -> List[str]:
    return ct.run(["ps", "-ef"]).stdout.splitlines()


# --------------------------------------------------------------------------- checks


def test_install_start_ready_and_serve(deb, image):
    """Installing the package starts the unit; READY=1 makes it active; the host's SET, GET and
    ENUMERATE reach the pools through it."""
    with nspawn.Container(image) as ct:
        host = prepare(ct, deb)
        installed = ct.install_deb(deb)
        assert "pykvpd" in installed.stdout
        pid = wait_active(ct)
        state = show(ct, "pykvpd.service", "Type", "StatusText", "NRestarts")
        assert state["Type"] == "notify"
        assert state["StatusText"].startswith("registered;"), state
        assert state["NRestarts"] == "0"

        host.ok("add", "Environment", "production")
        assert host.items("external")["Environment"] == "production"
        with open(ct.path("/var/lib/hyperv/.kvp_pool_0"), "rb") as f:
            pool0 = f.read()
        assert b"Environment\0" in pool0 and b"production\0" in pool0
        auto = host.items("auto")
        assert auto["IntegrationServicesVersion"] == "3.1"  # the simulator's, from registration
        assert auto["FullyQualifiedDomainName"].startswith(ct.run(["hostname"]).stdout.strip())
        assert main_pid(ct) == pid
