"""Behaviour cloning toward earlier tasks' networks on their stored states, for on- and off-policy agents."""

from __future__ import annotations

import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from clrl.algorithms import Networks, check_networks, policy_parameters
from clrl.modules.base import ParamGroup, TaskInfo, check_non_negative
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


class BehaviourCloning(StateRecorder, OutputReplay):
    """Behaviour cloning toward the networks as they were at the end of each earlier task, on its states.

    While a task trains, its states are offered to the task's reservoir (a uniform sample of the whole task;
    all tasks share ``budget`` states, see :class:`clrl.Replay`): on-policy every rollout's, off-policy
    every step's, with the action taken. When the task ends, the networks' outputs on those states are
    stored with them (:mod:`clrl.modules.distill`). On every later update, ``batch_size`` stored states of
    earlier tasks are drawn and

        ``policy_coef · D(actor_old(s), actor(s)) + value_coef · (critic(s) - critic_old(s))²``

    is back-propagated right after SB3's ``zero_grad``, so SB3's own loss adds to it and its gradient
    clipping treats it as one more term of the loss. ``D`` is ``KL(π_old ‖ π)`` for action distributions
    (PPO, A2C, RecurrentPPO, SAC, TQC: SAC's Gaussian before the tanh), the squared distance of TD3's
    deterministic actions and of DQN's Q-values. The critic term is the value ``V(s)`` of actor-critic
    policies and every ``Q(s, a)`` of SAC/TD3's critics at the stored action. Each optimiser takes the part
    it steps: PPO/A2C's single optimiser both, SAC/TD3's actor optimiser the actor term and its critic
    optimiser the critic term (``networks="actor"`` leaves the critics free), DQN's the Q-values.

    This is not CLEAR (:class:`clrl.CLEAR`): its targets are the networks at the end of each task, not the
    behaviour policy at acting time, and nothing is learned off-policy from replayed rewards; the two
    terms have the form of CLEAR's cloning terms (Rolnick et al. 2019, section 3). Storing the outputs at
    the end of each task, the actor term alone (``networks="actor"``) on SAC, is the behavioural cloning
    of Wołczyk et al. 2022; :class:`clrl.ClonEx` adds their exploration. RecurrentPPO replays each state
    with the LSTM state stored in its rollout (one step, gradient truncated there). Replay of earlier tasks
    needs the task id in the observation when tasks disagree on the same states; ``clrl.train`` refuses a
    hidden task id unless ``require_task_id=False``.

    Paper: Wołczyk et al. 2022, "Disentangling Transfer in Continual Reinforcement Learning" (NeurIPS),
    section 4 (behavioural cloning of earlier tasks' outputs, stored when each task ends).

    Args:
        budget: States kept over all tasks (``"all"``: unbounded).
        batch_size: Stored states per update (default: the algorithm's ``batch_size``, or the rollout size
            for A2C).
        policy_coef: Weight of the actor term (>= 0).
        value_coef: Weight of the critic term (>= 0). With both weights 0 training equals plain SB3.
        networks: ``"all"`` (default) clones the actor and the critics; ``"actor"`` the actor only (and
            PPO/A2C's shared optimiser then gets the policy term alone).
        require_task_id: Refuse streams with a hidden task id in ``clrl.train``.
        memory_dtype: How the memory stores floating-point fields: ``"float32"`` (default, as given),
            ``"float16"`` (half the bytes, float16's precision) or ``"uint8"`` (a quarter, per-feature codes
            within 1/255 of each feature's range; see :class:`clrl.modules.memory.Reservoir`).
        verbose: SB3 callback verbosity.
    """

    name = "behaviour-cloning"
    memory: OutputMemory

    def __init__(
        self,
        budget: Budget = 20_000,
        batch_size: int | None = None,
        policy_coef: float = 1.0,
        value_coef: float = 0.5,
        networks: Networks = "all",
        require_task_id: bool = True,
        memory_dtype: MemoryDtype = "float32",
        verbose: int = 0,
    ) -> None:
        super().__init__(budget, batch_size, require_task_id, verbose, memory_dtype)
        who = type(self).__name__
        self.policy_coef = check_non_negative(policy_coef, f"{who} policy_coef")
        self.value_coef = check_non_negative(value_coef, f"{who} value_coef")
        self.networks: Networks = check_networks(networks)
        self._last: dict[str, float] = {}

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse an algorithm or policy whose outputs are not defined (before anything trains)."""
        check_distillable(model, type(self).__name__)
        super().check_model(model)

    def on_task_start(self, task: TaskInfo) -> None:
        """Open the task's reservoir and seed the sampling generators."""
        super().on_task_start(task)
        self._last = {}

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The parameters of ``networks``, once an earlier task is in memory (and a weight is non-zero)."""
        if not self.memory.finished() or self.policy_coef == self.value_coef == 0:
            return {}
        return policy_parameters(self.sb3_model, self.networks)

    def extra_loss(self, group: ParamGroup) -> torch.Tensor | None:
        """The cloning loss of the parts ``group``'s optimiser steps, on a batch of earlier tasks' states."""
        model = self.sb3_model
        parts = group_parts(model, group.optimizer_name, self.networks)
        rows, old = self.memory.sample_outputs(model, self.replay_batch_size(), self._sample_rng)
        losses = distillation_losses(model, old, network_outputs(model, rows, parts))
        loss: torch.Tensor | None = None
        if "actor" in losses:
            self._last["kl" if {"logits", "mean"} & old.keys() else "actor_loss"] = losses["actor"].item()
            loss = self.policy_coef * losses["actor"]
        if "critic" in losses:
            self._last["value_loss"] = losses["critic"].item()
            term = self.value_coef * losses["critic"]
            loss = term if loss is None else loss + term
        return loss

    def log_scalars(self) -> dict[str, float]:
        """The last update's ``kl`` (or ``actor_loss``) and ``value_loss``, ``bytes`` and ``states``."""
        return {**self._last, **super().log_scalars()}
