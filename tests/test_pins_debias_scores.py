"""Pins of aelab.debias (scores, features, synthesis) where the experiments use it: score_samples returns, for
every method, the number its own function gives on the same inputs (so an argument dropped or swapped inside
score_samples shows), the autoencoder's reconstruction error per image by hand, choose_k's choice on the
validation images against a brute-force search, the Gaussian NLL against scipy, the representation probes by hand,
the debiasing AE's seed and the report's synthesised samples' generator."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from aelab.debias import scores as sc
from aelab.debias.biased import biased_log_probabilities
from aelab.metrics.ranking import auroc

pytestmark = pytest.mark.usefixtures("one_thread")


class _LinearAE(nn.Module):
    """encode / decode as the aelab model interface; a Dropout that changes the codes in training mode only."""

    def __init__(self, d: int, k: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.enc = nn.Linear(d, k).double()
        self.dec = nn.Linear(k, d).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
        self.drop = nn.Dropout(0.5)

    def encode(self, x):
        return self.drop(self.enc(x.flatten(1)))

    def decode(self, z):
        return self.dec(z).view(-1, 3, 2, 2)


def _data(seed=0, n=36):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 2, 2, generator=g, dtype=torch.float64)
    digits = torch.arange(n) % 3
    return images, digits


def test_reconstruction_error_scores_are_each_images_sse_in_eval_mode():
    images, _ = _data()
    model = _LinearAE(12, 2, 1)
    model.train()
    got = sc.reconstruction_error_scores(model, images, batch_size=5)
    assert not model.training and got.dtype == np.float64 and got.shape == (36,)
    x = images.flatten(1).numpy()
    W1, b1 = model.enc.weight.detach().numpy(), model.enc.bias.detach().numpy()
    W2, b2 = model.dec.weight.detach().numpy(), model.dec.bias.detach().numpy()
    by_hand = (((x @ W1.T + b1) @ W2.T + b2 - x) ** 2).sum(1)
    np.testing.assert_allclose(got, by_hand, rtol=1e-12)


@pytest.mark.parametrize("with_ae", [True, False])
def test_score_samples_gives_each_method_its_own_functions_number(with_ae):
    images, digits = _data()
    model = _LinearAE(12, 2, 1) if with_ae else None
    timings, reps, said = {}, {}, []
    got = sc.score_samples(
        images.float(), digits, ae_model=model.float() if with_ae else None, k=4, n_models=2, gce_epochs=2, q=0.4,
        seed=3, pca_components=2, timings=timings, representations=reps, progress=said.append,
    )  # fmt: skip
    y = digits.numpy()
    log_probs = biased_log_probabilities(images.float(), digits, n_models=2, epochs=2, q=0.4, seed=3)
    want = {
        "gce_ce": sc.cross_entropy_scores(log_probs, y),
        "gce_knn": sc.knn_distance_scores(log_probs, y, 4),
        "pca_baseline": sc.pca_residual_scores(images.float(), y, 2),
    }
    want["rank_avg(gce_ce,gce_knn)"] = sc.rank_average([want["gce_ce"], want["gce_knn"]], y)
    if with_ae:
        model.eval()
        with torch.no_grad():
            codes = model.encode(images.float()).double().numpy()
        want["ae_recon"] = sc.reconstruction_error_scores(model, images.float())
        want["ae_knn"] = sc.knn_distance_scores(codes, y, 4)
        want["ae_gauss"] = sc.gaussian_nll_scores(codes, y)
        np.testing.assert_array_equal(reps["ae_codes"], codes)
    assert list(got) == [m for m in sc.METHODS if with_ae or not m.startswith("ae_")]
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    np.testing.assert_array_equal(reps["gce_log_probs"], log_probs)
    assert set(reps) == ({"ae_codes", "gce_log_probs"} if with_ae else {"gce_log_probs"})
    assert list(timings) == list(got) and all(t >= 0 for t in timings.values())
    assert said[-2] == "gce_ce, gce_knn: 2 biased MLPs (GCE, q 0.4, 2 epochs each, cross-fitted)"
    assert said[-1] == "pca_baseline: PCA (2 components) residuals"
    if with_ae:
        assert said[0] == "ae_recon, ae_knn, ae_gauss: the autoencoder's errors and codes of 36 images"
    assert len(said) == (3 if with_ae else 2)


def test_score_samples_defaults_are_the_documented_ones(monkeypatch):
    """k 5, five models of 3 epochs at q 0.7 from seed 0, 20 PCA components: what the experiments rely on."""
    seen = {}

    def fake_log_probs(images, digits, n_models, epochs, q, seed, device, amp):
        seen.update(n_models=n_models, epochs=epochs, q=q, seed=seed, device=device, amp=amp)
        return np.log(np.full((len(images), 3), 1 / 3))

    monkeypatch.setattr(sc, "biased_log_probabilities", fake_log_probs)
    monkeypatch.setattr(sc, "knn_distance_scores", lambda f, y, k: np.full(len(y), float(k)))
    monkeypatch.setattr(sc, "pca_residual_scores", lambda x, y, c: np.full(len(y), float(c)))
    images, digits = _data(n=60)
    got = sc.score_samples(images, digits)
    assert seen == {"n_models": 5, "epochs": 3, "q": 0.7, "seed": 0, "device": "cpu", "amp": False}
    assert (got["gce_knn"] == 5).all() and (got["pca_baseline"] == 20).all()


def _choose_by_brute_force(features, digits, conflicting, held, ks, default_k):
    best, best_k, crit = -np.inf, None, []
    for k in ks:
        s = sc.knn_distance_scores(features, digits, k)
        ranks = sc.within_class_ranks(s, digits)
        a = auroc(ranks[held], conflicting[held])
        crit.append(a)
        if not np.isnan(a) and a > best:  # strictly better: the smallest k of equals stays
            best, best_k = a, k
    return crit, (best_k if best_k is not None else default_k)


def test_choose_k_picks_the_best_validation_auroc_and_the_smallest_k_of_equals():
    g = np.random.default_rng(0)
    digits = np.repeat(np.arange(3), 30)
    conflicting = g.random(90) < 0.2
    features = g.normal(size=(90, 4)) + 1.5 * conflicting[:, None] * g.normal(size=(90, 4))
    held = np.zeros(90, bool)
    held[::3] = True
    ks = [1, 3, 7, 15]
    got = sc.choose_k(features, digits, conflicting, held, ks, default_k=5)
    crit, chosen = _choose_by_brute_force(features, digits, conflicting, held, ks, 5)
    assert got["grid"] == ks and got["chosen_k"] == chosen
    np.testing.assert_allclose(got["validation_auroc"], crit, rtol=0, atol=0)
    np.testing.assert_array_equal(got["scores"], sc.knn_distance_scores(features, digits, chosen))
    # the choice reads the held-out images only: the others' conflict flags change nothing
    flipped = conflicting.copy()
    flipped[~held] = ~flipped[~held]
    assert sc.choose_k(features, digits, flipped, held, ks)["validation_auroc"] == got["validation_auroc"]
    # and it does read them: the choice on the complement of the held-out images differs here
    other = sc.choose_k(features, digits, conflicting, ~held, ks)
    assert other["validation_auroc"] == _choose_by_brute_force(features, digits, conflicting, ~held, ks, 5)[0]
    assert other["validation_auroc"] != got["validation_auroc"]
    # equal criteria: the smallest k of them (a single repeated k makes them equal)
    tie = sc.choose_k(features, digits, conflicting, held, [7, 3, 3, 7])
    assert tie["chosen_k"] == (7 if crit[2] >= crit[1] else 3)
    assert tie["grid"] == [7, 3, 3, 7]


def test_choose_k_keeps_the_default_when_nothing_can_be_chosen():
    g = np.random.default_rng(1)
    digits = np.repeat(np.arange(2), 10)
    features = g.normal(size=(20, 3))
    conflicting = np.zeros(20, bool)
    conflicting[[3, 15]] = True
    held = np.zeros(20, bool)
    held[[0, 1, 12]] = True  # no conflicting image among them: every AUROC is NaN
    got = sc.choose_k(features, digits, conflicting, held, [1, 2], default_k=4)
    assert got["chosen_k"] == 4 and all(np.isnan(a) for a in got["validation_auroc"])
    np.testing.assert_array_equal(got["scores"], sc.knn_distance_scores(features, digits, 4))
    assert sc.choose_k(features, digits, conflicting, held, [1, 2])["chosen_k"] == 5
    kept = sc.choose_k(features, digits, conflicting, held, [1, 4], default_k=4)
    np.testing.assert_array_equal(kept["scores"], sc.knn_distance_scores(features, digits, 4))


@pytest.mark.parametrize(
    ("criteria", "chosen"),
    [([0.5, 0.5, 0.5], 7), ([0.6, 0.8, 0.8], 3), ([float("nan"), 0.2, 0.3], 1), ([0.1, float("nan"), 0.0], 7)],
)
def test_choose_k_first_of_equals_and_a_nan_below_every_number(monkeypatch, criteria, chosen):
    import aelab.metrics.ranking as ranking

    answers = iter(criteria)
    monkeypatch.setattr(ranking, "auroc", lambda scores, labels: next(answers))
    digits = np.repeat(np.arange(2), 6)
    got = sc.choose_k(np.arange(12.0)[:, None], digits, np.ones(12, bool), np.ones(12, bool), [7, 3, 1])
    assert got["chosen_k"] == chosen


def test_gaussian_nll_scores_are_scipys_log_density_per_class():
    """-log N(z; mu_y, Sigma_y + eps * tr(Sigma_y) / d * I) with the biased (1/n) covariance of the sample's own
    class, against scipy; float32 codes of any shape are scored in float64, digits of any shape read flat."""
    from scipy.stats import multivariate_normal

    g = np.random.default_rng(2)
    digits = np.repeat([4, 1, 7], [9, 12, 10])
    features = (g.normal(size=(31, 2, 2)) * [[1.0, 3.0], [0.5, 2.0]] + digits[:, None, None]).astype(np.float32)
    for eps, kwargs in ((1e-3, {}), (0.2, {"eps": 0.2})):
        got = sc.gaussian_nll_scores(features, digits[:, None], **kwargs)
        want = np.empty(31)
        for c in (1, 4, 7):
            f = features[digits == c].reshape(-1, 4).astype(np.float64)
            cov = np.cov(f, rowvar=False, bias=True)
            cov += eps * np.trace(cov) / 4 * np.eye(4)
            want[digits == c] = -multivariate_normal(f.mean(0), cov).logpdf(f)
        np.testing.assert_allclose(got, want, rtol=1e-11)


class _FirstColumns(nn.Module):
    def encode(self, x):
        return x.flatten(1)[:, :3]


def _probe_by_hand(train_codes, train_digits, test_codes, test_digits):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(train_codes, train_digits)
    return float((clf.predict(test_codes) == test_digits).mean())


def test_probe_accuracies_fit_each_probe_on_its_own_codes_and_score_the_test_digits():
    from aelab.debias.features import probe_accuracies

    g = torch.Generator().manual_seed(3)
    digits = torch.arange(60) % 3
    noisy = lambda n, scale: torch.randn(n, 2, 3, generator=g, dtype=torch.float64) * scale  # noqa: E731
    train = noisy(60, 1.0) + digits[:, None, None] * 0.6
    swapped = noisy(60, 1.0) + digits[:, None, None] * 1.5
    test_digits = torch.arange(45) % 3
    test = noisy(45, 1.0) + test_digits[:, None, None] * 0.9
    got = probe_accuracies(_FirstColumns(), train, digits, swapped, test, test_digits)
    z = lambda x: x.flatten(1)[:, :3].numpy()  # noqa: E731
    y, yt = digits.numpy(), test_digits.numpy()
    even = np.arange(45) % 2 == 0
    want = {
        "probe_fit_biased_train": _probe_by_hand(z(train), y, z(test), yt),
        "probe_fit_synthesised_train": _probe_by_hand(z(swapped), y, z(test), yt),
        "probe_2fold_unbiased_test": 0.5
        * (
            _probe_by_hand(z(test)[even], yt[even], z(test)[~even], yt[~even])
            + _probe_by_hand(z(test)[~even], yt[~even], z(test)[even], yt[even])
        ),
    }
    assert got == want
    assert len(set(want.values())) == 3 and 0.4 < min(want.values())  # three different, informative numbers


def test_the_debiasing_autoencoder_is_the_same_for_a_seed_whatever_the_global_rng():
    from aelab.debias.features import train_autoencoder

    images = torch.rand(50, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(11)
    a = train_autoencoder(images, epochs=2, seed=5, batch_size=16, latent=3)
    torch.manual_seed(12)
    b = train_autoencoder(images, epochs=2, seed=5, batch_size=16, latent=3)
    c = train_autoencoder(images, epochs=2, seed=6, batch_size=16, latent=3)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_the_report_figures_synthesised_samples_draw_their_donors_from_the_generator_given():
    """sample_with_donors (the report's figure of synthesised samples) draws the donors from the generator it is
    handed, as donors() does, not from the global RNG: the same generator state gives the same donors and images."""
    from aelab import debias as dm

    g = torch.Generator().manual_seed(0)
    images = torch.rand(30, 3, 4, 4, generator=g)
    digits = torch.arange(30) % 3
    synth = dm.Synthesizer(images, digits, (digits + 1) % 3, "colour_statistics")
    idx = torch.arange(0, 30, 2)
    torch.manual_seed(1)
    imgs, donors = synth.sample_with_donors(idx, torch.Generator().manual_seed(9))
    torch.manual_seed(2)
    again, donors_again = synth.sample_with_donors(idx, torch.Generator().manual_seed(9))
    torch.testing.assert_close(donors, synth.donors(idx, torch.Generator().manual_seed(9)), rtol=0, atol=0)
    torch.testing.assert_close(donors_again, donors, rtol=0, atol=0)
    torch.testing.assert_close(again, imgs, rtol=0, atol=0)
    torch.testing.assert_close(imgs, synth.swap(images[idx], images[donors]), rtol=0, atol=0)


def _autoencoder_by_hand(images, epochs, seed, synth=None, p=0.0, lr=1e-3, batch_size=128, latent=32):
    """train_autoencoder's documented loop written out: the seed's initial weights, Adam(lr), the CPU generator's
    order, the first round(p * batch) images of a batch replaced by synthesised ones, loss = sum over pixels of the
    squared error, mean over the batch."""
    from aelab.debias.features import MLPAutoencoder

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ae = MLPAutoencoder(images[0].numel(), latent)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=gen).split(batch_size):
            x = images[idx]
            k = int(round(p * len(idx))) if synth is not None else 0
            if k:
                x = torch.cat([synth.sample(idx[:k], gen), x[k:]])
            loss = ((ae(x) - x) ** 2).flatten(1).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return ae


@pytest.mark.parametrize("synthesised", [False, True])
def test_the_debiasing_autoencoder_trains_as_documented(synthesised):
    from aelab import debias as dm
    from aelab.debias.features import train_autoencoder

    g = torch.Generator().manual_seed(1)
    images = torch.rand(300, 3, 2, 2, generator=g)
    digits = torch.arange(300) % 3
    if synthesised:
        synth = dm.Synthesizer(images, digits, (digits + 1) % 3, "colour_statistics")
        options = {"synthesizer": synth, "synth_fraction": 0.3, "lr": 3e-3, "batch_size": 50, "latent": 5}
        got = train_autoencoder(images, epochs=2, seed=4, **options)
        want = _autoencoder_by_hand(images, 2, 4, synth, 0.3, 3e-3, 50, 5)
    else:  # the defaults: lr 1e-3, batches of 128, a 32-D code, no synthesis
        got = train_autoencoder(images, epochs=2, seed=4)
        want = _autoencoder_by_hand(images, 2, 4)
    assert not got.training
    for (name, a), b in zip(got.named_parameters(), want.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_the_debiasing_autoencoders_network_is_the_documented_mlp():
    """x -> Linear(D, 128) ReLU Linear(128, 32) = z -> Linear(32, 128) ReLU Linear(128, D) sigmoid, on images
    flattened from (N, 3, H, W)."""
    from aelab.debias.features import MLPAutoencoder

    torch.manual_seed(0)
    ae = MLPAutoencoder(12)
    shapes = [tuple(p.shape) for p in ae.parameters()]
    assert shapes == [(128, 12), (128,), (32, 128), (32,), (128, 32), (128,), (12, 128), (12,)]
    x = torch.rand(5, 3, 2, 2)
    e1, e2, d1, d2 = [m for m in [*ae.encoder, *ae.decoder] if isinstance(m, nn.Linear)]
    z = e2(torch.relu(e1(x.flatten(1))))
    torch.testing.assert_close(ae.encode(x), z, rtol=0, atol=0)
    torch.testing.assert_close(ae(x), torch.sigmoid(d2(torch.relu(d1(z)))).view_as(x), rtol=0, atol=0)
    assert tuple(p.shape[0] for p in MLPAutoencoder(12, latent=3, hidden=7).parameters()) == (7, 7, 3, 3, 7, 7, 12, 12)


def test_classifier_accuracy_is_the_share_of_images_whose_argmax_is_the_digit():
    from aelab.debias.classifier import accuracy

    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0], [4.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(logits.T)
    images = torch.eye(5).view(5, 5, 1, 1)
    assert accuracy(model, images, torch.tensor([0, 1, 1, 2, 1])) == 3 / 5
    assert accuracy(model, images, torch.tensor([0, 1, 2, 0, 1])) == 1.0


def test_train_lff_draws_its_batches_from_its_seed_and_starts_its_models_from_seed_plus_1_and_seed(monkeypatch):
    """train_lff as the cell calls it, with its defaults: batches of 128 in the order of a CPU generator seeded with
    `seed` (the global RNG plays no part), the biased model initialised from seed + 1 and the debiased one from
    seed, GCE's q = 0.7 and the moving averages' alpha = 0.7 (Nam et al.'s), Adam at 1e-3, ten classes."""
    from aelab.debias import lff as lff_mod

    seen = {"new": [], "alpha": [], "q": [], "batches": [], "classes": [], "lr": []}
    real_new, real_ema, real_gce, real_w = (lff_mod.new_classifier, lff_mod.ema_update, lff_mod.gce_loss,
                                            lff_mod.lff_weights)  # fmt: skip
    real_adam = torch.optim.Adam

    def new(n_inputs, n_classes, seed):
        seen["new"].append((n_inputs, n_classes, seed))
        return real_new(n_inputs, n_classes, seed)

    def ema(ema_, seen_, idx, loss, alpha):
        seen["alpha"].append(alpha)
        return real_ema(ema_, seen_, idx, loss, alpha)

    def gce(logits, y, q):
        seen["q"].append(q)
        return real_gce(logits, y, q)

    def weights(ema_b, ema_d, idx, digits, n_classes):
        seen["batches"].append(idx.clone())
        seen["classes"].append(n_classes)
        return real_w(ema_b, ema_d, idx, digits, n_classes)

    def adam(params, lr):
        seen["lr"].append(lr)
        return real_adam(params, lr=lr)

    for name, fake in (("new_classifier", new), ("ema_update", ema), ("gce_loss", gce), ("lff_weights", weights)):
        monkeypatch.setattr(lff_mod, name, fake)
    monkeypatch.setattr(lff_mod.torch.optim, "Adam", adam)
    images = torch.rand(300, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    digits = torch.arange(300) % 10
    torch.manual_seed(1)
    model_d, model_b = lff_mod.train_lff(images, digits, epochs=1, seed=5)
    assert seen["new"] == [(8, 10, 6), (8, 10, 5)]
    want = torch.randperm(300, generator=torch.Generator().manual_seed(5)).split(128)
    assert [len(b) for b in seen["batches"]] == [128, 128, 44]
    assert all(torch.equal(a, b) for a, b in zip(seen["batches"], want))
    assert set(seen["alpha"]) == {0.7} and set(seen["q"]) == {0.7} and set(seen["classes"]) == {10}
    assert seen["lr"] == [1e-3]
    torch.manual_seed(2)
    again_d, again_b = lff_mod.train_lff(images, digits, epochs=1, seed=5)
    for a, b in zip([*model_d.parameters(), *model_b.parameters()], [*again_d.parameters(), *again_b.parameters()]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_group_metrics_of_a_set_without_aligned_or_without_conflicting_samples_and_of_column_vectors():
    """An empty side is NaN (a float, not None or 0), the other side still graded; column vectors are read flat."""
    from aelab.debias.metrics import group_metrics

    digits = np.array([0, 1, 2, 0, 1, 2])
    pred = np.array([0, 1, 0, 0, 2, 2])
    all_aligned = group_metrics(pred, digits, digits)
    assert isinstance(all_aligned["conflicting"], float) and np.isnan(all_aligned["conflicting"])
    assert all_aligned["aligned"] == all_aligned["unbiased"] == 4 / 6
    none_aligned = group_metrics(pred, digits, (digits + 1) % 3)
    assert isinstance(none_aligned["aligned"], float) and np.isnan(none_aligned["aligned"])
    assert none_aligned["conflicting"] == 4 / 6
    colours = np.array([0, 2, 2, 1, 1, 2])
    flat = group_metrics(pred, digits, colours)
    column = group_metrics(pred[:, None], digits[:, None], colours[:, None])
    assert column == flat
    assert flat == {"unbiased": 4 / 6, "aligned": 2 / 4, "conflicting": 2 / 2, "worst_group": 0.0, "n_groups": 5}


def test_position_swap_moves_the_centre_of_mass_of_non_square_images_by_hand():
    """The centre of mass (row, column) of each image, summed over channels, by loops, on 5 x 7 images (rows and
    columns cannot be swapped unnoticed); swap_position rolls x by the rounded difference."""
    from aelab.debias.synthesis import _centre_of_mass, swap_position

    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 5, 7, generator=g, dtype=torch.float64) ** 4
    com = _centre_of_mass(x)
    for b in range(4):
        w = x[b].sum(0)
        total = float(w.sum())
        rows = sum(r * float(w[r].sum()) for r in range(5)) / total
        cols = sum(c * float(w[:, c].sum()) for c in range(7)) / total
        torch.testing.assert_close(com[b], torch.tensor([rows, cols], dtype=torch.float64), rtol=1e-12, atol=0)
    donor = torch.roll(x, (1, 2), dims=(2, 3)).flip(0)
    moved = swap_position(x, donor)
    shift = (_centre_of_mass(donor) - com).round().long()
    for b in range(4):
        torch.testing.assert_close(moved[b], torch.roll(x[b], (int(shift[b, 0]), int(shift[b, 1])), dims=(1, 2)))


class _Planted(nn.Module):
    """Predicts class 1 when the image's mean intensity is above `level`, else 0 (a brightness-following model)."""

    def __init__(self, level: float):
        super().__init__()
        self.level = level

    def forward(self, x):
        bright = (x.flatten(1).mean(1) > self.level).float()
        return torch.stack([1 - bright, bright], 1)


def _reliance_by_hand(model, images, n_pairs, seed):
    from aelab.debias.synthesis import SWAPS

    gen = torch.Generator().manual_seed(seed)
    b = model(images).argmax(1)
    i = torch.randint(len(images), (n_pairs,), generator=gen)
    j = torch.randint(len(images), (n_pairs,), generator=gen)
    keep = b[i] != b[j]
    i, j = i[keep], j[keep]
    return {n: float((model(s(images[i], images[j])).argmax(1) == b[j]).float().mean()) for n, s in SWAPS.items()}


def test_bias_reliance_follows_its_seed_and_counts_pairs_exactly_as_documented():
    from aelab.debias.synthesis import bias_reliance

    g = torch.Generator().manual_seed(0)
    images = torch.rand(40, 3, 4, 4, generator=g) * torch.linspace(0.2, 1.0, 40)[:, None, None, None]
    model = _Planted(0.3)
    torch.manual_seed(5)
    got = bias_reliance(model, images)
    assert got == _reliance_by_hand(model, images, 2000, 0) and got["brightness"] > 0.9
    assert bias_reliance(model, images, n_pairs=300, seed=4) == _reliance_by_hand(model, images, 300, 4)
    one = next(s for s in range(100) if len(_kept_pairs(model, images, 2, s)) == 1)
    assert bias_reliance(model, images, n_pairs=2, seed=one) == _reliance_by_hand(model, images, 2, one)
    assert bias_reliance(model, images, n_pairs=2, seed=one)["brightness"] == 1.0
    none = bias_reliance(_Planted(2.0), images)  # one class for every image: no pair to swap
    assert none == {"colour_statistics": 0.0, "brightness": 0.0, "position": 0.0}


def _kept_pairs(model, images, n_pairs, seed):
    gen = torch.Generator().manual_seed(seed)
    b = model(images).argmax(1)
    i = torch.randint(len(images), (n_pairs,), generator=gen)
    j = torch.randint(len(images), (n_pairs,), generator=gen)
    return i[b[i] != b[j]]


def test_donors_are_drawn_uniformly_over_the_whole_pool():
    from aelab import debias as dm

    images = torch.rand(30, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    digits = torch.arange(30) % 3
    synth = dm.Synthesizer(images, digits, torch.arange(30) % 5, "brightness")
    idx = torch.zeros(3000, dtype=torch.long)  # digit 0: its donors are the samples whose donor class is not 0
    donors = synth.donors(idx, torch.Generator().manual_seed(1))
    pool = set(torch.nonzero(torch.arange(30) % 5 != 0).squeeze(1).tolist())
    counts = torch.bincount(donors, minlength=30)
    assert set(torch.nonzero(counts).squeeze(1).tolist()) == pool
    assert counts[sorted(pool)].min() > 3000 / len(pool) * 0.6


def test_colour_statistics_of_a_faint_image():
    """mu = sum_p x(p) / max(sum_p g(p), 1e-6): exact for a faint image whose shape map sums to less than 1."""
    from aelab.debias.synthesis import colour_stats

    x = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    x[0, :, 0, 0] = torch.tensor([0.01, 0.02, 0.005], dtype=torch.float64)
    g, mu = colour_stats(x)
    torch.testing.assert_close(mu, torch.tensor([[0.5, 1.0, 0.25]], dtype=torch.float64))  # / max channel 0.02
    assert float(g.sum()) == 0.02


def test_flag_weights_by_hand_with_a_class_without_flags_and_integer_flags():
    from aelab.debias.reweight import balanced_flag_weights, top_fraction_flags

    digits = np.array([0] * 6 + [1] * 4 + [2] * 2)
    flags = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0])  # 0/1 integers; class 1 has no flagged sample
    w = balanced_flag_weights(flags, digits).numpy()
    raw = np.array([6 / 4] * 2 + [6 / 8] * 4 + [4 / 4] * 4 + [2 / 2] * 2)  # n_c / (2 n_part), or n_c / n_c alone
    np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-15)
    tied = np.zeros(40)
    got = top_fraction_flags(tied, np.zeros(40, dtype=int), 0.25)
    assert got.dtype == bool and np.flatnonzero(got).tolist() == list(range(10))  # stable: the first ten of ties


def test_lff_weights_by_hand_with_an_absent_class_and_tiny_losses():
    from aelab.debias.lff import lff_weights

    digits = torch.tensor([0, 0, 2, 2])  # class 1 of 3 has no sample
    ema_b = torch.tensor([1e-6, 2.0, 1.0, 1e-7], dtype=torch.float64)
    ema_d = torch.tensor([3e-6, 1.0, 4.0, 1e-7], dtype=torch.float64)
    w = lff_weights(ema_b, ema_d, torch.arange(4), digits, 3)
    lb = ema_b / torch.tensor([2.0, 2.0, 1.0, 1.0], dtype=torch.float64)  # (W reads 1e-8 against sums of 1e-7)
    ld = ema_d / torch.tensor([1.0, 1.0, 4.0, 4.0], dtype=torch.float64)  # each class's maximum
    torch.testing.assert_close(w, lb / (lb + ld + 1e-8), rtol=1e-12, atol=0)


def _classifier_by_hand(images, digits, epochs, seed, weights=None, synth=None, p=0.0, lr=1e-3, batch_size=128,
                        n_classes=10, loss="ce", q=0.7, hidden=(100, 100, 100)):  # fmt: skip
    """The documented loops of train_classifier (CE) and train_biased_classifier (GCE), written out."""
    from aelab.debias.classifier import MLPClassifier
    from aelab.debias.gce import gce_loss

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLPClassifier(images[0].numel(), n_classes, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        if weights is None:
            order = torch.randperm(len(images), generator=gen)
        else:
            order = torch.multinomial(weights.double(), len(images), replacement=True, generator=gen)
        for idx in order.split(batch_size):
            x, y = images[idx], digits[idx]
            k = int(round(p * len(idx))) if synth is not None else 0
            if k:
                x = torch.cat([synth.sample(idx[:k], gen), x[k:]])
            logits = model(x)
            value = F.cross_entropy(logits, y) if loss == "ce" else gce_loss(logits, y, q).mean()
            opt.zero_grad()
            value.backward()
            opt.step()
    return model


def _same(a, b):
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_the_classifiers_train_as_documented_with_their_defaults_and_options():
    from aelab import debias as dm
    from aelab.debias.biased import train_biased_classifier
    from aelab.debias.classifier import train_classifier

    g = torch.Generator().manual_seed(2)
    images = torch.rand(300, 3, 2, 2, generator=g)
    digits = torch.arange(300) % 10
    torch.manual_seed(7)
    _same(train_classifier(images, digits, 2, seed=3)[0], _classifier_by_hand(images, digits, 2, 3))
    synth = dm.Synthesizer(images, digits, (digits + 1) % 10, "brightness")
    weights = torch.rand(300, generator=g)
    got = train_classifier(images, digits % 4, 1, seed=3, weights=weights, synthesizer=synth, synth_fraction=0.4,
                           lr=3e-3, batch_size=64, n_classes=4)[0]  # fmt: skip
    _same(got, _classifier_by_hand(images, digits % 4, 1, 3, weights, synth, 0.4, 3e-3, 64, 4))
    torch.manual_seed(8)
    biased = train_biased_classifier(images, digits % 7, seed=5)  # defaults: 3 epochs, q 0.7, Adam 1e-3, 128
    _same(biased, _classifier_by_hand(images, digits % 7, 3, 5, n_classes=7, loss="gce"))
    small = train_biased_classifier(images, digits % 7, epochs=1, q=0.3, seed=5, hidden=(6,))
    _same(small, _classifier_by_hand(images, digits % 7, 1, 5, n_classes=7, loss="gce", q=0.3, hidden=(6,)))


def test_biased_log_probabilities_average_every_epochs_snapshot_of_models_from_seed_seed_plus_1(monkeypatch):
    from aelab.debias import biased as biased_mod
    from aelab.debias.classifier import log_probabilities

    calls = []
    real = biased_mod.train_biased_classifier

    def recording(images, digits, epochs, seed, on_epoch_end, **options):
        calls.append((epochs, seed, options))
        return real(images, digits, epochs=epochs, seed=seed, on_epoch_end=on_epoch_end, **options)

    monkeypatch.setattr(biased_mod, "train_biased_classifier", recording)
    images = torch.rand(40, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    digits = torch.arange(40) % 3
    got = biased_mod.biased_log_probabilities(images, digits, seed=4, q=0.5, hidden=(5,))
    assert calls == [(3, 4 + i, {"q": 0.5, "hidden": (5,)}) for i in range(5)]  # defaults: 5 models, 3 epochs
    snapshots = []
    for i in range(5):
        real(images, digits, epochs=3, seed=4 + i, q=0.5, hidden=(5,),
             on_epoch_end=lambda m: snapshots.append(log_probabilities(m, images)))  # fmt: skip
    np.testing.assert_array_equal(got, np.mean(snapshots, axis=0))


def test_gce_loss_default_q_its_range_and_its_classes_axis():
    from aelab.debias.gce import gce_loss

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], dtype=torch.float64)
    y = torch.tensor([[0], [1]])  # a column of targets is read flat
    p = torch.softmax(logits, 1)[[0, 1], [0, 1]]
    torch.testing.assert_close(gce_loss(logits, y), (1 - p**0.7) / 0.7, rtol=1e-14, atol=0)
    torch.testing.assert_close(gce_loss(logits, y.flatten(), 1.0), 1 - p, rtol=1e-14, atol=0)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=rf"q must be in \(0, 1\], got {bad}"):
            gce_loss(logits, y, bad)


def test_knn_distance_scores_by_loops_with_small_classes_and_the_default_k():
    g = np.random.default_rng(5)
    digits = np.array([0] * 9 + [1] * 3 + [2] * 2 + [3])  # classes of 9, 3, 2 and 1 samples
    features = g.normal(size=(15, 2, 2)).astype(np.float32)
    got = sc.knn_distance_scores(features, digits[:, None])
    f64 = features.reshape(15, -1).astype(np.float64)
    for i in range(15):
        same = [j for j in range(15) if digits[j] == digits[i] and j != i]
        d = sorted(float(np.linalg.norm(f64[i] - f64[j])) for j in same)
        want = float(np.mean(d[: min(5, len(d))])) if d else 0.0
        assert got[i] == pytest.approx(want, rel=1e-9, abs=1e-12), i
    assert sc.knn_distance_scores(features, digits, 6)[0] != got[0]  # k matters: 5 by default


def test_the_detection_experiment_grades_each_method_on_the_kept_test_images_only():
    """debias_steps.grade: class_metrics of the scores, digits and conflict flags of the images `keep` (outside the
    validation images that chose k): the held-out images' scores change nothing, and they do enter without `keep`."""
    from aelab.debias.scores import METHODS
    from aelab.experiments.debias_steps import grade
    from aelab.metrics.ranking import class_metrics

    g = np.random.default_rng(0)
    y = np.repeat(np.arange(2), 20)
    conf = g.random(40) < 0.3
    keep = np.ones(40, bool)
    keep[::4] = False
    scores = {"ae_recon": g.random(40) + conf, "gce_ce": g.random(40)}
    got = grade(scores, keep, y, conf, {"ae_recon": 1.5})
    for name in scores:
        assert got[name] == {"description": METHODS[name], "time_s": {"ae_recon": 1.5}.get(name),
                             **class_metrics(scores[name][keep], y[keep], conf[keep])}  # fmt: skip
    flipped = {name: np.where(keep, s, -s) for name, s in scores.items()}  # the held-out images' scores changed
    assert grade(flipped, keep, y, conf, {}) == {n: {**m, "time_s": None} for n, m in got.items()}
    assert got["ae_recon"] != {
        "description": METHODS["ae_recon"],
        "time_s": 1.5,
        **class_metrics(scores["ae_recon"], y, conf),
    }
