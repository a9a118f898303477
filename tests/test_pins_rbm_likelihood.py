"""Pins of aelab.metrics.rbm_likelihood (mutation testing, tests/mutate.py): tiny float64 RBMs, each number against
an independent computation (enumeration in numpy, scipy, or by hand)."""

import itertools
import math

import numpy as np
import pytest
import sklearn.model_selection  # noqa: F401  (run_metrics' split imports it: once here, not in every test)
import torch
from scipy.special import expit, logsumexp

import aelab.progress
from aelab.data.datasets import BINARIZE_SEEDS, binarize
from aelab.errors import ConfigError
from aelab.metrics import rbm_likelihood as rl
from aelab.models.rbm import RBM
from aelab.runs import validation_indices

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_rbm(n_visible, n_hidden, seed=0, weight_std=0.7, dtype=torch.float64) -> RBM:
    g = torch.Generator().manual_seed(seed)
    rbm = RBM(n_visible, n_hidden, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    with torch.no_grad():
        rbm.weight.copy_(weight_std * torch.randn(n_visible, n_hidden, generator=g, dtype=dtype))
        rbm.visible_bias.copy_(torch.randn(n_visible, generator=g, dtype=dtype) - 0.5)
        rbm.hidden_bias.copy_(torch.randn(n_hidden, generator=g, dtype=dtype))
    return rbm


def np_params(rbm):
    return (
        rbm.weight.detach().double().numpy(),
        rbm.visible_bias.detach().double().numpy(),
        rbm.hidden_bias.detach().double().numpy(),
    )


def states(n):
    return np.array(list(itertools.product([0.0, 1.0], repeat=n))).reshape(-1, n)


def np_neg_free_energy(rbm, v):
    W, b, c = np_params(rbm)
    return v @ b + np.logaddexp(0, c + v @ W).sum(1)


def np_log_z(rbm):
    return float(logsumexp(np_neg_free_energy(rbm, states(rbm.n_visible))))


class FakeBar:
    made: list = []

    def __init__(self, label, total=None, unit="step"):
        self.label, self.total, self.unit, self.done, self.closed = label, total, unit, 0, False
        self.updates = []
        FakeBar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)
        self.done += n

    def close(self):
        self.closed = True


@pytest.fixture
def fake_bar(monkeypatch):
    FakeBar.made = []
    monkeypatch.setattr(aelab.progress, "Progress", FakeBar)
    return FakeBar.made


# ---------------------------------------------------------------- exact
@pytest.mark.parametrize("n_visible, n_hidden", [(7, 4), (4, 7), (5, 5), (1, 3), (3, 1)])
@pytest.mark.parametrize("chunk_bits", [0, 1, 2, 3, 10, None])
def test_exact_log_z_matches_numpy_for_every_chunking(n_visible, n_hidden, chunk_bits):
    rbm = tiny_rbm(n_visible, n_hidden, seed=n_visible + 7 * n_hidden)
    got = rl.exact_log_z(rbm) if chunk_bits is None else rl.exact_log_z(rbm, chunk_bits=chunk_bits)
    assert got == pytest.approx(np_log_z(rbm), abs=1e-10)
    assert isinstance(got, float)


def test_exact_log_z_of_a_float32_rbm_is_float64_accurate():
    rbm = tiny_rbm(6, 5, seed=2, weight_std=3.0, dtype=torch.float32)
    assert rl.exact_log_z(rbm, chunk_bits=2) == pytest.approx(np_log_z(rbm), abs=1e-11)


def test_exact_log_z_progress_callback_and_label(fake_bar):
    rbm = tiny_rbm(6, 5, seed=1)
    calls = []
    rl.exact_log_z(rbm, chunk_bits=2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4 * j, 32) for j in range(1, 9)]
    assert rl.exact_log_z(rbm, chunk_bits=3, progress="lbl") == pytest.approx(np_log_z(rbm), abs=1e-10)
    (bar,) = fake_bar
    assert (bar.label, bar.total, bar.unit, bar.closed) == ("lbl", 32, "state", True)
    assert bar.updates == [8, 8, 8, 8] and bar.done == 32


def test_exact_log_z_refusal_says_how_many_states():
    with pytest.raises(ConfigError) as info:
        rl.exact_log_z(RBM(27, 40))
    assert str(info.value) == (
        "exact log Z would enumerate 2^27 states (the smaller of 27 visible and 40 hidden units); "
        "at most 2^25 are allowed: estimate it with AIS instead"
    )


def test_exact_log_z_feasible_at_the_boundary():
    assert rl.exact_log_z_feasible(RBM(25, 30)) and not rl.exact_log_z_feasible(RBM(26, 30))
    assert rl.exact_log_z_feasible(RBM(30, 25)) and not rl.exact_log_z_feasible(RBM(30, 26))


# ---------------------------------------------------------------- log p
def test_log_prob_and_mean_log_prob_against_numpy():
    rbm = tiny_rbm(4, 3, seed=4, dtype=torch.float32)
    v = states(4)
    x = torch.tensor(v, dtype=torch.float64).reshape(16, 2, 2)
    lp = rl.log_prob(rbm, x, 1.25)
    assert lp.dtype == torch.float64 and lp.shape == (16,)
    np.testing.assert_allclose(lp.numpy(), np_neg_free_energy(rbm, v) - 1.25, atol=1e-5)
    want = float((np_neg_free_energy(rbm, v) - 1.25).mean())
    for bs in (1, 3, 16, 100):
        assert rl.mean_log_prob(rbm, x, 1.25, batch_size=bs) == pytest.approx(want, abs=1e-5)
    assert rl.mean_log_prob(rbm, x, 1.25) == pytest.approx(want, abs=1e-5)


def test_log_prob_normalises_with_the_exact_log_z():
    rbm = tiny_rbm(5, 6, seed=9)
    lp = rl.log_prob(rbm, torch.tensor(states(5)), rl.exact_log_z(rbm))
    assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- schedule
def schedule_by_hand(k):
    weights = [500, 4000, 10000]
    counts = [max(1, round(k * w / 14500)) for w in weights[:2]]
    counts.append(k - sum(counts))
    out = [0.0]
    for (lo, hi), n in zip([(0.0, 0.5), (0.5, 0.9), (0.9, 1.0)], counts):
        out += [lo + (hi - lo) * i / n for i in range(1, n + 1)]
    return np.array(out), counts


@pytest.mark.parametrize("k", [3, 4, 10, 29, 58, 100, 290, 1001])
def test_beta_schedule_for_any_number_of_steps(k):
    want, counts = schedule_by_hand(k)
    got = rl.beta_schedule(k)
    assert got.dtype == torch.float64 and len(got) == k + 1 and got[-1] == 1.0 and got[0] == 0.0
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-14)
    assert rl.describe_schedule(got) == (
        f"the paper's shape with {k} steps: {counts[0]} uniform on [0, 0.5], {counts[1]} on [0.5, 0.9], "
        f"{counts[2]} on [0.9, 1] (the paper: 500, 4,000, 10,000)"
    )


def test_beta_schedule_default_and_refusals():
    assert len(rl.beta_schedule()) == 14_501
    assert rl.describe_schedule(rl.beta_schedule()) == (
        "Salakhutdinov & Murray (2008): beta spaced by 1e-3 on [0, 0.5], 1e-4 on [0.5, 0.9], 1e-5 on [0.9, 1]; "
        "14,500 steps (14,499 intermediate distributions)"
    )
    for bad in (2, 0, -5, 3.0, True, "10", None):
        with pytest.raises(ConfigError) as info:
            rl.beta_schedule(bad)
        assert str(info.value) == f"the AIS schedule needs an integer number of beta steps >= 3, got {bad!r}"


def test_describe_schedule_of_other_schedules():
    assert rl.describe_schedule(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)) == "a given schedule of 2 steps"
    other = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert rl.describe_schedule(other) == "a given schedule of 10 steps"
    paper = rl.beta_schedule(14_500).clone()
    paper[3] += 1e-9
    assert rl.describe_schedule(paper) == "a given schedule of 14500 steps"
    shaped = rl.beta_schedule(3).clone()
    shaped[1] += 1e-3
    assert rl.describe_schedule(shaped) == "a given schedule of 3 steps"


# ---------------------------------------------------------------- base rate
def test_base_rate_biases_grey_images_pseudocount_and_refusals():
    data = torch.tensor([[[0.2, 1.0]], [[0.6, 0.0]], [[1.0, 0.0]]], dtype=torch.float32)  # (3, 1, 2)
    for a in (0.05, 0.5, 2.0):
        p = (np.array([1.8, 1.0]) + 3 * a) / (3 + 6 * a)
        got = rl.base_rate_biases(data, a) if a != 0.05 else rl.base_rate_biases(data)
        assert got.dtype == torch.float64 and got.shape == (2,)
        np.testing.assert_allclose(got.numpy(), np.log(p / (1 - p)), atol=1e-12)
    # no images: the reshape fails first (a RuntimeError, not the ConfigError the code means; see the report)
    for bad in (0.0, -0.1):
        with pytest.raises(ConfigError) as info:
            rl.base_rate_biases(data, bad)
        assert str(info.value) == f"the base-rate pseudocount must be positive, got {bad!r}"


# ---------------------------------------------------------------- interval
def np_interval(log_w, base):
    log_w = np.asarray(log_w, dtype=np.float64)
    top = log_w.max()  # w / e^top, so that e^800 does not overflow
    w = np.exp(log_w - top)
    m = len(w)
    mean = w.mean()
    sd = w.std(ddof=1) / math.sqrt(m) if m > 1 else 0.0
    low = math.log(mean - 3 * sd) + top + base if mean - 3 * sd > 0 else None
    return math.log(mean) + top + base, low, math.log(mean + 3 * sd) + top + base, w.sum() ** 2 / (w**2).sum()


@pytest.mark.parametrize(
    "log_w",
    [
        [0.3, -0.2, 0.1, 0.05, -0.1],
        [5.0, 1.0, -3.0],
        [-700.0, -699.0, -702.5, -700.2],
        [800.0, 801.0],
        [0.0, 4.0, -2.0, 1.0, 0.5, 0.25, 0.1, -0.3],
        [100.0, 100.0 + 1e-3, 100.0 - 2e-3] * 30,
    ],
)
def test_ais_interval_against_numpy(log_w, base=3.5):
    t = torch.tensor(log_w, dtype=torch.float32 if log_w[0] == 0.3 else torch.float64)
    ref = np_interval(t.double().numpy(), base)
    got = rl.ais_interval(t, base)
    assert got[0] == pytest.approx(ref[0], abs=1e-9) and got[2] == pytest.approx(ref[2], abs=1e-9)
    assert (got[1] is None) == (ref[1] is None)
    if ref[1] is not None:
        assert got[1] == pytest.approx(ref[1], abs=1e-9)
    assert got[3] == pytest.approx(ref[3], rel=1e-9)


def test_ais_interval_of_equal_weights_and_of_one_run():
    got = rl.ais_interval(torch.full((4,), 2.0, dtype=torch.float64), 1.0)
    assert got == (3.0, 3.0, 3.0, pytest.approx(4.0, rel=1e-12))
    one = rl.ais_interval(torch.tensor([-1.5], dtype=torch.float64), 0.5)
    assert one == (-1.0, -1.0, -1.0, 1.0)


# ---------------------------------------------------------------- AIS
def test_ais_result_to_json():
    r = rl.AISResult(1.0, None, 2.0, 3, 4, "s", 5, 6.0, "b", 2.5, 0.1, [0.1, 0.2, 0.3])
    full = r.to_json()
    assert full["log_weights"] == [0.1, 0.2, 0.3] and full["log_z_low"] is None and full["ess"] == 2.5
    assert r.to_json(weights=True) == full
    short = r.to_json(weights=False)
    assert "log_weights" not in short and len(short) == len(full) - 1 and short["seed"] == 5


def one_step_log_weights(rbm, b_a, v, beta0, beta1):
    """log p*_1(v) - log p*_0(v) for every row v, by hand in numpy."""
    W, b, c = np_params(rbm)
    act = c + v @ W

    def log_p_star(beta):
        return (1 - beta) * (v @ b_a) + beta * (v @ b) + np.logaddexp(0, beta * act).sum(1)

    return log_p_star(beta1) - log_p_star(beta0)


def test_ais_with_one_step_draws_v_from_the_base_rate_model_and_weighs_it_exactly():
    """betas [0, 1]: w = p*_B(v) / p*_A(v) with v ~ p_A; every log w is one of the 2^V values, each as often as
    p_A(v) says."""
    rbm = tiny_rbm(3, 2, seed=5, weight_std=1.5, dtype=torch.float32)
    data = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    b_a = rl.base_rate_biases(data).numpy()
    v = states(3)
    values = one_step_log_weights(rbm, b_a, v, 0.0, 1.0)
    assert np.diff(np.sort(values)).min() > 1e-3
    p_a = np.prod(np.where(v == 1, expit(b_a), 1 - expit(b_a)), axis=1)
    n = 40_000
    result = rl.ais_log_z(rbm, n_runs=n, betas=[0.0, 1.0], seed=3, base_rate_data=data)
    lw = np.array(result.log_weights)
    which = np.abs(lw[:, None] - values[None, :]).argmin(1)
    assert np.abs(lw - values[which]).max() < 1e-5
    freq = np.bincount(which, minlength=8) / n
    assert np.abs(freq - p_a).max() < 5 * math.sqrt(0.25 / n)
    base_log_z = 2 * math.log(2) + np.logaddexp(0, b_a).sum()
    assert result.base_log_z == pytest.approx(base_log_z, abs=1e-12)
    assert result.log_z == pytest.approx(base_log_z + logsumexp(lw) - math.log(n), abs=1e-9)
    assert result.n_betas == 1 and result.schedule == "a given schedule of 1 steps" and result.seed == 3
    assert result.base_rate == "pixel marginals of 4 training images, smoothed as (n_i + 0.05 N) / (N + 0.1 N)"
    assert result.n_runs == n and result.seconds >= 0


def test_ais_with_two_steps_moves_by_the_gibbs_transition_at_the_middle_beta():
    """betas [0, beta, 1]: log w = f_1(v_1) + f_2(v_2), which tells the pair (v_1, v_2) apart; their frequencies are
    p_A(v_1) T(v_2 | v_1), T the Gibbs step h ~ p_beta(h | v_1), v_2 ~ p_beta(v | h), written out here."""
    rbm = tiny_rbm(2, 2, seed=8, weight_std=2.0)
    data = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b_a = rl.base_rate_biases(data, 0.2).numpy()
    W, b, c = np_params(rbm)
    beta = 0.35
    v = states(2)
    h = states(2)
    f1 = one_step_log_weights(rbm, b_a, v, 0.0, beta)
    f2 = one_step_log_weights(rbm, b_a, v, beta, 1.0)
    pair_values = (f1[:, None] + f2[None, :]).ravel()  # (v_1, v_2)
    assert np.diff(np.sort(pair_values)).min() > 1e-3
    p_a = np.prod(np.where(v == 1, expit(b_a), 1 - expit(b_a)), axis=1)
    ph = expit(beta * (c + v @ W))  # (v, j)
    p_h_given_v = np.prod(np.where(h[None] == 1, ph[:, None], 1 - ph[:, None]), axis=2)  # (v, h)
    pv = expit((1 - beta) * b_a + beta * (b + h @ W.T))  # (h, i)
    p_v_given_h = np.prod(np.where(v[None] == 1, pv[:, None], 1 - pv[:, None]), axis=2)  # (h, v)
    joint = (p_a[:, None] * (p_h_given_v @ p_v_given_h)).ravel()
    n = 60_000
    calls = []
    result = rl.ais_log_z(
        rbm, n_runs=n, betas=torch.tensor([[0.0, beta, 1.0]]), seed=1, base_rate_data=data, pseudocount=0.2,
        progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    assert calls == [(1, 2), (2, 2)]
    lw = np.array(result.log_weights)
    which = np.abs(lw[:, None] - pair_values[None, :]).argmin(1)
    assert np.abs(lw - pair_values[which]).max() < 1e-6
    freq = np.bincount(which, minlength=16) / n
    assert np.abs(freq - joint).max() < 5 * math.sqrt(0.25 / n)
    assert result.base_rate == "pixel marginals of 5 training images, smoothed as (n_i + 0.2 N) / (N + 0.4 N)"


def test_ais_uniform_base_rate_progress_label_and_fields(fake_bar):
    rbm = tiny_rbm(4, 3, seed=6, weight_std=0.3)
    result = rl.ais_log_z(rbm, n_runs=3, n_betas=5, seed=2, progress="ais")
    (bar,) = fake_bar
    assert (bar.label, bar.total, bar.unit, bar.closed, bar.done) == ("ais", 5, "beta", True, 5)
    assert result.base_rate == "uniform (no training data given)"
    assert result.base_log_z == pytest.approx(7 * math.log(2), abs=1e-12)
    assert result.n_betas == 5 and result.n_runs == 3 and len(result.log_weights) == 3
    assert result.schedule == rl.describe_schedule(rl.beta_schedule(5))
    ref = np_interval(result.log_weights, result.base_log_z)
    assert result.log_z == pytest.approx(ref[0], abs=1e-9) and result.log_z_high == pytest.approx(ref[2], abs=1e-9)
    assert result.ess == pytest.approx(ref[3], rel=1e-9)
    default = rl.ais_log_z(rbm, n_betas=4)
    assert default.n_runs == 100 and default.seed == 0 and len(default.log_weights) == 100
    assert default.log_weights == rl.ais_log_z(rbm, n_betas=4, seed=0).log_weights


def test_ais_uniform_base_rate_with_one_step_draws_uniform_v():
    rbm = tiny_rbm(2, 3, seed=12, weight_std=1.0)
    v = states(2)
    values = one_step_log_weights(rbm, np.zeros(2), v, 0.0, 1.0)
    n = 20_000
    lw = np.array(rl.ais_log_z(rbm, n_runs=n, betas=[0.0, 1.0]).log_weights)
    which = np.abs(lw[:, None] - values[None, :]).argmin(1)
    assert np.abs(lw - values[which]).max() < 1e-9
    assert np.abs(np.bincount(which, minlength=4) / n - 0.25).max() < 5 * math.sqrt(0.25 / n)


def test_ais_refusals():
    rbm = tiny_rbm(3, 2)
    for bad in (1, 0, 2.0, True, "4"):
        with pytest.raises(ConfigError) as info:
            rl.ais_log_z(rbm, n_runs=bad, n_betas=4)
        assert str(info.value) == f"AIS needs at least 2 runs (an integer), got {bad!r}"
    for betas in ([0.0], [0.1, 1.0], [0.0, 0.9], [0.0, 0.5, 0.5, 1.0], [0.0, 1.0, 1.0], [0.0, 0.7, 0.3, 1.0]):
        with pytest.raises(ConfigError) as info:
            rl.ais_log_z(rbm, n_runs=2, betas=betas)
        assert str(info.value) == "an AIS schedule must increase strictly from beta = 0 to beta = 1"
    with pytest.raises(ConfigError) as info:
        rl.ais_log_z(rbm, n_runs=2, n_betas=3, base_rate_data=torch.ones(4, 5))
    assert str(info.value) == "the base-rate data have 5 pixels, the RBM 3 visible units"
    assert rl.ais_log_z(rbm, n_runs=2, betas=[0.0, 1.0]).n_betas == 1


# ---------------------------------------------------------------- a run's numbers
def test_binary_images():
    x = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    same, drawn = rl.binary_images(x, "train")
    assert same is x and drawn is False
    grey = torch.tensor([[0.3, 0.6, 1.0, 0.0]] * 50)
    for split in ("train", "test"):
        got, drawn = rl.binary_images(grey, split)
        assert drawn is True and torch.equal(got, binarize(grey, BINARIZE_SEEDS[split]))
    assert not torch.equal(rl.binary_images(grey, "train")[0], rl.binary_images(grey, "test")[0])


def test_likelihood_metrics_against_its_parts():
    rbm = tiny_rbm(5, 3, seed=2, weight_std=0.5)
    gen = torch.Generator().manual_seed(0)
    train = (torch.rand(40, 5, generator=gen) < 0.4).double()
    test = torch.rand(30, 5, generator=gen)  # grey: binarised with the test seed
    test_bin = binarize(test, BINARIZE_SEEDS["test"]).double()
    metrics, protocol = rl.likelihood_metrics(rbm, train, test, seed=4, n_runs=7, n_betas=6)
    ais = rl.ais_log_z(rbm, n_runs=7, n_betas=6, seed=4, base_rate_data=train)
    exact = np_log_z(rbm)
    neg_f = {
        "train": np_neg_free_energy(rbm, train.numpy()).mean(),
        "test": np_neg_free_energy(rbm, test_bin.numpy()).mean(),
    }
    want = {"log_z": ais.log_z, "log_z_high": ais.log_z_high, "ais_runs": 7, "ais_betas": 6, "ais_ess": ais.ess,
            "log_z_exact": exact}  # fmt: skip
    if ais.log_z_low is not None:
        want["log_z_low"] = ais.log_z_low
    for split in ("test", "train"):
        want[f"{split}_log_prob"] = neg_f[split] - ais.log_z
        want[f"{split}_log_prob_low"] = neg_f[split] - ais.log_z_high
        if ais.log_z_low is not None:
            want[f"{split}_log_prob_high"] = neg_f[split] - ais.log_z_low
        want[f"{split}_log_prob_exact"] = neg_f[split] - exact
    assert set(metrics) == set(want)
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    assert protocol["ais"] == ais.to_json(weights=False) | {"seconds": protocol["ais"]["seconds"]}
    assert protocol["exact_log_z"] == "enumerated 2^3 states" and protocol["exact_log_z_s"] >= 0
    assert protocol["train_data"] == "40 train images, binary"
    assert (
        protocol["test_data"]
        == "30 test images, grey levels binarised by the fixed Bernoulli draw of aelab.data.binarize"
    )
    assert protocol["log_likelihood"] == (
        "log p(x) = -F(x) - log Z (nats per image), F the free energy; the *_low/_high ends use "
        "the AIS interval of log Z (Salakhutdinov & Murray 2008)"
    )
    off, protocol = rl.likelihood_metrics(rbm, train, test, seed=4, n_runs=7, n_betas=6, exact=False)
    assert set(off) == set(want) - {"log_z_exact", "test_log_prob_exact", "train_log_prob_exact"}
    assert protocol["exact_log_z"] == "not computed: 2^3 states (exact only up to 2^25)"
    assert protocol["exact_log_z_s"] is None


def test_likelihood_metrics_defaults_labels_and_no_lower_end(monkeypatch):
    rbm = tiny_rbm(3, 4, seed=3)
    x = torch.tensor(states(3))
    seen = {}

    def fake_ais(rbm_, **kwargs):
        seen.update(kwargs)
        return rl.AISResult(2.0, None, 3.0, 9, 8, "s", kwargs["seed"], 1.0, "b", 4.0, 0.0, [0.0])

    def fake_exact(rbm_, progress=None):
        seen["exact_progress"] = progress
        return 1.5

    monkeypatch.setattr(rl, "ais_log_z", fake_ais)
    monkeypatch.setattr(rl, "exact_log_z", fake_exact)
    metrics, protocol = rl.likelihood_metrics(rbm, x, x, progress="row")
    assert seen["seed"] == 0 and seen["n_runs"] == 100 and seen["n_betas"] == 14_500
    assert seen["progress"] == "row: AIS log Z" and seen["exact_progress"] == "row: exact log Z"
    assert torch.equal(seen["base_rate_data"], x)
    neg_f = float(np_neg_free_energy(rbm, states(3)).mean())
    assert metrics == pytest.approx({
        "log_z": 2.0, "log_z_high": 3.0, "test_log_prob": neg_f - 2.0, "test_log_prob_low": neg_f - 3.0,
        "train_log_prob": neg_f - 2.0, "train_log_prob_low": neg_f - 3.0, "ais_runs": 9, "ais_betas": 8,
        "ais_ess": 4.0, "log_z_exact": 1.5, "test_log_prob_exact": neg_f - 1.5, "train_log_prob_exact": neg_f - 1.5,
    })  # fmt: skip
    assert list(metrics)[:2] == ["log_z", "log_z_high"]
    seen.clear()
    rl.likelihood_metrics(rbm, x, x, seed=5, exact=True)
    assert seen["progress"] is None and seen["exact_progress"] is None and seen["seed"] == 5


def test_likelihood_metrics_skips_the_exact_log_z_when_too_many_states(monkeypatch):
    monkeypatch.setattr(rl, "MAX_EXACT_STATES", 2**3)
    rbm = tiny_rbm(4, 5, seed=1)
    x = torch.tensor(states(4))
    metrics, protocol = rl.likelihood_metrics(rbm, x, x, n_runs=2, n_betas=3)
    assert "log_z_exact" not in metrics and protocol["exact_log_z"] == "not computed: 2^4 states (exact only up to 2^3)"
    metrics, _ = rl.likelihood_metrics(rbm, torch.tensor(states(4)[:3]), x, n_runs=2, n_betas=3, exact=None)
    assert "log_z_exact" not in metrics


def test_run_metrics_leaves_the_validation_split_out(monkeypatch):
    class Model:
        rbm = tiny_rbm(3, 2, seed=0)

    seen = {}

    def fake(rbm, train_x, test_x, *, seed, progress):
        seen.update(rbm=rbm, train_x=train_x, test_x=test_x, seed=seed, progress=progress)
        return {"m": 1}, {"p": 2}

    monkeypatch.setattr(rl, "likelihood_metrics", fake)
    train_x = torch.arange(20, dtype=torch.float64).reshape(10, 2)
    train_y = torch.tensor([0, 1] * 5)
    test_x = torch.zeros(3, 2)
    config = {"val_fraction": 0.2}
    keep = validation_indices(config, train_y.numpy())[0]
    assert len(keep) == 8
    assert rl.run_metrics(Model(), config, train_x, train_y, test_x, seed=3, progress="p") == ({"m": 1}, {"p": 2})
    assert torch.equal(seen["train_x"], train_x[torch.from_numpy(keep)])
    assert torch.equal(seen["test_x"], test_x)
    assert seen["rbm"] is Model.rbm and seen["seed"] == 3 and seen["progress"] == "p"
    rl.run_metrics(Model(), {}, train_x, train_y, test_x)
    assert torch.equal(seen["train_x"], train_x) and seen["seed"] == 0 and seen["progress"] is None
    rl.run_metrics(Model(), config, train_x, torch.zeros(0, dtype=torch.int64), test_x)
    assert torch.equal(seen["train_x"], train_x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ais_draws_every_sample_from_its_seeded_generator_in_the_rbms_dtype(dtype):
    """The documented sampling: one torch.Generator seeded with `seed` draws, in the RBM's dtype, v_1 (uniforms
    below sigmoid(b_A)), then h | v_1 at beta_1 and v_2 | h; the weights are those of the pairs (v_1, v_2) by hand."""
    rbm = tiny_rbm(3, 2, seed=13, weight_std=1.2, dtype=dtype)
    data = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    beta, n, seed = 0.4, 50, 21
    result = rl.ais_log_z(rbm, n_runs=n, betas=[0.0, beta, 1.0], seed=seed, base_rate_data=data)
    W, b, c = rbm.weight.detach(), rbm.visible_bias.detach(), rbm.hidden_bias.detach()
    b_a = rl.base_rate_biases(data)
    gen = torch.Generator().manual_seed(seed)
    v1 = (torch.rand((n, 3), generator=gen, dtype=dtype) < torch.sigmoid(b_a.to(dtype))).to(dtype)
    h = (torch.rand((n, 2), generator=gen, dtype=dtype) < torch.sigmoid(beta * torch.addmm(c, v1, W))).to(dtype)
    p_v = torch.sigmoid((1 - beta) * b_a.to(dtype) + beta * torch.addmm(b, h, W.t()))
    v2 = (torch.rand((n, 3), generator=gen, dtype=dtype) < p_v).to(dtype)
    assert 0 < float(v1.mean()) < 1 and not torch.equal(v1, v2)
    want = one_step_log_weights(rbm, b_a.numpy(), v1.double().numpy(), 0.0, beta) + one_step_log_weights(
        rbm, b_a.numpy(), v2.double().numpy(), beta, 1.0
    )
    np.testing.assert_allclose(result.log_weights, want, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-9)
    assert result.seconds < 30


def test_ais_turns_a_unit_on_only_when_its_uniform_is_below_the_probability():
    """v = 1 where u < p, not u <= p: seed 619920's fifth float32 uniform is exactly 0.5 = sigmoid(0), the uniform
    base rate's probability, so that run starts from v = 0."""
    rbm = tiny_rbm(1, 1, seed=2, weight_std=1.0, dtype=torch.float32)
    gen = torch.Generator().manual_seed(619920)
    u = torch.rand((64, 1), generator=gen)
    assert float(u[4, 0]) == 0.5
    lw = rl.ais_log_z(rbm, n_runs=64, betas=[0.0, 1.0], seed=619920).log_weights
    v = (u < 0.5).double().numpy()
    assert v[4, 0] == 0
    np.testing.assert_allclose(lw, one_step_log_weights(rbm, np.zeros(1), v, 0.0, 1.0), rtol=0, atol=1e-5)


def test_exact_log_z_goes_2_to_the_10_states_at_a_time_by_default():
    rbm = tiny_rbm(12, 11, seed=3, weight_std=0.3)
    calls = []
    got = rl.exact_log_z(rbm, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1024, 2048), (2048, 2048)]
    W, b, c = np_params(rbm)
    h = states(11)  # the hidden layer enumerated, the visible one summed out
    assert got == pytest.approx(float(logsumexp(h @ c + np.logaddexp(0, b + h @ W.T).sum(1))), abs=1e-9)


def test_ais_interval_of_one_run_warns_of_nothing():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rl.ais_interval(torch.tensor([0.25], dtype=torch.float64), 1.0) == (1.25, 1.25, 1.25, 1.0)
        out = rl.ais_interval(torch.tensor([0.0, 0.4, -0.2], dtype=torch.float64), 0.0)
    ref = np_interval([0.0, 0.4, -0.2], 0.0)
    assert out[:3] == pytest.approx(ref[:3], abs=1e-12)


def test_grey_train_images_are_binarised_with_the_train_seed():
    rbm = tiny_rbm(4, 3, seed=5, weight_std=0.5)
    gen = torch.Generator().manual_seed(1)
    train, test = torch.rand(30, 4, generator=gen), (torch.rand(20, 4, generator=gen) < 0.5).double()
    train_bin = binarize(train, BINARIZE_SEEDS["train"]).double()
    metrics, protocol = rl.likelihood_metrics(rbm, train, test, n_runs=3, n_betas=4)
    assert protocol["train_data"] == (
        "30 train images, grey levels binarised by the fixed Bernoulli draw of aelab.data.binarize"
    )
    assert protocol["test_data"] == "20 test images, binary"
    want = np_neg_free_energy(rbm, train_bin.numpy()).mean() - np_log_z(rbm)
    assert metrics["train_log_prob_exact"] == pytest.approx(want, abs=1e-9)
    assert protocol["ais"]["base_rate"].startswith("pixel marginals of 30 training images")
    assert 0 <= protocol["exact_log_z_s"] < 30


def test_an_rbm_without_a_hidden_attribute_is_bernoulli_and_gaussian_is_refused_everywhere():
    class Plain(torch.nn.Module):  # the parameters of an RBM, no `hidden` attribute
        def __init__(self, rbm):
            super().__init__()
            self.weight, self.visible_bias, self.hidden_bias = rbm.weight, rbm.visible_bias, rbm.hidden_bias

    rbm = tiny_rbm(4, 3, seed=7)
    assert rl.exact_log_z(Plain(rbm)) == pytest.approx(np_log_z(rbm), abs=1e-10)
    gauss = RBM(4, 3, hidden="gaussian")
    for call in (lambda: rl.exact_log_z(gauss), lambda: rl.log_prob(gauss, torch.zeros(2, 4), 0.0)):
        with pytest.raises(ConfigError) as info:
            call()
        assert str(info.value) == "the RBM likelihood needs Bernoulli (binary) hidden units; this RBM's are Gaussian"


def test_exact_log_z_of_a_float32_rbm_enumerating_the_visible_layer():
    rbm = tiny_rbm(4, 6, seed=8, weight_std=2.0, dtype=torch.float32)
    assert rl.exact_log_z(rbm, chunk_bits=2) == pytest.approx(np_log_z(rbm), abs=1e-11)


def test_exact_log_z_enumerates_up_to_max_exact_states_inclusive(monkeypatch):
    monkeypatch.setattr(rl, "MAX_EXACT_STATES", 2**3)
    rbm = tiny_rbm(3, 5, seed=4)
    assert rl.exact_log_z(rbm) == pytest.approx(np_log_z(rbm), abs=1e-10)
    with pytest.raises(ConfigError, match=r"2\^4 states"):
        rl.exact_log_z(tiny_rbm(4, 5))


def test_ais_interval_upper_end_is_accurate_for_nearly_equal_weights():
    log_w = np.array([0.0, 1e-12, -1e-12, 2e-12])
    w = np.exp(log_w - log_w.max())
    rel = 3 * w.std(ddof=1) / 2 / w.mean()  # 3 sd / mean, about 5e-12
    log_z, low, high, _ = rl.ais_interval(torch.tensor(log_w), 0.0)
    assert high - log_z == pytest.approx(math.log1p(rel), rel=1e-6, abs=0)
    assert log_z - low == pytest.approx(-math.log1p(-rel), rel=1e-6, abs=0)


def test_base_rate_biases_of_no_images_is_one_clear_refusal():
    """No training image: the base-rate model's one-line ConfigError, not a reshape error from torch."""
    from aelab.errors import ConfigError
    from aelab.metrics.rbm_likelihood import base_rate_biases

    with pytest.raises(ConfigError, match="the base-rate model needs at least one training image"):
        base_rate_biases(torch.zeros(0, 1, 28, 28))
