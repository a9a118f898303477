"""A paper's training settings under one name (`aelab train --preset NAME`); the flags given override them.

burda2016: the one-stochastic-layer MNIST model of Burda, Grosse & Salakhutdinov, "Importance Weighted
Autoencoders" (ICLR 2016), Section 5 and Appendix: encoder 784-200-200-(50+50) and decoder 50-200-200-784 with
tanh units, Bernoulli likelihood, mini-batches of 20, Adam (epsilon 1e-4) at 1e-3 * 10^(-i/7) for 3^i passes,
i = 0..7 (3,280 passes in all). Where their public code (github.com/yburda/iwae) differs from the paper, the
paper is followed: the code's Adam has beta1 = 0.99 with second moments started at 1, and rounds each rate to
two digits; its decoder's output bias starts at the train images' mean log-odds (here: PyTorch's default init).
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    "burda2016": {
        "models": ("vae", "iwae"),
        "settings": {"batch_size": 20, "lr": 1e-3, "lr_schedule": "burda", "adam_eps": 1e-4},
        "model_options": {"hidden": [200, 200], "latent": 50, "activation": "tanh", "likelihood": "bce"},
    },
}
BURDA_PASSES = 3280  # the paper's budget: sum of 3^i, i = 0..7
