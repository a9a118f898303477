"""Hinton & Salakhutdinov (Science 2006), "Reducing the dimensionality of data with neural networks".

Ways to get a code of the same size, compared on held-out digits: raw pixels (probe only), PCA, logistic PCA
(with a fixed linear encoder trained like the deep AE, the row comparable with the paper's, and with per-image
codes), the deep autoencoder from random initialisation, and the same deep autoencoder pretrained as a stack of
RBMs (pretrained once per seed), unrolled, then fine-tuned by conjugate gradients (the paper's fine-tuner) and by
Adam; each pretrained deep AE again with per-image codes (its decoder fixed, each test image's code optimised).
recon_sse is the paper's unit: squared error summed over the 784 pixels, averaged over test images (the paper's
numbers: aelab.papers, "hinton2006"). The rows run one after another (hinton2006_rows); results.json and the report
are written after each, marked partial, and --resume goes on from the first unfinished one.
"""

from __future__ import annotations

import sys
import time
from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from pathlib import Path

from threadpoolctl import threadpool_limits

from ..errors import ConfigError
from ..models.deep_ae import LAYER_PRESETS
from ..options import float_list, int_list, opt, positive_int, seed_value, word_list
from ..progress import Progress
from ..runs import fault_point, read_config
from . import hinton2006_report, multiseed
from . import hinton2006_rows as rows
from . import hinton2006_steps as steps_of_rows
from .common import (
    amp_field,
    device_field,
    jobs_field,
    patience_field,
    preflight,
    seeds_field,
    splits_of,
    val_fraction_field,
    write_partial,
)
from .hinton2006_rows import FINE_TUNERS, PER_IMAGE, RANDOM, WEIGHT_DECAY_GRID

ROW_KEY = "method"
PLOT_COLUMNS = ["ratio to PCA", "recon_sse"]
COLUMNS = ["code size", "recon_sse", "ratio to PCA", "probe accuracy", "weight cost (chosen)", "epoch kept", "paper"]
FIXED_COLUMNS = ["code size", "paper"]
CHOICE_COLUMNS = ["weight cost (chosen)", "epoch kept"]
TITLE = "Hinton & Salakhutdinov (2006): deep autoencoders vs PCA and logistic PCA"


def PAIRS(tables: dict) -> list[tuple[str, str, str]]:
    """The paired differences over seeds: each pretrained row against random init, CG against Adam, and every row's
    per-image codes against its own fixed encoder."""
    labels = {row[ROW_KEY] for table in tables.values() for row in table}
    pairs = [(label, RANDOM, "recon_sse") for label in FINE_TUNERS.values()]
    pairs.append((FINE_TUNERS["cg"], FINE_TUNERS["adam"], "recon_sse"))
    encoder = sorted(label for label in labels if label.startswith("logistic PCA, linear encoder"))
    per_image = sorted(label for label in labels if label.startswith("logistic PCA, per-image codes"))
    pairs += [(b, a, "recon_sse") for a, b in zip(encoder, per_image)]
    pairs += [(label + PER_IMAGE, label, "recon_sse") for label in FINE_TUNERS.values()]
    return [p for p in pairs if p[0] in labels and p[1] in labels]


@dataclass
class Settings:
    out: str = field(default="runs/hinton2006", metadata=opt("output folder"))
    quick: bool = field(
        default=False,
        metadata=opt(
            "a smoke check of every row in about a minute: 1,000 train images, 2 RBM epochs per layer, 5 Adam epochs, "
            "1 CG epoch, 30 L-BFGS iterations, weight cost 0, t-SNE of 300 codes"
        ),
    )
    dataset: str = field(
        default="mnist5k",
        metadata=opt("dataset name", choices=["mnist5k", "mnist", "fashion-mnist", "kmnist", "digits"]),
    )
    data_dir: str | None = field(
        default=None,
        metadata=opt(
            "folder of the IDX files (DIR/NAME/ or DIR itself); when it holds the official MNIST t10k files, "
            "every chosen model is also scored on them"
        ),
    )
    layers: str = field(
        default="hinton2006",
        metadata=opt(
            f"a preset ({', '.join(f'{k}={v}' for k, v in LAYER_PRESETS.items())}) or sizes like 784-1000-500-250-30"
        ),
    )
    epochs: int | None = field(
        default=None,
        metadata=opt("most Adam fine-tuning epochs (default 80, --quick 5)", parse=positive_int),
    )
    cg_epochs: int | None = field(
        default=None, metadata=opt("most conjugate-gradient epochs (default: --epochs; --quick 1)", parse=positive_int)
    )
    pretrain_epochs: int | None = field(
        default=None, metadata=opt("RBM epochs per layer (default 50, --quick 2)", parse=positive_int)
    )
    fine_tuners: list[str] = field(
        default_factory=lambda: ["cg", "adam"],
        metadata=opt(
            "fine-tuners of the pretrained stack, comma-separated: cg, adam (default both)",
            parse=word_list(FINE_TUNERS),
        ),
    )
    batch_size: int | None = field(default=None, metadata=opt("Adam's batch (default 100)", parse=positive_int))
    cg_batch_size: int = field(
        default=1000, metadata=opt("conjugate gradients' batch (3 line searches each)", parse=positive_int)
    )
    weight_decay: list[float] | None = field(
        default=None,
        metadata=opt(
            "fine-tuning weight costs (sum of squared weights) to choose from on validation, comma-separated "
            f"(default {','.join(f'{v:g}' for v in WEIGHT_DECAY_GRID[0])}; --quick 0)",
            parse=float_list,
        ),
    )
    logistic_pca_iter: int | None = field(
        default=None,
        metadata=opt(
            "most L-BFGS iterations of logistic PCA's fit and of every per-image code (default 300, --quick 30)",
            parse=positive_int,
        ),
    )
    val_fraction: float = val_fraction_field("the epoch and the weight cost")
    patience: int = patience_field(10)
    device: str = device_field()
    amp: bool = amp_field()
    seed: int = field(default=0, metadata=opt("seed of every model", parse=seed_value))
    seeds: int = seeds_field()
    jobs: int = jobs_field()
    figures: bool = field(default=True, metadata=opt(hidden=True))  # multiseed: t-SNE maps for the first seed only
    train_limit: int | None = field(default=None, metadata=opt(parse=positive_int, hidden=True))  # tests; --quick 1000
    no_progress: bool = field(default=False, metadata=opt("no progress bars"))


def _layers(text: str) -> tuple[str | list[int], list[int]]:
    """(the model's `layers` option, the sizes) for a preset name or sizes like 784-1000-500-250-30."""
    if text in LAYER_PRESETS:
        return text, list(LAYER_PRESETS[text])
    try:
        sizes = int_list(text)
    except ArgumentTypeError as e:
        raise ConfigError(f"--layers: expected a preset ({', '.join(LAYER_PRESETS)}) or {e}") from None
    return sizes, sizes


def run(settings: Settings) -> Path:
    """Every seed's run_one into OUT/seed-<s>/, then the rows over seeds (aelab.experiments.multiseed)."""
    preflight(settings)
    return multiseed.run(sys.modules[__name__], settings)


def run_one(settings: Settings) -> Path:
    """One seed: every step of hinton2006_rows in turn (a finished one, read back from a partial results.json, is
    kept as it is), results.json and the report after each, then the figures and the final results.json."""
    started = time.perf_counter()
    preflight(settings)
    plan = rows.Plan(settings, *_layers(settings.layers))
    state = rows.State.load(plan)
    steps, out = plan.steps(), plan.out
    with Progress(f"{out.name or out}: hinton2006", total=len(steps), unit="row", enabled=plan.progress) as bar:
        if settings.quick:
            bar.write(hinton2006_report.quick_note(plan))
        with threadpool_limits(limits=1, user_api="blas"):  # sklearn's PCA and t-SNE: see contractive.select_settings
            for step in steps:
                if step in state.done:
                    bar.update(text=f"{step}: finished already, kept", kept=True)
                    continue
                text = steps_of_rows.run_step(step, state, bar)
                state.done.append(step)
                partial = {**_results(plan, state, started), "rows_done": state.done}
                write_partial(out, partial, state.done, [s for s in steps if s not in state.done], TITLE)
                fault_point("row")  # AELAB_FAULT_KILL_AT_ROW=N: the kill-between-rows test
                bar.update(text=text)
            bar.phase(
                f"figures (t-SNE maps of {plan.tsne_points} test codes per row)" if settings.figures else "figures"
            )
            t0 = time.perf_counter()
            figures = hinton2006_report.figures(plan, state)
    results = _results(plan, state, started)
    results["figures_time_s"] = time.perf_counter() - t0
    config = read_config(out / state.runs[RANDOM])
    results["splits"] = {
        **splits_of(config),
        "official_test": {"available": rows.OFFICIAL in results["tables"], "note": state.data.official_note},
    }
    pre = out / "rbm-stack" / "pretrain.json"
    notes = hinton2006_report.notes(plan, state, results["splits"], pre)
    results["protocol_differences"] = hinton2006_report.protocol_differences(plan, results["splits"])
    results["wall_time_s"] = time.perf_counter() - started
    return hinton2006_report.write(plan, results, figures, notes)


def _results(plan: rows.Plan, state: rows.State, started: float) -> dict:
    """What results.json holds after every step (partial) and at the end."""
    s = plan.settings
    return {
        "experiment": "hinton2006",
        "title": TITLE,
        "row_settings": plan.compared_settings(),
        "selection_split": "validation",
        "selection": "per row, the weight cost with the lowest validation recon_sse; per run, the epoch with the "
        "lowest validation loss",
        "tables": hinton2006_report.with_paper(plan, state.tables()),
        "table_order": list(state.tables()),
        "sweeps": state.sweeps,
        "runs": state.runs,
        "per_image": state.per_image,
        "layers": plan.sizes,
        "epochs": {"adam": plan.epochs, "cg": plan.cg_epochs, "rbm_per_layer": plan.pretrain_epochs},
        "logistic_pca_iter": plan.lpca_iter,
        "train_limit": plan.train_limit,
        "quick": s.quick,
        "data": {"dataset": s.dataset, "fit_split": "train", "score_split": "test"},
        **state.timing(),
        "wall_time_s": time.perf_counter() - started,
        "fine_tuners": s.fine_tuners,
        "device": s.device,
    }
