"""Tests of aelab.penalties against independent computations, all in float64.

Reference values come from torch.autograd.functional.jacobian run one example
at a time (brute force), gradients from central finite differences, and the
Hutchinson estimator from its own Monte-Carlo standard error.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from aelab.models import penalties
from aelab.models.penalties import analytic_from_activations, jacobian_frobenius_sq, ones_backward_quantity

# torch's forward-mode AD scripts its decompositions on first use (a torch-internal deprecation warning)
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]


ACTS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU}


def make_encoder(sizes: list[int], act: str, seed: int, flatten: bool = False, final_act: bool = True) -> nn.Sequential:
    """Linear layers sizes[0] -> ... -> sizes[-1] with `act` after each (the last one optional), float64."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if final_act or i < len(sizes) - 2:
            layers.append(ACTS[act]())
    return nn.Sequential(*layers).double()


class ConvEncoder(nn.Module):
    """Not a Sequential, has a skip connection: only the generic routes apply."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.linear = nn.Linear(2 * 4 * 4, 5)
        self.skip = nn.Linear(16, 5)

    def forward(self, x):
        return torch.tanh(self.linear(torch.nn.functional.elu(self.conv(x)).flatten(1)) + self.skip(x.flatten(1)))


def brute_force(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """sum of squared entries of d code / d x, one example at a time."""
    out = []
    for x_one in x:
        jac = torch.autograd.functional.jacobian(lambda v: encoder(v.unsqueeze(0)).reshape(-1), x_one)
        out.append(jac.pow(2).sum())
    return torch.stack(out).detach()


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-8) -> None:
    assert actual.shape == expected.shape
    assert expected.abs().max() > 0, "reference is all zeros: the test would be vacuous"
    err = (actual.detach() - expected).abs()
    # per-example relative error; a floor of 1e-12 * max guards the exact zeros of dead ReLU layers
    assert (err <= rtol * expected.abs().clamp_min(1e-12 * expected.abs().max())).all(), (actual, expected)


def finite_difference_check(encoder: nn.Module, penalty, n_entries: int = 8, eps: float = 1e-6) -> None:
    """Autograd gradient of penalty().sum() vs central differences on random entries of every parameter."""
    params = list(encoder.parameters())
    for p in params:
        p.grad = None
    penalty().sum().backward()
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for p in params:
        # no grad at all means zero gradient (the ReLU penalty does not depend on the bias); FD must agree
        flat, grad = p.data.view(-1), (p.grad if p.grad is not None else torch.zeros_like(p)).view(-1)
        for idx in torch.randperm(flat.numel(), generator=gen)[:n_entries].tolist():
            old = flat[idx].item()
            flat[idx] = old + eps  # p.data: an untracked in-place change; the penalty itself needs autograd on
            plus = penalty().sum().item()
            flat[idx] = old - eps
            minus = penalty().sum().item()
            flat[idx] = old
            fd = (plus - minus) / (2 * eps)
            assert abs(grad[idx].item() - fd) <= 1e-6 * max(1.0, abs(fd)), (p.shape, idx, grad[idx].item(), fd)
            checked += 1
    assert checked > 0


# ----------------------------------------------------------------------------- analytic


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("flatten", [False, True])
def test_analytic_matches_brute_force(act, flatten):
    encoder = make_encoder([12, 5], act, seed=1, flatten=flatten)
    torch.manual_seed(2)
    x = torch.randn(7, 3, 4, dtype=torch.float64) if flatten else torch.randn(7, 12, dtype=torch.float64)
    expected = brute_force(encoder, x)
    assert_rel(jacobian_frobenius_sq(encoder, x, method="analytic"), expected)
    assert_rel(jacobian_frobenius_sq(encoder, x, method="auto"), expected)


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_analytic_from_activations_reuses_forward_pass(act):
    encoder = make_encoder([12, 5], act, seed=3)
    x = torch.randn(6, 12, dtype=torch.float64)
    linear = encoder[0]
    preact = linear(x)
    h = encoder[1](preact)
    expected = brute_force(encoder, x)
    assert_rel(analytic_from_activations(h if act != "relu" else preact, linear.weight, act), expected)
    if act == "relu":  # h > 0 exactly where a > 0
        assert_rel(analytic_from_activations(h, linear.weight, act), expected)


def test_analytic_accepts_nested_sequential():
    inner = make_encoder([12, 5], "sigmoid", seed=4)
    encoder = nn.Sequential(nn.Flatten(), inner)
    x = torch.randn(4, 2, 6, dtype=torch.float64)
    assert_rel(jacobian_frobenius_sq(encoder, x, method="analytic"), brute_force(encoder, x))


def test_auto_dispatches_to_analytic_only_for_single_layer(monkeypatch):
    single = make_encoder([12, 5], "tanh", seed=5)
    double = make_encoder([12, 6, 5], "tanh", seed=5)
    x = torch.randn(4, 12, dtype=torch.float64)
    expected_double = brute_force(double, x)

    def no_exact(*args, **kwargs):
        raise AssertionError("exact route used")

    monkeypatch.setattr(penalties, "_exact", no_exact)
    assert_rel(jacobian_frobenius_sq(single, x), brute_force(single, x))
    with pytest.raises(AssertionError, match="exact route used"):
        jacobian_frobenius_sq(double, x)
    monkeypatch.undo()
    assert_rel(jacobian_frobenius_sq(double, x), expected_double)


# ----------------------------------------------------------------------------- exact

DIMS = [(12, 5), (4, 9)]  # code dim < input dim (reverse mode) and > (forward mode)


def hidden_sizes(d_in: int, d_code: int, depth: int) -> list[int]:
    return [d_in, *[7 + i for i in range(depth - 1)], d_code]


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("dims", DIMS)
def test_exact_matches_brute_force(depth, act, dims):
    d_in, d_code = dims
    encoder = make_encoder(hidden_sizes(d_in, d_code, depth), act, seed=10 * depth + len(act))
    torch.manual_seed(0)
    x = torch.randn(6, d_in, dtype=torch.float64)
    expected = brute_force(encoder, x)
    assert_rel(jacobian_frobenius_sq(encoder, x, method="exact"), expected)
    # every internal route, whichever one "exact" picks for these sizes
    assert_rel(penalties._exact_reverse_autograd(encoder, x), expected)
    assert_rel(penalties._exact_func(encoder, x, "reverse"), expected)
    assert_rel(penalties._exact_func(encoder, x, "forward"), expected)
    assert_rel(penalties._exact_reverse_gram(encoder[0], encoder[1:], x), expected)


@pytest.mark.parametrize("final_act", [True, False])
def test_exact_on_flattened_images_and_linear_code(final_act):
    # the AE layout: Flatten, Linear+ReLU inside, linear code
    encoder = make_encoder([12, 8, 6, 3], "relu", seed=7, flatten=True, final_act=final_act)
    x = torch.rand(6, 1, 3, 4, dtype=torch.float64)
    expected = brute_force(encoder, x)
    assert_rel(jacobian_frobenius_sq(encoder, x, method="exact"), expected)
    assert_rel(jacobian_frobenius_sq(encoder, x), expected)


def test_exact_on_a_non_sequential_encoder():
    encoder = ConvEncoder().double()
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    expected = brute_force(encoder, x)
    assert_rel(jacobian_frobenius_sq(encoder, x), expected)
    assert_rel(jacobian_frobenius_sq(encoder, x, method="exact", chunk_size=2), expected)


def test_gram_route_is_chosen_for_a_narrow_first_layer_only():
    assert penalties._gram_pays(d_code=20, n=128, d_1=256, d_input=784)
    assert not penalties._gram_pays(d_code=30, n=128, d_1=1000, d_input=784)
    encoder = make_encoder([12, 4, 3], "elu", seed=8)  # d_1 = 4 < 12: the Gram route
    x = torch.randn(6, 12, dtype=torch.float64)
    assert penalties.exact_route(encoder, x) == "gram"
    assert penalties.exact_route(make_encoder([12, 20, 3], "elu", seed=8), x) == "reverse"
    assert penalties.exact_route(make_encoder([4, 6, 9], "elu", seed=8), x[:, :4]) == "forward"
    assert_rel(jacobian_frobenius_sq(encoder, x, method="exact"), brute_force(encoder, x))


@pytest.mark.parametrize("method", ["exact", "analytic"])
def test_chunking_does_not_change_the_result(method):
    encoder = make_encoder([12, 5] if method == "analytic" else [12, 6, 5], "tanh", seed=9)
    x = torch.randn(10, 12, dtype=torch.float64)
    whole = jacobian_frobenius_sq(encoder, x, method=method)
    for chunk in (1, 3, 10, 64):
        torch.testing.assert_close(
            jacobian_frobenius_sq(encoder, x, method=method, chunk_size=chunk), whole, rtol=1e-12, atol=0
        )


def test_exact_keeps_the_graph_to_x_when_x_requires_grad():
    encoder = make_encoder([4, 6, 3], "tanh", seed=11)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(jacobian_frobenius_sq(encoder, x).sum(), x)
    eps, x0, fd = 1e-6, x.detach(), torch.zeros_like(x)
    for idx in range(x.numel()):
        step = torch.zeros(x.numel(), dtype=x.dtype)
        step[idx] = eps
        step = step.view_as(x)
        fd.view(-1)[idx] = (brute_force(encoder, x0 + step).sum() - brute_force(encoder, x0 - step).sum()) / (2 * eps)
    torch.testing.assert_close(grad_x, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method", ["analytic", "exact", "hutchinson"])
def test_value_under_no_grad(method):
    encoder = make_encoder([12, 5] if method == "analytic" else [12, 6, 5], "sigmoid", seed=20)
    x = torch.randn(4, 12, dtype=torch.float64)
    with torch.no_grad():
        value = jacobian_frobenius_sq(encoder, x, method=method, k=6, generator=torch.Generator().manual_seed(0))
    assert not value.requires_grad
    with_grad = jacobian_frobenius_sq(encoder, x, method=method, k=6, generator=torch.Generator().manual_seed(0))
    assert with_grad.requires_grad
    torch.testing.assert_close(value, with_grad.detach(), rtol=1e-12, atol=0)
    if method != "hutchinson":
        assert_rel(value, brute_force(encoder, x))


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_analytic_gradient_matches_finite_differences(act):
    encoder = make_encoder([12, 5], act, seed=12)
    x = torch.randn(5, 12, dtype=torch.float64)
    finite_difference_check(encoder, lambda: jacobian_frobenius_sq(encoder, x, method="analytic"))


@pytest.mark.parametrize("route", ["exact", "reverse_autograd", "reverse_func", "gram", "forward"])
def test_exact_gradient_matches_finite_differences(route):
    dims = (4, 9) if route == "forward" else (12, 5)
    encoder = make_encoder(hidden_sizes(*dims, depth=3), "softplus" if route == "forward" else "tanh", seed=13)
    x = torch.randn(5, dims[0], dtype=torch.float64)
    penalty = {
        "exact": lambda: jacobian_frobenius_sq(encoder, x, method="exact"),
        "reverse_autograd": lambda: penalties._exact_reverse_autograd(encoder, x),
        "reverse_func": lambda: penalties._exact_func(encoder, x, "reverse"),
        "gram": lambda: penalties._exact_reverse_gram(encoder[0], encoder[1:], x),
        "forward": lambda: jacobian_frobenius_sq(encoder, x, method="exact"),  # d_code > d_input: jacfwd
    }[route]
    finite_difference_check(encoder, penalty)


@pytest.mark.parametrize("k", [1, 6])  # k=1 draws probes in code space (VJPs), k=6 in input space (JVPs)
def test_hutchinson_gradient_with_fixed_probes_matches_finite_differences(k):
    encoder = make_encoder([12, 7, 5], "elu", seed=14)
    x = torch.randn(5, 12, dtype=torch.float64)
    assert penalties.hutchinson_side(5, 12, k) == ("code" if k == 1 else "input")
    # a fresh generator with the same seed draws the same probes: the estimate is a fixed function of the weights
    finite_difference_check(
        encoder,
        lambda: jacobian_frobenius_sq(encoder, x, method="hutchinson", k=k, generator=torch.Generator().manual_seed(3)),
    )


# ----------------------------------------------------------------------------- Hutchinson


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("side", ["code", "input"])
def test_hutchinson_is_unbiased_within_its_standard_error(dims, side):
    d_in, d_code = dims
    encoder = make_encoder(hidden_sizes(d_in, d_code, 2), "tanh", seed=15)
    x = torch.randn(3, d_in, dtype=torch.float64)
    exact = brute_force(encoder, x)
    draws = 20000
    gen = torch.Generator().manual_seed(16)
    probes = torch.randn(1, draws * 3, d_code if side == "code" else d_in, generator=gen, dtype=torch.float64)
    # one probe per row of the repeated batch: `draws` independent single-probe estimates per example
    samples = penalties._hutchinson(encoder, x.repeat(draws, 1), probes, side).detach().view(draws, 3)
    mean, std = samples.mean(0), samples.std(0)
    stderr = std / math.sqrt(draws)
    assert (stderr > 0).all()
    assert ((mean - exact).abs() < 4 * stderr).all(), (mean, exact, stderr)
    # Gaussian probes: variance 2 ||J^T J||_F^2 <= 2 ||J||_F^4
    assert (std < math.sqrt(2) * exact * 1.2).all()
    # a single draw is random, not the exact value
    assert ((samples - exact).abs() > 1e-3 * exact).float().mean() > 0.9


def test_hutchinson_k_probes_average_and_generator_reproducibility():
    encoder = make_encoder([12, 7, 5], "sigmoid", seed=17)
    x = torch.randn(4, 12, dtype=torch.float64)
    exact = brute_force(encoder, x)
    singles = (
        jacobian_frobenius_sq(
            encoder, x.repeat(2000, 1), method="hutchinson", k=1, generator=torch.Generator().manual_seed(0)
        )
        .detach()
        .view(2000, 4)
    )
    stderr = singles.std(0) / math.sqrt(2000)
    many = jacobian_frobenius_sq(encoder, x, method="hutchinson", k=2000, generator=torch.Generator().manual_seed(1))
    assert ((many.detach() - exact).abs() < 4 * stderr).all(), (many, exact, stderr)

    def estimate(seed, chunk_size=None):
        return jacobian_frobenius_sq(
            encoder, x, method="hutchinson", k=8, chunk_size=chunk_size, generator=torch.Generator().manual_seed(seed)
        )

    torch.testing.assert_close(estimate(5), estimate(5), rtol=0, atol=0)
    torch.testing.assert_close(estimate(5, chunk_size=3), estimate(5), rtol=1e-12, atol=0)
    assert not torch.allclose(estimate(5), estimate(6))


# ----------------------------------------------------------------------------- the wrong quantity


def test_ones_backward_quantity_is_not_the_contractive_penalty():
    encoder = make_encoder([12, 8, 5], "tanh", seed=18)
    x = torch.randn(6, 12, dtype=torch.float64)
    frob = brute_force(encoder, x).sum()
    wrong = ones_backward_quantity(encoder, x).detach()
    # what it does compute: sqrt(sum_n ||J_n^T 1||^2), from the brute-force Jacobians
    col_sums = torch.stack(
        [torch.autograd.functional.jacobian(lambda v: encoder(v[None]).reshape(-1), xo).sum(0) for xo in x]
    )
    torch.testing.assert_close(wrong, col_sums.pow(2).sum().sqrt(), rtol=1e-10, atol=0)
    assert abs(wrong - frob) > 0.05 * frob
    assert abs(wrong - frob.sqrt()) > 0.05 * frob.sqrt()


# ----------------------------------------------------------------------------- errors


def test_errors():
    one = make_encoder([12, 5], "sigmoid", seed=19)
    two = make_encoder([12, 6, 5], "sigmoid", seed=19)
    x = torch.randn(3, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown method 'jacobian'"):
        jacobian_frobenius_sq(one, x, method="jacobian")
    with pytest.raises(ValueError, match="method='analytic' needs an encoder"):
        jacobian_frobenius_sq(two, x, method="analytic")
    with pytest.raises(ValueError, match="method='analytic' needs an encoder"):
        jacobian_frobenius_sq(make_encoder([12, 5], "softplus", seed=19), x, method="analytic")
    with pytest.raises(ValueError, match="2-D input"):
        jacobian_frobenius_sq(one, x.view(3, 3, 4), method="analytic")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        jacobian_frobenius_sq(one, x, method="hutchinson", k=0)
    with pytest.raises(ValueError, match="chunk_size"):
        jacobian_frobenius_sq(one, x, chunk_size=0)
    with pytest.raises(ValueError, match="unknown activation"):
        analytic_from_activations(x[:, :5], one[0].weight, "softplus")
    with pytest.raises(ValueError, match="expected activations"):
        analytic_from_activations(x, one[0].weight, "sigmoid")
