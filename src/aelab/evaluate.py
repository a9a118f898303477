"""Evaluate a trained run honestly: everything that is fitted (PCA, probes) is fitted on the
TRAIN split and scored on the TEST split, and eval.json records which data and splits were used.

Metrics (per image unless stated):
    recon_mse      mean squared error per pixel on test images
    recon_sse      sum of squared errors over pixels, averaged over test images
                   (the unit of Hinton & Salakhutdinov 2006: 3.00 AE / 8.01 logistic PCA / 13.87 PCA)
    pca_sse        the same for PCA with as many components as the code, fitted on train
    probe_accuracy logistic regression fitted on train codes, scored on test codes
    raw_probe_accuracy  the same on raw pixels
    nll_nats       VAE only: -log p(x) by importance sampling (IWAE bound, k samples)
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from . import data as datamod
from . import io, report
from .train import load_model

# model name -> function(model, train_x, test_x, fig_dir) -> (metrics dict, [(caption, png path)])
EXTRA_DIAGNOSTICS: dict[str, Callable] = {}


def _contraction_diagnostics(*args):  # imported on use: evaluate must not need every model's module
    from .models.contractive import contraction_diagnostics

    return contraction_diagnostics(*args)


# mean ||J_f||_F, saturation and Jacobian spectrum (Rifai et al. 2011) for the MLP autoencoders
EXTRA_DIAGNOSTICS.update(dict.fromkeys(("ae", "cae", "dae"), _contraction_diagnostics))


@torch.no_grad()
def encode_all(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model.encode(xb).flatten(1) for xb in x.split(batch_size)])


@torch.no_grad()
def reconstruct_all(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model.decode(model.encode(xb)) for xb in x.split(batch_size)])


def sse_per_image(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    return ((x.reshape(len(x), -1) - x_hat.reshape(len(x), -1)) ** 2).sum(1)


def pca_reconstruction_sse(train_x: np.ndarray, test_x: np.ndarray, n_components: int) -> float:
    """Test SSE per image of PCA with n_components fitted on the train images only."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_components, svd_solver="covariance_eigh").fit(train_x.reshape(len(train_x), -1))
    x_hat = pca.inverse_transform(pca.transform(test_x.reshape(len(test_x), -1)))
    return float(sse_per_image(test_x, x_hat).mean())


def probe_accuracy(train_codes: np.ndarray, train_y: np.ndarray, test_codes: np.ndarray, test_y: np.ndarray,
                   max_iter: int = 500) -> float:
    """Logistic-regression probe: fitted on train codes, scored on held-out test codes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from threadpoolctl import threadpool_limits

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    # one BLAS thread: these small products gain nothing from more, and lose a lot on a busy machine
    with threadpool_limits(1, "blas"):
        probe.fit(train_codes.reshape(len(train_codes), -1), train_y)
        return float(probe.score(test_codes.reshape(len(test_codes), -1), test_y))


_RAW_PROBE_CACHE: dict[tuple, float] = {}


def raw_probe_accuracy(config: dict, x_tr, y_tr, x_te, y_te) -> float:
    """The pixel probe depends only on the data: compute it once per process and data set."""
    key = (config["dataset"], repr(sorted(config.get("dataset_options", {}).items())), config.get("train_limit"))
    if key not in _RAW_PROBE_CACHE:
        _RAW_PROBE_CACHE[key] = probe_accuracy(x_tr, y_tr, x_te, y_te)
    return _RAW_PROBE_CACHE[key]


def tsne_2d(codes: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = min(30.0, max(2.0, (len(codes) - 1) / 3))
    # 500 iterations (sklearn's default is 1000): the map is settled by then, at half the cost
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity, max_iter=500).fit_transform(
        codes.astype(np.float32))


def load_run_data(config: dict, data_dir: str | None = None):
    """The run's own train and test splits (same dataset, options and train_limit as in training)."""
    name, opts = config["dataset"], config.get("dataset_options", {})
    train_x, train_y = datamod.load(name, "train", data_dir or config.get("data_dir"), **opts)
    test_x, test_y = datamod.load(name, "test", data_dir or config.get("data_dir"), **opts)
    if config.get("train_limit"):
        train_x, train_y = train_x[: config["train_limit"]], train_y[: config["train_limit"]]
    return train_x, train_y, test_x, test_y


def evaluate(run_dir: str | Path, iwae_k: int = 100, tsne_points: int = 2000, figures: bool = True,
             seed: int = 0, write: bool = True) -> dict:
    """Compute the metrics and figures of a run; write eval.json and report.html/md into the run folder."""
    run_dir = Path(run_dir)
    model = load_model(run_dir)
    config = io.read_json(run_dir / "config.json")
    train_x, train_y, test_x, test_y = load_run_data(config)
    t0 = time.perf_counter()
    torch.manual_seed(seed)

    train_codes = encode_all(model, train_x).numpy()
    test_codes = encode_all(model, test_x).numpy()
    test_hat = reconstruct_all(model, test_x).numpy()
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
    if hasattr(model, "loss_terms"):
        from .train import evaluate_loss

        for k, v in evaluate_loss(model, test_x, 500, seed).items():
            metrics[f"test_{k}"] = v
    if hasattr(model, "iwae_log_likelihood"):
        gen = torch.Generator().manual_seed(seed)
        metrics["nll_nats"] = float(-model.iwae_log_likelihood(test_x, k=iwae_k, generator=gen).mean())
        metrics["iwae_k"] = iwae_k
    fig_dir = run_dir / "figures"
    figs: list[tuple[str, Path]] = []
    extra = EXTRA_DIAGNOSTICS.get(getattr(model, "model_name", ""))
    if extra is not None:
        extra_metrics, extra_figs = extra(model, train_x, test_x, fig_dir)
        metrics.update(extra_metrics)
        figs += extra_figs
    if figures:
        figs = _figures(model, run_dir, fig_dir, test_x, test_y, test_codes, test_hat, tsne_points, seed) + figs
    result = {
        "run": str(run_dir), "model": model.model_name, "metrics": metrics,
        "data": {"dataset": config["dataset"], "dataset_options": config.get("dataset_options", {}),
                 "fit_split": "train", "score_split": "test", "n_train": len(train_x), "n_test": len(test_x)},
        "protocol": {"pca": "fitted on train images, scored on test", "probe": "LogisticRegression on standardised "
                     "train codes, scored on test codes", "tsne": f"{min(tsne_points, len(test_x))} test codes"},
        "eval_time_s": time.perf_counter() - t0,
    }
    if write:
        io.write_json(run_dir / "eval.json", result)
        report.write_report(run_dir, f"aelab run: {model.model_name} on {config['dataset']}",
                            [("Test metrics (fitted on train, scored on test)", [{"model": model.model_name, **metrics}])],
                            figs, notes=[f"Data: {config['dataset']}, {len(train_x)} train / {len(test_x)} test images."],
                            config=config)
    return result


def read_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _figures(model, run_dir, fig_dir, test_x, test_y, test_codes, test_hat, tsne_points, seed) -> list:
    figs = []
    # the first test image of each class, then its reconstruction
    first = [int(torch.nonzero(test_y == c)[0]) for c in torch.unique(test_y)[:10]]
    others = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(seed)).tolist()
    first += [i for i in others if i not in first][: 16 - len(first)]  # a few random others, not more zeros
    figs.append(("Test images (top) and reconstructions (bottom)", report.plot_image_rows(
        [test_x[first].numpy(), test_hat[first]], ["input", "recon"], fig_dir / "reconstructions.png")))
    n = min(tsne_points, len(test_codes))
    emb = tsne_2d(test_codes[:n], seed) if test_codes.shape[1] > 2 else test_codes[:n]
    figs.append((f"t-SNE of {n} test codes, coloured by label", report.plot_scatter(
        emb, test_y[:n].numpy(), fig_dir / "tsne.png", f"{model.model_name}: test codes")))
    history = read_history(run_dir)
    if history:
        figs.append(("Loss curves", report.plot_curves({model.model_name: history}, fig_dir / "loss.png")))
    if hasattr(model, "sample"):
        gen = torch.Generator().manual_seed(seed)
        samples = model.sample(32, generator=gen).numpy()
        figs.append(("Samples from the prior", report.plot_image_rows([samples[:16], samples[16:]], ["", ""],
                                                                       fig_dir / "samples.png")))
    if hasattr(model, "interpolate"):
        rows = [model.interpolate(test_x[first[a]], test_x[first[b]], steps=12).numpy() for a, b in [(0, 1), (3, 8), (4, 9)]]
        figs.append(("Interpolations between test digits (posterior means)", report.plot_image_rows(
            rows, ["0→1", "3→8", "4→9"], fig_dir / "interpolation.png")))
    return figs


def _binary_diagnostics(model, train_x, test_x, fig_dir):
    from .models.binary import binary_diagnostics  # lazy: evaluate.py does not import the models it does not need

    return binary_diagnostics(model, train_x, test_x, fig_dir)


EXTRA_DIAGNOSTICS["binary"] = _binary_diagnostics
