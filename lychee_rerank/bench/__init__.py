"""``python -m lychee_rerank bench``: the engine's speed and memory, measured on realistic images.

Two kinds of model:

- ``--arch tiny|qwen2.5-vl-3b|qwen2.5-vl-7b``: the architecture built with random weights directly on
  the device (the full-size ones only on a GPU, in bf16: no download, no 16 GB detour through CPU
  memory). The weights' values do not matter for speed: per token the compute is the real model's.
- ``--model demo|PATH|ID``: a checkpoint loaded exactly as the app loads it (``Reranker.load``).

Images are synthetic and deterministic, shaped like users' files (``workload``), cached on disk and
passed as paths: decoding is part of the measured work, as it is for users. For each workload the
bench measures, in the same process on the same files, after a warm-up that is not counted: each
execution mode; the preprocessing-only ceiling (the CPU side alone, no model), which says which side
bounds a run; and with ``--baseline`` the model card's own single-thread loop, for the speedup and
the score difference. ``--memory-run N`` instead reports peak memory every ``--report-every`` images.

The package: ``settings`` (options), ``workload`` (images), ``models`` (the model under test),
``levers`` (bench-only switches of engine behaviour), ``baseline`` (the model card's loop),
``flops``, ``memory``, ``measure``, ``report`` (table, verdicts, plot, machine), ``command`` (the run).
Nothing heavy is imported here: the CLI builds its parser from this package.
"""

from .command import main, run_bench
from .flops import FlopCount, gpu_peak_tflops, pair_flops, resized_grid
from .settings import BenchError, Settings, add_bench_arguments, parse_sizes, settings_from_args

__all__ = [
    "BenchError",
    "FlopCount",
    "Settings",
    "add_bench_arguments",
    "gpu_peak_tflops",
    "main",
    "pair_flops",
    "parse_sizes",
    "resized_grid",
    "run_bench",
    "settings_from_args",
]
