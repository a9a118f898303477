"""The demo: the MLP autoencoder and the VAE on the embedded mnist5k, evaluated and compared in one report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import report
from ..evaluate import evaluate
from ..options import opt, positive_int, seed_value
from ..runs import read_config, read_history
from ..train import TrainConfig
from .common import train_or_resume


@dataclass
class Settings:
    out: str = field(default="runs/demo", metadata=opt("output folder"))
    dataset: str = field(default="mnist5k", metadata=opt("dataset name (aelab data list)"))
    epochs: int = field(default=30, metadata=opt("epochs per model", parse=positive_int))
    seed: int = field(default=0, metadata=opt("seed of every model", parse=seed_value))
    quick: bool = field(default=False, metadata=opt("3 epochs on 1,000 images (smoke test)"))
    no_progress: bool = field(default=False, metadata=opt("no progress bars"))


def run(settings: Settings) -> Path:
    out = Path(settings.out)
    epochs, limit = (3, 1000) if settings.quick else (settings.epochs, None)
    rows, figures, histories, units = [], [], {}, {}
    for name, options in [("ae", {"loss": "mse"}), ("vae", {"likelihood": "bce"})]:
        cfg = TrainConfig(
            model=name,
            model_options=options,
            dataset=settings.dataset,
            epochs=epochs,
            seed=settings.seed,
            train_limit=limit,
            out=str(out / name),
        )
        run_dir = train_or_resume(cfg, progress=not settings.no_progress)
        result = evaluate(run_dir, tsne_points=1000 if settings.quick else 2000, progress=not settings.no_progress)
        m = result["metrics"]
        rows.append(
            {
                "model": name,
                "recon_sse": m["recon_sse"],
                "pca_sse (same code size)": m["pca_sse"],
                "recon_mse": m["recon_mse"],
                "probe_accuracy": m["probe_accuracy"],
                "raw_probe_accuracy": m["raw_probe_accuracy"],
                "test ELBO (nats)": m.get("test_elbo"),
                "test KL (nats)": m.get("test_kl"),
                "NLL (nats, IWAE k=100)": m.get("nll_nats"),
            }
        )
        histories[name] = read_history(run_dir)
        units[name] = report.loss_unit(read_config(run_dir))
        figures += [(f"{name}: {c}", p) for c, p in _figures_of(run_dir)]
    figures.insert(0, ("Loss per epoch", report.plot_curves(histories, out / "loss.png", units=units)))
    d = result["data"]
    notes = [
        f"Data: {d['dataset']} ({d['n_train']} train / {d['n_test']} test images). PCA and the logistic probes are "
        "fitted on train and scored on test. recon_sse is the per-image sum of squared errors "
        "(Hinton & Salakhutdinov 2006's unit). VAE numbers are in nats per image, Bernoulli likelihood on "
        "grey-level (not binarized) pixels, so they are not comparable with the 86.76 / 89.78 nats of "
        "binarized MNIST.",
        f"Epochs: {epochs}, seed {settings.seed}. Each run folder holds its config, metrics, "
        "checkpoint and its own report.",
    ]
    return report.write_report(out, "aelab demo: MLP autoencoder vs VAE", [("Test metrics", rows)], figures, notes)


def _figures_of(run_dir: Path):
    fig_dir = run_dir / "figures"
    names = [
        ("reconstructions.png", "test images and reconstructions"),
        ("elbo_terms.png", "reconstruction and KL terms per epoch"),
        ("tsne.png", "t-SNE of test codes"),
        ("kl_per_dimension.png", "KL per latent dimension"),
        ("samples.png", "samples"),
        ("traversals.png", "latent traversals"),
        ("interpolation.png", "interpolations (real images at both ends)"),
    ]
    return [(caption, fig_dir / f) for f, caption in names if (fig_dir / f).exists()]
