"""vqedge.export: trace a tokenizer to ONNX, prove parity, write a bundle."""

from typing import Any

from vqedge.export.families import export_pretrained
from vqedge.export.pipeline import export_bundle
from vqedge.export.validate import ExportValidationError


def __getattr__(name: str) -> Any:
    if name == "FAMILIES":  # the family table's names as they stand now
        from vqedge.models.registry import names

        return names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FAMILIES", "ExportValidationError", "export_bundle", "export_pretrained"]
