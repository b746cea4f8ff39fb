"""CLEAR: off-policy V-trace learning and behavioural cloning on replayed trajectories, for PPO, A2C and
RecurrentPPO."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from torch.nn import functional as F

from clrl.algorithms import samples_per_update
from clrl.errors import ConfigError
from clrl.modules.base import (
    ParamGroup,
    TaskInfo,
    check_fraction,
    check_non_negative,
    check_positive_int,
    patch_attributes,
)
from clrl.modules.distill import (
    action_entropy,
    action_log_likelihood,
    check_supported,
    distillation_losses,
    distribution_outputs,
    joins_evaluate_actions,
    network_outputs,
    rollout_rows,
    tensor_batch,
)
from clrl.modules.importance import _EvalMode
from clrl.modules.memory import Budget, MemoryDtype, MemoryModule, Rows, TaskMemory, check_budget


def _vtrace_terms(
    log_rhos: torch.Tensor,
    discounts: torch.Tensor,
    rewards: torch.Tensor,
    values: torch.Tensor,
    bootstrap: torch.Tensor,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`vtrace`'s targets ``v_t``, truncated weights ``ρ_t`` and unweighted advantages
    ``r_t + γ_t v_{t+1} - V(x_t)``."""
    with torch.no_grad():
        ratios = log_rhos.exp()
        rhos, cs = ratios.clamp(max=rho_bar), ratios.clamp(max=c_bar)
        next_values = torch.cat([values[:, 1:], bootstrap[:, None]], dim=1)
        deltas = rhos * (rewards + discounts * next_values - values)
        # x_t = v_t - V(x_t) solves x_t - γ_t c_t x_{t+1} = δ_t (x_L = 0): a unit upper-bidiagonal system,
        # solved for every segment at once by back substitution.
        coupling = -torch.diag_embed((discounts * cs)[:, :-1], offset=1)
        corrections = torch.linalg.solve_triangular(
            coupling, deltas[..., None], upper=True, unitriangular=True
        )
        targets = values + corrections[..., 0]
        next_targets = torch.cat([targets[:, 1:], bootstrap[:, None]], dim=1)
        unweighted = rewards + discounts * next_targets - values
    return targets, rhos, unweighted


def vtrace(
    log_rhos: torch.Tensor,
    discounts: torch.Tensor,
    rewards: torch.Tensor,
    values: torch.Tensor,
    bootstrap: torch.Tensor,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """V-trace targets and policy-gradient advantages of a batch of trajectory segments.

    With ``ρ_t = min(ρ̄, π(a_t|x_t) / μ(a_t|x_t))``, ``c_t = min(c̄, π/μ)`` and ``V(x_L) = bootstrap``:

        ``v_t = V(x_t) + ρ_t δ_t + γ_t c_t (v_{t+1} - V(x_{t+1}))``, ``δ_t = r_t + γ_t V(x_{t+1}) - V(x_t)``,
        ``v_L = V(x_L)``; the advantage of ``a_t`` is ``ρ_t (r_t + γ_t v_{t+1} - V(x_t))``.

    Paper: Espeholt et al. 2018, "IMPALA: Scalable Distributed Deep-RL with Importance Weighted
    Actor-Learner Architectures" (ICML), equation 1 and section 4.2 (λ = 1).

    Args:
        log_rhos: ``log π(a_t|x_t) - log μ(a_t|x_t)``, shape ``(n, L)``.
        discounts: ``γ_t``: the discount, 0 where the episode ended at step ``t``, shape ``(n, L)``.
        rewards: ``r_t``, shape ``(n, L)``.
        values: ``V(x_t)``, shape ``(n, L)``.
        bootstrap: ``V(x_L)``, the value of the state after the segment, shape ``(n,)``.
        rho_bar: Truncation ``ρ̄`` of the importance weights in ``δ_t`` and in the advantage.
        c_bar: Truncation ``c̄`` of the trace coefficients.

    Returns:
        ``(v, advantages)``, both of shape ``(n, L)``, without gradient.
    """
    targets, rhos, unweighted = _vtrace_terms(log_rhos, discounts, rewards, values, bootstrap, rho_bar, c_bar)
    return targets, rhos * unweighted


class _JoinLoss(torch.autograd.Function):
    """``x`` unchanged in the forward pass; in the backward pass ``x``'s gradient passes through and
    ``loss`` receives gradient 1, so whatever back-propagates through ``x`` also back-propagates ``loss``
    (as if it were a term of that loss), in the same backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, torch.ones((), dtype=grad.dtype, device=grad.device)


_PREFETCH = 32
"""Updates whose replayed segments are drawn at once."""

_BEHAVIOUR = ("log_mu", "value", "reward", "first")
"""Stored fields that are not network inputs (besides the behaviour distribution's ``mu.*``)."""


class CLEAR(MemoryModule):
    """CLEAR: a mixture of on-policy learning on new experience and, on replayed trajectories, off-policy
    V-trace actor-critic learning plus behavioural cloning toward the policy that collected them.

    **What is stored.** Every step the agent takes, cut into segments of ``unroll_length`` steps (each with
    the next step's state for the bootstrap), with its reward, whether the episode ended, and what the
    behaviour policy computed when it acted: the action distribution's parameters and the value. (SB3 acts
    with the parameters of the last update throughout a rollout, so these are computed once per rollout,
    on its states, before the update; the rewards are SB3's, with its bootstrap at time limits folded in.)
    Each task's segments are a reservoir sample of the whole task; all tasks share ``budget`` steps
    (:class:`clrl.modules.memory.TaskMemory`), the task being trained included.

    **The update.** On every optimiser step of SB3's own loss on new data, ``n_r`` replayed steps (whole
    segments, drawn uniformly from everything stored, the current task's earlier rollouts included) add

        ``w · (L_V-trace + policy_cloning · KL(μ ‖ π) + value_cloning · (V(x) - V_μ(x))²)``

    where ``L_V-trace = -ρ_t A_t log π(a_t|x_t) + vf_coef (v_t - V(x_t))² - ent_coef H(π(.|x_t))`` with the
    V-trace targets ``v_t`` and advantages ``A_t`` of :func:`vtrace` (``ρ̄ = c̄ = 1``, computed with the current
    networks), ``μ`` and ``V_μ`` the stored behaviour distribution and value, and ``vf_coef`` and
    ``ent_coef`` the algorithm's own. ``n_r = n · replay_ratio / (1 - replay_ratio)`` for SB3's ``n``
    samples per step (``batch_size``; A2C's rollout), and ``w = n_r / n``: as the paper's loss summed over
    new and replayed samples, per new sample. The loss joins SB3's: for PPO and A2C with a policy that
    evaluates actions as SB3's feed-forward ``ActorCriticPolicy`` does (``MlpPolicy``, ``CnnPolicy``,
    ``MultiInputPolicy``), the replayed states go through the policy's ``evaluate_actions`` in the same
    forward pass as SB3's batch, and SB3's one backward pass carries CLEAR's loss with its own (replaying as
    many states as SB3's batch then costs far less than a second pass through the networks); otherwise
    (RecurrentPPO, TRPO, multi-head, progressive columns) it is back-propagated on its own right after SB3's
    ``zero_grad``. Either way SB3's gradient clipping treats it as one more term of the loss.

    Differences from the paper, for SB3's on-policy algorithms: new data is learned with SB3's loss (PPO's
    clipped objective, A2C's), not with IMPALA's V-trace loss (IMPALA's actors lag the learner; SB3's do not);
    PPO's clipping applies to new data only, and with PPO's ``normalize_advantage`` (its default) the replayed
    advantages are divided by the standard deviation, over the batch, of ``r_t + γ_t v_{t+1} - V(x_t)`` (the
    advantage before its importance weight), as SB3 scales the new ones (left raw, V-trace's advantages on
    returns far larger than 1 outweigh the new data after gradient clipping), but not centred: the V-trace
    advantage carries the factor ``ρ_t``, which vanishes on actions the current policy no longer takes, and
    subtracting the batch mean (or dividing by the spread of the weighted advantages, which is near 0 when
    every ``ρ_t`` is) would keep pushing their log-probability down without bound (measured with centring: PPO
    on CartPole collapsed to a return of 9 within 20,000 steps, plain PPO reached 500); the memory is one
    reservoir per task with equal shares of ``budget`` (the paper's is one reservoir of all experience; with
    tasks of equal length the two hold the same mix in expectation); each update draws its own replayed
    segments (those of 32 updates at once, discarded when a rollout stores new ones), so PPO's epochs do not
    revisit them; RecurrentPPO replays each step with the LSTM state it had when it acted (one step, gradient
    truncated there), not by running the LSTM over the segment. Replay of rewards needs the task id in the
    observation when tasks disagree on the same states; ``clrl.train`` refuses a hidden task id unless
    ``require_task_id=False`` (the paper's tasks are told apart by their observations).

    Paper: Rolnick et al. 2019, "Experience Replay for Continual Learning" (NeurIPS), sections 3 and 4.

    Args:
        budget: Steps kept over all tasks (``"all"``: unbounded); held as segments of ``unroll_length``.
        replay_ratio: Share of replayed samples in each update, in ``[0, 1)`` (the paper's default: 0.5,
            half new and half replayed). 0 trains exactly as plain SB3.
        unroll_length: Steps per stored segment (V-trace's horizon ``L``).
        policy_cloning: Weight of ``KL(μ ‖ π)`` (the paper's 0.01).
        value_cloning: Weight of ``(V(x) - V_μ(x))²`` (the paper's 0.005).
        rho_bar: V-trace's truncation of the importance weights (the paper's 1).
        c_bar: V-trace's truncation of the trace coefficients (the paper's 1).
        require_task_id: Refuse streams with a hidden task id in ``clrl.train``.
        memory_dtype: How the memory stores floating-point fields: ``"float32"`` (default, as given),
            ``"float16"`` (half the bytes, float16's precision) or ``"uint8"`` (a quarter, per-feature codes
            within 1/255 of each feature's range; see :class:`clrl.modules.memory.Reservoir`).
        verbose: SB3 callback verbosity.
    """

    name = "clear"

    def __init__(
        self,
        budget: Budget = 20_000,
        replay_ratio: float = 0.5,
        unroll_length: int = 20,
        policy_cloning: float = 0.01,
        value_cloning: float = 0.005,
        rho_bar: float = 1.0,
        c_bar: float = 1.0,
        require_task_id: bool = True,
        memory_dtype: MemoryDtype = "float32",
        verbose: int = 0,
    ) -> None:
        self.unroll_length = check_positive_int(unroll_length, "CLEAR unroll_length")
        budget = check_budget(budget, "CLEAR budget")
        super().__init__(budget, require_task_id, verbose, memory_dtype)
        self.replay_ratio = check_fraction(replay_ratio, "CLEAR replay_ratio")
        if self.replay_ratio == 1:
            raise ConfigError("CLEAR replay_ratio must be below 1 (1 would leave no new samples), got 1.0")
        self.policy_cloning = check_non_negative(policy_cloning, "CLEAR policy_cloning")
        self.value_cloning = check_non_negative(value_cloning, "CLEAR value_cloning")
        self.rho_bar = check_non_negative(rho_bar, "CLEAR rho_bar")
        self.c_bar = check_non_negative(c_bar, "CLEAR c_bar")
        segments: Budget = "all" if budget == "all" else max(1, budget // self.unroll_length)
        self.memory = TaskMemory(segments, self.memory_dtype, row_axes=2)  # rows are (L + 1)-step segments
        self._pending: Rows | None = None  # the steps of the current task not yet in a segment, time-major
        self._prefetched: dict[str, torch.Tensor] | None = None  # drawn segments of the next updates
        self._cursor = 0
        self._last: dict[str, torch.Tensor] = {}
        self._unpatch: Callable[[], None] | None = None

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse an off-policy algorithm or a policy whose distribution is not defined here."""
        if not isinstance(model, OnPolicyAlgorithm):
            raise ConfigError(
                f"CLEAR is for on-policy algorithms (PPO, A2C, RecurrentPPO), got {type(model).__name__}; "
                f"use Replay, BehaviourCloning or ClonEx for off-policy algorithms"
            )
        check_supported(model, "CLEAR")
        super().check_model(model)

    def needs_boundaries(self) -> bool:
        """Task-free: without boundaries the stream is one task, whose reservoir is replayed (the current
        task's memory is part of every draw)."""
        return False

    def on_task_start(self, task: TaskInfo) -> None:
        """Open the task's reservoir and seed the generators; segments never span two tasks."""
        self.open_task(task)
        self._pending = None
        self._prefetched = None
        self._last = {}

    # ---------------------------------------------------------------------------------- recording
    def _on_rollout_end(self) -> None:
        if self.replay_ratio > 0:
            self._record_rollout()
        super()._on_rollout_end()

    def _record_rollout(self) -> None:
        model = self.model
        assert isinstance(model, OnPolicyAlgorithm)
        buffer: Any = model.rollout_buffer
        steps, n_envs = buffer.buffer_size, buffer.n_envs
        rows = rollout_rows(model)
        with torch.no_grad(), _EvalMode(model.policy):
            behaviour = network_outputs(model, rows, ("actor",))
            actions = torch.as_tensor(rows["action"], device=model.device)
            log_mu = action_log_likelihood(model, behaviour, actions)
        rows.update({f"mu.{k}": v.float().cpu().numpy() for k, v in behaviour.items()})
        rows["log_mu"] = log_mu.float().cpu().numpy()
        rows["value"] = buffer.values.reshape(-1).astype(np.float32)
        rows["reward"] = buffer.rewards.reshape(-1).astype(np.float32)
        rows["first"] = buffer.episode_starts.reshape(-1).astype(np.float32)
        # Rows are step-major (t * n_envs + e): back to (steps, n_envs, ...) and after the pending steps.
        timed = {k: v.reshape(steps, n_envs, *v.shape[1:]) for k, v in rows.items()}
        if self._pending is not None:
            timed = {k: np.concatenate([self._pending[k], v]) for k, v in timed.items()}
        length = self.unroll_length
        count = (len(timed["reward"]) - 1) // length  # a segment needs the step after it
        if count:
            starts = np.arange(count) * length
            window = starts[:, None] + np.arange(length + 1)  # (count, L + 1)
            segments = {  # (count, L + 1, n_envs, ...) -> (count * n_envs, L + 1, ...)
                k: np.swapaxes(v[window], 1, 2).reshape(count * n_envs, length + 1, *v.shape[2:])
                for k, v in timed.items()
            }
            self.memory.record(segments, self._rng)
            self._prefetched = None  # later draws see the new segments
        self._pending = {k: v[count * length :].copy() for k, v in timed.items()}

    # ---------------------------------------------------------------------------------- the update
    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Every policy parameter (replay starts as soon as a segment is stored), unless the ratio is 0."""
        if self.replay_ratio == 0:
            return {}
        return dict(self.sb3_model.policy.named_parameters())

    def new_samples(self) -> int:
        """SB3's samples per optimiser step: PPO's ``batch_size``, A2C's whole rollout."""
        return samples_per_update(self.sb3_model)

    def replayed_segments(self) -> int:
        """Segments replayed per optimiser step (at least one)."""
        replayed = self.new_samples() * self.replay_ratio / (1 - self.replay_ratio)
        return max(1, round(replayed / self.unroll_length))

    def _batches(self, segments: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        """Segments of shape ``(updates * count, L + 1, ...)`` laid out per update, leading dimension
        ``updates``: network inputs as ``in.*`` rows, the ``count * L`` steps acted (segment by segment)
        first and the ``count`` bootstrap states after them; the behaviour's outputs ``mu.*`` and value on
        the acted steps as rows; ``log_mu``, ``reward`` and the discount ``gamma`` of shape ``(count, L)``.
        Everything that does not depend on the current networks is computed here, once per draw."""
        length = self.unroll_length
        updates = len(segments["reward"]) // count
        split = {k: v.view(updates, count, length + 1, *v.shape[2:]) for k, v in segments.items()}

        def acted(v: torch.Tensor) -> torch.Tensor:
            return v[:, :, :length].reshape(updates, count * length, *v.shape[3:])

        out = {
            f"in.{k}": torch.cat([acted(v), v[:, :, length]], dim=1)
            for k, v in split.items()
            if k not in _BEHAVIOUR and not k.startswith("mu.")
        }
        out.update({k: acted(v) for k, v in split.items() if k.startswith("mu.")})
        out["value"] = acted(split["value"])[..., None]
        out["log_mu"], out["reward"] = split["log_mu"][:, :, :length], split["reward"][:, :, :length]
        out["gamma"] = self.sb3_model.gamma * (1.0 - split["first"][:, :, 1:])  # type: ignore[attr-defined]
        return out

    def _draw(self, count: int) -> dict[str, torch.Tensor]:
        """One update's ``count`` segments, drawn uniformly from everything stored, as :meth:`_batches`
        lays them out, on the model's device.

        Segments for ``_PREFETCH`` updates are drawn and moved at once (the same distribution as drawing
        them one update at a time); a rollout that stores new segments discards what is left."""
        if self._prefetched is None or self._cursor == _PREFETCH:
            rows = self.memory.sample_with_current(count * _PREFETCH, self._sample_rng)
            device = self.sb3_model.device
            segments = {k: torch.as_tensor(v, device=device) for k, v in rows.items()}
            self._prefetched = self._batches(segments, count)
            self._cursor = 0
        cursor = self._cursor
        self._cursor += 1
        return {k: v[cursor] for k, v in self._prefetched.items()}

    def attach(self) -> None:
        """Install the optimiser hook and, for PPO and A2C with a policy that evaluates actions as SB3's
        feed-forward ``ActorCriticPolicy`` does, the joined forward pass: the policy's ``evaluate_actions``
        (an instance attribute, left out of its pickled state by
        :func:`~clrl.modules.base.patch_attributes`) runs the replayed states beside SB3's batch. After a
        ``learn`` that raised, its first call removes it."""
        super().attach()
        model = self.sb3_model
        # PPO's and A2C's train() evaluate each batch's actions once, before zero_grad (TRPO does not call
        # evaluate_actions: CLEAR reaches its critic's optimiser through extra_loss).
        if self.replay_ratio == 0 or not isinstance(model, PPO | A2C) or not joins_evaluate_actions(model):
            return
        policy: Any = model.policy
        evaluate = policy.evaluate_actions

        def evaluate_with_replay(obs: Any, actions: torch.Tensor) -> Any:
            if not self.hooks_live():
                self.detach()
                return evaluate(obs, actions)
            if not torch.is_grad_enabled() or len(self.memory) == 0:
                return evaluate(obs, actions)
            return self._evaluate_with_replay(evaluate, obs, actions)

        self._unpatch = patch_attributes(policy, evaluate_actions=evaluate_with_replay)

    def detach(self) -> None:
        """Remove the hooks and restore the policy's own ``evaluate_actions``."""
        super().detach()
        unpatch, self._unpatch = getattr(self, "_unpatch", None), None
        if unpatch is not None:
            unpatch()

    def _evaluate_with_replay(self, evaluate: Any, obs: Any, actions: torch.Tensor) -> Any:
        """SB3's ``evaluate_actions`` on its batch and one update's replayed segments in one forward pass;
        the replay loss joins the returned values (:class:`_JoinLoss`), so SB3's backward carries it."""
        model: Any = self.sb3_model
        batch = self._draw(self.replayed_segments())
        inputs: Any = {k[3:]: v for k, v in batch.items() if k.startswith("in.")}  # tensors, as Rows
        replay = tensor_batch(model, inputs)
        n = len(actions)
        joined_obs = (
            {k: torch.cat([v, replay["obs"][k].to(v.dtype)]) for k, v in obs.items()}
            if isinstance(obs, dict)
            else torch.cat([obs, replay["obs"].to(obs.dtype)])
        )
        replayed_actions = replay["action"].reshape(-1, *actions.shape[1:]).to(actions.dtype)
        values, log_prob, entropy = evaluate(joined_obs, torch.cat([actions, replayed_actions]))
        new = {k: v[n:] for k, v in distribution_outputs(model.policy.action_dist).items()}
        new["value"] = values[n:]
        loss = self._replay_loss(batch, new)
        return _JoinLoss.apply(values[:n], loss), log_prob[:n], None if entropy is None else entropy[:n]

    def extra_loss(self, group: ParamGroup) -> torch.Tensor | None:
        """CLEAR's loss on a batch of replayed segments (``None`` while nothing is stored, and while the
        joined forward pass of :meth:`attach` carries it)."""
        if len(self.memory) == 0 or getattr(self, "_unpatch", None) is not None:
            return None
        batch = self._draw(self.replayed_segments())
        inputs: Any = {k[3:]: v for k, v in batch.items() if k.startswith("in.")}  # tensors, as Rows
        return self._replay_loss(batch, network_outputs(self.sb3_model, inputs, ("actor", "critic")))

    def _replay_loss(self, batch: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one update's replayed segments (:meth:`_batches`' layout) from the networks' outputs
        ``new`` on their inputs (the steps acted, then the bootstrap states), per new sample."""
        model: Any = self.sb3_model
        count, length = self.replayed_segments(), self.unroll_length
        acted = count * length
        now = {k: v[:acted] for k, v in new.items()}  # the outputs on the steps acted
        log_pi = action_log_likelihood(model, now, batch["in.action"][:acted]).view(count, length)
        value = now["value"].view(count, length)
        targets, rhos, unweighted = _vtrace_terms(
            (log_pi - batch["log_mu"]).detach(),
            batch["gamma"],
            batch["reward"],
            value.detach(),
            new["value"][acted:, 0].detach(),
            self.rho_bar,
            self.c_bar,
        )
        advantages = rhos * unweighted
        if getattr(model, "normalize_advantage", False) and advantages.numel() > 1:
            # Scaled by the spread of the advantages before their importance weights, not centred: see the
            # docstring.
            advantages = advantages / (unweighted.std() + 1e-8)
        policy_loss = -(advantages * log_pi).mean()
        value_loss = F.mse_loss(value, targets)
        # the behaviour policy's outputs and value on the steps it acted
        old = {
            k[3:] if k.startswith("mu.") else k: v
            for k, v in batch.items()
            if k.startswith("mu.") or k == "value"
        }
        cloning = distillation_losses(model, old, now)
        loss = (
            policy_loss
            + model.vf_coef * value_loss
            + self.policy_cloning * cloning["actor"]
            + self.value_cloning * cloning["critic"]
        )
        if model.ent_coef:
            loss = loss - model.ent_coef * action_entropy(model, now).mean()
        self._last = {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "policy_cloning": cloning["actor"].detach(),
            "value_cloning": cloning["critic"].detach(),
            "rho": rhos.mean(),
        }
        return (acted / self.new_samples()) * loss

    def log_scalars(self) -> dict[str, float]:
        """The last replayed batch's ``policy_loss``, ``value_loss``, ``policy_cloning``, ``value_cloning``
        and mean truncated importance weight ``rho``; ``bytes`` and ``steps`` held in memory."""
        return {
            **{k: float(v) for k, v in self._last.items()},
            "bytes": float(self.memory.nbytes),
            "steps": float(len(self.memory) * self.unroll_length),
        }
