"""Binary bottleneck AE: STE backward rules, model wiring, training, Hamming retrieval and PCA hashing."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from aelab.metrics.retrieval import bits_per_image, encode_codes, hamming_retrieval, pca_sign_codes
from aelab.models.binary import BACKWARD_RULES, BinaryAE, binarize

A = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]
GRAD_OUT = [3.0, -3.0, 0.5, -0.5, 2.0, -2.0, 1.5]


def sigmoid_derivative(a: float, slope: float) -> float:
    """d/da 1 / (1 + exp(-slope a)) = slope e^{-slope a} / (1 + e^{-slope a})^2, written out by hand."""
    e = math.exp(-slope * a)
    return slope * e / (1 + e) ** 2


EXPECTED_GRAD = {
    "identity": GRAD_OUT,
    "clipped": [0.0, -3.0, 0.5, -0.5, 2.0, -2.0, 0.0],  # gate 1[|a| <= 1]: a = +-2 blocked, a = +-1 pass
    "clip-grad-values": [1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 1.0],  # clamp(g, -1, 1), whatever a is
}


def binarize_grad(rule: str, slope: float = 1.0):
    a = torch.tensor(A, dtype=torch.float64, requires_grad=True)
    b = binarize(a, rule, slope=slope)
    (grad,) = torch.autograd.grad(b, a, grad_outputs=torch.tensor(GRAD_OUT, dtype=torch.float64))
    return b.detach(), grad


@pytest.mark.parametrize("rule", BACKWARD_RULES)
def test_forward_is_the_step_function(rule):
    b, _ = binarize_grad(rule)
    assert b.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # a = 0 maps to 0
    assert b.dtype == torch.float64


@pytest.mark.parametrize("rule", ["identity", "clipped", "clip-grad-values"])
def test_backward_matches_hand_computed_gradients(rule):
    _, grad = binarize_grad(rule)
    assert grad.tolist() == EXPECTED_GRAD[rule]


@pytest.mark.parametrize("slope", [1.0, 2.0, 0.5])
def test_sigmoid_adjusted_backward(slope):
    _, grad = binarize_grad("sigmoid-adjusted", slope)
    expected = [g * sigmoid_derivative(a, slope) for a, g in zip(A, GRAD_OUT)]
    assert torch.allclose(grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    if slope == 1.0:
        assert grad[3].item() == -0.5 * 0.25  # sigma'(0) = 1/4 exactly


def test_the_two_clipping_rules_differ():
    """clipped gates on |a| <= 1, clip-grad-values caps |g| <= 1: they disagree both ways."""
    _, gated = binarize_grad("clipped")
    _, capped = binarize_grad("clip-grad-values")
    assert gated[0] == 0 and capped[0] == 1  # a = -2, g = 3: gated off, but capped to 1
    assert gated[1] == -3 and capped[1] == -1  # a = -1, g = -3: passes the gate unchanged, capped to -1


def test_unknown_rule_is_rejected():
    with pytest.raises(ValueError):
        binarize(torch.zeros(3), "hardtanh")
    with pytest.raises(ValueError):
        BinaryAE(input_shape=(1, 8, 8), backward="sign")


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 28, 28), (1, 8, 8), (1, 9, 9), (3, 10, 7)])
def test_shapes_and_binary_codes(shape):
    torch.manual_seed(0)
    model = BinaryAE(input_shape=shape, bits=24, channels=(4, 8))
    x = torch.rand(5, *shape)
    z = model.encode(x)
    assert z.shape == (5, 24) and z.dtype == torch.float32
    assert set(torch.unique(z).tolist()) <= {0.0, 1.0}
    assert len(torch.unique(z).tolist()) == 2  # batchnorm keeps both values in use
    x_hat = model.decode(z)
    assert x_hat.shape == x.shape and x_hat.min() >= 0 and x_hat.max() <= 1
    model.eval()
    assert set(torch.unique(model.encode(x)).tolist()) <= {0.0, 1.0}


def test_float_bottleneck_codes_are_in_unit_interval():
    torch.manual_seed(0)
    model = BinaryAE(input_shape=(1, 8, 8), bits=16, float_bottleneck=True, channels=(4, 8))
    z = model.encode(torch.rand(6, 1, 8, 8))
    assert z.shape == (6, 16) and z.min() > 0 and z.max() < 1
    assert len(torch.unique(z)) > 2
    assert bits_per_image(model) == 16 * 32
    assert bits_per_image(BinaryAE(input_shape=(1, 8, 8), bits=16)) == 16
    with pytest.raises(ValueError):
        encode_codes(model, torch.rand(3, 1, 8, 8))


def test_options_rebuild_the_model():
    model = BinaryAE(
        input_shape=(3, 28, 28), bits=64, backward="sigmoid-adjusted", loss="bce", slope=2.0, channels=(8, 16)
    )
    options = json.loads(json.dumps(model.options))
    twin = BinaryAE(**options)
    twin.load_state_dict(model.state_dict())
    assert twin.options == model.options
    x = torch.rand(4, 3, 28, 28)
    model.eval(), twin.eval()
    assert torch.equal(model(x), twin(x))


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_loss_is_per_image_sum_mean_over_batch(kind):
    torch.manual_seed(1)
    model = BinaryAE(input_shape=(1, 8, 8), bits=16, loss=kind, channels=(4, 8)).double()
    x = torch.rand(7, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        p = model.decode(model.encode(x)).numpy().reshape(7, -1)
        terms = model.loss_terms(x)
    t = x.numpy().reshape(7, -1)
    sse = float(np.mean([np.sum((p[i] - t[i]) ** 2) for i in range(7)]))
    bce = float(np.mean([-np.sum(t[i] * np.log(p[i]) + (1 - t[i]) * np.log(1 - p[i])) for i in range(7)]))
    assert terms["recon_sse"].item() == pytest.approx(sse, rel=1e-10)
    assert terms["loss"].item() == pytest.approx(sse if kind == "mse" else bce, rel=1e-10)
    assert model.loss(x).item() == pytest.approx(terms["loss"].item(), rel=1e-12)


@pytest.mark.parametrize("rule", BACKWARD_RULES)
def test_model_sends_the_selected_surrogate_to_the_encoder(rule):
    """The encoder's last-layer weight gradient equals the chain rule with the rule's surrogate written out
    here: treat the code b = 1[a > 0] as a leaf, get g = dL/db, form dL/da by hand, push it into the encoder."""
    torch.manual_seed(2)
    slope = 1.5
    model = BinaryAE(input_shape=(1, 8, 8), bits=16, backward=rule, slope=slope, loss="bce", channels=(4, 8)).double()
    x = torch.rand(9, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():  # larger decoder weights make some |dL/db| > 1, so clip-grad-values differs from identity
        model.decoder[0].weight.mul_(100)
    model.loss(x).backward()
    got = model.encoder[5].weight.grad.clone()

    a = model.pre_activation(x)
    b = (a.detach() > 0).double().requires_grad_()
    logits = model.decode_logits(b)
    loss = (F.softplus(logits) - x * logits).flatten(1).sum(1).mean()  # BCE with logits, written out
    (g,) = torch.autograd.grad(loss, b)
    ad = a.detach()
    if rule == "identity":
        grad_a = g
    elif rule == "clipped":
        grad_a = torch.where(ad.abs() <= 1, g, torch.zeros_like(g))
        assert (ad.abs() > 1).any() and (ad.abs() <= 1).any()  # batchnorm: a ~ N(0, 1), both sides occur
    elif rule == "sigmoid-adjusted":
        grad_a = g * slope * torch.exp(-slope * ad) / (1 + torch.exp(-slope * ad)) ** 2
    else:
        grad_a = torch.clamp(g, -1, 1)
        assert (g.abs() > 1).any() and (g.abs() <= 1).any()
    (expected,) = torch.autograd.grad(a, model.encoder[5].weight, grad_outputs=grad_a)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-14)
    assert expected.abs().max() > 0


@pytest.fixture(scope="module")
def digits256():
    d = load_digits()
    return torch.tensor(d.images[:256] / 16.0, dtype=torch.float32).unsqueeze(1)


def train_recon(x, steps=150, lr=3e-3, freeze_encoder=False, **options):
    """Full-batch Adam on x; returns (recon before, recon after) as per-image sum of squared error."""
    threads = torch.get_num_threads()
    # one thread: these tiny convs are overhead-bound, and two threads on a busy 2-core box run several times slower
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():  # seed locally, leave the global RNG as it was
            torch.manual_seed(0)
            return _train_recon(x, steps, lr, freeze_encoder, **options)
    finally:
        torch.set_num_threads(threads)


def _train_recon(x, steps, lr, freeze_encoder, **options):
    model = BinaryAE(input_shape=(1, 8, 8), bits=16, channels=(8, 16), **options)
    params = model.decoder.parameters() if freeze_encoder else model.parameters()
    opt = torch.optim.Adam(params, lr=lr)
    with torch.no_grad():
        before = model.loss_terms(x)["recon_sse"].item()
    for _ in range(steps):
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.loss_terms(x)["recon_sse"].item()
    return before, after


@pytest.fixture(scope="module")
def frozen_encoder_recon(digits256):
    """Baseline: same init and steps, but only the decoder learns (random binary projection codes).
    A backward rule that sent no useful gradient to the encoder could not beat this."""
    return train_recon(digits256, freeze_encoder=True)[1]


@pytest.mark.parametrize("rule", BACKWARD_RULES)
def test_training_lowers_reconstruction_error(rule, digits256, frozen_encoder_recon):
    # 256 digits, 16 bits, 150 Adam steps: seed 0 gives ~11.6 -> ~1.6 for every rule, frozen encoder ~2.9
    before, after = train_recon(digits256, backward=rule)
    assert after < 0.25 * before
    assert after < 0.8 * frozen_encoder_recon


def test_float_bottleneck_trains(digits256, frozen_encoder_recon):
    before, after = train_recon(digits256, float_bottleneck=True)
    assert after < 0.25 * before
    assert after < 0.8 * frozen_encoder_recon


def brute_force_retrieval(db, db_labels, queries, query_labels, ks):
    """Python loops: rank the database by (Hamming distance, index); precision@k and AP per query."""
    precision = {k: [] for k in ks}
    aps = []
    for q, ql in zip(queries.tolist(), query_labels.tolist()):
        dists = [sum(int(u != v) for u, v in zip(q, x)) for x in db.tolist()]
        ranking = sorted(range(len(db)), key=lambda i: (dists[i], i))
        rel = [int(db_labels[i] == ql) for i in ranking]
        for k in ks:
            precision[k].append(sum(rel[:k]) / k)
        hits, total = 0, 0.0
        for i, r in enumerate(rel, start=1):
            if r:
                hits += 1
                total += hits / i
        aps.append(total / hits if hits else 0.0)
    out = {f"precision@{k}": sum(v) / len(v) for k, v in precision.items()}
    out["mAP"] = sum(aps) / len(aps)
    return out


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_hamming_retrieval_matches_brute_force(chunk_size):
    rng = np.random.default_rng(0)
    db = rng.integers(0, 2, size=(40, 5))  # 5 bits: many distance ties, so tie-breaking is exercised
    queries = rng.integers(0, 2, size=(9, 5))
    db_labels = rng.integers(0, 3, size=40)
    query_labels = rng.integers(0, 4, size=9)  # label 3 never occurs in the database: AP = 0
    assert (query_labels == 3).any()
    ks = (1, 5, 10, 40)
    got = hamming_retrieval(db, db_labels, queries, query_labels, ks=ks, chunk_size=chunk_size)
    expected = brute_force_retrieval(db, db_labels, queries, query_labels, ks)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def test_hamming_retrieval_accepts_tensors_and_checks_input():
    codes = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.float32)
    labels = torch.tensor([0, 1, 0])
    # query [0, 1, 1] with label 0: ranking idx 0 (d=0, rel), idx 1 (d=1, not), idx 2 (d=2, rel)
    out = hamming_retrieval(codes, labels, codes[:1], labels[:1], ks=(1, 2))
    assert out == {"precision@1": 1.0, "precision@2": 0.5, "mAP": pytest.approx((1 + 2 / 3) / 2)}
    with pytest.raises(ValueError):
        hamming_retrieval(codes, labels, codes, labels, ks=(4,))
    with pytest.raises(ValueError):
        hamming_retrieval(codes * 2, labels, codes, labels, ks=(1,))


def test_pca_sign_codes_match_sklearn_pca_up_to_bit_flips(digits256):
    x = digits256.numpy().reshape(256, -1)
    train, test = x[:200], x[200:]
    bits = 8
    train_codes, test_codes = pca_sign_codes(train, test, bits)
    assert train_codes.shape == (200, bits) and test_codes.shape == (56, bits)
    assert set(np.unique(train_codes)) <= {0, 1}
    pca = PCA(n_components=bits, svd_solver="full").fit(train)
    ref_train = (pca.transform(train) > 0).astype(np.uint8)
    ref_test = (pca.transform(test) > 0).astype(np.uint8)
    for j in range(bits):  # each bit equals sklearn's or its complement, consistently on train and test
        flipped = train_codes[0, j] != ref_train[0, j]
        assert np.array_equal(train_codes[:, j], 1 - ref_train[:, j] if flipped else ref_train[:, j])
        assert np.array_equal(test_codes[:, j], 1 - ref_test[:, j] if flipped else ref_test[:, j])


def test_pca_is_fitted_on_train_only(digits256):
    x = digits256.numpy().reshape(256, -1)
    a_train, a_test = pca_sign_codes(x[:200], x[200:], 8)
    b_train, b_test = pca_sign_codes(x[:200], x[200:210] * 0 + 1, 8)  # a very different test set
    assert np.array_equal(a_train, b_train)
    # a test image identical to a train image gets that train image's code
    _, same = pca_sign_codes(x[:200], x[5:6], 8)
    assert np.array_equal(same[0], a_train[5])


def test_encode_codes_is_eval_mode_and_batched(digits256):
    torch.manual_seed(0)
    model = BinaryAE(input_shape=(1, 8, 8), bits=16, channels=(4, 8))
    model.train()(digits256)  # update the batchnorm running statistics once
    codes = encode_codes(model, digits256, batch_size=50)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        direct = model.encode(digits256)
    assert codes.dtype == np.uint8 and np.array_equal(codes, direct.numpy().astype(np.uint8))
