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


def geotiff_terrain(path, bounds_xy, crs: str, res_m: float) -> xr.DataArray:
    """A local GeoTIFF/VRT (any CRS and resolution) reprojected onto the window ``bounds_xy`` at ``res_m``.

    Resampling is ``average`` when the source pixels are finer than ``res_m`` and ``bilinear`` otherwise.
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
    resampling = Resampling.average if finer else Resampling.bilinear
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
                                resampling=resampling, nodata=np.nan)
    except (RasterioIOError, rasterio.errors.RasterioError) as err:
        raise ValueError(f"{path} could not be read (truncated or corrupt?): {err}") from err
    values = np.asarray(out.values, dtype=np.float32)
    return make_dataarray(values, bounds_xy, res_m, crs, region="", region_lonlat=(-180, -90, 180, 90),
                          source="geotiff")


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


def open_region(terrain_dir: str | os.PathLike, region: str, chunks=None) -> xr.DataArray:
    """Open the terrain stage's output for ``region`` (``<terrain_dir>/<region>.zarr`` or ``.tif``)."""
    for ext in (".zarr", ".tif"):
        path = Path(terrain_dir) / f"{region}{ext}"
        if path.exists():
            return open_terrain(path, chunks=chunks)
    raise FileNotFoundError(f"no {region}.zarr or {region}.tif in {terrain_dir}; run the terrain stage first")
