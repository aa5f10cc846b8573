"""The daemon's status file and ``pykvpd status``.

The daemon publishes its state in a small JSON file (``/run/pykvpd/status.json``) rather than
over a socket, so ``pykvpd status`` works for any user, needs no running daemon to answer, and
cannot hang. A status file left behind by a dead daemon is recognised by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from pykvpd.escaping import escape
from pykvpd.protocol import POOL_COUNT
from pykvpd.store import DEFAULT_POOL_DIR, POOL_LABELS, RECORD_SIZE, pool_filename

DEFAULT_STATUS_PATH = "/run/pykvpd/status.json"

# Exit codes of `pykvpd status`, following the LSB init-script convention.
EXIT_OK = 0  # running and registered with the kernel
EXIT_NOT_REGISTERED = 1  # running, not (yet) registered: waiting for the device or reopening
EXIT_NOT_RUNNING = 3  # no status file, or its pid is gone
EXIT_UNKNOWN = 4  # status file unreadable or damaged

log = logging.getLogger(__name__)


class StatusFile:
    """The daemon's side: keep the file current; a failure is logged, never raised."""

    def __init__(self, path: str = DEFAULT_STATUS_PATH) -> None:
        self.path = path
        self.fields: Dict[str, Any] = {}
        self._last_error: Optional[str] = None

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` and rewrite the file atomically (temp file + rename)."""
        self.fields.update(fields)
        self.fields["updated"] = time.time()
        try:
            self._write()
        except (OSError, TypeError, ValueError) as exc:
            message = str(exc)
            if message != self._last_error:  # once per distinct problem, not once per request
                log.warning("cannot write status file %s: %s", self.path, message)
                self._last_error = message
            return
        self._last_error = None

    def _write(self) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        data = json.dumps(self.fields, sort_keys=True, indent=1).encode("utf-8") + b"\n"
        # Not tempfile.mkstemp: importing tempfile costs the daemon over a megabyte of RSS.
        tmp = os.path.join(directory, f".status.{os.getpid()}.tmp")
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644
        )
        try:
            os.fchmod(fd, 0o644)  # readable by `pykvpd status` run as any user
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def read_status(path: str = DEFAULT_STATUS_PATH) -> Optional[Dict[str, Any]]:
    """The status file's fields, None if it does not exist; OSError/ValueError if unusable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` exists (EPERM means it does, just not ours)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pool_sizes(pool_dir: str) -> List[Dict[str, Any]]:
    """Size, whole records and partial tail of every pool file (tails are reported, not hidden)."""
    pools = []
    for number in range(POOL_COUNT):
        path = os.path.join(pool_dir, pool_filename(number))
        entry: Dict[str, Any] = {"pool": number, "name": POOL_LABELS.get(number, str(number))}
        entry["path"] = path
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            entry.update(exists=False, size=0, records=0, partial_bytes=0)
        except OSError as exc:
            entry.update(exists=None, error=str(exc))
        else:
            records, partial = divmod(size, RECORD_SIZE)
            entry.update(exists=True, size=size, records=records, partial_bytes=partial)
        pools.append(entry)
    return pools


def collect(status_path: str, pool_dir: Optional[str]) -> Dict[str, Any]:
    """Everything `pykvpd status` reports, as one JSON-ready dict with an ``exit`` code."""
    report: Dict[str, Any] = {"status_file": status_path}
    try:
        fields = read_status(status_path)
    except (OSError, ValueError) as exc:
        fields = None
        report["status_error"] = str(exc)
    fields = fields or {}
    report.update(fields)
    report["running"] = pid_alive(fields.get("pid"))
    report["registered"] = bool(fields.get("registered")) and report["running"]
    directory = pool_dir or fields.get("pool_dir") or DEFAULT_POOL_DIR
    report["pool_dir"] = directory
    report["pools"] = pool_sizes(directory)
    if "status_error" in report:
        report["exit"] = EXIT_UNKNOWN
    elif not report["running"]:
        report["exit"] = EXIT_NOT_RUNNING
    elif not report["registered"]:
        report["exit"] = EXIT_NOT_REGISTERED
    else:
        report["exit"] = EXIT_OK
    return report


def _when(epoch: Any) -> str:
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return "unknown"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    age = max(0, int(time.time() - epoch))
    hours, rest = divmod(age, 3600)
    return f"{stamp} ({hours}h {rest // 60:02d}m ago)"


def render(report: Dict[str, Any]) -> str:
    """Human-readable form of collect()'s report; every text from the status file escaped
    (it quotes host requests and config files)."""
    lines = []
    if "status_error" in report:
        lines.append(f"daemon: status unknown ({escape(str(report['status_error']))})")
    elif report["running"]:
        state = "registered with the kernel" if report["registered"] else "NOT registered"
        lines.append(f"daemon: running (pid {escape(str(report['pid']))}), {state}")
    elif report.get("pid") is not None:
        lines.append(
            f"daemon: not running (stale status file names pid {escape(str(report['pid']))})"
        )
    else:
        lines.append(f"daemon: not running (no status file {report['status_file']})")
    if report["registered"]:
        lines.append(f"registered since: {_when(report.get('registered_since'))}")
    if report.get("version"):
        lines.append(f"host version: {escape(str(report['version']))}")
    if "host_ops" in report:
        lines.append(f"host operations: {escape(str(report['host_ops']))}")
    if report.get("last_op"):
        lines.append(f"last operation: {escape(str(report['last_op']))}")
    if "pid" in report:
        lines.append(f"last error: {escape(str(report.get('last_error') or 'none'))}")
    reload_line = _reload_line(report)
    if reload_line:
        lines.append(reload_line)
    lines.append(f"pools in {escape(str(report['pool_dir']))}:")
    for pool in report["pools"]:
        lines.append("  " + _pool_line(pool))
    return "\n".join(lines)


def _reload_line(report: Dict[str, Any]) -> Optional[str]:
    last = report.get("last_reload")
    if not isinstance(last, dict):
        return None
    when = _when(last.get("at"))
    if last.get("ok") is True:
        return f"last reload: {when}, ok ({report.get('reloads')} since start)"
    error = escape(str(last.get("error")))
    return f"last reload: {when}, FAILED, the old configuration stays: {error}"


def _pool_line(pool: Dict[str, Any]) -> str:
    head = f"{pool['pool']} {pool['name']:<13}"
    if pool.get("error"):
        return f"{head} error: {escape(str(pool['error']))}"
    if not pool["exists"]:
        return f"{head} missing"
    text = f"{head} {pool['records']:>6} records {pool['size']:>10} bytes"
    if pool["partial_bytes"]:
        text += f"  (+{pool['partial_bytes']} bytes of a partial record)"
    return text


def main_status(argv: Optional[Sequence[str]] = None) -> int:
    """``pykvpd status``: 0 running and registered, 1 not registered, 3 not running, 4 unknown."""
    parser = argparse.ArgumentParser(
        prog="pykvpd status",
        description="Show whether the KVP daemon is running and registered, and the pool sizes.",
        epilog="Exit status: 0 running and registered, 1 running but not registered, "
        "3 not running, 4 status unknown.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--status-file", default=DEFAULT_STATUS_PATH, metavar="PATH")
    parser.add_argument("--pool-dir", default=None, metavar="DIR")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    report = collect(args.status_file, args.pool_dir)
    if args.json:
        print(json.dumps(report, sort_keys=True, indent=2))
    else:
        print(render(report))
    return int(report["exit"])
