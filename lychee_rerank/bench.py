"""``python -m lychee_rerank bench``: sequential vs batched throughput and memory, measured.

Two kinds of model:

- ``--arch tiny|qwen2.5-vl-3b|qwen2.5-vl-7b``: the architecture built with random weights directly on
  the device (the full-size ones only on a GPU, in bf16: no download, no 16 GB detour through CPU
  memory). The weights' values do not matter for speed: per token the compute is the real model's.
- ``--model demo|PATH|ID``: a checkpoint loaded exactly as the app loads it (``Reranker.load``).

Images are synthetic and deterministic (seeded by index), written as JPEG files to a temporary
folder and passed as paths: decoding is part of the measured work, as it is for users. Both modes
run on the same images in the same process, after a warm-up that is not counted.

``--memory-run N`` instead scores N images and reports the peak memory of every ``--report-every``
images: it must stay flat whatever N is.

This module imports nothing heavy at import time: the CLI builds its parser from it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .archs import ARCHS
from .gpu import device_used_bytes
from .loading import ATTENTIONS, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DTYPES

PROG = "lychee-rerank bench"
BENCH_MODES = ("sequential", "batched")
DEFAULT_QUERY = "sunset over the sea"
DEFAULT_SIZES = "448,1024"
DEFAULT_IMAGES_CUDA = 256  # enough for several full batches of the 7B at 1024 px
DEFAULT_IMAGES_CPU = 24
MIN_SIZE, MAX_SIZE = 28, 8192
SAMPLE_INTERVAL_S = 0.05
# Memory run: "flat" = no report window's peak exceeds the first window's by more than this.
FLAT_TOLERANCE_FRACTION = 0.02
FLAT_TOLERANCE_BYTES = 64 * 2**20
JSON_SCHEMA = 1

# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, by a substring of the device name
# (upper-cased); the first match wins, so the more specific names come first.
GPU_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIE", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM5, named "NVIDIA H100 80GB HBM3"
    ("H200", 989.0),  # also GH200
    ("A100", 312.0),
    ("L40S", 362.0),
    ("RTX 4090", 165.0),  # with fp32 accumulate
)


class BenchError(Exception):
    """A failure the user can fix; one sentence. ``code`` is the exit status (2 bad invocation, 1 other)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


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
    parser.add_argument("--size", default=DEFAULT_SIZES, metavar="PIXELS[,PIXELS...]", help=f"square image side(s) in pixels (default: {DEFAULT_SIZES})")
    parser.add_argument("--modes", default=",".join(BENCH_MODES), metavar="MODE[,MODE]", help="sequential, batched or both (default: both)")
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--plot", metavar="PATH.png", help="draw images/s and peak memory per mode and size")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bf16 on GPUs that have it, float32 on CPU")
    parser.add_argument("--attention", choices=ATTENTIONS, default="auto", help="auto: flash_attention_2 when installed, else sdpa")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N", help=f"pixels per image after resizing (default: {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--token-budget", type=int, metavar="TOKENS", help="batched mode's starting token budget (default: from free memory)")
    parser.add_argument("--full-logits", action="store_true", help="lever: compute logits at every position (as if logits_to_keep were off)")
    parser.add_argument("--no-overlap", action="store_true", help="lever: preprocess each batch before its forward instead of during the previous one")
    parser.add_argument("--no-gc", action="store_true", help="lever: skip the gc.collect() the engine runs after each sequential image (empty_cache still runs)")
    parser.add_argument("--memory-run", type=int, metavar="N", help="instead: score N images per mode and size, reporting peak memory as it goes")
    parser.add_argument("--report-every", type=int, default=100, metavar="N", help="memory run: report every N images (default: 100)")
    parser.add_argument("--repeat", type=int, default=1, metavar="K", help="measure each mode and size K times, interleaved, and keep the median run (default: 1)")
    parser.add_argument("--query", default=DEFAULT_QUERY, help=f"the query text (default: {DEFAULT_QUERY!r})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and of the random weights (default: 0)")


@dataclass(frozen=True)
class Settings:
    arch: str | None
    model: str | None
    images: int | None
    sizes: tuple[int, ...]
    modes: tuple[str, ...]
    json_path: str | None
    plot_path: str | None
    dtype: str
    attention: str
    max_pixels: int
    min_pixels: int
    token_budget: int | None
    full_logits: bool
    no_overlap: bool
    no_gc: bool
    memory_run: int | None
    report_every: int
    repeat: int
    query: str
    seed: int


def parse_sizes(text: str) -> tuple[int, ...]:
    sizes = []
    for part in (text or "").split(","):
        part = part.strip().lower().removesuffix("px")
        try:
            value = int(part)
        except ValueError:
            raise BenchError(f"--size takes whole numbers of pixels separated by commas, like 448,1024 (got {text!r})") from None
        if not MIN_SIZE <= value <= MAX_SIZE:
            raise BenchError(f"--size {value} is out of range: image sides go from {MIN_SIZE} to {MAX_SIZE} pixels")
        if value not in sizes:
            sizes.append(value)
    return tuple(sizes)


def parse_modes(text: str) -> tuple[str, ...]:
    modes = []
    for part in (text or "").split(","):
        part = part.strip()
        if part not in BENCH_MODES:
            raise BenchError(f"--modes takes sequential, batched or both separated by a comma (got {text!r})")
        if part not in modes:
            modes.append(part)
    return tuple(modes)


def settings_from_args(args: argparse.Namespace) -> Settings:
    def positive(name: str, value: int | None) -> None:
        if value is not None and value <= 0:
            raise BenchError(f"--{name} must be a positive number (got {value})")

    positive("images", args.images)
    positive("max-pixels", args.max_pixels)
    positive("token-budget", args.token_budget)
    positive("memory-run", args.memory_run)
    positive("report-every", args.report_every)
    positive("repeat", args.repeat)
    if args.max_pixels < DEFAULT_MIN_PIXELS:
        raise BenchError(f"--max-pixels must be at least {DEFAULT_MIN_PIXELS} (the minimum image size the model takes)")
    if not (args.query or "").strip():
        raise BenchError("--query must not be empty")
    for path, suffix in ((args.plot, ".png"),):
        if path and not path.lower().endswith(suffix):
            raise BenchError(f"--plot writes a PNG: give a path ending in .png (got {path!r})")
    return Settings(
        arch=args.arch,
        model=args.model,
        images=args.images,
        sizes=parse_sizes(args.size),
        modes=parse_modes(args.modes),
        json_path=args.json,
        plot_path=args.plot,
        dtype=args.dtype,
        attention=args.attention,
        max_pixels=args.max_pixels,
        min_pixels=DEFAULT_MIN_PIXELS,
        token_budget=args.token_budget,
        full_logits=args.full_logits,
        no_overlap=args.no_overlap,
        no_gc=args.no_gc,
        memory_run=args.memory_run,
        report_every=args.report_every,
        repeat=args.repeat,
        query=args.query.strip(),
        seed=args.seed,
    )


# ---------------------------------------------------------------------------------------------
# Synthetic images
# ---------------------------------------------------------------------------------------------


def synthetic_image(index: int, size: int, seed: int = 0):
    """A deterministic photo-like square image: smooth gradients and waves, a few soft-edged shapes,
    sensor-like noise. The same (seed, index) gives the same picture at every size."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng([seed, index])
    base = min(size, 256)  # the smooth part is computed small and scaled up (cheap, and smooth anyway)
    y, x = np.mgrid[0:base, 0:base].astype(np.float32) / base
    corners = rng.uniform(0, 255, (4, 3)).astype(np.float32)
    field = (
        ((1 - x) * (1 - y))[..., None] * corners[0]
        + (x * (1 - y))[..., None] * corners[1]
        + ((1 - x) * y)[..., None] * corners[2]
        + (x * y)[..., None] * corners[3]
    )
    for _ in range(2):
        fx, fy = rng.uniform(-3, 3, 2)
        phase = rng.uniform(0, 2 * math.pi)
        amplitude = rng.uniform(10, 35, 3).astype(np.float32)
        field += np.sin(2 * math.pi * (fx * x + fy * y) + phase)[..., None] * amplitude
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB")
    if base != size:
        image = image.resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0.05, 0.95, 2) * size
        rx, ry = rng.uniform(0.04, 0.25, 2) * size
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(3, 7))))
            draw.polygon([(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(0.5, size / 600)))
    noise = rng.normal(0.0, 6.0, (size, size, 3)).astype(np.float32)
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def write_images(folder: Path, count: int, size: int, seed: int, start: int = 0) -> list[str]:
    """JPEG files (quality 90) of images ``start .. start+count-1``; generated in parallel threads."""
    folder.mkdir(parents=True, exist_ok=True)

    def one(index: int) -> str:
        path = folder / f"img-{size}-{index:05d}.jpg"
        if not path.exists():
            synthetic_image(index, size, seed).save(path, format="JPEG", quality=90)
        return str(path)

    workers = max(1, min(16, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bench-images") as pool:
        return list(pool.map(one, range(start, start + count)))


# ---------------------------------------------------------------------------------------------
# FLOP count
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one (query, image) pair's forward, by part."""

    vision_linear: float
    vision_attention: float
    merger: float
    language_linear: float
    language_attention: float
    lm_head: float
    patches: int
    visual_tokens: int
    sequence_tokens: int

    @property
    def vision(self) -> float:
        return self.vision_linear + self.vision_attention + self.merger

    @property
    def language(self) -> float:
        return self.language_linear + self.language_attention + self.lm_head

    @property
    def total(self) -> float:
        return self.vision + self.language


def _window_sizes(length: int, window: int) -> list[int]:
    """How a grid side of ``length`` merged units is cut into windows of ``window`` (the last one short)."""
    full, rest = divmod(length, window)
    return [window] * full + ([rest] if rest else [])


def pair_flops(config, grid_thw: tuple[int, int, int], text_tokens: int, logits_positions: int = 1) -> FlopCount:
    """FLOPs of one forward over one (query, image) pair: a multiply-add counts 2; norms, activations,
    rotary embeddings and softmax are left out (well under 1 %).

    The image is resized by the processor to H×W (multiples of patch·merge = 14·2 = 28), giving
    ``grid_thw`` = (t, h, w) = (1, H/14, W/14): P = t·h·w patches, V = P/m² visual tokens (m = 2, the
    spatial merge), and S = V + T tokens in the language model, T the text tokens of the prompt.

    Vision tower: d_v hidden, i_v MLP width, L_v blocks of which F use full attention (the others
    attend within windows of ``window_size`` pixels = 8×8 patches), patch p = 14, temporal patch 2::

        linear    = 2·P·[ 3·2·p²·d_v  +  L_v·(4·d_v² + 3·d_v·i_v) ]        patch embedding; qkv+proj, gated MLP
        merger    = 2·V·[ (m²·d_v)² + m²·d_v·d ]                           MLP on each 2×2 group of patches
        attention = 4·d_v·[ F·P²  +  (L_v − F)·Σ_windows n_w² ]           QKᵀ and AV, no mask

    Language model: d hidden, i MLP width, L layers, H query heads and K key/value heads of size h::

        linear    = 2·S·L·[ 2·d·H·h + 2·d·K·h + 3·d·i ]                    q, o; k, v; gated MLP
        attention = 2·L·H·h·S²                                              4·L·H·h·S², halved: causal mask
        lm_head   = 2·d·vocab·positions                                     logits_to_keep=1: 1 position

    The vision linear part is 2·params_vision·P and the language linear part 2·params_lm·S (embeddings
    do no arithmetic). For Qwen2.5-VL-7B one 1024×1024 image (resized to 980×980: P = 4,900 patches,
    V = 1,225 visual tokens) with an 86-token prompt (S = 1,311) costs 24.3 TFLOP (vision 6.8,
    language 17.5); 448×448 (P = 1,024, V = 256, S = 342) costs 5.8 TFLOP. Batched mode pads rows to
    the longest in its batch; padding is not counted (the bench's images of one size do not pad).
    """
    vision = config.vision_config
    text = getattr(config, "text_config", config)
    t, h, w = (int(v) for v in grid_thw)
    merge = vision.spatial_merge_size
    patches = t * h * w
    visual = patches // merge**2
    seq = visual + int(text_tokens)

    d_v, i_v, depth = vision.hidden_size, vision.intermediate_size, vision.depth
    full_blocks = len([i for i in (vision.fullatt_block_indexes or []) if 0 <= i < depth])
    patch_in = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    vision_linear = 2 * patches * (patch_in * d_v + depth * (4 * d_v * d_v + 3 * d_v * i_v))
    window = vision.window_size // merge // vision.patch_size  # in merged units
    rows, cols = _window_sizes(h // merge, window), _window_sizes(w // merge, window)
    # each window holds m²·r·c patches; Σ over windows of its square factorises over rows and columns
    window_sq = t * merge**4 * sum(r * r for r in rows) * sum(c * c for c in cols)
    full_sq = t * (h * w) ** 2  # full attention: within each frame
    vision_attention = 4 * d_v * (full_blocks * full_sq + (depth - full_blocks) * window_sq)
    merged_in = merge**2 * d_v
    merger = 2 * visual * (merged_in * merged_in + merged_in * vision.out_hidden_size)

    d, layers = text.hidden_size, text.num_hidden_layers
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or d // heads
    per_layer = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim + 3 * d * text.intermediate_size
    language_linear = 2 * seq * layers * per_layer
    language_attention = 2 * layers * heads * head_dim * seq * seq
    lm_head = 2 * d * text.vocab_size * (seq if logits_positions <= 0 else logits_positions)
    return FlopCount(
        vision_linear=float(vision_linear),
        vision_attention=float(vision_attention),
        merger=float(merger),
        language_linear=float(language_linear),
        language_attention=float(language_attention),
        lm_head=float(lm_head),
        patches=patches,
        visual_tokens=visual,
        sequence_tokens=seq,
    )


def resized_grid(size: tuple[int, int], processor, min_pixels: int, max_pixels: int) -> tuple[int, int, int]:
    """(t, h, w) patch grid the processor makes of a width×height image (Qwen's smart_resize rule)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    image_processor = processor.image_processor
    patch = image_processor.patch_size
    width, height = size
    new_h, new_w = smart_resize(height, width, factor=patch * image_processor.merge_size, min_pixels=min_pixels, max_pixels=max_pixels)
    return (1, new_h // patch, new_w // patch)


def gpu_peak_tflops(device_name: str | None, dtype: str) -> float | None:
    """The GPU's dense bf16/fp16 tensor peak in TFLOP/s, or None (unknown GPU, CPU, or float32)."""
    if not device_name or dtype not in ("bfloat16", "float16"):
        return None
    name = device_name.upper()
    for key, peak in GPU_PEAK_TFLOPS:
        if key in name:
            return peak
    return None


# ---------------------------------------------------------------------------------------------
# Memory sampling
# ---------------------------------------------------------------------------------------------


class MemorySampler:
    """Samples this process's RSS (and the GPU's NVML "used" memory) every ~50 ms in a thread.
    ``window()`` returns the peaks since the previous call (or ``reset()``), and starts a new window."""

    def __init__(self, device=None, interval: float = SAMPLE_INTERVAL_S):
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._device = device
        self._has_nvml = device_used_bytes(device) is not None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rss = 0
        self._nvml_used: int | None = None
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)

    @property
    def has_nvml(self) -> bool:
        return self._has_nvml

    def _sample(self) -> tuple[int, int | None]:
        rss = self._process.memory_info().rss
        return rss, device_used_bytes(self._device) if self._has_nvml else None

    def _record(self) -> None:
        rss, used = self._sample()
        with self._lock:
            self._rss = max(self._rss, rss)
            if used is not None:
                self._nvml_used = max(self._nvml_used or 0, used)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._record()

    def __enter__(self) -> "MemorySampler":
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def reset(self) -> None:
        with self._lock:
            self._rss, self._nvml_used = 0, None
        self._record()

    def window(self) -> tuple[int, int | None]:
        """(peak RSS, peak NVML used or None) since the last window; starts the next one."""
        self._record()
        with self._lock:
            peaks = (self._rss, self._nvml_used)
            self._rss, self._nvml_used = 0, None
        self._record()
        return peaks


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class _FullLogitsModel:
    """Lever: the model with ``logits_to_keep`` forced to 0 (logits at every position), as if the
    engine did not ask for the last position only. Everything else is the wrapped model's."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        kwargs["logits_to_keep"] = 0
        return self._model(*args, **kwargs)


class _InlineExecutor:
    """Lever: a ThreadPoolExecutor stand-in that runs each task at submit time (no overlap)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # delivered at result(), as the real executor does
            future.set_exception(exc)
        return future


def _empty_cache_only() -> int:
    """Lever: free_cached_memory without its gc.collect() (torch.cuda.empty_cache still runs)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return 0


@contextlib.contextmanager
def engine_levers(overlap: bool = True, gc_collect: bool = True):
    """Switch off, for the bench only, two things the engine always does, by swapping the names the
    execution module calls: the worker thread that preprocesses the next batch during the current
    forward (``overlap``), and the gc.collect() after each sequential image and on out-of-memory
    (``gc_collect``). Restored on exit."""
    from . import execution

    swaps = []
    if not overlap:
        swaps.append(("ThreadPoolExecutor", _InlineExecutor, "--no-overlap"))
    if not gc_collect:
        swaps.append(("free_cached_memory", _empty_cache_only, "--no-gc"))
    originals = {}
    try:
        for name, replacement, option in swaps:
            if not hasattr(execution, name):
                raise BenchError(f"{option} does not work with this version of the engine", code=1)
            originals[name] = getattr(execution, name)
            setattr(execution, name, replacement)
        yield
    finally:
        for name, original in originals.items():
            setattr(execution, name, original)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def build_random(arch: str, dtype: str, attention: str, seed: int, max_pixels: int):
    """A Reranker over ``arch`` with random weights, built directly on the device in ``dtype``."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from .archs import arch_config
    from .demo_model import ensure_demo_model
    from .loading import ModelInfo, ModelLoadError, resolve_attention, resolve_dtype
    from .reranker import Reranker

    cuda = torch.cuda.is_available()
    if arch != "tiny" and not cuda:
        raise BenchError(f"--arch {arch} needs a CUDA GPU and none is usable here; use --arch tiny or --model demo on CPU")
    try:
        torch_dtype = resolve_dtype(dtype)
        attn = resolve_attention(attention, torch_dtype)
    except ModelLoadError as exc:
        raise BenchError(str(exc)) from None
    start = time.perf_counter()
    processor = AutoProcessor.from_pretrained(ensure_demo_model(), padding_side="left")
    processor.tokenizer.padding_side = "left"
    config = arch_config(arch, processor.tokenizer)
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    torch.manual_seed(seed)
    try:
        # Parameters are created on the device, in the dtype, and initialised there by _init_weights
        # (normal(0, initializer_range=0.02), norms at 1): no CPU copy of the 16 GB of weights.
        with device:
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch_dtype, attn_implementation=attn)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "out of memory" in text.lower():
            raise BenchError(f"not enough memory on {device} to build {arch} in {torch_dtype}: {text}", code=1) from None
        if "flash" in text.lower():
            raise BenchError(f"FlashAttention-2 is not usable here ({text.rstrip('.')}); install flash-attn or use --attention sdpa", code=1) from None
        raise BenchError(f"cannot build {arch} with attention {attn!r}: {text}", code=1) from None
    model.eval()
    if cuda:
        torch.cuda.synchronize(device)
    info = ModelInfo(
        name=f"random {arch}",
        path=f"random:{arch}",
        device=str(model.device),
        dtype=str(torch_dtype).removeprefix("torch."),
        attention=attn,
        parameters=sum(p.numel() for p in model.parameters()),
        load_seconds=time.perf_counter() - start,
        is_demo=True,
    )
    return Reranker(model, processor, info, min_pixels=DEFAULT_MIN_PIXELS, max_pixels=max_pixels)


def load_checkpoint(name: str, dtype: str, attention: str, max_pixels: int):
    from .loading import ModelLoadError
    from .reranker import Reranker

    try:
        return Reranker.load(name, dtype=dtype, attention=attention, max_pixels=max_pixels)
    except ModelLoadError as exc:
        raise BenchError(str(exc), code=1) from None


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def _release(device) -> None:
    """Between measurements: drop garbage and cached blocks, restart the peak counter."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_vram(device) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


@dataclass
class SizeInfo:
    """What one image of a size costs: tokens, patch grid and FLOPs (the same for every image)."""

    size: int
    resized: tuple[int, int]
    visual_tokens: int
    sequence_tokens: int
    text_tokens: int
    flops: FlopCount
    preprocess_ms: float | None


def describe_size(reranker, query: str, paths: Sequence[str], size: int, logits_positions: int) -> SizeInfo:
    """Tokens and FLOPs of one image of this size, checked against the engine's own plan, and the
    CPU time the engine's preprocessing (decode + processor) takes per image."""
    from .images import probe_image
    from .scoring import PairScorer

    scorer = PairScorer(reranker.model, reranker.processor, query, None, None, reranker.min_pixels, reranker.max_pixels)
    planned = scorer.plan(0, "probe", paths[0], probe_image(paths[0]))
    grid = resized_grid((size, size), reranker.processor, reranker.min_pixels, reranker.max_pixels)
    text_tokens = planned.sequence_tokens - planned.visual_tokens
    flops = pair_flops(reranker.model.config, grid, text_tokens, logits_positions=logits_positions)
    if flops.visual_tokens != planned.visual_tokens:
        raise RuntimeError(f"FLOP grid {grid} gives {flops.visual_tokens} visual tokens, the engine plans {planned.visual_tokens}")
    timings = []
    for path in paths[: min(3, len(paths))]:
        item = scorer.plan(0, "probe", path, probe_image(path))
        start = time.perf_counter()
        scorer.prepare([item]).release()
        timings.append((time.perf_counter() - start) * 1000)
    patch = reranker.processor.image_processor.patch_size
    return SizeInfo(
        size=size,
        resized=(grid[2] * patch, grid[1] * patch),
        visual_tokens=planned.visual_tokens,
        sequence_tokens=planned.sequence_tokens,
        text_tokens=text_tokens,
        flops=flops,
        preprocess_ms=_median(timings),
    )


def measure_mode(reranker, query: str, paths: Sequence[str], mode: str, info: SizeInfo, sampler: MemorySampler,
                 token_budget: int | None, peak_tflops: float | None) -> dict:
    """Rank ``paths`` once in ``mode``; wall time per image from the progress events."""
    device = reranker.model.device
    _release(device)
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

    start = time.perf_counter()
    ranking = reranker.rank(query, paths, mode=mode, token_budget=token_budget, progress=on_progress)
    peak_rss, peak_nvml = sampler.window()
    peak_vram = _peak_vram(device)
    per_image_ms: list[float] = []
    previous = start
    for stamp, count in marks:
        if count:
            per_image_ms += [(stamp - previous) * 1000 / count] * count
        previous = stamp
    scored = ranking.scored
    elapsed = ranking.elapsed_s
    rate = len(scored) / elapsed if elapsed > 0 else 0.0
    achieved = info.flops.total * len(scored) / elapsed / 1e12 if elapsed > 0 else None
    nan_scores = sum(1 for r in scored if not math.isfinite(r.score))
    return {
        "mode": mode,
        "size": info.size,
        "images": len(paths),
        "scored": len(scored),
        "errors": len(ranking.errors),
        "error_examples": sorted({r.error for r in ranking.errors})[:3],
        "nan_scores": nan_scores,
        "elapsed_s": round(elapsed, 4),
        "images_per_s": rate,
        "ms_per_image": _median(per_image_ms),
        "ms_per_image_mean": (elapsed * 1000 / len(scored)) if scored else None,
        "ms_per_image_p90": _percentile(per_image_ms, 0.9),
        "ms_per_image_max": max(per_image_ms, default=None),
        "peak_vram_bytes": peak_vram,
        "peak_nvml_used_bytes": peak_nvml,
        "peak_rss_bytes": peak_rss,
        "visual_tokens_per_image": info.visual_tokens,
        "sequence_tokens_per_image": info.sequence_tokens,
        "resized_to": list(info.resized),
        "preprocess_ms_per_image": info.preprocess_ms,
        "tflop_per_image": info.flops.total / 1e12,
        "achieved_tflops": achieved,
        "fraction_of_peak": (achieved / peak_tflops) if (achieved is not None and peak_tflops) else None,
        "batches": len(batch_sizes),
        "median_batch_images": _median(batch_sizes),
        "max_batch_images": max(batch_sizes, default=None),
        "token_budget_start": budgets[0] if budgets else None,
        "token_budget_end": budgets[-1] if budgets else None,
    }


def median_run(runs: list[dict]) -> dict:
    """Of repeated measurements of one mode and size, the run with the median images/s (the lower
    middle one for an even count), with every run's images/s alongside."""
    ordered = sorted(runs, key=lambda r: r["images_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["repeats"] = len(runs)
    chosen["images_per_s_runs"] = [r["images_per_s"] for r in runs]
    chosen["peak_vram_bytes"] = max((r["peak_vram_bytes"] for r in runs if r["peak_vram_bytes"] is not None), default=None)
    chosen["peak_nvml_used_bytes"] = max((r["peak_nvml_used_bytes"] for r in runs if r["peak_nvml_used_bytes"] is not None), default=None)
    chosen["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
    chosen["errors"] = max(r["errors"] for r in runs)
    return chosen


def memory_run(reranker, query: str, paths: Sequence[str], mode: str, size: int, report_every: int,
               sampler: MemorySampler, token_budget: int | None, out=print) -> dict:
    """Score ``paths`` in ``mode``, printing and recording the peak memory of every ``report_every``
    images (peaks per window: each report covers the images since the previous one)."""
    import torch

    device = reranker.model.device
    cuda = device.type == "cuda"
    _release(device)
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
            "rss_bytes": sampler._process.memory_info().rss,
        }
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        window_start[:] = [now, done]
        series.append(row)
        memory = f"peak VRAM {_gib(row['peak_vram_bytes'])} (allocated now {_gib(row['allocated_vram_bytes'])})" if cuda else ""
        nvml = f" · NVML used {_gib(peak_nvml)}" if peak_nvml is not None else ""
        out(f"  [{mode} {size} px] {done}/{len(paths)} images · {row['images_per_s'] or 0:.2f} img/s · "
            f"{memory}{' · ' if memory else ''}peak RSS {_gib(peak_rss)}{nvml}")

    def on_progress(event) -> None:
        nonlocal next_report
        if event.waiting:
            return
        if event.done >= next_report or event.done == event.total:
            report(event.done)
            while next_report <= event.done:
                next_report += report_every

    ranking = reranker.rank(query, paths, mode=mode, token_budget=token_budget, progress=on_progress)
    key = "peak_vram_bytes" if cuda else "peak_rss_bytes"
    peaks = [row[key] for row in series if row[key] is not None]
    # The last window may be short (fewer images): it still must not exceed the first one.
    growth = (max(peaks[1:]) - peaks[0]) if len(peaks) > 1 else 0
    tolerance = max(FLAT_TOLERANCE_FRACTION * peaks[0], FLAT_TOLERANCE_BYTES) if peaks else 0
    return {
        "mode": mode,
        "size": size,
        "images": len(paths),
        "scored": len(ranking.scored),
        "errors": len(ranking.errors),
        "elapsed_s": round(ranking.elapsed_s, 3),
        "images_per_s": len(ranking.scored) / ranking.elapsed_s if ranking.elapsed_s > 0 else 0.0,
        "memory_measure": key,
        "growth_bytes": int(growth),
        "flat": bool(growth <= tolerance),
        "series": series,
    }


# ---------------------------------------------------------------------------------------------
# Machine and output
# ---------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(device) -> dict:
    import psutil
    import torch
    import transformers

    cuda = device.type == "cuda"
    gpu_name = torch.cuda.get_device_name(device) if cuda else None
    info = {
        "accelerator": gpu_name or "cpu",
        "gpu": gpu_name,
        "gpu_memory_bytes": int(torch.cuda.get_device_properties(device).total_memory) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "driver": None,
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "ram_bytes": int(psutil.virtual_memory().total),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "flash_attn": None,
        "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "platform": platform.platform(),
        "load_average_start": _load_average(),  # other work on the machine skews CPU-side timings
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if cuda:
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
    with contextlib.suppress(Exception):
        import importlib.metadata

        info["flash_attn"] = importlib.metadata.version("flash_attn")
    return info


def _gib(value: float | None) -> str:
    return "—" if value is None else f"{value / 2**30:.2f} GiB"


def _count(value: int) -> str:
    return f"{value / 1e9:.2f} B" if value >= 1e9 else f"{value / 1e6:.2f} M"


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def format_table(report: dict) -> str:
    rows = [("mode", "size", "images/s", "ms/image", "peak VRAM", "peak RSS", "TFLOP/s", "% of peak")]
    for r in report["results"]:
        fraction = r["fraction_of_peak"]
        rows.append((
            r["mode"],
            f"{r['size']} px",
            _num(r["images_per_s"]),
            _num(r["ms_per_image"], 1),
            _gib(r["peak_vram_bytes"]),
            _gib(r["peak_rss_bytes"]),
            "—" if r["achieved_tflops"] is None else f"{r['achieved_tflops']:.3g}",
            "—" if fraction is None else f"{100 * fraction:.1f} %",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if report["speedup"]:
        parts = [f"{size} px ×{value:.2f}" for size, value in report["speedup"].items()]
        lines.append("speedup (batched ÷ sequential images/s): " + ", ".join(parts))
    return "\n".join(lines)


def _title(report: dict) -> str:
    model, machine = report["model"], report["machine"]
    return f"{model['name']} · {model['dtype']} · {model['attention']} · {machine['accelerator']} · {machine['date'][:10]}"


def write_plot(report: dict, path: str) -> None:
    """Two panels: throughput and peak memory per mode and size (memory run: memory and rate over images)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cuda = report["machine"]["gpu"] is not None
    memory_key, memory_label = ("peak_vram_bytes", "peak VRAM (GiB)") if cuda else ("peak_rss_bytes", "peak RSS (GiB)")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    colours = {"sequential": "#7f7f7f", "batched": "#1f77b4"}
    if report.get("memory_run"):
        for run in report["memory_run"]["runs"]:
            done = [row["done"] for row in run["series"]]
            label = f"{run['mode']} {run['size']} px"
            left.plot(done, [(row[memory_key] or 0) / 2**30 for row in run["series"]], marker="o", label=label)
            right.plot(done, [row["images_per_s"] or 0 for row in run["series"]], marker="o", label=label)
        left.set(xlabel="images scored", ylabel=f"{memory_label}, per report window", title="Memory over the run (must stay flat)")
        right.set(xlabel="images scored", ylabel="images/s", title="Throughput per report window")
        left.set_ylim(bottom=0)
        right.set_ylim(bottom=0)
        left.legend(fontsize=8)
        right.legend(fontsize=8)
    else:
        sizes = list(dict.fromkeys(r["size"] for r in report["results"]))
        modes = list(dict.fromkeys(r["mode"] for r in report["results"]))
        width = 0.8 / max(1, len(modes))
        by_key = {(r["mode"], r["size"]): r for r in report["results"]}
        for m, mode in enumerate(modes):
            xs = [i + (m - (len(modes) - 1) / 2) * width for i in range(len(sizes))]
            rates = [by_key[(mode, s)]["images_per_s"] if (mode, s) in by_key else 0 for s in sizes]
            memory = [(by_key[(mode, s)][memory_key] or 0) / 2**30 if (mode, s) in by_key else 0 for s in sizes]
            bars = left.bar(xs, rates, width, label=mode, color=colours.get(mode))
            left.bar_label(bars, fmt="%.3g", fontsize=8, padding=2)
            bars = right.bar(xs, memory, width, label=mode, color=colours.get(mode))
            right.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
        top = max((r["images_per_s"] for r in report["results"]), default=0)
        for i, size in enumerate(sizes):
            if str(size) in report["speedup"]:
                left.annotate(f"batched ×{report['speedup'][str(size)]:.2f}", (i, top * 1.12), ha="center", fontsize=9, weight="bold")
        for axis in (left, right):
            axis.set_xticks(range(len(sizes)), [f"{s}×{s} px" for s in sizes])
            axis.set_ylim(0, axis.get_ylim()[1] * 1.25)
        left.set(ylabel="images/s", title="Throughput (higher is better)")
        right.set(ylabel=memory_label, title="Peak memory, model included" if cuda else "Peak RSS of the process, model included")
        handles, labels = left.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
        fig.suptitle(_title(report), fontsize=10)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        _save(fig, path)
        return
    fig.suptitle(_title(report), fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


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


def _vision_parameters(model) -> int | None:
    visual = getattr(getattr(model, "model", None), "visual", None)
    return sum(p.numel() for p in visual.parameters()) if visual is not None else None


def _run(s: Settings, argv: list[str], out: Callable[[str], None] = print) -> int:
    import torch

    cuda = _cuda_available()
    arch = s.arch
    if s.model is None and arch is None:
        arch = "qwen2.5-vl-7b" if cuda else "tiny"
        out(f"{PROG}: no --arch or --model given: using --arch {arch}")
    if arch is not None:
        reranker = build_random(arch, s.dtype, s.attention, s.seed, s.max_pixels)
    else:
        reranker = load_checkpoint(s.model, s.dtype, s.attention, s.max_pixels)
    if s.full_logits:
        reranker.model = _FullLogitsModel(reranker.model)
    device = reranker.model.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    weights_vram = int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None
    info = reranker.info
    machine = machine_info(device)
    peak_tflops = gpu_peak_tflops(machine["gpu"], info.dtype) if device.type == "cuda" else None
    images = s.images or (DEFAULT_IMAGES_CUDA if device.type == "cuda" else DEFAULT_IMAGES_CPU)
    out(f"{PROG}: {info.name} ({_count(info.parameters)} parameters, {info.dtype}, {info.attention}) "
        f"on {machine['accelerator']}, ready in {info.load_seconds:.1f} s")
    model = reranker.model
    report: dict = {
        "schema": JSON_SCHEMA,
        "argv": argv,
        "machine": machine,
        "model": {
            "name": info.name,
            "arch": arch,
            "path": info.path,
            "parameters": info.parameters,
            "vision_parameters": _vision_parameters(model),
            "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "vram_after_load_bytes": weights_vram,
            "dtype": info.dtype,
            "attention": info.attention,
            "device": str(device),
            "is_demo": info.is_demo,
            "load_seconds": round(info.load_seconds, 3),
        },
        "settings": {
            "images": images,
            "sizes": list(s.sizes),
            "modes": list(s.modes),
            "query": s.query,
            "min_pixels": s.min_pixels,
            "max_pixels": s.max_pixels,
            "token_budget": s.token_budget,
            "logits_to_keep": 0 if s.full_logits else 1,
            "preprocessing_overlap": not s.no_overlap,
            "gc_collect": not s.no_gc,
            "seed": s.seed,
            "repeat": s.repeat,
        },
        "peak_tflops": peak_tflops,
        "results": [],
        "speedup": {},
        "memory_run": None,
    }
    logits_positions = 0 if s.full_logits else 1
    with tempfile.TemporaryDirectory(prefix="lychee-bench-") as tmp, MemorySampler(device) as sampler, \
            engine_levers(overlap=not s.no_overlap, gc_collect=not s.no_gc):
        folder = Path(tmp)
        if s.memory_run:
            runs = []
            for size in s.sizes:
                started = time.perf_counter()
                paths = write_images(folder, s.memory_run, size, s.seed)
                out(f"{PROG}: {len(paths)} images of {size}×{size} px written in {time.perf_counter() - started:.1f} s")
                reranker.rank(s.query, paths[:2], mode="batched", token_budget=s.token_budget)  # warm-up
                for mode in s.modes:
                    runs.append(memory_run(reranker, s.query, paths, mode, size, s.report_every, sampler, s.token_budget, out))
                    state = "flat" if runs[-1]["flat"] else f"NOT flat (grew {_gib(runs[-1]['growth_bytes'])})"
                    out(f"{PROG}: {mode} {size} px: memory {state} over {len(paths)} images")
                for path in paths:
                    Path(path).unlink(missing_ok=True)
            report["memory_run"] = {"images": s.memory_run, "report_every": s.report_every, "runs": runs}
        else:
            for size in s.sizes:
                started = time.perf_counter()
                paths = write_images(folder, images, size, s.seed)
                out(f"{PROG}: {len(paths)} images of {size}×{size} px written in {time.perf_counter() - started:.1f} s")
                size_info = describe_size(reranker, s.query, paths, size, logits_positions)
                reranker.rank(s.query, paths[:2], mode="batched", token_budget=s.token_budget)  # warm-up, not counted
                repeats: dict[str, list[dict]] = {mode: [] for mode in s.modes}
                for attempt in range(s.repeat):  # modes interleaved: drift on the machine hits both alike
                    for mode in s.modes:
                        result = measure_mode(reranker, s.query, paths, mode, size_info, sampler, s.token_budget, peak_tflops)
                        repeats[mode].append(result)
                        run = f" (run {attempt + 1}/{s.repeat})" if s.repeat > 1 else ""
                        out(f"  {mode:<10} {size} px{run}: {result['scored']}/{len(paths)} images in {result['elapsed_s']:.2f} s "
                            f"= {result['images_per_s']:.2f} images/s")
                        if result["nan_scores"]:
                            out(f"  warning: {result['nan_scores']} scores are not finite (random weights overflowed?)")
                        if result["errors"]:
                            out(f"  warning: {result['errors']} images failed: {'; '.join(result['error_examples'])}")
                for mode in s.modes:
                    report["results"].append(median_run(repeats[mode]))
                by_mode = {r["mode"]: r for r in report["results"] if r["size"] == size}
                if "sequential" in by_mode and "batched" in by_mode and by_mode["sequential"]["images_per_s"] > 0:
                    report["speedup"][str(size)] = by_mode["batched"]["images_per_s"] / by_mode["sequential"]["images_per_s"]
            report["flops_per_image"] = {
                str(r["size"]): r["tflop_per_image"] for r in report["results"]
            }
    report["machine"]["load_average_end"] = _load_average()
    if report["results"]:
        out("")
        out(format_table(report))
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
    failed = any(r["errors"] for r in report["results"]) or any(
        r["errors"] for r in (report["memory_run"] or {}).get("runs", [])
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Measure sequential vs batched speed and memory.")
    add_bench_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
