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

User-supplied networks: every model takes `encoder=` and `decoder=` nn.Modules in place of its own
(`install_custom_modules`). They see the images as they are, (N, C, H, W); the encoder returns the code
(N, d) (the VAE's returns a (mean, log-variance) pair, the binary AE's the pre-activation it thresholds)
and the decoder returns logits, any shape with C*H*W values per image. model.json records them by class
name only (no pickle), so `load_model(run, encoder=..., decoder=...)` needs the same modules again.

Optional capabilities are declared, not probed: a class sets the flag and implements the methods.
    can_sample           sample(n, generator) -> images, interpolate(x_a, x_b, steps) -> images
    has_likelihood       iwae_log_likelihood(x, k, generator) -> log p(x) per image, nats
    has_partition_function  an `rbm` attribute, a binary aelab.models.rbm.RBM: evaluate reports log p(x) = -F(x) - log Z
                         with log Z by AIS, and exactly when small (aelab.metrics.rbm_likelihood)
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

CUSTOM_PREFIX = "custom:"


def custom_name(module: nn.Module) -> str:
    """How model.json and config.json name a user-supplied module: its class, for people; never rebuilt."""
    cls = type(module)
    return f"{CUSTOM_PREFIX}{cls.__module__}.{cls.__qualname__}"


class Autoencoder(nn.Module):
    name: ClassVar[str] = ""
    flatten_input: bool = True  # the built-in encoders take (N, C*H*W); user modules take (N, C, H, W)
    custom_decoder: bool = False
    can_sample: ClassVar[bool] = False
    has_likelihood: ClassVar[bool] = False
    has_partition_function: ClassVar[bool] = False
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

    def install_custom_modules(self, encoder: nn.Module | None, decoder: nn.Module | None) -> int:
        """Put user modules in place of the built-in encoder/decoder; check them with a forward pass on two
        blank images and return the code size. Raises ValueError (bad input) with what does not fit."""
        for role, module in (("encoder", encoder), ("decoder", decoder)):
            if module is None:
                continue
            if not isinstance(module, nn.Module):
                raise ValueError(f"{role} must be a torch.nn.Module, got {type(module).__name__}")
            setattr(self, role, module)
            # named by import path (models.imports): recorded so, and rebuilt from model.json with no flags
            self.options[role] = getattr(module, "_aelab_import_spec", None) or custom_name(module)
        if encoder is not None:
            self.flatten_input = False
            self.has_mlp_encoder = False  # the contraction diagnostics assume encoder(x.flatten(1))
        if decoder is not None:
            self.custom_decoder = True
        return self.check_shapes()

    @torch.no_grad()
    def check_shapes(self) -> int:
        """encode -> decode on two blank images (eval mode, so batch statistics are not touched): the code
        must be (2, d) and the reconstruction C*H*W values per image. Returns d."""
        p = next(iter(self.parameters()), None)
        x = torch.zeros(
            2, *self.input_shape, device=None if p is None else p.device, dtype=None if p is None else p.dtype
        )
        was_training = self.training
        self.eval()
        try:
            try:
                code = self.encode(x)
            except Exception as e:
                raise ValueError(f"the encoder fails on images of shape {tuple(self.input_shape)}: {e}") from None
            if not isinstance(code, torch.Tensor) or code.dim() != 2 or len(code) != 2:
                shape = tuple(code.shape) if isinstance(code, torch.Tensor) else type(code).__name__
                raise ValueError(f"the encoder must return codes (N, d); for 2 images it returned {shape}")
            try:
                out = self.decode(code)
            except Exception as e:
                raise ValueError(f"the decoder fails on codes of shape {tuple(code.shape)}: {e}") from None
            if out.shape != torch.Size((2, *self.input_shape)):
                raise ValueError(f"the decoder returns {tuple(out.shape)} for images {tuple(self.input_shape)}")
        finally:
            self.train(was_training)
        return code.shape[1]

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.loss_terms(x)["loss"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
