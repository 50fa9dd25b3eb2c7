"""Similarity search (topo2vec_lib.search): cosine by hand, NMS, NaN cells, the index's recall, save/load,
bad inputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from topo2vec_lib import search
from topo2vec_lib.search import EmbeddingIndex, Standardizer, similarity_field, top_k

REPO = Path(__file__).resolve().parents[1]
CRS = "EPSG:3035"


def make_field(v: np.ndarray, stride_m: float = 100.0, x0: float = 4_200_000.0, y0: float = 2_600_000.0,
               dim: str = "feature") -> xr.DataArray:
    """A (y, x, D) field on a regular grid (metres, EPSG:3035) from an (ny, nx, D) array."""
    ny, nx, d = v.shape
    return xr.DataArray(v.astype(np.float32), dims=("y", "x", dim),
                        coords={"y": y0 - stride_m * np.arange(ny), "x": x0 + stride_m * np.arange(nx)},
                        attrs={"crs_wkt": CRS, "stride_m": stride_m})


def structured(n: int, d: int = 32, latent: int = 6, seed: int = 0) -> np.ndarray:
    """(n, d) float32 vectors with low-dimensional structure (clustered latent factors through a ReLU map)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, latent))
    z = centres[rng.integers(0, 64, n)] + 0.3 * rng.normal(size=(n, latent))
    v = np.maximum(z @ rng.normal(size=(latent, d)), 0) + 0.05 * rng.normal(size=(n, d))
    return v.astype(np.float32)


@pytest.fixture
def field():
    v = structured(30 * 40, d=8, seed=1).reshape(30, 40, 8)
    v[0, :5] = np.nan           # invalid cells
    v[10, 10, 3] = np.nan       # one NaN component invalidates the cell
    return make_field(v)


# ---------------------------------------------------------------------------------------- similarity

@pytest.mark.parametrize("standardize", ["none", "center", "zscore"])
def test_similarity_matches_hand_computation(field, standardize):
    q = field.values[[5, 7], [6, 20]]                        # two query cells
    sim = similarity_field(field, q, standardize=standardize)
    v = field.values.reshape(-1, 8).astype(np.float64)
    ok = np.isfinite(v).all(axis=1)
    m = q.astype(np.float64).mean(axis=0)
    if standardize != "none":
        mu, sd = v[ok].mean(axis=0), v[ok].std(axis=0) if standardize == "zscore" else 1.0
        v, m = (v - mu) / sd, (m - mu) / sd
    want = (v @ m) / (np.linalg.norm(v, axis=1) * np.linalg.norm(m))
    got = sim.values.ravel()
    assert sim.dims == ("y", "x") and sim.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), ~ok)
    np.testing.assert_allclose(got[ok], want[ok], atol=2e-6)
    assert sim.attrs["crs_wkt"] == CRS and sim.attrs["standardize"] == standardize


def test_similarity_of_a_single_query_is_one_at_its_cell(field):
    sim = similarity_field(field, field.values[12, 30])
    assert float(sim[12, 30]) == pytest.approx(1.0, abs=1e-6)
    assert float(sim.max()) == pytest.approx(1.0, abs=1e-6)


def test_similarity_dask_equals_numpy_and_slabs(field, monkeypatch):
    q = field.values[3, 3]
    want = similarity_field(field, q).values
    lazy = similarity_field(field.chunk({"y": 7, "x": 9}), q)
    assert lazy.chunks is not None                       # stays lazy
    np.testing.assert_allclose(lazy.values, want, atol=1e-6, equal_nan=True)
    monkeypatch.setattr(search, "SLAB_BYTES", 8 * 40 * 4 * 3)   # 3 rows per slab
    np.testing.assert_allclose(similarity_field(field, q).values, want, atol=1e-6, equal_nan=True)


def test_standardizer_from_field_equals_fit(field):
    v = field.values.reshape(-1, 8)
    a, b = Standardizer.from_field(field.chunk({"y": 4}), "zscore"), Standardizer.fit(v, "zscore")
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6)
    np.testing.assert_allclose(a.inv_std, b.inv_std, rtol=1e-5)
    ok = np.isfinite(v).all(axis=1)
    np.testing.assert_allclose(b.mean, v[ok].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(b.inv_std, 1 / v[ok].std(axis=0), rtol=1e-4)
    np.testing.assert_array_equal(Standardizer.fit(v, "center").inv_std, np.ones(8, np.float32))


@pytest.mark.parametrize("standardize", ["center", "zscore"])
def test_constant_dimension_is_dropped_not_divided_by_zero(field, standardize):
    v = field.values.copy()
    v[..., 2] = 5.0
    q = v[4, 4].copy()
    q[2] = 50.0                       # a query from elsewhere: the dead dimension must not count
    sim = similarity_field(make_field(v), q, standardize=standardize)
    assert np.isfinite(sim.values[np.isfinite(v).all(-1)]).all()
    assert float(sim[4, 4]) == pytest.approx(1.0, abs=1e-6)


def test_dataset_from_embed_region(terrain_factory):
    """A field written by regional.embed_region: its query cell is the best match."""
    from topo2vec_lib.models import Embedder
    from topo2vec_lib.regional import embed_region, valid_mask

    class Stats(Embedder):
        dim, name = 4, "stats"

        def embed_patches(self, x):
            x = np.asarray(x, np.float32).reshape(len(x), -1)
            return np.stack([x.mean(1), x.std(1), x[:, 144], x[:, 0]], axis=1)

    rng = np.random.default_rng(3)
    z = rng.normal(0, 5, size=(80, 90)).cumsum(0).cumsum(1).astype(np.float32)
    ds = embed_region(Stats(), terrain_factory(z - z.min() + 100), 30.0, 60.0).compute()
    ok = valid_mask(ds).values
    r, c = np.argwhere(ok)[len(np.argwhere(ok)) // 2]
    q = search.vectors_at(ds, ds["lon"].values[r, c], ds["lat"].values[r, c])
    sim = similarity_field(ds, q)
    np.testing.assert_array_equal(np.isnan(sim.values), ~ok)
    best = top_k(sim, 3, 200.0)
    assert (best.loc[0, "row"], best.loc[0, "col"]) == (r, c)
    assert best.loc[0, "lon"] == pytest.approx(float(ds["lon"].values[r, c]))
    with pytest.raises(ValueError, match="outside the field"):
        search.vectors_at(ds, 20.0, 60.0)


# ---------------------------------------------------------------------------------------------- top_k

def test_top_k_separation_best_first_and_no_nan(field):
    sim = similarity_field(field, field.values[15, 20])
    sep = 450.0
    t = top_k(sim, 8, sep)
    assert list(t.columns) == ["rank", "lon", "lat", "x", "y", "similarity", "row", "col"]
    assert list(t["rank"]) == list(range(1, 9))
    assert t["similarity"].iloc[0] == pytest.approx(float(sim.max()))
    assert (np.diff(t["similarity"]) <= 0).all()
    d = np.hypot(t["x"].values[:, None] - t["x"].values, t["y"].values[:, None] - t["y"].values)
    assert d[~np.eye(len(t), dtype=bool)].min() >= sep
    assert np.isfinite(field.values[t["row"], t["col"]]).all()
    # greedy NMS: every cell better than the last match lies closer than sep to a better match
    s = sim.values
    rows, cols = np.nonzero(s > t["similarity"].iloc[-1])
    ys, xs = sim["y"].values[rows], sim["x"].values[cols]
    near = np.hypot(xs[:, None] - t["x"].values, ys[:, None] - t["y"].values) < sep
    assert near.any(axis=1).all()


def test_top_k_lonlat_from_crs_lon_first(field):
    from topo2vec_lib.grid import xy_to_lonlat

    t = top_k(similarity_field(field, field.values[2, 2]), 3)
    lon, lat = xy_to_lonlat(CRS, t["x"].values, t["y"].values)
    np.testing.assert_allclose(t["lon"], lon)
    np.testing.assert_allclose(t["lat"], lat)
    assert (t["lon"].between(-180, 180) & t["lat"].between(40, 60)).all()


def test_top_k_never_returns_nan_cells():
    s = np.full((6, 6), np.nan, np.float32)
    s[1, 1], s[4, 4], s[5, 0] = 0.1, 0.3, -0.5
    sim = make_field(s[..., None]).isel(feature=0, drop=True)
    t = top_k(sim, 3)
    assert list(zip(t["row"], t["col"])) == [(4, 4), (1, 1), (5, 0)]


def test_top_k_warns_when_separation_leaves_fewer(field):
    sim = similarity_field(field, field.values[15, 20])
    with pytest.warns(UserWarning, match="only"):
        t = top_k(sim, 50, 2000.0)
    assert 0 < len(t) < 50


def test_write_geojson(field, tmp_path):
    t = top_k(similarity_field(field, field.values[5, 5]), 4, 300.0)
    path = search.write_geojson(t, tmp_path / "sub" / "matches.geojson")
    gj = json.loads(path.read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 4
    f0 = gj["features"][0]
    assert f0["geometry"]["coordinates"] == [t.loc[0, "lon"], t.loc[0, "lat"]]
    assert f0["properties"]["rank"] == 1 and f0["properties"]["similarity"] == pytest.approx(t.loc[0, "similarity"])
    assert [p.name for p in path.parent.iterdir()] == ["matches.geojson"]       # no temporary left


# ---------------------------------------------------------------------------------------------- index

@pytest.fixture(scope="module")
def vectors():
    return structured(20_000, d=64, seed=2)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(found, exact)]))


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_ann_recall_against_exact(vectors, metric):
    data, q = vectors[:19_800], vectors[19_800:]
    exact = EmbeddingIndex.build(data, "exact", metric=metric)
    ann = EmbeddingIndex.build(data, "ivf", metric=metric, seed=0)
    for k in (10, 50):
        de, ie = exact.query(q, k)
        da_, ia = ann.query(q, k)
        assert recall(ia, ie) >= 0.95, (metric, k, recall(ia, ie))
        assert (np.diff(da_, axis=1) >= -1e-6).all()        # nearest first


def test_exact_distances_by_hand(vectors):
    data, q = vectors[:500], vectors[500:503]
    ix = EmbeddingIndex.build(data, "exact", metric="cosine", standardize="none")
    d, i = ix.query(q, 5)
    cos = (q @ data.T) / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(data, axis=1)
    want = np.argsort(1 - cos, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(i, want)
    np.testing.assert_allclose(d, np.take_along_axis(1 - cos, want, axis=1), atol=1e-5)
    ix = EmbeddingIndex.build(data, "exact", metric="l2", standardize="none")
    d, i = ix.query(q, 5)
    l2 = np.linalg.norm(q[:, None] - data[None], axis=2)
    np.testing.assert_array_equal(i, np.argsort(l2, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(d, np.sort(l2, axis=1)[:, :5], rtol=1e-4)


def test_auto_method_by_size(vectors):
    assert EmbeddingIndex.build(vectors[:1000]).method == "exact"
    assert EmbeddingIndex.build(vectors[:1000], "ivf").method == "ivf"


@pytest.mark.parametrize("method, standardize", [("exact", "center"), ("ivf", "zscore"), ("ivf", "none")])
def test_save_load_round_trip(vectors, method, standardize, tmp_path):
    ix = EmbeddingIndex.build(vectors[:5000], method, standardize=standardize, ids=np.arange(5000) * 3)
    q = vectors[5000:5020]
    d0, i0 = ix.query(q, 10)
    path = ix.save(tmp_path / "index")
    back = EmbeddingIndex.load(path)
    d1, i1 = back.query(q, 10)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_array_equal(d0, d1)
    assert (i0 % 3 == 0).all() and back.method == method and len(back) == 5000
    assert (back.std.mode if back.std else "none") == standardize
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]             # no temporary left
    ix.save(path)                                                               # overwrite in place
    np.testing.assert_array_equal(EmbeddingIndex.load(path).query(q, 10)[1], i0)


def test_ivf_is_deterministic_for_a_seed(vectors):
    q = vectors[:50]
    a = EmbeddingIndex.build(vectors, "ivf", seed=7).query(q, 20)
    b = EmbeddingIndex.build(vectors, "ivf", seed=7).query(q, 20)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_index_from_field_returns_valid_cells(field):
    ix = EmbeddingIndex.from_field(field)
    ok = np.flatnonzero(np.isfinite(field.values.reshape(-1, 8)).all(axis=1))
    assert len(ix) == ok.size
    d, cells = ix.query(field.values[15, 20], ok.size)
    assert set(cells[0]) == set(ok)
    assert cells[0, 0] == 15 * 40 + 20 and d[0, 0] == pytest.approx(0, abs=1e-6)
    t = search.cells_table(field, cells[0, :3], d[0, :3])
    assert (t.loc[0, "row"], t.loc[0, "col"]) == (15, 20) and "distance" in t


def test_load_rejects_other_directories(tmp_path):
    with pytest.raises(ValueError, match="not an embedding index"):
        EmbeddingIndex.load(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(ValueError, match="format 'other'"):
        EmbeddingIndex.load(tmp_path)


# ------------------------------------------------------------------------------------------ bad input

def test_bad_inputs_name_the_value(field, vectors):
    sim = similarity_field(field, field.values[5, 5])
    n_valid = int(np.isfinite(sim.values).sum())
    with pytest.raises(ValueError, match="k = 0"):
        top_k(sim, 0)
    with pytest.raises(ValueError, match=f"k = {n_valid + 1} is larger than the number of valid cells \\({n_valid}\\)"):
        top_k(sim, n_valid + 1)
    with pytest.raises(ValueError, match="min_separation_m = -5"):
        top_k(sim, 3, -5)
    with pytest.raises(ValueError, match=r"D = 8 .* got \(7,\)"):
        similarity_field(field, np.zeros(7))
    with pytest.raises(ValueError, match="row 1 has NaN"):
        similarity_field(field, np.stack([field.values[5, 5], np.full(8, np.nan)]))
    with pytest.raises(ValueError, match="empty"):
        similarity_field(make_field(np.full((4, 5, 8), np.nan)), np.ones(8))
    with pytest.raises(ValueError, match="empty"):
        similarity_field(make_field(np.zeros((0, 5, 8))), np.ones(8))
    with pytest.raises(ValueError, match="empty"):
        top_k(sim.where(False), 1)
    with pytest.raises(ValueError, match="dims"):
        similarity_field(field.isel(feature=0), np.ones(1))
    with pytest.raises(ValueError, match="standardize = True"):
        similarity_field(field, np.ones(8), standardize=True)
    ix = EmbeddingIndex.build(vectors[:100])
    with pytest.raises(ValueError, match="k = 0"):
        ix.query(vectors[0], 0)
    with pytest.raises(ValueError, match=r"k = 101 is larger than the number of indexed vectors \(100\)"):
        ix.query(vectors[0], 101)
    with pytest.raises(ValueError, match=r"D = 64 .* got \(3, 5\)"):
        ix.query(np.ones((3, 5)), 1)
    with pytest.raises(ValueError, match="row 0 has NaN"):
        ix.query(np.full(64, np.nan), 1)
    with pytest.raises(ValueError, match="row 3 has NaN"):
        EmbeddingIndex.build(np.where(np.arange(100)[:, None] == 3, np.nan, vectors[:100]))
    with pytest.raises(ValueError, match="method = 'annoy'"):
        EmbeddingIndex.build(vectors[:100], "annoy")
    with pytest.raises(ValueError, match="metric = 'dot'"):
        EmbeddingIndex.build(vectors[:100], metric="dot")
    with pytest.raises(ValueError, match="standardize = 'pca'"):
        EmbeddingIndex.build(vectors[:100], standardize="pca")
    ivf = EmbeddingIndex.build(vectors[:2000], "ivf")
    for bad in (0, 10**6, 2.5):
        with pytest.raises(ValueError, match=f"nprobe = {bad}"):
            ivf.query(vectors[0], 5, nprobe=bad)
    with pytest.raises(ValueError, match="nlist = 5000"):
        EmbeddingIndex.build(vectors[:2000], "ivf", nlist=5000)
    with pytest.raises(ValueError, match=r"non-empty \(N, D\)"):
        EmbeddingIndex.build(np.zeros((0, 64)))
    with pytest.raises(ValueError, match="empty"):
        EmbeddingIndex.from_field(make_field(np.full((3, 3, 8), np.nan)))


def test_query_equal_to_field_mean_is_an_error(field):
    mean = Standardizer.from_field(field).mean
    with pytest.raises(ValueError, match="equals the field's mean"):
        similarity_field(field, mean)


# ------------------------------------------------------------------------------------------ benchmark

@pytest.mark.slow
def test_benchmark_smoke_run(tmp_path):
    out = tmp_path / "search.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "search.py"), "--cells", "2000", "--queries", "20",
                          "--vectors", "synthetic", "--threads", "1", "--out", str(out),
                          "--candidates", "exact-numpy,topo2vec-exact,faiss-ivf,topo2vec-auto"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["vectors"]["kind"] == "synthetic" and result["vectors"]["valid_cells"] == 2000
    names = [c["name"] for c in result["summary"]]
    assert names == ["exact-numpy", "topo2vec-exact", "faiss-ivf", "topo2vec-auto"]
    assert all(c["at10"] is not None for c in result["summary"])
