"""Topo2vec networks (paper section 2.4): encoder f, decoder g(k), discriminator d.

Shapes (N = batch):
- ``Encoder``:  ``(N, 1, 17, 17)`` -> ``(N, 128)``; 8 -> 16 -> 32 -> 64 -> 128 filters, 16 -> 8 -> 4 -> 2 -> 1 px.
- ``Decoder(k)``: ``(N, 128)`` -> ``(N, 1, 16k, 16k)``; k a power of two (1 -> 16x16, 4 -> 64x64).
- ``Discriminator``: ``(N, 2, 64, 64)`` -> ``(N,)`` logits (apply ``torch.sigmoid`` for the probability).

Decisions where the paper leaves room (see also docs and ``notebooks/train.py``):

- **17 -> 16 ("due to padding")**, ``stem``: ``"paper"`` (default) keeps both stem convolutions 3x3 with 8
  filters as the paper says and pads the first one asymmetrically (one zero row/column on the top/left,
  none on the bottom/right), so 17 x 17 becomes exactly 16 x 16 and the four 2x2 max-pools halve
  16 -> 8 -> 4 -> 2 -> 1 without dropping pixels. ``"reference"`` is the paper's reference code: padding 1
  keeps 17 x 17 and the first max-pool's floor drops the stem's last output row and column (17 -> 8). Both
  have the same parameters and the same 128 x 1 x 1 output; with ``"paper"`` the sizes are those the paper
  lists (8x16x16 after the stem) and no stem output is discarded.
- **Decoder output**: the paper's final "convolutional block" is a 1x1 convolution with no BatchNorm or
  ReLU (as the reference code's ``OutConv``): the target is min-max normalised relief that may leave
  [0, 1], so the output must not be clamped by a ReLU. Bilinear upsampling uses ``align_corners=False``.
- **Discriminator**: ``style="paper"``: five conv blocks each with BatchNorm and ReLU, FC 128 -> 64 -> 32 -> 1
  with ReLU after the first two. ``style="reference"``: the reference code's pix2pix discriminator
  (LeakyReLU 0.2, last conv without BatchNorm or activation, no activation between the FC layers).
  ``forward`` returns logits; the sigmoid of the paper is applied inside ``BCEWithLogitsLoss`` during
  training (numerically safe, same function) and by :meth:`Discriminator.probability`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

STEMS = ("paper", "reference")
DISCRIMINATOR_STYLES = ("paper", "reference")
LATENT_DIM = 128
INPUT_SIZE = 17


def conv_block(c_in: int, c_out: int, padding: int | tuple = 1) -> nn.Sequential:
    """3x3 convolution, BatchNorm, ReLU. ``padding``: an int (zero padding on every side, inside the convolution)
    or ``(left, right, top, bottom)`` (an explicit ``nn.ZeroPad2d``); module indices are the same either way."""
    pad: nn.Module
    if isinstance(padding, int):
        pad, conv = nn.Identity(), nn.Conv2d(c_in, c_out, 3, padding=padding)
    else:
        pad, conv = nn.ZeroPad2d(padding), nn.Conv2d(c_in, c_out, 3, padding=0)
    return nn.Sequential(pad, conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def double_conv(c_in: int, c_out: int, first_padding: int | tuple = 1) -> nn.Sequential:
    """Two :func:`conv_block` (3x3 conv, BatchNorm, ReLU), ``c_in -> c_out -> c_out`` channels."""
    return nn.Sequential(conv_block(c_in, c_out, first_padding), conv_block(c_out, c_out))


def _check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; expected one of {list(valid)}")


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k < 1 or int(k) != k or (int(k) & (int(k) - 1)):
        raise ValueError(f"fractal factor k={k!r} is not valid; expected a power of two >= 1 (1, 2, 4, 8, ...)")
    return int(k)


class Encoder(nn.Module):
    """f: ``(N, 1, 17, 17)`` normalised patches -> ``(N, 128)`` latent vectors."""

    def __init__(self, stem: str = "paper"):
        super().__init__()
        _check_choice("stem", stem, STEMS)
        self.stem = stem
        first_padding = (1, 0, 1, 0) if stem == "paper" else 1   # (left, right, top, bottom)
        self.inc = double_conv(1, 8, first_padding)               # 8 x 16 x 16 (paper) / 8 x 17 x 17
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), double_conv(c, 2 * c)) for c in (8, 16, 32, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (1, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"encoder input must have shape (N, 1, 17, 17), got {tuple(x.shape)}")
        x = self.inc(x)
        for down in self.downs:
            x = down(x)
        return x.flatten(1)


class Up(nn.Module):
    """Bilinear x2 upsampling, then two conv blocks ``c_in -> c_out``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = double_conv(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


def decoder_channels(k: int) -> list[int]:
    """Output channels of the decoder's up layers: 64, 32, 16, 8, then halving once per factor 2 of k."""
    k = _check_k(k)
    extra = [max(8 >> (j + 1), 1) for j in range(int(math.log2(k)))]
    return [64, 32, 16, 8] + extra


class Decoder(nn.Module):
    """g(k): ``(N, 128)`` latent -> ``(N, 1, 16k, 16k)`` reconstruction (k = 1: 16x16, k = 4: 64x64 via 2x64x64)."""

    def __init__(self, k: int = 1):
        super().__init__()
        self.k = _check_k(k)
        chans = decoder_channels(self.k)
        c_in = [LATENT_DIM] + chans[:-1]
        self.ups = nn.ModuleList(Up(a, b) for a, b in zip(c_in, chans))
        self.out = nn.Conv2d(chans[-1], 1, kernel_size=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.reshape(z.shape[0], LATENT_DIM, 1, 1)
        for up in self.ups:
            x = up(x)
        return self.out(x)


class Discriminator(nn.Module):
    """d: ``(N, 2, 64, 64)`` [input brought to 64x64, real or generated target] -> ``(N,)`` logits."""

    SIZE = 64

    def __init__(self, style: str = "paper"):
        super().__init__()
        _check_choice("style", style, DISCRIMINATOR_STYLES)
        self.style = style
        act = (lambda: nn.ReLU(inplace=True)) if style == "paper" else (lambda: nn.LeakyReLU(0.2, inplace=True))
        layers, c_in = [], 2
        for c_out in (8, 16, 32, 64):                                         # 64 -> 32 -> 16 -> 8 -> 4 px
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), act()]
            c_in = c_out
        layers.append(nn.Conv2d(64, 128, 4, stride=1, padding=0))            # 4 -> 1 px
        if style == "paper":
            layers += [nn.BatchNorm2d(128), act()]
        self.convs = nn.Sequential(*layers)
        if style == "paper":
            self.fc = nn.Sequential(nn.Linear(128, 64), nn.ReLU(inplace=True), nn.Linear(64, 32),
                                    nn.ReLU(inplace=True), nn.Linear(32, 1))
        else:
            self.fc = nn.Sequential(nn.Linear(128, 64), nn.Linear(64, 32), nn.Linear(32, 1))

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        if pair.ndim != 4 or pair.shape[1:] != (2, self.SIZE, self.SIZE):
            raise ValueError(f"discriminator input must have shape (N, 2, 64, 64), got {tuple(pair.shape)}")
        return self.fc(self.convs(pair).flatten(1)).squeeze(1)

    def probability(self, pair: torch.Tensor) -> torch.Tensor:
        """The paper's sigmoid output: probability that ``pair`` is a real (input, target) pair, ``(N,)``."""
        return torch.sigmoid(self(pair))


def discriminator_input(x: torch.Tensor, y: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Stack input ``x (N, 1, 17, 17)`` and target/output ``y (N, 1, 16k, 16k)`` into ``(N, 2, 64, 64)``.

    Both are resized to 64 x 64 over the same footprint (``align_corners=False`` maps pixel edges onto pixel
    edges); ``mode`` is ``"bilinear"`` (default, smooth) or ``"nearest"`` (the reference code).
    ``discriminator_pair(input_at_64(x, mode), y)`` is the same computation with ``x`` resized once.
    """
    return discriminator_pair(input_at_64(x, mode), y)


def input_at_64(x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """The discriminator's view of the 17 x 17 input: ``(N, 1, 64, 64)`` by ``mode`` interpolation."""
    _check_choice("mode", mode, ("bilinear", "nearest"))
    size = Discriminator.SIZE
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x, size=(size, size), mode=mode, **kw)


def discriminator_pair(x64: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[x64, y]`` as ``(N, 2, 64, 64)``; ``y`` (the target or the output, ``16k x 16k``) resized to 64 x 64
    bilinearly when it is not."""
    size = Discriminator.SIZE
    if y.shape[-1] != size:
        y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False)
    return torch.cat([x64, y], dim=1)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
