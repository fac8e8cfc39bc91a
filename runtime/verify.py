"""On-device verification: does this device give the tokens a bundle promises?

Every figure in a manifest was measured where the bundle was exported. Kernels differ from
device to device (int8 on a CPU without VNNI sums products in 16 bits and saturates; GPUs may
run fp32 convolutions in TF32), so a bundle carries a small check set (``check.npz``, listed
with its sha256): a few photos, the fp32 tokens and reconstructions of them made at export,
and what each precision gave there. ``check_tokenizer`` runs the photos through a loaded
tokenizer and compares; ``load`` does it the first time a combination of bundle, precision,
providers and CPU is seen and keeps the verdict in the user's cache directory.

What "holds" means, per precision:

- fp32: its tokens agree with the exporting machine's fp32 tokens on at least
  ``FP32_MIN_AGREEMENT`` of positions (float-rounding ties between two kernels' sums).
- any other: its reconstructions lose at most ``PSNR_BAR_DB`` against fp32's (PSNR against
  the photos; the export gate's own bar), or, for a bundle whose export already measured a
  larger loss, at most that loss plus ``DEVICE_MARGIN_DB``; and its tokens agree with fp32's
  at most ``AGREEMENT_MARGIN`` less often than they did at export.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.runtime.atomic import write_bytes_atomic
from vqedge.runtime.device import cpu_signature, device_description
from vqedge.runtime.manifest import BundleError, verified_file
from vqedge.runtime.metrics import psnr
from vqedge.runtime.providers import ProviderError

CHECK_FILE = "check.npz"
# arrays of the check set: photos uint8 [N, H, W, 3], fp32 tokens, fp32 reconstructions
CHECK_ARRAYS = ("image", "tokens", "reconstruction")
# bumped when a rule below changes, so cached verdicts made under old rules are not reused
RULES_VERSION = 1
# float-rounding ties between two kernels flip a few tokens in a thousand; reduced arithmetic
# (a GPU's TF32) flips a few in a hundred
FP32_MIN_AGREEMENT = 0.99
PSNR_BAR_DB = 0.5
DEVICE_MARGIN_DB = 0.25
AGREEMENT_MARGIN = 0.05


@dataclass
class CheckResult:
    """One precision checked on one device and provider.

    ``agreement`` is the share of token positions equal to the exporting machine's fp32
    tokens; ``psnr_vs_fp32`` the PSNR of this precision's reconstructions against fp32's
    (dB); ``psnr_drop_db`` how much less PSNR against the photos it has than fp32's
    reconstructions. ``expected_*`` are the same figures measured at export.
    """

    bundle: str
    precision: str
    providers: list[str]
    device: str
    agreement: float
    psnr_vs_fp32: float
    psnr_drop_db: float
    expected_agreement: float | None
    expected_drop_db: float | None
    holds: bool
    reason: str
    seconds: float
    cached: bool = False
    checked_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PrecisionError(ProviderError):
    """A precision that does not give the bundle's tokens on this device (strict load)."""


def cache_root() -> Path:
    """Where verdicts are kept: $VQEDGE_CACHE_DIR, else $XDG_CACHE_HOME/vqedge, else
    ~/.cache/vqedge."""
    env = os.environ.get("VQEDGE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vqedge"


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


def measure(tok: Any, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Run the check photos through ``tok`` -> agreement with the reference tokens, PSNR
    against the reference reconstructions, and PSNR lost against the photos (dB)."""
    recon, tokens = tok.reconstruct(arrays["image"])
    ref_tokens, ref_recon, photos = arrays["tokens"], arrays["reconstruction"], arrays["image"]
    if tokens.shape != ref_tokens.shape:
        raise BundleError(
            f"check set tokens have shape {ref_tokens.shape}, this runtime gives {tokens.shape}"
        )
    here = np.mean([psnr(p, r) for p, r in zip(photos, recon)])
    ref = np.mean([psnr(p, r) for p, r in zip(photos, ref_recon)])
    vs_fp32 = np.mean([min(psnr(a, b), 99.0) for a, b in zip(ref_recon, recon)])
    return {
        "agreement": float((tokens == ref_tokens).mean()),
        "psnr_vs_fp32": float(vs_fp32),
        "psnr_drop_db": float(ref - here),
    }


def judge(precision: str, got: dict[str, float], expected: dict[str, Any] | None) -> str:
    """Why ``got`` does not keep the bundle's promise for ``precision`` ("" if it does)."""
    agree, drop = got["agreement"], got["psnr_drop_db"]
    if precision == "fp32":
        if agree < FP32_MIN_AGREEMENT:
            return (
                f"fp32 tokens agree on {agree:.1%} of positions with the exporting machine's "
                f"(at least {FP32_MIN_AGREEMENT:.1%} expected)"
            )
        return ""
    why = []
    exp_drop = (expected or {}).get("psnr_drop_db")
    limit = PSNR_BAR_DB if exp_drop is None else max(PSNR_BAR_DB, exp_drop + DEVICE_MARGIN_DB)
    if drop > limit:
        why.append(f"{drop:.2f} dB below fp32 (at most {limit:.2f} dB expected)")
    exp_agree = (expected or {}).get("agreement")
    if exp_agree is not None and agree < exp_agree - AGREEMENT_MARGIN:
        why.append(f"tokens agree with fp32 on {agree:.0%} (the bundle promises {exp_agree:.0%})")
    return ", ".join(why)


def check_tokenizer(tok: Any) -> CheckResult | None:
    """Run the bundle's check set through ``tok`` now (no cache); None if it has none."""
    entry = check_entry(tok.manifest)
    if entry is None:
        return None
    t0 = time.perf_counter()
    got = measure(tok, read_check_set(tok.root, tok.manifest))
    expected = entry.get("expected", {}).get(tok.precision)
    reason = judge(tok.precision, got, expected)
    providers = running_providers(tok)
    device = device_description(providers)
    if reason:
        reason = f"{tok.precision} on {device} via {providers[0]}: {reason}"
    return CheckResult(
        bundle=str(tok.manifest.get("name") or tok.root.name),
        precision=tok.precision,
        providers=providers,
        device=device,
        agreement=got["agreement"],
        psnr_vs_fp32=got["psnr_vs_fp32"],
        psnr_drop_db=got["psnr_drop_db"],
        expected_agreement=(expected or {}).get("agreement"),
        expected_drop_db=(expected or {}).get("psnr_drop_db"),
        holds=not reason,
        reason=reason,
        seconds=time.perf_counter() - t0,
    )


def running_providers(tok: Any) -> list[str]:
    """The providers the tokenizer's encoder and decoder sessions run on, first first."""
    used = tok.info["providers_in_use"]
    names: list[str] = []
    for graph in ("encoder", "decoder"):
        for p in used.get(graph, [])[:1]:
            if p not in names:
                names.append(p)
    return names


def cache_key(tok: Any) -> str:
    """Bundle, precision, providers asked for, CPU, onnxruntime version and these rules."""
    import onnxruntime as ort

    parts = [
        tok.bundle_sha256,
        tok.precision,
        json.dumps(tok.sessions.providers, default=str),
        cpu_signature(),
        ort.__version__,
        str(RULES_VERSION),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def verdict_path(tok: Any, cache: Path | None = None) -> Path:
    """The file that keeps ``tok``'s verdict on this device."""
    return (cache or cache_root()) / "verdicts" / f"{cache_key(tok)}.json"


def cached_check(tok: Any, cache: Path | None = None) -> CheckResult | None:
    """The verdict for ``tok`` on this device: from the cache when this combination was
    checked before, else checked now and kept (an unwritable cache is skipped)."""
    if check_entry(tok.manifest) is None:
        return None
    path = verdict_path(tok, cache)
    try:
        data = json.loads(path.read_text())
        return CheckResult(**(data | {"cached": True}))
    except (OSError, ValueError, TypeError):
        pass
    result = check_tokenizer(tok)
    if result is not None:
        remember(result, path)
    return result


def remember(result: CheckResult, path: Path) -> None:
    """Keep a verdict (atomically); a cache that cannot be written costs a re-check later."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, json.dumps(result.to_dict() | {"cached": False}).encode())
    except OSError:
        pass


def describe_verification(v: dict[str, Any] | None) -> str:
    """One line on the on-device check's verdict (``info["verification"]``)."""
    if v is None:
        return "not checked (load(verify=False))"
    if v.get("checked") is False:
        return f"not checked: {v['reason']}"
    figures = (
        f"tokens agree {v['agreement']:.1%} with fp32, PSNR {v['psnr_drop_db']:.2f} dB below "
        f"fp32's, on {v['device']}" + (" (cached verdict)" if v.get("cached") else "")
    )
    if v.get("fell_back_to"):
        return f"{v['precision']} does NOT hold here ({v['reason']}): running {v['fell_back_to']}"
    return ("holds: " if v["holds"] else "does NOT hold: ") + figures


def advice(result: CheckResult) -> str:
    """What to do about a precision that does not hold."""
    if result.precision == "fp32":
        return (
            "the provider computes differently from the exporting machine (a GPU's TF32, "
            "another kernel): compare with providers='cpu'"
        )
    return (
        "use precision='fp32', or re-export the bundle with this vqedge (`vqedge export "
        f"--precisions {result.precision}`), whose int8 keeps 7-bit weights that CPUs without "
        "VNNI sum without saturating"
    )


def verify_at_load(tok: Any, strict: bool, reload: Any) -> Any:
    """``load``'s check of the precision asked for -> the tokenizer to use.

    Where the precision does not hold here, strict mode raises ``PrecisionError``; lenient
    mode warns and returns ``reload("fp32")``, whose ``info["verification"]`` says what was
    replaced and why.
    """
    import warnings

    result = cached_check(tok)
    if result is None:
        tok.sessions.verification = {
            "checked": False,
            "reason": "the bundle carries no check set (re-export it to add one)",
        }
        return tok
    tok.sessions.verification = result.to_dict()
    if result.holds:
        return tok
    msg = f"{result.reason}: {advice(result)}"
    if strict:
        raise PrecisionError(msg)
    if tok.precision == "fp32":
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return tok
    warnings.warn(f"{msg}; running fp32 instead", RuntimeWarning, stacklevel=3)
    fallback = reload("fp32")
    fallback.sessions.verification = result.to_dict() | {"fell_back_to": "fp32"}
    return fallback
