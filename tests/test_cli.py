"""The `vqedge` command: each command end to end on real images and the shipped bundle, the
error rule (one line naming the file, exit 1 or 3, a traceback only with --debug), output
names that never collide, a light `--help`, and an import graph without cycles."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqedge.commands.common import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL
from vqedge.commands.main import main
from vqedge.models.data import held_out_paths
from vqedge.runtime import load
from vqedge.runtime.inputs import read_image
from vqedge.runtime.session import bundle_path
from vqedge.runtime.tokens import load_tokens

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return load()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return read_image(held_out_paths()[2])


@pytest.fixture
def folder(tmp_path, photo):
    """Two real photo crops (one nested) and one corrupt file."""
    root = tmp_path / "in"
    (root / "nested").mkdir(parents=True)
    Image.fromarray(photo[:40, :52]).save(root / "a.png")
    Image.fromarray(photo[100:164, 200:248]).save(root / "nested" / "b.jpg", quality=95)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


def test_encode_folder_records_a_corrupt_image_and_writes_the_others(folder, tmp_path, capsys, tok):
    out = tmp_path / "tokens"
    assert main(["encode", str(folder), "-o", str(out)]) == EXIT_PARTIAL
    (line,) = [x for x in error_lines(capsys) if "failed" in x]
    assert line.startswith("vqedge encode: failed ") and str(folder / "broken.png") in line
    a = load_tokens(out / "a.vqt", bundle_sha256=tok.bundle_sha256)
    b = load_tokens(out / "nested" / "b.vqt", bundle_sha256=tok.bundle_sha256)
    assert a.image_size == (40, 52) and a.indices.shape == (1, 10, 13)
    assert np.array_equal(a.indices, tok.encode(folder / "a.png"))
    assert b.indices.shape == (1, 16, 12)
    assert not (out / "broken.vqt").exists()


def test_encode_keeps_relative_paths_of_same_named_inputs(tmp_path, photo, capsys, tok):
    for sub, crop in (("a", photo[:32, :32]), ("b", photo[64:96, 64:96])):
        (tmp_path / sub).mkdir()
        Image.fromarray(crop).save(tmp_path / sub / "x.png")
    out = tmp_path / "out"
    args = ["encode", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "-o", str(out)]
    assert main(args) == EXIT_OK
    assert "encoded 2 image(s)" in capsys.readouterr().out
    for sub in ("a", "b"):
        written = load_tokens(out / sub / "x.vqt", bundle_sha256=tok.bundle_sha256)
        assert np.array_equal(written.indices, tok.encode(tmp_path / sub / "x.png"))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.vqt")) == [
        "a/x.vqt",
        "b/x.vqt",
    ]


def test_encode_refuses_two_inputs_for_one_token_file(tmp_path, photo, capsys):
    Image.fromarray(photo[:32, :32]).save(tmp_path / "x.png")
    Image.fromarray(photo[:32, :32]).save(tmp_path / "x.jpg")
    out = tmp_path / "out"
    args = ["encode", str(tmp_path / "x.png"), str(tmp_path / "x.jpg"), "-o", str(out)]
    assert main(args) == EXIT_ERROR
    (line,) = error_lines(capsys)
    assert str(tmp_path / "x.png") in line and str(tmp_path / "x.jpg") in line
    assert not out.exists()  # refused before anything was written
    assert main([*args[:3], "-o", str(tmp_path / "one.vqt")]) == EXIT_ERROR
    assert "one token file" in error_lines(capsys)[0]


def test_encode_decode_round_trip_equals_reconstruct(folder, tmp_path, capsys, tok):
    vqt, png, rec = tmp_path / "a.vqt", tmp_path / "a.png", tmp_path / "rec.png"
    assert main(["encode", str(folder / "a.png"), "-o", str(vqt)]) == EXIT_OK
    assert "bits per pixel" in capsys.readouterr().out
    assert main(["decode", str(vqt), "-o", str(png)]) == EXIT_OK
    assert main(["reconstruct", str(folder / "a.png"), "-o", str(rec)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "PSNR" in out and "bits per pixel" in out and "10x13 token map" in out
    decoded = np.asarray(Image.open(png))
    assert decoded.shape == (40, 52, 3)
    assert np.array_equal(decoded, np.asarray(Image.open(rec)))
    assert np.array_equal(decoded, tok.reconstruct(folder / "a.png")[0][0])


def test_multiscale_reconstruct_says_how_images_are_fitted(folder, tmp_path, capsys):
    rec = tmp_path / "rec.png"
    args = ["reconstruct", str(folder / "a.png"), "-o", str(rec), "--bundle", "vqvae-ms-f8"]
    assert main(args) == EXIT_OK
    captured = capsys.readouterr()
    ms = load("vqvae-ms-f8")
    assert ms.preprocessing in captured.err
    assert f"{ms.num_tokens} tokens over {len(ms.patch_nums)} scales" in captured.out
    assert np.asarray(Image.open(rec)).shape == (ms.resolution, ms.resolution, 3)


def test_tokens_of_another_bundle_need_force(folder, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(bundle_path(None), other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["name"] = "another-export"  # another manifest: another bundle identity
    (other / "manifest.json").write_text(json.dumps(manifest))
    vqt = tmp_path / "a.vqt"
    assert main(["encode", str(folder / "a.png"), "-o", str(vqt)]) == EXIT_OK
    capsys.readouterr()
    args = ["decode", str(vqt), "-o", str(tmp_path / "x.png"), "--bundle", str(other)]
    assert main(args) == EXIT_ERROR
    (line,) = error_lines(capsys)
    assert line.startswith("vqedge decode: error: ") and "force" in line
    with pytest.warns(UserWarning):
        assert main([*args, "--force"]) == EXIT_OK


def test_a_missing_input_is_one_line_naming_it(tmp_path, capsys):
    missing = tmp_path / "missing.png"
    assert main(["encode", str(missing), "-o", str(tmp_path)]) == EXIT_ERROR
    assert error_lines(capsys) == [f"vqedge encode: error: input not found: {missing}"]
    assert main(["decode", str(tmp_path / "none.vqt"), "-o", str(tmp_path / "x.png")]) == 1
    (line,) = error_lines(capsys)
    assert str(tmp_path / "none.vqt") in line


def test_an_unreadable_image_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["reconstruct", str(tmp_path / "bad.png"), "-o", str(tmp_path / "o.png")]) == 1
    (line,) = error_lines(capsys)
    assert line.startswith("vqedge reconstruct: error: ") and str(tmp_path / "bad.png") in line


@pytest.mark.parametrize("damage", ["empty folder", "no variants", "not utf-8"])
def test_a_bad_bundle_folder_is_one_line_naming_it(tmp_path, capsys, damage):
    bundle = tmp_path / "bundle"
    if damage == "empty folder":
        bundle.mkdir()
    else:
        shutil.copytree(bundle_path(None), bundle)
        manifest = bundle / "manifest.json"
        if damage == "no variants":
            m = json.loads(manifest.read_text())
            del m["variants"]
            manifest.write_text(json.dumps(m))
        else:
            manifest.write_bytes(b"\xff\xfe{" + manifest.read_bytes())
    assert main(["info", "--bundle", str(bundle)]) == EXIT_ERROR
    (line,) = error_lines(capsys)
    assert line.startswith("vqedge info: error: ") and str(bundle) in line


def test_usage_errors_exit_1_in_one_line(capsys):
    assert main(["encode"]) == EXIT_ERROR
    (line,) = error_lines(capsys)
    assert line.startswith("vqedge encode: error: ") and "--output" in line
    assert main(["no-such-command"]) == EXIT_ERROR
    assert "invalid choice" in error_lines(capsys)[0]
    assert main(["bench", "--size", "0"]) == EXIT_ERROR
    assert "--size: must be a positive integer" in error_lines(capsys)[0]
    assert main(["info", "--precision", "fp8"]) == EXIT_ERROR
    (line,) = error_lines(capsys)
    assert "fp8" in line and "fp32" in line  # the runtime names the choices


def test_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "missing.png")
    with pytest.raises(Exception, match="input not found"):
        main(["--debug", "encode", missing, "-o", str(tmp_path)])


def test_info_lists_what_runs(capsys):
    assert main(["info"]) == EXIT_OK
    out = capsys.readouterr().out
    for label, value in load().describe():  # as `vqedge info` loads it
        assert f"{label:<12}{value}" in out
    assert "f=4, K=1024" in out and "CPUExecutionProvider" in out
    assert main(["info", "--json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["providers_in_use"]["encoder"] == ["CPUExecutionProvider"]


def test_help_and_version_import_neither_torch_nor_onnxruntime():
    code = (
        "import sys\n"
        "from vqedge.commands.main import main\n"
        "for argv in (['--help'], ['--version'], ['tokenize', '--help'], ['demo', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, argv\n"
        "heavy = ('torch', 'onnxruntime', 'gradio', 'pyarrow', 'ray', 'PIL')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "usage: vqedge" in r.stdout and "vqedge tokenize" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "[]"


# -- the import graph ----------------------------------------------------------------------

# source folder -> package, as pyproject.toml installs them
PACKAGES = {
    "runtime": "vqedge.runtime",
    "commands": "vqedge.commands",
    "dataset": "vqedge.dataset",
    "benchmarks": "vqedge.benchmarks",
    "export": "vqedge.export",
    "demo": "vqedge.demo",
    "models": "vqedge.models",
}
# what the runtime library may never import: everything that sits beside it
NOT_IN_RUNTIME = [p for p in PACKAGES.values() if p != "vqedge.runtime"]


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except what sits under ``if TYPE_CHECKING:`` (never executed)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            name = getattr(test, "id", None) or getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                todo += child.orelse
            else:
                todo.append(child)


# "vqedge.x.y:Name": a class named by a table (the kinds' runtime classes and recipes)
NAMED_TARGET = re.compile(r"^(vqedge(?:\.\w+)+):\w+$")


def _named_imports(node: ast.AST) -> list[str]:
    """The modules ``node`` imports by name: ``import_module("vqedge...")`` with a literal,
    or a ``"vqedge.module:Class"`` string a table resolves later."""
    func = getattr(node, "func", None)
    if isinstance(node, ast.Call) and getattr(func, "id", getattr(func, "attr", "")) == (
        "import_module"
    ):
        arg = node.args[0] if node.args else None
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return [arg.value]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        m = NAMED_TARGET.match(node.value)
        if m:
            return [m.group(1)]
    return []


def import_graph(named: bool = False) -> dict[str, set[str]]:
    """vqedge module -> the vqedge modules it imports, at any depth of its code (lazy ones
    too); imports for type checkers only are left out: they never run. With ``named``, the
    modules imported by name (``import_module("...")``, ``"module:Class"`` table entries)
    count too."""
    files = {}
    for folder, package in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            if "results" in path.parts:
                continue
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join(
                [package, *parts[:-1]] + ([] if parts[-1] == "__init__" else [parts[-1]])
            )
            files[name] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if named:
                targets.update(_named_imports(node))
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                for a in node.names:  # `from pkg import module` imports the module
                    targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_another_that_imports_it_back():
    graph = import_graph(named=True)
    assert "vqedge.commands.main" in graph and "vqedge.dataset.run" in graph
    # modules imported by name are followed: the table of kinds names its runtime classes
    assert "vqedge.runtime.tokenizer" in graph["vqedge.runtime.kind"]
    assert cycles(graph) == []


def test_the_import_graph_follows_modules_imported_by_name():
    tree = ast.parse(
        'import_module("vqedge.runtime.kinds")\nT = "vqedge.runtime.base:TokenizerBase"'
    )
    found = [t for node in ast.walk(tree) for t in _named_imports(node)]
    assert found == ["vqedge.runtime.kinds", "vqedge.runtime.base"]


def test_the_runtime_imports_nothing_beside_it():
    graph = import_graph()
    wrong = {
        (m, t)
        for m, targets in graph.items()
        if m.startswith("vqedge.runtime")
        for t in targets
        if any(t == p or t.startswith(p + ".") for p in NOT_IN_RUNTIME)
    }
    assert wrong == set()


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
