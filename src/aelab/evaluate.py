"""Evaluate a trained run honestly: everything that is fitted (PCA, probes) is fitted on the
TRAIN split and scored on the TEST split, and eval.json records which data and splits were used.

Metrics (per image unless stated):
    recon_mse      mean squared error per pixel on test images
    recon_sse      sum of squared errors over pixels, averaged over test images
                   (the unit of Hinton & Salakhutdinov 2006: 3.00 AE / 8.01 logistic PCA / 13.87 PCA)
    pca_sse        the same for PCA with as many components as the code, fitted on train
    probe_accuracy logistic regression fitted on train codes, scored on test codes
    raw_probe_accuracy  the same on raw pixels
    test_*         the model's own loss terms on the test split (aelab.train.evaluate_loss)
    nll_nats       models with a likelihood (VAE): -log p(x) by importance sampling (IWAE bound, k samples)
    jacobian_*, saturation   MLP encoders: contraction (aelab.metrics.contraction)
    bits_*, code_*           binary codes: usage statistics (aelab.metrics.retrieval)

`evaluate(run, write=False)` computes and returns; only `write=True` touches the run folder.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from . import report, runs, tracking
from .errors import CheckpointError
from .metrics.codes import encode_all, probe_accuracy, reconstruct_all, tsne_2d
from .metrics.contraction import contraction_diagnostics
from .metrics.reconstruction import pca_reconstruction_sse, sse_per_image
from .metrics.retrieval import code_statistics
from .train import evaluate_loss

_RAW_PROBE_CACHE: dict[tuple, float] = {}


def raw_probe_accuracy(config: dict, x_tr, y_tr, x_te, y_te) -> float:
    """The pixel probe depends only on the data: compute it once per process and data set."""
    key = (config["dataset"], repr(sorted(config.get("dataset_options", {}).items())), config.get("train_limit"))
    if key not in _RAW_PROBE_CACHE:
        _RAW_PROBE_CACHE[key] = probe_accuracy(x_tr, y_tr, x_te, y_te)
    return _RAW_PROBE_CACHE[key]


def first_of_each_class(labels: torch.Tensor, n: int = 16, seed: int = 0) -> list[int]:
    """Indices of the first example of each class (up to 10), then random others up to n: the images that
    reconstruction figures show."""
    first = [int(torch.nonzero(labels == c)[0]) for c in torch.unique(labels)[:10]]
    others = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    return first + [i for i in others if i not in first][: n - len(first)]


def evaluate(
    run_dir: str | Path,
    iwae_k: int = 100,
    tsne_points: int = 2000,
    figures: bool = True,
    seed: int = 0,
    write: bool = True,
    data_dir: str | Path | None = None,
) -> dict:
    """Compute the metrics of a run. With write=True, also write eval.json, report.html/md and (with
    figures=True) figures/ into the run folder, holding its lock; with write=False nothing on disk changes.
    The data come from `data_dir` (default: $AELAB_DATA or ~/.cache/aelab), never from config.json, and
    are never downloaded here."""
    run_dir = Path(run_dir)
    with runs.RunLock(run_dir, create=False) if write else contextlib.nullcontext():
        return _evaluate(run_dir, iwae_k, tsne_points, figures, seed, write, data_dir)


def _evaluate(run_dir: Path, iwae_k: int, tsne_points: int, figures: bool, seed: int, write: bool, data_dir) -> dict:
    model = runs.load_model(run_dir)
    config = runs.read_config(run_dir)
    train_x, train_y, test_x, test_y = runs.run_data(config, data_dir)
    if tuple(test_x.shape[1:]) != tuple(model.input_shape):
        raise CheckpointError(
            f"{run_dir}/config.json names data of shape {tuple(test_x.shape[1:])}, but the model "
            f"in model.json takes {tuple(model.input_shape)}"
        )
    t0 = time.perf_counter()
    torch.manual_seed(seed)

    train_codes = encode_all(model, train_x).cpu().numpy()
    test_codes = encode_all(model, test_x).cpu().numpy()
    test_hat = reconstruct_all(model, test_x).cpu().numpy()
    x_tr, x_te = train_x.numpy(), test_x.numpy()
    sse = sse_per_image(x_te, test_hat)
    code_dim = test_codes.shape[1]
    metrics: dict = {
        "recon_mse": float(sse.mean() / x_te[0].size),
        "recon_sse": float(sse.mean()),
        "code_dim": int(code_dim),
        "pca_sse": pca_reconstruction_sse(x_tr, x_te, min(code_dim, x_tr[0].size, len(x_tr))),
        "probe_accuracy": probe_accuracy(train_codes, train_y.numpy(), test_codes, test_y.numpy()),
        "raw_probe_accuracy": raw_probe_accuracy(config, x_tr, train_y.numpy(), x_te, test_y.numpy()),
    }
    metrics["sse_ratio_to_pca"] = metrics["recon_sse"] / metrics["pca_sse"]
    for k, v in evaluate_loss(model, test_x, 500, seed).items():
        metrics[f"test_{k}"] = v
    if model.has_likelihood:
        gen = torch.Generator().manual_seed(seed)
        metrics["nll_nats"] = float(-model.iwae_log_likelihood(test_x, k=iwae_k, generator=gen).mean())
        metrics["iwae_k"] = iwae_k
    spectrum, bit_usage = None, None
    if model.has_mlp_encoder:
        extra, spectrum = contraction_diagnostics(model, test_x)
        metrics.update(extra)
    if model.binary_code:
        extra, bit_usage = code_statistics(model, train_x, test_x)
        metrics.update(extra)
    name = type(model).name
    result = {
        "run": str(run_dir),
        "model": name,
        "metrics": metrics,
        "data": {
            "dataset": config["dataset"],
            "dataset_options": config.get("dataset_options", {}),
            "fit_split": "train",
            "score_split": "test",
            "n_train": len(train_x),
            "n_test": len(test_x),
        },
        "protocol": {
            "pca": "fitted on train images, scored on test",
            "probe": "LogisticRegression on standardised train codes, scored on test codes",
            "tsne": f"{min(tsne_points, len(test_x))} test codes",
        },
        "eval_time_s": time.perf_counter() - t0,
    }
    if spectrum is not None:
        result["jacobian_mean_singular_values"] = spectrum
    if not write:
        return result

    runs.remove_stale_temp_files(run_dir)  # under the lock: what a killed evaluate left
    figs: list[tuple[str, Path]] = []
    if figures:
        fig_dir = runs.subfolder(run_dir, "figures")
        runs.remove_stale_temp_files(fig_dir)
        figs = _figures(model, run_dir, fig_dir, test_x, test_y, test_codes, test_hat, tsne_points, seed)
        if spectrum is not None:
            figs.append(
                (
                    f"Singular values of the encoder's Jacobian, mean over {metrics['spectrum_points']} test points",
                    report.plot_spectra({name: spectrum}, fig_dir / "jacobian_spectrum.png"),
                )
            )
        if bit_usage is not None:
            figs.append(
                ("Bit usage over the train images", report.plot_bit_usage(bit_usage, fig_dir / "bit_usage.png"))
            )
    runs.write_json(run_dir / "eval.json", result)
    report.write_report(
        run_dir,
        f"aelab run: {name} on {config['dataset']}",
        [("Test metrics (fitted on train, scored on test)", [{"model": name, **metrics}])],
        figs,
        notes=[f"Data: {config['dataset']}, {len(train_x)} train / {len(test_x)} test images."],
        config=config,
    )
    # the MLflow run that trained this run folder, if any (RUN/tracking.json): a failure there keeps all of the above
    tracking.log_evaluation(
        run_dir,
        metrics,
        [run_dir / "eval.json", run_dir / "report.html", run_dir / "report.md"],
        [run_dir / "figures"] if figures else [],
    )
    return result


def _figures(model, run_dir, fig_dir, test_x, test_y, test_codes, test_hat, tsne_points, seed) -> list:
    figs = []
    name = type(model).name
    shown = first_of_each_class(test_y, 16, seed)
    figs.append(
        (
            "Test images (top) and reconstructions (bottom)",
            report.plot_image_rows(
                [test_x[shown].numpy(), test_hat[shown]], ["input", "recon"], fig_dir / "reconstructions.png"
            ),
        )
    )
    n = min(tsne_points, len(test_codes))
    emb = tsne_2d(test_codes[:n], seed) if test_codes.shape[1] > 2 else test_codes[:n]
    figs.append(
        (
            f"t-SNE of {n} test codes, coloured by label",
            report.plot_scatter(emb, test_y[:n].numpy(), fig_dir / "tsne.png", f"{name}: test codes"),
        )
    )
    history = runs.read_history(run_dir)
    if history:
        figs.append(
            (
                "Loss curves",
                report.plot_curves(
                    {name: history}, fig_dir / "loss.png", units={name: report.loss_unit(runs.read_config(run_dir))}
                ),
            )
        )
    if model.can_sample:
        gen = torch.Generator().manual_seed(seed)
        samples = model.sample(32, generator=gen).cpu().numpy()
        figs.append(
            (
                "Samples from the prior",
                report.plot_image_rows([samples[:16], samples[16:]], ["", ""], fig_dir / "samples.png"),
            )
        )
        pairs = [(a, b) for a, b in [(0, 1), (3, 8), (4, 9)] if b < len(shown)]
        rows = [model.interpolate(test_x[shown[a]], test_x[shown[b]], steps=12).cpu().numpy() for a, b in pairs]
        figs.append(
            (
                "Interpolations between test digits (posterior means)",
                report.plot_image_rows(rows, [f"{a}→{b}" for a, b in pairs], fig_dir / "interpolation.png"),
            )
        )
    return figs
