"""What a benchmark needs to know of a bundle, the PyTorch model it is compared with, and the
benchmark bundle of an imported family.

``facts(bundle)`` reads the manifest only (no torch: the OpenVINO worker uses it too).
``torch_model`` builds the bundle's PyTorch model: vqedge's own bundles from their checkpoint
(or their fp32 graphs' weights); an imported family (the manifest's ``source``) from the
family's loader with the source checkpoint when one is given, else the same architecture with
seeded random weights (fine for speed; their tokens are not the bundle's).
``torch_stages`` splits any of these models into the three timed stages.

The VAR benchmark bundle (random weights in VAR's own file layout, exported like a user's)::

    python -m vqedge.benchmarks.bundles var --preset 256 --out .bench-bundles/var256
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqedge.models import registry
from vqedge.runtime.kind import FIXED_SIZE, kind_of

# the seed of the random weights an imported family gets without its checkpoint
RANDOM_SEED = 0


@dataclass(frozen=True)
class BundleFacts:
    """A bundle as the benchmarks see it."""

    path: Path
    name: str
    kind: str
    # downsample factor, code dimension
    f: int
    code_dim: int
    # a kind of one image size: each image's token map sides (coarse to fine) and that side;
    # else () and None
    scales: tuple[int, ...] = ()
    resolution: int | None = None
    # an imported family ("var", ...) or None for vqedge's own
    family: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    def offers(self, capability: str) -> bool:
        """Whether the bundle's kind offers ``capability`` (``vqedge.runtime.kind``)."""
        return kind_of(self.kind).offers(capability)

    @property
    def graphs(self) -> tuple[str, ...]:
        """The graphs of a variant of the bundle's kind, in the order an image meets them."""
        return kind_of(self.kind).graphs

    @property
    def num_tokens(self) -> int:
        return sum(p * p for p in self.scales)

    @property
    def target_size(self) -> int:
        """The image side of the targets' case: the bundle's resolution, else 256."""
        return self.resolution or 256

    def split(self, idx_BL: Any) -> list[Any]:
        """Concatenated multi-scale tokens [B, L] -> one [B, pn*pn] slice per scale."""
        out, at = [], 0
        for pn in self.scales:
            out.append(idx_BL[:, at : at + pn * pn])
            at += pn * pn
        return out


def facts(bundle: str | Path | None) -> BundleFacts:
    """Read a bundle's manifest (a folder, a shipped name, or None for the default)."""
    from vqedge.runtime.manifest import bundle_config, read_manifest
    from vqedge.runtime.session import bundle_path

    path = bundle_path(bundle).resolve()
    manifest = read_manifest(path, verify=False)
    cfg = bundle_config(manifest)
    source = manifest.get("source") or {}
    family = source.get("family")
    fixed = kind_of(manifest).offers(FIXED_SIZE)
    return BundleFacts(
        path=path,
        name=manifest.get("name") or path.name,
        kind=manifest["kind"],
        f=cfg.downsample_factor,
        code_dim=cfg.code_dim,
        scales=tuple(cfg.patch_nums) if fixed else (),
        resolution=cfg.resolution if fixed else None,
        family=family if family in registry.FAMILIES else None,
        source=source,
        manifest=manifest,
    )


# -- the PyTorch side ---------------------------------------------------------------------------


def family_config(bf: BundleFacts) -> Any:
    """The family's config of the exported model: the manifest's ``architecture`` (VAR),
    else ``source.config``, else the family's preset."""
    fam = registry.get(bf.family)
    arch = bf.manifest.get("architecture")
    where = f"bundle {bf.path}"
    if isinstance(arch, dict):
        return fam.config_from_dict({k: v for k, v in arch.items() if k != "family"}, where)
    if isinstance(bf.source.get("config"), dict):
        return fam.config_from_dict(bf.source["config"], where)
    presets = fam.preset_configs()
    if bf.source.get("preset") in presets:
        return presets[bf.source["preset"]]
    raise ValueError(
        f"bundle {bf.path}: its manifest gives no architecture, source config or known preset "
        f"of the {bf.family} model; rebuild the PyTorch model with --checkpoint"
    )


def random_state(model: Any, seed: int = RANDOM_SEED) -> dict[str, Any]:
    """Seeded random weights for ``model``, scaled so activations stay O(1) through deep
    stacks (a fresh module's default init lets them grow or vanish over 100M parameters)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            out[name] = t.clone()
            continue
        r = torch.randn(t.shape, generator=g)
        if "norm" in name and name.endswith(".weight"):
            r = 1.0 + 0.1 * r
        elif t.dim() == 4:
            r = r / math.sqrt(t.shape[1] * t.shape[2] * t.shape[3])
        elif name.endswith(".bias"):
            r = 0.02 * r
        elif "ema" in name or "count" in name or "hit" in name:
            r = r.abs()
        out[name] = r.to(t.dtype)
    return out


def runtime_providers(providers: Any, threads: int) -> Any:
    """``providers`` as the benchmarks give them to the runtime: "openvino" gets the same
    thread count as the sessions (the provider keeps its own thread pool); others as they are."""
    if providers == "openvino":
        return [
            ("OpenVINOExecutionProvider", {"device_type": "CPU", "num_of_threads": str(threads)})
        ]
    return providers


def torch_model(bf: BundleFacts, checkpoint: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The bundle's PyTorch model in eval mode, and what its weights are.

    Returns
    -------
    (model, weights)
        ``weights``: {"what": a sentence, "same_as_bundle": bool}. Only a model with the
        bundle's weights is compared token for token with the bundle's configurations.
    """
    from vqedge.models.checkpoint import (
        PRETRAINED_DIR,
        load_pretrained,
        model_from_bundle,
        shipped_bundle,
    )

    if bf.family is None:
        if checkpoint:
            what = f"checkpoint {checkpoint}"
            model = load_pretrained(checkpoint)
        elif shipped_bundle(bf.path.name) == bf.path and (PRETRAINED_DIR / bf.path.name).is_dir():
            what = f"the shipped checkpoint {bf.path.name}"
            model = load_pretrained(bf.path.name)
        else:
            what = "the bundle's fp32 graph weights (vqedge.models.model_from_bundle)"
            model = model_from_bundle(bf.path).eval()
        return model.eval(), {"what": what, "same_as_bundle": True}

    from vqedge.runtime.manifest import sha256_file

    fam = registry.get(bf.family)
    cfg = family_config(bf)
    if checkpoint:
        model = fam.load(checkpoint, config=cfg)
        ckpt = Path(checkpoint)
        same = sha256_file(fam.checkpoint_weights(ckpt)) == bf.source.get("sha256")
        what = f"{bf.family} checkpoint {ckpt.name}" + (
            " (the bundle's source: sha256 matches)"
            if same
            else " (NOT the bundle's source checkpoint: sha256 differs)"
        )
        return model.eval(), {"what": what, "same_as_bundle": same}
    model = fam.model_type()(cfg)
    model.load_state_dict(random_state(model, RANDOM_SEED))
    what = (
        f"{bf.family} architecture with seeded random weights (seed {RANDOM_SEED}), not the "
        "bundle's: speed only; give --checkpoint for token agreement with the bundle"
    )
    return model.eval(), {"what": what, "same_as_bundle": False}


def torch_stages(model: Any, bf: BundleFacts) -> tuple[Any, Any, Any]:
    """(encode, quantize, decode) torch callables of any model the benchmarks build:
    image -> latent, latent -> tokens ([B, h, w] or multi-scale [B, L]), tokens -> image."""
    import torch

    from vqedge.models.multiscale import MultiScaleVQVAE
    from vqedge.models.single_scale import SingleScaleVQ
    from vqedge.models.var import VARVQVAE

    if isinstance(model, VARVQVAE):

        def dec(idx):
            return model.idxBl_to_img(bf.split(idx), last_one=True)

        def quant(z):
            return torch.cat(model.quantize.f_to_idxBl(z.float()), dim=1)

        return model.encode, quant, dec
    if isinstance(model, MultiScaleVQVAE):

        def quant(z):
            return torch.cat(model.quantize.f_to_idxBl(z.float()), dim=1)

        return model.encode, quant, model.decode_indices
    if isinstance(model, SingleScaleVQ):
        return model.encode, lambda z: model.quantize_latent(z.float()), model.decode_indices
    q = model.quantize  # vqedge's own single-scale VQVAE

    def quant(z):
        B, C, h, w = z.shape
        z_NC = q.project(z.float()).permute(0, 2, 3, 1).reshape(-1, C)
        return q.nearest(z_NC).view(B, h, w)

    return model.encoder, quant, model.decode_indices


# -- the benchmark bundle of an imported family -------------------------------------------------


def make_var_bundle(
    out: str | Path, preset: str = "256", seed: int = RANDOM_SEED, force: bool = False, log=print
) -> tuple[Path, Path]:
    """Write VAR's VQVAE with seeded random weights as VAR saves its checkpoint (the raw state
    dict, VAR's key names) beside ``out`` and export it with ``vqedge export --from var``'s
    function. Returns (bundle folder, checkpoint file)."""
    import torch

    from vqedge.export.families import export_pretrained
    from vqedge.models import var

    out = Path(out)
    ckpt = out.parent / f"{out.name}-random-seed{seed}.pth"
    model = var.VARVQVAE(var.PRESETS[preset])
    state = random_state(model, seed)
    official = {var.to_official(k): v for k, v in state.items() if k not in var.OURS_ONLY}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(official, ckpt)
    log(f"wrote {ckpt} ({len(official)} tensors in VAR's layout, seed {seed})")
    export_pretrained(ckpt, "var", out, preset=preset, force=force, log=log)
    return out, ckpt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Make the benchmark bundle of an imported family.")
    p.add_argument("family", choices=["var"])
    p.add_argument("--preset", default="256", choices=["256", "512"])
    p.add_argument("--out", default=None, help="default: .bench-bundles/var<preset>")
    p.add_argument("--seed", type=int, default=RANDOM_SEED)
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    args = p.parse_args(argv)
    out = Path(args.out or f".bench-bundles/var{args.preset}")
    bundle, ckpt = make_var_bundle(out, args.preset, args.seed, args.force)
    print(
        "compare it with:\n  python -m vqedge.benchmarks.compare "
        f"--bundle {bundle} --checkpoint {ckpt} --out /tmp/var-bench"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = [
    "BundleFacts",
    "facts",
    "family_config",
    "make_var_bundle",
    "random_state",
    "torch_model",
    "torch_stages",
]
