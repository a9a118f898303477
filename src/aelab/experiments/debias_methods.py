"""Debiasing methods for a digit classifier on ColoredMNIST, and the group metrics that grade them.

Every non-oracle function here takes images and DIGIT labels only: there is no parameter through which a colour
label could enter. The two oracles (`group_balanced_weights`, and the synthesis given `true_colour_donors`) are the
only functions that take colour labels, and they are named as such.

Methods
    vanilla      cross-entropy, uniform sampling.
    LfF          Learning from Failure (Nam, Cha, Ahn, Lee & Shin, NeurIPS 2020). A biased model f_B trained with
                 the Generalized Cross Entropy GCE(p, y) = (1 - p_y^q) / q and a debiased model f_D trained together;
                 with per-sample exponential moving averages of the cross-entropies
                     L_B(i) <- a L_B(i) + (1 - a) CE(f_B(x_i), y_i)     (first visit: L_B(i) = CE)
                 and the same for L_D, each divided by its class maximum (LfF's reference code), the relative
                 difficulty W(i) = L_B(i) / (L_B(i) + L_D(i)) weights the debiased model's loss:
                     loss = mean_i GCE(f_B(x_i), y_i) + mean_i W(i) CE(f_D(x_i), y_i).
    JTT          Just Train Twice (Liu, Haghgoo, Chen, Raghunathan, Koh, Sagawa, Liang & Finn, ICML 2021): ERM for
                 T epochs, error set E = {i : argmax f(x_i) != y_i}, then a fresh model trained with the samples of E
                 drawn lambda_up times as often.
    detect       our label-free detector (aelab.bias: kNN distance in the GCE-biased models' log-probabilities,
                 gce_knn) flags the top fraction rho of each digit class; flagged samples get weight (1 - rho) / rho,
                 so flagged and unflagged samples carry equal mass in every class.
    synthesis    bias-swap synthesis in the spirit of DisEnt (Lee, Kim, Lee, Lee & Choo, NeurIPS 2021: swap the bias
                 half of disentangled features between samples to make diverse bias-conflicting samples). Here the
                 factors are image factors, and the bias factor is DISCOVERED: for each candidate factor f
                 (colour statistics, brightness, position) and random pairs (i, j) on which the GCE-biased model b
                 disagrees, reliance(f) = P[b(swap_f(x_i <- x_j)) = b(x_j)]: the fraction of swaps after which the
                 biased model follows the donor. The factor the biased model relies on most is the bias. New samples
                 keep the digit (and label y_i) of x_i and take the bias factor of a donor x_j that the biased model
                 assigns to another class (b(x_j) != y_i): bias-conflicting by construction, in any number.

Metrics: `group_metrics` (unbiased, aligned, conflicting and worst-(digit, colour)-group accuracy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .debias_scores import MLPClassifier, gce_loss


# ---------------------------------------------------------------- metrics
def group_metrics(pred, digits, colours) -> dict:
    """Accuracies of predictions `pred` on a coloured test set.

    unbiased      accuracy over all samples (the LfF protocol: colour independent of digit)
    aligned       accuracy on the samples with colour == digit
    conflicting   accuracy on the samples with colour != digit
    worst_group   min over the non-empty (digit, colour) groups g of acc_g = #correct in g / #g
    Colour labels enter the grading only."""
    from sklearn.metrics import accuracy_score

    pred, digits, colours = (np.asarray(a).reshape(-1) for a in (pred, digits, colours))
    aligned = colours == digits
    group_acc = {}
    for d in np.unique(digits):
        for c in np.unique(colours[digits == d]):
            m = (digits == d) & (colours == c)
            group_acc[(int(d), int(c))] = float((pred[m] == digits[m]).mean())
    nan = float("nan")
    return {
        "unbiased": float(accuracy_score(digits, pred)),
        "aligned": float(accuracy_score(digits[aligned], pred[aligned])) if aligned.any() else nan,
        "conflicting": float(accuracy_score(digits[~aligned], pred[~aligned])) if (~aligned).any() else nan,
        "worst_group": min(group_acc.values()),
        "n_groups": len(group_acc),
    }


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    model.eval()
    return torch.cat([model(xb).argmax(1) for xb in images.split(batch_size)]).numpy()


def accuracy(model: nn.Module, images: torch.Tensor, digits: torch.Tensor) -> float:
    return float((predict(model, images) == digits.numpy()).mean())


def new_classifier(n_inputs: int, n_classes: int, seed: int) -> MLPClassifier:
    """LfF's ColoredMNIST MLP (3 x 100 ReLU), initialised from `seed` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLPClassifier(n_inputs, n_classes)


# ---------------------------------------------------------------- bias-factor swaps (image space)
def colour_stats(x: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Split x (B, 3, H, W) into a shape map g = max_channel x (B, 1, H, W) and colour statistics
    mu_c = sum_p x_c(p) / sum_p g(p) (B, 3), so that x ~= mu (x) g (exact when x = colour (x) gray)."""
    g = x.amax(1, keepdim=True)
    mu = x.sum((2, 3)) / g.sum((2, 3)).clamp_min(eps)
    return g, mu


def swap_colour(x: torch.Tensor, donor: torch.Tensor) -> torch.Tensor:
    """Shape of x, colour statistics of donor: mu_donor (x) g_x, clamped to [0, 1]."""
    g, _ = colour_stats(x)
    _, mu = colour_stats(donor)
    return (mu[:, :, None, None] * g).clamp(0, 1)


def swap_brightness(x: torch.Tensor, donor: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x rescaled to the donor's mean intensity: x * mean(donor) / mean(x), clamped to [0, 1]."""
    scale = donor.mean((1, 2, 3)) / x.mean((1, 2, 3)).clamp_min(eps)
    return (x * scale[:, None, None, None]).clamp(0, 1)


def _centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    w = x.sum(1)  # (B, H, W)
    h, wd = w.shape[1:]
    total = w.sum((1, 2)).clamp_min(1e-6)
    rows = (w.sum(2) * torch.arange(h, dtype=x.dtype)).sum(1) / total
    cols = (w.sum(1) * torch.arange(wd, dtype=x.dtype)).sum(1) / total
    return torch.stack([rows, cols], 1)


def swap_position(x: torch.Tensor, donor: torch.Tensor) -> torch.Tensor:
    """x translated (whole pixels, wrapping the black border) so its centre of mass lands on the donor's."""
    shift = (_centre_of_mass(donor) - _centre_of_mass(x)).round().long()
    return torch.stack([torch.roll(xi, (int(s[0]), int(s[1])), dims=(1, 2)) for xi, s in zip(x, shift)])


SWAPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "colour_statistics": swap_colour,
    "brightness": swap_brightness,
    "position": swap_position,
}


@torch.no_grad()
def bias_reliance(biased: nn.Module, images: torch.Tensor, n_pairs: int = 2000, seed: int = 0) -> dict[str, float]:
    """For each candidate factor f of SWAPS: over random pairs (i, j) with b(x_i) != b(x_j) (b = the biased
    model's argmax), the fraction of swaps swap_f(x_i <- x_j) that the biased model assigns to b(x_j).
    Images only: no label of any kind."""
    gen = torch.Generator().manual_seed(seed)
    b = torch.from_numpy(predict(biased, images))
    i = torch.randint(len(images), (n_pairs,), generator=gen)
    j = torch.randint(len(images), (n_pairs,), generator=gen)
    keep = b[i] != b[j]
    i, j = i[keep], j[keep]
    if len(i) == 0:
        return {name: 0.0 for name in SWAPS}
    return {
        name: float((torch.from_numpy(predict(biased, swap(images[i], images[j]))) == b[j]).float().mean())
        for name, swap in SWAPS.items()
    }


class Synthesizer:
    """Bias-conflicting samples on demand: sample(shape_idx, gen) returns swap(x[shape_idx] <- x[donor]) with a
    random donor whose `donor_class` differs from the digit of the shape sample; the label stays the digit.

    Label-free: donor_class = the biased model's predictions. Oracle: donor_class = the true colour labels."""

    def __init__(self, images: torch.Tensor, digits: torch.Tensor, donor_class: torch.Tensor, factor: str):
        self.images, self.digits, self.factor = images, digits, factor
        self.swap = SWAPS[factor]
        n_classes = int(max(digits.max(), donor_class.max())) + 1
        # row y of `pool` lists the samples whose donor_class != y (padded); `n_pool[y]` how many
        lists = [torch.nonzero(donor_class != y).squeeze(1) for y in range(n_classes)]
        lists = [d if len(d) else torch.arange(len(images)) for d in lists]
        self.n_pool = torch.tensor([len(d) for d in lists])
        self.pool = torch.zeros(n_classes, int(self.n_pool.max()), dtype=torch.long)
        for y, d in enumerate(lists):
            self.pool[y, : len(d)] = d

    def donors(self, shape_idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One uniform donor per shape sample among the samples whose donor_class differs from its digit."""
        y = self.digits[shape_idx]
        pos = (torch.rand(len(shape_idx), generator=gen) * self.n_pool[y]).long().clamp_max(self.n_pool[y] - 1)
        return self.pool[y, pos]

    def sample(self, shape_idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.swap(self.images[shape_idx], self.images[self.donors(shape_idx, gen)])

    def sample_with_donors(self, shape_idx: torch.Tensor, gen: torch.Generator):
        donors = self.donors(shape_idx, gen)
        return self.swap(self.images[shape_idx], self.images[donors]), donors


# ---------------------------------------------------------------- training
def train_classifier(
    images: torch.Tensor,
    digits: torch.Tensor,
    epochs: int,
    seed: int,
    weights: torch.Tensor | None = None,
    synthesizer: Synthesizer | None = None,
    synth_fraction: float = 0.0,
    lr: float = 1e-3,
    batch_size: int = 128,
    snapshot_epochs: Sequence[int] = (),
    n_classes: int = 10,
):
    """Cross-entropy training of the 3 x 100 MLP with Adam.

    weights: each epoch draws N indices with replacement, P(i) proportional to weights[i] (weighted resampling);
             None = a random permutation.
    synthesizer / synth_fraction p: in every batch the first round(p B) samples are replaced by synthesised
             bias-swapped versions of themselves (same digit label).
    snapshot_epochs: returns also the training-set predictions after those epochs (JTT's identification).
    Returns (model, {epoch: predictions})."""
    gen = torch.Generator().manual_seed(seed)
    model = new_classifier(images[0].numel(), n_classes, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    snaps = {}
    for epoch in range(1, epochs + 1):
        model.train()
        if weights is None:
            order = torch.randperm(len(images), generator=gen)
        else:
            order = torch.multinomial(weights.double(), len(images), replacement=True, generator=gen)
        for idx in order.split(batch_size):
            x, y = images[idx], digits[idx]
            k = int(round(synth_fraction * len(idx))) if synthesizer is not None else 0
            if k:
                x = torch.cat([synthesizer.sample(idx[:k], gen), x[k:]])
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch in snapshot_epochs:
            snaps[epoch] = predict(model, images)
    model.eval()
    return model, snaps


def ema_update(ema: torch.Tensor, seen: torch.Tensor, idx: torch.Tensor, loss: torch.Tensor, alpha: float) -> None:
    """LfF's per-sample moving average, in place: ema[i] <- alpha ema[i] + (1 - alpha) loss_i, and ema[i] <- loss_i
    on a sample's first visit (`seen` marks visited samples)."""
    a = alpha * seen[idx].to(ema.dtype)
    ema[idx] = a * ema[idx] + (1 - a) * loss
    seen[idx] = True


def lff_weights(
    ema_b: torch.Tensor, ema_d: torch.Tensor, idx: torch.Tensor, digits: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """Relative difficulty W(i) = L_B(i) / (L_B(i) + L_D(i) + 1e-8) for the samples idx, with each moving-average
    loss divided by its maximum over the (whole training set's) samples of the same class y_i."""
    max_b = torch.stack(
        [ema_b[digits == c].max() if (digits == c).any() else ema_b.new_tensor(1.0) for c in range(n_classes)]
    )
    max_d = torch.stack(
        [ema_d[digits == c].max() if (digits == c).any() else ema_d.new_tensor(1.0) for c in range(n_classes)]
    )
    y = digits[idx]
    lb = ema_b[idx] / max_b[y].clamp_min(1e-8)
    ld = ema_d[idx] / max_d[y].clamp_min(1e-8)
    return lb / (lb + ld + 1e-8)


def train_lff(
    images: torch.Tensor,
    digits: torch.Tensor,
    epochs: int,
    seed: int,
    q: float = 0.7,
    ema_alpha: float = 0.7,
    lr: float = 1e-3,
    batch_size: int = 128,
    n_classes: int = 10,
):
    """LfF (Nam et al. 2020, Algorithm 1): biased model on GCE, debiased model on W-weighted CE, trained together.
    Returns (debiased model, biased model)."""
    gen = torch.Generator().manual_seed(seed)
    model_b = new_classifier(images[0].numel(), n_classes, seed + 1)
    model_d = new_classifier(images[0].numel(), n_classes, seed)
    opt = torch.optim.Adam([*model_b.parameters(), *model_d.parameters()], lr=lr)
    ema_b, ema_d = torch.zeros(len(images)), torch.zeros(len(images))
    seen_b, seen_d = torch.zeros(len(images), dtype=torch.bool), torch.zeros(len(images), dtype=torch.bool)
    for _ in range(epochs):
        model_b.train()
        model_d.train()
        for idx in torch.randperm(len(images), generator=gen).split(batch_size):
            x, y = images[idx], digits[idx]
            logits_b, logits_d = model_b(x), model_d(x)
            ce_b = F.cross_entropy(logits_b, y, reduction="none")
            ce_d = F.cross_entropy(logits_d, y, reduction="none")
            ema_update(ema_b, seen_b, idx, ce_b.detach(), ema_alpha)
            ema_update(ema_d, seen_d, idx, ce_d.detach(), ema_alpha)
            w = lff_weights(ema_b, ema_d, idx, digits, n_classes)
            loss = gce_loss(logits_b, y, q).mean() + (w * ce_d).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model_b.eval()
    model_d.eval()
    return model_d, model_b


def top_fraction_flags(scores: np.ndarray, digits: np.ndarray, rho: float) -> np.ndarray:
    """True for the ceil(rho n_c) highest scores of every digit class c (stable order on ties)."""
    scores, digits = np.asarray(scores), np.asarray(digits)
    flags = np.zeros(len(scores), dtype=bool)
    for c in np.unique(digits):
        idx = np.flatnonzero(digits == c)
        k = max(1, int(np.ceil(rho * len(idx))))
        flags[idx[np.argsort(-scores[idx], kind="stable")[:k]]] = True
    return flags


def balanced_flag_weights(flags: np.ndarray, digits: np.ndarray) -> torch.Tensor:
    """Within every class, flagged and unflagged samples get equal total weight (1 / (2 n_flagged) and
    1 / (2 n_unflagged)), and classes keep their share n_c / N."""
    flags, digits = np.asarray(flags, dtype=bool), np.asarray(digits)
    w = np.zeros(len(flags))
    for c in np.unique(digits):
        m = digits == c
        for part in (m & flags, m & ~flags):
            if part.any():
                w[part] = m.sum() / (2 * part.sum() if (m & flags).any() and (m & ~flags).any() else part.sum())
    return torch.from_numpy(w / w.sum())


# ---------------------------------------------------------------- oracles (colour labels)
def group_balanced_weights(digits: torch.Tensor, colour_labels: torch.Tensor) -> torch.Tensor:
    """ORACLE. w(i) = 1 / #{j : (y_j, colour_j) = (y_i, colour_i)}: every (digit, colour) group present in the
    training set gets the same total weight."""
    key = digits.long() * 1000 + colour_labels.long()
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse].double()
    return w / w.sum()


# ---------------------------------------------------------------- autoencoder and linear probe
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
) -> MLPAutoencoder:
    """Squared-error AE (sum over pixels, mean over the batch); optionally on batches where a fraction p of the
    images is replaced by synthesised bias-swapped ones (the debiased AE). No labels enter the loss."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae = MLPAutoencoder(images[0].numel(), latent)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    for _ in range(epochs):
        ae.train()
        for idx in torch.randperm(len(images), generator=gen).split(batch_size):
            x = images[idx]
            k = int(round(synth_fraction * len(idx))) if synthesizer is not None else 0
            if k:
                x = torch.cat([synthesizer.sample(idx[:k], gen), x[k:]])
            loss = (ae(x) - x).pow(2).flatten(1).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    ae.eval()
    return ae


@torch.no_grad()
def encode(ae: MLPAutoencoder, images: torch.Tensor) -> np.ndarray:
    ae.eval()
    return torch.cat([ae.encode(xb) for xb in images.split(1000)]).double().numpy()


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
