"""The `demo` embedder: a tiny, randomly initialised SigLIP 2 (NaFlex) saved as an ordinary checkpoint.

The same architecture, processor and tokenizer classes as ``google/siglip2-*-naflex``, built from
transformers' own classes, with a tokenizer trained here (``tokenizers``: Chinese and English, with
byte fallback like Gemma's). Built once into $LYCHEE_CACHE and loaded back through the same
``from_pretrained`` path as a real checkpoint. Its vectors mean nothing: it exists so indexing and
search run, and are tested, with no download.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..demo_model import build_once, cache_root

DEMO_EMBEDDER_VERSION = 1
DEMO_EMBEDDER_MARKER = "lychee_demo_embedder.json"
# Gemma's special tokens, in Gemma's order (pad 0, eos 1, bos 2, unk 3, mask 4).
_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
_CORPUS = [
    "a photo of a cat on a sofa", "a dog in the park", "sunset over the sea", "red sneakers on white background",
    "product photo", "document scan", "invoice", "receipt", "street at night", "mountains and a lake",
    "海边日落", "一只猫", "一只狗", "红色运动鞋", "白色背景", "产品照片", "文档扫描", "发票", "城市夜景", "山和湖",
]


def demo_embedder_dir() -> Path:
    return cache_root() / f"demo-embedder-v{DEMO_EMBEDDER_VERSION}"


def is_demo_embedder(path) -> bool:
    return (Path(path) / DEMO_EMBEDDER_MARKER).is_file()


def _train_tokenizer():
    """A BPE trained on a small Chinese+English corpus, handed to Siglip2Tokenizer (Gemma's rules:
    lower-case, spaces as ▁, unknown characters as UTF-8 byte tokens)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer

    trainer_tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=_SPECIALS, show_progress=False)
    trainer_tokenizer.train_from_iterator(_CORPUS * 10, trainer=trainer)
    model = json.loads(trainer_tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    for byte in range(256):  # byte fallback: any character has tokens
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return Siglip2Tokenizer(vocab=vocab, merges=merges)


def build_demo_embedder(target: Path) -> None:
    import torch
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor

    tokenizer = _train_tokenizer()
    processor = Siglip2Processor(image_processor=Siglip2ImageProcessor(), tokenizer=tokenizer)
    config = Siglip2Config(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=1,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=16, num_patches=256),
    )
    torch.manual_seed(0)  # the same demo weights on every machine
    Siglip2Model(config).eval().save_pretrained(target)
    processor.save_pretrained(target)
    (target / DEMO_EMBEDDER_MARKER).write_text(
        json.dumps({"demo": True, "version": DEMO_EMBEDDER_VERSION, "note": "random weights: similarities are meaningless"})
    )


def ensure_demo_embedder() -> Path:
    """Path of the demo embedder, building it on first use (atomic: safe with concurrent callers)."""
    return build_once(demo_embedder_dir(), build_demo_embedder, is_demo_embedder)
