"""The rows of the hinton2006 experiment: their labels, the plan (the steps in the order they run, the budgets), the
data, and the state that lets an interrupted experiment go on from its first unfinished step. Each step's work is
in hinton2006_steps.

Every step records the seconds it spent training (RBM pretraining, fine-tuning runs, logistic PCA's fit) and
evaluating (everything else: validation scores, PCA, probes, `evaluate` of the chosen runs, per-image codes), so that
results.json shows what the evaluation cost against the training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import data as datamod
from .. import runs
from ..data.sources import capped_val_fraction
from ..errors import ConfigError
from .common import OFFICIAL_TEST, official_test_status, train_split_size

RAW = "raw pixels"
RANDOM = "deep AE, random init"
FINE_TUNERS = {"cg": "deep AE, RBM-pretrained, CG", "adam": "deep AE, RBM-pretrained, Adam"}
PRETRAIN = "RBM pretraining"
PER_IMAGE = ", per-image codes"
TEST = "test split"
OFFICIAL = "official MNIST test set (10k)"
QUICK = {"train_limit": 1000, "epochs": 5, "cg_epochs": 1, "pretrain_epochs": 2, "lpca_iter": 30, "tsne": 300}
FULL = {"epochs": 80, "pretrain_epochs": 50, "lpca_iter": 300, "tsne": 1000}
WEIGHT_DECAY_GRID = ((1e-4, 1e-3), (0.0,))  # fine-tuning weight costs (full, --quick), chosen per row on validation
NOT_COMPARED = ("out", "no_progress", "jobs", "seeds", "figures")  # what may differ between a run and its resume


def pca_label(code: int) -> str:
    return f"PCA ({code}-D)"


def lpca_encoder_label(code: int) -> str:
    return f"logistic PCA, linear encoder ({code}-D)"


def lpca_per_image_label(code: int) -> str:
    return f"logistic PCA, per-image codes ({code}-D)"


@dataclasses.dataclass
class Plan:
    """What these settings run: the budgets (--quick's cuts applied), the runs' common config, the steps."""

    settings: Any
    layers_option: Any
    sizes: list[int]

    def __post_init__(self):
        s, quick = self.settings, self.settings.quick
        self.out = Path(s.out)
        self.code = self.sizes[-1]
        self.train_limit = min(s.train_limit or QUICK["train_limit"], QUICK["train_limit"]) if quick else s.train_limit
        self.epochs = s.epochs or (QUICK["epochs"] if quick else FULL["epochs"])
        self.cg_epochs = s.cg_epochs or (QUICK["cg_epochs"] if quick else self.epochs)
        self.pretrain_epochs = s.pretrain_epochs or (QUICK["pretrain_epochs"] if quick else FULL["pretrain_epochs"])
        self.lpca_iter = s.logistic_pca_iter or (QUICK["lpca_iter"] if quick else FULL["lpca_iter"])
        self.tsne_points = QUICK["tsne"] if quick else FULL["tsne"]
        self.grid = list(s.weight_decay or WEIGHT_DECAY_GRID[1 if quick else 0])
        self.progress = not s.no_progress
        n_train = train_split_size(s.dataset, s.data_dir, self.train_limit)
        self.common = dict(
            model="deep-ae",
            dataset=s.dataset,
            data_dir=s.data_dir,
            train_limit=self.train_limit,
            seed=s.seed,
            val_fraction=capped_val_fraction(n_train, s.val_fraction),
            device=s.device,
            amp=s.amp,
        )
        self.model_options = {"layers": self.layers_option, "loss": "bce", "pretrain_epochs": self.pretrain_epochs}

    def variants(self) -> list[tuple[str, str, str, Any, str]]:
        """(row label, init, optimizer, layers, run folder prefix) of every trained row."""
        linear = [self.sizes[0], self.code]  # 784-30: z = x W + c, x_hat = sigmoid(z V^T + b): logistic PCA
        rows = [(lpca_encoder_label(self.code), "random", "adam", linear, "logistic-pca-encoder-adam")]
        rows.append((RANDOM, "random", "adam", self.layers_option, "deep-ae-random-adam"))
        rows += [(FINE_TUNERS[f], "rbm", f, self.layers_option, f"deep-ae-rbm-{f}") for f in self.settings.fine_tuners]
        return rows

    def steps(self) -> list[str]:
        """Every step in the order it runs: the table's rows, the RBM pretraining before the first pretrained row."""
        trained = [v[0] for v in self.variants()]
        pretrained = [FINE_TUNERS[f] for f in self.settings.fine_tuners]
        first = [RAW, pca_label(self.code), trained[0], lpca_per_image_label(self.code), RANDOM]
        return first + ([PRETRAIN] if pretrained else []) + pretrained + [label + PER_IMAGE for label in pretrained]

    def row_order(self) -> list[str]:
        return [step for step in self.steps() if step != PRETRAIN]

    def compared_settings(self) -> dict:
        values = {k: v for k, v in dataclasses.asdict(self.settings).items() if k not in NOT_COMPARED}
        return json.loads(json.dumps(values))


@dataclasses.dataclass
class Data:
    train_x: torch.Tensor  # the run's train split (validation included), as the runs and evaluate read it
    train_y: torch.Tensor
    test_sets: dict  # table -> (images, labels)
    validation: Any  # (kept, held) indices into the train split, or None
    official_note: str

    @classmethod
    def load(cls, plan: Plan) -> Data:
        s = plan.settings
        config = {"dataset": s.dataset, "dataset_options": {}, "train_limit": plan.train_limit}
        train_x, train_y, test_x, test_y = runs.run_data(config, s.data_dir)
        official, note = official_test_status(s.data_dir, tuple(train_x.shape[1:]), s.dataset)
        test_sets = {TEST: (test_x, test_y)}
        if official:
            x_off, y_off, _ = datamod.load_test_split(OFFICIAL_TEST, s.data_dir)
            test_sets[OFFICIAL] = (x_off, y_off)
        validation = runs.validation_indices({"val_fraction": plan.common["val_fraction"]}, train_y.numpy())
        return cls(train_x, train_y, test_sets, validation, note)

    @property
    def x_tr(self) -> np.ndarray:
        return self.train_x.flatten(1).numpy()


class State:
    """The finished steps and what they gave; read back from a partial results.json by --resume."""

    def __init__(self, plan: Plan):
        self.plan, self.done = plan, []
        self.cells: dict[str, dict[str, dict]] = {}  # row label -> table -> row
        self.sweeps, self.runs, self.per_image, self.times = {}, {}, {}, {}
        self._data: Data | None = None

    @classmethod
    def load(cls, plan: Plan) -> State:
        state, path = cls(plan), plan.out / "results.json"
        if not path.is_file():
            return state
        saved = runs.read_json(path)
        if not isinstance(saved, dict) or saved.get("row_settings") != plan.compared_settings():
            raise ConfigError(f"{plan.out} holds a hinton2006 run with other settings; choose another --out")
        steps = plan.steps()
        state.done = [s for s in (saved.get("rows_done") or steps) if s in steps]
        for table, rows in (saved.get("tables") or {}).items():
            for row in rows:
                state.cells.setdefault(row["method"], {})[table] = row
        for key in ("sweeps", "runs", "per_image"):
            setattr(state, key, dict(saved.get(key) or {}))
        state.times = dict(saved.get("phase_times_s") or {})
        return state

    @property
    def data(self) -> Data:
        if self._data is None:
            self._data = Data.load(self.plan)
        return self._data

    def tables(self) -> dict[str, list[dict]]:
        """The finished rows of every table, in the table's order."""
        tables: dict[str, list[dict]] = {}
        for label in self.plan.row_order():
            for table, row in self.cells.get(label, {}).items():
                tables.setdefault(table, []).append(row)
        return {t: tables[t] for t in (TEST, OFFICIAL) if t in tables}

    def timing(self) -> dict:
        training = sum(t["training"] for t in self.times.values())
        evaluation = sum(t["evaluation"] for t in self.times.values())
        return {
            "phase_times_s": self.times,
            "wall_time_s_per_row": {step: t["training"] + t["evaluation"] for step, t in self.times.items()},
            "training_time_s": training,
            "evaluation_time_s": evaluation,
            "evaluation_to_training": evaluation / training if training else None,
        }

    def pca_sse(self, table: str) -> float:
        return self.cells[pca_label(self.plan.code)][table]["recon_sse"]


class Clock:
    """Seconds spent training and evaluating in one step."""

    def __init__(self):
        self.spent = {"training": 0.0, "evaluation": 0.0}

    @contextlib.contextmanager
    def __call__(self, what: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.spent[what] += time.perf_counter() - t0


def fit_pca(state: State):
    from sklearn.decomposition import PCA

    return PCA(n_components=state.plan.code, svd_solver="covariance_eigh").fit(state.data.x_tr)


def per_image_file(out: Path, label: str) -> Path:
    slug = "".join(ch if ch.isalnum() else "-" for ch in label.lower())
    return out / f"per-image-codes-{slug}.safetensors"
