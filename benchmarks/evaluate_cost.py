"""Issue 31's goal: `aelab evaluate` of a 784-1000-500-250-30 deep AE on the full MNIST (59,500 train, 500
validation, 10,000 test) takes at most the time of 2 training epochs of that network, measured in one run.

    python benchmarks/evaluate_cost.py --data-dir ../shared/data/mnist-idx [--out /tmp/evaluate-cost] [--json FILE]

One process: trains the deep AE (random init, Adam, batch 100) for 2 epochs with the trainer (the epochs' train
time from metrics.jsonl), then runs evaluate twice: with an empty probe cache (the raw-pixel probe is fitted: the
first evaluation of a dataset) and again (the probe read back from the cache: every later run, row and seed of the
same data). Prints and writes the times and the ratios evaluate / (2 epochs); figures are drawn (t-SNE of 1,000
test codes), as `aelab evaluate RUN` does by default.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default=None, help="run folder (default: a temp folder, removed after)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    cache = Path(tempfile.mkdtemp(prefix="aelab-cache-"))
    os.environ["AELAB_DATA"] = str(cache)  # an empty probe cache: the first evaluate fits the raw-pixel probe
    from aelab.evaluate import evaluate
    from aelab.runs import read_history
    from aelab.train import TrainConfig, train

    out = Path(args.out or tempfile.mkdtemp(prefix="aelab-evaluate-cost-")) / "deep-ae"
    if out.exists():
        shutil.rmtree(out)
    cfg = TrainConfig(
        model="deep-ae",
        model_options={"layers": "hinton2006", "loss": "bce", "init": "random"},
        dataset="mnist",
        data_dir=args.data_dir,
        epochs=2,
        batch_size=100,
        out=str(out),
        tensorboard=False,
    )
    t0 = time.perf_counter()
    train(cfg, progress=False, log=lambda *a: None)
    train_wall = time.perf_counter() - t0
    epochs = [h["train_time_s"] for h in read_history(out) if "train_time_s" in h]
    two_epochs = sum(epochs)
    timings = {}
    for name in ("cold probe cache", "warm probe cache"):
        t0 = time.perf_counter()
        evaluate(out, data_dir=args.data_dir, progress=False)
        timings[name] = time.perf_counter() - t0
    result = {
        "benchmark": "evaluate_cost",
        "network": "deep-ae 784-1000-500-250-30, full MNIST (59,500 train / 500 validation / 10,000 test)",
        "two_training_epochs_s": two_epochs,
        "training_wall_s": train_wall,
        "evaluate_s": timings,
        "ratio_to_two_epochs": {k: v / two_epochs for k, v in timings.items()},
        "goal": "evaluate <= 2 training epochs (ratio <= 1)",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    shutil.rmtree(cache, ignore_errors=True)
    if args.out is None:
        shutil.rmtree(out.parent, ignore_errors=True)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
