"""The settings of `aelab experiment debias-classifier` (aelab.experiments.debias_classifier): below both the recipe
and its report, so that neither imports the other's module for them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .. import data as datamod
from .. import options
from ..data.colored import aligned_count
from ..errors import ConfigError
from .common import SEEDS_HELP, amp_field, dataset_field, device_field

DEFAULT_RATIOS = (0.95, 0.98, 0.99, 0.995)


@dataclass
class Settings:
    out: str = field(default="", metadata=options.opt("output folder (required)"))
    quick: bool = field(default=False, metadata=options.opt("one ratio (0.99), one seed"))
    aligned_ratio: list[float] | None = field(
        default=None,
        metadata=options.opt(
            "comma-separated aligned ratios in (0, 1) (default 0.95,0.98,0.99,0.995; --quick 0.99)",
            parse=options.ratio_list,
        ),
    )
    seeds: int = field(default=1, metadata=options.opt(SEEDS_HELP, parse=options.positive_int))
    seed: int = field(default=0, metadata=options.opt("first seed", parse=options.seed_value))
    epochs: int | None = field(
        default=None,
        metadata=options.opt(
            "epochs of every classifier, the same budget for all methods (default 15; --quick 4)",
            parse=options.positive_int,
        ),
    )
    ae_epochs: int | None = field(
        default=None,
        metadata=options.opt("epochs of each autoencoder (default 6; --quick 2)", parse=options.positive_int),
    )
    val_fraction: float = field(
        default=0.2,
        metadata=options.opt(
            "fraction of the biased train split held out for model selection", parse=options.open_fraction
        ),
    )
    dataset: str = dataset_field(
        "mnist5k", "grayscale digits to colour (mnist: the full MNIST from --data-dir)", ("mnist5k", "digits", "mnist")
    )
    train_limit: int | None = field(
        default=None,
        metadata=options.opt("use only the first N training images", parse=options.positive_int, hidden=True),
    )
    data_dir: str | None = field(
        default=None,
        metadata=options.opt("folder with the official MNIST t10k IDX files (adds a 10k-image unbiased test set)"),
    )
    threads: int = field(
        default=1,
        metadata=options.opt(
            "torch CPU threads (default 1: these small MLPs gain little from more, and on a shared machine a parallel "
            "region waits for descheduled workers: measured 0.21 s vs 5.3 s per epoch)",
            parse=options.thread_count,
        ),
    )
    device: str = device_field()
    amp: bool = amp_field()
    no_progress: bool = field(default=False, metadata=options.opt("no per-seed progress lines"))

    @property
    def ratios(self) -> list[float]:
        return list(self.aligned_ratio) if self.aligned_ratio else ([0.99] if self.quick else list(DEFAULT_RATIOS))

    @property
    def n_seeds(self) -> int:
        return self.seeds

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("--out DIR is required")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be a positive integer, got {self.seeds}")
        for r in self.ratios:
            if not 0 < r < 1:
                raise ConfigError(f"aligned ratio {r} is outside (0, 1)")
        _, digits = datamod.load(self.dataset, "train", self.data_dir)
        digits = digits[: self.train_limit] if self.train_limit else digits
        counts = torch.bincount(digits).tolist()
        for r in self.ratios:
            empty = [c for c, n in enumerate(counts) if n and aligned_count(n, r) >= n]
            if empty:
                raise ConfigError(
                    f"aligned ratio {r} leaves digit {empty[0]} ({counts[empty[0]]} training images) "
                    f"with no bias-conflicting sample"
                )
        if self.data_dir is not None:
            datamod.load_test_split("mnist", self.data_dir)  # the official t10k files, here or in DIR/mnist/


QUICK = {"epochs": (15, 4), "ae_epochs": (6, 2)}  # (full, --quick) budgets: --quick also runs one ratio and one seed


def resolved(settings: Settings) -> Settings:
    """The settings with the budgets --quick cuts filled in (what results.json records)."""
    return dataclasses.replace(
        settings, **{k: getattr(settings, k) or v[1 if settings.quick else 0] for k, v in QUICK.items()}
    )
