"""Each configuration's stages judged by their fidelity tiers (``vqedge.runtime.fidelity``):
its encoder with the lookup by the tokens tier (its tokens against the bundle's fp32
tokens, ``configs.REFERENCES``), its decoder by the pixels tier (its decode of the fp32
reference's tokens against the reference's own decode). A round trip is in tiers when both
stages are. PSNR against the photo is reported apart: it says how good the model is, not
whether a configuration runs the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vqedge.benchmarks.bundles import BundleFacts
from vqedge.benchmarks.configs import REFERENCES
from vqedge.runtime.fidelity import (
    DECODER_STAGE,
    ENCODER_STAGE,
    PIXELS_MIN_PSNR_DB,
    PSNR_CAP_DB,
    TOKENS_MIN_AGREEMENT,
    judge_pixels,
    judge_tokens,
)
from vqedge.runtime.kind import NEXT_SCALE


def same_weights(r: dict[str, Any]) -> bool:
    """Whether a configuration runs the bundle's weights (a PyTorch model may not)."""
    return r.get("details", {}).get("same_weights_as_bundle", True)


def add_quality(
    results: dict[str, Any], inputs: Path, bf: BundleFacts, random_weights: bool
) -> dict[str, Any]:
    """Each configuration's PSNR against the photos, and its fidelity against the fp32
    reference: token agreement (for a multi-scale bundle over all scales, and per scale),
    PSNR against the reference's reconstruction, its decoder's PSNR on the reference's
    tokens, and each stage judged by its tier (``judge``).

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
        if bf.offers(NEXT_SCALE):
            per = [[0, 0] for _ in bf.scales]
            for i in range(n):
                pairs = zip(bf.split(q[f"tokens{i}"]), bf.split(ref[f"tokens{i}"]))
                for k, (a, b) in enumerate(pairs):
                    per[k][0] += int((a == b).sum())
                    per[k][1] += b.size
            r["quality"]["token_agreement_per_scale"] = [a / t for a, t in per]
        r["quality"]["decoder_psnr_vs_reference_db"] = _decoder_psnr(r, ran[rn], rn, n)
        r["quality"]["tiers"] = judge(r["precision"], r["quality"])
    return {
        "reference": ref_name,
        "reference_other_weights": other_ref,
        "random_weights": random_weights,
        "rule": rule(),
        "tokens_min_agreement": TOKENS_MIN_AGREEMENT,
        "pixels_min_psnr_db": PIXELS_MIN_PSNR_DB,
        "psnr": "mean over images of 10 log10(255^2 / MSE) on uint8 RGB (inf when identical)",
    }


def _decoder_psnr(r: dict[str, Any], ref: dict[str, Any], rn: str, n: int) -> float | None:
    """Mean PSNR of this configuration's decode of the reference's tokens against the
    reference's own decode (capped at PSNR_CAP_DB when identical); None if not decoded."""
    from vqedge.runtime.metrics import psnr

    if rn not in r.get("decoded_references", []) or not r.get("decoded_file"):
        return None
    j = r["decoded_references"].index(rn)
    dec, own = np.load(r["decoded_file"]), np.load(ref["quality_file"])
    values = [min(psnr(dec[f"decoded{j}_{i}"], own[f"recon{i}"]), PSNR_CAP_DB) for i in range(n)]
    return float(np.mean(values))


def judge(precision: str, quality: dict[str, Any]) -> dict[str, Any]:
    """{"encoder": tokens-tier judgement, "decoder": pixels-tier judgement or None,
    "round_trip": both hold}, as JSON carries them."""
    enc = judge_tokens(
        ENCODER_STAGE,
        precision,
        quality.get("token_agreement", 0.0),
        quality.get("token_agreement_per_scale", ()),
    )
    db = quality.get("decoder_psnr_vs_reference_db")
    dec = judge_pixels(DECODER_STAGE, precision, db) if db is not None else None
    return {
        "encoder": enc.to_dict(),
        "decoder": dec.to_dict() if dec else None,
        "round_trip": bool(enc.holds and dec is not None and dec.holds),
    }


def in_tier(r: dict[str, Any], stage: str) -> bool:
    """Whether a configuration's ``stage`` ("encoder", "decoder" or "round_trip") holds its
    tier in this run."""
    t = r.get("quality", {}).get("tiers", {}).get(stage)
    return bool(t if isinstance(t, bool) else t and t["holds"])


def rule() -> str:
    """The tiers in words, for the report."""
    return (
        f"encoder (tokens tier): at least {TOKENS_MIN_AGREEMENT:.0%} of its tokens equal to "
        f"fp32's; decoder (pixels tier): its decode of fp32's tokens at least "
        f"{PIXELS_MIN_PSNR_DB:.0f} dB from fp32's decode of them"
    )
