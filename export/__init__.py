"""vqedge.export: trace a tokenizer to ONNX, prove parity, write a bundle."""

from vqedge.export.families import export_pretrained
from vqedge.export.pipeline import export_bundle
from vqedge.export.validate import ExportValidationError

__all__ = ["ExportValidationError", "export_bundle", "export_pretrained"]
