"""Scores equal the model card's code (tests/model_card.py, independent of the engine) within 2e-5.

The demo checkpoint's scores spread over [0, 1], so a change of positions, pixels or prompt moves a
score far beyond the tolerance (checked by mutation: dropping `mm_token_type_ids` or skipping
qwen-vl-utils makes these tests fail).
"""

from __future__ import annotations

import pytest

from imagegen import encode, photo
from model_card import ModelCardScorer

TOLERANCE = 2e-5
QUERY = "海边日落 sunset over the sea"


@pytest.fixture(scope="module")
def card(reranker):
    return ModelCardScorer(reranker.info.path)


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory):
    """Files of several sizes and formats, including a 4000x3000 phone-size JPEG and an odd-sized PNG."""
    folder = tmp_path_factory.mktemp("mixed")
    specs = [((4000, 3000), "JPEG"), ((333, 517), "PNG"), ((1024, 768), "JPEG"), ((97, 61), "PNG"),
             ((640, 1280), "WEBP"), ((250, 250), "JPEG")]
    paths = []
    for i, ((w, h), fmt) in enumerate(specs):
        path = folder / f"img{i}.{fmt.lower()}"
        path.write_bytes(encode(photo(w, h, seed=i + 10), fmt, **({"quality": 90} if fmt == "JPEG" else {})))
        paths.append(str(path))
    return paths


def test_the_checkpoint_scores_spread_so_the_comparison_can_see_a_difference(card, mixed_files):
    scores = card.scores(QUERY, mixed_files)
    assert max(scores) - min(scores) > 0.3


@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_scores_equal_the_model_card_on_mixed_sizes(reranker, card, mixed_files, mode):
    expected = card.scores(QUERY, mixed_files)
    ranking = reranker.rank(QUERY, mixed_files, mode=mode, token_budget=100_000)
    got = [r.score for r in ranking.results]
    assert got == pytest.approx(expected, abs=TOLERANCE), max(abs(a - b) for a, b in zip(got, expected))


@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_scores_equal_the_model_card_with_a_query_image_and_a_custom_instruction(reranker, card, mixed_files, mode):
    query_image = photo(300, 200, seed=77)
    instruction = "Retrieve images of the same scene."
    expected = card.scores("同一场景 the same scene", mixed_files[1:], query_image, instruction)
    ranking = reranker.rank(
        "同一场景 the same scene", mixed_files[1:], query_image=query_image, instruction=instruction,
        mode=mode, token_budget=100_000,
    )
    got = [r.score for r in ranking.results]
    assert got == pytest.approx(expected, abs=TOLERANCE), max(abs(a - b) for a, b in zip(got, expected))


def test_planned_visual_tokens_equal_what_the_processor_makes_on_odd_sizes(reranker, tmp_path):
    sizes = [(1, 1), (27, 29), (57, 3001), (4001, 2999), (5000, 26), (1, 199), (30000, 151)]
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = tmp_path / f"odd{i}.png"
        path.write_bytes(encode(photo(w, h, seed=i)))
        paths.append(str(path))
    ranking = reranker.rank("odd", paths, token_budget=100_000)
    from lychee_rerank.images import probe_image
    from lychee_rerank.scoring import PairScorer

    scorer = PairScorer(reranker.model, reranker.processor, "odd", None, None, reranker.min_pixels, reranker.max_pixels)
    for path, result in zip(paths, ranking.results):
        assert result.status == "scored", result.error
        planned = scorer.visual_tokens(probe_image(path))
        assert planned == result.visual_tokens  # result: counted from the processor's own grid
        assert result.model_width * result.model_height == result.visual_tokens * 28 * 28
