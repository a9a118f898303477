"""The argument tables of the `aelab` command line (aelab.cli builds the parser from them and dispatches)."""

from __future__ import annotations

import argparse
import dataclasses

from . import options
from .options import int_list, key_value, positive_float, positive_int, seed_value


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        # a flag must be spelt whole: `--iwae 10` is refused with a did-you-mean, never taken as --iwae-k 10
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit 2 (argparse prints a usage block otherwise)
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The train flags. Defaults are not filled in here: a flag not given comes from --config, from the run
    folder on --resume, or from TrainConfig's defaults (train_config_from_args)."""
    from . import models
    from .presets import PRESETS
    from .tracking import DEFAULT_MLFLOW_URI

    S = argparse.SUPPRESS
    p.add_argument("--model", default=S, help=f"one of: {', '.join(models.names())} (default ae)")
    p.add_argument(
        "--dataset",
        default=S,
        help="a dataset name (see aelab data list; default mnist5k), or a path: a folder of images "
        "(class subfolders give labels; optional train/ and test/), a .npz (x, y, x_test, y_test) or a .npy",
    )
    p.add_argument(
        "--image-size", type=int_list, default=S, metavar="H,W", help="resize a folder's images (one number: a square)"
    )
    p.add_argument(
        "--data-dir", default=S, help="folder of downloaded datasets (default $AELAB_DATA or ~/.cache/aelab)"
    )
    p.add_argument("--epochs", type=positive_int, default=S, help="default 20")
    p.add_argument("--batch-size", type=positive_int, default=S, help="default 128")
    p.add_argument("--lr", type=positive_float, default=S, help="default 1e-3")
    p.add_argument(
        "--optimizer",
        default=S,
        choices=["adam", "lbfgs", "cg"],
        help="adam (default), lbfgs, or cg: Polak-Ribière conjugate gradients with three line searches per batch "
        "(Hinton & Salakhutdinov's fine-tuner; --lr is not used)",
    )
    p.add_argument(
        "--lr-schedule",
        default=S,
        choices=["constant", "burda"],
        help="constant (default), or burda: --lr times 10^(-i/7) for 3^i epochs, i = 0, 1, ... (Burda et al. 2016)",
    )
    p.add_argument("--adam-eps", type=positive_float, default=S, help="Adam's epsilon (default 1e-8)")
    p.add_argument(
        "--preset",
        default=S,
        choices=sorted(PRESETS),
        help="a paper's settings, under the flags given: burda2016 = 784-200-200-50 tanh, Bernoulli, batch 20, "
        "Adam lr 1e-3 eps 1e-4, the burda lr schedule (Burda et al. 2016, Section 5; for --model vae or iwae)",
    )
    p.add_argument("--seed", type=seed_value, default=S, help="default 0")
    p.add_argument("--device", default=S, help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--amp", action="store_true", default=S, help="the same as --precision bf16")
    p.add_argument(
        "--precision",
        default=S,
        choices=["fp32", "tf32", "bf16"],
        help="fp32 (default); tf32: float32 matmuls on tensor cores; bf16: autocast (CUDA only; fp32 on a CPU)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=options.checkpoint_seconds,
        default=S,
        metavar="SECONDS",
        help="at most one checkpoint per SECONDS (0: every epoch); default: automatic, at most one a minute and "
        "no sooner than 20 times what the last one cost, at least one every 10 minutes; always at the end and on "
        "SIGTERM/Ctrl-C (the last finished epoch)",
    )
    p.add_argument("--compile", action="store_true", default=S, help="torch.compile the loss (no gain on CPU)")
    p.add_argument("--latent", type=positive_int, default=S, help="code size")
    p.add_argument("--hidden", type=int_list, default=S, help="hidden sizes, e.g. 256,64")
    p.add_argument("--loss", default=S, help="mse or bce (ae); bce or gaussian likelihood (vae: --option likelihood=)")
    p.add_argument("--train-limit", type=positive_int, default=S, help="use only the first N training images")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=S,
        help="the stratified validation split carved from the train images (default: 10%%, at most 500 images; "
        "0: none); its loss is recorded per epoch, and it chooses the early-stopping epoch and the probe's C",
    )
    p.add_argument(
        "--early-stopping",
        type=positive_int,
        default=S,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without a lower validation loss; the run keeps the best epoch's weights",
    )
    p.add_argument(
        "--option",
        type=key_value,
        action="append",
        default=S,
        metavar="KEY=VALUE",
        help="any other model option, e.g. --option weight_decay=1e-4 (JSON values)",
    )
    p.add_argument(
        "--dataset-option",
        type=key_value,
        action="append",
        default=S,
        metavar="KEY=VALUE",
        help="a dataset option, repeatable, e.g. binarize=static or binarize=dynamic (see aelab data list)",
    )
    add_network_arguments(p, S)
    p.add_argument(
        "--config",
        default=S,
        metavar="CONFIG_JSON",
        help="re-run a saved config.json (a run folder's); the flags given here override it",
    )
    p.add_argument("--out", default=S, help="run folder (required)")
    p.add_argument(
        "--resume",
        action="store_true",
        default=S,
        help="continue the run in --out from its last checkpoint; its settings come from its config.json",
    )
    p.add_argument(
        "--no-progress", action="store_true", default=S, help="no progress bars (the one line per epoch is kept)"
    )
    p.add_argument("--quiet", action="store_true", default=S, help="no progress bars and no epoch lines")
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=S,
        metavar="N",
        help="train and evaluate N runs, seeds --seed ... --seed+N-1, into OUT/seed-<s>/ (each evaluated without "
        "figures; plain train does not evaluate); OUT/seeds.json and seeds.md give each metric's mean, std and 95%% "
        "interval",
    )

    p.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="log to RUN/tb when the tensorboard package is installed (default: on)",
    )
    p.add_argument(
        "--mlflow",
        nargs="?",
        const=DEFAULT_MLFLOW_URI,
        default=S,
        metavar="URI",
        help="log params, metrics and the report to MLflow (alone: sqlite:///mlflow.db here; or a folder, http://...)",
    )


def json_object(text: str) -> dict:
    try:
        value = options.bounded_json(text, "keyword options")  # depth and length bounded before parsing
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"channels\": 32}}', got {options.shown(text)}"
        )
    return value


def add_network_arguments(p: argparse.ArgumentParser, default, kwargs: bool = True) -> None:
    """--encoder/--decoder pkg.module:Class and their JSON keyword options (aelab.models.imports), and --trust-code.
    A class that a run folder names is imported only when it is named again here (or with --trust-code)."""
    for role in ("encoder", "decoder"):
        p.add_argument(
            f"--{role}",
            default=default,
            metavar="PKG.MODULE:CLASS",
            help=f"your own {role}, a torch.nn.Module class imported by name (its folder on PYTHONPATH); "
            "model.json records it with its options: name it again to evaluate, compare or resume the run",
        )
        if kwargs:
            p.add_argument(
                f"--{role}-kwargs",
                type=json_object,
                default=default,
                metavar="JSON",
                help=f"the {role}'s keyword options (default: those model.json records, for a class named again)",
            )
    p.add_argument(
        "--trust-code",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="import every class the run folder's model.json or config.json names, without naming each again "
        "(importing runs that module's code: only for folders you trust)",
    )


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """The evaluate flags."""
    p.add_argument("run_dir", help="a run folder (made by aelab train, or one row of an experiment)")
    p.add_argument(
        "--iwae-k",
        type=positive_int,
        default=100,
        help="importance samples per test image for the VAE family's NLL bound (default 100)",
    )
    p.add_argument(
        "--tsne-points",
        type=positive_int,
        default=1000,
        help="t-SNE map of the first N test codes (default 1000: the costly part of the figures)",
    )
    p.add_argument("--no-figures", action="store_true", help="eval.json and the report without figures (faster)")
    p.add_argument("--data-dir", default=None, help="folder of downloaded datasets (never downloads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N: where the codes, reconstructions, test loss and IWAE bound are computed "
        "(default cpu; the IWAE samples are drawn on the CPU, so its numbers do not depend on the device)",
    )
    p.add_argument(
        "--test-dataset",
        default=None,
        metavar="NAME",
        help="score on another dataset's test split (a second test set; only its test files are needed), "
        "written to eval-test-NAME.json; PCA and probes stay fitted on the run's train split",
    )
    p.add_argument(
        "--mlflow",
        action="store_true",
        help="also log the evaluation to the MLflow run that RUN/tracking.json records (only for run folders you "
        "trust: the file names the store it is sent to)",
    )
    add_network_arguments(p, None)


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    """The compare flags."""
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run folders, or --seeds folders (a group: mean [95%% interval] per metric, paired differences when "
        "two groups share their seeds); each run is evaluated first where its eval.json is missing or stale",
    )
    p.add_argument("--out", required=True, help="folder for comparison.csv, comparison.md, comparison.html")
    p.add_argument("--data-dir", default=None, help="folder of downloaded datasets (never downloads)")
    p.add_argument("--iwae-k", type=positive_int, default=100, help="IWAE samples for runs evaluated now")
    p.add_argument("--allow-different-data", action="store_true", help="compare runs trained on different data")
    add_network_arguments(p, None, kwargs=False)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The data flags (list, fetch)."""
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("name", nargs="?")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--mirror", default=None, help="base URL to download from instead of the official mirrors")
    p.add_argument("--force", action="store_true", help="download again the files whose checksum is wrong")
    p.add_argument("--deadline", type=options.seconds, default=600.0, help="seconds for one file's whole download")
    p.add_argument(
        "--stall-timeout", type=options.seconds, default=30.0, help="seconds without a byte before giving up"
    )


def add_experiment_run_arguments(q: argparse.ArgumentParser, settings_cls) -> None:
    """How an experiment runs, the same for every experiment (not what it computes: never in its settings)."""
    q.add_argument(
        "--resume",
        action="store_true",
        help="continue the experiment in --out: finished rows and seeds are kept as they are, the rest continues "
        "from its checkpoints (without it, an --out that holds an experiment is refused)",
    )
    q.add_argument("--quiet", action="store_true", help="no progress output at all (the report's path still printed)")
    if "threads" not in {f.name for f in dataclasses.fields(settings_cls)}:
        q.add_argument(
            "--threads",
            type=options.thread_count,
            default=None,
            help="torch and BLAS threads (default: torch's, all cores); more threads can change the last digits",
        )
