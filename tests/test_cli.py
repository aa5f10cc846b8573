"""kvp commands, options, output formats and exit codes, checked against the bytes in the files."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest
from test_cli_helpers import ROOT, kvp, kvp_process, read_pool, rec, records_of, write_pool

from pykvpd import cli


@pytest.fixture()
def pools(tmp_path):
    directory = tmp_path / "hyperv"
    directory.mkdir()
    return str(directory)


# --------------------------------------------------------------------------- set / get


def test_set_writes_one_zero_filled_record_in_guest_pool(pools):
    assert kvp("--dir", pools, "set", "DeploymentState", "ready")[0] == 0
    assert read_pool(pools, 1) == rec(b"DeploymentState", b"ready")
    assert not os.path.exists(os.path.join(pools, ".kvp_pool_0"))


def test_set_modify_rewrites_in_place_and_zero_fills(pools):
    kvp("--dir", pools, "set", "Foo", "Bar")
    kvp("--dir", pools, "set", "Other", "x")
    assert kvp("--dir", pools, "set", "Foo", "B")[0] == 0
    assert read_pool(pools, 1) == rec(b"Foo", b"B") + rec(b"Other", b"x")


def test_get_prints_value_with_newline_and_exit_0(pools):
    write_pool(pools, 1, rec(b"K", b"v1"))
    assert kvp("--dir", pools, "get", "K") == (0, b"v1\n", "")


def test_get_missing_key_exits_1_with_message(pools):
    write_pool(pools, 1, rec(b"K", b"v"))
    code, out, err = kvp("--dir", pools, "get", "Nope")
    assert (code, out) == (1, b"")
    assert "Nope: not found in any pool" in err


def test_get_search_order_prefers_host_pools(pools):
    write_pool(pools, 1, rec(b"K", b"guest"))
    write_pool(pools, 3, rec(b"K", b"params"))
    assert kvp("--dir", pools, "get", "K")[1] == b"params\n"
    write_pool(pools, 0, rec(b"K", b"external"))
    assert kvp("--dir", pools, "get", "K")[1] == b"external\n"
    assert kvp("--dir", pools, "get", "K", "--pool", "guest")[1] == b"guest\n"
    assert kvp("--dir", pools, "--pool", "1", "get", "K")[1] == b"guest\n"


def test_get_returns_first_of_duplicates_like_the_daemon(pools):
    write_pool(pools, 0, rec(b"K", b"first") + rec(b"K", b"second"))
    assert kvp("--dir", pools, "get", "K")[1] == b"first\n"


def test_get_output_modes(pools):
    write_pool(pools, 0, rec(b"K", b"line1\nline2"))
    assert kvp("--dir", pools, "get", "K", "--raw")[1] == b"line1\nline2"
    assert kvp("--dir", pools, "get", "K", "--null")[1] == b"line1\nline2\0"
    doc = json.loads(kvp("--dir", pools, "get", "K", "--json")[1])
    assert doc == {
        "version": 2,
        "found": True,
        "pool": 0,
        "pool_name": "external",
        "key": "K",
        "value": "line1\nline2",
    }


def test_value_from_stdin_strips_one_newline_unless_raw(pools):
    kvp("--dir", pools, "set", "A", "-", stdin=b"ready\n")
    kvp("--dir", pools, "set", "B", "-", "--raw", stdin=b"two\n\n")
    assert records_of(read_pool(pools, 1)) == [(b"A", b"ready"), (b"B", b"two\n\n")]


def test_value_starting_with_dash_after_double_dash(pools):
    assert kvp("--dir", pools, "set", "--", "Temp", "-5")[0] == 0
    assert records_of(read_pool(pools, 1)) == [(b"Temp", b"-5")]


def test_set_other_pool_by_name_and_number(pools):
    kvp("--dir", pools, "set", "A", "1", "--pool", "external")
    kvp("--dir", pools, "set", "B", "2", "-p", "4")
    assert read_pool(pools, 0) == rec(b"A", b"1")
    assert read_pool(pools, 4) == rec(b"B", b"2")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "key,value,unsafe,needle",
    [
        ("k" * 255, "v", False, "key is 255 UTF-8 bytes; the limit is 254"),
        ("k", "v" * 1023, False, "value is 1023 UTF-8 bytes; the limit is 1022"),
        ("k", "é" * 512, False, "value is 1024 UTF-8 bytes; the limit is 1022"),
        ("k" * 512, "v", True, "key is 512 UTF-8 bytes; the limit is 511"),
        ("k", "v" * 2048, True, "value is 2048 UTF-8 bytes; the limit is 2047"),
        ("", "v", False, "key is empty"),
    ],
)
def test_limits_name_limit_and_size(pools, key, value, unsafe, needle):
    args = ["--dir", pools, "set", key, value] + (["--unsafe"] if unsafe else [])
    code, _out, err = kvp(*args)
    assert code == 2
    assert needle in err
    assert not os.path.exists(os.path.join(pools, ".kvp_pool_1"))


def test_unsafe_allows_up_to_511_and_2047(pools):
    assert kvp("--dir", pools, "set", "k" * 511, "v" * 2047, "--unsafe")[0] == 0
    assert read_pool(pools, 1) == rec(b"k" * 511, b"v" * 2047)
    assert kvp("--dir", pools, "set", "k" * 254, "v" * 1022)[0] == 0


def test_rejects_nul_and_invalid_utf8(pools):
    code, _o, err = kvp("--dir", pools, "set", "K", "-", "--raw", stdin=b"a\0b")
    assert code == 2 and "NUL byte (at byte 1)" in err
    code, _o, err = kvp("--dir", pools, "set", "K", "-", stdin=b"caf\xe9")
    assert code == 2 and "value is not valid UTF-8 (byte 3)" in err
    bad_key = os.fsdecode(b"Bad\xffKey")  # what Python makes of a non-UTF-8 argv
    code, _o, err = kvp("--dir", pools, "set", bad_key, "v")
    assert code == 2 and "key is not valid UTF-8 (byte 3)" in err
    assert not os.path.exists(os.path.join(pools, ".kvp_pool_1"))


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["get"],
        ["set", "K"],
        ["--pool", "9", "list"],
        ["--pool", "bogus", "list"],
        ["set", "K", "V", "--pool", "0,1"],
        ["get", "K", "--json", "--raw"],
        ["--dir", "/x", "--root", "/y", "list"],
        ["watch", "--op", "explode"],
        ["watch", "--hook-timeout", "3"],  # only with --exec (--timeout is the total time)
        ["set", "K", "V", "--chunk-size", "10"],
    ],
)
def test_usage_errors_exit_2(pools, argv):
    code, out, err = kvp(*argv)
    assert code == 2, err
    assert out == b""
    if "--json" in argv:
        assert json.loads(err)["error"]["code"] == 2
    else:
        assert err.startswith("kvp: ")
    assert "Traceback" not in err


def test_help_exits_0():
    assert kvp("--help")[0] == 0
    assert kvp("watch", "--help")[0] == 0


# --------------------------------------------------------------------------- delete


def test_delete_shifts_later_records_and_reports_missing(pools):
    write_pool(pools, 1, rec(b"A", b"1") + rec(b"B", b"2") + rec(b"C", b"3"))
    assert kvp("--dir", pools, "delete", "B")[0] == 0
    assert read_pool(pools, 1) == rec(b"A", b"1") + rec(b"C", b"3")
    code, _out, err = kvp("--dir", pools, "delete", "B")
    assert code == 1 and "B: not found in guest" in err
    assert kvp("--dir", pools, "delete", "X", "--pool", "3")[0] == 1  # no such file


def test_delete_json(pools):
    write_pool(pools, 0, rec(b"A", b"1"))
    code, out, _ = kvp("--dir", pools, "delete", "A", "--pool", "0", "--json")
    assert code == 0
    assert json.loads(out) == {
        "version": 2,
        "pool": 0,
        "pool_name": "external",
        "key": "A",
        "deleted": 1,
    }


# --------------------------------------------------------------------------- list


def test_list_all_pools_json_schema(pools):
    write_pool(pools, 0, rec(b"HostKey", b"h"))
    write_pool(pools, 1, rec(b"G1", b"a") + rec(b"G2", b"b\tc"))
    code, out, _ = kvp("--dir", pools, "list", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["version"] == 2 and doc["directory"] == pools
    assert [p["pool"] for p in doc["pools"]] == [0, 1, 2, 3, 4]
    assert doc["pools"][2] == {
        "pool": 2,
        "pool_name": "auto",
        "path": os.path.join(pools, ".kvp_pool_2"),
        "exists": False,
        "findings": [],
    }
    assert doc["records"] == [
        {
            "pool": 0,
            "pool_name": "external",
            "index": 0,
            "key": "HostKey",
            "value": "h",
            "generated": False,
        },
        {
            "pool": 1,
            "pool_name": "guest",
            "index": 0,
            "key": "G1",
            "value": "a",
            "generated": False,
        },
        {
            "pool": 1,
            "pool_name": "guest",
            "index": 1,
            "key": "G2",
            "value": "b\tc",
            "generated": False,
        },
    ]


def test_list_table_escapes_and_null_and_raw(pools):
    write_pool(pools, 3, rec(b"HostName", b"HV-01") + rec(b"Multi", b"a\nb\\c"))
    code, out, _ = kvp("--dir", pools, "list")
    assert code == 0
    lines = out.decode().splitlines()
    assert lines[0].split() == ["POOL", "KEY", "VALUE"]
    assert lines[1].split() == ["auto-external", "HostName", "HV-01"]
    assert lines[2].split() == ["auto-external", "Multi", "a\\nb\\\\c"]
    nul = kvp("--dir", pools, "list", "--null")[1]
    assert nul == b"auto-external\0HostName\0HV-01\0auto-external\0Multi\0a\nb\\c\0"
    raw = kvp("--dir", pools, "list", "--raw", "--pool", "3")[1]
    assert raw == b"auto-external\tHostName\tHV-01\nauto-external\tMulti\ta\nb\\c\n"


def test_list_skips_damaged_records_and_reports_them(pools):
    write_pool(pools, 1, rec(b"Good", b"1") + b"K" * 512 + b"\0" * 2048 + rec(b"Also", b"2"))
    code, out, err = kvp("--dir", pools, "list", "--json")
    doc = json.loads(out)
    assert code == 0
    assert [(r["key"], r["index"]) for r in doc["records"]] == [("Good", 0), ("Also", 2)]
    assert doc["pools"][1]["findings"] == [
        {
            "kind": "key-no-nul",
            "index": 1,
            "offset": 2560,
            "message": "key has no NUL in its 512 bytes",
            "repairable": True,
        }
    ]
    assert err.count("key has no NUL") == 1, err  # the warning once, not once per layer


def test_missing_pool_directory_exits_3(tmp_path):
    code, _out, err = kvp("--dir", str(tmp_path / "nope"), "list")
    assert code == 3 and "no such pool directory" in err
    assert kvp("--dir", str(tmp_path / "nope"), "set", "K", "V")[0] == 3


def test_offline_root_image(tmp_path):
    image = tmp_path / "image"
    hyperv = image / "var" / "lib" / "hyperv"
    hyperv.mkdir(parents=True)
    write_pool(str(hyperv), 3, rec(b"PhysicalHostNameFullyQualified", b"host.example"))
    code, out, _ = kvp("--root", str(image), "get", "PhysicalHostNameFullyQualified")
    assert (code, out) == (0, b"host.example\n")
    assert kvp("--root", str(image), "set", "Offline", "yes")[0] == 0
    assert read_pool(str(hyperv), 1) == rec(b"Offline", b"yes")


# --------------------------------------------------------------------------- chunks


def test_set_chunk_splits_at_utf8_boundaries_and_get_join(pools):
    value = "é" * 700  # 1400 bytes of 2-byte characters
    assert kvp("--dir", pools, "set", "big", value, "--chunk", "--chunk-size", "999")[0] == 0
    got = records_of(read_pool(pools, 1))
    assert [k for k, _ in got] == [b"big.0", b"big.1"]
    assert [len(v) for _, v in got] == [998, 402]  # 999 would cut a character in two
    assert b"".join(v for _, v in got) == value.encode()
    code, out, _ = kvp("--dir", pools, "get", "big", "--join", "--json")
    assert code == 0
    assert json.loads(out)["value"] == value and json.loads(out)["chunks"] == 2


def test_set_chunk_removes_plain_key_and_stale_chunks(pools):
    write_pool(
        pools,
        1,
        rec(b"cfg", b"old")
        + rec(b"keep", b"k")
        + rec(b"cfg.0", b"a")
        + rec(b"cfg.1", b"b")
        + rec(b"cfg.2", b"c"),
    )
    assert kvp("--dir", pools, "set", "cfg", "xy", "--chunk", "--chunk-size", "4")[0] == 0
    assert read_pool(pools, 1) == rec(b"keep", b"k") + rec(b"cfg.0", b"xy")
    assert kvp("--dir", pools, "get", "cfg", "--join")[1] == b"xy\n"
    assert kvp("--dir", pools, "delete", "cfg", "--chunk")[0] == 0
    assert read_pool(pools, 1) == rec(b"keep", b"k")
    assert kvp("--dir", pools, "delete", "cfg", "--chunk")[0] == 1


def test_get_join_reads_like_ignition(pools):
    write_pool(pools, 0, rec(b"ignition.config.0", b"AB") + rec(b"ignition.config.1", b"CD"))
    assert kvp("--dir", pools, "get", "ignition.config", "--join")[1] == b"ABCD\n"
    # The single key wins when present and non-empty; a gap ends the chunks.
    write_pool(
        pools,
        0,
        rec(b"ignition.config.0", b"AB")
        + rec(b"ignition.config.2", b"EF")
        + rec(b"ignition.config", b"WHOLE"),
    )
    assert kvp("--dir", pools, "get", "ignition.config", "--join")[1] == b"WHOLE\n"
    write_pool(pools, 0, rec(b"ignition.config.0", b"AB") + rec(b"ignition.config.2", b"EF"))
    assert kvp("--dir", pools, "get", "ignition.config", "--join")[1] == b"AB\n"
    assert kvp("--dir", pools, "get", "nothing", "--join")[0] == 1


def test_chunk_key_length_is_checked(pools):
    code, _o, err = kvp("--dir", pools, "set", "k" * 253, "v" * 30, "--chunk", "--chunk-size", "10")
    assert code == 2 and "key of chunk 2 is 255 UTF-8 bytes; the limit is 254" in err


# --------------------------------------------------------------------------- staleness


def test_is_stale_and_clear_if_stale(pools):
    path = write_pool(pools, 1, rec(b"Old", b"1"))
    code, out, _ = kvp("--dir", pools, "is-stale", "--json")
    assert code == 1 and json.loads(out)["stale"] is False
    assert kvp("--dir", pools, "clear", "--if-stale")[0] == 0
    assert read_pool(pools, 1) == rec(b"Old", b"1")  # modified this boot: kept
    os.utime(path, (1000000, 1000000))  # the value cloud-init's own test uses
    code, out, _ = kvp("--dir", pools, "is-stale", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["stale"] is True and doc["mtime"] == 1000000 and doc["exists"] is True
    code, out, _ = kvp("--dir", pools, "clear", "--if-stale", "--json")
    assert code == 0 and json.loads(out)["cleared"] is True
    assert read_pool(pools, 1) == b""
    assert kvp("--dir", pools, "is-stale")[0] == 1  # clearing made it fresh
    assert kvp("--dir", pools, "is-stale", "--pool", "0")[0] == 1  # missing: not stale


def test_clear_unconditional_keeps_inode(pools):
    path = write_pool(pools, 0, rec(b"A", b"1"))
    inode = os.stat(path).st_ino
    assert kvp("--dir", pools, "clear", "--pool", "external")[0] == 0
    assert read_pool(pools, 0) == b"" and os.stat(path).st_ino == inode


# --------------------------------------------------------------------------- I/O and locks


def test_lock_held_too_long_exits_3(pools):
    path = write_pool(pools, 1, rec(b"A", b"1"))
    with open(path, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, _out, err = kvp("--dir", pools, "--lock-timeout", "0.2", "set", "A", "2")
    assert code == 3 and "still locked" in err
    assert read_pool(pools, 1) == rec(b"A", b"1")


def _as_nobody():
    os.setgid(65534)
    os.setuid(65534)


def _python_for_nobody(source: str) -> str:
    """An interpreter user nobody may run (one built under /root is not)."""
    probe = f"import sys; sys.path.insert(0, {source!r}); import pykvpd.cli"
    for python in (sys.executable, "/usr/bin/python3"):
        if not os.path.exists(python) or not _runs(python):
            continue
        done = subprocess.run([python, "-c", probe], preexec_fn=_as_nobody, capture_output=True)
        if done.returncode == 0:
            return python
    pytest.skip("no Python interpreter user nobody can run")


def _readable_copy_of_the_package(top: str) -> str:
    """The checkout may sit in a directory nobody cannot enter (a 0700 temp dir in CI)."""
    source = os.path.join(top, "src")
    shutil.copytree(
        os.path.join(ROOT, "pykvpd"),
        os.path.join(source, "pykvpd"),
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.o"),
    )
    for folder, _dirs, files in os.walk(source):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    return source


def _runs(python: str) -> bool:
    try:
        subprocess.run([python, "-c", ""], preexec_fn=_as_nobody, capture_output=True)
    except OSError:
        return False
    return True


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_non_root_gets_clear_message_not_traceback():
    top = tempfile.mkdtemp(prefix="kvp-nobody-")
    try:
        os.chmod(top, 0o755)
        source = _readable_copy_of_the_package(top)
        python = _python_for_nobody(source)
        env = {"PYTHONPATH": source}
        pools = os.path.join(top, "hyperv")
        os.mkdir(pools, 0o755)
        write_pool(pools, 1, rec(b"A", b"1"))
        result = kvp_process(
            "--dir", pools, "set", "A", "2", preexec_fn=_as_nobody, python=python, env=env
        )
        err = result.stderr.decode()
        assert result.returncode == 3, err
        assert "permission denied; writing a pool needs root (try sudo)" in err
        assert "Traceback" not in err
        assert read_pool(pools, 1) == rec(b"A", b"1")
        # Reading a 0644 pool needs no privileges; a 0600 one is a clear I/O error.
        result = kvp_process(
            "--dir", pools, "get", "A", preexec_fn=_as_nobody, python=python, env=env
        )
        assert (result.returncode, result.stdout) == (0, b"1\n")
        os.chmod(os.path.join(pools, ".kvp_pool_1"), 0o600)
        result = kvp_process(
            "--dir", pools, "get", "A", preexec_fn=_as_nobody, python=python, env=env
        )
        err = result.stderr.decode()
        assert result.returncode == 3 and "Traceback" not in err
        assert "Permission denied" in err and "try sudo" in err
    finally:
        shutil.rmtree(top)


def test_created_pool_file_is_0644(pools):
    old = os.umask(0o077)
    try:
        kvp("--dir", pools, "set", "A", "1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(os.path.join(pools, ".kvp_pool_1")).st_mode) == 0o644


def test_python_dash_m_entry_point(pools):
    result = kvp_process("--dir", pools, "set", "A", "1")
    assert result.returncode == 0, result.stderr
    result = kvp_process("--dir", pools, "get", "A", "--raw")
    assert (result.returncode, result.stdout) == (0, b"1")


def test_console_script_name_does_not_match_daemon_pattern(pools, tmp_path):
    """LISA counts daemons with pgrep 'hypervkvpd|hv_kvp_daemon'; kvp must never match."""
    import re
    import time

    script = tmp_path / "bin" / "kvp"
    script.parent.mkdir()
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {ROOT!r})\n"
        "from pykvpd.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    proc = subprocess.Popen([str(script), "--dir", pools, "watch"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        comm = ""
        while time.monotonic() < deadline and comm != "kvp":
            with open(f"/proc/{proc.pid}/comm") as f:
                comm = f.read().strip()
            time.sleep(0.05)
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode()
    finally:
        proc.terminate()
        proc.wait(10)
    assert comm == "kvp"
    assert not re.search("hypervkvpd|hv_kvp_daemon", comm)
    assert not re.search("hypervkvpd|hv_kvp_daemon", cmdline)


def test_main_returns_int_for_every_command_name():
    assert set(cli.COMMANDS) == {
        "list",
        "get",
        "set",
        "delete",
        "dump",
        "watch",
        "wait",
        "is-stale",
        "clear",
        "fsck",
    }


def test_fixture_dir_is_untouched_by_reads(tmp_path):
    src = os.path.join(ROOT, "fixtures", "pools", "clean.kvp")
    pools = tmp_path / "p"
    pools.mkdir()
    shutil.copy(src, pools / ".kvp_pool_3")
    before = (pools / ".kvp_pool_3").read_bytes()
    assert kvp("--dir", str(pools), "list")[0] == 0
    assert (pools / ".kvp_pool_3").read_bytes() == before
    assert sorted(os.listdir(pools)) == [".kvp_pool_3"]  # no journal, no new pools


def test_a_command_imports_only_its_own_module(pools):
    """Start-up cost: `kvp get` must not import the other commands or the watch machinery."""
    probe = (
        "import sys\n"
        "from pykvpd.cli import main\n"
        f"code = main(['--dir', {pools!r}, '-q', 'get', 'Nope'])\n"
        "loaded = [m for m in sys.modules if m.startswith('pykvpd.cli.commands.')]\n"
        "print(code, sorted(loaded), 'pykvpd.watch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.split("\n")[0] == "1 ['pykvpd.cli.commands.get'] False"


LAZY_STORE_MODULES = ("chunks", "fsck", "staleness", "telemetry")


@pytest.mark.parametrize("argv", [["set", "Key", "v"], ["get", "Key"]], ids=["set", "get"])
def test_plain_get_and_set_leave_the_stores_other_modules_unimported(pools, argv):
    """Start-up cost: pykvpd.store imports chunks/fsck/staleness/telemetry only on first use,
    and a plain `kvp set KEY VALUE` / `kvp get KEY` (which found its key) never uses them."""
    probe = (
        "import sys\n"
        "from pykvpd.cli import main\n"
        f"code = main(['--dir', {pools!r}, *{argv!r}])\n"
        f"lazy = ['pykvpd.store.' + m for m in {LAZY_STORE_MODULES!r}]\n"
        "print(code, sorted(m for m in lazy if m in sys.modules))\n"
    )
    if argv[0] == "get":
        assert kvp("--dir", pools, "set", "Key", "v")[0] == 0
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.splitlines()[-1] == "0 []"


def test_the_stores_lazy_names_import_on_first_use():
    """The lazy names still work, `from pykvpd.store import *` still gives all of them, and a
    name the store does not have is a plain AttributeError."""
    probe = (
        "import pykvpd.store as s\n"
        "print(s.chunk_key('K', 2), s.REPAIRS is not None, 'open_pool' in dir(s))\n"
        "ns = {}\n"
        "exec('from pykvpd.store import *', ns)\n"
        "print(sorted(set(s.__all__) - set(ns)))\n"
        "try:\n"
        "    s.nope\n"
        "except AttributeError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.splitlines() == [
        "K.2 True True",
        "[]",
        "module 'pykvpd.store' has no attribute 'nope'",
    ]
