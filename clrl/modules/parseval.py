"""Parseval regularisation: keep the hidden layers' weight matrices close to scaled orthogonal ones."""

from __future__ import annotations

import torch

from clrl.algorithms import Networks, check_networks
from clrl.modules.base import (
    ContinualModule,
    ParamGroup,
    add_to_grad,
    check_non_negative,
    check_positive,
)
from clrl.modules.surgery import selected_networks
from clrl.plasticity import hidden_layers


class ParsevalRegularisation(ContinualModule):
    """The penalty ``strength · c_l · ‖W_l W_lᵀ - scale · I‖²_F`` on the weight matrix ``W_l`` of every
    ``Linear`` layer that feeds a hidden layer of the chosen networks (not the heads, whose outputs are
    the policy's or value's), from the first step on.

    Rows of ``W_l`` (a unit's incoming weights) are pulled toward being orthogonal with squared norm
    ``scale``, as SB3's orthogonal initialisation with gain ``sqrt(2)`` makes them; the layers keep the
    well-conditioned gradients and diverse units of a fresh network. ``c_l = (64 / n_l)²`` for a layer
    of ``n_l`` units, as in the reference code, so one strength fits every width (1 at SB3's 64 units).
    The gradient ``4 · strength · c_l · (W Wᵀ - scale · I) W`` is added to the loss gradient before SB3's
    clipping, like the other penalties'; biases, the heads, convolutions and ``log_std`` are not
    regularised. At ``strength=0`` training equals plain SB3 exactly. Cost per step: one
    ``n_l × n_l`` product per layer.

    Paper: Chung et al. 2024, "Parseval Regularization for Continual Reinforcement Learning" (NeurIPS),
    https://arxiv.org/abs/2412.07224

    Deviations: the paper adds learnable diagonal layers after each regularised layer for Meta-World (its
    "diagonal layer" relaxation) and regularises only its MLPs; clrl regularises the policy as SB3 built
    it, without diagonal layers, and includes a features extractor's ``Linear`` layers that feed an
    activation. The reference code scales by the network's width; clrl by each layer's units.

    Args:
        strength: Penalty coefficient ``λ`` (>= 0). The paper's values are 1e-3 (gridworld, Meta-World)
            and 1e-4 (CARL); default 1e-3.
        scale: The target squared row norm ``s`` (> 0): the paper's ``gain²``, 2 for SB3's gain
            ``sqrt(2)``.
        networks: ``"all"`` (default, as the paper: actor and critic or value network) or ``"actor"``.
        verbose: SB3 callback verbosity.
    """

    name = "parseval"

    def __init__(
        self, strength: float = 1e-3, scale: float = 2.0, networks: Networks = "all", verbose: int = 0
    ) -> None:
        super().__init__(verbose)
        self.strength = check_non_negative(strength, "ParsevalRegularisation strength")
        self.scale = check_positive(scale, "ParsevalRegularisation scale")
        self.networks: Networks = check_networks(networks)

    def needs_boundaries(self) -> bool:
        """Task-free: the penalty acts at every step."""
        return False

    def regularised_weights(self) -> dict[str, torch.nn.Parameter]:
        """The regularised weight matrices, by parameter name relative to ``model.policy``."""
        model = self.sb3_model
        chosen = set(selected_networks(model, self.networks))
        ids = {
            id(layer.linear.weight)
            for layer in hidden_layers(model)
            if layer.linear is not None and layer.network in chosen
        }
        return {n: p for n, p in model.policy.named_parameters() if id(p) in ids}

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The regularised weights (none at ``strength=0``: no hook is installed)."""
        return self.regularised_weights() if self.strength > 0 else {}

    def penalty_gradient(self, weight: torch.Tensor) -> torch.Tensor:
        """``4 · strength · c · (W Wᵀ - scale · I) W`` for one weight matrix ``W`` (a new tensor)."""
        with torch.no_grad():
            gram = weight @ weight.T
            gram.diagonal().sub_(self.scale)
            return (4.0 * self.strength * (64.0 / weight.shape[0]) ** 2) * (gram @ weight)

    def add_penalty_gradients(self, group: ParamGroup) -> None:
        """Add the penalty's gradient before SB3's backward (so it is clipped with the loss)."""
        for param in group.params:
            add_to_grad(param, self.penalty_gradient(param))

    def penalty(self) -> float:
        """The current value of the penalty, ``Σ_l strength · c_l · ‖W_l W_lᵀ - scale · I‖²_F``."""
        total = 0.0
        with torch.no_grad():
            for weight in self.regularised_weights().values():
                gram = weight @ weight.T
                gram.diagonal().sub_(self.scale)
                total += (64.0 / weight.shape[0]) ** 2 * float(gram.square().sum())
        return self.strength * total

    def log_scalars(self) -> dict[str, float]:
        """The penalty's value."""
        return {"penalty": self.penalty()}
