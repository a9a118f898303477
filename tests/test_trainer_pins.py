"""Pins of the trainer and evaluate: fresh order and noise each epoch (replayed by a resume), best_epoch across a
resume, training mode after every evaluation, per-dimension KL averaged over all test images."""

import json

import pytest
import torch
import torch.nn as nn

from aelab import models
from aelab.models.vae import kl_per_dim
from aelab.train import TrainConfig, evaluate_loss, train, train_one_epoch

pytestmark = pytest.mark.usefixtures("one_thread")


class _Recorder(nn.Module):
    """Records the images of every step and the noise it draws (as a DAE would)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen, self.noise = [], []

    def forward(self, x):
        self.seen.append(x.flatten().clone())
        self.noise.append(torch.rand(1).item())
        return ((x.flatten(1).sum(1) * self.w) ** 2).mean()


def _epoch(model, x, epoch: int, seed: int = 0):
    cfg = TrainConfig(batch_size=4, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_one_epoch(model, opt, x, cfg, epoch, 0, 1, torch.autocast("cpu", enabled=False))
    order, noise = torch.cat(model.seen), list(model.noise)
    model.seen.clear(), model.noise.clear()
    return order, noise


def test_every_epoch_draws_a_new_order_and_noise_and_the_same_epoch_replays_them():
    x = torch.arange(12.0).reshape(12, 1, 1, 1)
    m = _Recorder()
    o0, n0 = _epoch(m, x, 0)
    o1, n1 = _epoch(m, x, 1)
    assert sorted(o0.tolist()) == sorted(o1.tolist()) == list(range(12))  # each epoch sees every image once
    assert not torch.equal(o0, o1) and n0 != n1
    o0_again, n0_again = _epoch(m, x, 0)  # what a resume at epoch 0 does: the same order and noise
    assert torch.equal(o0, o0_again) and n0 == n0_again


def test_the_model_is_back_in_training_mode_after_an_evaluation():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.BatchNorm1d(4))

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def loss_terms(self, x):
            return {"loss": self.net(x).pow(2).mean()}

    wrapped = Wrapped().train()
    before = model[2].running_mean.clone()
    evaluate_loss(wrapped, torch.randn(8, 1, 2, 2), batch_size=4, seed=0)
    assert wrapped.training and model[2].training
    assert torch.equal(model[2].running_mean, before)  # evaluated in eval mode: the statistics did not move


def test_kl_per_dimension_averages_over_every_test_image():
    vae = models.create("vae", input_shape=[1, 4, 4], hidden=[8], latent=3)
    x = torch.rand(2500, 1, 4, 4)  # 3 batches of 1000, the last one 500
    with torch.no_grad():
        expected = kl_per_dim(*vae.posterior(x)).double().mean(0)
        got = vae.kl_per_dimension(x, batch_size=1000)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("lr", [1e-3, 1e-12])  # 1e-12: the weights never move, so epoch 1 stays the best
def test_best_epoch_survives_a_resume(tmp_path, lr):
    common = dict(model="ae", dataset="digits", train_limit=200, val_fraction=0.2, early_stopping=50, lr=lr)
    common["tensorboard"] = False
    common["model_options"] = {"hidden": [8], "latent": 2}
    whole = train(TrainConfig(**common, epochs=4, out=str(tmp_path / "whole")), progress=False)
    part = train(TrainConfig(**common, epochs=2, out=str(tmp_path / "part")), progress=False)
    train(TrainConfig(**common, epochs=4, out=str(part)), resume=True, progress=False)
    best = lambda run: [h.get("best_epoch") for h in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert best(whole) == best(part) and best(whole)[-1] >= 1
    if lr == 1e-12:
        assert best(whole) == [1, 1, 1, 1]
    from aelab.runs import read_safetensors

    a, _ = read_safetensors(whole / "model.safetensors")
    b, _ = read_safetensors(part / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
