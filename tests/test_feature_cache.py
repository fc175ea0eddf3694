"""The vision-feature cache: rows built as the processor builds them, the same scores cold, warm and
without it (against the model card's own code), content keys, a bounded store shared by processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from cache_entries import entry, key_of
from imagegen import encode, photo
from lychee_rerank import feature_cache, scoring
from lychee_rerank.feature_cache import FeatureCache, Features
from lychee_rerank.images import probe_image
from lychee_rerank.preprocess import model_card_image, processor_pixels
from model_card import ModelCardScorer

ROOT = Path(__file__).resolve().parent.parent
QUERY = "海边日落 sunset over the sea"
TOLERANCE = 2e-5
# Odd sizes (sides not multiples of 28), a thin strip, and sizes that sort and pad differently.
SIZES = [(33, 77), (300, 220), (57, 1001), (120, 90), (64, 48)]


@pytest.fixture(scope="module")
def card(reranker):
    """The model card's own code (tests/model_card.py): shares nothing with the engine."""
    return ModelCardScorer(reranker.info.path)


@pytest.fixture
def files(tmp_path):
    """Photos of mixed sizes as PNG files (the cache keys on a file's bytes)."""
    paths = []
    for i, (w, h) in enumerate(SIZES):
        path = tmp_path / f"photo-{i}.png"
        path.write_bytes(encode(photo(w, h, seed=i)))
        paths.append(str(path))
    return paths


@pytest.fixture
def query_image(tmp_path):
    path = tmp_path / "query.png"
    path.write_bytes(encode(photo(90, 70, seed=77)))
    return str(path)


def scores_of(ranking):
    return [r.score for r in ranking.results]


class Spy:
    """Counts decoding (the model card's image path), the image processor and the vision tower."""

    def __init__(self, monkeypatch, reranker):
        self.calls = {"decode": 0, "processor": 0, "vision tower": 0}
        original_decode = scoring.model_card_image
        original_encode = reranker.model.get_image_features
        image_processor = type(reranker.processor.image_processor)
        original_process = image_processor.__call__

        def decode(*args, **kwargs):
            self.calls["decode"] += 1
            return original_decode(*args, **kwargs)

        def process(processor, *args, **kwargs):
            self.calls["processor"] += 1
            return original_process(processor, *args, **kwargs)

        def encode_images(*args, **kwargs):
            self.calls["vision tower"] += 1
            return original_encode(*args, **kwargs)

        monkeypatch.setattr(scoring, "model_card_image", decode)
        monkeypatch.setattr(image_processor, "__call__", process)
        monkeypatch.setattr(reranker.model, "get_image_features", encode_images)

    def reset(self) -> dict:
        calls, self.calls = self.calls, dict.fromkeys(self.calls, 0)
        return calls


# -- rows -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_query_image", [False, True])
def test_rows_are_bit_identical_to_the_processors_output_from_pixels_and_from_the_cache(
    reranker, files, query_image, tmp_path, with_query_image
):
    """Every processor output, from one call of the processor on the whole pair, equals the row the
    engine builds, whether its image was preprocessed or came from the cache."""
    settings = reranker.settings(QUERY, query_image=query_image if with_query_image else None, cache_dir=tmp_path / "c")
    scorer = reranker._scorer(settings)
    try:
        query_pixels = [processor_pixels(model_card_image(Image.open(query_image)))] if with_query_image else []
        for index, path in enumerate(files):
            item = scorer.plan(index, path, path, probe_image(path))
            expected = reranker.processor(
                text=[scorer.prompt], images=[query_pixels + [processor_pixels(model_card_image(path))]],
                padding=True, return_tensors="pt", size=scorer.size, input_data_format="channels_first",
            )
            fresh = scorer.prepare_row(item)
            assert fresh.cached is False
            for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
                assert fresh.inputs[key].dtype == expected[key].dtype, key
                assert torch.equal(fresh.inputs[key], expected[key]), key
            candidate_patches = expected["image_grid_thw"][-1].prod()
            assert torch.equal(fresh.images[-1].pixel_values, expected["pixel_values"][-candidate_patches:])
            assert fresh.visual_tokens == item.visual_tokens  # what the batching planned with
            features = torch.randn(int(candidate_patches) // 4, 64)
            scorer.cache.store.put(fresh.images[-1].key, Features(features, fresh.images[-1].grid))
            from_cache = scorer.prepare_row(item)
            assert from_cache.cached is True and torch.equal(from_cache.images[-1].features, features)
            for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
                assert torch.equal(from_cache.inputs[key], expected[key]), key
    finally:
        scorer.close()


# -- exactness ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_scores_cold_warm_and_without_the_cache_equal_the_model_card(reranker, card, files, query_image, tmp_path,
                                                                     monkeypatch, mode):
    expected = card.scores(QUERY, files, query_image)
    spy = Spy(monkeypatch, reranker)
    cache = tmp_path / "features"
    options = dict(mode=mode, token_budget=100_000, query_image=query_image)
    plain = reranker.rank(QUERY, files, **options)
    spy.reset()
    cold = reranker.rank(QUERY, files, cache=cache, **options)
    cold_calls = spy.reset()
    events = []
    warm = reranker.rank(QUERY, files, cache=cache, progress=events.append, **options)
    warm_calls = spy.reset()
    for ranking in (plain, cold, warm):
        assert scores_of(ranking) == pytest.approx(expected, abs=TOLERANCE)
    assert scores_of(warm) == pytest.approx(scores_of(plain), abs=TOLERANCE)
    assert scores_of(cold) == pytest.approx(scores_of(plain), abs=TOLERANCE)
    assert (plain.cache_hits, plain.cache_misses) == (None, None)
    assert (cold.cache_hits, cold.cache_misses) == (0, len(files))
    assert (warm.cache_hits, warm.cache_misses) == (len(files), 0)
    assert cold_calls["vision tower"] >= 1 and cold_calls["decode"] == len(files) + 1  # + the query image
    # Warm: the images (and the query image) are never decoded, preprocessed or encoded again.
    assert warm_calls == {"decode": 0, "processor": 0, "vision tower": 0}
    assert events[-1].cache_hits == len(files) and f"cache {len(files)} hits, 0 misses" in events[-1].describe()


def test_a_file_replaced_by_other_bytes_with_the_same_name_size_and_mtime_gets_a_fresh_score(reranker, tmp_path):
    path = tmp_path / "photo.bmp"  # BMPs of one size are of one length
    old, new = encode(photo(70, 50, seed=1), "BMP"), encode(photo(70, 50, seed=2), "BMP")
    assert len(old) == len(new) and old != new
    path.write_bytes(old)
    stamp = os.stat(path).st_mtime_ns
    first = reranker.rank(QUERY, [str(path)], cache=tmp_path / "c")
    with open(path, "r+b") as file:  # rewritten in place: the same inode too
        file.write(new)
    os.utime(path, ns=(stamp, stamp))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (len(old), stamp)
    second = reranker.rank(QUERY, [str(path)], cache=tmp_path / "c")
    fresh = reranker.rank(QUERY, [str(path)])
    assert second.cache_misses == 1
    assert second.results[0].score == pytest.approx(fresh.results[0].score, abs=TOLERANCE)
    assert abs(second.results[0].score - first.results[0].score) > 10 * TOLERANCE  # not the stale score


def test_a_corrupt_or_truncated_entry_is_discarded_and_recomputed(reranker, files, tmp_path):
    cache = tmp_path / "features"
    plain = reranker.rank(QUERY, files)
    reranker.rank(QUERY, files, cache=cache)
    entries = sorted(cache.glob("*/*.safetensors"))
    assert len(entries) == len(files)
    truncated, flipped = entries[0], entries[1]
    truncated.write_bytes(truncated.read_bytes()[:-100])
    data = bytearray(flipped.read_bytes())
    data[-5] ^= 0xFF  # one bit pattern in the features: the header still parses, the checksum does not
    flipped.write_bytes(bytes(data))
    again = reranker.rank(QUERY, files, cache=cache)
    assert (again.cache_hits, again.cache_misses) == (len(files) - 2, 2)
    assert scores_of(again) == pytest.approx(scores_of(plain), abs=TOLERANCE)
    third = reranker.rank(QUERY, files, cache=cache)  # the two were written again, whole
    assert third.cache_hits == len(files)


def test_another_resolution_or_preprocessing_never_reads_the_entries_of_another(reranker, files, tmp_path):
    cache = tmp_path / "features"
    reranker.rank(QUERY, files, cache=cache)
    smaller = reranker.rank(QUERY, files, cache=cache, max_pixels=64 * 28 * 28)
    fast = reranker.rank(QUERY, files, cache=cache, preprocess="fast")
    assert smaller.cache_misses == len(files) and fast.cache_misses == len(files)


def test_the_vision_identity_follows_the_vision_towers_weights_only(reranker):
    model, processor = reranker.model, reranker.processor
    before = feature_cache.vision_identity(model, processor)
    language = model.model.language_model.layers[0].mlp.up_proj.weight
    vision = model.model.visual.patch_embed.proj.weight
    for weight, index, same in ((language, (0, 0), True), (vision, (0, 0, 0, 0, 0), False)):
        kept = weight[index].item()
        with torch.no_grad():
            weight[index] = kept + 1.0
            try:
                assert (feature_cache.vision_identity(model, processor) == before) is same
            finally:
                weight[index] = kept  # restored exactly: the session's model is shared
    assert feature_cache.vision_identity(model, processor) == before


# -- the store ------------------------------------------------------------------------------------
def test_past_its_size_limit_the_store_evicts_the_least_recently_used_entries(tmp_path):
    keys = [key_of(name) for name in "abcd"]
    size = len(feature_cache._encode(entry(keys[0]), keys[0]))
    store = FeatureCache(tmp_path, limit=int(3.5 * size))
    for i, key in enumerate(keys[:3]):
        store.put(key, entry(key))
        os.utime(store.path(key), (1_000_000 + i, 1_000_000 + i))  # a, then b, then c
    assert store.get(keys[0]) is not None  # a is used again: b is now the least recently used
    store.put(keys[3], entry(keys[3]))
    assert [store.path(k).exists() for k in keys] == [True, False, True, True]
    assert store.size() <= 3.5 * size


def test_an_entry_of_another_key_is_never_served(tmp_path):
    store = FeatureCache(tmp_path)
    a, b = key_of("a"), key_of("b")
    store.put(a, entry(a))
    store.path(b).parent.mkdir(exist_ok=True)
    os.replace(store.path(a), store.path(b))  # a misplaced file
    assert store.get(b) is None and not store.path(b).exists()


_WRITER = """
import sys, torch
sys.path.insert(0, sys.argv[3])
from cache_entries import entry, key_of
from lychee_rerank.feature_cache import FeatureCache
store = FeatureCache(sys.argv[1], limit=int(sys.argv[4]))
for round in range(3):
    for name in [f"shared-{i}" for i in range(12)] + [f"{sys.argv[2]}-{i}" for i in range(12)]:
        key = key_of(name)
        store.put(key, entry(key))
        found = store.get(key_of(f"shared-{(round * 5) % 12}"))
        if found is not None:
            expected = entry(key_of(f"shared-{(round * 5) % 12}"))
            assert torch.equal(found.features, expected.features), "a reader saw a wrong entry"
"""


def test_two_processes_writing_at_once_leave_only_whole_entries_under_the_limit(tmp_path):
    size = len(feature_cache._encode(entry(key_of("x")), key_of("x")))
    limit = 20 * size  # less than the 36 distinct entries written: eviction runs in both processes
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), name, str(ROOT / "tests"), str(limit)],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stderr=subprocess.PIPE, text=True)
        for name in ("first", "second")
    ]
    for writer in writers:
        _, errors = writer.communicate(timeout=240)
        assert writer.returncode == 0, errors
    store = FeatureCache(tmp_path, limit=limit)
    names = [f"shared-{i}" for i in range(12)] + [f"{w}-{i}" for w in ("first", "second") for i in range(12)]
    kept = 0
    for name in names:
        found = store.get(key_of(name))
        if found is not None:
            kept += 1
            assert torch.equal(found.features, entry(key_of(name)).features)
    assert kept >= 1 and not list(tmp_path.glob("*/*.partial"))
    assert store.size() <= limit + 2 * size  # each process may overshoot by the entry it is writing


# -- front ends -----------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lychee_rerank", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)


def test_the_cli_reports_hits_and_misses_and_a_second_question_gets_the_scores_of_no_cache(files, tmp_path):
    cache, outputs = tmp_path / "features", {}
    for name, query, flags in (("first", "sunset", ["--cache", str(cache)]),
                               ("second", "一只猫 a cat", ["--cache", str(cache)]),
                               ("plain", "一只猫 a cat", ["--no-cache"])):
        result = run_cli("rank", "--model", "demo", "--query", query, *files, "--json", str(tmp_path / f"{name}.json"), *flags)
        assert result.returncode == 0, result.stderr
        outputs[name] = (result.stderr, json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8")))
    assert f"feature cache 0 hits, {len(files)} misses" in outputs["first"][0]
    assert f"feature cache {len(files)} hits, 0 misses" in outputs["second"][0]
    assert "feature cache" not in outputs["plain"][0]
    second, plain = outputs["second"][1], outputs["plain"][1]
    assert (second["cache_hits"], second["cache_misses"], second["cache_dir"]) == (len(files), 0, str(cache))
    assert (plain["cache_hits"], plain["cache_misses"], plain["cache_dir"]) == (None, None, None)
    by_file = {row["file"]: row["score"] for row in plain["results"]}
    assert {row["file"]: row["score"] for row in second["results"]} == pytest.approx(by_file, abs=TOLERANCE)


def test_a_cache_folder_that_cannot_be_used_is_a_bad_invocation(files, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    result = run_cli("rank", "--model", "demo", "--query", "sunset", files[0], "--cache", str(not_a_folder))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"lychee-rerank: --cache: the feature cache folder {not_a_folder} is a file, not a folder"]


def test_a_cache_folder_that_is_a_file_is_refused_in_one_sentence_before_any_work(reranker, files, tmp_path):
    from lychee_rerank import InputError

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(InputError, match=r"^the feature cache folder .* is a file, not a folder$"):
        reranker.rank(QUERY, files[:1], cache=not_a_folder)
