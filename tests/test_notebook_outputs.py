"""Where a notebook writes: the pipeline's outputs under notebooks/run.sh (TOPO2VEC_OUTPUT_ROOT=.), scratch/<notebook>/
when run any other way (JupyterLab, papermill by hand), or the folder its output_root names; the notebook sources
stay what JupyterLab saves (a stable jupytext header); explore.py runs end to end."""
from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest

from topo2vec_lib.params import OUTPUT_ROOT_ENV, notebook_outputs, output_root

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))


@pytest.fixture
def study(tmp_path, monkeypatch):
    root = tmp_path / "study"
    (root / "notebooks").mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text("seed: 0\n")
    monkeypatch.chdir(root / "notebooks")                  # JupyterLab's kernel directory
    monkeypatch.delenv(OUTPUT_ROOT_ENV, raising=False)
    return root


def test_by_hand_outputs_go_to_scratch_and_absolute_paths_stay(study, capsys):
    ns = {"out_dir": "data/terrain", "metrics_path": "metrics/terrain.json", "plots_dir": "/abs/plots", "x": None,
          "output_root": None}
    out = notebook_outputs(ns, "terrain", ["out_dir", "metrics_path", "plots_dir", "x"])
    assert out == study / "scratch" / "terrain"
    assert ns["out_dir"] == str(study / "scratch" / "terrain" / "data" / "terrain")
    assert ns["metrics_path"] == str(study / "scratch" / "terrain" / "metrics" / "terrain.json")
    assert ns["plots_dir"] == "/abs/plots" and ns["x"] is None and ns["output_root"] == str(out)
    assert "outputs go to scratch/terrain/" in capsys.readouterr().out


def test_the_pipeline_and_an_explicit_output_root(study, monkeypatch, capsys):
    monkeypatch.setenv(OUTPUT_ROOT_ENV, ".")                 # what notebooks/run.sh exports
    ns = {"out_dir": "data/terrain"}
    assert notebook_outputs(ns, "terrain", ["out_dir"]) == study and ns["out_dir"] == "data/terrain"
    assert capsys.readouterr().out == ""
    assert output_root({"output_root": "runs/a"}, "probe") == study / "runs" / "a"   # the parameter wins
    assert output_root({"output_root": "pipeline"}, "probe") == study
    monkeypatch.delenv(OUTPUT_ROOT_ENV)
    assert output_root({"output_root": "."}, "probe") == study
    with pytest.raises(ValueError, match="output_root"):
        output_root({"output_root": 3}, "probe")


def test_run_sh_marks_the_pipeline():
    assert re.search(rf"^export {OUTPUT_ROOT_ENV}=\.$", (REPO / "notebooks" / "run.sh").read_text(), re.M)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_jupyterlab_saves_every_notebook_source_unchanged(path):
    """What JupyterLab's jupytext writes back (kernel python3, 'Python 3 (ipykernel)') is the file itself, so
    opening and saving a notebook leaves git clean."""
    from jupytext.config import JupytextConfiguration

    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    assert jupytext.writes(nb, fmt="py:percent", config=JupytextConfiguration()) == path.read_text()


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem != "explore"], ids=lambda p: p.name)
def test_every_stage_notebook_has_output_root_and_sends_its_outputs_there(path):
    text = path.read_text()
    assert re.search(r"^output_root = None ", text, re.M), f"{path.name}: no output_root parameter"
    assert f'notebook_outputs(globals(), "{path.stem}"' in text


@pytest.mark.slow
def test_explore_notebook_runs_end_to_end(tmp_path, notebook_runner):
    import torch

    from topo2vec_lib.models import Topo2Vec
    from topo2vec_lib.models.networks import Encoder

    torch.manual_seed(0)
    model = tmp_path / "topo2vec-4.pt"
    Topo2Vec(Encoder(), {"k": 4, "train_res_m": [120], "embed_res_m": 30.0}, name="topo2vec-4").save(model)
    out = tmp_path / "explore"
    notebook_runner("explore", tmp_path / "nb", {"model": str(model), "output_root": str(out), "k": 6,
                                                 "places": [[-118.15, 34.32], [-118.16, 34.33]]})
    assert (out / "explore_map.html").stat().st_size > 50_000 and (out / "explore_patches.png").stat().st_size > 5_000
    assert len(list(out.glob("*.tif"))) == 1
