"""Figures (PNG) and reports: report.html (self-contained, PNGs embedded) and report.md, its text twin."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import runs  # noqa: E402


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


def save_png(fig, path: str | Path) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    runs.atomic_write_bytes(path, buf.getvalue())
    return path


def plot_image_rows(rows: Sequence[np.ndarray], labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    mosaic = image_mosaic(rows)
    fig, ax = plt.subplots(figsize=(min(14, 0.6 + mosaic.shape[1] / 30), 0.4 + mosaic.shape[0] / 30))
    ax.imshow(mosaic, interpolation="nearest")
    h = (mosaic.shape[0] - 1) / len(rows)
    ax.set_yticks([h * (i + 0.5) for i in range(len(rows))], labels)
    ax.set_xticks([])
    ax.set_title(title)
    return save_png(fig, path)


def plot_scatter(
    points: np.ndarray, colours: np.ndarray, path: str | Path, title: str, colour_name: str = "label"
) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5.5))
    sc = ax.scatter(points[:, 0], points[:, 1], c=colours, cmap="tab10", s=4, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label=colour_name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_png(fig, path)


def loss_unit(config: dict) -> str:
    """The unit of a run's loss per image, from its config.json: curves in different units never share an axis.

    Reconstruction losses are sums over pixels (aelab.models.ae.reconstruction_loss); a VAE's loss is a negative
    ELBO in nats (Bernoulli or Gaussian likelihood); a loss with a penalty (CAE, weight decay) is still in the
    unit of its reconstruction term."""
    options = config.get("model_options") or {}
    if config.get("model") == "vae":
        return f"nats per image ({options.get('likelihood', 'bce')} likelihood)"
    if options.get("loss", "bce") == "mse":
        return "squared error per image"
    return "cross-entropy per image (nats)"


def plot_curves(
    histories: dict[str, list[dict]],
    path: str | Path,
    keys=("train_loss", "test_loss"),
    title: str = "loss per epoch",
    units: dict[str, str] | None = None,
) -> Path:
    """Loss per epoch of each named history; `units` maps a name to its loss unit (`loss_unit`): one panel per
    unit, so that squared errors and nats are never drawn on one axis."""
    units = units or {}
    panels = list(dict.fromkeys(units.get(name, "loss per image") for name in histories))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, unit in zip(axes[0], panels):
        for name, history in histories.items():
            if units.get(name, "loss per image") != unit:
                continue
            rows = [h for h in history if "train_loss" in h]
            for key in keys:
                ax.plot(
                    [h["epoch"] for h in rows],
                    [h[key] for h in rows],
                    label=f"{name} {key}",
                    linestyle="-" if key.startswith("train") else "--",
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize=8)
    return save_png(fig, path)


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
    """Text for report.md: HTML escaped as in report.html (a Markdown viewer renders raw HTML), one line,
    and no character that would end a table cell or a code fence."""
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|").replace("`", "&#96;")


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(md_escape(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(md_escape(_fmt(r.get(c, ""))) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def html_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------- the report
_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
    "th{background:#eee}img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"
    "figure{margin:1.5em 0}figcaption{font-weight:bold}"
)


def write_report(
    out_dir: str | Path,
    title: str,
    tables: list[tuple[str, list[dict]]],
    figures: list[tuple[str, str | Path]],
    notes: Sequence[str] = (),
    config: dict | None = None,
    name: str = "report",
) -> Path:
    """Write out_dir/{name}.html (PNGs embedded as base64) and out_dir/{name}.md; return the HTML path."""
    out_dir = Path(out_dir)
    md = [f"# {md_escape(title)}", ""]
    h = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    for note in notes:
        md += [md_escape(note), ""]
        h.append(f"<p>{html.escape(note)}</p>")
    for caption, rows in tables:
        md += [f"## {md_escape(caption)}", "", markdown_table(rows), ""]
        h.append(f"<h2>{html.escape(caption)}</h2>{html_table(rows)}")
    for caption, path in figures:
        path = Path(path)
        rel = path.relative_to(out_dir) if path.is_relative_to(out_dir) else path
        md += [f"## {md_escape(caption)}", "", f"![{md_escape(caption)}]({rel})", ""]
        b64 = base64.b64encode(path.read_bytes()).decode()
        h.append(
            f"<figure><figcaption>{html.escape(caption)}</figcaption>"
            f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'></figure>"
        )
    if config is not None:
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        md += ["## Configuration", "", "```json", html.escape(text, quote=False).replace("`", "&#96;"), "```", ""]
        h.append(f"<h2>Configuration</h2><pre>{html.escape(text)}</pre>")
    h.append("</body></html>")
    runs.atomic_write_text(out_dir / f"{name}.md", "\n".join(md))
    runs.atomic_write_text(out_dir / f"{name}.html", "\n".join(h))
    return out_dir / f"{name}.html"
