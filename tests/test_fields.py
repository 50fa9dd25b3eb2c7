"""topo2vec_lib.fields: the metric grid of any DEM, exact patches, tiles, overviews, the optimised encoder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from topo2vec_lib import fields, inference

REPO = Path(__file__).resolve().parents[1]
REAL_DEM = REPO / "tests" / "data" / "real" / "glo30_N34W119_san_gabriel_256.tif"   # EPSG:4326


@pytest.fixture(scope="module")
def model():
    import torch

    from topo2vec_lib.models import Topo2Vec
    from topo2vec_lib.models.networks import Encoder

    torch.manual_seed(0)
    enc = Encoder()
    for m in enc.modules():                      # BatchNorm statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return Topo2Vec(enc, {"k": 4, "embed_res_m": 30.0}, name="t2v")


def test_auto_crs_is_the_local_utm_zone_or_a_centred_laea():
    assert fields.auto_crs((7.5, 46.0, 7.8, 46.3)) == "EPSG:32632"
    assert fields.auto_crs((-118.2, 34.2, -118.1, 34.4)) == "EPSG:32611"
    assert fields.auto_crs((146.0, -43.0, 147.0, -42.0)) == "EPSG:32755"          # Tasmania: south
    wide = fields.auto_crs((5.0, 45.0, 15.0, 50.0))
    assert wide.startswith("+proj=laea") and "+lon_0=10.0000" in wide and "+lat_0=47.5000" in wide


def test_a_geographic_dem_gets_a_metric_grid_on_multiples_of_the_stride():
    dem = fields.open_dem(REAL_DEM)
    assert dem.bounds_lonlat[0] == pytest.approx(-118.18569, abs=1e-5)
    grid = fields.field_grid(dem, 30, 60)
    assert "UTM zone 11N" in fields._wkt(grid.crs)
    assert grid.x0 % 60 == 0 and grid.y0 % 60 == 0 and grid.stride_px == 2
    assert 25 < dem.pixel_m(grid.crs) < 31                                          # 1" at 34 deg N
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds(dem.crs_wkt, grid.crs, *dem.bounds, densify_pts=21)
    half = 17 * 30 / 2
    assert grid.x[0] - half >= left and grid.x[-1] + half <= right
    assert grid.y[-1] - half >= bottom and grid.y[0] + half <= top
    assert grid.x[0] - half - 60 < left and grid.y[0] + half + 60 > top            # and no place more fits
    cover = np.zeros((grid.ny, grid.nx), int)
    for _, _, rows, cols in fields.tiles(grid, 32):
        cover[rows, cols] += 1
    assert (cover == 1).all()
    assert fields.field_grid(dem, 30, 45).stride_px is None


def test_the_field_equals_the_sampler_on_the_same_pixels(model, tmp_path):
    """Fast path (strided windows) and general path (PatchSampler) give the same vectors where both apply, and
    places off the grid are interpolated by the sampler."""
    fast = fields.embed_field(REAL_DEM, model, res_m=30, stride_m=60, out=tmp_path / "fast.tif", dtype="float32",
                              tile=16, optimise=False)
    general = fields.embed_field(REAL_DEM, model, res_m=30, stride_m=90, out=tmp_path / "general.tif",
                                 dtype="float32", tile=16, optimise=False)
    a, b = fields.open_field(fast), fields.open_field(general)
    # cells at the same place (multiples of 180 m): the same patch, exact windows vs bilinear at pixel centres
    xa, ya, xb, yb = a["x"].values, a["y"].values, b["x"].values, b["y"].values
    cx, cy = np.intersect1d(xa, xb), np.intersect1d(ya, yb)
    va = a["embedding"].sel(x=cx, y=cy).values
    vb = b["embedding"].sel(x=cx, y=cy).values
    ok = np.isfinite(va).all(axis=2) & np.isfinite(vb).all(axis=2)
    assert ok.sum() > 50
    np.testing.assert_allclose(va[ok], vb[ok], atol=1e-5)


def test_the_optimised_encoder_equals_the_eager_one(model):
    enc = inference.fast_encoder(model)
    assert enc is not None
    x = np.random.default_rng(1).random((777, 1, 17, 17), dtype=np.float32)
    np.testing.assert_allclose(enc(x), model.embed_patches(x), atol=1e-5, rtol=1e-5)
    from topo2vec_lib.models.identity import IdEmbedder

    assert inference.fast_encoder(IdEmbedder()) is None                  # not a torch network: eager


def test_the_bf16_encoder_is_within_its_tolerance_of_float32_or_falls_back(model, monkeypatch):
    x = np.random.default_rng(2).random((300, 1, 17, 17), dtype=np.float32)
    want = model.embed_patches(x)
    if inference.bf16_supported():
        got = inference.fast_encoder(model, precision="bf16")(x)
        rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
        assert rel.max() <= inference.BF16_TOLERANCE and rel.max() > 1e-5            # bfloat16, not float32
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > 0.9999
    monkeypatch.setattr(inference, "bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="no native bfloat16"):
        enc = inference.fast_encoder(model, precision="bf16")
    np.testing.assert_allclose(enc(x), want, atol=1e-5, rtol=1e-5)                 # float32 there
    with pytest.raises(ValueError, match="--precision 'fp8' must be one of float32, bf16"):
        inference.fast_encoder(model, precision="fp8")


def test_a_bf16_field_records_its_precision_and_is_close_to_float32(model, tmp_path):
    kw = dict(res_m=30, stride_m=60, dtype="float32", tile=32)
    a = fields.open_field(fields.embed_field(REAL_DEM, model, out=tmp_path / "f32.zarr", **kw))
    b = fields.open_field(fields.embed_field(REAL_DEM, model, out=tmp_path / "bf16.zarr", precision="bf16", **kw))
    assert a.attrs["precision"] == "float32"
    assert b.attrs["precision"] == ("bf16" if inference.bf16_supported() else "float32")
    va, vb = a["embedding"].values, b["embedding"].values
    assert np.array_equal(np.isnan(va), np.isnan(vb)) and np.isfinite(va).all(axis=2).sum() > 1000
    ok = np.isfinite(va).all(axis=2)
    rel = np.linalg.norm(vb[ok] - va[ok], axis=1) / np.linalg.norm(va[ok], axis=1)
    assert rel.max() <= inference.BF16_TOLERANCE
    with pytest.raises(ValueError, match="--precision"):
        fields.embed_field(REAL_DEM, model, out=tmp_path / "x.zarr", precision="half", **kw)


def test_a_tile_beyond_the_float16_range_is_refused_and_stats_skip_nan_cells(tmp_path):
    grid = fields.FieldGrid(crs="EPSG:32632", res_m=30, stride_m=60, x0=0, y0=0, nx=8, ny=8, coarsest_m=30)
    fields._create_store(tmp_path / "s.zarr", grid, 3, 8, "float16", {}, [2])
    vec = np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    vec[0, 0] = np.nan
    stats = fields._write_chunk(tmp_path / "s.zarr", slice(0, 8), slice(0, 8), vec, "float16", [2])
    assert stats["valid"] == 63 and stats["min"] == [3.0, 4.0, 5.0] and stats["max"] == [189.0, 190.0, 191.0]
    vec[3, 4, 1] = -7e4
    with pytest.raises(ValueError, match="exceed the float16 range"):
        fields._write_chunk(tmp_path / "s.zarr", slice(0, 8), slice(0, 8), vec, "float16", [2])


def test_overview_cells_are_nan_aware_block_means():
    a = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    a[0, :] = np.nan
    a[1, 1] = np.nan
    h = fields._halve(a)
    p = np.pad(a, ((0, 1), (0, 1), (0, 0)), constant_values=np.nan)
    ref = np.nanmean(p.reshape(3, 2, 4, 2, 3).transpose(0, 2, 4, 1, 3).reshape(3, 4, 3, 4), axis=3)
    assert h.shape == (3, 4, 3) and np.array_equal(np.isnan(h), np.isnan(ref))
    np.testing.assert_allclose(h, ref, atol=1e-6)
    grid = fields.FieldGrid(crs="EPSG:32632", res_m=30, stride_m=60, x0=0, y0=0, nx=1700, ny=600, coarsest_m=30)
    assert fields.overview_factors(grid, 256) == [2, 4, 8]
    assert fields.overview_factors(grid, 100) == [2, 4]


@pytest.mark.slow
def test_cog_overviews_are_the_tiles_block_means(model, tmp_path, monkeypatch):
    import rasterio

    monkeypatch.setattr(fields, "COG_BLOCK", 128)        # a field of ~250 cells then has one overview level
    out = fields.embed_field(REAL_DEM, model, res_m=30, stride_m=30, out=tmp_path / "f.tif", dtype="float32",
                             tile=64)
    with rasterio.open(out) as src:
        assert src.overviews(1) == [2]
        full = src.read(5)
        ovr = src.read(5, out_shape=(-(-src.height // 2), -(-src.width // 2)))
    p = np.pad(full, ((0, full.shape[0] % 2), (0, full.shape[1] % 2)), constant_values=np.nan)
    ref = np.nanmean(p.reshape(p.shape[0] // 2, 2, p.shape[1] // 2, 2).transpose(0, 2, 1, 3)
                     .reshape(p.shape[0] // 2, p.shape[1] // 2, 4), axis=2)
    np.testing.assert_allclose(ovr, ref, atol=1e-5)
    assert fields.cog_layout_errors(out) == []


def test_the_cog_check_follows_gdals_rules(tmp_path):
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.shutil import copy as rio_copy

    profile = dict(driver="GTiff", width=1100, height=700, count=3, dtype="float32", crs="EPSG:32632",
                   transform=rasterio.transform.from_origin(0, 7e5, 30, 30))
    data = np.random.default_rng(0).random((3, 700, 1100), dtype=np.float32)
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", **profile) as dst:                  # strips, no overviews
        dst.write(data)
    assert any("not tiled" in e for e in fields.cog_layout_errors(plain))
    late = tmp_path / "late.tif"                                       # overviews added after the data
    with rasterio.open(late, "w", tiled=True, blockxsize=256, blockysize=256, **profile) as dst:
        dst.write(data)
    with rasterio.open(late, "r+") as dst:
        dst.build_overviews([2, 4], Resampling.average)
    assert any("must come last" in e or "not all before" in e for e in fields.cog_layout_errors(late))
    external = tmp_path / "external.tif"
    rio_copy(plain, external, driver="GTiff", TILED="YES")
    half = dict(profile, width=550, height=350, transform=profile["transform"] * profile["transform"].scale(2, 2))
    with rasterio.open(tmp_path / "external.tif.ovr", "w", **half) as dst:     # GDAL's external overview file
        dst.write(data[:, ::2, ::2])
    assert any("external .ovr" in e for e in fields.cog_layout_errors(external))
    cog = tmp_path / "cog.tif"                                         # GDAL's own COG driver: a COG
    rio_copy(plain, cog, driver="COG", COMPRESS="ZSTD")
    assert fields.cog_layout_errors(cog) == []


def test_sentinels_are_masked_before_resampling(model, tmp_path):
    import rasterio

    from topo2vec_lib.terrain import NodataSentinelWarning

    src = tmp_path / "sentinel.tif"
    with rasterio.open(REAL_DEM) as ds:
        z, profile = ds.read(1), ds.profile
    z[100:140, 100:140] = -32768                                   # undeclared nodata
    with rasterio.open(src, "w", **profile) as dst:
        dst.write(z, 1)
    with pytest.warns(NodataSentinelWarning, match="-32768"):
        out = fields.embed_field(src, model, res_m=30, stride_m=60, out=tmp_path / "s.zarr", optimise=False)
    v = fields.open_field(out)["embedding"].values.astype(np.float32)
    assert np.isnan(v).all(axis=2).sum() > 30 and np.isfinite(v).all(axis=2).sum() > 1000
    assert np.nanmax(np.abs(v)) < 1e3
