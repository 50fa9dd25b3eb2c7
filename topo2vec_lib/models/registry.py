"""The model registry: every model kind, its configuration, embedder and training method.

Like TorchGeo's ``models/api.py``: this module imports every method; no method imports it back. Use
:func:`train_model` to train or build any kind from a params.yaml configuration, :func:`load_embedder` to read
any checkpoint, :func:`model_config` to validate a configuration.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from topo2vec_lib.models import checkpoints, cnn, identity, saumoco, topo2vec
from topo2vec_lib.models import geomorphometry as geomorphometry_model
from topo2vec_lib.models.config import (
    CnnConfig,
    GeomorphometryConfig,
    IdConfig,
    ModelConfig,
    SauMoCoConfig,
    Topo2VecConfig,
)
from topo2vec_lib.models.embedder import Embedder
from topo2vec_lib.models.trainer import Method, fit, resolve_device, torch_threads
from topo2vec_lib.sampler import PatchSampler


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model kind: its configuration class, its embedder class and (for learned kinds) its method factory."""

    config: type[ModelConfig]
    embedder: type[Embedder]
    method: Callable[..., Method] | None = None


MODELS: dict[str, ModelSpec] = {
    "topo2vec": ModelSpec(Topo2VecConfig, topo2vec.Topo2Vec, topo2vec.make_method),
    "id": ModelSpec(IdConfig, identity.IdEmbedder),
    "cnn": ModelSpec(CnnConfig, cnn.CnnEmbedder, cnn.make_method),
    "saumoco": ModelSpec(SauMoCoConfig, saumoco.SauMoCoEmbedder, saumoco.make_method),
    "geomorphometry": ModelSpec(GeomorphometryConfig, geomorphometry_model.GeomorphometryEmbedder),
}


def model_spec(kind: Any) -> ModelSpec:
    """The :class:`ModelSpec` of ``kind``; ValueError naming the known kinds otherwise."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(MODELS)}")
    return MODELS[kind]


def model_config(config: Mapping[str, Any], complete: bool = False) -> ModelConfig:
    """The validated typed configuration of ``config`` (``config["kind"]`` picks the class)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"a model config must be a mapping with a 'kind', got {type(config).__name__}")
    return model_spec(config.get("kind")).config.from_dict(config, complete=complete)


def _throughput(embedder: Embedder, sampler: PatchSampler, n: int, seed: int) -> float:
    """Places embedded per second (sampling included) on ``n`` random places whose patches fit at every scale."""
    coarsest = max(max(embedder.scales_for(embedder.res_m)), sampler.res_m)
    lon, lat = sampler.random_places(n, np.random.default_rng([seed, 99]), coarsest, size=17)
    t0 = time.perf_counter()
    embedder.embed(sampler, lon, lat, res_m=embedder.res_m)
    return n / max(time.perf_counter() - t0, 1e-9)


def train_model(config: Mapping[str, Any] | ModelConfig, sampler: PatchSampler, *,
                labels: pd.DataFrame | None = None, out_path: str | os.PathLike,
                resume_path: str | os.PathLike | None = None, seed: int = 0, device: str = "auto",
                progress: bool = True, snapshots: Mapping[int, str | os.PathLike] | None = None) -> dict:
    """Train (or, for fixed kinds, build) the model ``config`` on ``sampler`` (the TRAIN region); write ``out_path``.

    ``labels``: the label table (the supervised CNN only). ``device``: ``"auto"`` defers to ``config.device``.
    Learned kinds resume from ``resume_path`` when it holds a run of the same config and seed (another one: a
    warning and a fresh start) and delete it once ``out_path`` is written. Returns metrics (``images_seen``,
    ``wall_s``, ``images_per_s``, ``final_loss``, ``history``, ...; fixed kinds: ``dim`` and
    ``embed_places_per_s``). ``snapshots``: learned kinds, ``{step: path}`` of models saved on the way
    (:func:`topo2vec_lib.models.trainer.fit`).
    """
    cfg = config if isinstance(config, ModelConfig) else model_config(config)
    spec = MODELS[cfg.KIND]
    if spec.method is None:
        t0 = time.perf_counter()
        emb = spec.embedder(cfg)  # type: ignore[call-arg]
        emb.save(out_path)
        wall_s = time.perf_counter() - t0
        if resume_path is not None and Path(resume_path).exists():
            os.remove(resume_path)
        with torch_threads(cfg.threads):
            rate = _throughput(emb, sampler, 1000, seed)
        extra = {"features": emb.feature_names} if hasattr(emb, "feature_names") else {}
        return {"images_seen": 0, "wall_s": wall_s, "images_per_s": None, "final_loss": None, "history": [],
                "dim": emb.dim, "embed_places_per_s": rate, **extra}
    dev = resolve_device(cfg.device if str(device) == "auto" else device)
    method = spec.method(cfg, sampler, labels=labels, seed=seed, device=dev)
    return fit(method, out_path=out_path, resume_path=resume_path, progress=progress, snapshots=snapshots)


def load_embedder(path: str | os.PathLike, device: str | torch.device = "cpu") -> Embedder:
    """Load any embedder checkpoint (:class:`~topo2vec_lib.models.checkpoints.CheckpointError` when it is missing,
    corrupt, or not an embedder)."""
    device = resolve_device(device)        # 'cuda' without CUDA is a ValueError here, not a torch assertion
    ckpt = checkpoints.load_checkpoint(path)
    kind = ckpt["kind"]
    if kind not in MODELS:
        raise checkpoints.CheckpointError(f"{path} holds a {kind!r} checkpoint, not an embedder; expected one of "
                                          f"{sorted(MODELS)}")
    name = ckpt["config"].get("name") or Path(path).stem
    try:
        if kind == "topo2vec":
            return topo2vec.Topo2Vec.from_checkpoint(ckpt, name, device=device)
        emb = MODELS[kind].embedder.from_checkpoint(ckpt, name)  # type: ignore[attr-defined]
    except (KeyError, RuntimeError, ValueError) as err:
        if isinstance(err, checkpoints.CheckpointError):
            raise
        raise checkpoints.CheckpointError(f"{path}: a {kind!r} checkpoint whose configuration or state does not "
                                          f"match its kind ({type(err).__name__}: {str(err)[:300]})") from None
    return emb.to(device) if hasattr(emb, "to") else emb
