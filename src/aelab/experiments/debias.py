"""Find the bias-conflicting samples of ColoredMNIST without colour labels (the setting of Learning from Failure,
Nam, Cha, Ahn, Lee & Shin, NeurIPS 2020).

    ColoredMNIST train split (aligned_ratio of each digit class in the class colour)
      -> an MLP autoencoder trained on the images (aelab.train, unsupervised)
      -> every method of aelab.debias.scores.METHODS scores every image from (images, digit labels) only
      -> the colour labels grade each score within each digit class: AUROC, AP, precision/recall at
         k = the number of conflicting images of the class
      -> results.json, report.html/md (tables, ROC and precision-recall curves, t-SNE of the codes by digit and by
         colour, top-ranked images; written by debias_report.py)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.colored_splits import load_biased_train_split
from ..data.sources import capped_val_fraction, validation_split
from ..debias import scores as detection
from ..options import fraction, int_list, opt, positive_int, seed_value
from ..progress import Progress
from . import debias_report, multiseed
from .common import (
    amp_field,
    dataset_field,
    device_field,
    jobs_field,
    official_test_status,
    preflight,
    seeds_field,
    val_fraction_field,
)
from .debias_steps import choose_knn_k, grade, score_all, score_official, train_autoencoder

K_GRID = (1, 3, 5, 10, 20)
DEFAULT_K = 5  # used when the validation images hold no conflicting image to choose with
ROW_KEY = "method"
COLUMNS = ["AUROC", "AP", "precision@k", "k (chosen)"]
CHOICE_COLUMNS = ["k (chosen)"]
PAIRS = [("gce_knn", "gce_ce", "AUROC"), ("gce_knn", "gce_ce", "AP")]
PLOT_COLUMNS = ["AUROC", "AP"]

# (full, --quick) defaults of the settings that --quick shrinks
DEFAULTS = {"ae_epochs": (20, 5), "n_models": (5, 3), "tsne_points": (2000, 1000)}


@dataclass
class Settings:
    out: str = field(default="runs/debias", metadata=opt("output folder"))
    aligned_ratio: float = field(
        default=0.95,
        metadata=opt("fraction of each digit class in its own colour (LfF: 0.95, 0.98, 0.99, 0.995)", parse=fraction),
    )
    seed: int = field(default=0, metadata=opt("seed of the colouring and of every model", parse=seed_value))
    dataset: str = dataset_field("mnist5k", "grayscale dataset to colour (mnist5k, digits, mnist, ...)")
    data_dir: str | None = field(default=None, metadata=opt("folder of downloaded datasets"))
    train_limit: int | None = field(
        default=None,
        metadata=opt(
            "use only the first N training images (tests; note mnist5k is ordered by digit)", parse=positive_int
        ),
    )
    ae_epochs: int | None = field(
        default=None, metadata=opt("autoencoder epochs (default 20, --quick 5)", parse=positive_int)
    )
    n_models: int | None = field(
        default=None, metadata=opt("GCE-biased MLPs averaged (default 5, --quick 3)", parse=positive_int)
    )
    gce_epochs: int = field(default=3, metadata=opt("epochs of each biased MLP", parse=positive_int))
    k_grid: list[int] | None = field(
        default=None,
        metadata=opt(
            "neighbours of the kNN scores to choose from on the validation images, comma-separated "
            f"(default {','.join(map(str, K_GRID))})",
            parse=int_list,
        ),
    )
    val_fraction: float = val_fraction_field("k by its colour labels; the other images are the test of the detection")
    seeds: int = seeds_field()
    jobs: int = jobs_field()
    figures: bool = field(default=True, metadata=opt(hidden=True))  # multiseed: t-SNE for the first seed only
    tsne_points: int | None = field(default=None, metadata=opt("default 2000, --quick 1000", parse=positive_int))
    quick: bool = field(default=False, metadata=opt("fewer epochs / models / t-SNE points (about 2 minutes)"))
    device: str = device_field()
    amp: bool = amp_field()
    no_progress: bool = field(default=False, metadata=opt("no progress bars"))


def _setting(settings: Settings, name: str):
    value = getattr(settings, name, None)
    return value if value is not None else DEFAULTS[name][1 if settings.quick else 0]


def used_settings(settings: Settings) -> dict:
    """The settings this seed runs with, --quick's defaults filled in (results.json "settings")."""
    return {
        "aligned_ratio": settings.aligned_ratio,
        "seed": settings.seed,
        "dataset_source": settings.dataset,
        "train_limit": settings.train_limit,
        "ae_epochs": _setting(settings, "ae_epochs"),
        "n_models": _setting(settings, "n_models"),
        "gce_epochs": settings.gce_epochs,
        "gce_q": 0.7,
        "k_grid": sorted(set(settings.k_grid or K_GRID)),
        "pca_components": 20,
        "tsne_points": _setting(settings, "tsne_points"),
        "quick": bool(settings.quick),
    }


def run(settings: Settings) -> Path:
    """Every seed's run_one into OUT/seed-<s>/, then the rows over seeds (aelab.experiments.multiseed)."""
    import sys

    preflight(settings)
    return multiseed.run(sys.modules[__name__], settings)


STEPS = 5  # the autoencoder, the scores, k on validation, the grading, the official test set and report


def run_one(settings: Settings) -> Path:
    """One seed: the autoencoder, every detection score, k chosen on validation, the grading, the report."""
    out = Path(settings.out)
    with Progress(f"{out.name or out}: debias", total=STEPS, unit="step", enabled=not settings.no_progress) as bar:
        return _run_one(settings, bar)


def _run_one(settings: Settings, bar: Progress) -> Path:
    t_start = time.perf_counter()
    out = Path(settings.out)
    used = used_settings(settings)
    images, digits, color_labels, conflicting = load_biased_train_split(
        settings.dataset, settings.aligned_ratio, settings.seed, settings.data_dir, settings.train_limit
    )
    y, conf = digits.numpy(), conflicting.numpy()
    # the validation images: their colour labels choose k; the other train images are the detection's test
    keep, held, split_note = validation_split(y, capped_val_fraction(len(y), settings.val_fraction))

    if settings.quick:
        bar.write(
            f"--quick: {used['ae_epochs']} autoencoder epochs, {used['n_models']} biased MLPs, t-SNE of "
            f"{used['tsne_points']} points (the full run: {DEFAULTS['ae_epochs'][0]}, {DEFAULTS['n_models'][0]}, "
            f"{DEFAULTS['tsne_points'][0]})"
        )
    # 1. the autoencoder, trained by the common trainer on the same images (no labels of any kind)
    bar.phase(f"the autoencoder: {used['ae_epochs']} epochs on {len(images)} images (a finished run is kept)")
    t0 = time.perf_counter()
    ae = train_autoencoder(settings, used, out / "ae")
    ae_time = time.perf_counter() - t0
    bar.update(text=f"the autoencoder: {ae_time:.0f} s")

    # 2. scores: images and digit labels only; then the kNN scores' k, chosen on the validation images
    timings: dict[str, float] = {}
    features: dict[str, np.ndarray] = {}
    scores = score_all(settings, used, images, digits, ae, DEFAULT_K, timings, features, bar.phase)
    bar.update(text="the detection scores")
    bar.phase(f"k of the kNN scores, chosen on the {len(held)} validation images")
    choices = choose_knn_k(scores, features, y, conf, held, used["k_grid"], DEFAULT_K)
    scores["rank_avg(gce_ce,gce_knn)"] = detection.rank_average([scores["gce_ce"], scores["gce_knn"]], y)
    bar.update(text="k: " + ", ".join(f"{m} {c['chosen_k']}" for m, c in choices.items()))
    bar.phase("grading every method on the test images")

    # 3. grading on the test images (outside validation): the only other place the colour labels enter
    methods = grade(scores, keep, y, conf, timings)
    best = max(methods, key=lambda m: methods[m]["mean"]["auroc"])
    bar.update(text=f"best AUROC: {best} {methods[best]['mean']['auroc']:.3f}")

    # 4. the second test set: the official MNIST 10k test digits, coloured as a biased train split
    official, official_note = official_test_status(
        settings.data_dir, (1, *ae.input_shape[1:])
    )  # grey digits, coloured here
    official_methods = None
    if official:
        bar.phase("every method again on the official MNIST test digits")
        official_methods = score_official(settings, ae, used, choices, bar.phase)
    bar.phase("figures (t-SNE) and report")

    # 5. figures, results.json and the report
    return debias_report.write(
        settings,
        used,
        images=images,
        digits=digits,
        color_labels=color_labels,
        conflicting=conflicting,
        keep=keep,
        held=held,
        split_note=split_note,
        ae=ae,
        ae_time=ae_time,
        scores=scores,
        methods=methods,
        choices=choices,
        best=best,
        official=official,
        official_note=official_note,
        official_methods=official_methods,
        t_start=t_start,
    )
