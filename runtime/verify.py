"""On-device verification: does each stage of a precision plan hold its fidelity tier here?

Every figure in a manifest was measured where the bundle was exported. Kernels differ from
device to device (int8 on a CPU without VNNI sums products in 16 bits and saturates; GPUs may
run fp32 convolutions in TF32), so a bundle carries a small check set (``check.npz``, listed
with its sha256): a few validation photos, and the fp32 tokens and fp32 reconstructions the
exporting machine made of them. Each stage is judged by its tier (``vqedge.runtime.fidelity``):

- the encoder at precision p: ``encode(photos)`` against the check set's fp32 tokens, the
  tokens tier (for a multi-scale bundle over all scales, each scale reported); or, where the
  user accepts other tokens (``encoder_tier="pixels"``), the round trip's PSNR drop against
  the photos beside fp32's;
- the decoder at precision p: ``decode(check tokens)`` against the check set's fp32
  reconstructions, the pixels tier.

fp32 is judged the same way, against the exporting machine's fp32. Judgements are cached per
stage in the user's cache (``vqedge.runtime.cache``) under a key of everything that changes
kernels or rules; a cached judgement is used only where its stored key equals the request's
and it judges the same from its stored figures under today's rules.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.runtime import fidelity
from vqedge.runtime.cache import VERDICTS, private_dir, write_private
from vqedge.runtime.device import cpu_signature, device_description, gpu_description
from vqedge.runtime.fidelity import (
    DECODER_STAGE,
    ENCODER_STAGE,
    PIXELS,
    STAGES,
    TOKENS,
    StageJudgement,
)
from vqedge.runtime.manifest import BundleError, verified_file
from vqedge.runtime.metrics import psnr
from vqedge.runtime.plan import AUTO, PrecisionPlan
from vqedge.runtime.providers import (
    GPU_PROVIDERS,
    OPENVINO,
    ProviderError,
    installed_runtimes,
    provider_names,
)
from vqedge.runtime.verdict import Trial, Verdict

CHECK_FILE = "check.npz"
# arrays of the check set: photos uint8 [N, H, W, 3], fp32 tokens, fp32 reconstructions
CHECK_ARRAYS = ("image", "tokens", "reconstruction")
# runs of a stage whose median "auto" compares (after one warm-up run)
TIMING_RUNS = 3
NO_CHECK_SET = "the bundle carries no check set"


class PrecisionError(ProviderError):
    """A plan a stage of which does not hold its fidelity tier on this device (strict load),
    or a strict load of a bundle without a check set."""


def check_entry(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's ``check`` entry, or None for a bundle exported without one."""
    entry = manifest.get("check")
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise BundleError("manifest.json: 'check' must be an object naming its 'file'")
    return entry


def read_check_set(root: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The check set's arrays, from the file the manifest names (sha256 checked).

    Raises
    ------
    BundleError
        The file is missing, tampered with, or lacks an array.
    """
    entry = check_entry(manifest)
    if entry is None:
        raise BundleError(f"bundle {root.name} carries no check set: re-export it to add one")
    path = verified_file(root, manifest, entry["file"])
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in CHECK_ARRAYS}
    except (KeyError, ValueError, OSError) as e:
        raise BundleError(
            f"bundle check set {entry['file']} is not readable (arrays {CHECK_ARRAYS}): {e}"
        ) from e
    return arrays


# -- measuring one stage ------------------------------------------------------------------


def _mean_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([min(psnr(x, y), fidelity.PSNR_CAP_DB) for x, y in zip(a, b)]))


def measure_encoder(
    tok: Any, arrays: dict[str, np.ndarray], round_trip: bool = True
) -> dict[str, Any]:
    """The encoder (with the fp32 lookup) on the check photos -> agreement with the check
    set's fp32 tokens over all scales, per scale (several scales only), and, with
    ``round_trip``, the round trip's PSNR drop against the photos beside fp32's (dB, decoded
    at the tokenizer's plan: what an encoder held to the pixels tier is judged by)."""
    photos, ref = arrays["image"], arrays["tokens"]
    idx_Bl = tok.img_to_idxBl(photos)
    got = np.concatenate([np.asarray(i).reshape(len(photos), -1) for i in idx_Bl], axis=1)
    ref_flat = ref.reshape(len(photos), -1)
    if got.shape != ref_flat.shape:
        raise BundleError(
            f"check set tokens have shape {ref.shape}, this runtime gives {got.shape}"
        )
    same = got == ref_flat
    per_scale, start = [], 0
    for i in idx_Bl:
        n = np.asarray(i).reshape(len(photos), -1).shape[1]
        per_scale.append(float(same[:, start : start + n].mean()))
        start += n
    out = {"agreement": float(same.mean()), "per_scale": per_scale if len(per_scale) > 1 else []}
    if round_trip:
        recon = tok.decode(got.reshape(ref.shape))
        drop = _mean_psnr(photos, arrays["reconstruction"]) - _mean_psnr(photos, recon)
        out["round_trip_drop_db"] = float(drop)
    return out


def measure_decoder(tok: Any, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """The decoder on the check set's fp32 tokens -> PSNR against fp32's decode of them."""
    return {"psnr_vs_fp32": _mean_psnr(arrays["reconstruction"], tok.decode(arrays["tokens"]))}


def judge_stage(stage: str, precision: str, tier: str, got: dict[str, Any]) -> StageJudgement:
    """A stage's measured figures judged by its tier (today's rules)."""
    if stage == DECODER_STAGE:
        return fidelity.judge_pixels(stage, precision, got["psnr_vs_fp32"])
    if tier == PIXELS:
        return fidelity.judge_encoder_pixels(precision, got["round_trip_drop_db"])
    return fidelity.judge_tokens(stage, precision, got["agreement"], got.get("per_scale", ()))


def stage_time_ms(tok: Any, stage: str, arrays: dict[str, np.ndarray]) -> float:
    """Median time of ``stage`` alone on the check set (ms), after one warm-up run."""
    if stage == ENCODER_STAGE:
        run = lambda: tok.encode_latent(arrays["image"])  # noqa: E731
    else:
        run = lambda: tok.decode(arrays["tokens"])  # noqa: E731
    run()
    times = []
    for _ in range(TIMING_RUNS):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


# -- the cache ----------------------------------------------------------------------------


def key_fields(tok: Any, stage: str, tier: str) -> dict[str, Any]:
    """Everything a stage's judgement depends on: the bundle, the stage and its precision
    (and, for an encoder judged by pixels, the decoder it was decoded with), providers and
    their options, session options, the machine, the versions and the rules."""
    s = tok.sessions
    plan = {stage: s.plan.stages[stage]}
    if stage == ENCODER_STAGE and tier == PIXELS:
        plan = s.plan.to_dict()
    graphs = ["encoder", "quantizer"] if stage == ENCODER_STAGE else ["decoder"]
    if tier == PIXELS and stage == ENCODER_STAGE:
        graphs.append("decoder")
    providers = {g: json.loads(json.dumps(s.providers_of(g), default=str)) for g in graphs}
    return {
        "bundle_sha256": s.bundle_sha256,
        "stage": stage,
        "tier": tier,
        "plan": plan,
        "providers": providers,
        "session_options": session_option_fields(s.options),
        "graph_cache": s.graph_cache is not None,
        "machine": machine_key(provider_names(s.providers)),
        "rules": fidelity.rules_digest(),
    }


@functools.cache
def _versions() -> tuple[str, ...]:
    from importlib import metadata

    found = list(installed_runtimes())  # every onnxruntime flavour, as `vqedge info` lists
    for dist in ("vqedge", "openvino"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{dist}=={metadata.version(dist)}")
    return tuple(found)


def machine_key(providers: list[str]) -> dict[str, object]:
    """What a cached judgement must have been measured on: the CPU signature, the GPU a GPU
    provider runs (or "none"), and the versions of onnxruntime, OpenVINO and vqedge."""
    gpu = gpu_description() if GPU_PROVIDERS.intersection(providers) else "none"
    return {"cpu": cpu_signature(), "gpu": gpu, "versions": list(_versions())}


# session config entries that change which kernels run or how they round
CONFIG_ENTRIES = (
    "session.intra_op.allow_spinning",
    "session.set_denormal_as_zero",
    "session.disable_prepacking",
    "session.qdqisint8allowed",
    "session.disable_quant_qdq",
    "session.enable_quant_qdq_cleanup",
    "mlas.enable_gemm_fastmath_arm64_bfloat16",
    "session.use_env_allocators",
)


def session_option_fields(opts: Any) -> dict[str, Any]:
    """The session options that change kernels: optimization level, threads, config entries."""
    entries = {}
    for k in CONFIG_ENTRIES:
        try:
            entries[k] = opts.get_session_config_entry(k)
        except RuntimeError:  # not set
            continue
    return {
        "graph_optimization_level": str(opts.graph_optimization_level),
        "execution_mode": str(opts.execution_mode),
        "intra_op_num_threads": opts.intra_op_num_threads,
        "inter_op_num_threads": opts.inter_op_num_threads,
        "config": entries,
    }


def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def read_cached(
    folder: Path | None, fields: dict[str, Any]
) -> tuple[StageJudgement, dict[str, Any], float | None] | None:
    """A cached judgement whose stored key equals ``fields`` and which judges the same from
    its stored figures under today's rules; None for anything else (it is re-measured)."""
    if folder is None:
        return None
    try:
        data = json.loads((folder / f"{_digest(fields)}.json").read_text())
        if data["key"] != json.loads(json.dumps(fields)):
            return None
        stored = data["judgement"]
        got = data["figures"]
        j = judge_stage(fields["stage"], fields["plan"][fields["stage"]], fields["tier"], got)
        if stored != j.to_dict():
            return None
        ms = data.get("ms")
        return j, got, (float(ms) if ms is not None else None)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def remember(
    folder: Path | None,
    fields: dict[str, Any],
    got: dict[str, Any],
    judgement: StageJudgement,
    ms: float | None,
) -> None:
    """Keep a stage's judgement, its figures and its time (0o600, atomically)."""
    if folder is None:
        return
    record = {
        "key": fields,
        "figures": got,
        "judgement": judgement.to_dict(),
        "ms": ms,
        "checked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_private(folder / f"{_digest(fields)}.json", json.dumps(record).encode())


# -- judging a tokenizer ------------------------------------------------------------------


class Checker:
    """Judges the stages of one tokenizer on its check set, reading and keeping the cache."""

    def __init__(
        self, tok: Any, encoder_tier: str, cache_dir: str | Path | None, use_cache: bool
    ) -> None:
        if encoder_tier not in fidelity.TIERS:
            raise ValueError(f"encoder_tier must be one of {fidelity.TIERS}, got {encoder_tier!r}")
        self.tok = tok
        self.encoder_tier = encoder_tier
        self.folder = private_dir(VERDICTS, cache_dir)
        self.use_cache = use_cache
        self._arrays: dict[str, np.ndarray] | None = None
        self.all_cached = True

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = read_check_set(self.tok.root, self.tok.manifest)
        return self._arrays

    def tier(self, stage: str) -> str:
        return self.encoder_tier if stage == ENCODER_STAGE else fidelity.STAGE_TIER[stage]

    def judge(self, stage: str, precision: str, timed: bool = False) -> Trial:
        """``stage`` at ``precision`` (the tokenizer is switched to it): cached or measured."""
        s = self.tok.sessions
        if s.plan.stages[stage] != precision:
            s.set_stage(stage, precision)
        precision = s.plan.stages[stage]  # bf16 off OpenVINO runs fp32 (lenient)
        fields = key_fields(self.tok, stage, self.tier(stage))
        hit = read_cached(self.folder, fields) if self.use_cache else None
        if hit is not None and (hit[2] is not None or not timed):
            return Trial(hit[0], hit[2] or 0.0)
        self.all_cached = False
        if hit is not None:  # a cached judgement without the time "auto" needs: time it
            j, got = hit[0], hit[1]
        else:
            if stage == ENCODER_STAGE:  # the round trip only where the pixels tier reads it
                got = measure_encoder(self.tok, self.arrays, self.tier(stage) == PIXELS)
            else:
                got = measure_decoder(self.tok, self.arrays)
            j = judge_stage(stage, precision, self.tier(stage), got)
        ms = stage_time_ms(self.tok, stage, self.arrays) if timed else None
        remember(self.folder, fields, got, j, ms)
        return Trial(j, ms or 0.0)


def candidates(tok: Any) -> list[str]:
    """The precisions "auto" tries on this tokenizer's providers: the bundle's variants, and
    bf16 where OpenVINO runs first; fp32 first (ties go to it)."""
    variants = list(tok.manifest["variants"])
    out = ["fp32"] if "fp32" in variants else []
    out += [v for v in variants if v != "fp32"]
    if provider_names(tok.sessions.providers)[0] == OPENVINO and "fp32" in variants:
        out.append("bf16")
    return out


def running_providers(tok: Any) -> list[str]:
    """The providers the tokenizer's encoder and decoder sessions run on, first first."""
    used = tok.info["providers_in_use"]
    names: list[str] = []
    for graph in ("encoder", "decoder"):
        for p in used.get(graph, [])[:1]:
            if p not in names:
                names.append(p)
    return names


def _verdict(tok: Any, asked: PrecisionPlan, checker: Checker, **kw: Any) -> Verdict:
    providers = running_providers(tok)
    return Verdict(
        bundle=str(tok.manifest.get("name") or tok.root.name),
        asked=asked.to_dict(),
        plan=tok.sessions.plan.to_dict(),
        encoder_tier=checker.encoder_tier,
        device=device_description(providers),
        providers=tuple(providers),
        **kw,
    )


def check_plan(
    tok: Any,
    encoder_tier: str = TOKENS,
    cache_dir: str | Path | None = None,
    use_cache: bool = False,
) -> Verdict:
    """Judge every stage of ``tok``'s plan on the check set now (no cache read unless
    ``use_cache``; the judgements are kept) -> the verdict; skipped without a check set."""
    t0 = time.perf_counter()
    plan = tok.sessions.plan
    checker = Checker(tok, encoder_tier, cache_dir, use_cache)
    if check_entry(tok.manifest) is None:
        return _verdict(tok, plan, checker, skipped=NO_CHECK_SET)
    judgements = [checker.judge(stage, plan.stages[stage]).judgement for stage in STAGES]
    return _verdict(
        tok,
        plan,
        checker,
        judgements=tuple(judgements),
        cached=use_cache and checker.all_cached,
        seconds=time.perf_counter() - t0,
    )


def refusal(j: StageJudgement, asked: PrecisionPlan) -> str:
    """A strict load's message for a stage that does not hold: the figures and the ways on."""
    if j.precision == "fp32":
        return (
            f"{j.reason} on this device: the provider computes differently from the exporting "
            "machine (a GPU's TF32, another kernel); compare with providers='cpu'"
        )
    other = DECODER_STAGE if j.stage == ENCODER_STAGE else ENCODER_STAGE
    mixed = {j.stage: "fp32", other: asked.stages[other]}
    ways = f"use precision='auto' or precision={mixed!r}"
    if j.stage == ENCODER_STAGE and j.tier == TOKENS:
        ways += ", or accept pixels-only fidelity with encoder_tier='pixels'"
    return f"{j.reason}: {ways}"


def verify_at_load(
    tok: Any,
    asked: PrecisionPlan,
    strict: bool,
    encoder_tier: str = TOKENS,
    cache_dir: str | Path | None = None,
) -> None:
    """``load``'s check of the plan asked for; sets ``tok.verification``.

    A stage set to "auto" runs the fastest candidate that holds its tier. A stage whose
    precision does not hold raises ``PrecisionError`` with ``strict``; else it warns and the
    stage runs fp32 (the same open sessions). A bundle without a check set is refused with
    ``strict`` and marked "not verified" otherwise.
    """
    t0 = time.perf_counter()
    checker = Checker(tok, encoder_tier, cache_dir, use_cache=True)
    if check_entry(tok.manifest) is None:
        if strict:
            raise PrecisionError(
                f"bundle {tok.root.name} carries no check set, so its plan cannot be verified "
                "on this device: re-export it (`vqedge export ...` writes one) or load it "
                "unverified with verify=False (CLI: --no-verify)"
            )
        tok.sessions.verification = _verdict(tok, asked, checker, skipped=NO_CHECK_SET)
        return
    judgements, trials, fell_back = [], [], []
    # the decoder first: an encoder judged by pixels is decoded at the decoder's final choice
    for stage in (DECODER_STAGE, ENCODER_STAGE):
        want = asked.stages[stage]
        if want == AUTO:
            tried = [checker.judge(stage, p, timed=True) for p in candidates(tok)]
            trials += tried
            good = [t for t in tried if t.judgement.holds]
            pick = min(good, key=lambda t: t.ms) if good else tried[0]
            checker.judge(stage, pick.judgement.precision)  # switch to it (cached now)
            j = pick.judgement
        else:
            j = checker.judge(stage, want).judgement
        judgements.append(j)
        if j.holds:
            continue
        if strict:
            raise PrecisionError(refusal(j, asked))
        if j.precision != "fp32":
            warnings.warn(f"{j.reason}; the {stage} runs fp32 instead", RuntimeWarning, 3)
            tok.sessions.set_stage(stage, "fp32")
            fell_back.append(stage)
        else:
            warnings.warn(refusal(j, asked), RuntimeWarning, stacklevel=3)
    tok.sessions.verification = _verdict(
        tok,
        asked,
        checker,
        judgements=tuple(reversed(judgements)),
        fell_back=tuple(reversed(fell_back)),
        cached=checker.all_cached,
        trials=tuple(trials),
        seconds=time.perf_counter() - t0,
    )


__all__ = [
    "CHECK_ARRAYS",
    "CHECK_FILE",
    "NO_CHECK_SET",
    "PrecisionError",
    "check_entry",
    "check_plan",
    "judge_stage",
    "measure_decoder",
    "measure_encoder",
    "read_check_set",
    "verify_at_load",
]
