"""Task-variant wrappers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from clrl.wrappers import (
    AddObservationNoise,
    AppendTaskId,
    MirrorActions,
    MultiTaskEnv,
    PermuteActions,
    ScaleReward,
)


def test_permute_actions_maps_and_validates() -> None:
    env = PermuteActions(gym.make("CartPole-v1"), [1, 0])
    assert [env.action(0), env.action(1)] == [1, 0]
    with pytest.raises(ValueError, match="permutation"):
        PermuteActions(gym.make("CartPole-v1"), [0, 0])
    with pytest.raises(ValueError, match="Discrete"):
        PermuteActions(gym.make("Pendulum-v1"), [0])


def test_scale_reward() -> None:
    env = ScaleReward(gym.make("CartPole-v1"), -2.0)
    env.reset(seed=0)
    _, reward, *_ = env.step(0)
    assert reward == -2.0


def test_observation_noise_is_seeded_and_stays_in_bounds() -> None:
    def first_obs(seed: int) -> np.ndarray:
        env = AddObservationNoise(gym.make("Pendulum-v1"), std=10.0)
        return env.reset(seed=seed)[0]

    np.testing.assert_array_equal(first_obs(3), first_obs(3))
    assert not np.array_equal(first_obs(3), first_obs(4))
    assert np.all(np.abs(first_obs(3)) <= np.array([1.0, 1.0, 8.0]))
    with pytest.raises(ValueError):
        AddObservationNoise(gym.make("Pendulum-v1"), std=-1.0)


def test_append_task_id_box_and_dict() -> None:
    env = AppendTaskId(gym.make("CartPole-v1"), 1, 3)
    obs, _ = env.reset(seed=0)
    assert obs[-3:].tolist() == [0.0, 1.0, 0.0] and obs in env.observation_space
    check_env(env, skip_render_check=True)
    dict_env = AppendTaskId(_dict_cartpole(), 2, 3)
    obs, _ = dict_env.reset(seed=0)
    assert obs["task_id"].tolist() == [0.0, 0.0, 1.0] and obs in dict_env.observation_space
    with pytest.raises(ValueError):
        AppendTaskId(gym.make("CartPole-v1"), 3, 3)


def _dict_cartpole() -> gym.Env:
    return gym.wrappers.TransformObservation(
        gym.make("CartPole-v1"),
        lambda o: {"state": o},
        gym.spaces.Dict({"state": gym.make("CartPole-v1").observation_space}),
    )


def test_multitask_env_draws_every_task_reproducibly() -> None:
    def tasks(seed: int) -> list[int]:
        env = MultiTaskEnv([AppendTaskId(gym.make("CartPole-v1"), i, 3) for i in range(3)])
        drawn = [env.reset(seed=seed)[1]["task_index"]]
        drawn += [env.reset()[1]["task_index"] for _ in range(30)]
        return drawn

    assert tasks(0) == tasks(0)
    assert set(tasks(0)) == {0, 1, 2}
    env = MultiTaskEnv([gym.make("CartPole-v1"), gym.make("CartPole-v1")])
    check_env(env, skip_render_check=True)


def test_mirror_actions_reverses_pendulum_torque() -> None:
    env = MirrorActions(gym.make("Pendulum-v1"))
    np.testing.assert_array_equal(env.action(np.array([2.0], dtype=np.float32)), [-2.0])
    plain = gym.make("Pendulum-v1")
    env.reset(seed=0)
    plain.reset(seed=0)
    mirrored, *_ = env.step(np.array([1.5], dtype=np.float32))
    reference, *_ = plain.step(np.array([-1.5], dtype=np.float32))
    np.testing.assert_array_equal(mirrored, reference)
    asymmetric = MirrorActions(gym.wrappers.RescaleAction(gym.make("Pendulum-v1"), 0.0, 1.0))
    np.testing.assert_array_equal(asymmetric.action(np.array([0.25], dtype=np.float32)), [0.75])
    with pytest.raises(ValueError, match="bounded Box"):
        MirrorActions(gym.make("CartPole-v1"))


def test_permute_observations_reorders_and_negates_with_one_space_for_every_permutation() -> None:
    from clrl.wrappers import PermuteObservations

    plain = gym.make("CartPole-v1")
    env = PermuteObservations(gym.make("CartPole-v1"), permutation=[2, 0, 3, 1], signs=[1, -1, 1, -1])
    obs, _ = plain.reset(seed=3)
    ours, _ = env.reset(seed=3)
    np.testing.assert_array_equal(ours, [obs[2], -obs[0], obs[3], -obs[1]])
    other = PermuteObservations(gym.make("CartPole-v1"), permutation=[0, 1, 2, 3])
    assert env.observation_space == other.observation_space
    assert env.observation_space.contains(ours)
    for bad in ({"permutation": [0, 0, 1, 2]}, {"permutation": [0, 1, 2, 3], "signs": [1, 2, 1, 1]}):
        with pytest.raises(ValueError):
            PermuteObservations(gym.make("CartPole-v1"), **bad)  # type: ignore[arg-type]
