"""SET_IP_INFO: apply a validated configuration through whatever manages the interface.

A distro's ``hv_set_ifconfig`` wins when installed (spec §6.3 item 6). Otherwise a built-in
backend is chosen from the state that NetworkManager, systemd-networkd or ifupdown leave on disk
(no daemon is contacted to decide). Each backend is a ``Plan``: an ordered list of file writes
and argv commands, so dry-run can log exactly what a real run would do and tests can compare
the commands one by one.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .inject import (
    IpConfig,
    keyfile_uuid,
    render_ifupdown,
    render_keyfile,
    render_networkd,
    write_atomic,
)
from .nics import valid_ifname
from .runner import CommandError, Deadline, run, run_checked

log = logging.getLogger(__name__)

SET_HELPER = "hv_set_ifconfig"
NETWORKD_PRIORITY = "05"  # sorts before the usual 10-netplan-*, 10-cloud-init-*, 50-*


class NoBackend(RuntimeError):
    """Nothing on this system is known to manage the interface."""


@dataclass(frozen=True)
class Write:
    directory: str
    filename: str
    text: str


@dataclass(frozen=True)
class Command:
    argv: Tuple[str, ...]
    must_succeed: bool = True


@dataclass
class Plan:
    """What applying the configuration means on this system, step by step."""

    backend: str
    steps: List[object] = field(default_factory=list)

    def describe(self) -> List[str]:
        out = []
        for step in self.steps:
            if isinstance(step, Write):
                out.append(f"write {os.path.join(step.directory, step.filename)} (mode 0600)")
            elif isinstance(step, Command):
                out.append("run " + " ".join(step.argv))
        return out


@dataclass(frozen=True)
class Target:
    """Everything a backend needs to know about the interface being configured."""

    ifname: str
    ifindex: Optional[int]
    mac: str
    config: IpConfig
    ifcfg_path: str
    keyfile_path: str


# --------------------------------------------------------------------------- detection


def _kv_file(path: str) -> dict:
    values = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle.read(1 << 16).splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    values[key.strip()] = value.strip()
    except OSError:
        pass
    return values


def _nm_manages(target: Target, run_dir: str) -> bool:
    if not os.path.isdir(os.path.join(run_dir, "NetworkManager")) or not shutil.which("nmcli"):
        return False
    if target.ifindex is not None:
        state = _kv_file(os.path.join(run_dir, "NetworkManager", "devices", str(target.ifindex)))
        if state.get("managed") == "false":
            return False
    return True


def _networkd_manages(target: Target, run_dir: str) -> bool:
    if target.ifindex is None or not shutil.which("networkctl"):
        return False
    path = os.path.join(run_dir, "systemd", "netif", "links", str(target.ifindex))
    if not os.path.isfile(path):
        return False
    return _kv_file(path).get("ADMIN_STATE") != "unmanaged"


def _ifupdown_manages(etc_dir: str) -> bool:
    return (os.path.isfile(os.path.join(etc_dir, "network", "interfaces"))
            and bool(shutil.which("ifup")) and bool(shutil.which("ifdown")))


def choose_plan(target: Target, *, scripts_dir: str, etc_dir: str, run_dir: str,
                timeout: float) -> Plan:
    """The plan for this system; raises NoBackend when nothing is known to manage the link."""
    if not valid_ifname(target.ifname):  # callers validate; this guard keeps the module safe
        raise ValueError(f"unsafe interface name {target.ifname!r}")
    script = os.path.join(scripts_dir, SET_HELPER)
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return Plan(SET_HELPER, [Command((script, target.ifcfg_path, target.keyfile_path))])
    if _nm_manages(target, run_dir):
        return networkmanager_plan(target, etc_dir, timeout)
    if _networkd_manages(target, run_dir):
        return networkd_plan(target, etc_dir)
    if _ifupdown_manages(etc_dir):
        return ifupdown_plan(target, etc_dir)
    raise NoBackend(f"no {SET_HELPER} in {scripts_dir} and neither NetworkManager, "
                    f"systemd-networkd nor ifupdown manages {target.ifname}")


# --------------------------------------------------------------------------- plans


def networkmanager_plan(target: Target, etc_dir: str, timeout: float) -> Plan:
    """Install a keyfile profile, load it, activate it (nmcli gives up before we kill it)."""
    directory = os.path.join(etc_dir, "NetworkManager", "system-connections")
    filename = f"hyperv-{target.ifname}.nmconnection"
    text = render_keyfile(target.ifname, target.mac, target.config, installed=True)
    wait = str(max(1, int(timeout) - 1))
    return Plan("NetworkManager", [
        Write(directory, filename, text),
        Command(("nmcli", "connection", "load", os.path.join(directory, filename))),
        Command(("nmcli", "--wait", wait, "connection", "up", "uuid",
                 keyfile_uuid(target.ifname))),
    ])


def networkd_plan(target: Target, etc_dir: str) -> Plan:
    """Write a .network file that sorts first for this link, reload, reconfigure the link."""
    directory = os.path.join(etc_dir, "systemd", "network")
    filename = f"{NETWORKD_PRIORITY}-pykvpd-{target.ifname}.network"
    return Plan("systemd-networkd", [
        Write(directory, filename, render_networkd(target.ifname, target.mac, target.config)),
        Command(("networkctl", "reload")),
        Command(("networkctl", "reconfigure", target.ifname)),
    ])


def ifupdown_plan(target: Target, etc_dir: str) -> Plan:
    """Take the link down with its old configuration, replace the fragment, bring it up.

    ifdown fails harmlessly when the link was not configured by ifupdown, so it may fail.
    """
    directory = os.path.join(etc_dir, "network", "interfaces.d")
    _warn_ifupdown_conflicts(target.ifname, etc_dir)
    return Plan("ifupdown", [
        Command(("ifdown", target.ifname), must_succeed=False),
        Write(directory, target.ifname, render_ifupdown(target.ifname, target.config)),
        Command(("ifup", target.ifname)),
    ])


def _warn_ifupdown_conflicts(ifname: str, etc_dir: str) -> None:
    main = os.path.join(etc_dir, "network", "interfaces")
    try:
        with open(main, encoding="utf-8", errors="replace") as handle:
            text = handle.read(1 << 20)
    except OSError:
        return
    words = [line.split() for line in text.splitlines()]
    if not any(w[:1] in (["source"], ["source-directory"]) and "interfaces.d" in " ".join(w)
               for w in words):
        log.warning("SET_IP_INFO: %s does not include interfaces.d; ifup may not see the "
                    "new configuration", main)
    if any(len(w) >= 2 and w[0] == "iface" and w[1] == ifname for w in words):
        log.warning("SET_IP_INFO: %s also configures %s; ifupdown merges both stanzas",
                    main, ifname)


# --------------------------------------------------------------------------- execution


def execute(plan: Plan, deadline: Deadline, timeout: float) -> None:
    """Carry the plan out in order; raises CommandError on the first failing required step."""
    for step in plan.steps:
        if isinstance(step, Write):
            write_atomic(step.directory, step.filename, step.text)
            continue
        assert isinstance(step, Command)
        if step.must_succeed:
            run_checked(step.argv, deadline.budget(timeout))
            continue
        try:
            result = run(step.argv, deadline.budget(timeout))
        except CommandError as exc:
            log.info("SET_IP_INFO: optional step failed: %s", exc)
            continue
        if result.returncode:
            log.info("SET_IP_INFO: %s exited %d (ignored)", " ".join(step.argv),
                     result.returncode)
