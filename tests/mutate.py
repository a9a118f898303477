"""`make mutate [MODULE=name]`: mutation testing with mutmut 3, one configured module at a time, each against its
own test files, so that a module takes minutes, not the hours of the whole suite against every mutant.

    .venv/bin/python tests/mutate.py                      every module of [tool.aelab-mutate.modules]
    .venv/bin/python tests/mutate.py aelab.metrics        the modules named so, or whose names start with "name."
    .venv/bin/python tests/mutate.py --list               the configured modules

For each module (pyproject.toml, [tool.aelab-mutate.modules."NAME"]: `mutate`, the files mutated; `tests`, the
pytest arguments that select its tests; optional `functions`, the only functions mutated, and `lines`, a function
whose mutants are kept only where the mutated line matches a regular expression) the script

1. stages a copy of src/ and tests/ in .mutmut/NAME/ (src/ is never written: other work goes on there), with a
   pyproject.toml whose [tool.mutmut] mutates those files and selects those tests;
2. in the copy only, turns `@torch.no_grad()`-style decorators into plain assignments after the function
   (`f = torch.no_grad()(f)`, the same function): mutmut 3 leaves every decorated function unmutated, and these
   wrap some of the code that matters most (ConjugateGradient.step, the code statistics);
3. runs `mutmut run` there (mutmut copies the stage into .mutmut/NAME/mutants/ and forks one worker per mutant
   from a process that has imported the tests once; each mutant runs only the tests that reach its function);
4. reads mutmut's results and prints, per module: mutants, killed (timeouts count as killed, and a second rate
   counts them as survivors), equivalent (listed in
   tests/mutants-equivalent.toml with a one-line reason, matched by function and the changed line, so that an
   unrelated edit does not unmark them), surviving (each with its diff line), the kill rate over the non-equivalent
   mutants, mutmut's version and the wall time; .mutmut/NAME/summary.json keeps them.

Exit status 1 when a module's kill rate is below `threshold` (0.9), or when a listed equivalent mutant was killed
(the list is stale). Not part of `make test`: a module takes minutes.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

try:
    from tomllib import loads as toml_loads
except ModuleNotFoundError:  # Python 3.10: mutmut 3 depends on the `toml` package there
    from toml import loads as toml_loads

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".mutmut"
EQUIVALENTS = ROOT / "tests" / "mutants-equivalent.toml"
# decorators that wrap a function without changing what it computes (and can be applied after the definition)
UNWRAPPABLE = {"torch.no_grad()", "torch.enable_grad()", "torch.inference_mode()", "contextlib.contextmanager"}
TIMEOUTS = {24, -24, 152, 255, 36}
KILLED = {1, 3, -9, -11} | TIMEOUTS  # failed tests, pytest's internal error, crashes, timeouts
STATUS = {0: "survived", 33: "no tests", 5: "no tests", 34: "skipped", None: "not run"}


def load_config() -> dict:
    return toml_loads((ROOT / "pyproject.toml").read_text())["tool"]["aelab-mutate"]


def unwrap_decorators(source: str) -> str:
    """The same module with every UNWRAPPABLE decorator moved after its function as an assignment: mutmut mutates
    undecorated functions only. Other decorators are left where they are (that function stays unmutated)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits = []  # (first line of the decorators, end line of the function, indent, name, decorator texts)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.decorator_list:
            continue
        texts = [ast.get_source_segment(source, d) for d in node.decorator_list]
        if not all(t in UNWRAPPABLE for t in texts):
            continue
        first = min(d.lineno for d in node.decorator_list) - 1  # decorator lines start one line above the '@'
        indent = " " * node.col_offset
        edits.append((first, node.lineno - 1, node.end_lineno, indent, node.name, texts))
    for first, def_line, end, indent, name, texts in sorted(edits, reverse=True):
        wrapped = name
        for text in reversed(texts):
            wrapped = f"{text}({wrapped})"
        lines.insert(end, f"{indent}{name} = {wrapped}\n")
        del lines[first:def_line]
    return "".join(lines)


def stage(name: str, module: dict) -> Path:
    """A fresh copy of src/ and tests/ in .mutmut/NAME/ with the module's [tool.mutmut]; returns the folder."""
    folder = STAGE / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".hypothesis", ".pytest_cache")
    shutil.copytree(ROOT / "src", folder / "src", ignore=ignore)
    shutil.copytree(ROOT / "tests", folder / "tests", ignore=ignore)
    mutated = sorted({p for pattern in module["mutate"] for p in folder.glob(pattern)})
    if not mutated:
        raise SystemExit(f"{name}: no file matches {module['mutate']}")
    for path in mutated:
        path.write_text(unwrap_decorators(path.read_text()))
    pyproject = (ROOT / "pyproject.toml").read_text()
    settings = {
        "source_paths": ["src"],
        "only_mutate": [str(p.relative_to(folder)) for p in mutated],
        "pytest_add_cli_args_test_selection": module["tests"],
        "pytest_add_cli_args": ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
        "process_isolation": "forkserver",  # torch in the forked workers: fork from a process without pytest state
        "use_git_change_detection": False,
        "timeout_multiplier": 5.0,
        # CPU seconds added to each test's recorded duration before the multiplier: a forked worker collects the
        # selected test files again (torch, sklearn, scipy imports), which the recorded durations leave out; at
        # mutmut's default of 1 s, mutants whose tests take 0.1 s were "killed by a timeout" while their tests passed
        "timeout_constant": 10.0,
    }
    table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    (folder / "pyproject.toml").write_text(f"{pyproject}\n[tool.mutmut]\n{table}\n")
    if (ROOT.parent / "shared").is_dir():  # ../shared beside the mutants' tests too (conftest.SHARED_IDX)
        (folder / "shared").symlink_to(ROOT.parent / "shared")
    return folder


def _mutmut(folder: Path, names: list[str], max_children: int) -> None:
    cmd = [str(Path(sys.executable).parent / "mutmut"), "run", "--max-children", str(max_children), *names]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    with open(folder / "mutmut.log", "w") as log:
        done = subprocess.run(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = (folder / "mutmut.log").read_text()[-3000:]
        raise SystemExit(f"mutmut run failed in {folder} (exit {done.returncode}):\n{tail}")


def mutant_diffs(folder: Path) -> dict[str, tuple[str, str, str]]:
    """{mutant name: (function, original line(s), mutated line(s))} from mutmut's mutated files and their spans."""
    out = {}
    for spans_file in (folder / "mutants").rglob("*.py.spans"):
        source = spans_file.with_suffix("").read_text().splitlines()
        spans = json.loads(spans_file.read_text())["spans"]
        module = ".".join(spans_file.relative_to(folder / "mutants" / "src").with_suffix("").with_suffix("").parts)
        for key, (start, end) in spans.items():
            if key.endswith("__mutmut_orig"):
                continue
            base = key.rsplit("__mutmut_", 1)[0]
            orig_start, orig_end = spans[f"{base}__mutmut_orig"]
            short = key.rsplit(".", 1)[-1]
            orig = source[orig_start - 1 : orig_end]
            mutant = [line.replace(short, f"{base}__mutmut_orig") for line in source[start - 1 : end]]
            removed, added = [], []
            for line in difflib.ndiff(orig, mutant):
                if line.startswith("- "):
                    removed.append(line[2:].strip())
                elif line.startswith("+ "):
                    added.append(line[2:].strip())
            function = base.split("ǁ")[-1] if "ǁ" in base else base[2:]
            out[f"{module}.{key}"] = (function, " ".join(removed), " ".join(added))
    return out


def results(folder: Path) -> dict[str, int | None]:
    codes = {}
    for meta in (folder / "mutants").rglob("*.py.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def selected(names: list[str], diffs: dict, module: dict) -> list[str]:
    """The mutants of the module's `functions` (all when none given) and of its `lines` functions on matching lines."""
    functions, lines = module.get("functions"), module.get("lines", {})
    keep = []
    for name in names:
        function, removed, added = diffs[name]
        if function in lines:
            if re.search(lines[function], removed) or re.search(lines[function], added):
                keep.append(name)
        elif functions is None or function in functions:
            keep.append(name)
    return keep


def rerun_survivors(name: str, module: dict, folder: Path, max_children: int) -> None:
    """The last run's surviving mutants again, against the tests as they are now (copied into the stage, with the
    module's test selection as pyproject.toml gives it now; the mutated source is the stage's, so a source edit
    since then needs a full run)."""
    survivors = [s["mutant"] for s in json.loads((folder / "summary.json").read_text())["survived"]]
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache")
    for target in (folder / "tests", folder / "mutants" / "tests"):
        shutil.rmtree(target)
        shutil.copytree(ROOT / "tests", target, ignore=ignore)
    for config in (folder / "pyproject.toml", folder / "mutants" / "pyproject.toml"):  # the module's tests as now
        if config.exists():
            text = re.sub(
                r"(?m)^pytest_add_cli_args_test_selection = .*$",
                lambda _: f"pytest_add_cli_args_test_selection = {json.dumps(module['tests'])}",
                config.read_text(),
            )
            config.write_text(text)
    if survivors:
        _mutmut(folder, survivors, max_children)


def run_module(name: str, module: dict, max_children: int, equivalents: list[dict], mode: str = "full") -> dict:
    started = time.perf_counter()
    folder = STAGE / name
    if mode in ("report", "survivors"):  # the last run's results again, or its survivors run again
        if not (folder / "mutants").is_dir():
            raise SystemExit(f"{name}: no earlier run in {folder}")
        before = json.loads((folder / "summary.json").read_text())["wall_s"]
        if mode == "survivors":
            rerun_survivors(name, module, folder, max_children)
        return summarise(name, module, folder, equivalents, before + time.perf_counter() - started)
    folder = stage(name, module)
    patterns = []  # mutmut's own filter: mutant names by function (none: every mutant of the files)
    for function in module.get("functions", []):
        patterns += [f"*.x_{function}__mutmut_*", f"*ǁ{function}__mutmut_*"]
    if module.get("lines") and not patterns:
        raise SystemExit(f"{name}: `lines` needs `functions` too (the first run generates the mutants)")
    _mutmut(folder, patterns, max_children)
    diffs = mutant_diffs(folder)
    chosen = selected(sorted(diffs), diffs, module)
    on_lines = [m for m in chosen if diffs[m][0] in module.get("lines", {})]
    if on_lines:  # a second run, of the mutants on the matching lines only (the stats of the first are reused)
        _mutmut(folder, on_lines, max_children)
    return summarise(name, module, folder, equivalents, time.perf_counter() - started)


def summarise(name: str, module: dict, folder: Path, equivalents: list[dict], wall: float) -> dict:
    diffs = mutant_diffs(folder)
    chosen = selected(sorted(diffs), diffs, module)
    codes = results(folder)
    report = {"module": name, "mutmut": importlib.metadata.version("mutmut"), "wall_s": round(wall, 1),
              "tests": module["tests"], "mutated": module["mutate"], "killed": [], "equivalent": [],
              "survived": [], "stale_equivalents": []}  # fmt: skip
    for mutant in chosen:
        function, removed, added = diffs[mutant]
        code = codes.get(mutant.replace(".__init__.", "."), codes.get(mutant))
        entry = {"mutant": mutant, "function": function, "from": removed, "to": added}
        listed = next(
            (e for e in equivalents if (e["function"], e["from"], e["to"]) == (function, removed, added)), None
        )
        if code in KILLED:
            report["killed"].append(entry)
            if listed:
                report["stale_equivalents"].append(entry)
        elif listed:
            report["equivalent"].append({**entry, "why": listed["why"]})
        else:
            report["survived"].append({**entry, "status": STATUS.get(code, f"exit {code}")})
    n = len(chosen)
    report["timeouts"] = sum(codes.get(e["mutant"]) in TIMEOUTS for e in report["killed"])
    considered = n - len(report["equivalent"])
    report["generated"] = n
    report["kill_rate"] = len(report["killed"]) / considered if considered else 1.0
    # a timeout is not always a failing test (a mutant that only slows the tests down, or a loaded machine):
    # the rate with timeouts counted as survivors bounds the true rate from below
    report["kill_rate_without_timeouts"] = (
        (len(report["killed"]) - report["timeouts"]) / considered if considered else 1.0
    )
    (folder / "summary.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return report


def print_report(r: dict, threshold: float) -> None:
    print(f"\n== {r['module']}: {r['generated']} mutants, {len(r['killed'])} killed, {len(r['equivalent'])} equivalent, "
          f"{len(r['survived'])} surviving ({r['timeouts']} of the killed by a timeout); kill rate {100 * r['kill_rate']:.1f}% of the non-equivalent "
          f"({100 * r['kill_rate_without_timeouts']:.1f}% counting timeouts as survivors; mutmut {r['mutmut']}, {r['wall_s']:.0f} s)")  # fmt: skip
    for s in r["survived"]:
        print(f"  survived ({s['status']}) {s['mutant']}: {s['from']!r} -> {s['to']!r}")
    for s in r["stale_equivalents"]:
        print(f"  KILLED but listed as equivalent (remove it from {EQUIVALENTS.name}): {s['function']}: {s['from']!r}")
    if r["kill_rate"] < threshold:
        print(f"  below the threshold of {100 * threshold:.0f}%")


def main(argv: list[str] | None = None) -> int:
    config = load_config()
    modules = config["modules"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module names (or prefixes) of [tool.aelab-mutate.modules]")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--report", action="store_true", help="summarise the last run again, without running")
    parser.add_argument("--survivors", action="store_true", help="run the last run's survivors again (new tests)")
    args = parser.parse_args(argv)
    if args.list:
        for name, module in modules.items():
            print(f"{name}: {', '.join(module['mutate'])}  <-  {' '.join(module['tests'])}")
        return 0
    wanted = [m for m in modules if not args.modules or any(m == a or m.startswith(a + ".") for a in args.modules)]
    unknown = [a for a in args.modules if not any(m == a or m.startswith(a + ".") for m in modules)]
    if unknown:
        print(f"unknown module {unknown[0]!r}; configured: {', '.join(modules)}", file=sys.stderr)
        return 2
    equivalents = toml_loads(EQUIVALENTS.read_text()) if EQUIVALENTS.exists() else {}
    threshold, failed = float(config.get("threshold", 0.9)), False
    for name in wanted:
        mode = "report" if args.report else "survivors" if args.survivors else "full"
        report = run_module(name, modules[name], args.max_children, equivalents.get(name, []), mode)
        print_report(report, threshold)
        failed |= report["kill_rate"] < threshold or bool(report["stale_equivalents"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
