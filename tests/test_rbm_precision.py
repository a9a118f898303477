"""The RBM's CD products at tf32 and bf16 with float32 accumulation: within the error bound the precision
implies, checked elementwise against float64; and training at bf16 ends where training at fp32 does."""

import pytest
import torch

from aelab.data import load
from aelab.models.rbm import RBM
from aelab.precision import UNIT_ROUNDOFF
from aelab.train import TrainConfig, pretrain_precision

FP32_U = 2.0**-24


def _bound(a: torch.Tensor, w: torch.Tensor, exact: torch.Tensor, u: float) -> torch.Tensor:
    """|fl(a . w) - a . w| for operands rounded with unit roundoff u, float32 sums of length K, and the result
    rounded once with u: (2u + u^2 + K 2^-24)(|a| . |w|) + u |a . w|, plus a float32 rounding of the bias add."""
    k = a.shape[1]
    return (2 * u + u * u + k * FP32_U) * (a.abs() @ w.abs()) + (u + 2 * FP32_U) * exact.abs() + 1e-30


def _rbm_and_batch(n_visible=200, n_hidden=64, batch=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    rbm = RBM(n_visible, n_hidden, generator=g)
    with torch.no_grad():
        rbm.hidden_bias.normal_(0, 0.5, generator=g)
        rbm.visible_bias.normal_(0, 0.5, generator=g)
    v0 = torch.rand(batch, n_visible, generator=g)
    return rbm, v0


def _check_products(rbm: RBM, v0: torch.Tensor, precision: str) -> None:
    u = UNIT_ROUNDOFF[precision]
    W, c = rbm.weight.detach().double(), rbm.hidden_bias.detach().double()
    h = torch.empty(len(v0), rbm.n_hidden, device=v0.device)
    with rbm._precision(precision):
        pre = rbm._affine_into(rbm.hidden_bias, v0, rbm.weight, h).double()
    exact = c + v0.double() @ W
    err, bound = (pre - exact).abs(), _bound(v0.double(), W, v0.double() @ W, u)
    assert (err <= bound).all(), f"{precision}: the product is outside its bound by {(err / bound).max():.3g}x"
    # the precision was really used: the error is beyond what float32 products could make
    assert (err > _bound(v0.double(), W, v0.double() @ W, FP32_U)).any()

    # the weight statistic <v h^T>_data - <v h^T>_end, one product with the difference inside its sums
    h_pos, h_neg = torch.sigmoid(exact).float(), torch.rand(len(v0), rbm.n_hidden, device=v0.device)
    v_end = torch.rand_like(v0)
    with rbm._precision(precision):
        stat = rbm._weight_statistic(v0, h_pos, v_end, h_neg).double()
    a = torch.cat([v0, v_end]).double().t()
    b = torch.cat([h_pos / len(v0), -h_neg / len(v_end)]).double()
    exact = a @ b
    err = (stat - exact).abs()
    assert (err <= _bound(a, b, exact, u)).all(), f"{precision}: statistic outside its bound"
    assert (err > _bound(a, b, exact, FP32_U)).any()


def test_bf16_products_are_within_their_bound():
    rbm, v0 = _rbm_and_batch()
    _check_products(rbm, v0, "bf16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="tf32 runs on CUDA tensor cores only")
def test_tf32_products_are_within_their_bound():
    rbm, v0 = _rbm_and_batch()
    _check_products(rbm.cuda(), v0.cuda(), "tf32")


def test_fp32_is_unchanged_and_a_bad_precision_is_refused():
    rbm, v0 = _rbm_and_batch()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    default = rbm.cd_step(v0, generator=g1)
    explicit = rbm.cd_step(v0, generator=g2, precision="fp32")
    assert torch.equal(default.weight, explicit.weight) and torch.equal(default.reconstruction, explicit.reconstruction)
    with pytest.raises(ValueError, match="precision must be one of"):
        rbm.cd_step(v0, precision="fp16")
    assert rbm._low is None  # restored after the refusal


def test_training_at_bf16_ends_where_fp32_does():
    """CD-1 on 1,000 digits of mnist5k, 784-100, 5 epochs, the same seed: the reconstruction error at bf16 is
    within 1% of fp32's (measured: 30.54 both; another seed moves it by 0.5%), and both fall the same way."""
    x = load("mnist5k", "train")[0][:1000].flatten(1)
    errors = {}
    for precision in ("fp32", "bf16"):
        g = torch.Generator().manual_seed(0)
        rbm = RBM(784, 100, generator=g)
        history = rbm.fit(x, epochs=5, batch_size=100, generator=g, monitor_size=0, precision=precision)
        errors[precision] = [h["recon_error"] for h in history]
    fp32, bf16 = errors["fp32"], errors["bf16"]
    assert bf16[-1] < 0.8 * bf16[0] and fp32[-1] < 0.8 * fp32[0]
    assert abs(bf16[-1] - fp32[-1]) <= 0.01 * fp32[-1], (fp32, bf16)


def test_the_trainer_gives_the_rbm_stack_its_precision_on_cuda_only():
    bf16 = TrainConfig(model="deep-ae", precision="bf16", out="x")
    assert pretrain_precision(bf16, torch.device("cuda")) == {"precision": "bf16"}
    assert pretrain_precision(bf16, torch.device("cpu")) == {}  # a CPU trains in float32, as the trainer says
    assert pretrain_precision(TrainConfig(model="deep-ae", amp=True, out="x"), torch.device("cuda")) == {
        "precision": "bf16"
    }
    assert pretrain_precision(TrainConfig(model="deep-ae", out="x"), torch.device("cuda")) == {}


def test_fp32_means_fp32_even_for_cudnn_and_each_switch_is_restored():
    from aelab.precision import exact_float32, float32_matmul

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    with float32_matmul("fp32"):  # torch's default lets cuDNN convolutions use tf32: not in a run said to be fp32
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("highest", False)
    with float32_matmul("tf32"):
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("high", True)
        with exact_float32():
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
    with float32_matmul("bf16"):  # autocast's business
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before
