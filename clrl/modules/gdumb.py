"""GDumb: a balanced memory, and a policy trained from scratch on the memory alone for evaluation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from clrl.modules.base import TaskInfo, check_positive, check_positive_int
from clrl.modules.distill import (
    Frozen,
    StateRecorder,
    acting_with,
    action_log_likelihood,
    check_distillable,
    network_outputs,
    new_policy,
)
from clrl.modules.memory import Budget, MemoryDtype, MemoryModule, Rows


class GDumb(StateRecorder, MemoryModule):
    """GDumb: keep a balanced memory of every task's states and the actions taken there, and evaluate a
    policy trained from scratch on that memory alone.

    The agent learns each task as it would without the module (fine-tuning): it only collects the data.
    Every state it trains on is offered to the memory with the action it took (on-policy: each rollout;
    off-policy: each environment step), ``budget`` rows over all tasks, split equally among the tasks seen
    (each new task's share is made by shrinking the earlier ones): the paper's balanced sampler, with tasks
    as its classes. Whenever the policy is evaluated (after each task, and every ``eval_freq`` steps)
    and the memory has changed since the last time, a new policy of the model's class and arguments, freshly
    initialised, is trained for ``steps`` Adam steps of ``batch_size`` rows drawn uniformly from the memory
    to maximise the log-likelihood of the stored actions (behaviour cloning:
    :func:`clrl.modules.distill.action_log_likelihood`, the log-probability for stochastic policies, the
    squared distance for TD3's deterministic actor, a Boltzmann policy over Q-values for DQN). The evaluator
    acts with it (:meth:`evaluating`; :func:`clrl.export_policy` writes it); the agent's own weights are
    back on exit and go on training.

    Paper: Prabhu, Torr & Dokania 2020, "GDumb: A Simple Approach that Questions Our Progress in Continual
    Learning" (ECCV), https://doi.org/10.1007/978-3-030-58536-5_31

    Deviations: RL has no labels, so the memory's "classes" are tasks, and the learner is trained by
    behaviour cloning of the actions the agent took (the issue's reading for RL; no offline RL on stored
    rewards). Within a task, rows are kept by reservoir sampling (uniform over the task's steps) rather than
    greedily in arrival order, which in RL would keep only the untrained agent's first steps. The learner is
    the policy's own architecture trained with Adam, not the paper's SGD with cutmix and a cosine schedule;
    only the networks that choose actions are trained (an actor-critic policy's value head, SAC's and TD3's
    critics stay at their initialisation, unused by the evaluator).

    Args:
        budget: Rows kept over all tasks (``"all"``: every row).
        steps: Adam steps of each training from scratch.
        batch_size: Rows per step.
        learning_rate: Adam's learning rate.
        memory_dtype: How the memory stores floating-point fields (:class:`clrl.modules.memory.Reservoir`).
        verbose: SB3 callback verbosity.
    """

    name = "gdumb"

    def __init__(
        self,
        budget: Budget = 20_000,
        steps: int = 2_000,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        memory_dtype: MemoryDtype = "float32",
        verbose: int = 0,
    ) -> None:
        super().__init__(budget, verbose=verbose, memory_dtype=memory_dtype)
        self.steps = check_positive_int(steps, "GDumb steps")
        self.batch_size = check_positive_int(batch_size, "GDumb batch_size")
        self.learning_rate = check_positive(learning_rate, "GDumb learning_rate")
        self.recorded = 0
        """Rows offered to the memory so far (over all tasks)."""
        self.trainings = 0
        """Trainings from scratch so far."""
        self.learner: dict[str, torch.Tensor] | None = None
        """The weights of the policy trained on the memory (``None`` before an evaluation with data)."""
        self._trained_at = -1  # the value of ``recorded`` when the learner was trained
        self.last_loss = float("nan")

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse an algorithm or policy whose action likelihood is not defined (before anything trains)."""
        check_distillable(model, "GDumb")
        super().check_model(model)

    def on_task_start(self, task: TaskInfo) -> None:
        """Open the task's share of the memory."""
        self.open_task(task)

    def record_states(self, rows: Rows) -> None:
        """Offer ``rows`` to the current task's reservoir, and count them."""
        super().record_states(rows)
        self.recorded += len(rows["action"])

    def train_learner(self) -> dict[str, torch.Tensor]:
        """Train a freshly initialised policy on the memory alone (behaviour cloning) and return its
        weights; the model's own policy is not touched."""
        model = self.sb3_model
        seed = model.seed if model.seed is not None else 0
        policy = new_policy(model, seed=seed * 100_003 + self.trainings)
        policy.set_training_mode(True)  # type: ignore[operator]
        optimizer = torch.optim.Adam(policy.parameters(), lr=self.learning_rate)
        rng = np.random.default_rng([seed, self.trainings, 3])
        learner = Frozen(policy=policy, device=model.device)
        loss = torch.zeros(())
        for _ in range(self.steps):
            rows = self.memory.sample_with_current(self.batch_size, rng)
            outputs = network_outputs(learner, rows, ("actor",))  # type: ignore[arg-type]
            actions = torch.as_tensor(rows["action"], device=model.device)
            loss = -action_log_likelihood(model, outputs, actions).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.trainings += 1
        self.last_loss = float(loss.detach())
        return {k: v.detach().clone() for k, v in policy.state_dict().items()}

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Act with the policy trained on the memory (trained now if the memory changed since the last
        time): its weights are loaded into the policy and the agent's restored on exit. With an empty
        memory (before any training) the agent's policy acts."""
        if getattr(self, "model", None) is None or len(self.memory) == 0:
            yield
            return
        if self.learner is None or self._trained_at != self.recorded:
            self.learner = self.train_learner()
            self._trained_at = self.recorded
        with acting_with(self.sb3_model.policy, self.learner):
            yield

    def state_dict(self) -> dict[str, Any]:
        """The memory, the counts, the learner's weights and its training's final loss."""
        state: dict[str, Any] = {
            **super().state_dict(),
            "recorded": self.recorded,
            "trainings": self.trainings,
            "trained_at": self._trained_at,
            "last_loss": self.last_loss,
        }
        if self.learner is not None:
            state["learner"] = dict(self.learner)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.recorded = int(state["recorded"])
        self.trainings = int(state["trainings"])
        self._trained_at = int(state["trained_at"])
        self.last_loss = float(state.get("last_loss", float("nan")))
        learner = state.get("learner")
        self.learner = {k: v.clone() for k, v in learner.items()} if learner is not None else None

    def log_scalars(self) -> dict[str, float]:
        """``states`` held, ``trainings`` so far and, after the first, the last training's final ``loss``."""
        scalars = {"states": float(len(self.memory)), "trainings": float(self.trainings)}
        if self.trainings:
            scalars["loss"] = self.last_loss
        return scalars
