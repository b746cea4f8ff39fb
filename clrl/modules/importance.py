"""Per-parameter importance of a trained policy: the diagonal Fisher information and MAS sensitivities.

Both are averages over states of the finished task of *per-sample* quantities, computed with
``torch.func.vmap(jacrev(...))`` on the policy's own modules (no SB3 code is copied): for every state the
Jacobian of the network's outputs with respect to the regularised parameters is taken, then combined with
the output's likelihood in closed form. Squaring the gradient of a batch-mean log-likelihood instead (a
common bug) underestimates the Fisher by orders of magnitude.

What the outputs are, per policy type (``networks="actor"``; ``"all"`` adds the critics' outputs):

* categorical policy (PPO/A2C/TRPO on discrete actions; multi-discrete and binary actions per component):
  logits ``z``, Fisher ``E_{a~π}[(∇ log π(a|s))²] = Σ_a π_a (∇z_a)² - (Σ_a π_a ∇z_a)²`` exactly.
* diagonal Gaussian (PPO/A2C continuous) and squashed Gaussian (SAC, TQC, CrossQ): mean ``μ`` and
  log-standard-deviation ``log σ``, Fisher ``Σ_k (∇μ_k)² / σ_k² + 2 (∇ log σ_k)²``, the exact expectation
  over ``a ~ π`` of the squared score. The tanh squashing is a bijection, so it leaves the Fisher unchanged.
* deterministic actor (TD3, DDPG): output sensitivity ``Σ_k (∇μ_k)²``, the Fisher of a unit-variance
  Gaussian around the deterministic action (the exploration policy up to the noise scale, which the
  strength absorbs).
* Q-network (DQN, QR-DQN on the mean of its quantiles): the Boltzmann policy ``softmax(Q / temperature)``,
  categorical Fisher as above.
* critics (``networks="all"``): value ``V(s)`` and ``Q(s, a)`` at the stored actions (TQC: every
  quantile), each a unit-variance Gaussian regression, Fisher ``Σ_k (∇y_k)²``.
* recurrent policies (RecurrentPPO): one LSTM step from the LSTM state stored with each state; the stored
  state is an input, so the gradient is truncated to that step.

MAS (Aljundi et al. 2018) uses the same outputs: ``Ω = E_s |∇ ||y(s)||²|``, with ``y`` the concatenated raw
outputs (logits, mean and log-std, Q-values, values).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
)
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from torch import nn

from clrl.algorithms import Networks
from clrl.errors import ConfigError

Obs = torch.Tensor | dict[str, torch.Tensor]
Kind = Literal["categorical", "bernoulli", "mean", "log_std", "regression"]


@dataclass
class StateBatch:
    """States of one task with what a policy needs besides the observation.

    Args:
        observations: Observations, first dimension the sample (a dict of tensors for Dict spaces).
        actions: The actions stored with them (as the buffer keeps them: scaled to [-1, 1] for Box spaces),
            used by ``Q(s, a)`` critics.
        lstm_states: RecurrentPPO: hidden and cell states of the actor and critic LSTMs stored with each
            state, each of shape ``(n, n_layers, hidden)``.
        episode_starts: RecurrentPPO: 1.0 where the state starts an episode (the LSTM state is reset).
    """

    observations: Obs
    actions: torch.Tensor
    lstm_states: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    episode_starts: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.actions)

    def as_dict(self, start: int, stop: int) -> dict[str, Any]:
        """Samples ``start:stop`` as a pytree of tensors (what the per-sample functions receive)."""
        obs = self.observations
        part: dict[str, Any] = {
            "obs": {k: v[start:stop] for k, v in obs.items()} if isinstance(obs, dict) else obs[start:stop],
            "actions": self.actions[start:stop],
        }
        if self.lstm_states is not None and self.episode_starts is not None:
            part["lstm"] = tuple(t[start:stop] for t in self.lstm_states)
            part["episode_starts"] = self.episode_starts[start:stop]
        return part


def collect_states(
    model: BaseAlgorithm, n_samples: int, rng: np.random.Generator, steps: int | None = None
) -> StateBatch:
    """Draw up to ``n_samples`` states, without replacement, from the model's buffer.

    On-policy algorithms: the last rollout. Off-policy algorithms: the rows of the replay buffer written
    during the last ``steps`` environment steps (all filled rows when ``None``). The draw uses ``rng``
    only, so it changes neither SB3's random state nor its buffers.

    Raises:
        ConfigError: The model has no buffer with states in it.
    """
    buffer: Any
    if isinstance(model, OnPolicyAlgorithm):
        buffer = model.rollout_buffer
        rows = np.arange(buffer.buffer_size if buffer.full else buffer.pos)
    elif isinstance(model, OffPolicyAlgorithm) and model.replay_buffer is not None:
        buffer = model.replay_buffer
        filled = buffer.buffer_size if buffer.full else buffer.pos
        if steps is not None:
            filled = min(filled, -(-steps // buffer.n_envs))
        rows = (buffer.pos - 1 - np.arange(filled)) % buffer.buffer_size
    else:
        raise ConfigError(f"{type(model).__name__} has no rollout or replay buffer to draw states from")
    n_envs = buffer.n_envs
    total = len(rows) * n_envs
    if total == 0:
        raise ConfigError("the model's buffer holds no states of this task; train it first")
    flat = rng.choice(total, size=min(n_samples, total), replace=False)
    row, env = rows[flat // n_envs], flat % n_envs
    # After training, SB3's rollout buffers hold (n_envs * n_steps, ...) arrays, env-major.
    flattened = getattr(buffer, "generator_ready", False)

    def take(array: np.ndarray) -> torch.Tensor:
        picked = array[env * buffer.buffer_size + row] if flattened else array[row, env]
        return torch.as_tensor(picked, device=model.device)

    observations: Obs
    if isinstance(buffer.observations, dict):
        observations = {k: take(v) for k, v in buffer.observations.items()}
    else:
        observations = take(buffer.observations)
    actions = take(buffer.actions).float()
    if hasattr(buffer, "hidden_states_pi"):  # sb3-contrib's RecurrentRolloutBuffer

        def state(array: np.ndarray) -> torch.Tensor:  # -> (n, layers, hidden)
            if flattened:  # (n_envs * n_steps, layers, hidden)
                return torch.as_tensor(array[env * buffer.buffer_size + row], device=model.device)
            return torch.as_tensor(array[row, :, env], device=model.device)  # from (steps, layers, envs, h)

        lstm = (
            state(buffer.hidden_states_pi),
            state(buffer.cell_states_pi),
            state(buffer.hidden_states_vf),
            state(buffer.cell_states_vf),
        )
        starts = take(buffer.episode_starts).float().reshape(-1)
        return StateBatch(observations, actions, lstm, starts)
    return StateBatch(observations, actions)


# ------------------------------------------------------------------------------------------ outputs
OutputFn = Callable[[BasePolicy, dict[str, Any]], dict[str, torch.Tensor]]


def _lstm_step(lstm: nn.LSTM, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """One step of ``lstm`` (batch of one, states ``(layers, hidden)``), written out so that vmap can batch
    it; returns the last layer's output."""
    for layer in range(lstm.num_layers):
        gates = (
            x @ getattr(lstm, f"weight_ih_l{layer}").T
            + h[layer] @ getattr(lstm, f"weight_hh_l{layer}").T
            + getattr(lstm, f"bias_ih_l{layer}")
            + getattr(lstm, f"bias_hh_l{layer}")
        )
        i, f, g, o = gates.chunk(4, dim=-1)
        cell = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
        x = torch.sigmoid(o) * torch.tanh(cell)
    return x


_ACTION_DISTRIBUTIONS = (
    CategoricalDistribution,
    MultiCategoricalDistribution,
    BernoulliDistribution,
    DiagGaussianDistribution,
)


def _check_action_dist(policy: ActorCriticPolicy) -> None:
    dist = policy.action_dist
    if not isinstance(dist, _ACTION_DISTRIBUTIONS):
        raise ConfigError(
            f"importance is not defined for {type(dist).__name__} (gSDE); use a Gaussian or discrete policy"
            " (use_sde=False)"
        )


def _action_outputs(policy: ActorCriticPolicy, latent_pi: torch.Tensor) -> dict[str, torch.Tensor]:
    dist = policy.action_dist
    out = policy.action_net(latent_pi)[0]
    if isinstance(dist, CategoricalDistribution | MultiCategoricalDistribution):
        return {"categorical": out}
    if isinstance(dist, BernoulliDistribution):
        return {"bernoulli": out}
    _check_action_dist(policy)
    return {"mean": out, "log_std": policy.log_std}


def _actor_critic_outputs(networks: Networks) -> OutputFn:
    def outputs(policy: BasePolicy, s: dict[str, Any]) -> dict[str, torch.Tensor]:
        assert isinstance(policy, ActorCriticPolicy)
        obs = s["obs"]
        features = BasePolicy.extract_features(policy, obs, policy.pi_features_extractor)
        out = _action_outputs(policy, policy.mlp_extractor.forward_actor(features))
        if networks == "all":
            vf = BasePolicy.extract_features(policy, obs, policy.vf_features_extractor)
            out["value"] = policy.value_net(policy.mlp_extractor.forward_critic(vf))[0]
        return out

    return outputs


def _recurrent_outputs(networks: Networks) -> OutputFn:
    def outputs(policy: Any, s: dict[str, Any]) -> dict[str, torch.Tensor]:
        h_pi, c_pi, h_vf, c_vf = (t.transpose(0, 1) for t in s["lstm"])  # (1, layers, h) -> (layers, 1, h)
        keep = 1.0 - s["episode_starts"]
        obs = s["obs"]
        features = BasePolicy.extract_features(policy, obs, policy.pi_features_extractor)
        latent_pi = _lstm_step(policy.lstm_actor, features, keep * h_pi, keep * c_pi)
        out = _action_outputs(policy, policy.mlp_extractor.forward_actor(latent_pi))
        if networks == "all":
            vf = BasePolicy.extract_features(policy, obs, policy.vf_features_extractor)
            if policy.lstm_critic is not None:
                latent_vf = _lstm_step(policy.lstm_critic, vf, keep * h_vf, keep * c_vf)
            elif policy.shared_lstm:
                latent_vf = latent_pi.detach()
            else:
                latent_vf = policy.critic(vf)
            out["value"] = policy.value_net(policy.mlp_extractor.forward_critic(latent_vf))[0]
        return out

    return outputs


def _critic_outputs(policy: Any, s: dict[str, Any]) -> torch.Tensor:
    q = policy.critic(s["obs"], s["actions"])
    return torch.cat([t.reshape(-1) for t in q]) if isinstance(q, tuple) else q.reshape(-1)


def _off_policy_outputs(policy: BasePolicy, networks: Networks, temperature: float) -> OutputFn:
    actor = getattr(policy, "actor", None)
    if actor is not None and hasattr(actor, "get_action_dist_params"):  # SAC, TQC, CrossQ
        if getattr(actor, "use_sde", False):
            raise ConfigError("importance is not defined for a gSDE actor; use use_sde=False")

        def outputs(policy: Any, s: dict[str, Any]) -> dict[str, torch.Tensor]:
            mean, log_std, _ = policy.actor.get_action_dist_params(s["obs"])
            out = {"mean": mean[0], "log_std": log_std[0]}
            if networks == "all":
                out["critic"] = _critic_outputs(policy, s)
            return out

        return outputs
    if actor is not None:  # TD3, DDPG: deterministic actor

        def deterministic(policy: Any, s: dict[str, Any]) -> dict[str, torch.Tensor]:
            out = {"action": policy.actor(s["obs"])[0]}
            if networks == "all":
                out["critic"] = _critic_outputs(policy, s)
            return out

        return deterministic
    if hasattr(policy, "q_net") or hasattr(policy, "quantile_net"):  # DQN, QR-DQN

        def boltzmann(policy: Any, s: dict[str, Any]) -> dict[str, torch.Tensor]:
            if hasattr(policy, "quantile_net"):
                q = policy.quantile_net(s["obs"]).mean(dim=1)
            else:
                q = policy.q_net(s["obs"])
            return {"categorical": q[0] / temperature}

        return boltzmann
    raise ConfigError(f"importance is not defined for {type(policy).__name__}")


def policy_outputs(model: BaseAlgorithm, networks: Networks = "actor", temperature: float = 1.0) -> OutputFn:
    """The per-sample function giving the outputs whose likelihood defines the importance (module doc).

    Raises:
        ConfigError: A policy type without a defined importance (gSDE, ARS, custom policies).
    """
    policy = model.policy
    try:
        from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
    except ImportError:  # the "contrib" extra is not installed
        RecurrentActorCriticPolicy = ()  # type: ignore[assignment,misc]
    if isinstance(policy, ActorCriticPolicy):
        _check_action_dist(policy)  # fail before a task trains, not when its importance is estimated
    if isinstance(policy, RecurrentActorCriticPolicy):
        return _recurrent_outputs(networks)
    if isinstance(policy, ActorCriticPolicy):
        return _actor_critic_outputs(networks)
    return _off_policy_outputs(policy, networks, temperature)


# ------------------------------------------------------------------------------------------ per sample
class _Call(nn.Module):
    """Makes ``fn(policy, sample)`` the forward of a module, so ``functional_call`` can swap parameters."""

    def __init__(self, policy: BasePolicy, fn: OutputFn) -> None:
        super().__init__()
        self.policy = policy
        self.fn = fn

    def forward(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.fn(self.policy, sample)


def _unsqueeze(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _unsqueeze(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(_unsqueeze(v) for v in tree)
    return tree.unsqueeze(0)


def _jacobians(
    model: BaseAlgorithm,
    params: dict[str, torch.nn.Parameter],
    states: StateBatch,
    fn: OutputFn,
    chunk_size: int | None,
) -> Iterator[tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]]:
    """Yield ``(jacobians, outputs)`` per chunk of samples: ``jacobians[key][name]`` of shape
    ``(chunk, n_outputs, *param.shape)`` and ``outputs[key]`` of shape ``(chunk, n_outputs)``."""
    call = _Call(model.policy, fn)
    detached = {"policy." + n: p.detach() for n, p in params.items()}

    def single(p: dict[str, torch.Tensor], sample: dict[str, Any]) -> tuple[Any, Any]:
        out = torch.func.functional_call(call, p, (_unsqueeze(sample),), strict=False)
        return out, {k: v.detach() for k, v in out.items()}

    per_sample = torch.func.vmap(torch.func.jacrev(single, has_aux=True), in_dims=(None, 0))
    if chunk_size is None:
        n_params = sum(p.numel() for p in params.values())
        chunk_size = max(1, 2**24 // max(1, 8 * n_params))  # ~64 MB of Jacobians for <= 8 outputs
    originals = _parameter_slots(model.policy)
    try:
        for start in range(0, len(states), chunk_size):
            jac, out = per_sample(detached, states.as_dict(start, start + chunk_size))
            yield {k: {n[len("policy.") :]: j for n, j in v.items()} for k, v in jac.items()}, out
    finally:
        _restore_parameter_slots(originals)


def _parameter_slots(policy: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
    """Every ``(module, name, parameter)`` of ``policy``, shared modules under each of their names."""
    return [
        (module, name, param)
        for _, module in policy.named_modules(remove_duplicate=False)
        for name, param in module.named_parameters(recurse=False)
    ]


def _restore_parameter_slots(slots: list[tuple[nn.Module, str, nn.Parameter]]) -> None:
    """Put back any parameter object that ``functional_call`` left swapped: with a module shared under
    several names (SB3's ``features_extractor``, ``pi_features_extractor`` and ``vf_features_extractor``),
    torch's restore can leave new parameter objects in place, which the optimisers do not hold."""
    for module, name, param in slots:
        if module._parameters.get(name) is not param:
            module._parameters[name] = param


def _kind_of(kind_key: str) -> Kind:
    if kind_key in ("categorical", "bernoulli", "mean", "log_std"):
        return kind_key  # type: ignore[return-value]
    return "regression"


def _split_categorical(model: BaseAlgorithm) -> list[int] | None:
    dist = getattr(model.policy, "action_dist", None)
    if isinstance(dist, MultiCategoricalDistribution):
        return list(dist.action_dims)
    return None


class _EvalMode:
    """Policy in evaluation mode (no dropout, batch-norm statistics unchanged) for the duration."""

    def __init__(self, policy: BasePolicy) -> None:
        self.policy = policy

    def __enter__(self) -> None:
        self.training = self.policy.training
        self.policy.set_training_mode(False)

    def __exit__(self, *exc: object) -> None:
        self.policy.set_training_mode(self.training)


def fisher_diagonal(
    model: BaseAlgorithm,
    params: dict[str, torch.nn.Parameter],
    states: StateBatch,
    networks: Networks = "actor",
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher information of the policy over ``states``, for each parameter in ``params``.

    ``F_i = 1/N Σ_s E_{a~π(.|s)} [(∂ log π(a|s) / ∂θ_i)²]`` with the expectation over actions in closed
    form (module doc for each policy type); critic outputs are added when ``networks="all"``.

    Args:
        model: The SB3 model.
        params: Named parameters of ``model.policy`` to compute the Fisher for.
        states: States of the task (see :func:`collect_states`).
        networks: ``"all"`` adds the critics' regression outputs.
        temperature: Temperature of the Boltzmann policy over Q-values (DQN, QR-DQN).
        chunk_size: Samples per vectorised batch (default: sized to ~64 MB of Jacobians).
    """
    fn = policy_outputs(model, networks, temperature)
    splits = _split_categorical(model)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    with _EvalMode(model.policy):
        for jac, out in _jacobians(model, params, states, fn, chunk_size):
            for key, jacs in jac.items():
                kind = _kind_of(key)
                y = out[key]
                for name, j in jacs.items():
                    j = j.flatten(2)  # (chunk, outputs, n_param)
                    fisher[name] += (
                        _fisher_term(kind, y, j, out.get("log_std"), splits).sum(0).view_as(fisher[name])
                    )
    return {n: f / len(states) for n, f in fisher.items()}


def _fisher_term(
    kind: Kind, y: torch.Tensor, j: torch.Tensor, log_std: torch.Tensor | None, splits: list[int] | None
) -> torch.Tensor:
    """Per-sample Fisher diagonal ``(chunk, n_param)`` of one output group from its Jacobian ``j``."""
    if kind == "categorical":
        total = torch.zeros(j.shape[0], j.shape[2], device=j.device)
        for logits, jac in zip(
            y.split(splits or [y.shape[1]], dim=1), j.split(splits or [y.shape[1]], dim=1), strict=True
        ):
            p = torch.softmax(logits, dim=1).unsqueeze(2)
            total += (p * jac.square()).sum(1) - (p * jac).sum(1).square()
        return total
    if kind == "bernoulli":
        p = torch.sigmoid(y).unsqueeze(2)
        return (p * (1 - p) * j.square()).sum(1)
    if kind == "mean":
        assert log_std is not None
        return (torch.exp(-2 * log_std).unsqueeze(2) * j.square()).sum(1)
    if kind == "log_std":
        return 2 * j.square().sum(1)
    return j.square().sum(1)


def mas_importance(
    model: BaseAlgorithm,
    params: dict[str, torch.nn.Parameter],
    states: StateBatch,
    networks: Networks = "actor",
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """MAS importance ``Ω_i = 1/N Σ_s |∂ ||y(s)||² / ∂θ_i|`` over ``states`` (``y``: the module doc's raw
    outputs, concatenated)."""
    fn = policy_outputs(model, networks)
    omega = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    with _EvalMode(model.policy):
        for jac, out in _jacobians(model, params, states, fn, chunk_size):
            for name in omega:
                grad = sum(
                    2 * (out[key].unsqueeze(2) * jac[key][name].flatten(2)).sum(1) for key in jac
                )  # (chunk, n_param): per-sample gradient of ||y||²
                omega[name] += torch.as_tensor(grad).abs().sum(0).view_as(omega[name])
    return {n: o / len(states) for n, o in omega.items()}


def scp_importance(
    model: BaseAlgorithm,
    params: dict[str, torch.nn.Parameter],
    states: StateBatch,
    slices: torch.Tensor | int,
    networks: Networks = "actor",
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """SCP importance ``Γ_i = 1/L Σ_l (∂ ⟨ξ_l, ȳ⟩ / ∂θ_i)²`` with ``ȳ = 1/N Σ_s y(s)`` the mean of the raw
    outputs (MAS's, concatenated) over ``states`` and ``ξ_l`` the unit rows of ``slices`` (``L × outputs``;
    an ``int`` ``L`` draws them uniformly on the sphere with ``generator``): the sliced Cramér distance's
    second-order term of the mean outputs along each slice."""
    fn = policy_outputs(model, networks)
    mean: dict[str, torch.Tensor] = {}
    keys: list[str] = []
    with _EvalMode(model.policy):
        for jac, _ in _jacobians(model, params, states, fn, chunk_size):
            keys = list(jac)  # the outputs in the order the policy gives them
            for name in params:
                total = torch.cat([jac[key][name].flatten(2) for key in keys], dim=1).sum(0)  # (outputs, n)
                mean[name] = mean[name] + total if name in mean else total
    n_outputs = next(iter(mean.values())).shape[0]
    if isinstance(slices, int):
        drawn = torch.randn(slices, n_outputs, generator=generator, dtype=torch.float64)
        directions = drawn / drawn.norm(dim=1, keepdim=True)
    else:
        directions = slices
    out: dict[str, torch.Tensor] = {}
    for name, p in params.items():
        jbar = mean[name] / len(states)
        if directions.shape[1] != jbar.shape[0]:
            raise ConfigError(f"slices have {directions.shape[1]} entries, the outputs {jbar.shape[0]}")
        out[name] = (directions.to(jbar) @ jbar).square().mean(0).view_as(p).float()
    return out
