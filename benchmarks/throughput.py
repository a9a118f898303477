"""Training throughput of the `ae` model: aelab's trainer vs a bare PyTorch loop vs pythae, in one run.

    python benchmarks/throughput.py [--epochs 5] [--repeats 3] [--json out.json]

Rows (samples/s, median over interleaved repeats, on mnist5k's 4,000 training images):
  - 784-256-64-20 (aelab's default ae), batch 128: aelab trainer vs the bare loop (train steps only);
  - 784-512-20 (pythae's default MLP AE), batch 128: aelab end to end (every epoch with its test-loss pass,
    checkpoints and metrics files) vs pythae's TrainingPipeline end to end, and both training-only rates.
MFU: achieved FLOP/s / the machine's measured matmul FLOP/s, counting 6 x parameter MACs per sample.
"""

from __future__ import annotations

import argparse
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
from common import machine, matmul_flops, setup, write_json  # noqa: E402


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


def aelab_run(hidden: list[int], epochs: int, batch: int, tmp: Path) -> tuple[float, float]:
    out = tmp / f"aelab-{time.perf_counter_ns()}"
    t0 = time.perf_counter()
    train(
        TrainConfig(
            model="ae", model_options={"hidden": hidden, "latent": 20}, epochs=epochs, batch_size=batch, out=str(out)
        ),
        progress=False,
    )
    total = time.perf_counter() - t0
    import json

    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(out)
    return sum(r["train_time_s"] for r in rows), total


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
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    setup()
    x, _ = load("mnist5k", "train")
    x_test, _ = load("mnist5k", "test")
    n = len(x) * args.epochs
    peak = matmul_flops()
    tmp = Path(tempfile.mkdtemp())
    res: dict[str, list[float]] = {
        k: []
        for k in [
            "bare_default",
            "aelab_default",
            "bare_pythae_arch_e2e",
            "aelab_pythae_arch_e2e",
            "aelab_pythae_arch_train",
            "pythae_e2e",
        ]
    }
    for _ in range(args.repeats):  # interleaved, so that machine noise hits every contender alike
        res["bare_default"].append(n / bare_loop(x, x_test, [784, 256, 64, 20], args.epochs, args.batch, False)[0])
        res["aelab_default"].append(n / aelab_run([256, 64], args.epochs, args.batch, tmp)[0])
        res["bare_pythae_arch_e2e"].append(n / bare_loop(x, x_test, [784, 512, 20], args.epochs, args.batch, True)[1])
        tr, tot = aelab_run([512], args.epochs, args.batch, tmp)
        res["aelab_pythae_arch_train"].append(n / tr)
        res["aelab_pythae_arch_e2e"].append(n / tot)
        t = pythae_run(x, x_test, args.epochs, args.batch, tmp)
        if t is not None:
            res["pythae_e2e"].append(n / t)
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in res.items() if v}
    flops_default = 6 * param_macs([784, 256, 64, 20])
    out = {
        "machine": machine(),
        "matmul_gflops": peak / 1e9,
        "epochs": args.epochs,
        "batch": args.batch,
        "samples_per_s": med,
        "ratio_aelab_vs_bare_default": med["aelab_default"] / med["bare_default"],
        "mfu_aelab_default": med["aelab_default"] * flops_default / peak,
    }
    if "pythae_e2e" in med:
        out["ratio_aelab_vs_pythae_e2e"] = med["aelab_pythae_arch_e2e"] / med["pythae_e2e"]
    rows = [{"contender": k, "samples/s": f"{v:,.0f}"} for k, v in med.items()]
    out["markdown"] = "\n".join(
        ["| contender | samples/s |", "|---|---|"] + [f"| {r['contender']} | {r['samples/s']} |" for r in rows]
    )
    out["summary"] = [
        {
            "benchmark": "ae training (784-256-64-20, batch 128)",
            "peer": "bare PyTorch loop",
            "ratio": out["ratio_aelab_vs_bare_default"],
            "goal": ">= 0.95",
        },
    ]
    if "ratio_aelab_vs_pythae_e2e" in out:
        out["summary"].append(
            {
                "benchmark": "ae end to end (784-512-20, batch 128, with test pass)",
                "peer": "pythae TrainingPipeline",
                "ratio": out["ratio_aelab_vs_pythae_e2e"],
                "goal": ">= 1.25",
            }
        )
    out["summary"].append(
        {
            "benchmark": "ae training MFU (6 x param MACs / measured matmul FLOP/s)",
            "peer": "—",
            "ratio": out["mfu_aelab_default"],
            "goal": "report",
        }
    )
    print(f"machine: {out['machine']}, matmul {out['matmul_gflops']:.1f} GFLOP/s")
    print(out["markdown"])
    for row in out["summary"]:
        print(f"{row['benchmark']} vs {row['peer']}: {row['ratio']:.3f} (goal {row['goal']})")
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
