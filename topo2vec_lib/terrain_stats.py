"""Statistics of any terrain, and the distance between two terrains' statistics (how realistic is a DEM?).

A terrain is a ``(ny, nx)`` grid of metres in a *metric* CRS at ``res_m`` m/px, NaN = nodata (an
``xarray.DataArray`` as in docs/architecture.md, or a plain array with ``res_m``). Every function below is
vectorised numpy/scipy; every statistic is a plain JSON-able number or list, with its unit in its name.

Conventions (all stated once here):

- **Slope** (degrees): ``atan(|grad z|)`` with the gradient by central differences (``numpy.gradient``); a
  cell next to nodata is NaN and left out.
- **Curvature** (1/m): from the Evans-Young local quadratic ``z = r x^2/2 + t y^2/2 + s x y + p x + q y + c``
  fitted by least squares to the 3x3 window of points ``step_px`` pixels apart (x east, y north). For a
  quadratic surface the fit is exact. Signs: **positive = convex** (hilltops, ridges, the brow of a slope),
  negative = concave (valleys, hollows, the foot of a slope).

  * ``profile`` (normal-section curvature along the slope line):
    ``-(p^2 r + 2 p q s + q^2 t) / ((p^2 + q^2) (1 + p^2 + q^2)^1.5)``;
  * ``tangential`` (normal-section curvature across the slope):
    ``-(q^2 r - 2 p q s + p^2 t) / ((p^2 + q^2) (1 + p^2 + q^2)^0.5)``;
  * ``plan`` (curvature of the contour line in the horizontal plane):
    ``-(q^2 r - 2 p q s + p^2 t) / (p^2 + q^2)^1.5``, which diverges on flats, so it is computed only where
    the slope is at least ``min_slope_deg`` (default 2 degrees).

  On the paraboloid ``z = -(x^2 + y^2) / (2 R)`` at distance ``d`` from the top (gradient ``g = d / R``):
  profile ``= (1/R) / (1 + g^2)^1.5``, tangential ``= (1/R) / (1 + g^2)^0.5``, plan ``= 1/d``.
- **Roughness against lag**: the standard deviation (about their mean) of ``z(x + L) - z(x)`` over all
  valid pairs along x and along y pooled, for lags ``L`` in pixels; the **Hurst exponent** is the least-squares slope of
  ``log std`` against ``log L`` over lags ``<= hurst_max_lag_m`` (fBm: ``std ~ L^H``).
- **Local relief**: max - min of the elevation within a square of ``relief_window_m`` (odd pixels), only for
  cells whose whole window is valid.
- **Hypsometry**: the hypsometric curve (share of the area above each relative height
  ``(z - min) / (max - min)``) and its integral ``(mean - min) / (max - min)``.
- **Prominence**: :func:`topographic_prominence` of :mod:`topo2vec_lib.labels` (exact, inside the window);
  peaks on the window edge or next to nodata are left out (the ground may rise beyond them). Densities are
  per km2 of valid area. Windows cut key cols off, so large prominences are underestimated near edges.
- **Drainage**: depression filling, D8 receivers and flow accumulation of :mod:`topo2vec_lib.hydrology`;
  a channel is a cell with drainage area ``>= A``; its length is its D8 step to the receiver
  (``res_m`` or ``res_m * sqrt(2)``); drainage density = channel length (km) per km2 of valid area. Area from
  beyond the window is unknown, so densities of windows of the same size compare best.
- **Slope-area (concavity)**: on channel cells, the median D8 along-flow slope (tan, of the filled DEM;
  flats under 1e-4 left out) in logarithmic bins of drainage area; ``-d log S / d log A`` is the concavity
  index theta (0.23-0.34 on the GLO-30/NASADEM N34 W119 windows, reports/realism.md).
- **Conditional statistics**: :func:`by_relief_class` (slope, curvature, peaks, drainage within classes of
  1 km local relief: mountains compared with mountains), :func:`by_drainage_area` (slope and curvature from
  divides to rivers) and :func:`gradient_anisotropy` (structural grain).

:func:`terrain_statistics` gathers all of them (histograms included); :func:`compare_statistics` compares two
such dicts: 1-D Kolmogorov-Smirnov and Wasserstein distances from the stored histograms, and ratios of
densities and roughness.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import ndimage

from .grid import slope_deg

SLOPE_BINS_DEG = np.arange(0.0, 90.0 + 0.25, 0.5)
"""Edges (degrees) of the stored slope histogram: 0.5 degree bins."""

CURVATURE_BINS_PER_M = np.linspace(-0.05, 0.05, 401)
"""Edges (1/m) of the stored curvature histograms: 2.5e-4 1/m bins; values beyond go into the end bins."""

DEFAULT_LAGS_PX = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


# --------------------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------------------
def terrain_values(terrain, res_m: float | None = None, need_res: bool = True) -> tuple[np.ndarray, Any]:
    """``(z, res_m)``: the elevations as a float64 ``(ny, nx)`` array (NaN = nodata) and the pixel size in metres.

    ``terrain`` is a DataArray (``res_m`` from its ``res_m`` attr or its square ``rio`` resolution; its CRS, if
    set, must be projected in metres) or a 2-D array with ``res_m`` given (``need_res=False``: ``res_m`` may be
    unknown and is then returned as None). ValueError names the bad value.
    """
    import xarray as xr

    if isinstance(terrain, xr.DataArray):
        if terrain.ndim != 2:
            raise ValueError(f"terrain must be a 2-D (y, x) DataArray, got dims {terrain.dims}")
        crs = _rio_crs(terrain)
        if crs is not None:
            units = {a.unit_name for a in crs.axis_info}
            if not crs.is_projected or not units <= {"metre", "meter"}:
                raise ValueError(f"terrain CRS {crs.name!r} is not a projected CRS in metres (units {units}); "
                                 f"reproject it first (e.g. terrain.geotiff_terrain into a UTM zone)")
        if res_m is None:
            res_m = terrain.attrs.get("res_m")
        if res_m is None and crs is not None:
            rx, ry = (abs(float(v)) for v in terrain.rio.resolution())
            if not math.isclose(rx, ry, rel_tol=1e-6):
                raise ValueError(f"terrain pixels are not square ({rx} x {ry} m); resample it first")
            res_m = rx
        z = np.asarray(terrain.values, dtype=np.float64)
    else:
        z = np.asarray(terrain, dtype=np.float64)
    if z.ndim != 2 or min(z.shape) < 3:
        raise ValueError(f"terrain must be a 2-D grid of at least 3x3 cells, got shape {z.shape}")
    if not np.isfinite(z).any():
        raise ValueError("the terrain has no valid (finite) cell")
    if res_m is None and not need_res:
        return z, None
    if res_m is None:
        raise ValueError("res_m (metres per pixel) is needed for a plain array or a DataArray without res_m/CRS")
    try:
        res_m = float(res_m)
    except (TypeError, ValueError):
        raise ValueError(f"res_m must be a positive number of metres per pixel, got {res_m!r}") from None
    if not (math.isfinite(res_m) and res_m > 0):
        raise ValueError(f"res_m must be a positive number of metres per pixel, got {res_m!r}")
    return z, res_m


def _rio_crs(da):
    """The DataArray's CRS as a ``pyproj.CRS``, or None when it has none."""
    import rioxarray  # noqa: F401  (registers .rio)
    from pyproj import CRS

    crs = da.rio.crs
    return None if crs is None else CRS.from_user_input(crs.to_wkt())


def _percentiles(values: np.ndarray, prefix: str, unit: str) -> dict[str, float | None]:
    if values.size == 0:
        return dict.fromkeys(f"{prefix}_p{p}_{unit}" for p in PERCENTILES)
    return {f"{prefix}_p{p}_{unit}": float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}


def _hist(values: np.ndarray, edges: np.ndarray) -> list[float]:
    """Fractions per bin (sum 1), values beyond the edges clipped into the end bins."""
    if values.size == 0:
        return [0.0] * (len(edges) - 1)
    counts = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0]
    return (counts / values.size).tolist()


# --------------------------------------------------------------------------------------------------
# slope and curvature
# --------------------------------------------------------------------------------------------------
def slope_distribution(terrain, res_m: float | None = None) -> dict[str, Any]:
    """Slope histogram (0.5 degree bins, fractions) and percentiles (degrees) of all valid cells."""
    z, res_m = terrain_values(terrain, res_m)
    s = slope_deg(z, res_m)
    s = s[np.isfinite(s)]
    out: dict[str, Any] = {"slope_mean_deg": float(s.mean()), "slope_std_deg": float(s.std()),
           "slope_fraction_below_2deg": float(np.mean(s < 2.0)),
           "slope_fraction_above_30deg": float(np.mean(s > 30.0)),
           "slope_fraction_above_45deg": float(np.mean(s > 45.0))}
    out.update(_percentiles(s, "slope", "deg"))
    out["slope_hist_edges_deg"] = SLOPE_BINS_DEG.tolist()
    out["slope_hist_fraction"] = _hist(s, SLOPE_BINS_DEG)
    return out


def quadratic_coefficients(z: np.ndarray, res_m: float, step_px: int = 1):
    """Evans-Young least-squares quadratic over the 3x3 window of points ``step_px`` apart.

    Returns ``(p, q, r, s, t)``, each ``(ny, nx)`` float64 (NaN within ``step_px`` of the grid edge or of
    nodata): ``p = dz/dx``, ``q = dz/dy`` (x east, y north, dimensionless), ``r = d2z/dx2``, ``t = d2z/dy2``,
    ``s = d2z/dxdy`` (1/m).
    """
    z = np.asarray(z, dtype=np.float64)
    k = int(step_px)
    if k < 1:
        raise ValueError(f"step_px must be a positive int, got {step_px!r}")
    ny, nx = z.shape
    if min(ny, nx) < 2 * k + 1:
        raise ValueError(f"terrain {z.shape} is too small for a 3x3 window of step {k} px")
    h = res_m * k
    pad = np.pad(z, k, constant_values=np.nan)

    def w(dy: int, dx: int) -> np.ndarray:  # neighbour dy rows south, dx columns east
        return pad[k + dy * k:k + dy * k + ny, k + dx * k:k + dx * k + nx]

    z1, z2, z3 = w(-1, -1), w(-1, 0), w(-1, 1)   # north row (y = +h)
    z4, z5, z6 = w(0, -1), w(0, 0), w(0, 1)
    z7, z8, z9 = w(1, -1), w(1, 0), w(1, 1)      # south row (y = -h)
    p = (z3 + z6 + z9 - z1 - z4 - z7) / (6 * h)
    q = (z1 + z2 + z3 - z7 - z8 - z9) / (6 * h)
    r = (z1 + z3 + z4 + z6 + z7 + z9 - 2 * (z2 + z5 + z8)) / (3 * h * h)
    t = (z1 + z2 + z3 + z7 + z8 + z9 - 2 * (z4 + z5 + z6)) / (3 * h * h)
    s = (z3 + z7 - z1 - z9) / (4 * h * h)
    return p, q, r, s, t


def curvatures(terrain, res_m: float | None = None, step_px: int = 1,
               min_slope_deg: float = 2.0) -> dict[str, np.ndarray]:
    """Profile, tangential and plan curvature ``(ny, nx)`` in 1/m (module docstring: formulas, signs).

    Profile and tangential are NaN where the gradient is exactly zero, plan where the slope is below
    ``min_slope_deg``; all are NaN within ``step_px`` of the edge or of nodata.
    """
    z, res_m = terrain_values(terrain, res_m)
    p, q, r, s, t = quadratic_coefficients(z, res_m, step_px)
    g2 = p * p + q * q
    with np.errstate(divide="ignore", invalid="ignore"):
        along = p * p * r + 2 * p * q * s + q * q * t
        across = q * q * r - 2 * p * q * s + p * p * t
        profile = -along / (g2 * (1 + g2) ** 1.5)
        tangential = -across / (g2 * np.sqrt(1 + g2))
        plan = -across / g2 ** 1.5
    flat = g2 == 0
    profile[flat] = np.nan
    tangential[flat] = np.nan
    plan[~(g2 >= math.tan(math.radians(min_slope_deg)) ** 2)] = np.nan
    return {"profile": profile, "tangential": tangential, "plan": plan}


def curvature_distribution(terrain, res_m: float | None = None, step_px: int = 1,
                           min_slope_deg: float = 2.0, curv: dict | None = None) -> dict[str, Any]:
    """Percentiles, std, IQR and histograms (:data:`CURVATURE_BINS_PER_M`) of profile/tangential/plan curvature
    (1/m), the convex share (curvature > 0) and the share of sharp cells (``|curvature| > 0.01 /m``, a radius
    of curvature under 100 m) of each. ``curv``: :func:`curvatures` when already computed.
    """
    z, res_m = terrain_values(terrain, res_m)
    if curv is None:
        curv = curvatures(z, res_m, step_px=step_px, min_slope_deg=min_slope_deg)
    out: dict[str, Any] = {"curvature_step_m": float(step_px * res_m), "curvature_min_slope_deg": float(min_slope_deg),
                           "curvature_hist_edges_per_m": CURVATURE_BINS_PER_M.tolist()}
    for name, c in curv.items():
        v = c[np.isfinite(c)]
        out[f"curv_{name}_std_per_m"] = float(v.std()) if v.size else None
        out[f"curv_{name}_iqr_per_m"] = float(np.subtract(*np.percentile(v, [75, 25]))) if v.size else None
        out[f"curv_{name}_convex_fraction"] = float(np.mean(v > 0)) if v.size else None
        out[f"curv_{name}_sharp_fraction"] = float(np.mean(np.abs(v) > 0.01)) if v.size else None
        out.update(_percentiles(v, f"curv_{name}", "per_m"))
        out[f"curv_{name}_hist_fraction"] = _hist(v, CURVATURE_BINS_PER_M)
    return out


# --------------------------------------------------------------------------------------------------
# roughness against scale, local relief, hypsometry
# --------------------------------------------------------------------------------------------------
def roughness_vs_lag(terrain, res_m: float | None = None, lags_px: Iterable[int] = DEFAULT_LAGS_PX,
                     hurst_max_lag_m: float = 1000.0, hurst_min_lag_m: float = 0.0) -> dict[str, Any]:
    """Std of elevation differences (m) at each lag (m) and the Hurst exponent fitted up to ``hurst_max_lag_m``.

    Lags of at least the grid's shorter side are skipped. Also returns the Hurst exponent over short lags
    (up to 4 px) and over long lags (from 8 px to ``hurst_max_lag_m``): a real DEM's roughness is often
    steeper at short lags (smoothing by the sensor) than at long ones.
    """
    z, res_m = terrain_values(terrain, res_m)
    lags, stds, counts = [], [], []
    for lag in sorted({int(v) for v in lags_px}):
        if lag < 1 or lag >= min(z.shape):
            continue
        dx = z[:, lag:] - z[:, :-lag]
        dy = z[lag:] - z[:-lag]
        n = int(np.isfinite(dx).sum() + np.isfinite(dy).sum())
        if n < 2:
            continue
        # pooled variance about zero-mean increments' own mean (nan-aware, no concatenation copy)
        total = np.nansum(dx) + np.nansum(dy)
        mean = total / n
        var = (np.nansum((dx - mean) ** 2) + np.nansum((dy - mean) ** 2)) / n
        lags.append(float(lag * res_m))
        stds.append(float(np.sqrt(var)))
        counts.append(n)
    out: dict[str, Any] = {"roughness_lag_m": lags, "roughness_std_m": stds}
    out["hurst"] = _loglog_slope(lags, stds, hurst_min_lag_m, hurst_max_lag_m)
    out["hurst_short"] = _loglog_slope(lags, stds, 0.0, 4 * res_m)
    out["hurst_long"] = _loglog_slope(lags, stds, 8 * res_m, hurst_max_lag_m)
    out["hurst_fit_lag_m"] = [float(hurst_min_lag_m), float(hurst_max_lag_m)]
    return out


def _loglog_slope(x, y, lo: float, hi: float) -> float | None:
    pts = [(a, b) for a, b in zip(x, y) if lo <= a <= hi and b > 0]
    if len(pts) < 2:
        return None
    return float(np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0])


def local_relief(terrain, res_m: float | None = None, window_m: float = 1000.0) -> np.ndarray:
    """Max - min elevation (m) in a square of about ``window_m`` (odd pixels) around each cell, ``(ny, nx)``.

    NaN where the window leaves the grid or holds a nodata cell.
    """
    z, res_m = terrain_values(terrain, res_m)
    size = max(3, int(round(window_m / res_m)) | 1)
    valid = np.isfinite(z)
    hi = ndimage.maximum_filter(np.where(valid, z, -np.inf), size=size, mode="constant", cval=-np.inf)
    lo = ndimage.minimum_filter(np.where(valid, z, np.inf), size=size, mode="constant", cval=np.inf)
    complete = ndimage.minimum_filter(valid.astype(np.uint8), size=size, mode="constant", cval=0) > 0
    return np.where(complete, hi - lo, np.nan)


def relief_distribution(terrain, res_m: float | None = None, window_m: float = 1000.0,
                        relief: np.ndarray | None = None) -> dict[str, Any]:
    """Percentiles of the local relief (m) in ``window_m`` squares, and the shares below 50 m / above 500 m.

    ``relief``: :func:`local_relief` when already computed.
    """
    z, res_m = terrain_values(terrain, res_m)
    rel = local_relief(z, res_m, window_m) if relief is None else relief
    v = rel[np.isfinite(rel)]
    key = f"relief{int(round(window_m))}m"
    out = {f"{key}_mean_m": float(v.mean()) if v.size else None,
           f"{key}_fraction_below_50m": float(np.mean(v < 50)) if v.size else None,
           f"{key}_fraction_above_500m": float(np.mean(v > 500)) if v.size else None}
    out.update(_percentiles(v, key, "m"))
    return out


def hypsometry(terrain, res_m: float | None = None, levels: int = 21) -> dict[str, Any]:
    """Hypsometric integral and curve: share of the valid area above each of ``levels`` relative heights in [0, 1]."""
    z, _ = terrain_values(terrain, res_m, need_res=False)
    v = z[np.isfinite(z)]
    lo, hi = float(v.min()), float(v.max())
    rel = np.linspace(0.0, 1.0, int(levels))
    if hi == lo:
        return {"hypsometric_integral": None, "hypsometry_relative_height": rel.tolist(),
                "hypsometry_area_above": [1.0] + [0.0] * (len(rel) - 1)}
    x = (np.sort(v) - lo) / (hi - lo)
    above = 1.0 - np.searchsorted(x, rel, side="left") / x.size
    return {"hypsometric_integral": float((v.mean() - lo) / (hi - lo)),
            "hypsometry_relative_height": rel.tolist(), "hypsometry_area_above": above.tolist(),
            "elevation_min_m": lo, "elevation_max_m": hi, "elevation_mean_m": float(v.mean()),
            "elevation_std_m": float(v.std())}


# --------------------------------------------------------------------------------------------------
# prominence and drainage
# --------------------------------------------------------------------------------------------------
def _valid_area_km2(z: np.ndarray, res_m: float) -> float:
    return float(np.isfinite(z).sum()) * res_m * res_m / 1e6


def interior_peaks(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(flat index, prominence m)`` of every local maximum of ``z`` not on the window edge nor next to nodata."""
    from .labels import topographic_prominence

    prom = topographic_prominence(z)
    valid = np.isfinite(z)
    inner = ~ndimage.binary_dilation(~valid, structure=np.ones((3, 3), bool))
    inner[0, :] = inner[-1, :] = inner[:, 0] = inner[:, -1] = False
    keep = inner.ravel()[prom.peak]
    return prom.peak[keep], prom.prominence_m[keep]


def prominence_density(terrain, res_m: float | None = None, thresholds_m: Iterable[float] = (20, 50, 100, 300),
                       peaks: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Peaks per km2 (and counts) with topographic prominence >= each threshold (m), interior peaks only.

    Also the percentiles of the prominence of peaks >= the smallest threshold. ``peaks``: the result of
    :func:`interior_peaks` when already computed.
    """
    z, res_m = terrain_values(terrain, res_m)
    _, pm = interior_peaks(z) if peaks is None else peaks
    area = _valid_area_km2(z, res_m)
    thresholds_m = [float(v) for v in thresholds_m]
    out: dict[str, Any] = {"valid_area_km2": area, "prominence_thresholds_m": thresholds_m}
    out["peak_count"] = [int(np.sum(pm >= t)) for t in thresholds_m]
    out["peak_density_per_km2"] = [c / area for c in out["peak_count"]]
    out.update(_percentiles(pm[pm >= min(thresholds_m)], "prominence", "m"))
    return out


def drainage_fields(z: np.ndarray, res_m: float) -> dict[str, np.ndarray]:
    """Flow routing of ``z`` (:mod:`topo2vec_lib.hydrology`), each ``(ny, nx)``: ``filled`` (m), ``area_km2``
    (drainage area, the cell included; NaN on nodata), ``step_m`` (D8 distance to the receiver; ``res_m``
    for outlets) and ``d8_slope`` (tan of the steepest descent of the filled DEM to the receiver: the
    along-flow slope, not the cross-valley one; NaN at outlets and on nodata)."""
    from .hydrology import d8_receivers, fill_depressions, flow_accumulation

    valid = np.isfinite(z)
    filled = fill_depressions(z)
    rec = d8_receivers(filled, res_m)
    area_km2 = flow_accumulation(rec, z.shape) * (res_m * res_m / 1e6)
    area_km2[~valid] = np.nan
    nx = z.shape[1]
    idx = np.arange(rec.size)
    has = rec >= 0
    step_m = np.where(has, res_m * np.hypot(rec // nx - idx // nx, rec % nx - idx % nx), res_m)
    h = filled.ravel()
    d8_slope = np.where(has, (h - h[np.maximum(rec, 0)]) / step_m, np.nan)
    return {"filled": filled, "area_km2": area_km2, "step_m": step_m.reshape(z.shape),
            "d8_slope": d8_slope.reshape(z.shape)}


def drainage_density(terrain, res_m: float | None = None,
                     area_thresholds_km2: Iterable[float] = (0.1, 0.5, 1.0, 5.0),
                     concavity_min_area_km2: float = 0.5, concavity_bins_per_decade: int = 4,
                     concavity_min_cells: int = 30, fields: dict | None = None) -> dict[str, Any]:
    """Drainage density (km of channel per km2) for each drainage-area threshold (km2), and the slope-area fit.

    Also: the share of the valid area that depression filling raises by more than 0.5 m (lakes/closed
    basins), and the concavity index theta with its steepness ``k_s`` (``S = k_s A^-theta``, A in km2) fitted
    to median channel slopes (D8 along-flow slope, flats < 1e-4 left out) in logarithmic area bins from
    ``concavity_min_area_km2`` up (bins with at least ``concavity_min_cells`` cells). ``fields``:
    :func:`drainage_fields` when already computed.
    """
    z, res_m = terrain_values(terrain, res_m)
    f = drainage_fields(z, res_m) if fields is None else fields
    valid = np.isfinite(z)
    area_km2 = np.where(valid, f["area_km2"], 0.0)
    area = _valid_area_km2(z, res_m)
    thresholds = [float(v) for v in area_thresholds_km2]
    dens = [float(f["step_m"][valid & (area_km2 >= a)].sum() / 1000.0 / area) for a in thresholds]
    out: dict[str, Any] = {"drainage_area_thresholds_km2": thresholds, "drainage_density_per_km": dens,
                           "filled_fraction": float(np.mean((f["filled"] - z)[valid] > 0.5)),
                           "max_drainage_area_km2": float(area_km2.max())}
    grad = f["d8_slope"]
    ch = valid & (area_km2 >= concavity_min_area_km2) & np.isfinite(grad) & (grad > 1e-4)
    a_ch, s_ch = area_km2[ch], grad[ch]
    out.update(concavity_theta=None, steepness_ks=None, slope_area_bin_km2=[], slope_area_median_slope=[])
    if a_ch.size:
        lo, hi = math.log10(concavity_min_area_km2), math.log10(a_ch.max())
        edges = 10 ** np.arange(lo, hi + 1e-9, 1.0 / concavity_bins_per_decade)
        which = np.digitize(a_ch, edges) - 1
        centres, med = [], []
        for b in range(len(edges) - 1):
            sel = which == b
            if sel.sum() >= concavity_min_cells:
                centres.append(float(np.sqrt(edges[b] * edges[b + 1])))
                med.append(float(np.median(s_ch[sel])))
        out["slope_area_bin_km2"], out["slope_area_median_slope"] = centres, med
        if len(centres) >= 3:
            slope, icpt = np.polyfit(np.log10(centres), np.log10(med), 1)
            out["concavity_theta"], out["steepness_ks"] = float(-slope), float(10 ** icpt)
    return out


AREA_CLASS_EDGES_KM2 = (0.0, 0.002, 0.008, 0.032, 0.128, 0.512, 2.048, 8.192, 32.768, np.inf)
"""Edges (km2) of the drainage-area classes of :func:`by_drainage_area` (factors of 4 from about 2 cells at 30 m)."""


def by_drainage_area(z: np.ndarray, res_m: float, drainage: dict, curv: dict[str, np.ndarray],
                     edges_km2=AREA_CLASS_EDGES_KM2, min_cells: int = 100) -> dict[str, Any]:
    """Median D8 along-flow slope (tan; flats under 1e-4 left out, their share reported as ``flat_fraction``)
    and median profile / tangential curvature (1/m) in classes of drainage area (km2); ``drainage``:
    :func:`drainage_fields`.

    The whole slope-area curve, divides included: on real hillslopes the slope first *rises* with drainage
    area (convex divides, tangential curvature > 0) and then falls along the channels (concave valleys,
    tangential curvature < 0); ``slope_area_peak_km2`` is the class centre where the median slope peaks
    (the hillslope-to-valley transition). Classes with fewer than ``min_cells`` cells are None.
    """
    edges = np.asarray(edges_km2, dtype=np.float64)
    grad = drainage["d8_slope"]
    a = np.where(np.isfinite(z), drainage["area_km2"], np.nan)
    cls = np.digitize(np.nan_to_num(a, nan=-1.0), edges) - 1
    cls[~np.isfinite(a) | ~np.isfinite(grad)] = -1
    n_cls = len(edges) - 1
    centres = [float(np.sqrt(max(lo, res_m * res_m / 1e6) * (hi if np.isfinite(hi) else 4 * lo)))
               for lo, hi in zip(edges[:-1], edges[1:])]
    out: dict[str, Any] = {"area_class_edges_km2": [float(e) for e in edges[:-1]] + [None],
                           "area_class_centre_km2": centres}
    keys = ("slope_median", "flat_fraction", "curv_profile_median_per_m", "curv_tangential_median_per_m",
            "fraction")
    out.update({f"by_area_{k}": [None] * n_cls for k in keys})
    total = int((cls >= 0).sum())
    for k in range(n_cls):
        m = cls == k
        n = int(m.sum())
        out["by_area_fraction"][k] = n / total if total else None
        if n < min_cells:
            continue
        steep = grad[m] >= 1e-4
        out["by_area_flat_fraction"][k] = float(1 - steep.mean())
        if steep.sum() >= min_cells:
            out["by_area_slope_median"][k] = float(np.median(grad[m][steep]))
        for name in ("profile", "tangential"):
            c = curv[name][m]
            c = c[np.isfinite(c)]
            out[f"by_area_curv_{name}_median_per_m"][k] = float(np.median(c)) if c.size else None
    med = [(v, c) for v, c in zip(out["by_area_slope_median"], centres) if v is not None]
    out["slope_area_peak_km2"] = max(med)[1] if med else None
    return out


def gradient_anisotropy(terrain, res_m: float | None = None, block_m: float = 4800.0) -> dict[str, Any]:
    """Structural grain: coherence of the gradient structure tensor in square blocks of ``block_m``.

    Per block, ``J = mean(grad z grad z^T)``; coherence ``= (l1 - l2) / (l1 + l2)`` of its eigenvalues (0 for
    isotropic relief, 1 for parallel ridges). Returns the median and p90 over blocks with no nodata, and
    the whole-window coherence.
    """
    z, res_m = terrain_values(terrain, res_m)
    gy, gx = np.gradient(z, res_m)
    b = max(3, int(round(block_m / res_m)))
    ny, nx = (z.shape[0] // b) * b, (z.shape[1] // b) * b

    def blocks(a):
        return a[:ny, :nx].reshape(ny // b, b, nx // b, b).mean(axis=(1, 3))

    def coherence(jxx, jyy, jxy):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy)

    out: dict[str, Any] = {"anisotropy_block_m": float(b * res_m)}
    if ny and nx:
        c = coherence(blocks(gx * gx), blocks(gy * gy), blocks(gx * gy)).ravel()
        c = c[np.isfinite(c)]
        out["anisotropy_coherence_median"] = float(np.median(c)) if c.size else None
        out["anisotropy_coherence_p90"] = float(np.percentile(c, 90)) if c.size else None
    ok = np.isfinite(gx) & np.isfinite(gy)
    out["anisotropy_coherence_window"] = float(coherence(np.mean(gx[ok] ** 2), np.mean(gy[ok] ** 2),
                                                         np.mean(gx[ok] * gy[ok])))
    return out


RELIEF_CLASS_EDGES_M = (0.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 700.0, np.inf)
"""Edges (m) of the local-relief classes of :func:`by_relief_class`."""


def by_relief_class(z: np.ndarray, res_m: float, relief: np.ndarray, curv: dict[str, np.ndarray],
                    peaks: tuple[np.ndarray, np.ndarray] | None = None, drainage: dict | None = None,
                    edges_m=RELIEF_CLASS_EDGES_M, min_cells: int = 2000) -> dict[str, Any]:
    """Statistics within classes of local relief (``relief``: :func:`local_relief`, m), so that terrains with
    different mixes of plains and mountains compare like with like.

    Per class (lists, one value per class; None where the class has fewer than ``min_cells`` cells):
    area fraction, slope p50/p90 (deg), profile and tangential curvature IQR (1/m) and share of cells with
    ``|curvature| > 0.01 /m`` (sharp creases), peaks per km2 with prominence >= 20 / 50 m (peak cell in the
    class), drainage density (km/km2) at A >= 0.1 / 1 km2, and at A >= 1 km2 the median channel slope (D8
    along-flow, tan; flat cells under 1e-4 left out) and the share of such flat channel cells.
    """
    edges = np.asarray(edges_m, dtype=np.float64)
    cls = np.digitize(relief, edges) - 1           # NaN relief -> len(edges) - 1 (no class)
    cls[~np.isfinite(relief)] = -1
    n_cls = len(edges) - 1
    slope = slope_deg(z, res_m)
    km2 = res_m * res_m / 1e6
    names = ["area_fraction", "slope_p50_deg", "slope_p90_deg", "curv_profile_iqr_per_m",
             "curv_tangential_iqr_per_m", "curv_profile_sharp_fraction", "curv_tangential_sharp_fraction",
             "peaks_per_km2_prom20m", "peaks_per_km2_prom50m", "drainage_km_per_km2_A0.1",
             "drainage_km_per_km2_A1", "channel_slope_median_A1", "channel_flat_fraction_A1"]
    out: dict[str, Any] = {"relief_class_edges_m": [float(e) for e in edges[:-1]] + [None]}
    out.update({f"by_relief_{n}": [None] * n_cls for n in names})
    total = int((cls >= 0).sum())
    flat_cls = cls.ravel()
    peak_cls = flat_cls[peaks[0]] if peaks is not None else None
    for k in range(n_cls):
        m = cls == k
        n = int(m.sum())
        out["by_relief_area_fraction"][k] = n / total if total else None
        if n < min_cells:
            continue
        s = slope[m]
        s = s[np.isfinite(s)]
        out["by_relief_slope_p50_deg"][k], out["by_relief_slope_p90_deg"][k] = \
            (float(v) for v in np.percentile(s, [50, 90]))
        for name in ("profile", "tangential"):
            c = curv[name][m]
            c = c[np.isfinite(c)]
            if c.size:
                out[f"by_relief_curv_{name}_iqr_per_m"][k] = float(np.subtract(*np.percentile(c, [75, 25])))
                out[f"by_relief_curv_{name}_sharp_fraction"][k] = float(np.mean(np.abs(c) > 0.01))
        area = n * km2
        if peaks is not None:
            pm = peaks[1][peak_cls == k]
            out["by_relief_peaks_per_km2_prom20m"][k] = float(np.sum(pm >= 20) / area)
            out["by_relief_peaks_per_km2_prom50m"][k] = float(np.sum(pm >= 50) / area)
        if drainage is not None:
            a = np.where(m, drainage["area_km2"], 0.0)
            a = np.nan_to_num(a, nan=0.0)
            for thr, key in ((0.1, "drainage_km_per_km2_A0.1"), (1.0, "drainage_km_per_km2_A1")):
                out[f"by_relief_{key}"][k] = float(drainage["step_m"][a >= thr].sum() / 1000.0 / area)
            d8 = drainage["d8_slope"]
            ch = (a >= 1.0) & np.isfinite(d8)
            if ch.sum() >= 30:
                steep = d8[ch] >= 1e-4
                out["by_relief_channel_flat_fraction_A1"][k] = float(1 - steep.mean())
                if steep.sum() >= 30:
                    out["by_relief_channel_slope_median_A1"][k] = float(np.median(d8[ch][steep]))
    return out


# --------------------------------------------------------------------------------------------------
# everything, and the comparison
# --------------------------------------------------------------------------------------------------
def terrain_statistics(terrain, res_m: float | None = None, *, lags_px: Iterable[int] = DEFAULT_LAGS_PX,
                       relief_window_m: float = 1000.0, curvature_step_px: int = 1,
                       prominence_thresholds_m: Iterable[float] = (20, 50, 100, 300),
                       area_thresholds_km2: Iterable[float] = (0.1, 0.5, 1.0, 5.0),
                       hydrology: bool = True, prominence: bool = True) -> dict[str, Any]:
    """All the statistics of a terrain in one JSON-able dict (see the module docstring for each definition),
    including :func:`by_relief_class`, :func:`by_drainage_area` and :func:`gradient_anisotropy`.

    ``hydrology`` / ``prominence`` False skip the two slowest parts (depression filling and flow routing,
    the prominence sweep). ``seconds`` records how long each part took.
    """
    z, res_m = terrain_values(terrain, res_m)
    out: dict[str, Any] = {"shape": list(z.shape), "res_m": res_m,
                           "nodata_fraction": float(1 - np.isfinite(z).mean())}
    seconds: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        result = fn()
        seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, 2)
        return result

    out.update(timed("slope", lambda: slope_distribution(z, res_m)))
    curv = timed("curvature", lambda: curvatures(z, res_m, step_px=curvature_step_px))
    out.update(timed("curvature", lambda: curvature_distribution(z, res_m, step_px=curvature_step_px, curv=curv)))
    out.update(timed("roughness", lambda: roughness_vs_lag(z, res_m, lags_px)))
    relief = timed("relief", lambda: local_relief(z, res_m, relief_window_m))
    out.update(timed("relief", lambda: relief_distribution(z, res_m, relief_window_m, relief=relief)))
    out.update(timed("hypsometry", lambda: hypsometry(z, res_m)))
    peaks = drainage = None
    if prominence:
        peaks = timed("prominence", lambda: interior_peaks(z))
        out.update(timed("prominence", lambda: prominence_density(z, res_m, prominence_thresholds_m, peaks=peaks)))
    if hydrology:
        drainage = timed("drainage", lambda: drainage_fields(z, res_m))
        out.update(timed("drainage", lambda: drainage_density(z, res_m, area_thresholds_km2, fields=drainage)))
        out.update(timed("drainage", lambda: by_drainage_area(z, res_m, drainage, curv)))
    out.update(timed("anisotropy", lambda: gradient_anisotropy(z, res_m)))
    out.update(timed("by_relief", lambda: by_relief_class(z, res_m, relief, curv, peaks, drainage)))
    out["seconds"] = seconds
    return out


def _cdf_distances(edges, fa, fb) -> tuple[float, float]:
    """(KS, Wasserstein-1) between two binned distributions with the same ``edges``.

    KS is evaluated at the bin edges (a lower bound of the exact KS, within one bin); Wasserstein-1 is the
    integral of |CDF_a - CDF_b|, exact for the binned distributions, in the unit of the edges.
    """
    edges, fa, fb = (np.asarray(v, dtype=np.float64) for v in (edges, fa, fb))
    if fa.shape != fb.shape or fa.size != edges.size - 1:
        raise ValueError(f"histograms of {fa.size} and {fb.size} bins do not match {edges.size - 1} bins")
    ca = np.cumsum(fa) / max(fa.sum(), 1e-300)
    cb = np.cumsum(fb) / max(fb.sum(), 1e-300)
    diff = np.abs(ca - cb)
    return float(diff.max()), float(np.sum(diff * np.diff(edges)))


def _ratio(b, a):
    if a is None or b is None:
        return None
    a, b = float(a), float(b)
    if a == 0:
        return None if b == 0 else float("inf")
    return b / a


def compare_statistics(reference: dict, other: dict) -> dict[str, Any]:
    """How ``other`` differs from ``reference`` (both from :func:`terrain_statistics`), JSON-able.

    - distribution distances: ``ks_*`` (max CDF gap, 0..1) and ``w1_*`` (Wasserstein-1, in degrees for slope,
      1/m for curvature) of the slope and the profile/tangential/plan curvature histograms;
    - ``ratio_*``: other / reference for the roughness std at each common lag, peak densities at each
      prominence threshold, drainage densities at each area threshold, slope and relief percentiles;
    - ``diff_*``: other - reference for the Hurst exponents, hypsometric integral and concavity index.
    """
    out: dict[str, Any] = {}
    if "slope_hist_fraction" in reference and "slope_hist_fraction" in other:
        out["ks_slope"], out["w1_slope_deg"] = _cdf_distances(
            reference["slope_hist_edges_deg"], reference["slope_hist_fraction"], other["slope_hist_fraction"])
    for name in ("profile", "tangential", "plan"):
        key = f"curv_{name}_hist_fraction"
        if key in reference and key in other:
            out[f"ks_curv_{name}"], out[f"w1_curv_{name}_per_m"] = _cdf_distances(
                reference["curvature_hist_edges_per_m"], reference[key], other[key])
            out[f"ratio_curv_{name}_iqr"] = _ratio(other.get(f"curv_{name}_iqr_per_m"),
                                                   reference.get(f"curv_{name}_iqr_per_m"))
    for p in (10, 50, 90):
        out[f"ratio_slope_p{p}"] = _ratio(other.get(f"slope_p{p}_deg"), reference.get(f"slope_p{p}_deg"))
    for key in [k for k in reference if k.startswith("relief") and k.endswith(("_p50_m", "_p90_m"))]:
        out[f"ratio_{key[:-2]}"] = _ratio(other.get(key), reference.get(key))
    if "roughness_lag_m" in reference and "roughness_lag_m" in other:
        rb = dict(zip(other["roughness_lag_m"], other["roughness_std_m"]))
        common = [(lag, s) for lag, s in zip(reference["roughness_lag_m"], reference["roughness_std_m"]) if lag in rb]
        out["roughness_lag_m"] = [c[0] for c in common]
        out["ratio_roughness"] = [_ratio(rb[lag], s) for lag, s in common]
    for key in ("hurst", "hurst_short", "hurst_long", "hypsometric_integral", "concavity_theta"):
        if reference.get(key) is not None and other.get(key) is not None:
            out[f"diff_{key}"] = float(other[key]) - float(reference[key])
    if reference.get("prominence_thresholds_m") == other.get("prominence_thresholds_m") and \
            "peak_density_per_km2" in reference:
        out["prominence_thresholds_m"] = reference["prominence_thresholds_m"]
        out["ratio_peak_density"] = [_ratio(b, a) for a, b in
                                     zip(reference["peak_density_per_km2"], other["peak_density_per_km2"])]
    if reference.get("drainage_area_thresholds_km2") == other.get("drainage_area_thresholds_km2") and \
            "drainage_density_per_km" in reference:
        out["drainage_area_thresholds_km2"] = reference["drainage_area_thresholds_km2"]
        out["ratio_drainage_density"] = [_ratio(b, a) for a, b in
                                         zip(reference["drainage_density_per_km"], other["drainage_density_per_km"])]
    return out
