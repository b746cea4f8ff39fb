"""LwF: distillation from the policy of the end of the previous task, on the current task's states."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from clrl.algorithms import Networks, check_networks, policy_parameters, samples_per_update
from clrl.errors import ConfigError
from clrl.modules.base import ContinualModule, ParamGroup, TaskInfo, check_non_negative, check_positive_int
from clrl.modules.distill import (
    Frozen,
    check_distillable,
    distillation_losses,
    frozen_copy,
    group_parts,
    network_outputs,
    rollout_rows,
)
from clrl.modules.memory import Rows
from clrl.modules.multihead import task_router


class LwF(ContinualModule):
    """LwF: Learning without Forgetting, distillation from the previous task's policy on current states.

    When a task ends, a frozen copy of the policy is kept as the teacher (parameters without gradients,
    evaluation mode, on no optimiser). While the next task trains, every optimiser step of the regularised
    networks also minimises

        ``strength · D(teacher(s) ‖ policy(s))``

    on ``batch_size`` states of the task being trained: on-policy, states drawn from the rollout SB3 is
    training on; off-policy, states (and actions) drawn from the replay buffer. ``D`` is
    :mod:`clrl.modules.distill`'s divergence: KL of the action distributions (categorical; diagonal Gaussian,
    SAC's before its tanh), squared error of deterministic actions (TD3) and Q-values (DQN); with
    ``networks="all"`` also of the value (PPO/A2C) and the critics' ``Q(s, a)`` at the buffer's action
    (SAC/TD3, on the critic optimiser). The loss is back-propagated right after SB3's ``zero_grad``, so
    SB3's gradient clipping treats it as a term of SB3's loss. No data of earlier tasks is stored: the
    teacher (one copy of the policy, replaced at each task end) is all the module keeps.

    Relative to the paper: Li & Hoiem train a new head for each new task and distil the old heads' recorded
    responses with temperature 2; a shared-output RL policy has no separate heads, so the teacher's
    outputs on the new task's states are the targets, at temperature 1 (the KL of the policies themselves).
    A multi-head or progressive policy (``multihead+lwf``) is refused: its teacher would route the new
    task's states to the new task's untrained head, and distilling the old heads is not implemented.

    Paper: Li & Hoiem 2016, "Learning without Forgetting" (ECCV; TPAMI 2017).

    Args:
        strength: Weight of the distillation loss (>= 0; 0 trains exactly as plain SB3).
        batch_size: States per optimiser step (default: the algorithm's ``batch_size``, or the rollout size
            for A2C).
        networks: ``"actor"`` (default) distils what chooses actions; ``"all"`` adds values and critics.
        verbose: SB3 callback verbosity.
    """

    name = "lwf"

    def __init__(
        self,
        strength: float = 1.0,
        batch_size: int | None = None,
        networks: Networks = "actor",
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.strength = check_non_negative(strength, "LwF strength")
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "LwF batch_size")
        self.networks: Networks = check_networks(networks)
        self.teacher: torch.nn.Module | None = None
        """The frozen policy of the end of the previous task (``None`` during the first task)."""
        self._pending: dict[str, torch.Tensor] | None = None
        self._rows: Rows | None = None
        self._rng = np.random.default_rng(0)
        self._last: dict[str, float] = {}

    # ------------------------------------------------------------------------------------ task boundaries
    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse an algorithm or policy whose outputs are not defined, and a policy routed by task (before
        anything trains)."""
        check_distillable(model, "LwF")
        if task_router(model) is not None:
            # The teacher would route the new task's states to the new task's head or column, which never
            # trained: the paper distils the old heads, which this module does not implement.
            raise ConfigError(
                "LwF distils the policy's output on the new task's states, which a multi-head or progressive "
                "policy routes to the new task's untrained head; LwF with such a policy is not supported"
            )

    def on_task_start(self, task: TaskInfo) -> None:
        """Materialise a loaded teacher, seed the state sampling."""
        model = self.sb3_model
        if self._pending is not None:
            self.teacher = self._freeze(model)
            self.teacher.load_state_dict(self._pending)
            self._pending = None
        self._rng = np.random.default_rng([model.seed or 0, task.index])
        self._rows = None
        self._last = {}

    def on_task_end(self, task: TaskInfo) -> None:
        """Keep a frozen copy of the policy as the next task's teacher."""
        self.teacher = self._freeze(self.sb3_model)

    @staticmethod
    def _freeze(model: BaseAlgorithm) -> torch.nn.Module:
        return frozen_copy(model)

    # ------------------------------------------------------------------------------------ training
    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The parameters of ``networks`` once there is a teacher (and ``strength > 0``)."""
        if self.teacher is None or self.strength == 0:
            return {}
        return policy_parameters(self.sb3_model, self.networks)

    def _on_rollout_end(self) -> None:
        if isinstance(self.model, OnPolicyAlgorithm) and self.teacher is not None:
            self._rows = rollout_rows(self.model)  # before SB3 flattens the buffer for training
        super()._on_rollout_end()

    def _batch_size(self) -> int:
        return self.batch_size if self.batch_size is not None else samples_per_update(self.sb3_model)

    def current_states(self, n: int) -> Rows:
        """``n`` states (with actions) of the task being trained (on-policy: of the last rollout), drawn
        with the module's generator."""
        model = self.sb3_model
        if isinstance(model, OnPolicyAlgorithm):
            if self._rows is None:
                raise RuntimeError("LwF has recorded no rollout of this task yet")
            size = len(self._rows["action"])
            index = self._rng.integers(0, size, n)
            return {k: v[index] for k, v in self._rows.items()}
        buffer: Any = cast(OffPolicyAlgorithm, model).replay_buffer
        upper = buffer.buffer_size if buffer.full else buffer.pos
        if upper == 0:
            raise ConfigError("LwF found the replay buffer empty; it needs states of the current task")
        rows_at, envs = self._rng.integers(0, upper, n), self._rng.integers(0, buffer.n_envs, n)
        obs = buffer.observations
        rows: Rows = (
            {f"obs.{k}": v[rows_at, envs] for k, v in obs.items()}
            if isinstance(obs, dict)
            else {"obs": obs[rows_at, envs]}
        )
        rows["action"] = buffer.actions[rows_at, envs].reshape(n, -1).astype(np.float32)
        return rows

    def extra_loss(self, group: ParamGroup) -> torch.Tensor | None:
        """``strength`` times the divergence of the policy from the teacher on current states."""
        assert self.teacher is not None
        model = self.sb3_model
        parts = group_parts(model, group.optimizer_name, self.networks)
        rows = self.current_states(self._batch_size())
        with torch.no_grad():
            old = network_outputs(cast(BaseAlgorithm, Frozen(self.teacher, model.device)), rows, parts)
        losses = distillation_losses(model, old, network_outputs(model, rows, parts))
        total = sum(losses.values())
        assert isinstance(total, torch.Tensor)
        for part, value in losses.items():
            self._last[f"{part}_loss"] = value.item()
        return self.strength * total

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The teacher's parameters and buffers (empty before the first task ends)."""
        if self.teacher is not None:
            return {"teacher": {k: v.detach().clone() for k, v in self.teacher.state_dict().items()}}
        if self._pending is not None:
            return {"teacher": dict(self._pending)}
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the teacher (built from the model's policy when the module is next attached)."""
        self.teacher = None
        self._pending = state.get("teacher")
        if self._pending is not None and getattr(self, "model", None) is not None:
            self.teacher = self._freeze(self.sb3_model)
            self.teacher.load_state_dict(self._pending)
            self._pending = None

    def log_scalars(self) -> dict[str, float]:
        """``actor_loss`` (and ``critic_loss``) of the last step: the divergence before ``strength``."""
        return dict(self._last)
