"""kvp-watch@.service: systemd-analyze verify/security, and the docs' patching walkthrough.

The walkthrough runs the unit's own ExecStart= (read from the unit file, %I and
$KVP_WATCH_OPTIONS expanded as systemd does) against our daemon and the simulated host, with the
hook text taken from docs/kvp.md. Three things differ from a guest, and only these: the program
``/usr/bin/kvp`` is a wrapper running this tree's ``kvp`` on the test's pool directory (``--dir``),
the hook directory is a temporary one instead of ``/etc/kvp/hooks``, and ``-v`` is added to the
options so the test knows when the watch is armed (its "watching" line).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest
from test_cli_helpers import ROOT

from pykvpd.simulator.runner import SimulatedGuest

UNIT = os.path.join(ROOT, "systemd", "kvp-watch@.service")
DOC = os.path.join(ROOT, "docs", "kvp.md")
WAIT = 30.0  # upper bound for the hook's answer; never asserted as a duration

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze missing (apt-get install systemd)",
)


def service_entries() -> Dict[str, List[str]]:
    """[Service] key -> values (repeated keys kept)."""
    entries: Dict[str, List[str]] = {}
    section = None
    for line in Path(UNIT).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            entries.setdefault(key, []).append(value)
    return entries


def doc_block(first_line: str) -> str:
    """The fenced block of docs/kvp.md whose first line is ``first_line``."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", Path(DOC).read_text(), re.S):
        if block.startswith(first_line + "\n"):
            return block
    raise AssertionError(f"no block starting with {first_line!r} in docs/kvp.md")


def make_root(tmp_path: Path, dropin: str = "") -> Path:
    root = tmp_path / "root"
    system = root / "lib/systemd/system"
    system.mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    fake = root / "usr/bin/kvp"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    shutil.copy(UNIT, system / "kvp-watch@.service")
    # The targets the default dependencies name, from this machine's systemd.
    for target in ("sysinit.target", "basic.target", "shutdown.target", "multi-user.target"):
        if os.path.exists(f"/lib/systemd/system/{target}"):
            shutil.copy(f"/lib/systemd/system/{target}", system / target)
    if dropin:
        conf = root / "etc/systemd/system/kvp-watch@PatchNow.service.d"
        conf.mkdir(parents=True)
        (conf / "patching.conf").write_text(dropin)
    return root


def analyze(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", *args, f"--root={root}", "kvp-watch@PatchNow.service"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_unit_contract():
    s = service_entries()
    assert s["ExecStart"] == [
        "/usr/bin/kvp --pool external watch $KVP_WATCH_OPTIONS %I --exec /etc/kvp/hooks/%I"
    ]
    assert s["Environment"] == ["KVP_WATCH_OPTIONS=--no-initial"]
    assert s["RestartPreventExitStatus"] == ["2"]  # a missing hook: fail, do not loop
    assert s["KillMode"] == ["control-group"]  # stopping the unit stops a hook's leftovers too
    assert s["CapabilityBoundingSet"] == [""]
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectKernelModules"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert s["ReadWritePaths"] == ["/var/lib/hyperv"]  # a hook may answer with kvp set


@needs_analyze
def test_systemd_analyze_verify_clean(tmp_path):
    result = analyze(make_root(tmp_path), "verify", "--man=no")
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""


@needs_analyze
def test_verify_catches_a_broken_template(tmp_path):
    root = make_root(tmp_path)
    unit = root / "lib/systemd/system/kvp-watch@.service"
    unit.write_text(unit.read_text().replace("KillMode=control-group", "KillMode=contrl-group"))
    result = analyze(root, "verify", "--man=no")
    assert "contrl-group" in result.stderr


@needs_analyze
def test_hardened_and_the_documented_dropin_verifies(tmp_path):
    result = analyze(make_root(tmp_path), "security", "--offline=true")
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert score, result.stdout + result.stderr
    assert float(score.group(1)) < 3.0  # "OK" or better on systemd's 0-10 scale
    dropin = doc_block("[Service]")
    assert "CapabilityBoundingSet=~" in dropin
    relaxed = make_root(tmp_path / "relaxed", dropin)
    verify = analyze(relaxed, "verify", "--man=no")
    assert verify.returncode == 0 and (verify.stdout + verify.stderr).strip() == "", verify.stderr


# --------------------------------------------------------------------------- the walkthrough


def exec_start(kvp: str, hooks: str, instance: str, options: str) -> List[str]:
    """The unit's ExecStart= as systemd runs it for ``instance``, on this test's paths."""
    (line,) = service_entries()["ExecStart"]
    argv = []
    for word in shlex.split(line.replace("%I", instance)):
        if word == "$KVP_WATCH_OPTIONS":
            argv.extend(options.split())  # unquoted $VAR: split on whitespace
        else:
            argv.append(word.replace("/usr/bin/kvp", kvp).replace("/etc/kvp/hooks", hooks))
    return argv


def guest_value(vm: SimulatedGuest, key: str) -> str:
    items = {i.name: i.data for i in vm.host.guest_items()}
    return items.get(key, "")


def wait_for_change(vm: SimulatedGuest, key: str, before: str) -> str:
    """The host's view of guest item ``key`` once it differs from ``before``."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        now = guest_value(vm, key)
        if now != before:
            return now
        time.sleep(0.05)
    raise AssertionError(f"{key} still {before!r} after {WAIT:g} s: the hook did not answer")
