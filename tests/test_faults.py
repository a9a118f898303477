"""SIGKILL a training process at random points; --resume must end bit-identical to an uninterrupted run."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from aelab import runs

ARGS = [
    "train",
    "--model",
    "vae",
    "--dataset",
    "digits",
    "--train-limit",
    "300",
    "--epochs",
    "4",
    "--batch-size",
    "64",
    "--hidden",
    "32",
    "--latent",
    "4",
    "--no-progress",
]
STEPS = 4 * 5  # 4 epochs of ceil(300 / 64) steps
WRITES = 1 + 4 * 4  # config.json, then per epoch: checkpoint, model.safetensors, model.json, metrics.jsonl


def aelab(out, *extra, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AELAB_FAULT")}
    env.update(env_extra or {})
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run(
        [sys.executable, "-m", "aelab", *ARGS, "--out", str(out), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def check_folder_is_consistent(out):
    """Whatever is on disk after a kill is complete: the checkpoint loads, JSON parses."""
    if (out / "checkpoint.safetensors").exists():
        state, meta = runs.load_state(out / "checkpoint.safetensors")
        assert "model" in state and "optimizer" in state and meta["epoch"] >= 0
    for name in ("config.json", "model.json"):
        if (out / name).exists():
            json.loads((out / name).read_text())
    if (out / "model.safetensors").exists():
        load_file(out / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = aelab(out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("trial", range(2))
def test_kill_and_resume_is_bit_identical(reference, tmp_path, trial):
    rng = random.Random(1000 + trial)
    out = tmp_path / "run"
    kills = 0
    first = True
    while True:
        kind = rng.choice(["step", "write"])
        point = rng.randint(1, STEPS if kind == "step" else WRITES)
        env = {f"AELAB_FAULT_KILL_AT_{kind.upper()}": str(point)} if kills < 3 else {}
        r = aelab(out, *([] if first else ["--resume"]), env_extra=env)
        first = False
        if r.returncode == 0:
            break
        assert r.returncode == -9, r.stderr  # killed by SIGKILL, not an error
        kills += 1
        check_folder_is_consistent(out)
    assert kills >= 1 or not env
    ref, got = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    strip = lambda path: [
        {k: v for k, v in json.loads(l).items() if "time" not in k and "per_s" not in k}
        for l in path.read_text().splitlines()
    ]
    assert strip(reference / "metrics.jsonl") == strip(out / "metrics.jsonl")
    assert not list(out.glob(".*.tmp-*"))
