"""Restricted Boltzmann machines, and greedy stack pretraining (Hinton & Salakhutdinov 2006).

RBM maths
---------
Visible units v (binary, or probabilities in [0, 1] used as soft data, as in Hinton's code),
hidden units h, weights W (n_visible x n_hidden), visible biases b, hidden biases c.

Bernoulli hidden units, h in {0, 1}^H (rbm.m):
    E(v, h)        = -v.b - h.c - v W h
    p(h_j = 1 | v) = sigmoid(c_j + (v W)_j)
    p(v_i = 1 | h) = sigmoid(b_i + (h W^T)_i)
    F(v)           = -log sum_h exp(-E(v, h)) = -v.b - sum_j softplus(c_j + (v W)_j)

Gaussian ("linear") hidden units with unit variance, h in R^H (rbmhidlinear.m):
    E(v, h)        = -v.b - h.c - v W h + ||h||^2 / 2
    h | v          ~ N(c + v W, I)
    p(v_i = 1 | h) = sigmoid(b_i + (h W^T)_i)
    F(v)           = -log int exp(-E(v, h)) dh = -v.b - ||c + v W||^2 / 2 - (H / 2) log(2 pi)
(`free_energy` returns F exactly, constant included, for both kinds.)

With p(v) = exp(-F(v)) / Z, the log-likelihood gradient is
    d log p(v) / dW = v E[h | v]^T - E_model[v h^T],
    d log p(v) / db = v - E_model[v],      d log p(v) / dc = E[h | v] - E_model[h].
Contrastive divergence CD-k (Hinton 2002) replaces the model expectation by statistics taken k
Gibbs steps after starting the chain at the data; persistent CD (PCD, Tieleman 2008) keeps the
chains running from one update to the next. As in Hinton's rbm.m the positive phase uses the
hidden probabilities (means), and the negative phase uses the visible *probabilities* at the chain
end and the hidden probabilities they imply ("mean-field" end, `negative_phase="probabilities"`).
That end is a biased but low-variance heuristic; `negative_phase="samples"` instead pairs a
visible *sample* with its hidden means, which is an unbiased (Rao-Blackwellised) estimate of
E_model[v h^T] once the chain has mixed, the right choice for PCD.

Training follows Hinton's code: learning rate 0.1 (0.001 for Gaussian hidden units), weight cost
2e-4 on the weights only, momentum 0.5 for the first 5 epochs then 0.9, CD-1, batches of 100:
    inc_W <- m inc_W + lr (<v h^T>_data - <v h^T>_recon - weight_cost W),   W <- W + inc_W.
The statistics are plain batched matrix products (no autograd): per update five products of the
size (batch x n_visible x n_hidden): v0 W, h0 W^T, v1 W and the one fused product
[v0; v1]^T [h0; -h1] that costs two. Binary samples compare with 16-bit uniforms (`bernoulli_into`),
which keeps the serial random-number generator a few per cent of a step.

Precision (`fit(precision=...)`, `cd_step(precision=...)`; aelab.precision): the products of a CD update in
fp32; in tf32 (CUDA tensor cores, float32 accumulation); or in bf16, the operands rounded to bfloat16, the
products accumulated in float32 by the GEMM and rounded to bfloat16 once, then the biases added and the
statistics accumulated in float32. The parameters, the momentum increments and the sampling stay float32.
Every product a . w of length K is then within (2u + u^2 + K 2^-24)(|a| . |w|) + u |a . w| of the exact one
(u = 2^-9 for bf16, 2^-11 for tf32): the test checks the CD statistics against float64 with that bound.

Greedy stack pretraining for the deep autoencoder: `pretrain_stack` (see deep_ae.py).

References: G. E. Hinton (2002) Training products of experts by minimizing contrastive divergence,
Neural Computation 14:1771; T. Tieleman (2008) Training restricted Boltzmann machines using
approximations to the likelihood gradient, ICML; G. E. Hinton & R. R. Salakhutdinov (2006)
Reducing the dimensionality of data with neural networks, Science 313:504, and their Matlab code
(rbm.m, rbmhidlinear.m, mnistdeepauto.m); sklearn.neural_network.BernoulliRBM for the
pseudo-likelihood.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..precision import PRECISIONS, exact_float32, float32_matmul
from .ae import check_positive_sizes

HIDDEN_KINDS = ("bernoulli", "gaussian")
NEGATIVE_PHASES = ("probabilities", "samples")
# Hinton's learning rates: rbm.m (Bernoulli hidden) and rbmhidlinear.m (linear hidden)
DEFAULT_LR = {"bernoulli": 0.1, "gaussian": 0.001}


def bernoulli_into(prob: torch.Tensor, out: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A Bernoulli(prob) sample written into `out` (which must not be `prob`): out = 1.0 where u < prob.

    The serial CPU generator is the one part of a CD step that does not run on all cores, so the
    uniforms are 16-bit: u = (k + 1/2) / 2^16 with k uniform on {0, ..., 2^16 - 1}, four k per 64-bit
    draw. Then P(out = 1) = round(2^16 prob) / 2^16, within 2^-17 = 7.6e-6 of prob (exact at 0 and 1),
    far below the noise of any CD estimate. This is ~2x faster than torch.rand + compare and ~8x
    faster than Tensor.bernoulli_(prob) on CPU.
    """
    n = out.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=out.device)
    words.random_(-(2**63), None, generator=generator)  # the full 64-bit range: all four lanes uniform
    out.view(-1).copy_(words.view(torch.int16)[:n])  # k - 2^15, exactly representable
    return out.add_(32768.5).mul_(2.0**-16).lt_(prob)


@dataclass
class CDStatistics:
    """One CD/PCD estimate of the log-likelihood gradient, averaged over the batch (ascent direction)."""

    weight: torch.Tensor  # <v h^T>_data - <v h^T>_chain end   (n_visible, n_hidden)
    visible_bias: torch.Tensor  # <v>_data - <v>_chain end            (n_visible,)
    hidden_bias: torch.Tensor  # <h>_data - <h>_chain end            (n_hidden,)
    reconstruction: torch.Tensor  # p(v | h0 sample): the one-step mean-field reconstruction of v0
    chain: torch.Tensor | None  # binary visible sample at the chain end (the next PCD state); None for
    # CD with the mean-field end, which samples no visible state


class RBM(nn.Module):
    """RBM with Bernoulli visible units and Bernoulli or unit-variance Gaussian hidden units.

    Initialisation as in Hinton's code: W = 0.1 N(0, 1), b = c = 0. `generator` (if given) is used
    for the initial weights and is the default generator for sampling and `fit`; the parameters are
    created on its device unless `device` says otherwise.
    """

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        hidden: str = "bernoulli",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        check_positive_sizes(n_visible=n_visible, n_hidden=n_hidden)
        if hidden not in HIDDEN_KINDS:
            raise ValueError(f"unknown hidden unit kind {hidden!r}; choose from {', '.join(HIDDEN_KINDS)}")
        self.n_visible, self.n_hidden, self.hidden = n_visible, n_hidden, hidden
        self.generator = generator
        if device is None and generator is not None:
            device = generator.device
        self.weight = nn.Parameter(
            0.1 * torch.randn(n_visible, n_hidden, generator=generator, device=device, dtype=dtype)
        )
        self.visible_bias = nn.Parameter(torch.zeros(n_visible, device=device, dtype=dtype))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden, device=device, dtype=dtype))
        self._low: torch.dtype | None = None  # bfloat16 inside fit/cd_step at precision "bf16"

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, hidden={self.hidden!r}"

    # ----- conditionals -------------------------------------------------------------------
    def hidden_mean(self, v: torch.Tensor) -> torch.Tensor:
        """E[h | v]: sigmoid(v W + c) for Bernoulli hidden units, v W + c for Gaussian ones."""
        pre = torch.addmm(self.hidden_bias, v, self.weight)
        return torch.sigmoid(pre) if self.hidden == "bernoulli" else pre

    def visible_prob(self, h: torch.Tensor) -> torch.Tensor:
        """p(v = 1 | h) = sigmoid(h W^T + b)."""
        return torch.sigmoid(torch.addmm(self.visible_bias, h, self.weight.t()))

    @torch.no_grad()
    def sample_h(self, v: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[h | v], a sample h ~ p(h | v)); Gaussian units add N(0, 1) noise to the mean."""
        mean = self.hidden_mean(v)
        return mean, self._sample_hidden(mean, torch.empty_like(mean), generator or self.generator)

    @torch.no_grad()
    def sample_v(self, h: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(p(v = 1 | h), a binary sample v ~ p(v | h))."""
        prob = self.visible_prob(h)
        return prob, bernoulli_into(prob, torch.empty_like(prob), generator or self.generator)

    @torch.no_grad()
    def gibbs(self, v: torch.Tensor, k: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """k full Gibbs steps v -> h -> v; returns the binary visible sample v_k."""
        generator = generator or self.generator
        for _ in range(k):
            v = self.sample_v(self.sample_h(v, generator)[1], generator)[1]
        return v

    def _sample_hidden(self, mean: torch.Tensor, out: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.hidden == "bernoulli":
            return bernoulli_into(mean, out, generator)
        return torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device, out=out).add_(mean)

    # ----- energies and scores ------------------------------------------------------------
    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -log sum_h exp(-E(v, h)) (integral for Gaussian hidden units), shape (N,).

        Bernoulli: -v.b - sum_j softplus(c_j + (vW)_j).
        Gaussian:  -v.b - sum_j (c_j + (vW)_j)^2 / 2 - (n_hidden / 2) log(2 pi)   (constant included).
        """
        pre = torch.addmm(self.hidden_bias, v, self.weight)
        visible_term = v @ self.visible_bias
        if self.hidden == "bernoulli":
            return -visible_term - F.softplus(pre).sum(1)
        return -visible_term - 0.5 * pre.pow(2).sum(1) - 0.5 * self.n_hidden * math.log(2 * math.pi)

    @torch.no_grad()
    def pseudo_likelihood(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stochastic log pseudo-likelihood per sample, as sklearn's BernoulliRBM.score_samples.

        Flip one random unit i per sample: n_visible * log sigmoid(F(v with v_i flipped) - F(v)),
        an unbiased estimate of sum_i log p(v_i | v_-i) for binary v.
        """
        generator = generator or self.generator
        flip = torch.randint(0, v.shape[1], (v.shape[0],), generator=generator, device=v.device)
        rows = torch.arange(v.shape[0], device=v.device)
        flipped = v.clone()
        flipped[rows, flip] = 1 - flipped[rows, flip]
        return v.shape[1] * F.logsigmoid(self.free_energy(flipped) - self.free_energy(v))

    # ----- contrastive divergence ---------------------------------------------------------
    @contextlib.contextmanager
    def _precision(self, precision: str):
        """The products of CD inside the block at `precision` (see the module docstring)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        before = self._low
        self._low = torch.bfloat16 if precision == "bf16" else None
        try:
            with float32_matmul(precision):
                yield
        finally:
            self._low = before

    def _affine_into(self, bias: torch.Tensor, a: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = bias + a @ w, the product at the current precision."""
        if self._low is None:
            return torch.addmm(bias, a, w, out=out)
        return out.copy_(torch.mm(a.to(self._low), w.to(self._low))).add_(bias)

    def _product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a @ b at the current precision (bfloat16 at "bf16": the caller accumulates it in float32)."""
        return a @ b if self._low is None else torch.mm(a.to(self._low), b.to(self._low))

    def _weight_statistic(self, v0, h_pos, v_end, h_neg) -> torch.Tensor:
        """<v h^T>_data - <v h^T>_chain end. At bf16, one product [v0; v_end]^T [h0 / B; -h_end / B']: the
        difference is taken inside the GEMM's float32 sums, before the one rounding of its result."""
        if self._low is None:
            return v0.t() @ h_pos / v0.shape[0] - v_end.t() @ h_neg / v_end.shape[0]
        v_both = torch.cat([v0, v_end])
        h_both = torch.cat([h_pos / v0.shape[0], h_neg / -v_end.shape[0]])
        return self._product(v_both.t(), h_both).to(self.weight.dtype)

    # The building blocks below write into preallocated buffers (torch.addmm(..., out=) and in-place
    # sigmoid/bernoulli) so that `fit` allocates nothing per update at fp32; `cd_step` uses the same blocks.
    def _positive_phase(self, v0: torch.Tensor, h_pos: torch.Tensor) -> torch.Tensor:
        self._affine_into(self.hidden_bias, v0, self.weight, h_pos)
        return h_pos.sigmoid_() if self.hidden == "bernoulli" else h_pos

    def _reconstruct(
        self,
        v0: torch.Tensor,
        h_pos: torch.Tensor,
        generator: torch.Generator | None,
        h_sample: torch.Tensor,
        v_prob: torch.Tensor,
    ) -> torch.Tensor:
        """h_sample ~ p(h | v0), v_prob = p(v | h_sample); returns sum ||v0 - v_prob||^2 (Hinton's error)."""
        self._sample_hidden(h_pos, h_sample, generator)
        self._affine_into(self.visible_bias, h_sample, self.weight.t(), v_prob).sigmoid_()
        return torch.sub(v0, v_prob).pow_(2).sum()

    def _negative_phase(
        self,
        k: int,
        chain: torch.Tensor | None,
        negative_phase: str,
        generator: torch.Generator | None,
        h_sample: torch.Tensor,
        v_prob: torch.Tensor,
        v_sample: torch.Tensor,
        h_neg: torch.Tensor,
    ) -> tuple[torch.Tensor, bool]:
        """Run the negative chain for k full steps; fill h_neg = E[h | v_end] and return (v_end, sampled).

        CD (chain None): h_sample and v_prob must already hold h0 ~ p(h | v0) and p(v | h0) (from
        `_reconstruct`), i.e. the first half-step is done. PCD: the chain starts at the binary state
        `chain`. v_end is v_prob (negative_phase "probabilities", Hinton) or v_sample ("samples");
        `sampled` says whether v_sample holds a binary sample of the chain end (the next PCD state).
        """
        W, b, _c = self.weight, self.visible_bias, self.hidden_bias
        if chain is not None:
            self._sample_hidden(self._positive_phase(chain, h_neg), h_sample, generator)
            self._affine_into(b, h_sample, W.t(), v_prob).sigmoid_()
        for step in range(k):
            if step > 0:
                self._affine_into(b, h_sample, W.t(), v_prob).sigmoid_()
            last = step == k - 1
            sampled = not last or chain is not None or negative_phase == "samples"
            if sampled:
                bernoulli_into(v_prob, v_sample, generator)
            v_end = v_prob if last and negative_phase == "probabilities" else v_sample
            self._positive_phase(v_end, h_neg)
            if not last:
                self._sample_hidden(h_neg, h_sample, generator)
        return v_end, sampled

    @torch.no_grad()
    def cd_step(
        self,
        v0: torch.Tensor,
        k: int = 1,
        persistent_chain: torch.Tensor | None = None,
        negative_phase: str = "probabilities",
        generator: torch.Generator | None = None,
        precision: str = "fp32",
    ) -> CDStatistics:
        """CD-k statistics for the batch v0 (B, n_visible), or PCD-k when `persistent_chain`, a binary
        (B', n_visible) chain state (any B'), is given. Returns batch-mean gradient estimates (ascent
        direction) and the next chain state; the parameters are not changed (`fit` applies updates).
        `precision`: that of the products (fp32, tf32, bf16; see the module docstring)."""
        with self._precision(precision):
            return self._cd_step(v0, k, persistent_chain, negative_phase, generator)

    def _cd_step(self, v0, k, persistent_chain, negative_phase, generator) -> CDStatistics:
        if negative_phase not in NEGATIVE_PHASES:
            raise ValueError(f"negative_phase must be one of {NEGATIVE_PHASES}, got {negative_phase!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        generator = generator or self.generator
        v0 = v0.to(self.weight.dtype)
        n_chain = v0.shape[0] if persistent_chain is None else persistent_chain.shape[0]
        new = lambda n, d: torch.empty(n, d, dtype=v0.dtype, device=v0.device)  # noqa: E731
        h_pos = self._positive_phase(v0, new(v0.shape[0], self.n_hidden))
        reconstruction = new(v0.shape[0], self.n_visible)
        h_sample = new(v0.shape[0], self.n_hidden)
        self._reconstruct(v0, h_pos, generator, h_sample, reconstruction)
        if persistent_chain is None:
            v_prob = reconstruction.clone()
        else:
            h_sample, v_prob = new(n_chain, self.n_hidden), new(n_chain, self.n_visible)
        v_sample, h_neg = new(n_chain, self.n_visible), new(n_chain, self.n_hidden)
        v_end, sampled = self._negative_phase(
            k, persistent_chain, negative_phase, generator, h_sample, v_prob, v_sample, h_neg
        )
        return CDStatistics(
            weight=self._weight_statistic(v0, h_pos, v_end, h_neg),
            visible_bias=v0.mean(0) - v_end.mean(0),
            hidden_bias=h_pos.mean(0) - h_neg.mean(0),
            reconstruction=reconstruction,
            chain=v_sample if sampled else None,
        )

    # ----- training -----------------------------------------------------------------------
    @torch.no_grad()
    def fit(
        self,
        data: torch.Tensor,
        epochs: int = 50,
        batch_size: int = 100,
        lr: float | None = None,
        weight_cost: float = 2e-4,
        momentum: tuple[float, float] = (0.5, 0.9),
        momentum_switch_epoch: int = 5,
        k: int = 1,
        persistent: bool = False,
        negative_phase: str | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[dict], None] | None = None,
        log: Callable[[str], None] | None = None,
        allreduce: Callable[[list[torch.Tensor]], None] | None = None,
        monitor_size: int | None = 1000,
        precision: str = "fp32",
    ) -> list[dict]:
        """Train by CD-k (PCD-k if `persistent`) with momentum and weight cost, as Hinton's rbm.m.

        data: (N, n_visible) probabilities in [0, 1] (images are flattened). lr defaults to 0.1 for
        Bernoulli and 0.001 for Gaussian hidden units; the weight cost applies to W only; momentum is
        momentum[0] for epochs < momentum_switch_epoch (0-based, i.e. Hinton's "epoch > 5"), then
        momentum[1]. The data order is reshuffled every epoch with `generator` (default: the RBM's).
        PCD keeps `batch_size` chains, started from binarised data rows. negative_phase defaults to
        "probabilities" (Hinton's mean-field chain end) for CD and to "samples" for PCD (Tieleman).

        allreduce: optional hook called with [dW, db, dc], the batch-mean gradient estimates, before
        the update; it must average them across workers in place (distributed data parallel).

        Returns one record per epoch: recon_error (Hinton's monitor: mean over the training samples
        of sum_i (v_i - p(v_i | h0))^2 with h0 ~ p(h | v), taken during the epoch), pseudo_likelihood
        (mean stochastic log pseudo-likelihood on `monitor_size` fixed rows; None = all rows, 0 = skip), momentum,
        seconds and samples_per_second (of the training updates, monitoring excluded).

        precision: that of the CD products (fp32, tf32, bf16; see the module docstring); the monitors stay fp32.
        """
        with self._precision(precision):
            return self._fit(data, epochs, batch_size, lr, weight_cost, momentum, momentum_switch_epoch, k,
                             persistent, negative_phase, generator, callback, log, allreduce, monitor_size)  # fmt: skip

    def _fit(self, data, epochs, batch_size, lr, weight_cost, momentum, momentum_switch_epoch, k, persistent,
             negative_phase, generator, callback, log, allreduce, monitor_size) -> list[dict]:  # fmt: skip
        """fit() inside its precision block: the checks, the buffers and chains, then the epochs and their records."""
        if negative_phase is None:
            negative_phase = "samples" if persistent else "probabilities"
        if negative_phase not in NEGATIVE_PHASES:
            raise ValueError(f"negative_phase must be one of {NEGATIVE_PHASES}, got {negative_phase!r}")
        if k < 1 or epochs < 0 or batch_size < 1:
            raise ValueError("need k >= 1, epochs >= 0 and batch_size >= 1")
        generator = generator or self.generator
        lr = DEFAULT_LR[self.hidden] if lr is None else lr
        W = self.weight
        data = data.reshape(len(data), -1).to(dtype=W.dtype, device=W.device)
        if data.shape[1] != self.n_visible:
            raise ValueError(f"data has {data.shape[1]} columns, the RBM {self.n_visible} visible units")
        n = data.shape[0]
        B = min(batch_size, n)
        buffers = self._fit_buffers(B, with_grads=allreduce is not None)
        chain = None
        if persistent:
            chain = torch.bernoulli(
                data[torch.randperm(n, generator=generator, device=data.device)[:B]], generator=generator
            )
        monitor = data
        if monitor_size is not None and monitor_size < n:
            monitor = data[torch.randperm(n, generator=generator, device=data.device)[:monitor_size]]
        history: list[dict] = []
        for epoch in range(epochs):
            m = momentum[0] if epoch < momentum_switch_epoch else momentum[1]
            t0 = time.perf_counter()
            sq_error = self._fit_epoch(data, B, buffers, chain, k, negative_phase, generator, m, lr, weight_cost,
                                       allreduce)  # fmt: skip
            recon_error = sq_error.item() / n  # .item() syncs, so the timing covers all updates
            seconds = time.perf_counter() - t0
            with exact_float32():  # the monitor in float32, whatever the updates' precision
                pl = self.pseudo_likelihood(monitor, generator).mean().item() if len(monitor) else None
            record = dict(
                epoch=epoch + 1,
                recon_error=recon_error,
                pseudo_likelihood=pl,
                momentum=m,
                lr=lr,
                seconds=seconds,
                samples_per_second=n / seconds,
            )
            history.append(record)
            if log is not None:
                pl_text = "-" if pl is None else f"{pl:.3f}"
                log(
                    f"rbm {self.n_visible}-{self.n_hidden} ({self.hidden}) epoch {epoch + 1}/{epochs}: recon_error "
                    f"{recon_error:.3f} pseudo_likelihood {pl_text} ({record['samples_per_second']:.0f} samples/s)"
                )
            if callback is not None:
                callback(record)
        return history

    def _fit_buffers(self, B: int, with_grads: bool) -> dict:
        """fit()'s buffers for batches of up to B rows, allocated once: nothing is allocated per update at fp32."""
        W = self.weight
        n_vis, n_hid = self.n_visible, self.n_hidden
        new = lambda *shape: torch.zeros(*shape, dtype=W.dtype, device=W.device)  # noqa: E731
        # rows [0, b) hold the positive phase (v0, h0), rows [b, 2b) the chain end (v_end, -h_end), so
        # the weight statistics are the single product [v0; v_end]^T [h0; -h_end]
        return dict(v_stack=new(2 * B, n_vis), h_stack=new(2 * B, n_hid), h_sample=new(B, n_hid), v_other=new(B, n_vis),
                    increments=(new(n_vis, n_hid), new(n_vis), new(n_hid)),  # inc_W, inc_b, inc_c
                    grads=[new(n_vis, n_hid), new(n_vis), new(n_hid)] if with_grads else None)  # fmt: skip

    def _fit_epoch(self, data, B, buffers, chain, k, negative_phase, generator, m, lr, weight_cost, allreduce):
        """One epoch of CD-k (PCD-k with `chain`) updates over a fresh permutation of the rows of data, in batches
        of B; returns the summed squared reconstruction error as a tensor (not read: no host synchronisation)."""
        n = data.shape[0]
        v_stack, h_stack = buffers["v_stack"], buffers["h_stack"]
        h_sample, v_other = buffers["h_sample"], buffers["v_other"]
        sq_error = torch.zeros((), dtype=self.weight.dtype, device=self.weight.device)
        order = torch.randperm(n, generator=generator, device=data.device)
        for start in range(0, n, B):
            idx = order[start : start + B]
            bs = idx.shape[0]
            v0, h_pos = v_stack[:bs], h_stack[:bs]
            torch.index_select(data, 0, idx, out=v0)
            end_rows = v_stack[bs : 2 * bs]
            v_prob, v_sample = (
                (end_rows, v_other[:bs]) if negative_phase == "probabilities" else (v_other[:bs], end_rows)
            )
            self._positive_phase(v0, h_pos)
            sq_error += self._reconstruct(v0, h_pos, generator, h_sample[:bs], v_prob)
            v_end, _ = self._negative_phase(
                k,
                None if chain is None else chain[:bs],
                negative_phase,
                generator,
                h_sample[:bs],
                v_prob,
                v_sample,
                h_stack[bs : 2 * bs],
            )
            if chain is not None:
                chain[:bs].copy_(v_sample)
            h_stack[bs : 2 * bs].neg_()
            self._momentum_update(v0, v_end, v_stack[: 2 * bs], h_stack[: 2 * bs], buffers, m, lr, weight_cost,
                                  allreduce)  # fmt: skip
        return sq_error

    def _momentum_update(self, v0, v_end, v_both, h_both, buffers, m, lr, weight_cost, allreduce) -> None:
        """Hinton's update from one batch of bs rows (v_both = [v0; v_end], h_both = [h0; -h_end]):
        inc <- m inc + lr (statistics - weight_cost W, the cost on W only), then W, b, c <- W, b, c + inc."""
        W, b, c = self.weight, self.visible_bias, self.hidden_bias
        inc_W, inc_b, inc_c = buffers["increments"]
        bs = v0.shape[0]
        if allreduce is None and self._low is None:  # fused: inc = m inc + lr/b [v0; v_end]^T [h0; -h_end]
            inc_W.addmm_(v_both.t(), h_both, beta=m, alpha=lr / bs)
            inc_b.mul_(m).add_(v0.sum(0) - v_end.sum(0), alpha=lr / bs)
            inc_c.mul_(m).add_(h_both.sum(0), alpha=lr / bs)
        elif allreduce is None:  # bf16 product, accumulated into the float32 increment
            inc_W.mul_(m).add_(self._product(v_both.t(), h_both), alpha=lr / bs)
            inc_b.mul_(m).add_(v0.sum(0) - v_end.sum(0), alpha=lr / bs)
            inc_c.mul_(m).add_(h_both.sum(0), alpha=lr / bs)
        else:
            grads = buffers["grads"]
            dW, db, dc = grads
            if self._low is None:
                torch.mm(v_both.t(), h_both, out=dW).div_(bs)
            else:
                dW.copy_(self._product(v_both.t(), h_both)).div_(bs)
            torch.sub(v0.sum(0), v_end.sum(0), out=db).div_(bs)
            torch.sum(h_both, 0, out=dc).div_(bs)
            allreduce(grads)
            inc_W.mul_(m).add_(dW, alpha=lr)
            inc_b.mul_(m).add_(db, alpha=lr)
            inc_c.mul_(m).add_(dc, alpha=lr)
        inc_W.add_(W, alpha=-lr * weight_cost)
        W.add_(inc_W)
        b.add_(inc_b)
        c.add_(inc_c)


# ----- greedy layer-wise pretraining ------------------------------------------------------------
def pretrain_stack(
    data: torch.Tensor,
    sizes: Sequence[int] = (784, 1000, 500, 250, 30),
    epochs: int = 50,
    top_hidden: str = "gaussian",
    generator: torch.Generator | None = None,
    log: Callable[[str], None] | None = None,
    lr: float | None = None,
    top_lr: float | None = None,
    progress: str | None = None,
    **fit_kwargs,
) -> list[RBM]:
    """Greedy layer-wise pretraining (Hinton & Salakhutdinov 2006): RBM i is trained on the hidden
    probabilities E[h | v] of RBM i-1 (the data for the first). The top RBM has `top_hidden` units,
    linear (Gaussian) by default as in mnistdeepauto.m. `lr` applies to the Bernoulli-hidden layers
    (default 0.1), `top_lr` to the top layer (default: 0.001 if Gaussian); other `fit_kwargs` go
    to every `RBM.fit`. (Hinton's code feeds the next layer the probabilities recorded during the
    last epoch; we recompute them with the final weights.) `progress`: the label of a tqdm bar on stderr
    over all layers' epochs (the run's name); None for no bar."""
    sizes = [int(s) for s in sizes]
    x = data.reshape(len(data), -1)
    if len(sizes) < 2 or x.shape[1] != sizes[0]:
        raise ValueError(f"sizes must start with the data dimension {x.shape[1]}, got {sizes}")
    from tqdm import tqdm

    from ..progress import Progress

    # a bar on a terminal; elsewhere the epoch lines and a heartbeat while an epoch runs (aelab.progress)
    bar = Progress(f"{progress}: RBM pretraining", total=epochs * (len(sizes) - 1), unit="epoch",
                   enabled=progress is not None)  # fmt: skip
    callback = fit_kwargs.pop("callback", None)

    def on_epoch(record: dict) -> None:
        bar.update()
        bar.status(f"recon_error {record['recon_error']:.3g}")
        if callback is not None:
            callback(record)

    say = log
    if log is not None and progress is not None:

        def say(text: str) -> None:  # the bar is cleared, the line printed, the bar drawn again below it
            with tqdm.external_write_mode():
                log(text)
            bar.touch()

    with bar:
        return _pretrain_layers(x, sizes, epochs, top_hidden, generator, lr, top_lr, say, bar, on_epoch, fit_kwargs)


def _pretrain_layers(x, sizes, epochs, top_hidden, generator, lr, top_lr, say, bar, on_epoch, fit_kwargs) -> list[RBM]:
    rbms: list[RBM] = []
    for i, (n_vis, n_hid) in enumerate(zip(sizes[:-1], sizes[1:])):
        top = i == len(sizes) - 2
        hidden = top_hidden if top else "bernoulli"
        rbm = RBM(n_vis, n_hid, hidden=hidden, generator=generator, device=x.device, dtype=x.dtype)
        if top and top_lr is not None:
            layer_lr = top_lr
        elif hidden == "bernoulli" and lr is not None:
            layer_lr = lr
        else:
            layer_lr = DEFAULT_LR[hidden]
        if say is not None:
            say(f"pretraining layer {i + 1}/{len(sizes) - 1}: RBM {n_vis}-{n_hid} ({hidden} hidden, lr {layer_lr})")
        bar.phase(f"RBM {i + 1}/{len(sizes) - 1} ({n_vis}-{n_hid})")
        rbm.fit(x, epochs=epochs, lr=layer_lr, generator=generator, log=say, callback=on_epoch, **fit_kwargs)
        with torch.no_grad():
            x = rbm.hidden_mean(x.to(rbm.weight.dtype))
        rbms.append(rbm)
    return rbms


@torch.no_grad()
def up_down_mean_field(rbms: Sequence[RBM], v: torch.Tensor) -> torch.Tensor:
    """Deterministic pass through the stack: up with hidden means E[h | v] (probabilities, linear at a
    Gaussian top), then down with visible probabilities p(v | h) in reverse order. (N, n_visible)."""
    h = v
    for rbm in rbms:
        h = rbm.hidden_mean(h)
    for rbm in reversed(rbms):
        h = rbm.visible_prob(h)
    return h
