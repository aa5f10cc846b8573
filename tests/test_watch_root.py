"""kvp watch/wait never follow a symlink out of a --root image, nor open a non-regular pool file.

Issue 11 item 1: every path under ``--root IMG`` is resolved inside the image; a pool file that
is a symlink or a FIFO is refused with a message naming it (exit 3), and nothing outside the image
is read. The files "outside" are a secret the watch must never print.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_cli_helpers import kvp, rec, write_pool

SECRET = b"outside-the-image"


def hyperv(base: Path) -> Path:
    directory = base / "var/lib/hyperv"
    directory.mkdir(parents=True)
    return directory


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A real pool directory outside the image, holding the secret in pool 0."""
    directory = hyperv(tmp_path / "outside")
    write_pool(str(directory), 0, rec(b"Secret", SECRET))
    return directory


@pytest.mark.parametrize("command", [["wait", "Secret"], ["watch", "-n", "1"]])
def test_symlinked_component_under_root_is_not_followed_out_of_the_image(
    tmp_path, outside, command
):
    image = tmp_path / "img"
    image.mkdir()
    (image / "var").symlink_to(outside.parent.parent)  # IMG/var -> <outside>/var (absolute)
    code, out, err = kvp("--root", str(image), *command, "--timeout", "3")
    assert SECRET not in out
    assert code == 3, (code, out, err)
    assert f"{image}/var/lib/hyperv" in err  # names the directory as the image has it
    assert "resolved inside the image" in err or "no openat2" in err  # the kernel decides


def test_absolute_symlink_inside_the_image_resolves_inside_it(tmp_path, outside):
    """IMG/var -> <outside>/var names IMG/<outside>/var inside the image, as the guest sees it:
    the watch reads that one, never the host's file at the same path."""
    image = tmp_path / "img"
    image.mkdir()
    (image / "var").symlink_to(outside.parent.parent)
    inside = hyperv(image / str(outside.parent.parent.parent).lstrip("/"))
    write_pool(str(inside), 0, rec(b"Secret", b"inside"))
    code, out, err = kvp("--root", str(image), "watch", "-n", "1", "Secret", "--timeout", "10")
    if code == 3 and "no openat2" in err:
        pytest.skip("this kernel cannot resolve a symlink inside an image (no openat2)")
    assert (code, out) == (0, b"initial\texternal\tSecret\tinside\n"), err
    code, out, err = kvp("--root", str(image), "wait", "Secret", "--timeout", "10")
    assert (code, out) == (0, b"inside\n"), err


@pytest.mark.parametrize("with_root", [True, False])
@pytest.mark.parametrize("command", [["wait", "Secret"], ["watch", "-n", "1", "Secret"]])
def test_symlinked_pool_file_is_refused_by_name(tmp_path, outside, with_root, command):
    image = tmp_path / "img"
    pools = hyperv(image)
    (pools / ".kvp_pool_0").symlink_to(outside / ".kvp_pool_0")
    where = ["--root", str(image)] if with_root else ["--dir", str(pools)]
    code, out, err = kvp(*where, "-p", "0", *command, "--timeout", "3")
    assert SECRET not in out
    assert code == 3, (code, out, err)
    assert f"{pools}/.kvp_pool_0: is a symbolic link" in err


@pytest.mark.parametrize("command", [["wait", "Secret"], ["watch", "-n", "1", "Secret"]])
def test_dangling_symlink_pool_file_is_refused_not_read_as_empty(tmp_path, command):
    pools = hyperv(tmp_path / "img")
    (pools / ".kvp_pool_0").symlink_to(tmp_path / "nowhere")
    code, out, err = kvp("--root", str(tmp_path / "img"), "-p", "0", *command, "--timeout", "3")
    assert code == 3, (code, out, err)
    assert ".kvp_pool_0: is a symbolic link" in err
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("command", [["wait", "Secret"], ["watch", "-n", "1", "Secret"]])
def test_fifo_pool_file_is_refused_without_blocking(tmp_path, command):
    pools = hyperv(tmp_path / "img")
    os.mkfifo(pools / ".kvp_pool_0")
    code, out, err = kvp("--root", str(tmp_path / "img"), "-p", "0", *command, "--timeout", "3")
    assert code == 3, (code, out, err)
    assert f"{pools}/.kvp_pool_0: is a FIFO, not a regular file" in err


def test_admins_symlinked_pool_directory_stays_allowed_without_root(tmp_path, outside):
    link = tmp_path / "hyperv-link"
    link.symlink_to(outside)
    code, out, err = kvp("--dir", str(link), "wait", "Secret", "--timeout", "10")
    assert (code, out) == (0, SECRET + b"\n"), err


def test_host_write_log_is_read_inside_the_image(tmp_path, outside):
    """A re-write logged in the host's real directory must not fire a watch of the image."""
    from pykvpd.hostwrites import HostWriteLog
    from pykvpd.watch import PoolWatcher

    image = tmp_path / "img"
    image.mkdir()
    (image / "var").symlink_to(outside.parent.parent)
    inside = hyperv(image / str(outside.parent.parent.parent).lstrip("/"))
    write_pool(str(inside), 0, rec(b"Secret", b"inside"))
    try:
        watcher = PoolWatcher("/var/lib/hyperv", [0], root=str(image))
    except Exception as exc:  # noqa: BLE001 - only the no-openat2 case is skipped
        if "no openat2" in str(exc):
            pytest.skip("this kernel cannot resolve a symlink inside an image (no openat2)")
        raise
    with watcher:
        assert [c.value for c in watcher.initial()] == ["inside"]
        HostWriteLog(str(outside)).record(0, b"Secret")  # the host's own directory
        assert watcher.changes(timeout=1.0) == []
        HostWriteLog(str(inside)).record(0, b"Secret")  # the image's
        found = watcher.changes(timeout=10.0)
        assert [(c.op, c.key, c.value, c.old_value) for c in found] == [
            ("modify", "Secret", "inside", "inside")
        ]


def test_a_pool_directory_made_later_inside_the_image_is_waited_for(tmp_path):
    from pykvpd.watch import PoolWatcher

    image = tmp_path / "img"
    (image / "var/lib").mkdir(parents=True)
    with PoolWatcher("/var/lib/hyperv", [0], root=str(image)) as watcher:
        assert watcher.initial() == []
        (image / "var/lib/hyperv").mkdir()
        write_pool(str(image / "var/lib/hyperv"), 0, rec(b"Late", b"1"))
        found = watcher.changes(timeout=10.0)
        assert [(c.op, c.key, c.value) for c in found] == [("add", "Late", "1")]
