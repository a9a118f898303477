"""Logistic PCA: a low-rank model of Bernoulli pixels, the middle baseline of Hinton & Salakhutdinov (2006)
(8.01 squared error per MNIST test image with 30 components, against 13.87 for PCA).

Each image x_n in [0, 1]^D is modelled by natural parameters theta_n = V u_n + b (V: D x k, u_n: k codes,
b: D biases) and pixel means p_n = sigmoid(theta_n). Fitting maximises the Bernoulli log-likelihood of the
training images (grey levels as soft targets, as the paper treats pixel intensities as probabilities):

    L(U, V, b) = sum_n sum_d  x_nd log p_nd + (1 - x_nd) log(1 - p_nd)

jointly over U, V and b by L-BFGS (full batch), from PCA's solution (V the top-k principal directions, b the
logit of the pixel means). A new image's code u solves the same problem with V and b fixed, which is convex
in u. Its reconstruction is the mean sigmoid(V u + b), scored by the same squared error as PCA's.

References: M. Collins, S. Dasgupta & R. Schapire (2001) A generalization of principal component analysis to
the exponential family, NIPS 14; A. Schein, L. Saul & L. Ungar (2003) A generalized linear model for
principal component analysis of binary data, AISTATS (who fit by alternating bound optimisation; here
L-BFGS on the same likelihood).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-4  # pixel means are clipped to [EPS, 1 - EPS] for the initial biases: a pixel that is always 0 stays finite


class LogisticPCA:
    """Logistic PCA with `n_components` codes, sklearn-style: fit(X), transform(X), inverse_transform(U).

    X: (N, D) arrays or tensors with entries in [0, 1]. max_iter: L-BFGS iterations of the fit (and of each
    transform). l2: a small penalty l2 * (|U|^2 + |V|^2) / N per image that keeps the natural parameters
    finite on pixels that are always 0 (an unpenalised optimum lies at infinity there). Works in float64 on
    the given device."""

    def __init__(
        self, n_components: int = 30, max_iter: int = 300, l2: float = 1e-4, device: str = "cpu", seed: int = 0
    ):
        self.n_components, self.max_iter, self.l2, self.device, self.seed = n_components, max_iter, l2, device, seed
        self.components_: torch.Tensor | None = None  # V, (D, k)
        self.bias_: torch.Tensor | None = None  # b, (D,)
        self.n_iter_ = 0

    def _tensor(self, x) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        return x.reshape(len(x), -1).to(device=self.device, dtype=torch.float64)

    def negative_log_likelihood(self, x, codes, components=None, bias=None) -> float:
        """-L per image (nats), at the given codes and the fitted (or given) V and b."""
        x, u = self._tensor(x), self._tensor(codes)
        v = self.components_ if components is None else self._tensor(components)
        b = self.bias_ if bias is None else torch.as_tensor(bias, dtype=torch.float64, device=self.device)
        logits = torch.addmm(b, u, v.t())
        return float(F.binary_cross_entropy_with_logits(logits, x, reduction="sum")) / len(x)

    def _minimise(self, params: list[torch.Tensor], objective) -> int:
        opt = torch.optim.LBFGS(
            params,
            lr=1,
            max_iter=self.max_iter,
            history_size=20,
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        opt.step(closure)
        return opt.state[params[0]].get("n_iter", 0)

    def fit(self, x) -> LogisticPCA:
        x = self._tensor(x)
        n, d = x.shape
        k = self.n_components
        mean = x.mean(0)
        # PCA's start: V the top-k principal directions; U the projections, rescaled to natural parameters
        _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
        v = (vt[:k].t() * 4.0).clone()  # sigmoid'(0) = 1/4: a unit change of mean is 4 units of theta
        u = ((x - mean) @ vt[:k].t()).clone()
        b = torch.logit(mean.clamp(EPS, 1 - EPS))
        u.requires_grad_(True)
        v.requires_grad_(True)
        b.requires_grad_(True)

        def objective():
            logits = torch.addmm(b, u, v.t())
            nll = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            return (nll + self.l2 * (u.pow(2).sum() + v.pow(2).sum())) / n

        self.n_iter_ = self._minimise([u, v, b], objective)
        self.components_, self.bias_ = v.detach(), b.detach()
        self.train_codes_ = u.detach()
        return self

    def transform(self, x) -> torch.Tensor:
        """The codes u of new images: the maximum of the (penalised) likelihood with V and b fixed."""
        if self.components_ is None:
            raise RuntimeError("fit the model first")
        x = self._tensor(x)
        v, b = self.components_, self.bias_
        # start from the least-squares projection of the logits of the (clipped) pixels
        u = (torch.logit(x.clamp(EPS * 100, 1 - EPS * 100)) - b) @ torch.linalg.pinv(v).t()
        u = u.clone().requires_grad_(True)

        def objective():
            nll = F.binary_cross_entropy_with_logits(torch.addmm(b, u, v.t()), x, reduction="sum")
            return (nll + self.l2 * u.pow(2).sum()) / len(x)

        self._minimise([u], objective)
        return u.detach()

    def inverse_transform(self, codes) -> torch.Tensor:
        """The pixel means sigmoid(V u + b) of codes u."""
        return torch.sigmoid(torch.addmm(self.bias_, self._tensor(codes), self.components_.t()))

    def reconstruct(self, x) -> torch.Tensor:
        return self.inverse_transform(self.transform(x))
