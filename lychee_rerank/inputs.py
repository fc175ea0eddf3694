"""Finding the images to score in files and folders: the one rule for the CLI, the app and Ray.

Nothing is left out silently: every entry of a folder is either taken or listed in ``skipped`` with
the reason (not an image, a format this Pillow cannot read, a pipe or device, a broken link, a
folder that cannot be read, a link to a folder already searched).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

from .images import file_kind, is_image_path, unsupported_format


class InputPathError(ValueError):
    """A path named by the user that does not exist; the message is one sentence."""


@dataclass
class FoundImages:
    """Image files to score (in a stable order) and entries that were not taken, with the reason."""

    images: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path as shown, reason)


def find_images(paths: Sequence[str | os.PathLike]) -> FoundImages:
    """Files as given, and folders searched recursively (sorted; links to folders followed once).
    A file named explicitly is always taken, whatever it is (it gets its own error if it cannot be
    read); in a folder, only regular files with an image suffix are taken, the rest is skipped."""
    found = FoundImages()
    for arg in paths:
        arg = os.fsdecode(arg)
        if os.path.isdir(arg):
            _search(arg, arg, found, set())
        elif os.path.lexists(arg):
            found.images.append(arg)
        else:
            raise InputPathError(f"no such file or folder: {arg}")
    return found


def _search(folder: str, shown: str, found: FoundImages, searched: set[tuple[int, int]]) -> None:
    try:
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in searched:
            found.skipped.append((shown, "a link to a folder already searched"))
            return
        searched.add((info.st_dev, info.st_ino))
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except PermissionError:
        found.skipped.append((shown, "folder cannot be read: permission denied"))
        return
    except OSError as exc:
        found.skipped.append((shown, f"folder cannot be read ({exc.strerror or exc})"))
        return
    for entry in entries:
        entry_shown = os.path.join(shown, entry.name)
        try:
            mode = os.stat(entry.path).st_mode  # follows links
        except FileNotFoundError:
            reason = "broken link: it points to nothing" if entry.is_symlink() else "removed while searching"
            found.skipped.append((entry_shown, reason))
            continue
        except OSError as exc:
            found.skipped.append((entry_shown, f"cannot be read ({exc.strerror or exc})"))
            continue
        kind = file_kind(mode)
        if kind == "a folder":
            _search(entry.path, entry_shown, found, searched)
        elif kind is not None:
            found.skipped.append((entry_shown, f"not a regular file ({kind})"))
        elif is_image_path(entry.name):
            found.images.append(entry_shown)
        elif unsupported := unsupported_format(entry.name):
            found.skipped.append((entry_shown, f"format not supported ({unsupported})"))
        else:
            found.skipped.append((entry_shown, "not an image"))
