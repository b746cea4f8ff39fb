"""RWalk: an online Fisher (EWC++) plus a path-integral score normalised by the Fisher's quadratic form."""

from __future__ import annotations

from typing import Any

import torch

from clrl.algorithms import Networks
from clrl.modules.base import ParamGroup, TaskInfo, check_fraction, check_positive_int
from clrl.modules.penalty import _cpu
from clrl.modules.si import PathIntegralPenalty


class RWalk(PathIntegralPenalty):
    """Riemannian Walk: the importance of a parameter is its running Fisher plus its score along the path.

    At every optimiser step, with ``g`` the task's gradient (without RWalk's penalty) and ``Δθ`` the step's
    change:

    * **EWC++ Fisher** (the paper's Eq. 6): ``F ← α g² + (1 - α) F`` (the first step sets ``F = g²``); it
      runs on across tasks.
    * **Loss change** ``Δℓ -= g · Δθ`` (first order), and every ``score_every`` steps the **score**
      ``s += Δℓ / (½ F (θ - θ_c)² + ε)`` (Eq. 7: the loss change over the interval divided by the
      Fisher's distance walked, ``θ_c`` the parameters at the interval's start, ``ε`` float32's epsilon),
      after which ``Δℓ`` and ``θ_c`` start again.

    When a task ends, its score is averaged with the earlier tasks' (``s ← ½ (s_earlier + s_task)``), and
    the importance becomes ``w = F / max F + max(s, 0) / max s`` (each term scaled into ``[0, 1]`` over all
    parameters, as the paper suggests), with the current parameters as the anchor. The penalty is
    ``strength/2 · Σ_i w_i (θ_i - θ*_i)²``, the paper's ``λ Σ (F + s)(θ - θ*)²`` with ``strength = 2λ``.

    Paper: Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning: Understanding Forgetting and
    Intransigence" (ECCV), https://arxiv.org/abs/1801.10112

    Deviations: the paper's Fisher is of the classifier's log-likelihood; here ``g`` is the gradient of
    whatever SB3 optimises (PPO's surrogate, DQN's TD loss, SAC's actor loss), as SI's in clrl. The paper
    also replays a few samples of earlier tasks (its "sampling" for class-incremental learning); clrl leaves
    that to a replay module beside it (``rwalk+replay``, ``rwalk+behaviour-cloning``). The score interval
    counts optimiser steps of each optimiser.

    Args:
        strength: Penalty coefficient (``2λ``; >= 0). At 0 training equals plain SB3 exactly.
        alpha: The Fisher's moving-average weight of the newest squared gradient ``α`` in [0, 1] (the
            paper's EWC++: 0.9).
        score_every: Optimiser steps per score interval ``Δt`` (>= 1; 10, as Avalanche's implementation).
        networks: ``"actor"`` (default) or ``"all"``.
        verbose: SB3 callback verbosity.
    """

    name = "rwalk"

    def __init__(
        self,
        strength: float = 1.0,
        alpha: float = 0.9,
        score_every: int = 10,
        networks: Networks = "actor",
        verbose: int = 0,
    ) -> None:
        super().__init__(strength, networks, verbose)
        self.alpha = check_fraction(alpha, "RWalk alpha")
        self.score_every = check_positive_int(score_every, "RWalk score_every")
        self.fisher: dict[str, torch.Tensor] = {}
        """The running (EWC++) Fisher, over the whole stream."""
        self.scores: dict[str, torch.Tensor] = {}
        """The score averaged over the finished tasks."""
        self.score: dict[str, torch.Tensor] = {}
        """The current task's score so far."""
        self._steps: dict[str, int] = {}

    def on_task_start(self, task: TaskInfo) -> None:
        """Start the task's score and the first interval at the current parameters."""
        super().on_task_start(task)
        self.score = {n: torch.zeros_like(p) for n, p in self.regularised().items()}
        self._steps = {}

    def after_update(self, group: ParamGroup) -> None:
        """The loss change (``ω``), the Fisher and, at the end of each interval, the score."""
        super().after_update(group)
        with torch.no_grad():
            grads = self.task_gradients(group)
            for name, g in zip(group.names, grads, strict=True):
                fisher = self.fisher.get(name)
                if fisher is None:
                    self.fisher[name] = g.square()
                else:
                    fisher.mul_(1 - self.alpha).addcmul_(g, g, value=self.alpha)
            steps = self._steps[group.optimizer_name] = self._steps.get(group.optimizer_name, 0) + 1
            if steps % self.score_every:
                return
            eps = torch.finfo(torch.float32).eps
            for name, param in zip(group.names, group.params, strict=True):
                walked = 0.5 * self.fisher[name] * (param.detach() - self._start[name]).square()
                self.score[name] += self.omega[name] / (walked + eps)
                self.omega[name].zero_()
                self._start[name].copy_(param.detach())

    def on_task_end(self, task: TaskInfo) -> None:
        """The importance from the Fisher and the averaged score; the current parameters become the anchor."""
        params = self.regularised()
        score = {n: self.score.get(n, torch.zeros_like(p)) for n, p in params.items()}
        self.scores = {n: 0.5 * (self.scores[n] + s) for n, s in score.items()} if self.scores else score
        fisher = {n: self.fisher.get(n, torch.zeros_like(p)) for n, p in params.items()}
        max_fisher = max(float(f.max()) for f in fisher.values())
        max_score = max(float(s.max()) for s in self.scores.values())
        self.importance = {
            n: fisher[n] / (max_fisher if max_fisher > 0 else 1.0)
            + self.scores[n].clamp_min(0) / (max_score if max_score > 0 else 1.0)
            for n in params
        }
        self.anchor = {n: p.detach().clone() for n, p in params.items()}
        self._cache = {}

    def state_dict(self) -> dict[str, Any]:
        """Anchor and importance, the running Fisher and the averaged score."""
        return {**super().state_dict(), "fisher": _cpu(self.fisher), "scores": _cpu(self.scores)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        super().load_state_dict(state)
        self.fisher = dict(state["fisher"])
        self.scores = dict(state["scores"])
