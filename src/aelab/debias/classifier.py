"""The digit classifier every debiasing method trains: LfF's ColoredMNIST MLP (3 x 100 ReLU) and its training
by cross-entropy with Adam, under uniform order, weighted resampling or synthesis-augmented batches.

    loss = mean_{i in batch} CE(f(x_i), y_i),   CE(z, y) = -log softmax(z)_y

Weighted resampling (the mechanism behind JTT, detect-then-reweight and group reweighting): every epoch draws N
indices with replacement, P(i) = w_i / sum_j w_j, so the expected loss is sum_i w_i CE_i / sum_j w_j. The model
is that of Learning from Failure (Nam, Cha, Ahn, Lee & Shin, NeurIPS 2020) for ColoredMNIST.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .device import autocast, device_of
from .predict import predict

if TYPE_CHECKING:
    from .synthesis import Synthesizer


class MLPClassifier(nn.Module):
    """LfF's ColoredMNIST classifier: flatten -> [Linear(·, 100) ReLU] x 3 -> Linear(100, n_classes)."""

    def __init__(self, n_inputs: int, n_classes: int = 10, hidden: Sequence[int] = (100, 100, 100)):
        super().__init__()
        from ..models.ae import mlp

        self.net = mlp([n_inputs, *hidden, n_classes], "relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def new_classifier(n_inputs: int, n_classes: int, seed: int) -> MLPClassifier:
    """LfF's ColoredMNIST MLP (3 x 100 ReLU), initialised from `seed` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLPClassifier(n_inputs, n_classes)


def accuracy(model: nn.Module, images: torch.Tensor, digits: torch.Tensor) -> float:
    return float((predict(model, images) == digits.cpu().numpy()).mean())


@torch.no_grad()
def log_probabilities(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """log softmax(model(x)) as a float64 array (N, n_classes)."""
    model.eval()
    device = device_of(model)
    out = [F.log_softmax(model(xb.to(device)), dim=1) for xb in images.split(batch_size)]
    return torch.cat(out).double().cpu().numpy()


def train_classifier(
    images: torch.Tensor,
    digits: torch.Tensor,
    epochs: int,
    seed: int,
    weights: torch.Tensor | None = None,
    synthesizer: Synthesizer | None = None,
    synth_fraction: float = 0.0,
    lr: float = 1e-3,
    batch_size: int = 128,
    snapshot_epochs: Sequence[int] = (),
    n_classes: int = 10,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> tuple[MLPClassifier, dict[int, np.ndarray]]:
    """Cross-entropy training of the 3 x 100 MLP with Adam.

    weights: each epoch draws N indices with replacement, P(i) proportional to weights[i] (weighted resampling);
             None = a random permutation.
    synthesizer / synth_fraction p: in every batch the first round(p B) samples are replaced by synthesised
             bias-swapped versions of themselves (same digit label).
    snapshot_epochs: returns also the training-set predictions after those epochs (JTT's identification).
    device / amp: where the model trains, and bf16 autocast there (CUDA only); the order is drawn on CPU.
    Returns (model, {epoch: predictions})."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    model = new_classifier(images[0].numel(), n_classes, seed).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x_all, y_all = images.to(device), digits.to(device)
    snaps = {}
    for epoch in range(1, epochs + 1):
        model.train()
        if weights is None:
            order = torch.randperm(len(images), generator=gen)
        else:
            order = torch.multinomial(weights.double(), len(images), replacement=True, generator=gen)
        for idx in order.split(batch_size):
            x, y = x_all[idx.to(device)], y_all[idx.to(device)]
            k = int(round(synth_fraction * len(idx))) if synthesizer is not None else 0
            if k:
                x = torch.cat([synthesizer.sample(idx[:k], gen).to(device), x[k:]])
            with autocast(device, amp):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch in snapshot_epochs:
            snaps[epoch] = predict(model, images)
    model.eval()
    return model, snaps
