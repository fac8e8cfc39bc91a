"""Every results file names the commit it was made at, and nothing that produces tokens or
timings (runtime/, export/, models/pretrained/, web/src/) changed after it: a change there
reruns the figures (`make bench`).

The check over the real benchmarks/results fails until they are regenerated after the last
such change; the tests over a temporary repository show that it catches a stale file and
passes a fresh one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from vqedge.benchmarks.machine import recorded_commit

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# what produces the tokens and timings a results file reports
PRODUCERS = ("runtime", "export", "models/pretrained", "web/src")


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def staleness(repo: Path, path: Path) -> str | None:
    """Why the results file ``path`` is not current in ``repo``, or None when it is."""
    commit = recorded_commit(path)
    if commit is None:
        return f"{path.name}: names no commit (a '- Commit: <hex>' line or provenance.commit)"
    if _git(repo, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return f"{path.name}: names commit {commit}, which is not in this repository"
    last = _git(repo, "log", "-1", "--format=%H", "HEAD", "--", *PRODUCERS).stdout.strip()
    if last and _git(repo, "merge-base", "--is-ancestor", last, commit).returncode != 0:
        return f"{path.name}: made at {commit[:12]}, before {last[:12]} changed {PRODUCERS}"
    return None


def results_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".md", ".json"))


def test_every_results_file_is_current():
    files = results_files(RESULTS)
    assert files, f"no results files in {RESULTS}"
    stale = [r for f in files if (r := staleness(REPO, f))]
    assert not stale, "regenerate with `make bench`:\n" + "\n".join(stale)


def _commit(repo: Path, rel: str, text: str) -> str:
    f = repo / rel
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)
    _git(repo, "add", "-A")
    proc = _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", rel)
    assert proc.returncode == 0, proc.stderr
    return _git(repo, "rev-parse", "HEAD").stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    assert _git(tmp_path, "init", "-q").returncode == 0
    return tmp_path


def test_a_file_made_before_a_runtime_change_is_stale(repo):
    made_at = _commit(repo, "runtime/tokenizer.py", "v1\n")
    results = repo / "benchmarks" / "results"
    _commit(repo, "benchmarks/results/a.md", f"# a\n\n- Commit: {made_at[:12]}; date: x\n")
    _commit(repo, "benchmarks/results/a.json", json.dumps({"provenance": {"commit": made_at}}))
    assert [staleness(repo, f) for f in results_files(results)] == [None, None]
    # docs and benchmarks changing leaves them current; runtime (or web/src) does not
    _commit(repo, "docs/x.md", "more\n")
    assert [staleness(repo, f) for f in results_files(results)] == [None, None]
    _commit(repo, "web/src/index.js", "v2\n")
    reasons = [staleness(repo, f) for f in results_files(results)]
    assert all(r and "before" in r for r in reasons), reasons


def test_a_file_regenerated_after_the_change_is_current(repo):
    _commit(repo, "export/pipeline.py", "v1\n")
    changed = _commit(repo, "models/pretrained/card.md", "v2\n")
    f = repo / "r.md"
    f.write_text(f"- Commit: {changed}\n")
    assert staleness(repo, f) is None
    later = _commit(repo, "README.md", "words\n")
    f.write_text(f"- Commit: {later[:12]} with uncommitted changes; date: x\n")
    assert staleness(repo, f) is None


def test_a_file_naming_no_commit_or_an_unknown_one_fails(repo):
    _commit(repo, "runtime/a.py", "v1\n")
    none = repo / "hand-made.md"
    none.write_text("# made by hand\n\n- Commit: abab96c (short)\n")
    assert "names no commit" in staleness(repo, none)
    bad_json = repo / "x.json"
    bad_json.write_text(json.dumps({"commit": "9c261e3"}))
    assert "names no commit" in staleness(repo, bad_json)
    unknown = repo / "u.md"
    unknown.write_text("- Commit: " + "ab" * 20 + "\n")
    assert "not in this repository" in staleness(repo, unknown)
