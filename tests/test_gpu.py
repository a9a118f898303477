"""Checks that need a CUDA GPU (skipped elsewhere; benchmarks/gpu_session.sh runs them on a lent device)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from aelab.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = ["--dataset", "digits", "--train-limit", "300", "--hidden", "32", "--latent", "4", "--epochs", "3", "--quiet"]


def test_the_same_seed_twice_on_cuda_gives_the_same_weights(tmp_path):
    for name in ("a", "b"):
        assert main(["train", *TINY, "--model", "vae", "--device", "cuda", "--out", str(tmp_path / name)]) == 0
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_on_cuda_matches_the_cpu(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *TINY, "--model", "vae", "--out", str(run)]) == 0
    numbers = {}
    for device in ("cpu", "cuda"):
        assert main(["evaluate", str(run), "--no-figures", "--no-progress", "--iwae-k", "50", "--device", device]) == 0
        numbers[device] = json.loads((run / "eval.json").read_text())["metrics"]
    # the IWAE samples are drawn on the CPU: the bound differs by float rounding only
    assert numbers["cuda"]["nll_nats"] == pytest.approx(numbers["cpu"]["nll_nats"], abs=1e-3)
    assert numbers["cuda"]["recon_sse"] == pytest.approx(numbers["cpu"]["recon_sse"], rel=1e-4)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_deep_ae_pretrains_at_the_runs_precision(tmp_path, precision):
    args = ["--dataset", "digits", "--train-limit", "300", "--model", "deep-ae", "--option", "init=rbm",
            "--option", "pretrain_epochs=2", "--option", "layers=[64,32,2]", "--epochs", "1", "--quiet"]  # fmt: skip
    out = tmp_path / precision
    assert main(["train", *args, "--device", "cuda", "--precision", precision, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["precision"] == precision
