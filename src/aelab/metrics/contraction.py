"""Contraction of an encoder (Rifai et al., ICML 2011): Jacobian norms, saturation, singular values.

||J_f(x)||_F          per test point, exact (closed form for one Linear + sigmoid|tanh|relu layer,
                      autodiff otherwise; aelab.models.penalties)
SAT                   fraction of (point, unit) pairs whose sigmoid code is within 0.05 of 0 or 1
singular values       of J_f(x) per point, from the Gram matrix in float64
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..models import penalties
from ..models.ae import ACTIVATIONS
from ._util import eval_mode, torch_threads

SATURATION_TOLERANCE = 0.05  # Rifai et al.: a sigmoid unit is saturated within 0.05 of 0 or 1
SPECTRUM_POINTS = 20  # test points whose full Jacobian is decomposed for the singular-value spectrum


class _Encode(nn.Module):
    """model.encode as a module on flattened input, so the penalty code can differentiate any model's encoder."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.input_shape = tuple(getattr(model, "input_shape", ()))

    def forward(self, x_flat: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x_flat.view(-1, *self.input_shape)).flatten(1)


def code_activation(model: nn.Module) -> str | None:
    """The activation applied to the code ("sigmoid", "tanh", ...) when the encoder ends in one, else None."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        return None
    last = list(encoder.modules())[-1]
    for name, cls in ACTIVATIONS.items():
        if type(last) is cls:
            return name
    return None


def saturation(codes: torch.Tensor, tolerance: float = SATURATION_TOLERANCE) -> float:
    """Rifai et al.'s SAT for sigmoid codes: the fraction of (example, unit) pairs with h within tolerance of 0 or 1."""
    return float(((codes <= tolerance) | (codes >= 1 - tolerance)).double().mean())


def jacobian_norms(model: nn.Module, x: torch.Tensor, chunk_size: int = 250) -> tuple[torch.Tensor, str]:
    """(||J_f(x_n)||_F per example (N,), method used), exact either way.

    For the MLP models (encode = encoder(x.flatten(1))) the encoder goes to
    jacobian_frobenius_sq as it is: "analytic" (the closed form, exact) for one
    Linear + sigmoid|tanh|relu layer, where autodiff would spend d_code x d_code x
    d_input per example, else "exact". Any other model is differentiated through encode().
    """
    encoder = getattr(model, "encoder", None)
    if getattr(model, "has_mlp_encoder", False) and isinstance(encoder, nn.Sequential):
        module = encoder
        method = "analytic" if penalties.single_layer_pattern(encoder) is not None else "exact"
    else:
        module, method = _Encode(model), "exact"
    with torch.no_grad():
        sq = penalties.jacobian_frobenius_sq(module, x.flatten(1), method=method, chunk_size=chunk_size)
    return sq.clamp_min(0).sqrt(), method


def jacobian_spectrum(model: nn.Module, x: torch.Tensor, chunk_size: int = 10) -> torch.Tensor:
    """Singular values of J_f(x_n), sorted descending, per example (N, min(d_code, d_input)), float64.

    The Jacobians come from torch.func, vmap of jacrev (d_code VJPs per example). Not jacfwd
    even when d_input < d_code: on real MNIST digits vmap(jacfwd) of the 784-1000 sigmoid
    encoder grew the process by 2.4 GB per chunk of 10 (torch 2.13), jacrev by 30 MB. The singular values are the square roots of the eigenvalues of the smaller
    Gram matrix (J^T J or J J^T) formed in float64. That resolves singular values down to
    ~1e-8 of the largest and is ~25x faster here than LAPACK's float64 SVD of a 1000 x 784 J.
    """
    from torch.func import jacrev, vmap

    encode = _Encode(model)
    flat = x.flatten(1)
    per_example = vmap(jacrev(lambda v: encode(v.unsqueeze(0)).squeeze(0)))
    out = []
    with torch.no_grad():
        for chunk in flat.split(chunk_size):
            j = per_example(chunk).double()  # (n, d_code, d_input)
            gram = j @ j.transpose(1, 2) if j.shape[1] <= j.shape[2] else j.transpose(1, 2) @ j
            # eigvalsh's many small parallel regions stall for seconds when another process holds a
            # core (measured 0.4 s -> 30 s on a shared 2-core machine); one thread is steady
            with torch_threads(1):
                out.append(torch.linalg.eigvalsh(gram).flip(1).clamp_min(0).sqrt())
    return torch.cat(out)


def contraction_diagnostics(model: nn.Module, test_x: torch.Tensor) -> tuple[dict, list[float]]:
    """Contraction of the encoder on test points; returns (metrics, mean singular-value spectrum).

    jacobian_fro_mean     mean over test points of ||J_f(x)||_F (exact: closed form or autodiff)
    jacobian_fro_sq_mean  mean of ||J_f(x)||_F^2 (the CAE penalty)
    saturation            SAT of Rifai et al. 2011: fraction of (test point, code unit) pairs whose
                          sigmoid activation is within 0.05 of 0 or 1; None (n/a) when the code is
                          not a sigmoid's output (no bounds to saturate against, e.g. a linear code)
    jacobian_sv_top       mean over SPECTRUM_POINTS test points of the largest singular value
    jacobian_sv_above_1pct  mean number of singular values above 1% of the largest: how many
                          input directions the code stays sensitive to
    The model is evaluated in eval mode and left in the mode it was in.
    """
    with eval_mode(model):
        norms, method = jacobian_norms(model, test_x)
        with torch.no_grad():
            codes = torch.cat([model.encode(xb).flatten(1) for xb in test_x.split(1000)])
        n_spec = min(SPECTRUM_POINTS, len(test_x))
        spectra = jacobian_spectrum(model, test_x[:n_spec])
    act = code_activation(model)
    metrics = {
        "jacobian_fro_mean": float(norms.double().mean()),
        "jacobian_fro_sq_mean": float(norms.double().pow(2).mean()),
        "jacobian_method": method,
        "saturation": saturation(codes.cpu()) if act == "sigmoid" else None,
        "jacobian_sv_top": float(spectra[:, 0].mean()),
        "jacobian_sv_above_1pct": float((spectra > 0.01 * spectra[:, :1]).double().sum(1).mean()),
        "spectrum_points": n_spec,
    }
    return metrics, spectra.mean(0).cpu().tolist()
