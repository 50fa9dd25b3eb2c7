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
# # Train one model (DVC stage `train@<model>`)
#
# Reads `params.yaml` -> `models[<model>]` merged over the `train` section (model keys win; `overrides`
# win over both), samples from the **train** region `<terrain_dir>/train.zarr`, and writes
# `models/<model>.pt` (a checkpoint `topo2vec_lib.models.load_embedder` reads),
# `models/<model>.md` (its model card: what it is, data, scales, parameters, losses, licence, how to load it;
# `topo2vec info models/<model>.pt` prints it), `metrics/train_<model>.json` (final losses, images seen, wall
# time, images/s; topo2vec also `test_l1`, the held-out reconstruction loss on `heldout.test_pairs` fixed
# fractal pairs of the **test** region), `plots/loss_<model>.csv`
# (the loss history: `scope` = `steps` rows every `log_steps` steps and one `epoch` row per epoch), and
# for topo2vec models `plots/reconstructions_<model>.png` (inputs, targets, reconstructions at places of
# the **test** region).
#
# **topo2vec** (paper Algorithm 1, section 2.4; `topo2vec_lib/models/topo2vec.py`, the loop in `models/trainer.py`): fractal pairs `x` 17 x 17 at
# `train_res_m` m/px, target `y` 16k x 16k over the same footprint; L1 loss, Adam, lr 2e-4; topo2vec-adv adds
# the conditional-GAN loss (lambda_L1 = 100, lambda_GAN = 1), generator and discriminator steps alternating
# per batch. Decisions where the paper leaves room:
# - *17 -> 16 "due to padding"*: `stem: paper` (default) pads the first 3x3 convolution asymmetrically
#   (one zero row/column top/left) so the stem gives exactly the paper's 8 x 16 x 16 and the four max-pools
#   halve it to 1 x 1; `stem: reference` keeps 17 x 17 (padding 1) as the reference code, where the first
#   max-pool's floor drops a row and a column. Same parameters, same 128-d latent.
# - *Which module gets lr 0.0016*: the paper's text says "g had the learning rate 0.0016", and g is the
#   decoder throughout the paper, so by default (`lr_g_scope: decoder`) the encoder keeps `lr` (2e-4),
#   the decoder uses `lr_g` and the discriminator `lr_d` (2e-4, Algorithm 1's lr2 for d).
#   `lr_g_scope: generator` gives f and g `lr_g`, as the reference code's pix2pix does.
# - *Discriminator*: the paper's (BatchNorm + ReLU in all five conv blocks, ReLU between the FC layers);
#   `discriminator: reference` is the reference code's (LeakyReLU 0.2, no activation between FCs). The
#   input is brought to 64 x 64 bilinearly (`d_input_upsample: nearest` as the reference code). The sigmoid
#   is folded into `BCEWithLogitsLoss` (same loss, numerically safe).
# - Adam betas (0.9, 0.999) without and (0.5, 0.999) with the adversarial loss (pix2pix, reference code).
#
# **Resume**: training writes `models/<model>.resume.pt` after every epoch (and every `checkpoint_steps`
# steps); re-running the stage after a kill continues from it and ends with the same weights as an
# uninterrupted run. It is deleted once `models/<model>.pt` is written; one left by a run with another
# config or seed is ignored (with a warning) and overwritten.

# %% tags=["parameters"]
model = "topo2vec-4"
params_path = None            # None: the project's params.yaml (`train` section + `models.<model>`)
terrain_dir = "data/terrain"
labels_dir = "data/labels"
models_dir = "models"
metrics_dir = "metrics"
plots_dir = "plots"
seed = None                   # None: the study seed from params.yaml
overrides = {}                # merged over the model config (tests use it for tiny runs)
test_pairs = None             # topo2vec: held-out fractal pairs at test-region places for `test_l1` (params `heldout`)
output_root = None            # None: scratch/train/ unless run by the pipeline (notebooks/run.sh); "." writes the pipeline's outputs

# %%
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from topo2vec_lib.checks import mapping, text
from topo2vec_lib.model_card import write_card
from topo2vec_lib.models import model_config, train_model
from topo2vec_lib.params import model_parameters, notebook_outputs
from topo2vec_lib.sampler import PatchSampler
from topo2vec_lib.schema import TOP_LEVEL_CHECKS, notebook_section
from topo2vec_lib.storage import atomic_path, write_json
from topo2vec_lib.terrain import open_region

text(nonempty=True)("model", model)
mapping()("overrides", overrides)
config, study_seed = model_parameters(model, params_path, overrides)
notebook_outputs(globals(), "train", ["models_dir", "metrics_dir", "plots_dir"])
seed = TOP_LEVEL_CHECKS["seed"]("seed", study_seed if seed is None else seed)
notebook_section(globals(), "heldout", ["test_pairs"])   # checked (schema.py) before any work
cfg = model_config(config, complete=True)          # params.yaml states every value of the model
kind = cfg.KIND
print(f"{model} (seed {seed}): {cfg.to_dict()}")


train_terrain = open_region(terrain_dir, "train")
sampler = PatchSampler(train_terrain)
labels = None
if kind == "cnn":                              # the only supervised model
    from topo2vec_lib.labels import read_labels

    labels = read_labels(labels_dir, terrains={"train": sampler})
print(f"train terrain {train_terrain.shape} px at {sampler.res_m:g} m/px, region {sampler.region!r}")

# %%
out_path = Path(models_dir) / f"{model}.pt"
resume_path = Path(models_dir) / f"{model}.resume.pt"
t0 = time.perf_counter()
result = train_model(cfg, sampler, labels=labels, out_path=out_path, resume_path=resume_path, seed=seed,
                     progress=True)
print(f"trained {model} in {time.perf_counter() - t0:.1f} s")

# %%
history = result.get("history", [])
metrics = {"model": model, "kind": kind, "config": cfg.to_dict(), "seed": seed,
           **{k: v for k, v in result.items() if k != "history"}}
if kind == "topo2vec":   # held-out reconstruction loss: the same test-region pairs for every model of a scale set and k
    from topo2vec_lib.models import load_embedder
    from topo2vec_lib.models.topo2vec import heldout_l1

    test_sampler = PatchSampler(open_region(terrain_dir, "test"))
    metrics.update(heldout_l1(load_embedder(out_path), test_sampler, int(test_pairs), seed=seed))
    print(f"held-out L1 on {test_pairs} test-region pairs: {metrics['test_l1']:.4f} "
          f"(training loss {metrics['final_loss']:.4f})")
write_json(Path(metrics_dir) / f"train_{model}.json", metrics)
Path(plots_dir).mkdir(parents=True, exist_ok=True)
with atomic_path(Path(plots_dir) / f"loss_{model}.csv") as tmp:
    pd.DataFrame(history, columns=None if history else ["scope", "epoch", "step", "images"]).to_csv(tmp, index=False)
# the model card beside the checkpoint (topo2vec_lib/model_card.py); the model_cards stage adds the probe results
terrain_info = {"source": train_terrain.attrs.get("source"), "region": sampler.region,
                "region_lonlat": sampler.region_lonlat, "res_m": sampler.res_m, "crs": sampler.crs.to_string(),
                "shape": list(train_terrain.shape)}
card = write_card(out_path, metrics=result, terrain=terrain_info, name=model, path_label=os.path.relpath(out_path))
print(f"model card: {card}")
{k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}

# %% [markdown]
# ## Reconstructions at test-region places (topo2vec models)
# Rows: input x (17 x 17 at the training scale), target y (16k x 16k, the same footprint, normalised with
# x's min and range), reconstruction g(f(x)). Places are drawn at random in the held-out test region.

# %%
if kind == "topo2vec":
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from topo2vec_lib.models import load_embedder

    embedder = load_embedder(out_path)
    k, res_m = embedder.config["k"], max(embedder.config["train_res_m"])
    n_show = 6
    lon, lat = test_sampler.random_places(n_show, np.random.default_rng(seed), res_m, size=17, k=k)
    x, y = test_sampler.fractal_pairs(lon, lat, res_m, k)
    y_hat = embedder.reconstruct(x)
    fig, axes = plt.subplots(3, n_show, figsize=(2 * n_show, 6.4), squeeze=False)
    for j in range(n_show):
        for i, (img, title) in enumerate([(x[j, 0], "input x"), (y[j, 0], "target y"), (y_hat[j, 0], "g(f(x))")]):
            ax = axes[i, j]
            ax.imshow(img, cmap="terrain", vmin=float(y[j].min()), vmax=float(y[j].max()))
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(title)
        axes[0, j].set_title(f"{lon[j]:.3f}, {lat[j]:.3f}", fontsize=8)
    fig.suptitle(f"{model}: {res_m:g} m/px input, k = {k} (test region)")
    fig.tight_layout()
    with atomic_path(Path(plots_dir) / f"reconstructions_{model}.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.show()
