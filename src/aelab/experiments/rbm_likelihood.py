"""Salakhutdinov & Murray (2008), "On the quantitative analysis of deep belief networks", the RBMs on MNIST: binary
RBMs with 500 hidden units trained by CD-1, CD-3, CD-25 and PCD, and a 25-unit RBM (CD-1) whose log Z is exact.

    every row: an `rbm` run folder OUT/<row> (`aelab evaluate OUT/<row>` works on it), the same CD epochs, learning
               rate, batch, weight cost and seed; the images binarised once (binarize=static), all train images used
    then:      log Z by AIS (aelab.metrics.rbm_likelihood: 100 runs, the paper's 14,500 betas, base rate from the
               train images), exact for the small row; mean log p(x) on the train and the test images, each with
               the AIS interval -> results.json ("partial": true until the last row) and the report after every row
A rerun with the same settings on the same OUT keeps the finished rows as they are and continues with the next one
(its run folder resumes from its checkpoint); other settings are refused.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import runs
from ..errors import ConfigError
from ..metrics.rbm_likelihood import MAX_EXACT_STATES, PAPER_RUNS, PAPER_STEPS, likelihood_metrics
from ..options import opt, positive_float, positive_int, seed_value, word_list
from ..progress import Progress
from ..train import TrainConfig
from . import rbm_likelihood_report
from .common import amp_field, device_field, preflight, train_or_resume

# row -> (CD steps, persistent chains, the small row): the paper's CD1(25), CD1(500), CD3(500), CD25(500) and PCD
ROWS = {
    "cd1-25": (1, False, True),
    "cd1-500": (1, False, False),
    "cd3-500": (3, False, False),
    "cd25-500": (25, False, False),
    "pcd-500": (1, True, False),
}
FULL = {"dataset": "mnist", "epochs": 50, "small_hidden": 25, "ais_runs": PAPER_RUNS, "ais_betas": PAPER_STEPS}
QUICK = {"dataset": "mnist5k", "epochs": 1, "small_hidden": 12, "ais_runs": 50, "ais_betas": 1000}
NOT_COMPARED = (
    "out",
    "no_progress",
    "data_dir",
    "amp",
)  # amp changes nothing an RBM row computes  # a rerun may move the data or change what it prints


@dataclass
class Settings:
    out: str = field(default="runs/rbm-likelihood", metadata=opt("output folder"))
    dataset: str | None = field(default=None, metadata=opt("a grey-level dataset (default mnist; --quick: mnist5k)"))
    data_dir: str | None = field(default=None, metadata=opt("folder of downloaded datasets"))
    rows: list[str] = field(
        default_factory=lambda: list(ROWS),
        metadata=opt(f"comma-separated rows, from {', '.join(ROWS)}", parse=word_list(tuple(ROWS))),
    )
    epochs: int | None = field(
        default=None, metadata=opt("CD epochs of every row (default 50; --quick 1)", parse=positive_int)
    )
    hidden: int = field(default=500, metadata=opt("hidden units of the large rows", parse=positive_int))
    small_hidden: int | None = field(
        default=None,
        metadata=opt("hidden units of the exact row, at most 25 (default 25; --quick 12)", parse=positive_int),
    )
    # 0.05 (the mirrored rbm.m's) with momentum 0.9 grew hidden biases to 47 on the 25-unit RBM, whose AIS then fell
    # 3.7 nats below the exact log Z (its chains could not move between modes); 0.01 from W = 0.01 N(0, 1): 0.02 nats
    cd_lr: float = field(default=0.01, metadata=opt("CD learning rate of every row", parse=positive_float))
    init_std: float = field(
        default=0.01,
        metadata=opt("initial weights W = init_std N(0, 1) (the mirrored rbm.m's 0.01)", parse=positive_float),
    )
    cd_batch_size: int = field(default=100, metadata=opt("images per CD update", parse=positive_int))
    weight_cost: float = field(default=2e-4, metadata=opt("weight cost (L2 on W) of the CD updates", parse=float))
    ais_runs: int | None = field(default=None, metadata=opt("AIS runs (default 100; --quick 50)", parse=positive_int))
    ais_betas: int | None = field(
        default=None,
        metadata=opt("AIS beta steps, the paper's shape (default 14500; --quick 1000)", parse=positive_int),
    )
    train_limit: int | None = field(default=None, metadata=opt("use the first N train images", parse=positive_int))
    seed: int = field(default=0, metadata=opt("seed of every row (training and AIS)", parse=seed_value))
    quick: bool = field(
        default=False, metadata=opt("a smoke test: mnist5k, 1 CD epoch, a 12-unit exact row, AIS 50 runs x 1000 betas")
    )
    device: str = device_field()
    amp: bool = amp_field()  # the CD updates do not autocast (RBM.fit's precision is fp32): accepted like everywhere
    no_progress: bool = field(default=False, metadata=opt("no progress bars or lines"))

    def resolved(self) -> dict:
        """The settings the run uses (--quick's defaults filled in), as results.json records them."""
        values = dataclasses.asdict(self)
        for key, value in (QUICK if self.quick else FULL).items():
            if values[key] is None:
                values[key] = value
        return values

    def validate(self) -> None:
        s = self.resolved()
        if not s["rows"]:
            raise ConfigError("--rows: name at least one row")
        if 2 ** s["small_hidden"] > MAX_EXACT_STATES:
            raise ConfigError(f"--small-hidden {s['small_hidden']}: its exact log Z needs at most 25 hidden units")
        if s["ais_runs"] < 2 or s["ais_betas"] < 3:
            raise ConfigError("AIS needs --ais-runs of at least 2 and --ais-betas of at least 3")
        if not 0 <= s["weight_cost"] < 1:
            raise ConfigError(f"--weight-cost must be in [0, 1), got {s['weight_cost']}")


def compared(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in NOT_COMPARED}


def row_label(key: str, settings: dict) -> tuple[str, int]:
    """(the paper's name of the row, its hidden units)."""
    k, persistent, small = ROWS[key]
    hidden = settings["small_hidden"] if small else settings["hidden"]
    return (f"PCD({hidden})" if persistent else f"CD{k}({hidden})"), hidden


def run(settings: Settings) -> Path:
    settings.validate()
    preflight(dataclasses.replace(settings, dataset=settings.resolved()["dataset"]))
    s = settings.resolved()
    out = Path(settings.out)
    started = time.perf_counter()
    rows: list[dict] = []
    saved = out / "results.json"
    if saved.is_file():
        old = runs.read_json(saved)
        if not isinstance(old, dict) or old.get("settings") != compared(s):
            raise ConfigError(
                f"{out} holds an rbm-likelihood run with other settings (see its results.json); "
                "choose another --out, or rerun with the same settings to continue it"
            )
        rows = [r for r in old.get("rows", []) if isinstance(r, dict) and r.get("row") in s["rows"]]
        started -= float(old.get("wall_time_s", 0.0))
    progress, path = not settings.no_progress, None
    if progress and settings.quick:
        print(rbm_likelihood_report.quick_note(s))
    with Progress(f"{out.name or out}: rbm-likelihood", total=len(s["rows"]), unit="row", enabled=progress) as bar:
        for key in s["rows"]:
            if any(r["row"] == key for r in rows):
                bar.update(text=f"{key}: finished already, kept", kept=True)
                continue
            bar.phase(f"{key}: training and log Z")
            rows.append(run_row(key, s, out, progress, settings.data_dir))
            done = len(rows) == len(s["rows"])
            path = rbm_likelihood_report.write(out, compared(s), rows, time.perf_counter() - started, partial=not done)
            bar.update(text=f"{key}: test log p {rows[-1]['test log p']:.2f} nats")
    if path is None:  # every row was finished already: the report again, the rows as they are
        path = rbm_likelihood_report.write(out, compared(s), rows, time.perf_counter() - started, partial=False)
    return path


def run_row(key: str, s: dict, out: Path, progress: bool, data_dir: str | None) -> dict:
    """Train (or resume) one row's run folder, then its log Z and log-probabilities."""
    k, persistent, small = ROWS[key]
    label, hidden = row_label(key, s)
    folder = out / key
    cfg = TrainConfig(
        model="rbm",
        model_options=dict(
            hidden=hidden,
            k=k,
            persistent=persistent,
            cd_epochs=s["epochs"],
            cd_lr=s["cd_lr"],
            init_std=s["init_std"],
            cd_batch_size=s["cd_batch_size"],
            weight_cost=s["weight_cost"],
        ),
        dataset=s["dataset"],
        dataset_options={"binarize": "static"},
        data_dir=data_dir,
        train_limit=s["train_limit"],
        val_fraction=0.0,  # nothing is chosen: every train image trains the RBM
        epochs=1,  # the trainer's epochs only score an RBM (aelab.models.rbm_model)
        seed=s["seed"],
        device=s["device"],
        amp=s["amp"],
        out=str(folder),
        tensorboard=False,
    )
    train_or_resume(cfg, progress=progress)
    config, history = runs.read_config(folder), runs.read_history(folder)
    model = runs.load_model(folder, device=s["device"])
    train_x, _, test_x, _ = runs.run_data(config, data_dir)
    metrics, protocol = likelihood_metrics(
        model.rbm,
        train_x.to(s["device"]),
        test_x.to(s["device"]),
        seed=s["seed"],
        n_runs=s["ais_runs"],
        n_betas=s["ais_betas"],
        exact=small,
        progress=f"{out.name or out}/{key}" if progress else None,
    )
    cd = next((h for h in history if h.get("phase") == "pretrain"), {})
    return {
        "row": key,
        "RBM": label,
        "hidden": hidden,
        "algorithm": f"{'PCD' if persistent else 'CD'}-{k}",
        "CD epochs": s["epochs"],
        "train images": len(train_x),
        "test images": len(test_x),
        "log Z (AIS)": metrics["log_z"],
        "log Z low": metrics.get("log_z_low"),
        "log Z high": metrics["log_z_high"],
        "log Z exact": metrics.get("log_z_exact"),
        **{
            f"{split} log p{end}": metrics.get(f"{split}_log_prob{suffix}")
            for split in ("train", "test")
            for end, suffix in (("", ""), (" low", "_low"), (" high", "_high"), (" exact", "_exact"))
        },  # fmt: skip
        "AIS ESS": metrics["ais_ess"],
        "cd_time_s": cd.get("time_s"),
        "ais": protocol,
    }
