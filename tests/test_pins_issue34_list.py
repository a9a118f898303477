"""Pins of issue 34's list that its other tests left open when each behaviour was broken by hand
(/work/handmutants-audit.md): an experiment on IDX data checking its files before the trainer starts (not only
before the run is kept), the binary code statistics as evaluate reports them (of the test split), and LfF at each
point of the debias-classifier cell's grid."""

import numpy as np
import pytest
import torch

from aelab import debias as dm
from aelab.cli import main
from aelab.experiments import debias_classifier_cell as cell
from helpers import idx_folder_with_one_wrong_byte, one_line_exit_2

pytestmark = pytest.mark.usefixtures("one_thread")

# every experiment that trains on --dataset, with the smallest settings that reach its training (as test_pins_train)
IDX_EXPERIMENTS = {
    "vae-family": ["--epochs", "1", "--nll-k", "2", "--models", "vae"],
    "binary": ["--epochs", "1", "--bits", "8", "--train-limit", "100"],
    "contractive": ["--epochs", "1", "--hidden", "8", "--train-limit", "100", "--quick"],
    "demo": ["--epochs", "1"],
    "hinton2006": ["--layers", "784-16-2", "--epochs", "1", "--cg-epochs", "1", "--pretrain-epochs", "1",
                   "--train-limit", "100", "--logistic-pca-iter", "5", "--weight-decay", "0"],
}  # fmt: skip


@pytest.mark.parametrize("experiment", sorted(IDX_EXPERIMENTS))
def test_an_experiment_on_idx_data_refuses_a_wrong_file_before_the_trainer_starts(
    experiment, idx_mnist, tmp_path, capsys, monkeypatch
):
    """A wrong IDX file (one changed byte) with an --out folder that exists already (empty, so the CLI does not
    remove it afterwards): one line naming the checksum mismatch, the trainer never entered and nothing written in
    --out. Without the experiment's own check (aelab.experiments.common.preflight) the error would still come, from
    the trainer's data loading or a later read of the data, but after demo and contractive had entered the trainer
    and after the seed folders and their settings were written."""
    from aelab.train import loop

    entered = []
    real_train = loop._train

    def spy(cfg, *args, **kwargs):
        entered.append(cfg.out)
        return real_train(cfg, *args, **kwargs)

    monkeypatch.setattr(loop, "_train", spy)
    root = idx_folder_with_one_wrong_byte(idx_mnist, tmp_path / "data")
    out = tmp_path / "exp"
    out.mkdir()
    argv = ["experiment", experiment, "--dataset", "mnist", "--data-dir", str(root), "--out", str(out)]
    code = main([*argv, *IDX_EXPERIMENTS[experiment], "--no-progress"])
    one_line_exit_2(capsys, code, "checksum mismatch")
    assert entered == []
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == []


def test_evaluate_reports_the_distinct_codes_and_the_saturation_of_the_test_split(tmp_path):
    """eval.json's code_distinct_test and code_saturation of a float-bottleneck binary AE (its weights scaled by 4
    so that some sigmoid codes saturate) are those of the TEST images, computed here from the encoder's output: the
    number of distinct codes thresholded at 0.5, and the fraction of sigmoid values outside [0.05, 0.95]. The train
    split gives other numbers (checked), so evaluate handing code_statistics the train images shows."""
    from aelab import runs
    from aelab.data import load
    from aelab.evaluate import evaluate
    from aelab.train import TrainConfig, train

    cfg = TrainConfig(model="binary", model_options={"bits": 8, "float_bottleneck": True}, dataset="digits",
                      train_limit=60, epochs=1, out=str(tmp_path / "run"), tensorboard=False)  # fmt: skip
    run = train(cfg, progress=False)
    model = runs.load_model(run)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    runs.save_model(run, model)
    metrics = evaluate(run, figures=False, write=False, iwae_k=2, progress=False)["metrics"]

    def distinct_and_saturation(x):
        with torch.no_grad():
            s = runs.load_model(run).encode(x).double()
        return len(np.unique((s > 0.5).numpy(), axis=0)), float(((s < 0.05) | (s > 0.95)).double().mean())

    distinct, saturation = distinct_and_saturation(load("digits", "test")[0])
    train_distinct, train_saturation = distinct_and_saturation(load("digits", "train")[0])
    assert distinct != train_distinct and 0.05 < saturation < 0.95 and saturation != train_saturation
    assert metrics["code_distinct_test"] == distinct
    assert metrics["code_saturation"] == pytest.approx(saturation, rel=1e-12)


def test_the_cell_runs_lff_at_each_grid_points_q_and_alpha_and_keeps_the_debiased_model(monkeypatch):
    """lff_candidates trains LfF once per point of LFF_GRID with that point's GCE q and moving-average alpha (q
    0.5/0.7 and alpha 0.7/0.9 are easily swapped), and offers the debiased model (train_lff's first) for
    selection, not the biased one."""
    calls = []

    def fake_lff(images, digits, epochs, seed, q, ema_alpha, **run):
        calls.append((q, ema_alpha))
        return f"debiased q={q} a={ema_alpha}", f"biased q={q} a={ema_alpha}"

    monkeypatch.setattr(dm, "train_lff", fake_lff)
    cands = cell.lff_candidates(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 1, 0, {"device": "cpu"})
    assert calls == [(g["q"], g["ema_alpha"]) for g in cell.LFF_GRID]
    assert len(set(calls)) == 4
    assert cands == [(g, f"debiased q={g['q']} a={g['ema_alpha']}") for g in cell.LFF_GRID]
