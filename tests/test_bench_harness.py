"""The benchmark harness's statistics (benchmarks/common.py): per-round ratios, median, bootstrap interval, noisy rule.

Pure functions, checked against values computed by hand; no clock, no torch work.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common


def test_per_round_ratios_pairs_rounds():
    assert common.per_round_ratios([2.0, 3.0, 9.0], [1.0, 2.0, 3.0]) == [2.0, 1.5, 3.0]
    assert common.per_round_ratios([2.0, 3.0], [4.0, 6.0], scale=10.0) == [5.0, 5.0]
    with pytest.raises(ValueError):
        common.per_round_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        common.per_round_ratios([], [])


def test_median_and_percentile_by_hand():
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert common.percentile([5, 1, 4, 2, 3], 0.25) == 2.0
    assert common.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert common.percentile([10, 20], 0.975) == pytest.approx(19.75)
    assert common.percentile([7], 0.025) == 7


def test_bootstrap_ci_by_hand():
    # constant rounds: every resample has the same median
    assert common.bootstrap_ci([1.3] * 6) == (1.3, 1.3)
    # two rounds 1 and 3: resampled medians are 1 (p=1/4), 2 (p=1/2), 3 (p=1/4); with 2000 resamples the
    # 2.5% and 97.5% percentiles are the extremes
    assert common.bootstrap_ci([1.0, 3.0]) == (1.0, 3.0)
    # deterministic for a seed, and it does not touch the global random state
    import random

    random.seed(123)
    before = random.random()
    random.seed(123)
    a = common.bootstrap_ci([1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 1.0])
    assert random.random() == before
    assert a == common.bootstrap_ci([1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 1.0])
    lo, hi = a
    assert 0.9 <= lo <= 1.0 <= hi <= 1.2


def test_noisy_rule_interval_width():
    assert common.noisy_reason(1.0, 0.9, 1.1) is None
    assert common.noisy_reason(1.0, 0.85, 1.15) is None  # exactly +-15% is still reported
    assert common.noisy_reason(1.0, 0.84, 1.05) == "interval wider than +-15%"
    assert common.noisy_reason(2.0, 1.9, 2.4) == "interval wider than +-15%"  # +20% on the upper side
    assert common.noisy_reason(float("nan"), 0.9, 1.1) == "not a positive finite number"


def test_impossible_fraction_above_one_is_flagged():
    assert common.noisy_reason(0.9, 0.85, 0.95, upper_bound=1.0) is None
    assert common.noisy_reason(5.01, 4.9, 5.1, upper_bound=1.0) == "impossible: above 1"  # the RBM 5.01
    assert common.noisy_reason(0.97, 0.93, 1.02, upper_bound=1.0) == "impossible: above 1"  # interval above 1
    # from rounds: achieved rate 600 samples/s x 1e7 FLOP/sample = 6 GFLOP/s against a 1.2 GFLOP/s matmul
    r = common.summarize_ratio([600.0] * 5, [1.2e9] * 5, scale=1e7, upper_bound=1.0)
    assert r["ratio"] == pytest.approx(5.0) and r["noisy"] and r["reason"] == "impossible: above 1"
    assert common.format_ratio(r) == "noisy, rerun (impossible: above 1)"


def test_wide_interval_is_flagged():
    # per-round ratios 1.07 ... 8.83 (the pythae swing): median 2.0, interval far beyond +-15%
    r = common.summarize_ratio([1.07, 2.0, 8.83, 1.5, 3.0], [1.0] * 5)
    assert r["ratio"] == 2.0
    assert r["noisy"] and r["reason"] == "interval wider than +-15%"
    assert common.format_ratio(r).startswith("noisy, rerun")


def test_busy_machine_is_flagged():
    assert common.busy_reason(2.9, 2) is None  # our own 2 threads + less than one more
    assert common.busy_reason(3.2, 2) == "machine busy: load 3.2 on 2 CPUs"
    assert common.busy_reason(None, 2) is None
    # a stable but wrong ratio on a busy machine (the busy-loop check's RBM 0.53 against sklearn) is refused
    r = common.summarize_ratio([160.0, 162.0, 165.0], [300.0, 306.0, 310.0], load_1min=6.7, cpus=2)
    assert r["noisy"] and r["reason"] == "machine busy: load 6.7 on 2 CPUs"
    assert common.max_load((1.0, 0.5, 0.2), (3.5, 1.0, 0.4)) == 3.5


def test_ratio_follows_from_its_columns():
    # quiet rounds: per-round ratios 2, 2.1, 1.9, 2, 2 -> median 2.0; columns: median(num) / median(den) = 2 / 1
    r = common.summarize_ratio([2.0, 2.1, 1.9, 2.0, 2.0], [1.0] * 5)
    # resampled medians of {1.9, 2.0 x3, 2.1} reach 1.9 and 2.1 among 2000 resamples
    assert (r["ratio"], r["lo"], r["hi"]) == (2.0, 1.9, 2.1)
    assert r["columns_ratio"] == 2.0 and not r["noisy"]
    assert common.format_ratio(r) == "2.00 [1.90, 2.10]"
    # a ratio of 0.72 beside columns 20,993 and 13,961 (1.50) is refused
    assert common.noisy_reason(0.72, 0.70, 0.74, columns_ratio=20993 / 13961) == "disagrees with its columns"


def test_interleaved_rounds_rotate_and_drop_warmup():
    calls: list[str] = []

    def contender(name: str, value: float):
        def run() -> float:
            calls.append(name)
            return value + len(calls)

        return run

    out = common.interleaved_rounds(
        {"a": contender("a", 0), "b": contender("b", 100), "mm": contender("mm", 1000)}, rounds=3, warmup_rounds=1
    )
    assert calls == ["a", "b", "mm", "b", "mm", "a", "mm", "a", "b", "a", "b", "mm"]
    # warm-up round (calls 1-3) dropped; index i is round i for every contender
    assert out == {"a": [6.0, 8.0, 10.0], "b": [104.0, 109.0, 111.0], "mm": [1005.0, 1007.0, 1012.0]}


def test_the_gpu_benchmark_runs_on_a_cpu_as_a_smoke_test(tmp_path):
    """benchmarks/gpu.py --device cpu --quick: every row measured (finite rates), the ratios formed."""
    import json

    import gpu

    result = gpu.main(
        ["--device", "cpu", "--quick", "--json", str(tmp_path / "gpu.json"), "--out", str(tmp_path / "g.md")]
    )
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["quick"] and set(saved["rates"]) >= {"bare_small", "aelab_small_e2e", "wide_auto_e2e"}
    assert all(r > 0 for r in result["rates"].values())
    for key in ("aelab_train_step_vs_bare", "wide_auto_e2e_vs_train_step", "wide_every_epoch_e2e_vs_train_step"):
        assert saved[key]["rounds"] == 2
    assert set(saved["rbm"]) == {"100", "1000"}
    assert "| row |" in (tmp_path / "g.md").read_text()
