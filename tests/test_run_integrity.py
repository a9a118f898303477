"""The run folder's integrity checks: a weights file stripped of its checksums is refused, temp files of dead
writers are cleaned (the same pid included), a live writer's are kept."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from aelab import runs
from aelab.errors import CheckpointError


def _rewrite_header(path, drop: tuple[str, ...]):
    """Rewrite a safetensors file with some metadata entries removed (what an edit by another tool does)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n)).get("__metadata__", {})
    tensors = load_file(path)
    save_file(tensors, path, metadata={k: v for k, v in meta.items() if k not in drop})


@pytest.mark.parametrize("drop", [("checksums",), ("checksums", "format_version")])
def test_weights_without_their_checksums_are_refused(tmp_path, drop):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "w.safetensors"
    runs.atomic_write_bytes(path, runs._safetensors_bytes(model.state_dict(), {"format_version": "2"}))
    tensors, _ = runs.read_safetensors(path)  # intact: loads
    assert torch.equal(tensors["weight"], model.weight.detach())
    _rewrite_header(path, drop)
    with pytest.raises(CheckpointError, match="checksums missing"):
        runs.read_safetensors(path)


def test_a_tensor_edited_under_its_checksum_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    state = {"w": torch.arange(6.0)}
    runs.atomic_write_bytes(path, runs._safetensors_bytes(state, {"format_version": "2"}))
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))["__metadata__"]
    save_file({"w": torch.arange(6.0) + 1}, path, metadata=meta)  # same header, other values
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        runs.read_safetensors(path)


def test_temp_files_of_dead_writers_and_of_this_pid_are_removed_a_live_writers_kept(tmp_path):
    mine = tmp_path / f".model.safetensors.tmp-{os.getpid()}-aaaa0000"  # a dead process that had this pid
    live = tmp_path / ".config.json.tmp-1-bbbb1111"  # pid 1 is alive
    dead_pid = 2**22 + 12345  # above pid_max on Linux: no such process
    dead = tmp_path / f".metrics.jsonl.tmp-{dead_pid}-cccc2222"
    user = tmp_path / ".draft.tmp"  # not ours
    for p in (mine, live, dead, user):
        p.write_text("x")
    runs.remove_stale_temp_files(tmp_path)
    assert not mine.exists() and not dead.exists()
    assert live.exists() and user.exists()


def test_reading_weights_reserves_no_more_than_the_file_under_a_memory_limit(tmp_path):
    """Issue 24: read(16 GiB + 1) reserved the cap up front; under `ulimit -v` a valid run folder failed to
    load. In a child process limited to 3 GiB of address space, a small weights file must load."""
    import subprocess
    import sys

    path = tmp_path / "w.safetensors"
    runs.atomic_write_bytes(path, runs._safetensors_bytes({"w": torch.arange(10.0)}, {"format_version": "2"}))
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
        "from aelab import runs; t, _ = runs.read_safetensors(sys.argv[1]); print(t['w'].sum().item())"
    )
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "45.0", r.stderr[-500:]


def test_a_file_larger_than_its_cap_is_refused_unread(tmp_path):
    big = tmp_path / "config.json"
    big.write_bytes(b" " * 101)
    with pytest.raises(CheckpointError, match="more than the 100"):
        runs.read_bytes(big, 100)
    assert runs.read_bytes(big, 101) == b" " * 101


def test_a_file_of_the_format_before_checksums_still_loads(tmp_path):
    path = tmp_path / "old.safetensors"
    save_file({"w": torch.arange(3.0)}, path, metadata={"format_version": "1"})
    assert torch.equal(runs.read_safetensors(path)[0]["w"], torch.arange(3.0))
