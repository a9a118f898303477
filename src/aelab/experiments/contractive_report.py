"""The report of `aelab experiment contractive` (a recipe): the paired differences over seeds, the tables, notes,
figures and results.json of aelab.experiments.contractive's runs."""

from __future__ import annotations

import time
from pathlib import Path

from .. import report, runs
from ..metrics.intervals import format_interval, paired_difference, summarize
from .contractive_settings import METRICS, PAIRS, RIFAI, Settings, finetune_config, rifai_error, rifai_table

# the paired differences: (metric, its name in words, whether higher is better)
DIFFERENCE_METRICS = [
    ("finetune_error", "fine-tuned test error (percentage points)", False),
    ("probe_accuracy", "probe accuracy", True),
]


def summarize_metrics(per_seed: list[dict]) -> dict:
    """{metric: summarize(its values over seeds)} for every metric of METRICS that every seed has."""
    out = {}
    for key, _, bounds in METRICS:
        values = [m.get(key) for m in per_seed]
        if all(isinstance(v, (int, float)) for v in values):
            out[key] = summarize(values, bounded=bounds)
    return out


def difference_verdict(
    diff: dict, a: str, b: str, what: str = "probe accuracy", higher_better: bool = True, digits: int = 4
) -> str:
    """The paired difference in words: whether its interval excludes 0, and which way."""
    if diff["ci95"] is None:
        return f"{a} − {b} {what}: {diff['mean']:+.{digits}f} (1 seed, no interval)"
    lo, hi = diff["ci95"]
    text = f"{a} − {b} {what}: {format_interval(diff, digits)}"
    if lo > 0 or hi < 0:
        better = a if (lo > 0) == higher_better else b
        return f"{text}; the interval excludes 0: {better} is better"
    return f"{text}; the interval includes 0: no difference shown"


def paired_differences(rows: list[dict]) -> list[dict]:
    """CAE − DAE-g and CAE − AE of the fine-tuned test error and of the probe accuracy over the same seeds, on each
    test set that was scored."""
    by_model = {r["model"]: r for r in rows}
    differences = []
    for metric, what, higher_better in DIFFERENCE_METRICS:
        for a, b in [(a, b) for a, b in PAIRS if a in by_model and b in by_model]:  # --families may leave one out
            for split, key in [("test", "metrics"), ("official MNIST test", "official_test_metrics")]:
                if by_model[a][key] is None or metric not in by_model[a][key] or metric not in by_model[b][key]:
                    continue
                values_a = by_model[a][key][metric]["values"]
                values_b = by_model[b][key][metric]["values"]
                diff = paired_difference(values_a, values_b, bounded=(0.0, 1.0))
                excludes = None if diff["ci95"] is None else bool(diff["ci95"][0] > 0 or diff["ci95"][1] < 0)
                shown = percent(diff) if metric == "finetune_error" else diff  # errors in %, as in the table
                verdict = difference_verdict(shown, a, b, what, higher_better, 2 if metric == "finetune_error" else 4)
                differences.append(
                    {
                        "a": a,
                        "b": b,
                        "metric": metric,
                        "split": split,
                        "difference": diff,
                        "excludes_zero": excludes,
                        "verdict": f"{verdict} ({split})",
                    }
                )
    return differences


def write(
    settings: Settings,
    *,
    started: float,
    epochs: int,
    seeds: list[int],
    sweeps: dict[str, dict],
    rows: list[dict],
    config: dict,
    official: bool,
    official_note: str,
    raw_probe: float | None,
    data: dict | None,
    histories: dict,
    units: dict,
    spectra: dict,
) -> Path:
    """results.json and report.html/md of the contractive experiment into settings.out."""
    out = Path(settings.out)
    finetune_epochs = finetune_config(settings).epochs
    differences = paired_differences(rows)
    splits = {
        "n_train": config["n_train"],
        "n_val": config["n_val"],
        "n_test": config["n_test"],
        "validation": (config.get("data_info") or {}).get("validation"),
        "official_test": {"available": official, "n_test": 10_000 if official else None, "note": official_note},
    }
    notes = notes_text(settings, epochs, seeds, splits, raw_probe, finetune_epochs) + [
        official_note,
        contraction_summary(rows),
    ]
    notes += [d["verdict"] for d in differences]
    figures = figures_of(out, sweeps, spectra, histories, units)
    runs.write_json(
        out / "results.json",
        {
            "selection_split": "validation",
            "quick": settings.quick,
            "finetuning": finetune_config(settings).record(),
            "selection_criterion": "probe accuracy on the validation split (logistic regression fitted on the "
            "codes of the train split minus validation), first seed; the test split chooses nothing",
            "splits": splits,
            "grids": {name: s["grid"] for name, s in sweeps.items()},
            "chosen": {name: s["chosen"] for name, s in sweeps.items()},
            "validation_scores": {name: s["val_probe_accuracy"] for name, s in sweeps.items()},
            "sweeps": sweeps,
            "seeds": seeds,
            "rows": rows,
            "paired_differences": differences,
            "reference_rifai2011_table1": {"source": RIFAI.cite(), "rows": rifai_table()},
            "raw_pixel_probe_accuracy": raw_probe,
            "epochs": epochs,
            "data": data,
            "notes": notes,
            "wall_time_s": time.perf_counter() - started,
        },
    )
    return report.write_report(
        out,
        "Contractive, denoising and plain autoencoders and an RBM (Rifai et al. 2011, Table 1)",
        [
            (f"Chosen settings, scored on the test split, seeds {seeds} (mean ± std [95% interval])", table_rows(rows)),
            ("Selection: validation probe accuracy of every grid point (first seed)", sweep_rows(sweeps)),
            (f"Rifai et al. 2011, Table 1, MNIST rows as printed ({RIFAI.cite()})", rifai_table()),
        ],
        figures,
        notes,
        lead=lead_lines(settings, rows),
    )


def figures_of(out: Path, sweeps: dict[str, dict], spectra: dict, histories: dict, units: dict) -> list:
    """The validation sweep of every family with a grid, the Jacobian spectra and the loss curves (first seed)."""
    sweep_plot = {
        name: {
            "option": s["option"],
            "grid": s["grid"],
            "scores": s["val_probe_accuracy"],
            "chosen_index": s["chosen_index"],
            "ylabel": "validation probe accuracy",
        }
        for name, s in sweeps.items()
        if s["option"]
    }
    figures = []
    if sweep_plot:  # --families AE,RBM: no family with a grid, nothing chosen, no sweep to draw
        figures.append(
            (
                "Validation probe accuracy of every grid point (first seed); the circled point is the chosen setting",
                report.plot_validation_sweeps(sweep_plot, out / "validation_sweeps.png"),
            )
        )
    return figures + [
        (
            "Singular values of J_f(x), mean over test points (first seed; sorted, log scale; below ~1e-8 of the "
            "largest they are at the resolution of the float64 Gram eigenvalues, i.e. zero)",
            report.plot_spectra(spectra, out / "jacobian_spectra.png"),
        ),
        (
            "Loss per epoch of the chosen settings, first seed (train solid, test dashed; each model's own objective)",
            report.plot_curves(histories, out / "loss.png", units=units),
        ),
    ]


def lead_lines(settings: Settings, rows: list[dict]) -> list[str]:
    """The report's first lines: a --quick run says it is a smoke check; then the table in one sentence."""
    lead = []
    if settings.quick:
        lead.append(
            "--quick: a smoke check of the whole path (the first 1,000 train images, 5 epochs, one- or two-point "
            "grids, 10 fine-tuning epochs); its numbers say nothing about the comparison."
        )
    tuned = [(r["metrics"]["finetune_error"]["mean"], r["model"]) for r in rows if "finetune_error" in r["metrics"]]
    if tuned:
        best_error, best = min(tuned)
        ours = ", ".join(f"{m} {100 * e:.2f}%" for e, m in tuned)
        lead.append(
            f"Lowest fine-tuned test error: {best} ({100 * best_error:.2f}%). Ours: {ours}; Rifai et al.'s Table 1: "
            + ", ".join(f"{r['model']} {r['test error %']}%" for r in rifai_table())
            + "."
        )
    return lead


def table_rows(rows: list[dict]) -> list[dict]:
    """The report's view of the rows: one formatted interval per metric."""
    digits = {"finetune_error": 4, "probe_accuracy": 4, "recon_sse": 2, "jacobian_fro_mean": 2, "saturation": 3}
    table = []
    for row in rows:
        line = {"model": row["model"], "chosen": row["setting"]}
        for key, column, _ in METRICS:
            if key == "finetune_error" and key in row["metrics"]:
                line["fine-tuned test error %"] = format_interval(percent(row["metrics"][key]), 2)
            elif key in row["metrics"]:
                line[column] = format_interval(row["metrics"][key], digits[key])
            if key == "finetune_error":
                line["Rifai et al. test error %"] = rifai_error(row["model"]) or "—"
        if row["official_test_metrics"] is not None:
            if "finetune_error" in row["official_test_metrics"]:
                line["fine-tuned error %, MNIST 10k"] = format_interval(
                    percent(row["official_test_metrics"]["finetune_error"]), 2
                )
            line["probe acc, MNIST 10k"] = format_interval(row["official_test_metrics"]["probe_accuracy"], 4)
            line["recon SSE, MNIST 10k"] = format_interval(row["official_test_metrics"]["recon_sse"], 2)
        table.append(line)
    return table


def percent(summary: dict) -> dict:
    """A summary of a fraction (aelab.metrics.intervals.summarize) in percent."""
    scaled = {**summary, "mean": 100 * summary["mean"], "std": 100 * summary["std"]}
    if summary.get("ci95") is not None:
        scaled["ci95"] = [100 * v for v in summary["ci95"]]
    return scaled


def sweep_rows(sweeps: dict[str, dict]) -> list[dict]:
    return [
        {"model": name, "setting": setting, "val probe acc": score, "chosen": "✓" if i == s["chosen_index"] else ""}
        for name, s in sweeps.items()
        for i, (setting, score) in enumerate(zip(s["settings"], s["val_probe_accuracy"]))
    ]


def contraction_summary(rows: list[dict]) -> str:
    """One sentence on what the table shows: how much each model contracts relative to the plain AE."""
    jac = {r["model"]: r["metrics"]["jacobian_fro_mean"]["mean"] for r in rows}
    sat = {r["model"]: r["metrics"].get("saturation", {}).get("mean") for r in rows}
    if "AE" not in jac:
        return "Contraction relative to the plain AE: not shown, the AE row was not run (--families)."
    parts = [f"{m} {jac['AE'] / jac[m]:.2g}x (SAT {_pct(sat[m])})" for m in jac if m != "AE"]
    return (
        f"Contraction here, AE's mean ‖J‖_F divided by each model's (means over seeds; AE SAT {_pct(sat['AE'])}): "
        + ", ".join(parts)
        + ". Rifai et al.'s table gives 24x for the CAE and SAT 86.36% (CAE) against 49.90% (AE)."
    )


def _pct(value) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, float) else "n/a"


def notes_text(
    settings: Settings, epochs: int, seeds: list[int], splits: dict, raw_probe: float | None, finetune_epochs: int
) -> list[str]:
    raw = "n/a" if raw_probe is None else f"{raw_probe:.4f}"
    return [
        f"Data: {settings.dataset}; {splits['n_train']} train images after carving {splits['n_val']} validation "
        f"images ({splits['validation']}), {splits['n_test']} test images. Every model: encoder h = sigmoid(W x + b) "
        f"with {settings.hidden} units (the code), untied sigmoid decoder, cross-entropy summed over pixels, Adam "
        f"lr 1e-3, batch 128, {epochs} epochs, trained on the train images minus validation.",
        "Selection: for each family the grid of its setting is trained with the first seed "
        f"({settings.seed}), and the setting with the highest validation probe accuracy (logistic regression "
        "fitted on the codes of the train-minus-validation images, scored on the validation codes) is chosen. "
        "The test split is then scored once per chosen setting and seed; it chose nothing.",
        f"Seeds: the chosen setting of every family is trained with seeds {seeds} (the first seed's run is the "
        "grid's own). Each cell: mean ± sample std [95% interval of the mean] (Student t, clipped to [0, 1] for "
        "accuracies and SAT), or '1 seed, no interval'.",
        "Test metrics: probe = logistic regression on standardised frozen codes of the whole train split "
        "(validation included), scored on the test codes; mean ‖J‖_F over all test points, exact (closed form "
        "for one sigmoid layer); SAT = fraction of (test point, unit) pairs with activation within 0.05 of 0 or 1 "
        "(Rifai's definition); recon SSE = squared error summed over pixels per test image (clean input for the "
        f"DAEs). Raw-pixel probe for reference: {raw}.",
        f"Fine-tuning (Rifai et al.'s Table 1 number): each encoder's (W, b) initialise a {settings.hidden}-unit "
        "sigmoid MLP with a zero softmax layer on top; every weight is trained with the labels on the train images "
        f"minus validation (Adam lr {settings.finetune_lr:g}, batch 100, cross-entropy, at most "
        f"{finetune_epochs} epochs); the epoch with the fewest validation errors is kept (training stops "
        "8 epochs after it), and the test split is scored once on it. The RBM row: CD-1 (aelab.models.rbm_model: "
        f"{settings.hidden} Bernoulli hidden units, lr 0.1, batches of 100, weight cost 2e-4, Hinton's momentum "
        f"schedule) for {epochs} epochs on the same images, grey levels as probabilities; its code is E[h | x], "
        "scored like the others' codes.",
        "How this differs from Rifai et al. 2011 (Table 1, read in a quotation of the paper; the paper's own text "
        "was not read): their splits, epochs, optimiser, hyper-parameter grids and fine-tuning schedule are not "
        f"known here. Ours: {splits['n_train']} train / {splits['n_val']} validation images of {settings.dataset}, "
        f"{epochs} epochs of Adam for every autoencoder, small grids chosen by the validation probe, "
        "Adam fine-tuning with early stopping on validation, one test scoring per seed. Their ‖J‖_F numbers are of "
        "order 1e-4, orders of magnitude below any 784-1000 sigmoid encoder's Frobenius norm here; their "
        "normalisation is not known, so compare ratios (AE / CAE: 17.5 / 0.73 = 24x in their table), not values.",
    ]
