"""The training data of a run: its splits (the validation split carved first), and dynamic binarisation (a fresh
Bernoulli draw of the grey levels every epoch, from its own random stream)."""

from __future__ import annotations

import torch

from .. import data as datamod
from ..data.sources import default_val_fraction, validation_split
from .config import TrainConfig
from .schedules import epoch_seed


def load_data(
    cfg: TrainConfig, device: torch.device, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, dict]:
    """(train, validation or None, test) images of cfg.dataset on `device` (labels are not needed to train),
    and the data's info record (source, sizes, classes, split, content hash) for config.json."""
    data = datamod.get(cfg.dataset, cfg.dataset_options, cfg.data_dir, progress=progress)
    train_x, train_y = data.train_x, data.train_y
    if dynamic_binarization(cfg):  # the grey levels, redrawn each epoch (binarize_epoch); validation and test
        options = {k: v for k, v in cfg.dataset_options.items() if k != "binarize"}  # keep their fixed draws
        gray = datamod.load(cfg.dataset, "train", cfg.data_dir, **options)[0]
    else:
        gray = None
    if cfg.train_limit:
        train_x, train_y = train_x[: cfg.train_limit], train_y[: cfg.train_limit]
        gray = None if gray is None else gray[: cfg.train_limit]
    val_x = None
    info = dict(data.info)
    fraction = default_val_fraction(len(train_y)) if cfg.val_fraction is None else cfg.val_fraction
    info["val_fraction"] = fraction
    if fraction:
        keep, held, info["validation"] = validation_split(train_y.numpy(), fraction)
        train_x, val_x = train_x[torch.from_numpy(keep)], train_x[torch.from_numpy(held)].to(device)
        gray = None if gray is None else gray[torch.from_numpy(keep)]
    if gray is not None:
        train_x = gray
    return train_x.to(device), val_x, data.test_x.to(device), info


def dynamic_binarization(cfg: TrainConfig) -> bool:
    """Whether the run trains on a fresh Bernoulli draw of its train images each epoch (binarize=dynamic)."""
    return not isinstance(cfg.dataset, datamod.Data) and cfg.dataset_options.get("binarize") == "dynamic"


def binarize_epoch(gray: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """The train images of one epoch under dynamic binarisation: Bernoulli(grey level) per pixel, drawn on the
    CPU from (run seed, epoch) alone, so a resumed run replays the draw and a GPU run sees the same images."""
    return datamod.binarize(gray, epoch_seed(seed, epoch, 4))
