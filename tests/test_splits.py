"""The protocol's validation split at its boundary counts, and one split for the trainer and the experiments."""

import numpy as np
import pytest

from aelab.data.sources import (
    MIN_TRAIN_FOR_VALIDATION,
    VAL_MAX_IMAGES,
    capped_val_fraction,
    default_val_fraction,
    validation_split,
)


def labels_of(n: int, classes: int = 10) -> np.ndarray:
    return np.arange(n) % classes


@pytest.mark.parametrize("n", [5000, 5001, 5999, 6000, 7777, 54000, 59999, 60000])
def test_the_500_cap_gives_exactly_500_images(n):
    keep, held, _ = validation_split(labels_of(n), capped_val_fraction(n))
    assert len(held) == VAL_MAX_IMAGES and len(keep) == n - VAL_MAX_IMAGES


@pytest.mark.parametrize("n, expected", [(20, 2), (100, 10), (1234, 123), (4000, 400), (4999, 500)])
def test_ten_percent_below_the_cap(n, expected):
    _, held, _ = validation_split(labels_of(n), default_val_fraction(n))
    assert len(held) == expected  # round(0.1 n), capped at 500


def test_no_default_validation_split_below_the_minimum():
    assert default_val_fraction(MIN_TRAIN_FOR_VALIDATION - 1) == 0.0
    assert default_val_fraction(MIN_TRAIN_FOR_VALIDATION) == pytest.approx(0.1)


def test_stratified_when_every_class_has_two_images():
    labels = labels_of(1000)
    keep, held, how = validation_split(labels, 0.1)
    assert "stratified" in how
    assert np.bincount(labels[held]).tolist() == [10] * 10  # exactly 10% of every class
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(1000))  # a partition


def test_a_class_with_one_image_falls_back_to_a_random_split():
    labels = np.concatenate([labels_of(99, 9), [9]])  # class 9 has one image
    keep, held, how = validation_split(labels, 0.1)
    assert "random hold-out" in how and "fewer than 2 images" in how
    assert len(held) == 10 and len(set(keep) | set(held)) == 100


def test_the_trainer_and_the_experiments_carve_the_same_split(tmp_path):
    """train.py carves validation_split(train labels, val_fraction); runs.validation_indices re-derives it from
    config.json for evaluate and the experiments' selection: the images the trainer held out are those."""
    import torch

    from aelab import runs
    from aelab.data import load
    from aelab.train import TrainConfig, load_data

    cfg = TrainConfig(model="ae", dataset="digits", train_limit=300, val_fraction=0.2, out=str(tmp_path / "r"))
    train_x, val_x, _, info = load_data(cfg, torch.device("cpu"))
    x, y = load("digits", "train")
    x, y = x[:300], y[:300]
    kept, held = runs.validation_indices({"val_fraction": 0.2}, y.numpy())
    assert torch.equal(val_x, x[torch.from_numpy(held)]) and torch.equal(train_x, x[torch.from_numpy(kept)])
    assert len(held) == 60
