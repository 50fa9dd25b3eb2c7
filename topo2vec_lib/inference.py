"""Fast CPU inference of the torch encoders: what ``topo2vec embed`` (:mod:`topo2vec_lib.fields`) encodes with.

:func:`fast_encoder` turns an embedder into a function ``(N, 1, 17, 17)`` normalised patches -> ``(N, D)``
float32 that computes the same vectors faster:

- ``precision="float32"`` (default): the network traced, frozen and optimised by TorchScript (BatchNorm folded,
  oneDNN convolutions with fused ReLU); equal to the eager model up to float rounding (1e-4, checked).
- ``precision="bf16"``: bfloat16 weights and activations on CPUs with native bfloat16 (AVX-512 BF16, AMX), within
  :data:`BF16_TOLERANCE` of float32 (checked). A topo2vec encoder is first rewritten by
  :class:`InferenceEncoder` into the same function with fewer operations (measured 1.3-1.4x the bfloat16 patches/s
  of the plain traced copy: ``benchmarks/results/embed_field.json``).

Every rewrite is checked against the eager float32 model on random patches before use; any failure falls back to
the eager model with a warning, which is always right.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from topo2vec_lib.models.embedder import PATCH_SIZE, Embedder

INFER_BATCH = 512           # patches per call of the optimised encoder (the fastest of 256..4096 measured)
PRECISIONS = ("float32", "bf16")
BF16_TOLERANCE = 0.1
"""``precision="bf16"``: the largest relative L2 error ``|v_bf16 - v| / |v|`` of a vector allowed against the
float32 encoder on the check batch of random patches. bfloat16 keeps 8 significant bits (0.4 % per value); a trained
encoder accumulates that to about 1 %: measured for the study's topo2vec-4, -1 and -adv on 4,000 patches of the
benchmark DEM, 1.0-1.1 % median, 2.2-2.4 % max, cosine >= 0.9997 through :class:`InferenceEncoder` (BatchNorm folded
in float32 before the cast); the plain traced bfloat16 copy was 2.3-2.5 % median, 5.4-5.9 % max, and over this
tolerance for topo2vec-adv. A float16 field's storage alone adds ~0.05 %."""


def bf16_supported() -> bool:
    """The CPU computes bfloat16 natively (AVX-512 BF16 or AMX, as oneDNN reports): ``precision="bf16"`` pays."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str) -> str:
    """The precision that will run: a ValueError unless ``precision`` is one of :data:`PRECISIONS`; ``"bf16"`` on
    a CPU without native bfloat16 (:func:`bf16_supported`) warns and gives ``"float32"`` (faster there)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r} must be one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and not bf16_supported():
        warnings.warn("this CPU has no native bfloat16 (AVX-512 BF16 or AMX): encoding in float32", stacklevel=3)
        return "float32"
    return precision


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` of a channels-last ``(N, C, H, W)`` tensor (odd H, W: the last row/column dropped, as
    the floor of ``max_pool2d``), as two elementwise maxima over views of its ``(N, H, W, C)`` memory: bit-equal,
    and 3-4x faster than ``max_pool2d`` on few-channel bfloat16 tensors (which also computes indices)."""
    n, c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    t = x.permute(0, 2, 3, 1)[:, :2 * h2, :2 * w2]                  # (N, H, W, C) view of channels-last memory
    t = t.reshape(n, 2 * h2, w2, 2 * c)
    t = torch.maximum(t[..., :c], t[..., c:])                        # pairs of columns: (N, H, w2, C)
    t = t.reshape(n, h2, 2, w2 * c)
    t = torch.maximum(t[:, :, 0], t[:, :, 1]).reshape(n, h2, w2, c)  # pairs of rows
    return t.permute(0, 3, 1, 2)


class InferenceEncoder(nn.Module):
    """A topo2vec :class:`~topo2vec_lib.models.networks.Encoder` in eval mode rewritten for inference: the same
    function, ``(N, 1, 17, 17)`` -> ``(N, 128)``, with fewer operations. Each rewrite is exact in real arithmetic:

    - BatchNorm folded into the convolution before it (its running statistics are constants in eval mode);
    - each ReLU that feeds a 2x2 max-pool moved after the pool (``max(relu(a), relu(b)) = relu(max(a, b))``: a
      quarter of the ReLUs) and the pool computed by :func:`max_pool_2x2`;
    - the last double convolution sees a 1 x 1 input: with zero padding 1 a 3x3 convolution only uses its centre
      tap, so it becomes a linear layer (the padded taps cost 9x its useful multiplications).
    """

    def __init__(self, encoder: Any):
        super().__init__()
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        from topo2vec_lib.models.networks import Encoder

        if not isinstance(encoder, Encoder):
            raise TypeError(f"InferenceEncoder rewrites a topo2vec Encoder, not {type(encoder).__name__}")

        def fold(block: Any) -> nn.Conv2d:                 # conv_block: (pad, conv, BatchNorm, ReLU)
            return fuse_conv_bn_eval(block[1].eval(), block[2].eval())

        def centre(conv: nn.Conv2d) -> nn.Linear:
            if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.bias is None:
                raise ValueError("the last block must be 3x3 convolutions with padding 1")
            lin = nn.Linear(conv.in_channels, conv.out_channels)
            lin.weight.data = conv.weight.data[:, :, 1, 1].clone()
            lin.bias.data = conv.bias.data.clone()
            return lin

        enc: Any = encoder                                 # nn.Sequential blocks, indexed below
        self.pad = copy.deepcopy(enc.inc[0][0])            # ZeroPad2d (stem "paper") or Identity ("reference")
        self.stem = nn.ModuleList(fold(b) for b in enc.inc)
        self.middle = nn.ModuleList(fold(b) for down in enc.downs[:-1] for b in down[1])   # pairs of convs
        self.tail = nn.ModuleList(centre(fold(b)) for b in enc.downs[-1][1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu_(self.stem[0](self.pad(x)))
        x = self.stem[1](x)                                # its ReLU comes after the pool
        convs = list(self.middle)
        for first, second in zip(convs[::2], convs[1::2]):
            x = torch.relu_(max_pool_2x2(x))
            x = second(torch.relu_(first(x)))
        x = max_pool_2x2(x)
        if x.shape[2:] != (1, 1):
            raise ValueError(f"the last block's input must be 1 x 1, got {tuple(x.shape[2:])}")
        x = torch.relu(x.flatten(1))
        x = torch.relu_(self.tail[0](x))
        return torch.relu_(self.tail[1](x))


def fast_encoder(embedder: Embedder, check_batch: int = 256, precision: str = "float32",
                 rewrite: bool = True) -> Callable[[np.ndarray], np.ndarray] | None:
    """A faster ``embed_patches`` for torch embedders on the CPU, or None where it does not apply or fails.

    The network is traced, frozen and optimised for inference by TorchScript (``torch.jit.freeze`` +
    ``optimize_for_inference``: BatchNorm folded into the convolutions, oneDNN convolutions with fused ReLU):
    measured 1.7-2x the patches per CPU-second of the eager channels-last encoder. ``precision="float32"``: from
    contiguous weights; the result equals eager's up to float rounding (checked here on ``check_batch`` random
    patches: at most 1e-4 relative, else None with a warning). ``precision="bf16"``: a topo2vec encoder rewritten by
    :class:`InferenceEncoder`, channels-last bfloat16 weights and activations (oneDNN's AMX / AVX-512 BF16
    kernels), vectors returned as float32; checked against eager float32 to :data:`BF16_TOLERANCE` relative error
    per vector (else float32 with a warning); on a CPU without native bfloat16 (:func:`bf16_supported`) it warns and
    runs float32, which is faster there (``rewrite=False``: without the rewrite, the benchmark's reference).
    ``torch.jit`` is deprecated in torch 2.13 but works; if a later torch drops it, this returns None and eager
    runs.
    """
    from topo2vec_lib.models.embedder import TorchEmbedder
    from topo2vec_lib.models.networks import Encoder

    precision = resolve_precision(precision)
    if not isinstance(embedder, TorchEmbedder) or embedder.device.type != "cpu" \
            or type(embedder).embed_patches is not TorchEmbedder.embed_patches:
        return None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    try:
        emb = copy.deepcopy(embedder)
        emb.net.eval()
        module: nn.Module
        if precision == "bf16" and rewrite and isinstance(emb.net, Encoder):
            module = InferenceEncoder(emb.net)
        else:
            class _NetEmbed(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.net = emb.net

                def forward(self, x):
                    return emb.net_embed(x)
            module = _NetEmbed()
        # float32 runs fastest from contiguous weights, bfloat16 from channels-last ones (1.5-2.6x float32 measured;
        # contiguous bfloat16 weights were slower than float32)
        fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
        module.to(memory_format=fmt)   # type: ignore[call-overload]
        module.to(dtype)
        module.eval()
        rng = np.random.default_rng(0)
        probe = rng.random((check_batch, 1, PATCH_SIZE, PATCH_SIZE), dtype=np.float32)
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            example = torch.from_numpy(probe).to(dtype).contiguous(memory_format=fmt)
            traced = torch.jit.trace(module, example)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            got = frozen(example).float().numpy()
        want = embedder.embed_patches(probe)
        if precision == "bf16":
            norm = np.maximum(np.linalg.norm(want, axis=1), 1e-12)
            err = float(np.max(np.linalg.norm(got - want, axis=1) / norm))
            ok = err <= BF16_TOLERANCE
        else:
            err = float(np.max(np.abs(got - want)))
            ok = err <= 1e-4 * max(1.0, float(np.max(np.abs(want))))
        if not ok:
            warnings.warn(f"the optimised {precision} encoder differs from {embedder.name}'s by {err:g}; using the "
                          "eager float32 one", stacklevel=2)
            return None
    except Exception as err:  # noqa: BLE001 (any TorchScript failure: the eager encoder is always right)
        warnings.warn(f"no optimised encoder for {embedder.name} ({type(err).__name__}: {str(err)[:200]}); using the "
                      "eager one", stacklevel=2)
        return None
    dim = int(embedder.dim)

    def run(x: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 1, PATCH_SIZE, PATCH_SIZE)
        out = np.empty((len(a), dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(a), INFER_BATCH):
                out[s:s + INFER_BATCH] = frozen(torch.from_numpy(a[s:s + INFER_BATCH]).to(dtype)).float().numpy()
        return out

    return run
