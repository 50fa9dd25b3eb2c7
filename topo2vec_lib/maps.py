"""Multi-scale classification maps (paper Exp. 3, Fig. 5), terrain retrieval (Exp. 4, Fig. 6) and web maps.

* :func:`train_class_probes` fits one-vs-random probes (StandardScaler + RBF SVC, as Exp. 1) per class on
  train-region labels at one scale; :func:`classify_region` applies them to a region embedding
  (:func:`topo2vec_lib.regional.embed_region`) block by block; :func:`label_hit_rates` scores the map.
* :func:`retrieve` / :func:`retrieval_precision`: the mean of n query embeddings, its k nearest places.
* Web maps are folium maps whose base layer is the terrain's hillshade as an image overlay (reprojected
  from the terrain CRS to Web Mercator, so it lines up with Leaflet), class layers as PNG overlays (never one
  marker per cell) and a capped number of points. :func:`save_map` writes HTML that works offline: Leaflet's
  JS/CSS are inlined from a local copy (the ``django-js-lib-leaflet`` wheel, or Debian's ``libjs-leaflet``)
  and folium's unused CDN assets (jQuery, Bootstrap, awesome-markers) are dropped.
"""
from __future__ import annotations

import base64
import html as html_lib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from topo2vec_lib.grid import hillshade, lonlat_box_to_xy, lonlat_to_xy, xy_to_lonlat
from topo2vec_lib.regional import embed_xy, grid_xy
from topo2vec_lib.storage import atomic_path

# paper Fig. 5: peaks blue, saddles green, cliffs red, rivers yellow
CLASS_COLOURS = {"peak": "#1f4fe0", "saddle": "#17a617", "cliff": "#e0201b", "river": "#f2d600",
                 "aerialway_station": "#9b30d9", "alpine_hut": "#e07b00", "waterfall": "#00b7c7",
                 "sinkhole": "#8c564b", "random": "#7f7f7f"}
WEB_CRS = "EPSG:3857"


def class_colour(name: str) -> str:
    """Hex colour of a class (Fig. 5 colours for the four basic classes, grey for unknown names)."""
    return CLASS_COLOURS.get(name, "#7f7f7f")


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


# ------------------------------------------------------------------------------------------------ probes
def train_class_probes(embedder, sampler, labels: pd.DataFrame, classes: Sequence[str], res_m: float, *,
                       n_per_class: int = 500, seed: int = 0, C_grid=(0.1, 1.0, 10.0)) -> dict:
    """One-vs-random probe per class at ``res_m`` m/px on the sampler's region (Exp. 1 protocol).

    Places come from :func:`topo2vec_lib.evaluation.probe_dataset` (``n_per_class/2`` labelled places of the
    class, as many random places kept away from them), capped by the usable labels. The probe is
    StandardScaler + RBF SVC with ``C`` chosen by 3-fold CV on the training set. Returns
    ``{class: fitted sklearn estimator or None}`` (``decision_function > 0`` = class); None for a class with
    fewer than 10 usable labels (its map layer is then empty and its score NaN).
    """
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from topo2vec_lib.evaluation import NotEnoughPlacesError, coarsest_res_m, probe_dataset

    region = sampler.region
    rng = np.random.default_rng(seed)
    fit_m = coarsest_res_m([embedder], res_m)     # multi-scale embedders need room for their coarsest patch
    probes: dict = {}
    for cls in classes:
        table = labels[(labels["class"] == cls) & (labels["region"] == region)]
        usable = int(sampler.valid_places(table["lon"].to_numpy(float), table["lat"].to_numpy(float), fit_m).sum()) \
            if len(table) else 0
        n = min(int(n_per_class), 2 * usable) // 2 * 2
        if n < 20:
            probes[cls] = None
            continue
        try:
            lon, lat, y = probe_dataset(labels, cls, region, n, sampler, rng, res_m=res_m, fit_res_m=fit_m)
        except NotEnoughPlacesError:
            probes[cls] = None
            continue
        x, y_m = sampler.to_xy(lon, lat)
        X = embed_xy(embedder, sampler, x, y_m, res_m)
        pipe = Pipeline([("scale", StandardScaler()), ("svc", SVC(kernel="rbf", gamma="scale"))])
        folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=int(seed))
        model = GridSearchCV(pipe, {"svc__C": [float(c) for c in C_grid]}, cv=folds, n_jobs=1).fit(X, y)
        probes[cls] = model.best_estimator_
    return probes


def classify_region(embedding: xr.DataArray, probes: Mapping) -> xr.DataArray:
    """Probe decision scores ``(class, y, x)`` float32 of a region embedding ``(y, x, feature)``.

    Positive = the probe says the class; NaN where the place has no embedding or the probe is None.
    Lazy (Dask, block by block) when the embedding is.
    """
    names = list(probes)

    def score(block: np.ndarray) -> np.ndarray:
        flat = block.reshape(-1, block.shape[-1])
        out = np.full((flat.shape[0], len(names)), np.nan, dtype=np.float32)
        ok = np.isfinite(flat).all(axis=1)
        if ok.any():
            for j, name in enumerate(names):
                if probes[name] is not None:
                    out[ok, j] = probes[name].decision_function(flat[ok].astype(np.float64))
        return out.reshape(block.shape[:-1] + (len(names),))

    scores = xr.apply_ufunc(score, embedding, input_core_dims=[["feature"]], output_core_dims=[["class"]],
                            dask="parallelized", output_dtypes=[np.float32],
                            dask_gufunc_kwargs={"output_sizes": {"class": len(names)}})
    return scores.assign_coords({"class": names}).transpose("class", "y", "x").rename("score")


def dominant_class(scores: xr.DataArray) -> np.ndarray:
    """``(y, x)`` int: index into ``scores["class"]`` of the highest positive score, -1 where none is positive."""
    s = np.asarray(scores.values, dtype=np.float32)
    filled = np.where(np.isfinite(s), s, -np.inf)
    best = filled.argmax(axis=0)
    return np.where(filled.max(axis=0) > 0, best, -1)


def _grid_index(scores: xr.DataArray, crs, lon, lat) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column of the grid cell holding each lon/lat place and a mask of places inside the grid."""
    x, y = lonlat_to_xy(crs, np.asarray(lon, float), np.asarray(lat, float))
    xs, ys = np.asarray(scores["x"].values), np.asarray(scores["y"].values)
    stride = float(xs[1] - xs[0]) if xs.size > 1 else float(ys[0] - ys[1])
    col = np.rint((x - xs[0]) / stride).astype(int)
    row = np.rint((ys[0] - y) / stride).astype(int)
    inside = (col >= 0) & (col < xs.size) & (row >= 0) & (row < ys.size)
    return np.where(inside, row, 0), np.where(inside, col, 0), inside


def label_in_box(labels: pd.DataFrame, crs, bounds_xy) -> np.ndarray:
    """``(N,)`` bool: label points (lon/lat) inside ``bounds_xy = (left, bottom, right, top)`` metres of ``crs``."""
    x, y = lonlat_to_xy(crs, labels["lon"].to_numpy(float), labels["lat"].to_numpy(float))
    left, bottom, right, top = bounds_xy
    return (x >= left) & (x <= right) & (y >= bottom) & (y <= top)


def densest_box(labels: pd.DataFrame, crs, bounds_xy, side_m: float, classes: Sequence[str]) -> tuple:
    """The ``side_m`` square inside ``bounds_xy`` (metres of ``crs``) holding the most label points of the
    rarest of ``classes`` (ties: the most points in all), searched on centres ``side_m / 4`` apart.
    Returns ``(left, bottom, right, top)``; a map of it shows every class."""
    left, bottom, right, top = bounds_xy
    side_m = min(float(side_m), right - left, top - bottom)
    half = side_m / 2
    x, y = lonlat_to_xy(crs, labels["lon"].to_numpy(float), labels["lat"].to_numpy(float))
    names = labels["class"].to_numpy()
    cx = np.arange(left + half, right - half + 1e-6, side_m / 4)
    cy = np.arange(bottom + half, top - half + 1e-6, side_m / 4)
    best, best_key = (left, bottom, left + side_m, bottom + side_m), (-1, -1)
    for a in cx:
        inx = np.abs(x - a) <= half
        for b in cy:
            inside = inx & (np.abs(y - b) <= half)
            counts = [int((names[inside] == c).sum()) for c in classes]
            key = (min(counts) if counts else 0, sum(counts))
            if key > best_key:
                best, best_key = (a - half, b - half, a + half, b + half), key
    return tuple(float(v) for v in best)


def nearest_label(lon, lat, labels: pd.DataFrame, crs, radius_m: float) -> list:
    """For each place (lon/lat ``(N,)``): the class of the nearest label point within ``radius_m`` metres
    (distance in ``crs``), or None."""
    from scipy.spatial import cKDTree

    lon, lat = np.atleast_1d(np.asarray(lon, float)), np.atleast_1d(np.asarray(lat, float))
    if len(labels) == 0:
        return [None] * lon.size
    lx, ly = lonlat_to_xy(crs, labels["lon"].to_numpy(float), labels["lat"].to_numpy(float))
    x, y = lonlat_to_xy(crs, lon, lat)
    dist, idx = cKDTree(np.c_[lx, ly]).query(np.c_[x, y], k=1)
    names = labels["class"].to_numpy()
    return [str(names[i]) if d <= radius_m else None for d, i in zip(dist, idx)]


def label_hit_rates(scores: xr.DataArray, labels: pd.DataFrame, crs) -> dict:
    """Per class: the fraction of its label points (inside the grid, on a valid cell) whose grid cell the probe
    marks as that class (``hit_rate``), beside the fraction of all valid cells so marked (``cell_rate``, the
    rate a map painting at random would get) and the number of label points used (``n_labels``)."""
    out = {}
    for name in scores["class"].values.tolist():
        s = np.asarray(scores.sel({"class": name}).values)
        valid = np.isfinite(s)
        table = labels[labels["class"] == name]
        row, col, inside = _grid_index(scores, crs, table["lon"].to_numpy(float), table["lat"].to_numpy(float))
        use = inside & valid[row, col]
        hits = s[row[use], col[use]] > 0
        out[name] = {"n_labels": int(use.sum()),
                     "hit_rate": float(hits.mean()) if use.any() else None,
                     "cell_rate": float((s[valid] > 0).mean()) if valid.any() else None}
    return out


# ------------------------------------------------------------------------------------------------ rasters
def upsample_terrain(terrain: xr.DataArray, res_m: float, bounds_xy=None) -> xr.DataArray:
    """The terrain bilinearly interpolated to a finer ``res_m`` m/px grid over the same extent (or ``bounds_xy``,
    clipped to it), so the sampler can give patches finer than the DEM (e.g. 10 m/px on a 30 m DEM, paper Fig. 5).

    Interpolation adds no information: such patches are smooth versions of the native ones. The result keeps the
    CRS and attrs, with ``res_m`` updated and ``upsampled_from_m`` set.
    """
    import rioxarray  # noqa: F401

    native = float(terrain.attrs.get("res_m", float(terrain.x[1] - terrain.x[0])))
    res_m = float(res_m)
    if not (np.isfinite(res_m) and 0 < res_m < native):
        raise ValueError(f"res_m = {res_m!r} must be a positive pixel size finer than the terrain's {native} m/px")
    x, y = terrain["x"].values, terrain["y"].values
    left, right, top, bottom = x[0] - native / 2, x[-1] + native / 2, y[0] + native / 2, y[-1] - native / 2
    if bounds_xy is not None:
        left, bottom = max(left, bounds_xy[0]), max(bottom, bounds_xy[1])
        right, top = min(right, bounds_xy[2]), min(top, bounds_xy[3])
        if not (left < right and bottom < top):
            raise ValueError(f"bounds_xy {bounds_xy} do not overlap the terrain")
    nx, ny = int(np.floor((right - left) / res_m)), int(np.floor((top - bottom) / res_m))
    new_x = left + res_m * (np.arange(nx) + 0.5)
    new_y = top - res_m * (np.arange(ny) + 0.5)
    fine = terrain.interp(x=new_x, y=new_y, method="linear", kwargs={"fill_value": None}).astype(np.float32)
    fine.attrs = dict(terrain.attrs, res_m=res_m, upsampled_from_m=native)
    return fine.rio.write_crs(terrain.rio.crs).rio.write_transform()


def to_web_mercator(da: xr.DataArray, crs, resampling: str = "bilinear") -> tuple[np.ndarray, list]:
    """Reproject a ``(y, x)`` raster in ``crs`` (pixel-centre coords in metres) to Web Mercator.

    Returns the array ``(rows, cols)`` (NaN outside) and Leaflet bounds ``[[lat_s, lon_w], [lat_n, lon_e]]``.
    Web Mercator is separable in lon and lat, so stretching the image over these bounds is exact in Leaflet.
    """
    import rioxarray  # noqa: F401
    from rasterio.enums import Resampling

    src = da.astype(np.float32).rio.write_crs(crs).rio.write_nodata(np.nan)
    web = src.rio.reproject(WEB_CRS, resampling=getattr(Resampling, resampling), nodata=np.nan)
    left, bottom, right, top = web.rio.bounds()
    lon, lat = xy_to_lonlat(WEB_CRS, np.array([left, right]), np.array([bottom, top]))
    return np.asarray(web.values, dtype=np.float32), [[float(lat[0]), float(lon[0])], [float(lat[1]), float(lon[1])]]


def hillshade_raster(terrain: xr.DataArray, bounds_xy=None, margin_m: float = 0.0) -> xr.DataArray:
    """Hillshade ``(y, x)`` in [0, 1] of the terrain (clipped to ``bounds_xy`` plus ``margin_m``), same coords."""
    if bounds_xy is not None:
        left, bottom, right, top = bounds_xy
        terrain = terrain.sel(x=slice(left - margin_m, right + margin_m), y=slice(top + margin_m, bottom - margin_m))
        if terrain.size == 0:
            raise ValueError(f"bounds_xy {bounds_xy} do not overlap the terrain")
    shade = hillshade(terrain)
    return xr.DataArray(np.asarray(shade, dtype=np.float32), dims=("y", "x"),
                        coords={"y": terrain["y"].values, "x": terrain["x"].values}, name="hillshade")


def grey_rgba(values: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` uint8 grey image of values in [0, 1]; NaN transparent."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0, 1)
    grey = (40 + 215 * v).astype(np.uint8)
    return np.dstack([grey, grey, grey, np.where(np.isfinite(values), 255, 0).astype(np.uint8)])


def mask_rgba(mask: np.ndarray, colour: str, alpha: int = 200) -> np.ndarray:
    """``(H, W, 4)`` uint8: ``colour`` where ``mask`` (bool or 0/1 float, NaN = no), transparent elsewhere."""
    m = np.nan_to_num(np.asarray(mask, dtype=np.float32), nan=0.0) > 0.5
    r, g, b = _rgb(colour)
    img = np.zeros(m.shape + (4,), dtype=np.uint8)
    img[m] = (r, g, b, alpha)
    return img


# ------------------------------------------------------------------------------------------------ folium
def base_map(hillshade: xr.DataArray, crs, name: str = "hillshade (terrain)", max_px: int = 700):
    """A folium map without web tiles whose base is the hillshade as an image overlay; fitted to it.

    A hillshade wider than ``max_px`` pixels is block-averaged first, so the HTML stays small (< 1 MB).
    """
    import folium

    factor = int(np.ceil(max(hillshade.shape) / max_px))
    if factor > 1:
        hillshade = hillshade.coarsen(y=factor, x=factor, boundary="trim").mean()
    shade, bounds = to_web_mercator(hillshade, crs, "bilinear")
    m = folium.Map(tiles=None, control_scale=True, prefer_canvas=True)
    folium.raster_layers.ImageOverlay(grey_rgba(shade), bounds=bounds, name=name, interactive=False,
                                      zindex=1).add_to(m)
    m.fit_bounds(bounds)
    return m


def add_mask_layer(m, mask: xr.DataArray, crs, colour: str, name: str, show: bool = True, opacity: float = 0.75):
    """Add a toggleable PNG overlay painting ``colour`` where the ``(y, x)`` mask is true."""
    import folium

    web, bounds = to_web_mercator(mask.astype(np.float32), crs, "nearest")
    folium.raster_layers.ImageOverlay(mask_rgba(web, colour), bounds=bounds, name=name, opacity=opacity,
                                      interactive=False, show=show, zindex=2).add_to(m)


def add_points(m, lon, lat, names, name: str, *, radius: int = 4, tooltips=None, show: bool = True,
               fill_opacity: float = 0.9):
    """A FeatureGroup ``name`` of CircleMarkers coloured by class name (``names`` (N,)); returns the group."""
    import folium

    group = folium.FeatureGroup(name=name, show=show)
    for i, (lo, la, cls) in enumerate(zip(np.asarray(lon, float), np.asarray(lat, float), names)):
        tip = tooltips[i] if tooltips is not None else str(cls)
        folium.CircleMarker([float(la), float(lo)], radius=radius, color="#000000", weight=1,
                            fill=True, fill_color=class_colour(str(cls)), fill_opacity=fill_opacity,
                            tooltip=tip).add_to(group)
    group.add_to(m)
    return group


def add_legend(m, entries: Mapping[str, str], title: str = "classes"):
    """A fixed legend box (bottom right, above the attribution) with one coloured square per ``{label: hex colour}``."""
    import branca.element as be

    rows = "".join(f'<div><span style="display:inline-block;width:12px;height:12px;margin-right:6px;'
                   f'background:{c};border:1px solid #333"></span>{html_lib.escape(str(k))}</div>'
                   for k, c in entries.items())
    box = (f'<div class="topo2vec-legend" style="position:fixed;bottom:28px;right:12px;z-index:9999;'
           f'background:rgba(255,255,255,0.9);padding:6px 8px;border:1px solid #888;border-radius:4px;'
           f'font:12px sans-serif"><b>{html_lib.escape(title)}</b>{rows}</div>')
    m.get_root().html.add_child(be.Element(box))


def cap_points(labels: pd.DataFrame, max_points: int, seed: int = 0) -> pd.DataFrame:
    """At most ``max_points`` rows, split evenly over classes, drawn with ``seed``."""
    if len(labels) <= max_points:
        return labels
    rng = np.random.default_rng(seed)
    classes = list(pd.unique(labels["class"]))
    per = max(1, max_points // max(1, len(classes)))
    parts = []
    for cls in classes:
        part = labels[labels["class"] == cls]
        if len(part) > per:
            part = part.iloc[np.sort(rng.choice(len(part), per, replace=False))]
        parts.append(part)
    return pd.concat(parts).reset_index(drop=True)


def multiscale_map(hillshade: xr.DataArray, scores_by_scale: Mapping[float, xr.DataArray], crs,
                   labels: pd.DataFrame | None = None, max_points: int = 400, seed: int = 0):
    """Folium map of Exp. 3: hillshade base, one toggleable layer per scale and class, legend, label points."""
    import folium

    m = base_map(hillshade, crs)
    classes: list[str] = []
    first = True
    for res_m, scores in scores_by_scale.items():
        for name in scores["class"].values.tolist():
            if name not in classes:
                classes.append(name)
            mask = (scores.sel({"class": name}) > 0).where(scores.sel({"class": name}).notnull())
            add_mask_layer(m, mask, crs, class_colour(name), f"{name} @ {res_m:g} m/px", show=first)
        first = False
    if labels is not None and len(labels):
        pts = cap_points(labels, max_points, seed)
        add_points(m, pts["lon"], pts["lat"], pts["class"].tolist(), f"label points ({len(pts)} of {len(labels)})",
                   radius=3, show=False)
    add_legend(m, {c: class_colour(c) for c in classes}, "predicted class")
    folium.LayerControl(collapsed=False).add_to(m)
    return m


def retrieval_map(hillshade: xr.DataArray, crs, query_lonlat, match_lonlat, match_labels=None):
    """Folium map of Exp. 4: hillshade base, the query places (red) and their matches (blue, ranked)."""
    import folium

    m = base_map(hillshade, crs)
    qlon, qlat = (np.asarray(v, float) for v in query_lonlat)
    mlon, mlat = (np.asarray(v, float) for v in match_lonlat)
    group = folium.FeatureGroup(name=f"queries ({qlon.size})")
    for i, (lo, la) in enumerate(zip(qlon, qlat)):
        folium.CircleMarker([la, lo], radius=7, color="#000", weight=2, fill=True, fill_color="#e0201b",
                            fill_opacity=1.0, tooltip=f"query {i + 1}").add_to(group)
    group.add_to(m)
    group = folium.FeatureGroup(name=f"matches ({mlon.size})")
    for i, (lo, la) in enumerate(zip(mlon, mlat)):
        tip = f"match {i + 1}" + (f" ({match_labels[i]})" if match_labels is not None else "")
        folium.CircleMarker([la, lo], radius=5, color="#000", weight=1, fill=True, fill_color="#1f4fe0",
                            fill_opacity=0.9, tooltip=tip).add_to(group)
    group.add_to(m)
    add_legend(m, {"query place": "#e0201b", "retrieved place": "#1f4fe0"}, "retrieval")
    folium.LayerControl(collapsed=False).add_to(m)
    return m


def rgb_rgba(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` uint8 image of a ``(3, H, W)`` array of colours in [0, 1]; NaN transparent."""
    ok = np.isfinite(rgb).all(axis=0)
    img = np.zeros(rgb.shape[1:] + (4,), dtype=np.uint8)
    img[..., :3] = (np.clip(np.nan_to_num(np.moveaxis(rgb, 0, -1), nan=0.0), 0, 1) * 255).astype(np.uint8)
    img[..., 3] = np.where(ok, 255, 0)
    return img


def colormap_rgba(values: np.ndarray, vmin: float, vmax: float, cmap: str = "magma") -> np.ndarray:
    """``(H, W, 4)`` uint8 image of values through a matplotlib colour map over [vmin, vmax]; NaN transparent."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float64)
    t = np.clip((np.nan_to_num(v, nan=vmin) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    img = (colormaps[cmap](t) * 255).astype(np.uint8)
    img[..., 3] = np.where(np.isfinite(v), 255, 0)
    return img


def add_rgb_layer(m, rgb: xr.DataArray, crs, name: str, show: bool = True, opacity: float = 0.85) -> list:
    """Add a ``(band=3, y, x)`` colour raster in [0, 1] (NaN transparent) as a toggleable overlay; returns its
    Leaflet bounds."""
    import folium

    bands = []
    bounds: list = []
    for b in range(3):
        web, bounds = to_web_mercator(rgb.isel(band=b), crs, "nearest")
        bands.append(web)
    folium.raster_layers.ImageOverlay(rgb_rgba(np.stack(bands)), bounds=bounds, name=name, opacity=opacity,
                                      interactive=False, show=show, zindex=2).add_to(m)
    return bounds


def field_map(hillshade: xr.DataArray | None, crs, *, pca: xr.DataArray | None = None,
              similarity: xr.DataArray | None = None, queries=None, matches: pd.DataFrame | None = None,
              title: str = "embedding field"):
    """Folium map of an embedding field (``topo2vec map``): the hillshade base, a PCA-to-RGB layer of the field
    (:func:`topo2vec_lib.fields.pca_rgb`), the similarity layer of a search (cosine, magma colours from its 2nd
    percentile to 1) and the query places (red) and matches (blue, tooltips with rank and similarity)."""
    import folium

    if hillshade is not None:
        m = base_map(hillshade, crs)
    else:
        m = folium.Map(tiles=None, control_scale=True, prefer_canvas=True)
    bounds = None
    if pca is not None:
        bounds = add_rgb_layer(m, pca, crs, f"{title}: first 3 principal components as RGB",
                               show=similarity is None)
    legend = {}
    if similarity is not None:
        web, bounds = to_web_mercator(similarity, crs, "nearest")
        finite = web[np.isfinite(web)]
        lo = float(np.percentile(finite, 2)) if finite.size else -1.0
        folium.raster_layers.ImageOverlay(colormap_rgba(web, lo, 1.0), bounds=bounds, interactive=False,
                                          name=f"similarity to the query (cosine {lo:.2f} .. 1: dark .. bright)",
                                          opacity=0.8, zindex=3).add_to(m)
    if queries is not None:
        qlon, qlat = (np.asarray(v, float) for v in queries)
        group = folium.FeatureGroup(name=f"query places ({qlon.size})")
        for i, (lo_, la) in enumerate(zip(qlon, qlat)):
            folium.CircleMarker([la, lo_], radius=7, color="#000", weight=2, fill=True, fill_color="#e0201b",
                                fill_opacity=1.0, tooltip=f"query {i + 1}: {lo_:.5f}, {la:.5f}").add_to(group)
        group.add_to(m)
        legend["query place"] = "#e0201b"
    if matches is not None and len(matches):
        group = folium.FeatureGroup(name=f"matches ({len(matches)})")
        for rec in matches.to_dict("records"):
            tip = f"match {rec.get('rank', '')}: {rec['lon']:.5f}, {rec['lat']:.5f}"
            if rec.get("similarity") is not None:
                tip += f", similarity {float(rec['similarity']):.3f}"
            folium.CircleMarker([float(rec["lat"]), float(rec["lon"])], radius=5, color="#000", weight=1, fill=True,
                                fill_color="#1f4fe0", fill_opacity=0.9, tooltip=tip).add_to(group)
        group.add_to(m)
        legend["match"] = "#1f4fe0"
    if legend:
        add_legend(m, legend, "search")
    if hillshade is None and bounds is not None:
        m.fit_bounds(bounds)
    folium.LayerControl(collapsed=False).add_to(m)
    return m


# ------------------------------------------------------------------------------------------------ offline HTML
# folium's default assets that our maps do not use (markers with icons, bootstrap popups)
_UNUSED_ASSETS = ("jquery", "bootstrap", "awesome-markers", "awesome.markers", "awesome.rotate", "fontawesome",
                  "glyphicons")


def leaflet_dir() -> Path:
    """Folder holding ``leaflet.js``, ``leaflet.css`` and ``images/`` (offline copy of Leaflet).

    Looked up in ``$TOPO2VEC_LEAFLET_DIR``, the ``js_lib_leaflet`` package (pip ``django-js-lib-leaflet``) and
    Debian's ``libjs-leaflet`` (/usr/share/javascript/leaflet). FileNotFoundError naming them otherwise.
    """
    candidates = []
    if os.environ.get("TOPO2VEC_LEAFLET_DIR"):
        candidates.append(Path(os.environ["TOPO2VEC_LEAFLET_DIR"]))
    try:
        import importlib.resources as ir

        candidates.append(Path(str(ir.files("js_lib_leaflet"))) / "static" / "js_lib_leaflet")
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    candidates.append(Path("/usr/share/javascript/leaflet"))
    for c in candidates:
        if (c / "leaflet.js").is_file() and (c / "leaflet.css").is_file():
            return c
    raise FileNotFoundError("no local copy of Leaflet (leaflet.js + leaflet.css) found in "
                            f"{[str(c) for c in candidates]}; pip install django-js-lib-leaflet, apt-get install "
                            "libjs-leaflet, or set TOPO2VEC_LEAFLET_DIR")


def _inline_css(css: str, folder: Path) -> str:
    def repl(match: re.Match) -> str:
        ref = match.group(1).strip("'\"")
        f = folder / ref
        if ref.startswith(("data:", "http:", "https:")) or not f.is_file():
            return match.group(0)
        mime = {".png": "image/png", ".svg": "image/svg+xml", ".gif": "image/gif"}.get(f.suffix,
                                                                                      "application/octet-stream")
        return f"url(data:{mime};base64,{base64.b64encode(f.read_bytes()).decode()})"

    return re.sub(r"url\(([^)]+)\)", repl, css)


def offline_html(html: str) -> str:
    """Make folium HTML work without internet: inline Leaflet's JS and CSS (with its images as data URIs), drop
    folium's unused CDN assets. ValueError naming any other external script or stylesheet left."""
    folder = leaflet_dir()
    js = (folder / "leaflet.js").read_text(encoding="utf-8").replace("</script", "<\\/script")
    css = _inline_css((folder / "leaflet.css").read_text(encoding="utf-8"), folder)
    unknown = []

    def script(match: re.Match) -> str:
        src = match.group(1)
        if re.search(r"/leaflet(@[\d.]+)?/dist/leaflet(-src)?\.js$", src) or src.endswith("/leaflet.js"):
            return f"<script>/* Leaflet (BSD-2-Clause), inlined for offline use */\n{js}\n</script>"
        if any(a in src.lower() for a in _UNUSED_ASSETS):
            return ""
        unknown.append(src)
        return match.group(0)

    def link(match: re.Match) -> str:
        href = match.group(1)
        if href.endswith("/leaflet.css"):
            return f"<style>/* Leaflet CSS, inlined */\n{css}\n</style>"
        if any(a in href.lower() for a in _UNUSED_ASSETS):
            return ""
        unknown.append(href)
        return match.group(0)

    html = re.sub(r'<script src="(https?://[^"]+)"></script>', script, html)
    html = re.sub(r'<link rel="stylesheet" href="(https?://[^"]+)"\s*/?>', link, html)
    if unknown:
        raise ValueError(f"external assets that would not load offline: {unknown}; inline or drop them")
    return html


def save_map(m, path: str | os.PathLike) -> Path:
    """Render a folium map to ``path`` as self-contained HTML that works offline (atomic write)."""
    html = offline_html(m.get_root().render())
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return Path(path)


# ------------------------------------------------------------------------------------------------ static figures
def plot_multiscale(hillshade: xr.DataArray, scores_by_scale: Mapping[float, xr.DataArray], path,
                    title: str = "topo2vec-4 multi-scale classification"):
    """Fig. 5 style PNG: (a) hillshade, then one panel per scale with the dominant predicted class painted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = 1 + len(scores_by_scale)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4.4), squeeze=False)
    axes = axes[0]
    ext = _extent_km(hillshade)
    shade = np.asarray(hillshade.values)
    axes[0].imshow(shade, cmap="gray", extent=ext, vmin=0, vmax=1)
    axes[0].set_title("(a) terrain (hillshade)")
    classes: list[str] = []
    for i, (res_m, scores) in enumerate(scores_by_scale.items(), start=1):
        names = scores["class"].values.tolist()
        classes += [c for c in names if c not in classes]
        dom = dominant_class(scores)
        img = np.zeros(dom.shape + (4,), dtype=np.float32)
        for j, name in enumerate(names):
            img[dom == j] = [*(np.array(_rgb(class_colour(name))) / 255.0), 0.75]
        axes[i].imshow(shade, cmap="gray", extent=ext, vmin=0, vmax=1)
        axes[i].imshow(img, extent=_extent_km(scores), interpolation="nearest")
        axes[i].set_title(f"({chr(97 + i)}) {res_m:g} m/px")
    for ax in axes:
        ax.set_xlabel("x (km)")
        ax.set_aspect("equal")
    axes[0].set_ylabel("y (km)")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles=[Patch(color=class_colour(c), label=c) for c in classes], loc="lower center",
               ncol=max(1, len(classes)), frameon=False)
    _save_fig(fig, path)


def plot_retrieval(query_patches: np.ndarray, match_patches: np.ndarray, path, res_m: float,
                   match_titles: Sequence[str] | None = None, title: str = "retrieval"):
    """Fig. 6 style PNG: the query patches ``(Q, S, S)`` (metres) in the top row, the matches ``(K, S, S)`` below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q, k = len(query_patches), len(match_patches)
    cols = max(q, min(k, 8))
    rows = 1 + int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(q):
        axes[0, i].imshow(query_patches[i], cmap="terrain")
        axes[0, i].set_title(f"query {i + 1}", fontsize=8)
    for i in range(k):
        ax = axes[1 + i // cols, i % cols]
        ax.imshow(match_patches[i], cmap="terrain")
        ax.set_title(match_titles[i] if match_titles is not None else f"match {i + 1}", fontsize=8)
    fig.suptitle(f"{title} ({res_m:g} m/px patches; colours per patch)")
    fig.tight_layout()
    _save_fig(fig, path)


def _extent_km(da: xr.DataArray) -> list[float]:
    x, y = np.asarray(da["x"].values), np.asarray(da["y"].values)
    dx = float(x[1] - x[0]) if x.size > 1 else 1.0
    dy = float(y[0] - y[1]) if y.size > 1 else dx
    return [(x[0] - dx / 2) / 1e3, (x[-1] + dx / 2) / 1e3, (y[-1] - dy / 2) / 1e3, (y[0] + dy / 2) / 1e3]


def _save_fig(fig, path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ retrieval
def retrieve(query_embeddings: np.ndarray, candidate_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(k,)`` and distances of the ``k`` candidates ``(M, D)`` nearest the mean of the queries ``(Q, D)``
    (paper Exp. 4). Candidates with NaN vectors are never returned."""
    from topo2vec_lib.evaluation import nearest_to_mean

    c = np.asarray(candidate_embeddings, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(c).all(axis=1))
    if not np.isfinite(np.asarray(query_embeddings, dtype=np.float64)).all():
        raise ValueError("a query place has no valid embedding (its patch leaves the terrain or touches nodata)")
    idx, dist = nearest_to_mean(query_embeddings, c[ok], k)
    return ok[idx], dist


def retrieve_in_region(region: xr.Dataset, query_embeddings: np.ndarray, k: int, crs=None, query_lonlat=None,
                       exclude_radius_m: float = 0.0) -> pd.DataFrame:
    """The ``k`` grid places of a region embedding nearest the mean query embedding.

    Grid places within ``exclude_radius_m`` metres of a query place (``query_lonlat``) are skipped, so the
    answer is not just the query's own neighbourhood. Returns a table ``rank, lon, lat, x, y, distance``.
    """
    emb = np.asarray(region["embedding"].values, dtype=np.float32)
    ny, nx, dim = emb.shape
    flat = emb.reshape(-1, dim).copy()
    xs, ys = np.meshgrid(region["x"].values, region["y"].values)
    if exclude_radius_m > 0 and query_lonlat is not None:

        qx, qy = lonlat_to_xy(crs, *query_lonlat)
        near = np.zeros(xs.shape, bool)
        for a, b in zip(np.atleast_1d(qx), np.atleast_1d(qy)):
            near |= np.hypot(xs - a, ys - b) <= exclude_radius_m
        flat[near.ravel()] = np.nan
    idx, dist = retrieve(query_embeddings, flat, k)
    return pd.DataFrame({"rank": np.arange(1, len(idx) + 1), "lon": region["lon"].values.ravel()[idx],
                         "lat": region["lat"].values.ravel()[idx], "x": xs.ravel()[idx], "y": ys.ravel()[idx],
                         "distance": dist})


def retrieval_candidates(sampler, labels: pd.DataFrame, classes: Sequence[str], res_m: float, *,
                         per_class: int = 200, n_random: int = 400, seed: int = 0) -> pd.DataFrame:
    """Candidate set for precision@k: up to ``per_class`` labelled places of each class in the sampler's region
    (valid patch at ``res_m``) plus ``n_random`` random places (class ``"random"``), in random order (``seed``).
    Columns ``lon, lat, class``."""
    rng = np.random.default_rng(seed)
    parts = []
    for cls in classes:
        t = labels[(labels["class"] == cls) & (labels["region"] == sampler.region)]
        lon, lat = t["lon"].to_numpy(float), t["lat"].to_numpy(float)
        ok = np.flatnonzero(sampler.valid_places(lon, lat, res_m)) if len(t) else np.zeros(0, int)
        if ok.size > per_class:
            ok = np.sort(rng.choice(ok, per_class, replace=False))
        parts.append(pd.DataFrame({"lon": lon[ok], "lat": lat[ok], "class": cls}))
    if n_random:
        lon, lat = sampler.random_places(int(n_random), rng, res_m)
        parts.append(pd.DataFrame({"lon": lon, "lat": lat, "class": "random"}))
    cand = pd.concat(parts, ignore_index=True)
    # shuffled, so ties in embedding distance (e.g. flat patches) do not favour the classes listed first
    return cand.iloc[rng.permutation(len(cand))].reset_index(drop=True)


def retrieval_precision(embedders: Mapping, sampler, candidates: pd.DataFrame, classes: Sequence[str], res_m: float,
                        *, n_queries: int = 5, k: int = 10, repeats: int = 20, seed: int = 0) -> pd.DataFrame:
    """precision@k of retrieving the queries' class (paper Exp. 4 made quantitative).

    For each class and repeat, ``n_queries`` places of the class are drawn from ``candidates`` (same draws for
    every embedder), their mean embedding is matched against the remaining candidates and precision@k is the
    fraction of the ``k`` nearest that carry the class (:func:`topo2vec_lib.evaluation.precision_at_k`).
    Returns a long table ``model, class, repeat, precision``.
    """
    from topo2vec_lib.evaluation import precision_at_k

    rng = np.random.default_rng(seed)
    labels_arr = candidates["class"].to_numpy()
    draws = {}
    for cls in classes:
        members = np.flatnonzero(labels_arr == cls)
        if members.size < n_queries + 1:
            continue
        draws[cls] = [rng.choice(members, n_queries, replace=False) for _ in range(repeats)]
    rows = []
    x, y = sampler.to_xy(candidates["lon"].to_numpy(float), candidates["lat"].to_numpy(float))
    for model, emb in embedders.items():
        vec = embed_xy(emb, sampler, x, y, res_m)
        ok = np.isfinite(vec).all(axis=1)
        for cls, reps in draws.items():
            for r, q in enumerate(reps):
                rest = np.ones(len(vec), bool)
                rest[q] = False
                rest &= ok
                kk = min(int(k), int(rest.sum()))
                p = precision_at_k(vec[q], vec[rest], labels_arr[rest], cls, kk)
                rows.append({"model": model, "class": cls, "repeat": r, "precision": p})
    return pd.DataFrame(rows)


def region_bounds(sampler, box_lonlat=None) -> tuple[float, float, float, float]:
    """Metric bounds of a lon/lat box (default: the whole terrain), clipped to the terrain."""
    left, bottom, right, top = sampler.bounds_xy
    if box_lonlat is None:
        return left, bottom, right, top
    x0, y0, x1, y1 = lonlat_box_to_xy(sampler.crs, box_lonlat)
    out = (max(x0, left), max(y0, bottom), min(x1, right), min(y1, top))
    if not (out[0] < out[2] and out[1] < out[3]):
        raise ValueError(f"box {list(box_lonlat)} (lon/lat) does not overlap the terrain {sampler.region!r} "
                         f"(x {left:.0f}..{right:.0f}, y {bottom:.0f}..{top:.0f} m)")
    return out


__all__ = ["CLASS_COLOURS", "class_colour", "train_class_probes", "classify_region", "dominant_class",
           "label_in_box", "densest_box", "nearest_label", "label_hit_rates", "upsample_terrain", "to_web_mercator",
           "hillshade_raster", "grey_rgba", "mask_rgba", "base_map", "add_mask_layer", "add_points", "add_legend",
           "cap_points", "multiscale_map", "retrieval_map", "leaflet_dir", "offline_html", "save_map",
           "plot_multiscale", "plot_retrieval", "retrieve", "retrieve_in_region", "retrieval_candidates",
           "retrieval_precision", "region_bounds", "grid_xy", "embed_xy"]
