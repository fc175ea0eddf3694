"""The model under test: an architecture with random weights built on the device, or a checkpoint
loaded exactly as the app loads it (``Reranker.load``)."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

from ..loading import DEFAULT_MIN_PIXELS
from .settings import BenchError


@dataclass
class ModelUnderTest:
    reranker: object  # lychee_rerank.Reranker
    arch: str | None
    processor_source: str  # what AutoProcessor.from_pretrained takes to load the same processor


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def load_model_under_test(arch: str | None, model: str | None, dtype: str, attention: str, quantize: str,
                          seed: int, max_pixels: int) -> ModelUnderTest:
    if arch is not None:
        from ..demo_model import ensure_demo_model

        return ModelUnderTest(build_random(arch, dtype, attention, seed, max_pixels), arch, str(ensure_demo_model()))
    reranker = load_checkpoint(model, dtype, attention, max_pixels, quantize)
    return ModelUnderTest(reranker, None, reranker.info.path)


def build_random(arch: str, dtype: str, attention: str, seed: int, max_pixels: int):
    """A Reranker over ``arch`` with random weights, built directly on the device in ``dtype``."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from ..archs import arch_config
    from ..demo_model import ensure_demo_model
    from ..loading import ModelInfo, ModelLoadError, resolve_attention, resolve_dtype
    from ..reranker import Reranker

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


def load_checkpoint(name: str, dtype: str, attention: str, max_pixels: int, quantize: str = "none"):
    from ..loading import ModelLoadError
    from ..reranker import Reranker

    options = {}
    if quantize != "none":
        if "quantize" not in inspect.signature(Reranker.load).parameters:
            raise BenchError("--quantize needs an engine whose Reranker.load takes quantize=, and this one does not")
        options["quantize"] = quantize
    try:
        return Reranker.load(name, dtype=dtype, attention=attention, max_pixels=max_pixels, **options)
    except ModelLoadError as exc:
        raise BenchError(str(exc), code=1) from None
