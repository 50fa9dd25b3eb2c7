"""Depression filling, D8 flow and flow accumulation tile by tile, equal to :mod:`topo2vec_lib.hydrology`.

The result is bit-identical to ``hydrology.fill_depressions`` (its default one-ulp flat ramp included),
``hydrology.d8_receivers`` and ``hydrology.flow_accumulation`` on the whole raster, with memory bounded by
a tile plus small graphs over tile-border cells. Rasters are ``(ny, nx)`` metres, row 0 = north, NaN =
nodata; outlets (where water leaves) are valid cells on the raster edge or next to nodata, as there.

Stages (after Barnes 2016, "Parallel priority-flood depression filling for trillion cell DEMs", and
Barnes 2017, "Parallel non-divergent flow accumulation for trillion cell DEMs"):

1. **Spill graph per tile** (:func:`_fill_tree_tile`). The filled level of a cell is the minimax
   ``W(c) = min over paths c -> outlet of max elevation on the path``. In a tile whose perimeter cells are
   outlets, cells join D8-descent basins; a Kruskal sweep over basin adjacencies (edge = higher cell of the
   pair) keeps one edge per merge of two groups that hold *terminals* (border cells: perimeter cells with a
   valid neighbour outside the tile; the "ocean": real outlets). That tree has the exact minimax distance
   between any two terminals of the tile, in at most (terminals - 1) edges.
2. **Global graph** (:func:`_solve_spill`): the tile trees plus the pairs of adjacent border cells of
   neighbouring tiles (edge = higher cell); a priority flood from the ocean gives ``W`` of every border cell.
3. **Fill per tile** (:func:`_fill_tile`): border cells raised to ``W`` become the tile's outlets and
   ``hydrology._basin_levels`` (the one-piece fill) floods the tile: every path out of a tile passes a
   border cell, so this is ``W`` exactly (``W(c) = min_b max(minimax_tile(c, b), W(b))``).
4. **Flat ramp** (:func:`_flat_tile`): the one-piece ramp adds ``d`` float64 ulps to each flat cell,
   ``d`` = its 8-neighbour step distance through same-level flat cells to the flat's drained edge. Flats cut
   by tile borders get their distance by relaxation: each tile runs a multi-source BFS from its seeds and
   from its neighbours' border-cell distances, until no border distance changes (a shortest path crossing
   ``k`` borders is exact after ``k + 1`` rounds). The ramped DEM is written per tile.
5. **Flow** (:func:`_flow_tile`, :func:`_solve_flow`): D8 receivers of the ramped DEM need a one-cell halo.
   Each tile accumulates locally; a compact DAG over perimeter cells (exit cell -> receiver in the next
   tile, perimeter cell -> the exit its local path ends at) carries the flow between tiles; each tile then
   re-accumulates with that inflow added at its perimeter. Counts are integers, so sums are exact in any
   order. The same DAG carries along-channel step counts to the outlet (rivers need them).

The one-piece fill falls back to a cell-by-cell priority flood when a one-ulp ramp does not drain (only on
float64 DEMs with elevations a few ulps apart; never on float32 data, whose neighbours differ by >= 2**29
float64 ulps); the tiled fill raises :class:`TiledRampError` there instead of returning a different ramp.
"""
from __future__ import annotations

import heapq
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from topo2vec_lib import hydrology as H
from topo2vec_lib.tiling import (
    FORWARD4,
    NpyArray,
    TileGrid,
    border_cells,
    neighbour_views,
    perimeter_mask,
    read_window,
    window_index,
)

OCEAN = -1          # node id of "outside": every real outlet
_NONE = -2
_BIG = np.iinfo(np.int64).max // 4   # "no distance yet" in the flat BFS


class TiledRampError(ValueError):
    """The one-ulp flat ramp does not drain somewhere (float64 elevations a few ulps apart)."""


def _outlets(valid_w: np.ndarray) -> np.ndarray:
    """Valid cells next to nodata in a window padded with NaN beyond the raster (exact but for its outer ring)."""
    return valid_w & ndimage.binary_dilation(~valid_w, structure=np.ones((3, 3), bool))


def _dedupe_min(a: np.ndarray, b: np.ndarray, w: np.ndarray, n: int):
    """One edge per unordered pair ``(a, b)`` with its minimum ``w``, sorted by ``w`` ascending."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = lo * np.int64(n) + hi
    order = np.lexsort((w, key))
    key, w = key[order], w[order]
    first = np.r_[True, key[1:] != key[:-1]] if key.size else np.zeros(0, bool)
    key, w = key[first], w[first]
    order = np.argsort(w, kind="stable")
    return key[order] // n, key[order] % n, w[order]


# --------------------------------------------------------------------------------------------------
# stage 1: per-tile spill trees
# --------------------------------------------------------------------------------------------------
def _fill_tree_tile(tile, src, shape) -> dict:
    """Edges ``(u, v, w)`` of the tile's terminal tree and of its cross-border pairs (node ids: global flat
    index, or OCEAN); ``w`` in metres."""
    zw = read_window(src, *tile.window(2))
    gw = window_index(shape, *tile.window(2))
    valid_w = np.isfinite(zw)
    outlet_w = _outlets(valid_w)
    z, valid, outlet_g, g = zw[2:-2, 2:-2], valid_w[2:-2, 2:-2], outlet_w[2:-2, 2:-2], gw[2:-2, 2:-2]
    border = border_cells(valid_w[1:-1, 1:-1]) & ~outlet_g
    outlet_t = valid & (perimeter_mask(z.shape) | outlet_g)
    zz = np.where(valid, z, np.nan)
    # raise one-cell pits to their lowest neighbour (never above their level; keeps terminal minimax distances)
    inner = valid & ~outlet_t
    for _ in range(3):
        low = np.full(zz.shape, np.inf)
        for _, _, nb in H._padded_views(zz, np.nan):
            np.fmin(low, nb, out=low)
        pit1 = inner & (zz < low)
        if not pit1.any():
            break
        zz = np.where(pit1, low, zz)
    rec = H.d8_receivers(zz, 1.0)
    vflat = valid.ravel()
    rec[~vflat | outlet_t.ravel()] = -1
    root = H._terminal_roots(rec)
    key = np.where(outlet_g.ravel()[root], -1, root)          # every outlet basin is the ocean
    bid = np.full(z.size, -1, np.int64)
    uniq, inv = np.unique(key[vflat], return_inverse=True)
    bid[vflat] = inv
    nb_ = uniq.size
    term = np.where(uniq < 0, OCEAN, np.where(border.ravel()[np.maximum(uniq, 0)], g.ravel()[np.maximum(uniq, 0)],
                                               _NONE))
    bid2 = bid.reshape(z.shape)
    a_l, b_l, w_l = [], [], []
    for dy, dx in FORWARD4:
        b2 = H._shift(bid2, dy, dx, -1)
        z2 = H._shift(zz, dy, dx, np.nan)
        m = (bid2 >= 0) & (b2 >= 0) & (bid2 != b2)
        a_l.append(bid2[m])
        b_l.append(b2[m])
        w_l.append(np.maximum(zz[m], z2[m]))
    ea, eb, ew = _dedupe_min(np.concatenate(a_l), np.concatenate(b_l), np.concatenate(w_l), max(nb_, 1))
    # Kruskal with terminal representatives: emit an edge whenever two groups holding terminals merge
    parent = list(range(nb_))
    rep = term.tolist()
    out_u, out_v, out_w = [], [], []

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, w in zip(ea.tolist(), eb.tolist(), ew.tolist()):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if rep[ra] != _NONE and rep[rb] != _NONE:
            out_u.append(rep[ra])
            out_v.append(rep[rb])
            out_w.append(w)
        parent[rb] = ra
        if rep[ra] == _NONE:
            rep[ra] = rep[rb]
    # pairs across the tile border (forward half, so each pair is listed by exactly one tile)
    inside = np.zeros(zw.shape, bool)
    inside[2:-2, 2:-2] = True
    node_w = np.where(outlet_w, OCEAN, gw)
    cu, cv, cw = [], [], []
    for dy, dx in FORWARD4:
        nbz = zw[2 + dy:zw.shape[0] - 2 + dy, 2 + dx:zw.shape[1] - 2 + dx]
        nbin = inside[2 + dy:zw.shape[0] - 2 + dy, 2 + dx:zw.shape[1] - 2 + dx]
        nbn = node_w[2 + dy:zw.shape[0] - 2 + dy, 2 + dx:zw.shape[1] - 2 + dx]
        m = valid & np.isfinite(nbz) & ~nbin
        cu.append(np.where(outlet_g, OCEAN, g)[m])
        cv.append(nbn[m])
        cw.append(np.maximum(z[m], nbz[m]))
    u = np.concatenate([np.asarray(out_u, np.int64)] + cu)
    v = np.concatenate([np.asarray(out_v, np.int64)] + cv)
    w = np.concatenate([np.asarray(out_w, np.float64)] + cw)
    keep = u != v
    return {"u": u[keep], "v": v[keep], "w": w[keep]}


def _solve_spill(parts: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Priority flood from the ocean over the union of tile graphs: ``(node gidx sorted, level m)``."""
    u = np.concatenate([p["u"] for p in parts]) if parts else np.zeros(0, np.int64)
    v = np.concatenate([p["v"] for p in parts]) if parts else np.zeros(0, np.int64)
    w = np.concatenate([p["w"] for p in parts]) if parts else np.zeros(0)
    nodes = np.unique(np.concatenate([u, v, [OCEAN]]))
    n = nodes.size
    ui, vi = np.searchsorted(nodes, u), np.searchsorted(nodes, v)
    src = np.concatenate([ui, vi])
    dst = np.concatenate([vi, ui])
    ww = np.concatenate([w, w])
    order = np.argsort(src, kind="stable")
    src, dst, ww = src[order], dst[order], ww[order]
    start = np.searchsorted(src, np.arange(n + 1)).tolist()
    dst_l, w_l = dst.tolist(), ww.tolist()
    level = [np.inf] * n
    done = [False] * n
    o = int(np.searchsorted(nodes, OCEAN))
    level[o] = -np.inf
    heap = [(-np.inf, o)]
    while heap:
        lvl, a = heapq.heappop(heap)
        if done[a]:
            continue
        done[a] = True
        for e in range(start[a], start[a + 1]):
            c = dst_l[e]
            if not done[c]:
                new = lvl if lvl > w_l[e] else w_l[e]
                if new < level[c]:
                    level[c] = new
                    heapq.heappush(heap, (new, c))
    keep = nodes != OCEAN
    return nodes[keep], np.asarray(level)[keep]


# --------------------------------------------------------------------------------------------------
# stage 3: fill each tile with its border raised to the global levels
# --------------------------------------------------------------------------------------------------
def _fill_tile(tile, src, shape, border_gidx, border_level, out: NpyArray) -> None:
    zw = read_window(src, *tile.window(1))
    valid_w = np.isfinite(zw)
    z, valid = zw[1:-1, 1:-1].copy(), valid_w[1:-1, 1:-1]
    outlet_g = _outlets(valid_w)[1:-1, 1:-1]
    if border_gidx.size:
        r, c = np.divmod(border_gidx, shape[1])
        r, c = r - tile.r0, c - tile.c0
        z[r, c] = np.maximum(z[r, c], border_level)
    outlet_t = valid & (perimeter_mask(z.shape) | outlet_g)
    out.write(tile.r0, tile.c0, H._basin_levels(z, valid, outlet_t))


# --------------------------------------------------------------------------------------------------
# stage 4: the flat ramp
# --------------------------------------------------------------------------------------------------
def _flat_tile(tile, filled: NpyArray, ramped: NpyArray, shape, halo_gidx, halo_dist) -> dict:
    """One relaxation round of the flat BFS on a tile; writes the tile's ramped DEM.

    ``halo_gidx, halo_dist``: current distances of flat cells of the neighbouring tiles. Returns the
    distances of the tile's flat perimeter cells (``gidx``, ``dist``), the neighbour flat cells it used as
    sources (``uses``) and whether it has flat cells at all.
    """
    fw = read_window(filled, *tile.window(2))
    gw = window_index(shape, *tile.window(2))
    valid_w = np.isfinite(fw)
    outlet1 = _outlets(valid_w)[1:-1, 1:-1]
    f1, g1, valid1 = fw[1:-1, 1:-1], gw[1:-1, 1:-1], valid_w[1:-1, 1:-1]
    lower1 = np.zeros(f1.shape, bool)
    for _, _, nb in neighbour_views(fw):
        with np.errstate(invalid="ignore"):
            lower1 |= nb < f1
    flat1 = valid1 & ~outlet1 & ~lower1
    in_t = np.zeros(f1.shape, bool)
    in_t[1:-1, 1:-1] = True
    tflat = flat1 & in_t
    f, valid = f1[1:-1, 1:-1], valid1[1:-1, 1:-1]
    k = H._to_ordinal(np.where(valid, f, 0.0))
    empty = np.zeros(0, np.int64)
    if not tflat.any():
        ramped.write(tile.r0, tile.c0, np.where(valid, H._from_ordinal(k), np.nan))
        return {"gidx": empty, "dist": empty, "uses": empty, "has_flat": False}
    adj = np.zeros(f1.shape, bool)            # next to a tile flat cell of the same level
    for (_, _, fnb), (_, _, hnb) in zip(H._padded_views(tflat, False), H._padded_views(f1, np.nan)):
        adj |= fnb & (hnb == f1)
    seed = adj & valid1 & ~flat1
    halo_src = adj & flat1 & ~in_t
    uses = g1[halo_src]
    src_cells, src_d = [np.flatnonzero(seed)], [np.zeros(int(seed.sum()), np.int64)]
    if uses.size:
        known = _lookup(halo_gidx, halo_dist, uses)[1]
        ok = known < _BIG
        src_cells.append(np.flatnonzero(halo_src)[ok])
        src_d.append(known[ok])
    dist = _flat_bfs(tflat, f1, np.concatenate(src_cells), np.concatenate(src_d))
    d_t = dist.reshape(f1.shape)[1:-1, 1:-1]
    tf = tflat[1:-1, 1:-1]
    ramp = np.where(tf & (d_t < _BIG), d_t, 0)
    ramped.write(tile.r0, tile.c0, np.where(valid, H._from_ordinal(k + ramp), np.nan))
    per = tf & perimeter_mask(tf.shape)
    return {"gidx": g1[1:-1, 1:-1][per], "dist": d_t[per], "uses": np.sort(uses), "has_flat": True}


def _flat_bfs(tflat: np.ndarray, f: np.ndarray, sources: np.ndarray, d0: np.ndarray) -> np.ndarray:
    """Step distance ``(n,)`` int64 of each ``tflat`` cell from ``sources`` (flat indices, starting at ``d0``)
    through 8-adjacent ``tflat`` cells of equal level ``f``; ``_BIG`` where unreached.

    ``min over sources s of d0(s) + steps(s -> cell)``: a breadth-first search with staggered starts,
    done as Dijkstra (unit weights, so float sums are exact) from a virtual node joined to each source.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    ny, nx = f.shape
    n = f.size
    dist = np.full(n, _BIG, np.int64)
    if sources.size == 0 or not tflat.any():
        return dist
    node = np.zeros(n, bool)
    node[sources] = True
    node |= tflat.ravel()
    node2 = node.reshape(ny, nx)
    a_l, b_l = [], []
    idx = np.arange(n, dtype=np.int64).reshape(ny, nx)
    for dy, dx in H._OFFSETS:             # edge a -> b: b a flat cell next to a node of the same level
        b2 = H._shift(tflat, dy, dx, False)
        fb = H._shift(f, dy, dx, np.nan)
        m = node2 & b2 & (fb == f)
        a_l.append(idx[m])
        b_l.append(idx[m] + dy * nx + dx)
    a, b = np.concatenate(a_l), np.concatenate(b_l)
    w = np.ones(a.size + sources.size)
    w[a.size:] = d0 + 1.0
    rows = np.concatenate([a, np.full(sources.size, n)])
    cols = np.concatenate([b, sources])
    g = csr_matrix((w, (rows, cols)), shape=(n + 1, n + 1))
    d = dijkstra(g, directed=True, indices=n, min_only=True)[:n]
    reached = np.isfinite(d) & tflat.ravel()
    dist[reached] = d[reached].astype(np.int64) - 1
    return dist


def _ramp_flats(grid: TileGrid, filled: NpyArray, ramped: NpyArray, runner, max_rounds: int = 10_000) -> bool:
    """Run :func:`_flat_tile` rounds until no border distance changes; True if there is any flat."""
    shape = grid.shape
    est_g, est_d = np.zeros(0, np.int64), np.zeros(0, np.int64)
    used: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    todo = list(range(len(grid)))
    any_flat = False
    for _ in range(max_rounds):
        if not todo:
            return any_flat
        tasks = []
        for t in todo:
            u = used[t][0] if t in used else np.zeros(0, np.int64)
            tasks.append((grid.tiles[t], *_lookup(est_g, est_d, u)))
        results = runner.map(_flat_task, tasks, filled=filled, ramped=ramped, shape=shape)
        for t, res in zip(todo, results):
            any_flat |= res["has_flat"]
            used[t] = _lookup(est_g, est_d, res["uses"])
        # merge the new border distances (they only decrease)
        new_g = np.concatenate([est_g] + [r["gidx"] for r in results])
        new_d = np.concatenate([est_d] + [r["dist"] for r in results])
        order = np.lexsort((new_d, new_g))
        new_g, new_d = new_g[order], new_d[order]
        first = np.r_[True, new_g[1:] != new_g[:-1]] if new_g.size else np.zeros(0, bool)
        est_g, est_d = new_g[first], new_d[first]
        todo = [t for t, (u, d_used) in used.items() if u.size and not np.array_equal(_lookup(est_g, est_d, u)[1],
                                                                                          d_used)]
    raise RuntimeError(f"flat distances did not settle in {max_rounds} rounds")


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray):
    """``(query, values at query)`` with ``_BIG`` where a query key is missing (``keys`` sorted)."""
    out = np.full(query.size, _BIG, np.int64)
    if keys.size and query.size:
        pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
        hit = keys[pos] == query
        out[hit] = values[pos[hit]]
    return query, out


def _flat_task(task, filled, ramped, shape):
    tile, hg, hd = task
    return _flat_tile(tile, filled, ramped, shape, hg, hd)


# --------------------------------------------------------------------------------------------------
# stage 5: D8 flow, accumulation and along-channel steps across tiles
# --------------------------------------------------------------------------------------------------
class LocalFlow(NamedTuple):
    """D8 flow of one tile: receivers as tile-local flat indices (-1: none or leaves the tile)."""

    local_rec: np.ndarray    # (n,) int64, -1 at outlets, nodata and exits
    exit_to: np.ndarray      # (n,) int64 global flat index of the receiver where it is in another tile, else -1
    rec_global: np.ndarray   # (n,) int64 global receiver (-1 none), as hydrology.d8_receivers on the raster
    diag: np.ndarray         # (n,) bool: the step to the receiver is diagonal
    valid: np.ndarray        # (th, tw) bool
    violations: int          # valid non-outlet cells without a lower neighbour (ramp did not drain)


def local_flow(tile, ramped, shape, res_m: float) -> LocalFlow:
    """D8 receivers of a tile from the ramped DEM read with a 1-cell halo (equal to the one-piece ones)."""
    hw = read_window(ramped, *tile.window(1))
    th, tw = tile.shape
    valid_w = np.isfinite(hw)
    rec_w = H.d8_receivers(hw, res_m).reshape(hw.shape)[1:-1, 1:-1].ravel()
    valid = valid_w[1:-1, 1:-1]
    outlet = _outlets(valid_w)[1:-1, 1:-1]
    violations = int((valid & ~outlet & (rec_w.reshape(valid.shape) < 0)).sum())
    has = rec_w >= 0
    wr, wc = np.divmod(rec_w, tw + 2)
    gr, gc = tile.r0 - 1 + wr, tile.c0 - 1 + wc
    inside = has & (gr >= tile.r0) & (gr < tile.r1) & (gc >= tile.c0) & (gc < tile.c1)
    local_rec = np.where(inside, (gr - tile.r0) * tw + (gc - tile.c0), -1)
    rec_global = np.where(has, gr * shape[1] + gc, -1)
    exit_to = np.where(has & ~inside, rec_global, -1)
    idx = np.arange(th * tw)
    diag = has & ((wr - 1 - idx // tw) != 0) & ((wc - 1 - idx % tw) != 0)
    return LocalFlow(local_rec, exit_to, rec_global, diag, valid, violations)


def _local_steps(flow: LocalFlow) -> tuple[np.ndarray, np.ndarray]:
    """Orthogonal and diagonal step counts ``(2, n)`` from each cell to the end of its path in the tile, the
    terminal root of each cell ``(n,)``."""
    has = flow.local_rec >= 0
    w = np.stack([has & ~flow.diag, has & flow.diag]).astype(np.int64)
    return H.path_sums(flow.local_rec, w), H._terminal_roots(flow.local_rec)


def _flow_tile(tile, ramped, shape, res_m) -> dict:
    """Per-tile summary for the flow DAG: perimeter cells with their local exits, local totals and steps."""
    flow = local_flow(tile, ramped, shape, res_m)
    th, tw = tile.shape
    acc = H.flow_accumulation(flow.local_rec, (th * tw,))
    steps, root = _local_steps(flow)
    per = (perimeter_mask((th, tw)) & flow.valid).ravel()
    p = np.flatnonzero(per)
    gidx = (tile.r0 + p // tw) * shape[1] + tile.c0 + p % tw
    t = root[p]
    t_exit = flow.exit_to[t] >= 0
    t_g = (tile.r0 + t // tw) * shape[1] + tile.c0 + t % tw
    return {"gidx": gidx, "x": np.where(t_exit, t_g, -1), "to": flow.exit_to[p], "acc": acc[p],
            "steps": steps[:, p], "exit_diag": flow.diag[p], "violations": flow.violations}


class FlowSolution(NamedTuple):
    """The compact DAG over perimeter cells: sorted ``gidx``, cross-tile ``inflow`` (cells) and the
    orthogonal/diagonal step counts ``steps (2, n)`` from each to its outlet."""

    gidx: np.ndarray
    inflow: np.ndarray
    steps: np.ndarray


def _solve_flow(parts: list[dict]) -> FlowSolution:
    g = np.concatenate([p["gidx"] for p in parts])
    x = np.concatenate([p["x"] for p in parts])
    to = np.concatenate([p["to"] for p in parts])
    acc = np.concatenate([p["acc"] for p in parts])
    steps = np.concatenate([p["steps"] for p in parts], axis=1)
    exit_diag = np.concatenate([p["exit_diag"] for p in parts])
    order = np.argsort(g)
    g, x, to, acc, steps, exit_diag = g[order], x[order], to[order], acc[order], steps[:, order], exit_diag[order]
    n = g.size
    if n == 0:
        return FlowSolution(g, np.zeros(0), np.zeros((2, 0), np.int64))
    is_exit = to >= 0
    ti = np.searchsorted(g, to)
    xi = np.searchsorted(g, x)
    rec = np.full(n, -1, np.int64)
    rec[is_exit] = ti[is_exit]
    via = ~is_exit & (x >= 0)
    rec[via] = xi[via]
    vol = H.flow_accumulation(rec, (n,), np.where(is_exit, acc, 0.0))
    inflow = np.bincount(ti[is_exit], weights=vol[is_exit], minlength=n)
    # steps: to the local end, then (if it is an exit) one step across and on from the receiver
    has_x = x >= 0
    xe = xi[has_x]
    step_x = np.zeros((2, n), np.int64)
    step_x[0, has_x] = ~exit_diag[xe]
    step_x[1, has_x] = exit_diag[xe]
    succ = np.full(n, -1, np.int64)
    succ[has_x] = ti[xe]
    total = H.path_sums(succ, steps + step_x)
    return FlowSolution(g, inflow, total)


# --------------------------------------------------------------------------------------------------
# the whole pipeline
# --------------------------------------------------------------------------------------------------
class TiledHydrology:
    """The tiled flow routing of a raster: ramped (filled) DEM on disk and the solved flow DAG.

    ``filled``: :class:`NpyArray` of the depression-filled, ramped DEM (float64 m, as
    ``hydrology.fill_depressions``). :meth:`tile_flow` gives one tile's receivers, drainage (cells) and
    along-channel step counts, all equal to the one-piece values.
    """

    def __init__(self, grid: TileGrid, res_m: float, filled: NpyArray, flow: FlowSolution):
        self.grid, self.res_m, self.filled, self.flow = grid, float(res_m), filled, flow

    def tile_flow(self, tile) -> TileFlow:
        """Receivers, drainage and steps to the outlet of one tile (see :func:`tile_flow`)."""
        return tile_flow(tile, self.filled, self.grid.shape, self.res_m, self.flow)


class TileFlow(NamedTuple):
    """Flow results of one tile, equal to the one-piece rasters cropped to the tile."""

    rec_global: np.ndarray   # (n,) int64 global D8 receiver, -1 none
    local_rec: np.ndarray    # (n,) int64 tile-local receiver, -1 none or in another tile
    cells: np.ndarray        # (th, tw) float64 drainage in cells (the cell itself included)
    steps: np.ndarray        # (2, n) int64 orthogonal / diagonal steps to the outlet
    valid: np.ndarray        # (th, tw) bool


def tile_flow(tile, ramped, shape, res_m, sol: FlowSolution) -> TileFlow:
    """Receivers, drainage (cells) and steps to the outlet of one tile, given the solved flow DAG."""
    flow = local_flow(tile, ramped, shape, res_m)
    th, tw = tile.shape
    weights = np.ones(th * tw)
    steps, root = _local_steps(flow)
    if sol.gidx.size:
        per = np.flatnonzero(perimeter_mask((th, tw)).ravel())
        pg = (tile.r0 + per // tw) * shape[1] + tile.c0 + per % tw
        pos = np.minimum(np.searchsorted(sol.gidx, pg), sol.gidx.size - 1)
        hit = sol.gidx[pos] == pg
        weights[per[hit]] += sol.inflow[pos[hit]]
        # cells whose tile path ends at an exit continue from the exit's receiver
        ex = np.flatnonzero(flow.exit_to >= 0)
        if ex.size:
            rpos = np.searchsorted(sol.gidx, flow.exit_to[ex])
            tail = np.zeros((2, th * tw), np.int64)
            tail[:, ex] = sol.steps[:, rpos]
            tail[0, ex] += ~flow.diag[ex]
            tail[1, ex] += flow.diag[ex]
            steps = steps + tail[:, root]
    cells = H.flow_accumulation(flow.local_rec, (th, tw), weights)
    return TileFlow(flow.rec_global, flow.local_rec, cells, steps, flow.valid)


def tiled_hydrology(src, res_m: float, grid: TileGrid, runner, workdir) -> TiledHydrology:
    """Fill, ramp and solve the flow DAG of ``src`` tile by tile; scratch rasters go to ``workdir``."""
    from pathlib import Path

    if not (np.isfinite(res_m) and res_m > 0):
        raise ValueError(f"res_m must be a positive number of metres per pixel, got {res_m!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shape = grid.shape
    trees = runner.map(_tree_task, grid.tiles, src=src, shape=shape)
    nodes, level = _solve_spill(trees)
    per_tile = grid.split(nodes, level)
    levels = NpyArray(workdir / "levels.npy", shape, np.float64)
    runner.map(_fill_task, [(t, *per_tile[t.index]) for t in grid.tiles], src=src, shape=shape, out=levels)
    ramped = NpyArray(workdir / "filled.npy", shape, np.float64)
    if not _ramp_flats(grid, levels, ramped, runner):
        ramped = levels           # no flat anywhere: the one-piece fill returns the levels as they are
    parts = runner.map(_flow_task, grid.tiles, ramped=ramped, shape=shape, res_m=float(res_m))
    bad = sum(p["violations"] for p in parts)
    if bad:
        raise TiledRampError(f"{bad} cells do not drain after the one-ulp flat ramp (float64 elevations a few "
                             "ulps apart); hydrology.fill_depressions would finish them cell by cell, which the "
                             "tiled fill does not: round the DEM to float32 or use the one-piece fill")
    return TiledHydrology(grid, res_m, ramped, _solve_flow(parts))


def _tree_task(tile, src, shape):
    return _fill_tree_tile(tile, src, shape)


def _fill_task(task, src, shape, out):
    tile, g, lv = task
    _fill_tile(tile, src, shape, g, lv, out)


def _flow_task(tile, ramped, shape, res_m):
    return _flow_tile(tile, ramped, shape, res_m)
