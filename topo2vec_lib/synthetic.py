"""The deterministic synthetic world: the embedded default terrain of the study, a function of position and seed.

Heights are defined at the pixel centres of an absolute lattice of the study CRS (column ``J`` at
``x = (J + 0.5) res_m``, row ``I`` at ``y = -(I + 0.5) res_m``): any window, or any tile of one, gives the same
heights where they overlap (bit for bit; ``tests/test_synthetic.py``), so a region of any extent is built tile by
tile, in parallel, in bounded memory (:func:`write_synthetic`). The world depends on ``(seed, res_m, crs)`` and
:class:`WorldParams`; the region's name does not enter it (train and test differ because they are elsewhere).

Ingredients, each a function of absolute position (:mod:`topo2vec_lib.noise`: hashed gradient noise):

1. **Regional relief**: a mountainousness field ``t`` (octave noise of 24-96 km wavelengths) turns places
   into alpine mountains (base about 2,100 m), hills or plains (base 250-320 m, slopes of about 1 degree).
2. **Fractal relief**: octave noise with amplitude ``wavelength ** 0.85`` from 20 km down to two pixels, the
   finest octaves damped by ``exp(-(60 m / wavelength)^2 / 2)`` (``reports/realism.md``, fix 1), plus a ridged
   copy with *soft* ridges ``-sqrt(f^2 + eps^2)`` (fix 2) for alpine crests.
3. **Karst plateaus**: discs of 4-7 km radius on a 30 km jittered lattice (in the hills), raised into a table
   40 m above the 90th percentile of the relief sampled inside them, with gentle rolling relief and almost no
   river incision.
4. **Escarpments**: curved cuestas on a 12 km jittered lattice: a cliff of 55-75 degrees stepping up 80-250 m,
   then a back slope falling off over 1-3 km.
5. **River valleys**: flow routing is not local, so it runs on a coarse grid (``coarse_m``, 90 m) in fixed
   *blocks* of the absolute lattice: block ``(bi, bj)`` routes, incises and fills its own domain (its
   ``2 block_km`` square support plus ``block_halo_km`` on every side; the domain edge drains), and the
   coarse carve field is the blend of the 4 blocks whose supports cover a cell, with smooth weights that sum
   to 1 (a partition of unity that vanishes ``block_halo_km`` inside each domain edge). Incision
   ``min(K A^0.4, cap)`` along channels (``A >= channel_area_km2``) widened into V-shaped valleys of 5-32
   degrees, smoothed without a one-pixel notch (fix 3); lakes drain through breached outlets, what remains is
   filled. The field is brought to the pixels by a cubic B-spline (positive weights: no overshoot).
6. **Threshold hillslopes**: 20 sweeps of talus relaxation towards a threshold slope of 35 +- 5 degrees (a
   smooth field), escarpment cliff faces exempt (fix 4); a local 3x3 operation, exact with a 20-pixel halo.
7. **Sinkholes**: closed bowls 30-300 m across (power law: many small) and 5-40 m deep, candidates on a 200 m
   jittered lattice, kept where the karst plateau is > 0.9, the ground under them varies by less than half
   their depth and no larger candidate is within reach (a hard-core rule: local, so tiles agree).

Everything but the blocks is local: a tile is computed with a halo (:attr:`SyntheticWorld.halo_px`). Pixel
heights combine the fine relief with the coarse carve field, so small pits remain where the coarse routing
did not see the fine relief (measured in ``reports/synthetic_v2.md``); the label rules fill them.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import ndimage

from . import noise as N
from .grid import make_dataarray, region_lonlat_of, region_window, slope_deg, values_res
from .hydrology import d8_receivers, fill_depressions, fill_levels, flow_accumulation
from .storage import atomic_path

HURST = 0.85
"""Hurst exponent of the fractal relief."""

RELIEF_UNIT = 0.04537
"""Scale of the octave noise so that its roughness at ~1 km lags equals the earlier spectral fBm's (about
15.9 at 960 m for a roughness of 1 at 30 m before the roll-off)."""


@dataclasses.dataclass(frozen=True)
class WorldParams:
    """The knobs of the synthetic world (lengths in metres unless named otherwise)."""

    hurst: float = HURST
    rolloff_m: float = 60.0               # fix 1: octaves of wavelength w scaled by exp(-(rolloff_m / w)^2 / 2)
    max_wavelength_m: float = 20_000.0
    ridge_softness: float = 8.0           # fix 2: -sqrt(f^2 + eps^2), eps in units of the 30 m roughness
    regional_wavelength_m: float = 96_000.0
    regional_bias: float = 0.15           # t = bias + gain * noise: more hills and mountains than plains
    regional_gain: float = 2.6
    coarse_m: float = 90.0                # grid of the flow routing (a whole number of pixels)
    block_km: float = 24.0                # spacing of the routing blocks (their supports are twice as wide)
    block_halo_km: float = 8.0            # routing domain beyond a block's support
    carve_rounds: int = 4
    channel_area_km2: float = 0.1
    incision_exponent: float = 0.4
    valley_sigma_m: float = 75.0          # fix 3: smoothing of the carved cross-section, no notch
    detail_gain: float = 1.0              # sub-lattice detail's RMS gradient <= this x the routed slope
    relax_iterations: int = 20            # fix 4: talus relaxation sweeps
    fill_block_m: float = 3840.0          # local depression filling in blocks this far apart (128 px at 30 m)
    fill_halo_m: float = 1440.0           # ... each filling its support plus this much (48 px)
    max_slope_deg: float = 35.0
    max_slope_spread_deg: float = 5.0
    escarpment_cell_km: float = 12.0
    escarpment_probability: float = 0.85
    plateau_cell_km: float = 30.0
    plateau_probability: float = 0.8
    sinkhole_cell_m: float = 200.0


WORLD = WorldParams()
_REGIONAL_T = (-1.0, -0.45, -0.1, 0.25, 0.6)
_REGIONAL_AMPLITUDE = (0.03, 0.05, 0.3, 0.85, 1.0)
_REGIONAL_BASE_M = (250.0, 320.0, 700.0, 1500.0, 2100.0)
_RIDGED_MEAN = -46.0       # about the mean of -sqrt(f^2 + 8^2) over the plane (relief units): a constant offset
_SINKHOLE_MAX_D_M = 300.0


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# --------------------------------------------------------------------------------------------------
# sparse features on jittered lattices: karst plateaus and escarpments
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plateau:
    """A karst plateau: centre (metres of the study CRS), radius, table level and its noise key."""

    cx: float
    cy: float
    radius_m: float
    level_m: float
    key: int


@dataclasses.dataclass(frozen=True)
class Escarpment:
    """A cuesta: an arc (centre, radius, middle angle, span) with a cliff stepping up ``height_m`` over ``width_m``
    on the ``sign`` side, then a back slope falling off over ``back_m``."""

    cx: float
    cy: float
    radius_m: float
    theta0: float
    span: float
    height_m: float
    width_m: float
    back_m: float
    sign: float
    key: int

    @property
    def reach_m(self) -> tuple[float, float]:
        """Radial extent (inner, outer) from the centre where the term is not zero."""
        up = 4.0 * self.back_m + self.width_m / 2
        down = self.width_m / 2 + 1.0
        inner, outer = (down, up) if self.sign > 0 else (up, down)
        return self.radius_m - inner - 0.05 * self.radius_m, self.radius_m + outer + 0.05 * self.radius_m


def _fill(z: np.ndarray, ramp: bool = True) -> np.ndarray:
    """``hydrology.fill_depressions`` (``ramp``: flats drain by one-ulp ramps) or ``fill_levels`` (flat) of ``z``
    rounded to float32 values: ties become exact or at least a float32 step apart, so the ramps always drain
    and the slow exact fallback is never needed."""
    z32 = z.astype(np.float32).astype(np.float64)
    return fill_depressions(z32) if ramp else fill_levels(z32)


def _box_mean5(a: np.ndarray) -> np.ndarray:
    """Mean over 5 x 5 pixels (edge values repeated) as explicit sums in a fixed order: unlike
    ``ndimage.uniform_filter``'s running sums, a pixel's value does not depend on where its array starts."""
    p = np.pad(a, 2, mode="edge")
    ny, nx = a.shape
    rows = p[0:ny] + p[1:ny + 1] + p[2:ny + 2] + p[3:ny + 3] + p[4:ny + 4]
    return (rows[:, 0:nx] + rows[:, 1:nx + 1] + rows[:, 2:nx + 2] + rows[:, 3:nx + 3] + rows[:, 4:nx + 4]) / 25.0


def _g(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-D ``x`` (columns) and ``y`` (rows) as the row and column that broadcast to their grid."""
    return x[None, :], y[:, None]


def _grid_xy(rows: tuple[int, int], cols: tuple[int, int], step_m: float, origin_px: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """Centre coordinates (x of the columns, y of the rows) of an absolute lattice of spacing ``step_m``."""
    x = (np.arange(cols[0], cols[1], dtype=np.float64) + origin_px) * step_m
    y = -(np.arange(rows[0], rows[1], dtype=np.float64) + origin_px) * step_m
    return x, y


class SyntheticWorld:
    """The synthetic world of one ``seed`` at ``res_m`` m/px: heights of any block of the absolute pixel lattice.

    ``elevation(rows, cols)`` gives rows ``I0:I1``, columns ``J0:J1`` (row 0 at y = 0, rows southwards) as
    float64 metres. :meth:`pixel_window` turns window bounds (metres) into those ranges.
    """

    def __init__(self, seed: int = 0, res_m: float = 30.0, params: WorldParams = WORLD):
        from .grid import check_positive, check_seed

        self.seed = check_seed(seed)
        self.res_m = check_positive("res_m", res_m)
        self.p = params
        self.c = max(1, int(round(params.coarse_m / self.res_m)))        # fine pixels per coarse cell
        self.coarse_res_m = self.c * self.res_m
        self.block_c = max(4, int(round(params.block_km * 1000 / self.coarse_res_m)))
        self.halo_c = max(2, int(round(params.block_halo_km * 1000 / self.coarse_res_m)))
        self.keys = {name: N.key_of(self.seed, i) for i, name in enumerate(
            ("regional", "smooth", "ridged", "plateau", "escarpment", "threshold", "sinkhole", "rolling"))}
        self.bands_fine = N.octaves(params.max_wavelength_m, 2 * self.res_m, params.hurst, params.rolloff_m)
        self.bands_coarse = [b for b in self.bands_fine if b[0] >= 2 * self.coarse_res_m]
        # octaves of at least 8 coarse cells are computed on the coarse lattice and interpolated to the pixels
        self.bands_low = [b for b in self.bands_fine if b[0] >= 8 * self.coarse_res_m]
        self.bands_mid = [b for b in self.bands_coarse if b[0] < 8 * self.coarse_res_m]
        self.bands_high = [b for b in self.bands_fine if b[0] < 8 * self.coarse_res_m]
        w = params.regional_wavelength_m
        self.bands_regional = [(w, 1.0), (w / 2, 0.5), (w / 4, 0.25)]
        self.chunk_c = 128                                                # coarse cells per cached chunk side
        r_px = _SINKHOLE_MAX_D_M / 2 / self.res_m
        self.sink_pad = int(math.ceil(r_px)) + 1
        self.fill_m = max(8, int(round(params.fill_block_m / self.res_m)))
        self.fill_h = max(4, int(round(params.fill_halo_m / self.res_m)))
        # pixels beyond a tile whose unfilled heights its computation reads (sinkholes, fill blocks)
        self.fill_margin_px = 4 * self.sink_pad + 2 * self.fill_m + self.fill_h + 1
        # ... and whose coarse fields the unfilled heights read (plus the relaxation halo)
        self.tile_margin_px = self.fill_margin_px + params.relax_iterations + 6
        self._features_cache: dict = {}

    # ---------------------------------------------------------------------------- geometry
    def pixel_window(self, bounds) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((I0, I1), (J0, J1))`` of window bounds ``(xmin, ymin, xmax, ymax)`` on this world's pixel lattice."""
        xmin, ymin, xmax, ymax = (float(b) for b in bounds)
        vals = [xmin / self.res_m, -ymax / self.res_m, xmax / self.res_m, -ymin / self.res_m]
        idx = [int(round(v)) for v in vals]
        if any(abs(v - i) > 1e-6 for v, i in zip(vals, idx)):
            raise ValueError(f"window bounds {tuple(bounds)} are not on the {self.res_m:g} m pixel lattice of the "
                             f"synthetic world (edges must be multiples of res_m; grid.window_bounds snaps them)")
        return (idx[1], idx[3]), (idx[0], idx[2])

    # ---------------------------------------------------------------------------- smooth fields
    def regional(self, x, y):
        """Mountainousness ``t``, relief amplitude (0..1) and base elevation (m) at ``x, y`` (arrays that
        broadcast: points, or a row ``x`` and a column ``y`` for their grid)."""
        n = N.fbm(x, y, self.keys["regional"], self.bands_regional)
        t = self.p.regional_bias + self.p.regional_gain * n
        return t, np.interp(t, _REGIONAL_T, _REGIONAL_AMPLITUDE), np.interp(t, _REGIONAL_T, _REGIONAL_BASE_M)

    def relief(self, x, y, bands) -> np.ndarray:
        """Base elevation plus fractal and (soft) ridged relief scaled by the regional amplitude (metres)."""
        return self.relief_from(N.fbm(x, y, self.keys["regional"], self.bands_regional),
                                N.fbm(x, y, self.keys["smooth"], bands), N.fbm(x, y, self.keys["ridged"], bands))

    def relief_from(self, regional_noise, smooth_noise, ridged_noise) -> np.ndarray:
        """:meth:`relief` from its three noise sums (any points)."""
        t = self.p.regional_bias + self.p.regional_gain * regional_noise
        amplitude = np.interp(t, _REGIONAL_T, _REGIONAL_AMPLITUDE)
        base_m = np.interp(t, _REGIONAL_T, _REGIONAL_BASE_M)
        smooth = RELIEF_UNIT * smooth_noise
        f = RELIEF_UNIT * ridged_noise
        ridged = -np.sqrt(f * f + self.p.ridge_softness ** 2) - _RIDGED_MEAN
        relief = (0.75 * smooth + amplitude * np.sqrt(amplitude) * ridged) * 8.5 * amplitude
        z = base_m + relief
        return np.maximum(z, 50.0 + 0.2 * (z - 50.0))      # soft floor: no sea in the default world

    # ---------------------------------------------------------------------------- sparse features
    def _cell_features(self, kind: str, ci: int, cj: int):
        hit = self._features_cache.get((kind, ci, cj))
        if hit is None:
            hit = self._make_plateau(ci, cj) if kind == "plateau" else self._make_escarpment(ci, cj)
            if len(self._features_cache) > 4096:
                self._features_cache.clear()
            self._features_cache[(kind, ci, cj)] = hit
        return hit

    def _u(self, kind: str, ci: int, cj: int, k: int) -> float:
        return float(N.hash_uniform(np.int64(ci), np.int64(cj), N.key_of(self.keys[kind], k)))

    def _make_plateau(self, ci: int, cj: int) -> Plateau | None:
        size = self.p.plateau_cell_km * 1000.0
        if self._u("plateau", ci, cj, 0) >= self.p.plateau_probability:
            return None
        cx = (cj + self._u("plateau", ci, cj, 1)) * size
        cy = (ci + self._u("plateau", ci, cj, 2)) * size
        t, _, _ = self.regional(np.array([cx]), np.array([cy]))
        if float(t[0]) > 0.7:                             # plateaus belong to hills and pre-alpine ranges
            return None
        radius = 4000.0 + 3000.0 * self._u("plateau", ci, cj, 3)
        # the table stands 40 m above the 90th percentile of the relief sampled inside the disc
        ring_r = np.concatenate([[0.0], np.repeat(radius * np.array([0.25, 0.5, 0.75, 0.95]), 15)])
        ring_a = np.concatenate([[0.0], np.tile(np.arange(15) * (2 * math.pi / 15), 4)])
        px, py = cx + ring_r * np.cos(ring_a), cy + ring_r * np.sin(ring_a)
        level = float(np.percentile(self.relief(px, py, self.bands_coarse), 90)) + 40.0
        return Plateau(cx, cy, radius, level, N.key_of(self.keys["plateau"], ci, cj))

    def _make_escarpment(self, ci: int, cj: int) -> Escarpment | None:
        size = self.p.escarpment_cell_km * 1000.0
        u = [self._u("escarpment", ci, cj, k) for k in range(10)]
        if u[0] >= self.p.escarpment_probability:
            return None
        radius = 6000.0 + 8000.0 * u[1]
        theta0 = 2 * math.pi * u[2]
        px, py = (cj + u[3]) * size, (ci + u[4]) * size           # a point of the arc, inside the cell
        cx, cy = px - radius * math.cos(theta0), py - radius * math.sin(theta0)
        span = math.radians(50.0 + 50.0 * u[5])
        height = 80.0 + 170.0 * u[6]
        cliff = math.radians(55.0 + 20.0 * u[7])
        width = max(height / math.tan(cliff), 2.0 * self.res_m)
        back = 1000.0 + 2000.0 * u[8]
        return Escarpment(cx, cy, radius, theta0, span, height, width, back, 1.0 if u[9] < 0.5 else -1.0,
                          N.key_of(self.keys["escarpment"], ci, cj))

    def _features_near(self, kind: str, x: np.ndarray, y: np.ndarray, reach_m: float) -> list:
        size = (self.p.plateau_cell_km if kind == "plateau" else self.p.escarpment_cell_km) * 1000.0
        i0, i1 = math.floor((y.min() - reach_m) / size), math.floor((y.max() + reach_m) / size)
        j0, j1 = math.floor((x.min() - reach_m) / size), math.floor((x.max() + reach_m) / size)
        out = []
        for ci in range(i0, i1 + 1):
            for cj in range(j0, j1 + 1):
                f = self._cell_features(kind, ci, cj)
                if f is not None:
                    out.append(f)
        return out

    def features(self, kind: str, bounds) -> list:
        """The karst plateaus (``kind="plateau"``) or escarpments (``"escarpment"``) that may reach the window
        ``bounds`` (xmin, ymin, xmax, ymax metres): their centres and sizes, e.g. to find one to look at."""
        if kind not in ("plateau", "escarpment"):
            raise ValueError(f"kind={kind!r}: expected 'plateau' or 'escarpment'")
        reach = 7000.0 * 1.3 if kind == "plateau" else 14000.0 * 1.05 + 4 * 3000.0 + 500.0
        return self._features_near(kind, np.array([bounds[0], bounds[2]]), np.array([bounds[1], bounds[3]]), reach)

    def plateaus(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, bands) -> tuple[np.ndarray, np.ndarray]:
        """``z`` (grid of 1-D ``x``, ``y``) with the karst plateaus raised, and the karst mask in [0, 1]."""
        karst = np.zeros(z.shape)
        reach = 7000.0 * 1.3 + 1.0
        for pl in self._features_near("plateau", x, y, reach):
            r_out = pl.radius_m * 1.25 + 2 * self.res_m
            jx = np.flatnonzero(np.abs(x - pl.cx) <= r_out)
            iy = np.flatnonzero(np.abs(y - pl.cy) <= r_out)
            if jx.size == 0 or iy.size == 0:
                continue
            sx, sy = x[jx[0]:jx[-1] + 1], y[iy[0]:iy[-1] + 1]
            ddx, ddy = sx[None, :] - pl.cx, sy[:, None] - pl.cy
            r = np.sqrt(ddx * ddx + ddy * ddy)
            r = r + 0.22 * pl.radius_m * N.fbm(*_g(sx, sy), pl.key, [(pl.radius_m, 1.0 / 0.2)])
            mask = _smoothstep((pl.radius_m - r) / (0.12 * pl.radius_m))
            rolling = 0.6 * RELIEF_UNIT * N.fbm(*_g(sx, sy), N.key_of(pl.key, 1),
                                                [b for b in bands if b[0] <= pl.radius_m])
            sub = z[iy[0]:iy[-1] + 1, jx[0]:jx[-1] + 1]
            table = pl.level_m + rolling
            z[iy[0]:iy[-1] + 1, jx[0]:jx[-1] + 1] = np.maximum(sub, table) * mask + sub * (1 - mask)
            k = karst[iy[0]:iy[-1] + 1, jx[0]:jx[-1] + 1]
            np.maximum(k, mask, out=k)
        return z, karst

    def escarpments(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The escarpments' height term on the grid of 1-D ``x``, ``y`` (metres, >= 0)."""
        out = np.zeros((y.size, x.size))
        reach = 14000.0 * 1.05 + 4 * 3000.0 + 500.0
        for e in self._features_near("escarpment", x, y, reach):
            r_in, r_out = e.reach_m
            half = e.span / 2 * 1.0 + 0.02
            ang = e.theta0 + np.linspace(-half, half, 25)
            bx = e.cx + np.concatenate([max(r_in, 0) * np.cos(ang), r_out * np.cos(ang)])
            by = e.cy + np.concatenate([max(r_in, 0) * np.sin(ang), r_out * np.sin(ang)])
            pad = 0.05 * e.radius_m + 2 * self.res_m
            jx = np.flatnonzero((x >= bx.min() - pad) & (x <= bx.max() + pad))
            iy = np.flatnonzero((y >= by.min() - pad) & (y <= by.max() + pad))
            if jx.size == 0 or iy.size == 0:
                continue
            sx, sy = x[jx[0]:jx[-1] + 1], y[iy[0]:iy[-1] + 1]
            dx, dy = sx[None, :] - e.cx, sy[:, None] - e.cy
            wobble = 0.04 * e.radius_m * N.fbm(*_g(sx, sy), e.key, [(0.3 * e.radius_m, 1.0 / 0.2)])
            dist = np.sqrt(dx * dx + dy * dy)
            r = dist + wobble
            # angle from the arc's middle through its cosine (no transcendental function per pixel): full
            # height within 65 % of the half span, tapering to 0 at the span's ends
            cos_d = (dx * math.cos(e.theta0) + dy * math.sin(e.theta0)) / np.maximum(dist, 1e-9)
            c_end, c_full = math.cos(e.span / 2), math.cos(0.65 * e.span / 2)
            along = _smoothstep((cos_d - c_end) / (c_full - c_end))
            s_m = (r - e.radius_m) * e.sign
            # back slope: (1 - s / 4b)^4 falls like exp(-s / b) near the cliff and reaches 0 at 4 b, flat
            u = np.minimum(np.maximum(s_m - e.width_m / 2, 0.0) / (4.0 * e.back_m), 1.0)
            tail = (1.0 - u) * (1.0 - u)
            across = _smoothstep(s_m / e.width_m + 0.5) * (tail * tail)
            out[iy[0]:iy[-1] + 1, jx[0]:jx[-1] + 1] += e.height_m * along * across
        return out

    def surface(self, x: np.ndarray, y: np.ndarray, bands, relief=None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Relief with plateaus and escarpments on the grid of 1-D ``x``, ``y``: (z, karst mask, escarpment term).
        ``relief``: the relief on that grid when already known."""
        z = self.relief(*_g(x, y), bands) if relief is None else relief
        z, karst = self.plateaus(x, y, z, bands)
        esc = self.escarpments(x, y)
        return z + esc, karst, esc

    # ---------------------------------------------------------------------------- valleys (coarse blocks)
    def block_domain(self, bi: int, bj: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Coarse rows and columns ``((K0, K1), (L0, L1))`` of block ``(bi, bj)``'s routing domain."""
        m, h = self.block_c, self.halo_c
        return (bi * m - m - h, bi * m + m + h + 1), (bj * m - m - h, bj * m + m + h + 1)

    def block_carve(self, bi: int, bj: int) -> np.ndarray:
        """The carve field (filled carved surface minus the surface, metres) of block ``(bi, bj)`` on its domain."""
        return _block_carve(self.seed, self.res_m, self.p, bi, bj)

    def coarse_chunk(self, ki: int, kj: int) -> tuple[np.ndarray, ...]:
        """The coarse lattice's fields in chunk ``(ki, kj)`` (``chunk_c`` cells square, rows ``ki * chunk_c``...):
        surface, karst mask, relief amplitude (for the routing) and the low-octave noise sums (regional,
        smooth, ridged, threshold; interpolated to the pixels). Cached per process (domains and tiles overlap)."""
        return _coarse_chunk(self.seed, self.res_m, self.p, ki, kj)

    def _coarse_chunk(self, ki: int, kj: int):
        m = self.chunk_c
        x, y = _grid_xy((ki * m, ki * m + m), (kj * m, kj * m + m), self.coarse_res_m, 0.5)
        gx, gy = _g(x, y)
        reg = N.fbm(gx, gy, self.keys["regional"], self.bands_regional)
        s_low = N.fbm(gx, gy, self.keys["smooth"], self.bands_low)
        f_low = N.fbm(gx, gy, self.keys["ridged"], self.bands_low)
        thr = N.fbm(gx, gy, self.keys["threshold"], [(1500.0, 1.0 / 0.19)])
        relief = self.relief_from(reg, s_low + N.fbm(gx, gy, self.keys["smooth"], self.bands_mid),
                                  f_low + N.fbm(gx, gy, self.keys["ridged"], self.bands_mid))
        zc, karst, _ = self.surface(x, y, self.bands_coarse, relief=relief)
        t = self.p.regional_bias + self.p.regional_gain * reg
        amplitude = np.interp(t, _REGIONAL_T, _REGIONAL_AMPLITUDE)
        return zc, karst, amplitude, reg, s_low, f_low, thr

    def _coarse_domain(self, rows, cols, fields=(0, 1, 2)) -> list[np.ndarray]:
        """Fields (indices of :meth:`coarse_chunk`'s tuple) on coarse rows/cols, assembled from chunks."""
        m = self.chunk_c
        ks = range(math.floor(rows[0] / m), math.floor((rows[1] - 1) / m) + 1)
        ls = range(math.floor(cols[0] / m), math.floor((cols[1] - 1) / m) + 1)
        out = [np.empty((rows[1] - rows[0], cols[1] - cols[0])) for _ in fields]
        for ki in ks:
            for kj in ls:
                parts = self.coarse_chunk(ki, kj)
                r0, r1 = max(rows[0], ki * m), min(rows[1], ki * m + m)
                c0, c1 = max(cols[0], kj * m), min(cols[1], kj * m + m)
                for o, f in zip(out, fields):
                    o[r0 - rows[0]:r1 - rows[0], c0 - cols[0]:c1 - cols[0]] = \
                        parts[f][r0 - ki * m:r1 - ki * m, c0 - kj * m:c1 - kj * m]
        return out

    def _block_carve(self, bi: int, bj: int) -> np.ndarray:
        rows, cols = self.block_domain(bi, bj)
        g = self.coarse_res_m
        zc, karst, amplitude = self._coarse_domain(rows, cols)
        k_m = (8.0 + 140.0 * amplitude) * (1.0 - 0.95 * karst)
        side_tan = np.tan(np.radians(5.0 + 27.0 * amplitude))
        cap = 15.0 + 700.0 * amplitude
        z = zc.copy()
        rounds = self.p.carve_rounds
        drop = g * side_tan
        for _ in range(rounds):
            h = _fill(z)
            rec = d8_receivers(h, g)
            area_km2 = flow_accumulation(rec, h.shape) * (g * g / 1e6)
            dry = (h - z) < 0.5
            depth = np.minimum(k_m * area_km2 ** self.p.incision_exponent, cap)
            depth = np.where((area_km2 >= self.p.channel_area_km2) & dry, depth, 0.0) / rounds
            spread = depth
            for _ in range(int(np.ceil(depth.max() / max(drop.min(), 1e-6))) + 1):
                nxt = np.maximum(spread, ndimage.maximum_filter(spread, size=3) - drop)
                if np.array_equal(nxt, spread):
                    break
                spread = nxt
            z = z - ndimage.gaussian_filter(spread, self.p.valley_sigma_m / g)
        return _fill(z, ramp=False) - zc

    def _blocks_over(self, rows: tuple[int, int], cols: tuple[int, int]) -> list[tuple[int, int]]:
        """Blocks whose support (weight > 0) meets coarse rows/cols, in parity-class order."""
        m = self.block_c
        bis = range(math.floor((rows[0] - m) / m) + 1, math.ceil((rows[1] - 1 + m) / m))
        bjs = range(math.floor((cols[0] - m) / m) + 1, math.ceil((cols[1] - 1 + m) / m))
        blocks = [(bi, bj) for bi in bis for bj in bjs
                  if bi * m - m < rows[1] and bi * m + m > rows[0] - 1 and bj * m - m < cols[1]
                  and bj * m + m > cols[0] - 1]
        return sorted(blocks, key=lambda b: (b[0] % 2, b[1] % 2, b[0], b[1]))

    def block_weight(self, bi: int, bj: int, rows, cols) -> np.ndarray:
        """Weight of block ``(bi, bj)`` at coarse rows/cols ranges (a smooth partition of unity)."""
        m = self.block_c
        wr = _smoothstep(1.0 - np.abs(np.arange(rows[0], rows[1]) - bi * m) / m)
        wc = _smoothstep(1.0 - np.abs(np.arange(cols[0], cols[1]) - bj * m) / m)
        return wr[:, None] * wc[None, :]

    def add_block(self, out: np.ndarray, rows, cols, bi: int, bj: int) -> None:
        """``out`` (coarse rows/cols ranges) += this block's weight x carve field, where the support meets it."""
        m = self.block_c
        r0, r1 = max(rows[0], bi * m - m + 1), min(rows[1], bi * m + m)
        c0, c1 = max(cols[0], bj * m - m + 1), min(cols[1], bj * m + m)
        if r1 <= r0 or c1 <= c0:
            return
        carve = self.block_carve(bi, bj)
        (d0, _), (e0, _) = self.block_domain(bi, bj)
        w = self.block_weight(bi, bj, (r0, r1), (c0, c1))
        out[r0 - rows[0]:r1 - rows[0], c0 - cols[0]:c1 - cols[0]] += w * carve[r0 - d0:r1 - d0, c0 - e0:c1 - e0]

    def carve_field(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """The blended carve field on coarse rows ``K0:K1`` and columns ``L0:L1`` (metres)."""
        out = np.zeros((rows[1] - rows[0], cols[1] - cols[0]))
        for bi, bj in self._blocks_over(rows, cols):
            self.add_block(out, rows, cols, bi, bj)
        return out

    def coarse_range(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """Coarse rows/cols the B-spline of pixel rows ``I0:I1``, columns ``J0:J1`` reads."""
        c = self.c

        def rng(a, b):
            lo = math.floor((a + 0.5) / c - 0.5) - 1
            hi = math.floor((b - 1 + 0.5) / c - 0.5) + 3
            return lo, hi
        return rng(*rows), rng(*cols)

    def _bspline(self, coarse: np.ndarray, crange, rows, cols, kind: str = "bspline") -> np.ndarray:
        """Cubic B-spline (``kind="bspline"``: smoothing, positive weights) or Catmull-Rom (``"cubic"``:
        interpolating) of the coarse field at pixel rows/cols, in a fixed order of operations."""
        c = self.c

        def apply(a: np.ndarray, lo: int, first: int, last: int, axis: int) -> np.ndarray:
            pos = (np.arange(first, last) + 0.5) / c - 0.5
            k = np.floor(pos).astype(np.int64)
            t = pos - k
            t2 = t * t
            t3 = t2 * t
            s = 1.0 - t
            if kind == "bspline":
                w = [s * s * s / 6, (3 * t3 - 6 * t2 + 4) / 6, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6, t3 / 6]
            else:
                w = [(-t3 + 2 * t2 - t) / 2, (3 * t3 - 5 * t2 + 2) / 2, (-3 * t3 + 4 * t2 + t) / 2, (t3 - t2) / 2]
            idx = k - lo
            if axis == 0:
                out = w[0][:, None] * a[idx - 1]
                for d in (1, 2, 3):
                    out = out + w[d][:, None] * a[idx - 1 + d]
            else:
                out = w[0][None, :] * a[:, idx - 1]
                for d in (1, 2, 3):
                    out = out + w[d][None, :] * a[:, idx - 1 + d]
            return out
        return apply(apply(coarse, crange[0][0], rows[0], rows[1], 0), crange[1][0], cols[0], cols[1], 1)

    # ---------------------------------------------------------------------------- local operations
    def _relax(self, z: np.ndarray, thr_noise: np.ndarray, cliff: np.ndarray) -> np.ndarray:
        p = self.p
        if p.relax_iterations <= 0:
            return z
        # the threshold slope varies smoothly (rock strength): tan(max_slope +- spread), linear in the noise
        t0 = math.tan(math.radians(p.max_slope_deg))
        dt = 0.5 * (math.tan(math.radians(p.max_slope_deg + p.max_slope_spread_deg))
                    - math.tan(math.radians(p.max_slope_deg - p.max_slope_spread_deg)))
        tan_max = t0 + dt * thr_noise
        tan_max = np.clip(tan_max, 0.05, 5.0)
        tan_max[cliff] = 57.0                                  # cliff faces exempt (89 degrees)
        z = z.copy()
        ny, nx = z.shape
        allowed = {d: tan_max * self.res_m * (math.sqrt(2.0) if d else 1.0) for d in (False, True)}
        for _ in range(p.relax_iterations):
            pad = np.pad(z, 1, mode="edge")
            excess = np.zeros_like(z)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if dy == dx == 0:
                        continue
                    nb = pad[1 + dy:1 + dy + ny, 1 + dx:1 + dx + nx]
                    np.maximum(excess, z - nb - allowed[bool(dy and dx)], out=excess)
            z -= 0.5 * excess
        return z

    def _sinkholes(self, z: np.ndarray, karst: np.ndarray, rows, cols, h: int) -> np.ndarray:
        """Cut the sinkholes that reach the inner part of ``z`` (``h >= 4 sink_pad`` pixels from its edges).

        Candidates: one per ``sinkhole_cell_m`` cell of the absolute lattice (hashed position, diameter 30-300 m
        with many small, depth 0.12-0.3 of it within 5-40 m). A candidate is *flat* where the karst mask at its
        centre is > 0.9 and the ground under its footprint (plus a pixel) varies by less than half its depth; a
        flat candidate is cut unless a larger flat candidate (ties: its hash) lies within reach of its
        footprint. Every decision reads ``z`` within ``4 sink_pad`` pixels of the tile: local, so tiles agree.
        """
        res, s, P = self.res_m, self.p.sinkhole_cell_m, self.sink_pad
        ny, nx = z.shape
        lo_r, hi_r, lo_c, hi_c = h - 3 * P, ny - h + 3 * P, h - 3 * P, nx - h + 3 * P
        x_lo, x_hi = (cols[0] + lo_c) * res, (cols[0] + hi_c) * res
        y_hi, y_lo = -(rows[0] + lo_r) * res, -(rows[0] + hi_r) * res
        ci = np.arange(math.floor(y_lo / s), math.floor(y_hi / s) + 1, dtype=np.int64)
        cj = np.arange(math.floor(x_lo / s), math.floor(x_hi / s) + 1, dtype=np.int64)
        CI, CJ = (a.ravel() for a in np.meshgrid(ci, cj, indexing="ij"))
        key = self.keys["sinkhole"]
        px = (CJ + N.hash_uniform(CI, CJ, N.key_of(key, 1))) * s
        py = (CI + N.hash_uniform(CI, CJ, N.key_of(key, 2))) * s
        col = np.floor(px / res).astype(np.int64) - cols[0]
        row = np.floor(-py / res).astype(np.int64) - rows[0]
        ok = (row >= lo_r) & (row < hi_r) & (col >= lo_c) & (col < hi_c)
        CI, CJ, row, col = CI[ok], CJ[ok], row[ok], col[ok]
        ok = karst[row, col]
        CI, CJ, row, col = CI[ok], CJ[ok], row[ok], col[ok]
        if CI.size == 0:
            return z
        u_d = N.hash_uniform(CI, CJ, N.key_of(key, 3))
        u_z = N.hash_uniform(CI, CJ, N.key_of(key, 4))
        prio = N.hash_uniform(CI, CJ, N.key_of(key, 5))
        d_m = np.array([30.0 * math.pow(10.0, math.pow(float(u), 1 / 0.6)) for u in u_d])
        depth = np.clip(d_m * (0.12 + 0.18 * u_z), 5.0, 40.0)
        pad = np.array([int(math.ceil(max(d / 2 / res, 0.5))) + 1 for d in d_m], np.int64)
        flat = np.zeros(CI.size, bool)
        for k in range(CI.size):
            g = z[row[k] - pad[k]:row[k] + pad[k] + 1, col[k] - pad[k]:col[k] + pad[k] + 1]
            flat[k] = g.max() - g.min() < 0.5 * depth[k]
        idx = np.flatnonzero(flat)
        if idx.size == 0:
            return z
        from scipy.spatial import cKDTree

        pts = np.c_[row[idx], col[idx]].astype(np.float64)
        keep = np.ones(idx.size, bool)
        for a, nbrs in enumerate(cKDTree(pts).query_ball_point(pts, r=2.0 * P, p=np.inf)):
            ka = idx[a]
            for b in nbrs:
                kb = idx[b]
                if b != a and max(abs(row[ka] - row[kb]), abs(col[ka] - col[kb])) <= pad[ka] + pad[kb] \
                        and (d_m[kb], prio[kb]) > (d_m[ka], prio[ka]):
                    keep[a] = False
                    break
        z = z.copy()
        for k in idx[keep]:
            if not (h - P <= row[k] < ny - h + P and h - P <= col[k] < nx - h + P):
                continue
            p_ = int(pad[k])
            yy, xx = np.mgrid[-p_:p_ + 1, -p_:p_ + 1].astype(np.float64)
            q2 = (yy * yy + xx * xx) * (res * res) / ((d_m[k] / 2) ** 2)
            q2 = np.minimum(q2, 1.0)
            bowl = depth[k] * (1.0 - q2) * (1.0 - q2)           # a smooth bowl, 0 with zero slope at its rim
            z[row[k] - p_:row[k] + p_ + 1, col[k] - p_:col[k] + p_ + 1] -= bowl
        return z

    # ---------------------------------------------------------------------------- heights
    def unfilled(self, rows: tuple[int, int], cols: tuple[int, int], carve=None) -> tuple[np.ndarray, np.ndarray]:
        """Heights before the local depression filling, and where sinkholes may be (karst mask > 0.9), of pixel
        rows/cols (exact: computed with a ``relax_iterations + 4`` pixel halo)."""
        return self._unfilled(rows, cols, carve)

    def _unfilled(self, rows: tuple[int, int], cols: tuple[int, int], carve=None) -> tuple[np.ndarray, np.ndarray]:
        h = self.p.relax_iterations + 4
        hr, hc = (rows[0] - h, rows[1] + h), (cols[0] - h, cols[1] + h)
        x, y = _grid_xy(hr, hc, self.res_m, 0.5)
        crange = self.coarse_range(hr, hc)
        zc, reg, s_low, f_low, thr = self._coarse_domain(*crange, fields=(0, 3, 4, 5, 6))
        gx_, gy_ = _g(x, y)

        def fine(a):
            return self._bspline(a, crange, hr, hc, kind="cubic")
        relief = self.relief_from(fine(reg), fine(s_low) + N.fbm(gx_, gy_, self.keys["smooth"], self.bands_high),
                                  fine(f_low) + N.fbm(gx_, gy_, self.keys["ridged"], self.bands_high))
        zf, karst, esc = self.surface(x, y, self.bands_fine, relief=relief)
        field = carve(*crange[0], *crange[1]) if carve is not None else self.carve_field(*crange)
        smooth_zc = self._bspline(zc, crange, hr, hc)
        routed = self._bspline(zc + field, crange, hr, hc)      # the large-scale surface the routing carved
        detail = zf - smooth_zc                                  # what the coarse lattice does not hold
        # the detail may not turn the routed surface's slopes into pits: its local RMS gradient is held below
        # detail_gain x the routed slope (smooth valley floors, plains and crests; full detail on slopes)
        gy, gx = np.gradient(routed, self.res_m)
        dy, dx = np.gradient(detail, self.res_m)
        rms = np.sqrt(_box_mean5(dx * dx + dy * dy))
        damp = np.minimum(1.0, self.p.detail_gain * np.sqrt(gx * gx + gy * gy) / np.maximum(rms, 1e-9))
        z = routed + damp * detail
        gy, gx = np.gradient(esc, self.res_m)
        cliff = ndimage.binary_dilation(gx * gx + gy * gy > math.tan(math.radians(20.0)) ** 2, iterations=2)
        z = self._relax(z, fine(thr), cliff)
        return z[h:-h, h:-h], karst[h:-h, h:-h] > 0.9

    def fill_blocks(self, rows: tuple[int, int], cols: tuple[int, int]) -> list[tuple[int, int]]:
        """Fine fill blocks whose support meets pixel rows/cols, in parity-class order."""
        m = self.fill_m
        bis = range(math.floor((rows[0] - m) / m) + 1, math.ceil((rows[1] - 1 + m) / m))
        bjs = range(math.floor((cols[0] - m) / m) + 1, math.ceil((cols[1] - 1 + m) / m))
        return sorted([(bi, bj) for bi in bis for bj in bjs], key=lambda b: (b[0] % 2, b[1] % 2, b[0], b[1]))

    def elevation(self, rows: tuple[int, int], cols: tuple[int, int], carve=None, unfilled=None) -> np.ndarray:
        """Heights ``(I1 - I0, J1 - J0)`` float64 metres of pixel rows ``I0:I1`` and columns ``J0:J1``.

        ``carve``: an optional reader of the blended coarse carve field, ``carve(K0, K1, L0, L1) -> array``
        (e.g. a scratch file written once for a whole region by :func:`write_synthetic`); by default the
        blocks are computed here. ``unfilled``: likewise a reader ``unfilled(rows, cols) -> (heights, karst
        flags)`` of :meth:`unfilled` (a scratch file of a whole region), else computed here.

        Depressions the coarse routing did not see are filled locally: in fine blocks of the absolute lattice
        (``fill_block_px`` apart, supports twice as wide, domains ``fill_halo_px`` wider still; each fills its
        domain, edges draining), blended by the same kind of partition of unity as the carve field. A pit
        whose spill path stays inside every covering domain is filled exactly as a one-piece fill would.
        """
        m, hf = self.fill_m, self.fill_h
        g = 4 * self.sink_pad                                  # the sinkholes read this far around the tile
        gr, gc = (rows[0] - g, rows[1] + g), (cols[0] - g, cols[1] + g)
        blocks = self.fill_blocks(gr, gc)
        dr = (min(bi for bi, _ in blocks) * m - m - hf, max(bi for bi, _ in blocks) * m + m + hf + 1)
        dc = (min(bj for _, bj in blocks) * m - m - hf, max(bj for _, bj in blocks) * m + m + hf + 1)
        raw, karst = unfilled(dr, dc) if unfilled is not None else self._unfilled(dr, dc, carve)
        out = np.zeros((gr[1] - gr[0], gc[1] - gc[0]))
        for bi, bj in blocks:
            r0, r1 = bi * m - m - hf, bi * m + m + hf + 1
            c0, c1 = bj * m - m - hf, bj * m + m + hf + 1
            filled = _fill(ramp=False, z=raw[r0 - dr[0]:r1 - dr[0], c0 - dc[0]:c1 - dc[0]])
            a0, a1 = max(gr[0], bi * m - m + 1), min(gr[1], bi * m + m)
            b0, b1 = max(gc[0], bj * m - m + 1), min(gc[1], bj * m + m)
            wr = _smoothstep(1.0 - np.abs(np.arange(a0, a1) - bi * m) / m)
            wc = _smoothstep(1.0 - np.abs(np.arange(b0, b1) - bj * m) / m)
            out[a0 - gr[0]:a1 - gr[0], b0 - gc[0]:b1 - gc[0]] += \
                (wr[:, None] * wc[None, :]) * filled[a0 - r0:a1 - r0, b0 - c0:b1 - c0]
        k = karst[gr[0] - dr[0]:gr[1] - dr[0], gc[0] - dc[0]:gc[1] - dc[0]]
        z = self._sinkholes(out, k, gr, gc, g)
        return z[g:g + rows[1] - rows[0], g:g + cols[1] - cols[0]]


CACHE_ENV = "TOPO2VEC_CACHE_DIR"
"""Environment variable naming a folder for the routing blocks on disk (unset: memory only). Each block is
the costliest piece of the world (a 64 km routing domain, about 2-4 s) and the same for every window that
meets it, so re-runs (`make repro` sets ``.cache/``, the test session its own folder) read it back."""


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """Hash of the modules a block's values come from: editing any of them retires every cached block."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("synthetic.py", "noise.py", "hydrology.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def block_cache_path(seed: int, res_m: float, params: WorldParams, bi: int, bj: int) -> Path | None:
    """The ``.npy`` file of block ``(bi, bj)`` under ``$TOPO2VEC_CACHE_DIR`` (None when unset): keyed by the
    seed, ``res_m``, every :class:`WorldParams` value and the code (:func:`_code_digest`)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        return None
    key = hashlib.sha256(repr((seed, float(res_m), dataclasses.astuple(params), _code_digest())).encode())
    return Path(root) / "synthetic-blocks" / key.hexdigest()[:20] / f"{bi}_{bj}.npy"


@functools.lru_cache(maxsize=48)
def _block_carve(seed: int, res_m: float, params: WorldParams, bi: int, bj: int) -> np.ndarray:
    """Cached per process (neighbouring tiles share blocks) and, with ``$TOPO2VEC_CACHE_DIR``, on disk. A
    cached file that cannot be read as the block's array is computed again and replaced."""
    path = block_cache_path(seed, res_m, params, bi, bj)
    out = None
    if path is not None and path.is_file():
        try:
            out = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            out = None
        world = _world(seed, res_m, params)
        if out is not None and (out.dtype != np.float64 or out.ndim != 2
                                or out.shape != tuple(r[1] - r[0] for r in world.block_domain(bi, bj))):
            out = None
    if out is None:
        out = _world(seed, res_m, params)._block_carve(bi, bj)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, out, allow_pickle=False)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=160)
def _coarse_chunk(seed: int, res_m: float, params: WorldParams, ki: int, kj: int):
    out = _world(seed, res_m, params)._coarse_chunk(ki, kj)
    for a in out:
        a.setflags(write=False)
    return out


@functools.lru_cache(maxsize=8)
def _world(seed: int, res_m: float, params: WorldParams) -> SyntheticWorld:
    return SyntheticWorld(seed, res_m, params)


def world(seed: int = 0, res_m: float = 30.0, params: WorldParams = WORLD) -> SyntheticWorld:
    """The (cached) :class:`SyntheticWorld` of ``seed`` at ``res_m``."""
    from .grid import check_positive, check_seed

    return _world(check_seed(seed), check_positive("res_m", res_m), params)


def synthetic_window(bounds, res_m: float = 30.0, seed: int = 0, params: WorldParams = WORLD) -> np.ndarray:
    """Heights ``(ny, nx)`` float64 metres (row 0 = north) of the window ``bounds`` (metres, on the pixel lattice)."""
    w = world(seed, res_m, params)
    rows, cols = w.pixel_window(bounds)
    return w.elevation(rows, cols)


def synthetic_terrain(region: str, center_lonlat, size_km, res_m: float = 30, crs: str = "EPSG:3035",
                      seed: int = 0, region_lonlat=None) -> xr.DataArray:
    """The synthetic terrain DataArray (docs/architecture.md) of a window of ``region`` (in memory).

    A ``size_km`` window (a number: square; ``[width, height]``: a rectangle) at ``res_m`` m/px around
    ``center_lonlat`` (lon, lat), which must lie in the region's polygon. The heights depend on the seed and
    the place only: the same window is bit-identical, windows agree where they overlap. For regions too big for
    memory use :func:`write_synthetic`.
    """
    bounds = region_window(region, center_lonlat, size_km, res_m, crs, region_lonlat=region_lonlat)
    z = synthetic_window(bounds, float(res_m), seed)
    return make_dataarray(z, bounds, float(res_m), crs, region=region,
                          region_lonlat=region_lonlat_of(region, region_lonlat), source="synthetic")


# --------------------------------------------------------------------------------------------------
# regions of any size: the carve field once, then tiles in parallel
# --------------------------------------------------------------------------------------------------
def _carve_block_task(block, npy_path, rows, cols, seed, res_m, params):
    from .tiling import NpyArray

    w = world(seed, res_m, params)
    bi, bj = block
    m = w.block_c
    r0, r1 = max(rows[0], bi * m - m + 1), min(rows[1], bi * m + m)
    c0, c1 = max(cols[0], bj * m - m + 1), min(cols[1], bj * m + m)
    if r1 <= r0 or c1 <= c0:
        return 0
    arr = NpyArray(npy_path)
    cur = arr.read(r0 - rows[0], r1 - rows[0], c0 - cols[0], c1 - cols[0])
    part = np.zeros_like(cur)
    w.add_block(part, (r0, r1), (c0, c1), bi, bj)
    arr.write(r0 - rows[0], c0 - cols[0], cur + part)
    return 1


def carve_field_file(world_: SyntheticWorld, rows, cols, npy_path, runner) -> None:
    """Write the blended carve field of coarse rows/cols ``rows``, ``cols`` to a float64 ``.npy`` scratch file,
    block by block on ``runner`` (:class:`~topo2vec_lib.tiling.TileRunner`). Blocks of one parity class have
    disjoint supports, so a class is written in parallel; classes go in the order :meth:`carve_field` sums them
    (the file equals it bit for bit)."""
    from .tiling import NpyArray

    NpyArray(npy_path, shape=(rows[1] - rows[0], cols[1] - cols[0]), dtype=np.float64, fill=0.0)
    blocks = world_._blocks_over(rows, cols)
    for parity in ((0, 0), (0, 1), (1, 0), (1, 1)):
        todo = [b for b in blocks if (b[0] % 2, b[1] % 2) == parity]
        runner.map(_carve_block_task, todo, npy_path=str(npy_path), rows=tuple(rows), cols=tuple(cols),
                   seed=world_.seed, res_m=world_.res_m, params=world_.p)


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


def fbm(shape, res_m: float, rng: np.random.Generator, hurst: float = HURST,
        max_wavelength_m: float = 20_000.0) -> np.ndarray:
    """Fractional Brownian surface ``shape`` (ny, nx) by FFT spectral synthesis, float64 (a test and benchmark
    helper: unlike the world, it depends on the window).

    Amplitude spectrum ``k^-(hurst+1)``, flattened for wavelengths longer than ``max_wavelength_m``; synthesised
    on a grid 25 % larger and cropped, so it is not periodic; scaled so that the std of differences between
    neighbouring pixels equals ``(res_m / 30) ** hurst``.
    """
    ny, nx = shape
    py, px = int(ny * 1.25) + 8, int(nx * 1.25) + 8
    ky = np.fft.fftfreq(py, d=res_m)[:, None]
    kx = np.fft.rfftfreq(px, d=res_m)[None, :]
    k = np.hypot(kx, ky)
    amp = np.maximum(k, 1.0 / max_wavelength_m) ** -(hurst + 1.0)
    amp[0, 0] = 0.0
    noise = rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)
    field = np.fft.irfft2(amp * noise, s=(py, px))
    oy, ox = rng.integers(0, py - ny + 1), rng.integers(0, px - nx + 1)
    field = field[oy:oy + ny, ox:ox + nx]
    lag1 = np.sqrt(0.5 * (np.var(np.diff(field, axis=0)) + np.var(np.diff(field, axis=1))))
    return field / lag1 * (res_m / 30.0) ** hurst

