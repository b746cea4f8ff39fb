"""Progressive networks: a column per task, earlier columns frozen, lateral connections into the new one."""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from stable_baselines3.sac.policies import Actor as SACActor
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import Actor as TD3Actor
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from clrl.algorithms import policy_for
from clrl.errors import ConfigError
from clrl.modules.multihead import (
    MultiHead,
    TaskLinear,
    TaskRouter,
    _headed,
    _route,
    _TaskCritics,
    _TaskHeads,
    task_router,
)


class ProgressiveMLP(nn.Module):
    """An MLP with one column per task: column ``k`` has the original's layers, and each of its layers after
    the first also reads every earlier column's previous layer through a lateral adapter.

    ``h_l^k = act(W_l^k h_{l-1}^k + Σ_{j<k} U_l^{k,j} h_{l-1}^j + b_l^k)``. A batch runs the columns up to its
    highest task; all columns below that one run without gradient, so a finished task's column (and the
    adapters into it) never change again. Each sample's output is its own task's column. Column ``k`` adds
    ``k`` adapters per layer, so parameters grow as ``O(k)`` per column and ``O(T²)`` in all; a forward pass
    runs ``k + 1`` columns.

    Args:
        base: The SB3 MLP it replaces (``Linear``/activation pairs, as ``create_mlp`` builds them); every
            column starts as a copy of its weights; adapters start at zero.
        router: Where the task of each sample comes from.
    """

    def __init__(self, base: nn.Sequential, router: TaskRouter) -> None:
        super().__init__()
        self._router = router
        linears = [i for i, m in enumerate(base) if isinstance(m, nn.Linear)]
        modules = list(base)
        self.activations = nn.ModuleList(
            nn.Sequential(*modules[i + 1 : (linears[n + 1] if n + 1 < len(linears) else len(modules))])
            for n, i in enumerate(linears)
        )
        layers: list[nn.Linear] = [base[i] for i in linears]  # type: ignore[misc]
        shapes = [(layer.in_features, layer.out_features) for layer in layers]
        self.columns = nn.ModuleList(
            nn.ModuleList(_copy(layer) for layer in layers) for _ in range(router.n_tasks)
        )
        # adapters[k][l - 1][j]: column j's layer l-1 output into column k's layer l (k >= 1, l >= 1)
        self.adapters = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleList(_zero_linear(shapes[layer][0], shapes[layer][1]) for _ in range(k))
                for layer in range(1, len(shapes))
            )
            for k in range(router.n_tasks)
        )

    def column_parameters(self, k: int) -> int:
        """Parameters column ``k`` adds (its layers and the adapters into it)."""
        return sum(p.numel() for p in self.columns[k].parameters()) + sum(
            p.numel() for p in self.adapters[k].parameters()
        )

    def _column(self, k: int, x: torch.Tensor, hidden: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        column: Any = self.columns[k]
        adapters: Any = self.adapters[k]
        outputs, h = [], x
        for layer, (linear, act) in enumerate(zip(column, self.activations, strict=True)):
            z = linear(h)
            if layer > 0:
                for j in range(k):
                    z = z + adapters[layer - 1][j](hidden[j][layer - 1])
            h = act(z)
            outputs.append(h)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.activations):
            return x
        forced = self._router.forced
        if forced is not None:  # one column for every sample (Progress & Compress): no routing
            tasks = [forced]
        elif torch._C._functorch.is_functorch_wrapped_tensor(x):
            raise ConfigError(
                "progressive columns do not support per-sample gradients (importance estimates of EWC, MAS); "
                "their earlier columns are frozen anyway"
            )
        else:
            ids = self._router.ids(x)
            tasks = self._router.tasks(x)
        hidden: list[list[torch.Tensor]] = []
        for k in range(max(tasks) + 1):
            if k < max(tasks):
                with torch.no_grad():
                    hidden.append(self._column(k, x, hidden))
            else:
                hidden.append(self._column(k, x, hidden))
        if len(tasks) == 1:
            return hidden[tasks[0]][-1]
        out = x.new_empty(*x.shape[:-1], hidden[0][-1].shape[-1])
        for task in tasks:
            rows = ids == task
            out[rows] = hidden[task][-1][rows]
        return out


def _copy(linear: nn.Linear) -> nn.Linear:
    copy = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    copy.load_state_dict(linear.state_dict())
    return copy


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    adapter = nn.Linear(n_in, n_out, bias=False)
    nn.init.zeros_(adapter.weight)
    return adapter


def _progressive(module: nn.Sequential, router: TaskRouter) -> ProgressiveMLP:
    return ProgressiveMLP(module, router)


class ProgressiveActorCriticPolicy(_TaskHeads, ActorCriticPolicy):
    """SB3's actor-critic policy (PPO, A2C) as progressive columns: per task, one actor column
    (``mlp_extractor.policy_net`` followed by the action layer) and one critic column (``value_net`` followed
    by the value layer), with lateral adapters into every layer after the first.

    Build it with ``PPO(clrl.ProgressiveActorCriticPolicy, env, policy_kwargs={"n_tasks": 4})``.

    Args:
        *args: As :class:`~stable_baselines3.common.policies.ActorCriticPolicy`.
        n_tasks: Number of columns: the stream's number of tasks.
        **kwargs: As :class:`~stable_baselines3.common.policies.ActorCriticPolicy`.
    """

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        # Each column ends with its own output layer, so the adapters reach the heads too: the action and
        # value layers join the actor and critic MLPs, and SB3's separate heads become identities.
        extractor: Any = self.mlp_extractor
        actor = nn.Sequential(*extractor.policy_net, self.action_net)
        critic = nn.Sequential(*extractor.value_net, self.value_net)
        extractor.policy_net = _progressive(actor, self.router)
        extractor.value_net = _progressive(critic, self.router)
        self.action_net = nn.Identity()
        self.value_net = nn.Identity()  # type: ignore[assignment]
        _route(self, self.router)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]


class ProgressiveDQNPolicy(_TaskHeads, DQNPolicy):
    """SB3's DQN policy as progressive columns (the Q-network and its target).

    Build it with ``DQN(clrl.ProgressiveDQNPolicy, env, policy_kwargs={"n_tasks": 4})``.

    Args:
        *args: As :class:`~stable_baselines3.dqn.policies.DQNPolicy`.
        n_tasks: Number of columns (the stream's number of tasks).
        **kwargs: As :class:`~stable_baselines3.dqn.policies.DQNPolicy`.
    """

    def make_q_net(self) -> QNetwork:
        q_net = super().make_q_net()
        q_net.q_net = _progressive(q_net.q_net, self.router)  # type: ignore[assignment]
        _route(q_net, self.router)
        return q_net.to(self.device)


class ProgressiveSACPolicy(_TaskCritics, SACPolicy):
    """SB3's SAC policy as progressive columns: actor trunk and every critic, with per-task mean and log-std
    heads. Build it with ``SAC(clrl.ProgressiveSACPolicy, env, policy_kwargs={"n_tasks": 4})`` (no gSDE).

    Args:
        *args: As :class:`~stable_baselines3.sac.policies.SACPolicy`.
        n_tasks: Number of columns (the stream's number of tasks).
        **kwargs: As :class:`~stable_baselines3.sac.policies.SACPolicy`.
    """

    q_network_transform = staticmethod(_progressive)

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> SACActor:
        actor = super().make_actor(features_extractor)
        if actor.use_sde:
            raise ConfigError("ProgressiveSACPolicy does not support gSDE; use use_sde=False")
        actor.latent_pi = _progressive(actor.latent_pi, self.router)  # type: ignore[assignment]
        actor.mu = _headed(actor.mu, self.router)
        actor.log_std = _headed(actor.log_std, self.router)  # a Linear without gSDE
        _route(actor, self.router)
        return actor.to(self.device)


class ProgressiveTD3Policy(_TaskCritics, TD3Policy):
    """SB3's TD3 policy as progressive columns (actor, its target and every critic).

    Build it with ``TD3(clrl.ProgressiveTD3Policy, env, policy_kwargs={"n_tasks": 4})``.

    Args:
        *args: As :class:`~stable_baselines3.td3.policies.TD3Policy`.
        n_tasks: Number of columns (the stream's number of tasks).
        **kwargs: As :class:`~stable_baselines3.td3.policies.TD3Policy`.
    """

    q_network_transform = staticmethod(_progressive)

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> TD3Actor:
        actor = super().make_actor(features_extractor)
        actor.mu = _progressive(actor.mu, self.router)  # type: ignore[assignment]
        _route(actor, self.router)
        return actor.to(self.device)


PROGRESSIVE_POLICIES: dict[str, type[BaseModel]] = {
    "PPO": ProgressiveActorCriticPolicy,
    "A2C": ProgressiveActorCriticPolicy,
    "DQN": ProgressiveDQNPolicy,
    "SAC": ProgressiveSACPolicy,
    "TD3": ProgressiveTD3Policy,
}
"""The progressive policy class of each supported algorithm, by class name."""


def progressive_policy(algorithm: type[BaseAlgorithm] | str) -> type[BaseModel]:
    """The progressive policy class for ``algorithm`` (a class or a name such as ``"ppo"``).

    Raises:
        ConfigError: The algorithm has none (supported: PPO, A2C, DQN, SAC, TD3).
    """
    return policy_for(PROGRESSIVE_POLICIES, algorithm, "progressive")


class ProgressiveColumns(MultiHead):
    """Progressive networks: a new column per task, earlier columns frozen, lateral adapters from every
    earlier column's layers into the new one.

    The columns live in the policy: build the model with the algorithm's progressive policy
    (:func:`progressive_policy`:
    ``PPO(clrl.ProgressiveActorCriticPolicy, env, policy_kwargs={"n_tasks": n})``, likewise
    ``ProgressiveDQNPolicy``, ``ProgressiveSACPolicy``, ``ProgressiveTD3Policy``). Every MLP of the policy
    (actor and critic; Q-network; SAC/TD3 actor and critics) becomes a :class:`ProgressiveMLP` and every
    separate output layer a per-task head. Samples go to the column of the task id in their observation, so
    the evaluator's episodes of task ``j`` use column ``j``; a batch runs the columns up to its highest task
    and only that one gets gradients, so a finished task's column, adapters and heads never change (its
    return neither). Costs grow with the columns: column ``k`` has ``k`` adapters per layer, and a pass over
    task ``k`` runs ``k + 1`` columns (``cl/progressive/params`` logs the parameters per column). This module
    checks the setting and, like :class:`MultiHead`, ``set_task(j)`` routes every sample to column ``j``.

    Paper: Rusu et al. 2016, "Progressive Neural Networks" (arXiv:1606.04671). The adapters here are linear
    maps (the paper's non-linear adapters with learned scales are a refinement left out).

    Args:
        require_task_id: Refuse streams whose task id is hidden in ``clrl.train``.
        verbose: SB3 callback verbosity.
    """

    name = "progressive"

    def _router(self, model: BaseAlgorithm | None = None) -> TaskRouter:
        model = self.sb3_model if model is None else model
        router = task_router(model)
        if router is None or not any(isinstance(m, ProgressiveMLP) for m in model.policy.modules()):
            algo = type(model).__name__
            raise ConfigError(
                f"ProgressiveColumns needs a progressive policy; build the model with "
                f"{algo}(clrl.progressive_policy({algo}), env, policy_kwargs={{'n_tasks': len(stream)}})"
            )
        return router

    def log_scalars(self) -> dict[str, float]:
        """``params``: parameters of the column of the task being trained (layers, adapters, heads)."""
        k = max(self.task_index, 0)
        policy = self.sb3_model.policy
        columns = sum(m.column_parameters(k) for m in policy.modules() if isinstance(m, ProgressiveMLP))
        heads = sum(
            m.weight[k].numel() + m.bias[k].numel() for m in policy.modules() if isinstance(m, TaskLinear)
        )
        return {"params": float(columns + heads)}
