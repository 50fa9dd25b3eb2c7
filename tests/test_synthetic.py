"""The synthetic world: a function of absolute position and the seed (windows and tiles agree bit for bit),
deterministic, every class's terrain signature, plausibility statistics."""
import dataclasses
import math

import numpy as np
import pytest
from conftest import make_terrain
from scipy import ndimage

from topo2vec_lib import noise as N
from topo2vec_lib.grid import slope_deg, window_bounds, xy_to_lonlat
from topo2vec_lib.hydrology import d8_receivers, fill_depressions, flow_accumulation
from topo2vec_lib.synthetic import WORLD, fbm, relief_statistics, synthetic_terrain, synthetic_window, world
from topo2vec_lib.terrain import build_terrain, load_terrain, open_terrain
from topo2vec_lib.tiling import TileRunner

TRAIN_C, TEST_C = (12.0, 47.2), (7.6, 46.6)
CRS = "EPSG:3035"
SMALL = dataclasses.replace(WORLD, block_km=6.0, block_halo_km=3.0)
"""Smaller routing blocks: the same construction at a fraction of the cost (for the properties of any world)."""


# --------------------------------------------------------------------------------------------------
# noise on absolute coordinates
# --------------------------------------------------------------------------------------------------
def test_noise_is_a_function_of_the_point_not_of_the_array():
    key = N.key_of(3, 1)
    bands = N.octaves(20_000, 60, 0.85, 60)
    x = 4.4e6 + np.arange(300) * 30.0 + 15
    y = 2.7e6 - np.arange(250) * 30.0 - 15
    grid = N.fbm(x[None, :], y[:, None], key, bands)
    assert np.array_equal(N.fbm(x[None, 37:211], y[101:190, None], key, bands), grid[101:190, 37:211])
    xx, yy = np.meshgrid(x[:40], y[:30])
    assert np.array_equal(N.fbm(xx, yy, key, bands), grid[:30, :40])           # points == grid
    assert np.array_equal(N.fbm(x[None, 5:6], y[7:8, None], key, bands), grid[7:8, 5:6])
    # a sub-list of octaves draws the same octaves (their index travels with them)
    assert np.allclose(N.fbm(x[None, :], y[:, None], key, bands[:4]) + N.fbm(x[None, :], y[:, None], key, bands[4:]),
                       grid, rtol=0, atol=1e-9)
    assert not np.allclose(N.fbm(x[None, :], y[:, None], N.key_of(3, 2), bands), grid)
    u = N.hash_uniform(np.arange(-5, 5), np.arange(10), key)
    assert np.array_equal(u, N.hash_uniform(np.arange(-5, 5), np.arange(10), key)) and ((u >= 0) & (u < 1)).all()


def test_octave_noise_has_the_requested_roughness_scaling():
    bands = N.octaves(20_000, 60, 0.85, 0.0)
    x = np.arange(1024) * 30.0
    f = N.fbm(x[None, :], -x[:, None], N.key_of(0), bands)
    stats = relief_statistics(f, res_m=30.0, lags_px=(2, 4, 8, 16, 32))
    assert abs(stats["hurst"] - 0.85) < 0.15
    damped = N.fbm(x[None, :], -x[:, None], N.key_of(0), N.octaves(20_000, 60, 0.85, 60.0))
    s2 = relief_statistics(damped, res_m=30.0, lags_px=(1, 32))
    s1 = relief_statistics(f, res_m=30.0, lags_px=(1, 32))
    # the roll-off damps the finest lags and leaves the ~1 km relief as it was
    assert s2["roughness_std_m"][0] < 0.97 * s1["roughness_std_m"][0]
    assert s2["roughness_std_m"][1] == pytest.approx(s1["roughness_std_m"][1], rel=0.05)


# --------------------------------------------------------------------------------------------------
# a function of absolute position and the seed
# --------------------------------------------------------------------------------------------------
def test_same_seed_is_bit_identical_and_the_seed_changes_it():
    b = window_bounds(TRAIN_C, 3.0, 30.0, CRS)
    a = synthetic_window(b, seed=5, params=SMALL)
    again = synthetic_window(b, seed=5, params=SMALL)
    assert a.tobytes() == again.tobytes()
    c = synthetic_window(b, seed=6, params=SMALL)
    assert a.shape == c.shape and np.abs(a - c).mean() > 10.0
    # the region's name does not enter the world: the same place is the same terrain
    t1 = synthetic_terrain("train", TRAIN_C, 2.0)
    t2 = synthetic_terrain("mine", TRAIN_C, 2.0, region_lonlat=(11, 46, 13, 48))
    assert t1.values.tobytes() == t2.values.tobytes()


def test_overlapping_windows_agree_on_their_overlap():
    b1 = window_bounds(TRAIN_C, 4.0, 30.0, CRS)
    b2 = (b1[0] + 1230.0, b1[1] - 870.0, b1[0] + 1230.0 + 2460.0, b1[1] - 870.0 + 3000.0)   # shifted, other size
    z1, z2 = synthetic_window(b1, params=SMALL), synthetic_window(b2, params=SMALL)
    r0, c0 = int(round((b1[3] - b2[3]) / 30.0)), int(round((b2[0] - b1[0]) / 30.0))
    ov1 = z1[max(r0, 0):, c0:]
    ov2 = z2[max(-r0, 0):max(-r0, 0) + ov1.shape[0], :ov1.shape[1]]
    assert ov1.shape[0] > 20 and ov1.shape[1] > 20
    assert np.array_equal(ov1[:ov2.shape[0], :ov2.shape[1]], ov2)


def test_tiles_built_independently_equal_the_whole(tmp_path):
    """Tiles of any shape, computed alone (fresh caches aside), give the whole window's heights; the tiled
    zarr writer (carve field and unfilled heights through scratch files, 4 tiles) writes the same heights."""
    w = world(0, 30.0)
    bounds = window_bounds(TEST_C, 6.0, 30.0, CRS)
    rows, cols = w.pixel_window(bounds)
    whole = w.elevation(rows, cols)
    for dr, dc, h, wd in ((0, 0, 64, 200), (63, 17, 100, 31), (150, 150, 50, 50)):
        tile = w.elevation((rows[0] + dr, rows[0] + dr + h), (cols[0] + dc, cols[0] + dc + wd))
        assert np.array_equal(tile, whole[dr:dr + h, dc:dc + wd]), (dr, dc)
    with TileRunner("sync") as runner:
        info = build_terrain(tmp_path / "t.zarr", "synthetic", "test", bounds, res_m=30.0, crs=CRS,
                             region_lonlat=[5, 45, 10, 50], tile_px=128, chunk_px=64, runner=runner)
    assert info["tiles"] == 4 and info["shape"] == [200, 200] and info["nodata_fraction"] == 0.0
    stored = open_terrain(tmp_path / "t.zarr")
    assert np.array_equal(stored.values, whole.astype(np.float32))
    ref = load_terrain("synthetic", "test", center_lonlat=TEST_C, size_km=6.0, res_m=30)
    assert np.array_equal(stored.x.values, ref.x.values) and np.array_equal(stored.y.values, ref.y.values)
    assert stored.attrs == ref.attrs and stored.rio.crs == ref.rio.crs


def test_terrain_follows_the_data_contract():
    da = synthetic_terrain("test", TEST_C, 3.0, res_m=30)
    assert da.dims == ("y", "x") and da.dtype == np.float32 and da.shape == (100, 100)
    assert da.attrs["res_m"] == 30.0 and da.attrs["region"] == "test" and da.attrs["source"] == "synthetic"
    assert da.attrs["region_lonlat"] == [5.0, 45.0, 10.0, 50.0]
    assert str(da.rio.crs) == "EPSG:3035"
    assert np.all(np.diff(da.x) == 30.0) and np.all(np.diff(da.y) == -30.0)
    ref = make_terrain(np.zeros((100, 100)), 30.0, TEST_C, region="test")
    np.testing.assert_array_equal(da.x, ref.x)
    np.testing.assert_array_equal(da.y, ref.y)
    assert np.isfinite(da.values).all()
    rect = synthetic_terrain("test", TEST_C, [3.0, 1.5], res_m=30)          # [width_km, height_km]
    assert rect.shape == (50, 100)


# --------------------------------------------------------------------------------------------------
# terrain signatures
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def karst():
    """A 4 km window in the middle of a karst plateau near the test window, and the plateau."""
    w = world(0, 30.0)
    plateau = max(w.features("plateau", window_bounds(TEST_C, 60, 30.0, CRS)), key=lambda p: p.radius_m)
    lon, lat = xy_to_lonlat(CRS, plateau.cx, plateau.cy)
    b = window_bounds((float(lon), float(lat)), 4.0, 30.0, CRS)
    return synthetic_window(b), plateau


def test_sinkholes_are_closed_depressions_on_the_plateau(karst):
    z, plateau = karst
    assert plateau.radius_m >= 4000
    depth = fill_depressions(z) - z
    labels, n = ndimage.label(depth > 0.01, structure=np.ones((3, 3), bool))
    deep = ndimage.maximum(depth, labels, np.arange(1, n + 1)) >= 2.0
    assert deep.sum() >= 10                       # bowls 5-40 m deep, tens of them on 16 km2 of plateau
    assert 2.0 <= np.max(depth) <= 45.0
    # the table is gentle: most of it below 10 degrees
    assert np.median(slope_deg(z, 30.0)) < 10.0


def test_escarpments_have_cliffs():
    w = world(0, 30.0)
    e = max(w.features("escarpment", window_bounds(TRAIN_C, 60, 30.0, CRS)), key=lambda e: e.height_m)
    px, py = e.cx + e.radius_m * math.cos(e.theta0), e.cy + e.radius_m * math.sin(e.theta0)
    lon, lat = xy_to_lonlat(CRS, px, py)
    z = synthetic_window(window_bounds((float(lon), float(lat)), 3.0, 30.0, CRS))
    steep = slope_deg(z, 30.0) > 45.0
    labels, n = ndimage.label(steep, structure=np.ones((3, 3), bool))
    assert n >= 1 and np.bincount(labels.ravel())[1:].max() >= 10      # lines of steep cells, not specks


@pytest.fixture(scope="module")
def train6():
    return synthetic_terrain("train", TRAIN_C, 6.0)


def test_valleys_drain_and_are_incised(train6):
    z = train6.values.astype(np.float64)
    h = fill_depressions(z)
    acc = flow_accumulation(d8_receivers(h, 30.0), z.shape)
    assert acc.max() > 0.05 * z.size
    channel = acc > 500
    local_mean = ndimage.uniform_filter(z, 9)
    assert np.median((z - local_mean)[channel]) < -3.0
    # few closed depressions outside karst: the local fill leaves pits under 2 m
    depth = h - z
    assert (depth > 2.0).mean() < 0.01


def test_synthetic_world_is_plausible(train6):
    s = relief_statistics(train6)
    assert 0.6 <= s["hurst"] <= 1.0
    assert 100 < s["elevation_min_m"] and s["elevation_max_m"] < 4500
    assert (slope_deg(train6) > 45).mean() < 0.03                     # v1: 4.5 %; real DEMs <= 0.2 %


def test_fbm_spectral_helper_has_the_requested_hurst_exponent():
    f = fbm((256, 256), 30.0, np.random.default_rng(0), hurst=0.7)
    stats = relief_statistics(f, res_m=30.0, lags_px=(1, 2, 4, 8, 16))
    assert abs(stats["hurst"] - 0.7) < 0.12
    assert abs(stats["roughness_std_m"][0] - 1.0) < 0.05


def test_relief_statistics_on_known_surfaces():
    y, x = np.mgrid[0:50, 0:60]
    plane = make_terrain(30.0 * x * np.tan(np.radians(20.0)), 30.0)
    s = relief_statistics(plane)
    assert abs(s["slope_median_deg"] - 20.0) < 0.01
    assert s["shape"] == [50, 60] and s["nodata_fraction"] == 0.0
    assert s["hurst"] == pytest.approx(1.0, abs=0.05)
    flat = np.full((40, 40), 300.0)
    flat[:5] = np.nan
    s = relief_statistics(flat, res_m=30.0)
    assert s["nodata_fraction"] == pytest.approx(5 / 40)
    assert s["slope_median_plain_deg"] == 0.0 and s["mountain_fraction"] == 0.0
    with pytest.raises(ValueError, match="res_m"):
        relief_statistics(flat)
    with pytest.raises(ValueError, match="no valid"):
        relief_statistics(np.full((5, 5), np.nan), res_m=30.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="res_m"):
        synthetic_terrain("train", TRAIN_C, 3.0, res_m=0)
    with pytest.raises(ValueError, match="not inside region"):
        synthetic_terrain("train", (10.01, 47.0), 5.0)
    with pytest.raises(ValueError, match="unknown region"):
        synthetic_terrain("alps", TRAIN_C, 3.0)
    with pytest.raises(ValueError, match="not on the 30 m pixel lattice"):
        synthetic_window((15.0, 0.0, 3015.0, 3000.0))
    with pytest.raises(ValueError, match="seed"):
        world(1.5)
    da = synthetic_terrain("alps", TRAIN_C, 2.0, region_lonlat=(11, 46, 13, 48))
    assert da.attrs["region"] == "alps" and da.attrs["region_lonlat"] == [11.0, 46.0, 13.0, 48.0]


def test_routing_blocks_are_cached_on_disk_by_value_and_code(tmp_path, monkeypatch):
    """With TOPO2VEC_CACHE_DIR a block is written once and read back bit for bit by a fresh process cache; the
    key holds the seed, res_m and every world parameter; a damaged file is computed again and replaced;
    without the variable nothing is written."""
    from topo2vec_lib import synthetic as S

    monkeypatch.setenv("TOPO2VEC_CACHE_DIR", str(tmp_path))
    S._block_carve.cache_clear()
    path = S.block_cache_path(0, 30.0, SMALL, 3, -2)
    assert path is not None and path.is_relative_to(tmp_path) and not path.exists()
    computed = S._block_carve(0, 30.0, SMALL, 3, -2)
    assert path.is_file()
    S._block_carve.cache_clear()
    again = S._block_carve(0, 30.0, SMALL, 3, -2)
    assert again.tobytes() == computed.tobytes() and again.shape == computed.shape
    assert S.world(0, 30.0, SMALL)._block_carve(3, -2).tobytes() == computed.tobytes()   # what the file holds
    # every part of the key moves the file
    others = {S.block_cache_path(1, 30.0, SMALL, 3, -2), S.block_cache_path(0, 60.0, SMALL, 3, -2),
              S.block_cache_path(0, 30.0, dataclasses.replace(SMALL, carve_rounds=3), 3, -2),
              S.block_cache_path(0, 30.0, SMALL, 3, -1)}
    assert len(others) == 4 and path not in others
    # a damaged file (a killed copy, another program's bytes) is recomputed and rewritten
    path.write_bytes(b"not a numpy file")
    S._block_carve.cache_clear()
    assert S._block_carve(0, 30.0, SMALL, 3, -2).tobytes() == computed.tobytes()
    assert np.load(path).tobytes() == computed.tobytes()
    np.save(path, np.zeros((3, 3)))                 # the right format, the wrong shape
    S._block_carve.cache_clear()
    assert S._block_carve(0, 30.0, SMALL, 3, -2).tobytes() == computed.tobytes()
    monkeypatch.delenv("TOPO2VEC_CACHE_DIR")
    assert S.block_cache_path(0, 30.0, SMALL, 3, -2) is None
    S._block_carve.cache_clear()
