"""One configuration, several seeds (`aelab train --seeds N`): how much of a number is the seed.

    OUT/seed-<s>/    a complete run folder for each seed s = seed, seed+1, ..., seed+N-1 (trained, evaluated)
    OUT/seeds.json   {"runs", "seeds", "metrics": {name: aelab.metrics.intervals.summarize(values over seeds)},
                     "choices": {name: [value per seed]}, "note", "intervals", "config", "data_sha256"}
    OUT/seeds.md     metric | mean ± std | 95% interval | n; then the settings chosen per seed
    OUT/seeds.html   the same, for a browser

A setting that evaluate chooses on the validation split (the probe's C) is a choice, not a measurement: its
mean over seeds means nothing (the mean of C = 0.1, 1, 10 is no C anyone chose), so it is listed per seed.

The seeds change everything a seed decides (initial weights, batch order, the models' own noise); the data and
its split stay the same. No setting is chosen among the runs, so the intervals are not made optimistic by a
selection on the test split.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch.nn as nn

from . import data as datamod
from . import runs
from .errors import CheckpointError, ConfigError
from .evaluate import evaluate
from .metrics.intervals import BASELINE_METRICS, BOOTSTRAP_MIN_N, BOOTSTRAP_RESAMPLES, decimals, metric_range, summarize
from .options import MAX_SEED
from .train import TrainConfig, dist_info, train

MAX_SEEDS = 1000
# numbers eval.json records that the configuration fixes, the same for every seed: not summarised
SETTINGS_NOT_METRICS = ("code_dim", "iwae_k", "spectrum_points", "bits_per_image")
# settings evaluate chooses on the validation split, per seed: listed, never averaged
CHOSEN_SETTINGS = ("probe_C", "raw_probe_C")
INTERVALS_TEXT = (
    "95% intervals of the mean over seeds: Student t, mean ± t_{0.975, n-1} · std / √n (clipped to [0, 1] for "
    f"accuracies and fractions); a percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples, seed 0) instead for "
    f"accuracies and fractions with n ≥ {BOOTSTRAP_MIN_N}; none for a single seed. Counts, times and squared errors: "
    "clipped at 0. std is the sample std (ddof 1)."
)


def run_folder(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def first_run_config(out: str | Path) -> Path | None:
    """config.json of the lowest-seed run folder in OUT: what `--resume --seeds N` takes its settings from.
    A killed multi-seed run stops at its last seed, so the lowest seed is the first one (its --seed)."""
    found = []
    for path in Path(out).glob("seed-*/config.json"):
        number = path.parent.name.removeprefix("seed-")
        if number.isascii() and number.isdigit():
            found.append((int(number), path))
    return min(found)[1] if found else None


def _finished(run: Path, epochs: int) -> bool:
    """Trained to `epochs` and evaluated since: model.safetensors and eval.json present, eval.json written after
    the weights (a kill between the last epoch and the evaluation leaves an older eval.json), the last epoch
    in metrics.jsonl = epochs."""
    weights, evaluation = run / "model.safetensors", run / "eval.json"
    if not (weights.is_file() and evaluation.is_file()):
        return False
    if evaluation.stat().st_mtime_ns < weights.stat().st_mtime_ns:
        return False
    history = runs.read_history(run)
    return bool(history) and history[-1]["epoch"] == epochs


def _check_same_settings(run: Path, cfg: TrainConfig, epochs: bool = True) -> None:
    """Refuse a run folder trained with other settings than this command asks for (a finished run is kept as
    it is; one to be continued may go on to more epochs: epochs=False)."""
    saved, wanted = runs.read_config(run), cfg.to_json()
    keys = ("model", "dataset", "dataset_options", "train_limit", "batch_size", "lr", "optimizer", "seed")
    keys += ("epochs",) if epochs else ()
    diff = [k for k in keys if saved.get(k) != wanted[k]]
    saved_options = saved.get("model_options") if isinstance(saved.get("model_options"), dict) else {}
    diff += [k for k, v in wanted["model_options"].items() if saved_options.get(k) != v]
    if diff:
        raise ConfigError(f"--resume with different settings ({', '.join(diff)}) than {run}/config.json")


def _read_metrics(run: Path) -> tuple[dict, str | None]:
    """(metrics, data sha256) of a run's eval.json (schema-checked: the file is untrusted)."""
    result = runs.read_json(run / "eval.json")
    if not (isinstance(result, dict) and isinstance(result.get("metrics"), dict)):
        raise CheckpointError(f"{run}/eval.json: no 'metrics' object")
    data = result.get("data") if isinstance(result.get("data"), dict) else {}
    return result["metrics"], data.get("sha256")


def summarize_metrics(per_seed: list[dict]) -> dict[str, dict]:
    """summarize() of every number that all runs report (booleans, strings and fixed settings left out). A NaN,
    an infinity, or an accuracy outside [0, 1] (a diverged seed, an edited eval.json): CheckpointError."""
    names = [
        k
        for k in per_seed[0]
        if k not in SETTINGS_NOT_METRICS + CHOSEN_SETTINGS
        and all(isinstance(m.get(k), (int, float)) and not isinstance(m.get(k), bool) for m in per_seed)
    ]
    out = {}
    for k in names:
        try:
            out[k] = summarize([m[k] for m in per_seed], bounded=metric_range(k))
        except ValueError as e:
            raise CheckpointError(f"metric {k!r} of the seeds' eval.json: {e}") from None
    return out


def chosen_settings(per_seed: list[dict]) -> dict[str, list]:
    """The settings chosen on validation data, one value per seed in seed order (None where a run has none)."""
    return {k: [m.get(k) for m in per_seed] for k in CHOSEN_SETTINGS if any(k in m for m in per_seed)}


def choice_text(value) -> str:
    """One chosen setting as text: numbers as %g, None as '—', anything else (eval.json is untrusted) as its
    JSON, at most 40 characters."""
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return json.dumps(value, sort_keys=True, default=str)[:40]


def format_choices(values: list) -> str:
    """'0.1 (×2), 1 (×1)': each value chosen, how often, most often first (ties: the smaller value first)."""
    counts: dict[str, int] = {}
    numbers: dict[str, float] = {}
    for v in values:
        text = choice_text(v)
        counts[text] = counts.get(text, 0) + 1
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            numbers[text] = v

    def order(text):
        return (-counts[text], (0, numbers[text], "") if text in numbers else (1, 0, text))

    return ", ".join(f"{text} (×{counts[text]})" for text in sorted(counts, key=order))


def train_seeds(
    cfg: TrainConfig,
    n_seeds: int,
    resume: bool = False,
    progress: bool = True,
    epoch_lines: bool | None = None,
    log=print,
) -> Path:
    """Train and evaluate cfg once per seed s = cfg.seed, ..., cfg.seed + n_seeds - 1 into OUT/seed-<s>/, then
    write OUT/seeds.json and OUT/seeds.md (mean, sample std and 95% interval of every metric over the seeds).

    With resume=True, finished runs (trained to cfg.epochs and evaluated) are kept untouched, a partly trained
    one continues from its checkpoint, the missing ones are started. OUT's lock is held throughout."""
    if not (isinstance(n_seeds, int) and not isinstance(n_seeds, bool) and 1 <= n_seeds <= MAX_SEEDS):
        raise ConfigError(f"--seeds must be an integer in [1, {MAX_SEEDS}], got {n_seeds!r}")
    cfg.validate()
    if cfg.seed + n_seeds > MAX_SEED:
        raise ConfigError(f"--seed {cfg.seed} with --seeds {n_seeds} goes past the largest seed 2^63 - 1")
    if dist_info()[1] > 1:
        raise ConfigError("--seeds runs its seeds one after another in one process; under torchrun train each --seed")
    if any(isinstance(v, nn.Module) for v in cfg.model_options.values()):
        # one module object would carry its trained weights from one seed into the next
        raise ConfigError("--seeds with encoder/decoder modules: build fresh modules and call train() for each seed")
    out = Path(cfg.out)
    if (out / "config.json").exists() or (out / "checkpoint.safetensors").exists():
        raise ConfigError(f"{out} holds a single run; choose another --out for --seeds")
    seeds = list(range(cfg.seed, cfg.seed + n_seeds))
    data = cfg.dataset if isinstance(cfg.dataset, datamod.Data) else None
    with runs.RunLock(out):  # a second `--seeds` on the same OUT would fight over the same run folders
        if resume:  # every seed folder checked before any is trained: a refusal leaves them all as they were
            for seed in seeds:
                run = run_folder(out, seed)
                if (run / "config.json").exists():
                    run_cfg = dataclasses.replace(cfg, seed=seed, out=str(run))
                    _check_same_settings(run, run_cfg, epochs=_finished(run, cfg.epochs))
        if not (resume and all(_finished(run_folder(out, s), cfg.epochs) for s in seeds)):
            for name in ("seeds.json", "seeds.md", "seeds.html"):  # about to change: never left stale
                (out / name).unlink(missing_ok=True)
        per_seed, hashes = [], set()
        for seed in seeds:
            run = run_folder(out, seed)
            run_cfg = dataclasses.replace(cfg, seed=seed, out=str(run))
            if resume and _finished(run, cfg.epochs):
                _check_same_settings(run, run_cfg)
                if progress or epoch_lines:
                    log(f"{run}: trained and evaluated already, kept")
            else:
                train(run_cfg, resume and (run / "config.json").exists(), progress, log, epoch_lines)
                evaluate(run, write=True, figures=False, data_dir=cfg.data_dir, data=data, progress=progress)
            metrics, sha256 = _read_metrics(run)
            per_seed.append(metrics)
            hashes.add(sha256)
        if len(hashes) > 1:  # a finished run kept from before a change of the data folder
            raise ConfigError(f"the runs in {out} were evaluated on different data (sha256 {sorted(map(str, hashes))})")
        summary = {
            "runs": [run_folder(out, s).name for s in seeds],  # relative to OUT: the folder can be moved
            "seeds": seeds,
            "n_seeds": n_seeds,
            "metrics": summarize_metrics(per_seed),
            "choices": chosen_settings(per_seed),
            "note": f"no setting was chosen: one configuration, {n_seeds} seed{'s' if n_seeds > 1 else ''}",
            "intervals": INTERVALS_TEXT,
            "config": {k: v for k, v in cfg.to_json().items() if k not in ("out", "seed")},
            "data_sha256": hashes.pop(),
            "code_dim": per_seed[0].get("code_dim"),  # a setting, the same at every seed
        }
        metric_rows(summary), choice_rows(summary)  # everything formatted before a file is written
        runs.write_json(out / "seeds.json", summary)
        write_seeds_report(out, summary)
    return out


_decimals = decimals  # aelab.metrics.intervals.decimals: two significant figures of the std


def metric_rows(summary: dict) -> list[dict]:
    """One row per metric: metric | mean ± std | 95% interval | n; a baseline of the data (BASELINE_METRICS, the
    same at every seed) shows its one value."""
    rows = []
    for name, s in summary["metrics"].items():
        d = _decimals(s)
        if name in BASELINE_METRICS and s["std"] == 0:
            rows.append({"metric": name, "mean ± std": f"{s['mean']:.{d}f}", "95% interval": "— (a baseline: the data only, the same at every seed)", "n": s["n_seeds"]})  # fmt: skip
            continue
        interval = "none (1 seed)" if s["ci95"] is None else f"[{s['ci95'][0]:.{d}f}, {s['ci95'][1]:.{d}f}]"
        rows.append(
            {"metric": name, "mean ± std": f"{s['mean']:.{d}f} ± {s['std']:.{d}f}", "95% interval": interval,
             "n": s["n_seeds"]}
        )  # fmt: skip
    return rows


def choice_rows(summary: dict) -> list[dict]:
    """One row per chosen setting: the value each seed chose (in seed order) and how often each was chosen."""
    return [
        {"setting": name, "per seed": ", ".join(choice_text(v) for v in values),
         "chosen": format_choices(values)}
        for name, values in (summary.get("choices") or {}).items()
    ]  # fmt: skip


def write_seeds_report(out: Path, summary: dict) -> Path:
    """OUT/seeds.md and OUT/seeds.html: the metrics over the seeds, then the settings chosen per seed."""
    from .report import write_report

    config, seeds = summary["config"], summary["seeds"]
    tables = [("Metrics over the seeds (test split)", metric_rows(summary))]
    if choice_rows(summary):
        tables.append(("Settings chosen on the validation split, per seed (choices: listed, not averaged)",
                       choice_rows(summary)))  # fmt: skip
    notes = [
        f"Seeds {', '.join(map(str, seeds))}; run folders {', '.join(summary['runs'])}. "
        f"{summary['note'][0].upper()}{summary['note'][1:]}.",
        summary["intervals"],
    ]
    title = f"{config['model']} on {config['dataset']}, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
    from .reading import display_name, reading

    means = {k: v["mean"] for k, v in summary["metrics"].items()}
    if "sse_ratio_to_pca" in means:  # code_dim is a setting (the same at every seed), not summarised
        means["code_dim"] = summary.get("code_dim")
    line = reading(
        [{"name": display_name(config["model"]), "metrics": means, "binary_code": config["model"] == "binary"}],
        means_of=len(seeds) if len(seeds) > 1 else None,
    )
    return write_report(out, title, tables, [], notes, name="seeds", numbers_first=True, lead=[line] if line else [])
