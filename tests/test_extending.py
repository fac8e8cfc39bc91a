"""Adding a family is one model module plus one registry entry, and adding a bundle kind is
one runtime class, one recipe, one browser class and one entry in the table of kinds
(docs/extending.md).

The toy family and the toy kind below are defined and registered here, in this test module
alone, then exported and run through every stage as the shipped ones are: the ``vqedge``
command, the demo's handlers, the dataset stage and the Node runtime. The other tests check
the family table itself: torch-free, and in agreement with the model modules it names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from node_runtime import INDEX, encode_in_node
from PIL import Image

from vqedge.commands.main import main
from vqedge.export.family_recipe import FamilySingleScaleRecipe
from vqedge.models import registry
from vqedge.models.blocks import Backbone
from vqedge.models.import_checkpoint import preset_config
from vqedge.models.single_scale import Codebook, SingleScaleVQ
from vqedge.runtime.kind import KINDS, PLUGINS_ENV, TILING, TOKEN_EDITING, Kind, register
from vqedge.runtime.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]

# -- the toy family: what a newcomer writes in models/<family>.py ----------------------------


@dataclass(frozen=True)
class ToyConfig:
    """The toy's shape: three levels (f = 4), no attention."""

    ch: int = 8
    codebook_size: int = 16
    embed_dim: int = 4

    @property
    def backbone(self) -> Backbone:
        return Backbone(
            ch=self.ch,
            channels=(self.ch, self.ch, self.ch),
            num_res_blocks=1,
            z_channels=8,
            attn_levels=(),
            mid_attn=False,
            groups=4,
        )


PRESETS = {"tiny": ToyConfig()}


class ToyVQ(SingleScaleVQ):
    """encoder, quant_conv, codebook, post_quant_conv, decoder: the shared surface."""

    family = "toy VQ"

    def __init__(self, config: ToyConfig | None = None) -> None:
        cfg = config or PRESETS["tiny"]
        self.config = cfg
        super().__init__(cfg.backbone, Codebook(cfg.codebook_size, cfg.embed_dim))


def load_toy(checkpoint: Path, preset: str | None = None, config: ToyConfig | None = None):
    """A ToyVQ with the weights of a ``torch.save(state_dict)`` file."""
    model = ToyVQ(preset_config(ToyVQ.family, PRESETS, preset, config, default="tiny"))
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


TOY = registry.Family(
    name="toy",
    module=sys.modules[__name__],
    config_class="ToyConfig",
    model_class="ToyVQ",
    loader="load_toy",
    presets=tuple(PRESETS),
    checkpoint="a torch.save'd state dict",
)


@pytest.fixture
def toy_family():
    registry.register(TOY)
    yield TOY
    registry.FAMILIES.pop(TOY.name, None)


@pytest.mark.slow
def test_a_family_registered_here_exports_and_runs_through_the_cli(toy_family, tmp_path, capsys):
    torch.manual_seed(0)
    model = ToyVQ()
    with torch.no_grad():  # codes at the latents' scale, so that the lookup is exercised
        model.quantize.embedding.weight.normal_()
    ckpt = tmp_path / "toy.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "toy-bundle"
    args = ["export", str(ckpt), "--from", "toy", "--out", str(out), "--precisions", "fp32"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["family"] == "toy" and manifest["source"]["preset"] == "tiny"
    assert manifest["source"]["config"] == {"ch": 8, "codebook_size": 16, "embed_dim": 4}
    assert manifest["kind"] == "single-scale" and manifest["config"]["codebook_size"] == 16

    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["downsample_factor"] == 4 and info["codebook_size"] == 16

    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(photo)
    recon = tmp_path / "recon.png"
    assert main(["reconstruct", str(photo), "--bundle", str(out), "-o", str(recon)]) == 0
    assert Image.open(recon).size == (48, 40)


def test_registering_a_family_offers_it_to_the_cli(toy_family, capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    assert "toy" in out and "tiny" in out


# -- the table --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["var", "llamagen", "taming", "diffusers"])
def test_each_entry_names_what_its_model_module_defines(name):
    fam = registry.get(name)
    assert tuple(fam.preset_configs()) == fam.presets
    cfg_type, model_type = fam.config_type(), fam.model_type()
    assert all(isinstance(c, cfg_type) for c in fam.preset_configs().values())
    assert callable(getattr(fam.models(), fam.loader))
    assert issubclass(model_type, torch.nn.Module)


def test_config_from_dict_takes_what_a_manifest_records():
    import dataclasses

    for fam in registry.FAMILIES.values():
        for cfg in fam.preset_configs().values():
            d = json.loads(json.dumps(dataclasses.asdict(cfg)))
            assert fam.config_from_dict(d) == cfg, fam.name


def test_unknown_config_fields_and_families_are_named():
    with pytest.raises(ValueError, match="unknown fields \\['codebook_sise'\\]"):
        registry.dataclass_from_dict(ToyConfig, {"codebook_sise": 3})
    with pytest.raises(ValueError, match="unknown family 'vqgan'; expected one of var"):
        registry.get("vqgan")


def test_the_table_and_the_export_help_need_no_torch():
    code = (
        "import sys\n"
        "from vqedge.models import registry\n"
        "from vqedge.commands.main import main\n"
        "try:\n"
        "    main(['export', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(registry.names(), 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == (
        "('var', 'llamagen', 'taming', 'diffusers', 'open-magvit2') False"
    )


# -- the toy kind: a runtime class, a recipe, a browser class and one table entry ------------
# (here a single-scale variant under a name of its own: what a new kind plugs in, and nothing
# the stages know of by name)


class ToyGridTokenizer(Tokenizer):
    """The runtime class: what ``runtime/<kind>.py`` holds."""

    KIND = "toy-grid"


class ToyGridRecipe(FamilySingleScaleRecipe):
    """The export recipe: what ``export/<kind>_recipe.py`` holds."""

    kind = "toy-grid"


class ToyGridVQ(ToyVQ):
    """A model that names its bundle kind, so that the export takes that kind's recipe."""

    bundle_kind = "toy-grid"


# the browser class: what ``web/src/<kind>.js`` holds (its registerKind call included)
TOY_BROWSER = """
import {{ Tokenizer, registerKind }} from {index};
export class ToyGridTokenizer extends Tokenizer {{}}
registerKind("toy-grid", ToyGridTokenizer);
"""

# the table entry: what ``runtime/kind.py`` gains
TOY_KIND = Kind(
    name="toy-grid",
    runtime=f"{__name__}:ToyGridTokenizer",
    recipe=f"{__name__}:ToyGridRecipe",
    browser="ToyGridTokenizer",
    layout="one token map [h, w] per image, h = ceil(H / 4), w = ceil(W / 4)",
    capabilities=frozenset({TILING, TOKEN_EDITING}),
)
if __name__ in os.environ.get(PLUGINS_ENV, "").split(","):  # named as a plugin: register
    register(TOY_KIND)


@pytest.fixture(scope="module")
def toy_kind():
    register(TOY_KIND)
    yield TOY_KIND
    KINDS.pop(TOY_KIND.name, None)


@pytest.fixture(scope="module")
def toy_bundle(toy_kind, tmp_path_factory):
    from vqedge.export import export_bundle

    torch.manual_seed(0)
    model = ToyGridVQ()
    with torch.no_grad():  # codes at the latents' scale, so that the lookup is exercised
        model.quantize.embedding.weight.normal_()
    out = tmp_path_factory.mktemp("toy") / "toy-grid-bundle"
    export_bundle(model, out, precisions=("fp32",), log=lambda *a: None)
    return out


def _photo(tmp_path: Path, name: str = "photo.png", hw: tuple[int, int] = (40, 48)) -> Path:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(img).resize((hw[1] // 4, hw[0] // 4)).resize(hw[::-1]))
    path = tmp_path / name
    Image.fromarray(img).save(path)
    return path


@pytest.mark.slow
def test_a_kind_registered_here_runs_through_export_and_the_cli(toy_bundle, tmp_path, capsys):
    from vqedge.runtime import load

    manifest = json.loads((toy_bundle / "manifest.json").read_text())
    assert manifest["kind"] == "toy-grid" and "check" in manifest
    tok = load(toy_bundle)
    assert type(tok) is ToyGridTokenizer and tok.info["verification"]
    capsys.readouterr()
    assert main(["info", str(toy_bundle)]) == 0
    assert "toy-grid" in capsys.readouterr().out
    photo = _photo(tmp_path)
    vqt, recon, back = tmp_path / "p.vqt", tmp_path / "r.png", tmp_path / "d.png"
    assert main(["encode", str(photo), "--bundle", str(toy_bundle), "-o", str(vqt)]) == 0
    assert main(["decode", str(vqt), "--bundle", str(toy_bundle), "-o", str(back)]) == 0
    assert main(["reconstruct", str(photo), "--bundle", str(toy_bundle), "-o", str(recon)]) == 0
    assert Image.open(recon).size == Image.open(back).size == (48, 40)
    assert np.array_equal(tok.load_tokens(vqt).indices, tok.encode_image(photo)[0])


@pytest.mark.slow
def test_a_kind_registered_here_runs_through_the_demo_handlers(toy_bundle, tmp_path):
    from vqedge.demo.app import api_decode, api_encode, api_reconstruct
    from vqedge.demo.engine import Engine, ScalesEngine

    eng, ms = Engine(toy_bundle, max_side=256), ScalesEngine(None)
    photo = str(_photo(tmp_path))
    recon, token_map, metrics = api_reconstruct(eng, ms, photo, "fp32", "CPUExecutionProvider")
    assert recon.shape == (40, 48, 3) and metrics["psnr_db"] > 0
    vqt, tokens = api_encode(eng, ms, photo, "fp32", "CPUExecutionProvider")
    assert np.array_equal(api_decode(eng, ms, vqt, "fp32", "CPUExecutionProvider"), recon)
    with pytest.raises(Exception, match="toy-grid bundle"):
        ScalesEngine(toy_bundle)  # the next-scale view asks the kind, and it says no


@pytest.mark.slow
def test_a_kind_registered_here_runs_through_the_dataset_stage(toy_bundle, tmp_path):
    import pyarrow.parquet as pq

    from vqedge.runtime import load

    images = tmp_path / "images"
    images.mkdir()
    paths = [_photo(images, f"{i}.png", (36 + 4 * i, 44)) for i in range(3)]
    out = tmp_path / "shards"
    # two worker processes: each imports the kind from the module PLUGINS_ENV names
    env = {
        **os.environ,
        PLUGINS_ENV: __name__,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    args = ["tokenize", str(images), "--out", str(out), "--bundle", str(toy_bundle)]
    r = subprocess.run(
        [sys.executable, "-m", "vqedge.commands.main", *args, "--workers", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    tok = load(toy_bundle)
    rows = {}
    for shard in sorted(out.glob("*.parquet")):
        table = pq.read_table(shard)
        info = json.loads(table.schema.metadata[b"vqedge"])
        assert info["token_layout"] == {"kind": "toy-grid", "map_sides": []}
        rows |= {row["path"]: row for row in table.to_pylist()}
    assert sorted(rows) == sorted(str(p) for p in paths)
    for p in paths:
        expected = tok.encode_image(p)[0]
        assert (rows[str(p)]["token_h"], rows[str(p)]["token_w"]) == expected.shape[1:]
        assert np.array_equal(rows[str(p)]["tokens"], expected.ravel())


@pytest.mark.slow
def test_a_kind_registered_here_runs_in_the_node_runtime(toy_bundle, tmp_path):
    from vqedge.runtime import load

    (tmp_path / "toy_grid.js").write_text(TOY_BROWSER.format(index=INDEX))
    img = np.asarray(Image.open(_photo(tmp_path)).convert("RGB"))
    js = encode_in_node(
        toy_bundle,
        img,
        tmp_path,
        imports='import { ToyGridTokenizer } from "./toy_grid.js";',
        extra="tok instanceof ToyGridTokenizer",
    )
    assert js["kind"] == "toy-grid" and js["cls"] == TOY_KIND.browser and js["extra"]
    expected = load(toy_bundle).encode(img)[0]
    assert js["hw"] == list(expected.shape)
    # the WASM backend's sums may round apart from the CPU provider's: the tokens tier
    assert np.mean(np.array(js["indices"]) == expected.ravel()) >= 0.99
