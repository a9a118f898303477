"""Tests that pin the maths and the evaluation protocol where a realistic one-line bug used to pass every test.

Each test here was written against one or more mutants (listed in tests/MUTANTS.md) and fails when that bug
is put back. References are independent of the code under test: numbers rebuilt by hand in float64 from the
weights, PCA from numpy's SVD, probes from a scikit-learn pipeline fitted here, Jacobians by brute force.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from aelab import models, runs
from aelab.evaluate import evaluate
from aelab.models import penalties
from aelab.train import TrainConfig, evaluate_loss, train
from independent import protocol_validation_indices, sklearn_grid_probe, sklearn_probe

# torch's forward-mode AD scripts its decompositions on first use (a torch-internal deprecation warning)
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]

evaluation = importlib.import_module("aelab.evaluate")  # the module: `aelab.evaluate` names the function here


# ------------------------------------------------------------------ evaluate: fitted on train, scored on test


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A VAE trained for 2 epochs on 300 digits (8x8): 300 train and all 360 test images, 6-D codes."""
    out = tmp_path_factory.mktemp("protocol") / "vae"
    cfg = TrainConfig(
        model="vae",
        model_options=dict(hidden=[32], latent=6),
        dataset="digits",
        train_limit=300,
        epochs=2,
        batch_size=50,
        out=str(out),
    )
    return train(cfg, progress=False, log=lambda line: None)


def test_evaluate_numbers_match_an_independent_computation_on_the_right_splits(vae_run):
    iwae_k = 7
    m = evaluate(vae_run, iwae_k=iwae_k, figures=False, write=False)["metrics"]
    model = runs.load_model(vae_run).double()
    train_x, train_y, test_x, test_y = runs.run_data(runs.read_config(vae_run))
    assert (len(train_x), len(test_x)) == (300, 360)  # train_limit cuts the train split only
    x_tr, x_te = train_x.flatten(1).double(), test_x.flatten(1).double()
    with torch.no_grad():
        mu_tr, _ = model.posterior(x_tr)
        mu_te, logvar_te = model.posterior(x_te)
        x_hat = torch.sigmoid(model.decoder(mu_te))  # the reconstruction decodes the posterior mean

    # recon_sse: summed over the 64 pixels, averaged over the test images; recon_mse: per pixel
    sse = (x_hat - x_te).pow(2).sum(1)
    assert m["recon_sse"] == pytest.approx(float(sse.mean()), rel=1e-5)
    assert m["recon_mse"] == pytest.approx(float(sse.mean()) / 64, rel=1e-5)
    assert m["code_dim"] == 6

    # PCA with as many components as the code: mean and directions from the TRAIN images (numpy SVD)
    a_tr, a_te = x_tr.numpy(), x_te.numpy()
    mean = a_tr.mean(0)
    directions = np.linalg.svd(a_tr - mean, full_matrices=False)[2][:6].T
    pca_hat = (a_te - mean) @ directions @ directions.T + mean
    pca_sse = float(((a_te - pca_hat) ** 2).sum(1).mean())
    assert m["pca_sse"] == pytest.approx(pca_sse, rel=1e-4)
    assert m["sse_ratio_to_pca"] == pytest.approx(float(sse.mean()) / pca_sse, rel=1e-4)

    # probes: C chosen on the run's validation split (the protocol's stratified 10%, seed 0), then fitted on the
    # train codes / pixels and their labels, scored on the test ones: sklearn's GridSearchCV does the same
    config = runs.read_config(vae_run)
    held = protocol_validation_indices(train_y.numpy())
    assert (config["n_val"], config["n_train"]) == (30, 270) and config["val_fraction"] == pytest.approx(0.1)
    codes_tr, codes_te = mu_tr.float().numpy(), mu_te.float().numpy()
    accuracy, C = sklearn_grid_probe(codes_tr, train_y, codes_te, test_y, held)
    assert (m["probe_accuracy"], m["probe_C"]) == (pytest.approx(accuracy, abs=1e-9), C)
    pixels_tr, pixels_te = train_x.flatten(1).numpy(), test_x.flatten(1).numpy()
    accuracy, C = sklearn_grid_probe(pixels_tr, train_y, pixels_te, test_y, held)
    assert (m["raw_probe_accuracy"], m["raw_probe_C"]) == (pytest.approx(accuracy, abs=1e-9), C)

    # the model's own loss terms on the TEST images, per image: KL by hand; recon with z drawn from seed 0
    kl = -0.5 * (1 + logvar_te - mu_te.pow(2) - logvar_te.exp()).sum(1)
    assert m["test_kl"] == pytest.approx(float(kl.mean()), rel=1e-5)
    model.float()
    torch.manual_seed(0)
    with torch.no_grad():
        terms = model.loss_terms(test_x)
    assert m["test_recon"] == pytest.approx(float(terms["recon"]), rel=1e-5)
    assert m["test_elbo"] == pytest.approx(-(m["test_recon"] + m["test_kl"]), rel=1e-5)

    # -log p(x) on the TEST images with the requested k, in nats per image (a positive number)
    log_px = model.iwae_log_likelihood(test_x, k=iwae_k, generator=torch.Generator().manual_seed(0))
    assert m["nll_nats"] == pytest.approx(-float(log_px.mean()), rel=1e-5)
    assert m["iwae_k"] == iwae_k and m["nll_nats"] > 0


def test_probes_learn_from_the_train_labels(vae_run, monkeypatch):
    """With the TRAIN labels shuffled, a probe fitted on train is at chance on test; one fitted on the test
    split would still read the digits off the test codes."""
    train_x, train_y, test_x, test_y = runs.run_data(runs.read_config(vae_run))
    shuffled = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))]
    monkeypatch.setattr(runs, "run_data", lambda config, data_dir=None, data=None: (train_x, shuffled, test_x, test_y))
    monkeypatch.setattr(evaluation, "_RAW_PROBE_CACHE", {})  # the pixel probe is cached per dataset name
    m = evaluate(vae_run, iwae_k=2, figures=False, write=False)["metrics"]
    assert m["probe_accuracy"] < 0.25 and m["raw_probe_accuracy"] < 0.25, m


def test_the_probes_c_is_chosen_on_validation_not_on_test(vae_run, garbage_test_split, monkeypatch):
    """Random test images and labels change the test accuracy, but neither the chosen C of either probe nor the
    validation accuracies it was chosen by."""
    monkeypatch.setattr(evaluation, "_RAW_PROBE_CACHE", {})
    honest = evaluate(vae_run, iwae_k=2, figures=False, write=False)
    garbage_test_split()
    monkeypatch.setattr(evaluation, "_RAW_PROBE_CACHE", {})
    garbage = evaluate(vae_run, iwae_k=2, figures=False, write=False)
    for probe, key in [("codes", "probe"), ("raw pixels", "raw_probe")]:
        a, b = honest["protocol"]["probe_selection"][probe], garbage["protocol"]["probe_selection"][probe]
        assert a["validation_accuracy"] == b["validation_accuracy"] and len(a["validation_accuracy"]) == 5
        assert honest["metrics"][f"{key}_C"] == garbage["metrics"][f"{key}_C"] == a["C"]
        assert honest["metrics"][f"{key}_accuracy"] != garbage["metrics"][f"{key}_accuracy"]
        assert garbage["metrics"][f"{key}_accuracy"] < 0.3  # scored on the random labels: near chance


def test_a_run_without_validation_split_keeps_the_default_c(tmp_path):
    cfg = TrainConfig(
        model="ae", model_options=dict(hidden=[16], latent=4), dataset="digits", train_limit=200, epochs=1,
        val_fraction=0.0, out=str(tmp_path / "run"),
    )  # fmt: skip
    run = train(cfg, progress=False, log=lambda line: None)
    result = evaluate(run, figures=False, write=False)
    assert runs.read_config(run)["n_val"] == 0 and result["metrics"]["probe_C"] == 1.0
    assert result["protocol"]["probe_selection"]["codes"]["validation_accuracy"] is None
    assert "no validation split" in result["protocol"]["probe"]


def test_the_default_validation_split_is_ten_percent_or_500_images(tmp_path):
    from aelab.data.sources import default_val_fraction

    rng = np.random.default_rng(0)
    npz = tmp_path / "many.npz"
    np.savez(
        npz,
        x=rng.random((6000, 2, 2), dtype=np.float32),
        y=rng.integers(0, 10, 6000),
        x_test=rng.random((50, 2, 2), dtype=np.float32),
        y_test=rng.integers(0, 10, 50),
    )
    sizes = {}
    for name, limit in [("all", None), ("some", 1000), ("tiny", 19)]:
        cfg = TrainConfig(
            model="ae", model_options=dict(hidden=[4], latent=2), dataset=str(npz), train_limit=limit, epochs=1,
            batch_size=512, out=str(tmp_path / name),
        )  # fmt: skip
        config = runs.read_config(train(cfg, progress=False, log=lambda line: None))
        sizes[name] = (config["n_train"], config["n_val"])
    assert sizes == {"all": (5500, 500), "some": (900, 100), "tiny": (19, 0)}
    assert default_val_fraction(6000) == pytest.approx(500 / 6000) and default_val_fraction(19) == 0.0


def test_evaluate_loss_is_seeded_and_weights_each_image_once():
    """The test-split loss of a model that samples is reproducible from the seed alone, whatever the global
    RNG did before, and batches of unequal size (8, 8, 8, 6) count each image once."""
    vae = vae_with_fixed_posterior_scale([0.5, -0.5])
    x = torch.rand(30, 1, 2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    first = evaluate_loss(vae, x, 8, seed=3)
    torch.rand(7)  # move the global RNG on
    assert evaluate_loss(vae, x, 8, seed=3) == first
    assert evaluate_loss(vae, x, 8, seed=4)["recon"] != first["recon"]
    with torch.no_grad():
        mu, logvar = vae.posterior(x)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    assert first["kl"] == pytest.approx(float(kl.mean()), rel=1e-12)


# ------------------------------------------------------------------ VAE: the sampled z and beta


def vae_with_fixed_posterior_scale(logvar: list[float], **options) -> nn.Module:
    """A float64 VAE on 6 pixels whose encoder outputs the log-variances `logvar` for every input."""
    torch.manual_seed(0)
    vae = models.create("vae", input_shape=(1, 2, 3), hidden=[8], latent=len(logvar), **options).double()
    last = vae.encoder[-1]
    with torch.no_grad():
        last.weight[len(logvar) :] = 0
        last.bias[len(logvar) :] = torch.tensor(logvar, dtype=torch.float64)
    return vae


def bce_by_hand(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | z) of a Bernoulli decoder per image, written out from the sigmoid."""
    p = 1 / (1 + torch.exp(-logits))
    return -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(1)


def test_vae_training_loss_samples_z_with_std_exp_half_logvar():
    logvar = [-2.0, 0.0, 1.5]  # std 0.37, 1, 2.1; the variance would be 0.14, 1, 4.5
    vae = vae_with_fixed_posterior_scale(logvar)
    draws = 20000
    x = torch.rand(1, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64).repeat(draws, 1)
    seen = []
    hook = vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    torch.manual_seed(2)
    terms = vae.loss_terms(x)
    hook.remove()
    (z,) = seen
    mu = vae.posterior(x[:1])[0].detach()[0]
    std = torch.tensor(logvar, dtype=torch.float64).mul(0.5).exp()
    assert ((z.mean(0) - mu).abs() < 5 * std / math.sqrt(draws)).all(), (z.mean(0), mu)
    torch.testing.assert_close(z.std(0), std, rtol=0.03, atol=0)
    # the reconstruction term is -log p(x | z) at those z, per image (mean over the batch, sum over pixels)
    with torch.no_grad():
        expected = bce_by_hand(vae.decoder(z), x).mean()
    torch.testing.assert_close(terms["recon"].detach(), expected, rtol=1e-10, atol=0)


def test_beta_weights_the_kl_in_the_loss_only_and_the_elbo_stays_the_bound():
    logvar = [-1.0, 0.5]
    plain = vae_with_fixed_posterior_scale(logvar)
    beta2 = vae_with_fixed_posterior_scale(logvar, beta=2.0)
    assert beta2.options["beta"] == 2.0
    x = torch.rand(5, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.manual_seed(4)
    t1 = plain.loss_terms(x)
    torch.manual_seed(4)
    t2 = beta2.loss_terms(x)
    mu, lv = beta2.posterior(x)
    kl = (-0.5 * (1 + lv - mu.pow(2) - lv.exp()).sum(1)).mean()  # per image, by hand
    torch.testing.assert_close(t2["kl"], kl, rtol=1e-12, atol=0)
    torch.testing.assert_close(t2["recon"], t1["recon"], rtol=1e-12, atol=0)
    torch.testing.assert_close(t2["loss"], t2["recon"] + 2.0 * kl, rtol=1e-12, atol=0)
    torch.testing.assert_close(t2["elbo"], -(t2["recon"] + kl), rtol=1e-12, atol=0)  # not -(recon + beta kl)
    torch.testing.assert_close(t2["elbo"], t1["elbo"], rtol=1e-12, atol=0)
    torch.testing.assert_close(t1["loss"], -t1["elbo"], rtol=1e-12, atol=0)


# ------------------------------------------------------------------ Hutchinson: probes on the code side, k > 1


def tanh_encoder(sizes: list[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.Tanh()]
    return nn.Sequential(*layers).double()


def brute_force_frobenius_sq(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = []
    for x_one in x:
        jac = torch.autograd.functional.jacobian(lambda v: encoder(v.unsqueeze(0)).reshape(-1), x_one)
        out.append(jac.pow(2).sum())
    return torch.stack(out).detach()


@pytest.mark.parametrize("d_input, d_code, k", [(12, 5, 3), (4, 9, 6)])  # code side: k < 4, or d_code > d_input
def test_hutchinson_code_side_averages_its_k_probes(d_input, d_code, k):
    assert penalties.hutchinson_side(d_code, d_input, k) == "code"
    encoder = tanh_encoder([d_input, 7, d_code], seed=5)
    x = torch.randn(3, d_input, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    exact = brute_force_frobenius_sq(encoder, x)
    assert exact.max() > 1.5 * exact.min()  # distinct examples: mixing them up would show

    def estimates(probes: int, draws: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        est = penalties.jacobian_frobenius_sq(encoder, x.repeat(draws, 1), "hutchinson", k=probes, generator=gen)
        return est.detach().view(draws, 3)

    draws = 3000
    with_k, single = estimates(k, draws, 7), estimates(1, draws, 8)
    stderr = with_k.std(0) / math.sqrt(draws)
    assert ((with_k.mean(0) - exact).abs() < 4 * stderr).all(), (with_k.mean(0), exact, stderr)
    # the mean of k independent probes: its spread is that of one probe / sqrt(k)
    ratio = with_k.std(0) / single.std(0)
    assert ((ratio * math.sqrt(k) - 1).abs() < 0.2).all(), ratio  # 20%: sampling error of the spreads


# ------------------------------------------------------------------ DAE masking: round(level * D) per image


@pytest.mark.parametrize("level", [0.2, 0.1, 1.0])  # level * 64 = 12.8 -> 13, 6.4 -> 6, 64
def test_dae_masking_drops_round_level_times_d_pixels(level):
    model = models.create("dae", input_shape=(1, 8, 8), noise="masking", level=level)
    x = torch.rand(50, 1, 8, 8) + 0.5  # no pixel is zero before masking
    torch.manual_seed(0)
    dropped = (model.corrupt(x) == 0).flatten(1).sum(1)
    assert (dropped == round(level * 64)).all(), dropped


# ------------------------------------------------------------------ codes for probes and maps: eval mode


def test_encode_all_and_reconstruct_all_use_eval_mode_and_give_the_mode_back():
    from aelab.metrics.codes import encode_all, reconstruct_all

    torch.manual_seed(0)
    model = models.create("binary", input_shape=(1, 8, 8), bits=8, channels=[2, 4])  # BatchNorm before the bits
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.encoder[-1].running_mean.fill_(0.3)  # running statistics that differ from any batch's own
        model.encoder[-1].running_var.fill_(4.0)
        model.eval()
        codes, images = model.encode(x), model.decode(model.encode(x))
        model.train()
        assert not torch.equal(model.encode(x), codes)  # batch statistics give other codes: the test can fail
    torch.testing.assert_close(encode_all(model, x, batch_size=7), codes, rtol=0, atol=0)
    torch.testing.assert_close(reconstruct_all(model, x, batch_size=7), images, rtol=1e-6, atol=1e-7)
    assert model.training


# ------------------------------------------------------------------ contraction diagnostics: edges and counts


def test_saturation_counts_codes_exactly_at_the_tolerance():
    from aelab.metrics.contraction import saturation

    # "within 0.05 of 0 or 1" includes 0.05 and 0.95 themselves (float64: 1 - 0.05 == 0.95)
    codes = torch.tensor([[0.05, 0.95, 0.05 + 1e-9, 0.95 - 1e-9]], dtype=torch.float64)
    assert saturation(codes) == 0.5


def test_singular_values_above_one_percent_are_counted_against_the_largest():
    from aelab.metrics.contraction import contraction_diagnostics

    # J = diag(h (1 - h)) Q with Q orthogonal: singular values h (1 - h) at the biases, 0.25 down to 1.2e-4
    model = models.create("ae", input_shape=(1, 1, 6), hidden=[6], latent=None, activation="sigmoid").double()
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    bias = torch.tensor([0.0, 1.0, 2.0, 4.0, 7.0, 9.0], dtype=torch.float64)
    with torch.no_grad():
        model.encoder[0].weight.copy_(q)
        model.encoder[0].bias.copy_(bias)
    metrics, _ = contraction_diagnostics(model, torch.zeros(1, 1, 1, 6, dtype=torch.float64))
    slopes = (torch.sigmoid(bias) * (1 - torch.sigmoid(bias))).sort(descending=True).values
    assert metrics["jacobian_sv_top"] == pytest.approx(0.25, rel=1e-9)
    assert metrics["jacobian_sv_above_1pct"] == int((slopes > 0.01 * slopes[0]).sum()) == 4


# ------------------------------------------------------------------ RBM: the monitored reconstruction error


def test_rbm_recon_error_is_the_mean_over_training_samples():
    from aelab.models.rbm import RBM

    gen = torch.Generator().manual_seed(0)
    rbm = RBM(16, 8, generator=gen, dtype=torch.float64)
    data = (torch.rand(200, 16, generator=gen, dtype=torch.float64) < 0.3).double()
    (record,) = rbm.fit(data, epochs=1, batch_size=50, lr=0.0, monitor_size=0, generator=gen)  # lr 0: W fixed
    # E over h0 ~ p(h | v) of sum_i (v_i - p(v_i | h0))^2, averaged over the 200 samples, by 100 draws each
    with torch.no_grad():
        h_prob = torch.sigmoid(data @ rbm.weight + rbm.hidden_bias)
        h0 = torch.bernoulli(h_prob.expand(100, -1, -1), generator=torch.Generator().manual_seed(1))
        v_prob = torch.sigmoid(h0 @ rbm.weight.T + rbm.visible_bias)
        expected = (data - v_prob).pow(2).sum(2).mean()
    assert record["recon_error"] == pytest.approx(float(expected), rel=0.05)


# ------------------------------------------------------------------ baselines and summaries


def test_linear_decoder_sse_fits_an_intercept_of_its_own():
    from sklearn.linear_model import LinearRegression

    from aelab.metrics.reconstruction import linear_decoder_sse

    rng = np.random.default_rng(1)
    b_tr, b_te = rng.integers(0, 2, (60, 4)), rng.integers(0, 2, (15, 4))  # no constant bit to stand in for it
    x_tr, x_te = rng.random((60, 1, 2, 3)) + 2.0, rng.random((15, 1, 2, 3)) + 2.0  # far from 0: the offset matters
    fit = LinearRegression().fit(b_tr, x_tr.reshape(60, -1))
    expected = ((fit.predict(b_te) - x_te.reshape(15, -1)) ** 2).sum(1)
    np.testing.assert_allclose(linear_decoder_sse(b_tr, x_tr, b_te, x_te), expected, rtol=1e-9)


def test_class_metrics_mean_skips_classes_without_positives():
    from aelab.metrics.ranking import class_metrics

    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.4])
    classes = np.array([0, 0, 1, 1, 2, 2])
    positive = np.array([1, 0, 0, 1, 0, 0], dtype=bool)  # class 2 has no positive: its AUROC and AP are NaN
    result = class_metrics(scores, classes, positive)
    assert math.isnan(result["per_class"][2]["auroc"])
    assert result["mean"]["auroc"] == pytest.approx((1.0 + 0.0) / 2)
    assert result["mean"]["precision_at_k"] == pytest.approx((1.0 + 0.0) / 2)


def test_raw_probe_cache_tells_train_limits_apart(monkeypatch):
    train_x, train_y, test_x, test_y = runs.run_data({"dataset": "digits"})
    monkeypatch.setattr(evaluation, "_RAW_PROBE_CACHE", {})
    pixels_te = test_x.flatten(1).numpy()
    for limit in (40, 300):
        pixels_tr = train_x[:limit].flatten(1).numpy()
        got = evaluation.raw_probe(
            {"dataset": "digits", "train_limit": limit},
            pixels_tr,
            train_y[:limit].numpy(),
            pixels_te,
            test_y.numpy(),
            None,
        )["accuracy"]
        assert got == pytest.approx(sklearn_probe(pixels_tr, train_y[:limit], pixels_te, test_y), abs=1e-9), limit


def test_vae_samples_decode_standard_normal_codes():
    vae = vae_with_fixed_posterior_scale([0.0, 0.0, 0.0])
    seen = []
    hook = vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    vae.sample(20000, generator=torch.Generator().manual_seed(0))
    hook.remove()
    (z,) = seen
    assert (z.mean(0).abs() < 5 / math.sqrt(20000)).all(), z.mean(0)
    torch.testing.assert_close(z.std(0), torch.ones(3, dtype=torch.float64), rtol=0.03, atol=0)


def test_cae_hutchinson_penalty_averages_k_probes():
    def cae(k):
        torch.manual_seed(0)
        return models.create("cae", input_shape=(1, 3, 4), hidden=[6, 4], penalty="hutchinson", k=k).double()

    x = torch.rand(3, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64).repeat(3000, 1)
    torch.manual_seed(2)
    spread = {k: cae(k).code_and_penalty(x)[1].detach().view(3000, 3).std(0) for k in (1, 8)}
    ratio = spread[8] / spread[1]
    assert ((ratio * math.sqrt(8) - 1).abs() < 0.2).all(), ratio
