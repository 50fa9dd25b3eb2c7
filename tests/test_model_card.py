"""Model cards: what training writes beside a checkpoint, the probed card of the model_cards stage, and which card
`topo2vec info` prints (the one whose checksum matches the checkpoint)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from topo2vec_lib import cli
from topo2vec_lib.model_card import build_card, card_header, card_text, probe_results, write_card

REPO = Path(__file__).resolve().parents[1]
TERRAIN = {"source": "synthetic", "region": "train", "region_lonlat": [10.0, 45.0, 15.0, 50.0], "res_m": 30.0,
           "crs": "EPSG:3035", "shape": [300, 300]}


def _topo2vec(path: Path, seed: int = 0) -> Path:
    import torch

    from topo2vec_lib.models import Topo2Vec
    from topo2vec_lib.models.networks import Encoder

    torch.manual_seed(seed)
    Topo2Vec(Encoder(), {"kind": "topo2vec", "name": path.stem, "k": 4, "train_res_m": [120], "embed_res_m": 30.0,
                         "adversarial": False, "normalisation": {"method": "minmax", "min_range_m": 1.0}},
             name=path.stem).save(path)
    return path


def _metrics(folder: Path, model: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    per = {"peak": {"mean": 0.91, "std": 0.02, "values": [0.9, 0.92]}, "river": {"mean": 0.8, "std": 0.03}}
    (folder / "exp1.json").write_text(json.dumps({model: per, "id": per}))
    (folder / "exp2.json").write_text(json.dumps({model: {"alpine_hut": {"mean": 0.6, "std": 0.05}}}))
    (folder / "exp4.json").write_text(json.dumps({"precision_at_k": {"k": 10, "queries": 5,
                                                                      "models": {model: {"mean": 0.42}}}}))


def test_a_card_says_what_data_scales_parameters_losses_licence_and_how_to_load(tmp_path):
    ckpt = _topo2vec(tmp_path / "models" / "topo2vec-4.pt")
    metrics = {"images_seen": 99968, "epochs": 1, "wall_s": 126.5, "final_loss": 0.21, "device": "cpu",
               "history": [{"scope": "epoch", "epoch": 0, "loss_l1": 0.21}]}
    path = write_card(ckpt, metrics=metrics, terrain=TERRAIN, name="topo2vec-4", path_label="models/topo2vec-4.pt")
    assert path == ckpt.with_suffix(".md")
    text = path.read_text()
    for needle in ("# Model card: topo2vec-4", "## What it is", "fractal effect", "## Data and region",
                   "**train** region terrain (source `synthetic`)", "## Scales", "targets 64 x 64 px",
                   "## Parameters", "| `k` | 4 |", "## Training", "| `images_seen` | 99968 |", "Loss per epoch: 0.21",
                   "## Probe results of this run", "reports/model_cards/topo2vec-4.md", "## Data licence",
                   "No third-party data", "## How to load it", 'load_embedder("models/topo2vec-4.pt")',
                   "topo2vec embed my_dem.tif --model models/topo2vec-4.pt"):
        assert needle in text, needle
    checksum, probed = card_header(path)
    assert checksum.startswith("sha256:") and not probed
    assert card_text(ckpt) == (text, str(path))
    copern = build_card(ckpt, terrain={**TERRAIN, "source": "copernicus"})
    assert "Copernicus WorldDEM-30" in copern and "ODbL" in copern


def test_info_prefers_the_probed_card_and_never_shows_a_stale_one(tmp_path, capsys):
    root = tmp_path / "study"
    (root / "models").mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text("seed: 0\n")
    ckpt = _topo2vec(root / "models" / "topo2vec-4.pt")
    write_card(ckpt, terrain=TERRAIN)
    _metrics(root / "metrics", "topo2vec-4")
    probes = probe_results("topo2vec-4", root / "metrics")
    assert probes["exp1"]["peak"] == (0.91, 0.02) and probes["exp2"]["alpine_hut"] == (0.6, 0.05)
    assert probes["exp4"]["precision_at_k"] == 0.42 and probe_results("nobody", root / "metrics") == {}
    probed = write_card(ckpt, root / "reports" / "model_cards" / "topo2vec-4.md", terrain=TERRAIN, probes=probes)
    assert "| peak | 0.910 +- 0.020 |" in probed.read_text() and "precision@10 0.420" in probed.read_text()
    assert cli.main(["info", str(ckpt)]) == 0
    out = capsys.readouterr()
    assert "| peak | 0.910 +- 0.020 |" in out.out and str(probed) in out.err
    # retrained: both cards describe the old weights -> the card is built from the checkpoint, with a note
    _topo2vec(ckpt, seed=1)
    text, origin = card_text(ckpt)
    assert origin.startswith("built from the checkpoint") and "another version" in origin
    assert "Not recorded with this checkpoint" in text and card_header(ckpt.with_suffix(".md"))[0] not in text


@pytest.mark.slow
def test_the_model_cards_notebook_writes_probed_cards(tmp_path, notebook_runner):
    from conftest import make_terrain

    from topo2vec_lib.models.identity import IdEmbedder
    from topo2vec_lib.terrain import save_terrain

    models, metrics = tmp_path / "models", tmp_path / "metrics"
    models.mkdir()
    _topo2vec(models / "topo2vec-4.pt")
    IdEmbedder(name="id").save(models / "id.pt")
    _metrics(metrics, "topo2vec-4")
    (metrics / "train_id.json").write_text(json.dumps({"images_seen": 0, "dim": 289}))
    terrain = make_terrain(np.random.default_rng(0).normal(500, 30, (64, 64)), region="train")
    save_terrain(terrain.assign_attrs(source="synthetic"), tmp_path / "terrain" / "train.zarr")
    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\nmodels:\n  topo2vec-4: {kind: topo2vec}\n  id: {kind: id}\n")
    out = tmp_path / "cards"
    notebook_runner("model_cards", tmp_path / "nb", {
        "params_path": str(params), "models_dir": str(models), "metrics_dir": str(metrics),
        "terrain_dir": str(tmp_path / "terrain"), "out_dir": str(out)})
    t2v, idc = (out / "topo2vec-4.md").read_text(), (out / "id.md").read_text()
    assert card_header(out / "topo2vec-4.md")[1] and "| river | 0.800 +- 0.030 |" in t2v
    assert "No third-party data" in t2v
    assert "| peak | 0.910 +- 0.020 |" in idc and "| `dim` | 289 |" in idc
