"""The log-likelihood of a binary RBM: its partition function exactly (small RBMs) or by annealed importance
sampling (AIS), after Salakhutdinov & Murray (2008).

Model (aelab.models.rbm, Bernoulli visible v in {0,1}^V and Bernoulli hidden h in {0,1}^H):
    E(v, h) = -v.b - h.c - v W h,     p(v) = exp(-F(v)) / Z,
    F(v)    = -v.b - sum_j softplus(c_j + (v W)_j)                 (RBM.free_energy)
    Z       = sum_v exp(-F(v)) = sum_h exp(h.c + sum_i softplus(b_i + (W h)_i))
so log p(v) = -F(v) - log Z (`log_prob`), and log Z is a sum over either layer with the other summed out
analytically: `exact_log_z` enumerates the smaller layer, 2^min(V, H) states, in float64.

AIS (Neal 2001; Salakhutdinov & Murray 2008, as their code RBM_AIS.m does it). Model A is the "base-rate" RBM:
the same H hidden units with zero weights and biases, visible biases b_A_i = log(p_i / (1 - p_i)) with p_i the
training images' smoothed pixel marginals (`base_rate_biases`), so p_A(v) = prod_i sigmoid(b_A_i)^v_i
(1 - sigmoid(b_A_i))^(1 - v_i) and Z_A = 2^H prod_i (1 + exp(b_A_i)) exactly. For 0 = beta_0 < ... < beta_K = 1
the intermediate distributions interpolate the energies, E_k(v, h) = (1 - beta_k) E_A(v, h) + beta_k E_B(v, h),
which gives, summing h out,
    log p*_k(v) = (1 - beta_k) v.b_A + beta_k v.b + sum_j softplus(beta_k (c_j + (v W)_j)),
p*_0 = p*_A and p*_K = p*_B = exp(-F). (Shorthand "p_A^(1-beta_k) p_B^beta_k" means these joint terms: the beta
sits inside the softplus, as in RBM_AIS.m, and the transition below leaves exactly this p_k invariant; the geometric
mean of the two marginals would not be.) The transition T_k is a Gibbs step: given v, sample the hidden units,
p(h_j = 1 | v) = sigmoid(beta_k (c_j + (v W)_j)) (A's weights are zero, so they add nothing), then v with
p(v_i = 1 | h) = sigmoid((1 - beta_k) b_A_i + beta_k (b_i + (W h)_i)). One run draws v_1 ~ p_A and
v_{k+1} ~ T_k(v_k), and its importance weight is
    w = prod_{k=1..K} p*_k(v_k) / p*_{k-1}(v_k),          E[w] = Z_B / Z_A,
so with M independent runs  log Z_B ≈ log Z_A + log((1/M) sum_m w_m)  (computed with logsumexp, float64).
The paper's interval (RBM_AIS.m, "log Z +/- 3 standard deviations") is taken on the ratio scale, then logged:
    log Z_A + log(mean(w) ± 3 std(w) / sqrt(M)),   std with the M - 1 denominator (Matlab's std);
the lower end does not exist (None) when mean(w) <= 3 std(w)/sqrt(M). The estimate is unbiased for Z, not log Z:
log Z is underestimated in expectation (Jensen), which the interval does not show; the effective sample size
(sum w)^2 / sum w^2 of the M runs is reported beside it.

The schedule (`beta_schedule`): the paper's betas are spaced uniformly by 1e-3 on [0, 0.5], 1e-4 on [0.5, 0.9]
and 1e-5 on [0.9, 1]: 500 + 4,000 + 10,000 = 14,500 steps (K = 14,500 increments, K + 1 = 14,501 betas
counting 0 and 1, K - 1 = 14,499 distributions strictly between A and B). Salakhutdinov's code writes it
`beta = [0:1/1000:0.5 0.5:1/10000:0.9 0.9:1/100000:1.0]`, which repeats 0.5 and 0.9 (two extra transitions at
an unchanged beta, which change nothing in expectation); here each beta appears once. `n_betas=K` keeps those
proportions (1 : 8 : 20 of the steps in the three segments) for any other number of steps.

Base-rate smoothing (`base_rate_biases`): p_i = (n_i + a N) / (N + 2 a N), n_i the number of the N training images
with pixel i on (or the sum of grey levels) and a = 0.05: Salakhutdinov's base_rate.m adds 5 "on" counts per
batch of 100 images; here the same 5% is added to both "on" and "off", so no p_i is 0 or 1 even for a pixel that is
always on. Without data the base rate is uniform (b_A = 0).

Reference: R. Salakhutdinov & I. Murray (2008) On the quantitative analysis of deep belief networks, ICML (its
text could not be read here: the algorithm, schedule and interval follow Salakhutdinov's Matlab code RBM_AIS.m, read
in the copy github.com/surban/ruslan-ais at commit 0975baf, and an excerpt of his base_rate.m); R. M. Neal (2001)
Annealed importance sampling, Statistics and Computing 11:125.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ConfigError

MAX_EXACT_STATES = 2**25  # exact_log_z enumerates at most this many states of the smaller layer
PAPER_STEPS = 14_500  # the paper's number of beta increments
PAPER_SEGMENTS = ((0.0, 0.5, 500), (0.5, 0.9, 4_000), (0.9, 1.0, 10_000))  # (from, to, steps): 1e-3, 1e-4, 1e-5
PAPER_RUNS = 100  # AIS runs in the paper and in RBM_AIS.m's demos
BASE_RATE_PSEUDOCOUNT = 0.05  # per image, added to both the "on" and the "off" count of every pixel

Progress = Callable[[int, int], None] | str | None  # a callback(done, total), a tqdm label, or nothing


# ---------------------------------------------------------------- progress
def _progress(progress: Progress, total: int, unit: str):
    """(callback(done, total) or None, the Progress to close or None): a label becomes an aelab.progress.Progress
    (a bar on a terminal, lines and a heartbeat elsewhere: never silent for more than 20 s)."""
    if progress is None or callable(progress):
        return progress, None
    from ..progress import Progress as Bar

    bar = Bar(str(progress), total=total, unit=unit)

    def update(done: int, _total: int) -> None:
        bar.update(done - bar.done)

    return update, bar


# ---------------------------------------------------------------- exact
def _binary_bernoulli(rbm) -> None:
    if getattr(rbm, "hidden", "bernoulli") != "bernoulli":
        raise ConfigError("the RBM likelihood needs Bernoulli (binary) hidden units; this RBM's are Gaussian")


def _params64(rbm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        rbm.weight.detach().to(torch.float64),
        rbm.visible_bias.detach().to(torch.float64),
        rbm.hidden_bias.detach().to(torch.float64),
    )


def _bits(start: int, stop: int, n: int, device) -> torch.Tensor:
    """The binary expansions of the integers start..stop-1, (stop - start, n) float64, least significant first."""
    idx = torch.arange(start, stop, dtype=torch.int64, device=device)
    return ((idx[:, None] >> torch.arange(n, device=device)) & 1).to(torch.float64)


@torch.no_grad()
def exact_log_z(rbm, chunk_bits: int = 10, progress: Progress = None) -> float:
    """log Z of a binary RBM by enumerating the smaller layer, float64 throughout.

    H <= V: log Z = logsumexp over h in {0,1}^H of  h.c + sum_i softplus(b_i + (W h)_i);
    V <  H: log Z = logsumexp over v in {0,1}^V of  v.b + sum_j softplus(c_j + (v W)_j)  (= -F(v)).
    The states s = (s_low, s_high) go 2^chunk_bits at a time: the products of the low bits are computed once,
    each chunk adds those of its high bits (no product per state). softplus(x) = logaddexp(x, 0).
    Refuses (ConfigError, one line) above MAX_EXACT_STATES = 2^25 states; `progress` as in `ais_log_z`."""
    _binary_bernoulli(rbm)
    W, b, c = _params64(rbm)
    n_vis, n_hid = W.shape
    n = min(n_vis, n_hid)
    if 2**n > MAX_EXACT_STATES:
        raise ConfigError(
            f"exact log Z would enumerate 2^{n} states (the smaller of {n_vis} visible and {n_hid} hidden units); "
            f"at most 2^{int(math.log2(MAX_EXACT_STATES))} are allowed: estimate it with AIS instead"
        )
    if n_hid <= n_vis:
        unary, W_side, other_bias = c, W.t(), b  # states of the hidden layer; the visible layer summed out
    else:
        unary, W_side, other_bias = b, W, c
    low = min(n, chunk_bits)
    s_low = _bits(0, 2**low, low, W.device)
    act_low, unary_low = s_low @ W_side[:low], s_low @ unary[:low]  # (2^low, other), (2^low,)
    act = torch.empty_like(act_low)
    zero = torch.zeros((), dtype=torch.float64, device=W.device)
    n_chunks = 2 ** (n - low)
    callback, bar = _progress(progress, n_chunks * 2**low, "state")
    parts = []
    try:
        for j in range(n_chunks):
            s_high = _bits(j, j + 1, n - low, W.device)[0]
            torch.add(act_low, other_bias + s_high @ W_side[low:], out=act)
            torch.logaddexp(act, zero, out=act)  # softplus
            parts.append(torch.logsumexp(act.sum(1) + unary_low + s_high @ unary[low:], 0))
            if callback is not None:
                callback((j + 1) * 2**low, n_chunks * 2**low)
    finally:
        if bar is not None:
            bar.close()
    return float(torch.logsumexp(torch.stack(parts), 0))


def exact_log_z_feasible(rbm) -> bool:
    """Whether `exact_log_z` enumerates at most MAX_EXACT_STATES states for this RBM."""
    return 2 ** min(rbm.n_visible, rbm.n_hidden) <= MAX_EXACT_STATES


# ---------------------------------------------------------------- log p(v)
@torch.no_grad()
def log_prob(rbm, x: torch.Tensor, log_z: float) -> torch.Tensor:
    """log p(v) = -F(v) - log Z per image (N,), float64, for binary images x (N, ...) flattened to (N, V).
    F is RBM.free_energy (its constants included), evaluated in the RBM's dtype."""
    _binary_bernoulli(rbm)
    v = x.reshape(len(x), -1).to(device=rbm.weight.device, dtype=rbm.weight.dtype)
    return -rbm.free_energy(v).to(torch.float64) - float(log_z)


@torch.no_grad()
def mean_log_prob(rbm, x: torch.Tensor, log_z: float, batch_size: int = 10_000) -> float:
    """The average of `log_prob` over the images x, in batches (nats per image)."""
    total = sum(float(log_prob(rbm, xb, log_z).sum()) for xb in x.split(batch_size))
    return total / len(x)


# ---------------------------------------------------------------- AIS
def beta_schedule(n_betas: int = PAPER_STEPS) -> torch.Tensor:
    """beta_0 = 0 < ... < beta_K = 1, K = n_betas increments (float64, K + 1 values), piecewise uniform on
    [0, 0.5], [0.5, 0.9] and [0.9, 1] with the paper's proportions of steps 500 : 4,000 : 10,000 (= 1 : 8 : 20).
    n_betas = 14,500 is exactly the paper's schedule (steps 1e-3, 1e-4, 1e-5)."""
    if not (isinstance(n_betas, int) and not isinstance(n_betas, bool) and n_betas >= 3):
        raise ConfigError(f"the AIS schedule needs an integer number of beta steps >= 3, got {n_betas!r}")
    weights = [steps for _, _, steps in PAPER_SEGMENTS]
    counts = [max(1, round(n_betas * w / sum(weights))) for w in weights[:-1]]
    counts.append(n_betas - sum(counts))
    parts = [torch.zeros(1, dtype=torch.float64)]
    for (lo, hi, _), count in zip(PAPER_SEGMENTS, counts):
        parts.append(torch.linspace(lo, hi, count + 1, dtype=torch.float64)[1:])
    betas = torch.cat(parts)
    betas[-1] = 1.0
    return betas


def describe_schedule(betas: torch.Tensor) -> str:
    """The schedule in words (for results.json and the report)."""
    k = len(betas) - 1
    if k == PAPER_STEPS and torch.equal(betas, beta_schedule(PAPER_STEPS)):
        return (
            "Salakhutdinov & Murray (2008): beta spaced by 1e-3 on [0, 0.5], 1e-4 on [0.5, 0.9], 1e-5 on [0.9, 1]; "
            "14,500 steps (14,499 intermediate distributions)"
        )
    if k >= 3 and torch.equal(betas, beta_schedule(k)):
        n = [int(((betas > lo) & (betas <= hi)).sum()) for lo, hi, _ in PAPER_SEGMENTS]
        return (
            f"the paper's shape with {k} steps: {n[0]} uniform on [0, 0.5], {n[1]} on [0.5, 0.9], {n[2]} on [0.9, 1] "
            f"(the paper: 500, 4,000, 10,000)"
        )
    return f"a given schedule of {k} steps"


def base_rate_biases(data: torch.Tensor, pseudocount: float = BASE_RATE_PSEUDOCOUNT) -> torch.Tensor:
    """Visible biases of the base-rate model (V,) float64: log(p_i / (1 - p_i)) with
    p_i = (n_i + a N) / (N + 2 a N), n_i = sum over the N images of pixel i, a = pseudocount."""
    if not len(data):  # before the reshape: (0, -1) cannot be inferred
        raise ConfigError("the base-rate model needs at least one training image")
    x = data.reshape(len(data), -1).to(torch.float64)
    if not pseudocount > 0:
        raise ConfigError(f"the base-rate pseudocount must be positive, got {pseudocount!r}")
    n = len(x)
    p = (x.sum(0) + pseudocount * n) / (n + 2 * pseudocount * n)
    return torch.log(p) - torch.log1p(-p)


@dataclass
class AISResult:
    """An AIS estimate of log Z (see the module docstring for the maths)."""

    log_z: float  # log Z_A + log mean(w)
    log_z_low: float | None  # log Z_A + log(mean(w) - 3 std(w)/sqrt(M)); None where that is <= 0
    log_z_high: float  # log Z_A + log(mean(w) + 3 std(w)/sqrt(M))
    n_runs: int
    n_betas: int  # K, the number of beta increments
    schedule: str
    seed: int
    base_log_z: float  # log Z_A of the base-rate model: H log 2 + sum_i softplus(b_A_i)
    base_rate: str  # how the base-rate model was made
    ess: float  # (sum w)^2 / sum w^2, the effective number of runs
    seconds: float
    log_weights: list[float] = field(repr=False)  # log w of every run (log Z = base_log_z + logmeanexp of these)

    def to_json(self, weights: bool = True) -> dict:
        out = asdict(self)
        if not weights:
            out.pop("log_weights")
        return out


def ais_interval(log_w: torch.Tensor, base_log_z: float) -> tuple[float, float | None, float, float]:
    """(log Z, low, high, ess) from the log weights of M runs, as RBM_AIS.m: log Z_A + log(mean w ± 3 std w / sqrt M),
    std with the M - 1 denominator; low None when mean w <= 3 std w / sqrt M."""
    log_w = log_w.to(torch.float64).cpu()
    m = len(log_w)
    r = float(torch.logsumexp(log_w, 0)) - math.log(m)  # log mean w
    top = float(log_w.max())
    scaled = torch.exp(log_w - top)
    std = float(scaled.std(unbiased=True)) if m > 1 else 0.0
    if std > 0:
        log_sd = math.log(std) + top - 0.5 * math.log(m)  # log(std(w) / sqrt(M))
        gap = math.log(3) + log_sd - r  # log(3 sd / mean)
        high = r + math.log1p(math.exp(gap)) if gap < 0 else r + gap + math.log1p(math.exp(-gap))
        low = r + math.log1p(-math.exp(gap)) if gap < 0 else None
    else:
        high, low = r, r
    ess = float(scaled.sum() ** 2 / (scaled**2).sum())
    return r + base_log_z, None if low is None else low + base_log_z, high + base_log_z, ess


@torch.no_grad()
def ais_log_z(
    rbm,
    n_runs: int = PAPER_RUNS,
    n_betas: int = PAPER_STEPS,
    seed: int = 0,
    base_rate_data: torch.Tensor | None = None,
    betas: Sequence[float] | torch.Tensor | None = None,
    pseudocount: float = BASE_RATE_PSEUDOCOUNT,
    progress: Progress = None,
) -> AISResult:
    """AIS estimate of log Z of a binary RBM from `n_runs` independent runs (Salakhutdinov & Murray 2008).

    The schedule is `betas` (increasing from 0 to 1) or `beta_schedule(n_betas)` (n_betas = 14,500: the paper's).
    The base-rate model comes from `base_rate_data` (the training images, see `base_rate_biases`), uniform without.
    Deterministic for a fixed `seed`: a torch.Generator on the RBM's device draws every sample; the sampling runs
    in the RBM's dtype and device, the log weights are accumulated in float64. `progress`: a callback(done, total)
    called after every step, or a label: an aelab.progress.Progress bar (lines and a heartbeat off a terminal)."""
    _binary_bernoulli(rbm)
    if not (isinstance(n_runs, int) and not isinstance(n_runs, bool) and n_runs >= 2):
        raise ConfigError(f"AIS needs at least 2 runs (an integer), got {n_runs!r}")
    schedule = _ais_schedule(n_betas, betas)
    t0 = time.perf_counter()
    b_a64, base_rate = _base_rate_model(rbm, base_rate_data, pseudocount)
    n_hid = rbm.weight.shape[1]
    base_log_z = float(F.softplus(b_a64).sum()) + n_hid * math.log(2)  # Z_A = 2^H prod_i (1 + exp(b_A_i))
    log_w = _ais_log_weights(rbm, b_a64, schedule.tolist(), n_runs, seed, progress)
    log_z, low, high, ess = ais_interval(log_w, base_log_z)
    return AISResult(
        log_z=log_z,
        log_z_low=low,
        log_z_high=high,
        n_runs=n_runs,
        n_betas=len(schedule) - 1,
        schedule=describe_schedule(schedule),
        seed=seed,
        base_log_z=base_log_z,
        base_rate=base_rate,
        ess=ess,
        seconds=time.perf_counter() - t0,
        log_weights=log_w.cpu().tolist(),
    )


def _ais_schedule(n_betas: int, betas: Sequence[float] | torch.Tensor | None) -> torch.Tensor:
    """The betas of an AIS run, float64 on the CPU: `betas`, checked to increase strictly from 0 to 1, or
    `beta_schedule(n_betas)`."""
    if betas is None:
        return beta_schedule(n_betas)
    schedule = torch.as_tensor(betas, dtype=torch.float64).flatten().cpu()
    if len(schedule) < 2 or schedule[0] != 0 or schedule[-1] != 1 or not bool((schedule.diff() > 0).all()):
        raise ConfigError("an AIS schedule must increase strictly from beta = 0 to beta = 1")
    return schedule


def _base_rate_model(rbm, base_rate_data: torch.Tensor | None, pseudocount: float) -> tuple[torch.Tensor, str]:
    """(b_A, how it was made): the visible biases (V,) float64 of the base-rate model A, on the RBM's device."""
    n_vis, device = rbm.weight.shape[0], rbm.weight.device
    if base_rate_data is not None:
        b_a64 = base_rate_biases(base_rate_data.to("cpu"), pseudocount).to(device)
        base_rate = (
            f"pixel marginals of {len(base_rate_data)} training images, smoothed as (n_i + {pseudocount:g} N) / "
            f"(N + {2 * pseudocount:g} N)"
        )
    else:
        b_a64 = torch.zeros(n_vis, dtype=torch.float64, device=device)
        base_rate = "uniform (no training data given)"
    if b_a64.shape != (n_vis,):
        raise ConfigError(f"the base-rate data have {len(b_a64)} pixels, the RBM {n_vis} visible units")
    return b_a64, base_rate


def _ais_log_weights(rbm, b_a64: torch.Tensor, beta: list[float], n_runs: int, seed: int, progress: Progress):
    """log w (M,) float64 of M = n_runs AIS runs from the base-rate model (visible biases b_a64) to the RBM along
    the schedule `beta`: v_1 ~ p_A, v_{k+1} ~ T_k(v_k), log w = sum_k log p*_k(v_k) - log p*_{k-1}(v_k)."""
    W = rbm.weight.detach()
    b, c = rbm.visible_bias.detach(), rbm.hidden_bias.detach()
    device, dtype = W.device, W.dtype
    n_vis = W.shape[0]
    b_a = b_a64.to(dtype)
    b64 = b.to(torch.float64)
    gen = torch.Generator(device=device).manual_seed(seed)
    k_steps = len(beta) - 1

    def bernoulli(prob: torch.Tensor) -> torch.Tensor:
        return (torch.rand(prob.shape, generator=gen, device=device, dtype=prob.dtype) < prob).to(dtype)

    v = bernoulli(torch.sigmoid(b_a).expand(n_runs, n_vis))  # v_1 ~ p_A
    log_w = torch.zeros(n_runs, dtype=torch.float64, device=device)
    callback, bar = _progress(progress, k_steps, "beta")
    try:
        for k in range(1, k_steps + 1):
            # the weight's factor p*_k(v_k) / p*_{k-1}(v_k), the unary terms and the softplus sums in float64
            act = torch.addmm(c, v, W)  # c + v W, (M, H)
            act64 = act.to(torch.float64)
            v64 = v.to(torch.float64)
            d_beta = beta[k] - beta[k - 1]
            log_w += d_beta * (v64 @ b64 - v64 @ b_a64)
            log_w += F.softplus(beta[k] * act64).sum(1) - F.softplus(beta[k - 1] * act64).sum(1)
            if k < k_steps:  # v_{k+1} ~ T_k(v_k): h_B | v at beta_k, then v | h_B at beta_k
                h = bernoulli(torch.sigmoid(beta[k] * act))
                v = bernoulli(torch.sigmoid((1 - beta[k]) * b_a + beta[k] * torch.addmm(b, h, W.t())))
            if callback is not None:
                callback(k, k_steps)
    finally:
        if bar is not None:
            bar.close()
    return log_w


# ---------------------------------------------------------------- a run's numbers (aelab evaluate, the experiment)
def binary_images(x: torch.Tensor, split: str) -> tuple[torch.Tensor, bool]:
    """(x, False) when every value of x is 0 or 1; else (its fixed Bernoulli draw, True): the draw that every reader
    of a `binarize=static|dynamic` dataset sees (aelab.data.binarize with BINARIZE_SEEDS[split])."""
    if bool(((x == 0) | (x == 1)).all()):
        return x, False
    from ..data.datasets import BINARIZE_SEEDS, binarize

    return binarize(x, BINARIZE_SEEDS[split]), True


@torch.no_grad()
def likelihood_metrics(
    rbm,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    *,
    seed: int = 0,
    n_runs: int = PAPER_RUNS,
    n_betas: int = PAPER_STEPS,
    exact: bool | None = None,
    progress: str | None = None,
) -> tuple[dict, dict]:
    """(metrics, protocol) of a binary RBM on its train and test images (binary, or binarised by `binary_images`):
    log Z by AIS (the base-rate model from train_x), its interval and the average log p(x) = mean(-F(x)) - log Z in
    nats on each split with the interval's ends, and, when `exact` (default: when 2^min(V, H) <= 2^25), the exact
    log Z and log-probabilities too. `progress`: a label for the AIS and enumeration bars (aelab.progress)."""
    train_x, train_binarised = binary_images(train_x, "train")
    test_x, test_binarised = binary_images(test_x, "test")
    result = ais_log_z(
        rbm,
        n_runs=n_runs,
        n_betas=n_betas,
        seed=seed,
        base_rate_data=train_x,
        progress=None if progress is None else f"{progress}: AIS log Z",
    )
    neg_f = {split: mean_log_prob(rbm, x, 0.0) for split, x in (("train", train_x), ("test", test_x))}
    metrics: dict = {"log_z": result.log_z, "log_z_high": result.log_z_high}
    if result.log_z_low is not None:
        metrics["log_z_low"] = result.log_z_low
    for split in ("test", "train"):
        metrics[f"{split}_log_prob"] = neg_f[split] - result.log_z
        metrics[f"{split}_log_prob_low"] = neg_f[split] - result.log_z_high
        if result.log_z_low is not None:
            metrics[f"{split}_log_prob_high"] = neg_f[split] - result.log_z_low
    metrics.update(ais_runs=result.n_runs, ais_betas=result.n_betas, ais_ess=result.ess)
    exact = exact_log_z_feasible(rbm) if exact is None else exact
    n_states = min(rbm.n_visible, rbm.n_hidden)
    if exact:
        t0 = time.perf_counter()
        log_z = exact_log_z(rbm, progress=None if progress is None else f"{progress}: exact log Z")
        metrics["log_z_exact"] = log_z
        for split in ("test", "train"):
            metrics[f"{split}_log_prob_exact"] = neg_f[split] - log_z
        exact_text = f"enumerated 2^{n_states} states"
        exact_seconds = time.perf_counter() - t0
    else:
        exact_text = f"not computed: 2^{n_states} states (exact only up to 2^{int(math.log2(MAX_EXACT_STATES))})"
        exact_seconds = None

    def data_text(x: torch.Tensor, binarised: bool, split: str) -> str:
        how = "grey levels binarised by the fixed Bernoulli draw of aelab.data.binarize" if binarised else "binary"
        return f"{len(x)} {split} images, {how}"

    protocol = {
        "log_likelihood": "log p(x) = -F(x) - log Z (nats per image), F the free energy; the *_low/_high ends use "
        "the AIS interval of log Z (Salakhutdinov & Murray 2008)",
        "ais": result.to_json(weights=False),
        "exact_log_z": exact_text,
        "exact_log_z_s": exact_seconds,
        "train_data": data_text(train_x, train_binarised, "train"),
        "test_data": data_text(test_x, test_binarised, "test"),
    }
    return metrics, protocol


def run_metrics(
    model, config: dict, train_x, train_y, test_x, *, seed: int = 0, progress: str | None = None
) -> tuple[dict, dict]:
    """`likelihood_metrics` of an RBM run folder's model (`aelab evaluate`): the train images are those the RBM
    trained on (the run's validation split left out), the test images the run's test split."""
    from ..runs import validation_indices

    split = validation_indices(config, train_y.numpy()) if len(train_y) else None
    if split is not None:
        train_x = train_x[torch.from_numpy(split[0])]
    device = model.rbm.weight.device
    return likelihood_metrics(model.rbm, train_x.to(device), test_x.to(device), seed=seed, progress=progress)
