"""Boots a real systemd (PID 1 in systemd-nspawn) on a cached Debian rootfs, for tests.

Used by the real-systemd tests (the package as users get it) and the real-network-stack tests::

    root = nspawn.rootfs(include=("hyperv-daemons",))
    with nspawn.Container(root) as ct:           # booted, is-system-running: running/degraded
        ct.install_deb(nspawn.build_deb())
        print(ct.run(["systemctl", "status", "pykvpd"], check=False).stdout)
        print(ct.journal("pykvpd"))

Facts this relies on (hosts whose PID 1 is not systemd, hybrid or unified cgroups):

* ``--register=no --keep-unit``: without them nspawn asks the host's systemd over D-Bus;
* ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1`` plus ``CAP_BPF`` and the ``bpf`` system call: the
  container's systemd can then attach its device BPF programs, so ``DevicePolicy=`` and
  ``DeviceAllow=`` are really enforced (without them they are silently not);
* with ``--keep-unit`` nspawn makes ``payload``/``supervisor`` cgroups inside the caller's
  cgroup: the launcher first moves itself into a cgroup of its own (one per container, in every
  hierarchy that nspawn uses), so two containers never share them and cleanup removes them all;
* the container runs on an overlay of the cached rootfs, in a private mount namespace, so the
  cache is never written and nothing is left mounted on the host.

Commands run inside through ``nsenter`` into the namespaces and root of the container's PID 1,
with a clean environment; files inside are reachable from the host at ``ct.path("/x")``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Iterable, List, Mapping, Optional, Sequence

from debbuild import ROOT, DebBuildUnavailable, build_deb  # noqa: F401  (part of this API)

CACHE_DIR = os.environ.get("PYKVPD_ROOTFS_CACHE", "/var/tmp/pykvpd-rootfs")
# What every container gets: an init, a bus, and what a person at the console would use.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "procps")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 90.0
_ROOTFS_FORMAT = "2"  # bump when the way a rootfs is built changes: old caches are not reused
_counter = itertools.count()


MAIN_RUN_ONLY = "runs in the main (bookworm) run; boots its own container"


class NspawnUnavailable(Exception):
    """systemd-nspawn cannot run here; the message says why."""


# --------------------------------------------------------------------------- can it run here?


def unavailable() -> Optional[str]:
    """None when containers can be booted here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root"
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("mmdebstrap", "mmdebstrap"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} missing (apt-get install {package})"
    if _cgroup2_mount() is None:
        return "no cgroup2 hierarchy mounted (nspawn needs the unified one)"
    return None


def require() -> None:
    """Skip the calling test when nspawn cannot run, or fail it under CI (CI=true), where a
    skipped real-systemd test would hide that the check never ran.

    In the CPython 3.9 run (scripts/test-py39.sh, a Debian 11 chroot) every container test
    skips, by name: the main run boots them, and a container there would nest in the chroot."""
    import pytest

    if os.environ.get("PYKVPD_TEST_RUN") == "py39":
        pytest.skip(f"main run only: {MAIN_RUN_ONLY}")
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"systemd-nspawn cannot run in CI: {reason}")
    pytest.skip(f"systemd-nspawn cannot run: {reason}")


def _mounts() -> List[List[str]]:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return [line.split() for line in f]


def _cgroup2_mount() -> Optional[str]:
    """/sys/fs/cgroup (unified hosts) or /sys/fs/cgroup/unified (hybrid hosts)."""
    for fields in _mounts():
        if len(fields) > 2 and fields[2] == "cgroup2":
            return fields[1]
    return None


def _cgroup_roots() -> List[str]:
    """Every hierarchy nspawn makes payload/supervisor in: cgroup2 and v1 name=systemd."""
    roots = []
    for fields in _mounts():
        if len(fields) < 4:
            continue
        if fields[2] == "cgroup2" or (fields[2] == "cgroup" and "name=systemd" in fields[3]):
            roots.append(fields[1])
    return roots


# --------------------------------------------------------------------------- rootfs


def runtime_depends() -> List[str]:
    """The binary package's Depends from debian/control, without ${...} substitutions."""
    with open(os.path.join(ROOT, "debian", "control"), encoding="utf-8") as f:
        stanzas = f.read().split("\n\n")
    for stanza in stanzas:
        if "\nPackage: pykvpd" not in "\n" + stanza:
            continue
        joined = stanza.replace("\n ", " ")
        for line in joined.splitlines():
            if line.startswith("Depends:"):
                names = (d.strip().split()[0] for d in line[len("Depends:") :].split(","))
                return ["python3"] + [n for n in names if n and not n.startswith("${")]
    raise ValueError("debian/control has no Depends for package pykvpd")


def host_sources(suite: str) -> List[str]:
    """The host's apt source files when it runs SUITE itself: the rootfs then comes from the
    same mirrors as the host's packages (a CI machine may reach only its own mirror). Empty
    otherwise, and mmdebstrap uses deb.debian.org with the suite's updates and security."""
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            release = dict(
                line.rstrip("\n").split("=", 1) for line in f if "=" in line
            )
    except OSError:
        return []
    if release.get("VERSION_CODENAME", "").strip('"') != suite:
        return []
    files = []
    if os.path.isfile("/etc/apt/sources.list"):
        with open("/etc/apt/sources.list", encoding="utf-8") as f:
            if any(line.strip() and not line.lstrip().startswith("#") for line in f):
                files.append("/etc/apt/sources.list")
    parts = "/etc/apt/sources.list.d"
    if os.path.isdir(parts):
        files += sorted(
            os.path.join(parts, n) for n in os.listdir(parts) if n.endswith((".list", ".sources"))
        )
    return files


def rootfs(suite: str = "bookworm", include: Iterable[str] = ()) -> str:
    """A minbase SUITE rootfs with systemd, dbus, procps, pykvpd's runtime dependencies and
    INCLUDE; built once with mmdebstrap (about 25 s) and cached on disk under CACHE_DIR, keyed
    by suite and package list. Safe when several processes ask at once (a lock file)."""
    packages = sorted(set(BASE_PACKAGES) | set(runtime_depends()) | set(include))
    digest = hashlib.sha256(
        "\n".join([_ROOTFS_FORMAT, suite, *packages]).encode()
    ).hexdigest()[:16]
    path = os.path.join(CACHE_DIR, f"{suite}-{digest}")
    done = os.path.join(path, ".pykvpd-rootfs-complete")
    if os.path.exists(done):
        return path
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(done):
            return path
        partial = f"{path}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)  # an interrupted build of an older run
        result = subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
             "--include=" + ",".join(packages), suite, partial, *host_sources(suite)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise NspawnUnavailable(f"mmdebstrap {suite} failed:\n{result.stderr[-3000:]}")
        with open(os.path.join(partial, "etc", "packages.pykvpd-test"), "w") as f:
            f.write("\n".join(packages) + "\n")  # what this image holds, for a person looking
        open(os.path.join(partial, os.path.basename(done)), "w").close()
        os.rename(partial, path)
    return path


# --------------------------------------------------------------------------- the container

_LAUNCHER = r"""
set -e
for root in $PYKVPD_CGROUP_ROOTS; do
    mkdir -p "$root/$PYKVPD_CGROUP"
    echo $$ > "$root/$PYKVPD_CGROUP/cgroup.procs"
done
mount --make-rprivate /
w=$PYKVPD_WORK
mount -t overlay overlay -o "lowerdir=$PYKVPD_LOWER,upperdir=$w/upper,workdir=$w/work" "$w/root"
if [ -n "$PYKVPD_NETNS" ]; then
    # A sysfs shows the network devices of the namespace its mounter is in.
    mkdir "$w/sysfs"
    nsenter --net="$PYKVPD_NETNS" mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$w/sysfs"
fi
exec "$@"
"""


class Container:
    """A booted systemd-nspawn container on a throwaway overlay of ROOT (a rootfs() path).

    ``capabilities``: extra ones for the container (e.g. ``("CAP_NET_ADMIN",)``); ``binds``:
    ``"HOST[:CONTAINER]"`` (read-write) as for ``--bind=``; ``netns``: a network namespace path
    (``/run/netns/NAME``, ``/proc/PID/ns/net``) the container joins, so it sees only that
    namespace's interfaces (e.g. one end of the test's veth pair), in netlink and in
    ``/sys/class/net`` alike (virtual devices; a physical NIC moved into the namespace keeps
    the machine's view of its device directory); without it the container shares the host's
    network. Boots in ``__enter__`` and powers off and cleans up in
    ``__exit__`` (also after a failed boot).
    """

    def __init__(
        self,
        root: str,
        capabilities: Sequence[str] = (),
        binds: Sequence[str] = (),
        netns: Optional[str] = None,
        boot_timeout: float = BOOT_TIMEOUT,
    ) -> None:
        self.lower = root
        self.capabilities = ("CAP_BPF", *capabilities)
        self.binds = tuple(binds)
        self.netns = netns
        self.boot_timeout = boot_timeout
        self.name = f"pykvpd-{os.getpid()}-{next(_counter)}"
        self.workdir = ""
        self.leader = 0
        self._proc: Optional[subprocess.Popen] = None
        self._console = None

    # ----------------------------------------------------------------- life

    def command(self) -> List[str]:
        """The systemd-nspawn command line (run by the launcher inside a mount namespace)."""
        argv = [
            "systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
            f"--machine={self.name}", f"--directory={self.workdir}/root",
            "--console=read-only", "--link-journal=no", "--timezone=off",
            "--capability=" + ",".join(self.capabilities), "--system-call-filter=bpf",
        ]
        argv += [f"--bind={bind}" for bind in self.binds]
        if self.netns is not None:
            # nspawn mounts /sys before it joins the namespace: its class/net and
            # devices/virtual/net list the machine's NICs. The launcher's sysfs, mounted in the
            # namespace, replaces both, so the container (from boot on) sees only its own.
            argv.append(f"--network-namespace-path={self.netns}")
            argv += [f"--bind-ro={self.workdir}/sysfs/{sub}:/sys/{sub}"
                     for sub in ("class/net", "devices/virtual/net")]
        return argv

    def __enter__(self) -> Container:
        reason = unavailable()
        if reason is not None:
            raise NspawnUnavailable(reason)
        self.workdir = tempfile.mkdtemp(prefix=f"{self.name}-", dir="/var/tmp")
        for sub in ("upper", "work", "root"):
            os.mkdir(os.path.join(self.workdir, sub))
        env = dict(
            os.environ,
            SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1",
            PYKVPD_CGROUP_ROOTS=" ".join(_cgroup_roots()),
            PYKVPD_CGROUP=self.name,
            PYKVPD_LOWER=self.lower,
            PYKVPD_WORK=self.workdir,
            PYKVPD_NETNS=self.netns or "",
        )
        self._console = open(os.path.join(self.workdir, "console.log"), "wb")
        self._proc = subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", _LAUNCHER, "launcher", *self.command()],
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            self._boot()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _boot(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise NspawnUnavailable(f"systemd-nspawn exited:\n{self.console_log()}")
            self.leader = self.leader or self._find_leader()
            if self.leader:
                state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.1)
        raise NspawnUnavailable(f"no booted system within {self.boot_timeout:g} s:\n"
                                + self.console_log())

    def _find_leader(self) -> int:
        """The container's PID 1 as the host sees it: nspawn's child in a new PID namespace."""
        assert self._proc is not None
        own = os.readlink("/proc/self/ns/pid")
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{self._proc.pid}/task"):
                with open(f"/proc/{self._proc.pid}/task/{task}/children") as f:
                    for pid in f.read().split():
                        if os.readlink(f"/proc/{pid}/ns/pid") != own:
                            return int(pid)
        return 0

    def __exit__(self, *exc_info: object) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nspawn: orderly poweroff of the container
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                if self.leader:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)  # kills the PID namespace
                proc.kill()
                proc.wait(timeout=30)
        if self._console is not None:
            self._console.close()
        self._remove_cgroups()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._proc = None
        self.leader = 0

    def _remove_cgroups(self) -> None:
        """Our launcher's cgroups, with nspawn's payload/supervisor inside, deepest first."""
        for root in _cgroup_roots():
            top = os.path.join(root, self.name)
            for _ in range(50):
                if not os.path.isdir(top):
                    break
                for dirpath, _dirs, _files in sorted(os.walk(top), reverse=True):
                    with contextlib.suppress(OSError):
                        os.rmdir(dirpath)
                if os.path.isdir(top):
                    time.sleep(0.1)  # processes still being reaped

    def console_log(self) -> str:
        """What the container printed on its console (boot messages), for failure reports."""
        try:
            with open(os.path.join(self.workdir, "console.log"), "rb") as f:
                return f.read()[-6000:].decode("utf-8", "replace")
        except OSError:
            return ""

    # ----------------------------------------------------------------- inside

    def path(self, inside: str) -> str:
        """The host's path to INSIDE (absolute, in the container), through /proc/PID/root."""
        assert self.leader and inside.startswith("/"), inside
        return f"/proc/{self.leader}/root{inside}"

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        input: Optional[str] = None,  # noqa: A002  (as subprocess.run)
        timeout: float = 120.0,
        env: Optional[Mapping[str, str]] = None,
    ) -> subprocess.CompletedProcess:
        """Run ARGV inside (all of the container's namespaces and its root), text output.

        The environment is clean (PATH, LANG, TERM=dumb, plus ENV). With ``check`` a non-zero
        exit raises AssertionError showing the command, its exit status and its output.
        """
        assert self.leader, "container not booted"
        base = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "TERM": "dumb",
                "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
        base.update(env or {})
        command = ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--net",
                   "--pid", "--cgroup", "--root", "--wd", "--", "env", "-i"]
        command += [f"{k}={v}" for k, v in base.items()] + list(argv)
        result = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in container: {' '.join(argv)} exited {result.returncode}\n"
                f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}"
            )
        return result

    def install_deb(self, deb: str, check: bool = True) -> subprocess.CompletedProcess:
        """Copy DEB in and ``dpkg -i`` it, as a user would (its Depends are in the rootfs)."""
        inside = "/var/tmp/" + os.path.basename(deb)
        shutil.copyfile(deb, self.path(inside))
        return self.run(["dpkg", "-i", inside], check=check,
                        env={"DEBIAN_FRONTEND": "noninteractive"})

    def journal(self, unit: Optional[str] = None, *args: str) -> str:
        """``journalctl -o cat`` for UNIT (or everything), plus ARGS (e.g. ``"-o", "json"``)."""
        argv = ["journalctl", "--no-pager", "-o", "cat"]
        if unit is not None:
            argv += ["-u", unit]
        return self.run(argv + list(args), check=False).stdout
