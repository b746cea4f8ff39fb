"""Shrink and perturb: scale the weights down and add a fresh initialisation's worth of noise."""

from __future__ import annotations

from typing import Any

import torch

from clrl.algorithms import Networks, check_networks
from clrl.modules.base import check_fraction, check_non_negative
from clrl.modules.surgery import ScheduledSurgery, fresh_linear, network_linears, selected_networks


class ShrinkAndPerturb(ScheduledSurgery):
    """Shrink and perturb: ``θ ← λ·θ + σ·θ_fresh`` for every ``Linear`` layer of the chosen networks, at
    the start of every task after the first, or every ``every`` environment steps.

    ``θ_fresh`` is a new draw of the layer's initialisation (:func:`clrl.modules.surgery.fresh_linear`: SB3's
    orthogonal init for PPO and A2C, PyTorch's default for the others), so the noise has the scale a
    network starts with. Shrinking keeps what was learned (up to a scale that the next updates restore)
    while the noise restores the diversity of a fresh network. The optimiser's state is kept. With
    ``every``, the change happens at the start of a rollout (after the previous update, before the states
    are collected), so on-policy rollouts are collected and learned by one policy; target networks follow
    through their own soft updates.

    Paper: Ash & Adams 2020, "On Warm-Starting Neural Network Training" (NeurIPS),
    https://arxiv.org/abs/1910.08475

    Deviations: the paper applies it once, when training restarts on more data; clrl applies it at each
    task boundary (the continual setting's restart) or periodically, as later continual-RL work does. Only
    ``Linear`` layers change (convolutions and ``log_std`` are kept).

    Args:
        shrink: ``λ`` in [0, 1]; 1 with ``perturb=0`` changes nothing (plain SB3 exactly).
        perturb: ``σ`` (>= 0), the scale of the fresh initialisation added. The paper tunes both; clrl's
            defaults (0.8, 0.2) interpolate toward a fresh network (``λ + σ = 1``), not a paper's values.
        every: Environment steps between applications (``None``: at each task start after the first).
        networks: ``"all"`` (default) or ``"actor"``.
        verbose: SB3 callback verbosity.
    """

    name = "shrink-and-perturb"

    def __init__(
        self,
        shrink: float = 0.8,
        perturb: float = 0.2,
        every: int | None = None,
        networks: Networks = "all",
        verbose: int = 0,
    ) -> None:
        super().__init__(every, verbose)
        self.shrink = check_fraction(shrink, "ShrinkAndPerturb shrink")
        self.perturb = check_non_negative(perturb, "ShrinkAndPerturb perturb")
        self.networks: Networks = check_networks(networks)
        self.applied = 0
        """Times the weights were shrunk and perturbed."""

    def operate(self) -> None:
        """:meth:`apply` (on the schedule)."""
        self.apply()

    def apply(self) -> None:
        """Shrink and perturb the chosen networks' ``Linear`` layers now."""
        model = self.sb3_model
        with torch.no_grad():
            for network in selected_networks(model, self.networks):
                for path, module in network_linears(model, network).items():
                    module.weight.mul_(self.shrink)
                    if module.bias is not None:
                        module.bias.mul_(self.shrink)
                    if self.perturb == 0:
                        continue  # no draw: the random generators stay as plain SB3 leaves them
                    weight, bias = fresh_linear(model, path, module)
                    module.weight.add_(weight, alpha=self.perturb)
                    if module.bias is not None and bias is not None:
                        module.bias.add_(bias, alpha=self.perturb)
        self.applied += 1

    def state_dict(self) -> dict[str, Any]:
        """The count of applications."""
        return {**super().state_dict(), "applied": self.applied}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.applied = int(state["applied"])

    def log_scalars(self) -> dict[str, float]:
        """``applied`` so far."""
        return {"applied": float(self.applied)}
