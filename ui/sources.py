"""Images from a folder on the server, inside $LYCHEE_DATA_DIR: nothing is uploaded or copied.

Photos that already sit on the GPU server are ranked where they are: the folder is searched with the
engine's one folder rule (lychee_rerank.inputs.find_images), and each image is passed to the engine
as a ``DataFile``, read from disk only when it is scored or shown, and checked where it is opened. Without LYCHEE_DATA_DIR the option is not
offered; a folder outside it (also through a symbolic link) is refused in one sentence.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from lychee_rerank.confine import DataFile
from lychee_rerank.inputs import InputPathError, find_images

from .state import Item

DATA_DIR_ENV = "LYCHEE_DATA_DIR"


class FolderError(ValueError):
    """A folder that cannot be used; the message is one sentence (without its final stop)."""


@dataclass
class ServerImages:
    """The images found in one server folder, and the files that were not taken (with why)."""

    folder: str  # as shown: relative to the data folder ("." for the data folder itself)
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total_bytes: int = 0


def data_dir() -> Path | None:
    """The folder the app may read images from ($LYCHEE_DATA_DIR, resolved), or None when unset."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_folder(text: str, root: Path) -> Path:
    """The folder named by ``text`` (absolute, or relative to ``root``), which must lie inside ``root``."""
    text = text.strip()
    if not text:
        raise FolderError("type the path of a folder on the server")
    if not root.is_dir():
        raise FolderError(f"the data folder {root} ({DATA_DIR_ENV}) does not exist on the server")
    candidate = Path(text).expanduser()
    folder = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not _inside(folder, root):
        raise FolderError(f"the folder {text} is outside the data folder {root}; only folders inside it can be ranked")
    if not folder.exists():
        raise FolderError(f"there is no folder {text} in {root}")
    if not folder.is_dir():
        raise FolderError(f"the path {text} is a file, not a folder")
    return folder


def _identity(path: Path, stat: os.stat_result) -> str:
    """Cheap identity of a file on disk: a changed file gets a new one (its score is not reused)."""
    key = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def scan(folder: Path, root: Path) -> ServerImages:
    """Every image under ``folder`` (recursively), named relative to ``root``. Whatever lies outside
    ``root`` through a symbolic link is neither read nor listed: a link to a folder outside is one
    skipped entry, not the names of the files in it."""

    def shown(path: str | Path) -> str:
        return os.path.relpath(path, root)

    try:
        found = find_images([folder])
    except (InputPathError, OSError) as exc:
        raise FolderError(f"the folder {shown(folder)} cannot be read ({exc})") from exc
    result = ServerImages(folder=shown(folder))
    outside = _OutsideLinks(root)
    for path in found.images:
        if outside.reported(shown(path), result.skipped):
            continue
        real = Path(path).resolve()
        try:
            stat = real.stat()
        except OSError as exc:
            result.skipped.append((shown(path), f"cannot be read ({exc.strerror or exc})"))
            continue
        # Opened through a DataFile only: checked again where it is read (a link swapped in later
        # that leads out of the data folder is never followed).
        result.items.append(Item(shown(path), _identity(real, stat), DataFile(str(root), str(path), shown(path))))
        result.total_bytes += stat.st_size
    for path, reason in found.skipped:
        if not outside.reported(shown(path), result.skipped):
            result.skipped.append((shown(path), reason))
    return result


class _OutsideLinks:
    """Finds the link through which a path leaves the data folder, and reports each link once."""

    def __init__(self, root: Path):
        self.root = root
        self._resolved: dict[str, bool] = {}  # path relative to root -> lies inside root
        self._reported: set[str] = set()

    def _exit(self, relative: str) -> str | None:
        parts = Path(relative).parts
        for depth in range(1, len(parts) + 1):
            prefix = os.path.join(*parts[:depth])
            if prefix not in self._resolved:
                self._resolved[prefix] = _inside((self.root / prefix).resolve(), self.root)
            if not self._resolved[prefix]:
                return prefix
        return None

    def reported(self, relative: str, skipped: list[tuple[str, str]]) -> bool:
        """True when ``relative`` lies outside the data folder (its link is then in ``skipped``)."""
        link = self._exit(relative)
        if link is None:
            return False
        if link not in self._reported:
            self._reported.add(link)
            what = "folder" if link != relative else "file"
            skipped.append((link, f"a link to a {what} outside the data folder"))
        return True
