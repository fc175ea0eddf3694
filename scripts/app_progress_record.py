"""Record a real run's progress events, for the ETA test (tests/data/progress-*.json).

    .venv/bin/python scripts/app_progress_record.py --images 40 --size 4032x3024 --alongside \
        --out tests/data/progress-phone-40.json

Ranks the bench's synthetic images with the demo model, as the app does (auto mode, every CPU),
and writes each progress step: when it came (seconds since the run's clock started), how many
images and how much work it finished (sequence tokens, pixels decoded). tests/test_eta.py replays
them into ProgressClock with a fake clock, so the ETA is judged against how the run really went.

``--alongside`` decodes every image at full resolution in a thread beside the run, as the app's
thumbnails did before they came from the engine's own decoding: the run starts slow and speeds up
once that thread is done, the case where an ETA from the average pace since the start runs high.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lychee_rerank import Reranker, execution  # noqa: E402
from lychee_rerank.bench.workload import parse_workload, write_workload  # noqa: E402
from lychee_rerank.images import load_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", default="mixed", help="the bench's workload: mixed, 4032x3024, 448, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alongside", action="store_true", help="decode every image once more in a thread meanwhile")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    paths = write_workload(parse_workload(args.size), args.images, args.seed)
    reranker = Reranker.load("demo", dtype="float32")
    steps: list[dict] = []
    clocks: list[execution.ProgressClock] = []
    original_init, original_advance = execution.ProgressClock.__init__, execution.ProgressClock.advance

    def init(self, total, total_work=None, **kwargs):
        original_init(self, total, total_work, **kwargs)
        clocks.append(self)

    def advance(self, count, work=None):
        steps.append({"t": round(time.perf_counter() - self.start, 4), "images": count, "work": list(work)})
        return original_advance(self, count, work)

    execution.ProgressClock.__init__, execution.ProgressClock.advance = init, advance
    if args.alongside:
        threading.Thread(target=lambda: [load_image(path) for path in paths], daemon=True).start()
    started = time.perf_counter()
    ranking = reranker.rank("海边日落 sunset over the sea", paths)
    finished = time.perf_counter() - started
    record = {
        "what": f"demo model, {args.images} images of the bench's {args.size} workload (seed {args.seed}), "
                f"mode {ranking.mode}{', every image decoded once more alongside' if args.alongside else ''}, "
                f"{os.cpu_count()} CPUs, load average "
                f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
        "total_images": clocks[0].total,
        "total_work": list(clocks[0].total_work),
        "steps": steps,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{len(steps)} steps over {finished:.1f} s written to {args.out}")


if __name__ == "__main__":
    main()
