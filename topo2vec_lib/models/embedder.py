"""The embedding interface every method (topo2vec and the baselines) implements.

>>> model = load_embedder("models/topo2vec-4.pt")                            # topo2vec_lib.models
>>> vectors = model.embed(terrain, lon=[7.52], lat=[46.86], res_m=30)        # (1, 128) float32

:meth:`Embedder.embed` (lon/lat places) and :meth:`Embedder.embed_xy` (metres in the terrain CRS) are written
once, here: they sample ``17 x 17`` patches at ``res_m`` m/px (default: the embedder's ``res_m``, the probe
scale), normalise them per patch (``sampler.normalize``, the same for every method) and call the method's
``embed_patches`` in batches. A method that needs other inputs (geomorphometry: raw metres at several scales)
overrides only :meth:`Embedder.scales_for` and :meth:`Embedder.embed_batch_xy`.

Finite patches must give finite vectors: a NaN or infinite vector from a finite patch (corrupt or diverged
weights) is a :class:`NonFiniteEmbeddingError`, never returned.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from topo2vec_lib.sampler import PatchSampler, as_sampler, normalize

PATCH_SIZE = 17
NODATA_MODES = ("raise", "nan")


class NonFiniteEmbeddingError(ValueError):
    """A model returned NaN or infinite vectors for finite patches (its weights are corrupt or diverged)."""


def check_vectors(name: str, vectors: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``vectors`` unchanged if every row (of ``rows``, a boolean mask of rows whose patches were finite) is
    finite; else :class:`NonFiniteEmbeddingError` naming the model and the first bad row."""
    v = np.asarray(vectors)
    bad = ~np.isfinite(v).all(axis=tuple(range(1, v.ndim))) if v.ndim > 1 else ~np.isfinite(v)
    if rows is not None:
        bad &= np.asarray(rows, dtype=bool)
    if bad.any():
        i = int(np.argmax(bad))
        raise NonFiniteEmbeddingError(f"model {name!r} returned NaN or infinite vectors for {int(bad.sum())} of "
                                      f"{len(v)} finite patches (first: row {i}); its weights are corrupt or "
                                      f"diverged: retrain it or load another checkpoint")
    return vectors


def as_patch_batch(x) -> np.ndarray:
    """``(N, 17, 17)`` or ``(N, 1, 17, 17)`` -> float32 ``(N, 1, 17, 17)``; ValueError for other shapes or NaN."""
    a = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1:] != (1, PATCH_SIZE, PATCH_SIZE):
        raise ValueError(f"patches must have shape (N, 17, 17) or (N, 1, 17, 17), got {np.shape(x)}")
    if not np.isfinite(a).all():
        raise ValueError("patches contain NaN or inf; drop places whose patch touches nodata "
                         "(PatchSampler.valid_places) before embedding")
    return a


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    return int(batch_size)


class Embedder:
    """Base class: ``embed_patches`` is method specific; ``embed``/``embed_xy`` are shared.

    Attributes: ``kind`` (checkpoint kind), ``name``, ``dim`` (embedding size), ``res_m`` (default scale, m/px),
    ``min_range_m`` (normalisation floor, metres), ``config`` (the model's configuration as a dict).
    """

    kind: str = "embedder"
    name: str = "embedder"
    dim: int = 0
    res_m: float = 30.0
    min_range_m: float = 1.0
    config: dict[str, Any] = {}

    # ---------------------------------------------------------------- what a method provides
    def embed_patches(self, x) -> np.ndarray:
        """``x`` normalised ``(N, 1, 17, 17)`` or ``(N, 17, 17)`` -> ``(N, dim)`` float32."""
        raise NotImplementedError(f"{type(self).__name__} must implement embed_patches")

    def save(self, path: str | os.PathLike) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement save")

    def scales_for(self, res_m: float) -> list[float]:
        """Pixel sizes (m/px) sampled around a place when embedding at ``res_m`` (one: ``res_m`` itself)."""
        return [float(res_m)]

    def embed_batch_xy(self, sampler: PatchSampler, x: np.ndarray, y: np.ndarray, res_m: float,
                       allow_nodata: bool = False) -> np.ndarray:
        """One batch of places (metres in the sampler's CRS) -> ``(n, dim)`` float32; NaN rows where a patch
        touches nodata when ``allow_nodata`` (else :class:`~topo2vec_lib.sampler.NodataError`)."""
        raw = sampler.patches_xy(x, y, res_m, PATCH_SIZE, allow_nodata=allow_nodata)
        out = np.full((len(x), self.dim), np.nan, dtype=np.float32)
        ok = ~np.isnan(raw).any(axis=(1, 2))
        if ok.any():
            out[ok] = check_vectors(self.name, self.embed_patches(normalize(raw[ok], min_range_m=self.min_range_m)))
        return out

    # ---------------------------------------------------------------- shared
    def embed(self, sampler_or_terrain, lon, lat, res_m: float | None = None, batch_size: int = 4096,
              progress: bool = False) -> np.ndarray:
        """Embed the places ``(lon, lat)`` (EPSG:4326 degrees, ``(N,)``) at ``res_m`` m/px -> ``(N, dim)`` float32.

        ``sampler_or_terrain``: a :class:`~topo2vec_lib.sampler.PatchSampler` or a terrain DataArray (a sampler
        is built for it; pass a sampler when embedding repeatedly). Errors name places whose patch leaves the
        terrain or touches nodata.
        """
        smp = as_sampler(sampler_or_terrain)
        x, y = smp.to_xy(lon, lat)
        return self.embed_xy(smp, x, y, res_m, batch_size=batch_size, progress=progress)

    def embed_xy(self, sampler: PatchSampler, x, y, res_m: float | None = None, *, batch_size: int = 4096,
                 progress: bool = False, nodata: str = "raise") -> np.ndarray:
        """Embed places given in metres of the sampler's CRS (``(N,)`` each) -> ``(N, dim)`` float32.

        ``nodata="raise"`` (default): a patch touching nodata is an error naming the place; ``"nan"``: its
        row is NaN (region-wide embeddings). Places whose footprint leaves the terrain are always an error.
        """
        batch_size = _check_batch_size(batch_size)
        if nodata not in NODATA_MODES:
            raise ValueError(f"nodata={nodata!r}: expected one of {list(NODATA_MODES)}")
        res_m = self.res_m if res_m is None else sampler.check_res(res_m)
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        y = np.atleast_1d(np.asarray(y, dtype=np.float64))
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"x and y must be 1-D arrays of the same length, got {x.shape} and {y.shape}")
        out = np.empty((x.size, self.dim), dtype=np.float32)
        for s in tqdm(range(0, x.size, batch_size), desc=f"embed {self.name}", disable=not progress, unit="batch"):
            sl = slice(s, s + batch_size)
            out[sl] = self.embed_batch_xy(sampler, x[sl], y[sl], res_m, allow_nodata=nodata == "nan")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, res_m={self.res_m})"


class TorchEmbedder(Embedder):
    """``embed_patches`` of a torch network ``net`` through :meth:`net_embed`: eval mode, no grad, batches of
    ``batch`` patches, CPU float32 numpy out. ``to(device)`` moves the network."""

    batch = 4096
    net: torch.nn.Module
    device = torch.device("cpu")
    channels_last = False

    def net_embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement net_embed")

    @torch.no_grad()
    def embed_patches(self, x, batch_size: int | None = None) -> np.ndarray:
        """Normalised ``(N, 1, 17, 17)`` or ``(N, 17, 17)`` -> ``(N, dim)`` float32, ``batch_size`` at a time."""
        a = as_patch_batch(x)
        step = self.batch if batch_size is None else _check_batch_size(batch_size)
        self.net.eval()
        out = np.empty((len(a), self.dim), dtype=np.float32)
        for s in range(0, len(a), step):
            xb = torch.from_numpy(a[s:s + step]).to(self.device)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            out[s:s + step] = self.net_embed(xb).float().cpu().numpy()
        return check_vectors(self.name, out)

    def to(self, device: str | torch.device) -> TorchEmbedder:
        self.device = torch.device(device)
        self.net.to(self.device)
        return self
