"""Nonlinear conjugate gradients (Polak-Ribière) with a Wolfe-Powell line search: the fine-tuner of
Hinton & Salakhutdinov (Science 2006), whose published code calls C. E. Rasmussen's `minimize.m` for three
line searches on each mini-batch of 1,000 images.

One `step(closure)` minimises the closure's objective f(x) (x: all parameters as one vector) by
`line_searches` line searches, starting from steepest descent, as each call of `minimize.m` does:

    s_0 = -g_0
    x_{k+1} = x_k + a_k s_k      a_k from the line search below
    s_{k+1} = -g_{k+1} + b_k s_k,   b_k = (g_{k+1}·g_{k+1} - g_k·g_{k+1}) / (g_k·g_k)   (Polak-Ribière)
    (s_{k+1} is reset to -g_{k+1} when it is not a descent direction)

The line search accepts a step a when the Wolfe-Powell conditions hold,

    f(x + a s) <= f(x) + rho a d_0        (sufficient decrease; d_0 = g·s < 0, the initial slope)
    |g(x + a s)·s| <= -sig d_0            (the slope has fallen enough),

by first extrapolating with cubic fits (at most `ext` times the last step) until the minimum is bracketed or
the conditions hold, then interpolating inside the bracket (cubic, or quadratic when f rose above f(x)),
never closer than `int_` of the bracket to its ends; at most `max_evals` evaluations per line search. The
first trial step is red / (1 + |g|^2) along s = -g, and each next one is the last step times the ratio of
the slopes (at most `ratio`). A failed line search restarts from steepest descent at the best point seen;
two failures in a row end the step. The step leaves the parameters at the best point seen.

Defaults are those of the `minimize.m` in the authors' code (INT 0.1, EXT 3, MAX 20, RATIO 10, SIG 0.1,
RHO = SIG / 2). The scalar arithmetic of the line search is done in float64 on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

REALMIN = 2.2250738585072014e-308  # the smallest normal float64, as the original guards a division with


class ConjugateGradient(torch.optim.Optimizer):
    """Polak-Ribière conjugate gradients; `step(closure)` runs `line_searches` line searches and returns the
    objective at the start of the step. The closure must zero the gradients, compute the loss, call
    backward() and return the loss. No state is carried between steps (each starts from steepest descent)."""

    def __init__(
        self,
        params,
        line_searches: int = 3,
        max_evals: int = 20,
        sig: float = 0.1,
        rho: float = 0.05,
        int_: float = 0.1,
        ext: float = 3.0,
        ratio: float = 10.0,
        red: float = 1.0,
    ):
        if not (isinstance(line_searches, int) and line_searches > 0):
            raise ValueError(f"line_searches must be a positive integer, got {line_searches!r}")
        if not (0 < rho < sig < 1):
            raise ValueError(f"the Wolfe-Powell constants need 0 < rho < sig < 1, got rho={rho}, sig={sig}")
        defaults = dict(
            line_searches=line_searches,
            max_evals=max_evals,
            sig=sig,
            rho=rho,
            int_=int_,
            ext=ext,
            ratio=ratio,
            red=red,
        )
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("ConjugateGradient takes one parameter group (it searches along one vector)")
        self._params = [p for p in self.param_groups[0]["params"]]
        self.evaluations = 0  # function evaluations so far, for diagnostics (not saved)

    # ------------------------------------------------------------ the parameters as one vector
    def _gather(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._params])

    def _scatter(self, x: torch.Tensor) -> None:
        offset = 0
        for p in self._params:
            n = p.numel()
            p.copy_(x[offset : offset + n].view_as(p))
            offset += n

    def _gradient(self) -> torch.Tensor:
        return torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1) for p in self._params]
        )

    def _evaluate(self, closure: Callable, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        self._scatter(x)
        with torch.enable_grad():
            loss = closure()
        self.evaluations += 1
        return float(loss), self._gradient()

    @staticmethod
    def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.dot(a.double(), b.double()))

    @torch.no_grad()
    def step(self, closure: Callable) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise ValueError("ConjugateGradient needs a closure that returns the loss after backward()")
        g = self.param_groups[0]
        sig, rho, int_, ext, ratio = g["sig"], g["rho"], g["int_"], g["ext"], g["ratio"]
        max_evals = g["max_evals"]

        x = self._gather()
        f0, df0 = self._evaluate(closure, x)
        start = f0
        if not math.isfinite(f0):
            return torch.tensor(start)
        s = -df0
        d0 = -self._dot(s, s)
        x3 = g["red"] / (1 - d0)  # the first trial step: red / (1 + |g|^2)
        failed_before = False
        for _ in range(g["line_searches"]):
            best_x, best_f, best_df = x, f0, df0  # the best point of this line search
            budget = max_evals
            # 1. extrapolate until the minimum is bracketed or the Wolfe-Powell conditions hold
            while True:
                x2, f2, d2 = 0.0, f0, d0
                f3, df3 = f0, df0
                ok = False
                while not ok and budget > 0:
                    budget -= 1
                    f3, df3 = self._evaluate(closure, x + x3 * s)
                    ok = math.isfinite(f3) and bool(torch.isfinite(df3).all())
                    if not ok:
                        x3 = (x2 + x3) / 2  # a non-finite value: bisect towards the last good point
                if ok and f3 < best_f:
                    best_x, best_f, best_df = x + x3 * s, f3, df3
                d3 = self._dot(df3, s) if ok else math.inf
                if d3 > sig * d0 or f3 > f0 + x3 * rho * d0 or budget == 0:
                    break
                x1, f1, d1 = x2, f2, d2
                x2, f2, d2 = x3, f3, d3
                x3 = _cubic_extrapolation(x1, f1, d1, x2, f2, d2)
                if not math.isfinite(x3) or x3 < 0 or x3 > x2 * ext:
                    x3 = x2 * ext  # a numerical problem or the wrong side: extrapolate the most allowed
                elif x3 < x2 + int_ * (x2 - x1):
                    x3 = x2 + int_ * (x2 - x1)  # too close to the last point
            # 2. interpolate inside the bracket [x2, x4] until the conditions hold
            x4, f4, d4 = x3, f3, d3
            while (abs(d3) > -sig * d0 or f3 > f0 + x3 * rho * d0) and budget > 0:
                if d3 > 0 or f3 > f0 + x3 * rho * d0:
                    x4, f4, d4 = x3, f3, d3
                else:
                    x2, f2, d2 = x3, f3, d3
                x3 = _interpolation(x2, f2, d2, x4, f4, d4, quadratic=f4 > f0)
                if not math.isfinite(x3):
                    x3 = (x2 + x4) / 2  # bisect
                x3 = max(min(x3, x4 - int_ * (x4 - x2)), x2 + int_ * (x4 - x2))
                f3, df3 = self._evaluate(closure, x + x3 * s)
                budget -= 1
                if not (math.isfinite(f3) and bool(torch.isfinite(df3).all())):
                    f3, d3 = math.inf, math.inf  # treated as too far: the bracket shrinks towards x2
                    continue
                if f3 < best_f:
                    best_x, best_f, best_df = x + x3 * s, f3, df3
                d3 = self._dot(df3, s)
            # 3. accept, then the next direction; or restart from the best point along steepest descent
            if abs(d3) < -sig * d0 and f3 < f0 + x3 * rho * d0:
                x, f0 = x + x3 * s, f3
                s, df0, d0, x3 = self._next_direction(s, df0, df3, d0, x3, ratio)
                failed_before = False
            else:
                x, f0, df0 = best_x, best_f, best_df
                if failed_before:
                    break
                s = -df0
                d0 = -self._dot(s, s)
                x3 = 1 / (1 - d0)
                failed_before = True
        self._scatter(x)
        return torch.tensor(start)

    def _next_direction(
        self, s: torch.Tensor, df0: torch.Tensor, df3: torch.Tensor, d0: float, x3: float, ratio: float
    ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """After an accepted step to a point with gradient df3: (s, its gradient df3, its slope d0 = df3·s, the next
        trial step). s = -df3 + beta s with Polak-Ribière's beta, or steepest descent where that is no descent
        direction; the next trial step is the last one times the ratio of the slopes, at most `ratio`."""
        beta = (self._dot(df3, df3) - self._dot(df0, df3)) / self._dot(df0, df0)
        s = beta * s - df3
        df0 = df3
        d_old, d0 = d0, self._dot(df0, s)
        if d0 > 0:  # not a descent direction: steepest descent instead
            s = -df0
            d0 = -self._dot(s, s)
        x3 = x3 * min(ratio, d_old / (d0 - REALMIN))
        return s, df0, d0, x3


def _cubic_extrapolation(x1: float, f1: float, d1: float, x2: float, f2: float, d2: float) -> float:
    """The minimum of the cubic through (x1, f1, slope d1) and (x2, f2, slope d2), beyond x2; NaN when the
    arithmetic fails (the caller then extrapolates the most allowed)."""
    a = 6 * (f1 - f2) + 3 * (d2 + d1) * (x2 - x1)
    b = 3 * (f2 - f1) - (2 * d1 + d2) * (x2 - x1)
    disc = b * b - a * d1 * (x2 - x1)
    if not disc >= 0 or b + math.sqrt(disc) == 0:
        return math.nan
    return x1 - d1 * (x2 - x1) ** 2 / (b + math.sqrt(disc))


def _interpolation(x2: float, f2: float, d2: float, x4: float, f4: float, d4: float, quadratic: bool) -> float:
    """A point inside the bracket [x2, x4]: the minimum of the quadratic through (x2, f2, d2) and (x4, f4)
    (used when f rose above the start), else of the cubic through both points and slopes; NaN on failure
    (the caller then bisects)."""
    h = x4 - x2
    if h == 0:
        return math.nan
    if quadratic:
        denominator = f4 - f2 - d2 * h
        return x2 - (0.5 * d2 * h * h) / denominator if denominator != 0 else math.nan
    a = 6 * (f2 - f4) / h + 3 * (d4 + d2)
    b = 3 * (f4 - f2) - (2 * d2 + d4) * h
    disc = b * b - a * d2 * h * h
    if not disc >= 0 or a == 0:
        return math.nan
    return x2 + (math.sqrt(disc) - b) / a
