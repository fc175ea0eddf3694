"""The repeat-question case (``--repeat-question``): the same images asked about twice, with the
vision-feature cache.

For each mode: one run without the cache (the second query: the reference scores), one with the
first query into an empty cache (cold: every image decoded, preprocessed, encoded and stored), one
with the second query from that cache (warm: every image a hit). Beside them, what the warm run is
spared: the CPU side alone (the preprocessing ceiling, no model) and the vision tower's own time in
the cold run (timed around ``get_image_features``, synchronised on a GPU); and what it pays instead:
reading and hashing each file (BLAKE3), timed alone. The check: warm at most a third of cold's
``elapsed_s``, every image a hit, scores within the tolerance of the run without the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from .measure import SCORE_TOLERANCE, RunOptions, measure_ceiling, measure_mode

# Another question about the same images (the first is the bench's --query).
SECOND_QUERY = "一只猫在沙发上 a cat on a sofa"
# Done when the warm run takes at most this share of the cold run's elapsed_s (issue 18).
WARM_SHARE = 1 / 3


@contextlib.contextmanager
def vision_tower_timer(model):
    """Seconds spent in the model's vision tower inside the block (``timer["seconds"]``)."""
    import torch

    timer = {"seconds": 0.0, "calls": 0}
    original = model.get_image_features
    cuda = model.device.type == "cuda"

    def timed(*args, **kwargs):
        if cuda:
            torch.cuda.synchronize(model.device)
        start = time.perf_counter()
        out = original(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize(model.device)
        timer["seconds"] += time.perf_counter() - start
        timer["calls"] += 1
        return out

    model.get_image_features = timed
    try:
        yield timer
    finally:
        del model.get_image_features


def hashing_cost(paths: Sequence[str]) -> dict:
    """Reading a file and hashing its bytes, as a warm run does for each image (one thread)."""
    from ..feature_cache import content_digest
    from ..images import read_bytes

    start, total = time.perf_counter(), 0
    for path in paths:
        data = read_bytes(path)
        content_digest(data)
        total += len(data)
    elapsed = time.perf_counter() - start
    return {"hash_ms_per_image": elapsed * 1000 / len(paths), "file_bytes_mean": total / len(paths),
            "hash_gb_per_s": total / elapsed / 1e9 if elapsed > 0 else None}


def _max_diff(first: list, second: list) -> float | None:
    pairs = [(a, b) for a, b in zip(first, second) if a is not None and b is not None]
    return max((abs(a - b) for a, b in pairs), default=None)


def measure_repeat_question(reranker, paths: Sequence[str], mode: str, label: str, options: RunOptions,
                            text_tokens: int, sampler, peak_tflops) -> dict:
    """No cache, cold and warm runs of ``mode`` on ``paths``, in a fresh cache folder (removed after)."""
    second = dataclasses.replace(options, query=SECOND_QUERY)
    with tempfile.TemporaryDirectory(prefix="lychee-bench-features-") as folder:
        plain = measure_mode(reranker, paths, mode, label, second, text_tokens, sampler, peak_tflops)
        with vision_tower_timer(reranker.model) as tower:
            cold = measure_mode(reranker, paths, mode, label, dataclasses.replace(options, cache=folder),
                                text_tokens, sampler, peak_tflops)
        warm = measure_mode(reranker, paths, mode, label, dataclasses.replace(second, cache=folder),
                            text_tokens, sampler, peak_tflops)
        entries = [path.stat().st_size for path in Path(folder).glob("*/*.safetensors")]
    ceiling = measure_ceiling(reranker, paths, options, sampler)
    share = warm["elapsed_s"] / cold["elapsed_s"] if cold["elapsed_s"] > 0 else None
    diff = _max_diff(warm["scores"], plain["scores"])
    return {
        "mode": mode,
        "size": label,
        "images": len(paths),
        "no_cache": plain,
        "cold": cold,
        "warm": warm,
        "warm_over_cold": share,
        "vision_tower_s": tower["seconds"],
        "vision_tower_calls": tower["calls"],
        "cpu_side_alone_s": ceiling["elapsed_s"],
        **hashing_cost(paths),
        "entries": len(entries),
        "cache_bytes_per_image": sum(entries) / len(entries) if entries else None,
        "max_abs_score_diff_warm_vs_no_cache": diff,
        "met": bool(share is not None and share <= WARM_SHARE and warm["cache_hits"] == len(paths)
                    and diff is not None and diff <= SCORE_TOLERANCE),
    }


def describe(run: dict, out: Callable[[str], None]) -> None:
    """Print one repeat-question measurement."""
    from .report import size_label

    cold, warm, plain = run["cold"], run["warm"], run["no_cache"]
    per_entry = run["cache_bytes_per_image"]
    out(f"  repeat question {size_label(run['size'])} ({run['mode']}): no cache {plain['elapsed_s']:.2f} s, "
        f"cold {cold['elapsed_s']:.2f} s ({cold['cache_misses']} misses), warm {warm['elapsed_s']:.2f} s "
        f"({warm['cache_hits']} hits) = {run['warm_over_cold']:.3f} of cold")
    out(f"    spared per image: CPU side {run['cpu_side_alone_s'] * 1000 / run['images']:.1f} ms (preprocessing alone), "
        f"vision tower {run['vision_tower_s'] * 1000 / run['images']:.1f} ms; paid instead: reading + BLAKE3 "
        f"{run['hash_ms_per_image']:.2f} ms ({run['file_bytes_mean'] / 1e6:.1f} MB files); "
        f"{per_entry / 1e6 if per_entry else 0:.3f} MB cached per image")
    verdict = "met" if run["met"] else "NOT met"
    out(f"    check (warm <= 1/3 of cold, all hits, |Δscore| <= {SCORE_TOLERANCE:g} vs no cache): {verdict} "
        f"(max |Δscore| {run['max_abs_score_diff_warm_vs_no_cache']:.1e})")
