"""Terrain sources -> one georeferenced elevation grid (docs/architecture.md, "Terrain").

A terrain is an ``xarray.DataArray`` ``(y, x)`` of float32 metres, NaN = nodata/sea, pixel-centre
coordinates in metres of a metric CRS (default EPSG:3035), north-up, with ``rio`` CRS and transform set and
attrs ``res_m``, ``region``, ``region_lonlat``, ``source``. Sources: ``synthetic`` (the embedded default,
:mod:`topo2vec_lib.synthetic`), ``geotiff`` (any local GeoTIFF/VRT, reprojected), ``copernicus``
(:mod:`topo2vec_lib.copernicus`). Terrains are stored as zarr (or Cloud-Optimized GeoTIFF).

Nothing is silent: a window without a single valid height is a :class:`NodataWindowError`; a GeoTIFF that is
truncated, rotated, smaller than 2 x 2 pixels or without a CRS is a ValueError naming the file; heights no DEM
can hold (undeclared nodata sentinels such as -32768, -32767 or -9999; see :func:`sentinel_mask`) become NaN
with a :class:`NodataSentinelWarning`. A zarr store carries a manifest (``topo2vec_manifest.json``: size and
SHA-256 of every file) that :func:`open_terrain` verifies, so a deleted, truncated or altered chunk is a
:class:`TerrainStoreError` naming the store and the chunk instead of NaN or a codec error.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from .grid import (
    check_crs,
    check_positive,
    check_seed,
    grid_coords,
    make_dataarray,
    region_lonlat_of,
    region_window,
)
from .storage import atomic_path

SOURCES = ("synthetic", "geotiff", "copernicus")
_ATTRS = ("res_m", "region", "region_lonlat", "source", "units")
MIN_PLAUSIBLE_M, MAX_PLAUSIBLE_M = -11_000.0, 9_000.0
"""Heights outside this range are not terrain (the Challenger Deep is -10,935 m, Everest 8,849 m)."""
SENTINEL_VALUES = (-9999.0,)
"""Exact values taken as undeclared nodata although in range (GIS software's common sentinel)."""
MANIFEST_NAME = "topo2vec_manifest.json"
"""The file in a zarr terrain store listing the size and SHA-256 of every other file of the store."""


class NodataWindowError(ValueError):
    """A terrain window has no valid height at all (100% nodata); the message names the source and window."""


class TerrainStoreError(ValueError):
    """A stored terrain is unreadable, incomplete or altered; the message names the store (and the chunk)."""


class NodataSentinelWarning(UserWarning):
    """Heights no DEM can hold (undeclared nodata sentinels) were read as nodata (NaN)."""


def sentinel_mask(values) -> np.ndarray:
    """Boolean mask of heights taken as undeclared nodata: outside [MIN_PLAUSIBLE_M, MAX_PLAUSIBLE_M]
    (-32768, -32767, -3.4e38, 32767, ...) or exactly one of :data:`SENTINEL_VALUES` (-9999). NaN is not
    flagged (it already is nodata)."""
    v = np.asarray(values)
    mask = (v < MIN_PLAUSIBLE_M) | (v > MAX_PLAUSIBLE_M)
    for s in SENTINEL_VALUES:
        mask |= v == s
    return mask


def check_has_data(da: xr.DataArray, what: str) -> xr.DataArray:
    """``da`` unchanged if it holds at least one finite height and no infinite one; else ValueError."""
    values = np.asarray(da.values)
    finite = np.isfinite(values)
    if not finite.any():
        raise NodataWindowError(f"{what} is 100% nodata ({values.shape[0]} x {values.shape[1]} px, no valid "
                                f"height at all): the source does not cover it with data (wrong file, window or "
                                f"lon/lat order?)")
    n_inf = int(np.isinf(values).sum())
    if n_inf:
        raise ValueError(f"{what} holds {n_inf} infinite height(s); nodata must be NaN")
    return da


# ---------------------------------------------------------------- sources
def load_terrain(source: str, region: str, *, center_lonlat, size_km, res_m: float = 30,
                 crs: str = "EPSG:3035", seed: int = 0, geotiff_path=None, cache_dir="data/raw",
                 region_lonlat=None, polygon=None) -> xr.DataArray:
    """The study terrain of ``region`` in memory: a ``size_km`` window (a number: square; ``[width_km,
    height_km]``) at ``res_m`` around ``center_lonlat``. For regions of any size use :func:`build_terrain`.

    ``source``: ``"synthetic"`` (deterministic from ``seed`` and the place: a function of absolute position),
    ``"geotiff"`` (the local file ``geotiff_path`` reprojected into the window) or ``"copernicus"`` (GLO-30
    tiles cached under ``cache_dir``). The window must lie inside the region's lon/lat box (``region_lonlat``,
    default the paper's polygon of ``region``) and, when given, inside ``polygon`` (lon/lat ring).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown terrain source {source!r}: valid sources are {list(SOURCES)}")
    res_m = check_positive("res_m", res_m)
    crs = check_crs(crs)
    box = region_lonlat_of(region, region_lonlat)
    bounds = region_window(region, center_lonlat, size_km, res_m, crs, region_lonlat=box, polygon=polygon)
    if source == "synthetic":
        from .synthetic import synthetic_terrain

        da = synthetic_terrain(region, center_lonlat, size_km, res_m=res_m, crs=crs, seed=check_seed(seed),
                               region_lonlat=box)
    elif source == "geotiff":
        if not geotiff_path:
            raise ValueError("source='geotiff' needs geotiff_path (a local GeoTIFF or VRT file)")
        da = geotiff_terrain(geotiff_path, bounds, crs, res_m)
    else:
        from .copernicus import copernicus_terrain

        da = copernicus_terrain(bounds, crs=crs, res_m=res_m, cache_dir=cache_dir)
    check_has_data(da, f"the {source} terrain window of region {region!r} ({size_km} km around "
                       f"{list(center_lonlat)}, bounds {[round(b, 1) for b in bounds]} m in {crs})")
    da = da.astype(np.float32)
    da.name = "elevation"
    da.attrs.update({"res_m": float(res_m), "region": str(region), "region_lonlat": list(box),
                     "source": source, "units": "m"})
    return da


def geotiff_terrain(path, bounds_xy, crs: str, res_m: float, resampling: str | None = None) -> xr.DataArray:
    """A local GeoTIFF/VRT (any CRS and resolution) reprojected onto the window ``bounds_xy`` at ``res_m``.

    Resampling is ``average`` when the source pixels are finer than ``res_m`` and ``bilinear`` otherwise (or
    ``resampling``, decided once for a whole window that is read tile by tile).
    Returns float32 metres with NaN for the file's nodata and for cells the file does not cover. The file must
    read (a truncated file is reported as such, not as "no CRS"), have one band of at least 2 x 2 pixels, a
    north-up (not rotated) transform and a CRS. Source pixels that no DEM can hold (:func:`sentinel_mask`:
    undeclared nodata such as -32768 or -9999) become NaN before resampling, with a
    :class:`NodataSentinelWarning`.
    """
    import rasterio
    import rioxarray
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioIOError
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    from .download import validate_raster

    res_m = check_positive("res_m", res_m)
    crs = check_crs(crs)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GeoTIFF {path} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            validate_raster(path)
            with rasterio.open(path) as ds:
                shape, count, transform = (ds.height, ds.width), ds.count, ds.transform
        except (RasterioIOError, rasterio.errors.RasterioError, ValueError) as err:
            raise ValueError(f"{path} is not a readable GeoTIFF/VRT: truncated, corrupt or not a raster "
                             f"({type(err).__name__}: {err})") from None
    if count != 1:
        raise ValueError(f"{path} has {count} bands; an elevation GeoTIFF has exactly one")
    if min(shape) < 2:
        raise ValueError(f"{path} is {shape[0]} x {shape[1]} pixels; a DEM needs at least 2 x 2")
    if transform.b != 0 or transform.d != 0:
        raise ValueError(f"{path} has a rotated or sheared transform {tuple(transform)[:6]}; warp it north-up "
                         f"first (e.g. gdalwarp {path} north_up.tif)")
    try:
        src = rioxarray.open_rasterio(path, masked=True)
    except (RasterioIOError, rasterio.errors.RasterioError) as err:
        raise ValueError(f"{path} is not a readable GeoTIFF/VRT: {err}") from err
    if isinstance(src, list) or not isinstance(src, xr.DataArray):
        raise ValueError(f"{path} holds several subdatasets; give one GeoTIFF/VRT with one elevation band")
    if src.rio.crs is None:
        raise ValueError(f"{path} has no CRS; write one first (e.g. gdal_edit.py -a_srs EPSG:4326 {path})")
    if "band" in src.dims:
        src = src.squeeze("band", drop=True)
    xmin, ymin, xmax, ymax = bounds_xy
    x, y = grid_coords(bounds_xy, res_m)
    # source pixels across the window: decides averaging (finer source) vs bilinear (coarser source)
    sb = transform_bounds(crs, src.rio.crs, xmin, ymin, xmax, ymax, densify_pts=21)
    src_res = [abs(v) for v in src.rio.resolution()]
    src_px = max((sb[2] - sb[0]) / src_res[0], (sb[3] - sb[1]) / src_res[1])
    finer = src_px > max(x.size, y.size)
    if resampling is None:
        resampling = "average" if finer else "bilinear"
    if resampling not in ("average", "bilinear"):
        raise ValueError(f"resampling={resampling!r}: expected 'average' or 'bilinear'")
    method = Resampling.average if resampling == "average" else Resampling.bilinear
    # clip first (with a margin) so a large file is not reprojected whole
    margin_x, margin_y = 3 * src_res[0], 3 * src_res[1]
    try:
        src = src.rio.clip_box(sb[0] - margin_x, sb[1] - margin_y, sb[2] + margin_x, sb[3] + margin_y)
    except rioxarray.exceptions.NoDataInBounds as err:
        raise ValueError(f"{path} does not cover the window {tuple(bounds_xy)} ({crs})") from err
    try:
        src = src.astype(np.float64)
        sentinel = sentinel_mask(src.values)
        if sentinel.any():
            values = np.unique(src.values[sentinel])
            warnings.warn(f"{path}: {int(sentinel.sum())} source pixel(s) under the window hold heights no DEM can "
                          f"hold ({', '.join(f'{v:g}' for v in values[:5])}): read as nodata (NaN). Declare the "
                          f"file's nodata (gdal_edit.py -a_nodata <value> {path}) to silence this",
                          NodataSentinelWarning, stacklevel=3)
            src = src.where(~sentinel)
        src = src.rio.write_nodata(np.nan, encoded=False)
        out = src.rio.reproject(crs, shape=(y.size, x.size), transform=from_origin(xmin, ymax, res_m, res_m),
                                resampling=method, nodata=np.nan)
    except (RasterioIOError, rasterio.errors.RasterioError) as err:
        raise ValueError(f"{path} could not be read (truncated or corrupt?): {err}") from err
    values = np.asarray(out.values, dtype=np.float32)
    return make_dataarray(values, bounds_xy, res_m, crs, region="", region_lonlat=(-180, -90, 180, 90),
                          source="geotiff")


# ---------------------------------------------------------------- regions of any size, tile by tile
def geotiff_resampling(path, bounds_xy, crs: str, res_m: float) -> str:
    """``average`` when ``path``'s pixels are finer than ``res_m`` over the window, else ``bilinear`` (decided once
    for a whole window, so that its tiles resample alike)."""
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(path) as ds:
        sb = transform_bounds(crs, ds.crs, *bounds_xy, densify_pts=21)
        src_px = max((sb[2] - sb[0]) / abs(ds.res[0]), (sb[3] - sb[1]) / abs(ds.res[1]))
    nx, ny = (bounds_xy[2] - bounds_xy[0]) / res_m, (bounds_xy[3] - bounds_xy[1]) / res_m
    return "average" if src_px > max(nx, ny) else "bilinear"


def _scratch_reader(npy: str, origin: tuple[int, int]):
    """A reader ``(rows, cols) -> array`` of a scratch ``.npy`` whose element [0, 0] is at (row, col) ``origin``."""
    from .tiling import NpyArray

    arr = NpyArray(npy)

    def read(rows, cols):
        a, b = rows[0] - origin[0], rows[1] - origin[0]
        c, d = cols[0] - origin[1], cols[1] - origin[1]
        if a < 0 or c < 0 or b > arr.shape[0] or d > arr.shape[1]:
            return None
        return arr.read(a, b, c, d, dtype=arr.dtype)
    return read


def _unfilled_task(task, unfilled_npy, karst_npy, origin, seed, res_m, carve_npy, carve_origin, params):
    """Pass 1 of the synthetic world: the unfilled heights of rows/cols ``task`` into the scratch files."""
    from .synthetic import world
    from .tiling import NpyArray

    w = world(seed, res_m, *([params] if params is not None else []))
    rows, cols = (task[0], task[1]), (task[2], task[3])
    read = _scratch_reader(carve_npy, carve_origin)

    def carve(a, b, c, d):
        got = read((a, b), (c, d))
        return w.carve_field((a, b), (c, d)) if got is None else got
    z, karst = w.unfilled(rows, cols, carve=carve)
    NpyArray(unfilled_npy).write(rows[0] - origin[0], cols[0] - origin[1], z)
    NpyArray(karst_npy).write(rows[0] - origin[0], cols[0] - origin[1], karst.astype(np.uint8))
    return 1


def _tile_values(task, source, bounds, res_m, crs, seed, geotiff_path, resampling, cache_dir, unfilled_npy,
                 karst_npy, unfilled_origin, params=None):
    """Heights of one tile ``(r0, r1, c0, c1)`` of the window (float32, NaN = nodata)."""
    r0, r1, c0, c1 = task
    xmin, _, _, ymax = bounds
    tb = (xmin + c0 * res_m, ymax - r1 * res_m, xmin + c1 * res_m, ymax - r0 * res_m)
    if source == "synthetic":
        from .synthetic import world

        w = world(seed, res_m, *([params] if params is not None else []))
        rows, cols = w.pixel_window(tb)
        unfilled = None
        if unfilled_npy:
            read_z, read_k = _scratch_reader(unfilled_npy, unfilled_origin), _scratch_reader(karst_npy, unfilled_origin)

            def unfilled(r, c):
                z = read_z(r, c)
                return w.unfilled(r, c) if z is None else (z, read_k(r, c).astype(bool))
        return w.elevation(rows, cols, unfilled=unfilled).astype(np.float32)
    if source == "geotiff":
        return np.asarray(geotiff_terrain(geotiff_path, tb, crs, res_m, resampling=resampling).values, np.float32)
    from .copernicus import copernicus_terrain

    return np.asarray(copernicus_terrain(tb, crs=crs, res_m=res_m, cache_dir=cache_dir, progress=False).values,
                      np.float32)


def _write_tile(task, store, overview_f, **kw):
    """Compute one tile, write it into the zarr store, return its summary and its block-mean overview."""
    import zarr

    r0, r1, c0, c1 = task
    z = _tile_values(task, **kw)
    zarr.open_array(store, path="elevation", mode="r+")[r0:r1, c0:c1] = z
    finite = np.isfinite(z)
    zf = z[finite].astype(np.float64)
    f = overview_f
    h, w = -(-(r1 - r0) // f), -(-(c1 - c0) // f)
    pad = np.full((h * f, w * f), np.nan, np.float64)
    pad[:r1 - r0, :c1 - c0] = z
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        overview = np.nanmean(pad.reshape(h, f, w, f), axis=(1, 3)).astype(np.float32)
    return {"task": task, "n_finite": int(finite.sum()), "n_inf": int(np.isinf(z).sum()),
            "min": float(zf.min()) if zf.size else None, "max": float(zf.max()) if zf.size else None,
            "sum": float(zf.sum()), "sum2": float((zf * zf).sum()), "overview": overview}


def build_terrain(path, source: str, region: str, bounds, *, res_m: float, crs: str, region_lonlat,
                  seed: int = 0, geotiff_path=None, cache_dir="data/raw", tile_px: int = 2048, runner=None,
                  scratch_dir=None, overview_px: int = 1500, chunk_px: int = 512, params=None) -> dict:
    """Write the terrain of window ``bounds`` (metres of ``crs``, on the ``res_m`` grid) as a zarr store at
    ``path``, tile by tile (``tile_px`` square tiles, a multiple of the ``chunk_px`` zarr chunks), on ``runner`` (a
    :class:`~topo2vec_lib.tiling.TileRunner`; default: in this process). No tile, and no process, holds more
    than a tile (plus its halo); the synthetic world's carve field is written once to a scratch file first
    (:func:`topo2vec_lib.synthetic.carve_field_file`). The store is complete or absent (written to a
    temporary path and renamed; its manifest last). Same store as :func:`save_terrain` (attrs, CRS,
    transform, manifest). ``params``: the synthetic world's :class:`~topo2vec_lib.synthetic.WorldParams`
    (default: the study's).

    Returns ``{"path", "shape", "n_finite", "min", "max", "mean", "std", "overview", "overview_f"}``:
    the overview is the block mean of ``overview_f`` px, at most ``overview_px`` wide (for figures).
    :class:`NodataWindowError` when no tile holds a valid height.
    """
    import dask.array as dsa

    from .tiling import TileRunner

    if source not in SOURCES:
        raise ValueError(f"unknown terrain source {source!r}: valid sources are {list(SOURCES)}")
    res_m = check_positive("res_m", res_m)
    crs = check_crs(crs)
    if isinstance(tile_px, bool) or not isinstance(tile_px, (int, np.integer)) or tile_px < chunk_px \
            or tile_px % chunk_px:
        raise ValueError(f"tile_px={tile_px!r}: expected a multiple of the zarr chunk ({chunk_px} px): a tile writes "
                         f"whole chunks")
    if source == "geotiff" and not geotiff_path:
        raise ValueError("source='geotiff' needs geotiff_path (a local GeoTIFF or VRT file)")
    x, y = grid_coords(bounds, res_m)
    ny, nx = y.size, x.size
    f = 1
    while max(ny, nx) / f > overview_px and f < 512:
        f *= 2
    resampling = geotiff_resampling(geotiff_path, bounds, crs, res_m) if source == "geotiff" else None
    if source == "geotiff" and not Path(geotiff_path).exists():
        raise FileNotFoundError(f"GeoTIFF {geotiff_path} does not exist")
    import rioxarray  # noqa: F401
    from affine import Affine

    transform = Affine(res_m, 0.0, bounds[0], 0.0, -res_m, bounds[3])
    from pyproj import CRS

    meta = {"res_m": float(res_m), "region": str(region), "region_lonlat": [float(v) for v in region_lonlat],
            "source": source, "units": "m", "crs_wkt": CRS.from_user_input(crs).to_wkt(),
            "transform": list(transform)[:6]}
    tasks = [(r0, min(r0 + tile_px, ny), c0, min(c0 + tile_px, nx))
             for r0 in range(0, ny, tile_px) for c0 in range(0, nx, tile_px)]
    path = Path(path)
    own_runner = runner is None
    runner = TileRunner("sync") if own_runner else runner
    if source == "copernicus" and getattr(runner, "client", None) is not None:
        runner = TileRunner("sync")              # downloads into one cache: one process
    scratch = Path(tempfile.mkdtemp(prefix="topo2vec-terrain-", dir=scratch_dir or None))
    try:
        unfilled_npy, karst_npy, unfilled_origin = "", "", (0, 0)
        if source == "synthetic":
            # pass 0: the coarse carve field; pass 1: the unfilled heights of the window and its margin; pass 2
            # (below): the tiles, filled and with their sinkholes
            from .synthetic import carve_field_file, world
            from .tiling import NpyArray

            w = world(seed, res_m, *([params] if params is not None else []))
            rows, cols = w.pixel_window(bounds)
            m = w.tile_margin_px
            crange = w.coarse_range((rows[0] - m, rows[1] + m), (cols[0] - m, cols[1] + m))
            carve_npy = str(scratch / "carve.npy")
            carve_field_file(w, crange[0], crange[1], carve_npy, runner)
            m = w.fill_margin_px
            ur, uc = (rows[0] - m, rows[1] + m), (cols[0] - m, cols[1] + m)
            unfilled_npy, karst_npy = str(scratch / "unfilled.npy"), str(scratch / "karst.npy")
            NpyArray(unfilled_npy, shape=(ur[1] - ur[0], uc[1] - uc[0]), dtype=np.float64)
            NpyArray(karst_npy, shape=(ur[1] - ur[0], uc[1] - uc[0]), dtype=np.uint8)
            unfilled_origin = (ur[0], uc[0])
            passes = [(a, min(a + tile_px, ur[1]), b, min(b + tile_px, uc[1]))
                      for a in range(ur[0], ur[1], tile_px) for b in range(uc[0], uc[1], tile_px)]
            runner.map(_unfilled_task, passes, unfilled_npy=unfilled_npy, karst_npy=karst_npy,
                       origin=unfilled_origin, seed=int(seed), res_m=res_m, carve_npy=carve_npy,
                       carve_origin=(crange[0][0], crange[1][0]), params=params)
        with atomic_path(path, is_dir=True) as tmp:
            chunks = (chunk_px, chunk_px)
            ds = xr.Dataset({"elevation": (("y", "x"), dsa.zeros((ny, nx), chunks=chunks, dtype=np.float32))},
                            coords={"y": y, "x": x}, attrs={"topo2vec": json.dumps(meta)})
            ds.to_zarr(tmp, mode="w", compute=False, encoding={"elevation": {"chunks": chunks}}, consolidated=False)
            parts = runner.map(_write_tile, tasks, store=str(tmp), overview_f=f, source=source, bounds=tuple(bounds),
                               res_m=res_m, crs=crs, seed=int(seed), geotiff_path=geotiff_path,
                               resampling=resampling, cache_dir=str(cache_dir), unfilled_npy=unfilled_npy,
                               karst_npy=karst_npy, unfilled_origin=unfilled_origin, params=params)
            n = sum(p["n_finite"] for p in parts)
            what = (f"the {source} terrain window of region {region!r} ({ny} x {nx} px, bounds "
                    f"{[round(b, 1) for b in bounds]} m in {crs[:60]})")
            if n == 0:
                raise NodataWindowError(f"{what} is 100% nodata (no valid height at all): the source does not "
                                        f"cover it with data (wrong file, window or lon/lat order?)")
            n_inf = sum(p["n_inf"] for p in parts)
            if n_inf:
                raise ValueError(f"{what} holds {n_inf} infinite height(s); nodata must be NaN")
            overview = np.full((-(-ny // f), -(-nx // f)), np.nan, np.float32)
            for p in parts:
                r0, _, c0, _ = p["task"]
                o = p["overview"]
                overview[r0 // f:r0 // f + o.shape[0], c0 // f:c0 // f + o.shape[1]] = o
            (tmp / MANIFEST_NAME).write_text(json.dumps(store_manifest(tmp), indent=1) + "\n")
    finally:
        if own_runner:
            runner.close()
        shutil.rmtree(scratch, ignore_errors=True)
    total, total2 = sum(p["sum"] for p in parts), sum(p["sum2"] for p in parts)
    mean = total / n
    return {"path": str(path), "shape": [ny, nx], "n_finite": n, "nodata_fraction": 1 - n / (ny * nx),
            "min": min(p["min"] for p in parts if p["min"] is not None),
            "max": max(p["max"] for p in parts if p["max"] is not None), "mean": mean,
            "std": float(np.sqrt(max(total2 / n - mean * mean, 0.0))), "overview": overview, "overview_f": f,
            "tiles": len(tasks)}


# ---------------------------------------------------------------- storage
def save_terrain(da: xr.DataArray, path, chunk_px: int = 512) -> Path:
    """Write a terrain to a zarr store (``*.zarr``, chunks ``chunk_px`` square) or a COG (``*.tif``), atomically.

    A zarr store gets its manifest (:data:`MANIFEST_NAME`, see :func:`verify_store`); a COG records the SHA-256
    of its values in its ``topo2vec`` tag (checked when :func:`open_terrain` loads it).
    """
    path = Path(path)
    crs = da.rio.crs
    if crs is None:
        raise ValueError("the terrain has no CRS (da.rio.crs is None); build it with load_terrain/make_dataarray")
    meta = {k: da.attrs[k] for k in _ATTRS if k in da.attrs}
    meta["crs_wkt"] = crs.to_wkt()
    meta["transform"] = list(da.rio.transform())[:6]
    values = np.ascontiguousarray(da.values, dtype=np.float32)
    if path.suffix.lower() in (".tif", ".tiff"):
        out = da.astype(np.float32).copy()
        out.attrs = {"topo2vec": json.dumps({**meta, "values_sha256": _values_sha256(values)})}
        with atomic_path(path) as tmp:
            out.rio.write_nodata(np.nan, encoded=False).rio.to_raster(tmp, driver="COG", compress="DEFLATE")
        return path
    ds = xr.Dataset({"elevation": (("y", "x"), values)},
                    coords={"y": da["y"].values, "x": da["x"].values}, attrs={"topo2vec": json.dumps(meta)})
    chunks = (min(chunk_px, values.shape[0]), min(chunk_px, values.shape[1]))
    with atomic_path(path, is_dir=True) as tmp:
        ds.to_zarr(tmp, mode="w", encoding={"elevation": {"chunks": chunks}}, consolidated=False)
        (tmp / MANIFEST_NAME).write_text(json.dumps(store_manifest(tmp), indent=1) + "\n")
    return path


def _values_sha256(values: np.ndarray) -> str:
    """SHA-256 of float32 values, every NaN in one canonical form (a file may not keep NaN payloads)."""
    v = np.array(values, dtype=np.float32, order="C")
    v[np.isnan(v)] = np.nan
    return hashlib.sha256(v.tobytes()).hexdigest()


def _store_files(root: Path) -> dict[str, Path]:
    return {f.relative_to(root).as_posix(): f for f in sorted(root.rglob("*"))
            if f.is_file() and f.name != MANIFEST_NAME}


def store_manifest(root: str | os.PathLike) -> dict:
    """The manifest of a zarr store: ``{"format", "version", "algorithm": "sha256", "files": {relative path:
    {"size": bytes, "sha256": hex}}}`` over every file of the store but the manifest itself."""
    files = {}
    for rel, f in _store_files(Path(root)).items():
        data = f.read_bytes()
        files[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return {"format": "topo2vec-zarr-manifest", "version": 1, "algorithm": "sha256", "files": files}


def _describe_file(root: Path, rel: str) -> str:
    """``rel`` named as a chunk of its array with the pixel rows and columns it holds, when it is one."""
    m = re.fullmatch(r"(\w+)/c/(\d+)/(\d+)", rel) or re.fullmatch(r"(\w+)/(\d+)[./](\d+)", rel)
    if m is None:
        return f"file {rel}"
    name, i, j = m.group(1), int(m.group(2)), int(m.group(3))
    chunk: list | None = None
    size: list = []
    try:
        if (root / name / "zarr.json").is_file():
            meta = json.loads((root / name / "zarr.json").read_text())
            chunk, size = meta["chunk_grid"]["configuration"]["chunk_shape"], meta["shape"]
        elif (root / name / ".zarray").is_file():
            meta = json.loads((root / name / ".zarray").read_text())
            chunk, size = meta["chunks"], meta["shape"]
    except (OSError, ValueError, KeyError, TypeError):
        chunk = None
    if chunk is None or len(chunk) != 2 or len(size) != 2:
        return f"chunk ({i}, {j}) of {name!r} (file {rel})"
    (h, w), (ny, nx) = chunk, size
    return (f"chunk ({i}, {j}) of {name!r} (file {rel}: pixel rows {i * h}..{min((i + 1) * h, ny) - 1}, "
            f"columns {j * w}..{min((j + 1) * w, nx) - 1})")


def verify_store(path: str | os.PathLike) -> None:
    """Check a zarr terrain store against its manifest; :class:`TerrainStoreError` naming the store and the first
    chunk (or file) that is missing, truncated, altered or unexpected. A store without a manifest (written
    before manifests existed) gives a warning: it cannot be verified."""
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        warnings.warn(f"terrain store {root} has no {MANIFEST_NAME} (written by an older topo2vec?): its chunks "
                      f"cannot be verified; write it again with save_terrain", stacklevel=3)
        return
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in manifest["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise TerrainStoreError(f"terrain store {root}: its manifest {MANIFEST_NAME} is unreadable "
                                f"({type(err).__name__}: {err}); write the store again") from None
    actual = _store_files(root)
    for rel in sorted(expected):
        size, digest = expected[rel]
        if rel not in actual:
            raise TerrainStoreError(f"terrain store {root}: {_describe_file(root, rel)} is missing (deleted?); "
                                    f"its pixels would read as nodata. Restore the store (dvc checkout) or write "
                                    f"it again (dvc repro terrain)")
        data = actual[rel].read_bytes()
        if len(data) != size:
            raise TerrainStoreError(f"terrain store {root}: {_describe_file(root, rel)} is {len(data)} bytes, the "
                                    f"manifest says {size} (truncated?). Restore the store (dvc checkout) or write "
                                    f"it again (dvc repro terrain)")
        if hashlib.sha256(data).hexdigest() != digest:
            raise TerrainStoreError(f"terrain store {root}: {_describe_file(root, rel)} does not match its SHA-256 "
                                    f"in the manifest (altered or corrupt). Restore the store (dvc checkout) or "
                                    f"write it again (dvc repro terrain)")
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise TerrainStoreError(f"terrain store {root}: {_describe_file(root, extra[0])} is not in its manifest "
                                f"({len(extra)} unexpected file(s)); remove it or write the store again")


def open_terrain(path, chunks=None, verify: bool = True) -> xr.DataArray:
    """Read a terrain written by :func:`save_terrain` (zarr store or ``.tif``), CRS, transform and attrs restored.

    ``chunks=None`` loads the values into memory; ``chunks="auto"`` or a dict gives a Dask-backed array.
    ``verify``: check a zarr store against its manifest first (:func:`verify_store`; reads every file once) and
    a loaded COG against the SHA-256 of its values. Any failure to open or read is a :class:`TerrainStoreError`
    naming the store (and the chunk when the manifest tells which).
    """
    import rioxarray

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"terrain {path} does not exist; run the terrain stage (dvc repro terrain)")
    tif = path.suffix.lower() in (".tif", ".tiff")
    if verify and not tif:
        verify_store(path)
    try:
        if tif:
            raster = rioxarray.open_rasterio(path, masked=True, chunks=chunks)
            if not isinstance(raster, xr.DataArray):
                raise ValueError("it holds several subdatasets, not one elevation band")
            da = raster.squeeze("band", drop=True)
            meta = json.loads(da.attrs["topo2vec"])
            da = da.drop_vars("spatial_ref", errors="ignore")
        else:
            with warnings.catch_warnings():   # zarr lists the manifest as "not a component of a Zarr hierarchy"
                warnings.filterwarnings("ignore", message=f"Object at {re.escape(MANIFEST_NAME)} is not recognized")
                ds = xr.open_zarr(path, chunks=chunks, consolidated=False)
            meta = json.loads(ds.attrs["topo2vec"])
            da = ds["elevation"]
        if chunks is None:
            da = da.load()
    except Exception as err:  # zarr, numcodecs and rasterio raise their own types on corrupt files
        raise TerrainStoreError(f"{path} is not a readable terrain store ({type(err).__name__}: {err}); restore "
                                f"it (dvc checkout) or write it again (dvc repro terrain)") from err
    if verify and tif and chunks is None and "values_sha256" in meta \
            and _values_sha256(np.asarray(da.values, dtype=np.float32)) != meta["values_sha256"]:
        raise TerrainStoreError(f"{path}: its values do not match the SHA-256 recorded when it was written "
                                f"(altered or corrupt); write it again")
    da = da.astype(np.float32)
    da.name = "elevation"
    da.attrs = {k: meta[k] for k in _ATTRS if k in meta}
    da.encoding = {}
    from affine import Affine

    return da.rio.write_crs(meta["crs_wkt"]).rio.write_transform(Affine(*meta["transform"]))


def store_array(path):
    """The elevation array of a zarr terrain store, read-only and unverified (``open_terrain`` verifies): a
    picklable source that tile work reads window by window (``topo2vec_lib.tiling.as_source``), without Dask."""
    import zarr

    return zarr.open_array(str(path), path="elevation", mode="r")


def open_region(terrain_dir: str | os.PathLike, region: str, chunks=None) -> xr.DataArray:
    """Open the terrain stage's output for ``region`` (``<terrain_dir>/<region>.zarr`` or ``.tif``)."""
    for ext in (".zarr", ".tif"):
        path = Path(terrain_dir) / f"{region}{ext}"
        if path.exists():
            return open_terrain(path, chunks=chunks)
    raise FileNotFoundError(f"no {region}.zarr or {region}.tif in {terrain_dir}; run the terrain stage first")
