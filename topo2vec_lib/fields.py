"""Embedding fields of any DEM: every place of a regular grid embedded, tile by tile, into a COG or a zarr store.

What ``topo2vec embed`` runs (:mod:`topo2vec_lib.cli`); usable from Python too::

    from topo2vec_lib.fields import embed_field, open_field
    embed_field("my_dem.tif", model, res_m=30, stride_m=60, out="field.tif")   # model: an Embedder
    field = open_field("field.tif")          # xarray Dataset, embedding (y, x, feature), lazy

**The grid.** The DEM (any GeoTIFF/VRT, any CRS) is resampled once onto a metric grid of ``res_m`` pixels
whose pixel centres lie on multiples of ``res_m`` (the CRS given, the DEM's own when it is projected in metres,
else :func:`auto_crs`: the local UTM zone, or a Lambert azimuthal equal-area CRS centred on a DEM wider than
6 degrees of longitude). Places lie on multiples of ``stride_m``; the field covers every place whose patch
footprint (``17 x res_m``, at the coarsest scale of the embedder) lies inside the DEM's bounds. Resampling is
GDAL's ``average`` when the DEM's pixels are finer than ``res_m`` (the block means of the sampler's pyramid) and
``bilinear`` otherwise; ``res_m`` and ``stride_m`` may not be finer than :data:`FINER_TOLERANCE` x the DEM's
pixel size (a stride finer than the DEM repeats its pixels; a finer ``res_m`` invents detail).

**Patches.** When ``stride_m`` is a whole number of ``res_m`` pixels and the embedder samples one scale (every
learned model), a place's patch is exactly the 17 x 17 pixels of the grid around it (a strided window view: no
interpolation, no per-place gather). Otherwise a :class:`~topo2vec_lib.sampler.PatchSampler` over the tile's
pixels samples them (bilinear, its pyramid for coarser scales). Patches are normalised as the embedder was
trained (``sampler.normalize`` with its ``min_range_m``) and encoded by :func:`fast_encoder` (float32 by
default; ``precision="bf16"`` runs bfloat16 on CPUs that have it, faster, within :data:`BF16_TOLERANCE` of
float32). A place whose patch touches nodata (or leaves the DEM) gets NaN; a pixel of the grid is nodata when no
valid DEM pixel lies under it (GDAL's rule), and undeclared nodata sentinels (-32768, -9999, ...;
:func:`topo2vec_lib.terrain.sentinel_mask`) are masked before resampling.

**Tiles, memory, resume.** The field is cut into tiles of ``tile x tile`` places, computed by a Dask graph on
the threaded scheduler (``workers`` tiles at a time); each tile reads and resamples only its own window of the
DEM and embeds its places in batches, so memory is bounded by the tile, not the field. Finished tiles are kept
in ``<out>.partial/`` (a zarr store, one chunk per tile, and one small marker file per finished tile written
after its chunk): running the same command again after an interruption (Ctrl-C, ``kill -9``, a power cut)
computes only the missing tiles. ``job.json`` records the run's settings (DEM, model checksum, grid, dtype); a
partial run with other settings is refused (``restart=True`` discards it). The output is written last,
atomically, and the partial folder removed.

**Outputs.**

- ``*.tif``: a Cloud-Optimized GeoTIFF, one band per embedding dimension (``e000``, ``e001``, ...), band
  interleaved (GDAL writes 128 bands 3x faster so, and reads them as fast; :func:`_write_cog`), 256 x 256 blocks,
  ZSTD, overviews (``AVERAGE``: the mean vector of the cells below); :func:`cog_layout_errors` checks the layout.
  ``dtype``: ``float16`` (default; GDAL ``NBITS=16`` half floats, read as float32, NaN =
  no embedding), ``float32``, or ``int8``: ``value = offset[b] + scale[b] * q`` with ``q`` in -127..127, ``scale
  = (max - min) / 254`` and ``offset = (max + min) / 2`` of band ``b`` over the field (GDAL's per-band scale
  and offset, which GDAL/rasterio/QGIS apply), ``q = -128`` = no embedding; the error is at most ``scale / 2``.
- ``*.zarr``: a zarr store read by ``xarray.open_zarr``: ``embedding (y, x, feature)`` float16 or float32 (NaN =
  no embedding), chunks of one tile, coords ``x``, ``y`` (metres, cell centres), ``feature``.

Both carry the same metadata (:func:`open_field` returns it as attrs; the GeoTIFF as the ``TOPO2VEC_FIELD``
JSON tag): ``format``, ``version``, ``model`` (name, kind, checkpoint path and SHA-256 checksum, dim),
``res_m``, ``scales_m`` (every pixel size the embedder sampled), ``stride_m``, ``size``, ``normalisation``
(method and ``min_range_m``), ``crs_wkt``, ``dem`` (path, CRS, size), ``resampling``, ``dtype`` and, for int8,
``scale``/``offset``; flat attrs ``crs_wkt``, ``res_m``, ``stride_m``, ``embedder`` for
:mod:`topo2vec_lib.search`.

:func:`embed_points` embeds a list of places (``topo2vec embed --points``) on the same grid and
:func:`write_geoparquet` writes them as GeoParquet 1.1 (WKB points, ``geo`` metadata) with pyarrow alone.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from topo2vec_lib.grid import LONLAT, check_crs, transformer, xy_to_lonlat
from topo2vec_lib.inference import fast_encoder, resolve_precision
from topo2vec_lib.models.embedder import PATCH_SIZE, Embedder
from topo2vec_lib.sampler import normalize
from topo2vec_lib.storage import atomic_path, write_json

FIELD_FORMAT, FIELD_VERSION = "topo2vec-field", 1
DTYPES = ("float16", "float32", "int8")
OUTPUT_SUFFIXES = (".tif", ".tiff", ".zarr")
FINER_TOLERANCE = 0.9
"""``res_m`` and ``stride_m`` may be down to this fraction of the DEM's pixel size (a 1-arc-second DEM has
30.9 m pixels north-south: ``--res-m 30`` is allowed), not finer."""
DEFAULT_TILE = 256          # places per tile side
DEFAULT_BATCH = 8192        # places embedded at a time inside a tile (bounds the patch temporaries: ~19 MB)
INT8_NODATA = -128
COG_BLOCK = 256
TAG = "TOPO2VEC_FIELD"


class FieldJobError(ValueError):
    """A partial run of another job (other DEM, model or settings) or a running writer holds the output."""


# ------------------------------------------------------------------------------------------------ the DEM
@dataclass(frozen=True)
class Dem:
    """A DEM file checked by :func:`open_dem`: its CRS, size, transform, nodata and bounds."""

    path: Path
    crs_wkt: str
    width: int
    height: int
    transform: Any                        # affine.Affine
    nodata: float | None
    bounds: tuple[float, float, float, float]
    bounds_lonlat: tuple[float, float, float, float]

    def identity(self) -> dict:
        """What makes a run's input this DEM: path, size in bytes, modification time, raster size."""
        st = self.path.stat()
        return {"path": str(self.path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                "width": self.width, "height": self.height}

    def pixel_m(self, crs: str) -> float:
        """Size in metres of the DEM's central pixel in ``crs``: the geometric mean of its two sides."""
        col, row = self.width / 2, self.height / 2
        t = self.transform
        xs = np.array([t.c + t.a * col, t.c + t.a * (col + 1), t.c + t.a * col])
        ys = np.array([t.f + t.e * row, t.f + t.e * row, t.f + t.e * (row + 1)])
        x, y = transformer(self.crs_wkt, crs).transform(xs, ys)
        dx = math.hypot(x[1] - x[0], y[1] - y[0])
        dy = math.hypot(x[2] - x[0], y[2] - y[0])
        return math.sqrt(dx * dy)


def open_dem(path: str | os.PathLike) -> Dem:
    """Check a DEM file and describe it. ValueError naming the file when it is missing a CRS, unreadable or
    truncated, has other than one band, is smaller than 2 x 2 pixels or rotated; FileNotFoundError when absent."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.warp import transform_bounds

    from topo2vec_lib.download import validate_raster

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DEM {path} does not exist")
    if path.is_dir():
        raise ValueError(f"DEM {path} is a folder; give a GeoTIFF or VRT file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            validate_raster(path)
            with rasterio.open(path) as ds:
                crs, count, transform = ds.crs, ds.count, ds.transform
                width, height, nodata, bounds = ds.width, ds.height, ds.nodata, tuple(ds.bounds)
        except (RasterioError, ValueError) as err:
            raise ValueError(f"DEM {path} is not a readable GeoTIFF/VRT: truncated, corrupt or not a raster "
                             f"({type(err).__name__}: {err})") from None
    if crs is None:
        raise ValueError(f"DEM {path} has no CRS, so its places cannot be located; write one first "
                         f"(e.g. gdal_edit.py -a_srs EPSG:4326 {path})")
    if count != 1:
        raise ValueError(f"DEM {path} has {count} bands; an elevation raster has exactly one")
    if min(width, height) < 2:
        raise ValueError(f"DEM {path} is {height} x {width} pixels; a DEM needs at least 2 x 2")
    if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
        raise ValueError(f"DEM {path} is not north-up (transform {tuple(transform)[:6]}); warp it first "
                         f"(gdalwarp {path} north_up.tif)")
    wkt = crs.to_wkt()
    try:
        bl = transform_bounds(crs, LONLAT, *bounds, densify_pts=21)
    except Exception as err:  # noqa: BLE001 (PROJ errors of odd CRSs: say which file)
        raise ValueError(f"DEM {path}: its bounds cannot be transformed to lon/lat ({err})") from None
    return Dem(path=path.resolve(), crs_wkt=wkt, width=width, height=height, transform=transform,
               nodata=None if nodata is None else float(nodata), bounds=bounds,
               bounds_lonlat=(float(bl[0]), float(bl[1]), float(bl[2]), float(bl[3])))


def auto_crs(bounds_lonlat: Sequence[float]) -> str:
    """A metric CRS for a lon/lat box: its centre's UTM zone (EPSG:326xx north, 327xx south) when it spans at most
    6 degrees of longitude within latitudes -80..84, else a Lambert azimuthal equal-area CRS centred on it."""
    lon0, lat0, lon1, lat1 = (float(v) for v in bounds_lonlat)
    clon, clat = (lon0 + lon1) / 2, (lat0 + lat1) / 2
    if lon1 - lon0 <= 6.0 and lat0 >= -80.0 and lat1 <= 84.0:
        zone = min(60, int((clon + 180.0) // 6) + 1)
        return f"EPSG:{(32600 if clat >= 0 else 32700) + zone}"
    return f"+proj=laea +lat_0={clat:.4f} +lon_0={clon:.4f} +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"


def target_crs(dem: Dem, crs: str | None = None) -> str:
    """``crs`` if given (checked: projected, metres), the DEM's own CRS when it is projected in metres, else
    :func:`auto_crs` of the DEM's lon/lat bounds."""
    if crs is not None:
        return check_crs(crs)
    try:
        return check_crs(dem.crs_wkt)
    except ValueError:
        return auto_crs(dem.bounds_lonlat)


# ------------------------------------------------------------------------------------------------ the grid
def _number(name: str, value, flag: str | None = None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{flag or name} = {value!r} must be a positive number of metres")
    return v


@dataclass(frozen=True)
class FieldGrid:
    """The places of a field: ``x = x0 + stride_m * col`` (west->east), ``y = y0 - stride_m * row`` (north->south),
    metres of ``crs``; patches of ``size`` pixels at ``res_m`` on the pixel grid with centres at multiples of
    ``res_m``; ``coarsest_m``: the coarsest pixel size the embedder samples (its footprint decides which places fit)."""

    crs: str
    res_m: float
    stride_m: float
    x0: float
    y0: float
    nx: int
    ny: int
    coarsest_m: float
    size: int = PATCH_SIZE

    @property
    def x(self) -> np.ndarray:
        return self.x0 + self.stride_m * np.arange(self.nx)

    @property
    def y(self) -> np.ndarray:
        return self.y0 - self.stride_m * np.arange(self.ny)

    @property
    def places(self) -> int:
        return self.nx * self.ny

    @property
    def stride_px(self) -> int | None:
        """``stride_m / res_m`` when it is a whole number (the fast path), else None."""
        r = self.stride_m / self.res_m
        return int(round(r)) if abs(r - round(r)) < 1e-9 and round(r) >= 1 else None

    @property
    def transform(self):
        """The field's affine transform (one pixel per place)."""
        from affine import Affine

        return Affine(self.stride_m, 0.0, self.x0 - self.stride_m / 2, 0.0, -self.stride_m, self.y0 + self.stride_m / 2)

    def describe(self) -> dict:
        return {"crs_wkt": _wkt(self.crs), "res_m": self.res_m, "stride_m": self.stride_m, "x0": self.x0,
                "y0": self.y0, "nx": self.nx, "ny": self.ny, "coarsest_m": self.coarsest_m, "size": self.size}


def _wkt(crs: str) -> str:
    from pyproj import CRS

    return CRS.from_user_input(crs).to_wkt()


def field_grid(dem: Dem, res_m, stride_m, crs: str | None = None, coarsest_m: float | None = None) -> FieldGrid:
    """The grid of a field of ``dem`` (see the module docstring). ValueError when ``res_m`` or ``stride_m`` is not
    a positive number, finer than the DEM (:data:`FINER_TOLERANCE`), or when no patch fits in the DEM."""
    from rasterio.warp import transform_bounds

    res_m = _number("res_m", res_m, "--res-m")
    stride_m = _number("stride_m", stride_m, "--stride-m")
    coarsest = max(res_m, float(coarsest_m or res_m))
    crs = target_crs(dem, crs)
    pixel_m = dem.pixel_m(crs)
    for name, flag, v in (("stride_m", "--stride-m", stride_m), ("res_m", "--res-m", res_m)):
        if v < FINER_TOLERANCE * pixel_m:
            what = ("neighbouring places would share their pixels" if name == "stride_m"
                    else "interpolation would invent detail the DEM does not have")
            raise ValueError(f"{flag} {v:g} is finer than the DEM's pixels (about {pixel_m:.1f} m in the field's CRS): "
                             f"{what}; use {flag} >= {FINER_TOLERANCE * pixel_m:.1f} ({FINER_TOLERANCE:g} x the "
                             f"pixel size)")
    left, bottom, right, top = transform_bounds(dem.crs_wkt, crs, *dem.bounds, densify_pts=21)
    half = PATCH_SIZE * coarsest / 2
    xa, xb, ya, yb = left + half, right - half, bottom + half, top - half
    x0 = math.ceil(xa / stride_m - 1e-9) * stride_m
    y0 = math.floor(yb / stride_m + 1e-9) * stride_m
    nx = int(math.floor((xb - x0) / stride_m + 1e-9)) + 1 if xb >= x0 else 0
    ny = int(math.floor((y0 - ya) / stride_m + 1e-9)) + 1 if y0 >= ya else 0
    if nx < 1 or ny < 1:
        raise ValueError(f"DEM {dem.path.name} ({right - left:.0f} x {top - bottom:.0f} m) holds no place whose "
                         f"{PATCH_SIZE} px patch at {coarsest:g} m/px ({2 * half:g} m) fits inside it; use a smaller "
                         f"--res-m or a bigger DEM")
    return FieldGrid(crs=crs, res_m=res_m, stride_m=stride_m, x0=float(x0), y0=float(y0), nx=nx, ny=ny,
                     coarsest_m=coarsest)


def tiles(grid: FieldGrid, tile: int) -> list[tuple[int, int, slice, slice]]:
    """``(tile_row, tile_col, rows, cols)`` of every tile of ``tile x tile`` places, row-major."""
    out = []
    for r, r0 in enumerate(range(0, grid.ny, tile)):
        for c, c0 in enumerate(range(0, grid.nx, tile)):
            out.append((r, c, slice(r0, min(r0 + tile, grid.ny)), slice(c0, min(c0 + tile, grid.nx))))
    return out


# ------------------------------------------------------------------------------------------------ resampling
@dataclass
class _Warper:
    """Reads windows of the DEM resampled onto the field's pixel grid (pixel (i, j) centred on
    (i * res_m, j * res_m)); counts undeclared nodata sentinels it masked."""

    dem: Dem
    crs: str
    res_m: float
    sentinels: int = 0
    sentinel_values: set = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def resampling(self) -> str:
        return "average" if self.dem.pixel_m(self.crs) < self.res_m * (1 - 1e-6) else "bilinear"

    def read(self, i0: int, j0: int, w: int, h: int) -> np.ndarray:
        """``(h, w)`` float32 metres: pixel columns ``i0..i0+w-1`` (west->east) and rows ``j0, j0-1, ...``
        (north->south) of the grid; NaN = nodata or outside the DEM."""
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.transform import from_origin
        from rasterio.warp import transform_bounds
        from rasterio.windows import Window, from_bounds

        from topo2vec_lib.terrain import sentinel_mask

        r = self.res_m
        left, top = (i0 - 0.5) * r, (j0 + 0.5) * r
        dst = np.full((h, w), np.nan, dtype=np.float32)
        sb = transform_bounds(self.crs, self.dem.crs_wkt, left, top - h * r, left + w * r, top, densify_pts=21)
        win = from_bounds(*sb, transform=self.dem.transform)
        c0 = max(0, math.floor(win.col_off) - 2)
        r0 = max(0, math.floor(win.row_off) - 2)
        c1 = min(self.dem.width, math.ceil(win.col_off + win.width) + 2)
        r1 = min(self.dem.height, math.ceil(win.row_off + win.height) + 2)
        if c1 <= c0 or r1 <= r0:
            return dst
        window = Window(c0, r0, c1 - c0, r1 - r0)
        with rasterio.open(self.dem.path) as ds:
            src = ds.read(1, window=window, masked=True).astype(np.float32).filled(np.nan)
            src_transform = ds.window_transform(window)
        bad = sentinel_mask(src)
        if bad.any():
            with self._lock:
                self.sentinels += int(bad.sum())
                self.sentinel_values.update(float(v) for v in np.unique(src[bad])[:5])
            src[bad] = np.nan
        if not np.isfinite(src).any():
            return dst
        from rasterio.io import MemoryFile
        from rasterio.vrt import WarpedVRT

        # GDAL's warper approximates the coordinate transform to 1/8 pixel by default: at 1e-6 px every
        # pixel is transformed exactly, so a pixel's value does not depend on the window it is read with
        profile = dict(driver="GTiff", width=src.shape[1], height=src.shape[0], count=1, dtype="float32",
                       crs=self.dem.crs_wkt, transform=src_transform, nodata=np.nan)
        with MemoryFile() as mem:
            with mem.open(**profile) as ds_mem:
                ds_mem.write(src, 1)
            with mem.open() as ds_mem, WarpedVRT(
                    ds_mem, crs=self.crs, transform=from_origin(left, top, r, r), width=w, height=h,
                    resampling=getattr(Resampling, self.resampling), src_nodata=np.nan, nodata=np.nan,
                    tolerance=1e-6, dtype="float32") as vrt:
                dst = vrt.read(1)
        return dst

    def warn_sentinels(self) -> None:
        if self.sentinels:
            from topo2vec_lib.terrain import NodataSentinelWarning

            vals = ", ".join(f"{v:g}" for v in sorted(self.sentinel_values))
            warnings.warn(f"{self.dem.path}: {self.sentinels} pixel(s) hold heights no DEM can hold ({vals}): read "
                          f"as nodata (NaN). Declare the file's nodata (gdal_edit.py -a_nodata <value>) to silence "
                          f"this", NodataSentinelWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------ embedding
def _single_scale(embedder: Embedder, res_m: float) -> bool:
    """The embedder samples one 17 x 17 patch at ``res_m`` and normalises it (the fast path applies)."""
    return (type(embedder).embed_batch_xy is Embedder.embed_batch_xy
            and [float(s) for s in embedder.scales_for(res_m)] == [float(res_m)])


class _Encoder:
    """``(n, 17, 17)`` normalised patches -> ``(n, D)`` float32 through the embedder's ``embed_patches``, or, for a
    torch embedder on the CPU, through a frozen TorchScript copy of its network (:func:`fast_encoder`)."""

    def __init__(self, embedder: Embedder, optimise: bool = True, precision: str = "float32"):
        self.embedder = embedder
        self.fast = fast_encoder(embedder, precision=precision) if optimise else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.fast is None:
            return self.embedder.embed_patches(x)
        return self.fast(x)


def _embed_normalised(encoder: _Encoder, raw: np.ndarray) -> np.ndarray:
    """``(n, 17, 17)`` raw metres -> ``(n, D)`` float32; NaN rows where a patch has NaN."""
    from topo2vec_lib.models.embedder import check_vectors

    emb = encoder.embedder
    out = np.full((len(raw), int(emb.dim)), np.nan, dtype=np.float32)
    ok = np.isfinite(raw).all(axis=(1, 2))
    if ok.any():
        x = normalize(raw[ok] if not ok.all() else raw, min_range_m=emb.min_range_m)
        out[ok] = check_vectors(emb.name, encoder(x))
    return out


def embed_tile(encoder: _Encoder, warper: _Warper, grid: FieldGrid, rows: slice, cols: slice,
               batch: int = DEFAULT_BATCH) -> np.ndarray:
    """Embeddings ``(len(rows), len(cols), D)`` float32 of the places of one tile (NaN: no valid patch)."""
    from topo2vec_lib.regional import embed_xy

    embedder = encoder.embedder
    x, y = grid.x[cols], grid.y[rows]
    r, size = grid.res_m, grid.size
    sp = grid.stride_px
    if sp is not None and _single_scale(embedder, r):
        i0 = int(round(x[0] / r)) - size // 2
        j0 = int(round(y[0] / r)) + size // 2
        w = (x.size - 1) * sp + size
        h = (y.size - 1) * sp + size
        raster = warper.read(i0, j0, w, h)
        view = np.lib.stride_tricks.sliding_window_view(raster, (size, size))[::sp, ::sp]   # (ny, nx, 17, 17)
        out = np.empty((y.size, x.size, int(embedder.dim)), dtype=np.float32)
        rows_per = max(1, batch // x.size)
        for a in range(0, y.size, rows_per):
            block = np.ascontiguousarray(view[a:a + rows_per]).reshape(-1, size, size)
            out[a:a + rows_per] = _embed_normalised(encoder, block).reshape(-1, x.size, out.shape[2])
        return out
    # general path: a sampler over the tile's pixels (bilinear; its pyramid for coarser scales)
    from topo2vec_lib.grid import make_dataarray
    from topo2vec_lib.sampler import PatchSampler

    half = size * grid.coarsest_m / 2
    i0 = math.floor((x[0] - half) / r + 0.5) - 1
    i1 = math.ceil((x[-1] + half) / r - 0.5) + 1
    j1 = math.ceil((y[0] + half) / r - 0.5) + 1
    j0 = math.floor((y[-1] - half) / r + 0.5) - 1
    raster = warper.read(i0, j1, i1 - i0 + 1, j1 - j0 + 1)
    out = np.full((y.size, x.size, int(embedder.dim)), np.nan, dtype=np.float32)
    if not np.isfinite(raster).any():
        return out
    bounds = ((i0 - 0.5) * r, (j0 - 0.5) * r, (i1 + 0.5) * r, (j1 + 0.5) * r)
    da = make_dataarray(raster, bounds, r, grid.crs, region="field", region_lonlat=(-180, -90, 180, 90),
                        source="dem")
    sampler = PatchSampler(da, threads=1)
    xx, yy = np.meshgrid(x, y)
    out[:] = embed_xy(embedder, sampler, xx.ravel(), yy.ravel(), r, batch_size=batch).reshape(out.shape)
    return out


def model_metadata(embedder: Embedder, res_m: float, checkpoint: str | os.PathLike | None = None) -> dict:
    """What a field records about its model: name, kind, dim, the checkpoint (path and SHA-256 checksum, when
    given), the scales sampled at ``res_m`` and the normalisation."""
    cfg = dict(getattr(embedder, "config", {}) or {})
    meta: dict[str, Any] = {"name": str(embedder.name), "kind": str(embedder.kind), "dim": int(embedder.dim)}
    if checkpoint is not None:
        from topo2vec_lib.models.checkpoints import load_checkpoint

        meta["checkpoint"] = str(Path(checkpoint).resolve())
        meta["checksum"] = str(load_checkpoint(checkpoint)["checksum"])
    for key in ("k", "train_res_m", "stem", "scales_m", "seed"):
        if key in cfg:
            meta[key] = cfg[key]
    return {"model": meta, "res_m": float(res_m), "scales_m": [float(s) for s in embedder.scales_for(res_m)],
            "normalisation": cfg.get("normalisation") or {"method": "minmax" if _single_scale(embedder, res_m)
                                                          else "raw metres", "min_range_m": embedder.min_range_m}}


# ------------------------------------------------------------------------------------------------ the job
def _check_out(out: str | os.PathLike, dtype: str) -> Path:
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out {out}: expected a .tif (Cloud-Optimized GeoTIFF) or .zarr path")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {list(DTYPES)}")
    if dtype == "int8" and out.suffix.lower() == ".zarr":
        raise ValueError("--dtype int8 is for GeoTIFF output (per-band scale and offset); a .zarr field stores "
                         "float16 or float32")
    return out


def partial_dir(out: str | os.PathLike) -> Path:
    """Where an unfinished run of ``out`` keeps its finished tiles: ``<out>.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """One writer per partial folder: a ``lock`` file with the writer's pid (a dead writer's lock is taken over)."""
    from topo2vec_lib.storage import _pid_alive

    lock = folder / "lock"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _pid_alive(pid):
                raise FieldJobError(f"{folder} is being written by process {pid}; wait for it or stop it") from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def overview_factors(grid: FieldGrid, tile: int) -> list[int]:
    """Overview factors of a GeoTIFF field (2, 4, 8, ...): halve until the field fits in one COG block, as GDAL's
    COG driver does, as long as the factor divides the tile (each tile computes its own overview cells)."""
    out, f = [], 2
    while max(grid.nx, grid.ny) > COG_BLOCK * (f // 2) and tile % f == 0:
        out.append(f)
        f *= 2
    return out


def _halve(a: np.ndarray) -> np.ndarray:
    """``(h, w, D)`` float32 -> ``(ceil(h/2), ceil(w/2), D)``: the mean of the valid cells of each 2 x 2 block (NaN
    when it has none), as GDAL's AVERAGE overviews with nodata. A cell is valid when its vector is (NaN is all or
    none). Four strided views added (the vectors stay contiguous): 27 ms for a 256 x 256 x 128 tile."""
    h, w, _ = a.shape
    if h % 2 or w % 2:
        a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=np.nan)
    ok = np.isfinite(a[..., 0])
    z = np.where(ok[..., None], a, np.float32(0))
    s = z[0::2, 0::2] + z[1::2, 0::2]
    s += z[0::2, 1::2]
    s += z[1::2, 1::2]
    n = ok[0::2, 0::2].astype(np.float32) + ok[1::2, 0::2] + ok[0::2, 1::2] + ok[1::2, 1::2]
    with np.errstate(invalid="ignore", divide="ignore"):
        s /= n[..., None]
    return s


def _create_store(path: Path, grid: FieldGrid, dim: int, tile: int, dtype: str, attrs: dict,
                  factors: list[int] | None) -> None:
    """An empty field store (unwritten chunks read as NaN). ``factors`` None: the zarr output itself (xarray
    layout ``(y, x, feature)``: coords, attrs, compressed); else the working store of a GeoTIFF output, band-major
    ``(D, y, x)`` (what GDAL writes fastest; pixel-interleaved writes of 128 bands were 5x slower): ``embedding``
    and one ``overview_<f>`` array per factor, uncompressed (written once, read once)."""
    store_dtype = "float32" if dtype == "float32" else "float16"
    if factors is None:
        import dask.array as da

        emb = da.full((grid.ny, grid.nx, dim), np.nan, dtype=store_dtype, chunks=(tile, tile, dim))
        ds = xr.Dataset({"embedding": (("y", "x", "feature"), emb)},
                        coords={"y": grid.y, "x": grid.x, "feature": np.arange(dim)}, attrs=attrs)
        ds["embedding"].attrs["description"] = "embedding of the 17 x 17 patch at res_m m/px; NaN: no valid patch"
        with atomic_path(path, is_dir=True) as tmp:
            ds.to_zarr(tmp, mode="w", compute=False, consolidated=False,
                       encoding={"embedding": {"chunks": (tile, tile, dim), "_FillValue": np.nan}})
        return
    import zarr

    with atomic_path(path, is_dir=True) as tmp:
        group = zarr.open_group(tmp, mode="w")
        group.create_array("embedding", shape=(dim, grid.ny, grid.nx), chunks=(dim, tile, tile), dtype=store_dtype,
                           fill_value=np.nan, compressors=None)
        for f in factors:
            group.create_array(f"overview_{f}", shape=(dim, -(-grid.ny // f), -(-grid.nx // f)),
                               chunks=(dim, tile // f, tile // f), dtype=store_dtype, fill_value=np.nan,
                               compressors=None)


def _write_chunk(store: Path, rows: slice, cols: slice, vec: np.ndarray, dtype: str,
                 factors: list[int] | None) -> dict:
    """Write one tile's vectors ``(h, w, D)`` (and, for a GeoTIFF output, its overview cells) into the store; return
    its statistics (valid count, per-band min and max)."""
    import torch
    import zarr

    arr = zarr.open_array(store / "embedding", mode="r+")
    t = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float32))
    flat = t.reshape(-1, t.shape[2])
    v = flat[torch.isfinite(flat[:, 0])]                 # a cell's vector is all finite or all NaN
    n = int(v.shape[0])
    lo, hi = (v.amin(0).tolist(), v.amax(0).tolist()) if n else (None, None)
    tdtype = torch.float32 if arr.dtype == np.float32 else torch.float16
    if tdtype == torch.float16 and lo is not None and hi is not None and max(-min(lo), max(hi)) > 65504:
        raise ValueError(f"embedding values up to {float(np.nanmax(np.abs(vec))):g} exceed the float16 range "
                         "(65504); use --dtype float32")
    data = t.to(tdtype)
    if factors is None:
        arr[rows, cols, :] = data.numpy()
    else:                                   # band-major working store of a GeoTIFF output
        arr[:, rows, cols] = data.permute(2, 0, 1).contiguous().numpy()
        level = t.numpy()
        for f in factors:
            level = _halve(level)
            ovr = zarr.open_array(store / f"overview_{f}", mode="r+")
            r0, c0 = rows.start // f, cols.start // f
            ovr[:, r0:r0 + level.shape[0], c0:c0 + level.shape[1]] = \
                torch.from_numpy(level).to(tdtype).permute(2, 0, 1).contiguous().numpy()
    return {"rows": [rows.start, rows.stop], "cols": [cols.start, cols.stop], "valid": n,
            "min": lo, "max": hi}


def embed_field(dem: str | os.PathLike | Dem, embedder: Embedder, *, res_m: float | None = None,
                stride_m: float | None = None, out: str | os.PathLike, crs: str | None = None,
                dtype: str = "float16", tile: int = DEFAULT_TILE, workers: int = 2, batch: int = DEFAULT_BATCH,
                checkpoint: str | os.PathLike | None = None, restart: bool = False, overwrite: bool = False,
                optimise: bool = True, precision: str = "float32", progress: bool | Callable[[int], None] = False,
                timings: dict | None = None) -> Path:
    """Embed every place of the grid of ``dem`` (see the module docstring) into ``out`` (``.tif`` or ``.zarr``).

    ``res_m``: patch pixel size (default: the embedder's ``res_m``); ``stride_m``: place spacing (default ``2 *
    res_m``); ``crs``: the field's metric CRS (default :func:`target_crs`); ``tile``: places per tile side;
    ``workers``: tiles computed at once (Dask threads); ``batch``: places embedded at a time; ``checkpoint``: the
    model file (its path and checksum go in the metadata); ``restart``: discard a partial run; ``overwrite``: replace
    an existing ``out``; ``optimise``: encode with :func:`fast_encoder` when it applies; ``precision``: its
    arithmetic, ``float32`` (default, equal to the eager model) or ``bf16`` (faster on CPUs with native bfloat16,
    vectors about 1 % from float32, cosine > 0.999; recorded in the metadata); ``progress``: a tqdm bar (True) or a
    callback given the number of places finished; ``timings``: a dict filled with the seconds of each phase
    (``prepare``, ``tiles``, ``write``). Returns ``out``.
    """
    import time

    import dask

    t_start = time.perf_counter()
    timings = {} if timings is None else timings
    out = _check_out(out, dtype)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    dem = dem if isinstance(dem, Dem) else open_dem(dem)
    if not isinstance(embedder, Embedder):
        raise ValueError(f"embedder {embedder!r} must be a topo2vec_lib.models.Embedder")
    res_m = float(embedder.res_m) if res_m is None else _number("res_m", res_m, "--res-m")
    stride_m = 2 * res_m if stride_m is None else _number("stride_m", stride_m, "--stride-m")
    for name, v, low in (("tile", tile, 1), ("workers", workers, 1), ("batch", batch, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"--{name} {v!r} must be an integer >= {low}")
    precision = resolve_precision(precision)
    coarsest = max(float(s) for s in embedder.scales_for(res_m))
    grid = field_grid(dem, res_m, stride_m, crs, coarsest)
    warper = _Warper(dem, grid.crs, grid.res_m)
    fast = optimise and grid.stride_px is not None and _single_scale(embedder, grid.res_m)
    precision = precision if fast else "float32"          # the eager encoder runs float32
    meta = {"format": FIELD_FORMAT, "version": FIELD_VERSION, **model_metadata(embedder, res_m, checkpoint),
            "stride_m": grid.stride_m, "size": grid.size, "crs_wkt": _wkt(grid.crs), "resampling": warper.resampling,
            "dtype": dtype, "precision": precision, "grid": grid.describe(),
            "dem": {"path": str(dem.path), "crs_wkt": dem.crs_wkt, "width": dem.width, "height": dem.height,
                    "bounds_lonlat": list(dem.bounds_lonlat)}}
    job = {"dem": dem.identity(), "model": meta["model"], "grid": grid.describe(), "tile": int(tile), "dtype": dtype,
           "scales_m": meta["scales_m"], "precision": precision, "format_version": FIELD_VERSION}
    work = partial_dir(out)
    if restart and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    with _lock(work):
        job_path, store, marks = work / "job.json", work / "field.zarr", work / "tiles"
        if job_path.exists():
            old = json.loads(job_path.read_text())
            if old != json.loads(json.dumps(job)):
                diff = sorted(k for k in set(old) | set(job) if old.get(k) != json.loads(json.dumps(job)).get(k))
                raise FieldJobError(f"{work} holds a partial run with other settings ({', '.join(diff)} differ); "
                                    f"delete it or pass --restart to start afresh")
        factors = overview_factors(grid, int(tile)) if out.suffix.lower() != ".zarr" else None
        if not store.exists() or not job_path.exists():
            marks.mkdir(exist_ok=True)
            for f in marks.iterdir():
                f.unlink()
            attrs = {"topo2vec_field": json.dumps(meta), "crs_wkt": meta["crs_wkt"], "res_m": grid.res_m,
                     "stride_m": grid.stride_m, "size": grid.size, "embedder": str(embedder.name)}
            _create_store(store, grid, int(embedder.dim), int(tile), dtype, attrs, factors)
            write_json(job_path, job)
        todo, done_places = [], 0
        for r, c, rows, cols in tiles(grid, int(tile)):
            if (marks / f"r{r}_c{c}.json").exists():
                done_places += (rows.stop - rows.start) * (cols.stop - cols.start)
            else:
                todo.append((r, c, rows, cols))
        encoder = _Encoder(embedder, fast and bool(todo), precision)
        bar, tick = _progress(progress, grid.places, done_places, len(todo))
        lock = threading.Lock()
        t_tiles = time.perf_counter()
        timings["prepare"] = t_tiles - t_start

        def one(r: int, c: int, rows: slice, cols: slice) -> None:
            vec = embed_tile(encoder, warper, grid, rows, cols, batch)
            stats = _write_chunk(store, rows, cols, vec, dtype, factors)
            write_json(marks / f"r{r}_c{c}.json", stats)
            with lock:
                tick((rows.stop - rows.start) * (cols.stop - cols.start))

        try:
            if todo:
                tasks = [dask.delayed(one, pure=False)(*t) for t in todo]
                with _torch_threads(workers):
                    dask.compute(*tasks, scheduler="threads", num_workers=int(workers))
        finally:
            if bar is not None:
                bar.close()
        warper.warn_sentinels()
        t_write = time.perf_counter()
        timings["tiles"] = t_write - t_tiles
        timings["tiles_done_before"] = done_places
        stats = [json.loads(p.read_text()) for p in sorted(marks.glob("r*_c*.json"))]
        meta.update(_field_stats(stats, int(embedder.dim)))
        if out.suffix.lower() == ".zarr":
            _finish_zarr(store, out, meta)
        else:
            _write_cog(store, out, meta, grid, dtype, factors or [])
    shutil.rmtree(work, ignore_errors=True)
    timings["write"] = time.perf_counter() - t_write
    return out


@contextlib.contextmanager
def _torch_threads(workers: int) -> Iterator[None]:
    """Torch intra-op threads while ``workers`` tiles run at once: the cores shared among them (at least 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _progress(progress, total: int, initial: int, n_tiles: int):
    if callable(progress):
        done = [initial]

        def tick(n: int) -> None:
            done[0] += n
            progress(done[0])
        return None, tick
    if not progress:
        return None, lambda n: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit="place", unit_scale=True, dynamic_ncols=True,
               desc="embed" + (f" (resumed: {initial:,} places done)" if initial else ""), smoothing=0.1)
    return bar, bar.update


def _field_stats(stats: list[dict], dim: int) -> dict:
    valid = sum(s["valid"] for s in stats)
    mins = [s["min"] for s in stats if s["min"] is not None]
    maxs = [s["max"] for s in stats if s["max"] is not None]
    lo = np.min(np.asarray(mins, dtype=np.float64), axis=0) if mins else np.zeros(dim)
    hi = np.max(np.asarray(maxs, dtype=np.float64), axis=0) if maxs else np.zeros(dim)
    return {"valid_places": int(valid), "band_min": lo.tolist(), "band_max": hi.tolist()}


def _finish_zarr(store: Path, out: Path, meta: dict) -> None:
    import zarr

    group = zarr.open_group(store, mode="r+")
    group.attrs["topo2vec_field"] = json.dumps(meta)
    with atomic_path(out, is_dir=True) as tmp:
        os.replace(store, tmp)


def int8_scaling(meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``(scale, offset)`` float64 of an int8 field: ``value = offset + scale * q``, q in -127..127."""
    lo, hi = np.asarray(meta["band_min"], np.float64), np.asarray(meta["band_max"], np.float64)
    scale = np.maximum(hi - lo, 1e-12) / 254.0
    return scale, (hi + lo) / 2.0


def _write_cog(store: Path, out: Path, meta: dict, grid: FieldGrid, dtype: str, factors: list[int]) -> None:
    """The working store -> an uncompressed GeoTIFF of the full field carrying the metadata, band names and (int8)
    scales, with its overviews as GDAL's external overview chain (``full.tif.ovr`` the factor 2 level,
    ``full.tif.ovr.ovr`` factor 4, ...; row blocks: bounded memory) -> a band-interleaved COG: GDAL's GTiff driver
    with ``COPY_SRC_OVERVIEWS=YES`` (the way COGs were made before GDAL's COG driver, with the same layout: IFDs
    first, then the overviews' blocks smallest first, the full resolution last; :func:`cog_layout_errors`), which
    keeps these overviews instead of computing its own (that took 100 s for a 128-band 2.8M-cell field).

    Band-interleaved because GDAL 3.10's COG driver only writes pixel-interleaved files and interleaving 128 bands
    is its bottleneck: for the 2.8M-cell float16 field of ``benchmarks/embed_field.py`` the copy took 24 s
    pixel-interleaved (one core busy interleaving) and 8 s band-interleaved, whose file is also smaller (409 vs
    ~500 MiB) and as fast to read (whole rows 2.4 vs 3.0 s). No VRT between the stages: reading 128 VRT bands cost
    10x the plain copy (5.3 s vs 0.5 s for 590k cells)."""
    import rasterio
    import torch
    import zarr
    from rasterio.shutil import copy as rio_copy
    from rasterio.windows import Window

    dim = zarr.open_array(store / "embedding", mode="r").shape[0]
    if dtype == "int8":
        scale, offset = int8_scaling(meta)
        meta["scale"], meta["offset"] = scale.tolist(), offset.tolist()
    nodata = INT8_NODATA if dtype == "int8" else float("nan")

    def stage(name: str, path: Path, transform, describe: bool) -> None:
        arr = zarr.open_array(store / name, mode="r")
        ny, nx = arr.shape[1:]
        profile = dict(driver="GTiff", width=nx, height=ny, count=dim, crs=grid.crs, transform=transform,
                       tiled=True, blockxsize=COG_BLOCK, blockysize=COG_BLOCK, interleave="band", nodata=nodata,
                       dtype="int8" if dtype == "int8" else "float32", BIGTIFF="IF_SAFER")
        with rasterio.open(path, "w", **profile) as dst:
            step = arr.chunks[1]
            for r0 in range(0, ny, step):
                # (D, rows, nx) float32; torch widens half floats 3-4x faster than numpy (0.6 vs 2.3 s for 2.8M cells)
                block = torch.from_numpy(np.ascontiguousarray(arr[:, r0:r0 + step])).float().numpy()
                if dtype == "int8":
                    ok = np.isfinite(block).all(axis=0)
                    q = np.clip(np.rint((block - offset[:, None, None]) / scale[:, None, None]), -127, 127)
                    q[:, ~ok] = INT8_NODATA
                    block = q.astype(np.int8)
                dst.write(block, window=Window(0, r0, nx, block.shape[1]))
            if describe:                                   # CreateCopy copies these from its source
                dst.update_tags(**{TAG: json.dumps(meta)})
                for b in range(dim):
                    dst.set_band_description(b + 1, f"e{b:03d}")
                if dtype == "int8":
                    dst.scales, dst.offsets = tuple(meta["scale"]), tuple(meta["offset"])

    with atomic_path(out) as final:
        full = final.parent / "full.tif"
        stage("embedding", full, grid.transform, describe=True)
        level = full
        for f in factors:                                  # GDAL opens <file>.ovr as <file>'s overviews, recursively
            level = level.with_name(level.name + ".ovr")
            stage(f"overview_{f}", level, grid.transform * grid.transform.scale(f, f), describe=False)
        opts = dict(driver="GTiff", TILED="YES", BLOCKXSIZE=COG_BLOCK, BLOCKYSIZE=COG_BLOCK, INTERLEAVE="BAND",
                    COMPRESS="ZSTD", ZSTD_LEVEL=1, BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS",
                    COPY_SRC_OVERVIEWS="YES" if factors else "NO")
        # float16 without predictor (GDAL's floating-point one on half floats cost 45 % more time for a 3 % larger
        # file); float32 with it (11 % smaller, as fast)
        if dtype == "float16":
            opts["NBITS"] = 16
        elif dtype == "float32":
            opts["PREDICTOR"] = 3
        rio_copy(full, final, **opts)


def cog_layout_errors(path: str | os.PathLike) -> list[str]:
    """What keeps the GeoTIFF ``path`` from being a Cloud-Optimized GeoTIFF, by the rules of GDAL's
    ``validate_cloud_optimized_geotiff.py`` (empty list: it is one): tiled; overviews internal; the main IFD at
    the start of the file (offset 8 or 16, or right after GDAL's structural-metadata header) and every IFD before
    the image data; each overview's first block after the next smaller overview's, the full resolution's last."""
    import rasterio

    errors: list[str] = []
    with rasterio.open(path) as ds:
        if ds.driver != "GTiff":
            return [f"{path} is a {ds.driver} file, not a GeoTIFF"]
        if any(Path(f).name.endswith(".ovr") for f in ds.files):
            errors.append("overviews are in an external .ovr file; a COG holds them inside")
        if max(ds.width, ds.height) > 512 and ds.block_shapes[0][1] == ds.width:
            errors.append(f"{ds.width} x {ds.height} pixels but not tiled")
        n_ovr = len(ds.overviews(1))

        def item(key: str, ovr: int | None) -> int:
            kw = {} if ovr is None else {"ovr": ovr}
            return int(ds.get_tag_item(key, "TIFF", bidx=1, **kw) or -1)

        levels: list[int | None] = [None, *range(n_ovr)]
        ifds = [item("IFD_OFFSET", lv) for lv in levels]
        data = [item("BLOCK_OFFSET_0_0", lv) for lv in levels]
    with open(path, "rb") as f:
        head = f.read(64)
    ghost = b"GDAL_STRUCTURAL_METADATA_SIZE=" in head
    if ifds[0] not in (8, 16) and not ghost:
        errors.append(f"the main IFD is at byte {ifds[0]}, not at the start of the file (8 or 16)")
    first_data = min((d for d in data if d > 0), default=None)      # None: no block written at all
    if ifds != sorted(ifds) or (first_data is not None and max(ifds) > first_data):
        errors.append(f"the IFDs (at bytes {ifds}) are not all before the image data, in order")
    for i in range(n_ovr - 1, 0, -1):
        if data[i] <= data[i + 1]:
            errors.append(f"overview {i - 1}'s data lies before overview {i}'s: the smallest must come first")
    if n_ovr and data[0] <= max(data[1:]):
        errors.append("the full resolution's data lies before an overview's: it must come last")
    return errors


# ------------------------------------------------------------------------------------------------ reading
def open_field(path: str | os.PathLike, chunks: int = 512) -> xr.Dataset:
    """A field written by :func:`embed_field` (``.tif`` or ``.zarr``) as a lazy Dataset: ``embedding (y, x,
    feature)`` (float32 for a GeoTIFF, int8 fields already scaled; NaN = no embedding), coords ``x``, ``y``,
    ``feature``; attrs: the metadata (module docstring) plus flat ``crs_wkt``, ``res_m``, ``stride_m``,
    ``embedder``. ValueError when ``path`` is not a topo2vec field."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"field {path} does not exist (write one with topo2vec embed)")
    if path.suffix.lower() == ".zarr" or path.is_dir():
        try:
            ds = xr.open_zarr(path, consolidated=False)
            meta = json.loads(ds.attrs["topo2vec_field"])
        except Exception as err:  # noqa: BLE001 (zarr raises many types for a folder that is not a store)
            raise ValueError(f"{path} is not a topo2vec embedding field (zarr with 'topo2vec_field' metadata): "
                             f"{type(err).__name__}: {err}") from None
        emb = ds["embedding"]
    else:
        import rasterio
        import rioxarray

        try:
            with rasterio.open(path) as src:
                tags = src.tags()
            meta = json.loads(tags[TAG])
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{path} is not a topo2vec embedding field (a GeoTIFF with the {TAG} tag): "
                             f"{type(err).__name__}: {err}") from None
        with warnings.catch_warnings():          # "scales differ across bands": applied below, per band
            warnings.simplefilter("ignore", UserWarning)
            raw = rioxarray.open_rasterio(path, chunks={"band": -1, "y": chunks, "x": chunks}, mask_and_scale=False)
        assert isinstance(raw, xr.DataArray)
        raw = raw.drop_vars("spatial_ref", errors="ignore")
        if meta.get("dtype") == "int8":
            scale = xr.DataArray(np.asarray(meta["scale"], np.float32), dims="band")
            offset = xr.DataArray(np.asarray(meta["offset"], np.float32), dims="band")
            emb = (raw.astype(np.float32) * scale + offset).where(raw != INT8_NODATA)
        else:
            emb = raw.astype(np.float32)
        emb = emb.rename(band="feature").assign_coords(feature=np.arange(raw.sizes["band"]))
        emb = emb.transpose("y", "x", "feature")
        emb.attrs = {}
        ds = xr.Dataset({"embedding": emb})
    ds.attrs = {**meta, "crs_wkt": meta["crs_wkt"], "res_m": meta["res_m"], "stride_m": meta["stride_m"],
                "embedder": meta["model"]["name"], "path": str(path)}
    return ds


def field_lonlat_bounds(ds: xr.Dataset) -> tuple[float, float, float, float]:
    """The lon/lat box of a field's cell centres."""
    x, y = ds["x"].values, ds["y"].values
    xs = np.concatenate([x, x, np.full(y.size, x[0]), np.full(y.size, x[-1])])
    ys = np.concatenate([np.full(x.size, y[0]), np.full(x.size, y[-1]), y, y])
    lon, lat = xy_to_lonlat(ds.attrs["crs_wkt"], xs, ys)
    return float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())


def dem_on_field(dem: str | os.PathLike | Dem, ds: xr.Dataset, max_px: int = 1200) -> xr.DataArray:
    """The DEM resampled into the field's CRS over the field's extent (for hillshades), at most ``max_px``
    pixels a side: a terrain DataArray (metres, NaN = nodata)."""
    from topo2vec_lib.grid import make_dataarray

    dem = dem if isinstance(dem, Dem) else open_dem(dem)
    x, y = ds["x"].values, ds["y"].values
    stride = float(ds.attrs["stride_m"])
    half = PATCH_SIZE * float(ds.attrs["res_m"]) / 2
    left, right, bottom, top = x[0] - half, x[-1] + half, y[-1] - half, y[0] + half
    res = max((right - left) / max_px, (top - bottom) / max_px, float(ds.attrs["res_m"]), stride / 4)
    res = float(np.ceil(res))
    warper = _Warper(dem, ds.attrs["crs_wkt"], res)
    i0, i1 = math.floor(left / res), math.ceil(right / res)
    j0, j1 = math.floor(bottom / res), math.ceil(top / res)
    values = warper.read(i0, j1, i1 - i0 + 1, j1 - j0 + 1)
    bounds = ((i0 - 0.5) * res, (j0 - 0.5) * res, (i1 + 0.5) * res, (j1 + 0.5) * res)
    return make_dataarray(values, bounds, res, ds.attrs["crs_wkt"], region="field",
                          region_lonlat=(-180, -90, 180, 90), source="dem")


def pca_rgb(ds: xr.Dataset, max_px: int = 800, sample: int = 50_000, seed: int = 0) -> xr.DataArray:
    """The field's first three principal components as colours: ``(band=3, y, x)`` float32 in [0, 1] (each
    component stretched between its 2nd and 98th percentiles), NaN where the field has no embedding; the field is
    subsampled to at most ``max_px`` cells a side (every n-th cell)."""
    emb = ds["embedding"]
    step = max(1, int(math.ceil(max(emb.sizes["y"], emb.sizes["x"]) / max_px)))
    sub = emb.isel(y=slice(None, None, step), x=slice(None, None, step))
    v = np.asarray(sub.values, dtype=np.float32)
    ny, nx, d = v.shape
    flat = v.reshape(-1, d)
    ok = np.isfinite(flat).all(axis=1)
    rgb = np.full((3, ny, nx), np.nan, dtype=np.float32)
    if ok.sum() >= 3:
        rng = np.random.default_rng(seed)
        idx = np.flatnonzero(ok)
        fit = flat[rng.choice(idx, min(sample, idx.size), replace=False)].astype(np.float64)
        mean = fit.mean(axis=0)
        _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
        comps = vt[:3]
        proj = (flat[ok] - mean) @ comps.T
        for c in range(proj.shape[1]):
            lo, hi = np.percentile(proj[:, c], [2, 98])
            chan = np.full(ny * nx, np.nan, dtype=np.float32)
            chan[ok] = np.clip((proj[:, c] - lo) / max(hi - lo, 1e-12), 0, 1)
            rgb[c] = chan.reshape(ny, nx)
        for c in range(proj.shape[1], 3):
            rgb[c] = np.where(ok.reshape(ny, nx), 0.5, np.nan)
    return xr.DataArray(rgb, dims=("band", "y", "x"), coords={"band": [0, 1, 2], "y": sub["y"].values,
                                                              "x": sub["x"].values}, name="pca_rgb")


# ------------------------------------------------------------------------------------------------ points
def _on_grid(x: np.ndarray, y: np.ndarray, res_m: float) -> np.ndarray:
    """``(N,)`` bool: the place is a pixel centre of the grid (within 1e-6 px): its patch is an exact window."""
    fx, fy = x / res_m, y / res_m
    return (np.abs(fx - np.rint(fx)) < 1e-6) & (np.abs(fy - np.rint(fy)) < 1e-6)


def _windows(raster: np.ndarray, i0: int, j_top: int, x: np.ndarray, y: np.ndarray, res_m: float,
             size: int) -> np.ndarray:
    """The exact ``size`` x ``size`` windows ``(N, size, size)`` of ``raster`` (its column 0 is pixel ``i0``, its row
    0 pixel ``j_top``) centred on grid places ``x, y`` (the field's patches; bilinear sampling could let a NaN
    neighbour in through a 1e-12 weight)."""
    c = np.rint(x / res_m).astype(np.int64) - i0 - size // 2
    r = j_top - np.rint(y / res_m).astype(np.int64) - size // 2
    view = np.lib.stride_tricks.sliding_window_view(raster, (size, size))
    return np.ascontiguousarray(view[r, c])


def embed_points(dem: str | os.PathLike | Dem, embedder: Embedder, lon, lat, *, res_m: float | None = None,
                 crs: str | None = None, cell: int = 256) -> tuple[np.ndarray, dict]:
    """Embeddings ``(N, D)`` float32 of places ``lon, lat`` (degrees) on the DEM resampled onto the same pixel grid as
    :func:`embed_field` (a place on a field cell gets that cell's vector: its patch is the same exact window; other
    places are sampled bilinearly); NaN rows where the patch leaves the DEM or touches nodata. Places are grouped
    into cells of ``cell x cell`` pixels, each resampled once.
    Returns ``(vectors, metadata)``."""
    from topo2vec_lib.grid import check_lonlat_arrays, lonlat_to_xy

    dem = dem if isinstance(dem, Dem) else open_dem(dem)
    lon, lat = check_lonlat_arrays(np.atleast_1d(lon), np.atleast_1d(lat))
    res_m = float(embedder.res_m) if res_m is None else _number("res_m", res_m, "--res-m")
    coarsest = max(float(s) for s in embedder.scales_for(res_m))
    grid = field_grid(dem, res_m, max(res_m, dem.pixel_m(target_crs(dem, crs))), crs, coarsest)
    x, y = lonlat_to_xy(grid.crs, lon, lat)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    warper = _Warper(dem, grid.crs, res_m)
    out = np.full((x.size, int(embedder.dim)), np.nan, dtype=np.float32)
    side = cell * res_m
    key_x, key_y = np.floor(x / side).astype(np.int64), np.floor(y / side).astype(np.int64)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, k in enumerate(zip(key_x.tolist(), key_y.tolist())):
        groups.setdefault(k, []).append(i)
    from topo2vec_lib.grid import make_dataarray
    from topo2vec_lib.regional import embed_xy
    from topo2vec_lib.sampler import PatchSampler

    half = PATCH_SIZE * coarsest / 2
    single = _single_scale(embedder, res_m)
    encoder = _Encoder(embedder, optimise=False)
    for idx_list in groups.values():
        idx = np.asarray(idx_list)
        gx, gy = x[idx], y[idx]
        i0 = math.floor((gx.min() - half) / res_m + 0.5) - 1
        i1 = math.ceil((gx.max() + half) / res_m - 0.5) + 1
        j0 = math.floor((gy.min() - half) / res_m + 0.5) - 1
        j1 = math.ceil((gy.max() + half) / res_m - 0.5) + 1
        raster = warper.read(i0, j1, i1 - i0 + 1, j1 - j0 + 1)
        if not np.isfinite(raster).any():
            continue
        bounds = ((i0 - 0.5) * res_m, (j0 - 0.5) * res_m, (i1 + 0.5) * res_m, (j1 + 0.5) * res_m)
        exact = _on_grid(gx, gy, res_m) & single
        if exact.any():
            out[idx[exact]] = _embed_normalised(encoder, _windows(raster, i0, j1, gx[exact], gy[exact], res_m,
                                                                  PATCH_SIZE))
        if not exact.all():
            da = make_dataarray(raster, bounds, res_m, grid.crs, region="points",
                                region_lonlat=(-180, -90, 180, 90), source="dem")
            out[idx[~exact]] = embed_xy(embedder, PatchSampler(da, threads=1), gx[~exact], gy[~exact], res_m)
    warper.warn_sentinels()
    meta = {"format": "topo2vec-points", "version": FIELD_VERSION, **model_metadata(embedder, res_m),
            "crs_wkt": _wkt(grid.crs), "resampling": warper.resampling, "dem": {"path": str(dem.path)}}
    return out, meta


def dem_patches(dem: str | os.PathLike | Dem, lon, lat, res_m: float, crs: str, size: int = PATCH_SIZE
                ) -> np.ndarray:
    """The raw height patches ``(N, size, size)`` float32 metres (row 0 north) that a field in ``crs`` embeds at
    places ``lon, lat`` (the DEM resampled onto the field's grid, as :func:`embed_points`); NaN where the DEM has
    none (for figures: the query and its matches side by side)."""
    from topo2vec_lib.grid import check_lonlat_arrays, lonlat_to_xy, make_dataarray
    from topo2vec_lib.sampler import PatchSampler

    dem = dem if isinstance(dem, Dem) else open_dem(dem)
    lon, lat = check_lonlat_arrays(np.atleast_1d(lon), np.atleast_1d(lat))
    x, y = (np.asarray(v, np.float64) for v in lonlat_to_xy(crs, lon, lat))
    warper = _Warper(dem, crs, float(res_m))
    out = np.full((x.size, size, size), np.nan, dtype=np.float32)
    half = size * res_m / 2
    for i in range(x.size):
        i0 = math.floor((x[i] - half) / res_m + 0.5) - 1
        i1 = math.ceil((x[i] + half) / res_m - 0.5) + 1
        j0 = math.floor((y[i] - half) / res_m + 0.5) - 1
        j1 = math.ceil((y[i] + half) / res_m - 0.5) + 1
        raster = warper.read(i0, j1, i1 - i0 + 1, j1 - j0 + 1)
        if not np.isfinite(raster).any():
            continue
        bounds = ((i0 - 0.5) * res_m, (j0 - 0.5) * res_m, (i1 + 0.5) * res_m, (j1 + 0.5) * res_m)
        if _on_grid(x[i:i + 1], y[i:i + 1], res_m)[0]:
            out[i] = _windows(raster, i0, j1, x[i:i + 1], y[i:i + 1], res_m, size)[0]
            continue
        da = make_dataarray(raster, bounds, res_m, crs, region="patch", region_lonlat=(-180, -90, 180, 90),
                            source="dem")
        out[i] = PatchSampler(da, threads=1).patches_xy(x[i:i + 1], y[i:i + 1], res_m, size, allow_nodata=True)[0]
    return out


def read_places(path: str | os.PathLike):
    """Places of a ``.csv`` (columns ``lon``, ``lat``; other columns kept) or ``.geojson`` (Point features, their
    properties kept) file as a DataFrame with ``lon``, ``lat`` first. ValueError naming the file otherwise."""
    import pandas as pd

    from topo2vec_lib.grid import check_lonlat_arrays

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"places file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            df = pd.read_csv(path)
        except Exception as err:  # noqa: BLE001 (pandas parser errors)
            raise ValueError(f"{path} is not a readable CSV: {err}") from None
        cols = {c.lower().strip(): c for c in df.columns}
        missing = [c for c in ("lon", "lat") if c not in cols]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}: a places CSV has 'lon' and 'lat' (degrees, "
                             f"EPSG:4326); it has {list(df.columns)}")
        df = df.rename(columns={cols["lon"]: "lon", cols["lat"]: "lat"})
    elif suffix in (".geojson", ".json"):
        try:
            gj = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} is not readable GeoJSON: {err}") from None
        feats = gj.get("features") if isinstance(gj, dict) else None
        if not isinstance(feats, list):
            raise ValueError(f"{path} is not a GeoJSON FeatureCollection")
        rows = []
        for i, f in enumerate(feats):
            geom = (f or {}).get("geometry") or {}
            if geom.get("type") != "Point":
                raise ValueError(f"{path}: feature {i} is a {geom.get('type')!r}, not a Point")
            lo, la = geom["coordinates"][:2]
            rows.append({"lon": lo, "lat": la, **(f.get("properties") or {})})
        df = pd.DataFrame(rows, columns=None if rows else ["lon", "lat"])
    else:
        raise ValueError(f"--points {path}: expected a .csv (lon, lat columns) or .geojson file")
    if len(df) == 0:
        raise ValueError(f"{path} holds no places")
    try:
        check_lonlat_arrays(df["lon"].to_numpy(), df["lat"].to_numpy())
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return df[["lon", "lat"] + [c for c in df.columns if c not in ("lon", "lat")]].reset_index(drop=True)


def write_geoparquet(table, vectors: np.ndarray, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write places (a DataFrame with ``lon``, ``lat`` and any other columns) and their ``(N, D)`` vectors as
    GeoParquet 1.1: the table's columns, ``embedding`` (fixed-size list of D float32; NaN = no valid patch),
    ``valid`` (bool) and ``geometry`` (WKB points, lon/lat, OGC:CRS84) with the ``geo`` file metadata; ``metadata``
    goes in the ``topo2vec`` file metadata. Atomic. Written with pyarrow alone (WKB of a point is 21 bytes), so
    geopandas (``geopandas.read_parquet``), DuckDB, GDAL and QGIS read it without topo2vec."""
    import struct

    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.asarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if len(table) != n:
        raise ValueError(f"{len(table)} places but {n} vectors")
    lon, lat = table["lon"].to_numpy(np.float64), table["lat"].to_numpy(np.float64)
    wkb = [struct.pack("<BIdd", 1, 1, float(a), float(b)) for a, b in zip(lon, lat)]
    base = pa.Table.from_pandas(table.reset_index(drop=True), preserve_index=False)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), type=pa.float32()), d)
    valid = pa.array(np.isfinite(vectors).all(axis=1))
    t = base.append_column("embedding", emb).append_column("valid", valid) \
        .append_column("geometry", pa.array(wkb, type=pa.binary()))
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Point"],
                                    "bbox": [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]}}}
    meta = dict(t.schema.metadata or {})
    meta[b"geo"] = json.dumps(geo).encode()
    if metadata is not None:
        meta[b"topo2vec"] = json.dumps(metadata).encode()
    t = t.replace_schema_metadata(meta)
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(t, tmp, compression="zstd")
    return path


def lonlat_of_cells(ds: xr.Dataset, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of field cells ``(rows, cols)``."""
    return xy_to_lonlat(ds.attrs["crs_wkt"], ds["x"].values[cols], ds["y"].values[rows])
