"""Shared helpers for the benchmarks: interleaved rounds, the statistics of ratios, the matmul reference, the machine.

How every benchmark measures (issue 12):
  - contenders are timed in short alternating rounds (A, B, matmul, A, B, matmul, ...; the order rotates from
    round to round), so that load from other jobs hits every contender alike;
  - the matmul reference (`matmul_rate`) is one of the contenders of every round;
  - every ratio (ours / peer, fraction of the matmul rate) is computed per round from that round's two
    measurements, reported as the median of the per-round ratios with a bootstrap 95% interval;
  - the rate columns beside a ratio are the medians over the same rounds;
  - a ratio is replaced by "noisy, rerun" (`noisy_reason`) when its interval is wider than +-15% of it, when it
    is a fraction of the matmul rate and it or its interval goes above 1, or when it disagrees with the columns
    beside it (the ratio of the two median rates falls outside the ratio's interval);
  - the 1/5/15-minute load average is printed with every table, and a run during which the 1-minute load
    average went above the CPUs + 1 reports no ratio at all ("machine busy", `busy_reason`).

The statistics are small pure functions (no torch, no clock), unit-tested in tests/test_bench_harness.py.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

MAX_REL_HALF_WIDTH = 0.15  # an interval reaching further than +-15% from the median is "noisy, rerun"
NOISY = "noisy, rerun"


# ---------------------------------------------------------------- statistics (pure)
def per_round_ratios(num: Sequence[float], den: Sequence[float], scale: float = 1.0) -> list[float]:
    """scale * num[i] / den[i] for every round i: the two measurements of one round give one ratio."""
    if len(num) != len(den):
        raise ValueError(f"per-round ratios need the same rounds: {len(num)} vs {len(den)} measurements")
    if not num:
        raise ValueError("no rounds")
    return [scale * a / b for a, b in zip(num, den)]


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of values, linear interpolation between order statistics (numpy's default)."""
    s = sorted(values)
    if not s:
        raise ValueError("percentile of no values")
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def bootstrap_ci(
    values: Sequence[float],
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    stat: Callable[[Sequence[float]], float] = median,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of stat(values): resample the rounds with replacement n_boot times.

    Deterministic for a given seed (its own random.Random, the global generators are not touched).
    """
    if not values:
        raise ValueError("bootstrap of no values")
    rng = random.Random(seed)
    n = len(values)
    boots = [stat([values[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot)]
    alpha = (1 - level) / 2
    return percentile(boots, alpha), percentile(boots, 1 - alpha)


def busy_reason(load_1min: float | None, cpus: int | None) -> str | None:
    """The machine was busy when the 1-minute load average exceeded the CPUs + 1.

    The benchmark's own threads (as many as the CPUs here) account for a load of about the CPU count; more than
    one further runnable thread means every contender was time-sliced against other jobs, and contenders do not
    suffer alike (OpenMP teams stall on a descheduled thread, a single-threaded peer does not): a ratio can then
    be stable from round to round and still wrong, so it is not reported.
    """
    if load_1min is None or cpus is None or not math.isfinite(load_1min):
        return None
    if load_1min > cpus + 1:
        return f"machine busy: load {load_1min:.1f} on {cpus} CPUs"
    return None


def noisy_reason(
    estimate: float,
    lo: float,
    hi: float,
    *,
    upper_bound: float | None = None,
    columns_ratio: float | None = None,
    max_rel_half_width: float = MAX_REL_HALF_WIDTH,
    load_1min: float | None = None,
    cpus: int | None = None,
) -> str | None:
    """Why this ratio must not be reported (then print "noisy, rerun"), or None when it may be.

    - upper_bound: a physical limit (1 for a fraction of the matmul rate): the estimate or the interval above it
      is impossible, so the measurement was disturbed;
    - an interval reaching further than max_rel_half_width (15%) from the estimate on either side;
    - columns_ratio: the same ratio computed from the median columns printed beside it; outside the interval,
      the ratio would disagree with its own columns;
    - load_1min, cpus: the highest 1-minute load average seen during the run (busy_reason).
    """
    if not all(math.isfinite(v) for v in (estimate, lo, hi)) or estimate <= 0:
        return "not a positive finite number"
    busy = busy_reason(load_1min, cpus)
    if busy:
        return busy
    if upper_bound is not None and (estimate > upper_bound or hi > upper_bound):
        return f"impossible: above {upper_bound:g}"
    if lo < estimate * (1 - max_rel_half_width) or hi > estimate * (1 + max_rel_half_width):
        return f"interval wider than +-{max_rel_half_width:.0%}"
    if columns_ratio is not None and not (lo <= columns_ratio <= hi):
        return "disagrees with its columns"
    return None


def summarize_ratio(
    num: Sequence[float],
    den: Sequence[float],
    *,
    scale: float = 1.0,
    upper_bound: float | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    load_1min: float | None = None,
    cpus: int | None = None,
) -> dict:
    """The ratio scale*num/den from paired rounds: median of per-round ratios, bootstrap 95% interval, noisy rule.

    num and den are the per-round measurements (rates: higher is better for num); columns_ratio is the ratio of
    their medians (the columns printed beside the ratio), checked to lie inside the interval.
    """
    ratios = per_round_ratios(num, den, scale)
    est = median(ratios)
    lo, hi = bootstrap_ci(ratios, seed=seed, n_boot=n_boot)
    columns_ratio = scale * median(num) / median(den)
    reason = noisy_reason(
        est, lo, hi, upper_bound=upper_bound, columns_ratio=columns_ratio, load_1min=load_1min, cpus=cpus
    )
    return {
        "ratio": est,
        "lo": lo,
        "hi": hi,
        "rounds": len(ratios),
        "per_round": ratios,
        "columns_ratio": columns_ratio,
        "noisy": reason is not None,
        "reason": reason,
    }


def format_ratio(r: dict, digits: int = 2) -> str:
    """'1.32 [1.25, 1.40]', or 'noisy, rerun (why)' when the noisy rule says so."""
    if r["noisy"]:
        return f"{NOISY} ({r['reason']})"
    return f"{r['ratio']:.{digits}f} [{r['lo']:.{digits}f}, {r['hi']:.{digits}f}]"


# ---------------------------------------------------------------- measuring
def setup(threads: int = 2) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)


def load_average() -> tuple[float, float, float]:
    try:
        return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]
    except OSError:
        return (float("nan"),) * 3


def max_load(*samples: Sequence[float]) -> float:
    """The highest 1-minute load average among load_average() samples (start and end of a run)."""
    return max(s[0] for s in samples)


def format_load(start: Sequence[float], end: Sequence[float]) -> str:
    return (
        f"load average (1/5/15 min) {start[0]:.2f}/{start[1]:.2f}/{start[2]:.2f} at the start, "
        f"{end[0]:.2f}/{end[1]:.2f}/{end[2]:.2f} at the end, {os.cpu_count()} CPUs"
    )


def interleaved_rounds(
    contenders: dict[str, Callable[[], float]],
    rounds: int,
    warmup_rounds: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Call every contender once per round, the order rotating each round; each call returns one measurement.

    Returns name -> the measurements of the timed rounds (warm-up rounds are dropped), index i = round i for
    every name, so that per-round ratios pair measurements taken within a few seconds of each other.
    """
    names = list(contenders)
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(warmup_rounds + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            value = contenders[name]()
            if r >= warmup_rounds:
                out[name].append(value)
        if log is not None and r >= warmup_rounds:
            log(f"  round {r - warmup_rounds + 1}/{rounds}: " + ", ".join(f"{k} {out[k][-1]:.4g}" for k in names))
    return out


def matmul_rate(m: int = 1024, k: int = 1024, n: int = 1024, seconds: float = 0.15) -> Callable[[], float]:
    """A contender: each call times (m,k)@(k,n) float32 products for about `seconds` and returns FLOP/s."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    torch.mm(a, b, out=out)
    reps = [1]

    def measure() -> float:
        count = reps[0]
        t0 = time.perf_counter()
        for _ in range(count):
            torch.mm(a, b, out=out)
        dt = time.perf_counter() - t0
        return 2 * m * k * n * count / dt

    for _ in range(2):  # calibrate the repetition count once; every round then does the same work
        t0 = time.perf_counter()
        measure()
        reps[0] = max(1, min(1000, round(reps[0] * seconds / max(time.perf_counter() - t0, 1e-6))))
    return measure


def matmul_flops(m: int = 1024, k: int = 1024, n: int = 1024, repeats: int = 5) -> float:
    """The machine's float32 matmul rate (FLOP/s), median of `repeats` short bursts (for a header line only;
    ratios use the interleaved measurements)."""
    measure = matmul_rate(m, k, n)
    return median([measure() for _ in range(repeats)])


def machine() -> dict:
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_json(path: str | None, obj) -> None:
    if path:
        Path(path).write_text(json.dumps(obj, indent=2, default=str))
