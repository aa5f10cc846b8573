"""The Debian package: builds from the tree, ships the right files, installs into a throwaway
root, and its maintainer scripts take over from the C daemon's unit and hand it back.

Building takes a few seconds once the build dependencies are installed (see docs/deploy.md);
without them these tests skip and say which are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap

import pytest
from debbuild import ROOT, DebBuildUnavailable, build_deb, system_env

pytestmark = pytest.mark.main_run_only(
    reason="debian/ builds for Debian 12 (pybuild-plugin-pyproject); Debian 11 has no such plugin"
)
ALIASES = ("hv-kvp-daemon.service", "hypervkvpd.service", "hv_kvp_daemon.service")
C_UNIT = "/lib/systemd/system/hv-kvp-daemon.service"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(deb path, control dir, extracted data dir)."""
    try:
        deb = build_deb()
    except DebBuildUnavailable as exc:
        # CI installs every build dependency (scripts/bootstrap.sh): a skip there would hide a
        # missing install step, so it fails instead.
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"cannot build the .deb in CI: {exc}")
        pytest.skip(str(exc))
    work = tmp_path_factory.mktemp("deb")
    control = work / "control"
    subprocess.run(["dpkg-deb", "-e", deb, str(control)], check=True)
    data = work / "data"
    subprocess.run(["dpkg-deb", "-x", deb, str(data)], check=True)
    return deb, control, data


def deb_field(deb, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_control_fields(built):
    deb, _, _ = built
    assert deb_field(deb, "Package") == "pykvpd"
    depends = [d.strip().split()[0] for d in deb_field(deb, "Depends").split(",")]
    for needed in ("python3-cffi", "python3-systemd"):
        assert needed in depends
    assert "python3-pyudev" not in depends  # nothing imports it: docs/compatibility.md
    # The C package stays installed for its VSS and fcopy daemons.
    assert "hyperv-daemons" not in deb_field(deb, "Conflicts")


def test_file_list(built):
    deb, _, data = built
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for expected in (
        "/usr/bin/pykvpd",
        "/usr/bin/kvp",
        "/usr/bin/hv_kvp_daemon",
        "/lib/systemd/system/pykvpd.service",
        "/lib/systemd/system/kvp-watch@.service",
        "/etc/kvp/hooks/",
        "/lib/udev/rules.d/60-pykvpd.rules",
        "/usr/share/man/man8/pykvpd.8.gz",
        "/usr/share/man/man1/kvp.1.gz",
        "/usr/share/bash-completion/completions/kvp",
        "/etc/pykvpd.conf",
        "/usr/share/doc/pykvpd/examples/ip-injection.conf",
        "/usr/lib/python3/dist-packages/pykvpd/daemon.py",
        "/usr/lib/python3/dist-packages/pykvpd/service.py",
    ):
        assert expected in paths, expected
    assert any(p.startswith("/usr/lib/python3/dist-packages/pykvpd/_hv_kvp_shim") for p in paths)
    assert paths & {"/usr/share/doc/pykvpd/deploy.md", "/usr/share/doc/pykvpd/deploy.md.gz"}
    unwanted = ("/usr/local", "/usr/lib/python3/dist-packages/tests")
    assert not any(p.startswith(unwanted) for p in paths)
    for shipped, source in (
        ("lib/systemd/system/pykvpd.service", "systemd/pykvpd.service"),
        ("lib/systemd/system/kvp-watch@.service", "systemd/kvp-watch@.service"),
        ("lib/udev/rules.d/60-pykvpd.rules", "systemd/60-pykvpd.rules"),
    ):
        with open(data / shipped, "rb") as a, open(os.path.join(ROOT, source), "rb") as b:
            assert a.read() == b.read()


def test_maintainer_scripts(built):
    _, control, _ = built
    assert (control / "conffiles").read_text().split() == ["/etc/pykvpd.conf"]
    for name in ("postinst", "prerm", "postrm"):
        script = control / name
        text = script.read_text()
        assert "#DEBHELPER#" not in text
        subprocess.run(["sh", "-n", str(script)], check=True)
    postinst = (control / "postinst").read_text()
    # The C daemon is stopped before our aliases take its name and our unit starts.
    assert postinst.index("stop_c_kvp_daemon\n") < postinst.index("deb-systemd-helper enable")
    assert postinst.index("deb-systemd-helper enable") < postinst.index("deb-systemd-invoke")
    # Only the KVP daemon: VSS and fcopy units are never touched.
    for text in (postinst, (control / "postrm").read_text()):
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert "vss" not in code.lower() and "fcopy" not in code.lower()


def test_installs_into_a_throwaway_root(built, tmp_path):
    deb, _, _ = built
    root = tmp_path / "root"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir()
    (root / "var/lib/dpkg/status").write_text("")
    subprocess.run(
        ["dpkg", f"--root={root}", "--force-depends", "--unpack", str(deb)],
        check=True,
        capture_output=True,
        env=system_env(),
    )
    files = subprocess.run(
        ["dpkg", f"--root={root}", "-L", "pykvpd"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "/lib/systemd/system/pykvpd.service" in files
    assert (root / "usr/bin/pykvpd").stat().st_mode & 0o111

    if shutil.which("systemd-analyze"):
        (root / "bin").mkdir(exist_ok=True)
        shutil.copy("/bin/kill", root / "bin/kill")
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", f"--root={root}", "pykvpd.service"],
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr

    python = "/usr/bin/python3"
    if not os.path.exists(python):
        return
    env = system_env(PYTHONPATH=str(root / "usr/lib/python3/dist-packages"))
    probe = subprocess.run(
        [python, "-c", "import pykvpd._hv_kvp_shim, pykvpd.service, pykvpd.config"],
        env=env,
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"system python cannot import the package (runtime deps?): {probe.stderr}")
    status = subprocess.run(
        [python, str(root / "usr/bin/pykvpd"), "status", "--json",
         "--status-file", str(tmp_path / "none.json"), "--pool-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert status.returncode == 3, status.stderr
    assert json.loads(status.stdout)["running"] is False

    # The packaged kvp: a get answers, and imports neither re (the generated entry-point
    # script's) nor argparse or logging (bench_cli.py measures what that saves).
    pools = tmp_path / "pools"
    pools.mkdir()
    kvp = [python, "-X", "importtime", str(root / "usr/bin/kvp"), "--dir", str(pools)]
    subprocess.run([*kvp, "set", "Key", "value"], env=env, check=True, capture_output=True)
    got = subprocess.run([*kvp, "get", "Key"], env=env, capture_output=True, text=True)
    assert (got.returncode, got.stdout) == (0, "value\n"), got.stderr
    imported = {line.split("|")[-1].strip() for line in got.stderr.splitlines() if "|" in line}
    assert "pykvpd.cli.quickargs" in imported
    assert imported & {"re", "argparse", "logging", "typing"} == set()


FAKE_SYSTEMCTL = textwrap.dedent(
    """\
    #!/bin/sh
    echo "systemctl $*" >> "$FAKE_LOG"
    case "$*" in
      *"--root=/"*preset*) exec /bin/systemctl "$@" ;;
      *"show -P FragmentPath hv-kvp-daemon.service"*) echo "$FAKE_C_FRAGMENT" ;;
      *"is-active hv-kvp-daemon.service"*) [ -n "$FAKE_C_ACTIVE" ] && exit 0; exit 3 ;;
      *"is-active"*) exit 3 ;;
    esac
    exit 0
    """
)

SANDBOX = textwrap.dedent(
    """\
    set -e
    mount -t tmpfs none /etc/systemd/system
    mount -t tmpfs none /lib/systemd/system
    mount -t tmpfs none /var/lib/systemd
    mount -t tmpfs none /run
    mkdir -p /run/systemd/system
    cp "$PKGROOT/lib/systemd/system/pykvpd.service" /lib/systemd/system/
    printf '[Unit]\\nDescription=C daemon\\n[Service]\\nExecStart=/usr/sbin/hv_kvp_daemon -n\\n' \\
        > /lib/systemd/system/hv-kvp-daemon.service
    ln -s /dev/null /etc/systemd/system/hv-vss-daemon.service
    export PATH="$FAKEBIN:$PATH" DPKG_MAINTSCRIPT_PACKAGE=pykvpd
    DPKG_MAINTSCRIPT_NAME=postinst sh -e "$CTL/postinst" configure
    echo "== after postinst"
    find /etc/systemd/system -mindepth 1 -printf '%P -> %l\\n' | sort
    DPKG_MAINTSCRIPT_NAME=prerm sh -e "$CTL/prerm" remove
    DPKG_MAINTSCRIPT_NAME=postrm sh -e "$CTL/postrm" remove
    echo "== after postrm"
    find /etc/systemd/system -mindepth 1 -printf '%P -> %l\\n' | sort
    """
)


def _sandbox_usable() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    if not (os.path.exists("/bin/systemctl") and shutil.which("deb-systemd-helper")):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(
    not _sandbox_usable(), reason="needs root, unshare, systemctl, init-system-helpers"
)
def test_takeover_and_handback_in_a_mount_namespace(built, tmp_path):
    """Run postinst/prerm/postrm with the real deb-systemd-helper and `systemctl --root=/ preset`
    over tmpfs unit directories; only the service manager itself is faked (it is not PID 1)."""
    _, control, data = built
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "systemctl").write_text(FAKE_SYSTEMCTL)
    (fakebin / "deb-systemd-invoke").write_text(
        '#!/bin/sh\necho "deb-systemd-invoke $*" >> "$FAKE_LOG"\n'
    )
    for name in ("py3compile", "py3clean"):
        (fakebin / name).write_text("#!/bin/sh\nexit 0\n")
    for tool in fakebin.iterdir():
        tool.chmod(0o755)
    log = tmp_path / "log"
    env = dict(
        os.environ,
        FAKE_LOG=str(log),
        FAKE_C_FRAGMENT=C_UNIT,
        FAKE_C_ACTIVE="1",
        PKGROOT=str(data),
        CTL=str(control),
        FAKEBIN=str(fakebin),
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", SANDBOX], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after_postinst, after_postrm = result.stdout.split("== after postinst\n")[1].split(
        "== after postrm\n"
    )
    links = dict(line.split(" -> ") for line in after_postinst.splitlines())
    for alias in ALIASES:
        assert links[alias] == "/lib/systemd/system/pykvpd.service"
    assert not any(name.endswith(".wants") for name in links)  # udev starts it, nothing else
    # Hand-back: our aliases are gone, the admin's unrelated link is kept.
    assert after_postrm.splitlines() == ["hv-vss-daemon.service -> /dev/null"]

    calls = log.read_text().splitlines()
    stop = calls.index("systemctl stop hv-kvp-daemon.service")
    preset = next(i for i, c in enumerate(calls) if "preset pykvpd.service" in c)
    start = calls.index("deb-systemd-invoke start pykvpd.service")
    assert stop < preset < start
    assert "deb-systemd-invoke stop pykvpd.service" in calls
    # No device here, so postrm does not try to start the C daemon.
    assert "systemctl start hv-kvp-daemon.service" not in calls
    assert not any("vss" in c or "fcopy" in c for c in calls)
