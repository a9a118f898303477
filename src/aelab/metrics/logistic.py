"""The linear probe's solver: multinomial logistic regression with an L2 penalty, by L-BFGS in torch.

For standardised features x_i (the mean and standard deviation of the fitting set; a constant feature is left
unscaled, as sklearn's StandardScaler does), labels y_i in {0..K-1}, weights W (d, K) and intercepts b (K,):

    f(W, b) = (1/n) sum_i -log softmax(x_i W + b)[y_i]  +  ||W||^2 / (2 C n)

which is the objective of sklearn's LogisticRegression(C=C) (multinomial, lbfgs; the intercept not penalised;
sklearn.linear_model._logistic, `l2_reg_strength = 1 / (C * sw_sum)`) and has the same minimiser. It is convex: any
solver that converges finds the same W. This one runs torch's L-BFGS with a strong-Wolfe line search until the
largest gradient entry is below `tol` (sklearn's default 1e-4, on the same objective), in float64 (in float32 the
line search stalls on a loss that no longer changes in its last digit before the gradient is that small), with all
of torch's threads, and starts a fit from a previous one's solution when a path of C values is fitted
(`warm`: C ascending, each fit from the last, the way a regularisation path is usually followed). The 5-point C grid
on 59,500 x 784 raw pixels costs about what one cold sklearn fit costs (BENCHMARKS.md); a test checks that the
chosen C and the test accuracy agree with sklearn's to within 0.002.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TOL = 1e-4  # the largest entry of the gradient of f at the solution: sklearn's default tol, on the same f
MAX_ITER = 1000


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
    w.requires_grad_(True)
    b.requires_grad_(True)
    penalty = 1.0 / (2.0 * C * n)
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

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(torch.addmm(b, x, w), target) + penalty * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    state = opt.state[w]
    closure()  # the gradient at the point returned
    grad_max = max(float(w.grad.abs().max()), float(b.grad.abs().max()))
    return LogisticFit(w.detach(), b.detach(), classes, int(state.get("n_iter", 0)), grad_max <= tol)


def accuracy(fit: LogisticFit, x: torch.Tensor, y: np.ndarray) -> float:
    return float((fit.predict(x) == np.asarray(y)).mean())
