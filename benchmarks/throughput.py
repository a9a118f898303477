"""Training throughput of the `ae` model: aelab's trainer vs a bare PyTorch loop vs pythae, in one run.

    python benchmarks/throughput.py [--epochs 5] [--repeats 3] [--json out.json]

Rows (samples/s, median over interleaved rounds, on mnist5k's 4,000 training images):
  - 784-256-64-20 (aelab's default ae), batch 128: aelab trainer vs the bare loop (train steps only);
  - 784-512-20 (pythae's default MLP AE), batch 128: aelab end to end (every epoch with its test-loss pass,
    checkpoints and metrics files) vs pythae's TrainingPipeline end to end, and both training-only rates.
Each round measures every contender once (`--epochs` epochs each) and the 1024^3 matmul rate, in rotating
order; every ratio is the median of per-round ratios with a bootstrap 95% interval, or "noisy, rerun"
(benchmarks/common.py). MFU: achieved FLOP/s / the matmul FLOP/s of the same round, counting 6 x parameter
MACs per sample.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).parent))
from aelab.data import load  # noqa: E402
from aelab.train import TrainConfig, train  # noqa: E402
from common import (
    format_load,
    format_ratio,
    interleaved_rounds,
    load_average,
    machine,
    matmul_rate,  # noqa: E402
    max_load,
    setup,
    summarize_ratio,
    write_json,
)


def mlp_ae(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    full = sizes + sizes[-2::-1]
    for i, (a, b) in enumerate(zip(full[:-1], full[1:])):
        layers.append(nn.Linear(a, b))
        if i != len(sizes) - 2 and i != len(full) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def bare_loop(
    x: torch.Tensor, x_test: torch.Tensor, sizes: list[int], epochs: int, batch: int, with_test: bool
) -> tuple[float, float]:
    """The loop a user writes: returns (train-steps time, total time)."""
    torch.manual_seed(0)
    model = mlp_ae(sizes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xf, xt = x.flatten(1), x_test.flatten(1)
    train_time, t0 = 0.0, time.perf_counter()
    for epoch in range(epochs):
        t1 = time.perf_counter()
        perm = torch.randperm(len(xf))
        for idx in perm.split(batch):
            xb = xf[idx]
            loss = (torch.sigmoid(model(xb)) - xb).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_time += time.perf_counter() - t1
        if with_test:
            with torch.no_grad():
                (torch.sigmoid(model(xt)) - xt).pow(2).sum(1).mean().item()
    return train_time, time.perf_counter() - t0


def aelab_run(
    hidden: list[int], epochs: int, batch: int, tmp: Path, compile: bool = False, skip_first: bool = False
) -> tuple[float, float]:
    """aelab's trainer: (train-steps time of the epochs, total time); skip_first leaves out epoch 1's train time
    (with compile=True it holds the compilation)."""
    out = tmp / f"aelab-{time.perf_counter_ns()}"
    kwargs = {"compile": True} if compile else {}
    t0 = time.perf_counter()
    train(
        TrainConfig(
            model="ae",
            model_options={"hidden": hidden, "latent": 20},
            epochs=epochs,
            batch_size=batch,
            val_fraction=0.0,  # the same images as the peers train on
            out=str(out),
            **kwargs,
        ),
        progress=False,
    )
    total = time.perf_counter() - t0
    import json

    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(out)
    return sum(r["train_time_s"] for r in rows[1 if skip_first else 0 :]), total


def pythae_run(x: torch.Tensor, x_test: torch.Tensor, epochs: int, batch: int, tmp: Path) -> float | None:
    try:
        from pythae.models import AE, AEConfig
        from pythae.pipelines import TrainingPipeline
        from pythae.trainers import BaseTrainerConfig
    except ImportError:
        return None
    import logging

    logging.getLogger("pythae").setLevel(logging.ERROR)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.ERROR)
    torch.manual_seed(0)
    model = AE(AEConfig(input_dim=(1, 28, 28), latent_dim=20))
    cfg = BaseTrainerConfig(
        output_dir=str(tmp / "pythae"),
        num_epochs=epochs,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        learning_rate=1e-3,
        no_cuda=True,
    )
    pipe = TrainingPipeline(training_config=cfg, model=model)
    import contextlib
    import io

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        pipe(train_data=x.numpy(), eval_data=x_test.numpy())
    return time.perf_counter() - t0


def param_macs(sizes: list[int]) -> int:
    full = sizes + sizes[-2::-1]
    return sum(a * b for a, b in zip(full[:-1], full[1:]))


def main(argv=None) -> dict:  # noqa: C901
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5, help="epochs per measurement (one contender, one round)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds, after one warm-up round")
    p.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)  # old name of --rounds
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--compile",
        action="store_true",
        help="also measure aelab with TrainConfig(compile=True) (epochs 2.. of each run; epoch 1 compiles)",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.repeats is not None:
        args.rounds = args.repeats
    setup()
    load_start = load_average()
    x, _ = load("mnist5k", "train")
    x_test, _ = load("mnist5k", "test")
    n = len(x) * args.epochs
    tmp = Path(tempfile.mkdtemp())
    side: dict[str, list[float]] = {"aelab_pythae_arch_train": []}

    def aelab_pythae_arch_e2e() -> float:
        tr, tot = aelab_run([512], args.epochs, args.batch, tmp)
        side["aelab_pythae_arch_train"].append(n / tr)
        return n / tot

    contenders = {
        "matmul": matmul_rate(),  # FLOP/s of 1024^3 float32 products, measured in every round
        "bare_default": lambda: n / bare_loop(x, x_test, [784, 256, 64, 20], args.epochs, args.batch, False)[0],
        "aelab_default": lambda: n / aelab_run([256, 64], args.epochs, args.batch, tmp)[0],
        "bare_pythae_arch_e2e": lambda: n / bare_loop(x, x_test, [784, 512, 20], args.epochs, args.batch, True)[1],
        "aelab_pythae_arch_e2e": aelab_pythae_arch_e2e,
    }
    if args.compile:
        n_c = len(x) * (args.epochs - 1)
        contenders["aelab_default_compile"] = lambda: (
            n_c / aelab_run([256, 64], args.epochs, args.batch, tmp, compile=True, skip_first=True)[0]
        )
    if pythae_run(x[:256], x_test[:256], 1, args.batch, tmp) is not None:  # installed? (also warms it up)
        contenders["pythae_e2e"] = lambda: n / pythae_run(x, x_test, args.epochs, args.batch, tmp)
    res = interleaved_rounds(contenders, args.rounds, warmup_rounds=1, log=print)
    res["aelab_pythae_arch_train"] = side["aelab_pythae_arch_train"][1:]  # drop the warm-up round's
    shutil.rmtree(tmp, ignore_errors=True)
    load_end = load_average()
    med = {k: statistics.median(v) for k, v in res.items() if v}
    flops_default = 6 * param_macs([784, 256, 64, 20])
    busy = {"load_1min": max_load(load_start, load_end), "cpus": os.cpu_count()}
    ratios = {
        "aelab_vs_bare_default": summarize_ratio(res["aelab_default"], res["bare_default"], **busy),
        "mfu_aelab_default": summarize_ratio(
            res["aelab_default"], res["matmul"], scale=flops_default, upper_bound=1, **busy
        ),
        "mfu_bare_default": summarize_ratio(
            res["bare_default"], res["matmul"], scale=flops_default, upper_bound=1, **busy
        ),
    }
    if "aelab_default_compile" in res:
        ratios["mfu_aelab_default_compile"] = summarize_ratio(
            res["aelab_default_compile"], res["matmul"], scale=flops_default, upper_bound=1, **busy
        )
        ratios["compile_vs_eager"] = summarize_ratio(res["aelab_default_compile"], res["aelab_default"], **busy)
    if "pythae_e2e" in res:
        ratios["aelab_vs_pythae_e2e"] = summarize_ratio(res["aelab_pythae_arch_e2e"], res["pythae_e2e"], **busy)
    out = {
        "machine": machine(),
        "load_average": [load_start, load_end],
        "epochs": args.epochs,
        "batch": args.batch,
        "rounds": args.rounds,
        "matmul_gflops": med["matmul"] / 1e9,
        "samples_per_s": med,
        "raw": res,
        "ratios": ratios,
    }
    md = [
        f"{args.rounds} interleaved rounds (after one warm-up round) of {args.epochs} epochs per contender; "
        f"{format_load(load_start, load_end)}; matmul 1024³ median {med['matmul'] / 1e9:.1f} GFLOP/s "
        "(measured in every round).",
        "",
        "| contender | samples/s (median over rounds) |",
        "|---|---:|",
    ]
    md += [f"| {k} | {v:,.0f} |" for k, v in med.items() if k != "matmul"]
    out["markdown"] = "\n".join(md)
    out["summary"] = [
        {
            "benchmark": "ae training (784-256-64-20, batch 128)",
            "peer": "bare PyTorch loop",
            "num": med["aelab_default"],
            "den": med["bare_default"],
            "unit": "samples/s",
            "r": ratios["aelab_vs_bare_default"],
            "goal": ">= 0.95",
        },
    ]
    if "aelab_vs_pythae_e2e" in ratios:
        out["summary"].append(
            {
                "benchmark": "ae end to end (784-512-20, batch 128, with test pass)",
                "peer": "pythae TrainingPipeline",
                "num": med["aelab_pythae_arch_e2e"],
                "den": med["pythae_e2e"],
                "unit": "samples/s",
                "r": ratios["aelab_vs_pythae_e2e"],
                "goal": ">= 1.25",
            }
        )
    out["summary"].append(
        {
            "benchmark": "ae training MFU (6 x param MACs x samples/s / matmul FLOP/s)",
            "peer": "torch.mm 1024³, same rounds",
            "num": med["aelab_default"] * flops_default / 1e9,
            "den": med["matmul"] / 1e9,
            "unit": "GFLOP/s",
            "r": ratios["mfu_aelab_default"],
            "goal": ">= 0.70",
        }
    )
    if "aelab_default_compile" in res:
        out["summary"].append(
            {
                "benchmark": "ae training MFU with TrainConfig(compile=True) (epochs after the first)",
                "peer": "torch.mm 1024³, same rounds",
                "num": med["aelab_default_compile"] * flops_default / 1e9,
                "den": med["matmul"] / 1e9,
                "unit": "GFLOP/s",
                "r": ratios["mfu_aelab_default_compile"],
                "goal": ">= 0.70",
            }
        )
        out["summary"].append(
            {
                "benchmark": "ae training, TrainConfig(compile=True) / eager",
                "peer": "aelab eager",
                "num": med["aelab_default_compile"],
                "den": med["aelab_default"],
                "unit": "samples/s",
                "r": ratios["compile_vs_eager"],
                "goal": "report",
            }
        )
    out["summary"].append(
        {
            "benchmark": "bare-loop training MFU (same model, same count)",
            "peer": "torch.mm 1024³, same rounds",
            "num": med["bare_default"] * flops_default / 1e9,
            "den": med["matmul"] / 1e9,
            "unit": "GFLOP/s",
            "r": ratios["mfu_bare_default"],
            "goal": "report",
        }
    )
    print(f"machine: {out['machine']}")
    print(out["markdown"])
    for row in out["summary"]:
        print(f"{row['benchmark']} vs {row['peer']}: {format_ratio(row['r'], 3)} (goal {row['goal']})")
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
