"""The report of `aelab experiment debias` (a recipe: figures, tables, notes and results.json of one seed's
run; the detection itself is aelab.experiments.debias and aelab.debias.scores)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import report, runs
from ..metrics.codes import encode_all, tsne_2d

COLOUR_LABEL_USE = (
    "Colour labels were used only to grade the scores (AUROC, AP, precision/recall at k), to colour "
    "the t-SNE plot and to count the conflicting images in the top-ranked grid. Every scoring method "
    "received the images and the digit labels only (aelab.debias.scores.score_samples has no colour argument)."
)
TEST_TABLE = "test: train images outside validation"
OFFICIAL_TABLE = "second test set: official MNIST 10k, coloured the same way"


def write(
    settings,
    used: dict,
    *,
    images: torch.Tensor,
    digits: torch.Tensor,
    color_labels: torch.Tensor,
    conflicting: torch.Tensor,
    keep: np.ndarray,
    held: np.ndarray,
    split_note: str,
    ae,
    ae_time: float,
    scores: dict[str, np.ndarray],
    methods: dict,
    choices: dict,
    best: str,
    official: bool,
    official_note: str,
    official_methods: dict | None,
    t_start: float,
) -> Path:
    """Figures, results.json and report.html/md of one seed's detection run into settings.out."""
    out = Path(settings.out)
    y, conf = digits.numpy(), conflicting.numpy()
    figures = detection_figures(settings, used, ae, images, y, color_labels.numpy(), conf, keep, scores, methods, best)
    tables = {TEST_TABLE: rows(methods, choices)}
    if official_methods is not None:
        tables[OFFICIAL_TABLE] = rows(official_methods, choices)
    title = f"Finding bias-conflicting samples without colour labels (aligned ratio {settings.aligned_ratio})"
    result = {
        "experiment": "debias",
        "title": title,
        "data": data_record(settings, y, conf),
        "splits": splits_record(y, conf, keep, held, split_note, official, official_note),
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
    notes = notes_of(settings, result)
    result["notes_for_summary"] = notes[1:4]
    result["figures"] = [[caption, str(Path(path).relative_to(out))] for caption, path in figures]
    result["wall_time_s"] = time.perf_counter() - t_start
    notes.append(f"Wall time {result['wall_time_s']:.0f} s.")
    runs.write_json(out / "results.json", result)
    return report.write_report(
        out,
        title,
        [(name, rows) for name, rows in tables.items()] + per_class_tables(methods, best),
        figures,
        notes,
        config=used,
    )


def detection_figures(settings, used: dict, ae, images, y, color_labels, conf, keep, scores, methods, best) -> list:
    """The ROC and precision-recall curves on the test images; with settings.figures also the t-SNE maps of their
    codes and the images the best method ranks first."""
    out = Path(settings.out)
    fig_dir = out / "figures"
    test = torch.from_numpy(keep)
    test_scores = {name: sc[keep] for name, sc in scores.items()}
    figures = report.detection_curve_figures(test_scores, y[keep], conf[keep], methods, best, fig_dir)
    if settings.figures:
        figures += _figures(
            ae,
            images[test],
            y[keep],
            color_labels[keep],
            conf[keep],
            test_scores[best],
            best,
            used["tsne_points"],
            settings.seed,
            fig_dir,
            None if settings.no_progress else out.name,
        )
    return figures


def data_record(settings, y: np.ndarray, conf: np.ndarray) -> dict:
    """results.json "data": the ColoredMNIST train split and its conflicting images per digit class."""
    classes = [int(c) for c in np.unique(y)]
    return {
        "dataset": "colored-mnist",
        "source": settings.dataset,
        "split": "train",
        "aligned_ratio": settings.aligned_ratio,
        "seed": settings.seed,
        "color_std": 0.005,
        "n": len(y),
        "n_per_class": {c: int((y == c).sum()) for c in classes},
        "conflicting_per_class": {c: int(conf[y == c].sum()) for c in classes},
        "n_conflicting": int(conf.sum()),
    }


def splits_record(y, conf, keep, held, split_note: str, official: bool, official_note: str) -> dict:
    """results.json "splits": every image is scored; the validation images choose k, the other images grade."""
    return {
        "train": len(y),
        "validation": len(held),
        "test": len(keep),
        "validation_split": split_note,
        "n_conflicting": {"validation": int(conf[held].sum()), "test": int(conf[keep].sum())},
        "note": "the detection is transductive: every method scores all the train images without colour labels; "
        "the colour labels of the validation images choose k, those of the other images grade (the test)",
        "official_test": {"available": official, "note": official_note},
    }


def notes_of(settings, result: dict) -> list[str]:
    """The report's notes, read from results.json (its wall time aside): the data, the splits, the k chosen, the
    second test set, where the colour labels entered, the grading, the models behind the scores."""
    data, splits, used, best = result["data"], result["splits"], result["settings"], result["best_method"]
    conflicting = splits["n_conflicting"]
    official = splits["official_test"]["available"]
    k_text = ", ".join(
        f"{m}: k={c['chosen_k']} (validation AUROC "
        + ", ".join(f"k={k}: {a:.3f}" for k, a in zip(c["grid"], c["validation_auroc"]))
        + ")"
        for m, c in result["k_choice"].items()
    )
    return [
        f"Data: ColoredMNIST train split built from {settings.dataset} ({data['n']} images), aligned ratio "
        f"{settings.aligned_ratio}, seed {settings.seed}; {data['n_conflicting']} bias-conflicting images "
        f"({', '.join(str(n) for n in data['conflicting_per_class'].values())} per digit).",
        f"Splits: every method scores all {data['n']} images (the detection is transductive, without colour labels). "
        f"Validation: {splits['validation_split']} ({conflicting['validation']} conflicting); their colour labels "
        f"chose k. Test: the other {splits['test']} images ({conflicting['test']} conflicting), graded once.",
        f"k chosen on validation: {k_text}.",
        splits["official_test"]["note"]
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
        f"Autoencoder: MLP {used['ae_epochs']} epochs ({result['ae_time_s']:.0f} s). Biased classifiers: "
        f"{used['n_models']} MLPs (3 x 100 ReLU) trained {settings.gce_epochs} epochs with GCE q=0.7, read after "
        f"every epoch. Best method on test (by mean AUROC, for display): {best}.",
        "Time column: ae_* exclude training the autoencoder (given above); gce_ce includes training the "
        "biased MLPs, which gce_knn and the rank average reuse.",
        "Design choices (q=0.7, 3 epochs, the snapshot ensemble, gce_knn and the fixed rank average) were made "
        "while developing on colouring seeds 0 and 1 of mnist5k, before this protocol.",
    ]


def per_class_tables(methods: dict, best: str) -> list[tuple[str, list[dict]]]:
    """Every method's AUROC per digit class, and the best method's metrics per digit class (test images)."""
    per_class_auroc = [
        {"method": m, **{f"{row['class']}": row["auroc"] for row in r["per_class"]}} for m, r in methods.items()
    ]
    return [
        ("AUROC per digit class (test images)", per_class_auroc),
        (f"Best method ({best}) per digit class", methods[best]["per_class"]),
    ]


def rows(methods: dict, choices: dict) -> list[dict]:
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


def _figures(ae, images, digits, color_labels, conflicting, best_scores, best, tsne_points, seed, fig_dir, progress):
    from ..data.colored import PALETTE

    n = min(tsne_points, len(images))
    subset = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])  # random: the data are sorted by digit
    codes = encode_all(ae, images[torch.from_numpy(subset)]).numpy()
    emb = tsne_2d(codes, seed, progress) if codes.shape[1] > 2 else codes
    # each point in its ColoredMNIST palette colour (tab10 would mislabel them)
    rgb, ringed = PALETTE.numpy()[color_labels[subset]], conflicting[subset]
    return [
        (
            f"t-SNE of {n} autoencoder codes, coloured by digit",
            report.plot_scatter(
                emb, digits[subset], fig_dir / "tsne_digit.png", "AE codes by digit", colour_name="digit"
            ),
        ),
        (
            f"The same t-SNE, each point drawn in its mean colour (colour label); "
            f"{int(conflicting[subset].sum())} conflicting points are ringed",
            report.plot_palette_scatter(
                emb, rgb, ringed, fig_dir / "tsne_colour.png", "AE codes by colour (white rings: bias-conflicting)"
            ),
        ),
        (
            f"Top-ranked images per digit by {best} (row label: digit: conflicting/shown)",
            report.plot_top_scored(
                images.numpy(), digits, best_scores, conflicting, fig_dir / "top_ranked.png", f"top-ranked by {best}"
            ),
        ),
    ]
