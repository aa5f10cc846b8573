"""``kvp``: read, write, watch and check the KVP pool files from the shell.

A thin layer of argument parsing and output formatting over ``pools`` (format, locking, crash
safety), ``events`` (split events, chunks, fsck, batch writes) and ``watch`` (inotify events and
hooks). Exit codes: 0 ok, 1 not found / timeout / not stale / problems left, 2 usage or
validation, 3 I/O or lock. See docs/kvp.md for the synopsis and the ``--json`` schema.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import logging
import os
import signal
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from . import store
from .hooks import HookRunner
from .store import (
    DEFAULT_POOL_DIR,
    KEY_SIZE,
    POOL_COUNT,
    POOL_LABELS,
    POOL_NAMES,
    RECORD_SIZE,
    VALUE_SIZE,
    LockTimeout,
    PoolError,
    PoolFile,
    PoolImage,
    RecordTooLarge,
    decode_pool,
    pool_filename,
    pool_number,
)
from .watch import OPS, Change, PoolWatcher, wait_for

log = logging.getLogger("kvp")

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_IO = 3

SCHEMA_VERSION = 1
SAFE_KEY_BYTES = 254  # what the host can read back after the kernel's UTF-16 conversion
SAFE_VALUE_BYTES = 1022
UNSAFE_KEY_BYTES = KEY_SIZE - 1
UNSAFE_VALUE_BYTES = VALUE_SIZE - 1
GET_ORDER = (0, 3, 1, 2, 4)  # host data first: external, auto-external, guest, auto, auto-internal
ALL_POOLS = tuple(range(POOL_COUNT))
GUEST = POOL_NAMES["guest"]


class CliError(Exception):
    """An error to print as ``kvp: message`` and exit with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def usage(message: str) -> CliError:
    return CliError(message, EXIT_USAGE)


# --------------------------------------------------------------------------- arguments

_COMMON_DEFAULTS: Dict[str, Any] = {
    "dir": None,
    "root": None,
    "pool": [],
    "json": False,
    "null": False,
    "raw": False,
    "unsafe": False,
    "lock_timeout": 20.0,
    "verbose": 0,
    "quiet": False,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise usage(f"{message} (see 'kvp --help')")


def _common() -> argparse.ArgumentParser:
    """Options accepted before and after the command (``kvp --pool 0 get K`` or ``get K -p 0``)."""
    p = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--dir", metavar="DIR", help=f"pool directory (default {DEFAULT_POOL_DIR})")
    where.add_argument("--root", metavar="ROOT", help="offline image: use ROOT/var/lib/hyperv")
    p.add_argument(
        "-p",
        "--pool",
        action="append",
        metavar="POOL",
        help="0..4 or external|guest|auto|auto-external|auto-internal; repeat or comma-separate",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON output (schema in docs/kvp.md)")
    out.add_argument("--null", action="store_true", help="NUL-terminated fields")
    out.add_argument("--raw", action="store_true", help="values exactly as stored, unescaped")
    p.add_argument("--unsafe", action="store_true", help="allow keys to 511, values to 2047 bytes")
    p.add_argument("--lock-timeout", type=float, metavar="S", help="give up on a lock after S s")
    p.add_argument("-v", "--verbose", action="count", help="log more (to stderr)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog="kvp",
        parents=[common],
        description="Read, write, watch and check Hyper-V KVP pools (/var/lib/hyperv).",
        epilog="Exit status: 0 ok, 1 not found/timeout, 2 usage or validation, 3 I/O or lock.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=help_text)

    p = command("list", "list records (default: every pool)")
    p.add_argument("--events", action="store_true", help="reassembled cloud-init/azure-init events")

    p = command("get", "print a value (default: first match in pools 0, 3, 1, 2, 4)")
    p.add_argument("key")
    p.add_argument("--join", action="store_true", help="reassemble KEY.0..N (as Ignition reads)")

    p = command("set", "add or modify a record (default pool: guest)")
    p.add_argument("key")
    p.add_argument("value", help="the value, or - to read it from stdin")
    p.add_argument("--chunk", action="store_true", help="split a long value over KEY.0..N")
    p.add_argument("--chunk-size", type=int, metavar="BYTES", help="bytes per chunk")

    p = command("delete", "delete a record (default pool: guest)")
    p.add_argument("key")
    p.add_argument("--chunk", action="store_true", help="also delete KEY.0..N")

    p = command("dump", "decode any pool file, damaged or not, and say what is wrong")
    p.add_argument("file", help="a pool file, or - for stdin")

    p = command("watch", "print (or --exec) one event per change; fires once at start")
    p.add_argument("keys", nargs="*", metavar="KEY", help="keys or glob patterns (default: all)")
    p.add_argument("--op", metavar="OPS", help="only these ops: initial,add,modify,delete")
    p.add_argument("--no-initial", action="store_true", help="skip the events for current state")
    p.add_argument("-n", "--count", type=int, metavar="N", help="exit after N events")
    p.add_argument("--timeout", type=float, metavar="S", help="per-run timeout of --exec")
    p.add_argument(
        "--exec",
        nargs=argparse.REMAINDER,
        metavar="CMD",
        help="run CMD ARGS... per event (last option; no shell)",
    )

    p = command("wait", "wait until KEY is present (with --value V); exit 1 on timeout")
    p.add_argument("key")
    p.add_argument("--value", metavar="V")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")

    command("is-stale", "exit 0 if the pool was not modified since boot, else 1")

    p = command("clear", "remove every record of a pool (default: guest)")
    p.add_argument("--if-stale", action="store_true", help="only if not modified since boot")

    p = command("fsck", "check pools (or FILEs) for damage; --repair fixes what is safe")
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--repair", action="store_true")
    return parser


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for name, default in _COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, list(default) if isinstance(default, list) else default)
    if sum(bool(x) for x in (args.json, args.null, args.raw)) > 1:
        raise usage("use only one of --json, --null and --raw")
    try:
        pools: List[int] = []
        for item in args.pool:
            pools.extend(pool_number(part.strip()) for part in item.split(",") if part.strip())
    except ValueError as exc:
        raise usage(str(exc)) from None
    args.pools = list(dict.fromkeys(pools))
    return args


def pool_directory(args: argparse.Namespace) -> str:
    if args.root is not None:
        return os.path.join(args.root, DEFAULT_POOL_DIR.lstrip("/"))
    return args.dir if args.dir is not None else DEFAULT_POOL_DIR


def one_pool(args: argparse.Namespace, default: int = GUEST) -> int:
    if len(args.pools) > 1:
        raise usage(f"'{args.command}' works on one pool; got {len(args.pools)}")
    return args.pools[0] if args.pools else default


# --------------------------------------------------------------------------- validation


def checked(raw: bytes, what: str, limit: int, unsafe: bool) -> bytes:
    """``raw`` if it is a storable key/value; a usage error naming the limit and size if not."""
    nul = raw.find(b"\0")
    if nul >= 0:
        raise usage(f"{what} contains a NUL byte (at byte {nul})")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise usage(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    if len(raw) > limit:
        hint = "" if unsafe else " (--unsafe allows more, but the host may not see it whole)"
        raise usage(f"{what} is {len(raw)} UTF-8 bytes; the limit is {limit}{hint}")
    return raw


def limits(args: argparse.Namespace) -> Tuple[int, int]:
    if args.unsafe:
        return UNSAFE_KEY_BYTES, UNSAFE_VALUE_BYTES
    return SAFE_KEY_BYTES, SAFE_VALUE_BYTES


def arg_bytes(text: str) -> bytes:
    """Command-line text back to its bytes (undoes Python's surrogateescape for non-UTF-8)."""
    return os.fsencode(text)


def check_key(args: argparse.Namespace, key: str) -> bytes:
    raw = arg_bytes(key)
    if not raw:
        raise usage("key is empty")
    return checked(raw, "key", limits(args)[0], args.unsafe)


# --------------------------------------------------------------------------- output


def escape(data: bytes) -> str:
    """One printable line: control characters, backslashes and invalid UTF-8 escaped."""
    out = []
    for ch in data.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)


def text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


class Output:
    """stdout as bytes; every write is flushed, so watch output reaches pipes at once."""

    def __init__(self) -> None:
        self.stream = sys.stdout.buffer

    def write(self, data: bytes) -> None:
        self.stream.write(data)
        self.stream.flush()

    def line(self, line: str) -> None:
        self.write(line.encode("utf-8", "surrogateescape") + b"\n")

    def json(self, obj: object) -> None:
        self.line(json.dumps(obj, ensure_ascii=False, sort_keys=False))


def table(out: Output, rows: List[Tuple[str, ...]], header: Tuple[str, ...]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    widths = [min(w, 48) for w in widths]
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths)] + [row[-1]]
        out.line("  ".join(cells).rstrip())


# --------------------------------------------------------------------------- reading pools


def open_pool(args: argparse.Namespace, number: int, writable: bool = False) -> PoolFile:
    path = os.path.join(pool_directory(args), pool_filename(number))
    return PoolFile(path, create=writable, writable=writable, lock_timeout=args.lock_timeout)


def require_dir(args: argparse.Namespace) -> str:
    directory = pool_directory(args)
    if not os.path.isdir(directory):
        raise CliError(f"{directory}: no such pool directory", EXIT_IO)
    return directory


def read_image(args: argparse.Namespace, number: int) -> Optional[PoolImage]:
    """A pool's records under its shared lock, or None if the file does not exist."""
    pool = open_pool(args, number)
    try:
        return pool.image()
    except PoolError:
        if not os.path.exists(pool.path):
            return None
        raise
    finally:
        pool.close()


def valid_records(image: Optional[PoolImage]) -> Iterator[Tuple[int, Any]]:
    if image is None:
        return
    for index, rec in enumerate(image.records):
        if rec.valid:
            yield index, rec


def first_values(image: Optional[PoolImage]) -> Dict[str, bytes]:
    values: Dict[str, bytes] = {}
    for _index, rec in valid_records(image):
        values.setdefault(rec.text_key, rec.value)
    return values


# --------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    directory = require_dir(args)
    numbers = args.pools or list(ALL_POOLS)
    images = {n: read_image(args, n) for n in numbers}
    if args.events:
        return list_events(args, out, images)
    pools_info, records = [], []
    for n in numbers:
        image = images[n]
        problems = image.problems if image is not None else []
        for problem in problems:
            log.warning("%s: %s", os.path.join(directory, pool_filename(n)), problem)
        pools_info.append(
            {
                "pool": n,
                "pool_name": POOL_LABELS[n],
                "path": os.path.join(directory, pool_filename(n)),
                "exists": image is not None,
                "problems": problems,
            }
        )
        records.extend((n, i, rec) for i, rec in valid_records(image))
    if args.json:
        out.json(
            {
                "version": SCHEMA_VERSION,
                "directory": directory,
                "pools": pools_info,
                "records": [
                    {
                        "pool": n,
                        "pool_name": POOL_LABELS[n],
                        "index": i,
                        "key": rec.text_key,
                        "value": rec.text_value,
                    }
                    for n, i, rec in records
                ],
            }
        )
    elif args.null:
        for n, _i, rec in records:
            out.write(POOL_LABELS[n].encode() + b"\0" + rec.key + b"\0" + rec.value + b"\0")
    elif args.raw:
        for n, _i, rec in records:
            out.write(POOL_LABELS[n].encode() + b"\t" + rec.key + b"\t" + rec.value + b"\n")
    elif records:
        rows = [(POOL_LABELS[n], escape(rec.key), escape(rec.value)) for n, _i, rec in records]
        table(out, rows, ("POOL", "KEY", "VALUE"))
    return EXIT_OK


def list_events(args: argparse.Namespace, out: Output, images: Dict[int, Any]) -> int:
    triples = [(n, i, rec) for n, image in images.items() for i, rec in valid_records(image)]
    found = store.reassemble_events(triples)
    boot = store.boot_time()

    def this_boot(event: store.KvpEvent) -> Optional[bool]:
        inc = event.fields.get("incarnation")
        if boot is None or not isinstance(inc, int):
            return None
        return abs(inc - boot) <= 2  # cloud-init's int(time.time() - uptime) drifts by a second

    if args.json:
        out.json(
            {
                "version": SCHEMA_VERSION,
                "events": [
                    {
                        "source": e.source,
                        "pool": e.pool,
                        "pool_name": POOL_LABELS[e.pool],
                        "key": e.key,
                        "parts": len(e.parts),
                        "complete": e.complete,
                        "this_boot": this_boot(e),
                        "fields": e.fields,
                        "msg": e.msg,
                    }
                    for e in found
                ],
            }
        )
        return EXIT_OK
    for e in found:
        f = e.fields
        kind = f.get("event_type") or f.get("level") or ""
        head = [str(f.get("timestamp") or f.get("ts") or "-"), e.source, str(kind), str(f["name"])]
        if "result" in f:
            head.append(str(f["result"]))
        if "duration" in f:
            head.append(f"{f['duration']}s")
        if len(e.parts) > 1 or not e.complete:
            head.append(f"[{len(e.parts)} parts{'' if e.complete else ', INCOMPLETE'}]")
        if this_boot(e) is False:
            head.append("[previous boot]")
        msg = e.msg.encode("utf-8", "surrogateescape")
        out.line(" ".join(head) + ("  " + escape(msg) if msg else ""))
    return EXIT_OK


def cmd_get(args: argparse.Namespace, out: Output) -> int:
    require_dir(args)
    key = arg_bytes(args.key)
    for n in args.pools or list(GET_ORDER):
        image = read_image(args, n)
        values = first_values(image)
        chunks = None
        if args.join:
            joined = store.join_chunks(values, text(key))
            if joined is None:
                continue
            value, chunks = joined
        elif text(key) in values:
            value = values[text(key)]
        else:
            continue
        if args.json:
            result = {
                "version": SCHEMA_VERSION,
                "pool": n,
                "pool_name": POOL_LABELS[n],
                "key": text(key),
                "value": text(value),
            }
            if chunks is not None:
                result["chunks"] = chunks
            out.json(result)
        else:
            emit_value(args, out, value)
        return EXIT_OK
    where = "any pool" if not args.pools else ", ".join(POOL_LABELS[n] for n in args.pools)
    if not args.quiet:
        log.error("%s: not found in %s", escape(key), where)
    return EXIT_NOT_FOUND


def emit_value(args: argparse.Namespace, out: Output, value: bytes) -> None:
    if args.raw:
        out.write(value)
    elif args.null:
        out.write(value + b"\0")
    else:
        out.write(value + b"\n")


def read_value(args: argparse.Namespace) -> bytes:
    if args.value != "-":
        return arg_bytes(args.value)
    data = sys.stdin.buffer.read()
    if not args.raw and data.endswith(b"\n"):
        data = data[:-1]  # `echo value | kvp set K -` stores "value"; --raw keeps it
    return data


def writable_pool(args: argparse.Namespace, number: int) -> PoolFile:
    directory = require_dir(args)
    pool = open_pool(args, number, writable=True)
    target = pool.path if os.path.exists(pool.path) else directory
    if not os.access(target, os.W_OK) or not os.access(directory, os.W_OK | os.X_OK):
        who = "root" if os.geteuid() != 0 else "write access"
        raise CliError(
            f"{pool.path}: permission denied; writing a pool needs {who} (try sudo)", EXIT_IO
        )
    return pool


def cmd_set(args: argparse.Namespace, out: Output) -> int:
    number = one_pool(args)
    key_limit, value_limit = limits(args)
    key = check_key(args, args.key)
    value = read_value(args)
    if args.chunk_size is not None and not args.chunk:
        raise usage("--chunk-size needs --chunk")
    if args.chunk:
        size = args.chunk_size or value_limit
        if not 4 <= size <= value_limit:
            raise usage(f"--chunk-size is {size}; it must be between 4 and {value_limit}")
        checked(value, "value", len(value), args.unsafe)  # NUL and UTF-8 only
        count = len(store.split_value(value, size))
        checked(
            store.chunk_key(text(key), count - 1).encode(),
            f"key of chunk {count - 1}",
            key_limit,
            args.unsafe,
        )
        pool = writable_pool(args, number)
        with contextlib.closing(pool):
            store.write_chunks(pool, text(key), value, size)
        op = "chunked"
    else:
        checked(value, "value", value_limit, args.unsafe)
        count = 0
        pool = writable_pool(args, number)
        with contextlib.closing(pool):
            op = "add" if pool.set(key, value) else "modify"
    log.info("%s %s in %s (%s)", op, escape(key), POOL_LABELS[number], pool.path)
    if args.json:
        result: Dict[str, Any] = {
            "version": SCHEMA_VERSION,
            "pool": number,
            "pool_name": POOL_LABELS[number],
            "key": text(key),
            "op": op,
        }
        if args.chunk:
            result["chunks"] = count
        out.json(result)
    return EXIT_OK


def cmd_delete(args: argparse.Namespace, out: Output) -> int:
    number = one_pool(args)
    key = check_key(args, args.key)
    if not os.path.exists(os.path.join(pool_directory(args), pool_filename(number))):
        require_dir(args)
        found = 0
    else:
        pool = writable_pool(args, number)
        with contextlib.closing(pool):
            if args.chunk:
                found = store.delete_chunked(pool, text(key))
            else:
                found = 1 if pool.delete(key) else 0
    if args.json:
        out.json(
            {
                "version": SCHEMA_VERSION,
                "pool": number,
                "pool_name": POOL_LABELS[number],
                "key": text(key),
                "deleted": found,
            }
        )
    if not found:
        if not args.quiet:
            log.error("%s: not found in %s", escape(key), POOL_LABELS[number])
        return EXIT_NOT_FOUND
    return EXIT_OK


def cmd_dump(args: argparse.Namespace, out: Output) -> int:
    if args.file == "-":
        data, name = sys.stdin.buffer.read(), "<stdin>"
    else:
        name = args.file
        if not os.path.isfile(name):
            raise CliError(f"{name}: no such file", EXIT_IO)
        pool = PoolFile(name, writable=False, lock_timeout=args.lock_timeout)
        with contextlib.closing(pool):
            data = pool.raw()
    image = decode_pool(data)
    findings = store.fsck_findings(data)
    by_index: Dict[Optional[int], List[store.Finding]] = {}
    for f in findings:
        by_index.setdefault(f.index, []).append(f)
    if args.json:
        out.json(
            {
                "version": SCHEMA_VERSION,
                "path": name,
                "size": len(data),
                "records": [
                    {
                        "index": i,
                        "offset": i * RECORD_SIZE,
                        "key": text(rec.key),
                        "value": text(rec.value),
                        "valid": rec.valid,
                        "findings": [finding_json(f) for f in by_index.get(i, [])],
                    }
                    for i, rec in enumerate(image.records)
                ],
                "trailing": (
                    {"offset": len(image.records) * RECORD_SIZE, "length": len(image.trailing)}
                    if image.trailing
                    else None
                ),
                "findings": [finding_json(f) for f in findings],
            }
        )
        return EXIT_OK
    out.line(
        f"{name}: {len(data)} bytes, {len(image.records)} records"
        + (f", {len(image.trailing)} trailing bytes" if image.trailing else "")
        + f", {len(findings)} problem{'s' if len(findings) != 1 else ''}"
    )
    rows = []
    for i, rec in enumerate(image.records):
        rows.append((str(i), str(i * RECORD_SIZE), escape(rec.key), escape(rec.value)))
        for f in by_index.get(i, []):
            rows.append(("", "", f"! {f.kind}", f.message))
    if rows:
        table(out, rows, ("#", "OFFSET", "KEY", "VALUE"))
    for f in by_index.get(None, []):
        out.line(f"! {f.kind}: {f.message}")
    return EXIT_OK


def finding_json(f: store.Finding) -> Dict[str, Any]:
    return {
        "kind": f.kind,
        "index": f.index,
        "offset": f.offset,
        "message": f.message,
        "repairable": f.repairable,
    }


def cmd_fsck(args: argparse.Namespace, out: Output) -> int:
    targets: List[Tuple[Optional[int], str]]
    if args.files:
        if args.pools:
            raise usage("give either FILEs or --pool, not both")
        targets = [(None, path) for path in args.files]
    else:
        directory = require_dir(args)
        numbers = args.pools or list(ALL_POOLS)
        targets = [(n, os.path.join(directory, pool_filename(n))) for n in numbers]
    results, left = [], 0
    for number, path in targets:
        result = fsck_one(args, number, path)
        results.append(result)
        left += len(result["remaining"])
        if not args.json:
            print_fsck(out, result, args.repair)
    if args.json:
        out.json(
            {
                "version": SCHEMA_VERSION,
                "clean": left == 0,
                "files": [{k: v for k, v in r.items() if k != "remaining"} for r in results],
            }
        )
    return EXIT_OK if left == 0 else EXIT_NOT_FOUND


def fsck_one(args: argparse.Namespace, number: Optional[int], path: str) -> Dict[str, Any]:
    result: Dict[str, Any] = {
        "pool": number,
        "pool_name": POOL_LABELS[number] if number is not None else None,
        "path": path,
        "exists": os.path.exists(path),
        "records": 0,
        "findings": [],
        "repaired": [],
        "backup": None,
        "remaining": [],
    }
    if not result["exists"]:
        if number is None:
            raise CliError(f"{path}: no such file", EXIT_IO)
        return result
    if args.repair:
        if not os.access(path, os.W_OK) or not os.access(os.path.dirname(path) or ".", os.W_OK):
            raise CliError(f"{path}: permission denied; repairing needs root (try sudo)", EXIT_IO)
        pool = PoolFile(path, writable=True, lock_timeout=args.lock_timeout)
        with contextlib.closing(pool):
            report = store.repair(pool)
    else:
        pool = PoolFile(path, writable=False, lock_timeout=args.lock_timeout)
        with contextlib.closing(pool):
            report = store.check(pool)
    findings = report.findings
    result["backup"] = report.backup
    result["repaired"] = [finding_json(f) for f in report.repaired]
    result["records"] = report.records
    result["findings"] = [finding_json(f) for f in findings]
    result["remaining"] = report.remaining()
    return result


def print_fsck(out: Output, result: Dict[str, Any], repair: bool) -> None:
    label = result["path"]
    if not result["exists"]:
        out.line(f"{label}: missing")
        return
    findings = result["findings"]
    state = "clean" if not findings else f"{len(findings)} problem(s)"
    out.line(f"{label}: {result['records']} records, {state}")
    repaired = {(f["kind"], f["index"]) for f in result["repaired"]}
    for f in findings:
        where = f"record {f['index']}" if f["index"] is not None else f"offset {f['offset']}"
        if (f["kind"], f["index"]) in repaired:
            note = f"  [{store.REPAIRS[f['kind']]}]"
        elif f["repairable"] and not repair:
            note = "  [--repair fixes this]"
        elif not f["repairable"]:
            note = "  [report only]"
        else:
            note = ""
        out.line(f"  {where}: {f['kind']}: {f['message']}{note}")
    if result["backup"]:
        out.line(f"  original saved as {result['backup']}")


def cmd_is_stale(args: argparse.Namespace, out: Output) -> int:
    number = one_pool(args)
    path = os.path.join(pool_directory(args), pool_filename(number))
    boot = store.boot_time()
    try:
        mtime: Optional[float] = os.stat(path).st_mtime
    except FileNotFoundError:
        mtime = None
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}", EXIT_IO) from None
    if boot is None:
        raise CliError("cannot tell the boot time (no /proc/stat btime or /proc/uptime)", EXIT_IO)
    stale = mtime is not None and mtime < boot
    if args.json:
        out.json(
            {
                "version": SCHEMA_VERSION,
                "pool": number,
                "pool_name": POOL_LABELS[number],
                "path": path,
                "exists": mtime is not None,
                "stale": stale,
                "mtime": mtime,
                "boot_time": boot,
            }
        )
    elif not args.quiet:
        state = "missing" if mtime is None else ("stale" if stale else "fresh")
        out.line(f"{path}: {state}")
    return EXIT_OK if stale else EXIT_NOT_FOUND


def cmd_clear(args: argparse.Namespace, out: Output) -> int:
    number = one_pool(args)
    path = os.path.join(pool_directory(args), pool_filename(number))
    result = {"cleared": False, "records": 0, "stale": None}
    if os.path.exists(path):
        pool = writable_pool(args, number)
        boot = store.boot_time() if args.if_stale else None
        if args.if_stale and boot is None:
            raise CliError("cannot tell the boot time; not clearing", EXIT_IO)
        with contextlib.closing(pool):
            result = store.clear(pool, if_stale_since=boot)._asdict()
    if args.json:
        out.json(
            {
                "version": SCHEMA_VERSION,
                "pool": number,
                "pool_name": POOL_LABELS[number],
                "path": path,
                **result,
            }
        )
    elif not args.quiet:
        if result["cleared"]:
            out.line(f"{path}: cleared ({result['records']} records removed)")
        elif os.path.exists(path):
            out.line(f"{path}: modified since boot; left alone")
        else:
            out.line(f"{path}: missing; nothing to clear")
    return EXIT_OK


def key_filter(patterns: Sequence[str]) -> Optional[Callable[[str], bool]]:
    if not patterns:
        return None
    exact = set(patterns)
    globs = [p for p in patterns if any(c in p for c in "*?[")]
    return lambda key: key in exact or any(fnmatch.fnmatchcase(key, g) for g in globs)


def change_json(change: Change) -> Dict[str, Any]:
    return {
        "version": SCHEMA_VERSION,
        "op": change.op,
        "pool": change.pool,
        "pool_name": change.pool_name,
        "key": change.key,
        "value": change.value,
        "old_value": change.old_value,
    }


def cmd_watch(args: argparse.Namespace, out: Output) -> int:
    ops = set(OPS)
    if args.op:
        ops = {o.strip() for o in args.op.split(",") if o.strip()}
        unknown = ops - set(OPS)
        if unknown:
            raise usage(f"unknown op {sorted(unknown)[0]!r}: use {', '.join(OPS)}")
    if args.exec is not None and not args.exec:
        raise usage("--exec needs a command")
    if args.timeout is not None and args.exec is None:
        raise usage("--timeout is the per-run timeout of --exec")
    if args.count is not None and args.count < 1:
        raise usage("--count must be at least 1")
    runner = HookRunner(args.exec, args.timeout) if args.exec else None
    numbers = args.pools or list(ALL_POOLS)
    emitted = 0

    def emit(change: Change) -> bool:
        """Handle one event; True when --count is reached."""
        nonlocal emitted
        if change.op not in ops:
            return False
        if runner is not None:
            runner.run(change)
        elif args.json:
            out.json(change_json(change))
        elif args.null:
            fields = (change.op, change.pool_name, change.key, change.value or "")
            out.write(b"".join(f.encode("utf-8", "surrogateescape") + b"\0" for f in fields))
        else:
            value = "" if change.value is None else change.value
            shown = value if args.raw else escape(value.encode("utf-8", "surrogateescape"))
            out.line(f"{change.op}\t{change.pool_name}\t{change.key}\t{shown}")
        emitted += 1
        return args.count is not None and emitted >= args.count

    watcher = PoolWatcher(pool_directory(args), numbers, key_filter(args.keys), args.lock_timeout)
    try:
        first = watcher.initial()
        for change in [] if args.no_initial else first:
            if emit(change):
                return EXIT_OK
        while True:
            for change in watcher.changes():
                if emit(change):
                    return EXIT_OK
    finally:
        watcher.close()


def cmd_wait(args: argparse.Namespace, out: Output) -> int:
    key = text(check_key(args, args.key))
    numbers = args.pools or list(GET_ORDER)
    watcher = PoolWatcher(pool_directory(args), numbers, lambda k: k == key, args.lock_timeout)
    with watcher:
        hit = wait_for(watcher, key, args.value, args.timeout)
    if hit is None:
        if not args.quiet:
            log.error("timed out after %g s waiting for %s", args.timeout, escape(key.encode()))
        return EXIT_NOT_FOUND
    number, value = hit
    if args.json:
        out.json(
            {
                "version": SCHEMA_VERSION,
                "pool": number,
                "pool_name": POOL_LABELS[number],
                "key": key,
                "value": value,
            }
        )
    elif not args.quiet:
        emit_value(args, out, value.encode("utf-8"))
    return EXIT_OK


COMMANDS: Dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "list": cmd_list,
    "get": cmd_get,
    "set": cmd_set,
    "delete": cmd_delete,
    "dump": cmd_dump,
    "watch": cmd_watch,
    "wait": cmd_wait,
    "is-stale": cmd_is_stale,
    "clear": cmd_clear,
    "fsck": cmd_fsck,
}


# --------------------------------------------------------------------------- entry point


def _setup_logging(args: Optional[argparse.Namespace]) -> None:
    level = logging.WARNING
    if args is not None:
        level = logging.ERROR if args.quiet else (logging.INFO if args.verbose else level)
        if args.verbose and args.verbose > 1:
            level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kvp: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if args is not None and args.command in ("dump", "fsck"):
        logging.getLogger("pykvpd.store").setLevel(logging.ERROR)  # we report damage ourselves


def _permission_hint(message: str) -> str:
    if "Permission denied" in message and os.geteuid() != 0:
        return message + " (pools are root's: try sudo)"
    return message


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``kvp``; returns the exit status (never raises except KeyboardInterrupt handling)."""
    _setup_logging(None)
    try:
        args = parse_args(argv)
        _setup_logging(args)
        with _sigterm_exits():
            return COMMANDS[args.command](args, Output())
    except CliError as exc:
        log.error("%s", exc)
        return exc.code
    except SystemExit as exc:  # --help, --version from argparse; SIGTERM
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except RecordTooLarge as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except LockTimeout as exc:
        log.error("%s", exc)
        return EXIT_IO
    except PoolError as exc:
        log.error("%s", _permission_hint(str(exc)))
        return EXIT_IO
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        log.error("%s", _permission_hint(f"{exc.filename or ''}: {exc.strerror or exc}".strip()))
        return EXIT_IO


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM unwinds like an exception, so watch kills its running hook before exiting."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (main() called from a test thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
