"""kvp refuses bad numbers, empty pool names and bad keys with exit 2 before touching a pool."""

from __future__ import annotations

import os

import pytest
from test_cli_helpers import kvp, read_pool, rec, write_pool


@pytest.fixture()
def pools(tmp_path):
    directory = tmp_path / "hyperv"
    directory.mkdir()
    write_pool(str(directory), 1, rec(b"A", b"1"))
    return str(directory)


BAD_SECONDS = ["inf", "-inf", "nan", "-1", "1e10", "abc", ""]

# Every option that takes a number, with the rest of a command line that would otherwise run.
NUMERIC_OPTIONS = [
    ("--lock-timeout", ["set", "A", "2"]),
    ("--lock-timeout", ["get", "A"]),
    ("--timeout", ["wait", "A"]),
    ("--timeout", ["watch", "A", "-n", "1"]),
    ("--hook-timeout", ["watch", "A", "-n", "1", "--exec", "true"]),
]


@pytest.mark.parametrize("value", BAD_SECONDS)
@pytest.mark.parametrize(("option", "rest"), NUMERIC_OPTIONS)
def test_every_duration_option_refuses_non_finite_negative_and_absurd(pools, option, rest, value):
    before = read_pool(pools, 1)
    argv = ["--dir", pools, *rest]
    at = argv.index("--exec") if "--exec" in argv else len(argv)
    argv[at:at] = [f"{option}={value}"]
    code, out, err = kvp(*argv)
    assert code == 2, err
    assert f"argument {option}" in err and "Traceback" not in err
    assert out == b""
    assert read_pool(pools, 1) == before


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nan", "'nan' is not a finite number of seconds"),
        ("inf", "'inf' is not a finite number of seconds"),
        ("-1", "-1 is negative"),
        ("1e10", "1e10 s is more than a year"),
    ],
)
def test_duration_messages_say_what_is_wrong(pools, value, message):
    code, _out, err = kvp("--dir", pools, "wait", "Never", f"--timeout={value}")
    assert code == 2 and message in err


def test_zero_and_fractional_durations_are_accepted(pools):
    assert kvp("--dir", pools, "--lock-timeout", "0", "get", "A") == (0, b"1\n", "")
    code, _out, err = kvp("--dir", pools, "wait", "Never", "--timeout", "0.05")
    assert code == 1 and "timed out" in err


@pytest.mark.parametrize("value", ["0", "-3", "inf", "nan", "1.5", "10000000000"])
def test_watch_count_must_be_a_sane_whole_number(pools, value):
    code, _out, err = kvp("--dir", pools, "watch", f"--count={value}")
    assert code == 2 and "argument -n/--count" in err


@pytest.mark.parametrize("value", ["nan", "inf", "1.5", "-5", "0"])
def test_chunk_size_must_be_a_whole_number_in_range(pools, value):
    code, _out, err = kvp(
        "--dir", pools, "set", "Big", "x" * 50, "--chunk", f"--chunk-size={value}"
    )
    assert code == 2 and "chunk-size" in err
    assert read_pool(pools, 1) == rec(b"A", b"1")


@pytest.mark.parametrize("pool", ["", ",", " ", "0,", ",guest"])
def test_an_empty_pool_name_is_an_error_not_the_default_pool(pools, pool):
    """`kvp -p "$UNSET" clear` must not clear the guest pool."""
    code, _out, err = kvp("--dir", pools, "-p", pool, "clear")
    assert code == 2 and "empty pool" in err
    assert read_pool(pools, 1) == rec(b"A", b"1")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (os.fsdecode(b"A\xff"), "key is not valid UTF-8"),
        ("", "key is empty"),
        ("k" * 600, "key is 600 UTF-8 bytes; the limit is 254"),
    ],
)
@pytest.mark.parametrize("command", ["get", "delete", "wait"])
def test_get_refuses_bad_keys_like_delete_and_wait(pools, command, key, message):
    code, out, err = kvp("--dir", pools, command, key)
    assert (code, out) == (2, b""), err
    assert message in err


@pytest.mark.parametrize("argv", [["set", "--", "--", "--"], ["set", "K", "--", "--"]])
def test_a_lone_double_dash_value_is_a_usage_error_not_a_traceback(pools, argv):
    code, out, err = kvp("--dir", pools, *argv)
    assert (code, out) == (2, b""), err
    assert "'--' cannot be a value" in err and "Traceback" not in err
    assert read_pool(pools, 1) == rec(b"A", b"1")
