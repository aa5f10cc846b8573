"""inotify: real events from a temporary directory, and the event decoder on hand-built bytes."""

from __future__ import annotations

import errno
import os
import select
import struct
from pathlib import Path

import pytest

from pykvpd import inotify
from pykvpd.inotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    Event,
    Inotify,
    parse_events,
)

DIR_MASK = (
    IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_ATTRIB
)


def test_nothing_queued_returns_empty_list_without_blocking(tmp_path: Path) -> None:
    with Inotify() as ino:
        ino.add_watch(tmp_path, DIR_MASK)
        assert ino.read_events() == []
        assert select.select([ino], [], [], 0)[0] == []


def test_descriptor_is_nonblocking_and_cloexec() -> None:
    with Inotify() as ino:
        assert os.get_blocking(ino.fileno()) is False
        assert os.get_inheritable(ino.fileno()) is False


def test_create_modify_rename_delete_in_a_directory(tmp_path: Path) -> None:
    with Inotify() as ino:
        wd = ino.add_watch(str(tmp_path), DIR_MASK)
        with open(tmp_path / "a", "wb") as handle:  # IN_CREATE, then IN_CLOSE_WRITE
            handle.write(b"x")  # IN_MODIFY
        assert select.select([ino], [], [], 0)[0] == [ino]
        assert ino.read_events() == [
            Event(wd, IN_CREATE, 0, "a"),
            Event(wd, IN_MODIFY, 0, "a"),
            Event(wd, IN_CLOSE_WRITE, 0, "a"),
        ]
        os.rename(tmp_path / "a", tmp_path / "b")
        moved_from, moved_to = ino.read_events()
        assert (moved_from.mask, moved_from.name) == (IN_MOVED_FROM, "a")
        assert (moved_to.mask, moved_to.name) == (IN_MOVED_TO, "b")
        assert moved_from.cookie == moved_to.cookie != 0
        os.mkdir(tmp_path / "d")
        os.unlink(tmp_path / "b")
        assert ino.read_events() == [
            Event(wd, IN_CREATE | IN_ISDIR, 0, "d"),
            Event(wd, IN_DELETE, 0, "b"),
        ]
        assert ino.read_events() == []


def test_same_size_rewrite_is_seen(tmp_path: Path) -> None:
    # The reason the pool store uses inotify: size and mtime may not change, the event does.
    target = tmp_path / ".kvp_pool_0"
    target.write_bytes(b"A" * 16)
    with Inotify() as ino:
        wd = ino.add_watch(tmp_path, IN_MODIFY)
        fd = os.open(target, os.O_WRONLY)
        try:
            os.pwrite(fd, b"B" * 16, 0)
        finally:
            os.close(fd)
        assert ino.read_events() == [Event(wd, IN_MODIFY, 0, ".kvp_pool_0")]
    assert target.read_bytes() == b"B" * 16


def test_watch_on_a_file_reports_events_without_a_name(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"")
    with Inotify() as ino:
        wd = ino.add_watch(os.fsencode(target), IN_MODIFY | IN_DELETE_SELF)
        target.write_bytes(b"data")
        target.unlink()
        events = ino.read_events()
    assert events == [
        Event(wd, IN_MODIFY, 0, ""),
        Event(wd, IN_DELETE_SELF, 0, ""),
        Event(wd, IN_IGNORED, 0, ""),
    ]


def test_rm_watch_queues_ignored_and_stops_events(tmp_path: Path) -> None:
    with Inotify() as ino:
        wd = ino.add_watch(tmp_path, DIR_MASK)
        ino.rm_watch(wd)
        assert ino.read_events() == [Event(wd, IN_IGNORED, 0, "")]
        (tmp_path / "later").write_bytes(b"1")
        assert ino.read_events() == []
        with pytest.raises(OSError) as info:
            ino.rm_watch(wd)
        assert info.value.errno == errno.EINVAL


def test_many_events_are_drained_in_one_call(tmp_path: Path) -> None:
    # 1500 creates with 40-byte names need more than one 64 KiB read().
    names = [f"{i:040d}" for i in range(1500)]
    with Inotify() as ino:
        ino.add_watch(tmp_path, IN_CREATE)
        for name in names:
            os.close(os.open(tmp_path / name, os.O_CREAT | os.O_WRONLY, 0o644))
        events = ino.read_events()
        assert [event.name for event in events] == names
        assert ino.read_events() == []


def test_add_watch_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    with Inotify() as ino:
        with pytest.raises(FileNotFoundError) as info:
            ino.add_watch(missing, IN_CREATE)
        assert info.value.filename == str(missing)
        with pytest.raises(NotADirectoryError):
            ino.add_watch(plain, IN_CREATE | IN_ONLYDIR)


def test_close_is_idempotent_and_closed_use_raises() -> None:
    ino = Inotify()
    fd = ino.fileno()
    ino.close()
    ino.close()
    assert ino.closed
    with pytest.raises(ValueError):
        ino.fileno()
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF


def test_parse_events_decodes_padded_names() -> None:
    data = (
        struct.pack("=iIII", 1, IN_CREATE, 0, 16)
        + b"pool\0".ljust(16, b"\0")
        + struct.pack("=iIII", 2, IN_IGNORED, 7, 0)
    )
    assert parse_events(data) == [Event(1, IN_CREATE, 0, "pool"), Event(2, IN_IGNORED, 7, "")]


def test_parse_events_rejects_truncated_records() -> None:
    with pytest.raises(ValueError, match="header"):
        parse_events(b"\0" * 10)
    with pytest.raises(ValueError, match="runs past"):
        parse_events(struct.pack("=iIII", 1, IN_CREATE, 0, 16) + b"abc")


def test_constants_match_the_kernel_abi() -> None:
    assert (inotify.IN_MODIFY, inotify.IN_CLOSE_WRITE, inotify.IN_MOVED_TO) == (0x2, 0x8, 0x80)
    assert (inotify.IN_Q_OVERFLOW, inotify.IN_IGNORED, inotify.IN_ISDIR) == (
        0x4000,
        0x8000,
        0x40000000,
    )
