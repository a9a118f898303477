"""Compare finished runs side by side: `aelab compare RUN [RUN ...] --out DIR`.

    DIR/comparison.csv    one row per run: its model, data, options and every metric of its eval.json
    DIR/comparison.md     the same table and notes, the figures linked
    DIR/comparison.html   self-contained (PNGs embedded): the table, the test-loss curves (one panel per loss
                          unit, so nats and squared errors never share an axis) and the same test images
                          reconstructed by every run
    DIR/figures/          those PNGs

Runs are compared on the same data only: equal `dataset` and `dataset_options` in config.json and, when both
runs recorded `data_info.sha256` (a hash of the loaded arrays), equal hashes (the names may then differ).
`train_limit` may differ (the test split is the same); the table shows it. A run without eval.json is
evaluated first, which writes eval.json and its report into that run folder. Run folders are untrusted
input: everything is read through runs.read_config / read_json / read_history, and all of it is read and
checked before DIR is created.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from . import report, runs
from .errors import AelabError, CheckpointError, ConfigError

N_IMAGES = 10  # test images in the reconstruction mosaic: the first of each class


# ---------------------------------------------------------------- data identity
def data_sha256(config: dict) -> str | None:
    """The content hash of the run's data (config.json data_info.sha256), None in run folders without it."""
    info = config.get("data_info")
    sha = info.get("sha256") if isinstance(info, dict) else None
    return sha if isinstance(sha, str) and sha else None


def same_data(a: dict, b: dict) -> bool:
    """Whether two configs name the same data: by content hash when both have one, else by dataset name and
    options. train_limit is not part of it: it cuts the train split only."""
    sha_a, sha_b = data_sha256(a), data_sha256(b)
    if sha_a is not None and sha_b is not None:
        return sha_a == sha_b
    return a["dataset"] == b["dataset"] and _canonical(a["dataset_options"]) == _canonical(b["dataset_options"])


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def data_label(config: dict) -> str:
    """The data of a run in words: name, options, the start of its hash."""
    label = config["dataset"]
    if config["dataset_options"]:
        label += " " + _canonical(config["dataset_options"])
    sha = data_sha256(config)
    return label + (f" (sha256 {sha[:12]})" if sha else "")


def data_groups(configs: list[dict]) -> list[list[int]]:
    """Indices of the runs grouped by data: a run joins the first group whose every member has the same data."""
    groups: list[list[int]] = []
    for i, config in enumerate(configs):
        for group in groups:
            if all(same_data(configs[j], config) for j in group):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


# ---------------------------------------------------------------- reading the runs
def _read_eval(run_dir: Path) -> dict:
    path = run_dir / "eval.json"
    result = runs.read_json(path)
    if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
        raise CheckpointError(f"{path}: no 'metrics' object; run aelab evaluate {run_dir} again")
    return result


def _trained_epochs(history: list[dict]) -> int | None:
    epochs = [h["epoch"] for h in history if "train_loss" in h]
    return max(epochs) if epochs else None


def _curve(history: list[dict]) -> list[dict]:
    """The epochs with a numeric train and test loss (metrics.jsonl is untrusted: plot only numbers)."""

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return [h for h in history if number(h.get("train_loss")) and number(h.get("test_loss"))]


def _flatten(prefix: str, value: Any, out: dict) -> None:
    """Nested options as `prefix.key` columns; lists stay one cell (JSON)."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value


def _scalar(v: Any) -> Any:
    """A table cell: JSON scalars as they are, anything nested as its JSON text."""
    return v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v, sort_keys=True)


def table_rows(names: list[str], configs: list[dict], evals: list[dict], epochs: list[int | None]) -> list[dict]:
    """One row per run: run, model, data, sizes, the model options (opt.*), then every metric (union over runs,
    None where a run has none). `epochs` are the epochs trained (metrics.jsonl), None: config.json's."""
    rows = []
    for name, config, result, n_epochs in zip(names, configs, evals, epochs):
        info = config.get("data_info") if isinstance(config.get("data_info"), dict) else {}
        data = result.get("data") if isinstance(result.get("data"), dict) else {}
        row = {"run": name, "model": config["model"], "dataset": config["dataset"]}
        for key, value in config["dataset_options"].items():
            _flatten(f"dataset.{key}", value, row)
        row["data_sha256"] = data_sha256(config)
        for key in ("n_train", "n_test"):  # written by train; older folders: data_info, then eval.json
            row[key] = next((d[key] for d in (config, info, data) if d.get(key) is not None), None)
        row["train_limit"] = config["train_limit"]
        row["epochs"] = n_epochs if n_epochs is not None else config["epochs"]
        for key, value in config["model_options"].items():
            _flatten(f"opt.{key}", value, row)
        rows.append(row)
    own = list(dict.fromkeys(k for r in rows for k in r))  # every run's own columns, in order
    metric_keys = list(dict.fromkeys(k for result in evals for k in result["metrics"]))
    columns = own + [k if k not in own else f"metric.{k}" for k in metric_keys]  # never overwrite a run column
    table = []
    for row, result in zip(rows, evals):
        metrics = {c: result["metrics"].get(k) for c, k in zip(columns[len(own) :], metric_keys)}
        table.append({c: _scalar({**row, **metrics}.get(c)) for c in columns})
    return table


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    text = str(v)
    if isinstance(v, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(text)
        except ValueError:  # not a number: a spreadsheet would run it as a formula
            return "'" + text
    return text


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(rows[0]))
    for row in rows:
        writer.writerow([_csv_cell(v) for v in row.values()])
    return buf.getvalue()


# ---------------------------------------------------------------- reconstructions
def _reconstructions(run_dirs: list[Path], names: list[str], config: dict, data_dir) -> tuple[list, list, list[str]]:
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
            model = runs.load_model(run_dir)
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


# ---------------------------------------------------------------- the comparison
def compare(
    run_dirs: list[str | os.PathLike],
    out: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    iwae_k: int = 100,
    allow_different_data: bool = False,
) -> dict:
    """Compare runs into `out` (comparison.csv, .md, .html, figures/); return {"rows", "notes", "files"}.

    Runs on different data are refused unless allow_different_data. The same run given twice, an `out` that is
    one of the runs, a missing or broken run folder: AelabError before anything is written. Runs without
    eval.json are evaluated first (evaluate(run, write=True, data_dir=..., iwae_k=...))."""
    from .evaluate import evaluate

    if not str(out).strip():
        raise ConfigError("--out must name a folder")
    if not run_dirs:
        raise ConfigError("compare needs at least one run folder")
    out = Path(out)
    dirs = [Path(r) for r in run_dirs]
    names = [str(r) for r in run_dirs]
    seen: dict[Path, str] = {}
    for run_dir, name in zip(dirs, names):
        if not run_dir.is_dir():
            what = "is not a folder" if run_dir.exists() else "does not exist"
            raise CheckpointError(f"run folder {run_dir} {what}")
        real = run_dir.resolve()
        if real in seen:
            raise ConfigError(f"run {name} is given twice (also as {seen[real]}); name each run once")
        seen[real] = name
    if out.resolve() in seen:
        raise ConfigError(f"--out {out} is one of the runs compared; choose another folder")

    configs = [runs.read_config(d) for d in dirs]
    groups = data_groups(configs)
    if len(groups) > 1 and not allow_different_data:
        which = "; ".join(", ".join(names[i] for i in g) + ": " + data_label(configs[g[0]]) for g in groups)
        raise ConfigError(f"the runs use different data ({which}); pass --allow-different-data to compare them anyway")
    histories = [runs.read_history(d) for d in dirs]

    notes = []
    evals = []
    for run_dir, name in zip(dirs, names):
        if (run_dir / "eval.json").exists() or (run_dir / "eval.json").is_symlink():
            saved = _read_eval(run_dir)
            scored = saved.get("scored")
            if scored is None:  # written before eval.json recorded its weights: used, with what can be said
                evals.append(saved)
                if _older(run_dir / "eval.json", run_dir / "model.safetensors"):
                    notes.append(f"{name}: eval.json is older than model.safetensors; run aelab evaluate {name} again")
            elif scored == runs.weights_record(run_dir):
                evals.append(saved)
            else:  # it scored other weights (a resume trained on since): never shown as current
                try:
                    evals.append(evaluate(run_dir, iwae_k=iwae_k, write=True, data_dir=data_dir))
                except AelabError as e:
                    raise ConfigError(
                        f"{name}: eval.json scored other weights than the run holds now, and it cannot be evaluated "
                        f"again here ({e}); run aelab evaluate {name} with what it needs, then compare"
                    ) from None
                epoch = scored.get("epoch") if isinstance(scored, dict) else None
                notes.append(
                    f"{name}: evaluated again (its eval.json scored the weights of epoch {epoch}; the run now holds "
                    f"those of epoch {evals[-1]['scored']['epoch']})"
                )
        else:
            evals.append(evaluate(run_dir, iwae_k=iwae_k, write=True, data_dir=data_dir))
            notes.append(f"{name}: evaluated now (it had no eval.json)")
    epochs = [_trained_epochs(h) for h in histories]
    for name, config, n in zip(names, configs, epochs):
        if n is not None and n < config["epochs"]:
            notes.append(f"{name}: trained {n} of its {config['epochs']} epochs")
    rows = table_rows(names, configs, evals, epochs)

    # everything read and computed before `out` is touched: bad input leaves nothing behind
    mosaics = []
    for group in groups:
        images, labels, group_notes = _reconstructions(
            [dirs[i] for i in group], [names[i] for i in group], configs[group[0]], data_dir
        )
        notes += group_notes
        if len(images) > 1:
            mosaics.append((group, images, labels))
    curves = {name: _curve(history) for name, history in zip(names, histories)}
    units = {name: report.loss_unit(config) for name, config in zip(names, configs) if curves[name]}
    curves = {name: curve for name, curve in curves.items() if curve}

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
    notes = [
        data_note,
        "Metrics from each run's eval.json (fitted on the train split, scored on the test split). Blank: the "
        "run's model has no such metric.",
        *notes,
    ]

    with runs.RunLock(out):
        runs.remove_stale_temp_files(out)
        fig_dir = runs.subfolder(out, "figures")
        runs.remove_stale_temp_files(fig_dir)
        figures = []
        if curves:  # the validation loss chooses (solid); the test loss is only reported (dashed)
            path = report.plot_curves(
                curves, fig_dir / "loss.png", keys=("val_loss", "test_loss"), title="loss per epoch", units=units
            )
            figures.append(
                ("Validation loss (dotted: the split that chooses) and test loss (dashed) per epoch, one panel per "
                 "loss unit", path)
            )  # fmt: skip
        for k, (group, images, labels) in enumerate(mosaics):
            path = report.plot_image_rows(images, labels, fig_dir / f"reconstructions-{k + 1}.png")
            data = data_label(configs[group[0]])
            figures.append((f"The same test images of {data} (top row) reconstructed by each run", path))
        runs.atomic_write_text(out / "comparison.csv", csv_text(rows))
        html_path = report.write_report(
            out, "aelab comparison", [("Runs and test metrics", rows)], figures, notes, name="comparison"
        )
    files = {"csv": out / "comparison.csv", "md": out / "comparison.md", "html": html_path}
    return {"rows": rows, "notes": notes, "files": files}


def _older(a: Path, b: Path) -> bool:
    try:
        return os.lstat(a).st_mtime_ns < os.lstat(b).st_mtime_ns
    except OSError:
        return False
