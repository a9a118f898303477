"""Where does the 0.73-nat gap between aelab's VAE and pythae's come from? (issue 21)

    python benchmarks/vae_gap.py [--seeds 10] [--epochs 30] [--k 1000] [--json F] [--out F.md]

Same protocol as vae_vs_pythae.py (mnist5k, 784-256-64-2x20 ReLU MLP, Bernoulli likelihood on grey levels, Adam
1e-3, batch 128, final weights). The two trainers already start from the same initial weights (both build the
same MLPs right after torch.manual_seed(seed)) and compute the same loss per image (summed BCE + analytic KL,
mean over the batch, no scheduler, plain Adam); what differs, and is measured here one at a time:

  aelab                 aelab's trainer: BCE computed from the decoder's logits (binary_cross_entropy_with_logits)
  aelab-sigmoid-bce     aelab's trainer, the BCE computed as pythae does, F.binary_cross_entropy(sigmoid(logits), x):
                        its log is clamped at -100 and its gradient is zero where float32's sigmoid rounds to 1
  aelab-foreach-adam    aelab's trainer with torch's default (foreach) Adam in place of the fused kernel
  aelab-no-epoch-eval   aelab's trainer without its end-of-epoch test and validation loss passes
  bare-aelab-streams    the bare loop below, but with aelab's random streams: each epoch's permutation from its
                        own generator seeded by (seed, epoch), and torch.manual_seed((seed, epoch)) before it
  bare-hashed-streams   bare-aelab-streams with each (seed, epoch, stream) seed passed through splitmix64 first
  bare-decoupled        bare-loop re-seeded with seed + 7777 (not seed) after the model is built
  bare-loop             aelab's VAE in a plain loop written the way pythae's trainer runs: a DataLoader shuffling
                        with the global generator, torch.manual_seed(seed) after the model is built, one stream
                        for everything (no per-epoch reseeding), default Adam
  pythae                pythae's TrainingPipeline (its data order and sampling streams)

Every model is scored by one estimator (aelab's IWAE bound, k samples, the same generator seed per model), so the
evaluation is not a candidate. Differences are paired by seed (the same initial weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import load_average, machine  # noqa: E402
from vae_vs_pythae import PairEncoder, iwae_nll, train_pythae  # noqa: E402


def sigmoid_bce(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """pythae's form of the Bernoulli -log p(x|z): BCE on the sigmoid's output, not on the logits."""
    logits, x = torch.broadcast_tensors(logits, x)
    return F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum(-1)


def train_aelab(
    epochs: int, seed: int, out: Path, sigmoid: bool = False, foreach: bool = False, epoch_eval: bool = True
):
    from aelab import load_model
    from aelab import train as trainer
    from aelab.models.vae import VAE
    from aelab.train import TrainConfig, train

    original, make_optimizer, evaluate_loss = VAE.neg_log_likelihood, trainer.make_optimizer, trainer.evaluate_loss
    if not epoch_eval:
        trainer.evaluate_loss = lambda *a, **k: {"loss": 0.0}
    if sigmoid:
        VAE.neg_log_likelihood = sigmoid_bce
    if foreach:
        trainer.make_optimizer = lambda cfg, model: torch.optim.Adam(model.parameters(), lr=cfg.lr)
    try:
        cfg = TrainConfig(model="vae", model_options={"likelihood": "bce"}, epochs=epochs, seed=seed, val_fraction=0.0)
        cfg.out = str(out)
        cfg.tensorboard = False
        run = train(cfg, progress=False, log=lambda *a: None)
    finally:
        VAE.neg_log_likelihood = original  # scored by the one estimator below, logits form
        trainer.make_optimizer = make_optimizer
        trainer.evaluate_loss = evaluate_loss
    return load_model(run)


def splitmix64(z: int) -> int:
    """A well-mixed 64-bit function of z (Steele et al. 2014): seeds that differ in a few bits become unrelated."""
    z = (z + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def train_bare(
    train_x: torch.Tensor,
    epochs: int,
    seed: int,
    aelab_streams: bool = False,
    perm: bool = False,
    reseed: bool = False,
    hashed: bool = False,
    decoupled: bool = False,
):
    """aelab's VAE in a loop shaped like pythae's trainer (see the module docstring)."""
    from torch.utils.data import DataLoader, TensorDataset

    from aelab import models

    torch.manual_seed(seed)
    model = models.create("vae", input_shape=(1, 28, 28), likelihood="bce")
    # pythae re-seeds with the same seed after building the model: the first batches' noise and order then come
    # from the very numbers that drew the first layer's weights. decoupled: another seed there
    torch.manual_seed(seed + 7777 if decoupled else seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(train_x), batch_size=128, shuffle=True)
    for epoch in range(epochs):
        from aelab.train import epoch_seed as linear_seed

        def epoch_seed(seed, epoch, stream):
            return splitmix64(linear_seed(seed, epoch, stream)) if hashed else linear_seed(seed, epoch, stream)

        if aelab_streams or perm:  # the permutation from its own generator, seeded by (seed, epoch)
            order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, 0)))
            batches = [(train_x[idx],) for idx in order.split(128)]
        else:
            batches = loader
        if aelab_streams or reseed:  # the model's noise from torch.manual_seed((seed, epoch))
            torch.manual_seed(epoch_seed(seed, epoch, 1))
        for (xb,) in batches:
            loss = model.loss(xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


PAIRS = [
    ("aelab", "pythae"),
    ("aelab", "aelab-no-epoch-eval"),
    ("aelab", "bare-aelab-streams"),
    ("aelab", "bare-loop"),
    ("bare-loop", "pythae"),
    ("bare-aelab-permutation", "bare-loop"),
    ("bare-aelab-reseed", "bare-loop"),
    ("bare-hashed-streams", "bare-loop"),
    ("bare-aelab-streams", "bare-hashed-streams"),
    ("bare-decoupled", "bare-loop"),
    ("aelab", "bare-decoupled"),
]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--json", default=None)
    p.add_argument("--variants", default=None, help="comma-separated subset of the variants (default all)")
    args = p.parse_args(argv)
    from aelab import data, models
    from aelab.metrics.intervals import paired_difference, summarize

    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_x, _ = data.load("mnist5k", "train")
    test_x, _ = data.load("mnist5k", "test")
    tmp = Path(tempfile.mkdtemp(prefix="aelab-vae-gap-"))
    t_start, load_start = time.perf_counter(), load_average()

    def pythae(seed: int):
        enc, dec, _ = train_pythae(train_x, args.epochs, seed, tmp)
        return models.create("vae", encoder=PairEncoder(enc), decoder=dec).eval()

    variants = {
        "aelab": lambda seed: train_aelab(args.epochs, seed, tmp / f"a{seed}"),
        "aelab-sigmoid-bce": lambda seed: train_aelab(args.epochs, seed, tmp / f"s{seed}", sigmoid=True),
        "aelab-foreach-adam": lambda seed: train_aelab(args.epochs, seed, tmp / f"f{seed}", foreach=True),
        "aelab-no-epoch-eval": lambda seed: train_aelab(args.epochs, seed, tmp / f"e{seed}", epoch_eval=False),
        "bare-aelab-streams": lambda seed: train_bare(train_x, args.epochs, seed, aelab_streams=True),
        "bare-aelab-permutation": lambda seed: train_bare(train_x, args.epochs, seed, perm=True),
        "bare-aelab-reseed": lambda seed: train_bare(train_x, args.epochs, seed, reseed=True),
        "bare-hashed-streams": lambda seed: train_bare(train_x, args.epochs, seed, aelab_streams=True, hashed=True),
        "bare-loop": lambda seed: train_bare(train_x, args.epochs, seed),
        "bare-decoupled": lambda seed: train_bare(train_x, args.epochs, seed, decoupled=True),
        "pythae": pythae,
    }
    chosen = args.variants.split(",") if args.variants else list(variants)
    nll: dict[str, list[float]] = {name: [] for name in chosen}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name in chosen:
            nll[name].append(iwae_nll(variants[name](seed), test_x, args.k, seed))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in nll.items()), file=sys.stderr, flush=True)
    result = {
        "protocol": __doc__.split("\n\n")[2],
        "k": args.k,
        "epochs": args.epochs,
        "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
        "nll": {k: summarize(v) for k, v in nll.items()},
        "paired": {f"{a} - {b}": paired_difference(nll[a], nll[b]) for a, b in PAIRS if a in nll and b in nll},
        "wall_s": time.perf_counter() - t_start,
        "load_average": [load_start, load_average()],
        "machine": machine(),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result[k] for k in ("nll", "paired")}, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
