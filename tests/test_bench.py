"""The benchmark: FLOP count (by hand, and against the issue's figures), the CLI run on CPU, the memory
run, user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lychee_rerank import bench
from lychee_rerank.archs import arch_config

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class StubTokenizer:
    """Just what arch_config reads from a tokenizer: special-token ids and the vocabulary size."""

    def __len__(self) -> int:
        return 629

    def convert_tokens_to_ids(self, token: str) -> int:
        return 600 + sum(map(ord, token)) % 29


def tiny_config():
    return arch_config("tiny", StubTokenizer())


# -- FLOP count -------------------------------------------------------------------------------------


def test_pair_flops_matches_a_hand_computation_for_the_tiny_config():
    # tiny: vision d_v=64, i_v=128, 2 blocks (block 1 full attention), patch 14, temporal 2, merge 2,
    # window 112 px = 4 merged units; text d=64, i=128, 2 layers, 4 heads / 2 kv heads of 16, vocab 629.
    # A 448×448 image: grid (1, 32, 32) -> P = 1024 patches, V = 256 visual tokens; 86 text tokens -> S = 342.
    f = bench.pair_flops(tiny_config(), (1, 32, 32), text_tokens=86)
    assert (f.patches, f.visual_tokens, f.sequence_tokens) == (1024, 256, 342)
    # 2·P·[3·2·14²·64 + 2·(4·64² + 3·64·128)] = 2·1024·(75,264 + 81,920)
    assert f.vision_linear == 2 * 1024 * 157_184 == 321_912_832
    # 4·64·[1·1024² + 1·(16 windows of 64 patches: 16·64²)] = 256·(1,048,576 + 65,536)
    assert f.vision_attention == 256 * 1_114_112 == 285_212_672
    # 2·V·[(4·64)² + 4·64·64] = 512·(65,536 + 16,384)
    assert f.merger == 512 * 81_920 == 41_943_040
    # 2·S·L·[2·64·64 + 2·64·32 + 3·64·128] = 2·342·2·36,864
    assert f.language_linear == 2 * 342 * 2 * 36_864 == 50_429_952
    # 2·L·H·h·S² (causal half of 4·L·H·h·S²) = 2·2·64·342²
    assert f.language_attention == 2 * 2 * 64 * 342**2 == 29_942_784
    # logits_to_keep=1: the lm_head on one position
    assert f.lm_head == 2 * 64 * 629
    assert f.total == pytest.approx(321_912_832 + 285_212_672 + 41_943_040 + 50_429_952 + 29_942_784 + 80_512)
    # every position's logits (the --full-logits lever)
    assert bench.pair_flops(tiny_config(), (1, 32, 32), 86, logits_positions=0).lm_head == 2 * 64 * 629 * 342


def test_pair_flops_counts_the_short_edge_windows():
    # 70×70 patches = 35×35 merged units: windows of 4 -> per side eight of 4 and one of 3.
    f = bench.pair_flops(tiny_config(), (1, 70, 70), text_tokens=0)
    window_sq = 16 * (8 * 16 + 9) ** 2  # m⁴·Σr²·Σc²
    assert f.vision_attention == 4 * 64 * (4900**2 + window_sq)


def test_flop_formula_parameter_counts_match_the_real_tiny_model():
    """The linear terms are 2·params·tokens: their parameter counts must be the model's own."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = tiny_config()
    model = Qwen2_5_VLForConditionalGeneration(config)
    visual, text = model.model.visual, model.model.language_model

    def linear_weights(modules) -> int:
        return sum(m.weight.numel() for m in modules if isinstance(m, (torch.nn.Linear, torch.nn.Conv3d)))

    one = bench.pair_flops(config, (1, 2, 2), text_tokens=0)  # 4 patches, 1 visual token, S = 1
    assert one.vision_linear == 2 * 4 * linear_weights([visual.patch_embed.proj, *visual.blocks.modules()])
    assert one.merger == 2 * 1 * linear_weights(visual.merger.modules())
    assert one.language_linear == 2 * 1 * linear_weights(text.layers.modules())
    assert one.lm_head == 2 * model.lm_head.weight.numel()


@pytest.mark.parametrize(("size", "expected_tflop"), [(1024, 24.0), (448, 5.8)])
def test_pair_flops_of_the_7b_match_the_issue(size, expected_tflop):
    from transformers import Qwen2VLImageProcessor

    processor = SimpleNamespace(image_processor=Qwen2VLImageProcessor())
    grid = bench.resized_grid((size, size), processor, 4 * 28 * 28, 1280 * 28 * 28)
    assert grid == {1024: (1, 70, 70), 448: (1, 32, 32)}[size]  # 1024 -> 980×980: 1,225 visual tokens
    config = arch_config("qwen2.5-vl-7b", StubTokenizer())
    flops = bench.pair_flops(config, grid, text_tokens=80)
    assert flops.total / 1e12 == pytest.approx(expected_tflop, rel=0.03)


def test_gpu_peak_table():
    assert bench.gpu_peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989
    assert bench.gpu_peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756
    assert bench.gpu_peak_tflops("NVIDIA H200", "float16") == 989
    assert bench.gpu_peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312
    assert bench.gpu_peak_tflops("NVIDIA L40S", "bfloat16") == 362
    assert bench.gpu_peak_tflops("NVIDIA GeForce RTX 4090", "bfloat16") == 165
    assert bench.gpu_peak_tflops("NVIDIA T4", "bfloat16") is None
    assert bench.gpu_peak_tflops("NVIDIA H100 80GB HBM3", "float32") is None
    assert bench.gpu_peak_tflops(None, "bfloat16") is None


# -- images -----------------------------------------------------------------------------------------


def test_synthetic_images_are_deterministic_and_photo_like():
    import numpy as np

    a = np.asarray(bench.synthetic_image(3, 96, seed=1))
    assert a.shape == (96, 96, 3)
    assert np.array_equal(a, np.asarray(bench.synthetic_image(3, 96, seed=1)))
    assert not np.array_equal(a, np.asarray(bench.synthetic_image(4, 96, seed=1)))
    assert not np.array_equal(a, np.asarray(bench.synthetic_image(3, 96, seed=2)))
    assert a.std() > 10  # not a flat colour
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 1000  # gradients and noise, not a few flat shapes


# -- the command ------------------------------------------------------------------------------------


def _bench_argv() -> list[str]:
    """The CLI entry point; until lychee_rerank/__main__.py exists, the module's own."""
    if (ROOT / "lychee_rerank" / "__main__.py").exists():
        return [sys.executable, "-m", "lychee_rerank", "bench"]
    return [sys.executable, "-m", "lychee_rerank.bench"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")  # the CPU path, even on a GPU machine
    return subprocess.run([*_bench_argv(), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_bench_on_cpu_writes_every_figure_and_the_plot(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "plot" / "bench.png"
    proc = _run("--arch", "tiny", "--images", "4", "--size", "56,112", "--modes", "sequential,batched",
                "--json", str(out_json), "--plot", str(out_png))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "speedup (batched ÷ sequential images/s)" in proc.stdout
    assert "images/s" in proc.stdout and "ms/image" in proc.stdout

    report = json.loads(out_json.read_text())
    machine, model = report["machine"], report["model"]
    assert machine["accelerator"] == "cpu" and machine["gpu"] is None
    for key in ("cpu", "torch", "transformers", "date"):
        assert machine[key]
    assert machine["date"].startswith(("20",))
    assert model["arch"] == "tiny" and model["name"] == "random tiny" and model["is_demo"] is True
    assert model["dtype"] == "float32" and model["attention"] in ("sdpa", "eager")
    assert model["parameters"] > 0 and model["vram_after_load_bytes"] is None
    assert report["peak_tflops"] is None

    results = {(r["mode"], r["size"]): r for r in report["results"]}
    assert set(results) == {(m, s) for m in ("sequential", "batched") for s in (56, 112)}
    for (mode, size), r in results.items():
        assert r["images"] == r["scored"] == 4 and r["errors"] == 0 and r["nan_scores"] == 0
        assert r["images_per_s"] > 0
        assert r["ms_per_image"] > 0 and r["ms_per_image_mean"] == pytest.approx(1000 / r["images_per_s"])
        assert r["peak_vram_bytes"] is None and r["peak_nvml_used_bytes"] is None  # CPU: no VRAM figures
        assert r["peak_rss_bytes"] > 50 * 2**20
        assert r["visual_tokens_per_image"] == (size // 28) ** 2  # 56 -> 4, 112 -> 16
        assert r["sequence_tokens_per_image"] > r["visual_tokens_per_image"]
        assert r["resized_to"] == [size, size]
        assert r["tflop_per_image"] > 0
        assert r["achieved_tflops"] == pytest.approx(r["tflop_per_image"] * r["images_per_s"])
        assert r["fraction_of_peak"] is None
        assert r["preprocess_ms_per_image"] > 0
        if mode == "sequential":
            assert r["batches"] == 4 and r["max_batch_images"] == 1
        else:
            assert r["token_budget_start"] > 0 and r["max_batch_images"] >= 1
    assert set(report["speedup"]) == {"56", "112"}
    for size in (56, 112):
        expected = results[("batched", size)]["images_per_s"] / results[("sequential", size)]["images_per_s"]
        assert report["speedup"][str(size)] == pytest.approx(expected)
    assert report["memory_run"] is None

    assert out_png.read_bytes()[:8] == PNG_SIGNATURE
    assert out_png.stat().st_size > 5_000


def test_bench_is_wired_into_the_cli():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--arch", "--model", "--images", "--size", "--modes", "--json", "--plot", "--memory-run",
                   "--report-every", "--token-budget", "--attention", "--max-pixels"):
        assert option in proc.stdout


def test_memory_run_reports_every_n_images_and_stays_flat(tmp_path, capsys):
    import torch

    cuda = torch.cuda.is_available()  # in-process: the tiny model goes where the engine would put it
    out_json, out_png = tmp_path / "memory.json", tmp_path / "memory.png"
    code = bench.main(["--arch", "tiny", "--memory-run", "6", "--report-every", "2", "--size", "56",
                       "--modes", "batched", "--token-budget", "120", "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("[batched 56 px]") == 3 and ("peak VRAM" if cuda else "peak RSS") in printed

    report = json.loads(out_json.read_text())
    assert report["results"] == [] and report["memory_run"]["report_every"] == 2
    (run,) = report["memory_run"]["runs"]
    assert (run["mode"], run["size"], run["images"], run["scored"]) == ("batched", 56, 6, 6)
    assert run["memory_measure"] == ("peak_vram_bytes" if cuda else "peak_rss_bytes")
    assert [row["done"] for row in run["series"]] == [2, 4, 6]  # 120 tokens: one image per forward
    assert all(row["peak_rss_bytes"] > 0 and (row["peak_vram_bytes"] is not None) == cuda for row in run["series"])
    assert run["flat"] is True
    assert out_png.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--size", "448,abc"], "--size takes whole numbers"),
        (["--size", "10"], "out of range"),
        (["--modes", "fast"], "--modes takes"),
        (["--images", "0"], "--images must be a positive number"),
        (["--plot", "out.jpg"], "ending in .png"),
        (["--model", "/no/such/model"], "model directory not found"),
    ],
)
def test_user_errors_are_one_line_without_traceback(argv, message, capsys):
    code = bench.main(argv)
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert err.startswith("lychee-rerank bench: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_full_size_arch_needs_a_gpu(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only machine
    assert bench.main(["--arch", "qwen2.5-vl-7b"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "lychee-rerank bench: --arch qwen2.5-vl-7b needs a CUDA GPU and none is usable here; "
        "use --arch tiny or --model demo on CPU"
    )


def test_arch_and_model_are_mutually_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--arch", "tiny", "--model", "demo"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_engine_levers_swap_and_restore():
    from lychee_rerank import execution

    before = (execution.ThreadPoolExecutor, execution.free_cached_memory)
    with bench.engine_levers(overlap=False, gc_collect=False):
        assert execution.ThreadPoolExecutor is bench._InlineExecutor
        assert execution.free_cached_memory is bench._empty_cache_only
        with execution.ThreadPoolExecutor(max_workers=1) as pool:
            assert pool.submit(lambda x: x + 1, 1).result() == 2
            failed = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failed.result()
    assert (execution.ThreadPoolExecutor, execution.free_cached_memory) == before


def test_median_run_keeps_the_middle_run_and_the_highest_peaks():
    def run(rate, rss, tag):
        return {"images_per_s": rate, "peak_vram_bytes": None, "peak_nvml_used_bytes": None,
                "peak_rss_bytes": rss, "errors": 0, "tag": tag}

    chosen = bench.median_run([run(3.0, 10, "a"), run(1.0, 30, "b"), run(2.0, 20, "c")])
    assert chosen["tag"] == "c" and chosen["images_per_s"] == 2.0
    assert chosen["repeats"] == 3 and chosen["images_per_s_runs"] == [3.0, 1.0, 2.0]
    assert chosen["peak_rss_bytes"] == 30 and chosen["peak_vram_bytes"] is None
