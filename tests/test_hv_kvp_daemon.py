"""The process name tools search for: ``hv_kvp_daemon`` in the command line ``ps -ef`` prints.

WALinuxAgent 2.7.3's ``RDMAHandler.is_kvp_daemon_running()`` runs ``ps -ef`` and returns True
when the text ``hv_kvp_daemon`` or ``hypervkvpd`` occurs anywhere in its output (facts from its
documented behaviour, re-stated in our own code as ``systemd_guest.waagent_sees_kvp_daemon``).
The real-systemd test applies the same check to the daemon the shipped unit starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types

from systemd_guest import waagent_sees_kvp_daemon

from pykvpd import hv_kvp_daemon

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ps_ef() -> str:
    """``ps -ef`` as a service runs it (no terminal: the lines are not cut to its width)."""
    return subprocess.run(["ps", "-ef"], capture_output=True, text=True, check=True,
                          stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"}).stdout


def test_named_argv_for_a_script_uses_the_sibling_entry_script(tmp_path):
    (tmp_path / "pykvpd").write_text("")
    (tmp_path / "hv_kvp_daemon").write_text("")
    cmdline = b"/usr/bin/python3\0" + str(tmp_path / "pykvpd").encode() + b"\0-n\0"
    argv = [str(tmp_path / "pykvpd"), "-n", "--wait-device", "10"]
    assert hv_kvp_daemon.named_argv(cmdline, "/usr/bin/python3", argv, None, ["-s"]) == [
        "/usr/bin/python3", "-s", str(tmp_path / "hv_kvp_daemon"), "-n", "--wait-device", "10"
    ]


def test_named_argv_for_a_module_run():
    argv = hv_kvp_daemon.named_argv(b"python3\0-m\0pykvpd\0-n\0", "/v/bin/python",
                                    ["/src/pykvpd/__main__.py", "-n"], "pykvpd.__main__")
    assert argv == ["/v/bin/python", "-m", "pykvpd.hv_kvp_daemon", "-n"]


def test_never_execs_another_program_that_called_main(tmp_path):
    """pytest (``-m pytest``) or a script of another name calling pykvpd.startup.main()."""
    assert hv_kvp_daemon.named_argv(b"python\0-m\0pytest\0", "/usr/bin/python3",
                                    ["/x/pytest/__main__.py"], "pytest") is None
    (tmp_path / "hv_kvp_daemon").write_text("")
    other = str(tmp_path / "my-tool")
    assert hv_kvp_daemon.named_argv(b"python3\0" + other.encode(), "/usr/bin/python3",
                                    [other], None) is None


def test_no_exec_when_the_name_is_there_or_cannot_be_had(tmp_path):
    assert hv_kvp_daemon.named_argv(b"/usr/bin/python3\0/usr/bin/hv_kvp_daemon\0-n\0",
                                    "/usr/bin/python3", ["/usr/bin/hv_kvp_daemon"], None) is None
    lone = str(tmp_path / "pykvpd")  # no sibling script
    assert hv_kvp_daemon.named_argv(b"python3\0" + lone.encode(), "/usr/bin/python3",
                                    [lone], None) is None


def test_interpreter_flags():
    flags = types.SimpleNamespace(isolated=0, ignore_environment=1, no_user_site=1)
    assert hv_kvp_daemon.interpreter_flags(flags) == ["-E", "-s"]
    assert hv_kvp_daemon.interpreter_flags(types.SimpleNamespace(isolated=1)) == ["-I"]


def test_daemon_started_as_pykvpd_shows_hv_kvp_daemon_in_ps_ef(tmp_path):
    """Started with -m pykvpd (no hv_kvp_daemon anywhere), the same PID soon runs under the
    name, and WALinuxAgent's check finds it in the real ps -ef output."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pykvpd", "-n", "--device", str(tmp_path / "absent"),
         "--wait-device", "30", "--pool-dir", str(tmp_path / "pools"),
         "--status-file", str(tmp_path / "status.json"), "--config", str(tmp_path / "none")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        cmdline = b""
        while time.monotonic() < deadline:
            with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                cmdline = f.read()
            if b"hv_kvp_daemon" in cmdline:
                break
            time.sleep(0.05)
        assert cmdline.split(b"\0")[1:3] == [b"-m", b"pykvpd.hv_kvp_daemon"], cmdline
        ps = ps_ef()
        ours = [line for line in ps.splitlines() if line.split()[1] == str(proc.pid)]
        assert len(ours) == 1 and "hv_kvp_daemon" in ours[0]
        assert waagent_sees_kvp_daemon(ps)
    finally:
        proc.terminate()
        proc.wait(30)
