"""Does bfloat16 training change what the embeddings know? Exp 1 probes of float32- and bf16-trained models.

    .venv/bin/python benchmarks/precision_fidelity.py [--models topo2vec-4,topo2vec-1] [--seeds 5]
        [--images 100000] [--out benchmarks/results/precision_fidelity.json]

Needs the study's terrain and labels (``dvc repro labels``). For each model of ``params.yaml`` it trains, on the
train region with the study's configuration, three runs at ``--images`` images: float32 and bf16 with the study
seed (the same places, the same initial weights: only the arithmetic differs), and float32 with the next seed
(the training-seed noise the bf16 difference is compared with). Every run then gets the Exp 1 SVM probes
(``params.yaml`` ``exp1``: classes, sizes, C grid) over ``--seeds`` probe seeds, with the same places for every
run within a seed. Written (atomically): per class and model the paired difference bf16 - float32 and
float32(seed+1) - float32 (mean, sd, t-test and Wilcoxon p over probe seeds), every probe row, training wall
times and the load average. Trained models are kept in ``--work`` and reused by a second call.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from topo2vec_lib import evaluation as ev  # noqa: E402
from topo2vec_lib.labels import read_labels  # noqa: E402
from topo2vec_lib.models import load_embedder, model_config, train_model  # noqa: E402
from topo2vec_lib.params import load_params, model_parameters  # noqa: E402
from topo2vec_lib.sampler import PatchSampler  # noqa: E402
from topo2vec_lib.storage import write_json  # noqa: E402
from topo2vec_lib.terrain import open_region  # noqa: E402


def paired(df: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per class: accuracy of run ``b`` minus run ``a`` over probe seeds (paired), mean, sd and p-values."""
    tests = ev.paired_tests(df[df["model"].isin([a, b])], reference=b)
    sd = {cls: float(np.std(part.pivot_table(index="seed", columns="model", values="accuracy")
                            .pipe(lambda t: t[b] - t[a]), ddof=1))
          for cls, part in df[df["model"].isin([a, b])].groupby("class")}
    tests["sd_diff"] = tests["class"].map(sd)
    return tests.assign(a=a, b=b)[["class", "a", "b", "n", "mean_diff", "sd_diff", "t_p", "wilcoxon_p"]]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="topo2vec-4,topo2vec-1")
    ap.add_argument("--seeds", type=int, default=5, help="probe seeds")
    ap.add_argument("--images", type=int, default=None, help="training images (default: params.yaml train.images)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--terrain-dir", default=str(REPO / "data" / "terrain"))
    ap.add_argument("--labels-dir", default=str(REPO / "data" / "labels"))
    ap.add_argument("--work", default=str(REPO / "models" / "precision_fidelity"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "precision_fidelity.json"))
    args = ap.parse_args(argv)
    params = load_params(args.params)
    study_seed, exp1 = int(params["seed"]), params["exp1"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    samplers = {r: PatchSampler(open_region(args.terrain_dir, r)) for r in ("train", "test")}
    runs, trained = {}, {}
    load = {"start": list(os.getloadavg())}
    for model in args.models.split(","):
        config, _ = model_parameters(model, args.params)
        overrides = {"threads": args.threads, "workers": args.workers}
        if args.images:
            overrides["images"] = args.images
        for precision, seed in (("float32", study_seed), ("bf16", study_seed), ("float32", study_seed + 1)):
            name = f"{model}/{precision}/seed{seed}"
            path = work / f"{model}-{precision}-seed{seed}.pt"
            if not path.exists():
                cfg = model_config({**config, **overrides, "precision": precision}, complete=True)
                t0 = time.perf_counter()
                out = train_model(cfg, samplers["train"], out_path=path, seed=seed, progress=False)
                trained[name] = {"wall_s": time.perf_counter() - t0, "images": out["images_seen"],
                                 "images_per_s": out["images_per_s"], "final_loss": out["final_loss"],
                                 "loadavg": list(os.getloadavg())}
                print(f"trained {name}: {trained[name]['wall_s']:.0f} s, loss {out['final_loss']:.4f}", flush=True)
            runs[name] = load_embedder(path)
    labels = read_labels(args.labels_dir, exp1["classes"])
    t0 = time.perf_counter()
    df = ev.run_probe_experiment(runs, samplers, labels, exp1["classes"], exp1["n_train"], exp1["n_test"],
                                 args.seeds, res_m=float(exp1["res_m"]), seed=study_seed,
                                 min_neg_distance_m=exp1["min_neg_distance_m"], C_grid=exp1["svm_C"],
                                 progress=False)
    probe_s = time.perf_counter() - t0
    comparisons = []
    for model in args.models.split(","):
        ref = f"{model}/float32/seed{study_seed}"
        comparisons.append(paired(df, ref, f"{model}/bf16/seed{study_seed}").assign(what="bf16 - float32"))
        comparisons.append(paired(df, ref, f"{model}/float32/seed{study_seed + 1}")
                           .assign(what="float32 seed+1 - float32 (training-seed noise)"))
    table = pd.concat(comparisons, ignore_index=True)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    load["end"] = list(os.getloadavg())
    result = {"images": args.images or int(params["train"]["images"]), "probe_seeds": args.seeds,
              "threads": args.threads, "workers": args.workers, "torch": torch.__version__, "loadavg": load,
              "probe_wall_s": probe_s, "trained": trained, "summary": ev.metrics_dict(ev.summarise(df)),
              "paired": table.to_dict(orient="records"), "rows": df.to_dict(orient="records")}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
