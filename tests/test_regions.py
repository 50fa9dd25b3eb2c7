"""Regions as parameters: boxes and polygon files, windows inside them, the study CRS (given or auto), and the
study on a user's GeoTIFF of any place (here a real GLO-30 clip of the San Gabriel Mountains, in UTM)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, copy_repo, regions, tiny_params

from topo2vec_lib import regions as R
from topo2vec_lib.grid import points_in_polygon, window_bounds

FIXTURE = REPO / "tests" / "data" / "real" / "glo30_N34W119_san_gabriel_256.tif"
# two boxes side by side inside the fixture (lon -118.18569..-118.11458, lat 34.28458..34.35569)
SAN_GABRIEL = {"train": {"box": [-118.185, 34.286, -118.151, 34.355], "center": None, "size_km": [2.8, 6.0]},
               "test": {"box": [-118.149, 34.286, -118.115, 34.355], "center": None, "size_km": [2.8, 6.0]}}


def test_the_default_regions_are_the_papers_polygons():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    regs = R.regions_from(params["data"]["regions"])
    assert regs["train"].box == (10.0, 45.0, 15.0, 50.0) and regs["test"].box == (5.0, 45.0, 10.0, 50.0)
    assert R.resolve_crs(params["data"]["crs"], regs) == "EPSG:3035" and R.auto_crs(regs) == "EPSG:3035"
    b = regs["train"].window(30.0, "EPSG:3035")
    assert b == window_bounds((12.0, 47.2), 60, 30.0, "EPSG:3035")


def test_center_null_is_the_middle_of_the_box_and_sizes_may_be_rectangles():
    r = R.region_from("train", {"box": [10, 46, 12, 48], "center": None, "size_km": [30, 20]})
    assert r.center == (11.0, 47.0) and r.size_km == (30.0, 20.0)
    xmin, ymin, xmax, ymax = r.window(30.0, "EPSG:3035")
    assert (xmax - xmin, ymax - ymin) == (30_000.0, 20_010.0)       # 1000 x 667 px


def test_auto_crs_outside_europe_is_a_local_equal_area_projection():
    regs = R.regions_from(SAN_GABRIEL)
    crs = R.resolve_crs("auto", regs)
    assert crs.startswith("+proj=laea +lat_0=34.3 +lon_0=-118.2") and "+units=m" in crs
    for reg in regs.values():
        reg.window(30.0, crs)
    # far north, across Asia: still metric, windows fit
    nz = R.regions_from({"train": {"box": [168.0, -46.0, 175.0, -40.0], "center": None, "size_km": 50},
                         "test": {"box": [166.0, -47.0, 170.0, -44.0], "center": None, "size_km": 50}})
    crs = R.auto_crs(nz)
    assert "+lon_0=170.5" in crs and "+lat_0=-43.5" in crs
    with pytest.raises(ValueError, match="must be a projected CRS in metres"):
        R.resolve_crs("EPSG:4326", regs)


def test_polygon_files_bound_the_window(tmp_path):
    ring = [[10.0, 45.0], [15.0, 45.0], [15.0, 50.0], [12.5, 47.5], [10.0, 50.0], [10.0, 45.0]]   # a notch
    path = tmp_path / "region.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    r = R.region_from("train", {"polygon": str(path), "center": [12.5, 46.0], "size_km": 40})
    assert r.box == (10.0, 45.0, 15.0, 50.0) and len(r.polygon) == 5
    r.window(30.0, "EPSG:3035")
    notch = R.region_from("train", {"polygon": str(path), "center": [12.5, 47.6], "size_km": 40})
    with pytest.raises(ValueError, match="not inside the polygon of region 'train'"):
        notch.window(30.0, "EPSG:3035")
    assert points_in_polygon([12.5, 12.5], [46.0, 48.0], ring).tolist() == [True, False]
    path.write_text(json.dumps({"type": "MultiPolygon", "coordinates": [[ring], [ring]]}))
    with pytest.raises(ValueError, match="exactly one polygon"):
        R.read_polygon(path)


# --------------------------------------------------------------------------------------------------
# a user's GeoTIFF of any place
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def utm_geotiff(tmp_path_factory) -> Path:
    """The GLO-30 fixture reprojected to UTM 11N at 30 m (a user's DEM in its own CRS)."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    out = tmp_path_factory.mktemp("dem") / "san_gabriel_utm11.tif"
    with rasterio.open(FIXTURE) as src:
        transform, w, h = calculate_default_transform(src.crs, "EPSG:32611", src.width, src.height, *src.bounds,
                                                      resolution=30.0)
        profile = src.profile | {"crs": "EPSG:32611", "transform": transform, "width": w, "height": h,
                                 "nodata": -9999.0}
        with rasterio.open(out, "w", **profile) as dst:
            reproject(rasterio.band(src, 1), rasterio.band(dst, 1), dst_nodata=-9999.0,
                      resampling=Resampling.bilinear)
    return out


@pytest.mark.slow
def test_terrain_and_labels_notebooks_on_a_utm_geotiff(utm_geotiff, tmp_path, notebook_runner):
    out = tmp_path / "study"
    notebook_runner("terrain", tmp_path / "nb", dict(
        source="geotiff", geotiff_path=str(utm_geotiff), crs="auto", regions=SAN_GABRIEL, scheduler="sync",
        out_dir=str(out / "terrain"), plots_dir=str(out / "plots"), metrics_path=str(out / "terrain.json")))
    metrics = json.loads((out / "terrain.json").read_text())
    assert metrics["study_crs"].startswith("+proj=laea +lat_0=34.3 +lon_0=-118.2")
    for region in ("train", "test"):
        m = metrics[region]
        assert m["shape"] == [200, 93] and m["nodata_fraction"] == 0.0
        assert 600 < m["elevation_min_m"] < m["elevation_max_m"] < 1900        # the San Gabriel Mountains
    notebook_runner("labels", tmp_path / "nb", dict(
        terrain_dir=str(out / "terrain"), out_dir=str(out / "labels"), plots_dir=str(out / "plots"),
        metrics_path=str(out / "labels.json"), peak_prominence_m=10.0, min_train_exp1=1, min_test_exp1=1,
        min_train_exp2=0, min_test_exp2=0, scheduler="sync"))
    counts = json.loads((out / "labels.json").read_text())["counts"]
    assert counts["train"]["peak"] >= 1 and counts["test"]["river"] >= 1


@pytest.mark.slow
def test_dvc_exp_run_on_a_users_geotiff(utm_geotiff, tmp_path):
    """`dvc exp run -S data.source=geotiff -S data.geotiff_path=... -S data.regions...` up to the labels stage,
    in a temporary copy of the repository (the tiny study's parameters)."""
    repo = tmp_path / "study"
    repo.mkdir()
    copy_repo(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(labels={"peak_prominence_m": 10.0,
                                                                        "min_train_exp1": 0, "min_test_exp1": 0,
                                                                        "min_train_exp2": 0, "min_test_exp2": 0}),
                                                     sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "study"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    sets = ["data.source=geotiff", f"data.geotiff_path={utm_geotiff}", "data.crs=auto"]
    for name, reg in SAN_GABRIEL.items():
        sets += [f"data.regions.{name}.box={json.dumps(reg['box'])}", f"data.regions.{name}.center=null",
                 f"data.regions.{name}.size_km={json.dumps(reg['size_km'])}"]
    cmd = ["dvc", "exp", "run", *[a for s in sets for a in ("-S", s)], "labels"]
    run = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
    terrain = json.loads((repo / "metrics" / "terrain.json").read_text())
    assert terrain["source"] == "geotiff" and terrain["study_crs"].startswith("+proj=laea")
    assert terrain["train"]["shape"] == [200, 93]
    labels = json.loads((repo / "metrics" / "labels.json").read_text())
    assert labels["counts"]["train"]["river"] >= 1
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["data"]["regions"]["test"]["box"] == SAN_GABRIEL["test"]["box"]


def test_regions_helper_of_the_tests_is_the_params_shape():
    assert set(regions(9)) == set(R.REGION_NAMES)
    assert np.isclose(regions(9)["train"]["size_km"], 9)
