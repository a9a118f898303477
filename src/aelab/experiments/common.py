"""Scaffolding every experiment shares."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path

from .. import data as datamod
from ..data.sources import VAL_MAX_IMAGES
from ..errors import DataError
from ..options import fraction, opt, positive_int
from ..train import TrainConfig, train


def seeds_field(default: int = 1):
    return field(
        default=default,
        metadata=opt(
            "run with seeds SEED .. SEED+N-1 (OUT/seed-<s>/ each) and report mean, std and 95% interval over them",
            parse=positive_int,
        ),
    )


def jobs_field():
    return field(default=1, metadata=opt("seeds run in this many processes at once", parse=positive_int))


def val_fraction_field(what: str):
    """--val-fraction: the share of the train images carved as the validation split; `what` it chooses."""
    return field(
        default=0.1,
        metadata=opt(
            f"validation share of the train images (stratified, seed 0; at most {VAL_MAX_IMAGES} images) "
            f"that chooses {what}",
            parse=fraction,
        ),
    )


def patience_field(default: int):
    return field(
        default=default,
        metadata=opt("stop after this many epochs without a better validation loss", parse=positive_int),
    )


def device_field():
    """--device: where every training inside the experiment runs (RBM pretraining included)."""
    return field(default="cpu", metadata=opt("cpu, cuda or cuda:N: every training inside the experiment runs there"))


def amp_field():
    return field(default=False, metadata=opt("bf16 autocast for every training inside the experiment (CUDA only)"))


def preflight(settings) -> None:
    """Refuse a bad --device and missing or wrong data with one line, before any training starts: the device
    is resolved and an IDX dataset's files are found (or fetched) and verified now."""
    from ..train import resolve_device

    resolve_device(getattr(settings, "device", "cpu"))
    datamod.datasets.check_data_dir(getattr(settings, "data_dir", None))  # an existing folder, before any training
    dataset = getattr(settings, "dataset", None)
    if isinstance(dataset, str) and not dataset.strip():  # '' would be the current folder
        raise DataError("--dataset needs a dataset name or a path, got an empty one")
    if isinstance(dataset, str) and dataset in datamod.IDX_DATASETS:
        datamod.fetch(dataset, getattr(settings, "data_dir", None), quiet=False)


def train_or_resume(cfg: TrainConfig, progress: bool = True, log=print) -> Path:
    """Train cfg into cfg.out, continuing from its checkpoint when an interrupted experiment left one."""
    resume = (Path(cfg.out) / "checkpoint.safetensors").exists()
    return train(cfg, resume=resume, progress=progress, log=log if progress else (lambda *a: None))


def kept_epoch(run_dir: str | Path) -> int:
    """The epoch whose weights a run kept: its best validation epoch under early stopping, else its last."""
    from ..runs import read_history

    history = read_history(run_dir)
    return int(max((h.get("best_epoch", 0) for h in history), default=0)) or int(history[-1]["epoch"])


def train_split_size(dataset, data_dir=None, train_limit: int | None = None, options: dict | None = None) -> int:
    """How many train images a run of this dataset sees before its validation split is carved."""
    n = len(datamod.get(dataset, options, data_dir).train_x)
    return min(n, train_limit) if train_limit else n


def splits_of(config: dict) -> dict:
    """The three splits of a run's config.json: sizes, and how the validation split was carved."""
    return {
        "train": config["n_train"],
        "validation": config["n_val"],
        "test": config["n_test"],
        "validation_split": (config.get("data_info") or {}).get("validation"),
        "note": "validation is carved from the dataset's train split and chooses; test is scored once",
    }


OFFICIAL_TEST = "mnist"  # the 10k official MNIST test set, scored when --data-dir holds its t10k files


def official_test_status(
    data_dir: str | None, input_shape: tuple[int, ...], dataset: str | None = None
) -> tuple[bool, str]:
    """(whether the official MNIST test set can be scored as a second test set, what the report says about it).
    Not for a run on `mnist` itself: its test split is that set already."""
    if dataset == OFFICIAL_TEST:
        return False, "The test split is the official MNIST test set (10,000 images)."
    if not data_dir:
        return False, "Official MNIST test set: not available (no --data-dir given); only the dataset's test split."
    try:
        x, _, where = datamod.load_test_split(OFFICIAL_TEST, data_dir)
    except DataError as e:
        return False, f"Official MNIST test set: not available ({e}); only the dataset's test split."
    if tuple(x.shape[1:]) != tuple(input_shape):
        return (
            False,
            f"Official MNIST test set: not applicable (images {tuple(x.shape[1:])}, models take {input_shape}).",
        )
    return True, f"Official MNIST test set: {len(x)} images from {where}, scored once per chosen run and seed."
