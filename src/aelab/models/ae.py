"""The plain MLP autoencoder.

x (C·H·W pixels) -> hidden layers with ReLU -> linear code z -> mirrored hidden
layers with ReLU -> sigmoid output x_hat in [0, 1].

The loss is per image and summed over pixels, then averaged over the batch:
    mse: sum_i (x_i - x_hat_i)^2          (the "recon_sse" unit of Hinton & Salakhutdinov 2006)
    bce: -sum_i x_i log x_hat_i + (1 - x_i) log(1 - x_hat_i)
Summing over pixels (not averaging) keeps the loss in the same unit as the
VAE's reconstruction term, in nats for bce.

`weight_decay` adds lambda * sum of squared weights (biases excluded) to the
loss: the "AE+wd" baseline of Rifai et al. (2011).

`activation` is the nonlinearity of the hidden layers (relu by default). With
`latent=None` the last hidden layer, after its activation, is the code: e.g.
hidden=(1000,), activation="sigmoid", latent=None is the one-layer 784-1000
sigmoid autoencoder of Rifai et al. (2011), encoder sigmoid(W x + b).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Autoencoder

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "elu": nn.ELU, "softplus": nn.Softplus}


def mlp(sizes: list[int], activation: str = "relu", final_activation: str | None = None) -> nn.Sequential:
    """Linear layers sizes[0] -> ... -> sizes[-1], `activation` between them, `final_activation` after the last."""
    if activation not in ACTIVATIONS or (final_activation is not None and final_activation not in ACTIVATIONS):
        raise ValueError(f"unknown activation; choose from {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        last = i == len(sizes) - 2
        if not last:
            layers.append(ACTIVATIONS[activation]())
        elif final_activation is not None:
            layers.append(ACTIVATIONS[final_activation]())
    return nn.Sequential(*layers)


def reconstruction_loss(
    x_hat_or_logits: torch.Tensor, x: torch.Tensor, kind: str, logits: bool = False
) -> torch.Tensor:
    """Per-image reconstruction loss (N,), summed over pixels."""
    x = x.flatten(1)
    out = x_hat_or_logits.flatten(1)
    if kind == "mse":
        x_hat = torch.sigmoid(out) if logits else out
        return (x_hat - x).pow(2).sum(1)
    if kind == "bce":
        if logits:  # numerically stable form, the one we use in training
            return F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(1)
        return F.binary_cross_entropy(out.clamp(1e-7, 1 - 1e-7), x, reduction="none").sum(1)
    raise ValueError(f"unknown loss {kind!r}; choose from bce, mse")


def check_positive_sizes(**sizes) -> None:
    for name, value in sizes.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if any((not isinstance(v, int)) or v <= 0 for v in values):
            raise ValueError(f"{name} must be positive integers, got {value!r}")


class AE(Autoencoder):
    """MLP autoencoder 784-256-64-20 by default (ReLU inside, sigmoid output)."""

    name = "ae"
    has_mlp_encoder = True  # encode(x) = encoder(x.flatten(1)): the contraction diagnostics apply

    def __init__(
        self,
        input_shape=(1, 28, 28),
        hidden=(256, 64),
        latent: int | None = 20,
        loss: str = "mse",
        weight_decay: float = 0.0,
        activation: str = "relu",
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ):
        super().__init__()
        hidden = [int(h) for h in hidden]
        check_positive_sizes(hidden=hidden)
        if latent is not None:
            check_positive_sizes(latent=latent)
        elif not hidden:
            raise ValueError("latent=None makes the last hidden layer the code, so hidden must not be empty")
        if loss not in ("mse", "bce"):
            raise ValueError(f"unknown loss {loss!r}; choose from bce, mse")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(sorted(ACTIVATIONS))}")
        if not (isinstance(weight_decay, (int, float)) and not isinstance(weight_decay, bool) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
        if not math.isfinite(weight_decay):
            raise ValueError(f"weight_decay must be finite, got {weight_decay!r}")
        self.options = dict(
            input_shape=list(input_shape),
            hidden=hidden,
            latent=latent,
            loss=loss,
            weight_decay=weight_decay,
            activation=activation,
        )
        self.input_shape = tuple(input_shape)
        d = math.prod(self.input_shape)
        if latent is None:  # the code is the last hidden layer's activations
            self.latent = hidden[-1]
            self.encoder = mlp([d, *hidden], activation, final_activation=activation)
            decoder_sizes = [*reversed(hidden), d]
        else:  # a linear code layer after the hidden layers
            self.latent = latent
            self.encoder = mlp([d, *hidden, latent], activation)
            decoder_sizes = [latent, *reversed(hidden), d]
        # the decoder ends in logits; sigmoid is applied in decode(), BCE uses the logits directly
        self.decoder = mlp(decoder_sizes, activation)
        if encoder is not None or decoder is not None:
            self.latent = self.install_custom_modules(encoder, decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1) if self.flatten_input else x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z)).reshape(-1, *self.input_shape)

    def weight_penalty(self) -> torch.Tensor:
        """Sum of squared weights of the linear and conv layers (biases excluded)."""
        return sum(m.weight.pow(2).sum() for m in self.modules() if isinstance(m, WEIGHT_LAYERS))

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        recon = reconstruction_loss(self.decode_logits(self.encode(x)), x, self.options["loss"], logits=True).mean()
        terms = {"recon": recon, "loss": recon}
        if self.options["weight_decay"]:
            terms["loss"] = recon + self.options["weight_decay"] * self.weight_penalty()
        return terms
