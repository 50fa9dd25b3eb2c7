"""Hostile input to the real-data readers (download, copernicus, osm): each row is a bad input and the error it
must give (type and a fragment of the message). Everything runs against in-process fakes on 127.0.0.1.

A new source or parameter gets its rows here. ``{url}`` in a fragment is the fake bucket's address, ``{api}``
the fake Overpass endpoint, ``{tmp}`` the row's temporary directory.
"""
from __future__ import annotations

import dataclasses
import email.utils
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakes import FakeServer, Reply, SleepRecorder, closed_port_url, tile_list_body

from topo2vec_lib import copernicus, osm
from topo2vec_lib.download import DownloadError, HttpConfig, download

RES_DEG = 0.005
SEA = (12, 48)
LISTED = [(11, 47), (12, 47), (11, 48)]
OSM_BOX = (11.0, 47.0, 11.5, 47.5)  # one Overpass tile
DAYS_3 = str(3 * 86400)


def tile_bytes(tmp: Path, lon: int, lat: int, *, fill=None, crs="EPSG:4326", nodata=None) -> bytes:
    """A tiny COG for the tile with SW corner (lon, lat): a smooth surface, or ``fill`` everywhere."""
    import rasterio
    from rasterio.transform import from_origin

    n = int(round(1 / RES_DEG))
    lon_c = lon + (np.arange(n) + 0.5) * RES_DEG
    lat_c = lat + 1 - (np.arange(n) + 0.5) * RES_DEG
    z = (1000 + 200 * (lon_c[None, :] - 11) + 100 * (lat_c[:, None] - 47)).astype(np.float32)
    if fill is not None:
        z[:] = fill
    path = tmp / f"t_{lon}_{lat}_{fill}_{crs.replace(':', '')}_{nodata}.tif"
    with rasterio.open(path, "w", driver="COG", width=n, height=n, count=1, dtype="float32", crs=crs,
                       transform=from_origin(lon, lat + 1, RES_DEG, RES_DEG), blocksize=128, nodata=nodata) as ds:
        ds.write(z, 1)
    return path.read_bytes()


def tile_path(lon: int, lat: int) -> str:
    name = copernicus.tile_name(lon, lat)
    return f"/{name}/{name}.tif"


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_tiles")
    out = {t: tile_bytes(tmp, *t) for t in LISTED}
    out["nan"] = tile_bytes(tmp, 11, 47, fill=np.nan, nodata=np.nan)
    out["webmercator"] = tile_bytes(tmp, 11, 47, crs="EPSG:3857")
    out["sentinel"] = tile_bytes(tmp, 12, 47, fill=-32767.0)
    return out


@dataclasses.dataclass
class Ctx:
    bucket: FakeServer
    api: FakeServer
    tmp: Path
    tiles: dict
    terrain_factory: Callable

    def config(self, **kw) -> HttpConfig:
        kw.setdefault("retries", 2)
        kw.setdefault("read_timeout_s", 2.0)
        return HttpConfig(connect_timeout_s=2.0, sleep=SleepRecorder(), **kw)

    def terrain(self, lon=11.5, lat=47.5, base_url=None, **kw):
        """copernicus_terrain over a 5 km window at 500 m centred on (lon, lat)."""
        from pyproj import Transformer

        cx, cy = Transformer.from_crs("EPSG:4326", "EPSG:3035", always_xy=True).transform(lon, lat)
        x0, y0 = np.floor(cx / 500) * 500 - 2500, np.floor(cy / 500) * 500 - 2500
        return copernicus.copernicus_terrain((x0, y0, x0 + 5000, y0 + 5000), res_m=500, cache_dir=self.tmp,
                                             base_url=base_url or self.bucket.url, config=self.config(**kw),
                                             progress=False)

    def overpass(self, *replies: Reply, **kw):
        """osm_labels for peaks in one tile, the fake Overpass answering ``replies`` first."""
        self.api.script("/api/interpreter", *replies)
        return osm.osm_labels("peak", OSM_BOX, "train", cache_dir=self.tmp / "osm", endpoint=self.api.endpoint,
                              config=self.config(**kw), progress=False)

    def overpass_json(self, text: str):
        return self.overpass(Reply(200, text.encode(), {"Content-Type": "application/json"}))

    def file(self, name: str, content) -> Path:
        path = self.tmp / name
        if isinstance(content, pd.DataFrame):
            content.to_parquet(path) if name.endswith(".parquet") else content.to_csv(path, index=False)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    def read(self, name: str, content):
        return osm.read_label_files({"peak": self.file(name, content)}, "train")

    def window(self):
        """A 36 km terrain around lon 11.5, lat 47.25 (lon 11.26-11.74, lat 47.09-47.41)."""
        return self.terrain_factory(np.zeros((120, 120)), res_m=300, center_lonlat=(11.5, 47.25), region="train")


@pytest.fixture
def ctx(tiles, tmp_path, terrain_factory):
    with FakeServer() as bucket, FakeServer() as api:
        for t in LISTED:
            bucket.add_file(tile_path(*t), tiles[t])
        bucket.add_file("/tileList.txt", tile_list_body(copernicus.tile_name(*t) for t in LISTED))
        api.add_handler("/api/interpreter", lambda req: Reply(200, b'{"version": 0.6, "elements": []}'))
        api.endpoint = api.url + "/api/interpreter"
        yield Ctx(bucket, api, tmp_path, tiles, terrain_factory)


def serve(path: str, data_key=None, body: bytes | None = None):
    """A setup step: the bucket answers ``path`` with ``tiles[data_key]`` or ``body``."""
    def setup(c: Ctx):
        c.bucket.files[path] = c.tiles[data_key] if data_key is not None else body
    return setup


def run_terrain(setup=None, **kw):
    def run(c: Ctx):
        if setup:
            setup(c)
        return c.terrain(**kw)
    return run


def script(path: str, *replies: Reply, **kw):
    def run(c: Ctx):
        c.bucket.script(path, *replies)
        return c.terrain(**kw)
    return run


def without_tile(c: Ctx):
    del c.bucket.files[tile_path(11, 47)]


N47 = copernicus.tile_name(11, 47)
NODE = '{"type": "node", "id": 1, "lat": 47.1, "lon": 11.1}'


@dataclasses.dataclass
class Row:
    id: str
    run: Callable[[Ctx], object]
    error: type
    fragment: str


ROWS = [
    # ---- Copernicus: sea is decided by the published tile list, never by a 404
    Row("listed tile answers 404 (proxy or mirror without it)", run_terrain(without_tile), DownloadError,
        f"{{url}}/{N47}/{N47}.tif: HTTP 404 Not Found, but the tile list {{url}}/tileList.txt lists {N47}"),
    Row("wrong base_url (everything 404)", lambda c: c.terrain(base_url=c.bucket.url + "/wrong"), DownloadError,
        "{url}/wrong/tileList.txt: HTTP 404 Not Found"),
    Row("tile list is an HTML page sent with 200",
        run_terrain(serve("/tileList.txt", body=b"<!DOCTYPE html><html>Proxy login</html>")), DownloadError,
        "{url}/tileList.txt: not a Copernicus tile list"),
    Row("tile list is a 200 with an empty body", run_terrain(serve("/tileList.txt", body=b"")), DownloadError,
        "{url}/tileList.txt: the tile list names no GLO-30 tile"),
    Row("tile list of the GLO-90 bucket",
        run_terrain(serve("/tileList.txt", body=b"Copernicus_DSM_COG_30_N47_00_E011_00_DEM\n")), DownloadError,
        "the GLO-90 bucket?"),
    Row("window entirely at sea", run_terrain(lon=12.5, lat=48.5), copernicus.EmptyWindowError,
        f"no height at all: {copernicus.tile_name(*SEA)}: absent from {{url}}/tileList.txt (open sea)"),
    Row("window entirely nodata", run_terrain(serve(tile_path(11, 47), "nan")), copernicus.EmptyWindowError,
        f"{{url}}/{N47}/{N47}.tif: only nodata under the window"),
    # ---- Copernicus: a tile that is not what its name says
    Row("tile of another place served under this name", run_terrain(serve(tile_path(11, 47), (12, 47))),
        DownloadError, "not lon 11..12, lat 47..48 as its name says"),
    Row("tile in another CRS", run_terrain(serve(tile_path(11, 47), "webmercator")), DownloadError,
        "is in EPSG:3857, not EPSG:4326"),
    Row("HTML page sent with 200 instead of a tile",
        run_terrain(serve(tile_path(11, 47), body=b"<html><body>Access denied by proxy</body></html>")),
        DownloadError, "not a GeoTIFF: bytes starting '<html><body>Access denied by proxy</body></html>' (an HTML/XML"),
    Row("200 with an empty body instead of a tile", run_terrain(serve(tile_path(11, 47), body=b"")), DownloadError,
        "not a GeoTIFF: 0 bytes (an empty answer)"),
    Row("tile truncated on every try", run_terrain(serve(tile_path(11, 47), body=b"II*\x00" + b"\x00" * 4000)),
        DownloadError, f"{{url}}/{N47}/{N47}.tif: gave up after 3 attempts; last: downloaded file failed validation"),
    # ---- HTTP faults
    Row("Retry-After of 3 days", script(tile_path(11, 47), Reply(429, b"", {"Retry-After": DAYS_3})), DownloadError,
        f"{{url}}/{N47}/{N47}.tif: HTTP 429 Too Many Requests; the server asks to retry after 3.0 days"),
    Row("Retry-After as an HTTP date 3 days ahead",
        lambda c: script(tile_path(11, 47), Reply(503, b"", {"Retry-After": email.utils.formatdate(
            time.time() + 3 * 86400, usegmt=True)}))(c), DownloadError,
        "HTTP 503 Service Unavailable; the server asks"),
    Row("redirect loop", script(tile_path(11, 47), *[Reply(302, b"", {"Location": tile_path(11, 47)})] * 12),
        DownloadError, "redirect error that would lead to an infinite loop"),
    Row("no answer within the read time-out, every try",
        script(tile_path(11, 47), *[Reply(200, b"x", delay_s=0.6)] * 3, read_timeout_s=0.2), DownloadError,
        "gave up after 3 attempts; last: no answer within the read time-out"),
    Row("no network", lambda c: c.terrain(base_url=closed_port_url()), DownloadError, "no network?"),
    Row("base_url without a scheme", lambda c: c.terrain(base_url=c.bucket.url.removeprefix("http://")), ValueError,
        "base_url must be an http(s) URL like 'https://host/path', got '127.0.0.1:"),
    Row("Overpass endpoint without a scheme", lambda c: osm.osm_labels("peak", OSM_BOX, "train", cache_dir=c.tmp,
        endpoint="overpass-api.de/api/interpreter", progress=False), ValueError,
        "endpoint must be an http(s) URL like 'https://host/path', got 'overpass-api.de/api/interpreter'"),
    # ---- Overpass answers
    Row("Overpass element without an id", lambda c: c.overpass_json('{"elements": [{"type": "node", "lat": 47.1, '
        '"lon": 11.1}]}'), DownloadError, "{api}: malformed Overpass element (element {{"),
    Row("Overpass NaN coordinates", lambda c: c.overpass_json('{"elements": [{"type": "node", "id": 1, "lat": NaN, '
        '"lon": 11.1}]}'), DownloadError, "node 1: position lat=nan, lon=11.1 is not finite"),
    Row("Overpass lat outside -90..90", lambda c: c.overpass_json('{"elements": [{"type": "node", "id": 1, '
        '"lat": 147.1, "lon": 11.1}]}'), DownloadError, "lat=147.1, lon=11.1 is not finite lat -90..90"),
    Row("Overpass node without a position", lambda c: c.overpass_json('{"elements": [{"type": "node", "id": 7}]}'),
        DownloadError, "node 7: no position (lat/lon, center or geometry)"),
    Row("Overpass way vertex without lon", lambda c: c.overpass_json('{"elements": [{"type": "way", "id": 5, '
        '"geometry": [{"lat": 47.1, "lon": 11.1}, {"lat": 47.2}]}]}'), DownloadError,
        "way 5: position {{'lat': 47.2}} is not numeric lat/lon"),
    Row("Overpass elements is not a list", lambda c: c.overpass_json('{"elements": {}}'), DownloadError,
        "{api}: the answer is JSON but has no 'elements' list"),
    Row("Overpass 200 with an empty body", lambda c: c.overpass(Reply(200, b"")), DownloadError,
        "{api}: the answer is not valid JSON"),
    Row("Overpass Retry-After of 3 days", lambda c: c.overpass(Reply(429, b"", {"Retry-After": DAYS_3})),
        DownloadError, "{api}: HTTP 429 Too Many Requests; the server asks to retry after 3.0 days"),
    # ---- a user's label files
    Row("broken GeoJSON", lambda c: c.read("p.geojson", '{"type": "FeatureCollection", "features": ['), ValueError,
        "{tmp}/p.geojson: not valid GeoJSON (JSONDecodeError"),
    Row("GeoJSON that is not UTF-8", lambda c: c.read("p.geojson", b'{"type": "Point", "coordinates": [\xff]}'),
        ValueError, "{tmp}/p.geojson: not valid GeoJSON (UnicodeDecodeError"),
    Row("GeoJSON Point without coordinates", lambda c: c.read("p.geojson", {"type": "Point"}), ValueError,
        "{tmp}/p.geojson: malformed GeoJSON (TypeError"),
    Row("GeoJSON coordinates that are not numbers", lambda c: c.read("p.geojson", {"type": "Point", "coordinates":
        ["east", "north"]}), ValueError, "{tmp}/p.geojson: malformed GeoJSON (ValueError"),
    Row("GeoJSON in a projected CRS", lambda c: c.read("p.geojson", {"type": "Point", "crs": {"type": "name",
        "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}}, "coordinates": [1280000.0, 5970000.0]}), ValueError,
        "{tmp}/p.geojson: GeoJSON declares crs 'urn:ogc:def:crs:EPSG::3857'"),
    Row("empty CSV", lambda c: c.read("p.csv", ""), ValueError, "{tmp}/p.csv: cannot read it as csv (EmptyDataError"),
    Row("CSV with the wrong columns", lambda c: c.read("p.csv", pd.DataFrame({"x": [11.0], "y": [47.0]})),
        ValueError, "{tmp}/p.csv: needs columns 'lon' and 'lat'"),
    Row("CSV with lon/lat swapped (|lat| > 90)", lambda c: c.read("p.csv", pd.DataFrame({"lon": [47.1, 47.2],
        "lat": [11.1, 147.2]})), ValueError, "lat outside -90..90 (first: row 1, lon=47.2, lat=147.2); lon and lat "
        "look swapped"),
    Row("CSV with lon 367.6", lambda c: c.read("p.csv", pd.DataFrame({"lon": [367.6], "lat": [47.1]})), ValueError,
        "{tmp}/p.csv: 1 of 1 places have coordinates lon outside -180..180 (not wrapped) (first: row 0, lon=367.6"),
    Row("CSV with an infinite coordinate", lambda c: c.read("p.csv", pd.DataFrame({"lon": [11.0, np.inf],
        "lat": [47.1, 47.2]})), ValueError, "coordinates not finite (first: row 1, lon=inf"),
    Row("CSV with text in a coordinate", lambda c: c.read("p.csv", "lon,lat\n11.1,47.1\n11°12',47.2\n"), ValueError,
        "{tmp}/p.csv: column 'lon' holds 1 values that are not numbers (first: row 1, \"11°12'\")"),
    Row("Parquet that is not Parquet", lambda c: c.read("p.parquet", b"PK\x03\x04 a zip"), ValueError,
        "{tmp}/p.parquet"),
    # ---- label tables (check_label_table: for labels.read_labels and any other reader)
    Row("label table with the wrong columns", lambda c: osm.check_label_table(pd.DataFrame({
        "x": [11.0], "y": [47.0], "class": ["peak"], "source": ["file"], "region": ["train"]}), "t.parquet"),
        ValueError, "t.parquet: label table lacks column(s) ['lon', 'lat']"),
    Row("label table row without a class (concat of mismatched files)", lambda c: osm.check_label_table(pd.concat([
        pd.DataFrame({"lon": [11.0], "lat": [47.0], "class": ["peak"], "source": ["f"], "region": ["r"]}),
        pd.DataFrame({"lon": [11.1], "lat": [47.1], "kind": ["saddle"], "source": ["f"], "region": ["r"]})]),
        "labels/"), ValueError, "labels/: 1 rows have no class name"),
    Row("label table with lon 367.6", lambda c: osm.check_label_table(pd.DataFrame({"lon": [367.6], "lat": [47.0],
        "class": ["peak"], "source": ["f"], "region": ["r"]})), ValueError, "label table: 1 of 1 places have "
        "coordinates lon outside -180..180 (not wrapped)"),
    Row("label table with lon/lat swapped (|lat| > 90)", lambda c: osm.check_label_table(pd.DataFrame({
        "lon": [47.0], "lat": [111.0], "class": ["peak"], "source": ["f"], "region": ["r"]})), ValueError,
        "look swapped"),
    # ---- places against the terrain (clip_to_terrain, used by labels.labels_for_terrain)
    Row("lon/lat swapped within range", lambda c: osm.clip_to_terrain(pd.DataFrame({"lon": [47.25, 47.2, 3.0],
        "lat": [11.5, 11.4, 40.0], "class": "peak"}), c.window()), ValueError,
        "lon and lat look swapped: 2 of 3 places fall inside the terrain window only with lon and lat exchanged"),
    Row("lon 371.5 (would wrap into the window)", lambda c: osm.clip_to_terrain(pd.DataFrame({"lon": [371.5],
        "lat": [47.25], "class": "peak"}), c.window()), ValueError, "lon outside -180..180 (not wrapped)"),
    Row("labels stage from a swapped CSV", lambda c: __import__("topo2vec_lib.labels").labels.labels_for_terrain(
        c.window(), "files", files={"peak": c.file("p.csv", pd.DataFrame({"lon": [47.25], "lat": [11.5]}))}),
        ValueError, "lon and lat look swapped"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_gives_a_clear_error(row, ctx):
    with pytest.raises(row.error) as err:
        row.run(ctx)
    fragment = row.fragment.format(url=ctx.bucket.url, api=ctx.api.endpoint, tmp=ctx.tmp)
    assert fragment in str(err.value), f"{fragment!r} not in {str(err.value)!r}"


def test_nothing_is_cached_for_a_listed_tile_that_answers_404(ctx):
    without_tile(ctx)
    for _ in range(2):  # asked again on the next run: never remembered as sea
        with pytest.raises(DownloadError, match="but the tile list"):
            ctx.terrain()
    assert ctx.bucket.count(tile_path(11, 47)) == 2
    assert not list(ctx.tmp.rglob(f"{N47}*"))


def test_partial_answer_to_a_plain_get_is_resumed_not_kept(ctx):
    """A 206 with the first 1000 bytes to a request without Range: the rest is fetched, never a short file."""
    data = bytes(range(256)) * 40
    ctx.bucket.add_file("/blob", data)
    ctx.bucket.script("/blob", Reply(206, data[:1000], {"Content-Range": f"bytes 0-999/{len(data)}"}))
    out = download(ctx.bucket.url + "/blob", ctx.tmp / "blob", config=ctx.config())
    assert out.read_bytes() == data
    assert [r.headers.get("Range") for r in ctx.bucket.log] == [None, "bytes=1000-"]


def test_undeclared_nodata_sentinel_is_nan_with_a_warning(ctx):
    ctx.bucket.files[tile_path(12, 47)] = ctx.tiles["sentinel"]  # -32767 everywhere, no nodata declared
    with pytest.warns(UserWarning, match="heights below -1000 m .*undeclared nodata"):
        da = ctx.terrain(lon=12.0, lat=47.5)  # half on (11, 47), half on the sentinel tile
    z = da.values
    assert np.isnan(z).any() and np.isfinite(z).any() and np.nanmin(z) > 0


def test_corrupt_cached_overpass_answer_is_fetched_again(ctx):
    ctx.overpass()
    (cached,) = list((ctx.tmp / "osm").rglob("*.json"))
    cached.write_text('{"elements": [')
    with pytest.warns(UserWarning, match="cached Overpass answer is corrupt"):
        df = ctx.overpass()
    assert len(df) == 0 and ctx.api.count() == 2 and json.loads(cached.read_text())["elements"] == []


def test_class_with_no_place_in_the_window_warns(ctx):
    df = pd.DataFrame({"lon": [11.5, 3.0], "lat": [47.25, 40.0], "class": ["peak", "saddle"]})
    with pytest.warns(UserWarning, match="class 'saddle': none of its 1 places falls inside the terrain window"):
        kept = osm.clip_to_terrain(df, ctx.window())
    assert kept["class"].tolist() == ["peak"]


def test_empty_label_file_warns(ctx):
    with pytest.warns(UserWarning, match="p.csv: label file for class 'peak' holds no places"):
        assert len(ctx.read("p.csv", "lon,lat\n")) == 0


def test_a_valid_label_table_passes_unchanged(ctx):
    df = pd.DataFrame({"lon": [11.5, -70.1], "lat": [47.25, -33.4], "class": ["peak", "saddle"],
                       "source": ["file"] * 2, "region": ["train"] * 2})
    assert osm.check_label_table(df, "ok.parquet") is df


def test_overpass_answer_cut_mid_body_is_retried_and_never_cached(ctx):
    body = json.dumps({"elements": [json.loads(NODE)]}).encode()
    df = ctx.overpass(Reply(200, body, cut_after=len(body) // 2))
    assert df.osm_id.tolist() == [] and ctx.api.count() == 2  # the fake's normal answer is empty
    (cached,) = list((ctx.tmp / "osm").rglob("*.json"))
    assert json.loads(cached.read_text())["elements"] == []
