"""The fidelity rule: how close a configuration's output is to the same bundle's fp32 output.

A configuration's fidelity is measured on the same inputs against the bundle's fp32 output
(``configs.REFERENCES``): the fraction of tokens equal to fp32's, and the PSNR of its
reconstruction against fp32's reconstruction. PSNR against the photo is reported apart: it
says how good the model is, not whether a configuration runs the same model. A
configuration is *within fidelity* when both figures clear their bar; a model with random
weights reconstructs nothing, so its PSNR says nothing and it is judged on tokens alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vqedge.benchmarks.bundles import BundleFacts
from vqedge.benchmarks.configs import REFERENCES
from vqedge.runtime.fidelity import PIXELS_MIN_PSNR_DB, TOKENS_MIN_AGREEMENT
from vqedge.runtime.kind import NEXT_SCALE

# the one fidelity definition (vqedge.runtime.fidelity): the tokens tier and the pixels tier
TOKEN_AGREEMENT_MIN = TOKENS_MIN_AGREEMENT
PSNR_VS_FP32_MIN_DB = PIXELS_MIN_PSNR_DB


def same_weights(r: dict[str, Any]) -> bool:
    """Whether a configuration runs the bundle's weights (a PyTorch model may not)."""
    return r.get("details", {}).get("same_weights_as_bundle", True)


def add_quality(
    results: dict[str, Any], inputs: Path, bf: BundleFacts, random_weights: bool
) -> dict[str, Any]:
    """Each configuration's PSNR against the photos, and its fidelity against the fp32
    reference: token agreement (for a multi-scale bundle over all scales, and per scale),
    PSNR against the reference's reconstruction, and whether it is within fidelity.

    A PyTorch model with other weights than the bundle's (an imported family without its
    checkpoint) is compared with PyTorch eager fp32 on the same weights instead.
    """
    from vqedge.runtime.metrics import psnr

    ran = {n: r for n, r in results.items() if r.get("quality_file")}
    ref_name = next((n for n in REFERENCES if n in ran and same_weights(ran[n])), None)
    other_ref = next((n for n in REFERENCES if n in ran and not same_weights(ran[n])), None)
    if ref_name is None and other_ref is None:
        return {"reference": None, "note": "no fp32 reference ran: fidelity not measured"}
    data = np.load(inputs)
    originals = [data[f"quality{i}"] for i in range(int(data["quality_count"]))]
    n = len(originals)
    for r in ran.values():
        rn = ref_name if same_weights(r) else other_ref
        q = np.load(r["quality_file"])
        photo = np.mean([psnr(q[f"recon{i}"], originals[i]) for i in range(n)])
        r["quality"] = {"held_out_psnr_db": float(photo), "images": n}
        if rn is None:
            continue
        ref = np.load(ran[rn]["quality_file"])
        agree = sum(int((q[f"tokens{i}"] == ref[f"tokens{i}"]).sum()) for i in range(n))
        total = sum(ref[f"tokens{i}"].size for i in range(n))
        vs_ref = np.mean([psnr(q[f"recon{i}"], ref[f"recon{i}"]) for i in range(n)])
        r["quality"].update(
            reference=rn,
            # None when every reconstruction equals the reference's (infinite PSNR)
            psnr_vs_reference_db=float(vs_ref) if np.isfinite(vs_ref) else None,
            identical_to_reference=bool(not np.isfinite(vs_ref)),
            token_agreement=agree / total,
        )
        r["quality"]["within_fidelity"] = within(r["quality"], random_weights)
        if bf.offers(NEXT_SCALE):
            per = [[0, 0] for _ in bf.scales]
            for i in range(n):
                pairs = zip(bf.split(q[f"tokens{i}"]), bf.split(ref[f"tokens{i}"]))
                for k, (a, b) in enumerate(pairs):
                    per[k][0] += int((a == b).sum())
                    per[k][1] += b.size
            r["quality"]["token_agreement_per_scale"] = [a / t for a, t in per]
    return {
        "reference": ref_name,
        "reference_other_weights": other_ref,
        "random_weights": random_weights,
        "rule": rule(random_weights),
        "token_agreement_min": TOKEN_AGREEMENT_MIN,
        "psnr_vs_fp32_min_db": None if random_weights else PSNR_VS_FP32_MIN_DB,
        "psnr": "mean over images of 10 log10(255^2 / MSE) on uint8 RGB (inf when identical)",
    }


def within(quality: dict[str, Any], random_weights: bool) -> bool:
    """Whether a configuration's fidelity figures clear the bars (see the module)."""
    if quality.get("token_agreement", 0.0) < TOKEN_AGREEMENT_MIN:
        return False
    if random_weights or quality.get("identical_to_reference"):
        return True
    vs_ref = quality.get("psnr_vs_reference_db")
    return vs_ref is not None and vs_ref >= PSNR_VS_FP32_MIN_DB


def rule(random_weights: bool) -> str:
    """The rule in words, for the report."""
    tokens = f"at least {TOKEN_AGREEMENT_MIN:.0%} of its tokens equal to fp32's"
    if random_weights:
        return f"{tokens} (random weights: reconstructions say nothing, so tokens alone decide)"
    return (
        f"{tokens} and a PSNR against fp32's reconstruction of {PSNR_VS_FP32_MIN_DB:.0f} dB or more"
    )
