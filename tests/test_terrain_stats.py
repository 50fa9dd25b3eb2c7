"""terrain_stats: statistics of a terrain with known answers on analytic surfaces, and the real-terrain fixture."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import make_terrain

from topo2vec_lib import terrain_stats as ts

FIXTURE = Path(__file__).parent / "data" / "real" / "glo30_N34W119_san_gabriel_256.tif"


def plane(ny: int, nx: int, slope_deg: float, res_m: float = 30.0) -> np.ndarray:
    """A plane rising east at ``slope_deg``."""
    return np.tile(np.arange(nx) * res_m * math.tan(math.radians(slope_deg)), (ny, 1)) + 500.0


def spectral_fbm(n: int, hurst: float, seed: int) -> np.ndarray:
    """Isotropic fBm-like surface ``(n, n)`` by spectral synthesis (amplitude ``k^-(H+1)``), cropped from 2n."""
    rng = np.random.default_rng(seed)
    m = 2 * n
    k = np.hypot(np.fft.fftfreq(m)[:, None], np.fft.rfftfreq(m)[None, :])
    amp = np.where(k > 0, np.maximum(k, 1e-12) ** -(hurst + 1.0), 0.0)
    f = np.fft.irfft2(amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)), s=(m, m))
    return f[:n, :n] / f[:n, :n].std() * 100.0


# ---------------------------------------------------------------------------------------------- slope, curvature
def test_plane_slope_and_zero_curvature():
    z = plane(40, 50, 20.2)
    s = ts.slope_distribution(z, 30.0)
    assert s["slope_p1_deg"] == pytest.approx(20.2, abs=1e-9)
    assert s["slope_p99_deg"] == pytest.approx(20.2, abs=1e-9)
    assert s["slope_fraction_below_2deg"] == 0.0 and s["slope_fraction_above_30deg"] == 0.0
    assert sum(s["slope_hist_fraction"]) == pytest.approx(1.0)
    assert s["slope_hist_fraction"][40] == pytest.approx(1.0)  # the [20, 20.5) degree bin
    c = ts.curvatures(z, 30.0)
    for name in ("profile", "tangential", "plan"):
        v = c[name][np.isfinite(c[name])]
        assert v.size == 38 * 48 and np.abs(v).max() < 1e-12, name


@pytest.mark.parametrize("step_px", [1, 2])
def test_paraboloid_curvatures_are_exact(step_px):
    """z = -(x^2 + y^2) / (2R): profile (1/R)/(1+g^2)^1.5, tangential (1/R)/(1+g^2)^0.5, plan 1/d (convex +)."""
    res, radius, n = 10.0, 800.0, 101
    y, x = np.mgrid[0:n, 0:n]
    xm, ym = (x - 50) * res, (50 - y) * res  # x east, y north, top at the centre
    dome = 1000.0 - (xm ** 2 + ym ** 2) / (2 * radius)
    for sign, z in ((1.0, dome), (-1.0, -dome)):
        c = ts.curvatures(z, res, step_px=step_px, min_slope_deg=0.5)
        for row, col in [(50, 80), (20, 50), (10, 90), (70, 35)]:
            d = math.hypot(xm[row, col], ym[row, col])
            g = d / radius
            assert c["profile"][row, col] == pytest.approx(sign / radius / (1 + g * g) ** 1.5, rel=1e-9)
            assert c["tangential"][row, col] == pytest.approx(sign / radius / math.sqrt(1 + g * g), rel=1e-9)
            assert c["plan"][row, col] == pytest.approx(sign / d, rel=1e-9)
        assert np.isnan(c["plan"][50, 50])  # flat top: plan curvature undefined
        assert np.isnan(c["profile"][:step_px]).all()  # the window leaves the grid
    dist = ts.curvature_distribution(dome, res)
    assert dist["curv_profile_convex_fraction"] == 1.0 and dist["curv_tangential_convex_fraction"] == 1.0
    assert dist["curv_profile_p50_per_m"] > 0


def test_curvature_sign_on_a_valley_and_a_ridge():
    """A V valley (concave across the slope) and the same surface upside down (a ridge)."""
    res = 30.0
    y, x = np.mgrid[0:60, 0:60]
    valley = 0.3 * np.sqrt(((x - 30) * res) ** 2 + 60.0 ** 2) - 0.1 * y * res  # smooth-bottomed V draining south
    c = ts.curvatures(valley, res)
    assert c["tangential"][20:40, 29:32].max() < 0       # valley floor: concave across
    c = ts.curvatures(-valley, res)
    assert c["tangential"][20:40, 29:32].min() > 0       # ridge crest: convex across


# ---------------------------------------------------------------------------------------------- roughness
def test_plane_roughness_is_linear_in_the_lag():
    r = ts.roughness_vs_lag(plane(64, 64, 10.0), 30.0, lags_px=(1, 2, 4, 8, 16))
    assert r["roughness_lag_m"] == [30.0, 60.0, 120.0, 240.0, 480.0]
    assert r["hurst"] == pytest.approx(1.0, abs=1e-6)
    # half the pairs (along x) differ by lag * tan(10 deg), the other half (along y) by 0: std = d/2
    assert r["roughness_std_m"][0] == pytest.approx(0.5 * 30.0 * math.tan(math.radians(10.0)), rel=0.02)


@pytest.mark.parametrize("hurst", [0.5, 0.8])
def test_fbm_hurst_exponent_is_recovered(hurst):
    est = [ts.roughness_vs_lag(spectral_fbm(384, hurst, seed), 30.0, lags_px=(2, 3, 4, 6, 8, 12, 16, 24, 32),
                               hurst_max_lag_m=1e9)["hurst"] for seed in (0, 1)]
    assert np.mean(est) == pytest.approx(hurst, abs=0.06)


# ---------------------------------------------------------------------------------------------- relief, hypsometry
def test_local_relief_and_hypsometry_of_a_plane():
    z = plane(80, 100, 5.0)
    rel = ts.local_relief(z, 30.0, window_m=300.0)      # 11 px window: 10 steps of 30 m
    inner = rel[np.isfinite(rel)]
    assert inner.size == (80 - 10) * (100 - 10)
    assert np.allclose(inner, 10 * 30.0 * math.tan(math.radians(5.0)))
    h = ts.hypsometry(z)
    assert h["hypsometric_integral"] == pytest.approx(0.5, abs=1e-9)
    assert h["hypsometry_area_above"][0] == 1.0
    assert h["hypsometry_area_above"][10] == pytest.approx(0.5, abs=0.011)   # relative height 0.5


# ---------------------------------------------------------------------------------------------- prominence
def test_prominence_density_of_two_cones():
    """Cones of 600 and 400 m, 2520 m apart, slope 0.2: col (600 + 400 - 0.2 * 2520) / 2 = 248 m (on the
    30 m grid within half a pixel's drop, 3 m), so the lower cone's prominence is about 152 m."""
    res, n = 30.0, 301
    y, x = np.mgrid[0:n, 0:n] * res
    c1, c2 = (4500.0, 4500.0 - 1260.0), (4500.0, 4500.0 + 1260.0)   # 84 px apart (2520 m)
    z = np.maximum(np.maximum(600 - 0.2 * np.hypot(y - c1[0], x - c1[1]),
                              400 - 0.2 * np.hypot(y - c2[0], x - c2[1])), 0.0)
    z += 1e-3 * x / res  # break the ties of the flat floor
    peaks = ts.interior_peaks(z)
    big = peaks[1][peaks[1] >= 20]
    assert len(big) == 2
    assert sorted(big)[0] == pytest.approx(400 - (1000 - 0.2 * 2520) / 2, abs=3.0)
    assert sorted(big)[1] == pytest.approx(600.0, abs=0.2)  # the highest: its elevation above the minimum (+ tilt)
    p = ts.prominence_density(z, res, thresholds_m=(20, 100, 200, 300), peaks=peaks)
    area = n * n * res * res / 1e6
    assert p["peak_count"] == [2, 2, 1, 1]
    assert p["peak_density_per_km2"][0] == pytest.approx(2 / area)


# ---------------------------------------------------------------------------------------------- drainage
def test_drainage_density_of_a_tilted_plane():
    """Flow runs east along each row; interior cell j drains j cells (column 0 is an outlet on its own)."""
    res, ny, nx = 30.0, 50, 200
    z = np.tile(-0.1 * res * np.arange(nx), (ny, 1)) + 1000.0
    d = ts.drainage_density(z, res, area_thresholds_km2=(0.1, 0.5))
    first = math.ceil(0.1 / (res * res / 1e6))        # j >= 112 (111.1 cells of 900 m2)
    length_km = (ny - 2) * (nx - first) * res / 1000   # the last column (outlet) counts one res_m
    assert d["drainage_density_per_km"][0] == pytest.approx(length_km / (ny * nx * res * res / 1e6))
    assert d["drainage_density_per_km"][1] == 0.0
    assert d["filled_fraction"] == 0.0


def test_concavity_index_of_a_stream_power_profile():
    """Rows draining east with S = ks A^-theta between cells: the fit recovers theta and ks."""
    res, ny, nx, theta, ks = 100.0, 12, 1000, 0.45, 0.05
    cell_km2 = res * res / 1e6
    j = np.arange(nx)
    s = ks * (np.maximum(j, 1) * cell_km2) ** -theta          # slope from cell j to j + 1
    z_row = np.concatenate([[0.0], -np.cumsum(s[:-1] * res)]) + 5000.0
    z = np.tile(z_row, (ny, 1))
    d = ts.drainage_density(z, res, concavity_min_area_km2=0.5)
    assert d["concavity_theta"] == pytest.approx(theta, abs=0.01)
    assert d["steepness_ks"] == pytest.approx(ks, rel=0.05)


# ---------------------------------------------------------------------------------------------- all and compare
def test_terrain_statistics_is_json_and_handles_nodata():
    z = spectral_fbm(96, 0.8, 3) + 1000.0
    z[:10, :20] = np.nan
    s = ts.terrain_statistics(make_terrain(z, 30.0))
    json.dumps(s, allow_nan=False)
    assert s["nodata_fraction"] == pytest.approx(200 / 96 ** 2)
    assert s["res_m"] == 30.0 and s["shape"] == [96, 96]
    assert len(s["by_relief_slope_p50_deg"]) == len(ts.RELIEF_CLASS_EDGES_M) - 1
    assert len(s["by_area_slope_median"]) == len(ts.AREA_CLASS_EDGES_KM2) - 1
    assert set(s["seconds"]) >= {"slope", "curvature", "roughness", "prominence", "drainage"}


def test_compare_statistics():
    a = ts.terrain_statistics(plane(40, 40, 20.2), 30.0, hydrology=False, prominence=False)
    b = ts.terrain_statistics(plane(40, 40, 30.2), 30.0, hydrology=False, prominence=False)
    same = ts.compare_statistics(a, a)
    assert same["ks_slope"] == 0.0 and same["w1_slope_deg"] == 0.0
    assert all(r == pytest.approx(1.0) for r in same["ratio_roughness"])
    diff = ts.compare_statistics(a, b)
    assert diff["ks_slope"] == 1.0
    assert diff["w1_slope_deg"] == pytest.approx(10.0)
    assert diff["ratio_slope_p50"] == pytest.approx(30.2 / 20.2)
    expected = math.tan(math.radians(30.2)) / math.tan(math.radians(20.2))
    assert diff["ratio_roughness"][0] == pytest.approx(expected, rel=1e-6)
    assert diff["diff_hurst"] == pytest.approx(0.0, abs=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="res_m"):
        ts.terrain_values(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="res_m"):
        ts.terrain_values(np.zeros((5, 5)), res_m=-3)
    with pytest.raises(ValueError, match="no valid"):
        ts.terrain_values(np.full((5, 5), np.nan), res_m=30)
    with pytest.raises(ValueError, match="at least 3x3"):
        ts.terrain_values(np.zeros((2, 5)), res_m=30)
    geographic = make_terrain(np.zeros((5, 5)), 30.0).rio.write_crs("EPSG:4326")
    with pytest.raises(ValueError, match="projected CRS in metres"):
        ts.terrain_values(geographic)
    with pytest.raises(ValueError, match="step_px"):
        ts.quadratic_coefficients(np.zeros((9, 9)), 30.0, step_px=0)
    with pytest.raises(ValueError, match="do not match"):
        ts._cdf_distances([0, 1, 2], [0.5, 0.5], [1.0])


# ---------------------------------------------------------------------------------------------- real fixture
def test_real_fixture_loads_and_looks_like_mountains():
    """The GLO-30 clip of the San Gabriel Mountains, through geotiff_terrain into UTM 11N at 30 m."""
    import rasterio

    from topo2vec_lib.grid import window_bounds
    from topo2vec_lib.terrain import geotiff_terrain

    with rasterio.open(FIXTURE) as src:
        assert src.crs.to_epsg() == 4326 and src.shape == (256, 256)
        assert "Airbus Defence and Space" in src.tags()["ATTRIBUTION"]
    bounds = window_bounds((-118.15, 34.32), 5.0, 30.0, "EPSG:32611")
    da = geotiff_terrain(FIXTURE, bounds, "EPSG:32611", 30.0)
    assert da.shape == (167, 167) and not np.isnan(da.values).any()
    s = ts.terrain_statistics(da)
    assert 679 <= s["elevation_min_m"] < s["elevation_max_m"] <= 1818
    assert 20 <= s["slope_p50_deg"] <= 32           # steep, dissected mountains
    assert s["slope_p90_deg"] <= 45
    assert 0.8 <= s["hurst_short"] <= 1.0 and 0.5 <= s["hurst"] <= 0.95
    assert 200 <= s["relief1000m_p50_m"] <= 600
    assert s["curv_profile_sharp_fraction"] < 0.08    # 0.053 here; the v1 synthetic mountains: 0.08-0.10
    assert 0.1 <= s["peak_density_per_km2"][0] <= 2.0
    assert 1.0 <= s["drainage_density_per_km"][0] <= 4.0
    assert s["by_area_curv_tangential_median_per_m"][0] > 0   # divides convex
    assert min(v for v in s["by_area_curv_tangential_median_per_m"][2:6] if v is not None) < 0  # valleys concave
