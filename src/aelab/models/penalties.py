"""The contractive penalty: the squared Frobenius norm of the encoder's Jacobian.

Rifai, Vincent, Muller, Glorot & Bengio, "Contractive Auto-Encoders: Explicit
Invariance During Feature Extraction", ICML 2011, penalise

    J(x) = ||J_f(x)||_F^2 = sum_{j,i} (dh_j / dx_i)^2,      h = f(x),

per example, with x and h flattened. For one sigmoid layer h = sigmoid(W x + b)
the Jacobian is diag(h (1 - h)) W, so (their eq. 5)

    ||J_f(x)||_F^2 = sum_j (h_j (1 - h_j))^2 sum_i W_ji^2,

one matmul of the layer's size. For any other encoder we build the Jacobian
exactly, d_code vector-Jacobian products (reverse mode) or d_input
Jacobian-vector products (forward mode) per example, whichever is fewer (with a
shortcut through the first layer's Gram matrix W W^T for MLPs whose first layer
narrows the input), or we estimate it without bias with Hutchinson's trick
(Hutchinson 1990):

    ||J||_F^2 = tr(J^T J) = E_v ||J v||^2 = E_u ||u^T J||^2,   v, u ~ N(0, I).

Every result is per example (N,) and keeps the autograd graph (create_graph),
so `penalty.mean().backward()` gives the gradient of the penalty w.r.t. the
encoder's parameters.

Assumption: the encoder treats examples independently (no BatchNorm in train
mode, no batch-coupled ops); otherwise a "per-example Jacobian" is undefined.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call, jacfwd, jacrev, jvp, vmap

METHODS = ("auto", "analytic", "exact", "hutchinson")
ANALYTIC_ACTIVATIONS = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu"}


# --------------------------------------------------------------------------- analytic


def analytic_from_activations(h_or_preact: torch.Tensor, weight: torch.Tensor, activation: str) -> torch.Tensor:
    """||J||_F^2 per example for h = act(x W^T + b), from the layer's own forward pass.

    ||J||_F^2 = sum_j act'(a_j)^2 sum_i W_ji^2 = (act'(a))^2 @ (W^2).sum(1)

    with act'(a) written in terms of what the forward pass already has:
    sigmoid h (1 - h), tanh 1 - h^2 (pass the activations h), relu 1[a > 0]
    (pass a or h: both are > 0 at the same places). Shapes: (N, d_code) and
    weight (d_code, d_input) -> (N,).
    """
    if activation == "sigmoid":
        slope = h_or_preact * (1 - h_or_preact)
    elif activation == "tanh":
        slope = 1 - h_or_preact * h_or_preact
    elif activation == "relu":
        slope = (h_or_preact > 0).to(h_or_preact.dtype)
    else:
        raise ValueError(f"unknown activation {activation!r} for the analytic penalty; choose from relu, sigmoid, tanh")
    if h_or_preact.dim() != 2 or weight.dim() != 2 or h_or_preact.shape[1] != weight.shape[0]:
        raise ValueError(
            f"expected activations (N, {weight.shape[0]}) for a weight of shape {tuple(weight.shape)}, "
            f"got {tuple(h_or_preact.shape)}"
        )
    return slope.pow(2) @ weight.pow(2).sum(1)


def _flat_modules(module: nn.Module) -> list[nn.Module] | None:
    """The modules a plain nn.Sequential runs, nested Sequentials unrolled; None for anything else."""
    if (
        type(module).forward is not nn.Sequential.forward
    ):  # a subclass with its own forward may not run its children in order
        return [module]
    flat: list[nn.Module] = []
    for child in module:
        inner = _flat_modules(child)
        flat.extend(inner)
    return flat


def single_layer_pattern(encoder: nn.Module) -> tuple[bool, nn.Linear, str] | None:
    """(has_flatten, linear, activation) if encoder is [Flatten,] Linear, Sigmoid|Tanh|ReLU; else None."""
    modules = _flat_modules(encoder)
    has_flatten = bool(modules) and type(modules[0]) is nn.Flatten
    if has_flatten:
        if (modules[0].start_dim, modules[0].end_dim) != (1, -1):
            return None
        modules = modules[1:]
    if len(modules) != 2:
        return None
    linear, act = modules
    if type(linear).forward is not nn.Linear.forward or type(act) not in ANALYTIC_ACTIVATIONS:
        return None
    return has_flatten, linear, ANALYTIC_ACTIVATIONS[type(act)]


def _analytic(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    pattern = single_layer_pattern(encoder)
    if pattern is None:
        raise ValueError(
            "method='analytic' needs an encoder nn.Sequential([nn.Flatten(),] nn.Linear, "
            f"nn.Sigmoid|nn.Tanh|nn.ReLU); got {encoder!r}. Use method='exact' or 'hutchinson'."
        )
    has_flatten, linear, activation = pattern
    if has_flatten:
        x = x.flatten(1)
    if x.dim() != 2:  # nn.Linear on (N, ..., D) mixes only the last axis: not the single-layer Jacobian
        raise ValueError(f"method='analytic' needs 2-D input (N, D) or an nn.Flatten first; got shape {tuple(x.shape)}")
    a = linear(x)
    if activation == "relu":
        return analytic_from_activations(a, linear.weight, "relu")
    h = torch.sigmoid(a) if activation == "sigmoid" else torch.tanh(a)
    return analytic_from_activations(h, linear.weight, activation)


# --------------------------------------------------------------------------- exact


def _input_for_grad(x: torch.Tensor) -> torch.Tensor:
    # Keep the graph to x if the caller has one; otherwise make x a leaf we can differentiate by.
    return x if x.requires_grad else x.detach().requires_grad_(True)


def _exact_reverse_autograd(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """d_code VJPs u = e_j, all at once: one autograd.grad(is_grads_batched=True, create_graph=True).

    Summing the code over the batch before the VJP is exact because the
    examples are independent: d(sum_n h_nj)/dx_m = dh_mj/dx_m.
    """
    x = _input_for_grad(x)
    h = encoder(x)
    n = h.shape[0]
    d_code = h[0].numel()
    eye = torch.eye(d_code, dtype=h.dtype, device=h.device)
    basis = eye.reshape(d_code, 1, *h.shape[1:]).expand(d_code, *h.shape)
    (rows,) = torch.autograd.grad(h, x, basis, create_graph=True, is_grads_batched=True, allow_unused=True)
    if rows is None:  # the code does not depend on x
        return h.new_zeros(n)
    return rows.reshape(d_code, n, -1).pow(2).sum((0, 2))


def _per_example_code(encoder: nn.Module):
    """f(params, buffers, x_n) -> flattened code of one example, for torch.func transforms."""

    def code(params, buffers, x_one):
        return functional_call(encoder, (params, buffers), (x_one.unsqueeze(0),)).reshape(-1)

    return code


def _exact_func(encoder: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """vmap over examples of jacrev (d_code VJPs) or jacfwd (d_input JVPs) w.r.t. the input.

    The parameters go in through functional_call but are not transformed, so
    regular autograd records the whole computation and differentiates it w.r.t.
    them (torch.func transforms compose with autograd).
    """
    params = dict(encoder.named_parameters())
    buffers = dict(encoder.named_buffers())
    jacobian = (jacrev if mode == "reverse" else jacfwd)(_per_example_code(encoder), argnums=2)
    jac = vmap(jacobian, in_dims=(None, None, 0))(params, buffers, x)  # (N, d_code, *input_shape)
    return jac.reshape(x.shape[0], -1).pow(2).sum(1)


def leading_linear(encoder: nn.Module) -> tuple[bool, nn.Linear, nn.Sequential] | None:
    """(has_flatten, linear, rest) if encoder is a plain Sequential [Flatten,] Linear, rest...; else None."""
    modules = _flat_modules(encoder)
    has_flatten = bool(modules) and type(modules[0]) is nn.Flatten
    if has_flatten:
        if (modules[0].start_dim, modules[0].end_dim) != (1, -1):
            return None
        modules = modules[1:]
    if not modules or type(modules[0]).forward is not nn.Linear.forward:
        return None
    return has_flatten, modules[0], nn.Sequential(*modules[1:])


def _exact_reverse_gram(linear: nn.Linear, rest: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Exact ||J||_F^2 for h = rest(W x + b) through the Gram matrix of the first layer.

    J = R W with R = d rest / d a (d_code x d_1), so
        ||J||_F^2 = tr(R W W^T R^T) = sum_j r_j (W W^T) r_j^T.
    The d_code VJPs stop at a = W x + b and never touch the d_1 x d_input
    layer per example: d_code N d_1^2 multiply-adds instead of d_code N d_1 d_input,
    plus d_1^2 d_input once for W W^T. A win when d_1 < d_input (784 -> 256: ~3x
    less work on the layer that dominates the cost).
    """
    a = linear(x)
    if not a.requires_grad:  # frozen first layer and x without grad: still differentiate rest by a
        a.requires_grad_(True)
    h = rest(a)
    n, d_code = h.shape[0], h[0].numel()
    eye = torch.eye(d_code, dtype=h.dtype, device=h.device)
    basis = eye.reshape(d_code, 1, *h.shape[1:]).expand(d_code, *h.shape)
    (rows,) = torch.autograd.grad(h, a, basis, create_graph=True, is_grads_batched=True, allow_unused=True)
    if rows is None:
        return h.new_zeros(n)
    gram = linear.weight @ linear.weight.T
    return ((rows @ gram) * rows).sum((0, 2))


def _gram_pays(d_code: int, n: int, d_1: int, d_input: int) -> bool:
    # multiply-adds: Gram route d_code n d_1^2 + d_1^2 d_input vs plain route d_code n d_1 d_input
    return d_1 * (d_code * n + d_input) < d_code * n * d_input


def exact_route(encoder: nn.Module, x: torch.Tensor) -> str:
    """Which exact computation method="exact" runs: "forward", "gram" or "reverse".

    forward: d_code > d_input, so d_input JVPs per example (vmap of jacfwd);
    gram:    plain Sequential starting [Flatten,] Linear whose width makes the
             first-layer Gram matrix cheaper (see _exact_reverse_gram);
    reverse: d_code VJPs per example, one batched autograd.grad.
    """
    with torch.no_grad():  # one example is enough to read the code size
        d_code = encoder(x[:1]).numel()
    d_input = x[0].numel()
    if d_code > d_input:
        return "forward"
    first = leading_linear(encoder)
    if (
        first is not None
        and (first[0] or x.dim() == 2)
        and _gram_pays(d_code, x.shape[0], first[1].out_features, d_input)
    ):
        return "gram"
    return "reverse"


def _exact(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    route = exact_route(encoder, x)
    if route == "forward":
        return _exact_func(encoder, x, "forward")
    if route == "gram":
        has_flatten, linear, rest = leading_linear(encoder)
        return _exact_reverse_gram(linear, rest, x.flatten(1) if has_flatten else x)
    # batched autograd.grad rather than vmap(jacrev): same arithmetic, measured no slower (benchmarks/)
    return _exact_reverse_autograd(encoder, x)


# --------------------------------------------------------------------------- Hutchinson


def _hutchinson(encoder: nn.Module, x: torch.Tensor, probes: torch.Tensor, side: str) -> torch.Tensor:
    """mean_p ||u_p^T J||^2 (side="code", u_p ~ N(0, I_code)) or mean_p ||J v_p||^2 (side="input").

    Both are unbiased for ||J||_F^2 with the same variance 2 ||J^T J||_F^2 (the
    Gaussian case), and one probe costs one VJP or one JVP.
    """
    k, n = probes.shape[:2]
    if side == "code":
        x = _input_for_grad(x)
        h = encoder(x)
        (uj,) = torch.autograd.grad(
            h, x, probes.reshape(k, *h.shape), create_graph=True, is_grads_batched=True, allow_unused=True
        )
        if uj is None:
            return h.new_zeros(n)
        return uj.reshape(k, n, -1).pow(2).sum(2).mean(0)
    # The primal x is not batched under vmap, so the forward pass runs once for all k tangents.
    jv = vmap(lambda v: jvp(encoder, (x,), (v.reshape(x.shape),))[1])(probes)
    return jv.reshape(k, n, -1).pow(2).sum(2).mean(0)


def hutchinson_side(d_code: int, d_input: int, k: int) -> str:
    """Where Hutchinson draws its probes: "input" (k JVPs) or "code" (k VJPs).

    The variance is the same, so this is about cost. Backpropagating the
    penalty through k VJPs must also run through the layer at the input end
    again, while through k JVPs it skips it (the probe v is a constant there),
    so JVPs win when the input end is the wider one. Forward mode has a fixed
    overhead (the primal is recomputed alongside the tangents), which makes
    VJPs cheaper below about 4 probes on MLPs (profiled flops, 784-1000-500-250-30;
    single-thread timings in benchmarks/contractive_penalty.py agree).
    """
    return "input" if d_input >= d_code and k >= 4 else "code"


# --------------------------------------------------------------------------- public


def jacobian_frobenius_sq(
    encoder: nn.Module,
    x: torch.Tensor,
    method: str = "auto",
    k: int = 8,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """||d h / d x||_F^2 per example (N,), h = encoder(x) and x flattened per example.

    The contractive penalty of Rifai et al. (ICML 2011), differentiable w.r.t.
    the encoder's parameters.

    method:
        "analytic"    closed form for [Flatten,] Linear + sigmoid|tanh|relu (one matmul).
        "exact"       any encoder; d_code batched VJPs if d_code <= d_input, else
                      d_input batched JVPs (torch.func.jacfwd), so cost is
                      min(d_code, d_input) passes through the encoder; MLPs whose
                      first layer narrows the input skip that layer via W W^T
                      (see exact_route).
        "hutchinson"  unbiased estimate from k Gaussian probes, k JVPs or k VJPs
                      (see hutchinson_side); reproducible with `generator`. Do not
                      seed it like the weights' initialisation: the same seed replays
                      the same numbers, so the probes correlate with W and the
                      estimate is off by many standard errors (seen while
                      writing benchmarks/contractive_penalty.py). Its relative
                      standard deviation per example is at most sqrt(2 / k).
        "auto"        analytic if the encoder matches its pattern, else exact.
    Under torch.no_grad() it still works (e.g. for validation logging) and
    returns a tensor without a graph.

    chunk_size: examples per pass; bounds the (min(d_code, d_input), chunk, width)
        temporaries. Results do not depend on it (Hutchinson probes are drawn
        for the whole batch first). The autograd graph kept for backward still
        grows with N; to bound that too, call backward per chunk.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method == "hutchinson" and (not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    if method == "auto":
        pattern = single_layer_pattern(encoder)
        method = "analytic" if pattern is not None and (pattern[0] or x.dim() == 2) else "exact"

    if method == "analytic":
        compute = lambda xc, sl: _analytic(encoder, xc)  # noqa: E731
    elif method == "exact":
        compute = lambda xc, sl: _exact(encoder, xc)  # noqa: E731
    else:
        n, d_input = x.shape[0], x[0].numel()
        with torch.no_grad():
            d_code = encoder(x[:1]).numel()
        side = hutchinson_side(d_code, d_input, k)
        probes = torch.randn(
            k, n, d_code if side == "code" else d_input, generator=generator, dtype=x.dtype, device=x.device
        )
        compute = lambda xc, sl: _hutchinson(encoder, xc, probes[:, sl], side)  # noqa: E731

    n = x.shape[0]
    step = n if chunk_size is None else chunk_size
    differentiable = torch.is_grad_enabled()
    with torch.enable_grad():  # the Jacobian itself needs autograd, even for a value under torch.no_grad()
        parts = [compute(x[start : start + step], slice(start, start + step)) for start in range(0, n, step)]
    penalty = parts[0] if len(parts) == 1 else torch.cat(parts)
    return penalty if differentiable else penalty.detach()


def ones_backward_quantity(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The often-posted "contractive loss" that is NOT ||J||_F^2: kept only to test that it differs.

    Backpropagating a vector of ones through h gives J^T 1 per example (the
    column sums of J), and the norm of that whole-batch gradient is
    sqrt(sum_n ||J_n^T 1||^2). It ignores the cancellations between rows
    (sum_j dh_j/dx_i can be 0 while every dh_j/dx_i is large) and mixes the
    batch into one scalar.
    """
    x = _input_for_grad(x)
    h = encoder(x)
    (grad,) = torch.autograd.grad(h, x, torch.ones_like(h), create_graph=True)
    return grad.norm()
