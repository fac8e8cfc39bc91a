"""vqedge.models: the PyTorch tokenizers, training and the shipped trained default."""

from vqedge.models.checkpoint import load_pretrained
from vqedge.models.quantizer import VectorQuantizer
from vqedge.models.vqvae import VQVAE, SimpleVQVAE, VQTokenizerBase

__all__ = ["VQVAE", "SimpleVQVAE", "VQTokenizerBase", "VectorQuantizer", "load_pretrained"]
