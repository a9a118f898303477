"""Seed groups in a comparison (aelab.compare): each group's mean and 95% interval per metric, the paired
differences of groups trained with the same seeds, and the tables of comparison.md/.html.

Paired differences: two groups trained with the same seeds share the seed's part of the variation (the data
order, the initial weights when the models match), so B - A is summarised over the seeds as one sample
(aelab.metrics.intervals.paired_difference); its interval is narrower than the two groups' intervals suggest.
"""

from __future__ import annotations

import math

from . import report
from .compare_runs import NETWORK_SHAPE_OPTIONS, _canonical, _scalar, run_columns
from .errors import CheckpointError
from .metrics.convergence import recorded_warnings

# BASELINE_METRICS: numbers that depend on the data (and the code size) only, never on the trained weights: the PCA
# and the probe on raw pixels. Shown once, in their own table, and never paired (their difference between two
# groups is 0 or a difference of data)
from .metrics.intervals import BASELINE_METRICS, metric_range, paired_difference
from .reading import reading

# numbers in a run's loss unit (report.loss_unit): the table names the unit, one row per unit
LOSS_METRICS = ("test_loss", "test_recon")
# a model's own loss terms are compared only between runs whose loss is in the same unit (report.loss_unit);
# test_recon needs no more, the other terms (the objective, a KL, a penalty) need the same model and objective
UNIT_METRICS = ("test_recon", "nll_nats")

BASELINES_CAPTION = (
    "Baselines: the data only (PCA with the code's size, the probe on raw pixels), shown once, never paired"
)


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


def settings_notes(entries: list[dict], configs: list[list[dict]]) -> list[str]:
    """A note for each group whose seeds were trained with different settings (its columns show the first seed's)."""
    notes = []
    for entry, cfgs in zip(entries, configs):
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
    return notes


def group_tables(
    entries: list[dict], configs: list[list[dict]], evals: list[list[dict]], epochs: list[list[int | None]]
) -> tuple[dict, list[tuple[str, list[dict]]], str | None, list[str]]:
    """(result, tables, reading, notes) of the runs and groups given (`entries`, each with its runs' configs, eval.json
    and epochs trained): result is {"table", "groups", "paired"} as compare returns them; tables, the captioned
    tables of comparison.md/.html (the runs and groups, the baselines, the paired differences); reading, the
    one-line reading (table_reading); notes, on groups trained with different settings and on pairs."""
    notes = settings_notes(entries, configs)
    summaries = [group_summary(evs, e["name"]) if e["seeds"] else None for e, evs in zip(entries, evals)]
    table = display_rows(entries, configs, evals, epochs, summaries)
    group_results = {
        e["name"]: {"seeds": e["seeds"], "runs": [d.name for d in e["dirs"]], **summary}
        for e, summary in zip(entries, summaries)
        if summary is not None
    }
    pair_tables, pair_results, pair_notes = paired_tables(entries, evals, configs)
    baselines = baseline_rows(entries, evals)
    tables = [
        ("Runs and test metrics", table),
        *([(BASELINES_CAPTION, baselines)] if baselines else []),
        *pair_tables,
    ]
    result = {"table": table, "groups": group_results, "paired": pair_results}
    return result, tables, table_reading(entries, configs, evals, summaries), notes + pair_notes
