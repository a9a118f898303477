"""Where the debiasing models run and in what precision.

Every training loop of aelab.debias keeps its random draws (orders, resampling, donors) on CPU generators and
only then moves the chosen samples to the model's device, so a seed gives the same data order on any device.
With amp on CUDA the forward passes run under bf16 autocast (the losses come back in float32: cross-entropy and
log-softmax are autocast to float32); on CPU autocast is off and the numbers are the float32 ones.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def autocast(device: torch.device, amp: bool) -> torch.autocast:
    """bf16 autocast when amp is asked for on a CUDA device; a disabled (no-op) context elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def device_of(model: nn.Module) -> torch.device:
    """The device of a model's parameters (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
