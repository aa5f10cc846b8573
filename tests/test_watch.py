"""watch: inotify-driven key events, hooks, and the kvp watch / kvp wait commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
from test_cli_helpers import ROOT, kvp, kvp_argv, rec, write_pool

from pykvpd.store import PoolDir
from pykvpd.watch import Change, PoolWatcher, diff

WAIT = 20.0  # generous upper bound for anything to happen; never asserted as a duration


def ops(changes: List[Change]):
    return [(c.op, c.pool, c.key, c.value) for c in changes]


def next_changes(watcher: PoolWatcher) -> List[Change]:
    found = watcher.changes(WAIT)
    assert found, "no event within the bound"
    return found


@pytest.fixture()
def pooldir(tmp_path):
    directory = tmp_path / "hyperv"
    directory.mkdir()
    return str(directory)


def test_diff_orders_deletes_then_file_order():
    old = {"a": "1", "b": "2", "c": "3"}
    new = {"c": "3", "d": "4", "a": "9"}
    assert ops(diff(1, old, new)) == [
        ("delete", 1, "b", None),
        ("add", 1, "d", "4"),
        ("modify", 1, "a", "9"),
    ]


def test_initial_then_one_event_per_change(pooldir):
    write_pool(pooldir, 0, rec(b"Host", b"h"))
    write_pool(pooldir, 1, rec(b"A", b"1") + rec(b"B", b"2"))
    pools = PoolDir(pooldir, create=True)
    with PoolWatcher(pooldir, range(5)) as watcher:
        assert ops(watcher.initial()) == [
            ("initial", 0, "Host", "h"),
            ("initial", 1, "A", "1"),
            ("initial", 1, "B", "2"),
        ]
        pools.pool(1).set("C", "3")
        assert ops(next_changes(watcher)) == [("add", 1, "C", "3")]
        pools.pool(1).set("A", "one")
        (change,) = next_changes(watcher)
        assert (change.op, change.key, change.value, change.old_value) == (
            "modify",
            "A",
            "one",
            "1",
        )
        pools.pool(1).delete("B")
        assert ops(next_changes(watcher)) == [("delete", 1, "B", None)]
        pools.pool(3).set("P", "x")  # a pool file that did not exist
        assert ops(next_changes(watcher)) == [("add", 3, "P", "x")]
        pools.pool(1).set("A", "one")  # same value: nothing to report
        pools.pool(1).set("D", "4")
        assert ops(next_changes(watcher)) == [("add", 1, "D", "4")]
    pools.close()


def test_fast_changes_coalesce_per_key(pooldir):
    pools = PoolDir(pooldir, create=True)
    pools.pool(1).set("A", "1")
    with PoolWatcher(pooldir, [1]) as watcher:
        watcher.initial()
        pools.pool(1).set("A", "2")
        pools.pool(1).set("A", "3")
        pools.pool(1).set("Gone", "x")
        pools.pool(1).delete("Gone")
        found = next_changes(watcher)
        while found[-1].value != "3":  # the first read may land between the writes
            found += next_changes(watcher)
        assert found[-1] == Change("modify", 1, "A", "3", found[-1].old_value)
        assert all(c.key == "A" or c.key == "Gone" for c in found)
    pools.close()


def test_key_filter_and_unwatched_pools_are_silent(pooldir):
    pools = PoolDir(pooldir, create=True)
    match = lambda key: key == "Want" or key.startswith("ignition.")  # noqa: E731
    with PoolWatcher(pooldir, [0], match) as watcher:
        assert watcher.initial() == []
        pools.pool(1).set("Want", "other pool")
        pools.pool(0).set("Other", "x")
        assert watcher.changes(0.3) == []
        pools.pool(0).set("ignition.config.0", "{}")
        assert ops(next_changes(watcher)) == [("add", 0, "ignition.config.0", "{}")]
    pools.close()


def test_directory_created_later_and_file_replaced_or_removed(tmp_path):
    directory = str(tmp_path / "late")
    with PoolWatcher(directory, [0]) as watcher:
        assert watcher.initial() == []
        os.mkdir(directory)
        write_pool(directory, 0, rec(b"K", b"1"))
        found = next_changes(watcher)
        assert ops(found) == [("add", 0, "K", "1")]
        # Ignition-style rewrite: a new file renamed over the pool.
        tmp = os.path.join(directory, "new")
        with open(tmp, "wb") as f:
            f.write(rec(b"K", b"2") + rec(b"L", b"3"))
        os.rename(tmp, os.path.join(directory, ".kvp_pool_0"))
        assert ops(next_changes(watcher)) == [("modify", 0, "K", "2"), ("add", 0, "L", "3")]
        os.unlink(os.path.join(directory, ".kvp_pool_0"))
        assert ops(next_changes(watcher)) == [("delete", 0, "K", None), ("delete", 0, "L", None)]


def test_changes_times_out_with_nothing(pooldir):
    with PoolWatcher(pooldir, [1]) as watcher:
        watcher.initial()
        assert watcher.changes(0.05) == []


# --------------------------------------------------------------------------- kvp watch / wait


def _start(args, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen(kvp_argv() + args, env=env, cwd=ROOT, **kw)


def _wait_lines(path, count: int) -> List[str]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if os.path.exists(path):
            lines = Path(path).read_text().splitlines()
            if len(lines) >= count:
                return lines
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} lines in {path}")


def test_kvp_watch_exec_fires_once_per_change_in_order(pooldir, tmp_path):
    log_file = tmp_path / "hook.log"
    hook = (
        "import os, sys\n"
        "value = sys.stdin.read()\n"
        f"with open({str(log_file)!r}, 'a') as f:\n"
        "    f.write(' '.join([os.environ['KVP_OP'], os.environ['KVP_POOL'],"
        " os.environ['KVP_KEY'], value]) + '\\n')\n"
        "sys.exit(3 if value == 'fail' else 0)\n"
    )
    write_pool(pooldir, 0, rec(b"PatchNow", b"v0"))
    proc = _start(
        ["--dir", pooldir, "watch", "PatchNow", "--pool", "external", "--hook-timeout", "10"]
        + ["--exec", sys.executable, "-c", hook],
        stderr=subprocess.PIPE,
    )
    try:
        assert _wait_lines(log_file, 1) == ["initial 0 PatchNow v0"]
        steps = [
            (("set", "PatchNow", "v1"), "modify 0 PatchNow v1"),
            (("set", "PatchNow", "fail"), "modify 0 PatchNow fail"),
            (("set", "Unwatched", "x"), None),
            (("set", "PatchNow", "v2"), "modify 0 PatchNow v2"),
            (("delete", "PatchNow"), "delete 0 PatchNow "),
            (("set", "PatchNow", "v3"), "add 0 PatchNow v3"),
        ]
        expected = ["initial 0 PatchNow v0"]
        for argv, line in steps:
            assert kvp("--dir", pooldir, "--pool", "0", *argv)[0] == 0
            if line is not None:
                expected.append(line)
                assert _wait_lines(log_file, len(expected)) == expected
        assert log_file.read_text().splitlines() == expected  # exactly once each
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=WAIT)
    assert "exited with status 3" in err.decode()
    assert proc.returncode == 128 + 15


def test_kvp_watch_json_count_and_op_filter(pooldir):
    write_pool(pooldir, 1, rec(b"A", b"1"))
    proc = _start(
        ["--dir", pooldir, "watch", "--json", "--op", "add,delete", "-n", "2"],
        stdout=subprocess.PIPE,
    )
    try:
        # No "ready" marker exists without an initial event; keep changing until both arrive.
        kvp("--dir", pooldir, "set", "B", "2")
        deadline = time.monotonic() + WAIT
        while proc.poll() is None and time.monotonic() < deadline:
            kvp("--dir", pooldir, "delete", "B")
            kvp("--dir", pooldir, "set", "B", "2")
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert len(events) == 2
    for event in events:
        assert set(event) == {"version", "op", "pool", "pool_name", "key", "value", "old_value"}
        assert event["op"] in ("add", "delete") and event["key"] == "B"


def test_kvp_wait_timeout_and_success(pooldir):
    code, out, err = kvp("--dir", pooldir, "wait", "Ready", "--timeout", "0.2")
    assert (code, out) == (1, b"") and "timed out" in err
    proc = _start(
        ["--dir", pooldir, "wait", "Ready", "--value", "yes", "--timeout", "60", "--json"],
        stdout=subprocess.PIPE,
    )
    try:
        kvp("--dir", pooldir, "set", "Ready", "no")
        kvp("--dir", pooldir, "set", "Ready", "no", "--pool", "0")
        assert proc.poll() is None or proc.returncode == 0
        kvp("--dir", pooldir, "set", "Ready", "yes", "--pool", "3")
        out, _ = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert json.loads(out) == {
        "version": 2,
        "found": True,
        "pool": 3,
        "pool_name": "auto-external",
        "key": "Ready",
        "value": "yes",
    }
    assert kvp("--dir", pooldir, "wait", "Ready", "--timeout", "0")[:2] == (
        0,
        b"no\n",
    )  # pool 0 first


# --------------------------------------------------------------------------- host re-writes


def test_logged_same_value_writes_are_modify_events_unless_turned_off(pooldir):
    from pykvpd.hostwrites import HostWriteLog

    pools = PoolDir(pooldir, create=True)
    pools.pool(0).set("PatchNow", "1")
    pools.pool(0).set("Other", "x")
    writes = HostWriteLog(pooldir)
    writes.record(0, b"PatchNow")  # written before the watch started: not reported
    with PoolWatcher(pooldir, [0]) as every, PoolWatcher(pooldir, [0], rewrites=False) as changes:
        assert ops(every.initial()) == [
            ("initial", 0, "PatchNow", "1"),
            ("initial", 0, "Other", "x"),
        ]
        changes.initial()
        for _ in range(2):  # the daemon's part of a host SET PatchNow=1: pool, then the log
            pools.pool(0).set("PatchNow", "1")
            writes.record(0, b"PatchNow")
            (change,) = next_changes(every)
            assert (change.op, change.key, change.value, change.old_value) == (
                "modify",
                "PatchNow",
                "1",
                "1",
            )
        pools.pool(0).set("Other", "y")
        assert ops(next_changes(changes)) == [("modify", 0, "Other", "y")]  # nothing before it
        assert ops(next_changes(every)) == [("modify", 0, "Other", "y")]
        writes.record(1, b"PatchNow")  # a pool this watch does not follow
        writes.record(0, b"Gone")  # a key no longer in the pool
        pools.pool(0).set("End", "1")
        assert ops(next_changes(every)) == [("add", 0, "End", "1")]
    writes.close()
    pools.close()


def test_absent_keys_fire_once_at_start():
    from pykvpd.watch import absent_initial

    present = [Change("initial", 1, "Env", "prod")]
    assert ops(absent_initial(["PatchNow", "Env", "E*", "X?"], present)) == [
        ("initial", None, "PatchNow", None),
        ("initial", None, "X?", None),
    ]
    assert ops(absent_initial([], [])) == [("initial", None, "*", None)]
    assert absent_initial([], present) == []


def test_a_pool_locked_too_long_is_retried_and_said_once_then_read(pooldir, caplog):
    """A pool that cannot be read after the start (here: another program holds its lock past
    --lock-timeout) is tried again each second; the warning is logged once, not per try."""
    from test_locking import Holder

    path = Path(pooldir) / ".kvp_pool_1"
    write_pool(pooldir, 1, rec(b"A", b"1"))
    caplog.set_level("WARNING", logger="pykvpd.watch")
    with PoolWatcher(pooldir, [1], lock_timeout=0.2) as watcher:
        assert ops(watcher.initial()) == [("initial", 1, "A", "1")]
        holder = Holder(path, "posix", "ex", "forever")
        try:
            with open(path, "ab") as f:  # a write the lock holder might make: an inotify event
                f.write(rec(b"B", b"2"))
            assert watcher.changes(2.5) == []  # several tries, each a lock timeout
        finally:
            holder.finish()
        assert ops(next_changes(watcher)) == [("add", 1, "B", "2")]
    said = [r.getMessage() for r in caplog.records if r.name == "pykvpd.watch"]
    assert len(said) == 2, said
    assert said[0].startswith(f"{path}: ") and said[0].endswith("(will retry)")
    assert said[1] == f"{path} can be read again"
