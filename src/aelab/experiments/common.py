"""Scaffolding every experiment shares."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path

from .. import data as datamod
from .. import runs
from ..data.sources import VAL_MAX_IMAGES
from ..errors import ConfigError, DataError
from ..options import fraction, opt, positive_int
from ..train import TrainConfig, train

SEEDS_HELP = "run with seeds SEED .. SEED+N-1 and report mean, std and 95% interval over them (default 1)"


def seeds_field(default: int = 1):
    """--seeds N: the same meaning and the same default (1) in every experiment."""
    return field(default=default, metadata=opt(SEEDS_HELP + "; each seed in OUT/seed-<s>/", parse=positive_int))


def dataset_field(default: str, help: str, choices=None):
    """--dataset: the data of every experiment (--dataset-source, its old name in two experiments, still works)."""
    return field(default=default, metadata=opt(help, choices=choices, aliases=("--dataset-source",)))


def jobs_field():
    return field(default=1, metadata=opt("seeds run in this many processes at once", parse=positive_int))


def val_fraction_field(what: str):
    """--val-fraction: the share of the train images carved as the validation split; `what` it chooses."""
    return field(
        default=0.1,
        metadata=opt(
            f"validation share of the train images (stratified, seed 0; at most {VAL_MAX_IMAGES} images) "
            f"that chooses {what}",
            parse=fraction,
        ),
    )


def patience_field(default: int):
    return field(
        default=default,
        metadata=opt("stop after this many epochs without a better validation loss", parse=positive_int),
    )


def device_field():
    """--device: where every training inside the experiment runs (RBM pretraining included)."""
    return field(default="cpu", metadata=opt("cpu, cuda or cuda:N: every training inside the experiment runs there"))


def amp_field():
    return field(default=False, metadata=opt("bf16 autocast for every training inside the experiment (CUDA only)"))


def preflight(settings) -> None:
    """Refuse a bad --device and missing or wrong data with one line, before any training starts: the device
    is resolved and an IDX dataset's files are found (or fetched) and verified now."""
    from ..train import resolve_device

    resolve_device(getattr(settings, "device", "cpu"))
    datamod.datasets.check_data_dir(getattr(settings, "data_dir", None))  # an existing folder, before any training
    dataset = getattr(settings, "dataset", None)
    if isinstance(dataset, str) and not dataset.strip():  # '' would be the current folder
        raise DataError("--dataset needs a dataset name or a path, got an empty one")
    if isinstance(dataset, str) and dataset in datamod.IDX_DATASETS:
        datamod.fetch(dataset, getattr(settings, "data_dir", None), quiet=False)


def train_or_resume(cfg: TrainConfig, progress: bool = True, log=print) -> Path:
    """Train cfg into cfg.out, continuing from its checkpoint when an interrupted experiment left one."""
    resume = (Path(cfg.out) / "checkpoint.safetensors").exists()
    return train(cfg, resume=resume, progress=progress, log=log if progress else (lambda *a: None))


def kept_epoch(run_dir: str | Path) -> int:
    """The epoch whose weights a run kept: its best validation epoch under early stopping, else its last."""
    from ..runs import read_history

    history = read_history(run_dir)
    return int(max((h.get("best_epoch", 0) for h in history), default=0)) or int(history[-1]["epoch"])


def train_split_size(dataset, data_dir=None, train_limit: int | None = None, options: dict | None = None) -> int:
    """How many train images a run of this dataset sees before its validation split is carved."""
    n = len(datamod.get(dataset, options, data_dir).train_x)
    return min(n, train_limit) if train_limit else n


def splits_of(config: dict) -> dict:
    """The three splits of a run's config.json: sizes, and how the validation split was carved."""
    return {
        "train": config["n_train"],
        "validation": config["n_val"],
        "test": config["n_test"],
        "validation_split": (config.get("data_info") or {}).get("validation"),
        "note": "validation is carved from the dataset's train split and chooses; test is scored once",
    }


OFFICIAL_TEST = "mnist"  # the 10k official MNIST test set, scored when --data-dir holds its t10k files


def official_test_status(
    data_dir: str | None, input_shape: tuple[int, ...], dataset: str | None = None
) -> tuple[bool, str]:
    """(whether the official MNIST test set can be scored as a second test set, what the report says about it).
    Not for a run on `mnist` itself: its test split is that set already."""
    if dataset == OFFICIAL_TEST:
        return False, "The test split is the official MNIST test set (10,000 images)."
    if not data_dir:
        return False, "Official MNIST test set: not available (no --data-dir given); only the dataset's test split."
    try:
        x, _, where = datamod.load_test_split(OFFICIAL_TEST, data_dir)
    except DataError as e:
        return False, f"Official MNIST test set: not available ({e}); only the dataset's test split."
    if tuple(x.shape[1:]) != tuple(input_shape):
        return (
            False,
            f"Official MNIST test set: not applicable (images {tuple(x.shape[1:])}, models take {input_shape}).",
        )
    return True, f"Official MNIST test set: {len(x)} images from {where}, scored once per chosen run and seed."


# ---------------------------------------------------------------- an experiment's output folder, filled in as it runs
EXPERIMENT_FILES = ("results.json", "seed_settings.json", "report.html", "report.md")


def holds_experiment(out: Path) -> bool:
    """Whether `out` holds an experiment's files: its results (partial or final), a seed's settings, a seed folder or
    a run folder of its own."""
    if not out.is_dir():
        return False
    for entry in out.iterdir():
        if entry.name in EXPERIMENT_FILES or entry.name.startswith("seed-"):
            return True
        if entry.is_dir() and ((entry / "config.json").exists() or (entry / "pretrain.json").exists()):
            return True
    return False


def check_resume(out: Path, resume: bool) -> None:
    """An --out that already holds an experiment is continued only with --resume (finished rows and seeds kept, the
    rest continued from its checkpoints); --resume of a folder without one is refused. One line, nothing changed."""
    held = holds_experiment(out)
    if held and not resume:
        raise ConfigError(
            f"{out} holds an experiment already (its results.json, seeds or runs); pass --resume to continue it, "
            "or choose another --out"
        )
    if resume and not held:
        raise ConfigError(f"--resume: {out} holds no experiment to continue; leave --resume out to start one")


def write_partial(out: Path, results: dict, done: list[str], todo: list[str], title: str) -> None:
    """results.json and report.md / .html after a finished row or seed, marked partial (issue 31): the rows done so far,
    the rows still to come, and "partial": true, which the final results.json replaces by the whole table."""
    from .. import report as report_module

    partial = {**results, "partial": True, "rows_done": list(done), "rows_to_come": list(todo)}
    runs.write_json(out / "results.json", partial)
    rows = [{"row": name, "state": "finished"} for name in done] + [{"row": name, "state": "to come"} for name in todo]
    notes = [
        f"PARTIAL: {len(done)} of {len(done) + len(todo)} rows finished; results.json holds them. The experiment is "
        "still running, or was stopped: the same command with --resume continues it from the first unfinished row."
    ]
    report_module.write_report(out, f"{title} (partial)", [("Rows", rows)], [], notes, numbers_first=True)


def check_models_fit(model: str, options: list[dict], dataset, data_dir: str | None) -> None:
    """Each model sized on the meta device for the dataset's image shape before any progress line or run folder: an
    option that cannot fit in memory is one line (aelab.models.check_memory), not an error in the middle of a row."""
    from .. import models

    shape = list(datamod.get(dataset, None, data_dir).train_x.shape[1:])
    for extra in options:
        models.check_memory(model, {"input_shape": shape, **extra}, training=True)
