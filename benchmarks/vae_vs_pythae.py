"""aelab's VAE vs pythae's VAE: same mnist5k split, same architecture, epochs and likelihood, both scored by
aelab's IWAE estimator in the same run, over several seeds.

    python benchmarks/vae_vs_pythae.py [--seeds 5] [--epochs 30] [--k 5000] [--out benchmarks/VAE_VS_PYTHAE.md]

Architecture (both): encoder 784-256-64-40 (ReLU) split into the mean and log-variance of a 20-d Gaussian,
decoder 20-64-256-784 (ReLU) to Bernoulli logits; loss = summed BCE + KL, Adam lr 1e-3, batch 128, 4,000
mnist5k train images, no validation split and the final epoch's weights on both sides (pythae gets no
eval_data, so it cannot pick an epoch on anything). pythae's trained networks are then put into an aelab VAE
(user-supplied encoder/decoder, the logits taken before pythae's sigmoid) so that one estimator, importance
sampling with k samples per image (IWAE bound), scores both on the 1,000 test images. pythae is not an aelab
dependency: install it into the venv after torch (`pip install pythae --no-deps`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import format_load, load_average, machine  # noqa: E402


class PairEncoder(nn.Module):
    """An MLP whose output is split into (mean, log-variance): what aelab's VAE takes from a user encoder."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.flatten(1)).chunk(2, dim=1)


def train_pythae(train_x: torch.Tensor, epochs: int, seed: int, tmp: Path):
    """pythae's VAE with aelab's architecture; returns (encoder MLP, decoder MLP before the sigmoid, seconds)."""
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig

    from aelab.models.ae import mlp

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = mlp([784, 256, 64, 40], "relu")

        def forward(self, x):
            mu, logvar = self.net(x.flatten(1)).chunk(2, dim=1)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = mlp([20, 64, 256, 784], "relu")

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).view(-1, 1, 28, 28))

    for name in ["pythae", *logging.root.manager.loggerDict]:
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.ERROR)
    torch.manual_seed(seed)
    encoder, decoder = Encoder(), Decoder()
    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=20, reconstruction_loss="bce")
    model = VAE(config, encoder=encoder, decoder=decoder)
    trainer = BaseTrainerConfig(
        output_dir=str(tmp / f"pythae-{seed}"),
        num_epochs=epochs,
        per_device_train_batch_size=128,
        learning_rate=1e-3,
        no_cuda=True,
        seed=seed,
    )
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        TrainingPipeline(training_config=trainer, model=model)(train_data=train_x.numpy())
    return encoder.net, decoder.net, time.perf_counter() - t0


def iwae_nll(model, test_x: torch.Tensor, k: int, seed: int) -> float:
    """-mean log p(x) in nats (IWAE bound, k samples), in batches small enough for k = 5000 in memory."""
    batch = max(1, int(4e8 // (k * 784 * 4)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return -float(model.iwae_log_likelihood(test_x, k=k, batch_size=batch, generator=gen).double().mean())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--out", default=None, help="write the Markdown section here")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from aelab import data, models
    from aelab.metrics.intervals import format_interval, paired_difference, summarize
    from aelab.train import TrainConfig, train

    train_x, _ = data.load("mnist5k", "train")
    test_x, _ = data.load("mnist5k", "test")
    tmp = Path(tempfile.mkdtemp(prefix="aelab-vae-pythae-"))
    load_start, t_start = load_average(), time.perf_counter()
    ours, theirs, times = [], [], {"aelab_train_s": [], "pythae_train_s": []}
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        cfg = TrainConfig(
            model="vae", model_options={"likelihood": "bce"}, epochs=args.epochs, seed=seed, val_fraction=0.0
        )  # both train on all 4,000 train images
        cfg.out = str(tmp / f"aelab-{seed}")
        run = train(cfg, progress=False)
        times["aelab_train_s"].append(time.perf_counter() - t0)
        from aelab import load_model

        ours.append(iwae_nll(load_model(run), test_x, args.k, seed))
        enc, dec, seconds = train_pythae(train_x, args.epochs, seed, tmp)
        times["pythae_train_s"].append(seconds)
        wrapped = models.create("vae", encoder=PairEncoder(enc), decoder=dec).eval()
        theirs.append(iwae_nll(wrapped, test_x, args.k, seed))
        print(f"seed {seed}: aelab {ours[-1]:.2f} nats, pythae {theirs[-1]:.2f} nats", file=sys.stderr)
    result = {
        "k": args.k,
        "epochs": args.epochs,
        "seeds": list(range(args.seeds)),
        "aelab_nll": summarize(ours),
        "pythae_nll": summarize(theirs),
        "difference_aelab_minus_pythae": paired_difference(ours, theirs),
        **times,
        "wall_s": time.perf_counter() - t_start,
        "load_average": [load_start, load_average()],
        "machine": machine(),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    if args.out:
        d = result["difference_aelab_minus_pythae"]
        verdict = (
            "the interval excludes 0"
            if d["ci95"] and (d["ci95"][0] > 0 or d["ci95"][1] < 0)
            else "the interval includes 0: no difference shown"
        )
        Path(args.out).write_text(
            "## VAE: aelab vs pythae, scored by one IWAE estimator (hand-run; kept across reruns by run_all.py)\n\n"
            f"`python benchmarks/vae_vs_pythae.py --seeds {args.seeds} --epochs {args.epochs} --k {args.k} "
            f"--out benchmarks/VAE_VS_PYTHAE.md`: {result['wall_s'] / 60:.1f} min on {result['machine']['cpu']}, "
            f"{format_load(*result['load_average'])}.\n\n"
            "Same mnist5k split (4,000 train / 1,000 test), same MLP (784-256-64-2x20 / 20-64-256-784, ReLU), "
            f"Bernoulli likelihood on grey levels, Adam 1e-3, batch 128, {args.epochs} epochs, final weights; "
            f"test NLL = -log p(x) by the IWAE bound with k = {args.k}, mean over the test images, in nats "
            "(lower is better). Intervals: 95% t-intervals over seeds; the difference is paired by seed.\n\n"
            "| model | test NLL (nats) |\n|---|---|\n"
            f"| aelab VAE | {format_interval(result['aelab_nll'], 2)} |\n"
            f"| pythae VAE | {format_interval(result['pythae_nll'], 2)} |\n"
            f"| aelab − pythae (paired) | {format_interval(d, 2)}: {verdict} |\n\n"
            f"Training time per run: aelab {np.mean(times['aelab_train_s']):.1f} s (with its per-epoch test loss "
            f"and checkpoints), pythae {np.mean(times['pythae_train_s']):.1f} s.\n"
        )
    print(json.dumps({k: result[k] for k in ("aelab_nll", "pythae_nll", "difference_aelab_minus_pythae")}, default=str))
    return result


if __name__ == "__main__":
    main()
