"""ID (paper 3.1): the flattened normalised 17 x 17 patch as the embedding, ``(N, 289)``."""
from __future__ import annotations

import os

import numpy as np

from topo2vec_lib.models import checkpoints
from topo2vec_lib.models.config import IdConfig
from topo2vec_lib.models.embedder import PATCH_SIZE, Embedder, as_patch_batch


class IdEmbedder(Embedder):
    """ID: the flattened normalised 17 x 17 patch, ``(N, 289)`` float32. Nothing to learn."""

    kind = "id"

    def __init__(self, config: IdConfig | dict | None = None, name: str | None = None):
        cfg = config if isinstance(config, IdConfig) else IdConfig.from_dict(config)
        self.config = cfg.to_dict()
        self.name = name or cfg.name or self.kind
        self.dim = PATCH_SIZE * PATCH_SIZE
        self.res_m = cfg.embed_res_m

    def embed_patches(self, x) -> np.ndarray:
        x = as_patch_batch(x)
        return np.ascontiguousarray(x.reshape(len(x), self.dim))

    def save(self, path: str | os.PathLike) -> None:
        checkpoints.save_checkpoint(path, kind=self.kind, config=self.config, state={})

    @classmethod
    def from_checkpoint(cls, ckpt: dict, name: str | None = None) -> IdEmbedder:
        if ckpt["state"]:
            raise ValueError(f"an id checkpoint has no state (nothing is learned), got keys {sorted(ckpt['state'])}")
        return cls(ckpt["config"], name=name)
