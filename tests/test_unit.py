"""The systemd unit and the udev rule: systemd-analyze verify, udevadm test, and the contract."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "systemd", "pykvpd.service")
RULE = os.path.join(ROOT, "systemd", "60-pykvpd.rules")
ALIASES = ("hv-kvp-daemon.service", "hypervkvpd.service", "hv_kvp_daemon.service")

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze missing (apt-get install systemd)",
)
# Debian 11's systemd 247 refuses `systemd-analyze verify --root`; what is checked is the unit
# file, not Python, so the 3.9 run (a Debian 11 chroot) leaves these to the main run.
verify_root_needs_bookworm = pytest.mark.main_run_only(
    reason="systemd-analyze verify --root needs systemd > 247 (Debian 11 has 247)"
)


def unit_entries() -> dict:
    """{(section, key): [values...]} - systemd allows repeated keys, configparser does not."""
    entries: dict = {}
    section = None
    with open(UNIT) as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            entries.setdefault((section, key), []).append(value)
    return entries


def words(entries: dict, section: str, key: str) -> list:
    return " ".join(entries.get((section, key), [])).split()


def test_unit_contract():
    e = unit_entries()
    assert e[("Service", "Type")] == ["notify"]
    assert e[("Service", "NotifyAccess")] == ["main"]
    assert e[("Service", "WatchdogSec")] == ["30"]
    assert e[("Service", "Restart")] == ["on-failure"]
    # The C daemon's name, so ps -ef shows it without a re-exec (pykvpd/hv_kvp_daemon.py)
    assert e[("Service", "ExecStart")] == ["/usr/bin/hv_kvp_daemon -n --wait-device 10"]
    # waits for the daemon's answer and fails on a refused config (pykvpd/reload.py)
    assert e[("Service", "ExecReload")] == ["/usr/bin/pykvpd reload --pid $MAINPID --timeout 25"]
    # systemd kills a reload after TimeoutStartSec=: the command must give up (and say why) first
    assert int(e[("Service", "TimeoutStartSec")][0]) > 25
    assert e[("Unit", "ConditionVirtualization")] == ["microsoft"]
    assert e[("Unit", "DefaultDependencies")] == ["no"]
    assert {"sysinit.target", "cloud-init-local.service", "shutdown.target"} <= set(
        words(e, "Unit", "Before")
    )
    # No Conflicts= on the C unit names: once enabled they are this unit's own aliases, and
    # such a line broke "systemctl enable" of the running unit (tests/test_systemd_real.py).
    assert words(e, "Unit", "Conflicts") == ["shutdown.target"]
    assert e[("Service", "RestartPreventExitStatus")] == ["69"]  # device busy: another daemon
    assert set(words(e, "Install", "Alias")) == set(ALIASES)
    # Started by udev only: no .wants link, so a misdetected guest never waits for the device.
    assert ("Install", "WantedBy") not in e
    assert not any(key == "BindsTo" for _, key in e)


def test_unit_hardening_at_least_debian():
    e = unit_entries()
    s = {key: values[-1] for (section, key), values in e.items() if section == "Service"}
    assert s["CapabilityBoundingSet"] == ""  # root without any capability, as Debian
    # The misc class: a node created during --wait-device is allowed too (issue 9, item 3).
    assert e[("Service", "DeviceAllow")] == ["char-misc rw"]
    assert s["DevicePolicy"] == "closed"
    for key in (
        "NoNewPrivileges",
        "ProtectControlGroups",
        "ProtectHome",
        "ProtectKernelModules",
        "ProtectKernelTunables",
        "PrivateTmp",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "LockPersonality",
        "ProtectClock",
        "ProtectKernelLogs",
    ):
        assert s[key] == "yes", key
    assert s["ProtectSystem"] == "strict"  # Debian: full
    writable = [w for v in e[("Service", "ReadWritePaths")] for w in v.split()]
    # The pools, plus exactly what IP injection needs on NetworkManager / networkd guests.
    assert writable == [
        "/var/lib/hyperv",
        "/run/pykvpd",
        "-/etc/NetworkManager/system-connections",
        "-/etc/systemd/network",
    ]
    assert e[("Service", "ReadOnlyPaths")] == ["/run"]  # MountAPIVFS= made it writable
    assert s["StateDirectory"] == "hyperv"
    assert s["RuntimeDirectory"] == "pykvpd"
    assert s["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"]
    assert s["SystemCallArchitectures"] == "native"
    # Options that would break the daemon must stay off (they are explained in comments).
    for key in ("PrivateDevices", "PrivateNetwork", "ProtectHostname", "PrivateUsers"):
        assert key not in s


def make_root(tmp_path, aliases: bool, c_unit: bool):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "lib/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in ("pykvpd", "hv_kvp_daemon"):  # the package's two entry scripts
        fake = root / "usr/bin" / name
        fake.write_text("#!/bin/sh\n")
        fake.chmod(0o755)
    shutil.copy("/bin/kill", root / "bin/kill")
    shutil.copy(UNIT, root / "lib/systemd/system/pykvpd.service")
    if c_unit:
        (root / "lib/systemd/system/hv-kvp-daemon.service").write_text(
            "[Unit]\nDescription=C daemon\n[Service]\nExecStart=/usr/bin/pykvpd\n"
        )
    if aliases:
        for name in ALIASES:
            os.symlink("/lib/systemd/system/pykvpd.service", root / "etc/systemd/system" / name)
    return root


def verify(root, unit: str = "pykvpd.service") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", unit],
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_analyze
@verify_root_needs_bookworm
@pytest.mark.parametrize("aliases, c_unit", [(False, False), (True, False), (True, True)])
def test_systemd_analyze_verify_clean(tmp_path, aliases, c_unit):
    root = make_root(tmp_path, aliases, c_unit)
    result = verify(root)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0, result.stderr
    assert problems == []


@needs_analyze
@verify_root_needs_bookworm
@pytest.mark.parametrize("aliases", [False, True])
def test_aliases_shadow_the_c_unit(tmp_path, aliases):
    """With the alias links in /etc, the C daemon's name loads our unit, not the C file in /lib.

    The stand-in C unit carries a deliberate error, so loading it shows in the output; without
    the aliases it does (which proves the check can fail), with them it does not.
    """
    root = make_root(tmp_path, aliases=aliases, c_unit=True)
    c_unit = root / "lib/systemd/system/hv-kvp-daemon.service"
    c_unit.write_text(c_unit.read_text().replace("ExecStart=/usr/bin/pykvpd", "ExecStart=relative"))
    result = verify(root, "hv-kvp-daemon.service")
    loaded_c_unit = "relative" in result.stdout + result.stderr
    assert loaded_c_unit is not aliases, result.stderr
    if aliases:  # and verify really ran and found our unit clean (not refused for another reason)
        assert result.returncode == 0, result.stderr


@needs_analyze
@verify_root_needs_bookworm
def test_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a typo in a directive is reported."""
    root = make_root(tmp_path, aliases=False, c_unit=False)
    unit = root / "lib/systemd/system/pykvpd.service"
    unit.write_text(unit.read_text().replace("NotifyAccess=main", "NotifyAccess=mian"))
    result = verify(root)
    assert "pykvpd.service:" in result.stderr and "mian" in result.stderr


def parse_rule_line(line: str) -> list:
    """(key, attr, op, value) tuples of one udev rule line."""
    pattern = re.compile(r'\s*([A-Z_]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(,|$)')
    pos, out = 0, []
    while pos < len(line):
        m = pattern.match(line, pos)
        assert m, f"unparsable rule text at {line[pos:]!r}"
        out.append(m.groups()[:4])
        pos = m.end()
    return out


def test_udev_rule_contents():
    with open(RULE) as fh:
        rules = [line.strip() for line in fh if line.strip() and not line.startswith("#")]
    assert len(rules) == 1
    parsed = parse_rule_line(rules[0])
    assert ("SUBSYSTEM", None, "==", "misc") in parsed
    assert ("KERNEL", None, "==", "vmbus/hv_kvp") in parsed
    assert ("TAG", None, "+=", "systemd") in parsed
    assert ("ENV", "SYSTEMD_WANTS", "+=", "pykvpd.service") in parsed


def _udevadm_test(tmp_path, rule_text: str) -> str:
    """Run `udevadm test` on the fuse misc device with only our rule, in a mount namespace."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "60-pykvpd.rules").write_text(rule_text)
    script = (
        f"mount --bind {rules} /etc/udev/rules.d && mount -t tmpfs none /lib/udev/rules.d && "
        "mount -t tmpfs none /run && mount -t tmpfs none /dev && "
        "exec udevadm test --action=add /sys/class/misc/fuse"
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60
    )
    return result.stdout + result.stderr


def _udevadm_usable() -> bool:
    if not (shutil.which("udevadm") and shutil.which("unshare")):
        return False
    if not os.path.exists("/sys/class/misc/fuse") or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


needs_udevadm = pytest.mark.skipif(
    not _udevadm_usable(),
    reason="needs root, unshare, udevadm (apt-get install udev) and /sys/class/misc/fuse",
)


@needs_udevadm
def test_udevadm_test_applies_the_rule(tmp_path):
    # The real device only exists on Hyper-V: the same rule on another misc device.
    with open(RULE) as fh:
        text = fh.read().replace('KERNEL=="vmbus/hv_kvp"', 'KERNEL=="fuse"')
    output = _udevadm_test(tmp_path, text)
    assert not re.search(r"60-pykvpd\.rules:\d+", output), output  # no parse complaints
    assert "SYSTEMD_WANTS=pykvpd.service" in output
    assert re.search(r"^TAGS=.*:systemd:", output, re.M)


@needs_udevadm
def test_udevadm_test_reports_a_broken_rule(tmp_path):
    output = _udevadm_test(tmp_path, 'KERNEL="fuse", FOO=="bar"\n')
    assert re.search(r"60-pykvpd\.rules:1", output)


def test_unit_parses_as_ini():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(UNIT)
    assert parser.sections() == ["Unit", "Service", "Install"]
