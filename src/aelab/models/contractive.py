"""Regularised autoencoders that learn invariant codes: contractive (CAE) and denoising (DAE).

Both are the MLP autoencoder of ae.py; by default the one-layer autoencoder of
Rifai et al. (2011): encoder h = f(x) = sigmoid(W x + b) with 1000 units (the
code IS those units, latent=None), decoder x_hat = sigmoid(W' h + c), W' = W^T
with `tied=True`. The reconstruction loss L(x, x_hat) is summed over pixels
(cross-entropy "bce" by default, or squared error "mse") and averaged over the batch.

CAE, Rifai, Vincent, Muller, Glorot & Bengio, "Contractive Auto-Encoders:
Explicit Invariance During Feature Extraction", ICML 2011, eq. 2-5:

    loss = mean_n [ L(x_n, g(f(x_n))) + lam ||J_f(x_n)||_F^2 ],  J_f(x) = d f(x) / d x,

which makes the code locally flat (contracting) around the training points, so
that only the directions the reconstruction needs, ideally the tangents of the
data manifold, keep a large derivative. For one sigmoid layer the penalty has
the closed form ||J_f(x)||_F^2 = sum_j (h_j (1 - h_j))^2 sum_i W_ji^2 (their
eq. 5), computed here from the forward pass's own activations (no second
encoder pass). Other encoders use aelab.models.penalties.jacobian_frobenius_sq
("exact" autodiff, or the unbiased "hutchinson" estimate with k probes).

Default lam = 1: at initialisation the summed cross-entropy is ~540 nats per
MNIST image and ||J||_F^2 ~ 20 for a 784-1000 sigmoid layer; an unregularised
AE ends near 70 nats with ||J||_F^2 ~ 90, so lam = 1 makes the penalty matter
at the solution. In a pilot on mnist5k (8 epochs) lam = 0.1 lowered the mean
||J||_F only 1.4x below the AE's, lam = 1 2.6x (`aelab experiment contractive`
sweeps 0.1-10). Rifai et al. chose lam on a validation set.

DAE, Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing Robust
Features with Denoising Autoencoders", ICML 2008:

    loss = mean_n L(x_n, g(f(x~_n))),   x~_n ~ q(x~ | x_n),

the reconstruction of the CLEAN input from a corrupted one: "gaussian" adds
N(0, level^2) per pixel (DAE-g of Rifai et al.), "masking" sets a random
round(level * D) of the D pixels of each image to 0 (Vincent et al.'s
masking noise, DAE-b in Rifai et al.). The noise is drawn from the global torch
RNG, which the trainer seeds per epoch (resume stays exact). encode() never
corrupts: codes for evaluation are of the clean input.

What the CAE is about (the mean ||J_f(x)||_F, Rifai's saturation SAT and the
singular values of J_f) is measured in aelab.metrics.contraction.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import penalties
from .ae import ACTIVATIONS, AE, reconstruction_loss


class TiedDecoder(nn.Module):
    """The mirror of an MLP encoder with W' = W^T: logits = W_1^T act(... act(W_L^T z + c_L) ...) + c_1.

    Holds only its biases; the weights are read from the encoder at each call, so they get
    both gradients (one parameter, two uses) and the state dict has no duplicate tensor.
    """

    def __init__(self, encoder: nn.Sequential, activation: str):
        super().__init__()
        linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
        self._encoder_linears = tuple(reversed(linears))  # a tuple, not a ModuleList: not registered twice
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(m.in_features)) for m in self._encoder_linears])
        self.act = ACTIVATIONS[activation]()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        last = len(self.biases) - 1
        for i, (linear, bias) in enumerate(zip(self._encoder_linears, self.biases)):
            z = F.linear(z, linear.weight.t(), bias)
            if i < last:
                z = self.act(z)
        return z


class _CodeAE(AE):
    """AE with a nonlinear code by default (784-1000 sigmoid) and optionally tied weights."""

    def __init__(self, input_shape, hidden, latent, loss, activation, tied, encoder, decoder):
        if tied and (encoder is not None or decoder is not None):
            raise ValueError("tied=True ties the built-in encoder and decoder; it does not apply to user modules")
        super().__init__(
            input_shape=input_shape,
            hidden=hidden,
            latent=latent,
            loss=loss,
            activation=activation,
            encoder=encoder,
            decoder=decoder,
        )
        if tied:
            self.decoder = TiedDecoder(self.encoder, activation)
        custom = {k: v for k, v in self.options.items() if k in ("encoder", "decoder")}
        self.options = dict(
            input_shape=list(input_shape),
            hidden=[int(h) for h in hidden],
            latent=latent,
            loss=loss,
            activation=activation,
            tied=bool(tied),
            **custom,
        )


class CAE(_CodeAE):
    """Contractive autoencoder: reconstruction + lam * ||J_f(x)||_F^2 (Rifai et al., ICML 2011).

    penalty: "auto" (closed form from the forward pass for one Linear +
    sigmoid|tanh|relu encoder, exact autodiff otherwise), "analytic", "exact" or
    "hutchinson" (k Gaussian probes). loss_terms: loss, recon, jacobian_sq (the batch
    mean of ||J_f||_F^2).
    """

    name = "cae"

    def __init__(
        self,
        input_shape=(1, 28, 28),
        hidden=(1000,),
        latent: int | None = None,
        loss: str = "bce",
        activation: str = "sigmoid",
        lam: float = 1.0,
        penalty: str = "auto",
        k: int = 8,
        tied: bool = False,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ):
        super().__init__(input_shape, hidden, latent, loss, activation, tied, encoder, decoder)
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        if penalty not in penalties.METHODS:
            raise ValueError(f"unknown penalty {penalty!r}; choose from {', '.join(penalties.METHODS)}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        # (linear, activation name) when the penalty comes from the forward pass's own activations
        pattern = penalties.single_layer_pattern(self.encoder)
        self._analytic = pattern[1:] if pattern is not None and penalty in ("auto", "analytic") else None
        if penalty == "analytic" and self._analytic is None:
            raise ValueError(
                "penalty='analytic' needs a one-layer encoder (hidden=[H], latent=None, activation "
                "sigmoid|tanh|relu); use penalty='exact' or 'hutchinson'"
            )
        self.options.update(lam=float(lam), penalty=penalty, k=k)

    @property
    def penalty_used(self) -> str:
        """Which computation of ||J_f(x)||_F^2 this model runs: the closed form applies only to a one-layer
        Linear + sigmoid|tanh|relu encoder; any other encoder (a user's conv net too) gets the exact one."""
        if self._analytic is not None:
            return "analytic"
        return "hutchinson" if self.options["penalty"] == "hutchinson" else "exact"

    def code_and_penalty(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(code (N, d_code), ||J_f(x_n)||_F^2 (N,)), both differentiable."""
        # the closed form is for a Linear layer on flat input ([Flatten,] Linear, act); a user's encoder
        # otherwise takes the images as they are
        x = x.flatten(1) if (self.flatten_input or self._analytic is not None) else x
        if self._analytic is not None:
            linear, activation = self._analytic
            preact = linear(x)
            code = self.encoder[-1](preact)
            # relu's slope is 1[a > 0]: pass the pre-activation; sigmoid/tanh slopes are functions of h
            return code, penalties.analytic_from_activations(
                preact if activation == "relu" else code, linear.weight, activation
            )
        code = self.encoder(x)
        method = self.options["penalty"]
        return code, penalties.jacobian_frobenius_sq(self.encoder, x, method=method, k=self.options["k"])

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        code, jac_sq = self.code_and_penalty(x)
        recon = reconstruction_loss(self.decode_logits(code), x, self.options["loss"], logits=True).mean()
        jacobian_sq = jac_sq.mean()
        return {"loss": recon + self.options["lam"] * jacobian_sq, "recon": recon, "jacobian_sq": jacobian_sq}


class DAE(_CodeAE):
    """Denoising autoencoder: reconstruct the clean x from a corrupted x~ (Vincent et al., ICML 2008).

    noise "gaussian": x~ = x + level * eps, eps ~ N(0, I) (not clipped);
    noise "masking":  x~ = x with round(level * D) pixels per image, chosen uniformly
    without replacement, set to 0. encode() uses the clean input.
    """

    name = "dae"

    def __init__(
        self,
        input_shape=(1, 28, 28),
        hidden=(1000,),
        latent: int | None = None,
        loss: str = "bce",
        activation: str = "sigmoid",
        noise: str = "gaussian",
        level: float = 0.3,
        tied: bool = False,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ):
        super().__init__(input_shape, hidden, latent, loss, activation, tied, encoder, decoder)
        if noise not in ("gaussian", "masking"):
            raise ValueError(f"unknown noise {noise!r}; choose from gaussian, masking")
        if not (isinstance(level, (int, float)) and math.isfinite(level) and level >= 0):
            raise ValueError(f"level must be a finite number >= 0, got {level!r}")
        if noise == "masking" and level > 1:
            raise ValueError(f"masking level is the fraction of pixels dropped, in [0, 1]; got {level!r}")
        self.options.update(noise=noise, level=float(level))

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        level = self.options["level"]
        if self.options["noise"] == "gaussian":
            return x + level * torch.randn_like(x)
        flat = x.flatten(1)
        n_drop = round(level * flat.shape[1])
        # the first n_drop entries of a uniform random permutation per image
        dropped = torch.rand(flat.shape, device=x.device).argsort(1)[:, :n_drop]
        mask = torch.ones_like(flat).scatter_(1, dropped, 0.0)
        return (flat * mask).view_as(x)

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """loss = recon: the reconstruction of the clean x from a corrupted copy; recon_clean: from x itself."""
        logits = self.decode_logits(self.encode(self.corrupt(x)))
        loss = reconstruction_loss(logits, x, self.options["loss"], logits=True).mean()
        clean = reconstruction_loss(self.decode_logits(self.encode(x)), x, self.options["loss"], logits=True).mean()
        return {"loss": loss, "recon": loss, "recon_clean": clean}
