#!/usr/bin/env bash
# Run the whole test suite a second time under CPython 3.9: Debian 11's own python3, in a
# Debian 11 (bullseye) root file system, as root, in private mount/PID/UTS/IPC namespaces.
#   scripts/test-py39.sh [pytest args]      (scripts/bootstrap.sh test calls it after the main run)
#
# The guests pykvpd serves run their system Python (3.9 on RHEL 9 and Debian 11); ruff's
# target-version checks syntax only, not the standard library, so this run is the floor's proof.
#
# Why chroot + unshare and not systemd-nspawn: the suite itself creates mount and network
# namespaces, bind-mounts over /var/lib, mounts tmpfs and runs unshare; inside nspawn each of
# those needs extra capabilities and system calls let through, and the tests that boot their own
# nspawn containers would nest. A chroot in private namespaces gives the tests the same root the
# main run has, and everything it mounts or starts goes away when it exits.
#
# The root file system is built once with mmdebstrap and kept in $PYKVPD_ROOTFS_CACHE (default
# /var/tmp/pykvpd-rootfs, shared with tests/nspawn.py) under a name keyed by its package list,
# so later runs on the same machine reuse it; a lock makes two builders at once wait for one
# build. Each run mounts a
# throwaway overlay over it, so the cached tree never changes.
#
# pip inside talks to the package index only: with this machine's CA bundle (PIP_CERT) and with
# no pip configuration of this machine (PIP_CONFIG_FILE=/dev/null; the machine's points at local
# wheel folders that do not exist in the chroot). Downloads are cached next to the root file
# system.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
suite=bullseye
mirror=${PYKVPD_PY39_MIRROR:-http://deb.debian.org/debian}
cache=${PYKVPD_ROOTFS_CACHE:-/var/tmp/pykvpd-rootfs}  # the same cache as tests/nspawn.py
ca_bundle=${PYKVPD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

# What the tests need there: the compiler and headers for the C shim and the LD_PRELOAD library,
# bullseye's own C daemon (the differential tests' oracle), the network tools, systemd-analyze
# and udevadm (unit tests), git (the kvp-as-nobody test copies the tree it lists).
packages=(python3 python3-dev python3-venv gcc libc6-dev linux-libc-dev libsystemd-dev pkg-config
          hyperv-daemons iproute2 util-linux procps udev systemd init-system-helpers git)
# Downloaded, not installed: the real clients of tests/test_real_clients.py (bullseye's versions).
clients=(cloud-init waagent)
client_debs=/var/cache/pykvpd-debs

if [ "$(id -u)" -ne 0 ]; then
    echo "$0: needs root (mmdebstrap, chroot, mounts, and the suite's namespace tests)" >&2
    exit 2
fi
if ! command -v mmdebstrap >/dev/null; then
    echo "$0: needs mmdebstrap (scripts/bootstrap.sh test installs it)" >&2
    exit 2
fi
if [ ! -r "$ca_bundle" ]; then
    echo "$0: CA bundle $ca_bundle not readable (set PYKVPD_CA_BUNDLE)" >&2
    exit 2
fi

key=$(printf '%s\n' "format 1" "$suite" "$mirror" minbase "${packages[@]}" -- "${clients[@]}" \
      | sha256sum | cut -c1-16)
image=$cache/$suite-$key

build_image() {
    # Caller holds the lock: any .build.* left here is from a builder that died.
    rm -rf "$cache"/.build.*
    local tmp
    tmp=$(mktemp -d "$cache/.build.XXXXXX")
    local includes
    includes=$(IFS=,; echo "${packages[*]}")
    echo "test-py39: building the $suite root file system ($image)" >&2
    mmdebstrap --quiet --variant=minbase --include="$includes" \
        --customize-hook="mkdir -p \"\$1$client_debs\"" \
        --customize-hook="chroot \"\$1\" sh -c 'cd $client_debs && apt-get -q download ${clients[*]}'" \
        "$suite" "$tmp/root" "$mirror"
    mv "$tmp/root" "$image"
    rmdir "$tmp"
}

mkdir -p "$cache/pip"
(
    flock 9
    [ -d "$image" ] || build_image
) 9>"$cache/.lock"

work=$(mktemp -d "${TMPDIR:-/tmp}/pykvpd-py39.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/upper" "$work/ovl" "$work/root" "$work/src"

# The tree as a checkout holds it (tracked and untracked-but-not-ignored files), with a git
# index so that tests listing the tree's files see the same list.
(cd "$here" && git ls-files -z --cached --others --exclude-standard) \
    | (cd "$here" && xargs -0 sh -c 'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh) \
    | tar -C "$here" --null -T - -cf - | tar -C "$work/src" -xf -
git -C "$work/src" init -q
git -C "$work/src" add -A

inside() {
    set -euo pipefail
    mount --make-rprivate /
    mount -t overlay overlay \
        -o "lowerdir=$image,upperdir=$work/upper,workdir=$work/ovl" "$work/root"
    local root=$work/root
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=0755 tmpfs "$root/run"
    mkdir -p "$root/src" "$root/root/.cache/pip"
    mount --bind "$work/src" "$root/src"
    mount --bind "$cache/pip" "$root/root/.cache/pip"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    # The C daemon resolves the host name when it starts; not found in /etc/hosts, it asks DNS,
    # and inside a test's network namespace it then waits past the registration timeout.
    cp /etc/hosts "$root/etc/hosts"
    cp "$ca_bundle" "$root/etc/ssl/pip-ca.pem"
    exec chroot "$root" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" CI="${CI:-}" \
        PIP_CONFIG_FILE=/dev/null PIP_CERT=/etc/ssl/pip-ca.pem PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-60}" \
        PYKVPD_DEB_CACHE="$client_debs" PYKVPD_TEST_RUN=py39 \
        /bin/bash -euo pipefail -c '
            # /opt, not /root: the kvp-as-nobody test needs an interpreter nobody may run.
            python3 -m venv /opt/pykvpd-venv
            py=/opt/pykvpd-venv/bin/python
            "$py" -m pip install -q --upgrade pip
            cd /src
            # Built (with its C shim) and installed as a user would; then the shim in place too,
            # since the tests import the package from the source tree.
            "$py" -m pip install -q ".[test,systemd]"
            "$py" pykvpd/_shim_build.py >/dev/null
            "$py" -c "import sys; print(\"test-py39: Python\", sys.version.split()[0])"
            # The installed commands, away from the source tree: a pool written and read back
            # by kvp, and the simulator demo (daemon + simulated host, all steps must work).
            bin=/opt/pykvpd-venv/bin
            smoke=$(mktemp -d)
            mkdir "$smoke/pools"
            (cd "$smoke" && "$bin/kvp" --dir pools set DeploymentState ready \
                && [ "$("$bin/kvp" --dir pools get DeploymentState)" = ready ] \
                && "$bin/kvp" --dir pools fsck >/dev/null \
                && "$bin/pykvpd" simulate >simulate.out \
                && grep -q "all steps worked" simulate.out) \
                || { echo "test-py39: the installed kvp or pykvpd simulate failed" >&2
                     cat "$smoke/simulate.out" >&2 2>/dev/null; exit 1; }
            echo "test-py39: installed kvp and pykvpd simulate work"
            # Not exec: this shell stays PID 1 of the namespace and reaps the daemons the tests
            # detach (pytest would leave them zombies, still in /proc).
            rc=0
            "$py" -m pytest -q -p no:cacheprovider "$@" || rc=$?
            exit "$rc"
        ' test-py39 "$@"
}

export image work cache ca_bundle client_debs
unshare --mount --pid --fork --uts --ipc --propagation private \
    bash -c "$(declare -f inside); inside \"\$@\"" inside "$@"
