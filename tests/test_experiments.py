"""Smoke runs of the scale-selection and probe notebooks (papermill) on a tiny study made in the test."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import make_terrain, write_params
from test_evaluation import cone_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """data/terrain/{train,test}.zarr (cone worlds), data/labels/peak.parquet and models id + geomorphometry."""
    from topo2vec_lib.labels import write_labels
    from topo2vec_lib.sampler import PatchSampler
    from topo2vec_lib.terrain import save_terrain

    root = tmp_path_factory.mktemp("study")
    tables = []
    samplers = {}
    for region, center, seed in (("train", (12.0, 47.2), 0), ("test", (7.6, 46.6), 1)):
        z, rows, cols = cone_world(seed=seed)
        terrain = make_terrain(z, center_lonlat=center, region=region)
        save_terrain(terrain, root / "data" / "terrain" / f"{region}.zarr")
        samplers[region] = sampler = PatchSampler(terrain)
        lon, lat = sampler.to_lonlat(terrain.x.values[cols], terrain.y.values[rows])
        tables.append(pd.DataFrame({"lon": lon, "lat": lat, "class": "peak", "source": "test", "region": region}))
    write_labels(pd.concat(tables, ignore_index=True), root / "data" / "labels", classes=["peak"])
    return root, samplers


@pytest.fixture(scope="module")
def models(study):
    """models/id.pt and models/geomorphometry.pt, built by the baselines' no-training builders."""
    root, samplers = study
    from topo2vec_lib.models import train_model

    (root / "models").mkdir(exist_ok=True)
    for kind in ("id", "geomorphometry"):
        train_model({"kind": kind}, samplers["train"], out_path=root / "models" / f"{kind}.pt", progress=False)
    return root / "models"


def common(root):
    return {"params_path": str(write_params(root / "params.yaml")), "terrain_dir": str(root / "data" / "terrain"),
            "labels_dir": str(root / "data" / "labels"), "seed": 0}


def test_scale_selection_notebook(study, notebook_runner, tmp_path):
    root, samplers = study
    notebook_runner("scale_selection", tmp_path, {
        **common(root), "metrics_path": str(root / "metrics" / "scale_selection.json"),
        "plots_dir": str(root / "plots"), "classes": ["peak"], "scales_m": [10, 30, 240], "n": 200, "seeds": 2,
        "epochs": 15, "lr": 3e-3, "min_neg_distance_m": 90})

    metrics = json.loads((root / "metrics" / "scale_selection.json").read_text())
    kept = [10.0, 30.0, 240.0]
    assert metrics["scales_upsampled_m"] == [10.0]  # finer than the native 30 m/px: interpolated
    assert metrics["curve"]["peak"]["scale_m"] == kept
    assert metrics["best_scale_m"]["peak"] in (10.0, 30.0)  # the cones are visible at fine scales only
    assert metrics["curve"]["peak"]["mean"][-1] < 0.7 < max(metrics["curve"]["peak"]["mean"])
    csv = pd.read_csv(root / "plots" / "scale_selection.csv")
    assert list(csv.columns[:3]) == ["class", "scale_m", "accuracy"] and len(csv) == len(kept)
    assert (root / "plots" / "scale_selection.png").stat().st_size > 1000


def test_probe_notebook(study, models, notebook_runner, tmp_path):
    root, _ = study
    selection = tmp_path / "scale_selection.json"
    selection.write_text(json.dumps({"best_scale_m": {"peak": 30.0, "river": 60.0}}))
    notebook_runner("probe", tmp_path, {
        **common(root), "experiment": "exp1", "classes": ["peak"], "n_train": 60, "n_test": 40, "seeds": 3,
        "models": ["id", "geomorphometry"], "models_dir": str(models), "res_m": "selected",
        "scale_selection_path": str(selection), "min_neg_distance_m": 90,
        "reference": "id", "metrics_path": str(root / "metrics" / "exp1.json"),
        "tables_dir": str(root / "reports" / "tables")})
    exp1 = json.loads((root / "metrics" / "exp1.json").read_text())
    assert set(exp1) == {"id", "geomorphometry"}
    assert len(exp1["id"]["peak"]["values"]) == 3 and exp1["id"]["peak"]["mean"] > 0.8
    seeds = pd.read_csv(root / "reports" / "tables" / "exp1_seeds.csv")
    assert len(seeds) == 6 and set(seeds["res_m"]) == {30.0}
    tests = pd.read_csv(root / "reports" / "tables" / "exp1_tests.csv")
    assert list(tests["model"]) == ["geomorphometry"] and tests["n"].iloc[0] == 3
    html = (root / "reports" / "tables" / "exp1.html").read_text()
    assert "paper: 92.4 &plusmn; 0.5" in html and "Paired tests" in html and "train_usable" in html


def test_probe_notebook_missing_model(study, models, notebook_runner, tmp_path):
    import papermill

    root, _ = study
    with pytest.raises(papermill.PapermillExecutionError, match="topo2vec-4.*does not exist"):
        notebook_runner("probe", tmp_path, {
            **common(root), "experiment": "exp1", "classes": ["peak"], "n_train": 20, "n_test": 20, "seeds": 1,
            "models": ["topo2vec-4"], "models_dir": str(models), "res_m": 30,
            "metrics_path": str(tmp_path / "exp1.json"), "tables_dir": str(tmp_path / "tables")})
