"""Opening files in a pool directory without following links, and whole reads and writes.

Everything the store opens in a pool directory (pool files, journals, fsck backups, saved partial
records) is opened relative to a descriptor of the directory, with ``O_NOFOLLOW`` and
``O_NONBLOCK``, and kept only if ``fstat`` says it is a regular file: a symlink planted as
``.kvp_pool_1`` cannot make a write land elsewhere, and a FIFO or device cannot hang or surprise
us. The directory itself may be a symlink on a live system (an admin's choice); inside a disk
image (``root``) every component of its path is resolved within the image.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import time

from .errors import PoolDirMissing, PoolError, PoolPermissionError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SYS_OPENAT2 = 437  # the same number on every architecture Linux has added it to (5.6+)
_RESOLVE_IN_ROOT = 0x10
_RESOLVE_NO_MAGICLINKS = 0x02
_OPEN_HOW = struct.Struct("QQQ")  # struct open_how: flags, mode, resolve
_openat2_missing = False


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def _denied(path: str, exc: OSError) -> PoolPermissionError:
    return PoolPermissionError(exc.errno, f"{path}: {exc.strerror}", path)


def open_dir(directory: str, root: Optional[str] = None) -> int:
    """A descriptor of the pool directory; with ``root``, ``directory`` is a path inside that
    image and is never resolved outside it (absolute symlinks and ``..`` stay in the image).

    Raises PoolDirMissing or PoolPermissionError naming the directory, PoolError otherwise.
    """
    shown = directory if root is None else os.path.join(root, directory.lstrip("/"))
    try:
        if root is None:
            return os.open(directory, _DIR_FLAGS)
        root_fd = os.open(root, _DIR_FLAGS)
        try:
            return _open_beneath(root_fd, directory, shown)
        finally:
            os.close(root_fd)
    except FileNotFoundError:
        raise PoolDirMissing(errno.ENOENT, f"{shown}: no such directory", shown) from None
    except PermissionError as exc:
        raise _denied(shown, exc) from None
    except NotADirectoryError:
        raise PoolError(f"{shown}: not a directory") from None
    except OSError as exc:
        raise PoolError(f"{shown}: cannot open the pool directory: {exc.strerror}") from None


class DirHandle:
    """A pool directory opened once, when first needed (``open_dir``), shared by its files.

    ``shown`` is how messages name it: the path, or the image's root joined with the path.
    """

    def __init__(self, directory: str, root: Optional[str] = None) -> None:
        self.directory = directory
        self.root = root
        self.shown = directory if root is None else os.path.join(root, directory.lstrip("/"))
        self._fd: Optional[int] = None

    def fd(self) -> int:
        if self._fd is None:
            self._fd = open_dir(self.directory, self.root)
        return self._fd

    def path(self, name: str) -> str:
        return os.path.join(self.shown, name)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_beneath(root_fd: int, path: str, shown: str) -> int:
    """Open ``path`` as a directory inside the tree at ``root_fd``: openat2(RESOLVE_IN_ROOT)
    where the kernel has it, else a walk that refuses symlinks."""
    global _openat2_missing
    if not _openat2_missing:
        import ctypes  # only for --root images: ctypes costs every kvp run milliseconds

        libc = ctypes.CDLL(None, use_errno=True)
        how = _OPEN_HOW.pack(_DIR_FLAGS, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        fd = libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(root_fd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.c_char_p(how),
            ctypes.c_size_t(len(how)),
        )
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter refused it
            raise OSError(err, os.strerror(err), shown)
        _openat2_missing = True
    return _walk_beneath(root_fd, path, shown)


def _walk_beneath(root_fd: int, path: str, shown: str) -> int:
    """Component by component from ``root_fd``, each with O_NOFOLLOW; ``..`` never above it."""
    stack: List[int] = [os.dup(root_fd)]
    try:
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            try:
                stack.append(os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=stack[-1]))
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(stack[-1], part):
                    raise PoolError(
                        f"{shown}: the path has a symbolic link ({part!r}) inside the image; "
                        "this kernel cannot resolve it safely (no openat2)"
                    ) from None
                raise
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_file(dir_fd: int, name: str, flags: int, path: str, mode: int = 0o600) -> int:
    """Open ``name`` in the directory ``dir_fd`` if it is a regular file (never a symlink, FIFO
    or device). ``path`` names it in errors. FileNotFoundError passes through unchanged."""
    try:
        fd = os.open(
            name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd
        )
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PoolError(f"{path}: is a symbolic link; refusing to follow it") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR, errno.ENODEV):
            raise PoolError(f"{path}: not a regular file; refusing to open it") from None
        if isinstance(exc, PermissionError):
            raise _denied(path, exc) from None
        raise PoolError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PoolError(f"{path}: is a {_kind(st.st_mode)}, not a regular file; refusing it")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lstat_in(dir_fd: int, name: str, path: str) -> Optional[os.stat_result]:
    """The file's own status (a symlink is not followed), None if it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise _denied(path, exc) from None
    except OSError as exc:
        raise PoolError(f"{path}: {exc.strerror}") from None


def save_aside(dir_fd: int, directory: str, prefix: str, data: bytes) -> str:
    """Write ``data`` to a new file ``prefix-<time>`` in the directory (mode 0600, fsynced),
    for bytes the store must not lose: a pool before fsck repairs it, a partial record."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
    name = f"{prefix}-{stamp}"
    path = os.path.join(directory, name)
    try:
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
        try:
            pwrite_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PoolError(f"{path}: cannot save: {exc.strerror}") from None
    return path


def read_all(fd: int, path: str) -> bytes:
    """Every byte of the file behind ``fd`` (however it grows while we read)."""
    try:
        size = os.fstat(fd).st_size
        chunks, offset = [], 0
        while True:
            chunk = os.pread(fd, max(size - offset, 65536), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise PoolError(f"{path}: read failed: {exc.strerror}") from None


def read_at(fd: int, length: int, offset: int, path: str) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
    try:
        return os.pread(fd, length, offset)
    except OSError as exc:
        raise PoolError(f"{path}: read failed: {exc.strerror}") from None


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done
