"""Copernicus DEM GLO-30 from its public bucket: tile names, cached downloads, mosaic into the study grid.

The DEM is published as 1x1 degree Cloud-Optimized GeoTIFFs (EPSG:4326, 1 arc-second, heights in metres
above the EGM2008 geoid) at ``<base_url>/<name>/<name>.tif`` with names like
``Copernicus_DSM_COG_10_N47_00_E011_00_DEM``; the name gives the tile's south-west corner (N47, E011
covers lat 47..48, lon 11..12).

Sea is decided from the bucket's published tile list, ``<base_url>/tileList.txt`` (one tile name per line,
no ``.tif``), never from an HTTP 404: a tile absent from the list is open sea (or one of the few GLO-30
tiles not released to the public) and becomes NaN; a 404 for a listed tile (a wrong ``base_url``, a proxy or
a mirror without it) is a :class:`DownloadError` naming the URL, and nothing is cached for it. The list is
cached as ``tileList.txt`` (+ ``tileList.json``: its URL and when it was fetched) and fetched again once it
is older than ``TILE_LIST_MAX_AGE_S``, or at once when a listed tile answers 404. Tiles already in the cache
need no list, so a fully cached window works offline. Every tile is checked before use: a GeoTIFF (not an
HTML page sent with 200) in EPSG:4326 covering the 1x1 degree its name says. A window with no valid
height at all (all sea or all nodata) is an :class:`EmptyWindowError` naming its tiles; heights below
``MIN_HEIGHT_M`` (undeclared nodata sentinels such as -32767) become NaN with a warning.

Memory: :func:`copernicus_terrain` fills the output grid block by block (``block_px`` square blocks of
output pixels). For each block only the source pixels under it (plus a small margin) are read from the
tiles (windowed COG reads through ``rasterio.merge``) and reprojected with ``rasterio.warp.reproject``.
Peak memory is the float32 output (``4 * nx * ny`` bytes: 1 GB for a 5x5 degree polygon at 30 m, about
250 M pixels) plus one block's source and destination (about 40 MB at ``block_px=2048``) plus GDAL's
block cache (``GDAL_CACHE_MB``). Measured on 4 full-size synthetic tiles (3600 x 3600, 52 MB each): a
120 km window at 30 m (4000 x 4000 px, 64 MB) took 6-11 s and about 250 MB above the interpreter's
baseline. Every block is warped from a seamless mosaic of its own source window, so there are no seams
at tile or block edges; blocks differ from a one-piece warp only by GDAL's approximate transformer
(<= 0.125 source pixel).
"""
from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .download import DownloadError, HttpConfig, NotFoundError, check_url, download, fetch_bytes, validate_raster

DEFAULT_BASE_URL = "https://copernicus-dem-30m.s3.amazonaws.com"
"""Public, anonymous HTTPS endpoint of the GLO-30 bucket (``s3://copernicus-dem-30m``)."""

TILE_PREFIX = "Copernicus_DSM_COG_10"
TILE_LIST_NAME = "tileList.txt"
"""The bucket's list of existing tiles, at its root (one tile name per line)."""
TILE_LIST_MAX_AGE_S = 30 * 86400.0
"""A cached tile list older than this (seconds) is fetched again (the list changes only with a release)."""
MIN_HEIGHT_M = -1000.0
"""Heights below this are nodata sentinels, not terrain (the lowest land, the Dead Sea shore, is -430 m)."""
TILE_FOOTPRINT_TOL_DEG = 0.01
"""How far (degrees) a tile's edges may lie from the whole degrees its name gives (real tiles: half a pixel)."""
_NAME_RE = re.compile(r"Copernicus_DSM_COG_\d+_([NS])(\d{2})_00_([EW])(\d{3})_00_DEM")
GDAL_CACHE_MB = 512
"""GDAL's raster block cache while mosaicking (its default is 5% of RAM), so memory stays bounded."""
MARGIN_SRC_PX = 4
"""Source pixels read around every block (and the window), so bilinear/cubic kernels see their neighbours."""


class EmptyWindowError(ValueError):
    """The window has no valid height at all (every tile under it is sea or nodata there)."""


# ---------------------------------------------------------------- tile names
def tile_name(lon_deg: int, lat_deg: int) -> str:
    """Name of the tile whose south-west corner is (``lon_deg``, ``lat_deg``), integer degrees.

    ``tile_name(11, 47) == "Copernicus_DSM_COG_10_N47_00_E011_00_DEM"``; ``tile_name(-1, -1)`` is
    ``..._S01_00_W001_00_DEM`` (lat -1..0, lon -1..0).
    """
    lon_deg, lat_deg = int(lon_deg), int(lat_deg)
    if not (-180 <= lon_deg < 180 and -90 <= lat_deg < 90):
        raise ValueError(f"tile corner lon {lon_deg}, lat {lat_deg} is outside lon -180..179, lat -90..89")
    ns = f"{'N' if lat_deg >= 0 else 'S'}{abs(lat_deg):02d}_00"
    ew = f"{'E' if lon_deg >= 0 else 'W'}{abs(lon_deg):03d}_00"
    return f"{TILE_PREFIX}_{ns}_{ew}_DEM"


def tiles_for_bounds(lon_min: float, lat_min: float, lon_max: float, lat_max: float) -> list[str]:
    """Names of the 1x1 degree tiles covering a lon/lat box (degrees, EPSG:4326), north to south, west to east.

    A box edge exactly on a whole degree does not pull in the neighbouring tile. Boxes crossing the
    antimeridian are not supported (split them).
    """
    box = [float(v) for v in (lon_min, lat_min, lon_max, lat_max)]
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"lon/lat bounds must be finite numbers, got {box}")
    lon_min, lat_min, lon_max, lat_max = box
    if not (-180 <= lon_min < lon_max <= 180 and -90 <= lat_min < lat_max <= 90):
        raise ValueError(f"lon/lat bounds must satisfy -180 <= lon_min < lon_max <= 180 and "
                         f"-90 <= lat_min < lat_max <= 90, got {box}")
    lons = range(math.floor(lon_min), math.ceil(lon_max))
    lats = range(math.ceil(lat_max) - 1, math.floor(lat_min) - 1, -1)
    return [tile_name(lon, lat) for lat in lats for lon in lons]


def tile_url(name: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """``<base_url>/<name>/<name>.tif``."""
    return f"{base_url.rstrip('/')}/{name}/{name}.tif"


def tile_list_url(base_url: str = DEFAULT_BASE_URL) -> str:
    """``<base_url>/tileList.txt``."""
    return f"{base_url.rstrip('/')}/{TILE_LIST_NAME}"


def tile_corner(name: str) -> tuple[int, int]:
    """(lon, lat) of the south-west corner of a tile, from its name; ValueError for a name that is not one."""
    m = _NAME_RE.fullmatch(name)
    if not m:
        raise ValueError(f"{name!r} is not a Copernicus GLO-30 tile name (like {tile_name(11, 47)!r})")
    ns, lat, ew, lon = m.groups()
    return (-1 if ew == "W" else 1) * int(lon), (-1 if ns == "S" else 1) * int(lat)


# ---------------------------------------------------------------- the published tile list
def parse_tile_list(body: bytes, url: str) -> frozenset[str]:
    """The GLO-30 tile names in a ``tileList.txt`` body; :class:`DownloadError` naming ``url`` unless every
    non-empty line is a Copernicus tile name and at least one is a GLO-30 (``Copernicus_DSM_COG_10``) tile."""
    try:
        lines = body.decode("utf-8-sig").split()
    except UnicodeDecodeError:
        lines = None
    bad: Any = next((ln for ln in lines if not _NAME_RE.fullmatch(ln)), None) if lines is not None else body[:80]
    if lines is None or bad is not None:
        raise DownloadError(f"{url}: not a Copernicus tile list (one tile name per line, like "
                            f"{tile_name(11, 47)}); it holds {bad[:80]!r} (an HTML error or login page from a "
                            f"proxy, or a wrong base_url?)", url=url)
    names = frozenset(ln for ln in lines if ln.startswith(TILE_PREFIX + "_"))
    if not names:
        what = f"{len(lines)} names of another DEM (like {lines[0]!r}: the GLO-90 bucket?)" if lines else "nothing"
        raise DownloadError(f"{url}: the tile list names no GLO-30 tile ({TILE_PREFIX}_*), it holds {what}",
                            url=url)
    return names


def tile_list(cache_dir: str | os.PathLike, base_url: str | None = None, config: HttpConfig | None = None, *,
              max_age_s: float | None = None, refresh: bool = False) -> tuple[frozenset[str], bool]:
    """(names of the existing GLO-30 tiles, whether they came from the cache) for the bucket at ``base_url``.

    Cached as ``cache_dir/tileList.txt`` with ``tileList.json`` (URL, time fetched). The cached copy is used
    while it is younger than ``max_age_s`` (default :data:`TILE_LIST_MAX_AGE_S`) and came from the same URL;
    otherwise, or with ``refresh``, the list is fetched again. If that fails, an older copy from the same URL
    is used with a warning; with none, the :class:`DownloadError` says which URL failed and why.
    """
    from .storage import atomic_path, write_json

    cache_dir = Path(cache_dir)
    url = tile_list_url(check_url(base_url or DEFAULT_BASE_URL, "base_url"))
    max_age_s = TILE_LIST_MAX_AGE_S if max_age_s is None else float(max_age_s)
    txt, meta_path = cache_dir / TILE_LIST_NAME, cache_dir / "tileList.json"
    cached, age_s = None, 0.0
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("url") == url:
            age_s = time.time() - float(meta["fetched_unix"])
            cached = parse_tile_list(txt.read_bytes(), str(txt))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, DownloadError):
        cached = None  # absent, from another URL, or corrupt: fetch it
    if cached is not None and not refresh and 0 <= age_s < max_age_s:
        return cached, True
    try:
        body = fetch_bytes(url, config=config, check=lambda b: parse_tile_list(b, url))
    except DownloadError as err:
        if cached is not None:
            warnings.warn(f"could not fetch the Copernicus tile list again ({err}); using the copy cached "
                          f"{age_s / 86400:.1f} days ago in {txt}", stacklevel=2)
            return cached, True
        hint = (" (a wrong base_url, or a mirror that does not publish the tile list? It tells open sea from a "
                "missing download)") if err.status == 404 else ""
        raise DownloadError(f"{err}{hint}", url=url, status=err.status) from err
    with atomic_path(txt) as tmp:
        tmp.write_bytes(body)
    names = parse_tile_list(body, url)
    write_json(meta_path, {"url": url, "fetched_unix": time.time(),
                           "fetched_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tiles": len(names)})
    return names, False


def validate_tile(path: str | os.PathLike, name: str) -> None:
    """Raise unless ``path`` is a readable GeoTIFF (:func:`validate_raster`) in EPSG:4326 covering tile ``name``."""
    import rasterio

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(256)
    if head[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        text = head.decode("utf-8", "replace").strip()
        what = "0 bytes (an empty answer)" if not head else f"bytes starting {text[:60]!r}"
        hint = " (an HTML/XML page: a proxy's login or error page?)" if text.startswith("<") else ""
        raise ValueError(f"not a GeoTIFF: {what}{hint}")
    validate_raster(path)
    lon, lat = tile_corner(name)
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(path) as ds:
        if ds.crs is None or ds.crs.to_epsg() != 4326:
            raise ValueError(f"tile {name} is in {ds.crs}, not EPSG:4326 lon/lat")
        b = ds.bounds
        off = max(abs(b.left - lon), abs(b.right - lon - 1), abs(b.bottom - lat), abs(b.top - lat - 1))
        if off > TILE_FOOTPRINT_TOL_DEG:
            raise ValueError(f"tile {name} covers lon {b.left:.4f}..{b.right:.4f}, lat {b.bottom:.4f}..{b.top:.4f}, "
                             f"not lon {lon}..{lon + 1}, lat {lat}..{lat + 1} as its name says")


# ---------------------------------------------------------------- downloads
def fetch_tiles(names, cache_dir: str | os.PathLike = "data/raw/copernicus", base_url: str | None = None,
                config: HttpConfig | None = None, progress: bool = True, *,
                tile_list_max_age_s: float | None = None) -> dict[str, Path | None]:
    """Download the tiles ``names`` into ``cache_dir`` (``<name>.tif``); return ``{name: path or None}``.

    ``base_url`` None means :data:`DEFAULT_BASE_URL` (read at call time, so it can be re-pointed). A valid
    cached tile is used as it is (re-validated with :func:`validate_tile`; re-fetched if corrupt). Otherwise
    the published tile list (:func:`tile_list`, cached, ``tile_list_max_age_s``) decides: a tile absent from it
    is open sea, ``None``, and is not requested. A listed tile is downloaded; if it answers 404 the list is
    fetched again when it came from the cache, and a tile still listed is a :class:`DownloadError` naming the
    URL (nothing is cached for it). Raises :class:`DownloadError` naming the URL on any other failure.
    """
    from tqdm import tqdm

    cache_dir = Path(cache_dir)
    names = list(names)
    for name in names:
        if not (isinstance(name, str) and name.startswith(TILE_PREFIX)):
            raise ValueError(f"{name!r} is not a Copernicus GLO-30 tile name (like {tile_name(11, 47)!r})")
        tile_corner(name)
    base_url = check_url(base_url or DEFAULT_BASE_URL, "base_url")
    listed, list_checked = None, False  # list_checked: fetched (not cached) during this call
    paths: dict[str, Path | None] = {}
    for name in tqdm(names, desc="copernicus tiles", unit="tile", disable=not progress):
        (cache_dir / f"{name}.missing").unlink(missing_ok=True)  # 404 markers of older versions: never trusted
        tif = cache_dir / f"{name}.tif"
        check = lambda p, name=name: validate_tile(p, name)  # noqa: E731
        if tif.exists():
            try:
                check(tif)
                paths[name] = tif
                continue
            except Exception:  # noqa: BLE001  (a corrupt cache entry is fetched again below)
                tif.unlink()
        if listed is None:
            listed, cached = tile_list(cache_dir, base_url, config, max_age_s=tile_list_max_age_s)
            list_checked = not cached
        if name not in listed:
            paths[name] = None
            continue
        url = tile_url(name, base_url)
        try:
            paths[name] = download(url, tif, validate=check, config=config)
        except NotFoundError as err:
            if not list_checked:  # the cached list may be out of date: ask it again, once
                listed, _ = tile_list(cache_dir, base_url, config, refresh=True)
                list_checked = True
                if name not in listed:
                    paths[name] = None
                    continue
            raise DownloadError(f"{url}: HTTP 404 Not Found, but the tile list {tile_list_url(base_url)} lists "
                                f"{name}: a wrong base_url, or a proxy or mirror without this tile? Nothing was "
                                f"cached for it.", url=url, status=404) from err
    return paths


# ---------------------------------------------------------------- mosaic into the study grid
def copernicus_terrain(bounds_xy, crs: str = "EPSG:3035", res_m: float = 30.0, cache_dir="data/raw",
                       base_url: str | None = None, region: str | None = None, region_lonlat=None, *,
                       resampling: str = "bilinear", block_px: int = 2048, config: HttpConfig | None = None,
                       progress: bool = True) -> xr.DataArray:
    """Copernicus GLO-30 heights on the study grid ``bounds_xy`` = (xmin, ymin, xmax, ymax) metres of ``crs``.

    The grid has ``nx = round((xmax - xmin) / res_m)`` by ``ny = round((ymax - ymin) / res_m)`` pixels of
    ``res_m`` metres starting at the north-west corner (xmin, ymax); row 0 is north. Tiles are cached under
    ``cache_dir/copernicus``. ``resampling``: a rasterio resampling name (``bilinear`` for res_m near the
    native ~30 m, ``average`` when res_m is much coarser). Returns a terrain DataArray
    (docs/architecture.md): float32 metres, NaN where a tile is absent from the tile list (sea) or the source
    has nodata (declared, or below :data:`MIN_HEIGHT_M`: a warning), attrs ``res_m``, ``region`` (default
    ``"window"``), ``region_lonlat`` (default: the window's lon/lat box), ``source="copernicus"``,
    ``units="m"``, ``vertical_datum="EGM2008"``. Raises :class:`EmptyWindowError` naming the tiles when no
    pixel of the window has a height.
    """
    import rasterio
    import rioxarray  # noqa: F401  (registers .rio)
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.errors import CRSError
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    xmin, ymin, xmax, ymax = _check_bounds(bounds_xy)
    res_m = float(res_m)
    if not (math.isfinite(res_m) and res_m > 0):
        raise ValueError(f"res_m must be a positive number of metres, got {res_m!r}")
    try:
        dst_crs = CRS.from_user_input(crs)
    except CRSError as err:
        raise ValueError(f"crs {crs!r} is not a valid CRS (e.g. 'EPSG:3035'): {err}") from err
    if not dst_crs.is_projected:
        raise ValueError(f"crs {crs!r} must be a metric projected CRS (e.g. 'EPSG:3035')")
    try:
        method = Resampling[resampling]
    except KeyError:
        raise ValueError(f"unknown resampling {resampling!r}: use one of {[r.name for r in Resampling]}") from None
    block_px = int(block_px)
    if block_px < 1:
        raise ValueError(f"block_px must be >= 1, got {block_px!r}")
    nx, ny = int(round((xmax - xmin) / res_m)), int(round((ymax - ymin) / res_m))
    if nx < 1 or ny < 1:
        raise ValueError(f"window {bounds_xy} is smaller than one {res_m} m pixel")

    margin_deg = MARGIN_SRC_PX / 3600.0
    lon0, lat0, lon1, lat1 = transform_bounds(dst_crs, "EPSG:4326", xmin, ymin, xmax, ymax, densify_pts=21)
    box = (max(-180.0, lon0 - margin_deg), max(-90.0, lat0 - margin_deg),
           min(180.0, lon1 + margin_deg), min(90.0, lat1 + margin_deg))
    paths = fetch_tiles(tiles_for_bounds(*box), Path(cache_dir) / "copernicus", base_url, config, progress)

    out = np.full((ny, nx), np.nan, dtype=np.float32)
    dst_transform = from_origin(xmin, ymax, res_m, res_m)
    n_sentinel = 0
    if any(p is not None for p in paths.values()):
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            datasets = [rasterio.open(p) for p in paths.values() if p is not None]
            try:
                n_sentinel = _mosaic(datasets, out, xmin, ymax, res_m, dst_crs, method, block_px, (lat0 + lat1) / 2,
                                     progress)
            finally:
                for ds in datasets:
                    ds.close()
    if n_sentinel:
        warnings.warn(f"copernicus tiles {[n for n, p in paths.items() if p is not None]}: heights below "
                      f"{MIN_HEIGHT_M:g} m (undeclared nodata such as -32767; {n_sentinel} source pixel reads) "
                      f"were taken as nodata (NaN)", stacklevel=2)
    if not np.isfinite(out).any():
        base = base_url or DEFAULT_BASE_URL
        tiles = "; ".join(f"{n}: absent from {tile_list_url(base)} (open sea)" if p is None
                          else f"{tile_url(n, base)}: only nodata under the window" for n, p in paths.items())
        raise EmptyWindowError(f"the window {[xmin, ymin, xmax, ymax]} ({crs}; lon {lon0:.4f}..{lon1:.4f}, lat "
                               f"{lat0:.4f}..{lat1:.4f}) has no height at all: {tiles}. Move the window onto land "
                               f"(lon/lat in that order?)")

    x = xmin + (np.arange(nx) + 0.5) * res_m
    y = ymax - (np.arange(ny) + 0.5) * res_m
    region_lonlat = [lon0, lat0, lon1, lat1] if region_lonlat is None else region_lonlat
    da = xr.DataArray(out, dims=("y", "x"), coords={"y": y, "x": x}, name="elevation",
                      attrs={"res_m": res_m, "region": "window" if region is None else str(region),
                             "region_lonlat": [float(v) for v in region_lonlat], "source": "copernicus",
                             "units": "m", "vertical_datum": "EGM2008"})
    da = da.rio.write_crs(dst_crs.to_string()).rio.write_transform(dst_transform)
    return da


def _mosaic(datasets, out: np.ndarray, xmin: float, ymax: float, res_m: float, dst_crs, method, block_px: int,
            lat_mid: float, progress: bool) -> int:
    """Fill ``out`` (ny, nx), whose north-west corner is (xmin, ymax), block by block from ``datasets``;
    returns how many source pixels were nodata sentinels (below :data:`MIN_HEIGHT_M`)."""
    from rasterio.transform import from_origin
    from tqdm import tqdm

    if not datasets:
        return 0
    n_sentinel = 0
    ny, nx = out.shape
    blocks = [(r, c) for r in range(0, ny, block_px) for c in range(0, nx, block_px)]
    for r, c in tqdm(blocks, desc="copernicus mosaic", unit="block", disable=not progress or len(blocks) < 2):
        h, w = min(block_px, ny - r), min(block_px, nx - c)
        bx0, by1 = xmin + c * res_m, ymax - r * res_m
        block = np.full((h, w), np.nan, dtype=np.float32)
        n_sentinel += _warp_block(datasets, block, from_origin(bx0, by1, res_m, res_m), dst_crs,
                                  (bx0, by1 - h * res_m, bx0 + w * res_m, by1), method, lat_mid)
        out[r:r + h, c:c + w] = block
    return n_sentinel


def _warp_block(datasets, dst: np.ndarray, dst_transform, dst_crs, dst_bounds, method, lat_mid: float) -> int:
    """Fill ``dst`` (a NaN-initialised block of the output) from the tiles under ``dst_bounds``; returns the
    number of source pixels below :data:`MIN_HEIGHT_M`, read as nodata.

    Reads a seamless lon/lat mosaic of only the source pixels under the block (plus ``MARGIN_SRC_PX``),
    on the tiles' own pixel grid (so the mosaic step copies pixels, no resampling), then warps it once.
    Blocks agree with a single whole-window warp up to GDAL's approximate transformer (<= 0.125 source
    pixel of position error; rasterio 1.4 does not let us make it exact).
    """
    from rasterio.merge import merge
    from rasterio.warp import reproject, transform_bounds

    src_crs = datasets[0].crs
    res_x = min(abs(ds.res[0]) for ds in datasets)
    res_y = min(abs(ds.res[1]) for ds in datasets)
    ox, oy = datasets[0].transform.c, datasets[0].transform.f  # grid anchor: a corner of the first tile
    w, s, e, n = transform_bounds(dst_crs, src_crs, *dst_bounds, densify_pts=21)
    w = ox + (math.floor((w - ox) / res_x) - MARGIN_SRC_PX) * res_x
    e = ox + (math.ceil((e - ox) / res_x) + MARGIN_SRC_PX) * res_x
    s = oy + (math.floor((s - oy) / res_y) - MARGIN_SRC_PX) * res_y
    n = oy + (math.ceil((n - oy) / res_y) + MARGIN_SRC_PX) * res_y
    under = [ds for ds in datasets
             if ds.bounds.left < e and ds.bounds.right > w and ds.bounds.bottom < n and ds.bounds.top > s]
    if not under:
        return 0
    mosaic, mosaic_transform = merge(under, bounds=(w, s, e, n), res=(res_x, res_y), nodata=np.nan,
                                     dtype="float32", resampling=method)
    sentinel = mosaic < MIN_HEIGHT_M  # NaN compares False
    mosaic[sentinel] = np.nan
    # GDAL sizes the resampling kernel from each chunk's own src/dst extent ratio unless XSCALE/YSCALE
    # (destination pixels per source pixel) are given: fix them from the window's mid latitude.
    xscale = res_x * 111_320.0 * math.cos(math.radians(lat_mid)) / abs(dst_transform.a)
    yscale = res_y * 110_574.0 / abs(dst_transform.e)
    reproject(source=mosaic[0], destination=dst, src_transform=mosaic_transform, src_crs=src_crs,
              src_nodata=np.nan, dst_transform=dst_transform, dst_crs=dst_crs, dst_nodata=np.nan,
              resampling=method, XSCALE=f"{xscale:.6f}", YSCALE=f"{yscale:.6f}")
    return int(sentinel.sum())


def _check_bounds(bounds) -> tuple[float, float, float, float]:
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be (xmin, ymin, xmax, ymax) in metres, got {bounds!r}") from None
    if not (xmin < xmax and ymin < ymax and all(map(math.isfinite, (xmin, ymin, xmax, ymax)))):
        raise ValueError(f"bounds must be finite with xmin < xmax and ymin < ymax, got {bounds!r}")
    return xmin, ymin, xmax, ymax


__all__ = ["DEFAULT_BASE_URL", "DownloadError", "EmptyWindowError", "copernicus_terrain", "fetch_tiles",
           "parse_tile_list", "tile_corner", "tile_list", "tile_list_url", "tile_name", "tile_url",
           "tiles_for_bounds", "validate_tile"]
