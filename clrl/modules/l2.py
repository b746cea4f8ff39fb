"""L2: a quadratic pull toward the parameters at the end of the previous task."""

from __future__ import annotations

import torch

from clrl.algorithms import Networks
from clrl.modules.base import TaskInfo
from clrl.modules.penalty import QuadraticPenalty


class L2(QuadraticPenalty):
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
        super().__init__(strength, networks, verbose)

    def on_task_end(self, task: TaskInfo) -> None:
        """Take the current parameters as the new anchor."""
        self.anchor = {n: p.detach().clone() for n, p in self.regularised().items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore the anchor."""
        super().load_state_dict({"importance": {}, **state})
