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
# # Terrain: the study's train and test regions
#
# The paper trains on lon 10-15, lat 45-50 and tests on lon 5-10, lat 45-50 (EU-DEM, 30 m). This stage
# builds one square window in each polygon, in a metric CRS (EPSG:3035 by default) at `res_m` m/px, from
# one of three sources (`topo2vec_lib.terrain.load_terrain`):
#
# - `synthetic` (default, no download): the deterministic synthetic world of `topo2vec_lib.synthetic`:
#   fractal alpine mountains, hills and plains, river valleys carved by flow routing, escarpments with
#   cliffs, a karst plateau with sinkholes. Same seed -> bit-identical terrain; train and test differ.
# - `geotiff`: any local GeoTIFF/VRT covering both windows, reprojected and resampled into the grid.
# - `copernicus`: Copernicus GLO-30 tiles, downloaded and cached under `data/raw/`.
#
# Outputs: `data/terrain/{train,test}.zarr`, a hillshade figure, relief plausibility statistics
# (elevation range, slope distribution, roughness vs scale) and `metrics/terrain.json`.

# %% tags=["parameters"]
params_path = None           # None: the project's params.yaml; parameters left at None come from its `data` section
source = None                # synthetic | geotiff | copernicus
crs = None                   # metric study CRS
res_m = None                 # native pixel size (m)
size_km = None               # side of each region's square window (km)
train_center = None          # lon, lat inside the train polygon
test_center = None           # lon, lat inside the test polygon
geotiff_path = None          # for source "geotiff": a local GeoTIFF/VRT
raw_dir = None               # download cache of real data (source "copernicus")
seed = None
out_dir = "data/terrain"
plots_dir = "plots"
metrics_path = "metrics/terrain.json"
output_root = None            # None: scratch/terrain/ unless run by the pipeline (notebooks/run.sh); "." writes the pipeline's outputs

# %%
from topo2vec_lib.checks import text
from topo2vec_lib.params import notebook_outputs
from topo2vec_lib.schema import notebook_section

# every value is checked (topo2vec_lib/schema.py), both windows included, before any work
notebook_section(globals(), "data", local={k: text(nonempty=True) for k in ("out_dir", "plots_dir", "metrics_path")})
notebook_outputs(globals(), "terrain", ["out_dir", "plots_dir", "metrics_path"])

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from topo2vec_lib.grid import PAPER_REGIONS, hillshade, slope_deg, xy_to_lonlat
from topo2vec_lib.storage import atomic_path, write_json
from topo2vec_lib.synthetic import relief_statistics
from topo2vec_lib.terrain import load_terrain, save_terrain

centers = {"train": train_center, "test": test_center}
terrains, seconds = {}, {}
for region, center in centers.items():        # both regions are loaded and checked before anything is written
    t0 = time.perf_counter()
    terrains[region] = load_terrain(source, region, center_lonlat=center, size_km=size_km, res_m=res_m, crs=crs,
                                    seed=seed, geotiff_path=geotiff_path or None, cache_dir=raw_dir)
    seconds[region] = time.perf_counter() - t0
stats = {region: relief_statistics(da) for region, da in terrains.items()}
for region, da in terrains.items():
    path = save_terrain(da, Path(out_dir) / f"{region}.zarr")
    print(f"{region}: {da.shape} px at {res_m} m, {float(da.min()):.0f}..{float(da.max()):.0f} m, "
          f"{seconds[region]:.1f} s -> {path}")

# %% [markdown]
# ## Hillshade of both regions
# Light from the north-west; colours are elevation. Ticks are lon/lat along the window's edges.

# %%
Path(plots_dir).mkdir(parents=True, exist_ok=True)
fig, axes = plt.subplots(1, 2, figsize=(14, 6.6))
for ax, (region, da) in zip(axes, terrains.items()):
    x, y = da.x.values, da.y.values
    extent = [x[0] - res_m / 2, x[-1] + res_m / 2, y[-1] - res_m / 2, y[0] + res_m / 2]
    ax.imshow(hillshade(da), cmap="gray", extent=extent, vmin=0, vmax=1)
    im = ax.imshow(da.values, cmap="terrain", alpha=0.45, extent=extent)
    xt = np.linspace(extent[0], extent[1], 4)
    yt = np.linspace(extent[2], extent[3], 4)
    lon_t, _ = xy_to_lonlat(crs, xt, np.full(4, extent[2]))
    _, lat_t = xy_to_lonlat(crs, np.full(4, extent[0]), yt)
    ax.set_xticks(xt, [f"{v:.2f}°E" for v in lon_t])
    ax.set_yticks(yt, [f"{v:.2f}°N" for v in lat_t])
    ax.set_title(f"{region} ({source}, {size_km} km, polygon {list(PAPER_REGIONS[region])})")
    fig.colorbar(im, ax=ax, shrink=0.7, label="elevation (m)")
fig.tight_layout()
with atomic_path(Path(plots_dir) / "terrain_hillshade.png") as tmp:
    fig.savefig(tmp, format="png", dpi=110)
plt.show()

# %% [markdown]
# ## Plausibility against real alpine DEMs
# Real 30 m DEMs of the Alps have a median slope of about 20-30 degrees in the mountains and below 3 degrees
# on plains, and the std of elevation differences grows with the lag as lag^H with a Hurst exponent H of
# about 0.6-0.9. "Mountains" are cells whose 1 km neighbourhood spans more than 500 m, "plains" less than 50 m.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
for region, s in stats.items():
    edges = np.asarray(s["slope_hist_edges_deg"])
    ax1.step(edges[:-1], s["slope_hist_fraction"], where="post", label=f"{region} (median {s['slope_median_deg']:.1f}°)")
    ax2.loglog(s["roughness_lag_m"], s["roughness_std_m"], "o-", label=f"{region} (H = {s['hurst']:.2f})")
lag = np.asarray(stats["train"]["roughness_lag_m"])
for h in (0.6, 0.9):
    ref = stats["train"]["roughness_std_m"][0] * (lag / lag[0]) ** h
    ax2.loglog(lag, ref, ":", color="gray")
    ax2.annotate(f"H={h}", (lag[-1], ref[-1]), color="gray")
ax1.set(xlabel="slope (degrees)", ylabel="fraction of cells", title="slope distribution")
ax2.set(xlabel="lag (m)", ylabel="std of elevation difference (m)", title="roughness vs scale")
ax1.legend()
ax2.legend()
fig.tight_layout()
with atomic_path(Path(plots_dir) / "terrain_relief.png") as tmp:
    fig.savefig(tmp, format="png", dpi=110)
plt.show()

for region, s in stats.items():
    print(f"{region}: elevation {s['elevation_min_m']:.0f}..{s['elevation_max_m']:.0f} m, median slope "
          f"{s['slope_median_deg']:.1f}° (mountains {s['slope_median_mountain_deg']}, plains "
          f"{s['slope_median_plain_deg']}), H = {s['hurst']:.2f}, slope > 45°: "
          f"{float((slope_deg(terrains[region]) > 45).mean()):.3%}")

# %%
keys = ("elevation_min_m", "elevation_max_m", "elevation_mean_m", "elevation_std_m", "slope_median_deg",
        "slope_median_mountain_deg", "slope_median_plain_deg", "mountain_fraction", "plain_fraction", "hurst",
        "nodata_fraction")
metrics = {"source": source, "crs": crs, "res_m": res_m, "size_km": size_km, "seed": seed}
for region, s in stats.items():
    metrics[region] = {"shape": s["shape"], "res_m": s["res_m"], "center_lonlat": list(centers[region]),
                       "seconds": round(seconds[region], 2), **{k: s[k] for k in keys}}
write_json(metrics_path, metrics)
metrics
