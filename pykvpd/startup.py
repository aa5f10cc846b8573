"""The daemon's command line and process set-up: options, subcommands, detaching, logging,
the process name, and the exit status of each way a start can fail.

Command line compatible with ``hv_kvp_daemon`` (``-n``, ``-h``, ``-d``; an unknown option exits 1)
plus our own options. The service itself is pykvpd/daemon.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from . import __version__, transport
from .daemon import DEFAULT_DEVICE, PROCESS_NAME, Daemon
from .store import PoolError

log = logging.getLogger("pykvpd")

SUBCOMMANDS = ("simulate", "status", "reload")
# EX_UNAVAILABLE: the single-opener device is held by another daemon. The unit does not
# restart on it (RestartPreventExitStatus=69); every other failure exits 1, as the C daemon.
EXIT_DEVICE_BUSY = 69


class UsageError(Exception):
    """Bad command line: the C daemon prints its usage and exits 1."""


class _Formatter(argparse.HelpFormatter):
    """A fixed width: the default asks shutil for the terminal size, and importing shutil
    (with bz2 and lzma) costs the daemon over a megabyte of RSS for a help text."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hv_kvp_daemon",
        formatter_class=_Formatter,
        description="Hyper-V Key-Value Pair (KVP) guest daemon (pykvpd).",
        epilog="Subcommands: 'pykvpd simulate' (host simulator), 'pykvpd status', "
        "'pykvpd reload' (re-read the config file and wait until the daemon has).",
    )
    parser.add_argument("-n", "--no-daemon", action="store_true", help="stay in the foreground")
    parser.add_argument(
        "-d", "--debug", action="store_true", help="log one line per host operation"
    )
    parser.add_argument(
        "--debug-values", action="store_true", help="with -d, also log values (may be secrets)"
    )
    parser.add_argument("--pool-dir", help="pool directory (default /var/lib/hyperv)")
    parser.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        help="KVP device, or a SOCK_SEQPACKET socket of a simulator (default %(default)s)",
    )
    parser.add_argument(
        "--wait-device",
        type=float,
        metavar="SECONDS",
        help="wait this long for the device to appear (default 0: exit 1 if absent)",
    )
    parser.add_argument("--config", default="/etc/pykvpd.conf", help="config file (optional)")
    parser.add_argument("--ip-injection", choices=("off", "dry-run", "on"), help="SET_IP_INFO mode")
    parser.add_argument(
        "--status-file", default="/run/pykvpd/status.json", help="where 'pykvpd status' looks"
    )
    parser.add_argument("--version", action="version", version=f"pykvpd {__version__}")
    return parser


def _daemonize() -> None:
    """Detach like daemon(1, 0): keep the working directory, stdio to /dev/null."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv[0], argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"hv_kvp_daemon: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # -h / --version
        return int(exc.code or 0)
    return _run(args)


def _subcommand(name: str, argv: List[str]) -> int:
    if name == "simulate":
        from .simulator.cli import main as simulate

        return simulate(argv)
    if name == "reload":
        from .reload import main_reload

        return main_reload(argv)
    from .status import main_status

    return main_status(argv)


def _run(args: argparse.Namespace) -> int:
    from . import service
    from .config import ConfigError, load_config

    service.setup_logging(bool(args.debug))
    from .hv_kvp_daemon import ensure_named

    ensure_named()  # an exec (same PID) unless ps -ef already shows hv_kvp_daemon
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    if config.debug:
        logging.getLogger().setLevel(logging.DEBUG)
    if not args.no_daemon:
        _daemonize()
        service.setup_logging(bool(args.debug or config.debug), use_syslog=True)
    transport.set_process_name(PROCESS_NAME)
    log.info("pykvpd %s starting; pid is %d", __version__, os.getpid())
    try:
        daemon = Daemon(args, config)
    except PoolError as exc:
        log.error("cannot initialise the pools: %s", exc)
        return 1
    daemon.install_signals()
    try:
        return daemon.run()
    except transport.DeviceBusy as exc:
        log.error(
            "%s is busy: another KVP daemon (hv_kvp_daemon or hypervkvpd) owns it; "
            "stop it first (%s)",
            args.device,
            exc,
        )
        return EXIT_DEVICE_BUSY
    except transport.DeviceMissing as exc:
        log.error("no KVP device: %s (is this a Hyper-V guest with hv_utils loaded?)", exc)
        return 1
    except (transport.TransportError, OSError) as exc:
        log.error("giving up on %s: %s", args.device, exc)
        return 1
    finally:
        daemon.close()


if __name__ == "__main__":
    sys.exit(main())
