"""L2 Init: a quadratic pull toward the initial weights, which keeps a network able to learn."""

from __future__ import annotations

from clrl.algorithms import Networks
from clrl.modules.base import TaskInfo
from clrl.modules.penalty import QuadraticPenalty


class L2Init(QuadraticPenalty):
    """Regenerative regularisation: a quadratic penalty toward the parameters the model started with.

    The penalty on parameters ``θ`` with initial values ``θ⁰`` (taken when the first task starts) is
    ``strength / 2 · Σ_i (θ_i - θ⁰_i)²``, applied from the first step of the first task on and never
    re-anchored. Weights the recent losses do not need drift back toward their initialisation, where a
    network learns fast, instead of growing or dying. The gradient ``strength · (θ - θ⁰)`` is added to the
    loss gradient before SB3's clipping, like :class:`clrl.L2`'s (which pulls toward the previous task's
    weights to prevent forgetting; L2 Init pulls toward the start to keep plasticity). At ``strength=0``
    training equals plain SB3 exactly.

    Paper: Kumar et al. 2023, "Maintaining Plasticity in Continual Learning via Regenerative
    Regularization", https://arxiv.org/abs/2308.11958

    Args:
        strength: Penalty coefficient (>= 0). The paper writes the penalty ``λ ‖θ - θ⁰‖²``, so
            ``strength = 2λ``; it tunes λ per problem. Default 0.01 (λ = 0.005), not a paper's value.
        networks: ``"all"`` (default, as the paper: every parameter an optimiser steps) or ``"actor"``.
        verbose: SB3 callback verbosity.
    """

    name = "l2-init"

    def __init__(self, strength: float = 0.01, networks: Networks = "all", verbose: int = 0) -> None:
        super().__init__(strength, networks, verbose)

    def needs_boundaries(self) -> bool:
        """Task-free: the anchor is taken when the first task starts and never moves."""
        return False

    def on_task_start(self, task: TaskInfo) -> None:
        """Take the parameters as the anchor when the first task starts (a restored anchor is kept)."""
        if not self.anchor:
            self.anchor = {n: p.detach().clone() for n, p in self.regularised().items()}
