"""What the `aelab` commands do, apart from parsing and dispatching (aelab.cli): the TrainConfig of the train
flags, and the commands that keep no signal state (evaluate, compare, models, data; cmd_train and cmd_experiment
stay in aelab.cli with the signal handling they share with main)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path

from .errors import AelabError, ConfigError


def network_trust(given: dict):
    """The aelab.models.imports.Trust of the flags given: the classes named by --encoder/--decoder, or every class
    with --trust-code."""
    from .models.imports import Trust

    names = frozenset(given[role] for role in ("encoder", "decoder") if isinstance(given.get(role), str))
    return Trust(names=names, everything=bool(given.get("trust_code")))


def network_specs(given: dict) -> dict:
    """{role: {"import": ..., "kwargs": ...}} of the --encoder/--decoder flags given (checked, not imported)."""
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


# settings a train flag sets under its own name, over a saved config.json's and a preset's
_FLAG_SETTINGS = (
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
)


def train_config_from_args(args):
    """TrainConfig from, in order of precedence: the flags given, --config FILE (or, on --resume, the run
    folder's config.json), TrainConfig's defaults."""
    from .train import TrainConfig

    given = vars(args)
    if "out" not in given:
        raise ConfigError("--out is required: the run folder to write (or, with --resume, to continue)")
    saved, saved_from = _saved_train_settings(args, given)  # saved_from: the config.json they come from (untrusted)
    _note_recorded_mlflow(saved.pop("mlflow", None), given)
    settings = {**saved}
    preset_options: dict = {}
    if "preset" in given:  # a paper's settings: over a saved config's, under the flags given
        preset = _preset(given, saved)
        settings.update(preset["settings"])
        preset_options = dict(preset["model_options"])
    settings.update({key: given[key] for key in _FLAG_SETTINGS if key in given})
    model_options = _model_options(given, settings, saved, preset_options, saved_from)
    settings.update(model_options=model_options, dataset_options=_dataset_options(given, settings, saved))
    return TrainConfig(**settings)


def _saved_train_settings(args, given: dict) -> tuple[dict, Path | None]:
    """(the settings of the saved config.json the flags name, its path): --config FILE, or on --resume the run
    folder's (or a seed group's first run's); ({}, None) when there is none."""
    if "config" in given:
        saved_from = Path(args.config)
        saved = _saved_settings(saved_from)
        saved.pop("init_weights", None)  # an untrusted file names no weights file to read (a resume reads none)
        return saved, saved_from
    if given.get("resume") and "seeds" in given:
        from .seeds import first_run_config

        saved_from = first_run_config(args.out)
        return (_saved_settings(saved_from) if saved_from is not None else {}), saved_from
    if given.get("resume") and (Path(args.out) / "config.json").exists():
        saved_from = Path(args.out) / "config.json"
        # init_weights stays a record that --resume compares, never a file it reads (aelab.train: a resume starts
        # from its checkpoint, which holds those weights already)
        return _saved_settings(saved_from), saved_from
    return {}, None


def _note_recorded_mlflow(recorded_mlflow, given: dict) -> None:
    """An untrusted file names no store or server to contact: only the command line does."""
    if recorded_mlflow and "mlflow" not in given and given.get("resume"):
        print(
            f"aelab: note: this run logged to MLflow at {recorded_mlflow}; pass --mlflow URI to go on logging "
            "there (a run folder's config.json is never followed to a store or server)",
            file=sys.stderr,
        )


def _preset(given: dict, saved: dict) -> dict:
    """The --preset's entry of aelab.presets.PRESETS, refused for a model it is not for."""
    from .presets import PRESETS

    preset = PRESETS[given["preset"]]
    model = given.get("model", saved.get("model", "ae"))
    if model not in preset["models"]:
        raise ConfigError(f"--preset {given['preset']} is for --model {' or '.join(preset['models'])}, not {model}")
    return preset


def _model_options(given: dict, settings: dict, saved: dict, preset_options: dict, saved_from: Path | None) -> dict:
    """The model options: the saved ones (for the same model), the preset's, --option, --encoder/--decoder, then
    --latent, --hidden, --loss. A class a saved config.json names is imported only when trusted (the trust rule)."""
    # a different model than the saved one does not inherit the saved one's options
    model_options = dict(saved.get("model_options", {})) if settings.get("model") == saved.get("model") else {}
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
    return model_options


def _dataset_options(given: dict, settings: dict, saved: dict) -> dict:
    """The dataset options: the saved ones (for the same dataset), --dataset-option, --image-size."""
    # a different dataset than the saved one does not inherit the saved one's options
    dataset_options = dict(saved.get("dataset_options", {})) if settings.get("dataset") == saved.get("dataset") else {}
    dataset_options.update(dict(given.get("dataset_option", [])))
    if "image_size" in given:
        size = given["image_size"]
        dataset_options["image_size"] = size * 2 if len(size) == 1 else size  # --image-size 32: 32x32
    return dataset_options


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
