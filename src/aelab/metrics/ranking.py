"""Ranking metrics for a detector that scores samples (higher = more likely positive), from scikit-learn.

    AUROC        P(score of a random positive > score of a random negative), ties count 1/2
    AP           sum over distinct thresholds t (descending) of (R(t) - R(t_prev)) P(t), where P and R are the
                 precision and recall of {score >= t}; tied scores form one threshold
    P@k, R@k     precision and recall of the k highest scores (ties at the cut broken by sample order)
`class_metrics` grades a score within each class (ColoredMNIST: positives = bias-conflicting digits);
`mean_curves` gives the ROC and precision-recall curves of such a grading, averaged over the classes.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve


def _check_binary_task(scores, positive) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    if len(scores) != len(positive):
        raise ValueError(f"{len(scores)} scores but {len(positive)} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    return scores, positive


def auroc(scores, positive) -> float:
    """Area under the ROC curve (sklearn.metrics.roc_auc_score); NaN if a class is missing."""
    scores, positive = _check_binary_task(scores, positive)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, scores))


def average_precision(scores, positive) -> float:
    """Average precision (sklearn.metrics.average_precision_score); NaN without positives."""
    scores, positive = _check_binary_task(scores, positive)
    if not positive.any():
        return float("nan")
    return float(average_precision_score(positive, scores))


def precision_recall_at_k(scores, positive, k: int) -> tuple[float, float]:
    """Precision and recall of the k highest scores (ties at the cut broken by sample order: a stable sort).
    With k = the number of positives, precision = recall."""
    scores, positive = _check_binary_task(scores, positive)
    if not 1 <= k <= len(scores):
        raise ValueError(f"k must be in 1..{len(scores)}, got {k}")
    top = np.argsort(-scores, kind="stable")[:k]
    hits = int(positive[top].sum())
    n_pos = int(positive.sum())
    return hits / k, (hits / n_pos if n_pos else float("nan"))


def class_metrics(scores, classes, positive) -> dict:
    """Grade a score within each class: AUROC, AP, precision and recall at k = number of positives of the class.
    Returns {"per_class": [{"class", "n", "n_conflicting", "auroc", ...}], "mean": {metric: mean over classes}}."""
    scores = np.asarray(scores, dtype=np.float64)
    classes = np.asarray(classes).reshape(-1)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    rows = []
    for c in np.unique(classes):
        m = classes == c
        n_pos = int(positive[m].sum())
        row = {
            "class": int(c),
            "n": int(m.sum()),
            "n_conflicting": n_pos,
            "auroc": auroc(scores[m], positive[m]),
            "average_precision": average_precision(scores[m], positive[m]),
        }
        if n_pos:
            row["precision_at_k"], row["recall_at_k"] = precision_recall_at_k(scores[m], positive[m], n_pos)
        else:
            row["precision_at_k"] = row["recall_at_k"] = float("nan")
        rows.append(row)
    keys = ["auroc", "average_precision", "precision_at_k", "recall_at_k"]
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    return {"per_class": rows, "mean": mean}


def mean_curves(scores, classes, positive, points: int = 201) -> dict:
    """ROC and precision-recall curves of a score graded within each class (as `class_metrics`), averaged over
    the classes that have both positives and negatives, vertically on a common grid of `points` values:
        tpr(fpr)        linear between the corners of sklearn's roc_curve (tied scores: the diagonal step,
                        so the area is the tie-averaged AUROC)
        precision(r)    the precision of the highest threshold that reaches recall r (the step function whose
                        area is sklearn's average precision)
    Returns {"fpr", "tpr", "recall", "precision"} as float64 arrays and "classes", the number averaged."""
    scores = np.asarray(scores, dtype=np.float64)
    classes = np.asarray(classes).reshape(-1)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    grid = np.linspace(0.0, 1.0, points)
    tprs, precisions = [], []
    for c in np.unique(classes):
        m = classes == c
        s, p = _check_binary_task(scores[m], positive[m])
        if p.all() or not p.any():
            continue
        fpr, tpr, _ = roc_curve(p, s)
        tprs.append(np.interp(grid, fpr, tpr))
        precision, recall, _ = precision_recall_curve(p, s)
        precision, recall = precision[::-1], recall[::-1]  # recall ascending, thresholds descending
        precisions.append(precision[np.searchsorted(recall, grid, side="left")])
    if not tprs:
        raise ValueError("no class has both positive and negative samples")
    return {
        "fpr": grid,
        "tpr": np.mean(tprs, axis=0),
        "recall": grid,
        "precision": np.mean(precisions, axis=0),
        "classes": len(tprs),
    }
