"""Tests of the contractive and denoising autoencoders (aelab.models.contractive) and their diagnostics.

References are independent of the code under test: losses are rebuilt by hand from the
weights (sigmoid/BCE written out), Jacobians come from torch.autograd.functional.jacobian
one example at a time in float64, gradients from central finite differences, singular
values from torch.linalg.svdvals of those brute-force Jacobians.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from aelab import models
from aelab.errors import ConfigError
from aelab.metrics.contraction import code_activation, contraction_diagnostics, jacobian_spectrum, saturation
from aelab.models.contractive import TiedDecoder

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]


SHAPE = (1, 3, 4)  # 12 pixels


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def build(name: str, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    model = models.create(name, input_shape=SHAPE, **options).double()
    # move the biases off zero so that no unit sits at a symmetric point by accident
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def brute_force_jacobians(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, d_code, d_input) by torch.autograd.functional.jacobian, one example at a time."""
    rows = []
    for x_one in x:
        jac = torch.autograd.functional.jacobian(lambda v: model.encode(v.unsqueeze(0)).reshape(-1), x_one)
        rows.append(jac.reshape(jac.shape[0], -1))
    return torch.stack(rows).detach()


def manual_bce(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image cross-entropy summed over pixels, written out from the sigmoid."""
    p = 1 / (1 + torch.exp(-logits))
    x = x.flatten(1)
    return -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(1)


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


# ------------------------------------------------------------------ CAE loss


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_cae_loss_one_layer_reuses_activations_and_matches_brute_force(activation):
    model = build("cae", hidden=[5], activation=activation, lam=0.7)
    x = images(6, 1)
    (enc,), (dec,) = linears(model.encoder), linears(model.decoder)
    calls = []
    enc.register_forward_hook(lambda *a: calls.append(1))
    terms = model.loss_terms(x)
    assert len(calls) == 1, "the analytic penalty must reuse the forward pass's activations"

    act = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[activation]
    h = act(x.flatten(1) @ enc.weight.T + enc.bias)
    recon = manual_bce(h @ dec.weight.T + dec.bias, x)
    jac_sq = brute_force_jacobians(model, x).pow(2).sum((1, 2))
    assert jac_sq.min() > 0
    torch.testing.assert_close(terms["recon"], recon.mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(terms["jacobian_sq"], jac_sq.mean(), rtol=1e-10, atol=0)
    torch.testing.assert_close(terms["loss"], recon.mean() + 0.7 * jac_sq.mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(model.loss(x), terms["loss"], rtol=0, atol=0)


@pytest.mark.parametrize(
    "options",
    [dict(hidden=[6, 4], latent=None, activation="sigmoid"), dict(hidden=[6], latent=3, activation="tanh", loss="mse")],
)
def test_cae_loss_exact_path_matches_brute_force(options):
    model = build("cae", lam=0.3, **options)
    assert model._analytic is None  # not the one-layer pattern: the exact route
    x = images(5, 2)
    terms = model.loss_terms(x)
    jac_sq = brute_force_jacobians(model, x).pow(2).sum((1, 2))
    logits = model.decode_logits(model.encode(x))
    if options.get("loss") == "mse":
        recon = (torch.sigmoid(logits) - x.flatten(1)).pow(2).sum(1)
    else:
        recon = manual_bce(logits, x)
    torch.testing.assert_close(terms["jacobian_sq"], jac_sq.mean(), rtol=1e-10, atol=0)
    torch.testing.assert_close(terms["loss"], recon.mean() + 0.3 * jac_sq.mean(), rtol=1e-10, atol=0)


def test_cae_hutchinson_penalty_is_unbiased():
    model = build("cae", hidden=[6, 4], penalty="hutchinson", k=4)
    x = images(3, 3)
    exact = brute_force_jacobians(model, x).pow(2).sum((1, 2)).mean()
    torch.manual_seed(11)
    batch = x.repeat(50, 1, 1, 1)  # every copy gets its own probes: one call averages 50 draws per example
    draws = torch.stack([model.loss_terms(batch)["jacobian_sq"].detach() for _ in range(40)])
    assert draws.std() > 0
    stderr = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean() - exact) < 4 * stderr, (draws.mean(), exact, stderr)


@pytest.mark.parametrize(
    "options",
    [
        dict(hidden=[4], activation="sigmoid"),
        dict(hidden=[4], activation="sigmoid", tied=True),
        dict(hidden=[5, 3], activation="tanh"),
    ],
)
def test_cae_loss_gradient_matches_finite_differences(options):
    model = build("cae", lam=0.5, **options)
    x = images(4, 4)
    model.zero_grad()
    model.loss(x).backward()
    eps, checked = 1e-6, 0
    for name, p in model.named_parameters():
        flat, grad = p.data.view(-1), p.grad.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            plus = model.loss(x).item()
            flat[i] = old - eps
            minus = model.loss(x).item()
            flat[i] = old
            fd = (plus - minus) / (2 * eps)
            assert abs(grad[i].item() - fd) <= 1e-6 * max(1.0, abs(fd)), (name, i, grad[i].item(), fd)
            checked += 1
    assert checked == sum(p.numel() for p in model.parameters())


def test_cae_lam_zero_is_the_plain_autoencoder_and_lam_scales_the_penalty():
    x = images(4, 5)
    plain = build("ae", seed=3, hidden=[5], latent=None, activation="sigmoid", loss="bce")
    cae0 = build("cae", seed=3, hidden=[5], lam=0.0)
    cae2 = build("cae", seed=3, hidden=[5], lam=2.0)
    assert plain.state_dict().keys() == cae0.state_dict().keys()
    torch.testing.assert_close(cae0.loss(x), plain.loss(x), rtol=1e-14, atol=0)
    terms = cae2.loss_terms(x)
    torch.testing.assert_close(terms["loss"] - terms["recon"], 2.0 * terms["jacobian_sq"], rtol=1e-12, atol=0)


def test_tied_decoder_uses_transposed_encoder_weights():
    model = build("cae", hidden=[5, 3], activation="sigmoid", tied=True)
    assert isinstance(model.decoder, TiedDecoder)
    assert not any("decoder" in k and "weight" in k for k in model.state_dict())
    enc1, enc2 = linears(model.encoder)
    b_top, b_bottom = model.decoder.biases  # mirror order: code -> hidden -> pixels
    z = torch.rand(2, 3, dtype=torch.float64)
    expected = torch.sigmoid(z @ enc2.weight + b_top) @ enc1.weight + b_bottom
    torch.testing.assert_close(model.decode_logits(z), expected, rtol=1e-14, atol=0)
    twin = models.create("cae", **json.loads(json.dumps(model.options))).double()
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(twin.decode_logits(z), expected, rtol=1e-14, atol=0)


def test_option_validation():
    for bad in [
        dict(lam=-1.0),
        dict(lam=float("nan")),
        dict(penalty="nope"),
        dict(k=0),
        dict(hidden=[4, 3], penalty="analytic"),
        dict(activation="softplus", penalty="analytic"),
    ]:
        with pytest.raises(ConfigError):
            models.create("cae", input_shape=SHAPE, **bad)
    for bad in [dict(noise="salt"), dict(level=-0.1), dict(noise="masking", level=1.5)]:
        with pytest.raises(ConfigError):
            models.create("dae", input_shape=SHAPE, **bad)
    with pytest.raises(ConfigError):
        models.create("ae", input_shape=SHAPE, hidden=[], latent=None)


def test_ae_code_options_keep_the_default_and_build_the_one_layer_sigmoid_encoder():
    default = models.create("ae")
    assert [tuple(v.shape) for v in default.state_dict().values()] == [
        (256, 784),
        (256,),
        (64, 256),
        (64,),
        (20, 64),
        (20,),
        (64, 20),
        (64,),
        (256, 64),
        (256,),
        (784, 256),
        (784,),
    ]
    assert isinstance(default.encoder[1], nn.ReLU) and code_activation(default) is None
    rifai = models.create("ae", hidden=[1000], latent=None, activation="sigmoid", weight_decay=1e-3)
    assert [type(m) for m in rifai.encoder] == [nn.Linear, nn.Sigmoid]
    assert [type(m) for m in rifai.decoder] == [nn.Linear] and rifai.latent == 1000
    assert code_activation(rifai) == "sigmoid"
    assert models.create("ae", **rifai.options).options == rifai.options


# ------------------------------------------------------------------ DAE


def test_dae_gaussian_loss_is_the_reconstruction_of_the_clean_input_from_noisy_input():
    model = build("dae", hidden=[5], noise="gaussian", level=0.4)
    x = images(6, 6)
    torch.manual_seed(21)
    loss = model.loss(x)
    torch.manual_seed(21)
    noisy = x + 0.4 * torch.randn_like(x)
    (enc,), (dec,) = linears(model.encoder), linears(model.decoder)
    expected = manual_bce(torch.sigmoid(noisy.flatten(1) @ enc.weight.T + enc.bias) @ dec.weight.T + dec.bias, x)
    torch.testing.assert_close(loss, expected.mean(), rtol=1e-12, atol=0)
    clean = manual_bce(model.decode_logits(model.encode(x)), x).mean()
    assert abs(loss.item() - clean.item()) > 1e-3
    torch.testing.assert_close(model.loss_terms(x)["recon_clean"], clean, rtol=1e-12, atol=0)


def test_dae_masking_zeroes_the_requested_fraction_uniformly():
    model = models.create("dae", input_shape=(1, 8, 8), noise="masking", level=0.3)
    x = torch.rand(2000, 1, 8, 8) + 0.5  # no pixel is zero before masking
    torch.manual_seed(0)
    corrupted = model.corrupt(x)
    dropped = corrupted == 0
    assert (dropped.flatten(1).sum(1) == round(0.3 * 64)).all()  # exactly round(level * D) per image
    assert torch.equal(corrupted[~dropped], x[~dropped])  # the others untouched
    per_pixel = dropped.double().mean(0).flatten()  # each pixel dropped with probability 19/64
    p = round(0.3 * 64) / 64
    assert (per_pixel - p).abs().max() < 5 * math.sqrt(p * (1 - p) / 2000)


def test_dae_encode_is_deterministic_and_clean():
    for noise in ("gaussian", "masking"):
        model = build("dae", hidden=[5], noise=noise, level=0.5)
        x = images(4, 7)
        model.train()
        first, second = model.encode(x), model.encode(x)
        assert torch.equal(first, second)
        (enc,) = linears(model.encoder)
        torch.testing.assert_close(first, torch.sigmoid(x.flatten(1) @ enc.weight.T + enc.bias), rtol=1e-14, atol=0)
        assert not torch.equal(model.corrupt(x), x)


# ------------------------------------------------------------------ diagnostics


def test_saturation_on_a_hand_built_case(tmp_path):
    codes = torch.tensor([[0.01, 0.5, 0.96, 0.04], [0.94, 0.06, 1.0, 0.0]])
    assert saturation(codes) == 5 / 8
    # a sigmoid layer with zero weights: the code is sigmoid(b) for every input
    model = models.create("cae", input_shape=SHAPE, hidden=[4])
    with torch.no_grad():
        model.encoder[0].weight.zero_()
        model.encoder[0].bias.copy_(torch.tensor([8.0, -8.0, 0.0, 1.0]))  # 0.9997, 0.0003, 0.5, 0.73
    metrics, _ = contraction_diagnostics(model, images(10, 8).float())
    assert metrics["saturation"] == 0.5
    assert metrics["jacobian_fro_mean"] == 0.0


@pytest.mark.parametrize(
    "name, options",
    [("cae", dict(hidden=[5])), ("dae", dict(hidden=[6, 4], activation="tanh")), ("ae", dict(hidden=[6], latent=3))],
)
def test_diagnostics_match_brute_force(tmp_path, name, options):
    model = build(name, **options)
    x = images(30, 9)
    jac = brute_force_jacobians(model, x)
    model.train()
    metrics, mean_spectrum = contraction_diagnostics(model, x)
    assert model.training  # measured in eval mode, given back in the mode it was in
    norms = jac.pow(2).sum((1, 2)).sqrt()
    assert metrics["jacobian_fro_mean"] == pytest.approx(norms.mean().item(), rel=1e-10)
    assert metrics["jacobian_fro_sq_mean"] == pytest.approx(norms.pow(2).mean().item(), rel=1e-10)
    assert metrics["jacobian_method"] == ("analytic" if name == "cae" else "exact")
    singular = torch.linalg.svdvals(jac[:20])
    assert metrics["jacobian_sv_top"] == pytest.approx(singular[:, 0].mean().item(), rel=1e-8)
    sigmoid_code = options.get("activation", "sigmoid" if name != "ae" else "relu") == "sigmoid" and name != "ae"
    if sigmoid_code:
        codes = model.encode(x)
        assert metrics["saturation"] == pytest.approx(((codes <= 0.05) | (codes >= 0.95)).double().mean().item())
    else:
        assert metrics["saturation"] is None
    assert not list(tmp_path.iterdir())  # measuring writes nothing
    torch.testing.assert_close(
        torch.tensor(mean_spectrum, dtype=torch.float64), singular.mean(0), rtol=1e-8, atol=1e-12
    )


def test_spectrum_resolves_small_singular_values():
    # J = diag(s) W with W orthogonal rows: singular values are exactly |s_j| * 1, spread over 6 decades
    model = models.create("ae", input_shape=(1, 1, 6), hidden=[6], latent=None, activation="sigmoid").double()
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        model.encoder[0].weight.copy_(q)
        model.encoder[0].bias.copy_(torch.tensor([0.0, 3.0, 6.0, 9.0, 12.0, 15.0]))
    x = torch.zeros(1, 1, 1, 6, dtype=torch.float64)  # preactivation = bias
    h = torch.sigmoid(model.encoder[0].bias)
    expected = (h * (1 - h)).detach().sort(descending=True).values
    torch.testing.assert_close(jacobian_spectrum(model, x)[0], expected, rtol=1e-6, atol=0)


def test_the_mlp_models_declare_their_encoder_and_the_others_do_not():
    assert all(models.model_class(n).has_mlp_encoder for n in ("ae", "cae", "dae"))
    assert not any(models.model_class(n).has_mlp_encoder for n in ("vae", "deep-ae", "binary"))


# ------------------------------------------------------------------ experiment end to end


def test_experiment_end_to_end(tmp_path, capsys):
    from aelab.cli import main

    out = tmp_path / "exp"
    code = main(
        [
            "experiment",
            "contractive",
            "--quick",
            "--dataset",
            "digits",
            "--hidden",
            "12",
            "--epochs",
            "1",
            "--train-limit",
            "150",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [r["model"] for r in rows] == ["AE", "AE+wd", "DAE-g", "DAE-b", "CAE", "RBM"]
    for row in rows[:-1]:  # the RBM row has no eval.json (test_contractive_protocol, test_finetune)
        (run,) = row["runs"]
        evaluation = json.loads((Path(run) / "eval.json").read_text())["metrics"]
        probe = row["metrics"]["probe_accuracy"]
        assert probe["values"] == [evaluation["probe_accuracy"]] and probe["ci95"] is None and probe["n_seeds"] == 1
        assert row["metrics"]["jacobian_fro_mean"]["mean"] == evaluation["jacobian_fro_mean"] > 0
        assert 0 <= row["metrics"]["saturation"]["mean"] <= 1 and row["metrics"]["recon_sse"]["mean"] > 0
        config = json.loads((Path(run) / "config.json").read_text())
        assert config["epochs"] == 1 and config["model_options"]["hidden"] == [12]
        assert (config["n_train"], config["n_val"], config["val_fraction"]) == (135, 15, 0.1)
    assert results["data"]["n_train"] == 150
    reference = results["reference_rifai2011_table1"]
    assert reference["rows"][0] == {"model": "CAE", "test error %": "1.14", "mean ‖J‖_F": "0.73e-4", "SAT %": "86.36"}
    assert "Table 1" in reference["source"]
    html = (out / "report.html").read_text()
    assert "Rifai" in html and "AE+wd" in html and "data:image/png;base64" in html
    assert "1 seed, no interval" in html
    assert (out / "jacobian_spectra.png").exists()
    first = (out / "report.md").read_text().split("\n\n")[1:3]  # the lead: a smoke check, then the reading
    assert results["quick"] is True and first[0].startswith("--quick: a smoke check")
    best = min(results["rows"], key=lambda r: r["metrics"]["finetune_error"]["mean"])
    assert first[1].startswith(f"Lowest fine-tuned test error: {best['model']} ") and "CAE 1.14%" in first[1]


@pytest.mark.parametrize("args", [["--lam", "x"], ["--lam", "-1"], ["--mask-fraction", "1.5"]])
def test_experiment_rejects_bad_options(tmp_path, capsys, args):
    from aelab.cli import main

    assert main(["experiment", "contractive", *args, "--out", str(tmp_path / "e")]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
