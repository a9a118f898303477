"""RBM, greedy pretraining and the unrolled deep autoencoder, checked against exact enumeration,
quadrature and Monte-Carlo (float64 for exactness)."""

import itertools
import math

import pytest
import torch

from aelab.models.deep_ae import DeepAutoencoder
from aelab.models.rbm import RBM, pretrain_stack, up_down_mean_field

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: threads only add overhead


def binary_states(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=D)


def random_rbm(n_visible=6, n_hidden=4, hidden="bernoulli", scale=1.0, seed=0) -> RBM:
    g = torch.Generator().manual_seed(seed)
    rbm = RBM(n_visible, n_hidden, hidden=hidden).to(D)
    with torch.no_grad():
        rbm.weight.copy_(scale * torch.randn(n_visible, n_hidden, generator=g, dtype=D))
        rbm.visible_bias.copy_(0.5 * torch.randn(n_visible, generator=g, dtype=D))
        rbm.hidden_bias.copy_(0.5 * torch.randn(n_hidden, generator=g, dtype=D))
    return rbm


def energy(rbm: RBM, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """E(v, h) for every pair, (Nv, Nh), written out from the definition."""
    W, b, c = rbm.weight.detach(), rbm.visible_bias.detach(), rbm.hidden_bias.detach()
    e = -(v @ b)[:, None] - (h @ c)[None, :] - torch.einsum("vi,ij,hj->vh", v, W, h)
    if rbm.hidden == "gaussian":
        e = e + 0.5 * (h * h).sum(1)[None, :]
    return e


def energy_autograd(rbm: RBM, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The Bernoulli-hidden E(v, h) again, as a differentiable function of the parameters."""
    return -(v @ rbm.visible_bias)[:, None] - (h @ rbm.hidden_bias)[None, :] - v @ rbm.weight @ h.t()


def exact_joint(rbm: RBM):
    """All binary (v, h), the joint p(v, h) (Nv, Nh) and log Z, by enumeration."""
    v, h = binary_states(rbm.n_visible), binary_states(rbm.n_hidden)
    neg_e = -energy(rbm, v, h)
    log_z = torch.logsumexp(neg_e.flatten(), 0)
    return v, h, (neg_e - log_z).exp(), log_z


def exact_log_likelihood(rbm: RBM, data: torch.Tensor) -> float:
    v, h, _, log_z = exact_joint(rbm)
    neg_e = -energy(rbm, data, h)
    return (torch.logsumexp(neg_e, 1) - log_z).mean().item()


# ----- Bernoulli RBM: exact checks ----------------------------------------------------------------
def test_free_energy_matches_enumeration():
    rbm = random_rbm()
    v, h = binary_states(6), binary_states(4)
    brute = -torch.logsumexp(-energy(rbm, v, h), 1)
    diff = rbm.free_energy(v).detach() - brute
    assert (diff - diff[0]).abs().max() < 1e-12  # constant across v ...
    assert diff.abs().max() < 1e-12  # ... and zero: F is exact, no constant dropped


def test_conditionals_match_enumeration():
    rbm = random_rbm()
    v, h, joint, _ = exact_joint(rbm)
    p_h_given_v = joint / joint.sum(1, keepdim=True)  # (Nv, Nh)
    p_v_given_h = joint / joint.sum(0, keepdim=True)
    mean_h, _ = rbm.sample_h(v)
    prob_v, sample_v = rbm.sample_v(h)
    assert torch.allclose(mean_h, p_h_given_v @ h, atol=1e-12)
    assert torch.allclose(prob_v, p_v_given_h.t() @ v, atol=1e-12)
    assert set(sample_v.unique().tolist()) <= {0.0, 1.0}


def test_pseudo_likelihood_is_unbiased():
    rbm = random_rbm()
    v, _, joint, _ = exact_joint(rbm)
    p_v = joint.sum(1)
    index = {tuple(row.tolist()): i for i, row in enumerate(v)}
    x = v[[5, 22, 63]]
    exact = torch.zeros(3, dtype=D)
    for n, row in enumerate(x):  # sum_i log p(v_i | v_-i) from the exact marginal
        for i in range(6):
            flipped = row.clone()
            flipped[i] = 1 - flipped[i]
            a, b = p_v[index[tuple(row.tolist())]], p_v[index[tuple(flipped.tolist())]]
            exact[n] += torch.log(a / (a + b))
    reps = 20000
    estimate = rbm.pseudo_likelihood(x.repeat(reps, 1), torch.Generator().manual_seed(0)).view(reps, 3)
    se = estimate.std(0) / math.sqrt(reps)
    assert ((estimate.mean(0) - exact).abs() < 5 * se + 1e-9).all()


def exact_gradient_pieces(rbm: RBM, data: torch.Tensor):
    """Exact <v h^T>_data and <v h^T>_model (plus first moments) by enumeration."""
    v, h, joint, _ = exact_joint(rbm)
    h_given_data = torch.sigmoid(data @ rbm.weight.detach() + rbm.hidden_bias.detach())
    data_vh = data.t() @ h_given_data / len(data)
    model_vh = v.t() @ joint @ h
    return (data_vh, data.mean(0), h_given_data.mean(0)), (model_vh, joint.sum(1) @ v, joint.sum(0) @ h)


def test_moment_gradient_equals_autograd_of_exact_log_likelihood():
    rbm = random_rbm()
    data = binary_states(6)[[1, 7, 12, 33, 40, 41, 58, 63]]
    (dvh, dv, dh), (mvh, mv, mh) = exact_gradient_pieces(rbm, data)
    h = binary_states(4)
    v = binary_states(6)
    # mean log p(data) = mean_n logsumexp_h -E(v_n, h) - logsumexp_{v,h} -E(v, h), differentiated by autograd
    ll = torch.logsumexp(-energy_autograd(rbm, data, h), 1).mean() - torch.logsumexp(
        -energy_autograd(rbm, v, h).flatten(), 0
    )
    gW, gb, gc = torch.autograd.grad(ll, [rbm.weight, rbm.visible_bias, rbm.hidden_bias])
    assert torch.allclose(gW, dvh - mvh, atol=1e-12)
    assert torch.allclose(gb, dv - mv, atol=1e-12)
    assert torch.allclose(gc, dh - mh, atol=1e-12)


def test_long_chain_and_cd1_estimates_match_exact_expectations():
    rbm = random_rbm()
    data = binary_states(6)[[1, 7, 12, 33, 40, 41, 58, 63]]
    (dvh, dv, dh), (mvh, mv, mh) = exact_gradient_pieces(rbm, data)
    g = torch.Generator().manual_seed(1)
    n_chains = 20000
    se = 0.5 / math.sqrt(n_chains)  # bound on the standard error of a mean of products in [0, 1]

    # PCD / long Gibbs chains, unbiased "samples" end: -> the exact log-likelihood gradient
    chain = torch.bernoulli(torch.full((n_chains, 6), 0.5, dtype=D), generator=g)
    stats = rbm.cd_step(data, k=200, persistent_chain=chain, negative_phase="samples", generator=g)
    assert (stats.weight - (dvh - mvh)).abs().max() < 6 * se
    assert (stats.visible_bias - (dv - mv)).abs().max() < 6 * se
    assert (stats.hidden_bias - (dh - mh)).abs().max() < 6 * se

    # Hinton's mean-field end (probabilities): the chain estimates E_{h~p(h)}[p(v|h) sigmoid(p(v|h) W + c)^T]
    v_all, h_all, joint, _ = exact_joint(rbm)
    W, b, c = rbm.weight.detach(), rbm.visible_bias.detach(), rbm.hidden_bias.detach()
    p_h = joint.sum(0)
    v_mf = torch.sigmoid(h_all @ W.t() + b)
    h_mf = torch.sigmoid(v_mf @ W + c)
    mf_vh = (v_mf * p_h[:, None]).t() @ h_mf
    stats = rbm.cd_step(data, k=200, persistent_chain=stats.chain, generator=g)
    assert (stats.weight - (dvh - mf_vh)).abs().max() < 6 * se
    assert (mf_vh - mvh).abs().max() > 10 * se  # the heuristic really is biased here, so the check has teeth

    # CD-1 from the data (Hinton's rbm.m): exact expectation over h0 ~ p(h | v0)
    reps = n_chains // len(data)
    p_h0 = torch.sigmoid(data @ W + c)  # (n, H)
    p_states = torch.prod(torch.where(h_all[None] == 1, p_h0[:, None], 1 - p_h0[:, None]), -1)  # (n, 16)
    cd1_vh = torch.einsum("ns,si,sj->ij", p_states, v_mf, h_mf) / len(data)
    stats = rbm.cd_step(data.repeat(reps, 1), k=1, generator=g)
    assert (stats.weight - (dvh - cd1_vh)).abs().max() < 6 * se
    # and CD-1 is not the exact gradient: the estimates differ by much more than the noise
    assert (cd1_vh - mvh).abs().max() > 20 * se


def toy_data(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0], [1, 0, 0, 0, 1, 1]], dtype=D)
    x = prototypes[torch.randint(0, 3, (n,), generator=g)]
    flip = torch.rand(n, 6, generator=g, dtype=D) < 0.05
    return torch.where(flip, 1 - x, x)


# CD-1 with Hinton's settings; PCD (Tieleman) wants less momentum with so few chains. (PCD from this
# start is slower than CD-1 because it follows the true gradient, which crosses a plateau: exact
# gradient ascent at lr 0.1, momentum 0.5 is at -3.18 nats after 300 steps.)
@pytest.mark.parametrize("options", [{}, dict(persistent=True, momentum=(0.5, 0.5))])
def test_fit_raises_exact_log_likelihood(options):
    data = toy_data()
    g = torch.Generator().manual_seed(0)
    rbm = RBM(6, 4, generator=g).to(D)
    before = exact_log_likelihood(rbm, data)
    history = rbm.fit(data, epochs=20, batch_size=50, generator=g, **options)  # 400 updates
    after = exact_log_likelihood(rbm, data)
    # start ~ uniform (-6 log 2 = -4.16 nats); the data entropy is log 3 + 6 H(0.05) = 2.29 nats
    assert before < -4.0 and after > -2.8, (before, after)
    assert len(history) == 20 and history[-1]["recon_error"] < history[0]["recon_error"]


# ----- fit bookkeeping ------------------------------------------------------------------------------
def test_fit_update_equals_cd_step_with_momentum_and_weight_cost():
    """Two batches of fit == two cd_step estimates combined by Hinton's update rule, by hand."""
    data = toy_data(40)
    lr, wc, m = 0.3, 0.01, 0.5
    rbm = random_rbm(scale=0.3)
    ref = random_rbm(scale=0.3)
    g_fit, g_ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    rbm.fit(data, epochs=1, batch_size=20, lr=lr, weight_cost=wc, momentum=(m, 0.9), generator=g_fit, monitor_size=None)
    order = torch.randperm(40, generator=g_ref)  # fit draws the shuffle first
    inc = [torch.zeros_like(p) for p in (ref.weight, ref.visible_bias, ref.hidden_bias)]
    for batch in (order[:20], order[20:]):
        s = ref.cd_step(data[batch], generator=g_ref)
        with torch.no_grad():
            for p, i, grad, decay in zip(
                (ref.weight, ref.visible_bias, ref.hidden_bias),
                inc,
                (s.weight, s.visible_bias, s.hidden_bias),
                (wc, 0, 0),
            ):
                i.copy_(m * i + lr * (grad - decay * p))
                p.add_(i)
    for p, q in zip(rbm.parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-12)


def test_allreduce_hook_sees_statistics_and_matches_fused_path():
    data = toy_data(200)
    calls = []

    def hook(tensors):
        calls.append([t.shape for t in tensors])

    a, b = random_rbm(scale=0.3), random_rbm(scale=0.3)
    a.fit(data, epochs=3, batch_size=50, k=2, persistent=True, generator=torch.Generator().manual_seed(5))
    b.fit(
        data, epochs=3, batch_size=50, k=2, persistent=True, generator=torch.Generator().manual_seed(5), allreduce=hook
    )
    assert len(calls) == 12 and calls[0] == [torch.Size([6, 4]), torch.Size([6]), torch.Size([4])]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-12)
    # a hook that zeroes the statistics leaves only the weight cost acting
    c = random_rbm(scale=0.3)
    w0 = c.weight.detach().clone()
    c.fit(
        data,
        epochs=1,
        batch_size=200,
        lr=0.1,
        weight_cost=0.5,
        generator=torch.Generator().manual_seed(5),
        allreduce=lambda ts: [t.zero_() for t in ts],
    )
    assert torch.allclose(c.weight, w0 * (1 - 0.1 * 0.5), atol=1e-14)


def test_same_seed_same_weights():
    data = toy_data(300).float()

    def train(seed):
        g = torch.Generator().manual_seed(seed)
        rbm = RBM(6, 5, generator=g)
        rbm.fit(data, epochs=2, batch_size=32, generator=g, persistent=True, k=2)
        return rbm.weight.detach()

    assert torch.equal(train(7), train(7))
    assert not torch.equal(train(7), train(8))


def test_fit_reduces_reconstruction_error_on_digits():
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    rbm = RBM(64, 100, generator=g)
    history = rbm.fit(x, epochs=6, batch_size=100, generator=g)
    errors = [r["recon_error"] for r in history]
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.7 * errors[0], errors
    assert history[-1]["pseudo_likelihood"] > history[0]["pseudo_likelihood"]
    assert history[0]["momentum"] == 0.5 and history[5]["momentum"] == 0.9


# ----- Gaussian (linear) hidden units -------------------------------------------------------------
def test_gaussian_hidden_conditionals():
    rbm = random_rbm(3, 2, hidden="gaussian", scale=0.7)
    W, _b, c = rbm.weight.detach(), rbm.visible_bias.detach(), rbm.hidden_bias.detach()
    v = binary_states(3)
    n = 40000
    mean, sample = rbm.sample_h(v.repeat_interleave(n, 0), torch.Generator().manual_seed(0))
    sample = sample.view(8, n, 2)
    expected = torch.stack([c + sum(v[k, i] * W[i] for i in range(3)) for k in range(8)])
    assert torch.allclose(mean.view(8, n, 2)[:, 0], expected, atol=1e-12)
    assert (sample.mean(1) - expected).abs().max() < 5 / math.sqrt(n)
    assert (sample.var(1) - 1).abs().max() < 5 * math.sqrt(2 / n)
    assert abs(torch.corrcoef(sample[0].t())[0, 1]) < 5 / math.sqrt(n)  # independent given v
    # p(v_i = 1 | h) = exp(-E(v_i=1)) / (exp(-E(v_i=1)) + exp(-E(v_i=0))) from the energy
    h = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=D)
    prob, _ = rbm.sample_v(h)
    for i in range(3):
        on, off = torch.zeros(1, 3, dtype=D), torch.zeros(1, 3, dtype=D)
        on[0, i] = 1
        e_on, e_off = energy(rbm, on, h)[0], energy(rbm, off, h)[0]
        assert torch.allclose(prob[:, i], torch.sigmoid(e_off - e_on), atol=1e-12)


def test_gaussian_free_energy_matches_quadrature():
    rbm = random_rbm(3, 2, hidden="gaussian", scale=0.7)
    v = binary_states(3)
    grid = torch.linspace(-14, 14, 1401, dtype=D)
    step = (grid[1] - grid[0]).item()
    h = torch.cartesian_prod(grid, grid)
    integral = torch.logsumexp(-energy(rbm, v, h), 1) + 2 * math.log(step)  # rectangle rule in 2-D
    diff = rbm.free_energy(v).detach() - (-integral)
    assert (diff - diff[0]).abs().max() < 1e-9
    assert diff.abs().max() < 1e-9  # the -(H/2) log 2 pi constant is included


# ----- deep autoencoder --------------------------------------------------------------------------
def random_stack(sizes, seed=0, dtype=D):
    g = torch.Generator().manual_seed(seed)
    rbms = []
    for i, (nv, nh) in enumerate(zip(sizes[:-1], sizes[1:])):
        rbm = RBM(nv, nh, hidden="gaussian" if i == len(sizes) - 2 else "bernoulli", generator=g).to(dtype)
        with torch.no_grad():  # non-zero biases, so a bias put in the wrong place shows
            rbm.visible_bias.normal_(generator=g)
            rbm.hidden_bias.normal_(generator=g)
        rbms.append(rbm)
    return rbms


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unrolled_autoencoder_equals_up_down_mean_field(dtype):
    rbms = random_stack([64, 40, 20, 10, 3], dtype=dtype)
    model = DeepAutoencoder.from_rbms(rbms, input_shape=(1, 8, 8))
    x = torch.rand(17, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=dtype)
    with torch.no_grad():
        assert torch.equal(model(x).flatten(1), up_down_mean_field(rbms, x.flatten(1)))
        z = x.flatten(1)
        for rbm in rbms:
            z = rbm.hidden_mean(z)
        assert torch.equal(model.encode(x), z)  # the linear code of the Gaussian top RBM
    # a stack with the weights untied afterwards: changing the decoder leaves the encoder alone
    with torch.no_grad():
        model.decoder_weights[0].add_(1.0)
    assert torch.equal(model.encode(x), z) and not torch.equal(model.encoder_weights[0], model.decoder_weights[0])


def test_pretrain_then_unroll_digits():
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data[:500] / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    model = DeepAutoencoder(input_shape=(1, 8, 8), layers=[64, 32, 16, 2])
    logs = []
    rbms = model.pretrain(x, epochs_per_layer=2, generator=torch.Generator().manual_seed(0), log=logs.append)
    assert [r.hidden for r in rbms] == ["bernoulli", "bernoulli", "gaussian"]
    assert any("lr 0.001" in line for line in logs)  # the linear top layer uses Hinton's small rate
    with torch.no_grad():
        assert torch.equal(model(x).flatten(1), up_down_mean_field(rbms, x.flatten(1)))
    # reproducible pretraining
    again = pretrain_stack(x.flatten(1), sizes=[64, 32, 16, 2], epochs=2, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(rbms, again))


def test_deep_ae_losses_options_and_presets():
    torch.manual_seed(0)
    x = torch.rand(5, 1, 8, 8, dtype=D)
    for loss in ("bce", "mse"):
        model = DeepAutoencoder(input_shape=(1, 8, 8), layers=(64, 20, 4), loss=loss).to(D)
        x_hat = model(x)
        assert x_hat.shape == x.shape and model.encode(x).shape == (5, 4)
        if loss == "bce":
            per_image = -(x * x_hat.log() + (1 - x) * (1 - x_hat).log()).flatten(1).sum(1)
        else:
            per_image = (x - x_hat).pow(2).flatten(1).sum(1)
        assert torch.allclose(model.loss(x), per_image.mean(), atol=1e-10)
        rebuilt = DeepAutoencoder(**model.options)
        assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    with pytest.raises(ValueError):
        DeepAutoencoder(input_shape=(1, 8, 8), layers=(64, 20, 4), init="pca")
    for preset, sizes in [
        ("hinton2006", [784, 1000, 500, 250, 30]),
        ("assignment", [784, 2000, 1000, 500, 30]),
        ("map2d", [784, 1000, 500, 250, 2]),
    ]:
        model = DeepAutoencoder(layers=preset)
        assert model.layers == sizes and model.options["layers"] == preset
    with pytest.raises(ValueError):
        DeepAutoencoder(input_shape=(1, 8, 8), layers="hinton2006")
    with pytest.raises(ValueError):  # the unrolled net needs a linear top layer
        DeepAutoencoder.from_rbms([RBM(64, 10), RBM(10, 3)], input_shape=(1, 8, 8))


def test_bernoulli_sampler_frequencies():
    from aelab.models.rbm import bernoulli_into

    p = torch.tensor([0.0, 1e-3, 0.3, 0.5, 0.999, 1.0]).repeat(200000, 1)
    x = bernoulli_into(p, torch.empty_like(p), torch.Generator().manual_seed(0))
    freq = x.mean(0)
    assert freq[0] == 0 and freq[-1] == 1  # exact at the ends
    se = (p[0] * (1 - p[0]) / p.shape[0]).sqrt()
    assert ((freq - p[0]).abs() <= 5 * se + 2**-17).all(), freq
    assert set(x.unique().tolist()) == {0.0, 1.0}
    # independent across positions (the four 16-bit lanes of one 64-bit draw included)
    y = bernoulli_into(torch.full((100000, 8), 0.5), torch.empty(100000, 8), torch.Generator().manual_seed(1))
    corr = torch.corrcoef(y.t()) - torch.eye(8)
    assert corr.abs().max() < 5 / math.sqrt(100000)


def test_trainer_interface_init_rbm():
    """create("deep-ae", init="rbm") -> needs_pretraining; pretrain(x, seed=) is reproducible and loads the stack."""
    from aelab.models import create

    x = toy_digits(300)
    options = dict(input_shape=[1, 8, 8], layers=[64, 24, 2], init="rbm", pretrain_epochs=2)
    model, again = create("deep-ae", **options), create("deep-ae", **options)
    assert model.needs_pretraining and not create("deep-ae", input_shape=[1, 8, 8], layers=[64, 2]).needs_pretraining
    rbms = model.pretrain(x, seed=3)
    again.pretrain(x, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    with torch.no_grad():
        assert torch.equal(model(x).flatten(1), up_down_mean_field(rbms, x.flatten(1)))
    rebuilt = create("deep-ae", **model.options)
    assert rebuilt.options == model.options and rebuilt.needs_pretraining


def toy_digits(n: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data[:n] / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
