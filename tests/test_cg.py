"""aelab.optim.ConjugateGradient against problems whose minimum is known, scipy's CG, and the Wolfe-Powell
conditions its line search promises; then through the trainer (--optimizer cg)."""

import numpy as np
import pytest
import scipy.optimize
import torch

from aelab.optim import ConjugateGradient

pytestmark = pytest.mark.usefixtures("one_thread")


def minimise(f, x0: torch.Tensor, steps: int, **options) -> tuple[torch.Tensor, ConjugateGradient]:
    x = x0.clone().double().requires_grad_(True)
    opt = ConjugateGradient([x], **options)

    def closure():
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return x.detach(), opt


def quadratic(n: int = 30, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    a = q @ torch.diag(torch.logspace(0, 2, n, dtype=torch.float64)) @ q.T  # condition number 100
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return a, b, lambda x: 0.5 * x @ a @ x - b @ x


def rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def test_convex_quadratic_reaches_its_minimum_to_1e_6():
    """Conjugate directions: 2n line searches suffice on a 30-D quadratic of condition number 100 (steepest
    descent, or a wrong beta, is still 1e-3 away there)."""
    a, b, f = quadratic()
    x, _ = minimise(f, torch.zeros(30), steps=1, line_searches=60)
    assert (x - torch.linalg.solve(a, b)).abs().max() < 1e-6


def test_rosenbrock_from_the_classic_start():
    x, opt = minimise(rosenbrock, torch.tensor([-1.2, 1.0]), steps=1, line_searches=200)
    assert torch.allclose(x, torch.ones(2, dtype=torch.float64), atol=1e-5)
    assert opt.evaluations < 300


def test_agrees_with_scipys_cg_on_l2_logistic_regression():
    """A strictly convex problem with one minimiser: both optimisers must find it."""
    rng = np.random.default_rng(0)
    X, w_true = rng.normal(size=(200, 8)), rng.normal(size=8)
    y = (X @ w_true + rng.normal(size=200) > 0).astype(float)

    def f_np(w):
        z = X @ w
        return float(np.sum(np.logaddexp(0, z) - y * z) + 0.5 * w @ w)

    def g_np(w):
        return X.T @ (1 / (1 + np.exp(-X @ w)) - y) + w

    ref = scipy.optimize.minimize(f_np, np.zeros(8), jac=g_np, method="CG", options={"gtol": 1e-10})
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    ours, _ = minimise(
        lambda w: (torch.nn.functional.softplus(Xt @ w) - yt * (Xt @ w)).sum() + 0.5 * w @ w,
        torch.zeros(8),
        steps=5,
        line_searches=40,
    )
    np.testing.assert_allclose(ours.numpy(), ref.x, atol=1e-6)
    assert f_np(ours.numpy()) <= ref.fun + 1e-9


def test_one_line_search_meets_the_wolfe_powell_conditions():
    """From x0 along s = -g0, the accepted step a satisfies f(x0 + a s) <= f(x0) + rho a g0.s and
    |g(x0 + a s).s| <= sig |g0.s| (checked here with autograd, independently of the optimizer's numbers)."""
    for seed in range(5):
        _, _, f = quadratic(10, seed)
        x0 = torch.randn(10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
        x0r = x0.clone().requires_grad_(True)
        g0 = torch.autograd.grad(f(x0r), x0r)[0]
        x1, _ = minimise(f, x0, steps=1, line_searches=1, sig=0.1, rho=0.05)
        s = -g0
        a = float((x1 - x0) @ s / (s @ s))
        assert torch.allclose(x1, x0 + a * s, atol=1e-10)  # it moved along steepest descent
        d0 = float(g0 @ s)
        x1r = x1.clone().requires_grad_(True)
        g1 = torch.autograd.grad(f(x1r), x1r)[0]
        assert float(f(x1)) <= float(f(x0)) + 0.05 * a * d0
        assert abs(float(g1 @ s)) <= 0.1 * abs(d0)


def test_non_finite_values_make_it_step_back_not_fail():
    """f is NaN past |x| = 2: extrapolating there must bisect back, and still reach the minimum at 1.5."""

    def f(x):
        value = ((x - 1.5) ** 2).sum()
        return value if float(x.detach().abs().max()) < 2 else value * float("nan")

    x, _ = minimise(f, torch.tensor([0.0, -0.5]), steps=5, line_searches=20)
    assert torch.allclose(x, torch.full((2,), 1.5, dtype=torch.float64), atol=1e-6)


def test_bad_constants_are_refused():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="rho < sig"):
        ConjugateGradient([w], sig=0.05, rho=0.1)
    with pytest.raises(ValueError, match="closure"):
        ConjugateGradient([w]).step(None)


def test_trainer_fine_tunes_with_cg_and_resumes_exactly(tmp_path):
    from aelab.runs import read_history, read_safetensors
    from aelab.train import TrainConfig, train

    common = dict(
        model="deep-ae",
        model_options={"layers": [64, 16, 4]},
        dataset="digits",
        train_limit=300,
        batch_size=100,
        optimizer="cg",
        val_fraction=0.0,
        tensorboard=False,
    )
    two = train(TrainConfig(**common, epochs=2, out=str(tmp_path / "two")), progress=False)
    losses = [h["train_loss"] for h in read_history(two) if "train_loss" in h]
    assert losses[1] < losses[0]
    one = train(TrainConfig(**common, epochs=1, out=str(tmp_path / "one")), progress=False)
    train(TrainConfig(**common, epochs=2, out=str(one)), resume=True, progress=False)
    a, _ = read_safetensors(two / "model.safetensors")
    b, _ = read_safetensors(one / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_weights_start_from_a_pretrained_stack_and_are_checked(tmp_path):
    """train.pretrain writes the RBM stack once; a run with init_weights starts from exactly those weights
    (no pretraining of its own), records their SHA-256, and a missing or misshapen file is refused."""
    import hashlib
    import json

    from aelab import runs
    from aelab.errors import CheckpointError, ConfigError
    from aelab.train import TrainConfig, pretrain, train

    common = dict(model="deep-ae", dataset="digits", train_limit=200, val_fraction=0.1, tensorboard=False)
    options = {"layers": [64, 16, 4], "init": "rbm", "pretrain_epochs": 1}
    stack = pretrain(TrainConfig(**common, model_options=options, out=str(tmp_path / "stack")), progress=False)
    weights = stack / "model.safetensors"
    assert pretrain(TrainConfig(**common, model_options=options, out=str(stack)), progress=False) == stack  # kept
    cfg = TrainConfig(**common, model_options=options, epochs=1, init_weights=str(weights), out=str(tmp_path / "ft"))
    # one epoch of zero learning rate would still move Adam; compare the checkpointed epoch-0 state instead
    run = train(cfg, progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["init_weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert runs.read_history(run)[0]["phase"] == "init_weights"
    with pytest.raises(ConfigError, match="no file"):
        train(
            TrainConfig(
                **{**cfg.__dict__, "init_weights": str(tmp_path / "none.safetensors"), "out": str(tmp_path / "x")}
            )
        )
    assert not (tmp_path / "x").exists()
    other = pretrain(
        TrainConfig(**common, model_options={**options, "layers": [64, 8, 4]}, out=str(tmp_path / "small")),
        progress=False,
    )
    with pytest.raises(CheckpointError, match="do not match"):
        train(
            TrainConfig(
                **{**cfg.__dict__, "init_weights": str(other / "model.safetensors"), "out": str(tmp_path / "y")}
            )
        )


def test_init_weights_are_the_first_epochs_starting_point(tmp_path):
    """With init_weights the model before its first step equals the file's tensors: a run of 1 epoch equals a
    hand-made loop of the same steps from those weights."""
    from aelab import models
    from aelab.runs import read_safetensors
    from aelab.train import TrainConfig, pretrain, train

    common = dict(model="deep-ae", dataset="digits", train_limit=200, val_fraction=0.0, tensorboard=False)
    options = {"layers": [64, 16, 4], "init": "rbm", "pretrain_epochs": 1}
    stack = pretrain(TrainConfig(**common, model_options=options, out=str(tmp_path / "stack")), progress=False)
    start, _ = read_safetensors(stack / "model.safetensors")
    run = train(
        TrainConfig(**common, model_options=options, epochs=1, batch_size=200, optimizer="cg",
                    init_weights=str(stack / "model.safetensors"), out=str(tmp_path / "ft")),
        progress=False,
    )  # fmt: skip
    model = models.create("deep-ae", input_shape=[1, 8, 8], **options)
    model.load_state_dict(start)
    from aelab.data import load

    x = load("digits", "train")[0][:200]
    opt = ConjugateGradient(model.parameters(), line_searches=3)
    torch.manual_seed(0)

    def closure():
        opt.zero_grad()
        loss = model.loss_terms(x)["loss"]
        loss.backward()
        return loss

    opt.step(closure)
    got, _ = read_safetensors(run / "model.safetensors")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=1e-3, atol=1e-4)  # batch order: rounding only


def test_a_shared_pretraining_gives_the_same_run_as_pretraining_inside_it(tmp_path):
    """hinton2006 pretrains the RBM stack once (train.pretrain) and starts each fine-tuner from it: the result is
    bit-identical to a run that pretrains inside itself (the earlier protocol), so its numbers carry over."""
    from aelab.runs import read_safetensors
    from aelab.train import TrainConfig, pretrain, train

    common = dict(model="deep-ae", dataset="digits", train_limit=200, val_fraction=0.1, seed=3, tensorboard=False)
    options = {"layers": [64, 16, 4], "init": "rbm", "pretrain_epochs": 1}
    inside = train(TrainConfig(**common, model_options=options, epochs=2, out=str(tmp_path / "inside")), progress=False)
    stack = pretrain(TrainConfig(**common, model_options=options, out=str(tmp_path / "stack")), progress=False)
    shared = train(
        TrainConfig(**common, model_options=options, epochs=2, init_weights=str(stack / "model.safetensors"),
                    out=str(tmp_path / "shared")),
        progress=False,
    )  # fmt: skip
    a, _ = read_safetensors(inside / "model.safetensors")
    b, _ = read_safetensors(shared / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
