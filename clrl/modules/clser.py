"""CLS-ER: a plastic and a stable moving average of the policy, and consistency toward the better one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal, cast

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from clrl.algorithms import Networks, check_networks, policy_parameters, samples_per_update
from clrl.errors import ConfigError
from clrl.modules.base import ParamGroup, TaskInfo, check_fraction, check_non_negative, check_positive_int
from clrl.modules.distill import (
    Frozen,
    Part,
    StateRecorder,
    acting_with,
    action_log_likelihood,
    check_distillable,
    distillation_losses,
    frozen_copy,
    group_parts,
    network_outputs,
)
from clrl.modules.memory import Budget, MemoryDtype, MemoryModule, Rows, concat_rows

Copy = Literal["stable", "plastic", "working"]
_COPIES = ("plastic", "stable")


class CLSER(StateRecorder, MemoryModule):
    """CLS-ER: a fast (plastic) and a slow (stable) exponential moving average of the policy, a reservoir of
    states, and a consistency loss toward whichever average explains each stored action better.

    Both copies start as the policy (at the first task's start) and never receive gradients. After every
    optimiser step of the regularised networks, each copy is updated with its own probability ``rate``:

        ``θ_copy ← α θ_copy + (1 - α) θ``,   ``α = min(1 - 1/(n + 1), decay)``

    with ``n`` the number of steps of that optimiser since the module first trained (the paper's warm-up:
    early averages follow the policy closely). The plastic copy (high rate) tracks recent tasks, the stable
    copy (low rate) consolidates older ones.

    Every state the agent trains on is offered to a reservoir memory (on-policy: each rollout; off-policy:
    each environment step; ``budget`` rows over all tasks, kept per task as :class:`clrl.Replay` does), with
    the action taken there. At every optimiser step, ``batch_size`` stored states of all tasks so far,
    the current one included, are drawn (SAC and TD3: one draw, and one pass of the copies, serves the
    critic's step and the actor's step that follows it), and the loss

        ``strength · D(copy*(s) ‖ policy(s))``

    is back-propagated right after SB3's ``zero_grad`` (so SB3's gradient clipping treats it as a term of
    SB3's loss). ``D`` is :mod:`clrl.modules.distill`'s divergence (KL of the action distributions; squared
    error of deterministic actions and Q-values; with ``networks="all"``, the default, also of values and
    critics). **Selection rule** (the paper picks, per sample, the copy giving the true label the higher
    probability; RL has no label): ``copy*`` is, per state, the copy under which the stored action is more
    likely (:func:`clrl.modules.distill.action_log_likelihood`: the log-probability for discrete and
    Gaussian policies, minus the squared distance for TD3's deterministic actor, a Boltzmann policy over
    Q-values at temperature 1 for DQN); ties go to the stable copy.

    **Prefetched targets** (``prefetch > 1``, off by default). The copies' outputs are computed for
    ``prefetch`` steps at once: one pass of each copy over ``prefetch`` draws of ``batch_size`` states (each
    draw as one step would make it), whose slices serve the next ``prefetch`` steps in turn. Small networks
    are dominated by per-call overhead (a 64 x 64 MLP's pass over 512 states costs about twice one over
    64), so this removes most of the copies' cost. The price: a step's states come from the memory and its
    targets from the copies as they were up to ``prefetch - 1`` steps earlier (with the default decays, an
    update moves a copy by 0.1% of its distance to the policy once past the warm-up's first 1,000 steps,
    by more before). The default ``prefetch=1`` draws and computes them fresh at every step, as the paper.

    The evaluator acts with the stable copy by default (``evaluate_with``): inside :meth:`evaluating` the
    policy's weights are the copy's, and the trained weights come back on exit. In your own loop:
    ``with clser.evaluating(): evaluate_policy(model, env)``.

    Relative to the paper: the consistency loss is the divergence of action distributions (and values)
    rather than the mean squared error of logits, there is no separate experience-replay loss (states
    carry no labels; replay of returns is :class:`clrl.Replay`'s and :class:`clrl.CLEAR`'s job), and the
    reservoir is balanced per task. The targets are a function of the state alone, so a stream with a
    hidden task id is accepted.

    Paper: Arani, Sarfraz & Zonooz 2022, "Learning Fast, Learning Slow: A General Continual Learning Method
    based on Complementary Learning System" (ICLR), https://arxiv.org/abs/2201.12604

    Args:
        strength: Weight ``λ`` of the consistency loss (>= 0). At 0 training equals plain SB3 exactly (the
            copies still follow the policy).
        budget: States kept over all tasks (``"all"``: unbounded).
        batch_size: Replayed states per optimiser step (default: the algorithm's ``batch_size``, or the
            rollout size for A2C).
        plastic_rate: Probability ``r_P`` of updating the plastic copy after a step, in [0, 1].
        stable_rate: Probability ``r_S`` of updating the stable copy after a step, in [0, 1]
            (``r_S < r_P``).
        plastic_decay: Decay ``α_P`` of the plastic average, in [0, 1].
        stable_decay: Decay ``α_S`` of the stable average, in [0, 1].
        networks: ``"all"`` (default: actor and values/critics) or ``"actor"``: the networks averaged and
            made consistent.
        evaluate_with: ``"stable"`` (default), ``"plastic"`` or ``"working"`` (the trained policy itself).
        prefetch: Optimiser steps served by one draw and one pass of the copies (>= 1; see above; 1, the
            default, is the paper's computation).
        memory_dtype: How the memory stores floating-point fields: ``"float32"`` (default, as given),
            ``"float16"`` (half the bytes, float16's precision) or ``"uint8"`` (a quarter, per-feature codes
            within 1/255 of each feature's range; see :class:`clrl.modules.memory.Reservoir`).
        verbose: SB3 callback verbosity.
    """

    name = "clser"

    def __init__(
        self,
        strength: float = 0.1,
        budget: Budget = 20_000,
        batch_size: int | None = None,
        plastic_rate: float = 0.9,
        stable_rate: float = 0.1,
        plastic_decay: float = 0.999,
        stable_decay: float = 0.999,
        networks: Networks = "all",
        evaluate_with: Copy = "stable",
        prefetch: int = 1,
        memory_dtype: MemoryDtype = "float32",
        verbose: int = 0,
    ) -> None:
        super().__init__(budget, require_task_id=False, verbose=verbose, memory_dtype=memory_dtype)
        self.strength = check_non_negative(strength, "CLSER strength")
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "CLSER batch_size")
        self.plastic_rate = check_fraction(plastic_rate, "CLSER plastic_rate")
        self.stable_rate = check_fraction(stable_rate, "CLSER stable_rate")
        self.plastic_decay = check_fraction(plastic_decay, "CLSER plastic_decay")
        self.stable_decay = check_fraction(stable_decay, "CLSER stable_decay")
        self.networks: Networks = check_networks(networks)
        if evaluate_with not in ("stable", "plastic", "working"):
            raise ConfigError(
                f"CLSER evaluate_with must be stable, plastic or working, got {evaluate_with!r}"
            )
        self.evaluate_with: Copy = evaluate_with
        self.prefetch = check_positive_int(prefetch, "CLSER prefetch")
        self.plastic: torch.nn.Module | None = None
        """The plastic (fast) moving average of the policy; ``None`` before the first task starts."""
        self.stable: torch.nn.Module | None = None
        """The stable (slow) moving average of the policy; ``None`` before the first task starts."""
        self.steps: dict[str, int] = {}
        """Optimiser steps seen per optimiser (the ``n`` of the warm-up), over all tasks."""
        self.updates = dict.fromkeys(_COPIES, 0)
        """Updates each copy received, over all tasks."""
        self._pending: dict[str, dict[str, torch.Tensor]] = {}
        self._averages: dict[tuple[str, str], list[torch.Tensor]] = {}  # (copy, optimiser) -> its tensors
        self._ema_rng = np.random.default_rng(0)
        self._last: dict[str, torch.Tensor] = {}  # read (synchronised) when logged only
        self._chunk: tuple[list[Rows], dict[str, torch.Tensor], torch.Tensor] | None = None
        self._slot = 0
        self._slot_users: set[str] = set()

    # ------------------------------------------------------------------------------------ task boundaries
    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse an algorithm or policy whose outputs are not defined (before anything trains)."""
        check_distillable(model, "CLSER")
        super().check_model(model)

    def needs_boundaries(self) -> bool:
        """Task-free: the copies follow the weights at every step, and the reservoir draws from every row
        held, the current task's included."""
        return False

    def on_task_start(self, task: TaskInfo) -> None:
        """Build (or restore) the copies, open the task's reservoir, seed the draws."""
        model = self.sb3_model
        self._build_copies()
        self.open_task(task)
        seed = model.seed if model.seed is not None else 0
        self._ema_rng = np.random.default_rng([seed, task.index, 2])
        self._last = {}
        self._chunk = None

    def _build_copies(self) -> None:
        if self.plastic is None or self.stable is None:
            self.plastic, self.stable = frozen_copy(self.sb3_model), frozen_copy(self.sb3_model)
        for which, state in self._pending.items():
            self.copy(cast(Copy, which)).load_state_dict(state)
        self._pending = {}
        self._averages = {}

    def copy(self, which: Copy) -> torch.nn.Module:
        """The ``"plastic"`` or ``"stable"`` copy (``"working"``: the model's policy itself)."""
        if which == "working":
            return self.sb3_model.policy
        module = self.plastic if which == "plastic" else self.stable
        if module is None:
            raise RuntimeError("CLSER has no copies before its first task starts")
        return module

    # ------------------------------------------------------------------------------------ replay
    def replay_states(self, n: int) -> Rows:
        """``n`` stored states (with actions), uniform over every row held, the current task's included."""
        if len(self.memory) == 0:
            raise RuntimeError("CLSER's memory is empty")
        return self.memory.sample_with_current(n, self._sample_rng)

    # ------------------------------------------------------------------------------------ training
    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The parameters of ``networks``, from the first task on (the averages follow every step)."""
        return policy_parameters(self.sb3_model, self.networks)

    def _batch_size(self) -> int:
        return self.batch_size if self.batch_size is not None else samples_per_update(self.sb3_model)

    def consistency_targets(self, rows: Rows) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The chosen copy's outputs on ``rows`` (every part) and the mask of states where it is the stable
        copy."""
        model = self.sb3_model
        parts: tuple[Part, ...] = ("actor", "critic") if self.networks == "all" else ("actor",)
        plastic_model = cast(BaseAlgorithm, Frozen(self.copy("plastic"), model.device))
        stable_model = cast(BaseAlgorithm, Frozen(self.copy("stable"), model.device))
        with torch.no_grad():
            plastic = network_outputs(plastic_model, rows, parts)
            stable = network_outputs(stable_model, rows, parts)
            actions = torch.as_tensor(rows["action"], device=model.device)
            chose_stable = action_log_likelihood(model, stable, actions) >= action_log_likelihood(
                model, plastic, actions
            )
            targets = {
                key: torch.where(chose_stable.view(-1, *[1] * (value.dim() - 1)), value, plastic[key])
                for key, value in stable.items()
            }
        return targets, chose_stable

    def extra_loss(self, group: ParamGroup) -> torch.Tensor | None:
        """``strength`` times the divergence of the policy from the chosen copy on replayed states."""
        if self.strength == 0 or len(self.memory) == 0:
            return None
        model = self.sb3_model
        if self._chunk is not None and group.optimizer_name in self._slot_users:
            # Each slot serves each optimiser once (SAC/TD3: the critic's step, then the actor's).
            self._slot, self._slot_users = self._slot + 1, set()
        if self._chunk is None or self._slot == self.prefetch:
            draws = [self.replay_states(self._batch_size()) for _ in range(self.prefetch)]
            chunk = (draws, *self.consistency_targets(concat_rows(draws)))
            self._chunk, self._slot, self._slot_users = chunk, 0, set()
        self._slot_users.add(group.optimizer_name)
        draws, all_targets, all_chosen = self._chunk
        rows = draws[self._slot]
        n = len(rows["action"])
        start = self._slot * n
        targets = {key: value[start : start + n] for key, value in all_targets.items()}
        chose_stable = all_chosen[start : start + n]
        parts = group_parts(model, group.optimizer_name, self.networks)
        losses = distillation_losses(model, targets, network_outputs(model, rows, parts))
        total = sum(losses.values())
        assert isinstance(total, torch.Tensor)
        for part, value in losses.items():
            self._last[f"{part}_consistency"] = value.detach()
        self._last["stable_chosen"] = chose_stable
        return self.strength * total

    def after_update(self, group: ParamGroup) -> None:
        """Update each copy with its probability: ``θ_copy ← α θ_copy + (1 - α) θ`` on ``group``'s
        parameters."""
        n = self.steps[group.optimizer_name] = self.steps.get(group.optimizer_name, 0) + 1
        draws = self._ema_rng.random(2)  # both draws every step: the stream of draws ignores the rates
        settings = ((self.plastic_rate, self.plastic_decay), (self.stable_rate, self.stable_decay))
        with torch.no_grad():
            for which, draw, (rate, decay) in zip(_COPIES, draws, settings, strict=True):
                if draw >= rate:
                    continue
                alpha = min(1.0 - 1.0 / (n + 1), decay)
                average = self._averages.get((which, group.optimizer_name))
                if average is None:
                    named = dict(self.copy(cast(Copy, which)).named_parameters())
                    average = self._averages[which, group.optimizer_name] = [named[k] for k in group.names]
                torch._foreach_mul_(average, alpha)
                torch._foreach_add_(average, group.params, alpha=1.0 - alpha)
                self.updates[which] += 1

    # ------------------------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Act with the ``evaluate_with`` copy: its weights are loaded into the policy and the trained ones
        restored on exit."""
        bound = getattr(self, "model", None) is not None
        if bound and self._pending:  # loaded while bound to a model: build the copies now
            self._build_copies()
        if self.evaluate_with == "working" or self.plastic is None or not bound:
            yield
            return
        with acting_with(self.sb3_model.policy, self.copy(self.evaluate_with).state_dict()):
            yield

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The memory, both copies' weights and the step and update counts."""
        state: dict[str, Any] = {
            **super().state_dict(),
            "steps": dict(self.steps),
            "updates": dict(self.updates),
        }
        for which in _COPIES:
            module = self.plastic if which == "plastic" else self.stable
            if module is not None:
                state[which] = {k: v.detach().clone() for k, v in module.state_dict().items()}
            elif which in self._pending:
                state[which] = dict(self._pending[which])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the memory, the counts and the copies (built from the model's policy when the module is
        next attached)."""
        super().load_state_dict(state)
        self.steps = {k: int(v) for k, v in state["steps"].items()}
        self.updates = {k: int(state["updates"].get(k, 0)) for k in _COPIES}
        self.plastic = self.stable = None
        self._averages = {}
        self._pending = {which: state[which] for which in _COPIES if which in state}
        if self._pending and getattr(self, "model", None) is not None:
            self._build_copies()

    def log_scalars(self) -> dict[str, float]:
        """``actor_consistency`` (and ``critic_consistency``) of the last step before ``strength``, the
        fraction of states that chose the stable copy (``stable_chosen``), ``plastic_updates`` and
        ``stable_updates`` so far, ``states`` and ``bytes`` held in memory."""
        last = {key: float(value.float().mean()) for key, value in self._last.items()}
        return {
            **last,
            "plastic_updates": float(self.updates["plastic"]),
            "stable_updates": float(self.updates["stable"]),
            "states": float(len(self.memory)),
            "bytes": float(self.memory.nbytes),
        }
