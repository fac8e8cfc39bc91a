"""The project's size limits over the whole package: no module over 600 lines, no function
over 120 (STYLE.md: small flat modules with one job)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("runtime", "commands", "dataset", "benchmarks", "export", "demo", "models")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 120


def modules() -> list[Path]:
    return [
        p
        for folder in FOLDERS
        for p in sorted((REPO / folder).rglob("*.py"))
        if "results" not in p.parts
    ]


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        f"{path.name}:{node.lineno} {node.name} ({n} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES
    ]


def test_no_module_over_600_lines():
    found = modules()
    assert len(found) > 50
    long = [
        f"{p.relative_to(REPO)} ({n} lines)"
        for p in found
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert long == []


def test_no_function_over_120_lines():
    assert [f for p in modules() for f in long_functions(p)] == []


def test_the_function_counter_counts(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n")
    assert long_functions(tmp_path / "m.py") == ["m.py:1 f (121 lines)"]
