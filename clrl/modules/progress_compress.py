"""Progress & Compress: an active column learns each task, then is distilled into a knowledge base."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import ClassVar, Literal

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from clrl.algorithms import Networks
from clrl.errors import ConfigError
from clrl.modules.base import TaskInfo, check_positive, check_positive_int
from clrl.modules.distill import (
    Part,
    StateRecorder,
    check_distillable,
    distillation_losses,
    network_outputs,
)
from clrl.modules.memory import Reservoir, Rows
from clrl.modules.multihead import TaskLinear, TaskRouter, task_router
from clrl.modules.online_ewc import OnlineEWC
from clrl.modules.progressive import ProgressiveMLP

KNOWLEDGE_BASE, ACTIVE = 0, 1
"""The two columns of a Progress & Compress policy (progressive column 0 and 1)."""
Column = Literal["knowledge_base", "active"]


def column_parameters(model: BaseAlgorithm, k: int) -> dict[str, torch.nn.Parameter]:
    """The parameters of column ``k`` of a progressive policy: its layers, the adapters into it and its
    heads, by name relative to ``model.policy``. Shared parameters (a Gaussian ``log_std``) belong to no
    column, nor do target networks (``*_target``: lagged copies SB3 updates itself)."""
    chosen: set[int] = set()
    for module in model.policy.modules():
        if isinstance(module, ProgressiveMLP):
            chosen.update(id(p) for p in module.columns[k].parameters())
            chosen.update(id(p) for p in module.adapters[k].parameters())
        elif isinstance(module, TaskLinear):
            chosen.update((id(module.weight[k]), id(module.bias[k])))
    return {n: p for n, p in model.policy.named_parameters() if id(p) in chosen and "_target." not in n}


class ProgressAndCompress(StateRecorder, OnlineEWC):
    """Progress & Compress: an active column learns the task with lateral input from a knowledge base;
    when the task ends, the active column is distilled into the knowledge base under an online-EWC penalty.

    The policy is a two-column progressive policy (build the model with ``clrl.progressive_policy(algo)``
    and ``policy_kwargs={"n_tasks": 2}``): column 0 is the knowledge base, column 1 the active column, whose
    every layer also reads the knowledge base's previous layer through a linear adapter. Samples are not
    routed by a task id: every sample uses one column, so the stream may hide the task id.

    * **Progress** (SB3's ``learn``): the agent acts and learns with the active column; the knowledge base
      runs without gradient (lateral input only), so SB3 leaves it unchanged.
    * **Compress** (when the task ends): ``compress_steps`` Adam steps (``compress_lr``, ``batch_size``
      states) on the knowledge base's parameters alone, minimising

          ``D(active(s) ‖ knowledge_base(s)) + strength/2 · Σ_i F_i (θ_i - θ*_i)²``

      on states of the task just learned (a reservoir of ``states`` of them, recorded during progress and
      dropped after compression; no data of earlier tasks is kept). ``D`` is
      :mod:`clrl.modules.distill`'s divergence (KL of the action distributions, squared error of
      deterministic actions and Q-values; with ``networks="all"`` also values and critics). ``F`` and ``θ*``
      are :class:`OnlineEWC`'s running Fisher and anchor of the knowledge base: after compression the
      task's Fisher of the knowledge base is folded in (``F ← γ F + F_t``) and its parameters become the
      anchor.

    Outside training, and inside :meth:`evaluating`, the policy acts with ``evaluate_with`` (the knowledge
    base by default: it holds every task compressed so far). The active column is not re-initialised
    between tasks (it starts each task from where the last one left it). A Gaussian policy's shared
    ``log_std`` belongs to neither column and is trained by SB3 only.

    Paper: Schwarz et al. 2018, "Progress & Compress: A scalable framework for continual learning" (ICML),
    https://arxiv.org/abs/1805.06370

    Args:
        strength: Online-EWC coefficient ``λ`` of the compression (>= 0).
        gamma: Decay ``γ`` of the running Fisher, in [0, 1].
        compress_steps: Adam steps of each compression (>= 1).
        compress_lr: Learning rate of the compression (> 0).
        batch_size: States per compression step.
        states: States of the task kept for its compression (a uniform reservoir sample).
        samples: States the knowledge base's Fisher is averaged over (from SB3's buffer, as :class:`EWC`).
        networks: ``"actor"`` (default) or ``"all"``: what is distilled and regularised.
        temperature: DQN: temperature of the Boltzmann policy of the Fisher (see :class:`EWC`).
        evaluate_with: ``"knowledge_base"`` (default) or ``"active"``.
        verbose: SB3 callback verbosity.
    """

    name = "pnc"
    task_free_with: ClassVar[str | None] = None  # compression needs the task's end

    def __init__(
        self,
        strength: float = 1000.0,
        gamma: float = 1.0,
        compress_steps: int = 1000,
        compress_lr: float = 1e-3,
        batch_size: int = 256,
        states: int = 10_000,
        samples: int = 1024,
        networks: Networks = "actor",
        temperature: float = 1.0,
        evaluate_with: Column = "knowledge_base",
        verbose: int = 0,
    ) -> None:
        super().__init__(strength, gamma, samples, networks, temperature, verbose=verbose)
        self.compress_steps = check_positive_int(compress_steps, "ProgressAndCompress compress_steps")
        self.compress_lr = check_positive(compress_lr, "ProgressAndCompress compress_lr")
        self.batch_size = check_positive_int(batch_size, "ProgressAndCompress batch_size")
        self.states = check_positive_int(states, "ProgressAndCompress states")
        if evaluate_with not in ("knowledge_base", "active"):
            raise ConfigError(
                f"ProgressAndCompress evaluate_with must be knowledge_base or active, got {evaluate_with!r}"
            )
        self.evaluate_with: Column = evaluate_with
        self._reservoir = Reservoir(self.states)
        self._rng = np.random.default_rng(0)
        self._compressed: dict[str, float] = {}

    # ------------------------------------------------------------------------------------ the policy
    def _router(self) -> TaskRouter:
        model = self.sb3_model
        router = task_router(model)
        progressive = any(isinstance(m, ProgressiveMLP) for m in model.policy.modules())
        if router is None or not progressive or router.n_tasks != 2:
            algo = type(model).__name__
            raise ConfigError(
                f"ProgressAndCompress needs a two-column progressive policy; build the model with "
                f"{algo}(clrl.progressive_policy({algo}), env, policy_kwargs={{'n_tasks': 2}})"
            )
        return router

    def regularised(self) -> dict[str, torch.nn.Parameter]:
        """The knowledge base's parameters among ``networks`` (what the compression trains and the Fisher
        covers)."""
        base = column_parameters(self.sb3_model, KNOWLEDGE_BASE)
        return {n: p for n, p in super().regularised().items() if n in base}

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """None: the knowledge base does not move during progress, so no gradient hook is needed."""
        return {}

    def bind(self, model: BaseAlgorithm) -> None:
        """Attach to a loaded model: it acts with ``evaluate_with``."""
        super().bind(model)
        self._router().forced = self._column()

    def _column(self) -> int:
        return KNOWLEDGE_BASE if self.evaluate_with == "knowledge_base" else ACTIVE

    # ------------------------------------------------------------------------------------ progress
    def on_task_start(self, task: TaskInfo) -> None:
        """Check the policy, act with the active column, start the task's reservoir of states."""
        check_distillable(self.sb3_model, "ProgressAndCompress")
        self._router().forced = ACTIVE
        super().on_task_start(task)
        seed = self.sb3_model.seed if self.sb3_model.seed is not None else 0
        self._rng = np.random.default_rng([seed, task.index, 3])
        self._reservoir = Reservoir(self.states)

    def record_states(self, rows: Rows) -> None:
        """Offer the task's states to its reservoir."""
        self._reservoir.add(rows, self._rng)

    # ------------------------------------------------------------------------------------ compress
    def on_task_end(self, task: TaskInfo) -> None:
        """Compress the active column into the knowledge base, then fold its Fisher into the running one."""
        self.compress()
        router = self._router()
        router.forced = KNOWLEDGE_BASE
        try:
            super().on_task_end(task)  # the Fisher of the knowledge base; its parameters become the anchor
        finally:
            router.forced = self._column()
        self._reservoir = Reservoir(self.states)

    def compress(self) -> dict[str, float]:
        """Distil the active column into the knowledge base on the task's states (under the online-EWC
        penalty from the second task on); returns the first and last distillation loss and the seconds."""
        if len(self._reservoir) == 0:
            raise RuntimeError("ProgressAndCompress recorded no state of the task to compress")
        start = time.perf_counter()
        model, router = self.sb3_model, self._router()
        params = self.regularised()
        parts: tuple[Part, ...] = ("actor", "critic") if self.networks == "all" else ("actor",)
        optimizer = torch.optim.Adam(params.values(), lr=self.compress_lr)
        importance = [self.importance[n] for n in params] if self.importance else []
        anchor = [self.anchor[n] for n in params] if self.importance else []
        first = last = float("nan")
        try:
            for step in range(self.compress_steps):
                rows = self._reservoir.rows(self._rng.integers(0, len(self._reservoir), self.batch_size))
                router.forced = ACTIVE
                with torch.no_grad():
                    target = network_outputs(model, rows, parts)
                router.forced = KNOWLEDGE_BASE
                losses = distillation_losses(model, target, network_outputs(model, rows, parts))
                distill = sum(losses.values())
                assert isinstance(distill, torch.Tensor)
                loss = distill
                if importance:  # from the second task on
                    for w, p, a in zip(importance, params.values(), anchor, strict=True):
                        loss = loss + 0.5 * self.strength * (w * (p - a).square()).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                last = distill.item()
                first = last if step == 0 else first
        finally:
            router.forced = ACTIVE
            for p in params.values():
                p.grad = None
        self._compressed = {
            "compress_first_loss": first,
            "compress_last_loss": last,
            "compress_seconds": time.perf_counter() - start,
        }
        return dict(self._compressed)

    # ------------------------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Act with the ``evaluate_with`` column, then go back to the column in use."""
        if getattr(self, "model", None) is None:
            yield
            return
        router = self._router()
        before, router.forced = router.forced, self._column()
        try:
            yield
        finally:
            router.forced = before

    def log_scalars(self) -> dict[str, float]:
        """As :class:`OnlineEWC` (penalty, importance and distance of the knowledge base), plus the first
        and last distillation loss and the seconds of the last compression."""
        return {**super().log_scalars(), **self._compressed}
