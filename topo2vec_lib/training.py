"""Topo2vec self-supervised training (paper Algorithm 1), resumable, plus the trainer dispatch.

Data: fractal pairs drawn on the fly from a :class:`topo2vec_lib.sampler.PatchSampler` over the TRAIN region.
An epoch is ``images`` pairs: ``images // (batch_size * len(train_res_m))`` batches of places, each place
batch giving one step per scale in ``train_res_m`` (Algorithm 1, lines 2-3). Places and pairs are sampled a
chunk of ``chunk_batches`` batches at a time (one vectorised sampler call per scale), from a numpy
Generator seeded by ``(seed, epoch, chunk)``: the data of a chunk does not depend on what ran before, so a
resumed run sees exactly the data an uninterrupted one sees. ``workers >= 1`` prepares that many chunks
ahead in background threads (same data, same order).

Losses (Algorithm 1): topo2vec: L1(g(f(x)), y). topo2vec-adv: generator step on
``lambda_l1 * L1 + lambda_gan * BCE(d([x, g(f(x))]), 1)``, then a discriminator step on
``BCE(d([x, y]), 1) + BCE(d([x, g(f(x))]), 0)`` with the same batch (generator first, as Algorithm 1).
The discriminator sees the input brought to 64 x 64 (``d_input_upsample``: bilinear by default, nearest
as the reference code) beside the real or generated target. BCE is computed from logits
(``BCEWithLogitsLoss``, the same function as sigmoid + BCE, numerically safe).

Learning rates: non-adversarial f and g use ``lr`` (paper 2e-4). Adversarial: the paper's text gives
"g had the learning rate 0.0016"; with ``lr_g_scope="decoder"`` (default, the paper's letter: g is the
decoder) the encoder keeps ``lr`` and the decoder uses ``lr_g``; ``lr_g_scope="generator"`` gives f and g
``lr_g`` (the reference code's pix2pix). The discriminator uses ``lr_d``. Adam betas default to
(0.9, 0.999) without and (0.5, 0.999) with the adversarial loss (pix2pix, the reference code).

Resume: after every epoch (and every ``checkpoint_steps`` steps, rounded up to a chunk end) the models,
optimizers, RNG state, loss accumulators and history are written atomically to ``resume_path``; a run
started with the same config and seed continues from there and ends with the same weights.
"""
from __future__ import annotations

import contextlib

import concurrent.futures
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from topo2vec_lib import checkpoints
from topo2vec_lib.networks import Decoder, Discriminator, Encoder, discriminator_input

# Keys a topo2vec model config may hold (params.yaml `train` section merged with the model's section).
TOPO2VEC_DEFAULTS = {
    "kind": "topo2vec",
    "name": None,
    "k": 1,
    "adversarial": False,
    "train_res_m": [30.0],
    "images": 100_000,
    "epochs": 1,
    "batch_size": 64,
    "device": "auto",
    "workers": 0,
    "threads": 0,
    "lr": 2e-4,
    "lr_g": 1.6e-3,
    "lr_d": 2e-4,
    "lr_g_scope": "decoder",
    "betas": None,
    "lambda_l1": 100.0,
    "lambda_gan": 1.0,
    "stem": "paper",
    "discriminator": "paper",
    "d_input_upsample": "bilinear",
    "embed_res_m": 30.0,
    "chunk_batches": 16,
    "checkpoint_steps": 0,
    "log_steps": 50,
}
LR_G_SCOPES = ("decoder", "generator")


def topo2vec_config(config: dict) -> dict:
    """Validate a topo2vec model config and fill defaults; unknown keys or bad values raise ValueError."""
    unknown = sorted(set(config) - set(TOPO2VEC_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown topo2vec config keys {unknown}; valid keys are {sorted(TOPO2VEC_DEFAULTS)}")
    cfg = {**TOPO2VEC_DEFAULTS, **config}
    if cfg["kind"] != "topo2vec":
        raise ValueError(f"kind={cfg['kind']!r}: train_topo2vec trains kind 'topo2vec' only")
    res = cfg["train_res_m"]
    res = [res] if isinstance(res, (int, float)) else list(res)
    if not res or any(not isinstance(r, (int, float)) or r <= 0 for r in res):
        raise ValueError(f"train_res_m={cfg['train_res_m']!r}: expected a positive number or a list of them (m/px)")
    cfg["train_res_m"] = [float(r) for r in res]
    for key in ("images", "epochs", "batch_size", "chunk_batches"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"{key}={cfg[key]!r}: expected a positive integer")
    if cfg["batch_size"] < 2:
        raise ValueError(f"batch_size={cfg['batch_size']}: BatchNorm needs at least 2 images per batch")
    for key in ("workers", "threads", "checkpoint_steps", "log_steps"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 0:
            raise ValueError(f"{key}={cfg[key]!r}: expected an integer >= 0")
    for key in ("lr", "lr_g", "lr_d", "embed_res_m"):
        if not isinstance(cfg[key], (int, float)) or cfg[key] <= 0:
            raise ValueError(f"{key}={cfg[key]!r}: expected a positive number")
    for key in ("lambda_l1", "lambda_gan"):
        if not isinstance(cfg[key], (int, float)) or cfg[key] < 0:
            raise ValueError(f"{key}={cfg[key]!r}: expected a number >= 0")
    if cfg["lr_g_scope"] not in LR_G_SCOPES:
        raise ValueError(f"lr_g_scope={cfg['lr_g_scope']!r}: expected one of {list(LR_G_SCOPES)}")
    if cfg["d_input_upsample"] not in ("bilinear", "nearest"):
        raise ValueError(f"d_input_upsample={cfg['d_input_upsample']!r}: expected 'bilinear' or 'nearest'")
    if not isinstance(cfg["adversarial"], bool):
        raise ValueError(f"adversarial={cfg['adversarial']!r}: expected true or false")
    if cfg["betas"] is None:
        cfg["betas"] = [0.5, 0.999] if cfg["adversarial"] else [0.9, 0.999]
    cfg["betas"] = [float(b) for b in cfg["betas"]]
    if len(cfg["betas"]) != 2 or not all(0 <= b < 1 for b in cfg["betas"]):
        raise ValueError(f"betas={config.get('betas')!r}: expected two numbers in [0, 1)")
    for key in ("lr", "lr_g", "lr_d", "lambda_l1", "lambda_gan", "embed_res_m"):
        cfg[key] = float(cfg[key])
    from topo2vec_lib.networks import DISCRIMINATOR_STYLES, STEMS
    if cfg["stem"] not in STEMS:
        raise ValueError(f"stem={cfg['stem']!r}: expected one of {list(STEMS)}")
    if cfg["discriminator"] not in DISCRIMINATOR_STYLES:
        raise ValueError(f"discriminator={cfg['discriminator']!r}: expected one of {list(DISCRIMINATOR_STYLES)}")
    Decoder(cfg["k"])                                                   # validates k (a power of two)
    cfg["k"] = int(cfg["k"])
    return cfg


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"`` / ``"cuda[:i]"`` as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu' or 'cuda[:index]'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'")
    return dev


def build_networks(cfg: dict) -> dict[str, nn.Module]:
    """Encoder, decoder (and discriminator when adversarial) for a validated topo2vec config."""
    nets = {"encoder": Encoder(cfg["stem"]), "decoder": Decoder(cfg["k"])}
    if cfg["adversarial"]:
        nets["discriminator"] = Discriminator(cfg["discriminator"])
    return nets


def _adam(params, lr: float, betas) -> torch.optim.Optimizer:
    """Adam, the fused implementation where this torch has it (same update, fewer kernel calls)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas)


def build_optimizers(cfg: dict, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
    """Adam for the generator (f and g, per-module learning rates) and, when adversarial, the discriminator."""
    betas = tuple(cfg["betas"])
    if not cfg["adversarial"]:
        params = list(nets["encoder"].parameters()) + list(nets["decoder"].parameters())
        return {"generator": _adam(params, cfg["lr"], betas)}
    lr_f = cfg["lr_g"] if cfg["lr_g_scope"] == "generator" else cfg["lr"]
    gen = _adam([{"params": list(nets["encoder"].parameters()), "lr": lr_f},
                 {"params": list(nets["decoder"].parameters()), "lr": cfg["lr_g"]}], cfg["lr"], betas)
    disc = _adam(nets["discriminator"].parameters(), cfg["lr_d"], betas)
    return {"generator": gen, "discriminator": disc}


def _to_device(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(a).to(dev).contiguous(memory_format=torch.channels_last)


def epoch_plan(cfg: dict) -> dict:
    """Sizes of one epoch: place batches, steps, images, chunks (batches of places sampled at once)."""
    n_scales = len(cfg["train_res_m"])
    place_batches = max(1, cfg["images"] // (cfg["batch_size"] * n_scales))
    chunks = math.ceil(place_batches / cfg["chunk_batches"])
    return {"place_batches": place_batches, "steps": place_batches * n_scales, "chunks": chunks,
            "images": place_batches * n_scales * cfg["batch_size"]}


def sample_chunk(sampler, cfg: dict, seed: int, epoch: int, chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fractal pairs for one chunk: per scale ``(x (M, 1, 17, 17), y (M, 1, 16k, 16k))`` float32, M places.

    Places come from ``np.random.default_rng([seed, epoch, chunk])`` at the coarsest training scale (so
    every scale's footprint fits the terrain); the same places serve every scale, as in Algorithm 1.
    """
    plan = epoch_plan(cfg)
    n_batches = min(cfg["chunk_batches"], plan["place_batches"] - chunk * cfg["chunk_batches"])
    rng = np.random.default_rng([seed, epoch, chunk])
    lon, lat = sampler.random_places(n_batches * cfg["batch_size"], rng, max(cfg["train_res_m"]), size=17,
                                     k=cfg["k"])
    out = []
    for res_m in cfg["train_res_m"]:
        x, y = sampler.fractal_pairs(lon, lat, res_m, cfg["k"], size=17)
        out.append((np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32)))
    return out


class _Losses:
    """Running sums of losses (for history windows and epoch means); picklable as a plain dict."""

    def __init__(self, sums: dict | None = None, count: int = 0):
        self.sums, self.count = dict(sums or {}), count

    def add(self, losses: dict) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def means(self) -> dict:
        return {k: v / self.count for k, v in self.sums.items()} if self.count else {}

    def state(self) -> dict:
        return {"sums": dict(self.sums), "count": self.count}


def _step(cfg, nets, opts, x, y, l1, bce) -> dict:
    """One Algorithm-1 step on a batch; returns float losses."""
    f, g = nets["encoder"], nets["decoder"]
    y_hat = g(f(x))
    loss_l1 = l1(y_hat, y)
    if not cfg["adversarial"]:
        opts["generator"].zero_grad(set_to_none=True)
        loss_l1.backward()
        opts["generator"].step()
        return {"loss_l1": loss_l1.item()}
    d = nets["discriminator"]
    mode = cfg["d_input_upsample"]
    fake_logits = d(discriminator_input(x, y_hat, mode))
    loss_gan = bce(fake_logits, torch.ones_like(fake_logits))
    loss_g = cfg["lambda_l1"] * loss_l1 + cfg["lambda_gan"] * loss_gan
    opts["generator"].zero_grad(set_to_none=True)
    loss_g.backward()
    opts["generator"].step()
    opts["discriminator"].zero_grad(set_to_none=True)           # drop the generator step's grads on d
    real_logits = d(discriminator_input(x, y, mode))
    fake_logits = d(discriminator_input(x, y_hat.detach(), mode))
    loss_d = bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))
    loss_d.backward()
    opts["discriminator"].step()
    return {"loss_l1": loss_l1.item(), "loss_gan_g": loss_gan.item(), "loss_g": loss_g.item(),
            "loss_d": loss_d.item()}


def _config_key(cfg: dict, seed: int) -> str:
    run = {k: v for k, v in cfg.items() if k not in ("device", "workers", "threads", "name")}
    return json.dumps({"config": run, "seed": seed}, sort_keys=True, default=str)


def train_topo2vec(config: dict, sampler, *, labels=None, out_path, resume_path=None, seed: int = 0,
                   device: str = "auto", progress: bool = True) -> dict:
    """Train topo2vec (Algorithm 1) on fractal pairs from ``sampler`` (the TRAIN region); write ``out_path``.

    ``config``: a topo2vec model config (see :data:`TOPO2VEC_DEFAULTS`, e.g. ``{"k": 4, "train_res_m": [120]}``).
    ``labels`` is ignored (self-supervised). ``device``: ``"auto"`` defers to ``config["device"]``.
    ``config["threads"]`` > 0 sets torch's intra-op threads for the run (0: leave torch's default); tiny
    networks like these often train faster on 1 thread plus ``workers: 1`` for sampling.
    Resumes from ``resume_path`` when it holds a run with the same config and seed (another config: a warning
    and a fresh start); deletes it after ``out_path`` is written. Returns metrics: ``images_seen``, ``wall_s``,
    ``images_per_s``, ``final_loss`` (mean L1 of the last epoch), ``final_losses``, ``history``, ...
    """
    cfg = topo2vec_config(config)
    with torch_threads(cfg["threads"]):
        return _train_topo2vec(cfg, sampler, out_path=out_path, resume_path=resume_path, seed=seed,
                               device=device, progress=progress)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch intra-op threads (0: leave torch's default), restoring them afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_topo2vec(cfg: dict, sampler, *, out_path, resume_path, seed: int, device, progress: bool) -> dict:
    dev = resolve_device(cfg["device"] if str(device) == "auto" else device)
    plan = epoch_plan(cfg)
    key = _config_key(cfg, seed)

    torch.manual_seed(seed)
    nets = build_networks(cfg)
    for net in nets.values():            # channels_last: ~1.9x faster training of these few-channel convs on CPU
        net.to(dev, memory_format=torch.channels_last).train()
    opts = build_optimizers(cfg, nets)

    start_epoch, start_chunk, step, history, wall_before = 0, 0, 0, [], 0.0
    window, epoch_losses = _Losses(), _Losses()
    resumed_from = None
    state = checkpoints.load_resume_state(resume_path)
    if state is not None and state["config"].get("key") != key:
        warnings.warn(f"resume file {resume_path} belongs to another config or seed; starting afresh")
        state = None
    if state is not None:
        for name, net in nets.items():
            net.load_state_dict(state["models"][name])
        for name, opt in opts.items():
            opt.load_state_dict(state["optimizers"][name])
        checkpoints.set_rng_state(state["rng"])
        extra = state["extra"]
        start_epoch, start_chunk, step = state["epoch"], extra["chunk"], state["step"]
        history, wall_before = list(state["history"]), float(extra["wall_s"])
        window, epoch_losses = _Losses(**extra["window"]), _Losses(**extra["epoch_losses"])
        resumed_from = step

    l1, bce = nn.L1Loss(), nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    images_at_start = step * cfg["batch_size"]
    total_steps = plan["steps"] * cfg["epochs"]
    last_ckpt_step = step

    def save_resume(epoch: int, chunk: int) -> None:
        if resume_path is None:
            return
        extra = {"chunk": chunk, "wall_s": wall_before + time.perf_counter() - t0,
                 "window": window.state(), "epoch_losses": epoch_losses.state()}
        checkpoints.save_resume_state(resume_path, epoch=epoch, step=step, models=nets, optimizers=opts,
                                      rng_state=checkpoints.rng_state(), history=history,
                                      config={"key": key, "model": cfg}, extra=extra)

    jobs = [(e, c) for e in range(start_epoch, cfg["epochs"])
            for c in range(start_chunk if e == start_epoch else 0, plan["chunks"])]
    pool = concurrent.futures.ThreadPoolExecutor(cfg["workers"]) if cfg["workers"] else None
    pending: dict = {}                                      # job index -> future (workers >= 1)

    def fetch(i: int):
        if pool is None:
            return sample_chunk(sampler, cfg, seed, *jobs[i])
        for j in range(i, min(i + 1 + cfg["workers"], len(jobs))):   # keep `workers` chunks in flight
            if j not in pending:
                pending[j] = pool.submit(sample_chunk, sampler, cfg, seed, *jobs[j])
        return pending.pop(i).result()

    bar = tqdm(total=total_steps, initial=step, desc=f"train {cfg['name'] or 'topo2vec'}", disable=not progress,
               unit="step", mininterval=1.0)
    try:
        for i, (epoch, chunk) in enumerate(jobs):
            data = fetch(i)
            n_batches = data[0][0].shape[0] // cfg["batch_size"]
            bs = cfg["batch_size"]
            for b in range(n_batches):
                for x_np, y_np in data:                     # Algorithm 1: for s in Scales
                    x = _to_device(x_np[b * bs:(b + 1) * bs], dev)
                    y = _to_device(y_np[b * bs:(b + 1) * bs], dev)
                    losses = _step(cfg, nets, opts, x, y, l1, bce)
                    step += 1
                    window.add(losses)
                    epoch_losses.add(losses)
                    bar.update(1)
                    if cfg["log_steps"] and step % cfg["log_steps"] == 0:
                        history.append({"scope": "steps", "epoch": epoch, "step": step,
                                        "images": step * bs, **window.means()})
                        bar.set_postfix(loss=f"{history[-1]['loss_l1']:.4f}", refresh=False)
                        window = _Losses()
            if chunk == plan["chunks"] - 1:                  # end of epoch
                history.append({"scope": "epoch", "epoch": epoch, "step": step, "images": step * bs,
                                **epoch_losses.means()})
                epoch_losses = _Losses()
                save_resume(epoch + 1, 0)
                last_ckpt_step = step
            elif cfg["checkpoint_steps"] and step - last_ckpt_step >= cfg["checkpoint_steps"]:
                save_resume(epoch, chunk + 1)
                last_ckpt_step = step
    finally:
        bar.close()
        if pool is not None:
            for fut in pending.values():
                fut.cancel()
            pool.shutdown(wait=True)

    run_s = time.perf_counter() - t0
    wall_s = wall_before + run_s
    final = next((h for h in reversed(history) if h["scope"] == "epoch"), {})
    final_losses = {k: v for k, v in final.items() if k.startswith("loss")}
    model_config = {**cfg, "seed": seed, "normalisation": normalisation_of(sampler),
                    "device": str(cfg["device"])}
    save_checkpoint_state = {name: {k: v.detach().cpu() for k, v in net.state_dict().items()}
                             for name, net in nets.items()}
    checkpoints.save_checkpoint(out_path, kind="topo2vec", config=model_config, state=save_checkpoint_state)
    if resume_path is not None and Path(resume_path).exists():
        os.remove(resume_path)
    images_seen = step * cfg["batch_size"]
    return {"images_seen": images_seen, "epochs": cfg["epochs"], "steps": step,
            "images_per_epoch": plan["images"], "wall_s": wall_s,
            "images_per_s": (images_seen - images_at_start) / run_s if run_s > 0 else float("nan"),
            "final_loss": final_losses.get("loss_l1"), "final_losses": final_losses,
            "resumed_from_step": resumed_from, "device": str(dev), "history": history}


def normalisation_of(sampler) -> dict:
    """How the sampler normalises patches (recorded in checkpoints so embedding uses the same)."""
    return {"method": "minmax", "min_range_m": float(getattr(sampler, "min_range_m", 1.0))}


def _baseline(name: str):
    def call(config, sampler, **kw):
        from topo2vec_lib import baselines
        return getattr(baselines, name)(config, sampler, **kw)
    call.__name__ = name
    return call


TRAINERS = {"topo2vec": train_topo2vec, "cnn": _baseline("train_cnn"), "saumoco": _baseline("train_saumoco"),
            "id": _baseline("build_id"), "geomorphometry": _baseline("build_geomorphometry")}


def train_model(config: dict, sampler, **kw) -> dict:
    """Train or build the model ``config["kind"]`` (see :data:`TRAINERS`); same keywords as the trainers."""
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in TRAINERS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(TRAINERS)}")
    if kind == "topo2vec":
        return TRAINERS[kind](config, sampler, **kw)
    config = dict(config)
    threads = config.pop("threads", 0)  # a run setting, not part of a baseline's configuration
    with torch_threads(threads):
        return TRAINERS[kind](config, sampler, **kw)
