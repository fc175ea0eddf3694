"""The ETA of a run (lychee_rerank.execution.ProgressClock), judged on a recorded run.

tests/data/progress-mixed-40.json holds the progress steps of a real run (the demo model on 40
images of the bench's mixed workload: phone photos in both orientations, screenshots, A4 scans,
product shots, a panorama; scripts/app_progress_record.py): when each came and what work it
finished. Replayed into ProgressClock with a fake clock, the ETA must land within 25% of the time
the run really had left, from 20% of the images onwards (plus one second: the page shows whole
seconds, and the last steps are a second or two apart).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lychee_rerank.execution import ProgressClock

RECORDED = Path(__file__).parent / "data" / "progress-mixed-40.json"


def replay(record: dict) -> list[tuple[float, float, float | None]]:
    """(share of images done, seconds really left, ETA) after each recorded step."""
    now = [0.0]
    clock = ProgressClock(record["total_images"], tuple(record["total_work"]), now=lambda: now[0])
    end = record["steps"][-1]["t"]
    done, out = 0, []
    for step in record["steps"]:
        now[0] = step["t"]
        _, _, eta = clock.advance(step["images"], tuple(step["work"]))
        done += step["images"]
        out.append((done / record["total_images"], end - step["t"], eta))
    return out


def test_the_eta_of_a_recorded_run_is_within_25_percent_from_20_percent_on():
    record = json.loads(RECORDED.read_text())
    checked = [(share, truth, eta) for share, truth, eta in replay(record) if share >= 0.2 and truth > 0]
    assert len(checked) >= 30
    off = [(round(share, 2), round(truth, 1), eta and round(eta, 1)) for share, truth, eta in checked
           if eta is None or abs(eta - truth) > 0.25 * truth + 1.0]
    assert not off, f"ETA off by more than 25% (share done, seconds left, ETA): {off}"


def test_the_first_step_is_not_taken_for_the_pace():
    """The first image also carries the start (first decode, the model's warm-up): 10 s for it, then
    1 s per image, and the ETA after the second image counts 1 s for each of the 8 left."""
    now = [0.0]
    clock = ProgressClock(10, now=lambda: now[0])
    now[0] = 10.0
    clock.advance(1)
    now[0] = 11.0
    _, _, eta = clock.advance(1)
    assert eta == pytest.approx(8.0, rel=0.01)


def test_the_pace_is_fitted_per_kind_of_work():
    """Two measures (tokens, pixels): when the time goes with the pixels, a pixel-heavy image left
    is expected to take as long as the pixel-heavy one before it, not the average per token."""
    now = [0.0]
    clock = ProgressClock(4, (4.0, 10.0), now=lambda: now[0])  # images of (1, 1), (1, 1), (1, 4), (1, 4)
    for t, work in ((1.0, (1, 1)), (2.0, (1, 1)), (6.0, (1, 4))):  # 1 s for (1, 1), 4 s for (1, 4)
        now[0] = t
        _, _, eta = clock.advance(1, work)
    assert eta == pytest.approx(4.0, rel=0.02)  # by tokens alone: 2.5 s
