"""FLOPs of one (query, image) pair's forward, from the architecture and the processor's patch grid,
and the GPUs' dense bf16 peaks that turn an achieved rate into a fraction of peak."""

from __future__ import annotations

from dataclasses import dataclass

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
    the longest in its batch; padding is not counted (images of one size do not pad; mixed ones do).
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


