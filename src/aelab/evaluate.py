"""Evaluate a trained run honestly: everything that is fitted (PCA, probes) is fitted on the
TRAIN split and scored on the TEST split, and eval.json records which data and splits were used.

Metrics (per image unless stated):
    recon_mse      mean squared error per pixel on test images
    recon_sse      sum of squared errors over pixels, averaged over test images
                   (the unit of Hinton & Salakhutdinov 2006: 3.00 AE / 8.01 logistic PCA / 13.87 PCA)
    pca_sse        the same for PCA with as many components as the code, fitted on train (sse_ratio_to_pca: the
                   ratio, left out when the code has as many dimensions as the images have pixels: PCA is exact)
    probe_accuracy logistic regression fitted on train codes, scored on test codes; its C (probe_C) is chosen
                   from aelab.metrics.codes.PROBE_C_GRID on the run's validation split when it has one
    raw_probe_accuracy  the same on raw pixels (raw_probe_C)
    test_*         the model's own loss terms on the test split (aelab.train.evaluate_loss)
    nll_nats       models with a likelihood (VAE): -log p(x) by importance sampling (IWAE bound, k samples;
                   aelab.metrics.likelihood)
    active_units   models with a posterior KL (VAE): latent dimensions whose KL(q(z_j|x) || N(0,1)), averaged
                   over the test images, exceeds 0.01 nats (eval.json keeps every dimension's KL)
    jacobian_*, saturation   MLP encoders: contraction (aelab.metrics.contraction)
    bits_*, code_*           binary codes: usage statistics (aelab.metrics.retrieval)

`evaluate(run, write=False)` computes and returns; only `write=True` touches the run folder.
With progress=True, tqdm bars on stderr (labelled by the run folder's name) follow the stages, IWAE and t-SNE.
The figures are drawn by aelab.evaluate_figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import data as datamod
from . import evaluate_figures as drawing
from . import report, runs, tracking
from .errors import CheckpointError, ConfigError, StorageError
from .evaluate_figures import TRAVERSED_DIMS  # noqa: F401 (aelab.evaluate.TRAVERSED_DIMS, as before)
from .metrics.codes import (
    DEFAULT_PROBE_C,
    PROBE_C_GRID,
    encode_all,
    reconstruct_all,
    tsne_2d,
    validated_probe,
)
from .metrics.contraction import contraction_diagnostics
from .metrics.convergence import still_falling_warning, worse_than_pca_warning
from .metrics.likelihood import (  # noqa: F401 (the IWAE names stay importable from aelab.evaluate)
    ACTIVE_UNIT_NATS,
    IWAE_BATCH,
    IWAE_SAMPLE_BYTES,
    IWAE_TENSOR_BYTES,
    MAX_IWAE_K,
    active_units,
    iwae_batch_size,
    iwae_mean,
)
from .metrics.reconstruction import pca_reconstruction_sse, sse_per_image
from .metrics.retrieval import code_statistics
from .progress import Progress
from .train import evaluate_loss

_RAW_PROBE_CACHE: dict[tuple, dict] = {}
TSNE_POINTS = 1000  # the t-SNE map: the first N test codes (about 5 s on 2 cores; 2,000 took 4x as long)


PROBE_CACHE_VERSION = 3  # of the solver and the protocol: a change makes every cached probe stale


def raw_probe(config: dict, x_tr, y_tr, x_te, y_te, validation) -> dict:
    """The pixel probe (aelab.metrics.codes.validated_probe) depends only on the data: it is fitted once per train
    split, validation split and test set, then read back by every row, run and seed, in this process and from disk
    (`probes/<key>.json` in aelab's data folder, beside the decoded-folder cache). The key is a hash of the arrays
    themselves (never of what config.json says), of the validation split that chooses C, of the C grid and of
    the solver's version."""
    import json

    digest = hashlib.sha256()
    for part in (x_tr, y_tr, x_te, y_te, *(validation or ())):
        array = np.ascontiguousarray(part)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    digest.update(json.dumps([PROBE_CACHE_VERSION, list(PROBE_C_GRID)]).encode())
    key = digest.hexdigest()
    if key in _RAW_PROBE_CACHE:
        return _RAW_PROBE_CACHE[key]
    path = datamod.datasets.data_dir() / "probes" / f"{key}.json"
    cached = _read_probe(path)
    if cached is None:
        with _probe_lock(path):  # seeds run side by side (--jobs) wait for one fit rather than each fitting it
            cached = _read_probe(path)
            if cached is None:
                cached = validated_probe(x_tr, y_tr, x_te, y_te, validation)
                try:
                    runs.write_json(path, cached)
                except StorageError:  # a read-only data folder costs time, not the evaluation
                    pass
    _RAW_PROBE_CACHE[key] = cached
    return cached


@contextlib.contextmanager
def _probe_lock(path: Path):
    """An exclusive flock on PATH.lock while the probe is fitted; without a writable folder, no lock (each process
    fits its own, as before)."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a")
    except OSError:
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing releases the lock


def refuse_seed_group(run_dir: Path) -> None:
    """A `train --seeds` folder is not a run: say what to do with it instead of "model.json: missing"."""
    if (run_dir / "model.json").exists() or (run_dir / "config.json").exists() or not run_dir.is_dir():
        return
    from .runs import seed_folders

    seeds = [s for s, _ in seed_folders(run_dir)]
    if seeds:
        span = f"seed-{seeds[0]}" if len(seeds) == 1 else f"seed-{seeds[0]} ... seed-{seeds[-1]}"
        raise ConfigError(
            f"{run_dir} is a seed group ({span}): evaluate {run_dir / f'seed-{seeds[-1]}'} (one of its runs), or "
            f"compare the group (aelab compare {run_dir} ... --out DIR)"
        )


def probe_convergence_warning(name: str, probe: dict) -> str | None:
    """aelab's one line for a probe whose solver stopped before its tolerance (instead of the library's warning)."""
    if probe.get("converged", True):
        return None
    from .metrics.logistic import MAX_ITER, TOL

    return (
        f"the linear probe on the {name} stopped at {MAX_ITER} L-BFGS iterations before its gradient reached {TOL:g}"
        " (nearly separable data at a large C): its accuracy may be off in the third decimal"
    )


def _read_probe(path: Path) -> dict | None:
    """A cached probe result, or None when absent or not of the expected form (the cache is never trusted)."""
    try:
        result = runs.read_json(path, max_bytes=1 << 16)
    except CheckpointError:
        return None
    numbers = lambda v: isinstance(v, list) and all(isinstance(a, (int, float)) for a in v)  # noqa: E731
    ok = (
        isinstance(result, dict)
        and isinstance(result.get("accuracy"), float)
        and 0 <= result["accuracy"] <= 1
        and isinstance(result.get("C"), (int, float))
        and numbers(result.get("grid"))
        and (result.get("validation_accuracy") is None or numbers(result["validation_accuracy"]))
        and isinstance(result.get("converged"), bool)
    )
    return result if ok else None


def first_of_each_class(labels: torch.Tensor, n: int = 16, seed: int = 0) -> list[int]:
    """Indices of the first example of each class (up to 10), then random others up to n: the images that
    reconstruction figures show."""
    first = [int(torch.nonzero(labels == c)[0]) for c in torch.unique(labels)[:10]]
    others = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    return first + [i for i in others if i not in first][: n - len(first)]


def evaluate(
    run_dir: str | Path,
    iwae_k: int = 100,
    tsne_points: int = TSNE_POINTS,
    figures: bool = True,
    seed: int = 0,
    write: bool = True,
    data_dir: str | Path | None = None,
    data=None,
    encoder=None,
    decoder=None,
    progress: bool = False,
    test_dataset: str | Path | None = None,
    log_mlflow: bool = False,
    device: str = "cpu",
    trust_code=False,
) -> dict:
    """Compute the metrics of a run. With write=True, also write eval.json, report.html/md and (with
    figures=True) figures/ into the run folder, holding its lock; with write=False nothing on disk changes.
    The data come from `data_dir` (default: $AELAB_DATA or ~/.cache/aelab), never from config.json, and
    are never downloaded here. `data` (an aelab.data.Data or a path) stands in for the recorded dataset (data
    given from Python, a moved folder; its content hash must match), `encoder`/`decoder` for the user modules
    a run was trained with (see aelab.runs.load_model). progress=True shows tqdm bars on stderr, labelled by
    the run folder's name. `test_dataset` (a dataset name or path) scores the run on that dataset's test split
    instead (a second test set: PCA and probes are still fitted on the run's own train split); with write=True
    it writes eval-test-NAME.json only, and leaves eval.json, the report and figures alone. log_mlflow=True (with
    write=True) also logs eval.json's numbers and the report to the MLflow run recorded in RUN/tracking.json: opt-in,
    because a run folder from elsewhere could name any store there. `device` ("cpu", "cuda", "cuda:N") runs the
    network passes over whole splits there (codes, reconstructions, the test loss, the IWAE bound, whose samples
    are drawn on the CPU so that its numbers do not depend on the device); the diagnostics and figures run on
    the CPU. `trust_code` (True, or the classes trusted by name): a model.json naming its networks by import path
    (`--encoder pkg.module:Class`) is rebuilt only when it allows them (aelab.runs.load_model: the trust rule)."""
    from .train import resolve_device

    device = resolve_device(device)  # an unknown or absent device: one line, before any work
    datamod.datasets.check_data_dir(data_dir)
    run_dir = Path(run_dir)
    refuse_seed_group(run_dir)
    with runs.RunLock(run_dir, create=False) if write else contextlib.nullcontext(), contextlib.ExitStack() as closing:
        return _evaluate(closing, run_dir, iwae_k, tsne_points, figures, seed, write, data_dir, data, encoder, decoder,
                         progress, test_dataset, log_mlflow, device, trust_code)  # fmt: skip


def _evaluate(closing: contextlib.ExitStack, run_dir: Path, iwae_k, tsne_points, figures, seed, write, data_dir, data,
              encoder, decoder, progress, test_dataset, log_mlflow, device, trust_code) -> dict:  # fmt: skip
    """The steps of `evaluate`, under the run's lock when writing; `closing` closes the stage bar however they end."""
    # the file is read bounded by the model model.json describes, then hashed: the lock held by the caller
    # keeps any writer out in between, so the hash is of the weights loaded
    model = runs.load_model(run_dir, encoder=encoder, decoder=decoder, trust_code=trust_code)
    scored = runs.weights_record(run_dir)  # which weights these numbers are about
    config = runs.read_config(run_dir)
    split, test_source, eval_name = _evaluation_data(run_dir, model, config, data_dir, data, test_dataset)
    figures = figures and test_dataset is None  # a second test set writes its eval-test-NAME.json only
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    history = _check_before_work(run_dir, model, split[2], iwae_k, write and figures, device)
    label = run_dir.resolve().name  # bars say which run, when several are evaluated one after another
    bar = closing.enter_context(_stage_bar(label, model, write, figures, progress))  # closed however evaluate ends
    metrics, probes, test_codes, test_hat = _codes_pca_and_probes(bar, run_dir, model, config, split, device)
    inner = label if progress else None  # the label of the inner bars (IWAE, AIS, t-SNE)
    rbm_protocol = _test_loss_and_likelihood(bar, metrics, model, config, split, iwae_k, seed, device, inner)
    model.cpu()  # the diagnostics and figures run on the CPU
    kl_per_dimension, spectrum, bit_usage = _diagnostics(bar, metrics, model, split)
    result = _result(run_dir, scored, model, config, split, test_source, test_dataset, metrics, probes, history,
                     tsne_points, t0, kl_per_dimension, spectrum, rbm_protocol)  # fmt: skip
    if write:
        runs.remove_stale_temp_files(run_dir)  # under the lock: what a killed evaluate left
        figs = _figures(bar, run_dir, model, history, config, split, test_codes, test_hat, tsne_points, seed,
                        result, bit_usage, inner) if figures else []  # fmt: skip
        _write_run_folder(bar, run_dir, model, config, eval_name, result, figs, figures, test_dataset, log_mlflow)
    bar.close()
    return result


def _evaluation_data(run_dir: Path, model, config: dict, data_dir, data, test_dataset) -> tuple:
    """The run's (train_x, train_y, test_x, test_y), where its test split comes from and the file its evaluation
    goes to, checked against the model: `test_dataset` swaps in that dataset's test split (a second test set: the
    fitted parts still come from the run's train split), written to eval-test-NAME.json."""
    train_x, train_y, test_x, test_y = runs.run_data(config, data_dir, data)
    test_source, eval_name = "test", "eval.json"
    if test_dataset is not None:  # a second test set: the fitted parts still come from the run's train split
        test_x, test_y, test_source = datamod.load_test_split(test_dataset, data_dir)
        if tuple(test_x.shape[1:]) != tuple(model.input_shape):
            raise ConfigError(
                f"--test-dataset {test_dataset}: images of shape {tuple(test_x.shape[1:])}, but the run's model "
                f"takes {tuple(model.input_shape)}"
            )
        eval_name = f"eval-test-{re.sub(r'[^A-Za-z0-9_.-]+', '_', Path(str(test_dataset)).name)}.json"
    if len(train_x) < 2 or len(test_x) < 1:  # config.json is untrusted (train_limit: 1): nothing to fit PCA on
        raise CheckpointError(
            f"{run_dir}/config.json leaves {len(train_x)} train and {len(test_x)} test images: too few to evaluate"
        )
    if tuple(test_x.shape[1:]) != tuple(model.input_shape):
        raise CheckpointError(
            f"{run_dir}/config.json names data of shape {tuple(test_x.shape[1:])}, but the model "
            f"in model.json takes {tuple(model.input_shape)}"
        )
    return (train_x, train_y, test_x, test_y), test_source, eval_name


def _labeled(train_y: torch.Tensor, test_y: torch.Tensor) -> bool:
    return bool(len(train_y)) and bool((train_y >= 0).all()) and bool((test_y >= 0).all())


def _check_before_work(run_dir: Path, model, test_x, iwae_k: int, figures_folder: bool, device) -> list:
    """The run's history (the curves, and whether the loss was still falling at the end), read with the rest of the
    run folder before the work starts, so that bad input stays one line (no bars); nothing is written before the
    work is done."""
    if model.has_likelihood:  # before any work: k samples of every image in a batch must fit in memory
        iwae_batch_size(iwae_k, math.prod(model.input_shape), model.latent)
    history = runs.read_history(run_dir)
    if figures_folder:
        runs.check_subfolder(run_dir, "figures")
    with torch.no_grad():  # weights that overflow (1e38) are the file's fault: one line, before any work starts
        probe_x = test_x[:8].to(device)
        if not (torch.isfinite(model.to(device).eval().encode(probe_x)).all() and torch.isfinite(model(probe_x)).all()):
            raise CheckpointError(f"{run_dir}/model.safetensors: the weights give non-finite codes or reconstructions")
    return history


def _stage_bar(label: str, model, write: bool, figures: bool, progress: bool) -> Progress:
    """The bar over evaluate's stages: codes and test loss, the optional ones the model has, figures, report."""
    optional_stages = [model.has_likelihood, model.has_posterior_kl, model.has_mlp_encoder, model.binary_code]
    return Progress(
        f"{label}: evaluate",
        total=2 + sum(optional_stages) + (write and figures) + write,  # + codes, test loss
        unit="stage",
        enabled=progress,
    )


def _codes_pca_and_probes(bar: Progress, run_dir: Path, model, config: dict, split: tuple, device) -> tuple:
    """The first stage: codes and reconstructions (on `device`), the reconstruction errors against PCA's, the
    probes. Returns (metrics, probes, test_codes, test_hat)."""
    train_x, _, test_x, _ = split
    bar.phase("codes, PCA, probes")
    model.to(device)  # the passes over whole splits on `device`; the rest below on the CPU
    train_codes = encode_all(model, train_x.to(device)).cpu().numpy()
    test_codes = encode_all(model, test_x.to(device)).cpu().numpy()
    test_hat = reconstruct_all(model, test_x.to(device)).cpu().numpy()
    for what, values in (("train codes", train_codes), ("test codes", test_codes), ("reconstructions", test_hat)):
        if not np.isfinite(values).all():  # weights that overflow (1e38) are the file's fault: one line
            raise CheckpointError(f"{run_dir}/model.safetensors: the weights give non-finite {what}")
    x_tr, x_te = train_x.numpy(), test_x.numpy()
    sse = sse_per_image(x_te, test_hat)
    code_dim = test_codes.shape[1]
    metrics: dict = {
        "recon_mse": float(sse.mean() / x_te[0].size),
        "recon_sse": float(sse.mean()),
        "code_dim": int(code_dim),
        "pca_sse": pca_reconstruction_sse(x_tr, x_te, min(code_dim, x_tr[0].size, len(x_tr))),
    }
    probes = _probes(config, split, train_codes, test_codes)
    if probes:
        metrics["probe_accuracy"] = probes["codes"]["accuracy"]
        metrics["raw_probe_accuracy"] = probes["raw pixels"]["accuracy"]
        metrics["probe_C"], metrics["raw_probe_C"] = probes["codes"]["C"], probes["raw pixels"]["C"]
    if code_dim < x_tr[0].size:  # else PCA keeps every direction: exact, and a ratio to ~0 is noise
        metrics["sse_ratio_to_pca"] = metrics["recon_sse"] / metrics["pca_sse"]
    bar.update()
    return metrics, probes, test_codes, test_hat


def _probes(config: dict, split: tuple, train_codes, test_codes) -> dict:
    """The linear probes on the codes and on the raw pixels; none for unlabeled data (or one class)."""
    train_x, train_y, test_x, test_y = split
    if not (_labeled(train_y, test_y) and len(train_y.unique()) > 1):  # unlabeled data (or one class): no probe to fit
        return {}
    # C is chosen on the run's validation split (probe fitted on train minus validation), then the probe is
    # refitted on the whole train split and scored once on test
    validation = runs.validation_indices(config, train_y.numpy())
    y_tr, y_te = train_y.numpy(), test_y.numpy()
    return {
        "codes": validated_probe(train_codes, y_tr, test_codes, y_te, validation),
        "raw pixels": raw_probe(config, train_x.numpy(), y_tr, test_x.numpy(), y_te, validation),
    }


def _test_loss_and_likelihood(
    bar: Progress, metrics: dict, model, config: dict, split: tuple, iwae_k: int, seed: int, device, inner: str | None
) -> dict | None:
    """The model's own loss terms on the test split, and its test likelihood when it has one (on `device`), into
    metrics. Returns the protocol of an RBM's log Z and log p(x); None for other models."""
    train_x, train_y, test_x, _ = split
    bar.phase("test loss")
    for k, v in evaluate_loss(model, test_x.to(device), 500, seed).items():
        metrics[f"test_{k}"] = v
    bar.update()
    if model.has_likelihood:
        bar.phase("IWAE")
        metrics["nll_nats"] = -iwae_mean(model, test_x.to(device), iwae_k, seed, inner)
        metrics["iwae_k"] = iwae_k
        bar.update()
    if not model.has_partition_function:
        return None
    from .metrics.rbm_likelihood import run_metrics  # an RBM: log Z by AIS (exact when small) and log p(x)

    bar.phase("log Z and log p(x)")
    extra, rbm_protocol = run_metrics(model, config, train_x, train_y, test_x, seed=seed, progress=inner)
    metrics.update(extra)
    return rbm_protocol


def _diagnostics(bar: Progress, metrics: dict, model, split: tuple) -> tuple:
    """The stages a model has by its kind (on the CPU), into metrics: KL per dimension and active units, the
    encoder's contraction, binary code statistics. Returns (kl_per_dimension, spectrum, bit_usage), None where absent."""
    train_x, _, test_x, _ = split
    kl_per_dimension, spectrum, bit_usage = None, None, None
    if model.has_posterior_kl:
        bar.phase("KL per dimension")
        kl_per_dimension = model.kl_per_dimension(test_x).tolist()
        metrics["active_units"] = active_units(kl_per_dimension)
        bar.update()
    if model.has_mlp_encoder:
        bar.phase("contraction")
        extra, spectrum = contraction_diagnostics(model, test_x)
        metrics.update(extra)
        bar.update()
    if model.binary_code:
        bar.phase("code statistics")
        extra, bit_usage = code_statistics(model, train_x, test_x)
        metrics.update(extra)
        bar.update()
    if hasattr(model, "penalty_used"):  # the CAE: closed-form or exact Jacobian penalty
        metrics["penalty_used"] = model.penalty_used
    return kl_per_dimension, spectrum, bit_usage


def _warnings(run_dir: Path, history: list, model, metrics: dict, probes: dict) -> list[str]:
    """Signs of an undertrained run (aelab.metrics.convergence), and probes stopped before their tolerance."""
    warnings = (
        still_falling_warning(history, str(run_dir)),
        worse_than_pca_warning(metrics, bool(model.binary_code), math.prod(model.input_shape)),
        *(probe_convergence_warning(name, probe) for name, probe in probes.items()),
    )
    return [w for w in warnings if w is not None]


def _result(
    run_dir, scored, model, config, split, test_source, test_dataset, metrics, probes, history, tsne_points, t0,
    kl_per_dimension, spectrum, rbm_protocol,
) -> dict:  # fmt: skip
    """eval.json: the metrics, the data and splits they were computed on, and how."""
    train_x, train_y, test_x, test_y = split
    warnings = _warnings(run_dir, history, model, metrics, probes)
    result = {
        "run": str(run_dir),
        "scored": scored,
        "model": type(model).name,
        "metrics": metrics,
        "data": {
            "dataset": config["dataset"],
            "dataset_options": config.get("dataset_options", {}),
            "fit_split": "train",
            "score_split": test_source,
            "n_train": len(train_x),
            "n_val": config.get("n_val", 0),  # carved from the n_train images: the model trained on the rest
            "n_test": len(test_x),
            "sha256": (config.get("data_info") or {}).get("sha256"),
            "labeled": _labeled(train_y, test_y),
            "class_names": class_names(config, test_y.tolist()) if test_dataset is None else None,
        },
        "protocol": {
            "pca": "fitted on train images, scored on test",
            "probe": "LogisticRegression on standardised train codes, scored on test codes; "
            + (
                "its C chosen on the validation split (fitted on train minus validation), then refitted on train"
                if probes and probes["codes"]["validation_accuracy"] is not None
                else f"C = {DEFAULT_PROBE_C:g} (no validation split to choose it on)"
            ),
            "probe_selection": probes,
            "tsne": f"{min(tsne_points, len(test_x))} test codes" if tsne_points else "not drawn",
        },
        "eval_time_s": time.perf_counter() - t0,
        "warnings": warnings,  # signs of an undertrained run (aelab.metrics.convergence)
    }
    if spectrum is not None:
        result["jacobian_mean_singular_values"] = spectrum
    if rbm_protocol is not None:
        result["protocol"]["rbm_likelihood"] = rbm_protocol
    if kl_per_dimension is not None:
        result["kl_per_dimension"] = kl_per_dimension
        result["protocol"]["active_units"] = f"KL(q(z_j|x) || N(0,1)), mean over test images, > {ACTIVE_UNIT_NATS} nats"
    return result


def _figures(
    bar, run_dir, model, history, config, split, test_codes, test_hat, tsne_points, seed, result, bit_usage, progress
) -> list:
    """The figures/ folder: every figure the model has, as (caption, path) in the report's order. `progress`
    labels the t-SNE bar; None for none."""
    _, _, test_x, test_y = split
    fig_dir = runs.subfolder(run_dir, "figures")
    runs.remove_stale_temp_files(fig_dir)
    bar.phase("figures")
    name, kl = type(model).name, result.get("kl_per_dimension")
    shown = first_of_each_class(test_y, 16, seed)
    names = class_names(config, test_y)
    figs = [drawing.reconstructions(test_x, test_hat, shown, fig_dir)]
    if history:
        figs.append(drawing.loss_curves(name, history, config, fig_dir))
    if history and all(k in history[-1] for k in ("test_recon", "test_kl")):
        figs.append(drawing.elbo_terms(history, fig_dir))
    n = min(tsne_points, len(test_codes))
    if n > 0:  # tsne_points=0: no map (the costly part of the figures)
        emb = tsne_2d(test_codes[:n], seed, progress) if test_codes.shape[1] > 2 else test_codes[:n]
        figs.append(drawing.tsne_map(name, emb, test_y[:n].numpy(), names, fig_dir))
    if kl is not None:
        figs.append(drawing.kl_per_dimension(kl, fig_dir))
    if model.can_sample:
        figs.append(drawing.samples(model, seed, fig_dir))
    if not model.binary_code:  # a code that varies continuously: its dimensions and lines between codes decode
        figs.append(drawing.traversals(model, test_x[shown[0]], test_codes, kl, fig_dir))
        figs.append(drawing.interpolations(model, test_x, test_y, shown, names, fig_dir))
    if "jacobian_mean_singular_values" in result:
        spectrum, points = result["jacobian_mean_singular_values"], result["metrics"]["spectrum_points"]
        figs.append(drawing.jacobian_spectrum(name, spectrum, points, fig_dir))
    if bit_usage is not None:
        figs.append(drawing.bit_usage(bit_usage, fig_dir))
    bar.update()
    return figs


def _write_run_folder(bar, run_dir, model, config, eval_name, result, figs, figures, test_dataset, log_mlflow) -> None:
    """eval.json (or eval-test-NAME.json); for the run's own test split, also the report, and the evaluation logged
    to the run's MLflow run (or a note that there is one)."""
    bar.phase("report")
    runs.write_json(run_dir / eval_name, result)
    if test_dataset is None:  # the run's own eval.json, report and tracking stay about its own test split
        _write_report(run_dir, model, config, result, figs)
        _track(run_dir, result["metrics"], figures, log_mlflow)
    bar.update()


def _write_report(run_dir: Path, model, config: dict, result: dict, figs: list) -> None:
    """report.html and report.md: the reading of the numbers, the metrics table, the data line, the figures."""
    from .reading import display_name, reading

    name, metrics, warnings = result["model"], result["metrics"], result["warnings"]
    line = reading([{"name": display_name(name), "metrics": metrics, "warnings": warnings,
                     "binary_code": bool(model.binary_code)}])  # fmt: skip
    report.write_report(
        run_dir,
        f"aelab run: {name} on {config['dataset']}",
        [("Test metrics (fitted on train, scored on test)", [{"model": name, **metrics}])],
        figs,
        notes=[data_sentence(config, result["data"]["n_train"], result["data"]["n_test"])]
        + ([] if "probe_accuracy" in metrics else ["The data are unlabeled: the probe rows are skipped."]),
        config=config,
        lead=([line] if line else []) + [f"Warning: {w[0].upper()}{w[1:]}." for w in warnings],
    )


def _track(run_dir: Path, metrics: dict, figures: bool, log_mlflow: bool) -> None:
    """The MLflow run that trained this run folder (RUN/tracking.json), when asked: a failure there keeps all of the
    above; unasked, one line says that the evaluation could go there."""
    if log_mlflow:
        tracking.log_evaluation(
            run_dir,
            metrics,
            [run_dir / "eval.json", run_dir / "report.html", run_dir / "report.md"],
            [run_dir / "figures"] if figures else [],
        )
    elif tracking.read_tracking_file(run_dir)[0] is not None:
        print(
            f"aelab: note: {run_dir}/tracking.json records an MLflow run; evaluate --mlflow logs this evaluation there",
            file=sys.stderr,
        )


def data_sentence(config: dict, n_train: int, n_test: int) -> str:
    """The report's data line: the train split, how much of it trained the model and how much was the
    validation split, the test split."""
    n_val = config.get("n_val") if isinstance(config.get("n_val"), int) else 0
    split = (
        f" ({n_train - n_val} trained the model, {n_val} held out as the validation split; PCA and the probes "
        f"are fitted on all {n_train})"
        if 0 < n_val < n_train
        else ""
    )
    return f"Data: {config['dataset']}, {n_train} train images{split} / {n_test} test images."


def class_names(config: dict, labels) -> list[str] | None:
    """The class names of a run's data (a folder's class folders, sorted: label i is names[i]), or None for
    numbered classes. config.json is untrusted: names are used only when they are a list of strings that covers
    every label."""
    info = config.get("data_info") if isinstance(config.get("data_info"), dict) else {}
    names = info.get("classes")
    if not (isinstance(names, list) and names and all(isinstance(c, str) for c in names)):
        return None
    labels = [int(y) for y in labels if int(y) >= 0]
    return [c[:40] for c in names] if not labels or max(labels) < len(names) else None
