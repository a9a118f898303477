"""aelab.metrics.per_image: batched per-image L-BFGS against scipy's L-BFGS-B on each image alone."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

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
