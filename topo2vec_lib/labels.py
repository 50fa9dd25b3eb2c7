"""Label classes, labels derived from terrain by documented rules, and label tables.

The paper probes embeddings with OpenStreetMap points of eight classes (Exp. 1 "basic": peak, saddle,
river, cliff; Exp. 2 "correlated": aerialway station, alpine hut, waterfall, sinkhole). On the synthetic
world there is no OSM, so this module places the points the way OSM mappers would, from the terrain:

* natural classes (source ``"derived"``) by deterministic geomorphometric rules;
* human classes (source ``"derived-proxy"``) by documented, seeded stochastic rules that tie them to
  the terrain the way lifts and huts are tied to it in the Alps.

Every rule has a function taking a numpy DEM ``(ny, nx)`` in metres (NaN = nodata) and the pixel size
``res_m`` and returning ``(rows, cols)`` int64 arrays (row 0 = north), so each rule can be tested alone.
:func:`derive_labels` runs them all on a terrain DataArray and returns a label table
(docs/architecture.md: columns ``lon, lat, class, source, region``).
"""
from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from topo2vec_lib.checks import Check, number
from topo2vec_lib.grid import check_seed, slope_deg, xy_to_lonlat
from topo2vec_lib.storage import atomic_path

LABEL_COLUMNS = ["lon", "lat", "class", "source", "region"]
SOURCE_NATURAL = "derived"
SOURCE_PROXY = "derived-proxy"


# --------------------------------------------------------------------------------------------------
# class registry
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LabelClass:
    """One probe class: its OSM tags, geometry and the rule that derives it from terrain."""

    name: str
    experiment: str          # "exp1" (basic) | "exp2" (correlated)
    osm_tags: tuple          # ((key, value), ...), e.g. (("natural", "peak"),)
    geometry: str            # "point" | "line" (lines are emitted as points spaced along them)
    kind: str                # "natural" (deterministic rule) | "proxy" (seeded stochastic rule)
    rule: str                # the derivation rule in words

    @property
    def tags(self) -> dict:
        return dict(self.osm_tags)

    @property
    def source(self) -> str:
        return SOURCE_NATURAL if self.kind == "natural" else SOURCE_PROXY


CLASSES: dict[str, LabelClass] = {c.name: c for c in [
    LabelClass("peak", "exp1", (("natural", "peak"),), "point", "natural",
               "local maxima (strictly highest of their 8 neighbours, not on the window edge or next "
               "to nodata) with topographic prominence >= peak_prominence_m inside the window; "
               "peaks closer than peak_merge_m are merged "
               "into the highest"),
    LabelClass("saddle", "exp1", (("natural", "saddle"),), "point", "natural",
               "the key col of every peak kept by the peak rule: the lowest point of the highest "
               "path from the peak to higher ground (where its region merges into a higher one)"),
    LabelClass("river", "exp1", (("waterway", "river"),), "line", "natural",
               "D8 channels of the depression-filled DEM draining >= river_min_area_km2, as points "
               "every line_spacing_m of along-channel distance"),
    LabelClass("cliff", "exp1", (("natural", "cliff"),), "line", "natural",
               "8-connected cells with slope >= cliff_min_slope_deg whose extent is >= "
               "cliff_min_length_m, as points about line_spacing_m apart (steepest first)"),
    LabelClass("aerialway_station", "exp2", (("aerialway", "station"),), "point", "proxy",
               "lift lines from a gentle low valley/plateau cell up to a high peak or col with an "
               "elevation gain >= aerialway_min_gain_m over aerialway_min_length_m.."
               "aerialway_max_length_m; a station at both ends; aerialway_lines_per_100km2 lines, "
               "tops visited and bottoms drawn by seeded hashes of the top's cell"),
    LabelClass("alpine_hut", "exp2", (("tourism", "alpine_hut"),), "point", "proxy",
               "gentle (slope <= hut_max_slope_deg) cells above the hut_min_elev_quantile elevation "
               "quantile, within hut_near_col_m of a col or within hut_near_peak_m of and "
               "hut_below_peak_m lower than the nearest peak; hut_per_100km2 huts with the highest seeded "
               "per-cell draws, >= hut_spacing_m apart"),
    LabelClass("waterfall", "exp2", (("waterway", "waterfall"),), "point", "natural",
               "channel cells (drainage >= waterfall_min_area_km2) where the filled DEM drops >= "
               "waterfall_min_drop_m within waterfall_reach_m downstream; one point per steep "
               "reach, at its lip (largest one-step drop)"),
    LabelClass("sinkhole", "exp2", (("natural", "sinkhole"),), "point", "natural",
               "closed depressions (filled - dem > 0) at least sinkhole_min_depth_m deep with an "
               "area in [sinkhole_min_area_m2, sinkhole_max_area_m2]; one point at the lowest cell"),
]}


def get_class(name: str) -> LabelClass:
    """The registry entry for ``name``; ValueError listing the valid names otherwise."""
    try:
        return CLASSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown label class {name!r}; valid classes: {sorted(CLASSES)}") from None


def class_list(classes, what: str = "classes") -> list[str]:
    """Class names (a list, tuple or other iterable of registry names) as a list; ValueError for a single string
    (``classes='peak'`` is never read as the classes 'p', 'e', 'a', 'k'), a non-iterable or an unknown name."""
    if isinstance(classes, (str, bytes)):
        raise ValueError(f"{what}={classes!r} is one string, not a list of class names; write [{classes!r}]")
    try:
        names = list(classes)
    except TypeError:
        raise ValueError(f"{what}={classes!r}: expected a list of class names, e.g. ['peak', 'river']") from None
    return [get_class(c).name for c in names]


def classes_of(experiment: str) -> list[str]:
    """Class names of ``"exp1"`` or ``"exp2"`` in registry order."""
    names = [c.name for c in CLASSES.values() if c.experiment == experiment]
    if not names:
        valid = sorted({c.experiment for c in CLASSES.values()})
        raise ValueError(f"unknown experiment {experiment!r}; valid: {valid}")
    return names


# --------------------------------------------------------------------------------------------------
# rule parameters
# --------------------------------------------------------------------------------------------------
RULE_DEFAULTS: dict[str, float] = {
    # peak / saddle
    "peak_prominence_m": 30.0,
    "peak_merge_m": 90.0,
    # line classes
    "line_spacing_m": 300.0,
    "river_min_area_km2": 2.0,
    "cliff_min_slope_deg": 45.0,
    "cliff_min_length_m": 90.0,
    # waterfall
    "waterfall_min_area_km2": 0.5,
    "waterfall_min_drop_m": 40.0,
    "waterfall_reach_m": 90.0,
    # sinkhole
    "sinkhole_min_depth_m": 2.0,
    "sinkhole_min_area_m2": 900.0,
    "sinkhole_max_area_m2": 1.0e6,
    # aerialway station (proxy)
    "aerialway_lines_per_100km2": 10.0,
    "aerialway_min_gain_m": 400.0,
    "aerialway_min_length_m": 800.0,
    "aerialway_max_length_m": 4000.0,
    "aerialway_max_slope_deg": 15.0,
    "aerialway_top_quantile": 0.5,
    # alpine hut (proxy)
    "hut_per_100km2": 20.0,
    "hut_min_elev_quantile": 0.6,
    "hut_max_slope_deg": 20.0,
    "hut_near_col_m": 600.0,
    "hut_near_peak_m": 1500.0,
    "hut_below_peak_m": 100.0,
    "hut_spacing_m": 300.0,
}


_AT_LEAST_0, _ABOVE_0 = number(0.0, strict=False), number(0.0)
_DEGREES, _QUANTILE = number(0.0, maximum=90.0), number(0.0, strict=False, maximum=1.0)
RULE_CHECKS: dict[str, Check] = {
    "peak_prominence_m": _AT_LEAST_0, "peak_merge_m": _AT_LEAST_0,
    "line_spacing_m": _ABOVE_0, "river_min_area_km2": _ABOVE_0,
    "cliff_min_slope_deg": number(0.0, below=90.0), "cliff_min_length_m": _AT_LEAST_0,
    "waterfall_min_area_km2": _ABOVE_0, "waterfall_min_drop_m": _ABOVE_0, "waterfall_reach_m": _ABOVE_0,
    "sinkhole_min_depth_m": _ABOVE_0, "sinkhole_min_area_m2": _AT_LEAST_0, "sinkhole_max_area_m2": _ABOVE_0,
    "aerialway_lines_per_100km2": _AT_LEAST_0, "aerialway_min_gain_m": _AT_LEAST_0,
    "aerialway_min_length_m": _AT_LEAST_0, "aerialway_max_length_m": _ABOVE_0,
    "aerialway_max_slope_deg": _DEGREES, "aerialway_top_quantile": _QUANTILE,
    "hut_per_100km2": _AT_LEAST_0, "hut_min_elev_quantile": _QUANTILE, "hut_max_slope_deg": _DEGREES,
    "hut_near_col_m": _AT_LEAST_0, "hut_near_peak_m": _AT_LEAST_0, "hut_below_peak_m": _AT_LEAST_0,
    "hut_spacing_m": _AT_LEAST_0,
}
"""The valid range of every rule parameter (densities, distances and prominences >= 0; spacings, areas and
drops > 0; slopes in degrees up to 90; quantiles in [0, 1]). Used by :func:`rule_params` and the params.yaml
schema (:mod:`topo2vec_lib.schema`)."""
_RULE_ORDER = (("sinkhole_min_area_m2", "sinkhole_max_area_m2"), ("aerialway_min_length_m", "aerialway_max_length_m"))

LABEL_SOURCES = ("derived", "osm", "files")


def check_source(source: str) -> str:
    """``source`` if it is a known label source (derived | osm | files), else ValueError."""
    if source not in LABEL_SOURCES:
        raise ValueError(f"unknown label source {source!r}; valid: {list(LABEL_SOURCES)}")
    return source


def check_rule_order(params: Mapping[str, Any]) -> None:
    """ValueError unless every range's minimum is at most its maximum (sinkhole areas, lift lengths)."""
    for lo, hi in _RULE_ORDER:
        if lo in params and hi in params and params[lo] > params[hi]:
            raise ValueError(f"{lo}={params[lo]!r} is larger than {hi}={params[hi]!r}; the minimum must be <= the "
                             f"maximum")


def rule_params(**overrides) -> dict[str, float]:
    """RULE_DEFAULTS updated with ``overrides``; ValueError naming unknown keys and the valid ones, and values
    outside their range (:data:`RULE_CHECKS`: ``line_spacing_m=0``, a negative density or prominence, ...)."""
    unknown = sorted(set(overrides) - set(RULE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown label rule parameter(s) {unknown}; valid: {sorted(RULE_DEFAULTS)}")
    params = dict(RULE_DEFAULTS)
    params.update({k: RULE_CHECKS[k](k, v) for k, v in overrides.items()})
    check_rule_order(params)
    return params


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------
def _check_dem(dem: np.ndarray, res_m: float) -> np.ndarray:
    dem = np.asarray(dem, dtype=np.float64)
    if dem.ndim != 2 or min(dem.shape) < 3:
        raise ValueError(f"dem must be a 2-D array of at least 3x3 cells, got shape {dem.shape}")
    if not (np.isfinite(res_m) and res_m > 0):
        raise ValueError(f"res_m must be a positive number of metres per pixel, got {res_m!r}")
    if not np.isfinite(dem).any():
        raise ValueError("dem has no finite cells (all nodata)")
    return dem


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)


def _unravel(flat: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.unravel_index(np.asarray(flat, np.int64), shape)
    return r.astype(np.int64), c.astype(np.int64)


def first_extreme(values: np.ndarray, labels: np.ndarray, ids, largest: bool) -> np.ndarray:
    """Flat index of the largest (or smallest) ``values`` cell of each label in ``ids``; ties: the lowest index.

    ``values``, ``labels``: flat arrays of one length (labels > 0 are components). Unlike
    ``ndimage.maximum_position`` (whose ties follow an unstable sort of the whole array), the result depends
    only on each component's own cells, so a tiled run finds the same cell.
    """
    cells = np.flatnonzero(labels > 0)
    lab, v = labels[cells], values[cells]
    o = np.lexsort((cells, -v if largest else v, lab))
    lab_s = lab[o]
    first = np.r_[True, lab_s[1:] != lab_s[:-1]] if lab_s.size else np.zeros(0, bool)
    best = np.full(int(labels.max(initial=0)) + 1, -1, np.int64)
    best[lab_s[first]] = cells[o][first]
    return best[np.asarray(ids, np.int64)]


def thin_points(rows, cols, score, spacing_px: float) -> np.ndarray:
    """Indices of a subset of points no two closer than ``spacing_px`` pixels, highest ``score`` first.

    Greedy non-maximum suppression (ties broken by input order); the result is sorted by score.
    """
    rows, cols, score = (np.asarray(a) for a in (rows, cols, score))
    n = rows.size
    if n == 0 or spacing_px <= 0:
        return np.arange(n)
    order = np.lexsort((np.arange(n), -score.astype(np.float64)))
    pts = np.column_stack([rows, cols]).astype(np.float64)[order]
    tree = cKDTree(pts)
    removed = np.zeros(n, bool)
    keep = []
    for i in range(n):          # one ball query per kept point only
        if removed[i]:
            continue
        keep.append(order[i])
        removed[tree.query_ball_point(pts[i], r=spacing_px - 1e-9)] = True
    return np.asarray(keep, np.int64)


# --------------------------------------------------------------------------------------------------
# prominence (peaks, saddles)
# --------------------------------------------------------------------------------------------------
class Prominence(NamedTuple):
    """Every local maximum of a DEM with its prominence and key col (flat indices into the DEM)."""

    peak: np.ndarray          # (P,) flat index of each local maximum
    prominence_m: np.ndarray  # (P,) metres; the highest peak of each connected area: peak - area minimum
    col: np.ndarray           # (P,) flat index of the key col, -1 for the highest peak of each area


_OFFSETS8 = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _shift(a: np.ndarray, dr: int, dc: int, fill) -> np.ndarray:
    """``out[r, c] = a[r + dr, c + dc]`` (``fill`` outside)."""
    out = np.full_like(a, fill)
    ny, nx = a.shape
    out[max(0, -dr):ny - max(0, dr), max(0, -dc):nx - max(0, dc)] = \
        a[max(0, dr):ny - max(0, -dr), max(0, dc):nx - max(0, -dc)]
    return out


def topographic_prominence(dem: np.ndarray) -> Prominence:
    """Exact topographic prominence (8-connectivity) of every local maximum, with its key col.

    Algorithm (O(N log N), vectorised except a loop over basin adjacencies):
    1. rank cells by elevation (ties by flat index) so every comparison is strict;
    2. steepest ascent: each cell points to its highest-ranked 8-neighbour if that is higher; pointer
       jumping gives each cell its ascent basin, whose root is a local maximum. Every cell of a
       superlevel set {z >= h} is joined to its basin's root through cells >= h, so the superlevel
       sets' connectivity is that of a graph whose nodes are basins;
    3. the edge between two touching basins is their highest pass: max over touching cell pairs of the
       lower cell of the pair (that cell is the col);
    4. union-find sweep over edges from high to low: when two groups meet at a col, the lower of their
       two highest peaks gets prominence = its elevation - the col's, and that col as key col.
    The highest peak of each connected area (never merged) gets its elevation minus the area's minimum.
    Prominence is computed inside the window: terrain outside it is unknown.
    """
    dem = np.asarray(dem, dtype=np.float64)
    ny, nx = dem.shape
    valid = np.isfinite(dem)
    z = np.where(valid, dem, -np.inf).ravel()
    order = np.argsort(z, kind="stable")
    rank = np.empty(z.size, np.int64)
    rank[order] = np.arange(z.size)
    rank[~valid.ravel()] = -1
    rank2 = rank.reshape(ny, nx)
    idx2 = np.arange(z.size, dtype=np.int64).reshape(ny, nx)

    # 2. steepest ascent pointers (by rank) and basins
    best_rank = rank2.copy()
    up: np.ndarray = idx2.copy()
    for dr, dc in _OFFSETS8:
        nr = _shift(rank2, dr, dc, -1)
        better = nr > best_rank
        best_rank = np.where(better, nr, best_rank)
        up = np.where(better, _shift(idx2, dr, dc, 0), up)
    up = up.ravel()
    up[~valid.ravel()] = np.flatnonzero(~valid.ravel())
    while True:
        nxt = up[up]
        if np.array_equal(nxt, up):
            break
        up = nxt
    basin = up
    peaks = np.flatnonzero((basin == np.arange(z.size)) & valid.ravel())
    if peaks.size == 0:
        return Prominence(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
    peak_id = np.full(z.size, -1, np.int64)
    peak_id[peaks] = np.arange(peaks.size)
    bid = peak_id[basin].reshape(ny, nx)
    bid[~valid] = -1

    # 3. basin adjacency: highest pass between each touching pair
    ea: Any = []
    eb: Any = []
    ew: Any = []
    ec: Any = []
    for dr, dc in [(0, 1), (1, 0), (1, 1), (1, -1)]:
        b2 = _shift(bid, dr, dc, -1)
        r2 = _shift(rank2, dr, dc, -1)
        i2 = _shift(idx2, dr, dc, 0)
        m = (bid >= 0) & (b2 >= 0) & (bid != b2)
        a_b, b_b, a_r, b_r, a_i, b_i = bid[m], b2[m], rank2[m], r2[m], idx2[m], i2[m]
        lower_is_a = a_r < b_r
        ea.append(np.minimum(a_b, b_b))
        eb.append(np.maximum(a_b, b_b))
        ew.append(np.where(lower_is_a, a_r, b_r))
        ec.append(np.where(lower_is_a, a_i, b_i))
    ea, eb, ew, ec = (np.concatenate(v) for v in (ea, eb, ew, ec))
    by_w = np.argsort(-ew, kind="stable")
    key = ea[by_w] * np.int64(peaks.size) + eb[by_w]
    _, first = np.unique(key, return_index=True)
    sel = by_w[np.sort(first)]                 # one edge per basin pair, in descending col rank
    ea, eb, ec = ea[sel].tolist(), eb[sel].tolist(), ec[sel]

    # 4. union-find sweep from high to low cols
    peak_rank = rank[peaks].tolist()
    parent = list(range(peaks.size))
    top = list(range(peaks.size))             # highest peak of each group (valid at group roots)
    prom = np.full(peaks.size, np.nan)
    col = np.full(peaks.size, -1, np.int64)
    z_col = z[ec]

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for e in range(len(ea)):
        a, b = find(ea[e]), find(eb[e])
        if a == b:
            continue
        if peak_rank[top[a]] < peak_rank[top[b]]:
            a, b = b, a
        low = top[b]
        prom[low] = z[peaks[low]] - z_col[e]
        col[low] = ec[e]
        parent[b] = a
    # highest peak of each connected area: elevation above the area's lowest cell
    areas, _ = ndimage.label(valid, structure=np.ones((3, 3)))
    area_min = ndimage.minimum(dem, areas, np.arange(1, areas.max() + 1))
    roots = np.isnan(prom)
    prom[roots] = z[peaks[roots]] - np.asarray(area_min)[areas.ravel()[peaks[roots]] - 1]
    return Prominence(peaks, prom, col)


def _interior(dem: np.ndarray) -> np.ndarray:
    """``(ny*nx,)`` bool: valid cells neither on the window edge nor next to nodata."""
    valid = np.isfinite(dem)
    inner = ~ndimage.binary_dilation(~valid, structure=np.ones((3, 3), bool))
    inner[0, :] = inner[-1, :] = inner[:, 0] = inner[:, -1] = False
    return (inner & valid).ravel()


def _prominent(prom: Prominence, min_prominence_m: float, dem: np.ndarray) -> np.ndarray:
    """Peaks with enough prominence, away from the window edge and nodata (cut-off slopes, not summits)."""
    return (prom.prominence_m >= min_prominence_m) & _interior(dem)[prom.peak]


def peak_cells(dem: np.ndarray, res_m: float, prominence_m: float = 30.0, merge_m: float = 90.0,
               prominence: Prominence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows, cols of peaks: local maxima with prominence >= ``prominence_m``, merged within ``merge_m``.

    Maxima on the window edge or next to nodata are dropped: there the ground may rise beyond the window.
    """
    dem = _check_dem(dem, res_m)
    prom = topographic_prominence(dem) if prominence is None else prominence
    keep = _prominent(prom, prominence_m, dem)
    rows, cols = _unravel(prom.peak[keep], dem.shape)
    sel = thin_points(rows, cols, dem[rows, cols], merge_m / res_m)
    return rows[sel], cols[sel]


def saddle_cells(dem: np.ndarray, res_m: float, prominence_m: float = 30.0,
                 prominence: Prominence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows, cols of saddles: the key cols of peaks with prominence >= ``prominence_m`` (deduplicated)."""
    dem = _check_dem(dem, res_m)
    prom = topographic_prominence(dem) if prominence is None else prominence
    cols_flat = prom.col[_prominent(prom, prominence_m, dem) & (prom.col >= 0)]
    return _unravel(np.unique(cols_flat), dem.shape)


# --------------------------------------------------------------------------------------------------
# hydrology-based rules (river, waterfall, sinkhole)
# --------------------------------------------------------------------------------------------------
class Hydro(NamedTuple):
    """Depression-filled DEM, D8 receivers (flat, -1 at outlets) and drainage area of every cell."""

    filled: np.ndarray       # (ny, nx) metres
    receivers: np.ndarray    # (ny*nx,) int64
    area_km2: np.ndarray     # (ny, nx) km2, the cell itself included


def hydro(dem: np.ndarray, res_m: float) -> Hydro:
    """Run :mod:`topo2vec_lib.hydrology` once (filling, D8, accumulation) for the hydrology rules."""
    from topo2vec_lib import hydrology

    dem = _check_dem(dem, res_m)
    filled = np.asarray(hydrology.fill_depressions(dem), dtype=np.float64)
    receivers = np.asarray(hydrology.d8_receivers(filled, res_m), dtype=np.int64).ravel()
    cells = np.asarray(hydrology.flow_accumulation(receivers, dem.shape), dtype=np.float64)
    area = cells.reshape(dem.shape) * (res_m * res_m / 1e6)
    area[~np.isfinite(dem)] = np.nan
    return Hydro(filled, receivers, area)


def steps_to_m(steps: np.ndarray, res_m: float) -> np.ndarray:
    """Along-channel metres from orthogonal and diagonal D8 step counts ``steps (2, ...)`` int64."""
    return steps[0] * res_m + steps[1] * (res_m * np.sqrt(2.0))


def _downstream_distance_m(receivers: np.ndarray, shape, res_m: float) -> np.ndarray:
    """Along-channel distance (m) from every cell to its outlet (flat, float64).

    The orthogonal and diagonal steps are counted as integers (exact whatever the order of the sums, so a
    tiled run gives the same bits) and turned into metres once per cell by :func:`steps_to_m`.
    """
    from topo2vec_lib.hydrology import downstream_steps

    return steps_to_m(downstream_steps(receivers, shape), res_m)


def river_cells(dem: np.ndarray, res_m: float, min_area_km2: float = 2.0, spacing_m: float = 300.0,
                hyd: Hydro | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows, cols of river points: channel cells (drainage >= ``min_area_km2``) every ``spacing_m``.

    A point goes where the along-channel distance to the outlet crosses a multiple of ``spacing_m``;
    points of different branches closer than ``spacing_m / 2`` (near confluences) are merged, keeping
    the larger drainage area.
    """
    dem = _check_dem(dem, res_m)
    h = hydro(dem, res_m) if hyd is None else hyd
    area = np.nan_to_num(h.area_km2.ravel(), nan=0.0)
    channel = area >= min_area_km2
    if not channel.any():
        return _empty()
    dist = _downstream_distance_m(h.receivers, dem.shape, res_m)
    rec = h.receivers
    d_down = np.where(rec >= 0, dist[np.maximum(rec, 0)], -1.0)
    crosses = channel & (np.floor(dist / spacing_m) > np.floor(d_down / spacing_m)) & (dist > 0)
    flat = np.flatnonzero(crosses)
    rows, cols = _unravel(flat, dem.shape)
    sel = thin_points(rows, cols, area[flat], 0.5 * spacing_m / res_m)
    return rows[sel], cols[sel]


def waterfall_cells(dem: np.ndarray, res_m: float, min_area_km2: float = 0.5, min_drop_m: float = 40.0,
                    reach_m: float = 90.0, hyd: Hydro | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows, cols of waterfalls: one per steep channel reach, at its lip.

    A channel cell (drainage >= ``min_area_km2``) is steep when the filled DEM drops >= ``min_drop_m``
    over the next ``max(1, round(reach_m / res_m))`` D8 steps downstream. 8-connected steep cells form
    a reach; its point is its lip: the cell with the largest one-step drop to its receiver (ties: the first
    in row-major order).
    """
    dem = _check_dem(dem, res_m)
    h = hydro(dem, res_m) if hyd is None else hyd
    area = np.nan_to_num(h.area_km2.ravel(), nan=0.0)
    channel = area >= min_area_km2
    if not channel.any():
        return _empty()
    z = h.filled.ravel()
    idx = np.arange(z.size)
    r = np.where(h.receivers >= 0, h.receivers, idx)
    j = idx
    for _ in range(max(1, int(round(reach_m / res_m)))):
        j = r[j]
    drop = np.nan_to_num(z - z[j], nan=0.0)
    steep = (channel & (drop >= min_drop_m)).reshape(dem.shape)
    lab, n = ndimage.label(steep, structure=np.ones((3, 3)))
    if n == 0:
        return _empty()
    step_drop = np.nan_to_num(z - z[r], nan=0.0)
    return _unravel(first_extreme(step_drop, lab.ravel(), np.arange(1, n + 1), largest=True), dem.shape)


def sinkhole_cells(dem: np.ndarray, res_m: float, min_depth_m: float = 2.0, min_area_m2: float = 900.0,
                   max_area_m2: float = 1.0e6, hyd: Hydro | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows, cols of sinkholes: the lowest cell of each closed depression deep and large enough.

    Depressions are 8-connected cells where the filled DEM is > 1 cm above the DEM; kept when their depth
    (filled - dem, max) >= ``min_depth_m`` and their area is within [``min_area_m2``, ``max_area_m2``].
    The point is the lowest DEM cell (ties: the first in row-major order).
    """
    dem = _check_dem(dem, res_m)
    filled = (hydro(dem, res_m) if hyd is None else hyd).filled
    depth = np.nan_to_num(filled - dem, nan=0.0)
    # > 1 cm: the filled DEM's epsilon ramps across flats (micrometres per cell) are not depressions
    lab, n = ndimage.label(depth > 0.01, structure=np.ones((3, 3)))
    if n == 0:
        return _empty()
    ids = np.arange(1, n + 1)
    max_depth = np.asarray(ndimage.maximum(depth, lab, ids))
    area_m2 = np.bincount(lab.ravel(), minlength=n + 1)[1:] * res_m * res_m
    ok = ids[(max_depth >= min_depth_m) & (area_m2 >= min_area_m2) & (area_m2 <= max_area_m2)]
    if ok.size == 0:
        return _empty()
    return _unravel(first_extreme(dem.ravel(), lab.ravel(), ok, largest=False), dem.shape)


def cliff_cells(dem: np.ndarray, res_m: float, min_slope_deg: float = 45.0, min_length_m: float = 90.0,
                spacing_m: float = 300.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows, cols of cliff points along steep escarpments.

    Cells with slope >= ``min_slope_deg`` are grouped 8-connected; a group is a cliff when its extent
    (bounding-box diagonal, cell centres, plus one cell) is >= ``min_length_m``. Points are its cells
    thinned to ``spacing_m`` apart, steepest first.
    """
    dem = _check_dem(dem, res_m)
    slope = np.nan_to_num(slope_deg(dem, res_m), nan=0.0)
    steep = slope >= min_slope_deg
    lab, n = ndimage.label(steep, structure=np.ones((3, 3)))
    if n == 0:
        return _empty()
    boxes = ndimage.find_objects(lab)
    ext = np.array([np.hypot(b[0].stop - b[0].start - 1, b[1].stop - b[1].start - 1) + 1 for b in boxes])
    long_ids = np.flatnonzero(ext * res_m >= min_length_m) + 1
    mask = np.isin(lab, long_ids)
    rows, cols = np.nonzero(mask)
    sel = thin_points(rows, cols, slope[rows, cols], spacing_m / res_m)
    return rows[sel].astype(np.int64), cols[sel].astype(np.int64)


# --------------------------------------------------------------------------------------------------
# proxy rules (aerialway stations, alpine huts): seeded, stochastic
# --------------------------------------------------------------------------------------------------
def _valid_area_km2(dem: np.ndarray, res_m: float) -> float:
    return float(np.isfinite(dem).sum()) * res_m * res_m / 1e6


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's mixing function on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def rule_key(rng) -> int:
    """The 63-bit key of a proxy rule: an int as is, or the first draw of a Generator (see :func:`class_rng`)."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**63))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return int(rng) & (2**63 - 1)
    raise ValueError(f"a proxy rule needs a numpy Generator or an int key, got {rng!r}")


def keyed_uniform(key: int, rows, cols) -> np.ndarray:
    """Uniform draws in [0, 1) (float64), one per cell: a hash of ``(key, row, col)``.

    A cell's draw does not depend on the window or tile it is drawn in, nor on the other cells drawn.
    """
    r = np.asarray(rows, np.int64).astype(np.uint64)
    c = np.asarray(cols, np.int64).astype(np.uint64)
    h = _splitmix64(_splitmix64(np.uint64(int(key) & (2**64 - 1)) ^ r) ^ c)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def aerialway_reach_px(res_m: float, max_length_m: float) -> int:
    """Cells a lift line reaches from its top (its window half-width)."""
    return int(np.ceil(max_length_m / res_m))


@functools.lru_cache(maxsize=8)
def _offset_distance_m(res_m: float, reach: int) -> np.ndarray:
    """``(2 reach + 1, 2 reach + 1)`` metres from the centre cell to each cell of the square around it."""
    d = np.arange(-reach, reach + 1)
    return res_m * np.hypot(d[:, None], d[None, :])


def aerialway_line(dem_w: np.ndarray, slope_w: np.ndarray, origin, shape, res_m: float, key: int, r: int, c: int,
                   min_gain_m: float, min_length_m: float, max_length_m: float,
                   max_slope_deg: float) -> tuple[int, int, int, int] | None:
    """Upper and lower station ``(ur, uc, lr, lc)`` of the lift line from top ``(r, c)``, or None.

    ``dem_w``, ``slope_w``: a window of the raster ``shape`` whose first cell is ``origin = (row, col)`` and that
    holds every raster cell within ``aerialway_reach_px`` of the top (slope: ``nan`` -> 90 degrees). The upper
    station is the gentlest cell within 150 m (first in row-major order on ties); the lower one is drawn
    among the gentle cells ``min_gain_m`` lower at ``min_length_m..max_length_m`` by the top's own draw.
    """
    ny, nx = shape
    o_r, o_c = origin
    rmax = aerialway_reach_px(res_m, max_length_m)
    rtop = max(1, int(round(150.0 / res_m)))
    r0, r1, c0, c1 = max(0, r - rtop), min(ny, r + rtop + 1), max(0, c - rtop), min(nx, c + rtop + 1)
    s_win = slope_w[r0 - o_r:r1 - o_r, c0 - o_c:c1 - o_c]
    ur, uc = (int(v) for v in np.unravel_index(np.argmin(s_win), s_win.shape))
    ur, uc = ur + r0, uc + c0
    r0, r1, c0, c1 = max(0, r - rmax), min(ny, r + rmax + 1), max(0, c - rmax), min(nx, c + rmax + 1)
    dist_m = _offset_distance_m(float(res_m), rmax)[r0 - r + rmax:r1 - r + rmax, c0 - c + rmax:c1 - c + rmax]
    win = (slice(r0 - o_r, r1 - o_r), slice(c0 - o_c, c1 - o_c))
    with np.errstate(invalid="ignore"):
        ok = ((dist_m >= min_length_m) & (dist_m <= max_length_m) & (slope_w[win] <= max_slope_deg)
              & (dem_w[win] <= dem_w[r - o_r, c - o_c] - min_gain_m))
    cand = np.flatnonzero(ok)
    if cand.size == 0:
        return None
    u = keyed_uniform(key ^ 0x5DEECE66D, [r], [c])[0]
    pick = int(cand[min(int(u * cand.size), cand.size - 1)])
    return ur, uc, r0 + pick // (c1 - c0), c0 + pick % (c1 - c0)


def pick_lines(lines, n_stations: int) -> tuple[np.ndarray, np.ndarray]:
    """Stations of lift lines visited in order (``lines``: iterable of ``(ur, uc, lr, lc)`` or None): a line is
    skipped when its upper station is already a station; stops at ``n_stations``."""
    out_r: list[int] = []
    out_c: list[int] = []
    used: set[tuple[int, int]] = set()
    for line in lines:
        if len(out_r) >= n_stations:
            break
        if line is None:
            continue
        ur, uc, lr, lc = line
        if (ur, uc) in used:
            continue
        used.update({(ur, uc), (lr, lc)})
        out_r += [ur, lr]
        out_c += [uc, lc]
    return np.asarray(out_r, np.int64), np.asarray(out_c, np.int64)


def aerialway_station_cells(dem: np.ndarray, res_m: float, rng, tops: tuple[np.ndarray, np.ndarray],
                            lines_per_100km2: float = 10.0, min_gain_m: float = 400.0, min_length_m: float = 800.0,
                            max_length_m: float = 4000.0, max_slope_deg: float = 15.0,
                            top_quantile: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Rows, cols of aerialway stations (proxy): both ends of seeded lift lines.

    ``tops`` are candidate upper ends (rows, cols), normally the peaks and cols. A top qualifies when its
    elevation is above the ``top_quantile`` elevation quantile of the window. Tops are visited in the order
    of their own seeded draw; for each, the bottom station is drawn uniformly (by another draw of the top)
    among cells that are gentle (slope <= ``max_slope_deg``), at a horizontal distance in
    [``min_length_m``, ``max_length_m``] and at least ``min_gain_m`` lower. The upper station is the
    gentlest cell within 150 m of the top; a line whose upper station is already a station is skipped.
    ``round(lines_per_100km2 * valid area / 100 km2)`` lines are built (fewer if tops run out).
    ``rng``: a Generator (its first draw is the rule's key) or an int key; draws are hashes of the key and
    the top's cell (:func:`keyed_uniform`), so a tiled run draws the same.
    """
    dem = _check_dem(dem, res_m)
    n_lines = int(round(lines_per_100km2 * _valid_area_km2(dem, res_m) / 100.0))
    tr, tc = (np.asarray(a, np.int64) for a in tops)
    if n_lines == 0 or tr.size == 0:
        return _empty()
    key = rule_key(rng)
    high = dem[tr, tc] >= np.nanquantile(dem, top_quantile)
    tr, tc = tr[high], tc[high]
    slope = np.nan_to_num(slope_deg(dem, res_m), nan=90.0)
    order = np.argsort(keyed_uniform(key, tr, tc), kind="stable")
    lines = (aerialway_line(dem, slope, (0, 0), dem.shape, res_m, key, int(tr[k]), int(tc[k]), min_gain_m,
                            min_length_m, max_length_m, max_slope_deg) for k in order)
    return pick_lines(lines, 2 * n_lines)


def hut_candidates(dem_w: np.ndarray, slope_w: np.ndarray, origin, res_m: float, min_elev_m: float,
                   peaks: tuple[np.ndarray, np.ndarray], peak_z: np.ndarray, cols: tuple[np.ndarray, np.ndarray],
                   max_slope_deg: float, near_col_m: float, near_peak_m: float,
                   below_peak_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows, cols (raster, row-major order) of the hut candidates in a window whose first cell is ``origin``.

    Candidates: elevation >= ``min_elev_m``, slope <= ``max_slope_deg``, and either within ``near_col_m`` of a
    col, or within ``near_peak_m`` of the nearest peak and at least ``below_peak_m`` below it. Distances to
    the (whole raster's) peak and col lists come from k-d trees of those lists, so they do not depend on
    the window.
    """
    from scipy.spatial import cKDTree

    with np.errstate(invalid="ignore"):
        cand = (np.nan_to_num(dem_w, nan=-np.inf) >= min_elev_m) & (slope_w <= max_slope_deg)
    rows, cols_ = np.nonzero(cand)
    if rows.size == 0:
        return _empty()
    z = dem_w[rows, cols_]
    rows, cols_ = rows + origin[0], cols_ + origin[1]
    pts = np.column_stack([rows, cols_]).astype(np.float64)
    near = np.zeros(rows.size, bool)
    sr, sc = (np.asarray(a, np.int64) for a in cols)
    if sr.size:
        d, _ = cKDTree(np.column_stack([sr, sc]).astype(np.float64)).query(
            pts, distance_upper_bound=near_col_m / res_m + 1.0)
        near |= d * res_m <= near_col_m
    pr, pc = (np.asarray(a, np.int64) for a in peaks)
    if pr.size:
        d, i = cKDTree(np.column_stack([pr, pc]).astype(np.float64)).query(
            pts, distance_upper_bound=near_peak_m / res_m + 1.0)
        hit = np.isfinite(d)
        near[hit] |= (d[hit] * res_m <= near_peak_m) & (z[hit] <= np.asarray(peak_z, np.float64)[i[hit]] - below_peak_m)
    return rows[near].astype(np.int64), cols_[near].astype(np.int64)


def alpine_hut_cells(dem: np.ndarray, res_m: float, rng,
                     peaks: tuple[np.ndarray, np.ndarray], cols: tuple[np.ndarray, np.ndarray],
                     per_100km2: float = 20.0, min_elev_quantile: float = 0.6, max_slope_deg: float = 20.0,
                     near_col_m: float = 600.0, near_peak_m: float = 1500.0, below_peak_m: float = 100.0,
                     spacing_m: float = 300.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows, cols of alpine huts (proxy), drawn at random among high, gentle cells near cols or peaks.

    Candidates (:func:`hut_candidates`): elevation >= the ``min_elev_quantile`` quantile of the window, slope
    <= ``max_slope_deg``, and either within ``near_col_m`` of a col, or within ``near_peak_m`` of the nearest
    peak and at least ``below_peak_m`` lower than it (huts sit below summits). Each candidate gets a seeded
    draw (:func:`keyed_uniform` of the rule's key and its cell); ``round(per_100km2 * valid area / 100 km2)``
    huts are the highest draws, no two closer than ``spacing_m`` (fewer if candidates run out).
    """
    dem = _check_dem(dem, res_m)
    n_huts = int(round(per_100km2 * _valid_area_km2(dem, res_m) / 100.0))
    pr, pc = (np.asarray(a, np.int64) for a in peaks)
    sr, sc = (np.asarray(a, np.int64) for a in cols)
    if n_huts == 0 or (pr.size == 0 and sr.size == 0):
        return _empty()
    key = rule_key(rng)
    slope = np.nan_to_num(slope_deg(dem, res_m), nan=90.0)
    rows, cols_ = hut_candidates(dem, slope, (0, 0), res_m, np.nanquantile(dem, min_elev_quantile), (pr, pc),
                                 dem[pr, pc], (sr, sc), max_slope_deg, near_col_m, near_peak_m, below_peak_m)
    if rows.size == 0:
        return _empty()
    sel = thin_points(rows, cols_, keyed_uniform(key, rows, cols_), spacing_m / res_m)[:n_huts]
    return rows[sel], cols_[sel]


# --------------------------------------------------------------------------------------------------
# all rules on a terrain
# --------------------------------------------------------------------------------------------------
def class_rng(seed: int, name: str) -> np.random.Generator:
    """The Generator of one proxy class: independent per class, reproducible from ``seed`` (an integer >= 0)."""
    return np.random.default_rng([check_seed(seed), zlib.crc32(name.encode())])


def derive_cells(dem: np.ndarray, res_m: float, seed: int = 0, classes: Iterable[str] | None = None,
                 progress: bool = False, **params) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Run the rules of ``classes`` (default all) on a numpy DEM; ``{class: (rows, cols)}``.

    Shared work (prominence sweep, hydrology) is done once. ``params`` override RULE_DEFAULTS.
    """
    from tqdm import tqdm

    p = rule_params(**params)
    seed = check_seed(seed)
    dem = _check_dem(dem, res_m)
    names = list(CLASSES) if classes is None else class_list(classes)
    cache: dict = {}

    def prom():
        if "prom" not in cache:
            cache["prom"] = topographic_prominence(dem)
        return cache["prom"]

    def hyd():
        if "hyd" not in cache:
            cache["hyd"] = hydro(dem, res_m)
        return cache["hyd"]

    def peaks():
        if "peak" not in cache:
            cache["peak"] = peak_cells(dem, res_m, p["peak_prominence_m"], p["peak_merge_m"], prom())
        return cache["peak"]

    def saddles():
        if "saddle" not in cache:
            cache["saddle"] = saddle_cells(dem, res_m, p["peak_prominence_m"], prom())
        return cache["saddle"]

    def tops():
        (pr, pc), (sr, sc) = peaks(), saddles()
        return np.concatenate([pr, sr]), np.concatenate([pc, sc])

    rules: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
        "peak": peaks,
        "saddle": saddles,
        "river": lambda: river_cells(dem, res_m, p["river_min_area_km2"], p["line_spacing_m"], hyd()),
        "cliff": lambda: cliff_cells(dem, res_m, p["cliff_min_slope_deg"], p["cliff_min_length_m"],
                                     p["line_spacing_m"]),
        "aerialway_station": lambda: aerialway_station_cells(
            dem, res_m, class_rng(seed, "aerialway_station"), tops(), p["aerialway_lines_per_100km2"],
            p["aerialway_min_gain_m"], p["aerialway_min_length_m"], p["aerialway_max_length_m"],
            p["aerialway_max_slope_deg"], p["aerialway_top_quantile"]),
        "alpine_hut": lambda: alpine_hut_cells(
            dem, res_m, class_rng(seed, "alpine_hut"), peaks(), saddles(), p["hut_per_100km2"],
            p["hut_min_elev_quantile"], p["hut_max_slope_deg"], p["hut_near_col_m"], p["hut_near_peak_m"],
            p["hut_below_peak_m"], p["hut_spacing_m"]),
        "waterfall": lambda: waterfall_cells(dem, res_m, p["waterfall_min_area_km2"],
                                             p["waterfall_min_drop_m"], p["waterfall_reach_m"], hyd()),
        "sinkhole": lambda: sinkhole_cells(dem, res_m, p["sinkhole_min_depth_m"], p["sinkhole_min_area_m2"],
                                           p["sinkhole_max_area_m2"], hyd()),
    }
    out = {}
    for name in tqdm(names, desc="label rules", disable=not progress):
        out[name] = rules[name]()
    return out


def derive_labels(terrain, seed: int = 0, classes: Iterable[str] | None = None, progress: bool = False,
                  **params) -> pd.DataFrame:
    """Labels of ``classes`` (default all eight) derived from a terrain DataArray (docs/architecture.md).

    Returns a DataFrame with columns ``lon, lat`` (EPSG:4326, pixel centres), ``class``, ``source``
    (``"derived"`` or ``"derived-proxy"``) and ``region`` (``terrain.attrs["region"]``). ``params``
    override RULE_DEFAULTS (see each ``*_cells`` rule); ``seed`` drives the proxy classes only.
    """
    check_terrain(terrain)
    res_m = float(terrain.attrs.get("res_m", abs(float(terrain.x[1] - terrain.x[0]))))
    cells = derive_cells(terrain.values, res_m, seed=seed, classes=classes, progress=progress, **params)
    return cells_to_table(terrain, cells)


def check_terrain(terrain) -> None:
    """ValueError unless ``terrain`` is a ``(y, x)`` DataArray with a CRS."""
    import rioxarray  # noqa: F401  (registers .rio)

    if getattr(terrain, "dims", None) != ("y", "x"):
        raise ValueError(f"terrain must be a DataArray with dims ('y', 'x'), got {getattr(terrain, 'dims', None)}")
    if terrain.rio.crs is None:
        raise ValueError("terrain has no CRS (terrain.rio.crs is None); write one with .rio.write_crs")


def cells_to_table(terrain, cells: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """The label table of ``{class: (rows, cols)}`` cells of ``terrain`` (lon, lat of the pixel centres)."""
    crs = terrain.rio.crs
    region = str(terrain.attrs.get("region", "unknown"))
    xs, ys = np.asarray(terrain.x.values), np.asarray(terrain.y.values)
    frames = []
    for name, (rows, cols) in cells.items():
        lon, lat = xy_to_lonlat(crs.to_wkt(), xs[cols], ys[rows])
        frames.append(pd.DataFrame({"lon": lon, "lat": lat, "class": name,
                                    "source": CLASSES[name].source, "region": region}))
    return _as_label_table(pd.concat(frames, ignore_index=True) if frames else None)


# --------------------------------------------------------------------------------------------------
# label tables
# --------------------------------------------------------------------------------------------------
def _as_label_table(df: pd.DataFrame | None) -> pd.DataFrame:
    if df is None or len(df) == 0:
        df = pd.DataFrame({c: pd.Series(dtype=("float64" if c in ("lon", "lat") else "object"))
                           for c in LABEL_COLUMNS})
    missing = [c for c in LABEL_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"label table lacks column(s) {missing}; required: {LABEL_COLUMNS}")
    df = df[LABEL_COLUMNS].copy()
    df["lon"] = df["lon"].astype("float64")
    df["lat"] = df["lat"].astype("float64")
    for c in ("class", "source", "region"):
        df[c] = df[c].astype("object").astype(str) if len(df) else df[c].astype("object")
    return df.reset_index(drop=True)


def write_labels(df: pd.DataFrame, out_dir: str | Path, classes: Iterable[str] | None = None) -> list[Path]:
    """Write one ``<out_dir>/<class>.parquet`` per class (default: every registry class, empty if none).

    Each file is written atomically; returns the paths written.
    """
    df = _as_label_table(df)
    unknown = sorted(set(df["class"]) - set(CLASSES))
    if unknown:
        raise ValueError(f"label table holds unknown class(es) {unknown}; valid: {sorted(CLASSES)}")
    names = list(CLASSES) if classes is None else class_list(classes)
    out_dir = Path(out_dir)
    paths = []
    for name in names:
        path = out_dir / f"{name}.parquet"
        with atomic_path(path) as tmp:
            df[df["class"] == name].reset_index(drop=True).to_parquet(tmp, index=False)
        paths.append(path)
    return paths


def read_labels(path: str | Path, classes: Iterable[str] | None = None, terrains: dict | None = None) -> pd.DataFrame:
    """Read a label table from a ``<class>.parquet`` file or a directory of them.

    ``classes`` selects classes (unknown names raise; a class missing from a directory raises). Every file is
    checked before it joins the table (:func:`topo2vec_lib.osm.check_label_table`): the columns ``lon, lat,
    class, source, region``, finite lon in -180..180 and lat in -90..90 (367.6 is never wrapped), a class on
    every row, and in ``<class>.parquet`` only rows of that class. ``terrains``: ``{region: terrain DataArray or
    PatchSampler}``; the rows of each region must not look lon/lat-swapped against its terrain
    (:func:`topo2vec_lib.osm.check_not_swapped`). ValueError naming the file otherwise.
    """
    from .osm import check_label_table, check_not_swapped

    path = Path(path)
    names = None if classes is None else class_list(classes)
    if path.is_dir():
        if names is None:
            files = sorted(p for p in path.glob("*.parquet") if p.stem in CLASSES)
        else:
            files = [path / f"{n}.parquet" for n in names]
            absent = [f.name for f in files if not f.exists()]
            if absent:
                raise FileNotFoundError(f"label files {absent} missing in {path}")
        if not files:
            raise FileNotFoundError(f"no <class>.parquet label files in {path}; classes: {sorted(CLASSES)}")
    elif path.exists():
        files = [path]
    else:
        raise FileNotFoundError(f"label path {path} does not exist")
    frames = []
    for f in files:
        try:
            df = pd.read_parquet(f)
        except (OSError, ValueError) as err:
            raise ValueError(f"{f}: not a readable parquet label table ({type(err).__name__}: {err})") from None
        check_label_table(df, path=f)
        unknown = sorted(set(df["class"]) - set(CLASSES))
        if unknown:
            raise ValueError(f"{f}: unknown label class(es) {unknown}; valid: {sorted(CLASSES)}")
        if f.stem in CLASSES:
            other = sorted(set(df["class"]) - {f.stem})
            if other:
                raise ValueError(f"{f}: a {f.stem!r} label file holds rows of class(es) {other}; each "
                                 f"<class>.parquet holds its own class only")
        frames.append(_as_label_table(df))
    df = _as_label_table(pd.concat(frames, ignore_index=True))
    if names is not None:
        df = df[df["class"].isin(names)].reset_index(drop=True)
    for region, terrain in (terrains or {}).items():
        check_not_swapped(df[df["region"] == region], terrain, where=f"{path} (region {region!r})")
    return df


class InsufficientLabelsError(ValueError):
    """Some classes have fewer labels than required."""


def label_counts(df: pd.DataFrame) -> dict[str, dict[str, int]]:
    """``{region: {class: count}}`` for every region in ``df`` and every registry class (0 if none)."""
    df = _as_label_table(df)
    return {str(reg): {c: int((g["class"] == c).sum()) for c in CLASSES} for reg, g in df.groupby("region")}


def check_counts(df: pd.DataFrame, required: dict[str, int], region: str | None = None) -> dict[str, int]:
    """Counts per required class (in ``region`` if given); InsufficientLabelsError naming short classes.

    ``required`` maps class name -> minimum number of rows.
    """
    df = _as_label_table(df)
    for name in required:
        get_class(name)
    if region is not None:
        df = df[df["region"] == region]
    counts = {name: int((df["class"] == name).sum()) for name in required}
    short = {n: (counts[n], int(k)) for n, k in required.items() if counts[n] < int(k)}
    if short:
        where = f" in region {region!r}" if region is not None else ""
        detail = ", ".join(f"{n}: {have} < {need}" for n, (have, need) in short.items())
        raise InsufficientLabelsError(
            f"too few labels{where}: {detail} (have < required). Use a larger terrain window "
            f"(data.size_km) or relax the label rule parameters.")
    return counts


def perturb_labels(df: pd.DataFrame, sigma_m: float = 0.0, drop_fraction: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Label noise like OpenStreetMap's: move every point and leave some unmapped.

    Each point moves by an isotropic Gaussian offset with standard deviation ``sigma_m`` metres along each
    axis (east and north; the distance moved is Rayleigh distributed, mean ``sigma_m * sqrt(pi / 2)``),
    along the WGS84 geodesic. Then ``drop_fraction`` of the points of every (class, region) group are
    dropped: ``round(drop_fraction * n)`` of them, never all (a non-empty group keeps at least one point).
    Offsets and drops come from two separate streams of ``seed``: a point moves the same way whatever the
    drop fraction, and a larger fraction drops a superset of the points a smaller one drops (nested
    experiments). ``sigma_m = 0`` and ``drop_fraction = 0`` return the table unchanged. Every column is kept
    (a moved point keeps its class, source and region; it may leave the terrain window, which the probes'
    ``valid_places`` then skip); the row order is kept and the index reset.
    """
    if isinstance(sigma_m, bool) or not isinstance(sigma_m, (int, float)) or not np.isfinite(sigma_m) \
            or sigma_m < 0:
        raise ValueError(f"sigma_m={sigma_m!r}: expected a finite number of metres >= 0")
    if isinstance(drop_fraction, bool) or not isinstance(drop_fraction, (int, float)) \
            or not 0 <= drop_fraction < 1:
        raise ValueError(f"drop_fraction={drop_fraction!r}: expected a number in [0, 1)")
    missing = [c for c in ("lon", "lat", "class", "region") if c not in df.columns]
    if missing:
        raise ValueError(f"label table lacks column(s) {missing}; required: {LABEL_COLUMNS}")
    out = df.reset_index(drop=True).copy()
    n = len(out)
    if n == 0 or (sigma_m == 0 and drop_fraction == 0):
        return out
    if sigma_m > 0:
        from pyproj import Geod

        move = np.random.default_rng([int(seed), 0x4A17]).normal(0.0, float(sigma_m), size=(n, 2))  # east, north
        azimuth = np.degrees(np.arctan2(move[:, 0], move[:, 1]))
        lon, lat, _ = Geod(ellps="WGS84").fwd(out["lon"].to_numpy(float), out["lat"].to_numpy(float),
                                              azimuth, np.hypot(move[:, 0], move[:, 1]))
        out["lon"], out["lat"] = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    if drop_fraction > 0:
        rank = np.random.default_rng([int(seed), 0xD409]).permutation(n)   # drop order, nested across fractions
        keep = np.ones(n, dtype=bool)
        for group in out.groupby(["class", "region"], sort=False).indices.values():
            idx = np.asarray(group, dtype=np.intp)
            n_drop = min(int(round(drop_fraction * idx.size)), idx.size - 1)
            keep[idx[np.argsort(rank[idx], kind="stable")[:n_drop]]] = False
        out = out[keep].reset_index(drop=True)
    return out


def labels_for_terrain(terrain, source: str = "derived", *, seed: int = 0, rules: dict | None = None,
                       osm: dict | None = None, files: dict | None = None, progress: bool = False) -> pd.DataFrame:
    """The label table of one region from any source; every later stage reads the same columns.

    ``derived``: :func:`derive_labels` with ``rules``. ``osm``: OpenStreetMap through Overpass
    (:func:`topo2vec_lib.osm.osm_labels_for_terrain`, keyword arguments in ``osm``). ``files``: a user's own
    points, ``files = {class: path}`` of GeoJSON/CSV/Parquet, clipped to the terrain window.
    """
    check_source(source)
    region = str(terrain.attrs.get("region", "window"))
    if source == "derived":
        df = derive_labels(terrain, seed=seed, progress=progress, **(rules or {}))
    elif source == "osm":
        from .osm import osm_labels_for_terrain

        df = osm_labels_for_terrain(terrain, list(CLASSES), progress=progress, **(osm or {}))
    else:
        from .osm import clip_to_terrain, read_label_files

        if not files:
            raise ValueError("labels source 'files' needs label_files: {class: path} (GeoJSON, CSV or Parquet)")
        unknown = sorted(set(files) - set(CLASSES))
        if unknown:
            raise ValueError(f"label_files names unknown classes {unknown}; valid: {list(CLASSES)}")
        df = clip_to_terrain(read_label_files(files, region), terrain)
    df["region"] = region
    return df
