"""Network data for the host: GET_IP_INFO (report an adapter) and SET_IP_INFO (inject an IP).

``NetConfig`` is the boundary the daemon calls: both methods return a status code and never
raise; every failure is logged once here with its reason. The work is split by direction:
``ipinfo`` reads (sysfs, rtnetlink, resolver/DHCP state), ``inject`` validates and renders,
``backends`` chooses how to apply (``ifupdown`` for that stack), ``plan``
runs the steps, ``runner`` runs external programs with argv lists and timeouts.
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

from ..protocol import HV_E_FAIL, HV_GUID_NOTFOUND, HV_INVALIDARG, HV_S_OK, IpInfo
from .ipinfo import AdapterNotFound, get_ip_info
from .netlink import NetlinkError
from .nics import interface_by_guid, interface_index, interface_mac, valid_ifname
from .runner import CommandError, Deadline

__all__ = ["NetConfig", "INJECTION_MODES", "REQUEST_BUDGET"]

log = logging.getLogger(__name__)

INJECTION_MODES = ("off", "dry-run", "on")
# The kernel gives up on the daemon after 30 s; everything one request does fits in this.
REQUEST_BUDGET = 20.0


class NetConfig:
    """GET_IP_INFO / SET_IP_INFO for the daemon, configured once at start-up.

    sysfs, etc_dir and run_dir are roots (tests point them at temporary trees); scripts_dir
    holds the optional distro helpers; state_dir receives ifcfg-IF and IF.nmconnection as the
    C daemon writes them; injection is "off", "dry-run" or "on"; timeout bounds each external
    step (the whole request is bounded by REQUEST_BUDGET).
    """

    def __init__(self, *, sysfs: str = "/sys", scripts_dir: str = "/usr/libexec/hypervkvpd",
                 state_dir: str = "/var/lib/hyperv", injection: str = "on",
                 etc_dir: str = "/etc", run_dir: str = "/run", timeout: float = 10.0) -> None:
        if injection not in INJECTION_MODES:
            raise ValueError(f"injection must be one of {INJECTION_MODES}, not {injection!r}")
        self.sysfs = sysfs
        self.scripts_dir = scripts_dir
        self.state_dir = state_dir
        self.injection = injection
        self.etc_dir = etc_dir
        self.run_dir = run_dir
        self.timeout = min(float(timeout), REQUEST_BUDGET)

    # ------------------------------------------------------------------ GET_IP_INFO

    def get_ip_info(self, request: IpInfo) -> Tuple[int, Optional[IpInfo]]:
        """(HV_S_OK, reply) for a known MAC; (HV_E_FAIL, None) for anything else."""
        try:
            reply, ifname = get_ip_info(
                request, sysfs=self.sysfs, scripts_dir=self.scripts_dir, etc_dir=self.etc_dir,
                run_dir=self.run_dir, timeout=self.timeout, deadline=Deadline(REQUEST_BUDGET))
        except AdapterNotFound as exc:
            log.warning("GET_IP_INFO: %s", exc)
            return HV_E_FAIL, None
        except (NetlinkError, CommandError, OSError) as exc:
            log.error("GET_IP_INFO for %r failed: %s", request.adapter_id, exc)
            return HV_E_FAIL, None
        except Exception:
            log.exception("GET_IP_INFO for %r failed unexpectedly", request.adapter_id)
            return HV_E_FAIL, None
        log.debug("GET_IP_INFO %s -> %s: %s", request.adapter_id, ifname, reply)
        return HV_S_OK, reply

    # ------------------------------------------------------------------ SET_IP_INFO

    def set_ip_info(self, request: IpInfo) -> int:
        """Validate, write the state files, apply; HV_S_OK or the spec's error status.

        The SET side (validation, rendering, backends) is imported here, at the first
        SET_IP_INFO: a host asks for GET_IP_INFO all the time and rarely injects, and those
        imports would double the first GET's cost and the daemon's memory.
        """
        from .inject import InvalidRequest
        from .plan import NoBackend

        try:
            return self._set_ip_info(request)
        except InvalidRequest as exc:
            log.warning("SET_IP_INFO rejected: %s", exc)
            return HV_INVALIDARG
        except (NoBackend, CommandError, OSError, ValueError) as exc:
            log.error("SET_IP_INFO failed: %s", exc)
            return HV_E_FAIL
        except Exception:
            log.exception("SET_IP_INFO failed unexpectedly")
            return HV_E_FAIL

    def _set_ip_info(self, request: IpInfo) -> int:
        from .backends import choose_plan
        from .inject import describe, parse_request, render_ifcfg, render_keyfile, write_atomic
        from .plan import Target, execute

        deadline = Deadline(REQUEST_BUDGET)
        if self.injection == "off":
            log.warning("SET_IP_INFO for %r refused: IP injection is off", request.adapter_id)
            return HV_E_FAIL
        ifname = interface_by_guid(self.sysfs, request.adapter_id)
        if ifname is None:
            log.warning("SET_IP_INFO: no interface with adapter GUID %r", request.adapter_id)
            return HV_GUID_NOTFOUND
        if not valid_ifname(ifname):
            raise ValueError(f"interface name {ifname!r} is unsafe to configure")
        config = parse_request(request)
        mac = interface_mac(self.sysfs, ifname)
        if mac is None:
            raise ValueError(f"no usable MAC address for {ifname}")
        ifcfg = write_atomic(self.state_dir, f"ifcfg-{ifname}", render_ifcfg(ifname, mac, config))
        keyfile = write_atomic(self.state_dir, f"{ifname}.nmconnection",
                               render_keyfile(ifname, mac, config))
        target = Target(ifname, interface_index(self.sysfs, ifname), mac, config, ifcfg, keyfile)
        plan = choose_plan(target, scripts_dir=self.scripts_dir, etc_dir=self.etc_dir,
                           run_dir=self.run_dir, timeout=self.timeout)
        log.info("SET_IP_INFO %s (%s): %s via %s", ifname, request.adapter_id, describe(config),
                 plan.backend)
        if self.injection == "dry-run":
            for line in plan.describe():
                log.info("SET_IP_INFO dry-run, would %s", line)
            return HV_S_OK
        execute(plan, deadline, self.timeout)
        return HV_S_OK
