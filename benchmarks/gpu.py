"""The GPU path against a hand-written loop, and checkpoints that never dominate (issue 25), in one run:

    python benchmarks/gpu.py --device cuda [--precision bf16] [--rounds 5] [--json F] [--out F.md]
    python benchmarks/gpu.py --device cpu --quick          # the smoke run the test suite makes

Rows, each measured in interleaved rounds (benchmarks/common.py: ratios per round, median, bootstrap 95%
interval), on random images in [0, 1] (the speed does not depend on what the pixels are):
  small AE   784-512-20, batch 128: aelab's train-step rate and end-to-end rate (train(): per-epoch test pass,
             checkpoints, files) against a bare PyTorch loop of the same model, loss and Adam.
  wide AE    784-W-W-W-256 (W = 4096 on a GPU, 1024 on a CPU, 256 with --quick), short epochs: the end-to-end
             rate against the run's own train-step rate, with the automatic checkpoint cadence and with a
             checkpoint every epoch (--checkpoint-every 0): the checkpoint's share of the run.
  RBM        CD-1 784-1000 at batch 100 and 1000: samples/s as a fraction of the same-precision matmul rate of
             its five products.
The device, its matmul ceiling at the chosen precision, and the load average are printed with the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (  # noqa: E402
    format_load,
    format_ratio,
    interleaved_rounds,
    load_average,
    machine,
    max_load,
    median,
    summarize_ratio,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """FLOP/s of n x n @ n x n products on the device at dtype (tf32 through the float32 matmul precision)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def bare_loop(sizes: list[int], x: torch.Tensor, batch: int, epochs: int, autocast) -> float:
    """Samples/s of a hand-written loop: the MLP AE (ReLU, sigmoid output), summed BCE, Adam 1e-3, shuffled."""
    from aelab.models.ae import mlp

    device = x.device
    enc, dec = mlp(sizes, "relu").to(device), mlp(list(reversed(sizes)), "relu").to(device)
    params = [*enc.parameters(), *dec.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    flat = x.flatten(1)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(flat), device=device).split(batch):
            xb = flat[idx]
            with autocast:
                loss = F.binary_cross_entropy_with_logits(dec(enc(xb)), xb, reduction="sum") / len(xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sync(device)
    return len(flat) * epochs / (time.perf_counter() - t0)


def aelab_run(sizes, x, x_test, batch, epochs, device, precision, tmp: Path, checkpoint_every=None) -> dict:
    """aelab's train() of the same AE: its own train-step rate (from metrics.jsonl) and its end-to-end rate."""
    from aelab import data
    from aelab.runs import read_history
    from aelab.train import TrainConfig, train

    out = Path(tempfile.mkdtemp(dir=tmp))
    cfg = TrainConfig(
        model="ae",
        model_options={"hidden": sizes[1:-1], "latent": sizes[-1], "loss": "bce"},
        dataset=data.from_arrays(x.cpu().numpy(), None, x_test.cpu().numpy(), None),
        val_fraction=0.0,
        epochs=epochs,
        batch_size=batch,
        device=str(device),
        precision=precision,
        checkpoint_every=checkpoint_every,
        tensorboard=False,
        out=str(out / "run"),
    )
    sync(device)
    t0 = time.perf_counter()
    run = train(cfg, progress=False, log=lambda *a: None)
    sync(device)
    wall = time.perf_counter() - t0
    history = [h for h in read_history(run) if "train_time_s" in h]
    steps = sum(h["train_time_s"] for h in history)
    return {"train_step_rate": len(x) * len(history) / steps, "end_to_end_rate": len(x) * epochs / wall}


def rbm_rate(n_hidden: int, batch: int, x: torch.Tensor, precision: str) -> float:
    """Samples/s of one CD-1 epoch of aelab's RBM on x's device, its products at `precision`."""
    from aelab.models.rbm import RBM

    rbm = RBM(x.shape[1], n_hidden, generator=torch.Generator(device=x.device).manual_seed(0))
    rbm.fit(x[: 5 * batch], epochs=1, batch_size=batch, monitor_size=0, precision=precision)  # warm-up
    return rbm.fit(x, epochs=1, batch_size=batch, lr=0.1, monitor_size=0, precision=precision)[0]["samples_per_second"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny sizes and 2 rounds: a smoke run (about a minute)")
    p.add_argument("--json", default=None)
    p.add_argument("--out", default=None, help="write the Markdown table here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    rounds = 2 if args.quick else args.rounds
    gpu = device.type == "cuda"
    n_train = 1024 if args.quick else (60000 if gpu else 8192)
    width = 256 if args.quick else (4096 if gpu else 1024)
    wide_n = 256 if args.quick else (65536 if gpu else 2048)
    wide_epochs = 3 if args.quick else 20  # enough epochs that the run's start-up is a small share
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n_train, 1, 28, 28, generator=g).to(device)
    x_test = torch.rand(max(256, n_train // 10), 1, 28, 28, generator=g).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=gpu and args.precision == "bf16")
    if args.precision == "tf32":
        torch.set_float32_matmul_precision("high")
    tmp = Path(tempfile.mkdtemp(prefix="aelab-gpu-bench-"))
    load_start, t_start = load_average(), time.perf_counter()
    small, wide = [784, 512, 20], [784, width, width, width, 256]
    small_side: dict[str, list[float]] = {"aelab_train_step": []}
    wide_side: dict[str, list[float]] = {"auto_train_step": [], "every_train_step": []}

    def aelab_small() -> float:
        r = aelab_run(small, x, x_test, 128, 1 if args.quick else 2, device, args.precision, tmp)
        small_side["aelab_train_step"].append(r["train_step_rate"])
        return r["end_to_end_rate"]

    def wide_with(cadence, key):
        def measure() -> float:
            r = aelab_run(wide, x[:wide_n], x_test[:256], 512 if not args.quick else 128, wide_epochs, device,
                          args.precision, tmp, checkpoint_every=cadence)  # fmt: skip
            wide_side[key].append(r["train_step_rate"])
            return r["end_to_end_rate"]

        return measure

    rates = interleaved_rounds(
        {
            "bare_small": lambda: bare_loop(small, x, 128, 1 if args.quick else 2, autocast),
            "aelab_small_e2e": aelab_small,
            "wide_auto_e2e": wide_with(None, "auto_train_step"),
            "wide_every_epoch_e2e": wide_with(0, "every_train_step"),
        },
        rounds,
        warmup_rounds=1,
        log=lambda line: print(line, file=sys.stderr),
    )
    small_side = {k: v[1:] for k, v in small_side.items()}  # the warm-up round's are dropped
    wide_side = {k: v[1:] for k, v in wide_side.items()}

    def busy_now() -> dict:
        return {"load_1min": max_load(load_start, load_average()), "cpus": os.cpu_count()}

    rbm_x = torch.rand(2000 if args.quick else 20000, 784, generator=g).round()
    from rbm import matmul_seconds_per_step

    rbm_rows = {}
    rbm_x = rbm_x.to(device)
    for batch in (100, 1000):
        flops = 5 * 2 * 784 * 1000
        steps = len(rbm_x) // batch
        pairs = [
            (
                rbm_rate(1000, batch, rbm_x, args.precision),
                batch / matmul_seconds_per_step(batch, 784, 1000, steps, rbm_x.device, args.precision),
            )
            for _ in range(rounds)
        ]  # each round: the RBM's rate, then the rate of its five products alone at the same shapes and precision
        rbm_rows[batch] = {
            "samples_per_s": median([a for a, _ in pairs]),
            "tflops": median([a for a, _ in pairs]) * flops / 1e12,
            "fraction_of_its_matmuls": summarize_ratio([a for a, _ in pairs], [b for _, b in pairs], **busy_now()),
        }
    busy = {"load_1min": max_load(load_start, load_average()), "cpus": os.cpu_count()}
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    ceiling = matmul_ceiling(device, dtype, 4096 if gpu else 1024)
    result = {
        "device": torch.cuda.get_device_name(device) if gpu else machine()["cpu"],
        "precision": args.precision,
        "matmul_tflops": ceiling / 1e12,
        "quick": args.quick,
        "rounds": rounds,
        "sizes": {"small": small, "wide": wide, "n_train": n_train, "wide_n": wide_n},
        "rates": {
            **{k: median(v) for k, v in rates.items()},
            **{k: median(v) for k, v in small_side.items()},
            **{k: median(v) for k, v in wide_side.items()},
        },  # fmt: skip
        "aelab_train_step_vs_bare": summarize_ratio(small_side["aelab_train_step"], rates["bare_small"], **busy),
        "aelab_e2e_vs_bare": summarize_ratio(rates["aelab_small_e2e"], rates["bare_small"], **busy),
        "wide_auto_e2e_vs_train_step": summarize_ratio(rates["wide_auto_e2e"], wide_side["auto_train_step"], **busy),
        "wide_every_epoch_e2e_vs_train_step": summarize_ratio(
            rates["wide_every_epoch_e2e"], wide_side["every_train_step"], **busy
        ),
        "rbm": rbm_rows,
        "wall_s": time.perf_counter() - t_start,
        "load_average": [load_start, load_average()],
    }
    lines = [
        f"Device: {result['device']} ({args.precision}; its {('4096' if gpu else '1024')}² matmul: "
        f"{result['matmul_tflops']:.3g} TFLOP/s); {format_load(*result['load_average'])}; "
        f"{rounds} interleaved rounds, {result['wall_s']:.0f} s.",
        "",
        "| row | ratio [95% interval] |",
        "|---|---|",
        f"| small AE: aelab train steps / bare loop | {format_ratio(result['aelab_train_step_vs_bare'])} |",
        f"| small AE: aelab end to end / bare loop | {format_ratio(result['aelab_e2e_vs_bare'])} |",
        f"| wide AE {wide}: end to end / train steps, automatic checkpoints | "
        f"{format_ratio(result['wide_auto_e2e_vs_train_step'])} |",
        f"| wide AE: end to end / train steps, a checkpoint every epoch | "
        f"{format_ratio(result['wide_every_epoch_e2e_vs_train_step'])} |",
    ]
    for batch, row in rbm_rows.items():
        lines.append(
            f"| RBM CD-1 784-1000, batch {batch} ({row['samples_per_s']:,.0f} samples/s, {row['tflops']:.3g} TFLOP/s): "
            f"its rate / its five products' matmul rate at {args.precision} | {format_ratio(row['fraction_of_its_matmuls'])} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    assert all(math.isfinite(v) for v in result["rates"].values())
    return result


if __name__ == "__main__":
    main()
