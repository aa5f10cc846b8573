#!/usr/bin/env bash
# Set up a fresh Debian (12+) machine for pykvpd and run the demo or the whole test suite.
#   scripts/bootstrap.sh demo   - install, then run the daemon against the built-in simulated host
#   scripts/bootstrap.sh test   - install everything the tests need, then run the whole suite
#                                 (under this machine's python3, then under CPython 3.9)
# Needs root (apt-get, and the tests use namespaces and tmpfs mounts). Idempotent.
set -euo pipefail

mode=${1:-demo}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

base_pkgs=(gcc python3 python3-dev python3-venv linux-libc-dev libsystemd-dev pkg-config)
test_pkgs=(hyperv-daemons iproute2 util-linux systemd udev procps
           dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all-dev python3-setuptools
           python3-wheel python3-cffi python3-systemd
           systemd-container mmdebstrap  # real-systemd and real-network-stack containers, and
                                         # the Debian 11 root file system of scripts/test-py39.sh
           dnsmasq-base)  # the DHCP server on the test's side of the veth (test_netstack_real.py)

apt_install() {
    local missing=()
    for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

case "$mode" in
    demo) apt_install "${base_pkgs[@]}" ;;
    test) apt_install "${base_pkgs[@]}" "${test_pkgs[@]}" ;;
    *) echo "usage: $0 demo|test" >&2; exit 2 ;;
esac

venv=${PYKVPD_VENV:-$here/.venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip >/dev/null
if [ "$mode" = demo ]; then
    "$py" -m pip install -q -e .
    exec "$py" -m pykvpd simulate
fi

"$py" -m pip install -q -e '.[test,systemd]'
# The tests import the package from the source tree: build the C shim in place as well.
"$py" pykvpd/_shim_build.py >/dev/null
"$py" -m ruff check pykvpd tests benchmarks
"$py" -m pytest -q -p no:cacheprovider "${@:2}"
# Then the same suite again under CPython 3.9, the oldest Python pykvpd supports (a Debian 11
# root file system, built once and cached). PYKVPD_SKIP_PY39=1 skips it for a quick local run.
if [ "${PYKVPD_SKIP_PY39:-0}" != 1 ]; then
    bash "$here/scripts/test-py39.sh" "${@:2}"
fi
