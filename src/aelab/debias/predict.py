"""A classifier's predictions over a whole set of images: below the classifier's training (classifier.py) and the
synthesis that uses a trained one (synthesis.py), so that neither imports the other."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .device import device_of


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """argmax of the logits, in batches on the model's device; a CPU array."""
    model.eval()
    device = device_of(model)
    return torch.cat([model(xb.to(device)).argmax(1) for xb in images.split(batch_size)]).cpu().numpy()
