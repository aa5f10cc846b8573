"""The pool store: the one owner of ``/var/lib/hyperv/.kvp_pool_0..4`` for every program.

The daemon, the ``kvp`` tool and any other Python program read and write pools only through
the names exported here. Each module has one job:

* ``records``   - the file format and its limits, pool names, one record decoded/encoded;
* ``errors``    - the store's exceptions;
* ``files``     - opening files in a pool directory without following links, whole reads;
* ``locking``   - the dual ``flock`` + OFD lock every reader and writer takes;
* ``journal``   - the redo journal that makes every change atomic, and crash recovery;
* ``freshness`` - inotify: which files changed since we last read them;
* ``index``     - what a reader keeps in memory: key -> slot, first-match and valid order;
* ``handle``    - a pool file and its journal as open descriptors, locked, reopened if replaced;
* ``poolfile``  - ``PoolFile``, one pool file; ``pooldir`` - ``PoolDir``, the directory;
* ``sidecars``  - files kept beside a pool: saved partial records, fsck backups;
* ``chunks``    - values split over ``KEY.0``, ``KEY.1``, ...;
* ``telemetry`` - cloud-init and azure-init events reassembled from their parts;
* ``staleness`` - whether a pool was written this boot, and clearing a stale one;
* ``fsck``      - what is wrong with a pool file, and a repair that loses no record;
* ``view``      - ``open_pool``: a pool as a validated mapping of str to str, for programs.

Usage (see docs/api.md)::

    from pykvpd.store import open_pool
    with open_pool("guest") as guest:      # read-only where this user may not write
        guest["DeploymentState"] = "ready"
        print(guest.get("DeploymentState"))  # 'ready'

Only ``errors`` and ``records`` are imported with the package; every other name is imported on
first use (PEP 562 ``__getattr__``). ``kvp get``/``kvp set`` start a new interpreter each time,
and a plain get must not pay for fsck, telemetry, chunks or staleness it never touches.
"""

from __future__ import annotations

from .errors import (  # noqa: F401 - re-exported
    InvalidRecord,
    LockTimeout,
    PoolDirMissing,
    PoolError,
    PoolPermissionError,
    RecordTooLarge,
)
from .records import (  # noqa: F401 - re-exported
    KEY_SIZE,
    MAX_KEY_SIZE,
    MAX_VALUE_SIZE,
    POOL_COUNT,
    POOL_LABELS,
    POOL_NAMES,
    RECORD_SIZE,
    SAFE_KEY_BYTES,
    SAFE_VALUE_BYTES,
    VALUE_SIZE,
    PoolImage,
    Record,
    check_field,
    check_sizes,
    decode_pool,
    decode_record,
    encode_record,
    pool_filename,
    pool_number,
    validate,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List

    from .records import Text  # at run time: __getattr__ (typing only for whoever asks)

# Where each lazily imported name lives: its module is imported the first time it is asked for.
_LAZY = {
    "boot_time": "staleness",
    "check": "fsck",
    "chunk_index": "chunks",
    "chunk_key": "chunks",
    "clear": "staleness",
    "Cleared": "staleness",
    "DEFAULT_MODE": "poolfile",
    "DEFAULT_POOL_DIR": "pooldir",
    "delete_chunked": "chunks",
    "DirWatch": "freshness",
    "Finding": "fsck",
    "fsck_findings": "fsck",
    "FsckReport": "fsck",
    "inspect": "fsck",
    "Inspection": "fsck",
    "join_chunks": "chunks",
    "journal_path": "journal",
    "KvpEvent": "telemetry",
    "open_pool": "view",
    "Pool": "view",
    "PoolDir": "pooldir",
    "PoolFile": "poolfile",
    "reassemble_events": "telemetry",
    "repair": "fsck",
    "repair_image": "fsck",
    "REPAIRS": "fsck",
    "split_value": "chunks",
    "write_chunks": "chunks",
}


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use and keep the name (PEP 562).

    ``Text``, the type of a key or value given as str or bytes, is made here: a module-level
    ``Union`` in ``records`` would import typing for every ``kvp get``.
    """
    if name == "Text":
        from typing import Union

        value: Any = Union[str, bytes]
    else:
        try:
            module = _LAZY[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        # __import__ rather than importlib.import_module: importlib imports warnings.
        value = getattr(__import__(f"{__name__}.{module}", fromlist=[name]), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    """List the lazy names too, so that ``dir()`` and completion show the whole API."""
    return sorted(set(globals()) | set(_LAZY) | {"Text"})


__all__ = [
    "Cleared",
    "DEFAULT_MODE",
    "DEFAULT_POOL_DIR",
    "DirWatch",
    "Finding",
    "FsckReport",
    "Inspection",
    "InvalidRecord",
    "KEY_SIZE",
    "KvpEvent",
    "LockTimeout",
    "MAX_KEY_SIZE",
    "MAX_VALUE_SIZE",
    "POOL_COUNT",
    "POOL_LABELS",
    "POOL_NAMES",
    "Pool",
    "PoolDir",
    "PoolDirMissing",
    "PoolError",
    "PoolFile",
    "PoolImage",
    "PoolPermissionError",
    "RECORD_SIZE",
    "REPAIRS",
    "Record",
    "RecordTooLarge",
    "SAFE_KEY_BYTES",
    "SAFE_VALUE_BYTES",
    "Text",
    "VALUE_SIZE",
    "boot_time",
    "check",
    "check_field",
    "check_sizes",
    "chunk_index",
    "chunk_key",
    "clear",
    "decode_pool",
    "decode_record",
    "delete_chunked",
    "encode_record",
    "fsck_findings",
    "inspect",
    "join_chunks",
    "journal_path",
    "open_pool",
    "pool_filename",
    "pool_number",
    "reassemble_events",
    "repair",
    "repair_image",
    "split_value",
    "validate",
    "write_chunks",
]
