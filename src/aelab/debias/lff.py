"""Learning from Failure (Nam, Cha, Ahn, Lee & Shin, NeurIPS 2020, Algorithm 1).

A biased model f_B trained with the Generalized Cross Entropy GCE(p, y) = (1 - p_y^q) / q (aelab.debias.gce)
and a debiased model f_D are trained together. With per-sample exponential moving averages of the
cross-entropies

    L_B(i) <- a L_B(i) + (1 - a) CE(f_B(x_i), y_i)     (first visit: L_B(i) = CE)

and the same for L_D, each divided by its class maximum (LfF's reference code), the relative difficulty

    W(i) = L_B(i) / (L_B(i) + L_D(i))

weights the debiased model's loss:  loss = mean_i GCE(f_B(x_i), y_i) + mean_i W(i) CE(f_D(x_i), y_i).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .classifier import MLPClassifier, new_classifier
from .device import autocast
from .gce import gce_loss


def ema_update(ema: torch.Tensor, seen: torch.Tensor, idx: torch.Tensor, loss: torch.Tensor, alpha: float) -> None:
    """LfF's per-sample moving average, in place: ema[i] <- alpha ema[i] + (1 - alpha) loss_i, and ema[i] <- loss_i
    on a sample's first visit (`seen` marks visited samples)."""
    a = alpha * seen[idx].to(ema.dtype)
    ema[idx] = a * ema[idx] + (1 - a) * loss
    seen[idx] = True


def lff_weights(
    ema_b: torch.Tensor, ema_d: torch.Tensor, idx: torch.Tensor, digits: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """Relative difficulty W(i) = L_B(i) / (L_B(i) + L_D(i) + 1e-8) for the samples idx, with each moving-average
    loss divided by its maximum over the (whole training set's) samples of the same class y_i."""
    max_b = torch.stack(
        [ema_b[digits == c].max() if (digits == c).any() else ema_b.new_tensor(1.0) for c in range(n_classes)]
    )
    max_d = torch.stack(
        [ema_d[digits == c].max() if (digits == c).any() else ema_d.new_tensor(1.0) for c in range(n_classes)]
    )
    y = digits[idx]
    lb = ema_b[idx] / max_b[y].clamp_min(1e-8)
    ld = ema_d[idx] / max_d[y].clamp_min(1e-8)
    return lb / (lb + ld + 1e-8)


def train_lff(
    images: torch.Tensor,
    digits: torch.Tensor,
    epochs: int,
    seed: int,
    q: float = 0.7,
    ema_alpha: float = 0.7,
    lr: float = 1e-3,
    batch_size: int = 128,
    n_classes: int = 10,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> tuple[MLPClassifier, MLPClassifier]:
    """LfF (Nam et al. 2020, Algorithm 1): biased model on GCE, debiased model on W-weighted CE, trained together.
    The order is drawn on CPU; models, data and moving averages live on `device`.
    Returns (debiased model, biased model)."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    model_b = new_classifier(images[0].numel(), n_classes, seed + 1).to(device)
    model_d = new_classifier(images[0].numel(), n_classes, seed).to(device)
    opt = torch.optim.Adam([*model_b.parameters(), *model_d.parameters()], lr=lr)
    x_all, y_all = images.to(device), digits.to(device)
    n = len(images)
    ema_b, ema_d = torch.zeros(n, device=device), torch.zeros(n, device=device)
    seen_b = torch.zeros(n, dtype=torch.bool, device=device)
    seen_d = torch.zeros(n, dtype=torch.bool, device=device)
    for _ in range(epochs):
        model_b.train()
        model_d.train()
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            idx = idx.to(device)
            x, y = x_all[idx], y_all[idx]
            with autocast(device, amp):
                logits_b, logits_d = model_b(x), model_d(x)
                ce_b = F.cross_entropy(logits_b, y, reduction="none")
                ce_d = F.cross_entropy(logits_d, y, reduction="none")
            ema_update(ema_b, seen_b, idx, ce_b.detach().float(), ema_alpha)
            ema_update(ema_d, seen_d, idx, ce_d.detach().float(), ema_alpha)
            w = lff_weights(ema_b, ema_d, idx, y_all, n_classes)
            with autocast(device, amp):
                loss = gce_loss(logits_b, y, q).mean() + (w * ce_d).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model_b.eval()
    model_d.eval()
    return model_d, model_b
