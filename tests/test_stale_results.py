"""Issue 23 item 1: evaluate, then resume for more epochs, then compare: the table must show the numbers of the
weights the run holds now, never the old eval.json's."""

import json

from aelab.cli import main

TRAIN = ["train", "--dataset", "digits", "--train-limit", "200", "--batch-size", "50", "--hidden", "8",
         "--latent", "2", "--no-progress"]  # fmt: skip


def test_a_resume_makes_eval_json_stale_and_compare_evaluates_again(tmp_path, capsys):
    run, other = tmp_path / "run", tmp_path / "other"
    assert main([*TRAIN, "--epochs", "1", "--out", str(run)]) == 0
    assert main([*TRAIN, "--epochs", "1", "--seed", "1", "--out", str(other)]) == 0
    assert main(["evaluate", str(run), "--no-figures"]) == 0
    old = json.loads((run / "eval.json").read_text())
    assert old["scored"]["epoch"] == 1 and len(old["scored"]["model_sha256"]) == 64
    assert main([*TRAIN, "--epochs", "3", "--out", str(run), "--resume"]) == 0
    marked = json.loads((run / "eval.json").read_text())
    assert marked["stale"].startswith("STALE") and "STALE" in (run / "report.md").read_text().splitlines()[0]
    capsys.readouterr()
    assert main(["compare", str(run), str(other), "--out", str(tmp_path / "cmp")]) == 0
    fresh = json.loads((run / "eval.json").read_text())  # compare evaluated it again and wrote it
    assert fresh["scored"]["epoch"] == 3 and "stale" not in fresh
    assert fresh["metrics"]["recon_sse"] != old["metrics"]["recon_sse"]
    import csv

    rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    column = next(k for k in rows[0] if k.endswith("recon_sse") and "pca" not in k)
    assert float(rows[0][column]) == fresh["metrics"]["recon_sse"] != old["metrics"]["recon_sse"]
    assert "evaluated again" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_a_current_eval_json_is_used_as_it_is(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    for out, seed in ((run, "0"), (other, "1")):
        assert main([*TRAIN, "--epochs", "1", "--seed", seed, "--out", str(out)]) == 0
        assert main(["evaluate", str(out), "--no-figures"]) == 0
    before = (run / "eval.json").read_bytes()
    assert main(["compare", str(run), str(other), "--out", str(tmp_path / "cmp")]) == 0
    assert (run / "eval.json").read_bytes() == before  # not evaluated again
    assert "evaluated again" not in (tmp_path / "cmp" / "comparison.md").read_text()


def test_the_epoch_line_shows_the_validation_loss_that_chooses(tmp_path):
    """Issue 23 item 4: the split that chooses is in view, the test loss stays a reported column after it."""
    from aelab.train import TrainConfig, train

    lines = []
    cfg = TrainConfig(dataset="digits", train_limit=200, epochs=1, out=str(tmp_path / "r"), tensorboard=False)
    train(cfg, progress=True, log=lines.append)
    (line,) = [text for text in lines if "epoch 1/1" in text]
    assert line.index("train_loss") < line.index("val_loss") < line.index("test_loss")


def test_an_eval_json_from_before_the_record_is_used_and_a_finished_resume_marks_nothing(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    for out, seed in ((run, "0"), (other, "1")):
        assert main([*TRAIN, "--epochs", "1", "--seed", seed, "--out", str(out)]) == 0
        assert main(["evaluate", str(out), "--no-figures"]) == 0
    legacy = json.loads((run / "eval.json").read_text())
    legacy.pop("scored")  # as eval.json was written before this session
    (run / "eval.json").write_text(json.dumps(legacy))
    before = (run / "eval.json").read_bytes()
    assert main([*TRAIN, "--epochs", "1", "--out", str(run), "--resume"]) == 0  # nothing left to train
    assert (run / "eval.json").read_bytes() == before  # not marked stale: the weights did not change
    assert main(["compare", str(run), str(other), "--out", str(tmp_path / "cmp")]) == 0
    assert (run / "eval.json").read_bytes() == before  # used as it is, not evaluated again
