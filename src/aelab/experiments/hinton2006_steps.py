"""The steps of the hinton2006 experiment, one function each (hinton2006.run_one runs them in the order of
hinton2006_rows.Plan.steps): each computes its rows into the State and says what they gave. The plan, the data and
the state that --resume reads back are in hinton2006_rows."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from .. import runs
from ..evaluate import evaluate, raw_probe
from ..metrics.codes import encode_all, validated_probe
from ..metrics.per_image import per_image_codes
from ..metrics.reconstruction import sse_per_image
from ..models.logistic_pca import LogisticPCA
from ..train import TrainConfig, pretrain
from .common import OFFICIAL_TEST, kept_epoch, train_or_resume
from .hinton2006_rows import (
    PER_IMAGE,
    PRETRAIN,
    RAW,
    TEST,
    Clock,
    Data,
    Plan,
    State,
    fit_pca,
    lpca_per_image_label,
    pca_label,
    per_image_file,
)


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
