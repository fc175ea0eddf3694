"""Model loading: a hub id, a local directory or `demo`, through transformers' Auto classes.

Never with remote code: Qwen2.5-VL is native to transformers, and remote code is an attack surface.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .demo_model import DEMO_NAME, ensure_demo_model, is_demo_checkpoint
from .quantization import (
    LABELS as QUANTIZATION_LABELS,
    QUANTIZE_MODES,
    QuantizationChoice,
    QuantizationError,
    bnb_config,
    check_backend,
    choose_quantization,
    format_bytes,
    free_cuda_bytes,
    weight_sizes,
    working_batch_bytes,
)

DEFAULT_MODEL = "vec-ai/lychee-rerank-mm"
DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTIONS = ("auto", "flash_attention_2", "sdpa", "eager")
HUB_TIMEOUT_S = 10
# Processor resolution bounds (pixels): min 4 visual tokens' worth, max 1280 visual tokens' worth.
DEFAULT_MIN_PIXELS = 4 * 28 * 28
DEFAULT_MAX_PIXELS = 1280 * 28 * 28


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do, in one sentence."""


@dataclass(frozen=True)
class ModelInfo:
    name: str  # as asked for: hub id, directory or "demo"
    path: str  # what from_pretrained was given
    device: str
    dtype: str
    attention: str
    parameters: int
    load_seconds: float
    is_demo: bool
    quantization: str = "none"  # "none", "8bit" or "4bit": what was loaded
    quantization_reason: str = ""  # why, when ``auto`` chose it
    weights_bytes: int | None = None  # the loaded weights' memory (model.get_memory_footprint())

    def summary(self) -> str:
        """One line: "demo on cpu, float32, 8-bit weights, 1.4 MB" (+ why, when ``auto`` chose)."""
        line = f"{self.name} on {self.device}, {self.dtype}, {QUANTIZATION_LABELS[self.quantization]} weights"
        if self.weights_bytes is not None:
            line += f", {format_bytes(self.weights_bytes)}"
        return line + (f" ({self.quantization_reason})" if self.quantization_reason else "")


def default_model() -> str:
    """The model named by $LYCHEE_MODEL, else the real Lychee reranker."""
    return os.environ.get("LYCHEE_MODEL", "").strip() or DEFAULT_MODEL


def resolve_dtype(dtype: str):
    """'auto' is bf16 on GPUs that support it, fp16 on older GPUs, float32 on CPU."""
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_attention(attention: str, dtype) -> str:
    """FlashAttention-2 where it is installed and usable (CUDA, half precision), else SDPA."""
    import torch

    if attention not in ATTENTIONS:
        raise ModelLoadError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTIONS)}")
    if attention != "auto":
        return attention
    flash_ready = (
        importlib.util.find_spec("flash_attn") is not None
        and torch.cuda.is_available()
        and dtype in (torch.float16, torch.bfloat16)
    )
    return "flash_attention_2" if flash_ready else "sdpa"


def resolve_source(name: str, demo: Callable[[], Path] = ensure_demo_model) -> str:
    """What to hand to from_pretrained: a checkpoint directory, or a hub id. ``demo`` builds the
    checkpoint that the name 'demo' stands for (the reranker's, or the embedder's)."""
    name = name.strip()
    if not name:
        raise ModelLoadError("no model named; give a hub id, a local directory, or 'demo'")
    if name == DEMO_NAME:
        return str(demo())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: it is not a model directory")
        return str(path)
    # A hub id is "owner/name"; anything else that is not a directory is a path that does not exist.
    if name.startswith((".", "/", "~")) or name.count("/") != 1 or path.exists():
        raise ModelLoadError(f"model directory not found: {name} (give an existing directory, a hub id, or 'demo')")
    return name


OFFLINE_HINT = (
    "download it where there is network and set LYCHEE_MODEL to that directory, or use the demo model"
)


def _explain(name: str, exc: BaseException, quantization: str = "none") -> str:
    text = str(exc).lower()
    if quantization != "none" and ("dispatched on the cpu" in text or "out of memory" in text):
        smaller = " (choose 4-bit, or free GPU memory)" if quantization == "8bit" else " (free GPU memory, or use a larger GPU)"
        return f"the {QUANTIZATION_LABELS[quantization]} weights of {name} do not fit in the free GPU memory{smaller}"
    if isinstance(exc, MemoryError) or "out of memory" in text:
        return (
            f"not enough memory to load {name}: it needs about 17 GB of GPU memory in bf16 "
            "(load it in 8-bit or 4-bit, close other programs using the GPU, or use a larger GPU)"
        )
    return describe_load_failure(name, exc)


def describe_load_failure(name: str, exc: BaseException) -> str:
    """One sentence for a failed from_pretrained: the hub unreachable, or the error's first line."""
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or "out of memory" in text:
        return f"not enough memory to load {name}: close other programs using the memory, or use a smaller model"
    if any(word in text for word in ("connect", "offline", "resolve", "network", "timed out", "max retries")):
        return f"could not download {name}: the Hugging Face Hub cannot be reached; {OFFLINE_HINT}"
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"could not load {name}: {first_line}"


def hub_check(repo_id: str) -> bool:
    """Decide quickly how to load a hub id: True to load from the local cache only.

    Without this, from_pretrained retries an unreachable hub for minutes before failing.
    """
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    cached = isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str)
    try:
        huggingface_hub.model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError as exc:
        if cached:
            return True
        raise ModelLoadError(f"{repo_id} needs a Hugging Face login: set HF_TOKEN, or use the demo model") from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(f"no model called {repo_id} on the Hugging Face Hub or on disk; check the name, or use the demo model") from exc
    except Exception as exc:  # no network, offline mode, hub down: the cache is all there is
        if cached:
            return True
        raise ModelLoadError(
            f"could not download {repo_id}: the Hugging Face Hub cannot be reached and it is not in the local cache; {OFFLINE_HINT}"
        ) from exc
    return False


def resolve_quantization(quantize: str, source: str, torch_dtype, local_only: bool) -> QuantizationChoice:
    """What to load: ``quantize`` as asked, or for ``auto`` the choice from free GPU memory and the
    checkpoint's own architecture (its config.json: no weights are read)."""
    if quantize != "auto":
        return QuantizationChoice(quantize, "")
    free = free_cuda_bytes()
    if free is None:
        return choose_quantization(None, None, 0)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    dtype_bytes = torch_dtype.itemsize
    return choose_quantization(
        free, weight_sizes(config, dtype_bytes), working_batch_bytes(config, dtype_bytes, DEFAULT_MAX_PIXELS)
    )


def load_model(
    name: str | None = None,
    *,
    dtype: str = "auto",
    attention: str = "auto",
    device_map: str | dict | None = "auto",
    quantize: str = "auto",
):
    """Load (model, processor, ModelInfo) or raise ModelLoadError with a one-sentence explanation.

    ``quantize``: "none", "8bit", "4bit" (bitsandbytes), or "auto" (by free GPU memory; none on CPU).
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = name or default_model()
    start = time.perf_counter()
    if quantize not in QUANTIZE_MODES:
        raise ModelLoadError(f"unknown quantisation {quantize!r}; choose one of {', '.join(QUANTIZE_MODES)}")
    source = resolve_source(name)
    torch_dtype = resolve_dtype(dtype)
    attn = resolve_attention(attention, torch_dtype)
    local_only = False if Path(source).is_dir() else hub_check(source)
    quantization = QuantizationChoice("none", "")
    try:
        quantization = resolve_quantization(quantize, source, torch_dtype, local_only)
        if quantization.mode != "none":
            check_backend(quantization.mode)
        processor = AutoProcessor.from_pretrained(source, padding_side="left", local_files_only=local_only)
        model = AutoModelForImageTextToText.from_pretrained(
            source,
            dtype=torch_dtype,
            device_map=device_map,
            attn_implementation=attn,
            local_files_only=local_only,
            quantization_config=None if quantization.mode == "none" else bnb_config(quantization.mode, torch_dtype),
        )
    except ModelLoadError:
        raise
    except QuantizationError as exc:
        raise ModelLoadError(str(exc)) from exc
    except Exception as exc:  # every failure becomes one sentence for the user
        raise ModelLoadError(_explain(name, exc, quantization.mode)) from exc
    model.eval()
    processor.tokenizer.padding_side = "left"  # batches end where the answer starts
    info = ModelInfo(
        name=name,
        path=source,
        device=str(model.device),
        dtype=str(torch_dtype).removeprefix("torch."),
        attention=attn,
        parameters=model.num_parameters(),  # counts packed 4-bit weights as the parameters they hold
        load_seconds=time.perf_counter() - start,
        is_demo=is_demo_checkpoint(source) if Path(source).is_dir() else False,
        quantization=quantization.mode,
        quantization_reason=quantization.reason,
        weights_bytes=int(model.get_memory_footprint()),
    )
    return model, processor, info
