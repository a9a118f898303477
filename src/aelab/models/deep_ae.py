"""The deep autoencoder of Hinton & Salakhutdinov (2006), unrolled from a stack of RBMs.

A stack of RBMs 784-1000-500-250-30 is pretrained greedily, each on the hidden probabilities of
the one below, the top one with linear (Gaussian) hidden units. Unrolling gives an encoder
x -> sigmoid(x W1 + c1) -> ... -> z = h W4 + c4 (linear code) and a decoder that uses the
transposed weights and visible biases in reverse order, all logistic, output included. After
unrolling the decoder weights are untied copies, and the whole net is fine-tuned by backprop.

Reference: G. E. Hinton & R. R. Salakhutdinov (2006) Reducing the dimensionality of data with neural
networks, Science 313:504, and their Matlab code (mnistdeepauto.m, backprop.m).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from .ae import WEIGHT_LAYERS, check_positive_sizes, reconstruction_loss
from .base import Autoencoder
from .rbm import RBM, pretrain_stack

PRETRAIN_BATCH = 100  # Hinton's RBM batch; under DDP each rank takes its equal share of it


LAYER_PRESETS = {
    "hinton2006": (784, 1000, 500, 250, 30),  # Science 2006, MNIST
    "assignment": (784, 2000, 1000, 500, 30),
    "map2d": (784, 1000, 500, 250, 2),  # 2-D codes for visualisation
}


class DeepAutoencoder(Autoencoder):
    """Deep autoencoder of Hinton & Salakhutdinov (2006), model name "deep-ae".

    layers = (d, n1, ..., n_code), d = C*H*W, or a preset name ("hinton2006", "assignment", "map2d").
    init = "random" or "rbm": with "rbm", `needs_pretraining` is True and the trainer calls
    `pretrain(train_images, seed=...)` (`pretrain_epochs` per layer) once, before fine-tuning.
    Weights are kept in the RBM orientation, W_i of shape (layers[i], layers[i+1]):
        encoder  h_{i+1} = sigmoid(h_i W_i + c_i), except the code z = h W_top + c_top (linear);
        decoder  h_i = sigmoid(h_{i+1} D_i^T + b_i) in reverse order, output logistic too.
    D_i starts as a copy of W_i after `load_rbms` (untied, as in the paper) and is independent
    otherwise. Random init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases (as nn.Linear).
    Loss per image, summed over pixels, averaged over the batch: bce = cross-entropy of the logistic
    outputs (the paper's fine-tuning objective), mse = sum of squared errors. weight_decay = lambda adds
    lambda * sum of squared weights (biases excluded) to the fine-tuning loss; the "recon" term stays the
    reconstruction loss alone.
    """

    name = "deep-ae"
    has_mlp_encoder = False  # its encoder is a list of weights, differentiated through encode()

    def __init__(
        self,
        input_shape=(1, 28, 28),
        layers: Sequence[int] | str = "hinton2006",
        loss: str = "bce",
        init: str = "random",
        pretrain_epochs: int = 50,
        weight_decay: float = 0.0,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ):
        super().__init__()
        if init not in ("random", "rbm"):
            raise ValueError(f"unknown init {init!r}; choose from random, rbm")
        check_positive_sizes(pretrain_epochs=pretrain_epochs)
        if not (isinstance(weight_decay, (int, float)) and not isinstance(weight_decay, bool) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
        if not math.isfinite(weight_decay):
            raise ValueError(f"weight_decay must be finite, got {weight_decay!r}")
        if isinstance(layers, str):
            if layers not in LAYER_PRESETS:
                raise ValueError(f"unknown layers preset {layers!r}; choose from {', '.join(LAYER_PRESETS)}")
            sizes = list(LAYER_PRESETS[layers])
        else:
            sizes = [int(s) for s in layers]
        check_positive_sizes(layers=sizes)
        if loss not in ("mse", "bce"):
            raise ValueError(f"unknown loss {loss!r}; choose from bce, mse")
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(sizes) < 2 or sizes[0] != math.prod(self.input_shape):
            raise ValueError(f"layers must start with C*H*W = {math.prod(self.input_shape)}, got {sizes}")
        self.options = dict(
            input_shape=list(self.input_shape),
            layers=layers if isinstance(layers, str) else sizes,
            loss=loss,
            init=init,
            pretrain_epochs=pretrain_epochs,
            weight_decay=weight_decay,
        )
        self.layers = sizes
        self.latent = sizes[-1]
        pairs = list(zip(sizes[:-1], sizes[1:]))
        uniform = lambda shape, fan_in: nn.Parameter(torch.empty(shape).uniform_(-(fan_in**-0.5), fan_in**-0.5))  # noqa: E731
        self.encoder_weights = nn.ParameterList([uniform((nv, nh), nv) for nv, nh in pairs])
        self.encoder_biases = nn.ParameterList([uniform((nh,), nv) for nv, nh in pairs])
        self.decoder_weights = nn.ParameterList([uniform((nv, nh), nh) for nv, nh in pairs])
        self.decoder_biases = nn.ParameterList([uniform((nv,), nh) for nv, nh in pairs])
        if encoder is not None or decoder is not None:
            if init == "rbm":
                raise ValueError("init='rbm' pretrains the built-in layers; with user modules use init='random'")
            self.latent = self.install_custom_modules(encoder, decoder)

    @classmethod
    def from_rbms(cls, rbms: Sequence[RBM], input_shape=None, loss: str = "bce") -> DeepAutoencoder:
        """Unroll a pretrained stack; input_shape defaults to (1, s, s) with s*s = n_visible."""
        if input_shape is None:
            side = math.isqrt(rbms[0].n_visible)
            if side * side != rbms[0].n_visible:
                raise ValueError("give input_shape: n_visible is not a square")
            input_shape = (1, side, side)
        model = cls(input_shape=input_shape, layers=[rbms[0].n_visible] + [r.n_hidden for r in rbms], loss=loss)
        w = rbms[0].weight
        return model.to(device=w.device, dtype=w.dtype).load_rbms(rbms)

    @torch.no_grad()
    def load_rbms(self, rbms: Sequence[RBM]) -> DeepAutoencoder:
        """Copy the weights of an RBM stack in: encoder (W_i, c_i), decoder (W_i, b_i) as untied copies."""
        sizes = [rbms[0].n_visible] + [r.n_hidden for r in rbms] if rbms else []
        if sizes != self.layers:
            raise ValueError(f"RBM stack {sizes} does not match layers {self.layers}")
        kinds = [r.hidden for r in rbms]
        if kinds[-1] != "gaussian" or any(kind != "bernoulli" for kind in kinds[:-1]):
            raise ValueError(f"need Bernoulli hidden units below a Gaussian (linear) top layer, got {kinds}")
        for i, rbm in enumerate(rbms):
            self.encoder_weights[i].copy_(rbm.weight)
            self.encoder_biases[i].copy_(rbm.hidden_bias)
            self.decoder_weights[i].copy_(rbm.weight)
            self.decoder_biases[i].copy_(rbm.visible_bias)
        return self

    @property
    def needs_pretraining(self) -> bool:
        return self.options["init"] == "rbm"

    def pretrain(
        self,
        train_images: torch.Tensor,
        *,
        seed: int | None = None,
        log: Callable[[str], None] | None = None,
        allreduce: Callable[[list[torch.Tensor]], None] | None = None,
        world: int = 1,
        epochs_per_layer: int | None = None,
        generator: torch.Generator | None = None,
        progress: str | None = None,
        **fit_kwargs,
    ) -> list[RBM]:
        """Greedy RBM pretraining on the flattened images (`pretrain_stack`), then load the weights.

        The trainer's hook: pretrain(train_x, seed=..., log=...). Under DDP it passes this rank's equal share
        of the images, `allreduce` (averages the CD statistics of every batch across ranks) and the world
        size: each rank then takes PRETRAIN_BATCH / world images per batch, so that a global batch is
        Hinton's 100. Epochs per layer default to the model's `pretrain_epochs` option. `progress`: the label
        of a tqdm bar over the epochs (the run's name), None for none."""
        if epochs_per_layer is None:
            epochs_per_layer = self.options["pretrain_epochs"]
        if generator is None and seed is not None:
            generator = torch.Generator(device=self.encoder_weights[0].device).manual_seed(seed)
        if allreduce is not None:
            fit_kwargs.update(allreduce=allreduce, batch_size=max(1, PRETRAIN_BATCH // world))
        p = self.encoder_weights[0]
        rbms = pretrain_stack(
            train_images.flatten(1).to(device=p.device, dtype=p.dtype),
            sizes=self.layers,
            epochs=epochs_per_layer,
            top_hidden="gaussian",
            generator=generator,
            log=log,
            progress=progress,
            **fit_kwargs,
        )
        self.load_rbms(rbms)
        return rbms

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if "encoder" in self._modules:  # a user's encoder
            return self.encoder(x)
        h = x.flatten(1)
        top = len(self.encoder_weights) - 1
        for i, (W, c) in enumerate(zip(self.encoder_weights, self.encoder_biases)):
            h = torch.addmm(c, h, W)
            if i < top:  # the code layer is linear
                h = torch.sigmoid(h)
        return h

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        if "decoder" in self._modules:  # a user's decoder
            return self.decoder(z).flatten(1)
        h = z
        for i in reversed(range(len(self.decoder_weights))):
            h = torch.addmm(self.decoder_biases[i], h, self.decoder_weights[i].t())
            if i > 0:
                h = torch.sigmoid(h)
        return h

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode_logits(z)).reshape(-1, *self.input_shape)

    def weight_penalty(self) -> torch.Tensor:
        """Sum of squared weights, encoder and decoder (biases excluded): Hinton's weight cost, here in
        fine-tuning too. A user's modules contribute the weights of their Linear and conv layers."""
        weights = [*self.encoder_weights, *self.decoder_weights]
        weights += [m.weight for m in self.modules() if isinstance(m, WEIGHT_LAYERS)]
        return sum(w.pow(2).sum() for w in weights)

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        recon = reconstruction_loss(self.decode_logits(self.encode(x)), x, self.options["loss"], logits=True).mean()
        terms = {"recon": recon, "loss": recon}
        if self.options["weight_decay"]:
            terms["loss"] = recon + self.options["weight_decay"] * self.weight_penalty()
        return terms
