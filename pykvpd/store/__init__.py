"""The pool store: the one owner of ``/var/lib/hyperv/.kvp_pool_0..4`` for every program.

The daemon, the ``kvp`` tool and any other Python program read and write pools only through
the names exported here. Each module has one job:

* ``records``   - the file format and its limits, pool names, one record decoded/encoded;
* ``errors``    - the store's exceptions;
* ``files``     - whole reads and writes of one open file;
* ``locking``   - the dual ``flock`` + OFD lock every reader and writer takes;
* ``journal``   - the redo journal that makes every change atomic, and crash recovery;
* ``freshness`` - inotify: which files changed since we last read them;
* ``poolfile``  - ``PoolFile``, one pool file; ``pooldir`` - ``PoolDir``, the directory;
* ``chunks``    - values split over ``KEY.0``, ``KEY.1``, ...;
* ``telemetry`` - cloud-init and azure-init events reassembled from their parts;
* ``staleness`` - whether a pool was written this boot, and clearing a stale one;
* ``fsck``      - what is wrong with a pool file, and a repair that loses no record.

Usage::

    from pykvpd.store import PoolDir
    pools = PoolDir("/var/lib/hyperv")
    guest = pools.pool("guest")            # or 1
    guest.set("DeploymentState", "ready")  # str or bytes
    print(guest.get("DeploymentState"))    # b'ready'

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
from .errors import LockTimeout, PoolError, RecordTooLarge
from .freshness import DirWatch
from .fsck import REPAIRS, Finding, FsckReport, check, fsck_findings, repair, repair_image
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
    VALUE_SIZE,
    PoolImage,
    Record,
    Text,
    check_sizes,
    decode_pool,
    decode_record,
    encode_record,
    pool_filename,
    pool_number,
)
from .staleness import Cleared, boot_time, clear
from .telemetry import KvpEvent, reassemble_events

__all__ = [
    "Cleared",
    "DEFAULT_MODE",
    "DEFAULT_POOL_DIR",
    "DirWatch",
    "Finding",
    "FsckReport",
    "KEY_SIZE",
    "KvpEvent",
    "LockTimeout",
    "MAX_KEY_SIZE",
    "MAX_VALUE_SIZE",
    "POOL_COUNT",
    "POOL_LABELS",
    "POOL_NAMES",
    "PoolDir",
    "PoolError",
    "PoolFile",
    "PoolImage",
    "RECORD_SIZE",
    "REPAIRS",
    "Record",
    "RecordTooLarge",
    "Text",
    "VALUE_SIZE",
    "boot_time",
    "check",
    "check_sizes",
    "chunk_index",
    "chunk_key",
    "clear",
    "decode_pool",
    "decode_record",
    "delete_chunked",
    "encode_record",
    "fsck_findings",
    "join_chunks",
    "journal_path",
    "pool_filename",
    "pool_number",
    "reassemble_events",
    "repair",
    "repair_image",
    "split_value",
    "write_chunks",
]
