"""Benchmark of similarity search (topo2vec_lib.search): standardisation, and exact vs approximate k-NN indexes.

    .venv/bin/python benchmarks/search.py [--cells 1000000] [--queries 1000] [--vectors auto|real|synthetic]
        [--model models/topo2vec-4.pt] [--terrain data/terrain] [--threads 2] [--cache DIR] [--quick]
        [--candidates exact-numpy,faiss-ivf,...] [--out benchmarks/results/search.json]

The default run (1M cells, every candidate) takes about 40 min on 2 shared cores, most of it building the
HNSW and pynndescent indexes; ``--quick`` is a smoke run.

Vectors. ``real`` (``auto`` when the checkpoint and the terrain exist): ``regional.embed_region`` of the
model over the study's test terrain at 30 m/px on a grid whose stride gives at least ``--cells`` valid cells.
``synthetic``: random vectors with low-dimensional structure (a smooth 2-D field of 12 latent factors
through a random 12 -> 128 map with ReLU and 5 % noise), so neighbouring cells are alike as in a real field.

Standardisation (real vectors only): how should vectors be compared to retrieve terrain alike? Four ways:
Euclidean distance on raw vectors (the paper's Exp. 4), cosine on raw, on centred (field mean subtracted) and
on z-scored vectors (statistics of the field). Labels of the test terrain come from the study's rules
(params.yaml; peak, saddle, river, cliff), the mean of 5 labelled query places is the query, the same draws
for every way. Protocol ``candidates``: Exp. 4's precision@10 among 200 labelled places per class and 800
random ones (``maps.retrieval_candidates``), 20 draws per class for each of ``--seeds`` candidate sets.
Protocol ``grid``: ``search.similarity_field`` + ``search.top_k`` (k = 10, 500 m apart, the queries'
neighbourhoods excluded) over the whole field, ``--repeats`` draws per class; a match is a hit within 90 m
of a label of the class (``chance``: the fraction of valid cells that are).

Indexes. The vectors are put into the default search space of ``EmbeddingIndex`` (centred by the indexed
cells' mean, unit length: cosine), ``--queries`` cells are held out as queries (not indexed), and their exact
50 nearest neighbours are computed by numpy brute force (the ground truth). Each candidate runs in a fresh
subprocess (so its peak RSS is its own) with ``--threads`` threads: build time, size of the serialised index,
RSS growth over the loaded vectors, and for a sweep of its search parameter the query time per query (all
queries in one batch, after a warm-up call) and recall@10 / @50 against the exact neighbours (a returned
vector counts when its true distance is within 1e-5 of the k-th exact distance, so ties between identical
cells are not misses). Candidates: numpy brute force, the library's ``exact`` (torch), scikit-learn brute force
and BallTree (exact references), hnswlib HNSW, faiss HNSW, faiss IVF-Flat (the library's builder, swept over
nprobe), pynndescent, and the library's ``EmbeddingIndex(method="auto")`` with its defaults. A candidate whose
library is not installed is recorded as skipped; one past ``--timeout-s`` as timed out.
Writes everything with machine info as JSON (atomically) and prints a table.
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
KS = (10, 50)
CANDIDATES = ("exact-numpy", "topo2vec-exact", "sklearn-brute", "sklearn-balltree", "hnswlib", "faiss-hnsw",
              "faiss-ivf", "pynndescent", "topo2vec-auto")
EXACT = ("exact-numpy", "topo2vec-exact", "sklearn-brute", "sklearn-balltree")
SWEEPS = {"hnswlib": [10, 20, 40, 60, 80, 120, 160, 240, 320], "faiss-hnsw": [10, 20, 40, 60, 80, 120, 160, 240, 320],
          "faiss-ivf": [1, 2, 4, 8, 12, 16, 24, 32, 48, 64], "pynndescent": [0.0, 0.05, 0.1, 0.2, 0.3]}
PARAM_NAME = {"hnswlib": "ef", "faiss-hnsw": "efSearch", "faiss-ivf": "nprobe", "pynndescent": "epsilon"}
TARGET_RECALL = 0.95
SLOW_QUERIES = 20           # BallTree answers this many queries (it is slow in 128-d)


# ------------------------------------------------------------------------------------------- vectors

def real_field(model: Path, terrain_dir: Path, cells: int, cache: Path | None):
    """(field, terrain, embedder, sampler, description): the model over the test terrain, >= ``cells`` cells."""
    import xarray as xr

    from topo2vec_lib.models import load_embedder
    from topo2vec_lib.regional import embed_region
    from topo2vec_lib.sampler import PatchSampler
    from topo2vec_lib.terrain import open_region

    terrain = open_region(terrain_dir, "test").load()
    sampler = PatchSampler(terrain)
    left, bottom, right, top = sampler.bounds_xy
    usable = min(right - left, top - bottom) - 17 * RES_M           # a patch must fit
    stride = float(np.floor(usable / np.sqrt(cells * 1.01)))
    embedder = load_embedder(model)
    key = f"field-{model.stem}-{os.path.getmtime(model):.0f}-{stride:g}.zarr"
    path = cache / key if cache else None
    t0 = time.perf_counter()
    cached = path is not None and path.exists()
    if cached:
        field = xr.open_zarr(path, consolidated=False).load()
    else:
        field = embed_region(embedder, sampler, RES_M, stride, chunk=128, path=path)
        field = field.load()
    desc = {"kind": "real", "model": str(model), "terrain": f"{terrain_dir}/test (region {sampler.region!r}, "
            f"{terrain.shape[0]} x {terrain.shape[1]} px at {sampler.res_m:g} m)", "res_m": RES_M,
            "stride_m": stride, "grid": [int(field.sizes["y"]), int(field.sizes["x"])],
            "embed_s": round(time.perf_counter() - t0, 1), "embed_cached": cached}
    return field, terrain, embedder, sampler, desc


def synthetic_vectors(cells: int, dim: int = 128, latent: int = 12, seed: int = 0):
    """``(cells, dim)`` float32 with low-dimensional structure: smooth latent fields over a square grid."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(cells)))
    z = np.stack([gaussian_filter(rng.normal(size=(side, side)), sigma=s) for s in
                  np.geomspace(1.5, 12, latent)], axis=-1).reshape(-1, latent)[:cells]
    z = (z - z.mean(0)) / z.std(0)
    v = np.maximum(z @ rng.normal(size=(latent, dim)) / np.sqrt(latent), 0)
    v += 0.05 * rng.normal(size=v.shape) * v.std()
    return v.astype(np.float32), {"kind": "synthetic", "latent_dims": latent, "grid": [side, side],
                                  "description": "smooth 2-D fields of 12 latent factors, random map to 128-d, ReLU, "
                                                 "5% noise"}


# ------------------------------------------------------------------------------------ standardisation

def study_rules() -> dict:
    """The label rules of the study (params.yaml ``labels`` keys that are rule parameters)."""
    from topo2vec_lib.labels import RULE_DEFAULTS
    from topo2vec_lib.params import load_params

    labels = load_params(REPO / "params.yaml").get("labels", {})
    return {k: v for k, v in labels.items() if k in RULE_DEFAULTS}


MODES = {"euclidean_raw": None, "cosine_raw": "none", "cosine_centred": "center", "cosine_zscore": "zscore"}
CLASSES = ["peak", "saddle", "river", "cliff"]


def _scores(vec: np.ndarray, qm: np.ndarray, mode: str, stds: dict) -> np.ndarray:
    """Similarity (larger = nearer) of vectors ``(N, D)`` to the mean query ``qm (D,)``, float64."""
    v, q = vec.astype(np.float64), qm.astype(np.float64)
    if MODES[mode] is None:
        return -np.sqrt(np.einsum("ij,ij->i", v - q, v - q))
    if MODES[mode] != "none":
        st = stds[MODES[mode]]
        v, q = (v - st.mean) * st.inv_std, (q - st.mean) * st.inv_std
    with np.errstate(invalid="ignore", divide="ignore"):
        return v @ q / np.linalg.norm(v, axis=1) / np.linalg.norm(q)


def standardisation_study(field, terrain, embedder, sampler, *, repeats: int = 12, seeds=(0, 1, 2), k: int = 10,
                          sep_m: float = 500.0, hit_m: float = 90.0, seed: int = 0) -> dict:
    """Which comparison retrieves labelled terrain alike best: Euclidean on raw vectors (the paper's Exp. 4),
    cosine on raw, centred and z-scored vectors (statistics of the field). Two protocols, same draws for
    every mode: ``candidates`` (Exp. 4's precision@10 among labelled and random places, 20 draws per class
    and seed) and ``grid`` (top-k with NMS over the whole field, hits within ``hit_m`` of a label)."""
    from scipy.spatial import cKDTree

    from topo2vec_lib import maps, search
    from topo2vec_lib.grid import lonlat_to_xy
    from topo2vec_lib.labels import derive_labels
    from topo2vec_lib.regional import embed_xy

    t0 = time.perf_counter()
    rules = study_rules()
    labels = derive_labels(terrain, seed=seed, classes=CLASSES, **rules)
    stds = {m: search.Standardizer.from_field(field, m) for m in ("center", "zscore")}
    out = {"label_rules": rules, "label_counts": labels["class"].value_counts().to_dict(), "modes": MODES}

    # protocol 1: Exp. 4's candidates (maps.retrieval_candidates), precision@10 of the mean of 5 queries
    cand_res = {m: {c: [] for c in CLASSES} for m in MODES}
    for sd in seeds:
        cand = maps.retrieval_candidates(sampler, labels, CLASSES, RES_M, per_class=200, n_random=800, seed=sd)
        x, y = sampler.to_xy(cand["lon"].to_numpy(float), cand["lat"].to_numpy(float))
        vec = embed_xy(embedder, sampler, x, y, RES_M)
        lab = cand["class"].to_numpy()
        ok = np.isfinite(vec).all(axis=1)
        rng = np.random.default_rng(sd)
        for cls in CLASSES:
            for q in [rng.choice(np.flatnonzero(lab == cls), 5, replace=False) for _ in range(20)]:
                rest = ok.copy()
                rest[q] = False
                for m in MODES:
                    top = np.argsort(-_scores(vec[rest], vec[q].mean(axis=0), m, stds), kind="stable")[:k]
                    cand_res[m][cls].append(float(np.mean(lab[rest][top] == cls)))
    out["candidates"] = {"protocol": "exp4: 200 labelled places per class + 800 random, 5 queries, precision@10",
                         "seeds": list(seeds), "draws_per_class_and_seed": 20,
                         "per_class": {m: {c: float(np.mean(v)) for c, v in r.items()} for m, r in cand_res.items()},
                         "per_seed_mean": {m: [float(np.mean([np.mean(r[c][i * 20:(i + 1) * 20]) for c in CLASSES]))
                                               for i in range(len(seeds))] for m, r in cand_res.items()},
                         "mean": {m: float(np.mean([np.mean(v) for v in r.values()])) for m, r in cand_res.items()}}
    print("  candidates protocol, precision@10 per seed:", {m: [round(v, 3) for v in p] for m, p in
                                                           out["candidates"]["per_seed_mean"].items()}, flush=True)

    # protocol 2: the whole grid, top-k with non-maximum suppression
    crs = search.field_crs(field)
    arr = search.embedding_array(field)
    ny, nx, d = arr.shape
    flat = np.asarray(arr.values, np.float32).reshape(-1, d)
    valid = np.isfinite(flat).all(axis=1)
    xs, ys = np.meshgrid(arr["x"].values, arr["y"].values)
    cx, cy = xs.ravel(), ys.ravel()
    blank = arr.isel({arr.dims[2]: 0}, drop=True)
    rng = np.random.default_rng(seed)
    grid = {"k": k, "min_separation_m": sep_m, "hit_radius_m": hit_m, "repeats": repeats, "queries_per_draw": 5,
            "classes": {}}
    for cls in CLASSES:
        t = labels[labels["class"] == cls]
        lx, ly = lonlat_to_xy(crs, t["lon"].to_numpy(), t["lat"].to_numpy())
        tree = cKDTree(np.c_[lx, ly])
        hit_near = tree.query_ball_point(np.c_[cx, cy], hit_m, return_length=True) > 0
        # query cells: valid cells with a label of the class within half a stride
        dist, _ = tree.query(np.c_[cx, cy], distance_upper_bound=field.attrs["stride_m"] / 2)
        q_cells = np.flatnonzero(valid & np.isfinite(dist))
        prec = {m: [] for m in MODES}
        for _ in range(repeats):
            qc = rng.choice(q_cells, 5, replace=False)
            near_q = np.zeros(cx.size, bool)        # the queries' own neighbourhoods are not answers
            for i in qc:
                near_q |= (cx - cx[i]) ** 2 + (cy - cy[i]) ** 2 < sep_m ** 2
            keep = (~near_q & valid).reshape(ny, nx)
            for m in MODES:
                if MODES[m] is None:
                    sim = blank.copy(data=_scores(np.where(valid[:, None], flat, 0), flat[qc].mean(axis=0), m, stds)
                                     .reshape(ny, nx).astype(np.float32))
                else:
                    sim = search.similarity_field(field, flat[qc], standardize=MODES[m],
                                                  standardizer=stds.get(MODES[m]))
                top = search.top_k(sim.where(keep), k, sep_m, crs=crs)
                prec[m].append(float(hit_near[top["row"] * nx + top["col"]].mean()))
        grid["classes"][cls] = {"chance": float(hit_near[valid].mean()), "query_cells": int(q_cells.size),
                                **{m: {"mean": float(np.mean(p)), "std": float(np.std(p))} for m, p in prec.items()}}
    grid["mean"] = {m: float(np.mean([grid["classes"][c][m]["mean"] for c in CLASSES])) for m in MODES}
    out["grid"] = grid
    print("  grid protocol, precision@10:", {m: round(v, 3) for m, v in grid["mean"].items()}, flush=True)
    a_, b_ = (flat[valid][i].astype(np.float64) for i in np.random.default_rng(seed).integers(0, valid.sum(),
                                                                                              (2, 5000)))
    cos = lambda u, w: float(np.mean(np.einsum("ij,ij->i", u, w) / np.linalg.norm(u, axis=1)   # noqa: E731
                                     / np.linalg.norm(w, axis=1)))
    mu = stds["center"].mean
    out["random_pair_cosine"] = {"raw": cos(a_, b_), "centred": cos(a_ - mu, b_ - mu)}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


# ------------------------------------------------------------------------------------ index candidates

def numpy_knn(data: np.ndarray, q: np.ndarray, k: int, q_batch: int = 256, block: int = 65_536):
    """Exact cosine k-NN of unit vectors (the ground truth): float32 products, top-k by argpartition, ties to
    the lower index; ``q_batch x block`` float32 (64 MiB) at a time. Returns (1 - cos (Q, k), indices)."""
    out_d, out_i = [], []
    for q0 in range(0, len(q), q_batch):
        qq = q[q0:q0 + q_batch]
        best_d, best_i = np.zeros((len(qq), 0), np.float32), np.zeros((len(qq), 0), np.int64)
        for b0 in range(0, len(data), block):
            d = 1.0 - qq @ data[b0:b0 + block].T
            kk = min(k, d.shape[1])
            part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            cd = np.concatenate([best_d, np.take_along_axis(d, part, axis=1)], axis=1)
            ci = np.concatenate([best_i, part + b0], axis=1)
            o = np.lexsort((ci, cd), axis=1)[:, :k]
            best_d, best_i = np.take_along_axis(cd, o, axis=1), np.take_along_axis(ci, o, axis=1)
        out_d.append(best_d)
        out_i.append(best_i)
    return np.concatenate(out_d), np.concatenate(out_i)


def recall(data: np.ndarray, q: np.ndarray, idx: np.ndarray, gt_d: np.ndarray, k: int) -> float:
    """Mean fraction of the k returned vectors whose true cosine distance is within 1e-5 of the k-th exact one."""
    idx = np.asarray(idx)[:, :k]
    good = np.zeros(idx.shape, bool)
    for i in range(len(q)):
        ids = idx[i][idx[i] >= 0]
        ids = np.unique(ids)
        dd = 1.0 - data[ids] @ q[i]
        good[i, :ids.size] = dd <= gt_d[i, k - 1] + 1e-5
    return float(good.sum(axis=1).mean() / k)


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM), MiB. Not ``ru_maxrss``: Linux carries that over from the
    parent through fork and exec, so a subprocess of a big parent would start at the parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


IMPORTS = {"topo2vec-exact": ["torch", "faiss"], "topo2vec-auto": ["torch", "faiss"],
           "sklearn-brute": ["sklearn.neighbors"], "sklearn-balltree": ["sklearn.neighbors"], "hnswlib": ["hnswlib"],
           "faiss-hnsw": ["faiss"], "faiss-ivf": ["faiss"], "pynndescent": ["pynndescent"]}


def run_case(name: str, work: Path, threads: int, seed: int) -> dict:
    """Build and query one candidate (in a fresh subprocess). Its libraries are imported before the RSS
    baseline, so ``rss_growth_mib`` is the index and its build, not the libraries' code."""
    import importlib

    for mod in IMPORTS.get(name, []):
        importlib.import_module(mod)
    data = np.load(work / "data.npy")
    q = np.load(work / "queries.npy")
    gt = np.load(work / "gt.npz")
    gt_d = gt["distances"]
    rss0 = peak_rss_mib()
    n, d = data.shape
    res = {"name": name, "threads": threads}
    size_path = work / f"{name}.index"
    sweep = None
    if name == "exact-numpy":
        build_s, nbytes = 0.0, data.nbytes
        search_fn = lambda qq, k, p: numpy_knn(data, qq, k)[1]      # noqa: E731
    elif name in ("topo2vec-exact", "topo2vec-auto"):
        import torch

        from topo2vec_lib.search import EmbeddingIndex

        torch.set_num_threads(threads)
        method = name.split("-")[1]
        # the vectors are already centred and unit length: "none" here is the library's default space
        ix, build_s = timed(lambda: EmbeddingIndex.build(data, method, metric="cosine", standardize="none",
                                                          seed=seed, threads=threads))
        ix.save(size_path)
        nbytes = sum(f.stat().st_size for f in size_path.iterdir())
        res["params"] = {"method": ix.method, **ix.params}
        search_fn = lambda qq, k, p: ix.query(qq, k)[1]     # noqa: E731
    elif name == "sklearn-brute":
        from sklearn.neighbors import NearestNeighbors

        nn_, build_s = timed(lambda: NearestNeighbors(algorithm="brute", n_jobs=threads).fit(data))
        nbytes = data.nbytes
        search_fn = lambda qq, k, p: nn_.kneighbors(qq, k, return_distance=False)    # noqa: E731
    elif name == "sklearn-balltree":
        from sklearn.neighbors import BallTree

        tree, build_s = timed(lambda: BallTree(data, leaf_size=40))
        import pickle

        nbytes = len(pickle.dumps(tree, protocol=5))
        q = q[:SLOW_QUERIES]
        search_fn = lambda qq, k, p: tree.query(qq, k, return_distance=False)    # noqa: E731
    elif name == "hnswlib":
        import hnswlib

        def build():
            ix = hnswlib.Index(space="ip", dim=d)
            ix.init_index(max_elements=n, M=16, ef_construction=100, random_seed=seed)
            ix.add_items(data, np.arange(n), num_threads=threads)
            return ix
        ix, build_s = timed(build)
        ix.save_index(str(size_path))
        nbytes = size_path.stat().st_size
        res["params"] = {"M": 16, "ef_construction": 100}
        sweep = SWEEPS[name]

        def search_fn(qq, k, ef):
            ix.set_ef(max(ef, k))
            return ix.knn_query(qq, k, num_threads=threads)[0]
    elif name in ("faiss-hnsw", "faiss-ivf"):
        import faiss

        faiss.omp_set_num_threads(threads)
        if name == "faiss-hnsw":
            def build():
                ix = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
                ix.hnsw.efConstruction = 80
                ix.add(data)
                return ix
            res["params"] = {"M": 32, "efConstruction": 80}
        else:
            from topo2vec_lib.search import _build_ivf

            def build():
                ix, params = _build_ivf(data, None, "cosine", seed=seed, nlist=None, nprobe=None, threads=threads)
                res["params"] = {k: v for k, v in params.items() if k != "nprobe"}
                return ix
        ix, build_s = timed(build)
        faiss.write_index(ix, str(size_path))
        nbytes = size_path.stat().st_size
        sweep = SWEEPS[name]

        def search_fn(qq, k, p):
            if name == "faiss-hnsw":
                ix.hnsw.efSearch = max(p, k)
            else:
                ix.nprobe = p
            return ix.search(qq, k)[1]
    elif name == "pynndescent":
        import pynndescent

        def build():
            ix = pynndescent.NNDescent(data, metric="euclidean", n_neighbors=30, random_state=seed, n_jobs=threads,
                                       low_memory=True)
            ix.prepare()
            return ix
        ix, build_s = timed(build)
        import pickle

        nbytes = len(pickle.dumps(ix, protocol=5))
        res["params"] = {"n_neighbors": 30, "random_state": seed, "note": "build includes numba JIT compilation"}
        sweep = SWEEPS[name]
        search_fn = lambda qq, k, eps: ix.query(qq, k, epsilon=eps)[0]      # noqa: E731
    else:
        raise ValueError(f"unknown candidate {name!r}")
    res.update(build_s=build_s, index_mib=nbytes / 2**20, n=n, dim=d, queries=len(q))
    points = []
    for p in (sweep or [None]):
        pt = {PARAM_NAME.get(name, "param"): p} if p is not None else {}
        for k in KS:
            search_fn(q[:2], k, p)                                  # warm-up (lazy allocations, first call)
            idx, s = timed(lambda k=k, p=p: search_fn(q, k, p))
            pt[f"query_ms_at{k}"] = 1000 * s / len(q)
            pt[f"recall_at{k}"] = recall(data, q, idx, gt_d, k)
        points.append(pt)
        if p is not None and all(pt[f"recall_at{k}"] >= 0.995 for k in KS):
            break                                                   # the sweep has saturated
    res["sweep"] = points
    res["rss_growth_mib"] = peak_rss_mib() - rss0
    return res


def operating_point(case: dict, k: int) -> dict | None:
    """The fastest sweep point with recall@k >= TARGET_RECALL."""
    ok = [p for p in case.get("sweep", []) if p[f"recall_at{k}"] >= TARGET_RECALL]
    return min(ok, key=lambda p: p[f"query_ms_at{k}"]) if ok else None


# ------------------------------------------------------------------------------------------------ main

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1_000_000, help="at least this many field cells (vectors)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--vectors", choices=("auto", "real", "synthetic"), default="auto")
    ap.add_argument("--model", default=str(REPO / "models" / "topo2vec-4.pt"))
    ap.add_argument("--terrain", default=str(REPO / "data" / "terrain"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=12, help="grid query draws per class (standardisation study)")
    ap.add_argument("--seeds", type=int, default=3, help="candidate sets (standardisation study, 20 draws each)")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--timeout-s", type=float, default=1200, help="per candidate")
    ap.add_argument("--cache", help="keep the embedded field here (zarr) and reuse it")
    ap.add_argument("--note", default="", help="provenance note recorded with the vectors (where the model came from)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run): --cells 3000 --queries 50")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search.json"))
    ap.add_argument("--case", help=argparse.SUPPRESS)       # internal: NAME:WORKDIR, run one candidate
    args = ap.parse_args(argv)
    if args.case:
        name, work = args.case.split(":", 1)
        print(json.dumps(run_case(name, Path(work), args.threads, args.seed)))
        return {}
    if args.quick:
        args.cells, args.queries, args.repeats, args.seeds = min(args.cells, 3000), min(args.queries, 50), 2, 1
    if args.cells < 100 or args.queries < 1:
        raise SystemExit(f"--cells {args.cells} must be >= 100 and --queries {args.queries} >= 1")

    model, terrain_dir = Path(args.model), Path(args.terrain)
    kind = args.vectors
    if kind == "auto":
        kind = "real" if model.exists() and any((terrain_dir / f"test{e}").exists() for e in (".zarr", ".tif")) \
            else "synthetic"
    result = {"benchmark": "similarity search (topo2vec_lib.search)", "quick": bool(args.quick), "cells": args.cells,
              "queries": args.queries, "threads": args.threads, "seed": args.seed, "target_recall": TARGET_RECALL}
    from topo2vec_lib.search import Standardizer, _space

    if kind == "real":
        cache = Path(args.cache) if args.cache else None
        field, terrain, embedder, sampler, desc = real_field(model, terrain_dir, args.cells, cache)
        arr = field["embedding"]
        vectors = np.asarray(arr.values, np.float32).reshape(-1, arr.shape[-1])
        vectors = vectors[np.isfinite(vectors).all(axis=1)]
        print(f"real field {desc['grid']} at stride {desc['stride_m']:g} m: {len(vectors)} valid cells "
              f"({desc['embed_s']} s)", flush=True)
        print("standardisation study:", flush=True)
        result["standardisation"] = standardisation_study(field, terrain, embedder, sampler, repeats=args.repeats,
                                                          seeds=range(args.seed, args.seed + args.seeds),
                                                          seed=args.seed)
        del field, terrain, sampler
    else:
        vectors, desc = synthetic_vectors(args.cells, seed=args.seed)
        result["standardisation"] = None
    result["vectors"] = {**desc, "valid_cells": int(len(vectors)), "dim": int(vectors.shape[1]),
                         **({"note": args.note} if args.note else {})}

    rng = np.random.default_rng(args.seed)
    is_q = np.zeros(len(vectors), bool)
    is_q[rng.choice(len(vectors), args.queries, replace=False)] = True
    std = Standardizer.fit(vectors[~is_q], "center")         # EmbeddingIndex's default space: centred, cosine
    data, queries = _space(vectors[~is_q], std, "cosine"), _space(vectors[is_q], std, "cosine")
    del vectors
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.save(work / "data.npy", data)
        np.save(work / "queries.npy", queries)
        (gt_d, gt_i), gt_s = timed(lambda: numpy_knn(data, queries, max(KS)))
        np.savez(work / "gt.npz", distances=gt_d, indices=gt_i)
        result["ground_truth_s"] = gt_s
        print(f"{len(data)} indexed, {len(queries)} queries; exact ground truth {gt_s:.1f} s", flush=True)
        env = {**os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                               "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}}
        for name in args.candidates.split(","):
            cmd = [sys.executable, __file__, "--case", f"{name}:{work}", "--threads", str(args.threads),
                   "--seed", str(args.seed)]
            try:
                run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=args.timeout_s)
            except subprocess.TimeoutExpired:
                cases.append({"name": name, "skipped": f"timed out after {args.timeout_s:g} s"})
                print(f"{name:17s} timed out", flush=True)
                continue
            if run.returncode != 0:
                last = (run.stderr.strip().splitlines() or ["?"])[-1]
                if "ModuleNotFoundError" in run.stderr:
                    cases.append({"name": name, "skipped": last})
                    print(f"{name:17s} skipped: {last}", flush=True)
                    continue
                raise RuntimeError(f"candidate {name} failed:\n{run.stderr[-3000:]}")
            c = json.loads(run.stdout.strip().splitlines()[-1])
            cases.append(c)
            print(f"{name:17s} build {c['build_s']:7.1f} s  index {c['index_mib']:7.1f} MiB  RSS +"
                  f"{c['rss_growth_mib']:7.1f} MiB  " + "  ".join(
                      f"{PARAM_NAME.get(name, '')}{'=' if name in PARAM_NAME else ''}{p.get(PARAM_NAME.get(name), '')}"
                      f" r@10 {p['recall_at10']:.3f} {p['query_ms_at10']:.3f} ms r@50 {p['recall_at50']:.3f} "
                      f"{p['query_ms_at50']:.3f} ms" for p in c["sweep"][-3:]), flush=True)
    exact_ms = {k: min((c["sweep"][0][f"query_ms_at{k}"] for c in cases if "sweep" in c and
                        c["name"] in EXACT), default=None) for k in KS}
    summary = []
    for c in cases:
        if "sweep" not in c:
            summary.append({"name": c["name"], "skipped": c["skipped"]})
            continue
        row = {"name": c["name"], "build_s": c["build_s"], "index_mib": c["index_mib"],
               "rss_growth_mib": c["rss_growth_mib"]}
        for k in KS:
            p = operating_point(c, k)
            row[f"at{k}"] = None if p is None else {
                **{kk: v for kk, v in p.items() if not kk.endswith(f"at{KS[0] if k == KS[1] else KS[1]}")},
                "speedup_vs_fastest_exact": None if not exact_ms[k] else exact_ms[k] / p[f"query_ms_at{k}"]}
        summary.append(row)
    result.update(exact_query_ms=exact_ms, cases=cases, summary=summary, machine=machine_info())
    write_json(args.out, result)
    print("wrote", args.out)
    return result


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "numpy": np.__version__}
    for mod in ("sklearn", "hnswlib", "faiss", "pynndescent"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except ImportError:
            info[mod] = None
    return info


if __name__ == "__main__":
    main()
