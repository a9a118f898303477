"""Signs that a run stopped too early: a loss still falling steeply at the end, reconstructions worse than PCA's.

Still falling. Of a loss curve L_1..L_E (the validation loss, which chooses; the train loss when a run has no
validation split) take the last k = max(2, ceil(E/10)) epochs. The recent rate is the mean fall per epoch over
them, r = (L_{E-k} - L_E) / k; the run's average rate is a = (L_1 - L_E) / (E - 1). A curve that has begun to
flatten falls much more slowly at its end than on average (an exponential approach gives r/a -> 0 as E grows);
a curve still on its straight part has r/a near 1. The run is flagged when r >= STEEP_RATIO · a and the recent
fall is not noise-sized, r >= MIN_RELATIVE_FALL · |L_E| per epoch. Measured here on mnist5k with the defaults
(batch 128): the AE is flagged after 10 epochs (r/a = 0.60) and not after 20, 30 or 40; the VAE after 10
(0.84), not after 20.

Worse than PCA catches what the slope cannot: 300 mnist5k images with the defaults (3 steps per epoch, 20 epochs)
sit on a plateau at the mean image, recon_sse 57.0 against PCA's 20.6 with 20 components.

Worse than PCA. PCA with as many components as the code has dimensions is the best linear code of that size
(Eckart-Young): an autoencoder that reconstructs the test images worse than it has not yet learnt what PCA gets
in closed form (the grey-blob mean image is the usual case). Not checked for binary codes (k bits hold far less
than k real components) nor when the code has at least as many dimensions as the image has pixels (PCA is then
exact).
"""

from __future__ import annotations

import math

STEEP_RATIO = 0.5  # recent fall per epoch / average fall per epoch at or above which a curve is still steep
MIN_RELATIVE_FALL = 1e-3  # recent fall per epoch under this fraction of the final loss: flat, whatever the ratio
MIN_EPOCHS = 3


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def still_falling(history: list[dict]) -> dict | None:
    """{"key", "epochs", "last", "recent_rate", "average_rate", "ratio", "relative_rate"} when the run's loss was
    still falling steeply at its end (see the module docstring), else None. A run that stopped early (its kept
    epoch before its last) is never flagged: its validation loss had stopped falling."""
    rows = [h for h in history if _number(h.get("train_loss"))]
    key = "val_loss" if rows and all(_number(h.get("val_loss")) for h in rows) else "train_loss"
    losses = [float(h[key]) for h in rows]
    if len(losses) < MIN_EPOCHS or (rows and rows[-1].get("best_epoch") not in (None, rows[-1]["epoch"])):
        return None
    n = len(losses)
    k = max(2, math.ceil(n / 10))
    recent = (losses[-1 - k] - losses[-1]) / k
    average = (losses[0] - losses[-1]) / (n - 1)
    if average <= 0 or recent <= 0:
        return None
    relative = recent / max(abs(losses[-1]), 1e-12)
    if recent < STEEP_RATIO * average or relative < MIN_RELATIVE_FALL:
        return None
    return {"key": key, "epochs": n, "last": k, "recent_rate": recent, "average_rate": average,
            "ratio": recent / average, "relative_rate": relative}  # fmt: skip


def still_falling_warning(history: list[dict], run: str) -> str | None:
    """The one-line warning for still_falling(history), None when the curve had flattened."""
    s = still_falling(history)
    if s is None:
        return None
    return (
        f"the {s['key']} was still falling steeply at the end: {100 * s['relative_rate']:.2g}% per epoch over the "
        f"last {s['last']} of {s['epochs']} epochs, {s['ratio']:.2f}x the run's average rate. The run is likely "
        f"undertrained; continue it with aelab train --out {run} --resume --epochs {2 * s['epochs']}"
    )


def worse_than_pca_warning(metrics: dict, binary_code: bool, pixels: int) -> str | None:
    """The one-line warning when the test reconstructions are worse than PCA's with the same code size."""
    sse, pca, dim = metrics.get("recon_sse"), metrics.get("pca_sse"), metrics.get("code_dim")
    if binary_code or not (_number(sse) and _number(pca) and isinstance(dim, int)) or dim >= pixels:
        return None
    if sse <= pca:
        return None
    return (
        f"the test reconstructions are worse than PCA's with the same code size ({dim}): recon_sse {sse:.4g} against "
        f"pca_sse {pca:.4g} ({sse / pca:.2f}x). The model has not yet learnt what PCA gets in closed form; it is "
        "likely undertrained (more epochs or steps, a larger learning rate)"
    )


def recorded_warnings(result) -> list[str]:
    """The warnings an eval.json records, as one-line strings (the file is untrusted: anything else is left out;
    at most 10, each at most 600 characters)."""
    found = result.get("warnings") if isinstance(result, dict) else None
    if not isinstance(found, list):
        return []
    return [" ".join(w.split())[:600] for w in found[:10] if isinstance(w, str)]
