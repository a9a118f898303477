"""Logistic PCA against data drawn from a known low-rank logistic model, and against PCA."""

import numpy as np
import pytest
import torch

from aelab.models.logistic_pca import LogisticPCA

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def low_rank_bernoulli():
    """X ~ Bernoulli(sigmoid(U V^T + b)) with rank 3, 1000 images of 200 pixels."""
    g = torch.Generator().manual_seed(0)
    n, d, k = 1000, 200, 3
    u = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    v = torch.randn(d, k, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    p = torch.sigmoid(u @ v.T + b)
    return torch.bernoulli(p, generator=g), p, u, v, b


def test_recovers_the_generating_subspace_and_probabilities(low_rank_bernoulli):
    x, p, u, v, b = low_rank_bernoulli
    model = LogisticPCA(3, max_iter=500).fit(x)
    # the fit maximises the likelihood: it must beat the generating parameters on the data it was fitted to
    assert model.negative_log_likelihood(x, model.train_codes_) < model.negative_log_likelihood(x, u, v, b)
    # the span of V is the generating one (all principal angles small)
    q_true, q_fit = torch.linalg.qr(v)[0], torch.linalg.qr(model.components_)[0]
    assert torch.linalg.svdvals(q_true.T @ q_fit).min() > 0.98
    # the fitted probabilities are close to the true ones, and much closer than rank-3 PCA's reconstruction
    fitted = model.inverse_transform(model.train_codes_)
    err = (fitted - p).abs().mean().item()
    from sklearn.decomposition import PCA

    pca = PCA(3).fit(x.numpy())
    pca_err = np.abs(pca.inverse_transform(pca.transform(x.numpy())) - p.numpy()).mean()
    assert err < 0.05 and err < 0.5 * pca_err


def test_transform_of_new_images_solves_the_convex_code_problem(low_rank_bernoulli):
    """A new image's code: the gradient of its penalised likelihood in u vanishes, and it matches a direct
    Newton solve (the problem is convex in u with V and b fixed)."""
    x, *_ = low_rank_bernoulli
    model = LogisticPCA(3, max_iter=300).fit(x[:800])
    codes = model.transform(x[800:])
    v, b = model.components_, model.bias_
    u = torch.zeros(200, 3, dtype=torch.float64)
    for _ in range(30):  # Newton's method on each image's code, independently of the L-BFGS in transform
        p = torch.sigmoid(u @ v.T + b)
        grad = (p - x[800:]) @ v + 2 * model.l2 * u
        hess = torch.einsum("nd,di,dj->nij", p * (1 - p), v, v) + 2 * model.l2 * torch.eye(3, dtype=torch.float64)
        u = u - torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(codes, u, atol=1e-4, rtol=0)


def test_reconstruction_error_is_below_pca_on_digits():
    """On grey-level digits logistic PCA's mean reconstruction has a lower squared error than PCA's with the
    same number of components (the ordering of the paper's 13.87 vs 8.01)."""
    from aelab.data import load

    xtr = load("mnist5k", "train")[0][:1000].flatten(1)
    xte = load("mnist5k", "test")[0][:300].flatten(1)
    from sklearn.decomposition import PCA

    pca = PCA(10).fit(xtr.numpy())
    pca_sse = ((pca.inverse_transform(pca.transform(xte.numpy())) - xte.numpy()) ** 2).sum(1).mean()
    model = LogisticPCA(10, max_iter=100).fit(xtr)
    lpca_sse = ((model.reconstruct(xte) - xte.double()) ** 2).sum(1).mean().item()
    assert lpca_sse < pca_sse
