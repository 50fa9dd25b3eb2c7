"""Property-based tests (hypothesis): the sampler and the label rules on random terrains, places and scales.

Terrains are drawn from a seed (numpy), not element by element, so each example is cheap; the example counts
are small because the suite shares two cores.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_terrain
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter

from topo2vec_lib import labels as L
from topo2vec_lib.hydrology import fill_depressions
from topo2vec_lib.sampler import OutsideTerrainError, PatchSampler

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_relief(seed: int, ny: int, nx: int, smooth: float = 2.0) -> np.ndarray:
    """Relief in metres: smooth noise over a slope, plus white noise (no exact ties)."""
    rng = np.random.default_rng(seed)
    z = gaussian_filter(rng.normal(size=(ny, nx)), smooth) * 300 + rng.normal(size=(ny, nx))
    return (z + 1500 + np.linspace(0, 50, nx)[None, :]).astype(np.float32)


@st.composite
def terrains(draw, nodata: bool = False):
    """(terrain DataArray, its numpy values): random size, pixel size, place in Europe and relief."""
    ny, nx = draw(st.integers(20, 70)), draw(st.integers(20, 70))
    res_m = draw(st.sampled_from([10.0, 30.0, 90.0]))
    lon, lat = draw(st.floats(0.0, 25.0)), draw(st.floats(40.0, 60.0))
    z = random_relief(draw(st.integers(0, 2**31 - 1)), ny, nx)
    if nodata:
        r, c = draw(st.integers(0, ny - 1)), draw(st.integers(0, nx - 1))
        z[max(0, r - 2):r + 3, max(0, c - 2):c + 3] = np.nan
    return make_terrain(z, res_m=res_m, center_lonlat=(lon, lat), region="any"), z


@SETTINGS
@given(t=terrains(), size=st.integers(2, 21), scale=st.floats(1.0, 4.0), u=st.floats(0, 1), v=st.floats(0, 1))
def test_patches_inside_the_terrain_are_finite_and_shaped(t, size, scale, u, v):
    terrain, _ = t
    s = PatchSampler(terrain, threads=1)
    res_m = s.res_m * scale
    left, bottom, right, top = s.bounds_xy
    half = size * res_m / 2
    assume(right - left >= 2 * half and top - bottom >= 2 * half)
    x = left + half + u * (right - left - 2 * half)
    y = bottom + half + v * (top - bottom - 2 * half)
    p = s.patches_xy([x], [y], res_m, size)
    assert p.shape == (1, size, size) and p.dtype == np.float32 and np.isfinite(p).all()
    z = terrain.values
    assert z.min() - 1e-3 <= p.min() and p.max() <= z.max() + 1e-3       # interpolation never overshoots
    assert s.valid_xy([x], [y], res_m, size).all()


@SETTINGS
@given(t=terrains(), size=st.integers(2, 21), scale=st.floats(1.0, 4.0), u=st.floats(-1, 2), side=st.integers(0, 3),
       out_px=st.floats(0.01, 50.0))
def test_footprints_leaving_the_terrain_are_an_error(t, size, scale, u, side, out_px):
    terrain, _ = t
    s = PatchSampler(terrain, threads=1)
    res_m = s.res_m * scale
    left, bottom, right, top = s.bounds_xy
    half = size * res_m / 2
    beyond = out_px * s.res_m            # how far the footprint's edge passes the terrain's
    x = left + u * (right - left)
    y = bottom + u * (top - bottom)
    if side == 0:
        x = left + half - beyond
    elif side == 1:
        x = right - half + beyond
    elif side == 2:
        y = bottom + half - beyond
    else:
        y = top - half + beyond
    with pytest.raises(OutsideTerrainError, match="leaves the terrain"):
        s.patches_xy([x], [y], res_m, size)
    assert not s.valid_xy([x], [y], res_m, size).any()


@SETTINGS
@given(t=terrains(), half=st.integers(1, 8), u=st.floats(0, 1), v=st.floats(0, 1))
def test_native_patches_on_pixel_centres_are_the_pixels(t, half, u, v):
    terrain, z = t
    ny, nx = z.shape
    size = 2 * half + 1
    assume(ny >= size and nx >= size)
    r = half + int(u * (ny - size))
    c = half + int(v * (nx - size))
    s = PatchSampler(terrain, threads=1)
    x, y = terrain.x.values[c], terrain.y.values[r]
    p = s.patches_xy([x], [y], s.res_m, size)[0]
    np.testing.assert_allclose(p, z[r - half:r + half + 1, c - half:c + half + 1], rtol=0, atol=1e-3)


@SETTINGS
@given(t=terrains(nodata=True), u=st.floats(0, 1), v=st.floats(0, 1))
def test_lonlat_places_drawn_by_random_places_give_finite_patches(t, u, v):
    terrain, _ = t
    s = PatchSampler(terrain, threads=1)
    assume(min(terrain.shape) >= 30)
    lon, lat = s.random_places(3, [int(u * 1e6), int(v * 1e6)], s.res_m, size=9, max_tries=5000)
    p = s.patches(lon, lat, s.res_m, size=9)
    assert p.shape == (3, 9, 9) and np.isfinite(p).all()


# ------------------------------------------------------------------------------------------------ label rules
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(12, 48), smooth=st.floats(1.0, 4.0),
       prominence_m=st.floats(0.0, 80.0), merge_px=st.floats(0.0, 6.0))
def test_peaks_are_interior_local_maxima_prominent_enough_and_apart(seed, n, smooth, prominence_m, merge_px):
    z = random_relief(seed, n, n, smooth).astype(np.float64)
    res = 30.0
    rows, cols = L.peak_cells(z, res, prominence_m=prominence_m, merge_m=merge_px * res)
    prom = L.topographic_prominence(z)
    by_cell = dict(zip(prom.peak.tolist(), prom.prominence_m.tolist()))
    for r, c in zip(rows, cols):
        assert 0 < r < n - 1 and 0 < c < n - 1                         # never on the window edge
        assert z[r, c] == z[r - 1:r + 2, c - 1:c + 2].max()            # a local maximum
        assert by_cell[r * n + c] >= prominence_m                      # prominent enough
    pts = np.column_stack([rows, cols]).astype(float)
    if len(pts) > 1 and merge_px > 0:
        d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
        assert d[np.triu_indices(len(pts), 1)].min() >= merge_px - 1e-6  # merged peaks are apart


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(12, 40), min_depth=st.floats(0.05, 20.0))
def test_sinkholes_are_deep_enough_at_their_lowest_cell(seed, n, min_depth):
    rng = np.random.default_rng(seed)
    z = random_relief(seed, n, n).astype(np.float64)
    for _ in range(3):                                         # dig a few pits
        r, c = rng.integers(2, n - 2, size=2)
        z[r - 1:r + 2, c - 1:c + 2] -= rng.uniform(0, 30)
    rows, cols = L.sinkhole_cells(z, 30.0, min_depth_m=min_depth, min_area_m2=0.0, max_area_m2=1e12)
    depth = fill_depressions(z) - z
    for r, c in zip(rows, cols):
        assert depth[r, c] >= min_depth - 1e-6


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(16, 40), label_seed=st.integers(0, 1000))
def test_derived_cells_lie_in_the_dem_and_repeat_for_a_seed(seed, n, label_seed):
    z = random_relief(seed, n, n).astype(np.float64)
    a = L.derive_cells(z, 30.0, seed=label_seed, peak_prominence_m=5.0)
    b = L.derive_cells(z, 30.0, seed=label_seed, peak_prominence_m=5.0)
    assert set(a) == set(L.CLASSES)
    for name, (rows, cols) in a.items():
        assert ((rows >= 0) & (rows < n) & (cols >= 0) & (cols < n)).all(), name
        np.testing.assert_array_equal(rows, b[name][0])
        np.testing.assert_array_equal(cols, b[name][1])
