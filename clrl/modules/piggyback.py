"""Piggyback: the first task's network, frozen, and a learned binary mask over its weights per later task."""

from __future__ import annotations

from typing import Any

import torch

from clrl.algorithms import Networks
from clrl.errors import ConfigError
from clrl.modules.base import TaskInfo, check_bool, check_non_negative, check_positive
from clrl.modules.masks import TaskMasks, set_backbone_trainable


class Piggyback(TaskMasks):
    """Piggyback: the first task trains the network; every later task learns a binary mask over its frozen
    weights, and its own output heads.

    The masks live in the algorithm's masked policy (:func:`clrl.masked_policy`:
    ``PPO(clrl.MaskedActorCriticPolicy, env, policy_kwargs={"n_tasks": n})``, likewise ``MaskedDQNPolicy``,
    ``MaskedSACPolicy``, ``MaskedTD3Policy``): every hidden layer of every network (actor, critic, value
    function, Q-networks and their targets) holds one mask per task, and every output layer is a per-task
    head, as in :class:`clrl.MultiHead`. Task 0 trains the whole network, unmasked (the paper's pretrained
    backbone). From task 1 on, the hidden layers' weights and biases are frozen, and task ``t`` trains
    real-valued scores ``s`` (starting at ``init``) whose binarisation ``s > threshold`` masks the weights;
    the gradient reaches ``s`` straight through the threshold. When the task ends its mask is stored as bits
    and never changes, so each task's policy is exactly what it ended with (``set_task(j)``, or the task id
    in the observation, selects it). Costs: a mask multiply per layer and forward pass; one bit per hidden
    weight per task stored (a bool, one byte, in memory), plus the heads.

    Paper: Mallya, Davis & Lazebnik 2018, "Piggyback: Adapting a Single Network to Multiple Tasks by
    Learning to Mask Weights" (ECCV).

    Deviations: the paper's backbone is an ImageNet-pretrained classifier and each new dataset gets a new
    classifier layer; here the backbone is the first task's policy (trained in the stream), and every
    task's output layers are its own heads. The paper trains the masks with their own optimiser (Adam, lr
    1e-4) and the classifier with another; here the scores join the algorithm's optimiser and learning rate.
    The paper has no critic: by default (``networks="actor"``) only what chooses actions is masked, and the
    critics and value function (and their targets) train as plain layers on every task, with a head per
    task; ``networks="all"`` masks them too, so each task keeps its own value function, and then a later
    task's critic is a mask over the first task's. A Gaussian policy's
    state-independent ``log_std`` (PPO, A2C on Box actions) is shared and keeps training, so it changes a
    stochastic earlier policy (not its deterministic actions, which evaluation uses).

    Args:
        threshold: Scores above it keep their weight (the paper's 5e-3).
        init: The scores' initial value (the paper's 1e-2: above the threshold, so a task starts from the
            whole backbone).
        require_task_id: Refuse streams whose task id is hidden in ``clrl.train`` (the masks are routed by
            it).
        verbose: SB3 callback verbosity.
        networks: ``"actor"`` (default) masks the networks that choose actions (DQN's Q-network, the actor
            of SAC and TD3, PPO's and A2C's policy network) and lets critics and value functions train
            freely; ``"all"`` masks every network.
    """

    name = "piggyback"

    def __init__(
        self,
        threshold: float = 5e-3,
        init: float = 1e-2,
        require_task_id: bool = True,
        verbose: int = 0,
        networks: Networks = "actor",
    ) -> None:
        super().__init__(check_bool(require_task_id, "Piggyback require_task_id"), verbose, networks)
        self.threshold = check_non_negative(threshold, "Piggyback threshold")
        self.init = check_positive(init, "Piggyback init")
        if self.threshold >= self.init:
            raise ConfigError(
                f"Piggyback threshold must be below init={self.init}, so that a task starts with every "
                f"weight; got {threshold!r}"
            )

        self.backbone: int | None = None
        """The task that trained the backbone (the first one trained)."""

    def start_masks(self, task: TaskInfo) -> None:
        """The first task trains the backbone; later tasks freeze it and train scores from ``init``."""
        first = self.backbone is None  # a later visit of the backbone's task learns a mask like any other
        if first:
            self.backbone = task.index
        set_backbone_trainable(self.layers(), first)
        with torch.no_grad():
            for layer in self.layers():
                layer.scores.fill_(self.init)
                layer.live_task, layer.rule = (
                    (None, None) if first else (task.index, ("threshold", self.threshold))
                )
                layer.scores.requires_grad_(not first)

    def state_dict(self) -> dict[str, Any]:
        """The last task trained and the backbone's task."""
        return {**super().state_dict(), "backbone": self.backbone}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        backbone = state.get("backbone")
        self.backbone = None if backbone is None else int(backbone)
