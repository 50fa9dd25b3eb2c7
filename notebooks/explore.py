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
# # Explore: terrain like this place
#
# Not a DVC stage: a notebook for people. Pick a DEM (any GeoTIFF or VRT, any CRS), embed it with a trained
# model, give one or more places, and see the most similar terrain on a map and the matched patches beside the
# query's. It runs exactly what the command line runs:
#
# ```bash
# topo2vec embed DEM --model MODEL --res-m 30 --stride-m 60 --out field.tif
# topo2vec search field.tif --place LON,LAT --k 12 --out matches.geojson
# topo2vec map field.tif --search matches.geojson --out map.html
# ```
#
# **Try it:** change `places` (click anywhere on the map below: the popup gives that place's lon/lat to paste)
# and re-run from the search cell; the field is embedded once and reused (`field_path`). Outputs go to
# `scratch/explore/` (git-ignored; `output_root` changes that). The default DEM is the small real Copernicus
# GLO-30 clip the tests use (San Gabriel Mountains, 6.5 x 7.9 km, EPSG:4326); the default model is the study's
# topo2vec-4 (run `dvc repro train@topo2vec-4` first, or give any checkpoint).

# %% tags=["parameters"]
dem = "tests/data/real/glo30_N34W119_san_gabriel_256.tif"   # any GeoTIFF/VRT of heights in metres, any CRS
model = "models/topo2vec-4.pt"    # any checkpoint of the study (topo2vec, id, cnn, saumoco, geomorphometry)
res_m = None                      # patch pixel size, m/px; None: the model's (30)
stride_m = None                   # spacing of the field's places, metres; None: 2 x res_m
places = [[-118.150, 34.320]]     # query places [[lon, lat], ...]; their mean embedding is the query
k = 12                            # matches
min_separation_m = None           # matches at least this far apart; None: one patch footprint (17 x res_m)
field_path = None                 # None: <output_root>/<dem>_<model>_<res>_<stride>.tif (reused when it exists)
output_root = None                # None: scratch/explore/

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from topo2vec_lib import fields, maps, search
from topo2vec_lib.grid import lonlat_to_xy
from topo2vec_lib.models import load_embedder
from topo2vec_lib.params import notebook_outputs, project_root

root = project_root()
if root is not None:
    os.chdir(root)                # relative paths are the project's, from any kernel directory
out = notebook_outputs(globals(), "explore", [])
out.mkdir(parents=True, exist_ok=True)
embedder = load_embedder(model)
res_m = float(embedder.res_m if res_m is None else res_m)
stride_m = float(2 * res_m if stride_m is None else stride_m)
if field_path is None:
    field_path = out / f"{Path(dem).stem}_{Path(model).stem}_{res_m:g}m_{stride_m:g}m.tif"
print(f"model {embedder.name} ({embedder.kind}, {embedder.dim} numbers), patches of {17 * res_m:g} m at "
      f"{res_m:g} m/px, places every {stride_m:g} m")

# %% [markdown]
# ## Embed the DEM (once; resumable: an interrupted run continues where it stopped)

# %%
if not Path(field_path).exists():
    fields.embed_field(dem, embedder, res_m=res_m, stride_m=stride_m, out=field_path, checkpoint=model,
                       progress=True)
field = fields.open_field(field_path)
crs = field.attrs["crs_wkt"]
print(f"{field_path}: {field.sizes['y']} x {field.sizes['x']} places, {field.attrs['valid_places']:,} with a "
      f"vector, CRS {field.attrs['grid']['crs_wkt'][:40]}...")

# %% [markdown]
# ## Search: cosine similarity of every place to the mean query embedding, then the best places apart

# %%
lon, lat = np.asarray(places, dtype=float).T
query = search.vectors_at(field, lon, lat)             # a place outside the field is an error naming it
similarity = search.similarity_field(field, query).compute()
footprint = 17 * res_m
sep = footprint if min_separation_m is None else float(min_separation_m)
masked = similarity.copy(data=similarity.values.copy())
qx, qy = lonlat_to_xy(crs, lon, lat)
for x0, y0 in zip(np.atleast_1d(qx), np.atleast_1d(qy)):   # not the query's own neighbourhood
    near = (similarity["y"].values[:, None] - y0) ** 2 + (similarity["x"].values[None, :] - x0) ** 2 < footprint ** 2
    masked.values[near] = np.nan
matches = search.top_k(masked, k, sep, crs=crs)
matches[["rank", "lon", "lat", "similarity"]].round(5)

# %% [markdown]
# ## The map: hillshade, the field's principal components as colours, similarity, queries and matches
# Click anywhere to get its lon/lat (paste it into `places` and re-run the search cell).

# %%
import folium

hill = maps.hillshade_raster(fields.dem_on_field(dem, field, max_px=700))
web = maps.field_map(hill, crs, pca=fields.pca_rgb(field, max_px=500), similarity=similarity,
                     queries=(lon, lat), matches=matches, title=embedder.name)
web.add_child(folium.LatLngPopup())
map_path = maps.save_map(web, out / "explore_map.html")
print(f"map: {map_path} (opens offline)")
display(web)

# %% [markdown]
# ## The query's patches and the matches' side by side
# Heights of each 17 x 17 patch (the model sees them normalised per patch: shape, not altitude, is compared).

# %%
query_patches = fields.dem_patches(dem, lon, lat, res_m, crs)
match_patches = fields.dem_patches(dem, matches["lon"].to_numpy(), matches["lat"].to_numpy(), res_m, crs)
ncol = max(len(query_patches), min(6, len(match_patches)))
nrow = 1 + int(np.ceil(len(match_patches) / ncol))
fig, axes = plt.subplots(nrow, ncol, figsize=(2.1 * ncol, 2.3 * nrow), squeeze=False)
for ax in axes.ravel():
    ax.axis("off")
for i, p in enumerate(query_patches):
    axes[0, i].imshow(p, cmap="terrain")
    axes[0, i].set_title(f"query {i + 1}\n{lon[i]:.4f}, {lat[i]:.4f}", fontsize=8, color="#e0201b")
for j, (p, rec) in enumerate(zip(match_patches, matches.to_dict("records"))):
    ax = axes[1 + j // ncol, j % ncol]
    ax.imshow(p, cmap="terrain")
    ax.set_title(f"#{rec['rank']}  cos {rec['similarity']:.2f}\n{rec['lon']:.4f}, {rec['lat']:.4f}", fontsize=8)
fig.suptitle(f"{embedder.name}: {17 * res_m:g} m patches at {res_m:g} m/px", fontsize=10)
fig.tight_layout()
fig.savefig(out / "explore_patches.png", dpi=90)
plt.show()
