"""The deterministic synthetic world: the embedded default terrain of the study.

One call builds a square window of a made-up landscape, bit-identical for the same (seed, region, window).
Every class of the paper gets a terrain signature, in physical units so that any ``res_m`` works:

1. **Regional relief** (``_regional_fields``): a "mountainousness" ramp across the window (random direction,
   winding borders) turns one side into alpine mountains (base about 2,100 m), the middle into hills and the
   other side into plains (base 250-320 m, slopes of about 1 degree). The ramp spans at least 36 km, so a
   small window holds only a slice of it (usually hills to mountains).
2. **Fractal relief** (``fbm``): spectral synthesis with a power-law spectrum (amplitude ~ k^-(H+1),
   H = 0.85, flattened beyond 20 km wavelengths), plus a "ridged" copy (-|fBm|) for sharp alpine crests;
   peaks, saddles and ridges appear at every scale. Closed basins wider than about 0.5 km are lifted to
   their spill level at a coarse scale (``_coarse_fill_lift``) so they become valley floors, not big lakes.
3. **Karst plateau**: an irregular disc (radius 14-19 % of the window side) raised into a table 40 m above
   the local 90th percentile of the relief, with gentle rolling relief and almost no river incision.
4. **Escarpments**: 2-3 curved cuestas: a cliff of 55-75 degrees stepping up 80-250 m, then a back slope
   falling off over 1-3 km.
5. **River valleys** (``carve_valleys``): 4 rounds of depression filling, D8 flow routing and accumulation,
   then incision ``min(K * area_km2**0.4, cap)`` along channels (area >= 0.3 km2; K and the cap scale with
   the local relief; K is 95 % lower on the karst plateau), widened into V-shaped valleys with side slopes
   of 5-32 degrees. Lakes drain through their breached outlets; what remains is filled, so valleys are
   continuous and drain to the window edge. Escarpments crossed by channels remain as steps (waterfalls).
6. **Sinkholes**: closed bowl-shaped depressions 30-300 m across (power law: many small) and 5-40 m deep,
   about 25 per km2 of plateau, cut *after* the hydrology where the ground is flat enough for them to be
   closed, so they stay unfilled.

Measured on the default 36 km windows at 30 m (seed 0): elevations about 210-2,900 m, median slope about
29 degrees where the 1 km relief exceeds 500 m and below 1 degree where it is under 50 m, Hurst exponent
about 0.75-0.8 (``relief_statistics``).
"""
from __future__ import annotations

import zlib

import numpy as np
import xarray as xr
from scipy import ndimage

from .grid import make_dataarray, region_lonlat_of, region_window, slope_deg, values_res
from .hydrology import d8_receivers, fill_depressions, flow_accumulation

HURST = 0.85
"""Hurst exponent of the spectral synthesis."""


def region_rng(seed: int, region: str) -> np.random.Generator:
    """The Generator of a region's world: the seed and the region's name both feed it."""
    return np.random.default_rng([int(seed), zlib.crc32(str(region).encode())])


def fbm(shape, res_m: float, rng: np.random.Generator, hurst: float = HURST,
        max_wavelength_m: float = 20_000.0) -> np.ndarray:
    """Fractional Brownian surface ``shape`` (ny, nx) by FFT spectral synthesis, float64.

    Amplitude spectrum ``k^-(hurst+1)`` (roughness std grows as ``lag^hurst``), flattened for wavelengths
    longer than ``max_wavelength_m``. Synthesised on a grid 25 % larger and cropped, so it is not periodic.
    Scaled so that the std of differences between neighbouring pixels equals ``(res_m / 30) ** hurst``,
    i.e. 1 at 30 m: a physical scale independent of the grid.
    """
    ny, nx = shape
    py, px = int(ny * 1.25) + 8, int(nx * 1.25) + 8
    ky = np.fft.fftfreq(py, d=res_m)[:, None]
    kx = np.fft.rfftfreq(px, d=res_m)[None, :]
    k = np.hypot(kx, ky)
    k_min = 1.0 / max_wavelength_m
    amp = np.maximum(k, k_min) ** -(hurst + 1.0)
    amp[0, 0] = 0.0
    noise = rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)
    field = np.fft.irfft2(amp * noise, s=(py, px))
    oy, ox = rng.integers(0, py - ny + 1), rng.integers(0, px - nx + 1)
    field = field[oy:oy + ny, ox:ox + nx]
    lag1 = np.sqrt(0.5 * (np.var(np.diff(field, axis=0)) + np.var(np.diff(field, axis=1))))
    return field / lag1 * (res_m / 30.0) ** hurst


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _unit_noise(shape, res_m, rng, wavelength_m):
    """Smooth zero-mean, unit-std random field ``shape`` with features of about ``wavelength_m`` (Gaussian spectrum)."""
    ny, nx = shape
    py, px = int(ny * 1.25) + 8, int(nx * 1.25) + 8
    k = np.hypot(np.fft.rfftfreq(px, d=res_m)[None, :], np.fft.fftfreq(py, d=res_m)[:, None])
    amp = np.exp(-0.5 * (k * wavelength_m) ** 2)
    amp[0, 0] = 0.0
    noise = rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)
    f = np.fft.irfft2(amp * noise, s=(py, px))[:ny, :nx]
    return (f - f.mean()) / (f.std() + 1e-12)


def _regional_fields(ny, nx, res_m, rng, zone_half_width_m=18_000.0):
    """Mountainousness t (about -1 plains .. +1 alpine), relief amplitude (0..1) and base elevation (m).

    t ramps across the window along a random direction over at least ``zone_half_width_m`` from the centre
    (so the default 36 km window spans plains to alpine, and a small window holds only a slice of that
    transition), plus a smooth wobble so the zone borders wind.
    """
    yy, xx = np.mgrid[0:ny, 0:nx]
    half_m = max(nx * res_m / 2, ny * res_m / 2, zone_half_width_m)
    u = (xx - nx / 2) * res_m / half_m
    v = (ny / 2 - yy) * res_m / half_m
    angle = rng.uniform(0, 2 * np.pi)
    wobble = _unit_noise((ny, nx), res_m, rng, max(nx, ny) * res_m / 2)
    wobble *= min(1.0, max(nx, ny) * res_m / (2 * zone_half_width_m))
    t = np.cos(angle) * u + np.sin(angle) * v + 0.25 * wobble
    amplitude = np.interp(t, [-1.0, -0.45, -0.1, 0.25, 0.6], [0.03, 0.05, 0.3, 0.85, 1.0])
    base_m = np.interp(t, [-1.0, -0.45, -0.1, 0.25, 0.6], [250.0, 320.0, 700.0, 1500.0, 2100.0])
    return t, amplitude, base_m


def _relief(ny, nx, res_m, rng, amplitude, base_m):
    """Base elevation plus fractal and ridged relief, scaled by the amplitude field (metres)."""
    smooth = fbm((ny, nx), res_m, rng)
    ridged = -np.abs(fbm((ny, nx), res_m, rng))
    ridged -= ridged.mean()
    alpine = amplitude ** 1.5  # ridges belong to the high mountains
    relief = (0.75 * smooth + 1.0 * alpine * ridged) * 8.5 * amplitude
    relief = base_m + relief - np.median(relief)
    relief = np.maximum(relief, 50.0 + 0.2 * (relief - 50.0))  # soft floor: no sea in the default world
    return relief + _coarse_fill_lift(relief, res_m)


def _coarse_fill_lift(z, res_m, block_m=480.0):
    """How much filling the km-scale basins of ``z`` raises it (>= 0, smooth), on a grid of ``block_m`` pixels.

    Closed basins kilometres wide would turn into large flat lakes under flow routing; lifting them to their
    spill level at the coarse scale (keeping the fine relief on top) leaves broad valley floors instead.
    """
    f = max(1, int(round(block_m / res_m)))
    ny, nx = z.shape
    cy, cx = -(-ny // f), -(-nx // f)
    padded = np.pad(z, ((0, cy * f - ny), (0, cx * f - nx)), mode="edge")
    coarse = padded.reshape(cy, f, cx, f).mean(axis=(1, 3))
    lift = fill_depressions(coarse) - coarse
    # bilinear back to the fine pixel centres (coarse pixel centres sit at (k + 0.5) * f - 0.5)
    yy = (np.arange(ny) + 0.5) / f - 0.5
    xx = (np.arange(nx) + 0.5) / f - 0.5
    return ndimage.map_coordinates(lift, np.meshgrid(yy, xx, indexing="ij"), order=1, mode="nearest")


def _karst_plateau(z, res_m, rng, t):
    """Raise an irregular disc into a table; returns (new z, plateau mask in [0, 1], (cy, cx, radius_px))."""
    ny, nx = z.shape
    # centre on the hills (t near -0.1), away from the edges
    cand = np.argwhere((np.abs(t + 0.1) < 0.2)[ny // 5:ny - ny // 5, nx // 5:nx - nx // 5]) + (ny // 5, nx // 5)
    cy, cx = cand[rng.integers(len(cand))] if len(cand) else (ny // 2, nx // 2)
    radius_px = rng.uniform(0.14, 0.19) * min(ny, nx)
    yy, xx = np.ogrid[0:ny, 0:nx]
    r = np.hypot(yy - cy, xx - cx)
    r = r + 0.22 * radius_px * _unit_noise(z.shape, res_m, rng, radius_px * res_m)  # irregular outline
    mask = _smoothstep((radius_px - r) / (0.12 * radius_px))
    inside = mask > 0.5
    level = np.percentile(z[inside], 90) + 40.0
    rolling = 0.6 * fbm(z.shape, res_m, rng, hurst=0.85, max_wavelength_m=radius_px * res_m)
    table = level + rolling - rolling[inside].mean()
    return np.maximum(z, table) * mask + z * (1 - mask), mask, (cy, cx, radius_px)


def _escarpments(z, res_m, rng, count):
    """Add ``count`` curved cuestas: a cliff of 55-75 degrees stepping up 80-250 m, then a back slope
    that falls off over 1-3 km; returns (new z, list of arcs)."""
    ny, nx = z.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    arcs = []
    for _ in range(count):
        radius_px = rng.uniform(0.3, 0.6) * min(ny, nx)
        # centre so that the arc passes through the window's inner part
        theta0 = rng.uniform(0, 2 * np.pi)
        py, px = rng.uniform(0.25, 0.75) * ny, rng.uniform(0.25, 0.75) * nx
        cy, cx = py - radius_px * np.sin(theta0), px - radius_px * np.cos(theta0)
        span = rng.uniform(np.radians(50), np.radians(100))
        height_m = rng.uniform(80, 250)
        cliff_deg = rng.uniform(55, 75)
        width_m = max(height_m / np.tan(np.radians(cliff_deg)), 2.0 * res_m)
        back_m = rng.uniform(1000, 3000)
        wobble = 0.04 * radius_px * _unit_noise(z.shape, res_m, rng, 0.3 * radius_px * res_m)
        r = np.hypot(yy - cy, xx - cx) + wobble
        theta = np.arctan2(yy - cy, xx - cx)
        dtheta = np.angle(np.exp(1j * (theta - theta0)))  # in (-pi, pi]
        along = _smoothstep((span / 2 - np.abs(dtheta)) / (0.35 * span / 2))
        s_m = (r - radius_px) * res_m * (1 if rng.random() < 0.5 else -1)  # signed distance, + = upper side
        across = _smoothstep(s_m / width_m + 0.5) * np.exp(-np.maximum(s_m - width_m / 2, 0.0) / back_m)
        z = z + height_m * along * across
        arcs.append(dict(center_px=(cy, cx), radius_px=radius_px, theta0=theta0, span=span, height_m=height_m))
    return z, arcs


def carve_valleys(z: np.ndarray, res_m: float, k_m: np.ndarray, side_tan: np.ndarray, max_depth_m, rounds: int = 4,
                  channel_area_km2: float = 0.3, exponent: float = 0.4) -> np.ndarray:
    """Incise river valleys by flow routing; returns a depression-free (float64) surface.

    Each round: fill depressions, D8 receivers, drainage area A (km^2); on channel cells
    (A >= ``channel_area_km2``) the depth ``min(k_m * A**exponent, max_depth_m) / rounds`` (metres), spread sideways
    with slope ``side_tan`` (tan of the valley side angle) into a V, is cut from the surface. Cells under
    a filled depression are not cut, but its spill point is, so lakes drain through breached outlets
    instead of being flattened. The remaining depressions are filled at the end (flat lakes).
    ``k_m``, ``side_tan`` and ``max_depth_m`` are ``(ny, nx)`` fields (they vary with the relief).
    """
    for _ in range(rounds):
        h = fill_depressions(z)
        rec = d8_receivers(h, res_m)
        area_km2 = flow_accumulation(rec, h.shape) * (res_m * res_m) / 1e6
        dry = (h - z) < 0.5  # cells under a filled lake are not cut: their barrier (the spill point) is
        depth = np.minimum(k_m * area_km2 ** exponent, max_depth_m)
        depth = np.where((area_km2 >= channel_area_km2) & dry, depth, 0.0) / rounds
        drop = res_m * side_tan
        spread = depth
        for _ in range(int(np.ceil(depth.max() / max(drop.min(), 1e-6))) + 1):
            nxt = np.maximum(spread, ndimage.maximum_filter(spread, size=3) - drop)
            if np.array_equal(nxt, spread):
                break
            spread = nxt
        spread = np.maximum(ndimage.gaussian_filter(spread, 1.0), 0.8 * depth)
        z = z - spread
    return fill_depressions(z)


def _sinkholes(z, res_m, rng, mask, per_km2=25.0, tries=20):
    """Cut closed bowls (30-300 m across, 5-40 m deep) where ``mask`` > 0.9.

    Returns (z, list of (row, col, d_m, depth_m)).

    A bowl goes only where the ground around it (its footprint plus one pixel) varies by less than half its
    depth and it does not touch the window edge or another bowl, so every bowl is a closed depression.
    """
    ny, nx = z.shape
    where = np.argwhere(mask > 0.9)
    if len(where) == 0:
        return z, []
    area_km2 = len(where) * res_m * res_m / 1e6
    n = max(3, int(rng.poisson(per_km2 * area_km2)))
    # diameters: power law (many small, few large) between 30 and 300 m
    diam = np.sort(30.0 * 10 ** rng.power(0.6, n))[::-1]
    taken = np.zeros(z.shape, dtype=bool)
    holes = []
    z = z.copy()
    for d_m in diam:
        depth_m = float(np.clip(d_m * rng.uniform(0.12, 0.3), 5.0, 40.0))
        r_px = max(d_m / 2 / res_m, 0.5)
        pad = int(np.ceil(r_px)) + 1
        for _ in range(tries):
            iy, ix = where[rng.integers(len(where))]
            y0, y1, x0, x1 = iy - pad, iy + pad + 1, ix - pad, ix + pad + 1
            if y0 < 1 or x0 < 1 or y1 > ny - 1 or x1 > nx - 1 or taken[y0:y1, x0:x1].any():
                continue
            ground = z[y0:y1, x0:x1]
            if ground.max() - ground.min() < 0.5 * depth_m:
                break
        else:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        r = np.hypot(yy - iy, xx - ix) * res_m
        bowl = depth_m * np.cos(np.clip(r / (d_m / 2), 0, 1) * np.pi / 2) ** 2
        bowl[r > max(d_m / 2, 0.5 * res_m)] = 0.0
        z[y0:y1, x0:x1] -= bowl
        taken[y0:y1, x0:x1] = True
        holes.append((int(iy), int(ix), float(d_m), depth_m))
    return z, holes


def synthetic_elevation(ny: int, nx: int, res_m: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """The synthetic landscape ``(ny, nx)`` float64 metres (row 0 = north) and a dict describing its features."""
    t, amplitude, base_m = _regional_fields(ny, nx, res_m, rng)
    z = _relief(ny, nx, res_m, rng, amplitude, base_m)
    z, karst, plateau = _karst_plateau(z, res_m, rng, t)
    z, arcs = _escarpments(z, res_m, rng, count=int(rng.integers(2, 4)))
    k_m = (8.0 + 140.0 * amplitude) * (1.0 - 0.95 * karst)
    side_tan = np.tan(np.radians(5.0 + 27.0 * amplitude))
    z = carve_valleys(z, res_m, k_m, side_tan, max_depth_m=15.0 + 700.0 * amplitude)
    z, holes = _sinkholes(z, res_m, rng, karst)
    return z, {"plateau_px": plateau, "escarpments": arcs, "sinkholes": holes, "mountainousness": t}


def synthetic_terrain(region: str, center_lonlat, size_km: float, res_m: float = 30, crs: str = "EPSG:3035",
                      seed: int = 0, region_lonlat=None) -> xr.DataArray:
    """The synthetic terrain DataArray of ``region`` (docs/architecture.md), deterministic from ``seed`` and ``region``.

    A ``size_km`` square window at ``res_m`` m/px around ``center_lonlat`` (lon, lat), which must lie in the
    region's polygon. Same arguments -> bit-identical array; another seed or region -> another world.
    """
    bounds = region_window(region, center_lonlat, size_km, res_m, crs, region_lonlat=region_lonlat)
    res_m = float(res_m)
    nx, ny = int(round((bounds[2] - bounds[0]) / res_m)), int(round((bounds[3] - bounds[1]) / res_m))
    z, _ = synthetic_elevation(ny, nx, res_m, region_rng(seed, region))
    return make_dataarray(z, bounds, res_m, crs, region=region,
                          region_lonlat=region_lonlat_of(region, region_lonlat), source="synthetic")


def relief_statistics(da, lags_px=(1, 2, 4, 8, 16, 32, 64), mountain_relief_m: float = 500.0,
                      plain_relief_m: float = 50.0, res_m: float | None = None) -> dict:
    """Plausibility statistics of a terrain (DataArray, or array with ``res_m``), as plain JSON-able numbers.

    - elevation min/max/mean/std (m) and the nodata fraction;
    - slope (degrees) percentiles overall, and medians in mountains / plains, where the local relief
      (max - min within a 1 km square) is above ``mountain_relief_m`` / below ``plain_relief_m``;
    - roughness vs scale: std of elevation differences at each lag (x and y pooled), and its log-log
      slope over lags up to 1 km, the Hurst exponent (real terrain: about 0.6-0.9).
    """
    z, res_m = values_res(da, res_m)
    valid = np.isfinite(z)
    out = {"shape": list(z.shape), "res_m": res_m, "nodata_fraction": float(1 - valid.mean())}
    if not valid.any():
        raise ValueError("the terrain has no valid (non-NaN) cell")
    zv = z[valid]
    out.update(elevation_min_m=float(zv.min()), elevation_max_m=float(zv.max()),
               elevation_mean_m=float(zv.mean()), elevation_std_m=float(zv.std()))
    slope = slope_deg(z, res_m)
    ok = np.isfinite(slope)
    p10, p50, p90 = np.percentile(slope[ok], [10, 50, 90])
    out.update(slope_p10_deg=float(p10), slope_median_deg=float(p50), slope_p90_deg=float(p90))
    size = max(3, int(round(1000.0 / res_m)) | 1)
    zf = np.where(valid, z, np.nanmean(zv))
    local = ndimage.maximum_filter(zf, size=size) - ndimage.minimum_filter(zf, size=size)
    mountain, plain = ok & (local > mountain_relief_m), ok & (local < plain_relief_m)
    out.update(mountain_fraction=float(mountain.mean()), plain_fraction=float(plain.mean()),
               slope_median_mountain_deg=float(np.median(slope[mountain])) if mountain.any() else None,
               slope_median_plain_deg=float(np.median(slope[plain])) if plain.any() else None,
               slope_hist_edges_deg=list(range(0, 91, 2)),
               slope_hist_fraction=(np.histogram(slope[ok], bins=np.arange(0, 91, 2))[0] / ok.sum()).tolist())
    lags, stds = [], []
    for lag in lags_px:
        if lag >= min(z.shape):
            break
        d = np.concatenate([(z[:, lag:] - z[:, :-lag]).ravel(), (z[lag:] - z[:-lag]).ravel()])
        d = d[np.isfinite(d)]
        if d.size > 1:
            lags.append(float(lag * res_m))
            stds.append(float(d.std()))
    out.update(roughness_lag_m=lags, roughness_std_m=stds)
    fit = [(lg, s) for lg, s in zip(lags, stds) if lg <= 1000.0 and s > 0]
    out["hurst"] = (float(np.polyfit(np.log([f[0] for f in fit]), np.log([f[1] for f in fit]), 1)[0])
                    if len(fit) >= 2 else None)
    return out
