"""`aelab experiment demo`: the AE and the VAE under the protocol (a validation split that chooses the probes' C,
the test split scored once, the official 10k test set where its files are), over seeds."""

from __future__ import annotations

import json

import pytest

from aelab import runs
from aelab.cli import main


def test_demo_over_two_seeds_records_splits_choices_and_intervals(tmp_path, tiny_demo, shared_idx):
    tiny_demo()
    out = tmp_path / "demo"
    args = ["experiment", "demo", "--epochs", "2", "--seeds", "2", "--data-dir", str(shared_idx)]
    assert main([*args, "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["selection_split"] == "validation" and summary["seeds"] == [0, 1]
    assert (summary["splits"]["train"], summary["splits"]["validation"]) == (90, 10)  # 100 images, 10% carved
    assert set(summary["tables"]) == {"test split", "official MNIST test set (10k)"}
    for s in (0, 1):
        config = runs.read_config(out / f"seed-{s}" / "vae")
        assert (config["seed"], config["n_val"], config["n_test"]) == (s, 10, 1000)
    for table, rows in summary["tables"].items():
        assert [r["model"] for r in rows] == ["ae", "vae"]
        for row in rows:
            per_seed = [json.loads((out / f"seed-{s}" / "results.json").read_text())["tables"][table] for s in (0, 1)]
            values = [next(r for r in t if r["model"] == row["model"])["probe_accuracy"] for t in per_seed]
            cell = row["metrics"]["probe_accuracy"]
            assert cell["values"] == values and cell["n_seeds"] == 2
            assert cell["mean"] == pytest.approx(sum(values) / 2) and len(cell["ci95"]) == 2
            assert len(row["chosen_per_seed"]["probe C (chosen)"]) == 2
    # each seed's probe C is the one evaluate chose on that run's validation split
    eval_c = runs.read_json(out / "seed-1" / "ae" / "eval.json")["metrics"]["probe_C"]
    assert summary["tables"]["test split"][0]["chosen_per_seed"]["probe C (chosen)"][1] == eval_c
    # the 10k rows are scored on the official test set, the others on mnist5k's test split
    ten_k = runs.read_json(out / "seed-0" / "ae" / "eval-test-mnist.json")
    assert ten_k["data"]["n_test"] == 10000
    assert (
        summary["tables"]["official MNIST test set (10k)"][0]["metrics"]["recon_sse"]["values"][0]
        == (ten_k["metrics"]["recon_sse"])
    )
    pairs = {(d["a"], d["b"], d["metric"], d["table"]) for d in summary["paired_differences"]}
    assert ("vae", "ae", "probe_accuracy", "test split") in pairs
    assert (out / "report.html").exists() and (out / "seed-0" / "report.html").exists()
