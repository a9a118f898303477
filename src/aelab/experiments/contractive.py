"""Rifai et al. (ICML 2011), Table 1: AE, AE+wd, DAE-g, DAE-b, CAE and an RBM with the same 784-1000 sigmoid code.

Every autoencoder is the one-layer h = sigmoid(W x + b) (1000 units, the code), x_hat = sigmoid(W' h + c),
cross-entropy loss, trained with the same budget (epochs, batch 128, Adam lr 1e-3) on --dataset (mnist5k by
default; `--dataset mnist --data-dir DIR` is the paper's scale); only the regulariser differs:

    AE      none
    AE+wd   + wd * sum of squared weights
    DAE-g   reconstruct x from x + N(0, std^2)          (Vincent et al. 2008)
    DAE-b   reconstruct x from x with a fraction of pixels set to 0 (masking)
    CAE     + lam * ||J_f(x)||_F^2                       (Rifai et al. 2011)
    RBM     no autoencoder: CD-1 for as many epochs; its code is E[h | x] = sigmoid(c + x W)

Protocol (the test split chooses nothing):
1. every model trains on the train split minus a stratified validation split (val_fraction, seed 0);
2. for each regularised family a small grid of its setting is trained with the first seed, and the setting
   whose codes give the best validation probe accuracy (logistic regression fitted on the train-minus-
   validation codes, scored on the validation codes, at its best C of aelab.metrics.codes.PROBE_C_GRID) is
   chosen;
3. the chosen setting of every family is trained with seeds seed .. seed+N-1 (the first seed's run is reused)
   and each run is scored once on the test split (and on the official MNIST 10k test set when --data-dir
   holds it): the test error of the MLP fine-tuned from the encoder (Rifai's Table 1 number; aelab.finetune,
   its epoch chosen on validation), probe accuracy, recon SSE, mean ||J_f(x)||_F, Rifai's saturation SAT;
4. every row reports mean ± std and a 95% interval over seeds, plus the paired differences CAE - DAE-g and
   CAE - AE of the fine-tuned error and of the probe accuracy over the same seeds, beside Rifai's numbers
   (aelab.papers, with their source).
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import report, runs
from ..metrics.intervals import format_interval
from ..progress import Progress
from ..runs import fault_point
from . import contractive_report
from .common import official_test_status, preflight
from .contractive_settings import PAIRS, Family, Settings, epochs_of, families, train_limit_of  # noqa: F401 (the interface)
from .contractive_steps import (
    finished_rows,
    score_member,
    select_settings,
    train_member,
    write_partial_rows,
)


def run(settings: Settings) -> Path:
    """Choose every family's setting on validation, then one row per family (its chosen setting with every seed,
    scored on the test split); results.json and the report after each row, marked partial until the last."""
    preflight(settings)
    started = time.perf_counter()
    epochs = epochs_of(settings)
    seeds = list(range(settings.seed, settings.seed + settings.seeds))
    out, names = Path(settings.out), [f.name for f in families(settings)]
    sweeps, rows, spectra = finished_rows(settings)
    steps = sum(len(f.values()) for f in families(settings)) + len(names)
    label = f"{out.name or out}: contractive"
    with Progress(label, total=steps, unit="step", enabled=not settings.no_progress) as bar:
        if settings.quick:
            bar.write(quick_line(settings, epochs))
        if sweeps is None:
            sweeps = select_settings(settings, bar)
            write_partial_rows(settings, sweeps, rows, spectra, names)
        else:
            bar.update(
                sum(len(f.values()) for f in families(settings)), text="selection: finished already, kept", kept=True
            )
        first_run = Path(sweeps[names[0]]["runs"][0])
        config = runs.read_config(first_run)
        official, official_note = official_test_status(
            settings.data_dir, tuple(runs.load_model(first_run).input_shape), settings.dataset
        )
        histories, units = {}, {}
        done = {row["model"] for row in rows}
        for family in families(settings):
            sweep = sweeps[family.name]
            first = Path(sweep["runs"][sweep["chosen_index"]])  # the first seed's run is the grid's own
            histories[family.name] = runs.read_history(first)
            units[family.name] = report.loss_unit(runs.read_config(first))
            if family.name in done:
                bar.update(text=f"{family.name}: finished already, kept", kept=True)
                continue
            row = family_row(settings, family, sweep, seeds, official, spectra, bar)
            rows.append(row)
            write_partial_rows(settings, sweeps, rows, spectra, names)
            fault_point("row")  # AELAB_FAULT_KILL_AT_ROW=N: the kill-between-rows test
            bar.update(
                text=f"{family.name} {row['setting']}: probe acc {format_interval(row['metrics']['probe_accuracy'], 4)}"
            )
        raw_probe, data = rows[0].get("raw_probe_accuracy"), rows[0].get("data")
        rows = [{k: v for k, v in row.items() if k not in ("raw_probe_accuracy", "data")} for row in rows]
        bar.phase("report and figures")
        return contractive_report.write(
            settings,
            started=started,
            epochs=epochs,
            seeds=seeds,
            sweeps=sweeps,
            rows=rows,
            config=config,
            official=official,
            official_note=official_note,
            raw_probe=raw_probe,
            data=data,
            histories=histories,
            units=units,
            spectra=spectra,
        )


def quick_line(settings: Settings, epochs: int) -> str:
    """What --quick shrinks, said first."""
    return (
        f"--quick: the first {train_limit_of(settings)} train images, {epochs} epochs, grids "
        + "; ".join(f"{f.name} {[f.describe(v) for v in f.values()]}" for f in families(settings))
        + " (the full run: every train image, 30 epochs, 3- and 4-point grids), no t-SNE figures"
    )


def family_row(
    settings: Settings, family: Family, sweep: dict, seeds: list[int], official: bool, spectra: dict, bar
) -> dict:
    """One family's row: its chosen setting trained with every seed (the first seed's run is the grid's own), each
    run scored once on the test split (and on the official test set); the first seed's Jacobian spectrum goes into
    `spectra`."""
    chosen = sweep["chosen"]
    run_dirs = [Path(sweep["runs"][sweep["chosen_index"]])]
    for seed in seeds[1:]:
        bar.phase(f"{family.name} {family.describe(chosen)}: training seed {seed}")
        run_dirs.append(train_member(settings, family, chosen, seed))
    test_metrics, official_metrics = [], []
    for i, run_dir in enumerate(run_dirs):
        figures = not settings.quick and i == 0
        result, other = score_member(settings, family, run_dir, seeds[i], figures, official, bar)
        test_metrics.append(result["metrics"])
        official_metrics.append(other)
        if i == 0:
            spectra[family.name] = result["jacobian_mean_singular_values"]
    return {
        "model": family.name,
        "setting": sweep["chosen_setting"],
        "value": chosen,
        "seeds": seeds,
        "runs": [str(r) for r in run_dirs],
        "metrics": contractive_report.summarize_metrics(test_metrics),
        "official_test_metrics": contractive_report.summarize_metrics(official_metrics) if official else None,
        "train_s": sum(h.get("train_time_s", 0.0) for r in run_dirs for h in runs.read_history(r)),
        "raw_probe_accuracy": test_metrics[0].get("raw_probe_accuracy"),
        "data": result["data"],
    }
