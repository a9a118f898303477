"""Features of the debiased representation: a small MLP autoencoder (trained on plain or synthesis-augmented
images) and the linear probe that reads a digit from its codes.

    AE:      x -> Linear(D, 128) ReLU Linear(128, 32) = z -> Linear(32, 128) ReLU Linear(128, D) sigmoid = x_hat
             loss = mean over the batch of sum_p (x_hat_p - x_p)^2   (no labels)
    probe:   multinomial logistic regression on standardised codes; accuracy on held-out codes

The debiased AE replaces a fraction p of every batch by bias-swapped images (aelab.debias.synthesis), so its
codes see every digit with every value of the bias factor. The probe is the usual linear evaluation of a
representation (e.g. Alain & Bengio 2016).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from .device import autocast, device_of

if TYPE_CHECKING:
    from .synthesis import Synthesizer


class MLPAutoencoder(nn.Module):
    """x (3x28x28) -> hidden -> latent -> hidden -> sigmoid pixels (ReLU between)."""

    def __init__(self, n_inputs: int, latent: int = 32, hidden: int = 128):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, n_inputs), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x)).view_as(x)


def train_autoencoder(
    images: torch.Tensor,
    epochs: int,
    seed: int,
    synthesizer: Synthesizer | None = None,
    synth_fraction: float = 0.0,
    lr: float = 1e-3,
    batch_size: int = 128,
    latent: int = 32,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> MLPAutoencoder:
    """Squared-error AE (sum over pixels, mean over the batch); optionally on batches where a fraction p of the
    images is replaced by synthesised bias-swapped ones (the debiased AE). No labels enter the loss. The order
    and the donors are drawn on CPU; the model trains on `device` (bf16 autocast there with amp on CUDA)."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae = MLPAutoencoder(images[0].numel(), latent)
    ae = ae.to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    x_all = images.to(device)
    for _ in range(epochs):
        ae.train()
        for idx in torch.randperm(len(images), generator=gen).split(batch_size):
            x = x_all[idx.to(device)]
            k = int(round(synth_fraction * len(idx))) if synthesizer is not None else 0
            if k:
                x = torch.cat([synthesizer.sample(idx[:k], gen).to(device), x[k:]])
            with autocast(device, amp):
                # float32 error: under bf16 autocast the decoder's sigmoid comes back in bf16
                loss = (ae(x).float() - x).pow(2).flatten(1).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    ae.eval()
    return ae


@torch.no_grad()
def encode(ae: MLPAutoencoder, images: torch.Tensor) -> np.ndarray:
    ae.eval()
    device = device_of(ae)
    return torch.cat([ae.encode(xb.to(device)) for xb in images.split(1000)]).double().cpu().numpy()


def linear_probe(
    train_codes: np.ndarray, train_digits: np.ndarray, test_codes: np.ndarray, test_digits: np.ndarray, seed: int = 0
) -> float:
    """Accuracy on (test_codes, test_digits) of a standardised multinomial logistic regression fitted on the train codes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, random_state=seed))
    clf.fit(train_codes, train_digits)
    return float((clf.predict(test_codes) == np.asarray(test_digits)).mean())


def probe_accuracies(
    ae: nn.Module,
    train_images: torch.Tensor,
    train_digits: torch.Tensor,
    swapped_train: torch.Tensor,
    test_images: torch.Tensor,
    test_digits: torch.Tensor,
    seed: int = 0,
) -> dict[str, float]:
    """Linear-probe digit accuracy of an AE's codes on the test images, the probe fitted three ways: on the
    (biased) train codes, on the codes of the bias-swapped train images, and 2-fold on the test codes themselves
    (even / odd positions, the mean of both directions)."""
    z_tr, z_te, z_sw = encode(ae, train_images), encode(ae, test_images), encode(ae, swapped_train)
    y_tr, y_te = train_digits.cpu().numpy(), test_digits.cpu().numpy()
    half = np.arange(len(y_te)) % 2 == 0
    return {
        "probe_fit_biased_train": linear_probe(z_tr, y_tr, z_te, y_te, seed),
        "probe_fit_synthesised_train": linear_probe(z_sw, y_tr, z_te, y_te, seed),
        "probe_2fold_unbiased_test": 0.5
        * (
            linear_probe(z_te[half], y_te[half], z_te[~half], y_te[~half], seed)
            + linear_probe(z_te[~half], y_te[~half], z_te[half], y_te[half], seed)
        ),
    }
