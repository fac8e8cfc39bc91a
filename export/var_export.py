"""Export of VAR's VQVAE from a model object: ``export_var``.

``pipeline.export_bundle`` with a built model and the manifest's ``source``: the recipe
(``VARRecipe``) keeps the int8 variant whatever its PSNR against fp32, with its figures
recorded: imported weights are the authors', and the manifest says per precision whether its
tokens are fit for training a generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqedge.export import pipeline
from vqedge.models.var import FAMILY, VARVQVAE
from vqedge.runtime.manifest import PRECISIONS, sha256_file

__all__ = ["export_var"]


def export_var(
    model: VARVQVAE,
    out: str | Path,
    force: bool = False,
    precisions: tuple[str, ...] = PRECISIONS,
    log=print,
    checkpoint: str | Path | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """Export a VAR VQVAE (``vqedge.models.var.load_var``) to a validated multi-scale bundle.

    Parameters
    ----------
    model : VARVQVAE
        The model, weights loaded.
    out : str or Path
        The bundle folder to create; an existing one is refused unless ``force``.
    precisions : tuple of str
        Variants to write: fp32 always, and any of "fp16", "int8".
    checkpoint : str or Path, optional
        The file the weights came from: the manifest's ``source`` records its name and sha256.
    preset : str, optional
        The preset the model was built with ("256", "512"), recorded in ``source``.

    Returns
    -------
    dict
        The manifest that was written.

    Raises
    ------
    ExportValidationError
        A graph does not match PyTorch at some scale; nothing is written.
    """
    if not isinstance(model, VARVQVAE):
        raise TypeError(f"export_var takes a VARVQVAE (load_var), got {type(model).__name__}")
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ValueError(f"unknown precisions {unknown}; expected some of {', '.join(PRECISIONS)}")
    src = Path(checkpoint) if checkpoint is not None else None
    if src is not None and not src.is_file():
        raise FileNotFoundError(f"{FAMILY} checkpoint {src} is not a file")
    source = {
        "family": "var",
        "checkpoint": src.name if src is not None else None,
        "sha256": sha256_file(src) if src is not None else None,
        "preset": preset,
    }
    return pipeline.export_bundle(
        model, out, force=force, precisions=precisions, log=log, source=source
    )
