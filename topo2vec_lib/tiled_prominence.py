"""Topographic prominence tile by tile, equal to :func:`topo2vec_lib.labels.topographic_prominence`.

As in Kirmse & de Ferranti (2017, github akirmse/mountains), each tile builds a divide tree, the trees are
merged along the tile borders, and the merged tree is swept once more. Cells are ordered by
``(elevation, global flat index)`` exactly as the one-piece sweep ranks them, so every comparison is strict
and the result (every local maximum, its prominence and its key col) is a function of that order alone:
a peak's key col is the cell at which its superlevel component first joins one holding a higher peak.

Per tile (:func:`_prominence_tile`, a 1-cell halo: a cell is a peak when no 8-neighbour, inside the tile
or not, ranks higher), the one-piece algorithm runs on the tile alone: steepest-ascent basins, the highest
pass between touching basins, a union-find sweep from high to low cols. Border cells (tile cells with a
valid neighbour in another tile) join their group at their own rank. When a peak loses a merge (the other
group's highest peak ranks higher) while its group holds no border cell, no path through other tiles can
have joined it to a higher peak earlier, so its prominence and col are final. The rest is kept compact:
the sweep emits an edge ``(u, v, col)`` whenever two groups that both hold *terminals* (unresolved peaks,
border cells) merge, which is a tree on the terminals with the exact merge col of every pair.

Globally (:func:`_global_sweep`) the tile trees and the pairs of adjacent border cells of neighbouring tiles
(col = the lower cell of the pair) are swept from high to low cols with the same rule; peaks that never
lose are the highest of their connected area (prominence = elevation - the area's lowest cell, which each
tile reports per open group). Python loops run over basin edges of one tile (as the one-piece sweep does
over the whole window) and over terminals; everything per cell is vectorised.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from topo2vec_lib import hydrology as H
from topo2vec_lib.labels import Prominence
from topo2vec_lib.tiling import FORWARD4, TileGrid, border_cells, neighbour_views, read_window, window_index

_NONE = -2
_PAIRS = [(0, 1), (1, 0), (1, 1), (1, -1)]


def _prominence_tile(tile, src, shape, min_prominence_m: float | None = None) -> dict:
    """Resolved peaks, unresolved peaks, the tile's terminal tree and cross-border pairs (global indices)."""
    zw = read_window(src, *tile.window(1))
    gw = window_index(shape, *tile.window(1))
    valid_w = np.isfinite(zw)
    zv = np.where(valid_w, zw, -np.inf)
    order = np.lexsort((gw.ravel(), zv.ravel()))
    rank_flat = np.empty(zw.size, np.int64)
    rank_flat[order] = np.arange(zw.size)
    rank_flat[~valid_w.ravel()] = -1
    rank_w = rank_flat.reshape(zw.shape)
    rank, z, g, valid = rank_w[1:-1, 1:-1], zv[1:-1, 1:-1], gw[1:-1, 1:-1], valid_w[1:-1, 1:-1]
    th, tw = rank.shape
    n = th * tw
    higher_nb = np.zeros((th, tw), bool)
    near_nodata = np.zeros((th, tw), bool)
    for _, _, nb in neighbour_views(rank_w):
        higher_nb |= nb > rank
        near_nodata |= nb < 0
    is_peak = (valid & ~higher_nb).ravel()
    interior = (valid & ~near_nodata).ravel()
    # steepest ascent inside the tile only; basins are the tile's own local maxima
    idx2 = np.arange(n, dtype=np.int64).reshape(th, tw)
    best = rank.copy()
    up: Any = idx2.copy()
    for dr, dc in [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]:
        nr = H._shift(rank, dr, dc, -1)
        better = nr > best
        best = np.where(better, nr, best)
        up = np.where(better, H._shift(idx2, dr, dc, 0), up)
    up = up.ravel()
    vflat = valid.ravel()
    up[~vflat] = np.flatnonzero(~vflat)
    while True:
        nxt = up[up]
        if np.array_equal(nxt, up):
            break
        up = nxt
    roots, inv = np.unique(up[vflat], return_inverse=True)
    nb_ = roots.size
    bid = np.full(n, -1, np.int64)
    bid[vflat] = inv
    bid2 = bid.reshape(th, tw)
    zf, rf, gf = z.ravel(), rank.ravel(), g.ravel()
    minz = np.asarray(ndimage.minimum(zf[vflat], inv, np.arange(nb_)), np.float64).reshape(-1) if nb_ else np.zeros(0)
    # highest pass between touching basins (col = the lower cell of the pair)
    ea: Any = []
    eb: Any = []
    ew: Any = []
    ec: Any = []
    for dr, dc in _PAIRS:
        b2, r2, i2 = H._shift(bid2, dr, dc, -1), H._shift(rank, dr, dc, -1), H._shift(idx2, dr, dc, 0)
        m = (bid2 >= 0) & (b2 >= 0) & (bid2 != b2)
        lower_is_a = rank[m] < r2[m]
        ea.append(np.minimum(bid2[m], b2[m]))
        eb.append(np.maximum(bid2[m], b2[m]))
        ew.append(np.where(lower_is_a, rank[m], r2[m]))
        ec.append(np.where(lower_is_a, idx2[m], i2[m]))
    ea, eb, ew, ec = (np.concatenate(v) for v in (ea, eb, ew, ec))
    key = ea * np.int64(max(nb_, 1)) + eb
    o = np.lexsort((-ew, key))
    first = np.r_[True, key[o][1:] != key[o][:-1]] if o.size else np.zeros(0, bool)
    o = o[first]
    ea, eb, ew, ec = ea[o], eb[o], ew[o], ec[o]
    # border cells join their basin's group at their own rank (as separate nodes)
    border = border_cells(valid_w).ravel()
    bc = np.flatnonzero(border)
    ea = np.concatenate([ea, bid[bc]])
    eb = np.concatenate([eb, nb_ + np.arange(bc.size)])
    ew = np.concatenate([ew, rf[bc]])
    ec = np.concatenate([ec, bc])
    o = np.argsort(-ew, kind="stable")
    ea, eb, ec = ea[o].tolist(), eb[o].tolist(), ec[o].tolist()

    m_nodes = nb_ + bc.size
    parent = list(range(m_nodes))
    root_peak = is_peak[roots]
    top = np.where(root_peak, roots, -1).tolist() + [-1] * bc.size
    top_rank = np.where(root_peak, rf[roots], -1).tolist() + [-1] * bc.size
    rep = np.where(root_peak, gf[roots], _NONE).tolist() + gf[bc].tolist()
    is_open = [False] * nb_ + [True] * bc.size
    gmin = minz.tolist() + [np.inf] * bc.size
    zl, gl = zf.tolist(), gf.tolist()
    res_p: Any = []
    res_prom: Any = []
    res_col: Any = []
    res_cz: Any = []
    out_u, out_v, out_c = [], [], []

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, c in zip(ea, eb, ec):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if top[ra] >= 0 and top[rb] >= 0:
            lo = ra if top_rank[ra] < top_rank[rb] else rb
            if not is_open[lo]:
                loser = top[lo]
                res_p.append(loser)
                res_prom.append(zl[loser] - zl[c])
                res_col.append(gl[c])
                res_cz.append(zl[c])
                if rep[lo] == gl[loser]:
                    rep[lo] = _NONE
        if rep[ra] != _NONE and rep[rb] != _NONE and rep[ra] != rep[rb]:
            out_u.append(rep[ra])
            out_v.append(rep[rb])
            out_c.append(c)
        parent[rb] = ra
        if top_rank[rb] > top_rank[ra]:
            top[ra], top_rank[ra] = top[rb], top_rank[rb]
        if rep[ra] == _NONE:
            rep[ra] = rep[rb]
        is_open[ra] = is_open[ra] or is_open[rb]
        gmin[ra] = min(gmin[ra], gmin[rb])
    mins_rep, mins_z = [], []
    for i in range(m_nodes):
        if parent[i] != i:
            continue
        if is_open[i]:
            if rep[i] != _NONE:
                mins_rep.append(rep[i])
                mins_z.append(gmin[i])
        elif top[i] >= 0:            # a whole connected area inside the tile: its highest peak
            res_p.append(top[i])
            res_prom.append(zl[top[i]] - gmin[i])
            res_col.append(-1)
            res_cz.append(np.nan)
    res_p = np.asarray(res_p, np.int64)
    res_prom = np.asarray(res_prom, np.float64)
    res_col = np.asarray(res_col, np.int64)
    res_cz = np.asarray(res_cz, np.float64)
    resolved = np.zeros(n, bool)
    resolved[res_p] = True
    unres = np.flatnonzero(is_peak & ~resolved)
    if min_prominence_m is not None:
        keep = res_prom >= min_prominence_m
        res_p, res_prom, res_col, res_cz = res_p[keep], res_prom[keep], res_col[keep], res_cz[keep]
    # pairs across the tile border: col = the lower cell of the pair
    inside = np.zeros(zw.shape, bool)
    inside[1:-1, 1:-1] = True
    cu, cv, cc, cz = [], [], [], []
    for dy, dx in FORWARD4:
        sl = (slice(1 + dy, zw.shape[0] - 1 + dy), slice(1 + dx, zw.shape[1] - 1 + dx))
        nr, ng, nz = rank_w[sl], gw[sl], zv[sl]
        m = valid & (nr >= 0) & ~inside[sl]
        a_low = rank[m] < nr[m]
        cu.append(g[m])
        cv.append(ng[m])
        cc.append(np.where(a_low, g[m], ng[m]))
        cz.append(np.where(a_low, z[m], nz[m]))
    c_loc = np.asarray(out_c, np.int64)
    return {"peak": gf[res_p], "prominence_m": res_prom, "col": res_col, "interior": interior[res_p],
            "z": zf[res_p], "col_z": res_cz,
            "open_peak": gf[unres], "open_z": zf[unres], "open_interior": interior[unres],
            "u": np.concatenate([np.asarray(out_u, np.int64)] + cu),
            "v": np.concatenate([np.asarray(out_v, np.int64)] + cv),
            "edge_col": np.concatenate([gf[c_loc]] + cc), "edge_z": np.concatenate([zf[c_loc]] + cz),
            "mins_rep": np.asarray(mins_rep, np.int64), "mins_z": np.asarray(mins_z, np.float64)}


def _global_sweep(parts: list[dict]):
    """Prominence and col of the peaks left open by the tiles: ``(peak, prominence_m, col, col_z)``."""
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("open_peak", "open_z", "u", "v", "edge_col", "edge_z",
                                                            "mins_rep", "mins_z")}
    peaks, pz = cat["open_peak"], cat["open_z"]
    if peaks.size == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), np.zeros(0)
    nodes = np.unique(np.concatenate([peaks, cat["u"], cat["v"], cat["mins_rep"]]))
    n = nodes.size
    pi = np.searchsorted(nodes, peaks)
    prank = np.empty(peaks.size, np.int64)
    prank[np.lexsort((peaks, pz))] = np.arange(peaks.size)
    top: Any = np.full(n, -1, np.int64)
    top_rank: Any = np.full(n, -1, np.int64)
    top[pi] = np.arange(peaks.size)
    top_rank[pi] = prank
    gmin: Any = np.full(n, np.inf)
    np.minimum.at(gmin, np.searchsorted(nodes, cat["mins_rep"]), cat["mins_z"])
    o = np.lexsort((cat["edge_col"], cat["edge_z"]))[::-1]
    ea = np.searchsorted(nodes, cat["u"][o]).tolist()
    eb = np.searchsorted(nodes, cat["v"][o]).tolist()
    ecg, ecz = cat["edge_col"][o].tolist(), cat["edge_z"][o].tolist()
    parent = list(range(n))
    top, top_rank, gmin = top.tolist(), top_rank.tolist(), gmin.tolist()
    pzl = pz.tolist()
    prom = np.full(peaks.size, np.nan)
    col = np.full(peaks.size, -1, np.int64)
    col_z = np.full(peaks.size, np.nan)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, cg, cz in zip(ea, eb, ecg, ecz):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if top[ra] >= 0 and top[rb] >= 0:
            lo = ra if top_rank[ra] < top_rank[rb] else rb
            loser = top[lo]
            prom[loser] = pzl[loser] - cz
            col[loser] = cg
            col_z[loser] = cz
        parent[rb] = ra
        if top_rank[rb] > top_rank[ra]:
            top[ra], top_rank[ra] = top[rb], top_rank[rb]
        gmin[ra] = min(gmin[ra], gmin[rb])
    for i in range(n):
        if parent[i] == i and top[i] >= 0:
            prom[top[i]] = pzl[top[i]] - gmin[i]
    return peaks, prom, col, col_z


def tiled_prominence(src, grid: TileGrid, runner, min_prominence_m: float | None = None, details: bool = False):
    """Every local maximum of ``src`` with its prominence (m) and key col, as ``labels.topographic_prominence``.

    Returns :class:`~topo2vec_lib.labels.Prominence` (global flat indices, sorted by peak). With
    ``min_prominence_m`` only peaks at least that prominent are returned (the rest is dropped tile by tile).
    With ``details`` also a dict of ``(P,)`` arrays: ``interior`` (neither on the raster edge nor next to
    nodata), ``z`` (the peak's elevation, m) and ``col_z`` (the col's, NaN without col).
    """
    parts = runner.map(_prominence_task, grid.tiles, src=src, shape=grid.shape, min_prominence_m=min_prominence_m)
    gp, gprom, gcol, gcz = _global_sweep(parts)
    cols = {k: np.concatenate([p[a] for p in parts] + [g]) for k, a, g in (
        ("peak", "peak", gp), ("prominence_m", "prominence_m", gprom), ("col", "col", gcol),
        ("col_z", "col_z", gcz),
        ("interior", "interior", np.concatenate([p["open_interior"] for p in parts])),
        ("z", "z", np.concatenate([p["open_z"] for p in parts])))}
    keep = np.ones(cols["peak"].size, bool) if min_prominence_m is None else cols["prominence_m"] >= min_prominence_m
    o = np.flatnonzero(keep)[np.argsort(cols["peak"][keep])]
    out = Prominence(cols["peak"][o], cols["prominence_m"][o], cols["col"][o])
    return (out, {k: cols[k][o] for k in ("interior", "z", "col_z")}) if details else out


def _prominence_task(tile, src, shape, min_prominence_m):
    return _prominence_tile(tile, src, shape, min_prominence_m)
