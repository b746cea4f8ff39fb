"""Online EWC: one running Fisher and one anchor, whatever the number of tasks."""

from __future__ import annotations

from typing import ClassVar

from clrl.algorithms import Networks
from clrl.modules.base import TaskInfo, check_fraction, check_positive_int
from clrl.modules.ewc import FisherPenalty


class OnlineEWC(FisherPenalty):
    """Online EWC: a running Fisher ``F ← γ F + F_t`` and the parameters of the latest task as anchor.

    The penalty is ``strength/2 · Σ_i F_i (θ_i - θ*_i)²`` with ``θ*`` the parameters at the end of the
    previous task. Memory is one Fisher and one anchor, constant in the number of tasks. The Fisher of each
    task is estimated as in :class:`EWC`.

    **Task-free mode** (``every``, clrl's, not the paper's, which consolidates at task ends): every ``every``
    environment steps, at the end of the first rollout at or after each multiple (on the states just
    collected, before they are learned), the module does what a task end does (the Fisher of the states since
    the last consolidation folded into the running one, the current parameters the anchor), so it works on a
    stream that hides its boundaries (``needs_boundaries()`` is then false). Aljundi et al. 2019 ("Task-Free
    Continual Learning", CVPR) consolidate at plateaus of the loss instead; :class:`clrl.BoundaryDetector`
    gives a module boundaries found in the training returns.

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
        every: Also consolidate every ``every`` environment steps (task-free mode, above); ``None``
            (default): at task ends only.
        verbose: SB3 callback verbosity.
    """

    name = "online_ewc"
    task_free_with: ClassVar[str | None] = "every=K"

    def __init__(
        self,
        strength: float = 1000.0,
        gamma: float = 1.0,
        samples: int = 1024,
        networks: Networks = "actor",
        temperature: float = 1.0,
        every: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(strength, samples, networks, temperature, verbose)
        self.gamma = check_fraction(gamma, "OnlineEWC gamma")
        self.every = None if every is None else check_positive_int(every, "OnlineEWC every")

    def on_task_end(self, task: TaskInfo) -> None:
        """Fold the task's Fisher into the running one; the current parameters become the anchor."""
        self.end_of_task_consolidation(task)

    def consolidate(self, *key: int) -> None:
        """Fold the Fisher of the states since the last consolidation (or the task start) into the running
        one; the current parameters become the anchor."""
        fisher = self.estimate(*key)
        if self.importance:
            self.importance = {n: self.gamma * self.importance[n] + f for n, f in fisher.items()}
        else:
            self.importance = fisher
        self.anchor = {n: p.detach().clone() for n, p in self.regularised().items()}
