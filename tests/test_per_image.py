"""aelab.metrics.per_image: batched per-image L-BFGS against scipy's L-BFGS-B on each image alone."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import expit

from aelab.metrics.per_image import per_image_codes


def _bce(logits: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.logaddexp(0.0, logits) - x * logits))


def _scipy_code(decode_np, x, z0, l2):
    """One image's code by scipy (gradient by finite differences: independent of torch's autograd)."""

    def f(z):
        return _bce(decode_np(z[None])[0], x) + l2 * float(z @ z)

    return minimize(f, z0, method="L-BFGS-B", options={"ftol": 1e-14, "gtol": 1e-9, "maxiter": 2000}).x


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_convex_case_codes_equal_scipys_per_image(l2):
    """A linear decoder (logistic PCA's): each image's problem is convex, its minimiser unique."""
    g = torch.Generator().manual_seed(0)
    V = torch.randn(20, 3, generator=g, dtype=torch.float64)
    b = torch.randn(20, generator=g, dtype=torch.float64) * 0.5
    x = torch.rand(7, 20, generator=g, dtype=torch.float64)
    start = torch.randn(7, 3, generator=g, dtype=torch.float64)
    found = per_image_codes(lambda z: z @ V.T + b, x, start, max_iter=300, l2=l2, gtol=1e-10, ftol=0.0)
    assert found["converged"].all() and (found["iterations"] > 1).all()
    for i in range(7):
        z = _scipy_code(lambda z: z @ V.numpy().T + b.numpy(), x[i].numpy(), start[i].numpy(), l2)
        np.testing.assert_allclose(found["codes"][i].numpy(), z, atol=2e-5)


def test_nonconvex_decoder_reaches_a_stationary_point_no_worse_than_the_start():
    g = torch.Generator().manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 12)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    net.requires_grad_(False)
    x = torch.rand(9, 12, generator=g, dtype=torch.float64)
    start = torch.randn(9, 2, generator=g, dtype=torch.float64)
    loss = lambda z: torch.nn.functional.binary_cross_entropy_with_logits(net(z), x, reduction="none").sum(1)
    found = per_image_codes(net, x, start, max_iter=500, gtol=1e-8, ftol=0.0)
    z = found["codes"].requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(z).sum(), z)
    converged = found["converged"]
    assert converged.sum() >= 7
    assert grad[converged].abs().max() < 1e-6
    assert (loss(found["codes"]) <= loss(start) + 1e-12).all()
    # independence of the images: the batch split changes nothing but the rounding of the matrix products
    again = per_image_codes(net, x, start, max_iter=500, gtol=1e-8, ftol=0.0, batch_size=2)
    torch.testing.assert_close(again["codes"], found["codes"], rtol=0, atol=1e-5)


def test_max_iter_caps_every_image_and_progress_counts_images():
    g = torch.Generator().manual_seed(2)
    V = torch.randn(30, 4, generator=g, dtype=torch.float64) * 3
    x = (torch.rand(5, 30, generator=g, dtype=torch.float64) > 0.5).double()  # binary targets: no finite minimum
    start = torch.zeros(5, 4, dtype=torch.float64)
    seen = []
    found = per_image_codes(lambda z: z @ V.T, x, start, max_iter=3, batch_size=2, progress=seen.append, ftol=0.0)
    assert (found["iterations"] <= 3).all() and found["iterations"].max() == 3
    assert seen == [2, 2, 1]
    assert not found["converged"][found["iterations"] == 3].any()
    zero = per_image_codes(lambda z: z @ V.T, x, start, max_iter=0)
    torch.testing.assert_close(zero["codes"], start)


def test_the_quasi_newton_directions_converge_in_a_few_iterations():
    """L-BFGS, not steepest descent: on this convex problem every image converges to a gradient of 1e-10 in at most
    16 iterations (measured 10-15); steepest descent with the same line search needs 29-52. Pins the two-loop
    recursion, the curvature pairs and their scaling, which the converged codes alone do not."""
    g = torch.Generator().manual_seed(0)
    V = torch.randn(20, 3, generator=g, dtype=torch.float64) * 2
    b = torch.randn(20, generator=g, dtype=torch.float64) * 0.5
    x = torch.rand(7, 20, generator=g, dtype=torch.float64)
    start = torch.randn(7, 3, generator=g, dtype=torch.float64)
    found = per_image_codes(lambda z: z @ V.T + b, x, start, max_iter=1000, l2=0.3, gtol=1e-10, ftol=0.0)
    assert found["converged"].all() and found["iterations"].max() <= 16


def _reference_lbfgs(loss_and_grad, z, max_iter, gtol, ftol):
    """One image's L-BFGS written out plainly (numpy, one image, no batching): the algorithm the module docstring
    states, step by step. Returns (code, iterations, converged)."""
    loss, g = loss_and_grad(z)
    if np.abs(g).max() <= gtol:
        return z, 0, True
    pairs, gamma = [], 1.0
    for it in range(max_iter):
        q, alphas = g.copy(), []
        for s, y, rho in reversed(pairs):  # two-loop recursion
            a = rho * (s @ q)
            q = q - a * y
            alphas.append(a)
        r = gamma * q
        for (s, y, rho), a in zip(pairs, reversed(alphas)):
            r = r + s * (a - rho * (y @ r))
        d = -r
        slope = g @ d
        if slope >= 0:
            d, slope = -g, -(g @ g)
        step = min(1.0 / max(np.abs(g).sum(), 1e-30), 1.0) if it == 0 else 1.0
        for _ in range(31):  # the first try and at most 30 halvings
            new_z = z + step * d
            new_loss, new_g = loss_and_grad(new_z)
            if new_loss <= loss + 1e-4 * step * slope:
                stuck = False
                break
            step *= 0.5
        else:
            stuck = True
            new_z, new_loss, new_g = z, loss, g
        s, y = new_z - z, new_g - g
        sy = s @ y
        ok = sy > 1e-10 * np.sqrt(s @ s) * np.sqrt(y @ y)
        pairs = (pairs + [(s, y, 1.0 / sy if ok else 0.0)])[-10:]
        if ok:
            gamma = sy / max(y @ y, 1e-30)
        fell = loss - new_loss
        z, loss, g = new_z, new_loss, new_g
        if np.abs(g).max() <= gtol or fell <= ftol * max(abs(loss), 1.0) or stuck:
            return z, it + 1, True
    return z, max_iter, False


def _tanh_decoder(seed, k, d):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(k, 16), torch.nn.Tanh(), torch.nn.Linear(16, d)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net.requires_grad_(False), g


def _numpy_loss_and_grad(net, x, l2):
    def f(z):
        zt = torch.tensor(z, requires_grad=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(zt[None])[0], x, reduction="sum")
        loss = loss + l2 * (zt * zt).sum()
        loss.backward()
        return float(loss.detach()), zt.grad.numpy().copy()

    return f


@pytest.mark.parametrize("max_iter", [1, 2, 4, 25])
@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_every_iterate_equals_a_plain_one_image_lbfgs(max_iter, l2):
    """The batched solver's path, not only where it ends: after 1, 2, 4 and 25 iterations (past the 10 pairs of
    history) each image's code, iteration count and convergence flag equal a plain numpy L-BFGS run on that image
    alone: the first step's length, the Armijo test and its halving, the curvature-pair rule, gamma's scaling and
    the stopping tests all take part. Images whose x is binary have no finite minimum and run to the cap."""
    net, g = _tanh_decoder(3, 3, 15)
    x = torch.rand(6, 15, generator=g, dtype=torch.float64)
    x[4:] = (x[4:] > 0.5).double()
    start = torch.randn(6, 3, generator=g, dtype=torch.float64) * 2
    images = x.reshape(6, 1, 3, 5)  # image-shaped input is flattened
    found = per_image_codes(net, images, start, max_iter=max_iter, l2=l2, gtol=1e-7, ftol=1e-12, batch_size=4)
    for i in range(6):
        z, iters, ok = _reference_lbfgs(_numpy_loss_and_grad(net, x[i], l2), start[i].numpy(), max_iter, 1e-7, 1e-12)
        np.testing.assert_allclose(found["codes"][i].numpy(), z, rtol=0, atol=1e-8)
        assert (int(found["iterations"][i]), bool(found["converged"][i])) == (iters, ok), i


class _ReversedGradient(torch.autograd.Function):
    """The identity whose backward pass flips the gradient's sign: every L-BFGS direction then climbs the loss."""

    @staticmethod
    def forward(ctx, z):
        return z.clone()

    @staticmethod
    def backward(ctx, grad):
        return -grad


def test_an_image_with_no_decrease_in_30_halvings_stays_where_it_was_and_stops():
    """A convex loss with a wrong-signed gradient: no step of length 2^-30 or more decreases it, so the image stays at
    its start and stops after one iteration (the line search's 31 tries: 31 more decoder passes), while the images
    beside it, with true gradients, go on to their minimum."""
    g = torch.Generator().manual_seed(4)
    V = torch.randn(12, 2, generator=g, dtype=torch.float64)
    x = torch.rand(3, 12, generator=g, dtype=torch.float64)
    start = torch.randn(3, 2, generator=g, dtype=torch.float64)
    calls = []

    def decode(z):
        calls.append(len(z))
        flipped = torch.cat([_ReversedGradient.apply(z[:1]), z[1:]]) if len(z) == 3 else z
        return flipped @ V.T

    found = per_image_codes(decode, x, start, max_iter=200, gtol=1e-9, ftol=0.0)
    torch.testing.assert_close(found["codes"][0], start[0], rtol=0, atol=0)
    assert int(found["iterations"][0]) == 1 and bool(found["converged"][0])
    assert calls[:32] == [3, 3] + [1] * 30  # the start, the first try, then 30 halvings of the climbing image alone
    assert (found["iterations"][1:] > 1).all() and found["converged"].all()
    for i in (1, 2):
        z = _scipy_code(lambda z: z @ V.numpy().T, x[i].numpy(), start[i].numpy(), 0.0)
        np.testing.assert_allclose(found["codes"][i].numpy(), z, atol=2e-5)


def _linear_loss_and_grad(V, x, l2):
    def f(z):
        logits = V.numpy() @ z
        return _bce(logits, x.numpy()) + l2 * float(z @ z), V.numpy().T @ (expit(logits) - x.numpy()) + 2 * l2 * z

    return f


@pytest.mark.parametrize(("gtol", "ftol"), [(1e-9, 0.0), (1e-7, 1e-3)])
def test_linear_decoder_paths_from_far_and_near_starts_equal_the_plain_lbfgs(gtol, ftol):
    """Logistic PCA's problem (a linear decoder, gradient by hand in the reference) from starts far from the minimum
    (a first gradient with |g|_1 over 500: the first step is 1/|g|_1, and the sufficient-decrease bound
    scales with the step) and near it (|g|_1 < 1: the first step is capped at length 1). ftol = 0 makes the images
    stop by gtol one by one, each on its own gradient; ftol = 1e-3 stops the binary images, whose loss falls below
    1 towards 0, by the fall relative to max(|loss|, 1)."""
    g = torch.Generator().manual_seed(5)
    V = torch.randn(25, 3, generator=g, dtype=torch.float64) * 3
    x = torch.rand(8, 25, generator=g, dtype=torch.float64)
    x[5:] = (x[5:] > 0.5).double()
    start = torch.randn(8, 3, generator=g, dtype=torch.float64) * 5e3  # the penalty 0.05 |z|^2 dominates there
    near = per_image_codes(lambda z: z @ V.T, x, start, max_iter=60, l2=0.05, gtol=1e-12, ftol=0.0)["codes"]
    start[3:5] = near[3:5] + 1e-3 * torch.randn(2, 3, generator=g, dtype=torch.float64)
    for max_iter in (1, 3, 40):
        found = per_image_codes(lambda z: z @ V.T, x, start, max_iter=max_iter, l2=0.05, gtol=gtol, ftol=ftol)
        assert found["iterations"].dtype == torch.long and found["converged"].dtype == torch.bool
        for i in range(8):
            f = _linear_loss_and_grad(V, x[i], 0.05)
            if max_iter == 1:
                assert (np.abs(f(start[i].numpy())[1]).sum() > 500) == (i not in (3, 4)), i
            z, iters, ok = _reference_lbfgs(f, start[i].numpy(), max_iter, gtol, ftol)
            np.testing.assert_allclose(found["codes"][i].numpy(), z, rtol=0, atol=1e-8)
            assert (int(found["iterations"][i]), bool(found["converged"][i])) == (iters, ok), (max_iter, i)


def test_an_image_at_its_stationary_point_stops_before_the_first_iteration_alone():
    """An image whose gradient is exactly 0 at its start (its x is the decoder's own output, no penalty) stops at
    iteration 0 with gtol = 0, by its own gradient, while the other images go on; a float32 start is moved to x's
    float64 first."""
    g = torch.Generator().manual_seed(6)
    V = torch.randn(10, 2, generator=g, dtype=torch.float64)
    start = torch.randn(3, 2, generator=g, dtype=torch.float64)
    x = torch.rand(3, 10, generator=g, dtype=torch.float64)
    x[1] = torch.sigmoid(start.float()[1].double() @ V.T)
    found = per_image_codes(lambda z: z @ V.T, x, start.float(), max_iter=50, gtol=0.0, ftol=1e-12)
    assert found["codes"].dtype == torch.float64
    assert found["iterations"].tolist()[1] == 0 and found["converged"][1]
    torch.testing.assert_close(found["codes"][1], start.float()[1].double(), rtol=0, atol=0)
    assert (found["iterations"][[0, 2]] > 3).all()
    for i in (0, 2):
        z, iters, ok = _reference_lbfgs(
            _linear_loss_and_grad(V, x[i], 0.0), start.float()[i].double().numpy(), 50, 0.0, 1e-12
        )
        np.testing.assert_allclose(found["codes"][i].numpy(), z, rtol=0, atol=1e-8)
        assert int(found["iterations"][i]) == iters


def test_a_flat_problem_takes_a_first_step_of_length_one_and_a_falling_loss_stops_relative_to_max_loss_1():
    """Two rules the other cases cannot see. (a) On a flat problem (small weights, a start near the minimum, so
    |g|_1 < 1 and a unit step passes the Armijo test without halving) the first step is capped at length 1, not
    1 / |g|_1. (b) Binary targets that some code separates, with no penalty, have no finite minimum: the loss falls towards 0 and the images stop
    when one iteration lowers it by at most ftol * max(|loss|, 1), here with the loss below 1 when they stop."""
    g = torch.Generator().manual_seed(7)
    V = torch.randn(25, 3, generator=g, dtype=torch.float64) * 0.2
    x = torch.rand(4, 25, generator=g, dtype=torch.float64)
    best = per_image_codes(lambda z: z @ V.T, x, torch.zeros(4, 3, dtype=torch.float64), 200, l2=0.05, gtol=1e-12)
    start = best["codes"] + 0.05
    for i in range(4):
        assert np.abs(_linear_loss_and_grad(V, x[i], 0.05)(start[i].numpy())[1]).sum() < 0.5
    found = per_image_codes(lambda z: z @ V.T, x, start, max_iter=1, l2=0.05, gtol=1e-12, ftol=0.0)
    for i in range(4):
        z, _, _ = _reference_lbfgs(_linear_loss_and_grad(V, x[i], 0.05), start[i].numpy(), 1, 1e-12, 0.0)
        np.testing.assert_allclose(found["codes"][i].numpy(), z, rtol=0, atol=1e-12)

    W = torch.randn(25, 3, generator=g, dtype=torch.float64) * 3
    start = torch.randn(4, 3, generator=g, dtype=torch.float64)
    targets = (torch.randn(4, 3, generator=g, dtype=torch.float64) @ W.T > 0).double()  # separable: loss -> 0
    found = per_image_codes(lambda z: z @ W.T, targets, start, max_iter=500, ftol=1e-2)
    for i in range(4):
        f = _linear_loss_and_grad(W, targets[i], 0.0)
        z, iters, ok = _reference_lbfgs(f, start[i].numpy(), 500, 1e-5, 1e-2)
        assert ok and int(found["iterations"][i]) == iters and f(z)[0] < 1.0
        np.testing.assert_allclose(found["codes"][i].numpy(), z, rtol=0, atol=1e-8)


class _FlatWithSlope(torch.autograd.Function):
    """Constant logits whose backward pass claims a gradient of 1 in every code entry: a loss that never falls
    along the direction its gradient promises."""

    @staticmethod
    def forward(ctx, z):
        return torch.zeros(len(z), 6, dtype=z.dtype)

    @staticmethod
    def backward(ctx, grad):
        return torch.ones(len(grad), 2, dtype=grad.dtype)


def test_a_step_that_does_not_lower_the_loss_is_never_accepted():
    """The Armijo test asks for a decrease of 1e-4 * step * slope (slope < 0): a trial point with the same loss
    fails it at the first try and at every halving, so the image stays where it is."""
    start = torch.tensor([[0.3, -0.2], [1.0, 2.0]], dtype=torch.float64)
    x = torch.full((2, 6), 0.5, dtype=torch.float64)
    found = per_image_codes(_FlatWithSlope.apply, x, start, max_iter=10, gtol=1e-9)
    torch.testing.assert_close(found["codes"], start, rtol=0, atol=0)
    assert found["iterations"].tolist() == [1, 1] and found["converged"].all()
