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
# # Exp 4: terrain retrieval (paper Fig. 6)
#
# Take n query places, average their topo2vec-4 embeddings and find the k most similar places of a grid over
# the **test** region with `sklearn.neighbors.NearestNeighbors` (as the paper and its code). Change
# `query_lonlat` (a list of `[lon, lat]`) and re-run the notebook for a new map.
#
# The paper shows this qualitatively. To compare models we add a number: **precision@k** of retrieving the
# queries' labelled class. The candidates are labelled places of every class plus random places of the test
# region; per class and repeat, `pk_queries` places of the class are drawn as queries (the same draws for every
# model), the rest are searched, and precision@k is the share of the k nearest carrying the class. `chance` is
# the share of the class among the candidates.

# %% tags=["parameters"]
params_path = None            # None: the project's params.yaml; parameters left at None come from its `exp4` section
models_dir = "models"
model = None                  # the model of the map and figure (paper: topo2vec-4)
baselines = None              # models compared by precision@k (models/<name>.pt)
terrain_dir = "data/terrain"
labels_dir = "data/labels"
query_lonlat = None           # [[lon, lat], ...] query places; null: n_queries labelled places of query_class
query_class = None            # class of the default queries
n_queries = None
k = None                      # matches shown on the map
res_m = None                  # m/px of the patches
box_lonlat = None             # [lon_min, lat_min, lon_max, lat_max] of the searched grid; null: the test terrain
stride_m = None               # grid spacing, metres
exclude_radius_m = None       # grid places this close to a query are not returned; null: half a patch
classes = None                # classes of the precision@k candidates
per_class = None              # labelled candidates per class
n_random = None               # random candidates
pk_queries = None             # queries per precision@k draw
pk_k = None                   # k of precision@k
repeats = None                # query draws per class
chunk = 64
map_path = "reports/retrieval.html"
png_path = "plots/retrieval.png"
metrics_path = "metrics/exp4.json"
seed = None
output_root = None            # None: scratch/retrieval/ unless run by the pipeline (notebooks/run.sh); "." writes the pipeline's outputs

# %%
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Image, display

from topo2vec_lib import maps
from topo2vec_lib.checks import integer
from topo2vec_lib.labels import read_labels
from topo2vec_lib.models import load_embedder
from topo2vec_lib.params import notebook_outputs
from topo2vec_lib.regional import embed_region, embed_xy
from topo2vec_lib.sampler import PatchSampler
from topo2vec_lib.schema import notebook_section
from topo2vec_lib.storage import write_json
from topo2vec_lib.terrain import open_region

print(notebook_section(globals(), "exp4", local={"chunk": integer(1)}))
notebook_outputs(globals(), "retrieval", ["map_path", "png_path", "metrics_path"])
res_m = float(res_m)
exclude_radius_m = 17 * res_m / 2 if exclude_radius_m is None else float(exclude_radius_m)


def load(name):
    path = Path(models_dir) / f"{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"model {name!r}: {path} does not exist; train it first (dvc repro train@{name})")
    return load_embedder(path)


# %%
terrain = open_region(terrain_dir, "test").load()
crs = terrain.rio.crs
sampler = PatchSampler(terrain)
labels = read_labels(labels_dir, terrains={"test": sampler})
test_labels = labels[labels["region"] == "test"]
embedders = {name: load(name) for name in dict.fromkeys([model, *baselines])}
print({n: f"{type(e).__name__}, dim {e.dim}" for n, e in embedders.items()})
bounds_xy = maps.region_bounds(sampler, box_lonlat)

# %% [markdown]
# ## Query places
# Default: `n_queries` labelled places of `query_class` in the searched box, drawn with `seed`.

# %%
if query_lonlat is None:
    pool = test_labels[(test_labels["class"] == query_class)
                       & maps.label_in_box(test_labels, crs, bounds_xy)]
    pool = pool[sampler.valid_places(pool["lon"].to_numpy(), pool["lat"].to_numpy(), res_m)]
    if len(pool) < n_queries:
        raise ValueError(f"only {len(pool)} usable {query_class!r} labels in the box for n_queries={n_queries}; "
                         "give query_lonlat or another query_class")
    pick = np.random.default_rng(seed).choice(len(pool), n_queries, replace=False)
    query_lonlat = pool.iloc[np.sort(pick)][["lon", "lat"]].to_numpy().tolist()
q_lon, q_lat = np.asarray(query_lonlat, dtype=float).reshape(-1, 2).T
ok = sampler.valid_places(q_lon, q_lat, res_m)
if not ok.all():
    raise ValueError(f"query places {np.asarray(query_lonlat)[~ok].tolist()} have no full {res_m:g} m/px patch on "
                     "the test terrain (outside it, at its edge or on nodata)")
pd.DataFrame({"lon": q_lon, "lat": q_lat})

# %% [markdown]
# ## The k most similar grid places (map and figure)

# %%
main = embedders[model]
region = embed_region(main, sampler, res_m, stride_m, bounds_xy, chunk=chunk).compute()
q_vec = embed_xy(main, sampler, *sampler.to_xy(q_lon, q_lat), res_m)
matches = maps.retrieve_in_region(region, q_vec, int(k), crs=crs, query_lonlat=(q_lon, q_lat),
                                  exclude_radius_m=exclude_radius_m)
# which labelled class (if any) lies within two pixels of each match
near = maps.nearest_label(matches["lon"].to_numpy(), matches["lat"].to_numpy(), test_labels, crs, 2 * res_m)
matches["label_within_2px"] = [name or "-" for name in near]
matches

# %%
hillshade = maps.hillshade_raster(terrain, bounds_xy)
web = maps.retrieval_map(hillshade, crs, (q_lon, q_lat), (matches["lon"], matches["lat"]),
                         match_labels=[f"label {lab}, distance {d:.2f}" for lab, d in
                                       zip(matches["label_within_2px"], matches["distance"])])
maps.save_map(web, map_path)
q_patches = sampler.patches(q_lon, q_lat, res_m, 17)
m_patches = sampler.patches(matches["lon"].to_numpy(), matches["lat"].to_numpy(), res_m, 17)
maps.plot_retrieval(q_patches, m_patches, png_path, res_m,
                    match_titles=[f"#{r} {lab}" for r, lab in zip(matches["rank"], matches["label_within_2px"])],
                    title=f"{model}: {len(q_lon)} queries, {len(matches)} nearest grid places")
display(Image(filename=png_path))
print("wrote", map_path, "and", png_path)
web

# %% [markdown]
# ## precision@k of retrieving the queries' class, every model

# %%
cand = maps.retrieval_candidates(sampler, labels, classes, res_m, per_class=per_class, n_random=n_random, seed=seed)
results = maps.retrieval_precision(embedders, sampler, cand, classes, res_m, n_queries=pk_queries, k=pk_k,
                                   repeats=repeats, seed=seed)
chance = cand["class"].value_counts(normalize=True).to_dict()
summary = (results.groupby(["model", "class"])["precision"].agg(["mean", "std", "count"]).reset_index())
summary["chance"] = summary["class"].map(chance)
summary.pivot(index="model", columns="class", values="mean").reindex(index=list(embedders))

# %%
per_model = {m: {"mean": float(g["precision"].mean()),
                 "per_class": {c: {"mean": float(gc["precision"].mean()), "std": float(gc["precision"].std(ddof=1))
                                   if len(gc) > 1 else None, "chance": float(chance.get(c, 0.0))}
                               for c, gc in g.groupby("class")}}
             for m, g in results.groupby("model")}
write_json(metrics_path, {
    "model": model, "res_m": res_m, "k": int(k), "query_lonlat": np.c_[q_lon, q_lat].tolist(),
    "matches_labelled_as_query_class": float(np.mean(matches["label_within_2px"] == query_class))
    if query_class else None,
    "precision_at_k": {"k": int(pk_k), "queries": int(pk_queries), "repeats": int(repeats),
                       "candidates": {str(c): int(n) for c, n in cand["class"].value_counts().items()},
                       "models": per_model}, "seed": int(seed)})
print("wrote", metrics_path)
