"""Hinton & Salakhutdinov (Science 2006), "Reducing the dimensionality of data with neural networks".

Ways to get a code of the same size, compared on held-out digits: raw pixels (probe only), PCA, logistic
PCA, the deep autoencoder from random initialisation, and the same deep autoencoder pretrained as a stack of
RBMs (pretrained once per seed), unrolled, then fine-tuned by conjugate gradients (the paper's fine-tuner)
and by Adam. recon_sse is the paper's unit: squared error summed over the 784 pixels, averaged over test
images (the paper: 3.00 for the deep AE, 8.01 for logistic PCA, 13.87 for PCA, 30-D codes, full MNIST).
"""

from __future__ import annotations

import sys
import time
from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from .. import data as datamod
from .. import runs
from ..data.sources import capped_val_fraction, validation_split
from ..errors import ConfigError
from ..evaluate import evaluate
from ..metrics.codes import reconstruct_all, validated_probe
from ..metrics.reconstruction import sse_per_image
from ..models.deep_ae import LAYER_PRESETS
from ..models.logistic_pca import LogisticPCA
from ..options import float_list, int_list, opt, positive_int, seed_value, word_list
from ..train import TrainConfig, pretrain
from . import hinton2006_report, multiseed
from .common import (
    OFFICIAL_TEST,
    amp_field,
    device_field,
    jobs_field,
    kept_epoch,
    official_test_status,
    patience_field,
    preflight,
    seeds_field,
    splits_of,
    train_or_resume,
    train_split_size,
    val_fraction_field,
)

PAPER = {"deep AE": 3.00, "logistic PCA": 8.01, "PCA": 13.87}
RANDOM = "deep AE, random init"
FINE_TUNERS = {"cg": "deep AE, RBM-pretrained, CG", "adam": "deep AE, RBM-pretrained, Adam"}
ROW_KEY = "method"
PAIRS = [(label, RANDOM, "recon_sse") for label in FINE_TUNERS.values()]
PAIRS.append((FINE_TUNERS["cg"], FINE_TUNERS["adam"], "recon_sse"))
PLOT_COLUMNS = ["ratio to PCA", "recon_sse"]
COLUMNS = ["code size", "recon_sse", "ratio to PCA", "probe accuracy", "weight cost (chosen)", "epoch kept"]
FIXED_COLUMNS = ["code size"]
CHOICE_COLUMNS = ["weight cost (chosen)", "epoch kept"]
# fine-tuning weight decay grids (full, --quick), chosen per row on the validation split
WEIGHT_DECAY_GRID = ((1e-4, 1e-3), (0.0,))


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
            "folder of the IDX files (DIR/NAME/ or DIR itself); when it holds the official MNIST t10k files, "
            "every chosen model is also scored on them"
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
        metadata=opt("most Adam fine-tuning epochs (default 80, --quick 15)", parse=positive_int),
    )
    cg_epochs: int | None = field(
        default=None, metadata=opt("most conjugate-gradient epochs (default: --epochs)", parse=positive_int)
    )
    pretrain_epochs: int | None = field(default=None, metadata=opt("RBM epochs per layer", parse=positive_int))
    fine_tuners: list[str] = field(
        default_factory=lambda: ["cg", "adam"],
        metadata=opt("fine-tuners of the pretrained stack, comma-separated: cg, adam", parse=word_list(FINE_TUNERS)),
    )
    batch_size: int | None = field(default=None, metadata=opt("Adam's batch (default 100)", parse=positive_int))
    cg_batch_size: int = field(
        default=1000, metadata=opt("conjugate gradients' batch (3 line searches each)", parse=positive_int)
    )
    weight_decay: list[float] | None = field(
        default=None,
        metadata=opt(
            "fine-tuning weight costs (sum of squared weights) to choose from on validation, comma-separated "
            f"(default {','.join(f'{v:g}' for v in WEIGHT_DECAY_GRID[0])}; --quick 0)",
            parse=float_list,
        ),
    )
    logistic_pca_iter: int = field(default=300, metadata=opt("L-BFGS iterations of logistic PCA", parse=positive_int))
    val_fraction: float = val_fraction_field("the epoch and the weight cost")
    patience: int = patience_field(10)
    device: str = device_field()
    amp: bool = amp_field()
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
    preflight(settings)
    return multiseed.run(sys.modules[__name__], settings)


def validation_sse(run_dir: Path, data_dir: str | None = None) -> float:
    """recon_sse of a run's kept weights on its own validation split (carved as train.py carves it); the test
    split is not read."""
    config = runs.read_config(run_dir)
    train_x, train_y, _, _ = runs.run_data(config, data_dir)
    _, held, _ = validation_split(train_y.numpy(), config["val_fraction"])
    val_x = train_x[torch.from_numpy(held)]
    model = runs.load_model(run_dir)
    return float(sse_per_image(val_x.numpy(), reconstruct_all(model, val_x).numpy()).mean())


def _variants(settings: Settings) -> list[tuple[str, str, str]]:
    """(row label, init, optimizer) of every deep AE row."""
    return [(RANDOM, "random", "adam")] + [(FINE_TUNERS[f], "rbm", f) for f in settings.fine_tuners]


def run_one(settings: Settings) -> Path:
    started = time.perf_counter()
    preflight(settings)
    out = Path(settings.out)
    layers_option, sizes = _layers(settings.layers)
    code = sizes[-1]
    epochs, cg_epochs, pretrain_epochs = hinton2006_report.budget(settings)
    grid = list(settings.weight_decay or WEIGHT_DECAY_GRID[1 if settings.quick else 0])
    progress = not settings.no_progress
    n_train = train_split_size(settings.dataset, settings.data_dir, settings.train_limit)
    common = dict(
        model="deep-ae",
        dataset=settings.dataset,
        data_dir=settings.data_dir,
        train_limit=settings.train_limit,
        seed=settings.seed,
        val_fraction=capped_val_fraction(n_train, settings.val_fraction),
        device=settings.device,
        amp=settings.amp,
    )
    model_options = {"layers": layers_option, "loss": "bce", "pretrain_epochs": pretrain_epochs}

    # 1. the RBM stack, pretrained once on the train split; every fine-tuner starts from it
    walls = {}
    t0 = time.perf_counter()
    stack = pretrain(
        TrainConfig(**common, model_options={**model_options, "init": "rbm"}, out=str(out / "rbm-stack")),
        progress=progress,
    )
    walls["RBM pretraining"] = time.perf_counter() - t0

    # 2. selection on the validation split: each row's weight cost; each run keeps its best validation epoch
    sweeps, chosen_runs = {}, {}
    for label, init, optimizer in _variants(settings):
        t0 = time.perf_counter()
        scores, folders = [], []
        for wd in grid:
            cfg = TrainConfig(
                **common,
                model_options={**model_options, "init": init, "weight_decay": wd},
                epochs=cg_epochs if optimizer == "cg" else epochs,
                batch_size=settings.cg_batch_size if optimizer == "cg" else (settings.batch_size or 100),
                lr=1e-3,
                optimizer=optimizer,
                early_stopping=settings.patience,
                init_weights=str(stack / "model.safetensors") if init == "rbm" else None,
                out=str(out / f"deep-ae-{init}-{optimizer}-wd{wd:g}"),
            )
            folders.append(train_or_resume(cfg, progress=progress))
            scores.append(validation_sse(folders[-1], settings.data_dir))
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
        walls[label] = time.perf_counter() - t0

    # 3. PCA and logistic PCA fitted on the train split (train + validation, as evaluate's PCA)
    config = runs.read_config(chosen_runs[RANDOM])
    train_x, train_y, test_x, test_y = runs.run_data(config, settings.data_dir)
    official, official_note = official_test_status(settings.data_dir, tuple(train_x.shape[1:]), settings.dataset)
    test_sets = {"test split": (test_x, test_y)}
    if official:
        x_off, y_off, _ = datamod.load_test_split(OFFICIAL_TEST, settings.data_dir)
        test_sets["official MNIST test set (10k)"] = (x_off, y_off)
    x_tr, y_tr = train_x.flatten(1).numpy(), train_y.numpy()
    from sklearn.decomposition import PCA

    pca = PCA(n_components=code, svd_solver="covariance_eigh").fit(x_tr)
    t0 = time.perf_counter()
    lpca = LogisticPCA(code, max_iter=settings.logistic_pca_iter, device=settings.device).fit(x_tr)
    walls["logistic PCA"] = time.perf_counter() - t0
    val = runs.validation_indices(config, y_tr)

    # 4. the chosen runs, scored once on each test set
    tables = {}
    with threadpool_limits(limits=1, user_api="blas"):  # sklearn probes: see contractive.select_settings
        for table, (x_eval, y_eval) in test_sets.items():
            extra = {} if table == "test split" else {"test_dataset": OFFICIAL_TEST}
            scored = {
                label: evaluate(f, figures=False, data_dir=settings.data_dir, progress=progress, **extra)["metrics"]
                for label, f in chosen_runs.items()
            }
            xe, ye = x_eval.flatten(1).numpy(), y_eval.numpy()
            pca_sse, lpca_codes = scored[RANDOM]["pca_sse"], lpca.transform(xe)
            lpca_sse = float(sse_per_image(xe, lpca.inverse_transform(lpca_codes).cpu().numpy()).mean())
            baselines = [  # (name, train codes, test codes, recon_sse)
                (f"PCA ({code}-D)", pca.transform(x_tr), pca.transform(xe), pca_sse),
                (f"logistic PCA ({code}-D)", lpca.train_codes_.cpu().numpy(), lpca_codes.cpu().numpy(), lpca_sse),
            ]
            rows = [
                {
                    "method": "raw pixels",
                    "code size": xe.shape[1],
                    "probe accuracy": scored[RANDOM]["raw_probe_accuracy"],
                }
            ]
            for name, c_tr, c_te, sse in baselines:
                probe = validated_probe(c_tr, y_tr, c_te, ye, val)["accuracy"]
                rows.append(
                    {
                        "method": name,
                        "code size": code,
                        "recon_sse": sse,
                        "ratio to PCA": sse / pca_sse,
                        "probe accuracy": probe,
                    }
                )
            for label, m in scored.items():
                wd = sweeps[label]["grid"][sweeps[label]["chosen_index"]]
                rows.append(
                    {"method": label, "code size": code, "recon_sse": m["recon_sse"], "ratio to PCA": m.get("sse_ratio_to_pca"),
                     "probe accuracy": m["probe_accuracy"], "weight cost (chosen)": wd, "epoch kept": kept_epoch(chosen_runs[label])}
                )  # fmt: skip
            tables[table] = rows

    figures = hinton2006_report.figures(settings, out, chosen_runs, sweeps, pca, lpca, test_x, test_y, x_tr, code)
    splits = {**splits_of(config), "official_test": {"available": official, "note": official_note}}
    notes = hinton2006_report.notes(
        settings, config, splits, official_note, sizes, grid, runs.read_json(stack / "pretrain.json")
    )
    results = {
        "splits": splits,
        "tables": tables,
        "sweeps": sweeps,
        "layers": sizes,
        "epochs": {"adam": epochs, "cg": cg_epochs, "rbm_per_layer": pretrain_epochs},
        "wall_time_s_per_row": walls,
        "data": {"dataset": config["dataset"], "fit_split": "train", "score_split": "test"},
        "runs": {label: str(path.relative_to(out)) for label, path in chosen_runs.items()},
        "wall_time_s": time.perf_counter() - started,
    }
    return hinton2006_report.write(settings, out, results, figures, notes)
