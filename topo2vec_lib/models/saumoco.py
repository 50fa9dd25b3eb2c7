"""SauMoCo baseline (Kang et al. 2020, IEEE TGRS 59(3); code github.com/jiankang1991/SauMoCo).

MoCo (He et al. 2020) whose positive pair is a patch and a patch at a geographically close place. The backbone
is topo2vec's own :class:`~topo2vec_lib.models.networks.Encoder` (128-d); the embedding is the backbone
output; a projection head (``head: linear`` as SauMoCo's code, ``mlp`` as MoCo v2) and L2 normalisation feed
the InfoNCE loss. :data:`SAUMOCO_SOURCES` gives every hyper-parameter and where it comes from.

An epoch is ``images`` anchors (``images // batch_size`` steps), sampled a chunk of ``chunk_batches`` batches at
a time from ``default_rng([seed, 31, epoch, chunk])``, so the budget equals topo2vec's. Per step (MoCo
Algorithm 1): queries ``q = normalize(head_q(f_q(anchor)))``; momentum update of the key encoder; keys
``k = normalize(head_k(f_k(neighbour)))`` with shuffled BN groups; InfoNCE over ``[q.k, q.queue] / temperature``
with the positive at index 0; Adam step; enqueue k.
"""
from __future__ import annotations

import copy
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from topo2vec_lib.models import checkpoints
from topo2vec_lib.models.config import SauMoCoConfig
from topo2vec_lib.models.embedder import PATCH_SIZE, TorchEmbedder
from topo2vec_lib.models.networks import LATENT_DIM, Encoder
from topo2vec_lib.models.trainer import Method, adam
from topo2vec_lib.sampler import PatchSampler, normalize

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


def projection_head(kind: str, dim_in: int = LATENT_DIM, dim_out: int = 128) -> nn.Module:
    """``linear`` (SauMoCo's code) or ``mlp`` (MoCo v2: Linear-ReLU-Linear) projection for the contrastive loss."""
    if kind == "linear":
        return nn.Linear(dim_in, dim_out)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, dim_out))
    raise ValueError(f"head={kind!r}: expected one of ['linear', 'mlp']")


class MoCo(nn.Module):
    """Query encoder + head, momentum key encoder + head, and a queue ``(queue_size, proj_dim)`` of keys."""

    queue: torch.Tensor
    queue_ptr: torch.Tensor

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
        """Key = m * key + (1 - m) * query, for the encoder and head parameters (MoCo eq. 2)."""
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


def saumoco_chunk(sampler: PatchSampler, cfg: SauMoCoConfig, seed: int, epoch: int, chunk: int,
                  n_batches: int) -> dict:
    """Anchor and neighbour patches for one chunk of ``n_batches`` batches, from ``default_rng([seed, epoch, chunk])``.

    Anchors: ``sampler.random_places`` at ``train_res_m``. Neighbours: the anchor moved by a uniform offset in
    ``[-R, R]`` metres along x and y of the terrain CRS (R = ``neighbour_radius_m``, SauMoCo's square
    neighbourhood); an offset whose patch leaves the terrain or touches nodata is redrawn (up to 20 times, then
    the offset is 0). Both are normalised per patch and, with ``flip_rot``, flipped/rotated independently.
    Returns ``{"q": (M, 1, 17, 17), "k": (M, 1, 17, 17), "offset_m": (M,)}`` float32, M = n_batches * batch_size.
    """
    rng = np.random.default_rng([seed, 31, epoch, chunk])
    res_m, radius = cfg.train_res_m[0], cfg.neighbour_radius_m
    n = n_batches * cfg.batch_size
    lon, lat = sampler.random_places(n, rng, res_m, size=PATCH_SIZE)
    x, y = sampler.to_xy(lon, lat)
    nx, ny = x.copy(), y.copy()
    todo = np.arange(n)
    for _ in range(20):
        if not todo.size:
            break
        cx = x[todo] + rng.uniform(-radius, radius, todo.size)
        cy = y[todo] + rng.uniform(-radius, radius, todo.size)
        ok = sampler.valid_xy(cx, cy, res_m, size=PATCH_SIZE)
        nx[todo[ok]], ny[todo[ok]] = cx[ok], cy[ok]
        todo = todo[~ok]
    q = normalize(sampler.patches_xy(x, y, res_m, PATCH_SIZE))[:, None]
    k = normalize(sampler.patches_xy(nx, ny, res_m, PATCH_SIZE))[:, None]
    if cfg.flip_rot:
        q, k = random_dihedral(q, rng), random_dihedral(k, rng)
    return {"q": np.ascontiguousarray(q), "k": np.ascontiguousarray(k),
            "offset_m": np.hypot(nx - x, ny - y).astype(np.float32), "fallback": int(todo.size)}

class SauMoCoEmbedder(TorchEmbedder):
    """SauMoCo baseline: the output of its backbone (topo2vec's
    :class:`~topo2vec_lib.models.networks.Encoder`), ``(N, 128)``."""

    kind = "saumoco"

    def __init__(self, config: SauMoCoConfig | dict, state: dict | None = None, name: str | None = None):
        cfg = config if isinstance(config, SauMoCoConfig) else SauMoCoConfig.from_dict(config)
        self.seed = config.get("seed") if isinstance(config, dict) else None
        self.config = cfg.to_dict()
        self.name = name or cfg.name or self.kind
        self.net = Encoder(cfg.stem)
        self.head = projection_head(cfg.head, LATENT_DIM, cfg.proj_dim)
        if state is not None:
            self.net.load_state_dict(state["encoder"])
            self.head.load_state_dict(state["head"])
        self.net.eval()
        self.dim = LATENT_DIM
        self.res_m = cfg.embed_res_m
        self.device = torch.device("cpu")

    def net_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def save(self, path: str | os.PathLike) -> None:
        state = {"encoder": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                 "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()}}
        checkpoints.save_checkpoint(path, kind=self.kind, config={**self.config, "seed": self.seed}, state=state)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, name: str | None = None) -> SauMoCoEmbedder:
        return cls(ckpt["config"], ckpt["state"], name=name)


class SauMoCoMethod(Method):
    """MoCo steps on anchor/neighbour pairs; metrics add the positive-pair accuracy and the neighbour offsets."""

    cfg: SauMoCoConfig

    def __init__(self, cfg: SauMoCoConfig, sampler: PatchSampler, *, seed: int, device: torch.device):
        self.cfg, self.sampler, self.seed, self.device = cfg, sampler, int(seed), device
        self.batches_per_epoch = max(1, cfg.images // cfg.batch_size)
        self.fallbacks, self.offset_sum_m, self.offset_chunks = 0, 0.0, 0
        self.ce = nn.CrossEntropyLoss()

    def build(self) -> None:
        cfg = self.cfg
        self.moco = MoCo(cfg.stem, cfg.head, cfg.proj_dim, cfg.queue_size).to(self.device)
        self.modules = {"moco": self.moco}
        self.optimizers = {"adam": adam(self.moco.query_parameters(), cfg.lr)}

    def chunk(self, epoch: int, index: int) -> dict:
        n_batches = min(self.cfg.chunk_batches, self.batches_per_epoch - index * self.cfg.chunk_batches)
        data = saumoco_chunk(self.sampler, self.cfg, self.seed, epoch, index, n_batches)
        perm_seed = int(np.random.default_rng([self.seed, 32, epoch, index]).integers(2 ** 62))
        return {**data, "perm": torch.Generator().manual_seed(perm_seed), "n_batches": n_batches}

    def steps(self, data: dict):
        self.fallbacks += data["fallback"]
        self.offset_sum_m += float(data["offset_m"].mean())
        self.offset_chunks += 1
        bs = self.cfg.batch_size
        for b in range(data["n_batches"]):
            yield (torch.from_numpy(data["q"][b * bs:(b + 1) * bs]).to(self.device),
                   torch.from_numpy(data["k"][b * bs:(b + 1) * bs]).to(self.device), data["perm"])

    def step(self, batch) -> dict[str, float]:
        xq, xk, perm_gen = batch
        moco, cfg = self.moco, self.cfg
        q = _grouped(moco.encoder_q, moco.head_q, xq, cfg.bn_groups)
        with torch.no_grad():
            moco.momentum_update(cfg.momentum)
            perm = torch.randperm(len(xk), generator=perm_gen).to(self.device)
            k = _grouped(moco.encoder_k, moco.head_k, xk, cfg.bn_groups, perm)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ moco.queue.T], dim=1) / cfg.temperature
        loss = self.ce(logits, torch.zeros(len(q), dtype=torch.long, device=self.device))
        opt = self.optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        moco.enqueue(k)
        return {"loss": loss.item(), "pos_accuracy": float((logits.argmax(1) == 0).float().mean())}

    def state(self) -> dict:
        return {"fallbacks": self.fallbacks, "offset_sum_m": self.offset_sum_m, "offset_chunks": self.offset_chunks}

    def load_state(self, state: dict) -> None:
        self.fallbacks = int(state.get("fallbacks", 0))
        self.offset_sum_m = float(state.get("offset_sum_m", 0.0))
        self.offset_chunks = int(state.get("offset_chunks", 0))

    def embedder(self) -> SauMoCoEmbedder:
        return SauMoCoEmbedder({**self.cfg.to_dict(), "seed": self.seed},
                               {"encoder": self.moco.encoder_q.state_dict(), "head": self.moco.head_q.state_dict()})

    def summary(self, history: list[dict]) -> dict:
        final: dict = next((h for h in reversed(history) if h["scope"] == "epoch"), {})
        cfg = self.cfg
        return {"final_pos_accuracy": final.get("pos_accuracy"), "chance_loss": math.log(cfg.queue_size + 1),
                "mean_neighbour_offset_m": self.offset_sum_m / self.offset_chunks if self.offset_chunks else None,
                "neighbour_fallbacks": self.fallbacks,
                "hyperparameters": {k: getattr(cfg, k) for k in ("queue_size", "momentum", "temperature",
                                                                 "neighbour_radius_m", "head", "proj_dim",
                                                                 "flip_rot", "bn_groups", "lr")}}


def make_method(cfg: SauMoCoConfig, sampler: PatchSampler, *, labels=None, seed: int = 0,
                device: torch.device) -> SauMoCoMethod:
    """The SauMoCo method for :func:`topo2vec_lib.models.trainer.fit` (``labels`` unused: self-supervised)."""
    return SauMoCoMethod(cfg, sampler, seed=seed, device=device)
