"""Model loading: the demo checkpoint, local directories, hub ids, and what users are told on failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from lychee_rerank import ModelLoadError, Reranker, default_model
from lychee_rerank.demo_model import SPECIAL_TOKENS, ensure_demo_model


def test_demo_model_is_an_ordinary_checkpoint_loaded_through_from_pretrained(reranker):
    path = Path(reranker.info.path)
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
    assert type(reranker.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert reranker.info.is_demo and reranker.info.name == "demo"


def test_a_directory_copy_of_a_checkpoint_loads_like_a_hub_model(tmp_path, demo_cache):
    import shutil

    copy = tmp_path / "my-model"
    shutil.copytree(ensure_demo_model(), copy)
    (copy / "lychee_demo_model.json").unlink()  # now it is "just a model directory"
    loaded = Reranker.load(str(copy), dtype="float32")
    assert loaded.info.path == str(copy) and not loaded.info.is_demo
    assert loaded.info.device == "cpu" and loaded.info.dtype == "float32"


def test_demo_tokenizer_covers_chinese_english_and_qwen_special_tokens(reranker):
    tokenizer = reranker.processor.tokenizer
    for token in SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1
    for word in ("yes", "no"):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1
    text = "海边日落 sunset over the sea"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_auto_dtype_is_float32_on_cpu(demo_cache):
    loaded = Reranker.load("demo")
    assert loaded.info.dtype == "float32"
    assert loaded.info.attention in ("sdpa", "flash_attention_2")


def test_models_are_never_loaded_with_remote_code(monkeypatch, demo_cache):
    seen = []
    original = transformers.AutoModelForImageTextToText.from_pretrained

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", recording)
    Reranker.load("demo", dtype="bfloat16")
    assert seen and not seen[0].get("trust_remote_code")
    assert seen[0]["device_map"] == "auto" and seen[0]["dtype"] == torch.bfloat16


def test_a_model_directory_that_does_not_exist_is_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="model directory not found"):
        Reranker.load(str(tmp_path / "nowhere"))


def test_a_directory_that_is_not_a_model_is_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="not a model directory"):
        Reranker.load(str(tmp_path))


def test_a_hub_model_without_network_is_explained_in_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        Reranker.load("vec-ai/lychee-rerank-mm")
    message = str(info.value)
    assert "could not download vec-ai/lychee-rerank-mm" in message and "demo" in message
    assert "\n" not in message


def test_lychee_model_variable_picks_the_default_model(monkeypatch):
    monkeypatch.setenv("LYCHEE_MODEL", "demo")
    assert default_model() == "demo"
    monkeypatch.delenv("LYCHEE_MODEL")
    assert default_model() == "vec-ai/lychee-rerank-mm"


def test_an_unknown_dtype_is_explained():
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        Reranker.load("demo", dtype="int3")


def test_an_unreachable_hub_fails_at_once_without_trying_to_download(monkeypatch):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    def must_not_download(*args, **kwargs):
        raise AssertionError("from_pretrained must not be tried when the hub is unreachable and nothing is cached")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", must_not_download)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", must_not_download)
    with pytest.raises(ModelLoadError, match="cannot be reached and it is not in the local cache"):
        Reranker.load("vec-ai/lychee-rerank-mm")
