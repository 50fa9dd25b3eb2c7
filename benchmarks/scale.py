"""Scale benchmark (issue 12): time and peak memory of the terrain and label stages against the window size.

    .venv/bin/python benchmarks/scale.py [--quick] [--sizes 44 88 176 352 paper] [--workers 2]
                                         [--out benchmarks/results/scale.json]

For each size, in a fresh subprocess: the synthetic world's train window (centred on 12.0 E 47.2 N in the paper's
train polygon; ``paper``: the largest window centred in the polygon, about 350 x 550 km) is built tile by tile into
zarr (``terrain.build_terrain``: carve field, unfilled heights, filled tiles) on a ``dask.distributed`` LocalCluster
of ``--workers`` processes, its labels are derived tile by tile on the same cluster
(``tiled_labels.derive_cells_tiled`` reading the store), and a ``PatchSampler`` pyramid is built from the lazy store
in the driver. Peak memory is each process's ``VmHWM`` from /proc (not ``ru_maxrss``, which Linux carries over
exec); the workers are restarted between the stages so each stage's worker peak is its own. Each run records the
load average (the machine is shared). A linear fit of the times against the pixel count extrapolates to the
paper's polygon (lon 10-15, lat 45-50: about 232 M pixels at 30 m) and to N workers (the tile work is
embarrassingly parallel; the driver's serial part is measured separately).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from topo2vec_lib.storage import write_json  # noqa: E402

RES_M = 30.0
CRS = "EPSG:3035"
TRAIN_BOX = (10.0, 45.0, 15.0, 50.0)
CENTER = (12.0, 47.2)
PAPER_POLYGON_KM2 = None      # computed in main (area of the lon/lat box in EPSG:3035)


def _status_mib(field: str = "VmHWM") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _du_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2 ** 20


def window_of(size: str):
    from topo2vec_lib.regions import Region, inscribed_size_km

    if size == "paper":
        region = Region("train", TRAIN_BOX, ((TRAIN_BOX[0] + TRAIN_BOX[2]) / 2, (TRAIN_BOX[1] + TRAIN_BOX[3]) / 2),
                        (10.0, 10.0))
        w, h = inscribed_size_km(region, CRS, RES_M, step_km=4.0)
        region = Region("train", TRAIN_BOX, region.center, (w, h))
    else:
        region = Region("train", TRAIN_BOX, CENTER, (float(size), float(size)))
    return region, region.window(RES_M, CRS)


def run_case(size: str, workdir: str, workers: int, tile_px: int, chunk_px: int, labels_tile_px: int,
             small_world: bool = False) -> dict:
    """One size in this (fresh) process: terrain, labels, sampler pyramid. ``small_world``: routing blocks of
    6 km (the tiny mode: the same construction at a fraction of the cost)."""
    import dataclasses

    from dask.distributed import Client, LocalCluster

    from topo2vec_lib.sampler import PatchSampler
    from topo2vec_lib.synthetic import WORLD
    from topo2vec_lib.terrain import build_terrain, open_terrain, store_array
    from topo2vec_lib.tiled_labels import derive_cells_tiled
    from topo2vec_lib.tiling import TileRunner

    params = dataclasses.replace(WORLD, block_km=6.0, block_halo_km=3.0) if small_world else None
    work = Path(workdir)
    region, bounds = window_of(size)
    ny, nx = int(round((bounds[3] - bounds[1]) / RES_M)), int(round((bounds[2] - bounds[0]) / RES_M))
    out: dict = {"size": size, "size_km": list(region.size_km), "shape": [ny, nx], "pixels": ny * nx,
                 "tile_px": tile_px, "labels_tile_px": labels_tile_px, "workers": workers,
                 "load_average_start": list(os.getloadavg())}
    rss0 = _status_mib("VmRSS")
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=0) as cluster, Client(cluster) as client:
        runner = TileRunner(client)
        t0 = time.perf_counter()
        info = build_terrain(work / "terrain.zarr", "synthetic", "train", bounds, res_m=RES_M, crs=CRS,
                             region_lonlat=list(TRAIN_BOX), seed=0, tile_px=tile_px, chunk_px=chunk_px,
                             runner=runner, scratch_dir=work, params=params)
        out["terrain_s"] = time.perf_counter() - t0
        out["terrain_workers_peak_mib"] = sorted(client.run(_status_mib).values())
        out["driver_peak_after_terrain_mib"] = _status_mib()
        out["store_mib"] = _du_mib(work / "terrain.zarr")
        out["terrain_tiles"] = info["tiles"]
        client.restart()
        t0 = time.perf_counter()
        cells = derive_cells_tiled(store_array(work / "terrain.zarr"), RES_M, labels_tile_px, seed=0,
                                   scheduler=client, workdir=work / "labels-scratch", peak_prominence_m=20.0)
        out["labels_s"] = time.perf_counter() - t0
        out["labels_workers_peak_mib"] = sorted(client.run(_status_mib).values())
        out["driver_peak_after_labels_mib"] = _status_mib()
        out["counts"] = {k: int(v[0].size) for k, v in cells.items()}
        del cells
    t0 = time.perf_counter()
    sampler = PatchSampler(open_terrain(work / "terrain.zarr", chunks={}))
    out["sampler_s"] = time.perf_counter() - t0
    out["sampler_pyramid_mib"] = sum(a.nbytes for a in sampler.pyramid) / 2 ** 20
    out["driver_peak_after_sampler_mib"] = _status_mib()
    out["driver_rss_at_start_mib"] = rss0
    out["load_average_end"] = list(os.getloadavg())
    return out


def fit(rows: list[dict], key: str, target_px: float) -> dict:
    """Least-squares ``seconds = a + b * pixels`` and the log-log slope, extrapolated to ``target_px``."""
    px = np.array([r["pixels"] for r in rows], float)
    t = np.array([r[key] for r in rows], float)
    if px.size < 2:
        return {}
    b, a = np.polyfit(px, t, 1)
    slope = float(np.polyfit(np.log(px), np.log(t), 1)[0])
    return {"intercept_s": float(a), "s_per_mpx": float(b * 1e6), "loglog_slope": slope,
            "extrapolated_s": float(a + b * target_px)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two tiny windows, tiny tiles and 6 km routing blocks "
                                                         "(a smoke run)")
    ap.add_argument("--sizes", nargs="*", default=None, help="window sides in km, or 'paper'")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale.json"))
    ap.add_argument("--scratch", default=None, help="folder for the stores and scratch files (default: /tmp)")
    ap.add_argument("--case", nargs=7, help=argparse.SUPPRESS)   # internal: size workdir workers tile chunk ltile small
    args = ap.parse_args(argv)
    if args.case:
        s, wd, w, t, c, lt, small = args.case
        print(json.dumps(run_case(s, wd, int(w), int(t), int(c), int(lt), small == "1")))
        return {}
    if args.quick:
        sizes, tile_px, chunk_px, labels_tile_px = args.sizes or ["6", "9"], 256, 128, 150
    else:
        sizes, tile_px, chunk_px, labels_tile_px = args.sizes or ["44", "88", "176"], 2048, 512, 2048
    from pyproj import Geod

    lon0, lat0, lon1, lat1 = TRAIN_BOX
    area_km2 = abs(Geod(ellps="GRS80").polygon_area_perimeter([lon0, lon1, lon1, lon0],
                                                              [lat0, lat0, lat1, lat1])[0]) / 1e6
    paper_px = area_km2 * 1e6 / RES_M ** 2
    old = {}
    if Path(args.out).exists() and not args.quick:       # sizes measured earlier are kept (big ones run once)
        old = {r["size"]: r for r in json.loads(Path(args.out).read_text()).get("cases", [])}
    rows = []
    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"topo2vec-scale-{size}-", dir=args.scratch))
        try:
            cmd = [sys.executable, __file__, "--case", size, str(work), str(args.workers), str(tile_px),
                   str(chunk_px), str(labels_tile_px), "1" if args.quick else "0"]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if res.returncode:
                raise RuntimeError(f"case {size} failed:\n{res.stderr[-4000:]}")
            case = json.loads(res.stdout.strip().splitlines()[-1])
            case["wall_s"] = time.perf_counter() - t0
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append(case)
        old[size] = case
        peak_workers = max(case["terrain_workers_peak_mib"] + case["labels_workers_peak_mib"])
        print(f"{size:>6} km {case['shape']} {case['pixels'] / 1e6:7.1f} Mpx  terrain {case['terrain_s']:7.1f} s  "
              f"labels {case['labels_s']:7.1f} s  sampler {case['sampler_s']:5.1f} s  worker peak "
              f"{peak_workers:6.0f} MiB  driver peak {case['driver_peak_after_sampler_mib']:6.0f} MiB  load "
              f"{case['load_average_end'][0]:.1f}", flush=True)
    cases = sorted(old.values(), key=lambda r: r["pixels"]) if not args.quick else rows
    fits = {k: fit([r for r in cases if r["size"] != "paper"], k, paper_px) for k in ("terrain_s", "labels_s")}
    import dask

    result = {"benchmark": "terrain + labels (+ sampler pyramid) against window size, synthetic world, tiled",
              "res_m": RES_M, "crs": CRS, "quick": bool(args.quick), "workers": args.workers,
              "paper_polygon": {"box": list(TRAIN_BOX), "area_km2": area_km2, "pixels": paper_px},
              "cases": cases, "fits": fits,
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count(), "numpy": np.__version__, "dask": dask.__version__,
                          "load_average_at_end": list(os.getloadavg())}}
    write_json(args.out, result)
    print("wrote", args.out)
    return result


if __name__ == "__main__":
    main()
