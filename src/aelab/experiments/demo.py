"""The demo: the MLP autoencoder and the VAE on the embedded mnist5k, evaluated and compared in one report."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import report
from ..evaluate import evaluate, read_history
from ..train import TrainConfig, train


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import positive_int

    p.add_argument("--out", default="runs/demo")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="3 epochs on 1,000 images (smoke test)")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> Path:
    out = Path(args.out)
    epochs, limit = (3, 1000) if args.quick else (args.epochs, None)
    rows, figures, histories = [], [], {}
    for name, options in [("ae", {"loss": "mse"}), ("vae", {"likelihood": "bce"})]:
        cfg = TrainConfig(model=name, model_options=options, dataset=args.dataset, epochs=epochs, seed=args.seed,
                          train_limit=limit, out=str(out / name))
        run_dir = train(cfg, resume=(out / name / "checkpoint.safetensors").exists(), progress=not args.no_progress)
        result = evaluate(run_dir, tsne_points=1000 if args.quick else 2000)
        m = result["metrics"]
        rows.append({"model": name, "recon_sse": m["recon_sse"], "pca_sse (same code size)": m["pca_sse"],
                     "recon_mse": m["recon_mse"], "probe_accuracy": m["probe_accuracy"],
                     "raw_probe_accuracy": m["raw_probe_accuracy"],
                     "test ELBO (nats)": m.get("test_elbo"),
                     "test KL (nats)": m.get("test_kl"), "NLL (nats, IWAE k=100)": m.get("nll_nats")})
        histories[name] = read_history(run_dir)
        figures += [(f"{name}: {c}", p) for c, p in _figures_of(run_dir)]
    figures.insert(0, ("Loss per epoch", report.plot_curves(histories, out / "loss.png")))
    d = result["data"]
    notes = [f"Data: {d['dataset']} ({d['n_train']} train / {d['n_test']} test images). PCA and the logistic probes are "
             "fitted on train and scored on test. recon_sse is the per-image sum of squared errors "
             "(Hinton & Salakhutdinov 2006's unit). VAE numbers are in nats per image, Bernoulli likelihood on "
             "grey-level (not binarized) pixels, so they are not comparable with the 86.76 / 89.78 nats of "
             "binarized MNIST.", f"Epochs: {epochs}, seed {args.seed}. Each run folder holds its config, metrics, "
             "checkpoint and its own report."]
    return report.write_report(out, "aelab demo: MLP autoencoder vs VAE", [("Test metrics", rows)], figures, notes)


def _figures_of(run_dir: Path):
    fig_dir = run_dir / "figures"
    names = [("reconstructions.png", "test images and reconstructions"), ("tsne.png", "t-SNE of test codes"),
             ("samples.png", "samples"), ("interpolation.png", "interpolations")]
    return [(caption, fig_dir / f) for f, caption in names if (fig_dir / f).exists()]
