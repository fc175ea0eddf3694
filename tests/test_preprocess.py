"""What the processor is given: the exact path's pixels handed over cheaply, and the opt-in fast path
(large JPEGs decoded at a reduced DCT scale, planned exactly, scored closely)."""

from __future__ import annotations

import pytest
import torch

from imagegen import encode, photo
from lychee_rerank.images import load_image, probe_image
from lychee_rerank.preprocess import jpeg_draft_size, processor_pixels

QUERY = "海边日落 sunset over the sea"


@pytest.fixture(scope="module")
def phone_jpegs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phone")
    paths = []
    for i, (w, h) in enumerate([(4032, 3024), (3024, 4032), (2000, 1500), (640, 480)]):
        path = folder / f"phone{i}.jpg"
        path.write_bytes(encode(photo(w, h, seed=i), "JPEG", quality=90))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("size", [(28, 28), (56, 5600), (812, 1204), (4032, 3024)])
def test_the_processor_makes_the_same_inputs_of_the_handed_over_pixels_as_of_the_image(reranker, size):
    image = photo(*size, seed=7)
    processor = reranker.processor
    expected = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[[image]], return_tensors="pt")
    handed_over = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>"],
        images=[[processor_pixels(image)]],
        return_tensors="pt",
        input_data_format="channels_first",
    )
    assert expected.keys() == handed_over.keys()
    for key in expected:
        assert torch.equal(expected[key], handed_over[key]), key


def test_only_rgb_images_are_handed_over():
    with pytest.raises(ValueError, match="RGB"):
        processor_pixels(photo(40, 30).convert("L"))


@pytest.mark.parametrize("target", [(1148, 840), (1009, 756), (200, 150), (4032, 3024)])
def test_the_planned_draft_size_is_what_libjpeg_decodes(phone_jpegs, target):
    assert load_image(phone_jpegs[0], reduce_to=target).size == jpeg_draft_size(4032, 3024, target)


def test_fast_path_plans_the_tokens_the_processor_makes_and_scores_close_to_exact(reranker, phone_jpegs):
    exact = reranker.rank(QUERY, phone_jpegs, preprocess="exact", token_budget=100_000)
    fast = reranker.rank(QUERY, phone_jpegs, preprocess="fast", token_budget=100_000)
    assert [r.status for r in fast.results] == ["scored"] * len(phone_jpegs)
    assert [r.visual_tokens for r in fast.results] == [r.visual_tokens for r in exact.results]
    # Different pixels (a reduced-scale decode), the same image: close, not identical.
    assert [r.score for r in fast.results] == pytest.approx([r.score for r in exact.results], abs=0.05)
    # The small JPEG is decoded at full size either way: identical.
    assert fast.results[3].score == exact.results[3].score


def test_fast_path_leaves_other_formats_on_the_exact_path(reranker, tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(photo(2400, 1800, seed=3)))
    exact = reranker.rank(QUERY, [str(path)], preprocess="exact")
    fast = reranker.rank(QUERY, [str(path)], preprocess="fast")
    assert fast.results[0].score == exact.results[0].score
    assert probe_image(str(path)).format == "PNG"


def test_an_unknown_preprocessing_is_refused_in_one_sentence(reranker, phone_jpegs):
    from lychee_rerank import InputError

    with pytest.raises(InputError, match="unknown preprocessing 'turbo'"):
        reranker.rank(QUERY, phone_jpegs[:1], preprocess="turbo")
