"""The settings of `aelab experiment contractive` (aelab.experiments.contractive): the flags, the families and their
grids, the budgets; below the recipe, its steps and its report, so that none of them imports another for these."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..finetune import FinetuneConfig
from ..options import (
    float_list,
    fraction,
    fraction_list,
    opt,
    positive_float,
    positive_float_list,
    positive_int,
    seed_value,
    word_list,
)
from ..papers import PAPERS
from .common import amp_field, device_field

# the grid of each family's setting: (full run, --quick); each is overridden by its flag
GRIDS = {
    "AE+wd": ((1e-4, 1e-3, 1e-2), (1e-3,)),
    "DAE-g": ((0.1, 0.3, 0.5), (0.3,)),
    "DAE-b": ((0.1, 0.25, 0.5), (0.25,)),
    "CAE": ((0.1, 0.3, 1.0, 3.0), (0.3, 1.0)),
}
# (metric key in eval.json, column name, bounds for the interval)
METRICS = [
    ("finetune_error", "fine-tuned test error", (0.0, 1.0)),
    ("probe_accuracy", "probe acc", (0.0, 1.0)),
    ("recon_sse", "recon SSE", None),
    ("jacobian_fro_mean", "mean ‖J‖_F", None),
    ("saturation", "SAT", (0.0, 1.0)),
]
PAIRS = [("CAE", "DAE-g"), ("CAE", "AE")]  # paired differences of probe accuracy over seeds
# --quick: the first 1,000 train images, 5 epochs, one- or two-point grids, 10 fine-tuning epochs
QUICK = {"epochs": 5, "train_limit": 1000, "finetune_epochs": 10}
NOT_COMPARED = ("out", "no_progress")  # what may differ between a run and its --resume
TITLE = "Rifai et al. (2011): AE, AE+wd, DAE and CAE"
FAMILY_NAMES = ("AE", "AE+wd", "DAE-g", "DAE-b", "CAE", "RBM")  # the rows, in the table's order


def _grid_help(what: str, family: str) -> str:
    full, quick = GRIDS[family]
    return f"{what} to choose from, comma-separated (default {','.join(map(str, full))}; --quick {quick[0]:g}...)"


@dataclass
class Settings:
    out: str = field(default="runs/contractive", metadata=opt("output folder"))
    dataset: str = field(default="mnist5k", metadata=opt("dataset name (aelab data list)"))
    epochs: int | None = field(
        default=None, metadata=opt("epochs per model (default 30, --quick 8)", parse=positive_int)
    )
    seed: int = field(default=0, metadata=opt("first seed: every grid point is trained with it", parse=seed_value))
    seeds: int = field(
        default=1,
        metadata=opt("train each chosen setting with seeds SEED .. SEED+N-1 and report intervals", parse=positive_int),
    )
    hidden: int = field(default=1000, metadata=opt("code units of every model (Rifai: 1000)", parse=positive_int))
    finetune_epochs: int | None = field(
        default=None,
        metadata=opt(
            "at most this many epochs of fine-tuning the MLP made from each encoder, the epoch chosen on validation "
            "(default 50, --quick 10)",
            parse=positive_int,
        ),
    )
    finetune_lr: float = field(default=1e-3, metadata=opt("Adam's learning rate in fine-tuning", parse=positive_float))
    val_fraction: float = field(
        default=0.1,
        metadata=opt("fraction of the train images held out (stratified, seed 0) to choose settings", parse=fraction),
    )
    lam: list[float] | None = field(
        default=None, metadata=opt(_grid_help("CAE penalty weights", "CAE"), parse=float_list)
    )
    weight_decay: list[float] | None = field(
        default=None, metadata=opt(_grid_help("AE+wd: weights of sum W^2", "AE+wd"), parse=positive_float_list)
    )
    noise_std: list[float] | None = field(
        default=None, metadata=opt(_grid_help("DAE-g: Gaussian noise stds", "DAE-g"), parse=positive_float_list)
    )
    mask_fraction: list[float] | None = field(
        default=None, metadata=opt(_grid_help("DAE-b: fractions of pixels zeroed", "DAE-b"), parse=fraction_list)
    )
    families: list[str] | None = field(
        default=None,
        metadata=opt(
            f"only these rows, comma-separated, of {','.join(FAMILY_NAMES)} (default all); a row's numbers do not "
            "depend on which other rows run",
            parse=word_list(FAMILY_NAMES),
        ),
    )
    data_dir: str | None = field(
        default=None,
        metadata=opt(
            "folder of the IDX files (DIR/NAME/ or DIR itself); when it holds the official MNIST t10k files, each "
            "chosen model is also scored on them"
        ),
    )
    quick: bool = field(
        default=False,
        metadata=opt(
            "a smoke check in about a minute: the first 1,000 train images, 5 epochs, one- or two-point grids, "
            "no t-SNE figures"
        ),
    )
    device: str = device_field()
    amp: bool = amp_field()
    no_progress: bool = field(default=False, metadata=opt("no progress bars"))
    train_limit: int | None = field(default=None, metadata=opt(parse=positive_int, hidden=True))  # tests


@dataclass(frozen=True)
class Family:
    """One model family of the comparison and the grid of its one setting (no setting for the plain AE)."""

    name: str  # "CAE"
    model: str  # aelab model name
    option: str | None  # the model option the grid sets, e.g. "lam"
    short: str  # how a setting is written: "λ" in "λ=1"
    fixed: dict  # options every member shares beyond the common encoder
    grid: tuple[float, ...]

    def values(self) -> list[float | None]:
        return list(self.grid) if self.option else [None]

    def describe(self, value: float | None) -> str:
        return "none" if value is None else f"{self.short}={value:g}"

    def folder(self, value: float | None) -> str:
        if value is None:
            return run_folder_name(self.name)
        return run_folder_name(f"{self.name} {self.option}={value:g}")


def families(settings: Settings) -> list[Family]:
    """AE, AE+wd, DAE-g, DAE-b, CAE and RBM with their grids (the flags, else the full or --quick defaults); only
    the rows of --families when it is given."""

    def grid(name: str, given: list[float] | None) -> tuple[float, ...]:
        return tuple(given) if given else GRIDS[name][1 if settings.quick else 0]

    every = [
        Family("AE", "ae", None, "", {}, ()),
        Family("AE+wd", "ae", "weight_decay", "wd", {}, grid("AE+wd", settings.weight_decay)),
        Family("DAE-g", "dae", "level", "std", {"noise": "gaussian"}, grid("DAE-g", settings.noise_std)),
        Family("DAE-b", "dae", "level", "mask", {"noise": "masking"}, grid("DAE-b", settings.mask_fraction)),
        Family("CAE", "cae", "lam", "λ", {}, grid("CAE", settings.lam)),
        Family("RBM", "rbm", None, "", {}, ()),  # CD-1 (aelab.models.rbm_model), as many CD epochs as the AEs' epochs
    ]
    return [f for f in every if settings.families is None or f.name in settings.families]


def run_folder_name(label: str) -> str:
    return label.replace("+", "_").replace(" ", "_").replace("=", "")


def epochs_of(settings: Settings) -> int:
    return settings.epochs or (QUICK["epochs"] if settings.quick else 30)


def train_limit_of(settings: Settings) -> int | None:
    if not settings.quick:
        return settings.train_limit
    return min(settings.train_limit or QUICK["train_limit"], QUICK["train_limit"])


def finetune_config(settings: Settings) -> FinetuneConfig:
    epochs = settings.finetune_epochs or (QUICK["finetune_epochs"] if settings.quick else 50)
    return FinetuneConfig(epochs=epochs, patience=min(8, epochs), optimizer="adam", lr=settings.finetune_lr)


RIFAI = PAPERS["rifai2011"]
PAPER_ROW = {"RBM": "RBM-binary"}  # our row name -> Rifai's, where they differ


def rifai_error(model: str) -> str | None:
    """Rifai et al.'s MNIST test error (%) of a row, as printed, or None."""
    return RIFAI.numbers.get(f"MNIST {PAPER_ROW.get(model, model)}")


def rifai_table() -> list[dict]:
    """Rifai et al. 2011's Table 1 MNIST rows as printed (error %, mean ‖J‖_F, SAT %), from aelab.papers."""
    rows = []
    for label in ("CAE", "DAE-g", "RBM-binary", "DAE-b", "AE+wd", "AE"):
        rows.append(
            {
                "model": label,
                "test error %": RIFAI.numbers[f"MNIST {label}"],
                "mean ‖J‖_F": RIFAI.numbers[f"MNIST {label} jacobian"],
                "SAT %": RIFAI.numbers[f"MNIST {label} SAT %"],
            }
        )
    return rows
