"""The paper's baselines (ID, supervised CNN, SauMoCo) and a geomorphometry baseline, behind one interface.

Every baseline is an :class:`topo2vec_lib.embedders.Embedder` (``embed_patches``, ``embed``, ``save``,
``from_checkpoint``), is built or trained by a trainer with the uniform signature
``train_<kind>(config, sampler, *, labels, out_path, resume_path=None, seed=0, device="auto", progress=True)
-> metrics`` and is written with :func:`topo2vec_lib.checkpoints.save_checkpoint` (``kind`` = its key in
:data:`EMBEDDERS`). Configs are a params.yaml model section merged over the ``train`` section; unknown keys
raise. Inputs of the learned models are the sampler's normalised 17 x 17 patches (``sampler.normalize``,
per-patch min-max), exactly what topo2vec sees.

- **ID** (``kind: id``, paper 3.1): the flattened normalised patch, ``(N, 289)``.
- **CNN** (``kind: cnn``, paper 3.1; reference code ``basic_conv_net_latent.py``): conv5x5(10)-SELU-maxpool2-
  conv5x5(20)-SELU-maxpool2 (17 -> 13 -> 6 -> 2 -> 1 px) -> FC 20 -> ``latent_dim`` (the embedding, the last
  hidden layer, taken before its SELU as the reference code does) -> SELU -> FC -> classes. SELU as the reference
  code: self-normalising, so the tiny net needs no BatchNorm. Trained with cross-entropy and Adam to tell the
  paper's four basic classes (peak, saddle, river, cliff) from each other **and from random places** (a fifth
  class "random"; the paper lists only the four, but the probes of Exp. 1 are class-vs-random, so the
  features must separate classes from random terrain). ``examples`` labelled TRAIN-region examples,
  balanced over the classes.
- **SauMoCo** (``kind: saumoco``; Kang et al. 2020, IEEE TGRS 59(3), code github.com/jiankang1991/SauMoCo):
  MoCo (He et al. 2020) whose positive pair is a patch and a patch at a geographically close place. The
  backbone is topo2vec's own :class:`topo2vec_lib.networks.Encoder` (128-d); the embedding is the backbone
  output; a projection head (``head: linear`` as SauMoCo's code, ``mlp`` as MoCo v2) and L2 normalisation
  feed the InfoNCE loss. See :data:`SAUMOCO_SOURCES` for every hyper-parameter and where it comes from.
- **Geomorphometry** (``kind: geomorphometry``, not in the paper): the fixed descriptors of
  :mod:`topo2vec_lib.geomorphometry` on raw-metre patches at several pixel sizes (``scales_m``).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from topo2vec_lib import checkpoints
from topo2vec_lib import geomorphometry as gm
from topo2vec_lib.embedders import Embedder, as_patch_batch
from topo2vec_lib.networks import LATENT_DIM, Encoder
from topo2vec_lib.sampler import normalize

PATCH = 17
NEGATIVE_CLASS = "random"
BASIC_CLASSES = ["peak", "saddle", "river", "cliff"]      # paper 3.1: the CNN's classes (= Exp. 1)

# Keys of the params.yaml `train` section every model config is merged over (defaults when absent), as
# topo2vec's trainer. ``workers`` is accepted and ignored: the baselines sample their (small) batches in the
# main thread. ``chunk_batches``, ``checkpoint_steps`` and ``log_steps`` mean what they mean for topo2vec.
TRAIN_DEFAULTS = {"name": None, "images": 100_000, "epochs": 1, "batch_size": 64, "device": "auto",
                  "workers": 0, "chunk_batches": 16, "checkpoint_steps": 0, "log_steps": 50}

MODEL_DEFAULTS: dict[str, dict] = {
    "id": {"embed_res_m": 30.0},
    "cnn": {"examples": 20_000, "classes": BASIC_CLASSES, "train_res_m": [30.0], "embed_res_m": 30.0,
            "lr": 1e-4, "latent_dim": 35, "val_fraction": 0.1},
    "saumoco": {"train_res_m": [30.0], "embed_res_m": 30.0, "lr": 2e-4, "queue_size": 4096,
                "momentum": 0.999, "temperature": 0.07, "neighbour_radius_m": 1020.0, "head": "linear",
                "proj_dim": 128, "flip_rot": True, "bn_groups": 2, "stem": "paper"},
    "geomorphometry": {"scales_m": [30.0, 60.0, 120.0], "flat_deg": gm.FLAT_DEG},
}

SAUMOCO_SOURCES = {
    "queue_size": "4096. MoCo (He et al. 2020) uses K = 65536 for 1.28M ImageNet images (5 %); SauMoCo's code "
                  "(MemoryMoCo(dim, n_data, n_data)) uses K = the 100,000 tiles with 500 epochs. With 100,000 "
                  "images per epoch and 1-2 epochs, K = 65536 would hold keys up to 1000 steps old and stay "
                  "partly random for its first 1000 steps, so K is scaled to MoCo's ratio: 4096 / 100,000 = 4 %.",
    "momentum": "0.999: MoCo and SauMoCo's code (--alpha 0.999).",
    "temperature": "0.07: MoCo v1 and SauMoCo's code (--nce_t 0.07); MoCo v2 uses 0.2 with an MLP head.",
    "neighbour_radius_m": "1020 m = 2 patch widths at 30 m/px: SauMoCo's code draws the neighbour's centre "
                          "uniformly within +-100 px of the 50 px anchor tile in x and in y (NAIP, "
                          "--neighbor 100), i.e. +-2 tile widths, a square neighbourhood; here +-R m in x and y "
                          "of the metric CRS.",
    "head": "linear 128 -> proj_dim then L2 normalisation: SauMoCo's code (FC 512 -> 128, F.normalize); "
            "'mlp' (128 -> 128 -> ReLU -> proj_dim) is MoCo v2's.",
    "flip_rot": "random horizontal/vertical flips and 90-degree rotations, drawn independently for anchor and "
                "neighbour: SauMoCo's code (RandomFlipAndRotate). Its only other transform is colour "
                "scaling, which topography has no use for. Landforms of the probe classes have no canonical "
                "orientation, so the invariance is sound.",
    "bn_groups": "2: MoCo's shuffling BN, emulated on one device: the query batch is normalised in 2 groups "
                 "and the key batch in 2 groups of a random permutation, so a query and its key never share "
                 "BatchNorm statistics exactly (MoCo: 32 images per GPU; here 64 / 2 = 32).",
    "optimizer": "Adam with lr (default 2e-4, topo2vec's paper lr), the same budget as topo2vec "
                 "(images x epochs). SauMoCo's code uses SGD lr 1e-3, momentum 0.9, Nesterov, weight decay "
                 "1e-4, batch 256 for 500 epochs, which does not fit a 1-2 epoch budget.",
}

HEADS = ("linear", "mlp")


# =============================================================================================== config
def resolve_config(kind: str, config: dict | None) -> dict:
    """Validate a baseline model config (train section merged with the model's section) and fill defaults.

    Raises ValueError for an unknown kind, unknown keys (naming the valid ones) or bad values.
    """
    if kind not in MODEL_DEFAULTS:
        raise ValueError(f"unknown baseline kind {kind!r}; expected one of {sorted(MODEL_DEFAULTS)}")
    config = dict(config or {})
    given = config.pop("kind", kind)
    if given != kind:
        raise ValueError(f"config kind={given!r} given to the {kind!r} trainer; expected kind {kind!r}")
    allowed = set(TRAIN_DEFAULTS) | set(MODEL_DEFAULTS[kind])
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"unknown {kind} config key(s) {unknown}; valid keys are {sorted(allowed)}")
    cfg = {"kind": kind, **copy.deepcopy(TRAIN_DEFAULTS), **copy.deepcopy(MODEL_DEFAULTS[kind]), **config}
    if cfg["name"] is None:
        cfg["name"] = kind

    def positive_int(key, minimum=1):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ValueError(f"{key}={v!r}: expected an integer >= {minimum}")
        cfg[key] = int(v)

    def positive_float(key, allow_zero=False):
        v = cfg[key]
        ok = isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v) \
            and (v >= 0 if allow_zero else v > 0)
        if not ok:
            raise ValueError(f"{key}={v!r}: expected a {'non-negative' if allow_zero else 'positive'} number")
        cfg[key] = float(v)

    for key in ("images", "epochs", "chunk_batches"):
        positive_int(key)
    positive_int("batch_size", 2)
    for key in ("workers", "checkpoint_steps", "log_steps"):
        positive_int(key, 0)
    if "embed_res_m" in cfg:
        positive_float("embed_res_m")
    if "train_res_m" in cfg:
        res = cfg["train_res_m"]
        res = [res] if isinstance(res, (int, float)) and not isinstance(res, bool) else list(res)
        if len(res) != 1 or isinstance(res[0], bool) or not isinstance(res[0], (int, float)) or res[0] <= 0:
            raise ValueError(f"train_res_m={cfg['train_res_m']!r}: expected one positive pixel size in metres "
                             f"(a number or a one-element list); {kind} trains at a single scale")
        cfg["train_res_m"] = [float(res[0])]
    if kind == "cnn":
        positive_int("examples")
        positive_int("latent_dim")
        positive_float("lr")
        positive_float("val_fraction")
        if not cfg["val_fraction"] < 0.5:
            raise ValueError(f"val_fraction={cfg['val_fraction']!r}: expected a fraction in (0, 0.5)")
        classes = cfg["classes"]
        if isinstance(classes, str) or not list(classes):
            raise ValueError(f"classes={classes!r}: expected a non-empty list of label class names")
        from topo2vec_lib.labels import get_class
        cfg["classes"] = [get_class(c).name for c in classes]
        if len(set(cfg["classes"])) != len(cfg["classes"]):
            raise ValueError(f"classes={classes!r} repeats a class")
        if cfg["examples"] < 10 * (len(cfg["classes"]) + 1):
            raise ValueError(f"examples={cfg['examples']}: expected at least 10 per class "
                             f"({10 * (len(cfg['classes']) + 1)} for {len(cfg['classes']) + 1} classes)")
    if kind == "saumoco":
        positive_float("lr")
        positive_float("temperature")
        positive_float("neighbour_radius_m", allow_zero=True)
        positive_int("queue_size")
        positive_int("proj_dim")
        positive_int("bn_groups")
        positive_float("momentum", allow_zero=True)
        if not cfg["momentum"] < 1:
            raise ValueError(f"momentum={cfg['momentum']!r}: expected a number in [0, 1)")
        if cfg["queue_size"] < cfg["batch_size"]:
            raise ValueError(f"queue_size={cfg['queue_size']} is smaller than batch_size={cfg['batch_size']}; "
                             f"the queue must hold at least one batch of keys")
        if cfg["batch_size"] < 2 * cfg["bn_groups"]:
            raise ValueError(f"bn_groups={cfg['bn_groups']}: each BatchNorm group needs >= 2 of the "
                             f"batch_size={cfg['batch_size']} images")
        if cfg["head"] not in HEADS:
            raise ValueError(f"head={cfg['head']!r}: expected one of {list(HEADS)}")
        if not isinstance(cfg["flip_rot"], bool):
            raise ValueError(f"flip_rot={cfg['flip_rot']!r}: expected true or false")
        Encoder(cfg["stem"])                                                    # validates stem
    if kind == "geomorphometry":
        scales = cfg["scales_m"]
        scales = [scales] if isinstance(scales, (int, float)) and not isinstance(scales, bool) else list(scales)
        if not scales or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 for s in scales):
            raise ValueError(f"scales_m={cfg['scales_m']!r}: expected a non-empty list of positive pixel sizes "
                             f"in metres, e.g. [30, 60, 120]")
        if sorted(set(scales)) != list(scales):
            raise ValueError(f"scales_m={cfg['scales_m']!r}: expected distinct pixel sizes in increasing order")
        cfg["scales_m"] = [float(s) for s in scales]
        positive_float("flat_deg", allow_zero=True)
    return cfg


def _resolve_device(cfg: dict, device) -> torch.device:
    from topo2vec_lib.training import resolve_device
    return resolve_device(cfg["device"] if str(device) == "auto" else device)


def _config_key(cfg: dict, seed: int) -> str:
    run = {k: v for k, v in cfg.items() if k not in ("device", "workers", "name")}
    return json.dumps({"config": run, "seed": int(seed)}, sort_keys=True, default=str)


class _Mean:
    """Running sums of named losses (plain dict state, for resume)."""

    def __init__(self, sums: dict | None = None, count: int = 0):
        self.sums, self.count = dict(sums or {}), int(count)

    def add(self, values: dict) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def means(self) -> dict:
        return {k: v / self.count for k, v in self.sums.items()} if self.count else {}

    def state(self) -> dict:
        return {"sums": dict(self.sums), "count": self.count}


def _throughput(embedder, sampler, res_m: float, n: int, seed: int, place_res_m: float | None = None) -> float:
    """Places embedded per second (including patch sampling) on ``n`` random places of ``sampler``
    (drawn so that a 17 px patch at ``place_res_m``, default ``res_m``, fits)."""
    lon, lat = sampler.random_places(n, np.random.default_rng([seed, 99]),
                                     max(place_res_m or res_m, sampler.res_m), size=PATCH)
    t0 = time.perf_counter()
    embedder.embed(sampler, lon, lat, res_m=res_m)
    return n / max(time.perf_counter() - t0, 1e-9)


def _drop_resume(resume_path) -> None:
    """Delete the resume file once the final checkpoint is written (as topo2vec's trainer does)."""
    if resume_path is not None and Path(resume_path).exists():
        os.remove(resume_path)


def _load_resume(resume_path, key: str):
    state = checkpoints.load_resume_state(resume_path)
    if state is not None and state["config"].get("key") != key:
        warnings.warn(f"resume file {resume_path} belongs to another config or seed; starting afresh")
        state = None
    return state


# =============================================================================================== ID
class IdEmbedder(Embedder):
    """ID (paper 3.1): the flattened normalised 17 x 17 patch, ``(N, 289)`` float32."""

    kind = "id"

    def __init__(self, config: dict | None = None, name: str | None = None):
        self.config = resolve_config("id", config)
        self.name = name or self.config["name"]
        self.dim = PATCH * PATCH
        self.res_m = self.config["embed_res_m"]

    def embed_patches(self, x) -> np.ndarray:
        x = as_patch_batch(x)
        return np.ascontiguousarray(x.reshape(len(x), self.dim))

    def save(self, path) -> None:
        checkpoints.save_checkpoint(path, kind=self.kind, config=self.config, state={})

    @classmethod
    def from_checkpoint(cls, ckpt: dict, name: str | None = None) -> "IdEmbedder":
        return cls(ckpt["config"], name=name)


def build_id(config: dict, sampler, *, labels=None, out_path, resume_path=None, seed: int = 0,
             device: str = "auto", progress: bool = True) -> dict:
    """Write the ID baseline's checkpoint (nothing to learn); metrics hold its embedding throughput."""
    return _build_fixed(IdEmbedder(config), sampler, out_path, resume_path, seed)


def _build_fixed(emb, sampler, out_path, resume_path, seed: int, max_res_m: float | None = None) -> dict:
    """Save a non-learned embedder's checkpoint; metrics: wall time, dimension, embedding throughput."""
    t0 = time.perf_counter()
    emb.save(out_path)
    wall_s = time.perf_counter() - t0
    _drop_resume(resume_path)
    return {"images_seen": 0, "wall_s": wall_s, "images_per_s": None, "final_loss": None, "history": [],
            "dim": emb.dim, "embed_places_per_s": _throughput(emb, sampler, emb.res_m, 1000, seed, max_res_m)}


# =============================================================================================== CNN
class SupervisedCNN(nn.Module):
    """conv5x5(10)-SELU-pool-conv5x5(20)-SELU-pool -> FC 20 -> latent -> SELU -> FC -> classes (reference code).

    ``embed``: ``(N, 1, 17, 17)`` -> ``(N, latent_dim)``; ``forward``: -> ``(N, n_classes)`` logits.
    """

    def __init__(self, n_classes: int, latent_dim: int = 35):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 10, 5), nn.SELU(), nn.MaxPool2d(2),      # 17 -> 13 -> 6
                                      nn.Conv2d(10, 20, 5), nn.SELU(), nn.MaxPool2d(2))     # 6 -> 2 -> 1
        self.latent = nn.Linear(20, latent_dim)
        self.classify = nn.Sequential(nn.SELU(), nn.Linear(latent_dim, n_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (1, PATCH, PATCH):
            raise ValueError(f"CNN input must have shape (N, 1, 17, 17), got {tuple(x.shape)}")
        return self.latent(self.features(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(x))


class _TorchEmbedder(Embedder):
    """Shared ``embed_patches`` of the learned baselines: eval mode, no grad, CPU numpy float32 out."""

    batch = 4096

    def _net_embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_patches(self, x) -> np.ndarray:
        x = as_patch_batch(x)
        self.net.eval()
        out = np.empty((len(x), self.dim), dtype=np.float32)
        with torch.no_grad():
            for s in range(0, len(x), self.batch):
                xb = torch.from_numpy(x[s:s + self.batch]).to(self.device)
                out[s:s + self.batch] = self._net_embed(xb).float().cpu().numpy()
        return out

    def to(self, device) -> "_TorchEmbedder":
        self.device = torch.device(device)
        self.net.to(self.device)
        return self


class CnnEmbedder(_TorchEmbedder):
    """Supervised CNN baseline: the last hidden layer (``latent_dim``, default 35) of :class:`SupervisedCNN`."""

    kind = "cnn"

    def __init__(self, config: dict, state: dict | None = None, name: str | None = None):
        self.config = resolve_config("cnn", {k: v for k, v in config.items() if k != "seed"})
        self.seed = config.get("seed")
        self.name = name or self.config["name"]
        self.classes = list(self.config["classes"]) + [NEGATIVE_CLASS]
        self.net = SupervisedCNN(len(self.classes), self.config["latent_dim"])
        if state is not None:
            self.net.load_state_dict(state)
        self.net.eval()
        self.dim = self.config["latent_dim"]
        self.res_m = self.config["embed_res_m"]
        self.device = torch.device("cpu")

    def _net_embed(self, x):
        return self.net.embed(x)

    def predict_proba(self, x) -> np.ndarray:
        """Class probabilities ``(N, len(classes))`` of normalised patches (order: ``self.classes``)."""
        x = as_patch_batch(x)
        self.net.eval()
        with torch.no_grad():
            return torch.softmax(self.net(torch.from_numpy(x).to(self.device)), 1).cpu().numpy()

    def save(self, path) -> None:
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        checkpoints.save_checkpoint(path, kind=self.kind, config={**self.config, "seed": self.seed},
                                    state={"model": state, "classes": self.classes})

    @classmethod
    def from_checkpoint(cls, ckpt: dict, name: str | None = None) -> "CnnEmbedder":
        return cls(ckpt["config"], ckpt["state"]["model"], name=name)


def _check_labels(labels) -> pd.DataFrame:
    if labels is None:
        raise ValueError("the supervised CNN needs labels: a DataFrame with columns lon, lat, class, source, "
                         "region (topo2vec_lib.labels.read_labels)")
    if not isinstance(labels, pd.DataFrame):
        raise ValueError(f"labels must be a pandas DataFrame, got {type(labels).__name__}")
    missing = [c for c in ("lon", "lat", "class", "region") if c not in labels.columns]
    if missing:
        raise ValueError(f"labels lack column(s) {missing}; required: lon, lat, class, region")
    return labels


def cnn_examples(cfg: dict, sampler, labels: pd.DataFrame, seed: int) -> dict:
    """Balanced labelled examples for the CNN from the TRAIN region, split into train and validation.

    Per class ``n = examples // (len(classes) + 1)`` examples (the last class is ``"random"``: places from
    ``sampler.random_places``). Labels are filtered to region ``"train"`` and to places whose patch at
    ``train_res_m`` lies inside the terrain without nodata; the *distinct* places of each class are split
    ``val_fraction`` / rest first, then each side is sampled to its share of ``n`` (with replacement only
    when it has fewer distinct places than needed), so no place is in both. Returns ``x_train (M, 1, 17, 17)``,
    ``y_train (M,)``, ``x_val``, ``y_val`` and per-class counts.
    """
    labels = _check_labels(labels)
    res_m = cfg["train_res_m"][0]
    train = labels[labels["region"] == "train"]
    if len(train) == 0:
        regions = sorted(map(str, labels["region"].unique()))
        raise ValueError(f"no labels in region 'train' (labels hold {len(labels)} rows in regions {regions}); "
                         f"the CNN trains on the TRAIN region only")
    classes = cfg["classes"]
    n_per_class = cfg["examples"] // (len(classes) + 1)
    n_val = max(1, int(round(cfg["val_fraction"] * n_per_class)))
    n_tr = n_per_class - n_val
    rng = np.random.default_rng([seed, 11])
    places = {"train": ([], [], []), "val": ([], [], [])}
    counts = {}
    for ci, name in enumerate(classes + [NEGATIVE_CLASS]):
        if name == NEGATIVE_CLASS:
            lon, lat = sampler.random_places(n_per_class, rng, res_m, size=PATCH)
            n_rows = n_valid = n_per_class
        else:
            rows = train[train["class"] == name]
            n_rows = len(rows)
            if n_rows == 0:
                present = sorted(map(str, train["class"].unique()))
                raise ValueError(f"no labels of class {name!r} in region 'train' (classes present: {present}); "
                                 f"the CNN's classes are {classes}")
            pts = np.unique(rows[["lon", "lat"]].to_numpy(np.float64), axis=0)
            ok = sampler.valid_places(pts[:, 0], pts[:, 1], res_m, size=PATCH)
            pts = pts[ok]
            n_valid = len(pts)
            if n_valid < 2:
                raise ValueError(f"class {name!r} has {n_valid} distinct usable place(s) in region 'train' "
                                 f"({n_rows} rows; patches of {PATCH} px at {res_m:g} m/px must lie inside the "
                                 f"terrain without nodata); need >= 2 to split train/validation")
            pts = pts[rng.permutation(n_valid)]
            lon, lat = pts[:, 0], pts[:, 1]
        k_val = min(max(1, int(round(cfg["val_fraction"] * n_valid))), n_valid - 1)
        split = {"val": (lon[:k_val], lat[:k_val], n_val), "train": (lon[k_val:], lat[k_val:], n_tr)}
        for part, (plon, plat, n) in split.items():
            idx = rng.choice(len(plon), size=n, replace=len(plon) < n)
            places[part][0].append(plon[idx])
            places[part][1].append(plat[idx])
            places[part][2].append(np.full(n, ci, dtype=np.int64))
        counts[name] = {"label_rows": int(n_rows), "distinct_usable": int(n_valid),
                        "distinct_train": int(len(lon) - k_val), "distinct_val": int(k_val),
                        "examples_train": int(n_tr), "examples_val": int(n_val),
                        "with_replacement": bool(len(lon) - k_val < n_tr or k_val < n_val)}
    out = {"counts": counts, "classes": classes + [NEGATIVE_CLASS]}
    for part, (lons, lats, ys) in places.items():
        lon, lat = np.concatenate(lons), np.concatenate(lats)
        out[f"x_{part}"] = normalize(sampler.patches(lon, lat, res_m, PATCH))[:, None]
        out[f"y_{part}"] = np.concatenate(ys)
    return out


def train_cnn(config: dict, sampler, *, labels: pd.DataFrame | None = None, out_path, resume_path=None,
              seed: int = 0, device: str = "auto", progress: bool = True) -> dict:
    """Train the supervised CNN baseline (cross-entropy, Adam ``lr``, ``epochs`` over the examples).

    ``labels``: the label table (rows of region ``"train"`` are used). Holds out ``val_fraction`` of the
    distinct places per class and reports validation loss and accuracy per epoch. Resumable from
    ``resume_path`` (saved after every epoch and every ``checkpoint_steps`` steps; the examples are rebuilt
    from the seed, the batch order of epoch e comes from ``default_rng([seed, 12, e])``).
    """
    cfg = resolve_config("cnn", config)
    dev = _resolve_device(cfg, device)
    key = _config_key(cfg, seed)
    t_data = time.perf_counter()
    data = cnn_examples(cfg, sampler, labels, seed)
    data_s = time.perf_counter() - t_data
    classes = data["classes"]

    torch.manual_seed(seed)
    net = SupervisedCNN(len(classes), cfg["latent_dim"]).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    bs = cfg["batch_size"]
    n_train = len(data["y_train"])
    steps_per_epoch = math.ceil(n_train / bs)
    start_epoch, step, history, wall_before, resumed_from = 0, 0, [], 0.0, None
    window, epoch_loss = _Mean(), _Mean()
    state = _load_resume(resume_path, key)
    if state is not None:
        net.load_state_dict(state["models"]["cnn"])
        opt.load_state_dict(state["optimizers"]["adam"])
        start_epoch, step, history = state["epoch"], state["step"], list(state["history"])
        wall_before = float(state["extra"]["wall_s"])
        window, epoch_loss = _Mean(**state["extra"]["window"]), _Mean(**state["extra"]["epoch_loss"])
        resumed_from = step

    t0 = time.perf_counter()
    step_at_start = step

    def save_resume(epoch: int) -> None:
        if resume_path is not None:
            checkpoints.save_resume_state(
                resume_path, epoch=epoch, step=step, models={"cnn": net}, optimizers={"adam": opt},
                rng_state=checkpoints.rng_state(), history=history, config={"key": key, "model": cfg},
                extra={"wall_s": wall_before + time.perf_counter() - t0, "window": window.state(),
                       "epoch_loss": epoch_loss.state()})

    x_tr = torch.from_numpy(data["x_train"])
    y_tr = torch.from_numpy(data["y_train"])
    ce = nn.CrossEntropyLoss()
    last_ckpt = step
    bar = tqdm(total=steps_per_epoch * cfg["epochs"], initial=step, desc=f"train {cfg['name']}",
               disable=not progress, unit="step", mininterval=1.0)
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            net.train()
            order = np.random.default_rng([seed, 12, epoch]).permutation(n_train)
            for b in range(step - epoch * steps_per_epoch, steps_per_epoch):
                idx = torch.from_numpy(order[b * bs:(b + 1) * bs])
                logits = net(x_tr[idx].to(dev))
                loss = ce(logits, y_tr[idx].to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                window.add({"loss": loss.item()})
                epoch_loss.add({"loss": loss.item()})
                bar.update(1)
                if cfg["log_steps"] and step % cfg["log_steps"] == 0:
                    history.append({"scope": "steps", "epoch": epoch, "step": step, "images": step * bs,
                                    **window.means()})
                    window = _Mean()
                if cfg["checkpoint_steps"] and step - last_ckpt >= cfg["checkpoint_steps"] \
                        and b < steps_per_epoch - 1:
                    save_resume(epoch)
                    last_ckpt = step
            val = _cnn_evaluate(net, data["x_val"], data["y_val"], dev)
            history.append({"scope": "epoch", "epoch": epoch, "step": step, "images": step * bs,
                            **epoch_loss.means(), "val_loss": val["loss"], "val_accuracy": val["accuracy"]})
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", val_acc=f"{val['accuracy']:.3f}", refresh=False)
            epoch_loss = _Mean()
            save_resume(epoch + 1)
            last_ckpt = step
    finally:
        bar.close()

    run_s = time.perf_counter() - t0
    emb = CnnEmbedder({**cfg, "seed": seed}, {k: v.detach().cpu() for k, v in net.state_dict().items()})
    emb.save(out_path)
    _drop_resume(resume_path)
    train_eval = _cnn_evaluate(net, data["x_train"], data["y_train"], dev)
    final = history[-1] if history else {}
    images = (step - step_at_start) * bs
    return {"images_seen": min(step * bs, n_train * cfg["epochs"]), "steps": step, "epochs": cfg["epochs"],
            "wall_s": wall_before + run_s, "data_s": data_s,
            "images_per_s": images / run_s if run_s > 0 else float("nan"),
            "final_loss": final.get("loss"), "val_loss": final.get("val_loss"),
            "val_accuracy": final.get("val_accuracy"), "train_accuracy": train_eval["accuracy"],
            "chance_accuracy": 1.0 / len(classes), "classes": classes, "counts": data["counts"],
            "n_train": n_train, "n_val": int(len(data["y_val"])), "resumed_from_step": resumed_from,
            "device": str(dev), "history": history}


def _cnn_evaluate(net: SupervisedCNN, x: np.ndarray, y: np.ndarray, dev) -> dict:
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(torch.from_numpy(x[s:s + 4096]).to(dev)).cpu() for s in range(0, len(x), 4096)])
    yt = torch.from_numpy(y)
    return {"loss": float(F.cross_entropy(logits, yt)), "accuracy": float((logits.argmax(1) == yt).float().mean())}


# =============================================================================================== SauMoCo
def projection_head(kind: str, dim_in: int = LATENT_DIM, dim_out: int = 128) -> nn.Module:
    """``linear`` (SauMoCo's code) or ``mlp`` (MoCo v2: Linear-ReLU-Linear) projection for the contrastive loss."""
    if kind == "linear":
        return nn.Linear(dim_in, dim_out)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, dim_out))
    raise ValueError(f"head={kind!r}: expected one of {list(HEADS)}")


class MoCo(nn.Module):
    """Query encoder + head, momentum key encoder + head, and a queue ``(queue_size, proj_dim)`` of keys."""

    def __init__(self, stem: str = "paper", head: str = "linear", proj_dim: int = 128, queue_size: int = 4096):
        super().__init__()
        self.encoder_q, self.head_q = Encoder(stem), projection_head(head, LATENT_DIM, proj_dim)
        self.encoder_k, self.head_k = copy.deepcopy(self.encoder_q), copy.deepcopy(self.head_q)
        for p in list(self.encoder_k.parameters()) + list(self.head_k.parameters()):
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def query_parameters(self):
        return list(self.encoder_q.parameters()) + list(self.head_q.parameters())

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        """key = m * key + (1 - m) * query, for the encoder and head parameters (MoCo eq. 2)."""
        for q, k in zip(self.query_parameters(),
                        list(self.encoder_k.parameters()) + list(self.head_k.parameters())):
            k.mul_(m).add_(q.detach(), alpha=1 - m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        n, size = keys.shape[0], self.queue.shape[0]
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys
        self.queue_ptr.fill_(int((self.queue_ptr + n) % size))


def _grouped(encoder: nn.Module, head: nn.Module, x: torch.Tensor, groups: int,
             perm: torch.Tensor | None = None) -> torch.Tensor:
    """L2-normalised ``head(encoder(x))`` with BatchNorm statistics per group of ``x[perm]`` (shuffling BN)."""
    if perm is not None:
        x = x[perm]
    z = torch.cat([head(encoder(chunk)) for chunk in torch.chunk(x, groups)])
    z = F.normalize(z, dim=1)
    if perm is not None:
        z = z[torch.argsort(perm)]
    return z


def random_dihedral(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each patch of ``x (N, 1, S, S)`` under one of the 8 flips/90-degree rotations, drawn uniformly by ``rng``."""
    t = rng.integers(0, 8, size=len(x))
    out = np.empty_like(x)
    for i in range(8):
        sel = t == i
        if sel.any():
            y = np.rot90(x[sel], k=i % 4, axes=(2, 3))
            out[sel] = y[..., ::-1] if i >= 4 else y
    return out


def saumoco_chunk(sampler, cfg: dict, seed: int, epoch: int, chunk: int, n_batches: int) -> dict:
    """Anchor and neighbour patches for one chunk of ``n_batches`` batches, from ``default_rng([seed, epoch, chunk])``.

    Anchors: ``sampler.random_places`` at ``train_res_m``. Neighbours: the anchor moved by a uniform offset in
    ``[-R, R]`` metres along x and y of the terrain CRS (R = ``neighbour_radius_m``, SauMoCo's square
    neighbourhood); an offset whose patch leaves the terrain or touches nodata is redrawn (up to 20 times, then
    the offset is 0). Both are normalised per patch and, with ``flip_rot``, flipped/rotated independently.
    Returns ``{"q": (M, 1, 17, 17), "k": (M, 1, 17, 17), "offset_m": (M,)}`` float32, M = n_batches * batch_size.
    """
    rng = np.random.default_rng([seed, 31, epoch, chunk])
    res_m, radius = cfg["train_res_m"][0], cfg["neighbour_radius_m"]
    n = n_batches * cfg["batch_size"]
    lon, lat = sampler.random_places(n, rng, res_m, size=PATCH)
    x, y = sampler.to_xy(lon, lat)
    nx, ny = x.copy(), y.copy()
    todo = np.arange(n)
    for _ in range(20):
        if not todo.size:
            break
        cx = x[todo] + rng.uniform(-radius, radius, todo.size)
        cy = y[todo] + rng.uniform(-radius, radius, todo.size)
        ok = sampler.valid_xy(cx, cy, res_m, size=PATCH)
        nx[todo[ok]], ny[todo[ok]] = cx[ok], cy[ok]
        todo = todo[~ok]
    q = normalize(sampler.patches_xy(x, y, res_m, PATCH))[:, None]
    k = normalize(sampler.patches_xy(nx, ny, res_m, PATCH))[:, None]
    if cfg["flip_rot"]:
        q, k = random_dihedral(q, rng), random_dihedral(k, rng)
    return {"q": np.ascontiguousarray(q), "k": np.ascontiguousarray(k),
            "offset_m": np.hypot(nx - x, ny - y).astype(np.float32), "fallback": int(todo.size)}


class SauMoCoEmbedder(_TorchEmbedder):
    """SauMoCo baseline: the backbone (topo2vec's :class:`~topo2vec_lib.networks.Encoder`) output, ``(N, 128)``."""

    kind = "saumoco"

    def __init__(self, config: dict, state: dict | None = None, name: str | None = None):
        self.config = resolve_config("saumoco", {k: v for k, v in config.items() if k != "seed"})
        self.seed = config.get("seed")
        self.name = name or self.config["name"]
        self.net = Encoder(self.config["stem"])
        self.head = projection_head(self.config["head"], LATENT_DIM, self.config["proj_dim"])
        if state is not None:
            self.net.load_state_dict(state["encoder"])
            self.head.load_state_dict(state["head"])
        self.net.eval()
        self.dim = LATENT_DIM
        self.res_m = self.config["embed_res_m"]
        self.device = torch.device("cpu")

    def _net_embed(self, x):
        return self.net(x)

    def save(self, path) -> None:
        state = {"encoder": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                 "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()}}
        checkpoints.save_checkpoint(path, kind=self.kind, config={**self.config, "seed": self.seed}, state=state)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, name: str | None = None) -> "SauMoCoEmbedder":
        return cls(ckpt["config"], ckpt["state"], name=name)


def train_saumoco(config: dict, sampler, *, labels=None, out_path, resume_path=None, seed: int = 0,
                  device: str = "auto", progress: bool = True) -> dict:
    """Train SauMoCo (spatially augmented MoCo) on ``sampler`` (the TRAIN region); ``labels`` is ignored.

    An epoch is ``images`` anchors (``images // batch_size`` steps), sampled a chunk of ``chunk_batches``
    batches at a time from ``default_rng([seed, 31, epoch, chunk])`` as topo2vec's trainer does, so the
    budget equals topo2vec's and a resumed run sees the same data. Per step (MoCo Algorithm 1): queries
    ``q = normalize(head_q(f_q(anchor)))``; momentum update of the key encoder; keys
    ``k = normalize(head_k(f_k(neighbour)))`` with shuffled BN groups; InfoNCE over ``[q.k, q.queue] /
    temperature`` with the positive at index 0; Adam step; enqueue k. Metrics add the final InfoNCE loss,
    the positive-pair accuracy (positive logit the largest) and the mean neighbour offset.
    """
    cfg = resolve_config("saumoco", config)
    dev = _resolve_device(cfg, device)
    key = _config_key(cfg, seed)
    bs = cfg["batch_size"]
    steps_per_epoch = max(1, cfg["images"] // bs)
    chunks = math.ceil(steps_per_epoch / cfg["chunk_batches"])

    torch.manual_seed(seed)
    moco = MoCo(cfg["stem"], cfg["head"], cfg["proj_dim"], cfg["queue_size"]).to(dev)
    opt = torch.optim.Adam(moco.query_parameters(), lr=cfg["lr"])
    start_epoch, start_chunk, step, history, wall_before, resumed_from = 0, 0, 0, [], 0.0, None
    window, epoch_loss = _Mean(), _Mean()
    state = _load_resume(resume_path, key)
    if state is not None:
        moco.load_state_dict(state["models"]["moco"])
        opt.load_state_dict(state["optimizers"]["adam"])
        checkpoints.set_rng_state(state["rng"])
        start_epoch, step, history = state["epoch"], state["step"], list(state["history"])
        extra = state["extra"]
        start_chunk, wall_before = int(extra["chunk"]), float(extra["wall_s"])
        window, epoch_loss = _Mean(**extra["window"]), _Mean(**extra["epoch_loss"])
        resumed_from = step

    t0 = time.perf_counter()
    step_at_start = step

    def save_resume(epoch: int, chunk: int) -> None:
        if resume_path is not None:
            checkpoints.save_resume_state(
                resume_path, epoch=epoch, step=step, models={"moco": moco}, optimizers={"adam": opt},
                rng_state=checkpoints.rng_state(), history=history, config={"key": key, "model": cfg},
                extra={"chunk": chunk, "wall_s": wall_before + time.perf_counter() - t0,
                       "window": window.state(), "epoch_loss": epoch_loss.state()})

    ce = nn.CrossEntropyLoss()
    groups, temp, m = cfg["bn_groups"], cfg["temperature"], cfg["momentum"]
    last_ckpt, fallbacks, offsets = step, 0, []
    bar = tqdm(total=steps_per_epoch * cfg["epochs"], initial=step, desc=f"train {cfg['name']}",
               disable=not progress, unit="step", mininterval=1.0)
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            moco.train()
            for chunk in range(start_chunk if epoch == start_epoch else 0, chunks):
                n_batches = min(cfg["chunk_batches"], steps_per_epoch - chunk * cfg["chunk_batches"])
                data = saumoco_chunk(sampler, cfg, seed, epoch, chunk, n_batches)
                fallbacks += data["fallback"]
                offsets.append(float(data["offset_m"].mean()))
                perm_gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, 32, epoch, chunk])
                                                             .integers(2 ** 62)))
                for b in range(n_batches):
                    xq = torch.from_numpy(data["q"][b * bs:(b + 1) * bs]).to(dev)
                    xk = torch.from_numpy(data["k"][b * bs:(b + 1) * bs]).to(dev)
                    q = _grouped(moco.encoder_q, moco.head_q, xq, groups)
                    with torch.no_grad():
                        moco.momentum_update(m)
                        perm = torch.randperm(len(xk), generator=perm_gen).to(dev)
                        k = _grouped(moco.encoder_k, moco.head_k, xk, groups, perm)
                    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ moco.queue.T], dim=1) / temp
                    target = torch.zeros(len(q), dtype=torch.long, device=dev)
                    loss = ce(logits, target)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    moco.enqueue(k)
                    step += 1
                    acc = float((logits.argmax(1) == 0).float().mean())
                    window.add({"loss": loss.item(), "pos_accuracy": acc})
                    epoch_loss.add({"loss": loss.item(), "pos_accuracy": acc})
                    bar.update(1)
                    if cfg["log_steps"] and step % cfg["log_steps"] == 0:
                        history.append({"scope": "steps", "epoch": epoch, "step": step, "images": step * bs,
                                        **window.means()})
                        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", refresh=False)
                        window = _Mean()
                if chunk == chunks - 1:
                    history.append({"scope": "epoch", "epoch": epoch, "step": step, "images": step * bs,
                                    **epoch_loss.means()})
                    epoch_loss = _Mean()
                    save_resume(epoch + 1, 0)
                    last_ckpt = step
                elif cfg["checkpoint_steps"] and step - last_ckpt >= cfg["checkpoint_steps"]:
                    save_resume(epoch, chunk + 1)
                    last_ckpt = step
    finally:
        bar.close()

    run_s = time.perf_counter() - t0
    emb = SauMoCoEmbedder({**cfg, "seed": seed},
                          {"encoder": moco.encoder_q.state_dict(), "head": moco.head_q.state_dict()})
    emb.save(out_path)
    _drop_resume(resume_path)
    final = next((h for h in reversed(history) if h["scope"] == "epoch"), {})
    images = (step - step_at_start) * bs
    return {"images_seen": step * bs, "steps": step, "epochs": cfg["epochs"], "images_per_epoch": steps_per_epoch * bs,
            "wall_s": wall_before + run_s, "images_per_s": images / run_s if run_s > 0 else float("nan"),
            "final_loss": final.get("loss"), "final_pos_accuracy": final.get("pos_accuracy"),
            "chance_loss": math.log(cfg["queue_size"] + 1),
            "mean_neighbour_offset_m": float(np.mean(offsets)) if offsets else None,
            "neighbour_fallbacks": fallbacks, "resumed_from_step": resumed_from, "device": str(dev),
            "hyperparameters": {k: cfg[k] for k in ("queue_size", "momentum", "temperature", "neighbour_radius_m",
                                                    "head", "proj_dim", "flip_rot", "bn_groups", "lr")},
            "history": history}


# =============================================================================================== geomorphometry
class GeomorphometryEmbedder(Embedder):
    """Fixed geomorphometric descriptors (:mod:`topo2vec_lib.geomorphometry`) at several pixel sizes.

    ``dim = 10 * len(scales_m)``, ordered scale-major (:attr:`feature_names`, e.g. ``"slope_mean_deg@30m"``).
    ``embed(sampler, lon, lat, res_m)`` samples **raw-metre** 17 x 17 patches at the pixel sizes
    ``scales_m * res_m / scales_m[0]`` (``res_m`` defaults to ``scales_m[0]``: the finest scale moves to the
    requested one, the ratios stay) and returns float32 ``(N, dim)`` in mixed units (degrees, 1/m, m,
    counts): standardise before a distance or an SVM (the probes do). ``embed_patches`` takes those raw-metre
    stacks ``(N, len(scales_m), 17, 17)``. It does **not** accept the normalised patches the other embedders
    take, except a single ``(N, 17, 17)`` / ``(N, 1, 17, 17)`` stack when there is one scale: min-max
    normalisation removes the metres, so slopes, curvatures and the flatness threshold would lose their
    units; use ``embed`` on a sampler or terrain instead.
    """

    kind = "geomorphometry"

    def __init__(self, config: dict | None = None, name: str | None = None):
        self.config = resolve_config("geomorphometry", config)
        self.name = name or self.config["name"]
        self.scales_m = list(self.config["scales_m"])
        self.flat_deg = self.config["flat_deg"]
        self.dim = len(gm.FEATURES) * len(self.scales_m)
        self.res_m = self.scales_m[0]

    @property
    def feature_names(self) -> list[str]:
        return [f"{f}@{s:g}m" for s in self.scales_m for f in gm.FEATURES]

    def scales_for(self, res_m: float | None = None) -> list[float]:
        """Pixel sizes (m) sampled for an embedding at ``res_m`` (finest scale = ``res_m``)."""
        if res_m is None:
            return list(self.scales_m)
        if not (isinstance(res_m, (int, float, np.number)) and np.isfinite(res_m) and res_m > 0):
            raise ValueError(f"res_m={res_m!r}: expected a positive pixel size in metres")
        return [s * float(res_m) / self.scales_m[0] for s in self.scales_m]

    def embed_patches(self, x, res_m: float | None = None) -> np.ndarray:
        """Raw-metre patches ``(N, len(scales_m), 17, 17)`` at :meth:`scales_for` (``res_m``) -> ``(N, dim)``."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x, dtype=np.float64)
        n_s = len(self.scales_m)
        if x.ndim == 3 and n_s == 1:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1:] != (n_s, PATCH, PATCH):
            raise ValueError(f"geomorphometry patches must be raw-metre stacks of shape (N, {n_s}, 17, 17), one "
                             f"per scale {self.scales_m} m, got {x.shape}; normalised single patches have lost "
                             f"their metres: use embed(sampler, lon, lat) instead")
        scales = self.scales_for(res_m)
        feats = [gm.descriptors(x[:, i], s, self.flat_deg) for i, s in enumerate(scales)]
        return np.concatenate(feats, axis=1).astype(np.float32)

    def embed(self, sampler_or_terrain, lon, lat, res_m=None, batch_size: int = 4096,
              progress: bool = False) -> np.ndarray:
        """Descriptors ``(N, dim)`` float32 of places (lon/lat EPSG:4326 degrees) from raw-metre patches."""
        sampler = _as_sampler(sampler_or_terrain)
        lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
        lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
        if lon.shape != lat.shape or lon.ndim != 1:
            raise ValueError(f"lon and lat must be 1-D arrays of the same length, got {lon.shape} and {lat.shape}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        scales = self.scales_for(res_m)
        out = np.empty((len(lon), self.dim), dtype=np.float32)
        starts = range(0, len(lon), batch_size)
        for s in tqdm(starts, desc=f"embed {self.name}", disable=not progress, unit="batch"):
            sl = slice(s, s + batch_size)
            stack = np.stack([sampler.patches(lon[sl], lat[sl], r, PATCH) for r in scales], axis=1)
            out[sl] = self.embed_patches(stack, res_m)
        return out

    def save(self, path) -> None:
        checkpoints.save_checkpoint(path, kind=self.kind, config=self.config,
                                    state={"features": list(self.feature_names)})

    @classmethod
    def from_checkpoint(cls, ckpt: dict, name: str | None = None) -> "GeomorphometryEmbedder":
        return cls(ckpt["config"], name=name)


def _as_sampler(sampler_or_terrain):
    import xarray as xr
    if isinstance(sampler_or_terrain, xr.DataArray):
        from topo2vec_lib.sampler import PatchSampler
        return PatchSampler(sampler_or_terrain)
    if not hasattr(sampler_or_terrain, "patches"):
        raise ValueError(f"expected a PatchSampler or a terrain DataArray, got {type(sampler_or_terrain).__name__}")
    return sampler_or_terrain


def build_geomorphometry(config: dict, sampler, *, labels=None, out_path, resume_path=None, seed: int = 0,
                         device: str = "auto", progress: bool = True) -> dict:
    """Write the geomorphometry baseline's checkpoint (nothing to learn); metrics hold its throughput."""
    emb = GeomorphometryEmbedder(config)
    return {**_build_fixed(emb, sampler, out_path, resume_path, seed, max(emb.scales_m)),
            "features": emb.feature_names}


EMBEDDERS = {"id": IdEmbedder, "cnn": CnnEmbedder, "saumoco": SauMoCoEmbedder,
             "geomorphometry": GeomorphometryEmbedder}
TRAINERS = {"id": build_id, "cnn": train_cnn, "saumoco": train_saumoco, "geomorphometry": build_geomorphometry}
