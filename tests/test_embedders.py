"""Embedding API and checkpoint format: Topo2Vec.load / embed / embed_patches, load_embedder, bad files."""
import numpy as np
import pytest
import torch
from conftest import make_terrain

from topo2vec_lib.models import Embedder, Topo2Vec, checkpoints, load_embedder
from topo2vec_lib.models.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from topo2vec_lib.models.networks import Decoder, Encoder
from topo2vec_lib.sampler import PatchSampler, normalize

CONFIG = {"kind": "topo2vec", "name": "t2v", "k": 4, "train_res_m": [120.0], "stem": "paper",
          "normalisation": {"method": "minmax", "min_range_m": 1.0}, "embed_res_m": 30.0}


@pytest.fixture
def model_path(tmp_path):
    torch.manual_seed(0)
    enc, dec = Encoder(), Decoder(4)
    x = torch.rand(8, 1, 17, 17)
    dec(enc(x))                      # one train-mode pass so BatchNorm running stats differ from defaults
    path = tmp_path / "t2v.pt"
    save_checkpoint(path, kind="topo2vec", config=CONFIG,
                    state={"encoder": enc.state_dict(), "decoder": dec.state_dict()})
    return path


@pytest.fixture
def terrain():
    yy, xx = np.mgrid[0:80, 0:80]
    return make_terrain(1000 + 50 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + yy * 2.0)


def test_load_and_embed_patches(model_path):
    model = Topo2Vec.load(model_path)
    assert model.name == "t2v" and model.dim == 128 and model.res_m == 30.0 and model.config["k"] == 4
    assert not model.encoder.training
    x = np.random.default_rng(0).random((10, 17, 17), dtype=np.float32)
    v = model.embed_patches(x)
    assert v.shape == (10, 128) and v.dtype == np.float32
    np.testing.assert_array_equal(v, model.embed_patches(x[:, None]))                 # (N, 1, 17, 17) too
    np.testing.assert_allclose(model.embed_patches(x, batch_size=3), v, rtol=1e-5, atol=1e-6)   # batching
    np.testing.assert_allclose(model.embed_patches(x[4:5])[0], v[4], rtol=1e-5, atol=1e-6)      # eval mode
    assert model.reconstruct(x[:2]).shape == (2, 1, 64, 64)
    assert model.embed_patches(np.zeros((0, 17, 17), np.float32)).shape == (0, 128)


def test_embed_places_matches_patches(model_path, terrain):
    model = load_embedder(model_path)
    assert isinstance(model, Topo2Vec)
    smp = PatchSampler(terrain)
    lon, lat = smp.random_places(7, np.random.default_rng(1), 30.0)
    v = model.embed(terrain, lon, lat, res_m=30, batch_size=3)
    expected = model.embed_patches(normalize(smp.patches(lon, lat, 30.0, 17)))
    np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.embed(smp, lon, lat), expected, rtol=1e-5, atol=1e-6)   # default res_m


def test_save_roundtrip(model_path, tmp_path):
    model = Topo2Vec.load(model_path)
    model.save(tmp_path / "copy.pt")
    again = Topo2Vec.load(tmp_path / "copy.pt")
    x = np.random.default_rng(2).random((4, 17, 17), dtype=np.float32)
    np.testing.assert_array_equal(model.embed_patches(x), again.embed_patches(x))
    assert again.config == model.config


def test_bad_patches_and_places(model_path, terrain):
    model = Topo2Vec.load(model_path)
    with pytest.raises(ValueError, match=r"\(N, 17, 17\)"):
        model.embed_patches(np.zeros((2, 16, 16), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        model.embed_patches(np.full((1, 17, 17), np.nan, np.float32))
    with pytest.raises(ValueError, match="PatchSampler or a terrain"):
        model.embed(np.zeros((80, 80)), [12.0], [47.2], 30)
    with pytest.raises(ValueError, match="same length"):
        model.embed(terrain, [12.0, 12.0], [47.2], 30)
    with pytest.raises(NotImplementedError):
        Embedder().embed_patches(np.zeros((1, 17, 17), np.float32))


def test_bad_checkpoint_files(tmp_path, model_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_embedder(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(model_path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="corrupt"):
        Topo2Vec.load(corrupt)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a topo2vec checkpoint"):
        load_embedder(foreign)
    future = tmp_path / "future.pt"
    payload = torch.load(model_path, weights_only=True)
    torch.save({**payload, "version": checkpoints.VERSION + 1}, future)
    with pytest.raises(CheckpointError, match=f"version {checkpoints.VERSION + 1}.*reads version"):
        load_embedder(future)
    other_kind = tmp_path / "resume.pt"
    save_checkpoint(other_kind, kind="resume", config={}, state={})
    with pytest.raises(CheckpointError, match="'resume' checkpoint, expected kind 'topo2vec'"):
        Topo2Vec.load(other_kind)
    with pytest.raises(CheckpointError, match="not an embedder"):
        load_embedder(other_kind)
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, kind="topo2vec", config={**CONFIG, "k": 1}, state={"encoder": Encoder().state_dict(),
                                                                            "decoder": Decoder(4).state_dict()})
    with pytest.raises(CheckpointError, match="matching encoder/decoder"):
        Topo2Vec.load(wrong)


def test_checkpoint_roundtrip_keeps_numpy_and_writes_atomically(tmp_path):
    path = tmp_path / "c.pt"
    state = {"mean": np.arange(4, dtype=np.float32), "n": np.int64(3), "nested": [{"a": np.ones(2)}],
             "w": torch.ones(2)}
    save_checkpoint(path, kind="id", config={"name": "x", "scales_m": (30, 60)}, state=state)
    ckpt = load_checkpoint(path, kind="id")
    assert isinstance(ckpt["state"]["mean"], np.ndarray) and ckpt["state"]["mean"].dtype == np.float32
    np.testing.assert_array_equal(ckpt["state"]["nested"][0]["a"], np.ones(2))
    assert ckpt["state"]["n"] == 3 and ckpt["config"]["scales_m"] == (30, 60)
    assert ckpt["library_version"] and ckpt["format"] == checkpoints.FORMAT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]          # no temporary left behind
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint(path, kind="", config={}, state={})


def test_rng_state_roundtrip():
    rng = np.random.default_rng(5)
    snap = checkpoints.rng_state(rng)
    a, ta = rng.random(3), torch.rand(3)
    other = np.random.default_rng(99)
    checkpoints.set_rng_state(snap, other)
    np.testing.assert_array_equal(other.random(3), a)
    assert torch.equal(torch.rand(3), ta)
