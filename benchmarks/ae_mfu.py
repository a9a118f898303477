"""Prototype: CPU training MFU of the demo AE (784-256-64-20, MSE, batch 128, Adam) on mnist5k, by variant.

    PYTHONPATH=src python benchmarks/ae_mfu.py [--rounds 7] [--epochs 1] [--variants base,compile,...]

MFU = samples/s x 6 x parameter MACs per sample / the measured 1024^3 float32 matmul rate (FLOP/s), the
definition BENCHMARKS.md uses. Every variant runs the same maths (same model, same loss, same Adam); each
measurement is `--epochs` epochs of train steps over the 4,000 training images, in a fresh permutation each
epoch; variants and the matmul reference are measured in interleaved rounds (benchmarks/common.py), and each
MFU is the median of per-round fractions with a bootstrap 95% interval.

Variants:
  base          aelab.train's inner loop as of this commit: per-batch x[perm[i:i+b]] gather, zero_grad(None),
                model.loss via a wrapper module, backward, fused Adam, a running loss sum
  gather_once   one x[perm] gather per epoch, then contiguous batch views (the same batches, one copy)
  index_select  x.index_select(0, idx) per batch instead of x[idx] (the same rows, a cheaper kernel)
  compile       torch.compile(model.loss) (inductor; the C++ compiler), fused Adam eager, index_select;
                compile time apart
  compile_step  compile + the Adam step compiled too (foreach Adam traced into one kernel)
  flat          parameters and gradients as views of one flat tensor each, one fused Adam over it
  1thread       base on 1 thread (still against the 2-thread matmul rate); any variant@1 runs on 1 thread
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from aelab.data import load  # noqa: E402
from aelab.models import create  # noqa: E402
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

SIZES = [784, 256, 64, 20]
BATCH = 128


def param_macs(sizes: list[int]) -> int:
    full = sizes + sizes[-2::-1]
    return sum(a * b for a, b in zip(full[:-1], full[1:]))


FLOPS_PER_SAMPLE = 6 * param_macs(SIZES)
CLOCK = [time.perf_counter]  # --clock cpu: time.process_time (CPU seconds of this process; 1-thread runs only)


def one_thread_matmul():
    """The 1024^3 matmul rate on 1 thread, on CLOCK (for --clock cpu with @1 variants)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    out = torch.empty(1024, 1024)

    def measure() -> float:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            t0 = CLOCK[0]()
            for _ in range(4):
                torch.mm(a, b, out=out)
            return 4 * 2 * 1024**3 / (CLOCK[0]() - t0)
        finally:
            torch.set_num_threads(before)

    return measure


def make_variant(name: str, x: torch.Tensor, epochs: int):
    """A contender: each call trains `epochs` epochs and returns samples/s; also returns its compile seconds."""
    torch.manual_seed(0)
    model = create("ae", input_shape=list(x.shape[1:]), hidden=SIZES[1:-1], latent=SIZES[-1])
    n = len(x)
    threads = 1 if name == "1thread" or name.endswith("@1") else 2
    name = name.split("@")[0]  # "compile@1": the compile variant on 1 thread
    compile_s = 0.0
    gen = torch.Generator().manual_seed(0)

    if name in ("base", "1thread", "gather_once", "index_select", "compile"):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        loss_fn = model.loss
        if name == "compile":
            loss_fn = torch.compile(model.loss)

        def step(xb):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(xb)
            loss.backward()
            opt.step()
            return loss
    elif name == "flat":
        # every parameter a view of one flat tensor, every gradient a view of one flat gradient: Adam is
        # elementwise, so one fused Adam over the flat tensor is the same update, with one tensor's overhead
        params = list(model.parameters())
        flat = torch.cat([q.detach().reshape(-1) for q in params])
        flat_grad = torch.zeros_like(flat)
        off = 0
        for q in params:
            q.data = flat[off : off + q.numel()].view_as(q)
            q.grad = flat_grad[off : off + q.numel()].view_as(q)
            off += q.numel()
        flat_param = torch.nn.Parameter(flat)
        flat_param.grad = flat_grad
        opt = torch.optim.Adam([flat_param], lr=1e-3, fused=True)

        def step(xb):
            flat_grad.zero_()  # gradients accumulate in place into the views
            loss = model.loss(xb)
            loss.backward()
            opt.step()
            return loss
    elif name == "compile_step":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)

        @torch.compile
        def opt_step():
            opt.step()

        loss_fn = torch.compile(model.loss)

        def step(xb):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(xb)
            loss.backward()
            opt_step()
            return loss
    else:
        raise ValueError(name)

    if name.startswith("compile"):
        t0 = time.perf_counter()
        for _ in range(3):
            step(x[:BATCH])
        step(x[: n % BATCH or BATCH])  # the last, short batch compiles too
        compile_s = time.perf_counter() - t0

    def run() -> float:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            t0 = CLOCK[0]()
            for _ in range(epochs):
                perm = torch.randperm(n, generator=gen)
                running = torch.zeros((), dtype=torch.float64)
                if name == "gather_once":
                    batches = x[perm].split(BATCH)
                elif name == "index_select" or name.startswith("compile"):
                    batches = (x.index_select(0, idx) for idx in perm.split(BATCH))
                else:
                    batches = (x[idx] for idx in perm.split(BATCH))
                for i, xb in enumerate(batches):
                    loss = step(xb)
                    running += loss.detach() * len(xb)
                    if i % 50 == 0 and not torch.isfinite(loss):
                        break
                float(running)
            return epochs * n / (CLOCK[0]() - t0)
        finally:
            torch.set_num_threads(before)

    return run, compile_s


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--variants", default="base,index_select,compile,compile_step,1thread")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time and a 1-thread matmul reference (for @1 variants on a busy machine)",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    setup()
    load0 = load_average()
    x, _ = load("mnist5k", "train")
    if args.clock == "cpu":
        CLOCK[0] = time.process_time
    contenders, compile_s = {"matmul": one_thread_matmul() if args.clock == "cpu" else matmul_rate()}, {}
    for name in args.variants.split(","):
        contenders[name], compile_s[name] = make_variant(name, x, args.epochs)
    rates = interleaved_rounds(contenders, args.rounds, warmup_rounds=1, log=print)
    load1 = load_average()
    busy = {"load_1min": max_load(load0, load1), "cpus": os.cpu_count()}
    rows = []
    for name in contenders:
        if name == "matmul":
            continue
        mfu = summarize_ratio(rates[name], rates["matmul"], scale=FLOPS_PER_SAMPLE, upper_bound=1.0, **busy)
        first = args.variants.split(",")[0]  # "x base" compares with the first variant listed
        vs_base = summarize_ratio(rates[name], rates[first], **busy)
        rows.append(
            {
                "variant": name,
                "samples_per_s": median(rates[name]),
                "mfu": mfu,
                "vs_base": vs_base,
                "compile_s": compile_s[name],
            }
        )
    md = [
        f"clock: {args.clock}; AE 784-256-64-20, batch {BATCH}, {args.epochs} epoch(s) of 4,000 images per measurement, "
        f"{args.rounds} interleaved rounds; matmul (1024^3) median {median(rates['matmul']) / 1e9:.1f} GFLOP/s; "
        f"{format_load(load0, load1)}.",
        "",
        "| variant | samples/s (median) | MFU [95% CI] | x first variant [95% CI] | compile s |",
        "|---|---:|---|---|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['variant']} | {r['samples_per_s']:,.0f} | {format_ratio(r['mfu'], 3)} | "
            f"{format_ratio(r['vs_base']) if r['vs_base'] else '—'} | {r['compile_s']:.1f} |"
        )
    print("\n".join(md))
    out = {
        "machine": machine(),
        "load_average": [load0, load1],
        "rates": rates,
        "rows": rows,
        "markdown": "\n".join(md),
    }
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
