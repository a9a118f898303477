"""Pins of aelab.metrics (likelihood, curves, ranking, reconstruction, codes, contraction) against independent
computations: numbers by hand, brute force, sklearn/scipy; float64, tiny data (mutation testing, tests/mutate.py)."""

import math
import sys

import numpy as np
import pytest
import torch

from aelab.errors import ConfigError
from aelab.metrics import curves, likelihood

# torch's forward-mode AD scripts its decompositions on first use (a torch-internal deprecation warning)
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]


# ---------------------------------------------------------------- likelihood: iwae_batch_size
@pytest.fixture
def memory(monkeypatch):
    """available_memory_bytes() as the test sets it (a list of one number)."""
    have = [2**40]
    monkeypatch.setattr("aelab.models.memory.available_memory_bytes", lambda: have[0])
    return have


@pytest.mark.parametrize(
    "k, pixels, latent, expected",
    [
        (1, 784, 50, 100),  # IWAE_BATCH
        (20_000, 784, 50, 34),  # 2 GiB // (20000 * 784 * 4 bytes) = 34.2
        (20_000, 100, 200, 16),  # the samples: 256 MiB // (20000 * 200 * 4 bytes) = 16.8; logits allow 268
        (100_000, 6_272, 2, 1),  # 2 GiB // (100000 * 6272 * 4) = 0: still one image
        (5_000, 784, 50, 100),  # 136 and 268 images would fit: 100
    ],
)
def test_iwae_batch_size_by_hand(memory, k, pixels, latent, expected):
    assert likelihood.iwae_batch_size(k, pixels, latent) == expected


def test_iwae_batch_size_refuses_more_than_100000_samples(memory):
    assert likelihood.iwae_batch_size(100_000, 10, 2) == 100  # 2 GiB // 4e6 = 536, 256 MiB // 8e5 = 335
    with pytest.raises(ConfigError) as e:
        likelihood.iwae_batch_size(100_001, 10, 2)
    assert str(e.value) == "--iwae-k 100001: at most 100,000 samples per image (Burda et al. use 5,000)"


def test_iwae_batch_size_refuses_samples_of_one_image_that_do_not_fit(memory):
    k, latent = 100_000, 1_000
    need = 3 * k * latent * 4 + 2 * 256 * 2**20  # samples, z, log weights (3 x 4e8 bytes) and two decoder chunks
    assert need == 1_736_870_912
    memory[0] = need  # just fits
    assert likelihood.iwae_batch_size(k, 10, latent) == 1  # 256 MiB // 4e8 = 0
    memory[0] = need - 1
    with pytest.raises(ConfigError):
        likelihood.iwae_batch_size(k, 10, latent)
    memory[0] = 2**30
    with pytest.raises(ConfigError) as e:
        likelihood.iwae_batch_size(k, 10, latent)
    assert str(e.value) == (
        "--iwae-k 100000: the samples of one image need about 1.62 GiB; 1 GiB of memory is available "
        "(the test NLL needs no more than a few thousand)"
    )


# ---------------------------------------------------------------- likelihood: iwae_mean
class _FakeLikelihoodModel:
    """log p(x) per image = the sum of its pixels + one uniform draw of the generator; records the calls."""

    latent = 2

    def __init__(self):
        self.calls = []

    def iwae_log_likelihood(self, xb, k, batch_size, generator):
        self.calls.append((len(xb), k, batch_size, generator))
        return (xb.flatten(1).sum(1) + torch.rand(len(xb), generator=generator, dtype=torch.float64)).float()


def test_iwae_mean_batches_by_pixels_and_keeps_one_generator(memory, monkeypatch):
    bars = []

    def bar(iterable, desc, unit, enabled=True, total=None):
        bars.append((desc, unit, enabled))
        return iterable

    monkeypatch.setattr(likelihood, "inner_bar", bar)
    monkeypatch.setattr(likelihood, "IWAE_TENSOR_BYTES", 360)  # k=5 x 6 pixels x 4 bytes = 120 per image: 3
    x = torch.arange(42, dtype=torch.float64).reshape(7, 2, 3) / 10
    model = _FakeLikelihoodModel()
    got = likelihood.iwae_mean(model, x, 5, seed=11)
    assert [c[:3] for c in model.calls] == [(3, 5, 3), (3, 5, 3), (1, 5, 1)]
    generators = {id(c[3]) for c in model.calls}
    assert len(generators) == 1 and isinstance(model.calls[0][3], torch.Generator)
    gen = torch.Generator().manual_seed(11)
    draws = torch.cat([torch.rand(n, generator=gen, dtype=torch.float64) for n in (3, 3, 1)])
    per_image = (x.flatten(1).sum(1) + draws).float().double()
    assert got == pytest.approx(float(per_image.sum()) / 7, rel=1e-12)
    assert bars == [("None: IWAE k=5", "batch", False)]

    bars.clear()
    model = _FakeLikelihoodModel()
    assert likelihood.iwae_mean(model, x, 5, seed=11, progress="run") == pytest.approx(got, rel=1e-12)
    assert bars == [("run: IWAE k=5", "batch", True)]
    assert likelihood.iwae_mean(_FakeLikelihoodModel(), x, 5, seed=12) != pytest.approx(got, rel=1e-9)


def test_iwae_mean_of_a_vae_is_its_mean_iwae_estimate(memory):
    """Through a real (tiny, float64) VAE: one batch, the model's own estimate with the same seeded generator."""
    from aelab.models.vae import VAE

    torch.manual_seed(0)
    model = VAE((6,), [5], 2, likelihood="bce").double()
    x = torch.rand(9, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64).round()
    expected = model.iwae_log_likelihood(x, k=4, batch_size=9, generator=torch.Generator().manual_seed(3))
    assert likelihood.iwae_mean(model, x, 4, seed=3) == pytest.approx(float(expected.mean()), rel=1e-12)


# ---------------------------------------------------------------- likelihood: active_units
def test_active_units_count_kl_strictly_above_001_nats():
    assert likelihood.active_units([0.01, 0.0100001, 0.5, 0.0, -1.0, 0.009]) == 2
    assert likelihood.active_units([]) == 0


# ---------------------------------------------------------------- curves
def _h(epoch, train=None, val=None, test=None):
    return {"epoch": epoch, "train_loss": train, "val_loss": val, "test_loss": test}


SEEDS = [
    [_h(3, 3.0, 4.0, 5.0), _h(1, 1.0, 2.0, 3.0), _h(2, 2.0, float("nan"), 4.0), _h(4, 9.0, 9.0, 9.0)],
    [_h(1, 3.0, 4.0, 1.0), _h(2, 4.0, 1.0, True), _h(3, 5.0, 0.0, 7)],
    [_h(2, 6.0, 3.0, 2.0), _h(1, 5.0, 6.0, 2.0), _h(3, 1.0, 2.0, "5")],
]


def test_mean_curve_by_hand():
    assert curves.mean_curve(SEEDS) == [
        {"epoch": 1, "train_loss": 3.0, "val_loss": 4.0, "test_loss": 2.0},  # (1+3+5)/3, (2+4+6)/3, (3+1+2)/3
        {"epoch": 2, "train_loss": 4.0},  # a NaN val_loss, a bool test_loss: neither summarised
        {"epoch": 3, "train_loss": 3.0, "val_loss": 2.0},  # a string test_loss
    ]
    assert curves.mean_curve([SEEDS[0][:2]]) == [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 2.0, "test_loss": 3.0},
        {"epoch": 3, "train_loss": 3.0, "val_loss": 4.0, "test_loss": 5.0},
    ]
    assert curves.mean_curve([[_h(1, 2, math.inf, None)], [_h(1, 4, 1.0, 1.0)]]) == [{"epoch": 1, "train_loss": 3.0}]


def test_mean_curve_of_nothing():
    assert curves.mean_curve([]) == []
    assert curves.mean_curve([SEEDS[0], []]) == []
    assert curves.mean_curve([[]]) == []


def test_curve_band_by_hand():
    assert curves.curve_band(SEEDS) == {
        "train_loss": [(1, 1.0, 5.0), (2, 2.0, 6.0), (3, 1.0, 5.0)],
        "val_loss": [(1, 2.0, 6.0), (3, 0.0, 4.0)],
        "test_loss": [(1, 1.0, 3.0)],
    }
    assert curves.curve_band([[_h(2, 1.0)], [_h(2, 3.0)]]) == {"train_loss": [(2, 1.0, 3.0)]}
    assert curves.curve_band([]) == {}
    assert curves.curve_band([[_h(1, 1.0)], [_h(2, 1.0)]]) == {}


def test_finite_values_only():
    assert [curves._finite(v) for v in (1, 2.5, -0.0, True, False, math.nan, math.inf, None, "1", np.float64(2))] == [
        True, True, True, False, False, False, False, False, False, True]  # fmt: skip


# ---------------------------------------------------------------- ranking
from aelab.metrics import ranking  # noqa: E402


def _auroc_pairs(s, p):
    pos, neg = s[p], s[~p]
    return float(np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg]))


def _ap_thresholds(s, p):
    """sum over distinct thresholds t, descending, of (R(t) - R(previous)) P(t)."""
    total, last = 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        chosen = s >= t
        recall, precision = p[chosen].sum() / p.sum(), p[chosen].mean()
        total += (recall - last) * precision
        last = recall
    return total


def test_ranking_checks_its_input():
    with pytest.raises(ValueError) as e:
        ranking.auroc([1.0, 2.0, 3.0], [1, 0])
    assert str(e.value) == "3 scores but 2 labels"
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError) as e:
            ranking.average_precision([1.0, bad], [1, 0])
        assert str(e.value) == "scores contain NaN or inf"
    # 2-D input is flattened; integer scores and labels are taken as float64 and bool
    assert ranking.auroc(np.array([[3, 1], [2, 0]]), np.array([[2, 0], [0, 1]])) == 0.5
    assert ranking.precision_recall_at_k(np.array([[0.2], [0.9]]), np.array([[1], [0]]), 1) == (0.0, 0.0)


def test_auroc_and_average_precision_by_brute_force():
    rng = np.random.default_rng(5)
    s = rng.integers(0, 6, 40).astype(np.float64) / 7  # ties
    p = rng.random(40) < 0.4
    assert ranking.auroc(s, p) == pytest.approx(_auroc_pairs(s, p), abs=1e-12)
    assert ranking.average_precision(s, p) == pytest.approx(_ap_thresholds(s, p), abs=1e-12)
    assert math.isnan(ranking.auroc([0.1, 0.2], [1, 1])) and math.isnan(ranking.auroc([0.1, 0.2], [0, 0]))
    assert math.isnan(ranking.average_precision([0.1, 0.2], [0, 0]))
    assert ranking.average_precision([0.1, 0.2], [1, 1]) == 1.0
    assert ranking.average_precision([0.3, 0.2, 0.1], [0, 0, 1]) == pytest.approx(1 / 3)


def test_precision_recall_at_k_bounds_and_ties():
    s = np.zeros(40)  # all tied: the first k samples in order
    p = np.zeros(40, bool)
    p[[0, 2, 5, 30, 39]] = True
    for k, hits in [(1, 1), (3, 2), (6, 3), (31, 4), (40, 5)]:
        assert ranking.precision_recall_at_k(s, p, k) == (hits / k, hits / 5)
    s[[30, 39]] = 1.0
    assert ranking.precision_recall_at_k(s, p, 2) == (1.0, 0.4)
    assert ranking.precision_recall_at_k(s, p, 3) == (1.0, 0.6)
    for k in (0, -1, 41):
        with pytest.raises(ValueError) as e:
            ranking.precision_recall_at_k(s, p, k)
        assert str(e.value) == f"k must be in 1..40, got {k}"
    precision, recall = ranking.precision_recall_at_k([0.5, 0.2], [0, 0], 2)
    assert precision == 0.0 and math.isnan(recall)


def test_class_metrics_by_brute_force():
    s = np.array([0.9, 0.1, 0.5, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4, 0.6, 0.6])
    classes = np.array([7, 7, 7, 7, 3, 3, 3, 3, 5, 5, 5])
    p = np.array([1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0], bool)  # class 5: no positives
    result = ranking.class_metrics(s, classes.reshape(-1, 1), p)
    rows = result["per_class"]
    assert [(r["class"], r["n"], r["n_conflicting"]) for r in rows] == [(3, 4, 1), (5, 3, 0), (7, 4, 2)]
    assert all(type(r["class"]) is int for r in rows)
    by_class = {r["class"]: r for r in rows}
    for c in (3, 7):
        m = classes == c
        assert by_class[c]["auroc"] == pytest.approx(_auroc_pairs(s[m], p[m]))
        assert by_class[c]["average_precision"] == pytest.approx(_ap_thresholds(s[m], p[m]))
    assert (by_class[7]["precision_at_k"], by_class[7]["recall_at_k"]) == (1.0, 1.0)  # top 2: 0.9, the first 0.5 (pos)
    assert (by_class[3]["precision_at_k"], by_class[3]["recall_at_k"]) == (1.0, 1.0)
    for key in ("auroc", "average_precision", "precision_at_k", "recall_at_k"):
        assert math.isnan(by_class[5][key])
        assert result["mean"][key] == pytest.approx((by_class[3][key] + by_class[7][key]) / 2)
    assert result["mean"]["auroc"] == pytest.approx((1.0 + 3.5 / 4) / 2)


def _roc_corners(s, p):
    fpr, tpr = [0.0], [0.0]
    for t in sorted(set(s), reverse=True):
        chosen = s >= t
        fpr.append((chosen & ~p).sum() / (~p).sum())
        tpr.append((chosen & p).sum() / p.sum())
    return np.array(fpr), np.array(tpr)


def _precision_at_recall(s, p, r):
    """The precision of the highest threshold whose recall reaches r (1 at r = 0)."""
    if r == 0:
        return 1.0
    for t in sorted(set(s), reverse=True):
        chosen = s >= t
        if (chosen & p).sum() / p.sum() >= r - 1e-12:
            return (chosen & p).sum() / chosen.sum()
    raise AssertionError


def test_mean_curves_by_brute_force():
    s = np.array([0.9, 0.1, 0.5, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4, 0.6, 0.6, 0.2, 0.1])
    classes = np.array([7, 7, 7, 7, 3, 3, 3, 3, 5, 5, 5, 1, 1])
    p = np.array([1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1], bool)  # 5: no positives, 1: only positives
    out = ranking.mean_curves(s, classes.reshape(-1, 1), p, points=9)
    assert out["classes"] == 2
    grid = np.linspace(0, 1, 9)
    np.testing.assert_array_equal(out["fpr"], grid)
    np.testing.assert_array_equal(out["recall"], grid)
    tpr = np.mean([np.interp(grid, *_roc_corners(s[classes == c], p[classes == c])) for c in (3, 7)], axis=0)
    precision = [[_precision_at_recall(s[classes == c], p[classes == c], r) for r in grid] for c in (3, 7)]
    np.testing.assert_allclose(out["tpr"], tpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["precision"], np.mean(precision, axis=0), rtol=0, atol=1e-12)
    assert out["tpr"].dtype == np.float64 and out["precision"].shape == (9,)
    assert len(ranking.mean_curves(s, classes, p)["tpr"]) == 201
    with pytest.raises(ValueError) as e:
        ranking.mean_curves(s[:4], np.zeros(4), np.zeros(4))
    assert str(e.value) == "no class has both positive and negative samples"


# ---------------------------------------------------------------- reconstruction and _util
from aelab.metrics import _util, reconstruction  # noqa: E402


def test_sse_per_image_by_hand():
    x = np.arange(12, dtype=np.float64).reshape(3, 2, 2)
    x_hat = x.reshape(3, 4) + np.array([[1.0, -2.0, 0.0, 0.5], [0, 0, 0, 0], [3.0, 0, 0, -1.0]])
    np.testing.assert_array_equal(reconstruction.sse_per_image(x, x_hat), [5.25, 0.0, 10.0])


def test_pca_reconstruction_sse_by_svd():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(30, 2, 3)) * np.array([3.0, 2.0, 1.0, 0.5, 0.2, 0.1]).reshape(2, 3) + 4.0
    test = rng.normal(size=(7, 2, 3)) + 4.0
    mean = train.reshape(30, -1).mean(0)
    _, _, vt = np.linalg.svd(train.reshape(30, -1) - mean, full_matrices=False)
    for n in (1, 2, 4):
        v = vt[:n].T
        x_hat = (test.reshape(7, -1) - mean) @ v @ v.T + mean
        expected = ((test.reshape(7, -1) - x_hat) ** 2).sum(1).mean()
        assert reconstruction.pca_reconstruction_sse(train, test, n) == pytest.approx(expected, rel=1e-10)


def test_linear_decoder_sse_by_lstsq():
    rng = np.random.default_rng(3)
    train_codes = rng.random((25, 4)) < 0.5
    train_codes[:, 2] = True  # a constant bit: collinear with the bias
    train_codes[:, 3] = train_codes[:, 0]  # a repeated bit
    train_x = (rng.random((25, 2, 3)) + train_codes[:, :1, None]).astype(np.float32)
    test_codes = rng.random((6, 4)) < 0.5
    test_x = rng.random((6, 2, 3)).astype(np.float32)
    design = np.c_[train_codes.astype(np.float64), np.ones(25)]
    w, *_ = np.linalg.lstsq(design, train_x.reshape(25, -1).astype(np.float64), rcond=None)
    x_hat = np.c_[test_codes.astype(np.float64), np.ones(6)] @ w
    expected = ((test_x.reshape(6, -1).astype(np.float64) - x_hat) ** 2).sum(1)
    got = reconstruction.linear_decoder_sse(train_codes, train_x, test_codes, test_x)
    assert got.dtype == np.float64 and got.shape == (6,)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_eval_mode_gives_the_model_back_in_its_mode():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    for training in (True, False):
        model.train(training)
        with _util.eval_mode(model) as inside:
            assert inside is model and not model.training and not model[1].training
        assert model.training is training and model[1].training is training
        with pytest.raises(RuntimeError):
            with _util.eval_mode(model):
                raise RuntimeError
        assert model.training is training


def test_torch_threads_inside_the_block_only():
    before = torch.get_num_threads()
    inner = 2 if before != 2 else 3
    with _util.torch_threads(inner):
        assert torch.get_num_threads() == inner
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with _util.torch_threads(inner):
            raise RuntimeError
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------- codes
from aelab.metrics import codes as code_metrics  # noqa: E402
from aelab.metrics.logistic import Standardizer, fit_logistic  # noqa: E402
from independent import sklearn_probe  # noqa: E402


def _probe_data():
    rng = np.random.default_rng(0)

    def draw(n):
        y = rng.integers(0, 3, n)
        x = rng.normal(size=(n, 3)) * np.array([1.0, 30.0, 0.2]) + np.eye(3)[y] * np.array([1.5, 40.0, 0.3]) + 5
        return x, y

    return (*draw(60), *draw(40))


def test_probe_accuracy_is_sklearns_at_each_c():
    tx, ty, sx, sy = _probe_data()
    seen = set()
    for C in (0.001, 0.01, 0.1, 10.0):  # 0.325, 0.575, 0.55, 0.6
        got = code_metrics.probe_accuracy(tx.reshape(60, 3, 1), ty, sx.reshape(40, 1, 3), sy, C)
        assert got == sklearn_probe(tx, ty, sx, sy, C)
        seen.add(got)
    assert len(seen) == 4
    assert code_metrics.probe_accuracy(tx, ty, sx, sy) == sklearn_probe(tx, ty, sx, sy, 1.0) == 0.575


def test_fit_and_score_keeps_the_order_of_cs():
    tx, ty, sx, sy = _probe_data()
    accuracies, converged, fits = code_metrics._fit_and_score(tx, ty, [10.0, 0.001, 10.0], [(sx, sy), (tx, ty)])
    expected = [[sklearn_probe(tx, ty, x, y, C) for x, y in [(sx, sy), (tx, ty)]] for C in (10.0, 0.001, 10.0)]
    assert accuracies == expected and converged == [True, True, True]
    assert sorted(fits) == [0.001, 10.0]
    fit, scale = fits[10.0]
    torch.testing.assert_close(scale.mean, torch.as_tensor(tx.mean(0)))


def test_restandardized_gives_the_same_logits():
    rng = np.random.default_rng(1)
    raw_a = torch.as_tensor(rng.normal(size=(30, 3)) * [1.0, 5.0, 0.1] + [2.0, -1.0, 0.5])
    raw_b = torch.as_tensor(rng.normal(size=(20, 3)) * [3.0, 1.0, 2.0] + [0.0, 4.0, -2.0])
    old, new = Standardizer.fit(raw_a), Standardizer.fit(raw_b)
    fit = fit_logistic(old(raw_a), rng.integers(0, 3, 30), 1.0)
    moved = code_metrics.restandardized(fit, old, new)
    for raw in (raw_a, raw_b):
        torch.testing.assert_close(new(raw) @ moved.weight + moved.bias, old(raw) @ fit.weight + fit.bias)
    assert moved.iterations == fit.iterations and (moved.classes == fit.classes).all()


def test_validated_probe_chooses_c_on_validation_and_refits_on_all():
    tx, ty, sx, sy = _probe_data()
    held = np.arange(0, 60, 4)
    keep = np.setdiff1d(np.arange(60), held)
    grid = [0.001, 0.01, 0.1, 1.0, 10.0]
    scores = [sklearn_probe(tx[keep], ty[keep], tx[held], ty[held], C) for C in grid]
    assert scores == pytest.approx([2 / 15, 8 / 15, 0.6, 0.6, 0.6])  # best: 0.1, 1 and 10; the smallest wins
    result = code_metrics.validated_probe(tx, ty, sx, sy, (keep, held))
    assert result == {"accuracy": sklearn_probe(tx, ty, sx, sy, 0.1), "C": 0.1, "grid": grid,
                      "validation_accuracy": scores, "converged": True}  # fmt: skip
    assert code_metrics.choose_probe_c(tx, ty, keep, held) == (0.1, scores)
    assert code_metrics.choose_probe_c(tx, ty, keep, held, grid=[10.0, 0.01]) == (10.0, [scores[4], scores[1]])
    default = {"accuracy": sklearn_probe(tx, ty, sx, sy, 1.0), "C": 1.0, "grid": [1.0], "validation_accuracy": None,
               "converged": True}  # fmt: skip
    assert code_metrics.validated_probe(tx, ty, sx, sy, None) == default
    assert code_metrics.validated_probe(tx, ty, sx, sy, (keep, held[:0])) == default  # nothing to score on
    one_class = keep[ty[keep] == 0]
    assert code_metrics.validated_probe(tx, ty, sx, sy, (one_class, held)) == default  # nothing to fit
    two = keep[ty[keep] != 0][:20]
    assert code_metrics.validated_probe(tx, ty, sx, sy, (two, held))["validation_accuracy"] is not None


class _Coder(torch.nn.Module):
    """encode: a linear map (with dropout: eval mode matters), codes (N, 1, 2); decode: linear, images (N, 1, 2, 2)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(4, 2, generator=g, dtype=torch.float64)
        self.v = torch.randn(2, 4, generator=g, dtype=torch.float64)
        self.drop = torch.nn.Dropout(0.5)

    def encode(self, x):
        return self.drop(x.flatten(1) @ self.w)[:, None, :]

    def decode(self, z):
        return (z.flatten(1) @ self.v).reshape(-1, 1, 2, 2)


def test_encode_and_reconstruct_all_by_hand():
    model = _Coder()
    x = torch.rand(7, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    codes = code_metrics.encode_all(model, x, batch_size=3)
    torch.testing.assert_close(codes, x.flatten(1) @ model.w)
    torch.testing.assert_close(
        code_metrics.reconstruct_all(model, x, batch_size=3), (x.flatten(1) @ model.w @ model.v).reshape(7, 1, 2, 2)
    )
    torch.testing.assert_close(code_metrics.encode_all(model, x), codes)
    assert model.training


def test_traversal_rows_by_hand():
    model = _Coder()
    x = torch.rand(9, 1, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    codes = (x.flatten(1) @ model.w).numpy()
    rows = code_metrics.traversal_rows(model, x[4], codes, dims=[1, 0], steps=3)
    assert rows.shape == (2, 4, 1, 2, 2) and model.training
    z = x[4].flatten() @ model.w
    for row, d in zip(rows, (1, 0)):
        assert torch.equal(row[0], x[4])
        for j, q in enumerate((0.02, 0.5, 0.98)):
            moved = z.clone()
            moved[d] = float(np.quantile(codes[:, d], q))
            torch.testing.assert_close(row[1 + j], (moved @ model.v).reshape(1, 2, 2))


def test_interpolation_rows_by_hand():
    model = _Coder()
    x = torch.rand(5, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rows = code_metrics.interpolation_rows(model, x, [(0, 3), (4, 1)], steps=3)
    assert rows.shape == (2, 5, 1, 2, 2) and model.training
    for row, (a, b) in zip(rows, [(0, 3), (4, 1)]):
        assert torch.equal(row[0], x[a]) and torch.equal(row[-1], x[b])
        za, zb = x[a].flatten() @ model.w, x[b].flatten() @ model.w
        for j, t in enumerate((0.0, 0.5, 1.0)):
            torch.testing.assert_close(row[1 + j], (((1 - t) * za + t * zb) @ model.v).reshape(1, 2, 2))


class _Bar:
    total, n = 500, 0

    def update(self, k):
        self.n += k


def test_tsne_iterations_move_the_bar():
    bar = _Bar()
    out = code_metrics._TsneIterations(bar)
    text = "[t-SNE] Iteration 50: error = 1.2\n[t-SNE] KL divergence\n[t-SNE] Iteration 100: error = 0.9\n"
    assert out.write(text) == len(text) and bar.n == 100
    assert out.write("[t-SNE] Iteration 750: error = 0.1") == 34 and bar.n == 500
    assert out.write("nothing") == 7 and bar.n == 500
    assert out.flush() is None


@pytest.mark.parametrize("n, perplexity", [(7, 2.0), (16, 5.0), (97, 30.0)])
def test_tsne_2d_is_sklearns(n, perplexity, monkeypatch, capsys):
    from sklearn.manifold import TSNE

    codes = np.random.default_rng(n).normal(size=(n, 3))
    expected = TSNE(n_components=2, init="pca", random_state=4, perplexity=perplexity, max_iter=500).fit_transform(
        codes.astype(np.float32)
    )
    monkeypatch.setattr("aelab.progress._is_terminal", lambda stream: False)
    np.testing.assert_array_equal(code_metrics.tsne_2d(codes, seed=4, progress="run"), expected)
    assert capsys.readouterr() == ("", "")  # no bar, and sklearn says nothing (verbose=0)
    if n == 16:
        bars = []

        class Tqdm(_Bar):
            def __init__(self, **options):
                self.options, self.steps, self.total, self.n = options, [], options["total"], 0
                bars.append(self)

            def update(self, k):
                self.steps.append(k)
                self.n += k

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        monkeypatch.setattr("aelab.progress._is_terminal", lambda stream: stream is sys.stderr)
        monkeypatch.setattr("tqdm.tqdm", Tqdm)
        np.testing.assert_array_equal(code_metrics.tsne_2d(codes, seed=4, progress="run"), expected)
        assert capsys.readouterr().out == ""  # sklearn's verbose lines go to the bar only
        (bar,) = bars
        assert bar.options == {"total": 500, "desc": "run: t-SNE", "unit": "it", "file": sys.stderr, "leave": False}
        assert bar.n == 500 and bar.steps[:2] == [50, 50]  # "Iteration 50", "Iteration 100", ..., then the rest
        np.testing.assert_array_equal(code_metrics.tsne_2d(codes, seed=4), expected)
        assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------- contraction
from aelab.metrics import contraction  # noqa: E402


class _MlpCoder(torch.nn.Module):
    """encode = encoder(x.flatten(1)) (has_mlp_encoder) or the same through a conv-like path (not an MLP)."""

    def __init__(self, sizes, final, mlp=True, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(torch.nn.Linear(a, b).double())
            if i < len(sizes) - 2:
                layers.append(torch.nn.Tanh())
        layers.append(final)
        self.encoder = torch.nn.Sequential(*layers)
        self.has_mlp_encoder = mlp
        self.input_shape = (1, sizes[0])
        self.drop = torch.nn.Dropout(0.5)

    def encode(self, x):
        return self.encoder(self.drop(x).flatten(1))[:, None]


def _jacobians(model, x):
    """Brute force: torch.autograd.functional.jacobian of encode, one point at a time, eval mode (float64)."""
    model.eval()
    out = [torch.autograd.functional.jacobian(lambda v: model.encode(v[None]).flatten(), xi) for xi in x]
    model.train()
    return torch.stack([j.reshape(j.shape[0], -1) for j in out])


def test_code_activation():
    assert contraction.code_activation(_MlpCoder([3, 2], torch.nn.Sigmoid())) == "sigmoid"
    assert contraction.code_activation(_MlpCoder([3, 2], torch.nn.Tanh())) == "tanh"
    assert contraction.code_activation(_MlpCoder([3, 2], torch.nn.Identity())) is None
    assert contraction.code_activation(torch.nn.Linear(2, 2)) is None  # no encoder
    stand_in = torch.nn.Module()
    stand_in.encoder = lambda x: x  # not a module
    assert contraction.code_activation(stand_in) is None


def test_saturation_by_hand():
    codes = torch.tensor([[0.05, 0.0501, 0.95, 0.9499], [0.0, 1.0, 0.5, 0.2]], dtype=torch.float64)
    assert contraction.saturation(codes) == 4 / 8
    assert contraction.saturation(codes, tolerance=0.2) == 7 / 8  # 0.2 itself too


@pytest.mark.parametrize(
    "sizes, final, mlp, method",
    [
        ([4, 3], torch.nn.Sigmoid(), True, "analytic"),
        ([4, 5, 3], torch.nn.Sigmoid(), True, "exact"),
        ([3, 5], torch.nn.Tanh(), False, "exact"),
    ],  # fmt: skip
)
def test_contraction_diagnostics_by_brute_force(sizes, final, mlp, method):
    model = _MlpCoder(sizes, final, mlp)
    x = torch.rand(23, 1, sizes[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    j = _jacobians(model, x)
    fro = j.pow(2).sum((1, 2)).sqrt()
    model.eval()  # the direct calls: as contraction_diagnostics calls them
    norms, used = contraction.jacobian_norms(model, x, chunk_size=7)
    assert used == method
    torch.testing.assert_close(norms, fro)
    sv = torch.as_tensor(np.linalg.svd(j[:20].numpy(), compute_uv=False))  # descending
    spectrum = contraction.jacobian_spectrum(model, x[:20], chunk_size=6)
    torch.testing.assert_close(spectrum, sv, rtol=1e-6, atol=1e-7)
    assert spectrum.dtype == torch.float64 and torch.get_num_threads() == 1
    model.train()

    metrics, mean_spectrum = contraction.contraction_diagnostics(model, x)
    assert model.training
    model.eval()
    codes = model.encode(x).flatten(1).detach()
    model.train()
    expected_sat = (
        float(((codes <= 0.05) | (codes >= 0.95)).double().mean()) if final.__class__ is torch.nn.Sigmoid else None
    )
    above = (sv > 0.01 * sv[:, :1]).double().sum(1).mean()
    assert metrics == {
        "jacobian_fro_mean": pytest.approx(float(fro.mean()), rel=1e-9),
        "jacobian_fro_sq_mean": pytest.approx(float(fro.pow(2).mean()), rel=1e-9),
        "jacobian_method": method,
        "saturation": expected_sat,
        "jacobian_sv_top": pytest.approx(float(sv[:, 0].mean()), rel=1e-6),
        "jacobian_sv_above_1pct": float(above),
        "spectrum_points": 20,
    }
    assert mean_spectrum == pytest.approx(sv.mean(0).tolist(), rel=1e-6, abs=1e-7)
    small, _ = contraction.contraction_diagnostics(model, x[:5])
    assert small["spectrum_points"] == 5
    assert small["jacobian_sv_top"] == pytest.approx(float(sv[:5, 0].mean()), rel=1e-6)


def test_ranking_takes_boolean_scores_as_0_and_1():
    assert ranking.precision_recall_at_k([False, True, False], [0, 1, 1], 1) == (1.0, 0.5)
    assert ranking.auroc([False, True, False], [0, 1, 1]) == 0.75


def test_class_metrics_and_mean_curves_flatten_the_labels_and_take_nonzero_as_positive():
    s = np.array([0.9, 0.1, 0.5, 0.5, 0.3, 0.8, 0.2, 0.7])
    classes = np.array([[7], [7], [7], [7], [3], [3], [3], [3]])
    p = np.array([1, 0, 1, 0, 0, 1, 1, 0], bool)
    flat = ranking.class_metrics(s, classes, p)
    row = ranking.class_metrics(s, classes.T, p[None, :])  # a row of labels
    assert row == flat
    twos = ranking.class_metrics(s, classes, 2 * p.astype(int))  # 2 counts as one positive
    assert [r["n_conflicting"] for r in twos["per_class"]] == [2, 2] and twos == flat
    expected = ranking.mean_curves(s, classes, p, points=5)
    got = ranking.mean_curves(s, classes.T, p[None, :], points=5)
    for key in ("tpr", "precision"):
        np.testing.assert_array_equal(got[key], expected[key])


def test_auroc_of_one_class_is_nan_without_asking_sklearn():
    """sklearn's roc_auc_score warns (UndefinedMetricWarning) and gives NaN; auroc returns NaN before calling it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(ranking.auroc([0.1, 0.2], [1, 1]))
        assert math.isnan(ranking.auroc([0.1, 0.2], [0, 0]))


class _DoubleCoder(_Coder):
    """_Coder computing in float64 whatever the images' dtype: its decoded images are float64."""

    def encode(self, x):
        return self.drop(x.double().flatten(1) @ self.w)[:, None, :]


def test_interpolation_rows_at_thirds_in_float64():
    model = _Coder()
    x = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    rows = code_metrics.interpolation_rows(model, x, [(2, 0)], steps=4)
    za, zb = x[2].flatten() @ model.w, x[0].flatten() @ model.w
    for j in range(4):
        t = j / 3  # in float64: a float32 t would be off by about 1e-8
        expected = (((1 - t) * za + t * zb) @ model.v).reshape(1, 2, 2)
        torch.testing.assert_close(rows[0, 1 + j], expected, rtol=1e-13, atol=1e-15)


def test_rows_have_the_images_dtype_and_default_steps():
    model = _DoubleCoder()
    x = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(5))  # float32 images, float64 decoder
    rows = code_metrics.interpolation_rows(model, x, [(0, 1), (2, 3), (1, 1)])
    assert rows.shape == (3, 12, 1, 2, 2) and rows.dtype == torch.float32  # 10 steps by default
    za, zb = x[2].double().flatten() @ model.w, x[3].double().flatten() @ model.w
    torch.testing.assert_close(rows[1, 5], ((5 / 9 * za + 4 / 9 * zb) @ model.v).reshape(1, 2, 2).float())
    codes = (x.double().flatten(1) @ model.w).numpy()
    rows = code_metrics.traversal_rows(model, x[1], codes, dims=[0])
    assert rows.shape == (1, 10, 1, 2, 2) and rows.dtype == torch.float32  # 9 steps by default
    z = x[1].double().flatten() @ model.w
    z[0] = float(np.quantile(codes[:, 0], 0.5))
    torch.testing.assert_close(rows[0, 5], (z @ model.v).reshape(1, 2, 2).float())
    assert torch.equal(rows[0, 0], x[1])


def test_tsne_2d_seeds_sklearns_pca_start():
    """Wide codes (501 > 500 features, 40 points): sklearn's PCA start is a randomized SVD, so the seed matters."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    codes = np.random.default_rng(16).normal(size=(40, 501))
    with threadpool_limits(1):
        maps = {
            seed: TSNE(init="pca", random_state=seed, perplexity=13.0, max_iter=500).fit_transform(
                codes.astype(np.float32)
            )
            for seed in (0, 3)
        }
        assert not np.array_equal(maps[0], maps[3])
        np.testing.assert_array_equal(code_metrics.tsne_2d(codes), maps[0])
        np.testing.assert_array_equal(code_metrics.tsne_2d(codes, seed=3), maps[3])


def _spy_on_fits(monkeypatch, unconverged=()):
    """Records every fit_logistic call (its x, C, start and fit); the calls numbered in `unconverged` report
    that they did not converge."""
    import dataclasses

    from aelab.metrics import logistic

    calls, real = [], logistic.fit_logistic

    def spy(x, y, C, start=None, **options):
        fit = real(x, y, C, start=start, **options)
        if len(calls) in unconverged:
            fit = dataclasses.replace(fit, converged=False)
        calls.append((x, C, start, fit))
        return fit

    monkeypatch.setattr(logistic, "fit_logistic", spy)
    return calls


def test_validated_probe_refit_starts_from_the_chosen_fit(monkeypatch):
    tx, ty, sx, sy = _probe_data()
    held = np.arange(0, 60, 4)
    keep = np.setdiff1d(np.arange(60), held)
    calls = _spy_on_fits(monkeypatch)
    code_metrics.validated_probe(tx, ty, sx, sy, (keep, held))
    assert [c[1] for c in calls] == [0.001, 0.01, 0.1, 1.0, 10.0, 0.1]  # the grid ascending, then the refit at 0.1
    assert calls[0][2] is None and all(calls[i][2] is calls[i - 1][3] for i in range(1, 5))  # a path
    chosen_x, refit_x, start = calls[2][0], calls[5][0], calls[5][2]
    assert start is not None and len(refit_x) == 60
    # the start is the chosen fit: the same logits on the rows both fits saw, each in its own standardisation
    old = chosen_x @ calls[2][3].weight + calls[2][3].bias
    torch.testing.assert_close(refit_x[keep] @ start.weight + start.bias, old)


@pytest.mark.parametrize("unconverged, expected", [((), True), ((1,), False), ((5,), False), ((4,), False)])
def test_validated_probe_converged_only_when_every_fit_did(monkeypatch, unconverged, expected):
    tx, ty, sx, sy = _probe_data()
    held = np.arange(0, 60, 4)
    keep = np.setdiff1d(np.arange(60), held)
    _spy_on_fits(monkeypatch, unconverged)
    assert code_metrics.validated_probe(tx, ty, sx, sy, (keep, held))["converged"] is expected


def test_probe_takes_binary_codes_as_float64():
    tx, ty, sx, sy = _probe_data()
    bits = lambda x: x[:, :2] > np.median(tx[:, :2], axis=0)  # noqa: E731
    got = code_metrics.probe_accuracy(bits(tx), ty, bits(sx), sy, 1.0)
    assert got == sklearn_probe(bits(tx).astype(np.float64), ty, bits(sx).astype(np.float64), sy, 1.0)


def test_restandardized_keeps_the_fits_dtype():
    from aelab.metrics.logistic import LogisticFit

    weight = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float32)
    fit = LogisticFit(weight, torch.tensor([0.25, -1.0]), np.array([0, 1]), 3, True)
    old = Standardizer(torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([2.0, 4.0], dtype=torch.float64))
    new = Standardizer(torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([4.0, 1.0], dtype=torch.float64))
    moved = code_metrics.restandardized(fit, old, new)
    assert moved.weight.dtype == moved.bias.dtype == torch.float32
    torch.testing.assert_close(moved.weight, torch.tensor([[2.0, -4.0], [0.125, 0.75]]))  # rows times 2 and 1/4
    torch.testing.assert_close(moved.bias, torch.tensor([0.25 - 0.5 - 0.125, -1.0 + 1.0 - 0.75]))  # shift (-1/2, -1/4)
    # float32 standardisations of a float64 fit: the moved fit is float64
    old32, new32 = Standardizer(old.mean.float(), old.scale.float()), Standardizer(new.mean.float(), new.scale.float())
    fit64 = LogisticFit(weight.double(), fit.bias.double(), fit.classes, 3, True)
    moved = code_metrics.restandardized(fit64, old32, new32)
    assert moved.weight.dtype == moved.bias.dtype == torch.float64


class _EncodeOnly(torch.nn.Module):
    """A model with encode() and no `encoder` attribute: differentiated through encode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.linear = torch.nn.Linear(4, 3).double()
        self.input_shape = (2, 2)

    def encode(self, x):
        return torch.sigmoid(self.linear(x.flatten(1)))


def test_jacobian_norms_of_a_model_without_an_encoder_attribute():
    model = _EncodeOnly()
    x = torch.rand(5, 2, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    j = torch.stack(
        [torch.autograd.functional.jacobian(lambda v: model.encode(v[None])[0], xi).reshape(3, 4) for xi in x]
    )
    norms, method = contraction.jacobian_norms(model, x)
    assert method == "exact"
    torch.testing.assert_close(norms, j.pow(2).sum((1, 2)).sqrt())
    assert contraction.code_activation(model) is None


class _ScaledInput(torch.nn.Module):
    """encoder: Linear + Sigmoid (the closed form's pattern), but encode doubles the input first: not an MLP
    encoder (no has_mlp_encoder), so its Jacobian must come through encode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Sigmoid()).double()
        self.input_shape = (4,)

    def encode(self, x):
        return self.encoder(2 * x.flatten(1))


def test_jacobian_norms_go_through_encode_unless_the_model_says_mlp():
    model = _ScaledInput()
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    j = torch.stack([torch.autograd.functional.jacobian(lambda v: model.encode(v[None])[0], xi) for xi in x])
    norms, method = contraction.jacobian_norms(model, x)
    assert method == "exact"
    torch.testing.assert_close(norms, j.pow(2).sum((1, 2)).sqrt())
    assert contraction.code_activation(model) == "sigmoid"


class _Diagonal(torch.nn.Module):
    """encode(x) = x * (1, 0.01, 0.5): singular values 1, 0.5 and exactly 1% of the largest."""

    input_shape = (3,)

    def encode(self, x):
        return x.flatten(1) * torch.tensor([1.0, 0.01, 0.5], dtype=torch.float64)


def test_singular_values_at_exactly_one_percent_are_not_above_it():
    x = torch.rand(4, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    spectrum = contraction.jacobian_spectrum(_Diagonal(), x)
    assert spectrum.tolist() == [[1.0, 0.5, 0.01]] * 4  # exact: the Gram matrix is diagonal
    metrics, mean_spectrum = contraction.contraction_diagnostics(_Diagonal(), x)
    assert metrics["jacobian_sv_above_1pct"] == 2.0 and metrics["jacobian_sv_top"] == 1.0
    assert metrics["saturation"] is None and metrics["jacobian_method"] == "exact"
    assert mean_spectrum == [1.0, 0.5, 0.01]
    assert metrics["jacobian_fro_sq_mean"] == pytest.approx(1 + 0.01**2 + 0.25, rel=1e-14)


def test_encode_module_takes_a_batch_of_flat_images():
    model = _MlpCoder([4, 3], torch.nn.Sigmoid(), mlp=False)
    model.eval()
    model.input_shape = (2, 2)
    x = torch.rand(5, 2, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    torch.testing.assert_close(contraction._Encode(model)(x.flatten(1)), model.encode(x).flatten(1), rtol=0, atol=0)


class _NoInputShape(torch.nn.Module):
    """No input_shape: encode takes the images flat, in any batch shape."""

    w = torch.tensor([[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]], dtype=torch.float64)

    def encode(self, x):
        return torch.tanh(x.reshape(-1, 3) @ self.w)


def test_jacobians_of_a_model_without_input_shape():
    model = _NoInputShape()
    x = torch.rand(4, 3, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    j = torch.stack([torch.autograd.functional.jacobian(lambda v: model.encode(v)[0], xi) for xi in x])
    norms, method = contraction.jacobian_norms(model, x)
    torch.testing.assert_close(norms, j.pow(2).sum((1, 2)).sqrt())
    sv = torch.as_tensor(np.linalg.svd(j.numpy(), compute_uv=False))
    torch.testing.assert_close(contraction.jacobian_spectrum(model, x), sv, rtol=1e-6, atol=1e-7)


def test_jacobian_spectrum_decomposes_on_one_thread(monkeypatch):
    """eigvalsh runs under torch_threads(1): its small parallel regions stall on a shared machine."""
    asked, real = [], contraction.torch_threads

    def spy(n):
        asked.append(n)
        return real(n)

    monkeypatch.setattr(contraction, "torch_threads", spy)
    x = torch.rand(7, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    contraction.jacobian_spectrum(_Diagonal(), x, chunk_size=3)
    assert asked == [1, 1, 1]  # one per chunk of 3, 3 and 1 points
