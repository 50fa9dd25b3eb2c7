"""Tiled flow routing, prominence and labels equal the one-piece results, across tile borders."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from topo2vec_lib import hydrology as H
from topo2vec_lib import labels as L
from topo2vec_lib.hydrology import downstream_steps
from topo2vec_lib.synthetic import fbm
from topo2vec_lib.tiled_hydrology import TiledRampError, tiled_hydrology
from topo2vec_lib.tiled_labels import derive_cells_tiled, derive_labels_tiled, rule_reach_px, tiled_nanquantile
from topo2vec_lib.tiled_prominence import tiled_prominence
from topo2vec_lib.tiling import TileGrid, TileRunner, as_source, read_window

RES = 30.0
SYNC = TileRunner("sync")
# small-reach rules so tiny tiles are allowed, dense enough that every class exists on a 100 x 120 terrain
SMALL = dict(aerialway_max_length_m=900, aerialway_min_length_m=300, aerialway_min_gain_m=100,
             aerialway_lines_per_100km2=60, hut_per_100km2=80, hut_near_peak_m=600, hut_near_col_m=300,
             river_min_area_km2=0.3, peak_prominence_m=10, waterfall_min_drop_m=15, waterfall_min_area_km2=0.1,
             cliff_min_slope_deg=30, sinkhole_min_depth_m=0.5)


def fractal(seed: int, shape=(60, 75), relief: float = 20.0, nodata: float = 0.0, rounded: bool = False,
            float32: bool = True) -> np.ndarray:
    """A fractal DEM (metres): float32 values by default, optional NaN holes and rounding (wide flats)."""
    rng = np.random.default_rng(seed)
    z = fbm(shape, RES, rng) * relief + 500.0
    if rounded:
        z = np.round(z)
    if nodata:
        z[rng.random(shape) < nodata] = np.nan
        z[:4, :7] = np.nan
    return z.astype(np.float32).astype(np.float64) if float32 else z


def tiled_flow(z: np.ndarray, tile_px: int, tmp_path):
    """Filled DEM, receivers, drainage (cells) and steps to the outlet, assembled from the tiles."""
    grid = TileGrid(z.shape, tile_px)
    th = tiled_hydrology(as_source(z), RES, grid, SYNC, tmp_path)
    rec = np.full(z.size, -1, np.int64)
    cells = np.zeros(z.shape)
    steps = np.zeros((2, z.size), np.int64)
    for t in grid.tiles:
        tf = th.tile_flow(t)
        gi = (np.arange(t.r0, t.r1)[:, None] * z.shape[1] + np.arange(t.c0, t.c1)[None, :]).ravel()
        rec[gi], steps[:, gi] = tf.rec_global, tf.steps
        cells[t.r0:t.r1, t.c0:t.c1] = tf.cells
    return th.filled.load(), rec, cells, steps, grid


def crosses(grid: TileGrid, a: np.ndarray, b: np.ndarray) -> int:
    """How many pairs of flat cells ``a -> b`` (both >= 0) lie in different tiles."""
    ok = (a >= 0) & (b >= 0)
    return int((grid.tile_of(a[ok]) != grid.tile_of(b[ok])).sum())


def adjacent_across(grid: TileGrid, mask: np.ndarray) -> int:
    """How many east/south pairs of ``mask`` cells lie in different tiles."""
    n = 0
    for dy, dx in ((0, 1), (1, 0)):
        a = mask[:mask.shape[0] - dy, :mask.shape[1] - dx] & mask[dy:, dx:]
        r, c = np.nonzero(a)
        n += crosses(grid, r * mask.shape[1] + c, (r + dy) * mask.shape[1] + c + dx)
    return n


# --------------------------------------------------------------------------------------------------
# the tile grid and sources
# --------------------------------------------------------------------------------------------------
def test_tile_grid_covers_the_raster_once():
    grid = TileGrid((10, 23), 4)
    assert (grid.n_ti, grid.n_tj) == (3, 6) and len(grid) == 18
    cover = np.zeros((10, 23), int)
    for t in grid.tiles:
        cover[t.r0:t.r1, t.c0:t.c1] += 1
    assert (cover == 1).all()
    assert grid.tiles[-1].shape == (2, 3)
    flat = np.array([0, 22, 4 * 23 + 4, 9 * 23 + 22])
    assert grid.tile_of(flat).tolist() == [0, 5, 7, 17]


def test_read_window_pads_beyond_the_raster_and_reads_lazily(terrain_factory):
    z = np.arange(30.0).reshape(5, 6)
    w = read_window(as_source(z), -1, 2, 4, 8)
    assert w.shape == (3, 4)
    assert np.isnan(w[0]).all() and np.isnan(w[:, 2:]).all()
    assert w[1:, :2].tolist() == [[4.0, 5.0], [10.0, 11.0]]
    lazy = terrain_factory(z).chunk({"y": 2, "x": 2})      # dask-backed DataArray: read window by window
    assert np.array_equal(read_window(as_source(lazy), 1, 4, 1, 3), z[1:4, 1:3])


# --------------------------------------------------------------------------------------------------
# hydrology: filled DEM (with its flat ramp), receivers, drainage, steps to the outlet
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,nodata,rounded", [(0, 0.0, False), (1, 0.02, False), (2, 0.0, True), (3, 0.03, True)])
def test_tiled_hydrology_equals_one_piece(seed, nodata, rounded, tmp_path):
    z = fractal(seed, nodata=nodata, rounded=rounded)
    filled = H.fill_depressions(z)
    rec = H.d8_receivers(filled, RES)
    cells = H.flow_accumulation(rec, z.shape)
    levels = H._basin_levels(z, np.isfinite(z), H.outlet_mask(np.isfinite(z)))
    for tile_px in (7, 16, 100):
        f, r, c, s, grid = tiled_flow(z, tile_px, tmp_path / str(tile_px))
        assert np.array_equal(f.view(np.int64), filled.view(np.int64))     # bit for bit, ramp included
        assert np.array_equal(r, rec)
        valid = np.isfinite(z)
        assert np.array_equal(c[valid], cells[valid])
        assert np.array_equal(s, downstream_steps(rec, z.shape))
        if tile_px < 100:
            # flats (ramped cells) and flow paths cross tile borders
            assert adjacent_across(grid, filled != levels) > 0
            big = np.flatnonzero(cells.ravel() >= 50)
            assert crosses(grid, big, rec[big]) > 0


def test_tiled_fill_refuses_a_ramp_the_one_piece_fill_finishes_cell_by_cell(tmp_path):
    # a flat at 100 m drained at its west end, and a cell 1 ulp higher whose only lower neighbour is the
    # flat's far end: the 1-ulp ramp lifts that end by 3 ulps, so the one-piece fill needs its exact fallback
    e = 100.0
    z = np.full((5, 7), 200.0)
    z[2, 0] = e                     # outlet (edge)
    z[2, 1:5] = e                   # the flat
    z[1, 4] = np.nextafter(e, np.inf)
    z[1, 3] = z[1, 5] = 200.0
    f = H.fill_depressions(z)
    rec = H.d8_receivers(f, 1.0)
    assert (rec.reshape(z.shape)[1:4, 1:6] >= 0).all()       # the one-piece result drains
    with pytest.raises(TiledRampError, match="one-ulp flat ramp"):
        tiled_hydrology(as_source(z), RES, TileGrid(z.shape, 3), SYNC, tmp_path)


# --------------------------------------------------------------------------------------------------
# prominence
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,nodata,rounded", [(4, 0.0, False), (5, 0.03, False), (6, 0.0, True)])
def test_tiled_prominence_equals_one_piece(seed, nodata, rounded):
    z = fractal(seed, shape=(48, 61), relief=10.0, nodata=nodata, rounded=rounded)
    one = L.topographic_prominence(z)
    for tile_px in (3, 8, 17, 200):
        grid = TileGrid(z.shape, tile_px)
        got, det = tiled_prominence(as_source(z), grid, SYNC, details=True)
        assert np.array_equal(got.peak, one.peak)
        assert np.array_equal(got.prominence_m, one.prominence_m)
        assert np.array_equal(got.col, one.col)
        assert np.array_equal(det["z"], z.ravel()[one.peak])
        assert np.array_equal(det["interior"], L._interior(z)[one.peak])
        if tile_px < 200:
            assert crosses(grid, one.peak, one.col) > 0          # key cols in another tile than their peak
    # only prominent peaks: the same as filtering the full answer
    thin, _ = tiled_prominence(as_source(z), TileGrid(z.shape, 8), SYNC, min_prominence_m=5.0, details=True)
    keep = one.prominence_m >= 5.0
    assert np.array_equal(thin.peak, one.peak[keep]) and np.array_equal(thin.col, one.col[keep])


# --------------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------------
def test_tiled_nanquantile_is_numpys():
    rng = np.random.default_rng(0)
    for decimals in (0, 2, 7):
        z = np.round(rng.normal(size=(37, 41)) * 100, decimals)
        z[rng.random(z.shape) < 0.1] = np.nan
        qs = [0.0, 0.13, 0.5, 0.6, 0.999, 1.0]
        got, n = tiled_nanquantile(as_source(z), TileGrid(z.shape, 15), SYNC, qs)
        assert n == int(np.isfinite(z).sum())
        assert got == [float(np.nanquantile(z, q)) for q in qs]


def test_keyed_draws_do_not_depend_on_the_batch():
    r, c = np.arange(50) // 7, np.arange(50) * 3
    u = L.keyed_uniform(12345, r, c)
    assert ((u >= 0) & (u < 1)).all() and np.unique(u).size == 50
    assert np.array_equal(L.keyed_uniform(12345, r[::-1], c[::-1]), u[::-1])
    assert not np.array_equal(L.keyed_uniform(12346, r, c), u)


@pytest.mark.parametrize("seed,nodata", [(7, 0.0), (9, 0.01), (12, 0.0)])
def test_tiled_labels_equal_one_piece(seed, nodata):
    z = fractal(seed, shape=(100, 120), relief=25.0, nodata=nodata)
    one = L.derive_cells(z, RES, seed=seed, **SMALL)
    assert all(one[name][0].size > 0 for name in L.CLASSES), {k: v[0].size for k, v in one.items()}
    for tile_px in (33, 50):
        got = derive_cells_tiled(z, RES, tile_px, seed=seed, scheduler="sync", **SMALL)
        assert list(got) == list(one)
        for name in one:
            assert np.array_equal(got[name][0], one[name][0]) and np.array_equal(got[name][1], one[name][1]), name
    # what crossed the tile borders: key cols of labelled peaks, and rivers (channels running into another tile)
    prom = L.topographic_prominence(z)
    keep = (prom.prominence_m >= SMALL["peak_prominence_m"]) & (prom.col >= 0)
    hyd = L.hydro(z, RES)
    channel = np.flatnonzero(np.nan_to_num(hyd.area_km2, nan=0.0).ravel() >= SMALL["river_min_area_km2"])
    for tile_px in (33, 50):
        grid = TileGrid(z.shape, tile_px)
        assert crosses(grid, prom.peak[keep], prom.col[keep]) > 0
        assert crosses(grid, channel, hyd.receivers[channel]) > 0


def test_tiled_label_table_equals_derive_labels(terrain_factory):
    terrain = terrain_factory(fractal(10, shape=(90, 100), relief=25.0))
    one = L.derive_labels(terrain, seed=3, **SMALL)
    got = derive_labels_tiled(terrain.chunk({"y": 32, "x": 32}), 40, seed=3, scheduler="sync", **SMALL)
    pd.testing.assert_frame_equal(got, one)
    assert set(one["class"]) == set(L.CLASSES)


def test_tiled_labels_on_a_local_cluster_with_processes():
    z = fractal(11, shape=(64, 72), relief=25.0)
    classes = ["peak", "saddle", "river"]
    one = L.derive_cells(z, RES, seed=2, classes=classes, **SMALL)
    got = derive_cells_tiled(z, RES, 36, seed=2, classes=classes, scheduler=None, n_workers=2, **SMALL)
    for name in classes:
        assert np.array_equal(got[name][0], one[name][0]) and np.array_equal(got[name][1], one[name][1]), name


# --------------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tile_px", [0, -5, 2, 2.5, True, "64"])
def test_bad_tile_size_is_named(tile_px):
    z = fractal(0, shape=(20, 20))
    with pytest.raises(ValueError, match=rf"tile_px = {tile_px!r}"):
        derive_cells_tiled(z, RES, tile_px, scheduler="sync", classes=["peak"])
    with pytest.raises(ValueError, match="tile_px"):
        TileGrid((20, 20), tile_px)


def test_tile_smaller_than_a_rule_reach_is_named():
    z = fractal(0, shape=(40, 40))
    with pytest.raises(ValueError, match=r"tile_px = 40 is smaller than the aerialway_station reach of 135 cells"):
        derive_cells_tiled(z, RES, 40, scheduler="sync", classes=["aerialway_station"])
    with pytest.raises(ValueError, match=r"waterfall reach of 5 cells .*waterfall_reach_m=120"):
        derive_cells_tiled(z, RES, 4, scheduler="sync", classes=["waterfall"], waterfall_reach_m=120)
    assert rule_reach_px(RES, L.rule_params(), ["peak", "cliff"]) == {}


def test_other_bad_inputs_are_named():
    z = fractal(0, shape=(20, 20))
    with pytest.raises(ValueError, match="res_m"):
        derive_cells_tiled(z, 0.0, 10, scheduler="sync")
    with pytest.raises(ValueError, match="unknown label rule parameter"):
        derive_cells_tiled(z, RES, 10, scheduler="sync", peak_prominance_m=3)
    with pytest.raises(ValueError, match="unknown label class"):
        derive_cells_tiled(z, RES, 10, scheduler="sync", classes=["volcano"])
    with pytest.raises(ValueError, match="no finite cells"):
        derive_cells_tiled(np.full((20, 20), np.nan), RES, 10, scheduler="sync", classes=["peak"])
    with pytest.raises(ValueError, match="2-D"):
        derive_cells_tiled(np.zeros(20), RES, 10, scheduler="sync")
    with pytest.raises(ValueError, match="scheduler"):
        TileRunner(scheduler=3)


def test_ties_go_to_the_first_cell_in_row_major_order():
    values = np.array([5.0, 7.0, 7.0, 1.0, 7.0, 0.0])
    labels = np.array([1, 1, 2, 2, 1, 0])
    assert L.first_extreme(values, labels, [1, 2], largest=True).tolist() == [1, 2]
    assert L.first_extreme(values, labels, [1, 2], largest=False).tolist() == [0, 3]


def test_path_sums_counts_every_node_once():
    from topo2vec_lib.hydrology import path_sums

    succ = np.array([1, 2, -1, 2, 3, -1])          # 0 -> 1 -> 2, 4 -> 3 -> 2, 5 alone
    w = np.array([[1, 2, 4, 8, 16, 32], [0, 1, 0, 1, 0, 1]])
    assert path_sums(succ, w).tolist() == [[7, 6, 4, 12, 28, 32], [1, 1, 0, 1, 1, 1]]
