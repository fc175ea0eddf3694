"""Files inside a data folder (``$LYCHEE_DATA_DIR``), checked where they are opened.

A folder listing is only a snapshot: anyone who can write into the data folder can replace a listed
file by a link to ``/etc/passwd`` between the listing and the read. So a ``DataFile`` is not a path
to be opened by whoever holds it: its one way in is ``open()``, which opens the file and then checks
the *opened descriptor* — its real path (``/proc/self/fd``) must lie inside the data folder's real
path, and it must be a regular file. A link that stays inside the folder is fine; one leading out is
an ``ImageError`` (one sentence), whatever was listed. Every reader of server files (scoring,
thumbnails, the viewer, the ZIP, the HTTP service, the index) takes this object.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

from .images import ImageError

OUTSIDE_MESSAGE = "the file now lies outside the data folder (a link leads out of it), so it is not read"


def inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies below it (both real, absolute paths)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _opened_path(fd: int, path: str) -> str:
    """The real path of what ``fd`` refers to: the kernel's answer on Linux; elsewhere the resolved
    path, accepted only if it is the very file that was opened (same device and inode)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        real = os.path.realpath(path)
        opened, resolved = os.fstat(fd), os.stat(real)
        if (opened.st_dev, opened.st_ino) != (resolved.st_dev, resolved.st_ino):
            raise ImageError("the file changed while it was being opened; try again") from None
        return real


def open_confined(root: str, path: str) -> BinaryIO:
    """Open ``path`` for reading if what is opened lies inside ``root`` (a real path) and is a regular
    file; else ImageError. Never blocks on a pipe swapped in (O_NONBLOCK)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageError("file not found: it was removed or renamed since the folder was read") from None
    except PermissionError:
        raise ImageError("permission denied: the file cannot be read") from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"the file cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        if not inside(_opened_path(fd, path), root):
            raise ImageError(OUTSIDE_MESSAGE)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError("not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


@dataclass(frozen=True)
class DataFile:
    """A file found in a data folder: ``root`` is the folder's real path, ``path`` the file as listed
    (absolute), ``name`` how it is shown (relative to the folder). Open it with ``open()`` only."""

    root: str
    path: str
    name: str

    @classmethod
    def under(cls, root: str | os.PathLike, path: str | os.PathLike) -> "DataFile":
        real_root = os.path.realpath(root)
        absolute = os.path.join(real_root, path) if not os.path.isabs(path) else os.fspath(path)
        return cls(real_root, absolute, os.path.relpath(absolute, real_root))

    def open(self) -> BinaryIO:
        """The file, opened for reading, if it still lies inside the data folder (ImageError if not)."""
        return open_confined(self.root, self.path)

    def read_bytes(self) -> bytes:
        with self.open() as file:
            return file.read()

    def size(self) -> int:
        """The size of what ``open()`` would read (0 when it cannot be opened)."""
        try:
            with self.open() as file:
                return os.fstat(file.fileno()).st_size
        except ImageError:
            return 0
