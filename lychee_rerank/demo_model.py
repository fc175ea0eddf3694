"""The `demo` model: a tiny, randomly initialised Qwen2.5-VL saved as an ordinary checkpoint.

It lets the product run and be tested with no GPU, no network and no downloaded weights. Its scores
mean nothing. It is built once into a cache directory and then loaded through exactly the same
``from_pretrained`` path as the real model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

DEMO_NAME = "demo"
# Bump when the demo checkpoint's content changes, so stale caches are rebuilt.
DEMO_VERSION = 2
# A marker file inside the checkpoint; anything that shows scores uses it to say they are meaningless.
DEMO_MARKER = "lychee_demo_model.json"

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat template, reduced to what this product sends (text and image parts).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Training text for the tokenizer: Chinese and English, with the answer words the scorer reads.
_CORPUS = [
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided.",
    'Note that the answer can only be "yes" or "no".',
    "Given a search query, retrieve relevant images that match the query.",
    "<Instruct>: <Query>: <Document>:",
    "sunset over the sea, red sneakers on white background, a cat on a sofa, a dog in the park",
    "product photo, document scan, invoice, receipt, street at night, mountains and a lake",
    "海边日落 一只猫 一只狗 红色运动鞋 白色背景 产品照片 文档扫描 发票 城市夜景 山和湖",
    "根据查询和指令判断文档是否满足要求。答案只能是是或否。给定一个搜索查询，检索与查询相关的图片。",
    "yes", "no", "yes no", "Yes", "No",
]


def cache_root() -> Path:
    """The product's own cache folder (the demo checkpoint, the vision-feature cache): $LYCHEE_CACHE,
    else ~/.cache/lychee-rerank."""
    return Path(os.environ.get("LYCHEE_CACHE") or Path.home() / ".cache" / "lychee-rerank")


def demo_cache_dir() -> Path:
    """Where the demo checkpoint lives."""
    return cache_root() / f"demo-model-v{DEMO_VERSION}"


def is_demo_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / DEMO_MARKER).is_file()


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="left",
    )
    for word in ("yes", "no"):
        ids = fast.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"demo tokenizer must keep {word!r} as one token, got {ids}")
    return fast


def build_demo_model(target: Path) -> None:
    """Create the tiny checkpoint (tokenizer, processor, random weights) in ``target``."""
    import torch
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from .archs import arch_config

    tokenizer = _train_tokenizer()
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    config = arch_config("tiny", tokenizer)
    # A wide initialisation and a scaled output layer make scores spread over [0, 1] (at the default
    # 0.02 they all sit near 0.5): the demo shows a visible ranking, and tests can see any change of
    # positions, pixels or prompt.
    for part in (config, config.text_config, config.vision_config):
        part.initializer_range = 0.2
    torch.manual_seed(0)  # the same demo weights on every machine
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    (target / DEMO_MARKER).write_text(
        json.dumps({"demo": True, "version": DEMO_VERSION, "note": "random weights: scores are meaningless"})
    )


def build_once(target: Path, build: Callable[[Path], None], is_built: Callable[[Path], bool]) -> Path:
    """``target``, built by ``build`` on first use: in a staging folder renamed into place (atomic:
    safe with concurrent callers, and a half-built checkpoint is never loaded)."""
    if is_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=target.parent))
    try:
        build(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not is_built(target):  # lost a race to a complete build: fine; else a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_demo_model() -> Path:
    """Path of the demo checkpoint, building it on first use."""
    return build_once(demo_cache_dir(), build_demo_model, is_demo_checkpoint)
