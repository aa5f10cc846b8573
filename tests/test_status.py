"""The status file written by the daemon, and `pykvpd status` output and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pykvpd import status
from pykvpd.store import RECORD_SIZE


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no such process (unless recycled within the test, vanishingly rare)


@pytest.fixture
def pool_dir(tmp_path):
    directory = tmp_path / "hyperv"
    directory.mkdir()
    (directory / ".kvp_pool_0").write_bytes(b"\0" * RECORD_SIZE * 3)
    (directory / ".kvp_pool_1").write_bytes(b"\0" * (RECORD_SIZE + 100))
    (directory / ".kvp_pool_3").write_bytes(b"")
    return directory


def test_update_writes_json_atomically(tmp_path):
    path = tmp_path / "run" / "status.json"
    status_file = status.StatusFile(str(path))
    status_file.update(pid=123, registered=False, host_ops=0)
    status_file.update(registered=True, registered_since=1700000000.5, host_ops=7)
    data = json.loads(path.read_text())
    assert data["pid"] == 123 and data["registered"] is True and data["host_ops"] == 7
    assert data["registered_since"] == 1700000000.5
    assert isinstance(data["updated"], float)
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]  # no temp files left


def test_update_never_raises(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    status_file = status.StatusFile(str(blocker / "status.json"))  # parent is a file
    status_file.update(pid=1)
    status_file.update(pid=2)
    assert len([r for r in caplog.records if "status file" in r.getMessage()]) == 1
    status.StatusFile(str(tmp_path / "s.json")).update(bad=object())  # not JSON-serialisable


def test_status_running_and_registered(tmp_path, pool_dir, capsys):
    path = tmp_path / "status.json"
    status.StatusFile(str(path)).update(
        pid=os.getpid(),
        registered=True,
        registered_since=1700000000,
        version="3.1",
        host_ops=42,
        last_op="SET pool 0 HV_S_OK",
        last_error=None,
        pool_dir=str(pool_dir),
    )
    assert status.main_status(["--status-file", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"running (pid {os.getpid()}), registered with the kernel" in out
    assert "registered since: 2023-11-14 22:13:20 UTC" in out
    assert "host operations: 42" in out
    assert "last operation: SET pool 0 HV_S_OK" in out
    assert "last error: none" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "3 records" in " ".join(lines["0"].split())
    assert "1 records" in " ".join(lines["1"].split()) and "+100 bytes" in lines["1"]
    assert lines["2"].endswith("missing")
    assert "0 records" in " ".join(lines["3"].split())


def test_status_json(tmp_path, pool_dir, capsys):
    path = tmp_path / "status.json"
    status.StatusFile(str(path)).update(pid=os.getpid(), registered=False, host_ops=0)
    code = status.main_status(["--json", "--status-file", str(path), "--pool-dir", str(pool_dir)])
    assert code == status.EXIT_NOT_REGISTERED == 1
    report = json.loads(capsys.readouterr().out)
    assert report["running"] is True and report["registered"] is False
    assert report["pool_dir"] == str(pool_dir)
    pools = {p["pool"]: p for p in report["pools"]}
    assert (pools[0]["records"], pools[0]["partial_bytes"]) == (3, 0)
    assert (pools[1]["records"], pools[1]["partial_bytes"], pools[1]["size"]) == (
        1,
        100,
        RECORD_SIZE + 100,
    )
    assert pools[2]["exists"] is False
    assert pools[4]["name"] == "auto-internal"


def test_status_not_running(tmp_path, pool_dir, capsys):
    assert status.main_status(["--status-file", str(tmp_path / "none.json")]) == 3
    assert "not running (no status file" in capsys.readouterr().out
    path = tmp_path / "status.json"
    status.StatusFile(str(path)).update(pid=dead_pid(), registered=True, pool_dir=str(pool_dir))
    assert status.main_status(["--status-file", str(path)]) == 3
    out = capsys.readouterr().out
    assert "stale status file" in out and "registered since" not in out


def test_status_damaged_file(tmp_path, capsys):
    path = tmp_path / "status.json"
    path.write_text("{not json")
    code = status.main_status(["--status-file", str(path), "--pool-dir", str(tmp_path)])
    assert code == 4
    assert "status unknown" in capsys.readouterr().out


def test_pid_alive_rejects_junk():
    assert status.pid_alive(os.getpid())
    assert not status.pid_alive(None)
    assert not status.pid_alive(True)
    assert not status.pid_alive("1")
    assert not status.pid_alive(0)


def test_status_shows_the_last_reload_escaped(tmp_path, pool_dir, capsys):
    path = tmp_path / "status.json"
    status_file = status.StatusFile(str(path))
    status_file.update(pid=os.getpid(), registered=True, pool_dir=str(pool_dir), reloads=1,
                       last_reload={"ok": True, "error": None, "at": 1700000000})
    status.main_status(["--status-file", str(path)])
    assert "last reload: 2023-11-14 22:13:20 UTC" in capsys.readouterr().out
    error = "/etc/pykvpd.conf: invalid value for \x1b[2j\\evil\u202e\x9b: unknown key"
    status_file.update(reloads=2, last_reload={"ok": False, "error": error, "at": 1700000000})
    status.main_status(["--status-file", str(path)])
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("last reload")][0]
    assert line.endswith(
        "FAILED, the old configuration stays: /etc/pykvpd.conf: invalid value for "
        "\\x1b[2j\\\\evil\\xe2\\x80\\xae\\xc2\\x9b: unknown key"
    )
