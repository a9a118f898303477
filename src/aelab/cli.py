"""The `aelab` command line: parses arguments and dispatches, nothing else.

Bad input: one line on stderr and exit status 2, never a traceback. The argument tables are in cli_arguments.py,
what the commands do in cli_commands.py; train and experiment stay here, with the signal handling they share with
main().
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import importlib
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from . import options
from .cli_arguments import (
    _Parser,
    add_compare_arguments,
    add_data_arguments,
    add_evaluate_arguments,
    add_experiment_run_arguments,
    add_train_arguments,
)
from .cli_commands import (
    _remove_if_untouched,
    _threads,
    cmd_compare,
    cmd_data,
    cmd_evaluate,
    cmd_models,
    train_config_from_args,
)
from .errors import AelabError, TrainingDiverged
from .progress import close_all_bars


def cmd_train(args) -> int:
    from . import runs
    from .metrics.convergence import recorded_warnings, still_falling_warning
    from .train import dist_info, train

    cfg = train_config_from_args(args)
    quiet = getattr(args, "quiet", False)
    bars, lines = not (quiet or getattr(args, "no_progress", False)), not quiet
    if "seeds" in vars(args):
        from .metrics.intervals import format_interval
        from .seeds import format_choices, train_seeds

        try:
            out = train_seeds(cfg, args.seeds, getattr(args, "resume", False), bars, lines)
        except (KeyboardInterrupt, SystemExit) as e:
            if _stopping is None:  # not a signal (a user module's SystemExit): as before
                raise
            close_all_bars()
            print(stopped_line(e, args, args.seeds), file=sys.stderr)
            return 128 + signal.Signals[_stopping]
        summary = runs.read_json(out / "seeds.json")
        for name, values in summary["metrics"].items():
            print(f"{name:>24}: {format_interval(values, None)}")
        for name, values in summary.get("choices", {}).items():
            print(f"{name:>24}: chosen per seed {format_choices(values)}")
        for run in summary["runs"]:
            for warning in recorded_warnings(runs.read_json(out / run / "eval.json")):
                print(f"aelab: warning: {out / run}: {warning}", file=sys.stderr)
        print(f"seeds summary: {out / 'seeds.md'}")
        return 0
    try:
        out = train(cfg, resume=getattr(args, "resume", False), progress=bars, epoch_lines=lines)
    except (KeyboardInterrupt, SystemExit) as e:
        if _stopping is None or dist_info()[0] != 0:  # not a signal, or not the rank that speaks: as before
            raise
        close_all_bars()
        print(stopped_line(e, args), file=sys.stderr)
        return 128 + signal.Signals[_stopping]
    if dist_info()[0] == 0:
        warning = still_falling_warning(runs.read_history(out), str(out))
        if warning:
            print(f"aelab: warning: {warning}", file=sys.stderr)
        print(f"run folder: {out}")
    return 0


def cmd_experiment(args) -> int:
    module = importlib.import_module(f".experiments.{args.experiment_module}", __package__)
    from .runs import RunLock

    given = set(_argv or [])
    for old, new in options.deprecated_aliases(module.Settings).items():
        if old in given or any(a.startswith(old + "=") for a in given):
            print(f"aelab: note: {old} is deprecated; it is now {new}", file=sys.stderr)
    settings = options.from_args(module.Settings, args)
    if args.quiet and hasattr(settings, "no_progress"):
        settings = dataclasses.replace(settings, no_progress=True)
    if hasattr(settings, "validate"):
        settings.validate()
    if not str(settings.out).strip():
        raise AelabError("--out must name a folder")
    from .experiments.common import check_resume, preflight

    preflight(settings)  # a bad --device or missing data: one line, before the output folder is made
    out = Path(settings.out)
    check_resume(out, args.resume)  # an --out that holds an experiment needs --resume, and --resume needs one
    existed = out.exists()
    threads = getattr(args, "threads", None)
    from .progress import Progress

    quiet = getattr(settings, "no_progress", False)
    try:  # the experiment's own Progress: whatever step runs inside, a line at least every HEARTBEAT_S seconds
        with RunLock(settings.out), _threads(threads), Progress(f"experiment {args.experiment}", enabled=not quiet):
            path = module.run(settings)
    except AelabError:
        if not existed:
            _remove_if_untouched(out)
        raise
    except (KeyboardInterrupt, SystemExit):
        if _stopping is None:  # not a signal (a user module's SystemExit): as before
            raise
        close_all_bars()
        if not existed:
            _remove_if_untouched(out)
        print(experiment_stopped_line(args.experiment, out), file=sys.stderr)
        return 128 + signal.Signals[_stopping]
    print(f"report: {path}")
    return 0


def experiment_stopped_line(name: str, out: Path) -> str:
    """What a stopped experiment says: what is kept, and the command that continues it (this command line with
    --resume: an experiment's settings are all on its command line)."""
    import shlex

    if not out.exists():
        return f"aelab: experiment {name} stopped ({_stopping}) before it wrote anything; run the same command again"
    words = [w for w in _argv if w != "--resume"]
    command = shlex.join(["aelab", *words, "--resume"])
    saved = [p for p in (out / "results.json", *sorted(out.glob("seed-*/results.json"))) if p.exists()]
    where = str(saved[0]) if len(saved) == 1 else f"{out}/seed-*/results.json" if saved else ""
    kept = (
        f"the finished rows and seeds are in {where} (marked partial) and every run keeps its last checkpoint"
        if saved
        else f"every run in {out} keeps its last checkpoint; no row had finished"
    )
    return f"aelab: experiment {name} stopped ({_stopping}); {kept}. Continue with: {command}"


def build_parser(experiment: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; `experiment` names the one experiment whose settings become flags."""
    from .experiments import EXPERIMENTS
    from .version import __version__

    parser = _Parser(prog="aelab", description="Train, evaluate and compare the classic autoencoder family.")
    parser.add_argument("--version", action="version", version=f"aelab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "train",
        help="train a model into a run folder",
        description="Train a model into a run folder (config.json, metrics.jsonl, model.safetensors, checkpoint). "
        "Plain train does not evaluate: aelab evaluate RUN writes eval.json, report.html/md and figures/. "
        "With --seeds N every seed is trained and then evaluated (eval.json and report.html/md without figures: "
        "the group's summary needs each seed's metrics; aelab evaluate OUT/seed-S draws a seed's figures).",
    )
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="write eval.json, figures and report.html for a run folder")
    add_evaluate_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "compare",
        help="compare runs and seed groups: comparison.csv, .json, .md and .html with curves and reconstructions",
    )
    add_compare_arguments(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("models", help="list the model names")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="list or download datasets")
    add_data_arguments(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("experiment", help="run a paper's experiment end to end")
    exp = p.add_subparsers(dest="experiment", required=True, parser_class=_Parser)
    for name, (module_name, text) in EXPERIMENTS.items():
        q = exp.add_parser(name, help=text)
        q.set_defaults(func=cmd_experiment, experiment_module=module_name)
        if name == experiment:  # only the chosen experiment's module is imported (it imports torch)
            module = importlib.import_module(f".experiments.{module_name}", __package__)
            options.add_arguments(q, module.Settings)
            add_experiment_run_arguments(q, module.Settings)
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _chosen_experiment(argv: list[str]) -> str | None:
    from .experiments import EXPERIMENTS

    words = [a for a in argv if not a.startswith("-")]
    if len(words) >= 2 and words[0] == "experiment" and words[1] in EXPERIMENTS:
        return words[1]
    return None


_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """aelab's own warnings as one line, "aelab: warning: ..."; other libraries' never reach the screen (what matters
    of them, e.g. a probe that did not converge, aelab says in a line of its own), except with AELAB_DEBUG=1."""
    if str(Path(filename).resolve()).startswith(_PACKAGE_DIR):
        print(f"aelab: warning: {_one_line(message)}", file=sys.stderr if file is None else file)
    elif os.environ.get("AELAB_DEBUG"):
        _default_showwarning(message, category, filename, lineno, file, line)


@contextlib.contextmanager
def _slow_start(after: float = 2.0, stream=None):
    """On a terminal, one notice if the body (importing torch: 10 s and more on a busy machine) is still running
    after `after` seconds, so that a command never sits silent while it starts; erased when the body ends, so that
    what follows (a bad input's one line) stands alone. Nothing when it is quick, nothing in a log or a pipe."""
    stream = stream or sys.stderr
    shown = threading.Event()

    def notice() -> None:
        stream.write("aelab: starting (importing torch; slow on a busy machine) ...")
        stream.flush()
        shown.set()

    timer = threading.Timer(after, notice)
    timer.daemon = True
    if stream.isatty():
        timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if timer.is_alive():  # a notice being written: let it finish before it is erased
            timer.join()
        if shown.is_set():
            stream.write("\r\033[K")  # the notice erased: the line is free for what comes next
            stream.flush()


def main(argv: list[str] | None = None) -> int:
    # Before torch starts OpenMP: idle OpenMP threads then sleep instead of spinning. On a busy (shared) machine
    # spinning threads of several processes starve each other (measured: a CAE step 1344 ms spinning vs 74 ms).
    # Set here, when the command runs, not on import: importing aelab changes no global state.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else list(argv)
    for a in argv:  # argparse drops a "--" value (--epochs=--) and silently keeps the default
        if a.startswith("--") and a.endswith("=--"):
            print(f"aelab: error: argument {a.split('=')[0]}: expected a value, got '--'", file=sys.stderr)
            return 2
    try:  # the experiments' modules import torch: on a busy machine a Ctrl-C can come while they load
        with _slow_start():
            parser = build_parser(_chosen_experiment(argv))
    except KeyboardInterrupt:
        print("aelab: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    try:
        args = _parse(parser, argv)
    except SystemExit as e:  # argparse's own errors (exit 2) and --help/--version (exit 0)
        return int(e.code or 0)
    global _argv
    _argv = argv
    previous_handlers = _catch_stop_signals()
    try:
        return _run_command(args)
    except AelabError as e:
        close_all_bars()  # the error's line on a line of its own
        print(f"aelab: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"aelab: training stopped: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        close_all_bars()
        print("aelab: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if _stopping == "SIGTERM" and e.code == 128 + signal.SIGTERM:  # kill, a scheduler's timeout
            close_all_bars()
            print("aelab: stopped (SIGTERM)", file=sys.stderr)
        raise
    except BrokenPipeError:  # `aelab models | head`: the reader left; nothing more can be written there
        _silence_stdout()
        print("aelab: error: the output was closed before everything was written (broken pipe)", file=sys.stderr)
        return 2
    except Exception as e:  # a bug, not bad input: one line and exit 1 (AELAB_DEBUG=1 shows the traceback)
        return _unexpected_error(e)
    finally:
        _leave_process_group()
        _restore_signals(previous_handlers)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The parsed command line; an unknown flag is one line, with the flag the user probably meant."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}{_did_you_mean(parser, args, extras)}")
    return args


def _run_command(args) -> int:
    """The command, with aelab's warnings as one line each (others' hidden) and its output flushed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.showwarning = _show_warning
        if args.func in (cmd_train, cmd_evaluate, cmd_compare):
            with _slow_start():
                import torch  # noqa: F401, PLC0415 (the command's first import, seconds on a busy machine)
        status = args.func(args)
        sys.stdout.flush()  # a write error of buffered output (a full disk, a closed pipe) is reported here
        return status


def _unexpected_error(e: Exception) -> int:
    """The exit status of an exception no one expected: a bug (one line, exit 1; AELAB_DEBUG=1 re-raises it for the
    traceback), except a file name too long or a full disk, which are bad input (exit 2). Called while handling it."""
    close_all_bars()
    if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:  # a name no file system takes: bad input
        name = str(e.filename or "")
        print(f"aelab: error: file name too long: {name[:60]}{'...' if len(name) > 60 else ''}", file=sys.stderr)
        return 2
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk is not a bug
        _silence_stdout()
        where = e.filename or "the output"
        print(f"aelab: error: cannot write {where}: {os.strerror(e.errno).lower()}", file=sys.stderr)
        return 2
    if os.environ.get("AELAB_DEBUG"):
        raise  # the exception being handled, with its traceback
    print(
        f"aelab: internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]} "
        "(run with AELAB_DEBUG=1 for the traceback)",
        file=sys.stderr,
    )
    return 1


_argv: list[str] = []  # the command line main() parsed: what a stopped run's resume command falls back to
_stopping: str | None = None  # the signal that is stopping this command (SIGTERM, SIGINT), None until one came


def _catch_stop_signals() -> tuple:
    """SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C: the finally blocks remove partial downloads
    and temp files and release the run folder's lock. Returns the handlers it replaced ((None, None) off the main
    thread, where no handler can be set)."""
    global _stopping
    if threading.current_thread() is not threading.main_thread():
        return None, None
    _stopping = None
    return signal.signal(signal.SIGTERM, _stop_signal), signal.signal(signal.SIGINT, _stop_signal)


def _restore_signals(previous_handlers: tuple) -> None:
    previous_sigterm, previous_sigint = previous_handlers
    if previous_sigterm is not None:  # main() called from Python (tests): the caller's handlers again
        signal.signal(signal.SIGTERM, previous_sigterm)
        signal.signal(signal.SIGINT, previous_sigint)


def _stop_signal(signum, frame):
    """SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C: SystemExit(143), KeyboardInterrupt. Once one has
    come, the next ones are noted and ignored, so that they cannot cut short the checkpoint and the line that the
    first one is writing (kill -9 still stops at once; every file is written atomically)."""
    global _stopping
    if _stopping is not None:
        os.write(2, b"aelab: already stopping: writing the last finished epoch (kill -9 stops at once)\n")
        return
    _stopping = signal.Signals(signum).name
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _did_you_mean(parser: argparse.ArgumentParser, args, extras: list[str]) -> str:
    """'; did you mean --model?' for the first unknown flag close to one of the chosen command's flags (difflib),
    '' when none is."""
    import difflib

    chosen = parser
    while True:  # the (sub)parser of the command given: aelab train, aelab experiment demo, ...
        sub = next((a for a in chosen._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, sub.dest, None) if sub is not None else None
        if name not in (sub.choices if sub is not None else {}):
            break
        chosen = sub.choices[name]
    known = [o for a in chosen._actions for o in a.option_strings if o.startswith("--")]
    for word in extras:
        if word.startswith("-"):
            close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.6)
            if close:
                return f"; did you mean {close[0]}?"
    return ""


def stopped_line(error: BaseException, args, seeds: int | None = None) -> str:
    """What a train stopped by SIGTERM or Ctrl-C says: where it stopped, which checkpoint is kept, and the command
    that continues it (the flags config.json does not record, and --seeds N for a seed group)."""
    import shlex

    from . import runs

    out = Path(args.out)
    info = getattr(error, "aelab_stop", None) or {}
    run = Path(info.get("out", out))
    how = f" ({_stopping})" if _stopping else ""
    if info:
        where = f"stopped at epoch {info['epoch']} of {info['epochs']}{how}"
        kept = info.get("checkpoint")
    else:
        where = f"stopped{how} outside the epochs (loading data, pretraining or evaluating)"
        history = runs.read_history(run) if (run / "checkpoint.safetensors").exists() else []
        kept = max((h["epoch"] for h in history), default=0) if history else None
    if seeds and run != out:
        where += f" in {run.name}"
    saved = (out / "config.json").exists() if not seeds else any(out.glob("seed-*/config.json"))
    checkpoint = (
        f"checkpoint of epoch {kept} kept in {run}"
        if kept is not None
        else "the finished seeds are kept, the others continue from their checkpoints"
        if seeds and not info and saved
        else "no seed had started, nothing was kept: the resume starts from the beginning"
        if seeds and not info
        else "no checkpoint yet (no epoch had finished): the resume starts it from the beginning"
    )
    if saved:  # the settings come from config.json; what it does not record is given again
        words = ["aelab", "train", "--out", str(out), *(["--seeds", str(seeds)] if seeds else []), "--resume"]
        given = vars(args)
        for key in ("data_dir", "device", "encoder", "decoder", "mlflow"):
            if isinstance(given.get(key), str):
                from .tracking import redact_uri

                value = redact_uri(given[key]) if key == "mlflow" else given[key]
                words += [f"--{key.replace('_', '-')}", value]
        words += [f"--{k.replace('_', '-')}" for k in ("trust_code", "no_progress", "quiet") if given.get(k) is True]
    else:  # stopped before config.json: the same command again
        words = ["aelab", *_argv, *([] if "--resume" in _argv else ["--resume"])]
    return f"aelab: {where}; {checkpoint}; resume with: {shlex.join(words)}"


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of an unwritable stdout fails silently."""
    try:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (open until the process exits)
    except OSError:
        pass


def _leave_process_group() -> None:
    """Under torchrun, leave the process group before the interpreter exits: a gloo group left to the exit can
    abort (SIGABRT) once its peer is gone, turning a finished or cleanly refused run into a crash."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
