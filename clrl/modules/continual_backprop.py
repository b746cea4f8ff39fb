"""Continual backpropagation: keep replacing a small share of the least useful mature units."""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from clrl.algorithms import Networks, check_networks
from clrl.errors import ConfigError
from clrl.modules.base import (
    ContinualModule,
    ParamGroup,
    TaskInfo,
    check_fraction,
    check_non_negative,
    check_positive_int,
)
from clrl.modules.surgery import check_one_feature_per_unit, reinitialise_units, selected_networks
from clrl.plasticity import HiddenLayer, hidden_layers, network_parameters


class ContinualBackprop(ContinualModule):
    """Continual backpropagation: after every optimiser step, each hidden layer replaces a fraction
    ``replacement_rate`` of its mature units, those of lowest utility, by fresh ones.

    Each hidden unit ``i`` of a layer keeps an age (optimiser steps since it was last replaced), a running
    mean of its activation ``f_i`` and its contribution utility ``u_i ← η·u_i + (1 - η)·mean_k |w_ki| ·
    mean_x |h_i(x)|`` (``w_ki``: its outgoing weights; ``h_i``: its activation on the update's batch, read
    from the training forward pass), both bias-corrected by ``1 - η^age``. A unit older than ``maturity``
    is eligible; each step adds ``replacement_rate × eligible`` to a per-layer count and replaces its whole
    part: the eligible units of lowest utility. A replaced unit gets a fresh draw of its incoming weights
    (:func:`clrl.modules.surgery.fresh_linear`) and a zero bias, the next layer's bias absorbs its mean
    contribution (``b_next += w_out[:, i]·f_i``, so the outputs barely move), its outgoing weights become
    zero, the optimiser's moments of every changed entry are zeroed, and its age, mean and utility restart
    at zero. With ``replacement_rate=0`` training equals plain SB3 exactly.

    Paper: Dohare et al. 2024, "Loss of plasticity in deep continual learning" (Nature),
    https://doi.org/10.1038/s41586-024-07711-7

    Deviations: the reference implementation restarts the replaced entries' Adam step counts too (its own
    Adam keeps one per entry); torch's Adam has one per parameter, so the moments restart at zero under the
    parameter's bias correction. Fresh weights follow SB3's initialisation of the layer (orthogonal rows for
    PPO and A2C) rather than a uniform Kaiming draw. Units of layers whose readers clrl cannot tell (a
    features extractor's convolutions, CrossQ's normalised layers) are not replaced. The fractional counts
    accumulate (the reference's ``accumulate`` option), so no random number decides them.

    Measured: with DQN on cartpole-permuted it diverged on 1 of 3 seeds (weight RMS 10,940, returns 9;
    README "Plasticity on cartpole-permuted"); the cause is not found yet.

    Args:
        replacement_rate: Share of the eligible units replaced per optimiser step, in [0, 1] (the paper's
            RL experiments: 1e-4).
        maturity: Optimiser steps before a unit may be replaced (>= 1; the paper's RL experiments: 10,000).
        decay: ``η`` of the utility and activation averages, in [0, 1) (the paper: 0.99).
        networks: ``"all"`` (default) or ``"actor"``.
        verbose: SB3 callback verbosity.
    """

    name = "continual-backprop"

    def __init__(
        self,
        replacement_rate: float = 1e-4,
        maturity: int = 10_000,
        decay: float = 0.99,
        networks: Networks = "all",
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.replacement_rate = check_fraction(replacement_rate, "ContinualBackprop replacement_rate")
        self.maturity = check_positive_int(maturity, "ContinualBackprop maturity")
        self.decay = check_non_negative(decay, "ContinualBackprop decay")
        if self.decay >= 1:
            raise ConfigError(f"ContinualBackprop decay must be in [0, 1), got {decay}")
        self.networks: Networks = check_networks(networks)
        self.replaced = 0
        """Units replaced so far."""
        self.units: dict[str, dict[str, torch.Tensor]] = {}
        """Per layer (``"<network>/<layer>"``): ``age``, ``mean`` (activation) and ``utility`` of each unit,
        and ``pending`` (the count of replacements accumulated, a 0-d tensor)."""
        self._layers: dict[str, HiddenLayer] = {}
        self._features: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    # ---------------------------------------------------------------- layers and hooks
    def _replaceable(self) -> dict[str, HiddenLayer]:
        model = self.sb3_model
        chosen = set(selected_networks(model, self.networks))
        return {
            f"{layer.network}/{layer.name}": layer
            for layer in hidden_layers(model)
            if layer.network in chosen and layer.linear is not None and layer.outgoing
        }

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The chosen networks' parameters: their optimisers' steps drive the replacement."""
        if self.replacement_rate == 0:
            return {}
        model = self.sb3_model
        chosen = selected_networks(model, self.networks)
        return {n: p for net in chosen for n, p in network_parameters(model, net).items()}

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse CReLU layers (:func:`clrl.modules.surgery.check_one_feature_per_unit`)."""
        check_one_feature_per_unit(model, "ContinualBackprop")

    def needs_boundaries(self) -> bool:
        """Task-free: units are replaced after every optimiser step."""
        return False

    def on_task_start(self, task: TaskInfo) -> None:
        """Find the replaceable layers; start their units' statistics (once: they go on across tasks)."""
        self._layers = self._replaceable()
        for key, layer in self._layers.items():
            if key not in self.units:
                assert layer.linear is not None
                zeros = torch.zeros(layer.linear.out_features, device=layer.linear.weight.device)
                self.units[key] = {
                    "age": zeros.clone(),
                    "mean": zeros.clone(),
                    "utility": zeros.clone(),
                    "pending": torch.zeros((), device=zeros.device),
                }

    def attach(self) -> None:
        """Install the optimiser hooks and a forward hook per layer that keeps its training activations."""
        super().attach()
        if self.replacement_rate == 0:
            return
        for key, layer in self._layers.items():

            def keep(module: torch.nn.Module, args: Any, output: torch.Tensor, key: str = key) -> None:
                if module.training:  # SB3's updates run the policy in training mode, its rollouts not
                    self._features[key] = output.detach()

            self._handles.append(layer.activation.register_forward_hook(keep))

    def detach(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._features = {}
        super().detach()

    # ---------------------------------------------------------------- generate and test
    def after_update(self, group: ParamGroup) -> None:
        """Age, rate and replace the units of the layers this optimiser stepped."""
        stepped = {id(p) for p in group.params}
        for key, layer in self._layers.items():
            assert layer.linear is not None
            if id(layer.linear.weight) not in stepped or key not in self._features:
                continue  # another optimiser's layer (SAC's actor and critic), or no training forward yet
            features = self._features.pop(key)
            self._step(key, layer, features.flatten(1) if features.ndim > 2 else features)

    def _step(self, key: str, layer: HiddenLayer, features: torch.Tensor) -> None:
        assert layer.linear is not None
        state, eta = self.units[key], self.decay
        with torch.no_grad():
            state["age"] += 1
            outgoing = torch.stack([r.weight.abs().mean(dim=0) for r in layer.outgoing]).mean(dim=0)
            state["mean"].mul_(eta).add_(features.mean(dim=0), alpha=1 - eta)
            state["utility"].mul_(eta).add_(outgoing * features.abs().mean(dim=0), alpha=1 - eta)
            eligible = state["age"] > self.maturity
            state["pending"] += self.replacement_rate * eligible.sum()
            count = min(int(state["pending"]), int(eligible.sum()))
            if count == 0:
                return
            state["pending"] -= count
            correction = 1 - eta ** state["age"]
            utility = torch.where(eligible, state["utility"] / correction, torch.inf)
            chosen = torch.topk(utility, count, largest=False).indices
            units = torch.zeros_like(eligible)
            units[chosen] = True
            mean = state["mean"] / correction
            for reader in layer.outgoing:
                if reader.bias is not None:
                    reader.bias.add_((reader.weight[:, units] * mean[units]).sum(dim=1))
        reinitialise_units(self.sb3_model, layer.linear, layer.outgoing, units)
        with torch.no_grad():
            if layer.linear.bias is not None:
                layer.linear.bias[units] = 0.0
            for name in ("age", "mean", "utility"):
                state[name][units] = 0.0
        self.replaced += count

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Every unit's age, mean activation and utility, and the count of replacements."""
        units = {k: {n: t.detach().cpu().clone() for n, t in v.items()} for k, v in self.units.items()}
        return {"replaced": self.replaced, "units": units}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (moved to the model's device when a task starts)."""
        self.replaced = int(state["replaced"])
        self.units = {k: dict(v) for k, v in state["units"].items()}

    def _on_training_start(self) -> None:
        device = self.sb3_model.device
        self.units = {k: {n: t.to(device) for n, t in v.items()} for k, v in self.units.items()}
        super()._on_training_start()

    def log_scalars(self) -> dict[str, float]:
        """``replaced`` units so far."""
        return {"replaced": float(self.replaced)}
