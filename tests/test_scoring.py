"""The scoring recipe and the two execution modes, on the demo model (float32, CPU)."""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image

from imagegen import photo
from lychee_rerank import DEFAULT_INSTRUCTION, InputError
from lychee_rerank.execution import TokenBudget
from lychee_rerank.prompt import render_prompt
from model_card import ModelCardScorer

QUERY = "海边日落 sunset over the sea"
TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def card(reranker):
    """The model card's own code (tests/model_card.py): shares nothing with the engine."""
    return ModelCardScorer(reranker.info.path)


def reference_scores(card, query, images, instruction=None, query_image=None):
    if instruction is None:
        return card.scores(query, images, query_image)
    return card.scores(query, images, query_image, instruction)


def scores_of(ranking):
    return [r.score for r in ranking.results]


def test_prompt_is_the_lychee_recipe_rendered_with_the_models_chat_template(reranker):
    text = render_prompt(reranker.processor, "一只猫 a cat", "Find product photos.")
    assert text == (
        "<|im_start|>system\n"
        "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
        'Note that the answer can only be "yes" or "no".<|im_end|>\n'
        "<|im_start|>user\n"
        "<Instruct>: Find product photos.<Query>:一只猫 a cat\n<Document>:"
        "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_query_image_sits_between_query_label_and_query_text(reranker):
    text = render_prompt(reranker.processor, "red sneakers", None, with_query_image=True)
    assert (
        f"<Instruct>: {DEFAULT_INSTRUCTION}<Query>:<|vision_start|><|image_pad|><|vision_end|>red sneakers\n"
        "<Document>:<|vision_start|><|image_pad|><|vision_end|><|im_end|>" in text
    )


def test_blank_instruction_falls_back_to_the_default(reranker, card, some_photos):
    ranking = reranker.rank(QUERY, some_photos[:2], instruction="   ")
    assert ranking.instruction == DEFAULT_INSTRUCTION
    assert scores_of(ranking) == pytest.approx(reference_scores(card, QUERY, some_photos[:2]), abs=TOLERANCE)


@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_scores_equal_the_model_card_one_image_at_a_time_or_batched(reranker, card, some_photos, mode):
    expected = reference_scores(card, QUERY, some_photos)
    ranking = reranker.rank(QUERY, some_photos, mode=mode)
    assert ranking.mode == mode
    assert scores_of(ranking) == pytest.approx(expected, abs=TOLERANCE)
    assert all(0.0 <= s <= 1.0 for s in scores_of(ranking))


def test_query_image_and_custom_instruction_are_scored_like_the_model_card(reranker, card, some_photos):
    query_image = photo(80, 60, seed=99)
    instruction = "Retrieve images of the same product."
    expected = reference_scores(card, "同款 same item", some_photos[:4], instruction, query_image)
    ranking = reranker.rank("同款 same item", some_photos[:4], instruction=instruction, query_image=query_image)
    assert scores_of(ranking) == pytest.approx(expected, abs=TOLERANCE)


def test_sequential_and_batched_modes_agree(reranker, some_photos):
    sequential = reranker.rank(QUERY, some_photos, mode="sequential")
    batched = reranker.rank(QUERY, some_photos, mode="batched", token_budget=100_000)
    assert scores_of(batched) == pytest.approx(scores_of(sequential), abs=TOLERANCE)


def test_results_come_back_in_input_order_with_ranks_by_score(reranker, some_photos):
    names = [f"photo-{i}.png" for i in range(len(some_photos))]
    ranking = reranker.rank(QUERY, some_photos, names=names, token_budget=100_000)
    assert [r.index for r in ranking.results] == list(range(len(some_photos)))
    assert [r.name for r in ranking.results] == names
    assert [(r.width, r.height) for r in ranking.results] == [im.size for im in some_photos]
    ordered = ranking.ranked()
    assert [r.rank for r in ordered] == list(range(1, len(some_photos) + 1))
    assert [r.score for r in ordered] == sorted(scores_of(ranking), reverse=True)


def test_batched_mode_packs_several_images_per_forward(reranker, some_photos):
    rows_per_forward = []
    original = reranker.model.forward

    def counting_forward(*args, **kwargs):
        rows_per_forward.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    reranker.model.forward = counting_forward
    try:
        reranker.rank(QUERY, some_photos, mode="batched", token_budget=100_000)
    finally:
        del reranker.model.forward
    assert sum(rows_per_forward) == len(some_photos)
    assert max(rows_per_forward) > 1


def test_only_the_answer_positions_logits_are_computed(reranker, some_photos):
    shapes = []
    original = reranker.model.forward

    def recording_forward(*args, **kwargs):
        output = original(*args, **kwargs)
        shapes.append(tuple(output.logits.shape))
        return output

    reranker.model.forward = recording_forward
    try:
        reranker.rank(QUERY, some_photos[:3], token_budget=100_000)
    finally:
        del reranker.model.forward
    assert shapes and all(shape[1] == 1 for shape in shapes)


class WrappedForward:
    """Inside a with-block, the model's forward is this object's ``__call__``."""

    def __init__(self, model):
        self.model, self.original = model, model.forward

    def __enter__(self):
        self.model.forward = self
        return self

    def __exit__(self, *exc):
        del self.model.forward


class OutOfMemoryAbove(WrappedForward):
    """Raises CUDA's out-of-memory error for batches above ``max_rows``."""

    def __init__(self, model, max_rows: int, always_fail_width: int | None = None):
        super().__init__(model)
        self.max_rows = max_rows
        self.always_fail_width = always_fail_width
        self.scored_rows: list[int] = []  # image_grid_thw row count of each successful forward
        self.failures = 0

    def __call__(self, *args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        widths = kwargs["image_grid_thw"][:, 2].tolist()
        if rows > self.max_rows or (self.always_fail_width is not None and self.always_fail_width in widths):
            self.failures += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.scored_rows.append(rows)
        return self.original(*args, **kwargs)


def test_out_of_memory_halves_the_batch_and_scores_every_image_exactly_once(reranker, card, some_photos):
    expected = reference_scores(card, QUERY, some_photos)
    with OutOfMemoryAbove(reranker.model, max_rows=2) as injected:
        ranking = reranker.rank(QUERY, some_photos, mode="batched", token_budget=100_000)
    assert injected.failures >= 1
    assert sum(injected.scored_rows) == len(some_photos)  # each image in exactly one successful forward
    assert max(injected.scored_rows) <= 2
    assert [r.status for r in ranking.results] == ["scored"] * len(some_photos)
    assert scores_of(ranking) == pytest.approx(expected, abs=TOLERANCE)


def test_an_image_too_big_even_alone_gets_an_error_and_the_run_goes_on(reranker, some_photos):
    # 300x220 is the only photo whose patch grid is 22 wide at these settings: it always "runs out of memory".
    big = some_photos.index(max(some_photos, key=lambda im: im.width * im.height))
    with OutOfMemoryAbove(reranker.model, max_rows=3, always_fail_width=22):
        ranking = reranker.rank(QUERY, some_photos, mode="batched", token_budget=100_000)
    statuses = [r.status for r in ranking.results]
    assert statuses[big] == "error" and "memory" in ranking.results[big].error
    assert statuses.count("scored") == len(some_photos) - 1


def test_sequential_mode_runs_one_image_per_forward(reranker, some_photos):
    with OutOfMemoryAbove(reranker.model, max_rows=1) as injected:
        ranking = reranker.rank(QUERY, some_photos, mode="sequential")
    assert injected.failures == 0
    assert injected.scored_rows == [1] * len(some_photos)
    assert len(ranking.scored) == len(some_photos)


@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_stopping_mid_run_keeps_the_finished_scores(reranker, some_photos, mode):
    stop = threading.Event()
    events = []

    def on_progress(event):
        events.append(event)
        if event.done >= 2:
            stop.set()

    ranking = reranker.rank(QUERY, some_photos, mode=mode, token_budget=400, progress=on_progress, should_stop=stop)
    assert ranking.cancelled
    finished = [r for r in ranking.results if r.status == "scored"]
    assert 2 <= len(finished) < len(some_photos)
    assert len(ranking.pending) == len(some_photos) - len(finished)
    # What was reported as finished is exactly what the ranking keeps.
    reported = {r.index: r.score for e in events for r in e.new_results}
    assert reported == {r.index: r.score for r in finished}


def test_progress_reports_counts_rate_and_eta(reranker, some_photos):
    events = []
    reranker.rank(QUERY, some_photos, mode="sequential", progress=events.append)
    started, events = events[0], events[1:]
    assert started.done == 0 and not started.waiting  # the run has the model: no longer waiting
    assert [e.done for e in events] == list(range(1, len(some_photos) + 1))
    assert all(e.total == len(some_photos) for e in events)
    assert all(e.images_per_s > 0 for e in events)
    assert events[0].eta_s is not None and events[-1].done == events[-1].total
    assert "/8 · " in events[0].describe() and "img/s" in events[0].describe()


def test_empty_query_without_query_image_is_refused_with_a_sentence(reranker, some_photos):
    with pytest.raises(InputError, match="query"):
        reranker.rank("   ", some_photos[:1])


def test_unknown_mode_is_refused(reranker, some_photos):
    with pytest.raises(InputError, match="mode"):
        reranker.rank(QUERY, some_photos[:1], mode="turbo")


def test_fewer_pixels_mean_fewer_visual_tokens(reranker):
    image = photo(640, 480)
    full = reranker.rank(QUERY, [image]).results[0]
    small = reranker.rank(QUERY, [image], max_pixels=64 * 28 * 28).results[0]
    assert small.visual_tokens <= 64 < full.visual_tokens


def test_token_budget_halves_on_failure_and_grows_back_after_a_few_successes():
    budget = TokenBudget(1000)
    budget.shrink(800)
    assert budget.tokens == 400
    budget.success(400)
    assert budget.tokens == 720  # grows back at once, first up to just under what failed
    for _ in range(30):
        budget.success(720)
    assert budget.tokens == 1000  # a long run of successes forgets a transient failure


def test_token_budget_never_drops_its_ceiling_below_a_size_that_succeeded():
    budget = TokenBudget(1000)
    budget.success(1000)
    for failed in (1000, 500, 250, 125):  # transient failures in a row
        budget.shrink(failed)
    budget.success(62)
    budget.success(124)
    budget.success(248)
    budget.success(496)
    assert budget.tokens >= 900  # back near the size that worked, four forwards after the failures


class PickyProcessor:
    """The model's processor, except that its image processor rejects images of one size."""

    def __init__(self, processor, odd_size):
        self._processor, self.image_processor = processor, PickyImageProcessor(processor.image_processor, odd_size)

    def __getattr__(self, name):
        return getattr(self._processor, name)


class PickyImageProcessor:
    def __init__(self, image_processor, odd_size):
        self._image_processor, self._odd_size = image_processor, odd_size

    def __getattr__(self, name):
        return getattr(self._image_processor, name)

    def __call__(self, *args, images=None, **kwargs):
        if any(_size(image) == self._odd_size for image in images):
            raise ValueError("unsupported image")
        return self._image_processor(*args, images=images, **kwargs)


def _size(image) -> tuple[int, int]:
    """(width, height) of a PIL image or of a channels-first tensor."""
    return image.size if isinstance(image, Image.Image) else (image.shape[-1], image.shape[-2])


def test_an_image_the_processor_rejects_fails_alone_and_its_batch_is_still_scored(reranker, some_photos, monkeypatch):
    from lychee_rerank.preprocess import model_card_size

    odd_size = model_card_size(*some_photos[3].size)  # the size the processor is given for photo 3
    monkeypatch.setattr(reranker, "processor", PickyProcessor(reranker.processor, odd_size))
    ranking = reranker.rank(QUERY, some_photos, mode="batched", token_budget=100_000)
    statuses = [r.status for r in ranking.results]
    assert statuses[3] == "error" and "could not be preprocessed" in ranking.results[3].error
    assert statuses.count("scored") == len(some_photos) - 1


class FailingForward(WrappedForward):
    """The forwards numbered in ``failing`` (1-based) raise ``error``."""

    def __init__(self, model, error: BaseException, failing: set[int]):
        super().__init__(model)
        self.error, self.failing, self.calls = error, failing, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls in self.failing:
            raise self.error
        return self.original(*args, **kwargs)


def ten_photos():
    return [photo(40 + 7 * i, 30 + 5 * i, seed=i) for i in range(10)]


def test_an_unexpected_error_in_a_forward_keeps_the_finished_scores_and_names_the_error(reranker):
    with FailingForward(reranker.model, RuntimeError("device-side assert triggered"), {4}):
        ranking = reranker.rank(QUERY, ten_photos(), mode="sequential")
    assert [r.status for r in ranking.results] == ["scored"] * 3 + ["pending"] * 7
    assert "device-side assert triggered" in ranking.error and "RuntimeError" in ranking.error


@pytest.mark.parametrize("where", ["progress", "should_stop"])
def test_an_error_in_a_callback_keeps_the_finished_scores(reranker, some_photos, where):
    calls = []

    def explode(*_):
        calls.append(1)
        if len(calls) == 4:
            raise KeyError("callback bug")
        return False

    kwargs = {"progress": explode} if where == "progress" else {"should_stop": explode}
    ranking = reranker.rank(QUERY, some_photos, mode="sequential", **kwargs)
    assert "KeyError" in ranking.error
    assert 1 <= len(ranking.scored) < len(some_photos)
    assert len(ranking.scored) + len(ranking.pending) == len(some_photos)


def test_the_cpu_allocators_failure_is_treated_as_out_of_memory(reranker, some_photos):
    error = RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")
    with FailingForward(reranker.model, error, {1}) as injected:
        ranking = reranker.rank(QUERY, some_photos, mode="batched", token_budget=100_000)
    assert ranking.error is None and len(ranking.scored) == len(some_photos)
    assert injected.calls > 1


def test_transient_out_of_memory_at_the_start_still_scores_every_image(reranker):
    photos = [photo(60, 60, seed=i) for i in range(11)]
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with FailingForward(reranker.model, oom, set(range(1, 7))) as injected:
        ranking = reranker.rank(QUERY, photos, mode="batched", token_budget=100_000)
    assert injected.calls > 6
    assert [r.status for r in ranking.results] == ["scored"] * 11


def test_batches_grow_back_within_about_ten_forwards_after_transient_out_of_memory(reranker):
    photos = [photo(56, 56, seed=i) for i in range(120)]
    rows_per_forward, lengths = [], []
    original = reranker.model.forward
    oom = torch.OutOfMemoryError("CUDA out of memory.")

    def measuring(*args, **kwargs):
        lengths.append(kwargs["input_ids"].shape[1])
        return original(*args, **kwargs)

    reranker.model.forward = measuring
    try:
        reranker.rank(QUERY, photos[:1])
    finally:
        del reranker.model.forward

    def flaky(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        rows_per_forward.append(rows)
        if 2 <= len(rows_per_forward) <= 7:  # six transient failures after one good batch
            raise oom
        return original(*args, **kwargs)

    reranker.model.forward = flaky
    try:
        ranking = reranker.rank(QUERY, photos, mode="batched", token_budget=16 * lengths[0])
    finally:
        del reranker.model.forward
    assert len(ranking.scored) == 120
    largest = rows_per_forward[0]
    assert largest == 16
    after = rows_per_forward[7:]
    assert max(after[:10]) >= largest // 2


def test_an_image_out_of_memory_alone_is_retried_once_at_the_end(reranker, some_photos):
    # The first forward (sequential: the first image alone) fails once; the retry at the end succeeds.
    oom = torch.OutOfMemoryError("CUDA out of memory.")
    events = []
    with FailingForward(reranker.model, oom, {1}):
        ranking = reranker.rank(QUERY, some_photos, mode="sequential", progress=events.append)
    assert [r.status for r in ranking.results] == ["scored"] * len(some_photos)
    finished_last = [r.index for e in events for r in e.new_results][-1]
    assert finished_last == 0


def test_a_query_longer_than_the_model_was_trained_on_is_refused_in_one_sentence(reranker, some_photos):
    with pytest.raises(InputError, match="too long.*3,200 tokens"):
        reranker.rank("sunset over the sea " * 2000, some_photos[:1])


def test_waiting_runs_are_told_their_place_in_the_queue_and_waiting_is_not_ranking_time(reranker, some_photos):
    first_started, release_first = threading.Event(), threading.Event()
    events = {"second": [], "third": []}
    results = {}

    def hold(event):
        first_started.set()
        release_first.wait(timeout=30)

    first = threading.Thread(target=lambda: reranker.rank(QUERY, some_photos[:1], mode="sequential", progress=hold))
    first.start()
    assert first_started.wait(timeout=30)

    def run(name):
        results[name] = reranker.rank(QUERY, some_photos[:1], progress=events[name].append)

    def start_queued(name):
        """Start a run and wait until it has reported its place in the queue."""
        thread = threading.Thread(target=run, args=(name,))
        thread.start()
        for _ in range(200):
            if events[name]:
                break
            threading.Event().wait(0.02)
        return thread

    second = start_queued("second")
    third = start_queued("third")
    threading.Event().wait(0.5)  # waiting time that must not count as ranking time
    release_first.set()
    for thread in (first, second, third):
        thread.join(timeout=60)
    assert events["second"][0].waiting and events["second"][0].queue_position == 1
    assert events["third"][0].waiting and events["third"][0].queue_position == 2
    assert any(e.waiting and e.queue_position == 1 for e in events["third"])  # moved up when the first ended
    assert "place 2 in the queue" in events["third"][0].describe()
    assert results["third"].elapsed_s < 0.5


def test_eta_is_weighted_by_work_not_by_image_count():
    from lychee_rerank.execution import ProgressClock

    clock = ProgressClock(total=4, total_work=1000)
    clock.start -= 10  # 10 s spent on the first image, which was 700 of the 1000 tokens of work
    _, _, eta = clock.advance(1, 700)
    assert eta == pytest.approx(300 / 70, rel=0.05)  # not 3 images x 10 s


@pytest.mark.parametrize("workers", [1, 3])
def test_any_number_of_preprocessing_workers_gives_the_same_scores_in_input_order(reranker, some_photos, workers):
    baseline = reranker.rank(QUERY, some_photos, token_budget=100_000, workers=2)
    ranking = reranker.rank(QUERY, some_photos, token_budget=100_000, workers=workers)
    assert [r.index for r in ranking.results] == list(range(len(some_photos)))
    assert scores_of(ranking) == scores_of(baseline)


def test_preprocessing_runs_a_bounded_number_of_images_ahead():
    from lychee_rerank.pipeline import RowFeeder

    live, peak, lock = set(), [0], threading.Lock()

    def prepare(item):
        with lock:
            live.add(item)
            peak[0] = max(peak[0], len(live))
        return item

    items = list(range(200))
    with RowFeeder(items, prepare, workers=4, window=6) as feeder:
        for item in items:
            assert feeder.get(item) == item
            with lock:
                live.discard(item)
            feeder.release(item)
    assert peak[0] <= 7  # the window, plus the one being waited for


def test_stopping_cancels_preprocessing_that_has_not_started():
    from lychee_rerank.pipeline import RowFeeder

    prepared = []
    with RowFeeder(list(range(100)), prepared.append, workers=2, window=4) as feeder:
        feeder.get(0)
    assert len(prepared) <= 6
