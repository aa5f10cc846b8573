"""``kvp watch`` on changes made by our daemon for the host (AddKvpItems, Modify, Remove).

The host side is the simulator's ``Host`` talking through its fake kernel to our daemon, which
writes pool 0 in a temporary directory. Two watchers follow that pool at the same time, each a
real ``kvp`` process: one with ``--json`` (events read from its stdout), one with ``--exec`` (a
hook that appends what it got -- ``KVP_POOL``, ``KVP_POOL_NAME``, ``KVP_KEY``, ``KVP_OP``,
``KVP_VALUE``, ``KVP_OLD_VALUE`` and its stdin -- as one JSON line to a log).

Watch events are differences between successive reads of the file, so two quick changes of one
key may coalesce (xenstore semantics, docs/kvp.md). "Exactly once per change" is therefore
checked in two ways that do not depend on timing: paced (the next host call is made only once
both watchers reported the previous change), and bursts of changes to distinct keys, where no
coalescing is allowed and every change must come out once, in host order.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

import pytest
from test_cli_helpers import ROOT

from pykvpd import protocol as p
from pykvpd.simulator import HostError, HostRequest
from pykvpd.simulator.runner import SimulatedGuest

WAIT = 20.0  # upper bound for an event to arrive; never asserted as a duration

HOOK = r"""
import json, os, sys
data = sys.stdin.buffer.read().decode("utf-8")
names = ("KVP_POOL", "KVP_POOL_NAME", "KVP_KEY", "KVP_OP", "KVP_VALUE", "KVP_OLD_VALUE")
entry = {name: os.environ.get(name) for name in names}
entry["stdin"] = data
with open(sys.argv[1], "a", encoding="utf-8") as log:
    log.write(json.dumps(entry) + "\n")
"""


class JsonWatch:
    """``kvp -p 0 watch --json``, its stdout lines collected by a thread."""

    def __init__(self, pool_dir: str, *options: str) -> None:
        self.proc = subprocess.Popen(
            kvp_cmd(pool_dir, "--json", "watch", *options),
            stdout=subprocess.PIPE,
            env=child_env(),
            cwd=ROOT,
        )
        self.lines: queue.Queue[Optional[bytes]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def take(self, count: int) -> List[dict]:
        """The next ``count`` events (fails if the watch ends or is silent for too long)."""
        got = []
        for _ in range(count):
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"kvp watch --json: no event within {WAIT:g} s after {got}")
            assert line is not None, f"kvp watch --json ended (status {self.proc.poll()})"
            got.append(json.loads(line))
        return got

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class ExecWatch:
    """``kvp -p 0 watch --exec python HOOK LOG``; the hook's log is read back."""

    def __init__(self, pool_dir: str, log: str) -> None:
        self.log = log
        self.seen = 0
        self.proc = subprocess.Popen(
            kvp_cmd(pool_dir, "watch", "--exec", sys.executable, "-c", HOOK, log),
            env=child_env(),
            cwd=ROOT,
        )

    def entries(self) -> List[dict]:
        if not os.path.exists(self.log):
            return []
        with open(self.log, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def take(self, count: int) -> List[dict]:
        """The next ``count`` hook runs (the log is polled: the test's side, not kvp's)."""
        deadline = time.monotonic() + WAIT
        while True:
            found = self.entries()
            if len(found) >= self.seen + count:
                got = found[self.seen : self.seen + count]
                self.seen += count
                return got
            assert self.proc.poll() is None, f"kvp watch --exec ended ({self.proc.returncode})"
            if time.monotonic() > deadline:
                pytest.fail(f"kvp watch --exec: {len(found) - self.seen} of {count} runs")
            time.sleep(0.01)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def child_env() -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=ROOT)


def kvp_cmd(pool_dir: str, *args: str) -> List[str]:
    return [sys.executable, "-m", "pykvpd.cli", "--dir", pool_dir, "-p", "0", *args]


def as_exec(op: str, key: str, value: Optional[str], old: Optional[str] = None) -> dict:
    """What the hook logs for one event on pool 0."""
    return {
        "KVP_POOL": "0",
        "KVP_POOL_NAME": "external",
        "KVP_KEY": key,
        "KVP_OP": op,
        "KVP_VALUE": value,
        "KVP_OLD_VALUE": old,
        "stdin": value or "",
    }


def as_json(op: str, key: str, value: Optional[str], old: Optional[str] = None) -> dict:
    return {
        "version": 2,
        "op": op,
        "pool": 0,
        "pool_name": "external",
        "key": key,
        "value": value,
        "old_value": old,
    }


@pytest.fixture()
def vm(tmp_path):
    guest = SimulatedGuest(workdir=str(tmp_path / "vm"), timeout=30.0)
    with guest:
        yield guest


@pytest.fixture()
def watchers(vm, tmp_path):
    started = []

    def start(expect_initial: Sequence[tuple]):
        """Both watchers, once each reported ``expect_initial`` (so their inotify is armed)."""
        js, ex = JsonWatch(vm.pool_dir), ExecWatch(vm.pool_dir, str(tmp_path / "hook.log"))
        started.extend([js, ex])
        want = list(expect_initial)
        assert js.take(len(want)) == [as_json("initial", k, v) for k, v in want]
        assert ex.take(len(want)) == [as_exec("initial", k, v) for k, v in want]
        return js, ex

    yield start
    for w in started:
        w.stop()


def both(js: JsonWatch, ex: ExecWatch, *events: tuple) -> None:
    """Both watchers report exactly these (op, key, value, old_value) events next, in order."""
    assert js.take(len(events)) == [as_json(*e) for e in events]
    assert ex.take(len(events)) == [as_exec(*e) for e in events]


def test_host_changes_fire_once_each_in_order(vm, watchers):
    vm.host.add_kvp_items({"Pre": "before the watch"})
    js, ex = watchers([("Pre", "before the watch")])
    host = vm.host

    host.add_kvp_items({"Env": "prod"})
    both(js, ex, ("add", "Env", "prod", None))
    host.add_kvp_items({"Count": 42})  # REG_U32, rendered by the kernel in decimal
    both(js, ex, ("add", "Count", "42", None))
    host.modify_kvp_items({"Env": "staging"})
    both(js, ex, ("modify", "Env", "staging", "prod"))
    host.modify_kvp_items({"Env": "staging"})  # the same value again: a trigger fires each time
    both(js, ex, ("modify", "Env", "staging", "staging"))
    host.modify_kvp_items({"Env": "staging"})
    both(js, ex, ("modify", "Env", "staging", "staging"))
    host.add_kvp_items({"Script": "line 1\nline 2 é ☃\n"})
    both(js, ex, ("add", "Script", "line 1\nline 2 é ☃\n", None))
    host.remove_kvp_items(["Count"])
    both(js, ex, ("delete", "Count", None, "42"))
    reply = host.request(HostRequest(p.OP_SET, p.POOL_GUEST, "NotWatched", "pool 1"))
    assert reply.status == p.HV_S_OK  # a pool the watchers do not follow: silent
    with pytest.raises(HostError) as missing:
        host.remove_kvp_items(["NeverAdded"])  # the daemon answers HV_S_CONT, file unchanged
    assert missing.value.status == p.HV_S_CONT
    host.remove_kvp_items(["Pre"])
    both(js, ex, ("delete", "Pre", None, "before the watch"))
    host.add_kvp_items({"End": "sentinel"})
    # Anything fired by the silent steps above would come out before this event.
    both(js, ex, ("add", "End", "sentinel", None))

    assert sorted(vm.records(0)) == [  # a DELETE moves the last record (compatibility C14)
        ("End", "sentinel"),
        ("Env", "staging"),
        ("Script", "line 1\nline 2 é ☃\n"),
    ]
    assert vm.records(1) == [("NotWatched", "pool 1")]


def test_bursts_of_host_changes_are_neither_lost_nor_repeated(vm, watchers):
    vm.host.add_kvp_items({"Ready": "1"})  # its initial event says the watch is armed
    js, ex = watchers([("Ready", "1")])
    keys = [f"burst-{i:02d}" for i in range(15)]
    host = vm.host

    for i, key in enumerate(keys):  # no pacing: the watchers may read after any of them
        host.add_kvp_items({key: f"v{i}"})
    both(js, ex, *[("add", k, f"v{i}", None) for i, k in enumerate(keys)])

    host.modify_kvp_items({key: f"w{i}" for i, key in enumerate(keys)})
    both(js, ex, *[("modify", k, f"w{i}", f"v{i}") for i, k in enumerate(keys)])

    host.remove_kvp_items(keys)
    # Coalesced deletes come in file order, which a DELETE changes (compatibility C14).
    deletes = [("delete", k, None, f"w{i}") for i, k in enumerate(keys)]
    assert sorted(js.take(len(keys)), key=lambda e: e["key"]) == [as_json(*e) for e in deletes]
    hooks = sorted(ex.take(len(keys)), key=lambda e: e["KVP_KEY"])
    assert hooks == [as_exec(*e) for e in deletes]  # KVP_OLD_VALUE is set for delete (docs)

    host.add_kvp_items({"End": "sentinel"})
    both(js, ex, ("add", "End", "sentinel", None))
    assert sorted(vm.records(0)) == [("End", "sentinel"), ("Ready", "1")]  # C14: order


def test_changes_only_skips_same_value_host_writes(vm):
    vm.host.add_kvp_items({"PatchNow": "1"})
    every, changes = JsonWatch(vm.pool_dir), JsonWatch(vm.pool_dir, "--changes-only")
    try:
        for watch in (every, changes):
            assert watch.take(1) == [as_json("initial", "PatchNow", "1")]
        vm.host.modify_kvp_items({"PatchNow": "1"})
        assert every.take(1) == [as_json("modify", "PatchNow", "1", "1")]
        vm.host.modify_kvp_items({"PatchNow": "2"})
        # The same-value write would come out before this change; --changes-only has only it.
        assert changes.take(1) == [as_json("modify", "PatchNow", "2", "1")]
        assert every.take(1) == [as_json("modify", "PatchNow", "2", "1")]
    finally:
        every.stop()
        changes.stop()
