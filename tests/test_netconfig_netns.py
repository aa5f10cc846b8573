"""Helpers (no tests): run code in a throw-away network + mount namespace (`unshare -n -m`).

The child mounts a fresh sysfs (so /sys/class/net shows the namespace's interfaces), runs the
set-up steps (argv lists, or ``["@write", path, text]``), then runs a snippet of Python that
leaves its answer in ``RESULT``; the answer comes back as JSON. Nothing touches the real
machine's interfaces: the namespace and its veth pairs disappear with the child.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, subprocess, sys
spec = json.loads(sys.argv[1])
sys.path[:0] = [spec["root"], spec["root"] + "/tests"]
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "-t", "sysfs", "sysfs", "/sys"], check=True)
for step in spec["setup"]:
    if step[0] == "@write":
        with open(step[1], "w") as handle:
            handle.write(step[2])
    else:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"set-up step {step} failed: {done.stderr}")
RESULT = None
exec(spec["code"])
print("@@RESULT@@" + json.dumps(RESULT))
"""

_REASON: Optional[str] = "not checked"


def netns_missing() -> Optional[str]:
    """None when ``unshare -n -m`` with a sysfs mount and a veth pair works here, else why not."""
    global _REASON
    if _REASON != "not checked":
        return _REASON
    if os.geteuid() != 0:
        _REASON = "needs root for network namespaces"
    elif not shutil.which("unshare") or not shutil.which("ip"):
        _REASON = "needs unshare (util-linux) and ip (iproute2)"
    else:
        probe = subprocess.run(
            ["unshare", "-n", "-m", "sh", "-c",
             "mount -t sysfs sysfs /sys && ip link add t0 type veth peer name t1"],
            capture_output=True, text=True, timeout=30)
        _REASON = None if probe.returncode == 0 else f"netns unusable: {probe.stderr.strip()}"
    return _REASON


def run_in_netns(setup: Sequence[Sequence[str]], code: str, timeout: float = 60) -> Any:
    """Run set-up steps then code in a new namespace; return the code's RESULT."""
    spec = {"root": ROOT, "setup": [list(s) for s in setup], "code": code}
    done = subprocess.run(["unshare", "-n", "-m", sys.executable, "-c", _CHILD, json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout)
    marker = [line for line in done.stdout.splitlines() if line.startswith("@@RESULT@@")]
    if done.returncode or not marker:
        raise AssertionError(f"namespace child failed ({done.returncode}):\n{done.stdout}\n"
                             f"{done.stderr}")
    return json.loads(marker[-1][len("@@RESULT@@"):])


def veth(name: str, peer: str, mac: Optional[str] = None, up: bool = True) -> List[List[str]]:
    """Create a veth pair without automatic IPv6 link-local addresses (deterministic tests)."""
    add = ["ip", "link", "add", name]
    if mac:
        add += ["address", mac]
    steps: List[List[str]] = [add + ["type", "veth", "peer", "name", peer]]
    for dev in (name, peer):
        steps.append(["@write", f"/proc/sys/net/ipv6/conf/{dev}/addr_gen_mode", "1"])
    if up:
        steps += [["ip", "link", "set", name, "up"], ["ip", "link", "set", peer, "up"]]
    return steps


def addr(dev: str, cidr: str, *extra: str) -> List[List[str]]:
    if ":" in cidr:
        return [["ip", "-6", "addr", "add", cidr, "dev", dev, "nodad", *extra]]
    return [["ip", "addr", "add", cidr, "dev", dev, *extra]]


def route(*args: str) -> List[List[str]]:
    family = ["-6"] if any(":" in a for a in args) else []
    return [["ip", *family, "route", "add", *args]]


def get_ip_info_code(macs: Sequence[str], config: Dict[str, Any]) -> str:
    """Snippet: NetConfig(**config).get_ip_info for each MAC -> [[status, fields or None], ...]."""
    return (
        "from pykvpd.netconfig import NetConfig\n"
        "from pykvpd.protocol import IpInfo\n"
        f"nc = NetConfig(**{config!r})\n"
        "RESULT = []\n"
        f"for mac in {list(macs)!r}:\n"
        "    status, info = nc.get_ip_info(IpInfo(mac))\n"
        "    RESULT.append([status, None if info is None else info._asdict()])\n"
    )
