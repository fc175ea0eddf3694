"""The scoring recipe and the two execution modes, on the demo model (float32, CPU)."""

from __future__ import annotations

import threading

import pytest
import torch

from imagegen import photo
from lychee_rerank import DEFAULT_INSTRUCTION, InputError, SYSTEM_PROMPT
from lychee_rerank.execution import TokenBudget
from lychee_rerank.images import load_image
from lychee_rerank.prompt import render_prompt

QUERY = "海边日落 sunset over the sea"
TOLERANCE = 1e-4


def reference_scores(reranker, query, images, instruction=None, query_image=None):
    """A plain one-image-at-a-time implementation of the Lychee recipe, written out in full."""
    model, processor = reranker.model, reranker.processor
    instruction = instruction or DEFAULT_INSTRUCTION
    yes = processor.tokenizer.convert_tokens_to_ids("yes")
    no = processor.tokenizer.convert_tokens_to_ids("no")
    scores = []
    for image in images:
        user = [{"type": "text", "text": f"<Instruct>: {instruction}"}, {"type": "text", "text": "<Query>:"}]
        if query_image is not None:
            user.append({"type": "image"})
        user += [{"type": "text", "text": query}, {"type": "text", "text": "\n<Document>:"}, {"type": "image"}]
        messages = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": user},
        ]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rgb = load_image(image)
        pictures = [load_image(query_image), rgb] if query_image is not None else [rgb]
        inputs = processor(
            text=[text],
            images=pictures,
            return_tensors="pt",
            size={"shortest_edge": reranker.min_pixels, "longest_edge": reranker.max_pixels},
        )
        inputs.pop("mm_token_type_ids", None)
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        scores.append(torch.softmax(logits[[no, yes]].float(), dim=0)[1].item())
    return scores


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


def test_blank_instruction_falls_back_to_the_default(reranker, some_photos):
    ranking = reranker.rank(QUERY, some_photos[:2], instruction="   ")
    assert ranking.instruction == DEFAULT_INSTRUCTION
    assert scores_of(ranking) == pytest.approx(reference_scores(reranker, QUERY, some_photos[:2]), abs=TOLERANCE)


@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_scores_equal_a_plain_one_at_a_time_implementation(reranker, some_photos, mode):
    expected = reference_scores(reranker, QUERY, some_photos)
    ranking = reranker.rank(QUERY, some_photos, mode=mode)
    assert ranking.mode == mode
    assert scores_of(ranking) == pytest.approx(expected, abs=TOLERANCE)
    assert all(0.0 <= s <= 1.0 for s in scores_of(ranking))


def test_query_image_and_custom_instruction_are_scored_like_the_reference(reranker, some_photos):
    query_image = photo(80, 60, seed=99)
    instruction = "Retrieve images of the same product."
    expected = reference_scores(reranker, "同款 same item", some_photos[:4], instruction, query_image)
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


class OutOfMemoryAbove:
    """Wraps a forward so it raises CUDA's out-of-memory error for batches above ``max_rows``."""

    def __init__(self, model, max_rows: int, always_fail_width: int | None = None):
        self.model = model
        self.original = model.forward
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

    def __enter__(self):
        self.model.forward = self
        return self

    def __exit__(self, *exc):
        del self.model.forward


def test_out_of_memory_halves_the_batch_and_scores_every_image_exactly_once(reranker, some_photos):
    expected = reference_scores(reranker, QUERY, some_photos)
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


def test_a_second_run_waits_for_the_first_and_says_so(reranker, some_photos):
    first_started = threading.Event()
    release_first = threading.Event()
    second_events = []

    def hold(event):
        first_started.set()
        release_first.wait(timeout=30)

    first = threading.Thread(target=lambda: reranker.rank(QUERY, some_photos[:2], mode="sequential", progress=hold))
    first.start()
    assert first_started.wait(timeout=30)
    results = {}

    def second():
        results["ranking"] = reranker.rank(QUERY, some_photos[:2], progress=second_events.append)

    runner = threading.Thread(target=second)
    runner.start()
    try:
        for _ in range(100):
            if second_events:
                break
            threading.Event().wait(0.05)
        assert second_events and second_events[0].waiting
        assert "waiting" in second_events[0].describe()
    finally:
        release_first.set()
        first.join(timeout=60)
        runner.join(timeout=60)
    assert len(results["ranking"].scored) == 2


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


def test_token_budget_halves_on_failure_and_grows_back_below_what_failed():
    budget = TokenBudget(1000)
    budget.shrink(800)
    assert budget.tokens == 400
    for _ in range(100):
        budget.success()
    assert 400 < budget.tokens <= 720


def test_an_image_the_processor_rejects_fails_alone_and_its_batch_is_still_scored(reranker, some_photos, monkeypatch):
    from lychee_rerank.scoring import PairScorer

    original = PairScorer._process
    odd_size = some_photos[3].size  # the processor "cannot handle" this one image

    def picky(self, images):
        if any(image.size == odd_size for image in images):
            raise ValueError("unsupported image")
        return original(self, images)

    monkeypatch.setattr(PairScorer, "_process", picky)
    ranking = reranker.rank(QUERY, some_photos, mode="batched", token_budget=100_000)
    statuses = [r.status for r in ranking.results]
    assert statuses[3] == "error" and "could not be preprocessed" in ranking.results[3].error
    assert statuses.count("scored") == len(some_photos) - 1
