"""User networks named on the command line: `--encoder pkg.module:Class` (and `--encoder-kwargs JSON`).

The option is recorded in config.json and model.json as {"import": "pkg.module:Class", "kwargs": {...}}, so that
`aelab evaluate RUN` rebuilds the same network with no flags: the class is imported by name from the user's own
code (it must be importable: on PYTHONPATH or installed), called with the recorded keyword arguments, and its
weights come from model.safetensors. No pickle: nothing but that name and JSON values is read from the file.

model.json is untrusted, so what it names is checked before anything is called: the name must be a dotted
module path and a class in it, and the class a torch.nn.Module subclass (importing the module runs its top-level
code, as any import does: only modules already importable here can be named).
"""

from __future__ import annotations

import importlib
import re

from ..errors import ConfigError

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_SPEC = re.compile(rf"^({_NAME}(?:\.{_NAME})*):({_NAME}(?:\.{_NAME})*)$")
SPEC_ATTRIBUTE = "_aelab_import_spec"  # set on the built module: install_custom_modules records it


def module_spec(text: str, kwargs: dict | None = None) -> dict:
    """{"import": text, "kwargs": kwargs}, checked: text is 'pkg.module:Class', kwargs a JSON object."""
    if not isinstance(text, str) or len(text) > 300 or not _SPEC.match(text):
        raise ConfigError(f"expected a class as pkg.module:Class, got {text!r}")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"the keyword options of {text} must be a JSON object, got {kwargs!r}")
    return {"import": text, "kwargs": kwargs}


def is_spec(value) -> bool:
    return isinstance(value, dict) and "import" in value


def build(role: str, spec) -> object:
    """The nn.Module that `spec` names, built with its kwargs; one-line ConfigError for anything wrong."""
    import torch.nn as nn

    if not (isinstance(spec, dict) and set(spec) <= {"import", "kwargs"}):
        raise ConfigError(f"{role}: expected {{'import': 'pkg.module:Class', 'kwargs': {{...}}}}, got {spec!r}")
    spec = module_spec(spec.get("import"), spec.get("kwargs"))
    module_name, attribute = spec["import"].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"{role} {spec['import']}: no module named {e.name!r} (put its folder on PYTHONPATH or install it)"
        ) from None
    except Exception as e:  # the user's module failed while importing: its error, in one line
        raise ConfigError(
            f"{role} {spec['import']}: importing {module_name} failed ({type(e).__name__}: {e})"
        ) from None
    obj = module
    for part in attribute.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"{role} {spec['import']}: {module_name} has no {attribute}")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ConfigError(f"{role} {spec['import']}: not a torch.nn.Module class")
    try:
        built = obj(**spec["kwargs"])
    except Exception as e:
        raise ConfigError(f"{role} {spec['import']}(**{spec['kwargs']}) failed ({type(e).__name__}: {e})") from None
    setattr(built, SPEC_ATTRIBUTE, spec)
    return built
