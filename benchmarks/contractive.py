"""Benchmark the contractive autoencoder (Rifai et al., ICML 2011): its train step, and the penalty's methods.

(a) One train step (forward + backward + Adam) of the 784-1000 sigmoid autoencoder,
    batch 128 of mnist5k digits, float32, cross-entropy loss:

      AE                 aelab `ae` hidden=[1000], latent=None, activation=sigmoid (the baseline)
      DAE-g              aelab `dae`, Gaussian noise 0.3
      CAE (reused)       aelab `cae`, penalty="auto": the closed form from the forward pass's activations
      CAE (second pass)  the same loss with the penalty from jacobian_frobenius_sq(encoder, x, "analytic"),
                         i.e. a second encoder pass: what the reuse saves
      CAE hutchinson k=8 aelab `cae`, penalty="hutchinson", k=8 (unbiased estimate)
      CAE exact          aelab `cae`, penalty="exact" (784 JVPs per example; fewer repeats)

    Target: CAE (reused) / AE <= 1.5x (goal ~1.1x). Timed round-robin (every round times
    each variant once) and "x AE" is the median over rounds of the within-round ratio, so
    load on a shared machine hits all variants alike.

(b) The penalty alone (exact routes, per-example loop and Hutchinson), from
    benchmarks/contractive_penalty.py (imported, not copied); --skip-penalty-table skips it.

Usage: PYTHONPATH=src python benchmarks/contractive.py [--json out.json] [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: import the sibling benchmark

import contractive_penalty  # noqa: E402
from aelab import data, models  # noqa: E402
from aelab.models import penalties  # noqa: E402
from aelab.models.ae import reconstruction_loss  # noqa: E402
from common import summarize_ratio  # noqa: E402

BATCH, SEED = 128, 0
ONE_LAYER = {"hidden": [1000], "latent": None, "activation": "sigmoid", "loss": "bce"}


def second_pass_loss(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The CAE loss written the obvious way: the penalty from a second pass through the encoder."""
    code = model.encode(x)
    recon = reconstruction_loss(model.decode_logits(code), x, "bce", logits=True).mean()
    return (
        recon
        + model.options["lam"] * penalties.jacobian_frobenius_sq(model.encoder, x.flatten(1), method="analytic").mean()
    )


def variants() -> dict[str, tuple[str, dict, object]]:
    """label -> (model name, options, loss function or None for model.loss)."""
    return {
        "AE": ("ae", ONE_LAYER, None),
        "DAE-g": ("dae", dict(ONE_LAYER, noise="gaussian", level=0.3), None),
        "CAE (reused activations)": ("cae", ONE_LAYER, None),
        "CAE (second encoder pass)": ("cae", ONE_LAYER, second_pass_loss),
        "CAE hutchinson k=8": ("cae", dict(ONE_LAYER, penalty="hutchinson", k=8), None),
    }


def make_step(name: str, options: dict, loss_fn, x: torch.Tensor):
    torch.manual_seed(SEED)
    model = models.create(name, input_shape=list(x.shape[1:]), **options)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_of = (lambda: loss_fn(model, x)) if loss_fn is not None else (lambda: model.loss(x))

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_of().backward()
        opt.step()
        return 1e3 * (time.perf_counter() - start)

    return step


def bench_train_step(x: torch.Tensor, repeats: int, exact_repeats: int) -> dict:
    steps = {label: make_step(name, options, loss_fn, x) for label, (name, options, loss_fn) in variants().items()}
    times: dict[str, list[float]] = {label: [] for label in steps}
    for i in range(2 + repeats):  # 2 warm-up rounds
        for label, step in steps.items():
            ms = step()
            if i >= 2:
                times[label].append(ms)
    rows = []
    for label, ts in times.items():
        r = summarize_ratio(ts, times["AE"], load_1min=os.getloadavg()[0], cpus=os.cpu_count())  # the noisy rule
        rows.append(
            {
                "variant": label,
                "median_ms": statistics.median(ts),
                "min_ms": min(ts),
                "x_ae": r["ratio"],
                "x_ae_ratio": r,
                "repeats": len(ts),
            }
        )
    # the exact penalty is ~100x slower: a few steps, compared with the AE's median
    exact = make_step("cae", dict(ONE_LAYER, penalty="exact"), None, x)
    exact()
    exact_ts = [exact() for _ in range(exact_repeats)]
    ae_ms = statistics.median(times["AE"])
    rows.append(
        {
            "variant": "CAE exact (784 JVPs per example)",
            "median_ms": statistics.median(exact_ts),
            "min_ms": min(exact_ts),
            "x_ae": statistics.median(exact_ts) / ae_ms,
            "repeats": exact_repeats,
        }
    )
    cae = next(r for r in rows if r["variant"] == "CAE (reused activations)")
    ratio = cae["x_ae"]
    return {
        "batch": len(x),
        "rows": rows,
        "cae_over_ae": cae["x_ae_ratio"],
        "targets": {"cae_over_ae": ratio, "within_1.5x": ratio <= 1.5, "near_1.1x": ratio <= 1.15},
    }


def markdown_train_step(result: dict) -> str:
    lines = [
        f"### Train step (forward + backward + Adam), 784-1000 sigmoid, batch {result['batch']}, float32",
        "",
        "| variant | median ms | min ms | x AE |",
        "|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | {row['x_ae']:.2f} |")
    t = result["targets"]
    lines += [
        "",
        f"CAE / AE = {t['cae_over_ae']:.2f} (goal <= 1.5: {'met' if t['within_1.5x'] else 'MISSED'}; "
        f"target ~1.1: {'met' if t['near_1.1x'] else 'not met'})",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds of the train-step comparison")
    parser.add_argument("--exact-repeats", type=int, default=2)
    parser.add_argument("--penalty-repeats", type=int, default=4, help="rounds of the penalty table (b)")
    parser.add_argument("--skip-penalty-table", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    meta = contractive_penalty.run_meta()
    x = data.load("mnist5k", "train")[0][:BATCH]
    train_step = bench_train_step(x, args.repeats, args.exact_repeats)
    penalty = (
        []
        if args.skip_penalty_table
        else [
            contractive_penalty.bench_encoder(name, sizes, act, args.penalty_repeats)
            for name, (sizes, act) in contractive_penalty.ENCODERS.items()
        ]
    )
    meta.update(loadavg_end=os.getloadavg(), seconds=time.perf_counter() - started)
    print(
        f"torch {meta['torch']}, {meta['threads']} threads, load average {meta['loadavg_start'][0]:.1f} -> "
        f"{meta['loadavg_end'][0]:.1f}, {meta['seconds']:.0f} s\n"
    )
    print(markdown_train_step(train_step))
    for result in penalty:
        print(contractive_penalty.markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "train_step": train_step, "penalty": penalty}, f, indent=2)


if __name__ == "__main__":
    main()
