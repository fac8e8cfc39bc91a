"""The bundle manifest reader: format 1 refused with advice, bad manifests named, fuzzed."""

from __future__ import annotations

import json
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqedge.runtime.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MULTI_SCALE,
    PRECISIONS,
    SINGLE_SCALE,
    BundleError,
    manifest_config,
    read_manifest,
    verified_file,
)


def _minimal(**changes) -> dict:
    m = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": SINGLE_SCALE,
        "config": {"codebook_size": 16, "code_dim": 4},
        "variants": {"fp32": {"graphs": {}, "weights": []}},
        "files": {},
    }
    m.update(changes)
    return {k: v for k, v in m.items() if v is not None}


def _write(folder: Path, body: bytes | dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    (folder / MANIFEST).write_bytes(data)
    return folder


def test_constants_are_the_contract():
    assert FORMAT_VERSION == 2
    assert PRECISIONS == ("fp32", "fp16", "int8")
    assert (SINGLE_SCALE, MULTI_SCALE) == ("single-scale", "multi-scale")


def test_minimal_manifest_reads(tmp_path):
    m = read_manifest(_write(tmp_path / "b", _minimal()))
    assert m["kind"] == SINGLE_SCALE and m["variants"]["fp32"]["graphs"] == {}
    assert manifest_config(m).codebook_size == 16


def test_format_1_is_refused_with_advice(tmp_path):
    bundle = _write(tmp_path / "old", _minimal(format_version=1))
    with pytest.raises(BundleError) as err:
        read_manifest(bundle)
    msg = str(err.value)
    assert msg == (
        f"bundle {bundle} is format 1 (one file per graph with its own weights); this vqedge "
        "reads format 2: re-export it with `vqedge export`"
    )


@pytest.mark.parametrize("version", [3, "2", None, 2.0, True])
def test_other_versions_are_refused(tmp_path, version):
    bundle = _write(tmp_path / "b", _minimal(format_version=version))
    with pytest.raises(BundleError, match=f"format version {version!r}".replace("(", r"\(")):
        read_manifest(bundle)


@pytest.mark.parametrize("field", ["kind", "config", "variants"])
def test_missing_field_is_named_with_the_file(tmp_path, field):
    m = _minimal()
    del m[field]
    bundle = _write(tmp_path / "b", m)
    with pytest.raises(BundleError, match=rf"{MANIFEST} has no '{field}' field") as err:
        read_manifest(bundle)
    assert str(bundle) in str(err.value)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"kind": 3}, "'kind' must be a string"),
        ({"config": [1, 2]}, "'config' must be an object"),
        ({"variants": {}}, "'variants' must be a non-empty object"),
        ({"variants": {"fp8": {"graphs": {}}}}, "variant 'fp8' is not one of"),
        ({"variants": {"fp32": {"weights": []}}}, "variant 'fp32' has no 'graphs' object"),
        ({"files": ["a"]}, "'files' must be an object"),
        ({"format": "other"}, "is not a vqedge-bundle manifest"),
    ],
)
def test_malformed_fields_are_named(tmp_path, changes, message):
    bundle = _write(tmp_path / "b", _minimal(**changes))
    with pytest.raises(BundleError, match=message):
        read_manifest(bundle)


def test_non_utf8_manifest_names_the_file(tmp_path):
    body = json.dumps(_minimal()).encode().replace(b"single-scale", b"single\xff-scale")
    bundle = _write(tmp_path / "b", body)
    with pytest.raises(BundleError, match="is not UTF-8 text") as err:
        read_manifest(bundle)
    assert str(bundle / MANIFEST) in str(err.value)


def test_non_json_manifest_names_the_file(tmp_path):
    bundle = _write(tmp_path / "b", b"{not json")
    with pytest.raises(BundleError, match=r"manifest\.json is not valid JSON"):
        read_manifest(bundle)
    bundle = _write(tmp_path / "c", b"[" * 100_000)  # nested past the parser's recursion
    with pytest.raises(BundleError, match="is not valid JSON"):
        read_manifest(bundle)


def test_missing_manifest(tmp_path):
    with pytest.raises(BundleError, match="not a vqedge bundle"):
        read_manifest(tmp_path)


def test_listed_files_must_stay_inside_the_bundle(tmp_path):
    (tmp_path / "secret").write_text("x")
    m = _minimal(files={"../secret": "0" * 64})
    bundle = _write(tmp_path / "b", m)
    with pytest.raises(BundleError, match="points outside the bundle"):
        read_manifest(bundle, verify=True)
    with pytest.raises(BundleError, match="is not listed"):
        verified_file(bundle, m, "weights.fp32.bin")


def test_bad_config_is_a_bundle_error():
    with pytest.raises(BundleError, match="'config' is not a valid config"):
        manifest_config({"config": {"codebook_size": "many"}})
    with pytest.raises(BundleError, match="no 'config'"):
        manifest_config({})


# -- fuzz: any bytes give a manifest or a ValueError, in bounded memory -------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5)
    ),
    max_leaves=30,
)
_near_valid = st.builds(
    lambda m, drop, extra: json.dumps(
        {k: v for k, v in (m | extra).items() if k not in drop}
    ).encode(),
    st.just(_minimal()),
    st.sets(st.sampled_from(["format", "format_version", "kind", "config", "variants", "files"])),
    st.dictionaries(
        st.sampled_from(["format_version", "kind", "config", "variants", "files"]), _json
    ),
)
_bytes = st.one_of(
    st.binary(max_size=2048),
    _near_valid,
    _near_valid.map(lambda b: b[: len(b) // 2]),
    _json.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64).map(lambda b: json.dumps(_minimal()).encode() + b),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_bytes)
def test_fuzz_read_manifest(data):
    with tempfile.TemporaryDirectory() as tmp:
        bundle = _write(Path(tmp) / "b", data)
        tracemalloc.start()
        try:
            result = read_manifest(bundle, verify=True)
        except ValueError as e:  # BundleError and every other refusal
            assert str(e)
            result = None
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    # a parsed manifest is a few times its bytes; nothing grows past that
    assert peak < 64 * len(data) + (1 << 20), (peak, len(data))
    if result is not None:
        assert result["format_version"] == FORMAT_VERSION
        assert {"kind", "config", "variants"} <= set(result)
