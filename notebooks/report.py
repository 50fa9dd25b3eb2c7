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
# # topo2vec: the study report
# Gathers every table and figure the pipeline produced into one self-contained page,
# `reports/index.html` (images embedded, opens from disk). Our numbers stand beside the paper's.

# %% tags=["parameters"]
root = None                   # None: the project root (found from the working directory)
out_path = "reports/index.html"
loss_curves_path = "reports/loss_curves.png"
params_path = None            # None: the project's params.yaml (the report lists its `models`)
output_root = None            # None: scratch/report/ unless run by the pipeline (notebooks/run.sh); "." writes the pipeline's outputs

# %%
import os
from pathlib import Path

from IPython.display import HTML, display

from topo2vec_lib.ablation_verdicts import verdict_html
from topo2vec_lib.params import load_params, notebook_outputs, project_root, resolve_params_path, section
from topo2vec_lib.report import Section, build_report
from topo2vec_lib.storage import read_json

root = str(root or project_root() or ".")
os.chdir(root)                # relative inputs and outputs are the project's (as under dvc repro)
notebook_outputs(globals(), "report", ["out_path", "loss_curves_path"])
models = list(section(load_params(resolve_params_path(params_path or Path(root, "params.yaml"))), "models"))

T2V = [m for m in models if m.startswith("topo2vec")]
ablations = Path(root, "metrics/ablations.json")   # written by `make ablations` (issue 15), committed with its figures
sections = [
    Section("Does the fractal effect help? (the ablation families)",
            verdict_html(read_json(ablations)) if ablations.exists() else
            "Not run yet: <code>make ablations</code> writes metrics/ablations.json, its figures and tables.",
            figures=[f"plots/ablations/{f}.png" for f in ("length", "scale", "k", "window", "label_noise", "heldout_l1")
                     if ablations.exists()]),
    Section("Data: the synthetic world",
            "Deterministic synthetic terrain in the paper's train (lon 10-15) and test (lon 5-10) polygons, EPSG:3035, 30 m/px. "
            "Relief statistics are compared with real alpine DEMs in the terrain notebook.",
            figures=["plots/terrain_hillshade.png", "plots/terrain_relief.png"], metrics=["metrics/terrain.json"]),
    Section("Labels derived from the terrain",
            "Peaks, saddles, rivers, cliffs, waterfalls and sinkholes by documented terrain rules; aerialway stations and alpine huts "
            "are stochastic proxies.", figures=["plots/labels_map.png"], metrics=["metrics/labels.json"]),
    Section("Training", "Loss curves and reconstructions of held-out test-region places.",
            figures=[loss_curves_path] + [f"plots/train/{m}/reconstructions_{m}.png" for m in T2V],
            metrics=[f"metrics/train_{m}.json" for m in models]),
    Section("Scale selection (paper Fig. 4)", figures=["plots/scale_selection.png"],
            metrics=["metrics/scale_selection.json"]),
    Section("Exp 1: topographic classes (paper Table 1)", "Our mean &plusmn; std over 10 seeds beside the paper's value.",
            tables=["reports/tables/exp1/exp1.html"]),
    Section("Exp 2: topography-correlated classes (paper Table 2)", "Our mean &plusmn; std over 10 seeds beside the paper's value.",
            tables=["reports/tables/exp2/exp2.html"]),
    Section("Exp 3: multi-scale classification maps (paper Fig. 5)", figures=["plots/multiscale_maps.png"],
            metrics=["metrics/exp3.json"], links=[("interactive map (folium)", "reports/maps/multiscale.html")]),
    Section("Exp 4: terrain retrieval (paper Fig. 6)", figures=["plots/retrieval.png"], metrics=["metrics/exp4.json"],
            links=[("interactive map (folium)", "reports/retrieval.html")]),
    Section("Model cards", "Each model: what it is, the data and region it saw, scales, parameters, losses, the probe "
            "results of this run and the data licence (`topo2vec info models/<model>.pt` prints them).",
            links=[(m, f"reports/model_cards/{m}.md") for m in models]),
]

# %%
import matplotlib.pyplot as plt
import pandas as pd

curves = {m: pd.read_csv(p) for m in models if (p := Path(root, f"plots/train/{m}/loss_{m}.csv")).exists()}
curves = {m: df[df["scope"] == "steps"] if (df["scope"] == "steps").any() else df for m, df in curves.items() if len(df)}
fig, ax = plt.subplots(figsize=(7, 4))
for m, df in curves.items():
    y = "loss_l1" if "loss_l1" in df.columns else "loss"
    ax.plot(df["images"], df[y], marker=".", label=f"{m} ({y})")
ax.set_xlabel("training images seen"); ax.set_ylabel("training loss"); ax.set_yscale("log"); ax.legend(fontsize=8)
fig.tight_layout(); Path(root, loss_curves_path).parent.mkdir(parents=True, exist_ok=True); fig.savefig(Path(root, loss_curves_path), dpi=110); plt.show()

# %%
path = build_report(sections, root, Path(root, out_path))
print("wrote", path)
display(HTML(f'<a href="{out_path}">{out_path}</a>'))
