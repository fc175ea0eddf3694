"""The results of a Ray run on disk: Parquet shards under ``--out DIR/shards`` and the run's settings.

A shard is written (atomically: temporary name, then rename) as soon as a chunk of images comes back
from a replica, so a killed job loses at most the chunks in flight. ``--resume`` reads the shards'
``name`` column to skip what is done; the final CSV/JSON are built from all shards.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

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
    ]
)
RESULT_COLUMNS = ("score", "error", "width", "height", "model_width", "model_height", "visual_tokens", "cached")
# What a replica sends back: the shard row, plus, for images its run could not reach, why it stopped.
REPLICA_SCHEMA = SHARD_SCHEMA.append(pa.field("stopped", pa.string()))
SETTINGS_FILE = "run.json"


class OutDirError(ValueError):
    """--out DIR cannot be used for this run; the message is one sentence."""


class ShardStore:
    def __init__(self, out_dir: str | os.PathLike):
        self.root = Path(out_dir)
        self.shards = self.root / "shards"

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
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        partial = self.shards / f".{name}.partial"  # a leading dot: never read as a shard
        pq.write_table(table.select(SHARD_SCHEMA.names).cast(SHARD_SCHEMA), partial)
        os.replace(partial, self.shards / name)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """Every row of every shard (all columns, or those named)."""
        if not self.shards.is_dir() or not any(self.shards.glob("*.parquet")):
            schema = SHARD_SCHEMA if columns is None else pa.schema([SHARD_SCHEMA.field(c) for c in columns])
            return schema.empty_table()
        # A folder read skips names starting with "." or "_": the shards being written.
        return pq.read_table(self.shards, columns=columns, schema=SHARD_SCHEMA)

    def done_names(self) -> set[str]:
        return set(self.read(["name"]).column("name").to_pylist())
