"""Finding the images to score in files and folders: the one rule for the CLI, the app and Ray."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .images import is_image_path


class InputPathError(ValueError):
    """A path named by the user that does not exist; the message is one sentence."""


@dataclass
class FoundImages:
    """Image files to score (in a stable order) and entries that were not taken, with the reason."""

    images: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path as shown, reason)


def find_images(paths: Sequence[str | os.PathLike]) -> FoundImages:
    """Files as given, and folders searched recursively (sorted). A file named explicitly is always
    taken (and reported per file if it is not an image); a folder's other files are skipped."""
    found = FoundImages()
    for arg in paths:
        arg = os.fspath(arg)
        path = Path(arg)
        if path.is_dir():
            for entry in sorted(p for p in path.rglob("*") if p.is_file()):
                shown = os.path.join(arg, str(entry.relative_to(path)))
                if is_image_path(entry):
                    found.images.append(shown)
                else:
                    found.skipped.append((shown, "not an image"))
        elif path.is_file():
            found.images.append(arg)
        else:
            raise InputPathError(f"no such file or folder: {arg}")
    return found
