"""Matmul precisions: fp32, tf32 (float32 matmuls on tensor cores), bf16.

fp32  products and sums in float32 (unit roundoff u = 2^-24)
tf32  CUDA tensor cores: the operands of every float32 matmul rounded to a 10-bit mantissa (u = 2^-11),
      products accumulated in float32. A global switch of torch's (set_float32_matmul_precision("high")),
      turned on only inside `float32_matmul("tf32")` and restored after; no effect on a CPU.
bf16  the operands rounded to bfloat16 (8-bit mantissa, u = 2^-9), products accumulated in float32 by the
      GEMM, the result rounded to bfloat16 once. The trainer gets it from torch.autocast (CUDA); the RBMs
      cast their operands themselves (aelab.models.rbm), on any device.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "tf32", "bf16")
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "tf32": 2.0**-11, "bf16": 2.0**-9}


@contextlib.contextmanager
def _float32_matmuls_at(level: str, cudnn_tf32: bool):
    """torch's float32 matmul precision ("highest", "high") and cuDNN's tf32 switch inside the block; restored."""
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision(level)
    torch.backends.cudnn.allow_tf32 = cudnn_tf32
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def float32_matmul(name: str):
    """The float32 matmuls and convolutions of a block at precision `name`, restored after: tf32 on tensor cores
    (10-bit mantissa products, float32 accumulation); fp32 exactly (torch lets cuDNN convolutions use tf32 by
    default: off here, so that a run recorded as fp32 is); bf16 (autocast's): unchanged. No effect on a CPU."""
    if name == "tf32":
        return _float32_matmuls_at("high", True)
    return _float32_matmuls_at("highest", False) if name == "fp32" else contextlib.nullcontext()


def exact_float32():
    """float32 matmuls at float32 inside the block (no tf32, whatever the caller switched on); restored after:
    for the monitors of a run whose updates use tf32."""
    return _float32_matmuls_at("highest", False)
