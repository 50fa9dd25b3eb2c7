"""Benchmark of topo2vec training and embedding speed on this machine (CPU).

    .venv/bin/python benchmarks/training.py [--quick] [--out benchmarks/results/training.json]

One run measures, for 1 and 2 torch threads:
(a) model only: Algorithm-1 steps (forward, backward, Adam) on random tensors, batch 64, for topo2vec-1 (k=1),
    topo2vec-4 (k=4) and topo2vec-adv (k=4 + discriminator);
(b) the full training loop (``topo2vec_lib.models.train_model``) with fractal pairs sampled on the fly from a
    ~2000 x 2000 px in-memory terrain, with sampling in the main thread (workers=0) and in one background
    thread (workers=1), for the same three variants;
(c) embedding: ``Topo2Vec.embed_patches`` patches/s, and ``embed`` (sampling + normalising + encoding) places/s.
Rates are given per wall second and per CPU second of this process, each the best of 3 runs (other jobs on a
shared machine only slow runs down; 2 torch threads suffer most, as OpenMP threads wait for each other).
It then estimates the wall time of training each variant at ``params.yaml`` ``train``
``images`` x ``epochs`` from the best full-loop rate, and writes everything as JSON (atomically).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from common import fractal_terrain  # benchmarks/common.py (the script folder is on sys.path)

from topo2vec_lib.models import Topo2Vec, train_model  # noqa: E402
from topo2vec_lib.models.config import Topo2VecConfig  # noqa: E402
from topo2vec_lib.models.networks import Encoder  # noqa: E402
from topo2vec_lib.models.topo2vec import Topo2VecMethod  # noqa: E402
from topo2vec_lib.sampler import PatchSampler  # noqa: E402
from topo2vec_lib.storage import write_json  # noqa: E402

BATCH = 64
VARIANTS = {
    "topo2vec-1": {"kind": "topo2vec", "k": 1, "adversarial": False, "train_res_m": [30]},
    "topo2vec-4": {"kind": "topo2vec", "k": 4, "adversarial": False, "train_res_m": [120]},
    "topo2vec-adv": {"kind": "topo2vec", "k": 4, "adversarial": True, "train_res_m": [120], "lr_g": 1.6e-3},
}



def clock():
    return time.perf_counter(), time.process_time()


def rates(n: int, start) -> dict:
    wall, cpu = clock()
    return {"per_wall_s": n / (wall - start[0]), "per_cpu_s": n / max(cpu - start[1], 1e-9)}


def best_of(fn, repeats: int) -> dict:
    """The fastest of ``repeats`` runs of ``fn() -> rates`` (other jobs on a shared machine only slow runs down)."""
    return max((fn() for _ in range(repeats)), key=lambda r: r["per_wall_s"])


def model_only(config: dict, steps: int) -> dict:
    """(a) images/s of Algorithm-1 steps on random tensors (no sampling)."""
    cfg = Topo2VecConfig.from_dict({**config, "batch_size": BATCH})
    torch.manual_seed(0)
    method = Topo2VecMethod(cfg, None, seed=0, device=torch.device("cpu"))
    method.build()
    x = torch.rand(BATCH, 1, 17, 17).contiguous(memory_format=torch.channels_last)
    y = torch.rand(BATCH, 1, 16 * cfg.k, 16 * cfg.k).contiguous(memory_format=torch.channels_last)
    for _ in range(3):                                   # warm-up (oneDNN primitive creation)
        method.step((x, y))
    start = clock()
    for _ in range(steps):
        method.step((x, y))
    return rates(steps * BATCH, start)


def full_loop(config: dict, sampler, steps: int, workers: int, tmp: Path) -> dict:
    """(b) images/s of the training loop with on-the-fly sampling (one epoch of ``steps`` batches)."""
    cfg = {**config, "batch_size": BATCH, "images": steps * BATCH, "epochs": 1, "workers": workers,
           "chunk_batches": 16, "log_steps": 0}
    start = clock()
    out = train_model(cfg, sampler, out_path=tmp / "m.pt", progress=False, seed=0)
    r = rates(out["images_seen"], start)
    r["images"] = out["images_seen"]
    return r


def embedding(sampler, n: int) -> dict:
    torch.manual_seed(0)
    model = Topo2Vec(Encoder(), {"k": 4, "train_res_m": [120.0], "embed_res_m": 30.0})
    x = np.random.default_rng(0).random((n, 17, 17), dtype=np.float32)
    model.embed_patches(x[:4096])
    start = clock()
    model.embed_patches(x)
    patches = rates(n, start)
    lon, lat = sampler.random_places(n, np.random.default_rng(0), 30.0)
    start = clock()
    model.embed(sampler, lon, lat, 30.0)
    places = rates(n, start)
    return {"embed_patches_per_s": patches, "embed_places_per_s": places}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps (a smoke run)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "training.json"))
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--threads", default="1,2", help="torch thread counts to measure, comma separated")
    args = ap.parse_args(argv)
    steps_a, steps_b, n_embed, repeats = (5, 8, 20_000, 1) if args.quick else (12, 32, 50_000, 3)

    terrain = fractal_terrain(2000)
    sampler = PatchSampler(terrain)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "python": platform.python_version(),
                          "loadavg_start": list(os.getloadavg())},
              "batch_size": BATCH, "terrain_px": list(terrain.shape), "quick": args.quick, "runs": {}}
    threads_before = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            run = {"model_only": {}, "full_loop": {}, "full_over_model": {}}
            for name, cfg in VARIANTS.items():
                run["model_only"][name] = best_of(lambda cfg=cfg: model_only(cfg, steps_a), repeats)
                run["full_loop"][name] = {
                    f"workers={w}": best_of(lambda cfg=cfg, w=w: full_loop(cfg, sampler, steps_b, w, Path(tmp)),
                                            repeats)
                    for w in (0, 1)}
                best = max(run["full_loop"][name].values(), key=lambda r: r["per_wall_s"])
                run["full_over_model"][name] = best["per_wall_s"] / run["model_only"][name]["per_wall_s"]
                print(f"threads={threads} {name}: model {run['model_only'][name]['per_wall_s']:.0f} img/s, "
                      f"full {best['per_wall_s']:.0f} img/s ({run['full_over_model'][name]:.0%})", flush=True)
            embeds = [embedding(sampler, n_embed) for _ in range(repeats)]
            run["embedding"] = {key: max((e[key] for e in embeds), key=lambda r: r["per_wall_s"])
                                for key in embeds[0]}
            print(f"threads={threads} embedding: {run['embedding']['embed_patches_per_s']['per_wall_s']:.0f} "
                  f"patches/s, {run['embedding']['embed_places_per_s']['per_wall_s']:.0f} places/s", flush=True)
            result["runs"][f"threads={threads}"] = run
    torch.set_num_threads(threads_before)

    params = yaml.safe_load(Path(args.params).read_text()) if Path(args.params).exists() else {}
    train = (params or {}).get("train", {})
    images, epochs = int(train.get("images", 100_000)), int(train.get("epochs", 1))
    estimate = {}
    for name in VARIANTS:
        best_key, best = max(((f"{t}, {w}", r) for t, run in result["runs"].items()
                              for w, r in run["full_loop"][name].items()), key=lambda kv: kv[1]["per_wall_s"])
        per_setting = {f"{t}, {w}": images * epochs / r["per_wall_s"] for t, run in result["runs"].items()
                       for w, r in run["full_loop"][name].items()}
        estimate[name] = {"images": images * epochs, "best_setting": best_key,
                          "images_per_s": best["per_wall_s"], "wall_s": images * epochs / best["per_wall_s"],
                          "wall_s_per_setting": per_setting}
    estimate["total_wall_s"] = sum(e["wall_s"] for e in estimate.values())
    settings = estimate[next(iter(VARIANTS))]["wall_s_per_setting"]
    estimate["total_wall_s_per_setting"] = {s: sum(estimate[n]["wall_s_per_setting"][s] for n in VARIANTS)
                                            for s in settings}
    result["estimate"] = {"images": images, "epochs": epochs, **estimate}
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    print(f"estimated wall time at {images} images x {epochs} epochs: "
          + ", ".join(f"{n} {estimate[n]['wall_s'] / 60:.1f} min" for n in VARIANTS)
          + f"; total {estimate['total_wall_s'] / 60:.1f} min (best setting per variant); total per setting: "
          + ", ".join(f"[{s}] {v / 60:.1f} min" for s, v in estimate["total_wall_s_per_setting"].items()))
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
