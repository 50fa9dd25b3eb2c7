"""The synthetic world: determinism, every class's terrain signature, plausibility statistics."""
import numpy as np
import pytest
from conftest import make_terrain
from scipy import ndimage

from topo2vec_lib.grid import slope_deg
from topo2vec_lib.hydrology import d8_receivers, fill_depressions, flow_accumulation
from topo2vec_lib.synthetic import fbm, region_rng, relief_statistics, synthetic_elevation, synthetic_terrain

TRAIN_C, TEST_C = (12.0, 47.2), (7.6, 46.6)


@pytest.fixture(scope="module")
def world():
    """A 6 km x 6 km world at 30 m (200 x 200 px) and its feature list."""
    return synthetic_elevation(200, 200, 30.0, region_rng(0, "train"))


def test_same_seed_is_bit_identical_and_seed_and_region_change_it():
    a = synthetic_terrain("train", TRAIN_C, 3.0, seed=5)
    b = synthetic_terrain("train", TRAIN_C, 3.0, seed=5)
    assert a.values.tobytes() == b.values.tobytes()
    c = synthetic_terrain("train", TRAIN_C, 3.0, seed=6)
    assert a.shape == c.shape and np.abs(a.values - c.values).mean() > 10.0
    # the region's name feeds the seed: train and test are different worlds for the same seed
    za, _ = synthetic_elevation(60, 60, 30.0, region_rng(5, "train"))
    zb, _ = synthetic_elevation(60, 60, 30.0, region_rng(5, "test"))
    assert np.abs(za - zb).mean() > 10.0


def test_terrain_follows_the_data_contract():
    da = synthetic_terrain("test", TEST_C, 3.0, res_m=30)
    assert da.dims == ("y", "x") and da.dtype == np.float32 and da.shape == (100, 100)
    assert da.attrs["res_m"] == 30.0 and da.attrs["region"] == "test" and da.attrs["source"] == "synthetic"
    assert da.attrs["region_lonlat"] == [5.0, 45.0, 10.0, 50.0]
    assert str(da.rio.crs) == "EPSG:3035"
    assert np.all(np.diff(da.x) == 30.0) and np.all(np.diff(da.y) == -30.0)
    # same grid as the shared test helper (same snapping rule)
    ref = make_terrain(np.zeros((100, 100)), 30.0, TEST_C, region="test")
    np.testing.assert_array_equal(da.x, ref.x)
    np.testing.assert_array_equal(da.y, ref.y)
    assert np.isfinite(da.values).all()


def test_elevations_are_alpine_to_plain(world):
    z, _ = world
    assert 100 < z.min() and z.max() < 4500 and z.max() - z.min() > 600


def test_sinkholes_are_closed_unfilled_depressions(world):
    z, info = world
    assert len(info["sinkholes"]) >= 3
    depth = fill_depressions(z) - z
    labels, n = ndimage.label(depth > 1.0)
    assert n >= 3
    # each sinkhole centre is a closed depression 5-40 m deep
    for row, col, diam_m, depth_m in info["sinkholes"]:
        assert 30 <= diam_m <= 300 and 5 <= depth_m <= 40
        assert depth[row, col] > 0.5 * depth_m
    # and nothing else is a closed depression: the valleys drain (every depression cell is near a sinkhole)
    near = np.zeros(z.shape, bool)
    for row, col, diam_m, _ in info["sinkholes"]:
        r = int(np.ceil(diam_m / 2 / 30.0)) + 1
        near[max(row - r, 0):row + r + 1, max(col - r, 0):col + r + 1] = True
    assert not ((depth > 0.01) & ~near).any()


def test_escarpments_have_cliffs(world):
    z, info = world
    assert len(info["escarpments"]) >= 2
    steep = slope_deg(z, 30.0) > 45.0
    # steep cells form lines several pixels long, not isolated specks
    labels, n = ndimage.label(steep, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.max() >= 10


def test_valleys_drain_to_the_edge(world):
    z, _ = world
    h = fill_depressions(z)
    rec = d8_receivers(h, 30.0)
    acc = flow_accumulation(rec, z.shape)
    # a trunk river collects a large share of the window and leaves it at an edge cell
    assert acc.max() > 0.05 * z.size
    outlet = np.unravel_index(np.argmax(np.where(rec.reshape(z.shape) == -1, acc, 0)), z.shape)
    assert outlet[0] in (0, z.shape[0] - 1) or outlet[1] in (0, z.shape[1] - 1)
    # the channel is incised: cells with large drainage sit lower than their surroundings
    channel = acc > 500
    local_mean = ndimage.uniform_filter(z, 9)
    assert np.median((z - local_mean)[channel]) < -5.0


def test_fbm_has_the_requested_hurst_exponent():
    f = fbm((256, 256), 30.0, np.random.default_rng(0), hurst=0.7)
    stats = relief_statistics(f, res_m=30.0, lags_px=(1, 2, 4, 8, 16))
    assert abs(stats["hurst"] - 0.7) < 0.12
    # unit roughness at 30 m by construction
    assert abs(stats["roughness_std_m"][0] - 1.0) < 0.05


def test_relief_statistics_on_known_surfaces():
    y, x = np.mgrid[0:50, 0:60]
    plane = make_terrain(30.0 * x * np.tan(np.radians(20.0)), 30.0)  # a 20 degree plane rising east
    s = relief_statistics(plane)
    assert abs(s["slope_median_deg"] - 20.0) < 0.01
    assert s["shape"] == [50, 60] and s["nodata_fraction"] == 0.0
    assert s["hurst"] == pytest.approx(1.0, abs=0.05)  # smooth: differences grow linearly with the lag
    flat = np.full((40, 40), 300.0)
    flat[:5] = np.nan
    s = relief_statistics(flat, res_m=30.0)
    assert s["nodata_fraction"] == pytest.approx(5 / 40)
    assert s["slope_median_plain_deg"] == 0.0 and s["mountain_fraction"] == 0.0
    with pytest.raises(ValueError, match="res_m"):
        relief_statistics(flat)
    with pytest.raises(ValueError, match="no valid"):
        relief_statistics(np.full((5, 5), np.nan), res_m=30.0)


def test_synthetic_world_is_plausible():
    """A 9 km window: mountains steep, plains gentle, real-terrain roughness scaling."""
    da = synthetic_terrain("train", TRAIN_C, 9.0)
    s = relief_statistics(da)
    assert 0.6 <= s["hurst"] <= 0.9
    assert s["slope_median_mountain_deg"] is not None and 18 <= s["slope_median_mountain_deg"] <= 40
    assert s["slope_p10_deg"] < 5


def test_bad_inputs():
    with pytest.raises(ValueError, match="res_m"):
        synthetic_terrain("train", TRAIN_C, 3.0, res_m=0)
    with pytest.raises(ValueError, match="not inside region"):
        synthetic_terrain("train", (10.01, 47.0), 5.0)
    with pytest.raises(ValueError, match="unknown region"):
        synthetic_terrain("alps", TRAIN_C, 3.0)
    # any region name works with an explicit polygon
    da = synthetic_terrain("alps", TRAIN_C, 2.0, region_lonlat=(11, 46, 13, 48))
    assert da.attrs["region"] == "alps" and da.attrs["region_lonlat"] == [11.0, 46.0, 13.0, 48.0]
