"""Execution providers: choose them, build sessions, and never fall back silently."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import onnxruntime as ort

from vqedge.runtime.manifest import PRECISIONS

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
ROCM = "ROCMExecutionProvider"
DIRECTML = "DmlExecutionProvider"
COREML = "CoreMLExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
# "auto" takes the first available of these, then the CPU provider.
AUTO_ORDER = (TENSORRT, CUDA, ROCM, DIRECTML, COREML, OPENVINO)
ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "openvino": OPENVINO}
GPU_PROVIDERS = {TENSORRT, CUDA, ROCM, DIRECTML}
# providers whose outputs can stay in device memory between sessions (IO binding)
DEVICE_MEMORY = (TENSORRT, CUDA)
# Distributions that each install the one `onnxruntime` module: two at once hide providers.
ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-silicon",
    "onnxruntime-qnn",
)
# what load(precision=) takes: a bundle's variants, and bf16 (fp32 graphs on OpenVINO)
RUN_PRECISIONS = (*PRECISIONS, "bf16")
ProviderList = list[str | tuple[str, dict[str, Any]]]


class ProviderError(RuntimeError):
    """An execution provider that was asked for does not run."""


def installed_runtimes() -> list[str]:
    """The onnxruntime distributions installed in this environment."""
    from importlib import metadata  # slow to import: only when asked

    found = []
    for name in ORT_DISTRIBUTIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name}=={metadata.version(name)}")
    return found


def runtime_clash() -> str | None:
    """An explanation when several onnxruntime distributions are installed together."""
    found = installed_runtimes()
    if len(found) < 2:
        return None
    return (
        f"several onnxruntime distributions are installed together ({', '.join(found)}); they "
        "overwrite one another's `onnxruntime` module and hide execution providers. Keep one: "
        "pip uninstall " + " ".join(f.split("==")[0] for f in found) + " and reinstall the one "
        "you want (onnxruntime, onnxruntime-gpu or onnxruntime-openvino)."
    )


def resolve_providers(providers: str | ProviderList, precision: str) -> ProviderList:
    """Turn "auto", "cpu", a name or a list into an onnxruntime provider list.

    bf16 asks the OpenVINO provider for bf16 inference (its CPU plugin runs it on AMX or
    AVX-512 BF16 units); no other provider here offers it.
    """
    available = ort.get_available_providers()
    if providers == "auto":
        best = next((p for p in AUTO_ORDER if p in available), None)
        if precision == "bf16":
            best = OPENVINO
        chosen: ProviderList = [best, CPU] if best and best != CPU else [CPU]
    elif isinstance(providers, str):
        chosen = [ALIASES.get(providers.lower(), providers)]
    else:
        chosen = list(providers)
    if precision == "bf16":
        chosen = [_with_bf16(p) for p in chosen]
    return [_without_tf32(p) for p in chosen]


def run_precision(providers: ProviderList, precision: str, strict: bool) -> str:
    """The precision that runs on ``providers`` (as ``resolve_providers`` gives them).

    bf16 is given by the OpenVINO provider only; any other first provider would run the
    fp32 graphs at fp32, whichever onnxruntime flavour is installed.

    Raises
    ------
    ProviderError
        With ``strict``, bf16 asked of providers that cannot give it (else a warning, and
        fp32 is what runs).
    """
    if precision != "bf16" or provider_names(providers)[0] == OPENVINO:
        return precision
    msg = (
        f"precision bf16 runs on {OPENVINO} only, and the providers "
        f"{provider_names(providers)} would run the fp32 graphs at fp32: pass "
        "providers='openvino' (the onnxruntime-openvino flavour) or precision='fp32'"
    )
    if strict:
        raise ProviderError(msg)
    warnings.warn(msg + "; running at fp32", RuntimeWarning, stacklevel=3)
    return "fp32"


def lookup_providers(asked: str | ProviderList, resolved: ProviderList) -> ProviderList:
    """Where the quantizer graph (the nearest-code lookup) runs, given the other graphs' list.

    Always at fp32: bf16 scores flip about half of the tokens. And on the CPU provider
    wherever OpenVINO would take it: the lookup is a small MatMul and an ArgMax over
    [N, K] scores, memory-bound, and OpenVINO's ArgMax is several times slower than
    onnxruntime's (timings in benchmarks/results).
    """
    if OPENVINO in provider_names(resolved):
        return [CPU]
    return resolve_providers(asked, "fp32")


def _with_bf16(p: str | tuple[str, dict[str, Any]]) -> str | tuple[str, dict[str, Any]]:
    name, opts = (p, {}) if isinstance(p, str) else p
    if name != OPENVINO:
        return p
    opts = dict(opts)
    # precision="BF16" is refused on CPU; the plugin's inference-precision hint is the way.
    opts.setdefault("load_config", '{"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}')
    opts.setdefault("device_type", "CPU")
    return (name, opts)


def _without_tf32(p: str | tuple[str, dict[str, Any]]) -> str | tuple[str, dict[str, Any]]:
    """The CUDA provider with TF32 off unless the caller set it: on Ampere and newer GPUs
    TF32 convolutions round inputs to 10-bit mantissas, which flips tokens that fp32 keeps."""
    name, opts = (p, {}) if isinstance(p, str) else p
    if name != CUDA:
        return p
    return (name, {"use_tf32": "0", **opts})


def provider_names(providers: ProviderList) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


def make_session(
    path: Path,
    providers: ProviderList,
    options: ort.SessionOptions,
    strict: bool,
    precision: str,
) -> ort.InferenceSession:
    """Create a session and check that every provider asked for is the one running it."""
    asked = provider_names(providers)
    available = ort.get_available_providers()
    missing = [p for p in asked if p not in available]
    if missing:
        msg = f"execution provider(s) {missing} not available here (available: {available})"
        if precision == "bf16":
            msg += (
                "; bf16 runs on the OpenVINO execution provider: install the onnxruntime-openvino "
                "flavour (see the README)"
            )
        clash = runtime_clash()
        if clash:
            msg += f". Note: {clash}"
        if strict:
            raise ProviderError(msg)
        warnings.warn(msg + "; falling back to what is available", RuntimeWarning, stacklevel=3)
        providers = [p for p in providers if provider_names([p])[0] in available] or [CPU]
        asked = provider_names(providers)
    try:
        sess = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidArgument types
        raise ProviderError(f"cannot create a session for {path.name} on {asked}: {e}") from e
    running = sess.get_providers()
    dropped = [p for p in asked if p not in running]
    if dropped:
        msg = (
            f"{path.name}: execution provider(s) {dropped} were asked for but the session runs "
            f"on {running} (the provider failed to load or refused its options)"
        )
        if strict:
            raise ProviderError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return sess
