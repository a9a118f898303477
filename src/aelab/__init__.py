"""aelab: the classic autoencoder family in PyTorch, trained, evaluated and compared correctly.

Where things live (data flows down this list):
    data/         datasets as in-memory tensors, the IDX reader, verified downloads, ColoredMNIST
    models/       pure nn.Modules and their maths, one file per idea, behind the interface in models/base.py
    runs/         the run folder: config, history, model and checkpoint files, atomic writes, RunWriter
    train/        the one trainer (Adam, L-BFGS or CG, resume, DDP), in small rooms
    metrics/      measuring: reconstruction, probes, contraction, retrieval, ranking
    evaluate.py   a run folder -> eval.json (calls metrics/; evaluate_figures.py draws its figures)
    compare.py    several run folders -> comparison.csv / .md / .html (compare_runs.py, compare_seeds.py)
    report.py     figures and the HTML/Markdown reports
    experiments/  one short recipe per paper, each with a Settings dataclass
    options.py    typed option values shared by the CLI and the experiments
    cli.py        parses arguments and dispatches, nothing else (cli_arguments.py, cli_commands.py)
"""

from .version import __version__

__all__ = ["__version__", "load_model"]


def __getattr__(name: str):
    # lazy: `import aelab` (and `aelab --help`) must not pay for importing torch
    if name == "load_model":
        from .runs import load_model

        return load_model
    raise AttributeError(f"module 'aelab' has no attribute {name!r}")
