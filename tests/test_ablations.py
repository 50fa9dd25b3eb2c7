"""The ablation machinery (topo2vec_lib/ablations.py, notebooks/ablations.py): the plan of every family, cache keys,
equal compute, confidence intervals, paired tests, the job runner, and a tiny end-to-end run of the notebook."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, tiny_params, write_params

from topo2vec_lib import ablation_verdicts as V
from topo2vec_lib import ablations as A
from topo2vec_lib.models import load_embedder, model_config, train_model

API = A.Api(train_model, load_embedder, model_config)


def study_params(**over) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ablations"] = A.deep_merge(params["ablations"], over)
    return params


def fake_flops(config) -> float:
    """Known FLOPs per image: 10 + k (so equal compute gives images = budget / (10 + k))."""
    return 10.0 + config["k"]


def test_the_schema_knows_the_families_and_keys():
    from topo2vec_lib import schema

    assert schema.ABLATION_FAMILIES == A.FAMILIES and set(schema.ABLATIONS) == set(A.PARAMS_KEYS)


def test_settings_tiny_merges_and_bad_values_fail():
    params = study_params()
    full, tiny = A.settings_of(params), A.settings_of(params, "tiny")
    assert full["size"] == "full" and full["seeds"] == 5 and full["length"]["images"] == [100000, 300000, 1000000]
    assert tiny["size"] == "tiny" and tiny["seeds"] == 2 and tiny["k"]["k"] == [1, 4]
    assert tiny["k"]["equal"] == "flops"                                    # untouched keys stay
    for bad, match in (({"families": ["length", "depth"]}, "depth"), ({"seeds": 0}, "seeds"),
                       ({"images_scale": -1}, "images_scale")):
        with pytest.raises(ValueError, match=match):
            A.settings_of(study_params(**bad))
    with pytest.raises(ValueError, match="size='huge'"):
        A.settings_of(params, "huge")
    params["ablations"].pop("jobs")
    with pytest.raises(ValueError, match=r"missing key\(s\) \['jobs'\]"):
        A.settings_of(params)


def test_full_plan_folds_shorter_runs_into_snapshots_and_keeps_equal_flops():
    plan = A.make_plan(study_params(), api=API, flops=fake_flops)
    by_label = {(t.label, t.terrain): t for t in plan.trainings}
    t1, t4 = by_label[("topo2vec-1", "default")], by_label[("topo2vec-4", "default")]
    budget = 100_000 * fake_flops({"k": 4})
    k1_images = round(budget / fake_flops({"k": 1}))                      # 127,273 images at k = 1
    # topo2vec-1 == topo2vec-4 with k = 1 at 30 m/px: the k = 1 point is a snapshot of topo2vec-1's 1M run
    assert t1.config["images"] == 1_000_000 and t1.snapshot_images == (100_000, k1_images, 300_000)
    assert "topo2vec-4 k=1" in t1.aliases
    assert t4.snapshot_images == (100_000, 300_000) and "topo2vec-4 k=4" in t4.aliases
    k2 = by_label[("topo2vec-4 k=2", "default")]
    assert k2.config["train_res_m"] == [60.0] and k2.config["images"] == round(budget / 12)
    assert by_label[("topo2vec-4 k=8", "default")].config["train_res_m"] == [240.0]
    assert {t.terrain for t in plan.trainings} == {"default", "window=44", "window=88", "window=176"}
    assert len(plan.trainings) == 13 and plan.windows_km == [44.0, 88.0, 176.0]
    probes = {(p.family, p.point): p for p in plan.probes}
    assert len(plan.probes) == 3 + 3 + 4 + 3 + 5
    default_t4 = next(r for r in probes[("label_noise", "60 m, drop 0.3")].models if r.model == "topo2vec-4")
    assert default_t4.training is t4 and default_t4.images == 100_000        # the default model is the snapshot
    assert probes[("label_noise", "60 m, drop 0.3")].noise == (60.0, 0.3)
    assert [r.images for r in probes[("k", "k=1")].models] == [k1_images]
    assert probes[("scale", "120")].res_m == 120.0
    assert {r.model for r in probes[("scale", "60")].models} == {"id", "topo2vec-1", "topo2vec-4", "topo2vec-adv",
                                                                 "topo2vec-1 multiscale", "topo2vec-4 multiscale"}
    assert [r.model for r in probes[("length", "300000")].models] == ["topo2vec-1", "topo2vec-4", "topo2vec-adv"]


def test_images_scale_and_train_seeds_multiply_the_plan():
    plan = A.make_plan(study_params(images_scale=10, train_seeds=2, families=["length"]), api=API, flops=fake_flops)
    assert len(plan.trainings) == 6 and {t.seed for t in plan.trainings} == {0, 1}
    assert {t.config["images"] for t in plan.trainings} == {10_000_000}
    assert all(t.snapshot_images == (1_000_000, 3_000_000) for t in plan.trainings)
    assert len(plan.probes[0].models) == 6                                # 3 models x 2 training seeds


def test_cache_key_is_what_the_training_computes():
    cfg = A.model_base(study_params(), "topo2vec-4", {"images": 1000}, api=API)
    t = A.Training("topo2vec-4", cfg, 0, "default")
    key = t.key("h")
    assert key == A.Training("another label", {**cfg, "threads": 7, "workers": 1, "device": "cpu"}, 0,
                             "default").key("h")
    assert key != t.key("other terrain") and key != A.Training("x", cfg, 1, "default").key("h")
    assert t.key("h", images=1000) == key and t.key("h", images=500) != key
    assert t.steps_for(64_000) == 1000 and t.steps_for(10) == 1
    multi = A.Training("m", {**cfg, "train_res_m": [120.0, 240.0]}, 0, "default")
    assert multi.steps_for(64_000) == 1000                                  # 500 place batches x 2 scales


def test_ablation_trainings_write_resume_files_without_changing_their_cache_key(tmp_path):
    """A killed 1M-image training must resume from minutes ago: every training spec checkpoints, and the
    checkpoint interval stays out of the cache key, so models trained before it was set are still found."""
    plan = A.make_plan(study_params(families=["length"]), api=API, flops=fake_flops)
    ctx = A.Context(study_params(), tmp_path, tmp_path, tmp_path, API,
                    terrains={"default": tmp_path / "train.zarr", "test": tmp_path / "test.zarr"},
                    hashes={"default": "h", "test": "t"})
    specs = A.training_specs(plan, ctx)
    assert len(specs) == len(plan.trainings) == 3
    for spec, t in zip(specs, plan.trainings, strict=True):
        assert t.config["checkpoint_steps"] == 0 and spec["config"]["checkpoint_steps"] == A.RESUME_EVERY_STEPS
        assert spec["out"] == str(tmp_path / f"{t.key('h')}.pt")


def test_ci95_and_paper_values_known_answers():
    mean, sd, half, n = A.ci95([0.8, 0.9, 1.0])
    assert (mean, n) == (pytest.approx(0.9), 3) and sd == pytest.approx(0.1)
    assert half == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)   # t(0.975, 2) sd / sqrt(n)
    assert math.isnan(A.ci95([0.7])[2])
    assert A.paper_accuracy("topo2vec-4", "saddle") == pytest.approx(0.89)
    assert A.paper_accuracy("topo2vec-4 multiscale", "peak") == pytest.approx(0.931)
    assert A.paper_accuracy("topo2vec-adv", "cliff") == pytest.approx(0.781)
    assert A.paper_accuracy("geomorphometry", "peak") is None


def _rows():
    """Two points x two models x one class x 4 seeds with known differences."""
    rows = []
    for point, x, shift in (("a", 1.0, 0.0), ("b", 2.0, 0.05)):
        for seed in range(4):
            noise = 0.01 * seed
            rows.append({"family": "f", "point": point, "x": x, "model": "ref", "class": "peak", "seed": seed,
                         "res_m": 30.0, "accuracy": 0.8 + shift + noise + (0.004 * seed ** 2 if point == "b" else 0)})
            rows.append({"family": "f", "point": point, "x": x, "model": "other", "class": "peak", "seed": seed,
                         "res_m": 30.0, "accuracy": 0.7 + shift + noise + (0.02 if seed % 2 else 0.0)
                         + (0.003 * seed if point == "b" else 0)})
    return pd.DataFrame(rows)


def test_summary_and_paired_tests_within_and_across_points():
    rows = _rows()
    summary = A.summarise(rows)
    cell = summary[(summary["point"] == "b") & (summary["model"] == "ref")].iloc[0]
    assert cell["mean"] == pytest.approx(0.879) and cell["n"] == 4 and cell["paper"] is None
    tests = A.paired(rows, "ref")
    within = tests[tests["kind"] == "model"].set_index("point")
    assert within.loc["a", "mean_diff"] == pytest.approx(0.09) and within.loc["b", "mean_diff"] == pytest.approx(0.0995)
    across = tests[tests["kind"] == "point"].set_index("model")
    assert across.loc["ref", "point"] == "b" and across.loc["ref", "reference"] == "a"
    assert across.loc["ref", "mean_diff"] == pytest.approx(-0.064)            # first point minus point b
    assert 0 < across.loc["ref", "t_p"] < 0.05


def test_run_jobs_in_process_and_in_worker_processes():
    specs = [{"v": i, "cost": i} for i in range(5)]
    seen = []
    out = A.run_jobs(json.dumps, specs, 1, lambda spec, result, s: seen.append(spec["v"]))
    assert out == [json.dumps(s) for s in specs] and seen == [4, 3, 2, 1, 0]   # longest first, results in order
    assert A.run_jobs(json.dumps, specs, 2) == out


@pytest.mark.slow
def test_tiny_ablations_end_to_end(tmp_path, notebook_runner):
    """terrain and labels notebooks with the tiny study, then the ablations notebook at size tiny: two points per
    family, metrics, figures and tables; a second run reuses every trained model and probe."""
    params = write_params(tmp_path / "params.yaml")
    data = tmp_path / "data"
    notebook_runner("terrain", tmp_path / "nb", {"params_path": str(params), "out_dir": str(data / "terrain"),
                                                "plots_dir": str(tmp_path / "plots"),
                                                "metrics_path": str(tmp_path / "metrics" / "terrain.json")})
    notebook_runner("labels", tmp_path / "nb", {"params_path": str(params), "terrain_dir": str(data / "terrain"),
                                               "out_dir": str(data / "labels"), "plots_dir": str(tmp_path / "plots"),
                                               "metrics_path": str(tmp_path / "metrics" / "labels.json")})
    run = {"params_path": str(params), "size": "tiny", "terrain_dir": str(data / "terrain"),
           "labels_dir": str(data / "labels"), "cache_dir": str(tmp_path / "cache"),
           "metrics_path": str(tmp_path / "metrics" / "ablations.json"), "plots_dir": str(tmp_path / "plots" / "abl"),
           "tables_dir": str(tmp_path / "tables")}
    notebook_runner("ablations", tmp_path / "nb0", {**run, "estimate_only": True})     # plan and estimate only
    assert not (tmp_path / "metrics" / "ablations.json").exists()
    assert not list((tmp_path / "cache").glob("topo2vec-*.pt"))                  # nothing trained
    notebook_runner("ablations", tmp_path / "nb", run)
    metrics = json.loads((tmp_path / "metrics" / "ablations.json").read_text())
    assert metrics["size"] == "tiny" and set(metrics["families"]) == set(A.FAMILIES)
    tiny = tiny_params()["ablations"]["tiny"]
    for family, fam in metrics["families"].items():
        points = {row["point"] for row in fam["summary"]}
        assert len(points) == 2, (family, points)                              # two points per family
        assert all(0 <= row["mean"] <= 1 and row["n"] == tiny["seeds"] for row in fam["summary"])
        assert fam["paired"], family
        assert (tmp_path / "plots" / "abl" / f"{family}.png").stat().st_size > 5_000
    length = [t for t in metrics["trainings"] if t["terrain"] == "default" and t["model"] == "topo2vec-4"]
    assert {250, 500} <= {t["images"] for t in length} and all(t["test_l1"] > 0 for t in length)
    assert all(t["images_seen"] <= t["images"] for t in length)                # whole batches of 32
    est = metrics["estimate"]
    assert est["wall_s"] > 0 and metrics["wall_s"]["total"] > 0 and est["probe_sets"] == 10 and est["trainings"] == 6
    assert est["probe_s_total"] > 0 and set(metrics["calibration"]["probe_s"]) == {"per_set", "per_model"}
    assert (tmp_path / "plots" / "abl" / "heldout_l1.png").exists()
    assert set(pd.read_csv(tmp_path / "tables" / "rows.csv")["family"]) == set(A.FAMILIES)
    models = sorted(Path(tmp_path / "cache").glob("*.pt"))
    mtimes = {p: p.stat().st_mtime for p in models}

    notebook_runner("ablations", tmp_path / "nb2", run)                         # everything from the cache
    again = json.loads((tmp_path / "metrics" / "ablations.json").read_text())
    assert again["estimate"]["trainings"] == 0 and again["estimate"]["probe_sets"] == 0
    assert {p: p.stat().st_mtime for p in sorted(Path(tmp_path / "cache").glob("*.pt"))} == mtimes
    assert again["families"] == metrics["families"]
    assert np.isfinite(again["wall_s"]["total"])


def test_terrain_hash_is_remembered_in_the_cache_and_follows_the_values(tmp_path):
    from conftest import make_terrain

    from topo2vec_lib.terrain import save_terrain

    z = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    a, b = save_terrain(make_terrain(z), tmp_path / "a.zarr"), save_terrain(make_terrain(z + 1), tmp_path / "b.zarr")
    ha = A.terrain_hash(a, tmp_path / "hashes")
    assert ha == A.terrain_hash(a, tmp_path / "hashes") and ha != A.terrain_hash(b, tmp_path / "hashes")
    assert len(list((tmp_path / "hashes").glob("a.zarr.*.sha1"))) == 1
    assert not list(tmp_path.glob("*.sha1"))                                   # nothing beside the stores


def _fake_metrics(rows: pd.DataFrame, reference: str = "topo2vec-4") -> dict:
    """metrics/ablations.json as the notebook writes it, from probe rows."""
    summary, tests = A.summarise(rows), A.paired(rows, reference)
    return json.loads(json.dumps(A.results_dict(rows, summary, tests, pd.DataFrame(),
                                                {"settings": {"reference": reference}})))


def _known_rows(family: str, points: list[tuple[str, float]], acc, seeds: int = 6, classes=("peak", "river")):
    """Probe rows whose accuracy is ``acc(point_index, model, class)`` plus a seed's effect (sd 0.02, the same for
    every model and point: the pairing removes it) plus a point's own noise (sd 0.0005)."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.02, size=(1, 1, len(classes), seeds)) + rng.normal(0, 0.0005, size=(len(points), 9,
                                                                                                  len(classes), seeds))
    out = []
    for i, (point, x) in enumerate(points):
        for j, model in enumerate(["topo2vec-4", "id", "topo2vec-4 multiscale"]):
            for c, cls in enumerate(classes):
                for s in range(seeds):
                    a = acc(i, model, cls)
                    if a is not None:
                        out.append({"family": family, "point": point, "x": x, "model": model, "class": cls,
                                    "seed": s, "accuracy": a + noise[i, j, c, s], "res_m": 30.0})
    return pd.DataFrame(out)


def test_verdicts_follow_the_known_effects():
    """Known answers: in `length` topo2vec-4 gains 5 pp per point and id is flat; in `label_noise` id falls
    below topo2vec-4 at the noisiest point (the ranking changes); in `scale` the coarse probe costs topo2vec-4
    10 pp and multi-scale training adds 3 pp at 30 m/px; in `k` k=2 is best."""
    length = _known_rows("length", [("100000", 1e5), ("300000", 3e5), ("1000000", 1e6)],
                   lambda i, m, c: {"topo2vec-4": 0.8 + 0.05 * i, "id": 0.9}.get(m))
    noise = _known_rows("label_noise", [("0 m, drop 0", 0.0), ("100 m, drop 0", 1.0)],
                  lambda i, m, c: {"topo2vec-4": 0.85, "id": 0.9 - 0.1 * i}.get(m))
    scale = _known_rows("scale", [("30", 30.0), ("120", 120.0)],
                  lambda i, m, c: {"topo2vec-4": 0.85 - 0.1 * i, "id": 0.9, "topo2vec-4 multiscale": 0.88}[m])
    k = _known_rows("k", [("k=1", 1.0), ("k=2", 2.0), ("k=4", 4.0)],
              lambda i, m, c: {0: 0.8, 1: 0.9, 2: 0.85}[i] if m == "topo2vec-4" else None)
    metrics = _fake_metrics(pd.concat([length, noise, scale, k]))
    v = {d["family"]: d for d in V.verdicts(metrics)}
    assert set(v) == {"length", "label_noise", "scale", "k"}
    assert "topo2vec-4 up" in v["length"]["answer"] and "id no significant change" in v["length"]["answer"]
    assert "helps topo2vec-4" in v["length"]["answer"]
    e = V.effect(metrics["families"]["length"], "point", model="topo2vec-4", other="1000000", flip=True)
    assert e is not None and e.mean_pp == pytest.approx(10.0, abs=0.5) and e.up == 2 and e.down == 0
    assert "(changed)" in v["label_noise"]["answer"]
    assert "id > topo2vec-4" in v["label_noise"]["answer"] and "topo2vec-4 > id" in v["label_noise"]["answer"]
    assert "at 120 m/px rather than 30 m/px: down (-10.0 pp)" in v["scale"]["answer"]
    assert "topo2vec-4 multiscale against topo2vec-4 at 30 m/px: up (+3.0 pp)" in v["scale"]["answer"]
    assert "the best is k=2 (up against k=1)" in v["k"]["answer"]
    assert all(d["evidence"] for d in v.values())


def test_verdict_html_has_every_family_and_the_cells():
    rows = _known_rows("window", [("44 km", 44.0), ("176 km", 176.0)],
                 lambda i, m, c: {"topo2vec-4": 0.8 + 0.05 * i, "id": 0.9}.get(m))
    metrics = _fake_metrics(rows)
    metrics["settings"].update(size="full", seeds=6, train_seeds=1, images_scale=1.0, res_m=30.0)
    page = V.verdict_html(metrics)
    assert "A larger window helps topo2vec-4" in page and "<details>" in page
    assert "(93.1)" in page and "(92.4)" in page and " ± " in page   # the paper's Table 1 peak values beside ours
    assert "topo2vec-4 @ 176 km − @ 44 km = +5.0 pp" in page
