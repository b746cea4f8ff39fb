"""Schedules in stream files: their values by hand, their validation, and drifting environments."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import clrl
from clrl.schedules import Schedule, schedule_from_dict
from clrl.streams import Drift, stream_from_dict


def schedule(**table: Any) -> Schedule:
    return schedule_from_dict(table, "test")


def test_linear_ramps_between_start_and_end_and_defaults_to_the_budget() -> None:
    ramp = schedule(schedule="linear", **{"from": 0.5, "to": 2.0})
    assert [ramp.value(t, 100) for t in (0, 50, 100, 150)] == [0.5, 1.25, 2.0, 2.0]
    window = schedule(schedule="linear", start=10, end=20, **{"from": 1.0, "to": 0.0})
    assert [window.value(t) for t in (0, 10, 15, 20, 99)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    with pytest.raises(clrl.StreamError, match="needs the task's budget"):
        ramp.value(5)


def test_step_changes_value_at_the_given_steps_or_every_n() -> None:
    at = schedule(schedule="step", values=[[0, 1], [1, 0], [0, 1]], at=[30, 70])
    assert [at.value(t) for t in (0, 29, 30, 69, 70, 10**6)] == [
        [0, 1],
        [0, 1],
        [1, 0],
        [1, 0],
        [0, 1],
        [0, 1],
    ]
    every = schedule(schedule="step", values=[1.0, 2.0, 3.0], every=10)
    assert [every.value(t) for t in (0, 9, 10, 25, 30, 41)] == [1.0, 1.0, 2.0, 3.0, 1.0, 2.0]


def test_sinusoid_and_piecewise() -> None:
    wave = schedule(schedule="sinusoid", mean=10.0, amplitude=2.0, period=40, phase=0.25)
    for t in (0, 5, 17, 40):
        assert wave.value(t) == pytest.approx(10 + 2 * math.sin(2 * math.pi * (t / 40 + 0.25)))
    pieces = schedule(schedule="piecewise", points=[[10, 1.0], [20, 3.0], [40, -1.0]])
    assert [pieces.value(t) for t in (0, 10, 15, 20, 30, 40, 50)] == [1.0, 1.0, 2.0, 3.0, 1.0, -1.0, -1.0]


def test_random_walk_is_seeded_clipped_and_the_same_however_it_is_queried() -> None:
    table = {"schedule": "random-walk", "from": 1.0, "std": 0.5, "every": 10, "low": 0.2, "high": 1.5}
    late_first, early_first = schedule_from_dict(table, "t"), schedule_from_dict(table, "t")
    late = late_first.value(10_000)
    walk = [early_first.value(10 * k) for k in range(1001)]
    assert walk[-1] == late and late_first.value(50) == walk[5]
    assert walk[0] == 1.0 and all(0.2 <= w <= 1.5 for w in walk)
    assert early_first.value(19) == walk[1]  # constant within each block of `every` steps
    rng = np.random.default_rng(0)  # by hand: w[k+1] = clip(w[k] + 0.5 N(0, 1), 0.2, 1.5)
    expected = [1.0]
    for z in rng.standard_normal(5):
        expected.append(min(max(expected[-1] + 0.5 * float(z), 0.2), 1.5))
    np.testing.assert_allclose(walk[:6], expected)
    other = schedule_from_dict({**table, "seed": 1}, "t")
    assert [other.value(10 * k) for k in range(20)] != walk[:20]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"schedule": "cubic"}, "schedule must be one of linear, step"),
        ({"schedule": "linear", "from": 1.0}, "missing key 'to'"),
        ({"schedule": "linear", "from": 1.0, "to": 2.0, "slope": 1}, "unknown key 'slope'"),
        ({"schedule": "linear", "from": "a", "to": 2.0}, "from must be a finite number"),
        ({"schedule": "linear", "from": 1.0, "to": math.inf}, "to must be a finite number"),
        ({"schedule": "linear", "from": 1, "to": 2, "start": 5, "end": 5}, "end (5) must be after start"),
        ({"schedule": "step", "values": []}, "values must be a non-empty list"),
        ({"schedule": "step", "values": [1, 2], "at": [3, 4]}, "at must list 1 step(s)"),
        ({"schedule": "step", "values": [1, 2, 3], "at": [5, 5]}, "at must be increasing"),
        ({"schedule": "step", "values": [1, 2], "at": [1], "every": 3}, "either at or every"),
        ({"schedule": "step", "values": [1, 2], "every": 0}, "every must be an integer >= 1"),
        ({"schedule": "step", "values": [1, math.nan], "at": [1]}, "finite"),
        ({"schedule": "sinusoid", "mean": 0, "amplitude": 1, "period": 0}, "period must be > 0"),
        ({"schedule": "random-walk", "from": 0, "std": -1}, "std must be >= 0"),
        ({"schedule": "random-walk", "from": 0, "std": 1, "low": 2, "high": 1}, "low (2.0) must not exceed"),
        ({"schedule": "random-walk", "from": 0, "std": 1, "seed": -1}, "seed must be an integer >= 0"),
        ({"schedule": "piecewise", "points": [[0, 1], [0, 2]]}, "steps must be increasing"),
        ({"schedule": "piecewise", "points": [[0, 1, 2]]}, "each point must be [step, value]"),
        ({"schedule": "piecewise", "points": [[-1, 1]]}, "a point's step must be an integer >= 0"),
    ],
)
def test_bad_schedules_are_refused_in_one_line(table: dict[str, Any], message: str) -> None:
    with pytest.raises(clrl.StreamError, match=None) as error:
        schedule_from_dict(table, "task 'a': attributes.length")
    text = str(error.value)
    assert message in text and "\n" not in text and text.startswith("task 'a': attributes.length")


def drifting(steps: int = 100, **wrapper_kwargs: Any) -> clrl.TaskStream:
    kwargs = wrapper_kwargs or {"permutation": {"schedule": "step", "values": [[0, 1], [1, 0]], "at": [50]}}
    return stream_from_dict(
        {
            "name": "drift",
            "steps_per_task": steps,
            "tasks": [
                {
                    "name": "pole",
                    "env_id": "CartPole-v1",
                    "attributes": {"length": {"schedule": "linear", "from": 0.5, "to": 2.0}},
                    "wrappers": [{"name": "PermuteActions", "kwargs": kwargs}],
                }
            ],
        }
    )


def test_every_copy_of_a_vectorised_env_follows_the_task_step() -> None:
    stream = drifting()
    stream.validate()
    venv = stream.make_vec_env(0, n_envs=2, seed=0)
    venv.reset()
    for _ in range(30):
        venv.step(np.zeros(2, dtype=np.int64))  # pole upright long enough: episodes may end, steps count
    assert venv.env_method("drift_step") == [60, 60]
    for env in venv.envs:
        base = env.unwrapped
        assert base.length == pytest.approx(0.5 + 1.5 * 58 / 100)  # applied before the step at 58
        assert base.polemass_length == pytest.approx(base.masspole * base.length)
        assert env.get_wrapper_attr("permutation") == [1, 0]  # changed at step 50
    venv.env_method("set_drift_step", 10)  # a loop that builds its env part-way through the task
    venv.step(np.zeros(2, dtype=np.int64))
    assert venv.envs[0].unwrapped.length == pytest.approx(0.5 + 1.5 * 10 / 100)
    assert venv.env_method("drift_step") == [12, 12]
    assert venv.envs[0].get_wrapper_attr("permutation") == [0, 1]


def test_evaluation_and_fixed_steps_do_not_drift() -> None:
    stream = drifting()
    fixed = stream.make_vec_env(0, at_step=100)
    assert not any(isinstance(e, Drift) for e in _wrappers(fixed.envs[0]))
    fixed.reset()
    for _ in range(5):
        fixed.step(np.zeros(1, dtype=np.int64))
    assert fixed.envs[0].unwrapped.length == 2.0
    assert fixed.envs[0].get_wrapper_attr("permutation") == [1, 0]
    evaluator = clrl.evaluation.Evaluator(stream, n_episodes=1)
    assert evaluator._envs[0].envs[0].unwrapped.length == 2.0


def _wrappers(env: Any) -> list[Any]:
    out = []
    while hasattr(env, "env"):
        out.append(env)
        env = env.env
    return out


def test_stream_files_round_trip_their_schedules() -> None:
    stream = drifting()
    again = stream_from_dict(stream.to_dict())
    assert again == stream
    assert again.to_dict()["tasks"][0]["attributes"]["length"] == {
        "schedule": "linear",
        "from": 0.5,
        "to": 2.0,
    }


def test_a_wrapper_argument_that_cannot_change_while_running_is_refused() -> None:
    with pytest.raises(clrl.StreamError, match="max_episode_steps cannot follow a schedule"):
        stream_from_dict(
            {
                "name": "s",
                "tasks": [
                    {
                        "name": "a",
                        "env_id": "CartPole-v1",
                        "wrappers": [
                            {
                                "name": "TimeLimit",
                                "kwargs": {
                                    "max_episode_steps": {"schedule": "step", "values": [5, 9], "at": [3]}
                                },
                            }
                        ],
                    }
                ],
            }
        )


def test_validation_builds_every_value_a_schedule_takes() -> None:
    """A bad permutation that only comes at step 70 is refused before anything trains."""
    stream = drifting(permutation={"schedule": "step", "values": [[0, 1], [1, 0], [1, 1]], "at": [30, 70]})
    with pytest.raises(clrl.StreamError, match="at step 70 of its schedules"):
        stream.validate()


def test_a_drifting_stream_trains_the_same_when_resumed(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import DEVICE
    from stable_baselines3 import PPO
    from test_reliability import whole_and_resumed

    base = drifting(steps=64).to_dict()
    base["tasks"] = [base["tasks"][0], {**base["tasks"][0], "name": "pole2"}]
    stream = stream_from_dict(base)

    def run(logdir: Any, **kwargs: Any) -> clrl.TrainResult:
        env = stream.make_vec_env(0, n_envs=2, seed=1)
        hyper = {"n_steps": 16, "batch_size": 32, "n_epochs": 1, "policy_kwargs": {"net_arch": [8]}}
        model = PPO("MlpPolicy", env, seed=1, device=DEVICE, **hyper)
        return clrl.train(model, stream, [clrl.L2(strength=1.0)], logdir=logdir, eval_episodes=1, **kwargs)

    whole, resumed = whole_and_resumed(tmp_path, monkeypatch, run)
    np.testing.assert_array_equal(resumed.matrix, whole.matrix)
    assert resumed.metrics["training_episodes"] == whole.metrics["training_episodes"] > 0
    assert resumed.metrics["online_performance"] == pytest.approx(whole.metrics["online_performance"])


def test_a_shorter_budget_drifts_the_same_way() -> None:
    full = clrl.make_stream("cartpole-flip-unannounced")
    short = clrl.make_stream("cartpole-flip-unannounced", steps_per_task=2500)  # a tenth
    for task, small in zip(full.tasks, short.tasks, strict=True):
        for spec, small_spec in zip(task.wrappers, small.wrappers, strict=True):
            for share in (0.0, 0.1, 0.3, 0.6, 1.0):
                assert spec.kwargs_at(round(25000 * share), 25000) == small_spec.kwargs_at(
                    round(2500 * share), 2500
                )
    assert short.tasks[1].wrappers[0].kwargs["permutation"].spec["at"] == [730]
    drift = schedule(schedule="piecewise", points=[[0, 1.0], [3, 2.0], [4, 3.0]]).scaled(0.1)
    assert drift.spec["points"] == [[0, 1.0], [1, 2.0], [2, 3.0]]  # kept increasing
    wave = schedule(schedule="sinusoid", mean=0.0, amplitude=1.0, period=100).scaled(2.0)
    assert wave.value(50) == pytest.approx(1.0)  # a quarter of the period 200
