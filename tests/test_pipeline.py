"""End to end: `dvc repro` of the whole study with tiny parameters, in a temporary copy of the repo."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from browser import CHROMIUM, load_page
from conftest import TINY_OVERRIDES, copy_repo, write_params

REPO = Path(__file__).resolve().parents[1]
MODELS = ["topo2vec-1", "topo2vec-4", "topo2vec-adv", "id", "cnn", "saumoco", "geomorphometry"]


def test_tiny_params_only_shrink_the_study():
    """The tiny overrides name only sections and keys the study has (a renamed key would silently stop
    shrinking the test run)."""
    real, tiny = yaml.safe_load((REPO / "params.yaml").read_text()), yaml.safe_load(TINY_OVERRIDES.read_text())
    assert set(real["models"]) == set(MODELS)
    for name, over in tiny.items():
        assert name in real, name
        for key, value in over.items():
            assert key in real[name], f"{name}.{key}"
            if name == "models":
                assert set(value) <= set(real[name][key]), f"models.{key}: {set(value) - set(real[name][key])}"


@pytest.mark.slow
def test_dvc_repro_runs_the_whole_study(tmp_path):
    repo = tmp_path / "study"
    repo.mkdir()
    copy_repo(repo)
    write_params(repo / "params.yaml")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    run = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]

    from topo2vec_lib.model_card import card_header, card_text

    for model in MODELS:
        assert (repo / "models" / f"{model}.pt").stat().st_size > 0
        train = json.loads((repo / "metrics" / f"train_{model}.json").read_text())
        assert train["wall_s"] > 0
        # model cards: the train stage's beside the checkpoint, the model_cards stage's with the probe results
        plain, probed = repo / "models" / f"{model}.md", repo / "reports" / "model_cards" / f"{model}.md"
        assert card_header(plain)[1] is False and card_header(probed)[1] is True
        assert card_header(plain)[0] == card_header(probed)[0]
        assert card_text(repo / "models" / f"{model}.pt")[1] == str(probed)
        assert "Exp 1, topographic classes" in probed.read_text()
    for experiment, classes in (("exp1", ["peak", "river", "cliff", "saddle"]),
                                ("exp2", ["aerialway_station", "alpine_hut", "waterfall", "sinkhole"])):
        table = json.loads((repo / "metrics" / f"{experiment}.json").read_text())
        assert set(MODELS) <= set(table)
        for model in MODELS:
            for cls in classes:
                cell = table[model][cls]
                assert len(cell["values"]) == 10
                assert all(0.0 <= v <= 1.0 for v in cell["values"]) and 0.0 <= cell["mean"] <= 1.0
    assert json.loads((repo / "metrics" / "scale_selection.json").read_text())
    for out in ("reports/maps/multiscale.html", "reports/retrieval.html", "plots/multiscale_maps.png",
                "plots/retrieval.png", "plots/scale_selection.png", "metrics/exp3.json", "metrics/exp4.json"):
        assert (repo / out).stat().st_size > 0, out
    report = (repo / "reports" / "index.html").read_text()
    assert "not produced yet" not in report, "the report misses an output of the pipeline"
    assert report.count("data:image/png;base64,") >= 8

    if CHROMIUM:  # the real report, as a reader opens it from disk: every section, no console errors
        page = load_page(repo / "reports" / "index.html")
        assert page.console_errors == []
        for title in ("Data: the synthetic world", "Exp 1: topographic classes (paper Table 1)",
                      "Exp 2: topography-correlated classes (paper Table 2)", "Scale selection (paper Fig. 4)"):
            assert title in page.dom

    # a second repro has nothing to do: every stage's outputs are cached and up to date
    again = subprocess.run(["dvc", "status"], cwd=repo, env=env, capture_output=True, text=True)
    assert "up to date" in again.stdout, again.stdout
