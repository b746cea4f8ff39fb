"""Latent replay: behaviour cloning of earlier tasks from stored activations of a hidden layer, with the
layers below it slowed or frozen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN
from torch import nn

from clrl.errors import ConfigError
from clrl.modules.base import ParamGroup, TaskInfo, check_fraction
from clrl.modules.behaviour_cloning import BehaviourCloning
from clrl.modules.distill import (
    OutputMemory,
    Part,
    distillation_losses,
    group_parts,
    joins_evaluate_actions,
    tensor_batch,
)
from clrl.modules.importance import _EvalMode
from clrl.modules.memory import Budget, MemoryDtype
from clrl.plasticity import ACTIVATIONS


@dataclass
class _Split:
    """One network cut at a hidden layer: ``lower`` maps observations to the latent activations,
    ``upper`` the latent activations to :func:`clrl.modules.distill.network_outputs`' outputs of the part,
    ``below`` the parameters under the cut."""

    lower: Callable[[Any], torch.Tensor]
    upper: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    below: list[nn.Parameter]


def _cut(mlp: nn.Sequential, layer: int, what: str, ends_with_output: bool) -> int:
    """The index in ``mlp`` just after its ``layer``-th hidden activation (0: its start). In an MLP that
    ends with its output layer (TD3's actor, DQN's Q-network), an activation after the last ``Linear``
    (TD3's tanh) is the output's, not a hidden layer's."""
    if not isinstance(mlp, nn.Sequential) or not all(
        isinstance(m, (nn.Linear, nn.LayerNorm, *ACTIVATIONS)) for m in mlp
    ):
        raise ConfigError(
            f"LatentReplay cuts the {what} as SB3 builds it (linear layers and activations), got "
            f"{type(mlp).__name__}; policies that route states to heads or columns are not supported"
        )
    if layer == 0:
        return 0
    last_linear = max((i for i, m in enumerate(mlp) if isinstance(m, nn.Linear)), default=-1)
    seen = 0
    for index, module in enumerate(mlp):
        if isinstance(module, ACTIVATIONS) and not (ends_with_output and index > last_linear):
            seen += 1
            if seen == layer:
                return index + 1
    raise ConfigError(f"LatentReplay layer={layer}: the {what} has {seen} hidden layer(s)")


def _splits(model: BaseAlgorithm, layer: int) -> dict[Part, _Split]:
    """Each replayed part of ``model``'s policy cut after its ``layer``-th hidden layer (0: the features
    extractor's output)."""
    policy: Any = model.policy
    if isinstance(policy, ActorCriticPolicy):
        if not joins_evaluate_actions(model):
            raise ConfigError(
                "LatentReplay needs a feed-forward actor-critic policy as SB3 builds it, got "
                f"{type(policy).__name__}"
            )
        shared = policy.share_features_extractor
        extractors = (
            (policy.features_extractor, policy.features_extractor)
            if shared
            else (policy.pi_features_extractor, policy.vf_features_extractor)
        )
        mlps = (policy.mlp_extractor.policy_net, policy.mlp_extractor.value_net)
        cuts = (_cut(mlps[0], layer, "policy network", False), _cut(mlps[1], layer, "value network", False))

        def lower(index: int) -> Callable[[Any], torch.Tensor]:
            return lambda obs: mlps[index][: cuts[index]](policy.extract_features(obs, extractors[index]))

        def actor_outputs(latent: torch.Tensor) -> dict[str, torch.Tensor]:
            action = policy.action_net(mlps[0][cuts[0] :](latent))
            if isinstance(policy.action_dist, DiagGaussianDistribution):
                return {"mean": action, "log_std": torch.ones_like(action) * policy.log_std}
            return {"logits": action}

        def value_outputs(latent: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"value": policy.value_net(mlps[1][cuts[1] :](latent))}

        def params(index: int) -> list[nn.Parameter]:
            return [*extractors[index].parameters(), *mlps[index][: cuts[index]].parameters()]

        return {
            "actor": _Split(lower(0), actor_outputs, params(0)),
            "critic": _Split(lower(1), value_outputs, params(1)),
        }
    actor: Any = getattr(policy, "actor", None)
    mlp: Any
    net: Any
    if actor is not None and isinstance(getattr(actor, "latent_pi", None), nn.Sequential):  # SAC and kin
        if getattr(actor, "use_sde", False):
            raise ConfigError("LatentReplay does not support gSDE policies; use use_sde=False")
        mlp, net = actor.latent_pi, actor
        cut = _cut(mlp, layer, "actor", False)

        def gaussian(latent: torch.Tensor) -> dict[str, torch.Tensor]:
            hidden = mlp[cut:](latent)
            return {"mean": net.mu(hidden), "log_std": net.log_std(hidden).clamp(LOG_STD_MIN, LOG_STD_MAX)}

        upper: Callable[[torch.Tensor], dict[str, torch.Tensor]] = gaussian
    elif actor is not None and isinstance(getattr(actor, "mu", None), nn.Sequential):  # TD3, DDPG
        mlp, net = actor.mu, actor
        cut = _cut(mlp, layer, "actor", True)
        upper = lambda latent: {"action": mlp[cut:](latent)}  # noqa: E731
    elif isinstance(getattr(getattr(policy, "q_net", None), "q_net", None), nn.Sequential):  # DQN
        net = policy.q_net
        mlp = net.q_net
        cut = _cut(mlp, layer, "Q-network", True)
        upper = lambda latent: {"q": mlp[cut:](latent)}  # noqa: E731
    else:
        raise ConfigError(
            f"LatentReplay does not support {type(model).__name__}'s policy {type(policy).__name__}"
        )

    def lower_net(obs: Any) -> torch.Tensor:
        return mlp[:cut](net.extract_features(obs, net.features_extractor))

    below = [*net.features_extractor.parameters(), *mlp[:cut].parameters()]
    return {"actor": _Split(lower_net, upper, below)}


class LatentMemory(OutputMemory):
    """:class:`~clrl.modules.distill.OutputMemory` that, when a task ends, replaces each state by the latent
    activations of every replayed part (``lat.<part>`` fields) beside the networks' outputs."""

    layer = 1

    def finish_task(self, model: BaseAlgorithm, chunk: int = 4096) -> None:
        """Store each part's latent activations and outputs on the current task's states, then drop the
        states."""
        reservoir, self.current = self.current, None
        self.invalidate()
        if reservoir is None or len(reservoir) == 0:
            return
        states = reservoir.rows()
        splits = _splits(model, self.layer)
        fields: dict[str, list[np.ndarray]] = {}
        with torch.no_grad(), _EvalMode(model.policy):
            for start in range(0, len(reservoir), chunk):
                obs = tensor_batch(model, {k: v[start : start + chunk] for k, v in states.items()})["obs"]
                for part, split in splits.items():
                    latent = split.lower(obs)
                    fields.setdefault(f"lat.{part}", []).append(latent.float().cpu().numpy())
                    for key, value in split.upper(latent).items():
                        fields.setdefault(f"out.{key}", []).append(value.float().cpu().numpy())
        capacity = len(next(iter(reservoir.data.values())))
        for key, chunks in fields.items():
            values = np.concatenate(chunks)
            array = np.zeros((capacity, *values.shape[1:]), dtype=np.float32)
            array[: len(values)] = values
            reservoir.set_field(key, array)
        for key in [k for k in reservoir.data if not k.startswith(("lat.", "out."))]:
            del reservoir.data[key]
            reservoir.dtypes.pop(key, None)


class LatentReplay(BehaviourCloning):
    """Latent replay: behaviour cloning of earlier tasks on stored activations of a hidden layer instead of
    stored observations, with the layers below that layer slowed (or frozen) after the first task.

    While a task trains, its states go to the task's reservoir as :class:`clrl.BehaviourCloning`'s do; when
    it ends, each state is replaced by the activations of the ``layer``-th hidden layer of every replayed
    network (the "latent replay layer"; 0: the features extractor's output, e.g. a CNN's features) and the
    networks' outputs on it, and the state itself is dropped. On every later update, ``batch_size`` stored
    activations are run through the layers above the cut only, and the cloning loss of
    :class:`clrl.BehaviourCloning` is back-propagated right after SB3's ``zero_grad``. The replayed networks:
    the policy and the value of PPO and A2C, the actor of SAC, TD3 and their kin, DQN's Q-network (off-policy
    critics read actions at their first layer, so their activations are not the states'; they are not
    replayed). From the second task on, every optimiser step moves the parameters below the cut (the features
    extractor and the layers up to the cut) by ``below_lr_scale`` times its step (0, the default: frozen), so
    the stored activations stay those the network computes; SB3's own loss still trains them during the
    first task.

    Memory: a state of ``d`` features becomes ``width`` activations per replayed network (two for PPO and
    A2C): the saving of the paper holds when the cut is narrower than the observation (a CNN's features of
    an image); on a small vector observation it costs more (``bytes`` in the logged scalars).

    Paper: Pellegrini et al. 2020, "Latent Replay for Real-Time Continual Learning" (IROS).

    Deviations: the paper replays latent patterns with their class labels through the upper layers'
    classification loss; here they are replayed with the networks' outputs at the end of their task
    (behaviour cloning), as RL has no labels. The paper's default slows the layers below (their learning
    rate scaled down, with batch renormalisation); here the default freezes them (``below_lr_scale=0``)
    and any scale in ``[0, 1]`` multiplies each optimiser step of theirs (Adam's included), not the
    learning rate. Feed-forward policies only (not RecurrentPPO, multi-head or progressive columns).

    Args:
        layer: Hidden layers below the latent replay layer (0: the features extractor's output).
        budget: States kept over all tasks (``"all"``: unbounded).
        batch_size: Stored activations per update (default: the algorithm's ``batch_size``, or the rollout
            size for A2C).
        policy_coef: Weight of the actor term (>= 0).
        value_coef: Weight of the value term (>= 0; PPO and A2C).
        below_lr_scale: Share in ``[0, 1]`` of each optimiser step taken by the parameters below the cut
            from the second task on (0: frozen; 1: trained as the rest).
        require_task_id: Refuse streams with a hidden task id in ``clrl.train``.
        memory_dtype: How the memory stores the activations: ``"float32"`` (default), ``"float16"`` or
            ``"uint8"`` (see :class:`clrl.modules.memory.Reservoir`).
        verbose: SB3 callback verbosity.
    """

    name = "latent-replay"
    memory_class = LatentMemory
    memory: LatentMemory

    def __init__(
        self,
        layer: int = 1,
        budget: Budget = 20_000,
        batch_size: int | None = None,
        policy_coef: float = 1.0,
        value_coef: float = 0.5,
        below_lr_scale: float = 0.0,
        require_task_id: bool = True,
        memory_dtype: MemoryDtype = "float32",
        verbose: int = 0,
    ) -> None:
        super().__init__(
            budget=budget,
            batch_size=batch_size,
            policy_coef=policy_coef,
            value_coef=value_coef,
            networks="all",
            require_task_id=require_task_id,
            memory_dtype=memory_dtype,
            verbose=verbose,
        )
        if isinstance(layer, bool) or not isinstance(layer, int | np.integer) or layer < 0:
            raise ConfigError(f"LatentReplay layer must be an integer >= 0, got {layer!r}")
        self.layer = int(layer)
        self.memory.layer = self.layer
        self.below_lr_scale = check_fraction(below_lr_scale, "LatentReplay below_lr_scale")
        self._before: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._cut_policy: Any = None  # the policy the splits below were built for
        self._cuts: dict[Part, _Split] = {}

    def splits(self) -> dict[Part, _Split]:
        """The attached model's networks cut at ``layer``, built once per policy (not at every step: its
        layers do not change while it trains)."""
        model = self.sb3_model
        if self._cut_policy is not model.policy:
            self._cuts, self._cut_policy = _splits(model, self.layer), model.policy
        return self._cuts

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse policies that cannot be cut at ``layer`` (before anything trains)."""
        super().check_model(model)
        _splits(model, self.layer)

    def on_task_start(self, task: TaskInfo) -> None:
        """Open the task's reservoir (the memory's layer is this module's)."""
        self.memory.layer = self.layer
        super().on_task_start(task)

    def _replayed(self, group: ParamGroup) -> list[Part]:
        parts = group_parts(self.sb3_model, group.optimizer_name, "all")
        if isinstance(self.sb3_model, OffPolicyAlgorithm):
            parts = tuple(p for p in parts if p == "actor")
        return list(parts)

    def extra_loss(self, group: ParamGroup) -> torch.Tensor | None:
        """The cloning loss of the parts ``group``'s optimiser steps, from stored activations."""
        parts = self._replayed(group)
        if not parts:
            return None
        model = self.sb3_model
        rows, old = self.memory.sample_outputs(model, self.replay_batch_size(), self._sample_rng)
        splits = self.splits()
        new: dict[str, torch.Tensor] = {}
        for part in parts:
            new.update(splits[part].upper(torch.as_tensor(rows[f"lat.{part}"], device=model.device)))
        old = {k: v for k, v in old.items() if k in new}
        return self._weighted(distillation_losses(model, old, new), old, record=True)

    def _below(self, group: ParamGroup) -> list[nn.Parameter]:
        stepped = {id(p) for p in group.params}
        below = [p for split in self.splits().values() for p in split.below if id(p) in stepped]
        return list({id(p): p for p in below}.values())

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Every parameter of the policy once an earlier task is in memory (the replayed networks' and,
        when ``below_lr_scale < 1``, those below the cut, whose steps are scaled)."""
        if not self.memory.finished():
            return {}
        return dict(self.sb3_model.policy.named_parameters())

    def adjust_gradients(self, group: ParamGroup) -> None:
        """Keep the parameters below the cut as they are before the step (to scale their step after it)."""
        self._before = []
        if self.below_lr_scale < 1:
            self._before = [(p, p.detach().clone()) for p in self._below(group)]

    def after_update(self, group: ParamGroup) -> None:
        """``θ ← θ_before + below_lr_scale · (θ - θ_before)`` for the parameters below the cut."""
        with torch.no_grad():
            for param, before in self._before:
                param.lerp_(before, 1.0 - self.below_lr_scale)
        self._before = []
