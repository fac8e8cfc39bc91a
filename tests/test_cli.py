import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vqedge.models.data import held_out_paths
from vqedge.runtime.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, main
from vqedge.runtime.inputs import read_image
from vqedge.runtime.tokenizer import Tokenizer, bundle_path
from vqedge.runtime.tokens import load_tokens


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.load()


@pytest.fixture
def folder(tmp_path):
    """Two real photo crops (one nested) and one corrupt file."""
    root = tmp_path / "in"
    (root / "nested").mkdir(parents=True)
    photo = read_image(held_out_paths()[2])
    Image.fromarray(photo[:40, :52]).save(root / "a.png")
    Image.fromarray(photo[100:164, 200:248]).save(root / "nested" / "b.jpg", quality=95)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def test_encode_folder_reports_failures_and_keeps_going(folder, tmp_path, capsys, tok):
    out = tmp_path / "tokens"
    assert main(["encode", str(folder), "-o", str(out)]) == EXIT_PARTIAL
    err = capsys.readouterr().err
    assert "broken.png" in err and "cannot read image" in err
    a = load_tokens(out / "a.vqt", bundle_sha256=tok.bundle_sha256)
    b = load_tokens(out / "nested" / "b.vqt", bundle_sha256=tok.bundle_sha256)
    assert a.image_size == (40, 52) and a.indices.shape == (1, 10, 13)
    assert np.array_equal(a.indices, tok.encode(folder / "a.png"))
    assert b.indices.shape == (1, 16, 12)


def test_encode_decode_round_trip_equals_reconstruct(folder, tmp_path, capsys, tok):
    vqt, png, rec = tmp_path / "a.vqt", tmp_path / "a.png", tmp_path / "rec.png"
    assert main(["encode", str(folder / "a.png"), "-o", str(vqt)]) == EXIT_OK
    assert "bits per pixel" in capsys.readouterr().out
    assert main(["decode", str(vqt), "-o", str(png)]) == EXIT_OK
    assert main(["reconstruct", str(folder / "a.png"), "-o", str(rec)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "PSNR" in out and "bits per pixel" in out
    decoded = np.asarray(Image.open(png))
    assert decoded.shape == (40, 52, 3)
    assert np.array_equal(decoded, np.asarray(Image.open(rec)))
    assert np.array_equal(decoded, tok.reconstruct(folder / "a.png")[0][0])


def test_tokens_of_another_bundle_need_force(folder, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(bundle_path(None), other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["name"] = "another-export"  # another manifest: another bundle identity
    (other / "manifest.json").write_text(json.dumps(manifest))
    vqt = tmp_path / "a.vqt"
    assert main(["encode", str(folder / "a.png"), "-o", str(vqt)]) == EXIT_OK
    capsys.readouterr()
    assert main(["decode", str(vqt), "-o", str(tmp_path / "x.png"), "--bundle", str(other)]) == 1
    assert "force" in capsys.readouterr().err
    args = ["decode", str(vqt), "-o", str(tmp_path / "x.png"), "--bundle", str(other), "--force"]
    with pytest.warns(UserWarning):
        assert main(args) == EXIT_OK


def test_errors_have_exit_codes(tmp_path, capsys):
    assert main(["encode", str(tmp_path / "missing.png"), "-o", str(tmp_path)]) == EXIT_ERROR
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["reconstruct", str(tmp_path / "bad.png"), "-o", str(tmp_path / "o.png")]) == 1
    assert "cannot read image" in capsys.readouterr().err
    assert main(["info", "--bundle", str(tmp_path)]) == EXIT_ERROR
    assert "manifest.json is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["encode"])
    assert e.value.code == 2


def test_info_says_what_runs(capsys):
    assert main(["info"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "f=4, K=1024" in out and "in use      fp32 on CPUExecutionProvider" in out
    # the CPU provider runs the decoder in its CPU form
    assert "graphs      fp32/encoder.onnx, fp32/quantizer.onnx, fp32/decoder_cpu.onnx" in out
    assert main(["info", "--json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["providers_in_use"]["encoder"] == ["CPUExecutionProvider"]
