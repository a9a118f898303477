"""Issue 31: long work is never silent. aelab.progress prints a line per phase off a terminal, and a heartbeat line
whenever nothing was printed for HEARTBEAT_S; evaluate and the experiments run every step under it. The gap test
slows the steps that take long at paper scale and checks the largest gap between two output lines."""

import io
import sys
import threading
import time

import pytest

import aelab.progress as progress
from aelab.cli import main
from aelab.progress import Progress, duration


class Clock(io.TextIOBase):
    """A stream that keeps the time of every line written to it."""

    def __init__(self):
        self.lines: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            for line in text.splitlines():
                if line.strip():
                    self.lines.append((time.monotonic(), line))
        return len(text)

    def isatty(self) -> bool:
        return False

    def gaps(self) -> list[float]:
        times = [t for t, _ in self.lines]
        return [b - a for a, b in zip(times, times[1:])]


def test_lines_off_a_terminal_a_heartbeat_and_the_time_left():
    clock = Clock()
    with Progress("run: evaluate", total=4, unit="stage", stream=clock, heartbeat=0.3) as bar:
        bar.phase("codes")
        bar.update()
        time.sleep(1.0)  # nothing said for 1 s: the heartbeat speaks at least twice
        bar.update(text="PCA done")
    texts = [line for _, line in clock.lines]
    assert texts[0] == "run: evaluate: codes (0/4 stages, 0 s)"
    beats = [t for t in texts if t.startswith("run: evaluate: still codes (1/4 stages")]
    assert len(beats) >= 2 and "left)" in beats[0]
    assert texts[-1].startswith("run: evaluate: PCA done (2/4 stages")
    n = len(clock.lines)
    time.sleep(0.7)
    assert len(clock.lines) == n  # closed: the heartbeat has stopped
    assert max(clock.gaps()) < 0.3 + 0.4


def test_rows_kept_by_a_resume_do_not_shorten_the_time_left(monkeypatch):
    """3 of 6 rows read back at once, the 4th done after 10 s: about 20 s left for the last 2, not 5 s."""
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    clock = Clock()
    with Progress("r", total=6, unit="row", stream=clock, heartbeat=1000) as bar:
        bar.update(3, text="kept", kept=True)
        assert clock.lines[-1][1] == "r: kept (3/6 rows, 0 s)"  # nothing worked yet: no estimate
        now[0] += 10.0
        bar.update(text="row 4")
        assert clock.lines[-1][1] == "r: row 4 (4/6 rows, 10 s, about 20 s left)"  # 10 s per worked row


def test_disabled_progress_prints_nothing_and_durations_read_well():
    clock = Clock()
    with Progress("x", total=2, stream=clock, heartbeat=0.1, enabled=False) as bar:
        bar.phase("a")
        bar.update(text="b")
        time.sleep(0.3)
    assert clock.lines == []
    assert [duration(s) for s in (4.4, 75, 3725)] == ["4 s", "1 min 15 s", "1 h 02 min"]


@pytest.fixture
def slowed(monkeypatch):
    """The steps that take minutes at paper scale (a probe fit, PCA, t-SNE, a training epoch) each take 1.2 s here, and
    the heartbeat is 0.3 s instead of 20 s: a step that runs outside a Progress shows as a gap of 1.2 s or more."""
    import aelab.evaluate as evaluate_module
    import aelab.metrics.codes as codes
    import aelab.train.loop as train_module

    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.3)

    def slow(function):
        def wrapper(*args, **kwargs):
            time.sleep(1.2)
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(codes, "_fit_and_score", slow(codes._fit_and_score))
    monkeypatch.setattr(evaluate_module, "pca_reconstruction_sse", slow(evaluate_module.pca_reconstruction_sse))
    monkeypatch.setattr(evaluate_module, "tsne_2d", slow(evaluate_module.tsne_2d))
    monkeypatch.setattr(train_module, "train_one_epoch", slow(train_module.train_one_epoch))


def test_evaluate_and_an_experiment_are_never_silent_for_long(tmp_path, slowed, monkeypatch):
    slowed = Clock()  # installed here, not in the fixture: pytest puts its own capture back before the test runs
    monkeypatch.setattr(sys, "stderr", slowed)
    monkeypatch.setattr(sys, "stdout", slowed)
    run = tmp_path / "run"
    tiny = ["--dataset", "digits", "--train-limit", "200", "--hidden", "8", "--latent", "2", "--no-tensorboard"]
    assert main(["train", *tiny, "--model", "vae", "--epochs", "2", "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--iwae-k", "5", "--tsne-points", "60"]) == 0
    assert main(["experiment", "binary", "--quick", "--dataset", "digits", "--train-limit", "150", "--bits", "8",
                 "--epochs", "1", "--out", str(tmp_path / "exp")]) == 0  # fmt: skip
    texts = [line for _, line in slowed.lines]
    assert any("still" in t for t in texts), texts  # the slowed steps were covered by heartbeats
    gaps = slowed.gaps()
    assert max(gaps) < 1.1, [(round(g, 1), texts[i], texts[i + 1]) for i, g in enumerate(gaps) if g >= 1.1]
