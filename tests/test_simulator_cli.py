"""``pykvpd simulate``: demo transcript, scenarios and exit codes, the serve control socket.

These run the real daemon as a subprocess (the demo and scenarios start it themselves).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from pykvpd.simulator.cli import main
from pykvpd.simulator.runner import default_daemon_command, package_env, pool_tool_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(ROOT, "pykvpd", "daemon.py")),
    reason="the daemon is not in this tree",
)


def run(argv, stdin: str = ""):
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue()


# --------------------------------------------------------------------------- the demo


def test_demo_transcript_shows_both_sides():
    code, text = run([])
    assert code == 0, text
    lines = text.splitlines()
    # the daemon registered with the simulated driver
    assert "KERNEL REGISTER1: replying with version 3.1" in lines
    # host pushed GuestParameters, and the guest file holds them
    assert "HOST   pushed 16 GuestParameters into pool 3" in lines
    assert "         VirtualMachineName = demo-vm" in lines
    assert "GUEST  .kvp_pool_3 (16 records):" in lines
    # host-added items in the guest's pool 0 file
    assert "HOST   AddKvpItems Environment = production, MaintenanceWindow = Sun 02:00" in lines
    assert "         MaintenanceWindow = Sun 02:00" in lines
    # the guest's intrinsic items as the host lists them
    intrinsic = [line.split() for line in lines if line.startswith("         ")]
    assert ["IntegrationServicesVersion", "2", "3.1"] in intrinsic
    assert any(row[:2] == ["OSName", "2"] for row in intrinsic)
    # the guest-set key, written with the pool tool, seen by the host (Source 1)
    if pool_tool_available():
        assert "GUEST  $ kvp set DeploymentState ready" in lines
    else:  # until pykvpd/cli.py is in the tree, the demo writes through pykvpd.store
        assert "GUEST  $ store.PoolDir(...).pool(1).set('DeploymentState', 'ready')" in lines
    assert ["DeploymentState", "1", "ready"] in intrinsic
    # the removed key is gone from the guest file afterwards
    removed_at = lines.index("HOST   RemoveKvpItems MaintenanceWindow")
    after = lines[removed_at:]
    assert "GUEST  .kvp_pool_0 (1 record):" in after
    assert "         MaintenanceWindow = Sun 02:00" not in after
    assert "CHECK  ok: guest pool 0 has no MaintenanceWindow" in after
    assert "       daemon exit status 0" in lines
    assert not any("FAILED" in line for line in lines)
    assert lines[-1] == "== Done: all steps worked"


def test_demo_json():
    code, text = run(["--json"])
    assert code == 0
    document = json.loads(text)
    assert document["ok"] is True and document["daemon_exit_status"] == 0
    data = [e.get("data") for e in document["transcript"] if e["side"] == "host"]
    intrinsic = next(d for d in data if d and d[0]["Name"] == "FullyQualifiedDomainName")
    assert {"Name": "IntegrationServicesVersion", "Data": "3.1", "Source": 2} in intrinsic
    guest_files = [e for e in document["transcript"] if e["side"] == "guest" and "data" in e]
    assert guest_files[-1]["data"] == [{"key": "Environment", "value": "production"}]


def test_demo_as_ci_runs_it():
    """The README's command path: ``python -m pykvpd simulate`` in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-m", "pykvpd", "simulate"],
        capture_output=True,
        text=True,
        timeout=120,
        env=package_env(),
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HOST   RemoveKvpItems MaintenanceWindow" in result.stdout
    assert "== Done: all steps worked" in result.stdout


# --------------------------------------------------------------------------- scenarios

SCENARIO = """\
# a host session and the checks it must pass
host push HostName=HV-B
host add Env prod Count u32:42
expect guest 0 Count 42
host add Env again
expect status HV_ERROR_ALREADY_EXISTS
guest set Build 123
expect host 1 Build 123
host remove Env
expect guest-missing 0 Env
daemon restart
expect host 3 HostName HV-B
"""


def test_scenario_passes(tmp_path):
    path = tmp_path / "s.kvp"
    path.write_text(SCENARIO)
    code, text = run(["--scenario", str(path)])
    assert code == 0, text
    assert "CHECK  ok: guest sees Count = 42" in text
    assert "KERNEL daemon closed the device" in text  # the restart
    assert text.splitlines()[-1] == "== Done: 11 steps, all checks passed"


def test_scenario_failed_check_exits_1_with_json_details(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"steps": ["add K v", "expect guest 0 K other", "guest show 0"]}))
    code, text = run(["--scenario", str(path), "--json"])
    assert code == 1
    document = json.loads(text)
    assert document["ok"] is False and document["failed_checks"] == 1
    steps = document["steps"]
    assert steps[0] == {
        "line": 1,
        "command": ["add", "K", "v"],
        "ok": True,
        "result": None,
        "status": "HV_S_OK",
    }
    assert steps[1]["ok"] is False and "expected 'other'" in steps[1]["error"]
    assert steps[2]["result"] == [{"key": "K", "value": "v"}]


def test_an_unknown_command_fails_the_scenario(tmp_path):
    """The issue's typo: 'hots add X' used to print an error and then 'all checks passed'."""
    path = tmp_path / "typo.kvp"
    path.write_text("hots add X\n")
    code, text = run(["--scenario", str(path)])
    assert code == 1, text
    assert "error: unknown command 'hots' (try 'help')" in text
    assert text.splitlines()[-1] == "== Done: 1 steps, 1 step(s) failed (line 1)"
    code, text = run(["--scenario", str(path), "--json"])
    assert code == 1
    document = json.loads(text)
    assert document["ok"] is False
    assert document["failed_steps"] == [1]
    assert document["failed_checks"] == 0


def test_a_step_that_cannot_run_fails_but_a_checked_host_failure_does_not(tmp_path):
    path = tmp_path / "s.kvp"
    path.write_text(
        "add K v\n"
        "add K again\n"  # the host refuses (already exists) ...
        "expect status HV_ERROR_ALREADY_EXISTS\n"  # ... and the scenario says it should
        "remove Missing\n"  # a host failure nothing checks: fails the run
        "guest show nopool\n"  # not a pool: the command cannot run
        "expect guest 0 K v\n"
        "get 0\n"  # wrong arguments
    )
    code, text = run(["--scenario", str(path), "--json"])
    assert code == 1
    document = json.loads(text)
    assert document["failed_steps"] == [4, 5, 7]
    assert document["failed_checks"] == 0
    assert [s["ok"] for s in document["steps"]] == [True, False, True, False, False, True, False]
    path.write_text("add K v\nremove Missing\n")  # unchecked at the very end
    assert json.loads(run(["--scenario", str(path), "--json"])[1])["failed_steps"] == [2]


def test_unreadable_scenario_is_a_usage_error(tmp_path):
    assert run(["--scenario", str(tmp_path / "missing")])[0] == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert run(["--scenario", str(bad)])[0] == 2


def test_daemon_that_never_registers(tmp_path):
    path = tmp_path / "s.kvp"
    path.write_text("intrinsic\n")
    code, text = run(["--scenario", str(path), "--daemon-cmd", "sh -c 'exit 3'"])
    assert code == 1
    assert "daemon exited with status 3" in text


def test_usage_errors():
    assert run(["--bogus"])[0] == 2
    assert run(["--timeout", "0"])[0] == 2
    assert run(["--help"])[0] == 0


# --------------------------------------------------------------------------- serve mode


def control(path: str, requests):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        stream = sock.makefile("rw")
        replies = []
        for request in requests:
            stream.write(json.dumps(request) + "\n")
            stream.flush()
            replies.append(json.loads(stream.readline()))
        return replies


def wait_path(path: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_serve_with_control_socket_and_a_separately_started_daemon(tmp_path):
    device, ctl, pools = str(tmp_path / "kvp.sock"), str(tmp_path / "ctl"), str(tmp_path / "pools")
    os.mkdir(pools)
    out = io.StringIO()
    codes = []
    server = threading.Thread(
        target=lambda: codes.append(
            main(["--serve", device, "--control", ctl, "--pool-dir", pools, "--no-console"], out)
        )
    )
    server.start()
    daemon = None
    try:
        assert wait_path(ctl) and wait_path(device)
        command = default_daemon_command(device, pools, str(tmp_path))
        daemon = subprocess.Popen(
            command, env=package_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        replies = control(
            ctl,
            [
                "wait 20",
                ["add", "Env", "prod"],
                {"cmd": "guest", "args": ["set", "Build", "7"]},
                "guest",
                "remove Missing",
                "intrinsic",
                "bogus",
                "quit",
            ],
        )
        assert replies[0]["ok"] is True
        assert replies[1] == {"ok": True, "result": None, "status": "HV_S_OK"}
        assert replies[3]["result"] == [{"Name": "Build", "Data": "7", "Source": 1}]
        assert replies[4]["ok"] is False and replies[4]["status"] == "HV_S_CONT"
        assert {"Name": "IntegrationServicesVersion", "Data": "3.1", "Source": 2} in replies[5][
            "result"
        ]
        assert "unknown command" in replies[6]["error"]
        assert replies[7] == {"ok": True, "result": "bye"}
        server.join(10)
        assert codes == [0]
        assert not os.path.exists(device) and not os.path.exists(ctl)
        text = out.getvalue()
        assert "KERNEL daemon opened the device" in text
        assert "HOST   AddKvpItems Env = prod" in text
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(10)
        server.join(10)


def test_serve_console_reads_commands_until_quit(tmp_path):
    device = str(tmp_path / "kvp.sock")
    out = io.StringIO()
    stdin = io.StringIO("help\nstats\nquit\nnever reached\n")
    from pykvpd.simulator.serve import serve

    assert serve(device, out, stdin=stdin, timeout=1.0) == 0
    text = out.getvalue()
    assert "add KEY VALUE [KEY VALUE ...] AddKvpItems (pool 0)" in text
    assert "registrations: 0" in text
    assert "never reached" not in text


def test_serve_host_command_without_a_daemon_fails_at_once(tmp_path):
    """Used to block the console for the whole reply timeout (here 600 s) before HV_E_FAIL."""
    device = str(tmp_path / "kvp.sock")
    result = subprocess.run(
        [sys.executable, "-m", "pykvpd", "simulate", "--serve", device, "--timeout", "600"],
        input="add K v\nenumerate 0\nquit\n",
        capture_output=True,
        text=True,
        timeout=120,  # a bound far below the 600 s the old console blocked for
        env=package_env(),
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    failures = [line for line in result.stdout.splitlines() if "-> failed" in line]
    assert failures == [
        f"HOST   -> failed: SET 'K' in pool 0 failed: HV_E_FAIL (no daemon is registered on "
        f"{device}; start one with --device {device})",
        f"HOST   -> failed: enumeration of pool 0 stopped after 0 items: HV_E_FAIL (no daemon "
        f"is registered on {device}; start one with --device {device})",
    ]
