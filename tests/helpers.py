"""Assertions shared by the test files (import: `from helpers import ...`; pytest puts tests/ on sys.path)."""


def one_line_exit_2(capsys, code, needle=""):
    """The project's rule for bad input: exit status 2, exactly one stderr line, no traceback, naming `needle`."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    return err


CLOCK_KEYS = ("_s", "seconds", "time (s)", "train s", "_to_training", "_per_row")  # keys whose values the clock gives
CLOCK_TEXT = r"\d+(\.\d+)? (s\b|min\b|of the training)"  # seconds and ratios quoted in notes


def without_times(obj):
    """A results.json without what the clock gives (for comparing a resumed run with an uninterrupted one): the keys
    that hold seconds or time ratios, and the durations quoted in its notes. Everything else must be equal."""
    import re

    if isinstance(obj, str):
        return re.sub(CLOCK_TEXT, "N", obj)
    if isinstance(obj, dict):
        return {k: without_times(v) for k, v in obj.items() if not k.endswith(CLOCK_KEYS)}
    if isinstance(obj, list):
        return [without_times(v) for v in obj]
    return obj


def idx_folder_with_one_wrong_byte(idx_mnist, root):
    """root/mnist/ holding the IDX files of `idx_mnist` with the last byte of the train images flipped; returns root."""
    (root / "mnist").mkdir(parents=True)
    for f in idx_mnist.iterdir():
        blob = bytearray(f.read_bytes())
        if f.name.startswith("train-images"):
            blob[-1] ^= 0xFF
        (root / "mnist" / f.name).write_bytes(bytes(blob))
    return root
