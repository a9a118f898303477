"""Pins of the RBM stack and the deep AE: each layer's learning rate, the weight cost's terms, the global
pretraining batch under torchrun."""

import pytest
import torch

from aelab import models
from aelab.models import deep_ae
from aelab.models.rbm import RBM, pretrain_stack

pytestmark = pytest.mark.usefixtures("one_thread")


def _record_fits(monkeypatch) -> list[dict]:
    calls = []
    real_fit = RBM.fit

    def fit(self, data, **kw):
        calls.append({"hidden": self.hidden, **{k: kw.get(k) for k in ("lr", "batch_size")}})
        return real_fit(self, data, **kw)

    monkeypatch.setattr(RBM, "fit", fit)
    return calls


def test_the_gaussian_top_layer_keeps_its_own_rate_when_only_lr_is_given(monkeypatch):
    calls = _record_fits(monkeypatch)
    x = torch.rand(40, 12)
    pretrain_stack(x, sizes=[12, 8, 6, 3], epochs=1, lr=0.05)
    assert [(c["hidden"], c["lr"]) for c in calls] == [("bernoulli", 0.05), ("bernoulli", 0.05), ("gaussian", 0.001)]
    calls.clear()
    pretrain_stack(x, sizes=[12, 8, 3], epochs=1, top_lr=0.002)
    assert [c["lr"] for c in calls] == [0.1, 0.002]


def test_the_weight_cost_counts_encoder_and_decoder_weights_not_biases():
    model = models.create("deep-ae", input_shape=[1, 4, 4], layers=[16, 8, 3], weight_decay=0.01)
    independent = sum(p.pow(2).sum() for name, p in model.named_parameters() if "weights" in name)
    assert len([n for n, _ in model.named_parameters() if "weights" in n]) == 4  # 2 encoder + 2 decoder
    assert torch.allclose(model.weight_penalty(), independent)
    x = torch.rand(5, 1, 4, 4)
    terms = model.loss_terms(x)
    assert torch.allclose(terms["loss"], terms["recon"] + 0.01 * independent)


def test_the_global_pretraining_batch_is_hintons_100_under_torchrun(monkeypatch):
    """With `allreduce` and world ranks, each rank fits batches of 100 / world images."""
    calls = _record_fits(monkeypatch)
    model = models.create("deep-ae", input_shape=[1, 4, 4], layers=[16, 8, 3], init="rbm", pretrain_epochs=1)
    for world in (1, 2, 4):
        calls.clear()
        model.pretrain(torch.rand(40, 1, 4, 4), seed=0, allreduce=lambda grads: None, world=world)
        assert {c["batch_size"] for c in calls} == {deep_ae.PRETRAIN_BATCH // world}
    assert deep_ae.PRETRAIN_BATCH == 100
