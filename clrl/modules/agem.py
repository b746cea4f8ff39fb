"""A-GEM: project each gradient so that it does not increase the loss on earlier tasks' states."""

from __future__ import annotations

from typing import Literal

import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from clrl.algorithms import Networks, check_networks, policy_parameters
from clrl.errors import ConfigError
from clrl.modules.base import ParamGroup, TaskInfo
from clrl.modules.distill import (
    OutputMemory,
    OutputReplay,
    StateRecorder,
    check_distillable,
    distillation_losses,
    group_parts,
    network_outputs,
)
from clrl.modules.memory import Budget, MemoryDtype


def project_gradient(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> bool:
    """A-GEM's projection, in place: if ``g · g_ref < 0``, ``g ← g - (g · g_ref / g_ref · g_ref) g_ref``.

    Args:
        grads: The gradient ``g``, one tensor per parameter (changed in place).
        reference: The reference gradient ``g_ref``, aligned with ``grads``.

    Returns:
        Whether the gradient was projected.
    """
    g, r = torch.cat([t.reshape(-1) for t in grads]), torch.cat([t.reshape(-1) for t in reference])
    dot = float(g @ r)
    if dot >= 0:
        return False
    norm = float(r @ r)
    if norm == 0:
        return False
    torch._foreach_add_(grads, reference, alpha=-dot / norm)
    return True


class AGEM(StateRecorder, OutputReplay):
    """A-GEM: gradient projection against a memory of earlier tasks, on- and off-policy.

    States of each task are kept in a reservoir (on-policy: every rollout's states; off-policy: every
    step's state and action; all tasks share ``budget``), with the networks' outputs on them at the end of
    their task. At every optimiser step, the reference gradient ``g_ref`` of the memory loss on
    ``batch_size`` stored states is computed for that optimiser's parameters, and when the update's
    gradient ``g`` conflicts with it (``g · g_ref < 0``) it is replaced by

        ``g - (g · g_ref / g_ref · g_ref) g_ref``,

    so that, to first order, the step does not increase the memory loss.

    **The memory loss.** Chaudhry et al. use the task loss on stored examples; an RL loss of an earlier task
    would need that task's rewards, returns or target networks. Here the memory loss is how far the
    networks' outputs on stored states have moved from their outputs at the end of the task
    (:mod:`clrl.modules.distill`: KL for action distributions, squared error for values, Q-values and
    deterministic actions), each optimiser taking the part it steps: PPO/A2C's optimiser the KL plus the
    value error, SAC/TD3's actor optimiser the actor part and critic optimiser the critics' Q-values, DQN's
    the Q-values.

    **Relative to gradient clipping.** The projection runs after SB3 clips the gradient, just before the
    optimiser step; a projection never lengthens a gradient, so ``max_grad_norm`` still bounds it.
    (Projecting before clipping would give the same direction; clipping rescales the whole gradient.)

    **What holds with Adam.** The paper's guarantee (the update does not increase the memory loss to first
    order) is about the step, and the step is ``-lr · g`` only with plain SGD. SB3's optimisers are Adam
    (RMSprop for A2C), whose step ``-lr · m / (sqrt(v) + eps)`` follows the moment estimates, not the
    projected gradient: with ``project="gradient"`` (default, as the paper's own code, which uses SGD) the
    gradient fed to the optimiser never conflicts with ``g_ref``, but the step taken still can (measured in
    ``tests/test_replay.py``, DQN on the tiny CartPole stream's second task: with Adam 22 of 32 steps moved
    along ``g_ref``, cosine up to 0.49; with SGD, and with ``project="step"``, none beyond float rounding,
    cosine at most 2e-4). ``project="step"`` applies the projection to the step the
    optimiser actually took: after ``optimizer.step()``, a parameter change ``Δ`` with ``Δ · g_ref > 0`` is
    replaced by ``Δ - (Δ · g_ref / g_ref · g_ref) g_ref`` (Adam's moment estimates keep the unprojected
    gradient). It forgets more, not less (README, "Replay modules": DQN on two cartpole-flip tasks, 3
    seeds, forgetting 211.8 against the gradient projection's 102.9 and fine-tuning's 410.8).

    Paper: Chaudhry et al. 2019, "Efficient Lifelong Learning with A-GEM" (ICLR).

    Args:
        budget: States kept over all tasks (``"all"``: unbounded).
        batch_size: Memory states per reference gradient (default: the algorithm's ``batch_size``, or the
            rollout size for A2C).
        networks: ``"all"`` (default) projects every optimiser's gradient (critics and value too);
            ``"actor"`` only what chooses actions.
        require_task_id: Refuse streams with a hidden task id in ``clrl.train``.
        project: ``"gradient"`` (default, the paper's rule on the gradient given to the optimiser) or
            ``"step"`` (the same rule on the parameter change the optimiser made; see above).
        memory_dtype: How the memory stores floating-point fields: ``"float32"`` (default, as given),
            ``"float16"`` (half the bytes, float16's precision) or ``"uint8"`` (a quarter, per-feature codes
            within 1/255 of each feature's range; see :class:`clrl.modules.memory.Reservoir`).
        verbose: SB3 callback verbosity.
    """

    name = "agem"
    memory: OutputMemory

    def __init__(
        self,
        budget: Budget = 20_000,
        batch_size: int | None = None,
        networks: Networks = "all",
        require_task_id: bool = True,
        project: Literal["gradient", "step"] = "gradient",
        memory_dtype: MemoryDtype = "float32",
        verbose: int = 0,
    ) -> None:
        super().__init__(budget, batch_size, require_task_id, verbose, memory_dtype)
        self.networks: Networks = check_networks(networks)
        if project not in ("gradient", "step"):
            raise ConfigError(f"AGEM project must be 'gradient' or 'step', got {project!r}")
        self.project: Literal["gradient", "step"] = project
        self._before: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self.steps = 0
        """Optimiser steps seen during the current task."""
        self.projections = 0
        """Of those, steps whose gradient was projected."""

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse an algorithm or policy whose outputs are not defined (before anything trains)."""
        check_distillable(model, "AGEM")
        super().check_model(model)

    def on_task_start(self, task: TaskInfo) -> None:
        """Open the task's reservoir and seed the sampling generators."""
        super().on_task_start(task)
        self.steps = self.projections = 0

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The parameters of ``networks``, once an earlier task is in memory."""
        if not self.memory.finished():
            return {}
        return policy_parameters(self.sb3_model, self.networks)

    def reference_gradient(self, group: ParamGroup, tasks: list[int] | None = None) -> list[torch.Tensor]:
        """Gradient of the memory loss on a fresh batch of stored states (of every earlier task, or of the
        reservoirs at positions ``tasks``), for ``group``'s parameters."""
        model = self.sb3_model
        rows, old = self.memory.sample_outputs(model, self.replay_batch_size(), self._sample_rng, tasks)
        parts = group_parts(model, group.optimizer_name, self.networks)
        losses = distillation_losses(model, old, network_outputs(model, rows, parts))
        loss = sum(losses.values())
        assert isinstance(loss, torch.Tensor)
        # Frozen parameters (requires_grad=False: a mask method's backbone) have no gradient: zero.
        trained = [p for p in group.params if p.requires_grad]
        found = (
            torch.autograd.grad(loss, trained, allow_unused=True) if loss.requires_grad and trained else ()
        )
        grads = dict(zip(map(id, trained), found, strict=False))
        return [g if (g := grads.get(id(p))) is not None else torch.zeros_like(p) for p in group.params]

    def adjust_gradients(self, group: ParamGroup) -> None:
        """Project the clipped gradient when it conflicts with the memory's reference gradient (or, with
        ``project="step"``, keep the parameters and ``g_ref`` to project the step after it is taken)."""
        params = [p for p in group.params if p.grad is not None]
        if not params:
            return
        self.steps += 1
        reference = dict(zip(map(id, group.params), self.reference_gradient(group), strict=True))
        if self.project == "step":
            before = [p.detach().clone() for p in group.params]
            self._before[group.optimizer_name] = (before, [reference[id(p)] for p in group.params])
            return
        grads: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
        if project_gradient(grads, [reference[id(p)] for p in params]):
            self.projections += 1

    def after_update(self, group: ParamGroup) -> None:
        """``project="step"``: project the parameter change when it moved along ``g_ref``."""
        saved = self._before.pop(group.optimizer_name, None)
        if saved is None:
            return
        before, reference = saved
        with torch.no_grad():
            # A-GEM's rule on -Δ, the step seen as a gradient: conflict when Δ · g_ref > 0.
            retreat = list(torch._foreach_sub(before, [p.detach() for p in group.params]))
            if project_gradient(retreat, reference):
                self.projections += 1
                for param, old, back in zip(group.params, before, retreat, strict=True):
                    param.copy_(old - back)

    def log_scalars(self) -> dict[str, float]:
        """``projected``: share of this task's steps whose gradient (or step) was projected; ``bytes``,
        ``states``."""
        return {"projected": self.projections / max(1, self.steps), **super().log_scalars()}
