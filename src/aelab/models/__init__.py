"""Model registry: `create(name, **options)` builds any aelab model.

Every model has encode(x) -> z, decode(z) -> x_hat, loss(x) -> scalar and an
`options` dict from which `create(name, **options)` rebuilds it (model.json).
"""
from __future__ import annotations

import importlib

import torch.nn as nn

# name -> (module, class, one-line description). Modules are imported on demand.
REGISTRY: dict[str, tuple[str, str, str]] = {
    "ae": ("ae", "AE", "MLP autoencoder 784-256-64-20, ReLU inside, sigmoid output (MSE or BCE)"),
    "cae": ("contractive", "CAE", "contractive AE (Rifai 2011): 784-1000 sigmoid code, recon + lam ||J_f(x)||_F^2"),
    "dae": ("contractive", "DAE", "denoising AE (Vincent 2008): 784-1000 sigmoid code, gaussian or masking noise"),
    "binary": ("binary", "BinaryAE", "conv AE with a {0,1} straight-through bottleneck (512 bits) or a float baseline"),
    "deep-ae": ("rbm", "DeepAutoencoder", "Hinton & Salakhutdinov (2006) deep AE 784-1000-500-250-30; init=rbm pretrains a stack of RBMs"),
    "vae": ("vae", "VAE", "variational AE: log-variance encoder, reparameterisation, analytic KL, IWAE NLL"),
}


def names() -> list[str]:
    return sorted(REGISTRY)


def describe() -> dict[str, str]:
    return {name: REGISTRY[name][2] for name in names()}


def create(name: str, **options) -> nn.Module:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(names())}")
    module, cls, _ = REGISTRY[name]
    model_cls = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    model = model_cls(**options)
    model.model_name = name
    return model
