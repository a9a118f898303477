"""The steps of the contractive experiment (contractive.run drives them): train one family member, choose each
family's setting on validation, score a chosen run on the test split, and the partial results.json that --resume
continues from."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from threadpoolctl import threadpool_limits

from .. import runs
from ..errors import ConfigError, DataError
from ..evaluate import evaluate
from ..metrics.codes import choose_probe_c, encode_all
from ..progress import Progress
from ..train import TrainConfig
from .common import OFFICIAL_TEST, train_or_resume, write_partial
from .contractive_finetune import finetune_member, rbm_member_metrics
from .contractive_settings import (
    NOT_COMPARED,
    TITLE,
    Family,
    Settings,
    epochs_of,
    families,
    finetune_config,
    train_limit_of,
)


def train_member(settings: Settings, family: Family, value: float | None, seed: int) -> Path:
    """Train (or resume) one family member with one seed into OUT/<family and setting>/seed-<seed>."""
    options = {"hidden": [settings.hidden], "latent": None, "activation": "sigmoid", "loss": "bce", **family.fixed}
    epochs = epochs_of(settings)
    if family.model == "rbm":  # CD-1 in the trainer's pretraining hook; its one epoch after that only scores it
        options, epochs = {"hidden": settings.hidden, "cd_epochs": epochs}, 1
    if value is not None:
        options[family.option] = value
    run_dir = Path(settings.out) / family.folder(value) / f"seed-{seed}"
    cfg = TrainConfig(
        model=family.model,
        model_options=options,
        dataset=settings.dataset,
        data_dir=settings.data_dir,
        epochs=epochs,
        seed=seed,
        train_limit=train_limit_of(settings),
        val_fraction=settings.val_fraction,
        device=settings.device,
        amp=settings.amp,
        out=str(run_dir),
    )
    train_or_resume(cfg, progress=not settings.no_progress)
    return run_dir


def validation_probe_accuracy(run_dir: str | Path, data_dir: str | None = None) -> float:
    """Probe accuracy of a run's codes on its validation split, at the probe's best C on it (the setting and the
    probe's C are chosen together): logistic regression fitted on the codes of the train split minus
    validation, scored on the validation codes. The split is carved as train.py carves it
    (aelab.runs.validation_indices); the test split is never looked at."""
    config = runs.read_config(run_dir)
    train_x, train_y, _, _ = runs.run_data(config, data_dir)  # the run's train split, after train_limit
    validation = runs.validation_indices(config, train_y.numpy())
    if validation is None:
        raise DataError(f"{run_dir} was trained without a validation split (val_fraction 0)")
    codes = encode_all(runs.load_model(run_dir), train_x).numpy()
    return max(choose_probe_c(codes, train_y.numpy(), *validation)[1])


def select_settings(settings: Settings, bar: Progress | None = None) -> dict[str, dict]:
    """Train every grid point of every family with the first seed and choose, per family, the setting with the
    highest validation probe accuracy (the first of equals). Nothing here reads the test split's labels or
    scores anything on it (training only logs its loss per epoch, which chooses nothing).

    Returns {family: {"option", "grid", "settings", "val_probe_accuracy" (one per grid point), "chosen",
    "chosen_setting", "chosen_index", "runs"}}."""
    sweeps = {}
    for family in families(settings):
        values, scores, run_dirs = family.values(), [], []
        for value in values:
            if bar is not None:
                bar.phase(f"selection: {family.name} {family.describe(value)}: training and validation probe")
            run_dir = train_member(settings, family, value, settings.seed)
            # numpy's BLAS at 1 thread: the probe's LogisticRegression took 48 s at 2 threads vs 1.3 s at 1
            # on this shared 2-core machine (OpenBLAS threads stall behind torch's spinning OpenMP workers)
            with threadpool_limits(limits=1, user_api="blas"):
                scores.append(validation_probe_accuracy(run_dir, settings.data_dir))
            run_dirs.append(str(run_dir))
            line = f"{family.name} {family.describe(value)}: validation probe acc {scores[-1]:.4f}"
            bar.update(text=line) if bar is not None else print(line)
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
        result = evaluate(run_dir, figures=figures, tsne_points=1000, data_dir=settings.data_dir, progress=progress)
        if not official:
            return result, None
        other = evaluate(run_dir, test_dataset=OFFICIAL_TEST, data_dir=settings.data_dir, progress=progress)
    return result, other["metrics"]


def score_member(
    settings: Settings, family: Family, run_dir: Path, seed: int, figures: bool, official: bool, bar: Progress
) -> tuple[dict, dict | None]:
    """A chosen run scored once on the test split (and the official MNIST test set when `official`): evaluate's
    metrics (the RBM's own, contractive_finetune), then the fine-tuned MLP's test error merged into them."""
    bar.phase(f"{family.name}: evaluate seed {seed}")
    with threadpool_limits(limits=1, user_api="blas"):  # see select_settings
        if family.model == "rbm":
            result, other = rbm_member_metrics(run_dir, settings.data_dir, official)
        else:
            result, other = evaluate_member(settings, run_dir, figures=figures, official=official)
    config = finetune_config(settings)

    def shown(record: dict) -> None:
        bar.phase(
            f"{family.name}: fine-tuning seed {seed}, epoch {record['epoch']}/{config.epochs}: validation errors "
            f"{record['val_errors']} (best epoch {record['best_epoch']})"
        )

    tuned, tuned_other = finetune_member(run_dir, config, seed, settings.data_dir, official, shown)
    result = {**result, "metrics": {**result["metrics"], **tuned}}
    return result, None if other is None else {**other, **tuned_other}


def compared_settings(settings: Settings) -> dict:
    values = {k: v for k, v in dataclasses.asdict(settings).items() if k not in NOT_COMPARED}
    return json.loads(json.dumps(values))


def finished_rows(settings: Settings) -> tuple[dict | None, list[dict], dict]:
    """(the sweeps, the finished rows, their spectra) of a partial results.json that --resume continues; a
    results.json of other settings is refused."""
    path = Path(settings.out) / "results.json"
    if not path.is_file():
        return None, [], {}
    saved = runs.read_json(path)
    if not (isinstance(saved, dict) and saved.get("partial")):
        return None, [], {}  # a finished experiment: run again (its runs are kept), the same table comes out
    if saved.get("compared_settings") != compared_settings(settings):
        raise ConfigError(f"{settings.out} holds a contractive run with other settings; choose another --out")
    return saved.get("sweeps"), list(saved.get("rows") or []), dict(saved.get("spectra") or {})


def write_partial_rows(settings: Settings, sweeps: dict, rows: list[dict], spectra: dict, names: list[str]) -> None:
    done = [row["model"] for row in rows]
    partial = {
        "experiment": "contractive",
        "compared_settings": compared_settings(settings),
        "sweeps": sweeps,
        "rows": rows,
        "spectra": spectra,
    }
    write_partial(Path(settings.out), partial, done, [n for n in names if n not in done], TITLE)
