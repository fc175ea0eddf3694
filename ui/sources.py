"""Images from a folder on the server, inside $LYCHEE_DATA_DIR: nothing is uploaded or copied.

Photos that already sit on the GPU server are ranked where they are: the folder is searched with the
engine's one folder rule (lychee_rerank.inputs.find_images, confined to the data folder: a link
leading out of it is one skipped entry and nothing behind it is listed), and each image is passed to
the engine as a ``DataFile``, read from disk only when it is scored or shown, and checked where it
is opened. Without LYCHEE_DATA_DIR the option is not offered; a folder outside it (also through a
symbolic link) is refused in one sentence.

The page offers the data folder's subfolders to choose from (``folders``: breadth first, bounded in
folders, depth and entries read, with the images found under each), and typing a name is still
possible; a name that does not exist is answered with the nearest ones (``nearest``).

No Streamlit here: a refusal is a ``FolderError`` holding an i18n key and its values, which the
page words in the user's language.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from lychee_rerank.confine import DataFile, inside
from lychee_rerank.images import is_image_path
from lychee_rerank.inputs import InputPathError, find_images

from .state import Item

DATA_DIR_ENV = "LYCHEE_DATA_DIR"
# What the folder list reads at most: it is offered on every visit of the page, so it must stay
# cheap on a data folder of millions of files. Typing reaches any folder beyond it.
MAX_FOLDERS = 400
MAX_DEPTH = 4
MAX_ENTRIES = 50_000


class FolderError(ValueError):
    """A folder that cannot be used: ``key`` names the page's sentence (ui/i18n.py), ``values`` fill it."""

    def __init__(self, key: str, **values):
        super().__init__(key)
        self.key, self.values = key, values


@dataclass
class ServerImages:
    """The images found in one server folder, and the files that were not taken (with why)."""

    folder: str  # as shown: relative to the data folder ("." for the data folder itself)
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total_bytes: int = 0


@dataclass(frozen=True)
class FolderChoice:
    """A folder offered in the picker: its path relative to the data folder, and the images found
    under it (``complete`` False when the list stopped before the end of its subfolders)."""

    path: str
    images: int
    complete: bool = True


def data_dir() -> Path | None:
    """The folder the app may read images from ($LYCHEE_DATA_DIR, resolved), or None when unset."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


def resolve_folder(text: str, root: Path) -> Path:
    """The folder named by ``text`` (absolute, or relative to ``root``: a folder called ``~`` is a
    folder, not a home), which must lie inside ``root``. FolderError otherwise."""
    text = text.strip()
    if not text:
        raise FolderError("folder_none")
    if not root.is_dir():
        raise FolderError("folder_no_root", root=str(root), env=DATA_DIR_ENV)
    if "\0" in text:
        raise FolderError("folder_nul")
    candidate = Path(text) if os.path.isabs(text) else root / text
    try:
        os.stat(candidate)
    except FileNotFoundError:
        if not os.path.lexists(candidate):
            raise FolderError("folder_missing", folder=text, root=str(root)) from None
        raise FolderError("folder_broken_link", folder=text) from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise FolderError("folder_name_too_long", n=len(text)) from None
        if exc.errno == errno.ELOOP:
            raise FolderError("folder_loop", folder=text) from None
        raise FolderError("folder_unreadable", folder=text, reason=exc.strerror or str(exc)) from None
    folder = Path(os.path.realpath(candidate))
    if not inside(str(folder), str(root)):
        raise FolderError("folder_outside", folder=text, root=str(root))
    if not folder.is_dir():
        raise FolderError("folder_is_file", folder=text)
    return folder


def _identity(path: Path, stat: os.stat_result) -> str:
    """Cheap identity of a file on disk: a changed file gets a new one (its score is not reused)."""
    key = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def scan(folder: Path, root: Path) -> ServerImages:
    """Every image under ``folder`` (subfolders included), named relative to ``root``. Whatever
    lies outside ``root`` through a symbolic link is neither read nor listed."""

    def shown(path: str | Path) -> str:
        return os.path.relpath(path, root)

    try:
        found = find_images([folder], confine_to=root)
    except InputPathError as exc:
        raise FolderError("folder_unreadable", folder=shown(folder), reason=str(exc)) from exc
    result = ServerImages(folder=shown(folder))
    for path in found.images:
        try:
            stat = os.stat(path)
        except OSError as exc:
            result.skipped.append((shown(path), f"cannot be read ({exc.strerror or exc})"))
            continue
        # Opened through a DataFile only: checked again where it is read (a link swapped in later
        # that leads out of the data folder is never followed).
        result.items.append(Item(shown(path), _identity(Path(path), stat), DataFile(str(root), str(path), shown(path))))
        result.total_bytes += stat.st_size
    result.skipped.extend((shown(path), reason) for path, reason in found.skipped)
    return result


def folders(root: Path) -> list[FolderChoice]:
    """The data folder and its subfolders, breadth first (hidden ones and links left out), with the
    images found under each: at most MAX_FOLDERS folders, MAX_DEPTH levels and MAX_ENTRIES entries
    read, so the list stays cheap whatever the data folder holds."""
    direct: dict[str, int] = {}
    children: dict[str, list[str]] = {}
    cut: set[str] = set()  # folders whose subfolders were not all listed
    queue: deque[tuple[str, int]] = deque([(".", 0)])
    entries = 0
    while queue:
        relative, depth = queue.popleft()
        try:
            with os.scandir(root / relative) as listing:
                found = list(listing)
        except OSError:
            continue
        entries += len(found)
        direct[relative] = sum(_real_file(entry) and is_image_path(entry.name) for entry in found)
        children[relative] = []
        for entry in sorted(found, key=lambda e: e.name):
            if entry.name.startswith(".") or not _real_folder(entry):
                continue
            child = os.path.normpath(os.path.join(relative, entry.name))
            if depth + 1 > MAX_DEPTH or len(direct) + len(queue) >= MAX_FOLDERS or entries >= MAX_ENTRIES:
                cut.add(relative)
                continue
            children[relative].append(child)
            queue.append((child, depth + 1))
    return sorted((FolderChoice(path, *_total(path, direct, children, cut)) for path in direct), key=lambda c: c.path)


def _real_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _real_file(entry: os.DirEntry) -> bool:
    """A regular file, not a link (a link may lead out of the data folder: not counted)."""
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _total(path: str, direct: dict[str, int], children: dict[str, list[str]], cut: set[str]) -> tuple[int, bool]:
    """Images under ``path`` among the folders listed, and whether that is all of them."""
    total, complete, stack = 0, True, [path]
    while stack:
        current = stack.pop()
        total += direct.get(current, 0)
        complete = complete and current not in cut and current in direct
        stack.extend(children.get(current, ()))
    return total, complete


def nearest(text: str, choices: list[FolderChoice], count: int = 3) -> list[str]:
    """The offered folders whose names are closest to ``text`` (those holding images first)."""
    text = os.path.normpath(text.strip())
    names = [c.path for c in choices if c.images and c.path != text] or [c.path for c in choices if c.path != text]
    close = difflib.get_close_matches(text, names, n=count, cutoff=0.7)
    by_base = {os.path.basename(name): name for name in names}
    close += [by_base[b] for b in difflib.get_close_matches(os.path.basename(text), list(by_base), n=count, cutoff=0.7)]
    return list(dict.fromkeys(close))[:count]
