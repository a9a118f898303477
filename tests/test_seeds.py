"""aelab train --seeds N: one run folder per seed, seeds.json / seeds.md over them, and --resume after a kill."""

import shutil

import numpy as np
import pytest
from safetensors.torch import load_file

from aelab import runs
from aelab.cli import main
from aelab.metrics.intervals import metric_bounds
from aelab.seeds import format_choices, write_seeds_report
from aelab.train import TrainConfig, train

TINY = ["--dataset", "digits", "--train-limit", "120", "--hidden", "8", "--latent", "2", "--batch-size", "40"]


def test_seeds_train_summarize_and_resume_after_a_kill(tmp_path):
    out = tmp_path / "multi"
    assert (
        main(["train", *TINY, "--epochs", "2", "--seed", "7", "--seeds", "3", "--no-progress", "--out", str(out)]) == 0
    )
    folders = [out / f"seed-{s}" for s in (7, 8, 9)]
    assert sorted(p.name for p in out.glob("seed-*")) == ["seed-7", "seed-8", "seed-9"]
    assert [runs.read_config(f)["seed"] for f in folders] == [7, 8, 9]
    summary = runs.read_json(out / "seeds.json")
    sse = [runs.read_json(f / "eval.json")["metrics"]["recon_sse"] for f in folders]
    assert summary["seeds"] == [7, 8, 9] and summary["runs"] == ["seed-7", "seed-8", "seed-9"]
    assert summary["metrics"]["recon_sse"]["values"] == sse
    assert summary["metrics"]["recon_sse"]["mean"] == pytest.approx(np.mean(sse))
    assert summary["metrics"]["recon_sse"]["std"] == pytest.approx(np.std(sse, ddof=1))
    assert "clipped to [0, 1]" in summary["metrics"]["probe_accuracy"]["method"]  # an accuracy is bounded
    assert "code_dim" not in summary["metrics"]  # a setting, not a result
    assert summary["note"] == "no setting was chosen: one configuration, 3 seeds"
    md = (out / "seeds.md").read_text()
    assert "| metric | mean ± std | 95% interval | n |" in md and "| recon_sse |" in md
    # the probe's C is chosen on the validation split per seed: listed in seed order, never given a mean
    chosen_c = [runs.read_json(f / "eval.json")["metrics"]["probe_C"] for f in folders]
    assert "probe_C" not in summary["metrics"] and summary["choices"]["probe_C"] == chosen_c
    assert "| probe_C |" in md and f"| {', '.join(f'{c:g}' for c in chosen_c)} |" in md
    html = (out / "seeds.html").read_text()
    assert "<title>ae on digits, 3 seeds</title>" in html and "probe_C" in html and "recon_sse" in html

    # a kill during seed 8's second epoch: seed 7 finished, seed 8 holds a one-epoch checkpoint, seed 9 never began
    kept = folders[0] / "model.safetensors"
    kept_bytes, kept_mtimes = (
        kept.read_bytes(),
        [(folders[0] / n).stat().st_mtime_ns for n in ("model.safetensors", "eval.json")],
    )
    weights = [load_file(f / "model.safetensors") for f in folders]
    shutil.rmtree(folders[1])
    shutil.rmtree(folders[2])
    tiny_options = {"hidden": [8], "latent": 2}
    train(
        TrainConfig(
            dataset="digits",
            train_limit=120,
            batch_size=40,
            model_options=tiny_options,
            epochs=1,
            seed=8,
            out=str(folders[1]),
        ),
        progress=False,
    )
    # the settings come from seed-7/config.json, as a single run's come from its own
    assert main(["train", "--out", str(out), "--seeds", "3", "--resume", "--no-progress"]) == 0
    assert kept.read_bytes() == kept_bytes
    assert [(folders[0] / n).stat().st_mtime_ns for n in ("model.safetensors", "eval.json")] == kept_mtimes
    assert [h["resumes"] for h in runs.read_history(folders[1])] == [0, 1]  # continued, not trained again
    for before, folder in zip(weights[1:], folders[1:]):  # resuming on CPU ends bit-identical
        after = load_file(folder / "model.safetensors")
        assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    assert runs.read_json(out / "seeds.json")["metrics"]["recon_sse"]["values"] == sse


@pytest.mark.parametrize("n, needle", [("0", "positive integer"), ("-2", "positive integer"), ("1001", "[1, 1000]")])
def test_bad_seed_counts_are_one_line_and_exit_2(tmp_path, capsys, n, needle):
    assert main(["train", *TINY, "--epochs", "1", "--seeds", n, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_seeds_refuse_a_single_run_folder(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("{}")
    assert main(["train", *TINY, "--epochs", "1", "--seeds", "2", "--out", str(tmp_path / "r")]) == 2
    assert "holds a single run" in capsys.readouterr().err


def test_markdown_of_one_seed_and_metric_bounds(tmp_path):
    summary = {
        "config": {"model": "ae", "dataset": "digits"},
        "seeds": [3],
        "runs": ["seed-3"],
        "note": "no setting was chosen: one configuration, 1 seed",
        "intervals": "(how)",
        "metrics": {"recon_sse": {"mean": 11.5, "std": 0.0, "ci95": None, "n_seeds": 1}},
    }
    write_seeds_report(tmp_path, summary)
    assert "| recon_sse | 11.50 ± 0.00 | none (1 seed) | 1 |" in (tmp_path / "seeds.md").read_text()
    assert metric_bounds("probe_accuracy") == (0.0, 1.0) and metric_bounds("saturation") == (0.0, 1.0)
    assert metric_bounds("recon_sse") is None


def test_choices_are_counted_most_often_first():
    assert format_choices([0.1, 1.0, 0.1, 10.0]) == "0.1 (×2), 1 (×1), 10 (×1)"
    assert format_choices([1.0, None]) == "1 (×1), — (×1)"


def test_a_resume_checks_every_seed_folder_before_training_any(tmp_path, capsys):
    import json

    out = tmp_path / "multi"
    assert main(["train", *TINY, "--epochs", "1", "--seeds", "3", "--quiet", "--out", str(out)]) == 0
    config = json.loads((out / "seed-2" / "config.json").read_text())
    config["model_options"]["hidden"] = [9]  # seed 2 was trained with other settings
    (out / "seed-2" / "config.json").write_text(json.dumps(config))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--seeds", "3", "--resume", "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "seed-2/config.json" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # seeds 0 and 1 untouched


def test_a_baseline_of_the_data_is_shown_once_without_an_interval():
    from aelab.seeds import metric_rows

    same = {"mean": 19.01, "std": 0.0, "ci95": [19.01, 19.01], "n_seeds": 2, "values": [19.01, 19.01]}
    varied = {"mean": 20.0, "std": 1.0, "ci95": [11.0, 29.0], "n_seeds": 2, "values": [19.0, 21.0]}
    rows = {r["metric"]: r for r in metric_rows({"metrics": {"pca_sse": same, "recon_sse": varied, "test_loss": same}})}
    assert rows["pca_sse"]["mean ± std"] == "19.01" and rows["pca_sse"]["95% interval"].startswith("— (a baseline")
    assert "±" in rows["recon_sse"]["mean ± std"] and rows["recon_sse"]["95% interval"].startswith("[")
    assert "±" in rows["test_loss"]["mean ± std"]  # a model's metric keeps its interval even when the seeds agree
