"""Group metrics of a classifier on a bias-annotated test set (the grading protocol of Learning from Failure,
Nam, Cha, Ahn, Lee & Shin, NeurIPS 2020, and the worst-group accuracy of group DRO, Sagawa et al. ICLR 2020).

With predictions p_i, labels y_i and bias (colour) labels b_i, a sample is bias-aligned when b_i = y_i:

    unbiased     = mean_i 1[p_i = y_i]                  (a test set with b independent of y)
    aligned      = mean_{i : b_i = y_i} 1[p_i = y_i]
    conflicting  = mean_{i : b_i != y_i} 1[p_i = y_i]
    worst_group  = min_{(y, b) non-empty} mean_{i in group} 1[p_i = y_i]

Bias labels enter the grading only.
"""

from __future__ import annotations

import numpy as np


def group_metrics(pred, digits, colours) -> dict[str, float]:
    """Accuracies of predictions `pred` on a coloured test set.

    unbiased      accuracy over all samples (the LfF protocol: colour independent of digit)
    aligned       accuracy on the samples with colour == digit
    conflicting   accuracy on the samples with colour != digit
    worst_group   min over the non-empty (digit, colour) groups g of acc_g = #correct in g / #g
    Colour labels enter the grading only."""
    from sklearn.metrics import accuracy_score

    pred, digits, colours = (np.asarray(a).reshape(-1) for a in (pred, digits, colours))
    aligned = colours == digits
    group_acc = {}
    for d in np.unique(digits):
        for c in np.unique(colours[digits == d]):
            m = (digits == d) & (colours == c)
            group_acc[(int(d), int(c))] = float((pred[m] == digits[m]).mean())
    nan = float("nan")
    return {
        "unbiased": float(accuracy_score(digits, pred)),
        "aligned": float(accuracy_score(digits[aligned], pred[aligned])) if aligned.any() else nan,
        "conflicting": float(accuracy_score(digits[~aligned], pred[~aligned])) if (~aligned).any() else nan,
        "worst_group": min(group_acc.values()),
        "n_groups": len(group_acc),
    }
