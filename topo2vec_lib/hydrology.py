"""Flow routing on a DEM grid: depression filling, D8 receivers, flow accumulation.

Arrays are 2-D ``(ny, nx)`` elevations in metres, row 0 = north; NaN cells are nodata (sea or voids).
The grid's edge cells and the cells next to NaN are *outlets*: water leaves the grid there.
Cells are addressed by their flat (C-order) index ``i * nx + j``.

``fill_depressions`` is an exact priority-flood (Barnes et al. 2014) done on the graph of drainage basins
rather than cell by cell, so only the basins go through a Python heap and everything else is vectorised
numpy; it then ramps every flat up by whole float64 ulps (``np.nextafter`` steps, Barnes' "+epsilon" done
exactly) so that every non-outlet cell of the result has a strictly lower neighbour and drains to an outlet.
"""
from __future__ import annotations

import heapq

import numpy as np
from scipy import ndimage

# (dy, dx) of the 8 neighbours; the first four are the "forward" half used to list each pair once.
_OFFSETS = [(0, 1), (1, -1), (1, 0), (1, 1), (0, -1), (-1, 1), (-1, 0), (-1, -1)]


def _shift(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """``b[i, j] = a[i + dy, j + dx]``, ``fill`` where that falls outside the grid."""
    ny, nx = a.shape
    out = np.empty(a.shape, dtype=a.dtype)
    out[max(0, -dy):ny - max(0, dy), max(0, -dx):nx - max(0, dx)] = \
        a[max(0, dy):ny + min(0, dy), max(0, dx):nx + min(0, dx)]
    if dy > 0:
        out[ny - dy:, :] = fill
    elif dy < 0:
        out[:-dy, :] = fill
    if dx > 0:
        out[:, nx - dx:] = fill
    elif dx < 0:
        out[:, :-dx] = fill
    return out


def _padded_views(a: np.ndarray, fill):
    """The 8 neighbour views ``(dy, dx, b)`` with ``b[i, j] = a[i + dy, j + dx]`` (``fill`` outside), no copies."""
    p = np.pad(a, 1, constant_values=fill)
    ny, nx = a.shape
    return [(dy, dx, p[1 + dy:1 + dy + ny, 1 + dx:1 + dx + nx]) for dy, dx in _OFFSETS]


def _unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique values of an int array (sort-based; faster than np.unique's hashing here)."""
    a = np.sort(a)
    return a[np.r_[True, a[1:] != a[:-1]]] if a.size else a


def _check_dem(dem) -> np.ndarray:
    z = np.asarray(dem, dtype=np.float64)
    if z.ndim != 2 or min(z.shape) < 1:
        raise ValueError(f"dem must be a 2-D (ny, nx) array, got shape {z.shape}")
    return z


def outlet_mask(valid: np.ndarray) -> np.ndarray:
    """``(ny, nx)`` bool: valid cells on the grid edge or next to a nodata cell (where water leaves)."""
    edge = np.zeros(valid.shape, dtype=bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    near_nodata = ndimage.binary_dilation(~valid, structure=np.ones((3, 3), bool))
    return valid & (edge | near_nodata)


def d8_receivers(dem: np.ndarray, res_m: float) -> np.ndarray:
    """Flat index ``(ny * nx,)`` int64 of each cell's steepest-descent neighbour; -1 where there is none.

    The drop is divided by the distance (``res_m`` or ``res_m * sqrt(2)`` for diagonals). Outlets (edge
    cells, cells next to NaN), NaN cells and pits (no strictly lower neighbour) get -1.
    """
    z = _check_dem(dem)
    if not np.isfinite(res_m) or res_m <= 0:
        raise ValueError(f"res_m must be a positive number of metres per pixel, got {res_m!r}")
    ny, nx = z.shape
    valid = np.isfinite(z)
    index = np.arange(ny * nx, dtype=np.int64).reshape(ny, nx)
    best = np.zeros(z.shape)
    rec = np.full(z.shape, -1, dtype=np.int64)
    for dy, dx, nb in _padded_views(z, np.nan):
        # drop per pixel of run; the common factor 1 / res_m is left out so that one-ulp drops on flats
        # near 0 m (subnormal numbers) cannot underflow to 0
        per_px = np.sqrt(0.5) if dy and dx else 1.0
        with np.errstate(invalid="ignore"):
            slope = (z - nb) * per_px
            better = slope > best  # NaN compares False
        np.copyto(best, slope, where=better)
        np.copyto(rec, index + (dy * nx + dx), where=better)
    rec[outlet_mask(valid) | ~valid] = -1
    return rec.ravel()


def flow_accumulation(receivers: np.ndarray, shape, weights: np.ndarray | None = None) -> np.ndarray:
    """Number of cells (or sum of ``weights``) draining through each cell, itself included; ``shape`` float64.

    ``receivers`` is the flat int64 array of :func:`d8_receivers` (-1 = none). Done in topological order
    (Kahn): each sweep passes the finished cells' totals to their receivers, all vectorised.
    """
    rec = np.asarray(receivers, dtype=np.int64).ravel()
    n = int(np.prod(shape))
    if rec.size != n:
        raise ValueError(f"receivers has {rec.size} cells but shape {tuple(shape)} has {n}")
    if rec.size and (rec.max() >= n or rec.min() < -1):
        raise ValueError("receivers must be flat indices in [0, n) or -1")
    acc = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).ravel().copy()
    has = rec >= 0
    donors = np.bincount(rec[has], minlength=n)
    frontier = np.flatnonzero(donors == 0)
    done = 0
    while frontier.size:
        done += frontier.size
        frontier = frontier[has[frontier]]
        to = rec[frontier]
        np.add.at(acc, to, acc[frontier])
        np.subtract.at(donors, to, 1)
        frontier = _unique(to[donors[to] == 0])
    if done != n:
        raise ValueError("receivers contain a cycle; they must point strictly downhill")
    return acc.reshape(shape)


def path_sums(succ: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sum of non-negative int ``weights (k, n)`` over each node's path ``succ`` (-1 = end), own and last node
    included; ``(k, n)`` int64. Each row's totals must stay below 2**31 (rows are packed into one int64).

    Pointer jumping (O(n log path length)): ``tot[c]`` holds the sum from ``c`` up to (not including) its
    pointer, which doubles its reach each round. Exact for integers, so the order of the sums does not matter.
    """
    ptr = np.asarray(succ, np.int64).copy()
    w = np.asarray(weights, np.int64).reshape(-1, ptr.size)
    k = w.shape[0]
    bits = 62 // k
    tot = np.zeros(ptr.size, np.int64)
    for i in range(k):
        tot += w[i] << (bits * i)
    live = np.flatnonzero(ptr >= 0)
    while live.size:
        nxt = ptr[live]
        tot[live] += tot[nxt]
        ptr[live] = ptr[nxt]
        live = live[ptr[live] >= 0]
    mask = (1 << bits) - 1
    return np.stack([(tot >> (bits * i)) & mask for i in range(k)])


def downstream_steps(receivers: np.ndarray, shape) -> np.ndarray:
    """Orthogonal and diagonal D8 step counts ``(2, ny * nx)`` int64 from each cell to the end of its path.

    ``receivers``: flat indices as :func:`d8_receivers` (-1 = none) on a raster of ``shape``.
    """
    rec = np.asarray(receivers, np.int64).ravel()
    nx = int(shape[1])
    idx = np.arange(rec.size)
    has = rec >= 0
    r = np.where(has, rec, idx)
    diag = has & (r // nx != idx // nx) & (r % nx != idx % nx)
    return path_sums(rec, np.stack([has & ~diag, diag]).astype(np.int64))


def _terminal_roots(rec: np.ndarray) -> np.ndarray:
    """Flat index of the terminal cell (outlet or pit, ``rec < 0``) each cell's descent path ends in,
    by pointer jumping (O(N log path length))."""
    root = np.where(rec >= 0, rec, np.arange(rec.size))
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def _basin_levels(z: np.ndarray, valid: np.ndarray, outlet: np.ndarray) -> np.ndarray:
    """Exact priority-flood fill levels ``(ny, nx)`` (no epsilon) via the graph of drainage basins."""
    ny, nx = z.shape
    z = np.where(valid, z, np.nan)
    # raise one-cell pits to their lowest neighbour first (never above their final level): far fewer basins
    inner = valid & ~outlet
    for _ in range(3):
        low = np.full(z.shape, np.inf)
        for _, _, nb in _padded_views(z, np.nan):
            np.fmin(low, nb, out=low)
        pit1 = inner & (z < low)
        if not pit1.any():
            break
        z = np.where(pit1, low, z)
    rec = d8_receivers(z, 1.0)
    rec[~valid.ravel()] = -1
    # every cell follows its descent path to a terminal cell (outlet or pit): pointer jumping
    root = _terminal_roots(rec)
    # pits (terminals that are not outlets) grouped into flats: adjacent pits have equal elevation
    pit = (rec.reshape(ny, nx) < 0) & valid & ~outlet
    pit_label, n_pits = ndimage.label(pit, structure=np.ones((3, 3), bool))
    if n_pits == 0:
        return z.copy()
    basin = pit_label.ravel()[root]          # 0 = drains to an outlet ("ocean"), k = pit flat k
    basin[~valid.ravel()] = -1
    basin2 = basin.reshape(ny, nx)
    # spill elevation between each pair of touching basins: min over touching cell pairs of the higher cell
    lo_list, hi_list, spill_list = [], [], []
    for dy, dx in _OFFSETS[:4]:
        b2 = _shift(basin2, dy, dx, -1)
        z2 = _shift(z, dy, dx, np.nan)
        m = (basin2 >= 0) & (b2 >= 0) & (basin2 != b2)
        a, b = basin2[m], b2[m]
        lo_list.append(np.minimum(a, b))
        hi_list.append(np.maximum(a, b))
        spill_list.append(np.maximum(z[m], z2[m]))
    lo, hi, spill = (np.concatenate(v) for v in (lo_list, hi_list, spill_list))
    key = lo.astype(np.int64) * (n_pits + 1) + hi
    order = np.lexsort((spill, key))
    key, spill = key[order], spill[order]
    first = np.r_[True, key[1:] != key[:-1]]
    key, spill = key[first], spill[first]     # the minimum spill of each basin pair
    lo, hi = key // (n_pits + 1), key % (n_pits + 1)
    # CSR adjacency, both directions
    src = np.concatenate([lo, hi])
    dst = np.concatenate([hi, lo])
    w = np.concatenate([spill, spill])
    order = np.argsort(src, kind="stable")
    src, dst, w = src[order], dst[order], w[order]
    start = np.searchsorted(src, np.arange(n_pits + 2))
    dst_l, w_l, start_l = dst.tolist(), w.tolist(), start.tolist()
    # priority flood over basins from the ocean (Dijkstra on the minimax path)
    level = [np.inf] * (n_pits + 1)
    done = [False] * (n_pits + 1)
    heap = [(-np.inf, 0)]
    level[0] = -np.inf
    while heap:
        lvl, b = heapq.heappop(heap)
        if done[b]:
            continue
        done[b] = True
        for e in range(start_l[b], start_l[b + 1]):
            c = dst_l[e]
            if not done[c]:
                new = max(lvl, w_l[e])
                if new < level[c]:
                    level[c] = new
                    heapq.heappush(heap, (new, c))
    level_arr = np.asarray(level)
    level_arr[~np.isfinite(level_arr)] = -np.inf  # unreachable basins (cannot happen on a grid with edges)
    cell_level = np.where(basin >= 0, level_arr[np.maximum(basin, 0)], -np.inf).reshape(ny, nx)
    return np.where(valid, np.maximum(z, cell_level), np.nan)


def _has_lower_neighbour(z: np.ndarray) -> np.ndarray:
    lower = np.zeros(z.shape, dtype=bool)
    for _, _, nb in _padded_views(z, np.nan):
        with np.errstate(invalid="ignore"):
            lower |= nb < z
    return lower


def _to_ordinal(x: np.ndarray) -> np.ndarray:
    """float64 -> int64 keeping the order, consecutive floats 1 apart (``+1`` = ``np.nextafter(x, inf)``)."""
    i = np.ascontiguousarray(x, dtype=np.float64).view(np.int64)
    return np.where(i < 0, np.int64(-2**63) - i, i)  # -0.0 and +0.0 both map to 0


def _from_ordinal(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_to_ordinal` (the map is its own inverse on the int64 bits)."""
    k = np.asarray(k, dtype=np.int64)
    return np.ascontiguousarray(np.where(k < 0, np.int64(-2**63) - k, k)).view(np.float64)


def _flat_distance(h: np.ndarray, valid: np.ndarray, outlet: np.ndarray) -> np.ndarray:
    """``(ny, nx)`` int64 step distance (8-neighbour BFS) of each flat cell to its flat's drained edge, 0 elsewhere.

    A flat cell is a valid non-outlet cell with no strictly lower neighbour; it is reached through cells of
    the same elevation from a drained cell (or outlet) of that elevation. Unreachable flat cells (pits, which
    a filled DEM has none of) keep 0.
    """
    ny, nx = h.shape
    flat = valid & ~outlet & ~_has_lower_neighbour(h)
    dist = np.zeros(ny * nx, dtype=np.int64)
    if not flat.any():
        return dist.reshape(ny, nx)
    # seeds: drained cells (or outlets) touching a flat cell of the same elevation
    seed = np.zeros(h.shape, dtype=bool)
    for (_, _, fnb), (_, _, hnb) in zip(_padded_views(flat, False), _padded_views(h, np.nan)):
        seed |= fnb & (hnb == h)
    seed &= valid & ~flat
    hf, flatf = h.ravel(), flat.ravel()
    resolved = ~flatf
    frontier = np.flatnonzero(seed)
    step = 0
    while frontier.size:
        step += 1
        fi, fj = np.divmod(frontier, nx)
        found = []
        for dy, dx in _OFFSETS:
            ni, nj = fi + dy, fj + dx
            ok = (ni >= 0) & (ni < ny) & (nj >= 0) & (nj < nx)
            nb, src = ni[ok] * nx + nj[ok], frontier[ok]
            sel = flatf[nb] & ~resolved[nb] & (hf[nb] == hf[src])
            found.append(nb[sel])
        frontier = _unique(np.concatenate(found))
        resolved[frontier] = True
        dist[frontier] = step
    return dist.reshape(ny, nx)


def _drains(h: np.ndarray, valid: np.ndarray, outlet: np.ndarray) -> bool:
    """True when every valid non-outlet cell of ``h`` has a strictly lower neighbour."""
    return not (valid & ~outlet & ~_has_lower_neighbour(h)).any()


def _exact_ramp(f: np.ndarray, valid: np.ndarray, outlet: np.ndarray) -> np.ndarray:
    """Priority-flood + epsilon (Barnes et al. 2014, Alg. 3) in float64 ulps, seeded from the cells that need none.

    Cells of the filled DEM ``f`` whose steepest-descent path reaches an outlet keep their elevation; every
    other valid cell gets ``max(f, nextafter(parent))`` in priority order, so each has a strictly lower
    neighbour (its parent). Exact for any finite input; a Python heap over those cells (slow, fallback only).
    """
    ny, nx = f.shape
    n = ny * nx
    rec = d8_receivers(f, 1.0)
    root = _terminal_roots(rec)
    settled = valid.ravel() & outlet.ravel()[root]
    k = np.where(valid, _to_ordinal(np.where(valid, f, 0.0)), 0).ravel()
    big = np.iinfo(np.int64).max
    low: np.ndarray = np.full(f.shape, big)
    for _, _, nb in _padded_views(np.where(settled.reshape(ny, nx), k.reshape(ny, nx), big), big):
        np.minimum(low, nb, out=low)
    low = low.ravel()
    start = valid.ravel() & ~settled & (low < big)
    k_l = k.tolist()
    out = k.copy()
    done = (settled | ~valid.ravel()).tolist()
    tent = [big] * n
    heap = []
    for c, v in zip(np.flatnonzero(start).tolist(), np.maximum(k[start], low[start] + 1).tolist()):
        tent[c] = v
        heap.append((v, c))
    heapq.heapify(heap)
    while heap:
        v, c = heapq.heappop(heap)
        if done[c]:
            continue
        done[c] = True
        out[c] = v
        i, j = divmod(c, nx)
        for dy, dx in _OFFSETS:
            a, b = i + dy, j + dx
            if 0 <= a < ny and 0 <= b < nx:
                m = a * nx + b
                if not done[m]:
                    w = max(k_l[m], v + 1)
                    if w < tent[m]:
                        tent[m] = w
                        heapq.heappush(heap, (w, m))
    return np.where(valid, _from_ordinal(out).reshape(ny, nx), np.nan)


def fill_levels(dem: np.ndarray) -> np.ndarray:
    """Every closed depression of ``dem`` ``(ny, nx)`` raised to its spill level (exact priority-flood), float64,
    NaN stays NaN; flats stay flat (no ramp: :func:`fill_depressions` adds one so that flats drain)."""
    z = _check_dem(dem)
    valid = np.isfinite(z)
    return _basin_levels(z, valid, outlet_mask(valid))


def fill_depressions(dem: np.ndarray, epsilon_m: float | None = None, max_rounds: int | None = None) -> np.ndarray:
    """Depression-filled copy of ``dem`` ``(ny, nx)`` as float64 metres; NaN stays NaN.

    Every closed depression is raised to its spill level (exact priority-flood, Barnes et al. 2014), then
    each flat gets a ramp rising ``step`` per cell step away from its drained edge, so that every valid
    cell that is not an outlet has a strictly lower neighbour (guaranteed for any finite input).

    ``epsilon_m``: ramp step in metres, rounded down to whole float64 ulps (at least one); ``None`` (default)
    = one ulp, i.e. ``np.nextafter``: the smallest possible lift (~1e-12 m at 9000 m). Where a ramp would
    reach a neighbour that is higher by less than the ramp, a 1-ulp ramp is tried, and if that still does
    not drain everything, an exact cell-by-cell priority-flood+epsilon (slow, needs float64 ties within a
    few ulps) finishes the job. ``max_rounds`` is accepted for backward compatibility and unused: the fill
    needs no rounds. Keep the result in float64: casting to float32 would erase the ramps.
    """
    z = _check_dem(dem)
    if epsilon_m is not None and not (np.isfinite(epsilon_m) and epsilon_m > 0):
        raise ValueError(f"epsilon_m must be None or a small positive number of metres, got {epsilon_m!r}")
    if max_rounds is not None and max_rounds < 1:
        raise ValueError(f"max_rounds must be None or a positive int, got {max_rounds!r}")
    valid = np.isfinite(z)
    outlet = outlet_mask(valid)
    f = _basin_levels(z, valid, outlet)
    if _drains(f, valid, outlet):
        return f
    dist = _flat_distance(f, valid, outlet)
    k = _to_ordinal(np.where(valid, f, 0.0))
    steps: list = [1] if epsilon_m is None else [None, 1]
    for step in steps:
        if step is None:  # whole ulps of each cell's elevation in epsilon_m, at least one
            with np.errstate(divide="ignore", over="ignore"):
                step = np.maximum(np.floor(epsilon_m / np.spacing(np.abs(np.where(valid, f, 1.0)))), 1.0)
            step = np.minimum(step, 2.0**40).astype(np.int64)
        h = np.where(valid, _from_ordinal(k + step * dist), np.nan)
        if _drains(h, valid, outlet):
            return h
    return _exact_ramp(f, valid, outlet)
