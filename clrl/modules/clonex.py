"""ClonEx: behavioural cloning of earlier tasks' actor plus best-return exploration, for SAC and TD3."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, unwrap_vec_normalize

from clrl.algorithms import Networks
from clrl.errors import ConfigError
from clrl.modules.base import TaskInfo, check_positive_int, patch_attributes
from clrl.modules.behaviour_cloning import BehaviourCloning
from clrl.modules.memory import Budget, MemoryDtype


def _task_id_size(env: VecEnv | None) -> int | None:
    """The length of the task one-hot :class:`clrl.AppendTaskId` puts in ``env``'s observations, if any."""
    if env is None:
        return None
    try:
        sizes = env.get_attr("n_tasks")
    except AttributeError:
        return None
    return int(sizes[0]) if sizes and isinstance(sizes[0], int) else None


def as_task(observation: Any, index: int, n_tasks: int) -> Any:
    """``observation`` (a batch, of a stream with an observed task id) with task ``index``'s one-hot in
    place of its own: the last ``n_tasks`` entries of a flat observation, or a ``Dict``'s ``"task_id"``."""
    one_hot = np.zeros(n_tasks, dtype=np.float32)
    one_hot[index] = 1
    if isinstance(observation, dict):
        task_id = np.asarray(observation["task_id"])
        return {
            **observation,
            "task_id": np.broadcast_to(one_hot.astype(task_id.dtype), task_id.shape).copy(),
        }
    swapped = np.array(observation, copy=True)
    swapped[..., -n_tasks:] = one_hot.astype(swapped.dtype)
    return swapped


class _AsTask:
    """``model``'s policy acting as if it were on task ``index`` (SB3's ``predict`` signature)."""

    def __init__(self, model: BaseAlgorithm, index: int, n_tasks: int) -> None:
        self.model, self.index, self.n_tasks = model, index, n_tasks

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[np.ndarray, Any]:
        return self.model.predict(
            as_task(observation, self.index, self.n_tasks), state, episode_start, deterministic
        )


class ClonEx(BehaviourCloning):
    """ClonEx: behavioural cloning of the actor on earlier tasks' states, and exploration with the best
    earlier policy at the start of each new task.

    **Cloning** is :class:`clrl.BehaviourCloning` with the actor term alone by default (the paper found
    regularising the critic hurts transfer): states of every task are kept in a reservoir per task (all
    tasks share ``budget``), the actor's outputs on them are stored when the task ends, and every later
    actor update adds ``policy_coef · KL(π_old(.|s) ‖ π(.|s))`` (SAC's Gaussian before the tanh; TD3's
    squared action distance) on ``batch_size`` stored states.

    **Exploration.** When task ``t > 0`` starts, the policy acting as each earlier task ``k < t`` (the task
    one-hot of its observations replaced by ``k``'s) is run for ``exploration_episodes`` episodes on the new
    task's environment, and for the task's first ``exploration_steps`` steps the agent acts with the best of
    them by mean return (sampling from it, as SB3 samples from its own policy). This replaces what the
    agent would otherwise do then: SB3's uniform warm-up actions while ``num_timesteps < learning_starts``
    (``clrl.train`` and :class:`clrl.StreamCallback` apply ``learning_starts`` again at every task, as
    Continual World does; a loop of plain ``learn`` calls applies it once), and acting with the current
    policy after it. Gradient updates still wait for ``learning_starts``.

    Differences from the paper: the candidates' episodes run on the training environment before the task's
    first step (they are not counted in the task's steps and not stored; the environment is reset after
    them); the earlier policies are the one network conditioned on the task id (the paper's has a head per
    task: combine with :class:`clrl.MultiHead`, which routes by the same one-hot); without an observed task
    id there is no earlier policy to choose and the task starts as with :class:`clrl.BehaviourCloning`.
    The published result: average success 0.87 on Continual World's CW10, against PackNet's 0.80, with
    forward transfer up from 0.18 to 0.54 (the paper's abstract; not reproduced here).

    Paper: Wołczyk et al. 2022, "Disentangling Transfer in Continual Reinforcement Learning" (NeurIPS).

    Args:
        budget: States kept over all tasks (``"all"``: unbounded).
        batch_size: Stored states per update (default: the algorithm's ``batch_size``).
        policy_coef: Weight of the actor's cloning term (>= 0).
        value_coef: Weight of the critics' cloning term, used with ``networks="all"`` (>= 0).
        networks: ``"actor"`` (default, the paper's choice) or ``"all"`` (the critics cloned too).
        exploration_steps: Steps of each new task acted by the best earlier policy (0: none; Continual
            World's warm-up is 10,000 steps of 1,000,000 per task: pass a share of the task's budget for
            shorter tasks).
        exploration_episodes: Episodes each earlier policy is run on the new task to rank them.
        require_task_id: Refuse streams with a hidden task id in ``clrl.train``.
        memory_dtype: How the memory stores floating-point fields: ``"float32"`` (default, as given),
            ``"float16"`` (half the bytes, float16's precision) or ``"uint8"`` (a quarter, per-feature codes
            within 1/255 of each feature's range; see :class:`clrl.modules.memory.Reservoir`).
        verbose: SB3 callback verbosity.
    """

    name = "clonex"

    def __init__(
        self,
        budget: Budget = 20_000,
        batch_size: int | None = None,
        policy_coef: float = 1.0,
        value_coef: float = 0.0,
        networks: Networks = "actor",
        exploration_steps: int = 10_000,
        exploration_episodes: int = 3,
        require_task_id: bool = True,
        memory_dtype: MemoryDtype = "float32",
        verbose: int = 0,
    ) -> None:
        super().__init__(
            budget,
            batch_size,
            policy_coef,
            value_coef,
            networks,
            require_task_id=require_task_id,
            memory_dtype=memory_dtype,
            verbose=verbose,
        )
        if (
            isinstance(exploration_steps, bool)
            or not isinstance(exploration_steps, int)
            or exploration_steps < 0
        ):
            raise ConfigError(f"ClonEx exploration_steps must be an int >= 0, got {exploration_steps!r}")
        self.exploration_steps = exploration_steps
        self.exploration_episodes = check_positive_int(exploration_episodes, "ClonEx exploration_episodes")
        self.explore_with = -1
        """The earlier task whose policy explores the current task (-1: none)."""
        self.explored = 0
        """Steps of the current task acted by that policy so far."""
        self.candidate_returns: list[float] = []
        """Mean return of each earlier task's policy on the current task, measured when it started."""
        self._undo: Callable[[], None] | None = None

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse what is not an off-policy actor-critic (SAC, TD3, TQC, CrossQ, DDPG), and VecNormalize'd
        observations (the task one-hot would be normalised)."""
        if not isinstance(model, OffPolicyAlgorithm) or not hasattr(model.policy, "actor"):
            raise ConfigError(
                f"ClonEx is for off-policy actor-critic algorithms (SAC, TD3, TQC, CrossQ, DDPG), got "
                f"{type(model).__name__}; use BehaviourCloning or CLEAR for the others"
            )
        env = model.get_env()
        normalize = unwrap_vec_normalize(env) if env is not None else None
        if self.exploration_steps and normalize is not None and normalize.norm_obs:
            raise ConfigError("ClonEx exploration cannot swap the task id of VecNormalize'd observations")
        super().check_model(model)

    # ---------------------------------------------------------------------------------- exploration
    def on_task_start(self, task: TaskInfo) -> None:
        """Open the task's reservoir; rank the earlier tasks' policies on the new task and explore with the
        best."""
        super().on_task_start(task)
        self._remove()
        self.explore_with, self.explored, self.candidate_returns = -1, 0, []
        model = self.sb3_model
        env = model.get_env()
        n_tasks = _task_id_size(env)
        if not self.exploration_steps or n_tasks is None or task.index == 0 or env is None:
            return
        candidates = range(min(task.index, n_tasks))
        self.candidate_returns = [self._mean_return(_AsTask(model, k, n_tasks), env) for k in candidates]
        self.explore_with = int(np.argmax(self.candidate_returns))
        if model._last_obs is not None:  # inside learn: the task's steps start from fresh episodes
            model._last_obs = env.reset()  # type: ignore[assignment]
            model._last_episode_starts = np.ones((env.num_envs,), dtype=bool)
            if model._vec_normalize_env is not None:
                model._last_original_obs = model._vec_normalize_env.get_original_obs()
        self._install()

    def _mean_return(self, policy: _AsTask, env: VecEnv) -> float:
        returns, _ = evaluate_policy(
            policy,
            env,
            n_eval_episodes=self.exploration_episodes,
            deterministic=False,
            return_episode_rewards=True,
            warn=False,
        )
        return float(np.mean(returns))

    def _install(self) -> None:
        """Make the policy act as the chosen earlier task (until ``exploration_steps`` are taken)."""
        if self._undo is not None or self.explore_with < 0 or self.explored >= self.exploration_steps:
            return
        policy: Any = self.sb3_model.policy
        n_tasks = _task_id_size(self.sb3_model.get_env())
        if n_tasks is None:
            return
        index, predict = self.explore_with, type(policy).predict

        def explore(
            observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False
        ) -> Any:
            return predict(policy, as_task(observation, index, n_tasks), state, episode_start, deterministic)

        # The warm-up too: SB3 draws uniform actions while num_timesteps < learning_starts (clrl.train and
        # StreamCallback apply learning_starts again at every task); asked with 0, it acts with the policy.
        model: Any = self.sb3_model
        sample, excluded = model._sample_action, type(model)._excluded_save_params

        def sample_action(learning_starts: int, *args: Any, **kwargs: Any) -> Any:
            return sample(0, *args, **kwargs)

        def excluded_save_params() -> list[str]:  # SB3's save copies __dict__: leave the patch out
            return [*excluded(model), "_sample_action", "_excluded_save_params"]

        undo_policy = patch_attributes(policy, predict=explore)
        undo_model = patch_attributes(
            model, _sample_action=sample_action, _excluded_save_params=excluded_save_params
        )

        def undo() -> None:
            undo_model()
            undo_policy()

        self._undo = undo

    def _remove(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None

    def _on_training_start(self) -> None:
        super()._on_training_start()
        self._install()  # a learn that continues the task's exploration

    def _on_step(self) -> bool:
        if self._undo is not None:
            self.explored += self.sb3_model.n_envs
            if self.explored >= self.exploration_steps:
                self._remove()
        return super()._on_step()

    def _on_training_end(self) -> None:
        self._remove()
        super()._on_training_end()

    def on_task_end(self, task: TaskInfo) -> None:
        """Stop exploring; store the actor's outputs on the task's states."""
        self._remove()
        super().on_task_end(task)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Evaluate the policy itself, not the exploring one."""
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()
        try:
            yield
        finally:
            if undo is not None:
                self._install()

    def state_dict(self) -> dict[str, Any]:
        """The memory, and the current task's exploration (chosen task, steps taken, candidates' returns)."""
        return {
            **super().state_dict(),
            "explore_with": self.explore_with,
            "explored": self.explored,
            "candidate_returns": list(self.candidate_returns),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.explore_with = int(state.get("explore_with", -1))
        self.explored = int(state.get("explored", 0))
        self.candidate_returns = [float(r) for r in state.get("candidate_returns", [])]

    def log_scalars(self) -> dict[str, float]:
        """``explore_with`` and ``explored`` steps, with the cloning scalars."""
        return {
            "explore_with": float(self.explore_with),
            "explored": float(self.explored),
            **super().log_scalars(),
        }
