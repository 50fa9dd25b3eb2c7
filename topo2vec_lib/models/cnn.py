"""Supervised CNN baseline (paper 3.1; reference code ``basic_conv_net_latent.py``).

conv5x5(10)-SELU-maxpool2-conv5x5(20)-SELU-maxpool2 (17 -> 13 -> 6 -> 2 -> 1 px) -> FC 20 -> ``latent_dim``
(the embedding, the last hidden layer, taken before its SELU as the reference code does) -> SELU -> FC ->
classes. SELU as the reference code: self-normalising, so the tiny net needs no BatchNorm. Trained with
cross-entropy and Adam to tell the paper's four basic classes (peak, saddle, river, cliff) from each other
**and from random places** (a fifth class "random"; the paper lists only the four, but the probes of Exp. 1
are class-vs-random, so the features must separate classes from random terrain), on ``examples`` labelled
TRAIN-region examples balanced over the classes.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from topo2vec_lib.models import checkpoints
from topo2vec_lib.models.config import CnnConfig
from topo2vec_lib.models.embedder import PATCH_SIZE, TorchEmbedder, as_patch_batch
from topo2vec_lib.models.trainer import Method, adam
from topo2vec_lib.sampler import PatchSampler, normalize

NEGATIVE_CLASS = "random"


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
        if x.ndim != 4 or x.shape[1:] != (1, PATCH_SIZE, PATCH_SIZE):
            raise ValueError(f"CNN input must have shape (N, 1, 17, 17), got {tuple(x.shape)}")
        return self.latent(self.features(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(x))


class CnnEmbedder(TorchEmbedder):
    """Supervised CNN baseline: the last hidden layer (``latent_dim``, default 35) of :class:`SupervisedCNN`."""

    kind = "cnn"
    net: SupervisedCNN

    def __init__(self, config: CnnConfig | dict, state: dict | None = None, name: str | None = None):
        cfg = config if isinstance(config, CnnConfig) else CnnConfig.from_dict(config)
        self.seed = config.get("seed") if isinstance(config, dict) else None
        self.config = cfg.to_dict()
        self.name = name or cfg.name or self.kind
        self.classes = list(cfg.classes) + [NEGATIVE_CLASS]
        self.net = SupervisedCNN(len(self.classes), cfg.latent_dim)
        if state is not None:
            self.net.load_state_dict(state)
        self.net.eval()
        self.dim = cfg.latent_dim
        self.res_m = cfg.embed_res_m
        self.device = torch.device("cpu")

    def net_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x)

    @torch.no_grad()
    def predict_proba(self, x) -> np.ndarray:
        """Class probabilities ``(N, len(classes))`` of normalised patches (order: ``self.classes``)."""
        a = as_patch_batch(x)
        self.net.eval()
        return torch.softmax(self.net(torch.from_numpy(a).to(self.device)), 1).cpu().numpy()

    def save(self, path: str | os.PathLike) -> None:
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        checkpoints.save_checkpoint(path, kind=self.kind, config={**self.config, "seed": self.seed},
                                    state={"model": state, "classes": self.classes})

    @classmethod
    def from_checkpoint(cls, ckpt: dict, name: str | None = None) -> CnnEmbedder:
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


def cnn_examples(cfg: CnnConfig, sampler: PatchSampler, labels: pd.DataFrame, seed: int) -> dict:
    """Balanced labelled examples for the CNN from the TRAIN region, split into train and validation.

    Per class ``n = examples // (len(classes) + 1)`` examples (the last class is ``"random"``: places from
    ``sampler.random_places``). Labels are filtered to region ``"train"`` and to places whose patch at
    ``train_res_m`` lies inside the terrain without nodata; the *distinct* places of each class are split
    ``val_fraction`` / rest first, then each side is sampled to its share of ``n`` (with replacement only
    when it has fewer distinct places than needed), so no place is in both. Returns ``x_train (M, 1, 17, 17)``,
    ``y_train (M,)``, ``x_val``, ``y_val`` and per-class counts.
    """
    labels = _check_labels(labels)
    res_m = cfg.train_res_m[0]
    train = labels[labels["region"] == "train"]
    from topo2vec_lib.osm import check_not_swapped

    check_not_swapped(train, sampler, where="CNN labels of region 'train'")
    if len(train) == 0:
        regions = sorted(map(str, labels["region"].unique()))
        raise ValueError(f"no labels in region 'train' (labels hold {len(labels)} rows in regions {regions}); "
                         f"the CNN trains on the TRAIN region only")
    classes = list(cfg.classes)
    n_per_class = cfg.examples // (len(classes) + 1)
    n_val = max(1, int(round(cfg.val_fraction * n_per_class)))
    n_tr = n_per_class - n_val
    rng = np.random.default_rng([seed, 11])
    places: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "val": ([], [], [])}
    counts = {}
    for ci, name in enumerate(classes + [NEGATIVE_CLASS]):
        if name == NEGATIVE_CLASS:
            lon, lat = sampler.random_places(n_per_class, rng, res_m, size=PATCH_SIZE)
            n_rows = n_valid = n_per_class
        else:
            rows = train[train["class"] == name]
            n_rows = len(rows)
            if n_rows == 0:
                present = sorted(map(str, train["class"].unique()))
                raise ValueError(f"no labels of class {name!r} in region 'train' (classes present: {present}); "
                                 f"the CNN's classes are {classes}")
            pts = np.unique(rows[["lon", "lat"]].to_numpy(np.float64), axis=0)
            ok = sampler.valid_places(pts[:, 0], pts[:, 1], res_m, size=PATCH_SIZE)
            pts = pts[ok]
            n_valid = len(pts)
            if n_valid < 2:
                raise ValueError(f"class {name!r} has {n_valid} distinct usable place(s) in region 'train' "
                                 f"({n_rows} rows; patches of {PATCH_SIZE} px at {res_m:g} m/px must lie inside the "
                                 f"terrain without nodata); need >= 2 to split train/validation")
            pts = pts[rng.permutation(n_valid)]
            lon, lat = pts[:, 0], pts[:, 1]
        k_val = min(max(1, int(round(cfg.val_fraction * n_valid))), n_valid - 1)
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
    out: dict = {"counts": counts, "classes": classes + [NEGATIVE_CLASS]}
    for part, (lons, lats, ys) in places.items():
        lon, lat = np.concatenate(lons), np.concatenate(lats)
        out[f"x_{part}"] = normalize(sampler.patches(lon, lat, res_m, PATCH_SIZE))[:, None]
        out[f"y_{part}"] = np.concatenate(ys)
    return out


def _evaluate(net: SupervisedCNN, x: np.ndarray, y: np.ndarray, dev: torch.device) -> dict:
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(torch.from_numpy(x[s:s + 4096]).to(dev)).cpu() for s in range(0, len(x), 4096)])
    yt = torch.from_numpy(y)
    return {"loss": float(F.cross_entropy(logits, yt)), "accuracy": float((logits.argmax(1) == yt).float().mean())}


class CnnMethod(Method):
    """Cross-entropy on the balanced examples; the batch order of epoch e comes from ``default_rng([seed, 12, e])``.
    Holds out ``val_fraction`` of the distinct places per class and reports validation loss and accuracy."""

    cfg: CnnConfig

    def __init__(self, cfg: CnnConfig, sampler: PatchSampler, labels: pd.DataFrame, *, seed: int,
                 device: torch.device):
        self.cfg, self.seed, self.device = cfg, int(seed), device
        t0 = time.perf_counter()
        self.data = cnn_examples(cfg, sampler, labels, seed)
        self.data_s = time.perf_counter() - t0
        self.n_train = len(self.data["y_train"])
        self.batches_per_epoch = math.ceil(self.n_train / cfg.batch_size)
        self.x_train, self.y_train = torch.from_numpy(self.data["x_train"]), torch.from_numpy(self.data["y_train"])
        self.ce = nn.CrossEntropyLoss()

    def build(self) -> None:
        self.net = net = SupervisedCNN(len(self.data["classes"]), self.cfg.latent_dim).to(self.device)
        self.modules = {"cnn": net}
        self.optimizers = {"adam": adam(net.parameters(), self.cfg.lr)}

    def chunk(self, epoch: int, index: int) -> list[np.ndarray]:
        bs, cb = self.cfg.batch_size, self.cfg.chunk_batches
        order = np.random.default_rng([self.seed, 12, epoch]).permutation(self.n_train)
        last = min((index + 1) * cb, self.batches_per_epoch)
        return [order[b * bs:(b + 1) * bs] for b in range(index * cb, last)]

    def steps(self, data):
        return iter(data)

    def step(self, batch) -> dict[str, float]:
        idx = torch.from_numpy(batch)
        net, opt = self.modules["cnn"], self.optimizers["adam"]
        loss = self.ce(net(self.x_train[idx].to(self.device)), self.y_train[idx].to(self.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    def end_epoch(self, epoch: int) -> dict[str, float]:
        val = _evaluate(self.net, self.data["x_val"], self.data["y_val"], self.device)
        return {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}

    def embedder(self) -> CnnEmbedder:
        state = {k: v.detach().cpu() for k, v in self.modules["cnn"].state_dict().items()}
        return CnnEmbedder({**self.cfg.to_dict(), "seed": self.seed}, state)

    def summary(self, history: list[dict]) -> dict:
        final = history[-1] if history else {}
        steps = final.get("step", 0)
        train_eval = _evaluate(self.net, self.data["x_train"], self.data["y_train"], self.device)
        return {"images_seen": min(steps * self.cfg.batch_size, self.n_train * self.cfg.epochs),
                "data_s": self.data_s, "val_loss": final.get("val_loss"), "val_accuracy": final.get("val_accuracy"),
                "train_accuracy": train_eval["accuracy"], "chance_accuracy": 1.0 / len(self.data["classes"]),
                "classes": self.data["classes"], "counts": self.data["counts"], "n_train": self.n_train,
                "n_val": int(len(self.data["y_val"]))}


def make_method(cfg: CnnConfig, sampler: PatchSampler, *, labels: pd.DataFrame | None = None, seed: int = 0,
                device: torch.device) -> CnnMethod:
    """The CNN method for :func:`topo2vec_lib.models.trainer.fit` (``labels``: rows of region ``"train"`` are used)."""
    return CnnMethod(cfg, sampler, _check_labels(labels), seed=seed, device=device)
