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

from .dhcpstate import networkd_running, nm_running
from .ifupdown import ifupdown_plan
from .inject import keyfile_uuid, render_keyfile, render_networkd
from .nics import valid_ifname
from .plan import Command, NoBackend, Plan, Target, Write

log = logging.getLogger(__name__)

SET_HELPER = "hv_set_ifconfig"
NETWORKD_PRIORITY = "05"  # sorts before the usual 10-netplan-*, 10-cloud-init-*, 50-*


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
    if not shutil.which("nmcli") or not nm_running(run_dir):
        return False
    if target.ifindex is not None:
        state = _kv_file(os.path.join(run_dir, "NetworkManager", "devices", str(target.ifindex)))
        if state.get("managed") == "false":
            return False
    return True


def _networkd_manages(target: Target, run_dir: str) -> bool:
    if target.ifindex is None or not shutil.which("networkctl") or not networkd_running(run_dir):
        return False  # a dead networkd's link files stay; networkctl would D-Bus-activate it
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
        return ifupdown_plan(target, etc_dir, timeout)
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
        # systemd-networkd reads it as user systemd-network: 0600 would be "Permission denied".
        Write(directory, filename, render_networkd(target.ifname, target.mac, target.config),
              0o644),
        Command(("networkctl", "reload")),
        Command(("networkctl", "reconfigure", target.ifname)),
    ])
