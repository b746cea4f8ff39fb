"""Network surgery shared by the plasticity methods: fresh initial weights for a layer, reinitialised
units, and the optimiser state of changed entries.

A fresh draw of a ``Linear`` layer follows the initialisation SB3 gave it: an actor-critic policy built
with ``ortho_init`` (PPO's and A2C's default) draws orthogonal weights with SB3's gain for the module
(``sqrt(2)`` in the features extractor and the MLP, 0.01 for the action head, 1 for the value head) and
zero biases; every other layer draws PyTorch's default (``kaiming_uniform_(a=sqrt(5))`` weights and
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` biases), which is how SB3 initialises the networks of DQN, SAC and
TD3. Draws use torch's global generator, which SB3 seeds.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from clrl.algorithms import check_networks, optimizers
from clrl.errors import ConfigError
from clrl.modules.base import ContinualModule, TaskInfo, check_positive_int
from clrl.networks import CReLU
from clrl.plasticity import Periodic, hidden_layers, policy_networks, under

_ORTHO_GAINS = {
    "features_extractor": math.sqrt(2),
    "pi_features_extractor": math.sqrt(2),
    "vf_features_extractor": math.sqrt(2),
    "mlp_extractor": math.sqrt(2),
    "action_net": 0.01,
    "value_net": 1.0,
}


def fresh_linear(
    model: BaseAlgorithm, path: str, linear: nn.Linear
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A fresh draw of the weight and bias of the ``Linear`` at module ``path`` of ``model.policy``, as SB3
    initialised it (see the module docstring); tensors on the layer's device, the layer unchanged."""
    weight = torch.empty_like(linear.weight)
    bias = None if linear.bias is None else torch.empty_like(linear.bias)
    policy = model.policy
    gain = _ORTHO_GAINS.get(path.split(".")[0])
    with torch.no_grad():
        if isinstance(policy, ActorCriticPolicy) and policy.ortho_init and gain is not None:
            nn.init.orthogonal_(weight, gain=gain)
            if bias is not None:
                bias.zero_()
        else:
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            if bias is not None:
                bound = 1 / math.sqrt(linear.in_features) if linear.in_features > 0 else 0.0
                nn.init.uniform_(bias, -bound, bound)
    return weight, bias


def module_path(model: BaseAlgorithm, module: nn.Module) -> str:
    """The path of ``module`` inside ``model.policy``.

    Raises:
        KeyError: ``module`` is not part of the policy.
    """
    for path, candidate in model.policy.named_modules():
        if candidate is module:
            return path
    raise KeyError(f"{type(module).__name__} is not a module of the policy")


def reset_optimizer_entries(
    model: BaseAlgorithm, param: torch.Tensor, mask: torch.Tensor | None = None
) -> None:
    """Zero the optimiser state of ``param`` (Adam's moments, SGD's momentum: every state tensor of the
    parameter's shape) where ``mask`` is true, or all of it; the step counts stay."""
    for optimizer in optimizers(model).values():
        state = optimizer.state.get(param)
        if not state:
            continue
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                if mask is None:
                    value.zero_()
                else:
                    value[mask] = 0.0


def reinitialise_units(
    model: BaseAlgorithm, incoming: nn.Linear, outgoing: tuple[nn.Linear, ...], units: torch.Tensor
) -> None:
    """Recycle ``units`` (a boolean mask over ``incoming``'s outputs): their incoming weights and biases
    get a fresh draw (:func:`fresh_linear`), their outgoing weights become zero (the network's outputs
    are unchanged), and the optimiser state of every changed entry is zeroed."""
    weight, bias = fresh_linear(model, module_path(model, incoming), incoming)
    with torch.no_grad():
        incoming.weight[units] = weight[units]
        if incoming.bias is not None and bias is not None:
            incoming.bias[units] = bias[units]
        for layer in outgoing:
            layer.weight[:, units] = 0.0
    rows = units.unsqueeze(1).expand_as(incoming.weight)
    reset_optimizer_entries(model, incoming.weight, rows)
    if incoming.bias is not None:
        reset_optimizer_entries(model, incoming.bias, units)
    for layer in outgoing:
        reset_optimizer_entries(model, layer.weight, units.unsqueeze(0).expand_as(layer.weight))


def check_one_feature_per_unit(model: BaseAlgorithm, what: str) -> None:
    """Refuse a policy with :class:`~clrl.networks.CReLU` layers, whose units each give two features, for
    ``what``, which treats feature ``i`` of a hidden layer as unit ``i`` (its row and column)."""
    if any(isinstance(layer.activation, CReLU) for layer in hidden_layers(model)):
        raise ConfigError(
            f"{what} replaces a hidden layer's units one feature each; a CReLU layer gives two features per "
            "unit: use another activation_fn"
        )


def target_copy(model: BaseAlgorithm, path: str) -> nn.Module | None:
    """The module of the policy's target network (SAC's and TD3's ``critic_target`` and ``actor_target``,
    DQN's ``q_net_target``) that copies the one at ``path``, or ``None``."""
    head, _, rest = path.partition(".")
    try:
        return model.policy.get_submodule(f"{head}_target.{rest}" if rest else f"{head}_target")
    except AttributeError:
        return None


def selected_networks(model: BaseAlgorithm, networks: str) -> list[str]:
    """The networks of :func:`clrl.plasticity.policy_networks` that ``networks`` names: ``"actor"`` (what
    chooses actions: the actor, or DQN's Q-network) or ``"all"``.

    Raises:
        ConfigError: ``networks`` is neither, or the policy has no layout clrl can change.
    """
    names = list(policy_networks(model))
    if check_networks(networks) == "all":
        return names
    return [n for n in names if n in ("actor", "q_net", "quantile_net")]


def network_linears(model: BaseAlgorithm, network: str) -> dict[str, nn.Linear]:
    """The ``Linear`` layers of one of :func:`clrl.plasticity.policy_networks`, by path in the policy."""
    prefixes = policy_networks(model)[network]
    return {p: m for p, m in model.policy.named_modules() if isinstance(m, nn.Linear) and under(p, prefixes)}


def linear_depths(model: BaseAlgorithm, network: str) -> dict[str, int]:
    """Each ``Linear`` layer of ``network`` by its depth from the output: 1 for the layers whose outputs
    no hidden layer reads (the heads: an action head, SAC's ``mu`` and ``log_std``, each Q-network's last
    layer), 2 for those feeding the last hidden layer, and so on. Layers whose readers are unknown count
    as the deepest."""
    linears = network_linears(model, network)
    feeds = {id(layer.linear): layer for layer in hidden_layers(model) if layer.network == network}
    depth: dict[int, int | None] = {}

    def of(module: nn.Linear) -> int | None:
        if id(module) not in depth:
            layer = feeds.get(id(module))
            if layer is None:
                depth[id(module)] = 1
            elif not layer.outgoing:
                depth[id(module)] = None
            else:
                readers = [of(reader) for reader in layer.outgoing]
                depth[id(module)] = None if None in readers else 1 + max(r for r in readers if r is not None)
        return depth[id(module)]

    known = {path: of(module) for path, module in linears.items()}
    deepest = max((d for d in known.values() if d is not None), default=0) + 1
    return {path: deepest if d is None else d for path, d in known.items()}


def rollout_steps(algorithm: type[BaseAlgorithm], settings: Mapping[str, Any], n_envs: int = 1) -> int:
    """Environment steps SB3 collects per rollout of ``algorithm`` with ``settings`` (its keyword arguments;
    SB3's defaults for those not given) on ``n_envs`` environments: ``n_steps * n_envs`` on-policy,
    ``train_freq * n_envs`` off-policy (``n_envs`` for a ``train_freq`` counted in episodes, the fewest a
    rollout takes), 1 for algorithms without rollouts. A ``learn`` call trains whole rollouts."""
    defaults = inspect.signature(algorithm.__init__).parameters

    def setting(name: str) -> Any:
        if name in settings:
            return settings[name]
        return defaults[name].default if name in defaults else 1

    if issubclass(algorithm, OnPolicyAlgorithm):
        return int(setting("n_steps")) * n_envs
    frequency = setting("train_freq")  # an int, (n, "step" | "episode"), or SB3's TrainFreq
    if isinstance(frequency, tuple | list):
        count, unit = frequency
        return (int(count) if str(getattr(unit, "value", unit)) == "step" else 1) * n_envs
    return int(frequency) * n_envs


def model_rollout_steps(model: BaseAlgorithm) -> int:
    """:func:`rollout_steps` of a built model."""
    settings = {k: getattr(model, k) for k in ("n_steps", "train_freq") if hasattr(model, k)}
    return rollout_steps(type(model), settings, model.n_envs)


def scheduled_operations(stream: Any, every: int, rollout: int) -> int:
    """How many times a :class:`ScheduledSurgery` with ``every`` operates on ``stream`` when each task trains
    whole rollouts of ``rollout`` steps (:func:`rollout_steps`): once per multiple of ``every`` that a
    rollout starts at or after (several multiples within one rollout: once)."""
    total = sum(-(-task.budget(stream.steps_per_task) // rollout) * rollout for task in stream.tasks)
    return len({start // every for start in range(0, total, rollout)} - {0})


class ScheduledSurgery(ContinualModule):
    """A module that changes the network at the start of every task after the first, or, with ``every``,
    at the start of the first rollout after each multiple of ``every`` environment steps (after an update,
    before states are collected, so an on-policy rollout is collected and learned by one policy). The
    schedule runs over every ``learn`` call of a run: a multiple that falls in a call's last rollout is due
    at the next call's first rollout, and a resumed run keeps it (:meth:`state_dict`).

    Subclasses implement :meth:`operate`.

    Args:
        every: Environment steps between changes (``None``: at each task start after the first).
        verbose: SB3 callback verbosity.
    """

    task_free_with = "every=K"

    def __init__(self, every: int | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.every = None if every is None else check_positive_int(every, f"{type(self).__name__} every")
        self._due = Periodic(self.every)
        self._seen = 0

    def operate(self) -> object:
        """Change the network now."""
        raise NotImplementedError

    def needs_boundaries(self) -> bool:
        """Only without ``every`` (which changes the network at task starts)."""
        return self.every is None

    def on_task_start(self, task: TaskInfo) -> None:
        """At the start of every task after the first (without ``every``): :meth:`operate`."""
        if self.every is None and self.tasks_seen > 0:
            self.operate()

    def _on_training_start(self) -> None:
        super()._on_training_start()
        step = self.sb3_model.num_timesteps
        if not self._due.started or step < self._seen:  # the first call, or a model counting from 0 again
            self._due.start(step)
        self._seen = step

    def _on_rollout_start(self) -> None:
        self._seen = self.sb3_model.num_timesteps
        if self._due.due(self._seen):
            self.operate()

    def state_dict(self) -> dict[str, Any]:
        """When the scheduled change is next due (``None`` before training or without ``every``)."""
        started = self.every is not None and self._due.started
        return {"next_due": self._due.next_due if started else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a state saved without the schedule starts it afresh)."""
        if state.get("next_due") is not None:
            self._due.restore(state["next_due"])
