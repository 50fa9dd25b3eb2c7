"""Copernicus GLO-30 downloads and mosaic, and the shared HTTP client, against a local fake bucket.

The fake bucket serves tiny real COG tiles (1x1 degree at 0.005 degree) of an analytic surface that is
linear in lon/lat, so bilinear reprojection must reproduce it exactly at every output pixel centre, and a
``tileList.txt`` naming them (the tile (12, 48) is sea: absent from the list, never served).
"""
from __future__ import annotations

import numpy as np
import pytest
from fakes import FakeServer, Reply, SleepRecorder, closed_port_url, tile_list_body

from topo2vec_lib import copernicus
from topo2vec_lib.download import DownloadError, HttpConfig, NotFoundError, download, fetch_bytes

RES_DEG = 0.005  # fake tile pixel size (real tiles: 1 arc-second); 200 px, 4 COG blocks + an overview


def surface(lon, lat):
    """The analytic terrain of the fake tiles, metres."""
    return 1000.0 + 200.0 * (np.asarray(lon) - 11.0) + 100.0 * (np.asarray(lat) - 47.0)


def make_tile(tmp_path, lon: int, lat: int, values=None, nodata=None, crs="EPSG:4326") -> bytes:
    """Bytes of a COG tile with SW corner (lon, lat), pixels of RES_DEG holding ``surface`` at their centres
    (or ``values(z)``, a function of that array); ``nodata`` is declared if given."""
    import rasterio
    from rasterio.transform import from_origin

    n = int(round(1 / RES_DEG))
    lon_c = lon + (np.arange(n) + 0.5) * RES_DEG
    lat_c = lat + 1 - (np.arange(n) + 0.5) * RES_DEG
    z = surface(lon_c[None, :], lat_c[:, None]).astype(np.float32)
    if values is not None:
        z = values(z).astype(np.float32)
    path = tmp_path / f"src_{lon}_{lat}_{id(values)}_{nodata}_{crs.replace(':', '')}.tif"
    with rasterio.open(path, "w", driver="COG", width=n, height=n, count=1, dtype="float32", crs=crs,
                       transform=from_origin(lon, lat + 1, RES_DEG, RES_DEG), blocksize=128, nodata=nodata) as ds:
        ds.write(z, 1)
    return path.read_bytes()


def bucket_path(lon: int, lat: int) -> str:
    name = copernicus.tile_name(lon, lat)
    return f"/{name}/{name}.tif"


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """{(lon, lat): bytes} for the four tiles around (12, 48); (12, 48) is 'sea' (never served)."""
    tmp = tmp_path_factory.mktemp("tiles")
    return {(lon, lat): make_tile(tmp, lon, lat) for lon, lat in [(11, 47), (12, 47), (11, 48)]}


LISTED = [(11, 47), (12, 47), (11, 48), (20, 40)]
"""Tiles in the fake bucket's tileList.txt: the three served ones and (20, 40), far from every test window."""


@pytest.fixture
def bucket(tiles):
    with FakeServer() as srv:
        for (lon, lat), data in tiles.items():
            srv.add_file(bucket_path(lon, lat), data)
        srv.add_file("/tileList.txt", tile_list_body(copernicus.tile_name(*t) for t in LISTED))
        yield srv


def config(**kw) -> HttpConfig:
    kw.setdefault("sleep", SleepRecorder())
    return HttpConfig(connect_timeout_s=2.0, read_timeout_s=5.0, retries=3, connect_retries=1, **kw)


def window_bounds(lon, lat, size_m, res_m, crs="EPSG:3035"):
    from pyproj import Transformer

    cx, cy = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    x0, y0 = np.floor(cx / res_m) * res_m - size_m / 2, np.floor(cy / res_m) * res_m - size_m / 2
    return (x0, y0, x0 + size_m, y0 + size_m)


def leftovers(cache):
    return sorted(p.name for p in cache.rglob("*") if p.name.endswith(".part") or p.name.endswith(".tmp"))


# ---------------------------------------------------------------- names
def test_tile_names_and_bounds():
    assert copernicus.tile_name(11, 47) == "Copernicus_DSM_COG_10_N47_00_E011_00_DEM"
    assert copernicus.tile_name(-1, -1) == "Copernicus_DSM_COG_10_S01_00_W001_00_DEM"
    assert copernicus.tile_name(-122, 37) == "Copernicus_DSM_COG_10_N37_00_W122_00_DEM"
    assert copernicus.tiles_for_bounds(11.2, 47.1, 11.8, 47.9) == [copernicus.tile_name(11, 47)]
    # whole-degree edges do not pull in the neighbours
    assert copernicus.tiles_for_bounds(11, 47, 12, 48) == [copernicus.tile_name(11, 47)]
    names = copernicus.tiles_for_bounds(-0.5, -0.5, 0.5, 0.5)  # across the equator and Greenwich
    assert names == ["Copernicus_DSM_COG_10_N00_00_W001_00_DEM", "Copernicus_DSM_COG_10_N00_00_E000_00_DEM",
                     "Copernicus_DSM_COG_10_S01_00_W001_00_DEM", "Copernicus_DSM_COG_10_S01_00_E000_00_DEM"]
    assert len(copernicus.tiles_for_bounds(10, 45, 15, 50)) == 25  # the paper's train polygon
    assert copernicus.tile_url("X", "http://127.0.0.1/b/") == "http://127.0.0.1/b/X/X.tif"
    for bad in [(12, 47, 11, 48), (11, 47, 11, 48), (179, 0, 181, 1), (0, float("nan"), 1, 1)]:
        with pytest.raises(ValueError, match="bounds"):
            copernicus.tiles_for_bounds(*bad)


# ---------------------------------------------------------------- mosaic
def test_mosaic_matches_the_analytic_surface_and_sea_is_nan(bucket, tmp_path):
    import rasterio
    from pyproj import Transformer

    bounds = window_bounds(12.0, 47.95, 30_000, 500)
    cfg = config()
    da = copernicus.copernicus_terrain(bounds, crs="EPSG:3035", res_m=500, cache_dir=tmp_path,
                                       base_url=bucket.url, region="train", region_lonlat=[10, 45, 15, 50],
                                       block_px=16, config=cfg, progress=False)  # 4 x 4 blocks
    # contract (docs/architecture.md)
    assert da.dims == ("y", "x") and da.dtype == np.float32 and da.shape == (60, 60)
    assert np.all(np.diff(da.x) > 0) and np.all(np.diff(da.y) < 0)
    assert da.rio.crs.to_epsg() == 3035 and da.rio.transform().a == 500 and da.rio.transform().e == -500
    assert da.x[0] == bounds[0] + 250 and da.y[0] == bounds[3] - 250
    assert da.attrs["source"] == "copernicus" and da.attrs["res_m"] == 500.0
    assert da.attrs["region"] == "train" and da.attrs["region_lonlat"] == [10, 45, 15, 50]

    xx, yy = np.meshgrid(da.x.values, da.y.values)
    lon, lat = Transformer.from_crs("EPSG:3035", "EPSG:4326", always_xy=True).transform(xx, yy)
    edge = 2 * RES_DEG
    land = ~((lon > 12 - edge) & (lat > 48 - edge))          # away from the missing (sea) tile
    sea = (lon > 12 + edge) & (lat > 48 + edge)
    assert land.sum() > 2000 and sea.sum() > 300
    z = da.values
    assert np.isfinite(z[land]).all()
    # GDAL warps with its approximate transformer (<= 0.125 px error, i.e. <= 0.125 m here); a half-pixel
    # shift of the grid would be 0.5 m in lon and 0.25 m in lat
    np.testing.assert_allclose(z[land], surface(lon, lat)[land], atol=0.15)
    assert np.isnan(z[sea]).all()

    # the same result whatever the block size (blocks read a seamless mosaic with a margin), up to GDAL's
    # approximate transformer; NaN may differ only in the band along the sea tile's edge
    whole = copernicus.copernicus_terrain(bounds, res_m=500, cache_dir=tmp_path, base_url=bucket.url,
                                          block_px=4096, config=cfg, progress=False).values
    np.testing.assert_allclose(whole[land], z[land], atol=0.05)
    assert not (np.isnan(whole) != np.isnan(z))[land | sea].any()

    # cache: the tile list and 3 tiles, each asked once; the sea tile (not listed) is never asked for
    assert bucket.count() == 4 and bucket.count("/tileList.txt") == 1 and bucket.count(bucket_path(12, 48)) == 0
    files = sorted(p.name for p in (tmp_path / "copernicus").iterdir())
    assert files == sorted([f"{copernicus.tile_name(*t)}.tif" for t in [(11, 47), (12, 47), (11, 48)]]
                           + ["tileList.txt", "tileList.json"])
    with rasterio.open(tmp_path / "copernicus" / f"{copernicus.tile_name(11, 47)}.tif") as ds:
        assert ds.width == 200 and ds.crs.to_epsg() == 4326
    assert leftovers(tmp_path) == []


def test_window_fully_at_sea_is_an_error_naming_the_tiles(bucket, tmp_path):
    bounds = window_bounds(12.5, 48.5, 5_000, 500)
    name = copernicus.tile_name(12, 48)
    with pytest.raises(copernicus.EmptyWindowError, match=f"no height at all: {name}: absent from "
                       f"{bucket.url}/tileList.txt \\(open sea\\)"):
        copernicus.copernicus_terrain(bounds, res_m=500, cache_dir=tmp_path, base_url=bucket.url,
                                      config=config(), progress=False)
    assert bucket.count(bucket_path(12, 48)) == 0


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="res_m"):
        copernicus.copernicus_terrain((0, 0, 1000, 1000), res_m=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="xmin < xmax"):
        copernicus.copernicus_terrain((1000, 0, 0, 1000), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="projected"):
        copernicus.copernicus_terrain((0, 0, 1, 1), crs="EPSG:4326", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="resampling"):
        copernicus.copernicus_terrain((0, 0, 1000, 1000), resampling="smooth", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="not a Copernicus"):
        copernicus.fetch_tiles(["N47E011.hgt"], tmp_path)


# ---------------------------------------------------------------- faults
def test_dropped_connection_resumes_with_range(bucket, tiles, tmp_path):
    path = bucket_path(11, 47)
    data = tiles[(11, 47)]
    bucket.script(path, Reply(200, data, cut_after=len(data) // 3))
    out = copernicus.fetch_tiles([copernicus.tile_name(11, 47)], tmp_path, bucket.url, config(), progress=False)
    assert out[copernicus.tile_name(11, 47)].read_bytes() == data
    reqs = [r for r in bucket.log if r.path == path]
    assert len(reqs) == 2 and reqs[1].headers.get("Range") == f"bytes={len(data) // 3}-"
    assert leftovers(tmp_path) == []


def test_corrupt_tile_is_refetched_and_never_used(bucket, tiles, tmp_path):
    name, path, data = copernicus.tile_name(11, 47), bucket_path(11, 47), tiles[(11, 47)]
    # a truncated object with a consistent length passes the size check but fails validation
    bucket.script(path, Reply(200, data[: len(data) // 2]))
    cfg = config()
    out = copernicus.fetch_tiles([name], tmp_path, bucket.url, cfg, progress=False)
    assert out[name].read_bytes() == data and bucket.count(path) == 2 and len(cfg.sleep.calls) == 1
    # a corrupt file already in the cache is deleted and fetched again
    (tmp_path / f"{name}.tif").write_bytes(data[:1000])
    out = copernicus.fetch_tiles([name], tmp_path, bucket.url, cfg, progress=False)
    assert out[name].read_bytes() == data and bucket.count(path) == 3


def test_always_corrupt_tile_fails_naming_the_url_and_leaves_nothing(bucket, tiles, tmp_path):
    name, path, data = copernicus.tile_name(11, 47), bucket_path(11, 47), tiles[(11, 47)]
    bucket.script(path, *[Reply(200, data[:5000])] * 4)
    with pytest.raises(DownloadError, match=f"{bucket.url}{path}.*failed validation"):
        copernicus.fetch_tiles([name], tmp_path, bucket.url, config(), progress=False)
    assert bucket.count(path) == 4  # 1 + retries
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tileList.json", "tileList.txt"]  # no tile, no .part


def test_429_honours_retry_after_and_5xx_backs_off(bucket, tiles, tmp_path):
    name, path = copernicus.tile_name(11, 47), bucket_path(11, 47)
    bucket.script(path, Reply(429, b"slow down", {"Retry-After": "7"}), Reply(503), Reply(504))
    cfg = config(backoff_s=1.5, jitter=0.0)
    out = copernicus.fetch_tiles([name], tmp_path, bucket.url, cfg, progress=False)
    assert out[name].read_bytes() == tiles[(11, 47)]
    assert cfg.sleep.calls == [7.0, 3.0, 6.0]  # Retry-After, then backoff 1.5 * 2**1, 1.5 * 2**2


def test_slow_answer_times_out_and_is_retried(bucket, tiles, tmp_path):
    name, path = copernicus.tile_name(11, 47), bucket_path(11, 47)
    bucket.script(path, Reply(200, tiles[(11, 47)], delay_s=1.5))
    cfg = HttpConfig(connect_timeout_s=2.0, read_timeout_s=0.3, retries=2, sleep=SleepRecorder())
    out = copernicus.fetch_tiles([name], tmp_path, bucket.url, cfg, progress=False)
    assert out[name].read_bytes() == tiles[(11, 47)] and bucket.count(path) == 2


def test_persistent_server_errors_give_up_naming_the_url(bucket, tmp_path):
    path = bucket_path(11, 47)
    bucket.script(path, *[Reply(500)] * 4)
    cfg = config()
    with pytest.raises(DownloadError, match=f"{bucket.url}{path}: gave up after 4 attempts; last: HTTP 500"):
        download(bucket.url + path, tmp_path / "t.tif", config=cfg)
    assert bucket.count(path) == 4 and len(cfg.sleep.calls) == 3 and list(tmp_path.iterdir()) == []
    # a client error is final at once, with the server's explanation
    bucket.script(path, Reply(403, b"AccessDenied"))
    with pytest.raises(DownloadError, match="HTTP 403.*AccessDenied") as err:
        download(bucket.url + path, tmp_path / "t.tif", config=cfg)
    assert not isinstance(err.value, NotFoundError) and err.value.status == 403 and bucket.count(path) == 5
    with pytest.raises(NotFoundError, match="404"):
        fetch_bytes(bucket.url + "/nothing-here", config=cfg)


def test_offline_fails_fast_with_a_clear_message(tmp_path):
    url = closed_port_url()
    cfg = config()
    with pytest.raises(DownloadError, match=f"cannot reach {url}/.*no network"):
        copernicus.copernicus_terrain(window_bounds(12.0, 47.5, 3000, 500), res_m=500, cache_dir=tmp_path,
                                      base_url=url, config=cfg, progress=False)
    assert len(cfg.sleep.calls) == 1  # connect_retries=1: two tries, one wait, then the error
    assert leftovers(tmp_path) == [] and not list((tmp_path / "copernicus").glob("*.tif"))


def test_resume_copes_with_servers_that_ignore_or_refuse_the_range(bucket, tiles, tmp_path):
    path, data = bucket_path(11, 47), tiles[(11, 47)]
    url = bucket.url + path
    # cut, then a server that ignores Range and sends the whole file again (200): the file restarts
    bucket.script(path, Reply(200, data, cut_after=1000), Reply(200, data))
    assert download(url, tmp_path / "a.tif", config=config()).read_bytes() == data
    # a stale .part longer than the object: 416, the .part is dropped and the download starts over
    (tmp_path / "b.tif.part").write_bytes(b"x" * (len(data) + 10))
    assert download(url, tmp_path / "b.tif", config=config()).read_bytes() == data
    ranges = [r.headers.get("Range") for r in bucket.log]
    assert ranges == [None, "bytes=1000-", f"bytes={len(data) + 10}-", None]
    assert leftovers(tmp_path) == []


def test_backoff_is_exponential_with_seeded_jitter(bucket, tmp_path):
    path = bucket_path(11, 47)
    waits = []
    for _ in range(2):
        bucket.script(path, *[Reply(503)] * 4)
        cfg = config(backoff_s=1.0, jitter=0.5, seed=3)
        with pytest.raises(DownloadError, match="gave up after 4 attempts"):
            download(bucket.url + path, tmp_path / "t.tif", config=cfg)
        waits.append(cfg.sleep.calls)
    assert waits[0] == waits[1]  # the same seed, the same waits
    lo, hi = np.array([1.0, 2.0, 4.0]), np.array([1.5, 3.0, 6.0])
    assert np.all((np.array(waits[0]) >= lo) & (np.array(waits[0]) <= hi)) and len(set(np.array(waits[0]) / lo)) == 3


def test_load_terrain_copernicus_goes_through_the_configurable_default_url(bucket, tmp_path, monkeypatch):
    """terrain.load_terrain(source="copernicus") (helper A) reaches the bucket named by DEFAULT_BASE_URL."""
    terrain = pytest.importorskip("topo2vec_lib.terrain")
    from pyproj import Transformer

    monkeypatch.setattr(copernicus, "DEFAULT_BASE_URL", bucket.url)
    da = terrain.load_terrain("copernicus", "train", center_lonlat=(11.5, 47.5), size_km=20, res_m=500,
                              cache_dir=tmp_path)
    assert da.attrs["source"] == "copernicus" and da.attrs["region"] == "train" and da.shape == (40, 40)
    lon, lat = Transformer.from_crs(da.rio.crs, "EPSG:4326", always_xy=True).transform(
        *np.meshgrid(da.x.values, da.y.values))
    np.testing.assert_allclose(da.values, surface(lon, lat), atol=0.15)
    assert bucket.count() == 2 and (tmp_path / "copernicus" / f"{copernicus.tile_name(11, 47)}.tif").exists()


# ---------------------------------------------------------------- the published tile list
def age_tile_list(cache, days: float) -> None:
    """Pretend the cached tile list was fetched ``days`` ago."""
    import json
    import time

    meta = json.loads((cache / "tileList.json").read_text())
    meta["fetched_unix"] = time.time() - days * 86400
    (cache / "tileList.json").write_text(json.dumps(meta))


def test_tile_list_is_cached_and_fetched_again_when_old(bucket, tmp_path):
    names, cached = copernicus.tile_list(tmp_path, bucket.url, config())
    assert names == {copernicus.tile_name(*t) for t in LISTED} and not cached
    assert copernicus.tile_list(tmp_path, bucket.url, config()) == (names, True) and bucket.count() == 1
    age_tile_list(tmp_path, 31)  # older than TILE_LIST_MAX_AGE_S (30 days): asked again
    assert copernicus.tile_list(tmp_path, bucket.url, config()) == (names, False) and bucket.count() == 2
    # a list cached for another base_url is not reused
    with FakeServer() as other:
        other.add_file("/tileList.txt", tile_list_body([copernicus.tile_name(20, 40)]))
        assert copernicus.tile_list(tmp_path, other.url, config())[0] == {copernicus.tile_name(20, 40)}
    # a corrupt cached list is fetched again
    (tmp_path / "tileList.txt").write_text("<html>oops</html>")
    assert copernicus.tile_list(tmp_path, bucket.url, config()) == (names, False)


def test_old_tile_list_is_used_offline_with_a_warning(bucket, tmp_path):
    names, _ = copernicus.tile_list(tmp_path, bucket.url, config())
    age_tile_list(tmp_path, 40)
    bucket.script("/tileList.txt", *[Reply(503)] * 4)
    with pytest.warns(UserWarning, match="could not fetch the Copernicus tile list again.*HTTP 503.*40.0 days"):
        assert copernicus.tile_list(tmp_path, bucket.url, config()) == (names, True)


def test_fully_cached_window_needs_no_network(bucket, tmp_path):
    bounds = window_bounds(11.5, 47.5, 5_000, 500)
    first = copernicus.copernicus_terrain(bounds, res_m=500, cache_dir=tmp_path, base_url=bucket.url,
                                          config=config(), progress=False)
    again = copernicus.copernicus_terrain(bounds, res_m=500, cache_dir=tmp_path, base_url=closed_port_url(),
                                          config=config(), progress=False)
    np.testing.assert_array_equal(first.values, again.values)


def test_stale_list_is_checked_again_when_a_listed_tile_answers_404(bucket, tmp_path):
    """A tile removed from the bucket since the list was cached: one fresh list decides, nothing is cached."""
    cache = tmp_path / "copernicus"
    name = copernicus.tile_name(11, 47)
    copernicus.tile_list(cache, bucket.url, config())
    del bucket.files[bucket_path(11, 47)]
    bucket.files["/tileList.txt"] = tile_list_body([copernicus.tile_name(12, 47)])
    assert copernicus.fetch_tiles([name], cache, bucket.url, config(), progress=False) == {name: None}
    assert bucket.count("/tileList.txt") == 2 and bucket.count(bucket_path(11, 47)) == 1
    assert not list(cache.glob(f"{name}*"))


def test_legacy_missing_markers_are_not_trusted(bucket, tiles, tmp_path):
    """A ``.missing`` marker written by an older version (a cached 404) is ignored and removed."""
    name = copernicus.tile_name(11, 47)
    (tmp_path / f"{name}.missing").write_text("{}")
    out = copernicus.fetch_tiles([name], tmp_path, bucket.url, config(), progress=False)
    assert out[name].read_bytes() == tiles[(11, 47)] and not (tmp_path / f"{name}.missing").exists()
