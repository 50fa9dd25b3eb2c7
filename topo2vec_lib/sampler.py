"""Patches around places at any scale, fractal pairs and random places (docs/architecture.md).

A patch of ``size`` pixels at ``res_m`` m/px has its pixel centres spaced ``res_m`` apart and centred on the
place (for an even ``size`` the place falls between the two middle pixels); it covers ``size * res_m`` metres.
Row 0 is north, column 0 is west. Coarser-than-native patches do not alias: :class:`PatchSampler` builds once a
pyramid of block means (level ``j`` = means of ``2**j x 2**j`` native pixels, NaN-propagating, like GDAL
overviews) and samples level ``j = floor(log2(res_m / native))`` bilinearly at the patch's pixel centres.
One call samples a whole batch with vectorised numpy gathers, in chunks spread over a few threads.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xarray as xr
from pyproj import CRS

from topo2vec_lib.grid import LONLAT, as_numbers, check_crs, check_lonlat_arrays, check_seed, transformer

_CHUNK_SAMPLES = 65536  # samples per vectorised gather (~226 patches of 17 x 17): temporaries stay in cache
_REL_TOL = 1e-9        # relative tolerance when comparing a resolution to the terrain's
_EDGE_TOL_PX = 1e-4    # footprints may overshoot the terrain by this many native px (lon/lat round trips: ~0.5 mm)


class OutsideTerrainError(ValueError):
    """Some places' patch footprints leave the terrain; the message names them and the terrain bounds."""


class OutsideRegionError(ValueError):
    """Some places lie outside the terrain's ``region_lonlat`` polygon; the message names them."""


class NodataError(ValueError):
    """Some patches touch nodata (NaN: voids or sea); the message names the places."""


# ----------------------------------------------------------------------------------------------- helpers
def _as_places(a, b, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Two coordinate arrays as float64 ``(N,)``; ValueError naming the first non-finite value (and, clearly,
    values that are not real numbers: text, mappings, complex numbers)."""
    a = np.atleast_1d(as_numbers(a, names[0]))
    b = np.atleast_1d(as_numbers(b, names[1]))
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must be 1-D arrays of the same length, "
                         f"got shapes {a.shape} and {b.shape}")
    for name, v in zip(names, (a, b)):
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise ValueError(f"{name}[{bad[0]}] = {v[bad[0]]} is not a finite number "
                             f"({bad.size} non-finite value(s) in {name})")
    return a, b


def as_rng(rng) -> np.random.Generator:
    """A numpy Generator from a Generator, a BitGenerator/SeedSequence, or a seed: an integer >= 0 or a list of
    them (``1.5`` is an error, never truncated)."""
    if isinstance(rng, (np.random.Generator, np.random.BitGenerator, np.random.SeedSequence)):
        return np.random.default_rng(rng)
    if isinstance(rng, (list, tuple, np.ndarray)):
        return np.random.default_rng([check_seed(v, f"rng[{i}]") for i, v in enumerate(rng)])
    return np.random.default_rng(check_seed(rng, "rng (a seed)"))


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size = {size!r} must be an integer number of pixels >= 2")
    return int(size)


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or (k & (k - 1)):
        raise ValueError(f"k = {k!r} must be a power of two >= 1 (1, 2, 4, 8, ...)")
    return int(k)


def _fmt_places(idx: np.ndarray, lon: np.ndarray, lat: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(f"#{i} (lon {lon[i]:.5f}, lat {lat[i]:.5f})" for i in idx[:limit])
    more = f" and {idx.size - limit} more" if idx.size > limit else ""
    return shown + more


def normalize(patches, reference=None, min_range_m: float = 1.0) -> np.ndarray:
    """Per-patch min-max normalisation to [0, 1] (docs/architecture.md "Normalisation"), float32.

    ``patches``: ``(N, ...)`` metres, e.g. ``(N, 17, 17)`` or ``(N, 1, 17, 17)``. With ``reference``
    (``(N, ...)`` metres, e.g. the fractal pair's input) the min and range of each reference patch are used, so
    the result may leave [0, 1]. The range is floored at ``min_range_m`` metres so flat patches do not blow noise
    up (a flat patch maps to 0). NaNs are ignored by the statistics and stay NaN.
    """
    p = np.asarray(patches, dtype=np.float32)
    ref = p if reference is None else np.asarray(reference, dtype=np.float32)
    if p.ndim < 2 or ref.ndim < 2 or ref.shape[0] != p.shape[0]:
        raise ValueError(f"patches {p.shape} and reference {ref.shape} must both be (N, ...) with the same N")
    if not (np.isfinite(min_range_m) and min_range_m > 0):
        raise ValueError(f"min_range_m = {min_range_m!r} must be a positive number of metres")
    flat = ref.reshape(ref.shape[0], -1)
    if flat.shape[1] == 0:
        raise ValueError(f"reference patches {ref.shape} are empty")
    lo = np.fmin.reduce(flat, axis=1)
    span = np.maximum(np.fmax.reduce(flat, axis=1) - lo, np.float32(min_range_m))
    shape = (-1,) + (1,) * (p.ndim - 1)
    out = p - lo.reshape(shape)
    out /= span.reshape(shape)
    return out


def block_mean_pyramid(elevation: np.ndarray, levels: int | None = None) -> list[np.ndarray]:
    """Levels of block means: level ``j`` is ``(ceil(H/2**j), ceil(W/2**j))`` float32, each pixel the mean of
    the ``2**j x 2**j`` native pixels it covers (fewer along the east/south edges, as GDAL overviews);
    NaN-propagating. ``levels`` counts the native level too (1 = native only); None builds down to 1 pixel.
    """
    z = np.ascontiguousarray(elevation, dtype=np.float32)
    if z.ndim != 2 or z.size == 0:
        raise ValueError(f"elevation must be a non-empty 2-D array, got shape {z.shape}")
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1):
        raise ValueError(f"levels = {levels!r} must be an integer >= 1 (1 = native only) or None")
    out = [z]
    value = z.astype(np.float64)
    count = np.ones(z.shape, dtype=np.float64)   # native pixels inside each block
    while (levels is None or len(out) < levels) and max(value.shape) > 1:
        h, w = value.shape
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        s = np.zeros((2 * h2, 2 * w2))
        c = np.zeros((2 * h2, 2 * w2))
        s[:h, :w] = value * count
        c[:h, :w] = count
        s = s.reshape(h2, 2, w2, 2).sum(axis=(1, 3))
        count = c.reshape(h2, 2, w2, 2).sum(axis=(1, 3))
        value = s / count
        out.append(value.astype(np.float32))
    return out


def _halve(value: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pyramid step of block means (float64 values and native-pixel counts), as :func:`block_mean_pyramid`."""
    h, w = value.shape
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    s = np.zeros((2 * h2, 2 * w2))
    c = np.zeros((2 * h2, 2 * w2))
    s[:h, :w] = value * count
    c[:h, :w] = count
    s = s.reshape(h2, 2, w2, 2).sum(axis=(1, 3))
    count = c.reshape(h2, 2, w2, 2).sum(axis=(1, 3))
    return s / count, count


def streamed_pyramid(read_rows, shape, levels: int | None = None, strip_log2: int = 8) -> list[np.ndarray]:
    """:func:`block_mean_pyramid` of a raster read in strips of ``2 ** strip_log2`` rows: ``read_rows(r0, r1)``
    returns rows ``r0:r1`` (float32/64). Bit for bit the same levels, holding only the float32 levels, one
    strip and the float64 level ``strip_log2`` (a 1/4**strip_log2 fraction) at once."""
    ny, nx = (int(v) for v in shape)
    if ny < 1 or nx < 1:
        raise ValueError(f"elevation must be a non-empty 2-D array, got shape {tuple(shape)}")
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1):
        raise ValueError(f"levels = {levels!r} must be an integer >= 1 (1 = native only) or None")
    k = strip_log2
    sizes = [(ny, nx)]
    while (levels is None or len(sizes) < levels) and max(sizes[-1]) > 1:
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    out = [np.empty(sz, np.float32) for sz in sizes]
    deep = min(k, len(sizes) - 1)               # levels built strip by strip; the rest from level `deep`
    deep_value, deep_count = [], []
    step = 2 ** k
    for r0 in range(0, ny, step):
        r1 = min(ny, r0 + step)
        z = np.ascontiguousarray(read_rows(r0, r1), dtype=np.float32)
        out[0][r0:r1] = z
        value, count = z.astype(np.float64), np.ones(z.shape)
        for j in range(1, deep + 1):
            value, count = _halve(value, count)
            a = r0 >> j
            out[j][a:a + value.shape[0]] = value.astype(np.float32)
        deep_value.append(value)
        deep_count.append(count)
    value, count = np.concatenate(deep_value), np.concatenate(deep_count)
    for j in range(deep + 1, len(sizes)):
        value, count = _halve(value, count)
        out[j][...] = value.astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------- sampler
class PatchSampler:
    """Samples patches of a terrain (docs/architecture.md "Terrain") around lon/lat places, at any scale.

    Attributes: ``res_m`` (native m/px), ``crs`` (pyproj CRS), ``region`` (name), ``region_lonlat``
    ([lon_min, lat_min, lon_max, lat_max] or None), ``bounds_xy`` ((left, bottom, right, top) pixel edges in
    metres of ``crs``), ``pyramid`` (list of float32 levels, see :func:`block_mean_pyramid`; along the east and
    south edges a coarse pixel may average fewer native pixels). The sampler holds the pyramid in memory:
    float32, 4/3 of the native raster, i.e. 5.3 bytes per pixel (1.25 GB for the paper's 235 M pixel polygon).
    A lazy (Dask/zarr-backed) terrain, e.g. ``open_terrain(path, chunks={})``, is read in strips of 256 rows
    (:func:`streamed_pyramid`), so building it holds nothing else of that size.
    ``threads``: worker threads for big batches (None = the machine's cores, at most 4).
    """

    def __init__(self, terrain: xr.DataArray, levels: int | None = None, threads: int | None = None):
        if not isinstance(terrain, xr.DataArray) or terrain.dims != ("y", "x"):
            raise ValueError(f"terrain must be an xarray.DataArray with dims ('y', 'x'), got "
                             f"{type(terrain).__name__} {getattr(terrain, 'dims', None)}")
        x = np.asarray(terrain["x"].values, dtype=np.float64)
        y = np.asarray(terrain["y"].values, dtype=np.float64)
        if x.size < 2 or y.size < 2:
            raise ValueError(f"terrain must be at least 2x2 pixels, got {terrain.shape}")
        dx, dy = np.diff(x), np.diff(y)
        res_m = float(terrain.attrs.get("res_m", dx[0]))
        tol = 1e-6 * res_m
        if not (np.all(np.abs(dx - res_m) <= tol) and np.all(np.abs(dy + res_m) <= tol)):
            raise ValueError(f"terrain must be north-up on a regular {res_m} m grid: x increasing and y decreasing "
                             f"by res_m; got x steps {dx.min()}..{dx.max()}, y steps {dy.min()}..{dy.max()}")
        crs = terrain.rio.crs
        if crs is None:
            raise ValueError("terrain has no CRS; set it with terrain.rio.write_crs(...)")
        self.crs = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
        try:
            check_crs(self.crs)
        except ValueError as err:
            raise ValueError(f"terrain: {err}; reproject it first (res_m and patch footprints are metres)") from None
        self.res_m = res_m
        self.region = terrain.attrs.get("region")
        region_lonlat = terrain.attrs.get("region_lonlat")
        self.region_lonlat = None if region_lonlat is None else [float(v) for v in region_lonlat]
        left, top = x[0] - res_m / 2, y[0] + res_m / 2
        self.bounds_xy = (float(left), float(top - y.size * res_m), float(left + x.size * res_m), float(top))
        if getattr(terrain, "chunks", None) is not None:        # lazy: read strip by strip
            var = terrain.variable
            self.pyramid = streamed_pyramid(lambda r0, r1: var[r0:r1].values, terrain.shape, levels)
        else:
            self.pyramid = block_mean_pyramid(terrain.values, levels)
        if not np.isfinite(self.pyramid[0]).any():
            raise NodataError(f"terrain {self.region!r} ({terrain.shape[0]} x {terrain.shape[1]} px) is 100% nodata "
                              f"(NaN): there is nothing to sample")
        self._level_has_nan = [bool(np.isnan(level).any()) for level in self.pyramid]
        self.threads = max(1, min(os.cpu_count() or 1, 4)) if threads is None else max(1, int(threads))
        self._wkt = self.crs.to_wkt()

    # -------------------------------------------------------------------------------- coordinates
    def to_xy(self, lon, lat) -> tuple[np.ndarray, np.ndarray]:
        """lon/lat (EPSG:4326 degrees, ``(N,)``) -> x, y (metres in ``crs``, ``(N,)`` float64)."""
        lon, lat = _as_places(lon, lat, ("lon", "lat"))
        check_lonlat_arrays(lon, lat)          # lon 367.6 is an error, never wrapped to 7.6
        x, y = transformer(LONLAT, self._wkt).transform(lon, lat)
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        bad = np.flatnonzero(~(np.isfinite(x) & np.isfinite(y)))
        if bad.size:
            raise ValueError(f"place #{bad[0]} (lon {lon[bad[0]]}, lat {lat[bad[0]]}) cannot be projected to "
                             f"{self.crs.to_string()}")
        return x, y

    def to_lonlat(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """x, y (metres in ``crs``, ``(N,)``) -> lon, lat (EPSG:4326 degrees, ``(N,)`` float64)."""
        x, y = _as_places(x, y, ("x", "y"))
        lon, lat = transformer(self._wkt, LONLAT).transform(x, y)
        return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)

    # -------------------------------------------------------------------------------- checks
    def check_res(self, res_m, what: str = "res_m", allow_upsampling: bool = False) -> float:
        """``res_m`` as a float; ValueError when not a positive number, or finer than native without
        ``allow_upsampling``."""
        try:
            r = float(res_m)
        except (TypeError, ValueError):
            raise ValueError(f"{what} = {res_m!r} must be a number of metres per pixel") from None
        if not (np.isfinite(r) and r > 0):
            raise ValueError(f"{what} = {res_m!r} must be a positive, finite number of metres per pixel")
        if r < self.res_m * (1 - _REL_TOL) and not allow_upsampling:
            raise ValueError(f"{what} = {r} m/px is finer than the terrain's native {self.res_m} m/px; "
                             f"use res_m >= {self.res_m} (or allow_upsampling=True: interpolation, no new detail)")
        return r

    def inside_xy(self, x: np.ndarray, y: np.ndarray, res_m: float, size: int) -> np.ndarray:
        """``(N,)`` bool: the footprint (``size * res_m`` square centred on x, y) lies inside the terrain."""
        half = size * res_m / 2
        tol = _EDGE_TOL_PX * self.res_m
        left, bottom, right, top = self.bounds_xy
        return ((x - half >= left - tol) & (x + half <= right + tol)
                & (y - half >= bottom - tol) & (y + half <= top + tol))

    def _raise_outside(self, x, y, inside, res_m, size):
        idx = np.flatnonzero(~inside)
        lon, lat = self.to_lonlat(x, y)
        left, bottom, right, top = self.bounds_xy
        lo = self.to_lonlat([left, right, left, right], [bottom, bottom, top, top])
        raise OutsideTerrainError(
            f"{idx.size} of {x.size} place(s) have a {size} px patch at {res_m:g} m/px (footprint "
            f"{size * res_m:g} m) that leaves the terrain ({self.region!r}): {_fmt_places(idx, lon, lat)}. "
            f"Terrain bounds: x {left:.1f}..{right:.1f}, y {bottom:.1f}..{top:.1f} m in {self.crs.to_string()}, "
            f"about lon {lo[0].min():.5f}..{lo[0].max():.5f}, lat {lo[1].min():.5f}..{lo[1].max():.5f}; "
            f"keep places at least {size * res_m / 2:g} m inside (see PatchSampler.valid_places)")

    def check_region(self, lon, lat) -> None:
        """OutsideRegionError naming the places outside the terrain's ``region_lonlat`` box (lon/lat degrees)."""
        lon, lat = _as_places(lon, lat, ("lon", "lat"))
        if self.region_lonlat is None:
            raise ValueError(f"terrain {self.region!r} has no 'region_lonlat' attribute to check places against")
        lon0, lat0, lon1, lat1 = self.region_lonlat
        idx = np.flatnonzero(~self._in_region(lon, lat))
        if idx.size:
            raise OutsideRegionError(f"{idx.size} of {lon.size} place(s) lie outside region {self.region!r} "
                                     f"(lon {lon0}..{lon1}, lat {lat0}..{lat1}): {_fmt_places(idx, lon, lat)}")

    def _in_region(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        if self.region_lonlat is None:
            return np.ones(lon.shape, dtype=bool)
        lon0, lat0, lon1, lat1 = self.region_lonlat
        return (lon >= lon0) & (lon <= lon1) & (lat >= lat0) & (lat <= lat1)

    # -------------------------------------------------------------------------------- sampling
    def level_for(self, res_m: float) -> int:
        """Pyramid level sampled for ``res_m``: ``floor(log2(res_m / native))``, clamped to the levels built."""
        ratio = self.check_res(res_m, allow_upsampling=True) / self.res_m
        j = int(math.floor(math.log2(max(ratio, 1.0)) + 1e-9))
        return min(max(j, 0), len(self.pyramid) - 1)

    def _sample_xy(self, x: np.ndarray, y: np.ndarray, res_m: float, size: int) -> np.ndarray:
        """Raw bilinear samples ``(N, size, size)`` float32 metres (NaN where nodata); no checks."""
        j = self.level_for(res_m)
        level = self.pyramid[j]
        pix_m = self.res_m * 2 ** j
        left, _, _, top = self.bounds_xy
        offsets = (np.arange(size) - (size - 1) / 2) * res_m
        # continuous (column, row) in the level's grid, pixel centres at integers
        u = (x[:, None] + offsets - left) / pix_m - 0.5
        v = (top - (y[:, None] - offsets)) / pix_m - 0.5
        out = np.empty((x.size, size, size), dtype=np.float32)
        chunk = max(1, _CHUNK_SAMPLES // (size * size))

        def work(start: int) -> None:
            sl = slice(start, start + chunk)
            out[sl] = _bilinear(level, u[sl], v[sl])

        starts = range(0, x.size, chunk)
        if self.threads > 1 and x.size > chunk:
            with ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(work, starts))
        else:
            for s in starts:
                work(s)
        return out

    def patches_xy(self, x, y, res_m, size: int = 17, allow_nodata: bool = False,
                   allow_upsampling: bool = False) -> np.ndarray:
        """Patches ``(N, size, size)`` float32 metres centred on x, y (metres in ``crs``), ``res_m`` m/px.

        OutsideTerrainError if a footprint leaves the terrain; NodataError if a patch touches NaN (unless
        ``allow_nodata``, which returns the NaNs). ``res_m`` finer than native is a ValueError unless
        ``allow_upsampling`` (then bilinear interpolation of the native pixels).
        """
        size = _check_size(size)
        res_m = self.check_res(res_m, allow_upsampling=allow_upsampling)
        x, y = _as_places(x, y, ("x", "y"))
        inside = self.inside_xy(x, y, res_m, size)
        if not inside.all():
            self._raise_outside(x, y, inside, res_m, size)
        out = self._sample_xy(x, y, res_m, size)
        if not allow_nodata:
            bad = np.flatnonzero(np.isnan(out).any(axis=(1, 2)))
            if bad.size:
                lon, lat = self.to_lonlat(x, y)
                raise NodataError(f"{bad.size} of {x.size} {size} px patch(es) at {res_m:g} m/px touch nodata "
                                  f"(NaN: voids or sea): {_fmt_places(bad, lon, lat)}; drop them with "
                                  f"PatchSampler.valid_places or pass allow_nodata=True")
        return out

    def patches(self, lon, lat, res_m, size: int = 17, allow_nodata: bool = False,
                allow_upsampling: bool = False) -> np.ndarray:
        """Patches ``(N, size, size)`` float32 metres around lon/lat places at ``res_m`` m/px (row 0 north);
        see :meth:`patches_xy`."""
        x, y = self.to_xy(lon, lat)
        return self.patches_xy(x, y, res_m, size, allow_nodata, allow_upsampling)

    def target_res_m(self, res_m: float, k: int, size: int = 17) -> float:
        """Pixel size of the fractal target: ``size * res_m / ((size - 1) * k)`` m/px (same footprint)."""
        return size * float(res_m) / ((size - 1) * k)

    def fractal_pairs(self, lon, lat, res_m, k: int, size: int = 17) -> tuple[np.ndarray, np.ndarray]:
        """Fractal pairs (paper 2.3): x ``(N, 1, size, size)`` normalised input at ``res_m`` m/px and
        y ``(N, 1, (size-1)*k, (size-1)*k)`` target over the same footprint at ``size*res_m/((size-1)*k)`` m/px,
        normalised with the input's min and range. float32. The target may not be finer than native.
        """
        k, size = _check_k(k), _check_size(size)
        res_m = self.check_res(res_m)
        target_m = self.target_res_m(res_m, k, size)
        if target_m < self.res_m * (1 - _REL_TOL):
            raise ValueError(f"fractal target of k = {k} at res_m = {res_m:g} would have {target_m:g} m pixels, "
                             f"finer than the native {self.res_m:g} m; use res_m >= "
                             f"{self.res_m * (size - 1) * k / size:g} or a smaller k")
        x, y = self.to_xy(lon, lat)
        raw_in = self.patches_xy(x, y, res_m, size)
        raw_out = self.patches_xy(x, y, target_m, (size - 1) * k)
        return normalize(raw_in)[:, None], normalize(raw_out, reference=raw_in)[:, None]

    def valid_xy(self, x, y, res_m, size: int = 17, k: int | None = None,
                 allow_upsampling: bool = False) -> np.ndarray:
        """``(N,)`` bool: the patch (and, with ``k``, the fractal target) lies inside the terrain, without nodata."""
        size = _check_size(size)
        res_m = self.check_res(res_m, allow_upsampling=allow_upsampling and k is None)
        x, y = _as_places(x, y, ("x", "y"))
        checks = [(res_m, size)]
        if k is not None:
            k = _check_k(k)
            target_m = self.check_res(self.target_res_m(res_m, k, size),
                                       what=f"the fractal target's pixel size for k = {k} at res_m = {res_m:g}")
            checks.append((target_m, (size - 1) * k))
        ok = self.inside_xy(x, y, res_m, size)
        for r, s in checks:
            idx = np.flatnonzero(ok)
            if idx.size and self._level_has_nan[self.level_for(r)]:   # a level without NaN cannot fail the check
                ok[idx] = ~np.isnan(self._sample_xy(x[idx], y[idx], r, s)).any(axis=(1, 2))
        return ok

    def valid_places(self, lon, lat, res_m, size: int = 17, k: int | None = None,
                     allow_upsampling: bool = False) -> np.ndarray:
        """``(N,)`` bool: :meth:`valid_xy` for lon/lat places (use it to drop labels near edges or sea)."""
        x, y = self.to_xy(lon, lat)
        return self.valid_xy(x, y, res_m, size, k, allow_upsampling)

    def random_places(self, n: int, rng, res_m, size: int = 17, k: int = 1,
                      max_tries: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` places (lon, lat ``(n,)`` float64) uniform in the terrain's metric window.

        Rejects places whose patch at ``res_m`` or fractal target for ``k`` leaves the terrain or touches nodata,
        and places outside ``region_lonlat``. ``res_m`` may be a list of scales (Algorithm 1's ``Scales``: one
        place serves every scale): a place is then kept only when its patch and target fit at each of them,
        and candidates are drawn where the coarsest footprint fits (one scale in a list draws exactly the
        places of that scale alone). Vectorised rejection sampling with ``rng`` (numpy Generator or seed): the
        same seed gives the same places. ValueError if ``max_tries`` candidates (default ``max(10000, 50 n)``)
        do not supply ``n`` places.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n = {n!r} must be a non-negative integer number of places")
        size, k = _check_size(size), _check_k(k)
        scales = [self.check_res(r) for r in (res_m if isinstance(res_m, (list, tuple, np.ndarray)) else [res_m])]
        if not scales:
            raise ValueError("res_m is an empty list; give one pixel size or a list of them (m/px)")
        res_m = max(scales)
        finer = sorted(set(scales) - {res_m})
        max_tries = max(10_000, 50 * n) if max_tries is None else int(max_tries)
        if max_tries < 1:
            raise ValueError(f"max_tries = {max_tries} must be >= 1")
        rng = as_rng(rng)
        half = size * res_m / 2
        left, bottom, right, top = self.bounds_xy
        x0, x1, y0, y1 = left + half, right - half, bottom + half, top - half
        if x0 > x1 or y0 > y1:
            raise ValueError(f"a {size} px patch at {res_m:g} m/px ({2 * half:g} m) does not fit in the terrain "
                             f"({right - left:g} x {top - bottom:g} m); use a smaller res_m or size")
        found_lon, found_lat = [], []
        have, drawn = 0, 0
        while have < n and drawn < max_tries:
            rate = max(have / drawn, 0.02) if drawn else 0.5
            m = int(min(max_tries - drawn, max(256, math.ceil(1.2 * (n - have) / rate))))
            lon, lat = self.to_lonlat(rng.uniform(x0, x1, m), rng.uniform(y0, y1, m))
            drawn += m
            ok = self._in_region(lon, lat)
            idx = np.flatnonzero(ok)
            # validate what callers will pass back: the lon/lat round trip moves places by up to ~0.5 mm
            x, y = self.to_xy(lon[idx], lat[idx])
            ok[idx] = self.valid_xy(x, y, res_m, size, k)
            for r in finer:                                   # multi-scale: every scale's patch and target
                keep = ok[idx]
                ok[idx[keep]] = self.valid_xy(x[keep], y[keep], r, size, k)
            found_lon.append(lon[ok])
            found_lat.append(lat[ok])
            have += int(ok.sum())
        if have < n:
            what = f"{res_m:g} m/px" if not finer else f"{', '.join(f'{r:g}' for r in sorted(scales))} m/px"
            raise ValueError(f"could draw only {have} of n = {n} places for {size} px patches at {what} "
                             f"(k = {k}) in terrain {self.region!r} after {drawn} tries (max_tries = {max_tries}, "
                             f"acceptance {have / max(drawn, 1):.2%}): too much nodata, region or edge; "
                             f"lower n or raise max_tries")
        if n == 0:
            return np.empty(0), np.empty(0)
        return np.concatenate(found_lon)[:n], np.concatenate(found_lat)[:n]

    def min_fractal_res_m(self, k: int, size: int = 17) -> float:
        """The finest input scale (m/px) whose fractal target for ``k`` is not finer than native:
        ``native * (size - 1) * k / size`` (k = 4, 17 px, 30 m native: 112.94 m/px)."""
        return self.res_m * (_check_size(size) - 1) * _check_k(k) / size

    def check_fractal_scales(self, scales, k: int, size: int = 17) -> list[float]:
        """``scales`` (m/px) as floats; ValueError naming the ones whose fractal target for ``k`` would be finer
        than native (the target is never interpolated up: it would carry no detail the input lacks)."""
        values = [self.check_res(r, what="train_res_m") for r in scales]
        floor = self.min_fractal_res_m(k, size)
        bad = [r for r in values if r < floor * (1 - _REL_TOL)]
        if bad:
            raise ValueError(f"train_res_m {', '.join(f'{r:g}' for r in bad)} m/px with k = {k}: the fractal target "
                             f"would have {', '.join(f'{self.target_res_m(r, k, size):.3g}' for r in bad)} m pixels, "
                             f"finer than the terrain's native {self.res_m:g} m; with k = {k} use input scales "
                             f">= {floor:.2f} m/px (or a smaller k)")
        return values


def _bilinear(level: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``level`` (H, W) at the separable grid ``u`` (N, w) columns x ``v`` (N, h) rows
    (pixel centres at integers; clamped to the grid, i.e. edge-replicating within half a pixel).
    Returns ``(N, h, w)`` float32. A neighbour with zero weight is not read, so NaN spreads only where it
    has weight. Works in place on its temporaries (this is the sampler's hot loop).
    """
    h, w = level.shape
    u = np.clip(u, 0, w - 1)
    v = np.clip(v, 0, h - 1)
    c0, r0 = np.floor(u), np.floor(v)
    fx = (u - c0).astype(np.float32)[:, None, :]
    fy = (v - r0).astype(np.float32)[:, :, None]
    step_c = (fx > 0).astype(np.intp)                 # east neighbour, or the same pixel when its weight is 0
    step_r = (fy > 0).astype(np.intp) * w             # south neighbour, likewise
    flat = level.ravel()
    idx = (r0.astype(np.intp) * w)[:, :, None] + c0.astype(np.intp)[:, None, :]
    nw = flat.take(idx)
    idx += step_c
    ne = flat.take(idx)
    idx += step_r
    se = flat.take(idx)
    idx -= step_c
    sw = flat.take(idx)
    ne -= nw                                          # north row: nw + (ne - nw) * fx
    ne *= fx
    ne += nw
    se -= sw                                          # south row
    se *= fx
    se += sw
    se -= ne                                          # north + (south - north) * fy
    se *= fy
    se += ne
    return se


def as_sampler(terrain_or_sampler) -> PatchSampler:
    """A :class:`PatchSampler` for a terrain DataArray, or the sampler itself."""
    if isinstance(terrain_or_sampler, PatchSampler):
        return terrain_or_sampler
    if isinstance(terrain_or_sampler, xr.DataArray):
        return PatchSampler(terrain_or_sampler)
    raise ValueError(f"expected a PatchSampler or a terrain xarray.DataArray, got {type(terrain_or_sampler).__name__}")
