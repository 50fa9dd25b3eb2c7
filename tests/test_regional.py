"""Region-wide embeddings (topo2vec_lib.regional): grid, NaN at edges and nodata, zarr, Dask distributed, memory."""
from __future__ import annotations

import sys
import tracemalloc

import numpy as np
import pytest

from topo2vec_lib.grid import lonlat_box_to_xy
from topo2vec_lib.models import Embedder
from topo2vec_lib.regional import embed_region, embed_xy, grid_xy, open_region_embedding, valid_mask
from topo2vec_lib.sampler import PatchSampler, normalize


class StatsEmbedder(Embedder):
    """A tiny deterministic embedder (numpy only): per-patch statistics of the normalised 17 x 17 patch."""

    dim = 4
    name = "stats"
    res_m = 30.0

    def embed_patches(self, x):
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        return np.stack([x.mean(1), x.std(1), x[:, 144], x[:, 0]], axis=1).astype(np.float32)


class WideEmbedder(StatsEmbedder):
    """The raw normalised patch (289 values), like the ID baseline: big output per place."""

    dim = 289
    name = "wide"

    def embed_patches(self, x):
        return np.asarray(x, dtype=np.float32).reshape(len(x), -1)


@pytest.fixture
def rough(terrain_factory):
    rng = np.random.default_rng(3)
    z = rng.normal(0, 5, size=(120, 140)).cumsum(0).cumsum(1).astype(np.float32)
    return terrain_factory(z - z.min() + 100)


def test_grid_xy_centred_and_spaced():
    x, y = grid_xy((0, 0, 1000, 650), 100)
    assert x.size == 10 and y.size == 6
    np.testing.assert_allclose(np.diff(x), 100)
    np.testing.assert_allclose(np.diff(y), -100)
    assert x[0] == pytest.approx(50) and x[-1] == pytest.approx(950)
    assert (y[0] + y[-1]) / 2 == pytest.approx(325)


@pytest.mark.parametrize("bounds, stride", [((0, 0, 10, 10), 0), ((0, 0, 10, 10), -5), ((10, 0, 0, 10), 1),
                                            ((0, 0, 10, 10), 50), ("abc", 1)])
def test_grid_xy_bad_input(bounds, stride):
    with pytest.raises(ValueError):
        grid_xy(bounds, stride)


def test_lonlat_box_to_xy_covers_corners():
    from pyproj import Transformer

    box = [7.5, 46.5, 7.7, 46.7]
    left, bottom, right, top = lonlat_box_to_xy("EPSG:3035", box)
    t = Transformer.from_crs("EPSG:4326", "EPSG:3035", always_xy=True)
    for lon in box[0::2]:
        for lat in box[1::2]:
            x, y = t.transform(lon, lat)
            assert left - 1e-6 <= x <= right + 1e-6 and bottom - 1e-6 <= y <= top + 1e-6
    with pytest.raises(ValueError, match="lon/lat order"):
        lonlat_box_to_xy("EPSG:3035", [46.5, 7.5, 46.4, 7.7])


def test_embed_region_matches_direct_embedding_and_nans_edges_and_nodata(rough, tmp_path):
    rough.values[60:64, 70:74] = np.nan
    sampler = PatchSampler(rough)
    ds = embed_region(StatsEmbedder(), sampler, 30, 90, chunk=7, path=tmp_path / "r.zarr")
    assert ds["embedding"].dims == ("y", "x", "feature") and ds["embedding"].shape[2] == 4
    assert ds["embedding"].chunks[0][0] == 7          # chunked on disk and in memory
    emb = ds["embedding"].values
    xx, yy = np.meshgrid(ds["x"].values, ds["y"].values)
    ok = sampler.valid_xy(xx.ravel(), yy.ravel(), 30, 17).reshape(xx.shape)
    # places whose patch leaves the terrain (edges) or touches the nodata hole are NaN, the rest finite
    np.testing.assert_array_equal(valid_mask(ds).values, ok)
    assert (~ok).sum() > 0 and ok.sum() > 0
    assert np.isnan(emb[~ok]).all()
    hole_y, hole_x = float(rough.y[62]), float(rough.x[72])
    iy, ix = np.argmin(np.abs(ds.y.values - hole_y)), np.argmin(np.abs(ds.x.values - hole_x))
    assert np.isnan(emb[iy, ix]).all()
    # the same numbers as sampling and embedding the valid places directly
    direct = StatsEmbedder().embed_patches(normalize(sampler.patches_xy(xx[ok], yy[ok], 30, 17))[:, None])
    np.testing.assert_allclose(emb[ok], direct, rtol=1e-6)
    # lon/lat coordinates are those of the grid places
    lon, lat = sampler.to_lonlat(xx[ok], yy[ok])
    np.testing.assert_allclose(ds["lon"].values[ok], lon)
    np.testing.assert_allclose(ds["lat"].values[ok], lat)
    # reopened from zarr, with the attrs
    again = open_region_embedding(tmp_path / "r.zarr")
    assert again.attrs["res_m"] == 30 and again.attrs["stride_m"] == 90 and again.attrs["embedder"] == "stats"
    np.testing.assert_array_equal(again["embedding"].values, emb)
    assert not list(tmp_path.glob(".r.zarr*"))       # no temporary left behind


def test_embed_region_lazy_and_bounds(rough):
    sampler = PatchSampler(rough)
    left, bottom, right, top = sampler.bounds_xy
    box = (left + 600, bottom + 600, left + 1500, bottom + 1200)
    ds = embed_region(StatsEmbedder(), rough, 60, 60, bounds_xy=box, chunk=4)
    assert isinstance(ds["embedding"].data, __import__("dask").array.Array)
    assert ds.sizes["x"] == 15 and ds.sizes["y"] == 10
    assert float(ds.x.min()) > box[0] and float(ds.x.max()) < box[2]
    assert np.isfinite(ds["embedding"].values).all()   # 600 m inside: every 17 px patch at 60 m/px fits


def test_embed_region_bad_input(rough):
    with pytest.raises(ValueError, match="finer than"):
        embed_region(StatsEmbedder(), rough, 10, 90)
    with pytest.raises(ValueError, match="chunk"):
        embed_region(StatsEmbedder(), rough, 30, 90, chunk=0)
    with pytest.raises(ValueError, match="must be a topo2vec_lib.models.Embedder"):
        embed_region(object(), rough, 30, 90)
    with pytest.raises(ValueError, match="terrain"):
        embed_region(StatsEmbedder(), np.zeros((5, 5)), 30, 90)
    with pytest.raises(FileNotFoundError):
        open_region_embedding("/nonexistent/region.zarr")


def test_embed_xy_respects_multiscale_embedders(rough):
    """An embedder with its own batch step and scales_for() gets every scale's patch; places whose coarser
    patch leaves the terrain are NaN instead of raising."""
    class MultiScale(StatsEmbedder):
        dim = 2

        def scales_for(self, res_m):
            return [res_m, 4 * res_m]

        def embed_batch_xy(self, sampler, x, y, res_m, allow_nodata=False):
            a = sampler.patches_xy(x, y, res_m, 17, allow_nodata=allow_nodata).mean(axis=(1, 2))
            b = sampler.patches_xy(x, y, 4 * res_m, 17, allow_nodata=allow_nodata).mean(axis=(1, 2))
            return np.stack([a, b], 1)

    sampler = PatchSampler(rough)
    x, y = grid_xy(sampler.bounds_xy, 150)
    xx, yy = np.meshgrid(x, y)
    out = embed_xy(MultiScale(), sampler, xx.ravel(), yy.ravel(), 30)
    ok = sampler.valid_xy(xx.ravel(), yy.ravel(), 120, 17)
    assert ok.any() and (~ok).any()
    np.testing.assert_array_equal(np.isfinite(out).all(1), ok)


@pytest.mark.parametrize("processes", [False, True])
def test_embed_region_on_distributed_cluster(rough, tmp_path, processes):
    """The same store on a LocalCluster (worker processes, as the study and `topo2vec embed` use, or threads in
    this process) as on the threaded scheduler. The in-process cluster gets no memory limit: its workers measure
    the whole process's memory, and a pytest process past the limit paused them for ever (CI, stop 17)."""
    distributed = pytest.importorskip("distributed")
    if processes:
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import tests/
    ref = embed_region(StatsEmbedder(), rough, 30, 120, chunk=8).compute()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=processes,
                                  memory_limit="1GiB" if processes else 0,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        ds = embed_region(StatsEmbedder(), rough, 30, 120, chunk=8, path=tmp_path / "d.zarr")
        assert len(client.scheduler_info()["workers"]) == 2
    np.testing.assert_array_equal(ds["embedding"].values, ref["embedding"].values)


def test_embed_region_memory_stays_bounded(terrain_factory, tmp_path):
    """A grid whose embeddings (about 44 MiB) are far bigger than the budget completes with a peak of a few
    blocks: the output streams block by block to zarr."""
    import dask

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(200, 200)).cumsum(0).cumsum(1).astype(np.float32)
    terrain = terrain_factory(z)
    sampler = PatchSampler(terrain, threads=1)
    with dask.config.set(scheduler="synchronous"):
        tracemalloc.start()
        try:
            ds = embed_region(WideEmbedder(), sampler, 30, 30, chunk=20, path=tmp_path / "big.zarr")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        full_mb = ds["embedding"].size * 4 / 2**20
    assert ds.sizes["x"] == 200 and full_mb > 40
    budget_mb = 12.0
    assert peak / 2**20 < budget_mb, f"peak {peak / 2**20:.1f} MiB for {full_mb:.1f} MiB of embeddings"
    assert int(valid_mask(ds).sum()) == (200 - 16) ** 2


def test_embed_region_agrees_with_embedder_embed(rough):
    """The block path (sample, normalise, embed_patches) gives what Embedder.embed gives for the same places
    (the lon/lat round trip moves places by nanometres, so values agree to about 1e-5)."""
    import torch

    from topo2vec_lib.models import Topo2Vec
    from topo2vec_lib.models.identity import IdEmbedder
    from topo2vec_lib.models.networks import Encoder

    torch.manual_seed(0)
    sampler = PatchSampler(rough)
    for embedder in (IdEmbedder(), Topo2Vec(Encoder(), {"k": 4, "normalisation": {"min_range_m": 5.0}})):
        ds = embed_region(embedder, sampler, 60, 240, chunk=5).compute()
        ok = valid_mask(ds).values
        lon, lat = ds["lon"].values[ok], ds["lat"].values[ok]
        np.testing.assert_allclose(ds["embedding"].values[ok], embedder.embed(sampler, lon, lat, 60),
                                   rtol=0, atol=1e-4)
