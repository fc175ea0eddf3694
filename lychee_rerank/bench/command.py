"""The ``bench`` command: load the model, write the workloads, measure, print, write JSON and plot."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

from .flops import gpu_peak_tflops
from .levers import FullLogitsModel, engine_levers, torch_threads
from .measure import (
    SCORE_TOLERANCE,
    RunOptions,
    compare,
    describe_workload,
    measure_baseline,
    measure_ceiling,
    measure_mode,
    median_run,
    memory_run,
)
from .memory import MemorySampler
from .repeat import describe as describe_repeat, measure_repeat_question
from .models import cuda_available, load_model_under_test
from .report import count, format_table, gib, load_average, machine_info, size_label, workers_label, write_plot
from .settings import (
    DEFAULT_IMAGES_CPU,
    DEFAULT_IMAGES_CUDA,
    PROG,
    BenchError,
    Settings,
    add_bench_arguments,
    settings_from_args,
)
from .workload import default_cache_dir, write_workload

JSON_SCHEMA = 2


def run_bench(args: argparse.Namespace) -> int:
    """The ``bench`` command. Returns the exit status: 0 done, 1 model or output failure, 2 bad invocation."""
    try:
        return _run(settings_from_args(args), argv=list(sys.argv[1:]))
    except BenchError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Measure the engine's speed and memory on synthetic photos.")
    add_bench_arguments(parser)
    return run_bench(parser.parse_args(argv))


def _vision_parameters(model) -> int | None:
    visual = getattr(getattr(model, "model", None), "visual", None)
    return sum(p.numel() for p in visual.parameters()) if visual is not None else None


def _run(s: Settings, argv: list[str], out: Callable[[str], None] = print) -> int:
    import torch

    from ..pipeline import available_cpus

    arch = s.arch
    if s.model is None and arch is None:
        arch = "qwen2.5-vl-7b" if cuda_available() else "tiny"
        out(f"{PROG}: no --arch or --model given: using --arch {arch}")
    under_test = load_model_under_test(arch, s.model, s.dtype, s.attention, s.quantize, s.seed, s.max_pixels)
    reranker = under_test.reranker
    model = reranker.model  # the baseline always calls the model itself, whatever the levers do
    if s.full_logits:
        reranker.model = FullLogitsModel(model)
    device = model.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    weights_vram = int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None
    info = reranker.info
    machine = machine_info(device)
    peak_tflops = gpu_peak_tflops(machine["gpu"], info.dtype) if device.type == "cuda" else None
    images = s.images or (DEFAULT_IMAGES_CUDA if device.type == "cuda" else DEFAULT_IMAGES_CPU)
    out(f"{PROG}: {info.name} ({count(info.parameters)} parameters, {info.dtype}, {info.attention}) "
        f"on {machine['accelerator']}, ready in {info.load_seconds:.1f} s")
    options = RunOptions(s.query, s.token_budget, s.preprocess, None, 0 if s.full_logits else 1)
    report: dict = {
        "schema": JSON_SCHEMA,
        "argv": argv,
        "machine": machine,
        "model": {
            "name": info.name,
            "arch": under_test.arch,
            "path": info.path,
            "parameters": info.parameters,
            "vision_parameters": _vision_parameters(model),
            "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "vram_after_load_bytes": weights_vram,
            "dtype": info.dtype,
            "attention": info.attention,
            "quantize": s.quantize,
            "device": str(device),
            "is_demo": info.is_demo,
            "load_seconds": round(info.load_seconds, 3),
        },
        "settings": {
            "images": s.memory_run or images,
            "sizes": [w.label for w in s.sizes],
            "modes": list(s.modes),
            "query": s.query,
            "min_pixels": s.min_pixels,
            "max_pixels": s.max_pixels,
            "token_budget": s.token_budget,
            "preprocess": s.preprocess,
            "workers": [available_cpus() if w is None else w for w in s.workers],  # 0: prepared inline
            "worker_torch_threads": s.worker_torch_threads,
            "processor_device": s.processor_device,
            "torch_threads": s.torch_threads,
            "logits_to_keep": options.logits_positions,
            "gc_collect": not s.no_gc,
            "baseline": s.baseline,
            "baseline_torch_threads": s.baseline_torch_threads,
            "ceiling": s.ceiling,
            "seed": s.seed,
            "repeat": s.repeat,
            "repeat_question": s.repeat_question,
        },
        "peak_tflops": peak_tflops,
        "score_tolerance": SCORE_TOLERANCE,
        "workloads": {},
        "results": [],
        "ceiling": [],
        "baseline": {},
        "speedup": {},
        "memory_run": None,
        "repeat_question": [],
    }
    baseline_loop = None
    if s.baseline and not (s.memory_run or s.repeat_question):
        from .baseline import ModelCardLoop

        baseline_loop = ModelCardLoop(model, under_test.processor_source, s.max_pixels)
    if s.memory_run:
        report["memory_run"] = {"images": s.memory_run, "report_every": s.report_every, "runs": []}
    cache = s.image_cache or default_cache_dir()
    with MemorySampler(device) as sampler, torch_threads(s.torch_threads), \
            engine_levers(gc_collect=not s.no_gc, worker_torch_threads=s.worker_torch_threads,
                          processor_device=s.processor_device):
        for workload in s.sizes:
            started = time.perf_counter()
            paths = write_workload(workload, s.memory_run or images, s.seed, cache)
            out(f"{PROG}: {len(paths)} images ({size_label(workload.label)}) ready in {time.perf_counter() - started:.1f} s, in {cache}")
            described = describe_workload(reranker, paths, options)
            report["workloads"][workload.label] = described
            reranker.rank(s.query, paths[:2], mode="batched", token_budget=s.token_budget,
                          preprocess=s.preprocess)  # warm-up, not counted
            if s.memory_run:
                for workers in s.workers:
                    for mode in s.modes:
                        with _pool(options, workers) as pooled:
                            run = memory_run(reranker, paths, mode, workload.label, pooled, s.report_every, sampler, out)
                        run["workers"] = available_cpus() if workers is None else workers
                        report["memory_run"]["runs"].append(run)
                        state = "flat" if run["flat"] else f"NOT flat (grew {gib(run['growth_bytes'])})"
                        out(f"{PROG}: {mode} {size_label(workload.label)}, {workers_label(run['workers'])}: memory {state} "
                            f"over {len(paths)} images, peak RSS {gib(run['peak_rss_bytes'])}")
                continue
            if s.repeat_question:
                for mode in s.modes:
                    run = measure_repeat_question(reranker, paths, mode, workload.label, options,
                                                  described["text_tokens"], sampler, peak_tflops)
                    describe_repeat(run, out)
                    report["repeat_question"].append(run)
                continue
            _measure_workload(reranker, model, baseline_loop, paths, workload.label, s, options, described,
                              sampler, peak_tflops, report, out)
    report["machine"]["load_average_end"] = load_average()
    if report["results"]:
        out("")
        out(format_table(report))
    for r in report["results"] + [run[k] for run in report["repeat_question"] for k in ("no_cache", "cold", "warm")]:
        r.pop("scores", None)  # compared already; not worth the JSON's size
    try:
        if s.json_path:
            Path(s.json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(s.json_path).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            out(f"{PROG}: wrote {s.json_path}")
        if s.plot_path:
            write_plot(report, s.plot_path)
            out(f"{PROG}: wrote {s.plot_path}")
    except OSError as exc:
        raise BenchError(f"cannot write the output: {exc}", code=1) from None
    runs = report["results"] + (report["memory_run"] or {}).get("runs", [])
    runs += [run[k] for run in report["repeat_question"] for k in ("no_cache", "cold", "warm")]
    return 1 if any(r.get("errors") for r in runs) else 0


@contextlib.contextmanager
def _pool(options: RunOptions, workers: int | None):
    """Options for runs with this many preprocessing threads; 0 swaps in the inline feeder."""
    with engine_levers(overlap=False) if workers == 0 else contextlib.nullcontext():
        yield dataclasses.replace(options, workers=workers or None)


def _measure_workload(reranker, model, baseline_loop, paths, label, s: Settings, options: RunOptions, described: dict,
                      sampler, peak_tflops, report: dict, out) -> None:
    """Every measurement of one workload, ``--repeat`` times interleaved (drift on the machine hits
    all alike), each kept as its median run. With several ``--workers`` values each mode is measured
    with each, and every value gets its own ceiling."""
    from ..pipeline import available_cpus

    if baseline_loop is not None:
        baseline_loop.run(s.query, paths[:1])  # warm-up, not counted
    threads = f", torch threads {s.baseline_torch_threads}" if s.baseline_torch_threads else ""
    several = len(s.workers) > 1
    baseline_runs: list[dict] = []
    ceiling_runs: dict[int | None, list[dict]] = {w: [] for w in s.workers}
    repeats: dict[tuple[str, int | None], list[dict]] = {(m, w): [] for w in s.workers for m in s.modes}
    for attempt in range(s.repeat):
        run = f" (run {attempt + 1}/{s.repeat})" if s.repeat > 1 else ""
        if baseline_loop is not None:
            with torch_threads(s.baseline_torch_threads):
                baseline_runs.append(measure_baseline(baseline_loop, paths, s.query, sampler, model.device))
            out(f"  model card {size_label(label)}{run}: {len(paths)} images in {baseline_runs[-1]['elapsed_s']:.2f} s "
                f"= {baseline_runs[-1]['images_per_s']:.2f} images/s (one Python thread, one image at a time{threads})")
        for workers in s.workers:
            pool_size = available_cpus() if workers is None else workers
            pool = f", {workers_label(pool_size)}"
            with _pool(options, workers) as pooled:
                if s.ceiling:
                    ceiling = measure_ceiling(reranker, paths, pooled, sampler)
                    ceiling_runs[workers].append(ceiling)
                    out(f"  preprocessing alone {size_label(label)}{pool}{run}: {ceiling['prepared']}/{len(paths)} images "
                        f"in {ceiling['elapsed_s']:.2f} s = {ceiling['images_per_s']:.2f} images/s")
                for mode in s.modes:
                    result = measure_mode(reranker, paths, mode, label, pooled, described["text_tokens"], sampler, peak_tflops)
                    result["workers"] = pool_size
                    result["variant"] = f"{mode}, {workers_label(pool_size)}" if several else mode
                    repeats[(mode, workers)].append(result)
                    out(f"  {mode:<10} {size_label(label)}{pool}{run}: {result['scored']}/{len(paths)} images in "
                        f"{result['elapsed_s']:.2f} s = {result['images_per_s']:.2f} images/s")
                    if result["nan_scores"]:
                        out(f"  warning: {result['nan_scores']} scores are not finite (random weights overflowed?)")
                    if result["errors"]:
                        out(f"  warning: {result['errors']} images failed: {'; '.join(result['error_examples'])}")
    baseline = median_run(baseline_runs) if baseline_runs else None
    if baseline is not None:
        report["baseline"][label] = {k: v for k, v in baseline.items() if k != "scores"}
        report["results"].append({"size": label, "variant": "model card", **report["baseline"][label]})
    for workers in s.workers:
        pool_size = available_cpus() if workers is None else workers
        ceiling = median_run(ceiling_runs[workers]) if ceiling_runs[workers] else None
        if ceiling is not None:
            report["ceiling"].append({"size": label, "workers": pool_size, **ceiling})
        engine = {}
        for mode in s.modes:
            engine[mode] = median_run(repeats[(mode, workers)])
            compare(engine[mode], ceiling, baseline, on_gpu=model.device.type == "cuda")
            engine[mode]["preprocess_ms_per_image"] = described["preprocess_ms_per_image"]
            report["results"].append(engine[mode])
        if "sequential" in engine and "batched" in engine and engine["sequential"]["images_per_s"] > 0:
            key = f"{label}, {workers_label(pool_size)}" if several else label
            report["speedup"][key] = engine["batched"]["images_per_s"] / engine["sequential"]["images_per_s"]
