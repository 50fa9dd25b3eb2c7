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
# # Does the fractal effect help? The ablation families (issue 15)
#
# The default study trains each topo2vec variant once (100,000 images, one 44 km window, probed at 30 m/px on
# labels that sit exactly on pixel centres). This notebook varies one thing at a time and probes every variant
# with the Exp 1 protocol (`params.yaml` `exp1`: balanced 1000 / 200 places, RBF SVM, C by 3-fold CV) over
# `seeds` probe seeds, the same places for every model within a seed:
#
# | family | varies | models |
# | --- | --- | --- |
# | `length` | training images (one run to the longest; shorter lengths are its snapshots) and the held-out reconstruction loss on test-region pairs | `length.models` |
# | `scale` | the probe scale (the paper's 30 m/px and each model's own training scale), and training over several input scales (Algorithm 1's `Scales`) | `scale.models` + multi-scale variants |
# | `k` | the fractal factor k at equal training FLOPs, the target kept at the native ~32 m/px (`train_res_m = 30 k`) | `k.base` |
# | `window` | the training terrain: centre crops of one train window of the largest size | `window.models` |
# | `label_noise` | OSM-like label noise in both regions: positions jittered (Gaussian, sd per axis) and a share dropped | `label_noise.models` |
#
# Not a DVC stage, deliberately: `make repro` (`dvc repro`) stays the 10-minute default study, and this run of
# about two hours (`make ablations`) keeps every trained model and probe result in a cache keyed by what it
# computes (`models/ablations/`), so a changed family re-runs only its new points, and a killed run resumes
# (each training also resumes mid-run). DVC experiments would re-run all seven models' probes and the
# report for every point. `metrics/ablations.json` is listed under `metrics` in `dvc.yaml`
# (`dvc metrics show`). `size: tiny` runs two points per family in minutes (tests/test_ablations.py).
#
# The trainings run `jobs` at a time in worker processes, one torch thread each (2 jobs on the 2-core machine;
# on a GPU machine `train.device: auto` trains on CUDA, and `images_scale` lengthens every run).

# %% tags=["parameters"]
params_path = None            # None: the project's params.yaml; parameters left at None come from its `ablations` section
size = None                   # full | tiny
families = None               # subset of [length, scale, k, window, label_noise]
reference = None              # within-point paired tests: this model against every other
classes = None
seeds = None                  # probe seeds
train_seeds = None            # trainings per configuration
res_m = None                  # probe scale (every family but `scale`)
images_scale = None           # multiplies every training length
jobs = None                   # worker processes
length = None
scale = None
k = None
window = None
label_noise = None
tiny = None
seed = None                   # the study seed (params.yaml top level)
terrain_dir = "data/terrain"
labels_dir = "data/labels"
cache_dir = "models/ablations"
metrics_path = "metrics/ablations.json"
plots_dir = "plots/ablations"
tables_dir = "reports/tables/ablations"
estimate_only = False         # plan, calibrate and print the estimate, train nothing
output_root = None            # None: scratch/ablations/ unless run by notebooks/run.sh; "." writes metrics/plots/tables (cache_dir is shared: keyed by what it computes)

# %%
from topo2vec_lib import ablations as A
from topo2vec_lib.checks import boolean, text
from topo2vec_lib.params import load_params, notebook_outputs
from topo2vec_lib.schema import notebook_section

# every value is checked (topo2vec_lib/schema.py: families, counts, model names) before any work
notebook_section(globals(), "ablations", local={
    **{k: text(nonempty=True) for k in ("terrain_dir", "labels_dir", "cache_dir", "metrics_path", "plots_dir",
                                         "tables_dir")}, "estimate_only": boolean})
notebook_outputs(globals(), "ablations", ["metrics_path", "plots_dir", "tables_dir"])

# %%
import os
import subprocess
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import HTML, display

from topo2vec_lib.models import load_embedder, model_config, train_model
from topo2vec_lib.storage import atomic_path, write_json

t_start = time.perf_counter()
params = load_params(params_path)
params["ablations"] = {key: globals()[key] for key in A.PARAMS_KEYS}
params["seed"] = seed
api = A.Api(train_model, load_embedder, model_config)
plan = A.make_plan(params, api=api)
settings = plan.settings
print(f"size {settings['size']}: {len(plan.trainings)} trainings, {len(plan.probes)} probe sets, "
      f"families {settings['families']}, {settings['seeds']} probe seeds x {settings['train_seeds']} training seeds, "
      f"jobs {settings['jobs']}, device {params['train']['device']}")
pd.DataFrame([{"training": t.label, "also": ", ".join(t.aliases), "k": t.config["k"],
               "train_res_m": t.config["train_res_m"], "adversarial": t.config["adversarial"],
               "precision": t.config["precision"], "images": t.config["images"], "terrain": t.terrain,
               "snapshots": list(t.snapshot_images), "seed": t.seed} for t in plan.trainings])

# %% [markdown]
# ## Terrain, cache and the time this will take
# The window family's terrains are made once (the largest window, then centre crops). The estimate measures the
# training speed of every kind of configuration in the plan and the cost of one probe fit on this machine now
# (its load included), then spreads the missing work over `jobs` processes.

# %%
ctx = A.context(params, terrain_dir, labels_dir, cache_dir, api=api)
ctx.terrains.update({f"window={km:g}": p for km, p in A.existing_windows(ctx, plan.windows_km).items()})
calibration = A.calibrate(ctx, plan)
estimate = A.estimate(plan, ctx, calibration, settings["jobs"])
print("calibration:", {k: v for k, v in calibration.items()})
print(f"to do: window terrains {estimate['terrain_s'] / 60:.0f} min, {estimate['trainings']} trainings "
      f"({estimate['train_images']:,} images, {estimate['train_s_total'] / 60:.0f} min of one core), "
      f"{estimate['probe_sets']} probe sets ({estimate['probe_fits']} fits, {estimate['probe_s_total'] / 60:.0f} min "
      f"of one core); estimated wall time with {settings['jobs']} jobs: {estimate['wall_s'] / 60:.0f} min "
      f"(load average now {os.getloadavg()[0]:.1f})")
if not estimate_only:
    A.add_windows(ctx, plan.windows_km)

# %% [markdown]
# ## Train (cached: a second run trains only what is missing)

# %%
t_train = time.perf_counter()
specs = [] if estimate_only else A.training_specs(plan, ctx)


def trained(spec, result, seconds):
    final = result[spec["out"]]
    print(f"trained {spec['label']} ({spec['terrain']}, {spec['config']['images']:,} images) in {seconds:.0f} s: "
          f"held-out L1 {final['test_l1']:.4f}", flush=True)


A.run_jobs(A.train_job, specs, settings["jobs"], trained)
train_s = time.perf_counter() - t_train
print(f"{len(specs)} trainings in {train_s / 60:.1f} min")

# %% [markdown]
# ## Probe every point (Exp 1 classes; cached per probe set)

# %%
t_probe = time.perf_counter()
probe_specs = [] if estimate_only else A.probe_specs(plan, ctx)
todo = sum(not Path(sp["cache"]).exists() for sp in probe_specs)
results = A.run_jobs(A.run_probe_spec, probe_specs, settings["jobs"],
                     lambda sp, rows, s: print(f"probed {sp['family']} {sp['point']} in {s:.0f} s", flush=True))
probe_s = time.perf_counter() - t_probe
print(f"{todo} probe sets computed, {len(probe_specs) - todo} from the cache, in {probe_s / 60:.1f} min")
rows = pd.DataFrame([{**r, "family": sp["family"], "point": sp["point"], "x": sp["x"]}
                     for sp, rs in zip(probe_specs, results) for r in rs])
done = not estimate_only and not rows.empty

# %% [markdown]
# ## Results: mean accuracy with 95 % confidence intervals over seeds, the paper's value beside

# %%
if estimate_only:
    print("estimate_only: nothing trained or probed")
summary = A.summarise(rows) if done else pd.DataFrame(columns=["family", "point", "x", "model", "class", "mean",
                                                                "sd", "ci95", "n", "res_m", "paper"])
tests = A.paired(rows, settings["reference"]) if done else pd.DataFrame()
trainings = A.training_table(plan, ctx)
wall_s = time.perf_counter() - t_start
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
meta = {"size": settings["size"], "settings": settings, "seed": params["seed"], "commit": commit,
        "estimate": estimate, "calibration": calibration,
        "wall_s": {"total": wall_s, "train": train_s, "probe": probe_s},
        "loadavg_end": list(os.getloadavg()), "device": params["train"]["device"]}
if done:
    write_json(metrics_path, A.results_dict(rows, summary, tests, trainings, meta))
print(f"took {wall_s / 60:.1f} min (estimated {estimate['wall_s'] / 60:.1f} min) -> {metrics_path}")
table = summary.assign(cell=lambda d: d.apply(
    lambda r: f"{100 * r['mean']:.1f} ± {100 * r['ci95']:.1f}" if np.isfinite(r["ci95"]) else f"{100 * r['mean']:.1f}",
    axis=1))
if done:
    display(HTML(table.pivot_table(index=["family", "point", "model"], columns="class", values="cell",
                                   aggfunc="first", sort=False).to_html()))

# %% [markdown]
# ## Figures
# One panel per class: accuracy against the family's axis, one line per model, error bars the 95 % CI over
# seeds; dashed lines: the paper's Table 1 value of the model (same colour) where the paper has one.

# %%
AXES = {"length": ("training images", "log"), "scale": ("probe scale (m/px)", "log"), "k": ("fractal factor k", "log"),
        "window": ("training window (km)", "log"), "label_noise": ("label noise (jitter sd, share dropped)", "linear")}
Path(plots_dir).mkdir(parents=True, exist_ok=True)
colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(pd.unique(summary["model"]))}
for family in pd.unique(summary["family"]):
    part = summary[summary["family"] == family]
    cls_list = list(pd.unique(part["class"]))
    fig, axes = plt.subplots(1, len(cls_list), figsize=(4.2 * len(cls_list), 3.6), squeeze=False)
    for ax, cls in zip(axes[0], cls_list):
        for model, m in part[part["class"] == cls].groupby("model", sort=False):
            m = m.sort_values("x")
            ax.errorbar(m["x"], 100 * m["mean"], yerr=100 * m["ci95"].fillna(0), marker="o", capsize=3,
                        color=colors[model], label=model)
            if m["paper"].notna().any():
                ax.axhline(100 * m["paper"].dropna().iloc[0], color=colors[model], ls="--", lw=0.8)
        name, xscale = AXES[family]
        ax.set_xscale(xscale)
        if family == "label_noise":
            ax.set_xticks(m["x"], m["point"], rotation=30, fontsize=7)   # x: the point's index
        ax.set_title(cls)
        ax.set_xlabel(name)
        ax.set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{family}: Exp 1 accuracy, 95 % CI over {settings['seeds'] * settings['train_seeds']} seeds "
                 f"(dashed: paper)")
    fig.tight_layout()
    with atomic_path(Path(plots_dir) / f"{family}.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.show()

# %% [markdown]
# ### Held-out reconstruction loss against training images
# Mean L1 of g(f(x)) against the fractal target on `heldout.test_pairs` fixed pairs at test-region places (the
# loss the models train on, measured where they never trained). Still falling where the default study stops?

# %%
if done and not trainings.empty:
    fig, ax = plt.subplots(figsize=(6, 4))
    default = trainings[trainings["terrain"] == "default"]
    for (model, seed), m in default.groupby(["model", "seed"], sort=False):
        if m["images"].nunique() > 1:
            m = m.sort_values("images")
            ax.plot(m["images"], m["test_l1"], marker="o", label=f"{model} (seed {seed})")
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("held-out L1 (normalised units)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(Path(plots_dir) / "heldout_l1.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.show()
trainings

# %% [markdown]
# ## Paired tests
# `kind = model`: within a point, `reference` minus each other model; `kind = point`: for each model, the
# family's first point minus each other point (accuracy 0-1; t-test and Wilcoxon over the paired seeds). Label
# noise and probe scale change the places, so their across-point pairs share only the seed.

# %%
Path(tables_dir).mkdir(parents=True, exist_ok=True)
for name, df in (("summary", summary), ("paired", tests), ("trainings", trainings), ("rows", rows)):
    if done:
        with atomic_path(Path(tables_dir) / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=False, float_format="%.5g")
tests.sort_values(["family", "kind", "point", "model", "class"]) if done else tests
