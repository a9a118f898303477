"""The test likelihood of a model that has one, and the active units of a model with a posterior KL.

nll_nats       -log p(x) by importance sampling (the IWAE bound with k samples, Burda et al. 2016), mean over images
active_units   latent dimensions whose KL(q(z_j|x) || N(0,1)), averaged over the test images, exceeds
               ACTIVE_UNIT_NATS
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..progress import inner_bar

ACTIVE_UNIT_NATS = 0.01  # a latent dimension whose mean KL exceeds this carries information (Burda et al. 2016)
IWAE_BATCH = 100  # images per IWAE step: k samples of each are held at once
IWAE_TENSOR_BYTES = 2 * 2**30  # the (k, images, pixels) logits of one IWAE step would take at most this much
MAX_IWAE_K = 100_000
IWAE_SAMPLE_BYTES = 256 * 2**20  # the (k, images, latent) samples of one IWAE step: at most this much


def iwae_batch_size(k: int, pixels: int, latent: int) -> int:
    """Images per IWAE step: IWAE_BATCH, or fewer so that their k x pixels logits would stay under IWAE_TENSOR_BYTES
    and their k x latent samples under IWAE_SAMPLE_BYTES (a fixed rule: the estimate never depends on the memory
    of the machine; the decoder then runs over them in chunks, models.vae.IWAE_CHUNK_BYTES). Refuses (one line,
    with the GiB needed) a k whose samples of ONE image cannot fit."""
    from ..models.memory import available_memory_bytes
    from ..models.vae import IWAE_CHUNK_BYTES

    if k > MAX_IWAE_K:  # it would fit, in chunks, but run for hours: a typo, not a measurement
        raise ConfigError(f"--iwae-k {k}: at most {MAX_IWAE_K:,} samples per image (Burda et al. use 5,000)")
    per_image = k * pixels * 4
    need, have = 3 * k * latent * 4 + 2 * IWAE_CHUNK_BYTES, available_memory_bytes()  # samples, z, log weights
    if need > have:
        raise ConfigError(
            f"--iwae-k {k}: the samples of one image need about {need / 2**30:.3g} GiB; "
            f"{have / 2**30:.3g} GiB of memory is available (the test NLL needs no more than a few thousand)"
        )
    return max(1, min(IWAE_BATCH, IWAE_TENSOR_BYTES // per_image, IWAE_SAMPLE_BYTES // (k * latent * 4)))


def iwae_mean(model, x: torch.Tensor, k: int, seed: int, progress: str | None = None) -> float:
    """Mean IWAE estimate of log p(x) in nats over the images x, iwae_batch_size images at a time (one generator
    throughout: the same estimate per image as one call on all of x). `progress` labels a tqdm bar; None for none."""
    gen = torch.Generator().manual_seed(seed)
    batches = x.split(iwae_batch_size(k, math.prod(x.shape[1:]), model.latent))
    total = 0.0
    for xb in inner_bar(batches, f"{progress}: IWAE k={k}", "batch", enabled=progress is not None):
        total += float(model.iwae_log_likelihood(xb, k=k, batch_size=len(xb), generator=gen).double().sum())
    return total / len(x)


def active_units(kl_per_dimension: list[float]) -> int:
    """How many latent dimensions carry information: mean KL over the test images above ACTIVE_UNIT_NATS."""
    return sum(kl > ACTIVE_UNIT_NATS for kl in kl_per_dimension)
