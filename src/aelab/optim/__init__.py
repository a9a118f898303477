"""Optimizers that are not in torch.optim."""

from .cg import ConjugateGradient

__all__ = ["ConjugateGradient"]
