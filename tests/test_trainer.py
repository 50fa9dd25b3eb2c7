"""The training loop (models/trainer.py) with topo2vec: config validation, Algorithm-1 steps, exact resume after
a kill, dispatch through the registry, the train notebook."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_terrain, write_params
from scipy.ndimage import gaussian_filter

from topo2vec_lib.models import Topo2Vec, checkpoints, load_embedder, train_model
from topo2vec_lib.models.config import Topo2VecConfig
from topo2vec_lib.models.topo2vec import Topo2VecMethod, sample_chunk
from topo2vec_lib.models.trainer import resolve_device, torch_threads
from topo2vec_lib.sampler import PatchSampler


def relief(n=160, seed=0):
    """Smooth multi-scale random relief in metres, (n, n)."""
    rng = np.random.default_rng(seed)
    z = sum(gaussian_filter(rng.normal(size=(n, n)), s) * s * 40 for s in (1, 4, 16))
    return (z + 1000).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny networks train faster on one thread (and OpenMP spinning hurts on a busy 2-core machine)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def sampler():
    return PatchSampler(make_terrain(relief()), threads=1)


TINY = {"kind": "topo2vec", "k": 1, "train_res_m": [30, 45], "images": 64, "batch_size": 8, "epochs": 2,
        "chunk_batches": 2, "log_steps": 3, "device": "cpu"}


class KilledError(RuntimeError):
    pass


class KillingSampler:
    """Wraps a sampler and raises on the ``kill_at``-th fractal_pairs call, like a kill in mid-run."""

    def __init__(self, sampler, kill_at):
        self.sampler, self.kill_at, self.calls = sampler, kill_at, 0

    def random_places(self, *a, **kw):
        return self.sampler.random_places(*a, **kw)

    def fractal_pairs(self, *a, **kw):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KilledError("killed")
        return self.sampler.fractal_pairs(*a, **kw)


def test_config_defaults_and_bad_values():
    cfg = Topo2VecConfig.from_dict({"kind": "topo2vec", "k": 4, "train_res_m": 120, "adversarial": True})
    assert cfg.train_res_m == [120.0] and cfg.betas == [0.5, 0.999] and cfg.lr == 2e-4
    assert Topo2VecConfig.from_dict({"k": 1}).betas == [0.9, 0.999]
    with pytest.raises(ValueError, match=r"unknown topo2vec config key\(s\).*'learning_rate'"):
        Topo2VecConfig.from_dict({"learning_rate": 1e-3})
    for bad in ({"k": 3}, {"train_res_m": []}, {"train_res_m": [-30]}, {"batch_size": 1}, {"images": 0},
                {"lr": 0}, {"lr_g_scope": "encoder"}, {"stem": "valid"}, {"discriminator": "x"},
                {"d_input_upsample": "cubic"}, {"adversarial": "yes"}, {"kind": "cnn"}, {"lr": float("inf")},
                {"lambda_l1": float("nan")}, {"device": "tpu"}, {"betas": [0.9]}, {"k": 2.5},
                {"precision": "float16"}, {"precision": None}, {"compile": "yes"}):
        with pytest.raises(ValueError, match=list(bad)[0]):
            Topo2VecConfig.from_dict(bad)
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")


def test_epoch_plan_counts_images_over_scales():
    method = Topo2VecMethod(Topo2VecConfig.from_dict(TINY), None, seed=0, device=torch.device("cpu"))
    # 64 images over 2 scales at batch 8: 4 place batches, 8 steps, 2 chunks of 2 place batches
    assert (method.batches_per_epoch, method.steps_per_batch) == (4, 2)


def test_learning_rates_per_module():
    def optimizers(**kw):
        cfg = Topo2VecConfig.from_dict({"k": 4, "adversarial": True, "lr": 2e-4, "lr_g": 1.6e-3, "lr_d": 3e-4, **kw})
        method = Topo2VecMethod(cfg, None, seed=0, device=torch.device("cpu"))
        method.build()
        return method.optimizers

    opts = optimizers()
    assert [g["lr"] for g in opts["generator"].param_groups] == [2e-4, 1.6e-3]      # paper: f lr1, g lr2
    assert opts["discriminator"].param_groups[0]["lr"] == 3e-4
    opts = optimizers(lr_g_scope="generator")
    assert [g["lr"] for g in opts["generator"].param_groups] == [1.6e-3, 1.6e-3]    # reference: f and g lr_g


def test_sample_chunk_is_a_function_of_seed_epoch_chunk(sampler):
    cfg = Topo2VecConfig.from_dict(TINY)
    a = sample_chunk(sampler, cfg, 0, 1, 1, 4)
    b = sample_chunk(sampler, cfg, 0, 1, 1, 4)
    c = sample_chunk(sampler, cfg, 0, 1, 0, 4)
    assert len(a) == 2 and a[0][0].shape == (16, 1, 17, 17) and a[1][1].shape == (16, 1, 16, 16)
    assert all(np.array_equal(p, q) for (p, _), (q, _) in zip(a, b))
    assert not np.array_equal(a[0][0], c[0][0])


def _train(sampler, tmp_path, name, config=TINY, resume=True, **kw):
    return train_model(config, sampler, out_path=tmp_path / f"{name}.pt",
                       resume_path=(tmp_path / f"{name}.resume.pt") if resume else None, seed=3, progress=False, **kw)


def _same_weights(a, b):
    sa, sb = checkpoints.load_checkpoint(a)["state"], checkpoints.load_checkpoint(b)["state"]
    assert sa.keys() == sb.keys()
    for net in sa:
        assert sa[net].keys() == sb[net].keys()
        for k in sa[net]:
            assert torch.equal(sa[net][k], sb[net][k]), f"{net}.{k} differs"


@pytest.mark.parametrize("checkpoint_steps, kill_at, precision", [(0, 5, "float32"), (1, 7, "float32"),
                                                                   (1, 7, "bf16")])
def test_killed_run_resumes_to_identical_weights(sampler, tmp_path, checkpoint_steps, kill_at, precision):
    # kill_at=5: dies at the start of epoch 2 (resumes from the epoch checkpoint);
    # kill_at=7: dies in the 2nd chunk of epoch 2 (resumes from the mid-epoch checkpoint after chunk 1)
    config = {**TINY, "checkpoint_steps": checkpoint_steps, "precision": precision}
    full = _train(sampler, tmp_path, "full", config)
    with pytest.raises(KilledError):
        _train(KillingSampler(sampler, kill_at), tmp_path, "killed", config)
    resume_file = tmp_path / "killed.resume.pt"
    state = checkpoints.load_resume_state(resume_file)
    assert state["epoch"] == 1 and state["step"] == (8 if kill_at == 5 else 12)
    assert not (tmp_path / "killed.pt").exists()
    resumed = _train(sampler, tmp_path, "killed", config)
    assert resumed["resumed_from_step"] == state["step"] and full["resumed_from_step"] is None
    _same_weights(tmp_path / "full.pt", tmp_path / "killed.pt")
    assert resumed["history"] == full["history"]
    assert resumed["images_seen"] == full["images_seen"] == 128
    assert not resume_file.exists()                          # removed after the final checkpoint


def test_resume_file_of_another_config_is_ignored(sampler, tmp_path):
    with pytest.raises(KilledError):
        _train(KillingSampler(sampler, 5), tmp_path, "m", TINY)
    with pytest.warns(UserWarning, match="another config"):
        out = _train(sampler, tmp_path, "m", {**TINY, "lr": 1e-3})
    assert out["resumed_from_step"] is None


def test_training_reduces_l1_and_records_history(sampler, tmp_path):
    cfg = {**TINY, "train_res_m": [30], "epochs": 3, "images": 128, "batch_size": 16, "lr": 2e-3, "workers": 1}
    out = _train(sampler, tmp_path, "m", cfg, resume=False)
    epochs = [h for h in out["history"] if h["scope"] == "epoch"]
    steps = [h for h in out["history"] if h["scope"] == "steps"]
    assert [h["epoch"] for h in epochs] == [0, 1, 2] and len(steps) == 24 // 3
    assert epochs[-1]["loss_l1"] < epochs[0]["loss_l1"]
    assert out["final_loss"] == epochs[-1]["loss_l1"] and out["images_seen"] == 3 * 128
    assert out["images_per_s"] > 0 and out["wall_s"] > 0


def test_adversarial_k4_trains_and_loads(sampler, tmp_path):
    cfg = {"kind": "topo2vec", "k": 4, "adversarial": True, "train_res_m": [120], "images": 16,
           "batch_size": 8, "epochs": 1, "lambda_l1": 100, "lambda_gan": 1, "name": "topo2vec-adv"}
    out = _train(sampler, tmp_path, "adv", cfg)
    assert set(out["final_losses"]) == {"loss_l1", "loss_gan_g", "loss_g", "loss_d"}
    assert np.isclose(out["final_losses"]["loss_g"],
                      100 * out["final_losses"]["loss_l1"] + out["final_losses"]["loss_gan_g"])
    ckpt = checkpoints.load_checkpoint(tmp_path / "adv.pt", kind="topo2vec")
    assert set(ckpt["state"]) == {"encoder", "decoder", "discriminator"}
    assert ckpt["config"]["k"] == 4 and ckpt["config"]["train_res_m"] == [120.0] and ckpt["config"]["seed"] == 3
    model = load_embedder(tmp_path / "adv.pt")
    assert isinstance(model, Topo2Vec) and model.name == "topo2vec-adv"
    x = np.random.default_rng(0).random((3, 17, 17), dtype=np.float32)
    assert model.reconstruct(x).shape == (3, 1, 64, 64)


def test_train_model_dispatch(sampler, tmp_path):
    with pytest.raises(ValueError, match="unknown model kind 'vae'"):
        train_model({"kind": "vae"}, sampler, out_path=tmp_path / "x.pt")
    out = train_model({**TINY, "epochs": 1, "images": 16, "train_res_m": [30]}, sampler,
                      labels=pd.DataFrame(), out_path=tmp_path / "t.pt", progress=False)
    assert out["steps"] == 2 and (tmp_path / "t.pt").exists()


@pytest.mark.slow
def test_train_notebook_smoke(tmp_path, notebook_runner):
    from topo2vec_lib import terrain as terrain_mod

    terrain_dir = tmp_path / "terrain"
    terrain_mod.save_terrain(make_terrain(relief(120, 1), region="train"), terrain_dir / "train.zarr")
    terrain_mod.save_terrain(make_terrain(relief(120, 2), center_lonlat=(7.6, 46.6), region="test"),
                             terrain_dir / "test.zarr")
    params = write_params(tmp_path / "params.yaml", train={"epochs": 2, "batch_size": 64})
    notebook_runner("train", tmp_path / "nb", {
        "model": "topo2vec-4", "params_path": str(params), "terrain_dir": str(terrain_dir),
        "labels_dir": str(tmp_path / "labels"), "models_dir": str(tmp_path / "models"),
        "metrics_dir": str(tmp_path / "metrics"), "plots_dir": str(tmp_path / "plots"), "seed": 0,
        "overrides": {"images": 16, "batch_size": 8, "epochs": 1, "log_steps": 1, "threads": 1}})
    metrics = json.loads((tmp_path / "metrics" / "train_topo2vec-4.json").read_text())
    assert metrics["images_seen"] == 16 and "history" not in metrics
    assert metrics["test_pairs"] == 64 and metrics["test_l1"] > 0 and list(metrics["test_l1_per_scale"]) == ["120"]
    loss = pd.read_csv(tmp_path / "plots" / "loss_topo2vec-4.csv")
    assert {"step", "loss_l1", "scope"} <= set(loss.columns) and len(loss) == 3
    assert (tmp_path / "plots" / "reconstructions_topo2vec-4.png").stat().st_size > 0
    model = load_embedder(tmp_path / "models" / "topo2vec-4.pt")
    assert model.name == "topo2vec-4" and model.config["k"] == 4


def _reference_adversarial_step(method, batch):
    """The adversarial step as it was written before the speed work (x resized three times, d's parameter
    gradients computed in the generator step and discarded): the float32 arithmetic the step must keep."""
    from topo2vec_lib.models.networks import discriminator_input

    x, y = batch
    cfg, nets, opts = method.cfg, method.modules, method.optimizers
    y_hat = nets["decoder"](nets["encoder"](x))
    loss_l1 = method.l1(y_hat, y)
    d, mode = nets["discriminator"], cfg.d_input_upsample
    fake_logits = d(discriminator_input(x, y_hat, mode))
    loss_gan = method.bce(fake_logits, torch.ones_like(fake_logits))
    loss_g = cfg.lambda_l1 * loss_l1 + cfg.lambda_gan * loss_gan
    opts["generator"].zero_grad(set_to_none=True)
    loss_g.backward()
    opts["generator"].step()
    opts["discriminator"].zero_grad(set_to_none=True)
    real_logits = d(discriminator_input(x, y, mode))
    fake_logits = d(discriminator_input(x, y_hat.detach(), mode))
    loss_d = method.bce(real_logits, torch.ones_like(real_logits)) + \
        method.bce(fake_logits, torch.zeros_like(fake_logits))
    loss_d.backward()
    opts["discriminator"].step()
    return {"loss_l1": loss_l1.item(), "loss_gan_g": loss_gan.item(), "loss_g": loss_g.item(), "loss_d": loss_d.item()}


def test_float32_adversarial_step_keeps_the_reference_arithmetic(sampler):
    """precision float32 is exact: the faster adversarial step gives bit-identical weights, running statistics,
    optimiser state and losses to the step it replaced."""
    cfg = Topo2VecConfig.from_dict({"k": 4, "adversarial": True, "train_res_m": [120], "batch_size": 8,
                                    "chunk_batches": 3, "images": 24})
    methods = []
    for _ in range(2):
        torch.manual_seed(5)
        m = Topo2VecMethod(cfg, sampler, seed=5, device=torch.device("cpu"))
        m.build()
        methods.append(m)
    new, ref = methods
    batches = list(new.steps(new.chunk(0, 0)))
    assert len(batches) == 3
    for batch in batches:
        assert new.step(batch) == _reference_adversarial_step(ref, batch)
    for name in new.modules:
        a, b = new.modules[name].state_dict(), ref.modules[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert all(p.requires_grad for p in new.modules[name].parameters())
    for name in new.optimizers:
        sa, sb = new.optimizers[name].state_dict()["state"], ref.optimizers[name].state_dict()["state"]
        assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i]), name


@pytest.mark.parametrize("adversarial", [False, True])
def test_bf16_trains_close_to_float32_and_embeds_in_float32(sampler, tmp_path, adversarial):
    """bf16 autocast: the same losses to bfloat16 accuracy after a few steps; weights stay float32."""
    base = {**TINY, "train_res_m": [120], "k": 4, "adversarial": adversarial, "epochs": 1, "images": 32,
            "log_steps": 1}
    out = {p: _train(sampler, tmp_path, p, {**base, "precision": p}, resume=False) for p in ("float32", "bf16")}
    l32 = [h["loss_l1"] for h in out["float32"]["history"] if h["scope"] == "steps"]
    l16 = [h["loss_l1"] for h in out["bf16"]["history"] if h["scope"] == "steps"]
    assert len(l32) == len(l16) == 4
    assert np.allclose(l16, l32, rtol=0.05), (l16, l32)
    assert l16 != l32                                                   # it did run in bfloat16
    state = checkpoints.load_checkpoint(tmp_path / "bf16.pt")["state"]
    assert all(v.dtype in (torch.float32, torch.int64) for net in state.values() for v in net.values())
    assert load_embedder(tmp_path / "bf16.pt").config["precision"] == "bf16"


def test_snapshots_are_the_shorter_runs_and_do_not_change_the_run(sampler, tmp_path):
    """A snapshot after 4 steps (2 whole chunks) of a 64-image run is bit-identical to a 32-image run; taking it
    leaves the longer run's weights unchanged (the networks go back to train mode)."""
    base = {**TINY, "train_res_m": [30], "epochs": 1, "images": 64, "chunk_batches": 2}
    full = _train(sampler, tmp_path, "long", base, resume=False, snapshots={4: tmp_path / "at4.pt", 99: tmp_path / "x"})
    short = _train(sampler, tmp_path, "short", {**base, "images": 32}, resume=False)
    _train(sampler, tmp_path, "plain", base, resume=False)
    assert full["steps"] == 8 and short["steps"] == 4 and not (tmp_path / "x").exists()
    _same_weights(tmp_path / "at4.pt", tmp_path / "short.pt")
    _same_weights(tmp_path / "long.pt", tmp_path / "plain.pt")


def test_heldout_l1_is_the_mean_reconstruction_error_on_fixed_test_places(sampler, tmp_path):
    from topo2vec_lib.models.topo2vec import HELDOUT_STREAM, heldout_l1

    _train(sampler, tmp_path, "m", {**TINY, "epochs": 1, "images": 32}, resume=False)
    model = load_embedder(tmp_path / "m.pt")
    test = PatchSampler(make_terrain(relief(160, 9), center_lonlat=(7.6, 46.6), region="test"), threads=1)
    a, b = heldout_l1(model, test, 40, seed=2), heldout_l1(model, test, 40, seed=2, batch=7)
    assert a["test_pairs"] == 40 and set(a["test_l1_per_scale"]) == {"30", "45"}
    assert a["test_l1"] == pytest.approx(np.mean(list(a["test_l1_per_scale"].values())))
    assert a["test_l1_per_scale"]["30"] == pytest.approx(b["test_l1_per_scale"]["30"], rel=1e-6)  # batching
    lon, lat = test.random_places(40, np.random.default_rng([2, HELDOUT_STREAM]), [30.0, 45.0], k=1)
    x, y = test.fractal_pairs(lon, lat, 45.0, 1)                    # independent: the same places by hand
    assert a["test_l1_per_scale"]["45"] == pytest.approx(float(np.abs(model.reconstruct(x) - y).mean()), rel=1e-5)
    assert heldout_l1(model, test, 40, seed=3)["test_l1"] != a["test_l1"]
    with pytest.raises(ValueError, match="positive number"):
        heldout_l1(model, test, 0)
