"""Detection scores: finding bias-conflicting samples without bias labels.

Setting (ColoredMNIST, `aelab.data.colored`): in every digit class most training images carry the class
colour ("bias-aligned"), a few carry another colour ("bias-conflicting"). Every scoring function here
receives images (or codes computed from images) and DIGIT labels only -- never colour labels -- and returns
one score per sample, higher = more likely conflicting. Colour labels enter only `class_metrics`, which
grades the scores. Scores are compared within a class (AUROC etc. per digit), so a score needs only to
rank the members of one class correctly.

Scoring methods
    reconstruction error   sum_i (x_i - x_hat_i)^2 of an autoencoder trained on all images: a rare
                           (digit, colour) combination is modelled worse (Hinton & Salakhutdinov 2006's
                           recon_sse unit; reconstruction-based outlier scores, e.g. Japkowicz et al. 1995).
    kNN distance           mean Euclidean distance from a representation to its k nearest neighbours of the
                           SAME digit (self excluded); the conflicting images of a class have few neighbours
                           of their colour in it (kNN outlier score, Ramaswamy, Rastogi & Shim 2000). Used on
                           the autoencoder's codes and on the biased classifier's log-probabilities.
    Gaussian code NLL      -log N(z; mu_y, Sigma_y + eps I), one Gaussian per digit fitted on its codes.
    biased classifier      Learning from Failure (Nam, Cha, Ahn, Lee & Shin, NeurIPS 2020;
                           aelab.debias.biased): an MLP trained on the digit labels with the Generalized Cross Entropy
                               GCE(p, y) = (1 - p_y^q) / q,   q in (0, 1]   (Zhang & Sabuncu 2018)
                           whose gradient is p_y^q times the CE gradient, so it weights the samples the
                           model already fits (the easy, colour-aligned majority) and ignores the rest:
                           the model learns the colour shortcut, and the conflicting samples keep a high
                           cross-entropy -log p_y, which is the score. Its log-probability vector log p(.|x)
                           is also a colour-dominated representation: within a digit class, a conflicting
                           sample points towards its colour's class, far from the aligned majority, so the
                           kNN distance in that space (gce_knn) separates them even better.
    per-class PCA error    sum of squared residuals of a PCA fitted on the images of the sample's own class.
    rank average           the mean of the within-class normalised ranks of several scores.

The scores are graded per class (positives = conflicting samples) by aelab.metrics.ranking.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .biased import biased_log_probabilities
from .device import device_of


# ---------------------------------------------------------------- scores from a representation
def within_class_ranks(scores, digits) -> np.ndarray:
    """Each score's mid-rank within its own class, scaled to (0, 1]: rank / class size."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    digits = np.asarray(digits).reshape(-1)
    out = np.empty_like(scores)
    for c in np.unique(digits):
        m = digits == c
        out[m] = rankdata(scores[m]) / m.sum()
    return out


def rank_average(score_list: Sequence[np.ndarray], digits) -> np.ndarray:
    """Mean of the within-class normalised ranks of several scores (a scale-free combination)."""
    return np.mean([within_class_ranks(s, digits) for s in score_list], axis=0)


def knn_distance_scores(features, digits, k: int = 5) -> np.ndarray:
    """Mean Euclidean distance from each sample to its k nearest neighbours in its own class (itself excluded)."""
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    digits = np.asarray(digits).reshape(-1)
    out = np.empty(len(features))
    for c in np.unique(digits):
        idx = np.flatnonzero(digits == c)
        f = features[idx]
        sq = (f * f).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * f @ f.T, 0.0)
        np.fill_diagonal(d2, np.inf)
        kk = min(k, len(idx) - 1)
        if kk == 0:  # a class of one sample has no neighbours
            out[idx] = 0.0
            continue
        nearest = np.sqrt(np.partition(d2, kk - 1, axis=1)[:, :kk])
        out[idx] = nearest.mean(1)
    return out


def gaussian_nll_scores(features, digits, eps: float = 1e-3) -> np.ndarray:
    """-log N(z; mu_y, Sigma_y + eps * mean_variance * I) per sample, the Gaussian fitted on its own class y.

    The ridge eps (relative to the class's mean variance) keeps Sigma_y invertible when a class has fewer
    samples than dimensions."""
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    digits = np.asarray(digits).reshape(-1)
    d = features.shape[1]
    out = np.empty(len(features))
    for c in np.unique(digits):
        idx = np.flatnonzero(digits == c)
        f = features[idx]
        mu = f.mean(0)
        cov = np.atleast_2d(np.cov(f, rowvar=False, bias=True))
        cov += eps * max(np.trace(cov) / d, 1e-12) * np.eye(d)
        chol = np.linalg.cholesky(cov)
        white = np.linalg.solve(chol, (f - mu).T)  # L^{-1} (z - mu)
        logdet = 2 * np.log(np.diag(chol)).sum()
        out[idx] = 0.5 * ((white**2).sum(0) + logdet + d * np.log(2 * np.pi))
    return out


def pca_residual_scores(images, digits, n_components: int = 20) -> np.ndarray:
    """Squared residual ||x - x_hat||^2 of a PCA with n_components fitted on the sample's own class.

    With F the centred class matrix (n x D) and F F^T = U diag(s^2) U^T, the projections on the top
    principal directions are F V_k = U_k diag(s_k), so residual = ||f||^2 - ||U_k s_k||^2 row by row:
    an n x n eigenproblem instead of a D x D one (n = 400 images vs D = 2352 pixels)."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    digits = np.asarray(digits).reshape(-1)
    out = np.empty(len(x))
    for c in np.unique(digits):
        idx = np.flatnonzero(digits == c)
        f = x[idx] - x[idx].mean(0)
        eigval, eigvec = np.linalg.eigh(f @ f.T)  # ascending
        k = min(n_components, len(idx) - 1)
        proj = eigvec[:, len(idx) - k :] * np.sqrt(np.maximum(eigval[len(idx) - k :], 0))
        out[idx] = np.maximum((f * f).sum(1) - (proj * proj).sum(1), 0.0)
    return out


@torch.no_grad()
def reconstruction_error_scores(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Per-image sum of squared errors of an autoencoder (aelab model interface: encode / decode)."""
    model.eval()
    device = device_of(model)
    out = []
    for xb in images.split(batch_size):
        xb = xb.to(device)
        out.append((model.decode(model.encode(xb)) - xb).pow(2).flatten(1).sum(1))
    return torch.cat(out).double().cpu().numpy()


def cross_entropy_scores(log_probs: np.ndarray, digits) -> np.ndarray:
    """-log p_y: high for the samples the (biased) model fails on -- the Learning-from-Failure score."""
    digits = np.asarray(digits).reshape(-1)
    return -np.asarray(log_probs)[np.arange(len(digits)), digits]


# ---------------------------------------------------------------- all methods at once
METHODS = {
    "ae_recon": "reconstruction error (SSE per image) of an MLP autoencoder trained on all training images",
    "ae_knn": "mean distance to the k nearest same-digit neighbours in the autoencoder's code space",
    "ae_gauss": "-log N(z; mu_y, Sigma_y) of the autoencoder code under a Gaussian fitted per digit",
    "gce_ce": "Learning from Failure: cross-entropy -log p_y of GCE-trained (q=0.7) biased MLPs",
    "gce_knn": "mean distance to the k nearest same-digit neighbours in the biased MLPs' log-probabilities",
    "rank_avg(gce_ce,gce_knn)": "mean of the within-class ranks of gce_ce and gce_knn (fixed in advance)",
    "pca_baseline": "baseline: residual of a per-digit PCA on the pixels",
}


def score_samples(
    images: torch.Tensor,
    digits: torch.Tensor,
    ae_model: nn.Module | None = None,
    k: int = 5,
    n_models: int = 5,
    gce_epochs: int = 3,
    q: float = 0.7,
    seed: int = 0,
    pca_components: int = 20,
    timings: dict | None = None,
    representations: dict | None = None,
    device: torch.device | str = "cpu",
    amp: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """Score every training sample by every method of `METHODS` (higher = more likely bias-conflicting).

    Only the images and the DIGIT labels come in: there is no parameter through which colour labels could
    reach a score. `ae_model` is an autoencoder already trained on the same images (unsupervised); without
    it the ae_* methods are skipped. Returns {method name: scores (N,) float64}; `timings`, if given, receives
    the seconds each method took (shared work, such as encoding or training the biased MLPs, is charged to
    the first method that needs it). `representations`, if given, receives the features the kNN scores use:
    "ae_codes" (with an autoencoder) and "gce_log_probs", so that other k can be scored without training again.
    `device` / `amp`: where the biased MLPs train (bf16 autocast there with amp on CUDA); the scores are the same
    CPU arrays either way. `progress(text)`, if given, is told each step before it starts.
    """
    say = progress or (lambda text: None)
    digits = torch.as_tensor(digits).long()
    y = digits.numpy()
    timings = {} if timings is None else timings
    scores: dict[str, np.ndarray] = {}
    clock = time.perf_counter()

    def record(name: str, value: np.ndarray) -> None:
        nonlocal clock
        scores[name] = value
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    if ae_model is not None:
        from ..metrics.codes import encode_all

        say(f"ae_recon, ae_knn, ae_gauss: the autoencoder's errors and codes of {len(images)} images")
        record("ae_recon", reconstruction_error_scores(ae_model, images))
        codes = encode_all(ae_model, images.to(device_of(ae_model))).double().cpu().numpy()
        if representations is not None:
            representations["ae_codes"] = codes
        record("ae_knn", knn_distance_scores(codes, y, k))
        record("ae_gauss", gaussian_nll_scores(codes, y))
    say(f"gce_ce, gce_knn: {n_models} biased MLPs (GCE, q {q:g}, {gce_epochs} epochs each, cross-fitted)")
    log_probs = biased_log_probabilities(
        images, digits, n_models=n_models, epochs=gce_epochs, q=q, seed=seed, device=device, amp=amp
    )
    if representations is not None:
        representations["gce_log_probs"] = log_probs
    record("gce_ce", cross_entropy_scores(log_probs, y))
    record("gce_knn", knn_distance_scores(log_probs, y, k))
    record("rank_avg(gce_ce,gce_knn)", rank_average([scores["gce_ce"], scores["gce_knn"]], y))
    say(f"pca_baseline: PCA ({pca_components} components) residuals")
    record("pca_baseline", pca_residual_scores(images, y, pca_components))
    return scores


def choose_k(
    features: np.ndarray, digits: np.ndarray, conflicting: np.ndarray, held: np.ndarray, ks, default_k: int = 5
) -> dict:
    """The k of a kNN score chosen on the validation images `held`: the highest AUROC of the within-class ranks
    pooled over them (the smallest k of equals). Without a conflicting (or an aligned) image among them nothing
    can be chosen and default_k is kept. Returns {"grid", "validation_auroc", "chosen_k", "scores" (of the
    chosen k, every image)}."""
    from ..metrics.ranking import auroc

    scores = {k: knn_distance_scores(features, digits, k) for k in ks}
    crit = [auroc(within_class_ranks(scores[k], digits)[held], conflicting[held]) for k in ks]
    if all(np.isnan(c) for c in crit):
        chosen = default_k
        scores.setdefault(chosen, knn_distance_scores(features, digits, chosen))
    else:
        chosen = ks[max(range(len(ks)), key=lambda i: (np.nan_to_num(crit[i], nan=-1.0), -i))]
    return {"grid": list(ks), "validation_auroc": crit, "chosen_k": chosen, "scores": scores[chosen]}
