"""`--seeds N --jobs J` for the experiments (aelab.experiments.multiseed): the summary over seeds, resuming, and
processes that give the numbers one process gives."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from scipy import stats

from aelab.cli import main
from aelab.errors import ConfigError
from aelab.experiments import multiseed


def _fake_module():
    return types.SimpleNamespace(
        ROW_KEY="method",
        COLUMNS=["size", "acc", "sse"],
        FIXED_COLUMNS=["size"],
        CHOICE_COLUMNS=["k"],
        PAIRS=[("a", "b", "sse")],
        __name__="fake",
    )


def _seed_result(acc_a, sse_a, sse_b, k, size=30):
    rows = [
        {"method": "a", "size": size, "acc": acc_a, "sse": sse_a, "k": k, "note": "x"},
        {"method": "b", "size": size, "acc": None, "sse": sse_b, "k": None, "note": "x"},
    ]
    return {"tables": {"test": rows}, "splits": {"train": 9}, "selection_split": "validation"}


def test_summary_over_seeds_matches_an_independent_computation():
    per_seed = [_seed_result(0.9, 5.0, 7.0, 3), _seed_result(0.8, 6.0, 7.5, 5), _seed_result(0.85, 4.0, 6.0, 3)]
    summary = multiseed.summarize_seeds(_fake_module(), per_seed, [4, 5, 6])
    a, b = summary["tables"]["test"]
    assert a["fixed"] == {"size": 30, "note": "x"} and a["chosen_per_seed"] == {"k": [3, 5, 3]}
    assert "acc" not in b["metrics"]  # a column that does not apply to a row stays out
    sse = a["metrics"]["sse"]
    half = stats.t.ppf(0.975, 2) * np.std([5.0, 6.0, 4.0], ddof=1) / np.sqrt(3)
    assert sse["mean"] == pytest.approx(5.0) and sse["ci95"] == pytest.approx([5.0 - half, 5.0 + half])
    assert a["metrics"]["acc"]["ci95"][1] <= 1.0  # accuracies are bounded
    (diff,) = summary["paired_differences"]
    assert diff["difference"]["values"] == pytest.approx([-2.0, -1.5, -2.0])
    assert diff["excludes_zero"] is True and diff["difference"]["ci95"][1] < 0
    assert summary["seeds"] == [4, 5, 6] and summary["splits"] == {"train": 9}


def test_seeds_that_disagree_on_a_fixed_column_are_refused():
    per_seed = [_seed_result(0.9, 5.0, 7.0, 3), _seed_result(0.8, 6.0, 6.5, 5, size=31)]
    with pytest.raises(ConfigError, match="size differs"):
        multiseed.summarize_seeds(_fake_module(), per_seed, [0, 1])


BINARY = ["experiment", "binary", "--dataset", "digits", "--bits", "8", "--epochs", "1", "--train-limit", "120"]


def _numbers(out, seed):
    result = json.loads((out / f"seed-{seed}" / "results.json").read_text())
    return [{k: v for k, v in r.items() if k != "time (s)"} for r in result["tables"]["test split"]]


@pytest.mark.usefixtures("one_thread")  # one thread here, so one per worker too: the same reductions
def test_two_processes_give_the_numbers_of_one_and_a_killed_run_resumes(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*BINARY, "--seeds", "2", "--out", str(one), "--no-progress"]) == 0
    assert main([*BINARY, "--seeds", "2", "--jobs", "2", "--out", str(two), "--no-progress"]) == 0
    for seed in (0, 1):
        assert _numbers(one, seed) == _numbers(two, seed)
    assert _numbers(one, 0) != _numbers(one, 1)  # the seed does change the numbers
    summary = json.loads((one / "results.json").read_text())
    row = next(r for r in summary["tables"]["test split"] if r["code"] == "binary AE")
    assert row["metrics"]["mAP"]["values"] == [next(r for r in _numbers(one, s) if r["code"] == "binary AE")["mAP"]
                                               for s in (0, 1)]  # fmt: skip

    # a kill after seed 0 finished: seed 1's results are gone; a rerun keeps seed 0 and runs seed 1 only
    kept = (one / "seed-0" / "results.json").stat().st_mtime_ns
    (one / "seed-1" / "results.json").unlink()
    capsys.readouterr()
    assert main([*BINARY, "--seeds", "2", "--out", str(one), "--no-progress"]) == 2  # continuing needs --resume
    assert "pass --resume" in capsys.readouterr().err
    assert main([*BINARY, "--seeds", "2", "--out", str(one), "--no-progress", "--resume"]) == 0
    assert "seed-0: finished already, kept" in capsys.readouterr().out
    assert (one / "seed-0" / "results.json").stat().st_mtime_ns == kept
    assert _numbers(one, 1) == _numbers(two, 1)


@pytest.mark.parametrize("flag", ["--jobs", "--seeds"])
def test_bad_seed_counts_get_one_line(tmp_path, capsys, flag):
    assert main([*BINARY, flag, "0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_seed_lines_mark_every_line_and_are_never_a_terminal():
    import io

    from aelab.progress import PrefixedLines

    sink = io.StringIO()
    lines = PrefixedLines(sink, "seed 3 | ")
    lines.write("epoch 1")
    lines.write(" done\nepoch 2\n")
    lines.write("")
    lines.write("a\nb")
    assert sink.getvalue() == "seed 3 | epoch 1 done\nseed 3 | epoch 2\nseed 3 | a\nseed 3 | b"
    assert lines.isatty() is False


@pytest.mark.usefixtures("one_thread")
def test_workers_show_their_progress_as_lines_marked_with_their_seed(tmp_path, capfd):
    """--jobs 2: each worker's progress reaches the screen, every line saying which seed it is (issue 31)."""
    assert main([*BINARY, "--seeds", "2", "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    captured = capfd.readouterr()
    err = (captured.out + captured.err).splitlines()
    for seed in (0, 1):
        mine = [line for line in err if line.startswith(f"seed {seed} | ")]
        assert any("epoch 1/1" in line for line in mine), err[:20]


def test_binary_killed_between_rows_resumes_to_the_same_results(tmp_path, capsys):
    """Issue 31: binary writes results.json after each of its rows, marked partial; killed after its second row,
    the same command with --resume keeps the finished runs and ends with the uninterrupted run's numbers."""
    import os
    import subprocess
    import sys

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main([*BINARY, "--out", str(whole), "--no-progress"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "AELAB_FAULT_KILL_AT_ROW": "2"}
    proc = subprocess.run([sys.executable, "-m", "aelab", *BINARY, "--out", str(killed)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    partial = json.loads((killed / "seed-0" / "results.json").read_text())
    assert partial["partial"] is True and partial["rows_done"] == ["binary AE", "float AE"]
    assert partial["rows_to_come"] == ["PCA-sign"] and "PARTIAL" in (killed / "seed-0" / "report.md").read_text()
    history = (killed / "seed-0" / "binary" / "metrics.jsonl").read_bytes()
    assert main([*BINARY, "--out", str(killed), "--no-progress", "--resume"]) == 0
    assert (killed / "seed-0" / "binary" / "metrics.jsonl").read_bytes() == history  # no epoch trained again
    assert _numbers(killed, 0) == _numbers(whole, 0)


@pytest.mark.parametrize("signal_name, code", [("INT", 130), ("TERM", 143)])
def test_a_stopped_experiment_says_what_is_kept_and_the_command_that_continues_it(tmp_path, signal_name, code):
    """Ctrl-C or SIGTERM between rows: one line naming what is kept and the exact command with --resume, which then
    finishes the experiment."""
    import os
    import shlex
    import subprocess
    import sys

    out = tmp_path / "stopped dir"  # a space: the printed command must quote it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AELAB_FAULT_KILL_AT_ROW": "1", "AELAB_FAULT_SIGNAL": signal_name}
    proc = subprocess.run([sys.executable, "-m", "aelab", *BINARY, "--out", str(out), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == code, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if "stopped" in x]
    assert f"experiment binary stopped (SIG{signal_name})" in line and "Traceback" not in proc.stderr
    assert "results.json (marked partial)" in line
    command = shlex.split(line.split("Continue with: ")[1])
    assert command[:3] == ["aelab", "experiment", "binary"] and command[-1] == "--resume" and str(out) in command
    assert main(command[1:]) == 0
    assert json.loads((out / "seed-0" / "results.json").read_text()).get("partial") is None


def test_a_ctrl_c_while_the_modules_load_is_one_line(monkeypatch, capsys):
    """On a busy machine importing torch takes seconds: a Ctrl-C then is one line, not a traceback."""
    from aelab import cli

    def interrupted(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["experiment", "binary", "--quick"]) == 130
    err = capsys.readouterr().err
    assert err == "aelab: interrupted while starting; nothing was written\n"
