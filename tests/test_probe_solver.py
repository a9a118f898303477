"""Issue 31: the linear probe's own solver (aelab.metrics.logistic, multinomial logistic regression by L-BFGS in
torch) against scikit-learn's LogisticRegression, the independent reference: the same C chosen on the validation
split and the same test accuracy to within 0.002, and the same objective at its solution."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from aelab import data
from aelab.data.sources import validation_split
from aelab.metrics.codes import PROBE_C_GRID, validated_probe
from aelab.metrics.logistic import Standardizer, fit_logistic

pytestmark = pytest.mark.usefixtures("one_thread")


def _sklearn_validated_probe(x, y, x_test, y_test, keep, held):
    """The protocol written out with scikit-learn, run to a tight tolerance: C chosen on the validation split
    (smallest among equals), refitted on all train rows, scored once on test."""

    def fit(xa, ya, C):
        scale = StandardScaler().fit(xa)
        return scale, LogisticRegression(C=C, tol=1e-8, max_iter=20_000).fit(scale.transform(xa), ya)

    scores = []
    for C in PROBE_C_GRID:
        scale, model = fit(x[keep], y[keep], C)
        scores.append(model.score(scale.transform(x[held]), y[held]))
    best = max(scores)
    C = min(c for c, s in zip(PROBE_C_GRID, scores) if s == best)
    scale, model = fit(x, y, C)
    return C, scores, model.score(scale.transform(x_test), y_test)


@pytest.mark.parametrize("features", ["digits pixels", "mnist5k PCA-30"])
def test_the_chosen_c_and_the_test_accuracy_match_sklearn(features):
    name = "digits" if features.startswith("digits") else "mnist5k"
    x, y = data.load(name, "train")
    x_test, y_test = data.load(name, "test")
    x, x_test, y, y_test = x.flatten(1).numpy(), x_test.flatten(1).numpy(), y.numpy(), y_test.numpy()
    if "PCA" in features:
        x, y = x[:1500], y[:1500]
        pca = PCA(30, random_state=0).fit(x)
        x, x_test = pca.transform(x), pca.transform(x_test)
    keep, held, _ = validation_split(y, 0.2)
    ours = validated_probe(x, y, x_test, y_test, (keep, held))
    C, scores, accuracy = _sklearn_validated_probe(x, y, x_test, y_test, keep, held)
    assert ours["C"] == C, (ours["validation_accuracy"], scores)
    assert abs(ours["accuracy"] - accuracy) <= 0.002, (ours["accuracy"], accuracy)
    np.testing.assert_allclose(ours["validation_accuracy"], scores, atol=0.0051)  # one validation image at most
    assert ours["converged"]


def _objective_and_gradient(x, y, W, b, C):
    """f(W, b) = mean cross-entropy + ||W||^2 / (2 C n) and its gradient, in numpy float64 (independent of torch)."""
    n = len(x)
    logits = x @ W + b
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(W.shape[1])[y]
    f = -np.log(p[np.arange(n), y]).mean() + (W**2).sum() / (2 * C * n)
    g = (p - onehot) / n
    return f, x.T @ g + W / (C * n), g.sum(0)


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_the_solution_is_a_minimum_of_sklearns_objective(C):
    """At the returned (W, b) the gradient of sklearn's objective (computed here in numpy) is below the tolerance,
    the objective is no higher than at sklearn's own solution, and a warm start lands on the same minimum."""
    x, y = data.load("digits", "train")
    x, y = x.flatten(1).numpy().astype(np.float64)[:600], y.numpy()[:600]
    xs = Standardizer.fit(torch.from_numpy(x))(torch.from_numpy(x))
    fit = fit_logistic(xs, y, C)
    W, b = fit.weight.numpy(), fit.bias.numpy()
    f, gW, gb = _objective_and_gradient(xs.numpy(), y, W, b, C)
    assert max(np.abs(gW).max(), np.abs(gb).max()) <= 1e-4
    reference = LogisticRegression(C=C, tol=1e-10, max_iter=50_000).fit(StandardScaler().fit_transform(x), y)
    f_sklearn, _, _ = _objective_and_gradient(xs.numpy(), y, reference.coef_.T, reference.intercept_, C)
    assert f_sklearn - 1e-9 <= f <= f_sklearn + 1e-4  # within what a gradient of 1e-4 leaves of the minimum
    warm = fit_logistic(xs, y, C, start=fit_logistic(xs, y, C / 10))
    assert abs(_objective_and_gradient(xs.numpy(), y, warm.weight.numpy(), warm.bias.numpy(), C)[0] - f) <= 1e-4


def test_a_constant_feature_is_left_unscaled_and_labels_keep_their_values():
    rng = np.random.default_rng(0)
    x = np.c_[rng.normal(size=(200, 3)), np.full(200, 5.0)]
    y = np.where(x[:, 0] > 0, 7, 3)  # labels that are not 0..K-1
    result = validated_probe(x, y, x, y, None)
    assert result["C"] == 1.0 and result["validation_accuracy"] is None
    assert result["accuracy"] > 0.95
    scale = Standardizer.fit(torch.from_numpy(x))
    assert scale.scale[-1] == 1.0 and scale.mean[-1] == 5.0


def _probe_data(seed: int):
    rng = np.random.default_rng(seed)
    x_tr, x_te = rng.normal(size=(120, 6)), rng.normal(size=(40, 6))
    y_tr, y_te = (x_tr[:, 0] > 0).astype(int), (x_te[:, 0] > 0).astype(int)
    return x_tr, y_tr, x_te, y_te, (np.arange(100), np.arange(100, 120))


def test_the_raw_probe_is_fitted_once_per_data_then_read_from_disk(tmp_path, monkeypatch):
    """Issue 31: the pixel probe is cached by the data's hash; a new process (an empty memory cache) reads it back,
    other data (one value changed) is fitted again, and a garbage cache file is never trusted."""
    from aelab import evaluate as evaluation

    monkeypatch.setenv("AELAB_DATA", str(tmp_path / "data"))
    fits = []
    real = evaluation.validated_probe
    monkeypatch.setattr(evaluation, "validated_probe", lambda *a: fits.append(1) or real(*a))
    data = _probe_data(0)
    first = evaluation.raw_probe(None, *data)
    monkeypatch.setattr(evaluation, "_RAW_PROBE_CACHE", {})  # a new process
    assert evaluation.raw_probe(None, *data) == first and len(fits) == 1
    assert first == real(*data)
    (cached,) = (tmp_path / "data" / "probes").glob("*.json")
    other = list(data)
    other[0] = other[0].copy()
    other[0][0, 0] += 1e-9
    evaluation.raw_probe(None, *other)
    assert len(fits) == 2
    monkeypatch.setattr(evaluation, "_RAW_PROBE_CACHE", {})
    cached.write_text('{"accuracy": 7.0}')
    assert evaluation.raw_probe(None, *data) == first and len(fits) == 3


def test_processes_side_by_side_wait_for_one_fit_of_the_raw_probe(tmp_path, monkeypatch):
    """Seeds run with --jobs: the second to ask for the same probe waits for the first's fit (a file lock) and
    reads it, instead of fitting it again."""
    import threading
    import time

    from aelab import evaluate as evaluation

    monkeypatch.setenv("AELAB_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(evaluation, "_RAW_PROBE_CACHE", {})
    fits = []
    real = evaluation.validated_probe

    def slow(*a):
        fits.append(1)
        time.sleep(0.5)
        return real(*a)

    monkeypatch.setattr(evaluation, "validated_probe", slow)
    data, results = _probe_data(1), []
    workers = [threading.Thread(target=lambda: results.append(evaluation.raw_probe(None, *data))) for _ in range(2)]
    for w in workers:
        w.start()
        time.sleep(0.1)
    for w in workers:
        w.join()
    assert len(fits) == 1 and results[0] == results[1]


def test_closed_form_gradient_is_autograds_of_the_penalised_cross_entropy():
    """objective_and_gradient against torch autograd of F.cross_entropy + penalty ||W||^2, in float64, and its
    loss against a finite difference along a random direction."""
    from aelab.metrics.logistic import objective_and_gradient

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = torch.arange(40) % 3
    onehot = torch.nn.functional.one_hot(y, 3).double()
    w = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    penalty = 0.37
    reference = torch.nn.functional.cross_entropy(x @ w + b, y) + penalty * (w**2).sum()
    reference.backward()
    with torch.no_grad():
        loss, grad_w, grad_b = objective_and_gradient(x, onehot, w, b, penalty)
        assert float(loss) == pytest.approx(float(reference), abs=1e-12)
        assert torch.allclose(grad_w, w.grad, atol=1e-12) and torch.allclose(grad_b, b.grad, atol=1e-12)
        dw, db, h = (
            torch.randn(5, 3, generator=g, dtype=torch.float64),
            torch.randn(3, generator=g, dtype=torch.float64),
            1e-6,
        )
        up = objective_and_gradient(x, onehot, w + h * dw, b + h * db, penalty)[0]
        down = objective_and_gradient(x, onehot, w - h * dw, b - h * db, penalty)[0]
        assert float((up - down) / (2 * h)) == pytest.approx(float((grad_w * dw).sum() + (grad_b * db).sum()), rel=1e-7)


def test_small_fits_run_on_one_thread_and_leave_the_thread_count_alone(monkeypatch):
    import aelab.metrics.logistic as logistic

    seen = []
    real = logistic.objective_and_gradient
    monkeypatch.setattr(
        logistic, "objective_and_gradient", lambda *a: (seen.append(torch.get_num_threads()), real(*a))[1]
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(30, 4, dtype=torch.float64)
        logistic.fit_logistic(x, np.arange(30) % 2, 1.0)
        assert set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        monkeypatch.setattr(logistic, "SMALL_PROBLEM", x.numel())  # at the bound: still small
        logistic.fit_logistic(x, np.arange(30) % 2, 1.0)
        assert set(seen) == {1}
        seen.clear()
        monkeypatch.setattr(logistic, "SMALL_PROBLEM", 10)
        logistic.fit_logistic(x, np.arange(30) % 2, 1.0)
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)


def test_restandardized_keeps_the_logits_and_the_warm_refit_finds_the_cold_one():
    """A fit moved from one standardisation into another gives the same logits on the raw features; the probe's
    refit started from the chosen validation fit converges to the minimiser a cold start finds (convex)."""
    from aelab.metrics.codes import _fit_and_score, restandardized
    from aelab.metrics.logistic import LogisticFit

    g = torch.Generator().manual_seed(0)
    raw = torch.randn(200, 4, generator=g, dtype=torch.float64) * 3 + 1
    old, new = Standardizer.fit(raw[:150]), Standardizer.fit(raw)
    fit = LogisticFit(torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64), np.arange(3), 0, True)  # fmt: skip
    moved = restandardized(fit, old, new)
    assert torch.allclose(old(raw) @ fit.weight + fit.bias, new(raw) @ moved.weight + moved.bias, atol=1e-10)

    codes = raw.numpy()
    labels = (raw[:, 0] + raw[:, 1] > 2).long().numpy() + (raw[:, 2] > 1).long().numpy()
    _, _, first = _fit_and_score(codes[:150], labels[:150], [0.5], [])
    cold = _fit_and_score(codes, labels, [0.5], [], None)[2][0.5][0]
    warm = _fit_and_score(codes, labels, [0.5], [], first[0.5])[2][0.5][0]
    assert warm.converged and cold.converged and warm.iterations < cold.iterations
    assert torch.allclose(warm.weight, cold.weight, atol=1e-3) and torch.allclose(warm.bias, cold.bias, atol=1e-3)


def _small_problem(n=60, d=4, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long() * (k - 2)  # k classes, overlapping
    w = torch.randn(d, k, generator=g, dtype=torch.float64)
    b = torch.randn(k, generator=g, dtype=torch.float64)
    return x, y, w, b


@pytest.mark.parametrize("chunk", [8192, 7])
def test_the_hessian_is_autograds_in_the_documented_order(monkeypatch, chunk):
    """hessian() against torch.autograd.functional.hessian of F.cross_entropy + penalty ||W||^2 (float64), over
    theta = [W[:, 0], b[0], W[:, 1], b[1], ...]; summed in blocks of any size; accumulated in float32 it is close."""
    import aelab.metrics.logistic as logistic

    monkeypatch.setattr(logistic, "HESSIAN_CHUNK", chunk)
    x, y, w, b = _small_problem()
    d, k = w.shape
    penalty = 0.23

    def f(theta):
        per_class = theta.reshape(k, d + 1)
        return (
            torch.nn.functional.cross_entropy(x @ per_class[:, :d].T + per_class[:, d], y)
            + penalty * (per_class[:, :d] ** 2).sum()
        )

    theta = torch.cat([w.T, b[:, None]], 1).reshape(-1)
    reference = torch.autograd.functional.hessian(f, theta)
    ours = logistic.hessian(x, w, b, penalty)
    assert ours.dtype == torch.float64 and ours.shape == (k * (d + 1), k * (d + 1))
    torch.testing.assert_close(ours, reference, atol=1e-12, rtol=0)  # the ridge 2 penalty to the last float64 digit
    assert torch.allclose(logistic.hessian(x, w, b, penalty, dtype=torch.float32), reference, atol=1e-5)
    assert not torch.allclose(logistic.hessian(x, w, b, 0.0), reference, atol=1e-3)  # the penalty is in it


def test_newton_fits_small_problems_and_finds_lbfgs_minimum(monkeypatch):
    """Few parameters: Newton (a handful of steps, a Hessian each) reaches the minimiser L-BFGS reaches; many:
    L-BFGS alone, no Hessian formed."""
    import aelab.metrics.logistic as logistic

    x, y, _, _ = _small_problem(n=400, d=6, k=4, seed=1)
    hessians = []
    real = logistic.hessian
    monkeypatch.setattr(logistic, "hessian", lambda *a, **kw: (hessians.append(1), real(*a, **kw))[1])
    newton = logistic.fit_logistic(x, y.numpy(), 5.0, tol=1e-9)
    assert newton.converged and 2 <= newton.iterations <= 15 and len(hessians) == newton.iterations
    hessians.clear()
    monkeypatch.setattr(logistic, "NEWTON_MAX_PARAMETERS", 27)  # 4 x (6 + 1) = 28 parameters: too many
    lbfgs = logistic.fit_logistic(x, y.numpy(), 5.0, tol=1e-7)
    assert lbfgs.converged and hessians == [] and lbfgs.iterations > newton.iterations
    assert torch.allclose(newton.weight, lbfgs.weight, atol=1e-4) and torch.allclose(newton.bias, lbfgs.bias, atol=1e-4)
    assert abs(float(newton.bias.sum())) < 1e-9  # nothing moved along the intercepts' free direction, as from zero
    monkeypatch.setattr(logistic, "NEWTON_MAX_PARAMETERS", 28)
    assert logistic.fit_logistic(x, y.numpy(), 5.0, tol=1e-9).iterations == newton.iterations


def test_newton_hands_an_unfinished_fit_to_lbfgs(monkeypatch):
    """After NEWTON_MAX_STEPS steps without convergence L-BFGS goes on from Newton's point to the same minimum,
    and the steps of both are counted."""
    import aelab.metrics.logistic as logistic

    x, y, _, _ = _small_problem(n=400, d=6, k=4, seed=1)
    full = logistic.fit_logistic(x, y.numpy(), 5.0, tol=1e-9)
    monkeypatch.setattr(logistic, "NEWTON_MAX_STEPS", 1)
    handed = logistic.fit_logistic(x, y.numpy(), 5.0, tol=1e-7)
    assert handed.converged and handed.iterations > 1
    assert torch.allclose(handed.weight, full.weight, atol=1e-4)


def test_newton_converges_where_lbfgs_crawls():
    """Correlated features, weakly penalised (the large-C end of the probe's path on a deep AE's codes): Newton
    reaches the gradient tolerance in a few steps where L-BFGS takes hundreds; its objective is no higher."""
    from aelab.metrics.logistic import _minimise, objective_and_gradient

    g = torch.Generator().manual_seed(2)
    z = torch.randn(3000, 10, generator=g, dtype=torch.float64)
    mixing = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))[0]
    x = z @ (mixing * torch.logspace(0, -3, 10, dtype=torch.float64)).T
    y = (z @ torch.randn(10, 5, generator=g, dtype=torch.float64)).argmax(1)
    y = torch.where(torch.rand(3000, generator=g) < 0.05, (y + 1) % 5, y)  # a little label noise
    x = Standardizer.fit(x)(x)
    fit = fit_logistic(x, y.numpy(), 100.0)
    assert fit.converged and fit.iterations <= 10
    onehot = torch.nn.functional.one_hot(y, 5).double()
    penalty = 1 / (2 * 100.0 * 3000)
    zeros = torch.zeros(10, 5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    w, b, iterations, _ = _minimise(x, onehot, *zeros, penalty, 1e-4, 1000)
    assert iterations > 20 * fit.iterations
    ours = objective_and_gradient(x, onehot, fit.weight, fit.bias, penalty)[0]
    assert ours <= objective_and_gradient(x, onehot, w, b, penalty)[0] + 1e-10


def _correlated_problem(n=3000, d=10, k=5, seed=2):
    """Correlated standardised features, a little label noise: ill-conditioned when weakly penalised."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    mixing = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    x = z @ (mixing * torch.logspace(0, -3, d, dtype=torch.float64)).T
    y = (z @ torch.randn(d, k, generator=g, dtype=torch.float64)).argmax(1)
    y = torch.where(torch.rand(n, generator=g) < 0.05, (y + 1) % k, y)
    return Standardizer.fit(x)(x), y


def test_newton_sums_the_hessian_in_float32_and_a_converged_fit_needs_no_lbfgs(monkeypatch):
    import aelab.metrics.logistic as logistic

    dtypes = []
    real = logistic.hessian
    monkeypatch.setattr(logistic, "hessian", lambda *a, **kw: (dtypes.append(kw.get("dtype")), real(*a, **kw))[1])
    monkeypatch.setattr(logistic, "_minimise", lambda *a: pytest.fail("L-BFGS after a converged Newton fit"))
    x, y = _correlated_problem(n=500)
    fit = logistic.fit_logistic(x, y.numpy(), 100.0)
    assert fit.converged and dtypes and set(dtypes) == {torch.float32}


@pytest.mark.parametrize("hessian", ["not positive definite", "no decrease along the step"])
def test_newton_hands_over_to_lbfgs_when_its_step_fails(monkeypatch, hessian):
    """A Hessian whose Cholesky fails, or a step that no backtracking down to t = 1e-10 makes decrease: L-BFGS goes
    on from where Newton stopped and reaches the same minimum."""
    import aelab.metrics.logistic as logistic

    x, y = _correlated_problem(n=500)
    reference = logistic.fit_logistic(x, y.numpy(), 1.0, tol=1e-8)
    scale = -1.0 if hessian == "not positive definite" else 1e-30  # 1e-30: steps of 1e30 times the gradient
    monkeypatch.setattr(
        logistic,
        "hessian",
        lambda x, w, b, penalty, dtype: scale * torch.eye(w.numel() + b.numel(), dtype=torch.float64),
    )
    fit = logistic.fit_logistic(x, y.numpy(), 1.0, tol=1e-6)
    assert fit.converged and fit.iterations > 5
    assert torch.allclose(fit.weight, reference.weight, atol=1e-3)


def test_newton_backtracks_a_step_that_overshoots_and_every_step_decreases_the_loss(monkeypatch):
    """From a poor start the full Newton step raises the loss; the step is halved until the objective falls
    (Armijo), so the losses of the points Newton moves through fall at every step."""
    import aelab.metrics.logistic as logistic

    x, y = _correlated_problem(n=500)
    start = logistic.LogisticFit(
        20 * torch.randn(10, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
        torch.zeros(5, dtype=torch.float64),
        np.arange(5),
        0,
        False,
    )
    losses = []
    real = logistic.objective_and_gradient
    monkeypatch.setattr(logistic, "objective_and_gradient", lambda *a: (losses.append(float(real(*a)[0])), real(*a))[1])
    fit = logistic.fit_logistic(x, y.numpy(), 100.0, start=start)
    assert fit.converged and fit.iterations <= 30
    # the first evaluation of each step is at the current point; a rejected trial is above it
    rejected = sum(1 for before, trial in zip(losses, losses[1:]) if trial > before)
    assert rejected >= 1
    onehot = torch.nn.functional.one_hot(y, 5).double()
    penalty = 1 / (2 * 100.0 * 500)
    assert real(x, onehot, fit.weight, fit.bias, penalty)[0] < real(x, onehot, start.weight, start.bias, penalty)[0]


def test_lbfgs_path_counts_its_own_iterations_stops_at_tol_and_searches_its_lines(monkeypatch):
    """Many parameters: fit_logistic is L-BFGS alone, its iteration count L-BFGS's own; a looser tol stops sooner;
    on an ill-conditioned problem the strong-Wolfe line search converges within the iteration budget."""
    import aelab.metrics.logistic as logistic
    from aelab.metrics.logistic import _minimise

    monkeypatch.setattr(logistic, "NEWTON_MAX_PARAMETERS", 0)
    x, y = _correlated_problem()
    onehot = torch.nn.functional.one_hot(y, 5).double()
    penalty = 1 / (2 * 100.0 * len(x))
    zeros = lambda: (torch.zeros(10, 5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64))  # noqa: E731
    _, _, own_iterations, converged = _minimise(x, onehot, *zeros(), penalty, 1e-4, 1000)
    fit = logistic.fit_logistic(x, y.numpy(), 100.0)
    assert converged and fit.converged and fit.iterations == own_iterations
    loose = logistic.fit_logistic(x, y.numpy(), 100.0, tol=1e-2)
    grad = logistic.objective_and_gradient(x, onehot, loose.weight, loose.bias, penalty)
    assert loose.converged and loose.iterations < fit.iterations / 2
    assert 1e-4 < max(float(grad[1].abs().max()), float(grad[2].abs().max())) <= 1e-2


def test_a_feature_constant_to_float64_precision_is_left_unscaled():
    """A feature whose spread is below 10 float64 epsilons of its magnitude is constant (sklearn's rule): a scale
    of 1, not a division by rounding noise."""
    x = torch.randn(50, 4, dtype=torch.float64)
    x[:, 1] = 1e6 + torch.arange(50, dtype=torch.float64) * 1e-10  # a spread of ~1.5e-9 at 1e6: rounding noise
    x[:, 2] = 1e6 + torch.tensor([2.3e-9, -2.3e-9] * 25, dtype=torch.float64)  # 10.5 epsilons of 1e6: a feature
    x[:, 3] = 1.5 + torch.tensor([4e-15, -4e-15] * 25, dtype=torch.float64)  # 12 epsilons of max(1, 1.5): a feature
    scale = Standardizer.fit(x)
    assert scale.scale[1] == 1.0 and scale.scale[0] != 1.0
    assert 2e-9 < scale.scale[2] < 3e-9 and 3e-15 < scale.scale[3] < 5e-15
