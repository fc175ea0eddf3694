"""The results of a Ray run on disk: Parquet shards under ``--out DIR/shards`` and the run's settings.

A shard is written atomically (temporary name, fsync, rename) as soon as a chunk of images comes back
from a replica, so a killed job loses at most the chunks in flight. Its pages carry CRC checksums, so
a shard damaged later (a full disk, a crash before the data reached the disk, a flipped bit) fails to
read instead of giving wrong rows. ``--resume`` reads the shards to skip what is done; the final
CSV/JSON are built from all shards. A shard that cannot be read whole is set aside (renamed
``*.parquet.corrupt``, never read again) and its images count as not done, so they are scored again.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from ..export import OutputError, write_atomically

# One row per finished image (scored or with its own error), ImageResult's fields by name.
SHARD_SCHEMA = pa.schema(
    [
        ("name", pa.string()),  # the input as given: a path, a manifest entry or a URI; the resume key
        ("score", pa.float64()),
        ("error", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("model_width", pa.int64()),
        ("model_height", pa.int64()),
        ("visual_tokens", pa.int64()),
        ("cached", pa.bool_()),  # vision features from the feature cache; null without it (or in older shards)
        ("mode", pa.string()),  # the execution mode the replica used
        ("demo_model", pa.bool_()),
        ("quantization", pa.string()),  # the weights the replica loaded: none, 8bit, 4bit (null in older shards)
    ]
)
RESULT_COLUMNS = ("score", "error", "width", "height", "model_width", "model_height", "visual_tokens", "cached")
# What a replica sends back: the shard row, plus, for images its run could not reach, why it stopped.
REPLICA_SCHEMA = SHARD_SCHEMA.append(pa.field("stopped", pa.string()))
SETTINGS_FILE = "run.json"
SET_ASIDE_SUFFIX = ".corrupt"  # an unreadable shard's new name ends so: no longer a *.parquet shard


def first_line(exc: BaseException) -> str:
    """An error in one line: its message's first line, or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class OutDirError(ValueError):
    """--out DIR cannot be used for this run; the message is one sentence."""


class ShardStore:
    def __init__(self, out_dir: str | os.PathLike, notice: Callable[[str], None] = lambda _message: None):
        self.root = Path(out_dir)
        self.shards = self.root / "shards"
        self.notice = notice  # told, in one sentence, of each shard set aside
        self.set_aside: list[Path] = []  # the shards found unreadable, under their new names

    def open(self, settings, resume: bool) -> None:
        """Check that DIR may take this run's results and record its settings (RunSettings.record:
        the whole object). A resumed run must have the same scoring settings."""
        settings_path = self.root / SETTINGS_FILE
        has_results = any(self.shards.glob("*.parquet"))
        if has_results and not resume:
            raise OutDirError(f"{self.root} already holds results: add --resume to continue that run, or choose another --out")
        key = settings.scoring_key()
        if settings_path.is_file() and has_results:
            try:
                recorded = json.loads(settings_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                recorded = {}
            differing = [name for name in key if recorded.get(name) != key[name]]
            if differing:
                raise OutDirError(
                    f"{self.root} holds results of a run with another {', '.join(differing)}: "
                    "resume with the same settings, or choose another --out"
                )
        try:
            self.shards.mkdir(parents=True, exist_ok=True)
            write_atomically(settings_path, json.dumps(settings.record(), ensure_ascii=False, indent=2))
        except (OSError, OutputError) as exc:
            raise OutDirError(f"cannot write to {self.root}: {getattr(exc, 'strerror', None) or exc}") from None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        buffer = pa.BufferOutputStream()
        pq.write_table(table.select(SHARD_SCHEMA.names).cast(SHARD_SCHEMA), buffer, write_page_checksum=True)
        # The temporary file's name starts with a dot: never read as a shard.
        write_atomically(self.shards / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet", buffer.getvalue().to_pybytes())

    def read(self) -> pa.Table:
        """Every row of every readable shard. A shard that cannot be read whole (every column, every
        page checksum) is set aside first (``set_aside``), so its images count as not done."""
        files = sorted(self.shards.glob("*.parquet"))
        try:
            return self._read(files)
        except (pa.ArrowException, OSError):  # rare: find the shards at fault, one by one
            return self._read([path for path in files if self._readable(path)])

    @staticmethod
    def _read(files: list[Path]) -> pa.Table:
        if not files:
            return SHARD_SCHEMA.empty_table()
        return pq.read_table([str(path) for path in files], schema=SHARD_SCHEMA, page_checksum_verification=True)

    def _readable(self, path: Path) -> bool:
        """Whether the shard at ``path`` reads whole; if not, it is renamed ``*.parquet.corrupt``."""
        try:
            self._read([path])
            return True
        except (pa.ArrowException, OSError) as exc:
            reason = first_line(exc)
        aside = path.with_name(path.name + SET_ASIDE_SUFFIX)
        try:
            os.replace(path, aside)
        except OSError as exc:
            raise OutDirError(f"cannot set aside the unreadable shard {path}: {exc.strerror or exc}") from None
        self.set_aside.append(aside)
        self.notice(f"set aside an unreadable shard as {aside} ({reason}); its images count as not done")
        return False

    def done_names(self) -> set[str]:
        return set(self.read().column("name").to_pylist())
