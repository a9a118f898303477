"""The `aelab` command line: parses arguments and dispatches, nothing else.

Bad input: one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import importlib
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from . import options
from .errors import AelabError, ConfigError, TrainingDiverged
from .options import int_list, key_value, positive_float, positive_int, seed_value
from .progress import close_all_bars


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


def network_trust(given: dict):
    """The aelab.models.imports.Trust of the flags given: the classes named by --encoder/--decoder, or every class
    with --trust-code."""
    from .models.imports import Trust

    names = frozenset(given[role] for role in ("encoder", "decoder") if isinstance(given.get(role), str))
    return Trust(names=names, everything=bool(given.get("trust_code")))


def network_specs(given: dict) -> dict:
    """{role: {"import": ..., "kwargs": ...}} of the --encoder/--decoder flags given (checked, not imported)."""
    from .errors import ConfigError
    from .models.imports import module_spec

    specs = {}
    for role in ("encoder", "decoder"):
        if given.get(role) is not None:
            specs[role] = module_spec(given[role], given.get(f"{role}_kwargs"))
        elif given.get(f"{role}_kwargs") is not None:
            raise ConfigError(f"--{role}-kwargs needs --{role}")
    return specs


# settings a saved config.json never sets when it is re-run: where things go and run are the caller's choice
_NOT_FROM_SAVED_CONFIG = ("out", "data_dir", "device")


def _saved_settings(path: Path) -> dict:
    """The TrainConfig settings of a saved config.json (schema-checked: the file is untrusted)."""
    from . import runs
    from .errors import ConfigError
    from .train import TrainConfig

    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    config = runs.check_config(runs.read_json(path), str(path))
    if config["dataset"].startswith("python:"):
        raise ConfigError(f"{path}: the run was trained on data given from Python; re-run it from Python")
    names = {f.name for f in dataclasses.fields(TrainConfig)} - set(_NOT_FROM_SAVED_CONFIG)
    saved = {k: v for k, v in config.items() if k in names}
    saved["model_options"] = {k: v for k, v in config["model_options"].items() if k != "input_shape"}
    return saved


def train_config_from_args(args):
    """TrainConfig from, in order of precedence: the flags given, --config FILE (or, on --resume, the run
    folder's config.json), TrainConfig's defaults."""
    from .errors import ConfigError
    from .train import TrainConfig

    given = vars(args)
    if "out" not in given:
        raise ConfigError("--out is required: the run folder to write (or, with --resume, to continue)")
    saved: dict = {}
    saved_from: Path | None = None  # the config.json the settings come from (untrusted)
    if "config" in given:
        saved_from = Path(args.config)
        saved = _saved_settings(saved_from)
        saved.pop("init_weights", None)  # an untrusted file names no weights file to read (a resume reads none)
    elif given.get("resume") and "seeds" in given:
        from .seeds import first_run_config

        saved_from = first_run_config(args.out)
        saved = _saved_settings(saved_from) if saved_from is not None else {}
    elif given.get("resume") and (Path(args.out) / "config.json").exists():
        saved_from = Path(args.out) / "config.json"
        # init_weights stays a record that --resume compares, never a file it reads (aelab.train: a resume starts
        # from its checkpoint, which holds those weights already)
        saved = _saved_settings(saved_from)
    recorded_mlflow = saved.pop("mlflow", None)  # an untrusted file names no store or server to contact:
    if recorded_mlflow and "mlflow" not in given and given.get("resume"):  # only the command line does
        print(
            f"aelab: note: this run logged to MLflow at {recorded_mlflow}; pass --mlflow URI to go on logging "
            "there (a run folder's config.json is never followed to a store or server)",
            file=sys.stderr,
        )
    settings = {**saved}
    preset_options: dict = {}
    if "preset" in given:  # a paper's settings: over a saved config's, under the flags given
        from .presets import PRESETS

        preset = PRESETS[given["preset"]]
        model = given.get("model", saved.get("model", "ae"))
        if model not in preset["models"]:
            raise ConfigError(f"--preset {given['preset']} is for --model {' or '.join(preset['models'])}, not {model}")
        settings.update(preset["settings"])
        preset_options = dict(preset["model_options"])
    for key in (
        "model",
        "dataset",
        "data_dir",
        "train_limit",
        "val_fraction",
        "early_stopping",
        "epochs",
        "batch_size",
        "lr",
        "lr_schedule",
        "adam_eps",
        "optimizer",
        "seed",
        "device",
        "amp",
        "precision",
        "checkpoint_every",
        "compile",
        "out",
        "tensorboard",
        "mlflow",
    ):
        if key in given:
            settings[key] = given[key]
    # a different model (dataset) than the saved one does not inherit the saved one's options
    model_options = dict(saved.get("model_options", {})) if settings.get("model") == saved.get("model") else {}
    dataset_options = dict(saved.get("dataset_options", {})) if settings.get("dataset") == saved.get("dataset") else {}
    model_options.update(preset_options)
    model_options.update(dict(given.get("option", [])))
    flagged = network_specs(given)
    for role, spec in flagged.items():  # a class named again without --ROLE-kwargs keeps the kwargs recorded
        recorded = model_options.get(role)
        if f"{role}_kwargs" not in given and isinstance(recorded, dict) and recorded.get("import") == spec["import"]:
            flagged[role] = {**spec, "kwargs": recorded.get("kwargs", {})}
    model_options.update(flagged)
    if saved_from is not None:  # classes a saved config.json names: imported only when trusted (the trust rule)
        from .models.imports import refuse_inside, require_trusted

        trust = network_trust(given)
        for role in ("encoder", "decoder"):
            if role not in flagged and isinstance(model_options.get(role), dict):
                spec = require_trusted(role, model_options[role], trust, str(saved_from))
                refuse_inside(spec, [saved_from.parent])
    for flag in ("latent", "hidden", "loss"):
        if flag in given:
            model_options[flag] = given[flag]
    dataset_options.update(dict(given.get("dataset_option", [])))
    if "image_size" in given:
        size = given["image_size"]
        dataset_options["image_size"] = size * 2 if len(size) == 1 else size  # --image-size 32: 32x32
    settings.update(model_options=model_options, dataset_options=dataset_options)
    return TrainConfig(**settings)


def cmd_train(args) -> int:
    from . import runs
    from .metrics.convergence import recorded_warnings, still_falling_warning
    from .train import dist_info, train

    cfg = train_config_from_args(args)
    quiet = getattr(args, "quiet", False)
    bars, lines = not (quiet or getattr(args, "no_progress", False)), not quiet
    if "seeds" in vars(args):
        from .metrics.intervals import format_interval
        from .seeds import format_choices, train_seeds

        try:
            out = train_seeds(cfg, args.seeds, getattr(args, "resume", False), bars, lines)
        except (KeyboardInterrupt, SystemExit) as e:
            if _stopping is None:  # not a signal (a user module's SystemExit): as before
                raise
            close_all_bars()
            print(stopped_line(e, args, args.seeds), file=sys.stderr)
            return 128 + signal.Signals[_stopping]
        summary = runs.read_json(out / "seeds.json")
        for name, values in summary["metrics"].items():
            print(f"{name:>24}: {format_interval(values, None)}")
        for name, values in summary.get("choices", {}).items():
            print(f"{name:>24}: chosen per seed {format_choices(values)}")
        for run in summary["runs"]:
            for warning in recorded_warnings(runs.read_json(out / run / "eval.json")):
                print(f"aelab: warning: {out / run}: {warning}", file=sys.stderr)
        print(f"seeds summary: {out / 'seeds.md'}")
        return 0
    try:
        out = train(cfg, resume=getattr(args, "resume", False), progress=bars, epoch_lines=lines)
    except (KeyboardInterrupt, SystemExit) as e:
        if _stopping is None or dist_info()[0] != 0:  # not a signal, or not the rank that speaks: as before
            raise
        close_all_bars()
        print(stopped_line(e, args), file=sys.stderr)
        return 128 + signal.Signals[_stopping]
    if dist_info()[0] == 0:
        warning = still_falling_warning(runs.read_history(out), str(out))
        if warning:
            print(f"aelab: warning: {warning}", file=sys.stderr)
        print(f"run folder: {out}")
    return 0


def _run_folder_argument(path: str) -> str:
    if not str(path).strip():
        raise ConfigError("expected a run folder, got an empty name")
    return path


def _networks(run_dir: str, given: dict) -> tuple[dict, object]:
    """(modules built from the flags, the Trust of the flags) for a run: a class named for a run built in Python
    (model.json says custom:...) is built from the flags; one that model.json names by import path is only
    trusted, and rebuilt with the options model.json records."""
    from . import runs
    from .models.imports import build

    recorded = runs.recorded_networks(run_dir)
    modules = {}
    for role, spec in network_specs(given).items():
        if recorded.get(role) in (None, "custom"):  # a run built in Python (or a built-in network: refused later)
            modules[role] = build(role, spec)
        elif recorded[role] != spec["import"]:
            raise ConfigError(f"{run_dir}/model.json records the {role} {recorded[role]}, not {spec['import']}")
    return modules, network_trust(given)


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    networks, trust = _networks(_run_folder_argument(args.run_dir), vars(args))
    result = evaluate(
        _run_folder_argument(args.run_dir),
        **networks,
        trust_code=trust,
        iwae_k=args.iwae_k,
        tsne_points=args.tsne_points,
        figures=not args.no_figures,
        data_dir=args.data_dir,
        progress=not args.no_progress,
        test_dataset=args.test_dataset,
        log_mlflow=args.mlflow,
        device=args.device,
    )
    for k, v in result["metrics"].items():
        print(f"{k:>24}: {v:.6g}" if isinstance(v, float) else f"{k:>24}: {v}")
    for warning in result.get("warnings", []):
        print(f"aelab: warning: {warning}", file=sys.stderr)
    if args.test_dataset is None:
        print(f"report: {Path(args.run_dir) / 'report.html'}")
    else:
        print(f"scored on {result['data']['score_split']}")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare

    result = compare(
        [_run_folder_argument(r) for r in args.runs],
        args.out,
        data_dir=args.data_dir,
        iwae_k=args.iwae_k,
        allow_different_data=args.allow_different_data,
        trust_code=network_trust(vars(args)),
    )
    for note in result["notes"]:
        print(note)
    md = Path(result["files"]["html"]).with_suffix(".md")
    print(f"comparison: {result['files']['html']} (the table: {md}; every number: comparison.csv, .json)")
    return 0


def cmd_models(args) -> int:
    from . import models

    for name, text in models.describe().items():
        print(f"{name:<12} {text}")
    return 0


def cmd_data(args) -> int:
    from . import data

    if args.action == "list":
        data.datasets.check_data_dir(args.data_dir)
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

    given = set(_argv or [])
    for old, new in options.deprecated_aliases(module.Settings).items():
        if old in given or any(a.startswith(old + "=") for a in given):
            print(f"aelab: note: {old} is deprecated; it is now {new}", file=sys.stderr)
    settings = options.from_args(module.Settings, args)
    if args.quiet and hasattr(settings, "no_progress"):
        settings = dataclasses.replace(settings, no_progress=True)
    if hasattr(settings, "validate"):
        settings.validate()
    if not str(settings.out).strip():
        raise AelabError("--out must name a folder")
    from .experiments.common import check_resume, preflight

    preflight(settings)  # a bad --device or missing data: one line, before the output folder is made
    out = Path(settings.out)
    check_resume(out, args.resume)  # an --out that holds an experiment needs --resume, and --resume needs one
    existed = out.exists()
    threads = getattr(args, "threads", None)
    from .progress import Progress

    quiet = getattr(settings, "no_progress", False)
    try:  # the experiment's own Progress: whatever step runs inside, a line at least every HEARTBEAT_S seconds
        with RunLock(settings.out), _threads(threads), Progress(f"experiment {args.experiment}", enabled=not quiet):
            path = module.run(settings)
    except AelabError:
        if not existed:
            _remove_if_untouched(out)
        raise
    except (KeyboardInterrupt, SystemExit):
        if _stopping is None:  # not a signal (a user module's SystemExit): as before
            raise
        close_all_bars()
        if not existed:
            _remove_if_untouched(out)
        print(experiment_stopped_line(args.experiment, out), file=sys.stderr)
        return 128 + signal.Signals[_stopping]
    print(f"report: {path}")
    return 0


def experiment_stopped_line(name: str, out: Path) -> str:
    """What a stopped experiment says: what is kept, and the command that continues it (this command line with
    --resume: an experiment's settings are all on its command line)."""
    import shlex

    if not out.exists():
        return f"aelab: experiment {name} stopped ({_stopping}) before it wrote anything; run the same command again"
    words = [w for w in _argv if w != "--resume"]
    command = shlex.join(["aelab", *words, "--resume"])
    saved = [p for p in (out / "results.json", *sorted(out.glob("seed-*/results.json"))) if p.exists()]
    where = str(saved[0]) if len(saved) == 1 else f"{out}/seed-*/results.json" if saved else ""
    kept = (
        f"the finished rows and seeds are in {where} (marked partial) and every run keeps its last checkpoint"
        if saved
        else f"every run in {out} keeps its last checkpoint; no row had finished"
    )
    return f"aelab: experiment {name} stopped ({_stopping}); {kept}. Continue with: {command}"


@contextlib.contextmanager
def _threads(n: int | None):
    """torch's and the BLAS libraries' threads for the experiment (--threads), restored after."""
    if n is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def _remove_if_untouched(out: Path) -> None:
    """After a refusal: remove the output folder this command made, when it holds nothing but the lock and the
    seeds' settings (no training had started); anything else in it is work, and is kept."""
    import shutil

    scaffolding = {".lock", "seed_settings.json"}
    files = [f for f in out.rglob("*") if not f.is_dir()]
    if all(f.name in scaffolding for f in files):
        shutil.rmtree(out, ignore_errors=True)


def build_parser(experiment: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; `experiment` names the one experiment whose settings become flags."""
    from .experiments import EXPERIMENTS
    from .version import __version__

    parser = _Parser(prog="aelab", description="Train, evaluate and compare the classic autoencoder family.")
    parser.add_argument("--version", action="version", version=f"aelab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "train",
        help="train a model into a run folder",
        description="Train a model into a run folder (config.json, metrics.jsonl, model.safetensors, checkpoint). "
        "Plain train does not evaluate: aelab evaluate RUN writes eval.json, report.html/md and figures/. "
        "With --seeds N every seed is trained and then evaluated (eval.json and report.html/md without figures: "
        "the group's summary needs each seed's metrics; aelab evaluate OUT/seed-S draws a seed's figures).",
    )
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="write eval.json, figures and report.html for a run folder")
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
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "compare",
        help="compare runs and seed groups: comparison.csv, .json, .md and .html with curves and reconstructions",
    )
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
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("models", help="list the model names")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="list or download datasets")
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("name", nargs="?")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--mirror", default=None, help="base URL to download from instead of the official mirrors")
    p.add_argument("--force", action="store_true", help="download again the files whose checksum is wrong")
    p.add_argument("--deadline", type=options.seconds, default=600.0, help="seconds for one file's whole download")
    p.add_argument(
        "--stall-timeout", type=options.seconds, default=30.0, help="seconds without a byte before giving up"
    )
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("experiment", help="run a paper's experiment end to end")
    exp = p.add_subparsers(dest="experiment", required=True, parser_class=_Parser)
    for name, (module_name, text) in EXPERIMENTS.items():
        q = exp.add_parser(name, help=text)
        q.set_defaults(func=cmd_experiment, experiment_module=module_name)
        if name == experiment:  # only the chosen experiment's module is imported (it imports torch)
            module = importlib.import_module(f".experiments.{module_name}", __package__)
            options.add_arguments(q, module.Settings)
            add_experiment_run_arguments(q, module.Settings)
    return parser


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


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _chosen_experiment(argv: list[str]) -> str | None:
    from .experiments import EXPERIMENTS

    words = [a for a in argv if not a.startswith("-")]
    if len(words) >= 2 and words[0] == "experiment" and words[1] in EXPERIMENTS:
        return words[1]
    return None


_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """aelab's own warnings as one line, "aelab: warning: ..."; other libraries' never reach the screen (what matters
    of them, e.g. a probe that did not converge, aelab says in a line of its own), except with AELAB_DEBUG=1."""
    if str(Path(filename).resolve()).startswith(_PACKAGE_DIR):
        print(f"aelab: warning: {_one_line(message)}", file=sys.stderr if file is None else file)
    elif os.environ.get("AELAB_DEBUG"):
        _default_showwarning(message, category, filename, lineno, file, line)


@contextlib.contextmanager
def _slow_start(after: float = 2.0, stream=None):
    """On a terminal, one notice if the body (importing torch: 10 s and more on a busy machine) is still running
    after `after` seconds, so that a command never sits silent while it starts; erased when the body ends, so that
    what follows (a bad input's one line) stands alone. Nothing when it is quick, nothing in a log or a pipe."""
    stream = stream or sys.stderr
    shown = threading.Event()

    def notice() -> None:
        stream.write("aelab: starting (importing torch; slow on a busy machine) ...")
        stream.flush()
        shown.set()

    timer = threading.Timer(after, notice)
    timer.daemon = True
    if stream.isatty():
        timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if timer.is_alive():  # a notice being written: let it finish before it is erased
            timer.join()
        if shown.is_set():
            stream.write("\r\033[K")  # the notice erased: the line is free for what comes next
            stream.flush()


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
    try:  # the experiments' modules import torch: on a busy machine a Ctrl-C can come while they load
        with _slow_start():
            parser = build_parser(_chosen_experiment(argv))
    except KeyboardInterrupt:
        print("aelab: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:  # one line, with the flag the user probably meant
            parser.error(f"unrecognized arguments: {' '.join(extras)}{_did_you_mean(parser, args, extras)}")
    except SystemExit as e:  # argparse's own errors (exit 2) and --help/--version (exit 0)
        return int(e.code or 0)
    global _argv
    _argv = argv
    # SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C: the finally blocks remove partial downloads
    # and temp files and release the run folder's lock
    previous_sigterm = previous_sigint = None
    if threading.current_thread() is threading.main_thread():
        global _stopping
        _stopping = None
        previous_sigterm = signal.signal(signal.SIGTERM, _stop_signal)
        previous_sigint = signal.signal(signal.SIGINT, _stop_signal)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.showwarning = _show_warning
            if args.func in (cmd_train, cmd_evaluate, cmd_compare):
                with _slow_start():
                    import torch  # noqa: F401, PLC0415 (the command's first import, seconds on a busy machine)
            status = args.func(args)
            sys.stdout.flush()  # a write error of buffered output (a full disk, a closed pipe) is reported here
            return status
    except AelabError as e:
        close_all_bars()  # the error's line on a line of its own
        print(f"aelab: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"aelab: training stopped: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        close_all_bars()
        print("aelab: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if _stopping == "SIGTERM" and e.code == 128 + signal.SIGTERM:  # kill, a scheduler's timeout
            close_all_bars()
            print("aelab: stopped (SIGTERM)", file=sys.stderr)
        raise
    except BrokenPipeError:  # `aelab models | head`: the reader left; nothing more can be written there
        _silence_stdout()
        print("aelab: error: the output was closed before everything was written (broken pipe)", file=sys.stderr)
        return 2

    except Exception as e:  # a bug, not bad input: one line and exit 1 (AELAB_DEBUG=1 shows the traceback)
        close_all_bars()
        if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:  # a name no file system takes: bad input
            name = str(e.filename or "")
            print(f"aelab: error: file name too long: {name[:60]}{'...' if len(name) > 60 else ''}", file=sys.stderr)
            return 2
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk is not a bug
            _silence_stdout()
            where = e.filename or "the output"
            print(f"aelab: error: cannot write {where}: {os.strerror(e.errno).lower()}", file=sys.stderr)
            return 2
        if os.environ.get("AELAB_DEBUG"):
            raise
        print(
            f"aelab: internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]} "
            "(run with AELAB_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        _leave_process_group()
        if previous_sigterm is not None:  # main() called from Python (tests): the caller's handlers again
            signal.signal(signal.SIGTERM, previous_sigterm)
            signal.signal(signal.SIGINT, previous_sigint)


_argv: list[str] = []  # the command line main() parsed: what a stopped run's resume command falls back to
_stopping: str | None = None  # the signal that is stopping this command (SIGTERM, SIGINT), None until one came


def _stop_signal(signum, frame):
    """SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C: SystemExit(143), KeyboardInterrupt. Once one has
    come, the next ones are noted and ignored, so that they cannot cut short the checkpoint and the line that the
    first one is writing (kill -9 still stops at once; every file is written atomically)."""
    global _stopping
    if _stopping is not None:
        os.write(2, b"aelab: already stopping: writing the last finished epoch (kill -9 stops at once)\n")
        return
    _stopping = signal.Signals(signum).name
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _did_you_mean(parser: argparse.ArgumentParser, args, extras: list[str]) -> str:
    """'; did you mean --model?' for the first unknown flag close to one of the chosen command's flags (difflib),
    '' when none is."""
    import difflib

    chosen = parser
    while True:  # the (sub)parser of the command given: aelab train, aelab experiment demo, ...
        sub = next((a for a in chosen._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, sub.dest, None) if sub is not None else None
        if name not in (sub.choices if sub is not None else {}):
            break
        chosen = sub.choices[name]
    known = [o for a in chosen._actions for o in a.option_strings if o.startswith("--")]
    for word in extras:
        if word.startswith("-"):
            close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.6)
            if close:
                return f"; did you mean {close[0]}?"
    return ""


def stopped_line(error: BaseException, args, seeds: int | None = None) -> str:
    """What a train stopped by SIGTERM or Ctrl-C says: where it stopped, which checkpoint is kept, and the command
    that continues it (the flags config.json does not record, and --seeds N for a seed group)."""
    import shlex

    from . import runs

    out = Path(args.out)
    info = getattr(error, "aelab_stop", None) or {}
    run = Path(info.get("out", out))
    how = f" ({_stopping})" if _stopping else ""
    if info:
        where = f"stopped at epoch {info['epoch']} of {info['epochs']}{how}"
        kept = info.get("checkpoint")
    else:
        where = f"stopped{how} outside the epochs (loading data, pretraining or evaluating)"
        history = runs.read_history(run) if (run / "checkpoint.safetensors").exists() else []
        kept = max((h["epoch"] for h in history), default=0) if history else None
    if seeds and run != out:
        where += f" in {run.name}"
    saved = (out / "config.json").exists() if not seeds else any(out.glob("seed-*/config.json"))
    checkpoint = (
        f"checkpoint of epoch {kept} kept in {run}"
        if kept is not None
        else "the finished seeds are kept, the others continue from their checkpoints"
        if seeds and not info and saved
        else "no seed had started, nothing was kept: the resume starts from the beginning"
        if seeds and not info
        else "no checkpoint yet (no epoch had finished): the resume starts it from the beginning"
    )
    if saved:  # the settings come from config.json; what it does not record is given again
        words = ["aelab", "train", "--out", str(out), *(["--seeds", str(seeds)] if seeds else []), "--resume"]
        given = vars(args)
        for key in ("data_dir", "device", "encoder", "decoder", "mlflow"):
            if isinstance(given.get(key), str):
                from .tracking import redact_uri

                value = redact_uri(given[key]) if key == "mlflow" else given[key]
                words += [f"--{key.replace('_', '-')}", value]
        words += [f"--{k.replace('_', '-')}" for k in ("trust_code", "no_progress", "quiet") if given.get(k) is True]
    else:  # stopped before config.json: the same command again
        words = ["aelab", *_argv, *([] if "--resume" in _argv else ["--resume"])]
    return f"aelab: {where}; {checkpoint}; resume with: {shlex.join(words)}"


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of an unwritable stdout fails silently."""
    try:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (open until the process exits)
    except OSError:
        pass


def _leave_process_group() -> None:
    """Under torchrun, leave the process group before the interpreter exits: a gloo group left to the exit can
    abort (SIGABRT) once its peer is gone, turning a finished or cleanly refused run into a crash."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
