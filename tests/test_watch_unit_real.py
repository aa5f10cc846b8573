"""kvp-watch@.service under a real systemd 252 (systemd-nspawn), as the package installs it.

One container: the package installed with dpkg, the simulated host serving /dev/vmbus/hv_kvp
(tests/systemd_guest.py, as test_systemd_real.py uses it), the hook of docs/kvp.md's patching
walkthrough in /etc/kvp/hooks/PatchNow, then ``systemctl enable --now
kvp-watch@PatchNow.service``, the unit unchanged. Checked as a person at the console would: the
host's view of the guest items, ``systemctl show``, ``journalctl``, ``ps``. Outside CI the test
skips when nspawn cannot run here.
"""

from __future__ import annotations

import re

import nspawn
from systemd_guest import Guest, wait_for
from test_watch_unit import doc_block


def install_hook(ct: nspawn.Container, key: str, text: str) -> None:
    with open(ct.path(f"/etc/kvp/hooks/{key}"), "w") as f:
        f.write(text)
    ct.run(["chmod", "0755", f"/etc/kvp/hooks/{key}"])


def test_template_unit_runs_the_hook_per_host_write_and_stops_it(deb):
    with nspawn.Container(nspawn.rootfs(include=("hyperv-daemons",))) as ct:
        guest = Guest(ct, deb)
        host, show = guest.host, guest.show
        ct.install_deb(deb)
        guest.wait_active()
        install_hook(ct, "PatchNow", doc_block("#!/bin/sh"))
        ct.run(["systemctl", "enable", "--now", "kvp-watch@PatchNow.service"])
        unit = "kvp-watch@PatchNow.service"
        wait_for(
            lambda: show(unit, "ActiveState")["ActiveState"] == "active", what=f"{unit} active"
        )

        def status() -> str:
            return host.items("guest").get("PatchStatus", "")

        def changed_from(before: str) -> str:
            try:
                wait_for(lambda: status() != before, what="the hook's PatchStatus")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the unit's journal:\n{ct.journal(unit)}") from None
            return status()

        host.ok("add", "PatchNow", "1")
        first = changed_from("")
        assert first.startswith("done: PatchNow=1 at ")
        host.ok("modify", "PatchNow", "1")  # the same value again runs the hook again
        second = changed_from(first)
        assert second.startswith("done: PatchNow=1 at ")
        journal = ct.journal(unit)
        assert "patch requested: PatchNow=1 (before: unset)" in journal
        assert "patch requested: PatchNow=1 (before: 1)" in journal

        # Stopping the unit stops a running hook and what it started.
        install_hook(ct, "Slow", "#!/bin/sh\nsleep 101 & sleep 102\n")
        ct.run(["systemctl", "start", "kvp-watch@Slow.service"])
        host.ok("add", "Slow", "go")

        def sleeps() -> list:
            out = ct.run(["ps", "-eo", "args"]).stdout
            return [line for line in out.splitlines() if re.fullmatch(r"sleep 10[12]", line)]

        wait_for(lambda: len(sleeps()) == 2, what="the Slow hook's two sleeps")
        ct.run(["systemctl", "stop", "kvp-watch@Slow.service"])
        assert sleeps() == []

        # A missing hook fails the unit at once and it is not restarted.
        ct.run(["systemctl", "start", "kvp-watch@Missing.service"], check=False)
        wait_for(
            lambda: show("kvp-watch@Missing.service", "ActiveState")["ActiveState"]
            == "failed",
            what="kvp-watch@Missing.service failed",
        )
        # "failed", not "activating (auto-restart)": no restart is scheduled, none happened.
        state = show("kvp-watch@Missing.service", "NRestarts", "ExecMainStatus")
        assert state == {"NRestarts": "0", "ExecMainStatus": "2"}
        wait_for(  # journald may store the line a moment after the unit failed
            lambda: "/etc/kvp/hooks/Missing: no such file"
            in ct.journal("kvp-watch@Missing.service"),
            what="the missing hook named in the journal",
        )
