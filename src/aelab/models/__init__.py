"""Model registry: `create(name, **options)` builds any aelab model; `describe()` lists them.

Every model implements the interface of `models/base.py` (encode, decode, loss_terms, options,
declared capabilities). One file per idea:
    ae.py           MLP autoencoder (and the `mlp` builder, the per-image reconstruction losses)
    vae.py          variational autoencoder, analytic KL, IWAE log-likelihood
    contractive.py  contractive (CAE) and denoising (DAE) autoencoders
    penalties.py    the Jacobian penalty ||J_f(x)||_F^2: closed form, exact autodiff, Hutchinson
    rbm.py          the RBM (CD-k / PCD) and greedy stack pretraining
    deep_ae.py      the unrolled deep autoencoder of Hinton & Salakhutdinov (2006)
    binary.py       conv autoencoder with a {0, 1} straight-through bottleneck
This module imports no torch until a model is built, so listing the models stays fast.
"""

from __future__ import annotations

import importlib
import inspect

from ..errors import ConfigError

# name -> (module, class, one-line description). Modules are imported on demand.
REGISTRY: dict[str, tuple[str, str, str]] = {
    "ae": ("ae", "AE", "MLP autoencoder 784-256-64-20, ReLU inside, sigmoid output (MSE or BCE)"),
    "cae": ("contractive", "CAE", "contractive AE (Rifai 2011): 784-1000 sigmoid code, recon + lam ||J_f(x)||_F^2"),
    "dae": ("contractive", "DAE", "denoising AE (Vincent 2008): 784-1000 sigmoid code, gaussian or masking noise"),
    "binary": ("binary", "BinaryAE", "conv AE with a {0,1} straight-through bottleneck (512 bits) or a float baseline"),
    "deep-ae": (
        "deep_ae",
        "DeepAutoencoder",
        "Hinton & Salakhutdinov (2006) deep AE 784-1000-500-250-30; init=rbm pretrains a stack of RBMs",
    ),
    "vae": ("vae", "VAE", "variational AE: log-variance encoder, reparameterisation, analytic KL, IWAE NLL"),
}


def names() -> list[str]:
    return sorted(REGISTRY)


def describe() -> dict[str, str]:
    return {name: REGISTRY[name][2] for name in names()}


def model_class(name: str) -> type:
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(names())}")
    module, cls, _ = REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def available_memory_bytes() -> int:
    """MemAvailable of /proc/meminfo (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(name: str, options: dict, training: bool = True) -> int:
    """Bytes the model's parameters and buffers take, measured on torch's meta device (nothing allocated);
    refuses with one line when they (x4 when training: weights, gradients and Adam's two moments) cannot fit."""
    import torch

    with torch.device("meta"):
        model = create(name, **options)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    need = size * (4 if training else 1)
    have = available_memory_bytes()
    if need > have:
        raise ConfigError(
            f"model {name!r} with these options needs about {need / 2**30:.3g} GiB "
            f"({'weights, gradients and optimizer state' if training else 'weights'}); "
            f"{have / 2**30:.3g} GiB of memory is available"
        )
    return size


def create(name: str, **options):
    """Build model `name` from its options. Unknown names or options and out-of-range values raise
    ConfigError (bad input); any other exception is a bug and propagates as it is."""
    cls = model_class(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"model {name!r} has no option {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}")
    try:
        return cls(**options)
    except ValueError as e:  # the constructors' own checks of option values
        raise ConfigError(f"model {name!r}: {e}") from None
