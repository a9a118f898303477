"""Binary codes for images: the conv autoencoder with a {0, 1} straight-through bottleneck, the same network with a
float (sigmoid) bottleneck of the same size, and PCA-sign hashing, compared on reconstruction and on Hamming
retrieval (semantic hashing, Salakhutdinov & Hinton 2009; STE, Bengio, Leonard & Courville 2013).

    train "binary" (STE) and "binary" with float_bottleneck=True on the TRAIN split (aelab.train)
    PCA-sign codes: signs of the top `bits` principal components, fitted on TRAIN
    test images -> codes -> reconstruction error; test codes query the train codes by Hamming distance
    -> results.json, report.html/md
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import report, runs
from ..evaluate import first_of_each_class
from ..models.binary import BACKWARD_RULES
from ..options import opt, positive_int, seed_value
from ..progress import Progress
from ..runs import fault_point
from . import multiseed
from .binary_steps import code_figures, pca_sign_row, score_autoencoder, train_code_model
from .common import (
    amp_field,
    check_models_fit,
    device_field,
    jobs_field,
    patience_field,
    preflight,
    seeds_field,
    splits_of,
    train_split_size,
    val_fraction_field,
    write_partial,
)

ROW_KEY = "code"
PAIRS = [("binary AE", "float AE", "mAP"), ("binary AE", "PCA-sign", "mAP")]
PLOT_COLUMNS = ["mAP", "recon_sse"]
COLUMNS = [
    "STE",
    "bits per image",
    "recon_sse",
    "recon_mse",
    "precision@10",
    "precision@100",
    "mAP",
    "probe_accuracy",
    "distinct train codes",
    "epoch kept",
    "time (s)",
]
FIXED_COLUMNS = ["bits per image"]
CHOICE_COLUMNS = ["epoch kept"]

PROTOCOL = {
    "database": "train codes",
    "queries": "test codes",
    "relevant": "same digit label",
    "ranking": "Hamming distance, ties broken by database index (aelab.metrics.retrieval.hamming_retrieval)",
    "float_baseline_retrieval": "the float model's sigmoid code thresholded at 0.5 (the sign of its "
    "pre-activation, the binary model's own threshold), then Hamming ranking",
    "float_baseline_reconstruction_and_probe": "the float (sigmoid) code itself",
    "pca_sign_reconstruction": "least-squares linear decoder x ~ W b + c from the sign bits, fitted on train",
    "probe": "logistic regression on standardised train codes, scored on test codes (aelab.metrics.codes.probe_accuracy)",
    "recon_sse": "sum of squared errors over the pixels of a test image, mean over test images",
    "recon_mse": "recon_sse / pixels per image",
}


@dataclass
class Settings:
    out: str = field(default="runs/binary", metadata=opt("output folder"))
    dataset: str = field(default="mnist5k", metadata=opt("dataset name (aelab data list)"))
    data_dir: str | None = field(default=None, metadata=opt("folder of downloaded datasets"))
    bits: int = field(default=512, metadata=opt("code size (binary, float baseline and PCA-sign)", parse=positive_int))
    backward: str = field(default="identity", metadata=opt("straight-through estimator", choices=BACKWARD_RULES))
    epochs: int | None = field(default=None, metadata=opt("default 20, --quick 3", parse=positive_int))
    seed: int = field(default=0, metadata=opt("seed of every model", parse=seed_value))
    train_limit: int | None = field(
        default=None, metadata=opt("use only the first N training images", parse=positive_int)
    )
    val_fraction: float = val_fraction_field("each model's epoch")
    patience: int = patience_field(5)
    seeds: int = seeds_field()
    jobs: int = jobs_field()
    quick: bool = field(default=False, metadata=opt("3 epochs (about 2 minutes)"))
    device: str = device_field()
    amp: bool = amp_field()
    no_progress: bool = field(default=False, metadata=opt("no progress bars"))


def run(settings: Settings) -> Path:
    """Every seed's run_one into OUT/seed-<s>/, then the rows over seeds (aelab.experiments.multiseed)."""
    import sys

    preflight(settings)
    models = [{"bits": settings.bits, "backward": settings.backward}, {"bits": settings.bits, "float_bottleneck": True}]
    check_models_fit("binary", models, settings.dataset, settings.data_dir)  # before any line or run folder
    return multiseed.run(sys.modules[__name__], settings)


def run_one(settings: Settings) -> Path:
    """One seed: the binary AE, the float AE and PCA-sign, one row each; results.json after each (partial)."""
    out = Path(settings.out)
    with Progress(f"{out.name or out}: binary", total=3, unit="row", enabled=not settings.no_progress) as bar:
        return _run_one(settings, bar)


def _run_one(settings: Settings, bar: Progress) -> Path:
    t_start = time.perf_counter()
    out = Path(settings.out)
    epochs = settings.epochs or (3 if settings.quick else 20)
    rows, run_dirs, histories, units, recon_rows = [], {}, {}, {}, None
    n_train = train_split_size(settings.dataset, settings.data_dir, settings.train_limit)
    title = f"Binary codes: {settings.bits}-bit STE autoencoder vs float bottleneck vs PCA-sign"
    names = ["binary AE", "float AE", "PCA-sign"]
    if settings.quick:
        bar.write(f"--quick: {epochs} epochs (the full run: 20)")

    def row_done(text: str) -> None:  # results.json and the report so far, marked partial (issue 31)
        done = [r["code"] for r in rows]
        write_partial(out, {"experiment": "binary", "title": title, "rows": rows}, done, names[len(done) :], title)
        fault_point("row")
        bar.update(text=text)

    for name, options in [
        ("binary", {"bits": settings.bits, "backward": settings.backward}),
        ("float", {"bits": settings.bits, "float_bottleneck": True}),
    ]:
        t0 = time.perf_counter()
        bar.phase(f"{name} AE: training (at most {epochs} epoch{'s' if epochs != 1 else ''}; a finished run is kept)")
        run_dir = train_code_model(settings, name, options, epochs, n_train)
        bar.phase(f"{name} AE: reconstruction, Hamming retrieval, probe")
        row, config, data, test_hat = score_autoencoder(settings, name, run_dir, t0)
        rows.append(row)
        run_dirs[name] = str(run_dir)
        histories[name] = runs.read_history(run_dir)
        units[name] = report.loss_unit(runs.read_config(run_dir))
        if recon_rows is None:
            _, _, test_x, test_y = data
            first = first_of_each_class(test_y, 10)
            recon_rows = [test_x[first].numpy()]
        recon_rows.append(test_hat[first].numpy())
        row_done(f"{name} AE: mAP {rows[-1]['mAP']:.4f}, recon_sse {rows[-1]['recon_sse']:.2f}")

    bar.phase("PCA-sign: PCA, retrieval, probe")
    pca_row, notes_pca = pca_sign_row(settings, data, config)
    if pca_row is not None:
        rows.append(pca_row)
        row_done(f"PCA-sign: mAP {rows[-1]['mAP']:.4f}")
    else:
        bar.update(text=notes_pca)
    bar.phase("figures and report")
    figures = code_figures(out, recon_rows, histories, units)
    result = results_of(settings, title, epochs, rows, run_dirs, figures, config, data)
    result["wall_time_s"] = time.perf_counter() - t_start
    runs.write_json(out / "results.json", result)
    notes = notes_of(settings, epochs, data, config, result["wall_time_s"]) + ([notes_pca] if notes_pca else [])
    return report.write_report(
        out,
        title,
        [("Reconstruction and retrieval on the test split", rows)],
        figures,
        notes,
        config=result["settings"],
    )


def results_of(settings: Settings, title: str, epochs: int, rows, run_dirs, figures, config, data) -> dict:
    """results.json of one seed, its wall time aside."""
    out = Path(settings.out)
    train_x, _, test_x, _ = data
    return {
        "experiment": "binary",
        "title": title,
        "selection_split": "validation",
        "selection": "each model's epoch: the best validation loss (early stopping, patience "
        f"{settings.patience}); the test split chooses nothing",
        "splits": splits_of(config),
        "tables": {"test split": rows},
        "figures": [[caption, str(Path(path).relative_to(out))] for caption, path in figures],
        "rows": rows,
        "protocol": PROTOCOL,
        "runs": run_dirs,
        "data": {
            "dataset": settings.dataset,
            "n_train": len(train_x),
            "n_test": len(test_x),
            "train_limit": settings.train_limit,
            "fit_split": "train",
            "query_split": "test",
        },
        "settings": {
            "bits": settings.bits,
            "backward": settings.backward,
            "epochs": epochs,
            "seed": settings.seed,
            "quick": bool(settings.quick),
        },
    }


def notes_of(settings: Settings, epochs: int, data, config: dict, wall_time_s: float) -> list[str]:
    """The report's notes: the data and splits, how each baseline is scored, the tie rule, the wall time."""
    train_x, _, test_x, _ = data
    return [
        f"Data: {settings.dataset}, {len(train_x)} train images (the retrieval database) / {len(test_x)} test images "
        f"(the queries); relevant = same digit. At most {epochs} epochs, seed {settings.seed}; each model keeps "
        f"the epoch of its best validation loss ({config['n_val']} validation images carved from train, "
        "stratified, seed 0; the database still holds every train image).",
        "Float baseline: retrieval uses its sigmoid code thresholded at 0.5 (Hamming ranking); its "
        "reconstruction and probe use the float code (32 bits per number, hence 32x the bits per image).",
        "PCA-sign: the reconstruction is the least-squares affine decoder from the bits, fitted on train.",
        "Hamming ties are broken by database index (deterministic, not tie-averaged).",
        f"Wall time {wall_time_s:.0f} s.",
    ]
