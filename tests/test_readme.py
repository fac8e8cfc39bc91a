"""The README stays short (details live in docs/) and points only at what exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_LINES = 250


def test_readme_has_at_most_250_lines():
    n = len(README.read_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; move details to docs/"


def test_readme_links_and_make_targets_exist():
    text = README.read_text()
    links = re.findall(r"\]\(((?:docs|models|benchmarks)/[^)#]+|CHANGELOG\.md)", text)
    missing = [link for link in links if not (REPO / link).exists()]
    assert links and not missing, missing
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", (REPO / "Makefile").read_text(), re.M))
    named = set(re.findall(r"(?:^|`)make\s+([a-z][a-z0-9-]*)", text, re.M))
    assert {"demo", "test", "bench", "reconstruct"} <= named and named <= targets, named - targets
