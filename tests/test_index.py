"""The collection index: the demo embedder, incremental updates, search, search then rerank."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from imagegen import encode, photo
from test_cli import run_cli


@pytest.fixture(scope="session")
def embedder(demo_cache):
    from lychee_rerank.retrieval import Embedder

    return Embedder.load("demo")


def make_library(root, count: int, start: int = 0) -> list[str]:
    """Photos of different sizes in two folders (JPEG and PNG)."""
    names = []
    for i in range(start, start + count):
        folder = root / ("trip" if i % 2 else "home")
        folder.mkdir(parents=True, exist_ok=True)
        fmt, suffix = ("JPEG", "jpg") if i % 3 else ("PNG", "png")
        path = folder / f"p{i:03d}.{suffix}"
        path.write_bytes(encode(photo(40 + i % 17 * 3, 30 + i % 11 * 4, seed=i), fmt))
        names.append(str(path))
    return names


def new_index(tmp_path, embedder, root):
    from lychee_rerank.retrieval import Index

    return Index.create(tmp_path / "index", embedder=embedder.info.name, dim=embedder.info.dim, root=str(root))


def test_the_demo_embedder_gives_unit_vectors_of_its_width_for_text_images_and_both(embedder):
    assert embedder.info.is_demo and embedder.info.dim == 32
    images = embedder.embed_images([photo(64, 48, seed=1), photo(30, 90, seed=2)])
    text = embedder.embed_text("海边日落 sunset over the sea")
    both = embedder.embed_query("海边日落 sunset over the sea", photo(64, 48, seed=1))
    assert images.shape == (2, 32) and text.shape == both.shape == (32,)
    np.testing.assert_allclose(np.linalg.norm(np.vstack([images, text, both]), axis=1), 1.0, atol=1e-5)
    # Both: the direction halfway between the text's and the image's unit vectors.
    halfway = (text + images[0]) / np.linalg.norm(text + images[0])
    np.testing.assert_allclose(both, halfway, atol=1e-5)
    assert abs(float(images[0] @ images[1])) < 0.999  # different images, different vectors


def test_a_jpeg_is_embedded_from_a_reduced_decode_no_smaller_than_the_embedder_sees(embedder):
    # NaFlex keeps the aspect ratio with at most 256 patches of 16 pixels.
    width, height = embedder.model_size(4032, 3024)
    assert width % 16 == 0 and height % 16 == 0 and (width // 16) * (height // 16) <= 256
    assert abs(width / height - 4032 / 3024) < 0.1


def test_an_update_embeds_only_new_files_drops_deleted_ones_and_counts_each(tmp_path, embedder):
    from lychee_rerank.retrieval import update_index

    root = tmp_path / "library"
    paths = make_library(root, 30)
    (root / "home" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    index = new_index(tmp_path, embedder, root)

    first = update_index(index, embedder, [str(root)])
    assert (first.added, first.changed, first.removed, first.unchanged, first.errors) == (30, 0, 0, 0, 1)
    assert first.embedded == 30 and first.indexed == 30

    for path in paths[:5]:
        os.remove(path)
    make_library(root, 10, start=100)
    before = embedder.images_embedded
    second = update_index(index, embedder, [str(root)])
    assert (second.added, second.changed, second.removed, second.unchanged, second.errors) == (10, 0, 5, 25, 1)
    assert embedder.images_embedded - before == 10 == second.embedded  # only the new files went through the model
    assert second.indexed == 35


def test_a_changed_file_is_embedded_again_and_a_touched_one_is_not(tmp_path, embedder):
    from lychee_rerank.retrieval import update_index

    root = tmp_path / "library"
    paths = make_library(root, 6)
    index = new_index(tmp_path, embedder, root)
    update_index(index, embedder, [str(root)])
    vector_before = {h.path: h.similarity for h in index.search(embedder.embed_text("a cat"), 6)}

    os.utime(paths[0], ns=(10**18, 10**18))  # same bytes, new time: a restore or `touch`
    (tmp_path / "other.png").write_bytes(encode(photo(80, 80, seed=77)))
    shutil.copyfile(tmp_path / "other.png", paths[1].replace(".png", ".png"))  # new bytes in place
    before = embedder.images_embedded
    report = update_index(index, embedder, [str(root)])
    assert (report.added, report.changed, report.unchanged, report.embedded) == (0, 1, 5, 1)
    assert embedder.images_embedded - before == 1
    after = {h.path: h.similarity for h in index.search(embedder.embed_text("a cat"), 6)}
    touched = os.path.relpath(paths[0], root)
    assert after[touched] == vector_before[touched]  # its vector stayed


def test_search_ranks_by_cosine_similarity_and_stays_inside_the_folders_asked(tmp_path, embedder):
    from lychee_rerank.retrieval import update_index
    from lychee_rerank.retrieval.indexing import scope_keys

    root = tmp_path / "library"
    paths = make_library(root, 12)
    index = new_index(tmp_path, embedder, root)
    update_index(index, embedder, [str(root)])
    query = embedder.embed_text("red sneakers")
    # The reference: the vectors computed afresh, compared by numpy (not through the store).
    expected = embedder.embed_images(paths) @ query
    order = np.argsort(-expected, kind="stable")
    hits = index.search(query, 5)
    assert [h.file for h in hits] == [paths[i] for i in order[:5]]
    np.testing.assert_allclose([h.similarity for h in hits], expected[order[:5]], atol=1e-5)
    assert [h.retrieval_rank for h in hits] == [1, 2, 3, 4, 5]
    trip = index.search(query, 50, scope_keys([str(root / "trip")], str(root)))
    assert len(trip) == 6 and all(h.path.startswith("trip/") for h in trip)
    # An image as the query finds itself first.
    assert index.search(embedder.embed_query(image=paths[7]), 1)[0].file == paths[7]


def test_a_stopped_update_keeps_its_committed_chunks_and_the_next_one_embeds_only_the_rest(tmp_path, embedder):
    from lychee_rerank.retrieval import update_index

    root = tmp_path / "library"
    make_library(root, 10)
    index = new_index(tmp_path, embedder, root)
    events = []
    stopped = update_index(index, embedder, [str(root)], chunk=4, progress=events.append,
                           should_stop=lambda: bool(events) and events[-1].done >= 4)
    assert stopped.cancelled and stopped.indexed == 4 and stopped.pending == 6
    assert events[-1].total == 10 and events[-1].images_per_s > 0
    before = embedder.images_embedded
    finished = update_index(index, embedder, [str(root)])
    assert (finished.added, finished.unchanged, finished.pending, finished.indexed) == (6, 4, 0, 10)
    assert embedder.images_embedded - before == 6


def test_search_then_rerank_scores_the_top_k_as_ranking_everything_would(tmp_path, embedder, reranker):
    from lychee_rerank import RunSettings
    from lychee_rerank.retrieval import RetrievalSettings, search_then_rerank, update_index

    root = tmp_path / "library"
    paths = make_library(root, 24)
    index = new_index(tmp_path, embedder, root)
    update_index(index, embedder, [str(root)])
    settings = reranker.settings("一只猫 a cat")
    everything = {r.name: r.score for r in reranker.run(settings, paths).results}

    ranking = search_then_rerank(reranker, settings, RetrievalSettings.build(index.directory, 5), embedder=embedder)
    assert len(ranking.scored) == 5 and ranking.not_retrieved == 19
    for result in ranking.results:
        assert result.score == pytest.approx(everything[result.name], abs=2e-5)  # names: the absolute paths
    assert sorted(r.retrieval_rank for r in ranking.results) == [1, 2, 3, 4, 5]
    assert ranking.retrieval.record()["searched"] == 24
    assert isinstance(settings, RunSettings)


def test_the_index_command_reports_counts_and_rank_reranks_only_the_top_k(tmp_path):
    root = tmp_path / "library"
    paths = make_library(root, 12)
    index, report = tmp_path / "lib.index", tmp_path / "index.json"
    first = run_cli("index", "--index", str(index), "--embedder", "demo", "--json", str(report), str(root))
    assert first.returncode == 0, first.stderr
    counts = json.loads(report.read_text())
    assert {k: counts[k] for k in ("added", "changed", "removed", "unchanged", "errors")} == dict(
        added=12, changed=0, removed=0, unchanged=0, errors=0)
    assert counts["elapsed_s"] > 0 and "12 added" in first.stderr

    os.remove(paths[0])
    again = run_cli("index", "--index", str(index), "--json", str(report), str(root))
    assert again.returncode == 0, again.stderr
    assert json.loads(report.read_text())["removed"] == 1 and json.loads(report.read_text())["embedded"] == 0

    moved = tmp_path / "moved-library"
    root.rename(moved)  # the library moves: --root points the index at it, nothing is embedded again
    rebased = run_cli("index", "--index", str(index), "--root", str(moved), "--json", str(report), str(moved))
    assert rebased.returncode == 0, rebased.stderr
    assert {k: json.loads(report.read_text())[k] for k in ("unchanged", "embedded", "removed")} == dict(
        unchanged=11, embedded=0, removed=0)

    out = tmp_path / "ranking.json"
    ranked = run_cli("rank", "--index", str(index), "--retrieve", "4", "--model", "demo", "--query", "a cat",
                     "--json", str(out))
    assert ranked.returncode == 0, ranked.stderr
    data = json.loads(out.read_text())
    assert data["scored"] == 4 and data["not_retrieved"] == 7 and data["retrieval"]["retrieve"] == 4
    assert all(row["retrieval_rank"] and row["similarity"] is not None for row in data["results"])
    assert "7 not scored (outside the top 4)" in ranked.stderr


def test_bad_index_invocations_are_one_sentence_and_exit_2(tmp_path):
    missing = run_cli("rank", "--index", str(tmp_path / "nothing"), "--model", "demo", "--query", "a cat")
    assert missing.returncode == 2 and "there is no index in" in missing.stderr and "Traceback" not in missing.stderr
    lonely = run_cli("rank", "--retrieve", "5", "--model", "demo", "--query", "a cat", str(tmp_path))
    assert lonely.returncode == 2 and "--retrieve and --embedder need --index DIR" in lonely.stderr


def test_indexing_on_ray_embeds_each_new_file_once_with_the_one_process_vectors(tmp_path, embedder):
    from lychee_rerank.retrieval import Index
    from lychee_rerank.scale_out.indexing import update_index_on_ray

    root = tmp_path / "library"
    paths = make_library(root, 9)
    (root / "home" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    index = new_index(tmp_path, embedder, root)
    report = update_index_on_ray(index, "demo", [str(root)], address="local", workers=1, chunk_size=4)
    assert (report.added, report.errors, report.embedded, report.indexed) == (9, 1, 9, 9)
    query = embedder.embed_text("a cat")
    expected = embedder.embed_images(paths) @ query
    hits = {h.file: h.similarity for h in Index.open(index.directory).search(query, 9)}
    np.testing.assert_allclose([hits[p] for p in paths], expected, atol=1e-5)


def test_an_ann_index_probing_every_partition_answers_like_the_exact_scan(tmp_path):
    from lychee_rerank.retrieval import Index
    from lychee_rerank.retrieval.store import row

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = Index.create(tmp_path / "index", embedder="synthetic", dim=16, root=str(tmp_path))
    with index.writing():
        index.put([row(f"d/{i}.jpg", f"d/{i}.jpg", None, 1, 1, v) for i, v in enumerate(vectors)])
    queries = vectors[:3] + 0.1 * rng.standard_normal((3, 16)).astype(np.float32)
    exact = [[h.path for h in index.search(q, 10)] for q in queries]
    index.build_ann()
    assert Index.open(index.directory).meta["ann"] == "IVF_FLAT" and index.meta["nprobes"] >= 1
    partitions = round(400 ** 0.5)
    assert [[h.path for h in index.search(q, 10, nprobes=partitions)] for q in queries] == exact
