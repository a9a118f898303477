"""aelab.bias: ranking metrics vs brute force, the GCE loss vs its formula and finite differences, the scoring
methods vs direct computations, and the guarantee that scores never see colour labels."""

import inspect
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aelab import debias as bias
from aelab.data import load
from aelab.data.colored import make_colored_mnist
from aelab.metrics import ranking


# ---------------------------------------------------------------- brute-force references
def auroc_pairs(scores, positive):
    """Fraction of (positive, negative) pairs ranked correctly, a tie counting 1/2."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def ap_per_positive(scores, positive):
    """Mean over positives of the precision of the set {score >= that positive's score}."""
    precisions = []
    for s, p in zip(scores, positive):
        if p:
            selected = [q for t, q in zip(scores, positive) if t >= s]
            precisions.append(sum(selected) / len(selected))
    return sum(precisions) / len(precisions)


def random_task(seed, n=40, ties=True):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, n).astype(float) if ties else rng.normal(size=n)
    positive = rng.random(n) < 0.3
    positive[:2] = [True, False]  # both classes present
    return scores, positive


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [True, False])
def test_auroc_matches_pair_counting(seed, ties):
    scores, positive = random_task(seed, ties=ties)
    assert ranking.auroc(scores, positive) == pytest.approx(auroc_pairs(scores, positive), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [True, False])
def test_average_precision_matches_per_positive_precision(seed, ties):
    scores, positive = random_task(seed, ties=ties)
    assert ranking.average_precision(scores, positive) == pytest.approx(ap_per_positive(scores, positive), abs=1e-12)


def test_metrics_on_hand_examples():
    # perfect, reversed and all-tied rankings
    assert ranking.auroc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert ranking.auroc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    assert ranking.auroc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5
    assert ranking.average_precision([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    # ranking pos, neg, pos: AP = (1/1 + 2/3) / 2
    assert ranking.average_precision([3, 2, 1], [1, 0, 1]) == pytest.approx((1 + 2 / 3) / 2)
    assert ranking.average_precision([1, 1, 1, 1], [1, 0, 0, 0]) == 0.25  # one threshold: precision 1/4
    assert math.isnan(ranking.auroc([1, 2], [1, 1]))
    with pytest.raises(ValueError):
        ranking.auroc([1.0, float("nan")], [1, 0])


@pytest.mark.parametrize("seed", range(4))
def test_precision_recall_at_k_matches_sorted_list(seed):
    scores, positive = random_task(seed)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))  # stable: ties by index
    for k in (1, 5, int(positive.sum()), len(scores)):
        hits = sum(positive[i] for i in order[:k])
        assert ranking.precision_recall_at_k(scores, positive, k) == pytest.approx((hits / k, hits / positive.sum()))
    with pytest.raises(ValueError):
        ranking.precision_recall_at_k(scores, positive, 0)


def test_class_metrics_grades_each_class_separately():
    rng = np.random.default_rng(0)
    digits = np.repeat([0, 1, 2], 30)
    conflicting = rng.random(90) < 0.2
    conflicting[[0, 30, 60]] = True
    conflicting[[1, 31, 61]] = False
    scores = rng.normal(size=90) + 2 * conflicting
    result = ranking.class_metrics(scores, digits, conflicting)
    for row in result["per_class"]:
        m = digits == row["class"]
        n_conf = int(conflicting[m].sum())
        assert row["n"] == 30 and row["n_conflicting"] == n_conf
        assert row["auroc"] == pytest.approx(auroc_pairs(scores[m], conflicting[m]))
        assert row["average_precision"] == pytest.approx(ap_per_positive(scores[m], conflicting[m]))
        assert row["precision_at_k"] == row["recall_at_k"]  # k = number of positives
    assert result["mean"]["auroc"] == pytest.approx(np.mean([r["auroc"] for r in result["per_class"]]))
    # adding a constant to one class changes nothing: only within-class order matters
    shifted = scores + 100 * (digits == 1)
    assert ranking.class_metrics(shifted, digits, conflicting)["mean"] == result["mean"]


# ---------------------------------------------------------------- scoring methods vs direct computations
def test_knn_distance_matches_loops():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(25, 3))
    digits = np.r_[np.zeros(12, int), np.ones(13, int)]
    k = 4
    expected = []
    for i in range(len(x)):
        d = sorted(np.sqrt(((x[i] - x[j]) ** 2).sum()) for j in range(len(x)) if j != i and digits[j] == digits[i])
        expected.append(np.mean(d[:k]))
    np.testing.assert_allclose(bias.knn_distance_scores(x, digits, k), expected, rtol=1e-9)


def test_gaussian_nll_matches_scipy():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 3)) @ np.array([[1, 0.5, 0], [0, 1, 0.3], [0, 0, 0.2]])
    digits = np.repeat([0, 1], 20)
    eps = 1e-3
    expected = np.empty(40)
    for c in (0, 1):
        f = x[digits == c]
        cov = np.cov(f, rowvar=False, bias=True)
        cov += eps * np.trace(cov) / 3 * np.eye(3)
        expected[digits == c] = -multivariate_normal(f.mean(0), cov).logpdf(f)
    np.testing.assert_allclose(bias.gaussian_nll_scores(x, digits, eps), expected, rtol=1e-9)


def test_pca_residual_matches_sklearn_pca():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(3)
    x = rng.random((30, 1, 4, 5))
    digits = np.repeat([0, 1], 15)
    expected = np.empty(30)
    for c in (0, 1):
        f = x[digits == c].reshape(15, -1)
        pca = PCA(4, svd_solver="full").fit(f)
        expected[digits == c] = ((f - pca.inverse_transform(pca.transform(f))) ** 2).sum(1)
    np.testing.assert_allclose(bias.pca_residual_scores(x, digits, 4), expected, rtol=1e-7, atol=1e-10)


def test_rank_average():
    digits = np.array([0, 0, 0, 1, 1])
    a = np.array([3.0, 1.0, 2.0, 10.0, 20.0])
    b = np.array([1.0, 3.0, 2.0, 5.0, 5.0])
    np.testing.assert_allclose(bias.within_class_ranks(a, digits), [1, 1 / 3, 2 / 3, 1 / 2, 1])
    expected = [(1 + 1 / 3) / 2, (1 / 3 + 1) / 2, 2 / 3, 0.625, 0.875]
    np.testing.assert_allclose(bias.rank_average([a, b], digits), expected)


# ---------------------------------------------------------------- the GCE loss
def gce_by_hand(logits: np.ndarray, y: np.ndarray, q: float) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return (1 - p[np.arange(len(y)), y] ** q) / q


@pytest.mark.parametrize("q", [0.1, 0.7, 1.0])
def test_gce_value_matches_formula(q):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 3
    y = torch.tensor([0, 1, 2, 3, 0, 2])
    got = bias.gce_loss(logits, y, q).numpy()
    np.testing.assert_allclose(got, gce_by_hand(logits.numpy(), y.numpy(), q), rtol=1e-12)


def test_gce_limits():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1, 2])
    p_y = F.softmax(logits, 1)[torch.arange(2), y]
    assert torch.allclose(bias.gce_loss(logits, y, 1.0), 1 - p_y)  # q = 1: 1 - p_y
    ce = F.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(bias.gce_loss(logits, y, 1e-7), ce, rtol=1e-5)  # q -> 0: cross-entropy
    with pytest.raises(ValueError):
        bias.gce_loss(logits, y, 0.0)


@pytest.mark.parametrize("q", [0.3, 0.7])
def test_gce_gradient_formula_and_finite_differences(q):
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(5, 4, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    y = torch.tensor([0, 3, 1, 1, 2])
    (grad,) = torch.autograd.grad(bias.gce_loss(logits, y, q).sum(), logits)
    # dGCE/dz = p_y^q (softmax(z) - onehot(y))
    p = F.softmax(logits.detach(), 1)
    expected = p[torch.arange(5), y].pow(q)[:, None] * (p - F.one_hot(y, 4).double())
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-14)
    # central finite differences of the hand-written numpy formula
    z0, h = logits.detach().numpy().copy(), 1e-6
    fd = np.zeros_like(z0)
    for i, j in itertools.product(range(5), range(4)):
        zp, zm = z0.copy(), z0.copy()
        zp[i, j] += h
        zm[i, j] -= h
        fd[i, j] = (gce_by_hand(zp, y.numpy(), q).sum() - gce_by_hand(zm, y.numpy(), q).sum()) / (2 * h)
    np.testing.assert_allclose(grad.numpy(), fd, atol=1e-8)


# ---------------------------------------------------------------- the biased classifier and the colour-blind scores
@pytest.fixture(scope="module")
def tiny_colored():
    gray, digits = load("digits", "train")
    gray, digits = gray[:400], digits[:400]
    out = make_colored_mnist(gray, digits, "train", aligned_ratio=0.85, seed=0)
    return out["images"], digits, out["color_labels"], ~out["aligned"]


def test_cross_entropy_scores_and_snapshot_average(tiny_colored):
    images, digits, _, _ = tiny_colored
    snapshots = []
    model = bias.train_biased_classifier(
        images, digits, epochs=2, seed=5, on_epoch_end=lambda m: snapshots.append(bias.log_probabilities(m, images))
    )
    assert len(snapshots) == 2
    with torch.no_grad():
        ce = F.cross_entropy(model(images).double(), digits, reduction="none").numpy()
    np.testing.assert_allclose(bias.cross_entropy_scores(snapshots[-1], digits.numpy()), ce, rtol=1e-5)
    averaged = bias.biased_log_probabilities(images, digits, n_models=1, epochs=2, seed=5)
    np.testing.assert_allclose(averaged, np.mean(snapshots, 0), rtol=1e-12)  # same seed: same snapshots


def test_scoring_functions_take_no_colour_labels():
    functions = [
        bias.score_samples,
        bias.knn_distance_scores,
        bias.gaussian_nll_scores,
        bias.pca_residual_scores,
        bias.reconstruction_error_scores,
        bias.biased_log_probabilities,
        bias.train_biased_classifier,
        bias.cross_entropy_scores,
        bias.rank_average,
    ]
    for fn in functions:
        for name in inspect.signature(fn).parameters:
            assert not any(word in name.lower() for word in ("colo", "aligned", "conflict", "bias")), (fn, name)


def test_scores_depend_on_images_and_digits_only(tiny_colored):
    """Scores are a deterministic function of (images, digits) -- the signature test above shows nothing else
    comes in -- and they find the conflicting images (a colour shortcut the GCE MLP picks up even on 400 8x8
    digits)."""
    images, digits, _, conflicting = tiny_colored
    first = bias.score_samples(images, digits, n_models=1, gce_epochs=2, seed=0)
    second = bias.score_samples(images.clone(), digits.clone(), n_models=1, gce_epochs=2, seed=0)
    assert first.keys() == second.keys() == set(bias.METHODS) - {"ae_recon", "ae_knn", "ae_gauss"}
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    graded = ranking.class_metrics(first["gce_knn"], digits.numpy(), conflicting.numpy())
    assert graded["mean"]["auroc"] > 0.8
