"""How realistic is the synthetic world? Its terrain statistics beside real DEMs (issue 15, hypothesis 6).

Real DEMs: the Copernicus GLO-30 and NASADEM 1-arc-second tiles that ship as test data in the source
distribution of dem-stitcher 3.2.0 (not a dependency; fetch it once with
``pip download --no-deps --no-binary :all: dem-stitcher==3.2.0 -d /tmp/demst`` and unpack it), reprojected to
UTM at 30 m by :func:`topo2vec_lib.terrain.geotiff_terrain` (average resampling). Sea (``z <= 0``) is nodata.

Windows (all 44 km squares, like the study's; plus the whole N34 W119 tile as one 86 km square):

- ``N34W119``: Transverse Ranges around Los Angeles (UTM 11N): quadrants ``sw`` (Santa Monica Mountains, Simi
  Hills, a little sea), ``se`` (San Gabriel Mountains front, San Fernando Valley and LA basin: urban),
  ``nw`` (Topatopa / Sierra Pelona mountains), ``ne`` (Antelope Valley: Mojave plain, San Gabriel north side);
- ``N54W165``: Unimak Island, Aleutians (UTM 3N), volcanoes and sea, a 60 km square (GLO-30 only).

Synthetic: the study's two windows (``load_terrain('synthetic', ...)``, 44 km at 30 m, EPSG:3035), and with
``--proto`` the same windows of :mod:`topo2vec_lib.synthetic_v2_proto`.

Writes ``<out>.json`` (every statistic of every window, comparisons against every real window, and the
"real range" summary: where a synthetic value falls outside the range of the real 44 km windows) and
``<out>.png`` (slope histograms, roughness against lag, curvature, peak and drainage densities, slope-area,
statistics within local-relief classes) and ``<out>_detail.png`` (hillshades of 12 km crops).

    PYTHONPATH=. python scripts/realism.py --dem-stitcher /tmp/demst/dem_stitcher-3.2.0 --out reports/realism_before
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from topo2vec_lib.grid import window_bounds
from topo2vec_lib.terrain import geotiff_terrain, load_terrain, open_terrain, save_terrain
from topo2vec_lib.terrain_stats import compare_statistics, terrain_statistics

TILES = {
    "glo30_N34W119": "tests/data/tiles/glo_30/Copernicus_DSM_COG_10_N34_00_W119_00_DEM.tif",
    "nasadem_N34W119": "tests/data/tiles/nasadem/NASADEM_HGT_n34w119.tif",
    "glo30_N54W165": "tests/data/tiles/glo_30/Copernicus_DSM_COG_10_N54_00_W165_00_DEM.tif",
}
QUADRANTS = {"sw": (-118.75, 34.25), "se": (-118.25, 34.25), "nw": (-118.75, 34.75), "ne": (-118.25, 34.75)}
SYNTHETIC = {"train": [12.0, 47.2], "test": [7.6, 46.6]}
RES_M = 30.0

# statistics summarised against the range of the real 44 km windows (name -> how to read it from a stats dict)
SUMMARY = {
    "slope_p10_deg": lambda s: s["slope_p10_deg"],
    "slope_p50_deg": lambda s: s["slope_p50_deg"],
    "slope_p90_deg": lambda s: s["slope_p90_deg"],
    "slope_fraction_below_2deg": lambda s: s["slope_fraction_below_2deg"],
    "slope_fraction_above_30deg": lambda s: s["slope_fraction_above_30deg"],
    "slope_fraction_above_45deg": lambda s: s["slope_fraction_above_45deg"],
    "curv_profile_iqr_per_km": lambda s: 1000 * s["curv_profile_iqr_per_m"],
    "curv_tangential_iqr_per_km": lambda s: 1000 * s["curv_tangential_iqr_per_m"],
    "curv_profile_convex_fraction": lambda s: s["curv_profile_convex_fraction"],
    "curv_profile_sharp_fraction": lambda s: s["curv_profile_sharp_fraction"],
    "curv_tangential_sharp_fraction": lambda s: s["curv_tangential_sharp_fraction"],
    "roughness_30m_m": lambda s: s["roughness_std_m"][0],
    "roughness_240m_m": lambda s: s["roughness_std_m"][s["roughness_lag_m"].index(240.0)],
    "roughness_1920m_m": lambda s: s["roughness_std_m"][s["roughness_lag_m"].index(1920.0)],
    "hurst": lambda s: s["hurst"],
    "hurst_short": lambda s: s["hurst_short"],
    "hurst_long": lambda s: s["hurst_long"],
    "relief1000m_p50_m": lambda s: s["relief1000m_p50_m"],
    "relief1000m_p90_m": lambda s: s["relief1000m_p90_m"],
    "hypsometric_integral": lambda s: s["hypsometric_integral"],
    "peaks_per_100km2_prom20m": lambda s: 100 * s["peak_density_per_km2"][0],
    "peaks_per_100km2_prom50m": lambda s: 100 * s["peak_density_per_km2"][1],
    "peaks_per_100km2_prom100m": lambda s: 100 * s["peak_density_per_km2"][2],
    "peaks_per_100km2_prom300m": lambda s: 100 * s["peak_density_per_km2"][3],
    "drainage_km_per_km2_A0.1": lambda s: s["drainage_density_per_km"][0],
    "drainage_km_per_km2_A1": lambda s: s["drainage_density_per_km"][2],
    "drainage_km_per_km2_A5": lambda s: s["drainage_density_per_km"][3],
    "concavity_theta": lambda s: s["concavity_theta"],
    "filled_fraction": lambda s: s["filled_fraction"],
    "anisotropy_coherence_median": lambda s: s["anisotropy_coherence_median"],
    "slope_area_peak_km2": lambda s: s["slope_area_peak_km2"],
}
# valley-ridge organisation: curvature across the slope (valleys, ridges) against along it, in the mountains
for _k, _label in ((3, "rel200-300m"), (4, "rel300-400m"), (5, "rel400-500m")):
    SUMMARY[f"{_label}_curv_tangential_to_profile_iqr"] = (
        lambda k: lambda s: (s["by_relief_curv_tangential_iqr_per_m"][k] / s["by_relief_curv_profile_iqr_per_m"][k])
        if s["by_relief_curv_profile_iqr_per_m"][k] else None)(_k)
for _k, _label in ((0, "A<0.002km2"), (2, "A0.008-0.032km2"), (4, "A0.128-0.5km2"), (6, "A2-8km2"), (8, "A>33km2")):
    for _stat in ("slope_median", "flat_fraction", "curv_tangential_median_per_m"):
        SUMMARY[f"{_label}_{_stat}"] = (lambda k, st: lambda s: s[f"by_area_{st}"][k])(_k, _stat)
# the same within local-relief classes (like with like: hills with hills, mountains with mountains)
for _k, _label in ((1, "rel50-100m"), (3, "rel200-300m"), (4, "rel300-400m"), (5, "rel400-500m")):
    for _stat in ("slope_p50_deg", "slope_p90_deg", "curv_profile_iqr_per_m", "curv_profile_sharp_fraction",
                  "curv_tangential_sharp_fraction", "peaks_per_km2_prom20m", "drainage_km_per_km2_A0.1",
                  "channel_slope_median_A1", "channel_flat_fraction_A1"):
        SUMMARY[f"{_label}_{_stat}"] = (lambda k, st: lambda s: s[f"by_relief_{st}"][k])(_k, _stat)


def real_windows(dem_stitcher: Path) -> dict:
    """Name -> (path, bounds, crs) of every real window."""
    out = {}
    for tile in ("glo30_N34W119", "nasadem_N34W119"):
        path = dem_stitcher / TILES[tile]
        out[f"{tile}_full86km"] = (path, window_bounds((-118.5, 34.5), 86, RES_M, "EPSG:32611"), "EPSG:32611")
        for q, c in QUADRANTS.items():
            out[f"{tile}_{q}"] = (path, window_bounds(c, 44, RES_M, "EPSG:32611"), "EPSG:32611")
    out["glo30_N54W165_unimak60km"] = (dem_stitcher / TILES["glo30_N54W165"],
                                       window_bounds((-164.5, 54.5), 60, RES_M, "EPSG:32603"), "EPSG:32603")
    return out


def load_real(path, bounds, crs):
    da = geotiff_terrain(path, bounds, crs, RES_M)
    return da.where(da > 0)  # sea (0 m in GLO-30/NASADEM) -> nodata


def load_synthetic(region: str, cache: Path | None, generator: str = "v2"):
    """The study's 44 km window of ``region`` from the current synthetic world (``v2``: a function of absolute
    position; ``synthetic.py`` since issue 12) or the prototype of branch ``realism`` (``proto``)."""
    name = f"{generator}_{region}.zarr"
    if cache is not None and (cache / name).exists():
        return open_terrain(cache / name)
    if generator == "v2":
        da = load_terrain("synthetic", region, center_lonlat=SYNTHETIC[region], size_km=44, res_m=RES_M)
    else:
        from topo2vec_lib.synthetic_v2_proto import proto_terrain  # type: ignore[import-not-found]

        da = proto_terrain(region, SYNTHETIC[region], size_km=44, res_m=RES_M)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        save_terrain(da, cache / name)
    return da


def summary_table(stats: dict, real_names: list[str], others: list[str]) -> dict:
    """For each SUMMARY statistic: the real 44 km windows' min/median/max and each other window's value,
    with ``outside``: how far beyond the real range (ratio to the nearest bound; 1 = inside)."""
    table = {}
    for key, get in SUMMARY.items():
        real = [get(stats[n]) for n in real_names if get(stats[n]) is not None]
        row = {"real_min": float(np.min(real)), "real_median": float(np.median(real)), "real_max": float(np.max(real))}
        for n in others:
            v = get(stats[n])
            row[n] = v
            if v is None:
                continue
            lo, hi = row["real_min"], row["real_max"]
            outside = 1.0
            if v < lo:
                outside = (v / lo) if lo > 0 else float("-inf")
            elif v > hi:
                outside = (v / hi) if hi > 0 else float("inf")
            row[f"{n}_outside"] = outside
        table[key] = row
    return table


def figure(stats: dict, groups: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(3, 3, figsize=(18, 15.5))
    style = {"real": dict(color="0.55", lw=1.0), "nasadem": dict(color="tab:green", lw=1.0, ls=":"),
             "v1": dict(color="tab:red", lw=2.0), "proto": dict(color="tab:blue", lw=2.0),
             "v2": dict(color="tab:purple", lw=2.5)}
    names = [n for g in groups.values() for n in g]
    group_of = {n: g for g, ns in groups.items() for n in ns}
    # slope pdf
    for n in names:
        s = stats[n]
        e = np.asarray(s["slope_hist_edges_deg"])
        f = np.asarray(s["slope_hist_fraction"]) / np.diff(e)
        ax[0, 0].plot(0.5 * (e[1:] + e[:-1]), f, label=n, **style[group_of[n]])
    ax[0, 0].set(xlabel="slope (deg)", ylabel="density (1/deg)", title="Slope distribution", xlim=(0, 75))
    # roughness
    for n in names:
        s = stats[n]
        ax[0, 1].loglog(s["roughness_lag_m"], s["roughness_std_m"], marker=".", **style[group_of[n]])
    lag = np.array([30, 1000.0])
    ax[0, 1].loglog(lag, 10 * (lag / 30) ** 0.85, "k--", lw=0.8, label="H = 0.85")
    ax[0, 1].set(xlabel="lag (m)", ylabel="std of elevation difference (m)", title="Roughness against lag")
    ax[0, 1].legend(fontsize=8)
    # profile curvature
    for n in names:
        s = stats[n]
        e = 1000 * np.asarray(s["curvature_hist_edges_per_m"])
        f = np.asarray(s["curv_profile_hist_fraction"]) / np.diff(e)
        ax[0, 2].semilogy(0.5 * (e[1:] + e[:-1]), f, **style[group_of[n]])
    ax[0, 2].set(xlabel="profile curvature (1/km; + convex)", ylabel="density", title="Profile curvature (3x3, 30 m)",
                 xlim=(-30, 30), ylim=(1e-5, 1))
    # peak densities
    w = 0.8 / len(names)
    thr = stats[names[0]]["prominence_thresholds_m"]
    for i, n in enumerate(names):
        d = 100 * np.asarray(stats[n]["peak_density_per_km2"])
        ax[1, 0].bar(np.arange(len(thr)) + i * w, d, w, color=style[group_of[n]]["color"],
                     edgecolor="k", lw=0.3)
    ax[1, 0].set_xticks(np.arange(len(thr)) + 0.4 - w / 2, [f">= {t:g} m" for t in thr])
    ax[1, 0].set(yscale="log", ylabel="peaks per 100 km2", title="Peaks by topographic prominence")
    # drainage density
    at = stats[names[0]]["drainage_area_thresholds_km2"]
    for i, n in enumerate(names):
        d = np.asarray(stats[n]["drainage_density_per_km"])
        ax[1, 1].bar(np.arange(len(at)) + i * w, d, w, color=style[group_of[n]]["color"], edgecolor="k", lw=0.3)
    ax[1, 1].set_xticks(np.arange(len(at)) + 0.4 - w / 2, [f"A >= {a:g} km2" for a in at])
    ax[1, 1].set(ylabel="channel km per km2", title="Drainage density (D8)")
    # slope-area, divides to rivers
    for n in names:
        s = stats[n]
        v = [np.nan if x is None else x for x in s["by_area_slope_median"]]
        ax[1, 2].loglog(s["area_class_centre_km2"], v, marker=".", **style[group_of[n]])
    ax[1, 2].set(xlabel="drainage area (km2)", ylabel="median D8 slope (tan, flats left out)",
                 title="Slope-area, divides to rivers")
    # within local-relief classes
    edges = stats[names[0]]["relief_class_edges_m"]
    centres = [0.5 * (a + b) for a, b in zip(edges[:-2], edges[1:-1])] + [edges[-2] + 100]
    panels = [("by_relief_slope_p50_deg", "median slope (deg)"),
              ("by_relief_curv_profile_sharp_fraction", "share of |profile curvature| > 10/km")]
    for j, (key, label) in enumerate(panels):
        for n in names:
            v = [np.nan if x is None else x for x in stats[n][key]]
            ax[2, j].plot(centres, v, marker=".", **style[group_of[n]])
        ax[2, j].set(xlabel="local relief in 1 km squares (m)", ylabel=label, title=f"{label} by local relief")
    for n in names:
        s = stats[n]
        v = [np.nan if x is None else 1000 * x for x in s["by_area_curv_tangential_median_per_m"]]
        ax[2, 2].semilogx(s["area_class_centre_km2"], v, marker=".", **style[group_of[n]])
    ax[2, 2].axhline(0, color="k", lw=0.5)
    ax[2, 2].set(xlabel="drainage area (km2)", ylabel="median tangential curvature (1/km; + convex)",
                 title="Divides convex, valleys concave?")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], label=lab, **style[g]) for g, lab in
               [("real", "GLO-30 N34W119 windows"), ("nasadem", "NASADEM N34W119 windows"),
                ("v1", "synthetic v1 (train, test)"), ("proto", "prototype of the fixes"),
                ("v2", "synthetic v2 (train, test)")] if groups.get(g)]
    fig.legend(handles=handles, loc="upper center", ncol=5)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


DETAIL_CROPS = {  # 12 km squares (400 px) for the detail hillshades: name -> (rows, cols)
    "glo30_N34W119_se": (slice(200, 600), slice(900, 1300)),     # San Gabriel Mountains
    "nasadem_N34W119_se": (slice(200, 600), slice(900, 1300)),
    "synthetic_test": (slice(300, 700), slice(200, 600)),         # alpine part
    "proto_test": (slice(300, 700), slice(200, 600)),
    "synthetic_train": (slice(700, 1100), slice(300, 700)),       # hills, karst plateau, plain
    "proto_train": (slice(700, 1100), slice(300, 700)),
    "v2_test": (slice(300, 700), slice(200, 600)),
    "v2_train": (slice(700, 1100), slice(300, 700)),
}


def detail_figure(terrains: dict, path: Path) -> None:
    """Hillshades of 12 km crops at full resolution: the texture the statistics measure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in DETAIL_CROPS if n in terrains]
    fig, axes = plt.subplots(1, len(names), figsize=(4.0 * len(names), 4.3))
    for ax, name in zip(np.atleast_1d(axes), names):
        rows, cols = DETAIL_CROPS[name]
        z = np.asarray(terrains[name].values, dtype=np.float64)[rows, cols]
        gy, gx = np.gradient(z, RES_M)
        shade = np.clip((-gx * 0.5 + gy * 0.5 + 0.7071) / np.sqrt(1 + gx ** 2 + gy ** 2), 0, 1)
        ax.imshow(shade, cmap="gray", interpolation="nearest")
        ax.set_title(f"{name}\n12 km, relief {np.nanmax(z) - np.nanmin(z):.0f} m", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def _round(obj):
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    return obj


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dem-stitcher", type=Path, required=True, help="unpacked dem_stitcher-3.2.0 sdist")
    ap.add_argument("--out", type=Path, default=Path("reports/realism_before"), help="output stem (.json, .png)")
    ap.add_argument("--cache", type=Path, default=None, help="cache dir for the synthetic windows (zarr)")
    ap.add_argument("--proto", action="store_true", help="also the windows of synthetic_v2_proto (branch realism)")
    ap.add_argument("--real-from", type=Path, default=None,
                    help="reuse the real windows' statistics of an earlier output JSON (no re-reading of the tiles); "
                         "its synthetic v1 and prototype windows are carried over as 'before'")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    stats, thumbs = {}, {}
    groups: dict[str, list[str]] = {"real": [], "nasadem": [], "v1": [], "proto": [], "v2": []}
    earlier = json.loads(args.real_from.read_text())["statistics"] if args.real_from else {}
    for name, group in (("synthetic_train", "v1"), ("synthetic_test", "v1"), ("proto_train", "proto"),
                        ("proto_test", "proto")):
        if name in earlier and not (group == "proto" and args.proto):
            stats[name] = earlier[name]
            groups[group].append(name)
    for name, (path, bounds, crs) in real_windows(args.dem_stitcher).items():
        t0 = time.perf_counter()
        da = None
        if name in earlier:
            stats[name] = earlier[name]
        else:
            da = load_real(path, bounds, crs)
            stats[name] = terrain_statistics(da)
            stats[name]["source"] = {"file": path.name, "crs": crs, "bounds_xy": list(bounds)}
        if name.startswith("glo30_N34W119") and not name.endswith("full86km"):
            groups["real"].append(name)
        elif name.startswith("nasadem_N34W119") and not name.endswith("full86km"):
            groups["nasadem"].append(name)
        if name in DETAIL_CROPS:
            thumbs[name] = da if da is not None else load_real(path, bounds, crs)
        print(f"{name}: {time.perf_counter() - t0:.1f} s, nodata {stats[name]['nodata_fraction']:.3f}", flush=True)
    gens = ["v2"] + (["proto"] if args.proto else [])
    for gen in gens:
        for region in SYNTHETIC:
            t0 = time.perf_counter()
            da = load_synthetic(region, args.cache, gen)
            name = f"{gen}_{region}"
            stats[name] = terrain_statistics(da)
            groups[gen].append(name)
            thumbs[name] = da
            print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    real44 = groups["real"] + groups["nasadem"]
    others = groups["v1"] + groups["proto"] + groups["v2"] + ["glo30_N34W119_full86km", "glo30_N54W165_unimak60km"]
    comparisons = {}
    for ref in groups["real"] + ["glo30_N34W119_full86km"]:
        # the synthetic windows against every GLO-30 window; the real windows against each other and
        # NASADEM against GLO-30 on the same window give the spread of real terrain (the noise floor)
        for other in groups["v1"] + groups["proto"] + groups["v2"] + [n for n in groups["real"] if n != ref] + \
                [ref.replace("glo30", "nasadem")]:
            comparisons[f"{other}__vs__{ref}"] = compare_statistics(stats[ref], stats[other])
    result = {"what": "terrain statistics (topo2vec_lib.terrain_stats) of real DEM windows and the synthetic world",
              "res_m": RES_M, "real_44km_windows": real44, "groups": groups,
              "summary_vs_real_range": summary_table(stats, real44, others),
              "comparisons": comparisons, "statistics": stats,
              "seconds_total": round(time.perf_counter() - t_start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(_round(result), indent=1))
    figure(stats, groups, Path(f"{args.out}.png"))
    detail_figure(thumbs, Path(f"{args.out}_detail.png"))
    print(f"wrote {args.out}.json/.png in {result['seconds_total']} s")


if __name__ == "__main__":
    main()
