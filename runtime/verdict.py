"""The on-device check's verdict on a precision plan: one typed object, read in one place.

A tokenizer owns its verdict (``tok.verification``). It held, it fell back to fp32 for a stage,
or it was skipped (no check set, or ``load(verify=False)``); ``describe()`` is the one text
of it (``vqedge info``, the demo, messages) and ``to_dict()`` the one JSON form (shards,
``vqedge info --json``, benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vqedge.runtime.fidelity import StageJudgement


@dataclass(frozen=True)
class Trial:
    """One candidate precision of one stage measured by ``precision="auto"``: its judgement
    and the median time of the stage on the check images (ms)."""

    judgement: StageJudgement
    ms: float

    def to_dict(self) -> dict[str, Any]:
        return self.judgement.to_dict() | {"ms": round(self.ms, 3)}


@dataclass(frozen=True)
class Verdict:
    """What the check set said of a plan on this device and provider.

    Attributes
    ----------
    bundle : str
        The bundle's name.
    asked : dict
        The plan asked for, a precision (or "auto") per stage.
    plan : dict
        The plan that runs.
    encoder_tier : str
        The tier the encoder is held to ("tokens", or "pixels" where the user accepts
        other tokens).
    device : str
        The CPU (and GPU provider) it was measured on.
    providers : tuple of str
        The providers the stages ran on, first first.
    judgements : tuple of StageJudgement
        Each stage judged at the precision it was asked for (for "auto": the one picked).
    fell_back : tuple of str
        The stages a lenient load runs at fp32 because their precision does not hold here.
    skipped : str
        Why nothing was checked ("" when it was).
    cached : bool
        Whether every judgement came from the verdict cache.
    trials : tuple of Trial
        The candidates "auto" measured, per stage.
    """

    bundle: str
    asked: dict[str, str]
    plan: dict[str, str]
    encoder_tier: str
    device: str
    providers: tuple[str, ...] = ()
    judgements: tuple[StageJudgement, ...] = ()
    fell_back: tuple[str, ...] = ()
    skipped: str = ""
    cached: bool = False
    trials: tuple[Trial, ...] = ()
    seconds: float = 0.0

    @property
    def checked(self) -> bool:
        """Whether the check set ran (or a cached verdict of it was read)."""
        return not self.skipped

    @property
    def holds(self) -> bool:
        """Whether every stage holds its tier at the precision asked for (or picked)."""
        return self.checked and all(j.holds for j in self.judgements)

    def reasons(self) -> str:
        """Why the plan does not hold ("" when it does)."""
        return "; ".join(j.reason for j in self.judgements if not j.holds)

    def describe(self) -> str:
        """The verdict in one line: the one place its text is made."""
        if self.skipped:
            return f"not verified: {self.skipped}"
        figures = ", ".join(_figure(j) for j in self.judgements)
        where = f"on {self.device}" + (" (cached verdict)" if self.cached else "")
        if self.fell_back:
            stages = " and ".join(self.fell_back)
            held = ", ".join(_figure(j) for j in self.judgements if j.holds)
            return (
                f"{self.reasons()}: the {stages} runs fp32 instead; plan "
                f"{_plan_text(self.plan)}" + (f" ({held})" if held else "") + f" {where}"
            )
        head = "holds" if self.holds else "does NOT hold"
        return f"{head}: plan {_plan_text(self.plan)}: {figures} {where}"

    def to_dict(self) -> dict[str, Any]:
        """The verdict as JSON carries it."""
        return {
            "bundle": self.bundle,
            "asked": dict(self.asked),
            "plan": dict(self.plan),
            "encoder_tier": self.encoder_tier,
            "device": self.device,
            "providers": list(self.providers),
            "checked": self.checked,
            "holds": self.holds,
            "judgements": [j.to_dict() for j in self.judgements],
            "fell_back": list(self.fell_back),
            "skipped": self.skipped,
            "cached": self.cached,
            "trials": [t.to_dict() for t in self.trials],
            "seconds": round(self.seconds, 4),
            "text": self.describe(),
        }


def _figure(j: StageJudgement) -> str:
    if j.tier == "tokens":
        return f"{j.stage} {j.precision} keeps {j.figure:.1%} of fp32's tokens"
    if j.stage == "encoder":
        return f"{j.stage} {j.precision} round trip {j.figure:.2f} dB below fp32's"
    return f"{j.stage} {j.precision} {j.figure:.1f} dB from fp32's decode"


def _plan_text(plan: dict[str, str]) -> str:
    values = set(plan.values())
    return values.pop() if len(values) == 1 else ", ".join(f"{s} {p}" for s, p in plan.items())


__all__ = ["Trial", "Verdict"]
