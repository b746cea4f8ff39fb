"""Evaluation of one policy on every task of a stream: one row of the return matrix."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from clrl.errors import ConfigError
from clrl.modules.base import ContinualModule
from clrl.streams import TaskStream


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


class Evaluator:
    """Runs a policy on every task with fixed seeds and returns the mean episode return per task.

    Each task gets its own vectorised environment, built once. Before every evaluation the environments
    are re-seeded with the same seeds, so all rows of the return matrix are measured on the same episodes.
    Actions are deterministic by default, so evaluation draws nothing from the training random generators.
    Modules that select a head, column or mask per task are told which task is evaluated
    (:meth:`ContinualModule.set_task`).

    Args:
        stream: The task stream.
        n_episodes: Episodes per task (>= 1).
        seed: Seed of the evaluation episodes.
        n_envs: Parallel environments per task (default: ``min(n_episodes, 8)``).
        deterministic: Use the policy's deterministic action.
    """

    def __init__(
        self,
        stream: TaskStream,
        n_episodes: int = 10,
        seed: int = 0,
        n_envs: int | None = None,
        deterministic: bool = True,
    ) -> None:
        if n_episodes < 1:
            raise ConfigError(f"evaluation needs n_episodes >= 1, got {n_episodes}")
        self.stream = stream
        self.n_episodes = n_episodes
        self.seed = seed
        self.deterministic = deterministic
        n_envs = n_envs or min(n_episodes, 8)
        self._envs: list[VecEnv] = [stream.make_vec_env(j, n_envs=n_envs) for j in range(len(stream))]

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
        row = np.zeros(len(self._envs))
        try:
            for j in range(len(self._envs)):
                for module in modules:
                    module.set_task(j)
                row[j] = self._mean_return(j, model, self.deterministic)
        finally:
            for module in modules:
                module.set_task(current_task)
        return row

    def random_returns(self) -> np.ndarray:
        """Mean return of a uniformly random policy on each task (the 0 of normalised scores)."""
        return np.array(
            [
                self._mean_return(j, _RandomPolicy(env.action_space, self._task_seed(j)), deterministic=False)
                for j, env in enumerate(self._envs)
            ]
        )

    def _task_seed(self, j: int) -> int:
        return self.seed + 1000 * j

    def _mean_return(self, j: int, policy: Any, deterministic: bool) -> float:
        """Mean return of ``policy`` on task ``j``'s episodes, which are the same at every call."""
        env = self._envs[j]
        env.seed(self._task_seed(j))
        mean, _ = evaluate_policy(
            policy, env, n_eval_episodes=self.n_episodes, deterministic=deterministic, warn=False
        )
        assert isinstance(mean, float)  # a list only with return_episode_rewards=True
        return mean

    def close(self) -> None:
        """Close the evaluation environments."""
        for env in self._envs:
            env.close()
