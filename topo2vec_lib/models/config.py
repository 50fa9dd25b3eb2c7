"""Typed model configurations: one dataclass per model kind, one set of validators.

A configuration is a params.yaml ``models.<name>`` section merged over the ``train`` section. Every field
carries its check in ``metadata["check"]``; :meth:`ModelConfig.from_dict` rejects unknown keys (naming the
valid ones), runs every field's check (which also converts: YAML ``30`` becomes ``30.0`` for a float) and
then the class's cross-field :meth:`~ModelConfig.validate`. The library's defaults are the paper's values;
the study states every value in ``params.yaml`` (``from_dict(..., complete=True)`` requires that).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from topo2vec_lib.checks import (  # noqa: F401  (re-exported: the models' checks have always been importable here)
    boolean,
    choice,
    integer,
    number,
    optional_text,
    pixel_sizes,
)
from topo2vec_lib.checks import is_number as _is_number

C = TypeVar("C", bound="ModelConfig")

RUN_SETTINGS = ("name", "device", "workers", "threads")
"""Keys that change how a run executes but not what it computes (left out of the resume key)."""

RUN_RECORDS = ("seed", "normalisation")
"""Keys a checkpoint stores beside the configuration (ignored when a configuration is read back)."""

PRECISIONS = ("float32", "bf16")
"""Training arithmetic of topo2vec: ``float32`` (exact: every operation in float32, the reference) or ``bf16``
(``torch.autocast`` with bfloat16: convolutions and matrix products in bfloat16, losses, BatchNorm statistics,
weights and the optimiser in float32; benchmarks/training.py measures both)."""


# ---------------------------------------------------------------- checks (each returns the converted value)
# the generic ones live in topo2vec_lib.checks (shared with the params.yaml schema); these are the models' own
def device_name(key: str, v: Any) -> str:
    """Check: ``auto``, ``cpu``, ``cuda`` or ``cuda:<index>``."""
    ok = isinstance(v, str) and (v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()))
    if not ok:
        raise ValueError(f"{key}={v!r}: expected 'auto', 'cpu' or 'cuda[:index]'")
    return str(v)


def power_of_two(key: str, v: Any) -> int:
    """Check: a power of two >= 1 (the fractal factor k)."""
    if isinstance(v, bool) or not _is_number(v) or v < 1 or int(v) != v or (int(v) & (int(v) - 1)):
        raise ValueError(f"fractal factor {key}={v!r} is not valid; expected a power of two >= 1 (1, 2, 4, 8, ...)")
    return int(v)


def setting(default: Any, check: Callable[[str, Any], Any], doc: str = "") -> Any:
    """A dataclass field with its check (lists are copied per instance)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"check": check, "doc": doc})
    return dataclasses.field(default=default, metadata={"check": check, "doc": doc})


# ---------------------------------------------------------------- configurations
@dataclasses.dataclass
class ModelConfig:
    """Keys every model shares: the params.yaml ``train`` section (run length, batching, device, logging)."""

    KIND: ClassVar[str] = ""
    name: str | None = setting(None, optional_text, "model name (the params.yaml key)")
    images: int = setting(100_000, integer(1), "training images per epoch")
    epochs: int = setting(1, integer(1), "passes over `images`")
    batch_size: int = setting(64, integer(2), "images per step (BatchNorm needs >= 2)")
    device: str = setting("auto", device_name, "auto | cpu | cuda[:index]")
    workers: int = setting(0, integer(0), "chunks sampled ahead in background threads")
    threads: int = setting(0, integer(0), "torch CPU threads, 0 = torch's default")
    chunk_batches: int = setting(16, integer(1), "batches sampled in one vectorised call")
    checkpoint_steps: int = setting(0, integer(0), "also write the resume file every N steps (0: per epoch)")
    log_steps: int = setting(50, integer(0), "a loss-history row every N steps (0: epochs only)")

    @classmethod
    def from_dict(cls: type[C], config: Mapping[str, Any] | None, complete: bool = False) -> C:
        """Validate ``config`` (``kind`` optional but must match); unknown keys, bad values -> ValueError.

        ``complete=True`` also requires every field to be given (the study states each one in params.yaml).
        """
        if config is not None and not isinstance(config, Mapping):
            raise ValueError(f"a {cls.KIND} model config must be a mapping of keys to values, got "
                             f"{type(config).__name__} {config!r}")
        given = {k: v for k, v in dict(config or {}).items() if k not in RUN_RECORDS}
        kind = given.pop("kind", cls.KIND)
        if kind != cls.KIND:
            raise ValueError(f"config kind={kind!r} given to the {cls.KIND!r} configuration; "
                             f"expected kind {cls.KIND!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(f"unknown {cls.KIND} config key(s) {unknown}; valid keys are {sorted(names)}")
        missing = sorted(set(names) - set(given) - {"name"})
        if complete and missing:
            raise ValueError(f"the {cls.KIND} config lacks key(s) {missing}: params.yaml must state every value "
                             f"(the `train` section or the model's own section)")
        values = {f.name: f.metadata["check"](f.name, given[f.name]) for f in dataclasses.fields(cls)
                  if f.name in given}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Cross-field checks (subclasses extend)."""

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., **fields}``: JSON-able, the form stored in checkpoints and metrics."""
        return {"kind": self.KIND, **dataclasses.asdict(self)}

    def run_key(self, seed: int) -> str:
        """What a resume file must match: every computing key and the seed (not name/device/workers/threads)."""
        run = {k: v for k, v in self.to_dict().items() if k not in RUN_SETTINGS}
        return json.dumps({"config": run, "seed": int(seed)}, sort_keys=True, default=str)


@dataclasses.dataclass
class Topo2VecConfig(ModelConfig):
    """topo2vec (paper 2.3-2.4, Algorithm 1): encoder f, decoder g(k), optional discriminator d."""

    KIND: ClassVar[str] = "topo2vec"
    k: int = setting(1, power_of_two, "fractal factor: the target has 16k x 16k pixels over the input's footprint")
    adversarial: bool = setting(False, boolean, "add the conditional GAN loss (topo2vec-adv)")
    train_res_m: list[float] = setting([30.0], pixel_sizes(), "input scales, m/px (Algorithm 1's Scales)")
    lr: float = setting(2e-4, number(), "Adam learning rate of f (and g without the GAN loss); paper 2.4")
    lr_g: float = setting(1.6e-3, number(), "learning rate of g with the GAN loss; paper 2.4")
    lr_d: float = setting(2e-4, number(), "learning rate of the discriminator")
    lr_g_scope: str = setting("decoder", choice("decoder", "generator"), "who gets lr_g: g only, or f and g")
    betas: list[float] | None = setting(None, lambda k, v: v,
                                        "Adam betas; null: (0.9, 0.999), (0.5, 0.999) adversarial")
    lambda_l1: float = setting(100.0, number(0.0, strict=False), "weight of L1 with the GAN loss (paper lambda1)")
    lambda_gan: float = setting(1.0, number(0.0, strict=False), "weight of the GAN loss (paper lambda2)")
    stem: str = setting("paper", choice("paper", "reference"), "17 -> 16 px by padding (paper) or pooling (reference)")
    discriminator: str = setting("paper", choice("paper", "reference"), "the paper's or the reference code's d")
    d_input_upsample: str = setting("bilinear", choice("bilinear", "nearest"),
                                    "how d sees the 17 x 17 input at 64 x 64")
    embed_res_m: float = setting(30.0, number(), "default embedding scale, m/px (the probe scale)")
    precision: str = setting("float32", choice(*PRECISIONS),
                             "training arithmetic: float32 (exact, the reference) | bf16 (autocast)")
    compile: bool = setting(False, boolean, "torch.compile the networks for training (pays back only on long runs)")

    def validate(self) -> None:
        if self.betas is None:
            self.betas = [0.5, 0.999] if self.adversarial else [0.9, 0.999]
        betas = self.betas
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2 \
                or not all(_is_number(b) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas={betas!r}: expected two numbers in [0, 1)")
        self.betas = [float(b) for b in betas]


@dataclasses.dataclass
class IdConfig(ModelConfig):
    """ID (paper 3.1): the flattened normalised 17 x 17 patch."""

    KIND: ClassVar[str] = "id"
    embed_res_m: float = setting(30.0, number(), "default embedding scale, m/px")


def _classes(key: str, v: Any) -> list[str]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__") or not list(v):
        raise ValueError(f"{key}={v!r}: expected a non-empty list of label class names")
    from topo2vec_lib.labels import get_class

    names = [get_class(c).name for c in v]
    if len(set(names)) != len(names):
        raise ValueError(f"{key}={v!r} repeats a class")
    return names


@dataclasses.dataclass
class CnnConfig(ModelConfig):
    """Supervised CNN (paper 3.1): 2 conv + 2 FC layers; the last hidden layer is the embedding."""

    KIND: ClassVar[str] = "cnn"
    examples: int = setting(20_000, integer(1), "labelled training examples (paper: 20,000)")
    classes: list[str] = setting(["peak", "saddle", "river", "cliff"], _classes, "classes besides 'random'")
    train_res_m: list[float] = setting([30.0], pixel_sizes(single=True), "training scale, m/px")
    embed_res_m: float = setting(30.0, number(), "default embedding scale, m/px")
    lr: float = setting(1e-4, number(), "Adam learning rate")
    latent_dim: int = setting(35, integer(1), "size of the last hidden layer (the embedding)")
    val_fraction: float = setting(0.1, number(0.0, below=0.5), "held-out share of the distinct places per class")

    def validate(self) -> None:
        n = len(self.classes) + 1
        if self.examples < 10 * n:
            raise ValueError(f"examples={self.examples}: expected at least 10 per class ({10 * n} for {n} classes)")


@dataclasses.dataclass
class SauMoCoConfig(ModelConfig):
    """SauMoCo (Kang et al. 2020): MoCo whose positive is a patch at a geographically close place."""

    KIND: ClassVar[str] = "saumoco"
    train_res_m: list[float] = setting([30.0], pixel_sizes(single=True), "training scale, m/px")
    embed_res_m: float = setting(30.0, number(), "default embedding scale, m/px")
    lr: float = setting(2e-4, number(), "Adam learning rate")
    queue_size: int = setting(4096, integer(1), "MoCo queue of negative keys")
    momentum: float = setting(0.999, number(0.0, strict=False, below=1.0), "key encoder momentum")
    temperature: float = setting(0.07, number(), "InfoNCE temperature")
    neighbour_radius_m: float = setting(1020.0, number(0.0, strict=False), "neighbour offset range, metres")
    head: str = setting("linear", choice("linear", "mlp"), "projection head")
    proj_dim: int = setting(128, integer(1), "projection size")
    flip_rot: bool = setting(True, boolean, "random flips and 90-degree rotations")
    bn_groups: int = setting(2, integer(1), "shuffled BatchNorm groups")
    stem: str = setting("paper", choice("paper", "reference"), "encoder stem, as topo2vec")

    def validate(self) -> None:
        if self.queue_size < self.batch_size:
            raise ValueError(f"queue_size={self.queue_size} is smaller than batch_size={self.batch_size}; "
                             f"the queue must hold at least one batch of keys")
        if self.batch_size < 2 * self.bn_groups:
            raise ValueError(f"bn_groups={self.bn_groups}: each BatchNorm group needs >= 2 of the "
                             f"batch_size={self.batch_size} images")


def _increasing_scales(key: str, v: Any) -> list[float]:
    scales = pixel_sizes()(key, v)
    if sorted(set(scales)) != scales:
        raise ValueError(f"{key}={v!r}: expected distinct pixel sizes in increasing order")
    return scales


@dataclasses.dataclass
class GeomorphometryConfig(ModelConfig):
    """Fixed geomorphometric descriptors at several pixel sizes (beyond the paper)."""

    KIND: ClassVar[str] = "geomorphometry"
    scales_m: list[float] = setting([30.0, 60.0, 120.0], _increasing_scales, "pixel sizes, m/px, finest first")
    flat_deg: float = setting(1.0, number(0.0, strict=False), "geomorphon flatness threshold, degrees")
