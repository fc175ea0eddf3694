"""Scale-out on Ray (a local Ray, the demo model): every image exactly once, the single-process scores
for the same settings (8-bit, fast preprocessing), a replica killed mid-run, resume after an
interruption, SIGTERM and SIGINT, damaged shards set aside, manifests, one-sentence errors."""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagegen import encode, photo
from lychee_rerank import Reranker, RunSettings
from lychee_rerank.export import to_csv

ROOT = Path(__file__).resolve().parent.parent
QUERY = "一只猫 a cat"


def make_folder(root: Path, count: int, size: int = 48) -> list[str]:
    """``count`` small photos (some in a subfolder) and one broken file; returns the image paths."""
    (root / "sub").mkdir(parents=True)
    paths = []
    for i in range(count):
        path = root / ("sub" if i % 3 == 0 else "") / f"photo{i:03d}.png"
        path.write_bytes(encode(photo(size + i % 5 * 8, size + i % 3 * 8, seed=i)))
        paths.append(str(path))
    broken = root / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    return sorted(paths + [str(broken)])


def shard_names(out_dir: Path) -> collections.Counter:
    shards = sorted((out_dir / "shards").glob("*.parquet"))
    return collections.Counter(name for f in shards for name in pq.read_table(f, columns=["name"]).column("name").to_pylist())


def demo_settings(**options) -> RunSettings:
    return RunSettings.build(QUERY, model="demo", dtype="float32", **options)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lychee_rerank", "rank", *args]


def cli_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


# --- The command line (each run starts its own local Ray; these run before the shared session) ---


def test_missing_ray_is_one_sentence_with_the_install_command(tmp_path):
    code = "import sys; sys.modules['ray'] = None; from lychee_rerank.cli import main; sys.exit(main(sys.argv[1:]))"
    image = tmp_path / "a.png"
    image.write_bytes(encode(photo(20, 20)))
    result = subprocess.run([sys.executable, "-c", code, "rank", "--ray", "local", "--model", "demo", "-q", "cat", str(image)],
                            env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["lychee-rerank: Ray is not installed: pip install -r requirements-ray.txt"]


def make_jpegs(root: Path, count: int) -> list[str]:
    """``count`` JPEGs at least twice the model's size at MAX_PIXELS (the fast path decodes them at
    a reduced DCT scale) and one broken file; returns the paths."""
    root.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = root / f"photo{i:03d}.jpg"
        path.write_bytes(encode(photo(240 + i % 5 * 16, 240 + i % 3 * 16, seed=i), "JPEG", quality=90))
        paths.append(str(path))
    broken = root / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    return sorted(paths + [str(broken)])


MAX_PIXELS = 12544  # 16 visual tokens: cheap, and every photo of make_jpegs is reduced on the fast path
# Options whose loss on the way to the replicas changes the scores (item 4 of issue 17).
SETTINGS_ARGS = ["--model", "demo", "--query", QUERY, "--quantize", "8bit", "--preprocess", "fast",
                 "--max-pixels", str(MAX_PIXELS)]
NATIVE_DUMP = ("Traceback", "*** SIG", "PC: @", "Fatal Python error", "Aborted")


def test_sigterm_writes_every_output_and_resume_completes_it_with_the_single_process_scores_of_the_same_command_line(
    tmp_path, demo_cache, reranker
):
    images = make_jpegs(tmp_path / "photos", 12)
    files = {os.path.relpath(p, tmp_path) for p in images}
    out = tmp_path / "results"
    ray_args = ["--ray", "local", "--workers", "1", "--chunk-size", "1", *SETTINGS_ARGS, "photos", "--out", "results"]
    stopped = subprocess.Popen(cli(*ray_args, "--csv", "stopped.csv", "--json", "stopped.json"),
                               cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not any((out / "shards").glob("*.parquet")) and stopped.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    stopped.send_signal(signal.SIGTERM)  # what docker stop, timeout and KubeRay send
    stdout, stderr = stopped.communicate(timeout=120)
    assert stopped.returncode == 143, stderr
    assert not [marker for marker in NATIVE_DUMP if marker in stderr], stderr
    assert [line for line in stderr.splitlines() if "--resume" in line] == [
        "lychee-rerank: stopped by SIGTERM; finished results are in results: run the same command with --resume"
    ]
    done = shard_names(out)
    assert 0 < len(done) < len(images) and set(done.values()) == {1}
    rows = read_csv(tmp_path / "stopped.csv")
    assert {row["file"] for row in rows} == files
    assert sum(row["error"].startswith("not scored") for row in rows) == len(images) - len(done)
    stopped_json = json.loads((tmp_path / "stopped.json").read_text(encoding="utf-8"))
    assert stopped_json["cancelled"] is True and stopped_json["pending"] == len(images) - len(done)
    assert len(stopped_json["results"]) == len(images)
    # run.json records the whole settings the command line asked for.
    expected_settings = RunSettings.build(QUERY, model="demo", quantize="8bit", preprocess="fast", max_pixels=MAX_PIXELS)
    assert json.loads((out / "run.json").read_text(encoding="utf-8")) == expected_settings.record()

    resumed = subprocess.run(cli(*ray_args, "--resume", "--csv", "ray.csv"),
                             cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done)} were already in results" in resumed.stderr
    assert shard_names(out) == collections.Counter({name: 1 for name in files})

    # The single-process command on the same command line: the settings it builds (recorded above),
    # loaded and run here (a subprocess would cost another start of torch).
    names = [os.path.relpath(p, tmp_path) for p in images]
    quantised = Reranker.load(expected_settings.model)
    single = quantised.run(expected_settings, images, names=names)
    assert_same_rows(read_csv(tmp_path / "ray.csv"), list(csv.DictReader(io.StringIO(to_csv(single.results)))))
    # Each option decides these scores: a path that dropped either one would be off by far more.
    scores = {r.name: r.score for r in single.scored}
    dropped = {
        "--quantize": (reranker, expected_settings.replace(model=reranker.model_settings)),
        "--preprocess": (quantised, expected_settings.replace(preprocess="exact")),
    }
    for option, (loaded, settings) in dropped.items():
        off = max(abs(r.score - scores[r.name]) for r in loaded.run(settings, images, names=names).scored)
        assert off > 1e-3, option


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """The same rows in the same order; scores equal within 2e-5 (batches differ: float rounding)."""
    assert [row["file"] for row in got] == [row["file"] for row in want]
    for got_row, want_row in zip(got, want):
        assert {**got_row, "score": None} == {**want_row, "score": None}
        if want_row["score"]:
            assert float(got_row["score"]) == pytest.approx(float(want_row["score"]), abs=2e-5)
        else:
            assert got_row["score"] == ""


# --- The Python API on one local Ray session shared by the tests below ---


HANDLERS_BEFORE_RAY: dict = {}  # the SIGINT and SIGTERM handlers before the shared session started


@pytest.fixture(scope="module")
def ray_session(demo_cache):
    import ray

    from lychee_rerank import Reranker
    from lychee_rerank.scale_out.driver import STOP_SIGNALS, connect

    Reranker.load("demo", dtype="float32")  # built once here, not by each replica
    HANDLERS_BEFORE_RAY.update((signum, signal.getsignal(signum)) for signum in STOP_SIGNALS)
    # Started as the command starts it (its workers get this process's LYCHEE_CACHE and HF_HUB_OFFLINE).
    assert connect(ray, "local")
    yield ray
    ray.shutdown()


def test_starting_ray_leaves_the_callers_signal_handlers_in_place(ray_session):
    # ray.init installs its own (sys.exit, or killing Ray's processes and exit 1); the driver's
    # caller decides what a signal does (the command: stop the run, write the outputs).
    assert {signum: signal.getsignal(signum) for signum in HANDLERS_BEFORE_RAY} == HANDLERS_BEFORE_RAY


def single_process_scores(reranker, images) -> dict[str, float | None]:
    ranking = reranker.rank(QUERY, images)
    return {r.name: r.score for r in ranking.results}


def test_every_image_is_scored_exactly_once_with_the_single_process_scores(ray_session, reranker, tmp_path):
    from lychee_rerank.scale_out import rank_on_ray

    images = make_folder(tmp_path / "photos", 10)
    run = rank_on_ray(demo_settings(), images, workers=2, chunk_size=2, out_dir=tmp_path / "out")
    assert shard_names(tmp_path / "out") == collections.Counter({p: 1 for p in images})
    expected = reranker.rank(QUERY, images)
    assert [r.name for r in run.ranking.results] == images  # input order
    for got, want in zip(run.ranking.results, expected.results):
        assert got.error == want.error
        assert (got.width, got.height, got.visual_tokens) == (want.width, want.height, want.visual_tokens)
        if want.score is None:
            assert got.score is None
        else:
            assert got.score == pytest.approx(want.score, abs=2e-5)
    assert [r.name for r in run.ranking.ranked()] == [r.name for r in expected.ranked()]
    assert run.workers == 2 and run.finished_now == len(images) and not run.ranking.cancelled


def _replica_processes():
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if "MapBatches(Replica)" in " ".join(p.cmdline())]


def test_a_replica_killed_mid_run_still_scores_every_image_exactly_once(ray_session, tmp_path):
    from lychee_rerank.scale_out import rank_on_ray

    images = make_folder(tmp_path / "photos", 16, size=160)
    killed = []

    def kill_one_replica(event):
        # Ray Data's replicas are anonymous actors: without the dashboard's state API there is no
        # public handle for ray.kill, so the replica's process is killed, as a crash would.
        if event.done >= 2 and not killed:
            victim = _replica_processes()[0]
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
            killed.append(event.done)

    run = rank_on_ray(demo_settings(), images, workers=2, chunk_size=1,
                      out_dir=tmp_path / "out", progress=kill_one_replica)
    assert killed and killed[0] < len(images)  # killed while images were still to do
    assert shard_names(tmp_path / "out") == collections.Counter({p: 1 for p in images})
    assert len(run.ranking.scored) == len(images) - 1 and len(run.ranking.errors) == 1  # the broken file


def test_resume_after_an_interrupted_run_scores_only_the_missing_images(ray_session, reranker, tmp_path, monkeypatch):
    from lychee_rerank.scale_out import rank_on_ray

    images = make_folder(tmp_path / "photos", 12)
    # A text manifest of relative paths and file:// URIs, as editors and spreadsheets leave them:
    # Windows line ends, trailing spaces, blank lines, repeated entries. Read by Ray Data.
    monkeypatch.chdir(tmp_path)
    entries = [os.path.relpath(p, tmp_path) if i % 2 else Path(p).as_uri() for i, p in enumerate(images)]
    lines = [e + " " * (i % 3) + ("\r\n" if i % 2 else "\n") + ("\n" if i % 4 == 0 else "") for i, e in enumerate(entries)]
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("".join(lines) + f"{entries[3]}\n \t\n{entries[0]} \r\n", encoding="utf-8", newline="")
    out = tmp_path / "out"
    notices = []

    first = rank_on_ray(demo_settings(), manifest=str(manifest), workers=2, chunk_size=2,
                        out_dir=out, should_stop=lambda: True, notice=notices.append)
    assert notices == [f"skipped 5 blank entries in the manifest {manifest}"]
    assert first.ranking.cancelled
    done = shard_names(out)
    assert 0 < len(done) < len(entries) and set(done.values()) == {1}
    # Every entry once, in the manifest's order; those not reached are marked not scored.
    assert [r.name for r in first.ranking.results] == entries
    assert {r.name for r in first.ranking.pending} == set(entries) - set(done)

    totals = []
    second = rank_on_ray(demo_settings(), manifest=str(manifest), workers=2, chunk_size=2,
                         out_dir=out, resume=True, progress=lambda event: totals.append(event.total))
    assert totals[0] == len(entries) - len(done) and second.finished_now == len(entries) - len(done)
    assert second.already_done == len(done)
    assert shard_names(out) == collections.Counter({e: 1 for e in entries})
    expected = single_process_scores(reranker, images)
    scores = {r.name: r.score for r in second.ranking.results}
    for entry, image in zip(entries, images):
        if expected[image] is None:
            assert scores[entry] is None
        else:
            assert scores[entry] == pytest.approx(expected[image], abs=2e-5)


def test_manifest_entries_are_stripped_in_order_and_blank_ones_counted_in_text_csv_or_parquet(ray_session, tmp_path):
    from lychee_rerank.scale_out.driver import manifest_entries

    names = ["a/1.png", "b 2.jpg", "s3://bucket/3.webp", "a/1.png"]
    (tmp_path / "list.txt").write_text("\r\n".join(n + "  " for n in names) + "\r\n\r\n", encoding="utf-8", newline="")
    (tmp_path / "first-column.csv").write_text("file,label\n" + "".join(f"{n} ,x\n" for n in names) + ",x\n", encoding="utf-8")
    pq.write_table(pa.table({"id": [1, 2, 3, 4, 5], "path": [*(f"\t{n}\r" for n in names), None]}), tmp_path / "list.parquet")
    for manifest in ("list.txt", "first-column.csv", "list.parquet"):
        notices = []
        # Duplicates stay here: rank_on_ray takes each input once, whether given or listed.
        assert manifest_entries(ray_session, str(tmp_path / manifest), notices.append) == names, manifest
        assert notices == [f"skipped 1 blank entry in the manifest {tmp_path / manifest}"], manifest


def test_an_empty_manifest_is_a_bad_invocation_in_one_sentence(ray_session, tmp_path, capsys, monkeypatch):
    from lychee_rerank.cli import main

    monkeypatch.delenv("RAY_BACKEND_LOG_LEVEL", raising=False)  # the command sets it: restored afterwards

    (tmp_path / "blank.txt").write_text("\n  \r\n", encoding="utf-8", newline="")
    (tmp_path / "empty.txt").write_bytes(b"")
    for manifest, why in (("blank.txt", " (only 2 blank entries)"), ("empty.txt", "")):
        path = tmp_path / manifest
        # The shared Ray session is reused: the command starts no Ray of its own.
        assert main(["rank", "--ray", "local", "--manifest", str(path), "--model", "demo", "-q", QUERY]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"lychee-rerank: the manifest {path} lists no images{why}"


def test_sigint_to_the_driver_stops_the_run_and_keeps_every_finished_chunk(ray_session, tmp_path):
    from lychee_rerank.scale_out import rank_on_ray

    images = make_folder(tmp_path / "photos", 6)
    handler = signal.getsignal(signal.SIGINT)

    def interrupt(event):
        if event.done:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C; a second one changes nothing

    run = rank_on_ray(demo_settings(), images, workers=2, chunk_size=1, out_dir=tmp_path / "out", progress=interrupt)
    assert run.signal == signal.SIGINT and run.ranking.cancelled
    done = shard_names(tmp_path / "out")
    assert 0 < len(done) < len(images) and set(done.values()) == {1}
    assert [r.name for r in run.ranking.results] == images
    assert {r.name for r in run.ranking.pending} == set(images) - set(done)
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is back


def damage(shard: Path, how: str) -> None:
    data = shard.read_bytes()
    if how == "truncated":  # a crash or a full disk before the end reached the disk
        shard.write_bytes(data[: len(data) // 2])
    else:  # one byte changed inside a page: it reads without error unless the checksum is verified
        at = data.index(b"photo")
        shard.write_bytes(data[:at] + b"Photo" + data[at + 5:])


def test_an_unreadable_shard_is_set_aside_and_its_images_scored_again_exactly_once(ray_session, tmp_path):
    from lychee_rerank.scale_out import rank_on_ray
    from lychee_rerank.scale_out.shards import SHARD_SCHEMA, ShardStore

    images = make_folder(tmp_path / "photos", 6)
    out, shards = tmp_path / "out", tmp_path / "out" / "shards"
    store = ShardStore(out)
    store.open(demo_settings(), resume=False)
    for names in (images[:2], images[2:4], images[4:5]):  # an earlier run's shards, one at a time
        rows = [{"name": name, "score": 0.5, "mode": "batched", "demo_model": True} for name in names]
        store.write(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA))
    kept, truncated, flipped = sorted(shards.glob("*.parquet"))  # named by time: in the order written
    damage(truncated, "truncated")
    damage(flipped, "flipped")

    before, damaged, totals, notices = set(shards.iterdir()), [], [], []

    def damage_a_new_shard(event):
        # One shard of this run damaged before the end: found when the outputs are built.
        totals.append(event.total)
        new = sorted(set(shards.glob("*.parquet")) - before)
        if new and not damaged:
            damage(new[0], "truncated")
            damaged.append(new[0])

    run = rank_on_ray(demo_settings(), images, workers=2, chunk_size=1, out_dir=out, resume=True,
                      progress=damage_a_new_shard, notice=notices.append)
    set_aside = [Path(str(path) + ".corrupt") for path in (truncated, flipped, *damaged)]
    assert all(path.is_file() for path in set_aside) and not truncated.exists() and not flipped.exists()
    assert len(notices) == 3 and all(str(path) in notice for path, notice in zip(set_aside, notices))
    # The two unreadable shards' images were scored again, the kept shard's were not.
    assert totals[0] == len(images) - 2 and run.already_done == 2
    lost = set(images) - set(shard_names(out))
    assert shard_names(out) == collections.Counter({name: 1 for name in set(images) - lost}) and len(lost) == 1
    assert {r.name for r in run.ranking.pending} == lost and str(set_aside[2]) in run.ranking.error
    assert {r.name: r.score for r in run.ranking.results if r.name in images[:2]} == dict.fromkeys(images[:2], 0.5)


def test_a_model_that_cannot_load_is_one_sentence(ray_session, tmp_path):
    from lychee_rerank import ModelLoadError
    from lychee_rerank.scale_out import rank_on_ray

    image = tmp_path / "a.png"
    image.write_bytes(encode(photo(20, 20)))
    with pytest.raises(ModelLoadError) as caught:
        rank_on_ray(RunSettings.build(QUERY, model=str(tmp_path / "no-model-here")), [str(image)], workers=1)
    assert "\n" not in str(caught.value)


def test_an_out_dir_holding_another_run_is_refused(tmp_path):
    from lychee_rerank.scale_out import OutDirError, rank_on_ray
    from lychee_rerank.scale_out.shards import SHARD_SCHEMA, ShardStore

    image = tmp_path / "a.png"
    image.write_bytes(encode(photo(20, 20)))
    store = ShardStore(tmp_path / "out")
    store.open(RunSettings.build("a dog", model="demo"), resume=False)
    store.write(pa.Table.from_pylist([{"name": str(image), "score": 0.5}], schema=SHARD_SCHEMA))
    with pytest.raises(OutDirError, match="--resume"):
        rank_on_ray(demo_settings(), [str(image)], out_dir=tmp_path / "out")
    with pytest.raises(OutDirError, match="another query, dtype"):
        rank_on_ray(demo_settings(), [str(image)], out_dir=tmp_path / "out", resume=True)

