"""A minimal non-blocking inotify descriptor (ctypes over libc), for change and device waits.

The pool store drains it before each request to learn whether a pool file changed (an event is
queued before the writer's ``write()`` returns, unlike mtime, which has coarse granularity), the
``kvp watch`` command prints changes, and the transport waits for ``/dev/vmbus/hv_kvp`` to appear.
The descriptor is non-blocking and close-on-exec; callers poll/select on ``fileno()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from typing import List, NamedTuple, Optional, Union

# Event masks from <sys/inotify.h>.
IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_CLOSE_NOWRITE = 0x00000010
IN_OPEN = 0x00000020
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_MASK_ADD = 0x20000000
IN_ISDIR = 0x40000000
IN_ONESHOT = 0x80000000

# inotify_init1() flags share their values with O_NONBLOCK / O_CLOEXEC.
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_EVENT_HEADER = struct.Struct("=iIII")  # struct inotify_event: wd, mask, cookie, len (then name)
_MAX_EVENT_SIZE = _EVENT_HEADER.size + 255 + 1  # header + NAME_MAX + NUL
_READ_SIZE = 64 * 1024  # room for many events per read() call

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


class Event(NamedTuple):
    """One ``struct inotify_event``; ``name`` is "" for events on the watched path itself."""

    wd: int
    mask: int
    cookie: int
    name: str


_libc: Optional[ctypes.CDLL] = None


def _load_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)  # libc is mapped; find_library forks ldconfig
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_init1.restype = ctypes.c_int
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_add_watch.restype = ctypes.c_int
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.inotify_rm_watch.restype = ctypes.c_int
        _libc = lib
    return _libc


def _call(what: str, func, *args, filename: Optional[str] = None) -> int:
    """Call a libc function, retrying on EINTR; raise OSError(errno) on -1."""
    while True:
        result = func(*args)
        if result != -1:
            return result
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, f"{what} failed: {os.strerror(err)}", filename)


def parse_events(data: bytes) -> List[Event]:
    """Decode a buffer of back-to-back ``struct inotify_event`` records (the name is NUL-padded).

    Raises ValueError for a truncated record, which the kernel never produces for a whole read.
    """
    events: List[Event] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _EVENT_HEADER.size:
            raise ValueError(f"truncated inotify event header at offset {offset}")
        wd, mask, cookie, name_len = _EVENT_HEADER.unpack_from(data, offset)
        start = offset + _EVENT_HEADER.size
        if start + name_len > len(data):
            raise ValueError(f"inotify event name at offset {start} runs past the buffer")
        raw_name = data[start : start + name_len].split(b"\0", 1)[0]
        events.append(Event(wd, mask, cookie, os.fsdecode(raw_name)))
        offset = start + name_len
    return events


class Inotify:
    """One inotify instance: ``add_watch`` paths, ``read_events`` when ``fileno()`` is readable."""

    def __init__(self) -> None:
        init1 = _load_libc().inotify_init1
        self._fd: Optional[int] = _call("inotify_init1", init1, IN_NONBLOCK | IN_CLOEXEC)

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("I/O operation on a closed Inotify")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def add_watch(self, path: PathArg, mask: int) -> int:
        """Watch ``path`` for the events in ``mask``; returns the watch descriptor.

        Watching the same inode again returns the same descriptor (with its mask replaced unless
        IN_MASK_ADD is given). Raises OSError (e.g. ENOENT, ENOTDIR with IN_ONLYDIR).
        """
        fspath = os.fsencode(path)
        return _call(
            "inotify_add_watch",
            _load_libc().inotify_add_watch,
            self.fileno(),
            fspath,
            mask & 0xFFFFFFFF,
            filename=os.fsdecode(fspath),
        )

    def rm_watch(self, wd: int) -> None:
        """Stop a watch; the kernel queues IN_IGNORED for it. Raises OSError (EINVAL if unknown)."""
        _call(f"inotify_rm_watch({wd})", _load_libc().inotify_rm_watch, self.fileno(), wd)

    def read_events(self) -> List[Event]:
        """Every event queued so far, without blocking; [] when none are queued."""
        fd = self.fileno()
        events: List[Event] = []
        while True:
            try:
                data = os.read(fd, _READ_SIZE)  # PEP 475: EINTR is retried by Python
            except BlockingIOError:
                return events
            events.extend(parse_events(data))
            if len(data) <= _READ_SIZE - _MAX_EVENT_SIZE:
                return events  # the next event would have fitted: the queue was empty

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()
