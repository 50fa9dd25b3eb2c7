"""The training loop, written once: epochs, chunks, resume, RNG state, progress, loss history, device, threads.

Like TorchGeo's ``trainers/base.py``: a method (topo2vec, the supervised CNN, SauMoCo) is a :class:`Method`
that supplies its networks, optimisers, the data of one chunk and one optimisation step; :func:`fit` does
the rest. An epoch is ``batches_per_epoch`` batches cut into chunks of ``chunk_batches`` batches. The data of
a chunk must be a pure function of ``(seed, epoch, chunk)``, so that

- ``workers >= 1`` can prepare the next chunks in background threads (same data, same order), and
- a resumed run sees exactly the data an uninterrupted one sees: after every epoch (and every
  ``checkpoint_steps`` steps, rounded up to a chunk end) the networks, optimisers, torch RNG, loss sums,
  history and the method's own running state are written atomically to ``resume_path``; a run started with
  the same configuration and seed continues from there and ends with bit-identical weights.

History rows: ``scope="steps"`` every ``log_steps`` steps (mean losses of the window) and one
``scope="epoch"`` row per epoch (mean losses of the epoch plus the method's :meth:`Method.end_epoch` values).

A non-finite loss (NaN or inf: diverged weights) stops training at once with :class:`NonFiniteLossError`; so do
weights that are no longer finite when a resume file or the model is about to be written. Neither is ever
written with non-finite weights, so the resume file keeps the last good state and ``out_path`` is untouched.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from topo2vec_lib.models import checkpoints
from topo2vec_lib.models.config import ModelConfig
from topo2vec_lib.models.embedder import Embedder


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or weights; nothing non-finite was written."""


def _non_finite_weights(modules: dict[str, nn.Module]) -> str | None:
    """The first parameter or buffer (``module.name``) holding NaN or inf, else None."""
    for name, module in modules.items():
        for key, t in [*module.named_parameters(), *module.named_buffers()]:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return f"{name}.{key}"
    return None


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


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (0: leave torch's default), restoring them afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class RunningMeans:
    """Running sums of named losses (for history windows and epoch means); a plain dict as state."""

    def __init__(self, sums: dict | None = None, count: int = 0):
        self.sums, self.count = dict(sums or {}), int(count)

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def means(self) -> dict[str, float]:
        return {k: v / self.count for k, v in self.sums.items()} if self.count else {}

    def state(self) -> dict:
        return {"sums": dict(self.sums), "count": self.count}


def adam(params: Iterable, lr: float, betas=(0.9, 0.999), fused: bool = False) -> torch.optim.Optimizer:
    """Adam; ``fused=True`` uses the fused implementation where this torch has it (same update, fewer kernels)."""
    params = list(params)
    if fused:
        try:
            return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=lr, betas=betas)


class Method:
    """What one training method adds to :func:`fit`. Subclasses set :attr:`batches_per_epoch` (and
    :attr:`steps_per_batch` when one batch gives several steps) and implement :meth:`build`, :meth:`chunk`,
    :meth:`steps`, :meth:`step` and :meth:`embedder`; the other hooks are optional.
    """

    cfg: ModelConfig
    seed: int
    device: torch.device
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    batches_per_epoch: int = 1
    steps_per_batch: int = 1
    progress_key = "loss"
    """The loss shown on the progress bar."""

    def build(self) -> None:
        """Create :attr:`modules` and :attr:`optimizers` on :attr:`device` (torch is seeded just before)."""
        raise NotImplementedError

    def chunk(self, epoch: int, index: int) -> Any:
        """The data of chunk ``index`` of ``epoch``: a pure function of (seed, epoch, index); may run in a thread."""
        raise NotImplementedError

    def steps(self, data: Any) -> Iterable[Any]:
        """The batches of a chunk, one per optimisation step (runs in the training thread)."""
        raise NotImplementedError

    def step(self, batch: Any) -> dict[str, float]:
        """One optimisation step; returns float losses."""
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Values added to the epoch's history row (e.g. validation accuracy)."""
        return {}

    def state(self) -> dict:
        """Running state of the method beyond its modules and optimisers (saved for resume)."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore :meth:`state`."""

    def embedder(self) -> Embedder:
        """The trained model as an embedder (saved to ``out_path``)."""
        raise NotImplementedError

    def summary(self, history: list[dict]) -> dict:
        """Method-specific metrics of the finished run."""
        return {}


def _chunks_per_epoch(method: Method) -> int:
    return math.ceil(method.batches_per_epoch / method.cfg.chunk_batches)


def fit(method: Method, *, out_path: str | os.PathLike, resume_path: str | os.PathLike | None = None,
        progress: bool = True, snapshots: Mapping[int, str | os.PathLike] | None = None) -> dict:
    """Train ``method`` (resuming from ``resume_path`` when it holds this config and seed), save its embedder to
    ``out_path`` atomically, delete the resume file; returns metrics (``images_seen``, ``steps``, ``wall_s``,
    ``images_per_s``, ``final_loss``, ``final_losses``, ``resumed_from_step``, ``device``, ``history``, ...).

    ``snapshots``: ``{step: path}``: the embedder as it is after that many steps is also saved there (a run
    of N images gives the models of every shorter run on the way: the same data except a shorter run's
    last, partial chunk). A resumed run writes the snapshots it passes again."""
    cfg = method.cfg
    with torch_threads(cfg.threads):
        torch.manual_seed(method.seed)
        method.build()
        return _fit(method, out_path=out_path, resume_path=resume_path, progress=progress,
                    snapshots=dict(snapshots or {}))


def _fit(method: Method, *, out_path, resume_path, progress: bool, snapshots: dict | None = None) -> dict:
    cfg, seed = method.cfg, method.seed
    key = cfg.run_key(seed)
    n_chunks = _chunks_per_epoch(method)
    bs = cfg.batch_size

    start_epoch, start_chunk, step, history, wall_before = 0, 0, 0, [], 0.0
    window, epoch_losses = RunningMeans(), RunningMeans()
    resumed_from = None
    state = checkpoints.load_resume_state(resume_path)
    if state is not None and state["config"].get("key") != key:
        warnings.warn(f"resume file {resume_path} belongs to another config or seed; starting afresh", stacklevel=3)
        state = None
    if state is not None:
        for name, module in method.modules.items():
            module.load_state_dict(state["models"][name])
        for name, opt in method.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        checkpoints.set_rng_state(state["rng"])
        extra = state["extra"]
        start_epoch, start_chunk, step = state["epoch"], int(extra["chunk"]), state["step"]
        history, wall_before = list(state["history"]), float(extra["wall_s"])
        window, epoch_losses = RunningMeans(**extra["window"]), RunningMeans(**extra["epoch_losses"])
        method.load_state(extra.get("method", {}))
        resumed_from = step

    t0 = time.perf_counter()
    step_at_start = step

    def stop(why: str) -> NonFiniteLossError:
        kept = (f"the resume file {resume_path} keeps the last good state (step {last_ckpt_step})"
                if resume_path is not None and Path(resume_path).exists() else "no resume file was written yet")
        return NonFiniteLossError(f"training {cfg.name or cfg.KIND!r} stopped: {why}. The weights diverged "
                                  f"(lower the learning rate, e.g. lr={getattr(cfg, 'lr', '?')!r}); {kept}; "
                                  f"{out_path} was not written")

    def check_weights(when: str) -> None:
        bad = _non_finite_weights(method.modules)
        if bad:
            raise stop(f"weight {bad} is NaN or infinite {when} (step {step}, epoch {epoch})")

    def save_resume(epoch: int, chunk: int) -> None:
        if resume_path is None:
            return
        check_weights("before the resume file is written")
        extra = {"chunk": chunk, "wall_s": wall_before + time.perf_counter() - t0, "window": window.state(),
                 "epoch_losses": epoch_losses.state(), "method": method.state()}
        checkpoints.save_resume_state(resume_path, epoch=epoch, step=step, models=method.modules,
                                      optimizers=method.optimizers, rng_state=checkpoints.rng_state(),
                                      history=history, config={"key": key, "model": cfg.to_dict()}, extra=extra)

    jobs = [(e, c) for e in range(start_epoch, cfg.epochs)
            for c in range(start_chunk if e == start_epoch else 0, n_chunks)]
    pool = concurrent.futures.ThreadPoolExecutor(cfg.workers) if cfg.workers else None
    pending: dict[int, concurrent.futures.Future] = {}

    def fetch(i: int):
        if pool is None:
            return method.chunk(*jobs[i])
        for j in range(i, min(i + 1 + cfg.workers, len(jobs))):   # keep `workers` chunks in flight
            if j not in pending:
                pending[j] = pool.submit(method.chunk, *jobs[j])
        return pending.pop(i).result()

    total_steps = method.batches_per_epoch * method.steps_per_batch * cfg.epochs
    bar = tqdm(total=total_steps, initial=step, desc=f"train {cfg.name or cfg.KIND}", disable=not progress,
               unit="step", mininterval=1.0)
    last_ckpt_step = step
    try:
        for i, (epoch, chunk) in enumerate(jobs):
            if chunk == 0 or i == 0:
                for module in method.modules.values():
                    module.train()
            for batch in method.steps(fetch(i)):
                losses = method.step(batch)
                bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
                if bad:
                    raise stop(f"non-finite loss {bad} at step {step + 1} (epoch {epoch}, chunk {chunk})")
                step += 1
                if snapshots and step in snapshots:
                    method.embedder().save(snapshots[step])
                    for module in method.modules.values():     # the embedder puts the networks in eval mode
                        module.train()
                window.add(losses)
                epoch_losses.add(losses)
                bar.update(1)
                if cfg.log_steps and step % cfg.log_steps == 0:
                    history.append({"scope": "steps", "epoch": epoch, "step": step, "images": step * bs,
                                    **window.means()})
                    shown = history[-1].get(method.progress_key)
                    if shown is not None:
                        bar.set_postfix({method.progress_key: f"{shown:.4f}"}, refresh=False)
                    window = RunningMeans()
            if chunk == n_chunks - 1:                      # end of epoch
                history.append({"scope": "epoch", "epoch": epoch, "step": step, "images": step * bs,
                                **epoch_losses.means(), **method.end_epoch(epoch)})
                epoch_losses = RunningMeans()
                save_resume(epoch + 1, 0)
                last_ckpt_step = step
            elif cfg.checkpoint_steps and step - last_ckpt_step >= cfg.checkpoint_steps:
                save_resume(epoch, chunk + 1)
                last_ckpt_step = step
    finally:
        bar.close()
        if pool is not None:
            for fut in pending.values():
                fut.cancel()
            pool.shutdown(wait=True)

    run_s = time.perf_counter() - t0
    epoch = cfg.epochs - 1
    check_weights("at the end of training")
    method.embedder().save(out_path)
    if resume_path is not None and Path(resume_path).exists():
        os.remove(resume_path)
    final: dict = next((h for h in reversed(history) if h["scope"] == "epoch"), {})
    final_losses = {k: v for k, v in final.items() if k.startswith("loss")}
    images = (step - step_at_start) * bs
    metrics = {"images_seen": step * bs, "epochs": cfg.epochs, "steps": step,
               "images_per_epoch": method.batches_per_epoch * method.steps_per_batch * bs,
               "wall_s": wall_before + run_s, "images_per_s": images / run_s if run_s > 0 else float("nan"),
               "final_loss": final.get(method.progress_key), "final_losses": final_losses,
               "resumed_from_step": resumed_from, "device": str(method.device)}
    return {**metrics, **method.summary(history), "history": history}
