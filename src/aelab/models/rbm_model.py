"""A binary RBM as an ordinary aelab model, model name "rbm": a run folder like any other (model.json +
model.safetensors), trained by CD-k or PCD through the trainer's pretraining hook, scored by `aelab evaluate`
(its log-likelihood by AIS, and exactly when small: aelab.metrics.rbm_likelihood).

    encode(x) = E[h | v = x] = sigmoid(c + x W)           the hidden means, (N, hidden)
    decode(z) = p(v = 1 | h = z) = sigmoid(b + z W^T)     visible probabilities, images in [0, 1]
    loss_terms(x): recon = Bernoulli cross-entropy of the mean-field reconstruction decode(encode(x)), nats per
                   image summed over pixels; free_energy = F(x) (RBM.free_energy, -log p(x) - log Z); loss = recon

Training (why the pretraining hook): an RBM is not trained by gradient descent on a loss but by CD-k / PCD
(`RBM.fit`: Hinton's momentum schedule and weight cost, no autograd), which is exactly what the trainer's
pretraining hook runs once, before its epochs, and checkpoints as epoch 0 (as for the deep AE's RBM stack). The
trainer's epochs after it only score the RBM: its parameters do not require gradients, so no optimiser step can
change them (the loss is a detached copy of `recon`), and `--epochs 1` is all an RBM run needs. A resume keeps the
CD-trained weights of the checkpoint; the CD settings are model options, recorded in config.json, so a resume with
other ones is refused; a run killed during CD restarts it from the seed (the same draws: the same weights).

Options: hidden (units), k (Gibbs steps), persistent (PCD, Tieleman 2008), cd_epochs, cd_lr, cd_batch_size,
weight_cost, negative_phase (None: "probabilities" for CD, "samples" for PCD; see RBM.fit). Data: binary images
(e.g. --dataset-option binarize=static, Salakhutdinov & Murray's stochastic binarisation); grey levels are used as
probabilities, Hinton's soft data (a note says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .ae import check_positive_sizes
from .base import Autoencoder
from .rbm import NEGATIVE_PHASES, RBM


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RBMModel(Autoencoder):
    """Binary-binary RBM with `hidden` Bernoulli hidden units over the C*H*W pixels (see the module docstring)."""

    name = "rbm"
    has_partition_function = True  # evaluate reports log p(x) (aelab.metrics.rbm_likelihood)

    def __init__(
        self,
        input_shape=(1, 28, 28),
        hidden: int | Sequence[int] = 500,
        k: int = 1,
        persistent: bool = False,
        cd_epochs: int = 50,
        cd_lr: float = 0.1,
        cd_batch_size: int = 100,
        weight_cost: float = 2e-4,
        negative_phase: str | None = None,
        init_std: float = 0.1,
    ):
        super().__init__()
        if isinstance(hidden, (list, tuple)):  # --hidden 25 gives [25]
            if len(hidden) != 1:
                raise ValueError(f"an RBM has one hidden layer: give one size, got {list(hidden)}")
            hidden = hidden[0]
        check_positive_sizes(hidden=hidden, k=k, cd_epochs=cd_epochs, cd_batch_size=cd_batch_size)
        if not (_finite(cd_lr) and cd_lr > 0):
            raise ValueError(f"cd_lr must be a finite positive number, got {cd_lr!r}")
        if not (_finite(init_std) and init_std > 0):
            raise ValueError(f"init_std must be a finite positive number, got {init_std!r}")
        if not (_finite(weight_cost) and weight_cost >= 0):
            raise ValueError(f"weight_cost must be a finite non-negative number, got {weight_cost!r}")
        if negative_phase is not None and negative_phase not in NEGATIVE_PHASES:
            raise ValueError(
                f"negative_phase must be one of {', '.join(NEGATIVE_PHASES)} (or null), got {negative_phase!r}"
            )
        self.input_shape = tuple(int(s) for s in input_shape)
        self.options = dict(
            input_shape=list(self.input_shape),
            hidden=int(hidden),
            k=k,
            persistent=persistent,
            cd_epochs=cd_epochs,
            cd_lr=float(cd_lr),
            cd_batch_size=cd_batch_size,
            weight_cost=float(weight_cost),
            negative_phase=negative_phase,
            **({"init_std": float(init_std)} if init_std != 0.1 else {}),  # model.json as before for the default
        )
        self.latent = int(hidden)
        self.rbm = RBM(math.prod(self.input_shape), int(hidden))  # W = 0.1 N(0, 1), b = c = 0 (Hinton's rbm.m)
        self.rbm.requires_grad_(False)  # trained by CD only: no optimiser step can change it
        if init_std != 0.1:  # W = init_std N(0, 1): the same draw, scaled
            with torch.no_grad():
                self.rbm.weight.mul_(init_std / 0.1)

    @property
    def needs_pretraining(self) -> bool:
        return True  # CD-k / PCD is the whole training

    def pretrain(
        self,
        train_x: torch.Tensor,
        *,
        seed: int,
        log: Callable[[str], None] | None = None,
        allreduce: Callable[[list[torch.Tensor]], None] | None = None,
        world: int = 1,
        progress: str | None = None,
        precision: str = "fp32",
    ) -> list[dict]:
        """CD-k (PCD-k if persistent) for cd_epochs on the flattened train images (RBM.fit), every draw from a
        generator seeded by `seed` on the RBM's device. `progress`: the label of a bar (lines and a heartbeat off a
        terminal, aelab.progress); `log`: the epoch lines. One process only (no torchrun)."""
        from ..errors import ConfigError
        from ..progress import Progress

        if world > 1 or allreduce is not None:
            raise ConfigError("the rbm model trains in one process: run it without torchrun")
        o = self.options
        w = self.rbm.weight
        x = train_x.reshape(len(train_x), -1).to(device=w.device, dtype=w.dtype)
        name = f"{'PCD' if o['persistent'] else 'CD'}-{o['k']}"
        label = f"{progress}: RBM {x.shape[1]}-{o['hidden']} {name}"
        with Progress(label, total=o["cd_epochs"], unit="epoch", enabled=progress is not None) as bar:
            say = None
            if log is not None:
                say = bar.write if progress is not None else log
            if say is not None and not bool(((x == 0) | (x == 1)).all()):
                say("note: the train images are grey levels; CD uses them as probabilities (for binary images "
                    "pass --dataset-option binarize=static)")  # fmt: skip
            bar.status(f"epoch 1/{o['cd_epochs']}")

            def on_epoch(record: dict) -> None:
                bar.update()
                next_epoch = min(record["epoch"] + 1, o["cd_epochs"])
                bar.status(f"epoch {next_epoch}/{o['cd_epochs']}, recon_error {record['recon_error']:.4g}")

            return self.rbm.fit(
                x,
                epochs=o["cd_epochs"],
                batch_size=o["cd_batch_size"],
                lr=o["cd_lr"],
                weight_cost=o["weight_cost"],
                k=o["k"],
                persistent=o["persistent"],
                negative_phase=o["negative_phase"],
                generator=torch.Generator(device=w.device).manual_seed(seed),
                callback=on_epoch,
                log=say,
                precision=precision,
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.rbm.hidden_mean(x.flatten(1).to(self.rbm.weight.dtype))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.rbm.visible_bias, z, self.rbm.weight.t())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode_logits(z)).reshape(-1, *self.input_shape)

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        v = x.flatten(1).to(self.rbm.weight.dtype)
        with torch.no_grad():
            logits = self.decode_logits(self.encode(v))
            recon = F.binary_cross_entropy_with_logits(logits, v, reduction="none").sum(1).mean()
            free_energy = self.rbm.free_energy(v).mean()
        # the trainer's epochs only score the RBM: a detached leaf, so backward() reaches no parameter
        loss = recon.clone().requires_grad_(torch.is_grad_enabled())
        return {"loss": loss, "recon": recon, "free_energy": free_energy}
