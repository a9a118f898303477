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

from .. import report, runs
from ..metrics.intervals import format_interval
from ..options import (
    float_list,
    fraction,
    fraction_list,
    opt,
    positive_float,
    positive_float_list,
    positive_int,
    seed_value,
)
from ..progress import Progress
from ..runs import fault_point
from .common import (
    amp_field,
    device_field,
    official_test_status,
    preflight,
)

# the grid of each family's setting: (full run, --quick); each is overridden by its flag
GRIDS = {
    "AE+wd": ((1e-4, 1e-3, 1e-2), (1e-3,)),
    "DAE-g": ((0.1, 0.3, 0.5), (0.3,)),
    "DAE-b": ((0.1, 0.25, 0.5), (0.25,)),
    "CAE": ((0.1, 0.3, 1.0, 3.0), (0.3, 1.0)),
}
# (metric key in eval.json, column name, bounds for the interval)
METRICS = [
    ("finetune_error", "fine-tuned test error", (0.0, 1.0)),
    ("probe_accuracy", "probe acc", (0.0, 1.0)),
    ("recon_sse", "recon SSE", None),
    ("jacobian_fro_mean", "mean ‖J‖_F", None),
    ("saturation", "SAT", (0.0, 1.0)),
]
PAIRS = [("CAE", "DAE-g"), ("CAE", "AE")]  # paired differences of probe accuracy over seeds
# --quick: the first 1,000 train images, 5 epochs, one- or two-point grids, 10 fine-tuning epochs
QUICK = {"epochs": 5, "train_limit": 1000, "finetune_epochs": 10}
NOT_COMPARED = ("out", "no_progress")  # what may differ between a run and its --resume
TITLE = "Rifai et al. (2011): AE, AE+wd, DAE and CAE"


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
    finetune_epochs: int | None = field(
        default=None,
        metadata=opt(
            "at most this many epochs of fine-tuning the MLP made from each encoder, the epoch chosen on validation "
            "(default 50, --quick 10)",
            parse=positive_int,
        ),
    )
    finetune_lr: float = field(default=1e-3, metadata=opt("Adam's learning rate in fine-tuning", parse=positive_float))
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
        metadata=opt(
            "folder of the IDX files (DIR/NAME/ or DIR itself); when it holds the official MNIST t10k files, each "
            "chosen model is also scored on them"
        ),
    )
    quick: bool = field(
        default=False,
        metadata=opt(
            "a smoke check in about a minute: the first 1,000 train images, 5 epochs, one- or two-point grids, "
            "no t-SNE figures"
        ),
    )
    device: str = device_field()
    amp: bool = amp_field()
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
        Family("RBM", "rbm", None, "", {}, ()),  # CD-1 (aelab.models.rbm_model), as many CD epochs as the AEs' epochs
    ]


def run_folder_name(label: str) -> str:
    return label.replace("+", "_").replace(" ", "_").replace("=", "")


def epochs_of(settings: Settings) -> int:
    return settings.epochs or (QUICK["epochs"] if settings.quick else 30)


def train_limit_of(settings: Settings) -> int | None:
    if not settings.quick:
        return settings.train_limit
    return min(settings.train_limit or QUICK["train_limit"], QUICK["train_limit"])


def run(settings: Settings) -> Path:
    """Choose every family's setting on validation, then one row per family (its chosen setting with every seed,
    scored on the test split); results.json and the report after each row, marked partial until the last."""
    from . import contractive_report

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
            bar.write(
                f"--quick: the first {train_limit_of(settings)} train images, {epochs} epochs, grids "
                + "; ".join(f"{f.name} {[f.describe(v) for v in f.values()]}" for f in families(settings))
                + " (the full run: every train image, 30 epochs, 3- and 4-point grids), no t-SNE figures"
            )
        if sweeps is None:
            sweeps = select_settings(settings, bar)
            write_partial_rows(settings, sweeps, rows, spectra, names)
        else:
            bar.update(
                sum(len(f.values()) for f in families(settings)), text="selection: finished already, kept", kept=True
            )
        first_run = Path(sweeps["AE"]["runs"][0])
        config = runs.read_config(first_run)
        official, official_note = official_test_status(
            settings.data_dir, tuple(runs.load_model(first_run).input_shape), settings.dataset
        )
        histories, units = {}, {}
        raw_probe, data = None, None
        done = {row["model"] for row in rows}
        for family in families(settings):
            sweep = sweeps[family.name]
            chosen = sweep["chosen"]
            first = Path(sweep["runs"][sweep["chosen_index"]])  # the first seed's run is the grid's own
            histories[family.name] = runs.read_history(first)
            units[family.name] = report.loss_unit(runs.read_config(first))
            if family.name in done:
                bar.update(text=f"{family.name}: finished already, kept", kept=True)
                continue
            run_dirs = [first]
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
            row = {
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


# the steps (training a member, the selection, the scoring, the partial results) live in contractive_steps, which
# reads the families above: imported last, and re-exported here as this recipe's interface
from .contractive_steps import (  # noqa: E402
    finished_rows,
    score_member,
    select_settings,
    train_member,
    write_partial_rows,
)
