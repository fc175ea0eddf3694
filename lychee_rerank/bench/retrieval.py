"""``python -m lychee_rerank.bench.retrieval store|build|versus``: the collection index, measured.

- ``store``: query latency vs collection size on synthetic unit vectors of the embedder's width
  (exact scan; beyond ``ANN_THRESHOLD``, or with ``--ann``, also the IVF_FLAT index: build time,
  latency, recall@K against the exact answer). Random vectors have no cluster structure: the
  recall printed is a floor for real embeddings.
- ``build``: index build rate on synthetic phone photos: the CPU side (reading, hashing, decoding,
  the processor, on the worker pool), the model side (forwards on prepared images), and the whole
  update.
- ``versus``: on one folder, through the command line as a user runs it: ``index``, ``rank`` of
  every image, ``rank --index --retrieve K``; the JSON's ``elapsed_s`` of each (loading excluded),
  their ratio and the largest score difference on the K files; then 10 photos added and 5 deleted,
  and what ``index`` reports.

Every figure is printed with the load average beside it (a shared machine's figures are not a
quiet machine's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path



def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _unit(rng, n: int, dim: int):
    import numpy as np

    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _latency(index, queries, k: int, **options) -> tuple[float, list]:
    times, answers = [], []
    for query in queries:
        start = time.perf_counter()
        answers.append({h.path for h in index.search(query, k, **options)})
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:] or times), answers  # the first query warms the caches


def bench_store(sizes: list[int], dim: int, k: int, queries: int, ann: bool, folder: str | None,
                probes: list[int]) -> None:
    import numpy as np
    import pyarrow as pa

    from ..retrieval.store import ANN_THRESHOLD, Index, schema

    rng = np.random.default_rng(0)
    probe = _unit(rng, queries + 1, dim)
    print(f"collection index: {dim}-d float32 unit vectors, top {k}, median of {queries} queries")
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=folder) as where:
            index = Index.create(Path(where) / "index", embedder="synthetic", dim=dim, root=where)
            start = time.perf_counter()
            for first in range(0, n, 50_000):
                count = min(50_000, n - first)
                vectors = _unit(rng, count, dim)
                index.table.add(pa.table({
                    "path": [f"d{i // 1000}/{i}.jpg" for i in range(first, first + count)],
                    "path_bytes": pa.nulls(count, pa.binary()), "sha256": [None] * count,
                    "size": np.zeros(count, np.int64), "mtime_ns": np.zeros(count, np.int64),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
                    "error": pa.nulls(count, pa.string()),
                }, schema=schema(dim)))
            built = time.perf_counter() - start
            exact, truth = _latency(index, probe, k)
            print(f"{n:>9,} vectors: written in {built:.1f} s; exact search {exact * 1000:.0f} ms ({_load()})")
            if ann or n >= ANN_THRESHOLD:
                start = time.perf_counter()
                index.build_ann()
                trained = time.perf_counter() - start
                print(f"{'':>9}  IVF_FLAT built in {trained:.1f} s ({_load()})")
                for nprobes in probes:
                    approximate, found = _latency(index, probe, k, nprobes=nprobes or None)
                    recall = statistics.mean(len(a & b) / k for a, b in zip(found, truth))
                    print(f"{'':>9}  IVF_FLAT, {nprobes or index.meta['nprobes']} partitions probed: search {approximate * 1000:.0f} ms; "
                          f"recall@{k} vs exact {recall:.3f} ({_load()})")


def _photos(folder: Path, count: int, start: int = 0, size: tuple[int, int] = (1600, 1200)) -> list[Path]:
    """Synthetic JPEG photos (smooth gradients plus noise, like the engine's benchmark workloads)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    for i in range(start, start + count):
        rng = np.random.default_rng(i)
        base = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, 40 + i % 200)], -1)
        pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def bench_build(images: int, embedder_name: str, size: tuple[int, int], workers: int | None) -> None:
    from ..pipeline import RowFeeder, available_cpus
    from ..retrieval import Embedder, Index, update_index

    workers = workers or available_cpus()
    embedder = Embedder.load(embedder_name)
    print(f"index build: {images} JPEG photos of {size[0]}x{size[1]}, {embedder.info.summary()}, {workers} workers")
    with tempfile.TemporaryDirectory() as where:
        paths = [str(p) for p in _photos(Path(where) / "photos", images, size=size)]
        embedder.embed_images(paths[:2])  # warm-up
        start = time.perf_counter()
        with RowFeeder(paths, embedder.prepare, workers) as feeder:
            prepared = []
            for path in paths:
                prepared.append(feeder.get(path))
                feeder.release(path)
        cpu = time.perf_counter() - start
        for _ in range(3):  # warm-up at the batch size measured (the first forwards of a shape are slow)
            embedder.embed_prepared(prepared[:8])
        start = time.perf_counter()
        for first in range(0, len(prepared), 8):
            embedder.embed_prepared(prepared[first:first + 8])
        model = time.perf_counter() - start
        index = Index.create(Path(where) / "index", embedder=embedder.info.name, dim=embedder.info.dim, root=where)
        report = update_index(index, embedder, [str(Path(where) / "photos")], workers=workers)
    print(f"CPU side (read, hash-free decode at reduced scale, processor): {images / cpu:.1f} img/s ({_load()})")
    print(f"model side (forwards of 8 prepared images): {images / model:.1f} img/s ({_load()})")
    print(f"whole update (both overlapped, hashing, commits): {images / report.elapsed_s:.1f} img/s "
          f"in {report.elapsed_s:.1f} s ({_load()})")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lychee_rerank", *args], capture_output=True, text=True)


def bench_versus(images: int, k: int, model: str, embedder: str, size: tuple[int, int]) -> int:
    with tempfile.TemporaryDirectory() as where:
        where = Path(where)
        library = where / "photos"
        paths = _photos(library, images, size=size)
        index = where / "photos.index"
        commands = {
            "index": ["index", "--index", str(index), "--embedder", embedder, "--json", str(where / "i1.json"), str(library)],
            # --no-cache: each run computes its vision features (the second would reuse the first's).
            "all": ["rank", "--model", model, "--query", "海边日落 sunset over the sea", "--no-cache",
                    "--json", str(where / "all.json"), str(library)],
            "top": ["rank", "--model", model, "--query", "海边日落 sunset over the sea", "--no-cache", "--index", str(index),
                    "--retrieve", str(k), "--json", str(where / "top.json")],
        }
        for name, command in commands.items():
            done = _cli(*command)
            if done.returncode:
                print(f"{name} failed: {done.stderr.strip().splitlines()[-1]}")
                return 1
            print("$ python -m lychee_rerank " + " ".join(command))
        every, top = (json.loads((where / f"{n}.json").read_text()) for n in ("all", "top"))
        scores = {Path(r["file"]).name: r["score"] for r in every["results"]}
        difference = max(abs(scores[Path(r["file"]).name] - r["score"]) for r in top["results"])
        print(f"rank all {images}: elapsed_s {every['elapsed_s']:.2f}; search + rerank top {k}: elapsed_s "
              f"{top['elapsed_s']:.2f} (search {top['retrieval']['search_s']:.3f}) = "
              f"{top['elapsed_s'] / every['elapsed_s']:.3f} of it; {top['scored']} rows; "
              f"largest score difference {difference:.1e} ({_load()})")
        for path in paths[:5]:
            path.unlink()
        _photos(library, 10, start=images, size=size)
        again = _cli(*commands["index"][:-3], "--json", str(where / "i2.json"), str(library))
        report = json.loads((where / "i2.json").read_text())
        print("after adding 10 and deleting 5: " + again.stderr.strip().splitlines()[-1].removeprefix("lychee-rerank: "))
        print(json.dumps({key: report[key] for key in ("added", "changed", "removed", "unchanged", "errors", "embedded")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lychee_rerank.bench.retrieval", description=__doc__.split("\n\n")[0])
    parts = parser.add_subparsers(dest="part", required=True)
    store = parts.add_parser("store", help="query latency vs collection size (synthetic vectors)")
    store.add_argument("--sizes", default="1000,10000,100000", help="comma-separated collection sizes")
    store.add_argument("--dim", type=int, default=768, help="vector width (768: SigLIP 2 base; 1152: So400m)")
    store.add_argument("--k", type=int, default=100)
    store.add_argument("--queries", type=int, default=6)
    store.add_argument("--ann", action="store_true", help="also build and measure the ANN index below the threshold")
    store.add_argument("--dir", help="where to write the tables (default: the temporary folder)")
    store.add_argument("--nprobes", default="0", help="comma-separated partitions to probe (ANN; 0: the index's own choice)")
    build = parts.add_parser("build", help="index build rate: CPU side, model side, whole update")
    build.add_argument("--images", type=int, default=64)
    build.add_argument("--embedder", default="demo")
    build.add_argument("--size", default="1600x1200")
    build.add_argument("--workers", type=int)
    versus = parts.add_parser("versus", help="search then rerank the top K vs rerank all, through the CLI")
    versus.add_argument("--images", type=int, default=200)
    versus.add_argument("--retrieve", type=int, default=20)
    versus.add_argument("--model", default="demo")
    versus.add_argument("--embedder", default="demo")
    versus.add_argument("--size", default="640x480")
    args = parser.parse_args(argv)
    if args.part == "store":
        bench_store([int(s) for s in args.sizes.split(",")], args.dim, args.k, args.queries, args.ann, args.dir,
                    [int(p) for p in args.nprobes.split(",")])
        return 0
    size = tuple(int(side) for side in args.size.lower().split("x"))
    if args.part == "build":
        bench_build(args.images, args.embedder, size, args.workers)
        return 0
    return bench_versus(args.images, args.retrieve, args.model, args.embedder, size)


if __name__ == "__main__":
    sys.exit(main())
