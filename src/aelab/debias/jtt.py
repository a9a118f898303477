"""Just Train Twice (Liu, Haghgoo, Chen, Raghunathan, Koh, Sagawa, Liang & Finn, ICML 2021).

Stage 1: ERM for T epochs; the error set E = {i : argmax f(x_i) != y_i} on the training set.
Stage 2: a fresh model trained with the samples of E drawn lambda_up times as often:

    w_i = 1 + (lambda_up - 1) 1[i in E]     (weighted resampling, aelab.debias.classifier.train_classifier)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .classifier import train_classifier


def identification_predictions(
    images: torch.Tensor, digits: torch.Tensor, epochs: Sequence[int], seed: int, **train_options
) -> dict[int, np.ndarray]:
    """Stage 1 for several T at once: one ERM run for max(epochs) epochs, its training-set predictions after each
    T of `epochs`."""
    ts = sorted(set(epochs))
    _, snaps = train_classifier(images, digits, max(ts), seed, snapshot_epochs=ts, **train_options)
    return snaps


def upweights(predictions: np.ndarray, digits: torch.Tensor, lambda_up: float) -> tuple[torch.Tensor, int]:
    """Stage 2's sampling weights w_i = 1 + (lambda_up - 1) 1[prediction_i != y_i], and |E|."""
    errors = torch.from_numpy(predictions != digits.cpu().numpy()).double()
    return 1 + (lambda_up - 1) * errors, int(errors.sum())
