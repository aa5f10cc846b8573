"""The daemon under the C daemon's name: ``python3 -m pykvpd.hv_kvp_daemon``, and the one re-exec
that puts ``hv_kvp_daemon`` into the command line ``ps -ef`` prints, however it was started.

Tools decide whether a KVP daemon runs by searching the whole ``ps -ef`` output for
``hv_kvp_daemon`` (WALinuxAgent's RDMA set-up; if it finds none it installs the C daemon's
package). ``prctl(PR_SET_NAME)`` changes only the 15-byte comm (``ps -e``, ``top``); the command
line is the exec'd argv, which a process without CAP_SYS_RESOURCE cannot replace. So a daemon
started as ``/usr/bin/python3 /usr/bin/pykvpd -n`` execs itself once, same PID (systemd's
MainPID and the watchdog's WATCHDOG_PID stay valid), as ``/usr/bin/python3
/usr/bin/hv_kvp_daemon -n`` (the sibling entry script the package ships) or, when it was run
with ``-m``, as ``python3 -m pykvpd.hv_kvp_daemon -n``. The module search path is what it was
before: the script's directory or, for ``-m``, the working directory.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import List, Optional, Sequence

NAME = "hv_kvp_daemon"

log = logging.getLogger("pykvpd")


def interpreter_flags(flags: object) -> List[str]:
    """The flags that change how the interpreter finds modules, to be kept across the exec."""
    if getattr(flags, "isolated", 0):
        return ["-I"]
    out = []
    if getattr(flags, "ignore_environment", 0):
        out.append("-E")
    if getattr(flags, "no_user_site", 0):
        out.append("-s")
    return out


def named_argv(
    cmdline: bytes,
    executable: str,
    argv: Sequence[str],
    main_module: Optional[str],
    flags: Sequence[str] = (),
) -> Optional[List[str]]:
    """The argv to exec so that the command line contains NAME, or None when it already does,
    when the program is not pykvpd's own entry point (``-m pykvpd`` or the ``pykvpd`` script:
    never exec a test runner or another program that called main()), or when there is no way
    (no sibling ``hv_kvp_daemon`` script next to the ``pykvpd`` one).

    ``main_module`` is ``__main__.__spec__.name`` (None when a script file ran).
    """
    if NAME.encode() in cmdline or not executable or not argv:
        return None
    if main_module is not None:
        if main_module not in ("pykvpd", "pykvpd.__main__"):
            return None
        return [executable, *flags, "-m", "pykvpd.hv_kvp_daemon", *argv[1:]]
    if os.path.basename(argv[0]) != "pykvpd":
        return None
    script = os.path.join(os.path.dirname(os.path.abspath(argv[0])), NAME)
    if not os.path.isfile(script):
        return None
    return [executable, *flags, script, *argv[1:]]


def ensure_named() -> None:
    """Exec as described in the module docstring; returns only when no exec is needed (or it
    failed, which is logged: the daemon then runs under its own name)."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    argv = named_argv(cmdline, sys.executable, sys.argv, getattr(spec, "name", None),
                      interpreter_flags(sys.flags))
    if argv is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        log.warning("could not re-exec as %s (%s): ps -ef will not show that name", NAME, exc)


if __name__ == "__main__":
    from pykvpd.startup import main as _main

    sys.exit(_main())
