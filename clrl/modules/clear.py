"""CLEAR's behaviour cloning on states of earlier tasks, for on-policy agents (PPO, A2C, RecurrentPPO)."""

from __future__ import annotations

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from clrl.errors import ConfigError
from clrl.modules.base import ParamGroup, TaskInfo, check_non_negative
from clrl.modules.distill import (
    OutputReplay,
    distillation_losses,
    network_outputs,
    rollout_rows,
)
from clrl.modules.memory import Budget


class CLEAR(OutputReplay):
    """CLEAR: behaviour cloning toward earlier tasks' policies and values on replayed states.

    While a task trains, the states of every rollout are offered to the task's reservoir (a uniform sample
    of the whole task; all tasks share ``budget`` states, see :class:`clrl.Replay`). When the task ends, the
    policy's action distribution and value on those states are stored with them. On every later update,
    ``batch_size`` stored states of earlier tasks are drawn and the loss

        ``policy_coef · KL(π_old(.|s) ‖ π(.|s)) + value_coef · (V(s) - V_old(s))²``

    is back-propagated into the policy's gradient right after SB3's ``zero_grad``, so SB3's own loss adds to
    it and its gradient clipping treats it as one more term of the loss.

    Differences from the paper, for SB3's on-policy algorithms: the targets are the policy and value at the
    end of the task (not the behaviour policy at acting time, and no V-trace off-policy correction of the
    replayed returns: the value is regressed onto the old value, which needs no rewards); RecurrentPPO
    replays each state with the LSTM state stored in its rollout (one step, gradient truncated there).
    Replay of earlier tasks needs the task id in the observation when tasks disagree on the same states;
    ``clrl.train`` refuses a hidden task id unless ``require_task_id=False``.

    Paper: Rolnick et al. 2019, "Experience Replay for Continual Learning" (NeurIPS).

    Args:
        budget: States kept over all tasks (``"all"``: unbounded).
        batch_size: Replayed states per update (default: the algorithm's ``batch_size``, or the rollout size
            for A2C).
        policy_coef: Weight of the KL term (>= 0).
        value_coef: Weight of the value regression (>= 0). With both weights 0 training equals plain SB3.
        require_task_id: Refuse streams with a hidden task id in ``clrl.train``.
        verbose: SB3 callback verbosity.
    """

    name = "clear"

    def __init__(
        self,
        budget: Budget = 20_000,
        batch_size: int | None = None,
        policy_coef: float = 1.0,
        value_coef: float = 0.5,
        require_task_id: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(budget, batch_size, require_task_id, verbose)
        self.policy_coef = check_non_negative(policy_coef, "CLEAR policy_coef")
        self.value_coef = check_non_negative(value_coef, "CLEAR value_coef")
        self._last: dict[str, float] = {}

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse an off-policy algorithm (before anything trains)."""
        if not isinstance(model, OnPolicyAlgorithm):
            raise ConfigError(
                f"CLEAR is for on-policy algorithms (PPO, A2C, RecurrentPPO), got "
                f"{type(model).__name__}; use Replay for off-policy algorithms"
            )
        super().check_model(model)

    def on_task_start(self, task: TaskInfo) -> None:
        """Open the task's reservoir and seed the sampling generators."""
        super().on_task_start(task)
        self._last = {}

    def _on_rollout_end(self) -> None:
        assert isinstance(self.model, OnPolicyAlgorithm)
        self.memory.record(rollout_rows(self.model), self._rng)
        super()._on_rollout_end()

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Every policy parameter, once an earlier task is in memory (and a weight is non-zero)."""
        if not self.memory.finished() or self.policy_coef == self.value_coef == 0:
            return {}
        return dict(self.sb3_model.policy.named_parameters())

    def extra_loss(self, group: ParamGroup) -> torch.Tensor | None:
        """The behaviour-cloning loss on a batch of earlier tasks' states."""
        model = self.sb3_model
        rows, old = self.memory.sample_outputs(model, self.replay_batch_size(), self._sample_rng)
        losses = distillation_losses(model, old, network_outputs(model, rows, ("actor", "critic")))
        self._last = {"kl": losses["actor"].item(), "value_loss": losses["critic"].item()}
        return self.policy_coef * losses["actor"] + self.value_coef * losses["critic"]

    def log_scalars(self) -> dict[str, float]:
        """``kl`` and ``value_loss`` of the last update, ``bytes`` and ``states`` held in memory."""
        return {**self._last, **super().log_scalars()}
