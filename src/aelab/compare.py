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

import csv
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from . import report, runs
from .errors import AelabError, CheckpointError, ConfigError
from .metrics.convergence import recorded_warnings
from .metrics.intervals import BASELINE_METRICS, metric_range, paired_difference
from .reading import plural, reading
from .runs import MAX_GROUP_RUNS, seed_folders  # noqa: F401 (compare.seed_folders)

N_IMAGES = 10  # test images in the reconstruction mosaic: the first of each class
# numbers in a run's loss unit (report.loss_unit): the table names the unit, one row per unit
LOSS_METRICS = ("test_loss", "test_recon")
# numbers that depend on the data (and the code size) only, never on the trained weights: the PCA and the probe on
# raw pixels. Shown once, in their own table, and never paired (their difference between two groups is 0 or a
# difference of data)
# model options that only shape the built-in MLP networks: blank for a run whose encoder and decoder are both
# the user's own modules (--encoder/--decoder), where they shaped nothing
NETWORK_SHAPE_OPTIONS = ("hidden", "latent", "activation", "channels", "layers", "tied")
# a model's own loss terms are compared only between runs whose loss is in the same unit (report.loss_unit);
# test_recon needs no more, the other terms (the objective, a KL, a penalty) need the same model and objective
UNIT_METRICS = ("test_recon", "nll_nats")


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


# ---------------------------------------------------------------- what was given: runs and seed groups
RUN_FOLDER_FILES = ("config.json", "model.json", "checkpoint.safetensors", "model.safetensors", "seeds.json")


def refuse_run_folder_as_out(out: Path) -> None:
    """compare writes its files into `out`: never into a run folder or a seed group (a run being trained there would
    get comparison files beside its checkpoint), nor a folder another aelab process holds."""
    found = [name for name in RUN_FOLDER_FILES if (out / name).exists() or (out / name).is_symlink()]
    group = out.is_dir() and not found and bool(seed_folders(out))
    if found or group:
        what = found[0] if found else "seed-<s>/ run folders"
        raise ConfigError(f"--out {out} is a run folder or a seed group (it holds {what}); choose another folder")
    if out.is_dir():
        holder = runs.lock_holder(out)
        if holder is not None and holder != os.getpid():
            raise ConfigError(f"--out {out} is in use by another aelab process (pid {holder}); choose another folder")


def missing_seeds(folder: Path, seeds: list[int]) -> list[int]:
    """The seeds a group should hold but has no run folder for: those its seeds.json lists (when it can be read),
    and the gaps between its first and last seed (train --seeds trains consecutive seeds)."""
    expected = set(range(seeds[0], seeds[-1] + 1)) if seeds and seeds[-1] - seeds[0] < MAX_GROUP_RUNS else set()
    try:
        listed = runs.read_json(folder / "seeds.json").get("seeds")
    except (CheckpointError, AttributeError):
        listed = None
    if isinstance(listed, list) and len(listed) <= MAX_GROUP_RUNS:
        expected |= {s for s in listed if isinstance(s, int) and not isinstance(s, bool)}
    return sorted(expected - set(seeds))


def _members(dirs: list[Path], names: list[str]) -> list[dict]:
    """One entry per folder given: {"name", "dirs", "seeds", "missing"} (seeds None for a single run; missing: the
    seeds a group lacks a run folder for)."""
    entries = []
    for folder, name in zip(dirs, names):
        found = seed_folders(folder)
        if found:
            seeds = [s for s, _ in found]
            entries.append(
                {"name": name, "dirs": [d for _, d in found], "seeds": seeds, "missing": missing_seeds(folder, seeds)}
            )
        else:
            if not (folder / "config.json").exists():  # neither a run nor a seed group
                raise CheckpointError(
                    f"{folder / 'config.json'}: missing ({name} is neither a run folder nor a --seeds folder "
                    "with seed-<s>/ run folders)"
                )
            entries.append({"name": name, "dirs": [folder], "seeds": None})
    return entries


# ---------------------------------------------------------------- reading the runs
def _read_eval(run_dir: Path) -> dict:
    path = run_dir / "eval.json"
    result = runs.read_json(path)
    if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
        raise CheckpointError(f"{path}: no 'metrics' object; run aelab evaluate {run_dir} again")
    runs.check_metric_names(result["metrics"], str(path))
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


def run_columns(name: str, config: dict, result: dict, n_epochs: int | None) -> dict:
    """A run's own columns: run, model, data, sizes, epochs, the model options (opt.*)."""
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
    unused = NETWORK_SHAPE_OPTIONS if user_networks(config) else ()
    if config["model_options"].get("likelihood", "gaussian") != "gaussian":
        unused = (*unused, "obs_std")  # the Gaussian likelihood's std: nothing in a Bernoulli (bce) VAE uses it
    for key, value in config["model_options"].items():
        if key not in unused:  # left blank: they did not shape this run's network
            _flatten(f"opt.{key}", value, row)
    return row


def user_networks(config: dict) -> bool:
    """Whether both of the run's networks are the user's own modules (model_options records each as its import
    spec, or as custom:Class for a module given from Python): the MLP options then shaped nothing."""
    options = config.get("model_options") if isinstance(config.get("model_options"), dict) else {}
    return all(isinstance(options.get(role), (dict, str)) for role in ("encoder", "decoder"))


def table_rows(
    names: list[str],
    configs: list[dict],
    evals: list[dict],
    epochs: list[int | None],
    extra: list[dict] | None = None,
) -> list[dict]:
    """One row per run: run, model, data, sizes, the model options (opt.*), `extra` (more columns of the run's
    own, e.g. its group and seed), then every metric (union over runs, None where a run has none; named
    metric.NAME where a run column has its name). `epochs` are the epochs trained (metrics.jsonl), None:
    config.json's."""
    rows = [run_columns(*args) for args in zip(names, configs, evals, epochs)]
    for row, more in zip(rows, extra or []):
        row.update(more)
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
    writer.writerow([_csv_cell(k) for k in rows[0]])  # column names come from eval.json too
    for row in rows:
        writer.writerow([_csv_cell(v) for v in row.values()])
    return buf.getvalue()


# ---------------------------------------------------------------- reconstructions
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


# ---------------------------------------------------------------- groups: means, intervals, paired differences
def _cell(summary: dict) -> str:
    """A group's metric in one cell: 'mean [lo, hi]' (seeds' decimals), the plain number for one seed."""
    from .seeds import _decimals

    d = _decimals(summary)
    if summary["ci95"] is None:
        return f"{summary['mean']:.{d}f}"
    lo, hi = summary["ci95"]
    return f"{summary['mean']:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def group_summary(evals: list[dict], name: str = "") -> dict:
    """{"metrics": {name: summarize(values over the seeds)}, "choices": {name: [value per seed]}} of one group."""
    from .seeds import chosen_settings, summarize_metrics

    per_seed = [e["metrics"] for e in evals]
    try:
        return {"metrics": summarize_metrics(per_seed), "choices": chosen_settings(per_seed)}
    except CheckpointError as e:
        raise CheckpointError(f"{name}: {e}" if name else str(e)) from None


_ARCHITECTURE_OPTIONS = ("input_shape", "encoder", "decoder", *NETWORK_SHAPE_OPTIONS)


def objective(config: dict) -> str:
    """What a run's own loss terms mean: its model, its loss unit and the options that weigh its objective (beta,
    lam, weight_decay, ...; the networks' shapes left out)."""
    options = config.get("model_options") if isinstance(config.get("model_options"), dict) else {}
    weighed = {k: v for k, v in options.items() if k not in _ARCHITECTURE_OPTIONS}
    return _canonical([config.get("model"), report.loss_unit(config), weighed])


def incomparable(key: str, config_a: dict | None, config_b: dict | None) -> str | None:
    """Why metric `key` of two runs has no meaningful difference, or None when it has: a baseline (the data only),
    a loss in two units, or an objective term of two objectives."""
    if key in BASELINE_METRICS:
        return "a baseline: it depends on the data only"
    if config_a is None or config_b is None or not (key.startswith("test_") or key in UNIT_METRICS):
        return None
    unit_a, unit_b = report.loss_unit(config_a), report.loss_unit(config_b)
    if unit_a != unit_b:
        return f"{unit_a} against {unit_b}"
    if key not in UNIT_METRICS and objective(config_a) != objective(config_b):
        return "each model's own objective (other models or weights of its terms)"
    return None


def paired_differences(
    evals_a: list[dict], evals_b: list[dict], config_a: dict | None = None, config_b: dict | None = None
) -> dict:
    """B - A per metric over the seeds both groups share (same seeds, same order): {name: summary}. Metrics
    that either side lacks, or that are not numbers at every seed, are left out; so are the baselines and, given
    the two groups' configs, the loss terms that mean different things in the two (incomparable)."""
    from .seeds import CHOSEN_SETTINGS, SETTINGS_NOT_METRICS

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    out = {}
    for key in evals_a[0]["metrics"]:
        if key in SETTINGS_NOT_METRICS + CHOSEN_SETTINGS or incomparable(key, config_a, config_b):
            continue
        va = [e["metrics"].get(key) for e in evals_a]
        vb = [e["metrics"].get(key) for e in evals_b]
        if all(map(number, va + vb)):
            try:
                out[key] = paired_difference(vb, va, bounded=metric_range(key))
            except ValueError as e:  # an accuracy outside [0, 1]: an edited eval.json
                raise CheckpointError(f"metric {key!r} of the seeds' eval.json: {e}") from None
    return out


def display_rows(
    entries: list[dict], configs: list[list[dict]], evals: list[list[dict]], epochs, summaries: list[dict | None]
) -> list[dict]:
    """The table of comparison.md/.html: one row per run or group (a transposed table: one column each), the
    columns every run has a value for, the data hash cut to 12 characters (the CSV has it whole), losses named
    with their unit, a group's numbers as mean [95% interval] (its `summaries` entry, group_summary's) and its
    chosen settings listed per seed. The baselines (BASELINE_METRICS) are left to baseline_rows."""
    from .seeds import CHOSEN_SETTINGS, format_choices

    rows = []
    bases = [
        run_columns(e["name"], cfgs[0], evs[0], eps[0]) for e, cfgs, evs, eps in zip(entries, configs, evals, epochs)
    ]
    own = {"run", "seeds"} | {k for base in bases for k in base}  # every run's own columns: never a metric's
    for entry, cfgs, evs, eps, base, summary in zip(entries, configs, evals, epochs, bases, summaries):
        config = cfgs[0]
        row = {"run": entry["name"], "seeds": ", ".join(map(str, entry["seeds"])) if entry["seeds"] else None}
        row.update({k: _scalar(v) for k, v in base.items() if k != "run"})
        if row.get("data_sha256"):
            row["data_sha256"] = row["data_sha256"][:12]
        if entry["seeds"]:
            epoch_set = sorted({e if e is not None else c["epochs"] for e, c in zip(eps, cfgs)})
            row["epochs"] = ", ".join(map(str, epoch_set))
        unit = report.loss_unit(config)
        if entry["seeds"] is None:
            metrics = {k: v for k, v in evs[0]["metrics"].items()}
        else:
            metrics = {k: _cell(v) for k, v in summary["metrics"].items()}
            metrics.update({k: format_choices(v) for k, v in summary["choices"].items()})
            for key, value in evs[0]["metrics"].items():  # settings and words (a method's name): when all agree
                if key not in metrics and all(_canonical(e["metrics"].get(key)) == _canonical(value) for e in evs):
                    metrics[key] = value
        for key, value in metrics.items():
            if key in BASELINE_METRICS:  # the same for every run on these data: their own table, once
                continue
            label = f"{key} [{unit}]" if key in LOSS_METRICS else key
            if key in CHOSEN_SETTINGS:
                label += " (chosen on validation)"
            row[label if label not in own else f"metric.{label}"] = _scalar(value)  # never overwrite a run column
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    columns = [c for c in columns if any(r.get(c) not in (None, "") for r in rows)]  # never a row blank for all
    return [{c: r.get(c) for c in columns} for r in rows]


def baseline_rows(entries: list[dict], evals: list[list[dict]]) -> list[dict]:
    """The baselines of the table, each value once: {"baseline", "value", "runs"} per distinct value (`runs`:
    "every run", or the runs and groups that share it: other data, another train split or another code size give
    another PCA). pca_sse is named by its code size (PCA-k)."""
    found: dict[tuple[str, str], list[str]] = {}
    for entry, evs in zip(entries, evals):
        for result in evs:  # every seed: a baseline is the same at each (the data only), so one row
            metrics = result["metrics"]
            for key in BASELINE_METRICS:
                value = metrics.get(key)
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                label = key
                if key == "pca_sse" and isinstance(metrics.get("code_dim"), int):
                    label = f"pca_sse (PCA-{metrics['code_dim']})"
                elif key == "raw_probe_C":
                    label += " (chosen on validation)"
                names = found.setdefault((label, report._fmt(value)), [])
                if entry["name"] not in names:
                    names.append(entry["name"])
    every = len(entries)
    order = {k: i for i, k in enumerate(BASELINE_METRICS)}
    rows = [
        {"baseline": label, "value": value, "runs": "every run" if len(names) == every else ", ".join(names)}
        for (label, value), names in found.items()
    ]
    return sorted(rows, key=lambda r: order[r["baseline"].split(" ")[0]])


def paired_tables(
    entries: list[dict], evals: list[list[dict]], configs: list[list[dict]] | None = None
) -> tuple[list[tuple[str, list[dict]]], list, list]:
    """(tables, results, notes): B - A for every two groups with the same seeds (at least two); with the groups'
    configs, only the metrics that mean the same in both (a note names those left out and why)."""
    groups = [i for i, e in enumerate(entries) if e["seeds"]]
    tables, results, notes = [], [], []
    for x, i in enumerate(groups):
        for j in groups[x + 1 :]:
            a, b = entries[i], entries[j]
            if a["seeds"] != b["seeds"]:
                notes.append(
                    f"{a['name']} and {b['name']} were trained with different seeds ({', '.join(map(str, a['seeds']))} "
                    f"against {', '.join(map(str, b['seeds']))}): no paired differences; compare their intervals"
                )
                continue
            if len(a["seeds"]) < 2:
                notes.append(f"{a['name']} and {b['name']}: one seed each, so no paired differences")
                continue
            config_a, config_b = (configs[i][0], configs[j][0]) if configs else (None, None)
            try:
                diffs = paired_differences(evals[i], evals[j], config_a, config_b)
            except CheckpointError as e:
                raise CheckpointError(f"{b['name']} − {a['name']}: {e}") from None
            if configs:
                why = {}
                for key in evals[i][0]["metrics"]:
                    reason = incomparable(key, config_a, config_b)
                    if reason and key in evals[j][0]["metrics"]:
                        why.setdefault(reason, []).append(key)
                left_out = "; ".join(f"{', '.join(keys)} ({reason})" for reason, keys in why.items())
                if left_out:
                    notes.append(f"{b['name']} − {a['name']}: not paired: {left_out}")
            results.append({"a": a["name"], "b": b["name"], "seeds": a["seeds"], "metrics": diffs})
            rows = [
                {"metric": k, f"{b['name']} − {a['name']}": _cell(v), "n": v["n_seeds"],
                 "0 in the interval": "yes" if v["ci95"][0] <= 0 <= v["ci95"][1] else "no"}
                for k, v in diffs.items()
            ]  # fmt: skip
            caption = f"Paired differences over seeds {', '.join(map(str, a['seeds']))}: {b['name']} − {a['name']}"
            tables.append((caption, rows))
    return tables, results, notes


def _band(curves: list[list[dict]]) -> dict[str, list[tuple[int, float, float]]]:
    """{key: [(epoch, lowest, highest) over the seeds]} at the epochs every seed has: a group's spread."""
    by_epoch = [{h["epoch"]: h for h in c} for c in curves]
    shared = sorted(set.intersection(*(set(b) for b in by_epoch))) if by_epoch else []
    out: dict[str, list[tuple[int, float, float]]] = {}
    for key in ("train_loss", "val_loss", "test_loss"):
        points = []
        for epoch in shared:
            values = [b[epoch].get(key) for b in by_epoch]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                points.append((epoch, min(values), max(values)))
        if points:
            out[key] = points
    return out


BASELINES_CAPTION = (
    "Baselines: the data only (PCA with the code's size, the probe on raw pixels), shown once, never paired"
)


def table_reading(entries: list[dict], configs: list[list[dict]], evals: list[list[dict]], summaries) -> str | None:
    """The comparison's one-line reading (aelab.reading): each run's numbers, a group's means over its seeds."""
    readable = []
    for entry, cfgs, evs, summary in zip(entries, configs, evals, summaries):
        metrics = dict(evs[0]["metrics"])
        if summary is not None:  # a group: the means over its seeds
            metrics.update({k: v["mean"] for k, v in summary["metrics"].items()})
        warnings = [w for result in evs for w in recorded_warnings(result)]
        readable.append({"name": entry["name"], "metrics": metrics, "warnings": warnings,
                         "binary_code": cfgs[0].get("model") == "binary"})  # fmt: skip
    text = reading(readable)
    groups = [e for e in entries if e["seeds"]]
    if text and groups:
        text += " A group's numbers are the means over its seeds."
    return text


def _mean_curve(curves: list[list[dict]]) -> list[dict]:
    """The mean over seeds of each loss at the epochs every seed has: a group's curve."""
    if not curves or not all(curves):
        return []
    by_epoch = [{h["epoch"]: h for h in c} for c in curves]
    shared = sorted(set.intersection(*(set(b) for b in by_epoch)))
    out = []
    for epoch in shared:
        point = {"epoch": epoch}
        for key in ("train_loss", "val_loss", "test_loss"):
            values = [b[epoch].get(key) for b in by_epoch]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                point[key] = sum(values) / len(values)
        out.append(point)
    return out


# ---------------------------------------------------------------- the comparison
def _current_eval(run_dir: Path, name: str, iwae_k: int, data_dir, notes: list[str], trust_code=False) -> dict:
    """The run's eval.json when it scored the weights the run holds now; else the run evaluated again (and a
    note). An eval.json that scored other weights is never shown as current."""
    from .evaluate import evaluate

    if not ((run_dir / "eval.json").exists() or (run_dir / "eval.json").is_symlink()):
        notes.append(f"{name}: evaluated now (it had no eval.json)")
        print(f"{name}: no eval.json: evaluating it first", file=sys.stderr)
        return evaluate(run_dir, iwae_k=iwae_k, write=True, data_dir=data_dir, trust_code=trust_code, progress=True)
    saved = _read_eval(run_dir)
    scored = saved.get("scored")
    if scored is None:  # written before eval.json recorded its weights: used, with what can be said
        if _older(run_dir / "eval.json", run_dir / "model.safetensors"):
            notes.append(f"{name}: eval.json is older than model.safetensors; run aelab evaluate {name} again")
        return saved
    if scored == runs.weights_record(run_dir):
        return saved
    try:  # it scored other weights (a resume trained on since)
        print(f"{name}: eval.json scored other weights: evaluating it again first", file=sys.stderr)
        result = evaluate(run_dir, iwae_k=iwae_k, write=True, data_dir=data_dir, trust_code=trust_code, progress=True)
    except AelabError as e:
        raise ConfigError(
            f"{name}: eval.json scored other weights than the run holds now, and it cannot be evaluated "
            f"again here ({e}); run aelab evaluate {name} with what it needs, then compare"
        ) from None
    epoch = scored.get("epoch") if isinstance(scored, dict) else None
    notes.append(
        f"{name}: evaluated again (its eval.json scored the weights of epoch {epoch}; the run now holds "
        f"those of epoch {result['scored']['epoch']})"
    )
    return result


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
    if not str(out).strip():
        raise ConfigError("--out must name a folder")
    from .data.datasets import check_data_dir

    check_data_dir(data_dir)
    if not run_dirs:
        raise ConfigError("compare needs at least one run folder")
    out = Path(out)
    given = [Path(r) for r in run_dirs]
    given_names = [str(r) for r in run_dirs]
    for folder in given:
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise CheckpointError(f"run folder {folder} {what}")
    entries = _members(given, given_names)
    # every run folder, a group's seeds as name/seed-<s>
    dirs = [d for e in entries for d in e["dirs"]]
    names = [e["name"] if e["seeds"] is None else f"{e['name']}/{d.name}" for e in entries for d in e["dirs"]]
    member = [k for k, e in enumerate(entries) for _ in e["dirs"]]  # entry index of each run folder

    def by_entry(values: list) -> list[list]:
        """Per-run-folder values grouped by what was given: [[a run's], [a group's seeds'], ...]."""
        return [[v for v, k in zip(values, member) if k == i] for i in range(len(entries))]

    seen: dict[Path, str] = {}
    for run_dir, name in zip(dirs, names):
        real = run_dir.resolve()
        if real in seen:
            raise ConfigError(f"run {name} is given twice (also as {seen[real]}); name each run once")
        seen[real] = name
    if out.resolve() in seen or out.resolve() in {g.resolve() for g in given}:
        raise ConfigError(f"--out {out} is one of the runs compared; choose another folder")
    refuse_run_folder_as_out(out)

    configs = [runs.read_config(d) for d in dirs]
    for entry, cfgs in zip(entries, by_entry(configs)):  # a group's seed is its folder's name: the run must agree
        for seed, run_dir, config in zip(entry["seeds"] or [], entry["dirs"], cfgs):
            recorded = config["seed"]
            if recorded != seed:
                raise CheckpointError(f"{run_dir}: the folder says seed {seed}, its config.json seed {recorded}")
    groups = data_groups(configs)
    if len(groups) > 1 and not allow_different_data:
        which = "; ".join(", ".join(names[i] for i in g) + ": " + data_label(configs[g[0]]) for g in groups)
        raise ConfigError(f"the runs use different data ({which}); pass --allow-different-data to compare them anyway")
    histories = [runs.read_history(d) for d in dirs]

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
    epochs = [_trained_epochs(h) for h in histories]
    for name, config, n in zip(names, configs, epochs):
        if n is not None and n < config["epochs"]:
            notes.append(f"{name}: trained {n} of its {config['epochs']} epochs")
    extra = [{"group": entries[k]["name"] if entries[k]["seeds"] else None, "seed": config["seed"]}
             for k, config in zip(member, configs)]  # fmt: skip
    rows = table_rows(names, configs, evals, epochs, extra)  # the CSV: a group's runs with their group and seed
    entry_configs, entry_evals, entry_epochs = by_entry(configs), by_entry(evals), by_entry(epochs)
    for entry, cfgs in zip(entries, entry_configs):
        if entry["seeds"]:
            differ = sorted(
                {k for c in cfgs for k in ("model", "model_options", "epochs", "lr", "batch_size")
                 if _canonical(c.get(k)) != _canonical(cfgs[0].get(k))}
            )  # fmt: skip
            if differ:
                notes.append(
                    f"{entry['name']}: its seeds were trained with different settings ({', '.join(differ)}); "
                    "the group's columns show the first seed's"
                )
    summaries = [group_summary(evs, e["name"]) if e["seeds"] else None for e, evs in zip(entries, entry_evals)]
    table = display_rows(entries, entry_configs, entry_evals, entry_epochs, summaries)
    group_results = {
        e["name"]: {"seeds": e["seeds"], "runs": [d.name for d in e["dirs"]], **summary}
        for e, summary in zip(entries, summaries)
        if summary is not None
    }
    pair_tables, pair_results, pair_notes = paired_tables(entries, entry_evals, entry_configs)
    notes += pair_notes
    baselines = baseline_rows(entries, entry_evals)
    lead = [line for line in [table_reading(entries, entry_configs, entry_evals, summaries)] if line]
    lead += warning_notes  # "RUN: warning: ...", as printed

    # everything read and computed before `out` is touched: bad input leaves nothing behind
    shown = [(e["dirs"][0], e["name"] if e["seeds"] is None else f"{e['name']} (seed {e['seeds'][0]})")
             for e in entries]  # fmt: skip
    shown_configs = [c[0] for c in entry_configs]
    mosaics = []
    for group in data_groups(shown_configs):
        images, labels, group_notes = _reconstructions(
            [shown[i][0] for i in group], [shown[i][1] for i in group], shown_configs[group[0]], data_dir, trust_code
        )
        notes += group_notes
        if len(images) > 1:
            mosaics.append((group, images, labels))
    curves, units, bands = {}, {}, {}
    for entry, cfgs, entry_histories in zip(entries, entry_configs, by_entry(histories)):
        member_curves = [_curve(h) for h in entry_histories]
        label = (
            entry["name"]
            if entry["seeds"] is None
            else f"{entry['name']} (mean of {plural(len(entry['seeds']), 'seed')})"
        )
        curve = member_curves[0] if entry["seeds"] is None else _mean_curve(member_curves)
        if curve:
            curves[label], units[label] = curve, report.loss_unit(cfgs[0])
            if entry["seeds"] and len(member_curves) > 1:
                bands[label] = _band(member_curves)

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
        *(
            [
                "A seed group's cell is the mean over its seeds and, in brackets, the 95% interval of that mean "
                "(Student t; see comparison.json for each method); a setting chosen on the validation split is "
                "listed with how often each value was chosen."
            ]
            if group_results
            else []
        ),  # fmt: skip
        *notes,
    ]

    with runs.RunLock(out):
        runs.remove_stale_temp_files(out)
        fig_dir = runs.subfolder(out, "figures")
        runs.remove_stale_temp_files(fig_dir)
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
        for k, (group, images, labels) in enumerate(mosaics):
            path = report.plot_image_rows(images, labels, fig_dir / f"reconstructions-{k + 1}.png")
            data = data_label(shown_configs[group[0]])
            figures.append((f"The same test images of {data} (top row) reconstructed by each run", path))
        runs.atomic_write_text(out / "comparison.csv", csv_text(rows))
        runs.write_json(
            out / "comparison.json",
            {"rows": rows, "groups": group_results, "paired": pair_results, "notes": notes},
        )
        html_path = report.write_report(
            out,
            "aelab comparison",
            [
                ("Runs and test metrics", table),
                *([(BASELINES_CAPTION, baselines)] if baselines else []),
                *pair_tables,
            ],
            figures,
            [n for n in notes if n not in warning_notes],  # those are at the top (lead)
            name="comparison",
            numbers_first=True,
            lead=lead,
        )
    files = {"csv": out / "comparison.csv", "json": out / "comparison.json", "md": out / "comparison.md",
             "html": html_path}  # fmt: skip
    return {"rows": rows, "table": table, "groups": group_results, "paired": pair_results, "notes": notes,
            "files": files}  # fmt: skip


def _older(a: Path, b: Path) -> bool:
    try:
        return os.lstat(a).st_mtime_ns < os.lstat(b).st_mtime_ns
    except OSError:
        return False
