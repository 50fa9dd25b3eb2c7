"""Geomorphometry baseline (beyond the paper): fixed descriptors of raw-metre patches at several pixel sizes.

The descriptors themselves are :mod:`topo2vec_lib.geomorphometry`; this embedder samples the patches they
need. It overrides only what differs from :class:`~topo2vec_lib.models.embedder.Embedder`: the scales it
samples (:meth:`GeomorphometryEmbedder.scales_for`) and the batch step (raw metres, no normalisation).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from topo2vec_lib import geomorphometry as gm
from topo2vec_lib.models import checkpoints
from topo2vec_lib.models.config import GeomorphometryConfig
from topo2vec_lib.models.embedder import PATCH_SIZE, Embedder, check_vectors
from topo2vec_lib.sampler import PatchSampler


class GeomorphometryEmbedder(Embedder):
    """Fixed geomorphometric descriptors (:mod:`topo2vec_lib.geomorphometry`) at several pixel sizes.

    ``dim = 10 * len(scales_m)``, ordered scale-major (:attr:`feature_names`, e.g. ``"slope_mean_deg@30m"``).
    Embedding at ``res_m`` samples **raw-metre** 17 x 17 patches at ``scales_m * res_m / scales_m[0]``
    (``res_m`` defaults to ``scales_m[0]``: the finest scale moves to the requested one, the ratios stay) and
    returns float32 ``(N, dim)`` in mixed units (degrees, 1/m, m, counts): standardise before a distance or an
    SVM (the probes do). ``embed_patches`` takes those raw-metre stacks ``(N, len(scales_m), 17, 17)``; it does
    **not** accept normalised patches (min-max normalisation removes the metres, so slopes, curvatures and the
    flatness threshold would lose their units), except a single ``(N, 17, 17)`` stack with one scale.
    """

    kind = "geomorphometry"

    def __init__(self, config: GeomorphometryConfig | dict | None = None, name: str | None = None):
        cfg = config if isinstance(config, GeomorphometryConfig) else GeomorphometryConfig.from_dict(config)
        self.config = cfg.to_dict()
        self.name = name or cfg.name or self.kind
        self.scales_m = list(cfg.scales_m)
        self.flat_deg = cfg.flat_deg
        self.dim = len(gm.FEATURES) * len(self.scales_m)
        self.res_m = self.scales_m[0]

    @property
    def feature_names(self) -> list[str]:
        return [f"{f}@{s:g}m" for s in self.scales_m for f in gm.FEATURES]

    def scales_for(self, res_m: float | None = None) -> list[float]:
        """Pixel sizes (m/px) sampled for an embedding at ``res_m`` (finest scale = ``res_m``)."""
        if res_m is None:
            return list(self.scales_m)
        if not (isinstance(res_m, (int, float, np.number)) and np.isfinite(res_m) and res_m > 0):
            raise ValueError(f"res_m={res_m!r}: expected a positive pixel size in metres")
        return [s * float(res_m) / self.scales_m[0] for s in self.scales_m]

    def embed_patches(self, x, res_m: float | None = None) -> np.ndarray:
        """Raw-metre patches ``(N, len(scales_m), 17, 17)`` at :meth:`scales_for` (``res_m``) -> ``(N, dim)``."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x, dtype=np.float64)
        n_s = len(self.scales_m)
        if x.ndim == 3 and n_s == 1:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1:] != (n_s, PATCH_SIZE, PATCH_SIZE):
            raise ValueError(f"geomorphometry patches must be raw-metre stacks of shape (N, {n_s}, 17, 17), one "
                             f"per scale {self.scales_m} m, got {x.shape}; normalised single patches have lost "
                             f"their metres: use embed(sampler, lon, lat) instead")
        scales = self.scales_for(res_m)
        feats = [gm.descriptors(x[:, i], s, self.flat_deg) for i, s in enumerate(scales)]
        out = np.concatenate(feats, axis=1).astype(np.float32)
        return check_vectors(self.name, out, rows=np.isfinite(x).all(axis=(1, 2, 3)))

    def embed_batch_xy(self, sampler: PatchSampler, x: np.ndarray, y: np.ndarray, res_m: float,
                       allow_nodata: bool = False) -> np.ndarray:
        """Raw-metre patches at every scale of :meth:`scales_for` -> descriptors; NaN rows where nodata."""
        stack = np.stack([sampler.patches_xy(x, y, r, PATCH_SIZE, allow_nodata=allow_nodata)
                          for r in self.scales_for(res_m)], axis=1)
        return self.embed_patches(stack, res_m)

    def save(self, path: str | os.PathLike) -> None:
        checkpoints.save_checkpoint(path, kind=self.kind, config=self.config,
                                    state={"features": list(self.feature_names)})

    @classmethod
    def from_checkpoint(cls, ckpt: dict, name: str | None = None) -> GeomorphometryEmbedder:
        emb = cls(ckpt["config"], name=name)
        if set(ckpt["state"]) != {"features"} or list(ckpt["state"]["features"]) != emb.feature_names:
            raise ValueError(f"a geomorphometry checkpoint's state must be its feature names {emb.feature_names[:2]}"
                             f"..., got keys {sorted(ckpt['state'])}")
        return emb
