"""The figures of one evaluated run (aelab.evaluate draws them into the run's figures/ folder): each function draws
one figure with aelab.report and returns its (caption, path) for the run's report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import report
from .metrics.codes import interpolation_rows, traversal_rows
from .metrics.likelihood import ACTIVE_UNIT_NATS

TRAVERSED_DIMS = 8  # rows of the latent traversal figure


def reconstructions(test_x, test_hat, shown: list[int], fig_dir: Path) -> tuple[str, Path]:
    return (
        "Test images (top) and reconstructions (bottom)",
        report.plot_image_rows(
            [test_x[shown].numpy(), test_hat[shown]], ["input", "recon"], fig_dir / "reconstructions.png"
        ),
    )


def loss_curves(name: str, history: list, config: dict, fig_dir: Path) -> tuple[str, Path]:
    return (
        f"Loss curves, {report.loss_unit(config)}",
        report.plot_curves({name: history}, fig_dir / "loss.png", units={name: report.loss_unit(config)}),
    )


def elbo_terms(history: list, fig_dir: Path) -> tuple[str, Path]:
    return (
        "The two terms of the negative ELBO on the test images, per epoch (nats per image)",
        report.plot_terms(
            history,
            {"test_recon": "reconstruction: -E_q log p(x|z)", "test_kl": "KL(q(z|x) || p(z))"},
            fig_dir / "elbo_terms.png",
            ylabel="nats per image",
        ),
    )


def tsne_map(name: str, emb, labels, class_names, fig_dir: Path) -> tuple[str, Path]:
    return (
        f"t-SNE of {len(emb)} test codes, coloured by label",
        report.plot_scatter(emb, labels, fig_dir / "tsne.png", f"{name}: test codes", class_names=class_names),
    )


def kl_per_dimension(kl: list[float], fig_dir: Path) -> tuple[str, Path]:
    return (
        f"KL per latent dimension, mean over the test images (active: > {ACTIVE_UNIT_NATS} nats)",
        report.plot_kl_per_dimension(kl, ACTIVE_UNIT_NATS, fig_dir / "kl_per_dimension.png"),
    )


def samples(model, seed: int, fig_dir: Path) -> tuple[str, Path]:
    gen = torch.Generator().manual_seed(seed)
    drawn = model.sample(32, generator=gen).cpu().numpy()
    return (
        "Samples from the prior",
        report.plot_image_rows([drawn[:16], drawn[16:]], ["", ""], fig_dir / "samples.png"),
    )


def traversals(model, image, test_codes, kl: list[float] | None, fig_dir: Path) -> tuple[str, Path]:
    """One image's code with one dimension at a time set to the 2nd to 98th percentile of that dimension."""
    if kl is not None:  # the VAE: its most informative dimensions, most KL first
        dims = [int(d) for d in np.argsort(kl, kind="stable")[::-1][:TRAVERSED_DIMS]]
        labels = [f"z{d} ({kl[d]:.2g} nats)" for d in dims]
        which = "the dimensions of highest KL"
    else:
        dims = list(range(min(TRAVERSED_DIMS, test_codes.shape[1])))
        labels = [f"z{d}" for d in dims]
        which = "the first code dimensions"
    rows = traversal_rows(model, image, test_codes, dims)
    return (
        f"Latent traversals of {which}: the test image (first column), then its code with one dimension "
        "set to the 2nd to 98th percentile of that dimension over the test codes",
        report.plot_image_rows(list(rows.numpy()), labels, fig_dir / "traversals.png"),
    )


def interpolations(model, test_x, test_y, shown: list[int], names, fig_dir: Path) -> tuple[str, Path]:
    """Decoded straight lines between the codes of pairs of the images shown (`names`: the class names, or None)."""
    label = (lambda y: names[int(y)]) if names else (lambda y: str(int(y)))  # noqa: E731
    pairs = [(shown[a], shown[b]) for a, b in [(0, 1), (3, 8), (4, 9), (2, 7)] if b < len(shown)]
    rows = interpolation_rows(model, test_x, pairs)
    return (
        "Interpolations between test images: the two real images at the ends, the decoded straight line "
        "between their codes in between",
        report.plot_image_rows(
            list(rows.numpy()),
            [f"{label(test_y[a])}→{label(test_y[b])}" for a, b in pairs],
            fig_dir / "interpolation.png",
        ),
    )


def jacobian_spectrum(name: str, spectrum, points: int, fig_dir: Path) -> tuple[str, Path]:
    return (
        f"Singular values of the encoder's Jacobian, mean over {points} test points",
        report.plot_spectra({name: spectrum}, fig_dir / "jacobian_spectrum.png"),
    )


def bit_usage(usage, fig_dir: Path) -> tuple[str, Path]:
    return ("Bit usage over the train images", report.plot_bit_usage(usage, fig_dir / "bit_usage.png"))
