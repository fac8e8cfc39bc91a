"""`vqedge tokenize`: Parquet shards of tokens from a folder or a list, on local processes and
on a real local Ray instance; the same tokens everywhere, resumable, failures recorded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vqedge.benchmarks.timing import synthetic_images
from vqedge.commands.common import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL
from vqedge.commands.main import main
from vqedge.dataset.ray_engine import actor_plan
from vqedge.dataset.shards import read_shard_info
from vqedge.runtime import load
from vqedge.runtime.inputs import read_image

N_IMAGES = 24
SHARD = 5  # 25 inputs (24 images + a corrupt one) -> 5 shards
COLUMNS = ["path", "height", "width", "token_h", "token_w", "tokens", "bundle_sha256"]
RAY_TIMEOUT_S = 240


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vqedge.commands.main", *args]


@pytest.fixture(scope="module")
def tok():
    return load(threads=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """24 images of 32..96 pixels (some sizes repeated), PNG and JPEG, in a tree, plus a
    corrupt PNG and a text file (not an image: ignored in a folder)."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(1)
    pool = synthetic_images(4, 96, seed=3)
    for i in range(N_IMAGES):
        h, w = (48, 64) if i % 5 == 0 else tuple(int(s) for s in rng.integers(32, 97, 2))
        img = Image.fromarray(pool[i % 4][:h, :w])
        folder = root / ("sub" if i % 3 == 1 else "sub/deeper" if i % 3 == 2 else "")
        img.save(folder / f"img{i:02d}.{'jpg' if i % 4 == 3 else 'png'}")
    (root / "sub" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "notes.txt").write_text("not an image\n")
    return root


def read_out(out: Path) -> dict[str, dict]:
    """Every row of every shard, by path; and check each shard against its metadata."""
    rows = {}
    for shard in sorted(out.glob("part-*.parquet")):
        table = pq.read_table(shard)
        info = read_shard_info(shard)
        assert table.column_names == COLUMNS
        assert table.num_rows == info["tokenized"] == info["images"] - len(info["failures"])
        for row in table.to_pylist():
            rows[row["path"]] = row
    return rows


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def local1(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local1")
    args = ["tokenize", str(images), "--out", str(out), "--workers", "1", "--shard-size", "5"]
    assert main(args) == EXIT_PARTIAL  # the corrupt file failed, the rest were written
    return out


def test_shards_hold_the_tokens_of_every_image(local1, images, tok):
    rows = read_out(local1)
    paths = sorted(p for p in images.rglob("*") if p.suffix in (".png", ".jpg"))
    assert len(rows) == N_IMAGES and len(paths) == N_IMAGES + 1
    for p in paths:
        if p.name == "corrupt.png":
            assert str(p) not in rows
            continue
        row, img = rows[str(p)], read_image(p)
        (expected,) = tok.img_to_idxBl(img)
        assert (row["height"], row["width"]) == img.shape[:2]
        assert (row["token_h"], row["token_w"]) == tok.token_shape(*img.shape[:2])
        assert np.array_equal(row["tokens"], expected[0])
        assert row["bundle_sha256"] == tok.bundle_sha256
    info = read_shard_info(local1 / "part-00000.parquet")
    assert info["token_layout"] == {"kind": "single-scale", "map_sides": []}
    assert info["bundle_sha256"] == tok.bundle_sha256
    assert info["codebook_size"] == 1024 and info["preprocess"] is None
    # the on-device check of the plan the shards were made with, where they were made
    v = info["verification"]
    assert v["plan"] == info["precision"] == {"encoder": "fp32", "decoder": "fp32"}
    assert v["holds"] is True and v["judgements"][0]["tier"] == "tokens"
    assert 0.99 <= v["judgements"][0]["figure"] <= 1 and v["device"] and "seconds" not in v
    s = summary(local1)
    assert s["images"] == {"listed": N_IMAGES + 1, "tokenized": N_IMAGES, "failed": 1}
    assert s["shards"] == {"total": 5, "written": 5, "skipped": 0}
    assert s["workers"] == 1 and s["this_run"]["images"] == N_IMAGES + 1
    assert s["this_run"]["images_per_s"] > 0
    (failure,) = s["failures"]
    assert failure["path"].endswith("corrupt.png") and "cannot read image" in failure["reason"]


def test_a_list_file_records_unreadable_entries_and_goes_on(images, tmp_path, tok, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# a comment, then a blank line\n\n"
        f"{images / 'img00.png'}\n"
        f"{os.path.relpath(images / 'sub' / 'img01.png', tmp_path)}\n"  # relative to the list
        f"{images / 'notes.txt'}\n"
        f"{images / 'sub' / 'corrupt.png'}\n"
        f"{images / 'missing.png'}\n"
    )
    out = tmp_path / "out"
    assert main(["tokenize", str(listing), "--out", str(out), "--workers", "1"]) == EXIT_PARTIAL
    assert "failed" in capsys.readouterr().err
    rows = read_out(out)
    assert sorted(rows) == [str(images / "img00.png"), str(images / "sub" / "img01.png")]
    (expected,) = tok.img_to_idxBl(images / "sub" / "img01.png")
    assert np.array_equal(rows[str(images / "sub" / "img01.png")]["tokens"], expected[0])
    reasons = {Path(f["path"]).name: f["reason"] for f in summary(out)["failures"]}
    assert set(reasons) == {"notes.txt", "corrupt.png", "missing.png"}
    assert "cannot read image" in reasons["notes.txt"]
    assert "cannot read image" in reasons["corrupt.png"]
    assert "not found" in reasons["missing.png"]


def test_a_multiscale_bundle_writes_every_scale(images, tmp_path):
    from vqedge.runtime.images import fit_square

    ms = load("vqvae-ms-f8", threads=1)
    out = tmp_path / "ms"
    args = ["tokenize", str(images / "sub"), "--out", str(out), "--bundle", "vqvae-ms-f8"]
    assert main([*args, "--workers", "1"]) == EXIT_PARTIAL  # sub/ holds the corrupt file
    info = read_shard_info(out / "part-00000.parquet")
    assert info["token_layout"]["map_sides"] == list(ms.patch_nums) and len(ms.patch_nums) > 1
    assert info["preprocess"] == ms.preprocessing and str(ms.resolution) in ms.preprocessing
    rows = read_out(out)
    assert sorted(rows) == sorted(str(p) for p in (images / "sub").rglob("img*"))
    for path, row in rows.items():
        img = read_image(path)
        expected = np.concatenate(ms.img_to_idxBl(fit_square(img, ms.resolution)), axis=1)[0]
        assert len(row["tokens"]) == sum(p * p for p in ms.patch_nums)
        assert np.array_equal(row["tokens"], expected)
        assert (row["height"], row["width"]) == img.shape[:2]  # the size as read, not fitted
        assert row["token_h"] == row["token_w"] == ms.patch_nums[-1]
        assert row["bundle_sha256"] == ms.bundle_sha256


def assert_same_shards(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("part-*.parquet"))
    assert names == sorted(p.name for p in b.glob("part-*.parquet")) and len(names) == 5
    for name in names:
        ta, tb = pq.read_table(a / name), pq.read_table(b / name)
        assert ta.equals(tb), name  # same rows, same tokens, in the same order
        assert read_shard_info(a / name) == read_shard_info(b / name)


@pytest.mark.slow
def test_two_local_workers_write_the_same_shards(local1, images, tmp_path):
    out = tmp_path / "local2"
    args = ["tokenize", str(images), "--out", str(out), "--workers", "2", "--shard-size", "5"]
    assert main(args) == EXIT_PARTIAL
    assert summary(out)["workers"] == 2 and summary(out)["threads_per_worker"] >= 1
    assert_same_shards(local1, out)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_writes_the_same_shards(local1, images, tmp_path):
    """A real local Ray instance (ray.init(num_cpus=2)), in a child process with a timeout."""
    out = tmp_path / "ray"
    args = ["tokenize", str(images), "--out", str(out), "--engine", "ray", "--workers", "2"]
    proc = subprocess.Popen(
        cli(*args, "--shard-size", "5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so a hung run and Ray's own processes can all be stopped
    )
    try:
        stdout, stderr = proc.communicate(timeout=RAY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"vqedge tokenize --engine ray did not finish in {RAY_TIMEOUT_S} s")
    assert proc.returncode == EXIT_PARTIAL, stderr[-3000:]
    s = summary(out)
    assert s["engine"] == "ray" and s["workers"] == 2
    assert 0 < 2 * s["cpus_per_actor"] <= s["cluster_cpus"] - 1  # a CPU left to Ray Data
    assert s["images"]["failed"] == 1 and "corrupt.png" in s["failures"][0]["path"]
    assert_same_shards(local1, out)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """The command in its own session, so that a hung run and its Ray processes can be ended."""
    proc = subprocess.Popen(
        cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"vqedge {args[0]} did not finish in {timeout} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def ray_cluster(tmp_path):
    """A Ray cluster started the standard way, `ray start --head`, in a session of its own;
    its head node holds a token, so token authentication is on (as wherever ray.init() ran
    before). Yields (address, environment); every process of the cluster is ended after."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(tmp_path / "head"), RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([ray_cli, "get-auth-token", "--generate"], env=env, timeout=60, check=True,
                   capture_output=True)  # fmt: skip
    temp = tempfile.mkdtemp(prefix="vqray", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    start = subprocess.Popen(
        [ray_cli, "start", "--head", "--num-cpus", "2", "--include-dashboard=false",
         "--port", str(port), "--temp-dir", temp, "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # the cluster's processes stay in this process group
    )  # fmt: skip
    try:
        log, _ = start.communicate(timeout=120)
        assert start.returncode == 0, log[-3000:]
        assert "Token authentication is enabled" in log
        yield f"127.0.0.1:{port}", env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(start.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _group_alive(start.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(start.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            start.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
def test_joins_a_cluster_started_with_ray_start(ray_cluster, local1, images, tmp_path):
    address, env = ray_cluster
    out = tmp_path / "joined"
    args = ["tokenize", str(images), "--out", str(out), "--engine", "ray", "--address", address]
    r = run_cli([*args, "--workers", "1", "--shard-size", "5"], env, RAY_TIMEOUT_S)
    assert r.returncode == EXIT_PARTIAL, r.stderr[-3000:]
    s = summary(out)
    assert s["engine"] == "ray" and s["address"] == address and s["cluster_cpus"] == 2
    assert_same_shards(local1, out)
    # a driver without the token is told what to set, in one line
    no_token = {**env, "HOME": str(tmp_path / "elsewhere")}
    args[args.index(str(out))] = str(tmp_path / "refused")  # shards to do: Ray is joined
    r = run_cli([*args, "--shard-size", "5"], no_token, RAY_TIMEOUT_S)
    assert r.returncode == EXIT_ERROR
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("vqedge tokenize: error")]
    assert f"cannot join the Ray cluster at {address}" in line
    assert "RAY_AUTH_MODE=token" in line and "RAY_AUTH_TOKEN" in line


def test_rerun_redoes_only_missing_shards_and_drops_temporaries(local1, images, tmp_path):

    out = tmp_path / "resume"
    shutil.copytree(local1, out)
    (out / "part-00002.parquet").unlink()
    left = out / ".part-00003.parquet.k1lled.tmp"  # what a killed writer leaves
    left.write_bytes(b"PAR1 half a shard")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    args = ["tokenize", str(images), "--out", str(out), "--workers", "1", "--shard-size", "5"]
    assert main(args) == EXIT_PARTIAL
    assert not left.exists()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in kept} == (
        kept
    )
    assert_same_shards(local1, out)
    s = summary(out)
    assert s["shards"] == {"total": 5, "written": 1, "skipped": 4}
    assert s["this_run"]["images"] == SHARD
    # the failure recorded in a kept shard is still reported
    assert s["images"] == {"listed": N_IMAGES + 1, "tokenized": N_IMAGES, "failed": 1}


@pytest.mark.slow
def test_a_killed_run_leaves_only_whole_shards(local1, images, tmp_path):
    good = sorted(p for p in images.rglob("img*"))
    listing = tmp_path / "list.txt"  # 240 one-image shards: long enough to be killed midway
    listing.write_text("".join(f"{good[i % len(good)]}\n" for i in range(240)))
    out = tmp_path / "killed"
    args = ["tokenize", str(listing), "--out", str(out), "--workers", "1", "--shard-size", "1"]
    proc = subprocess.Popen(cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    finished = sorted(out.glob("part-*.parquet"))
    assert len(finished) >= 3, "too few shards were written before the deadline"
    assert len(finished) < 240, "the run ended before it was killed"
    for shard in finished:  # every file under a final name is a complete shard
        info = read_shard_info(shard)
        assert info is not None and pq.read_table(shard).num_rows == info["tokenized"] == 1
    assert main(args) == EXIT_OK  # and the next run finishes the job
    assert summary(out)["shards"]["skipped"] >= len(finished)
    assert not list(out.glob(".*.tmp"))
    expected = read_out(local1)
    for shard in sorted(out.glob("part-*.parquet")):
        (row,) = pq.read_table(shard).to_pylist()
        assert row == expected[row["path"]]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]  # the name may hold spaces
    return state, int(ppid)


def children_of(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) and st[0] != "Z":
            parents[int(entry.name)] = st[1]
    found, frontier = [], [pid]
    while frontier:
        kids = [c for c, p in parents.items() if p in frontier]
        found += kids
        frontier = kids
    return found


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if (st := _stat(p)) is not None and st[0] != "Z"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_workers_end_when_the_parent_is_killed(images, tmp_path):
    good = sorted(p for p in images.rglob("img*"))
    listing = tmp_path / "list.txt"  # one-image shards: the run is still going when killed
    listing.write_text("".join(f"{good[i % len(good)]}\n" for i in range(400)))
    out = tmp_path / "orphans"
    args = ["tokenize", str(listing), "--out", str(out), "--workers", "2", "--shard-size", "1"]
    proc = subprocess.Popen(cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("part-*.parquet"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = children_of(proc.pid)  # the two workers and multiprocessing's helpers
        assert len(workers) >= 2, "the workers did not start in time"
        assert proc.poll() is None, "the run ended before it was killed"
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in alive(workers)}
        assert left == {}, "processes outlived the killed run"
    finally:
        for pid in [*children_of(proc.pid), *alive(workers), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    written = len(list(out.glob("part-*.parquet")))
    time.sleep(1)  # nothing is left running that would write more shards
    assert len(list(out.glob("part-*.parquet"))) == written
    assert main(args) == EXIT_OK  # a rerun finishes the job and cleans what was left
    assert not list(out.glob(".*.tmp"))
    assert summary(out)["shards"] == {"total": 400, "written": 400 - written, "skipped": written}


def test_an_output_of_another_run_is_refused(local1, images, capsys):
    # another shard size puts other images in part-00000: its digest differs
    args = ["tokenize", str(images), "--out", str(local1), "--workers", "1", "--shard-size", "4"]
    assert main(args) == EXIT_ERROR
    assert "new --out folder" in capsys.readouterr().err


def test_bad_input_and_usage(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["tokenize", str(tmp_path / "nowhere"), "--out", out]) == EXIT_ERROR
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["tokenize", str(tmp_path / "empty"), "--out", out]) == EXIT_ERROR
    assert "no images" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("# nothing\n")
    assert main(["tokenize", str(tmp_path / "empty.txt"), "--out", out]) == EXIT_ERROR
    assert "no image paths listed" in capsys.readouterr().err
    for bad in ("0", "-2", "two"):
        assert main(["tokenize", str(tmp_path), "--out", out, "--workers", bad]) == EXIT_ERROR
        assert "--workers: must be a positive integer" in capsys.readouterr().err
    assert main(["tokenize", str(tmp_path), "--out", out, "--address", "auto"]) == EXIT_ERROR
    assert "--engine ray" in capsys.readouterr().err


def test_ray_pool_leaves_a_cpu_to_ray_data():
    # 1 CPU per actor on 2 CPUs starved Ray Data's own tasks and hung (see PITFALLS)
    assert actor_plan(2.0, None, 1, 5) == (2, 0.5)
    assert actor_plan(2.0, 4, 1, 3) == (3, 0.33)  # never more actors than shards
    assert actor_plan(64.0, None, 2, 1000) == (32, 1.96)


def test_the_dataset_stage_imports_no_pyarrow_or_ray_until_used():
    code = (
        "import sys, vqedge.dataset.run, vqedge.dataset.shards, vqedge.dataset.local, "
        "vqedge.dataset.ray_engine, vqedge.commands.main as c; c.build_parser(); "
        "print(sorted(m for m in ('pyarrow', 'ray', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
