"""The rerank service over real HTTP (uvicorn on a free port, httpx/requests clients): vLLM's request
and response shapes, per-document errors, confinement, concurrency, the queue, authentication,
metrics, and the ``serve`` command."""

from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
import requests
import uvicorn

from imagegen import encode, photo
from lychee_rerank import ImageError, ImageResult, Ranking, RunSettings
from lychee_rerank.commands.serve import STAND_IN_QUERY
from lychee_rerank.service import ServiceConfig, SourcePolicy, create_app
from model_card import ModelCardScorer

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 2e-5
QUERY = "海边日落 sunset over the sea"
BIG_BUDGET = 100_000  # forced above one image: concurrent requests' images share forwards on CPU too
MAX_DOCUMENTS = 10


# -- helpers ------------------------------------------------------------------------------------
def free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def live(app):
    """The app served by uvicorn in a thread on a free port; yields its base URL."""
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def data_uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def image_part(url: str) -> dict:
    return {"content": [{"type": "image_url", "image_url": {"url": url}}]}


def vllm_style_client(base_url: str, query: str, image_urls: list[str], top_n: int | None = None):
    """Written the way vLLM's examples/pooling/score/vision_rerank_api_online.py writes its requests:
    the model's name from /v1/models, then a JSON post to /rerank with requests."""
    models_url = base_url + "/v1/models"
    rerank_url = base_url + "/rerank"
    response = requests.get(models_url)
    model = response.json()["data"][0]["id"]
    documents = [{"content": [{"type": "image_url", "image_url": {"url": url}}]} for url in image_urls]
    prompt = {"model": model, "query": query, "documents": documents}
    if top_n is not None:
        prompt["top_n"] = top_n
    return requests.post(rerank_url, json=prompt)


def one_sentence(message: str) -> bool:
    return bool(message) and "\n" not in message and ". " not in message.rstrip(".") and "Traceback" not in message


def assert_error(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["type"]
    assert fragment in error["message"]
    assert one_sentence(error["message"]), error["message"]


# -- the served demo model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Six photos of different sizes and formats, and a link leading out of the folder."""
    folder = tmp_path_factory.mktemp("served-data")
    specs = [((120, 80), "PNG"), ((64, 64), "JPEG"), ((200, 150), "PNG"), ((90, 140), "WEBP"), ((33, 77), "PNG"),
             ((150, 60), "JPEG")]
    for i, ((w, h), fmt) in enumerate(specs):
        (folder / f"photo{i}.{fmt.lower()}").write_bytes(encode(photo(w, h, seed=40 + i), fmt))
    (folder / "escape.png").symlink_to("/etc/passwd")
    return folder


@pytest.fixture(scope="module")
def six_files(data_dir):
    return sorted(p for p in data_dir.iterdir() if p.name.startswith("photo"))


@pytest.fixture(scope="module")
def served(reranker, data_dir):
    template = RunSettings.build(STAND_IN_QUERY, model=reranker.model_settings, token_budget=BIG_BUDGET)
    config = ServiceConfig(("demo",), max_documents=MAX_DOCUMENTS, sources=SourcePolicy(data_dir.resolve()))
    app = create_app(reranker, template, config)
    with live(app) as url:
        yield SimpleNamespace(url=url, app=app)


@pytest.fixture(scope="module")
def cli_scores(six_files, tmp_path_factory):
    """The CLI's scores for the six files, by file name."""
    out = tmp_path_factory.mktemp("cli") / "out.json"
    result = subprocess.run(
        [sys.executable, "-m", "lychee_rerank", "rank", "--model", "demo", "--query", QUERY,
         *map(str, six_files), "--json", str(out)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return {Path(row["file"]).name: row["score"] for row in json.loads(out.read_text())["results"]}


@pytest.fixture(scope="module")
def card(reranker):
    return ModelCardScorer(reranker.info.path)


# -- the Done-when checks -----------------------------------------------------------------------
def test_a_vllm_style_client_gets_six_data_uri_images_best_first_with_the_clis_scores(served, six_files, cli_scores):
    urls = [data_uri(path.read_bytes(), path.suffix[1:]) for path in six_files]
    response = vllm_style_client(served.url, QUERY, urls)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "demo" and body["id"].startswith("rerank-")
    assert "errors" not in body
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(6))
    assert [r["relevance_score"] for r in results] == sorted((r["relevance_score"] for r in results), reverse=True)
    for result in results:
        expected = cli_scores[six_files[result["index"]].name]
        assert result["relevance_score"] == pytest.approx(expected, abs=TOLERANCE)
        # vLLM's RerankDocument: the document as sent
        assert result["document"] == {"text": None, "multi_modal": image_part(urls[result["index"]])["content"]}
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 6 * 10


def test_top_n_returns_only_the_best_n(served, six_files):
    urls = [data_uri(path.read_bytes()) for path in six_files]
    everything = vllm_style_client(served.url, QUERY, urls).json()["results"]
    best = vllm_style_client(served.url, QUERY, urls, top_n=2).json()["results"]
    assert [r["index"] for r in best] == [r["index"] for r in everything[:2]]
    assert vllm_style_client(served.url, QUERY, urls, top_n=0).json()["results"] == everything  # vLLM: 0 = all


def test_etc_passwd_and_broken_base64_each_get_one_sentence_errors_while_the_rest_are_scored(served, six_files):
    documents = [image_part(data_uri(path.read_bytes())) for path in six_files[:4]]
    documents.append(image_part("file:///etc/passwd"))
    documents.append(image_part("data:image/png;base64,iVBORw0KGgo***not base64***"))
    documents.append({"content": [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]})
    response = httpx2.post(served.url + "/v1/rerank", json={"query": QUERY, "documents": documents}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(r["index"] for r in body["results"]) == [0, 1, 2, 3]
    errors = {e["index"]: e["message"] for e in body["errors"]}
    assert set(errors) == {4, 5, 6}
    assert "outside the data folder" in errors[4]
    assert "not valid base64" in errors[5]
    assert "'video_url'" in errors[6]
    assert all(one_sentence(message) for message in errors.values()), errors


def test_eight_concurrent_clients_are_all_answered_with_the_scores_each_gets_alone(served, reranker, card, monkeypatch):
    passes = []
    original = reranker.run_jobs

    def counting(jobs):
        passes.append(len(jobs))
        return original(jobs)

    monkeypatch.setattr(reranker, "run_jobs", counting)
    queries = [f"{word} photo" for word in ("cat", "dog", "sea", "red", "城市", "tree", "car", "sky")]
    pictures = {q: [photo(40 + 11 * k, 36 + 5 * k, seed=100 + 10 * i + k) for k in range(3)] for i, q in enumerate(queries)}
    answers: dict[str, list] = {}
    start = threading.Barrier(len(queries))

    def client(query):
        urls = [data_uri(encode(p)) for p in pictures[query]]
        start.wait()
        answers[query] = vllm_style_client(served.url, query, urls)

    threads = [threading.Thread(target=client, args=(q,)) for q in queries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert max(passes) > 1, f"no pass held more than one request: {passes}"
    for query in queries:
        response = answers[query]
        assert response.status_code == 200, response.text
        got = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
        expected = card.scores(query, pictures[query])
        assert [got[i] for i in range(3)] == pytest.approx(expected, abs=TOLERANCE)


# -- documents and confinement ------------------------------------------------------------------
def test_an_image_query_from_the_data_folder_scores_like_the_model_card(served, six_files, card):
    pictures = [photo(70, 50, seed=7), photo(50, 90, seed=8)]
    query = {"content": [{"type": "text", "text": "the same place"},
                         {"type": "image_url", "image_url": {"url": six_files[1].name}}]}
    body = httpx2.post(served.url + "/v1/rerank", timeout=120, json={
        "query": query, "instruction": "Find photos of the same place.",
        "documents": [data_uri(encode(p)) for p in pictures]}).json()
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    expected = card.scores("the same place", pictures, query_image=str(six_files[1]),
                           instruction="Find photos of the same place.")
    assert [got[0], got[1]] == pytest.approx(expected, abs=TOLERANCE)


def test_a_file_in_the_data_folder_scores_like_its_bytes_and_a_link_out_of_it_is_refused(served, six_files):
    path = six_files[2]
    documents = [
        image_part(data_uri(path.read_bytes())),
        image_part(path.as_uri()),  # file:// with an absolute path
        path.name,  # a plain path, relative to the data folder
        {"image": path.name},  # Jina's shape
        image_part("escape.png"),  # a link inside the folder that leads to /etc/passwd
        image_part("../" + path.parent.name + "/../../etc/passwd"),
    ]
    body = httpx2.post(served.url + "/v1/rerank", json={"query": QUERY, "documents": documents}, timeout=120).json()
    scores = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert set(scores) == {0, 1, 2, 3}
    assert max(scores.values()) - min(scores.values()) <= TOLERANCE
    errors = {e["index"]: e["message"] for e in body["errors"]}
    assert "outside the data folder" in errors[4] and "outside the data folder" in errors[5]


def test_a_single_content_object_is_one_document_and_jina_base64_is_accepted(served, six_files):
    raw = six_files[0].read_bytes()
    single = httpx2.post(served.url + "/rerank", json={"query": QUERY, "documents": image_part(data_uri(raw))}).json()
    jina = httpx2.post(served.url + "/rerank", json={"query": QUERY, "return_documents": False,
                                                     "documents": [{"image": base64.b64encode(raw).decode()}]}).json()
    assert len(single["results"]) == len(jina["results"]) == 1
    assert single["results"][0]["relevance_score"] == pytest.approx(jina["results"][0]["relevance_score"], abs=TOLERANCE)
    assert "document" not in jina["results"][0]


def test_score_answers_in_vllms_shape_in_input_order(served, six_files):
    urls = [data_uri(path.read_bytes()) for path in six_files[:3]]
    body = httpx2.post(served.url + "/score", json={"text_1": QUERY, "text_2": [image_part(u) for u in urls]}).json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "score" and 0 <= d["score"] <= 1 for d in body["data"])
    assert body["usage"]["completion_tokens"] == 0


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        ({"documents": ["a.png"]}, 400, '"query" is missing'),
        ({"query": "x"}, 400, '"documents" is missing'),
        ({"query": "x", "documents": []}, 400, "is empty"),
        ({"query": "x", "documents": ["a.png"] * (MAX_DOCUMENTS + 1)}, 400, f"at most {MAX_DOCUMENTS}"),
        ({"query": "x", "documents": ["a.png"], "top_n": -1}, 400, '"top_n"'),
        ({"query": "x", "documents": ["a.png"], "model": "gpt-4"}, 404, "does not exist"),
        ({"query": {"content": [{"type": "input_audio"}]}, "documents": ["a.png"]}, 400, "'input_audio'"),
        ({"query": "a<|im_end|>b", "documents": ["photo0.png"]}, 400, "control token"),
        ({"query": "x", "documents": [{"content": [{"type": "text", "text": "words"}]}]}, 400, "document 0: this document has text parts"),
        ({"query": "x", "documents": ["data:image/png;base64,%%%"]}, 400, "document 0: the data: URI's base64"),
        ({"query": "x", "documents": ["https://example.com/cat.jpg"]}, 400, "does not fetch remote images"),
    ],
)
def test_every_bad_request_gets_a_json_error_with_the_right_status_and_one_sentence(served, body, status, fragment):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx2.post(served.url + "/v1/rerank", content=content, headers={"content-type": "application/json"})
    assert_error(response, status, fragment)


def test_an_unknown_path_and_a_wrong_method_are_json_errors(served):
    assert_error(httpx2.get(served.url + "/v1/embeddings"), 404, "no such endpoint")
    assert_error(httpx2.get(served.url + "/v1/rerank"), 405, "method")


def test_metrics_count_requests_images_and_show_the_queue(served, six_files):
    httpx2.post(served.url + "/v1/rerank", json={"query": QUERY, "documents": [data_uri(six_files[0].read_bytes()), "words here"]})
    text = httpx2.get(served.url + "/metrics").text
    assert 'lychee_requests_total{endpoint="rerank",status="200"}' in text
    assert 'lychee_images_total{outcome="error"}' in text and 'lychee_images_total{outcome="scored"}' in text
    assert "lychee_request_seconds_bucket" in text and "lychee_queue_depth 0.0" in text


# -- queue, disconnection, authentication, remote images: a stand-in engine ---------------------
class StandInReranker:
    """What the scheduler calls (run_jobs), holding each pass until released or its jobs stop."""

    info = SimpleNamespace(name="stand-in")

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.saw_stop = threading.Event()
        self.images: list[bytes] = []

    def run_jobs(self, jobs):
        self.started.set()
        stops = [job.should_stop for job in jobs]
        while not self.release.is_set():
            if all(stop is not None and stop.is_set() for stop in stops):
                self.saw_stop.set()
                break
            self.release.wait(0.02)
        rankings = []
        for job in jobs:
            self.images += list(job.images)
            results = tuple(ImageResult(i, name, score=0.5, tokens=10) for i, name in enumerate(job.names))
            rankings.append(Ranking(job.settings.query, job.settings.instruction, results, "batched", 0.0,
                                    cancelled=bool(job.should_stop and job.should_stop.is_set())))
        return rankings


def stand_in_app(engine, **config):
    template = RunSettings.build(STAND_IN_QUERY, model="stand-in")
    return create_app(engine, template, ServiceConfig(("stand-in",), **config))


PNG = encode(photo(8, 8))


def test_a_full_queue_answers_503_with_retry_after_and_the_waiting_requests_are_answered():
    engine = StandInReranker()
    app = stand_in_app(engine, max_waiting=1)
    request = {"query": "x", "documents": [data_uri(PNG)]}
    with live(app) as url, httpx2.Client(timeout=60) as client:
        answers = []
        first = threading.Thread(target=lambda: answers.append(client.post(url + "/v1/rerank", json=request)))
        first.start()
        assert engine.started.wait(30)
        second = threading.Thread(target=lambda: answers.append(client.post(url + "/v1/rerank", json=request)))
        second.start()
        scheduler = app.state.service.scheduler
        deadline = time.monotonic() + 30
        while scheduler.depth < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = client.post(url + "/v1/rerank", json=request)
        assert_error(refused, 503, "busy")
        assert int(refused.headers["retry-after"]) >= 1
        engine.release.set()
        first.join(60)
        second.join(60)
    assert [a.status_code for a in answers] == [200, 200]


def test_a_client_that_goes_away_has_its_work_dropped():
    engine = StandInReranker()
    with live(stand_in_app(engine)) as url:
        with pytest.raises(httpx2.TimeoutException):
            httpx2.post(url + "/v1/rerank", json={"query": "x", "documents": [data_uri(PNG)]}, timeout=0.5)
        assert engine.saw_stop.wait(30), "the engine was never told to stop"


def test_with_an_api_key_every_endpoint_but_health_and_metrics_needs_it():
    with live(stand_in_app(StandInReranker(), api_key="s3cret")) as url:
        assert_error(httpx2.get(url + "/v1/models"), 401, "API key")
        assert_error(httpx2.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "API key")
        assert_error(httpx2.post(url + "/v1/rerank", json={}), 401, "API key")
        assert httpx2.get(url + "/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx2.get(url + "/health").status_code == 200
        assert httpx2.get(url + "/metrics").status_code == 200


def test_a_data_folder_file_reaches_the_engine_as_a_file_checked_where_it_is_opened(tmp_path):
    (tmp_path / "cat.png").write_bytes(PNG)
    engine = StandInReranker()
    engine.release.set()
    with live(stand_in_app(engine, sources=SourcePolicy(tmp_path.resolve()))) as url:
        assert httpx2.post(url + "/v1/rerank", json={"query": "x", "documents": ["cat.png"]}).status_code == 200
    [source] = engine.images
    with source.open() as file:
        assert file.read() == PNG
    (tmp_path / "cat.png").unlink()  # swapped for a link out after the request was checked
    (tmp_path / "cat.png").symlink_to("/etc/passwd")
    with pytest.raises(ImageError, match="outside the data folder"):
        source.open()


@contextmanager
def image_server():
    """A local HTTP server: /cat.png (an image), /big.png (too large), /away (a redirect to file://),
    /hop (a redirect to /cat.png)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            routes = {"/cat.png": (200, {}, PNG), "/big.png": (200, {}, b"\x89PNG" + b"\0" * 5000),
                      "/away": (302, {"Location": "file:///etc/passwd"}, b""), "/hop": (302, {"Location": "/cat.png"}, b"")}
            status, headers, body = routes.get(self.path, (404, {}, b""))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_remote_images_are_fetched_only_when_allowed_within_limits_and_never_redirected_to_files():
    engine = StandInReranker()
    engine.release.set()
    policy = SourcePolicy(allow_remote=True, max_image_bytes=4096, remote_timeout_s=5)
    with image_server() as images, live(stand_in_app(engine, sources=policy)) as url:
        documents = [images + "/cat.png", images + "/hop", images + "/big.png", images + "/away", images + "/none.png"]
        body = httpx2.post(url + "/v1/rerank", json={"query": "x", "documents": documents}, timeout=60).json()
    assert sorted(r["index"] for r in body["results"]) == [0, 1]
    assert engine.images == [PNG, PNG]
    errors = {e["index"]: e["message"] for e in body["errors"]}
    assert "larger than" in errors[2]
    assert "only http(s) redirects" in errors[3]
    assert "HTTP 404" in errors[4]
    assert all(one_sentence(m) for m in errors.values()), errors


# -- the serve command --------------------------------------------------------------------------
def test_serve_refuses_a_port_in_use_in_one_line_before_loading(tmp_path):
    with free_socket() as taken:
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "lychee_rerank", "serve", "--model", "demo", "--port", str(port)],
                                cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr


def start_serve(*args: str, wait_s: float = 300, **env: str) -> tuple[subprocess.Popen, str]:
    """``python -m lychee_rerank serve ARGS`` on a free port, once it answers /health."""
    with free_socket() as probe:
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "lychee_rerank", "serve", *args, "--port", str(port)],
                               cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), **env), stderr=subprocess.PIPE,
                               text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"serve did not start: {stop_serve(process)}")
        try:
            if httpx2.get(url + "/health").status_code == 200:
                return process, url
        except httpx2.TransportError:
            pass
        time.sleep(0.2)


def stop_serve(process: subprocess.Popen) -> str:
    """SIGTERM, then the process's stderr once it has exited."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    return stderr


def test_serve_answers_with_the_api_key_from_the_environment_and_stops_on_sigterm(six_files):
    process, url = start_serve("--model", "demo", LYCHEE_API_KEY="k3y")
    try:
        request = {"query": QUERY, "documents": [data_uri(six_files[0].read_bytes())]}
        assert httpx2.post(url + "/v1/rerank", json=request).status_code == 401
        answer = httpx2.post(url + "/v1/rerank", json=request, headers={"Authorization": "Bearer k3y"}, timeout=120)
        assert answer.status_code == 200 and len(answer.json()["results"]) == 1
    finally:
        stderr = stop_serve(process)
    # uvicorn shuts down gracefully, then lets the signal end the process (the shell reports 143)
    assert process.returncode == -signal.SIGTERM, stderr
    assert "serving demo on http://127.0.0.1:" in stderr
    assert "Traceback" not in stderr


def test_ray_serve_puts_one_replica_on_each_gpu_and_asked_replicas_on_cpu():
    from lychee_rerank.service.on_ray import RayServeError, replica_plan

    assert replica_plan(4, None) == (4, 1)
    assert replica_plan(4, 2) == (2, 1)
    assert replica_plan(0, None) == (1, 0)
    assert replica_plan(0, 3) == (3, 0)
    with pytest.raises(RayServeError, match="the cluster has 2 GPUs"):
        replica_plan(2, 3)


def test_serve_on_ray_answers_a_vllm_style_client_with_the_clis_scores_and_stops_on_sigterm(six_files, cli_scores):
    process, url = start_serve("--ray", "local", "--model", "demo")
    try:
        urls = [data_uri(path.read_bytes(), path.suffix[1:]) for path in six_files[:2]]
        response = vllm_style_client(url, QUERY, urls)
        assert response.status_code == 200, response.text
        for result in response.json()["results"]:
            expected = cli_scores[six_files[result["index"]].name]
            assert result["relevance_score"] == pytest.approx(expected, abs=TOLERANCE)
    finally:
        stderr = stop_serve(process)
    assert process.returncode == 0, stderr
    assert "with Ray Serve (1 replica on CPU)" in stderr and "stopping on SIGTERM" in stderr
    assert "Traceback" not in stderr and "INFO" not in stderr, stderr
