import json
import os
import subprocess
import sys

import pytest

from aelab.cli import main


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "aelab", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--model", "nope", "--out", "X"], "choose from"),
        (["train", "--dataset", "nope", "--out", "X"], "choose from"),
        (["train", "--epochs", "0", "--out", "X"], "positive integer"),
        (["train", "--epochs", "-3", "--out", "X"], "positive integer"),
        (["train", "--batch-size", "0", "--out", "X"], "positive integer"),
        (["train", "--latent", "-1", "--out", "X"], "positive integer"),
        (["train", "--lr", "0", "--out", "X"], "positive number"),
        (["train", "--device", "tpu", "--out", "X"], "unknown device 'tpu'; choose from cpu, cuda"),
        (["evaluate", "does/not/exist"], "does not exist"),
        (["bogus"], "invalid choice"),
        (["experiment", "nope"], "invalid choice"),
        (["data", "fetch", "nope"], "choose from"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, needle):
    args = [a if a != "X" else str(tmp_path / "run") for a in args]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cuda_without_gpu_is_a_clear_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_subprocess_exit_status_and_no_traceback(tmp_path):
    r = run_cli("train", "--model", "nope", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_models_and_data_list(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "ae " in out and "vae " in out
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "mnist5k" in out and "fashion-mnist" in out and "kmnist" in out


def test_train_evaluate_end_to_end(tmp_path, capsys):
    out = tmp_path / "vae"
    assert (
        main(
            [
                "train",
                "--model",
                "vae",
                "--dataset",
                "digits",
                "--epochs",
                "2",
                "--hidden",
                "32",
                "--latent",
                "3",
                "--train-limit",
                "400",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["evaluate", str(out), "--iwae-k", "5", "--tsne-points", "200"]) == 0
    result = json.loads((out / "eval.json").read_text())
    m = result["metrics"]
    for key in [
        "recon_mse",
        "recon_sse",
        "pca_sse",
        "probe_accuracy",
        "raw_probe_accuracy",
        "nll_nats",
        "test_elbo",
        "test_kl",
    ]:
        assert key in m
    assert result["data"]["fit_split"] == "train" and result["data"]["score_split"] == "test"
    assert result["data"]["n_train"] == 400 and result["data"]["n_test"] == 360
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "nll_nats" in html
    assert (out / "report.md").exists()
    # resume with more epochs through the CLI
    assert (
        main(
            [
                "train",
                "--model",
                "vae",
                "--dataset",
                "digits",
                "--epochs",
                "3",
                "--hidden",
                "32",
                "--latent",
                "3",
                "--train-limit",
                "400",
                "--out",
                str(out),
                "--resume",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (out / "metrics.jsonl").read_text().count("\n") == 3


def test_a_slow_start_shows_a_notice_on_a_terminal_and_erases_it(capsys):
    import io
    import time

    from aelab.cli import _slow_start

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    slow, quick, piped = Terminal(), Terminal(), io.StringIO()
    with _slow_start(after=0.05, stream=slow):
        time.sleep(0.3)
    assert slow.getvalue() == "aelab: starting (importing torch; slow on a busy machine) ...\r\033[K"
    with _slow_start(after=0.2, stream=quick):
        pass
    with _slow_start(after=0.05, stream=piped):  # a log or a pipe: nothing, so a bad input's line stands alone
        time.sleep(0.3)
    time.sleep(0.3)
    assert quick.getvalue() == "" and piped.getvalue() == ""


def test_train_evaluate_compare_and_experiments_start_under_the_slow_start_notice(monkeypatch, tmp_path):
    import contextlib

    import aelab.cli as cli

    entered = []

    @contextlib.contextmanager
    def recorded(after=2.0):
        entered.append(after)
        yield

    monkeypatch.setattr(cli, "_slow_start", recorded)
    cli.main(["models"])
    assert len(entered) == 1  # the parser's build only: `models` needs no torch
    cli.main(["evaluate", str(tmp_path / "nothing")])
    assert len(entered) == 3  # and the import before evaluate


def test_a_seed_group_stopped_before_any_seed_started_says_nothing_was_kept(tmp_path, monkeypatch):
    import argparse

    import aelab.cli as cli

    monkeypatch.setattr(cli, "_argv", ["train", "--model", "ae", "--seeds", "2", "--out", str(tmp_path / "g")])
    args = argparse.Namespace(out=str(tmp_path / "g"))
    line = cli.stopped_line(KeyboardInterrupt(), args, seeds=2)
    assert "no seed had started, nothing was kept" in line and "finished seeds are kept" not in line
    assert line.endswith(f"resume with: aelab train --model ae --seeds 2 --out {tmp_path / 'g'} --resume")
    (tmp_path / "g" / "seed-0").mkdir(parents=True)
    (tmp_path / "g" / "seed-0" / "config.json").write_text("{}")
    assert "the finished seeds are kept" in cli.stopped_line(KeyboardInterrupt(), args, seeds=2)
