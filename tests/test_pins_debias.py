"""Pins of the debiasing experiments beyond the formulas: LfF as the experiments call it (the debiased model's
relative-difficulty weights, the biased model on GCE, two different initial models) against a transcription of
Nam et al.'s Algorithm 1; the debias-classifier cell's grading (against digits, grouped by colour); the
group-balanced oracle's (digit, colour) groups."""

import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from aelab import debias as dm
from aelab.debias import lff as lff_mod
from aelab.experiments import debias_classifier_cell as cell

pytestmark = pytest.mark.usefixtures("one_thread")


def _lff_by_hand(model_b, model_d, images, digits, batches, q, alpha, lr, n_classes):
    """Algorithm 1 of Nam et al. (2020) with LfF's reference code's class-max normalisation, written from the
    paper: per-sample EMAs of each model's CE (first visit: the CE), W = L_B / (L_B + L_D) after dividing each by
    its class maximum, loss = mean GCE_q(f_B) + mean W CE(f_D); one Adam over both models."""
    opt = torch.optim.Adam([*model_b.parameters(), *model_d.parameters()], lr=lr)
    n = len(images)
    ema = {"b": torch.zeros(n), "d": torch.zeros(n)}
    seen = torch.zeros(n, dtype=torch.bool)
    for idx in batches:
        x, y = images[idx], digits[idx]
        logits_b, logits_d = model_b(x), model_d(x)
        ce = {"b": F.cross_entropy(logits_b, y, reduction="none"), "d": F.cross_entropy(logits_d, y, reduction="none")}
        for key in ("b", "d"):
            old = ema[key][idx]
            ema[key][idx] = torch.where(seen[idx], alpha * old + (1 - alpha) * ce[key].detach(), ce[key].detach())
        seen[idx] = True
        normed = {}
        for key in ("b", "d"):
            class_max = torch.stack([ema[key][digits == c].max() for c in range(n_classes)])
            normed[key] = ema[key][idx] / class_max[y]
        w = normed["b"] / (normed["b"] + normed["d"] + 1e-8)
        log_p_y = F.log_softmax(logits_b, 1).gather(1, y[:, None]).squeeze(1)
        gce = (1 - torch.exp(q * log_p_y)) / q  # (1 - p_y^q) / q
        loss = gce.mean() + (w * ce["d"]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_lff_trains_both_models_as_algorithm_1_from_two_different_starts(monkeypatch):
    """train_lff as the debias-classifier cell calls it (a grid point of q and alpha): its two returned models equal
    Algorithm 1 run here from the same two initial models over the same batches; and the two initial models
    differ (one shared start would make the biased and debiased model one model at step 0)."""
    import copy

    gen = torch.Generator().manual_seed(0)
    images, digits = torch.randn(30, 6, generator=gen), torch.arange(30) % 3
    starts, batches = [], []
    real_new, real_weights = lff_mod.new_classifier, lff_mod.lff_weights

    def recording_new(*args, **kwargs):
        model = real_new(*args, **kwargs)
        starts.append(copy.deepcopy(model))
        return model

    def recording_weights(ema_b, ema_d, idx, all_digits, n_classes):
        batches.append(idx.clone())
        return real_weights(ema_b, ema_d, idx, all_digits, n_classes)

    monkeypatch.setattr(lff_mod, "new_classifier", recording_new)
    monkeypatch.setattr(lff_mod, "lff_weights", recording_weights)
    g = cell.LFF_GRID[1]
    model_d, model_b = dm.train_lff(images, digits, 2, seed=7, q=g["q"], ema_alpha=g["ema_alpha"], batch_size=8,
                                    n_classes=3)  # fmt: skip
    assert len(starts) == 2 and len(batches) == 8
    start_params = [torch.cat([p.flatten() for p in m.parameters()]) for m in starts]
    assert not torch.allclose(start_params[0], start_params[1])  # two different initial models
    for b_start, d_start in ((0, 1), (1, 0)):
        mine_b, mine_d = copy.deepcopy(starts[b_start]), copy.deepcopy(starts[d_start])
        _lff_by_hand(mine_b, mine_d, images, digits, batches, g["q"], g["ema_alpha"], 1e-3, 3)
        got = [torch.cat([p.flatten() for p in m.parameters()]) for m in (model_b, model_d)]
        want = [torch.cat([p.flatten() for p in m.parameters()]) for m in (mine_b, mine_d)]
        if all(torch.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(got, want)):
            break
    else:
        raise AssertionError("train_lff's models are not Algorithm 1's from either assignment of the two starts")


class _Follower(nn.Module):
    """A classifier of the planted test images: predicts feature `column` (0: the digit, 1: the colour)."""

    def __init__(self, column: int):
        super().__init__()
        self.column = column
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return F.one_hot(x[:, self.column].long(), 10).float() + 0 * self.dummy


def test_the_cell_grades_accuracy_against_the_digits_and_groups_by_colour(monkeypatch):
    """run_cell's table for a model that follows the colour and one that follows the digit, on a colour-uniform
    test set: computed here from the predictions, the digits and the colours."""
    rng = np.random.default_rng(0)
    digits, colours = rng.integers(0, 10, 200), rng.integers(0, 10, 200)
    test_x = torch.tensor(np.stack([digits, colours], 1), dtype=torch.float32)
    split = {"images": test_x, "digits": torch.from_numpy(digits), "colours": torch.from_numpy(colours)}
    followers = {"vanilla": _Follower(1), "lff": _Follower(0)}
    fit = {"models": followers, "choices": {"synthesis": {"chosen": {"p": 0.5}}}, "bias": {}, "timings": {},
           "synthesizer": types.SimpleNamespace(sample=lambda idx, gen: test_x[idx]), "aes": {}}  # fmt: skip
    monkeypatch.setattr(cell, "fit_label_free", lambda *a, **k: fit)
    monkeypatch.setattr(cell, "fit_oracles", lambda *a, **k: {})
    settings = types.SimpleNamespace(device="cpu", amp=False, epochs=1, ae_epochs=1)
    result = cell.run_cell(settings, 0.99, 0, splits={"train": split, "val": split, "test": {"unbiased": split}})
    for name, column in (("vanilla", 1), ("lff", 0)):
        pred = np.stack([digits, colours], 1)[:, column]
        graded = result["metrics"]["unbiased"][name]
        aligned = colours == digits
        groups = {(d, c): (pred[(digits == d) & (colours == c)] == d).mean() for d, c in set(zip(digits, colours))}
        assert graded["unbiased"] == pytest.approx((pred == digits).mean())
        assert graded["aligned"] == pytest.approx((pred[aligned] == digits[aligned]).mean())
        assert graded["conflicting"] == pytest.approx((pred[~aligned] == digits[~aligned]).mean())
        assert graded["worst_group"] == pytest.approx(min(groups.values())) and graded["n_groups"] == len(groups)
    assert result["metrics"]["unbiased"]["vanilla"]["unbiased"] < 0.3  # the colour follower is graded as wrong


def test_the_group_balanced_oracle_weighs_each_digit_colour_group_equally(monkeypatch):
    """fit_oracles trains both oracles with w_i = 1 / #(digit_i, colour_i), normalised; groups (1, 2) and (2, 1),
    (0, 3) and (3, 0) of different sizes must stay apart (a key such as digit + colour would merge them)."""
    pairs = [(1, 2)] * 5 + [(2, 1)] * 1 + [(0, 3)] * 3 + [(3, 0)] * 2 + [(0, 0)] * 4 + [(1, 1)] * 1
    digits = torch.tensor([d for d, _ in pairs])
    colours = torch.tensor([c for _, c in pairs])
    captured = []
    monkeypatch.setattr(dm, "train_classifier", lambda *a, weights=None, **k: (captured.append(weights), {}))
    monkeypatch.setattr(dm, "Synthesizer", lambda *a, **k: None)
    cell.fit_oracles(torch.zeros(len(pairs), 4), digits, colours, epochs=1, seed=0, synth_fraction=0.5)
    counts = {p: pairs.count(p) for p in pairs}
    expected = np.array([1 / counts[p] for p in pairs])
    expected /= expected.sum()
    assert len(captured) == 2
    for w in captured:
        np.testing.assert_allclose(np.asarray(w, dtype=float), expected, rtol=1e-12)
