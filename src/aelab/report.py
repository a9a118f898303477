"""Figures (PNG) and reports: report.html (self-contained, PNGs embedded) and report.md, its text twin."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402

from . import runs  # noqa: E402
from .runs import loss_unit  # noqa: E402,F401 (report.loss_unit: the name the recipes use)

# Run, group and class names come from folder names and untrusted files: a '$' in one must stay a '$', never
# start matplotlib's mathtext (which fails on unbalanced TeX). Every plotting function below runs with it off,
# without changing the rcParams of a user's own figures.
plain_text = matplotlib.rc_context({"text.parse_math": False})


# ---------------------------------------------------------------- figures
def image_mosaic(rows: Sequence[np.ndarray], pad: int = 1) -> np.ndarray:
    """Stack rows of images (each (n, C, H, W) in [0, 1]) into one (H', W', 3) array."""
    rows = [np.asarray(r, dtype=np.float32) for r in rows]
    n = max(len(r) for r in rows)
    c, h, w = rows[0].shape[1:]
    out = np.ones(((h + pad) * len(rows) + pad, (w + pad) * n + pad, 3), dtype=np.float32)
    for i, r in enumerate(rows):
        for j, img in enumerate(r):
            img = np.clip(img, 0, 1)
            img = np.repeat(img, 3, 0) if c == 1 else img[:3]
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = img.transpose(1, 2, 0)
    return out


class _PlainLogFormatter(mticker.LogFormatter):
    """Log-axis tick labels as plain numbers ('0.01', '1', '100', '1e-05'). Matplotlib's default writes them as
    mathtext ('$\\mathdefault{10^{0}}$'), which the figures here, drawn with mathtext off (plain_text), would print
    raw."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


def readable_ticks(fig) -> None:
    """Every log axis of `fig` labelled with plain numbers (_PlainLogFormatter; minor ticks labelled only where
    matplotlib would label them, when the axis spans few decades)."""
    for ax in fig.axes:
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                axis.set_major_formatter(_PlainLogFormatter())
                axis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


def integer_ticks(axis) -> None:
    """Ticks at whole numbers only (epochs, dimensions): never 2.5 epochs."""
    axis.set_major_locator(mticker.MaxNLocator(integer=True))


def save_png(fig, path: str | Path) -> Path:
    path = Path(path)
    readable_ticks(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    runs.atomic_write_bytes(path, buf.getvalue())
    return path


@plain_text
def plot_image_rows(rows: Sequence[np.ndarray], labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    mosaic = image_mosaic(rows)
    fig, ax = plt.subplots(figsize=(min(14, 0.6 + mosaic.shape[1] / 30), 0.4 + mosaic.shape[0] / 30))
    ax.imshow(mosaic, interpolation="nearest")
    h = (mosaic.shape[0] - 1) / len(rows)
    ax.set_yticks([h * (i + 0.5) for i in range(len(rows))], labels)
    ax.set_xticks([])
    ax.set_title(title)
    return save_png(fig, path)


@plain_text
def plot_scatter(
    points: np.ndarray,
    colours: np.ndarray,
    path: str | Path,
    title: str,
    colour_name: str = "label",
    class_names: Sequence[str] | None = None,
) -> Path:
    """2-D points coloured by class, one colour per class (as many as there are classes, not always ten), the
    colour bar labelled with the class names when given (a folder's class folders), else the numbers."""
    n = len(class_names) if class_names else max(int(np.max(colours)) + 1 if len(colours) else 1, 1)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20", n)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    sc = ax.scatter(points[:, 0], points[:, 1], c=colours, cmap=cmap, s=4, vmin=-0.5, vmax=n - 0.5)
    bar = fig.colorbar(sc, ax=ax, ticks=range(n), label=colour_name)
    if class_names:
        bar.ax.set_yticklabels([str(c) for c in class_names])
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_png(fig, path)


def curve_panels(names, units: dict[str, str] | None = None) -> dict[str, list[str]]:
    """The panels of `plot_curves`: unit -> the names drawn on it, in order. A name without a unit gets the
    generic "loss per image" panel; two names share a panel only when their units are the same string."""
    units = units or {}
    panels: dict[str, list[str]] = {}
    for name in names:
        panels.setdefault(units.get(name, "loss per image"), []).append(name)
    return panels


@plain_text
def plot_side_by_side(
    panels: Sequence[tuple[str, np.ndarray]], labels: np.ndarray, path: str | Path, label: str = "label"
) -> Path:
    """2-D points of the same items in several panels (e.g. PCA's first two components beside a 2-D code),
    coloured by class: the layout of Hinton & Salakhutdinov's Fig. 3."""
    import matplotlib.pyplot as plt

    classes = int(labels.max()) + 1 if len(labels) else 1
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for ax, (title, pts) in zip(axes[0], panels):
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=labels, cmap="tab10", s=4, vmin=-0.5, vmax=classes - 0.5)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes[0].tolist(), ticks=range(classes), label=label)
    return save_png(fig, path)


SPLIT_STYLES = {"train": "-", "val": ":", "test": "--"}  # one line style per split, the same in every figure


@plain_text
def plot_curves(
    histories: dict[str, list[dict]],
    path: str | Path,
    keys=("train_loss", "val_loss", "test_loss"),
    title: str = "loss per epoch",
    units: dict[str, str] | None = None,
    bands: dict[str, dict[str, list[tuple[int, float, float]]]] | None = None,
) -> Path:
    """Loss per epoch of each named history; `units` maps a name to its loss unit (`loss_unit`): one panel per
    unit, so that squared errors and nats are never drawn on one axis. One colour per name (a run or a group),
    one line style per split (SPLIT_STYLES: train solid, validation dotted, test dashed). `bands[name][key]`:
    (epoch, low, high) points shaded around that line in its colour (a group's spread over its seeds)."""
    panels = curve_panels(histories, units)
    colours = {name: f"C{i % 10}" for i, name in enumerate(histories)}  # the same colour in every panel
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (unit, names) in zip(axes[0], panels.items()):
        for name in names:
            rows = [h for h in histories[name] if "train_loss" in h]
            for key in keys:
                points = [(h["epoch"], h[key]) for h in rows if key in h]
                if not points:  # e.g. val_loss of a run without a validation split
                    continue
                style = SPLIT_STYLES.get(key.split("_")[0], "-.")
                ax.plot(*zip(*points), label=f"{name} {key}", color=colours[name], linestyle=style)
                band = (bands or {}).get(name, {}).get(key)
                if band:
                    epochs, low, high = zip(*band)
                    ax.fill_between(epochs, low, high, color=colours[name], alpha=0.15, linewidth=0)
            kept = [h["best_epoch"] for h in rows if h.get("best_epoch")]
            if kept:  # early stopping: the epoch whose weights the run keeps
                ax.axvline(kept[-1], color=colours[name], linewidth=0.8, linestyle="-.")
        ax.set_xlabel("epoch")
        integer_ticks(ax.xaxis)
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize=8)
    return save_png(fig, path)


@plain_text
def plot_terms(history: list[dict], terms: dict[str, str], path: str | Path, ylabel: str = "", title: str = "") -> Path:
    """One panel per term of a history (key -> panel title), e.g. a VAE's reconstruction and KL terms: terms of
    very different sizes each get their own scale. Panel titles are wrapped to their panel's width."""
    rows = [h for h in history if all(key in h for key in terms)]
    fig, axes = plt.subplots(1, len(terms), figsize=(4.0 * len(terms), 3.6), squeeze=False, layout="constrained")
    for ax, (key, panel_title) in zip(axes[0], terms.items()):
        ax.plot([h["epoch"] for h in rows], [h[key] for h in rows], marker="." if len(rows) < 30 else None)
        ax.set_xlabel("epoch")
        integer_ticks(ax.xaxis)
        ax.set_ylabel(ylabel)
        ax.set_title(textwrap.fill(f"{panel_title} ({key})", 28), fontsize=10)
    if title:
        fig.suptitle(title)
    return save_png(fig, path)


@plain_text
def plot_kl_per_dimension(kl: Sequence[float], threshold: float, path: str | Path) -> Path:
    """Bar chart of the KL of each latent dimension (nats, averaged over images); the active ones (KL above
    `threshold`) in colour, the threshold as a line. Log scale: a collapsed dimension sits orders below."""
    kl = np.asarray(kl, dtype=np.float64)
    active = kl > threshold
    floor = threshold / 100  # where bars of (near) zero KL start on the log axis
    fig, ax = plt.subplots(figsize=(max(4.5, min(12, 0.25 * len(kl) + 2)), 3.6))
    ax.bar(np.arange(len(kl)), np.maximum(kl, floor), bottom=0, color=np.where(active, "tab:blue", "0.7"))
    ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"{threshold:g} nats")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xlabel("latent dimension")
    integer_ticks(ax.xaxis)
    ax.set_ylabel("KL(q(z_j|x) || N(0,1)), nats")
    ax.set_title(f"{int(active.sum())} of {len(kl)} latent dimensions active")
    ax.legend(fontsize=8)
    return save_png(fig, path)


@plain_text
def plot_roc_pr(curves: dict[str, dict], path: str | Path, title: str = "", positive_rate: float | None = None) -> Path:
    """ROC (left) and precision-recall (right) curves, one line per name; `curves[name]` has arrays fpr, tpr,
    recall, precision (e.g. from aelab.metrics.ranking.mean_curves) and optional auroc / average_precision for
    the legend. `positive_rate` draws the chance level of the precision."""
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, c in curves.items():
        roc.plot(c["fpr"], c["tpr"], label=name + (f" ({c['auroc']:.3f})" if "auroc" in c else ""))
        ap = f" ({c['average_precision']:.3f})" if "average_precision" in c else ""
        pr.plot(c["recall"], c["precision"], label=name + ap)
    roc.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="chance")
    if positive_rate is not None:
        pr.axhline(positive_rate, color="0.6", linestyle=":", label="chance")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (legend: AUROC)")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall (legend: AP)", ylim=(0, 1.02))
    for ax in (roc, pr):
        ax.legend(fontsize=7)
        ax.set_xlim(0, 1)
    if title:
        fig.suptitle(title)
    return save_png(fig, path)


@plain_text
def plot_spectra(spectra: dict[str, list[float]], path: str | Path) -> Path:
    """Mean sorted singular values of J_f(x) per model (log scale)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, values in spectra.items():
        ax.semilogy(
            range(1, len(values) + 1),
            [max(v, 1e-12) for v in values],
            label=label,
            linestyle="-" if label.upper().startswith("CAE") else "--",
        )
    ax.set_xlabel("rank of the singular value")
    ax.set_ylabel("singular value of J_f(x)")
    ax.set_title("Jacobian spectrum of the encoder on test points")
    ax.legend(fontsize=8)
    return save_png(fig, path)


@plain_text
def plot_validation_sweeps(sweeps: dict[str, dict], path: str | Path) -> Path:
    """One panel per model family: the validation score of each value of its setting, the chosen one circled.
    `sweeps` maps a family to {"option", "grid", "scores", "chosen_index", "ylabel"}; a grid of positive
    values spanning more than a factor 10 is drawn on a log axis."""
    fig, axes = plt.subplots(1, len(sweeps), figsize=(3.2 * len(sweeps), 3.2), squeeze=False, sharey=True)
    for ax, (family, sweep) in zip(axes[0], sweeps.items()):
        grid, scores, best = sweep["grid"], sweep["scores"], sweep["chosen_index"]
        ax.plot(grid, scores, marker="o")
        ax.plot([grid[best]], [scores[best]], marker="o", markersize=14, fillstyle="none", color="red", label="chosen")
        if min(grid) > 0 and max(grid) / min(grid) > 10:
            ax.set_xscale("log")
        ax.set_xlabel(sweep["option"])
        ax.set_title(family)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(next(iter(sweeps.values()))["ylabel"])
    return save_png(fig, path)


@plain_text
def plot_intervals(points: dict[str, dict], label: str, path: str | Path) -> Path:
    """One row per method: its mean over seeds (bar end), 95% interval (whisker) and each seed's value (dots).
    `points` maps a method to aelab.metrics.intervals.summarize's dict; one seed draws no whisker."""
    names = list(points)
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(names) + 1.2))
    for i, name in enumerate(names):
        s = points[name]
        ax.plot(s["values"], [i] * len(s["values"]), "o", color="0.6", markersize=3, zorder=1)
        if s["ci95"] is not None:
            lo, hi = s["ci95"]
            ax.errorbar(s["mean"], i, xerr=[[s["mean"] - lo], [hi - s["mean"]]], fmt="none", ecolor="k", capsize=4)
        ax.plot([s["mean"]], [i], "D", color="C0", zorder=2)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)
    return save_png(fig, path)


@plain_text
def plot_series_intervals(
    x_labels: Sequence[str],
    series: dict[str, list[dict]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str,
    scale: float = 1.0,
    dashed: Sequence[str] = (),
) -> Path:
    """One line per name over the x positions: each point a mean with its 95% interval (aelab.metrics.intervals.
    summarize's dict; no whisker without one), multiplied by `scale`; the names in `dashed` drawn dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, stats in series.items():
        mean = np.array([x["mean"] for x in stats])
        err = np.array([[x["mean"] - lo, hi - x["mean"]] for x in stats for lo, hi in [x["ci95"] or [x["mean"]] * 2]]).T
        ax.errorbar(
            range(len(x_labels)),
            scale * mean,
            yerr=scale * err,
            capsize=3,
            marker="o",
            linestyle="--" if name in dashed else "-",
            label=name,
        )
    ax.set_xticks(range(len(x_labels)), list(x_labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return save_png(fig, path)


@plain_text
def plot_palette_scatter(points: np.ndarray, rgb: np.ndarray, ringed: np.ndarray, path: str | Path, title: str) -> Path:
    """Like plot_scatter, but each point drawn in its own RGB colour (rgb: (N, 3) in [0, 1]) on a dark ground,
    the points of `ringed` (a boolean mask) circled in white."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.set_facecolor("0.2")  # the colours may include light grey
    ax.scatter(points[:, 0], points[:, 1], c=rgb, s=4)
    ax.scatter(points[ringed, 0], points[ringed, 1], s=40, facecolors="none", edgecolors="white", linewidths=0.8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_png(fig, path)


@plain_text
def plot_top_scored(
    images: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    positive: np.ndarray,
    path: str | Path,
    title: str = "",
    per_class: int = 10,
) -> Path:
    """One row per class: its `per_class` highest-scored images (stable order on ties), the row labelled
    "class: positives among them/shown"."""
    rows, labels = [], []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        top = idx[np.argsort(-scores[idx], kind="stable")[:per_class]]
        rows.append(images[top])
        labels.append(f"{c}: {int(positive[top].sum())}/{len(top)}")
    return plot_image_rows(rows, labels, path, title)


@plain_text
def detection_curve_figures(
    scores: dict[str, np.ndarray], classes: np.ndarray, positive: np.ndarray, graded: dict, best: str, fig_dir: Path
) -> list[tuple[str, Path]]:
    """ROC and precision-recall curves of a detection graded within each class (aelab.metrics.ranking.
    class_metrics's `graded[name]`): every method's curves averaged over the classes, then the best method's
    curve in each class."""
    from .metrics.ranking import mean_curves

    positive_rate = float(np.mean([positive[classes == c].mean() for c in np.unique(classes)]))
    curves = {
        name: {
            **mean_curves(s, classes, positive),
            "auroc": graded[name]["mean"]["auroc"],
            "average_precision": graded[name]["mean"]["average_precision"],
        }
        for name, s in scores.items()
    }
    per_class = {}
    for row in graded[best]["per_class"]:
        m = classes == row["class"]
        if 0 < row["n_conflicting"] < row["n"]:
            per_class[f"digit {row['class']}"] = {
                **mean_curves(scores[best][m], classes[m], positive[m]),
                "auroc": row["auroc"],
                "average_precision": row["average_precision"],
            }
    figures = [
        (
            "ROC and precision-recall curves of each method, averaged over the digit classes (vertically: the mean "
            "true positive rate at each false positive rate, the mean precision at each recall); dotted: chance",
            plot_roc_pr(curves, fig_dir / "roc_pr.png", "every method, mean over digit classes", positive_rate),
        )
    ]
    if per_class:
        figures.append(
            (
                f"ROC and precision-recall curves of the best method ({best}) in each digit class",
                plot_roc_pr(per_class, fig_dir / "roc_pr_best.png", f"{best}, per digit class"),
            )
        )
    return figures


@plain_text
def plot_bit_usage(f: np.ndarray, path: str | Path) -> Path:
    """Histogram of f_j, the fraction of train images with bit j on."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(f, bins=np.linspace(0, 1, 41))
    ax.set_xlabel("fraction of train images with the bit on")
    ax.set_ylabel("bits")
    ax.set_title(f"bit usage ({len(f)} bits)")
    return save_png(fig, path)


# ---------------------------------------------------------------- tables
def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def md_escape(text: str) -> str:
    """Text for report.md: one line; a `<` that would open an HTML tag and an `&` that would start an entity
    escaped (a Markdown viewer renders raw HTML), every other character as it is, so that `R&D`, `a < b` and
    `p@10` read the same in a terminal as in a viewer; `|`, backticks and the `]` of `](` backslash-escaped (a
    table cell, a code span, a link or an image from an untrusted name)."""
    text = " ".join(str(text).split())
    text = re.sub(r"\\(?=[!-/:-@\[-`{-~])", r"\\\\", text)  # a backslash that would escape what follows
    text = re.sub(r"&(?=#?[A-Za-z0-9]+;)", "&amp;", text)
    text = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)
    # `](`: what closes a link's or an image's text; escaped, no [text](url) becomes a link or an <img>
    return text.replace("|", "\\|").replace("`", "\\`").replace("](", "\\](")


MAX_TABLE_COLUMNS = 8  # wider tables are transposed or split, so that a report never scrolls sideways


def table_blocks(rows: list[dict], max_columns: int = MAX_TABLE_COLUMNS) -> list[list[dict]]:
    """The tables that show `rows`, none wider than max_columns: the rows as they are when narrow enough;
    transposed (one row per column, one column per row, headed by its first cell) when there are many columns
    but few rows, as in a run's metric table; otherwise split into narrower tables that repeat the first column."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    if len(cols) <= max_columns:
        return [rows]
    key, rest = cols[0], cols[1:]
    if len(rows) < max_columns:
        heads = [_fmt(r.get(key, "")) for r in rows]
        heads = [h if heads.count(h) == 1 and h != key else f"{h} ({i + 1})" for i, h in enumerate(heads)]
        return [[{key: c, **{h: r.get(c, "") for h, r in zip(heads, rows)}} for c in rest]]
    n_tables = math.ceil(len(rest) / (max_columns - 1))
    step = math.ceil(len(rest) / n_tables)  # tables of even widths, not a full one and a sliver
    return [
        [{key: r.get(key, ""), **{c: r.get(c, "") for c in rest[i : i + step]}} for r in rows]
        for i in range(0, len(rest), step)
    ]


def markdown_table(rows: list[dict]) -> str:
    tables = []
    for block in table_blocks(rows) if rows else []:
        cols = list(dict.fromkeys(k for r in block for k in r))
        lines = ["| " + " | ".join(md_escape(c) for c in cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(md_escape(_fmt(r.get(c, ""))) for c in cols) + " |" for r in block]
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def html_table(rows: list[dict]) -> str:
    tables = []
    for block in table_blocks(rows) if rows else []:
        cols = list(dict.fromkeys(k for r in block for k in r))
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in block
        )
        tables.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "".join(tables)


# ---------------------------------------------------------------- the report
# Tables wrap their cells (overflow-wrap: a long metric name breaks rather than widening the page); figures
# sit in a grid, two to a row on a wide screen, and a figure wider than a grid cell spans the whole row.
GRID_CELL_PX = 640  # a PNG at most this wide is a grid cell (a map, a curve); wider ones (mosaics) span the row
_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;max-width:100%}"
    "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right;overflow-wrap:anywhere}"
    "td:first-child,th:first-child{text-align:left}"
    "th{background:#eee}img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"
    ".figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:1em 1.5em;align-items:start}"
    ".figures figure.wide{grid-column:1/-1}"
    "figure{margin:1em 0}figcaption{font-weight:bold}"
)


def png_width(data: bytes) -> int:
    """Width in pixels of a PNG, from its IHDR chunk (bytes 16-20)."""
    return int.from_bytes(data[16:20], "big")


def write_report(
    out_dir: str | Path,
    title: str,
    tables: list[tuple[str, list[dict]]],
    figures: list[tuple[str, str | Path]],
    notes: Sequence[str] = (),
    config: dict | None = None,
    name: str = "report",
    numbers_first: bool = False,
    lead: Sequence[str] = (),
) -> Path:
    """Write out_dir/{name}.html (PNGs embedded as base64) and out_dir/{name}.md; return the HTML path.
    numbers_first: the tables before the notes (a one-seed report: the numbers are what is read first).
    lead: the lines right under the title, before everything else (the reading of the table, its warnings)."""
    out_dir = Path(out_dir)
    md = [f"# {md_escape(title)}", ""]
    h = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    for line in lead:
        md.extend([md_escape(line), ""])
        h.append(f"<p class='lead'><strong>{html.escape(line)}</strong></p>")

    def write_notes() -> None:
        for note in notes:
            md.extend([md_escape(note), ""])
            h.append(f"<p>{html.escape(note)}</p>")

    if not numbers_first:
        write_notes()
    for caption, rows in tables:
        md += [f"## {md_escape(caption)}", "", markdown_table(rows), ""]
        h.append(f"<h2>{html.escape(caption)}</h2>{html_table(rows)}")
    if numbers_first:
        write_notes()
    if figures:
        h.append("<div class='figures'>")
    for caption, path in figures:
        path = Path(path)
        rel = path.relative_to(out_dir) if path.is_relative_to(out_dir) else path
        md += [f"## {md_escape(caption)}", "", f"![{md_escape(caption)}]({rel})", ""]
        data = path.read_bytes()
        wide = " class='wide'" if png_width(data) > GRID_CELL_PX else ""
        h.append(
            f"<figure{wide}><figcaption>{html.escape(caption)}</figcaption>"
            f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'></figure>"
        )
    if figures:
        h.append("</div>")
    if config is not None:
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
        md += ["## Configuration", "", f"{fence}json", text, fence, ""]  # literal in a fence: nothing to escape
        h.append(f"<h2>Configuration</h2><pre>{html.escape(text)}</pre>")
    h.append("</body></html>")
    runs.atomic_write_text(out_dir / f"{name}.md", "\n".join(md))
    runs.atomic_write_text(out_dir / f"{name}.html", "\n".join(h))
    return out_dir / f"{name}.html"
