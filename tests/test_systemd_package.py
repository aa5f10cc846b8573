"""The package's life under a real systemd 252 (systemd-nspawn): upgrade while the daemon runs
(the same version again, then a newer one), removal and purge, with hyperv-daemons installed.

One boot carries the whole sequence. Stand-ins (tests/systemd_guest.py): the simulated kernel,
the drop-in clearing ConditionVirtualization=. For the C daemon's unit one more is needed:
its shipped unit binds to the udev device unit of /dev/vmbus/hv_kvp, which never appears
without udev and a real device, so a copy of that unit without the BindsTo= line, and with
the test's LD_PRELOAD redirect (tests/preload/hvkvp_redirect.c) that turns the C daemon's
open() of the device into a connection to the simulator, is placed in /run/systemd/system.
/etc outranks /run, so while pykvpd's alias link exists the name still means pykvpd.
"""

from __future__ import annotations

import os
import threading
from typing import List, Tuple

import nspawn
import pytest
from systemd_guest import ALIASES, DEVICE, UNIT, Guest, wait_for

C_UNIT = "hv-kvp-daemon.service"
PRELOAD = "/usr/local/lib/hvkvp_redirect.so"


@pytest.fixture(scope="module")
def debs() -> Tuple[str, str]:
    nspawn.require()
    try:
        return nspawn.build_deb(), nspawn.build_deb("0.1.1")
    except nspawn.DebBuildUnavailable as exc:
        pytest.fail(f"cannot build the .deb the container tests install: {exc}")


def install_c_unit_stand_in(g: Guest) -> None:
    from cdaemon import preload_library

    with open(preload_library(), "rb") as src, open(g.ct.path(PRELOAD), "wb") as dst:
        dst.write(src.read())
    with open(g.ct.path(f"/lib/systemd/system/{C_UNIT}")) as f:
        shipped = f.read()
    lines = [line for line in shipped.splitlines() if not line.startswith("BindsTo=")]
    assert len(lines) == len(shipped.splitlines()) - 1, shipped
    text = "\n".join(lines).replace(
        "[Service]\n",
        f"[Service]\nEnvironment=LD_PRELOAD={PRELOAD} HVKVP_SOCKET={DEVICE}\n",
    )
    with open(g.ct.path(f"/run/systemd/system/{C_UNIT}"), "w") as f:
        f.write("# test stand-in: the shipped unit without BindsTo= (no udev here)\n" + text)
    g.systemctl("daemon-reload")


class HostWriter:
    """Host AddKvpItems in a loop while the guest changes under it; records every answer."""

    def __init__(self, g: Guest, prefix: str) -> None:
        self.g, self.prefix = g, prefix
        self.acked: List[str] = []
        self.failed: List[Tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            key = f"{self.prefix}{i}"
            reply = self.g.host.command("add", key, f"v{i}")
            if reply.get("ok"):
                self.acked.append(key)
            else:
                self.failed.append((key, reply.get("status", "")))
            i += 1

    def __enter__(self) -> HostWriter:
        self._thread.start()
        wait_for(lambda: len(self.acked) >= 3, "host writes before the change")
        return self

    def __exit__(self, *exc: object) -> None:
        count = len(self.acked)
        wait_for(lambda: len(self.acked) >= count + 3, "host writes after the change", 60)
        self._stop.set()
        self._thread.join(120)

    def check(self) -> None:
        """No acknowledged write lost; the only failure the host saw is HV_E_FAIL, what it gets
        from the C daemon's kernel driver while no daemon is registered."""
        items = self.g.host.items("external")
        lost = [key for key in self.acked if key not in items]
        assert lost == [], (lost, self.failed)
        assert {status for _, status in self.failed} <= {"HV_E_FAIL"}, self.failed


def upgrade(g: Guest, deb: str, prefix: str, version: str) -> None:
    pid = g.main_pid()
    registrations = g.host.registrations()
    with HostWriter(g, prefix) as writer:
        result = g.ct.install_deb(deb)
    assert f"Unpacking pykvpd ({version}) over" in result.stdout, result.stdout
    new = g.wait_active(old_pid=pid)
    assert g.host.registrations() == registrations + 1  # restarted exactly once
    writer.check()
    state = g.show(UNIT, "NRestarts", "Result")
    assert state == {"NRestarts": "0", "Result": "success"}, state
    assert g.ct.run(["dpkg-query", "-W", "-f", "${Version}", "pykvpd"]).stdout == version
    assert new == g.main_pid()


def test_upgrade_while_running_then_remove_and_purge(debs):
    deb, newer = debs
    with nspawn.Container(nspawn.rootfs(include=("hyperv-daemons",))) as ct:
        g = Guest(ct, deb)
        install_c_unit_stand_in(g)
        g.ct.install_deb(deb)
        g.wait_active()
        assert g.show(C_UNIT, "Id")["Id"] == UNIT  # the alias link shadows the /run copy

        upgrade(g, deb, "Same", "0.1.0")
        upgrade(g, newer, "Newer", "0.1.1")
        kept = g.host.items("external")
        pools_before = {n: g.pool_bytes(n) for n in range(5)}

        removed = g.ct.run(["dpkg", "-r", "pykvpd"]).stdout
        assert "Removing pykvpd" in removed
        for alias in ALIASES:
            assert not os.path.lexists(g.ct.path(f"/etc/systemd/system/{alias}")), alias
        assert g.show(UNIT, "LoadState")["LoadState"] == "not-found"
        # The pools stay, byte for byte (apart from what the C daemon writes later).
        assert {n: g.pool_bytes(n) for n in range(5)} == pools_before
        # hyperv-daemons' KVP unit is itself again; postrm started it since the device exists.
        c_state = g.show(C_UNIT, "Id", "ActiveState", "SubState", "ExecMainStatus",
                         "FragmentPath")
        assert c_state["Id"] == C_UNIT and c_state["FragmentPath"].endswith(C_UNIT), c_state
        wait_for(lambda: g.show(C_UNIT, "SubState")["SubState"] == "running", "the C daemon")
        ps = "\n".join(g.ps_ef())
        assert "/usr/sbin/hv_kvp_daemon -n" in ps and "/usr/bin/hv_kvp_daemon" not in ps, ps
        reply = g.host.command("add", "AfterRemoval", "c-daemon")
        assert reply["ok"], reply
        items = g.host.items("external")
        assert items["AfterRemoval"] == "c-daemon"
        assert all(items.get(k) == v for k, v in kept.items())  # written by pykvpd, served by C

        g.ct.run(["dpkg", "-P", "pykvpd"])
        assert not os.path.exists(g.ct.path("/etc/pykvpd.conf"))
        assert os.path.exists(g.ct.path("/var/lib/hyperv/.kvp_pool_0"))
        assert g.show(C_UNIT, "SubState")["SubState"] == "running"
        assert g.host.items("external")["AfterRemoval"] == "c-daemon"
