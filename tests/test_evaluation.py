"""The evaluator: one row of the return matrix, reproducible, task selection."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEVICE
from stable_baselines3 import PPO

import clrl


def test_row_is_reproducible_and_leaves_training_rng_alone(tiny_stream: clrl.TaskStream) -> None:
    model = PPO("MlpPolicy", tiny_stream.make_vec_env(0), n_steps=32, device=DEVICE, seed=0)
    evaluator = clrl.Evaluator(tiny_stream, n_episodes=3, seed=1)
    state = np.random.get_state()[1].copy()
    first, second = evaluator(model), evaluator(model)
    assert first.shape == (2,)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    evaluator.close()


def test_modules_select_each_task_and_are_set_back(tiny_stream: clrl.TaskStream) -> None:
    calls: list[int] = []

    class Heads(clrl.ContinualModule):
        def set_task(self, index: int) -> None:
            calls.append(index)

    model = PPO("MlpPolicy", tiny_stream.make_vec_env(0), n_steps=32, device=DEVICE)
    clrl.Evaluator(tiny_stream, n_episodes=1)(model, [Heads()], current_task=1)
    assert calls == [0, 1, 1]


def test_random_policy_scores_like_a_random_policy(tiny_stream: clrl.TaskStream) -> None:
    """A fresh policy on CartPole lasts tens of steps, far from the 500 cap."""
    model = PPO("MlpPolicy", tiny_stream.make_vec_env(0), n_steps=32, device=DEVICE, seed=0)
    row = clrl.Evaluator(tiny_stream, n_episodes=5)(model)
    assert np.all((row >= 8) & (row < 200))


def test_needs_at_least_one_episode(tiny_stream: clrl.TaskStream) -> None:
    with pytest.raises(clrl.ConfigError):
        clrl.Evaluator(tiny_stream, n_episodes=0)
