"""The steps of the binary experiment (binary.run_one drives them): train the binary AE or its float twin, score a
trained model's codes on the test split, PCA-sign hashing on the same splits, one table row per code, the figures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import report, runs
from ..data.sources import capped_val_fraction
from ..metrics.codes import encode_all, reconstruct_all, validated_probe
from ..metrics.reconstruction import linear_decoder_sse, sse_per_image
from ..metrics.retrieval import bits_per_image, encode_codes, hamming_retrieval, pca_sign_codes
from ..train import TrainConfig
from .common import kept_epoch, train_or_resume


def train_code_model(settings, name: str, options: dict, epochs: int, n_train: int) -> Path:
    """Train (or resume) the "binary" model with `options` into OUT/<name>; it keeps its best validation epoch."""
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
        out=str(Path(settings.out) / name),
    )
    return train_or_resume(cfg, progress=not settings.no_progress)


def score_autoencoder(settings, name: str, run_dir: Path, t0: float):
    """The row of a trained model (its weights of the best validation epoch) on the test split: reconstruction,
    Hamming retrieval and the probe. The binary AE's codes are its bits; the float AE retrieves with its sigmoid code
    thresholded at 0.5 and reconstructs and probes with the float code. Returns (row, config, the run's data
    (train_x, train_y, test_x, test_y), the test reconstructions)."""
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
    row = code_row(
        f"{name} AE",
        settings.backward if name == "binary" else "none (sigmoid code)",
        kept_epoch(run_dir),
        bits_per_image(model),
        sse,
        test_x[0].numel(),
        (train_codes, test_codes),
        (probe_tr, probe_te),
        (train_y.numpy(), test_y.numpy()),
        runs.validation_indices(config, train_y),
        t0,
    )
    return row, config, (train_x, train_y, test_x, test_y), test_hat


def pca_sign_row(settings, data: tuple, config: dict) -> tuple[dict | None, str]:
    """PCA-sign hashing on the same splits: the signs of the top `bits` principal components fitted on train,
    reconstructed by the least-squares affine decoder from the bits. Returns (row, "") or (None, why it was
    skipped) when there are fewer principal components than bits."""
    t0 = time.perf_counter()
    train_x, train_y, test_x, test_y = data
    x_tr, x_te = train_x.numpy(), test_x.numpy()
    if settings.bits > min(len(x_tr), x_tr[0].size):
        return None, (
            f"PCA-sign skipped: {settings.bits} bits exceed the number of principal components "
            f"(min of {len(x_tr)} train images and {x_tr[0].size} pixels)."
        )
    pca_tr, pca_te = pca_sign_codes(x_tr, x_te, settings.bits)
    sse = linear_decoder_sse(pca_tr, x_tr, pca_te, x_te)
    row = code_row(
        "PCA-sign",
        "none (signs of PCA)",
        None,
        settings.bits,
        sse,
        x_te[0].size,
        (pca_tr, pca_te),
        (pca_tr, pca_te),
        (train_y.numpy(), test_y.numpy()),
        runs.validation_indices(config, train_y),
        t0,
    )
    return row, ""


def code_row(code, ste, kept, bits, sse, pixels, codes, probe_codes, labels, held, t0: float) -> dict:
    """One row of the table: `codes` (train, test) rank by Hamming distance, `probe_codes` (train, test) feed the
    probe, `labels` are (train, test) digits, `held` the run's validation split, `t0` when the row's work began."""
    (train_codes, test_codes), (probe_tr, probe_te), (train_y, test_y) = codes, probe_codes, labels
    return {
        "code": code,
        "STE": ste,
        "epoch kept": kept,
        "bits per image": bits,
        "recon_sse": float(sse.mean()),
        "recon_mse": float(sse.mean() / pixels),
        **retrieval(train_codes, train_y, test_codes, test_y),
        "probe_accuracy": validated_probe(probe_tr, train_y, probe_te, test_y, held)["accuracy"],
        "distinct train codes": int(len(np.unique(train_codes, axis=0))),
        "time (s)": time.perf_counter() - t0,
    }


def retrieval(train_codes, train_y, test_codes, test_y) -> dict[str, float]:
    ks = [k for k in (10, 100) if k <= len(train_codes)]
    result = hamming_retrieval(train_codes, train_y, test_codes, test_y, ks=ks)
    return {
        "precision@10": result.get("precision@10", float("nan")),
        "precision@100": result.get("precision@100", float("nan")),
        "mAP": result["mAP"],
    }


def code_figures(out: Path, recon_rows: list, histories: dict, units: dict) -> list:
    """The reconstructions of the same test digits by both autoencoders, and their loss curves."""
    fig_dir = out / "figures"
    return [
        (
            "Test images (top), binary AE, float AE reconstructions",
            report.plot_image_rows(recon_rows, ["input", "binary", "float"], fig_dir / "reconstructions.png"),
        ),
        (
            "Loss per epoch (train solid, validation and test dashed; the kept epoch has the best validation loss)",
            report.plot_curves(histories, fig_dir / "loss.png", units=units),
        ),
    ]
