"""Multi-head policies: one output layer per task over a shared trunk, chosen by the observed task id."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from stable_baselines3 import DQN
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
from clrl.modules.base import ContinualModule, TaskInfo, check_bool


class TaskRouter:
    """Tells the task heads of one policy which task each sample belongs to.

    Every features extractor of the policy reports its input here (a forward pre-hook); the task of a sample
    is the position of the one in the last ``n_tasks`` entries of its observation (what a stream with
    ``task_id = "observed"`` appends), or the ``"task_id"`` entry of a Dict observation. :attr:`forced`
    overrides it for every sample.
    """

    def __init__(self, n_tasks: int) -> None:
        if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
            raise ConfigError(f"n_tasks must be a positive integer, got {n_tasks!r}")
        self.n_tasks = n_tasks
        self.forced: int | None = None
        """Route every sample to this head (``None``: by the observation's task id)."""
        self.alpha: torch.Tensor | None = None
        """Weights of a superposition: while set, every per-task layer outputs ``Σ_i alpha[i] · layer_i(x)``
        over the first ``len(alpha)`` tasks (SupSup's task inference)."""
        self._ids: torch.Tensor | None = None
        self._only: int | None = None  # the one task of the last batch, when it has one
        self._counts: list[int] | None = None  # samples per task of the last batch, when it mixes tasks
        self._grouping: tuple[torch.Tensor, torch.Tensor] | None = None  # its order by task and inverse

    def observe(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """Forward pre-hook of a features extractor: read the batch's task ids (and whether they are all
        one task's, as most batches are, so that each head does not have to find out again)."""
        obs = args[0]
        one_hot = obs["task_id"] if isinstance(obs, dict) else obs[..., -self.n_tasks :]
        self._ids = ids = one_hot.argmax(dim=-1)
        self._only, self._counts, self._grouping = None, None, None
        if torch._C._functorch.is_functorch_wrapped_tensor(ids):
            return  # per-sample calls under vmap: each head reads its sample's id
        if ids.numel() == 1:  # one environment acting: one task (an item, not three more operations)
            self._only = int(ids.item())
            return
        counts = torch.bincount(ids.flatten(), minlength=self.n_tasks).tolist()  # one synchronisation
        present = [task for task, count in enumerate(counts) if count]
        if len(present) == 1:
            self._only = present[0]
        else:
            self._counts = counts

    def tasks(self, x: torch.Tensor) -> list[int]:
        """The tasks present in the batch ``x`` belongs to, in increasing order."""
        only = self.only(x)
        if only is not None:
            return [only]
        self.ids(x)  # the batch's ids must be known
        assert self._counts is not None
        return [task for task, count in enumerate(self._counts) if count]

    def grouped(self, x: torch.Tensor) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """A mixed batch's samples per task, and the order that groups them by task (stable: each task's
        samples keep their order) with its inverse, made once per batch for every head to use.

        ``x.flatten(0, -2)[order].split(counts)`` are the tasks' samples, and ``cat(...)[inverse]`` puts
        per-task results back in the batch's order.
        """
        ids = self.ids(x).flatten()
        assert self._counts is not None  # observe saw a batch of several tasks (or none)
        if self._grouping is None:
            order = torch.argsort(ids, stable=True)
            self._grouping = order, torch.argsort(order)
        return self._counts, *self._grouping

    def only(self, x: torch.Tensor) -> int | None:
        """The one head every sample of ``x`` goes to, if there is one and it is known without a look at
        the ids (a forced head, or a batch of one task); ``None`` otherwise."""
        if self.forced is not None:
            return self.forced
        if self._only is not None and self._ids is not None and self._ids.shape == x.shape[:-1]:
            return self._only
        return None

    def ids(self, x: torch.Tensor) -> torch.Tensor:
        """The head of each sample of ``x`` (shape ``x.shape[:-1]``; per-sample calls under vmap work too)."""
        if self.forced is not None:
            return torch.full(x.shape[:-1], self.forced, dtype=torch.long, device=x.device)
        if self._ids is None or self._ids.shape != x.shape[:-1]:
            raise RuntimeError(
                "a task head ran without its features extractor on the same batch; multi-head policies "
                "route by the task id in the observation"
            )
        return self._ids.to(x.device)


def routed_linear(
    x: torch.Tensor,
    router: TaskRouter,
    task_params: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]],
    out_features: int,
) -> torch.Tensor:
    """A linear map whose weight and bias depend on each sample's task: ``task_params(t)`` gives task ``t``'s.

    A batch of one task (most are) is one ``linear``; a mixed batch (replay of earlier tasks) is grouped by
    task once and runs each task present on its rows; under
    ``torch.func`` transforms (per-sample gradients) every sample gathers its task's from the stacked ones;
    while ``router.alpha`` is set, the output is the superposition ``Σ_i alpha[i] · linear_i(x)``.
    """
    if router.alpha is not None:
        return sum(  # type: ignore[return-value]
            a * nn.functional.linear(x, *task_params(i)) for i, a in enumerate(router.alpha.unbind())
        )
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor(x)
    only = router.only(x)
    if only is not None and not wrapped:
        return nn.functional.linear(x, *task_params(only))
    if wrapped:
        # Inside torch.func transforms (per-sample gradients of the importance estimates): no
        # data-dependent shapes there, so gather every sample's weights from the stacked ones.
        ids = router.ids(x)
        pairs = [task_params(t) for t in range(router.n_tasks)]
        weight = torch.stack([w for w, _ in pairs])
        bias = torch.stack([b if b is not None else w.new_zeros(w.shape[0]) for w, b in pairs])
        return torch.einsum("...i,...oi->...o", x, weight[ids]) + bias[ids]
    # A mixed batch: each task's samples, grouped by one index, through their task's layer, and back. Each
    # task's layer sees exactly the rows `x[ids == task]` would give it, so results are those of one linear
    # map per task's rows, without a mask, a gather and a scatter per task.
    counts, order, inverse = router.grouped(x)
    groups = x.flatten(0, -2).index_select(0, order).split(counts)
    outs = [nn.functional.linear(g, *task_params(t)) for t, g in enumerate(groups) if counts[t]]
    if not outs:
        return x.new_empty(*x.shape[:-1], out_features)
    return torch.cat(outs).index_select(0, inverse).reshape(*x.shape[:-1], out_features)


TARGET_NETWORKS = (
    ("q_net", "q_net_target"),
    ("quantile_net", "quantile_net_target"),
    ("actor", "actor_target"),
    ("critic", "critic_target"),
)
"""The attributes under which SB3's policies keep networks and their target networks, as pairs."""


def cache_targets(policy: nn.Module, on: bool) -> None:
    """Turn on or off the caches of the layers (``cache`` attributes) in ``policy``'s target networks, and
    empty them either way.

    Layers that keep what they compute without gradient (a masked weight, a gate, generated weights) until
    a parameter's version counter changes cannot do so in a target network at large: SB3 updates targets
    through ``.data`` (``polyak_update``), which no version counter sees, so the cache would keep the first
    weights. They are off from the policy's build on; the multi-head modules turn them on only while an
    algorithm's ``train`` runs that leaves its target networks alone (:func:`targets_fixed_in_train`).
    """
    for _, name in TARGET_NETWORKS:
        target = getattr(policy, name, None)
        if isinstance(target, nn.Module):
            for module in target.modules():
                if hasattr(module, "cache") and hasattr(module, "clear_cache"):
                    setattr(module, "cache", on)  # noqa: B010
                    getattr(module, "clear_cache")()  # noqa: B009


def targets_fixed_in_train(model: BaseAlgorithm) -> bool:
    """Whether ``model``'s ``train`` leaves its target network as it is: DQN's (and that of a subclass that
    keeps it), which updates the target in ``_on_step``, between environment steps. SAC, TD3 and DDPG update
    theirs after gradient steps, inside ``train``."""
    return getattr(type(model), "train", None) is DQN.train


class TaskLinear(nn.Module):
    """A linear layer with one weight matrix and bias per task: sample ``b`` uses those of its task.

    Each task's weight and bias are separate parameters, and a batch only runs the heads of the tasks in it,
    so the other heads get no gradient at all (``None``): the optimiser skips them, and Adam's momentum from
    their own task cannot move them later.

    Args:
        base: The layer it replaces; every task's head starts as a copy of it (SB3's initialisation).
        router: Where the task of each sample comes from.
    """

    def __init__(self, base: nn.Linear, router: TaskRouter) -> None:
        super().__init__()
        bias = base.bias if base.bias is not None else torch.zeros(base.out_features)
        self.weight = nn.ParameterList(base.weight.detach().clone() for _ in range(router.n_tasks))
        self.bias = nn.ParameterList(bias.detach().clone() for _ in range(router.n_tasks))
        self.in_features, self.out_features = base.in_features, base.out_features
        self._router = router  # a plain attribute: not a submodule, not in the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return routed_linear(x, self._router, self._task, self.out_features)

    def _task(self, task: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = str(task)  # ParameterList's own indexing is 7x slower than its dictionary
        return self.weight._parameters[key], self.bias._parameters[key]  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tasks={len(self.weight)}"


def policy_optimizers(policy: nn.Module) -> list[torch.optim.Optimizer]:
    """The optimisers SB3 built in ``policy`` (``policy.optimizer``; SAC's and TD3's actor and critic)."""
    found = [getattr(m, "optimizer", None) for m in policy.modules()]
    return [opt for opt in found if isinstance(opt, torch.optim.Optimizer)]


def step_together(policy: nn.Module) -> None:
    """Have ``policy``'s optimisers step all their tensors in one call per operation (``foreach=True``)
    where torch was left to choose.

    Per-task parameters (a head, a mask's scores, a gate's embeddings per task) multiply the tensors an
    optimiser steps, and torch's CPU default steps each on its own, a dozen small operations per tensor.
    Stepping them together computes the same numbers, element for element (tested for Adam and RMSprop,
    the optimisers of SB3's algorithms). A choice the user made (``optimizer_kwargs={"foreach": False}``,
    or ``fused``), and optimisers without the option, are left as they are; the default also covers
    parameter groups added later.
    """
    for optimizer in policy_optimizers(policy):
        for group in [optimizer.defaults, *optimizer.param_groups]:
            if "foreach" in group and group["foreach"] is None and not group.get("fused"):
                group["foreach"] = True


def join_optimizers(policy: nn.Module, joins: Sequence[tuple[torch.Tensor, Sequence[nn.Parameter]]]) -> None:
    """Have every optimiser of ``policy`` that steps a layer's weight also step that layer's new
    parameters (``joins``: pairs of a weight and its parameters, e.g. a mask's scores or a gate's
    embeddings), in its last parameter group.

    Not in a group of their own: torch's optimisers step each group in a call of its own (Adam's, a dozen
    operations and its bookkeeping: about 60 µs per step on these CPUs), and SB3 builds one group whose
    hyperparameters a new group would copy anyway, so the numbers are the same. An optimiser state saved
    while they had a group of their own still loads (:func:`merge_saved_groups`).
    """
    for optimizer in policy_optimizers(policy):
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        new = [p for weight, params in joins if id(weight) in held for p in params]
        if new:
            optimizer.param_groups[-1]["params"].extend(new)
            optimizer.register_load_state_dict_pre_hook(merge_saved_groups)


def merge_saved_groups(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any] | None:
    """Load hook of the optimisers :func:`join_optimizers` extended: a state saved with more parameter
    groups than ``optimizer`` has, whose consecutive groups add up to ``optimizer``'s (the layout before
    a policy's added parameters joined its last group), is loaded with those groups merged, each with the
    hyperparameters of its first. The saved per-parameter state is numbered across groups, so it is
    unchanged. Any other state is left to torch's own checks."""
    saved = state.get("param_groups")
    if not isinstance(saved, list) or len(saved) <= len(optimizer.param_groups):
        return None
    merged, i = [], 0
    for group in optimizer.param_groups:
        if i >= len(saved):
            return None
        first = dict(saved[i])
        params, i = list(first["params"]), i + 1
        while len(params) < len(group["params"]) and i < len(saved):
            params, i = params + list(saved[i]["params"]), i + 1
        if len(params) != len(group["params"]):
            return None
        merged.append({**first, "params": params})
    return {**state, "param_groups": merged} if i == len(saved) else None


def _headed(module: Any, router: TaskRouter) -> Any:
    """``module`` with its output layer made per-task: a Linear becomes a :class:`TaskLinear`; in a
    Sequential, the last Linear is replaced in place."""
    if isinstance(module, nn.Linear):
        return TaskLinear(module, router)
    if isinstance(module, nn.Sequential):
        last, linear = [(i, m) for i, m in enumerate(module) if isinstance(m, nn.Linear)][-1]
        module[last] = TaskLinear(linear, router)
        return module
    raise ConfigError(f"cannot give {type(module).__name__} one head per task")


def _route(net: nn.Module, router: TaskRouter) -> None:
    """Make every features extractor in ``net`` report its input to ``router``."""
    for m in net.modules():
        if isinstance(m, BaseFeaturesExtractor):
            m.register_forward_pre_hook(router.observe)


class _TaskHeads:
    """The ``n_tasks`` and ``task`` arguments and the router shared by the multi-head and progressive
    policies (SB3 saves them with the policy's constructor arguments, so loading rebuilds the heads).

    ``task`` (default ``None``: route by the observation's task id) routes every sample to one head or
    column for good: what :func:`clrl.export_policy` writes, so that a plain ``load`` acts as the evaluated
    policy of that task.
    """

    router: TaskRouter

    def __init__(self, *args: Any, n_tasks: int, task: int | None = None, **kwargs: Any) -> None:
        self.router = TaskRouter(n_tasks)  # before SB3's constructor, which builds the heads
        if task is not None and not (isinstance(task, int) and 0 <= task < n_tasks):
            raise ConfigError(f"task must be a head index in [0, {n_tasks}), got {task!r}")
        self._fixed_task = task
        self.router.forced = task
        super().__init__(*args, **kwargs)
        step_together(self)  # type: ignore[arg-type]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        params = {**super()._get_constructor_parameters(), "n_tasks": self.router.n_tasks}  # type: ignore[misc]
        if self._fixed_task is not None:
            params["task"] = self._fixed_task
        return params


class _TaskCritics(_TaskHeads):
    """SAC and TD3: ``make_critic`` returns SB3's critic with every Q-network passed through
    :attr:`q_network_transform` (per-task heads, or progressive columns)."""

    @staticmethod
    def q_network_transform(module: nn.Sequential, router: TaskRouter) -> nn.Module:
        """A Q-network made per-task (set by each policy class)."""
        raise NotImplementedError

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> Any:
        critic = super().make_critic(features_extractor)  # type: ignore[misc]
        q_networks = critic.q_networks
        for idx, q_net in enumerate(q_networks):
            q_networks[idx] = type(self).q_network_transform(q_net, self.router)
            critic.add_module(f"qf{idx}", q_networks[idx])  # SB3 registers them under these names
        _route(critic, self.router)
        return critic.to(self.device)  # type: ignore[attr-defined]


class MultiHeadActorCriticPolicy(_TaskHeads, ActorCriticPolicy):
    """SB3's actor-critic policy (PPO, A2C) with one action head and one value head per task.

    The trunk (features extractor, ``mlp_extractor``) and a Gaussian policy's ``log_std`` are shared.
    Build it with ``PPO(clrl.MultiHeadActorCriticPolicy, env, policy_kwargs={"n_tasks": 4})``.

    Args:
        *args: As :class:`~stable_baselines3.common.policies.ActorCriticPolicy`.
        n_tasks: Number of heads: the stream's number of tasks (its observations end with a one-hot of
            that length).
        **kwargs: As :class:`~stable_baselines3.common.policies.ActorCriticPolicy`.
    """

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        self.action_net = _headed(self.action_net, self.router)
        self.value_net = _headed(self.value_net, self.router)
        _route(self, self.router)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]


class MultiHeadDQNPolicy(_TaskHeads, DQNPolicy):
    """SB3's DQN policy with one Q-value head per task (Q-network and target network).

    Build it with ``DQN(clrl.MultiHeadDQNPolicy, env, policy_kwargs={"n_tasks": 4})``.

    Args:
        *args: As :class:`~stable_baselines3.dqn.policies.DQNPolicy`.
        n_tasks: Number of heads (the stream's number of tasks).
        **kwargs: As :class:`~stable_baselines3.dqn.policies.DQNPolicy`.
    """

    def make_q_net(self) -> QNetwork:
        q_net = super().make_q_net()
        _headed(q_net.q_net, self.router)  # in place
        _route(q_net, self.router)
        return q_net.to(self.device)


class MultiHeadSACPolicy(_TaskCritics, SACPolicy):
    """SB3's SAC policy with one head per task for the actor's mean and log-std and for every critic.

    Build it with ``SAC(clrl.MultiHeadSACPolicy, env, policy_kwargs={"n_tasks": 4})`` (not with gSDE).

    Args:
        *args: As :class:`~stable_baselines3.sac.policies.SACPolicy`.
        n_tasks: Number of heads (the stream's number of tasks).
        **kwargs: As :class:`~stable_baselines3.sac.policies.SACPolicy`.
    """

    q_network_transform = staticmethod(_headed)

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> SACActor:
        actor = super().make_actor(features_extractor)
        if actor.use_sde:
            raise ConfigError("MultiHeadSACPolicy does not support gSDE; use use_sde=False")
        actor.mu = _headed(actor.mu, self.router)
        actor.log_std = _headed(actor.log_std, self.router)  # a Linear without gSDE
        _route(actor, self.router)
        return actor.to(self.device)


class MultiHeadTD3Policy(_TaskCritics, TD3Policy):
    """SB3's TD3 policy with one head per task for the actor (and its target) and every critic.

    Build it with ``TD3(clrl.MultiHeadTD3Policy, env, policy_kwargs={"n_tasks": 4})``.

    Args:
        *args: As :class:`~stable_baselines3.td3.policies.TD3Policy`.
        n_tasks: Number of heads (the stream's number of tasks).
        **kwargs: As :class:`~stable_baselines3.td3.policies.TD3Policy`.
    """

    q_network_transform = staticmethod(_headed)

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> TD3Actor:
        actor = super().make_actor(features_extractor)
        _headed(actor.mu, self.router)  # in place
        _route(actor, self.router)
        return actor.to(self.device)


MULTIHEAD_POLICIES: dict[str, type[BaseModel]] = {
    "PPO": MultiHeadActorCriticPolicy,
    "A2C": MultiHeadActorCriticPolicy,
    "DQN": MultiHeadDQNPolicy,
    "SAC": MultiHeadSACPolicy,
    "TD3": MultiHeadTD3Policy,
}
"""The multi-head policy class of each supported algorithm, by class name."""


def multihead_policy(algorithm: type[BaseAlgorithm] | str) -> type[BaseModel]:
    """The multi-head policy class for ``algorithm`` (a class or a name such as ``"ppo"``).

    Raises:
        ConfigError: The algorithm has none (supported: PPO, A2C, DQN, SAC, TD3).
    """
    return policy_for(MULTIHEAD_POLICIES, algorithm, "multi-head")


def task_router(model: BaseAlgorithm) -> TaskRouter | None:
    """The router of ``model``'s multi-head policy (``None``: not a multi-head policy)."""
    router = getattr(model.policy, "router", None)
    return router if isinstance(router, TaskRouter) else None


class HeldHeads:
    """The per-task heads of every task but the one being trained, held where they are.

    A method whose earlier tasks must not change at all (:class:`clrl.Piggyback`, :class:`clrl.SupSup`,
    :class:`clrl.HAT`) holds them: an earlier task's samples in a replay buffer reach its own heads. Their
    gradient is dropped (set to ``None``) as soon as SB3's backward has accumulated it, before gradient
    clipping: it does not count in the norm, and torch's optimisers skip a parameter without a gradient
    entirely (no momentum, no weight decay), so the heads do not move.
    """

    def __init__(self) -> None:
        self.held: dict[str, nn.Parameter] = {}
        """Held parameters, by name relative to the policy."""

    def hold(self, policy: nn.Module, task: int) -> None:
        """Hold every head of ``policy`` but task ``task``'s."""
        self.held = {
            f"{name}.{kind}.{i}": param
            for name, head in policy.named_modules()
            if isinstance(head, TaskLinear)
            for kind in ("weight", "bias")
            for i, param in enumerate(getattr(head, kind))
            if i != task
        }

    def parameters(self) -> dict[str, nn.Parameter]:
        """The held parameters by name (what a module's ``target_parameters`` returns for them)."""
        return dict(self.held)

    def drop_grad(self, name: str, param: nn.Parameter) -> bool:
        """Drop ``param``'s gradient if it is held; return whether it is."""
        if name not in self.held:
            return False
        param.grad = None
        return True


class HeldEntries:
    """Entries of parameters held at their values: their gradient zeroed as soon as SB3's backward has
    accumulated it (before gradient clipping, so it does not count in the norm), their values written back
    after every optimiser step (Adam's momentum and weight decay would move them), as :class:`clrl.PackNet`
    holds its frozen weights. :class:`clrl.HAT` holds the weights between units earlier tasks use,
    :class:`clrl.CPG` the weights earlier tasks own."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        """By parameter name: the parameter, the held entries (a bool mask) and their values."""
        self._fast: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # free 0/1, flat held

    def hold(self, name: str, param: torch.Tensor, entries: torch.Tensor) -> None:
        """Hold ``param``'s ``entries`` (a bool mask of its shape) at their current values (none: release)."""
        if bool(entries.any()):
            value = param.detach().clone()
            self.held[name] = (param, entries, value)
            # What a fill and a selection by the mask do, without them: torch's boolean kernels are slow on
            # the CPU (on a 256×256 weight, 500 µs for a fill, 14 µs for the product with the free entries'
            # 0/1, 60 µs for writing the held values back by their flat indices).
            index = entries.flatten().nonzero().squeeze(1)
            self._fast[name] = ((~entries).to(param.dtype), index, value.flatten()[index])
        else:
            self.held.pop(name, None)
            self._fast.pop(name, None)

    def clear(self) -> None:
        """Hold nothing."""
        self.held, self._fast = {}, {}

    def parameters(self) -> dict[str, nn.Parameter]:
        """The parameters with held entries, by name."""
        return {name: param for name, (param, _, _) in self.held.items()}  # type: ignore[misc]

    def zero_grad(self, name: str, param: nn.Parameter) -> None:
        """Zero the gradient of ``param``'s held entries (as a product: ``-0.0`` where it was negative)."""
        fast = self._fast.get(name)
        if fast is not None and param.grad is not None:
            param.grad.mul_(fast[0])

    def restore(self, names: Sequence[str]) -> None:
        """Write the held entries of the parameters ``names`` back, exactly."""
        with torch.no_grad():
            for name in names:
                fast = self._fast.get(name)
                if fast is None:
                    continue
                param, entries, value = self.held[name]
                if param.is_contiguous():
                    param.view(-1).index_copy_(0, fast[1], fast[2])
                else:
                    param.copy_(torch.where(entries, value, param))


class MultiHead(ContinualModule):
    """The multi-head setting: one output head per task over a shared trunk (Continual World's setting).

    The heads live in the policy: build the model with the algorithm's multi-head policy
    (:func:`multihead_policy`: ``PPO(clrl.MultiHeadActorCriticPolicy, env, policy_kwargs={"n_tasks": n})``,
    likewise ``MultiHeadDQNPolicy``, ``MultiHeadSACPolicy``, ``MultiHeadTD3Policy``). Each sample is routed to
    the head of the task whose id its observation carries, so batches that mix tasks (replayed transitions of
    :class:`Replay`, CLEAR's segments, behaviour cloning's or A-GEM's stored states) use every sample's own
    head, and the evaluator's episodes of task ``j`` use head ``j``. Only the trunk is shared: combine this
    module with a penalty (``[clrl.MultiHead(), clrl.EWC()]``) or with replay to protect it. This module
    checks the setting (an observed task id, one head per task) and lets you pick a head by hand:
    ``set_task(j)`` routes every sample to head ``j`` until ``set_task`` names the task being trained again.

    Paper: Wołczyk et al. 2021, "Continual World: A Robotic Benchmark For Continual Reinforcement Learning"
    (NeurIPS), multi-head setting; heads per task as in Li & Hoiem 2016 and Rusu et al. 2016.

    Args:
        require_task_id: Refuse streams whose task id is hidden in ``clrl.train`` (the heads are routed by
            it; with ``False`` the evaluator's ``set_task`` still picks heads, but training routes by the
            observation, which then carries no id).
        verbose: SB3 callback verbosity.
    """

    name = "multihead"

    def __init__(self, require_task_id: bool = True, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.require_task_id = check_bool(require_task_id, f"{type(self).__name__} require_task_id")
        self.task_index = -1
        self._stream_tasks: int | None = None
        self._targets_cached = False  # whether this module turned the target networks' caches on

    def check_stream(self, stream: Any) -> None:
        """Refuse a hidden task id unless ``require_task_id=False``; remember the number of tasks."""
        self._stream_tasks = len(stream)
        if self.require_task_id and stream.task_id == "hidden":
            raise ConfigError(
                f"{type(self).__name__} routes samples by their task id, but stream {stream.name!r} hides "
                "it; use a stream with task_id = 'observed'"
            )

    def _router(self, model: BaseAlgorithm | None = None) -> TaskRouter:
        model = self.sb3_model if model is None else model
        router = task_router(model)
        if router is None:
            algo = type(model).__name__
            raise ConfigError(
                f"MultiHead needs a multi-head policy; build the model with "
                f"{algo}(clrl.multihead_policy({algo}), env, policy_kwargs={{'n_tasks': len(stream)}})"
            )
        return router

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse a policy without task heads (before anything trains)."""
        self._router(model)

    def on_task_start(self, task: TaskInfo) -> None:
        """Check the policy has a head for this task; route by observation while training."""
        router = self._router()
        if self._stream_tasks is not None and router.n_tasks != self._stream_tasks:
            raise ConfigError(
                f"the policy has {router.n_tasks} heads but the stream {self._stream_tasks} tasks; build it "
                f"with policy_kwargs={{'n_tasks': {self._stream_tasks}}}"
            )
        if task.index >= router.n_tasks:
            raise ConfigError(f"the policy has {router.n_tasks} heads, no head for task index {task.index}")
        router.forced = None
        self.task_index = task.index

    def _on_training_start(self) -> None:
        super()._on_training_start()
        self._cache_targets(False, always=True)  # also after a learn that raised inside train

    def _on_rollout_start(self) -> None:
        super()._on_rollout_start()
        self._cache_targets(False)  # the algorithm's _on_step may update the targets

    def _on_rollout_end(self) -> None:
        super()._on_rollout_end()  # subclasses change their layers before this (HAT's s, CPG's pruning)
        if targets_fixed_in_train(self.sb3_model):
            # train() is next and leaves the targets as they are: their layers can keep what they compute
            # (DQN's target reuses every replayed task's masked weights) until the next rollout starts.
            self._cache_targets(True)

    def _on_training_end(self) -> None:
        self._cache_targets(False)
        super()._on_training_end()

    def abort_task(self) -> None:
        """Close the task without ending it (see the base class); a ``learn`` that raised inside ``train``
        leaves the target networks' caches off again."""
        if getattr(self, "model", None) is not None:
            self._cache_targets(False, always=True)
        super().abort_task()

    def _cache_targets(self, on: bool, always: bool = False) -> None:
        if always or on or self._targets_cached:
            cache_targets(self.sb3_model.policy, on)
        self._targets_cached = on

    def set_task(self, index: int) -> None:
        """Route every sample to head ``index`` (by the observation again when ``index`` is the task being
        trained)."""
        if getattr(self, "model", None) is None:
            return
        self._router().forced = None if index == self.task_index else index

    def log_scalars(self) -> dict[str, float]:
        """``params_per_head``: parameters one task's heads add."""
        heads = [m for m in self.sb3_model.policy.modules() if isinstance(m, TaskLinear)]
        return {"params_per_head": float(sum(m.weight[0].numel() + m.bias[0].numel() for m in heads))}

    def state_dict(self) -> dict[str, Any]:
        """The index of the last task trained."""
        return {"task_index": self.task_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.task_index = int(state["task_index"])
