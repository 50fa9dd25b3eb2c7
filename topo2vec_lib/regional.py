"""Region-wide embeddings: every place of a regular grid, embedded block by block with Dask, to chunked zarr.

The grid is laid in the terrain's metric CRS (metres, x west->east, y north->south). Each Dask block of
``chunk x chunk`` places samples its own patches from a :class:`~topo2vec_lib.sampler.PatchSampler` and embeds
them, so memory stays bounded by one block (times the number of workers) whatever the region size, and the same
graph runs on the threaded scheduler or on a ``dask.distributed`` cluster (the sampler and the embedder enter
the graph once, as delayed objects). Places whose patch leaves the terrain or touches nodata get NaN vectors.
"""
from __future__ import annotations

import math
import os

import dask
import dask.array as da
import numpy as np
import xarray as xr

from topo2vec_lib.grid import xy_to_lonlat
from topo2vec_lib.models.embedder import PATCH_SIZE, Embedder
from topo2vec_lib.sampler import PatchSampler, as_sampler
from topo2vec_lib.storage import atomic_path


def grid_xy(bounds_xy, stride_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Place centres ``x (nx,)`` increasing and ``y (ny,)`` decreasing (metres), ``stride_m`` apart, centred
    in ``bounds_xy = (left, bottom, right, top)``. ValueError if the box is empty or holds no place."""
    try:
        left, bottom, right, top = (float(v) for v in bounds_xy)
    except (TypeError, ValueError):
        raise ValueError(f"bounds_xy {bounds_xy!r} must be (left, bottom, right, top) in metres") from None
    stride_m = float(stride_m)
    if not (np.isfinite(stride_m) and stride_m > 0):
        raise ValueError(f"stride_m = {stride_m!r} must be a positive number of metres")
    if not (right > left and top > bottom):
        raise ValueError(f"bounds_xy {bounds_xy!r} is empty: need left < right and bottom < top (metres)")
    nx = int(math.floor((right - left) / stride_m + 1e-9))
    ny = int(math.floor((top - bottom) / stride_m + 1e-9))
    if nx < 1 or ny < 1:
        raise ValueError(f"bounds_xy {bounds_xy!r} ({right - left:g} x {top - bottom:g} m) holds no place at "
                         f"stride_m = {stride_m:g}; use a smaller stride or a bigger box")
    x0 = left + (right - left - (nx - 1) * stride_m) / 2
    y0 = top - (top - bottom - (ny - 1) * stride_m) / 2
    return x0 + stride_m * np.arange(nx), y0 - stride_m * np.arange(ny)


def embed_xy(embedder: Embedder, sampler: PatchSampler, x, y, res_m: float, batch_size: int = 4096) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of places x, y (metres in the sampler's CRS) at ``res_m`` m/px.

    Rows of places whose patch (at any scale the embedder samples, :meth:`Embedder.scales_for`) leaves the
    terrain or touches nodata are NaN (no error).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    out = np.full((x.size, int(embedder.dim)), np.nan, dtype=np.float32)
    coarsest = max(embedder.scales_for(float(res_m)))
    # the sampler's own footprint rule (with its edge tolerance), so no place it accepts is dropped here
    inside = np.flatnonzero(sampler.inside_xy(x, y, coarsest, PATCH_SIZE))
    if inside.size:
        out[inside] = embedder.embed_xy(sampler, x[inside], y[inside], res_m, batch_size=batch_size, nodata="nan")
    return out


def _embed_block(yy: np.ndarray, xx: np.ndarray, *, embedder, sampler, res_m, batch_size) -> np.ndarray:
    vec = embed_xy(embedder, sampler, xx, yy, res_m, batch_size)
    return vec.reshape(yy.shape + (vec.shape[1],))


def _lonlat_block(yy: np.ndarray, xx: np.ndarray, *, crs_wkt: str, which: int) -> np.ndarray:
    lon, lat = xy_to_lonlat(crs_wkt, xx, yy)
    return np.asarray((lon, lat)[which], dtype=np.float64)


def embed_region(embedder, terrain, res_m: float, stride_m: float, bounds_xy=None, *, chunk: int = 64,
                 batch_size: int = 4096, path: str | os.PathLike | None = None) -> xr.Dataset:
    """Embed every place of a regular grid at ``res_m`` m/px, block by block with Dask.

    ``terrain``: terrain DataArray or PatchSampler; ``bounds_xy``: (left, bottom, right, top) metres in the
    terrain CRS (default: the whole terrain); ``stride_m``: grid spacing in metres; ``chunk``: places per block
    side (a block holds ``chunk**2`` patches of 17 x 17 float32 at a time).

    Returns a Dataset with ``embedding (y, x, feature)`` float32 (NaN where the patch leaves the terrain or
    touches nodata), coords ``x (nx,)``, ``y (ny,)`` (metres, pixel centres), ``lon``/``lat (y, x)`` (degrees)
    and attrs ``res_m``, ``stride_m``, ``size``, ``crs_wkt``, ``embedder``. Without ``path`` it is lazy
    (Dask-backed; call ``.compute()`` or ``.to_zarr``); with ``path`` it is written to a chunked zarr store
    atomically and returned opened from there. Runs on whatever Dask scheduler is active (e.g. a
    ``dask.distributed.Client``).
    """
    sampler = as_sampler(terrain)
    res_m = float(sampler.check_res(res_m))
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk = {chunk!r} must be a positive integer number of places per block side")
    if not isinstance(embedder, Embedder):
        raise ValueError(f"embedder {embedder!r} must be a topo2vec_lib.models.Embedder")
    x, y = grid_xy(sampler.bounds_xy if bounds_xy is None else bounds_xy, stride_m)
    dim = int(embedder.dim)
    yy, xx = da.meshgrid(da.from_array(y, chunks=chunk), da.from_array(x, chunks=chunk), indexing="ij")
    emb = da.map_blocks(_embed_block, yy, xx, dtype=np.float32, new_axis=2,
                        chunks=yy.chunks + ((dim,),), name=f"embed-{getattr(embedder, 'name', 'embedder')}",
                        embedder=dask.delayed(embedder, pure=True), sampler=dask.delayed(sampler, pure=True),
                        res_m=res_m, batch_size=int(batch_size))
    wkt = sampler.crs.to_wkt()
    lon = da.map_blocks(_lonlat_block, yy, xx, dtype=np.float64, crs_wkt=wkt, which=0)
    lat = da.map_blocks(_lonlat_block, yy, xx, dtype=np.float64, crs_wkt=wkt, which=1)
    ds = xr.Dataset(
        {"embedding": (("y", "x", "feature"), emb)},
        coords={"y": y, "x": x, "feature": np.arange(dim), "lon": (("y", "x"), lon), "lat": (("y", "x"), lat)},
        attrs={"res_m": res_m, "stride_m": float(stride_m), "size": PATCH_SIZE, "crs_wkt": wkt,
               "embedder": str(getattr(embedder, "name", type(embedder).__name__)),
               "region": str(sampler.region)})
    ds["embedding"].attrs["description"] = "embedding of the size x size patch at res_m m/px; NaN: no valid patch"
    if path is None:
        return ds
    with atomic_path(path, is_dir=True) as tmp:
        ds.to_zarr(tmp, mode="w", consolidated=False)
    return open_region_embedding(path)


def open_region_embedding(path: str | os.PathLike) -> xr.Dataset:
    """Open a region embedding written by :func:`embed_region` (lazy, Dask-backed)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"region embedding store {path} does not exist (write it with embed_region(path=...))")
    return xr.open_zarr(path, consolidated=False)


def valid_mask(ds: xr.Dataset) -> xr.DataArray:
    """``(y, x)`` bool: places with a finite embedding."""
    return ds["embedding"].notnull().all("feature")
