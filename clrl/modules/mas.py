"""MAS: importance from the sensitivity of the policy's output to each parameter."""

from __future__ import annotations

from typing import ClassVar

import torch

from clrl.algorithms import Networks
from clrl.modules.base import TaskInfo, check_positive_int
from clrl.modules.importance import StateBatch, mas_importance
from clrl.modules.penalty import ImportancePenalty, Tensors


class MAS(ImportancePenalty):
    """Memory aware synapses: importance from how much each parameter moves the network's output.

    After each task, ``Ω_i = 1/N Σ_s |∂ ||y(s)||² / ∂θ_i|`` over ``samples`` states of the task, where
    ``y`` are the network's raw outputs (logits, Gaussian mean and log-std, deterministic actions,
    Q-values; values and critics' Q-values too with ``networks="all"``). No labels, rewards or actions are
    needed. Importances add up over tasks and the anchor is the parameters at the end of the latest task;
    the penalty is ``strength/2 · Σ_i Ω_i (θ_i - θ*_i)²``.

    **Task-free mode** (``every``, clrl's, not the paper's, which consolidates at task ends): every ``every``
    environment steps, at the end of the first rollout at or after each multiple (on the states just
    collected, before they are learned), the module does what a task end does (the importance on the states
    since the last consolidation added, the current parameters the anchor), so it works on a stream that hides
    its boundaries (``needs_boundaries()`` is then false). Aljundi et al. 2019 ("Task-Free Continual
    Learning", CVPR) consolidate at plateaus of the loss instead; :class:`clrl.BoundaryDetector` gives a
    module boundaries found in the training returns.

    Paper: Aljundi et al. 2018, "Memory Aware Synapses: Learning what (not) to forget", ECCV,
    https://arxiv.org/abs/1711.09601

    Args:
        strength: Penalty coefficient ``λ`` (>= 0). At 0 training equals plain SB3 exactly.
        samples: States the importance is averaged over (from the model's buffer at the end of the task).
        networks: ``"actor"`` (default) or ``"all"``.
        every: Also consolidate every ``every`` environment steps (task-free mode, above); ``None``
            (default): at task ends only.
        verbose: SB3 callback verbosity.
    """

    name = "mas"
    task_free_with: ClassVar[str | None] = "every=K"

    def __init__(
        self,
        strength: float = 1.0,
        samples: int = 1024,
        networks: Networks = "actor",
        every: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(strength, samples, networks, verbose)
        self.every = None if every is None else check_positive_int(every, "MAS every")

    def importance_of(self, params: dict[str, torch.nn.Parameter], states: StateBatch) -> Tensors:
        """The MAS sensitivity on ``states``."""
        return mas_importance(self.sb3_model, params, states, self.networks)

    def on_task_end(self, task: TaskInfo) -> None:
        """Add the task's importance; the current parameters become the anchor."""
        self.end_of_task_consolidation(task)

    def consolidate(self, *key: int) -> None:
        """Add the importance on the states since the last consolidation (or the task start); the current
        parameters become the anchor."""
        omega = self.estimate(*key)
        self.importance = {n: self.importance[n] + w for n, w in omega.items()} if self.importance else omega
        self.anchor = {n: p.detach().clone() for n, p in self.regularised().items()}
