"""The two scorings of the contractive experiment that `aelab evaluate` does not do: the MLP fine-tuned from each
encoder (Rifai et al. 2011's Table 1 number) and the RBM row's probe and contraction (an RBM run's own evaluate
would estimate log Z by AIS, which Table 1 does not need).

fine-tuned test error   aelab.finetune: the encoder's (W, b) initialise a D-H-10 sigmoid MLP whose every weight is
                        trained with the labels on the train split minus validation; its epoch is chosen on the
                        validation errors; the test split is scored once, on the kept weights
RBM row                 the RBM's code E[h | x] = sigmoid(c + x W) is one sigmoid layer, so the probe, ‖J_f(x)‖_F
                        and SAT are those of the AE with that encoder (aelab.metrics.contraction), and recon SSE
                        is that of the mean-field reconstruction sigmoid(b + E[h | x] W^T)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from .. import data as datamod
from .. import runs
from ..finetune import FinetuneConfig, error_rate, finetune, mlp_from
from ..metrics.codes import encode_all, reconstruct_all, validated_probe
from ..metrics.contraction import contraction_diagnostics
from ..models.ae import AE
from .common import OFFICIAL_TEST


def run_splits(run_dir: Path, data_dir: str | None):
    """(config, train_x, train_y, test_x, test_y, (kept, held) validation indices) of a run, as it was trained."""
    config = runs.read_config(run_dir)
    train_x, train_y, test_x, test_y = runs.run_data(config, data_dir)
    validation = runs.validation_indices(config, train_y.numpy())
    if validation is None:
        raise ValueError(f"{run_dir} was trained without a validation split: fine-tuning has no epoch to choose")
    return config, train_x, train_y, test_x, test_y, validation


def official_test(data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _ = datamod.load_test_split(OFFICIAL_TEST, data_dir)
    return x, y


def finetune_member(
    run_dir: Path,
    config: FinetuneConfig,
    seed: int,
    data_dir: str | None,
    official: bool,
    on_epoch: Callable[[dict], None] | None = None,
) -> tuple[dict, dict | None]:
    """Fine-tune an MLP from the run's encoder (module docstring) and score it once: ({"finetune_error",
    "finetune_val_error", "finetune_best_epoch", "finetune_epochs_run"}, {"finetune_error"} on the official MNIST
    test set or None)."""
    _, train_x, train_y, test_x, test_y, (kept, held) = run_splits(run_dir, data_dir)
    net = mlp_from(runs.load_model(run_dir), int(train_y.max()) + 1)
    kept, held = torch.as_tensor(kept), torch.as_tensor(held)
    flat = train_x.flatten(1)
    record = finetune(net, (flat[kept], train_y[kept]), (flat[held], train_y[held]), config, seed, on_epoch)
    metrics = {
        "finetune_error": error_rate(net, test_x.flatten(1), test_y),
        "finetune_val_error": record["val_error"],
        "finetune_best_epoch": record["best_epoch"],
        "finetune_epochs_run": record["epochs_run"],
    }
    other = None
    if official:
        x, y = official_test(data_dir)
        other = {"finetune_error": error_rate(net, x.flatten(1), y)}
    return metrics, other


def rbm_as_autoencoder(model) -> AE:
    """The AE whose encoder is the RBM's E[h | x] = sigmoid(c + x W) and whose decoder gives sigmoid(b + h W^T)."""
    rbm = model.rbm
    ae = AE(input_shape=tuple(model.input_shape), hidden=[rbm.weight.shape[1]], latent=None, activation="sigmoid")
    (enc,) = [m for m in ae.encoder if isinstance(m, torch.nn.Linear)]
    (dec,) = [m for m in ae.decoder if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        enc.weight.copy_(rbm.weight.t())
        enc.bias.copy_(rbm.hidden_bias)
        dec.weight.copy_(rbm.weight)
        dec.bias.copy_(rbm.visible_bias)
    return ae.eval()


def rbm_member_metrics(run_dir: Path, data_dir: str | None, official: bool) -> tuple[dict, dict | None]:
    """The RBM row's probe accuracy, recon SSE, mean ‖J_f(x)‖_F and SAT on the test split (and on the official
    MNIST test set when `official`), measured as aelab.evaluate measures the AEs' (module docstring). Returns
    ({"metrics", "jacobian_mean_singular_values", "data": None}, the official metrics or None), as evaluate_member."""
    _, train_x, train_y, test_x, test_y, validation = run_splits(run_dir, data_dir)
    ae = rbm_as_autoencoder(runs.load_model(run_dir))
    train_codes = encode_all(ae, train_x).numpy()

    def scored(x: torch.Tensor, y: torch.Tensor) -> tuple[dict, list[float]]:
        probe = validated_probe(train_codes, train_y.numpy(), encode_all(ae, x).numpy(), y.numpy(), validation)
        sse = (reconstruct_all(ae, x) - x).flatten(1).pow(2).sum(1)
        contraction, spectrum = contraction_diagnostics(ae, x)
        return {"probe_accuracy": probe["accuracy"], "recon_sse": float(sse.double().mean()), **contraction}, spectrum

    metrics, spectrum = scored(test_x, test_y)
    other = scored(*official_test(data_dir))[0] if official else None
    return {"metrics": metrics, "jacobian_mean_singular_values": spectrum, "data": None}, other
