"""Checkpoint files: one validated format for trained models and for resumable training state.

A checkpoint is a ``torch.save`` of ``{"format": FORMAT, "version": VERSION, "kind", "config", "state",
"checksum", "library_version"}``, written atomically (temporary sibling, then rename). ``state`` holds
state_dicts, numpy arrays, numbers and strings. Files are read with ``torch.load(weights_only=True)`` (no
arbitrary pickles are executed); numpy arrays are stored as tagged tensors and come back as numpy arrays.

``checksum`` (version 2) is ``"sha256:<hex>"`` of the kind, the configuration and every tensor's dtype, shape
and bytes (:func:`payload_digest`); :func:`load_checkpoint` recomputes it, so altered or corrupt weights are a
:class:`CheckpointError` instead of NaN embeddings. It also refuses float tensors holding NaN or inf (a diverged
model). Version-1 files (no checksum) are refused with a message saying to retrain them.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import topo2vec_lib
from topo2vec_lib.storage import atomic_path

FORMAT = "topo2vec-checkpoint"
VERSION = 2
"""2: with ``checksum``. 1: without (refused: retrain)."""
RESUME_KIND = "resume"
_NDARRAY_TAG = "__ndarray__"


class CheckpointError(ValueError):
    """A file is missing, corrupt, not a topo2vec checkpoint, of another version, or of another kind."""


class CheckpointVersionError(CheckpointError):
    """A topo2vec checkpoint of another format version."""


def _feed(h, obj: Any) -> None:
    """Hash ``obj`` (tensors, dicts, lists/tuples, scalars, strings) in a canonical, type-tagged form."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for k, v in sorted(obj.items(), key=lambda kv: repr(kv[0])):
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)};".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def payload_digest(kind: Any, config: Any, state: Any) -> str:
    """``"sha256:<hex>"`` of a checkpoint's kind, (packed) configuration and (packed) state."""
    h = hashlib.sha256()
    for part in (kind, config, state):
        _feed(h, part)
    return "sha256:" + h.hexdigest()


def _non_finite(obj: Any, where: str = "") -> str | None:
    """The first float tensor (its key path) holding NaN or inf, else None."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            return where or "state"
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _non_finite(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def _pack(obj: Any) -> Any:
    """Numpy arrays -> tagged tensors, numpy scalars -> Python numbers, tuples kept, recursively."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("object arrays cannot be stored in a checkpoint")
        return {_NDARRAY_TAG: torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    return _map_children(obj, _pack)


def _unpack(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_NDARRAY_TAG}:
            return obj[_NDARRAY_TAG].numpy()
    return _map_children(obj, _unpack)


def _map_children(obj: Any, fn) -> Any:
    """Apply ``fn`` to the values of a dict/list/tuple; return ``obj`` itself when nothing changed
    (so state_dicts keep their ``_metadata``)."""
    if isinstance(obj, dict):
        new = {k: fn(v) for k, v in obj.items()}
        if all(new[k] is v for k, v in obj.items()):
            return obj
        return type(obj)(new.items())
    if isinstance(obj, (list, tuple)):
        items = [fn(v) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return type(obj)(items)
    return obj


def save_checkpoint(path: str | os.PathLike, *, kind: str, config: dict, state: dict) -> None:
    """Write a checkpoint of ``kind`` (e.g. ``"topo2vec"``) with its ``config`` and ``state``, atomically."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"checkpoint kind must be a non-empty string, got {kind!r}")
    packed_config, packed_state = _pack(dict(config)), _pack(dict(state))
    payload = {"format": FORMAT, "version": VERSION, "kind": kind, "config": packed_config,
               "state": packed_state, "checksum": payload_digest(kind, packed_config, packed_state),
               "library_version": topo2vec_lib.__version__}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, map_location="cpu") -> dict:
    """Read and validate a checkpoint; returns the dict written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` naming ``path`` when it does not exist, is not a readable torch file,
    is not a topo2vec checkpoint, has another format version, or (if ``kind`` is given) another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable topo2vec checkpoint "
                              f"(corrupt, truncated or not a torch file; {type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a topo2vec checkpoint (no format={FORMAT!r} field)")
    if payload.get("version") != VERSION:
        why = " (written before checkpoints carried a checksum of their weights): retrain it, e.g. dvc repro " \
              "train@<model>" if payload.get("version") == 1 else ""
        raise CheckpointVersionError(f"{path} is a topo2vec checkpoint of version {payload.get('version')!r}; "
                                     f"this library reads version {VERSION}{why}")
    expected = payload_digest(payload.get("kind"), payload.get("config", {}), payload.get("state", {}))
    if payload.get("checksum") != expected:
        raise CheckpointError(f"{path}: its kind, configuration or weights do not match the checksum written with "
                              f"them (corrupt or altered file; got {str(payload.get('checksum'))[:20]}..., computed "
                              f"{expected[:20]}...)")
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {payload.get('kind')!r} checkpoint, expected kind {kind!r}")
    bad = _non_finite(payload.get("state", {}))
    if bad:
        raise CheckpointError(f"{path}: tensor {bad} holds NaN or inf (a diverged or corrupt model); retrain it")
    payload["config"] = _unpack(payload.get("config", {}))
    payload["state"] = _unpack(payload.get("state", {}))
    return payload


def rng_state(rng: np.random.Generator | None = None) -> dict:
    """Snapshot of the torch CPU (and CUDA, if available) RNGs and of numpy ``rng`` (if given)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    if rng is not None:
        state["numpy"] = rng.bit_generator.state
    return state


def set_rng_state(state: dict, rng: np.random.Generator | None = None) -> None:
    """Restore a :func:`rng_state` snapshot (into ``rng`` for the numpy part, if both are given)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if rng is not None and "numpy" in state:
        rng.bit_generator.state = state["numpy"]


def save_resume_state(path: str | os.PathLike, *, epoch: int, step: int, models: dict, optimizers: dict,
                      rng_state: dict, history: list, config: dict, extra: dict | None = None) -> None:
    """Write the state a killed training run needs to continue exactly (kind ``"resume"``), atomically.

    ``models`` / ``optimizers``: name -> ``nn.Module`` / ``torch.optim.Optimizer`` (their state_dicts are saved).
    ``epoch``: index of the epoch in progress (0-based); ``step``: optimisation steps completed in total.
    """
    state = {"epoch": int(epoch), "step": int(step),
             "models": {k: m.state_dict() for k, m in models.items()},
             "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
             "rng": rng_state, "history": list(history), "extra": dict(extra or {})}
    save_checkpoint(path, kind=RESUME_KIND, config=config, state=state)


def load_resume_state(path: str | os.PathLike | None) -> dict | None:
    """The ``state`` of a resume file plus its ``"config"``; ``None`` when ``path`` is None or absent."""
    if path is None or not Path(path).exists():
        return None
    try:
        ckpt = load_checkpoint(path, kind=RESUME_KIND)
    except CheckpointVersionError as err:
        warnings.warn(f"{err}; the resume file is ignored and training starts afresh", stacklevel=2)
        return None
    return {**ckpt["state"], "config": ckpt["config"]}
