"""PatchSampler against independent computations: analytic surfaces, GDAL average warps, hand-made pyramids."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio.warp
from affine import Affine
from conftest import make_terrain
from pyproj import Transformer
from rasterio.enums import Resampling
from scipy import ndimage

from topo2vec_lib import sampler as sampler_mod
from topo2vec_lib.sampler import (
    NodataError,
    OutsideRegionError,
    OutsideTerrainError,
    PatchSampler,
    block_mean_pyramid,
    normalize,
)

RES = 30.0


def pixel_centres(t):
    """x (nx,), y (ny,) pixel centres in metres, from the DataArray's own coordinates."""
    return np.asarray(t["x"].values, float), np.asarray(t["y"].values, float)


def lonlat_of(t, x, y):
    lon, lat = Transformer.from_crs(t.rio.crs.to_wkt(), "EPSG:4326", always_xy=True).transform(x, y)
    return np.atleast_1d(lon), np.atleast_1d(lat)


def plane_terrain(n=256, a=0.7, b=-0.4, c=1500.0):
    """z = a * col + b * row + c on an n x n grid; returns the terrain and z(x_m, y_m)."""
    rows, cols = np.mgrid[0:n, 0:n]
    t = make_terrain(a * cols + b * rows + c, res_m=RES)
    x, y = pixel_centres(t)

    def z(xm, ym):
        return a * (xm - x[0]) / RES + b * (y[0] - ym) / RES + c

    return t, z


def rough_terrain(n=256, seed=0):
    """Fractal-ish relief (metres): brown-noise by cumulative sums of white noise, plus white noise."""
    rng = np.random.default_rng(seed)
    z = np.cumsum(np.cumsum(rng.normal(size=(n, n)), axis=0), axis=1) * 0.5 + rng.normal(scale=20, size=(n, n))
    return make_terrain(z + 1000.0, res_m=RES)


def grid_offsets(size, res_m):
    return (np.arange(size) - (size - 1) / 2) * res_m


# ----------------------------------------------------------------------------------------------- exact values
@pytest.mark.parametrize("res_m", [30.0, 41.3, 60.0, 97.0, 120.0, 240.0])
def test_plane_is_reproduced_exactly_at_any_res(res_m):
    t, z = plane_terrain()
    s = PatchSampler(t)
    x, y = pixel_centres(t)
    rng = np.random.default_rng(1)
    px = x.mean() + rng.uniform(-1000, 1000, 20)
    py = y.mean() + rng.uniform(-1000, 1000, 20)
    got = s.patches_xy(px, py, res_m, size=17)
    off = grid_offsets(17, res_m)
    want = z(px[:, None, None] + off[None, None, :], py[:, None, None] - off[None, :, None])
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_finer_than_native_is_refused():
    t, _ = plane_terrain(n=64)
    s = PatchSampler(t)
    x, y = pixel_centres(t)
    with pytest.raises(ValueError, match="res_m = 10.0 m/px is finer than the terrain's native 30.0"):
        s.patches_xy([x.mean()], [y.mean()], 10.0)
    with pytest.raises(ValueError, match="res_m = 29.0 m/px is finer"):
        s.valid_xy([x.mean()], [y.mean()], 29.0)


@pytest.mark.parametrize("size", [17, 16])
def test_paraboloid_at_native_res_equals_pixels(size):
    rows, cols = np.mgrid[0:80, 0:90]
    z = 0.05 * (cols - 41.0) ** 2 + 0.11 * (rows - 37.0) ** 2
    t = make_terrain(z)
    s = PatchSampler(t)
    x, y = pixel_centres(t)
    r, c = 30, 50
    if size % 2:   # place on a pixel centre
        got = s.patches_xy([x[c]], [y[r]], RES, size=size)[0]
        want = z[r - 8:r + 9, c - 8:c + 9]
    else:          # place on the corner between 4 pixels: the centre falls between the middle pixels
        got = s.patches_xy([x[c] - RES / 2], [y[r] + RES / 2], RES, size=size)[0]
        want = z[r - 8:r + 8, c - 8:c + 8]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_lonlat_places_give_the_pixels_around_them_north_up():
    t = rough_terrain(128, seed=3)
    s = PatchSampler(t)
    x, y = pixel_centres(t)
    r = np.array([20, 64, 100])
    c = np.array([30, 64, 90])
    lon, lat = lonlat_of(t, x[c], y[r])
    got = s.patches(lon, lat, RES)
    for i in range(3):   # pyproj's EPSG:3035 round trip through lon/lat is good to ~0.5 mm, pixels differ by ~20 m
        np.testing.assert_allclose(got[i], t.values[r[i] - 8:r[i] + 9, c[i] - 8:c[i] + 9], atol=0.05)


def test_north_east_quadrant_shows_up_north_east():
    n = 200
    rows, cols = np.mgrid[0:n, 0:n]
    ne = (rows < n // 2) & (cols >= n // 2)
    z = np.where(ne, (cols - n // 2) + (n // 2 - rows), 0.0)   # rises to the north-east, only in the NE quadrant
    t = make_terrain(z)
    s = PatchSampler(t)
    x, y = pixel_centres(t)
    lon_ne, lat_ne = lonlat_of(t, x[150], y[50])
    lon_sw, lat_sw = lonlat_of(t, x[50], y[150])
    lon_se, lat_se = lonlat_of(t, x[150], y[150])
    p = s.patches(np.r_[lon_ne, lon_sw, lon_se], np.r_[lat_ne, lat_sw, lat_se], 60.0)
    ne_patch = p[0]
    assert ne_patch[0, -1] > ne_patch[-1, 0]                        # north-east corner higher than south-west
    assert np.all(np.diff(ne_patch, axis=1) > 0)                     # rises to the east along rows
    assert np.all(np.diff(ne_patch, axis=0) < 0)                     # falls to the south down columns
    assert np.all(p[1] == 0) and np.all(p[2] == 0)                   # SW and SE quadrants are flat
    with pytest.raises(OutsideTerrainError):                         # lat/lon swapped
        s.patches(lat_ne, lon_ne, 60.0)


def test_nodata_next_to_a_native_patch_is_not_touched():
    z = np.ones((60, 60), np.float32)
    z[:, 40:] = np.nan
    t = make_terrain(z)
    s = PatchSampler(t)
    x, y = pixel_centres(t)
    p = s.patches_xy([x[31]], [y[30]], RES)       # columns 23..39: right next to the NaN column 40
    assert np.all(p == 1)
    with pytest.raises(NodataError, match="#0"):
        s.patches_xy([x[31] + 1.0], [y[30]], RES)  # a metre east: column 40 gets weight


# ----------------------------------------------------------------------------------------------- pyramid
def test_block_mean_pyramid_matches_hand_means_with_partial_edges_and_nan():
    z = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    z[4, 0] = np.nan
    lv = block_mean_pyramid(z)
    assert [a.shape for a in lv] == [(5, 7), (3, 4), (2, 2), (1, 1)]
    assert lv[1][0, 0] == pytest.approx(np.mean(z[0:2, 0:2]))
    assert lv[1][0, 3] == pytest.approx(np.mean(z[0:2, 6:7]))          # partial block at the east edge
    assert lv[1][1, 3] == pytest.approx(np.mean(z[2:4, 6:7]))
    assert np.isnan(lv[1][2, 0]) and lv[1][2, 1] == pytest.approx(np.mean(z[4:5, 2:4]))
    assert lv[2][0, 1] == pytest.approx(np.mean(z[0:4, 4:7]))          # mean of native pixels, not of means
    assert np.isnan(lv[2][1, 0]) and np.isnan(lv[3][0, 0])
    assert len(block_mean_pyramid(z, levels=2)) == 2


@pytest.mark.parametrize("res_m, level", [(30, 0), (59.9, 0), (60, 1), (119, 1), (120, 2), (240, 3), (1e6, 8)])
def test_level_choice(res_m, level):
    s = PatchSampler(make_terrain(np.zeros((256, 256))))
    assert len(s.pyramid) == 9 and s.level_for(res_m) == level


def test_checkerboard_is_averaged_out_at_coarse_scales():
    rows, cols = np.mgrid[0:256, 0:256]
    plane = 0.3 * cols + 0.2 * rows
    t = make_terrain(plane + np.where((rows + cols) % 2, 50.0, -50.0))
    s = PatchSampler(t)
    x, y = pixel_centres(t)
    px, py = x.mean() + np.array([0.0, 17.3, -260.0]), y.mean() + np.array([0.0, 41.9, 130.0])
    t_plane = PatchSampler(make_terrain(plane))
    for res_m in (60.0, 120.0, 150.0):
        np.testing.assert_allclose(s.patches_xy(px, py, res_m), t_plane.patches_xy(px, py, res_m), atol=1e-3)
    naive = PatchSampler(t, levels=1).patches_xy(px, py, 120.0)         # no pyramid: aliased
    assert np.abs(naive - t_plane.patches_xy(px, py, 120.0)).max() > 20


@pytest.mark.parametrize("factor", [4, 8])
def test_agrees_with_gdal_average_warp(factor):
    t = rough_terrain(256, seed=5)
    s = PatchSampler(t)
    res_m = RES * factor
    x, y = pixel_centres(t)
    left, top = x[0] - RES / 2, y[0] + RES / 2
    src = dict(source=t.values, src_transform=t.rio.transform(), src_crs=t.rio.crs, dst_crs=t.rio.crs,
               resampling=Resampling.average)
    # places on the centres of factor x factor blocks: each patch pixel is one block's mean
    cells = np.array([[9, 12], [30, 20], [40, 54]]) if factor == 4 else np.array([[9, 9], [12, 14]])
    px, py = left + (cells[:, 1] + 0.5) * res_m, top - (cells[:, 0] + 0.5) * res_m
    got = s.patches_xy(px, py, res_m)
    for i in range(len(px)):
        dst = np.zeros((17, 17), np.float32)
        rasterio.warp.reproject(destination=dst, dst_transform=Affine(res_m, 0, px[i] - 8.5 * res_m,
                                                                      0, -res_m, py[i] + 8.5 * res_m), **src)
        np.testing.assert_allclose(got[i], dst, atol=2e-3)
    # anywhere else: bilinear interpolation of the GDAL-averaged grid
    n_coarse = 256 // factor
    coarse = np.zeros((n_coarse, n_coarse), np.float32)
    rasterio.warp.reproject(destination=coarse, dst_transform=Affine(res_m, 0, left, 0, -res_m, top), **src)
    rng = np.random.default_rng(2)
    px = x.mean() + rng.uniform(-600, 600, 10)
    py = y.mean() + rng.uniform(-600, 600, 10)
    got = s.patches_xy(px, py, res_m)
    off = grid_offsets(17, res_m)
    cols = np.broadcast_to((px[:, None, None] + off[None, None, :] - left) / res_m - 0.5, got.shape)
    rows = np.broadcast_to((top - (py[:, None, None] - off[None, :, None])) / res_m - 0.5, got.shape)
    want = ndimage.map_coordinates(coarse, [rows.ravel(), cols.ravel()], order=1, prefilter=False)
    np.testing.assert_allclose(got, want.reshape(got.shape), atol=2e-3)


def test_big_batch_equals_one_by_one():
    t = rough_terrain(96, seed=1)
    s = PatchSampler(t, threads=2)
    rng = np.random.default_rng(4)
    x, y = pixel_centres(t)
    chunk = sampler_mod._CHUNK_SAMPLES // 17 ** 2
    n = 3 * chunk + 5
    px, py = x.mean() + rng.uniform(-780, 780, n), y.mean() + rng.uniform(-780, 780, n)
    batch = s.patches_xy(px, py, 75.0)
    for i in (0, 17, chunk - 1, chunk, 2 * chunk + 1, n - 1):
        np.testing.assert_array_equal(batch[i], s.patches_xy(px[i:i + 1], py[i:i + 1], 75.0)[0])


# ----------------------------------------------------------------------------------------------- fractal pairs
@pytest.mark.parametrize("k, res_m", [(1, 30.0), (2, 60.0), (4, 120.0), (4, 200.0)])
def test_fractal_pairs_shapes_values_and_footprint(k, res_m):
    t, z = plane_terrain(a=2.0, b=1.0, c=100.0)
    s = PatchSampler(t)
    x, y = pixel_centres(t)
    px, py = x.mean() + np.array([0.0, 333.0]), y.mean() + np.array([0.0, -71.0])
    lon, lat = lonlat_of(t, px, py)
    xin, yout = s.fractal_pairs(lon, lat, res_m, k)
    assert xin.shape == (2, 1, 17, 17) and yout.shape == (2, 1, 16 * k, 16 * k)
    assert xin.dtype == np.float32 and yout.dtype == np.float32
    # independent expectation: the plane at the target's pixel centres, normalised with the input's min/range
    half = 17 * res_m / 2
    corners = z(px[:, None] + np.array([-1, 1, -1, 1]) * (half - res_m / 2),
                py[:, None] + np.array([-1, -1, 1, 1]) * (half - res_m / 2))
    lo, span = corners.min(1), corners.max(1) - corners.min(1)
    tgt_m = 17 * res_m / (16 * k)
    off = grid_offsets(16 * k, tgt_m)
    assert off[-1] + tgt_m / 2 == pytest.approx(half)                     # same footprint
    raw = z(px[:, None, None] + off[None, None, :], py[:, None, None] - off[None, :, None])
    np.testing.assert_allclose(yout[:, 0], (raw - lo[:, None, None]) / span[:, None, None], atol=1e-4)
    assert xin.min() == 0 and xin.max() == pytest.approx(1)
    np.testing.assert_allclose(xin.mean(axis=(1, 2, 3)), yout.mean(axis=(1, 2, 3)), atol=1e-4)


def test_fractal_pairs_refuse_targets_finer_than_native_and_bad_k():
    s = PatchSampler(make_terrain(np.zeros((128, 128))))
    lon, lat = 12.0, 47.2
    with pytest.raises(ValueError, match=r"k = 4.*res_m >= 112.9"):
        s.fractal_pairs(lon, lat, 60.0, 4)
    for k in (3, 0, 2.0):
        with pytest.raises(ValueError, match=f"k = {k!r}"):
            s.fractal_pairs(lon, lat, 120.0, k)


# ----------------------------------------------------------------------------------------------- random places
def test_random_places_inside_deterministic_and_valid():
    t = rough_terrain(128, seed=2)
    s = PatchSampler(t)
    lon, lat = s.random_places(300, np.random.default_rng(7), 60.0, k=2)
    lon2, lat2 = s.random_places(300, np.random.default_rng(7), 60.0, k=2)
    lon3, _ = s.random_places(300, np.random.default_rng(8), 60.0, k=2)
    np.testing.assert_array_equal(lon, lon2)
    np.testing.assert_array_equal(lat, lat2)
    assert not np.array_equal(lon, lon3)
    assert lon.shape == (300,) and lon.dtype == np.float64
    x, y = s.to_xy(lon, lat)
    half = 17 * 60.0 / 2
    left, bottom, right, top = s.bounds_xy
    assert np.all((x - half >= left - 1e-6) & (x + half <= right + 1e-6))
    assert np.all((y - half >= bottom - 1e-6) & (y + half <= top + 1e-6))
    s.fractal_pairs(lon, lat, 60.0, 2)                                # no error: all usable
    s.check_region(lon, lat)
    assert 0.4 < np.mean(x < (left + right) / 2) < 0.6               # spread over the window


def test_random_places_reject_nodata():
    z = rough_terrain(128).values.copy()
    z[:, 64:] = np.nan                                                # east half is sea
    t = make_terrain(z)
    s = PatchSampler(t)
    lon, lat = s.random_places(200, 3, 60.0)
    x, _ = s.to_xy(lon, lat)
    assert np.all(x + 17 * 60.0 / 2 <= s.bounds_xy[0] + 64 * RES + 1e-6)
    assert not np.isnan(s.patches(lon, lat, 60.0)).any()
    assert s.valid_places(lon, lat, 60.0, k=1).all()
    with pytest.raises(NodataError, match="#0"):
        s.patches(*lonlat_of(t, [s.bounds_xy[0] + 64 * RES], [s.bounds_xy[3] - 64 * RES]), 60.0)


def test_random_places_error_when_impossible():
    with pytest.raises(NodataError, match=r"100% nodata"):
        PatchSampler(make_terrain(np.full((64, 64), np.nan)))
    z = np.full((64, 64), np.nan)
    z[32, 32] = 100.0                        # one valid pixel: no 17 px patch is ever free of nodata
    s = PatchSampler(make_terrain(z))
    with pytest.raises(ValueError, match=r"only 0 of n = 5"):
        s.random_places(5, 0, 30.0, max_tries=2000)
    s = PatchSampler(make_terrain(np.zeros((64, 64))))
    with pytest.raises(ValueError, match=r"does not fit"):
        s.random_places(5, 0, 200.0)
    with pytest.raises(ValueError, match=r"n = -1"):
        s.random_places(-1, 0, 30.0)


def test_random_places_respect_region():
    t = make_terrain(np.zeros((200, 200)), center_lonlat=(10.0, 47.0))  # straddles the lon 10 train edge
    s = PatchSampler(t)
    lon, lat = s.random_places(200, 0, 30.0)
    assert lon.min() >= 10.0
    with pytest.raises(OutsideRegionError, match=r"#0 \(lon 9\.9"):
        s.check_region([9.99, 10.01], [47.0, 47.0])


def test_valid_places_flags_edges_and_nodata_and_round_trips():
    z = np.zeros((100, 100), np.float32)
    z[60:, :] = np.nan                                                 # south part is sea
    t = make_terrain(z)
    s = PatchSampler(t)
    x, y = pixel_centres(t)
    px = np.array([x[50], x[3], x[50], x[50]])
    py = np.array([y[30], y[30], y[52], y[45]])                        # ok, west edge, touches sea, ok
    lon, lat = lonlat_of(t, px, py)
    np.testing.assert_array_equal(s.valid_places(lon, lat, 30.0), [True, False, False, True])
    np.testing.assert_array_equal(s.valid_places(lon, lat, 30.0, k=1), [True, False, False, True])
    np.testing.assert_array_equal(s.valid_places(lon, lat, 60.0), [True, False, False, False])
    bx, by = s.to_xy(*s.to_lonlat(px, py))
    np.testing.assert_allclose(bx, px, atol=1e-2)
    np.testing.assert_allclose(by, py, atol=1e-2)
    with pytest.raises(ValueError, match="fractal target's pixel size for k = 4"):
        s.valid_places(lon, lat, 30.0, k=4)


# ----------------------------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def flat():
    return PatchSampler(make_terrain(np.zeros((64, 64))))


@pytest.mark.parametrize("res_m, match", [(15.0, "res_m = 15.0 m/px is finer"), (0, "res_m = 0 "),
                                          (-30.0, "res_m = -30.0"), (float("nan"), "res_m = nan"),
                                          ("abc", "res_m = 'abc'")])
def test_bad_res(flat, res_m, match):
    with pytest.raises(ValueError, match=match):
        flat.patches(12.0, 47.2, res_m)


@pytest.mark.parametrize("size", [1, 0, 2.5, True])
def test_bad_size(flat, size):
    with pytest.raises(ValueError, match=f"size = {size!r}"):
        flat.patches(12.0, 47.2, 30.0, size=size)


def test_bad_places(flat):
    with pytest.raises(ValueError, match=r"lon\[1\] = nan"):
        flat.patches([12.0, np.nan], [47.2, 47.2], 30.0)
    with pytest.raises(ValueError, match=r"lat\[0\] = inf"):
        flat.patches([12.0], [np.inf], 30.0)
    with pytest.raises(ValueError, match="same length"):
        flat.patches([12.0, 12.0], [47.2], 30.0)
    with pytest.raises(ValueError, match=r"lat\[0\] = 112.0 is outside"):
        flat.patches([12.0], [112.0], 30.0)


def test_outside_terrain_names_place_and_bounds(flat):
    with pytest.raises(OutsideTerrainError, match=r"1 of 2 .*#1 \(lon 12\.10000, lat 47\.20000\).*Terrain bounds: x "):
        flat.patches([12.0, 12.1], [47.2, 47.2], 30.0)
    with pytest.raises(OutsideTerrainError, match="footprint 2040 m"):   # inside, but the footprint is not
        flat.patches([12.0], [47.2], 120.0)


def test_bad_terrain():
    t = make_terrain(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="dims"):
        PatchSampler(t.transpose("x", "y"))
    with pytest.raises(ValueError, match="north-up"):
        PatchSampler(t.isel(y=slice(None, None, -1)))
    with pytest.raises(ValueError, match="levels = 0"):
        PatchSampler(t, levels=0)
    no_region = t.copy()
    del no_region.attrs["region_lonlat"]
    with pytest.raises(ValueError, match="no 'region_lonlat'"):
        PatchSampler(no_region).check_region([12.0], [47.2])


# ----------------------------------------------------------------------------------------------- normalize
def test_normalize():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(5, 17, 17)).astype(np.float32) * 100
    n = normalize(p)
    assert n.dtype == np.float32 and n.shape == p.shape
    np.testing.assert_allclose(n.min(axis=(1, 2)), 0)
    np.testing.assert_allclose(n.max(axis=(1, 2)), 1, rtol=1e-6)
    flat = np.full((2, 17, 17), 812.0) + np.array([0, 0.01])[:, None, None] * rng.random((2, 17, 17))
    nf = normalize(flat)
    assert np.all(np.isfinite(nf)) and nf.max() <= 0.01 + 1e-6          # range floored at 1 m: no blow-up
    assert normalize(flat, min_range_m=0.001).max() > 0.99
    ref = np.stack([np.zeros((17, 17)), np.full((17, 17), 10.0)])
    ref[:, 0, 0] += 4.0                                                   # min 0/10, range 4
    tgt = np.full((2, 1, 64, 64), 12.0)
    np.testing.assert_allclose(normalize(tgt, reference=ref)[:, 0, 0, 0], [3.0, 0.5])
    q = p.copy()
    q[0, 3, 3] = np.nan
    nq = normalize(q)
    assert np.isnan(nq[0, 3, 3]) and np.nanmax(nq[0]) == pytest.approx(1)
    with pytest.raises(ValueError, match="min_range_m = 0"):
        normalize(p, min_range_m=0)
    with pytest.raises(ValueError, match="same N"):
        normalize(p, reference=p[:2])


# ----------------------------------------------------------------------------------------------- multi-scale
@pytest.mark.parametrize("k, scales", [(1, [30.0, 60.0, 120.0]), (2, [60.0, 120.0]), (4, [120.0, 240.0, 480.0])])
def test_multiscale_fractal_pairs_on_a_plane_have_the_known_answer(k, scales):
    """Algorithm 1 over several scales: on a plane rising east, the min-max normalised input is column j -> j / 16
    at every scale, and the target over the same footprint is ((j - (16k - 1) / 2) * 17 / (16k) + 8) / 16, also at
    every scale (the coarsest footprint, 17 x 480 m, fits with whole pyramid blocks: no edge effects)."""
    from topo2vec_lib.models.config import Topo2VecConfig
    from topo2vec_lib.models.topo2vec import sample_chunk

    n = 320                                                           # 20 blocks of 16 px: level 4 has no partial block
    t = make_terrain(1500.0 + 2.0 * np.mgrid[0:n, 0:n][1], res_m=RES)
    s = PatchSampler(t)
    cfg = Topo2VecConfig.from_dict({"k": k, "train_res_m": scales, "batch_size": 4, "chunk_batches": 2, "images": 64})
    pairs = sample_chunk(s, cfg, seed=1, epoch=0, chunk=0, place_batches=2)
    assert len(pairs) == len(scales)
    j_in = np.arange(17) / 16
    j_out = ((np.arange(16 * k) - (16 * k - 1) / 2) * 17 / (16 * k) + 8) / 16
    for (x, y), res_m in zip(pairs, scales):
        assert x.shape == (8, 1, 17, 17) and y.shape == (8, 1, 16 * k, 16 * k), res_m
        np.testing.assert_allclose(x[:, 0], np.broadcast_to(j_in, (8, 17, 17)), atol=2e-5, err_msg=str(res_m))
        np.testing.assert_allclose(y[:, 0], np.broadcast_to(j_out, (8, 16 * k, 16 * k)), atol=2e-5,
                                   err_msg=str(res_m))


def test_multiscale_random_places_fit_every_scale_and_one_scale_is_unchanged():
    z = rough_terrain(160, seed=4).values.copy()
    z[100:, 40:70] = np.nan                                           # a lake near the south edge
    s = PatchSampler(make_terrain(z))
    lon, lat = s.random_places(150, np.random.default_rng(2), [30.0, 120.0, 60.0], k=1)
    for r in (30.0, 60.0, 120.0):
        assert s.valid_places(lon, lat, r, k=1).all(), r
    again = s.random_places(150, np.random.default_rng(2), [120.0, 60.0, 30.0], k=1)
    np.testing.assert_array_equal(lon, again[0])                      # the order of the scales does not matter
    one = s.random_places(100, np.random.default_rng(5), [60.0], k=2)
    scalar = s.random_places(100, np.random.default_rng(5), 60.0, k=2)
    np.testing.assert_array_equal(one[0], scalar[0])                  # a one-scale list draws what the scale draws
    np.testing.assert_array_equal(one[1], scalar[1])
    with pytest.raises(ValueError, match="empty list"):
        s.random_places(5, 0, [])
    with pytest.raises(ValueError, match="finer than the terrain's native"):
        s.random_places(5, 0, [60.0, 15.0])


def test_fractal_scales_never_ask_for_a_target_finer_than_native():
    import torch

    from topo2vec_lib.models.config import Topo2VecConfig
    from topo2vec_lib.models.topo2vec import Topo2VecMethod

    s = PatchSampler(make_terrain(np.zeros((64, 64))))
    assert s.min_fractal_res_m(1) == pytest.approx(30 * 16 / 17)              # 28.24 m/px
    assert s.min_fractal_res_m(4) == pytest.approx(30 * 64 / 17)              # 112.94 m/px
    assert s.min_fractal_res_m(8) == pytest.approx(30 * 128 / 17)             # 225.88 m/px
    assert s.check_fractal_scales([30, 60, 120], k=1) == [30.0, 60.0, 120.0]
    assert s.target_res_m(120.0, 4) >= s.res_m and s.target_res_m(112.0, 4) < s.res_m
    with pytest.raises(ValueError, match=r"train_res_m 30, 60 m/px with k = 4.*7.97, 15.9 m pixels.*>= 112.94"):
        s.check_fractal_scales([30, 60, 120], k=4)
    cfg = Topo2VecConfig.from_dict({"k": 4, "train_res_m": [30, 60, 120]})
    with pytest.raises(ValueError, match=r">= 112.94 m/px"):                  # before any training work
        Topo2VecMethod(cfg, s, seed=0, device=torch.device("cpu"))


def test_nan_free_levels_skip_the_nodata_check_with_the_same_places():
    """The nodata check samples every candidate's patch and target; on levels without NaN it cannot fail and is
    skipped: the places are the same as with the check forced."""
    s = PatchSampler(rough_terrain(160, seed=6))
    assert not any(s._level_has_nan)
    fast = s.random_places(120, np.random.default_rng(1), [60.0, 120.0], k=2)
    s._level_has_nan = [True] * len(s.pyramid)
    slow = s.random_places(120, np.random.default_rng(1), [60.0, 120.0], k=2)
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])
    z = rough_terrain(160, seed=6).values.copy()
    z[10, 10] = np.nan
    assert all(PatchSampler(make_terrain(z))._level_has_nan)             # one NaN pixel reaches every level


@pytest.mark.parametrize("shape,levels,strip_log2", [((1000, 777), None, 8), ((513, 1030), 3, 2), ((3, 5), None, 8)])
def test_streamed_pyramid_equals_the_one_piece_pyramid(shape, levels, strip_log2):
    from topo2vec_lib.sampler import streamed_pyramid

    z = np.random.default_rng(0).normal(size=shape).astype(np.float32) * 100
    z[1:3, 2:4] = np.nan
    a = block_mean_pyramid(z, levels)
    b = streamed_pyramid(lambda r0, r1: z[r0:r1], z.shape, levels, strip_log2=strip_log2)
    assert len(a) == len(b) and all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


def test_sampler_of_a_lazy_store_equals_the_loaded_one(tmp_path, terrain_factory):
    """A zarr store opened lazily (chunks={}) gives the same pyramid and patches, read strip by strip."""
    from topo2vec_lib.terrain import open_terrain, save_terrain

    z = np.random.default_rng(1).normal(size=(700, 650)).cumsum(axis=0).cumsum(axis=1)
    save_terrain(terrain_factory(z), tmp_path / "t.zarr", chunk_px=128)
    lazy = open_terrain(tmp_path / "t.zarr", chunks={})
    assert lazy.chunks is not None
    a, b = PatchSampler(open_terrain(tmp_path / "t.zarr")), PatchSampler(lazy)
    assert all(np.array_equal(x, y) for x, y in zip(a.pyramid, b.pyramid))
    lon, lat = a.random_places(20, res_m=120, rng=0)
    assert np.array_equal(a.patches(lon, lat, 120), b.patches(lon, lat, 120))
