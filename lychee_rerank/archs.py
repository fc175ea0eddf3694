"""Qwen2.5-VL architectures by name: the tiny demo one, and the public 3B and 7B shapes for benchmarks.

The full-size shapes match the public configs, so a randomly initialised model does the same compute
per token as the real one.
"""

from __future__ import annotations

ARCHS = ("tiny", "qwen2.5-vl-3b", "qwen2.5-vl-7b")

_FULL_SIZE_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)

_SHAPES: dict[str, dict] = {
    "tiny": dict(
        text=dict(
            vocab_size=0,  # the demo tokenizer's size
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
        ),
        vision=dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        ),
        tie_word_embeddings=False,
    ),
    "qwen2.5-vl-3b": dict(
        text=dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
        ),
        vision=_FULL_SIZE_VISION,
        tie_word_embeddings=True,
    ),
    "qwen2.5-vl-7b": dict(
        text=dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
        ),
        vision=_FULL_SIZE_VISION,
        tie_word_embeddings=False,
    ),
}


def arch_config(arch: str, tokenizer):
    """A Qwen2.5-VL config of the named shape whose special-token ids match ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig  # here: the CLI lists ARCHS without importing transformers

    if arch not in _SHAPES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    shape = _SHAPES[arch]
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _SPECIAL_IDS.items()}
    text = dict(shape["text"])
    text["vocab_size"] = max(text["vocab_size"], len(tokenizer))
    text.update(
        max_position_embeddings=128_000,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["bos_token_id"],
    )
    vision = dict(shape["vision"], out_hidden_size=text["hidden_size"], in_channels=3, hidden_act="silu")
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=shape["tie_word_embeddings"],
    )


_SPECIAL_IDS = {
    "bos_token_id": "<|endoftext|>",
    "eos_token_id": "<|im_end|>",
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
