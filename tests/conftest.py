"""Shared fixtures: tiny streams and model factories for every supported algorithm."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sb3_contrib import QRDQN, TQC, CrossQ, RecurrentPPO
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm

from clrl import Task, TaskStream, WrapperSpec

torch.set_num_threads(1)

DEVICE = os.environ.get("CLRL_TEST_DEVICE", "cpu")
"""Device of the tests' models: ``CLRL_TEST_DEVICE=cuda pytest ...`` runs them on a GPU (default: the CPU)."""

TINY_RUN = ["--steps", "64", "--eval-episodes", "1", "--no-progress", "--hp", "n_envs=1", "n_steps=32"]
"""``clrl run`` options of a run of seconds (with PPO)."""


def cartpole_stream(steps: int = 128, task_id: str = "observed") -> TaskStream:
    """Two conflicting CartPole tasks (normal, swapped actions)."""
    return TaskStream(
        "tiny-cartpole",
        [
            Task("normal", "CartPole-v1"),
            Task(
                "flipped",
                "CartPole-v1",
                attributes={"length": 1.0},
                wrappers=(WrapperSpec("PermuteActions", {"permutation": [1, 0]}),),
            ),
        ],
        steps_per_task=steps,
        task_id=task_id,  # type: ignore[arg-type]
    )


def pendulum_stream(steps: int = 128) -> TaskStream:
    """Two Pendulum tasks with different gravity (continuous actions)."""
    return TaskStream(
        "tiny-pendulum",
        [
            Task("g10", "Pendulum-v1", attributes={"g": 10.0}),
            Task("g15", "Pendulum-v1", attributes={"g": 15.0}),
        ],
        steps_per_task=steps,
        task_id="observed",
    )


# Tiny settings per algorithm: updates happen within a 128-step task.
ALGO_SETUPS: dict[str, tuple[type[BaseAlgorithm], Callable[[], TaskStream], dict[str, Any]]] = {
    "ppo": (
        PPO,
        cartpole_stream,
        dict(n_steps=32, batch_size=32, n_epochs=2, policy_kwargs={"net_arch": [16]}),
    ),
    "a2c": (A2C, cartpole_stream, dict(n_steps=8, policy_kwargs={"net_arch": [16]})),
    "dqn": (
        DQN,
        cartpole_stream,
        dict(
            learning_starts=32,
            buffer_size=1000,
            batch_size=16,
            train_freq=4,
            target_update_interval=20,
            policy_kwargs={"net_arch": [16]},
        ),
    ),
    "sac": (
        SAC,
        pendulum_stream,
        dict(learning_starts=32, buffer_size=1000, batch_size=16, policy_kwargs={"net_arch": [16]}),
    ),
    "td3": (
        TD3,
        pendulum_stream,
        dict(learning_starts=32, buffer_size=1000, batch_size=16, policy_kwargs={"net_arch": [16]}),
    ),
}


# sb3-contrib algorithms whose optimisers the module mechanism reaches.
CONTRIB_SETUPS: dict[str, tuple[type[BaseAlgorithm], Callable[[], TaskStream], dict[str, Any]]] = {
    "qrdqn": (
        QRDQN,
        cartpole_stream,
        {**ALGO_SETUPS["dqn"][2], "policy_kwargs": {"net_arch": [16], "n_quantiles": 5}},
    ),
    "tqc": (
        TQC,
        pendulum_stream,
        {**ALGO_SETUPS["sac"][2], "policy_kwargs": {"net_arch": [16], "n_critics": 2}},
    ),
    "crossq": (CrossQ, pendulum_stream, {**ALGO_SETUPS["sac"][2], "policy_kwargs": {"net_arch": [16]}}),
    "recurrentppo": (
        RecurrentPPO,
        cartpole_stream,
        dict(n_steps=32, batch_size=8, n_epochs=4, policy_kwargs={"net_arch": [16], "lstm_hidden_size": 8}),
    ),
}
ALGO_SETUPS.update(CONTRIB_SETUPS)


def make_model(algo: str, seed: int = 0, **overrides: Any) -> tuple[BaseAlgorithm, TaskStream]:
    cls, stream_fn, kwargs = ALGO_SETUPS[algo]
    stream = stream_fn()
    policy = "MlpLstmPolicy" if cls is RecurrentPPO else "MlpPolicy"
    model = cls(
        policy, stream.make_vec_env(0, seed=seed), seed=seed, device=DEVICE, **{**kwargs, **overrides}
    )
    return model, stream


def tiny_ppo(stream: TaskStream, task_index: int = 0, seed: int = 0) -> PPO:
    """A PPO that updates every 64 steps (2 envs x 32), on task ``task_index``."""
    return PPO(
        "MlpPolicy",
        stream.make_vec_env(task_index, n_envs=2, seed=seed),
        n_steps=32,
        batch_size=32,
        n_epochs=2,
        policy_kwargs={"net_arch": [16]},
        seed=seed,
        device=DEVICE,
    )


@pytest.fixture
def tiny_stream() -> TaskStream:
    return cartpole_stream()


def rewrite_zip(path: Path, out: Path, entries: dict[str, bytes]) -> Path:
    """A copy of the zip ``path`` at ``out`` with ``entries`` replaced or added (a damaged checkpoint)."""
    with zipfile.ZipFile(path) as old, zipfile.ZipFile(out, "w") as new:
        for item in old.infolist():
            new.writestr(item, entries.get(item.filename, old.read(item.filename)))
        for name, data in entries.items():
            if name not in old.namelist():
                new.writestr(name, data)
    return out
