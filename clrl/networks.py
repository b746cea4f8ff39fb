"""Activations that keep a network able to learn, for SB3's MLPs (``policy_kwargs.activation_fn``).

**Layer normalisation.** SB3 builds each hidden layer as ``Linear`` followed by an ``activation_fn()``
instance, so a normalisation placed inside the activation normalises every hidden layer without a custom
policy. Layer normalisation keeps pre-activations centred and scaled, which Lyle et al. 2023
("Understanding Plasticity in Neural Networks", ICML, https://arxiv.org/abs/2303.01486) found to preserve
plasticity across task changes. ``activation_fn = "layernorm-relu"`` (or ``"layernorm-tanh"``) in a preset
or ``--hp`` selects them; in Python, ``policy_kwargs={"activation_fn": clrl.networks.LayerNormReLU}``.
Deviation: the normalisation has no learned gain and bias (``elementwise_affine=False``, the variant the
Parseval paper's code calls ``layer_norm_no_params``): SB3 creates the activation without the layer's
width, so it cannot create per-unit parameters before the optimiser is built.

**CReLU.** :class:`CReLU` doubles a layer's features (``[relu(x), relu(-x)]``), which SB3's MLP builder
cannot feed to the next layer, so it comes with a policy per algorithm that widens every ``Linear`` reading
CReLU features (:func:`crelu_policy`: :class:`CReLUActorCriticPolicy`, :class:`CReLUDQNPolicy`,
:class:`CReLUSACPolicy`, :class:`CReLUTD3Policy`). ``activation_fn = "crelu"`` in a preset or ``--hp``
builds the model with it; in Python, ``PPO(clrl.networks.CReLUActorCriticPolicy, env)``. The policies
build their networks in their constructors, so SB3's own ``PPO.load`` rebuilds them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from stable_baselines3.sac.policies import Actor as SACActor
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import Actor as TD3Actor
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from clrl.algorithms import policy_for
from clrl.errors import ConfigError


class _LayerNormActivation(nn.Module):
    """``activation((x - mean(x)) / sqrt(var(x) + eps))`` over the last dimension (the layer's units)."""

    eps = 1e-5

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(F.layer_norm(x, x.shape[-1:], eps=self.eps))


class LayerNormReLU(_LayerNormActivation):
    """Layer normalisation (no learned parameters) followed by ReLU."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class LayerNormTanh(_LayerNormActivation):
    """Layer normalisation (no learned parameters) followed by tanh."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


NORMALISED_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "layernorm-relu": LayerNormReLU,
    "layernorm-tanh": LayerNormTanh,
}
"""The layer-normalised activations by the name a preset or ``--hp`` gives them."""


class CReLU(nn.Module):
    """Concatenated ReLU, ``CReLU(x) = [relu(x), relu(-x)]`` over the last dimension: each unit gives two
    features, one of which is non-zero unless the pre-activation is exactly zero, so no unit is dead and
    gradients keep flowing through every unit.

    The layer after it reads twice the units: build the model with :func:`crelu_policy`'s policy.

    Paper: Abbas, Zhao, Modayil, White & Machado 2023, "Loss of Plasticity in Continual Deep Reinforcement
    Learning" (CoLLAs), https://arxiv.org/abs/2303.07507 (the activation: Shang et al. 2016,
    https://arxiv.org/abs/1603.05201).

    Deviation: ``net_arch`` widths stay the number of units (pre-activations) per layer, so a layer's
    features, and the next layer's inputs, are twice that width: a CReLU network of ``net_arch=[64, 64]``
    has about twice the parameters of SB3's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(x), F.relu(-x)], dim=-1)


def _wider(layer: nn.Linear) -> nn.Linear:
    """A fresh ``Linear`` like ``layer`` (PyTorch's initialisation) reading twice its inputs."""
    weight = layer.weight
    return nn.Linear(
        2 * layer.in_features,
        layer.out_features,
        bias=layer.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )


def widen_after_crelu(net: nn.Sequential) -> bool:
    """Replace, in place, every ``Linear`` of ``net`` that reads a :class:`CReLU`'s features by one reading
    twice the inputs; return whether ``net``'s own output is CReLU features (its readers are elsewhere)."""
    doubled = False
    for index, layer in enumerate(net):
        if isinstance(layer, nn.Linear):
            if doubled:
                net[index] = _wider(layer)
            doubled = False
        elif isinstance(layer, CReLU):
            doubled = True
    return doubled


class _CReLUPolicy:
    """``activation_fn`` defaults to :class:`CReLU`, and every critic's Q-networks are widened (SAC, TD3)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("activation_fn", CReLU)
        super().__init__(*args, **kwargs)

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> Any:
        """SAC's and TD3's critic with every Q-network widened after its CReLUs."""
        critic = super().make_critic(features_extractor)  # type: ignore[misc]
        for q_net in critic.q_networks:
            widen_after_crelu(q_net)
        return critic


class CReLUActorCriticPolicy(_CReLUPolicy, ActorCriticPolicy):
    """SB3's actor-critic policy (PPO, A2C) with :class:`CReLU` activations (the default ``activation_fn``):
    the MLP extractor's layers, and the action and value layers on its features, read twice each layer's
    units. Build it with ``PPO(clrl.networks.CReLUActorCriticPolicy, env)``.

    Args:
        *args: As :class:`~stable_baselines3.common.policies.ActorCriticPolicy`.
        **kwargs: As :class:`~stable_baselines3.common.policies.ActorCriticPolicy`.
    """

    def _build_mlp_extractor(self) -> None:
        super()._build_mlp_extractor()
        extractor: Any = self.mlp_extractor  # SB3's heads are built from these widths after this call
        if widen_after_crelu(extractor.policy_net):
            extractor.latent_dim_pi *= 2
        if widen_after_crelu(extractor.value_net):
            extractor.latent_dim_vf *= 2


class CReLUDQNPolicy(_CReLUPolicy, DQNPolicy):
    """SB3's DQN policy with :class:`CReLU` activations in the Q-network and its target. Build it with
    ``DQN(clrl.networks.CReLUDQNPolicy, env)``.

    Args:
        *args: As :class:`~stable_baselines3.dqn.policies.DQNPolicy`.
        **kwargs: As :class:`~stable_baselines3.dqn.policies.DQNPolicy`.
    """

    def make_q_net(self) -> QNetwork:
        q_net = super().make_q_net()
        widen_after_crelu(q_net.q_net)
        return q_net


class CReLUSACPolicy(_CReLUPolicy, SACPolicy):
    """SB3's SAC policy with :class:`CReLU` activations in the actor (its mean and log-std layers widened)
    and in every Q-network. Not with gSDE. Build it with ``SAC(clrl.networks.CReLUSACPolicy, env)``.

    Args:
        *args: As :class:`~stable_baselines3.sac.policies.SACPolicy`.
        **kwargs: As :class:`~stable_baselines3.sac.policies.SACPolicy`.
    """

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> SACActor:
        actor = super().make_actor(features_extractor)
        if actor.use_sde:
            raise ConfigError("CReLUSACPolicy does not support gSDE; use use_sde=False")
        if widen_after_crelu(actor.latent_pi):
            actor.mu = _wider(actor.mu)  # type: ignore[arg-type]
            actor.log_std = _wider(actor.log_std)  # type: ignore[arg-type, assignment]
        return actor


class CReLUTD3Policy(_CReLUPolicy, TD3Policy):
    """SB3's TD3 (and DDPG) policy with :class:`CReLU` activations in the actor and every Q-network. Build
    it with ``TD3(clrl.networks.CReLUTD3Policy, env)``.

    Args:
        *args: As :class:`~stable_baselines3.td3.policies.TD3Policy`.
        **kwargs: As :class:`~stable_baselines3.td3.policies.TD3Policy`.
    """

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> TD3Actor:
        actor = super().make_actor(features_extractor)
        widen_after_crelu(actor.mu)
        return actor


CRELU_POLICIES: dict[str, type[BaseModel]] = {
    "PPO": CReLUActorCriticPolicy,
    "A2C": CReLUActorCriticPolicy,
    "DQN": CReLUDQNPolicy,
    "SAC": CReLUSACPolicy,
    "TD3": CReLUTD3Policy,
    "DDPG": CReLUTD3Policy,
}
"""The CReLU policy class of each supported algorithm, by class name."""


def crelu_policy(algorithm: type[BaseAlgorithm] | str) -> type[BaseModel]:
    """The CReLU policy class for ``algorithm`` (a class or a name such as ``"ppo"``).

    Raises:
        ConfigError: The algorithm has none (supported: PPO, A2C, DQN, SAC, TD3, DDPG).
    """
    return policy_for(CRELU_POLICIES, algorithm, "CReLU")
