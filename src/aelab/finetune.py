"""Supervised fine-tuning of a one-layer sigmoid encoder into an MLP classifier, and the linear probe beside it: the
protocol of Rifai et al. 2011's Table 1 (each unsupervised model initialises an MLP that is then trained with the
labels; its test classification error is the table's number).

    MLP      x (D pixels) -> h = sigmoid(W x + b) (H units; W, b copied from the encoder) -> logits = V h + c (K)
             V = 0 and c = 0 at the start: the hidden layer IS the encoder, and the first outputs are uniform
    loss     mean cross-entropy of softmax(logits) over a minibatch
    trained  every weight (`fine-tune`), or only V and c on the frozen encoder's codes (`probe`: a linear
             classifier, the same optimiser and stopping rule; the codes are computed once)
    steps    minibatch SGD with momentum (torch.optim.SGD), batches from a permutation drawn from (seed, epoch)
             alone, so a rerun gives the same weights
    stopping after each epoch the errors on the validation images are counted; the weights kept are those of the
             epoch with the fewest (the first among equals; epochs 1..E, the initial weights are not a candidate),
             and training stops `patience` epochs after that epoch or after `epochs`
    test     error_rate(net, test_x, test_y) on the kept weights, by the caller: fine-tuning never sees the test
             split

encoder_layer(model) reads (W, b) from an aelab model whose code is one sigmoid layer: the ae / cae / dae of
Rifai et al. (encoder = Linear, Sigmoid) and the rbm model (h = sigmoid(c + x W): W transposed).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

OPTIMIZERS = ("adam", "sgd")
STREAM = 5  # the permutation's random stream, apart from the trainer's (aelab.train.epoch_seed streams 0-4)


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 30  # at most this many passes over the train images
    patience: int = 5  # stop this many epochs after the best validation epoch
    optimizer: str = "adam"  # "adam" (torch.optim.Adam) or "sgd" (with momentum)
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    batch_size: int = 100
    frozen_encoder: bool = False  # True: the linear probe (only V and c trained)

    def validate(self) -> None:
        for name in ("epochs", "patience", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"fine-tuning {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"fine-tuning lr must be a finite positive number, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"fine-tuning optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise ValueError(f"fine-tuning momentum must be in [0, 1), got {self.momentum!r}")

    def record(self) -> dict:
        """The settings as results.json records them: momentum only where it is used (sgd)."""
        record = asdict(self)
        if self.optimizer != "sgd":
            del record["momentum"]
        return record


class MLP(nn.Module):
    """D -> H sigmoid -> K logits, the hidden layer from an encoder's (W, b), the output layer zero."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, n_classes: int):
        super().__init__()
        n_hidden, n_in = weight.shape
        if bias.shape != (n_hidden,):
            raise ValueError(f"the encoder's bias has shape {tuple(bias.shape)}, its weight {tuple(weight.shape)}")
        self.hidden = nn.Linear(n_in, n_hidden)
        self.out = nn.Linear(n_hidden, n_classes)
        with torch.no_grad():
            self.hidden.weight.copy_(weight)
            self.hidden.bias.copy_(bias)
            self.out.weight.zero_()
            self.out.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.hidden(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def encoder_layer(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (H, D), b (H,)) of a model whose code is sigmoid(W x + b), copied (detached) from its parameters."""
    rbm = getattr(model, "rbm", None)
    if rbm is not None:  # aelab.models.rbm_model: encode(x) = sigmoid(c + x W), W of shape (D, H)
        if getattr(rbm, "hidden", "bernoulli") != "bernoulli":
            raise ValueError("only an RBM with Bernoulli hidden units has a sigmoid code")
        return rbm.weight.detach().t().clone(), rbm.hidden_bias.detach().clone()
    layers = [m for m in getattr(model, "encoder", nn.Sequential()) if not isinstance(m, nn.Flatten)]
    if len(layers) != 2 or not isinstance(layers[0], nn.Linear) or not isinstance(layers[1], nn.Sigmoid):
        raise ValueError(f"{type(model).__name__}: the encoder is not one Linear + Sigmoid layer")
    return layers[0].weight.detach().clone(), layers[0].bias.detach().clone()


def mlp_from(model: nn.Module, n_classes: int) -> MLP:
    return MLP(*encoder_layer(model), n_classes)


@torch.no_grad()
def error_count(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> int:
    """How many of the images the net classifies wrongly (argmax of its logits against the label)."""
    was = net.training
    net.eval()
    try:
        return int(
            sum(int((net(xb).argmax(1) != yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
        )
    finally:
        net.train(was)


def error_rate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return error_count(net, x, y) / len(y)


def permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the train images in epoch `epoch` (from 1): a function of (seed, epoch) alone."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + STREAM) % (2**63))
    return torch.randperm(n, generator=g)


def finetune(
    net: MLP,
    train: tuple[torch.Tensor, torch.Tensor],
    validation: tuple[torch.Tensor, torch.Tensor],
    config: FinetuneConfig,
    seed: int,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train `net` in place by the rule in the module docstring and leave it holding the kept weights.

    Returns {"config", "seed", "history": [{"epoch", "train_loss", "val_errors", "val_error", "time_s"}],
    "best_epoch", "val_errors", "val_error", "epochs_run", "stopped_early", "n_train", "n_val"}."""
    config.validate()
    train_x, train_y = train
    val_x, val_y = validation
    if config.frozen_encoder:  # the probe: the codes once, then a linear softmax classifier on them
        with torch.no_grad():
            train_in = torch.cat([net.features(xb) for xb in train_x.split(1000)])
            val_in = torch.cat([net.features(xb) for xb in val_x.split(1000)])
        trained: nn.Module = net.out
    else:
        train_in, val_in, trained = train_x, val_x, net
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(trained.parameters(), lr=config.lr, momentum=config.momentum)
    else:
        opt = torch.optim.Adam(trained.parameters(), lr=config.lr)
    history, best_state, best_epoch, best_errors = [], None, 0, None
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        trained.train()
        total, seen = 0.0, 0
        for idx in permutation(len(train_y), seed, epoch).split(config.batch_size):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(trained(train_in[idx]), train_y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        errors = error_count(trained, val_in, val_y)
        record = {
            "epoch": epoch,
            "train_loss": total / seen,
            "val_errors": errors,
            "val_error": errors / len(val_y),
            "time_s": time.perf_counter() - started,
        }
        history.append(record)
        if best_errors is None or errors < best_errors:
            best_errors, best_epoch, best_state = errors, epoch, copy.deepcopy(net.state_dict())
        if on_epoch is not None:
            on_epoch({**record, "best_epoch": best_epoch})
        if epoch - best_epoch >= config.patience:
            break
    net.load_state_dict(best_state)
    net.eval()
    return {
        "config": config.record(),
        "seed": seed,
        "history": history,
        "best_epoch": best_epoch,
        "val_errors": best_errors,
        "val_error": best_errors / len(val_y),
        "epochs_run": len(history),
        "stopped_early": len(history) < config.epochs,
        "n_train": len(train_y),
        "n_val": len(val_y),
    }
