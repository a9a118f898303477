"""Binary autoencoder: a conv AE whose code is a vector of {0, 1} bits, trained with straight-through estimators.

Forward pass of the bottleneck: b = 1[a > 0] for the encoder's pre-activation a (so a = 0 gives 0).
The step has zero derivative almost everywhere, so the backward pass substitutes a surrogate
("straight-through estimator", STE). With g = dL/db the incoming gradient, `backward` selects:

    identity          dL/da = g                          plain STE (Bengio, Leonard & Courville 2013,
                                                         "Estimating or propagating gradients through
                                                         stochastic neurons", arXiv:1308.3432)
    clipped           dL/da = g * 1[|a| <= 1]            the hardtanh derivative, as in BinaryNet
                                                         (Courbariaux, Hubara et al. 2016, arXiv:1602.02830);
                                                         BinaryNet binarizes to sign(a) in {-1, +1}; for our
                                                         {0, 1} = (sign + 1)/2 the exact analogue would carry a
                                                         factor 1/2, which we drop (it only rescales the step)
    sigmoid-adjusted  dL/da = g * s sigma(s a)(1 - sigma(s a))
                                                         derivative of the sigmoid of slope s: the
                                                         sigmoid-adjusted STE of Chung, Ahn & Bengio (2016,
                                                         "Hierarchical multiscale RNNs", arXiv:1609.01704),
                                                         with a fixed slope instead of their annealed one
    clip-grad-values  dL/da = clamp(g, -1, 1)            what the popular STE blog post does
                                                         (backward returns F.hardtanh(grad_output))

"clipped" and "clip-grad-values" are easy to confuse but are different estimators. "clipped" gates on the
INPUT: it passes g unchanged where the pre-activation is inside [-1, 1] and blocks it (0) where the unit is
saturated, |a| > 1, whatever the size of g. "clip-grad-values" looks only at the GRADIENT: it passes every
gradient, whatever a is, but caps its magnitude at 1 -- it is gradient-value clipping, not the hardtanh
derivative. For |g| <= 1 it is identical to the plain identity STE.

Retrieval evaluation (semantic hashing, Salakhutdinov & Hinton 2009) lives in aelab.metrics.retrieval.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .ae import check_positive_sizes, reconstruction_loss
from .base import Autoencoder

BACKWARD_RULES = ["identity", "clipped", "sigmoid-adjusted", "clip-grad-values"]


class BinarizeSTE(torch.autograd.Function):
    """b = 1[a > 0] forward; the backward surrogate selected by `rule` (see the module docstring)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, rule: str, slope: float) -> torch.Tensor:
        ctx.save_for_backward(a)
        ctx.rule = rule
        ctx.slope = slope
        return (a > 0).to(a.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (a,) = ctx.saved_tensors
        if ctx.rule == "identity":
            grad_in = grad_out
        elif ctx.rule == "clipped":
            grad_in = grad_out * (a.abs() <= 1).to(grad_out.dtype)
        elif ctx.rule == "sigmoid-adjusted":
            s = torch.sigmoid(ctx.slope * a)
            grad_in = grad_out * ctx.slope * s * (1 - s)
        else:  # "clip-grad-values"
            grad_in = grad_out.clamp(-1.0, 1.0)
        return grad_in, None, None


def binarize(a: torch.Tensor, backward: str = "identity", slope: float = 1.0) -> torch.Tensor:
    """{0, 1} code 1[a > 0] (same dtype as a) whose gradient follows the STE rule `backward`.

    `slope` is used only by "sigmoid-adjusted": the surrogate is d/da sigma(slope * a).
    """
    if backward not in BACKWARD_RULES:
        raise ValueError(f"unknown backward rule {backward!r}; choose from {', '.join(BACKWARD_RULES)}")
    return BinarizeSTE.apply(a, backward, float(slope))


def conv_out(size: int) -> int:
    """Spatial size after Conv2d(kernel 4, stride 2, padding 1): floor((size + 2 - 4) / 2) + 1 = floor(size / 2)."""
    return (size + 2 - 4) // 2 + 1


class BinaryAE(Autoencoder):
    """Conv autoencoder with a `bits`-bit binary bottleneck (or a sigmoid float code of the same size).

    encoder: Conv(C->c1, k4 s2 p1) ReLU Conv(c1->c2, k4 s2 p1) ReLU flatten Linear [BatchNorm] -> a (bits)
    code:    b = binarize(a, backward)  in {0, 1}^bits      (float_bottleneck: b = sigmoid(a) in (0, 1)^bits)
    decoder: Linear -> c2 x h2 x w2, ReLU, ConvT(c2->c1, k4 s2 p1) ReLU ConvT(c1->C, k4 s2 p1) -> sigmoid

    Each k4 s2 p1 conv maps a size n to floor(n/2) and each transposed conv maps m to 2m; an output_padding
    of 1 restores odd sizes, so any H, W >= 4 works: 28 -> 14 -> 7, 8 -> 4 -> 2, 9 -> 4 -> 2 (-> 4 -> 9).

    code_norm="batchnorm" (default) standardises each pre-activation over the batch (BatchNorm1d without
    affine parameters; running statistics in eval mode, so encode the database in eval mode) before the
    threshold; "none" leaves a as the Linear output. The float baseline uses the same normalisation.
    In training mode a batch of one image is an error (BatchNorm needs two values per bit).

    loss (per image, summed over pixels and channels, then mean over the batch), as in ae.py:
        mse: sum (x - x_hat)^2          bce: -sum x log x_hat + (1 - x) log(1 - x_hat)
    """

    name = "binary"
    binary_code = True  # {0, 1} codes; the float baseline's sigmoid code is thresholded at 0.5 for retrieval

    def __init__(
        self,
        input_shape=(1, 28, 28),
        bits: int = 512,
        backward: str = "identity",
        loss: str = "mse",
        float_bottleneck: bool = False,
        slope: float = 1.0,
        channels=(32, 64),
        code_norm: str = "batchnorm",
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ):
        super().__init__()
        channels = [int(c) for c in channels]
        check_positive_sizes(bits=bits, channels=channels)
        if len(channels) != 2:
            raise ValueError(f"channels must be two integers (one per conv layer), got {channels!r}")
        if backward not in BACKWARD_RULES:
            raise ValueError(f"unknown backward rule {backward!r}; choose from {', '.join(BACKWARD_RULES)}")
        if loss not in ("mse", "bce"):
            raise ValueError(f"unknown loss {loss!r}; choose from bce, mse")
        if code_norm not in ("batchnorm", "none"):
            raise ValueError(f"unknown code_norm {code_norm!r}; choose from batchnorm, none")
        if not slope > 0:
            raise ValueError(f"slope must be positive, got {slope!r}")
        c, h, w = (int(s) for s in input_shape)
        if min(h, w) < 4:
            raise ValueError(f"input height and width must be at least 4, got {tuple(input_shape)}")
        self.options = dict(
            input_shape=[c, h, w],
            bits=bits,
            backward=backward,
            loss=loss,
            float_bottleneck=bool(float_bottleneck),
            slope=float(slope),
            channels=channels,
            code_norm=code_norm,
        )
        self.input_shape = (c, h, w)
        self.bits = bits
        c1, c2 = channels
        h1, w1 = conv_out(h), conv_out(w)
        h2, w2 = conv_out(h1), conv_out(w1)
        self.hidden_shape = (c2, h2, w2)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, c1, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c2 * h2 * w2, bits),
        )
        if code_norm == "batchnorm":
            # Why: without it the codes collapse. Early in training dL/db is nearly the same for every image
            # ("make the output darker"), the STE pushes every a_j the same way without bound (no saturation),
            # and all images end up with ONE code: on 256 sklearn digits, 16 bits, Adam 1e-3, every rule
            # stalled at the mean-image error with |a| in the thousands; on mnist5k, 64 bits, 3 epochs, the
            # 4000 training images shared 2-3 codes (retrieval mAP 0.10-0.14, chance). Standardising each
            # bit over the batch keeps a_j centred, so each bit stays on for about half the images
            # (same runs with it: ~3900 distinct codes, mAP 0.48-0.50).
            self.encoder.append(nn.BatchNorm1d(bits, affine=False))
        # output_padding = 1 where the conv floored an odd size, so the decoder returns exactly (C, H, W)
        self.decoder = nn.Sequential(
            nn.Linear(bits, c2 * h2 * w2),
            nn.ReLU(),
            nn.Unflatten(1, (c2, h2, w2)),
            nn.ConvTranspose2d(c2, c1, 4, 2, 1, output_padding=(h1 - 2 * h2, w1 - 2 * w2)),
            nn.ReLU(),
            nn.ConvTranspose2d(c1, c, 4, 2, 1, output_padding=(h - 2 * h1, w - 2 * w1)),
        )
        if encoder is not None or decoder is not None:
            self._install(encoder, decoder, code_norm)

    def _install(self, encoder: nn.Module | None, decoder: nn.Module | None, code_norm: str) -> None:
        """User modules: the encoder returns the pre-activation a (N, bits) that the bottleneck thresholds,
        followed here by the same batchnorm as the built-in one; the code size comes from a forward pass."""
        self.bits = self.install_custom_modules(encoder, decoder)
        if encoder is not None and code_norm == "batchnorm":
            self.encoder = nn.Sequential(encoder, nn.BatchNorm1d(self.bits, affine=False))
        self.options["bits"] = self.bits

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder output a (N, bits) that the bottleneck thresholds (after the batchnorm, if any)."""
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """{0, 1} code (float tensor, N x bits); the sigmoid float code when float_bottleneck."""
        a = self.pre_activation(x)
        if self.options["float_bottleneck"]:
            return torch.sigmoid(a)
        return binarize(a, self.options["backward"], self.options["slope"])

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).reshape(-1, *self.input_shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode_logits(z))

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Terms "loss" = "recon" (the training objective) and "recon_sse" (per-image sum of squared errors,
        mean over the batch, reported for both losses so that mse and bce runs can be compared)."""
        logits = self.decode_logits(self.encode(x))
        recon = reconstruction_loss(logits, x, self.options["loss"], logits=True).mean()
        sse = (torch.sigmoid(logits) - x).pow(2).flatten(1).sum(1).mean()
        return {"loss": recon, "recon": recon, "recon_sse": sse}
