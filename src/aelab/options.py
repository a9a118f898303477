"""Typed option values and settings dataclasses, shared by the CLI and the experiments.

An experiment declares its settings as a dataclass; each field may carry metadata:

    epochs: int | None = field(default=None, metadata=opt("epochs per model (default 30, --quick 8)",
                                                          parse=positive_int))

`add_arguments(parser, Settings)` turns the fields into `--flags` (bool fields become store_true switches)
and `from_args(Settings, args)` builds the dataclass back. Nothing here imports torch: `aelab --help` and
`aelab models` stay fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import typing
from collections.abc import Callable
from typing import Any

MAX_SEED = 2**63  # seeds live in [0, 2^63): what torch.manual_seed and numpy's generators accept
MAX_COUNT = 10**7  # epochs, batch sizes, image counts, iterations: far beyond any run here, far below overflow
MAX_THREADS = 1024  # torch and BLAS thread pools: far above any machine here, far below an exhausted process table
MAX_SIZE = 10**6  # one layer's width or a code's size; what fits in memory is checked from the options too


def _plain_int(text) -> int:
    """int() of decimal digits only: Python's int() also takes "1_0" (10) and surrounding spaces."""
    if isinstance(text, str) and not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError(text)
    return int(text)


def positive_int(text: str) -> int:
    try:
        value = _plain_int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not 0 < value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be a positive integer up to {MAX_COUNT:.0e}, got {text}")
    return value


def seed_value(text: str) -> int:
    try:
        value = _plain_int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < MAX_SEED:
        raise argparse.ArgumentTypeError(f"seeds must be in [0, 2^63), got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def open_fraction(text: str) -> float:
    """A number in (0, 1), e.g. an aligned ratio."""
    value = fraction(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def float_list(text: str) -> list[float]:
    """Comma-separated non-negative finite numbers."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (v >= 0 and math.isfinite(v)) for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative finite numbers, got {text!r}")
    return values


def thread_count(text: str) -> int:
    """A number of CPU threads: 1 .. MAX_THREADS."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"at most {MAX_THREADS} threads, got {value}")
    return value


def word_list(choices) -> Callable[[str], list[str]]:
    """A parser of comma-separated words, each one of `choices`, without repeats, in the order given."""

    def parse(text: str) -> list[str]:
        words = [w.strip() for w in text.split(",") if w.strip()]
        bad = [w for w in words if w not in choices]
        if not words or bad or len(set(words)) != len(words):
            raise argparse.ArgumentTypeError(
                f"expected distinct comma-separated words from {', '.join(choices)}, got {text!r}"
            )
        return words

    return parse


MAX_SECONDS = 7 * 86400  # a timeout longer than a week is a slip (and 1e308 does not fit the OS's timers)


def seconds(text: str) -> float:
    value = positive_float(text)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SECONDS} seconds (a week), got {text}")
    return value


def checkpoint_seconds(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (0 <= value <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(f"must be seconds in [0, {MAX_SECONDS}], got {text}")
    return value


def positive_float_list(text: str) -> list[float]:
    """Comma-separated positive finite numbers (a grid of weight decays or noise levels)."""
    values = float_list(text)
    if any(v == 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def fraction_list(text: str) -> list[float]:
    """Comma-separated numbers in (0, 1] (a grid of masking fractions)."""
    values = float_list(text)
    if any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions in (0, 1], got {text!r}")
    return values


def ratio_list(text: str) -> list[float]:
    """Comma-separated aligned ratios, each in (0, 1)."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected ratios like 0.98,0.99, got {text!r}")
    values = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            v = float("nan")
        if not 0 < v < 1:
            raise argparse.ArgumentTypeError(f"an aligned ratio must be a number in (0, 1), got {p.strip()!r}")
        values.append(v)
    return values


def int_list(text: str) -> list[int]:
    """Layer sizes like 256,64 or 784-1000-500. A minus sign is never read as a separator: -64-16 is refused."""
    if not re.fullmatch(r"\s*\d+\s*([,-]\s*\d+\s*)*", text):
        raise argparse.ArgumentTypeError(f"expected positive sizes like 256,64 or 784-1000-30, got {text!r}")
    values = [int(v) for v in re.split(r"[,-]", text)]
    if any(not 0 < v <= MAX_SIZE for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be integers in [1, {MAX_SIZE:.0e}], got {text!r}")
    return values


MAX_OPTION_JSON_DEPTH = 16  # nesting of a JSON option value: layer lists need 1, keyword objects 2 or 3
MAX_OPTION_JSON_CHARS = 100_000


def json_nesting(text: str) -> int:
    """The deepest nesting of [ and { in JSON text, brackets inside strings not counted. A linear scan, so that
    text nested thousands deep is refused before a parser recurses into it (a minute, then a RecursionError)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def bounded_json(text: str, what: str) -> Any:
    """json.loads of a command-line value, refused (argparse.ArgumentTypeError, one line) when it is longer than
    MAX_OPTION_JSON_CHARS or nested deeper than MAX_OPTION_JSON_DEPTH; ValueError when it is not JSON."""
    if len(text) > MAX_OPTION_JSON_CHARS:
        raise argparse.ArgumentTypeError(f"{what}: {len(text)} characters, more than {MAX_OPTION_JSON_CHARS}")
    if json_nesting(text) > MAX_OPTION_JSON_DEPTH:
        raise argparse.ArgumentTypeError(f"{what}: nested deeper than {MAX_OPTION_JSON_DEPTH} levels")
    return json.loads(text)


def key_value(text: str) -> tuple[str, object]:
    """KEY=VALUE with a JSON value (a bare word stays a string)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {shown(text)}")
    key, value = text.split("=", 1)
    if not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {shown(text)}")
    try:
        return key.replace("-", "_"), bounded_json(value, f"option {shown(key)}")
    except ValueError:  # not JSON: a bare word
        return key.replace("-", "_"), value


def shown(text: str, limit: int = 80) -> str:
    """repr(text), cut to `limit` characters: an error line quotes what was given, never a megabyte of it."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


# ---------------------------------------------------------------- settings dataclasses <-> argparse
def opt(
    help: str = "",
    parse: Callable[[str], Any] | None = None,
    choices: list | tuple | None = None,
    hidden: bool = False,
    aliases: tuple[str, ...] = (),
) -> dict:
    """Field metadata for `add_arguments`: help text, a parser for one value, the allowed values, and old spellings
    of the flag that still work (`deprecated_aliases` names them, so that the CLI can say so)."""
    return {"help": help, "parse": parse, "choices": choices, "hidden": hidden, "aliases": tuple(aliases)}


def deprecated_aliases(settings_cls: type) -> dict[str, str]:
    """{old flag: its current name} of a settings dataclass."""
    return {old: _flag(f.name) for f in dataclasses.fields(settings_cls) for old in f.metadata.get("aliases", ())}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, settings_cls: type) -> None:
    """One --flag per field of a settings dataclass; the dataclass's own defaults stay the defaults."""
    hints = typing.get_type_hints(settings_cls)
    for f in dataclasses.fields(settings_cls):
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        # argparse formats help with %: a literal "95% interval" must reach it as "95%% interval"
        help_text = argparse.SUPPRESS if meta.get("hidden") else (meta.get("help") or "").replace("%", "%%") or None
        if hints[f.name] is bool:
            parser.add_argument(_flag(f.name), action="store_true", default=default, help=help_text)
            continue
        kwargs: dict[str, Any] = {"default": default, "help": help_text}
        if meta.get("parse") is not None:
            kwargs["type"] = meta["parse"]
        if meta.get("choices") is not None:
            kwargs["choices"] = list(meta["choices"])
        parser.add_argument(_flag(f.name), *meta.get("aliases", ()), dest=f.name, **kwargs)


def from_args(settings_cls: type, args: argparse.Namespace):
    """The settings dataclass from parsed arguments (fields missing from args keep their defaults)."""
    names = {f.name for f in dataclasses.fields(settings_cls)}
    return settings_cls(**{k: v for k, v in vars(args).items() if k in names})
