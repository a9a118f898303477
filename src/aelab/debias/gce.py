"""The Generalized Cross Entropy (Zhang & Sabuncu, NeurIPS 2018), the loss of LfF's biased model.

    GCE(p, y) = (1 - p_y^q) / q,   q in (0, 1],   p = softmax(logits)

q -> 0 gives the cross-entropy -log p_y; q = 1 gives the MAE-like 1 - p_y. Its gradient is
dGCE/dlogits = p_y^q (softmax(logits) - onehot(y)): p_y^q times the cross-entropy gradient, so it weights the
samples the model already fits (the easy, bias-aligned majority) and neglects the rest. Learning from Failure
(Nam, Cha, Ahn, Lee & Shin, NeurIPS 2020) trains its deliberately biased model with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gce_loss(logits: torch.Tensor, targets: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Per-sample Generalized Cross Entropy (1 - p_y^q) / q with p = softmax(logits) (Zhang & Sabuncu 2018).

    q -> 0 gives the cross-entropy -log p_y; q = 1 gives the MAE-like 1 - p_y. The gradient is
    dGCE/dlogits = p_y^q (softmax(logits) - onehot(y)), i.e. p_y^q times the CE gradient.
    """
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    log_p_y = F.log_softmax(logits, dim=1).gather(1, targets.long().reshape(-1, 1)).squeeze(1)
    return (1 - torch.exp(q * log_p_y)) / q
