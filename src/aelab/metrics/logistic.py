"""The linear probe's solver: multinomial logistic regression with an L2 penalty, by L-BFGS in torch.

For standardised features x_i (the mean and standard deviation of the fitting set; a constant feature is left
unscaled, as sklearn's StandardScaler does), labels y_i in {0..K-1}, weights W (d, K) and intercepts b (K,):

    f(W, b) = (1/n) sum_i -log softmax(x_i W + b)[y_i]  +  ||W||^2 / (2 C n)

which is the objective of sklearn's LogisticRegression(C=C) (multinomial, lbfgs; the intercept not penalised;
sklearn.linear_model._logistic, `l2_reg_strength = 1 / (C * sw_sum)`) and has the same minimiser. It is convex: any
solver that converges finds the same W. This one runs torch's L-BFGS with a strong-Wolfe line search until the
largest gradient entry is below `tol` (sklearn's default 1e-4, on the same objective), in float64 (in float32 the
line search stalls on a loss that no longer changes in its last digit before the gradient is that small), with its
gradient in closed form (objective_and_gradient: no autograd graph), on all of torch's threads (one for a small
problem, SMALL_PROBLEM), and starts a fit from a previous one's solution when a path of C values is fitted
(`warm`: C ascending, each fit from the last, the way a regularisation path is usually followed).

When the parameters are few (K (d + 1) <= NEWTON_MAX_PARAMETERS: a 30-D code and 10 classes make 310), Newton's
method replaces L-BFGS: the exact Hessian (`hessian`) costs about 15 gradient evaluations on 59,500 codes, and
Newton needs 3 to 8 steps where L-BFGS needs up to 900 iterations on the nearly unregularised end of the C path
(C = 10; a 784-1000-500-250-30 AE's codes: 31.6 s by L-BFGS, 7.7 s by Newton). The Hessian is accumulated in
float32 (half the time; an inexact Newton direction converges all the same, to the float64 gradient's tolerance)
and the step solved in float64; a step is backtracked until the objective falls (Armijo). A Newton run that has
not converged after NEWTON_MAX_STEPS steps hands its point to L-BFGS. The 5-point C grid
on 59,500 x 784 raw pixels costs about what one cold sklearn fit costs (BENCHMARKS.md); a test checks that the
chosen C and the test accuracy agree with sklearn's to within 0.002.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._util import torch_threads

TOL = 1e-4  # the largest entry of the gradient of f at the solution: sklearn's default tol, on the same f
MAX_ITER = 1000
# features x samples at or below which a fit runs on one thread: each L-BFGS step is then a few small matmuls, and
# threads cost more than they give (a 59,500 x 30 probe: 13 s at 1 thread, 37 s at 2 on the shared 2-core machine)
SMALL_PROBLEM = 4_000_000
NEWTON_MAX_PARAMETERS = 512  # K (d + 1) at or below which Newton's method fits (its Hessian has this many rows)
NEWTON_MAX_STEPS = 50
HESSIAN_CHUNK = 8192  # rows of x per block of the Hessian's sum (bounds the memory of the (rows, K (d + 1)) block)


@dataclass
class Standardizer:
    mean: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardizer:
        mean = x.mean(0, dtype=torch.float64)
        std = x.double().sub(mean).pow(2).mean(0).sqrt()
        std[std < 10 * torch.finfo(torch.float64).eps * mean.abs().clamp_min(1)] = 1.0  # constant: left unscaled
        return cls(mean.to(x.dtype), std.to(x.dtype))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


@dataclass
class LogisticFit:
    weight: torch.Tensor  # (d, K)
    bias: torch.Tensor  # (K,)
    classes: np.ndarray  # the label of each of the K columns
    iterations: int
    converged: bool

    def predict(self, x: torch.Tensor) -> np.ndarray:
        return self.classes[(x @ self.weight + self.bias).argmax(1).cpu().numpy()]


def fit_logistic(
    x: torch.Tensor,
    y: np.ndarray,
    C: float,
    start: LogisticFit | None = None,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
) -> LogisticFit:
    """Minimise f above over (W, b) for standardised x (n, d) (float64) and labels y (n,); from `start` when given
    (its classes must be the same)."""
    classes, codes = np.unique(np.asarray(y), return_inverse=True)
    target = torch.as_tensor(codes, dtype=torch.long, device=x.device)
    n, d, k = x.shape[0], x.shape[1], len(classes)
    if start is not None and np.array_equal(start.classes, classes):
        w, b = start.weight.clone(), start.bias.clone()
    else:
        w = torch.zeros(d, k, dtype=x.dtype, device=x.device)
        b = torch.zeros(k, dtype=x.dtype, device=x.device)
    onehot = torch.nn.functional.one_hot(target, k).to(x.dtype)
    penalty = 1.0 / (2.0 * C * n)
    with torch_threads(1 if x.numel() <= SMALL_PROBLEM else torch.get_num_threads()):
        steps = 0
        if k * (d + 1) <= NEWTON_MAX_PARAMETERS:
            w, b, steps, converged = _newton(x, onehot, w, b, penalty, tol, min(max_iter, NEWTON_MAX_STEPS))
            if converged:
                return LogisticFit(w, b, classes, steps, True)
        weight, bias, iterations, converged = _minimise(x, onehot, w, b, penalty, tol, max_iter)
    return LogisticFit(weight, bias, classes, steps + iterations, converged)


def objective_and_gradient(
    x: torch.Tensor, onehot: torch.Tensor, w: torch.Tensor, b: torch.Tensor, penalty: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f(W, b), df/dW, df/db) by the closed form, no autograd graph:

    p_i = softmax(x_i W + b),  df/dW = X^T (P - Y) / n + 2 penalty W,  df/db = sum_i (p_i - y_i) / n
    """
    n = x.shape[0]
    logits = torch.addmm(b, x, w)
    lse = torch.logsumexp(logits, 1)
    loss = (lse.sum() - (logits * onehot).sum()) / n + penalty * w.pow(2).sum()
    residual = torch.exp(logits - lse[:, None]).sub_(onehot).div_(n)
    return loss, torch.addmm(w, x.T, residual, beta=2.0 * penalty), residual.sum(0)


def hessian(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, penalty: float, dtype=torch.float64) -> torch.Tensor:
    """The Hessian of f at (W, b), (K (d+1), K (d+1)) in float64, the parameters ordered class by class, each
    class's d weights then its bias: theta = [W[:, 0], b[0], W[:, 1], b[1], ...]. With a_i = (x_i, 1) and
    p_i = softmax(x_i W + b),

        d2f / d theta_(k, a) d theta_(l, c) = (1/n) sum_i a_ia a_ic p_ik (delta_kl - p_il) + 2 penalty delta_kl delta_ac [a, c < d]

    the sum accumulated in `dtype` over blocks of HESSIAN_CHUNK rows: diag(p_i) (x) a_i a_i^T as K blocks of
    A^T diag(p_k) A, minus U^T U with U_i = p_i (x) a_i."""
    n, d = x.shape
    k = w.shape[1]
    m = d + 1
    h = torch.zeros(k * m, k * m, dtype=dtype, device=x.device)
    with torch.no_grad():
        for start in range(0, n, HESSIAN_CHUNK):
            rows = x[start : start + HESSIAN_CHUNK]
            p = torch.softmax(torch.addmm(b, rows, w), 1).to(dtype)
            a = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype, device=rows.device)], 1).to(dtype)
            u = (p[:, :, None] * a[:, None, :]).reshape(len(rows), k * m)
            h -= u.T @ u
            for c in range(k):
                h[c * m : (c + 1) * m, c * m : (c + 1) * m] += a.T @ (p[:, c : c + 1] * a)
    h = h.double() / n
    ridge = torch.full((k, m), 2.0 * penalty, dtype=torch.float64, device=x.device)
    ridge[:, d] = 0.0  # the intercepts are not penalised
    return h + torch.diag(ridge.reshape(-1))


def _newton(x, onehot, w, b, penalty, tol, max_steps) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Newton's method with Armijo backtracking, from (w, b): (W, b, steps taken, converged). The Hessian H is
    singular along one direction, e = every intercept moved alike (no softmax changes), and the gradient has no
    component along e; the step solves (H + h e e^T) s = -g (h: H's largest diagonal entry) by Cholesky, which
    is the Newton step with nothing along e."""
    d, k = w.shape
    along = torch.zeros(k, d + 1, dtype=torch.float64, device=x.device)
    along[:, d] = k**-0.5
    along = along.reshape(-1)
    current = objective_and_gradient(x, onehot, w, b, penalty)
    for step in range(max_steps + 1):
        loss, grad_w, grad_b = current
        if max(float(grad_w.abs().max()), float(grad_b.abs().max())) <= tol:
            return w, b, step, True
        if step == max_steps:
            break
        grad = torch.cat([grad_w.T, grad_b[:, None]], 1).reshape(-1).double()
        h = hessian(x, w, b, penalty, dtype=torch.float32)
        h += h.diagonal().max() * torch.outer(along, along)
        factor, info = torch.linalg.cholesky_ex(h)
        if info != 0:  # not positive definite in float32 (the edge of its precision): L-BFGS goes on
            break
        direction = -torch.cholesky_solve(grad[:, None], factor)[:, 0]
        slope = float(grad @ direction)
        move = direction.reshape(k, d + 1).to(x.dtype)
        move_w, move_b = move[:, :d].T, move[:, d] - move[:, d].mean()  # exactly nothing along e (float32's H)
        t = 1.0
        while t > 1e-10:
            trial = objective_and_gradient(x, onehot, w + t * move_w, b + t * move_b, penalty)
            if trial[0] <= loss + 1e-4 * t * slope:
                break
            t /= 2
        else:
            break  # no decrease along the Newton direction: L-BFGS goes on from here
        w, b, current = w + t * move_w, b + t * move_b, trial  # the accepted trial's gradient is the next step's
    return w, b, step, False


def _minimise(x, onehot, w, b, penalty, tol, max_iter) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    w.requires_grad_(True)  # L-BFGS reads .grad; the closure fills it from the closed form
    b.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        tolerance_grad=tol,
        tolerance_change=0.0,  # stop on the gradient only, as the convergence test says
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    @torch.no_grad()
    def closure() -> torch.Tensor:
        loss, w.grad, b.grad = objective_and_gradient(x, onehot, w, b, penalty)
        return loss

    opt.step(closure)
    state = opt.state[w]
    closure()  # the gradient at the point returned
    grad_max = max(float(w.grad.abs().max()), float(b.grad.abs().max()))
    return w.detach(), b.detach(), int(state.get("n_iter", 0)), grad_max <= tol


def accuracy(fit: LogisticFit, x: torch.Tensor, y: np.ndarray) -> float:
    return float((fit.predict(x) == np.asarray(y)).mean())
