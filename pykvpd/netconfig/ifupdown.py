"""SET_IP_INFO through ifupdown, with ifup and ifdown run by systemd outside pykvpd.service.

ifup starts a DHCP client, and it and its hooks (dhclient-script, if-up.d) write /etc/resolv.conf
and state under /run and /var/lib/dhcp. Run from the daemon they would live in pykvpd.service's
cgroup, so the DHCP client would die at the next stop, restart or watchdog kill and the lease
would never be renewed, and they would run inside the daemon's sandbox, where /etc is read-only.
So each ifupdown step is a transient systemd unit (``systemd-run``): the one that brings the
interface up stays active (RemainAfterExit) and owns the DHCP client; stopping it runs ifdown,
like ifupdown's own ``ifup@.service``. That unit is not used directly because it binds to the
interface's udev device unit, which does not exist where udev does not run (containers). The
daemon itself only writes the interfaces(5) fragment: no capability, no packet socket.

``dns-nameservers`` does nothing by itself: resolvconf's or systemd-resolved's if-up.d hook
applies it. Without either, DNS servers would be dropped silently, so such a request is refused.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Optional

from .inject import render_ifupdown
from .plan import Command, NoBackend, Plan, Target, Write
from .runner import CommandError, run

log = logging.getLogger(__name__)

UNIT_PREFIX = "pykvpd-ifup-"
_UNIT_SAFE = re.compile(r"[A-Za-z0-9:_.-]")


def unit_name(ifname: str) -> str:
    """The transient unit that keeps ifname up, escaped as systemd-escape does ('@', '+')."""
    escaped = "".join(c if _UNIT_SAFE.match(c) else f"\\x{ord(c):02x}" for c in ifname)
    return f"{UNIT_PREFIX}{escaped}.service"


def dns_consumer(etc_dir: str, timeout: float) -> Optional[str]:
    """Which installed hook applies ``dns-nameservers`` (resolvconf, systemd-resolved), if any.

    systemd-resolved's hook acts only while the service is enabled; it asks systemctl, so do we.
    """
    hooks = os.path.join(etc_dir, "network", "if-up.d")
    if os.access(os.path.join(hooks, "000resolvconf"), os.X_OK):
        return "resolvconf"
    if os.access(os.path.join(hooks, "resolved"), os.X_OK) and shutil.which("systemctl"):
        try:
            result = run(("systemctl", "is-enabled", "--quiet", "systemd-resolved"),
                         min(timeout, 5.0))
        except CommandError as exc:
            log.info("SET_IP_INFO: cannot tell whether systemd-resolved is enabled: %s", exc)
            return None
        if result.returncode == 0:
            return "systemd-resolved"
    return None


def ifupdown_plan(target: Target, etc_dir: str, timeout: float) -> Plan:
    """Stop the unit that kept the link up, take down what networking.service raised, write
    the fragment, bring the link up in a new unit; raises NoBackend if DNS could not apply."""
    tools = {name: shutil.which(name) for name in ("systemctl", "systemd-run", "ifup", "ifdown")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise NoBackend(f"ifupdown injection needs {', '.join(missing)} on PATH")
    if target.config.dns and dns_consumer(etc_dir, timeout) is None:
        raise NoBackend(
            f"cannot apply DNS servers to {target.ifname} with ifupdown: neither resolvconf "
            "nor an enabled systemd-resolved is installed to act on dns-nameservers; "
            "nothing was changed")
    fragments = os.path.join(etc_dir, "network", "interfaces.d")
    existing = fragments if os.path.isdir(fragments) else os.path.dirname(fragments)
    if not os.access(existing, os.W_OK):  # EROFS in pykvpd.service without the drop-in
        # Checked before the ifdown below: failing after it would leave the link down.
        raise NoBackend(
            f"cannot write {fragments} (read-only here: pykvpd.service needs the "
            "ip-injection.conf drop-in, ReadWritePaths=-/etc/network/interfaces.d); "
            "nothing was changed")
    _warn_conflicts(target.ifname, etc_dir)
    unit = unit_name(target.ifname)
    ifup, ifdown = str(tools["ifup"]), str(tools["ifdown"])
    run_unit = ("systemd-run", "--quiet", "--collect", "--service-type=oneshot")
    return Plan("ifupdown", [
        # Whatever is up is taken down with the configuration it was brought up with.
        Command(("systemctl", "stop", unit), must_succeed=False),
        Command(run_unit + ("--wait", f"--description=ifdown {target.ifname} (pykvpd)",
                            ifdown, target.ifname), must_succeed=False),
        Write(os.path.join(etc_dir, "network", "interfaces.d"), target.ifname,
              render_ifupdown(target.ifname, target.config), 0o644),
        Command(run_unit + (f"--unit={unit}", "--remain-after-exit",
                            f"--description=ifup {target.ifname} (pykvpd SET_IP_INFO)",
                            f"--property=TimeoutStartSec={max(1, int(timeout) - 1)}",
                            f"--property=ExecStop={ifdown} {target.ifname}",
                            ifup, target.ifname)),
    ])


def _warn_conflicts(ifname: str, etc_dir: str) -> None:
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
