"""Every message of the engine that a user of the app can see has its Chinese (ui/engine_text.py),
and the app's own words for progress and durations follow the language.

The engine's messages are read from its source (every string or f-string handed to one of its
user-facing errors, every skip reason, every message constant), so a message added to the engine
without a translation fails here, and so does a template whose message the engine no longer has.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from unittest.mock import patch

import pytest
import streamlit as st

from lychee_rerank import Progress
from ui import engine_text, fmt, style

ENGINE = Path(__file__).resolve().parent.parent / "lychee_rerank"
# What the app can show: the errors a run, a file, a folder or a model load reports to a user.
USER_ERRORS = {
    "ImageError", "InputError", "ModelLoadError", "QuantizationError", "QueryTooLongError", "InputPathError",
    "IndexStoreError", "CacheUnavailable",
}
# The engine's command-line and scale-out parts: their messages reach a terminal, never the app.
NOT_IN_THE_APP = {"bench", "scale_out", "service", "commands", "cli.py", "export.py"}
CJK = re.compile(r"[\u4e00-\u9fff]")


def _sample(node: ast.AST) -> list[str]:
    """The text of a string or f-string node, each formatted part as "X"; both sides of a choice."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)]
    if isinstance(node, ast.IfExp):
        return _sample(node.body) + _sample(node.orelse)
    return []


def engine_messages() -> list[tuple[str, str]]:
    """(where, message) for every user-facing message written in the engine's source."""
    found = []
    for path in sorted(ENGINE.rglob("*.py")):
        if NOT_IN_THE_APP & set(path.relative_to(ENGINE).parts):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            texts: list[str] = []
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in USER_ERRORS and node.args:
                    texts = _sample(node.args[0])
                elif name == "append" and "skipped" in (getattr(node.func.value, "attr", None), getattr(node.func.value, "id", None)):
                    texts = _sample(node.args[0].elts[1]) if isinstance(node.args[0], ast.Tuple) else []
            elif isinstance(node, ast.Assign) and any(
                getattr(t, "id", "").endswith(("MESSAGE", "HINT")) or getattr(t, "id", "") == "message" for t in node.targets
            ):
                texts = _sample(node.value)
            elif isinstance(node, ast.FunctionDef) and node.name in ("_explain", "describe_load_failure", "_too_long_message"):
                texts = [text for ret in ast.walk(node) if isinstance(ret, ast.Return) and ret.value for text in _sample(ret.value)]
            found += [(f"{path.relative_to(ENGINE)}:{node.lineno}", " ".join(text.split())) for text in texts]
    return found


def test_the_engine_has_messages_to_check():
    assert len(engine_messages()) > 60


@pytest.mark.parametrize(("where", "message"), engine_messages())
def test_every_engine_message_has_its_chinese(where, message):
    chinese = engine_text.to_chinese(message)
    assert chinese is not None and CJK.search(chinese), f"{where}: no Chinese for {message!r}"


def test_every_template_still_matches_a_message_of_the_engine():
    messages = [message for _, message in engine_messages()]
    unused = [english for english, _ in engine_text.TEMPLATES
              if not any(engine_text.to_chinese(m) is not None and _matches(english, m) for m in messages)]
    assert not unused, f"templates the engine no longer uses: {unused}"


def _matches(template: str, message: str) -> bool:
    parts = re.split(r"\{\w+\}", template)
    return re.fullmatch(".+?".join(re.escape(p) for p in parts), message, re.DOTALL) is not None


def test_nested_pieces_are_translated_too():
    message = "the query image cannot be used: the file cannot be read (Permission denied)"
    assert engine_text.to_chinese(message) == "查询图片无法使用：无法读取该文件（权限不足）"
    assert engine_text.to_chinese("the query contains '<|im_end|>', a control token of the model's prompt; remove "
                                  "it (such tokens are never read as text, they would change the prompt's structure)"
                                  ).startswith("查询包含 '<|im_end|>'")
    assert engine_text.to_chinese("a RuntimeError nobody foresaw") is None  # shown as it is, never lost


def test_progress_and_durations_follow_the_language():
    event = Progress(37, 120, 30.0, 1.2345, 242.0)
    with patch.object(st, "session_state", {"lang": "zh"}):
        assert fmt.progress(event) == "37/120 · 每秒 1.2 张 · 预计还需 4 分 02 秒"
        assert [fmt.seconds(s) for s in (4.24, 42, 3900)] == ["4.2 秒", "42 秒", "1 小时 05 分"]
        assert engine_text.sentence("not an image") == "不是图片。"
    with patch.object(st, "session_state", {"lang": "en"}):
        assert fmt.progress(event) == "37/120 · 1.2 img/s · ETA 4 min 02 s"
        assert engine_text.sentence("not an image") == "Not an image."


def test_the_uploaders_own_words_are_drawn_in_chinese():
    css = style.uploader_css("zh")
    assert 'content: "上传"' in css and 'content: "上传文件夹"' in css and "每个文件最大 200 MB" in css
