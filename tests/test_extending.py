"""Adding a family is one model module plus one registry entry (docs/extending.md).

The toy family below is defined and registered here, in this test module alone, then exported
and run through the ``vqedge`` command as any shipped family is. The other tests check the
family table itself: torch-free, and in agreement with the model modules it names.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqedge.commands.main import main
from vqedge.models import registry
from vqedge.models.blocks import Backbone
from vqedge.models.import_checkpoint import preset_config
from vqedge.models.single_scale import Codebook, SingleScaleVQ

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
