"""Baselines (ID, supervised CNN, SauMoCo, geomorphometry): shapes, learning, exact descriptors, determinism,
checkpoints, resume and bad input. Tiny terrains; the whole file runs in well under a minute on 2 cores."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from topo2vec_lib import geomorphometry as gm
from topo2vec_lib.grid import slope_deg
from topo2vec_lib.models import MODELS, load_embedder, model_config, train_model
from topo2vec_lib.models import cnn as cnn_model
from topo2vec_lib.models import saumoco as saumoco_model
from topo2vec_lib.models.checkpoints import load_checkpoint, save_checkpoint
from topo2vec_lib.models.cnn import CnnEmbedder, cnn_examples
from topo2vec_lib.models.config import CnnConfig, GeomorphometryConfig, SauMoCoConfig
from topo2vec_lib.models.geomorphometry import GeomorphometryEmbedder
from topo2vec_lib.models.identity import IdEmbedder
from topo2vec_lib.models.saumoco import SauMoCoEmbedder, random_dihedral, saumoco_chunk
from topo2vec_lib.models.trainer import torch_threads
from topo2vec_lib.sampler import PatchSampler, normalize

RES = 30.0
OFF = (np.arange(17) - 8) * RES
X = np.broadcast_to(OFF[None, :], (17, 17))          # metres east of the centre
Y = np.broadcast_to(-OFF[:, None], (17, 17))         # metres north of the centre (row 0 = north)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny nets run fastest on one thread (and do not fight other test processes on 2 cores)."""
    with torch_threads(1):
        yield


def cone_world(n=128, spacing=24, height=150.0, radius_px=9, seed=0):
    """Flat noise (+-2 m) with cones on a grid; returns elevation and the (row, col) of the apexes."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(-2, 2, (n, n)).astype(np.float32) + 500
    rr, cc = np.mgrid[0:n, 0:n]
    apexes = []
    for r in range(spacing // 2 + 4, n - 12, spacing):
        for c in range(spacing // 2 + 4, n - 12, spacing):
            d = np.hypot(rr - r, cc - c)
            z += np.where(d < radius_px, height * (1 - d / radius_px), 0).astype(np.float32)
            apexes.append((r, c))
    return z, apexes


def smooth_world(n=96, seed=0):
    """Smooth random relief (sum of a few sinusoids), hundreds of metres of relief."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[0:n, 0:n].astype(np.float64)
    z = np.full((n, n), 800.0)
    for _ in range(12):
        f = rng.uniform(0.02, 0.15, 2)
        z += rng.uniform(20, 80) * np.sin(f[0] * rr * 2 * np.pi / 4 + f[1] * cc * 2 * np.pi / 4 + rng.uniform(0, 6))
    return z.astype(np.float32)


@pytest.fixture(scope="module")
def cones():
    from conftest import make_terrain
    z, apexes = cone_world()
    t = make_terrain(z, res_m=RES)
    s = PatchSampler(t)
    rows, cols = np.array(apexes).T
    lon, lat = s.to_lonlat(t.x.values[cols], t.y.values[rows])
    labels = pd.DataFrame({"lon": lon, "lat": lat, "class": "peak", "source": "test", "region": "train"})
    return t, s, labels


@pytest.fixture(scope="module")
def smooth():
    from conftest import make_terrain
    t = make_terrain(smooth_world(), res_m=RES)
    return t, PatchSampler(t)


CNN_CFG = {"kind": "cnn", "classes": ["peak"], "examples": 300, "epochs": 8, "batch_size": 32, "lr": 3e-3,
           "log_steps": 5}
MOCO_CFG = {"kind": "saumoco", "images": 256, "epochs": 3, "batch_size": 32, "queue_size": 64,
            "neighbour_radius_m": 60.0, "chunk_batches": 4, "lr": 1e-3, "momentum": 0.9, "log_steps": 4}


@pytest.fixture(scope="module")
def cnn_run(cones, tmp_path_factory):
    _, s, labels = cones
    out = tmp_path_factory.mktemp("cnn") / "cnn.pt"
    metrics = train_model(CNN_CFG, s, labels=labels, out_path=out, seed=0, progress=False)
    return out, metrics


@pytest.fixture(scope="module")
def moco_run(smooth, tmp_path_factory):
    _, s = smooth
    out = tmp_path_factory.mktemp("moco") / "saumoco.pt"
    metrics = train_model(MOCO_CFG, s, labels=None, out_path=out, seed=0, progress=False)
    return out, metrics


# ------------------------------------------------------------------------------------------------ geomorphometry
def test_plane_slope_is_atan_of_gradient_everywhere():
    gx, gy = 0.3, -0.2
    z = (gx * X + gy * Y)[None]
    slope = slope_deg(z, RES)
    np.testing.assert_allclose(slope, np.degrees(np.arctan(np.hypot(gx, gy))), rtol=1e-12)
    d = gm.descriptors(z, RES)[0]
    f = dict(zip(gm.FEATURES, d))
    assert f["slope_mean_deg"] == pytest.approx(f["slope_max_deg"])
    assert f["tpi_m"] == pytest.approx(0, abs=1e-9)
    assert f["relief_m"] == pytest.approx(16 * RES * (abs(gx) + abs(gy)))
    for k in ("profile_curv", "plan_curv", "general_curv"):
        assert f[k] == pytest.approx(0, abs=1e-12)


def test_quadratic_curvatures_are_exact():
    a, d = 0.001, 0.2                                       # z = a x^2 + d x: profile = -2a / (1 + d^2)^1.5
    prof, plan, gen = gm.curvatures(gm.quadratic_fit((a * X ** 2 + d * X)[None], RES))
    assert prof[0] == pytest.approx(-2 * a / (1 + d * d) ** 1.5, rel=1e-9)
    assert plan[0] == pytest.approx(0, abs=1e-12)
    assert gen[0] == pytest.approx(-2 * a, rel=1e-9)
    b = 0.002                                               # a valley across an eastward slope: plan = -2b / d < 0
    prof, plan, gen = gm.curvatures(gm.quadratic_fit((b * Y ** 2 + d * X)[None], RES))
    assert plan[0] == pytest.approx(-2 * b / d, rel=1e-9)
    assert prof[0] == pytest.approx(0, abs=1e-12)
    nearly_flat = gm.quadratic_fit((b * Y ** 2 + 0.01 * X)[None], RES)   # 0.57 deg: below the 1-degree floor
    assert gm.curvatures(nearly_flat)[1][0] == 0
    assert gm.curvatures(nearly_flat, flat_deg=0.1)[1][0] == pytest.approx(-2 * b / 0.01, rel=1e-9)


def test_cone_and_pit_tpi_and_geomorphons():
    r = np.hypot(X, Y)
    peak, pit = -0.4 * r, 0.4 * r
    z = np.stack([peak, pit])
    f = gm.descriptors(z, RES)
    cols = {k: i for i, k in enumerate(gm.FEATURES)}
    assert f[0, cols["tpi_m"]] > 0 > f[1, cols["tpi_m"]]
    assert f[0, cols["general_curv"]] > 0 > f[1, cols["general_curv"]]
    assert (f[0, cols["n_higher"]], f[0, cols["n_lower"]]) == (0, 8)     # summit: all lower
    assert (f[1, cols["n_higher"]], f[1, cols["n_lower"]]) == (8, 0)     # pit: all higher


def test_geomorphon_plane_and_flatness_threshold():
    z = (0.1 * X)[None]                                     # rises to the east: NE, E, SE higher; N, S flat
    h, lo = gm.geomorphon_counts(z, RES)
    assert (h[0], lo[0]) == (3, 3)
    flat = (0.001 * X)[None]                                # 0.06 degrees: flat under the 1-degree threshold
    h, lo = gm.geomorphon_counts(flat, RES)
    assert (h[0], lo[0]) == (0, 0)
    h, lo = gm.geomorphon_counts(flat, RES, flat_deg=0.0)
    assert (h[0], lo[0]) == (3, 3)


def test_descriptors_nan_and_bad_shapes():
    z = np.stack([0.1 * X, 0.1 * X])
    z[1, 3, 4] = np.nan
    f = gm.descriptors(z, RES)
    assert np.isfinite(f[0]).all() and np.isnan(f[1]).all()
    with pytest.raises(ValueError, match="shape"):
        gm.descriptors(np.zeros((2, 16, 16)), RES)
    with pytest.raises(ValueError, match="res_m"):
        gm.descriptors(np.zeros((2, 17, 17)), -1)


def test_geomorphometry_embedder_scales_and_units(smooth, tmp_path):
    t, s = smooth
    emb = GeomorphometryEmbedder({"scales_m": [30, 60]})
    lon, lat = s.random_places(5, 0, 120.0)              # the largest footprint asked for below
    v = emb.embed(s, lon, lat)
    assert v.shape == (5, 20) and v.dtype == np.float32 and emb.dim == 20
    assert emb.feature_names[0] == "slope_mean_deg@30m" and emb.feature_names[10] == "slope_mean_deg@60m"
    raw30 = s.patches(lon, lat, 30.0)
    np.testing.assert_allclose(v[:, :10], gm.descriptors(raw30, 30.0), rtol=1e-5, atol=1e-6)
    v_t = emb.embed(t, lon, lat)                            # a terrain DataArray works too
    np.testing.assert_array_equal(v, v_t)
    v2 = emb.embed(s, lon, lat, res_m=60.0)                 # finest scale moves to 60 m, ratio kept (60, 120)
    np.testing.assert_allclose(v2[:, :10], v[:, 10:], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="raw-metre"):
        emb.embed_patches(normalize(raw30))                 # normalised single patches are refused
    one = GeomorphometryEmbedder({"scales_m": [30]})
    assert one.embed_patches(raw30).shape == (5, 10)


# ------------------------------------------------------------------------------------------------ ID
def test_id_embeds_the_flat_normalised_patch(smooth, tmp_path):
    _, s = smooth
    lon, lat = s.random_places(4, 1, RES)
    emb = IdEmbedder()
    v = emb.embed(s, lon, lat)
    assert v.shape == (4, 289) and emb.dim == 289
    np.testing.assert_allclose(v, normalize(s.patches(lon, lat, RES)).reshape(4, 289))
    assert emb.embed_patches(np.zeros((3, 1, 17, 17))).shape == (3, 289)
    with pytest.raises(ValueError, match=r"\(N, 17, 17\)"):
        emb.embed_patches(np.zeros((3, 16, 16)))


# ------------------------------------------------------------------------------------------------ CNN
def test_cnn_shapes_learns_and_beats_chance(cnn_run, cones):
    out, m = cnn_run
    assert m["classes"] == ["peak", "random"] and m["chance_accuracy"] == 0.5
    epochs = [h for h in m["history"] if h["scope"] == "epoch"]
    assert len(epochs) == CNN_CFG["epochs"]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert m["val_accuracy"] >= 0.8, m["val_accuracy"]
    assert m["counts"]["peak"]["distinct_usable"] == 25 and m["counts"]["peak"]["with_replacement"]
    assert m["n_train"] + m["n_val"] == 300 and m["n_val"] == 2 * 15
    assert m["images_per_s"] > 0 and m["wall_s"] > 0
    emb = load_embedder(out)
    assert isinstance(emb, CnnEmbedder) and emb.dim == 35
    _, s, labels = cones
    v = emb.embed(s, labels.lon.values, labels.lat.values)
    assert v.shape == (25, 35) and v.dtype == np.float32
    p = emb.predict_proba(normalize(s.patches(labels.lon.values, labels.lat.values, RES)))
    assert (p[:, 0] > 0.5).mean() >= 0.8                    # the cones are called peaks


def test_cnn_examples_use_train_region_only_and_no_place_in_both_splits(cones):
    _, s, labels = cones
    far = labels.copy()
    far["region"] = "test"
    cfg = CnnConfig.from_dict(CNN_CFG)
    data = cnn_examples(cfg, s, pd.concat([labels, far]), seed=0)
    assert data["counts"]["peak"]["label_rows"] == len(labels)
    tr = {tuple(p) for p in data["x_train"][data["y_train"] == 0].reshape(-1, 289).round(5)}
    va = {tuple(p) for p in data["x_val"][data["y_val"] == 0].reshape(-1, 289).round(5)}
    assert tr and va and not (tr & va)


def test_cnn_is_deterministic_with_a_seed(cones, cnn_run, tmp_path):
    _, s, labels = cones
    out, m = cnn_run
    cfg = {**CNN_CFG, "epochs": 2}
    a = train_model(cfg, s, labels=labels, out_path=tmp_path / "a.pt", seed=3, progress=False)
    b = train_model(cfg, s, labels=labels, out_path=tmp_path / "b.pt", seed=3, progress=False)
    c = train_model(cfg, s, labels=labels, out_path=tmp_path / "c.pt", seed=4, progress=False)
    assert a["final_loss"] == b["final_loss"] and a["final_loss"] != c["final_loss"]
    x = normalize(s.patches(labels.lon.values, labels.lat.values, RES))
    np.testing.assert_array_equal(load_embedder(tmp_path / "a.pt").embed_patches(x),
                                  load_embedder(tmp_path / "b.pt").embed_patches(x))


def test_cnn_resume_after_a_kill_ends_with_the_same_weights(cones, tmp_path, monkeypatch):
    _, s, labels = cones
    cfg = {**CNN_CFG, "epochs": 3, "checkpoint_steps": 3, "chunk_batches": 2}
    full = train_model(cfg, s, labels=labels, out_path=tmp_path / "full.pt", seed=1, progress=False)
    calls = {"n": 0}
    real = cnn_model._evaluate

    def dying(*a, **k):                                     # killed at the end of epoch 2 (after a mid-epoch save)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    resume = tmp_path / "resume.pt"
    monkeypatch.setattr(cnn_model, "_evaluate", dying)
    with pytest.raises(KeyboardInterrupt):
        train_model(cfg, s, labels=labels, out_path=tmp_path / "r.pt", resume_path=resume, seed=1,
                     progress=False)
    monkeypatch.setattr(cnn_model, "_evaluate", real)
    assert resume.exists()
    again = train_model(cfg, s, labels=labels, out_path=tmp_path / "r.pt", resume_path=resume, seed=1,
                         progress=False)
    assert again["resumed_from_step"] > 9 and not resume.exists()     # resumed mid-epoch 2 (9 steps/epoch)
    w_full = load_checkpoint(tmp_path / "full.pt")["state"]["model"]
    w_res = load_checkpoint(tmp_path / "r.pt")["state"]["model"]
    for k in w_full:
        torch.testing.assert_close(w_full[k], w_res[k], rtol=0, atol=0)
    assert again["history"] == full["history"] or \
        [h["loss"] for h in again["history"]] == pytest.approx([h["loss"] for h in full["history"]])


def test_cnn_bad_labels(cones, tmp_path):
    _, s, labels = cones
    kw = dict(out_path=tmp_path / "x.pt", seed=0, progress=False)
    with pytest.raises(ValueError, match="needs labels"):
        train_model(CNN_CFG, s, labels=None, **kw)
    with pytest.raises(ValueError, match="no labels in region 'train'"):
        train_model(CNN_CFG, s, labels=labels.iloc[:0], **kw)
    with pytest.raises(ValueError, match="no labels of class 'saddle'"):
        train_model({**CNN_CFG, "classes": ["peak", "saddle"]}, s, labels=labels, **kw)
    with pytest.raises(ValueError, match="lack column"):
        train_model(CNN_CFG, s, labels=labels.drop(columns="region"), **kw)
    with pytest.raises(ValueError, match="unknown label class"):
        train_model({**CNN_CFG, "classes": ["volcano"]}, s, labels=labels, **kw)
    assert not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------------------------------------------ SauMoCo
def test_saumoco_loss_falls_and_embeds(moco_run, smooth):
    out, m = moco_run
    epochs = [h for h in m["history"] if h["scope"] == "epoch"]
    assert len(epochs) == 3 and m["images_seen"] == 3 * 256
    steps = [h["loss"] for h in m["history"] if h["scope"] == "steps"]
    # the queue (64 keys = 2 batches) starts as random unit vectors, easy negatives: the loss first rises to
    # about chance (log 65) once it holds real keys, then falls as the encoder learns the neighbourhoods
    assert steps[1] > m["chance_loss"] - 0.2
    assert steps[-1] < steps[1] - 0.3 and steps[-1] < m["chance_loss"] - 0.3
    assert 0 < m["mean_neighbour_offset_m"] <= 60 * np.sqrt(2)
    assert m["hyperparameters"]["queue_size"] == 64
    emb = load_embedder(out)
    assert isinstance(emb, SauMoCoEmbedder) and emb.dim == 128
    _, s = smooth
    lon, lat = s.random_places(7, 2, RES)
    v = emb.embed(s, lon, lat)
    assert v.shape == (7, 128) and v.dtype == np.float32 and np.isfinite(v).all()


def test_saumoco_deterministic_and_resumes_exactly(smooth, moco_run, tmp_path, monkeypatch):
    _, s = smooth
    out, m = moco_run
    cfg = {**MOCO_CFG, "checkpoint_steps": 4}
    real = saumoco_model.saumoco_chunk
    calls = {"n": 0}

    def dying(*a, **k):                                     # killed while fetching the 5th chunk (epoch 2)
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    resume = tmp_path / "resume.pt"
    monkeypatch.setattr(saumoco_model, "saumoco_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        train_model(cfg, s, out_path=tmp_path / "r.pt", resume_path=resume, seed=0, progress=False)
    monkeypatch.setattr(saumoco_model, "saumoco_chunk", real)
    again = train_model(cfg, s, out_path=tmp_path / "r.pt", resume_path=resume, seed=0, progress=False)
    assert again["resumed_from_step"] == 16
    a = load_checkpoint(out)["state"]["encoder"]            # the uninterrupted run of the fixture, same seed
    b = load_checkpoint(tmp_path / "r.pt")["state"]["encoder"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    other = train_model({**MOCO_CFG, "epochs": 1}, s, out_path=tmp_path / "o.pt", seed=5, progress=False)
    assert other["history"][0]["loss"] != m["history"][0]["loss"]


def test_saumoco_neighbours_are_close_and_augmented(smooth):
    _, s = smooth
    cfg = SauMoCoConfig.from_dict({**MOCO_CFG, "flip_rot": False, "neighbour_radius_m": 0.0})
    d = saumoco_chunk(s, cfg, 0, 0, 0, 2)
    assert d["q"].shape == (64, 1, 17, 17) and (d["offset_m"] == 0).all()
    np.testing.assert_array_equal(d["q"], d["k"])          # radius 0, no flips: the key is the query
    cfg = SauMoCoConfig.from_dict({**MOCO_CFG, "neighbour_radius_m": 300.0})
    d = saumoco_chunk(s, cfg, 0, 0, 0, 2)
    assert (np.abs(d["offset_m"]) <= 300 * np.sqrt(2) + 1e-6).all() and d["offset_m"].max() > 30
    x = np.arange(2 * 17 * 17, dtype=np.float32).reshape(2, 1, 17, 17)
    y = random_dihedral(x, np.random.default_rng(0))
    for a, b in zip(x, y):                                  # every output is one of the 8 symmetries of its input
        sym = [np.rot90(a, k, (1, 2)) for k in range(4)]
        sym += [v[..., ::-1] for v in sym]
        assert any(np.array_equal(b, v) for v in sym)


# ------------------------------------------------------------------------------------------------ shared
@pytest.mark.parametrize("kind", ["id", "geomorphometry"])
def test_fixed_baselines_build_and_round_trip(kind, smooth, tmp_path):
    _, s = smooth
    m = train_model({"kind": kind, "images": 5}, s, labels=None, out_path=tmp_path / f"{kind}.pt", seed=0,
                    progress=False)
    assert m["embed_places_per_s"] > 0 and m["images_seen"] == 0
    emb = load_embedder(tmp_path / f"{kind}.pt")
    assert type(emb) is MODELS[kind].embedder
    lon, lat = s.random_places(3, 0, 120.0)
    fresh = MODELS[kind].embedder({"kind": kind})
    np.testing.assert_array_equal(emb.embed(s, lon, lat), fresh.embed(s, lon, lat))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown model kind 'foo'"):
        model_config({"kind": "foo"})
    with pytest.raises(ValueError, match=r"unknown saumoco config key\(s\) \['queue'\]"):
        SauMoCoConfig.from_dict({"queue": 5})
    with pytest.raises(ValueError, match="expected kind 'cnn'"):
        CnnConfig.from_dict({"kind": "saumoco"})
    with pytest.raises(ValueError, match="queue_size"):
        SauMoCoConfig.from_dict({"queue_size": 8, "batch_size": 64})
    with pytest.raises(ValueError, match="momentum"):
        SauMoCoConfig.from_dict({"momentum": 1.0})
    with pytest.raises(ValueError, match="head"):
        SauMoCoConfig.from_dict({"head": "transformer"})
    with pytest.raises(ValueError, match="scales_m"):
        GeomorphometryConfig.from_dict({"scales_m": [60, 30]})
    with pytest.raises(ValueError, match="train_res_m"):
        CnnConfig.from_dict({"train_res_m": [30, 60]})
    cfg = CnnConfig.from_dict({"kind": "cnn", "images": 100000, "epochs": 2, "device": "auto"})
    assert cfg.examples == 20000 and cfg.classes == ["peak", "saddle", "river", "cliff"]


def test_unknown_kind_checkpoint_and_wrong_patch_shape(tmp_path):
    save_checkpoint(tmp_path / "x.pt", kind="tile2vec", config={}, state={})
    with pytest.raises(ValueError, match="tile2vec"):
        load_embedder(tmp_path / "x.pt")
    for emb in (IdEmbedder(), CnnEmbedder({"kind": "cnn"}), SauMoCoEmbedder({"kind": "saumoco"})):
        with pytest.raises(ValueError, match="17, 17"):
            emb.embed_patches(np.zeros((2, 1, 9, 9), dtype=np.float32))
        assert emb.embed_patches(np.zeros((2, 17, 17), dtype=np.float32)).shape == (2, emb.dim)
