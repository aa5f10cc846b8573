"""How long one GET_IP_INFO takes (NetConfig.get_ip_info), with and without distro helpers.

Run as root: ``python3 benchmarks/bench_ipinfo.py [--calls N]``. The measurement runs in a
throw-away network namespace (``unshare -n -m``) holding one dual-stack veth with a default
route, so the numbers do not depend on the machine's own interfaces. Two configurations:

* built-in: no helper directory: sysfs + rtnetlink + resolv.conf + config-file DHCP detection;
* helpers: ``/usr/libexec/hypervkvpd`` (Debian installs hv_get_dns_info / hv_get_dhcp_info
  there), which the C daemon also runs; both helpers are started concurrently.

The C daemon (~40 ms per GET_IP_INFO on Debian, spec Appendix A) is measured elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAC = "00:15:5D:01:02:03"
SETUP = [
    ["mount", "--make-rprivate", "/"],
    ["mount", "-t", "sysfs", "sysfs", "/sys"],
    ["ip", "link", "add", "eth0", "address", MAC, "type", "veth", "peer", "name", "peer0"],
    ["ip", "link", "set", "eth0", "up"],
    ["ip", "link", "set", "peer0", "up"],
    ["ip", "addr", "add", "10.0.0.5/24", "dev", "eth0"],
    ["ip", "-6", "addr", "add", "2001:db8::5/64", "dev", "eth0", "nodad"],
    ["ip", "route", "add", "default", "via", "10.0.0.1"],
]


def measure(calls: int, scripts_dir: str) -> dict:
    """Inside the namespace: time `calls` GET_IP_INFO requests after one warm-up call."""
    sys.path.insert(0, ROOT)
    from pykvpd.netconfig import NetConfig
    from pykvpd.protocol import HV_S_OK, IpInfo

    netconfig = NetConfig(scripts_dir=scripts_dir)
    request = IpInfo(MAC)
    status, reply = netconfig.get_ip_info(request)  # warm-up: imports, page cache
    assert status == HV_S_OK and reply is not None, status
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        netconfig.get_ip_info(request)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"scripts_dir": scripts_dir, "calls": calls,
            "median_ms": round(statistics.median(samples), 3),
            "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 3),
            "max_ms": round(samples[-1], 3), "reply": reply.__dict__}


def child(calls: int) -> None:
    for argv in SETUP:
        subprocess.run(argv, check=True)
    with tempfile.TemporaryDirectory() as empty:
        results = [measure(calls, empty)]
    helpers = "/usr/libexec/hypervkvpd"
    if os.path.isdir(helpers):
        results.append(measure(max(calls // 10, 10), helpers))
    print(json.dumps(results, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.calls)
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespace)", file=sys.stderr)
        return 2
    return subprocess.call(["unshare", "-n", "-m", sys.executable, os.path.abspath(__file__),
                            "--child", "--calls", str(args.calls)])


if __name__ == "__main__":
    sys.exit(main())
