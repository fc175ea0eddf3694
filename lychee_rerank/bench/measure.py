"""The measurements: one engine run in a mode, the preprocessing-only ceiling, the model card's loop,
the repeated-run median, and the memory run."""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from .flops import pair_flops
from .memory import MemorySampler, peak_vram, release

# The ceiling within this factor of the achieved rate: preprocessing is what bounds the run.
PREPROCESSING_BOUND_RATIO = 1.2
# float32 scores of the engine and of the model card's loop must agree this closely.
SCORE_TOLERANCE = 2e-5
# Memory run: "flat" = no report window's peak exceeds the first window's by more than this.
FLAT_TOLERANCE_FRACTION = 0.02
FLAT_TOLERANCE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class RunOptions:
    """What every engine call of a bench run is given."""

    query: str
    token_budget: int | None
    preprocess: str
    workers: int | None
    logits_positions: int  # 1: the engine's logits_to_keep=1; 0: the --full-logits lever
    cache: str | None = None  # the vision-feature cache's folder (the repeat-question case), or none


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def describe_workload(reranker, paths: Sequence[str], options: RunOptions) -> dict:
    """What the files are (shapes, bytes), the prompt's text tokens, and what preparing one image
    costs on one thread (decode, qwen-vl-utils, processor: the engine's ``prepare_row``)."""
    from PIL import Image

    from ..images import probe_image
    from ..scoring import PairScorer

    scorer = PairScorer(reranker.model, reranker.processor, options.query, None, None,
                        reranker.min_pixels, reranker.max_pixels, options.preprocess)
    shapes: dict[str, int] = {}
    pixels, sizes = [], []
    for path in paths:
        with Image.open(path) as image:
            orientation = image.getexif().get(0x0112, 1)
            turned = f", EXIF orientation {orientation}" if orientation != 1 else ""
            key = f"{image.width}x{image.height} {image.format}{turned}"
            pixels.append(image.width * image.height)
        shapes[key] = shapes.get(key, 0) + 1
        sizes.append(os.path.getsize(path))
    planned = [scorer.plan(i, path, path, probe_image(path)) for i, path in enumerate(paths[:3])]
    timings = []
    for item in planned:
        start = time.perf_counter()
        try:
            scorer.prepare_row(item)
        except Exception:  # the measured runs report this image's error
            continue
        timings.append((time.perf_counter() - start) * 1000)
    return {
        "shapes": dict(sorted(shapes.items(), key=lambda kv: -kv[1])),
        "megapixels_mean": sum(pixels) / len(pixels) / 1e6,
        "file_bytes_mean": sum(sizes) / len(sizes),
        "text_tokens": planned[0].sequence_tokens - planned[0].visual_tokens,
        "preprocess_ms_per_image": median(timings),
    }


def _errors(ranking) -> int:
    """Images with an error, plus one for an unexpected error that stopped the run."""
    return len(ranking.errors) + (1 if ranking.error else 0)


def _flops(reranker, results, text_tokens: int, logits_positions: int) -> float:
    """FLOPs of the scored pairs, from the patch grid each image actually had."""
    patch = reranker.processor.image_processor.patch_size
    total = 0.0
    for r in results:
        grid = (1, r.model_height // patch, r.model_width // patch)
        total += pair_flops(reranker.model.config, grid, text_tokens, logits_positions).total
    return total


def measure_mode(reranker, paths: Sequence[str], mode: str, label: str, options: RunOptions, text_tokens: int,
                 sampler: MemorySampler, peak_tflops: float | None) -> dict:
    """Rank ``paths`` once in ``mode``; wall time per image from the progress events."""
    device = reranker.model.device
    release(device)
    sampler.reset()
    marks: list[tuple[float, int]] = []
    batch_sizes: list[int] = []
    budgets: list[int] = []

    def on_progress(event) -> None:
        if event.waiting:
            return
        marks.append((time.perf_counter(), len(event.new_results)))
        if event.batch_size:
            batch_sizes.append(event.batch_size)
        if event.token_budget:
            budgets.append(event.token_budget)

    cpu, start = time.process_time(), time.perf_counter()
    ranking = reranker.rank(options.query, paths, mode=mode, token_budget=options.token_budget,
                            preprocess=options.preprocess, workers=options.workers, cache=options.cache,
                            progress=on_progress)
    cpu = time.process_time() - cpu
    peak_rss, peak_nvml = sampler.window()
    per_image_ms: list[float] = []
    previous = start
    for stamp, count in marks:
        if count:
            per_image_ms += [(stamp - previous) * 1000 / count] * count
        previous = stamp
    scored = ranking.scored
    elapsed = ranking.elapsed_s
    flops = _flops(reranker, scored, text_tokens, options.logits_positions)
    achieved = flops / elapsed / 1e12 if elapsed > 0 and scored else None
    model_sizes = {(r.model_width, r.model_height) for r in scored}
    return {
        "mode": mode,
        "size": label,
        "images": len(paths),
        "scored": len(scored),
        "errors": _errors(ranking),
        "error_examples": sorted({r.error for r in ranking.errors} | ({ranking.error} if ranking.error else set()))[:3],
        "nan_scores": sum(1 for r in scored if not math.isfinite(r.score)),
        "elapsed_s": round(elapsed, 4),
        "images_per_s": len(scored) / elapsed if elapsed > 0 else 0.0,
        "cpu_s_per_image": cpu / len(scored) if scored else None,
        "ms_per_image": median(per_image_ms),
        "ms_per_image_mean": (elapsed * 1000 / len(scored)) if scored else None,
        "ms_per_image_p90": percentile(per_image_ms, 0.9),
        "ms_per_image_max": max(per_image_ms, default=None),
        "peak_vram_bytes": peak_vram(device),
        "peak_nvml_used_bytes": peak_nvml,
        "peak_rss_bytes": peak_rss,
        "visual_tokens_per_image": median([r.visual_tokens for r in scored]),
        "sequence_tokens_per_image": median([r.visual_tokens + text_tokens for r in scored]),
        "resized_to": list(next(iter(model_sizes))) if len(model_sizes) == 1 else None,  # None: mixed sizes
        "tflop_per_image": flops / len(scored) / 1e12 if scored else None,
        "achieved_tflops": achieved,
        "fraction_of_peak": (achieved / peak_tflops) if (achieved is not None and peak_tflops) else None,
        "batches": len(batch_sizes),
        "median_batch_images": median(batch_sizes),
        "max_batch_images": max(batch_sizes, default=None),
        "token_budget_start": budgets[0] if budgets else None,
        "token_budget_end": budgets[-1] if budgets else None,
        "cache_hits": ranking.cache_hits,
        "cache_misses": ranking.cache_misses,
        "scores": [r.score for r in ranking.results],  # input order; None where not scored
    }


def measure_ceiling(reranker, paths: Sequence[str], options: RunOptions, sampler: MemorySampler) -> dict:
    """Images/s of the CPU side alone (``Reranker.prepare_only``: planning, decoding, qwen-vl-utils,
    the processor, on the same worker pool), with no model."""
    release(reranker.model.device)
    sampler.reset()
    cpu, start = time.process_time(), time.perf_counter()
    prepared = reranker.prepare_only(reranker.settings(options.query, preprocess=options.preprocess, workers=options.workers), paths)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak_rss, _ = sampler.window()
    return {
        "images": len(paths),
        "prepared": prepared,
        "elapsed_s": round(elapsed, 4),
        "images_per_s": prepared / elapsed if elapsed > 0 else 0.0,
        "cpu_s_per_image": cpu / prepared if prepared else None,
        "peak_rss_bytes": peak_rss,
    }


def measure_baseline(loop, paths: Sequence[str], query: str, sampler: MemorySampler, device) -> dict:
    """The model card's single-thread loop over ``paths`` (see baseline.py)."""
    release(device)
    sampler.reset()
    run = loop.run(query, list(paths))
    peak_rss, peak_nvml = sampler.window()
    return {
        "mode": "model card",
        "images": len(paths),
        "scored": len(run.scores),
        "elapsed_s": round(run.elapsed_s, 4),
        "images_per_s": len(run.scores) / run.elapsed_s if run.elapsed_s > 0 else 0.0,
        "cpu_s_per_image": run.cpu_s / len(run.scores) if run.scores else None,
        "ms_per_image_mean": run.elapsed_s * 1000 / len(run.scores) if run.scores else None,
        "stage_ms_per_image": {stage: s * 1000 / len(run.scores) for stage, s in run.stage_s.items()},
        "peak_vram_bytes": peak_vram(device),
        "peak_nvml_used_bytes": peak_nvml,
        "peak_rss_bytes": peak_rss,
        "scores": run.scores,
    }


def median_run(runs: list[dict]) -> dict:
    """Of repeated measurements, the run with the median images/s (the lower middle one for an even
    count), with every run's images/s alongside and the highest peaks of them all."""
    ordered = sorted(runs, key=lambda r: r["images_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["repeats"] = len(runs)
    chosen["images_per_s_runs"] = [r["images_per_s"] for r in runs]
    for key in ("peak_vram_bytes", "peak_nvml_used_bytes", "peak_rss_bytes"):
        if key in chosen:
            chosen[key] = max((r[key] for r in runs if r[key] is not None), default=None)
    if "errors" in chosen:
        chosen["errors"] = max(r["errors"] for r in runs)
    return chosen


def compare(result: dict, ceiling: dict | None, baseline: dict | None, on_gpu: bool) -> None:
    """Add to an engine result the ceiling beside its rate with the verdict of which side bounds it,
    and its speedup and score difference against the model card's loop."""
    rate = result["images_per_s"]
    if ceiling is not None:
        ratio = ceiling["images_per_s"] / rate if rate > 0 else None
        result["preprocess_ceiling_images_per_s"] = ceiling["images_per_s"]
        result["ceiling_ratio"] = ratio
        if ratio is None:
            result["bound_by"] = None  # nothing scored: no verdict
        elif ratio <= PREPROCESSING_BOUND_RATIO:
            result["bound_by"] = "preprocessing (CPU)"
        else:
            result["bound_by"] = f"the model ({'GPU' if on_gpu else 'CPU'} forward)"
    if baseline is not None:
        result["speedup_vs_model_card"] = rate / baseline["images_per_s"] if baseline["images_per_s"] > 0 else None
        # Paired by repeat (measured back to back): on a shared machine these drift less than the medians.
        result["speedup_vs_model_card_runs"] = [
            e / b if b > 0 else None
            for e, b in zip(result.get("images_per_s_runs", [rate]), baseline.get("images_per_s_runs", [baseline["images_per_s"]]))
        ]
        pairs = [(a, b) for a, b in zip(result["scores"], baseline["scores"]) if a is not None]
        result["max_abs_score_diff_vs_model_card"] = max((abs(a - b) for a, b in pairs), default=None)


def memory_run(reranker, paths: Sequence[str], mode: str, label: str, options: RunOptions, report_every: int,
               sampler: MemorySampler, out: Callable[[str], None] = print) -> dict:
    """Score ``paths`` in ``mode``, printing and recording the peak memory of every ``report_every``
    images (peaks per window: each report covers the images since the previous one)."""
    import torch

    from .report import gib, size_label

    device = reranker.model.device
    cuda = device.type == "cuda"
    release(device)
    sampler.reset()
    series: list[dict] = []
    next_report = report_every
    start = time.perf_counter()
    window_start = [start, 0]

    def report(done: int) -> None:
        now = time.perf_counter()
        peak_rss, peak_nvml = sampler.window()
        row = {
            "done": done,
            "elapsed_s": round(now - start, 3),
            "images_per_s": (done - window_start[1]) / (now - window_start[0]) if now > window_start[0] else None,
            "peak_vram_bytes": int(torch.cuda.max_memory_allocated(device)) if cuda else None,
            "allocated_vram_bytes": int(torch.cuda.memory_allocated(device)) if cuda else None,
            "reserved_vram_bytes": int(torch.cuda.memory_reserved(device)) if cuda else None,
            "peak_nvml_used_bytes": peak_nvml,
            "peak_rss_bytes": peak_rss,
            "rss_bytes": sampler.current_rss(),
        }
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        window_start[:] = [now, done]
        series.append(row)
        memory = f"peak VRAM {gib(row['peak_vram_bytes'])} (allocated now {gib(row['allocated_vram_bytes'])})" if cuda else ""
        nvml = f" · NVML used {gib(peak_nvml)}" if peak_nvml is not None else ""
        out(f"  [{mode} {size_label(label)}] {done}/{len(paths)} images · {row['images_per_s'] or 0:.2f} img/s · "
            f"{memory}{' · ' if memory else ''}peak RSS {gib(peak_rss)}{nvml}")

    def on_progress(event) -> None:
        nonlocal next_report
        if event.waiting:
            return
        if event.done >= next_report or event.done == event.total:
            report(event.done)
            while next_report <= event.done:
                next_report += report_every

    ranking = reranker.rank(options.query, paths, mode=mode, token_budget=options.token_budget,
                            preprocess=options.preprocess, workers=options.workers, progress=on_progress)
    key = "peak_vram_bytes" if cuda else "peak_rss_bytes"
    peaks = [row[key] for row in series if row[key] is not None]
    # The last window may be short (fewer images): it still must not exceed the first one.
    growth = (max(peaks[1:]) - peaks[0]) if len(peaks) > 1 else 0
    tolerance = max(FLAT_TOLERANCE_FRACTION * peaks[0], FLAT_TOLERANCE_BYTES) if peaks else 0
    return {
        "mode": mode,
        "size": label,
        "images": len(paths),
        "scored": len(ranking.scored),
        "errors": _errors(ranking),
        "elapsed_s": round(ranking.elapsed_s, 3),
        "images_per_s": len(ranking.scored) / ranking.elapsed_s if ranking.elapsed_s > 0 else 0.0,
        "peak_rss_bytes": max((row["peak_rss_bytes"] for row in series), default=None),
        "memory_measure": key,
        "growth_bytes": int(growth),
        "flat": bool(growth <= tolerance),
        "series": series,
    }
