"""What ``kvp`` prints on stderr at each level: its own lines and the store's warnings alike,
as a person at the console sees them (a separate process, so logging starts unconfigured)."""

from __future__ import annotations

import pytest
from test_cli_helpers import kvp_process, rec

DAMAGED = rec(b"Good", b"value") + rec(b"Bad\xff", b"x")


@pytest.fixture()
def pools(tmp_path):
    directory = tmp_path / "hyperv"
    directory.mkdir()
    return str(directory)


def _stderr(*argv: str) -> tuple:
    done = kvp_process(*argv)
    return done.returncode, done.stderr.decode().splitlines()


def test_set_is_silent_by_default_and_says_what_it_did_with_v(pools):
    assert _stderr("--dir", pools, "set", "K", "v") == (0, [])
    rc, lines = _stderr("--dir", pools, "-v", "set", "K", "w")
    assert rc == 0 and len(lines) == 1, lines
    assert lines[0].startswith("kvp: modify K in guest (") and lines[0].endswith(".kvp_pool_1)")
    assert _stderr("--dir", pools, "set", "K", "x", "-vv")[1][0].startswith("kvp: modify K")


def test_q_hides_warnings_and_not_found_but_not_errors(pools):
    rc, lines = _stderr("--dir", pools, "set", "-p", "0", "K", "v")
    assert rc == 0 and lines == [
        "kvp: pool 0 (external) is written by the host, which may overwrite or remove this change"
    ]
    assert _stderr("--dir", pools, "-q", "set", "-p", "0", "K", "v") == (0, [])
    assert _stderr("--dir", pools, "get", "Nope") == (1, ["kvp: Nope: not found in any pool"])
    assert _stderr("--dir", pools, "get", "Nope", "-q") == (1, [])
    missing = pools + "/not-there"
    rc, lines = _stderr("--dir", missing, "-q", "get", "K")
    assert (rc, lines) == (3, [f"kvp: {missing}: no such pool directory"])


def test_the_stores_warnings_look_like_kvps_own_and_obey_q(pools):
    with open(f"{pools}/.kvp_pool_1", "wb") as f:
        f.write(DAMAGED)
    rc, lines = _stderr("--dir", pools, "get", "Good")
    assert rc == 0 and len(lines) == 1, lines
    assert lines[0].startswith(f"kvp: {pools}/.kvp_pool_1 is damaged, serving the valid records")
    assert _stderr("--dir", pools, "-q", "get", "Good") == (0, [])
    rc, lines = _stderr("--dir", pools, "dump", "-p", "1")  # dump reports damage itself
    assert not any("serving the valid records" in line for line in lines), lines
