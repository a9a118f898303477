"""Benchmark the exact contractive penalty ||dh/dx||_F^2 (Rifai et al., ICML 2011) against the alternatives.

For two MLP encoders (aelab.models.ae.mlp, linear code layer), batch 128, float32,
2 threads, one timed step = penalty (N,) -> .mean().backward() (parameter grads):

  floor     d_code batched VJPs through the whole encoder: one
            torch.autograd.grad(is_grads_batched=True, create_graph=True) and its backward
  exact     aelab.models.penalties.jacobian_frobenius_sq(method="exact") (route in brackets)
  func      vmap over examples of torch.func.jacrev (the other exact reverse-mode route)
  loop      torch.autograd.functional.jacobian(create_graph=True) one example at a time,
            measured on 16 examples and scaled x8 to 128 (it is linear in N)
  hutch k   Hutchinson with k Gaussian probes, JVPs (input side) and VJPs (code side);
            relative error vs exact over 20 seeds: per example (RMS) and of the batch mean

Usage: PYTHONPATH=src python benchmarks/contractive_penalty.py [--json out.json] [--repeats 4] [--threads 2]
Wall-clock medians. The methods are timed round-robin (every round times each once) and
"x floor" is the median over rounds of the within-round ratio, so load on a shared machine
hits all methods alike; the load average is recorded too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from aelab.models import penalties
from aelab.models.ae import mlp

ENCODERS = {
    "784-256-64-20 relu": ([784, 256, 64, 20], "relu"),
    "784-1000-500-250-30 sigmoid": ([784, 1000, 500, 250, 30], "sigmoid"),
}
BATCH, LOOP_BATCH, LOOP_REPEATS, HUTCHINSON_KS, ERROR_SEEDS = 128, 16, 2, (1, 2, 4, 8, 16), 20
INIT_SEED, PROBE_SEED = 0, 1000


def floor_penalty(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The compute floor of the issue: every row of J by one batched VJP call, nothing clever."""
    x = x.detach().requires_grad_(True)
    h = encoder(x)
    d_code = h.shape[1]
    basis = torch.eye(d_code).unsqueeze(1).expand(d_code, *h.shape)
    (rows,) = torch.autograd.grad(h, x, basis, create_graph=True, is_grads_batched=True)
    return rows.pow(2).sum((0, 2))


def loop_penalty(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What users write: a per-example Jacobian in a Python loop."""
    return torch.stack(
        [
            torch.autograd.functional.jacobian(lambda v: encoder(v.unsqueeze(0)).squeeze(0), x_one, create_graph=True)
            .pow(2)
            .sum()
            for x_one in x
        ]
    )


def step_ms(encoder: torch.nn.Module, penalty) -> float:
    """Wall time (ms) of one penalty().mean().backward()."""
    encoder.zero_grad(set_to_none=True)
    start = time.perf_counter()
    penalty().mean().backward()
    return 1e3 * (time.perf_counter() - start)


def time_round_robin(encoder: torch.nn.Module, steps: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Each round times every step once, so load spikes on a shared machine hit all methods alike."""
    times: dict[str, list[float]] = {label: [] for label in steps}
    for i in range(warmup + repeats):
        for label, penalty in steps.items():
            ms = step_ms(encoder, penalty)
            if i >= warmup:
                times[label].append(ms)
    return times


def hutchinson_errors(encoder, x, exact: torch.Tensor, k: int) -> dict:
    per_example, batch_mean = [], []
    for seed in range(ERROR_SEEDS):
        # not seed 0: that would replay the stream that initialised the weights and correlate probes with W
        est = penalties.jacobian_frobenius_sq(
            encoder, x, method="hutchinson", k=k, generator=torch.Generator().manual_seed(PROBE_SEED + seed)
        ).detach()
        per_example.append(((est - exact) / exact).pow(2).mean())
        batch_mean.append(((est.mean() - exact.mean()) / exact.mean()).pow(2))
    return {
        "rel_rms_per_example": torch.stack(per_example).mean().sqrt().item(),
        "rel_rms_batch_mean": torch.stack(batch_mean).mean().sqrt().item(),
    }


def bench_encoder(name: str, sizes: list[int], activation: str, repeats: int) -> dict:
    torch.manual_seed(INIT_SEED)
    encoder = mlp(sizes, activation)
    x = torch.rand(BATCH, sizes[0])
    d_input, d_code = sizes[0], sizes[-1]
    result = {"encoder": name, "sizes": sizes, "activation": activation, "batch": BATCH, "rows": []}

    exact = penalties.jacobian_frobenius_sq(encoder, x, method="exact").detach()
    route = penalties.exact_route(encoder, x)
    check = {
        "floor": floor_penalty(encoder, x).detach(),
        "func": penalties._exact_func(encoder, x, "reverse").detach(),
        "loop": loop_penalty(encoder, x[:4]).detach(),  # values only: 4 examples are enough
    }
    result["max_rel_diff_vs_exact"] = {
        key: ((value - exact[: len(value)]).abs() / exact[: len(value)]).max().item() for key, value in check.items()
    }

    steps = {
        "floor (batched VJPs)": lambda: floor_penalty(encoder, x),
        f"exact [{route}]": lambda: penalties.jacobian_frobenius_sq(encoder, x, method="exact"),
        "exact via vmap(jacrev)": lambda: penalties._exact_func(encoder, x, "reverse"),
    }
    hutchinson_rows = {}
    for k in HUTCHINSON_KS:
        errors = hutchinson_errors(encoder, x, exact, k)
        default_side = penalties.hutchinson_side(d_code, d_input, k)
        for side in ("input", "code"):
            probes = torch.randn(
                k, BATCH, d_input if side == "input" else d_code, generator=torch.Generator().manual_seed(PROBE_SEED)
            )
            label = (
                f"hutchinson k={k} ({'JVP' if side == 'input' else 'VJP'}{', default' if side == default_side else ''})"
            )
            steps[label] = lambda probes=probes, side=side: penalties._hutchinson(encoder, x, probes, side)
            hutchinson_rows[label] = dict(k=k, side=side, **errors)
    times = time_round_robin(encoder, steps, repeats)
    floor_times = times["floor (batched VJPs)"]
    for label, ts in times.items():
        result["rows"].append(
            {
                "method": label,
                "median_ms": statistics.median(ts),
                "min_ms": min(ts),
                # ratio within each round, then the median: robust to load that drifts between rounds
                "x_floor": statistics.median(t / f for t, f in zip(ts, floor_times)),
                "repeats": len(ts),
                **hutchinson_rows.get(label, {}),
            }
        )

    # The loop is too slow for the round robin: a small batch, scaled to BATCH (the cost is linear in N).
    step_ms(encoder, lambda: loop_penalty(encoder, x[:2]))  # warm-up
    loop_times = [
        step_ms(encoder, lambda: loop_penalty(encoder, x[:LOOP_BATCH])) * BATCH / LOOP_BATCH
        for _ in range(LOOP_REPEATS)
    ]
    floor_ms = statistics.median(floor_times)
    result["rows"].insert(
        3,
        {
            "method": f"per-example jacobian loop (N={LOOP_BATCH}, x{BATCH // LOOP_BATCH})",
            "median_ms": statistics.median(loop_times),
            "min_ms": min(loop_times),
            "x_floor": statistics.median(loop_times) / floor_ms,
            "repeats": LOOP_REPEATS,
            "measured_batch": LOOP_BATCH,
        },
    )
    exact_row = result["rows"][1]
    loop_over_exact = statistics.median(loop_times) / exact_row["median_ms"]
    result["targets"] = {
        "exact_over_floor": exact_row["x_floor"],
        "exact_within_1.5x_floor": exact_row["x_floor"] <= 1.5,
        "loop_over_exact": loop_over_exact,
        "exact_20x_faster_than_loop": loop_over_exact >= 20,
    }
    return result


def markdown(result: dict) -> str:
    lines = [
        f"### {result['encoder']}, batch {result['batch']}, float32, penalty + backward",
        "",
        "| method | median ms | min ms | x floor | rel. err per example | rel. err batch mean |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        errs = f"{row['rel_rms_per_example']:.3f} | {row['rel_rms_batch_mean']:.4f}" if "k" in row else "exact | exact"
        lines.append(
            f"| {row['method']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | {row['x_floor']:.2f} | {errs} |"
        )
    t = result["targets"]
    diffs = ", ".join(f"{key} {value:.1e}" for key, value in result["max_rel_diff_vs_exact"].items())
    lines += [
        "",
        f"exact / floor = {t['exact_over_floor']:.2f} (target <= 1.5: "
        f"{'met' if t['exact_within_1.5x_floor'] else 'MISSED'}); loop / exact = {t['loop_over_exact']:.1f} "
        f"(target >= 20: {'met' if t['exact_20x_faster_than_loop'] else 'MISSED'}); "
        f"max rel. difference of the values vs exact: {diffs}",
        "",
    ]
    return "\n".join(lines)


def run_meta() -> dict:
    """What the numbers depend on: versions, threads, and the load average at the start."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    meta = run_meta()
    results = [bench_encoder(name, sizes, act, args.repeats) for name, (sizes, act) in ENCODERS.items()]
    meta.update(loadavg_end=os.getloadavg(), seconds=time.perf_counter() - started)
    print(
        f"torch {meta['torch']}, {meta['threads']} threads, load average {meta['loadavg_start'][0]:.1f} -> "
        f"{meta['loadavg_end'][0]:.1f}, {meta['seconds']:.0f} s\n"
    )
    for result in results:
        print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
