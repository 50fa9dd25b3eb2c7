"""Similarity search over embedding fields: a similarity map, its best places, and a nearest-neighbour index.

An *embedding field* is what :func:`topo2vec_lib.regional.embed_region` writes: ``(y, x, D)`` float32 vectors
over the cells of a regular grid in a metric CRS (metres; ``x`` west->east, ``y`` north->south), NaN where the
cell has no valid patch. A Dataset (its ``embedding`` variable) or a DataArray whose third dimension is any name
(``feature``, ``band``, ...) is accepted; numpy- or Dask-backed.

- :func:`similarity_field`: cosine similarity of every cell to the mean query embedding (paper Exp. 4),
  computed block by block, so a field of millions of cells never holds ``cells x D`` float64 at once.
- :func:`top_k`: the k most similar cells with non-maximum suppression (matches at least
  ``min_separation_m`` metres apart), as a table with lon/lat; :func:`write_geojson` saves it.
- :class:`EmbeddingIndex`: k-nearest-neighbour search in embedding space, exact (brute force) or approximate
  (faiss IVF-Flat), with save/load; ``method="auto"`` picks exact for small sets. The choice of library and
  the default parameters come from ``benchmarks/search.py`` (``benchmarks/results/search.json``).

Standardisation (``standardize=``): ``"center"`` (default) subtracts the field's mean vector (over its valid
cells) before the cosine; ``"zscore"`` also divides each dimension by its standard deviation; ``"none"`` compares
raw vectors. Dimensions constant over the field are dropped in both. The encoder's outputs are non-negative
(ReLU), so raw vectors share a large common direction: two random cells of the study's test field have a raw
cosine of 0.41 on average, 0.02 after centring. Measured with topo2vec-4 on that field
(``benchmarks/results/search.json``, ``standardisation``), centring retrieved labelled terrain alike best:
precision@10 of the paper's Exp. 4 protocol 0.42 (centred) vs 0.41 (z-scores), 0.38 (raw cosine) and 0.37
(raw Euclidean, the paper's), centred ahead of the other three in each of 3 candidate sets; over the whole
grid (top-10 with 500 m suppression) the four were within noise of each other (0.16-0.17).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from topo2vec_lib.storage import atomic_path

SLAB_BYTES = 64 * 2**20          # numpy-backed fields are processed in row slabs of about this many bytes
INDEX_FORMAT, INDEX_VERSION = "topo2vec-embedding-index", 1


# ----------------------------------------------------------------------------------------------- fields

def embedding_array(field) -> xr.DataArray:
    """The ``(y, x, D)`` DataArray of a field: a Dataset's ``embedding`` variable (or its only variable with
    ``y``, ``x`` and one more dimension), or a DataArray with ``y``, ``x`` and one more dimension (any name).
    ValueError for anything else or for an empty field (no cell or ``D == 0``)."""
    if isinstance(field, xr.Dataset):
        if "embedding" in field.data_vars:
            field = field["embedding"]
        else:
            cand = [v for v in field.data_vars.values() if {"y", "x"} <= set(v.dims) and v.ndim == 3]
            if len(cand) != 1:
                raise ValueError(f"the Dataset has no 'embedding' variable and {len(cand)} (y, x, D) variables "
                                 f"{[c.name for c in cand]}; pass the embedding DataArray itself")
            field = cand[0]
    if not isinstance(field, xr.DataArray):
        raise ValueError(f"field must be an xarray Dataset or DataArray (y, x, D), got {type(field).__name__}")
    other = [d for d in field.dims if d not in ("y", "x")]
    if not {"y", "x"} <= set(field.dims) or len(other) != 1:
        raise ValueError(f"field dims {field.dims} must be ('y', 'x') plus one embedding dimension")
    arr = field.transpose("y", "x", other[0])
    if 0 in arr.shape:
        raise ValueError(f"the field is empty: shape {dict(zip(arr.dims, arr.shape))}")
    return arr


def _is_dask(a: xr.DataArray) -> bool:
    return a.chunks is not None


def _slabs(arr: xr.DataArray):
    """Row slabs ``(rows, (r, nx, D) float32 ndarray)`` of a ``(y, x, D)`` field that is not Dask-backed
    (numpy, or a lazily indexed file: only one slab is read at a time)."""
    ny, nx, d = arr.shape
    rows = max(1, SLAB_BYTES // max(1, nx * d * 4))
    for r0 in range(0, ny, rows):
        sl = slice(r0, r0 + rows)
        yield sl, np.asarray(arr.isel(y=sl).values, dtype=np.float32)


def _block_moments(block: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean (D,), M2 (D,)) float64 over the valid (all finite) vectors of a ``(..., D)`` block."""
    v = np.asarray(block, dtype=np.float64).reshape(-1, block.shape[-1])
    v = v[np.isfinite(v).all(axis=1)]
    if len(v) == 0:
        return 0, np.zeros(v.shape[1]), np.zeros(v.shape[1])
    m = v.mean(axis=0)
    return len(v), m, ((v - m) ** 2).sum(axis=0)


def _merge_moments(parts) -> tuple[int, Any, Any]:
    n, mean, m2 = 0, None, None
    for nb, mb, m2b in parts:          # Chan et al.'s pairwise update: exact and stable in float64
        if nb == 0:
            continue
        if n == 0:
            n, mean, m2 = nb, mb.copy(), m2b.copy()
            continue
        delta, tot = mb - mean, n + nb
        mean = mean + delta * nb / tot
        m2 = m2 + m2b + delta ** 2 * n * nb / tot
        n = tot
    return n, mean, m2


STANDARDIZE = ("center", "zscore", "none")


def check_standardize(standardize) -> str:
    """``standardize`` if it is one of :data:`STANDARDIZE`, else ValueError naming the valid ones."""
    if not isinstance(standardize, str) or standardize not in STANDARDIZE:
        raise ValueError(f"standardize = {standardize!r}: expected one of {list(STANDARDIZE)}")
    return standardize


@dataclass(frozen=True)
class Standardizer:
    """Per-dimension affine map ``(v - mean) * inv_std``: ``mode`` ``"center"`` (``inv_std`` 1) or ``"zscore"``
    (``1 / std``); ``inv_std`` is 0 for dimensions constant over the data it was fitted on (they carry no
    information). ``mean``, ``inv_std``: ``(D,)`` float32."""

    mean: np.ndarray
    inv_std: np.ndarray
    mode: str = "center"

    @classmethod
    def fit(cls, vectors: np.ndarray, mode: str = "center") -> Standardizer:
        """From ``(N, D)`` vectors (rows with NaN ignored)."""
        return cls.from_moments(*_merge_moments([_block_moments(np.asarray(vectors))]), mode=mode)

    @classmethod
    def from_field(cls, field, mode: str = "center") -> Standardizer:
        """From the valid cells of a field, block by block (Dask blocks, or numpy row slabs)."""
        arr = embedding_array(field)
        if _is_dask(arr):
            import dask

            blocks = arr.data.rechunk({2: -1}).to_delayed().ravel()
            parts = dask.compute(*[dask.delayed(_block_moments)(b) for b in blocks])
        else:
            parts = (_block_moments(s) for _, s in _slabs(arr))
        return cls.from_moments(*_merge_moments(parts), mode=mode)

    @classmethod
    def from_moments(cls, n: int, mean, m2, mode: str = "center") -> Standardizer:
        if check_standardize(mode) == "none":
            raise ValueError("standardize = 'none' needs no Standardizer")
        if n == 0:
            raise ValueError("the field is empty: no cell has a finite embedding (all NaN)")
        std = np.sqrt(np.asarray(m2) / n)
        live = std > 1e-6 * max(float(np.max(std)), 1e-30)
        inv = np.where(live, 1.0 / np.maximum(std, 1e-30), 0.0) if mode == "zscore" else live.astype(float)
        return cls(np.asarray(mean, np.float32), inv.astype(np.float32), mode)

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """``(N, D)`` float32 standardised ``(N, D)`` vectors."""
        return (np.asarray(vectors, np.float32) - self.mean) * self.inv_std


def check_queries(query_vectors, dim: int, what: str = "query_vectors") -> np.ndarray:
    """``(Q, D)`` float32 from ``(D,)`` or ``(Q, D)``; ValueError naming the bad shape or the NaN row."""
    q = np.asarray(query_vectors, dtype=np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[0] == 0 or q.shape[1] != dim:
        raise ValueError(f"{what} must have shape (D,) or (Q>0, D) with D = {dim} (the field's dimension), "
                         f"got {np.shape(query_vectors)}")
    bad = np.flatnonzero(~np.isfinite(q).all(axis=1))
    if bad.size:
        raise ValueError(f"{what} row {int(bad[0])} has NaN or inf values ({bad.size} such rows): a query place "
                         "whose patch leaves the terrain or touches nodata has no embedding")
    return q


def _cosine_block(block: np.ndarray, q_unit: np.ndarray, std: Standardizer | None) -> np.ndarray:
    """Cosine ``(ny, nx)`` float32 of a ``(ny, nx, D)`` block to the unit vector ``q_unit`` (in the
    standardised space when ``std``); NaN where the block has NaN; 0 where a vector is zero."""
    ny, nx, d = block.shape
    v = np.asarray(block, dtype=np.float32).reshape(-1, d)
    ok = np.isfinite(v).all(axis=1)
    v = np.where(np.asarray(ok)[:, None], v, 0.0).astype(np.float32, copy=False)
    if std is not None:
        v = std(v)
    norm = np.sqrt(np.einsum("ij,ij->i", v, v))
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(norm > 0, (v @ q_unit) / norm, 0.0)
    s = np.clip(s, -1.0, 1.0).astype(np.float32)
    s[~ok] = np.nan
    return s.reshape(ny, nx)


def similarity_field(field, query_vectors, *, standardize: str = "center",
                     standardizer: Standardizer | None = None) -> xr.DataArray:
    """Cosine similarity ``(y, x)`` float32 in [-1, 1] of every cell to the mean of the query embeddings.

    ``query_vectors``: ``(Q, D)`` or ``(D,)`` embeddings of the query places (e.g. :func:`vectors_at`); their
    mean is the query (paper Exp. 4). ``standardize``: ``"center"`` (default) first subtracts the field's mean
    vector over its valid cells from cells and query, ``"zscore"`` also divides by each dimension's standard
    deviation, ``"none"`` compares raw vectors (the module docstring says why centring is the default);
    ``standardizer`` reuses statistics already computed (e.g. of a bigger field) and overrides
    ``standardize``. NaN cells stay NaN; a cell whose (standardised) vector is zero gets 0. Numpy fields are
    computed in row slabs of about 64 MiB; Dask fields give a lazy Dask-backed result (the statistics are
    computed eagerly, one reduction pass). Coordinates ``x``, ``y`` (and ``lon``/``lat`` when the field has
    them) and attrs (``crs_wkt``, ...) are kept.
    """
    arr = embedding_array(field)
    ny, nx, d = arr.shape
    q = check_queries(query_vectors, d).astype(np.float64).mean(axis=0)
    mode = check_standardize(standardize) if standardizer is None else standardizer.mode
    std = standardizer if standardizer is not None else \
        (Standardizer.from_field(arr, mode) if mode != "none" else None)
    if std is not None:
        if std.mean.shape != (d,):
            raise ValueError(f"standardizer is for D = {std.mean.size}, the field has D = {d}")
        q = (q - std.mean) * std.inv_std
    qn = float(np.linalg.norm(q))
    if not qn > 0:
        raise ValueError("the mean query vector is zero" + (" after standardisation (it equals the field's mean)"
                         if std is not None else "") + ": cosine similarity is undefined")
    q_unit = (q / qn).astype(np.float32)
    if _is_dask(arr):
        import dask.array as da

        data = arr.data.rechunk({2: -1})
        sim = da.map_blocks(_cosine_block, data, q_unit, std, drop_axis=2, dtype=np.float32,
                            name="cosine-similarity")
    else:
        sim = np.empty((ny, nx), dtype=np.float32)
        for rows, slab in _slabs(arr):
            sim[rows] = _cosine_block(slab, q_unit, std)
    coords = {k: c for k, c in arr.coords.items() if set(c.dims) <= {"y", "x"}}
    out = xr.DataArray(sim, dims=("y", "x"), coords=coords, name="similarity",
                       attrs={**arr.attrs, **(field.attrs if isinstance(field, xr.Dataset) else {})})
    out.attrs.pop("description", None)
    out.attrs.update(standardize=mode, n_queries=int(np.asarray(query_vectors).reshape(-1, d).shape[0]),
                     description="cosine similarity to the mean query embedding; NaN: no valid embedding")
    return out


# ----------------------------------------------------------------------------------------------- places

def field_crs(field, crs=None) -> str:
    """The field's CRS as WKT/string: ``crs`` if given, else attrs ``crs_wkt``, else ``rio.crs``."""
    if crs is not None:
        return str(crs)
    attrs = dict(field.attrs)
    if isinstance(field, xr.Dataset) and "embedding" in field:
        attrs = {**field["embedding"].attrs, **attrs}
    if attrs.get("crs_wkt"):
        return str(attrs["crs_wkt"])
    try:
        import rioxarray  # noqa: F401

        if field.rio.crs is not None:
            return field.rio.crs.to_wkt()
    except Exception:   # noqa: BLE001 (no rioxarray or no CRS: the message below says what to pass)
        pass
    raise ValueError("the field has no CRS (attrs 'crs_wkt' or rio.crs); pass crs=...")


def _cell_of(coord: np.ndarray, v: np.ndarray, spacing_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest cell index of each value in ``v`` along a monotonic 1-D coordinate, and whether it lies within
    half a cell (``spacing_m``) of the outer cells."""
    c = np.asarray(coord, dtype=np.float64)
    rev = c.size > 1 and c[0] > c[-1]
    cs = c[::-1] if rev else c
    if cs.size > 1:
        j = np.clip(np.searchsorted(cs, v), 1, cs.size - 1)
        j = np.where(np.abs(v - cs[j - 1]) <= np.abs(v - cs[j]), j - 1, j)
    else:
        j = np.zeros(v.shape, dtype=int)
    half = 0.5 * spacing_m + 1e-6
    inside = (v >= cs[0] - half) & (v <= cs[-1] + half)
    return (cs.size - 1 - j if rev else j), inside


def _spacing(coord: np.ndarray, attrs) -> float:
    """Cell spacing (metres) of a grid axis: the median step, or attrs ``stride_m`` for a one-cell axis."""
    c = np.asarray(coord, dtype=np.float64)
    return float(np.median(np.abs(np.diff(c)))) if c.size > 1 else float(attrs.get("stride_m", 0.0))


def vectors_at(field, lon, lat, crs=None) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of the cells nearest the places ``lon, lat`` (degrees, EPSG:4326).

    ValueError naming the place when it lies outside the field (more than half a cell beyond its outer
    cells) or its cell has no valid embedding (NaN)."""
    from topo2vec_lib.grid import lonlat_to_xy

    arr = embedding_array(field)
    lon, lat = np.atleast_1d(np.asarray(lon, np.float64)), np.atleast_1d(np.asarray(lat, np.float64))
    if lon.shape != lat.shape or lon.ndim != 1 or lon.size == 0:
        raise ValueError(f"lon {lon.shape} and lat {lat.shape} must be 1-D of the same non-zero length")
    x, y = lonlat_to_xy(field_crs(field, crs), lon, lat)
    attrs = {**arr.attrs, **field.attrs}
    col, in_x = _cell_of(arr["x"].values, np.asarray(x), _spacing(arr["x"].values, attrs))
    row, in_y = _cell_of(arr["y"].values, np.asarray(y), _spacing(arr["y"].values, attrs))
    out = np.asarray(arr.isel(y=xr.DataArray(row, dims="p"), x=xr.DataArray(col, dims="p")).transpose("p", ...)
                     .values, dtype=np.float32)
    for i in range(lon.size):
        if not (in_x[i] and in_y[i]):
            raise ValueError(f"place lon={lon[i]:.6f}, lat={lat[i]:.6f} lies outside the field "
                             f"(x {x[i]:.0f} m, y {y[i]:.0f} m in its CRS)")
        if not np.isfinite(out[i]).all():
            raise ValueError(f"place lon={lon[i]:.6f}, lat={lat[i]:.6f} has no valid embedding (NaN cell: its "
                             "patch leaves the terrain or touches nodata)")
    return out


def _check_k(k, n_valid: int, what: str = "valid cells") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k = {k!r} must be a positive integer")
    if k > n_valid:
        raise ValueError(f"k = {k} is larger than the number of {what} ({n_valid})")
    return int(k)


def top_k(similarity: xr.DataArray, k: int, min_separation_m: float = 0.0, *, crs=None) -> pd.DataFrame:
    """The ``k`` most similar cells, greedily, with non-maximum suppression.

    ``similarity``: ``(y, x)`` DataArray (e.g. :func:`similarity_field`), coords ``x``, ``y`` in metres of a
    metric CRS, NaN cells never chosen. Cells are visited from the most similar down (ties: north-west first);
    a cell is taken unless it lies closer than ``min_separation_m`` metres (Euclidean in the CRS) to a cell
    already taken. Returns a table ``rank`` (1 = best), ``lon``, ``lat`` (degrees, EPSG:4326), ``x``, ``y``
    (metres), ``similarity``, ``row``, ``col`` (grid indices). Fewer than ``k`` rows (with a warning) when the
    separation leaves fewer cells. lon/lat come from the ``lon``/``lat`` coords when present, else from the
    CRS (``crs``, attrs ``crs_wkt`` or ``rio.crs``).
    """
    if not isinstance(similarity, xr.DataArray) or set(similarity.dims) != {"y", "x"}:
        raise ValueError(f"similarity must be a (y, x) DataArray, got "
                         f"{getattr(similarity, 'dims', type(similarity).__name__)}")
    try:
        sep = float(min_separation_m)
    except (TypeError, ValueError):
        raise ValueError(f"min_separation_m = {min_separation_m!r} must be a number of metres >= 0") from None
    if not (np.isfinite(sep) and sep >= 0):
        raise ValueError(f"min_separation_m = {min_separation_m!r} must be a finite number of metres >= 0")
    sim_da = similarity.transpose("y", "x")
    s = np.asarray(sim_da.values, dtype=np.float64)
    ny, nx = s.shape
    if s.size == 0:
        raise ValueError(f"the similarity field is empty: shape {s.shape}")
    flat = s.ravel()
    valid = np.flatnonzero(np.isfinite(flat))
    if valid.size == 0:
        raise ValueError("the similarity field is empty: no cell has a finite similarity (all NaN)")
    k = _check_k(k, valid.size)
    order = valid[np.argsort(-flat[valid], kind="stable")]
    xs, ys = np.asarray(sim_da["x"].values, np.float64), np.asarray(sim_da["y"].values, np.float64)
    found = _greedy_nms(order, k, sep, xs, ys)
    if len(found) < k:
        warnings.warn(f"only {len(found)} of k = {k} matches are {sep:g} m apart; returning {len(found)}",
                      stacklevel=2)
    picks = np.asarray(found, dtype=np.int64)
    row, col = picks // nx, picks % nx
    if "lon" in sim_da.coords and "lat" in sim_da.coords and sim_da["lon"].dims == ("y", "x"):
        lon = np.asarray(sim_da["lon"].values)[row, col].astype(np.float64)
        lat = np.asarray(sim_da["lat"].values)[row, col].astype(np.float64)
    else:
        from topo2vec_lib.grid import xy_to_lonlat

        lon, lat = xy_to_lonlat(field_crs(sim_da, crs), xs[col], ys[row])
    return pd.DataFrame({"rank": np.arange(1, len(picks) + 1), "lon": np.asarray(lon, np.float64),
                         "lat": np.asarray(lat, np.float64), "x": xs[col], "y": ys[row],
                         "similarity": flat[picks], "row": row, "col": col})


def _greedy_nms(order: np.ndarray, k: int, sep: float, xs: np.ndarray, ys: np.ndarray,
                probe: int = 4096) -> list[int]:
    """Flat indices of up to ``k`` cells taken from ``order`` (best first) so that no two lie closer than
    ``sep`` metres; each take blanks the disk of cells around it in a (ny, nx) mask."""
    nx = xs.size
    blocked = np.zeros(ys.size * nx, dtype=bool)
    blocked2d = blocked.reshape(ys.size, nx)
    picks: list[int] = []
    pos = 0
    while len(picks) < k and pos < order.size:
        free = np.flatnonzero(~blocked[order[pos:pos + probe]])
        if free.size == 0:
            pos += probe
            continue
        pos += int(free[0])
        c = int(order[pos])
        picks.append(c)
        pos += 1
        if sep > 0:
            r, q = divmod(c, nx)
            dy, dx = ys - ys[r], xs - xs[q]
            rows, cols = np.flatnonzero(np.abs(dy) < sep), np.flatnonzero(np.abs(dx) < sep)
            rs, cs = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
            blocked2d[rs, cs] |= dy[rs, None] ** 2 + dx[None, cs] ** 2 < sep ** 2
    return picks


def write_geojson(matches: pd.DataFrame, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write a :func:`top_k` table as a GeoJSON FeatureCollection of points (RFC 7946: lon, lat in
    EPSG:4326), every other column a property; atomically. ``metadata`` (JSON-able) goes in a top-level
    ``topo2vec`` member (RFC 7946 section 6.1 foreign member: GeoJSON readers ignore it). Returns the path."""
    missing = {"lon", "lat"} - set(matches.columns)
    if missing:
        raise ValueError(f"matches lacks columns {sorted(missing)} (expected a top_k table)")
    props = [c for c in matches.columns if c not in ("lon", "lat")]
    features = []
    for rec in matches.to_dict("records"):
        features.append({"type": "Feature",
                         "geometry": {"type": "Point", "coordinates": [float(rec["lon"]), float(rec["lat"])]},
                         "properties": {c: _json_scalar(rec[c]) for c in props}})
    path = Path(path)
    with atomic_path(path) as tmp:
        doc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
        if metadata is not None:
            doc["topo2vec"] = metadata
        tmp.write_text(json.dumps(doc) + "\n")
    return path


def _json_scalar(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


# ----------------------------------------------------------------------------------------------- index

METRICS = ("cosine", "l2")
METHODS = ("auto", "exact", "ivf")
# method="auto": exact search up to this many vectors. Measured (benchmarks/results/search.json, 2 shared cores):
# exact brute force costs ~15-22 ms per query over 1M cells, so <= ~1 ms up to 50k: as fast as ivf, and no build.
EXACT_MAX = 50_000
ADD_BLOCK = 65_536      # vectors standardised and added to faiss at a time (bounds the build's extra memory)


class EmbeddingIndex:
    """k-nearest-neighbour index over ``(N, D)`` embeddings.

    ``metric``: ``"cosine"`` (distance ``1 - cos``, in [0, 2]) or ``"l2"`` (Euclidean distance), both after
    ``standardize`` (``"center"``, ``"zscore"`` or ``"none"``, as :func:`similarity_field`; the statistics are
    fitted on the indexed vectors and applied to queries). ``method``: ``"exact"`` (brute force: blocked
    matrix products and top-k in torch), ``"ivf"`` (faiss ``IndexIVFFlat``: k-means cells, a query scans its
    ``nprobe`` nearest cells exactly) or ``"auto"`` (exact up to :data:`EXACT_MAX` vectors, else ivf).
    ivf was chosen over HNSW (hnswlib, faiss) and pynndescent by ``benchmarks/search.py``: all reach recall
    >= 0.95 at >= 10x the speed of exact search on 1M real cells; ivf builds about 20x faster (21 s vs
    395-483 s on 2 cores), is no bigger than the vectors, is deterministic for a seed on any number of
    threads, and installs as a wheel. Query results are ``(distances (Q, k) float32,
    indices (Q, k) int64)``, nearest first; indices are rows of the build vectors, or the ``ids`` given.
    """

    def __init__(self, *, method: str, metric: str, dim: int, ids: np.ndarray | None, std: Standardizer | None,
                 data: np.ndarray | None = None, faiss_index=None, params: dict | None = None):
        self.method, self.metric, self.dim = method, metric, int(dim)
        self.ids, self.std, self._data, self._faiss = ids, std, data, faiss_index
        self.params = dict(params or {})

    # -- construction
    @classmethod
    def build(cls, vectors, method: str = "auto", *, metric: str = "cosine", standardize: str = "center",
              ids=None, seed: int = 0, nlist: int | None = None, nprobe: int | None = None,
              threads: int | None = None) -> EmbeddingIndex:
        """Index ``(N, D)`` float vectors (no NaN: drop invalid cells first, or use :meth:`from_field`).

        ``ids``: ``(N,)`` int64 returned by :meth:`query` instead of row numbers. ivf only: ``nlist`` k-means
        cells (default ``sqrt(N)``), ``nprobe`` cells scanned per query (default :func:`default_nprobe`),
        ``seed`` of the k-means and its training sample (same seed and data, same index), ``threads``: faiss's
        OpenMP threads (a process-wide setting; default: leave it).
        """
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] == 0:
            raise ValueError(f"vectors must be a non-empty (N, D) array, got shape {np.shape(vectors)}")
        bad = np.flatnonzero(~np.isfinite(v).all(axis=1))
        if bad.size:
            raise ValueError(f"vectors row {int(bad[0])} has NaN or inf values ({bad.size} such rows); drop "
                             "invalid cells first (EmbeddingIndex.from_field does)")
        if metric not in METRICS:
            raise ValueError(f"metric = {metric!r}: expected one of {list(METRICS)}")
        if method not in METHODS:
            raise ValueError(f"method = {method!r}: expected one of {list(METHODS)}")
        mode = check_standardize(standardize)
        if ids is not None:
            ids = np.asarray(ids, dtype=np.int64).ravel()
            if ids.shape != (v.shape[0],):
                raise ValueError(f"ids has shape {np.shape(ids)}, expected ({v.shape[0]},) (one per vector)")
        if method == "auto":
            method = "exact" if v.shape[0] <= EXACT_MAX else "ivf"
        std = Standardizer.fit(v, mode) if mode != "none" else None
        kw = dict(method=method, metric=metric, dim=v.shape[1], ids=ids, std=std)
        if method == "exact":
            return cls(**kw, data=_space(v, std, metric))
        faiss_index, params = _build_ivf(v, std, metric, seed=seed, nlist=nlist, nprobe=nprobe, threads=threads)
        return cls(**kw, faiss_index=faiss_index, params=params)

    @classmethod
    def from_field(cls, field, method: str = "auto", **kw) -> EmbeddingIndex:
        """Index the valid cells of a field; :meth:`query` then returns flat cell indices
        (``row * nx + col``; :func:`cells_table` turns them into places)."""
        arr = embedding_array(field)
        ny, nx, d = arr.shape
        v = np.asarray(arr.values, dtype=np.float32).reshape(-1, d)
        ok = np.flatnonzero(np.isfinite(v).all(axis=1))
        if ok.size == 0:
            raise ValueError("the field is empty: no cell has a finite embedding (all NaN)")
        return cls.build(v[ok], method, ids=ok.astype(np.int64), **kw)

    def __len__(self) -> int:
        return int(self._data.shape[0] if self._data is not None else self._faiss.ntotal)

    # -- search
    def query(self, vectors, k: int, *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest indexed vectors of each query ``(Q, D)`` (or ``(D,)``): ``(distances (Q, k)
        float32, indices (Q, k) int64)``, nearest first. ``nprobe`` overrides the ivf default."""
        q = check_queries(vectors, self.dim, "query vectors")
        k = _check_k(k, len(self), "indexed vectors")
        qs = _space(q, self.std, self.metric)
        if self.method == "exact":
            assert self._data is not None   # exact indexes keep their vectors
            dist, idx = _exact_knn(self._data, qs, k, self.metric)
        else:
            nprobe = self.params["nprobe"] if nprobe is None else nprobe
            if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or \
                    not 1 <= nprobe <= self._faiss.nlist:
                raise ValueError(f"nprobe = {nprobe} must be in 1..{self._faiss.nlist} (nlist)")
            self._faiss.nprobe = int(nprobe)
            sim, idx = self._faiss.search(qs, k)
            if (idx < 0).any():     # too few vectors in the scanned cells: scan them all
                self._faiss.nprobe = self._faiss.nlist
                sim, idx = self._faiss.search(qs, k)
            dist = (1.0 - sim) if self.metric == "cosine" else np.sqrt(np.maximum(sim, 0.0))
        dist = np.asarray(dist, dtype=np.float32)
        idx = np.asarray(idx, dtype=np.int64)
        return dist, (self.ids[idx] if self.ids is not None else idx)

    # -- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to the directory ``path`` (``meta.json``, ``arrays.npz``, ``faiss.index`` for ivf),
        atomically (an interrupted save leaves any previous index untouched). Returns the path."""
        meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "method": self.method, "metric": self.metric,
                "dim": self.dim, "size": len(self), "standardize": self.std.mode if self.std is not None else "none",
                "params": self.params}
        arrays = {}
        if self.ids is not None:
            arrays["ids"] = self.ids
        if self.std is not None:
            arrays["mean"], arrays["inv_std"] = self.std.mean, self.std.inv_std
        if self._data is not None:
            arrays["data"] = self._data
        path = Path(path)
        with atomic_path(path, is_dir=True) as tmp:
            tmp.mkdir()
            np.savez(tmp / "arrays.npz", **arrays)  # type: ignore[arg-type]
            if self._faiss is not None:
                import faiss

                faiss.write_index(self._faiss, str(tmp / "faiss.index"))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingIndex:
        """Read an index written by :meth:`save`; ValueError if ``path`` is not one."""
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not an embedding index directory (no readable meta.json: {e})") from None
        if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
            raise ValueError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}, expected "
                             f"{INDEX_FORMAT!r} version {INDEX_VERSION}")
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        mode = meta["standardize"]
        std = Standardizer(arrays["mean"], arrays["inv_std"], mode) if mode != "none" else None
        faiss_index = None
        if meta["method"] == "ivf":
            import faiss

            faiss_index = faiss.read_index(str(path / "faiss.index"))
        return cls(method=meta["method"], metric=meta["metric"], dim=meta["dim"], ids=arrays.get("ids"), std=std,
                   data=arrays.get("data"), faiss_index=faiss_index, params=meta.get("params"))


def _space(v: np.ndarray, std: Standardizer | None, metric: str) -> np.ndarray:
    """Vectors ``(N, D)`` float32 in the search space: standardised when ``std``, unit length for cosine
    (zero vectors stay zero)."""
    out = std(v) if std is not None else np.array(v, dtype=np.float32)
    if metric == "cosine":
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)
    return np.ascontiguousarray(out, dtype=np.float32)


def _exact_knn(data: np.ndarray, q: np.ndarray, k: int, metric: str, q_batch: int = 1024, block: int = 16_384):
    """Brute-force k-NN of ``q (Q, D)`` in ``data (N, D)`` (both in the search space): blocked matrix products
    and top-k in torch (multi-threaded), memory ``q_batch x block`` float32 (64 MiB) at a time.
    Returns (distances (Q, k) as :class:`EmbeddingIndex`, indices (Q, k) int64), nearest first."""
    import torch

    x_all = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    out_s, out_i = [], []
    for q0 in range(0, len(q), q_batch):
        qt = torch.from_numpy(np.ascontiguousarray(q[q0:q0 + q_batch], dtype=np.float32))
        best_s = torch.empty((len(qt), 0))
        best_i = torch.empty((len(qt), 0), dtype=torch.int64)
        for b0 in range(0, len(x_all), block):
            x = x_all[b0:b0 + block]
            s = qt @ x.T                                    # larger is nearer
            if metric == "l2":                              # -|q - x|^2 + |q|^2
                s = 2 * s - (x * x).sum(dim=1)[None]
            v, i = s.topk(min(k, s.shape[1]), dim=1)
            v, j = torch.cat([best_s, v], dim=1).topk(min(k, best_s.shape[1] + v.shape[1]), dim=1)
            best_s, best_i = v, torch.cat([best_i, i + b0], dim=1).gather(1, j)
        out_s.append(best_s.numpy())
        out_i.append(best_i.numpy())
    sims, idx = np.concatenate(out_s), np.concatenate(out_i)
    if metric == "cosine":
        dist = 1.0 - sims
    else:
        dist = np.sqrt(np.maximum(np.einsum("ij,ij->i", q, q)[:, None] - sims, 0.0))
    return dist.astype(np.float32), idx.astype(np.int64)


def default_nprobe(nlist: int) -> int:
    """Ivf cells scanned per query by default: ``max(8, nlist / 128)``, at most ``nlist``. Measured on 1M real
    cells (nlist 1011): nprobe 8 gave recall@10 0.996 and recall@50 0.989 at ~1 ms per query (2 cores, 15-21x
    faster than exact; nprobe 4: 0.97 / 0.94); the ``nlist / 128`` term keeps the scanned fraction for bigger
    fields (an extrapolation, not measured)."""
    return int(max(1, min(nlist, max(8, int(np.ceil(nlist / 128))))))


def _build_ivf(v: np.ndarray, std: Standardizer | None, metric: str, *, seed: int, nlist, nprobe, threads):
    """A trained and filled faiss IndexIVFFlat over ``_space(v)``: k-means on a seeded sample of 64 vectors per
    cell, then the vectors added in blocks of :data:`ADD_BLOCK`. Returns (index, params)."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(int(threads))
    n, d = v.shape
    nlist = max(1, min(n // 39, round(np.sqrt(n)))) if nlist is None else nlist   # faiss: >= 39 points per cell
    if isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or not 1 <= nlist <= n:
        raise ValueError(f"nlist = {nlist} must be in 1..{n} (the number of vectors)")
    nlist = int(nlist)
    nprobe = default_nprobe(nlist) if nprobe is None else nprobe
    if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or not 1 <= nprobe <= nlist:
        raise ValueError(f"nprobe = {nprobe} must be in 1..{nlist} (nlist)")
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    quantizer = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss_metric)
    index.cp.seed = int(seed)
    sample = np.arange(n)
    if n > 64 * nlist:
        sample = np.sort(np.random.default_rng(seed).choice(n, 64 * nlist, replace=False))
    index.train(_space(v[sample], std, metric))
    for b0 in range(0, n, ADD_BLOCK):
        index.add(_space(v[b0:b0 + ADD_BLOCK], std, metric))
    nlist, nprobe = int(nlist), int(nprobe)
    return index, {"nlist": nlist, "nprobe": nprobe, "seed": int(seed), "train_points": int(sample.size)}


def cells_table(field, cells, distances=None, crs=None) -> pd.DataFrame:
    """Places of flat cell indices ``cells`` (``row * nx + col``, e.g. from :meth:`EmbeddingIndex.query` on an
    index made by :meth:`EmbeddingIndex.from_field`): ``rank, lon, lat, x, y, row, col`` (+ ``distance``)."""
    from topo2vec_lib.grid import xy_to_lonlat

    arr = embedding_array(field)
    ny, nx, _ = arr.shape
    cells = np.asarray(cells, dtype=np.int64).ravel()
    if ((cells < 0) | (cells >= ny * nx)).any():
        raise ValueError(f"cell indices must be in 0..{ny * nx - 1}, got {cells.min()}..{cells.max()}")
    row, col = cells // nx, cells % nx
    xs, ys = arr["x"].values[col], arr["y"].values[row]
    lon, lat = xy_to_lonlat(field_crs(field, crs), xs, ys)
    out = pd.DataFrame({"rank": np.arange(1, cells.size + 1), "lon": lon, "lat": lat, "x": xs, "y": ys,
                        "row": row, "col": col})
    if distances is not None:
        out["distance"] = np.asarray(distances, np.float64).ravel()
    return out
