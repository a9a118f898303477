"""Benchmark the exact contractive penalty ||dh/dx||_F^2 (Rifai et al., ICML 2011) against the alternatives.

For two MLP encoders (aelab.models.ae.mlp, linear code layer), batch 128, float32,
2 threads, one timed step = penalty (N,) -> .mean().backward() (parameter grads):

  floor     d_code batched VJPs through the whole encoder: one
            torch.autograd.grad(is_grads_batched=True, create_graph=True) and its backward
  exact     aelab.penalties.jacobian_frobenius_sq(method="exact") (route in brackets)
  func      vmap over examples of torch.func.jacrev (the other exact reverse-mode route)
  loop      torch.autograd.functional.jacobian(create_graph=True) one example at a time,
            measured on 32 examples and scaled x4 to 128 (it is linear in N)
  hutch k   Hutchinson with k Gaussian probes, JVPs (input side) and VJPs (code side);
            relative error vs exact over 10 seeds: per example (RMS) and of the batch mean

Usage: PYTHONPATH=src python benchmarks/contractive_penalty.py [--json out.json] [--repeats 5]
Wall-clock medians; the machine may be shared, so the load average is recorded too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from aelab import penalties
from aelab.models.ae import mlp

ENCODERS = {
    "784-256-64-20 relu": ([784, 256, 64, 20], "relu"),
    "784-1000-500-250-30 sigmoid": ([784, 1000, 500, 250, 30], "sigmoid"),
}
BATCH, LOOP_BATCH, HUTCHINSON_KS, ERROR_SEEDS = 128, 32, (1, 2, 4, 8, 16), 10


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
    return torch.stack([torch.autograd.functional.jacobian(lambda v: encoder(v.unsqueeze(0)).squeeze(0), x_one,
                                                           create_graph=True).pow(2).sum() for x_one in x])


def time_step(encoder: torch.nn.Module, penalty, repeats: int, warmup: int) -> dict:
    """Median and min wall time (ms) of penalty().mean().backward()."""
    times = []
    for i in range(warmup + repeats):
        encoder.zero_grad(set_to_none=True)
        start = time.perf_counter()
        penalty().mean().backward()
        if i >= warmup:
            times.append(1e3 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "repeats": repeats}


def hutchinson_errors(encoder, x, exact: torch.Tensor, k: int) -> dict:
    per_example, batch_mean = [], []
    for seed in range(ERROR_SEEDS):
        est = penalties.jacobian_frobenius_sq(encoder, x, method="hutchinson", k=k,
                                              generator=torch.Generator().manual_seed(seed)).detach()
        per_example.append(((est - exact) / exact).pow(2).mean())
        batch_mean.append(((est.mean() - exact.mean()) / exact.mean()).pow(2))
    return {"rel_rms_per_example": torch.stack(per_example).mean().sqrt().item(),
            "rel_rms_batch_mean": torch.stack(batch_mean).mean().sqrt().item()}


def bench_encoder(name: str, sizes: list[int], activation: str, repeats: int) -> dict:
    torch.manual_seed(0)
    encoder = mlp(sizes, activation)
    x = torch.rand(BATCH, sizes[0])
    result = {"encoder": name, "sizes": sizes, "activation": activation, "batch": BATCH, "rows": []}

    exact = penalties.jacobian_frobenius_sq(encoder, x, method="exact").detach()
    route = penalties.exact_route(encoder, x)
    check = {
        "floor": floor_penalty(encoder, x).detach(),
        "func": penalties._exact_func(encoder, x, "reverse").detach(),
        "loop": loop_penalty(encoder, x[:LOOP_BATCH]).detach(),
    }
    result["max_rel_diff_vs_exact"] = {
        key: ((value - exact[: len(value)]).abs() / exact[: len(value)]).max().item() for key, value in check.items()}

    def add(label, timing, **extra):
        result["rows"].append({"method": label, **timing, **extra})
        return timing["median_ms"]

    floor_ms = add("floor (batched VJPs)", time_step(encoder, lambda: floor_penalty(encoder, x), repeats, 2))
    exact_ms = add(f"exact [{route}]", time_step(
        encoder, lambda: penalties.jacobian_frobenius_sq(encoder, x, method="exact"), repeats, 2))
    add("exact via vmap(jacrev)", time_step(encoder, lambda: penalties._exact_func(encoder, x, "reverse"), repeats, 2))
    loop = time_step(encoder, lambda: loop_penalty(encoder, x[:LOOP_BATCH]), max(2, repeats // 2), 1)
    scale = BATCH / LOOP_BATCH
    loop_ms = add(f"per-example jacobian loop (N={LOOP_BATCH}, x{scale:g})",
                  {"median_ms": loop["median_ms"] * scale, "min_ms": loop["min_ms"] * scale,
                   "repeats": loop["repeats"], "measured_batch": LOOP_BATCH})

    d_input, d_code = sizes[0], sizes[-1]
    for k in HUTCHINSON_KS:
        errors = hutchinson_errors(encoder, x, exact, k)
        default_side = penalties.hutchinson_side(d_code, d_input, k)
        for side in ("input", "code"):
            probes = torch.randn(k, BATCH, d_input if side == "input" else d_code,
                                 generator=torch.Generator().manual_seed(0))
            timing = time_step(encoder, lambda: penalties._hutchinson(encoder, x, probes, side), repeats, 1)
            label = f"hutchinson k={k} ({'JVP' if side == 'input' else 'VJP'}{', default' if side == default_side else ''})"
            add(label, timing, k=k, side=side, **errors)

    for row in result["rows"]:
        row["x_floor"] = row["median_ms"] / floor_ms
    result["targets"] = {
        "exact_over_floor": exact_ms / floor_ms, "exact_within_1.5x_floor": exact_ms <= 1.5 * floor_ms,
        "loop_over_exact": loop_ms / exact_ms, "exact_20x_faster_than_loop": loop_ms >= 20 * exact_ms,
    }
    return result


def markdown(result: dict) -> str:
    lines = [f"### {result['encoder']}, batch {result['batch']}, float32, penalty + backward",
             "", "| method | median ms | min ms | x floor | rel. err per example | rel. err batch mean |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        errs = (f"{row['rel_rms_per_example']:.3f} | {row['rel_rms_batch_mean']:.4f}" if "k" in row
                else "exact | exact")
        lines.append(f"| {row['method']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | {row['x_floor']:.2f} | {errs} |")
    t = result["targets"]
    diffs = ", ".join(f"{key} {value:.1e}" for key, value in result["max_rel_diff_vs_exact"].items())
    lines += ["", f"exact / floor = {t['exact_over_floor']:.2f} (target <= 1.5: "
              f"{'met' if t['exact_within_1.5x_floor'] else 'MISSED'}); loop / exact = {t['loop_over_exact']:.1f} "
              f"(target >= 20: {'met' if t['exact_20x_faster_than_loop'] else 'MISSED'}); "
              f"max rel. difference of the values vs exact: {diffs}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "loadavg_start": os.getloadavg()}
    results = [bench_encoder(name, sizes, act, args.repeats) for name, (sizes, act) in ENCODERS.items()]
    meta.update(loadavg_end=os.getloadavg(), seconds=time.perf_counter() - started)
    print(f"torch {meta['torch']}, {meta['threads']} threads, load average {meta['loadavg_start'][0]:.1f} -> "
          f"{meta['loadavg_end'][0]:.1f}, {meta['seconds']:.0f} s\n")
    for result in results:
        print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
