"""Fidelity: when a configuration's output may stand in for fp32's. One definition, two tiers.

Every stage that judges a precision reads this module: the export gate, ``verify`` and
``load`` on the device, the benchmark's headlines, the demo, the browser package (its
constants are generated from this file at build time) and the docs.

- **tokens** (the encoder with the nearest-code lookup): at least ``TOKENS_MIN_AGREEMENT`` of
  token positions equal to fp32's tokens of the same images; for a multi-scale bundle over
  all scales together, each scale reported. The rule a tokenizer of a generator's training
  set needs: a generator trained on one configuration's tokens and run on another's sees
  almost none of them change.
- **pixels** (the decoder): decoding fp32's tokens, at least ``PIXELS_MIN_PSNR_DB`` against
  fp32's decode of the same tokens (an RMS difference of about 2.5 grey levels out of 255,
  below what a viewer sees beside the fp32 image).

fp32 itself, on another device, is held to the tokens tier against the exporting machine's
fp32 tokens (float-rounding ties between two kernels' sums flip a few in a thousand).

An encoder whose tokens fall short of the tokens tier may still be run by a user who says so
(``encoder_tier="pixels"``): it is then held to ``PIXELS_ENCODER_MAX_DROP_DB``, the PSNR its
round trip may lose against fp32's round trip, measured against the photos.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

TOKENS = "tokens"
PIXELS = "pixels"
TIERS = (TOKENS, PIXELS)
# the stages a precision plan chooses for, and the tier each is held to by default
ENCODER_STAGE = "encoder"
DECODER_STAGE = "decoder"
STAGES = (ENCODER_STAGE, DECODER_STAGE)
STAGE_TIER = {ENCODER_STAGE: TOKENS, DECODER_STAGE: PIXELS}

# tokens tier: share of token positions equal to fp32's
TOKENS_MIN_AGREEMENT = 0.99
# pixels tier: PSNR (dB) of the decode of fp32's tokens against fp32's decode of them
PIXELS_MIN_PSNR_DB = 40.0
# an encoder the user holds to pixels only: round-trip PSNR lost against fp32's (dB)
PIXELS_ENCODER_MAX_DROP_DB = 0.5
# PSNR of two identical images is infinite: reported as this, so figures stay JSON numbers
PSNR_CAP_DB = 99.0


@dataclass(frozen=True)
class StageJudgement:
    """One stage at one precision, judged by its tier.

    ``figure`` is the tier's measure (token agreement with fp32 for the tokens tier, PSNR
    against fp32's decode in dB for the pixels tier); ``per_scale`` the agreement of each
    scale of a multi-scale bundle, coarse to fine (empty otherwise); ``reason`` says why it
    does not hold ("" when it does).
    """

    stage: str
    precision: str
    tier: str
    figure: float
    bar: float
    holds: bool
    reason: str
    per_scale: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "precision": self.precision,
            "tier": self.tier,
            "figure": self.figure,
            "bar": self.bar,
            "holds": self.holds,
            "reason": self.reason,
            "per_scale": list(self.per_scale),
        }


def judge_tokens(
    stage: str, precision: str, agreement: float, per_scale: Sequence[float] = ()
) -> StageJudgement:
    """The tokens tier: ``agreement`` (share of positions equal to fp32's) at least
    ``TOKENS_MIN_AGREEMENT``."""
    holds = agreement >= TOKENS_MIN_AGREEMENT
    reason = ""
    if not holds:
        scales = ""
        if per_scale:
            scales = " (per scale: " + ", ".join(f"{a:.0%}" for a in per_scale) + ")"
        reason = (
            f"{precision} {stage} keeps {agreement:.1%} of fp32's tokens{scales} "
            f"(tokens tier: at least {TOKENS_MIN_AGREEMENT:.0%})"
        )
    return StageJudgement(
        stage,
        precision,
        TOKENS,
        float(agreement),
        TOKENS_MIN_AGREEMENT,
        holds,
        reason,
        tuple(float(a) for a in per_scale),
    )


def judge_pixels(stage: str, precision: str, psnr_vs_fp32_db: float) -> StageJudgement:
    """The pixels tier: the decode of fp32's tokens at least ``PIXELS_MIN_PSNR_DB`` against
    fp32's decode."""
    figure = min(float(psnr_vs_fp32_db), PSNR_CAP_DB)
    holds = figure >= PIXELS_MIN_PSNR_DB
    reason = ""
    if not holds:
        reason = (
            f"{precision} {stage} decodes fp32's tokens {figure:.1f} dB from fp32's decode "
            f"(pixels tier: at least {PIXELS_MIN_PSNR_DB:.0f} dB)"
        )
    return StageJudgement(stage, precision, PIXELS, figure, PIXELS_MIN_PSNR_DB, holds, reason)


def judge_encoder_pixels(precision: str, drop_db: float) -> StageJudgement:
    """An encoder the user holds to pixels only: its round trip loses at most
    ``PIXELS_ENCODER_MAX_DROP_DB`` of PSNR against the photos, next to fp32's."""
    holds = drop_db <= PIXELS_ENCODER_MAX_DROP_DB
    reason = ""
    if not holds:
        reason = (
            f"{precision} encoder's round trip is {drop_db:.2f} dB below fp32's "
            f"(pixels tier for an encoder: at most {PIXELS_ENCODER_MAX_DROP_DB:.2f} dB)"
        )
    return StageJudgement(
        ENCODER_STAGE, precision, PIXELS, float(drop_db), PIXELS_ENCODER_MAX_DROP_DB, holds, reason
    )


def rules() -> dict[str, float | str | list[str]]:
    """The rules' constants, as JSON carries them (what ``rules_digest`` hashes and the
    browser package is generated from)."""
    return {
        "TOKENS_MIN_AGREEMENT": TOKENS_MIN_AGREEMENT,
        "PIXELS_MIN_PSNR_DB": PIXELS_MIN_PSNR_DB,
        "PIXELS_ENCODER_MAX_DROP_DB": PIXELS_ENCODER_MAX_DROP_DB,
        "PSNR_CAP_DB": PSNR_CAP_DB,
        "STAGE_TIER": [f"{s}:{t}" for s, t in STAGE_TIER.items()],
    }


def rules_digest() -> str:
    """A hash of the rules' constants: a verdict made under other rules is not reused."""
    return hashlib.sha256(json.dumps(rules(), sort_keys=True).encode()).hexdigest()[:16]


__all__ = [
    "DECODER_STAGE",
    "ENCODER_STAGE",
    "PIXELS",
    "PIXELS_ENCODER_MAX_DROP_DB",
    "PIXELS_MIN_PSNR_DB",
    "PSNR_CAP_DB",
    "STAGES",
    "STAGE_TIER",
    "TIERS",
    "TOKENS",
    "TOKENS_MIN_AGREEMENT",
    "StageJudgement",
    "judge_encoder_pixels",
    "judge_pixels",
    "judge_tokens",
    "rules",
    "rules_digest",
]
