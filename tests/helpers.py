"""Assertions shared by the test files (import: `from helpers import ...`; pytest puts tests/ on sys.path)."""


def one_line_exit_2(capsys, code, needle=""):
    """The project's rule for bad input: exit status 2, exactly one stderr line, no traceback, naming `needle`."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    return err
