"""The return matrix filled with a metric the environments report in ``info`` (e.g. a success flag)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO

from clrl import Evaluator, StreamError, Task, TaskStream, train, write_report
from clrl.streams import stream_from_dict

ENV_ID = "clrl-tests/Touch-v0"


class Touch(gym.Env[np.ndarray, int]):
    """Five steps; ``info["success"]`` is 1 only at step 2, and only if action 1 is taken there."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, goal_step: int = 2) -> None:
        self.goal_step = goal_step
        self.t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        success = float(action == 1 and self.t == self.goal_step)
        obs = np.full(1, self.t / 5, np.float32)
        return obs, float(action), self.t >= 5, False, {"success": success}


gym.register(ENV_ID, entry_point=Touch)


def touch_stream(metric: str = "success") -> TaskStream:
    return TaskStream(
        "touch",
        [Task("early", ENV_ID), Task("late", ENV_ID, make_kwargs={"goal_step": 4})],
        steps_per_task=64,
        task_id="observed",
        metric=metric,
    )


class Fixed:
    """A policy with SB3's ``predict`` that takes the given actions, step by step within an episode."""

    def __init__(self, actions: list[int]) -> None:
        self.actions = actions
        self.t = 0

    def predict(
        self, obs: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ):
        if episode_start is not None and episode_start[0]:
            self.t = 0
        action = self.actions[min(self.t, len(self.actions) - 1)]
        self.t += 1
        return np.full(len(obs), action), None


@pytest.mark.parametrize(
    ("actions", "expected"),
    [
        ([1], [1.0, 1.0]),  # action 1 at every step: both goal steps hit
        ([0], [0.0, 0.0]),
        ([0, 1, 0, 0, 0], [1.0, 0.0]),  # success only at step 2, then 0 again: still a success
        ([0, 0, 0, 1, 0], [0.0, 1.0]),
    ],
)
def test_evaluator_scores_an_episode_by_its_best_info_value(
    actions: list[int], expected: list[float]
) -> None:
    evaluator = Evaluator(touch_stream(), n_episodes=3, n_envs=1)
    np.testing.assert_array_equal(evaluator(Fixed(actions)), expected)  # type: ignore[arg-type]
    # The same policy scored by return: the number of 1-actions.
    by_return = Evaluator(touch_stream(), n_episodes=3, n_envs=1, metric="return")
    ones = sum(actions[min(t, len(actions) - 1)] for t in range(5))
    assert by_return(Fixed(actions))[0] == pytest.approx(ones)  # type: ignore[arg-type]


def test_stream_metric_is_checked_and_kept() -> None:
    stream = touch_stream()
    stream.validate()
    assert stream.to_dict()["metric"] == "success"
    assert stream_from_dict(stream.to_dict()) == stream
    assert "metric" not in touch_stream("return").to_dict()  # default streams keep their old spec
    cartpole = TaskStream("c", [Task("a", "CartPole-v1")], metric="success")
    with pytest.raises(StreamError, match="metric 'success' is not a number in the environment's step info"):
        cartpole.validate()
    with pytest.raises(StreamError, match="metric must be"):
        TaskStream("c", [Task("a", "CartPole-v1")], metric="eval/x y")


def test_run_with_a_success_metric(tmp_path: Path) -> None:
    stream = touch_stream()
    model = PPO("MlpPolicy", stream.make_vec_env(0, n_envs=2), n_steps=32, batch_size=32, n_epochs=1, seed=0)
    result = train(model, stream, logdir=tmp_path / "toy" / "ppo-finetune" / "seed0", eval_episodes=2)
    assert set(np.unique(result.matrix)) <= {0.0, 0.5, 1.0}  # success rates of 2 episodes
    saved = json.loads((tmp_path / "toy" / "ppo-finetune" / "seed0" / "results.json").read_text())
    assert saved["config"]["metric"] == "success"
    assert set(np.unique(saved["random_returns"])) <= {0.0, 0.5, 1.0}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "toy" / "ppo-finetune" / "seed0")).Reload()
    assert {"eval/early/success", "eval/late/success"} <= set(events.Tags()["scalars"])
    report = write_report(tmp_path)
    assert "R = episode success (from info)" in report.markdown.read_text()
