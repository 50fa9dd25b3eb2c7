"""Benchmark of tiled label derivation (topo2vec_lib.tiled_labels) against the one-piece rules: time and memory.

    .venv/bin/python benchmarks/tiled_labels.py [--quick] [--out benchmarks/results/tiled_labels.json]

Builds the synthetic world once (train window, 30 m/px) and crops square windows of a few sizes from it. For
each size, in a fresh subprocess: ``labels.derive_cells`` on the window loaded in memory ("one-piece") and
``tiled_labels.derive_cells_tiled`` reading the window tile by tile from a float32 ``.npy`` file on disk, in
this process (``scheduler="sync"``: its peak RSS is the whole tiled run's). The largest size also runs on a
``dask.distributed`` LocalCluster (2 worker processes; the workers' own peak RSS is reported). Every run
checks that the tiled cells equal the one-piece cells. Peak memory is the process's peak resident set
(``VmHWM`` in /proc/self/status; it never goes down, hence one subprocess per case), reported in total and
as growth over the resident set after imports and a tiny warm-up. Writes JSON (atomically) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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
PARAMS = {"peak_prominence_m": 20.0}   # params.yaml's label rules (the rest are RULE_DEFAULTS)


def _status_mib(field: str) -> float:
    """``VmHWM`` (peak resident set) or ``VmRSS`` (now) of this process in MiB, from /proc (Linux).

    Not ``getrusage().ru_maxrss``: Linux carries that over ``execve``, so a subprocess would report its
    parent's peak when the parent was bigger.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_case(npy: str, mode: str, tile_px: int) -> dict:
    """One measurement in a fresh subprocess: ``mode`` is one-piece | tiled | tiled-processes."""
    from topo2vec_lib import labels as L
    from topo2vec_lib.tiled_labels import derive_cells_tiled

    warm = np.load(npy, mmap_mode="r")[:160, :160].astype(np.float64)
    L.derive_cells(warm, RES_M, **PARAMS)                                  # imports, first calls
    derive_cells_tiled(warm, RES_M, 150, scheduler="sync", **PARAMS)
    rss0 = _status_mib("VmRSS")
    workers_mib = None
    t0 = time.perf_counter()
    if mode == "one-piece":
        cells = L.derive_cells(np.load(npy), RES_M, **PARAMS)
    elif mode == "tiled":
        cells = derive_cells_tiled(npy, RES_M, tile_px, scheduler="sync", **PARAMS)
    else:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            t0 = time.perf_counter()
            cells = derive_cells_tiled(npy, RES_M, tile_px, scheduler=client, **PARAMS)
            wall = time.perf_counter() - t0
            workers_mib = sorted(client.run(_status_mib, "VmHWM").values())
    wall_s = time.perf_counter() - t0 if workers_mib is None else wall
    peak = _status_mib("VmHWM")
    out = {"mode": mode, "wall_s": wall_s, "peak_rss_mib": peak, "rss_growth_mib": peak - rss0,
           "counts": {k: int(v[0].size) for k, v in cells.items()}}
    if workers_mib is not None:
        out["worker_peak_rss_mib"] = workers_mib
    np.savez(npy + f".{mode}.npz", **{f"{k}_{i}": v[i] for k, v in cells.items() for i in (0, 1)})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two small windows, no cluster run (a smoke run)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tiled_labels.json"))
    ap.add_argument("--case", nargs=3, help=argparse.SUPPRESS)   # internal: npy mode tile_px
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case[0], args.case[1], int(args.case[2]))))
        return {}
    sizes, tile_px = ([240, 360], 150) if args.quick else ([400, 700, 1000], 256)
    from topo2vec_lib.synthetic import synthetic_terrain

    t0 = time.perf_counter()
    world = synthetic_terrain("train", (12.0, 47.2), max(sizes) * RES_M / 1000.0, RES_M).values
    gen_s = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            npy = str(Path(tmp) / f"dem_{n}.npy")
            np.save(npy, np.ascontiguousarray(world[:n, :n], dtype=np.float32))
            modes = ["one-piece", "tiled"] + (["tiled-processes"] if n == max(sizes) and not args.quick else [])
            for mode in modes:
                cmd = [sys.executable, __file__, "--case", npy, mode, str(tile_px)]
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                if res.returncode:
                    raise RuntimeError(f"case {n} {mode} failed:\n{res.stderr[-3000:]}")
                case = json.loads(res.stdout.strip().splitlines()[-1])
                case.update(size_px=[n, n], pixels=n * n, tile_px=tile_px)
                rows.append(case)
            ref = np.load(npy + ".one-piece.npz")
            for mode in modes[1:]:
                got = np.load(npy + f".{mode}.npz")
                equal = set(ref.files) == set(got.files) and all(np.array_equal(ref[k], got[k]) for k in ref.files)
                next(r for r in rows if r["size_px"] == [n, n] and r["mode"] == mode)["equal_to_one_piece"] = equal
            for r in rows[-len(modes):]:
                extra = f"  workers {r['worker_peak_rss_mib']}" if "worker_peak_rss_mib" in r else ""
                print(f"{n:5d} px  {r['mode']:16s} {r['wall_s']:7.1f} s  peak RSS {r['peak_rss_mib']:7.0f} MiB  "
                      f"growth {r['rss_growth_mib']:7.0f} MiB  equal {r.get('equal_to_one_piece', '-')}{extra}")
    import dask

    result = {"benchmark": "derived labels: one-piece labels.derive_cells vs tiled_labels.derive_cells_tiled",
              "terrain": "synthetic train world, square crops of one window", "res_m": RES_M, "params": PARAMS,
              "world_generation_s": gen_s, "quick": bool(args.quick), "cases": rows,
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count(), "numpy": np.__version__, "dask": dask.__version__,
                          "load_average_at_end": list(os.getloadavg())}}
    write_json(args.out, result)
    print("wrote", args.out)
    return result


if __name__ == "__main__":
    main()
