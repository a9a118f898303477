"""Model registry: `create(name, **options)` builds any aelab model; `describe()` lists them.

Every model implements the interface of `models/base.py` (encode, decode, loss_terms, options,
declared capabilities). One file per idea:
    ae.py           MLP autoencoder (and the `mlp` builder, the per-image reconstruction losses)
    vae.py          variational autoencoder, analytic KL, IWAE log-likelihood
    contractive.py  contractive (CAE) and denoising (DAE) autoencoders
    penalties.py    the Jacobian penalty ||J_f(x)||_F^2: closed form, exact autodiff, Hutchinson
    rbm.py          the RBM (CD-k / PCD) and greedy stack pretraining
    rbm_model.py    the RBM as a model of its own (model name rbm): a run folder, trained by CD in the pretraining hook
    deep_ae.py      the unrolled deep autoencoder of Hinton & Salakhutdinov (2006)
    binary.py       conv autoencoder with a {0, 1} straight-through bottleneck
This module imports no torch until a model is built, so listing the models stays fast.
"""

from __future__ import annotations

import importlib
import inspect
import math

from ..errors import ConfigError
from .memory import available_memory_bytes  # noqa: F401 (models.available_memory_bytes)

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
    "iwae": ("iwae", "IWAE", "importance weighted AE (Burda 2016): the VAE's networks trained on the k-sample bound"),
    "rbm": ("rbm_model", "RBMModel", "binary RBM trained by CD-k or PCD; evaluate: log p(x) by AIS (exact when small)"),
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


USER_MODULES = ("encoder", "decoder")  # options that take nn.Modules (or an import spec, models.imports)


def has_module_instances(options: dict) -> bool:
    """Whether options hold nn.Module objects given from Python: built already, they are not built again on the
    meta device (check_memory); an import spec ({"import": ...}) is, like every other option."""
    return any(k in options and not (options[k] is None or isinstance(options[k], (dict, str))) for k in USER_MODULES)


CUSTOM_PREFIX = "custom:"  # as models.base.CUSTOM_PREFIX, without importing torch here


def custom_name(module) -> str:
    from .base import custom_name as name

    return name(module)


MAX_LAYERS = 100  # hidden layers of an MLP: more is a typo or a hostile model.json (building them takes minutes)
MAX_SIZE = 10**6  # as aelab.options.MAX_SIZE: one layer's width, a code's size, an image side


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_option_type(model: str, key: str, value, param: inspect.Parameter) -> None:
    """Options come from users and from model.json: their types are checked against the constructor's
    annotation (or default), so that a wrong type is bad input and not a TypeError deep inside torch."""
    hint = str(param.annotation) if param.annotation is not inspect.Parameter.empty else ""
    if key in USER_MODULES:
        import torch.nn as nn

        if not (value is None or isinstance(value, nn.Module)):
            if isinstance(value, str) and value.startswith(CUSTOM_PREFIX):
                raise ConfigError(
                    f"model {model!r} was built with a user-supplied {key} ({value[len(CUSTOM_PREFIX) :]}); "
                    f"pass the same module again: load_model(run, {key}=...)"
                )
            raise ConfigError(f"model {model!r}: option {key} must be a torch.nn.Module, given from Python")
        return
    default = param.default
    allowed: list[tuple[str, bool]] = []  # (what the option may be, whether the value is that)
    if "None" in hint or default is None:
        allowed.append(("null", value is None))
    if "Sequence" in hint or isinstance(default, (list, tuple)):
        ok = (
            isinstance(value, (list, tuple))
            and len(value) <= MAX_LAYERS
            and all(_is_int(v) and 0 < v <= MAX_SIZE for v in value)
        )
        allowed.append((f"a list of at most {MAX_LAYERS} positive integer sizes up to {MAX_SIZE}", ok))
    if hint.startswith("int") or "| int" in hint or (_is_int(default) and not hint):
        allowed.append(("an integer", _is_int(value) and abs(value) <= 10**9))  # before math on it overflows
    if "float" in hint or isinstance(default, float):
        number = (_is_int(value) and abs(value) <= 1e308) or (isinstance(value, float) and math.isfinite(value))
        allowed.append(("a finite number", number))
    if "str" in hint or isinstance(default, str):
        allowed.append(("a string", isinstance(value, str) and len(value) <= 100))
    if "bool" in hint or isinstance(default, bool):
        allowed.append(("true or false", isinstance(value, bool)))
    if allowed and not any(ok for _, ok in allowed):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:80] + "..."  # never a megabyte of it
        raise ConfigError(f"model {model!r}: option {key} must be {' or '.join(w for w, _ in allowed)}, got {shown}")


def create(name: str, **options):
    """Build model `name` from its options. Unknown names or options, options of the wrong type and
    out-of-range values raise ConfigError (bad input); any other exception is a bug and propagates."""
    cls = model_class(name)
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self")
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ConfigError(f"model {name!r} has no option {', '.join(unknown)}; it takes {', '.join(sorted(params))}")
    for key in USER_MODULES:  # a network named by import path (the CLI, model.json): built here
        from .imports import build, is_spec

        if is_spec(options.get(key)) or isinstance(options.get(key), dict):
            options = {**options, key: build(key, options[key])}
    for key, value in options.items():
        _check_option_type(name, key, value, params[key])
    try:
        return cls(**options)
    except ValueError as e:  # the constructors' own checks of option values
        raise ConfigError(f"model {name!r}: {e}") from None
