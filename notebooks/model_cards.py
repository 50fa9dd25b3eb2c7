# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version,-jupytext.text_representation.format_version
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Model cards with the probe results of this run (DVC stage `model_cards`)
#
# The train stage writes `models/<model>.md` beside each checkpoint (what the model is, the data and region it
# saw, its scales, parameters, losses, the data licence, how to load it), before any probe has run. After the
# probes (`probe@exp1`, `probe@exp2`) and the retrieval experiment (`exp4`), this stage writes the complete card,
# with this run's probe results, to `reports/model_cards/<model>.md` (`topo2vec_lib/model_card.py`; a stage
# cannot rewrite another stage's output). `topo2vec info models/<model>.pt` prints the complete card when its
# checksum matches the checkpoint, else the one beside the checkpoint.

# %% tags=["parameters"]
params_path = None            # None: the project's params.yaml (its `models` section names the models)
models_dir = "models"
metrics_dir = "metrics"
terrain_dir = "data/terrain"
out_dir = "reports/model_cards"
output_root = None            # None: scratch/model_cards/ unless run by the pipeline (notebooks/run.sh); "." writes the pipeline's outputs

# %%
import json
import os
from pathlib import Path

from IPython.display import Markdown, display

from topo2vec_lib.model_card import build_card, probe_results
from topo2vec_lib.params import load_params, notebook_outputs, project_root, resolve_params_path, section
from topo2vec_lib.storage import atomic_path
from topo2vec_lib.terrain import open_region

root = project_root()
if root is not None:
    os.chdir(root)
path = resolve_params_path(params_path)
models = list(section(load_params(path), "models", path))
notebook_outputs(globals(), "model_cards", ["out_dir"])
terrain = open_region(terrain_dir, "train", chunks="auto")      # its attributes only (the pixels are not read)
terrain_info = {"source": terrain.attrs.get("source"), "region": terrain.attrs.get("region"),
                "region_lonlat": terrain.attrs.get("region_lonlat"), "res_m": terrain.attrs.get("res_m"),
                "crs": terrain.rio.crs.to_string(), "shape": list(terrain.shape)}

# %% [markdown]
# ## Every card first, then the files (a missing checkpoint or metric fails before anything is written)

# %%
cards = {}
for name in models:
    checkpoint = Path(models_dir) / f"{name}.pt"
    train_metrics = Path(metrics_dir) / f"train_{name}.json"
    metrics = json.loads(train_metrics.read_text()) if train_metrics.is_file() else None
    probes = probe_results(name, metrics_dir)
    cards[name] = build_card(checkpoint, metrics=metrics, terrain=terrain_info, probes=probes, name=name,
                             path_label=os.path.relpath(checkpoint))
    print(f"{name}: probe results of {sorted(probes) or 'no experiment'}")

for name, text in cards.items():
    with atomic_path(Path(out_dir) / f"{name}.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
print(f"wrote {len(cards)} cards to {out_dir}")

# %%
display(Markdown(cards[models[0]].split("\n", 1)[1]))
