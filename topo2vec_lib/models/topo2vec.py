"""topo2vec: the self-supervised fractal encoder (paper 2.3-2.4, Algorithm 1) as an embedder and a method.

Data: fractal pairs drawn on the fly from a :class:`~topo2vec_lib.sampler.PatchSampler` over the TRAIN region.
An epoch is ``images`` pairs: ``images // (batch_size * len(train_res_m))`` batches of places, each place
batch giving one step per scale in ``train_res_m`` (Algorithm 1, lines 2-3). Places and pairs are sampled a
chunk of ``chunk_batches`` batches at a time (one vectorised sampler call per scale) from
``np.random.default_rng([seed, epoch, chunk])``.

Losses (Algorithm 1): topo2vec: L1(g(f(x)), y). topo2vec-adv: generator step on
``lambda_l1 * L1 + lambda_gan * BCE(d([x, g(f(x))]), 1)``, then a discriminator step on
``BCE(d([x, y]), 1) + BCE(d([x, g(f(x))]), 0)`` with the same batch (generator first, as Algorithm 1).
The discriminator sees the input brought to 64 x 64 (``d_input_upsample``: bilinear by default, nearest
as the reference code) beside the real or generated target. BCE is computed from logits
(``BCEWithLogitsLoss``: the same function as sigmoid + BCE, numerically safe).

Learning rates: non-adversarial f and g use ``lr`` (paper 2e-4). Adversarial: the paper's text gives
"g had the learning rate 0.0016"; with ``lr_g_scope="decoder"`` (default, the paper's letter: g is the
decoder) the encoder keeps ``lr`` and the decoder uses ``lr_g``; ``lr_g_scope="generator"`` gives f and g
``lr_g`` (the reference code's pix2pix). The discriminator uses ``lr_d``. Adam betas default to
(0.9, 0.999) without and (0.5, 0.999) with the adversarial loss (pix2pix, the reference code).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from topo2vec_lib.models import checkpoints
from topo2vec_lib.models.config import Topo2VecConfig
from topo2vec_lib.models.embedder import TorchEmbedder, as_patch_batch
from topo2vec_lib.models.networks import LATENT_DIM, Decoder, Discriminator, Encoder, discriminator_pair, input_at_64
from topo2vec_lib.models.trainer import Method, adam, resolve_device
from topo2vec_lib.sampler import PatchSampler


def normalisation_of(sampler: PatchSampler) -> dict:
    """How the sampler normalises patches (recorded in checkpoints so embedding uses the same)."""
    return {"method": "minmax", "min_range_m": float(getattr(sampler, "min_range_m", 1.0))}


class Topo2Vec(TorchEmbedder):
    """The topo2vec encoder f as an embedder: ``(N, 1, 17, 17)`` -> ``(N, 128)``.

    ``config`` is the training config stored in the checkpoint (``k``, ``train_res_m``, ``stem``,
    ``normalisation``, ``embed_res_m``, ...). ``decoder`` (g, when the checkpoint has it) reconstructs
    ``(N, 1, 16k, 16k)`` targets for figures (:meth:`reconstruct`).
    """

    kind = "topo2vec"
    dim = LATENT_DIM
    batch = 512                 # keeps the activations in cache: about 2x the patches/s of 8192 on CPU
    channels_last = True        # about 1.5x faster for these few-channel convolutions on CPU

    def __init__(self, encoder: Encoder, config: dict, decoder: Decoder | None = None, name: str = "topo2vec",
                 device: str | torch.device = "cpu", extra_state: dict | None = None):
        self.encoder = _channels_last(encoder, device).eval()
        self.decoder = None if decoder is None else _channels_last(decoder, device).eval()
        self.net = self.encoder
        self.config = dict(config)
        self.name = name
        self.device = torch.device(device)
        self.res_m = float(self.config.get("embed_res_m", 30.0))
        self.min_range_m = float(self.config.get("normalisation", {}).get("min_range_m", 1.0))
        self.extra_state = dict(extra_state or {})       # e.g. the discriminator, kept in the file

    def net_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def to(self, device: str | torch.device) -> Topo2Vec:
        super().to(device)
        if self.decoder is not None:
            self.decoder.to(self.device)
        return self

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", name: str | None = None) -> Topo2Vec:
        """Load a ``topo2vec`` checkpoint (CheckpointError when it is missing, corrupt or of another kind)."""
        device = resolve_device(device)
        ckpt = checkpoints.load_checkpoint(path, kind="topo2vec")
        return cls.from_checkpoint(ckpt, name or ckpt["config"].get("name") or Path(path).stem, device=device)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, name: str, device: str | torch.device = "cpu") -> Topo2Vec:
        config, state = ckpt["config"], ckpt["state"]
        try:
            encoder = Encoder(config.get("stem", "paper"))
            encoder.load_state_dict(state["encoder"])
            decoder = None
            if "decoder" in state:
                decoder = Decoder(config["k"])
                decoder.load_state_dict(state["decoder"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise checkpoints.CheckpointError(f"topo2vec checkpoint {name!r} does not hold matching encoder/decoder "
                                              f"weights ({type(e).__name__}: {e})") from None
        extra = {k: v for k, v in state.items() if k not in ("encoder", "decoder")}
        return cls(encoder, config, decoder, name=name, device=device, extra_state=extra)

    @torch.no_grad()
    def reconstruct(self, x) -> np.ndarray:
        """g(f(x)): normalised ``(N, 1, 17, 17)`` -> ``(N, 1, 16k, 16k)`` float32 (needs the decoder)."""
        if self.decoder is None:
            raise ValueError(f"{self.name}: this checkpoint has no decoder, cannot reconstruct")
        self.decoder.eval()
        z = torch.from_numpy(self.embed_patches(as_patch_batch(x))).to(self.device)
        return np.ascontiguousarray(self.decoder(z).cpu().numpy())

    def save(self, path: str | os.PathLike) -> None:
        state = {"encoder": _cpu_state(self.encoder)}
        if self.decoder is not None:
            state["decoder"] = _cpu_state(self.decoder)
        checkpoints.save_checkpoint(path, kind=self.kind, config=self.config, state={**state, **self.extra_state})


def _channels_last(module: nn.Module, device: str | torch.device) -> nn.Module:
    """``module`` on ``device`` with channels-last weights (about 1.5-1.9x faster few-channel convs on CPU)."""
    return module.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def sample_chunk(sampler: PatchSampler, cfg: Topo2VecConfig, seed: int, epoch: int, chunk: int,
                 place_batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fractal pairs for one chunk: per scale ``(x (M, 1, 17, 17), y (M, 1, 16k, 16k))`` float32, M places.

    Places come from ``np.random.default_rng([seed, epoch, chunk])``, drawn where the coarsest scale's footprint
    fits and kept only where every scale's patch and target do; the same places serve every scale, as in
    Algorithm 1.
    """
    n_batches = min(cfg.chunk_batches, place_batches - chunk * cfg.chunk_batches)
    rng = np.random.default_rng([seed, epoch, chunk])
    lon, lat = sampler.random_places(n_batches * cfg.batch_size, rng, list(cfg.train_res_m), size=17, k=cfg.k)
    out = []
    for res_m in cfg.train_res_m:
        x, y = sampler.fractal_pairs(lon, lat, res_m, cfg.k, size=17)
        out.append((np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32)))
    return out


class Topo2VecMethod(Method):
    """Algorithm 1: fractal pairs, L1 (and the conditional GAN loss when ``adversarial``)."""

    cfg: Topo2VecConfig
    encoder: Encoder
    decoder: Decoder

    progress_key = "loss_l1"

    def __init__(self, cfg: Topo2VecConfig, sampler: PatchSampler, *, seed: int, device: torch.device):
        self.cfg, self.sampler, self.seed, self.device = cfg, sampler, int(seed), device
        self.steps_per_batch = len(cfg.train_res_m)
        self.batches_per_epoch = max(1, cfg.images // (cfg.batch_size * self.steps_per_batch))
        self.l1, self.bce = nn.L1Loss(), nn.BCEWithLogitsLoss()
        if sampler is not None and hasattr(sampler, "check_fractal_scales"):   # fail before any work
            sampler.check_fractal_scales(cfg.train_res_m, cfg.k)

    def build(self) -> None:
        cfg = self.cfg
        self.encoder, self.decoder = Encoder(cfg.stem), Decoder(cfg.k)
        self.modules = {"encoder": self.encoder, "decoder": self.decoder}
        if cfg.adversarial:
            self.modules["discriminator"] = Discriminator(cfg.discriminator)
        for net in self.modules.values():
            _channels_last(net, self.device).train()
        # what the step calls: the modules themselves or their compiled forms (sharing the same parameters;
        # self.modules keeps the plain modules, whose state dicts the checkpoints hold)
        self.nets = {name: torch.compile(net, dynamic=False) if cfg.compile else net
                     for name, net in self.modules.items()}
        betas = (cfg.betas[0], cfg.betas[1]) if cfg.betas else (0.9, 0.999)
        f, g = self.modules["encoder"], self.modules["decoder"]
        if not cfg.adversarial:
            params = list(f.parameters()) + list(g.parameters())
            self.optimizers = {"generator": adam(params, cfg.lr, betas, fused=True)}
            return
        lr_f = cfg.lr_g if cfg.lr_g_scope == "generator" else cfg.lr
        gen = adam([{"params": list(f.parameters()), "lr": lr_f}, {"params": list(g.parameters()), "lr": cfg.lr_g}],
                   cfg.lr, betas, fused=True)
        disc = adam(self.modules["discriminator"].parameters(), cfg.lr_d, betas, fused=True)
        self.optimizers = {"generator": gen, "discriminator": disc}

    def chunk(self, epoch: int, index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return sample_chunk(self.sampler, self.cfg, self.seed, epoch, index, self.batches_per_epoch)

    def steps(self, data):
        bs = self.cfg.batch_size
        for b in range(data[0][0].shape[0] // bs):
            for x_np, y_np in data:                     # Algorithm 1: for s in Scales
                yield self._to_device(x_np[b * bs:(b + 1) * bs]), self._to_device(y_np[b * bs:(b + 1) * bs])

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device).contiguous(memory_format=torch.channels_last)

    def autocast(self):
        """The arithmetic of the forward passes: bfloat16 autocast with ``precision: bf16``, else float32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def step(self, batch) -> dict[str, float]:
        """One step of Algorithm 1. Losses are computed in float32 (the network outputs are cast up under bf16).

        Adversarial: the discriminator sees the input resized to 64 x 64 once per step, and its parameters are
        frozen while the generator's loss is backpropagated through it (their gradients would be discarded
        before the discriminator's own step): the same arithmetic as computing both, in less time.
        """
        x, y = batch
        cfg, nets, opts = self.cfg, self.nets, self.optimizers
        with self.autocast():
            y_hat = nets["decoder"](nets["encoder"](x)).float()
        loss_l1 = self.l1(y_hat, y)
        if not cfg.adversarial:
            opts["generator"].zero_grad(set_to_none=True)
            loss_l1.backward()
            opts["generator"].step()
            return {"loss_l1": loss_l1.item()}
        d = nets["discriminator"]
        x64 = input_at_64(x, cfg.d_input_upsample)
        fake = discriminator_pair(x64, y_hat)
        self.modules["discriminator"].requires_grad_(False)
        try:
            with self.autocast():
                fake_logits = d(fake).float()
            loss_gan = self.bce(fake_logits, torch.ones_like(fake_logits))
            loss_g = cfg.lambda_l1 * loss_l1 + cfg.lambda_gan * loss_gan
            opts["generator"].zero_grad(set_to_none=True)
            loss_g.backward()
        finally:
            self.modules["discriminator"].requires_grad_(True)
        opts["generator"].step()
        opts["discriminator"].zero_grad(set_to_none=True)
        with self.autocast():
            real_logits = d(discriminator_pair(x64, y)).float()
            fake_logits = d(fake.detach()).float()
        loss_d = self.bce(real_logits, torch.ones_like(real_logits)) + \
            self.bce(fake_logits, torch.zeros_like(fake_logits))
        loss_d.backward()
        opts["discriminator"].step()
        return {"loss_l1": loss_l1.item(), "loss_gan_g": loss_gan.item(), "loss_g": loss_g.item(),
                "loss_d": loss_d.item()}

    def embedder(self) -> Topo2Vec:
        config = {**self.cfg.to_dict(), "seed": self.seed, "normalisation": normalisation_of(self.sampler)}
        extra = {"discriminator": _cpu_state(self.modules["discriminator"])} if self.cfg.adversarial else {}
        return Topo2Vec(self.encoder, config, self.decoder, name=self.cfg.name or "topo2vec",
                        device=self.device, extra_state=extra)


def make_method(cfg: Topo2VecConfig, sampler: PatchSampler, *, labels=None, seed: int = 0,
                device: torch.device) -> Topo2VecMethod:
    """The topo2vec method for :func:`topo2vec_lib.models.trainer.fit` (``labels`` unused: self-supervised)."""
    return Topo2VecMethod(cfg, sampler, seed=seed, device=device)


HELDOUT_STREAM = 0x7E57
"""Offset of the random stream of the held-out places (kept apart from training's ``[seed, epoch, chunk]``)."""


def heldout_l1(model: Topo2Vec, sampler: PatchSampler, n: int, seed: int = 0, batch: int = 512) -> dict:
    """Held-out reconstruction loss: mean L1 of ``g(f(x))`` against ``y`` over ``n`` fixed fractal pairs.

    ``sampler`` should be the TEST region's. Places: ``sampler.random_places(n, [seed, 0x7E57], scales, k)``
    with the model's ``train_res_m`` and ``k``, so every model with the same scales and k (a training-length,
    window or precision family) is scored on the same pairs. The model runs in eval mode (BatchNorm running
    statistics), in float32. Returns ``{"test_l1": mean over scales, "test_l1_per_scale": {"<m/px>": l1},
    "test_pairs": n}``; the L1 is in the target's normalised units (the training loss's).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r}: expected a positive number of held-out pairs")
    if model.decoder is None:
        raise ValueError(f"{model.name}: the checkpoint has no decoder, no reconstruction loss")
    k, scales = int(model.config["k"]), [float(r) for r in model.config["train_res_m"]]
    lon, lat = sampler.random_places(int(n), np.random.default_rng([int(seed), HELDOUT_STREAM]), scales, size=17,
                                     k=k)
    per_scale = {}
    for res_m in scales:
        total = 0.0
        for start in range(0, lon.size, batch):
            x, y = sampler.fractal_pairs(lon[start:start + batch], lat[start:start + batch], res_m, k)
            total += float(np.abs(model.reconstruct(x) - y).sum(dtype=np.float64))
        per_scale[f"{res_m:g}"] = total / (lon.size * (16 * k) ** 2)
    return {"test_l1": float(np.mean(list(per_scale.values()))), "test_l1_per_scale": per_scale, "test_pairs": int(n)}
