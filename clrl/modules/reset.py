"""Reset: reinitialise the last layers (or all) of the policy's networks, at task boundaries or on a
schedule."""

from __future__ import annotations

from typing import Any

import torch

from clrl.algorithms import Networks, check_networks
from clrl.modules.base import check_bool, check_positive_int
from clrl.modules.surgery import (
    ScheduledSurgery,
    fresh_linear,
    linear_depths,
    network_linears,
    reset_optimizer_entries,
    selected_networks,
    target_copy,
)
from clrl.plasticity import network_parameters, policy_networks


class Reset(ScheduledSurgery):
    """Reinitialise the chosen networks' last ``layers`` ``Linear`` layers (every layer with ``None``) at the
    start of every task after the first, or every ``every`` environment steps.

    A layer's depth counts from the output (:func:`clrl.modules.surgery.linear_depths`): depth 1 is the
    heads (the action and value heads, SAC's ``mu`` and ``log_std``, each Q-network's last layer), depth 2
    the layers feeding the last hidden layer, and so on; ``layers=1`` resets the heads. A reset layer gets
    a fresh draw of SB3's initialisation for it (:func:`clrl.modules.surgery.fresh_linear`), its optimiser
    state is zeroed (``reset_optimizer``), and the matching layer of the network's target copy (SAC's and
    TD3's ``critic_target`` and ``actor_target``, DQN's ``q_net_target``) gets the same weights. A full
    reset of an actor-critic policy's ``actor`` also puts ``log_std`` back to ``log_std_init``. With
    ``every``, resets happen at the start of a rollout (after an update, before states are collected).
    Whatever the replay buffer holds is kept, which is what lets a reset agent recover quickly.

    Paper: Nikishin et al. 2022, "The Primacy Bias in Deep Reinforcement Learning" (ICML),
    https://arxiv.org/abs/2205.07802

    Deviations: the paper resets on a schedule of updates within one task (SAC's whole networks, the last
    layers of SPR's); clrl counts environment steps and adds task boundaries as
    the default schedule. The distillation from the pre-reset policy of "reset and distill" is not
    implemented.

    Args:
        layers: How many depths to reset, from the output (>= 1), or ``None`` (default): every layer.
        every: Environment steps between resets (``None``: at each task start after the first).
        networks: ``"all"`` (default: actor and critic / value) or ``"actor"``.
        reset_optimizer: Zero the optimiser state (Adam's moments) of the reset parameters.
        verbose: SB3 callback verbosity.
    """

    name = "reset"

    def __init__(
        self,
        layers: int | None = None,
        every: int | None = None,
        networks: Networks = "all",
        reset_optimizer: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(every, verbose)
        self.layers = None if layers is None else check_positive_int(layers, "Reset layers")
        self.networks: Networks = check_networks(networks)
        self.reset_optimizer = check_bool(reset_optimizer, "Reset reset_optimizer")
        self.resets = 0
        """Resets done so far."""

    def operate(self) -> list[str]:
        """:meth:`reset` (on the schedule)."""
        return self.reset()

    def reset(self) -> list[str]:
        """Reset the chosen layers now; return their paths in the policy."""
        model = self.sb3_model
        policy = model.policy
        done = []
        with torch.no_grad():
            for network in selected_networks(model, self.networks):
                depths = linear_depths(model, network)
                for path, module in network_linears(model, network).items():
                    if self.layers is not None and depths[path] > self.layers:
                        continue
                    weight, bias = fresh_linear(model, path, module)
                    module.weight.copy_(weight)
                    if module.bias is not None and bias is not None:
                        module.bias.copy_(bias)
                    done.append(path)
                    self._copy_to_target(path, module)
                if self.layers is None and "log_std" in policy_networks(model)[network]:
                    log_std = getattr(policy, "log_std", None)
                    if isinstance(log_std, torch.nn.Parameter):
                        log_std.fill_(float(getattr(policy, "log_std_init", 0.0)))
            if self.reset_optimizer:
                params = dict(policy.named_parameters())
                changed = {f"{path}.{kind}" for path in done for kind in ("weight", "bias")}
                if self.layers is None:
                    for network in selected_networks(model, self.networks):
                        changed |= set(network_parameters(model, network))
                for name in changed & set(params):
                    reset_optimizer_entries(model, params[name])
        self.resets += 1
        return done

    def _copy_to_target(self, path: str, module: torch.nn.Linear) -> None:
        """Give the target network's copy of the layer at ``path`` the same weights."""
        target = target_copy(self.sb3_model, path)
        if isinstance(target, torch.nn.Linear) and target.weight.shape == module.weight.shape:
            target.load_state_dict(module.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """The count of resets."""
        return {**super().state_dict(), "resets": self.resets}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.resets = int(state["resets"])

    def log_scalars(self) -> dict[str, float]:
        """``resets`` so far."""
        return {"resets": float(self.resets)}
