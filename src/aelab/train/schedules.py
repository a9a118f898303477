"""What changes with the epoch: the per-(seed, epoch, stream) random seeds, Burda et al.'s learning-rate stages,
and the early-stopping rule."""

from __future__ import annotations

from .config import TrainConfig


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """Independent seeds per (run seed, epoch, stream) so an epoch replays identically after a resume."""
    return (seed * 1_000_003 + epoch * 7919 + stream) % (2**63)


def history_stopped(history: list[dict], patience: int) -> bool:
    """Early stopping's rule: `patience` epochs have passed since the lowest validation loss."""
    epochs = [h for h in history if "val_loss" in h]
    if not epochs:
        return False
    best = min(epochs, key=lambda h: h["val_loss"])
    return epochs[-1]["epoch"] - best["epoch"] >= patience


def burda_stage(epoch: int) -> int:
    """The stage i of epoch `epoch` (counted from 0) in Burda et al.'s schedule: stage i lasts 3^i epochs, so
    stages end after 1, 4, 13, 40, 121, 364, 1093, 3280 epochs."""
    stage, end = 0, 1
    while epoch >= end:
        stage += 1
        end += 3**stage
    return stage


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of epoch `epoch` (from 0): a function of the epoch alone, so a resume replays it."""
    if cfg.lr_schedule == "burda":
        return cfg.lr * 10 ** (-burda_stage(epoch) / 7)
    return cfg.lr
