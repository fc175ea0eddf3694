"""A persistent, content-addressed cache of each image's vision features.

Of a score, only the language model's part depends on the query. The vision tower's output for an
image (its ``pooler_output``: one row of ``out_hidden_size`` values per visual token, 3,584 wide on
the 7B) depends on the image's bytes, the tower's weights, how the image was prepared (resolution
setting, preprocessing mode) and nothing else. It is kept here, keyed by exactly those, and handed to
the model as ``mm_encoder_outputs`` in place of the pixels: a repeated question pays no decoding, no
qwen-vl-utils, no processor and no vision tower for an image seen before.

The key (``RunCache.key``) is a BLAKE3 digest of: the image's bytes (never its name, size or time: an
edited photo keeps its name, and a file replaced by other bytes gets a new key whatever its metadata
say), the vision tower's identity (``vision_identity``: a digest of its weights as loaded, the image
processor's configuration, the attention implementation, the device type and the versions of the
libraries that make the pixels), the resolution bounds, the preprocessing mode, and whether the image
is the query's or a candidate's.

The store: one safetensors file per entry (never pickle), ``ROOT/ab/<key>.safetensors``, holding the
features in the model's dtype, the image's grid, and in its metadata the key and a BLAKE3 checksum of
the tensors. Entries are written to a temporary file, fsynced and renamed into place, so a reader
sees a whole entry or none; one that fails to parse or to match its checksum is deleted and
recomputed. Plain files and renames, no database: safe for several processes at once (the app and a
CLI job), also on a shared network file system where SQLite's locking is not. The size is bounded
(``LYCHEE_FEATURE_CACHE_GB``, default 20): past it the least recently used entries go (a hit touches
its file's modification time).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import torch

from .demo_model import cache_root

log = logging.getLogger(__name__)

FORMAT = "lychee-features-1"  # bump when an entry's layout or meaning changes: old entries are never read
SUFFIX = ".safetensors"
DEFAULT_LIMIT_GB = 20.0
# Eviction goes down to this share of the limit, so that the next few writes do not scan again.
LOW_WATER = 0.9
# A temporary file this old was left by a process that died while writing: removed when scanning.
STALE_TEMPORARY_S = 3600
# An entry of the largest image (16,384 visual tokens x 8,192 wide in float32) is 512 MiB: anything
# bigger is not an entry.
MAX_ENTRY_BYTES = 2**30
# Writes waiting for the writer thread; past this the forward waits (bounds the memory they hold).
MAX_PENDING_WRITES = 32
_OFF = ("off", "none", "0", "false", "no")


class CacheUnavailable(RuntimeError):
    """The cache cannot be used for this run; the message is one sentence."""


class Features(NamedTuple):
    """One image's vision features as the language model takes them."""

    features: torch.Tensor  # (visual tokens, out_hidden_size), the vision tower's dtype
    grid: torch.Tensor  # (1, 3) int64: the image's row of ``image_grid_thw``


def default_cache_dir() -> str | None:
    """``$LYCHEE_FEATURE_CACHE`` (a folder, or ``off``), else ``$LYCHEE_CACHE/features``."""
    configured = os.environ.get("LYCHEE_FEATURE_CACHE", "").strip()
    if configured.lower() in _OFF:
        return None
    return configured or str(cache_root() / "features")


def cache_dir_problem(folder: str | os.PathLike) -> str | None:
    """Why the cache cannot live in ``folder`` (created if missing), in one sentence; None if it can."""
    try:
        FeatureCache(folder)
    except CacheUnavailable as exc:
        return str(exc)
    return None


def limit_bytes() -> int:
    """The size limit: ``$LYCHEE_FEATURE_CACHE_GB`` gigabytes (10^9 bytes), default 20."""
    text = os.environ.get("LYCHEE_FEATURE_CACHE_GB", "").strip()
    try:
        gigabytes = float(text) if text else DEFAULT_LIMIT_GB
    except ValueError:
        raise CacheUnavailable(f"LYCHEE_FEATURE_CACHE_GB must be a number of gigabytes, not {text!r}") from None
    if not gigabytes > 0:
        raise CacheUnavailable(f"LYCHEE_FEATURE_CACHE_GB must be positive, not {text!r}")
    return int(gigabytes * 1e9)


def content_digest(data: bytes) -> str:
    """BLAKE3 of an image's bytes: cryptographic (a crafted file cannot take another's entry), and
    faster than SHA-256 (docs/benchmarks.md: per 12-MP JPEG)."""
    from blake3 import blake3

    return blake3(data).hexdigest()


def _tensor_bytes(tensor: torch.Tensor):
    """A tensor's raw bytes, without a copy when it is already contiguous on the CPU."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _versions() -> dict:
    """The libraries that decide an image's pixels and the tower's arithmetic."""
    names = ("torch", "transformers", "qwen-vl-utils", "pillow", "numpy")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def vision_identity(model, processor) -> str:
    """A digest of everything besides the image that decides its vision features: the tower's weights
    as loaded (so any other checkpoint, dtype or quantisation of the tower is another identity, wherever
    it was loaded from), the image processor's configuration, the attention implementation, the device
    type and the library versions. The 7B's tower is 0.68 B parameters: about a second, once per load.
    Raises CacheUnavailable when the tower's weights are not in memory (offloaded to disk)."""
    from blake3 import blake3

    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None:
        raise CacheUnavailable("the model has no vision tower the cache knows")
    digest = blake3(max_threads=blake3.AUTO)
    about = {
        "format": FORMAT,
        "versions": _versions(),
        "image_processor": processor.image_processor.to_dict(),
        "attention": getattr(visual.config, "_attn_implementation", None),
        "device": model.device.type,
    }
    digest.update(json.dumps(about, sort_keys=True, default=str).encode())
    for name, tensor in visual.state_dict().items():
        if tensor.device.type == "meta":
            raise CacheUnavailable("the vision tower's weights are offloaded, so their identity cannot be read")
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


class FeatureCache:
    """The store in one folder. ``get`` and ``put`` may be called from any thread or process."""

    def __init__(self, root: str | os.PathLike, limit: int | None = None):
        self.root = Path(root).expanduser()
        self.limit = limit_bytes() if limit is None else int(limit)
        self._lock = threading.Lock()
        self._estimate: int | None = None  # bytes in the folder as of the last scan, plus our writes
        if self.root.exists() and not self.root.is_dir():
            raise CacheUnavailable(f"the feature cache folder {self.root} is a file, not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheUnavailable(f"the feature cache folder {self.root} cannot be created ({exc.strerror or exc})") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise CacheUnavailable(f"the feature cache folder {self.root} is not writable")

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{SUFFIX}"

    # -- reading ----------------------------------------------------------------------------------
    def get(self, key: str) -> Features | None:
        """The entry, or None (absent, or corrupt: then it is deleted, to be written again)."""
        path = self.path(key)
        try:
            data = _read_entry(path)
        except FileNotFoundError:
            return None
        except OSError as exc:  # unreadable (a link, permissions): treated as absent, left alone
            log.warning("feature cache entry %s cannot be read: %s", path, exc)
            return None
        try:
            entry = _decode(data, key)
        except Exception as exc:  # whatever is wrong with the bytes, the entry is not used
            log.warning("feature cache entry %s is corrupt (%s); it is recomputed", path, exc)
            _unlink(path)
            return None
        try:
            os.utime(path)  # least recently used = oldest modification time
        except OSError:
            pass
        return entry

    # -- writing ----------------------------------------------------------------------------------
    def put(self, key: str, entry: Features) -> None:
        """Write an entry atomically (temporary file, fsync, rename), then evict if over the limit.
        Raises OSError (disk full, permissions)."""
        data = _encode(entry, key)
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)  # parents: the folder may have been cleared meanwhile
        fd, temporary = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".partial", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            # Not fsyncing the folder: should the rename itself be lost in a crash, the entry is
            # simply absent and computed again.
            os.replace(temporary, path)
        except BaseException:
            _unlink(Path(temporary))
            raise
        with self._lock:
            if self._estimate is None:
                self._estimate = self._scan_size()
            else:
                self._estimate += len(data)
            over = self._estimate > self.limit
        if over:
            self.evict()

    def evict(self) -> int:
        """Delete the least recently used entries until the folder holds at most LOW_WATER of the
        limit (and stale temporary files); returns the bytes it now holds. Several processes may evict
        at once: an entry already gone is skipped."""
        entries, total = [], 0
        now = time.time()
        for path, info in self._files():
            if path.name.startswith("."):
                if now - info.st_mtime > STALE_TEMPORARY_S:
                    _unlink(path)
                continue
            entries.append((info.st_mtime, path, info.st_size))
            total += info.st_size
        entries.sort()
        target = int(self.limit * LOW_WATER)
        for _mtime, path, size in entries:
            if total <= target:
                break
            _unlink(path)
            total -= size
        with self._lock:
            self._estimate = total
        return total

    def size(self) -> int:
        return self._scan_size()

    def _scan_size(self) -> int:
        return sum(info.st_size for path, info in self._files() if not path.name.startswith("."))

    def _files(self):
        """(path, stat) of every entry and temporary file: ROOT/<2 hex>/<file>, links not followed."""
        try:
            shards = [e for e in os.scandir(self.root) if len(e.name) == 2 and e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for shard in shards:
            try:
                files = list(os.scandir(shard.path))
            except OSError:
                continue
            for entry in files:
                if not entry.name.endswith((SUFFIX, ".partial")):
                    continue
                try:
                    yield Path(entry.path), entry.stat(follow_symlinks=False)
                except OSError:  # evicted by another process meanwhile
                    continue


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _read_entry(path: Path) -> bytes:
    """The file's bytes; a link is refused (O_NOFOLLOW), an oversized file is reported corrupt."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as file:
        size = os.fstat(fd).st_size
        if size > MAX_ENTRY_BYTES:
            return b""  # fails to decode: deleted as corrupt
        return file.read()


def _checksum(features: torch.Tensor, grid: torch.Tensor) -> str:
    from blake3 import blake3

    digest = blake3(_tensor_bytes(features))
    digest.update(_tensor_bytes(grid))
    return digest.hexdigest()


def _encode(entry: Features, key: str) -> bytes:
    from safetensors.torch import save

    features = entry.features.detach().cpu().contiguous()
    grid = entry.grid.detach().cpu().to(torch.int64).reshape(3).contiguous()
    meta = {"format": FORMAT, "key": key, "checksum": _checksum(features, grid)}
    return save({"features": features, "grid": grid}, metadata=meta)


def _decode(data: bytes, key: str) -> Features:
    """Raises on anything but a whole, matching entry."""
    from safetensors.torch import load

    header_length = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + header_length]).get("__metadata__") or {}
    if meta.get("format") != FORMAT or meta.get("key") != key:
        raise ValueError("another format or key")
    tensors = load(data)  # checks that the header and the data agree in length
    features, grid = tensors["features"], tensors["grid"]
    if features.dim() != 2 or grid.shape != (3,) or grid.dtype != torch.int64:
        raise ValueError("unexpected shapes")
    if _checksum(features, grid) != meta.get("checksum"):
        raise ValueError("checksum mismatch")
    return Features(features, grid.reshape(1, 3))


@dataclass
class RunCache:
    """The cache as one run uses it: keys for its model and settings, lookups, and writes done on a
    background thread (an entry of the 7B at 1,280 tokens is 9 MB: its fsync must not hold up the
    GPU). ``close()`` waits for them."""

    store: FeatureCache
    identity: str
    min_pixels: int
    max_pixels: int
    preprocess: str

    def __post_init__(self):
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lychee-cache-write")
        self._slots = threading.BoundedSemaphore(MAX_PENDING_WRITES)
        self._failed = False

    def key(self, digest: str, kind: str) -> str:
        """``kind``: "query" (the query image's path) or "document" (a candidate's)."""
        from blake3 import blake3

        preprocess = self.preprocess if kind == "document" else "exact"  # a query image is never drafted
        parts = [FORMAT, self.identity, kind, digest, self.min_pixels, self.max_pixels, preprocess]
        return blake3(json.dumps(parts).encode()).hexdigest()

    def get(self, key: str) -> Features | None:
        return self.store.get(key)

    def put_later(self, key: str, entry: Features) -> None:
        """Queue a write; a failure is logged once and costs nothing else (scores never depend on it)."""
        self._slots.acquire()
        future = self._writer.submit(self.store.put, key, entry)
        future.add_done_callback(self._written)

    def _written(self, future: Future) -> None:
        self._slots.release()
        exc = future.exception()
        if exc is not None and not self._failed:
            self._failed = True
            log.warning("the feature cache in %s cannot be written: %s", self.store.root, exc)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
