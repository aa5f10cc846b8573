"""Lock interplay between PoolFile and other processes: the C daemon (classic POSIX fcntl
F_WRLCK), cloud-init (BSD flock LOCK_EX) and other pykvpd instances.

Other processes are real subprocesses; ordering is asserted through the file's bytes, never
through elapsed time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pykvpd.store import LockTimeout, PoolFile

RS = 2560

# Holds a lock on the pool file the way another program does, says "locked", then either waits
# for stdin to close ("forever") or sleeps, optionally writes, and releases by exiting.
HOLDER = r"""
import fcntl, os, sys, time
path, kind, mode, hold, action = sys.argv[1:6]
fd = os.open(path, os.O_RDWR)
if kind == "posix":  # classic record lock, whole file, as hv_kvp_daemon takes it
    fcntl.lockf(fd, fcntl.LOCK_EX if mode == "ex" else fcntl.LOCK_SH)
else:  # BSD flock, as cloud-init takes it
    fcntl.flock(fd, fcntl.LOCK_EX if mode == "ex" else fcntl.LOCK_SH)
print("locked", flush=True)
if hold == "forever":
    sys.stdin.read()
else:
    time.sleep(float(hold))
if action.startswith("append:"):
    data = bytes.fromhex(action[7:])
    os.pwrite(fd, data, os.fstat(fd).st_size)  # same fd: closing another would drop the lock
elif action.startswith("replace:"):
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(bytes.fromhex(action[8:]))
    os.rename(tmp, path)
os.close(fd)
"""

# Tries every kind of lock without blocking, each on its own descriptor, and reports.
PROBE = r"""
import fcntl, json, os, sys
path = sys.argv[1]
result = {}
for kind in ("posix", "flock"):
    for mode in ("ex", "sh"):
        fd = os.open(path, os.O_RDWR)
        flag = (fcntl.LOCK_EX if mode == "ex" else fcntl.LOCK_SH) | fcntl.LOCK_NB
        try:
            (fcntl.lockf if kind == "posix" else fcntl.flock)(fd, flag)
            result[kind + "_" + mode] = True
        except OSError:
            result[kind + "_" + mode] = False
        os.close(fd)
print(json.dumps(result))
"""


def R(key: bytes, value: bytes) -> bytes:
    return key + bytes(512 - len(key)) + value + bytes(2048 - len(value))


class Holder:
    def __init__(self, path: Path, kind: str, mode: str, hold: str, action: str = "-") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path), kind, mode, hold, action],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        line = self.proc.stdout.readline()
        assert line == b"locked\n", line

    def finish(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0
        self.proc.stdout.close()


def probe(path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], check=True, capture_output=True, timeout=30
    )
    return json.loads(out.stdout)


@pytest.fixture
def pool_path(tmp_path: Path) -> Path:
    path = tmp_path / ".kvp_pool_1"
    path.write_bytes(b"")
    return path


# --------------------------------------------------------------------------- writers wait


@pytest.mark.parametrize("kind", ["posix", "flock"])
def test_write_waits_for_foreign_exclusive_lock(pool_path, kind):
    """The foreign writer appends A while holding its lock; our SET of B must land after it."""
    holder = Holder(pool_path, kind, "ex", "0.5", "append:" + R(b"A", b"from-other").hex())
    pool = PoolFile(str(pool_path), lock_timeout=30)
    try:
        assert pool.set("B", "from-us") is True
        assert pool_path.read_bytes() == R(b"A", b"from-other") + R(b"B", b"from-us")
    finally:
        pool.close()
        holder.finish()


@pytest.mark.parametrize("kind", ["posix", "flock"])
def test_delete_waits_and_sees_foreign_append(pool_path, kind):
    pool_path.write_bytes(R(b"x", b"1"))
    holder = Holder(pool_path, kind, "ex", "0.5", "append:" + R(b"A", b"2").hex())
    pool = PoolFile(str(pool_path), lock_timeout=30)
    try:
        assert pool.delete("x") is True
        assert pool_path.read_bytes() == R(b"A", b"2")  # the foreign record is not lost
    finally:
        pool.close()
        holder.finish()


@pytest.mark.parametrize("kind", ["posix", "flock"])
def test_write_follows_replacement_made_while_waiting(pool_path, kind):
    """A foreign writer renames a new file over the pool while we wait for its lock: our change
    goes into the file now at the path, not into the orphaned inode."""
    pool_path.write_bytes(R(b"old", b"1"))
    old_ino = os.stat(pool_path).st_ino
    pool = PoolFile(str(pool_path), lock_timeout=30)
    assert pool.get("old") == b"1"  # holds a descriptor of the old inode
    holder = Holder(pool_path, kind, "ex", "0.5", "replace:" + R(b"new", b"2").hex())
    try:
        assert pool.set("B", "3") is True
        assert os.stat(pool_path).st_ino != old_ino
        assert pool_path.read_bytes() == R(b"new", b"2") + R(b"B", b"3")
        assert pool.get("old") is None
    finally:
        pool.close()
        holder.finish()


@pytest.mark.parametrize("kind", ["posix", "flock"])
@pytest.mark.parametrize("mode", ["ex", "sh"])
def test_write_times_out_when_lock_never_released(pool_path, kind, mode):
    pool_path.write_bytes(R(b"a", b"1"))
    holder = Holder(pool_path, kind, mode, "forever")
    pool = PoolFile(str(pool_path), lock_timeout=0.2)
    try:
        with pytest.raises(LockTimeout, match="still locked by another process after 0.2 s"):
            pool.set("b", "2")
        with pytest.raises(LockTimeout):
            pool.delete("a")
        assert pool_path.read_bytes() == R(b"a", b"1")
    finally:
        pool.close()
        holder.finish()
    # once released, the same instance works again (no lock left half-taken)
    pool = PoolFile(str(pool_path), lock_timeout=5)
    pool.set("b", "2")
    assert pool_path.read_bytes() == R(b"a", b"1") + R(b"b", b"2")
    pool.close()


def test_timeout_leaves_no_flock_behind_when_fcntl_part_fails(pool_path):
    """flock is taken first; if the fcntl lock then times out, the flock must be released."""
    holder = Holder(pool_path, "posix", "ex", "forever")
    pool = PoolFile(str(pool_path), lock_timeout=0.2)
    try:
        with pytest.raises(LockTimeout):
            pool.set("b", "2")
        state = probe(pool_path)
        assert state["flock_ex"] is True  # our flock is gone
        assert state["posix_ex"] is False  # the holder's lock is still there
    finally:
        pool.close()
        holder.finish()


# --------------------------------------------------------------------------- readers


@pytest.mark.parametrize("kind", ["posix", "flock"])
def test_read_under_foreign_shared_lock(pool_path, kind):
    pool_path.write_bytes(R(b"a", b"1"))
    holder = Holder(pool_path, kind, "sh", "forever")
    pool = PoolFile(str(pool_path), lock_timeout=0.2)
    try:
        assert pool.get("a") == b"1"
        assert pool.enumerate(0).key == b"a"
        with pytest.raises(LockTimeout):
            pool.set("a", "2")
    finally:
        pool.close()
        holder.finish()
    assert pool_path.read_bytes() == R(b"a", b"1")


@pytest.mark.parametrize("kind", ["posix", "flock"])
def test_read_waits_for_foreign_exclusive_lock(pool_path, kind):
    pool_path.write_bytes(R(b"a", b"1"))
    holder = Holder(pool_path, kind, "ex", "forever")
    pool = PoolFile(str(pool_path), lock_timeout=0.2)
    try:
        with pytest.raises(LockTimeout):
            pool.get("a")
        with pytest.raises(LockTimeout):
            pool.enumerate(0)
    finally:
        pool.close()
        holder.finish()


@pytest.mark.parametrize("kind", ["posix", "flock"])
def test_read_sees_write_made_under_foreign_lock(pool_path, kind):
    holder = Holder(pool_path, kind, "ex", "0.5", "append:" + R(b"A", b"x").hex())
    pool = PoolFile(str(pool_path), lock_timeout=30)
    try:
        assert pool.get("A") == b"x"  # waited: never a read of the half-written state
    finally:
        pool.close()
        holder.finish()


def test_two_readers_at_once(pool_path):
    pool_path.write_bytes(R(b"a", b"1"))
    first = PoolFile(str(pool_path), lock_timeout=0.2)
    second = PoolFile(str(pool_path), lock_timeout=0.2)
    writer = PoolFile(str(pool_path), lock_timeout=0.2)
    try:
        with first._locked(exclusive=False):
            assert second.get("a") == b"1"
            assert second.enumerate(0).value == b"1"
            with pytest.raises(LockTimeout):
                writer.set("b", "2")
        writer.set("b", "2")
        assert pool_path.read_bytes() == R(b"a", b"1") + R(b"b", b"2")
    finally:
        for pool in (first, second, writer):
            pool.close()


# --------------------------------------------------------------------------- what others see


def test_write_lock_excludes_c_daemon_and_cloud_init(pool_path):
    pool = PoolFile(str(pool_path))
    try:
        with pool._locked(exclusive=True):
            assert probe(pool_path) == {
                "posix_ex": False,
                "posix_sh": False,
                "flock_ex": False,
                "flock_sh": False,
            }
        assert probe(pool_path) == dict.fromkeys(
            ("posix_ex", "posix_sh", "flock_ex", "flock_sh"), True
        )
    finally:
        pool.close()


def test_read_lock_is_shared_for_both_kinds(pool_path):
    pool = PoolFile(str(pool_path))
    try:
        with pool._locked(exclusive=False):
            assert probe(pool_path) == {
                "posix_ex": False,
                "posix_sh": True,
                "flock_ex": False,
                "flock_sh": True,
            }
    finally:
        pool.close()


def test_locks_released_after_every_operation(pool_path):
    pool = PoolFile(str(pool_path))
    try:
        pool.set("a", "1")
        pool.get("a")
        pool.enumerate(0)
        pool.delete("a")
        pool.clear()
        assert all(probe(pool_path).values())
    finally:
        pool.close()


def test_closing_another_descriptor_does_not_drop_our_lock(pool_path):
    """Classic POSIX locks vanish when the process closes any descriptor of the file; the
    open-file-description lock the pool store uses must survive that."""
    pool = PoolFile(str(pool_path))
    try:
        with pool._locked(exclusive=True):
            with open(pool_path, "rb") as f:
                f.read()
            state = probe(pool_path)
            assert state["posix_ex"] is False and state["posix_sh"] is False
    finally:
        pool.close()
