"""Plasticity injection: freeze the network and add a fresh one whose contribution starts at zero."""

from __future__ import annotations

import copy
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

from clrl.algorithms import Networks, check_networks, policy_for
from clrl.errors import ConfigError
from clrl.modules.base import ParamGroup, check_positive_int
from clrl.modules.surgery import (
    ScheduledSurgery,
    fresh_linear,
    model_rollout_steps,
    scheduled_operations,
    selected_networks,
    target_copy,
)
from clrl.plasticity import policy_networks, under


class InjectedMLP(nn.Module):
    """An MLP with ``slots`` places for injected networks: after ``n`` injections its output is
    ``f_θ(x) + Σ_{k<n} (f_{θ'_k}(x) - f_{θ'_k,0}(x))``, where ``f_θ`` is the original network and each
    injection adds a trainable copy ``θ'_k`` and a frozen copy ``θ'_k,0`` of the same fresh draw.

    Only the latest injected copy trains (:meth:`trainable`): the original, every earlier copy and the
    frozen copies run with their parameters detached, so they get no gradient while their inputs still
    do (a features extractor below keeps training). An injection does not change the output: both new
    copies are equal when they are added. Trailing modules after the last ``Linear`` (TD3's ``tanh``) are
    applied to the sum, so the sum is taken where the network is linear in its last layer.

    SB3 applies an actor-critic policy's action and value layers, and SAC's mean and log-std layers,
    after the MLP. Those stay where SB3 put them, inside a :class:`InjectedHead`: before the first
    injection this module is the MLP alone and the head applies itself (so the computation, parameter
    order included, is SB3's); after it, this module computes the whole network, head included, and the
    head passes the sum through.

    Args:
        base: The network it extends (an ``nn.Sequential``; SB3's MLPs).
        slots: How many injections it can take (>= 1). Every slot's two copies exist from the start, so
            the module holds ``1 + 2 * slots`` copies of the network's parameters; a forward pass runs
            ``1 + 2 * n`` of them after ``n`` injections.
        origins: For each ``Linear`` of the network (``base`` and ``head``) in module order, the path in
            the policy whose initialisation a fresh draw follows (:func:`clrl.modules.surgery.fresh_linear`).
        head: The layer SB3 applies after ``base``, registered elsewhere (in its :class:`InjectedHead`).
    """

    def __init__(
        self, base: nn.Sequential, slots: int, origins: list[str], head: nn.Module | None = None
    ) -> None:
        super().__init__()
        chain = [*base, *([head] if head is not None else [])]
        linears = [i for i, m in enumerate(chain) if isinstance(m, nn.Linear) or m is head]
        self.split = linears[-1] + 1 if linears else len(chain)
        self.origins = tuple(origins)
        self.base = base
        object.__setattr__(self, "_head", head)  # not a submodule: its parameters stay where SB3 put them
        # frozen copies before live ones: the plasticity monitor reads a network's last hidden features
        # from the last layer that ran, the newest live copy's
        self.frozen = nn.ModuleList(copy.deepcopy(nn.Sequential(*chain)) for _ in range(slots))
        self.live = nn.ModuleList(copy.deepcopy(nn.Sequential(*chain)) for _ in range(slots))
        self.injected: torch.Tensor
        self.register_buffer("injected", torch.zeros((), dtype=torch.long))

    @property
    def count(self) -> int:
        """Injections so far."""
        return int(self.injected.item())

    @property
    def slots(self) -> int:
        """Injections it can take in all."""
        return len(self.live)

    _head: nn.Module | None

    def network_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the network and its copies, the head's included."""
        head = list(self._head.parameters()) if self._head is not None else []
        return [*self.parameters(), *head]

    def trainable(self) -> list[nn.Module]:
        """The copy that trains: the original (with its head) before any injection, else the latest
        injected one."""
        n = self.count
        if n > 0:
            return [self.live[n - 1]]
        return [self.base, *([self._head] if self._head is not None else [])]

    def _chain(self, net: nn.Module) -> list[nn.Module]:
        if net is self.base:
            return [*self.base, *([self._head] if self._head is not None else [])]
        return list(net.children())

    def _core(self, net: nn.Module, x: torch.Tensor, frozen: bool) -> torch.Tensor:
        """``net`` up to its last ``Linear``; with ``frozen``, on detached parameters."""
        core = nn.Sequential(*self._chain(net)[: self.split])
        if not frozen:
            return core(x)
        params = {name: p.detach() for name, p in core.named_parameters()}
        return torch.func.functional_call(core, params, (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.count
        if n == 0:
            return self.base(x)
        out = self._core(self.base, x, True)
        for k in range(n):
            live = self._core(self.live[k], x, k < n - 1)
            out = out + live - self._core(self.frozen[k], x, True)
        for module in self._chain(self.base)[self.split :]:
            out = module(out)
        return out

    def inject(self, model: BaseAlgorithm, path: str) -> list[nn.Parameter]:
        """Fill the next slot with a fresh draw of the network (in both copies) and make it the one that
        trains; return its parameters.

        Args:
            model: The model whose policy holds this module (for the initialisation of each layer).
            path: This module's path in the policy.

        Raises:
            ConfigError: Every slot is used.
        """
        n = self.count
        if n >= self.slots:
            raise ConfigError(
                f"{path} has taken its {self.slots} injections; build the policy with more "
                "(policy_kwargs={'injections': ...})"
            )
        live, frozen = self.live[n], self.frozen[n]
        with torch.no_grad():
            layers = [m for m in live.modules() if isinstance(m, nn.Linear)]
            for layer, origin in zip(layers, self.origins, strict=True):
                weight, bias = fresh_linear(model, origin, layer)
                layer.weight.copy_(weight)
                if layer.bias is not None and bias is not None:
                    layer.bias.copy_(bias)
            frozen.load_state_dict(live.state_dict())
            self.injected.fill_(n + 1)
        return list(live.parameters())

    def follow(self, online: InjectedMLP) -> None:
        """As a target network's copy: take ``online``'s latest injection (its two new copies and the
        count); the original network keeps its own, lagging weights."""
        n = online.count
        with torch.no_grad():
            self.live[n - 1].load_state_dict(online.live[n - 1].state_dict())
            self.frozen[n - 1].load_state_dict(online.frozen[n - 1].state_dict())
            self.injected.copy_(online.injected)


class InjectedHead(nn.Module):
    """The layer SB3 applies after an :class:`InjectedMLP` (the action or value layer; SAC's mean or
    log-std layer), kept where SB3 registered it: it applies itself until the first injection, after
    which the MLP's output already includes it and this passes its columns ``start:stop`` through.

    Args:
        head: The layer.
        owner: The injected MLP it follows.
        start: First output column it stands for (after an injection).
        stop: End of its columns (``None``: to the last).
    """

    _owner: InjectedMLP

    def __init__(self, head: nn.Module, owner: InjectedMLP, start: int = 0, stop: int | None = None) -> None:
        super().__init__()
        self.head = head
        object.__setattr__(self, "_owner", owner)  # not a submodule: it lives elsewhere in the policy
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._owner.count == 0:
            return self.head(x)
        return x[..., self.start : self.stop]


class _Heads(nn.Module):
    """SAC's mean and log-std heads as one output (their outputs side by side), so that an injected copy
    covers the actor's whole head."""

    def __init__(self, mu: nn.Module, log_std: nn.Module) -> None:
        super().__init__()
        self.mu = mu
        self.log_std = log_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mu(x), self.log_std(x)], dim=-1)


def _injected(
    base: nn.Sequential, slots: int, origin: str | list[str], head: nn.Module | None = None
) -> InjectedMLP:
    n = sum(isinstance(m, nn.Linear) for m in base.modules())
    if head is not None:
        n += sum(isinstance(m, nn.Linear) for m in head.modules())
    origins = [origin] * n if isinstance(origin, str) else origin
    return InjectedMLP(base, slots, origins, head)


class _Injections:
    """The ``injections`` argument shared by the injection policies (SB3 saves it with the policy's
    constructor arguments, so loading rebuilds the slots; the state dict holds how many are used)."""

    def __init__(self, *args: Any, injections: int = 1, **kwargs: Any) -> None:
        self.injections = check_positive_int(injections, "injection policy injections")
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "injections": self.injections}  # type: ignore[misc]

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> Any:
        """SAC's and TD3's critic with every Q-network injectable."""
        critic = super().make_critic(features_extractor)  # type: ignore[misc]
        for idx, q_net in enumerate(critic.q_networks):
            critic.q_networks[idx] = _injected(q_net, self.injections, "critic")
            critic.add_module(f"qf{idx}", critic.q_networks[idx])  # SB3 registers them under these names
        return critic.to(self.device)  # type: ignore[attr-defined]


class InjectionActorCriticPolicy(_Injections, ActorCriticPolicy):
    """SB3's actor-critic policy (PPO, A2C) ready for plasticity injection: the actor (``policy_net``
    followed by the action layer) and the critic (``value_net`` followed by the value layer) each become
    an :class:`InjectedMLP`, so an injection covers the whole MLP up to the output; the features extractor
    and a Gaussian policy's ``log_std`` are shared and keep training. Not with gSDE.

    Build it with ``PPO(clrl.InjectionActorCriticPolicy, env, policy_kwargs={"injections": 3})``.

    Args:
        *args: As :class:`~stable_baselines3.common.policies.ActorCriticPolicy`.
        injections: How many injections the policy can take (>= 1).
        **kwargs: As :class:`~stable_baselines3.common.policies.ActorCriticPolicy`.
    """

    def _build(self, lr_schedule: Schedule) -> None:
        if self.use_sde:
            raise ConfigError("InjectionActorCriticPolicy does not support gSDE; use use_sde=False")
        super()._build(lr_schedule)
        extractor: Any = self.mlp_extractor

        def origins(trunk: nn.Sequential, head: str) -> list[str]:
            hidden = sum(isinstance(m, nn.Linear) for m in trunk)
            return ["mlp_extractor"] * hidden + [head]  # SB3's orthogonal gains: sqrt(2), then the head's

        slots = self.injections
        pi, vf = extractor.policy_net, extractor.value_net
        actor = _injected(pi, slots, origins(pi, "action_net"), self.action_net)
        critic = _injected(vf, slots, origins(vf, "value_net"), self.value_net)
        extractor.policy_net, extractor.value_net = actor, critic
        self.action_net = InjectedHead(self.action_net, actor)
        self.value_net = InjectedHead(self.value_net, critic)  # type: ignore[assignment]
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]


class InjectionDQNPolicy(_Injections, DQNPolicy):
    """SB3's DQN policy ready for plasticity injection (the Q-network and its target).

    Build it with ``DQN(clrl.InjectionDQNPolicy, env, policy_kwargs={"injections": 3})``.

    Args:
        *args: As :class:`~stable_baselines3.dqn.policies.DQNPolicy`.
        injections: How many injections the policy can take (>= 1).
        **kwargs: As :class:`~stable_baselines3.dqn.policies.DQNPolicy`.
    """

    def make_q_net(self) -> QNetwork:
        q_net = super().make_q_net()
        q_net.q_net = _injected(q_net.q_net, self.injections, "q_net")  # type: ignore[assignment]
        return q_net.to(self.device)


class InjectionSACPolicy(_Injections, SACPolicy):
    """SB3's SAC policy ready for plasticity injection: the actor's trunk with its mean and log-std heads
    as one :class:`InjectedMLP`, and every Q-network of the critic. Not with gSDE.

    Build it with ``SAC(clrl.InjectionSACPolicy, env, policy_kwargs={"injections": 3})``.

    Args:
        *args: As :class:`~stable_baselines3.sac.policies.SACPolicy`.
        injections: How many injections the policy can take (>= 1).
        **kwargs: As :class:`~stable_baselines3.sac.policies.SACPolicy`.
    """

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> SACActor:
        actor = super().make_actor(features_extractor)
        if actor.use_sde:
            raise ConfigError("InjectionSACPolicy does not support gSDE; use use_sde=False")
        mu: Any = actor.mu
        log_std: Any = actor.log_std  # a Linear without gSDE
        dim = mu.out_features
        trunk = _injected(actor.latent_pi, self.injections, "actor", _Heads(mu, log_std))
        actor.latent_pi = trunk  # type: ignore[assignment]
        actor.mu = InjectedHead(mu, trunk, 0, dim)
        actor.log_std = InjectedHead(log_std, trunk, dim, 2 * dim)  # type: ignore[assignment]
        return actor.to(self.device)


class InjectionTD3Policy(_Injections, TD3Policy):
    """SB3's TD3 policy ready for plasticity injection: the actor (and its target; the sum is squashed
    by the actor's ``tanh``) and every Q-network of the critic.

    Build it with ``TD3(clrl.InjectionTD3Policy, env, policy_kwargs={"injections": 3})``.

    Args:
        *args: As :class:`~stable_baselines3.td3.policies.TD3Policy`.
        injections: How many injections the policy can take (>= 1).
        **kwargs: As :class:`~stable_baselines3.td3.policies.TD3Policy`.
    """

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> TD3Actor:
        actor = super().make_actor(features_extractor)
        actor.mu = _injected(actor.mu, self.injections, "actor")  # type: ignore[assignment]
        return actor.to(self.device)


INJECTION_POLICIES: dict[str, type[BaseModel]] = {
    "PPO": InjectionActorCriticPolicy,
    "A2C": InjectionActorCriticPolicy,
    "DQN": InjectionDQNPolicy,
    "SAC": InjectionSACPolicy,
    "TD3": InjectionTD3Policy,
}
"""The injection policy class of each supported algorithm, by class name."""


def injection_policy(algorithm: type[BaseAlgorithm] | str) -> type[BaseModel]:
    """The injection policy class for ``algorithm`` (a class or a name such as ``"ppo"``).

    Raises:
        ConfigError: The algorithm has none (supported: PPO, A2C, DQN, SAC, TD3).
    """
    return policy_for(INJECTION_POLICIES, algorithm, "plasticity-injection")


def injections_needed(stream: Any, every: int | None, rollout: int = 1) -> int:
    """How many injections :class:`PlasticityInjection` makes on ``stream`` (at least 1): one per task after
    the first, or, with ``every``, :func:`clrl.modules.surgery.scheduled_operations` for rollouts of
    ``rollout`` steps (:func:`clrl.modules.surgery.rollout_steps`: SB3 trains whole rollouts, so a task
    of 10,000 steps in rollouts of 1,024 trains 10,240)."""
    if every is None:
        return max(len(stream.tasks) - 1, 1)
    return max(scheduled_operations(stream, every, rollout), 1)


class PlasticityInjection(ScheduledSurgery):
    """Plasticity injection: at the start of every task after the first (or every ``every`` environment
    steps), freeze the policy's networks and add a fresh copy of each whose contribution starts at zero.

    After an injection a network computes ``f_θ(x) + f_θ'(x) - f_θ'₀(x)`` (:class:`InjectedMLP`): ``θ`` is
    frozen, ``θ'`` and ``θ'₀`` are one fresh draw of SB3's initialisation, ``θ'₀`` stays frozen and only
    ``θ'`` trains. The outputs are unchanged at the moment of injection, so what was learned is kept and
    nothing is relearned, while the gradients now reach a freshly initialised network. A later injection
    freezes the sum again and adds the next pair. Target networks (DQN's, SAC's and TD3's) get the same
    copies. The networks live in the policy: build the model with the algorithm's injection policy
    (:func:`injection_policy`: ``PPO(clrl.InjectionActorCriticPolicy, env, policy_kwargs={"injections":
    n})``, likewise ``InjectionDQNPolicy``, ``InjectionSACPolicy``, ``InjectionTD3Policy``) with as many
    injections as the schedule makes (``clrl run`` builds it so); a plain ``Algorithm.load`` of a saved
    model rebuilds the injected networks, which act as evaluated.

    Paper: Nikishin et al. 2023, "Deep Reinforcement Learning with Plasticity Injection" (NeurIPS),
    https://arxiv.org/abs/2305.15555

    Deviations: the paper injects once, half-way through a single Atari game, into the head of the
    network (the layers after the convolutional encoder, which keeps training); clrl injects at each task
    boundary (or on a schedule), into every MLP of the policy after the features extractor (SB3's MLP
    policies flatten the observation, so there the whole network), and keeps every slot's parameters from
    the start (``injections`` fixes the count), so the policy holds ``1 + 2 * injections`` copies of its
    MLPs and a forward pass after ``n`` injections runs ``1 + 2n`` of them. With ``networks="actor"``,
    only the networks that choose actions are injected. An actor-critic policy's ``log_std`` is not part of
    an MLP and keeps training. The plasticity metrics of an injection policy cover all copies (their
    weight magnitude and distance include the slots not yet used).

    Args:
        every: Environment steps between injections (``None``: at each task start after the first).
        networks: ``"all"`` (default: actor and critic / value; Q-networks) or ``"actor"``.
        verbose: SB3 callback verbosity.
    """

    name = "plasticity-injection"

    def __init__(
        self,
        every: int | None = None,
        networks: Networks = "all",
        verbose: int = 0,
    ) -> None:
        super().__init__(every, verbose)
        self.networks: Networks = check_networks(networks)
        self.injections = 0
        """Injections made so far."""
        self._stream: Any = None

    def check_stream(self, stream: Any) -> None:
        """Note the stream, whose schedule :meth:`check_model` counts."""
        self._stream = stream

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse a policy without injectable networks, or with fewer slots than the stream needs."""
        slots = [m.slots - m.count for m in self._targets(model).values()]
        if not slots:
            algo = type(model).__name__
            raise ConfigError(
                f"PlasticityInjection needs an injection policy; build the model with "
                f"{algo}(clrl.injection_policy({algo}), env, policy_kwargs={{'injections': n}})"
            )
        if self._stream is None:
            return
        needed = injections_needed(self._stream, self.every, model_rollout_steps(model))
        if min(slots) < needed - self.injections:
            raise ConfigError(
                f"the stream makes {needed} injections but the policy has room for "
                f"{min(slots) + self.injections}; build it with policy_kwargs={{'injections': {needed}}}"
            )

    def _targets(self, model: BaseAlgorithm) -> dict[str, InjectedMLP]:
        """The policy's injectable networks that ``networks`` selects (not the target copies), by path."""
        networks = policy_networks(model)
        prefixes = tuple(p for n in selected_networks(model, self.networks) for p in networks[n])
        return {
            p: m for p, m in model.policy.named_modules() if isinstance(m, InjectedMLP) and under(p, prefixes)
        }

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Every parameter of the policy: :meth:`adjust_gradients` sees each step's gradients."""
        return dict(self.sb3_model.policy.named_parameters())

    def adjust_gradients(self, group: ParamGroup) -> None:
        """Drop the gradients of every copy that does not train (a penalty module may have given them
        one), so that the frozen networks stay as they are whatever else is attached."""
        keep, frozen = set(), set()
        for module in self._targets(self.sb3_model).values():
            if module.count == 0:
                continue
            keep |= {id(p) for net in module.trainable() for p in net.parameters()}
            frozen |= {id(p) for p in module.network_parameters()}
        for param in group.params:
            if id(param) in frozen and id(param) not in keep:
                param.grad = None

    def operate(self) -> list[str]:
        """:meth:`inject` (on the schedule)."""
        return self.inject()

    def inject(self) -> list[str]:
        """Inject into the chosen networks now; return their paths in the policy."""
        model = self.sb3_model
        done = []
        for path, module in self._targets(model).items():
            module.inject(model, path)
            target = target_copy(model, path)
            if isinstance(target, InjectedMLP):
                target.follow(module)
            done.append(path)
        self.injections += 1
        return done

    def state_dict(self) -> dict[str, Any]:
        """The count of injections (the injected networks are in the policy's state)."""
        return {**super().state_dict(), "injections": self.injections}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.injections = int(state["injections"])

    def log_scalars(self) -> dict[str, float]:
        """``injections`` so far."""
        return {"injections": float(self.injections)}
