"""The benchmark: FLOP count (by hand, and against the issue's figures), the workloads, the levers, the
model card's loop against the engine, the CLI run on CPU with every figure, the memory run, user errors."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagegen import encode
from lychee_rerank import bench
from lychee_rerank.archs import arch_config
from lychee_rerank.bench import levers, measure, workload

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


# -- workloads --------------------------------------------------------------------------------------


def test_synthetic_photos_are_deterministic_and_photo_like():
    import numpy as np

    a = np.asarray(workload.synthetic_photo(96, 64, index=3, seed=1))
    assert a.shape == (64, 96, 3)
    assert np.array_equal(a, np.asarray(workload.synthetic_photo(96, 64, index=3, seed=1)))
    assert not np.array_equal(a, np.asarray(workload.synthetic_photo(96, 64, index=4, seed=1)))
    assert not np.array_equal(a, np.asarray(workload.synthetic_photo(96, 64, index=3, seed=2)))
    assert a.std() > 10  # not a flat colour
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 1000  # gradients and noise, not a few flat shapes


def test_photos_cost_a_jpeg_codec_what_real_photos_cost():
    # Phone photos at quality 90 take about 1.5-3 bits per pixel; pure noise takes over 8, a flat colour under 0.2.
    image = workload.synthetic_photo(640, 480, index=0, seed=0)
    bits_per_pixel = 8 * len(encode(image, "JPEG", quality=90)) / (640 * 480)
    assert 1.0 < bits_per_pixel < 4.0


@pytest.mark.parametrize(("text", "label", "size"), [
    ("448", "448", (448, 448)),
    ("4032x3024", "4032x3024", (4032, 3024)),
    (" 3024×4032px ", "3024x4032", (3024, 4032)),
    ("mixed", "mixed", (None, None)),
])
def test_size_accepts_squares_width_x_height_and_mixed(text, label, size):
    parsed = workload.parse_workload(text)
    assert (parsed.label, (parsed.width, parsed.height)) == (label, size)


def test_size_list_keeps_order_and_drops_repeats():
    assert [w.label for w in bench.parse_sizes("448,4032x3024,mixed,448")] == ["448", "4032x3024", "mixed"]


def test_the_mixed_workload_is_a_fixed_seeded_mix_of_real_world_shapes():
    mixed = workload.parse_workload("mixed")
    specs = mixed.specs(20, seed=0)
    assert specs == mixed.specs(20, seed=0) and specs != mixed.specs(20, seed=1)  # seeded order
    assert sorted(map(repr, specs)) == sorted(map(repr, mixed.specs(20, seed=1)))  # the same mix
    shapes = {(s.kind, s.width, s.height, s.format, s.orientation) for s in specs}
    assert {("photo", 4032, 3024, "JPEG", 1), ("photo", 4032, 3024, "JPEG", 6), ("photo", 3024, 4032, "JPEG", 1),
            ("screenshot", 1920, 1080, "PNG", 1), ("scan", 2480, 3508, "JPEG", 1), ("product", 800, 800, "JPEG", 1)} <= shapes
    assert any(s.width >= 3 * s.height for s in specs)  # a panorama
    assert specs[:16] == mixed.specs(16, seed=0)


def test_images_are_written_with_their_exif_orientation_and_reused_from_the_cache(tmp_path):
    from PIL import Image, ImageOps

    specs = [workload.ImageSpec("photo", 64, 48, orientation=6), workload.ImageSpec("screenshot", 80, 45, format="PNG")]
    first = workload.write_images(specs, seed=0, cache_dir=tmp_path)
    with Image.open(first[0]) as photo_file:
        assert photo_file.format == "JPEG" and photo_file.size == (64, 48)
        assert photo_file.getexif()[0x0112] == 6
        assert ImageOps.exif_transpose(photo_file).size == (48, 64)  # shown as a portrait
    with Image.open(first[1]) as screenshot:
        assert screenshot.format == "PNG" and screenshot.size == (80, 45)
    stamps = [os.stat(p).st_mtime_ns for p in first]
    assert workload.write_images(specs, seed=0, cache_dir=tmp_path) == first
    assert [os.stat(p).st_mtime_ns for p in first] == stamps  # reused, not drawn again
    assert not list(tmp_path.rglob("*.part"))


# -- levers ------------------------------------------------------------------------------------------


def test_engine_levers_swap_and_restore():
    from lychee_rerank import execution, pipeline, reranker

    before = (execution.RowFeeder, reranker.RowFeeder, execution.free_cached_memory)
    with levers.engine_levers(overlap=False, gc_collect=False):
        assert execution.RowFeeder is levers.InlineRowFeeder and reranker.RowFeeder is levers.InlineRowFeeder
        assert execution.free_cached_memory is levers.empty_cache_only
    assert (execution.RowFeeder, reranker.RowFeeder, execution.free_cached_memory) == before
    assert before[0] is pipeline.RowFeeder


def test_without_overlap_rows_are_prepared_in_the_calling_thread_when_asked_for():
    calls = []

    def prepare(item):
        calls.append((item, threading.current_thread()))
        if item == "bad":
            raise ValueError("cannot prepare")
        return item.upper()

    with levers.InlineRowFeeder(["a", "b", "bad"], prepare, workers=4) as feeder:
        assert calls == []  # no look-ahead
        assert feeder.get("b") == "B" and feeder.get("b") == "B"
        assert calls == [("b", threading.current_thread())]  # kept until released
        feeder.release("b")
        assert feeder.get("b") == "B" and len(calls) == 2
        with pytest.raises(ValueError):
            feeder.get("bad")


def test_worker_torch_threads_lever_sets_the_workers_count_and_leaves_the_callers():
    import torch

    from lychee_rerank.pipeline import RowFeeder

    main_threads = torch.get_num_threads()
    feeder_class = levers.feeder_with_worker_threads(RowFeeder, 1)
    with feeder_class([1, 2, 3], lambda item: torch.get_num_threads(), workers=2) as feeder:
        seen = [feeder.get(i) for i in (1, 2, 3)]
    assert seen == [1, 1, 1]
    assert torch.get_num_threads() == main_threads


def test_no_overlap_and_worker_threads_levers_keep_the_scores(reranker, tmp_path):
    paths = workload.write_images([workload.ImageSpec("photo", 90 + 7 * i, 60) for i in range(3)], seed=0, cache_dir=tmp_path)
    expected = [r.score for r in reranker.rank("a cat", paths).results]
    with levers.engine_levers(overlap=False):
        assert [r.score for r in reranker.rank("a cat", paths).results] == expected
        assert reranker.prepare_only(reranker.settings("a cat"), paths) == 3
    with levers.engine_levers(worker_torch_threads=1):
        assert [r.score for r in reranker.rank("a cat", paths, workers=2).results] == pytest.approx(expected, abs=1e-6)


def test_processor_device_lever_swaps_the_pixels_hand_over_keeps_the_scores_and_restores(reranker, tmp_path):
    from lychee_rerank import scoring

    paths = workload.write_images([workload.ImageSpec("photo", 90 + 7 * i, 60) for i in range(3)], seed=0, cache_dir=tmp_path)
    expected = [r.score for r in reranker.rank("a cat", paths).results]
    original = scoring.processor_pixels
    with levers.engine_levers(processor_device="cpu"):
        assert scoring.processor_pixels is not original
        assert [r.score for r in reranker.rank("a cat", paths).results] == expected
    assert scoring.processor_pixels is original


@pytest.mark.parametrize(
    "device, message",
    [("gpu0", "takes a torch device"), ("cuda", "no CUDA GPU is available here")],
)
def test_processor_device_refuses_a_device_it_cannot_use(device, message, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, wherever this runs
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    with pytest.raises(bench.BenchError, match=message):
        bench.settings_from_args(parser.parse_args(["--processor-device", device]))


def test_workers_takes_counts_and_no_overlap_is_workers_zero():
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)

    def workers(*argv):
        return bench.settings_from_args(parser.parse_args(list(argv))).workers

    assert workers() == (None,)  # the engine's default: every CPU the process may use
    assert workers("--workers", "3") == (3,)
    assert workers("--workers", "1,2,1") == (1, 2)
    assert workers("--workers", "0") == workers("--no-overlap") == (0,)


# -- the model card's loop and the verdicts -----------------------------------------------------------


def test_the_model_card_loop_scores_like_the_engine_within_2e_5(reranker, tmp_path):
    from lychee_rerank.bench.baseline import ModelCardLoop

    specs = [workload.ImageSpec("photo", 120, 90), workload.ImageSpec("photo", 120, 90, orientation=6),
             workload.ImageSpec("screenshot", 160, 90, format="PNG"), workload.ImageSpec("product", 64, 64)]
    paths = workload.write_images(specs, seed=0, cache_dir=tmp_path)
    loop = ModelCardLoop(reranker.model, reranker.info.path, reranker.max_pixels)
    run = loop.run("a red sneaker", paths)
    engine = [r.score for r in reranker.rank("a red sneaker", paths).results]
    assert max(abs(a - b) for a, b in zip(run.scores, engine)) <= 2e-5
    assert max(run.scores) - min(run.scores) > 1e-3  # the scores differ, so the comparison can see a change
    assert set(run.stage_s) == {"decode", "qwen_vl_utils", "processor", "forward"}
    assert run.elapsed_s >= sum(run.stage_s.values()) > 0


def test_the_verdict_names_preprocessing_when_the_ceiling_is_within_1_2x_of_the_rate():
    def result(rate):
        return {"images_per_s": rate, "scores": [0.5, 0.25, None]}

    close, far = result(10.0), result(10.0)
    measure.compare(close, {"images_per_s": 11.9}, None, on_gpu=True)
    measure.compare(far, {"images_per_s": 12.1}, {"images_per_s": 4.0, "scores": [0.5, 0.2, 0.1]}, on_gpu=True)
    assert close["bound_by"] == "preprocessing (CPU)" and close["ceiling_ratio"] == pytest.approx(1.19)
    assert far["bound_by"] == "the model (GPU forward)"
    assert far["speedup_vs_model_card"] == pytest.approx(2.5) and far["speedup_vs_model_card_runs"] == [pytest.approx(2.5)]
    assert far["max_abs_score_diff_vs_model_card"] == pytest.approx(0.05)  # the unscored image is left out
    repeated = {"images_per_s": 10.0, "images_per_s_runs": [12.0, 10.0, 8.0], "scores": [0.5]}
    measure.compare(repeated, None, {"images_per_s": 5.0, "images_per_s_runs": [4.0, 5.0, 8.0], "scores": [0.5]}, on_gpu=False)
    assert repeated["speedup_vs_model_card_runs"] == [3.0, 2.0, 1.0]  # each engine run over the loop measured beside it


# -- the command ------------------------------------------------------------------------------------


def _bench_argv() -> list[str]:
    return [sys.executable, "-m", "lychee_rerank", "bench"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")  # the CPU path, even on a GPU machine
    return subprocess.run([*_bench_argv(), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_bench_on_cpu_writes_every_figure_and_the_plot(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "plot" / "bench.png"
    proc = _run("--arch", "tiny", "--images", "4", "--size", "56,112x84", "--modes", "sequential,batched", "--baseline",
                "--image-cache", str(tmp_path / "images"), "--json", str(out_json), "--plot", str(out_png))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "speedup (batched ÷ sequential images/s)" in proc.stdout
    for column in ("images/s", "ms/image", "CPU s/image", "CPU ceiling", "× model card", "max |Δscore|", "peak RSS"):
        assert column in proc.stdout
    assert "preprocessing alone" in proc.stdout and "bound by" in proc.stdout
    assert "same scores within 2e-05" in proc.stdout and "SCORES DIFFER" not in proc.stdout

    report = json.loads(out_json.read_text())
    machine, model, settings = report["machine"], report["model"], report["settings"]
    assert machine["accelerator"] == "cpu" and machine["gpu"] is None
    for key in ("cpu", "torch", "transformers", "date", "cpus_usable", "torch_threads"):
        assert machine[key]
    assert machine["date"].startswith(("20",))
    assert model["arch"] == "tiny" and model["name"] == "random tiny" and model["is_demo"] is True
    assert model["dtype"] == "float32" and model["attention"] in ("sdpa", "eager")
    assert model["parameters"] > 0 and model["vram_after_load_bytes"] is None
    assert settings["workers"] == [machine["cpus_usable"]] and settings["preprocess"] == "exact"
    assert settings["sizes"] == ["56", "112x84"] and settings["baseline"] is True
    assert report["peak_tflops"] is None
    assert set(report["workloads"]) == {"56", "112x84"}
    assert report["workloads"]["112x84"]["shapes"] == {"112x84 JPEG": 4}

    results = {(r["mode"], r["size"]): r for r in report["results"]}
    assert set(results) == {(m, s) for m in ("model card", "sequential", "batched") for s in ("56", "112x84")}
    ceilings = {c["size"]: c for c in report["ceiling"]}
    assert [c["workers"] for c in report["ceiling"]] == [machine["cpus_usable"]] * 2
    for size, resized, tokens in (("56", [56, 56], 4), ("112x84", [112, 84], 12)):
        ceiling, baseline = ceilings[size], report["baseline"][size]
        assert ceiling["prepared"] == 4 and math.isfinite(ceiling["images_per_s"]) and ceiling["images_per_s"] > 0
        assert baseline["scored"] == 4 and math.isfinite(baseline["images_per_s"]) and baseline["images_per_s"] > 0
        assert set(baseline["stage_ms_per_image"]) == {"decode", "qwen_vl_utils", "processor", "forward"}
        assert results[("model card", size)]["images_per_s"] == baseline["images_per_s"]
        for mode in ("sequential", "batched"):
            r = results[(mode, size)]
            assert r["variant"] == mode and r["workers"] == machine["cpus_usable"]
            assert r["images"] == r["scored"] == 4 and r["errors"] == 0 and r["nan_scores"] == 0
            assert r["images_per_s"] > 0 and r["cpu_s_per_image"] > 0
            assert r["ms_per_image"] > 0 and r["ms_per_image_mean"] == pytest.approx(1000 / r["images_per_s"])
            assert r["peak_vram_bytes"] is None and r["peak_nvml_used_bytes"] is None  # CPU: no VRAM figures
            assert r["peak_rss_bytes"] > 50 * 2**20
            assert r["visual_tokens_per_image"] == tokens  # 56 -> 2×2 merged patches, 112×84 -> 4×3
            assert r["sequence_tokens_per_image"] > r["visual_tokens_per_image"]
            assert r["resized_to"] == resized
            assert r["tflop_per_image"] > 0
            assert r["achieved_tflops"] == pytest.approx(r["tflop_per_image"] * r["images_per_s"])
            assert r["fraction_of_peak"] is None
            assert r["preprocess_ms_per_image"] > 0
            assert r["preprocess_ceiling_images_per_s"] == ceiling["images_per_s"]
            assert r["bound_by"] in ("preprocessing (CPU)", "the model (CPU forward)")
            assert r["speedup_vs_model_card"] == pytest.approx(r["images_per_s"] / baseline["images_per_s"])
            assert r["max_abs_score_diff_vs_model_card"] <= 2e-5
            if mode == "sequential":
                assert r["batches"] == 4 and r["max_batch_images"] == 1
            else:
                assert r["token_budget_start"] > 0 and r["max_batch_images"] >= 1
    assert set(report["speedup"]) == {"56", "112x84"}
    for size in ("56", "112x84"):
        expected = results[("batched", size)]["images_per_s"] / results[("sequential", size)]["images_per_s"]
        assert report["speedup"][size] == pytest.approx(expected)
    assert report["memory_run"] is None

    assert out_png.read_bytes()[:8] == PNG_SIGNATURE
    assert out_png.stat().st_size > 5_000


def test_several_worker_counts_are_measured_side_by_side_each_with_its_ceiling(tmp_path, capsys):
    out_json = tmp_path / "workers.json"
    code = bench.main(["--arch", "tiny", "--images", "3", "--size", "56", "--modes", "batched", "--workers", "0,1",
                       "--image-cache", str(tmp_path / "images"), "--json", str(out_json)])
    assert code == 0
    assert "batched, inline" in capsys.readouterr().out
    report = json.loads(out_json.read_text())
    assert report["settings"]["workers"] == [0, 1]
    assert [(r["variant"], r["workers"], r["scored"]) for r in report["results"]] == [
        ("batched, inline", 0, 3), ("batched, 1 worker", 1, 3)]
    assert [(c["workers"], c["prepared"]) for c in report["ceiling"]] == [(0, 3), (1, 3)]
    for r, c in zip(report["results"], report["ceiling"]):
        assert r["preprocess_ceiling_images_per_s"] == c["images_per_s"] > 0


def test_the_repeat_question_case_measures_no_cache_cold_and_warm_and_checks_the_scores(tmp_path, capsys):
    out_json = tmp_path / "repeat.json"
    code = bench.main(["--arch", "tiny", "--images", "3", "--size", "56", "--modes", "batched", "--repeat-question",
                       "--image-cache", str(tmp_path / "images"), "--json", str(out_json)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "repeat question" in printed and "spared per image" in printed and "check (warm <= 1/3 of cold" in printed
    [run] = json.loads(out_json.read_text())["repeat_question"]
    assert (run["mode"], run["images"], run["entries"]) == ("batched", 3, 3)
    assert (run["cold"]["cache_hits"], run["cold"]["cache_misses"]) == (0, 3)
    assert (run["warm"]["cache_hits"], run["warm"]["cache_misses"]) == (3, 0)
    assert (run["no_cache"]["cache_hits"], run["no_cache"]["cache_misses"]) == (None, None)
    assert run["max_abs_score_diff_warm_vs_no_cache"] <= 2e-5
    assert run["warm_over_cold"] == pytest.approx(run["warm"]["elapsed_s"] / run["cold"]["elapsed_s"])
    assert run["vision_tower_calls"] >= 1 and run["vision_tower_s"] > 0 and run["cpu_side_alone_s"] > 0
    assert run["cache_bytes_per_image"] > 0 and run["hash_ms_per_image"] > 0 and run["file_bytes_mean"] > 0


def test_bench_is_wired_into_the_cli():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--arch", "--model", "--images", "--size", "--modes", "--json", "--plot", "--memory-run",
                   "--report-every", "--token-budget", "--attention", "--max-pixels", "--workers", "--preprocess",
                   "--baseline", "--no-overlap", "--no-gc", "--quantize", "--repeat-question"):
        assert option in proc.stdout


def test_memory_run_reports_every_n_images_and_stays_flat(tmp_path, capsys):
    import torch

    cuda = torch.cuda.is_available()  # in-process: the tiny model goes where the engine would put it
    out_json, out_png = tmp_path / "memory.json", tmp_path / "memory.png"
    code = bench.main(["--arch", "tiny", "--memory-run", "6", "--report-every", "2", "--size", "56",
                       "--modes", "batched", "--token-budget", "120", "--image-cache", str(tmp_path / "images"),
                       "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("[batched 56 px]") == 3 and ("peak VRAM" if cuda else "peak RSS") in printed

    report = json.loads(out_json.read_text())
    assert report["results"] == [] and report["memory_run"]["report_every"] == 2
    (run,) = report["memory_run"]["runs"]
    assert (run["mode"], run["size"], run["images"], run["scored"]) == ("batched", "56", 6, 6)
    assert run["memory_measure"] == ("peak_vram_bytes" if cuda else "peak_rss_bytes")
    assert [row["done"] for row in run["series"]] == [2, 4, 6]  # 120 tokens: one image per forward
    assert all(row["peak_rss_bytes"] > 0 and (row["peak_vram_bytes"] is not None) == cuda for row in run["series"])
    assert run["peak_rss_bytes"] == max(row["peak_rss_bytes"] for row in run["series"])
    assert run["flat"] is True
    assert out_png.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--size", "448,abc"], "--size takes a square side (448), WIDTHxHEIGHT (4032x3024) or mixed"),
        (["--size", "4032x"], "--size takes a square side"),
        (["--size", "10"], "out of range"),
        (["--size", "640x99999"], "out of range"),
        (["--modes", "fast"], "--modes takes"),
        (["--images", "0"], "--images must be a positive number"),
        (["--workers", "-1"], "--workers takes 0 (inline) or positive numbers"),
        (["--workers", "two"], "--workers takes 0 (inline) or positive numbers"),
        (["--plot", "out.jpg"], "ending in .png"),
        (["--quantize", "8bit"], "--quantize applies to a checkpoint"),
        (["--model", "/no/such/model"], "model directory not found"),
    ],
)
def test_user_errors_are_one_line_without_traceback(argv, message, capsys):
    code = bench.main(argv)
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert err.startswith("lychee-rerank bench: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_quantize_says_so_when_the_engine_cannot_quantize(capsys, monkeypatch):
    from lychee_rerank.reranker import Reranker

    def load_without_quantize(model=None, *, dtype="auto", attention="auto", device_map="auto", min_pixels=0, max_pixels=0):
        raise AssertionError("must not be called")

    monkeypatch.setattr(Reranker, "load", load_without_quantize)
    assert bench.main(["--model", "demo", "--quantize", "4bit"]) == 2
    assert capsys.readouterr().err.strip() == (
        "lychee-rerank bench: --quantize needs an engine whose Reranker.load takes quantize=, and this one does not"
    )


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


def test_median_run_keeps_the_middle_run_and_the_highest_peaks():
    def run(rate, rss, tag):
        return {"images_per_s": rate, "peak_vram_bytes": None, "peak_nvml_used_bytes": None,
                "peak_rss_bytes": rss, "errors": 0, "tag": tag}

    chosen = measure.median_run([run(3.0, 10, "a"), run(1.0, 30, "b"), run(2.0, 20, "c")])
    assert chosen["tag"] == "c" and chosen["images_per_s"] == 2.0
    assert chosen["repeats"] == 3 and chosen["images_per_s_runs"] == [3.0, 1.0, 2.0]
    assert chosen["peak_rss_bytes"] == 30 and chosen["peak_vram_bytes"] is None
