"""Shapes and parameter counts of the topo2vec networks (paper section 2.4)."""
import pytest
import torch

from topo2vec_lib.models.networks import (
    Decoder,
    Discriminator,
    Encoder,
    count_parameters,
    decoder_channels,
    discriminator_input,
)


# Parameter counts from the paper's layer list, by hand: conv = c_in*c_out*k*k + c_out, BatchNorm = 2c.
def conv(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def block(c_in, c_out):                       # 3x3 conv + BatchNorm
    return conv(c_in, c_out, 3) + 2 * c_out


def double(c_in, c_out):
    return block(c_in, c_out) + block(c_out, c_out)


ENCODER_PARAMS = double(1, 8) + double(8, 16) + double(16, 32) + double(32, 64) + double(64, 128)
DECODER1_PARAMS = double(128, 64) + double(64, 32) + double(32, 16) + double(16, 8) + conv(8, 1, 1)
DECODER4_PARAMS = DECODER1_PARAMS - conv(8, 1, 1) + double(8, 4) + double(4, 2) + conv(2, 1, 1)
D_CONVS = [(2, 8), (8, 16), (16, 32), (32, 64), (64, 128)]
D_FC = (128 * 64 + 64) + (64 * 32 + 32) + (32 * 1 + 1)
DISC_PAPER_PARAMS = sum(conv(a, b, 4) + 2 * b for a, b in D_CONVS) + D_FC
DISC_REFERENCE_PARAMS = DISC_PAPER_PARAMS - 2 * 128          # no BatchNorm after the last conv


@pytest.mark.parametrize("stem", ["paper", "reference"])
def test_encoder_shapes_and_parameters(stem):
    enc = Encoder(stem)
    x = torch.randn(5, 1, 17, 17)
    stem_out = enc.inc(x)
    assert stem_out.shape == ((5, 8, 16, 16) if stem == "paper" else (5, 8, 17, 17))
    sizes = []
    h = stem_out
    for down in enc.downs:
        h = down(h)
        sizes.append(tuple(h.shape[1:]))
    assert sizes == [(16, 8, 8), (32, 4, 4), (64, 2, 2), (128, 1, 1)]
    assert enc(x).shape == (5, 128)
    assert count_parameters(enc) == ENCODER_PARAMS


@pytest.mark.parametrize("k, params", [(1, DECODER1_PARAMS), (4, DECODER4_PARAMS)])
def test_decoder_shapes_and_parameters(k, params):
    dec = Decoder(k)
    z = torch.randn(3, 128)
    h = z.reshape(3, 128, 1, 1)
    for up in dec.ups:
        h = up(h)
    assert h.shape == ((3, 8, 16, 16) if k == 1 else (3, 2, 64, 64))   # paper: 2x64x64 before the last conv
    assert dec(z).shape == (3, 1, 16 * k, 16 * k)
    assert count_parameters(dec) == params


def test_decoder_general_k():
    assert decoder_channels(2) == [64, 32, 16, 8, 4]
    assert Decoder(8)(torch.randn(2, 128)).shape == (2, 1, 128, 128)


@pytest.mark.parametrize("k", [0, 3, 6, -4, 2.5, "4", True])
def test_decoder_rejects_bad_k(k):
    with pytest.raises(ValueError, match="power of two"):
        Decoder(k)


@pytest.mark.parametrize("style, params", [("paper", DISC_PAPER_PARAMS), ("reference", DISC_REFERENCE_PARAMS)])
def test_discriminator_shapes_and_parameters(style, params):
    d = Discriminator(style)
    pair = torch.randn(4, 2, 64, 64)
    assert d.convs(pair).shape == (4, 128, 1, 1)
    assert d(pair).shape == (4,)
    p = d.eval().probability(pair)
    assert ((p > 0) & (p < 1)).all()
    assert count_parameters(d) == params
    acts = {type(m).__name__ for m in d.modules()}
    assert ("LeakyReLU" in acts) is (style == "reference")


def test_discriminator_input_brings_both_to_64():
    x = torch.rand(2, 1, 17, 17)
    for y in (torch.rand(2, 1, 64, 64), torch.rand(2, 1, 16, 16)):
        for mode in ("bilinear", "nearest"):
            pair = discriminator_input(x, y, mode)
            assert pair.shape == (2, 2, 64, 64)
    flat = discriminator_input(torch.full((1, 1, 17, 17), 0.3), torch.rand(1, 1, 64, 64))
    assert torch.allclose(flat[:, 0], torch.tensor(0.3))
    with pytest.raises(ValueError, match="mode"):
        discriminator_input(x, y, "bicubic")


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="stem"):
        Encoder("valid")
    with pytest.raises(ValueError, match="style"):
        Discriminator("pix2pix")
    with pytest.raises(ValueError, match=r"\(N, 1, 17, 17\)"):
        Encoder()(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 2, 64, 64\)"):
        Discriminator()(torch.randn(2, 1, 64, 64))
