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
# The paper trains on lon 10-15, lat 45-50 and tests on lon 5-10, lat 45-50 (EU-DEM, 30 m). Regions are
# parameters (`data.regions`: a lon/lat box or a GeoJSON polygon per region, the window's centre and size), so
# the study runs on any place on Earth: the study CRS is given (EPSG:3035 by default) or `auto` (EPSG:3035 in
# Europe, else a local Lambert equal-area projection). This stage builds each region's window at `res_m` m/px
# from one of three sources, **tile by tile** into chunked zarr (`topo2vec_lib.terrain.build_terrain`; no
# process holds more than a tile, so the paper's whole 5 x 5 degree polygons fit in a few GB), on Dask
# (`dask.scheduler`: a local cluster by default, or an existing cluster's address):
#
# - `synthetic` (default, no download): the deterministic synthetic world of `topo2vec_lib.synthetic`, a
#   function of absolute position and the seed (tiles and overlapping windows agree): fractal alpine
#   mountains, hills and plains, river valleys carved by flow routing, escarpments with cliffs, karst plateaus
#   with sinkholes.
# - `geotiff`: any local GeoTIFF/VRT covering both windows, reprojected and resampled into the grid.
# - `copernicus`: Copernicus GLO-30 tiles, downloaded and cached under `data/raw/`.
#
# Outputs: `data/terrain/{train,test}.zarr`, a hillshade figure, relief plausibility statistics
# (elevation range, slope distribution, roughness vs scale; on the central 2048 x 2048 px of larger windows)
# and `metrics/terrain.json`.

# %% tags=["parameters"]
params_path = None           # None: the project's params.yaml; parameters left at None come from its `data` section
source = None                # synthetic | geotiff | copernicus
crs = None                   # metric study CRS, or auto
res_m = None                 # native pixel size (m)
regions = None               # {train: {box | polygon, center, size_km}, test: {...}}
tile_px = None               # tile side (px) of the terrain's construction
geotiff_path = None          # for source "geotiff": a local GeoTIFF/VRT
raw_dir = None               # download cache of real data (source "copernicus")
scheduler = None             # dask section (None: a local cluster of n_workers processes)
n_workers = None
scratch_dir = None
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
notebook_section(globals(), "dask")

# %%
import time
from contextlib import ExitStack
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from topo2vec_lib.grid import hillshade, slope_deg, xy_to_lonlat
from topo2vec_lib.regions import study_windows
from topo2vec_lib.storage import atomic_path, write_json
from topo2vec_lib.synthetic import relief_statistics
from topo2vec_lib.terrain import build_terrain, open_terrain
from topo2vec_lib.tiling import TileRunner

study_crs, specs, windows = study_windows(regions, crs, res_m)
print(f"study CRS: {study_crs}")
terrains, seconds, built = {}, {}, {}
# both regions are built into temporary stores, renamed only when both succeeded: a failure (a bad file, a 100%
# nodata window, a scheduler that does not answer) leaves the previous stores as they were
with TileRunner(scheduler or None, n_workers) as runner, ExitStack() as stack:
    tmp = {r: stack.enter_context(atomic_path(Path(out_dir) / f"{r}.zarr", is_dir=True)) for r in specs}
    for region, spec in specs.items():
        t0 = time.perf_counter()
        built[region] = build_terrain(tmp[region], source, region, windows[region], res_m=res_m, crs=study_crs,
                                      region_lonlat=spec.region_lonlat, seed=seed, geotiff_path=geotiff_path or None,
                                      cache_dir=raw_dir, tile_px=tile_px, runner=runner,
                                      scratch_dir=scratch_dir or None)
        seconds[region] = time.perf_counter() - t0
for region in specs:
    terrains[region] = open_terrain(Path(out_dir) / f"{region}.zarr", chunks={})
    b = built[region]
    print(f"{region}: {b['shape'][0]} x {b['shape'][1]} px at {res_m} m ({b['tiles']} tiles), {b['min']:.0f}.."
          f"{b['max']:.0f} m, {seconds[region]:.1f} s")


def central(da, n=2048):
    """The central n x n px of a (lazy) terrain, loaded: statistics of big windows on a full-resolution sample."""
    ny, nx = da.shape
    r0, c0 = max(0, (ny - n) // 2), max(0, (nx - n) // 2)
    return da.isel(y=slice(r0, r0 + n), x=slice(c0, c0 + n)).load()


stats = {region: relief_statistics(central(da)) for region, da in terrains.items()}

# %% [markdown]
# ## Hillshade of both regions
# Light from the north-west; colours are elevation (block means of the tiles' overviews for big windows). Ticks
# are lon/lat along the window's edges.

# %%
Path(plots_dir).mkdir(parents=True, exist_ok=True)
fig, axes = plt.subplots(1, 2, figsize=(14, 6.6))
for ax, (region, da) in zip(axes, terrains.items()):
    b = built[region]
    view, f = b["overview"], b["overview_f"]
    x, y = da.x.values, da.y.values
    extent = [x[0] - res_m / 2, x[-1] + res_m / 2, y[-1] - res_m / 2, y[0] + res_m / 2]
    ax.imshow(hillshade(view, res_m=res_m * f), cmap="gray", extent=extent, vmin=0, vmax=1)
    im = ax.imshow(view, cmap="terrain", alpha=0.45, extent=extent)
    xt = np.linspace(extent[0], extent[1], 4)
    yt = np.linspace(extent[2], extent[3], 4)
    lon_t, _ = xy_to_lonlat(study_crs, xt, np.full(4, extent[2]))
    _, lat_t = xy_to_lonlat(study_crs, np.full(4, extent[0]), yt)
    ax.set_xticks(xt, [f"{v:.2f}°" for v in lon_t])
    ax.set_yticks(yt, [f"{v:.2f}°" for v in lat_t])
    size = specs[region].size_km
    ax.set_title(f"{region} ({source}, {size[0]:g} x {size[1]:g} km, box {list(specs[region].box)})")
    fig.colorbar(im, ax=ax, shrink=0.7, label="elevation (m)")
fig.tight_layout()
with atomic_path(Path(plots_dir) / "terrain_hillshade.png") as tmp_png:
    fig.savefig(tmp_png, format="png", dpi=110)
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
with atomic_path(Path(plots_dir) / "terrain_relief.png") as tmp_png:
    fig.savefig(tmp_png, format="png", dpi=110)
plt.show()

for region, s in stats.items():
    print(f"{region}: elevation {s['elevation_min_m']:.0f}..{s['elevation_max_m']:.0f} m, median slope "
          f"{s['slope_median_deg']:.1f}° (mountains {s['slope_median_mountain_deg']}, plains "
          f"{s['slope_median_plain_deg']}), H = {s['hurst']:.2f}, slope > 45°: "
          f"{float((slope_deg(central(terrains[region])) > 45).mean()):.3%} (central 2048 px at most)")

# %%
keys = ("elevation_min_m", "elevation_max_m", "elevation_mean_m", "elevation_std_m", "slope_median_deg",
        "slope_median_mountain_deg", "slope_median_plain_deg", "mountain_fraction", "plain_fraction", "hurst",
        "nodata_fraction")
metrics = {"source": source, "crs": crs, "study_crs": study_crs, "res_m": res_m, "tile_px": tile_px, "seed": seed}
for region, s in stats.items():
    b = built[region]
    metrics[region] = {"shape": b["shape"], "res_m": s["res_m"], "box": list(specs[region].box),
                       "center_lonlat": list(specs[region].center), "size_km": list(specs[region].size_km),
                       "seconds": round(seconds[region], 2), "tiles": b["tiles"], "stats_shape": s["shape"],
                       **{k: s[k] for k in keys},
                       # over the whole window (the other statistics: its central 2048 x 2048 px at most)
                       "elevation_min_m": b["min"], "elevation_max_m": b["max"], "elevation_mean_m": b["mean"],
                       "elevation_std_m": b["std"], "nodata_fraction": b["nodata_fraction"]}
write_json(metrics_path, metrics)
metrics
