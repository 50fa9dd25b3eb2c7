"""Depression filling, D8 receivers and flow accumulation on tiny hand-made DEMs."""
import numpy as np
import pytest

from topo2vec_lib.hydrology import d8_receivers, fill_depressions, flow_accumulation, outlet_mask


def _drains_everywhere(h):
    """Every valid non-outlet cell has a strictly lower neighbour."""
    rec = d8_receivers(h, 1.0).reshape(h.shape)
    valid = np.isfinite(h)
    interior = valid & ~outlet_mask(valid)
    return bool((rec[interior] >= 0).all())


def test_tilted_plane_drains_downhill():
    y, x = np.mgrid[0:6, 0:7]
    dem = 100.0 - 2.0 * x  # falls to the east
    rec = d8_receivers(dem, 30.0).reshape(dem.shape)
    ny, nx = dem.shape
    for i in range(1, ny - 1):
        for j in range(1, nx - 1):
            assert rec[i, j] == i * nx + j + 1  # straight east (diagonals drop the same over a longer run)
    assert (rec[0, :] == -1).all() and (rec[:, 0] == -1).all() and (rec[:, -1] == -1).all()
    assert np.array_equal(fill_depressions(dem), dem)  # nothing to fill


def test_diagonal_steepest_descent_is_distance_weighted():
    big = np.full((5, 5), 20.0)
    big[2, 2] = 10.0   # the centre cell
    big[3, 3] = 8.5    # diagonal: drop 1.5 over sqrt(2) m = 1.06 per m
    big[2, 3] = 8.9    # east: drop 1.1 over 1 m = 1.1 per m -> steepest
    big[4, :] = 0.0
    rec = d8_receivers(big, 1.0).reshape(big.shape)
    assert rec[2, 2] == 2 * 5 + 3
    big[3, 3] = 8.3    # diagonal drop 1.7 / sqrt(2) = 1.2 per m -> now steeper
    assert d8_receivers(big, 1.0)[2 * 5 + 2] == 3 * 5 + 3


def test_pit_is_filled_and_drains():
    dem = np.array([[9, 9, 9, 9, 9],
                    [9, 5, 5, 5, 9],
                    [9, 5, 1, 5, 9],
                    [9, 5, 5, 5, 9],
                    [9, 9, 9, 7, 9]], dtype=float)
    h = fill_depressions(dem)
    assert h.dtype == np.float64
    # the pit fills to the spill level 7 (the lowest point of the rim), up to the tiny epsilon ramp
    np.testing.assert_allclose(h[1:4, 1:4], 7.0, atol=1e-4)
    assert (h >= dem).all()
    assert h[4, 3] == 7.0 and h[0, 0] == 9.0  # outlets untouched
    assert _drains_everywhere(h)
    # the unfilled DEM has a pit with no receiver
    assert d8_receivers(dem, 1.0)[2 * 5 + 2] == -1


def test_fill_random_surface_leaves_no_pit_and_only_raises():
    rng = np.random.default_rng(3)
    dem = rng.normal(size=(40, 50)).cumsum(0).cumsum(1)
    h = fill_depressions(dem)
    assert (h >= dem).all()
    assert _drains_everywhere(h)
    # cells that were not in a depression keep their elevation (up to the epsilon ramp on flats)
    assert np.isclose(h, dem, atol=1e-3).mean() > 0.3


def test_nan_is_an_outlet():
    dem = np.full((7, 7), 10.0)
    dem[2:5, 2:5] = 5.0
    dem[3, 3] = np.nan  # a hole in the middle of the depression: water leaves through it
    h = fill_depressions(dem)
    assert np.isnan(h[3, 3])
    np.testing.assert_array_equal(h[2:5, 2:5][~np.isnan(h[2:5, 2:5])], 5.0)
    rec = d8_receivers(h, 1.0)
    assert rec[3 * 7 + 3] == -1 and rec[2 * 7 + 2] == -1


def test_v_valley_accumulation_concentrates_on_floor_and_is_conserved():
    ny, nx = 30, 21
    y, x = np.mgrid[0:ny, 0:nx]
    dem = 5.0 * np.abs(x - nx // 2) + 0.5 * (ny - y)  # V valley draining south (row ny-1)
    h = fill_depressions(dem)
    rec = d8_receivers(h, 10.0)
    acc = flow_accumulation(rec, dem.shape)
    assert acc.dtype == np.float64 and acc.shape == dem.shape
    floor = acc[:, nx // 2]
    assert floor[-2] == acc[1:-1, 1:-1].max()
    assert floor[-2] > 10 * np.median(acc)
    assert np.all(np.diff(floor[1:-1]) > 0)  # grows downstream along the floor
    # conservation: every cell ends up in exactly one outlet
    outlets = rec == -1
    assert acc.ravel()[outlets].sum() == dem.size
    assert acc.min() >= 1


def test_flow_accumulation_weights_and_bad_input():
    rec = np.array([1, 2, -1, 2])
    acc = flow_accumulation(rec, (2, 2), weights=np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(acc.ravel(), [1, 3, 10, 4])
    with pytest.raises(ValueError, match="cycle"):
        flow_accumulation(np.array([1, 0, -1, -1]), (2, 2))
    with pytest.raises(ValueError, match="shape"):
        flow_accumulation(rec, (3, 3))
    with pytest.raises(ValueError, match="res_m"):
        d8_receivers(np.zeros((3, 3)), 0.0)
    with pytest.raises(ValueError, match="2-D"):
        fill_depressions(np.zeros(5))


def _lake_with_one_ulp_rim(level_m, dtype, size=24):
    """A flat lake at ``level_m`` (stored as ``dtype``) draining west through one edge cell, whose shore is
    one ``dtype`` ulp above the lake and drains only into it, inside a 50 m higher wall."""
    lake = np.asarray(level_m, dtype=dtype)
    dem = np.full((size, size), lake + dtype(50.0), dtype=dtype)
    dem[2:-2, 2:-2] = np.nextafter(lake, dtype(np.inf))  # the shore: one ulp above the lake
    dem[3:-3, 3:-3] = lake                                 # the lake floor, flat
    dem[size // 2, 0:3] = lake                             # its outlet on the west edge
    return dem


def _terraced_lake(level_m, size=120, rings=40):
    """float32 flat lake at ``level_m`` inside ``rings`` concentric terraces, each one float32 ulp above the
    one inside it (so each drains only inwards), inside a 50 m wall; a channel drains it to the west edge."""
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    r = np.maximum(np.abs(yy - c), np.abs(xx - c))  # Chebyshev radius from the centre
    ring = np.clip(np.ceil(r - (c - rings - 1)), 0, rings + 1).astype(np.int32)  # 0 = lake, rings + 1 = wall
    dem = (np.float32(level_m).view(np.int32) + ring).view(np.float32)
    dem[ring == rings + 1] = np.float32(level_m + 50.0)
    dem[size // 2, :rings + 3] = np.float32(level_m)
    return dem


def test_fill_drains_float32_terraces_one_ulp_apart():
    # Regression: a fixed 1e-6 m ramp over the ~40-cell-wide lake rises above the first float32 terrace
    # (one ulp, 7.6e-6 m at 100 m), which becomes a pit, is filled and ramped again, and so on outwards:
    # the old round-based fill raised "did not converge in 10 rounds".
    dem = _terraced_lake(100.0)
    for eps in (1e-6, None, 1e-3):  # 1e-6 (the old default) first
        h = fill_depressions(dem, epsilon_m=eps)
        assert h.dtype == np.float64
        assert (h >= dem).all()
        assert _drains_everywhere(h)
        assert np.abs(h - dem).max() < 1e-3  # ramps only: nothing here needed filling
    # the default ramp is whole float64 ulps: every cell keeps its float32 value when cast back
    assert np.array_equal(fill_depressions(dem).astype(np.float32), dem)


def test_fill_drains_float64_ties_within_ulps():
    # A float64 shore one ulp above a long flat: the 1-ulp ramp cannot fit, the exact fallback must drain it.
    dem = _lake_with_one_ulp_rim(8848.0, np.float64)
    h = fill_depressions(dem)
    assert (h >= dem).all()
    assert _drains_everywhere(h)
    assert np.abs(h - dem).max() < 1e-9  # a few hundred ulps of 1.8e-12 m at most
    acc = flow_accumulation(d8_receivers(h, 1.0), h.shape)  # acyclic: every cell reaches an outlet
    assert acc[h.shape[0] // 2, 0] > 0.5 * 20 * 20


def test_fill_all_equal_grid_and_negative_elevations():
    for level in (0.0, -12.5, 9000.0):
        dem = np.full((9, 11), level)
        h = fill_depressions(dem)
        assert _drains_everywhere(h) and (h >= dem).all()
        assert np.abs(h - dem).max() < 1e-9
        interior = d8_receivers(h, 30.0).reshape(h.shape)[1:-1, 1:-1]
        assert (interior >= 0).all()  # one-ulp drops at 0 m are subnormal: they must not underflow
    with pytest.raises(ValueError, match="epsilon_m"):
        fill_depressions(np.zeros((3, 3)), epsilon_m=-1.0)
