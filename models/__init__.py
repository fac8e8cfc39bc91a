"""vqedge.models: the PyTorch tokenizers, training and the shipped trained default."""

from vqedge.models.checkpoint import load_pretrained
from vqedge.models.import_checkpoint import CheckpointError
from vqedge.models.llamagen import LlamaGenVQ, load_llamagen
from vqedge.models.quantizer import VectorQuantizer
from vqedge.models.taming import TamingVQGAN, load_taming
from vqedge.models.var import VARVQVAE, load_var
from vqedge.models.vqmodel import DiffusersVQModel, load_vqmodel
from vqedge.models.vqvae import VQVAE, SimpleVQVAE, VQTokenizerBase

__all__ = [
    "VQVAE",
    "VARVQVAE",
    "CheckpointError",
    "DiffusersVQModel",
    "LlamaGenVQ",
    "SimpleVQVAE",
    "TamingVQGAN",
    "VQTokenizerBase",
    "VectorQuantizer",
    "load_llamagen",
    "load_pretrained",
    "load_taming",
    "load_var",
    "load_vqmodel",
]
