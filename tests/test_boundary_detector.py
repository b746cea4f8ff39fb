"""BoundaryDetector: the change-point test on synthetic signals with known change points, and the
boundaries it gives to modules on a stream that hides them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEVICE
from stable_baselines3 import DQN, PPO

import clrl
from clrl import metrics
from clrl.modules.boundary_detector import ChangeTest
from clrl.streams import stream_from_dict


def test_detection_delays_by_hand() -> None:
    report = metrics.detection_delays([105, 130, 420, 700], changes=[100, 400, 900], horizon=50)
    assert report == {"mean_delay": 12.5, "found": 2.0, "missed": 1.0, "false_alarms": 2.0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_test_finds_drops_soon_and_ignores_noise_and_learning(seed: int) -> None:
    rng = np.random.default_rng(seed)
    levels = [100.0] * 300 + [60.0] * 300 + [100.0] * 100 + [40.0] * 300  # drops at 300 and 700
    noisy = np.array(levels) + rng.normal(0, 5, len(levels))
    report = metrics.detection_delays(ChangeTest().scan(noisy), [300, 700], horizon=30)
    assert report["found"] == 2 and report["false_alarms"] == 0 and report["mean_delay"] <= 10
    learning = np.linspace(10, 200, 1000) + rng.normal(0, 5, 1000)  # a learning curve: rises only
    assert ChangeTest().scan(learning) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_upward_test_finds_rises_and_ignores_a_falling_error(seed: int) -> None:
    rng = np.random.default_rng(seed)
    levels = [10.0] * 300 + [30.0] * 300 + [10.0] * 100 + [40.0] * 300  # rises at 300 and 700
    noisy = np.array(levels) + rng.normal(0, 1, len(levels))
    report = metrics.detection_delays(ChangeTest(direction="up").scan(noisy), [300, 700], horizon=30)
    assert report["found"] == 2 and report["false_alarms"] == 0 and report["mean_delay"] <= 10
    critic = 200 * np.exp(-np.arange(1000) / 100) + rng.normal(0, 1, 1000)  # a critic learning: falls only
    assert ChangeTest(direction="up").scan(critic) == []


def _reward_change(scale: float) -> clrl.TaskStream:
    """CartPole whose reward is multiplied by ``scale`` from step 1,000 of 2,000, unannounced."""
    return stream_from_dict(
        {
            "name": "changing-reward",
            "steps_per_task": 1000,
            "boundaries": "hidden",
            "tasks": [
                {"name": "full", "env_id": "CartPole-v1"},
                {
                    "name": "scaled",
                    "env_id": "CartPole-v1",
                    "wrappers": [{"name": "ScaleReward", "kwargs": {"scale": scale}}],
                },
            ],
        }
    )


def test_the_value_error_signal_finds_a_reward_rise_that_the_returns_cannot() -> None:
    """The reward grows tenfold at step 1,000: the returns rise (no drop to detect), the critic's error on
    the rollouts jumps."""
    stream = _reward_change(10.0)
    found = {}
    for signal in ("return", "value-error"):
        detector = clrl.BoundaryDetector([], signal=signal)
        callback = clrl.StreamCallback(stream, [detector], eval_episodes=1, plasticity=False)
        model = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=64, batch_size=64, n_epochs=1, device=DEVICE)
        model.learn(callback.total_steps, callback=callback)
        found[signal] = metrics.detection_delays(detector.detections, [1000], horizon=600)
    assert found["return"]["found"] == 0 and found["return"]["false_alarms"] == 0
    assert found["value-error"]["found"] == 1 and found["value-error"]["false_alarms"] == 0, found
    assert detector.get_config()["signal"] == "value-error" and detector.test.warmup == 5


def test_the_value_error_signal_needs_an_on_policy_algorithm() -> None:
    stream = _reward_change(10.0)
    model = DQN("MlpPolicy", stream.make_vec_env(0), device=DEVICE)
    callback = clrl.StreamCallback(stream, [clrl.BoundaryDetector([], signal="value-error")], eval_episodes=1)
    with pytest.raises(clrl.ConfigError, match="signal='value-error' reads an on-policy rollout"):
        model.learn(callback.total_steps, callback=callback)
    with pytest.raises(clrl.ConfigError, match="signal must be one of return, value-error, td-error"):
        clrl.BoundaryDetector([], signal="loss")  # type: ignore[arg-type]


def test_the_td_error_signal_finds_a_reward_rise_off_policy() -> None:
    """DQN on the tenfold reward rise at step 1,000: the TD loss SB3 records after each update jumps as the
    new rewards enter the buffer; the returns rise (nothing to detect)."""
    stream = _reward_change(10.0)
    detector = clrl.BoundaryDetector([], signal="td-error")
    callback = clrl.StreamCallback(stream, [detector], eval_episodes=1, plasticity=False)
    model = DQN(
        "MlpPolicy",
        stream.make_vec_env(0),
        learning_starts=100,
        buffer_size=1000,
        batch_size=32,
        target_update_interval=100,
        device=DEVICE,
    )
    model.learn(callback.total_steps, callback=callback)
    found = metrics.detection_delays(detector.detections, [1000], horizon=600)
    assert found["found"] == 1 and found["false_alarms"] == 0, found
    assert detector.test.warmup == 10 and detector.get_config()["window"] == 25
    state = detector.state_dict()
    again = clrl.BoundaryDetector([], signal="td-error")
    again.load_state_dict(state)
    assert again.state_dict() == state
    assert (
        model._n_updates - 1 <= state["updates_read"] <= model._n_updates
    )  # the last update: after the last read


def test_the_td_error_signal_needs_an_off_policy_algorithm() -> None:
    stream = _reward_change(10.0)
    model = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=64, batch_size=64, device=DEVICE)
    callback = clrl.StreamCallback(stream, [clrl.BoundaryDetector([], signal="td-error")], eval_episodes=1)
    with pytest.raises(clrl.ConfigError, match="signal='td-error' reads an off-policy critic"):
        model.learn(callback.total_steps, callback=callback)
    with pytest.raises(clrl.ConfigError, match="window must be"):
        clrl.BoundaryDetector([], signal="td-error", window=0)


def test_bad_test_settings_are_refused() -> None:
    with pytest.raises(clrl.ConfigError, match="warmup must be at least 2"):
        ChangeTest(warmup=1)
    with pytest.raises(clrl.ConfigError, match="threshold must be a finite number > 0"):
        clrl.BoundaryDetector(threshold=0)
    with pytest.raises(clrl.ConfigError, match="ContinualModule instances"):
        clrl.BoundaryDetector(["ewc"])  # type: ignore[list-item]


class _Tasks(clrl.ContinualModule):
    """A module that needs boundaries and records the tasks it is told of."""

    name = "tasks"

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []

    def on_task_start(self, task: clrl.TaskInfo) -> None:
        self.started.append(task.name)


def test_the_detector_gives_boundaries_to_modules_on_a_stream_that_hides_them() -> None:
    """The reward falls tenfold at step 1,000 of 2,000, unannounced: the held module gets one boundary
    soon after it, and none before."""
    stream = stream_from_dict(
        {
            "name": "falling-reward",
            "steps_per_task": 1000,
            "boundaries": "hidden",
            "tasks": [
                {"name": "full", "env_id": "CartPole-v1"},
                {
                    "name": "tenth",
                    "env_id": "CartPole-v1",
                    "wrappers": [{"name": "ScaleReward", "kwargs": {"scale": 0.1}}],
                },
            ],
        }
    )
    held = _Tasks()
    with pytest.raises(clrl.ConfigError, match="needs task boundaries"):
        model = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=64, batch_size=64, n_epochs=1, device=DEVICE)
        model.learn(2000, callback=clrl.StreamCallback(stream, [_Tasks()], eval_episodes=1))
    detector = clrl.BoundaryDetector([held], warmup=10)
    callback = clrl.StreamCallback(stream, [detector], eval_episodes=1, plasticity=False)
    model = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=64, batch_size=64, n_epochs=1, device=DEVICE)
    model.learn(callback.total_steps, callback=callback)
    report = metrics.detection_delays(detector.detections, [1000], horizon=600)
    assert report["found"] == 1 and report["false_alarms"] == 0, detector.detections
    assert held.started == ["detected-0", "detected-1"] and held.tasks_seen == 2
    assert detector.tasks_seen == 1  # the detector itself saw the stream as one task


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def test_a_saved_detector_keeps_its_held_modules(tmp_path: Path) -> None:
    stream = _reward_change(10.0)
    model = DQN("MlpPolicy", stream.make_vec_env(0), learning_starts=100, buffer_size=1000, device=DEVICE)
    ewc = clrl.EWC(strength=3.0)
    detector = clrl.BoundaryDetector([ewc], signal="td-error", window=5)
    callback = clrl.StreamCallback(stream, [detector], eval_episodes=1, plasticity=False)
    model.learn(callback.total_steps, callback=callback)
    assert ewc.tasks_seen >= 1 and ewc.state_dict()
    path = clrl.save(model, tmp_path / "model", [detector])
    loaded, (again,) = clrl.load(path, device=DEVICE)
    assert isinstance(again, clrl.BoundaryDetector) and again.get_config() == detector.get_config()
    assert again.detections == detector.detections and again.window == 5
    (held,) = again.modules
    assert isinstance(held, clrl.EWC) and held.strength == 3.0 and held.tasks_seen == ewc.tasks_seen
    assert _same(held.state_dict(), ewc.state_dict())
    assert held.sb3_model is loaded
    with pytest.raises(clrl.CheckpointError, match="subprocess"):
        clrl.BoundaryDetector.from_config({"modules": [{"class": "subprocess:Popen", "config": {}}]})
