"""The IWAE bound (Burda et al. 2016) against independent computations: k = 1 is the one-sample ELBO on the same
samples, the bound rises with k in expectation towards log p(x) computed by quadrature, and it trains."""

import math

import pytest
import torch

from aelab import models
from aelab.models.vae import gaussian_log_prob, kl_to_standard_normal

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(cls: str, **kw):
    torch.manual_seed(0)
    return models.create(cls, input_shape=(1, 2, 3), hidden=[5], latent=1, **kw).double()


def test_k1_is_the_one_sample_elbo_on_the_same_draw():
    iwae, vae = _tiny("iwae", k=1), _tiny("vae")
    vae.load_state_dict(iwae.state_dict())
    x = torch.rand(7, 1, 2, 3, dtype=torch.float64).round()
    torch.manual_seed(5)
    bound = iwae.loss_terms(x)["iwae_bound"]
    torch.manual_seed(5)
    mu, logvar = vae.posterior(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # the VAE's own reparameterisation, same draw
    log_px_z = -vae.neg_log_likelihood(x.flatten(1), vae.decoder_logits(z))
    sampled_kl = gaussian_log_prob(z, mu, logvar) - (-0.5 * (math.log(2 * math.pi) + z.pow(2)).sum(-1))
    torch.testing.assert_close(bound, (log_px_z - sampled_kl).mean(), rtol=1e-12, atol=1e-12)
    # and in expectation it is the VAE's ELBO with the analytic KL
    many = x.repeat(5000, 1, 1, 1)
    torch.manual_seed(6)
    mean_bound = iwae.loss_terms(many)["iwae_bound"]
    torch.manual_seed(6)
    elbo = vae.loss_terms(many)["elbo"]
    assert abs(float((mean_bound - elbo).detach())) < 0.02


def test_the_bound_rises_with_k_towards_log_px_by_quadrature():
    iwae = _tiny("iwae")
    x = torch.rand(2, 1, 2, 3, dtype=torch.float64).round()
    grid = torch.linspace(-10, 10, 40001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        log_px_z = -iwae.neg_log_likelihood(x.flatten(1)[:, None, :], iwae.decoder(grid)[None])
        exact = torch.logsumexp(log_px_z - 0.5 * (math.log(2 * math.pi) + grid[:, 0] ** 2), 1) + math.log(
            float(grid[1] - grid[0])
        )
    means = []
    for k in (1, 5, 50):
        iwae.options["k"] = k
        torch.manual_seed(k)
        with torch.no_grad():
            draws = torch.stack([iwae.loss_terms(x[i : i + 1].repeat(2000, 1, 1, 1))["iwae_bound"] for i in range(2)])
        # per image: the mean over 2000 independent bounds (loss_terms averages over the batch)
        means.append(draws)
    for i in range(2):
        l1, l5, l50 = (float(m[i]) for m in means)
        assert l1 < l5 < l50 <= float(exact[i]) + 0.01
        assert float(exact[i]) - l50 < float(exact[i]) - l1  # tighter


def test_iwae_trains_and_evaluates(tmp_path):
    from aelab.evaluate import evaluate
    from aelab.runs import read_history
    from aelab.train import TrainConfig, train

    cfg = TrainConfig(model="iwae", model_options={"hidden": [16], "latent": 2, "k": 5}, dataset="digits",
                      train_limit=300, epochs=3, out=str(tmp_path / "iwae"), tensorboard=False)  # fmt: skip
    run = train(cfg, progress=False)
    losses = [h["train_loss"] for h in read_history(run) if "train_loss" in h]
    assert losses[-1] < losses[0]
    metrics = evaluate(run, figures=False, iwae_k=10, progress=False)["metrics"]
    assert math.isfinite(metrics["nll_nats"]) and "test_iwae_bound" in read_history(run)[-1]


def test_bad_options_are_refused():
    from aelab.errors import ConfigError

    with pytest.raises(ConfigError, match="k must be"):
        models.create("iwae", input_shape=(1, 2, 3), k=0)
    with pytest.raises(ConfigError, match="beta"):
        models.create("iwae", input_shape=(1, 2, 3), beta=2.0)
    assert kl_to_standard_normal(torch.zeros(1, 2), torch.zeros(1, 2)).item() == 0.0


def test_kl_warmup_weights_the_kl_in_the_loss_only(tmp_path):
    """beta * min(1, (epoch + 1) / kl_warmup) weights the KL in the loss; the reported ELBO is the beta = 1 bound."""
    vae = models.create("vae", input_shape=(1, 2, 3), hidden=[5], latent=2, beta=2.0, kl_warmup=4)
    x = torch.rand(6, 1, 2, 3).round()
    for epoch, weight in [(0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)]:
        vae.start_epoch(epoch)
        torch.manual_seed(0)
        t = vae.loss_terms(x)
        torch.testing.assert_close(t["loss"], t["recon"] + 2.0 * weight * t["kl"])
        torch.testing.assert_close(t["elbo"], -(t["recon"] + t["kl"]))
    assert "kl_warmup" not in models.create("vae", input_shape=(1, 2, 3)).options  # old model.json unchanged
    # through the trainer: the schedule follows the epoch, so a resumed run equals a whole one
    from aelab.runs import read_safetensors
    from aelab.train import TrainConfig, train

    common = dict(model="vae", model_options={"hidden": [8], "latent": 2, "kl_warmup": 3}, dataset="digits",
                  train_limit=120, val_fraction=0.0, tensorboard=False)  # fmt: skip
    whole = train(TrainConfig(**common, epochs=3, out=str(tmp_path / "whole")), progress=False)
    part = train(TrainConfig(**common, epochs=1, out=str(tmp_path / "part")), progress=False)
    train(TrainConfig(**common, epochs=3, out=str(part)), resume=True, progress=False)
    a, b = read_safetensors(whole / "model.safetensors")[0], read_safetensors(part / "model.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Exception, match="kl_warmup"):
        models.create("iwae", input_shape=(1, 2, 3), kl_warmup=2)
