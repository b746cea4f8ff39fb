"""MIR: replay the earlier transitions whose loss the coming update would increase most."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from stable_baselines3 import DQN, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from clrl.errors import ConfigError
from clrl.modules.base import check_positive, check_positive_int
from clrl.modules.memory import Budget, MemoryDtype, Selection
from clrl.modules.replay import Replay

CANDIDATES_PER_REPLAYED = 5
"""The default candidate draw per replayed row: the paper's code draws 50 candidates (``--subsample 50``)
for 10 replayed samples (``--buffer_batch_size 10``)."""


def critic_optimizer(model: BaseAlgorithm) -> torch.optim.Optimizer:
    """The optimiser of the network whose TD loss MIR scores: DQN's Q-network's, SAC's and TD3's critics'
    (its parameters leave out a features extractor SAC's critic shares with the actor, as SB3's do)."""
    policy: Any = model.policy
    return policy.optimizer if isinstance(model, DQN) else policy.critic.optimizer


def td_targets(model: BaseAlgorithm, batch: Any) -> torch.Tensor:
    """The TD targets SB3's own ``train`` computes for ``batch`` (shape ``(n, 1)``), without gradients.

    DQN: ``r + (1 - d)·γ·max_a Q_target(s', a)``. SAC: the clipped double-Q target of the actor's sampled
    next action, minus the entropy term at the current entropy coefficient. TD3 (and DDPG): the clipped
    double-Q target of the target actor's action with target policy smoothing noise. ``γ`` is the buffer's
    n-step discount where it gives one. SAC's and TD3's targets draw from torch's generator, as SB3's do.
    """
    discounts = batch.discounts if batch.discounts is not None else model.gamma  # type: ignore[attr-defined]
    m: Any = model
    with torch.no_grad():
        if isinstance(model, DQN):
            next_q = m.q_net_target(batch.next_observations).max(dim=1).values.reshape(-1, 1)
        else:
            if isinstance(model, SAC):
                next_actions, next_log_prob = m.actor.action_log_prob(batch.next_observations)
            else:
                noise = torch.randn_like(batch.actions) * m.target_policy_noise
                noise = noise.clamp(-m.target_noise_clip, m.target_noise_clip)
                next_actions = (m.actor_target(batch.next_observations) + noise).clamp(-1, 1)
            next_q = torch.cat(m.critic_target(batch.next_observations, next_actions), dim=1)
            next_q = next_q.min(dim=1, keepdim=True).values
            if isinstance(model, SAC):
                log_ent = m.log_ent_coef
                ent_coef = (
                    torch.exp(log_ent.detach()) if m.ent_coef_optimizer is not None else m.ent_coef_tensor
                )
                next_q = next_q - ent_coef * next_log_prob.reshape(-1, 1)
        return batch.rewards + (1 - batch.dones) * discounts * next_q


def td_losses(model: BaseAlgorithm, batch: Any, targets: torch.Tensor) -> torch.Tensor:
    """Each row's term of SB3's critic loss at the current parameters, shape ``(n,)``: DQN's Huber loss,
    SAC's ``½ Σ_q (Q_q - y)²``, TD3's ``Σ_q (Q_q - y)²`` (their batch means are SB3's losses)."""
    m: Any = model
    if isinstance(model, DQN):
        q = m.q_net(batch.observations).gather(1, batch.actions.long())
        return F.smooth_l1_loss(q, targets, reduction="none").squeeze(1)
    qs = m.critic(batch.observations, batch.actions)
    total = torch.stack([((q - targets) ** 2).squeeze(1) for q in qs]).sum(dim=0)
    return 0.5 * total if isinstance(model, SAC) else total


def interference(model: BaseAlgorithm, live: Any, candidates: Any, lr: float) -> torch.Tensor:
    """MIR's score of each candidate row: ``L_i(θ_v) - L_i(θ)``, with ``θ_v = θ - lr·∇_θ L(live; θ)`` the
    virtual SGD step of the critic on the live rows' TD loss (targets held fixed). The parameters are
    restored exactly (copied back) before it returns.

    Args:
        model: A DQN, SAC or TD3 model.
        live: The live rows, as SB3's buffer samples them.
        candidates: The candidate rows, in the same form.
        lr: The virtual step's learning rate.

    Returns:
        The scores, shape ``(len(candidates),)``.
    """
    params = [p for group in critic_optimizer(model).param_groups for p in group["params"]]
    live_loss = td_losses(model, live, td_targets(model, live)).mean()
    grads = torch.autograd.grad(live_loss, params, allow_unused=True)
    targets = td_targets(model, candidates)
    return virtual_step_scores(params, grads, lr, lambda: td_losses(model, candidates, targets))


def virtual_step_scores(
    params: Sequence[torch.nn.Parameter],
    grads: Sequence[torch.Tensor | None],
    lr: float,
    row_losses: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """``row_losses()`` after the virtual SGD step ``θ - lr·grads`` minus before it, without gradients; the
    parameters are copied back, so they end bit for bit as they were (``None`` gradients: no step)."""
    with torch.no_grad():
        before = row_losses()
        saved = [p.detach().clone() for p in params]
        try:
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    p.sub_(lr * g)
            after = row_losses()
        finally:
            for p, value in zip(params, saved, strict=True):
                p.copy_(value)
    return after - before


def top_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The positions of the ``k`` highest scores, highest first (ties: the earlier row)."""
    return torch.argsort(scores, descending=True, stable=True)[:k]


def take(samples: Any, index: torch.Tensor) -> Any:
    """The rows ``index`` of SB3 replay samples (Dict observations included)."""

    def pick(field: Any) -> Any:
        if field is None:
            return None
        if isinstance(field, dict):
            return {k: v[index] for k, v in field.items()}
        return field[index]

    return type(samples)(*(pick(field) for field in samples))


class MIR(Replay):
    """Maximally Interfered Retrieval for off-policy agents: :class:`clrl.Replay`, whose replayed share of
    each batch is chosen, from a larger uniform draw of the memory, as the transitions that the coming
    update would hurt most.

    Every batch SB3 samples (``replay_buffer.sample``) is built in four steps:

    1. ``batch_size - k`` live rows from SB3's buffer, ``k = round(fraction · batch_size)``;
    2. ``candidates`` rows drawn uniformly (with replacement) from the earlier tasks' reservoirs (every
       reservoir with ``include_current=True``);
    3. a virtual SGD step of the critic on the live rows' TD loss, ``θ_v = θ - α·∇L(live; θ)``, and each
       candidate's score ``L_i(θ_v) - L_i(θ)``, its TD loss's increase under that step (the targets, from
       the target networks, held fixed; :func:`interference`);
    4. the ``k`` candidates of highest score join the live rows; SB3 then trains on the batch as usual.

    Everything else (what is recorded, the per-task reservoirs and their budget, task-free mode, memory
    dtypes, saving) is Replay's. ``fraction=0`` trains exactly as plain SB3.

    **Algorithms.** DQN, SAC, TD3 and DDPG, whose per-row TD loss is SB3's own (DQN's Huber loss, the
    critics' squared errors; :func:`td_losses`). QR-DQN and TQC (quantile losses) and CrossQ (no target
    network: its batch-normalised critic sees the current and next states in one pass) are refused; use
    Replay.

    **Deviations from the paper.** The paper trains a classifier by SGD and scores the samples' cross-
    entropy. Here the loss is the critic's TD loss with fixed targets, and the actor (SAC, TD3) is not part
    of the virtual step or the score. The virtual step is plain SGD at ``virtual_lr`` (default: the critic
    optimiser's current learning rate), whereas SB3's real step is Adam's; to first order the ranking is by
    ``-⟨∇L(live), ∇L_i⟩`` for any step size. The candidates come from Replay's per-task reservoirs, not one
    reservoir of the whole stream (in task-free mode, they do).

    **Cost.** Per gradient step, one more forward and backward pass of the critic on the live rows, two
    forward passes of the critic and one of the targets on the candidates (SAC, TD3: also the actor's next
    actions). With the default 5 candidates per replayed row, a DQN batch of 32 (16 replayed) scores 80.

    Paper: Aljundi et al. 2019, "Online Continual Learning with Maximally Interfered Retrieval" (NeurIPS).

    Args:
        budget: Transitions kept over all tasks (``"all"``: every transition, unbounded).
        fraction: Share of each batch chosen from the memory, in [0, 1): the live rest defines the virtual
            step, so 1 is refused. 0 trains exactly as plain SB3.
        candidates: Rows drawn from the memory per batch, at least the ``k`` replayed ones (``None``:
            ``5·k``: the paper's code draws 50 candidates for 10 replayed samples).
        virtual_lr: The virtual step's learning rate (``None``: the critic optimiser's, as the paper uses
            the real step's).
        require_task_id: Refuse streams with a hidden task id in ``clrl.train``.
        include_current: Also draw candidates from the current task's reservoir (task-free mode).
        memory_dtype: How the memory stores floating-point fields (``"float32"``, ``"float16"``,
            ``"uint8"``; see :class:`clrl.Replay`).
        verbose: SB3 callback verbosity.
        memory_selection: Which rows of an earlier task the memory keeps (``"uniform"`` or ``"herding"``;
            see :class:`clrl.Replay`).
    """

    name = "mir"
    on_policy_alternative = "BehaviourCloning(retrieval='mir')"

    def __init__(
        self,
        budget: Budget = 100_000,
        fraction: float = 0.5,
        candidates: int | None = None,
        virtual_lr: float | None = None,
        require_task_id: bool = True,
        include_current: bool = False,
        memory_dtype: MemoryDtype = "float32",
        verbose: int = 0,
        memory_selection: Selection = "uniform",
    ) -> None:
        super().__init__(
            budget, fraction, require_task_id, include_current, memory_dtype, verbose, memory_selection
        )
        if self.fraction >= 1:
            raise ConfigError(
                f"MIR fraction must be below 1, got {fraction}: its virtual step trains on the batch's "
                "live rows"
            )
        self.candidates = None if candidates is None else check_positive_int(candidates, "MIR candidates")
        self.virtual_lr = None if virtual_lr is None else check_positive(virtual_lr, "MIR virtual_lr")
        self.chosen_score = 0.0
        """Mean score of the rows chosen in the last batch (the TD loss increase the virtual step caused)."""
        self.candidate_score = 0.0
        """Mean score of all candidates of the last batch (what a uniform draw would replay, on average)."""

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse algorithms other than DQN, SAC, TD3 and DDPG, and a candidate count below the replayed
        rows of one batch (before anything trains)."""
        super().check_model(model)
        if not isinstance(model, DQN | SAC | TD3):
            raise ConfigError(
                f"MIR scores the TD loss of DQN, SAC, TD3 or DDPG, got {type(model).__name__} (quantile and "
                f"batch-normalised critics are not supported); use Replay"
            )
        replayed = round(self.fraction * model.batch_size)
        if self.candidates is not None and self.candidates < replayed:
            raise ConfigError(
                f"MIR candidates ({self.candidates}) must be at least the {replayed} rows replayed per batch "
                f"(fraction {self.fraction} of batch_size {model.batch_size})"
            )

    def candidate_count(self, replayed: int) -> int:
        """Rows drawn per batch that replays ``replayed`` rows."""
        return self.candidates if self.candidates is not None else CANDIDATES_PER_REPLAYED * replayed

    def _replayed(self, n: int, earlier: list[int], env: VecNormalize | None, live: Any) -> Any:
        assert live is not None  # fraction < 1
        pool = self._to_samples(self._draw(self.candidate_count(n), earlier), env)
        lr = self.virtual_lr
        if lr is None:
            lr = float(critic_optimizer(self.sb3_model).param_groups[0]["lr"])
        scores = interference(self.sb3_model, live, pool, lr)
        chosen = top_rows(scores, n)
        self.chosen_score = float(scores[chosen].mean())
        self.candidate_score = float(scores.mean())
        return take(pool, chosen)

    def log_scalars(self) -> dict[str, float]:
        """Replay's, with ``chosen_score`` and ``candidate_score`` of the last batch."""
        return {
            **super().log_scalars(),
            "chosen_score": self.chosen_score,
            "candidate_score": self.candidate_score,
        }
