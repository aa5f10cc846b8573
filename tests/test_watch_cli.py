"""kvp watch as scripts use it: stopping, escaping, start events, --exec checks, time limits."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import List

import pytest
from test_cli_helpers import ROOT, kvp, kvp_argv, rec, write_pool

WAIT = 20.0  # generous upper bound for anything to happen; never asserted as a duration


@pytest.fixture()
def pooldir(tmp_path):
    directory = tmp_path / "hyperv"
    directory.mkdir()
    return str(directory)


def start(args: List[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen(kvp_argv() + args, env=env, cwd=ROOT, **kw)


def wait_file(path: Path, lines: int) -> List[str]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if path.exists():
            found = path.read_text().splitlines()
            if len(found) >= lines:
                return found
        time.sleep(0.02)
    raise AssertionError(f"fewer than {lines} lines in {path}")


def group_members(pgid: int) -> List[int]:
    """Live processes whose process group is ``pgid`` (from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def wait_group_gone(pgid: int) -> List[int]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and group_members(pgid):
        time.sleep(0.05)
    return group_members(pgid)


def child_sh(tmp_path: Path) -> Path:
    """The issue's hook: ``sleep 101 & sleep 102``, noting its pid first."""
    script = tmp_path / "child.sh"
    script.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/hook.pid\nsleep 101 & sleep 102\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_kvp_watch_stops_the_hook_and_its_children(pooldir, tmp_path, sig):
    write_pool(pooldir, 1, rec(b"X", b"v"))
    proc = start(["--dir", pooldir, "watch", "X", "--exec", str(child_sh(tmp_path))])
    try:
        (pid,) = map(int, wait_file(tmp_path / "hook.pid", 1))  # the initial event's run
        deadline = time.monotonic() + WAIT
        while len(group_members(pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)  # sh, sleep 101, sleep 102
        assert len(group_members(pid)) == 3
        proc.send_signal(sig)
        assert proc.wait(WAIT) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
    assert wait_group_gone(pid) == []


def test_sigint_stops_a_watch_started_in_the_background_by_a_script(pooldir, tmp_path):
    """``kvp watch ... &`` in a shell script starts with SIGINT ignored; ``kill -INT $!`` must
    still stop it and its hook (it used to be ignored: kvp and the hook ran on)."""
    write_pool(pooldir, 1, rec(b"X", b"v"))
    proc = start(
        ["--dir", pooldir, "watch", "X", "--exec", str(child_sh(tmp_path))],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # what sh does for &
    )
    try:
        (pid,) = map(int, wait_file(tmp_path / "hook.pid", 1))
        deadline = time.monotonic() + WAIT
        while len(group_members(pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert wait_group_gone(pid) == []


FORGED = "Fake\tvalue\ndelete\texternal\tPatchNow"


def test_watch_text_output_escapes_a_forged_key(pooldir):
    write_pool(pooldir, 0, rec(FORGED.encode(), b"x\ty"))
    code, out, err = kvp("--dir", pooldir, "watch", "-n", "1")
    assert code == 0, err
    assert out == b"initial\texternal\tFake\\tvalue\\ndelete\\texternal\\tPatchNow\tx\\ty\n"
    code, out, _ = kvp("--dir", pooldir, "--raw", "watch", "-n", "1")
    assert out == b"initial\texternal\tFake\\tvalue\\ndelete\\texternal\\tPatchNow\tx\ty\n"
    code, listed, _ = kvp("--dir", pooldir, "list", "-p", "0")
    assert b"Fake\\tvalue\\ndelete\\texternal\\tPatchNow" in listed  # the same escaping


def test_terminal_controls_and_bidi_overrides_from_the_host_are_escaped(pooldir):
    """An 8-bit CSI (U+009B), a bidi override (U+202E) or a line separator (U+2028) in a key or
    value would make a terminal show something else than what is stored."""
    key, value = "Key\u009b2J\u202eevil", "one\u2028two"
    write_pool(pooldir, 0, rec(key.encode(), value.encode()))
    shown_key, shown_value = "Key\\xc2\\x9b2J\\xe2\\x80\\xaeevil", "one\\xe2\\x80\\xa8two"
    code, out, err = kvp("--dir", pooldir, "watch", "-n", "1")
    assert (code, out.decode()) == (0, f"initial\texternal\t{shown_key}\t{shown_value}\n"), err
    code, listed, _ = kvp("--dir", pooldir, "list", "-p", "0")
    assert f"{shown_key}  {shown_value}" in listed.decode()
    code, got, _ = kvp("--dir", pooldir, "get", key)
    assert got == value.encode() + b"\n"  # get prints the value as stored


def test_watch_fires_once_at_start_for_an_absent_key(pooldir, tmp_path):
    write_pool(pooldir, 1, rec(b"Present", b"1"))
    code, out, err = kvp("--dir", pooldir, "watch", "Missing", "Present", "-n", "2")
    assert code == 0, err
    assert out == b"initial\tguest\tPresent\t1\ninitial\t\tMissing\t\n"
    code, out, _ = kvp("--dir", pooldir, "--json", "watch", "Missing", "-n", "1")
    assert out == (
        b'{"version": 2, "op": "initial", "pool": null, "pool_name": null, "key": "Missing",'
        b' "value": null, "old_value": null}\n'
    )
    env_file = tmp_path / "env"
    hook = f"env | grep ^KVP_ | sort > {env_file}"
    code, _, err = kvp("--dir", pooldir, "watch", "Missing", "-n", "1", "--exec", "sh", "-c", hook)
    assert code == 0, err
    assert env_file.read_text().splitlines() == [
        "KVP_KEY=Missing",
        "KVP_OP=initial",
        "KVP_POOL=",
        "KVP_POOL_NAME=",
    ]


def test_exec_of_a_missing_or_non_executable_command_fails_at_start(pooldir, tmp_path):
    code, _, err = kvp("--dir", pooldir, "watch", "--exec", str(tmp_path / "nope"))
    assert code == 2 and f"--exec {tmp_path / 'nope'}: no such file" in err
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    code, _, err = kvp("--dir", pooldir, "watch", "--exec", str(plain))
    assert code == 2 and "not executable" in err
    code, _, err = kvp("--dir", pooldir, "watch", "--exec", "no-such-command-anywhere")
    assert code == 2 and "no-such-command-anywhere: not found in $PATH" in err


def test_timeout_is_total_time_for_watch_as_for_wait(pooldir):
    write_pool(pooldir, 1, rec(b"A", b"1"))
    code, out, err = kvp("--dir", pooldir, "watch", "A", "--timeout", "0.3")
    assert (code, out) == (1, b"initial\tguest\tA\t1\n")
    assert "timed out after 0.3 s" in err
    code, out, err = kvp("--dir", pooldir, "wait", "B", "--timeout", "0.3")
    assert (code, out) == (1, b"") and "timed out after 0.3 s" in err
    code, out, _ = kvp("--dir", pooldir, "watch", "A", "-n", "1", "--timeout", "5")
    assert code == 0  # the count came first


def test_timeout_stops_a_running_hook_and_exits_1(pooldir, tmp_path):
    write_pool(pooldir, 1, rec(b"X", b"v"))
    proc = start(
        ["--dir", pooldir, "watch", "X", "--timeout", "1", "--exec", str(child_sh(tmp_path))],
        stderr=subprocess.PIPE,
    )
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 1, err
    (pid,) = map(int, (tmp_path / "hook.pid").read_text().split())
    assert wait_group_gone(pid) == []


def test_hook_timeout_limits_each_run_and_exit_on_failure(pooldir, tmp_path):
    write_pool(pooldir, 1, rec(b"X", b"v"))
    proc = start(
        ["--dir", pooldir, "watch", "X", "-n", "1", "--hook-timeout", "0.5"]
        + ["--exec", str(child_sh(tmp_path))],
        stderr=subprocess.PIPE,
    )
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0  # the run was stopped, logged, and counted
    assert b"still running after 0.5 s: stopped" in err
    (pid,) = map(int, (tmp_path / "hook.pid").read_text().split())
    assert wait_group_gone(pid) == []

    code, _, err = kvp("--dir", pooldir, "watch", "X", "--exit-on-failure", "--exec", "false")
    assert code == 4 and "exited with status 1" in err
    code, _, err = kvp(
        "--dir", pooldir, "watch", "X", "-n", "1", "--exit-on-failure", "--exec", "true"
    )
    assert code == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--hook-timeout", "5"], "--hook-timeout limits each run of --exec"),
        (["--exit-on-failure"], "--exit-on-failure needs --exec"),
        (["--hook-timeout", "0", "--exec", "true"], "argument --hook-timeout"),
        (["--hook-timeout", "nan", "--exec", "true"], "argument --hook-timeout"),
        (["--hook-timeout", "inf", "--exec", "true"], "argument --hook-timeout"),
        (["--hook-timeout", "-1", "--exec", "true"], "argument --hook-timeout"),
        (["--hook-timeout", "1e10", "--exec", "true"], "argument --hook-timeout"),
        (["--timeout", "nan"], "argument --timeout"),
    ],
)
def test_watch_option_errors(pooldir, argv, message):
    code, out, err = kvp("--dir", pooldir, "watch", *argv)
    assert code == 2 and message in err and out == b""


def test_bash_completion_offers_every_watch_option():
    import argparse
    import re

    from pykvpd.cli.commands import watch

    parser = argparse.ArgumentParser(add_help=False)
    watch.add_arguments(parser)
    options = {s for a in parser._actions for s in a.option_strings}
    script = Path(ROOT, "completion", "kvp.bash").read_text()
    (line,) = re.findall(r'^\s*watch\) opts\+=" ([^"]*)" ;;$', script, re.M)
    assert set(line.split()) == options
