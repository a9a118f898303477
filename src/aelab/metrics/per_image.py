"""Per-image codes: a fixed decoder's best code for each image, found by L-BFGS on that image's own loss.

An autoencoder's encoder gives each image a code in one pass; a decoder alone can do better for a given image by
optimising the code itself (the way logistic PCA's codes are usually solved). For a decoder g (codes -> logits) and
images x_i, each code solves its own problem

    z_i* = argmin_z  BCE(g(z), x_i) + l2 |z|^2        (BCE summed over the pixels, grey levels as soft targets)

from a start z_i (the encoder's code). The problems are independent: `per_image_codes` runs one L-BFGS per image
(its own history of curvature pairs, its own step length from a backtracking Armijo line search, its own stopping
test: the largest gradient entry below `gtol` or the loss falling by less than `ftol` of itself), vectorised over a
batch of images: every iteration is one forward and backward pass of the decoder over the images still running,
and an image that has stopped leaves the batch. Converged images are the same as one L-BFGS per image would give
(a test checks them against scipy.optimize on single images); only the arithmetic is batched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

HISTORY = 10  # curvature pairs kept per image (scipy's L-BFGS-B default)
GTOL = 1e-5  # scipy's pgtol: stop when the largest gradient entry is below this
FTOL = 1e-9  # stop when the loss falls by less than this fraction of itself in one iteration
ARMIJO = 1e-4  # sufficient decrease
MAX_HALVINGS = 30


def _loss_and_grad(decode_logits, x, z, l2):
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = decode_logits(z)
        loss = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        if l2:
            loss = loss + l2 * z.pow(2).sum(1)
        (grad,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), grad.detach()


def _direction(g, pairs, gamma):
    """The L-BFGS direction -H g of every image (the two-loop recursion, one dot product per image)."""
    q = g.clone()
    alphas = []
    for s, y, rho in reversed(pairs):
        a = rho * (s * q).sum(1)
        q -= a[:, None] * y
        alphas.append(a)
    r = gamma[:, None] * q
    for (s, y, rho), a in zip(pairs, reversed(alphas)):
        b = rho * (y * r).sum(1)
        r += s * (a - b)[:, None]
    return -r


def _solve(decode_logits, x, z, max_iter, l2, gtol, ftol) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch: (codes, iterations per image, converged per image)."""
    n = len(x)
    out, iters, converged = z.clone(), torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool)
    live = torch.arange(n)
    loss, g = _loss_and_grad(decode_logits, x, z, l2)
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    gamma = torch.ones(n, dtype=z.dtype, device=z.device)
    first = True
    done = g.abs().amax(1) <= gtol
    for it in range(max_iter + 1):
        if done.any() or it == max_iter:  # write back the images that stopped; the rest go on
            stop = torch.ones_like(done) if it == max_iter else done
            out[live[stop]], converged[live[stop]] = z[stop], done[stop]
            iters[live[stop]] = it
            keep = ~stop
            if not keep.any():
                break
            live, z, x, loss, g, gamma = live[keep], z[keep], x[keep], loss[keep], g[keep], gamma[keep]
            pairs = [(s[keep], y[keep], rho[keep]) for s, y, rho in pairs]
        d = _direction(g, pairs, gamma)
        slope = (g * d).sum(1)
        bad = slope >= 0  # not a descent direction (a numerical corner): steepest descent for these images
        if bad.any():
            d[bad], slope[bad] = -g[bad], -(g[bad] * g[bad]).sum(1)
        step = torch.ones_like(loss)
        if first:  # no curvature known yet: a first step of unit length at most (as torch's L-BFGS)
            step = torch.clamp(1.0 / g.abs().sum(1).clamp_min(1e-30), max=1.0)
            first = False
        new_z = z + step[:, None] * d
        new_loss, new_g = _loss_and_grad(decode_logits, x, new_z, l2)
        short = ~(new_loss <= loss + ARMIJO * step * slope)  # NaN fails too
        for _ in range(MAX_HALVINGS):  # backtracking, for the images whose step was too long
            if not short.any():
                break
            idx = short.nonzero().squeeze(1)
            step[idx] *= 0.5
            new_z[idx] = z[idx] + step[idx, None] * d[idx]
            new_loss[idx], new_g[idx] = _loss_and_grad(decode_logits, x[idx], new_z[idx], l2)
            short[idx] = ~(new_loss[idx] <= loss[idx] + ARMIJO * step[idx] * slope[idx])
        stuck = short  # no decrease within MAX_HALVINGS halvings: this image stays where it is
        new_z[stuck], new_loss[stuck], new_g[stuck] = z[stuck], loss[stuck], g[stuck]
        s, y = new_z - z, new_g - g
        sy = (s * y).sum(1)
        ok = sy > 1e-10 * (s * s).sum(1).sqrt() * (y * y).sum(1).sqrt()  # curvature pair kept only when positive
        rho = torch.where(ok, 1.0 / torch.where(ok, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        gamma = torch.where(ok, sy / (y * y).sum(1).clamp_min(1e-30), gamma)
        pairs = (pairs + [(s, y, rho)])[-HISTORY:]
        fell = loss - new_loss
        z, loss, g = new_z, new_loss, new_g
        done = (g.abs().amax(1) <= gtol) | (fell <= ftol * loss.abs().clamp_min(1.0)) | stuck
    return out, iters, converged


def per_image_codes(
    decode_logits: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    start: torch.Tensor,
    max_iter: int,
    l2: float = 0.0,
    batch_size: int = 2000,
    gtol: float = GTOL,
    ftol: float = FTOL,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Each image's code, optimised with the decoder fixed (see the module docstring). x: (N, D) in [0, 1];
    start: (N, k) starting codes (the encoder's); at most max_iter L-BFGS iterations per image. Runs on x's device
    and dtype. progress(n) is called after each batch of n images. Returns {"codes": (N, k), "iterations": (N,),
    "converged": (N,) bool (stopped by gtol or ftol rather than by max_iter)}."""
    x, start = x.flatten(1), start.to(dtype=x.dtype, device=x.device)
    codes, iters, converged = [], [], []
    for xb, zb in zip(x.split(batch_size), start.split(batch_size)):
        c, i, ok = _solve(decode_logits, xb, zb, max_iter, l2, gtol, ftol)
        codes.append(c)
        iters.append(i)
        converged.append(ok)
        if progress is not None:
            progress(len(xb))
    return {"codes": torch.cat(codes), "iterations": torch.cat(iters), "converged": torch.cat(converged)}
