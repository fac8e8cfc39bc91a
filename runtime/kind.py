"""The table of bundle kinds: what every stage asks about a bundle instead of its class.

A bundle's manifest names its kind (``single-scale``, ``multi-scale``, ...). ``KINDS`` maps
that name to a ``Kind``: the class that runs it, the recipe that exports it, the browser
class that runs it in web/, its token layout, the graph that turns latents into tokens and
the capabilities it offers. The export, the runtime, the commands, the demo, the dataset
stage, the benchmarks and the browser package read this one table; they ask a kind for a
capability (``kind_of(tok).offers(NEXT_SCALE)``) or call a method every kind implements
(``vqedge.runtime.base.TokenizerBase``), never a class or a field of one kind.

This module is a leaf: numpy and onnxruntime are not imported, and classes are named as
``"module:Class"`` strings, imported when a bundle of that kind is loaded (the runtime
class) or exported (the recipe, which needs torch). A kind defined outside vqedge is added
with ``register(Kind(...))`` in a module named by ``VQEDGE_KINDS`` (comma-separated module
names, imported the first time an unknown kind is asked for), so that subprocesses and the
CLI see it too (docs/extending.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from vqedge.runtime.manifest import BundleError

# capabilities a kind may offer; a stage asks for one, never for a kind by name
TILING = "tiling"  # any image size, tile by tile (encode_tiled, decode_tiled ...)
FIXED_SIZE = "fixed_size"  # one image size (``resolution``); other photos are fitted first
NEXT_SCALE = "next_scale"  # coarse-to-fine token maps, prefixes decode (the scales view)
TOKEN_EDITING = "token_editing"  # a token map whose single tokens may be changed and decoded
FACTORIZED_TOKENS = "factorized_tokens"  # each token splits into sub-tokens
CAPABILITIES = (TILING, FIXED_SIZE, NEXT_SCALE, TOKEN_EDITING, FACTORIZED_TOKENS)

# names of modules that register kinds of their own (see the module docstring)
PLUGINS_ENV = "VQEDGE_KINDS"


@dataclass(frozen=True)
class Kind:
    """One bundle kind: everything the stages need to know about it, and nothing else.

    Attributes
    ----------
    name : str
        The manifest's ``kind``.
    runtime : str
        ``"module:Class"`` of its ``TokenizerBase`` subclass (imported on load).
    recipe : str
        ``"module:Class"`` of its export recipe (``vqedge.export.recipe.Recipe``; imported
        at export only, since it needs torch).
    browser : str
        The class in the browser package (web/src/kinds.js) that runs it.
    layout : str
        Its token layout in words: what one image's tokens are.
    lookup : str
        The graph that maps a latent to tokens.
    graphs : tuple of str
        Every graph of a variant, in the order an image goes through them.
    capabilities : frozenset of str
        What it offers beyond the methods every kind implements (``CAPABILITIES``).
    """

    name: str
    runtime: str
    recipe: str
    browser: str
    layout: str
    lookup: str = "quantizer"
    graphs: tuple[str, ...] = ("encoder", "quantizer", "decoder")
    capabilities: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        unknown = set(self.capabilities) - set(CAPABILITIES)
        if unknown:
            raise ValueError(
                f"kind {self.name!r}: unknown capabilities {sorted(unknown)}; "
                f"known: {list(CAPABILITIES)}"
            )
        for what in ("runtime", "recipe"):
            if getattr(self, what).count(":") != 1:
                raise ValueError(f"kind {self.name!r}: {what} must be 'module:Class'")
        if self.lookup not in self.graphs:
            raise ValueError(f"kind {self.name!r}: lookup graph {self.lookup!r} not in graphs")

    def offers(self, capability: str) -> bool:
        """Whether this kind offers ``capability`` (one of ``CAPABILITIES``)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; known: {list(CAPABILITIES)}")
        return capability in self.capabilities

    def runtime_class(self) -> type:
        """The ``TokenizerBase`` subclass that runs bundles of this kind."""
        return _resolve(self.runtime)

    def recipe_class(self) -> type:
        """The export recipe of this kind (imports torch)."""
        return _resolve(self.recipe)


def _resolve(target: str) -> Any:
    module, name = target.split(":")
    return getattr(import_module(module), name)


# manifest kind -> Kind: the one table every stage reads
KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add ``kind`` to the table (replacing an entry of the same name); returns it."""
    KINDS[kind.name] = kind
    return kind


def _import_plugins() -> None:
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            import_module(name)
        except ImportError as e:
            raise BundleError(
                f"{PLUGINS_ENV} names module {name!r}, which fails to import: {e}"
            ) from None


def kind_of(what: Any) -> Kind:
    """The ``Kind`` of a kind name, a manifest, or a tokenizer (anything with ``KIND``).

    Raises
    ------
    BundleError
        A kind this vqedge does not run.
    """
    if isinstance(what, dict):
        name = what.get("kind")
    else:
        name = what if isinstance(what, str) else getattr(what, "KIND", None)
    if name not in KINDS:
        _import_plugins()
    if name not in KINDS:
        raise BundleError(
            f"bundle kind {name!r} is not one this vqedge runs ({sorted(KINDS)}): upgrade "
            f"vqedge, or name the module that registers it in {PLUGINS_ENV}"
        )
    return KINDS[name]


register(
    Kind(
        name="single-scale",
        runtime="vqedge.runtime.tokenizer:Tokenizer",
        recipe="vqedge.export.single_scale_recipe:SingleScaleRecipe",
        browser="Tokenizer",
        layout="one token map [h, w] per image, h = ceil(H / f), w = ceil(W / f)",
        capabilities=frozenset({TILING, TOKEN_EDITING}),
    )
)
register(
    Kind(
        name="multi-scale",
        runtime="vqedge.runtime.multiscale:MultiScaleTokenizer",
        recipe="vqedge.export.multi_scale_recipe:MultiScaleRecipe",
        browser="MultiScaleTokenizer",
        layout="one row [L] per image: a token map per scale, coarse to fine",
        graphs=("encoder", "quantizer", "scales", "decoder"),
        capabilities=frozenset({FIXED_SIZE, NEXT_SCALE}),
    )
)


register(
    Kind(
        name="lookup-free",
        runtime="vqedge.runtime.lookup_free:LookupFreeTokenizer",
        recipe="vqedge.export.lookup_free_recipe:LookupFreeRecipe",
        browser="LookupFreeTokenizer",
        layout=(
            "one token map [h, w] per image whose index is its code (LFQ sign bits, FSQ "
            "levels); LFQ with factorized bits also as its sub-token maps"
        ),
        capabilities=frozenset({TILING, TOKEN_EDITING, FACTORIZED_TOKENS}),
    )
)


__all__ = [
    "CAPABILITIES",
    "FACTORIZED_TOKENS",
    "FIXED_SIZE",
    "KINDS",
    "NEXT_SCALE",
    "PLUGINS_ENV",
    "TILING",
    "TOKEN_EDITING",
    "Kind",
    "kind_of",
    "register",
]
