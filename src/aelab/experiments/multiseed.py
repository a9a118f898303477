"""`--seeds N [--jobs J]` for an experiment: run it once per seed, then summarise every number over the seeds.

    OUT/seed-<s>/            the experiment's own complete output for seed s = SEED, ..., SEED+N-1
                             (its results.json, report, runs); seed_settings.json says what it was run with
    OUT/results.json         {"selection_split", "seeds", "splits", "tables": {table: [{label: row, "metrics":
                             {column: {"mean", "std", "ci95", "values", "n_seeds", ...}}}]}, "paired_differences"}
    OUT/report.html / .md    the tables as mean ± std [95% interval], interval plots, the first seed's figures

Each seed repeats the whole experiment, its choices on the validation split included, so the intervals carry
the variation of the selection too. An experiment takes part by writing, in its own results.json,
    "tables": {table name: [row, ...]}   rows of numbers (None where a number does not apply),
    "splits": {...}                      the train / validation / test splits and their sizes,
    "figures": [[caption, path relative to its out folder], ...]
and by declaring ROW_KEY (the column naming a row), PAIRS [(row a, row b, column), ...] (or a function of the
summarised tables returning them) for paired differences over seeds and PLOT_COLUMNS (the columns drawn with their intervals).

Seeds run in `jobs` processes at once, each with this process's torch threads // jobs threads; a seed's numbers
depend on its seed and its thread count only, not on which process ran it or what ran beside it. A killed run resumes: a seed whose results.json is there and
whose seed_settings.json matches is kept, the others are run again (each continues its own checkpoints).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import time
from pathlib import Path
from types import ModuleType

from .. import report, runs
from ..errors import ConfigError
from ..metrics.intervals import format_interval, metric_range, paired_difference, summarize
from ..options import MAX_SEED
from ..progress import PrefixedLines
from ..seeds import INTERVALS_TEXT
from .common import write_partial

MAX_JOBS = 64


bounds_of = metric_range  # one rule for every table: [0, 1] (metric_bounds), counts and times >= 0, or none


def seed_folder(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def _settings_json(settings) -> dict:
    """The settings one seed runs with, minus what may differ between a run and its resume."""
    return {
        k: v
        for k, v in dataclasses.asdict(settings).items()
        if k not in ("out", "no_progress", "jobs", "seeds", "figures")
    }


def _one_seed(module_name: str, values: dict, threads: int | None) -> str:
    """Run one seed (in this process or a worker); returns its out folder."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        # a worker beside others: its progress as lines, each marked with its seed (bars would overwrite each other)
        sys.stdout = PrefixedLines(sys.stdout, f"seed {values['seed']} | ")
        sys.stderr = PrefixedLines(sys.stderr, f"seed {values['seed']} | ")
    module = importlib.import_module(f"aelab.experiments.{module_name}")
    settings = module.Settings(**values)
    module.run_one(settings)
    return settings.out


def _done(folder: Path, wanted: dict) -> bool:
    saved = folder / "seed_settings.json"
    if not ((folder / "results.json").is_file() and saved.is_file()):
        return False
    if runs.read_json(saved) != json.loads(json.dumps(wanted)):
        raise ConfigError(
            f"{folder} was run with other settings (see its seed_settings.json); choose another --out or remove it"
        )
    results = runs.read_json(folder / "results.json")
    return not (isinstance(results, dict) and results.get("partial"))  # a seed stopped between its rows goes on


def run(module: ModuleType, settings) -> Path:
    """Run `module.run_one` for seeds settings.seed .. settings.seed + settings.seeds - 1, then summarise."""
    started = time.perf_counter()
    n, jobs = settings.seeds, settings.jobs
    if not (isinstance(n, int) and 1 <= n <= 1000):
        raise ConfigError(f"--seeds must be an integer in [1, 1000], got {n!r}")
    if not (isinstance(jobs, int) and 1 <= jobs <= MAX_JOBS):
        raise ConfigError(f"--jobs must be an integer in [1, {MAX_JOBS}], got {jobs!r}")
    if settings.seed + n > MAX_SEED:
        raise ConfigError(f"--seed {settings.seed} with --seeds {n} goes past the largest seed 2^63 - 1")
    out = Path(settings.out)
    seeds = list(range(settings.seed, settings.seed + n))
    name = module.__name__.rsplit(".", 1)[-1]
    todo = []
    for seed in seeds:
        folder = seed_folder(out, seed)
        one = dataclasses.replace(settings, seed=seed, out=str(folder), seeds=1, jobs=1)
        if hasattr(one, "figures") and seed != seeds[0]:  # the costly figures (t-SNE maps) for the first seed only
            one = dataclasses.replace(one, figures=False)
        wanted = _settings_json(one)
        if _done(folder, wanted):
            print(f"{folder}: finished already, kept")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        runs.write_json(folder / "seed_settings.json", wanted)
        todo.append(one)
    jobs = min(jobs, max(1, len(todo)))
    finished = [s for s in seeds if s not in {one.seed for one in todo}]

    def seed_done(seed: int) -> None:  # the summary over the seeds finished so far, marked partial (issue 31)
        finished.append(seed)
        left = [s for s in seeds if s not in finished]
        if left:
            done = sorted(finished)
            summary = summarize_seeds(
                module, [runs.read_json(seed_folder(out, s) / "results.json") for s in done], done
            )
            write_partial(out, summary, [f"seed-{s}" for s in done], [f"seed-{s}" for s in left], module.__name__)

    if jobs == 1:
        for one in todo:
            _one_seed(name, dataclasses.asdict(one), None)
            seed_done(one.seed)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        import torch

        # the parent's threads shared out: a seed gives the same numbers in a worker as in a process with as
        # many threads (CPU reductions may group differently with another thread count)
        threads = max(1, torch.get_num_threads() // jobs)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch thread pool forked
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [pool.submit(_one_seed, name, dataclasses.asdict(one), threads) for one in todo]
            for one, future in zip(todo, futures):
                print(f"{future.result()}: done")
                seed_done(one.seed)
    per_seed = [runs.read_json(seed_folder(out, s) / "results.json") for s in seeds]
    summary = summarize_seeds(module, per_seed, seeds)
    summary["wall_time_s"] = time.perf_counter() - started
    summary["settings"] = {k: v for k, v in dataclasses.asdict(settings).items() if k != "out"}
    # the report's first lines (its reading, its warnings): the module's over the seeds, else one seed's own
    own = getattr(module, "lead_over_seeds", None)
    summary["lead"] = own(per_seed, seeds) if own else (per_seed[0].get("lead") or []) if n == 1 else []
    runs.write_json(out / "results.json", summary)
    return write_seed_report(module, out, summary, per_seed[0])


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summarize_seeds(module: ModuleType, per_seed: list[dict], seeds: list[int]) -> dict:
    """The aggregate results.json: every numeric cell of every table summarised over the seeds. Columns in
    module.FIXED_COLUMNS (sizes) must agree across seeds and are kept as one value; columns in
    module.CHOICE_COLUMNS (what each seed chose on validation) are kept as the list of the seeds' values."""
    key = module.ROW_KEY
    fixed_columns = getattr(module, "FIXED_COLUMNS", ())
    choice_columns = getattr(module, "CHOICE_COLUMNS", ())
    order = per_seed[0].get("table_order") or list(per_seed[0]["tables"])
    tables = {}
    for table in order:
        first_rows = per_seed[0]["tables"][table]
        rows = []
        for i, row in enumerate(first_rows):
            label = row[key]
            same = [r["tables"][table][i] for r in per_seed]
            if any(r[key] != label for r in same):
                raise ConfigError(f"table {table!r}: the seeds' rows differ ({label!r})")
            metrics, fixed, chosen = {}, {}, {}
            for column in _columns(module, row):
                values = [r.get(column) for r in same]
                if column == key or all(v is None for v in values):
                    continue
                if column in choice_columns:
                    chosen[column] = values
                elif column in fixed_columns or not all(_number(v) for v in values):
                    if any(v != values[0] for v in values):
                        raise ConfigError(f"table {table!r}, {label}: {column} differs between seeds")
                    fixed[column] = values[0]
                else:
                    metrics[column] = summarize(values, bounded=bounds_of(column))
            rows.append({key: label, "metrics": metrics, "fixed": fixed, "chosen_per_seed": chosen})
        tables[table] = rows
    differences = []
    pairs = getattr(module, "PAIRS", [])
    for a, b, column in pairs(tables) if callable(pairs) else pairs:
        for table, rows in tables.items():
            by_label = {r[key]: r for r in rows}
            if (
                a in by_label
                and b in by_label
                and column in by_label[a]["metrics"]
                and column in by_label[b]["metrics"]
            ):
                bounds = bounds_of(column)
                diff = paired_difference(
                    by_label[a]["metrics"][column]["values"], by_label[b]["metrics"][column]["values"], bounded=bounds
                )
                excludes = None if diff["ci95"] is None else bool(diff["ci95"][0] > 0 or diff["ci95"][1] < 0)
                differences.append(
                    {"a": a, "b": b, "metric": column, "table": table, "difference": diff, "excludes_zero": excludes}
                )
    return {
        "experiment": per_seed[0].get("experiment"),
        "selection_split": per_seed[0].get("selection_split", "validation"),
        "seeds": seeds,
        "n_seeds": len(seeds),
        "per_seed": [f"seed-{s}" for s in seeds],
        "splits": per_seed[0].get("splits"),
        "tables": tables,
        "paired_differences": differences,
        "intervals": INTERVALS_TEXT.replace("accuracies and fractions", "accuracies, AUROC, AP and fractions"),
    }


def _columns(module: ModuleType, row: dict) -> list[str]:
    """The row's columns in the module's order (COLUMNS), then any others in the order found."""
    first = [c for c in getattr(module, "COLUMNS", ()) if c in row]
    return first + [c for c in row if c not in first]


def difference_text(d: dict, digits: int = 4) -> str:
    diff = d["difference"]
    text = f"{d['a']} − {d['b']}, {d['metric']} ({d['table']}): "
    if diff["ci95"] is None:
        return text + f"{diff['mean']:+.{digits}f} (1 seed, no interval)"
    lo, hi = diff["ci95"]
    verdict = (
        f"the interval excludes 0 ({d['a'] if lo > 0 else d['b']} higher)"
        if d["excludes_zero"]
        else "the interval includes 0: no difference shown"
    )
    return text + f"{format_interval(diff, digits)}; {verdict}"


def _digits(summary: dict) -> int:
    scale = max(abs(summary["mean"]), 1e-12)
    return 4 if scale < 1 else 3 if scale < 10 else 2


def write_seed_report(module: ModuleType, out: Path, summary: dict, first: dict) -> Path:
    key, n = module.ROW_KEY, summary["n_seeds"]
    tables, figures = [], []
    for table, rows in summary["tables"].items():
        view = []
        for row in rows:
            line = {key: row[key], **row["fixed"]}
            for column, s in row["metrics"].items():  # one seed: the plain number
                line[column] = format_interval(s, _digits(s)) if n > 1 else f"{s['mean']:.{_digits(s)}f}"
            for column, values in row["chosen_per_seed"].items():
                line[f"{column}, per seed"] = ", ".join(
                    "—" if v is None else f"{v:g}" if _number(v) else str(v) for v in values
                )
            view.append(line)
        tables.append((f"{table} (mean ± std [95% interval] over {n} seeds)" if n > 1 else table, view))
        for column in getattr(module, "PLOT_COLUMNS", []) if n > 1 else []:  # one seed: no interval to draw
            points = {r[key]: r["metrics"][column] for r in rows if column in r["metrics"]}
            if points:
                slug = "".join(ch if ch.isalnum() else "-" for ch in f"{table}-{column}".lower())
                figures.append(
                    (
                        f"{table}: {column}, mean and 95% interval over {n} seed(s) (dots: the seeds)",
                        report.plot_intervals(points, column, out / f"intervals-{slug}.png"),
                    )
                )
    first_folder = seed_folder(out, summary["seeds"][0])
    for caption, path in first.get("figures", []):
        figures.append((f"Seed {summary['seeds'][0]}: {caption}", first_folder / path))
    notes = [
        f"Seeds {', '.join(map(str, summary['seeds']))}: each seed runs the whole experiment again (its folder "
        f"seed-<s>/ holds its own report), choices on the validation split included; the test split chose nothing.",
        *(first.get("notes_for_summary") or []),
        *(difference_text(d) for d in summary["paired_differences"]),
        summary["intervals"],
        f"Wall time {summary['wall_time_s']:.0f} s.",
    ]
    if n == 1:  # the numbers first; nothing about intervals there are none of
        notes = [
            f"One seed ({summary['seeds'][0]}): plain numbers, no intervals (run with --seeds N for intervals).",
            *(first.get("notes_for_summary") or []),
            f"Wall time {summary['wall_time_s']:.0f} s.",
        ]
    lead = summary.get("lead") or []
    return report.write_report(
        out, first.get("title", module.__name__), tables, figures, notes, numbers_first=n == 1, lead=lead
    )
