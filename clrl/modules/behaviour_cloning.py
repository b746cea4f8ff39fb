"""Behaviour cloning toward earlier tasks' networks on their stored states, for on- and off-policy agents."""

from __future__ import annotations

from typing import Literal

import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from clrl.algorithms import Networks, check_networks, policy_parameters
from clrl.errors import ConfigError
from clrl.modules.base import (
    ParamGroup,
    TaskInfo,
    add_to_grad,
    check_non_negative,
    check_positive,
    check_positive_int,
)
from clrl.modules.distill import (
    OutputMemory,
    OutputReplay,
    StateRecorder,
    check_distillable,
    distillation_losses,
    group_parts,
    network_outputs,
)
from clrl.modules.memory import Budget, MemoryDtype, Selection
from clrl.modules.mir import CANDIDATES_PER_REPLAYED, top_rows, virtual_step_scores

Retrieval = Literal["uniform", "mir"]


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

    **Retrieval by interference** (``retrieval="mir"``, MIR's rule for this memory, the on-policy
    counterpart of :class:`clrl.MIR`; Aljundi et al. 2019, "Online Continual Learning with Maximally
    Interfered Retrieval", NeurIPS). The ``batch_size`` states are not drawn uniformly but chosen, at each
    optimiser step, from ``candidates`` drawn uniformly: a virtual SGD step ``θ - α·g`` along the gradient
    ``g`` SB3's own loss has just put into ``.grad``, and the states whose cloning loss that step would
    increase most. Their cloning loss is then back-propagated and added to ``.grad`` before the step.
    Deviations: the cloning gradient is added after SB3's gradient clipping (it needs the gradient the
    clipping produced), not clipped with the loss as with ``retrieval="uniform"``; the paper's classifier
    is trained by SGD and its samples scored by cross-entropy, here the step is plain SGD at
    ``virtual_lr`` (default: the optimiser's learning rate) while SB3's is Adam's, and the score is the
    cloning loss. Cost per optimiser step: two forward passes on the candidates beside the one forward and
    backward pass on the chosen states.

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
        retrieval: ``"uniform"`` (default) draws the replayed states uniformly; ``"mir"`` chooses them by
            interference (above).
        candidates: ``retrieval="mir"``: states drawn per step to choose from, at least ``batch_size``
            (``None``: 5 per chosen state, as the MIR paper's code draws 50 for 10).
        virtual_lr: ``retrieval="mir"``: the virtual step's learning rate (``None``: the optimiser's).
        require_task_id: Refuse streams with a hidden task id in ``clrl.train``.
        memory_dtype: How the memory stores floating-point fields: ``"float32"`` (default, as given),
            ``"float16"`` (half the bytes, float16's precision) or ``"uint8"`` (a quarter, per-feature codes
            within 1/255 of each feature's range; see :class:`clrl.modules.memory.Reservoir`).
        verbose: SB3 callback verbosity.
        memory_selection: Which rows of an earlier task the memory keeps as later tasks take their share of
            the budget: ``"uniform"`` (default, a uniform subsample) or ``"herding"`` (iCaRL's herding on the
            observations; :func:`clrl.modules.memory.herding_order`).
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
        retrieval: Retrieval = "uniform",
        candidates: int | None = None,
        virtual_lr: float | None = None,
        require_task_id: bool = True,
        memory_dtype: MemoryDtype = "float32",
        verbose: int = 0,
        memory_selection: Selection = "uniform",
    ) -> None:
        super().__init__(budget, batch_size, require_task_id, verbose, memory_dtype, memory_selection)
        who = type(self).__name__
        self.policy_coef = check_non_negative(policy_coef, f"{who} policy_coef")
        self.value_coef = check_non_negative(value_coef, f"{who} value_coef")
        self.networks: Networks = check_networks(networks)
        if retrieval not in ("uniform", "mir"):
            raise ConfigError(f"{who} retrieval must be 'uniform' or 'mir', got {retrieval!r}")
        self.retrieval: Retrieval = retrieval
        self.candidates = None if candidates is None else check_positive_int(candidates, f"{who} candidates")
        self.virtual_lr = None if virtual_lr is None else check_positive(virtual_lr, f"{who} virtual_lr")
        self._last: dict[str, float] = {}
        self.chosen_score = 0.0
        """``retrieval="mir"``: mean score (cloning-loss increase) of the last step's chosen states."""
        self.candidate_score = 0.0
        """``retrieval="mir"``: mean score of all the last step's candidates."""

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse an algorithm or policy whose outputs are not defined (before anything trains)."""
        check_distillable(model, type(self).__name__)
        super().check_model(model)
        cloned = self.replay_batch_size(model)
        if self.retrieval == "mir" and self.candidates is not None and self.candidates < cloned:
            raise ConfigError(
                f"{type(self).__name__} candidates ({self.candidates}) must be at least the {cloned} states "
                f"cloned per update"
            )

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
        """The cloning loss of the parts ``group``'s optimiser steps, on a batch of earlier tasks' states
        (``retrieval="mir"``: none here; :meth:`adjust_gradients` adds it)."""
        if self.retrieval == "mir":
            return None
        model = self.sb3_model
        parts = group_parts(model, group.optimizer_name, self.networks)
        rows, old = self.memory.sample_outputs(model, self.replay_batch_size(), self._sample_rng)
        losses = distillation_losses(model, old, network_outputs(model, rows, parts))
        return self._weighted(losses, old, record=True)

    def _weighted(
        self, losses: dict[str, torch.Tensor], old: dict[str, torch.Tensor], record: bool = False
    ) -> torch.Tensor | None:
        """``policy_coef · actor + value_coef · critic`` of ``losses`` (means or rows), the means logged
        with ``record``."""
        loss: torch.Tensor | None = None
        if "actor" in losses:
            if record:
                self._last["kl" if {"logits", "mean"} & old.keys() else "actor_loss"] = losses["actor"].item()
            loss = self.policy_coef * losses["actor"]
        if "critic" in losses:
            if record:
                self._last["value_loss"] = losses["critic"].item()
            term = self.value_coef * losses["critic"]
            loss = term if loss is None else loss + term
        return loss

    def adjust_gradients(self, group: ParamGroup) -> None:
        """``retrieval="mir"``: choose the replayed states by interference with the gradient in ``.grad``
        and add their cloning gradient to it."""
        if self.retrieval != "mir" or all(p.grad is None for p in group.params):
            return
        model = self.sb3_model
        parts = group_parts(model, group.optimizer_name, self.networks)
        k = self.replay_batch_size()
        count = self.candidates if self.candidates is not None else CANDIDATES_PER_REPLAYED * k
        rows, old = self.memory.sample_outputs(model, count, self._sample_rng)

        def row_losses() -> torch.Tensor:
            per_row = distillation_losses(model, old, network_outputs(model, rows, parts), per_row=True)
            loss = self._weighted(per_row, old)
            assert loss is not None
            return loss

        lr = self.virtual_lr if self.virtual_lr is not None else float(group.optimizer.param_groups[0]["lr"])
        grads = [p.grad for p in group.params]
        scores = virtual_step_scores(group.params, grads, lr, row_losses)
        chosen = top_rows(scores, k)
        self.chosen_score, self.candidate_score = float(scores[chosen].mean()), float(scores.mean())
        index = chosen.cpu().numpy()
        chosen_rows = {key: value[index] for key, value in rows.items()}
        chosen_old = {key: value[chosen] for key, value in old.items()}
        losses = distillation_losses(model, chosen_old, network_outputs(model, chosen_rows, parts))
        loss = self._weighted(losses, chosen_old, record=True)
        if loss is None:
            return
        for param, grad in zip(
            group.params, torch.autograd.grad(loss, group.params, allow_unused=True), strict=True
        ):
            if grad is not None:
                add_to_grad(param, grad)

    def log_scalars(self) -> dict[str, float]:
        """The last update's ``kl`` (or ``actor_loss``) and ``value_loss``, ``bytes`` and ``states``
        (``retrieval="mir"``: also ``chosen_score`` and ``candidate_score``)."""
        scores = (
            {"chosen_score": self.chosen_score, "candidate_score": self.candidate_score}
            if self.retrieval == "mir"
            else {}
        )
        return {**self._last, **scores, **super().log_scalars()}
