"""The ablation families of issue 15, "Does the fractal effect help?": a plan of trainings and probes, trained
models cached per configuration, Exp 1 probes, and results with confidence intervals and paired tests.

``notebooks/ablations.py`` runs it (``make ablations``; not part of ``dvc repro``). The families, all set in
params.yaml ``ablations`` (every model configuration starts from params.yaml ``models.<name>`` over ``train``):

- ``length``: accuracy and held-out reconstruction loss against training images. One run per model to the
  longest length; the shorter lengths are its snapshots (:func:`topo2vec_lib.models.trainer.fit`).
- ``scale``: every model probed at several scales (its own training scale among them), and models trained
  over several input scales (Algorithm 1's ``Scales``; the fractal target is never finer than native).
- ``k``: the fractal factor k at equal compute: ``train_res_m = input_res_m * k`` keeps the target at the
  native pixel size, and each k trains for the base model's training FLOPs (``equal: flops``, counted by
  ``torch.utils.flop_counter``) or the same images (``equal: images``).
- ``window``: training terrain of several sizes: centre crops of one train window of the largest size, so
  the smaller windows are parts of the larger ones (the default study's window is another world: synthetic
  worlds are drawn per window).
- ``label_noise``: probes with labels moved and dropped like OpenStreetMap's (:func:`labels.perturb_labels`),
  the trained models unchanged.

Every probe is the Exp 1 protocol (params.yaml ``exp1``: sizes, negatives' distance, C grid) over ``seeds``
probe seeds; within a seed every model of a point sees the same places, so models are compared by paired
tests. With ``train_seeds > 1`` each configuration is trained that many times (seeds ``seed + i``) and a
probe row's pairing key is ``seed + 1000 * i``: the intervals then include training noise.

Trained models live in ``<cache>/<key>.pt`` with ``<key>.json`` (metrics, held-out loss), the key a hash of
the configuration (not threads, workers or device), the seed and the training terrain's values; probe results
in ``<cache>/probes/<key>.csv``. A second run reuses everything already computed.
"""
from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from topo2vec_lib import paper
from topo2vec_lib.storage import atomic_path, read_json, write_json

FAMILIES = ("length", "scale", "k", "window", "label_noise")
TERRAIN_S_PER_MPX = 15.0
"""Seconds per million pixels to make a synthetic window (88 km, 8.6 Mpx: 127 s on the 2-core machine at load 4)."""
KEY_IGNORED = ("name", "device", "workers", "threads")
"""Configuration keys that do not change what a training computes (left out of the cache key)."""

RESUME_EVERY_STEPS = 1000
"""An ablation training writes its resume file at least this often (steps of 64 images: about 5 min of the
slowest, adversarial, training on one core), so an interrupted ``make ablations`` loses minutes, not an hour.
Checkpointing changes no value (a resumed run sees the same data), so it stays out of the cache key."""

@dataclasses.dataclass(frozen=True)
class Api:
    """The model registry's functions, passed in by the caller (``Api(train_model, load_embedder, model_config)``
    from :mod:`topo2vec_lib.models`): library modules never import the registry (docs/architecture.md). Module
    functions pickle by reference, so worker processes get them too."""

    train_model: Callable
    load_embedder: Callable
    model_config: Callable


PARAMS_KEYS = ("size", "families", "reference", "classes", "seeds", "train_seeds", "res_m", "images_scale", "jobs",
               "length", "scale", "k", "window", "label_noise", "tiny")


# ------------------------------------------------------------------------------------------------ plan
@dataclasses.dataclass
class Training:
    """One training: ``config`` (complete, ``images`` the longest length), seed, terrain, snapshots."""

    label: str                       # e.g. "topo2vec-4"
    config: dict
    seed: int
    terrain: str                     # "default" or "window=<km>"
    snapshot_images: tuple[int, ...] = ()
    aliases: tuple[str, ...] = ()    # other labels the same computation has in other families

    def key(self, terrain_hash: str, images: int | None = None) -> str:
        """Cache key of the model after ``images`` images (default: the whole run)."""
        cfg = {k: v for k, v in self.config.items() if k not in KEY_IGNORED}
        if images is not None:
            cfg["images"] = int(images)
        blob = json.dumps({"config": cfg, "seed": int(self.seed), "terrain": terrain_hash}, sort_keys=True,
                          default=str)
        return f"{self.config.get('kind', 'model')}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}"

    def steps_for(self, images: int) -> int:
        """The step after which the model has seen ``images`` images (a run of ``images`` images ends there)."""
        per_step = int(self.config["batch_size"]) * len(self.config.get("train_res_m", [0]))
        return max(1, int(images) // per_step) * len(self.config.get("train_res_m", [0]))


@dataclasses.dataclass
class ModelRef:
    """A model a probe set uses: a training (and after how many images), or a fixed baseline."""

    model: str                       # label in the results (e.g. "topo2vec-4", "topo2vec-4 multiscale", "id")
    training: Training | None = None
    images: int | None = None
    baseline: dict | None = None     # fixed kinds: the params.yaml config


@dataclasses.dataclass
class ProbeSet:
    """One point of a family: models probed at one scale with one label table."""

    family: str
    point: str                       # the point's label, e.g. "300000", "120", "k=4", "88 km", "60 m, drop 0.3"
    x: float                         # the point's value on the family's axis
    models: list[ModelRef]
    res_m: float
    noise: tuple[float, float] = (0.0, 0.0)   # (jitter_sigma_m, drop_fraction)


@dataclasses.dataclass
class Plan:
    """Everything one ablation run does: its settings, the trainings and the probe sets."""

    settings: dict
    trainings: list[Training]
    probes: list[ProbeSet]
    windows_km: list[float]


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """``base`` with ``over`` merged in: mappings recursively, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
            else copy.deepcopy(value)
    return out


def settings_of(params: Mapping, size: str | None = None) -> dict:
    """The ``ablations`` section with ``tiny`` merged over it when ``size`` (default: its ``size``) is tiny."""
    section = dict(params["ablations"])
    unknown = sorted(set(section) - set(PARAMS_KEYS))
    missing = sorted(set(PARAMS_KEYS) - set(section))
    if unknown or missing:
        raise ValueError(f"params ablations: unknown key(s) {unknown}, missing key(s) {missing}; "
                         f"expected {sorted(PARAMS_KEYS)}")
    size = size or section["size"]
    if size not in ("full", "tiny"):
        raise ValueError(f"ablations size={size!r}: expected 'full' or 'tiny'")
    if size == "tiny":
        section = deep_merge(section, section["tiny"])
    section["size"] = size
    bad = sorted(set(section["families"]) - set(FAMILIES))
    if bad:
        raise ValueError(f"ablations families {bad} unknown; valid: {list(FAMILIES)}")
    for key in ("seeds", "train_seeds", "jobs"):
        if isinstance(section[key], bool) or not isinstance(section[key], int) or section[key] < 1:
            raise ValueError(f"ablations {key}={section[key]!r}: expected an integer >= 1")
    if not (isinstance(section["images_scale"], (int, float)) and section["images_scale"] > 0):
        raise ValueError(f"ablations images_scale={section['images_scale']!r}: expected a number > 0")
    return section


def model_base(params: Mapping, name: str, overrides: Mapping | None = None, *, api: Api) -> dict:
    """``models.<name>`` over ``train`` (as the train stage merges them), with ``overrides``, validated."""
    models = params["models"]
    if name not in models:
        raise ValueError(f"ablations: model {name!r} is not in params.yaml models ({sorted(models)})")
    config = {**params["train"], **models[name], **dict(overrides or {}), "name": name}
    return api.model_config(config, complete=True).to_dict()


def scaled(images: float, settings: Mapping, batch: int) -> int:
    """``images * images_scale``, at least one batch."""
    return max(int(batch), int(round(float(images) * float(settings["images_scale"]))))


def training_flops_per_image(config: Mapping) -> float:
    """FLOPs of one training step (forward, backward) per image, counted by torch on a batch of ``batch_size``."""
    return _flops(json.dumps({k: v for k, v in config.items() if k not in KEY_IGNORED}, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _flops(config_json: str) -> float:
    config = json.loads(config_json)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from topo2vec_lib.models.config import Topo2VecConfig
    from topo2vec_lib.models.topo2vec import Topo2VecMethod

    cfg = Topo2VecConfig.from_dict({k: v for k, v in config.items() if k != "kind"} | {"precision": "float32",
                                                                                        "compile": False})
    state = torch.random.get_rng_state()
    try:
        method = Topo2VecMethod(cfg, None, seed=0, device=torch.device("cpu"))  # type: ignore[arg-type]
        method.build()
        bs, k = cfg.batch_size, cfg.k
        x, y = torch.rand(bs, 1, 17, 17), torch.rand(bs, 1, 16 * k, 16 * k)
        with FlopCounterMode(display=False) as counter:
            method.step((x, y))
    finally:
        torch.random.set_rng_state(state)
    return counter.get_total_flops() / bs


def make_plan(params: Mapping, size: str | None = None, *, api: Api,
              flops: Callable[[Mapping], float] = training_flops_per_image) -> Plan:
    """Every training and probe set of the families in ``params['ablations']`` (see the module docstring)."""
    s = settings_of(params, size)
    seed = int(params["seed"])
    trainings: dict[str, Training] = {}
    probes: list[ProbeSet] = []

    def training(label: str, base: str, overrides: Mapping | None = None, terrain: str = "default",
                 snapshots: Sequence[int] = ()) -> list[Training]:
        out = []
        for i in range(s["train_seeds"]):
            cfg = model_base(params, base, overrides, api=api)
            t = Training(label, cfg, seed + i, terrain, tuple(sorted(set(int(v) for v in snapshots))))
            ident = _identity(t, with_images=True)         # what it computes, whatever its label
            if ident in trainings:
                t = trainings[ident]
                t.snapshot_images = tuple(sorted(set(t.snapshot_images) | set(snapshots)))
                t.aliases = tuple(sorted(set(t.aliases) | {label} - {t.label}))
            trainings[ident] = t
            out.append(t)
        return out

    def refs(model: str, ts: list[Training], images: int | None = None) -> list[ModelRef]:
        return [ModelRef(model, t, images) for t in ts]

    def baseline(name: str) -> list[ModelRef]:
        return [ModelRef(name, baseline=model_base(params, name, api=api))]

    def learned(name: str) -> bool:
        return params["models"][name]["kind"] == "topo2vec"

    batch = int(params["train"]["batch_size"])
    default_images = scaled(params["train"]["images"] * params["train"]["epochs"], s, batch)

    def default_model(name: str) -> list[ModelRef]:
        if not learned(name):
            return baseline(name)
        return refs(name, training(name, name, {"images": default_images, "epochs": 1}))

    families = s["families"]
    if "length" in families:
        f = s["length"]
        lengths = sorted(scaled(v, s, batch) for v in f["images"])
        longest = {name: training(name, name, {"images": lengths[-1], "epochs": 1}, snapshots=lengths[:-1])
                   for name in f["models"] if learned(name)}
        for n in lengths:
            models = [r for name in f["models"] for r in
                      (refs(name, longest[name], n) if learned(name) else baseline(name))]
            probes.append(ProbeSet("length", str(n), float(n), models, float(s["res_m"])))
    if "scale" in families:
        f = s["scale"]
        models = [r for name in f["models"] for r in default_model(name)]
        for base, scales in (f["multiscale"] or {}).items():
            label = f"{base} multiscale"
            models += refs(label, training(label, base, {"images": default_images, "epochs": 1,
                                                         "train_res_m": [float(v) for v in scales]}))
        for res in f["probe_res_m"]:
            probes.append(ProbeSet("scale", f"{float(res):g}", float(res), list(models), float(res)))
    if "k" in families:
        f = s["k"]
        base_cfg = model_base(params, f["base"], {"images": default_images, "epochs": 1}, api=api)
        budget = flops(base_cfg) * default_images if f["equal"] == "flops" else None
        if f["equal"] not in ("flops", "images"):
            raise ValueError(f"ablations k.equal={f['equal']!r}: expected 'flops' or 'images'")
        for k in f["k"]:
            over = {"k": int(k), "train_res_m": [float(f["input_res_m"]) * int(k)], "epochs": 1}
            images = default_images if budget is None else \
                max(batch, int(round(budget / flops(model_base(params, f["base"], over, api=api)))))
            ts = training(f"{f['base']} k={int(k)}", f["base"], {**over, "images": images})
            probes.append(ProbeSet("k", f"k={int(k)}", float(k), refs(f"{f['base']} (k varies)", ts),
                                   float(s["res_m"])))
    windows: list[float] = []
    if "window" in families:
        f = s["window"]
        windows = sorted(float(v) for v in f["size_km"])
        for km in windows:
            models = [r for name in f["models"] for r in
                      (refs(name, training(name, name, {"images": default_images, "epochs": 1},
                                           terrain=f"window={km:g}")) if learned(name) else baseline(name))]
            probes.append(ProbeSet("window", f"{km:g} km", km, models, float(s["res_m"])))
    if "label_noise" in families:
        f = s["label_noise"]
        models = [r for name in f["models"] for r in default_model(name)]
        for i, (sigma, drop) in enumerate(f["points"]):       # x: the point's index (sigma repeats with drops)
            probes.append(ProbeSet("label_noise", f"{float(sigma):g} m, drop {float(drop):g}", float(i),
                                   list(models), float(s["res_m"]), (float(sigma), float(drop))))
    return Plan(s, _fold_snapshots(list(trainings.values()), probes), probes, windows)


def _identity(t: Training, with_images: bool) -> str:
    cfg = {k: v for k, v in t.config.items() if k not in KEY_IGNORED and (with_images or k != "images")}
    return json.dumps([cfg, t.seed, t.terrain], sort_keys=True, default=str)


def _fold_snapshots(trainings: list[Training], probes: list[ProbeSet]) -> list[Training]:
    """A training that is a shorter run of another planned one becomes a snapshot of the longest (one run, the
    models of every length); probe references follow."""
    longest: dict[str, Training] = {}
    for t in trainings:
        ident = _identity(t, with_images=False)
        if ident not in longest or int(t.config["images"]) > int(longest[ident].config["images"]):
            longest[ident] = t
    moved: dict[int, tuple[Training, int]] = {}
    for t in trainings:
        keep = longest[_identity(t, with_images=False)]
        if keep is not t:
            keep.snapshot_images = tuple(sorted(set(keep.snapshot_images) | set(t.snapshot_images)
                                                | {int(t.config["images"])}))
            keep.aliases = tuple(sorted(set(keep.aliases) | set(t.aliases) | {t.label} - {keep.label}))
            moved[id(t)] = (keep, int(t.config["images"]))
    for p in probes:
        for ref in p.models:
            if ref.training is not None and id(ref.training) in moved:
                keep, n = moved[id(ref.training)]
                ref.training, ref.images = keep, n if ref.images is None else ref.images
    return [t for t in trainings if id(t) not in moved]


# ------------------------------------------------------------------------------------------------ terrain
def terrain_hash(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """SHA-1 of a terrain store's values, CRS and pixel size; remembered in ``cache_dir`` (default: beside the
    store) under the store's name and modification time, so a rewritten store is hashed again."""
    from topo2vec_lib.terrain import open_terrain

    path = Path(path)
    folder = Path(cache_dir) if cache_dir is not None else path.parent
    side = folder / f"{path.name}.{path.stat().st_mtime_ns}.sha1"
    if side.exists():
        return side.read_text().strip()
    da = open_terrain(path)
    h = hashlib.sha1(np.ascontiguousarray(da.values, dtype=np.float32).tobytes())
    h.update(json.dumps([str(da.rio.crs), float(da.attrs["res_m"]), list(map(float, da["x"].values[[0, -1]])),
                         list(map(float, da["y"].values[[0, -1]]))]).encode())
    side.parent.mkdir(parents=True, exist_ok=True)
    side.write_text(h.hexdigest())
    return h.hexdigest()


def window_paths(data: Mapping, seed: int, sizes_km: Sequence[float], out_dir: str | os.PathLike) -> dict[float, Path]:
    """Where :func:`window_terrains` keeps each window: named by size and a hash of the data settings, the seed
    and the largest size (the crops depend on it)."""
    sizes = sorted(float(v) for v in sizes_km)
    tag = hashlib.sha1(json.dumps([dict(data), seed, sizes[-1]], sort_keys=True, default=str).encode()).hexdigest()[:8]
    return {km: Path(out_dir) / f"train_{km:g}km_{tag}.zarr" for km in sizes}


def existing_windows(ctx: Context, sizes_km: Sequence[float]) -> dict[float, Path]:
    """The window terrains already made (nothing is generated)."""
    if not sizes_km:
        return {}
    paths = window_paths(ctx.params["data"], int(ctx.params["seed"]), sizes_km, ctx.cache_dir / "terrain")
    return {km: p for km, p in paths.items() if p.exists()}


def window_terrains(data: Mapping, seed: int, sizes_km: Sequence[float], out_dir: str | os.PathLike,
                    progress: Callable[[str], None] = print) -> dict[str, Path]:
    """Train-region terrains for the window family: the largest window loaded once (``data`` is params.yaml
    ``data``: source, crs, res_m, regions, ...; centred on the train region's window centre) and centre crops of
    the smaller sizes, as zarr stores ``<out_dir>/train_<km>km.zarr`` (made once, reused). Returns
    ``{"window=<km>": path}``."""
    from topo2vec_lib.regions import study_windows
    from topo2vec_lib.terrain import load_terrain, open_terrain, save_terrain

    sizes = sorted(float(v) for v in sizes_km)
    if not sizes:
        return {}
    paths = window_paths(data, seed, sizes, out_dir)
    if not all(p.exists() for p in paths.values()):
        t0 = time.perf_counter()
        crs, regions, _ = study_windows(data["regions"], data["crs"], float(data["res_m"]))
        train = regions["train"]                          # the study's train region: its box, polygon and centre
        big = load_terrain(data["source"], "train", center_lonlat=train.center, size_km=sizes[-1],
                           res_m=data["res_m"], crs=crs, seed=seed, geotiff_path=data.get("geotiff_path") or None,
                           cache_dir=data.get("raw_dir", "data/raw"), region_lonlat=train.region_lonlat,
                           polygon=None if train.polygon is None else np.asarray(train.polygon))
        progress(f"window terrain {sizes[-1]:g} km: {big.shape[0]} x {big.shape[1]} px in "
                 f"{time.perf_counter() - t0:.0f} s")
        for km, path in paths.items():
            if path.exists():
                continue
            n = int(round(km * 1000 / float(big.attrs["res_m"])))
            r0, c0 = (big.shape[0] - n) // 2, (big.shape[1] - n) // 2
            crop = big if n >= min(big.shape) else big.isel(y=slice(r0, r0 + n), x=slice(c0, c0 + n))
            crop = crop.rio.write_transform(crop.rio.transform(recalc=True))
            save_terrain(crop, path)
        del big
    for path in paths.values():
        open_terrain(path, chunks="auto")                 # readable
    return {f"window={km:g}": p for km, p in paths.items()}


# ------------------------------------------------------------------------------------------------ jobs
def _job_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


def train_job(spec: dict) -> dict:
    """Train one configuration (a worker process may run this): the model, its snapshots, held-out L1 of each.

    ``spec``: ``config``, ``seed``, ``train_terrain``, ``test_terrain`` (zarr paths), ``out`` (``.pt``),
    ``snapshots`` (``{step: [path, images]}``), ``heldout_pairs``, ``threads``. Writes ``<out>.json`` (and one
    json per snapshot) last, so a model counts as done only with its metrics.
    """
    from topo2vec_lib.models.topo2vec import Topo2Vec, heldout_l1
    from topo2vec_lib.sampler import PatchSampler
    from topo2vec_lib.terrain import open_terrain

    _job_threads(spec["threads"])
    train = PatchSampler(open_terrain(spec["train_terrain"]), threads=1)
    test = PatchSampler(open_terrain(spec["test_terrain"]), threads=1)
    out = Path(spec["out"])
    snaps = {int(step): Path(v[0]) for step, v in spec["snapshots"].items()}
    t0 = time.perf_counter()
    api: Api = spec["api"]
    result = api.train_model(spec["config"], train, out_path=out, resume_path=out.with_suffix(".resume.pt"),
                         seed=spec["seed"], progress=False, snapshots=snaps)
    wall_s = time.perf_counter() - t0
    history = result.pop("history", [])
    written = {}
    for step, (path, images) in [(int(k), v) for k, v in spec["snapshots"].items()] + [
            (result["steps"], (str(out), spec["config"]["images"]))]:
        path = Path(path)
        rows = [h for h in history if h["scope"] == "steps" and h["step"] <= step]
        metrics = {"config": {**spec["config"], "images": int(images)}, "seed": spec["seed"], "images": int(images),
                   "images_seen": step * int(spec["config"]["batch_size"]), "step": step,
                   "snapshot_of": None if path == out else out.name,
                   "train_loss": rows[-1].get("loss_l1") if rows else None,
                   **heldout_l1(cast(Topo2Vec, api.load_embedder(path)), test, int(spec["heldout_pairs"]),
                                seed=spec["seed"])}
        if path == out:
            metrics.update(wall_s=wall_s, images_per_s=result["images_per_s"], final_loss=result["final_loss"],
                           loadavg=list(os.getloadavg()))
        write_json(path.with_suffix(".json"), metrics)
        written[str(path)] = metrics
    return written


def probe_job(spec: dict) -> list[dict]:
    """Exp 1 probes of one probe set (a worker process may run this); rows as :func:`run_probe_experiment`'s
    plus ``model`` relabelled and ``seed`` shifted by ``1000 * train_seed_index``."""
    from topo2vec_lib import evaluation as ev
    from topo2vec_lib.labels import perturb_labels, read_labels
    from topo2vec_lib.sampler import PatchSampler
    from topo2vec_lib.terrain import open_terrain

    _job_threads(spec["threads"])
    api: Api = spec["api"]
    samplers = {r: PatchSampler(open_terrain(spec[f"{r}_terrain"]), threads=1) for r in ("train", "test")}
    labels = read_labels(spec["labels_dir"], spec["classes"])
    sigma, drop = spec["noise"]
    if sigma or drop:
        labels = perturb_labels(labels, sigma, drop, seed=spec["seed"])
    rows = []
    for index, group in spec["groups"].items():          # one group per training seed index
        embedders = {model: api.load_embedder(path) for model, path in group.items()}
        df = ev.run_probe_experiment(embedders, samplers, labels, spec["classes"], spec["n_train"], spec["n_test"],
                                     spec["seeds"], res_m=spec["res_m"], seed=spec["seed"],
                                     min_neg_distance_m=spec["min_neg_distance_m"], C_grid=spec["C_grid"],
                                     progress=False)
        df["seed"] = df["seed"] + 1000 * int(index)
        df["train_seed_index"] = int(index)
        rows += df.to_dict(orient="records")
    return rows


def _pool(jobs: int):
    if jobs <= 1:
        return None
    return concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))


def run_jobs(fn: Callable[[dict], Any], specs: Sequence[dict], jobs: int,
             done: Callable[[dict, Any, float], None] | None = None) -> list:
    """``fn(spec)`` for every spec, ``jobs`` at a time in worker processes (in this process when 1), longest
    first (``spec["cost"]``); ``done(spec, result, seconds)`` after each. Results in the order of ``specs``."""
    order = sorted(range(len(specs)), key=lambda i: -float(specs[i].get("cost", 0)))
    results: list = [None] * len(specs)
    pool = _pool(min(jobs, len(specs)))
    t0 = {i: time.perf_counter() for i in order}
    try:
        if pool is None:
            for i in order:
                t0[i] = time.perf_counter()
                results[i] = fn(specs[i])
                if done:
                    done(specs[i], results[i], time.perf_counter() - t0[i])
        else:
            futures = {pool.submit(fn, specs[i]): i for i in order}
            for fut in concurrent.futures.as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                if done:
                    done(specs[i], results[i], time.perf_counter() - t0[i])
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


# ------------------------------------------------------------------------------------------------ running
@dataclasses.dataclass
class Context:
    """Where things are: the study's terrain and labels, the cache, and the shared probe settings."""

    params: Mapping
    terrain_dir: Path
    labels_dir: Path
    cache_dir: Path
    api: Api
    terrains: dict[str, Path] = dataclasses.field(default_factory=dict)   # "default", "window=<km>", "test"
    hashes: dict[str, str] = dataclasses.field(default_factory=dict)

    def terrain(self, name: str) -> Path:
        return self.terrains[name]

    def hash(self, name: str) -> str:
        if name not in self.hashes:
            self.hashes[name] = terrain_hash(self.terrains[name], self.cache_dir / "terrain_hashes")
        return self.hashes[name]

    def model_path(self, t: Training, images: int | None = None) -> Path:
        return self.cache_dir / f"{t.key(self.hash(t.terrain), images)}.pt"


def context(params: Mapping, terrain_dir, labels_dir, cache_dir, windows_km: Sequence[float] = (), *, api: Api,
            progress: Callable[[str], None] = print) -> Context:
    """The run's :class:`Context`: the study terrain (``<terrain_dir>/{train,test}.zarr``) and the window crops
    (made now when ``windows_km`` is given; :func:`add_windows` later)."""
    terrain_dir, cache_dir = Path(terrain_dir), Path(cache_dir)
    ctx = Context(params, terrain_dir, Path(labels_dir), cache_dir, api)
    for name, region in (("default", "train"), ("test", "test")):
        path = terrain_dir / f"{region}.zarr"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: build the study data first (dvc repro labels)")
        ctx.terrains[name] = path
    if windows_km:
        add_windows(ctx, windows_km, progress)
    return ctx


def add_windows(ctx: Context, windows_km: Sequence[float], progress: Callable[[str], None] = print) -> None:
    """Make (once) and register the window family's train terrains."""
    ctx.terrains.update(window_terrains(ctx.params["data"], int(ctx.params["seed"]), windows_km,
                                        ctx.cache_dir / "terrain", progress))


def training_specs(plan: Plan, ctx: Context, threads: int = 1) -> list[dict]:
    """The trainings not yet in the cache (model and metrics files), as :func:`train_job` specs. Trainings on a
    window terrain not made yet are left out (:func:`estimate` counts them)."""
    specs = []
    for t in plan.trainings:
        if t.terrain not in ctx.terrains:
            continue
        out = ctx.model_path(t)
        snaps: dict[int, list] = {t.steps_for(n): [str(ctx.model_path(t, n)), n] for n in t.snapshot_images}
        missing = [p for p in [out, *(Path(str(v[0])) for v in snaps.values())]
                   if not p.with_suffix(".json").exists()]
        if not missing:
            continue
        config = {**t.config, "threads": threads, "workers": 0,
                  "checkpoint_steps": int(t.config.get("checkpoint_steps") or RESUME_EVERY_STEPS)}
        specs.append({"label": t.label, "config": config, "seed": t.seed,
                      "train_terrain": str(ctx.terrain(t.terrain)), "test_terrain": str(ctx.terrain("test")),
                      "out": str(out), "snapshots": snaps, "terrain": t.terrain, "threads": threads,
                      "heldout_pairs": int(ctx.params["heldout"]["test_pairs"]), "api": ctx.api,
                      "cost": float(t.config["images"]) * (4.0 if t.config.get("k", 1) > 1 else 1.0)
                      * (2.0 if t.config.get("adversarial") else 1.0)})
    return specs


def baseline_path(ctx: Context, config: Mapping) -> Path:
    """A fixed baseline's checkpoint in the cache, built on first use."""
    from topo2vec_lib.sampler import PatchSampler
    from topo2vec_lib.terrain import open_terrain

    key = hashlib.sha1(json.dumps(dict(config), sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = ctx.cache_dir / f"{config['name']}-{key}.pt"
    if not path.exists():
        ctx.api.train_model(dict(config), PatchSampler(open_terrain(ctx.terrain("default")), threads=1),
                            out_path=path, progress=False)
    return path


def probe_specs(plan: Plan, ctx: Context, threads: int = 1) -> list[dict]:
    """Every probe set as a :func:`probe_job` spec, with its cache file (``probes/<key>.csv``) and whether done."""
    from topo2vec_lib.labels import read_labels

    exp1, s = ctx.params["exp1"], plan.settings
    labels_key = hashlib.sha1(read_labels(ctx.labels_dir, s["classes"]).to_csv(index=False).encode()).hexdigest()
    specs = []
    for p in plan.probes:
        groups: dict[int, dict[str, str]] = {}
        for ref in p.models:
            if ref.baseline is not None:
                for i in range(s["train_seeds"]):
                    groups.setdefault(i, {})[ref.model] = str(baseline_path(ctx, ref.baseline))
            else:
                assert ref.training is not None
                i = ref.training.seed - int(ctx.params["seed"])
                groups.setdefault(i, {})[ref.model] = str(ctx.model_path(ref.training, ref.images))
        spec: dict[str, Any] = {
                "family": p.family, "point": p.point, "x": p.x, "res_m": p.res_m, "noise": list(p.noise),
                "groups": {str(i): g for i, g in sorted(groups.items())}, "classes": list(s["classes"]),
                "n_train": int(exp1["n_train"]), "n_test": int(exp1["n_test"]), "seeds": int(s["seeds"]),
                "seed": int(ctx.params["seed"]), "min_neg_distance_m": float(exp1["min_neg_distance_m"]),
                "C_grid": [float(c) for c in exp1["svm_C"]], "labels_dir": str(ctx.labels_dir),
                "train_terrain": str(ctx.terrain("default")), "test_terrain": str(ctx.terrain("test")),
                "threads": threads, "api": ctx.api}
        key_src = {k: v for k, v in spec.items()
                   if k not in ("threads", "labels_dir", "family", "point", "x", "api")}
        key_src["models"] = {i: {m: Path(path).name for m, path in g.items()} for i, g in spec["groups"].items()}
        key_src["labels"] = labels_key
        key_src["terrain"] = [ctx.hash("default"), ctx.hash("test")]
        del key_src["groups"], key_src["train_terrain"], key_src["test_terrain"]
        key = hashlib.sha1(json.dumps(key_src, sort_keys=True, default=str).encode()).hexdigest()[:16]
        spec["cache"] = str(ctx.cache_dir / "probes" / f"{p.family}-{key}.csv")
        spec["cost"] = float(sum(len(g) for g in groups.values()))
        specs.append(spec)
    return specs


def run_probe_spec(spec: dict) -> list[dict]:
    """:func:`probe_job` through the probe cache (a CSV per probe set)."""
    path = Path(spec["cache"])
    if path.exists():
        return pd.read_csv(path).to_dict(orient="records")
    rows = probe_job(spec)
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return rows


# ------------------------------------------------------------------------------------------------ estimate
def calibrate(ctx: Context, plan: Plan, threads: int = 1, steps: int = 8) -> dict:
    """Measured costs on this machine now: training images/s per (k, adversarial, precision) of the plan (a short
    run of ``steps`` batches each) and seconds per probe fit (one model, class, seed at the Exp 1 sizes)."""
    import tempfile

    from topo2vec_lib.sampler import PatchSampler
    from topo2vec_lib.terrain import open_terrain

    sampler = PatchSampler(open_terrain(ctx.terrain("default")), threads=1)
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for t in plan.trainings:
            kind = rate_key(t.config)
            if kind in rates:
                continue
            bs = int(t.config["batch_size"])
            cfg = {**t.config, "images": bs * steps * len(t.config["train_res_m"]), "threads": threads,
                   "workers": 0, "log_steps": 0, "chunk_batches": steps}
            ctx.api.train_model(cfg, sampler, out_path=Path(tmp) / "warm.pt", progress=False)      # warm-up
            out = ctx.api.train_model(cfg, sampler, out_path=Path(tmp) / "c.pt", progress=False)
            rates[kind] = float(out["images_per_s"])
    probe_s: dict | None = None
    learned = next((r for p in plan.probes for r in p.models if r.training is not None), None)
    if plan.probes:
        spec: dict[str, Any] = dict(probe_specs(Plan(plan.settings, [], plan.probes[:1], []), ctx, threads)[0])
        first = next(iter(spec["groups"].values()))
        name = learned.model if learned is not None and learned.model in first else next(iter(first))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(first[name])
            if not path.exists():                   # not trained yet: an untrained network costs the same to probe
                assert learned is not None and learned.training is not None
                path = Path(tmp) / "untrained.pt"
                ctx.api.train_model({**learned.training.config, "images": int(learned.training.config["batch_size"]),
                                     "threads": threads, "workers": 0}, sampler, out_path=path, progress=False)
            spec.update(classes=spec["classes"][:1], seeds=1)
            took = []
            for n_models in (1, 2):                 # the places are drawn once per (class, seed) for every model
                spec["groups"] = {"0": {f"{name}#{i}": str(path) for i in range(n_models)}}
                t0 = time.perf_counter()
                probe_job(spec)
                took.append(time.perf_counter() - t0)
            per_model = max(took[1] - took[0], 0.0)
            probe_s = {"per_model": per_model, "per_set": max(took[0] - per_model, 0.0)}
    return {"train_images_per_s": rates, "probe_s": probe_s, "threads": threads, "loadavg": list(os.getloadavg())}


def rate_key(config: Mapping) -> str:
    """What a training's speed depends on: k, the adversarial loss and the precision."""
    return f"k={int(config.get('k', 1))}, adversarial={bool(config.get('adversarial'))}, " \
           f"precision={config.get('precision', 'float32')}"


def estimate(plan: Plan, ctx: Context, calibration: Mapping, jobs: int) -> dict:
    """Seconds the missing work will take: window terrains not made yet (:data:`TERRAIN_S_PER_MPX`), trainings
    (images / the measured rate of their kind) and probe fits (x the measured cost of one), the last two spread
    over ``jobs`` processes (longest first: about the larger of total / jobs and the longest training)."""
    configs = [sp["config"] for sp in training_specs(plan, ctx)]
    configs += [t.config for t in plan.trainings if t.terrain not in ctx.terrains]
    rates = calibration["train_images_per_s"]
    train_s = [float(c["images"]) / rates[rate_key(c)] for c in configs]
    pending = [km for km in plan.windows_km if f"window={km:g}" not in ctx.terrains]
    res = float(ctx.params["data"]["res_m"])
    terrain_s = TERRAIN_S_PER_MPX * (max(pending) * 1000 / res) ** 2 / 1e6 if pending else 0.0
    s = plan.settings
    pairs = len(s["classes"]) * s["seeds"]              # (class, seed) place sets per probe set and training seed
    if pending:                                         # window models not made yet: count their probe sets too
        probes = [p for p in plan.probes if p.family != "window"]
        todo = [(s["train_seeds"], len(p.models)) for p in plan.probes if p.family == "window"]
    else:
        probes, todo = plan.probes, []
    specs = [sp for sp in probe_specs(Plan(s, plan.trainings, probes, plan.windows_km), ctx)
             if not Path(sp["cache"]).exists()]
    todo += [(len(sp["groups"]), sum(len(g) for g in sp["groups"].values())) for sp in specs]
    fits = pairs * sum(n for _, n in todo)
    cost = calibration["probe_s"] or {"per_set": 0.0, "per_model": 0.0}
    probe_s = pairs * sum(groups * cost["per_set"] + n * cost["per_model"] for groups, n in todo)
    spread = terrain_s + max(sum(train_s) / jobs, max(train_s, default=0.0)) + probe_s / jobs
    return {"trainings": len(configs), "train_images": int(sum(c["images"] for c in configs)),
            "train_s_total": sum(train_s), "terrain_s": terrain_s,
            "probe_sets": len(todo), "probe_fits": fits, "probe_s_total": probe_s, "jobs": jobs, "wall_s": spread}


# ------------------------------------------------------------------------------------------------ results
def ci95(values: Sequence[float] | np.ndarray | pd.Series) -> tuple[float, float, float, float]:
    """Mean, sample sd, and the two-sided 95 % t-interval half width of the mean; (mean, nan, nan, nan) if n < 2."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return float(v.mean()) if v.size else float("nan"), float("nan"), float("nan"), float("nan")
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, v.size - 1) * sd / math.sqrt(v.size))
    return float(v.mean()), sd, half, float(v.size)


def paper_accuracy(model: str, cls: str) -> float | None:
    """The paper's Table 1 mean (0-1) for a model (or the model a variant is named after) and class."""
    for name in sorted(paper.TABLE1, key=len, reverse=True):
        if model == name or model.startswith(name + " "):
            value = paper.paper_value("exp1", name, cls)
            return None if value is None else value[0] / 100
    return None


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (family, point, model, class): accuracy mean, sd, 95 % CI half width, n, the paper's value."""
    out = []
    keys = ["family", "point", "x", "model", "class"]
    for key, part in rows.groupby(keys, sort=False):
        mean, sd, half, n = ci95(part["accuracy"])
        out.append({**dict(zip(keys, key)), "mean": mean, "sd": sd, "ci95": half, "n": int(len(part)),
                    "res_m": float(part["res_m"].iloc[0]), "paper": paper_accuracy(str(key[3]), str(key[4]))})
    return pd.DataFrame(out)


def paired(rows: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Paired tests (:func:`evaluation.paired_tests`, by seed and class): within every point, ``reference``
    against each other model (``kind = "model"``); and for every model, each point against the family's first
    point (``kind = "point"``, model = that model, ``reference`` = the first point). ``mean_diff``: reference
    minus other (within) or first point minus point (across), accuracy 0-1."""
    from topo2vec_lib import evaluation as ev

    out = []
    for family, fam in rows.groupby("family", sort=False):
        for point, part in fam.groupby("point", sort=False):
            if reference in set(part["model"]) and part["model"].nunique() > 1:
                t = ev.paired_tests(part, reference=reference)
                out.append(t.assign(family=family, kind="model", point=point, reference=reference))
        first = fam.sort_values("x")["point"].iloc[0]
        for model, part in fam.groupby("model", sort=False):
            if part["point"].nunique() < 2:
                continue
            t = ev.paired_tests(part.assign(model=part["point"]), reference=first)
            out.append(t.rename(columns={"model": "point"}).assign(family=family, kind="point", model=model,
                                                                   reference=first))
    cols = ["family", "kind", "point", "model", "reference", "class", "n", "mean_diff", "t_p", "wilcoxon_p"]
    return pd.concat(out, ignore_index=True)[cols] if out else pd.DataFrame(columns=cols)


def training_table(plan: Plan, ctx: Context) -> pd.DataFrame:
    """Per trained model and length: images, held-out L1, training loss, wall time (from the cache's json)."""
    out = []
    for t in plan.trainings:
        if t.terrain not in ctx.terrains:                 # a window not made yet (an estimate-only run)
            continue
        for n in (*t.snapshot_images, int(t.config["images"])):
            path = ctx.model_path(t, None if n == int(t.config["images"]) else n).with_suffix(".json")
            if not path.exists():
                continue
            m = read_json(path)
            out.append({"model": t.label, "aliases": list(t.aliases), "seed": t.seed, "terrain": t.terrain,
                        "images": int(m["images"]), "images_seen": m.get("images_seen"),
                        "k": int(t.config["k"]), "train_res_m": list(t.config["train_res_m"]),
                        "precision": t.config.get("precision"), "test_l1": m["test_l1"],
                        "train_loss": m.get("train_loss"), "wall_s": m.get("wall_s"),
                        "snapshot_of": m.get("snapshot_of"), "file": path.with_suffix(".pt").name})
    return pd.DataFrame(out)


def results_dict(rows: pd.DataFrame, summary: pd.DataFrame, tests: pd.DataFrame, trainings: pd.DataFrame,
                 meta: Mapping) -> dict:
    """``metrics/ablations.json``: per family the summary cells, the paired tests and (length) the held-out L1."""
    def records(df: pd.DataFrame) -> list[dict]:
        return json.loads(df.to_json(orient="records"))

    fams = {}
    for family in pd.unique(summary["family"]):
        fams[family] = {"summary": records(summary[summary["family"] == family]),
                        "paired": records(tests[tests["family"] == family])}
    return {**dict(meta), "families": fams, "trainings": records(trainings), "probe_rows": int(len(rows))}
