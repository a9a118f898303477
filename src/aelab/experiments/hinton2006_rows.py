"""The rows of the hinton2006 experiment, one step each, in the order they run (hinton2006.run_one drives them), and
the state that lets an interrupted experiment go on from its first unfinished step.

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
from ..evaluate import evaluate, raw_probe
from ..metrics.codes import encode_all, validated_probe
from ..metrics.per_image import per_image_codes
from ..metrics.reconstruction import sse_per_image
from ..models.logistic_pca import LogisticPCA
from ..train import TrainConfig, pretrain
from .common import OFFICIAL_TEST, kept_epoch, official_test_status, train_or_resume, train_split_size

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


def run_step(step: str, state: State, bar) -> str:
    """Compute one step into `state`; returns the line that says what it gave."""
    plan, clock = state.plan, Clock()
    code = plan.code
    trained = {v[0]: v for v in plan.variants()}
    if step == PRETRAIN:
        bar.phase(f"{PRETRAIN} ({plan.pretrain_epochs} CD-1 epochs per layer)")
        with clock("training"):
            folder = pretrain(_stack_config(plan), progress=plan.progress)
        text = f"{PRETRAIN}: {runs.read_json(folder / 'pretrain.json')['time_s']:.0f} s"
    elif step in trained:
        text = _trained_row(*trained[step], state, bar, clock)
    elif step == RAW:
        bar.phase("raw pixels: the linear probe (cached per data)")
        with clock("evaluation"):
            text = _raw_row(state)
    elif step == pca_label(code):
        bar.phase(f"PCA ({code} components) and its probe")
        with clock("evaluation"):
            text = _pca_row(state)
    elif step == lpca_per_image_label(code):
        text = _lpca_per_image_row(state, bar, clock)
    else:
        with clock("evaluation"):
            text = _deep_per_image_row(step[: -len(PER_IMAGE)], state, bar)
    state.times[step] = clock.spent
    return text


def _stack_config(plan: Plan) -> TrainConfig:
    return TrainConfig(
        **plan.common, model_options={**plan.model_options, "init": "rbm"}, out=str(plan.out / "rbm-stack")
    )


def _row(label: str, sse: float | None, probe: float | None, state: State, table: str, **extra) -> dict:
    ratio = None if sse is None else sse / state.pca_sse(table)
    return {"method": label, "code size": state.plan.code, "recon_sse": sse, "ratio to PCA": ratio,
            "probe accuracy": probe, **extra}  # fmt: skip


def _raw_row(state: State) -> str:
    d = state.data
    cells = {}
    for table, (x, y) in d.test_sets.items():
        probe = raw_probe(None, d.train_x.numpy(), d.train_y.numpy(), x.numpy(), y.numpy(), d.validation)
        cells[table] = {"method": RAW, "code size": int(np.prod(x.shape[1:])), "probe accuracy": probe["accuracy"]}
    state.cells[RAW] = cells
    return f"{RAW}: probe accuracy {cells[TEST]['probe accuracy']:.4f}"


def fit_pca(state: State):
    from sklearn.decomposition import PCA

    return PCA(n_components=state.plan.code, svd_solver="covariance_eigh").fit(state.data.x_tr)


def _pca_row(state: State) -> str:
    d, label = state.data, pca_label(state.plan.code)
    pca = fit_pca(state)
    cells = {}
    for table, (x, y) in d.test_sets.items():
        xe = x.flatten(1).numpy()
        codes = pca.transform(xe)
        sse = float(sse_per_image(xe, pca.inverse_transform(codes)).mean())
        probe = validated_probe(pca.transform(d.x_tr), d.train_y.numpy(), codes, y.numpy(), d.validation)
        cells[table] = {"method": label, "code size": state.plan.code, "recon_sse": sse, "ratio to PCA": 1.0,
                        "probe accuracy": probe["accuracy"]}  # fmt: skip
    state.cells[label] = cells
    return f"{label}: recon_sse {cells[TEST]['recon_sse']:.3f}"


def validation_sse(run_dir: Path, data: Data) -> float:
    """recon_sse of a run's kept weights on its own validation split; the test split is not read."""
    from ..metrics.codes import reconstruct_all

    held = torch.from_numpy(data.validation[1]) if data.validation else torch.arange(0)
    val_x = data.train_x[held]
    model = runs.load_model(run_dir)
    return float(sse_per_image(val_x.numpy(), reconstruct_all(model, val_x).numpy()).mean())


def current_eval(run_dir: Path, plan: Plan, test_dataset: str | None = None) -> dict:
    """The run's eval.json (eval-test-NAME.json) when it scored the weights the run holds now, else a fresh one."""
    path = run_dir / ("eval.json" if test_dataset is None else f"eval-test-{test_dataset}.json")
    if path.is_file():
        saved = runs.read_json(path)
        if (
            isinstance(saved, dict)
            and "stale" not in saved
            and isinstance(saved.get("metrics"), dict)
            and saved.get("scored") == runs.weights_record(run_dir)
        ):
            return saved
    extra = {} if test_dataset is None else {"test_dataset": test_dataset}
    return evaluate(run_dir, figures=False, data_dir=plan.settings.data_dir, progress=plan.progress, **extra)


def _trained_row(label, init, optimizer, layers, prefix, state: State, bar, clock: Clock) -> str:
    """Train the row's runs (one per weight cost), choose on validation, evaluate the chosen one."""
    plan, s = state.plan, state.plan.settings
    scores, folders = [], []
    for wd in plan.grid:
        cfg = TrainConfig(
            **plan.common,
            model_options={**plan.model_options, "layers": layers, "init": init, "weight_decay": wd},
            epochs=plan.cg_epochs if optimizer == "cg" else plan.epochs,
            batch_size=s.cg_batch_size if optimizer == "cg" else (s.batch_size or 100),
            lr=1e-3,
            optimizer=optimizer,
            early_stopping=s.patience,
            init_weights=str(plan.out / "rbm-stack" / "model.safetensors") if init == "rbm" else None,
            out=str(plan.out / f"{prefix}-wd{wd:g}"),
        )
        bar.phase(f"{label}: training, weight cost {wd:g} ({len(folders) + 1}/{len(plan.grid)})")
        with clock("training"), _quiet_heartbeat(bar):
            folders.append(train_or_resume(cfg, progress=plan.progress))
        with clock("evaluation"):
            scores.append(validation_sse(folders[-1], state.data))
        bar.write(f"{label}, weight cost {wd:g}: validation recon_sse {scores[-1]:.3f}")
    best = min(range(len(plan.grid)), key=lambda i: (scores[i], i))
    state.sweeps[label] = {
        "option": "weight_decay",
        "grid": plan.grid,
        "scores": scores,
        "chosen_index": best,
        "ylabel": "validation recon_sse",
        "runs": [str(f.relative_to(plan.out)) for f in folders],
        "best_epochs": [kept_epoch(f) for f in folders],
    }
    chosen = folders[best]
    state.runs[label] = str(chosen.relative_to(plan.out))
    bar.phase(f"{label}: evaluation of the chosen run (codes, PCA, probes)")
    cells = {}
    with clock("evaluation"), _quiet_heartbeat(bar):
        for table in state.data.test_sets:
            m = current_eval(chosen, plan, None if table == TEST else OFFICIAL_TEST)["metrics"]
            cells[table] = _row(label, m["recon_sse"], m.get("probe_accuracy"), state, table,
                                **{"weight cost (chosen)": plan.grid[best], "epoch kept": kept_epoch(chosen)})  # fmt: skip
    state.cells[label] = cells
    return f"{label}: recon_sse {cells[TEST]['recon_sse']:.3f} (weight cost {plan.grid[best]:g})"


@contextlib.contextmanager
def _quiet_heartbeat(bar, seconds: float = 120.0):
    """While a trainer or evaluate reports its own progress, the experiment's heartbeat waits longer."""
    before = bar.heartbeat
    bar.heartbeat = max(before, seconds)
    try:
        yield
    finally:
        bar.heartbeat = before
        bar.touch()


def _lpca_per_image_row(state: State, bar, clock: Clock) -> str:
    """Logistic PCA fitted on the train split (codes, V and b jointly by L-BFGS: this row's training); each test
    image's code solved by L-BFGS with V and b fixed. Its probe uses the fitted train codes."""
    plan, d, label = state.plan, state.data, lpca_per_image_label(state.plan.code)
    bar.phase(f"{label}: fitting on {len(d.train_x)} train images ({plan.lpca_iter} L-BFGS iterations)")
    with clock("training"):
        lpca = LogisticPCA(plan.code, max_iter=plan.lpca_iter, device=plan.settings.device).fit(d.x_tr)
    with clock("evaluation"):
        return _lpca_per_image_cells(state, bar, lpca, label)


def _lpca_per_image_cells(state: State, bar, lpca: LogisticPCA, label: str) -> str:
    plan, d = state.plan, state.data
    cells = {}
    for table, (x, y) in d.test_sets.items():
        bar.phase(f"{label}: the codes of the {len(x)} images of the {table}")
        xe = x.flatten(1).numpy()
        codes = lpca.transform(xe)
        sse = float(sse_per_image(xe, lpca.inverse_transform(codes).cpu().numpy()).mean())
        bar.phase(f"{label}: probe ({table})")
        probe = validated_probe(lpca.train_codes_.cpu().numpy(), d.train_y.numpy(), codes.cpu().numpy(), y.numpy(),
                                d.validation)["accuracy"]  # fmt: skip
        cells[table] = _row(label, sse, probe, state, table)
        if table == TEST:  # for the figures, read back by a resumed run
            state_of = {"components": lpca.components_, "bias": lpca.bias_, "test_codes": codes}
            runs.save_state(plan.out / "logistic-pca.safetensors", state_of)
    state.cells[label] = cells
    return f"{label}: recon_sse {cells[TEST]['recon_sse']:.3f} ({lpca.n_iter_} fitting iterations)"


def per_image_file(out: Path, label: str) -> Path:
    slug = "".join(ch if ch.isalnum() else "-" for ch in label.lower())
    return out / f"per-image-codes-{slug}.safetensors"


def _deep_per_image_row(label: str, state: State, bar) -> str:
    """The chosen run of row `label`, its decoder fixed: each test image's code optimised by L-BFGS on that image's
    cross-entropy (at most --logistic-pca-iter iterations, as logistic PCA's codes), from the encoder's code. No
    probe (it would need the per-image codes of every train image). The test split only."""
    plan, d = state.plan, state.data
    model = runs.load_model(plan.out / state.runs[label], device=plan.settings.device).eval().requires_grad_(False)
    x, _ = d.test_sets[TEST]
    x = x.to(plan.settings.device)
    start = encode_all(model, x)
    done = [0]

    def moved(n: int) -> None:
        done[0] += n
        bar.status(f"{label}{PER_IMAGE}: {done[0]}/{len(x)} test images")

    bar.phase(f"{label}{PER_IMAGE}: L-BFGS on each of {len(x)} test images (at most {plan.lpca_iter} iterations)")
    found = per_image_codes(model.decode_logits, x.flatten(1), start, plan.lpca_iter, progress=moved)
    with torch.no_grad():
        recon = torch.cat([torch.sigmoid(model.decode_logits(z)) for z in found["codes"].split(1000)])
        fixed = torch.cat([torch.sigmoid(model.decode_logits(z)) for z in start.split(1000)])
    xe = x.flatten(1).cpu().numpy()
    sse = float(sse_per_image(xe, recon.cpu().numpy()).mean())
    state.cells[label + PER_IMAGE] = {TEST: _row(label + PER_IMAGE, sse, None, state, TEST)}
    state.per_image[label + PER_IMAGE] = {
        "decoder of": label,
        "start": "the encoder's code",
        "recon_sse at the start": float(sse_per_image(xe, fixed.cpu().numpy()).mean()),
        "max_iter": plan.lpca_iter,
        "mean iterations": float(found["iterations"].float().mean()),
        "converged fraction": float(found["converged"].float().mean()),
    }
    runs.save_state(per_image_file(plan.out, label + PER_IMAGE), {"test_codes": found["codes"].cpu()})
    return f"{label}{PER_IMAGE}: recon_sse {sse:.3f} (the encoder's codes: {state.per_image[label + PER_IMAGE]['recon_sse at the start']:.3f})"
