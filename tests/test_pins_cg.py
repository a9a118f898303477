"""aelab.optim.ConjugateGradient's line search, step by step, against a transcription of C. E. Rasmussen's
minimize.m written here in numpy from the algorithm (the points at which the objective is evaluated, in order);
the evaluation budget counted with a closure counter; the loss that `step` returns, in the optimizer and in the
trainer that records it."""

import math
import re

import numpy as np
import pytest
import torch

from aelab.optim import ConjugateGradient

pytestmark = pytest.mark.usefixtures("one_thread")

REALMIN = float(np.finfo(np.float64).tiny)  # MATLAB's realmin


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """a . b in float64 by torch (one BLAS dot for both sides: numpy's may round the last bit otherwise)."""
    return float(torch.dot(torch.from_numpy(a), torch.from_numpy(b)))


def minimize_m(f, x, length, red=1.0, INT=0.1, EXT=3.0, MAX=20, RATIO=10.0, SIG=0.1, RHO=None):
    """minimize.m (Rasmussen 2006; length > 0 counts line searches), transcribed: f(x) -> (value, gradient).
    Returns (x, every point evaluated, in order). Deviations, all aelab's documented choices where minimize.m has
    none: a cubic interpolation whose square root is of a negative number bisects (MATLAB would carry a complex x3
    on); a point with a non-finite gradient is never the best point; a non-finite value inside the bracket counts
    as too far (f3 = d3 = inf) instead of ending in NaN arithmetic."""
    RHO = SIG / 2 if RHO is None else RHO
    points = []

    def feval(p):
        points.append(p.copy())
        value, grad = f(p)
        return float(value), np.asarray(grad, dtype=np.float64)

    i, ls_failed = 0, False
    f0, df0 = feval(x)
    s = -df0
    d0 = -dot(s, s)
    x3 = red / (1 - d0)
    while i < length:
        i += 1
        X0, F0, dF0 = x.copy(), f0, df0
        M = MAX
        while True:  # extrapolate
            x2, f2, d2, f3, df3 = 0.0, f0, d0, f0, df0
            success = False
            while not success and M > 0:
                M -= 1
                f3, df3 = feval(x + x3 * s)
                if math.isfinite(f3) and np.isfinite(df3).all():
                    success = True
                else:
                    x3 = (x2 + x3) / 2
            if success and f3 < F0:
                X0, F0, dF0 = x + x3 * s, f3, df3
            d3 = dot(df3, s) if success else math.inf
            if d3 > SIG * d0 or f3 > f0 + x3 * RHO * d0 or M == 0:
                break
            x1, f1, d1 = x2, f2, d2
            x2, f2, d2 = x3, f3, d3
            A = 6 * (f1 - f2) + 3 * (d2 + d1) * (x2 - x1)
            B = 3 * (f2 - f1) - (2 * d1 + d2) * (x2 - x1)
            disc = B * B - A * d1 * (x2 - x1)
            x3 = x1 - d1 * (x2 - x1) ** 2 / (B + math.sqrt(disc)) if disc >= 0 and B + math.sqrt(disc) != 0 else None
            if x3 is None or not math.isfinite(x3) or x3 < 0:
                x3 = x2 * EXT
            elif x3 > x2 * EXT:
                x3 = x2 * EXT
            elif x3 < x2 + INT * (x2 - x1):
                x3 = x2 + INT * (x2 - x1)
        x4, f4, d4 = x3, f3, d3
        while (abs(d3) > -SIG * d0 or f3 > f0 + x3 * RHO * d0) and M > 0:  # interpolate
            if d3 > 0 or f3 > f0 + x3 * RHO * d0:
                x4, f4, d4 = x3, f3, d3
            else:
                x2, f2, d2 = x3, f3, d3
            x3 = math.nan
            if f4 > f0:
                x3 = x2 - (0.5 * d2 * (x4 - x2) ** 2) / (f4 - f2 - d2 * (x4 - x2))
            else:
                A = 6 * (f2 - f4) / (x4 - x2) + 3 * (d4 + d2)
                B = 3 * (f4 - f2) - (2 * d2 + d4) * (x4 - x2)
                disc = B * B - A * d2 * (x4 - x2) ** 2
                if disc >= 0 and A != 0:
                    x3 = x2 + (math.sqrt(disc) - B) / A
            if not math.isfinite(x3):
                x3 = (x2 + x4) / 2
            x3 = max(min(x3, x4 - INT * (x4 - x2)), x2 + INT * (x4 - x2))
            f3, df3 = feval(x + x3 * s)
            M -= 1
            if not (math.isfinite(f3) and np.isfinite(df3).all()):
                f3, d3 = math.inf, math.inf
                continue
            if f3 < F0:
                X0, F0, dF0 = x + x3 * s, f3, df3
            d3 = dot(df3, s)
        if abs(d3) < -SIG * d0 and f3 < f0 + x3 * RHO * d0:  # success
            x, f0 = x + x3 * s, f3
            s = (dot(df3, df3) - dot(df0, df3)) / dot(df0, df0) * s - df3
            df0 = df3
            d3, d0 = d0, dot(df0, s)
            if d0 > 0:
                s = -df0
                d0 = -dot(s, s)
            x3 = x3 * min(RATIO, d3 / (d0 - REALMIN))
            ls_failed = False
        else:  # restore the best point so far and try steepest descent; two failures in a row: give up
            x, f0, df0 = X0, F0, dF0
            if ls_failed or i > length:
                break
            s = -df0
            d0 = -dot(s, s)
            x3 = 1 / (1 - d0)
            ls_failed = True
    return x, points


# the objectives, as torch functions: the transcription and the optimizer evaluate the same function (the values
# and gradients are then equal to the last bit at equal points, and a branch cannot flip on rounding alone)
def _quartic_bowl(n=10, seed=0):
    """0.5 x'Ax - b'x + 0.1 sum x^4 with A of condition number 100: not a quadratic along any line (the cubic fit
    of an exact quadratic is 0/0, whose rounding would decide the interpolated step)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    a = q @ torch.diag(torch.logspace(0, 2, n, dtype=torch.float64)) @ q.T
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return lambda x: 0.5 * x @ a @ x - b @ x + 0.1 * (x**4).sum()


def _rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


KINK = 0.3  # |x - KINK| in 1-D: the slope is +-1 everywhere, so no step ever meets |g.s| <= sig |g0.s|


def _kink(x):
    return (x - KINK).abs().sum()


def _wall(x):
    """A 2-D bowl with a steep quartic wall: trial steps overshoot far above the start (quadratic interpolation),
    later ones land inside (cubic)."""
    return x[0] ** 2 + 10 * x[1] ** 2 + x[0] ** 4


def _bump(f3: float):
    """-x + h exp(-((x - 0.45) / 0.1)^2) from x = 0: the first trial step, 1 / (1 + |g|^2) = 0.5, lands on the far
    side of the bump, still falling steeply, at f3. f3 = -0.0225 lies above the sufficient-decrease line of
    rho = 0.05 (f0 + 0.5 rho d0 = -0.025), -0.0275 below it; rho <= 0.045 or >= 0.055 would decide otherwise."""
    h = (f3 + 0.5) / math.exp(-0.25)
    return lambda x: (-x + h * torch.exp(-(((x - 0.45) / 0.1) ** 2))).sum()


def _rise(x):
    """-x + 7x^2 - 8x^3: flat (f' = 0) at the first trial step x = 0.5, but at f = 0.25, above the start. With a
    budget of one evaluation that point meets the slope condition and fails sufficient decrease."""
    return (-x + 7 * x**2 - 8 * x**3).sum()


def _steep_kink(x):
    """2 |x - 0.3|: as the kink, with |g| = 2 (a step along s = -g is not a step of x3)."""
    return 2 * (x - KINK).abs().sum()


def _bump_steep(f3: float):
    """-2x + h exp(-((x - 0.35) / 0.1)^2): |g| = 2, the first trial point x = 0.4 on the far side of the bump, at
    f3 just above the sufficient-decrease line (-0.04), still falling: the interpolation must move the bracket's
    right end there (rho d0 = -0.2, not rho / d0)."""
    h = (f3 + 0.8) / math.exp(-0.25)
    return lambda x: (-2 * x + h * torch.exp(-(((x - 0.35) / 0.1) ** 2))).sum()


def _concave(x):
    """-x^2 from 0.5, all in dyadic arithmetic: every cubic extrapolation has b + sqrt(disc) = 0 exactly (no
    minimum beyond x2: extrapolate EXT times)."""
    return -(x**2).sum()


def _parabola(x):
    """-x + 4x^2 from 0: the first trial step 0.5 lands above the start; the quadratic through it has denominator
    exactly 1 and its minimum, 1/8, is the answer."""
    return (-x + 4 * x**2).sum()


def _flat_cubic(x):
    """-x + 1.5x^2 from 0: the cubic fit of an exact quadratic has a = 0 exactly (no cubic minimum: bisect)."""
    return (-x + 1.5 * x**2).sum()


def _inflection(x):
    """-3x + 3x^2 - x^3 from 0 (red 5: first trial step 0.5): f' = -3(1 - x)^2, so the cubic extrapolation's
    discriminant is exactly 0 and its answer, 1/3, is used (then raised to x2 + INT (x2 - x1))."""
    return (-3 * x + 3 * x**2 - x**3).sum()


def _quartic_tie(x):
    """-x + x^4 from 0 (red 2: first trial step 1): f(1) = f(0) exactly, which is not above the start: cubic, not
    quadratic, interpolation."""
    return (-x + x**4).sum()


def _rise_slightly(x):
    """-x + 4.15x^2 - 4.2x^3: flat at x = 0.5 with f = 0.0125, above the start, but below f0 - x3 rho d0."""
    return (-x + 4.15 * x**2 - 4.2 * x**3).sum()


def _holed(lo: float, hi: float, nan_value: bool):
    """-x + x^4/32 (minimum at 2) with, for x in (lo, hi), a NaN value (nan_value) or a finite value and a NaN
    gradient: extrapolations into the hole bisect back, interpolations into it shrink the bracket."""

    class Holed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            inside = lo < float(x[0]) < hi
            return (-x + x**4 / 32).sum() * (float("nan") if inside and nan_value else 1.0)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            inside = lo < float(x[0]) < hi
            return (-1 + x**3 / 8) * grad * (float("nan") if inside else 1.0)

    return Holed.apply


def _value_and_gradient(f):
    def evaluate(x: np.ndarray):
        t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        value = f(t)
        (grad,) = torch.autograd.grad(value, t)
        return float(value.detach()), grad.numpy()

    return evaluate


def _optimizer_points(f_torch, x0, line_searches, **options):
    """Every point at which ConjugateGradient evaluates f during one step, in order; (points, the step's return,
    the final point)."""
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = ConjugateGradient([x], line_searches=line_searches, **options)
    points = []

    def closure():
        opt.zero_grad()
        points.append(x.detach().numpy().copy())
        loss = f_torch(x)
        loss.backward()
        return loss

    returned = opt.step(closure)
    return points, returned, x.detach().numpy().copy()


CASES = {  # objective, start, line searches, options (the same for minimize.m)
    "quartic-bowl": (_quartic_bowl(), np.linspace(-1, 1, 10), 12, {}),
    "rosenbrock": (_rosenbrock, np.array([-1.2, 1.0]), 30, {}),
    "rosenbrock-low": (_rosenbrock, np.array([1.0, -2.0]), 3, {}),  # a cubic extrapolation lands next to x2
    "kink": (_kink, np.array([1.7]), 3, {}),
    "wall": (_wall, np.array([3.0, 1.0]), 6, {}),
    "bump-above": (_bump(-0.0225), np.array([0.0]), 2, {}),
    "bump-below": (_bump(-0.0275), np.array([0.0]), 2, {}),
    "rise-one-evaluation": (_rise, np.array([0.0]), 2, {"max_evals": 1}),
    "rise-slightly": (_rise_slightly, np.array([0.0]), 2, {}),
    "rise-slightly-one-evaluation": (_rise_slightly, np.array([0.0]), 2, {"max_evals": 1}),
    "steep-kink": (_steep_kink, np.array([1.7]), 3, {}),
    "bump-steep": (_bump_steep(-0.036), np.array([0.0]), 2, {}),
    "rosenbrock-reset": (_rosenbrock, np.array([-1.0, -0.5]), 8, {}),  # a Polak-Ribiere direction uphill: reset
    "concave": (_concave, np.array([0.5]), 1, {}),
    "parabola": (_parabola, np.array([0.0]), 1, {}),
    "flat-cubic": (_flat_cubic, np.array([0.0]), 1, {}),
    "inflection": (_inflection, np.array([0.0]), 1, {"red": 5.0}),
    "quartic-tie": (_quartic_tie, np.array([0.0]), 1, {"red": 2.0}),
    "unit-bracket": (_wall, np.array([3.0, 1.0]), 2, {"red": 1.0 + 114.0**2 + 20.0**2}),  # first step exactly 1
    "nan-wall": (_holed(1.9, math.inf, True), np.array([0.0]), 2, {"red": 8.0}),  # first trial x = 4
    "nan-wall-two-evaluations": (_holed(1.9, math.inf, True), np.array([0.0]), 2, {"red": 8.0, "max_evals": 2}),
    "nan-gradient-wall": (_holed(1.9, math.inf, False), np.array([0.0]), 2, {"red": 8.0}),
    "nan-hole": (_holed(1.7, 1.95, True), np.array([0.0]), 2, {}),
    "nan-gradient-hole": (_holed(1.7, 1.95, False), np.array([0.0]), 2, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_evaluation_follows_minimize_m(case):
    """The sequence of points evaluated in one step equals minimize.m's with its defaults (INT 0.1, EXT 3, MAX 20,
    RATIO 10, SIG 0.1, RHO 0.05): the extrapolation's stop test and its step limits, the choice between quadratic
    and cubic interpolation and the guards on the interpolated step, the Polak-Ribiere direction, the restart from
    the best point after a failed search and the budget of 20 evaluations per search all show in it."""
    f, x0, searches, options = CASES[case]
    x_ref, ref = minimize_m(
        _value_and_gradient(f),
        x0.astype(np.float64),
        searches,
        MAX=options.get("max_evals", 20),
        red=options.get("red", 1.0),
    )
    got, _, x_end = _optimizer_points(f, x0, searches, **options)
    assert len(got) == len(ref), f"{len(got)} evaluations, minimize.m makes {len(ref)}"
    for k, (a, b) in enumerate(zip(got, ref)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"evaluation {k}")
    np.testing.assert_allclose(x_end, x_ref, rtol=1e-9, atol=1e-12)


def test_a_search_that_never_meets_the_conditions_spends_20_evaluations_then_restarts_from_its_best_point():
    """On |x - 0.3| no step meets the slope condition: a search spends its whole budget of 20 evaluations, the
    step restarts once from the best point seen (steepest descent, first trial step 1 / (1 + |g|^2)), fails
    again and stops: 1 + 20 + 20 evaluations, and the step ends at the best point of all."""
    points, _, x_end = _optimizer_points(_kink, np.array([1.7]), line_searches=3)
    assert len(points) == 41
    first_search = [abs(p[0] - KINK) for p in points[1:21]]
    restart = points[21][0]
    best_first = points[1 + int(np.argmin(first_search))][0]
    # the second search starts from the best point of the first, 1/(1+1) along -sign(x - 0.3)
    assert restart == pytest.approx(best_first - 0.5 * np.sign(best_first - KINK), abs=1e-12)
    assert abs(x_end[0] - KINK) == pytest.approx(min(abs(p[0] - KINK) for p in points), abs=1e-15)


def test_the_defaults_are_those_of_minimize_m():
    w = torch.zeros(1, requires_grad=True)
    d = ConjugateGradient([w]).defaults
    assert (d["int_"], d["ext"], d["max_evals"], d["ratio"], d["sig"], d["rho"], d["red"]) == (
        0.1, 3.0, 20, 10.0, 0.1, 0.05, 1.0)  # fmt: skip
    assert d["line_searches"] == 3  # Hinton & Salakhutdinov's three line searches per mini-batch


def test_step_returns_the_objective_at_the_start_of_the_step():
    """Like every torch optimizer, step(closure) returns the loss before it moved (the value at the first
    evaluation): a loss after the line searches would make a CG run report a lower training loss than others."""
    for f, x0, searches, options in CASES.values():
        _, returned, x_end = _optimizer_points(f, x0, searches, **options)
        start = float(f(torch.tensor(x0, dtype=torch.float64)))
        assert float(returned) == pytest.approx(start, rel=1e-6)  # returned as a float32 tensor
        assert float(f(torch.tensor(x_end))) <= start


def test_the_trainer_records_the_loss_before_each_cg_step(tmp_path):
    """With one batch per epoch, epoch 2's train_loss of a CG run is the loss of the weights that epoch 1 left
    (read from a run stopped after epoch 1), not that of the weights after epoch 2."""
    import shutil

    from aelab import load_model
    from aelab.data import load
    from aelab.runs import read_history
    from aelab.train import TrainConfig, train

    common = dict(model="deep-ae", model_options={"layers": [64, 16, 4]}, dataset="digits", train_limit=100,
                  batch_size=100, optimizer="cg", val_fraction=0.0, tensorboard=False)  # fmt: skip
    run = train(TrainConfig(**common, epochs=1, out=str(tmp_path / "run")), progress=False)
    after_one = tmp_path / "after-one"
    shutil.copytree(run, after_one)
    train(TrainConfig(**common, epochs=2, out=str(run)), resume=True, progress=False)
    x = load("digits", "train")[0][:100]
    with torch.no_grad():
        loss_after_one = float(load_model(after_one).loss_terms(x)["loss"])
        loss_after_two = float(load_model(run).loss_terms(x)["loss"])
    recorded = [h["train_loss"] for h in read_history(run) if "train_loss" in h]
    assert recorded[1] == pytest.approx(loss_after_one, rel=1e-5)
    assert loss_after_two < loss_after_one * (1 - 1e-3)  # the two candidates are far apart


@pytest.mark.parametrize(
    "options, message",
    [({"line_searches": 0}, "line_searches must be a positive integer, got 0"),
     ({"line_searches": 1.5}, "line_searches must be a positive integer, got 1.5"),
     ({"rho": 0.0}, "the Wolfe-Powell constants need 0 < rho < sig < 1, got rho=0.0, sig=0.1"),
     ({"rho": 0.1}, "the Wolfe-Powell constants need 0 < rho < sig < 1, got rho=0.1, sig=0.1"),
     ({"sig": 1.0}, "the Wolfe-Powell constants need 0 < rho < sig < 1, got rho=0.05, sig=1.0"),
     ({"sig": 1.5}, "the Wolfe-Powell constants need 0 < rho < sig < 1, got rho=0.05, sig=1.5")],
)  # fmt: skip
def test_bad_settings_are_refused_with_what_is_wrong(options, message):
    w = torch.zeros(1, requires_grad=True)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ConjugateGradient([w], **options)


def test_one_parameter_group_and_a_closure_are_required():
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    message = "ConjugateGradient takes one parameter group (it searches along one vector)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ConjugateGradient([{"params": [a]}, {"params": [b]}])
    message = "ConjugateGradient needs a closure that returns the loss after backward()"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ConjugateGradient([a]).step(None)


def test_evaluations_count_every_call_of_the_closure():
    for f, x0, searches, options in CASES.values():
        points, _, _ = _optimizer_points(f, x0, searches, **options)
        x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
        opt = ConjugateGradient([x], line_searches=searches, **options)
        calls = []

        def closure():
            opt.zero_grad()
            calls.append(1)
            loss = f(x)
            loss.backward()
            return loss

        opt.step(closure)
        assert opt.evaluations == len(calls) == len(points)  # the same step as _optimizer_points
        opt.step(closure)
        assert opt.evaluations == len(calls) > len(points)  # counted on across steps


def test_a_parameter_the_loss_does_not_use_has_gradient_zero_and_stays():
    """A parameter without a .grad (unused by the loss) counts as gradient 0: the others are minimised as alone."""
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    unused = torch.tensor([5.0], dtype=torch.float64, requires_grad=True)
    opt = ConjugateGradient([x, unused], line_searches=30)
    points = []

    def closure():
        opt.zero_grad(set_to_none=True)
        points.append(x.detach().numpy().copy())
        loss = _rosenbrock(x)
        loss.backward()
        return loss

    opt.step(closure)
    alone, _, x_end = _optimizer_points(_rosenbrock, np.array([-1.2, 1.0]), 30)
    assert len(points) == len(alone) and all(np.array_equal(a, b) for a, b in zip(points, alone))
    assert np.array_equal(x.detach().numpy(), x_end) and unused.detach().tolist() == [5.0]


def test_a_non_finite_start_returns_it_and_moves_nothing():
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    opt = ConjugateGradient([x])

    def closure():
        opt.zero_grad()
        loss = (x * float("nan")).sum()
        loss.backward()
        return loss

    assert math.isnan(float(opt.step(closure)))
    assert x.tolist() == [1.0, 2.0] and opt.evaluations == 1


def test_a_later_point_that_only_ties_the_best_value_is_not_the_best_point():
    """-x + x^4 from 0 with red 2 and a budget of one evaluation: the only trial point, x = 1, has f(1) = f(0) = 0
    exactly, and the search fails (slope 3). The step ends at the best point seen, which is the first of equal
    values (minimize.m's `if f3 < F0`): x stays 0, as the transcription says."""
    options = {"red": 2.0, "max_evals": 1}
    points, returned, x_end = _optimizer_points(_quartic_tie, np.array([0.0]), 1, **options)
    assert [p.tolist() for p in points] == [[0.0], [1.0]] and float(_quartic_tie(torch.tensor([1.0]))) == 0.0
    x_ref, ref = minimize_m(_value_and_gradient(_quartic_tie), np.array([0.0]), 1, MAX=1, red=2.0)
    assert x_end.tolist() == x_ref.tolist() == [0.0] and float(returned) == 0.0
