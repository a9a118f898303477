"""Intervals over seeds: how far a mean over n independent runs can be trusted.

For values x_1..x_n (one per seed) with mean m and sample standard deviation s (ddof = 1):

    Student t            m ± t_{(1+c)/2, n-1} · s / √n   (c = 0.95: the 97.5% quantile of Student's t with
                         n-1 degrees of freedom). Exact when the x_i are normal; with the handful of seeds a
                         run can afford, the t quantile (2.78 for n = 5) rather than the normal 1.96 is what
                         keeps the coverage at 95%.
    percentile bootstrap for a bounded metric (an accuracy in [0, 1]) with n >= 10: resample the n values with
                         replacement B = 10,000 times (a fixed seed), take the mean of each resample, and report
                         the (1-c)/2 and (1+c)/2 percentiles of those means. It stays inside the bounds and does
                         not assume normality, which a proportion near 0 or 1 is far from; below 10 values the
                         resamples take too few distinct values for their percentiles to mean much, so the t
                         interval is used, clipped to the bounds (the true mean lies inside them, so clipping
                         never lowers the coverage).
    one value            no interval: one seed says nothing about the spread over seeds.

A paired difference (method A vs B, trained with the same seeds) is the same summary of d_i = a_i - b_i: the
seed-to-seed variation both share cancels, so its interval is narrower than comparing two separate intervals.

What a quantity can be (metric_range): accuracies and fractions lie in [0, 1]; counts (active units, bits,
epochs), times and squared errors are never negative, so their t interval is clipped at 0 (n = 2 seeds give
t_{0.975, 1} = 12.7, which puts the lower end of a count's interval far below zero otherwise).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import scipy.stats

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_MIN_N = 10  # bounded metrics with at least this many values get the bootstrap interval
SINGLE_SEED = "single seed: no interval"
# metrics in [0, 1] by construction whose names say nothing of it
UNIT_INTERVAL_METRICS = ("saturation", "code_saturation", "bit_balance", "bit_entropy_mean")
_BOUNDED_PREFIXES = ("acc", "auroc", "auprc", "precision", "recall", "fraction", "saturation")
_BOUNDED_WORDS = ("ap", "map", "auc")


# metrics of the data alone (the same for every run on them): shown once, never with an interval over seeds
BASELINE_METRICS = ("pca_sse", "raw_probe_accuracy", "raw_probe_C")


def metric_bounds(name: str) -> tuple[float, float] | None:
    """(0, 1) for a metric in the unit interval, whatever its spelling: accuracies (`probe_accuracy`, `probe
    accuracy`, `acc`), AUROC, AP and mAP, precision and recall (`precision@10`, `p@10`), fractions and
    saturations; None for errors, losses, ratios, sizes and times, and for anything in percent (`accuracy (%)`
    lies in [0, 100]). The words of a name are split at anything but letters, digits and '@' (so
    `probe_accuracy` is `probe`, `accuracy`)."""
    lowered = name.lower()
    if lowered in UNIT_INTERVAL_METRICS:
        return (0.0, 1.0)
    if "%" in lowered or "percent" in lowered:
        return None
    words = [w for w in re.split(r"[^a-z0-9@]+", lowered) if w]
    bounded = any(
        w.startswith(_BOUNDED_PREFIXES) or w in _BOUNDED_WORDS or re.fullmatch(r"(p|ap|map|precision|recall)@\d+", w)
        for w in words
    )
    return (0.0, 1.0) if bounded else None


# counts, times, squared errors, norms and KL divergences: never below 0 (their words, as metric_bounds splits a name)
_NONNEGATIVE_WORDS = ("units", "count", "counts", "epoch", "epochs", "distinct", "bits", "time", "seconds", "s",
                      "sse", "mse", "size", "dim", "n", "steps", "kl", "fro", "sq", "sv", "norm")  # fmt: skip
_NONNEGATIVE_NAMES = ("active_units", "code_dim", "bits_per_image", "recon_sse", "recon_mse", "pca_sse")


def nonnegative_metric(name: str) -> bool:
    """Whether a metric can never be negative although it has no upper bound: counts (`active_units`, `distinct
    train codes`, `epoch kept`), times (`time (s)`, `wall_time_s`), squared errors (`recon_sse`, `pca_sse`), norms
    and singular values (`jacobian_fro_mean`, `jacobian_sv_top`) and KL divergences (`test_kl`). Losses, ELBOs,
    log-likelihoods (of a Gaussian likelihood they can be negative) and anything in percent: False."""
    lowered = name.lower()
    if lowered in _NONNEGATIVE_NAMES:
        return True
    if "%" in lowered or "percent" in lowered or "loss" in lowered or "nll" in lowered or "elbo" in lowered:
        return False
    words = [w for w in re.split(r"[^a-z0-9@]+", lowered) if w]
    return any(w in _NONNEGATIVE_WORDS for w in words)


def metric_range(name: str) -> tuple[float, float] | None:
    """What a metric can be, for its interval: (0, 1) for the unit-interval metrics of metric_bounds, (0, inf)
    for counts, times and squared errors (nonnegative_metric), None for anything else."""
    bounds = metric_bounds(name)
    if bounds is not None:
        return bounds
    return (0.0, math.inf) if nonnegative_metric(name) else None


def _as_values(values: Sequence[float], what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"{what}: expected a non-empty list of numbers, got shape {v.shape}")
    if not np.isfinite(v).all():  # a NaN mean would look like a number in a table; a diverged seed must be seen
        raise ValueError(f"{what}: NaN or infinite values at seed index {np.flatnonzero(~np.isfinite(v)).tolist()}")
    return v


def summarize(
    values: Sequence[float],
    bounded: tuple[float, float] | None = None,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Mean, sample std (ddof 1; 0.0 for one value) and a `confidence` interval of the mean of `values`.

    Returns {"mean", "std", "ci95": [lo, hi] (None for one value), "values", "n_seeds", "method", "confidence"}.
    The interval is Student's t, m ± t_{(1+c)/2, n-1} s/√n, or, when the metric is `bounded` = (lo, hi) and
    n >= 10, a percentile bootstrap of the mean (10,000 resamples drawn with `seed`). With `bounded`, values
    outside the bounds are refused and a t interval is clipped to them. NaN or inf: ValueError."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = _as_values(values, "summarize")
    n = len(v)
    with np.errstate(over="ignore", invalid="ignore"):
        mean, spread = float(v.mean()), float(v.std(ddof=1)) if n > 1 else 0.0
    if not (math.isfinite(mean) and math.isfinite(spread)):  # finite values whose mean or std overflows
        raise ValueError(f"values too large to average in float64 (largest {np.abs(v).max():.3g})")
    if bounded is not None:
        low, high = bounded
        if not low < high:
            raise ValueError(f"bounded must be (low, high) with low < high, got {bounded}")
        if v.min() < low or v.max() > high:
            raise ValueError(f"values outside the bounds {list(bounded)}: {v.tolist()}")
    summary = {"mean": mean, "std": 0.0, "ci95": None, "values": v.tolist(), "n_seeds": n, "method": SINGLE_SEED}
    summary["confidence"] = confidence
    if n == 1:
        return summary
    std = spread
    summary["std"] = std
    if bounded is not None and n >= BOOTSTRAP_MIN_N and all(map(math.isfinite, bounded)):
        result = scipy.stats.bootstrap(
            (v,),
            np.mean,
            n_resamples=BOOTSTRAP_RESAMPLES,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        lo, hi = float(result.confidence_interval.low), float(result.confidence_interval.high)
        summary["ci95"] = [lo, hi]
        summary["method"] = f"percentile bootstrap of the mean, {BOOTSTRAP_RESAMPLES} resamples, seed {seed}"
        return summary
    half = float(scipy.stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"values too spread out for a float64 interval (std {std:.3g})")
    summary["method"] = f"Student t, {n - 1} degrees of freedom"
    if bounded is not None:
        lo, hi = max(lo, float(bounded[0])), min(hi, float(bounded[1]))
        clip = f"[{bounded[0]:g}, {bounded[1]:g}]" if math.isfinite(bounded[1]) else f"at {bounded[0]:g}"
        summary["method"] += f", clipped {'to ' if math.isfinite(bounded[1]) else ''}{clip}"
    summary["ci95"] = [lo, hi]
    return summary


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    bounded: tuple[float, float] | None = None,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """summarize(a_i - b_i) over the seed index i: method A minus method B, each trained with seed i.

    `bounded` is the metric's range (lo, hi); the differences then lie in (lo - hi, hi - lo), e.g. [-1, 1] for
    accuracies, and the bootstrap rule of summarize applies to those."""
    va, vb = _as_values(a, "paired_difference (a)"), _as_values(b, "paired_difference (b)")
    if len(va) != len(vb):
        raise ValueError(f"paired_difference needs one value per seed on both sides, got {len(va)} and {len(vb)}")
    # a half-bounded metric (a count, a time) gives differences of any sign and size: no bounds
    finite = bounded is not None and all(map(math.isfinite, bounded))
    diff_bounds = (bounded[0] - bounded[1], bounded[1] - bounded[0]) if finite else None
    return summarize(va - vb, bounded=diff_bounds, confidence=confidence, seed=seed)


RELATIVE_NOISE = 1e-9  # a std below this fraction of the mean is float rounding of equal values, not a spread


def decimals(summary: dict) -> int:
    """Decimals that fit the numbers: the std to two significant figures, or the mean to four when the values
    are all equal (a std that is float rounding, e.g. 1e-16 for three seeds of 0.9333..., counts as 0)."""
    mean, std = abs(summary["mean"]), summary["std"]
    if std <= RELATIVE_NOISE * mean:
        std = 0.0
    if std == 0 and all(float(v).is_integer() for v in summary.get("values") or [summary["mean"]]):
        return 0  # a count the same at every seed: 2, not 2.000
    scale, figures = (std, 2) if std > 0 else (mean, 4)
    if scale == 0:
        return 0
    return min(10, max(0, figures - 1 - math.floor(math.log10(scale))))


def format_interval(summary: dict, digits: int | None = 3) -> str:
    """'0.934 ± 0.004 [0.929, 0.939] (n=5)': mean ± sample std, the interval, the number of seeds; with one
    seed '0.934 (1 seed, no interval)'. `digits` is the number of decimals; None: as many as the numbers carry
    (decimals(summary): two significant figures of the std, so 0.9333 ± 0 rather than 0.9333333333 ± 0.0000000000)."""
    if digits is None:
        digits = decimals(summary)
    mean = f"{summary['mean']:.{digits}f}"
    if summary["ci95"] is None:
        return f"{mean} (1 seed, no interval)"
    lo, hi = summary["ci95"]
    return f"{mean} ± {summary['std']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] (n={summary['n_seeds']})"
