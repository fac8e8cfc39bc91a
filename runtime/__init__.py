"""vqedge.runtime: run exported vqedge bundles with numpy and onnxruntime only (never torch)."""

from vqedge.runtime.config import VQVAEConfig
from vqedge.runtime.metrics import codebook_stats, psnr, to_uint8

__all__ = ["VQVAEConfig", "codebook_stats", "psnr", "to_uint8"]
