"""Variational autoencoder (Kingma & Welling, ICLR 2014) on the MLP of ae.py.

Encoder q(z|x) = N(mu(x), diag(exp(logvar(x)))). The encoder outputs the
log-variance, not sigma through a ReLU: exp() keeps sigma > 0 for any network
output, while a ReLU lets sigma reach 0 and the KL term blow up.

    z = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)           (reparameterisation)
    KL(q || N(0, I)) = -1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))
    -ELBO(x) = E_q[-log p(x|z)] + KL                          (per image, nats)

Likelihood p(x|z): Bernoulli with logits from the decoder ("bce"), or Gaussian
with a fixed std ("gaussian", sigma = `obs_std`), whose -log p includes the
normalising constant so that both are true negative log-likelihoods in nats.

Test log-likelihood by importance sampling (Burda et al., IWAE, ICLR 2016):
    log p(x) >= log 1/k sum_i p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x)
which tightens as k grows (k = 100 at evaluation). Reference points on
binarized MNIST: pythae reproduces 89.78 nats, the IWAE paper reports 86.76.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ae import ACTIVATIONS, check_positive_sizes, mlp
from .base import Autoencoder

LOG_2PI = math.log(2 * math.pi)
IWAE_CHUNK_BYTES = 256 * 2**20  # one decoding step of the IWAE estimate: its logits and activations


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic KL(N(mu_j, exp(logvar_j)) || N(0, 1)) of each dimension j, shape of mu."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic KL(N(mu, exp(logvar)) || N(0, I)) per example, summed over dimensions."""
    return kl_per_dim(mu, logvar).sum(1)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


class VAE(Autoencoder):
    name = "vae"
    can_sample = True
    has_likelihood = True
    has_posterior_kl = True

    def __init__(
        self,
        input_shape=(1, 28, 28),
        hidden=(256, 64),
        latent: int = 20,
        likelihood: str = "bce",
        obs_std: float = 0.1,
        beta: float = 1.0,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        kl_warmup: int = 0,
        activation: str = "relu",
    ):
        super().__init__()
        hidden = [int(h) for h in hidden]
        check_positive_sizes(latent=latent, hidden=hidden)
        if not (isinstance(kl_warmup, int) and not isinstance(kl_warmup, bool) and 0 <= kl_warmup <= 10**6):
            raise ValueError(f"kl_warmup must be a number of epochs in [0, 1e6], got {kl_warmup!r}")
        if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and 0 <= beta < math.inf):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(sorted(ACTIVATIONS))}")
        if likelihood not in ("bce", "gaussian"):
            raise ValueError(f"unknown likelihood {likelihood!r}; choose from bce, gaussian")
        if obs_std <= 0:
            raise ValueError("obs_std must be positive")
        self.options = dict(
            input_shape=list(input_shape),
            hidden=hidden,
            latent=latent,
            likelihood=likelihood,
            obs_std=obs_std,
            beta=beta,
        )
        if kl_warmup:  # recorded only when used: model.json of runs without it stays as it was
            self.options["kl_warmup"] = kl_warmup
        if activation != "relu":  # likewise (Burda et al. 2016 use tanh)
            self.options["activation"] = activation
        self.kl_weight = 1.0  # the warm-up's share of beta in the loss this epoch (start_epoch sets it)
        self.input_shape = tuple(input_shape)
        self.latent = latent
        d = math.prod(self.input_shape)
        self.encoder = mlp([d, *hidden, 2 * latent], activation)  # outputs (mu, logvar)
        self.decoder = mlp([latent, *reversed(hidden), d], activation)  # outputs logits / means before sigmoid
        if encoder is not None or decoder is not None:
            self.latent = self.install_custom_modules(encoder, decoder)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of q(z|x), each (N, latent)."""
        if self.flatten_input:
            return self.encoder(x.flatten(1)).chunk(2, dim=1)
        out = self.encoder(x)  # a user's encoder returns the pair itself
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and out[0].shape == out[1].shape):
            raise ValueError("a VAE encoder must return (mean, log-variance), two tensors of shape (N, latent)")
        return out[0], out[1]

    def decoder_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output flattened per image, for codes (..., latent): a user's decoder sees (N, latent)."""
        if not self.custom_decoder:
            return self.decoder(z)
        return self.decoder(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean: the deterministic code used for probes and maps."""
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder_logits(z)).reshape(-1, *self.input_shape)

    def neg_log_likelihood(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per sample, summed over pixels; logits (..., D) and x broadcast against each other."""
        logits, x = torch.broadcast_tensors(logits, x)
        if self.options["likelihood"] == "bce":
            return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        s = self.options["obs_std"]
        d = x.shape[-1]
        return 0.5 * ((torch.sigmoid(logits) - x).pow(2).sum(-1) / s**2) + d * (math.log(s) + 0.5 * LOG_2PI)

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = self.posterior(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        recon = self.neg_log_likelihood(x.flatten(1), self.decoder_logits(z)).mean()
        kl = kl_to_standard_normal(mu, logvar).mean()
        # beta (and the warm-up) weight the KL in the loss only; the reported ELBO stays the beta = 1 bound
        loss = recon + self.options["beta"] * self.kl_weight * kl
        return {"loss": loss, "elbo": -(recon + kl), "recon": recon, "kl": kl}

    def start_epoch(self, epoch: int) -> None:
        """KL warm-up (Sønderby et al. 2016; Bowman et al. 2016): the KL's weight in the loss rises linearly,
        (epoch + 1) / kl_warmup for the first kl_warmup epochs (counted from 0), then stays at 1."""
        warmup = self.options.get("kl_warmup", 0)
        self.kl_weight = min(1.0, (epoch + 1) / warmup) if warmup else 1.0

    @torch.no_grad()
    def kl_per_dimension(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """KL(q(z_j|x) || N(0, 1)) of each latent dimension j, averaged over the images x: (latent,) float64, nats.
        They sum to the mean KL term; a dimension with KL near 0 carries no information about x (an inactive
        unit: its posterior is the prior whatever the image)."""
        total = torch.zeros(self.latent, dtype=torch.float64, device=x.device)
        for xb in x.split(batch_size):
            total += kl_per_dim(*self.posterior(xb)).double().sum(0)
        return total / len(x)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        p = next(self.parameters())
        z = torch.randn(n, self.latent, generator=generator, device=p.device, dtype=p.dtype)
        return self.decode(z)

    @torch.no_grad()
    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10) -> torch.Tensor:
        """Decode the straight line between the posterior means of two images."""
        z_a, z_b = self.encode(x_a[None]), self.encode(x_b[None])
        t = torch.linspace(0, 1, steps, device=z_a.device, dtype=z_a.dtype)[:, None]
        return self.decode((1 - t) * z_a + t * z_b)

    @torch.no_grad()
    def iwae_log_likelihood(
        self, x: torch.Tensor, k: int = 100, batch_size: int = 100, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Importance-sampled estimate of log p(x) per image in nats (the IWAE bound with k samples).

        The k samples of a batch are drawn at once (so the estimate does not depend on how they are processed), then
        decoded IWAE_CHUNK_ROWS rows (samples x images) at a time: the decoder's activations for k = 50,000 would
        not fit in memory at once, the (k, B) log weights do."""
        out = []
        pixels = math.prod(self.input_shape)
        rows = max(1, IWAE_CHUNK_BYTES // (16 * max(pixels, 256)))  # logits and the decoder's activations, float32
        for xb in x.split(batch_size):
            mu, logvar = self.posterior(xb)
            # drawn where the generator lives (the CPU's, for numbers that do not depend on the device), then moved
            where = generator.device if generator is not None else mu.device
            eps = torch.randn(k, *mu.shape, generator=generator, device=where, dtype=mu.dtype).to(mu.device)
            step = max(1, rows // len(xb))
            log_w = torch.cat([self.log_weights(xb, mu, logvar, e) for e in eps.split(step)])
            out.append(torch.logsumexp(log_w, dim=0) - math.log(k))
        return torch.cat(out)

    def log_weights(self, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) at z_i = mu + exp(logvar / 2) eps_i: (k, B) for
        eps (k, B, latent). The importance weights of the IWAE bound and of the test log-likelihood."""
        z = mu + torch.exp(0.5 * logvar) * eps
        log_px_z = -self.neg_log_likelihood(x.flatten(1), self.decoder_logits(z))
        log_pz = -0.5 * (LOG_2PI + z.pow(2)).sum(-1)
        return log_px_z + log_pz - gaussian_log_prob(z, mu, logvar)
