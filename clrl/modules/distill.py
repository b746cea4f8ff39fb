"""States of earlier tasks with what the networks output on them when those tasks ended (behaviour
cloning, ClonEx, A-GEM).

:class:`OutputMemory` keeps a reservoir of states per task (:mod:`clrl.modules.memory`), recorded while the
task trains: on-policy from each completed rollout (observations, actions and, for RecurrentPPO, the LSTM
states the rollout stored), off-policy from each environment step (observation and buffer action). When
the task ends, the networks' outputs on its states are computed once and stored with them:

* ``actor``: the action distribution's parameters (categorical and Bernoulli logits; Gaussian mean and
  log-std, SAC's before the tanh squashing), TD3's deterministic action, DQN's Q-values (QR-DQN: its
  quantiles).
* ``critic``: the value ``V(s)`` of actor-critic policies; ``Q(s, a)`` of every critic of SAC/TD3/TQC at
  the stored action.

:func:`distillation_losses` measures how far the current networks have moved from those outputs:
``KL(old ‖ new)`` for action distributions (the tanh of SAC is a bijection and leaves the KL unchanged),
mean squared error for deterministic actions, Q-values and values.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
)
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from torch.nn import functional as F

from clrl.algorithms import samples_per_update
from clrl.errors import ConfigError
from clrl.modules.base import ContinualModule, TaskInfo, check_positive_int
from clrl.modules.importance import _EvalMode, _split_categorical
from clrl.modules.memory import Budget, MemoryDtype, MemoryModule, Rows, Selection, TaskMemory

Part = Literal["actor", "critic"]
_LSTM = ("lstm.h_pi", "lstm.c_pi", "lstm.h_vf", "lstm.c_vf")


def _is_recurrent(model: BaseAlgorithm) -> bool:
    return hasattr(model.policy, "lstm_actor")


def check_supported(model: BaseAlgorithm, who: str) -> None:
    """Raise :class:`ConfigError` for policies whose outputs are not defined here (gSDE, ARS, custom)."""
    policy = model.policy
    if getattr(policy, "use_sde", False) or getattr(getattr(policy, "actor", None), "use_sde", False):
        raise ConfigError(f"{who} does not support gSDE policies; use use_sde=False")
    if isinstance(policy, ActorCriticPolicy):
        dist = policy.action_dist
        if not isinstance(
            dist,
            CategoricalDistribution
            | MultiCategoricalDistribution
            | BernoulliDistribution
            | DiagGaussianDistribution,
        ):
            raise ConfigError(f"{who} does not support {type(dist).__name__} policies")
        return
    if not any(hasattr(policy, a) for a in ("actor", "q_net", "quantile_net")):
        raise ConfigError(f"{who} does not support {type(model).__name__}'s policy {type(policy).__name__}")


def check_distillable(model: BaseAlgorithm, who: str) -> None:
    """Raise :class:`ConfigError` unless ``model`` is an on- or off-policy algorithm (not ARS) whose
    policy's outputs are defined here (:func:`check_supported`)."""
    if not isinstance(model, OnPolicyAlgorithm | OffPolicyAlgorithm):
        raise ConfigError(f"{who} needs an on- or off-policy SB3 algorithm, got {type(model).__name__}")
    check_supported(model, who)


# ------------------------------------------------------------------------------------------ recording
def _obs_rows(obs: Any, n: int) -> Rows:
    if isinstance(obs, dict):
        return {f"obs.{k}": np.array(v).reshape(n, *np.shape(v)[1:]) for k, v in obs.items()}
    return {"obs": np.array(obs).reshape(n, *np.shape(obs)[1:])}


def rollout_rows(model: OnPolicyAlgorithm) -> Rows:
    """Every state of the rollout just collected (call at rollout end, before SB3 flattens the buffer)."""
    buffer: Any = model.rollout_buffer
    n = buffer.buffer_size * buffer.n_envs
    obs = buffer.observations
    rows = _obs_rows(
        {k: v.reshape(n, *v.shape[2:]) for k, v in obs.items()}
        if isinstance(obs, dict)
        else obs.reshape(n, *obs.shape[2:]),
        n,
    )
    rows["action"] = buffer.actions.reshape(n, -1).astype(np.float32)
    if hasattr(buffer, "hidden_states_pi"):  # RecurrentRolloutBuffer: (steps, layers, envs, hidden)
        for key, name in zip(
            _LSTM, ("hidden_states_pi", "cell_states_pi", "hidden_states_vf", "cell_states_vf"), strict=True
        ):
            states = getattr(buffer, name)
            rows[key] = states.transpose(0, 2, 1, 3).reshape(n, *states.shape[1:2], states.shape[3]).copy()
        rows["episode_starts"] = buffer.episode_starts.reshape(n).astype(np.float32)
    return rows


def step_rows(model: OffPolicyAlgorithm, buffer_actions: np.ndarray) -> Rows:
    """The states of the environment step just taken (off-policy; call from a callback's ``_on_step``)."""
    n = model.n_envs
    rows = _obs_rows(model._last_obs, n)
    rows["action"] = np.asarray(buffer_actions, dtype=np.float32).reshape(n, -1)
    return rows


# ------------------------------------------------------------------------------------------ outputs
def tensor_batch(model: BaseAlgorithm, rows: Rows) -> dict[str, Any]:
    """``rows`` as tensors on the model's device: ``obs`` (a tensor, or a dict for dict observations),
    ``action`` and, for RecurrentPPO, the LSTM states and ``episode_starts``."""
    device = model.device
    if "obs" in rows:
        obs: Any = torch.as_tensor(rows["obs"], device=device)
    else:
        obs = {k[4:]: torch.as_tensor(v, device=device) for k, v in rows.items() if k.startswith("obs.")}
    batch: dict[str, Any] = {"obs": obs, "action": torch.as_tensor(rows["action"], device=device)}
    if "episode_starts" in rows:
        for key in _LSTM:  # (n, layers, hidden) -> (layers, n, hidden)
            batch[key] = torch.as_tensor(rows[key], device=device).transpose(0, 1).contiguous()
        batch["episode_starts"] = torch.as_tensor(rows["episode_starts"], device=device)
    return batch


def _plain_actor_critic(policy: ActorCriticPolicy) -> bool:
    """Whether ``policy`` computes its distribution and value as SB3's ActorCriticPolicy does (subclasses
    may replace networks, as clrl's multi-head and progressive policies do, but not these methods)."""
    return all(
        getattr(type(policy), name) is getattr(ActorCriticPolicy, name)
        for name in ("get_distribution", "predict_values", "_get_action_dist_from_latent", "extract_features")
    )


def _actor_critic_outputs(policy: Any, obs: Any, parts: set[Part]) -> dict[str, torch.Tensor]:
    """:func:`network_outputs` of a plain actor-critic policy from its networks' outputs, without building
    a torch Distribution (logits are not normalised; every consumer takes their log-softmax)."""
    out: dict[str, torch.Tensor] = {}
    features = policy.extract_features(obs)
    pi_features, vf_features = (features, features) if policy.share_features_extractor else features
    if "actor" in parts and "critic" in parts and policy.share_features_extractor:
        latent_pi, latent_vf = policy.mlp_extractor(features)
    else:
        latent_pi = policy.mlp_extractor.forward_actor(pi_features) if "actor" in parts else None
        latent_vf = policy.mlp_extractor.forward_critic(vf_features) if "critic" in parts else None
    if latent_pi is not None:
        action = policy.action_net(latent_pi)
        if isinstance(policy.action_dist, DiagGaussianDistribution):
            out["mean"], out["log_std"] = action, torch.ones_like(action) * policy.log_std
        else:  # categorical, multi-categorical, Bernoulli: the logits
            out["logits"] = action
    if latent_vf is not None:
        out["value"] = policy.value_net(latent_vf)
    return out


def distribution_outputs(dist: Distribution) -> dict[str, torch.Tensor]:
    """The actor outputs (:func:`network_outputs`'s keys ``logits`` or ``mean``/``log_std``) of an SB3
    action distribution, as its last ``proba_distribution`` set it (differentiable)."""
    if isinstance(dist, DiagGaussianDistribution):
        return {"mean": dist.distribution.mean, "log_std": dist.distribution.stddev.log()}
    if isinstance(dist, MultiCategoricalDistribution):
        return {"logits": torch.cat([d.logits for d in dist.distribution], dim=1)}
    return {"logits": dist.distribution.logits}  # type: ignore[union-attr]


def joins_evaluate_actions(model: BaseAlgorithm) -> bool:
    """Whether ``model``'s policy evaluates actions exactly as SB3's feed-forward ``ActorCriticPolicy``
    does, so a module may run replayed states through its ``evaluate_actions`` beside SB3's batch and read
    their distribution from ``policy.action_dist`` (recurrent policies and those that route states, as the
    multi-head and progressive ones, do not)."""
    policy = model.policy
    return (
        isinstance(policy, ActorCriticPolicy)
        and not _is_recurrent(model)
        and _plain_actor_critic(policy)
        and type(policy).evaluate_actions is ActorCriticPolicy.evaluate_actions
    )


def network_outputs(model: BaseAlgorithm, rows: Rows, parts: Iterable[Part]) -> dict[str, torch.Tensor]:
    """The networks' outputs on the states in ``rows`` (differentiable), keyed as the module doc says:
    ``logits`` or ``mean``/``log_std`` or ``action`` or ``q`` for the actor; ``value`` or ``critic_q``."""
    policy: Any = model.policy
    batch = tensor_batch(model, rows)
    obs, parts = batch["obs"], set(parts)
    out: dict[str, torch.Tensor] = {}
    if isinstance(model.policy, ActorCriticPolicy):
        recurrent = "episode_starts" in batch
        if not recurrent and _plain_actor_critic(policy):
            return _actor_critic_outputs(policy, obs, parts)
        if "actor" in parts:
            if recurrent:
                lstm = (batch["lstm.h_pi"], batch["lstm.c_pi"])
                dist = policy.get_distribution(obs, lstm, batch["episode_starts"])[0]
            else:
                dist = policy.get_distribution(obs)
            out.update(distribution_outputs(dist))
        if "critic" in parts:
            if recurrent:
                lstm = (batch["lstm.h_vf"], batch["lstm.c_vf"])
                out["value"] = policy.predict_values(obs, lstm, batch["episode_starts"])
            else:
                out["value"] = policy.predict_values(obs)
        return out
    actor = getattr(policy, "actor", None)
    if "actor" in parts:
        if actor is not None and hasattr(actor, "get_action_dist_params"):  # SAC, TQC, CrossQ
            out["mean"], out["log_std"], _ = actor.get_action_dist_params(obs)
        elif actor is not None:  # TD3, DDPG
            out["action"] = actor(obs)
        elif hasattr(policy, "quantile_net"):  # QR-DQN
            out["q"] = policy.quantile_net(obs).flatten(1)
        else:  # DQN
            out["q"] = policy.q_net(obs)
    if "critic" in parts and actor is not None:
        q = policy.critic(obs, batch["action"])
        out["critic_q"] = (
            torch.cat([t.flatten(1) for t in q], dim=1) if isinstance(q, tuple) else q.flatten(1)
        )
    return out


@dataclass
class Frozen:
    """What :func:`network_outputs` reads of a model (``policy``, ``device``), for a frozen policy copy."""

    policy: Any
    device: torch.device


def forked_rng(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """torch's global random generators forked (the CPU's, and ``device``'s when it is a GPU): what runs
    inside draws from them and leaves them as they were, so it does not shift training's draws."""
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def new_policy(model: BaseAlgorithm, seed: int | None = None) -> torch.nn.Module:
    """A new policy of ``model``'s class and arguments, on its device, built as the algorithm builds its
    policy but without drawing from the training random generators (``seed``: the seed of its own draws;
    ``None``: whatever the global generator holds, which is then restored)."""
    algo: Any = model
    kwargs = dict(algo.policy_kwargs)
    if isinstance(model, OnPolicyAlgorithm):
        kwargs["use_sde"] = False  # check_supported refused gSDE
    with forked_rng(model.device):  # its initialisation must not draw from training's RNG
        if seed is not None:
            torch.manual_seed(seed)
        policy = algo.policy_class(model.observation_space, model.action_space, algo.lr_schedule, **kwargs)
    assert isinstance(policy, torch.nn.Module)
    return policy.to(model.device)


@contextlib.contextmanager
def acting_with(policy: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """``policy`` with ``weights`` loaded for the duration of the context, its own restored on exit (how a
    module that evaluates other weights than the trained ones, CLSER's copy or GDumb's learner, acts)."""
    trained = {k: v.clone() for k, v in policy.state_dict().items()}
    policy.load_state_dict(weights)
    try:
        yield
    finally:
        policy.load_state_dict(trained)


def frozen_copy(model: BaseAlgorithm) -> torch.nn.Module:
    """A copy of ``model.policy`` that receives no gradients, on no optimiser, in evaluation mode.

    It is built as the algorithm builds its policy (a deep copy fails on the distribution tensors of the last
    forward pass), without drawing from the training random generators (:func:`new_policy`), then given the
    policy's state.
    """
    copy = new_policy(model)
    copy.load_state_dict(model.policy.state_dict())
    copy.requires_grad_(False)
    copy.set_training_mode(False)  # type: ignore[operator]
    return copy


def categorical_parts(model: BaseAlgorithm, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The logits of each categorical distribution side by side in ``logits``: a multi-categorical policy's
    ``action_dims`` columns each, else ``logits`` itself (one distribution over every column)."""
    sizes = _split_categorical(model)
    return logits.split(sizes, dim=1) if sizes else (logits,)


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of ``terms`` (one term alone: itself, no extra operation on the hot path)."""
    return functools.reduce(operator.add, terms)


def action_entropy(model: BaseAlgorithm, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Entropy of each action distribution in actor ``outputs`` (of :func:`network_outputs`: logits, or a
    Gaussian's mean and log-std), shape ``(n,)``."""
    if "mean" in outputs:
        return (outputs["log_std"] + 0.5 * (1.0 + math.log(2 * math.pi))).sum(1)
    logits = outputs["logits"]
    if isinstance(getattr(model.policy, "action_dist", None), BernoulliDistribution):
        p = torch.sigmoid(logits)
        return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)).sum(1)
    log_ps = [F.log_softmax(part, dim=1) for part in categorical_parts(model, logits)]
    return -_total((log_p.exp() * log_p).sum(1) for log_p in log_ps)


def action_log_likelihood(
    model: BaseAlgorithm, outputs: dict[str, torch.Tensor], actions: torch.Tensor
) -> torch.Tensor:
    """How likely each stored action is under the actor ``outputs`` (of :func:`network_outputs`), shape
    ``(n,)``, up to a constant shared by every policy of ``model``'s kind.

    Categorical, multi-categorical and Bernoulli policies: the log-probability. Gaussian policies: the
    Gaussian log-density (SAC, TQC: of ``atanh`` of the stored, squashed action; the tanh Jacobian depends
    on the action alone and cancels in comparisons). Deterministic actors (TD3): minus the squared distance
    to the stored action. Q-networks (DQN; QR-DQN's mean over quantiles): the log-probability of the
    Boltzmann policy over Q-values at temperature 1.
    """
    policy: Any = model.policy
    if "logits" in outputs:
        dist = getattr(policy, "action_dist", None)
        logits = outputs["logits"]
        if isinstance(dist, BernoulliDistribution):
            return (actions * F.logsigmoid(logits) + (1 - actions) * F.logsigmoid(-logits)).sum(1)
        return _total(
            F.log_softmax(part, dim=1).gather(1, actions[:, k : k + 1].long()).squeeze(1)
            for k, part in enumerate(categorical_parts(model, logits))
        )
    if "mean" in outputs:
        if not isinstance(policy, ActorCriticPolicy):  # squashed: the buffer holds tanh(u) in [-1, 1]
            actions = torch.atanh(actions.clamp(-1 + 1e-6, 1 - 1e-6))
        z = (actions - outputs["mean"]) / outputs["log_std"].exp()
        return (-0.5 * z.square() - outputs["log_std"]).sum(1)
    if "action" in outputs:
        return -(actions - outputs["action"]).square().sum(1)
    q = outputs["q"]
    if hasattr(policy, "quantile_net"):
        q = q.view(len(q), -1, int(model.action_space.n)).mean(1)  # type: ignore[attr-defined]
    return F.log_softmax(q, dim=1).gather(1, actions[:, :1].long()).squeeze(1)


def group_parts(model: BaseAlgorithm, optimizer_name: str, networks: str) -> tuple[Part, ...]:
    """The parts an optimiser's step trains: SAC/TD3's actor or critic optimiser, or an actor-critic
    policy's single optimiser (the critic too with ``networks="all"``), or DQN's Q-network (the actor)."""
    if optimizer_name.startswith("actor."):
        return ("actor",)
    if optimizer_name.startswith("critic."):
        return ("critic",)
    if isinstance(model, OnPolicyAlgorithm) and networks == "all":
        return ("actor", "critic")
    return ("actor",)


def default_parts(model: BaseAlgorithm) -> tuple[Part, ...]:
    """Every part the model has (DQN has no critic)."""
    has_critic = isinstance(model.policy, ActorCriticPolicy) or hasattr(model.policy, "critic")
    return ("actor", "critic") if has_critic else ("actor",)


def distillation_losses(
    model: BaseAlgorithm, old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], per_row: bool = False
) -> dict[str, torch.Tensor]:
    """Mean divergence of ``new`` outputs from ``old`` ones, per part present in ``new``: ``actor``
    (KL for distributions, squared error otherwise) and ``critic`` (squared error); with ``per_row``, each
    row's divergence (shape ``(n,)``, whose mean is the default's)."""
    rows: dict[str, torch.Tensor] = {}
    if "logits" in new:
        dist = getattr(model.policy, "action_dist", None)
        if isinstance(dist, BernoulliDistribution):
            p_old = torch.sigmoid(old["logits"])
            kl = p_old * (F.logsigmoid(old["logits"]) - F.logsigmoid(new["logits"])) + (1 - p_old) * (
                F.logsigmoid(-old["logits"]) - F.logsigmoid(-new["logits"])
            )
            rows["actor"] = kl.sum(1)
        else:
            terms = []
            for a, b in zip(
                categorical_parts(model, old["logits"]), categorical_parts(model, new["logits"]), strict=True
            ):
                log_p = F.log_softmax(a, dim=1)
                terms.append((log_p.exp() * (log_p - F.log_softmax(b, dim=1))).sum(1))
            rows["actor"] = _total(terms)
    elif "mean" in new:
        var_old, var_new = (2 * old["log_std"]).exp(), (2 * new["log_std"]).exp()
        kl = (
            new["log_std"] - old["log_std"] + (var_old + (old["mean"] - new["mean"]).square()) / (2 * var_new)
        )
        rows["actor"] = (kl - 0.5).sum(1)
    elif "action" in new:
        rows["actor"] = (new["action"] - old["action"]).square().sum(1)
    elif "q" in new:
        rows["actor"] = (new["q"] - old["q"]).square().flatten(1).mean(1)
    for key in ("value", "critic_q"):
        if key in new:
            rows["critic"] = (new[key] - old[key]).square().flatten(1).mean(1)
    return rows if per_row else {part: value.mean() for part, value in rows.items()}


class StateRecorder(ContinualModule):
    """A module that sees every state the agent trains on, with the action taken there: each rollout
    on-policy (:func:`rollout_rows`), each environment step off-policy (:func:`step_rows`). Mix it in before
    the module's base class; by default the rows go to the current task's reservoir of ``self.memory``."""

    memory: TaskMemory
    _rng: np.random.Generator

    def record_states(self, rows: Rows) -> None:
        """Keep ``rows`` (default: offer them to the current task's reservoir)."""
        self.memory.record(rows, self._rng)

    def _on_step(self) -> bool:
        if isinstance(self.model, OffPolicyAlgorithm):
            self.record_states(step_rows(self.model, self.locals["buffer_actions"]))
        return True

    def _on_rollout_end(self) -> None:
        if isinstance(self.model, OnPolicyAlgorithm):
            self.record_states(rollout_rows(self.model))
        super()._on_rollout_end()


class OutputMemory(TaskMemory):
    """Per-task reservoirs of states with the networks' outputs at the end of their task.

    Args:
        budget: States kept over all tasks (``"all"``: unbounded).
    """

    def finish_task(self, model: BaseAlgorithm, chunk: int = 4096) -> None:
        """Store the networks' outputs on the current task's states (``out.<key>`` fields)."""
        reservoir, self.current = self.current, None
        self.invalidate()
        if reservoir is None or len(reservoir) == 0:
            return
        states = {k: v for k, v in reservoir.rows().items() if not k.startswith("out.")}
        outputs: dict[str, list[np.ndarray]] = {}
        with torch.no_grad(), _EvalMode(model.policy):
            for start in range(0, len(reservoir), chunk):
                part = {k: v[start : start + chunk] for k, v in states.items()}
                for key, value in network_outputs(model, part, default_parts(model)).items():
                    outputs.setdefault(key, []).append(value.float().cpu().numpy())
        capacity = len(next(iter(reservoir.data.values())))
        for key, chunks in outputs.items():
            values = np.concatenate(chunks)
            array = np.zeros((capacity, *values.shape[1:]), dtype=np.float32)
            array[: len(values)] = values
            reservoir.set_field(f"out.{key}", array)

    def finished(self) -> list[int]:
        """Positions of the reservoirs whose outputs are stored (earlier tasks)."""
        return [
            i
            for i, r in enumerate(self)
            if r is not self.current and any(k.startswith("out.") for k in r.data)
        ]

    def sample_outputs(
        self,
        model: BaseAlgorithm,
        n: int,
        rng: np.random.Generator,
        tasks: list[int] | None = None,
        each: bool = False,
    ) -> tuple[Rows, dict[str, torch.Tensor]]:
        """``n`` states of earlier tasks (uniform over all held, or over the reservoirs at positions
        ``tasks``; with ``each``, ``n`` of each, task after task: see :meth:`sample`) and their stored
        outputs as tensors."""
        rows = self.sample(n, rng, self.finished() if tasks is None else tasks, each)
        old = {
            k[4:]: torch.as_tensor(v, device=model.device) for k, v in rows.items() if k.startswith("out.")
        }
        return rows, old


class OutputReplay(MemoryModule):
    """Base of behaviour cloning and A-GEM: an :class:`OutputMemory` filled during each task and completed
    at its end.

    Args:
        budget: States kept over all tasks (``"all"``: unbounded).
        batch_size: Memory states per update (default: the algorithm's ``batch_size``, or the rollout size
            for A2C).
        require_task_id: Refuse streams with a hidden task id in ``clrl.train``.
        memory_dtype: How the memory stores floating-point fields: ``"float32"`` (default, as given),
            ``"float16"`` (half the bytes, float16's precision) or ``"uint8"`` (a quarter, per-feature codes
            within 1/255 of each feature's range; see :class:`clrl.modules.memory.Reservoir`).
        verbose: SB3 callback verbosity.
        memory_selection: Which rows of an earlier task the memory keeps as later tasks take their share of
            the budget: ``"uniform"`` (default, a uniform subsample) or ``"herding"`` (iCaRL's herding on the
            observations; :func:`clrl.modules.memory.herding_order`).
    """

    memory_class = OutputMemory
    memory: OutputMemory

    def __init__(
        self,
        budget: Budget,
        batch_size: int | None,
        require_task_id: bool = True,
        verbose: int = 0,
        memory_dtype: MemoryDtype = "float32",
        memory_selection: Selection = "uniform",
    ) -> None:
        super().__init__(budget, require_task_id, verbose, memory_dtype, memory_selection)
        name = f"{type(self).__name__} batch_size"
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, name)

    def on_task_start(self, task: TaskInfo) -> None:
        """Check the policy, open the task's reservoir and seed the generators."""
        check_supported(self.sb3_model, type(self).__name__)
        self.open_task(task)

    def on_task_end(self, task: TaskInfo) -> None:
        """Store the networks' outputs on the task's states."""
        self.memory.finish_task(self.sb3_model)

    def replay_batch_size(self, model: BaseAlgorithm | None = None) -> int:
        """Memory states per update (of ``model``, default: the attached one)."""
        if self.batch_size is not None:
            return self.batch_size
        return samples_per_update(self.sb3_model if model is None else model)

    def log_scalars(self) -> dict[str, float]:
        """``bytes`` and ``states`` held in memory."""
        return {"bytes": float(self.memory.nbytes), "states": float(len(self.memory))}
