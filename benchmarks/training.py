"""Benchmark of topo2vec training speed on this machine: today's path against the faster ones, in one run.

    .venv/bin/python benchmarks/training.py [--quick] [--rounds 3] [--compile] [--out benchmarks/results/training.json]

The machine may be shared and noisy, so every comparison is made inside one run, interleaved, and reported as
ratios: each round measures every cell once (variant x path x setting, in a rotating order), each cell keeps
its best round, and a ratio is also taken within each round and summarised by its median over rounds.

Variants: topo2vec-1 (k=1, 30 m/px), topo2vec-4 (k=4, 120 m/px), topo2vec-adv (k=4 + discriminator), batch 64.
Paths: ``today`` (the code before this benchmark's changes: float32, the adversarial step that resized x three
times and computed d's parameter gradients in the generator step, the sampler's nodata check sampling every
candidate's patch and target even on terrain without nodata), ``float32`` (today's arithmetic bit for bit, with
those two exact savings) and ``bf16`` (bfloat16 autocast, with the savings).
(a) model only: Algorithm-1 steps (forward, backward, Adam) on one realistic chunk of fractal pairs (sampled
    once, outside the timing), 1 and 2 torch threads;
(b) the full loop (``topo2vec_lib.models.train_model``) with fractal pairs sampled on the fly from a
    ~2000 x 2000 px in-memory terrain, in four settings: torch threads 2 (all cores, today's ``threads: 0``) or
    1, sampling in the main thread (``workers: 0``, today) or one background thread (``workers: 1``);
(d) with ``--parallel``: throughput of two trainings at once in two worker processes of one torch thread each
    (how ``make ablations`` runs, ``jobs: 2``) against one training at a time with 2 threads (today), images per
    wall second of both together, best of the rounds;
(c) with ``--compile``: ``compile: true`` at 1 thread, the compile time of a cold cache (a fresh
    TORCHINDUCTOR_CACHE_DIR), the steady rate against eager and the images after which compiling pays back.
"Today's path" is ``today`` with threads 2 and workers 0 (``train.threads: 0`` on 2 cores); every full-loop cell is
also given as a ratio to it.
Rates are per wall second (and per CPU second of this process); the load average is recorded per cell.
Also: embedding speed (``embed_patches``, ``embed``), and the wall time of each variant at ``params.yaml``
``train.images`` x ``epochs`` per path and setting. Writes JSON atomically.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
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
from topo2vec_lib.models.networks import Encoder, discriminator_input  # noqa: E402
from topo2vec_lib.models.topo2vec import Topo2VecMethod, sample_chunk  # noqa: E402
from topo2vec_lib.models.trainer import fit, torch_threads  # noqa: E402
from topo2vec_lib.sampler import PatchSampler  # noqa: E402
from topo2vec_lib.storage import write_json  # noqa: E402

BATCH = 64
VARIANTS = {
    "topo2vec-1": {"kind": "topo2vec", "k": 1, "adversarial": False, "train_res_m": [30]},
    "topo2vec-4": {"kind": "topo2vec", "k": 4, "adversarial": False, "train_res_m": [120]},
    "topo2vec-adv": {"kind": "topo2vec", "k": 4, "adversarial": True, "train_res_m": [120], "lr_g": 1.6e-3},
}
PATHS = ("today", "float32", "bf16")
SETTINGS = {"threads=2, workers=0": (2, 0), "threads=2, workers=1": (2, 1),
            "threads=1, workers=0": (1, 0), "threads=1, workers=1": (1, 1)}
TODAY = ("today", "threads=2, workers=0")


def clock():
    return time.perf_counter(), time.process_time()


def rates(n: int, start) -> dict:
    wall, cpu = clock()
    return {"per_wall_s": n / (wall - start[0]), "per_cpu_s": n / max(cpu - start[1], 1e-9),
            "load1": os.getloadavg()[0]}


class TodayMethod(Topo2VecMethod):
    """The topo2vec method as it was before: the adversarial step resized x three times and let the generator's
    loss compute d's parameter gradients (then discarded). Same float32 arithmetic (tests/test_trainer.py)."""

    def step(self, batch) -> dict[str, float]:
        if not self.cfg.adversarial:
            return super().step(batch)
        x, y = batch
        cfg, nets, opts = self.cfg, self.modules, self.optimizers
        y_hat = nets["decoder"](nets["encoder"](x))
        loss_l1 = self.l1(y_hat, y)
        d, mode = nets["discriminator"], cfg.d_input_upsample
        fake_logits = d(discriminator_input(x, y_hat, mode))
        loss_gan = self.bce(fake_logits, torch.ones_like(fake_logits))
        loss_g = cfg.lambda_l1 * loss_l1 + cfg.lambda_gan * loss_gan
        opts["generator"].zero_grad(set_to_none=True)
        loss_g.backward()
        opts["generator"].step()
        opts["discriminator"].zero_grad(set_to_none=True)
        real_logits = d(discriminator_input(x, y, mode))
        fake_logits = d(discriminator_input(x, y_hat.detach(), mode))
        loss_d = self.bce(real_logits, torch.ones_like(real_logits)) + \
            self.bce(fake_logits, torch.zeros_like(fake_logits))
        loss_d.backward()
        opts["discriminator"].step()
        return {"loss_l1": loss_l1.item(), "loss_gan_g": loss_gan.item(), "loss_g": loss_g.item(),
                "loss_d": loss_d.item()}


def today_sampler(sampler: PatchSampler) -> PatchSampler:
    """A view of ``sampler`` that runs the nodata check on every level, as before (same places)."""
    import copy

    old = copy.copy(sampler)
    old._level_has_nan = [True] * len(sampler.pyramid)
    return old


def build(config: dict, path: str, sampler, compiled: bool = False) -> Topo2VecMethod:
    precision = "float32" if path == "today" else path
    cfg = Topo2VecConfig.from_dict({**config, "batch_size": BATCH, "precision": precision, "compile": compiled})
    torch.manual_seed(0)
    cls = TodayMethod if path == "today" else Topo2VecMethod
    method = cls(cfg, sampler, seed=0, device=torch.device("cpu"))
    method.build()
    return method


def model_only(method: Topo2VecMethod, batches: list, threads: int) -> dict:
    """(a) images/s of Algorithm-1 steps on prepared batches (no sampling)."""
    torch.set_num_threads(threads)
    method.step(batches[0])                              # warm-up (oneDNN primitives of this thread count)
    start = clock()
    for b in batches:
        method.step(b)
    return rates(len(batches) * BATCH, start)


def full_loop(config: dict, path: str, sampler, steps: int, threads: int, workers: int, tmp: Path) -> dict:
    """(b) images/s of the training loop with on-the-fly sampling (one epoch of ``steps`` batches)."""
    cfg = {**config, "batch_size": BATCH, "images": steps * BATCH, "epochs": 1, "workers": workers,
           "threads": threads, "chunk_batches": 16, "log_steps": 0,
           "precision": "float32" if path == "today" else path}
    start = clock()
    if path == "today":                          # the same loop (train_model -> fit) with the method as it was
        c = Topo2VecConfig.from_dict(cfg)
        with torch_threads(c.threads):
            out = fit(TodayMethod(c, today_sampler(sampler), seed=0, device=torch.device("cpu")),
                      out_path=tmp / "m.pt", progress=False)
    else:
        out = train_model(cfg, sampler, out_path=tmp / "m.pt", progress=False, seed=0)
    r = rates(out["images_seen"], start)
    r["images"] = out["images_seen"]
    return r


def compile_case(config: dict, precision: str, batches: list) -> dict:
    """(c) cold compile time and steady rates, compiled against eager, 1 thread; run in this process with a
    fresh inductor cache directory."""
    torch.set_num_threads(1)
    eager = build(config, precision, None)
    t0 = clock()
    comp = build(config, precision, None, compiled=True)
    comp.step(batches[0])
    compile_s = time.perf_counter() - t0[0]
    rounds = {"eager": [], "compiled": []}
    for _ in range(3):
        for name, m in (("eager", eager), ("compiled", comp)):
            rounds[name].append(model_only(m, batches, 1)["per_wall_s"])
    e, c = max(rounds["eager"]), max(rounds["compiled"])
    saved_per_image = 1 / e - 1 / c
    return {"compile_s": compile_s, "eager_per_wall_s": e, "compiled_per_wall_s": c, "ratio": c / e,
            "pays_back_after_images": compile_s / saved_per_image if saved_per_image > 0 else None,
            "load1": os.getloadavg()[0]}


_WORKER: dict = {}


def _init_worker(n_px: int) -> None:
    """Build the benchmark terrain's sampler once per worker process (outside every timing)."""
    _WORKER["sampler"] = PatchSampler(fractal_terrain(n_px), threads=1)


def _parallel_worker(args: tuple) -> int:
    """One training in a worker process; returns the images it saw."""
    config, path, steps, threads = args
    with tempfile.TemporaryDirectory() as tmp:
        return int(full_loop(config, path, _WORKER["sampler"], steps, threads, 0, Path(tmp))["images"])


def parallel_case(config: dict, steps: int, rounds: int, n_px: int = 2000) -> dict:
    """(d) images per wall second of ``jobs`` trainings at once, each cell in its own pool of exactly ``jobs``
    worker processes (started and warmed up before any clock, so no idle worker shares the cores): today's path
    one at a time with 2 threads, against 2 jobs x 1 thread in float32 and bf16; best of the rounds per cell and
    the within-round ratio to today."""
    import concurrent.futures
    import multiprocessing

    cells = {"today: 1 job x 2 threads": (1, 2, "today"), "2 jobs x 1 thread, float32": (2, 1, "float32"),
             "2 jobs x 1 thread, bf16": (2, 1, "bf16")}
    ctx = multiprocessing.get_context("spawn")
    out: dict = {c: [] for c in cells}
    pools = {}
    try:
        for cell, (jobs, threads, path) in cells.items():
            pools[cell] = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                                                 initargs=(n_px,))
            list(pools[cell].map(_parallel_worker, [(config, path, 2, threads)] * jobs))     # start and warm up
        for r in range(rounds):
            order = list(cells.items())
            for cell, (jobs, threads, path) in order[r % len(order):] + order[:r % len(order)]:
                start = clock()
                images = sum(pools[cell].map(_parallel_worker, [(config, path, steps, threads)] * jobs))
                out[cell].append(rates(images, start))
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True)
    best = {c: max(v, key=lambda r: r["per_wall_s"]) for c, v in out.items()}
    ratio = [b["per_wall_s"] / a["per_wall_s"] for a, b in zip(out["today: 1 job x 2 threads"],
                                                               out["2 jobs x 1 thread, bf16"])]
    return {"cells": best, "steps_per_job": steps, "per_cpu_s_note": "per_cpu_s counts this process only: ignore",
            "jobs2_bf16_over_today": {"median": statistics.median(ratio), "min": min(ratio), "max": max(ratio)}}


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


def summarise_ratios(rounds: list[dict], num: tuple, den: tuple) -> dict:
    """Median and range over rounds of the within-round ratio num/den (per wall second)."""
    r = [row[num]["per_wall_s"] / row[den]["per_wall_s"] for row in rounds if num in row and den in row]
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "rounds": len(r)} if r else {}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps, one round (a smoke run)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes per variant)")
    ap.add_argument("--parallel", action="store_true", help="also measure two 1-thread trainings at once")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "training.json"))
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    args = ap.parse_args(argv)
    steps_a, steps_b, n_embed, rounds = (4, 6, 20_000, 1) if args.quick else (16, 32, 50_000, args.rounds)
    variants = {v: VARIANTS[v] for v in args.variants.split(",")}

    terrain = fractal_terrain(2000)
    sampler = PatchSampler(terrain)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "python": platform.python_version(), "loadavg_start": list(os.getloadavg()),
                          "cpu_bf16": _cpu_flags()},
              "batch_size": BATCH, "terrain_px": list(terrain.shape), "quick": args.quick, "rounds": rounds,
              "today": {"precision": TODAY[0], "setting": TODAY[1]}}
    threads_before = torch.get_num_threads()
    data = {}
    for name, cfg in variants.items():       # one realistic chunk per variant, sampled once (not timed)
        c = Topo2VecConfig.from_dict({**cfg, "batch_size": BATCH, "chunk_batches": steps_a, "images": steps_a * BATCH})
        data[name] = list(Topo2VecMethod(c, sampler, seed=0, device=torch.device("cpu"))
                          .steps(sample_chunk(sampler, c, 0, 0, 0, steps_a)))
    methods = {(n, p): build(cfg, p, sampler) for n, cfg in variants.items() for p in PATHS}

    model_rounds: dict[str, list] = {n: [] for n in variants}
    full_rounds: dict[str, list] = {n: [] for n in variants}
    cells_b = [(p, s) for p in PATHS for s in SETTINGS]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, cfg in variants.items():
                row = {}
                order = [(p, t) for t in (1, 2) for p in PATHS]
                for p, t in order[r % len(order):] + order[:r % len(order)]:
                    row[(p, t)] = model_only(methods[(name, p)], data[name], t)
                model_rounds[name].append(row)
                row = {}
                for p, s in cells_b[r % len(cells_b):] + cells_b[:r % len(cells_b)]:
                    row[(p, s)] = full_loop(cfg, p, sampler, steps_b, *SETTINGS[s], Path(tmp))
                full_rounds[name].append(row)
                best_today = row[TODAY]["per_wall_s"]
                print(f"round {r + 1}/{rounds} {name}: model-only 1 thread float32 "
                      f"{model_rounds[name][-1][('float32', 1)]['per_wall_s']:.0f}, bf16 "
                      f"{model_rounds[name][-1][('bf16', 1)]['per_wall_s']:.0f} img/s; full loop today "
                      f"{best_today:.0f} img/s, " + ", ".join(
                          f"[{p}, {s}] x{row[(p, s)]['per_wall_s'] / best_today:.2f}" for p, s in cells_b
                          if (p, s) != TODAY) + f" (load {os.getloadavg()[0]:.1f})", flush=True)

    torch.set_num_threads(threads_before)
    runs = {}
    for name in variants:
        mo = {f"{p}, threads={t}": max((row[(p, t)] for row in model_rounds[name]), key=lambda v: v["per_wall_s"])
              for p in PATHS for t in (1, 2)}
        fl = {f"{p}, {s}": max((row[(p, s)] for row in full_rounds[name]), key=lambda v: v["per_wall_s"])
              for p, s in cells_b}
        runs[name] = {
            "model_only": mo,
            "model_only_bf16_over_float32": {f"threads={t}": summarise_ratios(model_rounds[name], ("bf16", t),
                                                                              ("float32", t)) for t in (1, 2)},
            "model_only_float32_over_today": {f"threads={t}": summarise_ratios(model_rounds[name], ("float32", t),
                                                                               ("today", t)) for t in (1, 2)},
            "full_loop": fl,
            "full_loop_over_today": {f"{p}, {s}": summarise_ratios(full_rounds[name], (p, s), TODAY)
                                     for p, s in cells_b},
            "full_over_model_threads1_float32": fl["float32, threads=1, workers=0"]["per_wall_s"]
            / mo["float32, threads=1"]["per_wall_s"],
        }
    result["runs"] = runs

    if args.compile:
        result["compile"] = {}
        for name, cfg in variants.items():
            with tempfile.TemporaryDirectory() as cache:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache          # a cold cache: the real first-run cost
                torch._dynamo.reset()
                result["compile"][name] = {p: compile_case(cfg, p, data[name]) for p in ("float32", "bf16")}
            cases = result["compile"][name].items()
            print(f"compile {name}: " + ", ".join(
                f"{p} {c['compile_s']:.0f} s, x{c['ratio']:.2f} steady, pays back after "
                f"{c['pays_back_after_images'] or float('inf'):.0f} images" for p, c in cases), flush=True)
        torch.set_num_threads(threads_before)

    if args.parallel:
        result["parallel"] = {name: parallel_case(cfg, steps_b, rounds) for name, cfg in variants.items()}
        for name, r in result["parallel"].items():
            print(f"parallel {name}: " + ", ".join(f"{k} {v['per_wall_s']:.0f} img/s" for k, v in r["cells"].items())
                  + f"; two 1-thread jobs over today: x{r['jobs2_bf16_over_today']['median']:.2f}", flush=True)
        torch.set_num_threads(threads_before)

    embeds = [embedding(sampler, n_embed) for _ in range(1 if args.quick else 2)]
    result["embedding"] = {key: max((e[key] for e in embeds), key=lambda r: r["per_wall_s"]) for key in embeds[0]}

    params = yaml.safe_load(Path(args.params).read_text()) if Path(args.params).exists() else {}
    train = (params or {}).get("train", {})
    images, epochs = int(train.get("images", 100_000)), int(train.get("epochs", 1))
    estimate = {name: {cell: images * epochs / r["per_wall_s"] for cell, r in runs[name]["full_loop"].items()}
                for name in variants}
    totals = {cell: sum(estimate[n][cell] for n in variants) for cell in next(iter(estimate.values()))}
    result["estimate"] = {"images": images, "epochs": epochs, "wall_s": estimate, "total_wall_s": totals}
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    print(table(result))
    write_json(args.out, result)
    return result


def _cpu_flags() -> list[str]:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f")})


def table(result: dict) -> str:
    """Plain-text summary: per variant, the full loop's best rate per cell and its median ratio to today."""
    lines = ["variant        path     setting                  img/s  x today (median of rounds; min-max)  load1"]
    for name, run in result["runs"].items():
        for cell, r in run["full_loop"].items():
            p, s = cell.split(", ", 1)
            ratio = run["full_loop_over_today"][cell]
            lines.append(f"{name:14s} {p:8s} {s:22s} {r['per_wall_s']:7.0f}  x{ratio['median']:.2f} "
                         f"({ratio['min']:.2f}-{ratio['max']:.2f})                  {r['load1']:.1f}")
        for what in ("model_only_float32_over_today", "model_only_bf16_over_float32"):
            for t, ratio in run[what].items():
                lines.append(f"{name:14s} {what.replace('_', ' ')} at {t}: x{ratio['median']:.2f} "
                             f"({ratio['min']:.2f}-{ratio['max']:.2f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
