"""OSM labels from a local fake Overpass API, and label files from disk. Nothing here touches the network."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from fakes import FakeServer, Reply, SleepRecorder, closed_port_url
from pyproj import Geod

from topo2vec_lib import osm
from topo2vec_lib.download import DownloadError, HttpConfig

GEOD = Geod(ellps="WGS84")
WINDOW = (11.0, 47.0, 12.0, 47.5)  # two 0.5 degree tiles


def river_vertices():
    """An irregularly noded way along one geodesic, about 75 km, crossing the tile edge at lon 11.5."""
    pts = np.array(GEOD.npts(11.05, 47.05, 11.95, 47.40, 400))
    keep = np.sort(np.random.default_rng(0).choice(len(pts), 60, replace=False))
    pts = pts[keep]
    lon = np.concatenate([[11.05], pts[:, 0], [11.95]])
    lat = np.concatenate([[47.05], pts[:, 1], [47.40]])
    return lon, lat


def world():
    """{(key, value): [elements]} of the fake Overpass, ways with 'nodes' as (lon, lat) vertices."""
    rlon, rlat = river_vertices()
    return {
        ("natural", "peak"): [
            {"type": "node", "id": 1, "lon": 11.2, "lat": 47.1},
            {"type": "node", "id": 2, "lon": 11.7, "lat": 47.3},
            {"type": "node", "id": 3, "lon": 11.5, "lat": 47.45},   # on the tile edge: seen twice
            {"type": "node", "id": 4, "lon": 12.3, "lat": 47.2},    # outside the window
        ],
        ("waterway", "river"): [
            {"type": "way", "id": 100, "nodes": list(zip(rlon, rlat))},
            {"type": "way", "id": 101, "nodes": [(11.3, 47.3), (11.301, 47.3)]},  # ~76 m: one midpoint
        ],
        ("tourism", "alpine_hut"): [
            {"type": "node", "id": 11, "lon": 11.6, "lat": 47.2},
            {"type": "way", "id": 10, "nodes": [(11.30, 47.20), (11.31, 47.20), (11.31, 47.21), (11.30, 47.21)]},
        ],
    }


def overpass_handler(req):
    """Answers like Overpass: elements with the query's tag touching the query's box."""
    query = req.form["data"]
    key, value = re.search(r'\["([^"]+)"="([^"]+)"\]', query).groups()
    s, w, n, e = map(float, re.search(r"\((-?[\d.]+),(-?[\d.]+),(-?[\d.]+),(-?[\d.]+)\)", query).groups())
    inside = lambda lon, lat: w <= lon <= e and s <= lat <= n  # noqa: E731
    out = []
    for el in world().get((key, value), []):
        if el["type"] == "node" and inside(el["lon"], el["lat"]):
            out.append(el)
        elif el["type"] == "way" and any(inside(*v) for v in el["nodes"]):
            verts = np.array(el["nodes"])
            way = {"type": "way", "id": el["id"], "tags": {key: value}}
            if "out center" in query:
                way["center"] = {"lon": verts[:, 0].mean(), "lat": verts[:, 1].mean()}
            else:
                way["geometry"] = [{"lat": la, "lon": lo} for lo, la in verts]
            out.append(way)
    return Reply(200, json.dumps({"version": 0.6, "elements": out}).encode(), {"Content-Type": "application/json"})


@pytest.fixture
def api():
    with FakeServer() as srv:
        srv.add_handler("/api/interpreter", overpass_handler)
        srv.endpoint = srv.url + "/api/interpreter"
        yield srv


def config(**kw):
    kw.setdefault("sleep", SleepRecorder())
    return HttpConfig(connect_timeout_s=2.0, read_timeout_s=5.0, retries=4, **kw)


def spacing(lon, lat):
    return np.asarray(GEOD.inv(lon[:-1], lat[:-1], lon[1:], lat[1:])[2])


# ---------------------------------------------------------------- pieces
def test_queries_and_tiles():
    q = osm.overpass_query(osm.OSM_CLASSES["peak"], (11, 47, 11.5, 47.5), timeout_s=60)
    assert q == ('[out:json][timeout:60];(node["natural"="peak"](47,11,47.5,11.5);'
                 'way["natural"="peak"](47,11,47.5,11.5););out center;')
    assert osm.overpass_query(osm.OSM_CLASSES["river"], (11, 47, 11.5, 47.5)).endswith("out geom;")
    assert osm.bbox_tiles(WINDOW, 0.5) == [(11.0, 47.0, 11.5, 47.5), (11.5, 47.0, 12.0, 47.5)]
    tiles = osm.bbox_tiles((10, 45, 15, 50), 0.4)
    assert len(tiles) == 13 * 13 and tiles[-1] == (14.8, 49.8, 15.0, 50.0)
    with pytest.raises(ValueError, match="tile_deg"):
        osm.bbox_tiles(WINDOW, 0)
    with pytest.raises(ValueError, match="lon_min < lon_max"):
        osm.bbox_tiles((12, 47, 11, 48))


def test_points_along_a_line_are_spaced_as_asked():
    lon, lat = river_vertices()
    length = spacing(lon, lat).sum()
    plon, plat = osm.points_along(lon, lat, 300.0)
    assert len(plon) == int((length - 150) // 300) + 1
    assert GEOD.inv(lon[0], lat[0], plon[0], plat[0])[2] == pytest.approx(150.0, abs=0.01)
    np.testing.assert_allclose(spacing(plon, plat), 300.0, atol=0.01)  # the line is one geodesic
    # a corner: points keep 300 m of along-line distance, so the chord across the corner is shorter
    clon, clat = osm.points_along([11.0, 11.01, 11.01], [47.0, 47.0, 47.01], 300.0)
    legs = spacing(np.array([11.0, 11.01, 11.01]), np.array([47.0, 47.0, 47.01]))
    assert len(clon) == int((legs.sum() - 150) // 300) + 1 and np.all(spacing(clon, clat) <= 300.0 + 1e-6)
    # short lines give their midpoint; a single vertex is itself
    mlon, mlat = osm.points_along([11.0, 11.001], [47.0, 47.0], 300.0)
    assert len(mlon) == 1 and mlon[0] == pytest.approx(11.0005, abs=1e-9)
    assert osm.points_along([11.0], [47.0], 300.0)[0].tolist() == [11.0]
    with pytest.raises(ValueError, match="spacing_m"):
        osm.points_along(lon, lat, 0)


# ---------------------------------------------------------------- end to end
def test_osm_labels_from_the_fake_api_and_the_cache(api, tmp_path):
    cfg = config()
    df = osm.osm_labels(["peak", "river", "alpine_hut"], WINDOW, "train", cache_dir=tmp_path,
                        endpoint=api.endpoint, spacing_m=300, delay_s=1.25, config=cfg, progress=False)
    assert list(df.columns) == ["lon", "lat", "class", "source", "region", "osm_id"]
    assert df.lon.dtype == float and df.lat.dtype == float and str(df.osm_id.dtype) == "Int64"
    assert set(df.source) == {"osm"} and set(df.region) == {"train"}

    peaks = df[df["class"] == "peak"]
    assert peaks.osm_id.tolist() == [1, 2, 3]  # 3 seen from both tiles, once; 4 is outside the window

    river = df[(df["class"] == "river") & (df.osm_id == 100)].sort_values("lon")
    lon, lat = river_vertices()
    expected_lon, _ = osm.points_along(lon, lat, 300.0)
    assert len(river) == len(expected_lon)  # the way came from both tiles; no point twice
    np.testing.assert_allclose(spacing(river.lon.to_numpy(), river.lat.to_numpy()), 300.0, atol=0.01)
    assert (df.osm_id == 101).sum() == 1

    huts = df[df["class"] == "alpine_hut"].set_index("osm_id")
    assert huts.loc[11, "lon"] == 11.6 and huts.loc[10, "lon"] == pytest.approx(11.305)  # a way's centre

    # 3 classes x 2 tiles = 6 requests, a polite pause before each but the first
    assert api.count() == 6 and cfg.sleep.calls == [1.25] * 5
    assert len(list(tmp_path.rglob("*.json"))) == 6

    # a re-run (even with another spacing) is served from the cache: no request, no pause
    cfg2 = config()
    again = osm.osm_labels(["peak", "river", "alpine_hut"], WINDOW, "train", cache_dir=tmp_path,
                           endpoint=api.endpoint, spacing_m=300, config=cfg2, progress=False)
    pd.testing.assert_frame_equal(again, df)
    denser = osm.osm_labels("river", WINDOW, "train", cache_dir=tmp_path, endpoint=api.endpoint,
                            spacing_m=100, config=cfg2, progress=False)
    assert len(denser) > 2.9 * (df["class"] == "river").sum()
    assert api.count() == 6 and cfg2.sleep.calls == []


def test_osm_labels_for_a_terrain_window(api, tmp_path, terrain_factory):
    from pyproj import Transformer

    terrain = terrain_factory(np.zeros((120, 120)), res_m=300, center_lonlat=(11.5, 47.25), region="train")
    df = osm.osm_labels_for_terrain(terrain, ["peak", "river"], cache_dir=tmp_path, endpoint=api.endpoint,
                                    config=config(), progress=False)
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3035", always_xy=True).transform(df.lon.to_numpy(),
                                                                                    df.lat.to_numpy())
    xmin, ymin, xmax, ymax = terrain.rio.bounds()
    assert ((x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)).all() and set(df.region) == {"train"}
    assert df[df["class"] == "peak"].osm_id.tolist() == [2]  # the 36 km window spans lon 11.26-11.74, lat 47.09-47.41
    box = osm.terrain_bounds_lonlat(terrain)
    assert 11.2 < box[0] < 11.3 and 11.7 < box[2] < 11.8 and 47.0 < box[1] < 47.1 and 47.4 < box[3] < 47.5
    assert (df["class"] == "river").sum() > 50


def test_faults_recover_with_backoff(api, tmp_path):
    busy = json.dumps({"elements": [], "remark": "runtime error: Query timed out in \"query\" at line 1"}).encode()
    api.script("/api/interpreter", Reply(429, b"rate limited", {"Retry-After": "3"}), Reply(504, b"Gateway Timeout"),
               Reply(200, busy), Reply(200, b"{}", delay_s=1.5))
    cfg = HttpConfig(connect_timeout_s=2.0, read_timeout_s=0.3, retries=4, backoff_s=2.0, jitter=0.0,
                     sleep=SleepRecorder())
    df = osm.osm_labels("peak", (11.0, 47.0, 11.5, 47.5), "test", cache_dir=tmp_path, endpoint=api.endpoint,
                        config=cfg, progress=False)
    assert df.osm_id.tolist() == [1, 3] and set(df.region) == {"test"}
    assert api.count() == 5 and cfg.sleep.calls == [3.0, 4.0, 8.0, 16.0]  # Retry-After, then backoff
    assert len(list(tmp_path.rglob("*.json"))) == 1  # only the good answer was cached


def test_malformed_json_is_a_clear_error_and_never_cached(api, tmp_path):
    api.script("/api/interpreter", Reply(200, b"<html><body>The server is probably too busy</body></html>"))
    with pytest.raises(DownloadError, match=re.escape(api.endpoint) + ".*not valid JSON.*too busy"):
        osm.osm_labels("saddle", WINDOW, "train", cache_dir=tmp_path, endpoint=api.endpoint, config=config(),
                       progress=False)
    assert api.count() == 1 and not [p for p in tmp_path.rglob("*") if p.is_file()]
    df = osm.osm_labels("saddle", WINDOW, "train", cache_dir=tmp_path, endpoint=api.endpoint, config=config(),
                        progress=False)  # asks again, and an empty answer is a valid empty table
    assert api.count() == 3 and len(df) == 0 and list(df.columns) == osm.COLUMNS


def test_offline_fails_fast_with_a_clear_message(tmp_path):
    url = closed_port_url() + "/api/interpreter"
    cfg = config()
    with pytest.raises(DownloadError, match=f"cannot reach {re.escape(url)}: no network"):
        osm.osm_labels("peak", WINDOW, "train", cache_dir=tmp_path, endpoint=url, config=cfg, progress=False)
    assert len(cfg.sleep.calls) == 1 and not list(tmp_path.rglob("*.json"))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="valid classes are.*peak"):
        osm.osm_labels(["peak", "volcano"], WINDOW, "train", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="bounds_lonlat"):
        osm.osm_labels("peak", (11, 47, 12), "train", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="spacing_m"):
        osm.osm_labels("river", WINDOW, "train", cache_dir=tmp_path, spacing_m=-1)


def test_tags_agree_with_the_label_registry():
    labels = pytest.importorskip("topo2vec_lib.labels")
    assert set(osm.OSM_CLASSES) == set(labels.CLASSES)
    for name, c in osm.OSM_CLASSES.items():
        assert dict(labels.CLASSES[name].osm_tags) == {c.key: c.value}
        assert labels.CLASSES[name].geometry == c.geometry


# ---------------------------------------------------------------- a user's files
def test_read_label_files(tmp_path):
    gj = tmp_path / "huts.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [11.1, 47.1]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
            [[11.0, 47.0], [11.2, 47.0], [11.2, 47.2], [11.0, 47.2], [11.0, 47.0]]]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "LineString", "coordinates": [
            [11.0, 47.0], [11.0, 47.01]]}},  # ~1112 m: 4 points at 300 m
        {"type": "Feature", "properties": {}, "geometry": None},
    ]}))
    pd.DataFrame({"lon": [11.5, 11.6], "lat": [47.5, 47.6], "name": ["a", "b"]}).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame({"longitude": [12.0], "latitude": [46.0]}).to_parquet(tmp_path / "p.parquet")
    df = osm.read_label_files({"alpine_hut": gj, "peak": [tmp_path / "p.csv", str(tmp_path / "p.parquet")]}, "test")
    assert list(df.columns) == osm.COLUMNS and df.osm_id.isna().all() and set(df.source) == {"file"}
    huts = df[df["class"] == "alpine_hut"]
    assert len(huts) == 1 + 1 + 4
    assert huts.iloc[1][["lon", "lat"]].tolist() == pytest.approx([11.1, 47.1])  # polygon: mean of the ring
    assert df[df["class"] == "peak"].lon.tolist() == [11.5, 11.6, 12.0] and set(df.region) == {"test"}

    pd.DataFrame({"x": [1.0], "y": [2.0]}).to_csv(tmp_path / "xy.csv", index=False)
    with pytest.raises(ValueError, match=r"needs columns 'lon' and 'lat'.*\['x', 'y'\]"):
        osm.read_label_files({"peak": tmp_path / "xy.csv"}, "test")
    pd.DataFrame({"lon": [11.0, 200.0], "lat": [47.0, 47.0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="1 of 2 places have coordinates lon outside -180..180.*lon=200"):
        osm.read_label_files({"peak": tmp_path / "bad.csv"}, "test")
    (tmp_path / "p.kml").write_text("<kml/>")
    with pytest.raises(ValueError, match="unknown label file type '.kml'"):
        osm.read_label_files({"peak": tmp_path / "p.kml"}, "test")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        osm.read_label_files({"peak": tmp_path / "nope.csv"}, "test")


def test_labels_stage_sources_osm_and_files(api, tmp_path, terrain_factory):
    """labels.labels_for_terrain gives the same table from every source, clipped to the window."""
    from topo2vec_lib import labels as L

    terrain = terrain_factory(np.zeros((120, 120)), res_m=300, center_lonlat=(11.5, 47.25), region="train")
    from_osm = L.labels_for_terrain(terrain, "osm", osm={"cache_dir": tmp_path, "endpoint": api.endpoint,
                                                         "config": config()})
    assert {"lon", "lat", "class", "source", "region"} <= set(from_osm.columns)
    assert set(from_osm.region) == {"train"} and set(from_osm.source) == {"osm"}
    assert (from_osm["class"] == "river").any()
    csv = tmp_path / "peaks.csv"
    pd.DataFrame({"lon": [11.5, 11.4, 3.0], "lat": [47.25, 47.2, 40.0]}).to_csv(csv, index=False)
    from_files = L.labels_for_terrain(terrain, "files", files={"peak": csv})
    assert len(from_files) == 2 and set(from_files["class"]) == {"peak"} and set(from_files.source) == {"file"}
    with pytest.raises(ValueError, match="unknown classes"):
        L.labels_for_terrain(terrain, "files", files={"volcano": csv})
    with pytest.raises(ValueError, match="needs label_files"):
        L.labels_for_terrain(terrain, "files")
    with pytest.raises(ValueError, match="unknown label source"):
        L.labels_for_terrain(terrain, "wikipedia")
