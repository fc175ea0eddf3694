"""The bench's options: the argparse definitions, and their validation into ``Settings``.

Imports nothing heavy: the CLI builds its parser from here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..archs import ARCHS
from ..loading import ATTENTIONS, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DTYPES
from ..preprocess import PREPROCESS_MODES
from .workload import Workload, parse_workload

PROG = "lychee-rerank bench"
BENCH_MODES = ("sequential", "batched")
QUANTIZE_CHOICES = ("none", "8bit", "4bit")
DEFAULT_QUERY = "sunset over the sea"
DEFAULT_SIZES = "448,1024"
DEFAULT_IMAGES_CUDA = 256  # enough for several full batches of the 7B at 1024 px
DEFAULT_IMAGES_CPU = 24


class BenchError(Exception):
    """A failure the user can fix; one sentence. ``code`` is the exit status (2 bad invocation, 1 other)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's options, on ``parser`` (the CLI's ``bench`` sub-command)."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--arch",
        choices=ARCHS,
        help="build this architecture with random weights on the device "
        "(default: qwen2.5-vl-7b on a GPU, tiny on CPU); the full-size ones need a CUDA GPU",
    )
    which.add_argument("--model", help="load a real checkpoint instead: 'demo', a local directory or a hub id")
    parser.add_argument("--images", type=int, metavar="N", help=f"images per size (default: {DEFAULT_IMAGES_CUDA} on a GPU, {DEFAULT_IMAGES_CPU} on CPU)")
    parser.add_argument(
        "--size", default=DEFAULT_SIZES, metavar="SIZE[,SIZE...]",
        help=f"workloads: a square side (448), WIDTHxHEIGHT JPEG photos (4032x3024: a phone's) or 'mixed' "
        f"(phone photos in both orientations, PNG screenshots, an A4 scan, product shots, a panorama) (default: {DEFAULT_SIZES})",
    )
    parser.add_argument("--modes", default=",".join(BENCH_MODES), metavar="MODE[,MODE]", help="sequential, batched or both (default: both)")
    parser.add_argument("--workers", metavar="N[,N...]", help="preprocessing threads (default: every CPU this process may use); 0 = rows prepared inline, as --no-overlap; several (1,2) are measured interleaved")
    parser.add_argument("--preprocess", choices=PREPROCESS_MODES, default="exact", help="exact (the model card's path, default) or fast (JPEG draft decoding)")
    parser.add_argument("--baseline", action="store_true", help="also time a plain single-thread loop of the model card's code on the same files, and compare scores")
    parser.add_argument("--baseline-torch-threads", type=int, metavar="N", help="the model card's loop with torch.set_num_threads(N) (default: torch's own choice, as a user gets)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the preprocessing-only ceiling (images/s the CPU side delivers with no model)")
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--plot", metavar="PATH.png", help="draw images/s and peak memory per mode and size")
    parser.add_argument("--image-cache", metavar="DIR", help="where generated images are kept for later runs (default: lychee-bench-images in the temp folder)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bf16 on GPUs that have it, float32 on CPU")
    parser.add_argument("--attention", choices=ATTENTIONS, default="auto", help="auto: flash_attention_2 when installed, else sdpa")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none", help="with --model: load the weights quantised (passed to Reranker.load)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N", help=f"pixels per image after resizing (default: {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--token-budget", type=int, metavar="TOKENS", help="batched mode's starting token budget (default: from free memory)")
    parser.add_argument("--full-logits", action="store_true", help="lever: compute logits at every position (as if logits_to_keep were off)")
    parser.add_argument("--no-overlap", action="store_true", help="lever: prepare each row inline, just before its forward (no worker threads, no look-ahead)")
    parser.add_argument("--no-gc", action="store_true", help="lever: skip the gc.collect() the engine runs after each sequential image (empty_cache still runs)")
    parser.add_argument("--torch-threads", type=int, metavar="N", help="lever: torch.set_num_threads(N) for the whole run (default: torch's own choice)")
    parser.add_argument("--worker-torch-threads", type=int, metavar="N", help="lever: torch intra-op threads inside each preprocessing worker (the forward keeps its own)")
    parser.add_argument("--processor-device", metavar="DEVICE", help="lever: run the image processor's resize and normalisation on this device (e.g. cuda); decoding stays on the CPU")
    parser.add_argument("--memory-run", type=int, metavar="N", help="instead: score N images per mode and size, reporting peak memory as it goes")
    parser.add_argument("--repeat-question", action="store_true",
                        help="instead: ask about the same images twice with the vision-feature cache (cold, then warm "
                        "with another query) and once without it; report what the cache spares and check the scores")
    parser.add_argument("--report-every", type=int, default=100, metavar="N", help="memory run: report every N images (default: 100)")
    parser.add_argument("--repeat", type=int, default=1, metavar="K", help="measure each mode and size K times, interleaved, and keep the median run (default: 1)")
    parser.add_argument("--query", default=DEFAULT_QUERY, help=f"the query text (default: {DEFAULT_QUERY!r})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and of the random weights (default: 0)")


@dataclass(frozen=True)
class Settings:
    arch: str | None
    model: str | None
    images: int | None
    sizes: tuple[Workload, ...]
    modes: tuple[str, ...]
    workers: tuple[int | None, ...]  # None: the engine's default (every CPU the process may use); 0: inline
    preprocess: str
    baseline: bool
    baseline_torch_threads: int | None
    ceiling: bool
    json_path: str | None
    plot_path: str | None
    image_cache: Path | None
    dtype: str
    attention: str
    quantize: str
    max_pixels: int
    min_pixels: int
    token_budget: int | None
    full_logits: bool
    no_gc: bool
    torch_threads: int | None
    worker_torch_threads: int | None
    processor_device: str | None
    memory_run: int | None
    repeat_question: bool
    report_every: int
    repeat: int
    query: str
    seed: int


def parse_sizes(text: str) -> tuple[Workload, ...]:
    workloads: list[Workload] = []
    for part in (text or "").split(","):
        try:
            workload = parse_workload(part)
        except ValueError as exc:
            raise BenchError(str(exc)) from None
        if workload not in workloads:
            workloads.append(workload)
    return tuple(workloads)


def parse_workers(text: str | None) -> tuple[int | None, ...]:
    if text is None:
        return (None,)
    counts: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise BenchError(f"--workers takes 0 (inline) or positive numbers of threads separated by commas, like 1,2 (got {text!r})")
        if int(part) not in counts:
            counts.append(int(part))
    return tuple(counts)


def parse_modes(text: str) -> tuple[str, ...]:
    modes = []
    for part in (text or "").split(","):
        part = part.strip()
        if part not in BENCH_MODES:
            raise BenchError(f"--modes takes sequential, batched or both separated by a comma (got {text!r})")
        if part not in modes:
            modes.append(part)
    return tuple(modes)


def parse_device(text: str | None) -> str | None:
    if text is None:
        return None
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise BenchError(f"--processor-device takes a torch device such as cuda or cuda:1 (got {text!r})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--processor-device {text}: no CUDA GPU is available here")
    return str(device)


def settings_from_args(args: argparse.Namespace) -> Settings:
    def positive(name: str, value: int | None) -> None:
        if value is not None and value <= 0:
            raise BenchError(f"--{name} must be a positive number (got {value})")

    for name in ("images", "max_pixels", "token_budget", "memory_run", "report_every", "repeat", "torch_threads", "worker_torch_threads", "baseline_torch_threads"):
        positive(name.replace("_", "-"), getattr(args, name))
    if args.max_pixels < DEFAULT_MIN_PIXELS:
        raise BenchError(f"--max-pixels must be at least {DEFAULT_MIN_PIXELS} (the minimum image size the model takes)")
    if not (args.query or "").strip():
        raise BenchError("--query must not be empty")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise BenchError(f"--plot writes a PNG: give a path ending in .png (got {args.plot!r})")
    if args.memory_run and args.repeat_question:
        raise BenchError("--memory-run and --repeat-question are two different runs: choose one")
    if args.quantize != "none" and not args.model:
        raise BenchError("--quantize applies to a checkpoint: use it with --model")
    return Settings(
        arch=args.arch,
        model=args.model,
        images=args.images,
        sizes=parse_sizes(args.size),
        modes=parse_modes(args.modes),
        workers=(0,) if args.no_overlap else parse_workers(args.workers),
        preprocess=args.preprocess,
        baseline=args.baseline or args.baseline_torch_threads is not None,
        baseline_torch_threads=args.baseline_torch_threads,
        ceiling=not args.no_ceiling,
        json_path=args.json,
        plot_path=args.plot,
        image_cache=Path(args.image_cache).expanduser() if args.image_cache else None,
        dtype=args.dtype,
        attention=args.attention,
        quantize=args.quantize,
        max_pixels=args.max_pixels,
        min_pixels=DEFAULT_MIN_PIXELS,
        token_budget=args.token_budget,
        full_logits=args.full_logits,
        no_gc=args.no_gc,
        torch_threads=args.torch_threads,
        worker_torch_threads=args.worker_torch_threads,
        processor_device=parse_device(args.processor_device),
        memory_run=args.memory_run,
        repeat_question=args.repeat_question,
        report_every=args.report_every,
        repeat=args.repeat,
        query=args.query.strip(),
        seed=args.seed,
    )
