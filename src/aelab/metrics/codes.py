"""What a code is good for: encoding a data set, a linear probe of the labels, a 2-D map, what the decoder
makes of a code moved along one dimension or along a line between two images.

probe_accuracy      logistic regression on standardised codes, fitted on TRAIN codes, scored on TEST codes
validated_probe     the same, its regularisation strength C first chosen on the VALIDATION split
tsne_2d             t-SNE of codes (for figures; never fitted across splits)
traversal_rows      an image, then the decoder's output as one code dimension sweeps its range
interpolation_rows  two real images at the ends, the decoded straight line between their codes in between
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from ._util import eval_mode


@torch.no_grad()
def encode_all(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Codes (N, d_code) of a whole data set, in eval mode, on the data's device."""
    with eval_mode(model):
        return torch.cat([model.encode(xb).flatten(1) for xb in x.split(batch_size)])


@torch.no_grad()
def reconstruct_all(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    with eval_mode(model):
        return torch.cat([model.decode(model.encode(xb)) for xb in x.split(batch_size)])


# the probe's inverse regularisation strengths tried on the validation split: four decades around sklearn's C=1
PROBE_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
DEFAULT_PROBE_C = 1.0  # sklearn's default, used when a run has no validation split to choose on


def probe_accuracy(
    train_codes: np.ndarray,
    train_y: np.ndarray,
    test_codes: np.ndarray,
    test_y: np.ndarray,
    C: float = DEFAULT_PROBE_C,
) -> float:
    """Logistic-regression probe: fitted on standardised train codes, scored on held-out test codes."""
    return _fit_and_score(train_codes, train_y, [C], [(test_codes, test_y)])[0][0][0]


def _as_features(codes: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(codes.reshape(len(codes), -1)), dtype=torch.float64)


def _fit_and_score(
    fit_codes: np.ndarray,
    fit_y: np.ndarray,
    Cs: Sequence[float],
    scored: list[tuple[np.ndarray, np.ndarray]],
    start=None,
) -> tuple[list[list[float]], list[bool], dict]:
    """The probe fitted on (fit_codes, fit_y) at each C of Cs, in ascending order, each fit from the last one's
    solution (a regularisation path), the first from `start` (a (fit, Standardizer) pair of an earlier fit on
    other codes of the same features, moved into these codes' standardisation) or from zero; returns the accuracy on
    each of `scored` for each C (in Cs's order), whether each fit converged (aelab.metrics.logistic), and
    {C: (fit, standardizer)}. The start changes only where L-BFGS begins: the objective is convex, so the
    minimiser is the same."""
    from .logistic import Standardizer, accuracy, fit_logistic

    x = _as_features(fit_codes)
    scale = Standardizer.fit(x)
    x = scale(x)
    targets = [(scale(_as_features(c)), np.asarray(y)) for c, y in scored]
    fits, previous = {}, None if start is None else restandardized(*start, scale)
    for c in sorted(set(Cs)):
        previous = fits[c] = fit_logistic(x, fit_y, c, start=previous)
    accuracies = [[accuracy(fits[c], xs, ys) for xs, ys in targets] for c in Cs]
    return accuracies, [fits[c].converged for c in Cs], {c: (fits[c], scale) for c in fits}


def restandardized(fit, old, new):
    """The same logits in another standardisation: x W + b with x = (raw - m_old) / s_old equals
    ((raw - m_new) / s_new) (diag(s_new / s_old) W) + b + ((m_new - m_old) / s_old) W."""
    ratio = (new.scale / old.scale).to(fit.weight.dtype)
    shift = ((new.mean - old.mean) / old.scale).to(fit.weight.dtype)
    return dataclasses.replace(fit, weight=ratio[:, None] * fit.weight, bias=fit.bias + shift @ fit.weight)


def choose_probe_c(
    codes: np.ndarray, labels: np.ndarray, keep: np.ndarray, held: np.ndarray, grid: Sequence[float] = PROBE_C_GRID
) -> tuple[float, list[float]]:
    """(C, validation accuracy of every C in grid): the probe fitted on codes[keep] and scored on codes[held]
    (the validation split) for each C; the best, the smallest C among equals (the most regularised)."""
    C, scores, _, _ = _choose(codes, labels, keep, held, grid)
    return C, scores


def _choose(codes, labels, keep, held, grid) -> tuple[float, list[float], bool, tuple]:
    accuracies, converged, fits = _fit_and_score(codes[keep], labels[keep], grid, [(codes[held], labels[held])])
    scores = [a[0] for a in accuracies]
    best = max(scores)
    C = min(c for c, s in zip(grid, scores) if s == best)
    return C, scores, all(converged), fits[C]


def validated_probe(
    train_codes: np.ndarray,
    train_y: np.ndarray,
    test_codes: np.ndarray,
    test_y: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
    grid: Sequence[float] = PROBE_C_GRID,
) -> dict:
    """The probe with its C chosen on the validation split, then refitted on all train codes (validation
    included) with that C and scored once on the test codes. `validation` = (kept, held) indices into the train
    codes, or None: then C is sklearn's default 1 and nothing is chosen.
    Returns {"accuracy", "C", "grid", "validation_accuracy" (one per grid point, or None), "converged" (every fit
    reached the solver's tolerance; aelab.metrics.logistic)}."""
    labels = np.asarray(train_y)
    if validation is not None:
        keep, held = validation
        if len(np.unique(labels[keep])) < 2 or len(held) == 0:
            validation = None  # nothing to fit or to score on: no choice to make
    converged, chosen = True, None
    if validation is None:
        C, scores, grid = DEFAULT_PROBE_C, None, [DEFAULT_PROBE_C]
    else:
        C, scores, converged, chosen = _choose(train_codes, labels, *validation, grid)
    # the refit on every train code starts from the chosen fit on train minus validation: nearly its solution
    ((accuracy,),), (refit_converged,), _ = _fit_and_score(train_codes, labels, [C], [(test_codes, test_y)], chosen)
    return {
        "accuracy": accuracy,
        "C": C,
        "grid": list(grid),
        "validation_accuracy": scores,
        "converged": bool(converged and refit_converged),
    }


TSNE_ITERATIONS = 500  # sklearn's default is 1000: the map is settled by 500, at half the cost


class _TsneIterations:
    """A stand-in for stdout while sklearn's TSNE runs with verbose=2: it moves a progress bar to the iteration
    number of each "[t-SNE] Iteration N: ..." line (printed every 50 iterations) and drops the rest."""

    def __init__(self, bar):
        self.bar = bar

    def write(self, text: str) -> int:
        for n in re.findall(r"\[t-SNE\] Iteration (\d+)", text):
            self.bar.update(min(int(n), self.bar.total) - self.bar.n)
        return len(text)

    def flush(self) -> None:
        pass


def tsne_2d(codes: np.ndarray, seed: int = 0, progress: str | None = None) -> np.ndarray:
    """2-D t-SNE of codes. `progress`: the label of a tqdm bar on stderr (the run's name); None for no bar."""
    from sklearn.manifold import TSNE

    from ..progress import _is_terminal

    progress = progress if _is_terminal(sys.stderr) else None  # elsewhere the caller's phase line and heartbeat
    perplexity = min(30.0, max(2.0, (len(codes) - 1) / 3))
    tsne = TSNE(
        n_components=2,
        init="pca",
        random_state=seed,
        perplexity=perplexity,
        max_iter=TSNE_ITERATIONS,
        verbose=2 if progress else 0,  # only prints: the map is the same
    )
    if not progress:
        return tsne.fit_transform(codes.astype(np.float32))
    from tqdm import tqdm

    with tqdm(total=TSNE_ITERATIONS, desc=f"{progress}: t-SNE", unit="it", file=sys.stderr, leave=False) as bar:
        with contextlib.redirect_stdout(_TsneIterations(bar)):
            embedding = tsne.fit_transform(codes.astype(np.float32))
        bar.update(bar.total - bar.n)  # sklearn may stop early, when the map no longer changes
    return embedding


@torch.no_grad()
def traversal_rows(model: nn.Module, image: torch.Tensor, codes: np.ndarray, dims: Sequence[int], steps: int = 9):
    """One row per latent dimension d in `dims`: the real `image` (C, H, W), unchanged, then the decoder's
    output for the image's code with z_d set to the 2nd ... 98th percentile of dimension d over `codes` (the
    test codes), in `steps` even steps: the range the data use, around this image's other coordinates.
    Returns (len(dims), 1 + steps, C, H, W)."""
    values = np.quantile(codes[:, list(dims)], np.linspace(0.02, 0.98, steps), axis=0).T  # (len(dims), steps)
    with eval_mode(model):
        z = model.encode(image[None]).flatten(1)
        rows = []
        for d, row_values in zip(dims, values):
            path = z.repeat(steps, 1)
            path[:, d] = torch.as_tensor(row_values, dtype=z.dtype, device=z.device)
            rows.append(torch.cat([image[None], model.decode(path).to(image.dtype)]))
    return torch.stack(rows)


@torch.no_grad()
def interpolation_rows(model: nn.Module, x: torch.Tensor, pairs: Sequence[tuple[int, int]], steps: int = 10):
    """One row per pair (a, b) of indices into x: the real x[a], the decoder's output along the straight line
    from code(x[a]) to code(x[b]) in `steps` points (both ends included), the real x[b]. The real images sit
    beside the decoded path, so one sees what the ends of the path fail to reconstruct.
    Returns (len(pairs), steps + 2, C, H, W)."""
    t = torch.linspace(0, 1, steps, dtype=x.dtype, device=x.device)[:, None]
    rows = []
    with eval_mode(model):
        for a, b in pairs:
            z_a, z_b = model.encode(x[a][None]).flatten(1), model.encode(x[b][None]).flatten(1)
            path = model.decode((1 - t) * z_a + t * z_b).to(x.dtype)
            rows.append(torch.cat([x[a][None], path, x[b][None]]))
    return torch.stack(rows)
