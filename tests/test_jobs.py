"""Several runs in one pass (Reranker.run_jobs, what the service's concurrent requests use): rows of
different queries share forwards, and each run's scores are those it gets alone -- and the model
card's (tests/model_card.py, independent of the engine)."""

from __future__ import annotations

import threading

import pytest

from imagegen import encode, photo
from lychee_rerank import InputError
from lychee_rerank.jobs import Job, JobsScorer
from model_card import ModelCardScorer

TOLERANCE = 2e-5
BIG_BUDGET = 100_000  # far above one image: on CPU the engine would otherwise run one image per forward


@pytest.fixture(scope="module")
def card(reranker):
    return ModelCardScorer(reranker.info.path)


def images(seed: int, count: int = 4):
    return [photo(48 + 13 * i, 40 + 9 * (i % 3), seed=seed + i) for i in range(count)]


def scores(ranking):
    return [r.score for r in ranking.results]


def test_runs_sharing_forwards_score_as_each_alone_and_as_the_model_card(reranker, card, monkeypatch):
    query_picture = photo(64, 64, seed=99)
    first = reranker.settings("a red bicycle", token_budget=BIG_BUDGET)
    second = reranker.settings("海边日落", query_image=query_picture, instruction="Find the same place.",
                               token_budget=BIG_BUDGET)
    batches = []
    original = JobsScorer.collate

    def spy(self, rows):
        batches.append({row.item.job for row in rows})
        return original(self, rows)

    monkeypatch.setattr(JobsScorer, "collate", spy)
    together = reranker.run_jobs([Job(first, images(1)), Job(second, images(20))])
    assert any(len(jobs) == 2 for jobs in batches), "no forward held rows of both runs"
    monkeypatch.undo()

    alone = [reranker.run(first, images(1)), reranker.run(second, images(20))]
    expected = [card.scores("a red bicycle", images(1)),
                card.scores("海边日落", images(20), query_image=query_picture, instruction="Find the same place.")]
    for shared, single, reference in zip(together, alone, expected):
        assert shared.error is None and not shared.cancelled
        assert scores(shared) == pytest.approx(scores(single), abs=TOLERANCE)
        assert scores(shared) == pytest.approx(reference, abs=TOLERANCE)
        assert all(r.tokens and r.tokens > r.visual_tokens for r in shared.results)


def test_a_run_stopped_on_its_own_leaves_its_images_pending_while_the_other_is_scored(reranker):
    stop = threading.Event()
    settings = reranker.settings("a cat", token_budget=1)  # one image per forward: the stop lands mid-pass

    def stop_after_the_first_image(event):
        if event.new_results:
            stop.set()

    stopped, other = reranker.run_jobs([
        Job(settings, images(1, 5), should_stop=stop),
        Job(settings, images(30, 5), progress=stop_after_the_first_image),
    ])
    assert stopped.cancelled and stopped.pending
    assert len(stopped.scored) < 5
    assert not other.cancelled and len(other.scored) == 5


def test_runs_sharing_a_pass_store_their_features_and_reuse_them_with_the_same_scores(reranker, tmp_path):
    """The feature cache (a forward stores what it computed, each row under its own run's key)."""
    query_picture = encode(photo(64, 64, seed=98))
    first = reranker.settings("a cat", token_budget=BIG_BUDGET, cache_dir=str(tmp_path))
    second = reranker.settings("海边日落", query_image=query_picture, token_budget=BIG_BUDGET, cache_dir=str(tmp_path))
    files = [[encode(p) for p in images(1)], [encode(p) for p in images(20)]]

    def both():
        return reranker.run_jobs([Job(first, files[0]), Job(second, files[1])])

    computed, reused = both(), both()
    for fresh, again in zip(computed, reused):
        assert [r.cached for r in fresh.results] == [False] * 4
        assert [r.cached for r in again.results] == [True] * 4
        assert scores(again) == pytest.approx(scores(fresh), abs=TOLERANCE)


def test_runs_that_execute_differently_cannot_share_a_pass(reranker):
    with pytest.raises(InputError, match="share the mode"):
        reranker.run_jobs([Job(reranker.settings("a", mode="sequential"), images(1, 1)),
                           Job(reranker.settings("b", mode="batched"), images(2, 1))])
