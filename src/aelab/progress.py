"""What long work shows while it runs: one rule for every command and experiment.

    with Progress("runs/h06: evaluate", total=5, unit="stage") as p:
        p.phase("codes, PCA, probes")     # what it is doing now
        ...
        p.update()                        # one more of `total` done

On a terminal (stderr is a TTY) it is a tqdm bar; otherwise (a log file, CI, a pipe) it is one line per phase and
per finished unit of work, never the bar's carriage returns. Either way nothing is silent for long: a heartbeat
thread refreshes the bar, or prints a line saying what is still running and for how long, whenever HEARTBEAT_S
seconds have passed without output, so a step that cannot report its own progress (a solver inside a library) still
shows that it is alive. The time left is estimated from the units done so far when there are any. enabled=False
(--quiet, --no-progress) shows nothing. An error closes the bar before its one line is printed.
"""

from __future__ import annotations

import io
import sys
import threading
import time

HEARTBEAT_S = 20.0  # at most this long without a line or a bar update (the rule: never more than 30 s)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


_lock = threading.RLock()
_active: list[Progress] = []  # the open Progress objects, innermost last: the heartbeat speaks for the innermost
_last = [time.monotonic()]  # when anything (any Progress, or a line it was told of) was last shown
_thread: list[threading.Thread] = []


def _shown() -> None:
    _last[0] = time.monotonic()


def _beat() -> None:
    """One thread for every open Progress: a bar's elapsed time ticks every second; off a terminal, a line for the
    innermost open Progress whenever nothing at all was shown for its heartbeat."""
    while True:
        time.sleep(0.1)
        with _lock:
            if not _active:
                _thread.clear()
                return
            top = _active[-1]
            quiet_for = time.monotonic() - _last[0]
            if top._bar is not None:
                if quiet_for >= 1.0:
                    try:
                        top._bar.refresh()
                    except Exception:  # noqa: BLE001  a bar closed between the check and the refresh
                        pass
                    _shown()
            elif quiet_for >= top.heartbeat:
                top._line(f"{top.label}: still {top.phase_text or 'working'}{top._where()}")


class Progress:
    """A bar on a terminal, lines elsewhere, a heartbeat in between (see the module docstring). Progress objects
    nest (an experiment's, its runs' training, their evaluation): the heartbeat speaks for the innermost one, and
    only when nothing at all was shown for its `heartbeat` seconds."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "step",
        enabled: bool = True,
        stream=None,
        heartbeat: float | None = None,
        lines: bool | None = None,
    ):
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.stream = sys.stderr if stream is None else stream
        self.lines = (not _is_terminal(self.stream)) if lines is None else lines
        self.done, self.kept, self.phase_text = 0, 0, ""
        self.started = time.monotonic()
        self.heartbeat = HEARTBEAT_S if heartbeat is None else heartbeat
        self._bar = None
        self._open = False
        if not enabled:
            return
        if not self.lines:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit=unit, file=self.stream, mininterval=0.5, leave=False)
        with _lock:
            _active.append(self)
            self._open = True
            _shown()
            if not _thread:
                _thread.append(threading.Thread(target=_beat, daemon=True))
                _thread[0].start()

    # ---- what the work calls
    def phase(self, text: str) -> None:
        """Say what is being done now."""
        self.phase_text = text
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(text)
            _shown()
        else:
            self._line(f"{self.label}: {text}{self._where()}")

    def update(self, n: int = 1, text: str | None = None, kept: bool = False) -> None:
        """n more units done. On a terminal the bar moves; elsewhere a line is printed only when `text` says what
        they gave (a finished row, an epoch's losses): the heartbeat reports the count in between. kept=True: units
        finished before a --resume, read back in no time: they do not count in the time-left estimate."""
        self.done += n
        self.kept += n if kept else 0
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if text:
                self._bar.set_postfix_str(text)
            _shown()
        elif text:
            self._line(f"{self.label}: {text}{self._where()}")

    def status(self, text: str) -> None:
        """What is being done now, shown on the bar, and elsewhere by the next heartbeat line (not a line of its
        own: for statuses that change every few steps)."""
        self.phase_text = text
        if self.enabled and self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def touch(self) -> None:
        """Something else was just printed (an epoch line): the heartbeat waits again."""
        _shown()

    def write(self, text: str) -> None:
        """A line of its own (a result), above the bar on a terminal."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
            _shown()
        else:
            self._line(text)

    def close(self) -> None:
        with _lock:
            if self._open:
                _active.remove(self)
                self._open = False
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals
    def _where(self) -> str:
        elapsed = time.monotonic() - self.started
        if not self.total:
            return f" ({duration(elapsed)})"
        text = f" ({self.done}/{self.total} {self.unit}s, {duration(elapsed)}"
        worked = self.done - self.kept
        if 0 < worked and self.done < self.total:
            text += f", about {duration(elapsed / worked * (self.total - self.done))} left"
        return text + ")"

    def _line(self, text: str) -> None:
        with _lock:
            print(text, file=self.stream, flush=True)
            _shown()


def close_all_bars() -> None:
    """Close every open tqdm bar (an error's one line must not be printed on a bar's line)."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", [])):
        try:
            bar.close()
        except Exception:  # noqa: BLE001
            pass


def inner_bar(iterable, desc: str, unit: str, enabled: bool = True, total: int | None = None):
    """A nested tqdm bar over `iterable` (IWAE batches, t-SNE iterations) on a terminal only: elsewhere the
    enclosing Progress's phase line and heartbeat say what is running."""
    from tqdm import tqdm

    return tqdm(
        iterable,
        desc=desc,
        unit=unit,
        total=total,
        file=sys.stderr,
        leave=False,
        disable=not (enabled and _is_terminal(sys.stderr)),
    )


class PrefixedLines(io.TextIOBase):
    """A stream whose every line starts with `prefix` (a --jobs worker's stdout and stderr: "seed 3 | "); never a
    terminal, so that Progress writes lines, not bars, through it."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self.at_start = stream, prefix, True

    def write(self, text: str) -> int:
        parts = []
        for piece in text.splitlines(keepends=True):
            parts.append((self.prefix if self.at_start else "") + piece)
            self.at_start = piece.endswith("\n")
        self.stream.write("".join(parts))
        self.stream.flush()
        return len(text)

    def isatty(self) -> bool:
        return False

    def flush(self) -> None:
        self.stream.flush()
