"""aelab.finetune (the MLP fine-tuned from a one-layer sigmoid encoder, Rifai et al. 2011's Table 1 number) and the
contractive experiment's RBM row (contractive_finetune), against computations made here by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aelab.experiments import contractive  # noqa: F401  (contractive_steps imports the recipe first)
from aelab.experiments.contractive_finetune import rbm_as_autoencoder
from aelab.experiments.contractive_report import difference_verdict, rifai_error, rifai_table
from aelab.finetune import MLP, FinetuneConfig, encoder_layer, error_count, finetune, mlp_from, permutation
from aelab.models import create as build

pytestmark = pytest.mark.usefixtures("one_thread")


def toy(n: int = 120, d: int = 6, k: int = 3, seed: int = 0):
    """Separable-ish classes: class c has its mean at 2 * e_c."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, d, generator=g) * 0.7
    x[torch.arange(n), y] += 2.0
    return x, y


def test_mlp_starts_as_the_encoder_with_uniform_outputs():
    for name, options in [("ae", {"hidden": [5], "latent": None, "activation": "sigmoid"}), ("cae", {"hidden": [5], "latent": None}), ("rbm", {"hidden": 5})]:  # fmt: skip
        model = build(name, input_shape=(1, 2, 3), **options).eval()
        x = torch.rand(7, 1, 2, 3)
        net = mlp_from(model, 4)
        assert torch.allclose(net.features(x), model.encode(x), atol=1e-6), name
        assert torch.equal(net(x), torch.zeros(7, 4)), name  # softmax(0) = uniform: no class favoured at the start
        w, _ = encoder_layer(model)
        w += 1  # a copy: the model's weights are not the MLP's
        assert torch.allclose(net.features(x), model.encode(x), atol=1e-6), name


def test_encoder_layer_refuses_what_is_not_one_sigmoid_layer():
    for options in ({"hidden": [5, 4], "latent": None, "activation": "sigmoid"}, {"hidden": [5], "latent": 3}):
        with pytest.raises(ValueError, match="not one Linear \\+ Sigmoid"):
            encoder_layer(build("ae", input_shape=(1, 2, 3), **options))


def test_one_sgd_step_is_the_hand_computed_softmax_gradient():
    """From V = 0: dL/dV = (softmax(0) - onehot)^T h / n = (1/K - onehot)^T h / n, dL/dc likewise; and dL/dW by
    finite differences in float64. One batch of all the images, lr 0.5, no momentum."""
    torch.manual_seed(0)
    x, y = toy(n=20, d=4, k=3)
    x, w, b = x.double(), torch.randn(5, 4).double(), torch.randn(5).double()  # float32 values: MLP copies into float32
    net = MLP(w, b, 3).double()
    h = torch.sigmoid(x @ w.T + b)
    onehot = F.one_hot(y, 3).double()
    grad_v = (torch.full((20, 3), 1 / 3, dtype=torch.float64) - onehot).T @ h / 20
    grad_c = (1 / 3 - onehot).mean(0)
    loss = lambda w_: F.cross_entropy(torch.sigmoid(x @ w_.T + b) @ torch.zeros(5, 3, dtype=torch.float64), y)
    # at V = 0 the loss does not depend on W: its gradient, and so W's first step, is exactly 0
    assert float(loss(w + 1e-3)) == pytest.approx(float(loss(w)), abs=1e-15)
    config = FinetuneConfig(epochs=1, patience=1, optimizer="sgd", lr=0.5, momentum=0.0, batch_size=20)
    record = finetune(net, (x, y), (x, y), config, seed=0)
    assert torch.allclose(net.out.weight, -0.5 * grad_v, atol=1e-12)
    assert torch.allclose(net.out.bias, -0.5 * grad_c, atol=1e-12)
    assert torch.equal(net.hidden.weight, w) and torch.equal(net.hidden.bias, b)
    assert record["history"][0]["train_loss"] == pytest.approx(math.log(3), abs=1e-12)  # the loss before the step


def test_the_kept_weights_are_the_best_validation_epoch_and_patience_stops():
    x, y = toy()
    vx, vy = toy(seed=1)
    seen = []
    config = FinetuneConfig(epochs=40, patience=3, lr=0.05)
    net = MLP(torch.randn(8, 6), torch.zeros(8), 3)
    record = finetune(net, (x, y), (vx, vy), config, seed=2, on_epoch=seen.append)
    errors = [h["val_errors"] for h in record["history"]]
    best = errors.index(min(errors)) + 1  # the first epoch among equals
    assert record["best_epoch"] == best and record["val_errors"] == min(errors) == error_count(net, vx, vy)
    assert record["epochs_run"] == len(errors) and [s["epoch"] for s in seen] == list(range(1, len(errors) + 1))
    if record["stopped_early"]:
        assert len(errors) == best + 3 and min(errors[best:]) >= errors[best - 1]
    assert record["val_error"] == pytest.approx(min(errors) / len(vy))


def test_patience_counts_epochs_after_the_best():
    """Validation errors that never improve after epoch 1: training stops at epoch 1 + patience."""
    x, y = toy()
    net = MLP(torch.zeros(4, 6), torch.zeros(4), 3)  # constant features: every epoch classifies the same way
    vx = torch.zeros(9, 6)
    record = finetune(net, (x, y), (vx, torch.arange(9) % 3), FinetuneConfig(epochs=30, patience=4, lr=1e-3), seed=0)
    errors = [h["val_errors"] for h in record["history"]]
    assert errors == [6] * 5 and record["best_epoch"] == 1 and record["stopped_early"]


def test_a_rerun_gives_the_same_weights_and_another_seed_does_not():
    x, y = toy()
    nets = []
    for seed in (0, 0, 1):
        torch.manual_seed(123)  # the MLP's own start is the encoder's: nothing else is drawn from the global stream
        net = MLP(torch.ones(8, 6) * 0.1, torch.zeros(8), 3)
        torch.manual_seed(seed + 99)  # the global stream must not matter either
        finetune(net, (x, y), (x, y), FinetuneConfig(epochs=2, patience=2, batch_size=16), seed=seed)
        nets.append(net.state_dict())
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
    assert not all(torch.equal(nets[0][k], nets[2][k]) for k in nets[0])
    assert not torch.equal(permutation(50, 0, 1), permutation(50, 0, 2))  # each epoch its own order
    assert torch.equal(permutation(50, 3, 1), permutation(50, 3, 1))


def test_the_probe_mode_trains_only_the_output_layer():
    x, y = toy()
    w = torch.randn(8, 6)
    net = MLP(w, torch.zeros(8), 3)
    finetune(net, (x, y), (x, y), FinetuneConfig(epochs=3, patience=3, frozen_encoder=True), seed=0)
    assert torch.equal(net.hidden.weight, w) and net.out.weight.abs().sum() > 0
    tuned = MLP(w, torch.zeros(8), 3)
    finetune(tuned, (x, y), (x, y), FinetuneConfig(epochs=3, patience=3), seed=0)
    assert not torch.equal(tuned.hidden.weight, w)


def test_error_count_counts_argmax_mistakes():
    net = MLP(torch.eye(3), torch.zeros(3), 3)
    with torch.no_grad():
        net.out.weight.copy_(torch.eye(3))
    x = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    assert error_count(net, x, torch.tensor([0, 1, 2, 0]), batch_size=3) == 0
    assert error_count(net, x, torch.tensor([1, 1, 0, 2]), batch_size=3) == 3


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"patience": 0}, {"lr": 0.0}, {"lr": float("nan")}, {"optimizer": "cg"}, {"momentum": 1.0}, {"batch_size": True}])  # fmt: skip
def test_bad_fine_tuning_settings_are_refused(bad):
    with pytest.raises(ValueError, match="fine-tuning"):
        FinetuneConfig(**bad).validate()


def test_rbm_as_autoencoder_encodes_and_decodes_as_the_rbm():
    model = build("rbm", input_shape=(1, 3, 4), hidden=5).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.rand(6, 1, 3, 4)
    ae = rbm_as_autoencoder(model)
    h = torch.sigmoid(model.rbm.hidden_bias + x.flatten(1) @ model.rbm.weight)  # E[h | x] by hand
    assert torch.allclose(ae.encode(x), h, atol=1e-6)
    v = torch.sigmoid(model.rbm.visible_bias + h @ model.rbm.weight.T)
    assert torch.allclose(ae.decode(h).flatten(1), v, atol=1e-6)
    assert torch.allclose(ae.decode(h), model.decode(model.encode(x)), atol=1e-6)


def test_rifai_numbers_come_from_papers_and_verdicts_know_which_way_is_better():
    assert rifai_error("RBM") == "1.30" and rifai_error("CAE") == "1.14" and rifai_error("nothing") is None
    assert [r["model"] for r in rifai_table()] == ["CAE", "DAE-g", "RBM-binary", "DAE-b", "AE+wd", "AE"]
    diff = {"mean": -0.002, "std": 0.001, "ci95": [-0.003, -0.001], "n_seeds": 3}
    assert difference_verdict(diff, "CAE", "AE", "fine-tuned test error", higher_better=False).endswith("CAE is better")
    assert difference_verdict(diff, "CAE", "AE", "probe accuracy", higher_better=True).endswith("AE is better")
    assert "includes 0" in difference_verdict({"mean": 0.0, "std": 1.0, "ci95": [-1.0, 1.0], "n_seeds": 3}, "CAE", "AE")


# ---------------------------------------------------------------- the experiment's two scorings, on tiny real runs
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A CAE run and an RBM run on sklearn's digits (300 train images, 10% validation), one epoch each."""
    from aelab.train import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny")
    common = dict(dataset="digits", train_limit=300, val_fraction=0.1, seed=0, tensorboard=False)
    cae = TrainConfig(model="cae", model_options={"hidden": [12], "latent": None}, epochs=1, out=str(root / "cae"), **common)  # fmt: skip
    rbm = TrainConfig(model="rbm", model_options={"hidden": 12, "cd_epochs": 3}, epochs=1, out=str(root / "rbm"), **common)  # fmt: skip
    train(cae, progress=False)
    train(rbm, progress=False)
    return root / "cae", root / "rbm"


def _splits(run_dir):
    from aelab import runs
    from aelab.data.sources import validation_split

    config = runs.read_config(run_dir)
    train_x, train_y, test_x, test_y = runs.run_data(config)
    keep, held, _ = validation_split(train_y.numpy(), 0.1)  # carved here as the trainer carves it
    return train_x.flatten(1), train_y, test_x.flatten(1), test_y, torch.as_tensor(keep), torch.as_tensor(held)


def test_finetune_member_fits_on_train_minus_validation_and_scores_the_test_split_once(tiny_runs):
    from aelab import runs
    from aelab.experiments.contractive_finetune import finetune_member

    run_dir = tiny_runs[0]
    config = FinetuneConfig(epochs=4, patience=2, lr=1e-2)
    metrics, official = finetune_member(run_dir, config, seed=3, data_dir=None, official=False)
    train_x, train_y, test_x, test_y, keep, held = _splits(run_dir)
    by_hand = mlp_from(runs.load_model(run_dir), 10)
    record = finetune(by_hand, (train_x[keep], train_y[keep]), (train_x[held], train_y[held]), config, seed=3)
    assert official is None
    assert metrics == {
        "finetune_error": error_count(by_hand, test_x, test_y) / len(test_y),
        "finetune_val_error": record["val_error"],
        "finetune_best_epoch": record["best_epoch"],
        "finetune_epochs_run": record["epochs_run"],
    }
    assert len(held) == 30 and record["n_train"] == 270


def test_finetune_member_never_looks_at_the_test_split(tiny_runs, garbage_test_split):
    from aelab.experiments.contractive_finetune import finetune_member

    config = FinetuneConfig(epochs=3, patience=3, lr=1e-2)
    clean, _ = finetune_member(tiny_runs[0], config, seed=0, data_dir=None, official=False)
    garbage_test_split()
    noisy, _ = finetune_member(tiny_runs[0], config, seed=0, data_dir=None, official=False)
    assert noisy["finetune_error"] != clean["finetune_error"]  # the garbage reached the scoring
    for key in ("finetune_val_error", "finetune_best_epoch", "finetune_epochs_run"):
        assert noisy[key] == clean[key], key


def test_rbm_row_metrics_by_hand(tiny_runs):
    """The RBM row: probe on E[h|x], recon SSE of the mean-field reconstruction, ||J||_F in closed form
    (J = diag(h(1-h)) W^T, so ||J||_F^2 = sum_j (h_j (1 - h_j))^2 ||W_:j||^2), SAT by Rifai's definition."""
    from aelab import runs
    from aelab.experiments.contractive_finetune import rbm_member_metrics
    from aelab.metrics.codes import validated_probe

    run_dir = tiny_runs[1]
    result, official = rbm_member_metrics(run_dir, None, official=False)
    m = result["metrics"]
    rbm = runs.load_model(run_dir).rbm
    train_x, train_y, test_x, test_y, keep, held = _splits(run_dir)
    with torch.no_grad():
        code = lambda x: torch.sigmoid(rbm.hidden_bias + x @ rbm.weight)  # noqa: E731
        h = code(test_x).double()
        w = rbm.weight.double()
        recon = torch.sigmoid(rbm.visible_bias.double() + h @ w.T)
        jac = ((h * (1 - h)) ** 2 @ (w**2).sum(0)).sqrt()
    probe = validated_probe(code(train_x).numpy(), train_y.numpy(), h.float().numpy(), test_y.numpy(), (keep.numpy(), held.numpy()))  # fmt: skip
    assert official is None and result["data"] is None
    assert m["probe_accuracy"] == pytest.approx(probe["accuracy"], abs=1e-9)
    assert m["recon_sse"] == pytest.approx(float((recon - test_x.double()).pow(2).sum(1).mean()), rel=1e-5)
    assert m["jacobian_fro_mean"] == pytest.approx(float(jac.mean()), rel=1e-4)
    assert m["saturation"] == pytest.approx(float(((h <= 0.05) | (h >= 0.95)).double().mean()), abs=1e-9)
    assert len(result["jacobian_mean_singular_values"]) == min(12, 64)


def test_the_record_names_momentum_only_for_sgd():
    assert "momentum" not in FinetuneConfig().record() and FinetuneConfig(optimizer="sgd").record()["momentum"] == 0.9


def test_the_record_and_the_epoch_callback_carry_what_they_name():
    x, y = toy(n=20)
    vx, vy = toy(n=9, seed=1)
    seen = []
    config = FinetuneConfig(epochs=3, patience=3, lr=0.05, batch_size=7)
    record = finetune(MLP(torch.randn(8, 6), torch.zeros(8), 3), (x, y), (vx, vy), config, seed=4, on_epoch=seen.append)
    assert record["config"] == config.record() and record["seed"] == 4
    assert (record["n_train"], record["n_val"], record["epochs_run"], record["stopped_early"]) == (20, 9, 3, False)
    for h, s in zip(record["history"], seen):
        assert h["val_error"] == pytest.approx(h["val_errors"] / 9) and 0 <= h["time_s"] < 60
        best = min(range(1, h["epoch"] + 1), key=lambda e: (record["history"][e - 1]["val_errors"], e))
        assert s["best_epoch"] == best and s["val_errors"] == h["val_errors"]


def test_the_epochs_train_loss_is_the_mean_over_every_image():
    """Uneven batches (7, 7, 6) and a step too small to move anything: every batch's loss is log K, and so is the
    epoch's mean over images (a sum of the last batch alone, or a count of the last batch alone, is not)."""
    x, y = toy(n=20, k=3)
    config = FinetuneConfig(epochs=1, patience=1, optimizer="sgd", lr=1e-12, momentum=0.0, batch_size=7)
    record = finetune(MLP(torch.randn(5, 6), torch.zeros(5), 3), (x, y), (x, y), config, seed=0)
    assert record["history"][0]["train_loss"] == pytest.approx(math.log(3), rel=1e-6)


def test_the_optimisers_use_the_configured_rate_and_momentum():
    x, y = toy(n=20, k=3)
    w = torch.randn(5, 6)
    adam = MLP(w, torch.zeros(5), 3)
    finetune(adam, (x, y), (x, y), FinetuneConfig(epochs=1, patience=1, lr=0.05, batch_size=20), seed=0)
    # Adam's first step moves each weight by lr in the direction against its gradient's sign (eps aside)
    assert float(adam.out.weight.abs().max()) == pytest.approx(0.05, rel=1e-3)
    nets = []
    for momentum in (0.0, 0.9):
        net = MLP(w, torch.zeros(5), 3)
        config = FinetuneConfig(epochs=1, patience=1, optimizer="sgd", lr=0.1, momentum=momentum, batch_size=5)
        finetune(net, (x, y), (x, y), config, seed=0)
        nets.append(net.out.weight.detach().clone())
    assert not torch.allclose(nets[0], nets[1])  # momentum reaches the optimiser


def test_the_permutation_is_the_documented_function_of_seed_and_epoch():
    for seed, epoch in [(0, 1), (3, 7)]:
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + 5) % (2**63))
        assert torch.equal(permutation(50, seed, epoch), torch.randperm(50, generator=g))


def test_error_rate_and_the_refusals_say_what_they_are():
    from aelab.finetune import error_rate

    net = MLP(torch.eye(3), torch.zeros(3), 3)
    with torch.no_grad():
        net.out.weight.copy_(torch.eye(3))
    x = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    assert error_rate(net, x, torch.tensor([1, 1, 2, 0])) == 0.25
    with pytest.raises(ValueError, match=r"the encoder's bias has shape \(4,\), its weight \(3, 3\)"):
        MLP(torch.eye(3), torch.zeros(4), 3)
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd, got 'cg'"):
        FinetuneConfig(optimizer="cg").validate()


def test_both_scorings_also_score_the_official_mnist_test_set_when_asked(shared_idx, tmp_path):
    """A 28x28 run (mnist5k) scored a second time on the 10,000 official test digits: the same fine-tuned net and
    the same RBM measures, by hand on those images."""
    from aelab import data as datamod
    from aelab import runs
    from aelab.experiments.contractive_finetune import finetune_member, rbm_member_metrics
    from aelab.train import TrainConfig, train

    common = dict(dataset="mnist5k", train_limit=300, val_fraction=0.1, seed=0, tensorboard=False, epochs=1)
    train(TrainConfig(model="ae", model_options={"hidden": [8], "latent": None, "activation": "sigmoid"}, out=str(tmp_path / "ae"), **common), progress=False)  # fmt: skip
    train(TrainConfig(model="rbm", model_options={"hidden": 8, "cd_epochs": 1}, out=str(tmp_path / "rbm"), **common), progress=False)  # fmt: skip
    x, y, _ = datamod.load_test_split("mnist", str(shared_idx))
    config = FinetuneConfig(epochs=2, patience=2, lr=1e-2)
    metrics, other = finetune_member(tmp_path / "ae", config, seed=0, data_dir=str(shared_idx), official=True)
    train_x, train_y, test_x, test_y, keep, held = _splits(tmp_path / "ae")
    by_hand = mlp_from(runs.load_model(tmp_path / "ae"), 10)
    finetune(by_hand, (train_x[keep], train_y[keep]), (train_x[held], train_y[held]), config, seed=0)
    assert other == {"finetune_error": error_count(by_hand, x.flatten(1), y) / 10_000}
    assert metrics["finetune_error"] == error_count(by_hand, test_x, test_y) / len(test_y)
    result, official = rbm_member_metrics(tmp_path / "rbm", str(shared_idx), official=True)
    rbm = runs.load_model(tmp_path / "rbm").rbm
    with torch.no_grad():
        h = torch.sigmoid(rbm.hidden_bias + x.flatten(1) @ rbm.weight).double()
    assert official["saturation"] == pytest.approx(float(((h <= 0.05) | (h >= 0.95)).double().mean()), abs=1e-9)
    assert official["saturation"] != result["metrics"]["saturation"] and 0 <= official["probe_accuracy"] <= 1
