"""L2: a quadratic pull toward the parameters at the end of the previous task."""

from __future__ import annotations

from typing import Any

import torch

from clrl.algorithms import Networks, check_networks, policy_parameters
from clrl.modules.base import ContinualModule, ParamGroup, TaskInfo, add_to_grad, check_non_negative


class L2(ContinualModule):
    """Unweighted quadratic penalty toward the parameters at the end of the previous task.

    The penalty on parameters ``θ`` with anchor ``θ*`` (the parameters when the previous task ended) is
    ``strength / 2 · Σ_i (θ_i - θ*_i)²``. Its gradient ``strength · (θ - θ*)`` is added analytically to the
    loss gradient before clipping; no autograd graph is built. It is EWC with every importance equal to one,
    the baseline that importance-weighted methods must beat. No penalty applies during the first task.

    Paper: Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks", PNAS
    (the L2 baseline of its Fig. 2), https://arxiv.org/abs/1612.00796

    Args:
        strength: Penalty coefficient ``λ`` (>= 0). At 0 training equals plain SB3 exactly.
        networks: ``"actor"`` regularises the policy/actor only (as Continual World does); ``"all"`` also the
            critic / value function, on every optimiser that steps them.
        verbose: SB3 callback verbosity.
    """

    name = "l2"

    def __init__(self, strength: float = 1.0, networks: Networks = "actor", verbose: int = 0) -> None:
        super().__init__(verbose)
        self.strength = check_non_negative(strength, "L2 strength")
        self.networks: Networks = check_networks(networks)
        self.anchor: dict[str, torch.Tensor] = {}

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The regularised parameters; none before the first task has ended."""
        if not self.anchor:
            return {}
        return {n: p for n, p in policy_parameters(self.sb3_model, self.networks).items() if n in self.anchor}

    def on_task_end(self, task: TaskInfo) -> None:
        """Take the current parameters as the new anchor."""
        params = policy_parameters(self.sb3_model, self.networks)
        self.anchor = {n: p.detach().clone() for n, p in params.items()}

    def add_penalty_gradients(self, group: ParamGroup) -> None:
        """Add ``strength · (θ - θ*)`` (fused over the group's tensors, as torch's own optimisers do)."""
        anchors = [self.anchor[name] for name in group.names]
        with torch.no_grad():
            grads = torch._foreach_sub(group.params, anchors)
            torch._foreach_mul_(grads, self.strength)
        for param, grad in zip(group.params, grads, strict=True):
            add_to_grad(param, grad)

    def distance(self) -> float:
        """Euclidean distance of the regularised parameters from the anchor."""
        if not self.anchor:
            return 0.0
        params = policy_parameters(self.sb3_model, self.networks)
        with torch.no_grad():
            sq = sum(float(((params[n] - a) ** 2).sum()) for n, a in self.anchor.items() if n in params)
        return sq**0.5

    def log_scalars(self) -> dict[str, float]:
        """Penalty and distance to the anchor."""
        distance = self.distance()
        return {"penalty": 0.5 * self.strength * distance**2, "distance": distance}

    def state_dict(self) -> dict[str, Any]:
        """The anchor."""
        return {"anchor": {n: t.cpu() for n, t in self.anchor.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the anchor (moved to the model's device when training starts)."""
        self.anchor = dict(state["anchor"])

    def _on_training_start(self) -> None:
        device = self.sb3_model.device
        self.anchor = {n: t.to(device) for n, t in self.anchor.items()}
        super()._on_training_start()
