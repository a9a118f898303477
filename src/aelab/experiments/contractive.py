"""Rifai et al. (ICML 2011), Table 1 in small: AE, AE+wd, DAE and CAE with the same 784-1000 sigmoid encoder.

Every model is the one-layer autoencoder h = sigmoid(W x + b) (1000 units, the code),
x_hat = sigmoid(W' h + c), cross-entropy loss, trained with the same budget (epochs,
batch 128, Adam lr 1e-3) on mnist5k; only the regulariser differs:

    AE      none
    AE+wd   + wd * sum of squared weights
    DAE-g   reconstruct x from x + N(0, std^2)          (Vincent et al. 2008)
    DAE-b   reconstruct x from x with a fraction of pixels set to 0 (masking)
    CAE     + lam * ||J_f(x)||_F^2                       (Rifai et al. 2011)

Protocol (the test split chooses nothing):
1. every model trains on the train split minus a stratified validation split (val_fraction, seed 0);
2. for each regularised family a small grid of its setting is trained with the first seed, and the setting
   whose codes give the best validation probe accuracy (logistic regression fitted on the train-minus-
   validation codes, scored on the validation codes, at its best C of aelab.metrics.codes.PROBE_C_GRID) is
   chosen;
3. the chosen setting of every family is trained with seeds seed .. seed+N-1 (the first seed's run is reused)
   and each run is scored once on the test split (and on the official MNIST 10k test set when --data-dir
   holds it): probe accuracy, recon SSE, mean ||J_f(x)||_F, Rifai's saturation SAT;
4. every row reports mean ± std and a 95% interval over seeds, plus the paired differences CAE - DAE-g and
   CAE - AE of probe accuracy over the same seeds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from threadpoolctl import threadpool_limits

from .. import report, runs
from ..errors import DataError
from ..evaluate import evaluate
from ..metrics.codes import choose_probe_c, encode_all
from ..metrics.intervals import format_interval, paired_difference, summarize
from ..options import float_list, fraction, fraction_list, opt, positive_float_list, positive_int, seed_value
from ..train import TrainConfig
from .common import OFFICIAL_TEST, official_test_status, train_or_resume

# Rifai et al. 2011, Table 1 (MNIST, 1000 hidden units, then supervised fine-tuning of the whole network)
RIFAI_TABLE_1 = [
    {"model": "CAE", "test error %": 1.14, "mean ‖J‖_F": 0.73e-4},
    {"model": "DAE-g", "test error %": 1.18},
    {"model": "RBM-binary", "test error %": 1.30},
    {"model": "DAE-b", "test error %": 1.57},
    {"model": "AE+wd", "test error %": 1.68},
    {"model": "AE", "test error %": 1.78, "mean ‖J‖_F": 17.5e-4},
]
# the grid of each family's setting: (full run, --quick); each is overridden by its flag
GRIDS = {
    "AE+wd": ((1e-4, 1e-3, 1e-2), (1e-3,)),
    "DAE-g": ((0.1, 0.3, 0.5), (0.3,)),
    "DAE-b": ((0.1, 0.25, 0.5), (0.25,)),
    "CAE": ((0.1, 0.3, 1.0, 3.0), (0.3, 1.0)),
}
# (metric key in eval.json, column name, bounds for the interval)
METRICS = [
    ("probe_accuracy", "probe acc", (0.0, 1.0)),
    ("recon_sse", "recon SSE", None),
    ("jacobian_fro_mean", "mean ‖J‖_F", None),
    ("saturation", "SAT", (0.0, 1.0)),
]
PAIRS = [("CAE", "DAE-g"), ("CAE", "AE")]  # paired differences of probe accuracy over seeds


def _grid_help(what: str, family: str) -> str:
    full, quick = GRIDS[family]
    return f"{what} to choose from, comma-separated (default {','.join(map(str, full))}; --quick {quick[0]:g}...)"


@dataclass
class Settings:
    out: str = field(default="runs/contractive", metadata=opt("output folder"))
    dataset: str = field(default="mnist5k", metadata=opt("dataset name (aelab data list)"))
    epochs: int | None = field(
        default=None, metadata=opt("epochs per model (default 30, --quick 8)", parse=positive_int)
    )
    seed: int = field(default=0, metadata=opt("first seed: every grid point is trained with it", parse=seed_value))
    seeds: int = field(
        default=1,
        metadata=opt("train each chosen setting with seeds SEED .. SEED+N-1 and report intervals", parse=positive_int),
    )
    hidden: int = field(default=1000, metadata=opt("code units of every model (Rifai: 1000)", parse=positive_int))
    val_fraction: float = field(
        default=0.1,
        metadata=opt("fraction of the train images held out (stratified, seed 0) to choose settings", parse=fraction),
    )
    lam: list[float] | None = field(
        default=None, metadata=opt(_grid_help("CAE penalty weights", "CAE"), parse=float_list)
    )
    weight_decay: list[float] | None = field(
        default=None, metadata=opt(_grid_help("AE+wd: weights of sum W^2", "AE+wd"), parse=positive_float_list)
    )
    noise_std: list[float] | None = field(
        default=None, metadata=opt(_grid_help("DAE-g: Gaussian noise stds", "DAE-g"), parse=positive_float_list)
    )
    mask_fraction: list[float] | None = field(
        default=None, metadata=opt(_grid_help("DAE-b: fractions of pixels zeroed", "DAE-b"), parse=fraction_list)
    )
    data_dir: str | None = field(
        default=None,
        metadata=opt("folder holding the official MNIST t10k files: each chosen model is also scored on them"),
    )
    quick: bool = field(
        default=False,
        metadata=opt("8 epochs, one- or two-point grids, no t-SNE figures (a few minutes on 2 cores)"),
    )
    no_progress: bool = field(default=False, metadata=opt("no progress bars"))
    train_limit: int | None = field(default=None, metadata=opt(parse=positive_int, hidden=True))  # tests


@dataclass(frozen=True)
class Family:
    """One model family of the comparison and the grid of its one setting (no setting for the plain AE)."""

    name: str  # "CAE"
    model: str  # aelab model name
    option: str | None  # the model option the grid sets, e.g. "lam"
    short: str  # how a setting is written: "λ" in "λ=1"
    fixed: dict  # options every member shares beyond the common encoder
    grid: tuple[float, ...]

    def values(self) -> list[float | None]:
        return list(self.grid) if self.option else [None]

    def describe(self, value: float | None) -> str:
        return "none" if value is None else f"{self.short}={value:g}"

    def folder(self, value: float | None) -> str:
        if value is None:
            return run_folder_name(self.name)
        return run_folder_name(f"{self.name} {self.option}={value:g}")


def families(settings: Settings) -> list[Family]:
    """AE, AE+wd, DAE-g, DAE-b, CAE with their grids (the flags, else the full or --quick defaults)."""

    def grid(name: str, given: list[float] | None) -> tuple[float, ...]:
        return tuple(given) if given else GRIDS[name][1 if settings.quick else 0]

    return [
        Family("AE", "ae", None, "", {}, ()),
        Family("AE+wd", "ae", "weight_decay", "wd", {}, grid("AE+wd", settings.weight_decay)),
        Family("DAE-g", "dae", "level", "std", {"noise": "gaussian"}, grid("DAE-g", settings.noise_std)),
        Family("DAE-b", "dae", "level", "mask", {"noise": "masking"}, grid("DAE-b", settings.mask_fraction)),
        Family("CAE", "cae", "lam", "λ", {}, grid("CAE", settings.lam)),
    ]


def run_folder_name(label: str) -> str:
    return label.replace("+", "_").replace(" ", "_").replace("=", "")


def epochs_of(settings: Settings) -> int:
    return settings.epochs or (8 if settings.quick else 30)


def train_member(settings: Settings, family: Family, value: float | None, seed: int) -> Path:
    """Train (or resume) one family member with one seed into OUT/<family and setting>/seed-<seed>."""
    options = {"hidden": [settings.hidden], "latent": None, "activation": "sigmoid", "loss": "bce", **family.fixed}
    if value is not None:
        options[family.option] = value
    run_dir = Path(settings.out) / family.folder(value) / f"seed-{seed}"
    cfg = TrainConfig(
        model=family.model,
        model_options=options,
        dataset=settings.dataset,
        epochs=epochs_of(settings),
        seed=seed,
        train_limit=settings.train_limit,
        val_fraction=settings.val_fraction,
        out=str(run_dir),
    )
    train_or_resume(cfg, progress=not settings.no_progress)
    return run_dir


def validation_probe_accuracy(run_dir: str | Path) -> float:
    """Probe accuracy of a run's codes on its validation split, at the probe's best C on it (the setting and the
    probe's C are chosen together): logistic regression fitted on the codes of the train split minus
    validation, scored on the validation codes. The split is carved as train.py carves it
    (aelab.runs.validation_indices); the test split is never looked at."""
    config = runs.read_config(run_dir)
    train_x, train_y, _, _ = runs.run_data(config)  # the run's train split, after train_limit
    validation = runs.validation_indices(config, train_y.numpy())
    if validation is None:
        raise DataError(f"{run_dir} was trained without a validation split (val_fraction 0)")
    codes = encode_all(runs.load_model(run_dir), train_x).numpy()
    return max(choose_probe_c(codes, train_y.numpy(), *validation)[1])


def select_settings(settings: Settings) -> dict[str, dict]:
    """Train every grid point of every family with the first seed and choose, per family, the setting with the
    highest validation probe accuracy (the first of equals). Nothing here reads the test split's labels or
    scores anything on it (training only logs its loss per epoch, which chooses nothing).

    Returns {family: {"option", "grid", "settings", "val_probe_accuracy" (one per grid point), "chosen",
    "chosen_setting", "chosen_index", "runs"}}."""
    sweeps = {}
    for family in families(settings):
        values, scores, run_dirs = family.values(), [], []
        for value in values:
            run_dir = train_member(settings, family, value, settings.seed)
            # numpy's BLAS at 1 thread: the probe's LogisticRegression took 48 s at 2 threads vs 1.3 s at 1
            # on this shared 2-core machine (OpenBLAS threads stall behind torch's spinning OpenMP workers)
            with threadpool_limits(limits=1, user_api="blas"):
                scores.append(validation_probe_accuracy(run_dir))
            run_dirs.append(str(run_dir))
            print(f"{family.name} {family.describe(value)}: validation probe acc {scores[-1]:.4f}")
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        sweeps[family.name] = {
            "option": family.option,
            "grid": values,
            "settings": [family.describe(v) for v in values],
            "val_probe_accuracy": scores,
            "chosen": values[best],
            "chosen_setting": family.describe(values[best]),
            "chosen_index": best,
            "runs": run_dirs,
        }
    return sweeps


def evaluate_member(settings: Settings, run_dir: Path, figures: bool, official: bool) -> tuple[dict, dict | None]:
    """(eval.json's result on the run's test split, the metrics on the official test set or None)."""
    progress = not settings.no_progress
    with threadpool_limits(limits=1, user_api="blas"):  # see select_settings
        result = evaluate(run_dir, figures=figures, tsne_points=1000, progress=progress)
        if not official:
            return result, None
        other = evaluate(run_dir, test_dataset=OFFICIAL_TEST, data_dir=settings.data_dir, progress=progress)
    return result, other["metrics"]


def summarize_metrics(per_seed: list[dict]) -> dict:
    """{metric: summarize(its values over seeds)} for every metric of METRICS that every seed has."""
    out = {}
    for key, _, bounds in METRICS:
        values = [m.get(key) for m in per_seed]
        if all(isinstance(v, (int, float)) for v in values):
            out[key] = summarize(values, bounded=bounds)
    return out


def difference_verdict(diff: dict, a: str, b: str) -> str:
    """The paired difference in words: whether its interval excludes 0, and which way."""
    if diff["ci95"] is None:
        return f"{a} − {b} probe accuracy: {diff['mean']:+.4f} (1 seed, no interval)"
    lo, hi = diff["ci95"]
    text = f"{a} − {b} probe accuracy: {format_interval(diff, 4)}"
    if lo > 0 or hi < 0:
        return f"{text}; the interval excludes 0: {a if lo > 0 else b} is better"
    return f"{text}; the interval includes 0: no difference shown"


def paired_differences(rows: list[dict]) -> list[dict]:
    """CAE − DAE-g and CAE − AE probe accuracy over the same seeds, on each test set that was scored."""
    by_model = {r["model"]: r for r in rows}
    differences = []
    for a, b in PAIRS:
        for split, key in [("test", "metrics"), ("official MNIST test", "official_test_metrics")]:
            if by_model[a][key] is None:
                continue
            values_a = by_model[a][key]["probe_accuracy"]["values"]
            values_b = by_model[b][key]["probe_accuracy"]["values"]
            diff = paired_difference(values_a, values_b, bounded=(0.0, 1.0))
            excludes = None if diff["ci95"] is None else bool(diff["ci95"][0] > 0 or diff["ci95"][1] < 0)
            differences.append(
                {
                    "a": a,
                    "b": b,
                    "metric": "probe_accuracy",
                    "split": split,
                    "difference": diff,
                    "excludes_zero": excludes,
                    "verdict": f"{difference_verdict(diff, a, b)} ({split})",
                }
            )
    return differences


def run(settings: Settings) -> Path:
    started = time.perf_counter()
    out = Path(settings.out)
    epochs = epochs_of(settings)
    seeds = list(range(settings.seed, settings.seed + settings.seeds))
    sweeps = select_settings(settings)

    first_run = Path(sweeps["AE"]["runs"][0])
    config = runs.read_config(first_run)
    official, official_note = official_test_status(settings.data_dir, tuple(runs.load_model(first_run).input_shape))
    rows, histories, units, spectra = [], {}, {}, {}
    raw_probe, data = None, None
    for family in families(settings):
        sweep = sweeps[family.name]
        chosen = sweep["chosen"]
        run_dirs = [Path(sweep["runs"][sweep["chosen_index"]])]  # the first seed's run is the grid's own
        run_dirs += [train_member(settings, family, chosen, seed) for seed in seeds[1:]]
        test_metrics, official_metrics = [], []
        for i, run_dir in enumerate(run_dirs):
            result, other = evaluate_member(settings, run_dir, figures=not settings.quick and i == 0, official=official)
            test_metrics.append(result["metrics"])
            official_metrics.append(other)
            if i == 0:
                spectra[family.name] = result["jacobian_mean_singular_values"]
                histories[family.name] = runs.read_history(run_dir)
                units[family.name] = report.loss_unit(runs.read_config(run_dir))
                raw_probe, data = result["metrics"].get("raw_probe_accuracy"), result["data"]
        row = {
            "model": family.name,
            "setting": sweep["chosen_setting"],
            "value": chosen,
            "seeds": seeds,
            "runs": [str(r) for r in run_dirs],
            "metrics": summarize_metrics(test_metrics),
            "official_test_metrics": summarize_metrics(official_metrics) if official else None,
            "train_s": sum(h.get("train_time_s", 0.0) for r in run_dirs for h in runs.read_history(r)),
        }
        rows.append(row)
        print(f"{family.name} {row['setting']}: probe acc {format_interval(row['metrics']['probe_accuracy'], 4)}")

    differences = paired_differences(rows)
    splits = {
        "n_train": config["n_train"],
        "n_val": config["n_val"],
        "n_test": config["n_test"],
        "validation": (config.get("data_info") or {}).get("validation"),
        "official_test": {"available": official, "n_test": 10_000 if official else None, "note": official_note},
    }
    notes = notes_text(settings, epochs, seeds, splits, raw_probe) + [official_note, contraction_summary(rows)]
    notes += [d["verdict"] for d in differences]
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
    figures = [
        (
            "Validation probe accuracy of every grid point (first seed); the circled point is the chosen setting",
            report.plot_validation_sweeps(sweep_plot, out / "validation_sweeps.png"),
        ),
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
    runs.write_json(
        out / "results.json",
        {
            "selection_split": "validation",
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
            "reference_rifai2011_table1": RIFAI_TABLE_1,
            "raw_pixel_probe_accuracy": raw_probe,
            "epochs": epochs,
            "data": data,
            "notes": notes,
            "wall_time_s": time.perf_counter() - started,
        },
    )
    return report.write_report(
        out,
        "Contractive vs denoising vs plain autoencoders (Rifai et al. 2011, Table 1 in small)",
        [
            (f"Chosen settings, scored on the test split, seeds {seeds} (mean ± std [95% interval])", table_rows(rows)),
            ("Selection: validation probe accuracy of every grid point (first seed)", sweep_rows(sweeps)),
            ("Rifai et al. 2011, Table 1 (MNIST, 1000 units, supervised fine-tuning; as published)", RIFAI_TABLE_1),
        ],
        figures,
        notes,
    )


def table_rows(rows: list[dict]) -> list[dict]:
    """The report's view of the rows: one formatted interval per metric."""
    digits = {"probe_accuracy": 4, "recon_sse": 2, "jacobian_fro_mean": 2, "saturation": 3}
    table = []
    for row in rows:
        line = {"model": row["model"], "chosen": row["setting"]}
        for key, column, _ in METRICS:
            if key in row["metrics"]:
                line[column] = format_interval(row["metrics"][key], digits[key])
        if row["official_test_metrics"] is not None:
            line["probe acc, MNIST 10k"] = format_interval(row["official_test_metrics"]["probe_accuracy"], 4)
            line["recon SSE, MNIST 10k"] = format_interval(row["official_test_metrics"]["recon_sse"], 2)
        table.append(line)
    return table


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
    parts = [f"{m} {jac['AE'] / jac[m]:.2g}x (SAT {_pct(sat[m])})" for m in jac if m != "AE"]
    return (
        f"Contraction here, AE's mean ‖J‖_F divided by each model's (means over seeds; AE SAT {_pct(sat['AE'])}): "
        + ", ".join(parts)
        + ". Rifai et al.'s table gives 24x for the CAE, and (their SAT column, not copied "
        "here) a CAE with far more saturated units than the AE."
    )


def _pct(value) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, float) else "n/a"


def notes_text(settings: Settings, epochs: int, seeds: list[int], splits: dict, raw_probe: float | None) -> list[str]:
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
        "How this differs from Rifai et al. 2011: they train on 50,000 MNIST digits (with a 10,000-digit "
        "validation set) and then fine-tune the whole network with labels; we train on a few thousand digits for "
        f"{epochs} epochs and score a linear probe on frozen codes, so our error rates are several times theirs "
        "and only the ranking is comparable. Their ‖J‖_F numbers are of order 1e-4, orders of magnitude below any "
        "784-1000 sigmoid encoder's Frobenius norm here; we do not know their normalisation, so compare ratios "
        "(AE / CAE: 17.5 / 0.73 = 24x in their table), not values.",
    ]
