"""StreamCallback: a whole stream inside one learn, the return matrix clrl.train gives; Gymnasium ids."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import cartpole_stream
from stable_baselines3 import DQN, PPO

import clrl


def ppo(env: object, seed: int = 0) -> PPO:
    return PPO(
        "MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=2, policy_kwargs={"net_arch": [16]}, seed=seed
    )


def test_one_learn_with_stream_callback_gives_clrl_trains_return_matrix(tmp_path: Path) -> None:
    stream = cartpole_stream(steps=128)
    reference = clrl.train(ppo(stream.make_vec_env(0)), stream, [clrl.EWC(samples=64)], eval_episodes=2)
    ewc = clrl.EWC(samples=64)
    callback = clrl.StreamCallback(stream, [ewc], eval_episodes=2, logdir=tmp_path / "run")
    model = ppo(stream.make_vec_env(0, seed=99))
    model.learn(callback.total_steps, callback=callback)
    callback.on_training_end()  # RL Zoo's learn calls it again: nothing happens twice
    assert callback.result is not None
    np.testing.assert_array_equal(callback.result.matrix, reference.matrix)
    assert callback.result.steps == reference.steps == [0, 128, 256]
    assert len(ewc.fishers) == 2 and ewc.tasks_seen == 2
    # Plasticity at each boundary, on the task's last states, as clrl.train measures it.
    ours, theirs = callback.result.plasticity, reference.plasticity
    assert (
        [(r["step"], r["task"]) for r in ours]
        == [(r["step"], r["task"]) for r in theirs]
        == [(128, 0), (256, 1)]
    )
    for a, b in zip(ours, theirs, strict=True):
        assert a["values"] == pytest.approx(b["values"], rel=1e-6, abs=1e-9)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["plasticity"] == json.loads(json.dumps(ours))
    assert saved["completed_tasks"] == 2 and np.allclose(saved["matrix"], reference.matrix)
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_stream_callback_takes_names_as_a_yaml_file_would() -> None:
    callback = clrl.StreamCallback(
        "cartpole-flip", modules=["l2"], module_args={"strength": 5.0}, steps_per_task=64, eval_episodes=1
    )
    (l2,) = callback.modules
    assert isinstance(l2, clrl.L2) and l2.strength == 5.0
    assert callback.total_steps == 4 * 64
    model = DQN("MlpPolicy", "clrl/cartpole-flip.normal-v0", learning_starts=16, train_freq=4, seed=0)
    model.learn(10 * callback.total_steps, callback=callback)  # stops when the stream is done
    assert model.num_timesteps <= callback.total_steps + 4
    assert callback.result is not None and not np.isnan(callback.result.matrix).any()
    assert l2.tasks_seen == 4
    assert model.learning_starts == 16  # put back after the per-task warm-ups


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stream": 5}, "stream must be"),
        ({"stream": "cartpole-flip", "modules": ["nope"]}, "unknown method"),
        ({"stream": "cartpole-flip", "module_args": {"strength": 1.0}}, "module_args go with"),
        ({"stream": "cartpole-flip", "eval_episodes": 0}, "eval_episodes"),
    ],
)
def test_stream_callback_refuses_bad_settings_when_built(kwargs: dict, message: str) -> None:
    with pytest.raises(clrl.ConfigError, match=message):
        clrl.StreamCallback(**kwargs)


def test_every_builtin_task_is_a_gymnasium_id_that_builds_the_stream_task() -> None:
    stream = clrl.make_stream("cartpole-flip")
    for index, name in enumerate(stream.task_names):
        env = gym.make(f"clrl/cartpole-flip.{name}-v0")
        ours = stream.make_env(index)
        assert env.observation_space == ours.observation_space
        obs, _ = env.reset(seed=3)
        expected, _ = ours.reset(seed=3)
        np.testing.assert_array_equal(obs, expected)  # the task id appended, as the stream says
        assert obs[-4 + index] == 1.0
    assert "clrl/cw10.hammer-v0" in gym.registry  # registered without importing Meta-World


class _Events(clrl.ContinualModule):
    """A task-free module that records the task events it receives."""

    name = "events"

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int, str, int | None]] = []

    def needs_boundaries(self) -> bool:
        return False

    def on_task_start(self, task: clrl.TaskInfo) -> None:
        self.events.append(("start", task.index, task.name, task.steps))

    def on_task_end(self, task: clrl.TaskInfo) -> None:
        self.events.append(("end", task.index, task.name, task.steps))


def _hidden(steps: int = 128) -> clrl.TaskStream:
    import dataclasses

    return dataclasses.replace(cartpole_stream(steps=steps, task_id="hidden"), boundaries="hidden")


def test_a_stream_with_hidden_boundaries_tells_the_modules_nothing_between_tasks() -> None:
    stream = _hidden()
    events = _Events()
    callback = clrl.StreamCallback(stream, [events], eval_episodes=1)
    model = DQN("MlpPolicy", stream.make_vec_env(0), learning_starts=16, buffer_size=1000, seed=0)
    model.learn(callback.total_steps, callback=callback)
    assert events.events == [("start", 0, "tiny-cartpole", 256), ("end", 0, "tiny-cartpole", 256)]
    assert callback.result is not None and callback.result.steps == [0, 128, 256]  # a row per task's end
    assert not np.isnan(callback.result.matrix).any()
    assert [r["task"] for r in callback.result.plasticity if r["task"] is not None] == [0, 1]
    assert model.replay_buffer is not None and model.replay_buffer.size() == 256  # kept across tasks
    assert model.learning_starts == 16


def test_modules_that_need_boundaries_are_refused_on_a_stream_that_hides_them() -> None:
    stream = _hidden()
    model = ppo(stream.make_vec_env(0))
    callback = clrl.StreamCallback(stream, [clrl.EWC()], eval_episodes=1)
    with pytest.raises(clrl.ConfigError, match=r"EWC needs task boundaries.*task-free modules: clear, clser"):
        model.learn(callback.total_steps, callback=callback)
    assert model.num_timesteps == 0
    with pytest.raises(clrl.ConfigError, match="hides its task boundaries"):
        clrl.train(model, stream, [])
    assert clrl.ShrinkAndPerturb(every=100).needs_boundaries() is False
    assert clrl.ShrinkAndPerturb().needs_boundaries() is True


def test_the_boundaries_key_of_a_stream_file() -> None:
    stream = _hidden()
    assert clrl.streams.stream_from_dict(stream.to_dict()).boundaries == "hidden"
    assert "boundaries" not in cartpole_stream().to_dict()
    data = {**stream.to_dict(), "boundaries": "sometimes"}
    with pytest.raises(clrl.StreamError, match="boundaries must be 'announced' or 'hidden', got 'sometimes'"):
        clrl.streams.stream_from_dict(data)
