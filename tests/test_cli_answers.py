"""kvp answers correctly where it used to answer wrongly: permissions, missing directories,
images (--root), chunked keys, host-owned pools, --version, refused output modes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile

import pytest
from test_cli import _as_nobody, _python_for_nobody, _readable_copy_of_the_package
from test_cli_helpers import ROOT, kvp, kvp_argv, kvp_process, read_pool, rec, write_pool

from pykvpd import __version__


@pytest.fixture()
def pools(tmp_path):
    directory = tmp_path / "hyperv"
    directory.mkdir()
    return str(directory)


@pytest.fixture()
def as_nobody():
    """(pool directory holding A=1 in the guest pool, run(*argv) as user nobody): the
    directory in a tree nobody may enter, with a copy of the package nobody may read."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    top = tempfile.mkdtemp(prefix="kvp-nobody-")
    try:
        os.chmod(top, 0o755)
        source = _readable_copy_of_the_package(top)
        python = _python_for_nobody(source)
        directory = os.path.join(top, "hyperv")
        os.mkdir(directory)
        write_pool(directory, 1, rec(b"A", b"1"))

        def run(*argv: str):
            return kvp_process(
                "--dir",
                directory,
                *argv,
                preexec_fn=_as_nobody,
                python=python,
                env={"PYTHONPATH": source},
                timeout=20,
            )

        yield directory, run
    finally:
        shutil.rmtree(top)


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["get", "A"],
        ["fsck"],
        ["is-stale"],
        ["clear"],
        ["delete", "A"],
        ["list", "--json"],
    ],
)
def test_a_pool_directory_nobody_may_enter_is_exit_3_not_empty(as_nobody, argv):
    directory, run = as_nobody
    os.chmod(directory, 0o700)
    result = run(*argv)
    err = result.stderr.decode()
    assert result.returncode == 3, (result.stdout, err)
    assert "Traceback" not in err
    if "--json" in argv:
        error = json.loads(err)["error"]
        assert error["code"] == 3 and "Permission denied" in error["message"]
    else:
        assert f"{directory}: Permission denied" in err and "try sudo" in err
    assert result.stdout == b""
    assert read_pool(directory, 1) == rec(b"A", b"1")


@pytest.mark.parametrize(
    "argv",
    [["get", "A"], ["list"], ["watch", "A"], ["wait", "A"], ["watch", "--json"]],
)
def test_a_pool_file_nobody_may_read_is_exit_3_not_absent(as_nobody, argv):
    """watch and wait used to report A absent at start (a hook acting on "absent" would act
    wrongly) and then retry for ever, logging every second."""
    directory, run = as_nobody
    os.chmod(os.path.join(directory, ".kvp_pool_1"), 0o600)
    result = run(*argv)
    err = result.stderr.decode()
    assert (result.returncode, result.stdout) == (3, b""), err
    assert "Traceback" not in err
    if "--json" in argv:
        assert "Permission denied" in json.loads(err)["error"]["message"]
    else:
        assert err.splitlines() == [
            f"kvp: {directory}/.kvp_pool_1: Permission denied (pools are root's: try sudo)"
        ]


@pytest.mark.parametrize("command", ["clear", "is-stale", "list", "get", "fsck", "delete", "set"])
def test_a_missing_directory_is_exit_3_for_every_pool_command(tmp_path, command):
    extra = {"get": ["K"], "delete": ["K"], "set": ["K", "v"]}.get(command, [])
    missing = str(tmp_path / "nope")
    code, out, err = kvp("--dir", missing, command, *extra)
    assert (code, out) == (3, b"")
    assert f"{missing}: no such pool directory" in err
    assert not os.path.exists(missing)  # never created


def test_version():
    code, out, _err = kvp("--version")
    assert (code, out) == (0, f"kvp {__version__}\n".encode())


def test_get_of_a_chunked_key_hints_join(pools):
    assert kvp("--dir", pools, "set", "Big", "x" * 3000, "--chunk")[0] == 0
    code, out, err = kvp("--dir", pools, "get", "Big")
    assert (code, out) == (1, b"")
    assert (
        "Big: not found in any pool (Big.0, .1, ... exist: --join reads them as one value)" in err
    )
    assert kvp("--dir", pools, "get", "Big", "--join")[1] == b"x" * 3000 + b"\n"
    assert "--join" not in kvp("--dir", pools, "get", "Other")[2]


@pytest.mark.parametrize(("pool", "warned"), [("0", True), ("3", True), ("1", False)])
def test_writing_a_host_written_pool_warns(pools, pool, warned):
    code, _out, err = kvp("--dir", pools, "-p", pool, "set", "K", "v")
    assert code == 0
    assert ("written by the host" in err) is warned
    assert read_pool(pools, int(pool)) == rec(b"K", b"v")
    assert "written by the host" not in kvp("--dir", pools, "-q", "-p", pool, "delete", "K")[2]


@pytest.mark.parametrize(
    "argv",
    [
        ["--null", "delete", "K"],
        ["--raw", "fsck"],
        ["--null", "set", "K", "v"],
        ["--raw", "is-stale"],
        ["--null", "clear"],
        ["--raw", "dump", "-"],
    ],
)
def test_output_modes_that_do_not_apply_are_refused(pools, argv):
    write_pool(pools, 1, rec(b"K", b"1"))
    code, out, err = kvp("--dir", pools, *argv)
    assert (code, out) == (2, b"")
    assert f"{argv[0]} does not apply to '{argv[1]}'" in err
    assert read_pool(pools, 1) == rec(b"K", b"1")


def test_errors_are_json_on_stderr_with_json(pools, tmp_path):
    code, out, err = kvp("--dir", str(tmp_path / "nope"), "list", "--json")
    assert (code, out) == (3, b"")
    doc = json.loads(err)
    assert doc == {
        "version": 2,
        "error": {"code": 3, "message": f"{tmp_path / 'nope'}: no such pool directory"},
    }
    code, out, err = kvp("--json", "--dir", pools, "get", "k" * 300)
    assert code == 2 and json.loads(err)["error"]["message"].startswith("key is 300 UTF-8 bytes")
    code, out, err = kvp("--json", "bogus")
    assert code == 2 and "invalid choice" in json.loads(err)["error"]["message"]


def test_root_refuses_a_pool_symlinked_out_of_the_image(tmp_path):
    image = tmp_path / "img"
    (image / "var/lib/hyperv").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious bytes\n")
    os.symlink(str(outside), str(image / "var/lib/hyperv/.kvp_pool_1"))
    for argv in (["set", "Foo", "bar"], ["get", "Foo"], ["-p", "1", "fsck", "--repair"]):
        code, _out, err = kvp("--root", str(image), *argv)
        assert code == 3, (argv, err)
        assert "symbolic link" in err
    assert outside.read_bytes() == b"precious bytes\n"


def test_root_resolves_an_absolute_directory_symlink_inside_the_image(tmp_path):
    """IMG/var/lib -> /kvp-image-only must mean IMG/kvp-image-only, never the host's path."""
    assert not os.path.exists("/kvp-image-only")
    image = tmp_path / "img"
    inside = image / "kvp-image-only" / "hyperv"
    inside.mkdir(parents=True)
    (image / "var").mkdir()
    os.symlink("/kvp-image-only", str(image / "var" / "lib"))
    assert kvp("--root", str(image), "set", "Foo", "bar")[0] == 0
    assert read_pool(str(inside), 1) == rec(b"Foo", b"bar")
    assert kvp("--root", str(image), "get", "Foo", "--raw")[:2] == (0, b"bar")
    assert not os.path.exists("/kvp-image-only")


def test_dump_of_a_directory_or_a_device_says_what_it_is(pools):
    code, out, err = kvp("dump", pools)
    assert (code, out) == (3, b"")
    assert f"{pools}: is a directory; dump decodes one pool file" in err
    code, out, err = kvp("dump", "/dev/null")
    assert (code, out) == (3, b"")
    assert "/dev/null: is a character device, not a pool file" in err
    assert "no such file" in kvp("dump", os.path.join(pools, "nope"))[2]


def test_list_filters_by_key_glob(pools):
    write_pool(pools, 1, rec(b"ignition.config.0", b"a") + rec(b"Other", b"b"))
    write_pool(pools, 0, rec(b"ignition.config.1", b"c") + rec(b"x[1]", b"d"))
    code, out, _err = kvp("--dir", pools, "list", "--json", "ignition.*", "x[1]")
    assert code == 0
    keys = [(r["pool"], r["key"]) for r in json.loads(out)["records"]]
    assert keys == [(0, "ignition.config.1"), (0, "x[1]"), (1, "ignition.config.0")]
    assert kvp("--dir", pools, "list", "--raw", "Oth?r")[1] == b"guest\tOther\tb\n"


def test_list_auto_shows_what_the_daemon_generates(pools):
    from pykvpd.intrinsic import AUTO_KEYS, Intrinsic

    code, out, err = kvp("--dir", pools, "-p", "auto", "list", "--json")
    assert code == 0
    records = json.loads(out)["records"]
    assert [r["key"] for r in records] == list(AUTO_KEYS)
    assert all(r["generated"] and r["pool_name"] == "auto" for r in records)
    expected = dict(Intrinsic().items())
    for r in records:
        if r["key"] not in ("FullyQualifiedDomainName", "NetworkAddressIPv4", "NetworkAddressIPv6"):
            assert r["value"] == expected[r["key"]], r
    assert "values the daemon generates" in err
    assert not os.path.exists(os.path.join(pools, ".kvp_pool_2"))
    # Listing every pool shows only what is stored.
    assert all(
        not r["generated"] for r in json.loads(kvp("--dir", pools, "list", "--json")[1])["records"]
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace")
def test_a_full_disk_names_the_file(tmp_path):
    """A tiny tmpfs in a private mount namespace, filled up: every failed write names the pool."""
    directory = tmp_path / "full"
    directory.mkdir()
    script = (
        f"mount -t tmpfs -o size=8k tmpfs {directory} || exit 99\n"
        f"head -c 4096 /dev/zero > {directory}/filler\n"
        f"for k in A B C; do {' '.join(map(shlex.quote, kvp_argv()))} --dir {directory}"
        " set $k $(head -c 1000 /dev/zero | tr '\\0' x); echo rc=$?; done\n"
    )
    try:
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
    except FileNotFoundError:
        pytest.skip("no unshare")
    if "rc=" not in done.stdout:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {done.stderr}")
    assert done.stdout.split() == ["rc=3", "rc=3", "rc=3"], done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        assert line.startswith(f"kvp: {directory}/.kvp_pool_1: "), line
        assert line.endswith("No space left on device"), line


def test_bash_completion_knows_every_option_of_every_command():
    import re

    from pykvpd.cli import commands
    from pykvpd.cli.parser import _common, command_parser

    with open(os.path.join(ROOT, "completion", "kvp.bash"), encoding="utf-8") as f:
        script = f.read()
    (common,) = re.findall(r'local common="([^"]*)"', script, re.S)
    offered = set(common.split())
    assert {s for a in _common()._actions for s in a.option_strings} | {"-h", "--help"} <= offered
    assert "--version" in offered
    for name in commands.COMMANDS:
        parser = command_parser(name, commands.load(name))
        options = {s for a in parser._actions for s in a.option_strings}
        lines = re.findall(rf'^\s*{re.escape(name)}\) opts\+=" ([^"]*)" ;;$', script, re.M)
        own = set(lines[0].split()) if lines else set()
        assert options - offered - own == set(), name
