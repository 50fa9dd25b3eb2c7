"""Terrain sources, windows and regions, GeoTIFF reprojection, storage, hillshade, the terrain notebook."""
import json
import sys
import types

import numpy as np
import pytest
import rasterio
from conftest import make_terrain, regions
from rasterio.transform import from_origin

from topo2vec_lib.grid import (
    PAPER_REGIONS,
    grid_coords,
    hillshade,
    lonlat_to_xy,
    region_window,
    slope_deg,
    window_bounds,
    xy_to_lonlat,
)
from topo2vec_lib.terrain import geotiff_terrain, load_terrain, open_terrain, save_terrain

TRAIN_C = (12.0, 47.2)


def test_lonlat_round_trip_is_vectorised():
    lon, lat = np.array([[7.6, 12.0], [5.1, 14.9]]), np.array([[46.6, 47.2], [45.1, 49.9]])
    x, y = lonlat_to_xy("EPSG:3035", lon, lat)
    assert x.shape == (2, 2) and 3.9e6 < x.min() < x.max() < 4.9e6 and 2.4e6 < y.min() < y.max() < 3.0e6
    lon2, lat2 = xy_to_lonlat("EPSG:3035", x, y)
    np.testing.assert_allclose(lon2, lon, atol=1e-9)
    np.testing.assert_allclose(lat2, lat, atol=1e-9)


def test_window_is_snapped_and_matches_the_test_helper():
    b = window_bounds(TRAIN_C, 3.0, 30.0)
    assert b[2] - b[0] == 3000.0 and b[3] - b[1] == 3000.0
    assert all(v % 30.0 == 0 for v in b)
    x, y = grid_coords(b, 30.0)
    ref = make_terrain(np.zeros((100, 100)), 30.0, TRAIN_C)
    np.testing.assert_array_equal(x, ref.x)
    np.testing.assert_array_equal(y, ref.y)
    # the centre lies in the window
    cx, cy = lonlat_to_xy("EPSG:3035", *TRAIN_C)
    assert b[0] < cx < b[2] and b[1] < cy < b[3]


def test_region_checks():
    assert PAPER_REGIONS["train"] == (10.0, 45.0, 15.0, 50.0)
    region_window("train", TRAIN_C, 36.0, 30.0)
    with pytest.raises(ValueError, match="not inside region 'train'"):
        region_window("train", (10.1, 47.0), 36.0, 30.0)  # straddles lon 10
    with pytest.raises(ValueError, match="not inside region 'test'"):
        region_window("test", TRAIN_C, 4.0, 30.0)
    with pytest.raises(ValueError, match="unknown region"):
        region_window("moon", TRAIN_C, 4.0, 30.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(res_m=0), "res_m"), (dict(res_m=-30), "res_m"), (dict(res_m=float("nan")), "res_m"),
    (dict(size_km=0), "size_km"), (dict(crs="EPSG:4326"), "metres"), (dict(crs="EPSG:999999"), "not a valid CRS"),
    (dict(center_lonlat=(200.0, 47.0)), "center_lonlat"), (dict(center_lonlat="12"), "center_lonlat"),
])
def test_load_terrain_bad_inputs(kwargs, match):
    args = dict(center_lonlat=TRAIN_C, size_km=2.0, res_m=30)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        load_terrain("synthetic", "train", **args)


def test_unknown_source_and_missing_geotiff_path():
    with pytest.raises(ValueError, match=r"unknown terrain source 'srtm'.*synthetic.*geotiff.*copernicus"):
        load_terrain("srtm", "train", center_lonlat=TRAIN_C, size_km=2.0)
    with pytest.raises(ValueError, match="geotiff_path"):
        load_terrain("geotiff", "train", center_lonlat=TRAIN_C, size_km=2.0)


def test_load_synthetic_follows_the_contract():
    da = load_terrain("synthetic", "train", center_lonlat=TRAIN_C, size_km=2.0, res_m=30, seed=1)
    assert da.dims == ("y", "x") and da.dtype == np.float32 and da.shape == (67, 67)
    assert da.attrs["source"] == "synthetic" and da.attrs["region"] == "train"
    assert da.attrs["region_lonlat"] == [10.0, 45.0, 15.0, 50.0] and da.attrs["res_m"] == 30.0
    assert str(da.rio.crs) == "EPSG:3035" and da.rio.transform().a == 30.0 and da.rio.transform().e == -30.0


def test_copernicus_branch_calls_the_downloader(monkeypatch):
    calls = []

    def fake(bounds, crs, res_m, cache_dir):
        calls.append((bounds, crs, res_m, cache_dir))
        x, y = grid_coords(bounds, res_m)
        return make_terrain(np.full((y.size, x.size), 500.0), res_m, TRAIN_C, crs=crs)

    monkeypatch.setitem(sys.modules, "topo2vec_lib.copernicus", types.SimpleNamespace(copernicus_terrain=fake))
    da = load_terrain("copernicus", "train", center_lonlat=TRAIN_C, size_km=1.5, res_m=30, cache_dir="x/raw")
    assert calls == [(window_bounds(TRAIN_C, 1.5, 30), "EPSG:3035", 30.0, "x/raw")]
    assert da.attrs["source"] == "copernicus" and da.attrs["region"] == "train"


# ------------------------------------------------------------------ GeoTIFF
LON0, LAT0 = 11.85, 47.3  # north-west corner of the test GeoTIFFs


def _surface(lon, lat):
    """An analytic elevation field (m) of lon/lat degrees."""
    return 1200.0 + 3000.0 * (lon - 11.9) - 2000.0 * (lat - 47.25) + 80.0 * np.sin(60.0 * lon) * np.cos(80.0 * lat)


def _write_lonlat_tif(path, step_deg, n, nodata_box=None, crs="EPSG:4326"):
    lon = LON0 + (np.arange(n) + 0.5) * step_deg
    lat = LAT0 - (np.arange(n) + 0.5) * step_deg
    arr = _surface(*np.meshgrid(lon, lat)).astype(np.float32)
    if nodata_box is not None:
        arr[nodata_box] = -9999.0
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32", crs=crs,
                       transform=from_origin(LON0, LAT0, step_deg, step_deg), nodata=-9999.0) as ds:
        ds.write(arr, 1)
    return path


def _expected(da):
    x, y = np.meshgrid(da.x.values, da.y.values)
    return _surface(*xy_to_lonlat("EPSG:3035", x, y))


@pytest.mark.parametrize("step_deg, n, res_m, tol_m", [
    (1 / 3600, 400, 60.0, 1.5),   # 1" (~21 x 31 m) source averaged into 60 m pixels
    (3 / 3600, 150, 30.0, 1.5),   # 3" (~63 x 93 m) source bilinearly interpolated into 30 m pixels
])
def test_geotiff_is_reprojected_onto_the_study_grid(tmp_path, step_deg, n, res_m, tol_m):
    path = _write_lonlat_tif(tmp_path / "dem.tif", step_deg, n)
    bounds = window_bounds((11.9, 47.25), 2.4, res_m)
    da = geotiff_terrain(path, bounds, "EPSG:3035", res_m)
    assert da.dtype == np.float32 and str(da.rio.crs) == "EPSG:3035" and da.attrs["res_m"] == res_m
    assert da.shape == (round(2400 / res_m),) * 2
    err = np.abs(da.values - _expected(da))
    assert np.isfinite(da.values).all()
    assert err.max() < tol_m, err.max()


def test_geotiff_nodata_and_uncovered_cells_become_nan(tmp_path):
    path = _write_lonlat_tif(tmp_path / "dem.tif", 1 / 3600, 300, nodata_box=(slice(100, 160), slice(100, 160)))
    # a window reaching past the file's east edge (file spans lon 11.85..11.933)
    bounds = window_bounds((11.915, 47.265), 5.0, 30.0)
    da = geotiff_terrain(path, bounds, "EPSG:3035", 30.0)
    x, y = np.meshgrid(da.x.values, da.y.values)
    lon, lat = xy_to_lonlat("EPSG:3035", x, y)
    assert np.isnan(da.values[lon > LON0 + 300 / 3600 + 0.001]).all()
    hole = ((lon > LON0 + 105 / 3600) & (lon < LON0 + 155 / 3600) & (lat < LAT0 - 105 / 3600)
            & (lat > LAT0 - 155 / 3600))
    assert hole.any() and np.isnan(da.values[hole]).all()
    inside = ((lon > LON0 + 165 / 3600) & (lon < LON0 + 290 / 3600) & (lat < LAT0 - 10 / 3600)
              & (lat > LAT0 - 290 / 3600))
    assert inside.any() and np.isfinite(da.values[inside]).all()


def test_load_terrain_from_geotiff(tmp_path):
    path = _write_lonlat_tif(tmp_path / "dem.tif", 1 / 3600, 400)
    da = load_terrain("geotiff", "train", center_lonlat=(11.9, 47.25), size_km=2.0, res_m=30, geotiff_path=path)
    assert da.attrs["source"] == "geotiff" and da.attrs["region"] == "train"
    assert np.abs(da.values - _expected(da)).max() < 1.5


def test_geotiff_bad_files(tmp_path):
    bounds = window_bounds((11.9, 47.25), 1.0, 30.0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        geotiff_terrain(tmp_path / "missing.tif", bounds, "EPSG:3035", 30.0)
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00 this is not a tiff at all" * 10)
    with pytest.raises(ValueError, match="not a readable GeoTIFF"):
        geotiff_terrain(bad, bounds, "EPSG:3035", 30.0)
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", width=10, height=10, count=1, dtype="float32",
                       transform=from_origin(0, 10, 1, 1)) as ds:
        ds.write(np.zeros((10, 10), np.float32), 1)
    with pytest.raises(ValueError, match="no CRS"):
        geotiff_terrain(nocrs, bounds, "EPSG:3035", 30.0)
    far = _write_lonlat_tif(tmp_path / "far.tif", 1 / 3600, 50)
    with pytest.raises(ValueError, match="does not cover"):
        geotiff_terrain(far, window_bounds((13.0, 46.0), 1.0, 30.0), "EPSG:3035", 30.0)


# ------------------------------------------------------------------ storage
@pytest.mark.parametrize("name", ["t.zarr", "t.tif"])
def test_save_open_round_trip(tmp_path, name):
    z = np.random.default_rng(0).normal(1000, 50, size=(40, 30)).astype(np.float32)
    z[3, 4] = np.nan
    da = make_terrain(z, 30.0, TRAIN_C)
    path = save_terrain(da, tmp_path / name)
    back = open_terrain(path)
    np.testing.assert_array_equal(back.values, da.values)
    assert back.dtype == np.float32 and back.dims == ("y", "x")
    np.testing.assert_array_equal(back.x, da.x)
    np.testing.assert_array_equal(back.y, da.y)
    assert back.rio.crs == da.rio.crs and back.rio.transform() == da.rio.transform()
    assert {k: back.attrs[k] for k in ("res_m", "region", "region_lonlat", "source")} == \
           {k: da.attrs[k] for k in ("res_m", "region", "region_lonlat", "source")}
    lazy = open_terrain(path, chunks={"y": 16, "x": 16})
    assert lazy.chunks is not None and np.array_equal(lazy.values, da.values, equal_nan=True)


def test_zarr_is_chunked_and_overwrite_is_atomic(tmp_path):
    import zarr

    da = make_terrain(np.ones((600, 20), np.float32), 30.0, TRAIN_C)
    path = save_terrain(da, tmp_path / "t.zarr")
    assert zarr.open_group(str(path), mode="r")["elevation"].chunks == (512, 20)
    save_terrain(da * 2, path)  # replaces the old store
    assert float(open_terrain(path).max()) == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.zarr"]  # no temporary left behind


def test_open_terrain_bad_stores(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_terrain(tmp_path / "missing.zarr")
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / "zarr.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable terrain store"):
        open_terrain(junk)
    bad_tif = tmp_path / "bad.tif"
    bad_tif.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable terrain store"):
        open_terrain(bad_tif)


# ------------------------------------------------------------------ derived rasters
def test_slope_and_hillshade():
    y, x = np.mgrid[0:20, 0:20]
    plane = 30.0 * x.astype(float)  # rises east at 45 degrees with 30 m pixels
    np.testing.assert_allclose(slope_deg(plane, 30.0), 45.0)
    flat = hillshade(np.zeros((5, 5)), res_m=30.0)
    np.testing.assert_allclose(flat, np.sin(np.radians(45.0)))
    # light from the north-west: a slope facing west (rising east) is lit, one facing east is shaded
    west_facing = hillshade(plane, res_m=30.0)
    east_facing = hillshade(-plane, res_m=30.0)
    assert (west_facing > flat.mean()).all() and (east_facing < flat.mean()).all()
    # north-facing (ground rising towards the south = row index) vs south-facing, same light
    north_facing = hillshade(30.0 * y.astype(float), res_m=30.0)
    assert north_facing.mean() > hillshade(-30.0 * y.astype(float), res_m=30.0).mean()
    da = make_terrain(np.random.default_rng(1).normal(size=(30, 30)) * 100, 30.0)
    hs = hillshade(da)
    assert hs.shape == (30, 30) and hs.min() >= 0 and hs.max() <= 1
    with pytest.raises(ValueError, match="res_m"):
        hillshade(np.zeros((3, 3)))


# ------------------------------------------------------------------ notebook
@pytest.mark.slow
def test_terrain_notebook_smoke(tmp_path, notebook_runner):
    params = dict(regions=regions(4), res_m=30, scheduler="sync", out_dir=str(tmp_path / "terrain"),
                  plots_dir=str(tmp_path / "plots"), metrics_path=str(tmp_path / "metrics" / "terrain.json"))
    notebook_runner("terrain", tmp_path / "nb", params)
    for region in ("train", "test"):
        da = open_terrain(tmp_path / "terrain" / f"{region}.zarr")
        assert da.shape == (133, 133) and da.attrs["region"] == region and da.attrs["source"] == "synthetic"
    assert (tmp_path / "plots" / "terrain_hillshade.png").stat().st_size > 10_000
    assert (tmp_path / "plots" / "terrain_relief.png").stat().st_size > 10_000
    metrics = json.loads((tmp_path / "metrics" / "terrain.json").read_text())
    for region in ("train", "test"):
        m = metrics[region]
        assert m["shape"] == [133, 133] and m["res_m"] == 30.0 and m["nodata_fraction"] == 0.0
        assert m["elevation_min_m"] < m["elevation_mean_m"] < m["elevation_max_m"]
        assert 0.0 < m["slope_median_deg"] < 60.0 and 0.3 < m["hurst"] < 1.2
    assert metrics["train"]["elevation_mean_m"] != metrics["test"]["elevation_mean_m"]


@pytest.mark.slow
def test_terrain_notebook_checks_both_windows_before_writing(tmp_path, notebook_runner):
    """A test window outside its polygon fails before the train terrain is written (it used to be written)."""
    import papermill

    params = dict(regions=regions(4, test_center=(12.0, 47.2)), res_m=30, scheduler="sync",
                  out_dir=str(tmp_path / "terrain"), plots_dir=str(tmp_path / "plots"),
                  metrics_path=str(tmp_path / "metrics" / "terrain.json"))
    with pytest.raises(papermill.PapermillExecutionError, match="not inside region 'test'"):
        notebook_runner("terrain", tmp_path / "nb", params)
    assert not (tmp_path / "terrain").exists() and not (tmp_path / "metrics").exists()
