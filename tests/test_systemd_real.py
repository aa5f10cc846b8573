"""The package as users get it, under a real systemd 252 as PID 1 (systemd-nspawn): readiness,
host operations, journal, ps -ef name, hardening, aliases, reload, enable/disable while
running, watchdog, kill -9, and a device node that appears during --wait-device.

The .deb built from debian/ is installed with dpkg into a booted Debian 12 container; see
tests/systemd_guest.py for the stand-ins (simulated kernel, one drop-in). One boot carries all
of these checks, in order, to keep the run short; the package life (upgrade, removal, purge)
is in test_systemd_package.py. Outside CI the tests skip when nspawn cannot run here; under
CI=true they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import threading

import nspawn
import pytest
from systemd_guest import ALIASES, DEVICE, UNIT, Guest, waagent_sees_kvp_daemon, wait_for


@pytest.fixture(scope="module")
def guest(deb):
    """One booted container with the package installed (started by its postinst)."""
    with nspawn.Container(nspawn.rootfs(include=("hyperv-daemons",))) as ct:
        g = Guest(ct, deb)
        installed = ct.install_deb(deb)
        assert "Setting up pykvpd" in installed.stdout, installed.stdout
        g.wait_active()
        yield g


def proc_status(g: Guest, pid: int) -> dict:
    with open(g.ct.path(f"/proc/{pid}/status")) as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)


def in_daemon_mounts(g: Guest, pid: int, script: str) -> str:
    """Run SCRIPT in the daemon's own mount namespace: the file system as the daemon sees it."""
    return g.ct.run(["nsenter", f"--target={pid}", "--mount", "sh", "-c", script]).stdout


# --------------------------------------------------------------------------- checks, in order


def test_ready_after_registration_and_host_operations(guest):
    g = guest
    state = g.show(UNIT, "Type", "ActiveState", "SubState", "StatusText", "NRestarts", "Result")
    assert (state["Type"], state["ActiveState"], state["SubState"]) == (
        "notify", "active", "running")
    assert state["StatusText"].startswith("registered; pools in /var/lib/hyperv"), state
    assert state["NRestarts"] == "0"
    assert g.host.registrations() == 1

    g.host.ok("add", "Environment", "production")
    assert g.host.items("external")["Environment"] == "production"
    pool0 = g.pool_bytes(0)
    assert b"Environment\0" in pool0 and b"production\0" in pool0
    g.ct.run(["kvp", "set", "DeploymentState", "ready"])  # a guest script
    assert g.host.items("guest")["DeploymentState"] == "ready"
    auto = g.host.items("auto")
    assert auto["IntegrationServicesVersion"] == "3.1"  # the simulator's, from registration
    assert auto["FullyQualifiedDomainName"].startswith(g.ct.run(["hostname"]).stdout.strip())
    reply = g.host.command("get", "external", "Environment")
    assert reply["ok"] and reply["result"]["Data"] == "production", reply


def test_ps_ef_shows_hv_kvp_daemon_and_waagent_finds_it(guest):
    pid = guest.main_pid()
    lines = guest.ps_ef()
    ours = [line for line in lines if line.split()[1] == str(pid)]
    assert len(ours) == 1, lines
    assert "/usr/bin/python3 /usr/bin/hv_kvp_daemon -n --wait-device 10" in ours[0]
    assert waagent_sees_kvp_daemon("\n".join(lines))
    assert not waagent_sees_kvp_daemon("\n".join(line for line in lines if line not in ours))
    with open(guest.ct.path(f"/proc/{pid}/comm")) as f:
        assert f.read().strip() == "hv_kvp_daemon"


WAAGENT_CHECK = (
    "import sys; sys.path.insert(0, '/opt/waagent/usr/lib/python3/dist-packages'); "
    "from azurelinuxagent.common.rdma import RDMAHandler; "
    "print(RDMAHandler.is_kvp_daemon_running())"
)


def test_waagent_2_7_3_own_check_finds_the_daemon(guest):
    """WALinuxAgent's own RDMAHandler.is_kvp_daemon_running() (Debian's waagent 2.7.3 package,
    unpacked, not installed), run inside the container: True with the unit running, False
    once it is stopped (so the check can fail)."""
    from test_real_clients import _download

    cache = _download(os.environ.get("PYKVPD_DEB_CACHE", "/tmp/pykvpd-debs"))
    debs = sorted(n for n in os.listdir(cache) if n.startswith("waagent_2.7.3"))
    assert debs, f"no waagent 2.7.3 package in {cache}: {os.listdir(cache)}"
    shutil.copyfile(os.path.join(cache, debs[-1]), guest.ct.path("/var/tmp/waagent.deb"))
    guest.ct.run(["dpkg-deb", "-x", "/var/tmp/waagent.deb", "/opt/waagent"])
    assert guest.ct.run(["python3", "-I", "-c", WAAGENT_CHECK]).stdout.strip() == "True"
    pid = guest.main_pid()
    guest.systemctl("stop", UNIT)
    try:
        assert guest.ct.run(["python3", "-I", "-c", WAAGENT_CHECK]).stdout.strip() == "False"
    finally:
        guest.systemctl("start", UNIT)
        guest.wait_active(old_pid=pid)


def test_ps_ef_name_also_when_started_as_pykvpd(guest):
    """An admin's drop-in starting /usr/bin/pykvpd: one exec in place, same name in ps -ef."""
    g = guest
    dropin = g.runtime_dropin(
        "exec.conf", "[Service]\nExecStart=\nExecStart=/usr/bin/pykvpd -n --wait-device 10\n"
    )
    old = g.main_pid()
    g.systemctl("restart", UNIT)
    pid = g.wait_active(old_pid=old)
    assert "/usr/bin/pykvpd -n" in g.show(UNIT, "ExecStart")["ExecStart"]
    wait_for(lambda: any(line.split()[1] == str(pid) and "/usr/bin/hv_kvp_daemon -n" in line
                         for line in g.ps_ef()), "the re-exec under the C daemon's name")
    assert g.show(UNIT, "ExecMainPID")["ExecMainPID"] == str(pid) == str(g.main_pid())
    assert waagent_sees_kvp_daemon("\n".join(g.ps_ef()))
    os.remove(g.ct.path(dropin))
    g.systemctl("daemon-reload")
    g.systemctl("restart", UNIT)
    g.wait_active(old_pid=pid)


def test_hardening_as_the_daemon_sees_it(guest):
    pid = guest.main_pid()
    status = proc_status(guest, pid)
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    assert int(status["CapPrm"], 16) == 0 and int(status["CapAmb"], 16) == 0
    assert status["Seccomp"].strip() == "2"  # filter mode: SystemCallFilter= is on
    assert status["NoNewPrivs"].strip() == "1"
    out = in_daemon_mounts(guest, pid, """
        for p in /etc/pykvpd-probe /run/pykvpd-probe /usr/pykvpd-probe \
                 /run/pykvpd/probe /var/lib/hyperv/probe; do
            if ( : > "$p" ) 2>/dev/null; then echo "$p writable"; rm -f "$p";
            else echo "$p read-only"; fi
        done""")
    assert out.split("\n")[:5] == [
        "/etc/pykvpd-probe read-only",
        "/run/pykvpd-probe read-only",
        "/usr/pykvpd-probe read-only",
        "/run/pykvpd/probe writable",
        "/var/lib/hyperv/probe writable",
    ], out
    with open(guest.ct.path("/run/pykvpd/status.json")) as f:
        assert json.load(f)["pid"] == pid  # the runtime directory is really written
    journal = guest.daemon_journal()
    assert "Operation not permitted" not in journal and "EPERM" not in journal, journal


def test_aliases_and_reload_without_conflicts_noise(guest):
    g = guest
    names = g.show(UNIT, "Names")["Names"].split()
    assert set(names) == {UNIT, *ALIASES}
    for alias in ALIASES:
        assert g.show(alias, "Id", "MainPID") == g.show(UNIT, "Id", "MainPID")
        target = os.readlink(g.ct.path(f"/etc/systemd/system/{alias}"))
        assert target == "/lib/systemd/system/pykvpd.service"
    assert "pykvpd.service" in g.ct.run(["systemctl", "status", "hv-kvp-daemon"],
                                        check=False).stdout
    cursor = g.ct.run(["journalctl", "-n0", "--show-cursor", "-q"]).stdout.split("cursor: ")[-1]
    g.systemctl("daemon-reload")
    after = g.ct.run(["journalctl", "--no-pager", "-o", "cat", f"--after-cursor={cursor.strip()}"],
                     check=False).stdout
    assert "dropped" not in after and "Conflicts" not in after, after


def daemon_status(g: Guest) -> dict:
    with open(g.ct.path("/run/pykvpd/status.json")) as f:
        return json.load(f)


def reload_count(g: Guest) -> int:
    return daemon_status(g)["reloads"]


def synced_journal(g: Guest, *args: str) -> str:
    """The unit's journal once journald has taken in every message already sent to it."""
    g.ct.run(["journalctl", "--sync"])
    return g.daemon_journal(*args)


def test_reload_rereads_the_config_and_journal_fields(guest):
    """systemctl reload (pykvpd reload: SIGHUP, then waiting for the daemon's answer) turns on
    debug from /etc/pykvpd.conf: one journal entry per host operation with KVP_* fields, the
    value not logged, the daemon not restarted. Done when systemctl returns: no waiting."""
    g = guest
    pid = g.main_pid()
    before = reload_count(g)
    with open(g.ct.path("/etc/pykvpd.conf"), "a") as f:
        f.write("debug = yes\n")
    # The daemon is stopped while systemctl reload starts: a reload command that does not wait
    # for the daemon (kill -HUP) returns meanwhile, before anything was re-read.
    seen: dict = {}

    def reload() -> None:
        seen["reload"] = g.ct.run(["systemctl", "reload", UNIT], check=False)
        seen["status"] = daemon_status(g)  # the moment systemctl returned

    g.ct.run(["kill", "-STOP", str(pid)])
    thread = threading.Thread(target=reload)
    try:
        thread.start()
        thread.join(1.0)
    finally:
        g.ct.run(["kill", "-CONT", str(pid)])
    thread.join(60)
    assert seen["reload"].returncode == 0, (seen["reload"].stdout, seen["reload"].stderr)
    assert seen["status"]["reloads"] == before + 1 and seen["status"]["last_reload"]["ok"] is True
    assert "configuration reloaded" in synced_journal(g)
    assert g.main_pid() == pid
    g.host.ok("add", "Secret", "hunter2")
    entries = []

    def logged() -> bool:
        out = g.daemon_journal("-o", "json", "KVP_KEY=Secret")
        entries[:] = [json.loads(line) for line in out.splitlines() if line.strip()]
        return bool(entries)

    wait_for(logged, "a journal entry with KVP_KEY=Secret")
    entry = entries[-1]
    assert (entry["KVP_OP"], entry["KVP_POOL"], entry["KVP_STATUS"]) == ("SET", "0", "0x00000000")
    assert entry["SYSLOG_IDENTIFIER"] == "pykvpd" and entry["_SYSTEMD_UNIT"] == UNIT
    assert entry["PRIORITY"] == "7"
    assert "KVP_VALUE" not in entry and "hunter2" not in json.dumps(entries)
    registered = g.daemon_journal("-o", "json", "-p", "info")
    assert any("registered with the kernel" in json.loads(line).get("MESSAGE", "")
               for line in registered.splitlines() if line.strip())


def test_a_refused_config_fails_systemctl_reload_and_the_daemon_keeps_serving(guest):
    g = guest
    pid = g.main_pid()
    before = reload_count(g)
    path = g.ct.path("/etc/pykvpd.conf")
    with open(path) as f:
        good = f.read()
    with open(path, "a") as f:
        f.write("no_such_key = 1\n")
    try:
        cursor = g.ct.run(["journalctl", "-n0", "--show-cursor", "-q"]).stdout
        cursor = cursor.split("cursor: ")[-1].strip()
        refused = g.ct.run(["systemctl", "reload", UNIT], check=False)
        assert refused.returncode != 0, (refused.stdout, refused.stderr)
        assert reload_count(g) == before + 1
        state = g.show(UNIT, "ActiveState", "SubState", "MainPID")
        assert state == {"ActiveState": "active", "SubState": "running", "MainPID": str(pid)}
        journal = synced_journal(g, f"--after-cursor={cursor}")
        assert "SIGHUP: keeping the old configuration: /etc/pykvpd.conf" in journal, journal
        assert ("pykvpd: reload failed, the old configuration stays: /etc/pykvpd.conf: "
                "invalid value '1' for no_such_key: unknown key") in journal, journal
        g.host.ok("add", "AfterRefusedReload", "yes")  # still serving, same process
        assert g.host.items("external")["AfterRefusedReload"] == "yes"
        assert g.main_pid() == pid
    finally:
        with open(path, "w") as f:
            f.write(good)
    g.systemctl("reload", UNIT)  # the good file again: a reload succeeds
    assert reload_count(g) == before + 2


@pytest.mark.parametrize("rounds", [3])
def test_enable_disable_reenable_preset_while_running(guest, rounds):
    """The unit stays tracked through every (re)enabling while its daemon runs, including
    started while disabled (what udev does after a disable) and then enabled; stop then
    really stops it and a start works (the device was not left held by an orphan)."""
    g = guest
    for _ in range(rounds):
        g.systemctl("disable", UNIT)
        g.systemctl("restart", UNIT)  # started while disabled
        pid = g.wait_active()
        for verb in ("enable", "reenable", "preset", "disable", "enable"):
            g.systemctl(verb, UNIT)
            state = g.show(UNIT, "ActiveState", "SubState", "MainPID")
            assert state == {"ActiveState": "active", "SubState": "running",
                             "MainPID": str(pid)}, (verb, state)
        g.systemctl("stop", UNIT)
        assert g.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
        assert not os.path.exists(g.ct.path(f"/proc/{pid}")), "stop left the daemon running"
        g.systemctl("start", UNIT)
        g.wait_active(old_pid=pid)
    assert g.systemctl("is-enabled", UNIT).strip() == "enabled"
    g.host.ok("add", "AfterEnable", "yes")  # the device is served, not held by an orphan
    pid1 = g.ct.run(["journalctl", "_PID=1", "-o", "cat", "--no-pager"]).stdout
    assert "Code should not be reached" not in pid1 and "Aborting" not in pid1


def test_kill_9_restarts_and_no_acknowledged_record_is_lost(guest):
    g = guest
    pid = g.main_pid()
    before = int(g.show(UNIT, "NRestarts")["NRestarts"])
    acked, failed = [], []

    def writer() -> None:
        for i in range(60):
            reply = g.host.command("add", f"Crash{i}", f"value-{i}")
            (acked if reply.get("ok") else failed).append((i, reply.get("status")))

    thread = threading.Thread(target=writer)
    thread.start()
    wait_for(lambda: len(acked) >= 10, "ten acknowledged host writes")
    g.ct.run(["kill", "-KILL", str(pid)])  # as root at the console (PIDs are the container's)
    thread.join(120)
    new = g.wait_active(old_pid=pid)
    assert int(g.show(UNIT, "NRestarts")["NRestarts"]) == before + 1
    items = g.host.items("external")
    missing = [i for i, _ in acked if items.get(f"Crash{i}") != f"value-{i}"]
    assert missing == [], (missing, failed)
    # What the C daemon's host would see too: HV_E_FAIL while no daemon is there, nothing else.
    assert {status for _, status in failed} <= {"HV_E_FAIL"}, failed
    assert new != pid


def test_watchdog_kills_a_stopped_daemon_and_systemd_restarts_it(guest):
    """SIGSTOP: no keep-alive; systemd's watchdog fires, kills and restarts. WatchdogSec is cut
    to 3 s by a runtime drop-in for this check only (30 s shipped: the same mechanism)."""
    g = guest
    dropin = g.runtime_dropin("watchdog.conf", "[Service]\nWatchdogSec=3\n")
    g.systemctl("restart", UNIT)
    pid = g.wait_active()
    before = int(g.show(UNIT, "NRestarts")["NRestarts"])
    g.ct.run(["kill", "-STOP", str(pid)])
    new = g.wait_active(old_pid=pid, timeout=60)
    journal = g.daemon_journal()
    assert "Watchdog timeout" in journal, journal[-3000:]
    assert int(g.show(UNIT, "NRestarts")["NRestarts"]) == before + 1
    os.remove(g.ct.path(dropin))
    g.systemctl("daemon-reload")
    g.systemctl("restart", UNIT)
    g.wait_active(old_pid=new)
    assert g.show(UNIT, "WatchdogUSec")["WatchdogUSec"] == "30s"


def test_device_node_created_during_wait_device_is_opened(guest, deb):
    """With no node at start, the daemon waits (--wait-device 10); a char node of the misc class
    that appears meanwhile is opened (no EPERM from the device policy). There is no hv_kvp driver
    here: the node is the misc device 10:200 (tun), so its handshake fails and the daemon keeps
    reopening, until the simulator's socket replaces the node and the daemon registers."""
    g = guest
    g.systemctl("stop", UNIT)
    g.host.stop()
    g.ct.run(["rm", "-f", DEVICE])
    cursor = g.ct.run(["journalctl", "-n0", "--show-cursor", "-q"]).stdout.split("cursor: ")[-1]
    g.systemctl("start", "--no-block", UNIT)
    wait_for(lambda: "waiting up to 10 s for /dev/vmbus/hv_kvp" in g.daemon_journal(
        f"--after-cursor={cursor.strip()}"), "the daemon waiting for the device")
    g.ct.run(["mknod", DEVICE, "c", "10", "200"])
    wait_for(lambda: "registration on /dev/vmbus/hv_kvp failed" in g.daemon_journal(
        f"--after-cursor={cursor.strip()}"), "the open of the new node")
    journal = g.daemon_journal(f"--after-cursor={cursor.strip()}")
    assert "Operation not permitted" not in journal, journal
    g.ct.run(["rm", "-f", DEVICE])
    g.host.start(deb)
    g.wait_active()
    g.host.ok("add", "AfterWait", "yes")
    journal = g.daemon_journal(f"--after-cursor={cursor.strip()}")
    assert "Main process exited" not in journal and "Scheduled restart" not in journal, journal
