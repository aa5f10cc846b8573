"""How long one GET_IP_INFO takes with each real network stack running, ours against the C daemon.

Run as root: ``python3 benchmarks/bench_ipinfo.py [--calls N] [--stacks A,B]``. Each stack runs
in the container of ``tests/test_netstack_real.py`` (Debian 12 booted by systemd, the .deb
installed, pykvpd.service as shipped, eth0 on a veth with a real DHCP lease from dnsmasq); the
host is the simulator's FakeKernel + Host, and every number is a host round trip (send
GET_IP_INFO, wait for the reply), so it includes the FakeKernel's ~0.1 ms. For each stack:

* ``ours``: the shipped unit, no distro helpers installed (hyperv-daemons is only Suggested):
  sysfs + rtnetlink + the stacks' state files; ``ours, first``: the first request after start
  (imports the netconfig code);
* ``ours + helpers``: the same daemon after Debian's ``hv_get_dns_info``/``hv_get_dhcp_info``
  are copied to /usr/libexec/hypervkvpd (it then runs both per request, concurrently);
* ``C``: this machine's Debian ``/usr/sbin/hv_kvp_daemon`` (hyperv-daemons) copied in with
  those helpers, pykvpd stopped, started through ``systemd-run`` with the LD_PRELOAD library of
  ``tests/cdaemon.py`` that turns its open of /dev/vmbus/hv_kvp into a connection to the host.

``--netns`` instead times ``NetConfig.get_ip_info`` in-process in a throw-away network namespace
(no stack, no container), built-in code and then the helpers of this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from typing import Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPERS = "/usr/libexec/hypervkvpd"
C_DAEMON = "/usr/sbin/hv_kvp_daemon"
STACKS = ("NetworkManager", "networkd", "ifupdown-resolvconf", "ifupdown")
BAR_MS = 10.0


def summary(samples: List[float]) -> Dict[str, float]:
    ordered = sorted(samples)
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered), 3),
            "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 3),
            "max_ms": round(ordered[-1], 3)}


def timed(call: Callable[[], object], count: int) -> List[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


# --------------------------------------------------------------------------- real stacks


def bench_stack(stack: str, calls: int, deb: str) -> Dict[str, object]:
    import nspawn
    import test_netstack_real as real
    from cdaemon import preload_library

    packages = real.RESOLVCONF_PACKAGES if stack == "ifupdown-resolvconf" else \
        real.STACK_PACKAGES
    root = nspawn.rootfs(include=packages)
    result: Dict[str, object] = {"stack": stack}
    with real.boot(stack, root, deb) as guest:
        get = lambda: guest.host.get_ip_info(real.MAC)  # noqa: E731
        result["ours, first"] = summary(timed(get, 1))
        get()
        result["ours"] = summary(timed(get, calls))
        result["reply"] = get()._asdict()
        if not (os.access(C_DAEMON, os.X_OK) and os.path.isdir(HELPERS)):
            result["C"] = f"not run: needs Debian's hyperv-daemons here ({C_DAEMON}, {HELPERS})"
            return result
        guest.sh("mkdir", "-p", HELPERS)
        for name in os.listdir(HELPERS):
            shutil.copy2(os.path.join(HELPERS, name), guest.ct.path(f"{HELPERS}/{name}"))
        get()
        result["ours + helpers"] = summary(timed(get, max(calls // 4, 10)))
        shutil.copy2(C_DAEMON, guest.ct.path(C_DAEMON))
        shutil.copy2(preload_library(), guest.ct.path("/usr/local/lib/hvkvp_redirect.so"))
        guest.sh("systemctl", "stop", "pykvpd")
        guest.sh("systemd-run", "--unit=hv-kvp-c", "--setenv=LD_PRELOAD=/usr/local/lib/"
                 "hvkvp_redirect.so", "--setenv=HVKVP_SOCKET=/dev/vmbus/hv_kvp", C_DAEMON, "-n")
        if not guest.kernel.wait_registered(20.0, registrations=2):
            result["C"] = "not run: the C daemon did not register\n" + guest.ct.journal("hv-kvp-c")
            return result
        get()
        result["C"] = summary(timed(get, max(calls // 4, 10)))
        result["C reply"] = get()._asdict()
    return result


def stacks_main(names: List[str], calls: int) -> int:
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    import nspawn

    reason = nspawn.unavailable()
    if reason is not None:
        print(f"systemd-nspawn cannot run here: {reason}", file=sys.stderr)
        return 2
    deb = nspawn.build_deb()
    results = [bench_stack(name, calls, deb) for name in names]
    print(json.dumps(results, indent=2))
    print(f"\n{'stack':<22}{'ours':>10}{'p95':>9}{'first':>9}{'+helpers':>10}{'C':>10}"
          f"{'C/ours':>8}  bar: p95 < {BAR_MS:g} ms")
    for r in results:
        ours, c, helpers = r["ours"], r.get("C"), r.get("ours + helpers")
        c_ms = c["median_ms"] if isinstance(c, dict) else None
        h_ms = helpers["median_ms"] if isinstance(helpers, dict) else None
        ratio = f"{c_ms / ours['median_ms']:.0f}" if c_ms else "n/a"
        verdict = "ok" if ours["p95_ms"] < BAR_MS else "MISSED"
        h_text = f"{h_ms:.1f}ms" if h_ms else "n/a"
        c_text = f"{c_ms:.1f}ms" if c_ms else "n/a"
        print(f"{r['stack']:<22}{ours['median_ms']:>8.2f}ms{ours['p95_ms']:>7.2f}ms"
              f"{r['ours, first']['median_ms']:>7.1f}ms{h_text:>10}{c_text:>10}"
              f"{ratio:>8}  {verdict} (max {ours['max_ms']:.2f} ms)")
    return 0


# --------------------------------------------------------------------------- --netns

SETUP = [
    ["mount", "--make-rprivate", "/"],
    ["mount", "-t", "sysfs", "sysfs", "/sys"],
    ["ip", "link", "add", "eth0", "address", "00:15:5D:01:02:03", "type", "veth", "peer",
     "name", "peer0"],
    ["ip", "link", "set", "eth0", "up"],
    ["ip", "link", "set", "peer0", "up"],
    ["ip", "addr", "add", "10.0.0.5/24", "dev", "eth0"],
    ["ip", "-6", "addr", "add", "2001:db8::5/64", "dev", "eth0", "nodad"],
    ["ip", "route", "add", "default", "via", "10.0.0.1"],
]


def netns_child(calls: int) -> None:
    """Inside the namespace: NetConfig.get_ip_info in-process, after one warm-up call."""
    sys.path.insert(0, ROOT)
    from pykvpd.netconfig import NetConfig
    from pykvpd.protocol import HV_S_OK, IpInfo

    for argv in SETUP:
        subprocess.run(argv, check=True)
    request = IpInfo("00:15:5D:01:02:03")
    results = []
    with tempfile.TemporaryDirectory() as empty:
        for scripts_dir, count in ((empty, calls), (HELPERS, max(calls // 10, 10))):
            if not os.path.isdir(scripts_dir):
                continue
            netconfig = NetConfig(scripts_dir=scripts_dir)
            status, reply = netconfig.get_ip_info(request)
            assert status == HV_S_OK and reply is not None, status
            results.append(dict(summary(timed(partial(netconfig.get_ip_info, request), count)),
                                scripts_dir=scripts_dir, reply=reply._asdict()))
    print(json.dumps(results, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="GETs timed per daemon and stack")
    parser.add_argument("--stacks", default=",".join(STACKS), help="comma-separated subset")
    parser.add_argument("--netns", action="store_true", help="in-process, no container")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.calls <= 100000:
        parser.error(f"--calls must be 1..100000, not {args.calls}")
    names = [n for n in args.stacks.split(",") if n]
    unknown = sorted(set(names) - set(STACKS))
    if unknown:
        parser.error(f"unknown stack(s) {', '.join(unknown)}; known: {', '.join(STACKS)}")
    if args.child:
        netns_child(args.calls)
        return 0
    if os.geteuid() != 0:
        print("needs root (namespaces, containers)", file=sys.stderr)
        return 2
    if args.netns:
        return subprocess.call(["unshare", "-n", "-m", sys.executable, os.path.abspath(__file__),
                                "--child", "--calls", str(args.calls)])
    return stacks_main(names, args.calls)


if __name__ == "__main__":
    sys.exit(main())
