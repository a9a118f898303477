"""Compare finished runs and seed groups side by side: `aelab compare RUN_OR_SEEDS [...] --out DIR`.

A RUN is a run folder (config.json); a seed group is the OUT of `aelab train --seeds N` (seed-<s>/ run folders).

    DIR/comparison.csv    one row per run folder (each seed of a group too, with its group and seed): its
                          model, data, options and every metric of its eval.json
    DIR/comparison.json   the same rows, each group's mean and 95% interval per metric, the paired differences
    DIR/comparison.md     one column per run or group: plain numbers for a run, mean [95% interval] for a group,
                          the settings chosen on validation data (the probe's C) listed per seed, never averaged;
                          then the paired differences of groups trained with the same seeds; the figures linked
    DIR/comparison.html   self-contained (PNGs embedded): the same tables, the validation- and test-loss curves
                          (a group: the mean over its seeds; one panel per loss unit, so nats and squared errors
                          never share an axis) and the same test images reconstructed by every run (a group: its
                          first seed)
    DIR/figures/          those PNGs

Paired differences: two groups trained with the same seeds share the seed's part of the variation (the data
order, the initial weights when the models match), so B - A is summarised over the seeds as one sample
(aelab.metrics.intervals.paired_difference); its interval is narrower than the two groups' intervals suggest.

Runs are compared on the same data only: equal `dataset` and `dataset_options` in config.json and, when both
runs recorded `data_info.sha256` (a hash of the loaded arrays), equal hashes (the names may then differ).
`train_limit` may differ (the test split is the same); the table shows it. A run without eval.json is
evaluated first, which writes eval.json and its report into that run folder. Run folders are untrusted
input: everything is read through runs.read_config / read_json / read_history, and all of it is read and
checked before DIR is created.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import report, runs
from .compare_runs import (  # noqa: F401 (the names aelab.compare has always had: tests and callers use them)
    NETWORK_SHAPE_OPTIONS,
    RUN_FOLDER_FILES,
    _csv_cell,
    _current_eval,
    _curve,
    _members,
    _trained_epochs,
    by_entry,
    csv_text,
    data_groups,
    data_label,
    data_sha256,
    missing_seeds,
    refuse_run_folder_as_out,
    run_columns,
    same_data,
    table_rows,
    user_networks,
)
from .compare_seeds import (  # noqa: F401 (as above)
    BASELINES_CAPTION,
    LOSS_METRICS,
    UNIT_METRICS,
    baseline_rows,
    display_rows,
    group_summary,
    group_tables,
    incomparable,
    objective,
    paired_differences,
    paired_tables,
    table_reading,
)
from .errors import AelabError, CheckpointError, ConfigError
from .metrics.convergence import recorded_warnings
from .metrics.curves import curve_band, mean_curve
from .reading import plural
from .runs import MAX_GROUP_RUNS, seed_folders  # noqa: F401 (compare.seed_folders)

N_IMAGES = 10  # test images in the reconstruction mosaic: the first of each class


def compare(
    run_dirs: list[str | os.PathLike],
    out: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    iwae_k: int = 100,
    allow_different_data: bool = False,
    trust_code=False,
) -> dict:
    """Compare runs and seed groups into `out` (comparison.csv, .json, .md, .html, figures/); return
    {"rows", "table", "groups", "paired", "notes", "files"}.

    Each of run_dirs is a run folder or a `--seeds` folder (its seed-<s>/ runs form a group). Runs on different
    data are refused unless allow_different_data. The same run given twice, an `out` that is one of the runs,
    a missing or broken run folder: AelabError before anything is written. Runs without eval.json, or whose
    eval.json scored other weights, are evaluated first (evaluate(run, write=True, data_dir=..., iwae_k=...))."""
    out = _check_arguments(run_dirs, out, data_dir)
    entries, dirs, names = _given_runs(run_dirs, out)
    configs = _read_configs(entries, dirs, names, allow_different_data)
    histories = [runs.read_history(d) for d in dirs]
    evals, notes, warning_notes = _current_evals(entries, dirs, names, iwae_k, data_dir, trust_code)
    epochs = [_trained_epochs(h) for h in histories]
    notes += _undertrained_notes(names, configs, epochs)
    rows = table_rows(names, configs, evals, epochs, _group_and_seed(entries, configs))  # the CSV: every run folder
    entry_configs = by_entry(entries, configs)
    result, tables, reading_line, table_notes = group_tables(
        entries, entry_configs, by_entry(entries, evals), by_entry(entries, epochs)
    )
    lead = ([reading_line] if reading_line else []) + warning_notes  # then "RUN: warning: ...", as printed
    # everything read and computed before `out` is touched: bad input leaves nothing behind
    mosaics, mosaic_notes = _mosaics(entries, entry_configs, data_dir, trust_code)
    curves = _group_curves(entries, entry_configs, by_entry(entries, histories))
    notes = [*_headline_notes(configs, names, result["groups"]), *notes, *table_notes, *mosaic_notes]
    files = _write_comparison(out, rows, result, notes, tables, curves, mosaics, lead, warning_notes)
    return {"rows": rows, **result, "notes": notes, "files": files}


# ---------------------------------------------------------------- what was given, read and checked
def _check_arguments(run_dirs: list, out: str | os.PathLike, data_dir) -> Path:
    """`out` as a Path, once it names a folder, the data folder is usable and at least one run is given."""
    if not str(out).strip():
        raise ConfigError("--out must name a folder")
    from .data.datasets import check_data_dir

    check_data_dir(data_dir)
    if not run_dirs:
        raise ConfigError("compare needs at least one run folder")
    return Path(out)


def _given_runs(run_dirs: list, out: Path) -> tuple[list[dict], list[Path], list[str]]:
    """(entries, dirs, names): one entry per folder given (compare_runs._members), then every run folder, a group's
    seeds named name/seed-<s>. Refused: a folder that does not exist, a run given twice, an `out` that is one of
    the runs or any run folder or seed group (refuse_run_folder_as_out)."""
    given = [Path(r) for r in run_dirs]
    for folder in given:
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise CheckpointError(f"run folder {folder} {what}")
    entries = _members(given, [str(r) for r in run_dirs])
    # every run folder, a group's seeds as name/seed-<s>
    dirs = [d for e in entries for d in e["dirs"]]
    names = [e["name"] if e["seeds"] is None else f"{e['name']}/{d.name}" for e in entries for d in e["dirs"]]
    seen: dict[Path, str] = {}
    for run_dir, name in zip(dirs, names):
        real = run_dir.resolve()
        if real in seen:
            raise ConfigError(f"run {name} is given twice (also as {seen[real]}); name each run once")
        seen[real] = name
    if out.resolve() in seen or out.resolve() in {g.resolve() for g in given}:
        raise ConfigError(f"--out {out} is one of the runs compared; choose another folder")
    refuse_run_folder_as_out(out)
    return entries, dirs, names


def _read_configs(entries: list[dict], dirs: list[Path], names: list[str], allow_different_data: bool) -> list[dict]:
    """Every run's config.json; refused: a seed folder whose config names another seed, runs on different data
    (unless allow_different_data)."""
    configs = [runs.read_config(d) for d in dirs]
    # a group's seed is its folder's name: the run must agree
    for entry, cfgs in zip(entries, by_entry(entries, configs)):
        for seed, run_dir, config in zip(entry["seeds"] or [], entry["dirs"], cfgs):
            recorded = config["seed"]
            if recorded != seed:
                raise CheckpointError(f"{run_dir}: the folder says seed {seed}, its config.json seed {recorded}")
    groups = data_groups(configs)
    if len(groups) > 1 and not allow_different_data:
        which = "; ".join(", ".join(names[i] for i in g) + ": " + data_label(configs[g[0]]) for g in groups)
        raise ConfigError(f"the runs use different data ({which}); pass --allow-different-data to compare them anyway")
    return configs


def _current_evals(
    entries: list[dict], dirs: list[Path], names: list[str], iwae_k: int, data_dir, trust_code
) -> tuple[list[dict], list[str], list[str]]:
    """(evals, notes, warning_notes): each run's current eval.json (compare_runs._current_eval: evaluated first
    when it has none or it scored other weights); notes on the seeds a group lacks, the runs evaluated now and the
    warnings each eval.json recorded (those also as warning_notes)."""
    notes: list[str] = [
        f"{e['name']}: no run folder for seed {', '.join(map(str, e['missing']))}; the group is summarised over "
        f"the {plural(len(e['seeds']), 'seed')} it holds ({', '.join(map(str, e['seeds']))})"
        for e in entries
        if e.get("missing")
    ]
    evals = [_current_eval(d, name, iwae_k, data_dir, notes, trust_code) for d, name in zip(dirs, names)]
    warned = [(name, w) for name, result in zip(names, evals) for w in recorded_warnings(result)]
    warning_notes = [f"{name}: warning: {w}" for name, w in warned]  # eval.json is untrusted: recorded_warnings
    notes += warning_notes  # keeps strings only, one line each, bounded
    return evals, notes, warning_notes


def _undertrained_notes(names: list[str], configs: list[dict], epochs: list[int | None]) -> list[str]:
    """A note for each run that trained fewer epochs than its config asked for."""
    return [
        f"{name}: trained {n} of its {config['epochs']} epochs"
        for name, config, n in zip(names, configs, epochs)
        if n is not None and n < config["epochs"]
    ]


def _group_and_seed(entries: list[dict], configs: list[dict]) -> list[dict]:
    """The CSV's own columns of each run folder: its group (None for a single run) and its seed."""
    return [
        {"group": entry["name"] if entry["seeds"] else None, "seed": config["seed"]}
        for entry, cfgs in zip(entries, by_entry(entries, configs))
        for config in cfgs
    ]


# ---------------------------------------------------------------- figures: reconstructions and loss curves
def _reconstructions(
    run_dirs: list[Path], names: list[str], config: dict, data_dir, trust_code=False
) -> tuple[list, list, list[str]]:
    """(image rows, row labels, notes) of one data group: the test images, then each run's reconstructions
    of the same images. A run whose model cannot be rebuilt (or does not take these images) is left out."""
    from .evaluate import first_of_each_class
    from .metrics.codes import reconstruct_all

    try:
        _, _, test_x, test_y = runs.run_data(config, data_dir)
    except AelabError as e:
        return [], [], [f"{', '.join(names)}: reconstructions not shown: the test data cannot be loaded ({e})"]
    x = test_x[first_of_each_class(test_y, N_IMAGES)]
    rows, labels, notes = [x.numpy()], ["input"], []
    for run_dir, name in zip(run_dirs, names):
        try:
            model = runs.load_model(run_dir, trust_code=trust_code)
        except AelabError as e:
            notes.append(f"{name}: reconstructions not shown: its model cannot be rebuilt from model.json ({e})")
            continue
        x_hat = reconstruct_all(model, x) if tuple(model.input_shape) == tuple(x.shape[1:]) else None
        if x_hat is None or x_hat.shape != x.shape:
            notes.append(
                f"{name}: reconstructions not shown: its model does not take images of shape {tuple(x.shape[1:])}"
            )
            continue
        rows.append(x_hat.float().numpy())
        labels.append(name)
    return rows, labels, notes


def _mosaics(
    entries: list[dict], configs: list[list[dict]], data_dir, trust_code
) -> tuple[list[tuple[str, list, list[str]]], list[str]]:
    """(mosaics, notes): per data group of the runs and groups shown (a group: its first seed), the data in
    words, the image rows and their labels (_reconstructions); notes on the runs left out."""
    shown = [(e["dirs"][0], e["name"] if e["seeds"] is None else f"{e['name']} (seed {e['seeds'][0]})")
             for e in entries]  # fmt: skip
    shown_configs = [c[0] for c in configs]
    mosaics, notes = [], []
    for group in data_groups(shown_configs):
        images, labels, group_notes = _reconstructions(
            [shown[i][0] for i in group], [shown[i][1] for i in group], shown_configs[group[0]], data_dir, trust_code
        )
        notes += group_notes
        if len(images) > 1:
            mosaics.append((data_label(shown_configs[group[0]]), images, labels))
    return mosaics, notes


def _group_curves(entries: list[dict], configs: list[list[dict]], histories: list[list[list[dict]]]) -> tuple:
    """(curves, units, bands) for report.plot_curves, by label: a run's losses per epoch, a group's mean over its
    seeds (metrics.curves.mean_curve) with the band from its lowest to its highest seed."""
    curves, units, bands = {}, {}, {}
    for entry, cfgs, entry_histories in zip(entries, configs, histories):
        member_curves = [_curve(h) for h in entry_histories]
        label = (
            entry["name"]
            if entry["seeds"] is None
            else f"{entry['name']} (mean of {plural(len(entry['seeds']), 'seed')})"
        )
        curve = member_curves[0] if entry["seeds"] is None else mean_curve(member_curves)
        if curve:
            curves[label], units[label] = curve, report.loss_unit(cfgs[0])
            if entry["seeds"] and len(member_curves) > 1:
                bands[label] = curve_band(member_curves)
    return curves, units, bands


def _plot_figures(fig_dir: Path, curves: tuple, mosaics: list) -> list[tuple[str, Path]]:
    """The comparison's figures, each with its caption: the loss curves, one mosaic per data group."""
    curves, units, bands = curves
    figures = []
    if curves:  # the validation loss chooses (dotted); the test loss is only reported (dashed)
        path = report.plot_curves(
            curves, fig_dir / "loss.png", keys=("val_loss", "test_loss"), title="loss per epoch", units=units,
            bands=bands,
        )  # fmt: skip
        figures.append(
            ("Validation loss (dotted: the split that chooses) and test loss (dashed) per epoch, one colour per "
             "run or group, one panel per loss unit; a group: the mean over its seeds, shaded from the lowest "
             "to the highest seed", path)
        )  # fmt: skip
    for k, (data, images, labels) in enumerate(mosaics):
        path = report.plot_image_rows(images, labels, fig_dir / f"reconstructions-{k + 1}.png")
        figures.append((f"The same test images of {data} (top row) reconstructed by each run", path))
    return figures


# ---------------------------------------------------------------- notes and files
def _headline_notes(configs: list[dict], names: list[str], group_results: dict) -> list[str]:
    """The notes that open the list: the data every run used (or each data group's), what the metrics are and,
    with groups, what a group's cell holds."""
    groups = data_groups(configs)
    data_note = (
        f"Data: {data_label(configs[0])} for every run."
        if len(groups) == 1
        else "Data: the runs use different data (--allow-different-data), so their metrics are not comparable "
        "across data: "
        + "; ".join(", ".join(names[i] for i in g) + f": {data_label(configs[g[0]])}" for g in groups)
        + "."
    )
    limits = sorted({str(c["train_limit"] or "none") for c in configs})
    if len(limits) > 1:
        data_note += f" train_limit differs ({', '.join(limits)}): the test split is the same, the train split is not."
    return [
        data_note,
        "Metrics from each run's eval.json (fitted on the train split, scored on the test split). Blank: the "
        "run's model has no such metric.",
        *(
            [
                "A seed group's cell is the mean over its seeds and, in brackets, the 95% interval of that mean "
                "(Student t; see comparison.json for each method); a setting chosen on the validation split is "
                "listed with how often each value was chosen."
            ]
            if group_results
            else []
        ),  # fmt: skip
    ]


def _write_comparison(
    out: Path, rows, result: dict, notes, tables, curves, mosaics, lead: list[str], warning_notes: list[str]
) -> dict:
    """Write comparison.csv, .json, .md and .html and figures/ into `out`, under its lock; return the files."""
    with runs.RunLock(out):
        runs.remove_stale_temp_files(out)
        fig_dir = runs.subfolder(out, "figures")
        runs.remove_stale_temp_files(fig_dir)
        figures = _plot_figures(fig_dir, curves, mosaics)
        runs.atomic_write_text(out / "comparison.csv", csv_text(rows))
        runs.write_json(
            out / "comparison.json",
            {"rows": rows, "groups": result["groups"], "paired": result["paired"], "notes": notes},
        )
        html_path = report.write_report(
            out,
            "aelab comparison",
            tables,
            figures,
            [n for n in notes if n not in warning_notes],  # those are at the top (lead)
            name="comparison",
            numbers_first=True,
            lead=lead,
        )
    files = {"csv": out / "comparison.csv", "json": out / "comparison.json", "md": out / "comparison.md",
             "html": html_path}  # fmt: skip
    return files
