"""Online EWC: one running Fisher and one anchor, whatever the number of tasks."""

from __future__ import annotations

from clrl.algorithms import Networks
from clrl.modules.base import TaskInfo, check_fraction
from clrl.modules.ewc import FisherPenalty


class OnlineEWC(FisherPenalty):
    """Online EWC: a running Fisher ``F ← γ F + F_t`` and the parameters of the latest task as anchor.

    The penalty is ``strength/2 · Σ_i F_i (θ_i - θ*_i)²`` with ``θ*`` the parameters at the end of the
    previous task. Memory is one Fisher and one anchor, constant in the number of tasks. The Fisher of each
    task is estimated as in :class:`EWC`.

    Paper: Schwarz et al. 2018, "Progress & Compress: A scalable framework for continual learning", ICML,
    https://arxiv.org/abs/1805.06370; Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning"
    (EWC++), https://arxiv.org/abs/1801.10112

    Args:
        strength: Penalty coefficient ``λ`` (>= 0). At 0 training equals plain SB3 exactly.
        gamma: Decay ``γ`` in ``[0, 1]`` of the earlier tasks' Fisher (1: plain sum, as Huszár's online
            EWC; below 1 the oldest tasks fade, as in Progress & Compress).
        samples: States each task's Fisher is averaged over.
        networks: ``"actor"`` (default) or ``"all"`` (see :class:`EWC`).
        temperature: DQN and QR-DQN: temperature of the Boltzmann policy (see :class:`EWC`).
        verbose: SB3 callback verbosity.
    """

    name = "online_ewc"

    def __init__(
        self,
        strength: float = 1000.0,
        gamma: float = 1.0,
        samples: int = 1024,
        networks: Networks = "actor",
        temperature: float = 1.0,
        verbose: int = 0,
    ) -> None:
        super().__init__(strength, samples, networks, temperature, verbose)
        self.gamma = check_fraction(gamma, "OnlineEWC gamma")

    def on_task_end(self, task: TaskInfo) -> None:
        """Fold the task's Fisher into the running one; the current parameters become the anchor."""
        fisher = self.estimate(task)
        if self.importance:
            self.importance = {n: self.gamma * self.importance[n] + f for n, f in fisher.items()}
        else:
            self.importance = fisher
        self.anchor = {n: p.detach().clone() for n, p in self.regularised().items()}
