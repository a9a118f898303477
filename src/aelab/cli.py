"""The `aelab` command line: parses arguments and dispatches, nothing else.

Bad input: one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path

from . import options
from .errors import AelabError, TrainingDiverged
from .options import int_list, key_value, positive_float, positive_int, seed_value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints a usage block otherwise)
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from . import models
    from .tracking import DEFAULT_MLFLOW_URI

    p.add_argument("--model", default="ae", help=f"one of: {', '.join(models.names())}")
    p.add_argument("--dataset", default="mnist5k", help="a dataset name (see aelab data list)")
    p.add_argument(
        "--data-dir", default=None, help="folder of downloaded datasets (default $AELAB_DATA or ~/.cache/aelab)"
    )
    p.add_argument("--epochs", type=positive_int, default=20)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--optimizer", default="adam", choices=["adam", "lbfgs"])
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (no-op with a warning on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the loss (measured: no gain on CPU)")
    p.add_argument("--latent", type=positive_int, default=None, help="code size")
    p.add_argument("--hidden", type=int_list, default=None, help="hidden sizes, e.g. 256,64")
    p.add_argument(
        "--loss", default=None, help="mse or bce (ae); bce or gaussian likelihood (vae: --option likelihood=)"
    )
    p.add_argument("--train-limit", type=positive_int, default=None, help="use only the first N training images")
    p.add_argument(
        "--option",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other model option, e.g. --option weight_decay=1e-4 (JSON values)",
    )
    p.add_argument("--dataset-option", type=key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log to RUN/tb when the tensorboard package is installed (default: on)",
    )
    p.add_argument(
        "--mlflow",
        nargs="?",
        const=DEFAULT_MLFLOW_URI,
        default=None,
        metavar="URI",
        help="log params, metrics and the report to MLflow (alone: sqlite:///mlflow.db here; or a folder, http://...)",
    )


def train_config_from_args(args):
    from .train import TrainConfig

    options = dict(args.option)
    if args.latent is not None:
        options["latent"] = args.latent
    if args.hidden is not None:
        options["hidden"] = args.hidden
    if args.loss is not None:
        options["loss"] = args.loss
    return TrainConfig(
        model=args.model,
        model_options=options,
        dataset=args.dataset,
        dataset_options=dict(args.dataset_option),
        data_dir=args.data_dir,
        train_limit=args.train_limit,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        compile=args.compile,
        out=args.out,
        tensorboard=args.tensorboard,
        mlflow=args.mlflow,
    )


def cmd_train(args) -> int:
    from .train import dist_info, train

    out = train(train_config_from_args(args), resume=args.resume, progress=not args.no_progress)
    if dist_info()[0] == 0:
        print(f"run folder: {out}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    result = evaluate(
        args.run_dir,
        iwae_k=args.iwae_k,
        tsne_points=args.tsne_points,
        figures=not args.no_figures,
        data_dir=args.data_dir,
    )
    for k, v in result["metrics"].items():
        print(f"{k:>24}: {v:.6g}" if isinstance(v, float) else f"{k:>24}: {v}")
    print(f"report: {Path(args.run_dir) / 'report.html'}")
    return 0


def cmd_models(args) -> int:
    from . import models

    for name, text in models.describe().items():
        print(f"{name:<12} {text}")
    return 0


def cmd_data(args) -> int:
    from . import data

    if args.action == "list":
        root = data.data_dir(args.data_dir)
        print(f"{'name':<15} {'train/test':<13} {'offline':<8} description (data dir: {root})")
        sizes = {"mnist5k": "4000/1000", "digits": "1437/360", "colored-mnist": "4000/1000"}
        for name in data.names():
            if name in data.IDX_DATASETS:
                ds = data.IDX_DATASETS[name]
                desc, size = f"official IDX files from {ds.mirrors[0]}", f"{ds.n_train}/{ds.n_test}"
            else:
                desc = {**data.EMBEDDED, **data.datasets.DERIVED}[name]
                size = sizes.get(name, "")
            offline = "yes" if data.available_offline(name, args.data_dir) else "no"
            print(f"{name:<15} {size:<13} {offline:<8} {desc}")
        return 0
    if not args.name:
        raise AelabError(f"aelab data fetch needs a dataset name; choose from {', '.join(data.IDX_DATASETS)}")
    if args.mirror is not None:
        data.datasets.check_url(args.mirror)
    folder = data.fetch(
        args.name,
        args.data_dir,
        mirrors=[args.mirror] if args.mirror else None,
        quiet=False,
        force=args.force,
        deadline_s=args.deadline,
        stall_s=args.stall_timeout,
    )
    for split in ("train", "test"):
        x, _ = data.load(args.name, split, args.data_dir)
        print(f"{args.name}/{split}: {tuple(x.shape)}")
    print(f"ready in {folder}")
    return 0


def cmd_experiment(args) -> int:
    module = importlib.import_module(f".experiments.{args.experiment_module}", __package__)
    from .runs import RunLock

    settings = options.from_args(module.Settings, args)
    if hasattr(settings, "validate"):
        settings.validate()
    if not str(settings.out).strip():
        raise AelabError("--out must name a folder")
    with RunLock(settings.out):  # the experiment's own files; each of its runs locks its own folder too
        path = module.run(settings)
    print(f"report: {path}")
    return 0


def build_parser(experiment: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; `experiment` names the one experiment whose settings become flags."""
    from . import __version__
    from .experiments import EXPERIMENTS

    parser = _Parser(prog="aelab", description="Train, evaluate and compare the classic autoencoder family.")
    parser.add_argument("--version", action="version", version=f"aelab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model into a run folder")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="write eval.json, figures and report.html for a run folder")
    p.add_argument("run_dir")
    p.add_argument("--iwae-k", type=positive_int, default=100)
    p.add_argument("--tsne-points", type=positive_int, default=2000)
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--data-dir", default=None, help="folder of downloaded datasets (never downloads)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("models", help="list the model names")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="list or download datasets")
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("name", nargs="?")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--mirror", default=None, help="base URL to download from instead of the official mirrors")
    p.add_argument("--force", action="store_true", help="download again the files whose checksum is wrong")
    p.add_argument("--deadline", type=positive_float, default=600.0, help="seconds for one file's whole download")
    p.add_argument("--stall-timeout", type=positive_float, default=30.0, help="seconds without a byte before giving up")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("experiment", help="run a paper's experiment end to end")
    exp = p.add_subparsers(dest="experiment", required=True, parser_class=_Parser)
    for name, (module_name, text) in EXPERIMENTS.items():
        q = exp.add_parser(name, help=text)
        q.set_defaults(func=cmd_experiment, experiment_module=module_name)
        if name == experiment:  # only the chosen experiment's module is imported (it imports torch)
            module = importlib.import_module(f".experiments.{module_name}", __package__)
            options.add_arguments(q, module.Settings)
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _chosen_experiment(argv: list[str]) -> str | None:
    from .experiments import EXPERIMENTS

    words = [a for a in argv if not a.startswith("-")]
    if len(words) >= 2 and words[0] == "experiment" and words[1] in EXPERIMENTS:
        return words[1]
    return None


def main(argv: list[str] | None = None) -> int:
    # Before torch starts OpenMP: idle OpenMP threads then sleep instead of spinning. On a busy (shared) machine
    # spinning threads of several processes starve each other (measured: a CAE step 1344 ms spinning vs 74 ms).
    # Set here, when the command runs, not on import: importing aelab changes no global state.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else list(argv)
    for a in argv:  # argparse drops a "--" value (--epochs=--) and silently keeps the default
        if a.startswith("--") and a.endswith("=--"):
            print(f"aelab: error: argument {a.split('=')[0]}: expected a value, got '--'", file=sys.stderr)
            return 2
    parser = build_parser(_chosen_experiment(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse's own errors (exit 2) and --help/--version (exit 0)
        return int(e.code or 0)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            return args.func(args)
    except AelabError as e:
        print(f"aelab: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"aelab: training stopped: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aelab: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: one line and exit 1 (AELAB_DEBUG=1 shows the traceback)
        if os.environ.get("AELAB_DEBUG"):
            raise
        print(
            f"aelab: internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]} "
            "(run with AELAB_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
