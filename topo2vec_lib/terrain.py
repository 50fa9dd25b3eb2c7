"""Terrain sources -> one georeferenced elevation grid (docs/architecture.md, "Terrain").

A terrain is an ``xarray.DataArray`` ``(y, x)`` of float32 metres, NaN = nodata/sea, pixel-centre
coordinates in metres of a metric CRS (default EPSG:3035), north-up, with ``rio`` CRS and transform set and
attrs ``res_m``, ``region``, ``region_lonlat``, ``source``. Sources: ``synthetic`` (the embedded default,
:mod:`topo2vec_lib.synthetic`), ``geotiff`` (any local GeoTIFF/VRT, reprojected), ``copernicus``
(:mod:`topo2vec_lib.copernicus`). Terrains are stored as zarr (or Cloud-Optimized GeoTIFF).
"""
from __future__ import annotations

import functools
import os
import json
import math
from pathlib import Path

import numpy as np
import xarray as xr

from .storage import atomic_path

PAPER_REGIONS = {"train": (10.0, 45.0, 15.0, 50.0), "test": (5.0, 45.0, 10.0, 50.0)}
"""The paper's polygons as (lon_min, lat_min, lon_max, lat_max), EPSG:4326 degrees."""

SOURCES = ("synthetic", "geotiff", "copernicus")
_ATTRS = ("res_m", "region", "region_lonlat", "source", "units")


# ---------------------------------------------------------------- coordinates
@functools.lru_cache(maxsize=32)
def _transformer(src: str, dst: str):
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def check_crs(crs) -> str:
    """Return ``crs`` as a string if it is a projected CRS in metres, else raise ValueError."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        parsed = CRS.from_user_input(crs)
    except CRSError as err:
        raise ValueError(f"crs {crs!r} is not a valid CRS (use e.g. 'EPSG:3035' or a UTM zone)") from err
    units = {a.unit_name for a in parsed.axis_info}
    if not parsed.is_projected or not units <= {"metre", "meter"}:
        raise ValueError(f"crs {crs!r} must be a projected CRS in metres (e.g. 'EPSG:3035'), got units {units}")
    return str(crs)


def lonlat_to_xy(crs: str, lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat degrees (EPSG:4326) -> x, y metres in ``crs``; arrays of any shape (same as inputs)."""
    x, y = _transformer("EPSG:4326", str(crs)).transform(np.asarray(lon, float), np.asarray(lat, float))
    return np.asarray(x), np.asarray(y)


def xy_to_lonlat(crs: str, x, y) -> tuple[np.ndarray, np.ndarray]:
    """x, y metres in ``crs`` -> lon, lat degrees (EPSG:4326)."""
    lon, lat = _transformer(str(crs), "EPSG:4326").transform(np.asarray(x, float), np.asarray(y, float))
    return np.asarray(lon), np.asarray(lat)


def _check_positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a positive number, got {value!r}") from err
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return v


def _check_lonlat(center_lonlat) -> tuple[float, float]:
    if isinstance(center_lonlat, (str, bytes)) or np.size(center_lonlat) != 2:
        raise ValueError(f"center_lonlat must be [lon, lat] in degrees, got {center_lonlat!r}")
    try:
        lon, lat = (float(v) for v in center_lonlat)
    except (TypeError, ValueError) as err:
        raise ValueError(f"center_lonlat must be [lon, lat] in degrees, got {center_lonlat!r}") from err
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ValueError(f"center_lonlat must be [lon, lat] with lon in [-180, 180], lat in [-90, 90], "
                         f"got {center_lonlat!r}")
    return lon, lat


def window_bounds(center_lonlat, size_km: float, res_m: float, crs: str = "EPSG:3035"):
    """(xmin, ymin, xmax, ymax) metres of a square window of about ``size_km`` centred on a lon/lat.

    Edges are snapped to multiples of ``res_m`` (same rule as ``tests/conftest.make_terrain``), and the
    window holds ``n = round(size_km * 1000 / res_m)`` pixels a side (at least 3).
    """
    lon, lat = _check_lonlat(center_lonlat)
    size_km = _check_positive("size_km", size_km)
    res_m = _check_positive("res_m", res_m)
    check_crs(crs)
    n = max(3, int(round(size_km * 1000.0 / res_m)))
    cx, cy = (float(v) for v in lonlat_to_xy(crs, lon, lat))
    xmin = math.floor(cx / res_m) * res_m - (n // 2) * res_m
    ymax = math.floor(cy / res_m) * res_m + (n // 2) * res_m
    return (xmin, ymax - n * res_m, xmin + n * res_m, ymax)


def region_lonlat_of(region: str, region_lonlat=None) -> tuple[float, float, float, float]:
    """The (lon_min, lat_min, lon_max, lat_max) polygon of ``region`` (a paper region or given explicitly)."""
    if region_lonlat is not None:
        box = tuple(float(v) for v in region_lonlat)
        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"region_lonlat must be (lon_min, lat_min, lon_max, lat_max), got {region_lonlat!r}")
        return box
    if region not in PAPER_REGIONS:
        raise ValueError(f"unknown region {region!r}: use one of {sorted(PAPER_REGIONS)} or pass region_lonlat")
    return PAPER_REGIONS[region]


def region_window(region: str, center_lonlat, size_km: float, res_m: float, crs: str = "EPSG:3035",
                  region_lonlat=None):
    """:func:`window_bounds`, checked to lie inside the region's lon/lat polygon (ValueError otherwise).

    The window's outline (corners and points along its edges) is transformed to lon/lat and must fall
    inside ``region_lonlat_of(region, region_lonlat)``.
    """
    box = region_lonlat_of(region, region_lonlat)
    bounds = window_bounds(center_lonlat, size_km, res_m, crs)
    xmin, ymin, xmax, ymax = bounds
    t = np.linspace(0.0, 1.0, 9)
    xs = np.concatenate([xmin + t * (xmax - xmin), np.full(9, xmax), xmax - t * (xmax - xmin), np.full(9, xmin)])
    ys = np.concatenate([np.full(9, ymin), ymin + t * (ymax - ymin), np.full(9, ymax), ymax - t * (ymax - ymin)])
    lon, lat = xy_to_lonlat(crs, xs, ys)
    inside = (lon >= box[0]) & (lon <= box[2]) & (lat >= box[1]) & (lat <= box[3])
    if not inside.all():
        raise ValueError(
            f"the {size_km} km window centred on {list(center_lonlat)} spans lon {lon.min():.3f}..{lon.max():.3f}, "
            f"lat {lat.min():.3f}..{lat.max():.3f}, which is not inside region {region!r} {list(box)}; "
            f"move the centre or shrink size_km")
    return bounds


def grid_coords(bounds, res_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre ``x`` (west->east) and ``y`` (north->south) of a window (xmin, ymin, xmax, ymax)."""
    xmin, ymin, xmax, ymax = bounds
    nx, ny = int(round((xmax - xmin) / res_m)), int(round((ymax - ymin) / res_m))
    return xmin + (np.arange(nx) + 0.5) * res_m, ymax - (np.arange(ny) + 0.5) * res_m


def make_dataarray(elevation: np.ndarray, bounds, res_m: float, crs: str, *, region: str, region_lonlat,
                   source: str) -> xr.DataArray:
    """Wrap a ``(ny, nx)`` array (row 0 = north) covering ``bounds`` into a terrain DataArray."""
    import rioxarray  # noqa: F401  (registers .rio)

    x, y = grid_coords(bounds, res_m)
    elevation = np.asarray(elevation, dtype=np.float32)
    if elevation.shape != (y.size, x.size):
        raise ValueError(f"elevation shape {elevation.shape} does not match the window's {(y.size, x.size)}")
    da = xr.DataArray(elevation, dims=("y", "x"), coords={"y": y, "x": x}, name="elevation",
                      attrs={"res_m": float(res_m), "region": str(region),
                             "region_lonlat": [float(v) for v in region_lonlat], "source": str(source),
                             "units": "m"})
    return da.rio.write_crs(crs).rio.write_transform()


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
    res_m = _check_positive("res_m", res_m)
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

    res_m = _check_positive("res_m", res_m)
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
            da = rioxarray.open_rasterio(path, masked=True, chunks=chunks).squeeze("band", drop=True)
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


# ---------------------------------------------------------------- derived rasters
def _values_res(da, res_m):
    if isinstance(da, xr.DataArray):
        res_m = float(da.attrs.get("res_m", res_m) if res_m is None else res_m)
        z = np.asarray(da.values, dtype=np.float64)
    else:
        z = np.asarray(da, dtype=np.float64)
    if res_m is None:
        raise ValueError("res_m is needed for a plain array (metres per pixel)")
    return z, _check_positive("res_m", res_m)


def slope_deg(da, res_m: float | None = None) -> np.ndarray:
    """Slope in degrees ``(ny, nx)`` by central differences (``res_m`` from the attrs of a DataArray)."""
    z, res_m = _values_res(da, res_m)
    gy, gx = np.gradient(z, res_m)
    return np.degrees(np.arctan(np.hypot(gx, gy)))


def hillshade(da, azimuth: float = 315.0, altitude: float = 45.0, res_m: float | None = None,
              exaggeration: float = 1.0) -> np.ndarray:
    """Hillshade ``(ny, nx)`` in [0, 1] (NaN for nodata), light from ``azimuth`` degrees clockwise from north."""
    z, res_m = _values_res(da, res_m)
    gy, gx = np.gradient(z * exaggeration, res_m)
    dz_east, dz_north = gx, -gy  # row 0 is north: rows increase southwards
    az, alt = np.radians(azimuth), np.radians(altitude)
    light = np.array([np.cos(alt) * np.sin(az), np.cos(alt) * np.cos(az), np.sin(alt)])
    norm = np.sqrt(dz_east ** 2 + dz_north ** 2 + 1.0)
    shade = (-dz_east * light[0] - dz_north * light[1] + light[2]) / norm
    return np.clip(shade, 0.0, 1.0)


def open_region(terrain_dir: str | os.PathLike, region: str, chunks=None) -> xr.DataArray:
    """Open the terrain stage's output for ``region`` (``<terrain_dir>/<region>.zarr`` or ``.tif``)."""
    for ext in (".zarr", ".tif"):
        path = Path(terrain_dir) / f"{region}{ext}"
        if path.exists():
            return open_terrain(path, chunks=chunks)
    raise FileNotFoundError(f"no {region}.zarr or {region}.tif in {terrain_dir}; run the terrain stage first")


def check_bounds_lonlat(bounds, what: str = "bounds_lonlat") -> tuple[float, float, float, float]:
    """(lon_min, lat_min, lon_max, lat_max) as floats, degrees in lon/lat order; ValueError naming ``what``."""
    try:
        lon0, lat0, lon1, lat1 = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (lon_min, lat_min, lon_max, lat_max), got {bounds!r}") from None
    if not (-180 <= lon0 < lon1 <= 180 and -90 <= lat0 < lat1 <= 90):
        raise ValueError(f"{what} must satisfy -180 <= lon_min < lon_max <= 180 and "
                         f"-90 <= lat_min < lat_max <= 90 (lon/lat order), got {bounds!r}")
    return lon0, lat0, lon1, lat1
