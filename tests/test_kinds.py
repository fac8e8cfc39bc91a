"""The table of kinds: every stage asks a kind, never a class or a field of one kind.

The stages (demo/, dataset/, commands/, benchmarks/) may name a kind's own code names in at
most two files; everything else asks ``vqedge.runtime.kind`` for a capability or calls a
method every tokenizer implements.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from vqedge.runtime import load
from vqedge.runtime.base import TokenizerBase
from vqedge.runtime.kind import (
    CAPABILITIES,
    FIXED_SIZE,
    KINDS,
    NEXT_SCALE,
    TILING,
    Kind,
    kind_of,
)
from vqedge.runtime.manifest import BundleError

REPO = Path(__file__).resolve().parents[1]
STAGES = ("demo", "dataset", "commands", "benchmarks")
# each kind's code names: its class, its constants, its own fields
CODE_NAMES = {
    "multi-scale": r"patch_nums|MultiScaleTokenizer|MULTI_SCALE|multi_scale",
    "lookup-free": r"LookupFreeTokenizer|LOOKUP_FREE|lookup_free|fsq_levels",
    "single-scale": r"SINGLE_SCALE|single_scale",
}
MAX_FILES_PER_KIND = 2


def files_naming(pattern: str) -> list[str]:
    found = []
    for folder in STAGES:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "results" in path.parts:
                continue
            if re.search(pattern, path.read_text()):
                found.append(str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("kind", sorted(CODE_NAMES))
def test_at_most_two_stage_files_name_a_kind(kind):
    found = files_naming(CODE_NAMES[kind])
    assert len(found) <= MAX_FILES_PER_KIND, found


def test_the_counter_counts():
    # the stages' own word for the setting exists, so the search is not vacuous
    assert files_naming(r"offers\(") and files_naming(r"token_maps\(")


def test_every_kind_is_complete_and_its_classes_resolve():
    assert {"single-scale", "multi-scale", "lookup-free"} <= set(KINDS)
    for name, kind in KINDS.items():
        assert kind.name == name and kind.lookup in kind.graphs
        cls = kind.runtime_class()
        assert issubclass(cls, TokenizerBase) and name == cls.KIND
        assert kind.browser and set(kind.capabilities) <= set(CAPABILITIES)
        assert kind_of(name) is kind and kind_of({"kind": name}) is kind
    assert KINDS["multi-scale"].offers(NEXT_SCALE) and not KINDS["single-scale"].offers(NEXT_SCALE)
    assert KINDS["single-scale"].offers(TILING) and KINDS["multi-scale"].offers(FIXED_SIZE)


def test_a_bad_kind_or_capability_is_refused():
    with pytest.raises(BundleError, match="kind 'diffusion' is not one this vqedge runs"):
        kind_of("diffusion")
    with pytest.raises(ValueError, match="unknown capability 'teleport'"):
        KINDS["single-scale"].offers("teleport")
    with pytest.raises(ValueError, match="unknown capabilities"):
        Kind("x", "a:B", "c:D", "X", "grid", capabilities=frozenset({"teleport"}))
    with pytest.raises(ValueError, match="runtime must be 'module:Class'"):
        Kind("x", "a.B", "c:D", "X", "grid")


def test_every_kind_gives_its_token_maps():
    img = np.zeros((40, 24, 3), np.uint8)
    tok = load("vqvae-f4")
    idx, _ = tok.encode_image(img)
    (m,) = tok.token_maps(idx)
    assert m.shape == (10, 6) and tok.token_layout == {"kind": "single-scale", "map_sides": []}
    assert kind_of(tok) is KINDS["single-scale"]
    ms = load("vqvae-ms-f8")
    tokens, _ = ms.encode_image(img)
    maps = ms.token_maps(tokens)
    assert [x.shape[0] for x in maps] == ms.token_layout["map_sides"] == list(ms.patch_nums)
    assert np.array_equal(np.concatenate([x.ravel() for x in maps]), tokens.ravel())
    with pytest.raises(ValueError, match="one image's"):
        ms.token_maps(tokens[:, :-1])
