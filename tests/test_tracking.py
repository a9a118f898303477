"""Experiment tracking (aelab.tracking): MLflow against real local stores, TensorBoard, per-epoch progress lines.

The MLflow tests skip when mlflow is not installed (CI installs it through the `test` extra)."""

import importlib.util
import json
import re
import shutil

import pytest

from aelab import runs, tracking
from aelab.cli import build_parser, main, train_config_from_args
from aelab.evaluate import evaluate
from aelab.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")


def tiny(out, **kw) -> TrainConfig:
    base = dict(
        model="ae",
        model_options={"hidden": [16], "latent": 3},
        dataset="digits",
        train_limit=64,
        epochs=2,
        batch_size=32,
        out=str(out),
    )
    return TrainConfig(**{**base, **kw})


def epoch_records(run_dir) -> list[dict]:
    return [h for h in runs.read_history(run_dir) if "phase" not in h]


def run_id_of(run_dir) -> str:
    return json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"]


def assert_history_logged(client, run_dir) -> None:
    """Every number of metrics.jsonl is in the MLflow run, once per epoch, at step = epoch."""
    records = epoch_records(run_dir)
    run_id = run_id_of(run_dir)
    keys = [k for k in records[0] if k != "epoch"]
    assert {"train_loss", "test_loss", "test_recon"} <= set(keys)
    for key in keys:
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert logged == [(r["epoch"], pytest.approx(r[key])) for r in records], key


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("aelab: warning:")]


# ---------------------------------------------------------------- pure helpers (no mlflow needed)
def test_uris_params_and_untrusted_tracking_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.resolve_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert tracking.resolve_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    assert tracking.resolve_uri("http://host:5000") == "http://host:5000"
    assert tracking.redact_uri("https://me:secret@host/x") == "https://me:***@host/x"
    assert tracking.redact_uri("http://host:5000") == "http://host:5000"
    assert tracking._scrub("GET https://me:secret@host/x failed", "https://me:secret@host") == (
        "GET https://me:***@host/x failed"
    )
    flat = tracking.flat_params({"a": 1, "b": {"c": [1, 2], "d": None}, "e": "x"})
    assert flat == {"a": 1, "b.c": "[1, 2]", "b.d": None, "e": "x"}

    good = {"mlflow": {"tracking_uri": "sqlite:////x.db", "run_id": "0123abcd"}}
    runs.write_json(tmp_path / "tracking.json", good)
    assert tracking.read_tracking_file(tmp_path) == (good["mlflow"], None)
    for bad in (
        "not json",
        json.dumps([1]),
        json.dumps({"mlflow": {"tracking_uri": "sqlite:////x.db", "run_id": "../../etc"}}),
        json.dumps({"mlflow": {"tracking_uri": 3, "run_id": "0123abcd"}}),
        json.dumps({"mlflow": "x"}),
    ):
        (tmp_path / "tracking.json").write_text(bad)
        recorded, problem = tracking.read_tracking_file(tmp_path)
        assert recorded is None and problem, bad
    (tmp_path / "tracking.json").unlink()
    (tmp_path / "tracking.json").symlink_to(tmp_path / "elsewhere.json")
    assert tracking.read_tracking_file(tmp_path)[0] is None


def test_progress_prints_one_line_per_epoch(tmp_path, capsys, terminal):
    out = train(tiny(tmp_path / "myrun", tensorboard=False), progress=True)
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if " epoch " in line]
    expected = [
        f"myrun epoch {r['epoch']}/2: train_loss {r['train_loss']:.5g}"
        + (f" val_loss {r['val_loss']:.5g}" if "val_loss" in r else "")
        + f" test_loss {r['test_loss']:.5g}"
        + (" (squared error per image)" if r["epoch"] == 1 else "")  # the unit once: the AE's default loss is MSE
        for r in epoch_records(out)
    ]
    assert lines == expected
    assert "myrun:" in captured.err and "ae:" not in captured.err  # the bar is labelled by run, not model


def test_cli_flags(tmp_path, monkeypatch, capsys):
    def cfg(*extra):
        return train_config_from_args(build_parser().parse_args(["train", "--out", "x", *extra]))

    assert cfg().tensorboard is True and cfg().mlflow is None
    assert cfg("--no-tensorboard").tensorboard is False
    assert cfg("--mlflow").mlflow == tracking.DEFAULT_MLFLOW_URI
    assert cfg("--mlflow", "http://host:5000").mlflow == "http://host:5000"
    assert cfg("--mlflow=mlruns", "--tensorboard").mlflow == "mlruns"
    # mlflow asked for but not installed: one line, exit 2, nothing on disk
    monkeypatch.setitem(__import__("sys").modules, "mlflow", None)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "digits", "--out", "r", "--no-progress", "--mlflow"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install 'aelab[mlflow]'" in err
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_hparams_and_no_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    on = train(tiny(tmp_path / "on"), progress=False)
    events = EventAccumulator(str(on / "tb")).Reload()
    start = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["model"].string_value == "ae" and hparams["model_options.latent"].number_value == 3
    assert [e.step for e in events.Scalars("test_loss")] == [1, 2]
    assert (on / "tb" / "loss_train").is_dir() and (on / "tb" / "loss_test").is_dir()  # overlaid under "loss"
    off = train(tiny(tmp_path / "off", tensorboard=False), progress=False)
    assert not (off / "tb").exists()


# ---------------------------------------------------------------- MLflow, real stores
@needs_mlflow
def test_mlflow_sqlite_params_metrics_resume_and_evaluation(tmp_path, monkeypatch, capfd):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the sqlite store keeps artifacts in ./mlruns of the folder it was created in
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = train(tiny(tmp_path / "run", mlflow=uri), progress=False)
    client = MlflowClient(tracking_uri=uri)
    run_id = run_id_of(out)
    run = client.get_run(run_id)
    config = runs.read_config(out)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["model"] == "ae" and run.data.params["train_limit"] == "64"
    assert run.data.params["model_options.latent"] == "3" and run.data.params["lr"] == str(config["lr"])
    assert_history_logged(client, out)

    # resume (with other tracking settings: they never block it) continues the same MLflow run
    train(tiny(tmp_path / "run", mlflow=uri, epochs=3, tensorboard=False), resume=True, progress=False)
    assert run_id_of(out) == run_id
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [run_id]
    assert [r["epoch"] for r in epoch_records(out)] == [1, 2, 3]
    assert_history_logged(client, out)
    assert client.get_run(run_id).info.status == "FINISHED"

    # evaluate logs to the MLflow run that tracking.json names only when asked (the file could name any store)
    evaluate(out, tsne_points=40, iwae_k=2)
    assert not any(k.startswith("eval/") for k in client.get_run(run_id).data.metrics)
    assert "evaluate --mlflow logs this evaluation there" in capfd.readouterr().err
    result = evaluate(out, tsne_points=40, iwae_k=2, log_mlflow=True)
    logged = client.get_run(run_id).data.metrics
    numbers = {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float))}
    assert {f"eval/{k}": pytest.approx(v) for k, v in numbers.items()} == {
        k: v for k, v in logged.items() if k.startswith("eval/")
    }
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "report.md", "eval.json", "figures"} <= artifacts
    assert "reconstructions.png" in {a.path.split("/")[-1] for a in client.list_artifacts(run_id, "figures")}
    assert warnings_in(capfd.readouterr().err) == []


@needs_mlflow
def test_mlflow_file_store_and_a_store_that_breaks_mid_run(tmp_path, capfd):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    out = train(tiny(tmp_path / "a", mlflow=str(store)), progress=False)
    client = MlflowClient(tracking_uri=store.as_uri())
    assert client.get_run(run_id_of(out)).data.params["dataset"] == "digits"
    assert_history_logged(client, out)
    assert warnings_in(capfd.readouterr().err) == []

    def break_store_after_epoch_1(line: str) -> None:
        if " epoch 1/" in line:  # the store becomes a regular file: epoch 2 and the end cannot be logged
            shutil.rmtree(store)
            store.write_text("not a store")

    out = train(tiny(tmp_path / "b", mlflow=str(store), epochs=3), progress=True, log=break_store_after_epoch_1)
    assert [r["epoch"] for r in epoch_records(out)] == [1, 2, 3]  # training went on
    assert len(warnings_in(capfd.readouterr().err)) == 1  # reported once, the later calls skipped

    # evaluate: eval.json and the report are written; the failed logging is one warning line
    evaluate(out, figures=False, log_mlflow=True)
    assert (out / "eval.json").exists() and (out / "report.html").exists()
    assert len(warnings_in(capfd.readouterr().err)) == 1


@needs_mlflow
@pytest.mark.parametrize("broken", ["a-regular-file", "http://127.0.0.1:1"])
def test_mlflow_unusable_store_warns_once_and_trains(tmp_path, monkeypatch, capfd, broken):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = broken
    if broken == "a-regular-file":
        (tmp_path / "store").write_text("x")
        uri = str(tmp_path / "store")
    out = train(tiny(tmp_path / "run", mlflow=uri), progress=False)
    assert [r["epoch"] for r in epoch_records(out)] == [1, 2]
    err = capfd.readouterr().err
    assert len(warnings_in(err)) == 1 and "Traceback" not in err
    assert not (out / "tracking.json").exists()


@needs_mlflow
def test_mlflow_resume_with_a_bad_tracking_file_starts_a_new_run(tmp_path, capfd):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    out = train(tiny(tmp_path / "run", mlflow=str(store)), progress=False)
    first = run_id_of(out)
    (out / "tracking.json").write_text(json.dumps({"mlflow": {"tracking_uri": store.as_uri(), "run_id": "../x"}}))
    train(tiny(tmp_path / "run", mlflow=str(store), epochs=3), resume=True, progress=False)
    assert re.fullmatch(r"[0-9a-f]{32}", run_id_of(out)) and run_id_of(out) != first
    assert_history_logged(MlflowClient(tracking_uri=store.as_uri()), out)  # the new run has all 3 epochs
    assert len(warnings_in(capfd.readouterr().err)) == 1


def test_evaluate_never_follows_a_tracking_file_unasked(tmp_path, capsys):
    """A run folder from elsewhere whose tracking.json names a store: `aelab evaluate` writes nothing there
    (mlflow need not even be installed); with --mlflow it would log there, so that is opt-in."""
    from aelab.cli import main

    out = train(tiny(tmp_path / "run"), progress=False)
    store = tmp_path / "somewhere-else"
    (out / "tracking.json").write_text(json.dumps({"mlflow": {"tracking_uri": store.as_uri(), "run_id": "a" * 32}}))
    assert main(["evaluate", str(out), "--no-figures", "--no-progress"]) == 0
    assert not store.exists() and (out / "eval.json").exists()
    assert "records an MLflow run" in capsys.readouterr().err


needs_mlflow_ui = pytest.mark.skipif(
    importlib.util.find_spec("flask") is None or importlib.util.find_spec("mlflow") is None,
    reason="MLflow's UI is not installed (the mlflow-ui extra; CI installs it through the test extra)",
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_mlflow_ui
def test_the_readmes_mlflow_ui_command_serves_a_logged_run_over_http(tmp_path):
    """README: `aelab train ... --mlflow`, then `mlflow ui --backend-store-uri sqlite:///mlflow.db` in the same
    folder. A real server on 127.0.0.1 must read the run back (REST API) and serve the UI's page."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["train", "--dataset", "digits", "--train-limit", "64", "--epochs", "2", "--latent", "3",
                     "--out", "run", "--no-progress", "--no-tensorboard", "--mlflow"]) == 0  # fmt: skip
    finally:
        os.chdir(cwd)
    run_id = run_id_of(tmp_path / "run")
    port = _free_port()
    mlflow_cli = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db"]
    server = subprocess.Popen(
        [*mlflow_cli, "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its workers are killed with it
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the MLflow server did not start in 180 s"
            time.sleep(0.5)
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=30) as r:
            run = json.loads(r.read())["run"]
        assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "run"
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["model"] == "ae" and params["model_options.latent"] == "3"
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        history = epoch_records(tmp_path / "run")
        assert metrics["test_loss"] == pytest.approx(history[-1]["test_loss"])
        with urllib.request.urlopen(f"{base}/", timeout=30) as r:
            page = r.read().decode()
        assert r.status == 200 and "<title>MLflow</title>" in page  # the UI itself, not only the REST API
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_tensorboard_asked_for_but_not_installed_is_said_once_and_recorded_as_off(tmp_path, capsys, monkeypatch):
    """Issue 23, item 9: config.json records what happened (tensorboard: false), and one line says why."""
    monkeypatch.setattr(tracking, "tensorboard_available", lambda: False)
    monkeypatch.setattr(tracking, "_TENSORBOARD_NOTE_SAID", False)  # a fresh process
    out = tmp_path / "run"
    for name in ("run", "second"):  # two runs in one process (an experiment's): said once
        assert main(["train", "--dataset", "digits", "--train-limit", "64", "--epochs", "2", "--latent", "3",
                     "--out", str(tmp_path / name)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("TensorBoard logging is off") == 1 and "not installed" in err
    assert json.loads((out / "config.json").read_text())["tensorboard"] is False and not (out / "tb").exists()


def test_a_seed_folder_is_named_with_its_parent_and_a_bce_run_in_nats(tmp_path, capsys):
    out = tmp_path / "CAE_lam0.3" / "seed-0"
    train(
        tiny(out, tensorboard=False, epochs=1, model_options={"hidden": [16], "latent": 3, "loss": "bce"}),
        progress=True,
    )
    (line,) = [line for line in capsys.readouterr().out.splitlines() if " epoch " in line]
    assert line.startswith("CAE_lam0.3/seed-0 epoch 1/1: ") and line.endswith(" (cross-entropy per image (nats))")
