"""Hinton & Salakhutdinov (Science 2006), "Reducing the dimensionality of data with neural networks".

Four ways to get a code of the same size, compared on held-out digits:
  1. raw pixels (probe only), 2. PCA, 3. the deep autoencoder from random initialisation,
  4. the same deep autoencoder pretrained as a stack of RBMs, unrolled, then fine-tuned with the same budget.
recon_sse is the paper's unit: squared error summed over the 784 pixels, averaged over test images
(the paper: 3.00 for the deep AE, 8.01 for logistic PCA, 13.87 for PCA, 30-D codes, full MNIST).
"""

from __future__ import annotations

import sys
import time
from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .. import data as datamod
from .. import report, runs
from ..data.sources import capped_val_fraction, validation_split
from ..errors import ConfigError
from ..evaluate import evaluate
from ..metrics.codes import encode_all, reconstruct_all, tsne_2d, validated_probe
from ..metrics.reconstruction import sse_per_image
from ..models.deep_ae import LAYER_PRESETS
from ..options import float_list, int_list, opt, positive_int, seed_value
from ..train import TrainConfig
from . import multiseed
from .common import (
    OFFICIAL_TEST,
    jobs_field,
    kept_epoch,
    official_test_status,
    patience_field,
    seeds_field,
    splits_of,
    train_or_resume,
    train_split_size,
    val_fraction_field,
)

PAPER = {"deep AE": 3.00, "logistic PCA": 8.01, "PCA": 13.87}


ROW_KEY = "method"
PAIRS = [("deep AE, RBM-pretrained", "deep AE, random init", "recon_sse")]
PLOT_COLUMNS = ["ratio to PCA", "recon_sse"]
COLUMNS = ["code size", "recon_sse", "ratio to PCA", "probe accuracy", "weight cost (chosen)", "epoch kept"]
FIXED_COLUMNS = ["code size"]
CHOICE_COLUMNS = ["weight cost (chosen)", "epoch kept"]
# fine-tuning weight decay grids (full, --quick), chosen per initialisation on the validation split
WEIGHT_DECAY_GRID = ((1e-4, 1e-3), (0.0,))
INITS = [("random", "deep AE, random init"), ("rbm", "deep AE, RBM-pretrained")]


@dataclass
class Settings:
    out: str = field(default="runs/hinton2006", metadata=opt("output folder"))
    quick: bool = field(default=False, metadata=opt("few epochs: a check that runs in a few minutes"))
    dataset: str = field(
        default="mnist5k",
        metadata=opt("dataset name", choices=["mnist5k", "mnist", "fashion-mnist", "kmnist", "digits"]),
    )
    data_dir: str | None = field(
        default=None,
        metadata=opt(
            "folder of downloaded datasets; when it holds the official MNIST t10k files, every chosen model is "
            "also scored on them"
        ),
    )
    layers: str = field(
        default="hinton2006",
        metadata=opt(
            f"a preset ({', '.join(f'{k}={v}' for k, v in LAYER_PRESETS.items())}) or sizes like 784-1000-500-250-30"
        ),
    )
    epochs: int | None = field(
        default=None,
        metadata=opt("most fine-tuning epochs (same for both inits; default 80, --quick 15)", parse=positive_int),
    )
    pretrain_epochs: int | None = field(default=None, metadata=opt("RBM epochs per layer", parse=positive_int))
    optimizer: str = field(default="adam", metadata=opt("fine-tuning optimizer", choices=["adam", "lbfgs"]))
    batch_size: int | None = field(
        default=None, metadata=opt("fine-tuning batch (default 100, lbfgs 1000)", parse=positive_int)
    )
    weight_decay: list[float] | None = field(
        default=None,
        metadata=opt(
            "fine-tuning weight costs (sum of squared weights) to choose from on validation, comma-separated "
            f"(default {','.join(f'{v:g}' for v in WEIGHT_DECAY_GRID[0])}; --quick 0)",
            parse=float_list,
        ),
    )
    val_fraction: float = val_fraction_field("the epoch and the weight cost")
    patience: int = patience_field(10)
    seed: int = field(default=0, metadata=opt("seed of every model", parse=seed_value))
    seeds: int = seeds_field()
    jobs: int = jobs_field()
    figures: bool = field(default=True, metadata=opt(hidden=True))  # multiseed: t-SNE maps for the first seed only
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
    """Every seed's run_one into OUT/seed-<s>/, then the rows over seeds (aelab.experiments.multiseed)."""
    return multiseed.run(sys.modules[__name__], settings)


def validation_sse(run_dir: Path) -> float:
    """recon_sse of a run's kept weights on its own validation split (carved as train.py carves it); the test
    split is not read."""
    config = runs.read_config(run_dir)
    train_x, train_y, _, _ = runs.run_data(config)
    _, held, _ = validation_split(train_y.numpy(), config["val_fraction"])
    val_x = train_x[torch.from_numpy(held)]
    model = runs.load_model(run_dir)
    return float(sse_per_image(val_x.numpy(), reconstruct_all(model, val_x).numpy()).mean())


def run_one(settings: Settings) -> Path:
    started = time.perf_counter()
    out = Path(settings.out)
    layers_option, sizes = _layers(settings.layers)
    code = sizes[-1]
    epochs = settings.epochs or (15 if settings.quick else 80)
    pretrain_epochs = settings.pretrain_epochs or (5 if settings.quick else 50)
    batch = settings.batch_size or (1000 if settings.optimizer == "lbfgs" else 100)
    lr = 1e-3 if settings.optimizer == "adam" else 1.0
    grid = list(settings.weight_decay or WEIGHT_DECAY_GRID[1 if settings.quick else 0])
    progress = not settings.no_progress
    n_train = train_split_size(settings.dataset, settings.data_dir, settings.train_limit)
    val_fraction = capped_val_fraction(n_train, settings.val_fraction)

    # 1. selection on the validation split: each init's weight cost; each run keeps its best validation epoch
    sweeps, chosen_runs = {}, {}
    for init, label in INITS:
        scores, folders = [], []
        for wd in grid:
            cfg = TrainConfig(
                model="deep-ae",
                model_options={
                    "layers": layers_option,
                    "loss": "bce",
                    "init": init,
                    "pretrain_epochs": pretrain_epochs,
                    "weight_decay": wd,
                },
                dataset=settings.dataset,
                data_dir=settings.data_dir,
                train_limit=settings.train_limit,
                epochs=epochs,
                batch_size=batch,
                lr=lr,
                optimizer=settings.optimizer,
                seed=settings.seed,
                val_fraction=val_fraction,
                early_stopping=settings.patience,
                out=str(out / f"deep-ae-{init}-wd{wd:g}"),
            )
            folders.append(train_or_resume(cfg, progress=progress))
            scores.append(validation_sse(folders[-1]))
            print(f"{label}, weight cost {wd:g}: validation recon_sse {scores[-1]:.3f}")
        best = min(range(len(grid)), key=lambda i: (scores[i], i))
        sweeps[label] = {
            "option": "weight_decay",
            "grid": grid,
            "scores": scores,
            "chosen_index": best,
            "ylabel": "validation recon_sse",
            "runs": [str(f.relative_to(out)) for f in folders],
            "best_epochs": [kept_epoch(f) for f in folders],
        }
        chosen_runs[label] = folders[best]

    # 2. the chosen runs, scored once on the test split (and the official MNIST test set when present)
    config = runs.read_config(chosen_runs[INITS[1][1]])
    train_x, train_y, test_x, test_y = runs.run_data(config, settings.data_dir)
    model_shape = tuple(train_x.shape[1:])
    official, official_note = official_test_status(settings.data_dir, model_shape)
    x_tr, x_te = train_x.flatten(1).numpy(), test_x.flatten(1).numpy()
    y_tr, y_te = train_y.numpy(), test_y.numpy()
    test_sets = {"test split": (x_te, y_te)}
    if official:
        x_off, y_off, _ = datamod.load_test_split(OFFICIAL_TEST, settings.data_dir)
        test_sets["official MNIST test set (10k)"] = (x_off.flatten(1).numpy(), y_off.numpy())
    from sklearn.decomposition import PCA

    pca = PCA(n_components=code, svd_solver="covariance_eigh").fit(x_tr)  # train + validation, as evaluate's
    evaluations = {label: {} for _, label in INITS}
    with threadpool_limits(limits=1, user_api="blas"):  # sklearn probes: see contractive.select_settings
        for _, label in INITS:
            for table in test_sets:
                extra = {} if table == "test split" else {"test_dataset": OFFICIAL_TEST}
                evaluations[label][table] = evaluate(
                    chosen_runs[label], figures=False, data_dir=settings.data_dir, progress=progress, **extra
                )["metrics"]
        tables = {}
        for table, (x_eval, y_eval) in test_sets.items():
            m0 = evaluations[INITS[0][1]][table]
            rows = [
                {
                    "method": "raw pixels",
                    "code size": x_tr.shape[1],
                    "recon_sse": None,
                    "ratio to PCA": None,
                    "probe accuracy": m0["raw_probe_accuracy"],
                },
                {
                    "method": f"PCA ({code}-D)",
                    "code size": code,
                    "recon_sse": m0["pca_sse"],
                    "ratio to PCA": 1.0,
                    "probe accuracy": validated_probe(
                        pca.transform(x_tr), y_tr, pca.transform(x_eval), y_eval, runs.validation_indices(config, y_tr)
                    )["accuracy"],
                },
            ]
            for _, label in INITS:
                m = evaluations[label][table]
                rows.append(
                    {
                        "method": label,
                        "code size": code,
                        "recon_sse": m["recon_sse"],
                        "ratio to PCA": m["sse_ratio_to_pca"],
                        "probe accuracy": m["probe_accuracy"],
                        "weight cost (chosen)": sweeps[label]["grid"][sweeps[label]["chosen_index"]],
                        "epoch kept": kept_epoch(chosen_runs[label]),
                    }
                )
            tables[table] = rows

    figures = [
        (
            "Validation recon_sse of each weight cost, per initialisation (circled: the chosen one)",
            report.plot_validation_sweeps(sweeps, out / "validation_sweeps.png"),
        )
    ]
    figures += _figures(settings, out, chosen_runs, test_x, x_tr, x_te, y_te, code)
    histories = {label: runs.read_history(chosen_runs[label]) for _, label in INITS}
    units = {label: report.loss_unit(runs.read_config(chosen_runs[label])) for _, label in INITS}
    figures.append(
        (
            "Fine-tuning curves of the chosen runs (per-image cross-entropy; train solid, validation dotted, test "
            "dashed; the vertical line is the kept epoch)",
            report.plot_curves(histories, out / "curves.png", units=units),
        )
    )
    splits = {**splits_of(config), "official_test": {"available": official, "note": official_note}}
    notes = [
        f"Data: {config['dataset']}: {splits['train']} train images, {splits['validation']} validation images "
        f"carved from train (stratified, seed 0), {splits['test']} test images. The RBMs and autoencoders trained "
        "on train only; the validation split chose each run's epoch (the best validation loss, patience "
        f"{settings.patience}) and each initialisation's weight cost (the lowest validation recon_sse); PCA and the "
        "logistic probes were fitted on train + validation, their C chosen on validation (each probe fitted on train "
        "minus validation); the test split was scored once.",
        official_note,
        f"Architecture {'-'.join(map(str, sizes))}, logistic units, linear code layer. RBM pretraining: CD-1, "
        f"{pretrain_epochs} epochs per layer, Hinton's settings (lr 0.1, weight cost 2e-4, momentum 0.5 then 0.9, "
        "batch 100; a linear top layer with lr 0.001). Fine-tuning: the same budget for both initialisations, at "
        f"most {epochs} epochs of {settings.optimizer} (batch {batch}) on the cross-entropy loss plus the weight "
        f"cost chosen from {grid}.",
        "How this differs from the paper: it used all 60,000 training digits and 10,000 test digits, 50 epochs "
        "per RBM and 200 epochs of conjugate gradients on mini-batches of 1,000; here it is "
        f"{splits['train']} training digits and {settings.optimizer}. Its numbers (full MNIST, 30-D): deep AE "
        "3.00, logistic PCA 8.01, PCA 13.87 (recon_sse).",
    ]
    title = "Hinton & Salakhutdinov (2006): deep autoencoders vs PCA"
    results = {
        "experiment": "hinton2006",
        "title": title,
        "selection_split": "validation",
        "selection": "per initialisation, the weight cost with the lowest validation recon_sse; per run, the "
        "epoch with the lowest validation loss",
        "splits": splits,
        "tables": tables,
        "table_order": list(tables),
        "sweeps": sweeps,
        "figures": [[caption, str(Path(path).relative_to(out))] for caption, path in figures],
        "notes_for_summary": notes,
        "paper_recon_sse": PAPER,
        "layers": sizes,
        "epochs": epochs,
        "pretrain_epochs": pretrain_epochs,
        "optimizer": settings.optimizer,
        "data": {"dataset": config["dataset"], "fit_split": "train", "score_split": "test"},
        "runs": {label: str(path.relative_to(out)) for label, path in chosen_runs.items()},
        "wall_time_s": time.perf_counter() - started,
    }
    runs.write_json(out / "results.json", results)
    return report.write_report(
        out,
        title,
        [(f"{code}-D codes, {name}", rows) for name, rows in tables.items()]
        + [("Selection on the validation split", _sweep_rows(sweeps))],
        figures,
        notes,
    )


def _sweep_rows(sweeps: dict) -> list[dict]:
    return [
        {
            "initialisation": label,
            "weight cost": wd,
            "validation recon_sse": score,
            "epoch kept": s["best_epochs"][i],
            "chosen": "✓" if i == s["chosen_index"] else "",
        }
        for label, s in sweeps.items()
        for i, (wd, score) in enumerate(zip(s["grid"], s["scores"]))
    ]


def _figures(settings, out, chosen_runs, test_x, x_tr, x_te, y_te, code) -> list:
    """Reconstructions of the same test digits by PCA and both deep AEs; t-SNE maps (settings.figures only)."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=code, svd_solver="covariance_eigh").fit(x_tr)  # fitted on train only
    pca_te = pca.transform(x_te)
    codes = {"raw pixels": x_te, f"PCA ({code}-D)": pca_te}
    recons = {"PCA": pca.inverse_transform(pca_te)}
    for _, label in INITS:
        model = runs.load_model(chosen_runs[label])
        codes[label] = encode_all(model, test_x).numpy()
        recons[label] = reconstruct_all(model, test_x).flatten(1).numpy()
    figures = []
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
    if code == 2:
        figures.append(
            (
                "The paper's Fig. 3: 2-D codes of the deep AE beside PCA's first two components",
                _side_by_side(pca_te[:n, :2], codes[INITS[1][1]][:n], y_te[:n], out / "fig3.png"),
            )
        )
    if not settings.figures:
        return figures
    progress = not settings.no_progress
    for name, c in codes.items():
        emb = c[:n] if c.shape[1] == 2 else tsne_2d(c[:n], settings.seed, f"{out.name}/{name}" if progress else None)
        what = "the codes themselves (2-D)" if c.shape[1] == 2 else "t-SNE"
        slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower())
        figures.append(
            (f"{name}: {what} of {n} test codes", report.plot_scatter(emb, y_te[:n], out / f"map-{slug}.png", name))
        )
    return figures


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
