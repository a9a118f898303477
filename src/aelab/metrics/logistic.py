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
(`warm`: C ascending, each fit from the last, the way a regularisation path is usually followed). The 5-point C grid
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
        weight, bias, iterations, converged = _minimise(x, onehot, w, b, penalty, tol, max_iter)
    return LogisticFit(weight, bias, classes, iterations, converged)


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
