"""The demo: the MLP autoencoder and the VAE on the embedded mnist5k, evaluated and compared in one report.

Protocol: each model trains on the train split minus a stratified validation split (10%, at most 500 images,
seed 0), whose loss is recorded per epoch and, with --early-stopping, chooses the kept epoch; the probes' C
is chosen on it too (aelab.evaluate). The test split (and the official MNIST 10k test set, when --data-dir
holds its t10k files) is scored once. `--seeds N` repeats it per seed (aelab.experiments.multiseed).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import report, runs
from ..evaluate import evaluate
from ..options import opt, positive_int, seed_value
from ..reading import display_name, plural, reading
from ..train import TrainConfig
from . import multiseed
from .common import (
    OFFICIAL_TEST,
    amp_field,
    device_field,
    jobs_field,
    kept_epoch,
    official_test_status,
    preflight,
    seeds_field,
    splits_of,
    train_or_resume,
    write_partial,
)

ROW_KEY = "model"
COLUMNS = [
    "recon_sse",
    "pca_sse (same code size)",
    "recon_mse",
    "probe_accuracy",
    "raw_probe_accuracy",
    "test ELBO (nats)",
    "test KL (nats)",
    "NLL (nats, IWAE k=100)",
    "probe C (chosen)",
    "epoch kept",
]
CHOICE_COLUMNS = ["probe C (chosen)", "epoch kept"]
PAIRS = [("vae", "ae", "probe_accuracy"), ("vae", "ae", "recon_sse")]
PLOT_COLUMNS = ["probe_accuracy", "recon_sse"]
MODELS = [("ae", {"loss": "mse"}), ("vae", {"likelihood": "bce"})]
# what the report's first line reads (aelab.reading), kept per seed in results.json ("reading")
READ_METRICS = ("recon_sse", "pca_sse", "code_dim", "sse_ratio_to_pca", "probe_accuracy", "raw_probe_accuracy")


@dataclass
class Settings:
    out: str = field(default="runs/demo", metadata=opt("output folder"))
    dataset: str = field(default="mnist5k", metadata=opt("dataset name (aelab data list)"))
    data_dir: str | None = field(
        default=None,
        metadata=opt("folder of downloaded datasets; with the official MNIST t10k files, also scored on them"),
    )
    epochs: int = field(default=30, metadata=opt("epochs per model", parse=positive_int))
    early_stopping: int | None = field(
        default=None,
        metadata=opt(
            "keep the epoch of the best validation loss, stopping after PATIENCE worse ones", parse=positive_int
        ),
    )
    seed: int = field(default=0, metadata=opt("seed of every model", parse=seed_value))
    seeds: int = seeds_field()
    jobs: int = jobs_field()
    quick: bool = field(default=False, metadata=opt("3 epochs on 1,000 images (smoke test)"))
    device: str = device_field()
    amp: bool = amp_field()
    figures: bool = field(default=True, metadata=opt(hidden=True))  # multiseed: t-SNE maps for the first seed only
    no_progress: bool = field(default=False, metadata=opt("no progress bars"))


def run(settings: Settings) -> Path:
    """Every seed's run_one into OUT/seed-<s>/, then the rows over seeds (aelab.experiments.multiseed)."""
    preflight(settings)
    return multiseed.run(sys.modules[__name__], settings)


def _row(name: str, m: dict, kept: int) -> dict:
    return {
        "model": name,
        "recon_sse": m["recon_sse"],
        "pca_sse (same code size)": m["pca_sse"],
        "recon_mse": m["recon_mse"],
        "probe_accuracy": m.get("probe_accuracy"),
        "raw_probe_accuracy": m.get("raw_probe_accuracy"),
        "test ELBO (nats)": m.get("test_elbo"),
        "test KL (nats)": m.get("test_kl"),
        "NLL (nats, IWAE k=100)": m.get("nll_nats"),
        "probe C (chosen)": m.get("probe_C"),
        "epoch kept": kept,
    }


def run_one(settings: Settings) -> Path:
    started = time.perf_counter()
    out = Path(settings.out)
    epochs, limit = (3, 1000) if settings.quick else (settings.epochs, None)
    progress = not settings.no_progress
    own, other = [], []
    figures, histories, units, config = [], {}, {}, None
    official, read = None, []  # read: each model's numbers and warnings, for the report's first lines
    for name, options in MODELS:
        run_dir = train_or_resume(train_config(settings, name, options, epochs, limit), progress=progress)
        config = runs.read_config(run_dir)
        if official is None:
            official, official_note = official_test_status(
                settings.data_dir, tuple(config["model_options"]["input_shape"]), settings.dataset
            )
        row, entry, official_row = score_model(settings, name, run_dir, official)
        own.append(row)
        read.append(entry)
        if official_row is not None:
            other.append(official_row)
        histories[name] = runs.read_history(run_dir)
        units[name] = report.loss_unit(config)
        figures += [(f"{name}: {c}", p) for c, p in _figures_of(run_dir)]
        done = [n for n, _ in MODELS][: len(own)]
        if len(own) < len(MODELS):  # the table so far, marked partial (issue 31)
            write_partial(out, {"tables": {"test split": own}}, done, [n for n, _ in MODELS][len(own) :], "demo")
    figures.insert(0, ("Loss per epoch", report.plot_curves(histories, out / "loss.png", units=units)))
    tables = {"test split": own}
    if other:
        tables["official MNIST test set (10k)"] = other
    splits = {**splits_of(config), "official_test": {"available": official, "note": official_note}}
    notes = notes_of(settings, config, splits, epochs, official_note)
    title = "aelab demo: MLP autoencoder vs VAE"
    results = {
        "experiment": "demo",
        "title": title,
        "selection_split": "validation",
        "selection": "per run, the probes' C (and with --early-stopping the epoch) on the validation split",
        "splits": splits,
        "tables": tables,
        "table_order": list(tables),
        "figures": [[caption, str(Path(path).relative_to(out))] for caption, path in figures],
        "notes_for_summary": notes,
        "wall_time_s": time.perf_counter() - started,
    }
    lead = lead_lines(settings, read)
    results["quick"] = settings.quick
    results["lead"], results["reading"] = lead, read
    runs.write_json(out / "results.json", results)
    return report.write_report(out, title, [(name, rows) for name, rows in tables.items()], figures, notes, lead=lead)


def train_config(settings: Settings, name: str, options: dict, epochs: int, limit: int | None) -> TrainConfig:
    """The run of one model of MODELS, into OUT/<name>."""
    return TrainConfig(
        model=name,
        model_options=options,
        dataset=settings.dataset,
        data_dir=settings.data_dir,
        epochs=epochs,
        early_stopping=settings.early_stopping,
        seed=settings.seed,
        train_limit=limit,
        device=settings.device,
        amp=settings.amp,
        out=str(Path(settings.out) / name),
    )


def score_model(settings: Settings, name: str, run_dir: Path, official: bool) -> tuple[dict, dict, dict | None]:
    """aelab.evaluate of one trained model on the test split (its figures and, for the first seed, t-SNE maps), and
    on the official MNIST test set when there is one. Returns (its row, its numbers and warnings for the reading,
    its row on the official test set or None)."""
    progress = not settings.no_progress
    tsne = (1000 if settings.quick else 2000) if settings.figures else 0
    result = evaluate(run_dir, tsne_points=tsne, figures=True, data_dir=settings.data_dir, progress=progress)
    kept = kept_epoch(run_dir)
    row = _row(name, result["metrics"], kept)
    numbers = {k: result["metrics"][k] for k in READ_METRICS if k in result["metrics"]}
    read = {"name": display_name(name), "metrics": numbers, "warnings": result["warnings"]}
    official_row = None
    if official:
        extra = evaluate(run_dir, data_dir=settings.data_dir, test_dataset=OFFICIAL_TEST, progress=progress)
        official_row = _row(name, extra["metrics"], kept)
    return row, read, official_row


def notes_of(settings: Settings, config: dict, splits: dict, epochs: int, official_note: str) -> list[str]:
    """The report's notes: the data, the splits and what each chose, the VAE's unit, the budget."""
    kept_note = (
        f"each run keeps the epoch of its best validation loss (patience {settings.early_stopping})"
        if settings.early_stopping
        else f"each run keeps its last epoch ({epochs}); the validation loss is only recorded"
    )
    return [
        f"Data: {config['dataset']}: {splits['train']} train images, {splits['validation']} validation images "
        f"carved from train (stratified, seed 0), {splits['test']} test images. The models trained on train minus "
        f"validation; {kept_note}. The validation split chose each probe's C "
        "(logistic regression fitted on train minus validation); PCA and the probes were then fitted on the whole "
        "train split and the test split was scored once. recon_sse is the per-image sum of squared errors "
        "(Hinton & Salakhutdinov 2006's unit).",
        official_note,
        "VAE numbers are in nats per image, Bernoulli likelihood on grey-level (not binarized) pixels, so they are "
        "not comparable with the 86.76 / 89.78 nats of binarized MNIST.",
        f"At most {plural(epochs, 'epoch')}, seed {settings.seed}. Each run folder holds its config, metrics, checkpoint and "
        "its own report.",
    ]


def lead_lines(settings: Settings, read: list[dict]) -> list[str]:
    """The report's first lines: a --quick run says it is a smoke check, then the reading of the table (generated
    from the numbers), then every warning."""
    line = reading(read)
    lead = ([line] if line else []) + [f"{e['name']}: warning: {w}" for e in read for w in e["warnings"]]
    if settings.quick:  # said first, in the report and in results.json: a smoke check is not a result
        lead.insert(
            0, "--quick: a smoke check (3 epochs on the first 1,000 train images); its numbers are not a result."
        )
    return lead


def lead_over_seeds(per_seed: list[dict], seeds: list[int]) -> list[str]:
    """The summary report's first lines (aelab.experiments.multiseed): the reading of each model's means over the
    seeds, then every seed's warnings; one seed: its own lead."""
    if len(per_seed) == 1:
        return list(per_seed[0].get("lead") or [])
    by_name: dict[str, list[dict]] = {}
    for results in per_seed:
        for entry in results.get("reading") or []:
            by_name.setdefault(entry["name"], []).append(entry)
    means = []
    for name, entries in by_name.items():
        metrics = dict(entries[0]["metrics"])  # code_dim: a setting, the same at every seed
        for key in metrics.keys() - {"code_dim"}:
            values = [e["metrics"].get(key) for e in entries]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                metrics[key] = sum(values) / len(values)
        means.append({"name": name, "metrics": metrics, "warnings": [w for e in entries for w in e["warnings"]]})
    line = reading(means, means_of=len(per_seed))
    warned = [f"seed {s}: {w}" for s, results in zip(seeds, per_seed) for w in (results.get("lead") or [])[1:]]
    return ([line] if line else []) + warned


def _figures_of(run_dir: Path):
    fig_dir = run_dir / "figures"
    names = [
        ("reconstructions.png", "test images and reconstructions"),
        ("elbo_terms.png", "reconstruction and KL terms per epoch"),
        ("tsne.png", "t-SNE of test codes"),
        ("kl_per_dimension.png", "KL per latent dimension"),
        ("samples.png", "samples"),
        ("traversals.png", "latent traversals"),
        ("interpolation.png", "interpolations (real images at both ends)"),
    ]
    return [(caption, fig_dir / f) for f, caption in names if (fig_dir / f).exists()]
