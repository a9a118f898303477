"""Find the bias-conflicting samples of ColoredMNIST without colour labels (the setting of Learning from Failure,
Nam, Cha, Ahn, Lee & Shin, NeurIPS 2020).

    ColoredMNIST train split (aligned_ratio of each digit class in the class colour)
      -> an MLP autoencoder trained on the images (aelab.train, unsupervised)
      -> every method of debias_scores.METHODS scores every image from (images, digit labels) only
      -> the colour labels grade each score within each digit class: AUROC, AP, precision/recall at
         k = the number of conflicting images of the class
      -> results.json, report.html/md (tables, ROC and precision-recall curves, t-SNE of the codes by digit and by
         colour, top-ranked images)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import data as datamod
from .. import report, runs
from ..data.colored import make_colored_mnist
from ..data.sources import capped_val_fraction, validation_split
from ..metrics.codes import encode_all, tsne_2d
from ..metrics.ranking import auroc, class_metrics, mean_curves
from ..options import fraction, int_list, opt, positive_int, seed_value
from ..train import TrainConfig
from . import debias_scores, multiseed
from .common import (
    OFFICIAL_TEST,
    jobs_field,
    official_test_status,
    seeds_field,
    train_or_resume,
    val_fraction_field,
)

COLOUR_LABEL_USE = (
    "Colour labels were used only to grade the scores (AUROC, AP, precision/recall at k), to colour "
    "the t-SNE plot and to count the conflicting images in the top-ranked grid. Every scoring method "
    "received the images and the digit labels only (aelab.experiments.debias_scores.score_samples has no colour argument)."
)

K_GRID = (1, 3, 5, 10, 20)
DEFAULT_K = 5  # used when the validation images hold no conflicting image to choose with
ROW_KEY = "method"
COLUMNS = ["AUROC", "AP", "precision@k", "k (chosen)"]
CHOICE_COLUMNS = ["k (chosen)"]
PAIRS = [("gce_knn", "gce_ce", "AUROC"), ("gce_knn", "gce_ce", "AP")]
PLOT_COLUMNS = ["AUROC", "AP"]
TEST_TABLE = "test: train images outside validation"
OFFICIAL_TABLE = "second test set: official MNIST 10k, coloured the same way"

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
    dataset_source: str = field(
        default="mnist5k", metadata=opt("grayscale dataset to colour (mnist5k, digits, mnist, ...)")
    )
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
    no_progress: bool = field(default=False, metadata=opt("no progress bars"))


def _setting(settings: Settings, name: str):
    value = getattr(settings, name, None)
    return value if value is not None else DEFAULTS[name][1 if settings.quick else 0]


def load_biased_train_split(source: str, aligned_ratio: float, seed: int, data_dir=None, train_limit=None):
    """(images, digits, colour labels, conflicting) of the ColoredMNIST train split, exactly the images that
    data.load("colored-mnist", ...) gives the autoencoder's trainer."""
    gray, digits = datamod.load(source, "train", data_dir)
    colored = make_colored_mnist(gray, digits, split="train", aligned_ratio=aligned_ratio, seed=seed)
    images, _ = datamod.load("colored-mnist", "train", data_dir, aligned_ratio=aligned_ratio, seed=seed, source=source)
    if not torch.equal(images, colored["images"]):
        raise RuntimeError("colored-mnist images differ from make_colored_mnist's: the colour labels would not match")
    n = train_limit or len(images)
    return images[:n], digits[:n], colored["color_labels"][:n], ~colored["aligned"][:n]


def run(settings: Settings) -> Path:
    """Every seed's run_one into OUT/seed-<s>/, then the rows over seeds (aelab.experiments.multiseed)."""
    import sys

    return multiseed.run(sys.modules[__name__], settings)


def choose_k(features: np.ndarray, digits: np.ndarray, conflicting: np.ndarray, held: np.ndarray, ks) -> dict:
    """The k of a kNN score chosen on the validation images: the highest AUROC of the within-class ranks
    pooled over the validation images (the smallest k of equals). Without a conflicting (or an aligned) image
    among them nothing can be chosen and DEFAULT_K is kept. Returns {"grid", "validation_auroc", "chosen_k",
    "scores" (of the chosen k, every image)}."""
    scores = {k: debias_scores.knn_distance_scores(features, digits, k) for k in ks}
    crit = [auroc(debias_scores.within_class_ranks(scores[k], digits)[held], conflicting[held]) for k in ks]
    if all(np.isnan(c) for c in crit):
        chosen = DEFAULT_K
        scores.setdefault(chosen, debias_scores.knn_distance_scores(features, digits, chosen))
    else:
        chosen = ks[max(range(len(ks)), key=lambda i: (np.nan_to_num(crit[i], nan=-1.0), -i))]
    return {"grid": list(ks), "validation_auroc": crit, "chosen_k": chosen, "scores": scores[chosen]}


def run_one(settings: Settings) -> Path:
    t_start = time.perf_counter()
    out = Path(settings.out)
    ks = sorted(set(settings.k_grid or K_GRID))
    used = {
        "aligned_ratio": settings.aligned_ratio,
        "seed": settings.seed,
        "dataset_source": settings.dataset_source,
        "train_limit": settings.train_limit,
        "ae_epochs": _setting(settings, "ae_epochs"),
        "n_models": _setting(settings, "n_models"),
        "gce_epochs": settings.gce_epochs,
        "gce_q": 0.7,
        "k_grid": ks,
        "pca_components": 20,
        "tsne_points": _setting(settings, "tsne_points"),
        "quick": bool(settings.quick),
    }
    images, digits, color_labels, conflicting = load_biased_train_split(
        settings.dataset_source, settings.aligned_ratio, settings.seed, settings.data_dir, settings.train_limit
    )
    y, conf = digits.numpy(), conflicting.numpy()
    # the validation images: their colour labels choose k; the other train images are the detection's test
    keep, held, split_note = validation_split(y, capped_val_fraction(len(y), settings.val_fraction))

    # 1. the autoencoder, trained by the common trainer on the same images (no labels of any kind)
    t0 = time.perf_counter()
    ae_dir = out / "ae"
    cfg = TrainConfig(
        model="ae",
        model_options={"loss": "mse"},
        dataset="colored-mnist",
        dataset_options={
            "aligned_ratio": settings.aligned_ratio,
            "seed": settings.seed,
            "source": settings.dataset_source,
        },
        data_dir=settings.data_dir,
        train_limit=settings.train_limit,
        epochs=used["ae_epochs"],
        seed=settings.seed,
        # the AE sees every train image, labels unused: finding the bias-conflicting ones among them is the task
        val_fraction=0.0,
        out=str(ae_dir),
    )
    train_or_resume(cfg, progress=not settings.no_progress)
    ae = runs.load_model(ae_dir)
    ae_time = time.perf_counter() - t0

    # 2. scores: images and digit labels only; then the kNN scores' k, chosen on the validation images
    timings: dict[str, float] = {}
    features: dict[str, np.ndarray] = {}
    scores = _score(settings, used, images, digits, ae, DEFAULT_K, timings, features)
    choices = {}
    for method, feature in (("ae_knn", "ae_codes"), ("gce_knn", "gce_log_probs")):
        choice = choose_k(features[feature], y, conf, held, ks)
        scores[method] = choice.pop("scores")
        choices[method] = choice
    scores["rank_avg(gce_ce,gce_knn)"] = debias_scores.rank_average([scores["gce_ce"], scores["gce_knn"]], y)

    # 3. grading on the test images (outside validation): the only other place the colour labels enter
    methods = {}
    for name, sc in scores.items():
        graded = class_metrics(sc[keep], y[keep], conf[keep])
        methods[name] = {"description": debias_scores.METHODS[name], "time_s": timings.get(name), **graded}
    best = max(methods, key=lambda m: methods[m]["mean"]["auroc"])

    # 4. the second test set: the official MNIST 10k test digits, coloured as a biased train split
    official, official_note = official_test_status(
        settings.data_dir, (1, *ae.input_shape[1:])
    )  # grey digits, coloured here
    official_methods = None
    if official:
        official_methods = score_official(settings, ae, used, choices)

    # 5. figures
    fig_dir = out / "figures"
    test = torch.from_numpy(keep)
    test_scores = {name: sc[keep] for name, sc in scores.items()}
    figures = roc_pr_figures(test_scores, y[keep], conf[keep], methods, best, fig_dir)
    if settings.figures:
        figures += _figures(
            ae,
            images[test],
            y[keep],
            color_labels.numpy()[keep],
            conf[keep],
            test_scores[best],
            best,
            used["tsne_points"],
            settings.seed,
            fig_dir,
            None if settings.no_progress else out.name,
        )

    classes = [int(c) for c in np.unique(y)]
    data = {
        "dataset": "colored-mnist",
        "source": settings.dataset_source,
        "split": "train",
        "aligned_ratio": settings.aligned_ratio,
        "seed": settings.seed,
        "color_std": 0.005,
        "n": len(y),
        "n_per_class": {c: int((y == c).sum()) for c in classes},
        "conflicting_per_class": {c: int(conf[y == c].sum()) for c in classes},
        "n_conflicting": int(conf.sum()),
    }
    splits = {
        "train": len(y),
        "validation": len(held),
        "test": len(keep),
        "validation_split": split_note,
        "n_conflicting": {"validation": int(conf[held].sum()), "test": int(conf[keep].sum())},
        "note": "the detection is transductive: every method scores all the train images without colour labels; "
        "the colour labels of the validation images choose k, those of the other images grade (the test)",
        "official_test": {"available": official, "note": official_note},
    }
    tables = {TEST_TABLE: _rows(methods, choices)}
    if official_methods is not None:
        tables[OFFICIAL_TABLE] = _rows(official_methods, choices)
    title = f"Finding bias-conflicting samples without colour labels (aligned ratio {settings.aligned_ratio})"
    result = {
        "experiment": "debias",
        "title": title,
        "data": data,
        "splits": splits,
        "selection_split": "validation",
        "selection": "the k of ae_knn and gce_knn: the highest AUROC of the within-class ranks pooled over the "
        "validation images (their colour labels); the test images choose nothing",
        "k_choice": choices,
        "colour_labels": COLOUR_LABEL_USE,
        "settings": used,
        "tables": tables,
        "table_order": list(tables),
        "methods": methods,
        "official_test_methods": official_methods,
        "best_method": best,
        "best_mean_auroc": methods[best]["mean"]["auroc"],
        "best_method_selection": "highest mean AUROC (a choice made with the colour labels, for display only)",
        "ae_run": "ae",
        "ae_time_s": ae_time,
    }
    per_class_auroc = [
        {"method": m, **{f"{row['class']}": row["auroc"] for row in r["per_class"]}} for m, r in methods.items()
    ]
    best_rows = methods[best]["per_class"]
    k_text = ", ".join(
        f"{m}: k={c['chosen_k']} (validation AUROC "
        + ", ".join(f"k={k}: {a:.3f}" for k, a in zip(c["grid"], c["validation_auroc"]))
        + ")"
        for m, c in choices.items()
    )
    notes = [
        f"Data: ColoredMNIST train split built from {settings.dataset_source} ({len(y)} images), aligned ratio "
        f"{settings.aligned_ratio}, seed {settings.seed}; {int(conf.sum())} bias-conflicting images "
        f"({', '.join(str(data['conflicting_per_class'][c]) for c in classes)} per digit).",
        f"Splits: every method scores all {len(y)} images (the detection is transductive, without colour labels). "
        f"Validation: {split_note} ({int(conf[held].sum())} conflicting); their colour labels chose k. Test: the "
        f"other {len(keep)} images ({int(conf[keep].sum())} conflicting), graded once.",
        f"k chosen on validation: {k_text}.",
        official_note
        + (
            " There, the official test digits are coloured as a biased train split (same aligned ratio, seed "
            "+ 1), the same autoencoder encodes them, the biased MLPs are trained on them, k is the one chosen above."
            if official
            else ""
        ),
        COLOUR_LABEL_USE.replace("to grade the scores", "to choose k on the validation images, to grade the scores"),
        "Each score ranks the images of one digit class (higher = more likely conflicting); the metrics are "
        "computed per class and averaged over classes. k in precision@k = the number of conflicting images of the "
        "class, so precision@k = recall@k. AUROC counts ties as 1/2.",
        f"Autoencoder: MLP {used['ae_epochs']} epochs ({ae_time:.0f} s). Biased classifiers: "
        f"{used['n_models']} MLPs (3 x 100 ReLU) trained {settings.gce_epochs} epochs with GCE q=0.7, read after "
        f"every epoch. Best method on test (by mean AUROC, for display): {best}.",
        "Time column: ae_* exclude training the autoencoder (given above); gce_ce includes training the "
        "biased MLPs, which gce_knn and the rank average reuse.",
        "Design choices (q=0.7, 3 epochs, the snapshot ensemble, gce_knn and the fixed rank average) were made "
        "while developing on colouring seeds 0 and 1 of mnist5k, before this protocol.",
    ]
    result["notes_for_summary"] = notes[1:4]
    result["figures"] = [[caption, str(Path(path).relative_to(out))] for caption, path in figures]
    result["wall_time_s"] = time.perf_counter() - t_start
    notes.append(f"Wall time {result['wall_time_s']:.0f} s.")
    runs.write_json(out / "results.json", result)
    return report.write_report(
        out,
        title,
        [(name, rows) for name, rows in tables.items()]
        + [
            ("AUROC per digit class (test images)", per_class_auroc),
            (f"Best method ({best}) per digit class", best_rows),
        ],
        figures,
        notes,
        config=used,
    )


def _rows(methods: dict, choices: dict) -> list[dict]:
    return [
        {
            "method": m,
            "AUROC": r["mean"]["auroc"],
            "AP": r["mean"]["average_precision"],
            "precision@k": r["mean"]["precision_at_k"],
            "k (chosen)": choices[m]["chosen_k"] if m in choices else None,
            "time (s)": r["time_s"],
        }
        for m, r in methods.items()
    ]


def _score(settings: Settings, used: dict, images, digits, ae, k: int, timings: dict, features: dict) -> dict:
    """Every method of debias_scores on one image set, with this run's settings (images and digits only)."""
    return debias_scores.score_samples(
        images,
        digits,
        ae,
        k=k,
        n_models=used["n_models"],
        gce_epochs=settings.gce_epochs,
        q=used["gce_q"],
        seed=settings.seed,
        pca_components=used["pca_components"],
        timings=timings,
        representations=features,
    )


def score_official(settings: Settings, ae, used: dict, choices: dict) -> dict:
    """Every method on the official MNIST test digits coloured as a biased train split (colouring seed + 1, so
    that it is not the train split's draw), graded on all of them, with the k chosen on the validation images."""
    gray, digits, _ = datamod.load_test_split(OFFICIAL_TEST, settings.data_dir)
    seed = (settings.seed + 1) % (2**63)
    colored = make_colored_mnist(gray, digits, split="train", aligned_ratio=settings.aligned_ratio, seed=seed)
    images, conf = colored["images"], (~colored["aligned"]).numpy()
    y = digits.numpy()
    features: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}
    scores = _score(settings, used, images, digits, ae, choices["gce_knn"]["chosen_k"], timings, features)
    scores["ae_knn"] = debias_scores.knn_distance_scores(features["ae_codes"], y, choices["ae_knn"]["chosen_k"])
    return {
        name: {"description": debias_scores.METHODS[name], "time_s": timings.get(name), **class_metrics(sc, y, conf)}
        for name, sc in scores.items()
    }


def _palette_scatter(points: np.ndarray, color_labels: np.ndarray, ringed: np.ndarray, path: Path) -> Path:
    """Like report.plot_scatter, but each point in its ColoredMNIST palette colour (tab10 would mislabel them)."""
    import matplotlib.pyplot as plt

    from ..data.colored import PALETTE

    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.set_facecolor("0.2")  # the palette includes light grey
    ax.scatter(points[:, 0], points[:, 1], c=PALETTE.numpy()[color_labels], s=4)
    ax.scatter(points[ringed, 0], points[ringed, 1], s=40, facecolors="none", edgecolors="white", linewidths=0.8)
    ax.set_title("AE codes by colour (white rings: bias-conflicting)")
    ax.set_xticks([])
    ax.set_yticks([])
    return report.save_png(fig, path)


def roc_pr_figures(
    scores: dict[str, np.ndarray], digits: np.ndarray, conflicting: np.ndarray, methods: dict, best: str, fig_dir: Path
) -> list[tuple[str, Path]]:
    """ROC and precision-recall curves of the conflicting-sample detection, graded within each digit class as the
    tables are: every method's curves averaged over the classes, then the best method's curve in each class."""
    positive_rate = float(np.mean([conflicting[digits == c].mean() for c in np.unique(digits)]))
    curves = {
        name: {
            **mean_curves(s, digits, conflicting),
            "auroc": methods[name]["mean"]["auroc"],
            "average_precision": methods[name]["mean"]["average_precision"],
        }
        for name, s in scores.items()
    }
    per_class = {}
    for row in methods[best]["per_class"]:
        m = digits == row["class"]
        if 0 < row["n_conflicting"] < row["n"]:
            per_class[f"digit {row['class']}"] = {
                **mean_curves(scores[best][m], digits[m], conflicting[m]),
                "auroc": row["auroc"],
                "average_precision": row["average_precision"],
            }
    figures = [
        (
            "ROC and precision-recall curves of each method, averaged over the digit classes (vertically: the mean "
            "true positive rate at each false positive rate, the mean precision at each recall); dotted: chance",
            report.plot_roc_pr(
                curves, fig_dir / "roc_pr.png", "every method, mean over digit classes", positive_rate=positive_rate
            ),
        )
    ]
    if per_class:
        figures.append(
            (
                f"ROC and precision-recall curves of the best method ({best}) in each digit class",
                report.plot_roc_pr(per_class, fig_dir / "roc_pr_best.png", f"{best}, per digit class"),
            )
        )
    return figures


def _figures(ae, images, digits, color_labels, conflicting, best_scores, best, tsne_points, seed, fig_dir, progress):
    figures = []
    n = min(tsne_points, len(images))
    subset = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])  # random: the data are sorted by digit
    codes = encode_all(ae, images[torch.from_numpy(subset)]).numpy()
    emb = tsne_2d(codes, seed, progress) if codes.shape[1] > 2 else codes
    figures.append(
        (
            f"t-SNE of {n} autoencoder codes, coloured by digit",
            report.plot_scatter(
                emb, digits[subset], fig_dir / "tsne_digit.png", "AE codes by digit", colour_name="digit"
            ),
        )
    )
    figures.append(
        (
            f"The same t-SNE, each point drawn in its mean colour (colour label); "
            f"{int(conflicting[subset].sum())} conflicting points are ringed",
            _palette_scatter(emb, color_labels[subset], conflicting[subset], fig_dir / "tsne_colour.png"),
        )
    )
    rows, labels = [], []
    for c in np.unique(digits):
        idx = np.flatnonzero(digits == c)
        top = idx[np.argsort(-best_scores[idx], kind="stable")[:10]]
        rows.append(images[torch.from_numpy(top)].numpy())
        labels.append(f"{c}: {int(conflicting[top].sum())}/{len(top)}")
    figures.append(
        (
            f"Top-ranked images per digit by {best} (row label: digit: conflicting/shown)",
            report.plot_image_rows(rows, labels, fig_dir / "top_ranked.png", f"top-ranked by {best}"),
        )
    )
    return figures
