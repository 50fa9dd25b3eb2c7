"""Terrain sources -> one georeferenced elevation grid (docs/architecture.md, "Terrain").

A terrain is an ``xarray.DataArray`` ``(y, x)`` of float32 metres, NaN = nodata/sea, pixel-centre
coordinates in metres of a metric CRS (default EPSG:3035), north-up, with ``rio`` CRS and transform set and
attrs ``res_m``, ``region``, ``region_lonlat``, ``source``. Sources: ``synthetic`` (the embedded default,
:mod:`topo2vec_lib.synthetic`), ``geotiff`` (any local GeoTIFF/VRT, reprojected), ``copernicus``
(:mod:`topo2vec_lib.copernicus`). Terrains are stored as zarr (or Cloud-Optimized GeoTIFF).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import xarray as xr

from .grid import check_crs, check_positive, grid_coords, make_dataarray, region_lonlat_of, region_window
from .storage import atomic_path

SOURCES = ("synthetic", "geotiff", "copernicus")
_ATTRS = ("res_m", "region", "region_lonlat", "source", "units")


# ---------------------------------------------------------------- sources
def load_terrain(source: str, region: str, *, center_lonlat, size_km: float, res_m: float = 30,
                 crs: str = "EPSG:3035", seed: int = 0, geotiff_path=None, cache_dir="data/raw",
                 region_lonlat=None) -> xr.DataArray:
    """The study terrain of ``region``: a ``size_km`` square window at ``res_m`` around ``center_lonlat``.

    ``source``: ``"synthetic"`` (deterministic from ``seed`` and the region name), ``"geotiff"`` (the local
    file ``geotiff_path`` reprojected into the window) or ``"copernicus"`` (GLO-30 tiles cached under
    ``cache_dir``). The window must lie inside the region's lon/lat polygon.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown terrain source {source!r}: valid sources are {list(SOURCES)}")
    res_m = check_positive("res_m", res_m)
    crs = check_crs(crs)
    box = region_lonlat_of(region, region_lonlat)
    bounds = region_window(region, center_lonlat, size_km, res_m, crs, region_lonlat=box)
    if source == "synthetic":
        from .synthetic import synthetic_terrain

        da = synthetic_terrain(region, center_lonlat, size_km, res_m=res_m, crs=crs, seed=seed)
    elif source == "geotiff":
        if not geotiff_path:
            raise ValueError("source='geotiff' needs geotiff_path (a local GeoTIFF or VRT file)")
        da = geotiff_terrain(geotiff_path, bounds, crs, res_m)
    else:
        from .copernicus import copernicus_terrain

        da = copernicus_terrain(bounds, crs=crs, res_m=res_m, cache_dir=cache_dir)
    da = da.astype(np.float32)
    da.name = "elevation"
    da.attrs.update({"res_m": float(res_m), "region": str(region), "region_lonlat": list(box),
                     "source": source, "units": "m"})
    return da


def geotiff_terrain(path, bounds_xy, crs: str, res_m: float) -> xr.DataArray:
    """A local GeoTIFF/VRT (any CRS and resolution) reprojected onto the window ``bounds_xy`` at ``res_m``.

    Resampling is ``average`` when the source pixels are finer than ``res_m`` and ``bilinear`` otherwise.
    Returns float32 metres with NaN for the file's nodata and for cells the file does not cover.
    """
    import rasterio
    import rioxarray
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioIOError
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    res_m = check_positive("res_m", res_m)
    crs = check_crs(crs)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GeoTIFF {path} does not exist")
    try:
        src = rioxarray.open_rasterio(path, masked=True)
    except (RasterioIOError, rasterio.errors.RasterioError) as err:
        raise ValueError(f"{path} is not a readable GeoTIFF/VRT: {err}") from err
    if isinstance(src, list) or not isinstance(src, xr.DataArray):
        raise ValueError(f"{path} holds several subdatasets; give one GeoTIFF/VRT with one elevation band")
    if src.rio.crs is None:
        raise ValueError(f"{path} has no CRS; write one first (e.g. gdal_edit.py -a_srs EPSG:4326 {path})")
    if "band" in src.dims:
        if src.sizes["band"] != 1:
            raise ValueError(f"{path} has {src.sizes['band']} bands; an elevation GeoTIFF has exactly one")
        src = src.squeeze("band", drop=True)
    xmin, ymin, xmax, ymax = bounds_xy
    x, y = grid_coords(bounds_xy, res_m)
    # source pixels across the window: decides averaging (finer source) vs bilinear (coarser source)
    sb = transform_bounds(crs, src.rio.crs, xmin, ymin, xmax, ymax, densify_pts=21)
    src_res = [abs(v) for v in src.rio.resolution()]
    src_px = max((sb[2] - sb[0]) / src_res[0], (sb[3] - sb[1]) / src_res[1])
    finer = src_px > max(x.size, y.size)
    resampling = Resampling.average if finer else Resampling.bilinear
    # clip first (with a margin) so a large file is not reprojected whole
    margin_x, margin_y = 3 * src_res[0], 3 * src_res[1]
    try:
        src = src.rio.clip_box(sb[0] - margin_x, sb[1] - margin_y, sb[2] + margin_x, sb[3] + margin_y)
    except rioxarray.exceptions.NoDataInBounds as err:
        raise ValueError(f"{path} does not cover the window {tuple(bounds_xy)} ({crs})") from err
    try:
        src = src.astype(np.float64).rio.write_nodata(np.nan, encoded=False)
        out = src.rio.reproject(crs, shape=(y.size, x.size), transform=from_origin(xmin, ymax, res_m, res_m),
                                resampling=resampling, nodata=np.nan)
    except (RasterioIOError, rasterio.errors.RasterioError) as err:
        raise ValueError(f"{path} could not be read: {err}") from err
    values = np.asarray(out.values, dtype=np.float32)
    return make_dataarray(values, bounds_xy, res_m, crs, region="", region_lonlat=(-180, -90, 180, 90),
                          source="geotiff")


# ---------------------------------------------------------------- storage
def save_terrain(da: xr.DataArray, path, chunk_px: int = 512) -> Path:
    """Write a terrain to a zarr store (``*.zarr``, chunks ``chunk_px`` square) or a COG (``*.tif``), atomically."""
    path = Path(path)
    crs = da.rio.crs
    if crs is None:
        raise ValueError("the terrain has no CRS (da.rio.crs is None); build it with load_terrain/make_dataarray")
    meta = {k: da.attrs[k] for k in _ATTRS if k in da.attrs}
    meta["crs_wkt"] = crs.to_wkt()
    meta["transform"] = list(da.rio.transform())[:6]
    if path.suffix.lower() in (".tif", ".tiff"):
        out = da.astype(np.float32).copy()
        out.attrs = {"topo2vec": json.dumps(meta)}
        with atomic_path(path) as tmp:
            out.rio.write_nodata(np.nan, encoded=False).rio.to_raster(tmp, driver="COG", compress="DEFLATE")
        return path
    values = np.asarray(da.values, dtype=np.float32)
    ds = xr.Dataset({"elevation": (("y", "x"), values)},
                    coords={"y": da["y"].values, "x": da["x"].values}, attrs={"topo2vec": json.dumps(meta)})
    chunks = (min(chunk_px, values.shape[0]), min(chunk_px, values.shape[1]))
    with atomic_path(path, is_dir=True) as tmp:
        ds.to_zarr(tmp, mode="w", encoding={"elevation": {"chunks": chunks}}, consolidated=False)
    return path


def open_terrain(path, chunks=None) -> xr.DataArray:
    """Read a terrain written by :func:`save_terrain` (zarr store or ``.tif``), CRS, transform and attrs restored.

    ``chunks=None`` loads the values into memory; ``chunks="auto"`` or a dict gives a Dask-backed array.
    """
    import rioxarray

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"terrain {path} does not exist; run the terrain stage (dvc repro terrain)")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            raster = rioxarray.open_rasterio(path, masked=True, chunks=chunks)
            if not isinstance(raster, xr.DataArray):
                raise ValueError("it holds several subdatasets, not one elevation band")
            da = raster.squeeze("band", drop=True)
            meta = json.loads(da.attrs["topo2vec"])
            da = da.drop_vars("spatial_ref", errors="ignore")
        else:
            ds = xr.open_zarr(path, chunks=chunks, consolidated=False)
            meta = json.loads(ds.attrs["topo2vec"])
            da = ds["elevation"]
    except (KeyError, ValueError, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable terrain store ({type(err).__name__}: {err})") from err
    except Exception as err:  # zarr/rasterio raise their own error types on corrupt files
        raise ValueError(f"{path} is not a readable terrain store ({type(err).__name__}: {err})") from err
    if chunks is None:
        da = da.load()
    da = da.astype(np.float32)
    da.name = "elevation"
    da.attrs = {k: meta[k] for k in _ATTRS if k in meta}
    da.encoding = {}
    from affine import Affine

    return da.rio.write_crs(meta["crs_wkt"]).rio.write_transform(Affine(*meta["transform"]))


def open_region(terrain_dir: str | os.PathLike, region: str, chunks=None) -> xr.DataArray:
    """Open the terrain stage's output for ``region`` (``<terrain_dir>/<region>.zarr`` or ``.tif``)."""
    for ext in (".zarr", ".tif"):
        path = Path(terrain_dir) / f"{region}{ext}"
        if path.exists():
            return open_terrain(path, chunks=chunks)
    raise FileNotFoundError(f"no {region}.zarr or {region}.tif in {terrain_dir}; run the terrain stage first")
