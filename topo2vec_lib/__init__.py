"""topo2vec_lib: terrain, labels, patch sampler, networks and evaluation for the topo2vec study.

The most used names load on first use (so importing one submodule does not load torch or the models)::

    from topo2vec_lib import Topo2Vec, load_embedder, open_terrain, PatchSampler
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {"Topo2Vec": "topo2vec_lib.models.topo2vec", "load_embedder": "topo2vec_lib.models.registry",
         "train_model": "topo2vec_lib.models.registry", "open_terrain": "topo2vec_lib.terrain",
         "load_terrain": "topo2vec_lib.terrain", "PatchSampler": "topo2vec_lib.sampler"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'topo2vec_lib' has no attribute {name!r}")
