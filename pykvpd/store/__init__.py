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
"""

from __future__ import annotations

from .chunks import (
    chunk_index,
    chunk_key,
    delete_chunked,
    join_chunks,
    split_value,
    write_chunks,
)
from .errors import (
    InvalidRecord,
    LockTimeout,
    PoolDirMissing,
    PoolError,
    PoolPermissionError,
    RecordTooLarge,
)
from .freshness import DirWatch
from .fsck import (
    REPAIRS,
    Finding,
    FsckReport,
    Inspection,
    check,
    fsck_findings,
    inspect,
    repair,
    repair_image,
)
from .journal import journal_path
from .pooldir import DEFAULT_POOL_DIR, PoolDir
from .poolfile import DEFAULT_MODE, PoolFile
from .records import (
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
    Text,
    check_field,
    check_sizes,
    decode_pool,
    decode_record,
    encode_record,
    pool_filename,
    pool_number,
    validate,
)
from .staleness import Cleared, boot_time, clear
from .telemetry import KvpEvent, reassemble_events
from .view import Pool, open_pool

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
