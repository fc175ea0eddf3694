"""The shape of the house, checked from the source: no import circles in the engine, the engine never
imports Streamlit, the UI never imports torch or model code. Imports inside functions count too: a
lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "lychee_rerank"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(folder: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / folder).rglob("*.py"))}


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports (absolute names), at any depth of the file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        state[module] = "done"
        stack.pop()

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_the_engine_has_no_import_circles():
    known = modules(PACKAGE)
    graph = {name: {m for m in imports(name, path, known) if m in known and m != name} for name, path in known.items()}
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_circle():
    """The check above can fail: the cli <-> scale_out circle of an earlier version is found."""
    graph = {"cli": {"scale_out"}, "scale_out": {"scale_out.command"}, "scale_out.command": {"cli"}}
    assert cycles(graph) == [["cli", "scale_out", "scale_out.command", "cli"]]


def test_the_engine_never_imports_streamlit_and_the_ui_never_imports_torch_or_transformers():
    engine = modules(PACKAGE)
    ui = {**modules("ui"), **modules("pages"), "app": ROOT / "app.py"}
    engine_imports = {name: imports(name, path, engine) for name, path in engine.items()}
    assert not {name for name, found in engine_imports.items() if any(m.split(".")[0] == "streamlit" for m in found)}
    ui_imports = {name: imports(name, path, ui) for name, path in ui.items()}
    forbidden = {"torch", "transformers", "qwen_vl_utils"}
    assert not {name for name, found in ui_imports.items() if {m.split(".")[0] for m in found} & forbidden}
