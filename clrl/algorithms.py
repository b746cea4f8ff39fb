"""Access to SB3 algorithms: lookup by name, their optimisers, which parameters form the policy, and the
episodes their ``Monitor`` reports."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import torch
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel

from clrl.errors import ConfigError

Networks = Literal["actor", "all"]


def _algorithms() -> dict[str, type[BaseAlgorithm]]:
    found: dict[str, type[BaseAlgorithm]] = {
        "a2c": A2C,
        "ddpg": DDPG,
        "dqn": DQN,
        "ppo": PPO,
        "sac": SAC,
        "td3": TD3,
    }
    try:
        import sb3_contrib
    except ImportError:  # the "contrib" extra is not installed
        return found
    for name in ("ARS", "CrossQ", "QRDQN", "RecurrentPPO", "TQC", "TRPO"):
        cls = getattr(sb3_contrib, name, None)
        if cls is not None:
            found[name.lower()] = cls
    return found


ALGORITHMS: dict[str, type[BaseAlgorithm]] = _algorithms()
"""Algorithm classes by lower-case name (sb3-contrib's are included when it is installed)."""


POLICY_WITHOUT_OPTIMIZER_STEP = ("TRPO", "ARS")
"""Algorithms that update their policy outside any optimiser step (TRPO's natural-gradient actor step, ARS's
random search): gradient hooks of continual modules cannot change their policy."""


def get_algorithm(name: str) -> type[BaseAlgorithm]:
    """Return the algorithm class called ``name`` (case-insensitive).

    Raises:
        ConfigError: Unknown name; the message lists the valid ones.
    """
    try:
        return ALGORITHMS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}") from None


def optimizers(model: BaseAlgorithm) -> dict[str, torch.optim.Optimizer]:
    """The model's optimisers by attribute path, as SB3 saves them (``"policy.optimizer"``,
    ``"actor.optimizer"``, ``"critic.optimizer"``, ``"ent_coef_optimizer"``, ...)."""
    names, _ = model._get_torch_save_params()
    found: dict[str, torch.optim.Optimizer] = {}
    for name in names:
        try:
            obj = functools.reduce(getattr, name.split("."), model)
        except AttributeError:
            continue
        if isinstance(obj, torch.optim.Optimizer):
            found[name] = obj
    return found


# Parameters of an actor-critic policy that belong to the critic (value function) only.
_CRITIC_PREFIXES = (
    "value_net.",
    "mlp_extractor.value_net.",
    "vf_features_extractor.",
    "lstm_critic.",
    "critic.",
)


def samples_per_update(model: BaseAlgorithm) -> int:
    """The samples SB3 learns from per optimiser step: ``batch_size`` (PPO, DQN, SAC, ...), or the whole
    rollout (A2C, which has none)."""
    algo: Any = model
    return int(getattr(algo, "batch_size", None) or algo.n_steps * algo.n_envs)


def check_networks(networks: str) -> Networks:
    """Return ``networks`` if it is ``"actor"`` or ``"all"``, else raise :class:`ConfigError`."""
    if networks not in ("actor", "all"):
        raise ConfigError(f"networks must be 'actor' or 'all', got {networks!r}")
    return networks  # type: ignore[return-value]


def policy_parameters(model: BaseAlgorithm, networks: Networks = "actor") -> dict[str, torch.nn.Parameter]:
    """Named parameters of the networks a continual module acts on.

    ``"actor"`` is the part that chooses actions: the actor of SAC/TD3/TQC/CrossQ/DDPG, the Q-network of DQN
    and QR-DQN (its greedy policy), ARS's whole policy, and of an actor-critic policy (PPO, A2C, TRPO)
    everything but the value head. ``"all"`` is every parameter that one of the model's optimisers steps
    (critics included). Names are relative to ``model.policy``.
    """
    check_networks(networks)
    policy = model.policy
    stepped = {
        id(p) for opt in optimizers(model).values() for group in opt.param_groups for p in group["params"]
    }
    named = dict(policy.named_parameters())
    if networks == "all":
        return {n: p for n, p in named.items() if id(p) in stepped}
    if isinstance(policy, ActorCriticPolicy):
        return {n: p for n, p in named.items() if not n.startswith(_CRITIC_PREFIXES)}
    head = _actor_name(policy)
    return {n: p for n, p in named.items() if n.startswith(head + ".")}


def _actor_name(policy: torch.nn.Module) -> str:
    for head in ("actor", "q_net", "quantile_net", "action_net"):
        if isinstance(getattr(policy, head, None), torch.nn.Module):
            return head
    raise ConfigError(f"cannot tell the actor of {type(policy).__name__}; use networks='all'")


def acts(policy: torch.nn.Module, name: str) -> bool:
    """Whether the submodule or parameter ``name`` of ``policy`` is in what chooses actions
    (:func:`policy_parameters`'s ``"actor"``) or in its target network (TD3's ``actor_target``, DQN's
    ``q_net_target``); not the critics, the value function and their targets."""
    if isinstance(policy, ActorCriticPolicy):
        return not (name + ".").startswith(_CRITIC_PREFIXES)
    head = _actor_name(policy)
    return name.split(".")[0] in (head, head + "_target")


def finished_returns(infos: Iterable[Mapping[str, Any]]) -> Iterator[float]:
    """The returns of the episodes that ended in one step of a vectorised env: the ``info["episode"]["r"]``
    SB3's ``Monitor`` adds to its ``infos``."""
    for info in infos:
        episode = info.get("episode")
        if isinstance(episode, dict):
            yield float(episode["r"])


def policy_for(
    table: dict[str, type[BaseModel]], algorithm: type[BaseAlgorithm] | str, what: str
) -> type[BaseModel]:
    """The policy class ``table`` gives ``algorithm`` (a class or a name), or a :class:`ConfigError`."""
    name = algorithm if isinstance(algorithm, str) else algorithm.__name__
    try:
        return table[name.upper()]
    except KeyError:
        raise ConfigError(f"no {what} policy for {name}; supported: {', '.join(table)}") from None


def restart_replay(model: OffPolicyAlgorithm, learning_starts: int) -> None:
    """Empty ``model``'s replay buffer and apply its warm-up of ``learning_starts`` steps (the algorithm's
    own setting) again from the current step: what ``reset_buffer=True`` does at each new task."""
    assert model.replay_buffer is not None
    model.replay_buffer.reset()
    model.learning_starts = model.num_timesteps + learning_starts
