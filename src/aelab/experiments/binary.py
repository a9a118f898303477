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

import numpy as np

from .. import report, runs
from ..data.sources import capped_val_fraction
from ..evaluate import first_of_each_class
from ..metrics.codes import encode_all, reconstruct_all, validated_probe
from ..metrics.reconstruction import linear_decoder_sse, sse_per_image
from ..metrics.retrieval import bits_per_image, encode_codes, hamming_retrieval, pca_sign_codes
from ..models.binary import BACKWARD_RULES
from ..options import opt, positive_int, seed_value
from ..progress import Progress
from ..runs import fault_point
from ..train import TrainConfig
from . import multiseed
from .common import (
    amp_field,
    check_models_fit,
    device_field,
    jobs_field,
    kept_epoch,
    patience_field,
    preflight,
    seeds_field,
    splits_of,
    train_or_resume,
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


def _retrieval(train_codes, train_y, test_codes, test_y) -> dict[str, float]:
    ks = [k for k in (10, 100) if k <= len(train_codes)]
    result = hamming_retrieval(train_codes, train_y, test_codes, test_y, ks=ks)
    return {
        "precision@10": result.get("precision@10", float("nan")),
        "precision@100": result.get("precision@100", float("nan")),
        "mAP": result["mAP"],
    }


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
        cfg = TrainConfig(
            model="binary",
            model_options=options,
            dataset=settings.dataset,
            data_dir=settings.data_dir,
            train_limit=settings.train_limit,
            epochs=epochs,
            seed=settings.seed,
            val_fraction=capped_val_fraction(n_train, settings.val_fraction),
            early_stopping=settings.patience,
            device=settings.device,
            amp=settings.amp,
            out=str(out / name),
        )
        run_dir = train_or_resume(cfg, progress=not settings.no_progress)
        bar.phase(f"{name} AE: reconstruction, Hamming retrieval, probe")
        model = runs.load_model(run_dir)  # the weights of the best validation epoch
        config = runs.read_config(run_dir)
        train_x, train_y, test_x, test_y = runs.run_data(config, settings.data_dir)
        test_hat = reconstruct_all(model, test_x)
        sse = sse_per_image(test_x.numpy(), test_hat.numpy())
        if name == "binary":
            train_codes, test_codes = encode_codes(model, train_x), encode_codes(model, test_x)
            probe_tr, probe_te = train_codes, test_codes
        else:
            probe_tr, probe_te = encode_all(model, train_x).numpy(), encode_all(model, test_x).numpy()
            train_codes, test_codes = (probe_tr > 0.5).astype(np.uint8), (probe_te > 0.5).astype(np.uint8)
        rows.append(
            {
                "code": f"{name} AE",
                "STE": settings.backward if name == "binary" else "none (sigmoid code)",
                "epoch kept": kept_epoch(run_dir),
                "bits per image": bits_per_image(model),
                "recon_sse": float(sse.mean()),
                "recon_mse": float(sse.mean() / test_x[0].numel()),
                **_retrieval(train_codes, train_y.numpy(), test_codes, test_y.numpy()),
                "probe_accuracy": validated_probe(
                    probe_tr, train_y.numpy(), probe_te, test_y.numpy(), runs.validation_indices(config, train_y)
                )["accuracy"],
                "distinct train codes": int(len(np.unique(train_codes, axis=0))),
                "time (s)": time.perf_counter() - t0,
            }
        )
        run_dirs[name] = str(run_dir)
        histories[name] = runs.read_history(run_dir)
        units[name] = report.loss_unit(runs.read_config(run_dir))
        if recon_rows is None:
            first = first_of_each_class(test_y, 10)
            recon_rows = [test_x[first].numpy()]
        recon_rows.append(test_hat[first].numpy())
        row_done(f"{name} AE: mAP {rows[-1]['mAP']:.4f}, recon_sse {rows[-1]['recon_sse']:.2f}")

    # PCA-sign hashing on the same splits
    bar.phase("PCA-sign: PCA, retrieval, probe")
    t0 = time.perf_counter()
    x_tr, x_te = train_x.numpy(), test_x.numpy()
    notes_pca = ""
    if settings.bits <= min(len(x_tr), x_tr[0].size):
        pca_tr, pca_te = pca_sign_codes(x_tr, x_te, settings.bits)
        sse = linear_decoder_sse(pca_tr, x_tr, pca_te, x_te)
        rows.append(
            {
                "code": "PCA-sign",
                "STE": "none (signs of PCA)",
                "epoch kept": None,
                "bits per image": settings.bits,
                "recon_sse": float(sse.mean()),
                "recon_mse": float(sse.mean() / x_te[0].size),
                **_retrieval(pca_tr, train_y.numpy(), pca_te, test_y.numpy()),
                "probe_accuracy": validated_probe(
                    pca_tr, train_y.numpy(), pca_te, test_y.numpy(), runs.validation_indices(config, train_y)
                )["accuracy"],
                "distinct train codes": int(len(np.unique(pca_tr, axis=0))),
                "time (s)": time.perf_counter() - t0,
            }
        )
        row_done(f"PCA-sign: mAP {rows[-1]['mAP']:.4f}")
    else:
        notes_pca = (
            f"PCA-sign skipped: {settings.bits} bits exceed the number of principal components "
            f"(min of {len(x_tr)} train images and {x_tr[0].size} pixels)."
        )
        bar.update(text=notes_pca)
    bar.phase("figures and report")

    fig_dir = out / "figures"
    figures = [
        (
            "Test images (top), binary AE, float AE reconstructions",
            report.plot_image_rows(recon_rows, ["input", "binary", "float"], fig_dir / "reconstructions.png"),
        ),
        (
            "Loss per epoch (train solid, validation and test dashed; the kept epoch has the best validation loss)",
            report.plot_curves(histories, fig_dir / "loss.png", units=units),
        ),
    ]
    result = {
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
            "n_train": len(x_tr),
            "n_test": len(x_te),
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
        "wall_time_s": time.perf_counter() - t_start,
    }
    runs.write_json(out / "results.json", result)
    notes = [
        f"Data: {settings.dataset}, {len(x_tr)} train images (the retrieval database) / {len(x_te)} test images "
        f"(the queries); relevant = same digit. At most {epochs} epochs, seed {settings.seed}; each model keeps "
        f"the epoch of its best validation loss ({config['n_val']} validation images carved from train, "
        "stratified, seed 0; the database still holds every train image).",
        "Float baseline: retrieval uses its sigmoid code thresholded at 0.5 (Hamming ranking); its "
        "reconstruction and probe use the float code (32 bits per number, hence 32x the bits per image).",
        "PCA-sign: the reconstruction is the least-squares affine decoder from the bits, fitted on train.",
        "Hamming ties are broken by database index (deterministic, not tie-averaged).",
        f"Wall time {result['wall_time_s']:.0f} s.",
    ] + ([notes_pca] if notes_pca else [])
    return report.write_report(
        out,
        title,
        [("Reconstruction and retrieval on the test split", rows)],
        figures,
        notes,
        config=result["settings"],
    )
