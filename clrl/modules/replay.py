"""Replay of earlier tasks' transitions for off-policy agents (SAC, TD3, DQN, QR-DQN, TQC, CrossQ)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import DictReplayBufferSamples, ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from clrl.errors import ConfigError
from clrl.modules.base import TaskInfo, check_bool, check_fraction, patch_attributes
from clrl.modules.memory import Budget, MemoryDtype, MemoryModule, Rows, Selection


class Replay(MemoryModule):
    """Replay: mix transitions of earlier tasks into every training batch of an off-policy agent.

    While a task trains, every transition SB3 adds to its replay buffer is also offered to the task's
    reservoir (a uniform sample of the whole task, however long it is, not its last ``buffer_size`` steps;
    observations keep their dtype and the next observation is stored explicitly, as SB3 gives it, terminal
    observations included). All reservoirs share ``budget`` rows: when a new task starts each earlier one
    is subsampled to ``budget // (tasks + 1)``. Each batch SB3 samples (``replay_buffer.sample``) then
    holds ``round(fraction · batch_size)`` transitions drawn uniformly from the earlier tasks' reservoirs
    and the rest from the live buffer, which ``clrl.train`` empties at each new task. With
    ``budget="all"`` and ``fraction=0.5`` this is Continual World's perfect-memory baseline.

    Works with Box, Discrete and Dict observations and any SB3 replay buffer class (n-step buffers: replayed
    rows are one-step transitions and get the discount ``gamma``). The buffer's ``add`` and ``sample`` are
    wrapped on the buffer instance while ``learn`` runs (the buffer still pickles and saves as SB3's own),
    so ``callback=Replay(...)`` is all a user's own loop needs. The task id: replayed transitions carry
    their own rewards and dynamics, so ``clrl.train`` refuses a stream that hides the task id unless
    ``require_task_id=False`` (in a user's own loop, make sure the observation tells the tasks apart).

    **Task-free mode** (``include_current=True``): the replayed share is drawn from every reservoir, the
    current task's included, as CLEAR draws from its one reservoir of all experience (Rolnick et al. 2019).
    On a stream that hides its boundaries the whole stream is one task, so the memory is a uniform
    sample of every transition since the first step, replayed beside SB3's buffer of the latest
    ``buffer_size``; ``needs_boundaries()`` is then false. Such streams usually hide the task id too:
    pass ``require_task_id=False`` as well, knowing that transitions from before a change carry the old
    rewards and dynamics.

    Paper: Rolnick et al. 2019, "Experience Replay for Continual Learning" (NeurIPS); Wołczyk et al. 2021,
    "Continual World" (NeurIPS), perfect memory.

    Args:
        budget: Transitions kept over all tasks (``"all"``: every transition, unbounded).
        fraction: Share of each batch drawn from earlier tasks, in [0, 1]. 0 trains exactly as plain SB3.
        require_task_id: Refuse streams with a hidden task id in ``clrl.train``.
        include_current: Also replay the current task's reservoir (task-free mode, above).
        memory_dtype: How the memory stores floating-point fields: ``"float32"`` (default, as given),
            ``"float16"`` (half the bytes, float16's precision) or ``"uint8"`` (a quarter, per-feature codes
            within 1/255 of each feature's range; see :class:`clrl.modules.memory.Reservoir`).
        verbose: SB3 callback verbosity.
        memory_selection: Which rows of an earlier task the memory keeps as later tasks take their share of
            the budget: ``"uniform"`` (default, a uniform subsample) or ``"herding"`` (iCaRL's herding on the
            observations; :func:`clrl.modules.memory.herding_order`).
    """

    task_free_with = "include_current=true"

    name = "replay"
    on_policy_alternative = "CLEAR or BehaviourCloning"
    """What the refusal of an on-policy algorithm points to."""

    def __init__(
        self,
        budget: Budget = 100_000,
        fraction: float = 0.5,
        require_task_id: bool = True,
        include_current: bool = False,
        memory_dtype: MemoryDtype = "float32",
        verbose: int = 0,
        memory_selection: Selection = "uniform",
    ) -> None:
        super().__init__(budget, require_task_id, verbose, memory_dtype, memory_selection)
        self.fraction = check_fraction(fraction, "Replay fraction")
        self.include_current = check_bool(include_current, "Replay include_current")
        self._buffer: ReplayBuffer | None = None
        self._unpatch: Callable[[], None] | None = None
        self.replayed = 0
        """Archived transitions mixed into batches during the current task."""

    def needs_boundaries(self) -> bool:
        """Task-free with ``include_current``: the current task's reservoir is then replayed."""
        return not self.include_current

    # ---------------------------------------------------------------- task boundaries
    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse an algorithm without a replay buffer (before anything trains)."""
        super().check_model(model)
        if not isinstance(model, OffPolicyAlgorithm) or model.replay_buffer is None:
            raise ConfigError(
                f"{type(self).__name__} needs an off-policy algorithm with a replay buffer (SAC, TD3, DQN, "
                f"...), got {type(model).__name__}; use {self.on_policy_alternative} for on-policy algorithms"
            )

    def on_task_start(self, task: TaskInfo) -> None:
        """Open the task's reservoir (shrinking earlier ones) and seed the sampling generators."""
        self.open_task(task)
        self.replayed = 0

    def attach(self) -> None:
        """Wrap the replay buffer's ``add`` and ``sample`` (besides any optimiser hooks).

        The wrappers are left out of the buffer's pickled state (:func:`~clrl.modules.base.patch_attributes`),
        so SB3's ``save_replay_buffer`` and ``CheckpointCallback(save_replay_buffer=True)`` save the plain
        buffer, and a deep copy is a plain buffer. After a ``learn`` that raised, the first call of either
        removes them (the hooks' rule, :meth:`~clrl.ContinualModule.hooks_live`).
        """
        super().attach()
        buffer = getattr(self.sb3_model, "replay_buffer", None)
        if buffer is None or self._buffer is buffer:
            return
        self._buffer = buffer
        add, sample = buffer.add, buffer.sample

        def recording_add(*args: Any, **kwargs: Any) -> None:
            add(*args, **kwargs)
            if self.hooks_live():
                self._record(buffer, *args, **kwargs)
            else:
                self.detach()

        def mixing_sample(batch_size: int, env: VecNormalize | None = None) -> Any:
            if self.hooks_live():
                return self._sample(sample, batch_size, env)
            self.detach()
            return sample(batch_size, env)

        self._unpatch = patch_attributes(buffer, add=recording_add, sample=mixing_sample)

    def detach(self) -> None:
        """Restore the buffer's own ``add`` and ``sample``."""
        super().detach()
        if self._unpatch is not None:
            self._unpatch()
        self._buffer, self._unpatch = None, None

    # ---------------------------------------------------------------- recording
    def _record(
        self,
        buffer: Any,
        obs: Any,
        next_obs: Any,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        if self.memory.current is None:
            return
        n = buffer.n_envs
        rows: Rows = {}
        if isinstance(obs, dict):
            for key in obs:
                shape, dtype = buffer.obs_shape[key], buffer.observations[key].dtype
                rows[f"obs.{key}"] = np.asarray(obs[key], dtype=dtype).reshape((n, *shape))
                rows[f"next_obs.{key}"] = np.asarray(next_obs[key], dtype=dtype).reshape((n, *shape))
        else:
            dtype = buffer.observations.dtype
            rows["obs"] = np.asarray(obs, dtype=dtype).reshape((n, *buffer.obs_shape))
            rows["next_obs"] = np.asarray(next_obs, dtype=dtype).reshape((n, *buffer.obs_shape))
        rows["action"] = np.asarray(action, dtype=buffer.actions.dtype).reshape((n, buffer.action_dim))
        rows["reward"] = np.asarray(reward, dtype=np.float32).reshape(n)
        terminal = np.asarray(done, dtype=np.float32).reshape(n)
        if buffer.handle_timeout_termination:  # a time-limit cut is not a terminal state, as in SB3
            truncated = np.array([info.get("TimeLimit.truncated", False) for info in infos], dtype=np.float32)
            terminal = terminal * (1.0 - truncated)
        rows["done"] = terminal
        self.memory.record(rows, self._rng)

    # ---------------------------------------------------------------- sampling
    def _sample(self, sample: Any, batch_size: int, env: VecNormalize | None) -> Any:
        current = self.memory.current
        earlier = [i for i, r in enumerate(self.memory) if r is not current and len(r)]
        replays_current = self.include_current and current is not None and len(current) > 0
        n_old = round(self.fraction * batch_size) if earlier or replays_current else 0
        if n_old == 0:
            return sample(batch_size, env)
        assert self._buffer is not None
        # The live rows come from SB3's own generator, the replayed ones from the module's: the order of the
        # two draws changes neither.
        live = sample(batch_size - n_old, env) if n_old < batch_size else None
        old = self._replayed(n_old, earlier, env, live)
        self.replayed += n_old
        if live is None:
            return old
        discounts = None
        if live.discounts is not None:  # n-step buffer: replayed rows are one-step transitions
            gamma = torch.full((n_old, 1), float(self.sb3_model.gamma), device=live.discounts.device)  # type: ignore[attr-defined]
            discounts = torch.cat([live.discounts, gamma.to(live.discounts.dtype)])
        fields = [_cat(a, b) for a, b in zip(live[:5], old[:5], strict=True)]
        return type(live)(*fields, discounts)

    def _draw(self, n: int, earlier: list[int]) -> Rows:
        """``n`` rows drawn uniformly from the earlier tasks' reservoirs (and the current one's, in task-free
        mode)."""
        if self.include_current:  # the current reservoir is still filling: drawn apart from the gathered ones
            return self.memory.sample_with_current(n, self._sample_rng)
        return self.memory.sample(n, self._sample_rng, earlier)

    def _replayed(self, n: int, earlier: list[int], env: VecNormalize | None, live: Any) -> Any:
        """The ``n`` replayed rows of a batch whose live rows are ``live`` (``None`` when there are none), as
        SB3 samples: here a uniform draw (:class:`clrl.MIR` chooses them)."""
        return self._to_samples(self._draw(n, earlier), env)

    def _to_samples(self, rows: Rows, env: VecNormalize | None) -> Any:
        buffer: Any = self._buffer
        assert buffer is not None
        to_torch = buffer.to_torch
        if any(k.startswith("obs.") for k in rows):
            keys = [k[len("obs.") :] for k in rows if k.startswith("obs.")]
            obs: Any = buffer._normalize_obs({k: rows[f"obs.{k}"] for k in keys}, env)
            nxt: Any = buffer._normalize_obs({k: rows[f"next_obs.{k}"] for k in keys}, env)
            obs = {k: to_torch(v) for k, v in obs.items()}
            nxt = {k: to_torch(v) for k, v in nxt.items()}
            samples: Any = DictReplayBufferSamples
        else:
            obs = to_torch(buffer._normalize_obs(rows["obs"], env))
            nxt = to_torch(buffer._normalize_obs(rows["next_obs"], env))
            samples = ReplayBufferSamples
        reward = buffer._normalize_reward(rows["reward"].reshape(-1, 1), env)
        done = rows["done"].reshape(-1, 1)
        return samples(obs, to_torch(rows["action"]), nxt, to_torch(done), to_torch(reward))

    # ---------------------------------------------------------------- state and logs
    def task_bytes(self) -> dict[int, int]:
        """Bytes held per task (by task index)."""
        return {t: r.nbytes for t, r in zip(self.memory.task_ids, self.memory, strict=True)}

    def log_scalars(self) -> dict[str, float]:
        """``bytes`` held in all, ``bytes/task<j>`` per task, ``rows`` held and ``replayed`` this task."""
        scalars = {
            "bytes": float(self.memory.nbytes),
            "rows": float(len(self.memory)),
            "replayed": float(self.replayed),
        }
        scalars.update({f"bytes/task{t}": float(b) for t, b in self.task_bytes().items()})
        return scalars


def _cat(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])
