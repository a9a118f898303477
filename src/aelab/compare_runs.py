"""The runs a comparison is given (aelab.compare): what each folder is (a run or a seed group), the data it was
trained on, its eval.json (evaluated again when it scored other weights), and its row of comparison.csv.

Run folders are untrusted input: everything is read through runs.read_config / read_json / read_history.
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

from . import runs
from .errors import AelabError, CheckpointError, ConfigError
from .runs import MAX_GROUP_RUNS, seed_folders

# model options that only shape the built-in MLP networks: blank for a run whose encoder and decoder are both
# the user's own modules (--encoder/--decoder), where they shaped nothing
NETWORK_SHAPE_OPTIONS = ("hidden", "latent", "activation", "channels", "layers", "tied")


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


def by_entry(entries: list[dict], values: list) -> list[list]:
    """Per-run-folder values (in the order of the entries' dirs) grouped by what was given: [[a run's], [a
    group's seeds'], ...]."""
    member = [k for k, e in enumerate(entries) for _ in e["dirs"]]  # entry index of each run folder
    return [[v for v, k in zip(values, member) if k == i] for i in range(len(entries))]


# ---------------------------------------------------------------- reading the runs
def _read_eval(run_dir: Path) -> dict:
    path = run_dir / "eval.json"
    result = runs.read_json(path)
    if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
        raise CheckpointError(f"{path}: no 'metrics' object; run aelab evaluate {run_dir} again")
    runs.check_metric_names(result["metrics"], str(path))
    return result


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


def _older(a: Path, b: Path) -> bool:
    try:
        return os.lstat(a).st_mtime_ns < os.lstat(b).st_mtime_ns
    except OSError:
        return False


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
