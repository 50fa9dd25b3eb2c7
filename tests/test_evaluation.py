"""Unit tests of topo2vec_lib.evaluation on synthetic embeddings and tiny terrains where the answer is known."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_terrain

from topo2vec_lib import evaluation as ev
from topo2vec_lib import paper
from topo2vec_lib.sampler import PatchSampler


# ------------------------------------------------------------------------------------------ fixtures
def cone_world(n_px: int = 300, spacing_px: int = 12, margin_px: int = 70, seed: int = 0):
    """Smooth 200 m relief + 2 m noise + sharp 25 m cones (radius 75 m) on a grid: the cones are obvious at
    30 m/px and averaged away at 240 m/px. Returns elevation (n_px, n_px) and the cones' rows, cols."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n_px, 0:n_px].astype(float)
    z = 200 * np.sin(xx / 40.0) * np.cos(yy / 55.0) + rng.normal(0, 2.0, (n_px, n_px))
    grid = np.arange(margin_px, n_px - margin_px, spacing_px)
    rows, cols = (a.ravel() for a in np.meshgrid(grid, grid, indexing="ij"))
    for r, c in zip(rows, cols):
        d = np.hypot(yy[r - 3:r + 4, c - 3:c + 4] - r, xx[r - 3:r + 4, c - 3:c + 4] - c)
        z[r - 3:r + 4, c - 3:c + 4] += np.clip(25 * (1 - d / 2.5), 0, None)
    return z, rows, cols


@pytest.fixture(scope="module")
def world():
    z, rows, cols = cone_world()
    terrain = make_terrain(z)
    sampler = PatchSampler(terrain)
    lon, lat = sampler.to_lonlat(terrain.x.values[cols], terrain.y.values[rows])
    labels = pd.DataFrame({"lon": lon, "lat": lat, "class": "peak", "source": "test", "region": "train"})
    return sampler, labels


def blobs(n: int, d: int, shift: float, rng: np.random.Generator):
    y = np.repeat([0, 1], n // 2)
    X = rng.normal(size=(n, d)) + shift * y[:, None]
    return X, y


# ------------------------------------------------------------------------------------------ SVM probe
def test_svm_probe_separates_blobs():
    rng = np.random.default_rng(0)
    X_tr, y_tr = blobs(200, 16, 2.0, rng)
    X_te, y_te = blobs(100, 16, 2.0, rng)
    r = ev.svm_probe(X_tr, y_tr, X_te, y_te, seed=0)
    assert r["accuracy"] > 0.95 and r["f1"] > 0.95 and r["auc"] > 0.98
    assert r["best_params"]["C"] in ev.DEFAULT_C_GRID


def test_svm_probe_on_noise_is_chance():
    accs = []
    for s in range(6):
        rng = np.random.default_rng(100 + s)
        X_tr, y_tr = blobs(200, 16, 0.0, rng)
        X_te, y_te = blobs(200, 16, 0.0, rng)
        accs.append(ev.svm_probe(X_tr, y_tr, X_te, y_te, seed=s)["accuracy"])
    assert abs(np.mean(accs) - 0.5) < 0.07, accs


def test_svm_probe_bad_input():
    rng = np.random.default_rng(0)
    X, y = blobs(40, 4, 1.0, rng)
    with pytest.raises(ValueError, match="both labels"):
        ev.svm_probe(X, np.zeros(40), X, y)
    with pytest.raises(ValueError, match="features"):
        ev.svm_probe(X, y, X[:, :3], y)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        ev.svm_probe(Xn, y, X, y)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        ev.svm_probe(X[:, 0], y, X, y)


# ------------------------------------------------------------------------------------------ summaries and tests
def fake_results(gap: float, n_seeds: int = 10, seed: int = 0) -> pd.DataFrame:
    """topo2vec-4 better than id by ``gap`` on 'peak' (plus noise), equal on 'river'."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_seeds):
        base = 0.8 + rng.normal(0, 0.01)
        noise = rng.normal(0, 0.002)
        rows += [{"model": "topo2vec-4", "class": "peak", "seed": s, "accuracy": base + gap},
                 {"model": "id", "class": "peak", "seed": s, "accuracy": base + noise},
                 {"model": "topo2vec-4", "class": "river", "seed": s, "accuracy": base},
                 {"model": "id", "class": "river", "seed": s, "accuracy": base}]
    return pd.DataFrame(rows)


def test_paired_tests_sign_and_significance():
    res = ev.paired_tests(fake_results(0.03), reference="topo2vec-4").set_index("class")
    assert res.loc["peak", "model"] == "id" and res.loc["peak", "n"] == 10
    assert res.loc["peak", "mean_diff"] > 0.02
    assert res.loc["peak", "t_p"] < 0.01 and res.loc["peak", "wilcoxon_p"] < 0.01
    assert res.loc["river", "mean_diff"] == 0 and res.loc["river", "t_p"] == 1.0
    worse = ev.paired_tests(fake_results(-0.03)).set_index("class")
    assert worse.loc["peak", "mean_diff"] < -0.02 and worse.loc["peak", "t_stat"] < 0
    with pytest.raises(ValueError, match="reference model 'nope'"):
        ev.paired_tests(fake_results(0.0), reference="nope")


def test_summarise_and_metrics_dict():
    df = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 3, "class": ["peak"] * 6, "seed": [0, 1, 2] * 2,
                       "accuracy": [0.7, 0.8, 0.9, 0.5, 0.5, 0.5]})
    s = ev.summarise(df)
    a = s[s["model"] == "a"].iloc[0]
    assert a["mean"] == pytest.approx(0.8) and a["std"] == pytest.approx(0.1) and a["n"] == 3
    assert a["values"] == pytest.approx([0.7, 0.8, 0.9])
    m = ev.metrics_dict(s)
    assert m["b"]["peak"]["mean"] == pytest.approx(0.5) and m["b"]["peak"]["std"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="metric 'auc'"):
        ev.summarise(df, metric="auc")


# ------------------------------------------------------------------------------------------ places
def test_nearest_distance_m_one_degree_of_latitude():
    d = ev.nearest_distance_m([10.0, 10.0], [46.0, 48.0], [10.0, 50.0], [47.0, 47.0])
    assert d == pytest.approx([111_195, 111_195], rel=1e-3)
    assert np.isinf(ev.nearest_distance_m([1.0], [2.0], [], [])).all()


def test_probe_dataset_balanced_and_far_negatives(world):
    sampler, labels = world
    lon, lat, y = ev.probe_dataset(labels, "peak", "train", 100, sampler, np.random.default_rng(1),
                                   res_m=30, min_neg_distance_m=90)
    assert lon.shape == lat.shape == y.shape == (100,) and y.sum() == 50
    assert 0 < y[:50].sum() < 50  # shuffled
    pos = set(zip(labels["lon"].round(9), labels["lat"].round(9)))
    assert all((round(a, 9), round(b, 9)) in pos for a, b in zip(lon[y == 1], lat[y == 1]))
    d_neg = ev.nearest_distance_m(lon[y == 0], lat[y == 0], labels["lon"], labels["lat"])
    assert d_neg.min() >= 90
    assert sampler.valid_places(lon, lat, 30).all()
    again = ev.probe_dataset(labels, "peak", "train", 100, sampler, np.random.default_rng(1),
                             res_m=30, min_neg_distance_m=90)
    assert np.array_equal(again[0], lon) and np.array_equal(again[2], y)


def test_probe_dataset_errors(world):
    sampler, labels = world
    rng = np.random.default_rng(0)
    with pytest.raises(ev.NotEnoughPlacesError, match=r"'peak' has 196 usable places.*need 500"):
        ev.probe_dataset(labels, "peak", "train", 1000, sampler, rng)
    with pytest.raises(ev.NotEnoughPlacesError, match="'saddle'"):
        ev.probe_dataset(labels, "saddle", "train", 10, sampler, rng)
    with pytest.raises(ValueError, match="region 'test' asked for"):
        ev.probe_dataset(labels.assign(region="test"), "peak", "test", 10, sampler, rng)
    with pytest.raises(ValueError, match="even number"):
        ev.probe_dataset(labels, "peak", "train", 11, sampler, rng)
    with pytest.raises(ValueError, match="lower min_neg_distance_m"):
        ev.probe_dataset(labels, "peak", "train", 10, sampler, rng, min_neg_distance_m=5000, max_tries=2)


def test_probe_dataset_drops_positives_off_the_terrain(world):
    sampler, labels = world
    # at 240 m/px the footprint is 4080 m: only cones >= 68 px from the edge fit (all of them, margin 70 px)
    assert sampler.valid_places(labels["lon"], labels["lat"], 240).all()
    # at 480 m/px (8160 m of a 9000 m terrain) only the 4 cones within 420 m of the centre fit
    with pytest.raises(ev.NotEnoughPlacesError, match=r"'peak' has 4 usable places .*196 labelled, 192 whose"):
        ev.probe_dataset(labels, "peak", "train", 10, sampler, np.random.default_rng(0), res_m=480)


def test_sample_patches_upsampling_keyword(world):
    """Scales finer than native are interpolated (allow_upsampling) and agree with native at the centre."""
    sampler, labels = world
    lon, lat = labels["lon"][:2], labels["lat"][:2]
    fine = ev.sample_patches(sampler, lon, lat, 10.0)
    native = sampler.patches(lon, lat, 30.0, 17)
    assert fine.shape == (2, 17, 17) and np.allclose(fine[:, 8, 8], native[:, 8, 8], atol=1e-3)
    assert ev.valid_places(sampler, lon, lat, 10.0).all()


# ------------------------------------------------------------------------------------------ probe experiment
class SpyEmbedder:
    """Flattened normalised patches (like the ID baseline); records the places it embedded."""

    def __init__(self):
        self.calls = []

    def embed(self, sampler, lon, lat, res_m=None):
        from topo2vec_lib.sampler import normalize

        self.calls.append((sampler.region, np.asarray(lon).copy(), res_m))
        return normalize(sampler.patches(lon, lat, res_m, 17)).reshape(len(lon), -1)


def test_run_probe_experiment_same_places_and_regions(world):
    sampler, labels = world
    z, rows, cols = cone_world(seed=1)
    test_terrain = make_terrain(z, center_lonlat=(7.6, 46.6), region="test")
    test_sampler = PatchSampler(test_terrain)
    lon, lat = test_sampler.to_lonlat(test_terrain.x.values[cols], test_terrain.y.values[rows])
    all_labels = pd.concat([labels, pd.DataFrame({"lon": lon, "lat": lat, "class": "peak", "source": "test",
                                                  "region": "test"})], ignore_index=True)
    a, b = SpyEmbedder(), SpyEmbedder()
    df = ev.run_probe_experiment({"a": a, "b": b}, {"train": sampler, "test": test_sampler}, all_labels,
                                 ["peak"], n_train=60, n_test=40, seeds=[3, 4], res_m=30,
                                 min_neg_distance_m=90, progress=False)
    assert list(df.columns[:3]) == ["model", "class", "seed"] and len(df) == 4
    assert set(df["seed"]) == {3, 4} and df["accuracy"].between(0, 1).all()
    assert df["accuracy"].mean() > 0.8  # the cones are obvious at 30 m/px
    assert len(a.calls) == len(b.calls) == 4  # (train, test) x 2 seeds, each embedded once
    for ca, cb in zip(a.calls, b.calls):
        assert ca[0] == cb[0] and np.array_equal(ca[1], cb[1])
    assert [c[0] for c in a.calls] == ["train", "test", "train", "test"]
    assert not np.array_equal(a.calls[0][1], a.calls[2][1])  # a new train set per seed
    with pytest.raises(ValueError, match="no scale for class 'peak'"):
        ev.run_probe_experiment({"a": a}, {"train": sampler, "test": test_sampler}, all_labels, ["peak"],
                                10, 10, seeds=1, res_m={"river": 30}, progress=False)


# ------------------------------------------------------------------------------------------ scale selection
def test_scale_selection_picks_the_visible_scale(world):
    sampler, labels = world
    df = ev.scale_selection(sampler, labels, ["peak"], [240, 30], n=200, seeds=2, epochs=15, lr=3e-3,
                            min_neg_distance_m=90, progress=False)
    assert list(df.columns) == ["class", "scale_m", "seed", "val_accuracy"] and len(df) == 4
    curve = ev.scale_curve(df).set_index("scale_m")
    assert curve.loc[30.0, "mean"] > 0.85 and curve.loc[240.0, "mean"] < 0.7
    assert ev.best_scales(df) == {"peak": 30.0}


def test_scale_selection_bad_scales(world):
    sampler, labels = world
    with pytest.raises(ValueError, match="positive m/px"):
        ev.scale_selection(sampler, labels, ["peak"], [], n=20, seeds=1, progress=False)


def test_train_val_cnn_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.random((60, 17, 17), dtype=np.float32)
    y = rng.integers(0, 2, 60)
    a = ev.train_val_cnn(x[:40], y[:40], x[40:], y[40:], epochs=2, seed=5)
    b = ev.train_val_cnn(x[:40], y[:40], x[40:], y[40:], epochs=2, seed=5)
    assert a == b and 0 <= a <= 1


# ------------------------------------------------------------------------------------------ retrieval
def test_precision_at_k_constructed():
    cand = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.2], [5.0, 5.0], [5.1, 5.0], [9.0, 9.0]])
    labels = np.array(["peak", "peak", "river", "peak", "river", "river"])
    query = np.array([[-0.1, 0.0], [0.1, 0.0]])  # mean (0, 0)
    assert ev.precision_at_k(query, cand, labels, "peak", 2) == pytest.approx(1.0)
    assert ev.precision_at_k(query, cand, labels, "peak", 3) == pytest.approx(2 / 3)
    assert ev.precision_at_k(query, cand, labels, "peak", 5) == pytest.approx(3 / 5)
    idx, dist = ev.nearest_to_mean(query, cand, 3)
    assert list(idx) == [0, 1, 2] and dist == pytest.approx([0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match="k must be in 1..6"):
        ev.precision_at_k(query, cand, labels, "peak", 7)
    with pytest.raises(ValueError, match="same D"):
        ev.nearest_to_mean(query[:, :1], cand, 1)


# ------------------------------------------------------------------------------------------ paper numbers
def test_paper_tables_complete():
    from topo2vec_lib.labels import classes_of

    for exp, table in paper.TABLES.items():
        assert list(table) == paper.MODELS
        for model in paper.MODELS:
            assert sorted(table[model]) == sorted(classes_of(exp))
            for mean, std in table[model].values():
                assert 50 <= mean <= 100 and 0 < std < 6
    assert paper.paper_value("exp1", "topo2vec-4", "saddle") == (89.0, 1.3)
    assert paper.paper_value("exp2", "cnn", "sinkhole") == (55.3, 2.9)
    assert paper.paper_value("exp1", "geomorphometry", "peak") is None
    with pytest.raises(ValueError, match="exp3"):
        paper.paper_value("exp3", "id", "peak")


# ------------------------------------------------------------------------------------------ multi-scale fit and tables
def test_probe_dataset_fit_res_m(world):
    sampler, labels = world

    class MultiScale:
        def scales_for(self, res_m):
            return [res_m, 8 * res_m]

    assert ev.coarsest_res_m([MultiScale(), object()], 30.0) == 240.0
    assert ev.coarsest_res_m([object()], 30.0) == 30.0
    lon, lat, y = ev.probe_dataset(labels, "peak", "train", 40, sampler, np.random.default_rng(0), res_m=30,
                                   min_neg_distance_m=90, fit_res_m=240)
    assert sampler.valid_places(lon, lat, 240).all()
    with pytest.raises(ev.NotEnoughPlacesError, match="30/480 m/px"):
        ev.probe_dataset(labels, "peak", "train", 40, sampler, np.random.default_rng(0), res_m=30, fit_res_m=480)


def test_paper_comparison_and_html():
    df = pd.DataFrame({"model": ["topo2vec-4"] * 2 + ["id"] * 2 + ["geomorphometry"] * 2,
                       "class": ["peak"] * 6, "seed": [0, 1] * 3,
                       "accuracy": [0.90, 0.92, 0.95, 0.97, 0.5, 0.5]})
    comp = ev.paper_comparison(ev.summarise(df), "exp1").set_index("model")
    assert comp.loc["id", "ours_mean"] == pytest.approx(96.0) and comp.loc["id", "best"]
    assert not comp.loc["topo2vec-4", "best"]
    assert comp.loc["topo2vec-4", "paper_mean"] == 93.1 and comp.loc["topo2vec-4", "paper_best"]
    assert comp.loc["id", "diff"] == pytest.approx(96.0 - 92.4)
    assert np.isnan(comp.loc["geomorphometry", "paper_mean"])
    html = ev.comparison_html(comp.reset_index(), "caption & more")
    assert html.count("<tr>") == 4 and "caption &amp; more" in html
    assert '<td class="best">96.0 &plusmn; 1.4<br><small>paper: 92.4 &plusmn; 0.5</small>' in html
    assert "paper: 93.1 &plusmn; 0.9*" in html and "paper: n/a" in html
