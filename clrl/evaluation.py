"""Evaluation of one policy on every task of a stream: one row of the return matrix."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from clrl.errors import ConfigError
from clrl.modules.base import ContinualModule
from clrl.streams import TaskStream

EVAL_SEED_OFFSET = 100_000
"""Evaluation episodes are seeded from ``seed + EVAL_SEED_OFFSET``, far from the training envs' seeds."""


@contextlib.contextmanager
def evaluated(modules: Sequence[ContinualModule], current_task: int) -> Iterator[Callable[[int], None]]:
    """The policy as the return matrix evaluates it: inside, every module's
    :meth:`~clrl.ContinualModule.evaluating` context is entered, and the function yielded selects task
    ``j`` in every module (:meth:`~clrl.ContinualModule.set_task`); on exit the modules select
    ``current_task`` again and leave their contexts."""

    def select(j: int) -> None:
        for module in modules:
            module.set_task(j)

    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(module.evaluating())
        try:
            yield select
        finally:
            select(current_task)


class _RandomPolicy:
    """Uniformly random actions from a seeded copy of the action space (SB3's ``predict`` signature)."""

    def __init__(self, space: gym.Space[Any], seed: int) -> None:
        self.space = copy.deepcopy(space)
        self.space.seed(seed)

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[np.ndarray, None]:
        first = next(iter(observation.values())) if isinstance(observation, dict) else observation
        return np.stack([self.space.sample() for _ in range(len(first))]), None


class _InfoMetric:
    """``evaluate_policy`` callback: the largest ``info[key]`` of every episode SB3 counts.

    SB3 calls it for every environment still running an episode it will count, before it counts an ended
    one; an episode ends when SB3 counts it (Monitor's ``episode`` entry, or ``done`` without Monitor).
    """

    def __init__(self, key: str, n_envs: int) -> None:
        self.key = key
        self.scores: list[float] = []
        self._best = np.full(n_envs, -np.inf)

    def __call__(self, local: dict[str, Any], _: dict[str, Any]) -> None:
        i, info = local["i"], local["info"]
        if self.key not in info:
            raise ConfigError(f"the metric {self.key!r} is missing from the environment's step info")
        self._best[i] = max(self._best[i], float(info[self.key]))
        if local["done"] and (not local["is_monitor_wrapped"] or "episode" in info):
            self.scores.append(float(self._best[i]))
            self._best[i] = -np.inf


class Evaluator:
    """Runs a policy on every task with fixed seeds and returns the mean episode return per task.

    With ``metric`` (default: the stream's), an episode scores the largest value of ``info[metric]`` it
    reported instead of its return: for a success flag, whether it succeeded at any step, so the row holds
    success rates (Meta-World's evaluation).

    Each task gets its own vectorised environment, built once. Before every evaluation the environments
    are re-seeded with the same seeds, so all rows of the return matrix are measured on the same episodes.
    Actions are deterministic by default, so evaluation draws nothing from the training random generators.
    Modules that select a head, column or mask per task are told which task is evaluated
    (:meth:`ContinualModule.set_task`); every module's :meth:`ContinualModule.evaluating` context is entered
    around the evaluation (CLSER evaluates its stable copy, Progress & Compress its knowledge base).

    Args:
        stream: The task stream.
        n_episodes: Episodes per task (>= 1).
        seed: Seed of the evaluation episodes.
        n_envs: Parallel environments per task (default: ``min(n_episodes, 8)``).
        deterministic: Use the policy's deterministic action.
        metric: ``"return"`` or the name of a number the environments report in ``info`` (default: the
            stream's :attr:`~clrl.TaskStream.metric`).
    """

    def __init__(
        self,
        stream: TaskStream,
        n_episodes: int = 10,
        seed: int = 0,
        n_envs: int | None = None,
        deterministic: bool = True,
        metric: str | None = None,
    ) -> None:
        if n_episodes < 1:
            raise ConfigError(f"evaluation needs n_episodes >= 1, got {n_episodes}")
        self.metric = stream.metric if metric is None else metric
        self.stream = stream
        self.n_episodes = n_episodes
        self.seed = seed
        self.deterministic = deterministic
        n_envs = n_envs or min(n_episodes, 8)
        # A cyclic stream's visits are their first visit's task: one environment (and one set of episodes)
        # per distinct task. A task whose attributes drift is evaluated in its setting at its last step.
        self._envs: list[VecEnv] = [
            stream.make_vec_env(j, n_envs=n_envs, at_step=stream.steps(j)) for j in range(stream.cycle_length)
        ]

    def __call__(
        self, model: BaseAlgorithm, modules: Sequence[ContinualModule] = (), current_task: int = 0
    ) -> np.ndarray:
        """Return the mean return of ``model`` on each task, shape ``(n_tasks,)``.

        Args:
            model: Any SB3 model.
            modules: Modules told which task is being evaluated; afterwards they are set back to
                ``current_task``.
            current_task: The task being trained.
        """
        row = np.zeros(len(self.stream))
        distinct = len(self._envs)
        # A later visit scores as its first one, on the same episodes, unless a module selects per task.
        per_task = any(type(m).set_task is not ContinualModule.set_task for m in modules)
        with evaluated(modules, current_task) as select:
            for j in range(len(row)):
                if j >= distinct and not per_task:
                    row[j] = row[j % distinct]
                    continue
                select(j)
                row[j] = self._mean_return(j, model, self.deterministic)
        return row

    def random_returns(self) -> np.ndarray:
        """Mean return of a uniformly random policy on each task (the 0 of normalised scores)."""
        distinct = [
            self._mean_return(j, _RandomPolicy(env.action_space, self._task_seed(j)), deterministic=False)
            for j, env in enumerate(self._envs)
        ]
        return np.array([distinct[j % len(distinct)] for j in range(len(self.stream))])

    def _task_seed(self, j: int) -> int:
        return self.seed + 1000 * (j % len(self._envs))

    def _mean_return(self, j: int, policy: Any, deterministic: bool) -> float:
        """Mean return (or metric) of ``policy`` on task ``j``'s episodes, the same ones at every call."""
        env = self._envs[j % len(self._envs)]
        env.seed(self._task_seed(j))
        tracker = None if self.metric == "return" else _InfoMetric(self.metric, env.num_envs)
        mean, _ = evaluate_policy(
            policy,
            env,
            n_eval_episodes=self.n_episodes,
            deterministic=deterministic,
            warn=False,
            callback=tracker,
        )
        if tracker is not None:
            if len(tracker.scores) != self.n_episodes:  # pragma: no cover (SB3 counts episodes as we do)
                raise RuntimeError(f"{len(tracker.scores)} episodes scored, {self.n_episodes} run")
            return float(np.mean(tracker.scores))
        assert isinstance(mean, float)  # a list only with return_episode_rewards=True
        return mean

    def close(self) -> None:
        """Close the evaluation environments."""
        for env in self._envs:
            env.close()
