"""The quadratic-penalty family's shared machinery: ``strength/2 · Σ_i w_i (θ_i - a_i)²`` on the policy.

L2, EWC, online EWC, MAS and SI differ only in how the importances ``w`` and anchors ``a`` are obtained;
all of them apply the penalty the same way, analytically: ``strength · w · (θ - a)`` is written into the
gradient right after ``zero_grad`` (fused ``torch._foreach`` ops over the optimiser's tensors, no autograd
graph), so SB3's backward accumulates its loss on top and its gradient clipping treats the penalty like
any other term of the loss.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from clrl.algorithms import Networks, check_networks, policy_parameters
from clrl.modules.base import (
    ContinualModule,
    ParamGroup,
    TaskInfo,
    add_to_grad,
    check_non_negative,
    check_positive_int,
)
from clrl.modules.importance import StateBatch, collect_states, policy_outputs
from clrl.plasticity import Periodic

Tensors = dict[str, torch.Tensor]


def _move(tree: Any, device: torch.device) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _move(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_move(v, device) for v in tree]
    return tree


def _tensors(tree: Any) -> Iterator[torch.Tensor]:
    """The tensors in ``tree``'s dicts, lists and tuples (other objects are not looked into)."""
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)
    elif isinstance(tree, list | tuple):
        for value in tree:
            yield from _tensors(value)


def _cpu(tensors: Tensors) -> Tensors:
    return {n: t.detach().cpu().clone() for n, t in tensors.items()}


class QuadraticPenalty(ContinualModule):
    """Base of the penalties ``strength/2 · Σ_i w_i (θ_i - a_i)²`` (``w = 1`` if :attr:`importance` is empty).

    Subclasses set :attr:`anchor` and :attr:`importance` in :meth:`on_task_end`; this class applies the
    gradient, logs ``penalty``, ``distance`` (to the most recent anchor), ``importance_mean`` and
    ``importance_max``, and saves both dictionaries. No penalty applies before the first anchor exists.

    Args:
        strength: Penalty coefficient ``λ`` (>= 0). At 0 training equals plain SB3 exactly.
        networks: ``"actor"`` (default) regularises the parameters that choose actions; ``"all"`` also the
            critics / value function, on every optimiser that steps them.
        verbose: SB3 callback verbosity.
    """

    every: int | None = None
    """Also consolidate every ``every`` environment steps (``None``: at task ends only). Online EWC, MAS
    and SI take it as an argument; see :meth:`consolidate`."""

    def __init__(self, strength: float, networks: Networks = "actor", verbose: int = 0) -> None:
        super().__init__(verbose)
        self.strength = check_non_negative(strength, f"{type(self).__name__} strength")
        self.networks: Networks = check_networks(networks)
        self.consolidations = 0
        """Consolidations made on the ``every`` schedule (task ends not counted)."""
        self._due = Periodic(None)
        self._consolidated_at: int | None = None  # the step of the last scheduled consolidation
        self.anchor: Tensors = {}
        """Parameters the penalty pulls toward (EWC: the importance-weighted mean of its anchors)."""
        self.importance: Tensors = {}
        """Per-parameter weights ``w`` (not multiplied by the strength); empty for L2."""
        self._cache: dict[str, tuple[list[torch.Tensor], list[torch.Tensor] | None]] = {}

    # ---------------------------------------------------------------- consolidation
    def needs_boundaries(self) -> bool:
        """Task-free with ``every``: consolidation then runs on a schedule of steps."""
        return self.every is None

    def consolidate(self, *key: int) -> None:
        """Do what the end of a task does (new importances, the current parameters as anchor); with
        ``every``, also at the end of the first rollout at or after each multiple of ``every`` steps (on
        the states just collected, before they are learned). ``key`` seeds the state draw (the task index,
        then the step)."""
        raise NotImplementedError

    def begin_segment(self) -> None:
        """Start what the next consolidation sums (at a task start, and after each scheduled one)."""

    def end_of_task_consolidation(self, task: TaskInfo) -> None:
        """:meth:`consolidate` at a task's end, unless a scheduled one was made at this very step (nothing
        was collected since: off-policy there would be no state to estimate on). Without a scheduled one
        the model is not consulted, so a module driven by hand needs none."""
        if self._consolidated_at is None or self._consolidated_at != self.sb3_model.num_timesteps:
            self.consolidate(task.index)

    def _on_rollout_end(self) -> None:
        model = self.sb3_model
        if self._due.due(model.num_timesteps):
            task = self.current_task
            self.consolidate(task.index if task is not None else self.tasks_seen, model.num_timesteps)
            self.begin_segment()
            self.consolidations += 1
            self._consolidated_at = model.num_timesteps
            self.attach()  # new anchors and weights: the hooks' cached tensors are rebuilt
        super()._on_rollout_end()

    # ---------------------------------------------------------------- penalty
    def regularised(self) -> dict[str, torch.nn.Parameter]:
        """The model's parameters this module regularises (``networks``), by name."""
        return policy_parameters(self.sb3_model, self.networks)

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The regularised parameters that have an anchor (none during the first task)."""
        if not self.anchor:
            return {}
        return {n: p for n, p in self.regularised().items() if n in self.anchor}

    def attach(self) -> None:
        """Install the hooks; weights scaled by the current strength are cached per optimiser."""
        self._cache = {}
        super().attach()

    def penalty_gradients(self, group: ParamGroup) -> list[torch.Tensor]:
        """``strength · w · (θ - a)`` for the group's parameters (new tensors)."""
        cached = self._cache.get(group.optimizer_name)
        if cached is None:
            anchors = [self.anchor[n] for n in group.names]
            weights = [self.strength * self.importance[n] for n in group.names] if self.importance else None
            cached = self._cache[group.optimizer_name] = (anchors, weights)
        anchors, weights = cached
        with torch.no_grad():
            grads = torch._foreach_sub(group.params, anchors)
            if weights is None:
                torch._foreach_mul_(grads, self.strength)
            else:
                torch._foreach_mul_(grads, weights)
        return list(grads)

    def add_penalty_gradients(self, group: ParamGroup) -> None:
        """Add the penalty's gradient before SB3's backward (so it is clipped with the loss)."""
        for param, grad in zip(group.params, self.penalty_gradients(group), strict=True):
            add_to_grad(param, grad)

    def penalty(self) -> float:
        """The current value of the penalty."""
        if not self.anchor:
            return 0.0
        params = self.regularised()
        total = 0.0
        with torch.no_grad():
            for name, anchor in self.anchor.items():
                if name not in params:  # e.g. ARS: no optimiser steps the parameter
                    continue
                sq = (params[name] - anchor).square()
                total += float((sq * self.importance[name]).sum() if self.importance else sq.sum())
        return 0.5 * self.strength * total

    def latest_anchor(self) -> Tensors:
        """The parameters at the end of the most recent task (what ``distance`` is measured to)."""
        return self.anchor

    def distance(self) -> float:
        """Euclidean distance of the regularised parameters from :meth:`latest_anchor`."""
        anchor = self.latest_anchor()
        if not anchor:
            return 0.0
        params = self.regularised()
        with torch.no_grad():
            sq = sum(float((params[n] - a).square().sum()) for n, a in anchor.items() if n in params)
        return sq**0.5

    def log_scalars(self) -> dict[str, float]:
        """Penalty, distance to the anchor, and importance mean and max."""
        scalars = {"penalty": self.penalty(), "distance": self.distance()}
        if self.importance:
            flat = torch.cat([w.reshape(-1) for w in self.importance.values()])
            scalars["importance_mean"] = float(flat.mean())
            scalars["importance_max"] = float(flat.max())
        return scalars

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Anchor and importance."""
        return {"anchor": _cpu(self.anchor), "importance": _cpu(self.importance)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (moved to the model's device when training starts)."""
        self.anchor = dict(state["anchor"])
        self.importance = dict(state["importance"])

    def _on_training_start(self) -> None:
        device = self.sb3_model.device
        # Move the state once, when it is elsewhere (loaded on the CPU, say); "cuda" matches "cuda:0".
        same = [
            t.device.type == device.type and device.index in (None, t.device.index)
            for t in _tensors(vars(self))
        ]
        if not all(same):
            self.load_state_dict(_move(self.state_dict(), device))
        super()._on_training_start()
        self._due = Periodic(self.every)
        self._due.start(self.sb3_model.num_timesteps)


class ImportancePenalty(QuadraticPenalty):
    """A quadratic penalty whose importances are estimated on states of the finished task (EWC, MAS).

    States come from the model's buffer when the task ends: the last rollout of on-policy algorithms,
    the rows written during the task in an off-policy replay buffer (``clrl.train`` empties that buffer
    between tasks by default). They are drawn with a generator seeded from the model's seed and the task
    index, so SB3's own random state is untouched.

    Args:
        strength: Penalty coefficient ``λ`` (>= 0).
        samples: Number of states the importance is averaged over (at most what the buffer holds).
        networks: ``"actor"`` or ``"all"`` (see :class:`QuadraticPenalty`).
        verbose: SB3 callback verbosity.
    """

    def __init__(
        self, strength: float, samples: int = 1024, networks: Networks = "actor", verbose: int = 0
    ) -> None:
        super().__init__(strength, networks, verbose)
        self.samples = check_positive_int(samples, f"{type(self).__name__} samples")
        self.importance_seconds = 0.0
        """Wall time of the last importance estimate (state draw included)."""
        self._start_timesteps = 0

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse a policy type without an importance (gSDE, ARS, custom policies) before it trains."""
        policy_outputs(model, self.networks)

    def on_task_start(self, task: TaskInfo) -> None:
        """Note where the task's states start in the buffer."""
        self.begin_segment()

    def begin_segment(self) -> None:
        """Note where the states of the next importance estimate start in the buffer."""
        self._start_timesteps = self.sb3_model.num_timesteps

    def estimate(self, *key: int) -> Tensors:
        """Importance of every regularised parameter on states collected since the task started or the
        last consolidation (timed); ``key`` (the task index, then the step of a scheduled consolidation)
        seeds the draw of the states."""
        start = time.perf_counter()
        seed = self.sb3_model.seed if self.sb3_model.seed is not None else 0
        rng = np.random.default_rng([seed, *key])
        states = collect_states(
            self.sb3_model, self.samples, rng, steps=self.sb3_model.num_timesteps - self._start_timesteps
        )
        importance = self.importance_of(self.regularised(), states)
        self.importance_seconds = time.perf_counter() - start
        return {n: w.detach() for n, w in importance.items()}

    def importance_of(self, params: dict[str, torch.nn.Parameter], states: StateBatch) -> Tensors:
        """The per-parameter importance on ``states`` (subclasses: Fisher, MAS)."""
        raise NotImplementedError

    def log_scalars(self) -> dict[str, float]:
        """As :class:`QuadraticPenalty`, plus the seconds the last importance estimate took."""
        return {**super().log_scalars(), "importance_seconds": self.importance_seconds}
