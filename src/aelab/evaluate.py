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
    nll_nats       models with a likelihood (VAE): -log p(x) by importance sampling (IWAE bound, k samples)
    active_units   models with a posterior KL (VAE): latent dimensions whose KL(q(z_j|x) || N(0,1)), averaged
                   over the test images, exceeds 0.01 nats (eval.json keeps every dimension's KL)
    jacobian_*, saturation   MLP encoders: contraction (aelab.metrics.contraction)
    bits_*, code_*           binary codes: usage statistics (aelab.metrics.retrieval)

`evaluate(run, write=False)` computes and returns; only `write=True` touches the run folder.
With progress=True, tqdm bars on stderr (labelled by the run folder's name) follow the stages, IWAE and t-SNE.
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
from . import report, runs, tracking
from .errors import CheckpointError, ConfigError, StorageError
from .metrics.codes import (
    DEFAULT_PROBE_C,
    PROBE_C_GRID,
    encode_all,
    interpolation_rows,
    reconstruct_all,
    traversal_rows,
    tsne_2d,
    validated_probe,
)
from .metrics.contraction import contraction_diagnostics
from .metrics.convergence import still_falling_warning, worse_than_pca_warning
from .metrics.reconstruction import pca_reconstruction_sse, sse_per_image
from .metrics.retrieval import code_statistics
from .progress import Progress, inner_bar
from .train import evaluate_loss

_RAW_PROBE_CACHE: dict[tuple, dict] = {}
ACTIVE_UNIT_NATS = 0.01  # a latent dimension whose mean KL exceeds this carries information (Burda et al. 2016)
TSNE_POINTS = 1000  # the t-SNE map: the first N test codes (about 5 s on 2 cores; 2,000 took 4x as long)
IWAE_BATCH = 100  # images per IWAE step: k samples of each are held at once
TRAVERSED_DIMS = 8  # rows of the latent traversal figure


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
        return _evaluate(
            closing,
            run_dir,
            iwae_k,
            tsne_points,
            figures,
            seed,
            write,
            data_dir,
            data,
            encoder,
            decoder,
            progress,
            test_dataset,
            log_mlflow,
            device,
            trust_code,
        )


def _evaluate(
    closing: contextlib.ExitStack,
    run_dir: Path,
    iwae_k: int,
    tsne_points: int,
    figures: bool,
    seed: int,
    write: bool,
    data_dir,
    data,
    encoder,
    decoder,
    progress: bool,
    test_dataset=None,
    log_mlflow: bool = False,
    device: torch.device | str = "cpu",
    trust_code=False,
) -> dict:
    # the file is read bounded by the model model.json describes, then hashed: the lock held by the caller
    # keeps any writer out in between, so the hash is of the weights loaded
    model = runs.load_model(run_dir, encoder=encoder, decoder=decoder, trust_code=trust_code)
    scored = runs.weights_record(run_dir)  # which weights these numbers are about
    config = runs.read_config(run_dir)
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
        figures = False
    if len(train_x) < 2 or len(test_x) < 1:  # config.json is untrusted (train_limit: 1): nothing to fit PCA on
        raise CheckpointError(
            f"{run_dir}/config.json leaves {len(train_x)} train and {len(test_x)} test images: too few to evaluate"
        )
    labeled = bool(len(train_y)) and bool((train_y >= 0).all()) and bool((test_y >= 0).all())
    if tuple(test_x.shape[1:]) != tuple(model.input_shape):
        raise CheckpointError(
            f"{run_dir}/config.json names data of shape {tuple(test_x.shape[1:])}, but the model "
            f"in model.json takes {tuple(model.input_shape)}"
        )
    if model.has_likelihood:  # before any work: k samples of every image in a batch must fit in memory
        iwae_batch_size(iwae_k, math.prod(model.input_shape), model.latent)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    fig_dir = None
    history = runs.read_history(run_dir)  # the curves, and whether the loss was still falling at the end
    if write and figures:  # the rest of the run folder is read before the work starts, so bad input stays one
        runs.check_subfolder(run_dir, "figures")  # line (no bars); nothing is written before the work is done
    label = run_dir.resolve().name  # bars say which run, when several are evaluated one after another
    with torch.no_grad():  # weights that overflow (1e38) are the file's fault: one line, before any work starts
        probe_x = test_x[:8].to(device)
        if not (torch.isfinite(model.to(device).eval().encode(probe_x)).all() and torch.isfinite(model(probe_x)).all()):
            raise CheckpointError(f"{run_dir}/model.safetensors: the weights give non-finite codes or reconstructions")
    optional_stages = [model.has_likelihood, model.has_posterior_kl, model.has_mlp_encoder, model.binary_code]
    bar = Progress(
        f"{label}: evaluate",
        total=2 + sum(optional_stages) + (write and figures) + write,  # + codes, test loss
        unit="stage",
        enabled=progress,
    )
    closing.enter_context(bar)  # closed however evaluate ends

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
    probes = {}
    if labeled and len(train_y.unique()) > 1:  # unlabeled data (or one class): no probe to fit
        # C is chosen on the run's validation split (probe fitted on train minus validation), then the probe is
        # refitted on the whole train split and scored once on test
        validation = runs.validation_indices(config, train_y.numpy())
        y_tr, y_te = train_y.numpy(), test_y.numpy()
        probes["codes"] = validated_probe(train_codes, y_tr, test_codes, y_te, validation)
        probes["raw pixels"] = raw_probe(config, x_tr, y_tr, x_te, y_te, validation)
        metrics["probe_accuracy"] = probes["codes"]["accuracy"]
        metrics["raw_probe_accuracy"] = probes["raw pixels"]["accuracy"]
        metrics["probe_C"], metrics["raw_probe_C"] = probes["codes"]["C"], probes["raw pixels"]["C"]
    if code_dim < x_tr[0].size:  # else PCA keeps every direction: exact, and a ratio to ~0 is noise
        metrics["sse_ratio_to_pca"] = metrics["recon_sse"] / metrics["pca_sse"]
    bar.update()
    bar.phase("test loss")
    for k, v in evaluate_loss(model, test_x.to(device), 500, seed).items():
        metrics[f"test_{k}"] = v
    bar.update()
    if model.has_likelihood:
        bar.phase("IWAE")
        metrics["nll_nats"] = -iwae_mean(model, test_x.to(device), iwae_k, seed, label if progress else None)
        metrics["iwae_k"] = iwae_k
        bar.update()
    rbm_protocol = None
    if model.has_partition_function:  # an RBM: log Z by AIS (exact when small) and log p(x), on `device`
        from .metrics.rbm_likelihood import run_metrics

        bar.phase("log Z and log p(x)")
        ais_label = label if progress else None
        extra, rbm_protocol = run_metrics(model, config, train_x, train_y, test_x, seed=seed, progress=ais_label)
        metrics.update(extra)
    model.cpu()
    kl_per_dimension = None
    if model.has_posterior_kl:
        bar.phase("KL per dimension")
        kl_per_dimension = model.kl_per_dimension(test_x).tolist()
        metrics["active_units"] = sum(kl > ACTIVE_UNIT_NATS for kl in kl_per_dimension)
        bar.update()
    spectrum, bit_usage = None, None
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
    name = type(model).name
    warnings = [
        w
        for w in (
            still_falling_warning(history, str(run_dir)),
            worse_than_pca_warning(metrics, bool(model.binary_code), math.prod(model.input_shape)),
            *(probe_convergence_warning(name, probe) for name, probe in probes.items()),
        )
        if w is not None
    ]
    result = {
        "run": str(run_dir),
        "scored": scored,
        "model": name,
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
            "labeled": labeled,
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
    if not write:
        bar.close()
        return result

    runs.remove_stale_temp_files(run_dir)  # under the lock: what a killed evaluate left
    figs: list[tuple[str, Path]] = []
    if figures:
        fig_dir = runs.subfolder(run_dir, "figures")
        runs.remove_stale_temp_files(fig_dir)
        bar.phase("figures")
        figs = _figures(
            model,
            history,
            config,
            fig_dir,
            test_x,
            test_y,
            test_codes,
            test_hat,
            tsne_points,
            seed,
            kl_per_dimension,
            label if progress else None,
        )
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
        bar.update()
    bar.phase("report")
    runs.write_json(run_dir / eval_name, result)
    if test_dataset is not None:  # the run's own eval.json, report and tracking stay about its own test split
        bar.update()
        bar.close()
        return result
    from .reading import display_name, reading

    line = reading([{"name": display_name(name), "metrics": metrics, "warnings": warnings,
                     "binary_code": bool(model.binary_code)}])  # fmt: skip
    report.write_report(
        run_dir,
        f"aelab run: {name} on {config['dataset']}",
        [("Test metrics (fitted on train, scored on test)", [{"model": name, **metrics}])],
        figs,
        notes=[data_sentence(config, len(train_x), len(test_x))]
        + ([] if "probe_accuracy" in metrics else ["The data are unlabeled: the probe rows are skipped."]),
        config=config,
        lead=([line] if line else []) + [f"Warning: {w[0].upper()}{w[1:]}." for w in warnings],
    )
    # the MLflow run that trained this run folder (RUN/tracking.json), when asked: a failure there keeps all of the
    # above; unasked, one line says that the evaluation could go there
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
    bar.update()
    bar.close()
    return result


IWAE_TENSOR_BYTES = 2 * 2**30  # the (k, images, pixels) logits of one IWAE step would take at most this much
MAX_IWAE_K = 100_000
IWAE_SAMPLE_BYTES = 256 * 2**20  # the (k, images, latent) samples of one IWAE step: at most this much


def iwae_batch_size(k: int, pixels: int, latent: int) -> int:
    """Images per IWAE step: IWAE_BATCH, or fewer so that their k x pixels logits would stay under IWAE_TENSOR_BYTES
    and their k x latent samples under IWAE_SAMPLE_BYTES (a fixed rule: the estimate never depends on the memory
    of the machine; the decoder then runs over them in chunks, models.vae.IWAE_CHUNK_BYTES). Refuses (one line,
    with the GiB needed) a k whose samples of ONE image cannot fit."""
    from .models.memory import available_memory_bytes
    from .models.vae import IWAE_CHUNK_BYTES

    if k > MAX_IWAE_K:  # it would fit, in chunks, but run for hours: a typo, not a measurement
        raise ConfigError(f"--iwae-k {k}: at most {MAX_IWAE_K:,} samples per image (Burda et al. use 5,000)")
    per_image = k * pixels * 4
    need, have = 3 * k * latent * 4 + 2 * IWAE_CHUNK_BYTES, available_memory_bytes()  # samples, z, log weights
    if need > have:
        raise ConfigError(
            f"--iwae-k {k}: the samples of one image need about {need / 2**30:.3g} GiB; "
            f"{have / 2**30:.3g} GiB of memory is available (the test NLL needs no more than a few thousand)"
        )
    return max(1, min(IWAE_BATCH, IWAE_TENSOR_BYTES // per_image, IWAE_SAMPLE_BYTES // (k * latent * 4)))


def iwae_mean(model, x: torch.Tensor, k: int, seed: int, progress: str | None = None) -> float:
    """Mean IWAE estimate of log p(x) in nats over the images x, iwae_batch_size images at a time (one generator
    throughout: the same estimate per image as one call on all of x). `progress` labels a tqdm bar; None for none."""
    gen = torch.Generator().manual_seed(seed)
    batches = x.split(iwae_batch_size(k, math.prod(x.shape[1:]), model.latent))
    total = 0.0
    for xb in inner_bar(batches, f"{progress}: IWAE k={k}", "batch", enabled=progress is not None):
        total += float(model.iwae_log_likelihood(xb, k=k, batch_size=len(xb), generator=gen).double().sum())
    return total / len(x)


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


def _figures(
    model, history, config, fig_dir, test_x, test_y, test_codes, test_hat, tsne_points, seed, kl_per_dimension, progress
) -> list:
    figs = []
    name = type(model).name
    shown = first_of_each_class(test_y, 16, seed)
    names = class_names(config, test_y)
    label = (lambda y: names[int(y)]) if names else (lambda y: str(int(y)))  # noqa: E731
    figs.append(
        (
            "Test images (top) and reconstructions (bottom)",
            report.plot_image_rows(
                [test_x[shown].numpy(), test_hat[shown]], ["input", "recon"], fig_dir / "reconstructions.png"
            ),
        )
    )
    if history:
        figs.append(
            (
                f"Loss curves, {report.loss_unit(config)}",
                report.plot_curves({name: history}, fig_dir / "loss.png", units={name: report.loss_unit(config)}),
            )
        )
    if history and all(k in history[-1] for k in ("test_recon", "test_kl")):
        figs.append(
            (
                "The two terms of the negative ELBO on the test images, per epoch (nats per image)",
                report.plot_terms(
                    history,
                    {"test_recon": "reconstruction: -E_q log p(x|z)", "test_kl": "KL(q(z|x) || p(z))"},
                    fig_dir / "elbo_terms.png",
                    ylabel="nats per image",
                ),
            )
        )
    n = min(tsne_points, len(test_codes))
    if n > 0:  # tsne_points=0: no map (the costly part of the figures)
        emb = tsne_2d(test_codes[:n], seed, progress) if test_codes.shape[1] > 2 else test_codes[:n]
        figs.append(
            (
                f"t-SNE of {n} test codes, coloured by label",
                report.plot_scatter(
                    emb, test_y[:n].numpy(), fig_dir / "tsne.png", f"{name}: test codes", class_names=names
                ),
            )
        )
    if kl_per_dimension is not None:
        figs.append(
            (
                f"KL per latent dimension, mean over the test images (active: > {ACTIVE_UNIT_NATS} nats)",
                report.plot_kl_per_dimension(kl_per_dimension, ACTIVE_UNIT_NATS, fig_dir / "kl_per_dimension.png"),
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
    if not model.binary_code:  # a code that varies continuously: its dimensions and lines between codes decode
        if kl_per_dimension is not None:  # the VAE: its most informative dimensions, most KL first
            dims = [int(d) for d in np.argsort(kl_per_dimension, kind="stable")[::-1][:TRAVERSED_DIMS]]
            labels = [f"z{d} ({kl_per_dimension[d]:.2g} nats)" for d in dims]
            which = "the dimensions of highest KL"
        else:
            dims = list(range(min(TRAVERSED_DIMS, test_codes.shape[1])))
            labels = [f"z{d}" for d in dims]
            which = "the first code dimensions"
        rows = traversal_rows(model, test_x[shown[0]], test_codes, dims)
        figs.append(
            (
                f"Latent traversals of {which}: the test image (first column), then its code with one dimension "
                "set to the 2nd to 98th percentile of that dimension over the test codes",
                report.plot_image_rows(list(rows.numpy()), labels, fig_dir / "traversals.png"),
            )
        )
        pairs = [(shown[a], shown[b]) for a, b in [(0, 1), (3, 8), (4, 9), (2, 7)] if b < len(shown)]
        rows = interpolation_rows(model, test_x, pairs)
        figs.append(
            (
                "Interpolations between test images: the two real images at the ends, the decoded straight line "
                "between their codes in between",
                report.plot_image_rows(
                    list(rows.numpy()),
                    [f"{label(test_y[a])}→{label(test_y[b])}" for a, b in pairs],
                    fig_dir / "interpolation.png",
                ),
            )
        )
    return figs
