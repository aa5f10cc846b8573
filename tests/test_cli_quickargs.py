"""``quickargs`` reads the lines it takes exactly as argparse (``parser``) does, and leaves the
rest to it; the everyday get/set lines really are read without argparse."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pykvpd.cli import commands, quickargs
from pykvpd.cli.errors import CliError
from pykvpd.cli.parser import command_parser, parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every option of get and set in every spelling, the near misses argparse still takes
# (abbreviations, -p0, -vv, --pool=) and values that are options, commands, odd or refused.
GOOD_FLAGS = ["--json", "--null", "--raw", "--unsafe", "-v", "--verbose", "-q", "--quiet"]
GOOD_FLAGS += ["--join", "--chunk"]
ODD_FLAGS = ["--jso", "--jo", "-vv", "--json=1", "-h", "--version", "--nope"]
WITH_VALUE = ["--dir", "--root", "-p", "--pool", "--lock-timeout", "--chunk-size"]
INLINE = ["--dir=/x", "--pool=0", "--pool=", "-p=1", "-p0", "--lock-timeout=5", "--root="]
GOOD_VALUES = ["Key", "value", "K.0", "0", "guest", "1,2", "5", "-", "/d", "get", "set", ""]
ODD_VALUES = ["auto,", "9", "nan", "inf", "-1", "-x", "--", "1e9", "a b", "x=y", "--dir"]
COMMANDS = ["get", "set", "get", "set", "list", "delete", "gets"]


@st.composite
def lines(draw):
    """A command line: options, a command, its arguments and more options, in any order
    after the command; mostly words quickargs takes, with odd ones mixed in."""

    def word(good, odd):
        return draw(st.sampled_from(good if draw(st.integers(0, 5)) else odd))

    def options(max_size):
        words = []
        for _ in range(draw(st.integers(0, max_size))):
            flag = word(GOOD_FLAGS + WITH_VALUE * 2, ODD_FLAGS + INLINE)
            words.append(flag)
            if flag in WITH_VALUE and draw(st.integers(0, 9)):
                words.append(word(GOOD_VALUES, ODD_VALUES))
        return words

    command = draw(st.sampled_from(COMMANDS))
    count = {"get": 1, "set": 2}.get(command, 1)
    if draw(st.integers(0, 5)) == 0:
        count += draw(st.sampled_from([-1, 1]))
    after = options(3) + [word(GOOD_VALUES, ODD_VALUES) for _ in range(max(count, 0))]
    return options(3) + [command] + draw(st.permutations(after))


def _quick(argv):
    try:
        return "ok", quickargs.parse(argv, commands.load)
    except CliError as exc:
        return "error", str(exc)


def _full(argv):
    try:
        args, module = parse_args(argv)
    except CliError as exc:
        return "error", str(exc)
    except SystemExit as exc:  # --help, --version
        return "exit", exc.code
    return "ok", (vars(args), module)


@settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(lines())
def test_a_line_quickargs_takes_means_what_argparse_reads(capsys, argv):
    kind, quick = _quick(argv)
    full_kind, full = _full(argv)
    capsys.readouterr()  # drop argparse's --help output (the fixture is shared by examples)
    if kind == "ok" and quick is None:
        return  # left to the full parser
    event("read by quickargs" if kind == "ok" else "refused by the shared checks")
    if kind == "error":  # the checks after parsing are shared: the same message
        assert (full_kind, full) == ("error", quick), argv
        return
    args, module = quick
    assert full_kind == "ok", (argv, full)
    assert vars(args) == full[0], argv
    assert module is full[1]


EVERYDAY = [
    ["get", "Key"],
    ["set", "Key", "value"],
    ["--dir", "/d", "get", "Key"],
    ["--root", "/img", "get", "Key", "-p", "external"],
    ["get", "Key", "--raw"],
    ["get", "--json", "Key"],
    ["-q", "get", "Key", "--join"],
    ["set", "-p", "0", "Key", "-"],
    ["set", "Key", "value", "--pool=guest", "--lock-timeout", "5", "--unsafe"],
    ["set", "--chunk", "--chunk-size", "100", "Key", "value", "-v"],
]


@pytest.mark.parametrize("argv", EVERYDAY, ids=" ".join)
def test_everyday_lines_are_read_by_quickargs(argv):
    kind, quick = _quick(argv)
    assert kind == "ok" and quick is not None, argv
    assert vars(quick[0]) == vars(parse_args(argv)[0])


def test_quickargs_options_are_the_full_parsers_with_the_same_meaning():
    import argparse

    kinds = {
        quickargs.VALUE: argparse._StoreAction,
        quickargs.FLAG: argparse._StoreTrueAction,
        quickargs.APPEND: argparse._AppendAction,
        quickargs.COUNT: argparse._CountAction,
    }
    for name, (positionals, own) in quickargs._COMMANDS.items():
        parser = command_parser(name, commands.load(name))
        actions = {s: a for a in parser._actions for s in a.option_strings}
        assert [a.dest for a in parser._actions if not a.option_strings] == list(positionals)
        for flag, (dest, kind, check) in {**quickargs._COMMON, **own}.items():
            action = actions[flag]
            assert (action.dest, type(action), action.type) == (dest, kinds[kind], check), flag
        for flag in actions:  # every option but help is known to quickargs
            assert flag in quickargs._COMMON or flag in own or flag in ("-h", "--help"), flag


# What an everyday get/set must not import (each costs milliseconds of every run; argparse,
# logging and typing alone were two thirds of kvp get's start-up before quickargs).
HEAVY = ("argparse", "logging", "typing", "re", "enum", "contextlib", "functools", "signal")
HEAVY += ("json", "locale", "gettext", "threading", "traceback", "dataclasses", "inspect")

PROBE = """
import sys
before = set(sys.modules)
from pykvpd.cli import main
rc = main(sys.argv[1:])
print(rc, " ".join(sorted(set(sys.modules) - before)), file=sys.stderr)
"""


def _modules_of(argv, tmp_path, stdin=b""):
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(
        # -S: no site-packages, whose .pth hooks (an editable install's) import re, enum, ...
        [sys.executable, "-S", "-c", PROBE, "--dir", str(tmp_path), *argv],
        input=stdin,
        capture_output=True,
        env=env,
        check=False,
    )
    *said, last = done.stderr.decode().splitlines()
    rc, names = last.split(" ", 1)
    return int(rc), set(names.split()), said, done.stdout


@pytest.mark.parametrize(
    "argv, rc, said",
    [
        (["set", "Key", "value"], 0, []),
        (["get", "Key"], 0, []),
        (["get", "Missing"], 1, ["kvp: Missing: not found in any pool"]),
        (["set", "-p", "0", "Host", "v"], 0, ["kvp: pool 0 (external) is written by the host"]),
        (["set", "Key", "-"], 0, []),
        (["get", "--raw", "-p", "guest", "Key"], 0, []),
        (["set", "--chunk", "--chunk-size", "4", "Big", "0123456789"], 0, []),
        (["get", "--join", "Key"], 0, []),
    ],
    ids=lambda x: " ".join(x) if isinstance(x, list) else None,
)
def test_everyday_get_and_set_import_nothing_heavy(tmp_path, argv, rc, said):
    _modules_of(["set", "Key", "first"], tmp_path)
    got_rc, modules, messages, _out = _modules_of(argv, tmp_path, stdin=b"from stdin\n")
    assert got_rc == rc, messages
    assert [m[: len(s)] for m, s in zip(messages, said)] == said and len(messages) == len(said)
    assert sorted(modules & set(HEAVY)) == []


def test_a_damaged_pool_still_warns_through_logging(tmp_path):
    """The store's warnings come through logging, imported only when it logs."""
    _modules_of(["set", "Key", "value"], tmp_path)
    with open(tmp_path / ".kvp_pool_1", "ab") as f:
        f.write(b"Bad\xff".ljust(2560, b"\0"))
    rc, modules, messages, out = _modules_of(["get", "Key"], tmp_path)
    assert (rc, out) == (0, b"value\n")
    assert "logging" in modules
    assert any(m.startswith("kvp: ") and "damaged" in m for m in messages), messages
    rc, _modules, messages, _out = _modules_of(["-q", "get", "Key"], tmp_path)
    assert (rc, messages) == (0, [])
