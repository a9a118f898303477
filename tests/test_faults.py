"""SIGKILL training and evaluation at random points; --resume must end bit-identical to an uninterrupted run,
without training again the epochs a checkpoint already holds, and every file left on disk must parse.

AELAB_KILL_TRIALS=N runs N trials (default 1) of at least 10 kills each."""

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
    "train", "--model", "vae", "--dataset", "digits", "--train-limit", "300", "--epochs", "4", "--batch-size", "64",
    "--hidden", "32", "--latent", "4", "--no-progress", "--checkpoint-every", "0",
]  # fmt: skip
EPOCHS, STEPS_PER_EPOCH = 4, 5  # ceil(300 / 64)
WRITES_PER_EPOCH = 4  # checkpoint, model.safetensors, model.json, metrics.jsonl
KILLS = 10


def aelab(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AELAB_FAULT")}
    env.update(env_extra or {})
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run([sys.executable, "-m", "aelab", *args], env=env, capture_output=True, text=True, timeout=300)


def checkpoint_epoch(out) -> int:
    if not (out / "checkpoint.safetensors").exists():
        return 0
    return runs.load_state(out / "checkpoint.safetensors")[1]["epoch"]


def check_every_file_parses(out):
    """Whatever is on disk after a kill is complete and readable; only hidden temp files may be partial."""
    for path in out.rglob("*"):
        if path.is_dir() or path.name == ".lock":
            continue
        if ".tmp-" in path.name:  # a killed writer's temp file: never read, removed by the next writer
            assert path.name.startswith(".")
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]
        elif path.suffix == ".safetensors":
            runs.read_safetensors(path)  # checks every tensor against its checksum too
        elif path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        elif path.suffix == ".html":
            assert path.read_text().rstrip().endswith("</html>")
        elif path.suffix == ".md":
            assert path.read_text().startswith("# ")
        else:
            pytest.fail(f"unexpected file {path}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = aelab(*ARGS, "--out", str(out))
    assert r.returncode == 0, r.stderr
    r = aelab("evaluate", str(out), "--iwae-k", "5", "--tsne-points", "60")
    assert r.returncode == 0, r.stderr
    return out


def strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if "time" not in k and "per_s" not in k and k != "resumes"} for h in history]


@pytest.mark.parametrize("trial", range(int(os.environ.get("AELAB_KILL_TRIALS", "1"))))
def test_kill_train_and_evaluate_then_resume(reference, tmp_path, trial):
    rng = random.Random(1000 + trial)
    out = tmp_path / "run"
    kill_epochs = []  # the checkpoint's epoch after each kill: what the next --resume starts from
    first = True
    while len(kill_epochs) < KILLS:
        done = checkpoint_epoch(out)
        remaining = EPOCHS - done
        kind = rng.choice(["step", "write", "write"])
        # a point inside the work still to do, so that the kill always comes (config.json is one more write)
        point = rng.randint(1, remaining * STEPS_PER_EPOCH if kind == "step" else 1 + remaining * WRITES_PER_EPOCH)
        r = aelab(*ARGS, "--out", str(out), *([] if first else ["--resume"]),
                  env_extra={f"AELAB_FAULT_KILL_AT_{kind.upper()}": str(point)})  # fmt: skip
        assert r.returncode == -9, r.stderr  # killed by SIGKILL, not an error
        first = False
        check_every_file_parses(out)
        kill_epochs.append(checkpoint_epoch(out))
    r = aelab(*ARGS, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr

    ref, got = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    history = runs.read_history(out)
    assert strip(runs.read_history(reference)) == strip(history)
    # each epoch was trained once, by the process that continued from the last checkpoint before it. Epoch e
    # records how many continuations led to it: one per distinct checkpoint below e that a kill left (a
    # continuation killed before its first checkpoint leaves no trace). Training again from scratch (a resume
    # that ignores the checkpoint) would give every epoch the count 0.
    expected = [len({c for c in kill_epochs if 0 < c < h["epoch"]}) for h in history]
    assert [h["resumes"] for h in history] == expected
    assert max(kill_epochs) > 0  # some kills came after a checkpoint, so the check above has teeth

    # evaluation killed mid-write (figures, eval.json, report): the next one completes and cleans up
    for _ in range(2):
        point = rng.randint(1, 6)
        r = aelab("evaluate", str(out), "--iwae-k", "5", "--tsne-points", "60",
                  env_extra={"AELAB_FAULT_KILL_AT_WRITE": str(point)})  # fmt: skip
        assert r.returncode == -9, r.stderr
        check_every_file_parses(out)
    r = aelab("evaluate", str(out), "--iwae-k", "5", "--tsne-points", "60")
    assert r.returncode == 0, r.stderr
    check_every_file_parses(out)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    m_ref = json.loads((reference / "eval.json").read_text())["metrics"]
    m_got = json.loads((out / "eval.json").read_text())["metrics"]
    assert m_ref == m_got


def test_checkpoint_every_a_sigterm_writes_the_last_epoch_and_a_kill_between_checkpoints_resumes_exactly(
    reference, tmp_path
):
    """--checkpoint-every 3600: no checkpoint between the first epoch and the end. A SIGTERM in epoch 3 writes
    the snapshot of epoch 2 (exit 143); a SIGKILL in epoch 4 of the continuation loses only epochs 3-4, and the
    next --resume continues from epoch 2 and ends bit-identical to the uninterrupted run."""
    out = tmp_path / "run"
    sparse = [a for a in ARGS if a != "0" or ARGS[ARGS.index(a) - 1] != "--checkpoint-every"]
    sparse = [*sparse[: sparse.index("--checkpoint-every")], "--checkpoint-every", "3600"]
    r = aelab(*sparse, "--out", str(out),
              env_extra={"AELAB_FAULT_KILL_AT_STEP": str(2 * STEPS_PER_EPOCH + 2), "AELAB_FAULT_SIGNAL": "TERM"})  # fmt: skip
    assert r.returncode == 128 + 15, r.stderr
    assert checkpoint_epoch(out) == 2  # the first epoch's checkpoint, then epoch 2's snapshot on SIGTERM
    assert [h["epoch"] for h in runs.read_history(out)] == [1, 2]
    check_every_file_parses(out)
    r = aelab(*sparse, "--out", str(out), "--resume",
              env_extra={"AELAB_FAULT_KILL_AT_STEP": str(STEPS_PER_EPOCH + 3)})  # fmt: skip
    assert r.returncode == -9, r.stderr
    assert checkpoint_epoch(out) == 2  # epoch 3 finished, but its checkpoint was not due: lost with the kill
    r = aelab(*sparse, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    ref, got = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert strip(runs.read_history(reference)) == strip(runs.read_history(out))
    # the killed continuation left no checkpoint, so no trace: epochs 3-4 come from the one after the SIGTERM
    assert [h["resumes"] for h in runs.read_history(out)] == [0, 0, 1, 1]


def test_the_automatic_checkpoint_cadence(monkeypatch):
    """At most one a minute; no sooner than 20 times the last one's cost; at least one every 10 minutes;
    `--checkpoint-every S`: every S seconds (0: every epoch). A fake clock stands in for time.monotonic."""
    from aelab.runs import writer as trainer

    now = [1000.0]
    monkeypatch.setattr(trainer.time, "monotonic", lambda: now[0])

    def epochs_written(every, epoch_s, write_s, n):
        cadence, written = trainer.CheckpointCadence(every), []
        for epoch in range(1, n + 1):
            now[0] += epoch_s
            if cadence.due():
                cadence.start()
                now[0] += write_s
                cadence.done()
                written.append(epoch)
        return written

    assert epochs_written(None, 1.0, 0.1, 130) == [60, 120]  # short epochs, cheap writes: one a minute
    assert epochs_written(None, 1.0, 10.0, 500) == [60, 260, 460]  # 20 x 10 s of cost between checkpoints
    assert epochs_written(None, 1.0, 100.0, 1400) == [60, 660, 1260]  # capped at 10 minutes
    assert epochs_written(0, 1.0, 5.0, 4) == [1, 2, 3, 4]
    assert epochs_written(30, 10.0, 0.0, 10) == [3, 6, 9]


def test_a_snapshot_is_a_copy_and_the_next_one_reuses_its_memory():
    from aelab.train import copy_into

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    first = copy_into({"model": model.state_dict(), "opt": opt.state_dict()})
    kept = {k: v.clone() for k, v in first["model"].items()}
    moments = first["opt"]["state"][0]["exp_avg"].clone()
    model(torch.randn(5, 4)).sum().backward()
    opt.step()  # the live state moves on; the copy must not
    assert all(torch.equal(first["model"][k], kept[k]) for k in kept)
    assert torch.equal(first["opt"]["state"][0]["exp_avg"], moments)
    pointers = [v.data_ptr() for v in first["model"].values()]
    second = copy_into({"model": model.state_dict(), "opt": opt.state_dict()}, first)
    assert [v.data_ptr() for v in second["model"].values()] == pointers  # no new memory
    assert all(torch.equal(second["model"][k], v) for k, v in model.state_dict().items())
    assert torch.equal(second["opt"]["state"][0]["exp_avg_sq"], opt.state_dict()["state"][0]["exp_avg_sq"])
    assert second["opt"]["param_groups"] == opt.state_dict()["param_groups"]
    assert all(v.data_ptr() != p.data_ptr() for v, p in zip(second["model"].values(), model.parameters()))


def test_an_interruption_during_a_snapshot_writes_the_previous_one_whole(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM while epoch 3's snapshot is being copied: the checkpoint written then is epoch 2's,
    every tensor of it (never half epoch 2's and half epoch 3's)."""
    from aelab.models import create
    from aelab.runs import writer as trainer

    model = create("ae", input_shape=[1, 8, 8], hidden=[8], latent=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    writer = trainer.RunWriter(tmp_path, model, opt, [], True)

    def epoch(n):
        opt.zero_grad()
        model.loss_terms(torch.rand(8, 1, 8, 8))["loss"].backward()
        opt.step()
        writer.history.append({"epoch": n})

    for n in (1, 2):  # two snapshots: both sets of buffers in use
        epoch(n)
        writer.snapshot(n)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    epoch(3)
    copied, real = [0], trainer.copy_into

    def interrupted(src, old=None):
        if isinstance(src, torch.Tensor):
            copied[0] += 1
            if copied[0] == 3:
                raise KeyboardInterrupt
        return real(src, old)

    monkeypatch.setattr(trainer, "copy_into", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.snapshot(3)
    writer.write_pending()
    state, meta = runs.load_state(tmp_path / "checkpoint.safetensors")
    assert meta["epoch"] == 2 and all(torch.equal(state["model"][k], kept[k]) for k in kept)
