"""store: nothing in a pool directory is followed through a symlink or opened unless regular,
disk images are resolved inside themselves, and a forbidden directory is an error, not empty.

Each case plants the trap a hostile image (or a careless admin) could contain and asserts that
the target outside is byte-for-byte unchanged and the error names the file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_cli_helpers import ROOT, kvp_process, rec

from pykvpd import protocol as p
from pykvpd.simulator.kernel import FakeKernel
from pykvpd.store import (
    PoolDir,
    PoolDirMissing,
    PoolError,
    PoolFile,
    check,
    files,
    open_pool,
)

TARGET = b"not a pool: a file outside the pool directory\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside"
    target.write_bytes(TARGET)
    return target


@pytest.fixture
def pools(tmp_path: Path) -> Path:
    directory = tmp_path / "hyperv"
    directory.mkdir()
    return directory


# --------------------------------------------------------------------------- symlinks, FIFOs


@pytest.mark.parametrize("operation", ["get", "set", "delete", "ensure_exists"])
def test_symlinked_pool_file_is_refused_and_its_target_untouched(pools, outside, operation):
    os.symlink(outside, pools / ".kvp_pool_1")
    pool = PoolDir(str(pools), create=True).pool(1)
    call = {
        "get": lambda: pool.get("k"),
        "set": lambda: pool.set("k", "v"),
        "delete": lambda: pool.delete("k"),
        "ensure_exists": pool.ensure_exists,
    }[operation]
    with pytest.raises(PoolError, match=r"\.kvp_pool_1: is a symbolic link; refusing"):
        call()
    assert outside.read_bytes() == TARGET
    assert os.path.islink(pools / ".kvp_pool_1")


def test_symlinked_journal_is_refused_and_its_target_untouched(pools, outside):
    (pools / ".kvp_pool_1").write_bytes(rec(b"a", b"1"))
    os.symlink(outside, pools / ".pykvpd-journal-kvp_pool_1")
    pool = PoolFile(str(pools / ".kvp_pool_1"))
    with pytest.raises(PoolError, match=r"\.pykvpd-journal-kvp_pool_1: is a symbolic link"):
        pool.set("b", "2")
    assert outside.read_bytes() == TARGET
    assert (pools / ".kvp_pool_1").read_bytes() == rec(b"a", b"1")


@pytest.mark.parametrize("name", [".kvp_pool_1", ".pykvpd-journal-kvp_pool_1"])
def test_fifo_in_the_pool_directory_is_refused_without_blocking(pools, name):
    if name != ".kvp_pool_1":
        (pools / ".kvp_pool_1").write_bytes(rec(b"a", b"1"))
    os.mkfifo(pools / name)
    pool = PoolFile(str(pools / ".kvp_pool_1"))
    with pytest.raises(PoolError, match=rf"{name}: is a FIFO, not a regular file"):
        pool.set("b", "2")  # an open() of a FIFO without O_NONBLOCK would wait for a writer


def test_device_as_pool_file_is_refused(pools):
    os.symlink("/dev/null", pools / ".kvp_pool_0")  # a symlink to it: refused as a link
    with pytest.raises(PoolError, match="symbolic link"):
        PoolFile(str(pools / ".kvp_pool_0")).get("k")
    with pytest.raises(PoolError, match="is a character device"):
        PoolFile("/dev/null").get("k")  # named directly: still not a pool


def test_symlinked_pool_directory_stays_allowed_on_a_live_system(tmp_path, pools):
    (pools / ".kvp_pool_1").write_bytes(rec(b"a", b"1"))
    os.symlink(pools, tmp_path / "link")
    with open_pool("guest", str(tmp_path / "link")) as guest:
        assert guest["a"] == "1"
        guest["b"] = "2"
    assert (pools / ".kvp_pool_1").read_bytes() == rec(b"a", b"1") + rec(b"b", b"2")


def test_undecodable_partial_saved_aside_is_listed_by_fsck(pools):
    (pools / ".kvp_pool_1").write_bytes(rec(b"a", b"1") + b"\xff" * 100)
    pool = PoolFile(str(pools / ".kvp_pool_1"))
    pool.set("b", "2")
    [finding] = [f for f in check(pool).findings if f.kind == "saved-partial"]
    assert ".pykvpd-partial-kvp_pool_1-" in finding.message and "ff" * 32 in finding.message
    assert not finding.repairable
    pool.close()


# --------------------------------------------------------------------------- disk images


def _image(tmp_path: Path) -> Path:
    image = tmp_path / "image"
    (image / "var/lib/hyperv").mkdir(parents=True)
    return image


def test_root_resolves_an_absolute_symlink_inside_the_image(tmp_path, outside):
    image = tmp_path / "image"
    (image / "var/lib").mkdir(parents=True)
    (image / "elsewhere").mkdir()
    host_side = tmp_path / "elsewhere"  # what the link names on the host: must stay untouched
    host_side.mkdir()
    os.symlink("/elsewhere", image / "var/lib/hyperv")
    os.symlink("../../..", image / "var/lib/up")  # ".." never leaves the image either
    for directory in ("/var/lib/hyperv", "/var/lib/up/elsewhere"):
        pools = PoolDir(directory, root=str(image), create=True)
        pools.pool(1).ensure_exists()
        pools.pool(1).set("k", directory)
        pools.close()
    # Both paths led to the image's /elsewhere: the second SET modified the first one's record.
    assert (image / "elsewhere/.kvp_pool_1").read_bytes() == rec(b"k", b"/var/lib/up/elsewhere")
    assert os.listdir(host_side) == []
    assert outside.read_bytes() == TARGET


def test_root_refuses_a_symlinked_pool_file_in_the_image(tmp_path, outside):
    image = _image(tmp_path)
    os.symlink(outside, image / "var/lib/hyperv/.kvp_pool_1")
    pools = PoolDir("/var/lib/hyperv", root=str(image))
    with pytest.raises(PoolError, match=r"image/var/lib/hyperv/\.kvp_pool_1: is a symbolic"):
        pools.pool(1).set("Foo", "bar")
    assert outside.read_bytes() == TARGET


def test_root_without_openat2_refuses_any_symlink_on_the_way(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_openat2_missing", True)
    image = _image(tmp_path)
    (image / "var/lib/hyperv/.kvp_pool_1").write_bytes(rec(b"a", b"1"))
    assert PoolDir("/var/lib/hyperv", root=str(image)).pool(1).get("a") == b"1"
    os.rename(image / "var/lib/hyperv", image / "var/lib/real")
    os.symlink("real", image / "var/lib/hyperv")
    with pytest.raises(PoolError, match="symbolic link \\('hyperv'\\) inside the image"):
        PoolDir("/var/lib/hyperv", root=str(image)).pool(1).get("a")


def test_missing_directory_is_its_own_error(tmp_path):
    with pytest.raises(PoolDirMissing, match="nope: no such directory"):
        PoolDir(str(tmp_path / "nope")).exists(1)
    with pytest.raises(FileNotFoundError):
        PoolDir(str(tmp_path / "nope")).pool(1).get("k")


# --------------------------------------------------------------------------- kvp and the daemon


def test_kvp_refuses_a_symlinked_pool_file(pools, outside):
    os.symlink(outside, pools / ".kvp_pool_1")
    result = kvp_process("--dir", str(pools), "set", "Foo", "bar")
    assert result.returncode != 0
    assert b".kvp_pool_1: is a symbolic link" in result.stderr
    assert b"Traceback" not in result.stderr
    assert outside.read_bytes() == TARGET


def test_kvp_root_refuses_a_symlinked_pool_file_in_the_image(tmp_path, outside):
    image = _image(tmp_path)
    os.symlink(outside, image / "var/lib/hyperv/.kvp_pool_1")
    for argv in (["set", "Foo", "bar"], ["fsck", "--repair", "-p", "1"], ["get", "Foo"]):
        result = kvp_process("--root", str(image), *argv)
        assert result.returncode != 0, argv
        assert b"symbolic link" in result.stderr, (argv, result.stderr)
    assert outside.read_bytes() == TARGET


def _daemon(tmp_path: Path, pools: Path) -> list:
    return [
        sys.executable, "-m", "pykvpd", "-n",
        "--device", str(tmp_path / "kvp.sock"),
        "--pool-dir", str(pools),
        "--config", str(tmp_path / "absent.conf"),
        "--status-file", str(tmp_path / "status.json"),
    ]  # fmt: skip


def test_daemon_will_not_start_on_a_symlinked_pool_file(tmp_path, pools, outside):
    os.symlink(outside, pools / ".kvp_pool_0")
    result = subprocess.run(
        _daemon(tmp_path, pools), cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert ".kvp_pool_0: is a symbolic link; refusing to follow it" in result.stderr
    assert outside.read_bytes() == TARGET


def test_daemon_refuses_a_pool_file_swapped_for_a_symlink_or_fifo(tmp_path, pools, outside):
    with FakeKernel(str(tmp_path / "kvp.sock")) as kernel:
        proc = subprocess.Popen(_daemon(tmp_path, pools), cwd=ROOT, stderr=subprocess.PIPE)
        try:
            assert kernel.wait_registered(15)
            ok = kernel.transact(p.build_key_message(p.OP_SET, 0, b"k", b"v"), timeout=10)
            assert p.reply_status(ok) == p.HV_S_OK
            os.rename(pools / ".kvp_pool_0", tmp_path / "moved")
            os.symlink(outside, pools / ".kvp_pool_0")
            reply = kernel.transact(p.build_key_message(p.OP_SET, 0, b"k", b"w"), timeout=10)
            assert p.reply_status(reply) == p.HV_S_CONT  # the handler's answer to a pool error
            os.unlink(pools / ".kvp_pool_0")
            os.mkfifo(pools / ".kvp_pool_0")
            reply = kernel.transact(p.build_key_message(p.OP_GET, 0, b"k"), timeout=10)
            assert p.reply_status(reply) != p.HV_S_OK
            assert proc.poll() is None  # still serving the other pools
            reply = kernel.transact(p.build_key_message(p.OP_SET, 1, b"k", b"v"), timeout=10)
            assert p.reply_status(reply) == p.HV_S_OK
        finally:
            proc.terminate()
            _out, err = proc.communicate(timeout=10)
    assert b".kvp_pool_0: is a symbolic link" in err and b"is a FIFO" in err
    assert outside.read_bytes() == TARGET


# --------------------------------------------------------------------------- permissions


def test_a_directory_the_user_cannot_enter_is_permission_error_not_empty():
    """As nobody: a 0700 root directory raises PoolPermissionError naming it (kvp exits 3)."""
    top = tempfile.mkdtemp(prefix="store-nobody-")
    try:
        os.chmod(top, 0o755)
        source = os.path.join(top, "src")
        shutil.copytree(os.path.join(ROOT, "pykvpd"), os.path.join(source, "pykvpd"))
        for base, dirs, names in os.walk(top):
            for entry in dirs + names:
                os.chmod(os.path.join(base, entry), 0o755)
        pools, readable = os.path.join(top, "hyperv"), os.path.join(top, "readable")
        for directory, mode in ((pools, 0o700), (readable, 0o755)):
            os.mkdir(directory, mode)
            with open(os.path.join(directory, ".kvp_pool_1"), "wb") as f:
                f.write(rec(b"a", b"1"))
        probe = f"""
import sys
sys.path.insert(0, {source!r})
from pykvpd.store import PoolDir, PoolPermissionError, open_pool
for call in (lambda: PoolDir({pools!r}).exists(1), lambda: open_pool("guest", {pools!r}).get("a")):
    try:
        call()
    except PoolPermissionError as exc:
        assert isinstance(exc, PermissionError) and exc.filename == {pools!r}, exc
        print(exc)
    else:
        print("no error")
with open_pool("guest", {readable!r}) as guest:  # root's 0644 file: read-only, no argument
    print(guest["a"], guest.writable)
    try:
        guest["b"] = "2"
    except Exception as exc:
        print(type(exc).__name__, exc)
"""
        done = None
        for python in (sys.executable, "/usr/bin/python3"):  # one under /root is not nobody's
            try:
                done = subprocess.run(
                    [python, "-c", probe],
                    preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)),
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
            except (PermissionError, FileNotFoundError):
                continue
            break
        if done is None:
            pytest.skip("no Python interpreter user nobody can run")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [f"{pools}: Permission denied"] * 2 + [
            "1 False",
            f"PoolError {readable}/.kvp_pool_1: opened read-only",
        ]
        with open(os.path.join(readable, ".kvp_pool_1"), "rb") as f:
            assert f.read() == rec(b"a", b"1")
    finally:
        shutil.rmtree(top)
