"""SI: importance accumulated online along the optimisation path."""

from __future__ import annotations

from typing import ClassVar

import torch

from clrl.algorithms import Networks
from clrl.modules.base import ParamGroup, TaskInfo, add_to_grad, check_positive, check_positive_int
from clrl.modules.penalty import QuadraticPenalty, Tensors


class PathIntegralPenalty(QuadraticPenalty):
    """A quadratic penalty whose importance comes from the optimisation path (SI, RWalk): the hooks that
    record, at every optimiser step, the task's gradient ``g`` (right after SB3's backward, without this
    module's penalty) and the step's parameter change ``Δθ``, and accumulate ``ω -= g · Δθ`` (the loss
    change to first order) since :meth:`begin_segment`. Subclasses turn it into an importance in
    :meth:`consolidate`.

    Args:
        strength: Penalty coefficient (>= 0). At 0 training equals plain SB3 exactly.
        networks: ``"actor"`` or ``"all"``.
        verbose: SB3 callback verbosity.
    """

    def __init__(self, strength: float, networks: Networks = "actor", verbose: int = 0) -> None:
        super().__init__(strength, networks, verbose)
        self.omega: Tensors = {}
        """The path integral since the segment started."""
        self._start: Tensors = {}
        self._grads: Tensors = {}
        self._before: dict[str, list[torch.Tensor]] = {}
        self._penalty: dict[str, list[torch.Tensor]] = {}

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Every regularised parameter, from the first task on (the path integral needs all steps)."""
        return self.regularised()

    def on_task_start(self, task: TaskInfo) -> None:
        """Start a new path integral at the current parameters."""
        self.begin_segment()

    def begin_segment(self) -> None:
        """Start a new path integral at the current parameters."""
        params = self.regularised()
        self._start = {n: p.detach().clone() for n, p in params.items()}
        self.omega = {n: torch.zeros_like(p) for n, p in params.items()}
        self._grads = {n: torch.zeros_like(p) for n, p in params.items()}

    def attach(self) -> None:
        """Install the hooks, with fresh step records."""
        super().attach()
        self._before, self._penalty = {}, {}

    def after_backward(self, name: str, param: torch.nn.Parameter) -> None:
        """Record the gradient right after SB3's backward (unclipped, the penalty's share included)."""
        if param.grad is not None:
            self._grads[name].copy_(param.grad)

    def add_penalty_gradients(self, group: ParamGroup) -> None:
        """Clear the gradient record, then add the penalty (kept, to subtract it from the record)."""
        grads = [self._grads[n] for n in group.names]
        torch._foreach_zero_(grads)
        if not self.anchor:
            return
        penalty = self.penalty_gradients(group)
        self._penalty[group.optimizer_name] = penalty
        for param, grad in zip(group.params, torch._foreach_mul(penalty, 1.0), strict=True):
            add_to_grad(param, grad)

    def adjust_gradients(self, group: ParamGroup) -> None:
        """Record the parameters before the step."""
        before = self._before.get(group.optimizer_name)
        if before is None:
            self._before[group.optimizer_name] = [p.detach().clone() for p in group.params]
        else:
            torch._foreach_copy_(before, group.params)

    def after_update(self, group: ParamGroup) -> None:
        """``ω -= (g - penalty) · Δθ`` with the step's change ``Δθ`` and the recorded gradient ``g``."""
        with torch.no_grad():
            omega = [self.omega[n] for n in group.names]
            delta = torch._foreach_sub(group.params, self._before[group.optimizer_name])
            torch._foreach_addcmul_(omega, delta, [self._grads[n] for n in group.names], value=-1.0)
            penalty = self._penalty.get(group.optimizer_name)
            if penalty is not None:
                torch._foreach_addcmul_(omega, delta, penalty, value=1.0)

    def task_gradients(self, group: ParamGroup) -> list[torch.Tensor]:
        """The gradient of the task's loss at the step just taken (the recorded one, this module's penalty
        taken out), for ``group``'s parameters."""
        grads = [self._grads[n] for n in group.names]
        penalty = self._penalty.get(group.optimizer_name)
        return list(torch._foreach_sub(grads, penalty)) if penalty is not None else grads


class SI(PathIntegralPenalty):
    """Synaptic intelligence: each parameter's share of the loss decrease along the training path.

    During a task, every optimiser step adds ``-g_i · Δθ_i`` to the path integral ``ω_i``, where ``Δθ`` is
    the step's actual parameter change and ``g`` the gradient of the task's loss *before* clipping and
    without SI's own penalty (read with a post-accumulate-grad hook on each parameter, right after SB3's
    backward). When the task ends, ``Ω_i += max(ω_i, 0) / ((θ_i - θ^start_i)² + damping)``; negative path
    integrals (steps that raised the loss, e.g. from noisy policy-gradient estimates) are dropped so the
    penalty stays a pull. The penalty is ``strength/2 · Σ_i Ω_i (θ_i - θ*_i)²`` with ``θ*`` the parameters
    at the end of the previous task. The loss is whatever SB3 optimises for these parameters (PPO's
    clipped surrogate plus entropy and value terms, SAC's actor loss, DQN's TD loss), so ``Ω`` is in that
    loss's units; tune the strength per algorithm.

    **Task-free mode** (``every``, clrl's, not the paper's, which consolidates at task ends): every ``every``
    environment steps, at the end of the first rollout at or after each multiple (on the states just
    collected, before they are learned), the module does what a task end does (the path integral since the
    last consolidation folded into the importance, the current parameters the anchor and the start of the next
    integral), so it works on a stream that hides its boundaries (``needs_boundaries()`` is then false).
    Aljundi et al. 2019 ("Task-Free Continual Learning", CVPR) consolidate at plateaus of the loss instead;
    :class:`clrl.BoundaryDetector` gives a module boundaries found in the training returns.

    Paper: Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic Intelligence", ICML,
    https://arxiv.org/abs/1703.04200

    Args:
        strength: Penalty coefficient ``c`` (>= 0). At 0 training equals plain SB3 exactly.
        damping: ``ξ`` (> 0) in the denominator, bounding the importance of parameters that barely moved.
        networks: ``"actor"`` (default) or ``"all"``.
        every: Also consolidate every ``every`` environment steps (task-free mode, above); ``None``
            (default): at task ends only.
        verbose: SB3 callback verbosity.
    """

    name = "si"
    task_free_with: ClassVar[str | None] = "every=K"

    def __init__(
        self,
        strength: float = 1.0,
        damping: float = 0.1,
        networks: Networks = "actor",
        every: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(strength, networks, verbose)
        self.damping = check_positive(damping, "SI damping")
        self.every = None if every is None else check_positive_int(every, "SI every")

    def on_task_end(self, task: TaskInfo) -> None:
        """Fold the path integral into the importance; the current parameters become the anchor."""
        self.end_of_task_consolidation(task)

    def consolidate(self, *key: int) -> None:
        """Fold the path integral since the last consolidation (or the task start) into the importance;
        the current parameters become the anchor."""
        params = self.regularised()
        for name, omega in self.omega.items():
            moved = (params[name].detach() - self._start[name]).square()
            share = omega.clamp_min(0) / (moved + self.damping)
            self.importance[name] = self.importance[name] + share if name in self.importance else share
        self.anchor = {n: p.detach().clone() for n, p in params.items()}
        self._cache = {}
