"""Finding the images to score in files and folders: the one rule for the CLI, the app and Ray.

Nothing is left out silently: every entry of a folder is either taken or listed in ``skipped`` with
the reason (not an image, a format this Pillow cannot read, a pipe or device, a broken link, a
folder that cannot be read, a link to a folder already searched, a link leading out of the folder
the search is confined to).

The walk is iterative (a folder nested thousands deep is one more entry, never a RecursionError),
and every error the system reports about an entry (a link loop, a name too long, permission denied)
becomes that entry's skip reason. Links to folders are followed only after every real folder has
been searched, so a folder reached both ways is listed under its real name, whatever the order of
the names.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from .confine import inside
from .images import file_kind, is_image_path, unsupported_format

Listing = Iterator[tuple[os.DirEntry, str]]  # a folder's entries in name order, with how each is shown


class InputPathError(ValueError):
    """A path named by the user that does not exist or cannot be used; the message is one sentence."""


@dataclass
class FoundImages:
    """Image files to score (in a stable order) and entries that were not taken, with the reason."""

    images: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path as shown, reason)


def find_images(paths: Sequence[str | os.PathLike], *, confine_to: str | os.PathLike | None = None) -> FoundImages:
    """Files as given, and folders searched (sorted, subfolders included, links to folders followed
    once). A file named explicitly is always taken, whatever it is (it gets its own error if it
    cannot be read); in a folder, only regular files with an image suffix are taken, the rest is
    skipped. ``confine_to`` (the app's data folder): a link in a searched folder that leads out of
    it is one skipped entry, and nothing behind it is listed."""
    walk = _Walk(confine_to)
    for arg in paths:
        arg = os.fsdecode(arg)
        if _is_folder(arg):
            walk.search(arg, arg)
        else:
            walk.found.images.append(arg)
    walk.follow_links()
    return walk.found


def _is_folder(arg: str) -> bool:
    """Whether a path named by the user is a folder. Anything else that exists, even a broken link
    or a link loop, is a file (it gets its own error row); InputPathError when nothing is there."""
    if "\0" in arg:
        raise InputPathError(f"the path {arg!r} contains a NUL byte")
    try:
        return stat.S_ISDIR(os.stat(arg).st_mode)
    except OSError as exc:
        if os.path.lexists(arg):
            return False
        if isinstance(exc, FileNotFoundError):
            raise InputPathError(f"no such file or folder: {arg}") from None
        raise InputPathError(f"the path {arg} cannot be used ({exc.strerror or exc})") from None


class _Walk:
    """One search over any number of folders: the folders searched so far (by device and inode),
    and the links to folders waiting until every real folder has been searched."""

    def __init__(self, confine_to: str | os.PathLike | None):
        self.found = FoundImages()
        self.root = os.path.realpath(confine_to) if confine_to is not None else None
        self._searched: set[tuple[int, int]] = set()
        self._links: deque[tuple[str, str]] = deque()

    def search(self, folder: str, shown: str) -> None:
        """Depth first in name order, with a stack of listings instead of recursion."""
        first = self._listing(folder, shown)
        stack: list[Listing] = [first] if first is not None else []
        while stack:
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
            elif (subfolder := self._entry(*entry)) is not None:
                stack.append(subfolder)

    def follow_links(self) -> None:
        while self._links:
            self.search(*self._links.popleft())

    def _listing(self, folder: str, shown: str) -> Listing | None:
        """The folder's entries, or None when it was searched already or cannot be read (then it is
        a skipped entry)."""
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in self._searched:
                self.found.skipped.append((shown, "a link to a folder already searched"))
                return None
            self._searched.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except PermissionError:
            self.found.skipped.append((shown, "folder cannot be read: permission denied"))
            return None
        except OSError as exc:
            self.found.skipped.append((shown, f"folder cannot be read ({exc.strerror or exc})"))
            return None
        return ((entry, os.path.join(shown, entry.name)) for entry in entries)

    def _entry(self, entry: os.DirEntry, shown: str) -> Listing | None:
        """Take, skip or set aside one entry; for a real subfolder, its listing (searched next)."""
        skipped = self.found.skipped
        try:
            mode = os.stat(entry.path).st_mode  # follows links
        except FileNotFoundError:
            skipped.append((shown, "broken link: it points to nothing" if entry.is_symlink() else "removed while searching"))
            return None
        except OSError as exc:
            skipped.append((shown, f"cannot be read ({exc.strerror or exc})"))
            return None
        kind = file_kind(mode)
        if entry.is_symlink() and self.root is not None and not inside(os.path.realpath(entry.path), self.root):
            skipped.append((shown, f"a link to a {'folder' if kind == 'a folder' else 'file'} outside the data folder"))
        elif kind == "a folder":
            if not entry.is_symlink():
                return self._listing(entry.path, shown)
            self._links.append((entry.path, shown))  # once every real folder is searched
        elif kind is not None:
            skipped.append((shown, f"not a regular file ({kind})"))
        elif is_image_path(entry.name):
            self.found.images.append(shown)
        elif unsupported := unsupported_format(entry.name):
            skipped.append((shown, f"format not supported ({unsupported})"))
        else:
            skipped.append((shown, "not an image"))
        return None
