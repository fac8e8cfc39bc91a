"""The precision plan: which precision each stage of a tokenizer runs at.

``load(..., precision=...)`` takes a string (every stage at that precision), a mapping
``{"encoder": ..., "decoder": ...}`` (a stage left out runs fp32), or ``"auto"`` (per stage,
the fastest precision that holds the stage's fidelity tier on this device and provider,
``vqedge.runtime.fidelity``). The nearest-code lookup always runs at fp32. A plan is carried
as JSON as ``{"encoder": "fp32", "decoder": "int8"}`` (manifests, verdicts, shards, the
browser package).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vqedge.runtime.fidelity import STAGES
from vqedge.runtime.providers import RUN_PRECISIONS

AUTO = "auto"
# what a stage may run at: a bundle's variants, and bf16 (the fp32 graphs on OpenVINO)
STAGE_PRECISIONS = RUN_PRECISIONS
PrecisionArg = str | Mapping[str, str]


@dataclass(frozen=True)
class PrecisionPlan:
    """A precision per stage. A value may be ``"auto"`` until ``load`` resolves it."""

    encoder: str = "fp32"
    decoder: str = "fp32"

    def __post_init__(self) -> None:
        for stage in STAGES:
            p = getattr(self, stage)
            if p not in (*STAGE_PRECISIONS, AUTO):
                raise ValueError(
                    f"precision for the {stage} must be one of {(*STAGE_PRECISIONS, AUTO)}, "
                    f"got {p!r}"
                )

    @classmethod
    def parse(cls, precision: PrecisionArg | PrecisionPlan) -> PrecisionPlan:
        """A plan from what ``load(precision=...)`` takes.

        Raises
        ------
        ValueError
            An unknown precision or stage, or a value that is neither a string nor a mapping.
        """
        if isinstance(precision, PrecisionPlan):
            return precision
        if isinstance(precision, str):
            return cls(precision, precision)
        if isinstance(precision, Mapping):
            unknown = sorted(set(precision) - set(STAGES))
            if unknown:
                raise ValueError(
                    f"precision plan names unknown stage(s) {unknown}: the stages are {STAGES}"
                )
            return cls(**{s: str(precision.get(s, "fp32")) for s in STAGES})
        raise ValueError(
            "precision must be a string (every stage), a mapping {'encoder': ..., "
            f"'decoder': ...}} or 'auto', got {type(precision).__name__}"
        )

    @property
    def stages(self) -> dict[str, str]:
        """{stage: precision}."""
        return {s: getattr(self, s) for s in STAGES}

    @property
    def uniform(self) -> str | None:
        """The one precision every stage runs at, or None for a mixed plan."""
        values = set(self.stages.values())
        return values.pop() if len(values) == 1 else None

    @property
    def resolved(self) -> bool:
        """Whether no stage is still ``"auto"``."""
        return AUTO not in self.stages.values()

    def to_dict(self) -> dict[str, str]:
        """The plan as JSON carries it."""
        return self.stages

    def describe(self) -> str:
        """ "fp32", or "encoder fp32, decoder int8"."""
        return self.uniform or ", ".join(f"{s} {p}" for s, p in self.stages.items())

    def __str__(self) -> str:
        return self.describe()


def parse_cli_precision(values: list[str] | None) -> PrecisionArg:
    """The CLI's ``--precision`` values -> what ``load`` takes.

    ``--precision int8`` (every stage), ``--precision auto``, or per stage
    ``--precision encoder=fp32 --precision decoder=int8`` (a stage left out runs fp32).
    """
    if not values:
        return "fp32"
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    plan: dict[str, Any] = {}
    for v in values:
        stage, sep, p = v.partition("=")
        if not sep:
            raise ValueError(
                f"--precision {v!r}: give one precision, or stage=precision for each stage "
                f"({', '.join(STAGES)})"
            )
        plan[stage] = p
    return plan


__all__ = [
    "AUTO",
    "STAGE_PRECISIONS",
    "PrecisionArg",
    "PrecisionPlan",
    "parse_cli_precision",
]
