"""The one rule for what leaves this node: regular files inside the root.

Both replication paths (the inotify queue and the scan/sync) read local files
only through :func:`open_inside`: every directory below the root is opened
with ``O_NOFOLLOW`` relative to its parent, and so is the file, whose type is
then checked on the open descriptor. A symlink renamed into the store (or a
directory swapped for one between a check and the read) cannot make ttsha send
a file from outside the root; FIFOs and devices are never read either.

A file symlink whose target is a regular file inside the root (model caches
link snapshots to blobs) is sent with that file's content: the target is
resolved, checked to be inside the root, and opened by the same rule.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .transport import safe_relative


class NotSendable(OSError):
    """The path is not a regular file inside the root (a symlink, a FIFO, ...)."""


def _open_parent(root: Path, rel: str) -> tuple[int, str]:
    """A descriptor of ``rel``'s directory (no symlink followed below ``root``) and the file name."""
    parts = safe_relative(rel).split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except NotADirectoryError:
                raise NotSendable(f"{rel}: {part} is not a directory (a symlink?)") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def link_target_inside(root: Path, rel: str) -> str | None:
    """For a symlink ``root/rel``: its final target relative to ``root`` when that is inside, else None."""
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([real_root, target]) != real_root or target == real_root:
        return None
    return os.path.relpath(target, real_root)


def open_inside(root: Path, rel: str, _depth: int = 0) -> tuple[BinaryIO, os.stat_result]:
    """Open ``root/rel`` for reading if it is a regular file inside ``root``.

    Raises FileNotFoundError when it is gone, :class:`NotSendable` otherwise.
    """
    dir_fd, name = _open_parent(Path(root), rel)
    try:
        # O_NONBLOCK: opening a FIFO must not hang the sender; it is refused below.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        target = link_target_inside(root, rel) if exc.errno == errno.ELOOP and _depth == 0 else None
        if target is not None:
            return open_inside(root, target, _depth + 1)  # opened by the same rule: no link on its path
        raise NotSendable(f"{rel}: not a regular file inside the root ({exc.strerror})") from None
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotSendable(f"{rel}: not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st


def stat_inside(root: Path, rel: str) -> os.stat_result:
    """:func:`open_inside`'s answer without reading: the file's stat, or the same errors."""
    dir_fd, name = _open_parent(Path(root), rel)
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.close(dir_fd)
    if stat.S_ISLNK(st.st_mode) and (target := link_target_inside(root, rel)) is not None:
        return stat_inside(root, target)
    if not stat.S_ISREG(st.st_mode):
        raise NotSendable(f"{rel}: not a regular file")
    return st
