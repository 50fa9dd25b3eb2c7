"""Every derived label class tile by tile, equal to :func:`topo2vec_lib.labels.derive_cells` / ``derive_labels``.

:func:`derive_cells_tiled` returns the same ``{class: (rows, cols)}`` (same cells, same order) as
``labels.derive_cells`` on the whole raster, with memory bounded by a tile (plus its halo) and by the sparse
candidate points of each class, and the tile work run in parallel on Dask (:class:`~topo2vec_lib.tiling.
TileRunner`). How each rule is made exact:

* **peak, saddle**: :mod:`topo2vec_lib.tiled_prominence` gives every prominent peak and its key col; the
  one-piece merge of peaks closer than ``peak_merge_m`` (``labels.thin_points``) then runs on the sparse
  peak list in the one-piece order (flat index).
* **river, waterfall, sinkhole**: :mod:`topo2vec_lib.tiled_hydrology` gives the filled DEM, receivers,
  drainage and along-channel step counts of every tile; river points (where the distance to the outlet
  crosses a multiple of ``line_spacing_m``) are found per tile and thinned once on the sparse list. Steep
  reaches and depressions are labelled per tile; pieces that touch across a tile border are joined
  (:func:`~topo2vec_lib.tiling.link_fragments`) and reduced (largest drop / lowest cell, ties to the lowest
  flat index; output in the one-piece label order, i.e. by each component's first cell).
* **cliff**: steep pieces per tile, joined across borders; a component's extent is its global bounding box;
  the cells of long components are thinned once.
* **aerialway_station, alpine_hut** (proxies): their draws are hashes of the rule key and a cell
  (``labels.keyed_uniform``), the elevation quantiles are exact order statistics found by a radix select over
  the tiles (:func:`tiled_nanquantile`), nearest peaks/cols come from k-d trees of the global lists. Lines
  are computed per top in tile passes and picked in the global order; huts are the first ``n`` of a greedy
  thinning in draw order, which only needs the candidates above a draw threshold (lowered until enough
  are kept; exact because a point's fate depends only on higher draws).

Reach (halo) of the rules, checked against ``tile_px``: 2 cells for the flat ramp, ``waterfall_reach`` + 1
D8 steps for waterfalls, ``aerialway_max_length_m / res_m`` + 1 cells for lift lines.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from topo2vec_lib import hydrology as H
from topo2vec_lib import labels as L
from topo2vec_lib.grid import slope_deg
from topo2vec_lib.tiled_hydrology import TiledHydrology, tile_flow, tiled_hydrology
from topo2vec_lib.tiled_prominence import tiled_prominence
from topo2vec_lib.tiling import (
    TileGrid,
    TileRunner,
    as_source,
    check_reach,
    check_tile_px,
    label8,
    link_fragments,
    perimeter_mask,
    read_clipped,
    read_window,
)

_HYDRO = {"river", "waterfall", "sinkhole"}
_PROM = {"peak", "saddle", "aerialway_station", "alpine_hut"}


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------
def slope_window(src, r0: int, r1: int, c0: int, c1: int, res_m: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Slope (degrees, as ``labels.slope_deg`` on the whole raster) of the window ``[r0:r1, c0:c1]`` clipped to
    the raster, and the ``(row, col)`` of its first cell. Reads one more ring of cells (central differences)."""
    ny, nx = src.shape
    a0, a1, b0, b1 = max(r0, 0), min(r1, ny), max(c0, 0), min(c1, nx)
    w, (o_r, o_c) = read_clipped(src, a0 - 1, a1 + 1, b0 - 1, b1 + 1)
    return slope_deg(w, res_m)[a0 - o_r:a1 - o_r, b0 - o_c:b1 - o_c], (a0, b0)


def _gidx(tile, shape, local: np.ndarray) -> np.ndarray:
    """Global flat index of tile-local flat indices."""
    tw = tile.c1 - tile.c0
    return (tile.r0 + local // tw) * shape[1] + tile.c0 + local % tw


def _fragments(tile, shape, lab: np.ndarray, n: int) -> dict:
    """Fragment bookkeeping of a tile's 8-connected labels: each fragment's first cell (global flat index)
    and the perimeter cells with their fragment (0-based)."""
    flat = lab.ravel()
    cells = np.flatnonzero(flat)
    first = np.full(n, -1, np.int64)
    if n:
        lab_c = flat[cells]
        order = np.argsort(lab_c, kind="stable")
        ls = lab_c[order]
        first_pos = np.r_[True, ls[1:] != ls[:-1]]
        first[ls[first_pos] - 1] = _gidx(tile, shape, cells[order][first_pos])
    per = (perimeter_mask(lab.shape) & (lab > 0)).ravel()
    p = np.flatnonzero(per)
    return {"n": n, "first": first, "per_g": _gidx(tile, shape, p), "per_f": flat[p] - 1}


def _components(parts: list[dict], shape) -> tuple[np.ndarray, np.ndarray]:
    """Global fragment offsets per tile and the component id of every fragment (joined across borders)."""
    counts = np.array([p["n"] for p in parts], np.int64)
    offset = np.r_[0, np.cumsum(counts)]
    cells = np.concatenate([p["per_g"] for p in parts])
    frag = np.concatenate([p["per_f"] + offset[k] for k, p in enumerate(parts)])
    return offset, link_fragments(shape, cells, frag, int(offset[-1]))


def _cat(parts: list[dict], key: str, dtype=None) -> np.ndarray:
    arrays = [np.asarray(p[key]) for p in parts]
    out = np.concatenate(arrays) if arrays else np.zeros(0)
    return out.astype(dtype) if dtype is not None else out


def _unravel(flat, shape) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.divmod(np.asarray(flat, np.int64), shape[1])
    return r, c


def _thin_sorted(gidx: np.ndarray, score: np.ndarray, shape, spacing_px: float) -> tuple[np.ndarray, np.ndarray]:
    """``labels.thin_points`` on candidates given in any order: sorted by flat index first, as the one-piece
    rules list them."""
    o = np.argsort(gidx, kind="stable")
    r, c = _unravel(gidx[o], shape)
    sel = L.thin_points(r, c, score[o], spacing_px)
    return r[sel], c[sel]


# --------------------------------------------------------------------------------------------------
# exact quantiles
# --------------------------------------------------------------------------------------------------
def _keys(z: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of float64 values (``-0.0`` and ``0.0`` share one)."""
    return H._to_ordinal(z).view(np.uint64) ^ np.uint64(1 << 63)


def _digit_task(tile, src, targets):
    """For each ``(prefix, shift)``: the 16-bit digits at ``shift`` of the tile's keys under ``prefix``, as
    sparse counts ``(digits, counts)`` (a tile holds few distinct digits; dense histograms would pile up)."""
    z = read_window(src, tile.r0, tile.r1, tile.c0, tile.c1)
    k = _keys(z[np.isfinite(z)])
    out = []
    for prefix, shift in targets:
        sel = k if shift == 48 else k[(k >> np.uint64(shift + 16)) == np.uint64(prefix)]
        out.append(np.unique(((sel >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.int64), return_counts=True))
    return out


def _histogram(parts: list, i: int) -> np.ndarray:
    """The dense 65536-bin histogram of target ``i`` summed over the tiles' sparse counts."""
    h = np.zeros(65536, np.int64)
    for part in parts:
        np.add.at(h, part[i][0], part[i][1])
    return h


def tiled_nanquantile(src, grid: TileGrid, runner, qs) -> tuple[list[float], int]:
    """``[np.nanquantile(raster, q) for q in qs]`` bit for bit, and the number of valid cells.

    The order statistics are found by a radix select over the tiles (4 passes of 16-bit digits of the
    order-preserving keys), then interpolated with numpy's own ``linear`` formula.
    """
    hist = _histogram(runner.map(_digit_task, grid.tiles, src=src, targets=[(0, 48)]), 0)
    n = int(hist.sum())
    if n == 0:
        return [float("nan")] * len(qs), 0
    plans: list[tuple[int, int, np.float64 | None]] = []
    for q in qs:
        virtual = np.float64(n - 1) * np.float64(q)
        if virtual >= n - 1:
            plans.append((n - 1, n - 1, None))
        else:
            prev = int(np.floor(virtual))
            plans.append((prev, prev + 1, virtual - np.float64(prev)))
    ranks = sorted({r for p in plans for r in p[:2]})
    state = {r: [0, r] for r in ranks}           # rank -> [key prefix, rank within the prefix]

    def descend(r, counts):
        cum = np.cumsum(counts)
        d = int(np.searchsorted(cum, state[r][1], side="right"))
        state[r][1] -= int(cum[d - 1]) if d else 0
        state[r][0] = (state[r][0] << 16) | d

    for r in ranks:
        descend(r, hist)
    for shift in (32, 16, 0):
        targets = [(state[r][0], shift) for r in ranks]
        res = runner.map(_digit_task, grid.tiles, src=src, targets=targets)
        for i, r in enumerate(ranks):
            descend(r, _histogram(res, i))
    value = {r: float(H._from_ordinal(np.array([np.uint64(state[r][0]) ^ np.uint64(1 << 63)]).view(np.int64))[0])
             for r in ranks}
    out = []
    for prev, nxt, gamma in plans:
        a, b = np.float64(value[prev]), np.float64(value[nxt])
        if gamma is None:
            out.append(float(a))
            continue
        diff = b - a
        v = a + diff * gamma
        if gamma >= 0.5:
            v = b - diff * (1 - gamma)
        out.append(float(v))
    return out, n


# --------------------------------------------------------------------------------------------------
# per-tile rule work
# --------------------------------------------------------------------------------------------------
def _cliff_tile(tile, src, shape, res_m, min_slope_deg, long_ids=None):
    """Steep pieces of a tile (bounding boxes and border cells); with ``long_ids`` the cells of those pieces."""
    slope, _ = slope_window(src, tile.r0, tile.r1, tile.c0, tile.c1, res_m)
    slope = np.nan_to_num(slope, nan=0.0)
    lab, n = label8(slope >= min_slope_deg)
    if long_ids is not None:
        m = np.isin(lab, np.asarray(long_ids) + 1)
        cells = np.flatnonzero(m)
        return {"gidx": _gidx(tile, shape, cells), "slope": slope.ravel()[cells]}
    out = _fragments(tile, shape, lab, n)
    boxes = ndimage.find_objects(lab)
    out["box"] = np.array([[b[0].start + tile.r0, b[0].stop + tile.r0, b[1].start + tile.c0, b[1].stop + tile.c0]
                           for b in boxes], np.int64).reshape(-1, 4)
    return out


def _hydro_tile(tile, src, ramped, shape, res_m, sol, p, need) -> dict:
    """River candidates, steep-reach and depression pieces of one tile."""
    tf = tile_flow(tile, ramped, shape, res_m, sol)
    th, tw = tile.shape
    area = tf.cells * (res_m * res_m / 1e6)
    area[~tf.valid] = np.nan
    a = np.nan_to_num(area.ravel(), nan=0.0)
    out = {}
    if "river" in need:
        channel = a >= p["river_min_area_km2"]
        dist = L.steps_to_m(tf.steps, res_m)
        d_down = np.full(dist.size, -1.0)
        loc = tf.local_rec >= 0
        d_down[loc] = dist[tf.local_rec[loc]]
        ex = np.flatnonzero(~loc & (tf.rec_global >= 0))
        if ex.size:
            d_down[ex] = L.steps_to_m(sol.steps[:, np.searchsorted(sol.gidx, tf.rec_global[ex])], res_m)
        sp = p["line_spacing_m"]
        crosses = channel & (np.floor(dist / sp) > np.floor(d_down / sp)) & (dist > 0)
        cells = np.flatnonzero(crosses)
        out["river"] = {"gidx": _gidx(tile, shape, cells), "area": a[cells]}
    if "waterfall" in need:
        k = max(1, int(round(p["waterfall_reach_m"] / res_m)))
        hw = read_window(ramped, *tile.window(k + 1))
        rec = H.d8_receivers(hw, res_m)
        idx = np.arange(hw.size)
        r = np.where(rec >= 0, rec, idx)
        t_idx = ((np.arange(th)[:, None] + k + 1) * hw.shape[1] + np.arange(tw)[None, :] + k + 1).ravel()
        j = t_idx
        for _ in range(k):
            j = r[j]
        zf = hw.ravel()
        drop = np.nan_to_num(zf[t_idx] - zf[j], nan=0.0)
        steep = ((a >= p["waterfall_min_area_km2"]) & (drop >= p["waterfall_min_drop_m"])).reshape(th, tw)
        step_drop = np.nan_to_num(zf[t_idx] - zf[r[t_idx]], nan=0.0)
        lab, n = label8(steep)
        fr = _fragments(tile, shape, lab, n)
        best = L.first_extreme(step_drop, lab.ravel(), np.arange(1, n + 1), largest=True)
        fr.update(best=_gidx(tile, shape, best), value=step_drop[best])
        out["waterfall"] = fr
    if "sinkhole" in need:
        dem = read_window(src, tile.r0, tile.r1, tile.c0, tile.c1)
        filled = read_window(ramped, tile.r0, tile.r1, tile.c0, tile.c1)
        depth = np.nan_to_num(filled - dem, nan=0.0)
        lab, n = label8(depth > 0.01)
        fr = _fragments(tile, shape, lab, n)
        ids = np.arange(1, n + 1)
        low = L.first_extreme(dem.ravel(), lab.ravel(), ids, largest=False)
        fr.update(depth=np.asarray(ndimage.maximum(depth, lab, ids) if n else [], np.float64).reshape(-1),
                  count=np.bincount(lab.ravel(), minlength=n + 1)[1:], low=_gidx(tile, shape, low),
                  low_z=dem.ravel()[low])
        out["sinkhole"] = fr
    return out


def _hut_tile(tile, src, shape, res_m, rkey, tau, thr, peaks, peak_z, cols, p):
    """Hut candidates of a tile with a draw >= ``tau``: global flat index and draw; and the candidate count."""
    dem = read_window(src, tile.r0, tile.r1, tile.c0, tile.c1)
    slope, origin = slope_window(src, tile.r0, tile.r1, tile.c0, tile.c1, res_m)
    rows, cols_ = L.hut_candidates(dem, np.nan_to_num(slope, nan=90.0), origin, res_m, thr, peaks, peak_z, cols,
                                   p["hut_max_slope_deg"], p["hut_near_col_m"], p["hut_near_peak_m"],
                                   p["hut_below_peak_m"])
    u = L.keyed_uniform(rkey, rows, cols_)
    keep = u >= tau
    return {"gidx": rows[keep] * shape[1] + cols_[keep], "u": u[keep], "n": rows.size}


def _line_tile(task, src, shape, res_m, rkey, p):
    """Lift lines from the tops of one tile: ``(top position in the visit order, (ur, uc, lr, lc) or None)``."""
    tile, pos, tr, tc = task
    if pos.size == 0:
        return []
    reach = max(L.aerialway_reach_px(res_m, p["aerialway_max_length_m"]), max(1, int(round(150.0 / res_m))))
    r0, r1, c0, c1 = tile.window(reach)
    dem, origin = read_clipped(src, max(r0, 0), min(r1, shape[0]), max(c0, 0), min(c1, shape[1]))
    slope, _ = slope_window(src, r0, r1, c0, c1, res_m)
    slope = np.nan_to_num(slope, nan=90.0)
    return [(int(k), L.aerialway_line(dem, slope, origin, shape, res_m, rkey, int(r), int(c),
                                      p["aerialway_min_gain_m"], p["aerialway_min_length_m"],
                                      p["aerialway_max_length_m"], p["aerialway_max_slope_deg"]))
            for k, r, c in zip(pos, tr, tc)]


# --------------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------------
def rule_reach_px(res_m: float, p: dict, names: Iterable[str]) -> dict[str, tuple[int, str]]:
    """Halo (cells) each requested rule reads around a tile: ``{rule: (cells, why)}``."""
    reach = {}
    names = set(names)
    if names & _HYDRO:
        reach["flat ramp"] = (2, "a flat cell's status needs its neighbours' neighbours")
    if "waterfall" in names:
        k = max(1, int(round(p["waterfall_reach_m"] / res_m)))
        reach["waterfall"] = (k + 1, f"waterfall_reach_m={p['waterfall_reach_m']:g} / res_m={res_m:g} -> {k} "
                                     "D8 steps, + 1 for their receivers")
    if "aerialway_station" in names:
        k = L.aerialway_reach_px(res_m, p["aerialway_max_length_m"])
        reach["aerialway_station"] = (k + 1, f"aerialway_max_length_m={p['aerialway_max_length_m']:g} / "
                                             f"res_m={res_m:g}, + 1 for the slope")
    return reach


def derive_cells_tiled(dem, res_m: float, tile_px: int, seed: int = 0, classes: Iterable[str] | None = None,
                       scheduler=None, n_workers: int | None = None, workdir=None,
                       **params) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``labels.derive_cells`` tile by tile: the same ``{class: (rows, cols)}``, in the same order.

    ``dem``: ``(ny, nx)`` metres (NaN = nodata, row 0 = north) as a numpy array, a (lazy) DataArray, a zarr
    array or an ``.npy`` path; it is read tile by tile and never loaded whole. ``tile_px``: tile side in
    cells (>= every rule's reach, :func:`rule_reach_px`). ``scheduler``: see :class:`TileRunner` (default: a
    LocalCluster of ``n_workers`` processes; ``"sync"``: this process). ``workdir``: where the scratch rasters
    of the flow routing go (two float64 rasters; default a temporary directory, removed at the end; it must
    be visible to every worker). ``params`` override ``labels.RULE_DEFAULTS``.
    """
    p = L.rule_params(**params)
    if not (np.isfinite(res_m) and res_m > 0):
        raise ValueError(f"res_m must be a positive number of metres per pixel, got {res_m!r}")
    tile_px = check_tile_px(tile_px)
    names = list(L.CLASSES) if classes is None else [L.get_class(c).name for c in classes]
    src = as_source(dem)
    if min(src.shape) < 3:
        raise ValueError(f"dem must be a 2-D array of at least 3x3 cells, got shape {src.shape}")
    check_reach(tile_px, rule_reach_px(res_m, p, names))
    grid = TileGrid(src.shape, tile_px)
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="topo2vec-tiles-")) if own_dir else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        with TileRunner(scheduler, n_workers) as runner:
            return _derive(src, float(res_m), grid, runner, work, int(seed), names, p)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)


def _derive(src, res_m, grid, runner, work, seed, names, p) -> dict:
    shape = grid.shape
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    qs = [p["hut_min_elev_quantile"], p["aerialway_top_quantile"]]
    if set(names) & {"aerialway_station", "alpine_hut"}:
        (q_hut, q_top), n_valid = tiled_nanquantile(src, grid, runner, qs)
    else:
        q_hut = q_top = float("nan")
        n_valid = _count_valid(src, grid, runner)
    if n_valid == 0:
        raise ValueError("dem has no finite cells (all nodata)")
    valid_km2 = float(n_valid) * res_m * res_m / 1e6
    peaks: Any = None
    saddles: Any = None
    peak_z: Any = None
    saddle_z: Any = None
    hydro_parts: Any = None
    if set(names) & _PROM:
        prom, det = tiled_prominence(src, grid, runner, min_prominence_m=p["peak_prominence_m"], details=True)
        keep = det["interior"]
        pr, pc = _unravel(prom.peak[keep], shape)
        sel = L.thin_points(pr, pc, det["z"][keep], p["peak_merge_m"] / res_m)
        peaks = (pr[sel], pc[sel])
        peak_z = det["z"][keep][sel]
        col_flat, first = np.unique(prom.col[keep & (prom.col >= 0)], return_index=True)
        saddles = _unravel(col_flat, shape)
        saddle_z = det["col_z"][keep & (prom.col >= 0)][first]
    if set(names) & _HYDRO:
        th = tiled_hydrology(src, res_m, grid, runner, work)
        hydro_parts = runner.map(_hydro_task, grid.tiles, src=src, th=th, p=p, need=set(names) & _HYDRO)
    for name in names:
        if name == "peak":
            out[name] = peaks
        elif name == "saddle":
            out[name] = saddles
        elif name == "river":
            parts = [h["river"] for h in hydro_parts]
            out[name] = _thin_sorted(_cat(parts, "gidx", np.int64), _cat(parts, "area", np.float64), shape,
                                     0.5 * p["line_spacing_m"] / res_m)
        elif name == "waterfall":
            out[name] = _waterfalls([h["waterfall"] for h in hydro_parts], shape)
        elif name == "sinkhole":
            out[name] = _sinkholes([h["sinkhole"] for h in hydro_parts], shape, res_m, p)
        elif name == "cliff":
            out[name] = _cliffs(src, grid, runner, res_m, p)
        elif name == "aerialway_station":
            tops = (np.concatenate([peaks[0], saddles[0]]), np.concatenate([peaks[1], saddles[1]]))
            tops_z = np.concatenate([peak_z, saddle_z])
            out[name] = _aerialway(src, grid, runner, res_m, seed, tops, tops_z, q_top, valid_km2, p)
        elif name == "alpine_hut":
            out[name] = _huts(src, grid, runner, res_m, seed, peaks, peak_z, saddles, q_hut, valid_km2, p)
    return {n: (np.asarray(out[n][0], np.int64), np.asarray(out[n][1], np.int64)) for n in names}


def _count_task(tile, src):
    return int(np.isfinite(read_window(src, tile.r0, tile.r1, tile.c0, tile.c1)).sum())


def _count_valid(src, grid, runner) -> int:
    return int(sum(runner.map(_count_task, grid.tiles, src=src)))


def _hydro_task(tile, src, th: TiledHydrology, p, need):
    return _hydro_tile(tile, src, th.filled, th.grid.shape, th.res_m, th.flow, p, need)


def _waterfalls(parts, shape):
    offset, comp = _components(parts, shape)
    if comp.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    best, value, first = _cat(parts, "best", np.int64), _cat(parts, "value", np.float64), _cat(parts, "first", np.int64)
    o = np.lexsort((best, -value, comp))              # per component: largest drop, then lowest flat index
    cs = comp[o]
    head = np.r_[True, cs[1:] != cs[:-1]]
    k = comp.max() + 1
    lip = np.zeros(k, np.int64)
    lip[cs[head]] = best[o][head]
    start = np.full(k, np.iinfo(np.int64).max)
    np.minimum.at(start, comp, first)
    return _unravel(lip[np.argsort(start)], shape)


def _sinkholes(parts, shape, res_m, p):
    offset, comp = _components(parts, shape)
    if comp.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    k = comp.max() + 1
    depth = np.full(k, -np.inf)
    np.maximum.at(depth, comp, _cat(parts, "depth", np.float64))
    count = np.bincount(comp, weights=_cat(parts, "count", np.float64), minlength=k)
    low, low_z, first = _cat(parts, "low", np.int64), _cat(parts, "low_z", np.float64), _cat(parts, "first", np.int64)
    o = np.lexsort((low, low_z, comp))
    cs = comp[o]
    head = np.r_[True, cs[1:] != cs[:-1]]
    lowest = np.zeros(k, np.int64)
    lowest[cs[head]] = low[o][head]
    start = np.full(k, np.iinfo(np.int64).max)
    np.minimum.at(start, comp, first)
    area_m2 = count.astype(np.int64) * res_m * res_m
    ok = (depth >= p["sinkhole_min_depth_m"]) & (area_m2 >= p["sinkhole_min_area_m2"]) & \
         (area_m2 <= p["sinkhole_max_area_m2"])
    ids = np.flatnonzero(ok)
    return _unravel(lowest[ids[np.argsort(start[ids])]], shape)


def _cliff_task(tile, src, res_m, min_slope_deg, long_ids=None):
    return _cliff_tile(tile, src, src.shape, res_m, min_slope_deg, long_ids)


def _cliff_cells_task(task, src, res_m, min_slope_deg):
    tile, long_ids = task
    return _cliff_tile(tile, src, src.shape, res_m, min_slope_deg, long_ids)


def _cliffs(src, grid, runner, res_m, p):
    shape = grid.shape
    parts = runner.map(_cliff_task, grid.tiles, src=src, res_m=res_m, min_slope_deg=p["cliff_min_slope_deg"])
    offset, comp = _components(parts, shape)
    if comp.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    box = np.concatenate([pt["box"] for pt in parts])
    k = comp.max() + 1
    r0 = np.full(k, np.iinfo(np.int64).max)
    c0 = r0.copy()
    r1 = np.full(k, -1, np.int64)
    c1 = r1.copy()
    np.minimum.at(r0, comp, box[:, 0])
    np.maximum.at(r1, comp, box[:, 1])
    np.minimum.at(c0, comp, box[:, 2])
    np.maximum.at(c1, comp, box[:, 3])
    ext = np.hypot(r1 - r0 - 1, c1 - c0 - 1) + 1
    long_comp = ext * res_m >= p["cliff_min_length_m"]
    tasks = [(t, np.flatnonzero(long_comp[comp[offset[t.index]:offset[t.index + 1]]])) for t in grid.tiles]
    cells = runner.map(_cliff_cells_task, tasks, src=src, res_m=res_m, min_slope_deg=p["cliff_min_slope_deg"])
    return _thin_sorted(_cat(cells, "gidx", np.int64), _cat(cells, "slope", np.float64), shape,
                        p["line_spacing_m"] / res_m)


def _huts(src, grid, runner, res_m, seed, peaks, peak_z, cols, q_hut, valid_km2, p):
    n_huts = int(round(p["hut_per_100km2"] * valid_km2 / 100.0))
    if n_huts == 0 or (peaks[0].size == 0 and cols[0].size == 0):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    key = L.rule_key(L.class_rng(seed, "alpine_hut"))
    n_valid = valid_km2 * 1e6 / (res_m * res_m)
    tau = max(0.0, 1.0 - 16.0 * n_huts / max(n_valid, 1.0))
    while True:
        parts = runner.map(_hut_task, grid.tiles, src=src, res_m=res_m, rkey=key, tau=tau, thr=q_hut, peaks=peaks,
                           peak_z=peak_z, cols=cols, p=p)
        g, u = _cat(parts, "gidx", np.int64), _cat(parts, "u", np.float64)
        o = np.argsort(g, kind="stable")
        r, c = _unravel(g[o], grid.shape)
        sel = L.thin_points(r, c, u[o], p["hut_spacing_m"] / res_m)
        if sel.size >= n_huts or tau == 0.0:
            sel = sel[:n_huts]
            return r[sel], c[sel]
        tau = max(0.0, 1.0 - 4.0 * (1.0 - tau)) if tau > 0.75 else 0.0


def _hut_task(tile, src, res_m, rkey, tau, thr, peaks, peak_z, cols, p):
    return _hut_tile(tile, src, src.shape, res_m, rkey, tau, thr, peaks, peak_z, cols, p)


def _aerialway(src, grid, runner, res_m, seed, tops, tops_z, q_top, valid_km2, p):
    n_lines = int(round(p["aerialway_lines_per_100km2"] * valid_km2 / 100.0))
    tr, tc = tops
    if n_lines == 0 or tr.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    key = L.rule_key(L.class_rng(seed, "aerialway_station"))
    high = tops_z >= q_top
    tr, tc = tr[high], tc[high]
    order = np.argsort(L.keyed_uniform(key, tr, tc), kind="stable")
    tr, tc = tr[order], tc[order]
    lines: list = []
    batch = 2 * n_lines + 16
    while True:
        lo, hi = len(lines), min(tr.size, len(lines) + batch)
        pos = np.arange(lo, hi)
        split = grid.split(tr[lo:hi] * grid.shape[1] + tc[lo:hi], pos)
        tasks = [(t, split[t.index][1], *_unravel(split[t.index][0], grid.shape)) for t in grid.tiles
                 if split[t.index][0].size]
        found = dict(x for part in runner.map(_line_task, tasks, src=src, res_m=res_m, rkey=key, p=p) for x in part)
        lines += [found[k] for k in range(lo, hi)]
        stations = L.pick_lines(lines, 2 * n_lines)
        if stations[0].size >= 2 * n_lines or hi == tr.size:
            return stations
        batch *= 2


def _line_task(task, src, res_m, rkey, p):
    return _line_tile(task, src, src.shape, res_m, rkey, p)


def derive_labels_tiled(terrain, tile_px: int, seed: int = 0, classes: Iterable[str] | None = None,
                        scheduler=None, n_workers: int | None = None, workdir=None, **params):
    """``labels.derive_labels`` tile by tile: the same label table from a (lazy) terrain DataArray.

    The terrain's values are read tile by tile (open a zarr store with ``open_terrain(path, chunks={})`` to
    keep it out of memory). Arguments as :func:`derive_cells_tiled`.
    """
    L.check_terrain(terrain)
    res_m = float(terrain.attrs.get("res_m", abs(float(terrain.x[1] - terrain.x[0]))))
    cells = derive_cells_tiled(terrain, res_m, tile_px, seed=seed, classes=classes, scheduler=scheduler,
                               n_workers=n_workers, workdir=workdir, **params)
    return L.cells_to_table(terrain, cells)
