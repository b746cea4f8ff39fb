"""The streams of the environment extras (box2d, minigrid, mujoco, metaworld): every task builds, passes
the environment checker, and differs from the others as its file says. The dev extra installs them all."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env

import clrl
from clrl.wrappers import ScalePhysics, UnboundedObservation


@pytest.mark.parametrize(
    ("name", "module", "n_tasks"),
    [("lunarlander-gravity", "Box2D", 4), ("minigrid", "minigrid", 4), ("halfcheetah-physics", "mujoco", 4)],
)
def test_stream_tasks_pass_sb3_check_env(name: str, module: str, n_tasks: int) -> None:
    pytest.importorskip(module)
    stream = clrl.make_stream(name)  # validates: every task resets and steps, one shared space
    assert len(stream) == n_tasks and stream.task_id == "observed"
    for i in range(n_tasks):
        env = stream.make_env(i)
        check_env(env, warn=False)
        obs, _ = env.reset(seed=0)
        np.testing.assert_array_equal(obs[-n_tasks:], np.eye(n_tasks)[i])  # the observed task id
        env.close()


def test_lunarlander_tasks_have_their_gravity_and_wind() -> None:
    pytest.importorskip("Box2D")
    stream = clrl.make_stream("lunarlander-gravity")
    worlds = [stream.make_env(i).unwrapped for i in range(len(stream))]
    assert [w.gravity for w in worlds] == [-10.0, -1.6, -3.7, -10.0]  # type: ignore[attr-defined]
    assert [w.enable_wind for w in worlds] == [False, False, False, True]  # type: ignore[attr-defined]


def test_halfcheetah_tasks_scale_mass_and_friction() -> None:
    pytest.importorskip("mujoco")
    stream = clrl.make_stream("halfcheetah-physics")
    base = gym.make("HalfCheetah-v5").unwrapped.model  # type: ignore[attr-defined]
    models = [stream.make_env(i).unwrapped.model for i in range(len(stream))]  # type: ignore[attr-defined]
    np.testing.assert_allclose(models[1].body_mass, 1.5 * base.body_mass)
    np.testing.assert_allclose(models[1].body_inertia, 1.5 * base.body_inertia)
    np.testing.assert_allclose(models[2].body_mass, 0.5 * base.body_mass)
    np.testing.assert_allclose(models[3].geom_friction, 0.3 * base.geom_friction)
    np.testing.assert_allclose(models[3].body_mass, base.body_mass)
    with pytest.raises(ValueError, match="needs a MuJoCo environment"):
        ScalePhysics(gym.make("CartPole-v1"), mass=2.0)
    with pytest.raises(ValueError, match="mass must be a positive number"):
        ScalePhysics(gym.make("HalfCheetah-v5"), mass=0.0)


def test_minigrid_layouts_share_the_flattened_view() -> None:
    pytest.importorskip("minigrid")
    stream = clrl.make_stream("minigrid")
    spaces = [stream.make_env(i).observation_space for i in range(len(stream))]
    assert all(space == spaces[0] for space in spaces) and spaces[0].shape == (7 * 7 * 3 + 4,)
    assert stream.make_env(0).action_space == gym.spaces.Discrete(7)


def test_cw10_is_continual_worlds_sequence_scored_by_success() -> None:
    """SB3's check_env takes every Meta-World env for a goal-conditioned env (they define compute_reward,
    which SB3 itself calls a possible false positive), so the Gymnasium checker is used here."""
    pytest.importorskip("metaworld")
    stream = clrl.make_stream("cw10")  # validation checks that info["success"] is a number
    assert stream.metric == "success"
    assert stream.task_names == [
        "hammer",
        "push-wall",
        "faucet-close",
        "push-back",
        "stick-pull",
        "handle-press-side",
        "push",
        "shelf-place",
        "window-close",
        "peg-unplug-side",
    ]
    for i in range(len(stream)):
        env = stream.make_env(i)
        gym_check_env(env, skip_render_check=True)
        assert env.observation_space.shape == (39 + 10,)
        env.close()
    with pytest.raises(ValueError, match="floating-point Box"):
        UnboundedObservation(gym.make("FrozenLake-v1"))  # type: ignore[arg-type]


def test_wrapper_from_a_module_path() -> None:
    spec = clrl.WrapperSpec("gymnasium.wrappers:ClipReward", {"min_reward": 0.0, "max_reward": 0.5})
    assert spec.wrapper_class() is gym.wrappers.ClipReward
    with pytest.raises(clrl.StreamError, match="module 'no_such_module' is not allowed"):
        clrl.WrapperSpec("no_such_module:Thing").wrapper_class()
    with pytest.raises(clrl.StreamError, match=r"cannot import 'gymnasium\.no_such_module'"):
        clrl.WrapperSpec("gymnasium.no_such_module:Thing").wrapper_class()
    with pytest.raises(clrl.StreamError, match="has no wrapper class 'Nope'"):
        clrl.WrapperSpec("gymnasium.wrappers:Nope").wrapper_class()
