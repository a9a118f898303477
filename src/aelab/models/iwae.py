"""Importance weighted autoencoder (Burda, Grosse & Salakhutdinov, ICLR 2016), model name "iwae".

The VAE's networks and likelihoods (vae.py), trained on the k-sample bound instead of the ELBO:

    L_k(x) = E[ log (1/k) sum_{i=1..k} w_i ],   w_i = p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x) iid

L_1 is the ELBO (with the KL sampled rather than analytic); L_k <= L_{k+1} <= log p(x) (Burda et al.,
Theorem 1), so a larger k trains on a tighter bound. Through the reparameterised z_i, the gradient of L_k
weights each sample's gradient by its normalised weight w_i / sum_j w_j; log-sum-exp keeps it stable.
The reported "elbo" stays the one-sample-per-image analytic-KL bound of the VAE (comparable across models);
"iwae_bound" is L_k on the batch.

Reference code: github.com/yburda/iwae (Theano); the bound is computed here from vae.VAE.log_weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .vae import VAE, kl_to_standard_normal

MAX_K = 5000  # samples per image in training; memory is k x batch x pixels


class IWAE(VAE):
    name = "iwae"

    def __init__(
        self,
        input_shape=(1, 28, 28),
        hidden=(256, 64),
        latent: int = 20,
        likelihood: str = "bce",
        obs_std: float = 0.1,
        beta: float = 1.0,
        k: int = 5,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        kl_warmup: int = 0,
        activation: str = "relu",
    ):
        if kl_warmup:
            raise ValueError("kl_warmup weights the VAE's KL term; the IWAE bound has no separate KL (use model vae)")
        if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= MAX_K):
            raise ValueError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
        if beta != 1.0:
            raise ValueError("beta weights the VAE's KL term; the IWAE bound has no separate KL (use model vae)")
        super().__init__(
            input_shape, hidden, latent, likelihood, obs_std, beta, encoder, decoder, activation=activation
        )
        self.options["k"] = k

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        k = self.options["k"]
        mu, logvar = self.posterior(x)
        eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
        log_w = self.log_weights(x, mu, logvar, eps)  # (k, B)
        bound = (torch.logsumexp(log_w, dim=0) - math.log(k)).mean()
        with torch.no_grad():  # reported only: the VAE's terms on the first sample, analytic KL
            z = mu + torch.exp(0.5 * logvar) * eps[0]
            recon = self.neg_log_likelihood(x.flatten(1), self.decoder_logits(z)).mean()
            kl = kl_to_standard_normal(mu, logvar).mean()
        return {"loss": -bound, "iwae_bound": bound, "elbo": -(recon + kl), "recon": recon, "kl": kl}
