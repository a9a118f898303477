"""Pins of the debiasing library (issue 22), each against an independent computation on a tiny hand-made case:
weighted resampling's draw frequencies, JTT's error set and weights, detect-then-reweight's flagged end and
per-class masses, the bias-factor discovery on planted single-factor models, the first-best hyper-parameter
selection, the graded group metrics (digit targets, colour groups, empty groups), and LfF's two running averages
each following its own model's loss."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import chisquare

from aelab import debias as dm
from aelab.debias import classifier as classifier_mod
from aelab.debias import lff as lff_mod
from aelab.experiments import debias_classifier_cell as cell

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- 1. weighted resampling
def test_weighted_resampling_draws_each_sample_in_proportion_to_its_weight(monkeypatch):
    n, epochs = 50, 60
    images = torch.arange(n, dtype=torch.float32).reshape(n, 1)  # each image is its own index
    digits = (torch.arange(n) % 2).long()
    weights = torch.ones(n)
    weights[40:] = 6.0  # 10 upweighted samples carry 60 of the 100 units of weight
    drawn: list[torch.Tensor] = []
    real_new = classifier_mod.new_classifier

    def recording_classifier(*args, **kwargs):
        model = real_new(*args, **kwargs)
        model.register_forward_pre_hook(
            lambda m, inp: drawn.append(inp[0][:, 0].round().long()) if m.training else None
        )
        return model

    monkeypatch.setattr(classifier_mod, "new_classifier", recording_classifier)
    dm.train_classifier(images, digits, epochs, seed=3, weights=weights, n_classes=2)
    counts = np.bincount(torch.cat(drawn).numpy(), minlength=n)
    total = n * epochs
    assert counts.sum() == total  # N draws per epoch
    p = np.r_[np.ones(40), np.full(10, 6.0)] / 100  # by hand: P(i) = w_i / sum_j w_j
    # the upweighted group: its share of the draws within 4 binomial std of 0.6
    share, p_up = counts[40:].sum(), p[40:].sum()
    assert abs(share - total * p_up) < 4 * math.sqrt(total * p_up * (1 - p_up)), (share, total * p_up)
    # per sample: the counts follow the multinomial (a draw ignoring the weights gives a chi-square of ~1500)
    assert chisquare(counts, total * p).pvalue > 1e-3
    # each upweighted sample is drawn about 6 times as often as each other one
    assert 4.5 < counts[40:].mean() / counts[:40].mean() < 7.5


# ---------------------------------------------------------------- 2. JTT
def test_jtt_upweights_exactly_the_error_set_by_lambda_up():
    digits = torch.tensor([0, 1, 1, 2, 2, 0])
    predictions = np.array([0, 2, 1, 2, 0, 1])  # wrong on samples 1, 4, 5
    w, n_errors = dm.upweights(predictions, digits, lambda_up=20.0)
    assert n_errors == 3
    assert w.tolist() == [1.0, 20.0, 1.0, 1.0, 20.0, 20.0]
    w, n_errors = dm.upweights(digits.numpy(), digits, lambda_up=50.0)  # no error: uniform
    assert n_errors == 0 and w.tolist() == [1.0] * 6


def test_jtt_error_set_is_read_after_exactly_t_epochs_of_erm():
    gen = torch.Generator().manual_seed(0)
    images, digits = torch.randn(24, 5, generator=gen), torch.randint(0, 3, (24,), generator=gen)
    snaps = dm.identification_predictions(images, digits, [2, 1, 2], seed=7, n_classes=3, batch_size=8)
    assert sorted(snaps) == [1, 2]
    for t in (1, 2):  # independently: a T-epoch run's final predictions
        model, _ = dm.train_classifier(images, digits, t, 7, n_classes=3, batch_size=8)
        assert np.array_equal(snaps[t], dm.predict(model, images)), t
    assert not np.array_equal(snaps[1], snaps[2])  # the check can tell the epochs apart


# ---------------------------------------------------------------- 3. detect-then-reweight
def test_detect_then_reweight_flags_the_highest_scores_of_each_class():
    digits = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.9, 0.5, 0.3, 0.2, 5.0, 7.0, 6.0])
    assert dm.top_fraction_flags(scores, digits, 0.2).tolist() == [0, 1, 0, 0, 0, 0, 1, 0]
    # ceil(0.4 * 5) = 2 in class 0, ceil(0.4 * 3) = 2 in class 1
    assert dm.top_fraction_flags(scores, digits, 0.4).tolist() == [0, 1, 1, 0, 0, 0, 1, 1]
    # at least one per class, and the first of equal scores
    assert dm.top_fraction_flags(np.zeros(8), digits, 0.01).tolist() == [1, 0, 0, 0, 0, 1, 0, 0]


@pytest.mark.parametrize("rho, n", [(0.07, 100), (0.14, 50), (0.01, 100), (0.05, 40), (0.02, 49)])
def test_detect_then_reweight_flags_ceil_rho_n_per_class(rho, n):
    # 0.07 * 100 = 7.000000000000001 in floating point: ceil must still give 7 (it gave 8 before issue 22)
    expected = max(1, math.ceil(round(rho * 1000) * n / 1000))  # exact integer arithmetic
    flags = dm.top_fraction_flags(np.arange(n, dtype=float), np.zeros(n, dtype=int), rho)
    assert flags.sum() == expected
    assert flags[n - expected :].all()  # the highest scores


def test_detect_then_reweight_gives_each_class_its_share_split_half_flagged_half_not():
    digits = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    flags = np.array([0, 1, 0, 0, 0, 0, 1, 0], dtype=bool)
    w = dm.balanced_flag_weights(flags, digits).numpy()
    # by hand, before normalising (sum 8): class 0 (n=5): flagged 5/2, unflagged 5/8 each;
    # class 1 (n=3): flagged 3/2, unflagged 3/4 each
    expected = np.array([5 / 8, 5 / 2, 5 / 8, 5 / 8, 5 / 8, 3 / 4, 3 / 2, 3 / 4]) / 8
    assert np.allclose(w, expected, rtol=0, atol=1e-12)
    assert w.sum() == pytest.approx(1.0)
    for c, n_c in ((0, 5), (1, 3)):  # class mass n_c / N, half of it on the flagged samples
        m = digits == c
        assert w[m].sum() == pytest.approx(n_c / 8)
        assert w[m & flags].sum() == pytest.approx(n_c / 16)
        assert w[m & ~flags].sum() == pytest.approx(n_c / 16)
    # a class whose samples are all flagged: uniform within it, still its share
    w = dm.balanced_flag_weights(np.array([1, 1, 0, 1], dtype=bool), np.array([0, 0, 1, 1])).numpy()
    assert np.allclose(w, [0.25, 0.25, 0.25, 0.25])


# ---------------------------------------------------------------- 4. bias-factor discovery
CENTRES = torch.tensor([0.2, 0.5, 0.8])  # brightness levels
ROWS = (0, 3, 6)  # the row of the 2 x 2 block


def _factor_images() -> tuple[torch.Tensor, torch.Tensor]:
    """27 images 3 x 8 x 8: every combination of a pure colour (channel), a brightness and a block position,
    the factors independent. Returns images and their (colour, brightness, position) classes (27, 3)."""
    images, classes = [], []
    for c in range(3):
        for b in range(3):
            for r in range(3):
                x = torch.zeros(3, 8, 8)
                x[c, ROWS[r] : ROWS[r] + 2, 3:5] = CENTRES[b]
                images.append(x)
                classes.append((c, b, r))
    return torch.stack(images), torch.tensor(classes)


class _Planted(nn.Module):
    """A hand-written "biased model" that predicts from one factor only."""

    def __init__(self, factor: str):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        if self.factor == "colour_statistics":  # the channel with the most ink
            return x.sum((2, 3))
        if self.factor == "brightness":  # mean intensity, nearest level (block of 4 pixels in 3 x 64)
            level = x.mean((1, 2, 3)) * 192 / 4
            return -((level[:, None] - CENTRES) ** 2)
        ink = x.sum(1).sum(2)  # position: the row centre of mass, nearest block centre
        row = (ink * torch.arange(8.0)).sum(1) / ink.sum(1)
        return -((row[:, None] - torch.tensor(ROWS, dtype=torch.float32) - 0.5) ** 2)


@pytest.mark.parametrize("factor", list(dm.SWAPS))
def test_bias_reliance_finds_the_one_factor_a_planted_model_follows(factor):
    images, classes = _factor_images()
    model = _Planted(factor)
    assert np.array_equal(dm.predict(model, images), classes[:, list(dm.SWAPS).index(factor)].numpy())
    reliance = dm.bias_reliance(model, images, n_pairs=300, seed=1)
    # by construction every swap of the followed factor moves the prediction to the donor's, no other swap does
    assert reliance == {name: (1.0 if name == factor else 0.0) for name in dm.SWAPS}


# ---------------------------------------------------------------- 5. selection (and the discovered factor) in a cell
class _Candidate(nn.Module):
    def __init__(self, score: float):
        super().__init__()
        self.score = score


@pytest.fixture
def stubbed_cell(monkeypatch):
    """fit_label_free with every training replaced by a stub whose model has a given validation score (in call
    order: vanilla, the LfF grid, the JTT grid, the detect grid, the synthesis grid) and a planted biased model;
    the bias discovery, the synthesis, the flags and the selection are the real ones."""

    def run(planted: str, scores: list[float]) -> dict:
        queue = iter(scores)
        monkeypatch.setattr(dm, "train_biased_classifier", lambda *a, **k: _Planted(planted))
        monkeypatch.setattr(dm, "accuracy", lambda model, images, digits: model.score)
        monkeypatch.setattr(dm, "train_classifier", lambda *a, **k: (_Candidate(next(queue)), {}))
        monkeypatch.setattr(dm, "train_lff", lambda *a, **k: (_Candidate(next(queue)), _Candidate(-1.0)))
        monkeypatch.setattr(dm, "identification_predictions", lambda x, y, ts, *a, **k: {t: y.numpy() for t in ts})
        rng = np.random.default_rng(0)
        monkeypatch.setattr(dm, "biased_log_probabilities", lambda x, *a, **k: rng.normal(size=(len(x), 3)))
        monkeypatch.setattr(dm, "train_autoencoder", lambda *a, **k: None)
        images, classes = _factor_images()
        digits = torch.arange(27) % 3
        fit = cell.fit_label_free(images, digits, images.clone(), digits.clone(), 1, 1, seed=0)
        assert next(queue, None) is None  # every score was used
        return fit

    return run


def _first_best(scores: list[float]) -> int:
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


def test_selection_keeps_the_first_best_validation_score(stubbed_cell):
    per_method = {
        "vanilla": ([{}], [0.5]),
        "lff": (cell.LFF_GRID, [0.4, 0.9, 0.9, 0.1]),  # tie at the top: the first
        "jtt": (cell.JTT_GRID, [0.5, 0.2, 0.8, 0.6]),
        "detect_reweight": (cell.DETECT_GRID, [0.3, 0.3, 0.1]),  # tie at the top, the worst last
        "synthesis": (cell.SYNTH_GRID, [0.1, 0.7, 0.7]),
    }
    fit = stubbed_cell("colour_statistics", [s for _, scores in per_method.values() for s in scores])
    for name, (grid, scores) in per_method.items():
        best = _first_best(scores)
        chosen = fit["choices"][name]
        assert {k: v for k, v in chosen["chosen"].items() if k != "n_errors"} == grid[best], name
        assert chosen["val_score"] == scores[best] and fit["models"][name].score == scores[best], name
        assert [g["val_score"] for g in chosen["grid"]] == scores, name


@pytest.mark.parametrize("factor", list(dm.SWAPS))
def test_the_cell_synthesises_with_the_factor_the_biased_model_follows(stubbed_cell, factor):
    fit = stubbed_cell(factor, [0.5] * 15)
    assert fit["bias"]["factor"] == factor
    assert fit["synthesizer"].factor == factor


# ---------------------------------------------------------------- 6. graded metrics
def test_group_metrics_grade_against_digits_and_group_by_colour():
    digits = np.array([0, 0, 1, 1, 2, 2])
    colours = np.array([0, 1, 1, 0, 2, 0])
    m = dm.group_metrics(colours, digits, colours)  # a model that predicts the colour
    # by hand, targets = digits: right on the aligned samples 0, 2, 4 only
    assert m["unbiased"] == pytest.approx(3 / 6)
    assert m["aligned"] == 1.0 and m["conflicting"] == 0.0
    assert m["worst_group"] == 0.0 and m["n_groups"] == 6
    m = dm.group_metrics(digits, digits, colours)  # a model that predicts the digit
    assert (m["unbiased"], m["aligned"], m["conflicting"], m["worst_group"]) == (1.0, 1.0, 1.0, 1.0)


def test_an_empty_digit_colour_group_is_not_a_group_and_not_nan():
    digits = np.array([0, 0, 0, 1, 1, 2, 2])
    colours = np.array([0, 0, 1, 1, 1, 2, 7])  # groups (0,0) (0,1) (1,1) (2,2) (2,7); e.g. (1,0) (0,2) empty
    pred = np.array([0, 1, 0, 1, 0, 2, 2])
    with np.errstate(all="raise"):
        m = dm.group_metrics(pred, digits, colours)
    # by hand: (0,0) 1/2, (0,1) 1/1, (1,1) 1/2, (2,2) 1/1, (2,7) 1/1
    assert m["n_groups"] == 5
    assert m["worst_group"] == 0.5 and not math.isnan(m["worst_group"])
    assert m["unbiased"] == pytest.approx(5 / 7)
    assert m["aligned"] == pytest.approx(3 / 5) and m["conflicting"] == 1.0


# ---------------------------------------------------------------- 7. LfF's two running averages
def _class_max_weights(ema_b, ema_d, idx, digits):
    """W = lb / (lb + ld), each moving average divided by its class maximum, written out sample by sample."""
    out = []
    for i in idx.tolist():
        same = [j for j in range(len(digits)) if digits[j] == digits[i]]
        lb = ema_b[i] / max(ema_b[j] for j in same)
        ld = ema_d[i] / max(ema_d[j] for j in same)
        out.append(lb / (lb + ld))
    return torch.tensor(out)


def test_lff_weights_grow_with_the_biased_models_loss_not_the_debiased_ones():
    digits = torch.tensor([0, 0, 0])
    ema_b = torch.tensor([4.0, 1.0, 2.0])  # sample 0: hard for the biased model
    ema_d = torch.tensor([1.0, 2.0, 2.0])  # sample 1: hard for the debiased model
    w = dm.lff_weights(ema_b, ema_d, torch.arange(3), digits, n_classes=1)
    # by hand: lb = (1, 1/4, 1/2), ld = (1/2, 1, 1) -> W = (2/3, 1/5, 1/3)
    assert torch.allclose(w, torch.tensor([2 / 3, 1 / 5, 1 / 3]), atol=1e-6)
    assert w[0] > w[2] > w[1]


def test_each_lff_moving_average_follows_its_own_models_loss(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    n, alpha = 12, 0.6
    images, digits = torch.randn(n, 4, generator=gen), torch.tensor([0, 1, 1] * 4)
    created: list[nn.Module] = []
    calls = []
    real_new, real_weights = lff_mod.new_classifier, lff_mod.lff_weights

    def recording_new(*args, **kwargs):
        created.append(real_new(*args, **kwargs))
        return created[-1]

    def spying_weights(ema_b, ema_d, idx, all_digits, n_classes):
        with torch.no_grad():  # each model's loss on this batch, before its step
            ces = [F.cross_entropy(m(images[idx]), digits[idx], reduction="none") for m in created]
        w = real_weights(ema_b, ema_d, idx, all_digits, n_classes)
        calls.append((idx.clone(), ces, ema_b.clone(), ema_d.clone(), w.detach().clone()))
        return w

    monkeypatch.setattr(lff_mod, "new_classifier", recording_new)
    monkeypatch.setattr(lff_mod, "lff_weights", spying_weights)
    model_d, model_b = dm.train_lff(images, digits, 3, seed=4, ema_alpha=alpha, batch_size=5, n_classes=2)
    assert len(created) == 2 and len(calls) == 9  # 3 epochs of batches 5, 5, 2
    which_b = next(k for k, m in enumerate(created) if m is model_b)
    which_d = next(k for k, m in enumerate(created) if m is model_d)
    # independently: each average, first visit = the loss, then alpha old + (1 - alpha) new
    mine_b, mine_d = [0.0] * n, [0.0] * n
    seen = [False] * n
    for idx, ces, ema_b, ema_d, w in calls:
        for pos, i in enumerate(idx.tolist()):
            a = alpha if seen[i] else 0.0
            mine_b[i] = a * mine_b[i] + (1 - a) * float(ces[which_b][pos])
            mine_d[i] = a * mine_d[i] + (1 - a) * float(ces[which_d][pos])
            seen[i] = True
        assert torch.allclose(ema_b, torch.tensor(mine_b), atol=1e-5), "L_B must follow the biased model's loss"
        assert torch.allclose(ema_d, torch.tensor(mine_d), atol=1e-5), "L_D must follow the debiased model's loss"
        assert torch.allclose(w, _class_max_weights(mine_b, mine_d, idx, digits.tolist()).float(), atol=1e-5)
    assert not torch.allclose(calls[-1][2], calls[-1][3], atol=1e-3)  # the two averages do differ
