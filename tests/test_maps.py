"""Exp. 3 maps and Exp. 4 retrieval (topo2vec_lib.maps): probes, scores, placement, offline HTML, figures."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from test_regional import StatsEmbedder  # tiny numpy stand-in for a trained embedder

from topo2vec_lib import maps
from topo2vec_lib.regional import embed_region
from topo2vec_lib.sampler import PatchSampler


def bumps_terrain(terrain_factory, region, center, n=160, seed=0):
    """Gentle noise with sharp Gaussian hills whose summits are the 'peak' labels (pixel indices returned)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    z = rng.normal(0, 0.3, (n, n)).astype(np.float32) + 200
    rows, cols = [], []
    for r in range(14, n - 14, 22):
        for c in range(14, n - 14, 22):
            r2, c2 = r + rng.integers(-3, 4), c + rng.integers(-3, 4)
            z += 80 * np.exp(-((yy - r2) ** 2 + (xx - c2) ** 2) / (2 * 2.5 ** 2))
            rows.append(r2)
            cols.append(c2)
    t = terrain_factory(z, center_lonlat=center, region=region)
    return t, np.array(rows), np.array(cols)


def peak_labels(terrain, rows, cols):
    from topo2vec_lib.grid import xy_to_lonlat

    lon, lat = xy_to_lonlat(terrain.rio.crs, terrain.x.values[cols], terrain.y.values[rows])
    return pd.DataFrame({"lon": lon, "lat": lat, "class": "peak", "source": "test",
                         "region": terrain.attrs["region"]})


@pytest.fixture
def world(terrain_factory):
    train, r1, c1 = bumps_terrain(terrain_factory, "train", (12.0, 47.2), seed=1)
    test, r2, c2 = bumps_terrain(terrain_factory, "test", (7.6, 46.6), seed=2)
    labels = pd.concat([peak_labels(train, r1, c1), peak_labels(test, r2, c2)], ignore_index=True)
    return train, test, labels


def test_probes_find_peaks_on_the_test_grid(world):
    train, test, labels = world
    st, se = PatchSampler(train), PatchSampler(test)
    probes = maps.train_class_probes(StatsEmbedder(), st, labels, ["peak", "cliff"], 30, n_per_class=80, seed=0)
    assert probes["cliff"] is None and probes["peak"] is not None       # no cliff labels at all
    ds = embed_region(StatsEmbedder(), se, 30, 30, chunk=32)
    scores = maps.classify_region(ds["embedding"], probes)
    assert scores.dims == ("class", "y", "x") and list(scores["class"].values) == ["peak", "cliff"]
    scores = scores.compute()
    assert np.isnan(scores.sel({"class": "cliff"})).all()
    rates = maps.label_hit_rates(scores, labels[labels.region == "test"], test.rio.crs)
    peak = rates["peak"]
    assert peak["n_labels"] >= 30
    # summits are found far more often than the share of cells painted as peak
    assert peak["hit_rate"] >= 0.8 and peak["cell_rate"] < 0.5
    assert rates["cliff"]["hit_rate"] is None
    dom = maps.dominant_class(scores)
    assert dom.shape == scores.shape[1:] and set(np.unique(dom)) <= {-1, 0}


def test_to_web_mercator_places_a_pixel_where_it_is(terrain_factory):
    """A single bright pixel at a known lon/lat must appear at that lon/lat in the reprojected overlay."""
    from topo2vec_lib.grid import lonlat_to_xy

    da = terrain_factory(np.zeros((100, 120), np.float32), center_lonlat=(7.6, 46.6))
    lon0, lat0 = 7.605, 46.597
    x, y = lonlat_to_xy(da.rio.crs, lon0, lat0)
    ix, iy = int(np.argmin(np.abs(da.x.values - x))), int(np.argmin(np.abs(da.y.values - y)))
    da.values[iy - 1:iy + 2, ix - 1:ix + 2] = 1.0
    img, bounds = maps.to_web_mercator(da, da.rio.crs, "nearest")
    (s, w), (n, e) = bounds
    assert s < lat0 < n and w < lon0 < e
    r, c = np.unravel_index(np.nanargmax(img), img.shape)
    # Leaflet stretches the image linearly in Web Mercator over the bounds
    from pyproj import Transformer

    t = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    (mw, ms), (me, mn) = t.transform(w, s), t.transform(e, n)
    mx = mw + (c + 0.5) / img.shape[1] * (me - mw)
    my = mn - (r + 0.5) / img.shape[0] * (mn - ms)
    lon, lat = t.transform(mx, my, direction="INVERSE")
    assert abs(lon - lon0) < 0.0006 and abs(lat - lat0) < 0.0006        # within about 2 pixels of 30 m


def test_offline_html_inlines_leaflet_and_drops_cdn():
    import folium

    m = folium.Map(tiles=None)
    folium.CircleMarker([46.6, 7.6], radius=3).add_to(m)
    raw = m.get_root().render()
    assert "cdn.jsdelivr.net/npm/leaflet" in raw
    out = maps.offline_html(raw)
    assert "<script src=\"http" not in out and "stylesheet\" href=\"http" not in out
    assert "L.version" in out or "Leaflet" in out
    assert "url(images/" not in out            # leaflet.css images inlined as data URIs
    with pytest.raises(ValueError, match="external assets"):
        maps.offline_html(raw.replace("</head>", '<script src="https://example.org/x.js"></script></head>'))


def test_leaflet_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("TOPO2VEC_LEAFLET_DIR", str(tmp_path))
    (tmp_path / "leaflet.js").write_text("/* fake */")
    (tmp_path / "leaflet.css").write_text(".x{}")
    assert maps.leaflet_dir() == tmp_path


def small_scores(terrain, names=("peak", "river")):
    rng = np.random.default_rng(0)
    x, y = terrain.x.values[::4], terrain.y.values[::4]
    s = rng.normal(size=(len(names), y.size, x.size)).astype(np.float32)
    s[:, :2] = np.nan
    return xr.DataArray(s, dims=("class", "y", "x"), coords={"class": list(names), "y": y, "x": x})


def test_multiscale_map_layers_legend_points(world, tmp_path):
    _, test, labels = world
    hs = maps.hillshade_raster(test)
    scores = {30: small_scores(test), 60: small_scores(test)}
    m = maps.multiscale_map(hs, scores, test.rio.crs, labels[labels.region == "test"], max_points=10)
    path = maps.save_map(m, tmp_path / "m.html")
    html = path.read_text()
    for name in ("peak @ 30 m/px", "river @ 60 m/px", "label points (10 of", "hillshade (terrain)",
                 "predicted class"):
        assert name in html
    assert html.count("L.circleMarker(") == 10
    assert html.count("L.imageOverlay(") == 1 + 4
    assert len(html) < 2_000_000


def test_plot_multiscale_and_retrieval_png(world, tmp_path):
    import matplotlib.image as mpimg

    _, test, _ = world
    hs = maps.hillshade_raster(test)
    maps.plot_multiscale(hs, {30: small_scores(test)}, tmp_path / "f5.png")
    img = mpimg.imread(tmp_path / "f5.png")
    assert img.shape[1] > img.shape[0] and len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 50
    patches = np.random.default_rng(0).normal(size=(7, 17, 17))
    maps.plot_retrieval(patches[:2], patches[2:], tmp_path / "f6.png", 30)
    assert mpimg.imread(tmp_path / "f6.png").size > 0


def test_retrieve_mean_query_and_nan_candidates():
    cand = np.array([[0, 0], [1, 1], [np.nan, 0], [5, 5], [1.1, 0.9]], dtype=float)
    idx, dist = maps.retrieve(np.array([[0.9, 1.0], [1.1, 1.0]]), cand, 2)
    assert list(idx) == [1, 4] and dist[0] <= dist[1]
    idx, _ = maps.retrieve(np.array([[0.0, 0.0]]), cand, 4)
    assert 2 not in idx                           # NaN candidates are never returned
    with pytest.raises(ValueError, match="query"):
        maps.retrieve(np.array([[np.nan, 0.0]]), cand, 1)


def test_retrieval_precision_separates_good_and_bad_embedders(world):
    """An embedder that sees the summit shape retrieves peaks among peaks and random places; a constant one
    cannot do better than chance."""
    train, test, labels = world
    se = PatchSampler(test)
    cand = maps.retrieval_candidates(se, labels, ["peak"], 30, per_class=25, n_random=25, seed=0)
    assert set(cand["class"]) == {"peak", "random"} and (cand["class"] == "peak").sum() == 25

    class Constant(StatsEmbedder):
        def embed_patches(self, x):
            return np.zeros((len(x), self.dim), np.float32)

    df = maps.retrieval_precision({"stats": StatsEmbedder(), "constant": Constant()}, se, cand, ["peak"], 30,
                                  n_queries=3, k=10, repeats=4, seed=0)
    mean = df.groupby("model")["precision"].mean()
    assert len(df) == 8 and mean["stats"] >= 0.8 and mean["stats"] > mean["constant"]


def test_retrieve_in_region_excludes_query_neighbourhood(world):
    _, test, labels = world
    se = PatchSampler(test)
    ds = embed_region(StatsEmbedder(), se, 30, 60, chunk=16).compute()
    q = labels[labels.region == "test"].iloc[[5, 9]]
    qv = maps.embed_xy(StatsEmbedder(), se, *se.to_xy(q.lon.values, q.lat.values), 30)
    res = maps.retrieve_in_region(ds, qv, 5, crs=se.crs, query_lonlat=(q.lon.values, q.lat.values),
                                  exclude_radius_m=300)
    assert list(res["rank"]) == [1, 2, 3, 4, 5] and np.all(np.diff(res["distance"]) >= 0)
    qx, qy = se.to_xy(q.lon.values, q.lat.values)
    d = np.hypot(res["x"].values[:, None] - qx, res["y"].values[:, None] - qy)
    assert d.min() > 300


def test_region_bounds_box(world):
    _, test, _ = world
    se = PatchSampler(test)
    assert maps.region_bounds(se) == se.bounds_xy
    left, _, right, _ = maps.region_bounds(se, [7.59, 46.59, 7.61, 46.61])
    assert se.bounds_xy[0] <= left < right <= se.bounds_xy[2]
    with pytest.raises(ValueError, match="does not overlap"):
        maps.region_bounds(se, [5.0, 45.0, 5.1, 45.1])


def test_upsample_terrain_gives_finer_patches(terrain_factory):
    z = np.add.outer(np.arange(40.0), np.arange(50.0) * 2).astype(np.float32)   # a plane: interpolation is exact
    t = terrain_factory(z)
    fine = maps.upsample_terrain(t, 10)
    assert fine.attrs["res_m"] == 10 and fine.attrs["upsampled_from_m"] == 30
    assert fine.shape == (120, 150) and fine.rio.crs == t.rio.crs
    assert float(fine.x[0] - fine.x[1]) == pytest.approx(-10)
    s_fine, s = PatchSampler(fine), PatchSampler(t)
    np.testing.assert_allclose(s_fine.bounds_xy, s.bounds_xy)
    lon, lat = s.to_lonlat(*[np.array([v]) for v in (float(t.x[25]), float(t.y[20]))])
    p = s_fine.patches(lon, lat, 10, 17)[0]
    # a 10 m/px patch of a plane rising 1 m per 30 m southwards and 2 m per 30 m eastwards
    np.testing.assert_allclose(np.diff(p, axis=1), 2 / 3, atol=1e-3)
    np.testing.assert_allclose(np.diff(p, axis=0), 1 / 3, atol=1e-3)
    with pytest.raises(ValueError, match="finer than"):
        maps.upsample_terrain(t, 60)


def test_nearest_label_within_radius(world):
    _, test, labels = world
    t = labels[labels.region == "test"]
    from topo2vec_lib.grid import lonlat_to_xy, xy_to_lonlat

    x, y = lonlat_to_xy(test.rio.crs, t.lon.values[:2], t.lat.values[:2])
    lon, lat = xy_to_lonlat(test.rio.crs, x + np.array([40.0, 200.0]), y)
    assert maps.nearest_label(lon, lat, t, test.rio.crs, 60) == ["peak", None]
    assert maps.nearest_label(lon, lat, t.iloc[:0], test.rio.crs, 60) == [None, None]


# ------------------------------------------------------------------------------------------ notebook smoke runs
@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """A tiny study on disk: synthetic train/test terrains (4 km), derived labels, an ID and an untrained
    topo2vec-4 checkpoint (smoke runs only check the notebooks run end to end and write their outputs)."""
    from topo2vec_lib.labels import derive_labels, write_labels
    from topo2vec_lib.models import Topo2Vec
    from topo2vec_lib.models.identity import IdEmbedder
    from topo2vec_lib.models.networks import Encoder
    from topo2vec_lib.synthetic import synthetic_terrain
    from topo2vec_lib.terrain import save_terrain

    root = tmp_path_factory.mktemp("study")
    frames = []
    for region, center in (("train", (12.0, 47.2)), ("test", (7.6, 46.6))):
        t = synthetic_terrain(region, center, 4, res_m=30)
        t.attrs.update(region=region, region_lonlat=[10, 45, 15, 50] if region == "train" else [5, 45, 10, 50])
        save_terrain(t, root / "data" / "terrain" / f"{region}.zarr")
        frames.append(derive_labels(t, classes=["peak", "saddle", "river", "cliff"]))
    write_labels(pd.concat(frames, ignore_index=True), root / "data" / "labels")
    (root / "models").mkdir()
    IdEmbedder().save(root / "models" / "id.pt")
    import torch

    torch.manual_seed(0)
    Topo2Vec(Encoder(), {"k": 4, "name": "topo2vec-4"}, name="topo2vec-4").save(root / "models" / "topo2vec-4.pt")
    return root


def _common(root):
    from conftest import write_params

    return {"params_path": str(write_params(root / "params.yaml")), "models_dir": str(root / "models"),
            "terrain_dir": str(root / "data" / "terrain"), "labels_dir": str(root / "data" / "labels"), "seed": 0}


@pytest.mark.slow
def test_multiscale_notebook_smoke(tiny_study, notebook_runner, tmp_path):
    import json

    out = tmp_path / "out"
    params = dict(_common(tiny_study), classes=["peak", "saddle", "river", "cliff"], scales_m=[10, 60], box_km=2.0,
                  stride_m=120.0, n_train=40, chunk=8,
                  map_path=str(out / "m.html"), png_path=str(out / "m.png"), metrics_path=str(out / "exp3.json"))
    notebook_runner("multiscale_maps", tmp_path / "nb", params)
    metrics = json.loads((out / "exp3.json").read_text())
    assert metrics["scales_m"] == [10.0, 60.0] and metrics["upsampled_scales_m"] == [10.0]
    assert set(metrics["hit_rates"]["60"]) == {"peak", "saddle", "river", "cliff"}
    html = (out / "m.html").read_text()
    assert "peak @ 10 m/px" in html and "cliff @ 60 m/px" in html and "<script src=\"http" not in html
    assert (out / "m.png").stat().st_size > 10_000


@pytest.mark.slow
def test_retrieval_notebook_smoke(tiny_study, notebook_runner, tmp_path):
    import json

    out = tmp_path / "out"
    params = dict(_common(tiny_study), baselines=["id"], n_queries=2, k=5, stride_m=150.0, per_class=10,
                  n_random=20, pk_queries=2, pk_k=3, repeats=2, query_class="cliff",
                  map_path=str(out / "r.html"), png_path=str(out / "r.png"), metrics_path=str(out / "exp4.json"))
    notebook_runner("retrieval", tmp_path / "nb", params)
    metrics = json.loads((out / "exp4.json").read_text())
    assert len(metrics["query_lonlat"]) == 2
    models = metrics["precision_at_k"]["models"]
    assert set(models) == {"topo2vec-4", "id"} and 0 <= models["id"]["mean"] <= 1
    html = (out / "r.html").read_text()
    assert "matches (5)" in html and "queries (2)" in html


def test_densest_box_prefers_the_box_with_every_class():
    from topo2vec_lib.grid import xy_to_lonlat

    crs = "EPSG:3035"
    x0, y0 = 4_100_000.0, 2_600_000.0
    # many peaks but no river in the west; two of each in the east
    xs = [x0 + 500 + i * 10 for i in range(10)] + [x0 + 8_500, x0 + 8_600, x0 + 8_700, x0 + 8_800]
    ys = [y0 + 1000] * 10 + [y0 + 1000] * 4
    cls = ["peak"] * 10 + ["peak", "peak", "river", "river"]
    lon, lat = xy_to_lonlat(crs, np.array(xs), np.array(ys))
    labels = pd.DataFrame({"lon": lon, "lat": lat, "class": cls})
    left, bottom, right, top = maps.densest_box(labels, crs, (x0, y0, x0 + 10_000, y0 + 2_000), 2_000,
                                                ["peak", "river"])
    assert right - left == pytest.approx(2_000) and left <= x0 + 8_500 and right >= x0 + 8_800
