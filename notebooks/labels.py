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
# # Labels: the eight probe classes on the study terrain
#
# The paper probes embeddings with OpenStreetMap points. On the synthetic world (`source="derived"`) the
# points are derived from the terrain by the documented rules of `topo2vec_lib.labels`, mimicking how OSM
# mappers place them:
#
# | class | experiment | source | rule |
# | --- | --- | --- | --- |
# | peak | Exp 1 | derived | local maxima (not on the window edge) with topographic prominence >= `peak_prominence_m` (exact union-find sweep over ascent basins), merged within `peak_merge_m` |
# | saddle | Exp 1 | derived | the key col of each kept peak: where its region first joins higher ground |
# | river | Exp 1 | derived | D8 channels of the depression-filled DEM draining >= `river_min_area_km2`, a point every `line_spacing_m` along the channel |
# | cliff | Exp 1 | derived | slope >= `cliff_min_slope_deg` over an 8-connected extent >= `cliff_min_length_m`, points `line_spacing_m` apart |
# | waterfall | Exp 2 | derived | channel (>= `waterfall_min_area_km2`) dropping >= `waterfall_min_drop_m` within `waterfall_reach_m`; one point per steep reach, at its lip |
# | sinkhole | Exp 2 | derived | closed depression >= `sinkhole_min_depth_m` deep, area in [`sinkhole_min_area_m2`, `sinkhole_max_area_m2`]; its lowest cell |
# | aerialway_station | Exp 2 | derived-proxy | seeded lift lines from a gentle low cell up to a high peak/col (gain >= `aerialway_min_gain_m`, length `aerialway_min_length_m`..`aerialway_max_length_m`), stations at both ends |
# | alpine_hut | Exp 2 | derived-proxy | seeded draws among high (>= `hut_min_elev_quantile`), gentle (<= `hut_max_slope_deg`) cells near cols or below peaks, >= `hut_spacing_m` apart |
#
# Human classes are **proxies**: their placement is a plausible stochastic rule, not observed data.
#
# Windows wider than `tile_px` pixels are labelled **tile by tile** (`topo2vec_lib.tiled_labels`: Barnes-style
# tiled depression filling and flow accumulation, prominence trees merged at tile borders, components joined
# across borders), with exactly the labels of the one-piece rules, on Dask (`dask.scheduler`: a local cluster
# of processes by default, or an existing cluster's address); the terrain is read tile by tile, never whole.

# %% tags=["parameters"]
params_path = None            # None: the project's params.yaml; parameters left at None come from its `labels` section
source = None                 # derived (rules on the terrain) | osm (Overpass) | files (your own points)
osm = None                    # source osm: keyword arguments of topo2vec_lib.osm.osm_labels (endpoint, cache_dir, ...)
label_files = None            # source files: {class: path} of GeoJSON, CSV or Parquet points
terrain_dir = "data/terrain"
out_dir = "data/labels"
plots_dir = "plots"
metrics_path = "metrics/labels.json"
seed = None
# rule parameters (topo2vec_lib.labels.RULE_DEFAULTS)
peak_prominence_m = None
peak_merge_m = None
line_spacing_m = None
river_min_area_km2 = None
cliff_min_slope_deg = None
cliff_min_length_m = None
waterfall_min_area_km2 = None
waterfall_min_drop_m = None
waterfall_reach_m = None
sinkhole_min_depth_m = None
sinkhole_min_area_m2 = None
sinkhole_max_area_m2 = None
aerialway_lines_per_100km2 = None
aerialway_min_gain_m = None
aerialway_min_length_m = None
aerialway_max_length_m = None
aerialway_max_slope_deg = None
aerialway_top_quantile = None
hut_per_100km2 = None
hut_min_elev_quantile = None
hut_max_slope_deg = None
hut_near_col_m = None
hut_near_peak_m = None
hut_below_peak_m = None
hut_spacing_m = None
# positives needed per class and region (Exp 1: 1000/200 balanced over 2 -> 500/100; Exp 2: 400/100 -> 200/50)
min_train_exp1 = None
min_test_exp1 = None
min_train_exp2 = None
min_test_exp2 = None
cnn_train_per_class = None    # supervised CNN baseline wish (drawn with jitter if short; reported, not enforced)
jitter_sigma_m = None         # label noise (labels.perturb_labels): Gaussian offset sd in metres per axis (0: off)
drop_fraction = None          # label noise: share of the points of each class dropped (0: off)
output_root = None            # None: scratch/labels/ unless run by the pipeline (notebooks/run.sh); "." writes the pipeline's outputs
tile_px = None                # derived labels tile by tile when a window is wider than this (px)
scheduler = None              # dask section (None: a local cluster of n_workers processes)
n_workers = None
scratch_dir = None


# %%
from topo2vec_lib.checks import text
from topo2vec_lib.params import notebook_outputs
from topo2vec_lib.schema import notebook_section

# every value is checked (topo2vec_lib/schema.py: ranges of the rules, counts, sources) before any work
notebook_section(globals(), "labels", local={k: text(nonempty=True) for k in ("terrain_dir", "out_dir", "plots_dir",
                                                                              "metrics_path")})
notebook_outputs(globals(), "labels", ["out_dir", "plots_dir", "metrics_path"])
notebook_section(globals(), "dask")

# %%
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from topo2vec_lib import grid as T
from topo2vec_lib import labels as L
from topo2vec_lib.storage import atomic_path, write_json
from topo2vec_lib.terrain import open_region, store_array
from topo2vec_lib.tiled_labels import derive_cells_tiled, rule_reach_px
from topo2vec_lib.tiling import TileRunner, check_reach

rules = {k: globals()[k] for k in L.RULE_DEFAULTS}
L.rule_params(**rules)  # the library's own check of the rules (the same ranges as the schema)
terrains = {region: open_region(terrain_dir, region, chunks={}) for region in ("train", "test")}   # lazy
tiled = {r: source == "derived" and max(da.shape) > tile_px for r, da in terrains.items()}
for region, da in terrains.items():            # a tile must hold every rule's reach (checked before any work)
    if tiled[region]:
        check_reach(tile_px, rule_reach_px(float(da.attrs["res_m"]), L.rule_params(**rules), L.CLASSES))


# %% [markdown]
# ## Derive the labels of both regions
# Nothing is written until the labels of both regions are derived and their counts checked (below).

# %%
tables, seconds = [], {}
runner = TileRunner(scheduler or None, n_workers) if any(tiled.values()) else None   # an address must answer
try:
    for region, da in terrains.items():
        t0 = time.perf_counter()
        if tiled[region]:
            store = Path(terrain_dir) / f"{region}.zarr"        # read tile by tile (zarr, no Dask graph)
            cells = derive_cells_tiled(store_array(store) if store.is_dir() else da, float(da.attrs["res_m"]),
                                       tile_px, seed=seed, scheduler=runner.client or "sync",
                                       workdir=None if not scratch_dir else Path(scratch_dir) / f"labels-{region}",
                                       **rules)
            df = L.cells_to_table(da, cells)
        else:
            df = L.labels_for_terrain(da.load(), source, seed=seed, rules=rules, progress=True,
                                      osm={"spacing_m": line_spacing_m, **osm}, files=label_files)
        seconds[region] = round(time.perf_counter() - t0, 2)
        tables.append(df)
finally:
    if runner is not None:
        runner.close()
labels = pd.concat(tables, ignore_index=True)
if jitter_sigma_m or drop_fraction:   # OSM-like noise (0 = off): points moved and some left unmapped, both regions
    n_before = len(labels)
    labels = L.perturb_labels(labels, float(jitter_sigma_m), float(drop_fraction), seed=seed)
    print(f"label noise: moved by {jitter_sigma_m:g} m (sd per axis), kept {len(labels)} of {n_before} points")
print({r: f"{terrains[r].shape} px, {'tiled' if tiled[r] else 'one piece'}, {s} s" for r, s in seconds.items()})

# %% [markdown]
# ## Counts per class and region

# %%
counts = pd.DataFrame(L.label_counts(labels)).reindex(index=list(L.CLASSES), columns=["train", "test"]).fillna(0)
counts = counts.astype(int)
area_km2 = {r: float(np.isfinite(terrains[r]).sum()) * terrains[r].attrs["res_m"] ** 2 / 1e6   # chunk by chunk
            for r in terrains}
required = {}
for name, cls in L.CLASSES.items():
    need = {"exp1": (min_train_exp1, min_test_exp1), "exp2": (min_train_exp2, min_test_exp2)}[cls.experiment]
    required[name] = {"train": int(need[0]), "test": int(need[1])}
counts["experiment"] = [L.CLASSES[c].experiment for c in counts.index]
counts["source"] = [L.CLASSES[c].source for c in counts.index]
counts["need_train"] = [required[c]["train"] for c in counts.index]
counts["need_test"] = [required[c]["test"] for c in counts.index]
for r in ("train", "test"):
    counts[f"per_100km2_{r}"] = (counts[r] / area_km2[r] * 100).round(2)
display(counts)

# the count check comes before any output is written: a short class leaves no half-written stage behind
short = {}
for region in ("train", "test"):
    try:
        L.check_counts(labels, {c: required[c][region] for c in L.CLASSES}, region=region)
    except L.InsufficientLabelsError as err:
        short[region] = str(err)
if short:
    raise L.InsufficientLabelsError("label counts are short (nothing was written): " + " | ".join(short.values()))
print("all classes have enough labels in both regions")
L.write_labels(labels, out_dir)

# %% [markdown]
# ## The labels over the hillshade

# %%
colors = {"peak": "tab:blue", "saddle": "tab:green", "river": "gold", "cliff": "tab:red",
          "aerialway_station": "black", "alpine_hut": "tab:purple", "waterfall": "cyan", "sinkhole": "tab:orange"}
fig, axes = plt.subplots(1, 2, figsize=(16, 8))
for ax, region in zip(axes, ("train", "test")):
    da = terrains[region]
    x, y = da.x.values / 1e3, da.y.values / 1e3
    step = max(1, int(np.ceil(max(da.shape) / 1500)))      # big windows: every step-th pixel of the hillshade
    view = da.isel(y=slice(None, None, step), x=slice(None, None, step)).values
    ax.imshow(T.hillshade(view, res_m=da.attrs["res_m"] * step), cmap="gray", extent=(x[0], x[-1], y[-1], y[0]),
              interpolation="nearest")
    sub = labels[labels["region"] == region]
    for name, color in colors.items():
        pts = sub[sub["class"] == name]
        px, py = T.lonlat_to_xy(da.rio.crs.to_wkt(), pts["lon"].values, pts["lat"].values)
        ax.scatter(px / 1e3, py / 1e3, s=6, c=color, label=f"{name} ({len(pts)})", linewidths=0)
    ax.set_title(f"{region}: {da.shape[0]}x{da.shape[1]} px at {da.attrs['res_m']:g} m")
    ax.set_xlabel("x (km)")
    ax.set_ylabel("y (km)")
    ax.legend(loc="lower left", fontsize=7, markerscale=2)
fig.tight_layout()
with atomic_path(Path(plots_dir) / "labels_map.png") as tmp:
    fig.savefig(tmp, format="png", dpi=110)

# %% [markdown]
# ## Metrics
# (The stage has already failed above, writing nothing, when a class has fewer positives than its experiment
# needs in a region.)

# %%
write_json(metrics_path, {
    "source": source,
    "seed": seed,
    "rules": rules,
    "noise": {"jitter_sigma_m": jitter_sigma_m, "drop_fraction": drop_fraction},
    "area_km2": area_km2,
    "seconds": seconds,
    "tiled": tiled,
    "tile_px": tile_px,
    "counts": {r: {c: int(counts.loc[c, r]) for c in L.CLASSES} for r in ("train", "test")},
    "required": required,
    "cnn_train_per_class": {"wanted": cnn_train_per_class,
                            "distinct": {c: int(counts.loc[c, "train"]) for c in L.classes_of("exp1")}},
    "short": short,
})
