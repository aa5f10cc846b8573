"""Builds the pykvpd .deb from this checkout's debian/, once per test run and version.

Shared by the packaging tests (file list, maintainer scripts) and the real-systemd tests (which
install the package into a booted container, and a newer version of it for the upgrade check).
The build runs on a copy of the checkout (tracked and untracked-but-not-ignored files, what a
clean clone would hold), with the distro's python3 rather than a virtualenv's.
"""

from __future__ import annotations

import atexit
import email.utils
import os
import shutil
import subprocess
import tempfile
from typing import Dict, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # the distro's python3, not a virtualenv's

_built: Dict[Optional[str], str] = {}
_workdirs: list = []


class DebBuildUnavailable(Exception):
    """dpkg-dev, git or a build dependency is missing: the message says which."""


def system_env(**extra: str) -> dict:
    """A minimal environment with the system PATH (no virtualenv leaks into the build)."""
    env = {"PATH": SYSTEM_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def copy_checkout(dest: str) -> None:
    """Tracked and untracked-but-not-ignored files: what a checkout would hold."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = os.path.join(ROOT, name)
        if not os.path.isfile(src):
            continue
        target = os.path.join(dest, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(src, target)


def _bump_changelog(src: str, version: str) -> None:
    """Prepend a changelog entry, so the package built is VERSION (an upgrade test's "newer")."""
    path = os.path.join(src, "debian", "changelog")
    with open(path, encoding="utf-8") as f:
        old = f.read()
    entry = (
        f"pykvpd ({version}) unstable; urgency=medium\n\n"
        f"  * Test build {version} of this checkout.\n\n"
        f" -- pykvpd maintainers <maintainers@example.org>  "
        f"{email.utils.formatdate(usegmt=False, localtime=False)}\n\n"
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(entry + old)


def _cleanup() -> None:
    for path in _workdirs:
        shutil.rmtree(path, ignore_errors=True)


def build_deb(version: Optional[str] = None) -> str:
    """Path of the .deb built from the checkout (debian/changelog's version, or VERSION).

    Built at most once per process and version; the files go away when the process exits.
    Raises DebBuildUnavailable when the tools or build dependencies are missing, and
    AssertionError with the build's output tail when the build itself fails.
    """
    if version in _built:
        return _built[version]
    if shutil.which("dpkg-buildpackage") is None or shutil.which("git") is None:
        raise DebBuildUnavailable("dpkg-dev or git missing")
    work = tempfile.mkdtemp(prefix="pykvpd-deb-")
    if not _workdirs:
        atexit.register(_cleanup)
    _workdirs.append(work)
    src = os.path.join(work, "src")
    copy_checkout(src)
    if version is not None:
        _bump_changelog(src, version)
    deps = subprocess.run(
        ["dpkg-checkbuilddeps"], cwd=src, capture_output=True, text=True, env=system_env()
    )
    if deps.returncode != 0:
        raise DebBuildUnavailable(f"build dependencies missing: {deps.stderr.strip()}")
    build = subprocess.run(
        ["dpkg-buildpackage", "-us", "-uc", "-b"],
        cwd=src,
        capture_output=True,
        text=True,
        env=system_env(),
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    debs = [n for n in os.listdir(work) if n.startswith("pykvpd_") and n.endswith(".deb")]
    assert len(debs) == 1, debs
    _built[version] = os.path.join(work, debs[0])
    return _built[version]
