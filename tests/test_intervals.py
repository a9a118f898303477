"""aelab.metrics.intervals against independent computations: scipy's t interval, a plain numpy bootstrap, and
the coverage of the t interval measured by simulation."""

import math

import numpy as np
import pytest
import scipy.stats

from aelab.metrics.intervals import format_interval, paired_difference, summarize


def test_t_interval_matches_scipy_and_hand_computation():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    s = summarize(values)
    lo, hi = scipy.stats.t.interval(0.95, df=4, loc=3.0, scale=np.std(values, ddof=1) / math.sqrt(5))
    assert s["ci95"] == pytest.approx([lo, hi], rel=1e-12)
    # by hand: std = sqrt(2.5), t_{0.975, 4} = 2.7764451, half = 2.7764451 * 1.5811388 / sqrt(5) = 1.9632432
    assert s["ci95"] == pytest.approx([3 - 1.9632432, 3 + 1.9632432], abs=1e-6)
    assert s["mean"] == 3.0 and s["std"] == pytest.approx(math.sqrt(2.5)) and s["n_seeds"] == 5
    assert s["values"] == values and s["method"].startswith("Student t")


def test_t_interval_covers_the_true_mean_95_percent_of_the_time():
    draws = np.random.default_rng(12345).normal(loc=3.0, scale=2.0, size=(2000, 5))
    covered = 0
    for row in draws:
        lo, hi = summarize(row)["ci95"]
        covered += lo <= 3.0 <= hi
    assert 0.93 <= covered / len(draws) <= 0.97


def test_bootstrap_only_for_bounded_metrics_with_ten_or_more_values():
    accuracies = np.random.default_rng(0).uniform(0.90, 0.98, size=12)
    assert summarize(accuracies[:9], bounded=(0, 1))["method"].startswith("Student t")  # too few values
    assert summarize(accuracies)["method"].startswith("Student t")  # not bounded
    s = summarize(accuracies, bounded=(0, 1))
    assert s["method"].startswith("percentile bootstrap")
    # an independent percentile bootstrap of the mean with another generator: the same interval up to resampling noise
    resamples = np.random.default_rng(99).choice(accuracies, size=(20_000, len(accuracies)), replace=True).mean(1)
    assert s["ci95"] == pytest.approx(np.percentile(resamples, [2.5, 97.5]), abs=2e-3)
    assert summarize(accuracies, bounded=(0, 1), seed=0) == s  # a fixed seed: the same interval every time


def test_bounded_t_interval_is_clipped_and_out_of_bounds_or_nan_refused():
    values = [0.99, 1.0, 1.0]
    free, clipped = summarize(values), summarize(values, bounded=(0.0, 1.0))
    assert free["ci95"][1] > 1.0 and clipped["ci95"] == [free["ci95"][0], 1.0] and "clipped" in clipped["method"]
    with pytest.raises(ValueError, match="outside the bounds"):
        summarize([0.5, 1.2], bounded=(0, 1))
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError):
        summarize([])


def test_single_seed_has_no_interval():
    s = summarize([0.934])
    assert s["ci95"] is None and s["std"] == 0.0 and s["n_seeds"] == 1 and s["method"] == "single seed: no interval"
    assert format_interval(s) == "0.934 (1 seed, no interval)"
    assert format_interval(summarize([1.0, 2.0, 3.0, 4.0, 5.0])) == "3.000 ± 1.581 [1.037, 4.963] (n=5)"


def test_paired_difference_is_the_summary_of_the_differences():
    cae, dae = [0.91, 0.93, 0.92, 0.95], [0.90, 0.91, 0.92, 0.93]
    diff = [a - b for a, b in zip(cae, dae)]
    assert paired_difference(cae, dae) == summarize(diff)
    many_a, many_b = np.linspace(0.90, 0.95, 12), np.linspace(0.89, 0.93, 12)
    # differences of [0, 1] metrics lie in [-1, 1]: with 12 seeds that is the bootstrap's case
    paired = paired_difference(many_a, many_b, bounded=(0, 1))
    assert paired == summarize(many_a - many_b, bounded=(-1, 1)) and paired["method"].startswith("percentile")
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference([1.0, 2.0], [1.0])


def test_the_bootstrap_starts_at_exactly_ten_values():
    accuracies = list(np.random.default_rng(1).uniform(0.8, 0.9, size=10))
    assert summarize(accuracies[:9], bounded=(0, 1))["method"].startswith("Student t")
    assert summarize(accuracies, bounded=(0, 1))["method"].startswith("percentile bootstrap")


def test_clipping_at_the_lower_bound_too():
    values = [0.0, 0.0, 0.01]
    free, clipped = summarize(values), summarize(values, bounded=(0.0, 1.0))
    assert free["ci95"][0] < 0.0 and clipped["ci95"] == [0.0, free["ci95"][1]]


def test_a_non_default_confidence_is_honoured_by_every_method():
    values = [1.0, 2.0, 4.0, 3.0, 5.0]
    lo, hi = scipy.stats.t.interval(0.80, df=4, loc=3.0, scale=np.std(values, ddof=1) / math.sqrt(5))
    assert summarize(values, confidence=0.80)["ci95"] == pytest.approx([lo, hi], rel=1e-12)
    accuracies = np.random.default_rng(2).uniform(0.5, 0.9, size=15)
    s80 = summarize(accuracies, bounded=(0, 1), confidence=0.80)
    resamples = np.random.default_rng(7).choice(accuracies, size=(20_000, 15), replace=True).mean(1)
    assert s80["ci95"] == pytest.approx(np.percentile(resamples, [10, 90]), abs=3e-3)
    assert s80["confidence"] == 0.80
    clipped = summarize([0.99, 1.0, 1.0], bounded=(0, 1), confidence=0.80)
    lo, _ = scipy.stats.t.interval(
        0.80, df=2, loc=np.mean([0.99, 1, 1]), scale=np.std([0.99, 1, 1], ddof=1) / math.sqrt(3)
    )
    assert clipped["ci95"] == pytest.approx([lo, 1.0], rel=1e-12)


def test_a_bootstrap_interval_stays_inside_the_bounds():
    near_one = [1.0] * 9 + [0.98, 0.99, 1.0]
    s = summarize(near_one, bounded=(0.0, 1.0))
    assert s["method"].startswith("percentile bootstrap") and 0.0 <= s["ci95"][0] <= s["ci95"][1] <= 1.0
