"""Issue 32: the RBM's partition function and log-likelihood (Salakhutdinov & Murray 2008), each number against an
independent computation: brute force over both layers in numpy, the normalisation of p(v), exact log Z for AIS, the
paper's interval and schedule written out again here."""

import itertools
import math

import numpy as np
import pytest
import torch

from aelab.errors import ConfigError
from aelab.metrics.rbm_likelihood import (
    MAX_EXACT_STATES,
    ais_interval,
    ais_log_z,
    base_rate_biases,
    beta_schedule,
    exact_log_z,
    exact_log_z_feasible,
    log_prob,
)
from aelab.models.rbm import RBM

pytestmark = pytest.mark.usefixtures("one_thread")


def random_rbm(n_visible, n_hidden, weight_std=0.1, bias_std=1.0, seed=0, dtype=torch.float64) -> RBM:
    """Weights of realistic scale (a trained MNIST RBM's are ~0.01-0.1), biases around a sparse image."""
    g = torch.Generator().manual_seed(seed)
    rbm = RBM(n_visible, n_hidden, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    with torch.no_grad():
        rbm.weight.copy_(weight_std * torch.randn(n_visible, n_hidden, generator=g, dtype=dtype))
        rbm.visible_bias.copy_(bias_std * torch.randn(n_visible, generator=g, dtype=dtype) - 1.0)
        rbm.hidden_bias.copy_(bias_std * torch.randn(n_hidden, generator=g, dtype=dtype))
    return rbm


def numpy_brute_force_log_z(rbm: RBM) -> float:
    """log sum over ALL 2^(V+H) joint states of exp(-E(v, h)), E = -v.b - h.c - v W h, in numpy float64."""
    W = rbm.weight.detach().double().numpy()
    b = rbm.visible_bias.detach().double().numpy()
    c = rbm.hidden_bias.detach().double().numpy()
    v = np.array(list(itertools.product([0.0, 1.0], repeat=len(b))))
    h = np.array(list(itertools.product([0.0, 1.0], repeat=len(c))))
    neg_energy = (v @ b)[:, None] + (h @ c)[None, :] + v @ W @ h.T  # (2^V, 2^H)
    top = neg_energy.max()
    return float(top + np.log(np.exp(neg_energy - top).sum()))


@pytest.mark.parametrize(
    "n_visible, n_hidden, chunk_bits",
    [(9, 5, 10), (5, 9, 10), (9, 6, 2), (4, 8, 3)],
    ids=["enumerate-hidden", "enumerate-visible", "hidden-in-chunks", "visible-in-chunks"],
)
def test_exact_log_z_equals_brute_force_over_both_layers(n_visible, n_hidden, chunk_bits):
    rbm = random_rbm(n_visible, n_hidden, weight_std=0.8, seed=n_visible * 10 + n_hidden)
    assert exact_log_z(rbm, chunk_bits=chunk_bits) == pytest.approx(numpy_brute_force_log_z(rbm), abs=1e-10)


def test_probabilities_of_all_visible_vectors_sum_to_one():
    """sum over the 2^10 visible vectors of exp(-F(v) - log Z) = 1: log_prob (free energies over v) against
    exact_log_z (which enumerates the 6 hidden units here, the other layer)."""
    rbm = random_rbm(10, 6, weight_std=0.7, seed=3)
    v = torch.tensor(list(itertools.product([0.0, 1.0], repeat=10)), dtype=torch.float64)
    lp = log_prob(rbm, v, exact_log_z(rbm))
    assert lp.dtype == torch.float64 and lp.shape == (1024,)
    assert float(torch.logsumexp(lp, 0).exp()) == pytest.approx(1.0, abs=1e-6)
    assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-6)


def model_samples(rbm: RBM, n: int = 500, steps: int = 100, seed: int = 1) -> torch.Tensor:
    """n binary images drawn from the RBM by `steps` Gibbs sweeps: the data a well-fitted RBM was trained on, whose
    pixel marginals the base-rate model takes (as for an RBM trained on MNIST)."""
    g = torch.Generator().manual_seed(seed)
    v0 = torch.bernoulli(torch.full((n, rbm.n_visible), 0.5, dtype=rbm.weight.dtype), generator=g)
    return rbm.gibbs(v0, k=steps, generator=g)


@pytest.mark.parametrize(
    "n_visible, n_hidden, weight_std, n_betas, base_rate",
    [(784, 12, 0.05, 1000, True), (100, 20, 0.1, 2000, True), (30, 16, 0.2, 2000, False)],
    ids=["784-12-base-rate", "100-20-base-rate", "30-16-uniform"],
)
def test_ais_agrees_with_the_exact_log_z(n_visible, n_hidden, weight_std, n_betas, base_rate):
    """AIS with 100 runs lies within its own +/- 3 std interval of the exact log Z and within 0.1 nats of it."""
    rbm = random_rbm(n_visible, n_hidden, weight_std=weight_std, seed=n_hidden, dtype=torch.float32)
    exact = exact_log_z(rbm)
    data = model_samples(rbm) if base_rate else None
    result = ais_log_z(rbm, n_runs=100, n_betas=n_betas, seed=0, base_rate_data=data)
    assert result.log_z_low is not None and result.log_z_low <= exact <= result.log_z_high
    assert abs(result.log_z - exact) < 0.1
    assert result.n_runs == 100 and result.n_betas == n_betas and len(result.log_weights) == 100
    b_a = base_rate_biases(data).numpy() if base_rate else np.zeros(n_visible)  # Z_A = 2^H prod_i (1 + e^b_A_i)
    assert result.base_log_z == pytest.approx(n_hidden * math.log(2) + np.log1p(np.exp(b_a)).sum(), abs=1e-9)


def test_ais_is_unbiased_for_z_with_a_coarse_schedule():
    """E[w] = Z_B / Z_A for any schedule when every transition leaves its p_k invariant: with 3 betas and 200,000
    runs on a strongly coupled 5-3 RBM the ratio-scale interval holds the exact Z (a transition at the wrong beta,
    or a weight factor at the wrong state, puts it far outside)."""
    rbm = random_rbm(5, 3, weight_std=2.0, bias_std=1.0, seed=11)
    data = model_samples(rbm, n=200)
    result = ais_log_z(rbm, n_runs=200_000, betas=[0.0, 0.5, 1.0], seed=0, base_rate_data=data)
    exact = numpy_brute_force_log_z(rbm)
    assert result.log_z_low <= exact <= result.log_z_high
    assert result.log_z_high - result.log_z_low < 0.05  # narrow enough to tell a biased estimator apart


def test_ais_is_deterministic_for_a_seed_and_another_seed_differs():
    rbm = random_rbm(50, 10, weight_std=0.1, seed=5, dtype=torch.float32)
    data = model_samples(rbm)
    a = ais_log_z(rbm, n_runs=20, n_betas=300, seed=7, base_rate_data=data)
    b = ais_log_z(rbm, n_runs=20, n_betas=300, seed=7, base_rate_data=data)
    c = ais_log_z(rbm, n_runs=20, n_betas=300, seed=8, base_rate_data=data)
    assert a.log_weights == b.log_weights and a.log_z == b.log_z
    assert c.log_weights != a.log_weights and c.log_z != a.log_z
    before = torch.get_rng_state()
    ais_log_z(rbm, n_runs=5, n_betas=10, seed=7)
    assert torch.equal(before, torch.get_rng_state())  # its own generator: the global one is not touched


def test_exact_log_z_refuses_more_than_2_to_the_25_states():
    assert MAX_EXACT_STATES == 2**25
    assert exact_log_z_feasible(RBM(784, 25)) and exact_log_z_feasible(RBM(25, 784))
    assert not exact_log_z_feasible(RBM(784, 26)) and not exact_log_z_feasible(RBM(30, 26))
    for n_visible, n_hidden in ((784, 26), (26, 500), (784, 500)):
        with pytest.raises(ConfigError, match=r"2\^26|2\^500") as info:
            exact_log_z(RBM(n_visible, n_hidden))
        assert "\n" not in str(info.value) and "AIS" in str(info.value)


def test_the_interval_is_the_papers_three_standard_deviations_of_the_mean_weight():
    """log Z_A + log(mean w ± 3 std w / sqrt M), std with ddof 1 (RBM_AIS.m), from numpy on the weights."""
    log_w = torch.tensor([-1.0, 0.5, 2.0, 0.25, -0.3, 1.1], dtype=torch.float64)
    w = np.exp(log_w.numpy())
    mean, sd = w.mean(), w.std(ddof=1) / math.sqrt(len(w))
    log_z, low, high, ess = ais_interval(log_w, base_log_z=10.0)
    assert log_z == pytest.approx(10 + math.log(mean), abs=1e-12)
    assert high == pytest.approx(10 + math.log(mean + 3 * sd), abs=1e-12)
    assert ess == pytest.approx(w.sum() ** 2 / (w**2).sum(), abs=1e-12)
    assert mean - 3 * sd < 0 and low is None  # no lower end: the interval reaches w = 0
    tight = torch.tensor([0.0, 0.01, -0.01, 0.02], dtype=torch.float64)
    w = np.exp(tight.numpy())
    mean, sd = w.mean(), w.std(ddof=1) / 2
    assert ais_interval(tight, 0.0)[1] == pytest.approx(math.log(mean - 3 * sd), abs=1e-12)


def test_the_schedule_is_the_papers_and_keeps_its_shape_for_fewer_steps():
    """1e-3 on [0, 0.5], 1e-4 on [0.5, 0.9], 1e-5 on [0.9, 1]: 14,500 steps, every beta once."""
    paper = np.concatenate([np.arange(500) * 1e-3, 0.5 + np.arange(4000) * 1e-4, 0.9 + np.arange(10000) * 1e-5, [1]])
    betas = beta_schedule(14_500)
    assert len(betas) == 14_501 and betas[0] == 0 and betas[-1] == 1
    np.testing.assert_allclose(betas.numpy(), paper, rtol=0, atol=1e-12)
    small = beta_schedule(290)  # 10 + 80 + 200 steps
    steps = small.diff().numpy()
    np.testing.assert_allclose(steps[:10], 0.05, atol=1e-12)
    np.testing.assert_allclose(steps[10:90], 0.005, atol=1e-12)
    np.testing.assert_allclose(steps[90:], 0.0005, atol=1e-12)
    with pytest.raises(ConfigError):
        beta_schedule(2)
    with pytest.raises(ConfigError, match="increase strictly"):
        ais_log_z(random_rbm(4, 3), n_runs=4, betas=[0.0, 0.5, 0.4, 1.0])


def test_base_rate_biases_are_the_smoothed_log_odds_of_the_pixel_marginals():
    data = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    n, a = 4, 0.05
    p = (np.array([4.0, 0.0, 2.0]) + a * n) / (n + 2 * a * n)
    np.testing.assert_allclose(base_rate_biases(data).numpy(), np.log(p / (1 - p)), atol=1e-12)
    assert np.isfinite(base_rate_biases(data).numpy()).all()  # a pixel always on or always off stays finite


def test_gaussian_hidden_units_are_refused():
    with pytest.raises(ConfigError, match="Bernoulli"):
        exact_log_z(RBM(4, 3, hidden="gaussian"))
    with pytest.raises(ConfigError, match="Bernoulli"):
        ais_log_z(RBM(4, 3, hidden="gaussian"), n_runs=4, n_betas=10)
