"""Sampling weights that balance groups of samples within every class.

Detect-then-reweight (label-free): a detector's scores (aelab.debias.scores, e.g. the kNN distance in the
GCE-biased models' log-probabilities) flag the top fraction rho of each class as likely bias-conflicting; then
within every class c flagged and unflagged samples get equal total weight,

    w_i = n_c / (2 n_flagged,c)  or  n_c / (2 n_unflagged,c),   normalised to sum 1,

so flagged samples are drawn (1 - rho) / rho times as often as the others, and classes keep their share n_c / N
(the upweighting of JTT, Liu et al. ICML 2021, with a detector's flags in place of the error set).

Group-balanced reweighting (ORACLE, needs the bias labels): w_i = 1 / #{j : (y_j, b_j) = (y_i, b_i)}, every
(class, bias) group present gets the same total weight (as in group DRO's reweighting baseline, Sagawa, Koh,
Hashimoto & Liang, ICLR 2020).
"""

from __future__ import annotations

import numpy as np
import torch


def top_fraction_flags(scores: np.ndarray, digits: np.ndarray, rho: float) -> np.ndarray:
    """True for the ceil(rho n_c) highest scores of every digit class c (stable order on ties)."""
    scores, digits = np.asarray(scores), np.asarray(digits)
    flags = np.zeros(len(scores), dtype=bool)
    for c in np.unique(digits):
        idx = np.flatnonzero(digits == c)
        k = max(1, int(np.ceil(round(rho * len(idx), 9))))  # round: 0.07 * 100 = 7.000000000000001
        flags[idx[np.argsort(-scores[idx], kind="stable")[:k]]] = True
    return flags


def balanced_flag_weights(flags: np.ndarray, digits: np.ndarray) -> torch.Tensor:
    """Within every class, flagged and unflagged samples get equal total weight (1 / (2 n_flagged) and
    1 / (2 n_unflagged)), and classes keep their share n_c / N."""
    flags, digits = np.asarray(flags, dtype=bool), np.asarray(digits)
    w = np.zeros(len(flags))
    for c in np.unique(digits):
        m = digits == c
        for part in (m & flags, m & ~flags):
            if part.any():
                w[part] = m.sum() / (2 * part.sum() if (m & flags).any() and (m & ~flags).any() else part.sum())
    return torch.from_numpy(w / w.sum())


def group_balanced_weights(digits: torch.Tensor, colour_labels: torch.Tensor) -> torch.Tensor:
    """ORACLE. w(i) = 1 / #{j : (y_j, colour_j) = (y_i, colour_i)}: every (digit, colour) group present in the
    training set gets the same total weight."""
    key = digits.long() * 1000 + colour_labels.long()
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse].double()
    return w / w.sum()
