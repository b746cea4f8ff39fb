"""Net2Net growth: widen a policy's hidden layers without changing what it computes (Net2WiderNet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from clrl.algorithms import Networks, check_networks, optimizers
from clrl.errors import ConfigError
from clrl.modules.base import ContinualModule, check_fraction, check_non_negative, check_positive_int
from clrl.modules.surgery import ScheduledSurgery, check_one_feature_per_unit, module_path, target_copy
from clrl.plasticity import HiddenLayer, capture_features, effective_rank, hidden_layers, recent_batch

_MLPS = {
    "mlp_extractor.policy_net": ("pi", False),
    "mlp_extractor.value_net": ("vf", False),
    "actor.latent_pi": ("pi", False),
    "actor.mu": ("pi", True),
    "critic.qf0": ("qf", True),
    "q_net.q_net": ("", True),
    "quantile_net.quantile_net": ("", True),
}
"""The MLPs SB3 builds from ``net_arch``, by path in the policy: their key in a ``net_arch`` dict (DQN's and
QR-DQN's ``net_arch`` is a list: ``""``) and whether their last ``Linear`` is the network's output layer
(TD3's actor, the critics, the Q-networks) rather than a hidden layer under separate heads. Every critic
``critic.qf<i>`` has ``critic.qf0``'s widths."""


def _mlps(policy: nn.Module) -> dict[str, tuple[str, bool]]:
    """The entries of :data:`_MLPS` that ``policy`` has as ``nn.Sequential`` (SAC's ``actor.mu``: a head)."""
    modules = dict(policy.named_modules())
    return {p: found for p, found in _MLPS.items() if isinstance(modules.get(p), nn.Sequential)}


def _in_mlp(path: str) -> bool:
    """Whether module ``path`` lies in a ``net_arch`` MLP (any critic ``critic.qf<i>`` included)."""
    head, _, rest = path.partition(".")
    if head == "critic" and rest.startswith("qf"):
        return True
    return any(path.startswith(prefix + ".") for prefix in _MLPS)


_LINEAR_STATE = ("exp_avg", "momentum_buffer")
"""Optimiser state that scales with the gradient (Adam's first moment, SGD's momentum)."""
_SQUARE_STATE = ("exp_avg_sq", "max_exp_avg_sq", "square_avg")
"""Optimiser state that scales with the gradient's square (Adam's second moment, RMSprop's average)."""
_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.RMSprop)
"""The optimisers whose state a widening can extend."""


def _spread(weight: torch.Tensor) -> float:
    """The standard deviation of ``weight``'s entries (0 for a single entry)."""
    return float(weight.detach().std()) if weight.numel() > 1 else 0.0


def replace_parameter(model: BaseAlgorithm, module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Give ``module`` a new parameter ``name`` holding ``value``, in the old one's place in every optimiser,
    with its optimiser state (a new parameter, not new data in the old one: autograd keeps the old shape of
    a parameter that any live graph still refers to)."""
    old = getattr(module, name)
    new = nn.Parameter(value, requires_grad=old.requires_grad)
    setattr(module, name, new)
    for optimizer in optimizers(model).values():
        for group in optimizer.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        if old in optimizer.state:
            optimizer.state[new] = optimizer.state.pop(old)


def extend_state(
    model: BaseAlgorithm,
    param: torch.Tensor,
    dim: int,
    source: torch.Tensor | int,
    scale: torch.Tensor | None = None,
) -> None:
    """Give ``param``'s optimiser state the entries of its new units along ``dim``: copies of the entries
    of the units they replicate (``source``, their indices), or ``source`` zero entries (new units, which no
    gradient reached yet). With ``scale`` (per unit along ``dim``, after widening), scale the first moments
    by it and the second moments by its square: the state the widened network would have had, whose
    gradients on these entries are those of the narrow one times ``scale``."""
    for optimizer in optimizers(model).values():
        state = optimizer.state.get(param)
        if not state:
            continue
        for key, value in list(state.items()):
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                continue
            if key not in _LINEAR_STATE + _SQUARE_STATE:
                raise ConfigError(
                    f"cannot widen the optimiser state {key!r} of {type(optimizer).__name__}; "
                    "use Adam, AdamW, SGD or RMSprop"
                )
            if isinstance(source, int):
                shape = list(value.shape)
                shape[dim] = source
                grown = torch.cat([value, value.new_zeros(shape)], dim=dim)
            else:
                grown = torch.cat([value, value.index_select(dim, source)], dim=dim)
            if scale is not None:
                factor = scale if key in _LINEAR_STATE else scale.square()
                shape = [1] * grown.dim()
                shape[dim] = -1
                grown = grown * factor.view(shape).to(grown.dtype)
            state[key] = grown


def check_widening_optimizers(model: BaseAlgorithm, who: str, alternative: str = "") -> None:
    """Refuse, for ``who`` that widens the policy's layers, an optimiser whose state it cannot extend
    (``alternative``: another way out, added to the message)."""
    for name, optimizer in optimizers(model).items():
        if type(optimizer) not in _OPTIMIZERS:
            raise ConfigError(
                f"{who} cannot extend the state of {name} ({type(optimizer).__name__}); "
                f"use Adam, AdamW, SGD or RMSprop{alternative}"
            )


def check_widening_companions(module: ContinualModule, others: Sequence[ContinualModule]) -> None:
    """Refuse, beside ``module`` that widens the policy's layers, modules that keep per-parameter state
    (anchors, importances, copies of the policy), whose shapes a widening would break."""
    from clrl.modules.behaviour_cloning import BehaviourCloning
    from clrl.modules.clear import CLEAR
    from clrl.modules.replay import Replay

    for other in others:
        if type(other) not in (Replay, CLEAR, BehaviourCloning):  # not subclasses: ClonEx keeps policies
            raise ConfigError(
                f"{type(module).__name__} changes the shapes of the network's weights, which "
                f"{type(other).__name__} keeps state of; it runs beside Replay, CLEAR and "
                "BehaviourCloning only"
            )


class Net2NetGrowth(ScheduledSurgery):
    """Net2Net growth: widen every hidden layer of the chosen networks by ``units`` new units, each a copy
    of a randomly chosen existing unit, at the start of every task after the first (or every ``every``
    environment steps), so that a policy that runs out of capacity gets more without forgetting.

    Widening layer ``h`` by copying units ``r_1 .. r_k``: the copies' incoming weights and biases are those
    of the units they copy; each outgoing weight column of a unit copied ``c - 1`` times is divided by
    ``c`` and shared by it and its copies. The network computes the same function (up to floating-point
    summation order). To break the copies' symmetry, ``±ε`` is added to the outgoing columns of each pair
    (the original loses what the copy gains), which keeps the function unchanged too; ``ε`` is normal with
    standard deviation ``noise`` times that of the outgoing weights. Target networks (DQN's, SAC's, TD3's)
    are widened with the same copies. Adam's (and SGD's, RMSprop's) state is extended: copied entries of
    the outgoing columns, and the incoming entries of a copied unit and its copies scaled by ``1/c``
    (first moments) and ``1/c²`` (second moments), the state the widened network would have had. The
    model's ``policy_kwargs["net_arch"]`` records the new widths, so checkpoints load with ``clrl.load``
    and SB3's own ``load``.

    With ``min_rank_share``, a layer grows only when its features on the most recent states (up to 256)
    have an effective rank of at least that share of its width: a capacity test (the layer uses most of
    what it has).

    Paper: Chen, Goodfellow & Shlens 2016, "Net2Net: Accelerating Learning via Knowledge Transfer" (ICLR),
    section 2.2 (Net2WiderNet), https://arxiv.org/abs/1511.05641

    Deviations: the paper widens once, from a trained teacher to a wider student; clrl widens at each task
    boundary (or on a schedule), as growth methods of continual learning do. The paper adds noise to the
    copies' weights, which changes the function slightly; clrl adds it to the outgoing columns in opposite
    signs, which does not. The capacity test is clrl's (the paper has none). Only the MLPs SB3 builds from
    ``net_arch`` grow (not a CNN features extractor); CReLU and LayerNorm policies are refused (a copied
    unit would not compute the same), as are policies whose layers clrl cannot trace (multi-head,
    progressive columns, plasticity injection) and optimisers other than Adam, AdamW, SGD and RMSprop.
    Modules that keep per-parameter state (anchors, masks, copies of the policy) cannot run beside it;
    Replay, CLEAR and behaviour cloning, which keep only states and outputs, can.

    Args:
        units: Units added to each hidden layer per widening.
        max_units: No layer grows beyond this width.
        noise: The symmetry-breaking ``ε``'s scale, relative to the outgoing weights' standard deviation
            (0: exact copies, which stay identical under gradient descent).
        min_rank_share: The capacity test's share in ``(0, 1]`` (``None``: grow at every widening).
        every: Environment steps between widenings (``None``: at each task start after the first).
        networks: ``"all"`` (default) or ``"actor"`` (the actor, or DQN's Q-network).
        verbose: SB3 callback verbosity.
    """

    name = "net2net"

    def __init__(
        self,
        units: int = 32,
        max_units: int = 512,
        noise: float = 0.01,
        min_rank_share: float | None = None,
        every: int | None = None,
        networks: Networks = "all",
        verbose: int = 0,
    ) -> None:
        super().__init__(every, verbose)
        self.units = check_positive_int(units, "Net2NetGrowth units")
        self.max_units = check_positive_int(max_units, "Net2NetGrowth max_units")
        self.noise = check_non_negative(noise, "Net2NetGrowth noise")
        share = (
            None if min_rank_share is None else check_fraction(min_rank_share, "Net2NetGrowth min_rank_share")
        )
        if share == 0:
            raise ConfigError("Net2NetGrowth min_rank_share must be in (0, 1] or None, got 0")
        self.min_rank_share = share
        self.networks: Networks = check_networks(networks)
        self.added = 0
        """Units added so far, over every layer."""

    def check_companions(self, others: Sequence[ContinualModule]) -> None:
        """Refuse modules that keep per-parameter state, whose shapes a widening would break."""
        check_widening_companions(self, others)

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse policies and optimisers a widening cannot handle (see the class docstring)."""
        super().check_model(model)
        check_one_feature_per_unit(model, "Net2NetGrowth")
        if any(isinstance(m, nn.LayerNorm) for m in model.policy.modules()):
            raise ConfigError(
                "Net2NetGrowth cannot widen a policy with LayerNorm (a copied unit changes its mean)"
            )
        check_widening_optimizers(model, "Net2NetGrowth")
        if not self._layers(model):
            raise ConfigError(
                f"Net2NetGrowth found no hidden layer it can widen in {type(model.policy).__name__} "
                "(it widens the MLPs SB3 builds from net_arch)"
            )

    def _layers(self, model: BaseAlgorithm) -> list[HiddenLayer]:
        """The hidden layers to widen: in a ``net_arch`` MLP of a chosen network, with their readers known."""
        chosen = {"actor", "q_net", "quantile_net"} if self.networks == "actor" else None
        layers = []
        for layer in hidden_layers(model):
            if layer.linear is None or not layer.outgoing or (chosen and layer.network not in chosen):
                continue
            if _in_mlp(module_path(model, layer.linear)):
                layers.append(layer)
        return layers

    def operate(self) -> None:
        """:meth:`grow` (on the schedule)."""
        self.grow()

    def grow(self) -> int:
        """Widen the chosen layers now (those below ``max_units`` that pass the capacity test).

        Returns:
            The units added.
        """
        model = self.sb3_model
        layers = [layer for layer in self._layers(model) if layer.linear is not None]
        if self.min_rank_share is not None:
            layers = self._needing_capacity(model, layers)
        added = 0
        for layer in layers:
            assert layer.linear is not None
            width = layer.linear.out_features
            count = min(self.units, self.max_units - width)
            if count > 0:
                self._widen(model, layer, count)
                added += count
        if added:
            record_widths(model)
        self.added += added
        return added

    def _needing_capacity(self, model: BaseAlgorithm, layers: list[HiddenLayer]) -> list[HiddenLayer]:
        batch = recent_batch(model, 256)
        if batch is None:
            return []
        features = capture_features(model, *batch)
        return [
            layer
            for layer in layers
            if layer in features
            and effective_rank(features[layer]) >= self.min_rank_share * features[layer].shape[-1]  # type: ignore[operator]
        ]

    def _widen(self, model: BaseAlgorithm, layer: HiddenLayer, count: int) -> None:
        """Widen ``layer`` by ``count`` copies of random units, online and target networks alike."""
        incoming = layer.linear
        assert incoming is not None
        width = incoming.out_features
        device = incoming.weight.device
        source = torch.randint(width, (count,), device=device)  # torch's generator, which SB3 seeds
        copies = torch.bincount(source, minlength=width).to(incoming.weight.dtype) + 1  # c of each old unit
        share = torch.cat([copies, copies[source]]).reciprocal()  # 1/c of each unit after widening
        noises = [
            torch.randn(reader.out_features, count, device=device) * (self.noise * _spread(reader.weight))
            for reader in layer.outgoing
        ]
        networks = [(incoming, layer.outgoing)]
        target_in = target_copy(model, module_path(model, incoming))
        target_out = tuple(target_copy(model, module_path(model, reader)) for reader in layer.outgoing)
        if isinstance(target_in, nn.Linear):
            networks.append((target_in, tuple(t for t in target_out if isinstance(t, nn.Linear))))
        for linear, readers in networks:
            with torch.no_grad():
                replace_parameter(model, linear, "weight", torch.cat([linear.weight, linear.weight[source]]))
                if linear.bias is not None:
                    replace_parameter(model, linear, "bias", torch.cat([linear.bias, linear.bias[source]]))
                linear.out_features = linear.weight.shape[0]
                for reader, noise in zip(readers, noises, strict=True):
                    columns = torch.cat([reader.weight, reader.weight[:, source]], dim=1) * share
                    columns[:, width:] += noise  # each copy gains ε, the unit it copies loses it
                    columns.index_add_(1, source, -noise)
                    replace_parameter(model, reader, "weight", columns)
                    reader.in_features = columns.shape[1]
        extend_state(model, incoming.weight, 0, source, share)
        if incoming.bias is not None:
            extend_state(model, incoming.bias, 0, source, share)
        for reader in layer.outgoing:
            extend_state(model, reader.weight, 1, source, None)

    def state_dict(self) -> dict[str, Any]:
        """The units added so far."""
        return {**super().state_dict(), "added": self.added}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.added = int(state["added"])

    def log_scalars(self) -> dict[str, float]:
        """``added``: units added so far."""
        return {"added": float(self.added)}


def _network_widths(policy: Any) -> dict[str, list[int]]:
    """The hidden widths of each of ``policy``'s MLPs, by ``net_arch`` key (``""``: DQN's one list). A layer
    of an MLP is any child with ``out_features`` (``nn.Linear``, or the per-task and masked layers of
    clrl's policies)."""
    widths: dict[str, list[int]] = {}
    for prefix, (key, ends_with_output) in _mlps(policy).items():
        sizes = [
            m.out_features
            for m in policy.get_submodule(prefix).children()
            if isinstance(getattr(m, "out_features", None), int)
        ]
        widths[key] = sizes[:-1] if ends_with_output else sizes
    return widths


def _as_net_arch(policy: Any, widths: dict[str, list[int]]) -> Any:
    """``widths`` in the ``net_arch`` form of ``policy``'s algorithm family."""
    if isinstance(policy, ActorCriticPolicy):
        return {"pi": widths["pi"], "vf": widths["vf"]}
    if "qf" in widths:  # SAC, TD3 and their kin
        return {"pi": widths["pi"], "qf": widths["qf"]}
    return widths[""]  # DQN, QR-DQN


def mlp_widths(model: BaseAlgorithm) -> Any:
    """The widths ``model``'s MLPs have now, in ``net_arch``'s form (what :func:`record_widths` writes; for
    a model built with SB3's default ``net_arch``, its default widths).

    Raises:
        KeyError: The policy lacks an MLP its family has (a custom policy).
    """
    policy: Any = model.policy
    return _as_net_arch(policy, _network_widths(policy))


def record_widths(model: BaseAlgorithm) -> None:
    """Write the MLPs' widths into ``net_arch`` after a widening (the model's ``policy_kwargs``, from which
    SB3's ``load`` rebuilds the policy, and the policy's own records of it)."""
    policy: Any = model.policy
    widths = _network_widths(policy)
    arch = _as_net_arch(policy, widths)
    if isinstance(policy, ActorCriticPolicy):
        extractor = policy.mlp_extractor
        extractor.latent_dim_pi = widths["pi"][-1] if widths["pi"] else extractor.latent_dim_pi
        extractor.latent_dim_vf = widths["vf"][-1] if widths["vf"] else extractor.latent_dim_vf
    elif "qf" in widths:  # SAC, TD3 and their kin
        for name, key in (
            ("actor", "pi"),
            ("actor_target", "pi"),
            ("critic", "qf"),
            ("critic_target", "qf"),
        ):
            if hasattr(getattr(policy, name, None), "net_arch"):
                getattr(policy, name).net_arch = widths[key]
        for kwargs, key in (("actor_kwargs", "pi"), ("critic_kwargs", "qf")):
            if isinstance(getattr(policy, kwargs, None), dict):
                getattr(policy, kwargs)["net_arch"] = widths[key]
    else:  # DQN, QR-DQN
        for name in ("q_net", "q_net_target", "quantile_net", "quantile_net_target"):
            if hasattr(getattr(policy, name, None), "net_arch"):
                getattr(policy, name).net_arch = arch
        if isinstance(getattr(policy, "net_args", None), dict):
            policy.net_args["net_arch"] = arch
    policy.net_arch = arch
    algorithm: Any = model
    algorithm.policy_kwargs = {**algorithm.policy_kwargs, "net_arch": arch}
