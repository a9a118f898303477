"""Experiment tracking: TensorBoard and MLflow, both optional, in one place.

    TensorBoard  RUN/tb: the run's hyperparameters (hparams plugin), the per-epoch scalars and, at the end,
                 reconstructions; only when the optional `tensorboard` package is importable.
    MLflow       one MLflow run per aelab run: the config as params, the per-epoch metrics (step = epoch) and,
                 from `evaluate(write=True)`, the eval.json numbers and the report as artifacts.
                 RUN/tracking.json records the MLflow run's id and store, so a --resume continues the same
                 MLflow run and evaluate finds it.

Tracking never costs a run: any MLflow error (bad URI, unwritable store, server down) is reported once, as one
line on stderr, and the rest of the logging is skipped; training and evaluation go on.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import AelabError, ConfigError

# bare --mlflow: MLflow's own default local store (what `mlflow ui` opens in the same folder); MLflow >= 3 keeps
# the ./mlruns file store in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE is set
DEFAULT_MLFLOW_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "aelab"  # MLFLOW_EXPERIMENT_NAME, MLflow's own variable, overrides it
TRACKING_FILE = "tracking.json"
MAX_PARAM_CHARS = 500  # the limit of older MLflow servers (newer ones take 6000)
_RUN_ID = re.compile(r"[0-9a-zA-Z_-]{1,64}")


# ---------------------------------------------------------------- URIs and params
def check_mlflow(uri: Any) -> None:
    """ConfigError before anything runs: a usable URI string and the mlflow package installed."""
    if not isinstance(uri, str) or not uri.strip() or any(c.isspace() or ord(c) < 32 for c in uri):
        raise ConfigError(f"--mlflow must be a tracking URI such as {DEFAULT_MLFLOW_URI} or a folder, got {uri!r}")
    try:  # `--mlflow 5`: a number is a slip (a value meant for another flag), not a store to create
        float(uri)
    except ValueError:
        pass
    else:
        raise ConfigError(
            f"--mlflow {uri}: a number is not a tracking URI; give a URI ({DEFAULT_MLFLOW_URI}, http://host:5000) "
            "or a folder such as mlruns (or --mlflow alone)"
        )
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("--mlflow needs the mlflow package: pip install 'aelab[mlflow]'")


_TENSORBOARD_NOTE_SAID = False


def note_tensorboard_missing() -> None:
    """One stderr line, the first time a run asks for TensorBoard without the package in this process."""
    global _TENSORBOARD_NOTE_SAID
    if not _TENSORBOARD_NOTE_SAID:
        _TENSORBOARD_NOTE_SAID = True
        print(
            "aelab: note: TensorBoard logging is off: the tensorboard package is not installed "
            "(pip install -e '.[tensorboard]'); config.json says tensorboard: false",
            file=sys.stderr,
        )


def tensorboard_available() -> bool:
    """Whether RUN/tb can be written: the optional tensorboard package is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def resolve_uri(uri: str) -> str:
    """The URI with local paths made absolute, so that a resume or evaluate started from another folder
    reaches the same store: a plain path becomes a file: URI; sqlite:///relative.db becomes absolute."""
    if uri.startswith("sqlite:///"):
        path, query = uri[len("sqlite:///") :], ""
        if "?" in path:
            path, query = path.split("?", 1)
            query = "?" + query
        if path and not path.startswith("/") and path != ":memory:":
            return f"sqlite:///{os.path.abspath(path)}{query}"
        return uri
    if "://" not in uri and not uri.startswith("file:"):
        return Path(uri).resolve().as_uri()
    return uri


def redact_uri(uri: str | None) -> str | None:
    """The URI without a password (http://user:secret@host): what config.json, tracking.json and logs keep."""
    if uri is None:
        return None
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _scrub(text: str, uri: str) -> str:
    """An error message without the URI's password (MLflow's messages quote the URL they called)."""
    password = urllib.parse.urlsplit(uri).password
    return text.replace(password, "***") if password else text


def flat_params(config: dict, prefix: str = "") -> dict[str, str | int | float | bool | None]:
    """Nested dicts flattened to dotted keys (model_options.latent); lists and other values as JSON text."""
    flat: dict[str, str | int | float | bool | None] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_params(value, name + "."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def say_once_on_stderr() -> Callable[[str], None]:
    """A warn(message) that prints one line on stderr the first time and nothing after (clear of tqdm bars)."""
    said = []

    def warn(message: str) -> None:
        if said:
            return
        said.append(message)
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            print(f"aelab: warning: {' '.join(message.split())[:400]}", file=sys.stderr)

    return warn


# ---------------------------------------------------------------- tracking.json (untrusted when read back)
def read_tracking_file(run_dir: Path) -> tuple[dict | None, str | None]:
    """({"tracking_uri", "run_id"} of the MLflow run recorded in RUN/tracking.json or None, a problem or None).
    The file is untrusted: a wrong shape is reported, never followed."""
    from . import runs  # here, not at the top: the CLI's parser imports this module, and runs imports torch

    path = Path(run_dir) / TRACKING_FILE
    if not path.exists() and not path.is_symlink():
        return None, None
    try:
        data = runs.read_json(path, max_bytes=64 << 10)
    except AelabError as e:
        return None, f"{e}; ignored"
    if not isinstance(data, dict):
        return None, f"{path}: not a JSON object; ignored"
    entry = data.get("mlflow")
    if entry is None:
        return None, None
    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("tracking_uri"), str)
        and 0 < len(entry["tracking_uri"]) <= 4096
        and not any(ord(c) < 32 for c in entry["tracking_uri"])
        and isinstance(entry.get("run_id"), str)
        and _RUN_ID.fullmatch(entry["run_id"])
    ):
        return None, f"{path}: no valid MLflow 'tracking_uri' and 'run_id'; ignored"
    return {"tracking_uri": entry["tracking_uri"], "run_id": entry["run_id"]}, None


def _mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri.startswith("file:"):  # the user named a file store: opt in to MLflow's maintenance-mode backend
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def _log_metrics(client, run_id: str, values: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for k, v in values.items() if _number(v)]
    for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


# ---------------------------------------------------------------- during training
class Tracker:
    """Rank 0's experiment tracking during training. Each method is a no-op for what is switched off or
    has failed; MLflow errors are reported once through `warn` and switch MLflow off for the run."""

    def __init__(self, out: Path, tensorboard: bool, mlflow: str | None, enabled: bool = True, warn=None):
        self.out = Path(out)
        self.tensorboard = tensorboard and enabled
        self.mlflow_uri = resolve_uri(mlflow) if (mlflow and enabled) else None
        self.warn = warn or say_once_on_stderr()
        self.tb = None
        self.client = None
        self.run_id: str | None = None

    # -- MLflow errors: never fatal
    def _mlflow(self, what: str, fn: Callable[[], Any]) -> Any:
        if self.client is None:
            return None
        try:
            return fn()
        except Exception as e:  # any failure of the store, the network or mlflow itself
            self.client = None
            error = _scrub(f"{type(e).__name__}: {e}", self.mlflow_uri)
            self.warn(f"MLflow logging stopped ({what} failed: {error}); the run goes on")
            return None

    def start(self, config: dict, resume: bool, history: list[dict]) -> None:
        """Open TensorBoard and the MLflow run (the recorded one on resume), log the params, and on resume
        the epochs of `history` that the MLflow run lacks (a kill can come between checkpoint and log)."""
        if self.tensorboard:
            self._start_tensorboard(config)
        if self.mlflow_uri is None:
            return
        try:
            self.client = _mlflow_client(self.mlflow_uri)
        except Exception as e:
            self.warn(f"MLflow logging off ({_scrub(f'{type(e).__name__}: {e}', self.mlflow_uri)}); the run goes on")
            return
        self._mlflow("starting the run", lambda: self._start_mlflow(config, resume))
        if self.client is not None:
            self._mlflow("logging the history", lambda: self._backfill(history))

    def _start_tensorboard(self, config: dict) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError:  # the optional tensorboard package is not installed
            return
        self.tb = SummaryWriter(str(self.out / "tb"))
        params = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat_params(config).items()}
        # the hparams plugin shows these beside the last value of the scalars of the same names
        for summary in hparams(params, {"train_loss": 0.0, "test_loss": 0.0}):
            self.tb.file_writer.add_summary(summary)

    def _start_mlflow(self, config: dict, resume: bool) -> None:
        from . import runs

        client = self.client
        recorded, problem = read_tracking_file(self.out) if resume else (None, None)
        if problem:  # its own line: the one warning of self.warn stays for a failure of MLflow itself
            say_once_on_stderr()(f"{problem}: a new MLflow run is started")
        if recorded and recorded["tracking_uri"] == redact_uri(self.mlflow_uri):
            try:
                run = client.get_run(recorded["run_id"])
            except Exception:  # not in this store (any more): a new run; a store that is down fails below
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                self.run_id = run.info.run_id
                client.update_run(self.run_id, status="RUNNING")
        if self.run_id is None:  # a new run, or the recorded one is in another store or deleted
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
            experiment = client.get_experiment_by_name(name)
            # a new experiment is tagged as model training, so that MLflow 3's UI opens it on its runs (training)
            # view rather than its GenAI (traces) view; an existing one is left as it is
            experiment_id = (
                experiment.experiment_id
                if experiment
                else client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
            )
            run = client.create_run(
                experiment_id, run_name=self.out.name or None, tags={"aelab.run_folder": str(self.out.resolve())}
            )
            self.run_id = run.info.run_id
            runs.write_json(
                self.out / TRACKING_FILE,
                {"mlflow": {"tracking_uri": redact_uri(self.mlflow_uri), "run_id": self.run_id}},
            )
        from mlflow.entities import Param

        # params cannot change once logged: on resume only the new keys are added (epochs keeps its first value)
        have = client.get_run(self.run_id).data.params
        params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in flat_params(config).items() if k not in have]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 params
            client.log_batch(self.run_id, params=params[i : i + 100])

    def _backfill(self, history: list[dict]) -> None:
        epochs = [h for h in history if "phase" not in h]
        if not epochs:
            return
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "train_loss")}
        for record in epochs:
            if record["epoch"] not in logged:
                self._log_mlflow_epoch(record)

    def _log_mlflow_epoch(self, record: dict) -> None:
        _log_metrics(self.client, self.run_id, {k: v for k, v in record.items() if k != "epoch"}, record["epoch"])

    def log_epoch(self, record: dict) -> None:
        """One metrics.jsonl record: every number but the epoch, at step = epoch; and the train, validation and
        test losses together under "loss" (one chart, three curves overlaid)."""
        if self.tb is not None:
            for k, v in record.items():
                if k != "epoch" and _number(v):
                    self.tb.add_scalar(k, v, record["epoch"])
            losses = {
                split: record[f"{split}_loss"]
                for split in ("train", "val", "test")
                if _number(record.get(f"{split}_loss"))
            }
            self.tb.add_scalars("loss", losses, record["epoch"])
        self._mlflow("logging an epoch", lambda: self._log_mlflow_epoch(record))

    def finish(self, images=None, step: int = 0, status: str = "FINISHED") -> None:
        """Close both; `images` (N, C, H, W) in [0, 1] go to TensorBoard as reconstructions."""
        if self.tb is not None:
            if images is not None:
                self.tb.add_images("reconstructions", images, step)
            self.tb.close()
            self.tb = None
        self._mlflow("ending the run", lambda: self.client.set_terminated(self.run_id, status))


# ---------------------------------------------------------------- after evaluate(write=True)
def log_evaluation(run_dir: Path, metrics: dict, files: list[Path], folders: list[Path], warn=None) -> None:
    """Log the eval.json numbers (as eval/NAME, at step = the epochs trained) and the report files to the
    MLflow run recorded in RUN/tracking.json, if any. Failures: one warning line, evaluation is kept."""
    from . import runs

    recorded, problem = read_tracking_file(run_dir)
    warn = warn or say_once_on_stderr()
    if problem:
        warn(problem)
    if recorded is None:
        return
    if importlib.util.find_spec("mlflow") is None:
        warn(f"{run_dir} has an MLflow run, but mlflow is not installed: evaluation not logged to it")
        return
    try:
        epochs = [h["epoch"] for h in runs.read_history(run_dir) if "phase" not in h]
        client = _mlflow_client(recorded["tracking_uri"])
        run_id = recorded["run_id"]
        _log_metrics(client, run_id, {f"eval/{k}": v for k, v in metrics.items()}, max(epochs, default=0))
        for path in files:
            if path.is_file():
                client.log_artifact(run_id, str(path))
        for folder in folders:
            if folder.is_dir():
                client.log_artifacts(run_id, str(folder), folder.name)
    except Exception as e:
        warn(f"MLflow logging of the evaluation failed ({type(e).__name__}: {e}); eval.json and the report are kept")
