"""Scaffolding every experiment shares."""

from __future__ import annotations

from pathlib import Path

from ..train import TrainConfig, train


def train_or_resume(cfg: TrainConfig, progress: bool = True, log=print) -> Path:
    """Train cfg into cfg.out, continuing from its checkpoint when an interrupted experiment left one."""
    resume = (Path(cfg.out) / "checkpoint.safetensors").exists()
    return train(cfg, resume=resume, progress=progress, log=log if progress else (lambda *a: None))
