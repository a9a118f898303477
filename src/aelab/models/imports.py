"""User networks named on the command line: `--encoder pkg.module:Class` (and `--encoder-kwargs JSON`).

The option is recorded in config.json and model.json as {"import": "pkg.module:Class", "kwargs": {...}}, so that
`aelab evaluate RUN --encoder pkg.module:Class` rebuilds the same network: the class is imported by name from the
user's own code (on PYTHONPATH or installed), called with the recorded keyword arguments, and its weights come
from model.safetensors. No pickle: nothing but that name and JSON values is read from the file.

The trust rule (README, "Sharing run folders"). Importing a module runs its code, so a name read from a run folder
(model.json, config.json) is imported only when the person running aelab names the same class again
(`--encoder pkg.module:Class`, or `trust=Trust(names=...)` from Python) or trusts every class the folder names
(`--trust-code`, `trust_code=True`); otherwise `require_trusted` refuses in one line that says what to pass, before
anything is imported. Even then a module is never imported from inside the run folder, and `python -m aelab` does
not put the current folder on the import path (aelab/__main__.py). Importing or building is guarded: a SystemExit
or KeyboardInterrupt raised by the user's module is one line too, and the network is first built on torch's meta
device, where its parameters cost nothing, so that its size is checked against the memory before it is built.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_SPEC = re.compile(rf"^({_NAME}(?:\.{_NAME})*):({_NAME}(?:\.{_NAME})*)$")
SPEC_ATTRIBUTE = "_aelab_import_spec"  # set on the built module: install_custom_modules records it
ROLES = ("encoder", "decoder")


@dataclass(frozen=True)
class Trust:
    """Which classes named by a run folder may be imported: those the user named (`names`), or all (`everything`,
    --trust-code). The default trusts none."""

    names: frozenset[str] = field(default_factory=frozenset)
    everything: bool = False

    def allows(self, name: str) -> bool:
        return self.everything or name in self.names


def trust_of(trust_code: bool | Iterable[str] | Trust) -> Trust:
    """A Trust from the Python API's `trust_code=`: True (every class), False (none) or the classes named."""
    if isinstance(trust_code, Trust):
        return trust_code
    if isinstance(trust_code, bool):
        return Trust(everything=trust_code)
    return Trust(names=frozenset(trust_code))


def module_spec(text: str, kwargs: dict | None = None) -> dict:
    """{"import": text, "kwargs": kwargs}, checked: text is 'pkg.module:Class', kwargs a JSON object."""
    if not isinstance(text, str) or len(text) > 300 or not _SPEC.match(text):
        shown = repr(text) if len(repr(text)) <= 80 else repr(text)[:80] + "..."
        raise ConfigError(f"expected a class as pkg.module:Class, got {shown}")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"the keyword options of {text} must be a JSON object")
    return {"import": text, "kwargs": kwargs}


def is_spec(value) -> bool:
    return isinstance(value, dict) and "import" in value


def checked_spec(role: str, spec) -> dict:
    """The spec as {"import", "kwargs"}, or one-line ConfigError: nothing but those two keys is accepted."""
    if not (isinstance(spec, dict) and set(spec) <= {"import", "kwargs"} and "import" in spec):
        raise ConfigError(f"{role}: expected {{'import': 'pkg.module:Class', 'kwargs': {{...}}}}")
    return module_spec(spec.get("import"), spec.get("kwargs"))


def require_trusted(role: str, spec, trust: Trust, where: str) -> dict:
    """The one check of the trust rule: a class that `where` (a file of a run folder) names is imported only when
    `trust` allows it. Refuses, before anything is imported, with the flag that would allow it."""
    spec = checked_spec(f"{where}: {role}", spec)
    name = spec["import"]
    if not trust.allows(name):
        others = "" if trust.names == frozenset() else f" (you named {', '.join(sorted(trust.names))})"
        raise ConfigError(
            f"{where} names code for its {role}, {name}{others}; aelab imports code named by a run folder only "
            f"when you name it: pass --{role} {name} (or --trust-code to trust every class the folder names)"
        )
    return spec


def _top_level_origin(module_name: str) -> Path | None:
    """Where the top-level package of `module_name` would be imported from, found without running any of its code
    (importlib's path finder reads the file system only); None for built-in and frozen modules."""
    top = module_name.split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None:
        origin = getattr(loaded, "__file__", None)
        return Path(origin).resolve() if origin else None
    try:
        found = importlib.machinery.PathFinder.find_spec(top, sys.path)
    except (ImportError, ValueError, OSError):
        return None
    if found is None:
        return None
    where = (
        found.origin
        if found.origin not in (None, "namespace")
        else next(iter(found.submodule_search_locations or []), None)
    )
    return Path(where).resolve() if where else None


def refuse_inside(spec: dict, folders: Iterable[str | os.PathLike]) -> None:
    """A module that would be imported from inside one of `folders` (a run folder) is refused, trusted or not: a
    folder from elsewhere is data, and a planted mynets.py beside its model.json must never run."""
    origin = _top_level_origin(spec["import"].split(":")[0])
    if origin is None:
        return
    for folder in folders:
        root = Path(folder).resolve()
        if origin == root or root in origin.parents:
            raise ConfigError(
                f"{spec['import']} would be imported from {origin}, inside the run folder {folder}; aelab never "
                "imports code from a run folder (put your module elsewhere on PYTHONPATH)"
            )


def _import_class(role: str, spec: dict) -> type:
    import torch.nn as nn

    module_name, attribute = spec["import"].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"{role} {spec['import']}: no module named {e.name!r} (put its folder on PYTHONPATH or install it)"
        ) from None
    except BaseException as e:  # noqa: BLE001  the user's module failed, or exited, while importing: one line
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
    return obj


def _construct(role: str, spec: dict, cls: type, meta: bool):
    import torch

    try:
        if meta:
            with torch.device("meta"):
                return cls(**spec["kwargs"])
        return cls(**spec["kwargs"])
    except BaseException as e:  # noqa: BLE001  the class refused its options, or its code exited: one line
        shown = str(spec["kwargs"]) if len(str(spec["kwargs"])) <= 80 else str(spec["kwargs"])[:80] + "..."
        raise ConfigError(f"{role} {spec['import']}(**{shown}) failed ({type(e).__name__}: {e})") from None


def module_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def build(role: str, spec, meta: bool = False) -> object:
    """The nn.Module that `spec` names, built with its kwargs; one-line ConfigError for anything wrong. It is built
    on torch's meta device first: its parameters and buffers are counted there and refused when they cannot fit in
    memory, before the real build allocates them. meta=True returns that meta-device module (for check_memory).
    Call require_trusted first for a spec read from a file: this imports."""
    from .memory import available_memory_bytes

    spec = checked_spec(role, spec)
    cls = _import_class(role, spec)
    try:
        sized = _construct(role, spec, cls, meta=True)
    except ConfigError:
        if meta:
            raise
        sized = None  # a class whose constructor needs real tensors (e.g. calls .item()): built for real below
    if meta:
        setattr(sized, SPEC_ATTRIBUTE, spec)
        return sized
    need, have = (0 if sized is None else module_bytes(sized)), available_memory_bytes()
    if need > have:
        raise ConfigError(
            f"{role} {spec['import']} with these options needs about {need / 2**30:.3g} GiB for its weights; "
            f"{have / 2**30:.3g} GiB of memory is available"
        )
    built = _construct(role, spec, cls, meta=False)
    setattr(built, SPEC_ATTRIBUTE, spec)
    return built
