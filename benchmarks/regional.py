"""Benchmark of region-wide embedding (topo2vec_lib.regional.embed_region): places/s and peak memory.

    .venv/bin/python benchmarks/regional.py [--quick] [--out benchmarks/results/regional.json]

Builds a random fractal terrain in memory (default 1200 x 1200 px at 30 m/px, 36 km, the study's window), then
embeds a regular grid of places (17 x 17 patches at 30 m/px) block by block to a temporary zarr store with:
the ID baseline (289 numbers per place: the output is bigger than one block by far) and an (untrained)
topo2vec encoder (128 numbers; the speed does not depend on the weights), on Dask's threaded scheduler and on
a ``dask.distributed`` LocalCluster (2 workers x 1 thread, in-process). Peak memory: Python/numpy allocations
traced by ``tracemalloc`` during the run (torch's own buffers are not traced) and the process's peak RSS
growth (``resource.getrusage``; it never goes down, so each case runs in a fresh subprocess).
One small warm-up run (imports, first torch call) precedes each measurement.
Writes the rates and memory figures with machine info as JSON (atomically) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from common import fractal_terrain  # benchmarks/common.py (the script folder is on sys.path)

from topo2vec_lib.storage import write_json  # noqa: E402

RES_M = 30.0



def make_embedder(kind: str):
    if kind == "id":
        from topo2vec_lib.models.identity import IdEmbedder

        return IdEmbedder()
    import torch

    from topo2vec_lib.models import Topo2Vec
    from topo2vec_lib.models.networks import Encoder

    torch.manual_seed(0)
    return Topo2Vec(Encoder(), {"k": 4, "name": "topo2vec-4 (untrained)"}, name="topo2vec-4")


def run_case(n_px: int, stride_m: float, chunk: int, kind: str, scheduler: str) -> dict:
    """One measurement (called in a fresh subprocess so the RSS peak is its own)."""
    import dask

    from topo2vec_lib.regional import embed_region, valid_mask
    from topo2vec_lib.sampler import PatchSampler

    sampler = PatchSampler(fractal_terrain(n_px, region="test"), threads=1)
    embedder = make_embedder(kind)
    left, bottom, _, top = sampler.bounds_xy
    embed_region(embedder, sampler, RES_M, stride_m, (left, top - 3000, left + 3000, top)).compute()   # warm-up
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024          # KiB -> MiB (Linux)
    with tempfile.TemporaryDirectory() as tmp:
        tracemalloc.start()
        t0 = time.perf_counter()
        if scheduler == "distributed":
            from distributed import Client, LocalCluster

            with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c, \
                    Client(c):
                ds = embed_region(embedder, sampler, RES_M, stride_m, chunk=chunk, path=Path(tmp) / "r.zarr")
        else:
            with dask.config.set(scheduler=scheduler):
                ds = embed_region(embedder, sampler, RES_M, stride_m, chunk=chunk, path=Path(tmp) / "r.zarr")
        wall_s = time.perf_counter() - t0
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        places = int(ds.sizes["y"] * ds.sizes["x"])
        valid = int(valid_mask(ds).sum())
        out_mib = places * int(embedder.dim) * 4 / 2**20
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"embedder": kind, "dim": int(embedder.dim), "scheduler": scheduler, "grid": [int(ds.sizes["y"]),
            int(ds.sizes["x"])], "places": places, "valid_places": valid, "chunk": chunk, "wall_s": wall_s,
            "places_per_s": places / wall_s, "embedding_mib": out_mib, "traced_peak_mib": traced_peak / 2**20,
            "rss_growth_mib": rss1 - rss0}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small terrain and grid (a smoke run)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "regional.json"))
    ap.add_argument("--case", help=argparse.SUPPRESS)   # internal: run one case, print JSON
    args = ap.parse_args(argv)
    n_px, stride_m, chunk = (300, 60.0, 32) if args.quick else (1200, 60.0, 64)
    if args.case:
        kind, scheduler = args.case.split(":")
        print(json.dumps(run_case(n_px, stride_m, chunk, kind, scheduler)))
        return {}
    cases = []
    for kind in ("id", "topo2vec"):
        for scheduler in ("threads", "distributed"):
            cmd = [sys.executable, __file__, "--case", f"{kind}:{scheduler}"] + (["--quick"] if args.quick else [])
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
            cases.append(json.loads(res.stdout.strip().splitlines()[-1]))
            c = cases[-1]
            print(f"{kind:9s} {scheduler:12s} {c['places']:8d} places {c['places_per_s']:10.0f} places/s  "
                  f"output {c['embedding_mib']:7.1f} MiB  traced peak {c['traced_peak_mib']:6.1f} MiB  "
                  f"RSS growth {c['rss_growth_mib']:6.1f} MiB")
    import dask
    import torch

    result = {"benchmark": "regional embedding (embed_region -> zarr)", "terrain_px": [n_px, n_px], "res_m": RES_M,
              "stride_m": stride_m, "patch": [17, 17], "quick": bool(args.quick), "cases": cases,
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                          "dask": dask.__version__}}
    write_json(args.out, result)
    print("wrote", args.out)
    return result


if __name__ == "__main__":
    main()
