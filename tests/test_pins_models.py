"""Pins of three models where their numbers are used: logistic PCA's fitted objective, its start and its NLL per
image; the IWAE's reported ELBO and reconstruction as evaluate writes them; the RBM stack's bf16 products (the
dtype, in the deep AE's pretraining)."""

import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from aelab.models.logistic_pca import LogisticPCA

pytestmark = pytest.mark.usefixtures("one_thread")


def _low_rank_images(n=120, d=30, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(n, k, generator=g, dtype=torch.float64) * 2, torch.randn(d, k, generator=g, dtype=torch.float64)
    p = torch.sigmoid(u @ v.T + torch.randn(d, generator=g, dtype=torch.float64))
    return torch.bernoulli(p, generator=g).numpy()


def _sigmoid(t):
    return 1 / (1 + np.exp(-t))


def test_logistic_pca_fits_the_penalised_likelihood_with_the_v_penalty():
    """At the fit's end the gradient of [sum BCE + l2 (|U|^2 + |V|^2)] / N (computed here in numpy) vanishes in
    U, V and b: with l2 = 1 the penalty's part of the V gradient, 2 l2 V, is far from zero, so a fit without it
    (or with another weight) is not stationary for this objective."""
    x = _low_rank_images()
    l2 = 1.0
    model = LogisticPCA(2, max_iter=500, l2=l2).fit(x)
    u, v, b = (t.numpy() for t in (model.train_codes_, model.components_, model.bias_))
    residual = _sigmoid(u @ v.T + b) - x  # d(sum BCE)/d(logits)
    grad_v, grad_u, grad_b = residual.T @ u + 2 * l2 * v, residual @ v + 2 * l2 * u, residual.sum(0)
    penalty_part = np.abs(2 * l2 * v).max()
    assert penalty_part > 0.1
    assert np.abs(grad_v).max() < 1e-3 * penalty_part
    assert np.abs(grad_u).max() < 1e-3 * penalty_part and np.abs(grad_b).max() < 1e-3 * penalty_part


def test_logistic_pca_negative_log_likelihood_is_per_image():
    rng = np.random.default_rng(1)
    x = (rng.random((7, 5)) > 0.5).astype(float)
    u, v, b = rng.normal(size=(7, 2)), rng.normal(size=(5, 2)), rng.normal(size=5).astype(np.float32)
    p = _sigmoid(u @ v.T + b.astype(np.float64))
    expected = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum() / 7  # summed over pixels, averaged over images
    assert LogisticPCA(2).negative_log_likelihood(x, u, v, b) == pytest.approx(expected, rel=1e-10)


def test_logistic_pca_starts_from_pcas_solution(monkeypatch):
    """With the optimiser stopped, the fit is its start, as the docstring says: V the top-k principal directions
    (scaled by 4 = 1 / sigmoid'(0)), U the PCA projections, b the logit of the clipped pixel means; compared with
    sklearn's PCA."""
    from sklearn.decomposition import PCA

    x = _low_rank_images()
    x[:, 0], x[:, 1] = 0.0, 1.0  # pixels that are always 0 and always 1: their means are clipped
    monkeypatch.setattr(LogisticPCA, "_minimise", lambda self, params, objective: 0)
    model = LogisticPCA(2).fit(x)
    pca = PCA(2).fit(x)
    u, v = model.train_codes_.numpy(), model.components_.numpy()
    np.testing.assert_allclose(u @ v.T, 4 * pca.transform(x) @ pca.components_, atol=1e-8)
    np.testing.assert_allclose(np.abs(v), 4 * np.abs(pca.components_.T), atol=1e-8)
    mean = np.clip(x.mean(0), 1e-4, 1 - 1e-4)
    np.testing.assert_allclose(model.bias_.numpy(), np.log(mean / (1 - mean)), rtol=1e-10)


def test_logistic_pca_defaults_and_state_before_a_fit():
    """The paper's 30 components and the documented defaults; nothing fitted yet: transform says so."""
    model = LogisticPCA()
    assert (model.n_components, model.max_iter, model.l2, model.device) == (30, 300, 1e-4, "cpu")
    assert model.n_iter_ == 0 and model.components_ is None and model.bias_ is None
    with pytest.raises(RuntimeError, match="^fit the model first$"):
        model.transform(np.zeros((2, 4)))


def test_logistic_pca_reports_its_iterations_and_fits_float32_images_in_float64():
    """A fit cut at one L-BFGS iteration reports 1; float32 images of 0s and 1s give exactly the fit of the same
    float64 images, in float64."""
    x = _low_rank_images()
    assert LogisticPCA(2, max_iter=1).fit(x).n_iter_ == 1
    model = LogisticPCA(2, max_iter=7).fit(x.astype(np.float32))
    assert model.components_.dtype == torch.float64 and model.train_codes_.dtype == torch.float64
    again = LogisticPCA(2, max_iter=7).fit(x)
    assert torch.equal(model.components_, again.components_) and torch.equal(model.bias_, again.bias_)


@pytest.fixture(scope="module")
def iwae_run(tmp_path_factory):
    from aelab.train import TrainConfig, train

    cfg = TrainConfig(model="iwae", model_options={"hidden": [16], "latent": 3, "k": 4}, dataset="digits",
                      train_limit=100, epochs=1, out=str(tmp_path_factory.mktemp("iwae") / "run"), tensorboard=False)  # fmt: skip
    return train(cfg, progress=False)


def test_the_iwae_reports_the_one_sample_elbo_of_a_decoded_sample(iwae_run):
    """evaluate's test_elbo of an IWAE run is the VAE's one-sample ELBO (analytic KL) on the first of the k samples
    drawn after seeding with evaluate's seed, and test_recon decodes that sample, not the posterior mean: computed
    here from the networks' outputs. The k-sample bound, and the reconstruction of the mean, are other numbers."""
    from aelab import load_model
    from aelab.data import load
    from aelab.evaluate import evaluate

    metrics = evaluate(iwae_run, figures=False, write=False, iwae_k=2)["metrics"]
    model = load_model(iwae_run)
    x = load("digits", "test")[0].flatten(1)
    k = 4
    with torch.no_grad():
        mu, logvar = model.posterior(x)
        torch.manual_seed(0)  # evaluate's seed; one batch holds the 360 test images
        eps = torch.randn(k, *mu.shape)
        std = torch.exp(0.5 * logvar)

        def bce(z):
            return F.binary_cross_entropy_with_logits(model.decoder_logits(z), x.expand(len(z), -1), reduction="none")

        recon = bce(mu + std * eps[0]).sum(1)
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
        log_w = torch.stack([-bce(mu + std * e).sum(1) for e in eps])
        log_w += torch.stack([-0.5 * (mu + std * e).pow(2).sum(1) + 0.5 * e.pow(2).sum(1) + 0.5 * logvar.sum(1)
                              for e in eps])  # fmt: skip
        bound = (torch.logsumexp(log_w, 0) - np.log(k)).mean()
        recon_of_mean = bce(mu).sum(1).mean()
    assert metrics["test_recon"] == pytest.approx(float(recon.mean()), rel=1e-5)
    assert metrics["test_kl"] == pytest.approx(float(kl.mean()), rel=1e-5)
    assert metrics["test_elbo"] == pytest.approx(float(-(recon + kl).mean()), rel=1e-5)
    assert metrics["test_iwae_bound"] == pytest.approx(float(bound), rel=1e-5)
    assert abs(metrics["test_elbo"] - float(bound)) > 1e-3 * abs(float(bound))  # the two are told apart
    assert abs(metrics["test_recon"] - float(recon_of_mean)) > 1e-3 * float(recon_of_mean)


def test_the_iwae_is_the_vae_with_k_samples_and_its_refusals_say_why():
    """Its defaults are the VAE's (the same networks and likelihood) with k = 5; it takes k up to MAX_K = 5000; it
    refuses the VAE's KL options, with the reason."""
    from aelab import models
    from aelab.models.iwae import IWAE

    iwae, vae = models.create("iwae", input_shape=[1, 8, 8]), models.create("vae", input_shape=[1, 8, 8])
    assert iwae.options == {**vae.options, "k": 5}
    assert IWAE(input_shape=[1, 2, 2], hidden=[2], latent=1, k=5000).options["k"] == 5000
    with pytest.raises(ValueError, match=r"^k must be an integer in \[1, 5000\], got 5001$"):
        IWAE(k=5001)
    for option in ("kl_warmup", "beta"):
        message = f"{option} weights the VAE's KL term; the IWAE bound has no separate KL (use model vae)"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            IWAE(**{option: 2})


def test_the_iwae_runs_the_networks_it_is_given():
    from aelab.models.iwae import IWAE

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 6))

        def forward(self, x):
            return tuple(self.net(x).chunk(2, dim=1))

    encoder, decoder = Encoder(), nn.Sequential(nn.Linear(3, 64), nn.Unflatten(1, (1, 8, 8)))
    model = IWAE(input_shape=[1, 8, 8], encoder=encoder, decoder=decoder, k=3)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mu, logvar = model.posterior(x)
        expected_mu, expected_logvar = encoder(x)
        torch.testing.assert_close(mu, expected_mu)
        torch.testing.assert_close(logvar, expected_logvar)
        z = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(model.decoder_logits(z).reshape(4, -1), decoder(z).reshape(4, -1))


def _product_dtypes(monkeypatch) -> list[tuple[torch.dtype, torch.dtype]]:
    seen = []
    real_mm = torch.mm

    def mm(a, b, *args, **kwargs):
        seen.append((a.dtype, b.dtype))
        return real_mm(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "mm", mm)
    return seen


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_deep_aes_rbm_pretraining_multiplies_in_bfloat16_at_bf16(monkeypatch, precision):
    """At bf16 the CD products take bfloat16 operands (8-bit mantissa), not float16 (11-bit: its error would
    also pass the bf16 error bound); at fp32 none does."""
    from aelab import models

    x = torch.rand(60, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = models.create("deep-ae", input_shape=[1, 8, 8], layers=[64, 16, 4])
    seen = _product_dtypes(monkeypatch)
    model.pretrain(x, seed=0, epochs_per_layer=1, precision=precision)
    low = {a for pair in seen for a in pair if a != torch.float32}
    if precision == "bf16":
        assert low == {torch.bfloat16}
    else:
        assert low == set()


# ---------------------------------------------------------------- logistic PCA: what `make mutate` found unpinned
def _reference_logistic_pca_fit(x, k, max_iter, l2):
    """The fit written out again: PCA's start (module docstring) and torch's L-BFGS with the settings the fit is
    documented (and was tuned) with: lr 1, 20 pairs of history, strong Wolfe line search, stop at a gradient of
    1e-9 or a change of 1e-12, on the penalised negative log-likelihood per image."""
    x = torch.as_tensor(x, dtype=torch.float64)
    n = len(x)
    mean = x.mean(0)
    _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
    v = (vt[:k].t() * 4.0).clone().requires_grad_(True)
    u = ((x - mean) @ vt[:k].t()).clone().requires_grad_(True)
    b = torch.logit(mean.clamp(1e-4, 1 - 1e-4)).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([u, v, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        nll = F.binary_cross_entropy_with_logits(torch.addmm(b, u, v.t()), x, reduction="sum")
        loss = (nll + l2 * (u.pow(2).sum() + v.pow(2).sum())) / n
        loss.backward()
        return loss

    opt.step(closure)
    return u.detach(), v.detach(), b.detach(), opt.state[u]["n_iter"]


def test_logistic_pca_follows_the_documented_l_bfgs_path():
    """30 iterations (more than the 20 pairs of history, fewer than convergence) from PCA's start: the same codes,
    components and biases, to the last bit, as the fit written out here, and the same iteration count. Another
    history size, step size, line search or scaling of the objective takes another path."""
    x = _low_rank_images()
    model = LogisticPCA(2, max_iter=30).fit(x)
    u, v, b, n_iter = _reference_logistic_pca_fit(x, 2, 30, 1e-4)
    assert model.n_iter_ == n_iter == 30
    assert torch.equal(model.train_codes_, u) and torch.equal(model.components_, v) and torch.equal(model.bias_, b)


def test_logistic_pca_stops_at_a_gradient_of_1e_9_not_torchs_1e_7():
    """Identical images: PCA's start has U = 0 and b = logit(x), optimal but for the V penalty, whose gradient
    2 l2 V / N is the largest at the start (|V| = 4 at most). 8e-9 (l2 = 1e-8) is above the fit's tolerance of
    1e-9 (one step is taken) though below L-BFGS's default 1e-7; 8e-10 (l2 = 1e-9) is below it (no step)."""
    x = np.tile(np.linspace(0.2, 0.8, 6), (10, 1))
    for l2, steps in ((1e-8, 1), (1e-9, 0)):
        model = LogisticPCA(2, max_iter=50, l2=l2)
        start = LogisticPCA(2, max_iter=50, l2=l2)
        start._minimise = lambda params, objective: 0  # the start, unoptimised
        v0 = start.fit(x).components_
        assert np.abs(2 * l2 * v0.numpy() / len(x)).max() == pytest.approx(0.8 * l2, rel=1e-12)
        assert model.fit(x).n_iter_ == steps
