"""The one interface every aelab model implements, written down once.

    class MyAE(Autoencoder):
        name = "my-ae"                     # registry name, written to model.json
        def __init__(self, input_shape=(1, 28, 28), ...):   # JSON-serialisable options only
            super().__init__()
            self.options = dict(input_shape=list(input_shape), ...)   # MyAE(**options) rebuilds it
        def encode(self, x): ...           # (N, C, H, W) -> code (N, d_code)
        def decode(self, z): ...           # code -> images (N, C, H, W) in [0, 1]
        def loss_terms(self, x): ...       # {"loss": ..., "recon": ..., other terms}

`loss_terms(x)` returns scalars averaged over the batch:
    loss   the training objective (what the trainer minimises)
    recon  the reconstruction term, per image and SUMMED over pixels: squared error for "mse",
           nats for "bce" (Bernoulli cross-entropy) and for the VAE's likelihoods
and any model-specific terms (kl, elbo, jacobian_sq, ...), in the units their model documents.

Optional capabilities are declared, not probed: a class sets the flag and implements the methods.
    can_sample           sample(n, generator) -> images, interpolate(x_a, x_b, steps) -> images
    has_likelihood       iwae_log_likelihood(x, k, generator) -> log p(x) per image, nats
    has_posterior_kl     kl_per_dimension(x) -> (latent,) KL(q(z_j|x) || p(z_j)) per code dimension, mean over x, nats
    has_mlp_encoder      encode(x) == encoder(x.flatten(1)) for an nn.Sequential `encoder`: the contraction
                         diagnostics (Jacobian norms, saturation, spectrum) apply
    binary_code          encode() returns {0, 1} codes (Hamming retrieval applies)
    needs_pretraining    (an instance property) the trainer calls pretrain(train_x, ...) before fine-tuning
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn as nn


class Autoencoder(nn.Module):
    name: ClassVar[str] = ""
    can_sample: ClassVar[bool] = False
    has_likelihood: ClassVar[bool] = False
    has_posterior_kl: ClassVar[bool] = False
    has_mlp_encoder: ClassVar[bool] = False
    binary_code: ClassVar[bool] = False

    options: dict[str, Any]
    input_shape: tuple[int, ...]

    @property
    def needs_pretraining(self) -> bool:
        return False

    def pretrain(
        self,
        train_x: torch.Tensor,
        *,
        seed: int,
        log: Callable[[str], None] | None = None,
        allreduce: Callable[[list[torch.Tensor]], None] | None = None,
        world: int = 1,
        progress: str | None = None,
    ) -> None:
        """Model-specific pretraining before the trainer's epochs (see DeepAutoencoder); `progress` labels its
        progress bar (the run's name), None for no bar."""
        raise NotImplementedError(f"{type(self).__name__} has no pretraining")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.loss_terms(x)["loss"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
