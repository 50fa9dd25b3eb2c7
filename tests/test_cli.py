"""The `topo2vec` command line end to end on a real DEM in a foreign CRS (UTM), resuming after a kill, the formats
and their metadata, and the bad inputs that must each be one clear line with exit code 2."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from browser import external_resources, image_is_varied, load_page, requires_chromium

from topo2vec_lib import cli, fields

REPO = Path(__file__).resolve().parents[1]
REAL_DEM = REPO / "tests" / "data" / "real" / "glo30_N34W119_san_gabriel_256.tif"   # EPSG:4326, ~25 x 31 m px


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The real fixture reprojected to UTM zone 11N at 25 m (a DEM in a foreign, metric CRS) and a topo2vec-4
    checkpoint (untrained weights: the command line does not care)."""
    import rasterio
    import torch
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    from topo2vec_lib.models import Topo2Vec
    from topo2vec_lib.models.networks import Encoder

    folder = tmp_path_factory.mktemp("cli")
    dem = folder / "san_gabriel_utm11.tif"
    with rasterio.open(REAL_DEM) as src:
        transform, w, h = calculate_default_transform(src.crs, "EPSG:32611", src.width, src.height, *src.bounds,
                                                      resolution=25.0)
        out = np.full((h, w), -9999.0, dtype=np.float32)
        reproject(rasterio.band(src, 1), out, dst_transform=transform, dst_crs="EPSG:32611",
                  resampling=Resampling.bilinear, dst_nodata=-9999.0)
        with rasterio.open(dem, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32", crs="EPSG:32611",
                           transform=transform, nodata=-9999.0) as dst:
            dst.write(out, 1)
    torch.manual_seed(0)
    model = folder / "topo2vec-4.pt"
    Topo2Vec(Encoder(), {"k": 4, "train_res_m": [120], "embed_res_m": 30.0,
                         "normalisation": {"method": "minmax", "min_range_m": 1.0}}, name="topo2vec-4").save(model)
    return folder, dem, model


def run(argv, capsys=None) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def test_console_script_is_declared():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"topo2vec": "topo2vec_lib.cli:main"}
    res = subprocess.run([sys.executable, "-m", "topo2vec_lib.cli", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and all(c in res.stdout for c in ("embed", "search", "map", "info"))
    for sub in ("embed", "search", "map", "info"):
        assert cli.main([sub, "--help"]) == 0


@pytest.mark.slow
def test_embed_search_map_info_end_to_end(work, capsys):
    folder, dem, model = work
    field_tif = folder / "field.tif"
    code, err = run(["embed", dem, "--model", model, "--res-m", 30, "--stride-m", 60, "--out", field_tif,
                     "--no-progress"], capsys)
    assert code == 0, err
    assert f"wrote {field_tif}" in err and "places/s" in err
    ds = fields.open_field(field_tif)
    meta = ds.attrs
    assert meta["format"] == "topo2vec-field" and meta["dtype"] == "float16" and meta["stride_m"] == 60.0
    assert meta["model"]["name"] == "topo2vec-4" and meta["model"]["checksum"].startswith("sha256:")
    assert meta["scales_m"] == [30.0] and meta["normalisation"] == {"method": "minmax", "min_range_m": 1.0}
    assert "UTM zone 11N" in meta["crs_wkt"]                    # a metric DEM keeps its own CRS
    assert ds["embedding"].shape[2] == 128 and meta["valid_places"] > 0.8 * ds.sizes["y"] * ds.sizes["x"]
    import rasterio

    with rasterio.open(field_tif) as src:
        assert src.count == 128 and src.descriptions[0] == "e000" and src.nodata != src.nodata   # NaN
        assert src.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "16"
        assert src.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE") == "BAND"
    assert fields.cog_layout_errors(field_tif) == []
    # a cell equals the library's embedding of its place (the same grid), to float16 precision
    v = ds["embedding"].values
    rows, cols = np.nonzero(np.isfinite(v).all(axis=2))
    pick = np.linspace(0, rows.size - 1, 5).astype(int)
    lon, lat = fields.lonlat_of_cells(ds, rows[pick], cols[pick])
    from topo2vec_lib.models import load_embedder

    direct, _ = fields.embed_points(dem, load_embedder(model), lon, lat, res_m=30)
    np.testing.assert_allclose(v[rows[pick], cols[pick]], direct, atol=2e-3, rtol=2e-3)

    # search: the query cell is the most similar, matches are apart and away from it
    q_lon, q_lat = float(lon[2]), float(lat[2])
    matches = folder / "matches.geojson"
    code, err = run(["search", field_tif, "--place", f"{q_lon},{q_lat}", "--k", 8, "--out", matches], capsys)
    assert code == 0, err
    doc = json.loads(matches.read_text())
    assert len(doc["features"]) == 8 and doc["topo2vec"]["queries"] == [[q_lon, q_lat]]
    sim_path = matches.with_name("matches.similarity.tif")
    assert (folder / doc["topo2vec"]["similarity"]).resolve() == sim_path.resolve()
    import rioxarray

    sim = rioxarray.open_rasterio(sim_path, masked=True).squeeze("band")
    assert float(sim.max()) == pytest.approx(1.0, abs=1e-5)
    from topo2vec_lib.grid import lonlat_to_xy

    xy = np.array([lonlat_to_xy(meta["crs_wkt"], f["geometry"]["coordinates"][0], f["geometry"]["coordinates"][1])
                   for f in doc["features"]], dtype=float)
    qx, qy = lonlat_to_xy(meta["crs_wkt"], q_lon, q_lat)
    footprint = 17 * 30.0
    assert (np.hypot(xy[:, 0] - qx, xy[:, 1] - qy) >= footprint - 1e-6).all()
    d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    assert (d[np.triu_indices(len(xy), 1)] >= footprint - 1e-6).all()
    sims = [f["properties"]["similarity"] for f in doc["features"]]
    assert sims == sorted(sims, reverse=True)

    # map: offline, with every layer
    html = folder / "map.html"
    code, err = run(["map", field_tif, "--search", matches, "--out", html], capsys)
    assert code == 0, err
    text = html.read_text()
    assert external_resources(text) == []
    for layer in ("hillshade (terrain)", "first 3 principal components", "similarity to the query", "matches (8)",
                  "query places (1)"):
        assert layer in text, layer

    # info: the card built from the checkpoint (no .md beside it)
    code = cli.main(["info", str(model)])
    out = capsys.readouterr()
    assert code == 0 and "# Model card: topo2vec-4" in out.out and "built from the checkpoint" in out.err


@pytest.mark.slow
@pytest.mark.browser
@requires_chromium
def test_the_field_map_renders_offline_in_chromium(work, capsys):
    folder, dem, model = work
    field_tif = folder / "field_map.tif"
    assert run(["embed", dem, "--model", model, "--out", field_tif, "--no-progress"], capsys)[0] == 0
    ds = fields.open_field(field_tif)
    lon, lat = fields.lonlat_of_cells(ds, np.array([ds.sizes["y"] // 2]), np.array([ds.sizes["x"] // 2]))
    matches = folder / "m.geojson"
    assert run(["search", field_tif, "--place", f"{lon[0]},{lat[0]}", "--k", 5, "--out", matches], capsys)[0] == 0
    html = folder / "field_map.html"
    assert run(["map", field_tif, "--search", matches, "--out", html], capsys)[0] == 0
    page = load_page(html, screenshot=folder / "field_map.png")
    assert page.console_errors == []
    assert page.screenshot is not None and image_is_varied(page.screenshot, 50)
    assert page.dom.count("leaflet-interactive") >= 6          # 1 query + 5 matches drawn
    assert "similarity to the query" in page.dom and "leaflet-control-layers" in page.dom


@pytest.mark.slow
def test_zarr_and_int8_fields_hold_the_same_vectors(work, capsys):
    import xarray as xr

    from topo2vec_lib.search import embedding_array

    folder, dem, model = work
    paths = {dt: folder / f"f_{dt}.tif" for dt in ("float32", "int8")}
    paths["zarr"] = folder / "f.zarr"
    for key, path in paths.items():
        dtype = "float16" if key == "zarr" else key
        assert run(["embed", dem, "--model", model, "--dtype", dtype, "--out", path, "--no-progress"], capsys)[0] == 0
    ref = fields.open_field(paths["float32"])["embedding"].values
    z = xr.open_zarr(paths["zarr"], consolidated=False)              # plain xarray reads it
    assert embedding_array(z).shape == ref.shape and z["embedding"].dtype == np.float16
    np.testing.assert_allclose(z["embedding"].values.astype(np.float32), ref, atol=1e-3, rtol=1e-3)
    meta = fields.open_field(paths["int8"]).attrs
    q = fields.open_field(paths["int8"])["embedding"].values
    assert np.array_equal(np.isnan(q), np.isnan(ref))
    scale = np.asarray(meta["scale"], dtype=np.float32)
    assert (np.nan_to_num(np.abs(q - ref)) <= scale / 2 + 1e-5).all()   # int8: at most half a step off
    import rasterio

    with rasterio.open(paths["int8"]) as src:                          # GDAL's own scale/offset are set
        assert src.dtypes[0] == "int8" and src.nodata == -128
        np.testing.assert_allclose(src.scales, meta["scale"], rtol=1e-6)


@pytest.mark.slow
def test_points_to_geoparquet(work, capsys):
    import pyarrow.parquet as pq

    folder, dem, model = work
    ds = fields.open_field(folder / "field.tif") if (folder / "field.tif").exists() else None
    if ds is None:
        assert run(["embed", dem, "--model", model, "--out", folder / "field.tif", "--no-progress"], capsys)[0] == 0
        ds = fields.open_field(folder / "field.tif")
    lon, lat = fields.lonlat_of_cells(ds, np.array([20, 40, 60]), np.array([30, 50, 70]))
    csv = folder / "places.csv"
    rows = [f"p{i},{float(a)!r},{float(b)!r}\n" for i, (a, b) in enumerate(zip(lon, lat))]
    csv.write_text("name,lon,lat\n" + "".join(rows))
    out = folder / "places.parquet"
    code, err = run(["embed", dem, "--model", model, "--points", csv, "--out", out], capsys)
    assert code == 0, err
    table = pq.read_table(out)
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["encoding"] == "WKB"
    import struct

    pts = [struct.unpack("<BIdd", b) for b in table.column("geometry").to_pylist()]
    np.testing.assert_allclose([p[2] for p in pts], lon) and np.testing.assert_allclose([p[3] for p in pts], lat)
    assert table.column("name").to_pylist() == ["p0", "p1", "p2"] and all(table.column("valid").to_pylist())
    emb = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(emb, ds["embedding"].values[[20, 40, 60], [30, 50, 70]], atol=2e-3, rtol=2e-3)
    assert json.loads(table.schema.metadata[b"topo2vec"])["model"]["name"] == "topo2vec-4"
    # a place off the DEM: an error naming it, or a NaN row with --skip-invalid
    gj = folder / "places.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [float(lon[0]), float(lat[0])]},
         "properties": {"id": 1}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [7.6, 46.6]}, "properties": {"id": 2}}]}))
    code, err = run(["embed", dem, "--model", model, "--points", gj, "--out", folder / "g.parquet"], capsys)
    assert code == 2 and "1 of 2 place(s) have no valid" in err and "#1 (lon 7.60000" in err
    code, err = run(["embed", dem, "--model", model, "--points", gj, "--skip-invalid", "--out", folder / "g.parquet"],
                    capsys)
    assert code == 0 and pq.read_table(folder / "g.parquet").column("valid").to_pylist() == [True, False]


@pytest.mark.slow
def test_an_interrupted_embed_resumes_with_its_finished_tiles(work, tmp_path):
    """kill -9 in the middle of a run: the finished tiles stay in <out>.partial and the same command computes only
    the others; the result equals an uninterrupted run."""
    folder, dem, model = work
    out = tmp_path / "resumed.tif"
    cmd = [sys.executable, "-m", "topo2vec_lib.cli", "embed", str(dem), "--model", str(model), "--res-m", "30",
           "--stride-m", "60", "--out", str(out), "--tile", "4", "--workers", "1", "--no-progress", "--eager"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marks = fields.partial_dir(out) / "tiles"
    end = time.monotonic() + 240
    while time.monotonic() < end and proc.poll() is None and len(list(marks.glob("*.json"))) < 5:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted: " + proc.stderr.read()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(marks.glob("*.json")))
    total = len(fields.tiles(fields.field_grid(fields.open_dem(dem), 30, 60), 4))
    assert 5 <= done_before < total and not out.exists()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed" in res.stderr and not fields.partial_dir(out).exists()
    fresh = tmp_path / "fresh.tif"
    res = subprocess.run([*cmd[:cmd.index("--out") + 1], str(fresh), *cmd[cmd.index("--out") + 2:]], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = fields.open_field(out)["embedding"].values, fields.open_field(fresh)["embedding"].values
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, atol=1e-6)
    # the same output path with other settings: refused, not mixed
    out2 = tmp_path / "other.tif"
    part = fields.partial_dir(out2)
    proc = subprocess.Popen([*cmd[:cmd.index("--out") + 1], str(out2), *cmd[cmd.index("--out") + 2:]], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and len(list((part / "tiles").glob("*.json"))) < 2:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    code = cli.main(["embed", str(dem), "--model", str(model), "--res-m", "30", "--stride-m", "90", "--out", str(out2),
                     "--tile", "4", "--no-progress"])
    assert code == 2


# ------------------------------------------------------------------------------------------------ bad inputs
def _no_crs_dem(path: Path) -> Path:
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="float32") as dst:
            dst.write(np.random.default_rng(0).normal(500, 50, (64, 64)).astype(np.float32), 1)
    return path


@pytest.mark.parametrize("case", ["dem_without_crs", "model_not_a_checkpoint", "place_outside_field",
                                  "stride_finer_than_dem", "res_finer_than_dem", "missing_dem", "missing_model",
                                  "bad_place_text", "out_exists", "bad_out_suffix", "unknown_option", "no_command",
                                  "info_not_a_checkpoint", "int8_zarr", "field_not_a_field", "bad_precision"])
def test_bad_inputs_are_one_clear_line_and_exit_2(case, work, tmp_path, capsys):
    folder, dem, model = work
    field_tif = folder / "bad_inputs_field.tif"
    if case == "place_outside_field" and not field_tif.exists():
        assert cli.main(["embed", str(dem), "--model", str(model), "--out", str(field_tif), "--no-progress"]) == 0
        capsys.readouterr()
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    out = tmp_path / "out.tif"
    argv, expect = {
        "dem_without_crs": (["embed", _no_crs_dem(tmp_path / "nocrs.tif"), "--model", model, "--out", out],
                            "has no CRS"),
        "model_not_a_checkpoint": (["embed", dem, "--model", junk, "--out", out],
                                   "is not a readable topo2vec checkpoint"),
        "place_outside_field": (["search", field_tif, "--place", "7.6,46.6", "--out", tmp_path / "m.geojson"],
                                "lies outside the field"),
        "stride_finer_than_dem": (["embed", dem, "--model", model, "--stride-m", 5, "--out", out],
                                  "--stride-m 5 is finer than the DEM's pixels"),
        "res_finer_than_dem": (["embed", dem, "--model", model, "--res-m", 10, "--stride-m", 60, "--out", out],
                               "--res-m 10 is finer than the DEM's pixels"),
        "missing_dem": (["embed", tmp_path / "nope.tif", "--model", model, "--out", out], "does not exist"),
        "missing_model": (["embed", dem, "--model", tmp_path / "nope.pt", "--out", out], "does not exist"),
        "bad_place_text": (["search", field_tif, "--place", "north", "--out", tmp_path / "m.geojson"],
                           "is not LON,LAT"),
        "out_exists": (["embed", dem, "--model", model, "--out", junk.with_suffix(".tif")], "exists; pass --overwrite"),
        "bad_out_suffix": (["embed", dem, "--model", model, "--out", tmp_path / "field.png"], "expected a .tif"),
        "unknown_option": (["embed", dem, "--model", model, "--out", out, "--colour", "red"], "unrecognized"),
        "no_command": ([], "usage"),
        "info_not_a_checkpoint": (["info", junk], "is not a readable topo2vec checkpoint"),
        "int8_zarr": (["embed", dem, "--model", model, "--dtype", "int8", "--out", tmp_path / "f.zarr"],
                      "int8 is for GeoTIFF output"),
        "field_not_a_field": (["search", dem, "--place", "-118.15,34.32", "--out", tmp_path / "m.geojson"],
                              "is not a topo2vec embedding field"),
        "bad_precision": (["embed", dem, "--model", model, "--precision", "fp16", "--out", out],
                          "argument --precision: invalid choice: 'fp16'"),
    }[case]
    if case == "out_exists":
        junk.with_suffix(".tif").write_text("x")
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expect in err, err
    assert "Traceback" not in err
    if case not in ("unknown_option", "no_command", "bad_place_text", "bad_precision"):
        assert err.strip().count("\n") == 0 and err.startswith("topo2vec "), err      # one line, named command
    assert not out.exists() and not fields.partial_dir(out).exists()


def test_an_unexpected_failure_exits_1_with_a_line(work, tmp_path, capsys, monkeypatch):
    folder, dem, model = work

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(fields, "embed_field", boom)
    code = cli.main(["embed", str(dem), "--model", str(model), "--out", str(tmp_path / "f.tif")])
    err = capsys.readouterr().err
    assert code == 1 and "RuntimeError: disk on fire" in err and "--debug" in err and "Traceback" not in err
    assert cli.main(["--debug", "embed", str(dem), "--model", str(model), "--out", str(tmp_path / "f.tif")]) == 1
    assert "Traceback" in capsys.readouterr().err
