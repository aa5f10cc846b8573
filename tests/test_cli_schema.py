"""Every kvp command's --json output, and its errors, against the schema in docs/kvp.md."""

from __future__ import annotations

import json
import os
import re
import shutil

import jsonschema
import pytest
from test_cli_helpers import ROOT, kvp, rec, write_pool

DOC = os.path.join(ROOT, "docs", "kvp.md")


def published_schema() -> dict:
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    found = re.search(r"<!-- kvp-json-schema -->\n```json\n(.*?)\n```", text, re.S)
    assert found, "docs/kvp.md lost its machine-readable schema"
    return json.loads(found.group(1))


SCHEMA = published_schema()


def check(definition: str, document: object) -> None:
    schema = dict(SCHEMA, **{"$ref": f"#/$defs/{definition}"})
    jsonschema.Draft202012Validator(schema).validate(document)


@pytest.fixture()
def pools(tmp_path):
    directory = tmp_path / "hyperv"
    directory.mkdir()
    write_pool(str(directory), 0, rec(b"Host", b"h"))
    damaged = rec(b"Good", b"1") + b"K" * 512 + b"\0" * 2048 + b"\xff" * 100
    write_pool(str(directory), 1, damaged)
    shutil.copy(
        os.path.join(ROOT, "fixtures", "pools", "cloud-init-22.4.2.kvp"),
        directory / ".kvp_pool_4",
    )
    return str(directory)


def one_json(*argv: str, code: int = 0) -> object:
    got, out, err = kvp(*argv)
    assert got == code, err
    lines = out.decode().splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0])


def test_the_schema_is_itself_valid():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


COMMANDS = [
    ("list", ["list"], 0),
    ("list", ["-p", "auto", "list"], 0),
    ("events", ["list", "--events"], 0),
    ("get", ["get", "Host"], 0),
    ("get", ["get", "Missing"], 1),
    ("set", ["set", "New", "v"], 0),
    ("set", ["set", "Long", "x" * 3000, "--chunk"], 0),
    ("delete", ["delete", "Host", "-p", "external"], 0),
    ("delete", ["delete", "Missing"], 1),
    ("wait", ["wait", "Host", "--timeout", "0"], 0),
    ("wait", ["wait", "Missing", "--timeout", "0"], 1),
    ("watch", ["watch", "Host", "-n", "1"], 0),
    ("watch", ["watch", "Absent", "-n", "1"], 0),
    ("is-stale", ["is-stale"], 1),
    ("clear", ["clear", "-p", "auto-internal"], 0),
    ("fsck", ["fsck"], 1),
    ("fsck", ["fsck", "--repair", "-p", "guest"], 0),
]


@pytest.mark.parametrize(("definition", "argv", "code"), COMMANDS)
def test_every_command_output_matches_the_published_schema(pools, definition, argv, code):
    check(definition, one_json("--dir", pools, "--json", *argv, code=code))


def test_get_join_matches_the_schema(pools):
    assert kvp("--dir", pools, "set", "Long", "x" * 3000, "--chunk")[0] == 0
    document = one_json("--dir", pools, "--json", "get", "Long", "--join")
    check("get", document)
    assert document["chunks"] == 3


def test_dump_matches_the_schema(pools):
    check("dump", one_json("--json", "dump", os.path.join(pools, ".kvp_pool_1")))


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["list"], 3),  # no such directory
        (["get", ""], 2),
        (["--lock-timeout", "nan", "get", "K"], 2),
        (["frobnicate"], 2),
        (["--null", "delete", "K"], 2),
    ],
)
def test_errors_match_the_schema_and_leave_stdout_empty(tmp_path, argv, code):
    got, out, err = kvp("--dir", str(tmp_path / "nope"), "--json", *argv)
    assert (got, out) == (code, b"")
    document = json.loads(err)
    check("error", document)
    assert document["error"]["code"] == code
