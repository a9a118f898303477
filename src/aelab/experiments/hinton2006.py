"""Hinton & Salakhutdinov (Science 2006), "Reducing the dimensionality of data with neural networks".

Four ways to get a code of the same size, compared on held-out digits:
  1. raw pixels (probe only), 2. PCA, 3. the deep autoencoder from random initialisation,
  4. the same deep autoencoder pretrained as a stack of RBMs, unrolled, then fine-tuned with the same budget.
recon_sse is the paper's unit: squared error summed over the 784 pixels, averaged over test images
(the paper: 3.00 for the deep AE, 8.01 for logistic PCA, 13.87 for PCA, 30-D codes, full MNIST).
"""

from __future__ import annotations

from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import report, runs
from ..errors import ConfigError
from ..evaluate import evaluate, raw_probe_accuracy
from ..metrics.codes import encode_all, probe_accuracy, reconstruct_all, tsne_2d
from ..models.deep_ae import LAYER_PRESETS
from ..options import int_list, opt, positive_int, seed_value
from ..train import TrainConfig
from .common import train_or_resume

PAPER = {"deep AE": 3.00, "logistic PCA": 8.01, "PCA": 13.87}


@dataclass
class Settings:
    out: str = field(default="runs/hinton2006", metadata=opt("output folder"))
    quick: bool = field(default=False, metadata=opt("few epochs: a check that runs in a few minutes"))
    dataset: str = field(
        default="mnist5k",
        metadata=opt("dataset name", choices=["mnist5k", "mnist", "fashion-mnist", "kmnist", "digits"]),
    )
    data_dir: str | None = field(default=None, metadata=opt("folder of downloaded datasets"))
    layers: str = field(
        default="hinton2006",
        metadata=opt(
            f"a preset ({', '.join(f'{k}={v}' for k, v in LAYER_PRESETS.items())}) or sizes like 784-1000-500-250-30"
        ),
    )
    epochs: int | None = field(
        default=None, metadata=opt("fine-tuning epochs (same for both inits)", parse=positive_int)
    )
    pretrain_epochs: int | None = field(default=None, metadata=opt("RBM epochs per layer", parse=positive_int))
    optimizer: str = field(default="adam", metadata=opt("fine-tuning optimizer", choices=["adam", "lbfgs"]))
    batch_size: int | None = field(
        default=None, metadata=opt("fine-tuning batch (default 100, lbfgs 1000)", parse=positive_int)
    )
    seed: int = field(default=0, metadata=opt("seed of every model", parse=seed_value))
    train_limit: int | None = field(default=None, metadata=opt(parse=positive_int, hidden=True))  # tests
    no_progress: bool = field(default=False, metadata=opt("no progress bars"))


def _layers(text: str) -> tuple[str | list[int], list[int]]:
    """(the model's `layers` option, the sizes) for a preset name or sizes like 784-1000-500-250-30."""
    if text in LAYER_PRESETS:
        return text, list(LAYER_PRESETS[text])
    try:
        sizes = int_list(text)
    except ArgumentTypeError as e:
        raise ConfigError(f"--layers: expected a preset ({', '.join(LAYER_PRESETS)}) or {e}") from None
    return sizes, sizes


def run(settings: Settings) -> Path:
    out = Path(settings.out)
    layers_option, sizes = _layers(settings.layers)
    code = sizes[-1]
    epochs = settings.epochs or (15 if settings.quick else 50)
    pretrain_epochs = settings.pretrain_epochs or (5 if settings.quick else 50)
    batch = settings.batch_size or (1000 if settings.optimizer == "lbfgs" else 100)
    lr = 1e-3 if settings.optimizer == "adam" else 1.0
    progress = not settings.no_progress
    run_dirs = {}
    for init in ("random", "rbm"):
        cfg = TrainConfig(
            model="deep-ae",
            model_options={"layers": layers_option, "loss": "bce", "init": init, "pretrain_epochs": pretrain_epochs},
            dataset=settings.dataset,
            data_dir=settings.data_dir,
            train_limit=settings.train_limit,
            epochs=epochs,
            batch_size=batch,
            lr=lr,
            optimizer=settings.optimizer,
            seed=settings.seed,
            out=str(out / f"deep-ae-{init}"),
        )
        run_dirs[init] = train_or_resume(cfg, progress=progress)

    config = runs.read_config(run_dirs["rbm"])
    train_x, train_y, test_x, test_y = runs.run_data(config, settings.data_dir)
    x_tr, x_te = train_x.flatten(1).numpy(), test_x.flatten(1).numpy()
    y_tr, y_te = train_y.numpy(), test_y.numpy()

    from sklearn.decomposition import PCA

    pca = PCA(n_components=code, svd_solver="covariance_eigh").fit(x_tr)  # fitted on train only
    pca_tr, pca_te = pca.transform(x_tr), pca.transform(x_te)
    pca_hat = pca.inverse_transform(pca_te)
    pca_sse = float(((pca_hat - x_te) ** 2).sum(1).mean())

    rows, codes, recons, histories, units = [], {}, {}, {}, {}
    rows.append(
        {
            "method": "raw pixels",
            "code size": x_tr.shape[1],
            "recon_sse": None,
            "ratio to PCA": None,
            "probe accuracy": raw_probe_accuracy(config, x_tr, y_tr, x_te, y_te),
        }
    )
    codes["raw pixels"] = x_te
    rows.append(
        {
            "method": f"PCA ({code}-D)",
            "code size": code,
            "recon_sse": pca_sse,
            "ratio to PCA": 1.0,
            "probe accuracy": probe_accuracy(pca_tr, y_tr, pca_te, y_te),
        }
    )
    codes[f"PCA ({code}-D)"], recons["PCA"] = pca_te, pca_hat
    for init, label in [("random", "deep AE, random init"), ("rbm", "deep AE, RBM-pretrained")]:
        result = evaluate(
            run_dirs[init], figures=False, data_dir=settings.data_dir, progress=progress
        )  # this report draws its own maps, side by side
        m = result["metrics"]
        model = runs.load_model(run_dirs[init])
        rows.append(
            {
                "method": label,
                "code size": code,
                "recon_sse": m["recon_sse"],
                "ratio to PCA": m["recon_sse"] / pca_sse,
                "probe accuracy": m["probe_accuracy"],
            }
        )
        codes[label] = encode_all(model, test_x).numpy()
        recons[label] = reconstruct_all(model, test_x).flatten(1).numpy()
        histories[label] = runs.read_history(run_dirs[init])
        units[label] = report.loss_unit(runs.read_config(run_dirs[init]))

    figures = []
    # the same test digits, row by row for each method
    pick = [int(np.flatnonzero(y_te == c)[0]) for c in np.unique(y_te)][:10]
    pick += [int(i) for i in np.random.default_rng(settings.seed).permutation(len(y_te)) if int(i) not in pick][:6]
    shape = test_x.shape[1:]
    image_rows = [x_te[pick].reshape(-1, *shape)] + [recons[k][pick].reshape(-1, *shape) for k in recons]
    figures.append(
        (
            "The same test digits: original, then each method's reconstruction",
            report.plot_image_rows(image_rows, ["original", *recons], out / "reconstructions.png"),
        )
    )
    n = min(2000, len(y_te))
    for name, c in codes.items():
        emb = c[:n] if c.shape[1] == 2 else tsne_2d(c[:n], settings.seed, f"{out.name}/{name}" if progress else None)
        what = "the codes themselves (2-D)" if c.shape[1] == 2 else "t-SNE"
        slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower())
        figures.append(
            (f"{name}: {what} of {n} test codes", report.plot_scatter(emb, y_te[:n], out / f"map-{slug}.png", name))
        )
    if code == 2:
        figures.append(
            (
                "The paper's Fig. 3: 2-D codes of the deep AE beside PCA's first two components",
                _side_by_side(pca_te[:n, :2], codes["deep AE, RBM-pretrained"][:n], y_te[:n], out / "fig3.png"),
            )
        )
    figures.append(
        ("Fine-tuning curves (per-image cross-entropy)", report.plot_curves(histories, out / "curves.png", units=units))
    )

    d = config
    notes = [
        f"Data: {d['dataset']}, {len(train_x)} training and {len(test_x)} test images; everything fitted "
        "(PCA, RBMs, autoencoders, logistic probes) saw only the training images; every number is on the test images.",
        f"Architecture {'-'.join(map(str, sizes))}, logistic units, linear code layer. RBM pretraining: CD-1, "
        f"{pretrain_epochs} epochs per layer, Hinton's settings (lr 0.1, weight cost 2e-4, momentum 0.5 then 0.9, "
        "batch 100; a linear top layer with lr 0.001). Fine-tuning: the same budget for both initialisations, "
        f"{epochs} epochs of {settings.optimizer} (batch {batch}) on the cross-entropy loss.",
        "How this differs from the paper: it used all 60,000 training digits and 10,000 test digits, 50 epochs "
        "per RBM and 200 epochs of conjugate gradients on mini-batches of 1,000; here it is "
        f"{len(train_x)} training digits and {settings.optimizer}. Its numbers (full MNIST, 30-D): deep AE 3.00, "
        "logistic PCA 8.01, PCA 13.87 (recon_sse).",
    ]
    results = {
        "rows": rows,
        "paper_recon_sse": PAPER,
        "layers": sizes,
        "epochs": epochs,
        "pretrain_epochs": pretrain_epochs,
        "optimizer": settings.optimizer,
        "data": {
            "dataset": d["dataset"],
            "n_train": len(train_x),
            "n_test": len(test_x),
            "fit_split": "train",
            "score_split": "test",
        },
        "runs": {k: str(v) for k, v in run_dirs.items()},
    }
    runs.write_json(out / "results.json", results)
    return report.write_report(
        out,
        "Hinton & Salakhutdinov (2006): deep autoencoders vs PCA",
        [(f"{code}-D codes, test set", rows)],
        figures,
        notes,
    )


def _side_by_side(pca2: np.ndarray, ae2: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, pts, title in [(axes[0], pca2, "PCA: first two components"), (axes[1], ae2, "deep AE: 2-D code")]:
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=labels, cmap="tab10", s=4, vmin=-0.5, vmax=9.5)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes, ticks=range(10), label="label")
    return report.save_png(fig, path)
