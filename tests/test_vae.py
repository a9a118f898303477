import math

import pytest
import torch

from aelab import models
from aelab.errors import ConfigError
from aelab.models.vae import gaussian_log_prob, kl_to_standard_normal

torch.set_default_dtype(torch.float32)


def test_analytic_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 3, generator=g, dtype=torch.float64)
    logvar = torch.randn(4, 3, generator=g, dtype=torch.float64)
    n = 400_000
    z = mu + (0.5 * logvar).exp() * torch.randn(n, 4, 3, generator=g, dtype=torch.float64)
    log_q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    samples = log_q - log_p
    mc, se = samples.mean(0), samples.std(0) / math.sqrt(n)
    analytic = kl_to_standard_normal(mu, logvar)
    assert ((analytic - mc).abs() < 4 * se).all(), (analytic, mc, se)
    # and against torch.distributions' closed form
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    torch.testing.assert_close(analytic, ref, rtol=1e-12, atol=1e-12)


def test_gaussian_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    z, mu, logvar = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ref = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(z, mu, logvar), ref)


@pytest.mark.parametrize("likelihood", ["bce", "gaussian"])
def test_likelihood_terms_are_true_negative_log_likelihoods(likelihood):
    torch.manual_seed(0)
    vae = models.create("vae", input_shape=(1, 4, 4), hidden=[8], latent=2, likelihood=likelihood, obs_std=0.3).double()
    x = torch.rand(6, 16, dtype=torch.float64)
    logits = torch.randn(6, 16, dtype=torch.float64)
    if likelihood == "bce":
        ref = -(x * torch.nn.functional.logsigmoid(logits) + (1 - x) * torch.nn.functional.logsigmoid(-logits)).sum(1)
    else:
        ref = -torch.distributions.Normal(torch.sigmoid(logits), 0.3).log_prob(x).sum(1)
    torch.testing.assert_close(vae.neg_log_likelihood(x, logits), ref)


def test_encoder_outputs_log_variance_so_sigma_stays_positive():
    vae = models.create("vae", input_shape=(1, 8, 8), hidden=[16], latent=3)
    with torch.no_grad():
        for p in vae.encoder.parameters():
            p.fill_(-5.0)  # drives every pre-activation very negative: a ReLU-sigma would be exactly 0
    mu, logvar = vae.posterior(torch.rand(4, 1, 8, 8))
    assert torch.isfinite(logvar).all() and (logvar.exp() > 0).all()
    assert torch.isfinite(vae.loss(torch.rand(4, 1, 8, 8)))


def test_loss_terms_are_consistent_and_per_image():
    torch.manual_seed(0)
    vae = models.create("vae", input_shape=(1, 8, 8), hidden=[16], latent=3)
    x = torch.rand(10, 1, 8, 8)
    t = vae.loss_terms(x)
    torch.testing.assert_close(t["elbo"], -(t["recon"] + t["kl"]))
    torch.testing.assert_close(t["loss"], t["recon"] + t["kl"])
    # per image: duplicating the batch does not change the value in expectation; KL is deterministic
    mu, logvar = vae.posterior(x)
    torch.testing.assert_close(t["kl"], kl_to_standard_normal(mu, logvar).mean())


def test_iwae_estimate_matches_quadrature_on_a_1d_latent():
    # log p(x) = log ∫ p(x|z) N(z; 0, 1) dz computed on a fine grid, independent of the estimator
    torch.manual_seed(0)
    vae = models.create("vae", input_shape=(1, 2, 3), hidden=[5], latent=1).double()
    x = torch.rand(3, 1, 2, 3, dtype=torch.float64).round()
    grid = torch.linspace(-10, 10, 40001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        log_px_z = -vae.neg_log_likelihood(x.flatten(1)[:, None, :], vae.decoder(grid)[None])  # (3, G)
    log_joint = log_px_z - 0.5 * (math.log(2 * math.pi) + grid[:, 0] ** 2)
    dz = float(grid[1] - grid[0])
    exact = torch.logsumexp(log_joint, 1) + math.log(dz)
    est = vae.iwae_log_likelihood(x, k=20000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(est, exact, atol=5e-3, rtol=0)
    # k=1 is the ELBO, a lower bound: its mean over many draws is below log p(x) (up to Monte-Carlo error)
    draws = vae.iwae_log_likelihood(x.repeat(4000, 1, 1, 1), k=1, generator=torch.Generator().manual_seed(1))
    draws = draws.view(4000, 3)
    assert (draws.mean(0) <= exact + 4 * draws.std(0) / math.sqrt(4000)).all()


def test_sample_and_interpolate_shapes():
    vae = models.create("vae", input_shape=(1, 8, 8), hidden=[16], latent=3)
    assert vae.sample(5).shape == (5, 1, 8, 8)
    a, b = torch.rand(2, 1, 8, 8)
    path = vae.interpolate(a, b, steps=7)
    assert path.shape == (7, 1, 8, 8)
    torch.testing.assert_close(path[0], vae(a[None])[0])
    torch.testing.assert_close(path[-1], vae(b[None])[0])


def test_ae_loss_is_sum_over_pixels_and_weight_decay_adds_the_penalty():
    torch.manual_seed(0)
    ae = models.create("ae", input_shape=(1, 8, 8), hidden=[16], latent=3, loss="mse")
    x = torch.rand(7, 1, 8, 8)
    ref = ((ae(x) - x) ** 2).flatten(1).sum(1).mean()
    torch.testing.assert_close(ae.loss(x), ref)
    aewd = models.create("ae", input_shape=(1, 8, 8), hidden=[16], latent=3, loss="bce", weight_decay=0.01)
    aewd.load_state_dict(ae.state_dict())
    bce = torch.nn.functional.binary_cross_entropy(aewd(x), x, reduction="sum") / 7
    wsq = sum((p**2).sum() for n, p in aewd.named_parameters() if n.endswith("weight"))
    torch.testing.assert_close(aewd.loss(x), bce + 0.01 * wsq, rtol=1e-5, atol=1e-5)


def test_create_rejects_unknown_names_and_bad_sizes():
    with pytest.raises(ConfigError, match="choose from"):
        models.create("nope")
    with pytest.raises(ConfigError, match="positive"):
        models.create("ae", latent=0)
    with pytest.raises(ConfigError, match="positive"):
        models.create("vae", hidden=[-3])
