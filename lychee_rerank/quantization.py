"""8-bit and 4-bit weights (bitsandbytes) for GPUs too small for the 16.6 GB bf16 model, and the
rule that picks one for ``quantize="auto"``.

- ``8bit``: LLM.int8 (int8 weights, outlier features kept in fp16). ``4bit``: NF4 with double
  quantisation, computing in the load dtype.
- Only the language model's linear layers are quantised. The vision tower stays in the load dtype:
  every visual token (most of each sequence) passes through it, so its rounding errors reach every
  image token, and it is small (0.68 B of the 7B's 8.29 B parameters: quantising it would save
  0.7 GB at 8-bit). ``lm_head`` stays too: it makes the two logits (yes/no) the score is read from,
  and with ``logits_to_keep=1`` it runs on one position per image, so it costs almost nothing.
- ``auto`` never quantises on CPU: there quantisation saves memory the machine has but costs speed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from .execution import MEMORY_SHARE, activation_bytes_per_token

QUANTIZE_MODES = ("auto", "none", "8bit", "4bit")
LABELS = {"none": "unquantised", "8bit": "8-bit", "4bit": "4-bit"}
# Module names (and their children) left unquantised; "visual" is the tower's name in older
# transformers layouts, "model.visual" in transformers 5.
SKIP_MODULES = ("model.visual", "visual", "lm_head")
# A "working batch": the memory the batched mode needs beside the weights for batches of this many
# images at the resolution cap, so that batching has several images per forward to work with (4 is
# a judgement, not a measurement: no GPU has measured the batch size where the gain levels off).
WORKING_BATCH_IMAGES = 4
# Text tokens per sequence besides the image: system prompt, instruction, query (86 with the demo
# tokenizer and a short query; see docs/benchmarks.md), rounded up for longer queries.
PROMPT_TOKENS = 128
# bitsandbytes NF4 layout: 4 bits per weight, one absmax per block of 64 weights, stored in 8 bits
# with double quantisation, plus one fp32 absmax per 256 of those.
NF4_BLOCK = 64
NF4_SECOND_BLOCK = 256


class QuantizationError(RuntimeError):
    """This quantisation cannot run here; the message is one sentence for the user."""


@dataclass(frozen=True)
class WeightSizes:
    """Bytes the model's weights take in the load dtype, in 8-bit and in 4-bit."""

    full: int
    int8: int
    nf4: int

    def of(self, mode: str) -> int:
        return {"none": self.full, "8bit": self.int8, "4bit": self.nf4}[mode]


@dataclass(frozen=True)
class QuantizationChoice:
    mode: str  # "none", "8bit" or "4bit"
    reason: str  # why, in words


def choose_quantization(free_bytes: int | None, sizes: WeightSizes | None, working_bytes: int) -> QuantizationChoice:
    """The ``auto`` rule: no quantisation when the full-precision weights plus a working batch fit in
    the free GPU memory, else 8-bit when that fits, else 4-bit (the smallest there is). No GPU
    (``free_bytes`` None): no quantisation."""
    if free_bytes is None:
        return QuantizationChoice("none", "auto: no CUDA GPU, so no quantisation")
    needs = {mode: sizes.of(mode) + working_bytes for mode in ("none", "8bit", "4bit")}
    mode = next((m for m in ("none", "8bit") if needs[m] <= free_bytes), "4bit")
    reason = f"auto: {format_bytes(free_bytes)} GPU memory free; weights plus a working batch need " + ", ".join(
        f"{format_bytes(needs[m])} {LABELS[m]}" for m in needs
    )
    return QuantizationChoice(mode, reason)


def weight_sizes(config, dtype_bytes: int) -> WeightSizes:
    """Weight bytes per mode, counted from the architecture (built on the meta device: no memory,
    about a second for the 7B): the quantised linear weights shrink, everything else (vision tower,
    embeddings, lm_head, norms, biases) keeps ``dtype_bytes`` per parameter."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    quantised = [
        module.weight
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not is_skipped(name)
    ]
    weights = sum(w.numel() for w in quantised)
    rows = sum(w.shape[0] for w in quantised)
    rest = (total - weights) * dtype_bytes
    blocks = math.ceil(weights / NF4_BLOCK)
    return WeightSizes(
        full=total * dtype_bytes,
        int8=weights + 4 * rows + rest,  # int8 weights plus one fp32 scale per output row
        nf4=math.ceil(weights / 2) + blocks + 4 * math.ceil(blocks / NF4_SECOND_BLOCK) + rest,
    )


def working_batch_bytes(config, dtype_bytes: int, max_pixels: int) -> int:
    """Memory beside the weights for WORKING_BATCH_IMAGES images at ``max_pixels``, by the engine's
    own activation estimate and budget share (lychee_rerank.execution)."""
    vision = config.vision_config
    pixels_per_token = (vision.patch_size * vision.spatial_merge_size) ** 2
    tokens = WORKING_BATCH_IMAGES * (max_pixels // pixels_per_token + PROMPT_TOKENS)
    return int(tokens * activation_bytes_per_token(config, dtype_bytes) / MEMORY_SHARE)


def is_skipped(module_name: str) -> bool:
    return any(module_name == skip or module_name.startswith(skip + ".") for skip in SKIP_MODULES)


def free_cuda_bytes() -> int | None:
    """Free memory over the visible CUDA GPUs (device_map="auto" spreads the model over all of
    them); None without one."""
    import torch

    from .gpu import free_device_bytes

    if not torch.cuda.is_available():
        return None
    return sum(free_device_bytes(torch.device("cuda", i)) for i in range(torch.cuda.device_count()))


def check_backend(mode: str) -> None:
    """Raise QuantizationError when ``mode`` cannot run here (no bitsandbytes, or no backend for
    this machine's device in the installed release)."""
    import importlib.metadata
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationError(f"{LABELS[mode]} loading needs the bitsandbytes package (pip install bitsandbytes)")
    quiet_bitsandbytes()
    import bitsandbytes

    device = "cuda" if torch.cuda.is_available() else "cpu"
    supported = getattr(bitsandbytes, "supported_torch_devices", {"cuda"})  # older releases: CUDA only
    if device not in supported:
        version = importlib.metadata.version("bitsandbytes")
        raise QuantizationError(
            f"{LABELS[mode]} needs a CUDA GPU: the installed bitsandbytes {version} has no {device.upper()} backend"
        )


def bnb_config(mode: str, compute_dtype):
    """transformers' BitsAndBytesConfig for ``mode`` ("8bit" or "4bit")."""
    from transformers import BitsAndBytesConfig

    skip = list(SKIP_MODULES)
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )


def quiet_bitsandbytes() -> None:
    """bitsandbytes logs a warning on every 8-bit forward ("inputs will be cast to float16": how
    LLM.int8 works) and, on some CPUs, about an optional kernel package; neither helps a user."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def format_bytes(n: int) -> str:
    """Decimal units, as GPU memory and checkpoint sizes are quoted: "16.6 GB", "1.4 MB"."""
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
