"""The fast CPU inference copies of the encoders compute the same function as the eager networks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from topo2vec_lib import inference
from topo2vec_lib.models.networks import Encoder


def _trained_like(stem: str, seed: int) -> Encoder:
    """An Encoder in eval mode with random weights and non-trivial BatchNorm statistics (folding must use them)."""
    torch.manual_seed(seed)
    enc = Encoder(stem)
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return enc.eval()


@pytest.mark.parametrize("stem", ["paper", "reference"])
def test_the_inference_rewrite_is_the_same_function_as_the_encoder(stem):
    enc = _trained_like(stem, seed=3)
    fast = inference.InferenceEncoder(enc).eval()
    x = torch.from_numpy(np.random.default_rng(4).random((200, 1, 17, 17), dtype=np.float32))
    with torch.inference_mode():
        want, got = enc(x), fast(x)
        got_cl = inference.InferenceEncoder(enc).to(memory_format=torch.channels_last).eval()(x)
    assert want.abs().max() > 0.1 and (want == 0).any()            # ReLU outputs: some zero, some large
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_cl, want, atol=1e-5, rtol=1e-5)


def test_the_inference_rewrite_refuses_other_networks():
    with pytest.raises(TypeError, match="rewrites a topo2vec Encoder, not Sequential"):
        inference.InferenceEncoder(torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3)))


@pytest.mark.parametrize("shape", [(5, 8, 16, 16), (3, 16, 9, 7), (2, 64, 2, 2), (4, 3, 17, 17)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_pool_2x2_is_bit_equal_to_max_pool2d(shape, dtype):
    x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    got = inference.max_pool_2x2(x)
    assert torch.equal(got, F.max_pool2d(x, 2))
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_the_bf16_encoder_of_a_topo2vec_model_uses_the_rewrite(monkeypatch):
    from topo2vec_lib.models import Topo2Vec

    if not inference.bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    made = []
    real = inference.InferenceEncoder

    def spy(enc):
        made.append(enc)
        return real(enc)

    monkeypatch.setattr(inference, "InferenceEncoder", spy)
    model = Topo2Vec(_trained_like("paper", seed=5), {"k": 4, "embed_res_m": 30.0}, name="t")
    x = np.random.default_rng(6).random((300, 1, 17, 17), dtype=np.float32)
    got = inference.fast_encoder(model, precision="bf16")(x)
    want = model.embed_patches(x)
    assert len(made) == 1
    rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
    assert 1e-5 < rel.max() <= inference.BF16_TOLERANCE
    assert inference.fast_encoder(model, precision="float32") is not None and len(made) == 1   # float32: no rewrite
