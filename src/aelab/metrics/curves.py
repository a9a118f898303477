"""A seed group's loss curves in one: at the epochs every seed has, the mean of each loss over the seeds (the
group's curve) and its lowest and highest value (the group's spread). A loss is summarised at an epoch only when
it is a finite number at every seed; each curve is a list of {"epoch", "train_loss", "val_loss", "test_loss"}.
"""

from __future__ import annotations

import math

LOSS_KEYS = ("train_loss", "val_loss", "test_loss")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    """The mean over seeds of each loss at the epochs every seed has: a group's curve."""
    if not curves or not all(curves):
        return []
    by_epoch = [{h["epoch"]: h for h in c} for c in curves]
    shared = sorted(set.intersection(*(set(b) for b in by_epoch)))
    out = []
    for epoch in shared:
        point = {"epoch": epoch}
        for key in LOSS_KEYS:
            values = [b[epoch].get(key) for b in by_epoch]
            if all(_finite(v) for v in values):
                point[key] = sum(values) / len(values)
        out.append(point)
    return out


def curve_band(curves: list[list[dict]]) -> dict[str, list[tuple[int, float, float]]]:
    """{key: [(epoch, lowest, highest) over the seeds]} at the epochs every seed has: a group's spread."""
    by_epoch = [{h["epoch"]: h for h in c} for c in curves]
    shared = sorted(set.intersection(*(set(b) for b in by_epoch))) if by_epoch else []
    out: dict[str, list[tuple[int, float, float]]] = {}
    for key in LOSS_KEYS:
        points = []
        for epoch in shared:
            values = [b[epoch].get(key) for b in by_epoch]
            if all(_finite(v) for v in values):
                points.append((epoch, min(values), max(values)))
        if points:
            out[key] = points
    return out
