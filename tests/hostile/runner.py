"""Run a corpus of hostile aelab commands in ONE process, under the memory limit its parent set (ulimit -v), each
with its own timeout, and report per case: exit status, seconds, stderr, the checksums of the folders it must not
change (before and after), and which marker files exist afterwards.

    python tests/hostile/runner.py CASES.json RESULTS.json

CASES.json: [{"name", "argv", "cwd", "env": {...}, "watch": [folders], "markers": [paths], "timeout": s}, ...].
One interpreter for every case: torch is imported once (a process per case would cost ~3 s each), and every case
still meets the limit, its own alarm and its own stderr (redirected at the file-descriptor level, so that a C
library's output is caught too)."""

import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path


def checksums(folder: str) -> dict[str, str]:
    """path relative to folder -> sha256 (files), "link -> target" (symlinks), "fifo"/"dir" for the rest."""
    out = {}
    root = Path(folder)
    if not root.exists():
        return {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "dir"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.stat().st_size < 1 << 28 else "big"
        else:
            out[rel] = "special"
    return out


class Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise Timeout()


def run_case(case: dict) -> dict:
    from aelab.cli import main

    before = {w: checksums(w) for w in case.get("watch", [])}
    old_env = {k: os.environ.get(k) for k in case.get("env", {})}
    os.environ.update(case.get("env", {}))
    old_cwd = os.getcwd()
    os.chdir(case.get("cwd", old_cwd))
    err = tempfile.TemporaryFile()
    saved_fd = os.dup(2)
    sys.stderr.flush()
    os.dup2(err.fileno(), 2)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(case.get("timeout", 60)))
    t0 = time.perf_counter()
    try:
        code = main(case["argv"])
    except Timeout:
        code = "timeout"
    except BaseException as e:  # noqa: BLE001  an escape from main() is a finding, not a crash of the corpus
        code = f"escaped {type(e).__name__}: {e}"
    finally:
        seconds = time.perf_counter() - t0
        signal.alarm(0)
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    err.seek(0)
    stderr = err.read().decode(errors="replace")
    after = {w: checksums(w) for w in case.get("watch", [])}
    return {
        "name": case["name"],
        "code": code,
        "seconds": seconds,
        "stderr": stderr,
        "changed": {w: sorted(set(before[w].items()) ^ set(after[w].items())) for w in before},
        "markers": [m for m in case.get("markers", []) if os.path.lexists(m)],
        "modules": sorted(m for m in case.get("modules", []) if m in sys.modules),
    }


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    results = []
    for case in cases:
        results.append(run_case(case))
        Path(sys.argv[2]).write_text(json.dumps(results, indent=1))  # written as it goes: a hang loses one case


if __name__ == "__main__":
    main()
