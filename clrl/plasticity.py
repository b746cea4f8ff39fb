"""Plasticity: the network statistics that show a network losing its ability to learn, and
:class:`PlasticityMonitor`, which measures them while any SB3 model trains.

A network trained on task after task can lose the ability to learn new ones (Dohare et al. 2024, Nature;
Lyle et al. 2022, 2023; Nikishin et al. 2022). The statistics here are the ones that literature tracks,
each a pure function of a feature matrix ``F`` (a batch of states by the units of one hidden layer) or of
parameters, with its formula and source:

* :func:`dormant_ratio`: the share of τ-dormant units (Sokar et al. 2023);
* :func:`active_share`: the share of units non-zero on at least one state (the complement of the dead
  units of Dohare et al. 2024 and Lyle et al. 2022);
* :func:`effective_rank` (Roy & Vetterli 2007), :func:`stable_rank` (Rudelson & Vershynin 2007) and
  :func:`feature_rank` (Kumar et al. 2021's ``srank``; what Plasticine calls "stable rank") of ``F``;
* :func:`weight_magnitude`, :func:`weight_distance` (from the initial weights) and :func:`gradient_norm`.

The policy's networks are found by :func:`policy_networks`: an actor-critic policy's ``actor`` (the
policy's MLP, action head and ``log_std``; the shared features extractor too) and ``value``; SAC, TD3,
TQC, CrossQ and DDPG's ``actor`` and ``critic``; DQN's ``q_net``; QR-DQN's ``quantile_net``. The target
networks are not measured. A network's hidden layers are the outputs of its activation modules
(:data:`ACTIVATIONS`), named by their module path inside the network (``"latent_pi.1"``, ``"qf0.3"``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import TensorBoardOutputFormat
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from clrl.algorithms import optimizers
from clrl.errors import ConfigError
from clrl.networks import CReLU, LayerNormReLU, LayerNormTanh

__all__ = [
    "ACTIVATIONS",
    "HiddenLayer",
    "PlasticityMonitor",
    "active_share",
    "dormant_ratio",
    "dormant_units",
    "effective_rank",
    "feature_rank",
    "gradient_norm",
    "hidden_layers",
    "policy_networks",
    "stable_rank",
    "weight_distance",
    "weight_magnitude",
]

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Tanh,
    nn.Hardtanh,
    nn.Sigmoid,
    LayerNormReLU,
    LayerNormTanh,
    CReLU,
)
"""Module types whose outputs are a network's hidden features (SB3 builds its MLPs from ``activation_fn``
instances, so every hidden layer ends in one)."""


# ---------------------------------------------------------------------------------------------- metrics
def _features(features: torch.Tensor) -> torch.Tensor:
    if features.ndim < 2:
        raise ValueError(f"features must be (batch, units, ...), got shape {tuple(features.shape)}")
    return features.detach().flatten(1).float() if features.ndim > 2 else features.detach().float()


def dormant_units(features: torch.Tensor, tau: float = 0.025) -> torch.Tensor:
    """Which units of a layer are τ-dormant on a batch of states (Sokar et al. 2023, Definition 3.1).

    Unit ``i``'s score is ``s_i = E_x|h_i(x)| / ((1/H) Σ_k E_x|h_k(x)|)``, its mean absolute activation
    over the batch relative to the layer's mean; the unit is τ-dormant when ``s_i ≤ τ``. A layer whose
    units are all zero on the batch is all dormant.

    Args:
        features: Activations, shape ``(batch, units)`` (more dimensions are flattened into units).
        tau: The threshold ``τ`` (>= 0); 0 marks only units that are zero on every state.

    Returns:
        A boolean tensor of shape ``(units,)``.
    """
    scores = _features(features).abs().mean(dim=0)
    mean = scores.mean()
    if mean == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    return scores / mean <= tau


def dormant_ratio(features: torch.Tensor, tau: float = 0.025) -> float:
    """The share of τ-dormant units of a layer (:func:`dormant_units`), in [0, 1]."""
    return float(dormant_units(features, tau).float().mean())


def active_share(features: torch.Tensor) -> float:
    """The share of a layer's units that are non-zero on at least one state of the batch, in [0, 1].

    A unit zero on every state is dead (Dohare et al. 2024's "dead units", Lyle et al. 2022): with ReLU
    it passes no gradient and never recovers by itself. Saturating activations (tanh) are rarely exactly
    zero; for them :func:`dormant_ratio` is the informative statistic.
    """
    return float((_features(features) != 0).any(dim=0).float().mean())


def _singular_values(features: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(_features(features).double())


def effective_rank(features: torch.Tensor) -> float:
    """The effective rank of a feature matrix (Roy & Vetterli 2007): ``exp(-Σ_k p_k log p_k)`` with
    ``p_k = σ_k / Σ_j σ_j`` over its singular values ``σ``; between 1 and ``min(batch, units)`` (0 for an
    all-zero matrix). Dohare et al. 2024 track it for loss of plasticity."""
    sigma = _singular_values(features)
    total = sigma.sum()
    if total == 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(features: torch.Tensor) -> float:
    """The stable rank of a feature matrix (Rudelson & Vershynin 2007): ``‖F‖_F² / ‖F‖_2² = Σ_k σ_k² /
    σ_1²``; between 1 and the rank (0 for an all-zero matrix), and unlike the rank insensitive to tiny
    singular values."""
    sigma = _singular_values(features)
    if sigma.numel() == 0 or sigma[0] == 0:
        return 0.0
    return float((sigma**2).sum() / sigma[0] ** 2)


def feature_rank(features: torch.Tensor, delta: float = 0.01) -> int:
    """Kumar et al. 2021's feature rank ``srank_δ`` ("Implicit Under-Parameterization"): the least ``k``
    whose ``k`` largest singular values hold ``1 - δ`` of their sum, ``min{k : Σ_{i≤k} σ_i ≥ (1 - δ)
    Σ_i σ_i}`` (0 for an all-zero matrix). Plasticine reports it as "stable rank"."""
    sigma = _singular_values(features)
    total = sigma.sum()
    if total == 0:
        return 0
    reached = torch.cumsum(sigma, 0) >= (1 - delta) * total
    return int(torch.nonzero(reached)[0, 0]) + 1


def weight_magnitude(params: Iterable[torch.Tensor]) -> float:
    """The root mean square of the parameters, ``sqrt(Σ_i θ_i² / N)`` (Lyle et al. 2023 and Plasticine track
    the parameter norm; the mean makes networks of other sizes comparable)."""
    squares, count = 0.0, 0
    for p in params:
        squares += float(p.detach().double().pow(2).sum())
        count += p.numel()
    return math.sqrt(squares / count) if count else 0.0


def weight_distance(params: Mapping[str, torch.Tensor], initial: Mapping[str, torch.Tensor]) -> float:
    """The root mean square distance of the parameters from their initial values,
    ``sqrt(Σ_i (θ_i - θ⁰_i)² / N)``, over the parameters both mappings name (of a parameter that grew since,
    as :class:`clrl.Net2NetGrowth` widens layers, over the entries it had initially: its leading ones)."""
    squares, count = 0.0, 0
    for name, p in params.items():
        if name in initial:
            start = initial[name].to(p.device)
            if start.dim() == p.dim() and start.shape != p.shape:
                p = p[tuple(slice(0, size) for size in start.shape)]
            squares += float((p.detach() - start).double().pow(2).sum())
            count += p.numel()
    return math.sqrt(squares / count) if count else 0.0


def gradient_norm(grads: Iterable[torch.Tensor | None]) -> float:
    """The Euclidean norm of all gradients together, ``sqrt(Σ_i g_i²)`` (``None`` gradients count as 0)."""
    return math.sqrt(sum(float(g.detach().double().pow(2).sum()) for g in grads if g is not None))


# ---------------------------------------------------------------------------------------------- networks
@dataclass(frozen=True)
class HiddenLayer:
    """One hidden layer of a policy network: an activation module and the ``Linear`` that feeds it.

    Attributes:
        network: The network's name (:func:`policy_networks`).
        name: The activation's module path inside the network (``"latent_pi.1"``).
        activation: The activation module; its output is the layer's features.
        linear: The ``nn.Linear`` just before it in the same ``nn.Sequential``, if there is one.
        outgoing: The ``nn.Linear`` layers that read the features (the next one in the ``nn.Sequential``,
            or, after an MLP's last activation, the heads SB3 puts on it: an actor-critic policy's
            ``action_net`` or ``value_net``, SAC's ``mu`` and ``log_std``); empty when unknown. A unit's
            incoming weights are its row of ``linear``, its outgoing ones its column of each of these.
    """

    network: str
    name: str
    activation: nn.Module
    linear: nn.Linear | None
    outgoing: tuple[nn.Linear, ...] = ()


def policy_networks(model: BaseAlgorithm) -> dict[str, tuple[str, ...]]:
    """The measured networks of ``model``'s policy, each as the module paths (relative to
    ``model.policy``) it consists of.

    Raises:
        ConfigError: The policy is recurrent or has none of the known layouts (ARS, RecurrentPPO).
    """
    policy = model.policy
    if hasattr(policy, "lstm_actor"):
        raise ConfigError(
            f"{type(policy).__name__} is recurrent: plasticity metrics need a feed-forward policy"
        )
    if isinstance(policy, ActorCriticPolicy):
        shared = policy.share_features_extractor
        actor = ("features_extractor",) if shared else ("pi_features_extractor",)
        value = () if shared else ("vf_features_extractor",)
        return {
            "actor": (*actor, "mlp_extractor.policy_net", "action_net", "log_std"),
            "value": (*value, "mlp_extractor.value_net", "value_net"),
        }
    if isinstance(getattr(policy, "actor", None), nn.Module) and isinstance(
        getattr(policy, "critic", None), nn.Module
    ):
        return {"actor": ("actor",), "critic": ("critic",)}
    for name in ("q_net", "quantile_net"):
        if isinstance(getattr(policy, name, None), nn.Module):
            return {name: (name,)}
    raise ConfigError(f"{type(policy).__name__}: no known network layout to measure plasticity on")


def under(name: str, prefixes: tuple[str, ...]) -> str | None:
    """The one of ``prefixes`` that module or parameter path ``name`` lies under (``name`` is the prefix or
    begins with ``prefix.``), or ``None``."""
    for prefix in prefixes:
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return None


def network_parameters(model: BaseAlgorithm, network: str) -> dict[str, nn.Parameter]:
    """The parameters of one of :func:`policy_networks`, by name relative to ``model.policy``."""
    prefixes = policy_networks(model)[network]
    return {n: p for n, p in model.policy.named_parameters() if under(n, prefixes)}


def hidden_layers(model: BaseAlgorithm) -> list[HiddenLayer]:
    """Every hidden layer of the policy's measured networks, in module order."""
    networks = policy_networks(model)
    layers = []
    seen: set[int] = set()
    for path, module in model.policy.named_modules():
        if not isinstance(module, ACTIVATIONS) or id(module) in seen:
            continue
        for network, prefixes in networks.items():
            prefix = under(path, prefixes)
            if prefix is None:
                continue
            seen.add(id(module))
            parent_path, _, index = path.rpartition(".")
            parent = model.policy.get_submodule(parent_path) if parent_path else model.policy
            if (
                isinstance(parent, nn.Sequential)
                and (parent_path == "actor.mu" or parent_path.startswith("actor.mu."))  # injected copies
                and index == str(len(parent) - 1)
            ):
                break  # the tanh that squashes TD3's and DDPG's action is the output, not a hidden layer
            linear = None
            if isinstance(parent, nn.Sequential) and index.isdigit() and int(index) > 0:
                before = parent[int(index) - 1]
                linear = before if isinstance(before, nn.Linear) else None
            outgoing = _readers(model, parent_path, parent, index, linear)
            # A layer is named inside its network's module ("latent_pi.1" of SAC's "actor"), an actor-critic
            # policy's inside the MLP extractor ("policy_net.1") or the policy ("features_extractor.cnn.1").
            if prefix.startswith("mlp_extractor."):
                root = "mlp_extractor"
            else:
                root = prefix if networks[network] == (prefix,) else ""
            name = path[len(root) + 1 :] if root else path
            layers.append(HiddenLayer(network, name, module, linear, outgoing))
            break
    return layers


_HEADS = {
    "mlp_extractor.policy_net": ("action_net",),
    "mlp_extractor.value_net": ("value_net",),
    "actor.latent_pi": ("actor.mu", "actor.log_std"),
}
"""The heads SB3 puts on an MLP's last hidden layer, by the MLP's path in the policy."""


def _readers(
    model: BaseAlgorithm, parent_path: str, parent: nn.Module, index: str, linear: nn.Linear | None
) -> tuple[nn.Linear, ...]:
    """The ``Linear`` layers that read the output of activation ``parent[index]`` (see HiddenLayer)."""
    if linear is None or not isinstance(parent, nn.Sequential) or not index.isdigit():
        return ()
    position = int(index)
    if position + 1 < len(parent):
        after = parent[position + 1]
        found: tuple[Any, ...] = (after,)
    else:
        found = tuple(_module(model.policy, path) for path in _HEADS.get(parent_path, ()))
    readers = tuple(m for m in found if isinstance(m, nn.Linear) and m.in_features == linear.out_features)
    return readers if len(readers) == len(found) else ()


def _module(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


# ---------------------------------------------------------------------------------------------- batches
def recent_batch(model: BaseAlgorithm, size: int) -> tuple[Any, np.ndarray | None] | None:
    """Up to ``size`` of the most recent states in the model's rollout or replay buffer (and, from a replay
    buffer, their actions), without drawing random numbers; ``None`` when the buffer holds none."""
    if isinstance(model, OnPolicyAlgorithm):
        buffer = model.rollout_buffer
        if not (buffer.full or buffer.generator_ready):
            return None
        obs = buffer.observations
        return _tail(obs, size, buffer.obs_shape), None
    if isinstance(model, OffPolicyAlgorithm) and isinstance(model.replay_buffer, ReplayBuffer):
        replay = model.replay_buffer
        filled = replay.buffer_size if replay.full else replay.pos
        if filled == 0:
            return None
        rows = min(filled, max(1, -(-size // replay.n_envs)))
        index = (np.arange(replay.pos - rows, replay.pos)) % replay.buffer_size
        actions = replay.actions[index].reshape(-1, *replay.actions.shape[2:])[-size:]
        if isinstance(replay, DictReplayBuffer):
            states = {k: v[index].reshape(-1, *v.shape[2:])[-size:] for k, v in replay.observations.items()}
            return states, actions
        return replay.observations[index].reshape(-1, *replay.observations.shape[2:])[-size:], actions
    return None


def _tail(obs: Any, size: int, shape: Any) -> Any:
    if isinstance(obs, dict):
        return {k: v.reshape(-1, *shape[k])[-size:] for k, v in obs.items()}
    return obs.reshape(-1, *shape)[-size:]


def _forward(model: BaseAlgorithm, obs: Any, actions: np.ndarray | None) -> None:
    """Run every measured network on ``obs`` without sampling (no random numbers are drawn)."""
    policy = model.policy
    device = policy.device
    tensor = (
        {k: torch.as_tensor(v, device=device) for k, v in obs.items()}
        if isinstance(obs, dict)
        else torch.as_tensor(obs, device=device)
    )
    if isinstance(policy, ActorCriticPolicy):
        policy.get_distribution(tensor)
        policy.predict_values(tensor)
        return
    networks = policy_networks(model)
    if "actor" in networks:
        actor: Any = policy.actor
        critic: Any = policy.critic
        if hasattr(actor, "get_action_dist_params"):
            actor.get_action_dist_params(tensor)
        else:
            actor(tensor)
        if actions is not None:
            critic(tensor, torch.as_tensor(actions, device=device, dtype=torch.float32))
        return
    (name,) = networks
    getattr(policy, name)(tensor)


def capture_features(
    model: BaseAlgorithm, obs: Any, actions: np.ndarray | None = None
) -> dict[HiddenLayer, torch.Tensor]:
    """Every hidden layer's features on ``obs`` (with the policy in evaluation mode, under ``no_grad``, and
    without drawing random numbers: the training that follows is unchanged). A critic's layers need the
    ``actions`` too; without them they are left out."""
    layers = hidden_layers(model)
    found: dict[HiddenLayer, torch.Tensor] = {}
    handles = []
    for layer in layers:

        def keep(module: nn.Module, args: Any, output: torch.Tensor, layer: HiddenLayer = layer) -> None:
            found[layer] = output.detach()

        handles.append(layer.activation.register_forward_hook(keep))
    policy = model.policy
    training = policy.training
    try:
        policy.set_training_mode(False)
        with torch.no_grad():
            _forward(model, obs, actions)
    finally:
        policy.set_training_mode(training)
        for handle in handles:
            handle.remove()
    return found


# ---------------------------------------------------------------------------------------------- monitor
def next_multiple(step: int, every: int) -> int:
    """The first multiple of ``every`` after ``step``: when a periodic action is next due."""
    return (step // every + 1) * every


class Periodic:
    """When an action repeated every ``every`` environment steps is due: at the first check at or after
    each multiple of ``every`` (``None``: never). The schedule depends on the global step alone, so a
    resumed run acts at the steps an uninterrupted one does.

    Args:
        every: Environment steps between two actions, or ``None``.
    """

    def __init__(self, every: int | None) -> None:
        self.every = every
        self._next = 0
        self.started = False
        """Whether :meth:`start` or :meth:`restore` set when the action is next due."""

    def start(self, step: int) -> None:
        """Begin counting at ``step`` (a ``learn`` call's first): the action is next due at the next
        multiple of ``every``."""
        if self.every is not None:
            self._next = next_multiple(step, self.every)
        self.started = True

    @property
    def next_due(self) -> int:
        """The step at or after which the action is next due."""
        return self._next

    def restore(self, next_due: int) -> None:
        """Continue a schedule whose action was next due at ``next_due`` (a resumed run)."""
        self._next = int(next_due)
        self.started = True

    def due(self, step: int) -> bool:
        """Whether the action is due at ``step``; if so, the next one is at the following multiple."""
        if self.every is None or step < self._next:
            return False
        self._next = next_multiple(step, self.every)
        return True


class PlasticityMonitor(BaseCallback):
    """Measure the policy's plasticity statistics while it trains: an SB3 callback for any loop.

    Every ``interval`` environment steps (at the end of the rollout that crosses a multiple of it) the
    monitor takes the ``batch_size`` most recent states of the rollout or replay buffer (no random numbers
    are drawn, so training is unchanged), runs the policy's networks on them, and logs per network
    (:func:`policy_networks`) and hidden layer (:func:`hidden_layers`):

    * ``plasticity/<network>/<layer>/dormant``, ``.../active``, ``.../effective_rank``,
      ``.../stable_rank``, ``.../feature_rank``: :func:`dormant_ratio` (with ``tau``),
      :func:`active_share` and the ranks of that layer's features;
    * ``plasticity/<network>/dormant`` and ``/active`` over all the network's hidden units,
      ``/effective_rank``, ``/stable_rank`` and ``/feature_rank`` of its last hidden layer,
      ``/weight_magnitude``, ``/weight_distance`` (from the weights when the monitor first saw the model)
      and ``/grad_norm``: the norm of the training loss's gradient in the first optimiser update after the
      measurement, before SB3's gradient clipping.

    Scalars go to the model's TensorBoard event file at the current step when the model logs to
    TensorBoard, else to its logger. Each measurement is also kept in :attr:`records`.
    :func:`clrl.train` runs one by default and adds a measurement at every task boundary to
    ``results.json`` (``plasticity``); in your own loop, call :meth:`measure` at your boundaries::

        monitor = clrl.PlasticityMonitor(interval=5_000)
        model.learn(50_000, callback=monitor)
        monitor.measure(task=0)

    Args:
        interval: Environment steps between measurements (>= 1).
        batch_size: States per measurement (>= 1; on-policy at most one rollout).
        tau: The dormancy threshold ``τ`` of :func:`dormant_ratio` (>= 0; Sokar et al. 2023 use 0.025 and
            0.1 in their experiments; 0 counts only units zero on every state).
        verbose: SB3 callback verbosity.
    """

    def __init__(
        self, interval: int = 10_000, batch_size: int = 256, tau: float = 0.025, verbose: int = 0
    ) -> None:
        from clrl.modules.base import check_non_negative, check_positive_int

        super().__init__(verbose)
        self.interval = check_positive_int(interval, "PlasticityMonitor interval")
        self.batch_size = check_positive_int(batch_size, "PlasticityMonitor batch_size")
        self.tau = check_non_negative(tau, "PlasticityMonitor tau")
        self.records: list[dict[str, Any]] = []
        """Every measurement: ``{"step", "task", "values": {"<network>/<statistic>": float, ...}}``."""
        self.seconds = 0.0
        """CPU seconds spent measuring (``time.process_time``), for the overhead against training."""
        self._initial: dict[str, dict[str, torch.Tensor]] = {}
        self._for: Any = None  # id of the model the initial weights are of
        self._due = Periodic(self.interval)
        self._gradients: _GradientCapture | None = None

    @staticmethod
    def supports(model: BaseAlgorithm) -> bool:
        """Whether ``model``'s policy has a layout the monitor can measure (not recurrent, not ARS)."""
        try:
            policy_networks(model)
        except ConfigError:
            return False
        return True

    def bind(self, model: BaseAlgorithm) -> None:
        """Measure ``model`` from now on, taking its current weights as the initial ones (``learn`` does
        this on the first call with a model; call it before loading a checkpoint into a model built as the
        original, so that :func:`weight_distance` is from the original initial weights).

        Raises:
            ConfigError: The policy has no layout the monitor can measure.
        """
        networks = policy_networks(model)
        self.model = model
        self._for = id(model)
        self._initial = {
            net: {n: p.detach().clone() for n, p in network_parameters(model, net).items()}
            for net in networks
        }

    def _init_callback(self) -> None:
        if self._for != id(self.model):
            self.bind(self.model)

    def _on_training_start(self) -> None:
        self._due = Periodic(self.interval)
        self._due.start(self.model.num_timesteps)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if not self._due.due(self.model.num_timesteps):
            return
        record = self.measure()
        if record is not None:
            self._capture_gradients(record)

    def _on_training_end(self) -> None:
        self._stop_capture()

    def measure(self, task: int | None = None) -> dict[str, Any] | None:
        """Measure now, log the scalars and keep the measurement in :attr:`records`.

        Args:
            task: The task the measurement belongs to (``clrl.train`` passes the task that just ended).

        Returns:
            The record (``None`` when the model's buffer holds no states yet).
        """
        model = getattr(self, "model", None)
        if model is None:
            raise RuntimeError(
                "PlasticityMonitor has no model: pass it to model.learn or call monitor.bind(model)"
            )
        start = time.process_time()
        batch = recent_batch(model, self.batch_size)
        if batch is None:
            return None
        values = self.statistics(*batch)
        self.seconds += time.process_time() - start
        step = int(model.num_timesteps)
        record = {"step": step, "task": task, "values": values}
        self.records.append(record)
        self._log(values, step)
        return record

    def statistics(self, obs: Any, actions: np.ndarray | None = None) -> dict[str, float]:
        """The statistics of the model on the states ``obs`` (and, for a critic, ``actions``), by
        ``"<network>/<statistic>"`` and ``"<network>/<layer>/<statistic>"``; no gradient norm."""
        model = self.model
        features = capture_features(model, obs, actions)
        values: dict[str, float] = {}
        by_network: dict[str, list[torch.Tensor]] = {}
        for layer, f in features.items():
            flat = _features(f)
            key = f"{layer.network}/{layer.name}"
            values[f"{key}/dormant"] = dormant_ratio(flat, self.tau)
            values[f"{key}/active"] = active_share(flat)
            values[f"{key}/effective_rank"] = effective_rank(flat)
            values[f"{key}/stable_rank"] = stable_rank(flat)
            values[f"{key}/feature_rank"] = float(feature_rank(flat))
            by_network.setdefault(layer.network, []).append(flat)
        for network in policy_networks(model):
            layers = by_network.get(network)
            if layers:
                values[f"{network}/dormant"] = float(
                    torch.cat([dormant_units(f, self.tau) for f in layers]).float().mean()
                )
                values[f"{network}/active"] = float(
                    torch.cat([(f != 0).any(dim=0) for f in layers]).float().mean()
                )
                values[f"{network}/effective_rank"] = effective_rank(layers[-1])
                values[f"{network}/stable_rank"] = stable_rank(layers[-1])
                values[f"{network}/feature_rank"] = float(feature_rank(layers[-1]))
            params = network_parameters(model, network)
            values[f"{network}/weight_magnitude"] = weight_magnitude(params.values())
            values[f"{network}/weight_distance"] = weight_distance(params, self._initial.get(network, {}))
        return values

    def _log(self, values: Mapping[str, float], step: int) -> None:
        logger = self.model.logger
        writer = next(
            (
                f.writer
                for f in getattr(logger, "output_formats", [])
                if isinstance(f, TensorBoardOutputFormat)
            ),
            None,
        )
        for key, value in values.items():
            if writer is not None:
                writer.add_scalar(f"plasticity/{key}", value, step)
            else:
                logger.record(f"plasticity/{key}", value)

    def _capture_gradients(self, record: dict[str, Any]) -> None:
        self._stop_capture()
        self._gradients = _GradientCapture(self, record)

    def _stop_capture(self) -> None:
        if self._gradients is not None:
            self._gradients.remove_step_hooks()
            self._gradients = None


def monitor_for(plasticity: bool | PlasticityMonitor, model: BaseAlgorithm) -> PlasticityMonitor | None:
    """The monitor of a run's ``plasticity`` argument: ``True`` is a default monitor where ``model``'s policy
    can be measured (else none), ``False`` none, a monitor itself (checked against ``model``).

    Raises:
        ConfigError: ``plasticity`` is none of these, or a given monitor cannot measure ``model``.
    """
    if isinstance(plasticity, PlasticityMonitor):
        plasticity.bind(model)  # refuses a policy it cannot measure, before anything trains
        return plasticity
    if not isinstance(plasticity, bool):
        raise ConfigError(f"plasticity must be true, false or a clrl.PlasticityMonitor, got {plasticity!r}")
    return PlasticityMonitor() if plasticity and PlasticityMonitor.supports(model) else None


class _GradientCapture:
    """Each network's gradient norm in the first optimiser update after a measurement, before clipping.

    A post-accumulate-grad hook per parameter keeps the squared norm of its gradient after every backward
    (the last is the total a ``zero_grad`` ... ``step`` cycle accumulated); the step pre-hook of the
    optimiser that steps the network then adds them up and removes the network's hooks (recording nothing
    when the network's parameters were replaced in between, as a :class:`clrl.Net2NetGrowth` widening
    does). Hooks installed by a ``learn`` that raised remove themselves at the first step of any later
    ``learn``.
    """

    def __init__(self, monitor: PlasticityMonitor, record: dict[str, Any]) -> None:
        self.monitor, self.record = monitor, record
        model = monitor.model
        self.stamp = model.start_time
        self.squares: dict[str, dict[str, float]] = {}
        self.hooked: dict[str, dict[str, torch.Tensor]] = {}
        self.handles: dict[str, list[Any]] = {}
        self.step_handles: list[Any] = []
        stepped = {
            id(p): opt for opt in optimizers(model).values() for g in opt.param_groups for p in g["params"]
        }
        for network in policy_networks(model):
            params = {  # a frozen parameter (a mask method's backbone) gets no gradient
                n: p
                for n, p in network_parameters(model, network).items()
                if id(p) in stepped and p.requires_grad
            }
            if not params:
                continue
            squares: dict[str, float] = {}
            self.squares[network] = squares
            self.hooked[network] = dict(params)
            handles = self.handles[network] = []
            for name, param in params.items():

                def keep(p: torch.Tensor, name: str = name, squares: dict[str, float] = squares) -> None:
                    if p.grad is not None:
                        squares[name] = float(p.grad.detach().double().pow(2).sum())

                handles.append(param.register_post_accumulate_grad_hook(keep))
            optimizer = stepped[id(next(iter(params.values())))]

            def done(opt: Any, args: Any, kwargs: Any, network: str = network) -> None:
                self._done(network)

            # Kept until remove(): a step pre-hook cannot remove itself while the optimiser runs its hooks.
            self.step_handles.append(optimizer.register_step_pre_hook(done))

    def _done(self, network: str) -> None:
        monitor = self.monitor
        if monitor.model.start_time != self.stamp:  # left behind by a learn that raised
            self.remove()
            return
        if network not in self.squares:
            return
        squares = self.squares.pop(network)
        for handle in self.handles.pop(network, []):
            handle.remove()
        current = network_parameters(monitor.model, network)
        if any(current.get(name) is not param for name, param in self.hooked.pop(network).items()):
            return  # parameters were replaced since (a layer grew): their gradients were not all seen
        if squares:
            value = math.sqrt(sum(squares.values()))
            self.record["values"][f"{network}/grad_norm"] = value
            monitor._log({f"{network}/grad_norm": value}, monitor.model.num_timesteps)

    def remove(self) -> None:
        for handles in self.handles.values():
            for handle in handles:
                handle.remove()
        self.handles, self.squares = {}, {}

    def remove_step_hooks(self) -> None:
        self.remove()
        for handle in self.step_handles:
            handle.remove()
        self.step_handles = []
