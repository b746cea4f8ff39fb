"""Reliability: resuming killed runs, nothing lost or overwritten, failures that name the task."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE, cartpole_stream, pendulum_stream, rewrite_zip, tiny_ppo
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import clrl
from clrl.runner import _Run
from clrl.streams import with_steps


def three_tasks(make: Callable[[], clrl.TaskStream]) -> clrl.TaskStream:
    """A tiny stream with a third task, a copy of the first, so that a run can stop after task 1 or 2."""
    stream = make()
    first = stream.tasks[0]
    again = dataclasses.replace(first, name=first.name + "-again")
    return clrl.TaskStream(stream.name, [*stream.tasks, again], stream.steps_per_task, task_id=stream.task_id)


class Interrupted(BaseException):
    """A crash clrl does not handle (like KeyboardInterrupt): it leaves the run as a kill would."""


def interrupt_at(monkeypatch: pytest.MonkeyPatch, task: int) -> None:
    """Make clrl.train fail when task ``task`` starts, as a crash after the previous checkpoint would."""
    learn = _Run._learn

    def failing(self: _Run, i: int, reset_buffer: bool, bar: Any) -> None:
        if i == task:
            raise Interrupted
        learn(self, i, reset_buffer, bar)

    monkeypatch.setattr(_Run, "_learn", failing)


def whole_and_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: Callable[..., clrl.TrainResult]
) -> tuple[clrl.TrainResult, clrl.TrainResult]:
    """``run(logdir)`` uninterrupted, and ``run(logdir, resume=True)`` after a crash when task 1 starts."""
    whole = run(tmp_path / "whole")
    with monkeypatch.context() as patch:
        interrupt_at(patch, 1)
        with pytest.raises(Interrupted):
            run(tmp_path / "part")
    return whole, run(tmp_path / "part", resume=True)


CASES: dict[str, tuple[str, Callable[[], list[clrl.ContinualModule]], dict[str, Any]]] = {
    "ppo-ewc": ("ppo", lambda: [clrl.EWC(strength=10.0)], {}),
    "a2c-si": ("a2c", lambda: [clrl.SI(strength=1.0)], {}),
    "dqn-replay": ("dqn", lambda: [clrl.Replay(budget=200)], {}),
    "sac-shared-buffer": ("sac", lambda: [], {"reset_buffer": False}),
    "td3-agem": ("td3", lambda: [clrl.AGEM(budget=100, batch_size=8)], {}),
    # What they measure at a task's end or evaluation (the learner's loss, the generator's fidelity) is
    # part of their state, and a resumed generative replay builds its generator without drawing from the
    # restored random generators.
    "ppo-gdumb": ("ppo", lambda: [clrl.GDumb(steps=8)], {}),
    "ppo-generative-replay": ("ppo", lambda: [clrl.GenerativeReplay(generator_steps=8)], {}),
}


def build(case: str) -> tuple[BaseAlgorithm, clrl.TaskStream, list[clrl.ContinualModule], dict[str, Any]]:
    algo, modules, kwargs = CASES[case]
    cls, make_stream, hyper = ALGO_SETUPS[algo]
    stream = three_tasks(make_stream)
    model = cls("MlpPolicy", stream.make_vec_env(0, seed=0), seed=0, device=DEVICE, **hyper)
    return model, stream, modules(), kwargs


def stop_after_first_task(logdir: Path, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of ``case`` in ``logdir`` that stops, as if killed, once its first task is checkpointed."""
    with monkeypatch.context() as patch:
        interrupt_at(patch, 1)
        model, stream, modules, kwargs = build(case)
        with pytest.raises(Interrupted):
            clrl.train(model, stream, modules, logdir=logdir, eval_episodes=2, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_resumed_run_ends_with_the_uninterrupted_matrix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Model, optimisers, module state, replay buffer and random generators all come back."""
    model, stream, modules, kwargs = build(case)
    full = clrl.train(model, stream, modules, logdir=tmp_path / "full", eval_episodes=2, **kwargs)

    stop_after_first_task(tmp_path / "run", case, monkeypatch)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["completed_tasks"] == 1
    # The replay buffer is kept only when the next task starts from it (reset_buffer=False).
    buffers = [p.name for p in (tmp_path / "run" / "checkpoints").glob("*.npz")]
    first = stream.tasks[0].name
    assert buffers == ([f"task01-{first}.replay_buffer.npz"] if kwargs.get("reset_buffer") is False else [])

    model, stream, modules, kwargs = build(case)
    resumed = clrl.train(
        model, stream, modules, logdir=tmp_path / "run", eval_episodes=2, resume=True, **kwargs
    )
    np.testing.assert_array_equal(resumed.matrix, full.matrix)
    assert resumed.steps == full.steps
    assert len(resumed.module_stats) == 3
    assert model.num_timesteps == full.steps[-1]
    assert len(resumed.config["resumed"]) == 1
    assert not list((tmp_path / "run" / "checkpoints").glob("*.npz"))  # no next task needs a buffer


def test_resume_without_restored_generators_would_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test above is sensitive: skipping the random-state restore changes the matrix."""
    model, stream, modules, _ = build("ppo-ewc")
    full = clrl.train(model, stream, modules, logdir=tmp_path / "full", eval_episodes=2)
    stop_after_first_task(tmp_path / "run", "ppo-ewc", monkeypatch)
    monkeypatch.setattr(clrl.checkpoint, "set_rng_state", lambda model, state: None)
    model, stream, modules, _ = build("ppo-ewc")
    resumed = clrl.train(model, stream, modules, logdir=tmp_path / "run", eval_episodes=2, resume=True)
    assert not np.array_equal(resumed.matrix, full.matrix)


KILLED_RUN = """
import sys

import torch
from stable_baselines3 import PPO

import clrl

torch.set_num_threads(1)
tasks = [
    clrl.Task("normal", "CartPole-v1"),
    clrl.Task(
        "flipped", "CartPole-v1", wrappers=(clrl.WrapperSpec("PermuteActions", {"permutation": [1, 0]}),)
    ),
    clrl.Task("long", "CartPole-v1", attributes={"length": 1.0}),
]
stream = clrl.TaskStream("killed", tasks, steps_per_task=3072, task_id="observed")
model = PPO(
    "MlpPolicy", stream.make_vec_env(0, n_envs=2, seed=0), n_steps=64, batch_size=64, n_epochs=4,
    policy_kwargs={"net_arch": [32, 32]}, seed=0, device="cpu",
)
result = clrl.train(
    model, stream, [clrl.OnlineEWC(strength=10.0)], logdir=sys.argv[1], eval_episodes=3, eval_freq=1024,
    resume=sys.argv[2] == "resume",
)
print(result.matrix.tolist())
"""


def _completed(logdir: Path) -> int:
    try:
        return int(json.loads((logdir / "results.json").read_text())["completed_tasks"])
    except (OSError, ValueError, KeyError):
        return -1


def _eval_steps(logdir: Path, tag: str) -> list[int]:
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_sigkilled_run_resumes_to_the_same_matrix_and_tensorboard_axis(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(KILLED_RUN))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(logdir: Path, mode: str) -> list[list[float]]:
        done = subprocess.run(
            [sys.executable, str(script), str(logdir), mode],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    full = run(tmp_path / "full", "fresh")

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, str(script), str(killed), "fresh"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 300
    while _completed(killed) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert _completed(killed) in (1, 2)  # killed part-way, after at least one task

    resumed = run(killed, "resume")
    assert resumed == full
    # The resumed run's TensorBoard axis matches the uninterrupted one: what the killed process wrote after
    # its last checkpoint is hidden (purge_step), nothing is logged twice.
    for tag in ("eval/normal/return", "cl/acc", "cl/online_ewc/penalty"):
        steps = _eval_steps(killed, tag)
        assert steps == sorted(set(steps)), tag
        assert steps == _eval_steps(tmp_path / "full", tag), tag


def test_resume_of_a_finished_run_trains_nothing(tmp_path: Path, tiny_stream: clrl.TaskStream) -> None:
    full = clrl.train(tiny_ppo(tiny_stream), tiny_stream, [clrl.L2()], logdir=tmp_path, eval_episodes=2)
    model = tiny_ppo(tiny_stream)
    again = clrl.train(model, tiny_stream, [clrl.L2()], logdir=tmp_path, eval_episodes=2, resume=True)
    np.testing.assert_array_equal(again.matrix, full.matrix)
    assert model.num_timesteps == full.steps[-1]  # the final checkpoint was loaded into the model
    assert "resumed" in again.config
    model.learn(64, reset_num_timesteps=False)  # the model is usable in the user's own loop afterwards
    assert model.num_timesteps == full.steps[-1] + 64


def grown_run(case: str) -> tuple[BaseAlgorithm, clrl.TaskStream, list[clrl.ContinualModule]]:
    """A three-task run of ``case`` (``<algo>-net2net`` or ``<algo>-cpg``) whose network widens at the
    second task's start."""
    algo, method = case.split("-")
    cls, make_stream, hyper = ALGO_SETUPS[algo]
    stream = three_tasks(make_stream)
    policy: Any = "MlpPolicy"
    modules: list[clrl.ContinualModule] = [clrl.Net2NetGrowth(units=4)]
    if algo == "ppo":  # SB3's default net_arch, and a tuple, which SB3's JSON copy of the arguments holds
        # as a list
        hyper = {**hyper, "policy_kwargs": {"optimizer_kwargs": {"betas": (0.9, 0.99)}}}
    if method == "cpg":  # 5% of the weights free after the first task: below min_free, so the second grows
        hyper = {**hyper, "policy_kwargs": {**hyper["policy_kwargs"], "n_tasks": len(stream)}}
        policy, modules = clrl.masked_policy(algo), [clrl.CPG(prune=0.05, min_free=0.1, grow_units=8)]
    model = cls(policy, stream.make_vec_env(0, seed=0), seed=0, device=DEVICE, **hyper)
    return model, stream, modules


@pytest.mark.parametrize("case", ["ppo-net2net", "dqn-net2net", "sac-net2net", "td3-cpg"])
def test_a_run_whose_network_grew_resumes_to_the_uninterrupted_matrix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Net2Net growth and CPG widen the network after the model was built: a resume rebuilds it at the
    widths of the checkpoint it loads (it used to fail to load it), and so does a resume of the finished
    run."""
    model, stream, modules = grown_run(case)
    full = clrl.train(model, stream, modules, logdir=tmp_path / "full", eval_episodes=2)
    final = {k: v.clone() for k, v in model.policy.state_dict().items()}
    with monkeypatch.context() as patch:
        interrupt_at(patch, 2)  # the checkpoint of task 1 holds the widened network
        model, stream, modules = grown_run(case)
        with pytest.raises(Interrupted):
            clrl.train(model, stream, modules, logdir=tmp_path / "run", eval_episodes=2)
    for logdir in ("run", "run", "full"):  # the interrupted run, then it and the uninterrupted one finished
        model, stream, modules = grown_run(case)
        narrow = {k: v.shape for k, v in model.policy.state_dict().items()}
        resumed = clrl.train(model, stream, modules, logdir=tmp_path / logdir, eval_episodes=2, resume=True)
        np.testing.assert_array_equal(resumed.matrix, full.matrix)
        state = model.policy.state_dict()
        assert state.keys() == final.keys()
        assert any(state[k].shape != shape for k, shape in narrow.items())
        for name, value in final.items():
            assert torch.equal(state[name], value), name


def test_a_checkpoint_asking_for_wider_layers_than_it_stores_is_not_built(tmp_path: Path) -> None:
    """The widths a checkpoint records are believed only as far as its parameters hold them: a file cannot
    make a restore allocate a network larger than the file."""
    model, stream, modules = grown_run("dqn-net2net")
    clrl.train(model, stream, modules, logdir=tmp_path / "run", eval_episodes=2, plasticity=False)
    path = sorted((tmp_path / "run" / "checkpoints").glob("*.zip"))[-1]
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    data["policy_kwargs"]["net_arch"] = [100_000]  # the run widened its one hidden layer from 16 to 24
    bad = rewrite_zip(path, tmp_path / "bad.zip", {"data": json.dumps(data).encode()})
    model, stream, modules = grown_run("dqn-net2net")
    built = {k: v.clone() for k, v in model.policy.state_dict().items()}
    with pytest.raises(
        clrl.CheckpointError, match=r"another network .* shape \(24,\) where the model has \(16,\)"
    ):
        clrl.checkpoint.restore(bad, model, modules)
    after = model.policy.state_dict()  # not rebuilt, and nothing loaded
    assert after.keys() == built.keys() and all(torch.equal(after[k], v) for k, v in built.items())


def test_a_finished_run_of_fresh_models_or_a_shared_buffer_resumes(tmp_path: Path) -> None:
    """A resume of a finished run trains nothing: the ensemble and single-task baselines (which built a
    model for the task after the last) and an off-policy run that keeps its buffer (whose last task kept
    none) used to fail."""
    stream = cartpole_stream()
    for train in (clrl.train_ensemble, clrl.train_single_task):
        logdir = tmp_path / train.__name__
        full = train(lambda i: tiny_ppo(stream, i), stream, logdir=logdir, eval_episodes=2)
        again = train(lambda i: tiny_ppo(stream, i), stream, logdir=logdir, eval_episodes=2, resume=True)
        np.testing.assert_array_equal(again.matrix, full.matrix)
    cls, _, hyper = ALGO_SETUPS["sac"]
    sac_stream = pendulum_stream()
    for train in (clrl.train, clrl.train_cumulative):
        logdir = tmp_path / f"sac-{train.__name__}"
        kwargs: dict[str, Any] = {"reset_buffer": False} if train is clrl.train else {}
        model = cls("MlpPolicy", sac_stream.make_vec_env(0, seed=0), seed=0, device=DEVICE, **hyper)
        full = train(model, sac_stream, logdir=logdir, eval_episodes=2, **kwargs)
        model = cls("MlpPolicy", sac_stream.make_vec_env(0, seed=0), seed=0, device=DEVICE, **hyper)
        again = train(model, sac_stream, logdir=logdir, eval_episodes=2, resume=True, **kwargs)
        np.testing.assert_array_equal(again.matrix, full.matrix)
        assert model.num_timesteps == full.steps[-1]


def test_resume_without_a_run_starts_afresh(tmp_path: Path, tiny_stream: clrl.TaskStream) -> None:
    fresh = clrl.train(tiny_ppo(tiny_stream), tiny_stream, eval_episodes=2)
    resumed = clrl.train(
        tiny_ppo(tiny_stream), tiny_stream, logdir=tmp_path / "new", eval_episodes=2, resume=True
    )
    np.testing.assert_array_equal(resumed.matrix, fresh.matrix)


def test_single_task_baseline_resumes_by_skipping_done_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_stream: clrl.TaskStream
) -> None:
    built: list[int] = []

    def make(i: int) -> BaseAlgorithm:
        built.append(i)
        if i == 1 and fail["on"]:
            raise Interrupted
        return tiny_ppo(tiny_stream, task_index=i)

    fail = {"on": False}
    full = clrl.train_single_task(make, tiny_stream, logdir=tmp_path / "full", eval_episodes=2)
    fail["on"] = True
    with pytest.raises(Interrupted):
        clrl.train_single_task(make, tiny_stream, logdir=tmp_path / "run", eval_episodes=2)
    fail["on"] = False
    built.clear()
    resumed = clrl.train_single_task(make, tiny_stream, logdir=tmp_path / "run", eval_episodes=2, resume=True)
    assert built == [1]
    np.testing.assert_array_equal(resumed.matrix, full.matrix)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": 1}, r"seed \(0 against 1\)"),
        ({"modules": [clrl.L2(strength=0.5)]}, "modules"),
        ({"modules": []}, "method"),
        ({"eval_episodes": 3}, r"eval_episodes \(2 against 3\)"),
        (
            {"steps": 64},
            r"settings \(the run's against this call's: stream_spec\.steps_per_task \(\d+ against 64\)\);",
        ),
    ],
)
def test_resume_refuses_a_run_of_other_settings(
    tmp_path: Path, tiny_stream: clrl.TaskStream, change: dict[str, Any], message: str
) -> None:
    """The refusal names the settings that differ, a stream's by the path to the entry that differs."""
    clrl.train(tiny_ppo(tiny_stream), tiny_stream, [clrl.L2()], logdir=tmp_path, eval_episodes=2)
    stream = with_steps(tiny_stream, change.pop("steps")) if "steps" in change else tiny_stream
    kwargs: dict[str, Any] = {"modules": [clrl.L2()], "eval_episodes": 2, "seed": 0, **change}
    with pytest.raises(clrl.CheckpointError, match=message):
        clrl.train(tiny_ppo(stream), stream, logdir=tmp_path, resume=True, **kwargs)


def test_resume_refuses_another_algorithm(tmp_path: Path, tiny_stream: clrl.TaskStream) -> None:
    clrl.train(tiny_ppo(tiny_stream), tiny_stream, logdir=tmp_path, eval_episodes=2)
    cls, _, hyper = ALGO_SETUPS["dqn"]
    other = cls("MlpPolicy", tiny_stream.make_vec_env(0), seed=0, **hyper)
    with pytest.raises(clrl.CheckpointError, match="algorithm"):
        clrl.train(other, tiny_stream, logdir=tmp_path, eval_episodes=2, resume=True)


def _stopped_after_first_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> clrl.TaskStream:
    stream = three_tasks(cartpole_stream)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 1)
        with pytest.raises(Interrupted):
            clrl.train(tiny_ppo(stream), stream, logdir=tmp_path, eval_episodes=2, **kwargs)
    return stream


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.write_bytes(b"not a zip"), "not a readable checkpoint"),
        (lambda path: path.unlink(), "is missing"),
        (lambda path: zipfile.ZipFile(path, "w").close(), "without clrl state"),
    ],
)
def test_resume_from_a_damaged_checkpoint_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: Callable[[Path], Any], message: str
) -> None:
    stream = _stopped_after_first_task(tmp_path, monkeypatch)
    damage(tmp_path / "checkpoints" / "task01-normal.zip")
    with pytest.raises(clrl.CheckpointError, match=message):
        clrl.train(tiny_ppo(stream), stream, logdir=tmp_path, eval_episodes=2, resume=True)


def test_resume_refuses_a_checkpoint_of_another_clrl_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = _stopped_after_first_task(tmp_path, monkeypatch)
    monkeypatch.setattr(clrl, "__version__", "9.9.9")
    with pytest.raises(clrl.CheckpointError, match=r"9\.9\.9"):
        clrl.train(tiny_ppo(stream), stream, logdir=tmp_path, eval_episodes=2, resume=True)


def test_resume_needs_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _stopped_after_first_task(tmp_path, monkeypatch, checkpoints=False)
    with pytest.raises(clrl.CheckpointError, match="checkpoints=False"):
        clrl.train(tiny_ppo(stream), stream, logdir=tmp_path, eval_episodes=2, resume=True)


def test_resume_and_a_corrupt_results_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _stopped_after_first_task(tmp_path, monkeypatch)
    (tmp_path / "results.json").write_text('{"completed_tasks": 1, "matrix": ')
    with pytest.raises(clrl.CheckpointError, match=r"results\.json"):
        clrl.train(tiny_ppo(stream), stream, logdir=tmp_path, eval_episodes=2, resume=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"resume": True, "overwrite": True}, "exclude each other"), ({"resume": True}, "logdir")],
)
def test_bad_resume_arguments(
    tiny_stream: clrl.TaskStream, tmp_path: Path, kwargs: dict, message: str
) -> None:
    logdir = tmp_path if kwargs.get("overwrite") else None
    with pytest.raises(clrl.ConfigError, match=message):
        clrl.train(tiny_ppo(tiny_stream), tiny_stream, logdir=logdir, **kwargs)


def test_results_exist_from_the_start_and_after_each_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stopped_after_first_task(tmp_path, monkeypatch)
    saved = clrl.TrainResult.from_json(tmp_path / "results.json")
    assert np.isfinite(saved.matrix[:2]).all() and np.isnan(saved.matrix[2:]).all()
    assert not list(tmp_path.rglob("*.tmp*"))  # every file was written whole, then renamed


class _BrokenState(clrl.L2):
    def state_dict(self) -> dict[str, Any]:
        raise RuntimeError("disk full")


def test_checkpoint_is_written_whole_or_not_at_all(tmp_path: Path, tiny_stream: clrl.TaskStream) -> None:
    model = tiny_ppo(tiny_stream)
    path = clrl.save(model, tmp_path / "model.zip", [clrl.L2()])
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        clrl.save(model, path, [_BrokenState()])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]


def _failing_vec_env(monkeypatch: pytest.MonkeyPatch, task: int, after: int) -> None:
    make = clrl.TaskStream.make_vec_env

    def patched(self: clrl.TaskStream, index: int, *args: Any, **kwargs: Any) -> VecEnv:
        env = make(self, index, *args, **kwargs)
        if index == task and "seed" in kwargs:  # the training env, not the evaluator's
            step_wait, calls = env.step_wait, {"n": 0}

            def broken() -> Any:
                calls["n"] += 1
                if calls["n"] > after:
                    raise RuntimeError("simulator crashed")
                return step_wait()

            env.step_wait = broken  # type: ignore[method-assign]
        return env

    monkeypatch.setattr(clrl.TaskStream, "make_vec_env", patched)


def test_env_failure_in_training_names_the_task_and_keeps_earlier_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_stream: clrl.TaskStream
) -> None:
    model = tiny_ppo(tiny_stream)
    _failing_vec_env(monkeypatch, task=1, after=10)
    with pytest.raises(
        clrl.TrainingError, match=r"'flipped' \(index 1\) failed during training.*simulator crashed"
    ) as info:
        clrl.train(model, tiny_stream, logdir=tmp_path, eval_episodes=2)
    assert isinstance(info.value.__cause__, RuntimeError)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["completed_tasks"] == 1
    assert (tmp_path / "checkpoints" / "task01-normal.zip").exists()


def test_env_failure_in_evaluation_names_the_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_stream: clrl.TaskStream
) -> None:
    calls = {"n": 0}
    evaluate = clrl.Evaluator.__call__

    def broken(self: clrl.Evaluator, *args: Any, **kwargs: Any) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("render window closed")
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(clrl.Evaluator, "__call__", broken)
    with pytest.raises(
        clrl.TrainingError, match="'normal' \\(index 0\\) failed during the evaluation after training"
    ):
        clrl.train(tiny_ppo(tiny_stream), tiny_stream, logdir=tmp_path, eval_episodes=2)
    assert json.loads((tmp_path / "results.json").read_text())["completed_tasks"] == 0


class _ExplodingPenalty(clrl.L2):
    """An L2 whose penalty turns infinite on the second task."""

    def penalty(self) -> float:
        return float("inf") if self.tasks_seen >= 1 else super().penalty()


def test_non_finite_penalty_stops_the_run_naming_module_and_task(
    tmp_path: Path, tiny_stream: clrl.TaskStream
) -> None:
    with pytest.raises(clrl.NumericalError, match=r"_ExplodingPenalty.*penalty.*'flipped' \(index 1\)"):
        clrl.train(
            tiny_ppo(tiny_stream), tiny_stream, [_ExplodingPenalty()], logdir=tmp_path, eval_episodes=2
        )
    assert json.loads((tmp_path / "results.json").read_text())["completed_tasks"] == 1
    model, _ = clrl.load(tmp_path / "checkpoints" / "task01-normal.zip")
    assert all(np.isfinite(p.detach().numpy()).all() for p in model.policy.parameters())


def test_non_finite_importance_is_caught_at_the_end_of_the_task(
    monkeypatch: pytest.MonkeyPatch, tiny_stream: clrl.TaskStream
) -> None:
    module = clrl.EWC(strength=1.0)
    estimate = type(module).importance_of

    def poisoned(self: clrl.EWC, *args: Any, **kwargs: Any) -> Any:
        importance = estimate(self, *args, **kwargs)
        next(iter(importance.values())).fill_(float("nan"))
        return importance

    monkeypatch.setattr(type(module), "importance_of", poisoned)
    with pytest.raises(clrl.NumericalError, match=r"EWC.*importance.*at the end of task 'normal'"):
        clrl.train(tiny_ppo(tiny_stream), tiny_stream, [module], eval_episodes=2)


def test_diverged_parameters_are_never_checkpointed(tmp_path: Path, tiny_stream: clrl.TaskStream) -> None:
    class Diverge(clrl.ContinualModule):
        def on_task_end(self, task: clrl.TaskInfo) -> None:
            if task.index == 1:
                with torch.no_grad():
                    next(self.sb3_model.policy.parameters()).fill_(float("nan"))

    with pytest.raises(clrl.NumericalError, match=r"'flipped' \(index 1\).*previous task"):
        clrl.train(tiny_ppo(tiny_stream), tiny_stream, [Diverge()], logdir=tmp_path, eval_episodes=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["task01-normal.zip"]


def test_fifty_task_stream_keeps_module_state_bounded() -> None:
    """OnlineEWC's state is constant in the number of tasks and Replay's never exceeds its budget (RSS
    figures: benchmarks/long_stream.py)."""
    tasks = [
        clrl.Task(
            f"length{k:02d}",
            "CartPole-v1",
            attributes={"length": float(x)},
            wrappers=(clrl.WrapperSpec("TimeLimit", {"max_episode_steps": 10}),),
        )
        for k, x in enumerate(np.linspace(0.3, 1.5, 50))
    ]
    stream = clrl.TaskStream("fifty", tasks, steps_per_task=64, task_id="observed")
    cls, _, hyper = ALGO_SETUPS["dqn"]
    model = cls("MlpPolicy", stream.make_vec_env(0, seed=0), seed=0, device=DEVICE, **hyper)
    online, replay = clrl.OnlineEWC(strength=1.0, samples=16), clrl.Replay(budget=300)
    result = clrl.train(model, stream, [online, replay], eval_episodes=1)
    assert np.isfinite(result.matrix).all()
    online_bytes = [stats["online_ewc"]["state_bytes"] for stats in result.module_stats]
    assert len(set(online_bytes)) == 1 and online_bytes[0] > 0
    rows = [stats["replay"]["rows"] for stats in result.module_stats]
    assert max(rows) <= 300 and rows[-1] >= 290  # full, never over
    replay_bytes = [stats["replay"]["state_bytes"] for stats in result.module_stats]
    assert max(replay_bytes) <= 1.05 * replay_bytes[-1]


def test_a_missing_replay_buffer_or_a_garbage_parameter_file_stops_the_resume_with_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop_after_first_task(tmp_path / "run", "sac-shared-buffer", monkeypatch)
    folder = tmp_path / "run" / "checkpoints"
    (buffer,) = folder.glob("*.replay_buffer.npz")
    kept = buffer.read_bytes()
    buffer.unlink()
    model, stream, modules, kwargs = build("sac-shared-buffer")
    with pytest.raises(clrl.CheckpointError, match=r"replay buffer .*task01.* is missing"):
        clrl.train(model, stream, modules, logdir=tmp_path / "run", eval_episodes=2, resume=True, **kwargs)
    buffer.write_bytes(kept)
    (saved,) = folder.glob("*.zip")
    with zipfile.ZipFile(saved) as archive:
        entries = {i.filename: archive.read(i.filename) for i in archive.infolist()}
    with zipfile.ZipFile(saved, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, b"garbage" if name == "policy.pth" else data)
    model, stream, modules, kwargs = build("sac-shared-buffer")
    with pytest.raises(clrl.CheckpointError, match="cannot read the SB3 model: UnpicklingError"):
        clrl.train(model, stream, modules, logdir=tmp_path / "run", eval_episodes=2, resume=True, **kwargs)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ({"matrix": [[1.0]]}, "field 'matrix' must be numbers of shape (4, 3)"),
        ({"completed_tasks": "1"}, "bad completed_tasks '1'"),
        ({"completed_tasks": 3}, "bad completed_tasks 3"),
        ({"steps": [0, "x"]}, "field 'steps' must be at most 4 increasing step counts"),
        (
            {"matrix": [[1.0, 1.0, 1.0], [None, 1.0, 1.0], [None] * 3, [None] * 3]},
            "lacks rows of the 1 completed",
        ),
    ],
)
def test_a_damaged_results_file_stops_the_resume_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: dict[str, Any], message: str
) -> None:
    stop_after_first_task(tmp_path / "run", "ppo-ewc", monkeypatch)
    path = tmp_path / "run" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **damage}))
    model, stream, modules, kwargs = build("ppo-ewc")
    with pytest.raises(clrl.CheckpointError, match=re.escape(message)):
        clrl.train(model, stream, modules, logdir=tmp_path / "run", eval_episodes=2, resume=True, **kwargs)
    assert model.num_timesteps == 0  # refused before anything trained
