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
# # Exp 3: multi-scale classification maps (paper Fig. 5)
#
# Every place of a grid inside a box of the **test** region is classified at several scales (10, 30, 60 m/px in
# the paper) with one-vs-random probes of topo2vec-4 (StandardScaler + RBF SVM as in Exp 1), each trained on
# **train**-region labels and random places at the same scale. Colours as the paper: peaks blue, saddles green,
# cliffs red, rivers yellow. The grid is embedded block by block with Dask (`topo2vec_lib.regional`).
#
# Scales finer than the DEM (10 m/px on a 30 m DEM) have no native data: with `upsample_finer=True` both
# terrains are bilinearly interpolated to that scale first (smooth patches, no new information); with `False`
# such scales are skipped. The numbers: for each scale and class, the fraction of the box's label points whose
# grid cell the probe paints as that class (`hit_rate`), beside the fraction of all cells painted so
# (`cell_rate`, what painting at random would score).

# %% tags=["parameters"]
params_path = None            # None: the project's params.yaml; parameters left at None come from its `exp3` section
models_dir = "models"
model = None                  # models/<model>.pt (paper: topo2vec-4)
terrain_dir = "data/terrain"
labels_dir = "data/labels"
classes = None                # classes painted (paper: peak, saddle, river, cliff)
box_lonlat = None             # [lon_min, lat_min, lon_max, lat_max] in the test region; null in params.yaml:
                              # the box_km square of the test terrain richest in labels of every class
box_km = None                 # side of the default box, km
scales_m = None               # m/px; paper: [10, 30, 60]
stride_m = None               # grid spacing in metres
n_train = None                # balanced probe training set per class and scale (half labels, half random)
upsample_finer = None         # scales finer than the DEM: interpolate (True) or skip (False)
chunk = 64                    # grid places per Dask block side
max_points = 400              # label points drawn on the web map (capped, split over classes)
map_path = "reports/maps/multiscale.html"
png_path = "plots/multiscale_maps.png"
metrics_path = "metrics/exp3.json"
seed = None
output_root = None            # None: scratch/multiscale_maps/ unless run by the pipeline (notebooks/run.sh); "." writes the pipeline's outputs

# %%
import time
from pathlib import Path

import pandas as pd
from IPython.display import Image, display

from topo2vec_lib import maps
from topo2vec_lib.checks import integer
from topo2vec_lib.labels import read_labels
from topo2vec_lib.models import load_embedder
from topo2vec_lib.params import notebook_outputs
from topo2vec_lib.regional import embed_region
from topo2vec_lib.sampler import PatchSampler
from topo2vec_lib.schema import notebook_section
from topo2vec_lib.storage import write_json
from topo2vec_lib.terrain import open_region

print(notebook_section(globals(), "exp3", local={"chunk": integer(1), "max_points": integer(1)}))
notebook_outputs(globals(), "multiscale_maps", ["map_path", "png_path", "metrics_path"])


# %% [markdown]
# ## Terrain, labels, model, box

# %%
terrains = {region: open_region(terrain_dir, region).load() for region in ("train", "test")}
native_m = float(terrains["test"].attrs["res_m"])
crs = terrains["test"].rio.crs
labels = read_labels(labels_dir, classes, terrains=terrains)
path = Path(models_dir) / f"{model}.pt"
if not path.exists():
    raise FileNotFoundError(f"model {model!r}: {path} does not exist; train it first (dvc repro train@{model})")
embedder = load_embedder(path)
print(embedder)

test_sampler = PatchSampler(terrains["test"])
if box_lonlat is None:   # the box_km square of the test terrain where the rarest class has the most labels
    bounds_xy = maps.densest_box(labels[labels["region"] == "test"], crs, test_sampler.bounds_xy,
                                 float(box_km) * 1e3, classes)
else:
    bounds_xy = maps.region_bounds(test_sampler, box_lonlat)
box_ll = test_sampler.to_lonlat([bounds_xy[0], bounds_xy[2]], [bounds_xy[1], bounds_xy[3]])
print(f"box: x {bounds_xy[0]:.0f}..{bounds_xy[2]:.0f} m, y {bounds_xy[1]:.0f}..{bounds_xy[3]:.0f} m "
      f"({(bounds_xy[2] - bounds_xy[0]) / 1e3:.1f} x {(bounds_xy[3] - bounds_xy[1]) / 1e3:.1f} km), about lon "
      f"{box_ll[0].min():.4f}..{box_ll[0].max():.4f}, lat {box_ll[1].min():.4f}..{box_ll[1].max():.4f}")

# %% [markdown]
# ## Probes and grid classification per scale

# %%
skipped, upsampled, scores, hit_rates, timings = [], [], {}, {}, {}
for res_m in [float(r) for r in scales_m]:
    t0 = time.perf_counter()
    if res_m < native_m - 1e-9:
        if not upsample_finer:
            skipped.append(res_m)
            print(f"{res_m:g} m/px is finer than the DEM's {native_m:g} m/px: skipped (upsample_finer=False)")
            continue
        margin = 17 * res_m
        box = (bounds_xy[0] - margin, bounds_xy[1] - margin, bounds_xy[2] + margin, bounds_xy[3] + margin)
        train_s = PatchSampler(maps.upsample_terrain(terrains["train"], res_m))
        test_s = PatchSampler(maps.upsample_terrain(terrains["test"], res_m, box))
        upsampled.append(res_m)
    else:
        train_s, test_s = PatchSampler(terrains["train"]), test_sampler
    probes = maps.train_class_probes(embedder, train_s, labels, classes, res_m, n_per_class=n_train, seed=seed)
    region = embed_region(embedder, test_s, res_m, stride_m, bounds_xy, chunk=chunk)
    scores[res_m] = maps.classify_region(region["embedding"], probes).compute()
    hit_rates[f"{res_m:g}"] = maps.label_hit_rates(scores[res_m], labels[labels["region"] == "test"], crs)
    timings[f"{res_m:g}"] = time.perf_counter() - t0
    print(f"{res_m:g} m/px: {scores[res_m].sizes['y']} x {scores[res_m].sizes['x']} places, "
          f"probes {[c for c, p in probes.items() if p is not None]}, {timings[f'{res_m:g}']:.0f} s")
    del train_s
if not scores:
    raise ValueError(f"no scale left to map: scales_m={scales_m}, native {native_m} m/px, upsample_finer=False")

# %% [markdown]
# ## Label points on cells of their class, per scale
# `hit_rate`: label points of the class (inside the box) whose grid cell is painted as the class;
# `cell_rate`: share of all cells painted as the class. A useful map has `hit_rate` well above `cell_rate`.

# %%
table = pd.DataFrame([{"res_m": r, "class": c, **v} for r, per in hit_rates.items() for c, v in per.items()])
table

# %% [markdown]
# ## Figure (paper Fig. 5) and web map

# %%
hillshade = maps.hillshade_raster(terrains["test"], bounds_xy, margin_m=0)
maps.plot_multiscale(hillshade, scores, png_path, title=f"{model}: multi-scale classification (test region)")
display(Image(filename=png_path))
test_labels = labels[labels["region"] == "test"]
box_labels = test_labels[maps.label_in_box(test_labels, crs, bounds_xy)]
web = maps.multiscale_map(hillshade, scores, crs, box_labels, max_points=max_points, seed=seed)
maps.save_map(web, map_path)
print("wrote", map_path, f"({Path(map_path).stat().st_size / 1e6:.1f} MB)", "and", png_path)
web

# %%
write_json(metrics_path, {
    "model": model, "box_xy_m": list(bounds_xy), "box_lonlat": [float(box_ll[0].min()), float(box_ll[1].min()),
                                                                 float(box_ll[0].max()), float(box_ll[1].max())],
    "stride_m": float(stride_m), "native_res_m": native_m, "scales_m": [float(r) for r in scores],
    "upsampled_scales_m": upsampled, "skipped_scales_m": skipped, "n_train": int(n_train), "seed": int(seed),
    "hit_rates": hit_rates, "wall_s": timings})
print("wrote", metrics_path)
