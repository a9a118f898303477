"""Issue 21: the VAE family at Burda et al.'s protocol. The IWAE bound and its gradient against a per-image
computation from torch.distributions, binarised data (static and dynamic) against the Bernoulli law, the
learning-rate schedule against the paper's stage lengths, the preset, a bit-identical resume, the experiment."""

import json
import math

import pytest
import torch

from aelab import data, models
from aelab.cli import main
from aelab.runs import read_history, read_safetensors
from aelab.train import TrainConfig, binarize_epoch, burda_stage, learning_rate, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _log_weights_by_distributions(model, x, eps):
    """log p(x|z) + log p(z) - log q(z|x) per (sample, image), from torch.distributions: independent of
    VAE.log_weights."""
    from torch.distributions import Bernoulli, Independent, Normal

    mu, logvar = model.posterior(x)
    std = torch.exp(0.5 * logvar)
    z = mu + std * eps  # (k, B, latent)
    q = Independent(Normal(mu, std), 1)
    prior = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    px = Independent(Bernoulli(logits=model.decoder(z)), 1)
    return px.log_prob(x.flatten(1).expand(len(eps), -1, -1)) + prior.log_prob(z) - q.log_prob(z)


def test_the_iwae_loss_and_gradient_normalise_the_weights_over_the_k_samples_of_each_image():
    """L_k = mean_b log (1/k) sum_i w_ib; its gradient is mean_b sum_i (w_ib / sum_j w_jb) grad log w_ib: the
    weights normalised over the k samples of image b, never over the batch."""
    torch.manual_seed(0)
    model = models.create("iwae", input_shape=(1, 2, 3), hidden=[5], latent=2, k=7).double()
    x = torch.rand(4, 1, 2, 3, dtype=torch.float64).round()
    torch.manual_seed(3)
    loss = model.loss(x)
    loss.backward()
    ours = [p.grad.clone() for p in model.parameters()]
    torch.manual_seed(3)
    mu = model.posterior(x)[0]
    eps = torch.randn(7, *mu.shape, dtype=torch.float64)  # the draw loss_terms made
    model.zero_grad()
    log_w = _log_weights_by_distributions(model, x, eps)  # (k, B)
    expected = -(torch.logsumexp(log_w, 0) - math.log(7)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    weights = torch.softmax(log_w.detach(), dim=0)  # over the k samples of each image
    (-(weights * log_w).sum(0).mean()).backward()
    for a, b in zip(ours, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the wrong normalisation (over the batch) gives another gradient: the check above can tell them apart
    model.zero_grad()
    log_w = _log_weights_by_distributions(model, x, eps)
    wrong = torch.softmax(log_w.detach(), dim=1)
    (-(wrong * log_w).sum(1).mean()).backward()
    assert any(not torch.allclose(a, p.grad) for a, p in zip(ours, model.parameters()))


def test_binarized_images_follow_the_bernoulli_law_and_the_static_draw_is_fixed():
    probs = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).repeat(20000, 1)
    draw = data.binarize(probs, seed=1)
    assert set(draw.unique().tolist()) <= {0.0, 1.0}
    freq = draw.mean(0)
    assert freq[0] == 0 and freq[4] == 1
    for p, f in zip([0.1, 0.5, 0.9], freq[1:4].tolist()):  # 5 binomial standard errors
        assert abs(f - p) < 5 * math.sqrt(p * (1 - p) / 20000)
    x, _ = data.load("digits", "test", binarize="static")
    gray, _ = data.load("digits", "test")
    torch.testing.assert_close(x, data.binarize(gray, data.datasets.BINARIZE_SEEDS["test"]))
    data.datasets._CACHE.clear()
    again, _ = data.load("digits", "test", binarize="dynamic")  # the test split: the same fixed draw
    assert torch.equal(x, again)
    with pytest.raises(data.DataError, match="binarize must be static or dynamic"):
        data.load("digits", "test", binarize="yes")


def test_dynamic_binarization_draws_each_epoch_from_seed_and_epoch(tmp_path):
    gray = data.load("digits", "train")[0][:50]
    a, b = binarize_epoch(gray, 0, 0), binarize_epoch(gray, 0, 1)
    assert not torch.equal(a, b) and torch.equal(a, binarize_epoch(gray, 0, 0))
    assert not torch.equal(a, binarize_epoch(gray, 1, 0))
    # the trainer trains on them: a static run and a dynamic run differ after the first epoch's draw
    runs = {}
    for mode in ("static", "dynamic"):
        cfg = TrainConfig(model="vae", model_options={"hidden": [8], "latent": 2}, dataset="digits",
                          dataset_options={"binarize": mode}, train_limit=200, epochs=2, val_fraction=0.1,
                          out=str(tmp_path / mode), tensorboard=False)  # fmt: skip
        runs[mode] = read_history(train(cfg, progress=False))
    assert runs["static"][-1]["train_loss"] != runs["dynamic"][-1]["train_loss"]
    # what the trainer holds: dynamic keeps the grey levels of the train images; validation and test are the
    # same fixed draws under both
    from aelab.train import load_data

    held = {}
    for mode in ("static", "dynamic"):
        cfg = TrainConfig(dataset="digits", dataset_options={"binarize": mode}, train_limit=200, val_fraction=0.1)
        held[mode] = load_data(cfg, torch.device("cpu"))
    assert set(held["static"][0].unique().tolist()) == {0.0, 1.0}
    assert len(held["dynamic"][0].unique()) > 2  # grey levels, Bernoulli probabilities
    assert torch.equal(held["static"][1], held["dynamic"][1]) and torch.equal(held["static"][2], held["dynamic"][2])


def test_the_schedule_is_the_papers_stages_of_3_to_the_i_passes():
    ends, total = [], 0
    for i in range(8):
        total += 3**i
        ends.append(total)
    assert ends[-1] == 3280
    for i, end in enumerate(ends):  # the last epoch of stage i and the first of stage i + 1
        assert burda_stage(end - 1) == i and burda_stage(end) == i + 1
    cfg = TrainConfig(lr=1e-3, lr_schedule="burda")
    assert [round(learning_rate(cfg, e) * 1e4, 1) for e in (0, 1, 3, 4, 12, 13, 3279)] == [
        10.0,
        7.2,
        7.2,
        5.2,
        5.2,
        3.7,
        1.0,
    ]  # fmt: skip  (the code's rounded rates: 1e-4 * round(10^(1 - i/7), 1))
    assert learning_rate(TrainConfig(lr=1e-3), 3279) == 1e-3


def test_iwae_with_dynamic_binarization_and_the_schedule_resumes_bit_identically(tmp_path):
    def cfg(out, epochs):
        return TrainConfig(model="iwae", model_options={"hidden": [8], "latent": 2, "k": 3, "activation": "tanh"},
                           dataset="digits", dataset_options={"binarize": "dynamic"}, train_limit=120, epochs=epochs,
                           batch_size=20, lr_schedule="burda", adam_eps=1e-4, out=str(out), tensorboard=False)  # fmt: skip

    whole = train(cfg(tmp_path / "whole", 5), progress=False)
    part = train(cfg(tmp_path / "part", 2), progress=False)
    train(cfg(part, 5), resume=True, progress=False)
    a, _ = read_safetensors(whole / "model.safetensors")
    b, _ = read_safetensors(part / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = read_history(part)
    assert [h["lr"] for h in history] == [1e-3 * 10 ** (-burda_stage(e) / 7) for e in range(5)]
    model = models.create("iwae", input_shape=(1, 8, 8), hidden=[8], latent=2, activation="tanh")
    assert any(isinstance(m, torch.nn.Tanh) for m in model.modules())


def test_the_burda_preset_and_the_flags_over_it(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "iwae", "--preset", "burda2016", "--option", "k=2", "--dataset", "digits",
            "--dataset-option", "binarize=dynamic", "--epochs", "1", "--train-limit", "60", "--batch-size", "30",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["batch_size"], config["lr_schedule"], config["adam_eps"]) == (30, "burda", 1e-4)
    options = config["model_options"]
    assert (options["hidden"], options["latent"], options["activation"], options["k"]) == ([200, 200], 50, "tanh", 2)
    assert main(["train", "--model", "ae", "--preset", "burda2016", "--out", str(tmp_path / "x")]) == 2
    assert "is for --model vae or iwae" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_experiment_on_an_idx_stand_in(idx_mnist, tmp_path):
    out = tmp_path / "vf"
    argv = ["experiment", "vae-family", "--data-dir", str(idx_mnist), "--models", "vae,iwae-3", "--epochs", "4",
            "--nll-k", "20", "--nll-test-limit", "30", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    seed = json.loads((out / "seed-0" / "results.json").read_text())
    rows = {r["model"]: r for r in seed["tables"]["nll"]}
    assert set(rows) == {"VAE", "IWAE k=3"}
    assert rows["IWAE k=3"]["passes"] == 4 and rows["VAE"]["NLL test images"] == 30
    # the curve: at the ends of the schedule's first two stages (1 and 4 passes)
    assert set(seed["curves"]["VAE"]) == {"1", "4"}
    assert seed["curves"]["VAE"]["4"] == rows["VAE"]["test NLL"]
    # the final NLL is the estimator's on the final weights: scored again independently here
    from aelab.evaluate import iwae_mean
    from aelab.runs import load_model

    test_x, _ = data.load("mnist", "test", str(idx_mnist), binarize="dynamic")
    model = load_model(out / "seed-0" / "runs" / "vae").eval()
    assert -iwae_mean(model, test_x[:30], 20, seed=0) == pytest.approx(rows["VAE"]["test NLL"], rel=1e-9)
    assert 0 <= rows["VAE"]["active units"] <= 50
    summary = json.loads((out / "results.json").read_text())
    assert [(d["a"], d["b"]) for d in summary["paired_differences"]] == [("IWAE k=3", "VAE")]
    assert main([*argv[:4], "--models", "vae,gan", "--out", str(tmp_path / "bad")]) == 2
    # issue 23, item 8: a one-seed report gives plain numbers first, no interval wording, no interval plots
    text = (out / "report.md").read_text()
    assert "(1 seed, no interval)" not in text and "over 1 seed" not in text
    assert text.index("## nll") < text.index("One seed (0)")
    assert f"| {rows['VAE']['test NLL']:.2f} |" in text  # the number itself, in its cell
    assert not list(out.glob("intervals-*.png"))
